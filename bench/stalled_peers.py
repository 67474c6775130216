"""How many peers that send and never read an echo server tolerates.

    python bench/stalled_peers.py [--build-dir build/bench]
        [--baseline-build DIR] [--peers 16,64,256,1024] [--attack 3]
        [--buffers N --buffer-size B]

For each count N: start the C echo server (bench/zcn_echo, pinned to the
last CPU), open one well-behaved connection, then N attackers that send as
fast as they can with a 4 KiB receive buffer and never read (on the first
CPU, with this script). After --attack seconds of attack (it goes on while
measuring), time 20 echoes on the old connection and 20 on new ones opened
during the attack: an echo not back within a second counts as a failure.
Then the attackers go and the server's counters (SIGUSR1 makes zcn_echo
print them) show what was held, evicted, and whether buffers came back.

With --baseline-build the same is run against another build's zcn_echo
(the code before a change), interleaved per count: the before/after figures
of docs/PERFORMANCE.md, "The buffer policy".
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import time

ECHO_TIMEOUT_S = 1.0
ECHOES = 20


def start_server(exe, args, cpu):
    argv = ["taskset", "-c", str(cpu), str(exe), "--port", "0"] + args
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.search(r"listening on \S+:(\d+)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"{exe} did not start: {line!r} {proc.stderr.read()}")
    return proc, int(m.group(1))


def server_stats(proc):
    """The counters zcn_echo prints on SIGUSR1 (dict), or None (an old build
    that does not know the signal would die: not asked)."""
    proc.send_signal(10)  # SIGUSR1
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "zcn_echo stats:" in line:
            return dict(kv.split("=") for kv in line.split(":", 1)[1].split())
    return None


def echo_once(sock, payload):
    start = time.monotonic()
    sock.sendall(payload)
    got = b""
    sock.settimeout(ECHO_TIMEOUT_S)
    try:
        while len(got) < len(payload):
            chunk = sock.recv(len(payload) - len(got))
            if not chunk:
                return None
            got += chunk
    except (socket.timeout, ConnectionError):
        return None
    return (time.monotonic() - start) * 1000 if got == payload else None


class Attack:
    def __init__(self, port, n):
        self.socks = []
        for _ in range(n):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", port))
            s.setblocking(False)
            self.socks.append(s)
        self.junk = b"x" * 65536
        self.evicted = 0

    def push(self):
        for s in self.socks:
            if s.fileno() < 0:
                continue
            try:
                s.send(self.junk)
            except BlockingIOError:
                pass
            except OSError:  # reset: evicted
                s.close()
                self.evicted += 1

    def close(self):
        for s in self.socks:
            s.close()


def measure(exe, args, n, attack_s, server_cpu, new_stats):
    proc, port = start_server(exe, args, server_cpu)
    try:
        old = socket.create_connection(("127.0.0.1", port))
        old.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert echo_once(old, b"warm") is not None
        attack = Attack(port, n)
        end = time.monotonic() + attack_s
        while time.monotonic() < end:
            attack.push()
        during = server_stats(proc) if new_stats else None
        old_ms, new_ms = [], []
        for i in range(ECHOES):
            attack.push()
            old_ms.append(echo_once(old, b"old %d" % i))
            attack.push()
            with socket.create_connection(("127.0.0.1", port), timeout=ECHO_TIMEOUT_S) as fresh:
                new_ms.append(echo_once(fresh, b"new %d" % i))
        attack.close()
        old.close()
        time.sleep(1.0)
        after = server_stats(proc) if new_stats else None
        return old_ms, new_ms, attack.evicted, during, after
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # a server stuck with its peers: not our figure
            proc.kill()
            proc.wait()


def summary(ms):
    ok = [m for m in ms if m is not None]
    fails = len(ms) - len(ok)
    if not ok:
        return f"{fails}/{len(ms)} failed"
    return (f"p50 {statistics.median(ok):.1f} ms, max {max(ok):.1f} ms"
            + (f", {fails}/{len(ms)} failed" if fails else ""))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build-dir", default="build/bench")
    p.add_argument("--baseline-build")
    p.add_argument("--baseline-max", type=int, default=256,
                   help="run the baseline only up to this many peers (default 256)")
    p.add_argument("--peers", default="16,64,256,1024")
    p.add_argument("--attack", type=float, default=3.0, help="seconds of attack before measuring")
    p.add_argument("--buffers", type=int, default=0)
    p.add_argument("--buffer-size", type=int, default=0)
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, client_cpu = cpus[-1], cpus[0]
    os.sched_setaffinity(0, {client_cpu})
    args = []
    if a.buffers:
        args += ["--buffers", str(a.buffers)]
    if a.buffer_size:
        args += ["--buffer-size", str(a.buffer_size)]
    builds = [("now", os.path.join(a.build_dir, "bench", "zcn_echo"), True)]
    if a.baseline_build:
        builds.append(("baseline", os.path.join(a.baseline_build, "bench", "zcn_echo"), False))
    print(f"config: {' '.join(args) or 'defaults (1024 x 16 KiB)'}; attack {a.attack} s, "
          f"then {ECHOES} echoes each on an old and on new connections (1 s timeout)")
    for n in (int(x) for x in a.peers.split(",")):
        for name, exe, new_stats in builds:
            if name == "baseline" and n > a.baseline_max:
                continue
            old_ms, new_ms, evicted, during, after = measure(
                exe, args, n, a.attack, server_cpu, new_stats)
            line = f"{n:5d} stalled  {name:8s}  old: {summary(old_ms):34s} new: {summary(new_ms)}"
            if during:
                line += (f"  | held {during['buffers_held']}/{during['buffer_budget']}"
                         f" evicted {during['evictions']}")
            if after:
                line += (f"  | after: in use {after['buffers_in_use']}, active"
                         f" {after['active']}")
            print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
