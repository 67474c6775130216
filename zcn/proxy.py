"""``python -m zcn proxy``: a TCP proxy on one zcn.Loop.

    python -m zcn proxy --listen 127.0.0.1:8080 --upstream 127.0.0.1:6379
    python -m zcn proxy --listen 127.0.0.1:8080 --upstream 127.0.0.1:6379 --handler python

For each accepted client it connects to the upstream and forwards both
ways by moving the received buffers to the other connection (no copy in
user space). With --handler c (the default) the loop forwards by itself
(zcn_loop_forward with ZCN_FORWARD_AUTO): no Python runs per message, only
per connection. With --handler python every chunk goes through a Python
on_data that sends the borrowed view on (still no copy), for proxies that
look at what they forward.

Either way: the client is forwarded to the upstream while it still
connects, so early data waits in the kernel instead of being lost; a side
that does not read pauses receiving on the other (memory stays bounded);
a FIN is passed on as a shutdown of the other side once its queue has
drained (half-close, so `echo hi | nc -N` gets a late answer); when one
side ends, the other is closed; an upstream that refuses or does not answer
within --connect-timeout closes the client at once. SIGINT/SIGTERM exit 0
with one stats line.
"""
from __future__ import annotations

import signal

from . import _ffi
from ._util import backend_line
from ._util import resolve_host as _resolve_host

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    import argparse
    from typing import Callable, Dict, List, Optional, Set

    from ._types import Address
    from .loop import Loop


def _host_port(text: str, what: str) -> Address:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SystemExit(f"zcn proxy: {what} must be HOST:PORT, got {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "127.0.0.1", int(port)


def add_proxy_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
                     ) -> argparse.ArgumentParser:
    """Adds the ``proxy`` subcommand to ``python -m zcn``'s parser."""
    p = subparsers.add_parser(
        "proxy", help="TCP proxy: forward each client to an upstream, zero-copy",
        description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", required=True, metavar="HOST:PORT",
                   help="address to accept clients on (port 0: any free one, printed)")
    p.add_argument("--upstream", required=True, metavar="HOST:PORT",
                   help="where to connect for each client (a name is resolved once, at "
                        "start)")
    p.add_argument("--handler", choices=("c", "python"), default="c",
                   help="c: the loop forwards by itself, no Python per message; python: a "
                        "Python on_data sends each chunk on (default c)")
    p.add_argument("--connect-timeout", type=float, default=1.0,
                   help="seconds to wait for the upstream's answer (default 1)")
    p.add_argument("--buffer-size", type=int, default=16384,
                   help="bytes per buffer, rounded up to 4096 (default 16384)")
    p.add_argument("--buffer-pool-size", type=int, default=1024,
                   help="buffers shared by all connections (default 1024)")
    p.add_argument("--connections-max", type=int, default=8192,
                   help="connections at once, both sides counted (default 8192)")
    p.add_argument("--backend", choices=("auto", "io_uring", "epoll"), default="auto",
                   help="io_uring, epoll, or auto: io_uring with epoll where it is refused "
                        "(the default; the ZCN_BACKEND environment variable also chooses)")
    p.set_defaults(func=run_proxy)
    return p


class Proxy:
    """The proxy's state: the pairs (client fd <-> upstream fd) and counters.

    Ordering while the upstream connects. The client is forwarded to the
    upstream at once, for the gate only: the upstream has no room while it
    connects, so the client's data waits in the kernel. A poll batch may
    still carry a DATA event of the client next to its ACCEPT (received
    before the gate was set); that is copied aside (at most a batch's share
    of one connection) and sent first when the upstream is up, before the
    forwarding is switched to the loop's own (AUTO) and before any later
    data, which the gate held back until then.
    """

    def __init__(self, loop: Loop, upstream: Address, handler: str,
                 connect_timeout: float) -> None:
        self.loop = loop
        self.upstream = upstream
        self.auto = handler == "c"
        self.connect_timeout = connect_timeout
        self.peer: Dict[int, int] = {}  # fd -> the other side's fd
        self.connecting: Set[int] = set()  # upstream fds not connected yet
        # client fd -> [bytes] received before the gate held
        self.early: Dict[int, List[bytes]] = {}
        self.eof: Set[int] = set()   # fds whose peer has finished sending
        self.clients = self.pairs = self.failed = 0

    def on_accept(self, client: int) -> None:
        self.clients += 1
        host, port = self.upstream
        handle = self.loop.connect(host, port, timeout=self.connect_timeout,
                                   # a literal host: on_connect always gets an fd
                                   on_connect=self.on_connect,  # type: ignore[arg-type]
                                   on_data=self.on_data,
                                   on_eof=self.on_eof, on_close=self.on_close)
        up: int = handle.fd  # type: ignore[assignment]  # a literal: the fd is known at once
        self.peer[client] = up
        self.peer[up] = client
        self.connecting.add(up)
        _forward(self.loop, client, up, 0)  # the gate: nothing until the upstream has room

    def on_connect(self, up: int, error: Optional[Exception]) -> None:
        self.connecting.discard(up)
        client = self.peer.get(up)
        if error is not None:
            self.failed += 1
            self.peer.pop(up, None)
            if client is not None:
                self.peer.pop(client, None)
                self.early.pop(client, None)
                # Promptly, and with a FIN: a reset could beat the client's
                # own connect() back to it, which then fails (ECONNRESET).
                _quietly(self.loop.close, client)
            return
        if client is None:           # the client went while we connected
            _quietly(self.loop.close, up)
            return
        self.pairs += 1
        for chunk in self.early.pop(client, ()):
            self.loop.send(up, chunk)
        flags = _ffi.FORWARD_AUTO if self.auto else 0
        _forward(self.loop, client, up, flags)
        _forward(self.loop, up, client, flags)

    def on_data(self, fd: int, data: memoryview) -> None:
        # --handler python: every chunk; --handler c: only what a poll batch
        # lent before the loop's own forwarding took over.
        other = self.peer.get(fd)
        if other is None:
            return
        if other in self.connecting:
            self.early.setdefault(fd, []).append(bytes(data))
            return
        self.loop.send(other, data)  # the view moves: no copy; gated, never QUEUE_FULL

    def on_eof(self, fd: int) -> None:
        # The FIN goes on as a shutdown once what was forwarded has been sent
        # (AUTO does it itself: then this finds it done).
        self.eof.add(fd)
        other = self.peer.get(fd)
        if other is not None and other not in self.connecting:
            _quietly(self.loop.shutdown, other)

    def on_close(self, fd: int) -> None:
        # Graceful when both peers finished sending (each FIN was passed on);
        # otherwise fd went by a reset, an error or a timeout, and the other
        # side is aborted so its peer hears of it at once.
        self.early.pop(fd, None)
        self.connecting.discard(fd)
        graceful = fd in self.eof
        self.eof.discard(fd)
        other = self.peer.pop(fd, None)
        if other is not None:
            self.peer.pop(other, None)
            graceful = graceful and other in self.eof
            _quietly(self.loop.close if graceful else self.loop.abort, other)


def _forward(loop: Loop, fd: int, to_fd: int, flags: int) -> None:
    from .errors import ClosedError
    try:
        loop.forward(fd, to_fd, auto=bool(flags & _ffi.FORWARD_AUTO))
    except ClosedError:
        pass  # the other side is already gone: its on_close ends this one too


def _quietly(fn: Callable[[int], object], fd: int) -> None:
    from .errors import ClosedError
    try:
        fn(fd)
    except ClosedError:
        pass


def run_proxy(args: argparse.Namespace) -> int:
    """Runs the proxy of ``python -m zcn proxy`` until SIGINT/SIGTERM; the exit code."""
    import zcn

    listen_host, listen_port = _host_port(args.listen, "--listen")
    upstream = _host_port(args.upstream, "--upstream")
    if upstream[1] == 0:
        raise SystemExit("zcn proxy: the upstream port must not be 0")
    try:
        upstream = (_resolve_host(upstream[0]), upstream[1])
    except OSError as exc:
        raise SystemExit(f"zcn proxy: cannot resolve the upstream {upstream[0]!r}: {exc}")
    loop = zcn.Loop(buffer_size=args.buffer_size, buffer_pool_size=args.buffer_pool_size,
                    connections_max=args.connections_max, backend=args.backend)
    proxy = Proxy(loop, upstream, args.handler, args.connect_timeout)
    server = zcn.TcpServer(listen_host, listen_port, loop=loop, on_accept=proxy.on_accept,
                           on_data=proxy.on_data, on_eof=proxy.on_eof,
                           on_close=proxy.on_close, backlog=4096)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: loop.stop())
    print(f"zcn proxy listening on {_fmt(server.host, server.port)}, upstream "
          f"{_fmt(*upstream)} (handler={args.handler})", flush=True)
    print(backend_line(loop), flush=True)
    try:
        loop.run_forever()
    finally:
        st = loop.stats()
        server.server_close()
        loop.close()
    tcp = st.tcp
    print(f"zcn proxy stats: clients={proxy.clients} upstream_connected={proxy.pairs} "
          f"upstream_failed={proxy.failed} bytes_received={tcp.bytes_received} "
          f"bytes_sent={tcp.bytes_sent} recv_ops={tcp.recv_ops} send_ops={tcp.send_ops} "
          f"evictions={tcp.evictions} connections_active={tcp.connections_active} ",
          flush=True)
    return 0


def _fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
