"""The `udp-echo` subcommand of `python -m zcn`.

    python -m zcn udp-echo --host 127.0.0.1 --port 9999 --handler c
    echo hi | socat -t1 - UDP:127.0.0.1:9999

Kept apart from zcn/__main__.py, which registers it with
add_udp_echo_parser(subparsers). `python -m zcn._udp_cli ...` runs it alone.
It prints "udp-echo listening on HOST PORT" (flushed) once bound, then
serves until SIGINT/SIGTERM and exits 0.
"""
from __future__ import annotations

import argparse
import signal
import sys


def add_udp_echo_parser(subparsers):
    """Adds `udp-echo` to an argparse subparsers object."""
    p = subparsers.add_parser("udp-echo", help="UDP echo server on io_uring",
                              description="Echo every UDP datagram back to its sender.")
    _add_arguments(p)
    p.set_defaults(func=run_udp_echo)
    return p


def _add_arguments(p):
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9999, help="port (0 = any; default 9999)")
    p.add_argument("--handler", choices=("c", "python"), default="c",
                   help="c: the built-in C echo; python: a Python on_datagram (default c)")
    p.add_argument("--buffer-size", type=int, default=2048,
                   help="largest datagram received into a small buffer (default 2048); larger "
                        "ones, up to the UDP limit, arrive whole in large buffers")
    p.add_argument("--buffer-count", type=int, default=1024, help="pool buffers (default 1024)")
    p.add_argument("--large-buffer-count", type=int, default=16,
                   help="large datagrams held at once (default 16)")
    p.add_argument("--small-only", action="store_true",
                   help="no large buffers: datagrams over --buffer-size arrive cut, not echoed")
    p.add_argument("--rcvbuf", type=int, default=None, help="SO_RCVBUF bytes (default: system)")
    p.add_argument("--sndbuf", type=int, default=None, help="SO_SNDBUF bytes (default: system)")
    p.add_argument("--no-gso", action="store_true",
                   help="send each datagram on its own (no UDP GSO coalescing)")
    p.add_argument("--stats", action="store_true", help="print the counters on exit")
    p.add_argument("--backend", choices=("auto", "io_uring", "epoll"), default="auto",
                   help="io_uring, epoll, or auto: io_uring with epoll where it is refused "
                        "(the default; the ZCN_BACKEND environment variable also chooses)")


def run_udp_echo(args):
    """Runs the echo server described by parsed args; returns the exit code."""
    import zcn
    from zcn._util import backend_line

    sock = zcn.UdpSocket(args.host, args.port, handler=args.handler,
                         buffer_size=args.buffer_size, buffer_count=args.buffer_count,
                         large_buffer_count=args.large_buffer_count, small_only=args.small_only,
                         rcvbuf=args.rcvbuf, sndbuf=args.sndbuf, gso=not args.no_gso,
                         backend=args.backend)
    if args.handler == "python":
        sendto = sock.sendto
        sock.on_datagram = lambda peer, data, flags: (
            None if flags & zcn.UDP_TRUNCATED else sendto(data, peer))
    previous = {s: signal.signal(s, lambda *_: sock.stop())
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"udp-echo listening on {sock.host} {sock.port}", flush=True)
        print(backend_line(sock), flush=True)
        sock.serve_forever()
        if args.stats:
            print(sock.stats(), file=sys.stderr)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        sock.close()
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m zcn._udp_cli",
                                description="Echo every UDP datagram back to its sender.")
    _add_arguments(p)
    return run_udp_echo(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
