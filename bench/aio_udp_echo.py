"""A datagram echo server on asyncio: an asyncio DatagramProtocol whose
datagram_received sends each datagram back (transport.sendto(data, addr)),
on zcn's asyncio loop (zcn.aio), asyncio's own or uvloop's; the same code,
one flag.

    python bench/aio_udp_echo.py [--loop zcn|asyncio|uvloop|zcn-callback] [--host H]
                                 [--port P] [--rcvbuf BYTES] [--sndbuf BYTES]

--loop zcn-callback is the design zcn.aio did not take, for comparison: the
same protocol on zcn's asyncio loop, fed by a zcn.UdpSocket(loop=...) whose
datagrams come through a ctypes callback per datagram (ZCN_OnDatagram from
inside the loop's poll) instead of batch mode; the replies go through
UdpSocket.sendto, queued and sent with the loop's next wait.

The socket is made here (SO_RCVBUF/SO_SNDBUF as given, bound) and handed to
create_datagram_endpoint(sock=...), so every loop serves the same socket.
Prints "ready PORT" (what bench/udp_bench.py reads) and serves until
SIGINT/SIGTERM; then prints the datagrams echoed and, on zcn's loop, the
zcn socket's counters (gso_sends, kernel drops) to stderr.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys


class Echo(asyncio.DatagramProtocol):
    __slots__ = ("transport", "count")

    def __init__(self):
        self.count = 0

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.count += 1
        self.transport.sendto(data, addr)


class _CallbackTransport:
    """The little of a transport Echo uses, over a zcn.UdpSocket."""

    def __init__(self, sock):
        self.sendto = sock.sendto

    def close(self):
        pass


async def serve_callback(args):
    import zcn

    loop = asyncio.get_running_loop()
    proto = Echo()
    sock = zcn.UdpSocket(args.host, args.port, loop=loop.zcn_loop, rcvbuf=args.rcvbuf or None,
                         sndbuf=args.sndbuf or None)
    proto.connection_made(_CallbackTransport(sock))
    received = proto.datagram_received
    sock.on_datagram = lambda peer, data, flags: received(bytes(data), peer)
    print(f"ready {sock.port}", flush=True)
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    await stop
    print(f"aio_udp_echo (zcn-callback, zcn.UdpSocket on_datagram): echoed {proto.count}",
          file=sys.stderr, flush=True)
    sock.close()


async def serve(args):
    if args.loop == "zcn-callback":
        return await serve_callback(args)
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if args.rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
    if args.sndbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, args.sndbuf)
    sock.bind((args.host, args.port))
    transport, proto = await loop.create_datagram_endpoint(Echo, sock=sock)
    print(f"ready {sock.getsockname()[1]}", flush=True)
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    await stop
    extra = ""
    z = getattr(transport, "_z", None)
    if z is not None and z.handle is not None:
        import ctypes

        from zcn import _ffi
        st = _ffi.UdpStats()
        _ffi.zcn_udp_stats(z.handle, ctypes.byref(st))
        extra = (f" gso_sends {st.gso_sends} kernel_drops {st.kernel_drops} "
                 f"send_errors {st.send_errors} send_exhaustion_drops {st.send_exhaustion_drops}")
    print(f"aio_udp_echo ({args.loop}, {type(transport).__name__}): echoed {proto.count}{extra}",
          file=sys.stderr, flush=True)
    transport.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=("zcn", "asyncio", "uvloop", "zcn-callback"),
                        default="zcn")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rcvbuf", type=int, default=0)
    parser.add_argument("--sndbuf", type=int, default=0)
    args = parser.parse_args(argv)
    if args.loop in ("zcn", "zcn-callback"):
        import zcn.aio
        factory = zcn.aio.new_event_loop
    elif args.loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            print("aio_udp_echo: uvloop is not installed (pip install .[bench])", file=sys.stderr)
            return 3
        factory = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    loop = factory()
    try:
        loop.run_until_complete(serve(args))
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
