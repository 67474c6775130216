"""zcn.Loop: one io_uring event loop with everything on it.

    import zcn

    loop = zcn.Loop()

    def on_connect(fd, error):
        if error is None:
            loop.send(fd, b"hello")

    def on_data(fd, data):          # data: a read-only memoryview, borrowed
        print(bytes(data))
        loop.close(fd)

    with loop:
        server = zcn.TcpServer("127.0.0.1", 0, loop=loop, on_data=...)
        loop.connect("127.0.0.1", server.port, on_connect=on_connect,
                     on_data=on_data, on_close=lambda fd: loop.stop())
        loop.call_later(5.0, loop.stop)
        loop.run_forever()

A Loop is the C ZCN_Loop (docs/EVENT_LOOP.md): TCP servers
(``zcn.TcpServer(..., loop=loop)``), outbound connections (``connect``),
timers (``call_later``/``call_at``), fd watches (``add_reader``/
``add_writer``) and calls from other threads (``call_soon_threadsafe``) all
run on it, one thread, one ring, one buffer pool. Everything is delivered in
event batches (one C call per batch, as TcpServer does), including timers,
watches and wake-ups: no C-to-Python callback per event. UDP sockets
(``zcn.UdpSocket(..., loop=loop)``) run on it too, with their own buffer
pools; their datagrams are the exception, handed to on_datagram by a C
callback from inside the poll (zcn.udp).

Connections are named by their fd, as in TcpServer: ``send``, ``close``,
``shutdown``, ``abort``, ``connection_info`` and ``queued_bytes`` work on
any connection of the loop, accepted or connected. Borrowed data follows
TcpServer's rules: the view passed to on_data is valid during the call, and
sending it (or a slice) from the callback moves the buffer without a copy.

Threads: the thread that first runs the loop (or connects, or watches an
fd) owns it; its methods called from another thread raise
WrongThreadError, except stop() and call_soon_threadsafe(), which any
thread may call (stop() from a signal handler too).

Callback exceptions follow TcpServer's policy (error_handler=None logs
them and aborts the connection concerned; "raise" propagates them out of
run_once/run_forever; a callable decides). A timer's, watch's or call's
exception is logged, or propagates with "raise".
"""
from __future__ import annotations

import collections
import ctypes
import errno
import logging
import socket
import struct
import threading
import time
from ctypes import c_int, c_uint32, c_uint64

from . import _ffi
from ._util import (
    HandleOwner,
    LoopWakeup,
    MappedMemory,
    c_writable_bytes,
    round_up_pages,
)
from ._util import backend_arg as _backend_arg
from ._util import callback_arg as _callback_arg
from ._util import HasBackend
from ._util import int_arg as _int_arg
from ._util import loop_limits as _loop_limits
from ._util import send_bytes_like as _send_bytes_like
from ._util import wrong_thread_error as _wrong_thread_error
from ._util import seconds_to_ms as _seconds_arg
from ._util import timeout_ms as _timeout_ms
from .errors import BusyError, ClosedError, WrongThreadError, error_from_code

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    from typing import (Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Set,
                        Tuple, Union)

    from typing_extensions import TypeVarTuple, Unpack  # for type checkers only

    from ._types import (BytesLike, ConnectCallback, DataCallback, FdCallback,
                         FileDescriptorLike, LoopErrorHandler)
    from .server import ConnectionInfo, ServerStats, TcpServer
    from .udp import UdpSocket

    _Ts = TypeVarTuple("_Ts")

__all__ = ["Loop", "TimerHandle", "ConnectHandle", "LoopStats"]

log = logging.getLogger(__name__)

EVENTS_MAX = 256
UINT32_MAX = 0xFFFFFFFF

# type, fd, len, tag, offset (the data pointer is base + offset: skipped)
_EVENT_DECODE = struct.Struct("=IiIIQ8x")
if _EVENT_DECODE.size != ctypes.sizeof(_ffi.Event):  # pragma: no cover - a broken mirror
    raise ImportError("zcn: ZCN_Event changed; update zcn.loop's decoder")
_iter_events = _EVENT_DECODE.iter_unpack
(_ACCEPT, _DATA, _CLOSE, _DRAIN, _EOF, _CONNECT, _TIMER, _WATCH, _CALL) = range(1, 10)
#: The tag of the connections zcn.aio adopts (a small int: no allocation
#: per decoded event); servers' tags skip it.
_ASYNCIO_TAG = 256
_DATAGRAMS = _ffi.EVENT_DATAGRAMS
_ERR_WRONG_THREAD = WrongThreadError.code
_ERR_CLOSED = ClosedError.code
_NO_VIEW = object()
_NO_CALLBACK = _ffi.OnTimer()
_NO_WATCH_CB = _ffi.OnWatch()
_NO_CALL = _ffi.Call()

_poll_raw = ctypes.CDLL(_ffi.lib._name, handle=_ffi.lib._handle).zcn_loop_poll
_poll_raw.restype = c_int
_send = _ffi.zcn_loop_send
_send_view = ctypes.PyDLL(_ffi.lib._name, handle=_ffi.lib._handle).zcn_loop_send
_send_view.restype = c_int
_flush_raw = _ffi.zcn_loop_flush

_STATS_FIELDS = [field[0] for field in _ffi.LoopStats._fields_ if field[0] != "tcp"]


class LoopStats:
    """A snapshot of a loop's counters: ``tcp`` (a zcn.ServerStats of every
    TCP connection of the loop) and the loop's own: turns, timers_active,
    timers_fired, watches_active, watch_events, calls_run, calls_refused,
    connects_started, connects_failed, connect_timeouts, servers, and
    busy_polls_found / busy_polls_expired (busy_poll_us: spins that found
    work, spins that ran out and let the loop sleep)."""

    __slots__ = ("tcp",) + tuple(_STATS_FIELDS)

    # The fields, for type checkers (set from _STATS_FIELDS, checked by tests/test_typing.py).
    tcp: ServerStats
    turns: int
    timers_active: int
    timers_fired: int
    watches_active: int
    watch_events: int
    calls_run: int
    calls_refused: int
    connects_started: int
    connects_failed: int
    connect_timeouts: int
    servers: int
    busy_polls_found: int
    busy_polls_expired: int

    def __init__(self, raw: Any) -> None:
        from .server import ServerStats, _STATS_FIELDS as tcp_fields
        self.tcp = ServerStats(*(getattr(raw.tcp, name) for name in tcp_fields))
        for name in _STATS_FIELDS:
            setattr(self, name, getattr(raw, name))

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)}" for name in _STATS_FIELDS)
        return f"LoopStats({inner}, tcp={self.tcp!r})"


class TimerHandle:
    """What call_later/call_at return: ``cancel()`` it (on the loop thread)
    before it runs and it never does; ``when`` is its due time on
    loop.time()'s clock."""

    __slots__ = ("_loop", "_id", "_callback", "_args", "when", "_cancelled")

    def __init__(self, loop: Loop, timer_id: int, when: float,
                 callback: Callable[..., object], args: Tuple[Any, ...]) -> None:
        self._loop = loop
        self._id = timer_id
        self.when = when
        self._callback: Optional[Callable[..., object]] = callback
        self._args: Optional[Tuple[Any, ...]] = args
        self._cancelled = False

    def cancel(self) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        loop = self._loop
        if loop._timers.pop(self._id, None) is not None and loop._handle is not None:
            rc = _ffi.zcn_loop_timer_cancel(loop._handle, self._id)
            if rc and rc != _ERR_CLOSED:
                raise loop._error(rc, "TimerHandle.cancel()")
        self._callback = self._args = None

    def cancelled(self) -> bool:
        return self._cancelled

    def __repr__(self) -> str:
        state = "cancelled" if self._cancelled else f"when={self.when:.3f}"
        return f"<zcn.TimerHandle {state} {self._callback!r}>"


class _Call:
    """call_soon_threadsafe's handle: cancel() before it runs."""

    __slots__ = ("callback", "args", "cancelled_flag")

    def __init__(self, callback: Callable[..., object], args: Tuple[Any, ...]) -> None:
        self.callback = callback
        self.args = args
        self.cancelled_flag = False

    def cancel(self) -> None:
        self.cancelled_flag = True

    def cancelled(self) -> bool:
        return self.cancelled_flag


class ConnectHandle:
    """What connect() returns. ``fd`` is the connection's fd once the
    connect has started (None while a host name is being resolved);
    ``cancel()`` gives up: on_connect is then called with a ClosedError
    (a connection already established is closed instead)."""

    __slots__ = ("fd", "_loop", "_cancelled", "_record")

    def __init__(self, loop: Loop, record: _Outbound) -> None:
        self.fd: Optional[int] = None
        self._loop = loop
        self._cancelled = False
        self._record = record

    def cancel(self) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        loop = self._loop
        if self.fd is not None and loop._handle is not None and self.fd in loop._conns:
            _ffi.zcn_loop_close(loop._handle, self.fd)

    def __repr__(self) -> str:
        return f"<zcn.ConnectHandle fd={self.fd}>"


class _Outbound:
    """The callbacks of one outbound connection, under the attribute names
    TcpServer uses for its own, so one dispatch serves both."""

    __slots__ = ("_on_connect", "_on_data", "_on_eof", "_on_close", "_on_drain", "handle",
                 "connected")

    def __init__(self, on_connect: Optional[ConnectCallback], on_data: Optional[DataCallback],
                 on_eof: Optional[FdCallback], on_close: Optional[FdCallback],
                 on_drain: Optional[FdCallback]) -> None:
        self._on_connect = on_connect
        self._on_data = on_data
        self._on_eof = on_eof
        self._on_close = on_close
        self._on_drain = on_drain
        self.handle: Optional[ConnectHandle] = None
        self.connected = False

    def _callback_failed(self, loop: Loop, name: str, fd: Optional[int], exc: Exception) -> None:
        loop._callback_failed(name, fd, exc)


def _c_pointer(address: int) -> Any:
    return ctypes.byref(ctypes.c_char.from_address(address))


class Loop(HandleOwner, HasBackend):
    """An io_uring event loop (see the module docstring).

    The buffer and connection limits are the loop's, for every connection
    on it, with TcpServer's meaning and defaults. timers_max, watches_max
    and calls_max bound the timers pending, the fds watched and the
    wake-ups queued by other threads at once (ExhaustedError / retried
    wake-ups past them). backend: None or "auto" (io_uring, epoll where
    io_uring is refused; the ZCN_BACKEND environment variable may choose),
    "io_uring" or "epoll" (docs/BACKENDS.md). busy_poll_us: 0 (off, the
    default) or up to 10000: before blocking, spin on the completion queue
    until that many microseconds have passed since the last completion,
    for latency, at the cost of a CPU kept at 100 % while traffic flows
    (an idle loop still sleeps; docs/PERFORMANCE.md, "Busy polling").
    error_handler: None (log and abort the connection),
    "raise", or a callable error_handler(fd, exc) (fd is None for timers,
    watches and calls).
    """

    _kind = "zcn.Loop"
    _backend_fn = _ffi.zcn_loop_backend
    _memory: Optional[MappedMemory] = None

    def __init__(self, *, io_uring_entries: int = 256, buffer_pool_size: int = 1024,
                 buffer_size: int = 16384, connections_max: int = 4096,
                 send_queue_max_bytes: int = 1 << 20, buffer_reserve: Optional[int] = None,
                 send_timeout: Optional[float] = 60.0,
                 conn_buffers_hard_max: Optional[int] = None, timers_max: int = 4096,
                 watches_max: int = 1024, calls_max: int = 4096,
                 error_handler: LoopErrorHandler = None,
                 backend: Optional[str] = None, busy_poll_us: int = 0) -> None:
        limits = _loop_limits(io_uring_entries, buffer_pool_size, buffer_size, connections_max,
                              send_queue_max_bytes, buffer_reserve, send_timeout,
                              conn_buffers_hard_max)
        buffers, buffer_size = limits["buffer_pool_size"], limits["buffer_size"]
        timers = _int_arg(timers_max, "timers_max", 1, _ffi.LOOP_TIMERS_MAX)
        watches = _int_arg(watches_max, "watches_max", 1, _ffi.LOOP_WATCHES_MAX)
        calls = _int_arg(calls_max, "calls_max", 1, _ffi.LOOP_CALLS_MAX)
        backend_code = _backend_arg(backend)
        busy_us = _int_arg(busy_poll_us, "busy_poll_us", 0, _ffi.LOOP_BUSY_POLL_US_MAX)
        if not (error_handler is None or error_handler == "raise" or callable(error_handler)):
            raise TypeError("error_handler must be None, 'raise' or a callable")
        self._error_handler: LoopErrorHandler = error_handler

        self._lock = threading.RLock()
        self._owner: Optional[int] = None
        self._loop_thread: Optional[int] = None
        self._stop_requested = False
        self._wakeup = LoopWakeup(_ffi.zcn_loop_wakeup_fd)
        self._owners: Dict[int, TcpServer] = {}  # tag -> TcpServer
        self._next_tag = 1
        # fd -> its TcpServer or _Outbound, until its close
        self._conns: Dict[int, Union[TcpServer, _Outbound]] = {}
        self._aborted: Set[int] = set()
        self._timers: Dict[int, TimerHandle] = {}  # timer id -> TimerHandle
        # watch id -> (callback, args)
        self._watch_cbs: Dict[int, Tuple[Callable[..., object], Tuple[Any, ...]]] = {}
        self._readers: Dict[int, int] = {}  # fd -> watch id
        self._writers: Dict[int, int] = {}
        self._ready: Deque[_Call] = collections.deque()  # call_soon / call_soon_threadsafe
        self._wake_pending = False
        self._pending: Optional[Iterator[Tuple[Any, ...]]] = None
        self._cur_view: object = _NO_VIEW
        self._cur_ptr: Any = None
        self._cur_len = 0
        # UDP sockets on the loop (zcn.UdpSocket(loop=)), closed before the
        # C loop; their datagrams come through C callbacks inside the poll,
        # counted in _c_calls, and what those raise waits in _raised.
        self._udp_sockets: Dict[UdpSocket, None] = {}
        # UDP sockets in batch mode (zcn_udp_set_batch): batch tag ->
        # handler(count), called for the socket's ZCN_EVENT_DATAGRAMS
        # (zcn.aio's datagram transports, zcn/_aio_udp.py).
        self._batch_handlers: Dict[int, Callable[[int], None]] = {}
        self._c_calls = 0
        self._raised: List[BaseException] = []

        rounded = round_up_pages(buffer_size)
        slab_bytes = rounded * buffers
        self._memory = MappedMemory(slab_bytes, readonly=True)
        self._slab = self._memory.view
        base = self._memory.address
        self._base = base
        self._buffer_size = rounded
        self._ev_anchor, _, ev_view = c_writable_bytes(EVENTS_MAX * _EVENT_DECODE.size)
        self._ev_ptr = ctypes.byref(self._ev_anchor)
        self._ev_views = [ev_view[:n * _EVENT_DECODE.size] for n in range(EVENTS_MAX + 1)]
        self._count = c_uint32(0)
        self._count_arg = ctypes.byref(self._count)
        cfg = _ffi.LoopConfig(timers_max=timers, watches_max=watches, calls_max=calls,
                              backend=backend_code, busy_poll_us=busy_us,
                              buffer_memory=base, buffer_memory_size=slab_bytes,
                              **dict(limits, buffer_size=rounded))
        try:
            self._handle = _ffi.create(_ffi.zcn_loop_create, ctypes.byref(cfg))
        except BaseException:
            self._drop_memory()
            raise
        self._handle_arg = _c_pointer(self._handle)
        self._buffer_ptrs = {i * rounded: _c_pointer(base + i * rounded) for i in range(buffers)}

    # --- queries -------------------------------------------------------------
    def time(self) -> float:
        """The loop's clock in seconds (time.monotonic()'s)."""
        return time.monotonic()

    @property
    def buffer_size(self) -> int:
        """Bytes per buffer (the requested size rounded up to 4096)."""
        return self._buffer_size

    def stats(self) -> LoopStats:
        raw = _ffi.LoopStats()
        with self._lock:
            _ffi.zcn_loop_stats(self._live(), ctypes.byref(raw))
        return LoopStats(raw)

    def __repr__(self) -> str:
        if self._handle is None:
            return "<zcn.Loop closed>"
        return (f"<zcn.Loop servers={len(self._owners)} connections={len(self._conns)} "
                f"timers={len(self._timers)}>")

    # --- errors --------------------------------------------------------------
    def _error(self, rc: int, where: str) -> Exception:
        if rc == _ERR_WRONG_THREAD:
            return _wrong_thread_error(rc, where, self._owner, "this loop",
                                       ", or use call_soon_threadsafe()")
        return error_from_code(rc, where)

    def _claim(self) -> None:
        """The calling thread becomes the owner if there is none."""
        if self._owner is None:
            self._owner = threading.get_ident()

    def _callback_failed(self, name: str, fd: Optional[int], exc: Exception) -> None:
        handler = self._error_handler
        if handler == "raise":
            raise exc
        if handler is not None:
            handler(fd, exc)
            return
        if fd is None or name == "on_close":
            log.error("zcn.Loop: %s raised", name, exc_info=exc)
            return
        log.error("zcn.Loop: %s(%d) raised; aborting that connection", name, fd, exc_info=exc)
        if self._handle is not None and fd in self._conns and fd not in self._aborted:
            if _ffi.zcn_loop_abort(self._handle, fd) == 0:
                self._aborted.add(fd)

    # --- connections ---------------------------------------------------------
    def connect(self, host: str, port: int, *, on_connect: Optional[ConnectCallback] = None,
                on_data: Optional[DataCallback] = None, on_eof: Optional[FdCallback] = None,
                on_close: Optional[FdCallback] = None, on_drain: Optional[FdCallback] = None,
                timeout: Optional[float] = 30.0, local_address: Optional[str] = None,
                local_port: int = 0, idle_timeout: Optional[float] = None,
                tcp_nodelay: bool = True) -> ConnectHandle:
        """Connects out to host:port without blocking and returns a
        ConnectHandle. ``on_connect(fd, error)`` follows once: error None when
        connected (from then on the connection is like an accepted one:
        on_data, on_eof, on_drain, and exactly one on_close), else the
        OSError (ConnectionRefusedError, TimeoutError after ``timeout``
        seconds, socket.gaierror for a name that does not resolve,
        ClosedError if cancelled or the loop closed) and nothing else
        follows; fd is then None if the connect never started (a name
        that did not resolve, or a connect refused after resolving), so
        check ``error`` first. A host name is resolved by getaddrinfo in a thread, never
        blocking the loop. on_eof set means half-close mode, as TcpServer.
        Owner thread."""
        for name, fn in (("on_connect", on_connect), ("on_data", on_data), ("on_eof", on_eof),
                         ("on_close", on_close), ("on_drain", on_drain)):
            _callback_arg(fn, name)
        if not isinstance(host, str):
            raise TypeError(f"host must be a str, not {type(host).__name__}")
        port = _int_arg(port, "port", 1, 65535)
        local_port = _int_arg(local_port, "local_port", 0, 65535)
        timeout_ms: Optional[int] = _ffi.TIMEOUT_NEVER
        if timeout is not None:
            timeout_ms = _seconds_arg(timeout, "timeout", allow_zero=False)
            if timeout_ms is None or timeout_ms >= UINT32_MAX:
                timeout_ms = _ffi.TIMEOUT_NEVER
        idle_ms = 0
        if idle_timeout is not None:
            idle_ms = min(_seconds_arg(idle_timeout, "idle_timeout", allow_zero=False)
                          or 0, UINT32_MAX - 1)
        if local_address is not None and not isinstance(local_address, str):
            raise TypeError("local_address must be a str or None")
        self._live()
        record = _Outbound(on_connect, on_data, on_eof, on_close, on_drain)
        handle = ConnectHandle(self, record)
        record.handle = handle
        params = (port, local_address, local_port, timeout_ms, idle_ms, bool(tcp_nodelay))
        literal = _literal(host)
        if literal is not None:
            self._start_connect(handle, literal, params, raise_errors=True)
            return handle
        # A name: resolve in a thread, come back through call_soon_threadsafe.
        self._check_thread("connect()")

        def resolve() -> None:
            addr: Any  # a str: getaddrinfo's host for SOCK_STREAM
            error: Optional[OSError]
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                addr = infos[0][4][0]
                error = None
            except OSError as exc:
                addr, error = None, exc
            try:
                self.call_soon_threadsafe(self._resolved, handle, addr, error, params)
            except ClosedError:
                pass  # the loop went meanwhile

        threading.Thread(target=resolve, name=f"zcn resolve {host}", daemon=True).start()
        return handle

    def _check_thread(self, where: str) -> None:
        owner = self._owner
        if owner is not None and owner != threading.get_ident():
            raise self._error(_ERR_WRONG_THREAD, where)

    def _resolved(self, handle: ConnectHandle, addr: Optional[str],
                  error: Optional[Exception], params: Tuple[Any, ...]) -> None:
        record = handle._record
        if handle._cancelled and error is None:
            error = ClosedError("connect cancelled")
        if error is not None:
            if record._on_connect is not None:
                self._guarded(record, record._on_connect, "on_connect", None, error)
            return
        self._start_connect(handle, addr, params,  # type: ignore[arg-type]  # error None: a str
                            raise_errors=False)

    def _start_connect(self, handle: ConnectHandle, literal: str, params: Tuple[Any, ...],
                       raise_errors: bool) -> None:
        port, local_address, local_port, timeout_ms, idle_ms, nodelay = params
        record = handle._record
        cfg = _ffi.ConnectConfig(
            address=literal.encode(), port=port, local_port=local_port,
            local_address=None if local_address is None else local_address.encode(),
            timeout_ms=timeout_ms, idle_timeout_ms=idle_ms,
            tcp_nodelay=1 if nodelay else -1,
            flags=_ffi.SERVER_HALF_CLOSE)  # EOF events always; on_eof=None closes here
        fd = c_int(-1)
        with self._lock:
            rc = _ffi.zcn_loop_connect(self._live(), ctypes.byref(cfg), ctypes.byref(fd))
            if rc == 0:
                self._claim()
        if rc:
            exc = self._error(rc, f"connect({literal!r}, {port})")
            if raise_errors:
                raise exc
            if record._on_connect is not None:
                self._guarded(record, record._on_connect, "on_connect", None, exc)
            return
        handle.fd = fd.value
        self._conns[fd.value] = record

    def _view_send(self, fd: int, data: BytesLike) -> int:
        if data is self._cur_view:
            return _send_view(self._handle_arg, fd, self._cur_ptr, self._cur_len)
        if type(data) is bytes:
            return _send(self._handle, fd, data, len(data))
        return _send_bytes_like(_send, self._handle, fd, data)

    def send(self, fd: int, data: BytesLike) -> None:
        """As TcpServer.send, for any connection of the loop."""
        if type(fd) is not int:
            fd = _int_arg(fd, "fd")
        if fd not in self._conns:
            raise self._closed_error(fd)
        rc = self._view_send(fd, data)
        if rc:
            raise self._error(rc, f"send(fd={fd})")

    def _closed_error(self, fd: int) -> ClosedError:
        if self._handle is None:
            return ClosedError(f"{self._kind} is closed")
        return ClosedError(f"fd {fd} is not an open connection of this loop", code=_ERR_CLOSED)

    def _fd_call(self, fn: Callable[[Any, int], int], fd: int, where: str) -> None:
        if type(fd) is not int:
            fd = _int_arg(fd, "fd")
        if fd not in self._conns:
            raise self._closed_error(fd)
        rc = fn(self._handle, fd)
        if rc:
            raise self._error(rc, f"{where}(fd={fd})")

    def close(self, fd: Optional[int] = None) -> None:
        """close(fd): closes connection fd gracefully (queued data is sent,
        then on_close). close(): closes the loop (see close_loop)."""
        if fd is None:
            return self.close_loop()
        self._fd_call(_ffi.zcn_loop_close, fd, "close")

    def shutdown(self, fd: int) -> None:
        """Half-closes fd: FIN once its queue is sent; receiving goes on."""
        self._fd_call(_ffi.zcn_loop_shutdown, fd, "shutdown")

    def abort(self, fd: int) -> None:
        """Resets fd (RST): queued data dropped; on_close follows."""
        self._fd_call(_ffi.zcn_loop_abort, fd, "abort")

    def forward(self, fd: int, to_fd: Optional[int], *, auto: bool = False) -> None:
        """Forwards what fd receives to to_fd: fd's deliveries wait for
        room in to_fd's send queue instead of its own, so a to_fd that does
        not read pauses receiving on fd (memory stays bounded) and an
        on_data that sends the view on to to_fd never gets QueueFullError.
        While to_fd still connects it has no room: fd's data waits. With
        auto=True the loop sends the data itself (no on_data call; a poll
        batch may still carry data received before this call) and passes
        fd's end of stream on as a shutdown of to_fd. to_fd=None ends it;
        it also ends when either side closes. A forward each way is a proxy
        (see python -m zcn proxy). BusyError if another fd already forwards
        to to_fd. Owner thread."""
        fd = _int_arg(fd, "fd", 0, 0x7FFFFFFF)
        target = -1 if to_fd is None else _int_arg(to_fd, "to_fd", 0, 0x7FFFFFFF)
        rc = _ffi.zcn_loop_forward(self._live(), fd, target, _ffi.FORWARD_AUTO if auto else 0)
        if rc:
            raise self._error(rc, f"forward({fd}, {to_fd})")

    def queued_bytes(self, fd: int) -> int:
        """As TcpServer.queued_bytes, for any connection of the loop."""
        if self._handle is None:
            return 0
        return _ffi.zcn_loop_queued_bytes(self._handle, _int_arg(fd, "fd"))

    def connection_info(self, fd: int) -> ConnectionInfo:
        """As TcpServer.connection_info, for any connection of the loop."""
        from .server import _conn_info_from
        raw = _ffi.ConnInfo()
        fd = _int_arg(fd, "fd")
        if fd not in self._conns:
            raise self._closed_error(fd)
        rc = _ffi.zcn_loop_conn_info(self._handle, fd, ctypes.byref(raw))
        if rc:
            raise self._error(rc, f"connection_info(fd={fd})")
        return _conn_info_from(raw)

    # --- timers --------------------------------------------------------------
    def call_later(self, delay: float, callback: Callable[[Unpack[_Ts]], object],
                   *args: Unpack[_Ts]) -> TimerHandle:
        """Runs callback(*args) after ``delay`` seconds (rounded up to the
        millisecond: never early); returns a TimerHandle. Owner thread."""
        if not callable(callback):
            raise TypeError("callback must be callable")
        ms = _seconds_arg(delay, "delay", allow_zero=True)
        if ms is None:
            raise ValueError("delay must be finite")
        out = c_uint64(0)
        with self._lock:
            rc = _ffi.zcn_loop_timer_start(self._live(), ms, 0, _NO_CALLBACK, None,
                                           ctypes.byref(out))
        if rc:
            raise self._error(rc, "call_later()")
        handle = TimerHandle(self, out.value, self.time() + ms / 1000, callback, args)
        self._timers[out.value] = handle
        return handle

    def call_at(self, when: float, callback: Callable[[Unpack[_Ts]], object],
                *args: Unpack[_Ts]) -> TimerHandle:
        """call_later at loop.time() == when."""
        return self.call_later(max(0.0, when - self.time()), callback, *args)

    # --- fd watches ----------------------------------------------------------
    def _watch(self, table: Dict[int, int], fd: FileDescriptorLike, events: int,
               callback: Callable[..., object], args: Tuple[Any, ...], where: str) -> None:
        if not callable(callback):
            raise TypeError("callback must be callable")
        fd = _fileno(fd)
        self._remove_watch(table, fd)
        out = c_uint64(0)
        with self._lock:
            rc = _ffi.zcn_loop_watch(self._live(), fd, events, _NO_WATCH_CB, None,
                                     ctypes.byref(out))
            if rc == 0:
                self._claim()
        if rc:
            raise self._error(rc, where)
        table[fd] = out.value
        self._watch_cbs[out.value] = (callback, args)

    def _remove_watch(self, table: Dict[int, int], fd: int) -> bool:
        watch_id = table.pop(fd, None)
        if watch_id is None:
            return False
        self._watch_cbs.pop(watch_id, None)
        if self._handle is not None:
            rc = _ffi.zcn_loop_unwatch(self._handle, watch_id)
            if rc and rc != _ERR_CLOSED:
                raise self._error(rc, "remove watch")
        return True

    def add_reader(self, fd: FileDescriptorLike, callback: Callable[[Unpack[_Ts]], object],
                   *args: Unpack[_Ts]) -> None:
        """Calls callback(*args) while fd (an int or an object with
        fileno()) is readable, level-triggered; replaces an earlier reader
        of fd. Remove it before closing fd. Owner thread."""
        self._watch(self._readers, fd, _ffi.WATCH_READ, callback, args, "add_reader()")

    def add_writer(self, fd: FileDescriptorLike, callback: Callable[[Unpack[_Ts]], object],
                   *args: Unpack[_Ts]) -> None:
        """add_reader for writability."""
        self._watch(self._writers, fd, _ffi.WATCH_WRITE, callback, args, "add_writer()")

    def remove_reader(self, fd: FileDescriptorLike) -> bool:
        """True if a reader of fd was removed."""
        return self._remove_watch(self._readers, _fileno(fd))

    def remove_writer(self, fd: FileDescriptorLike) -> bool:
        """True if a writer of fd was removed."""
        return self._remove_watch(self._writers, _fileno(fd))

    def _c_callback_failed(self, name: str, exc: Exception) -> None:
        """The error policy for a callback that C calls from inside
        zcn_loop_poll (a UDP socket's on_datagram), where an exception
        cannot propagate through ctypes: what the policy raises is kept and
        raised by run_once/run_forever once the poll has returned."""
        try:
            self._callback_failed(name, None, exc)
        except BaseException as raised:
            self._raised.append(raised)

    def _raise_pending(self) -> None:
        # The batch's sends go first: the loop may not turn again soon.
        _flush_raw(self._handle)
        raise self._raised.pop(0)

    # --- calls -----------------------------------------------------------------
    def call_soon(self, callback: Callable[[Unpack[_Ts]], object],
                  *args: Unpack[_Ts]) -> _Call:
        """Runs callback(*args) at the loop's next turn (owner thread)."""
        if not callable(callback):
            raise TypeError("callback must be callable")
        call = _Call(callback, args)
        self._ready.append(call)
        return call

    def call_soon_threadsafe(self, callback: Callable[[Unpack[_Ts]], object],
                             *args: Unpack[_Ts]) -> _Call:
        """call_soon from any thread: the loop is woken if it waits.
        ClosedError once the loop is closed."""
        if not callable(callback):
            raise TypeError("callback must be callable")
        call = _Call(callback, args)
        self._ready.append(call)   # deque.append is atomic
        handle = self._handle
        if handle is None:
            raise ClosedError("zcn.Loop is closed")
        if not self._wake_pending:
            self._wake_pending = True
            rc = _ffi.zcn_loop_call(handle, _NO_CALL, None)
            if rc and rc != _ffi_queue_full():
                if rc == 10001:  # ZCN_ERR_INVALID_ARGUMENT: destroyed meanwhile
                    raise ClosedError("zcn.Loop is closed")
                raise error_from_code(rc, "call_soon_threadsafe()")
        return call

    def _run_ready(self) -> None:
        ready = self._ready
        self._wake_pending = False
        for _ in range(len(ready)):
            call = ready.popleft()
            if call.cancelled_flag:
                continue
            try:
                call.callback(*call.args)
            except Exception as exc:
                self._callback_failed(f"call {call.callback!r}", None, exc)

    # --- servers ---------------------------------------------------------------
    def _add_server(self, server: TcpServer) -> int:
        tag = self._next_tag
        if tag == _ASYNCIO_TAG:
            tag += 1
        self._next_tag = tag + 1
        self._owners[tag] = server
        return tag

    def _remove_server(self, server: TcpServer, tag: int, fds: Iterable[int]) -> None:
        self._owners.pop(tag, None)
        for fd in fds:
            self._conns.pop(fd, None)
            self._aborted.discard(fd)

    # --- running -----------------------------------------------------------
    def run_once(self, timeout: Optional[float] = None) -> int:
        """Waits for events (timeout in seconds; None: until one) and
        dispatches them; returns how many were handled. 0 on timeout, on a
        signal or after stop()."""
        timeout_ms = _timeout_ms(timeout, "timeout")
        self._enter(timeout_ms)
        try:
            if self._stop_requested:
                self._stop_requested = False
                return 0
            handled = self._turn(timeout_ms)
            _flush_raw(self._handle)
            if not handled and self._stop_requested:
                self._stop_requested = False
            return handled
        finally:
            self._exit()

    def run_forever(self) -> None:
        """Runs until stop() (then returns) or until a callback's exception
        propagates (error_handler="raise"; run again to resume)."""
        self._enter(-1)
        try:
            while not self._stop_requested:
                self._turn(-1)
            self._stop_requested = False
            _flush_raw(self._handle)
        finally:
            self._exit()

    def stop(self) -> None:
        """Makes run_forever return (and a waiting run_once return 0). Any
        thread, or a signal handler. No-op on a closed loop."""
        with self._lock:
            handle = self._handle
            if handle is not None:
                self._stop_requested = True
                _ffi.zcn_loop_stop(handle)

    def is_running(self) -> bool:
        """True while run_once/run_forever runs (on the owner thread)."""
        return self._loop_thread is not None

    def _enter(self, timeout_ms: int) -> None:
        me = threading.get_ident()
        with self._lock:
            self._live()
            if self._loop_thread is not None:
                if self._loop_thread == me:
                    raise BusyError("zcn.Loop: run_once()/run_forever() called from inside "
                                    "one of its callbacks")
                raise WrongThreadError("zcn.Loop: the loop is already running in another thread")
            if self._owner is not None and self._owner != me:
                raise self._error(_ERR_WRONG_THREAD, "run")
            self._owner = me
            self._loop_thread = me
        try:
            self._wakeup.enter(self._handle, timeout_ms)
        except BaseException:
            self._exit()
            raise

    def _exit(self) -> None:
        self._wakeup.exit()
        with self._lock:
            self._loop_thread = None

    def _turn(self, timeout_ms: int) -> int:
        if self._raised:
            self._raise_pending()
        if self._pending is not None:
            handled = self._dispatch()
            if handled:
                return handled
        if self._ready:
            timeout_ms = 0
        self._c_calls = 0
        rc = _poll_raw(self._handle_arg, self._ev_ptr, EVENTS_MAX, timeout_ms, self._count_arg)
        n = self._count.value
        if self._raised:  # from a C callback: the poll's events wait for the next turn
            if n:
                self._pending = _iter_events(self._ev_views[n])
            self._raise_pending()
        handled = self._c_calls
        if n:
            self._pending = _iter_events(self._ev_views[n])
            handled = self._dispatch()
        if self._ready:
            handled += len(self._ready)
            self._run_ready()
        if rc and rc != errno.EINTR:
            raise self._error(rc, "zcn_loop_poll")
        return handled

    def _guarded(self, owner: Union[TcpServer, _Outbound, None], fn: Callable[..., object],
                 name: str, fd: Optional[int], *args: Any) -> None:
        try:
            fn(fd, *args)
        except Exception as exc:
            if isinstance(owner, _Outbound) or owner is None:
                self._callback_failed(name, fd, exc)
            else:
                # a server's connection: fd is an int
                owner._callback_failed(name, fd, exc)  # type: ignore[arg-type]

    def _dispatch(self) -> int:
        # A connection's owner is its TcpServer or an _Outbound, which has
        # the callback attributes under the same names: duck-typed here.
        owner: Any
        handled = 0
        conns = self._conns
        owners = self._owners
        aborted = self._aborted
        slab = self._slab
        ptr_at = self._buffer_ptrs.get
        try:
            for etype, fd, length, tag, offset in self._pending:  # type: ignore[union-attr]
                handled += 1
                if etype == _DATA:
                    owner = conns.get(fd)
                    on_data = owner._on_data if owner is not None else None
                    if on_data is None or (aborted and fd in aborted):
                        continue
                    self._cur_view = view = slab[offset:offset + length]
                    self._cur_ptr = ptr_at(offset) or _c_pointer(self._base + offset)
                    self._cur_len = length
                    try:
                        on_data(fd, view)
                    except Exception as exc:
                        if type(owner) is _Outbound:
                            self._callback_failed("on_data", fd, exc)
                        else:
                            owner._callback_failed("on_data", fd, exc)
                    finally:
                        self._cur_view = _NO_VIEW
                        try:
                            view.release()
                        except BufferError:
                            pass
                elif etype == _TIMER:
                    handle = self._timers.pop(offset, None)
                    if handle is not None and not handle._cancelled:
                        callback, args = handle._callback, handle._args
                        handle._callback = handle._args = None
                        try:
                            callback(*args)  # type: ignore[misc]  # set until it runs
                        except Exception as exc:
                            self._callback_failed(f"timer {callback!r}", None, exc)
                elif etype == _WATCH:
                    entry = self._watch_cbs.get(offset)
                    if entry is not None:
                        try:
                            entry[0](*entry[1])
                        except Exception as exc:
                            self._callback_failed(f"watch {entry[0]!r}", None, exc)
                elif etype == _CALL:
                    self._run_ready()
                elif etype == _DATAGRAMS:
                    handler = self._batch_handlers.get(tag)
                    if handler is not None:
                        handler(length)
                elif etype == _ACCEPT:
                    server = owners.get(tag)
                    if server is None:
                        continue
                    conns[fd] = server
                    server._fds.add(fd)
                    if server._on_accept is not None:
                        self._guarded(server, server._on_accept, "on_accept", fd)
                elif etype == _CLOSE:
                    owner = conns.pop(fd, None)
                    aborted.discard(fd)
                    if owner is None:
                        continue
                    if type(owner) is not _Outbound:
                        owner._fds.discard(fd)
                    if owner._on_close is not None:
                        self._guarded(owner, owner._on_close, "on_close", fd)
                elif etype == _CONNECT:
                    owner = conns.get(fd)
                    if owner is None:
                        continue
                    error: Optional[Exception] = None
                    if offset:
                        conns.pop(fd, None)
                        if owner.handle is not None and owner.handle._cancelled:
                            error = ClosedError("connect cancelled")
                        else:
                            error = _connect_error(offset)
                    else:
                        owner.connected = True
                        if owner.handle is not None and owner.handle._cancelled:
                            _ffi.zcn_loop_close(self._handle, fd)
                    if owner._on_connect is not None:
                        self._guarded(owner, owner._on_connect, "on_connect", fd, error)
                elif aborted and fd in aborted:
                    continue
                elif etype == _EOF:
                    owner = conns.get(fd)
                    if owner is None:
                        continue
                    if owner._on_eof is not None:
                        self._guarded(owner, owner._on_eof, "on_eof", fd)
                    else:
                        _ffi.zcn_loop_close(self._handle, fd)
                elif etype == _DRAIN:
                    owner = conns.get(fd)
                    if owner is not None and owner._on_drain is not None:
                        self._guarded(owner, owner._on_drain, "on_drain", fd)
        except BaseException:
            _flush_raw(self._handle)
            raise
        self._pending = None
        return handled

    # --- lifetime ------------------------------------------------------------
    def close_loop(self) -> None:
        """Closes every UDP socket on the loop, every server (their on_close
        calls), every outbound connection (on_close; on_connect(fd,
        ClosedError) for one still connecting), drops timers, watches and
        calls not yet run, and frees the loop. Idempotent. Not from a
        callback (BusyError), and not while the loop runs in another thread
        (stop it first); with UDP sockets open, on the loop's thread only."""
        me = threading.get_ident()
        with self._lock:
            if self._handle is None:
                return
            if self._loop_thread is not None:
                raise BusyError("zcn.Loop.close() while the loop runs: stop() it first"
                                if self._loop_thread != me else
                                "zcn.Loop.close() from inside one of its callbacks")
        for sock in list(self._udp_sockets):
            sock.close()  # first: zcn_loop_destroy refuses while UDP sockets remain
        first = None
        for server in list(self._owners.values()):
            try:
                server.server_close()
            except Exception as exc:  # on_close raised: report after the rest
                first = first or exc
        with self._lock:
            handle, self._handle = self._handle, None
            try:
                _ffi.zcn_loop_destroy(handle)
            except BaseException:
                self._handle = handle
                raise
        conns, self._conns = self._conns, {}
        self._timers.clear()
        self._watch_cbs.clear()
        self._readers.clear()
        self._writers.clear()
        self._ready.clear()
        self._raised.clear()
        self._pending = None
        self._drop_memory()
        for fd, owner in sorted(conns.items()):
            if type(owner) is not _Outbound:
                continue
            try:
                if owner.connected:
                    if owner._on_close is not None:
                        self._guarded(owner, owner._on_close, "on_close", fd)
                elif owner._on_connect is not None:
                    self._guarded(owner, owner._on_connect, "on_connect", fd,
                                  ClosedError("the loop was closed while connecting"))
            except Exception as exc:
                first = first or exc
        if first is not None:
            raise first

    def _drop_memory(self) -> None:
        self._slab = None  # type: ignore[assignment]  # typed as there: unread once closed
        memory, self._memory = self._memory, None
        if memory is not None:
            memory.close()

    def __exit__(self, *exc: object) -> None:
        self.close_loop()

    def _finalize(self) -> None:
        if self._handle is None:
            if self._memory is not None:
                self._drop_memory()
            return
        for owner in self._conns.values():
            if type(owner) is _Outbound:
                owner._on_close = None
        self.close_loop()


def _fileno(fd: FileDescriptorLike) -> int:
    if isinstance(fd, int) and not isinstance(fd, bool):
        if fd < 0:
            raise ValueError(f"invalid fd {fd}")
        return fd
    fileno = getattr(fd, "fileno", None)
    if fileno is None:
        raise TypeError(f"expected an fd or an object with fileno(), not {type(fd).__name__}")
    return _fileno(fileno())


def _literal(host: str) -> Optional[str]:
    """host as an IP literal, or None if it is a name to resolve."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return host
        except OSError:
            pass
    return None


def _connect_error(code: int) -> Exception:
    """The exception for a failed connect's ZCN_Error code."""
    if code == errno.ETIMEDOUT:
        return TimeoutError(errno.ETIMEDOUT, "connect timed out")
    return error_from_code(code, "connect")


def _ffi_queue_full() -> int:
    from .errors import QueueFullError
    return QueueFullError.code
