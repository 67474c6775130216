"""UDP echo benchmark: zcn against a plain recvmmsg/sendmmsg C server.

    cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release && cmake --build build/release -j
    ZCN_LIBRARY=build/release/libzero_copy_net.so \
        python bench/udp_bench.py --bin build/release/bench/udp_bench

Each server runs pinned to CPU 0, the C load generator (bench/udp_bench.c
`load`: WINDOW datagrams in flight, sendmmsg bursts, every echoed byte
checked, loss counted) pinned to CPU 1. Servers take turns within each
round (order alternating), so drift hits all alike. Reported per server and
size: echoed datagrams/s and server CPU time per datagram (psutil: user +
system of the server process during the load window), median [min..max]
over the rounds, plus totals of loss and corrupt echoes.

Servers: baseline (blocking recvmmsg/sendmmsg, 64 per call), baseline-poll
(the same reading on readiness: MSG_DONTWAIT, poll() when empty), zcn (C echo handler,
zcn_udp_run, the default readiness receive, GSO sends), zcn-nogso (the same
with ZCN_UDP_NO_GSO: every datagram its own send, as in the baselines),
zcn-multishot (the same as zcn with ZCN_UDP_RECV_MULTISHOT), zcn-py (zcn.UdpSocket, Python on_datagram via
`python -m zcn._udp_cli --handler python`), zcn-py-c (the same CLI with the
C handler, the loop driven from Python); aio-zcn, aio-asyncio, aio-uvloop
(bench/aio_udp_echo.py: an asyncio DatagramProtocol echo on zcn's asyncio
loop, asyncio's own and uvloop's), aio-zcn-callback (the same protocol on
zcn's asyncio loop fed by a ctypes callback per datagram, the design not
taken).
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _zcn_pythonpath():
    """Where the servers' `import zcn` should look: the zcn this Python
    imports (an installed package, or any on PYTHONPATH), else the source
    tree (which needs ZCN_LIBRARY pointing at a built library)."""
    try:
        import zcn
    except Exception:  # not importable here, or its library would not load
        return ROOT
    return os.path.dirname(os.path.dirname(os.path.abspath(zcn.__file__)))


def _pin(cpu):
    return lambda: os.sched_setaffinity(0, {cpu})


def server_cmd(name, binary):
    py = [sys.executable, "-m", "zcn._udp_cli", "--host", "127.0.0.1", "--port", "0",
          "--rcvbuf", str(4 << 20), "--sndbuf", str(4 << 20), "--buffer-count", "1024"]
    aio = [sys.executable, os.path.join(HERE, "aio_udp_echo.py"), "--host", "127.0.0.1",
           "--port", "0", "--rcvbuf", str(4 << 20), "--sndbuf", str(4 << 20)]
    return {
        "baseline": [binary, "baseline", "0"],
        "baseline-poll": [binary, "baseline-poll", "0"],
        "zcn": [binary, "zcn", "0"],
        "zcn-nogso": [binary, "zcn-nogso", "0"],
        "zcn-multishot": [binary, "zcn-multishot", "0"],
        "zcn-py": py + ["--handler", "python"],
        "zcn-py-c": py + ["--handler", "c"],
        "aio-zcn": aio + ["--loop", "zcn"],
        "aio-asyncio": aio + ["--loop", "asyncio"],
        "aio-uvloop": aio + ["--loop", "uvloop"],
        "aio-zcn-callback": aio + ["--loop", "zcn-callback"],
    }[name]


def _cpus_busy(cpus):
    """Busy seconds (all but idle and iowait) of the given CPUs so far."""
    tick = os.sysconf("SC_CLK_TCK")
    busy = 0
    with open("/proc/stat") as f:
        for line in f:
            parts = line.split()
            if parts[0].startswith("cpu") and parts[0][3:].isdigit() and int(parts[0][3:]) in cpus:
                vals = [int(v) for v in parts[1:]]
                busy += sum(vals) - vals[3] - (vals[4] if len(vals) > 4 else 0)
    return busy / tick


def one_run(name, binary, size, seconds, window, burst, server_cpu, load_cpu):
    env = dict(os.environ)
    env["PYTHONPATH"] = _zcn_pythonpath() + os.pathsep + env.get("PYTHONPATH", "")
    srv = subprocess.Popen(server_cmd(name, binary), stdout=subprocess.PIPE, text=True,
                           env=env, preexec_fn=_pin(server_cpu))
    try:
        line = srv.stdout.readline()
        if not line:
            raise RuntimeError(f"{name} server did not start")
        port = int(line.split()[-1])
        proc = psutil.Process(srv.pid)
        t0 = proc.cpu_times()
        busy0 = _cpus_busy({server_cpu, load_cpu})
        kids0 = os.times()
        out = subprocess.run([binary, "load", str(port), str(size), str(seconds), str(window),
                              str(burst)], capture_output=True, text=True,
                             preexec_fn=_pin(load_cpu), timeout=seconds + 30)
        t1 = proc.cpu_times()
        busy1 = _cpus_busy({server_cpu, load_cpu})
        kids1 = os.times()
    finally:
        srv.send_signal(signal.SIGINT)
        try:
            srv.wait(10)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()
    fields = out.stdout.split()
    vals = dict(zip(fields[0::2], fields[1::2]))
    received = int(vals["received"])
    cpu = (t1.user - t0.user) + (t1.system - t0.system)
    load = (kids1.children_user - kids0.children_user) + \
        (kids1.children_system - kids0.children_system)
    # What else ran on the two CPUs meanwhile (this VM is shared): busy
    # time less the server's and the load generator's, per second.
    other = max(0.0, (busy1 - busy0) - cpu - load) / float(vals["seconds"])
    return {
        "other": other,
        "rate": received / float(vals["seconds"]),
        "cpu_us": cpu / received * 1e6 if received else float("inf"),
        "lost": int(vals["lost"]),
        "bad": int(vals["bad"]),
        "sent": int(vals["sent"]),
    }


def fmt(values, spec):
    return (f"{statistics.median(values):{spec}} "
            f"[{min(values):{spec}}..{max(values):{spec}}]")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "release", "bench", "udp_bench"))
    ap.add_argument("--servers", nargs="+", default=["baseline", "zcn", "zcn-nogso", "zcn-py"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[64, 1400])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--burst", type=int, default=32)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--ref", default="baseline",
                    help="the server the ratios are against (e.g. aio-asyncio)")
    args = ap.parse_args()

    results = {}
    for size in args.sizes:
        for r in range(args.rounds):
            order = args.servers if r % 2 == 0 else list(reversed(args.servers))
            for name in order:
                res = one_run(name, args.bin, size, args.seconds, args.window, args.burst,
                              args.server_cpu, args.load_cpu)
                results.setdefault((name, size), []).append(res)
                print(f"# size {size} round {r + 1} {name}: {res['rate']:.0f} dgram/s "
                      f"{res['cpu_us']:.2f} us/dgram lost {res['lost']} bad {res['bad']} "
                      f"other {res['other']:.2f} CPU", file=sys.stderr, flush=True)

    print(f"UDP echo, {args.rounds} rounds x {args.seconds:g} s, window {args.window}, "
          f"burst {args.burst}, server on CPU {args.server_cpu}, load on CPU {args.load_cpu}")
    print("| size | server | datagrams/s median [min..max] | server CPU us/datagram "
          f"median [min..max] | vs {args.ref} (rate, CPU) | lost / sent | bad |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        base = results.get((args.ref, size))
        for name in args.servers:
            rs = results[(name, size)]
            rates = [x["rate"] for x in rs]
            cpus = [x["cpu_us"] for x in rs]
            rel = "-"
            if base is not None and name != args.ref:
                br = statistics.median(x["rate"] for x in base)
                bc = statistics.median(x["cpu_us"] for x in base)
                rel = (f"{statistics.median(rates) / br:.2f}x, "
                       f"{statistics.median(cpus) / bc:.2f}x")
            lost = sum(x["lost"] for x in rs)
            sent = sum(x["sent"] for x in rs)
            bad = sum(x["bad"] for x in rs)
            print(f"| {size} | {name} | {fmt(rates, ',.0f')} | {fmt(cpus, '.2f')} | {rel} | "
                  f"{lost} / {sent} | {bad} |")
    others = [x["other"] for rs in results.values() for x in rs]
    print(f"\nOther load on the two CPUs during the load windows (CPUs busy beside the "
          f"server and the load generator): median {statistics.median(others):.2f}, "
          f"max {max(others):.2f}")


if __name__ == "__main__":
    main()
