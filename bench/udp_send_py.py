"""Cost of sending UDP datagrams from Python outside a loop callback:
zcn.UdpSocket.sendmany (one sendmmsg per batch, GSO for equal-size runs)
against a loop of the standard library's socket.sendto, and zcn's own
sendto loop, all in this process.

    python bench/udp_send_py.py [--rounds 7] [--datagrams 200000]
                                [--batch 64] [--sizes 64 1400]

The sender (this process) is pinned to CPU 0; a receiver process pinned to
CPU 1 drains the datagrams (loopback delivers them in the sender's system
call, so the sender's time includes the kernel's whole path). Each method
sends --datagrams datagrams of each size to that receiver in batches of
--batch; the figure is the sender's wall time per datagram (CPU-bound: the
sends never block). Rounds are interleaved, the order reversed each round;
the table gives median [min..max] and the ratio to the stdlib loop.

Uses the library in ZCN_LIBRARY if set.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

SENDER_CPU, RECEIVER_CPU = 0, 1

DRAIN = r"""
import os, socket, sys
os.sched_setaffinity(0, {%d})
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
buf = bytearray(65536)
while True:
    s.recv_into(buf)
""" % RECEIVER_CPU


def send_loop(sock, dest, batches):
    """One sendto per datagram (socket.socket or zcn.UdpSocket)."""
    sendto = sock.sendto
    for batch in batches:
        for d in batch:
            sendto(d, dest)


def zcn_many(sock, dest, batches):
    sendmany = sock.sendmany
    for batch in batches:
        sendmany(batch, dest)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--datagrams", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 1400])
    args = ap.parse_args()

    import zcn

    os.sched_setaffinity(0, {SENDER_CPU})
    drain = subprocess.Popen([sys.executable, "-c", DRAIN], stdout=subprocess.PIPE, text=True)
    try:
        dest = ("127.0.0.1", int(drain.stdout.readline()))
        std = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        std.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        gso = zcn.UdpSocket(sndbuf=8 << 20, buffer_count=1024, sends_max=1024)
        nogso = zcn.UdpSocket(sndbuf=8 << 20, buffer_count=1024, sends_max=1024, gso=False)
        methods = [
            ("stdlib socket.sendto loop", send_loop, std),
            ("zcn sendto loop", send_loop, nogso),
            ("zcn sendmany, no GSO", zcn_many, nogso),
            ("zcn sendmany (GSO)", zcn_many, gso),
        ]
        print(f"UDP sends from Python: {args.datagrams} datagrams per round in batches of "
              f"{args.batch}, {args.rounds} interleaved rounds, sender on CPU {SENDER_CPU}, "
              f"receiver on CPU {RECEIVER_CPU}")
        print("| size | method | ns per datagram, median [min..max] | vs stdlib loop |")
        print("|---|---|---|---|")
        for size in args.sizes:
            payload = bytes(range(256)) * (size // 256 + 1)
            batch = [payload[:size]] * args.batch
            batches = [batch] * (args.datagrams // args.batch)
            sent = len(batches) * args.batch
            times = {name: [] for name, _, _ in methods}
            for r in range(args.rounds):
                order = methods if r % 2 == 0 else methods[::-1]
                for name, fn, sock in order:
                    t0 = time.perf_counter_ns()
                    fn(sock, dest, batches)
                    times[name].append((time.perf_counter_ns() - t0) / sent)
            base = statistics.median(times[methods[0][0]])
            for name, _, _ in methods:
                ts = times[name]
                med = statistics.median(ts)
                print(f"| {size} | {name} | {med:,.0f} [{min(ts):,.0f}..{max(ts):,.0f}] | "
                      f"{med / base:.2f}x |")
        stats = gso.stats()
        print(f"zcn (GSO) socket: {stats.datagrams_sent} datagrams in {stats.gso_sends} GSO sends, "
              f"{stats.send_errors} send errors")
        for s in (std, gso, nogso):
            s.close()
    finally:
        drain.kill()
        drain.wait()


if __name__ == "__main__":
    main()
