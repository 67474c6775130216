"""Server CPU per message of a Python echo: zcn.TcpServer (Python on_data)
against a uvloop and an asyncio Protocol (data_received -> transport.write).

    python bench/py_overhead.py [--rounds 5] [--messages 200000] [--conns 50]
                                [--size 64] [--servers zcn,uvloop,asyncio]

Each server runs in its own process pinned to CPU 0; the load generator
(this process) is pinned to CPU 1: --conns connections, each with one
--size-byte message in flight; every echo is checked byte for byte before
the next message goes out. After a warm-up of --warmup messages it counts
--messages messages and reads the server process's user+system CPU time
(psutil) before and after. Rounds are interleaved (zcn, uvloop, asyncio,
then the next round in reverse order ...); the table gives the median with
min and max.

What it measures: the server's cost per message, kernel time included (the
io_uring server's recv/send work is done in its task context). The load
generator is Python too, so throughput is bounded by the client; the CPU
per message is the figure to compare, and all servers see the same offered
load (the same number of messages in flight).

Uses the library in ZCN_LIBRARY if set. Needs psutil; uvloop is optional
(pip install .[bench]).
"""
from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER_CPU, CLIENT_CPU = 0, 1


def _pin(cpu):
    try:
        os.sched_setaffinity(0, {cpu % os.cpu_count()})
    except (AttributeError, OSError):
        pass


# --- the servers (run as `py_overhead.py serve KIND`) ---------------------------

def serve_zcn(host):
    try:
        import zcn
    except ModuleNotFoundError:  # a source checkout without `pip install .`
        sys.path.insert(0, os.path.dirname(HERE))
        import zcn

    server = zcn.TcpServer(host, 0)
    send = server.send

    def on_data(fd, data):
        send(fd, data)

    server.on_data = on_data
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    print(f"READY {server.port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def serve_asyncio(host, use_uvloop):
    import asyncio

    class Echo(asyncio.Protocol):
        __slots__ = ("transport",)

        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, host, 0)
        print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))
        await stop
        server.close()

    if use_uvloop:
        import uvloop
        uvloop.install()
    asyncio.run(main())


def serve(kind, host):
    _pin(SERVER_CPU)
    if kind == "zcn":
        serve_zcn(host)
    elif kind in ("uvloop", "asyncio"):
        serve_asyncio(host, kind == "uvloop")
    else:
        raise SystemExit(f"unknown server {kind!r}")


# --- the load generator -------------------------------------------------------

class Load:
    """conns connections, one size-byte message in flight on each; every
    echo is compared with what was sent."""

    def __init__(self, port, conns, size):
        self.size = size
        self.socks = []
        self.ep = select.epoll()
        self.by_fd = {}
        for i in range(conns):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            self.socks.append(sock)
            # per connection: [socket, message, bytes received so far, counter]
            self.by_fd[sock.fileno()] = [sock, b"", bytearray(), i << 32]
            self.ep.register(sock.fileno(), select.EPOLLIN)

    def _message(self, counter):
        head = counter.to_bytes(8, "little")
        return (head * (self.size // 8 + 1))[:self.size]

    def run(self, messages):
        """Sends until `messages` echoes came back; returns the count."""
        size = self.size
        for state in self.by_fd.values():
            state[3] += 1
            state[1] = self._message(state[3])
            state[2] = bytearray()
            state[0].send(state[1])
        done = 0
        in_flight = len(self.by_fd)
        poll = self.ep.poll
        by_fd = self.by_fd
        while in_flight:
            for fd, _ in poll(5.0):
                state = by_fd[fd]
                chunk = state[0].recv(65536)
                if not chunk:
                    raise RuntimeError("the server closed a connection")
                got = state[2]
                got += chunk
                if len(got) < size:
                    continue
                if got != state[1]:
                    raise RuntimeError("echo content differs from what was sent")
                done += 1
                if done + in_flight - 1 < messages:
                    state[3] += 1
                    state[1] = self._message(state[3])
                    state[2] = bytearray()
                    state[0].send(state[1])
                else:
                    in_flight -= 1
                    state[2] = bytearray()
        return done

    def close(self):
        for sock in self.socks:
            sock.close()
        self.ep.close()


def measure(kind, args):
    import psutil

    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "serve", kind,
                             "--host", "127.0.0.1"], stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        line = proc.stdout.readline() if ready else ""
        if not line.startswith("READY "):
            raise RuntimeError(f"{kind}: server did not start ({line!r})")
        port = int(line.split()[1])
        server = psutil.Process(proc.pid)
        load = Load(port, args.conns, args.size)
        try:
            load.run(args.warmup)
            cpu0 = server.cpu_times()
            t0 = time.perf_counter()
            done = load.run(args.messages)
            t1 = time.perf_counter()
            cpu1 = server.cpu_times()
        finally:
            load.close()
        cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        user = cpu1.user - cpu0.user
        return {"cpu_us": cpu / done * 1e6, "user_us": user / done * 1e6,
                "rate": done / (t1 - t0)}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _mmm(values):
    return statistics.median(values), min(values), max(values)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        p = argparse.ArgumentParser(prog="py_overhead.py serve")
        p.add_argument("kind")
        p.add_argument("--host", default="127.0.0.1")
        a = p.parse_args(argv[1:])
        serve(a.kind, a.host)
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--messages", type=int, default=200_000)
    p.add_argument("--warmup", type=int, default=20_000)
    p.add_argument("--conns", type=int, default=50)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--servers", default="zcn,uvloop,asyncio")
    args = p.parse_args(argv)
    kinds = [k for k in args.servers.split(",") if k]
    if "uvloop" in kinds:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            print("uvloop not installed: skipped (pip install uvloop)", file=sys.stderr)
            kinds.remove("uvloop")
    _pin(CLIENT_CPU)
    print(f"{args.conns} connections x 1 message of {args.size} B in flight, "
          f"{args.messages} messages per round, {args.rounds} rounds; server on CPU "
          f"{SERVER_CPU}, client on CPU {CLIENT_CPU}; python {sys.version.split()[0]}",
          flush=True)
    results = {k: [] for k in kinds}
    for r in range(args.rounds):
        order = kinds if r % 2 == 0 else kinds[::-1]
        for kind in order:
            res = measure(kind, args)
            results[kind].append(res)
            print(f"  round {r + 1} {kind:8s} {res['cpu_us']:6.2f} us CPU/msg "
                  f"(user {res['user_us']:5.2f})  {res['rate']:9.0f} msgs/s", flush=True)
    print()
    print(f"{'server':8s}  {'CPU us/msg median [min..max]':32s}  {'msgs/s median [min..max]'}")
    for kind in kinds:
        c = _mmm([x["cpu_us"] for x in results[kind]])
        t = _mmm([x["rate"] for x in results[kind]])
        print(f"{kind:8s}  {c[0]:6.2f} [{c[1]:6.2f} .. {c[2]:6.2f}]             "
              f"{t[0]:9.0f} [{t[1]:9.0f} .. {t[2]:9.0f}]")
    if "zcn" in results and "uvloop" in results:
        z = statistics.median(x["cpu_us"] for x in results["zcn"])
        u = statistics.median(x["cpu_us"] for x in results["uvloop"])
        print(f"\nCPU per message zcn/uvloop = {z / u:.2f} "
              f"({'zcn cheaper' if z < u else 'uvloop cheaper'})")
    if "zcn" in results and "asyncio" in results:
        z = statistics.median(x["cpu_us"] for x in results["zcn"])
        a = statistics.median(x["cpu_us"] for x in results["asyncio"])
        print(f"CPU per message zcn/asyncio = {z / a:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
