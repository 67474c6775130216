"""zcn.TcpServer: the io_uring TCP server with Python callbacks.

    import zcn

    def on_data(fd, data):          # data: a read-only memoryview, borrowed
        server.send(fd, data)       # echo without copying

    with zcn.TcpServer("127.0.0.1", 8080, on_data=on_data) as server:
        server.serve_forever()      # until server.stop() (or Ctrl-C)

How it runs. With handler="python" (the default) the loop is
zcn_server_poll: one ctypes call fills a preallocated array with up to
EVENTS_MAX events (accept, data, close, drain), which are decoded with
struct.iter_unpack and dispatched to the callbacks here; no C-to-Python
callback per event. With handler="c" the built-in C echo answers every
message without entering Python; on_accept/on_close/on_drain, if any, are
called through ctypes callbacks.

Borrowed data. ``on_data(fd, data)`` gets a read-only memoryview into the
server's receive buffer. It is valid only during the call: the view is
released when the callback returns, so a kept reference raises ValueError
instead of showing data that has since been overwritten. Copy what you keep
(``bytes(data)``). Passing the view (or a slice of it) to send() from the
callback moves the buffer to the send queue without a copy. Slices taken
of the view (``data[4:]``) are not released with it: they stay readable
but show whatever the buffer holds later, never unmapped memory, because
the buffer memory is an mmap owned by this object and unmapped only when
no view of it is left.

Threads. The thread that first calls run_once() or serve_forever() becomes
the loop thread (the ring is single-issuer): run_once, serve_forever, send,
close, shutdown, abort, queued_bytes and connection_info belong to it, and
callbacks run on it; called from another thread they raise
WrongThreadError, which names the loop thread. stop() may be called from
any thread or from a signal handler. server_close() from another thread
while the loop runs stops the loop and waits until the loop thread has
closed the server (on_close calls then run on the loop thread); from inside
a callback it raises BusyError (call stop() instead).

Exceptions from callbacks affect their connection only, as in asyncio: by
default the exception is logged with its traceback on the "zcn.server"
logger, that connection is aborted (its peer gets a reset) and the server
goes on serving the others. error_handler= changes the policy: a callable
error_handler(fd, exc) decides (it may close or abort fd, or raise to end
the loop), and error_handler="raise" lets every exception propagate out of
run_once()/serve_forever() with the events of the batch not yet dispatched
kept for the next run_once(). KeyboardInterrupt and SystemExit always
propagate that way.

Half-close. When the peer has finished sending (FIN) and all it sent was
delivered, on_eof(fd) is called if set; the connection then stays open for
sending until you close(), shutdown() or abort() it, so an answer computed
later (a proxy waiting for its upstream) still reaches the peer. Without
on_eof the connection closes once the replies queued by then are sent.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import struct
import threading
from ctypes import c_int, c_uint32
from dataclasses import dataclass

from . import _ffi
from ._util import (
    BoundSocket,
    LoopWakeup,
    MappedMemory,
    c_writable_bytes,
    round_up_pages,
)
from ._util import backend_arg as _backend_arg
from ._util import bool_arg as _bool_arg
from ._util import HasBackend
from ._util import callback_arg as _callback_arg
from ._util import idle_timeout_ms as _idle_timeout_ms
from ._util import int_arg as _int_arg
from ._util import loop_limits as _loop_limits
from ._util import report_closes as _report_closes
from ._util import send_bytes_like as _send_bytes_like
from ._util import wrong_thread_error as _wrong_thread_error
from ._util import monotonic_ms as _monotonic_ms
from ._util import resolve_host as _resolve_host
from ._util import timeout_ms as _timeout_ms
from .errors import BusyError, ClosedError, WrongThreadError, error_from_code

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    from typing import (Any, Callable, FrozenSet, Iterator, List, Optional, Sequence, Set,
                        Tuple)

    from ._types import BytesLike, DataCallback, ErrorHandler, FdCallback, Handler
    from .loop import Loop

__all__ = ["TcpServer", "ServerStats", "ConnectionInfo", "EVENTS_MAX"]

log = logging.getLogger(__name__)

#: Events fetched per zcn_server_poll call (one ctypes crossing per batch).
EVENTS_MAX = 256

PAGE_SIZE = _ffi.PAGE_SIZE
UINT32_MAX = 0xFFFFFFFF
INT32_MAX = 0x7FFFFFFF
_HANDLERS = ("python", "c")
#: The keyword defaults of the fields a shared loop owns (TcpServer(loop=)).
_LOOP_FIELD_DEFAULTS = {"io_uring_entries": 256, "buffer_pool_size": 1024,
                        "buffer_size": 16384, "connections_max": 4096,
                        "send_queue_max_bytes": 1 << 20, "buffer_reserve": None,
                        "send_timeout": 60.0, "conn_buffers_hard_max": None}

_EVENT = struct.Struct(_ffi.EVENT_FORMAT)
_EVENT_SIZE = _EVENT.size
if _EVENT_SIZE != ctypes.sizeof(_ffi.Event):  # pragma: no cover - a broken mirror
    raise ImportError("zcn: EVENT_FORMAT does not match ZCN_Event")
# What the loop decodes: type, fd, len, offset. reserved and the data
# pointer are skipped (pad bytes): the pointer is the slab base + offset, and
# every decoded field costs an int object per event.
_EVENT_DECODE = struct.Struct(_ffi.EVENT_FORMAT.replace("IQQ", "4xQ8x"))
if _EVENT_DECODE.size != _EVENT_SIZE:  # pragma: no cover - a broken mirror
    raise ImportError("zcn: EVENT_FORMAT changed; update _EVENT_DECODE")
_iter_events = _EVENT_DECODE.iter_unpack
_ACCEPT, _DATA, _CLOSE, _DRAIN, _EOF = (_ffi.EVENT_ACCEPT, _ffi.EVENT_DATA,
                                        _ffi.EVENT_CLOSE, _ffi.EVENT_DRAIN, _ffi.EVENT_EOF)
_ERR_CLOSED = ClosedError.code
_ERR_WRONG_THREAD = WrongThreadError.code
_ERROR_POLICIES = ("log", "raise")
#: _cur_view outside on_data: an object no caller can pass (None could be).
_NO_VIEW = object()

# The hot-path bindings, bound once (a module global is one lookup).
_send = _ffi.zcn_server_send
# send() of a received view: the same C function through PyDLL (keeps the
# GIL: zcn_server_send never blocks, so releasing and retaking it is pure
# cost) and without argtypes (no from_param conversion per argument). The
# pointers are passed as prebuilt byref() objects (_c_pointer): ctypes
# passes those as they are, where a c_void_p argument costs a conversion
# object per call. fd and len go as Python ints, which ctypes passes as C
# int and libffi sign-extends to the 64-bit register of the size_t
# parameter: exact for len < 2**31, and a received view is at most one
# buffer (<= 64 MiB). Measured: about half the cost of the argtypes call on
# the CDLL (py_overhead.py, docs/PYTHON_GUIDE.md).
_send_view = ctypes.PyDLL(_ffi.lib._name, handle=_ffi.lib._handle).zcn_server_send
_send_view.restype = c_int
# zcn_server_poll once per batch, likewise without argtypes (prebuilt
# byref() pointers, small ints), but on the CDLL: it waits, so the GIL goes.
_poll_raw = ctypes.CDLL(_ffi.lib._name, handle=_ffi.lib._handle).zcn_server_poll
_poll_raw.restype = c_int
_run_once_timeout = _ffi.zcn_server_run_once_timeout
_stop = _ffi.zcn_server_stop
_flush_raw = _ffi.zcn_server_flush  # returns the code


def _flush(handle: Optional[int]) -> None:
    rc = _flush_raw(handle)
    if rc:
        raise error_from_code(rc, "zcn_server_flush")


def _c_pointer(address: int) -> Any:
    """A prebuilt argument passing ``address`` as a pointer: byref() of a
    c_char placed at it (nothing is read there). For the calls made without
    argtypes: ctypes passes a byref() object as it is, where a c_void_p
    argument costs a conversion object per call."""
    return ctypes.byref(ctypes.c_char.from_address(address))


@dataclass(frozen=True)
class ServerStats:
    """A snapshot of a server's counters (see zcn_server_stats)."""

    connections_active: int
    connections_accepted: int
    connections_closed: int
    connections_rejected: int      #: closed at accept: over connections_max
    idle_timeouts: int
    bytes_received: int
    bytes_sent: int
    recv_ops: int                  #: receive completions carrying data
    send_ops: int                  #: send completions
    buffers_total: int
    buffers_in_use: int
    buffer_exhaustion_events: int  #: receives that found no buffer (ENOBUFS)
    sends_zero_copy: int           #: sends that moved a received buffer
    sends_copied: int              #: sends that copied into pool buffers
    send_queue_full_events: int    #: sends refused with QueueFullError
    accept_backoffs: int           #: accept paused for EMFILE/ENFILE/ENOMEM
    # the buffer policy (docs/BUFFERS.md)
    buffers_held: int              #: held by send queues, deferred receives, shared small copies and you
    buffer_budget: int             #: buffer_pool_size - buffer_reserve
    buffer_waiters: int            #: connections waiting for budget now
    evictions: int                 #: aborted to free budget for a waiter
    send_timeouts: int             #: aborted: queued data made no progress in send_timeout
    hard_limit_aborts: int         #: aborted: held more than conn_buffers_hard_max
    aborts: int                    #: abort() calls that aborted a connection
    sends_coalesced: int           #: small zero-copy slices packed into a copy
    eofs: int                      #: peers that finished sending (FIN)
    sends_direct: int              #: sends made at once by send(2), not an SQE (one answer in a turn)


_STATS_FIELDS = tuple(field[0] for field in _ffi.ServerStats._fields_)


@dataclass(frozen=True)
class ConnectionInfo:
    """One connection's share of the buffers and its state (see
    zcn_server_conn_info and docs/BUFFERS.md)."""

    bytes_received: int
    bytes_sent: int
    queued_bytes: int              #: in the send queue, not yet sent
    deferred_bytes: int            #: received, delivery deferred (over its cap)
    queued_buffers: int            #: pool buffers its send queue holds
    deferred_buffers: int          #: pool buffers its deferred data holds
    buffers_held: int              #: the two above: what counts against the budget
    buffer_cap: int                #: the most it may hold now (its fair share under pressure)
    eof: bool                      #: the peer finished sending
    shut_down: bool                #: shutdown() was called
    closing: bool                  #: close() or abort() was called; sends are refused
    waiting: bool                  #: waiting for the server-wide budget
    paused: bool                   #: no receive armed (over its cap, or waiting)
    send_stall: float              #: seconds since its queued data last moved (0.0 if none)


def _conn_info_from(raw: Any) -> ConnectionInfo:
    """A ConnectionInfo from a filled _ffi.ConnInfo."""
    flags = raw.flags
    return ConnectionInfo(
        bytes_received=raw.bytes_received, bytes_sent=raw.bytes_sent,
        queued_bytes=raw.queued_bytes, deferred_bytes=raw.deferred_bytes,
        queued_buffers=raw.queued_buffers, deferred_buffers=raw.deferred_buffers,
        buffers_held=raw.buffers_held, buffer_cap=raw.buffer_cap,
        eof=bool(flags & _ffi.CONN_EOF), shut_down=bool(flags & _ffi.CONN_SHUT_WR),
        closing=bool(flags & _ffi.CONN_CLOSING), waiting=bool(flags & _ffi.CONN_WAITING),
        paused=bool(flags & _ffi.CONN_PAUSED), send_stall=raw.send_stall_ms / 1000.0)


class TcpServer(BoundSocket, HasBackend):
    """A TCP server on io_uring listening on ``host``:``port`` (port 0 picks
    a free port; read it back from ``port``). See the module docstring for
    the rules on borrowed data, threads and exceptions.

    Callbacks (any may be None, all settable as attributes):
      on_accept(fd)        a connection was accepted
      on_data(fd, data)    bytes arrived; data is borrowed (valid during the call)
      on_eof(fd)           the peer finished sending; the connection stays open
                           for sending until you close/shutdown/abort it
                           (without on_eof it closes once the replies are sent)
      on_close(fd)         the connection ended, exactly once per on_accept
      on_drain(fd)         a send refused with QueueFullError or ExhaustedError may be retried
    error_handler: what a callback's exception does (see the module
    docstring): None = log it and abort that connection, "raise", or a
    callable error_handler(fd, exc).

    handler="c" answers every message with the built-in C echo (no Python
    per message); on_data must then be None.

    The buffer policy (docs/BUFFERS.md): buffers held by send queues and
    deferred receives may never take the last ``buffer_reserve`` buffers
    (default a quarter of buffer_pool_size), which feed receives; under
    pressure each connection's share shrinks; a connection whose queued
    data makes no progress for ``send_timeout`` seconds (None = never) or
    that holds more than ``conn_buffers_hard_max`` buffers is aborted.

    busy_poll_us: busy polling of the server's own loop, as zcn.Loop's
    (0 = off; on a shared loop set it on the loop).
    """

    _kind = "zcn.TcpServer"
    _backend_fn = _ffi.zcn_server_backend
    _memory: Optional[MappedMemory] = None
    _loop: Optional[Loop] = None

    def __new__(cls, *args: Any, threads: Optional[int] = None, **kwargs: Any) -> TcpServer:
        # TcpServer(..., threads=N): N loops on N threads with the C handler
        # (zcn/threaded.py); __init__ of that subclass then runs.
        # With handler="python" (or Python callbacks and no handler) N
        # TcpServers on N threads instead.
        if cls is TcpServer and threads is not None:
            from .threaded import ThreadedPythonServer, ThreadedTcpServer
            handler = kwargs.get("handler")
            if handler is None:
                handler = "python" if any(kwargs.get(name) is not None for name in (
                    "on_accept", "on_data", "on_close", "on_drain", "on_eof")) else "c"
            if handler == "c":
                return super().__new__(ThreadedTcpServer)
            return super().__new__(ThreadedPythonServer)
        return super().__new__(cls)

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 on_accept: Optional[FdCallback] = None, on_data: Optional[DataCallback] = None,
                 on_close: Optional[FdCallback] = None, on_drain: Optional[FdCallback] = None,
                 on_eof: Optional[FdCallback] = None, error_handler: ErrorHandler = None,
                 handler: Handler = "python", io_uring_entries: int = 256,
                 buffer_pool_size: int = 1024, buffer_size: int = 16384, backlog: int = 1024,
                 connections_max: int = 4096, send_queue_max_bytes: int = 1 << 20,
                 idle_timeout: Optional[float] = None, tcp_nodelay: bool = True,
                 reuse_port: bool = False, buffer_reserve: Optional[int] = None,
                 send_timeout: Optional[float] = 60.0,
                 conn_buffers_hard_max: Optional[int] = None,
                 loop: Optional[Loop] = None, backend: Optional[str] = None,
                 busy_poll_us: int = 0, threads: Optional[int] = None, cpus: Optional[Sequence[int]] = None,
                 steer: bool = False) -> None:
        # threads=N is a zcn.threaded.ThreadedTcpServer (see __new__)
        if cpus is not None or steer:
            raise ValueError("cpus and steer pin the loops of TcpServer(threads=N): pass "
                             "threads too")
        if not isinstance(handler, str):
            raise TypeError(f"handler must be 'python' or 'c', not {type(handler).__name__}")
        if handler not in _HANDLERS:
            raise ValueError(f"handler must be 'python' or 'c', got {handler!r}")
        self._c_handler = handler == "c"
        self._on_accept: Optional[FdCallback] = _callback_arg(on_accept, "on_accept")
        self._on_data: Optional[DataCallback] = None
        self.on_data = on_data  # the property checks the handler
        self._on_close: Optional[FdCallback] = _callback_arg(on_close, "on_close")
        self._on_drain: Optional[FdCallback] = _callback_arg(on_drain, "on_drain")
        self._on_eof: Optional[FdCallback] = _callback_arg(on_eof, "on_eof")
        self._error_handler: ErrorHandler = None
        self.error_handler = error_handler  # the property checks it
        port = _int_arg(port, "port", 0, 65535)
        backend_code = _backend_arg(backend)
        if loop is not None and backend_code:
            raise ValueError("backend is the loop's: pass it to zcn.Loop, not to a server on it")
        busy_us = _int_arg(busy_poll_us, "busy_poll_us", 0, _ffi.LOOP_BUSY_POLL_US_MAX)
        if loop is not None and busy_us:
            raise ValueError("busy_poll_us is the loop's: pass it to zcn.Loop, not to a server "
                             "on it")
        limits = _loop_limits(io_uring_entries, buffer_pool_size, buffer_size, connections_max,
                              send_queue_max_bytes, buffer_reserve, send_timeout,
                              conn_buffers_hard_max)
        buffers, buffer_size = limits["buffer_pool_size"], limits["buffer_size"]
        backlog = _int_arg(backlog, "backlog", 1, INT32_MAX)
        idle_ms = _idle_timeout_ms(idle_timeout)
        tcp_nodelay = _bool_arg(tcp_nodelay, "tcp_nodelay")
        reuse_port = _bool_arg(reuse_port, "reuse_port")
        literal = _resolve_host(host)
        if loop is not None:
            given = {"io_uring_entries": io_uring_entries, "buffer_pool_size": buffer_pool_size,
                     "buffer_size": buffer_size, "connections_max": connections_max,
                     "send_queue_max_bytes": send_queue_max_bytes,
                     "buffer_reserve": buffer_reserve, "send_timeout": send_timeout,
                     "conn_buffers_hard_max": conn_buffers_hard_max}
            for name, value in given.items():
                if value != _LOOP_FIELD_DEFAULTS[name]:
                    raise ValueError(f"{name} is the loop's on a shared loop: set it on "
                                     f"zcn.Loop(...), not on the server")
            if self._c_handler:
                raise ValueError("handler='c' needs the server's own loop (leave loop=None)")
            self._init_on_loop(loop, literal, port, backlog, idle_ms, tcp_nodelay, reuse_port)
            return

        self._lock = threading.RLock()
        self._fds: Set[int] = set()  # connections accepted and not yet reported closed
        self._owner: Optional[int] = None  # thread ident of the loop thread, once started
        self._loop_thread: Optional[int] = None  # ident while run_once/serve_forever runs
        self._wakeup = LoopWakeup(_ffi.zcn_server_wakeup_fd)  # signals end its waits
        self._stop_requested = False
        self._close_requested = False
        self._closed_event = threading.Event()
        # iterator over the undispatched events of a batch
        self._pending: Optional[Iterator[Tuple[Any, ...]]] = None
        self._cur_view: object = _NO_VIEW  # the view on_data is being called with
        self._cur_ptr: Any = None   # its address (a _c_pointer)
        self._cur_len = 0
        # handler="c": exceptions raised in callbacks
        self._callback_errors: List[BaseException] = []
        self._cfuncs: Tuple[Any, ...] = ()
        self._eof_cfunc: Any = None  # handler="c": the C on_eof thunk while on_eof is set
        self._aborted: Set[int] = set()  # fds aborted by the error policy, until their close

        # The buffer slab is Python's (as in zcn.BufferPool): a view a user
        # keeps can never point into unmapped memory.
        rounded = round_up_pages(buffer_size)
        slab_bytes = rounded * buffers
        self._memory = MappedMemory(slab_bytes, readonly=True)
        self._slab = self._memory.view
        base = self._memory.address
        self._buffer_size = rounded

        # The event array: a bytearray whose address C writes to.
        self._ev_anchor, ev_address, ev_view = c_writable_bytes(EVENTS_MAX * _EVENT_SIZE)
        self._ev_ptr = ctypes.byref(self._ev_anchor)
        # ev_view[:n * _EVENT_SIZE] for every n, made once (not per batch)
        self._ev_views = [ev_view[:n * _EVENT_SIZE] for n in range(EVENTS_MAX + 1)]
        self._count = c_uint32(0)
        self._count_ptr = ctypes.pointer(self._count)
        self._count_arg = ctypes.byref(self._count)

        # handler="python" polls events: half-close mode always, and the
        # default (close once the replies are queued) is done here on the
        # EOF event when on_eof is None. handler="c" turns the mode on with
        # the C on_eof thunk only while on_eof is set.
        flags = _ffi.SERVER_REUSEPORT if reuse_port else 0
        if not self._c_handler:
            flags |= _ffi.SERVER_HALF_CLOSE
        config = _ffi.Config(
            address=literal.encode(), port=port, backlog=backlog, idle_timeout_ms=idle_ms,
            tcp_nodelay=1 if tcp_nodelay else -1, flags=flags, buffer_memory=base,
            buffer_memory_size=slab_bytes, backend=backend_code, busy_poll_us=busy_us,
            **dict(limits, buffer_size=rounded),
        )
        try:
            handle = _ffi.create(_ffi.zcn_server_create, ctypes.byref(config))
        except BaseException:
            self._drop_memory()
            raise
        self._handle = handle
        self._handle_arg = _c_pointer(handle)
        # a _c_pointer of every buffer start (received data starts there), by
        # offset in the slab, for the send of a received view
        self._buffer_ptrs = {i * rounded: _c_pointer(base + i * rounded)
                             for i in range(buffers)}
        self._base = base
        self._host = literal
        self._port = _ffi.zcn_server_port(handle)
        if self._c_handler:
            self._install_c_callbacks(handle)

    def _init_on_loop(self, loop: Loop, literal: str, port: int, backlog: int, idle_ms: int,
                      tcp_nodelay: bool, reuse_port: bool) -> None:
        """A listener on a shared zcn.Loop: the loop polls and dispatches
        (by the tag its events carry); the per-fd calls and the loop calls
        are the loop's."""
        from .loop import Loop
        if not isinstance(loop, Loop):
            raise TypeError(f"loop must be a zcn.Loop, not {type(loop).__name__}")
        self._lock = threading.RLock()
        self._fds = set()
        self._aborted = loop._aborted
        self._cfuncs = ()
        self._eof_cfunc = None
        self._pending = None
        self._cur_view = _NO_VIEW
        self._loop = loop
        tag = loop._add_server(self)
        self._tag = tag
        flags = (_ffi.SERVER_REUSEPORT if reuse_port else 0) | _ffi.SERVER_HALF_CLOSE
        config = _ffi.Config(address=literal.encode(), port=port, backlog=backlog,
                             idle_timeout_ms=idle_ms, tcp_nodelay=1 if tcp_nodelay else -1,
                             flags=flags, tag=tag)
        try:
            handle = _ffi.create(_ffi.zcn_server_create_on, loop._live(), ctypes.byref(config))
        except BaseException:
            loop._remove_server(self, tag, ())
            raise
        self._handle = handle
        self._host = literal
        self._port = _ffi.zcn_server_port(handle)
        self._buffer_size = loop._buffer_size
        # The loop's calls serve this server's connections (and any other of
        # the loop's): per-fd calls, running and stopping.
        self.send = loop.send  # type: ignore[method-assign]
        self.close = loop.close  # type: ignore[method-assign]
        self.shutdown = loop.shutdown  # type: ignore[method-assign]
        self.abort = loop.abort  # type: ignore[method-assign]
        self.connection_info = loop.connection_info  # type: ignore[method-assign]
        self.queued_bytes = loop.queued_bytes  # type: ignore[method-assign]
        self.run_once = loop.run_once  # type: ignore[method-assign]
        self.stop = loop.stop  # type: ignore[method-assign]
        self.serve_forever = (  # type: ignore[method-assign]
            lambda poll_interval=None: loop.run_forever())
        try:
            # Accepting starts now; the loop's owner (if any) must call this.
            _ffi.zcn_server_start(handle)
            loop._claim()
        except BaseException:
            _ffi.zcn_server_destroy(handle)
            self._handle = None
            loop._remove_server(self, tag, ())
            raise

    @property
    def loop(self) -> Optional[Loop]:
        """The zcn.Loop this server is on (None: its own, private)."""
        return self._loop

    def _close_on_loop(self) -> None:
        loop: Loop = self._loop  # type: ignore[assignment]  # only called with a loop
        with self._lock:
            handle = self._handle
            if handle is None:
                return
            if loop._loop_thread is not None and loop._loop_thread != threading.get_ident():
                raise BusyError("server_close() of a server on a running loop: call it on the "
                                "loop's thread (e.g. through loop.call_soon_threadsafe)")
            _ffi.zcn_server_destroy(handle)
            self._handle = None
            fds = sorted(self._fds)
            self._fds.clear()
            loop._remove_server(self, self._tag, fds)
        _report_closes(fds, self._on_close, self._callback_failed)

    # --- callbacks -----------------------------------------------------------
    # Each setter checks the value; the loop reads the _on_<event> attribute.
    @property
    def on_accept(self) -> Optional[FdCallback]:
        """on_accept(fd): a connection was accepted."""
        return self._on_accept

    @on_accept.setter
    def on_accept(self, fn: Optional[FdCallback]) -> None:
        self._on_accept = _callback_arg(fn, "on_accept")

    @property
    def on_close(self) -> Optional[FdCallback]:
        """on_close(fd): the connection ended, once per on_accept."""
        return self._on_close

    @on_close.setter
    def on_close(self, fn: Optional[FdCallback]) -> None:
        self._on_close = _callback_arg(fn, "on_close")

    @property
    def on_drain(self) -> Optional[FdCallback]:
        """on_drain(fd): a send refused with QueueFullError or ExhaustedError may be retried."""
        return self._on_drain

    @on_drain.setter
    def on_drain(self, fn: Optional[FdCallback]) -> None:
        self._on_drain = _callback_arg(fn, "on_drain")

    @property
    def on_eof(self) -> Optional[FdCallback]:
        """on_eof(fd): the peer finished sending (see the class docstring)."""
        return self._on_eof

    @on_eof.setter
    def on_eof(self, fn: Optional[FdCallback]) -> None:
        fn = _callback_arg(fn, "on_eof")
        self._on_eof = fn
        if self._c_handler and self._handle is not None:
            self._install_eof_callback(self._handle)

    @property
    def error_handler(self) -> ErrorHandler:
        """What happens when a callback raises: None (log it, abort that
        connection, keep serving), "raise" (propagate out of the loop), or a
        callable error_handler(fd, exc) that decides."""
        return self._error_handler

    @error_handler.setter
    def error_handler(self, handler: ErrorHandler) -> None:
        if handler is not None and not callable(handler) and handler not in _ERROR_POLICIES[1:]:
            raise TypeError("error_handler must be None, 'raise' or a callable "
                            f"error_handler(fd, exc), not {handler!r}")
        self._error_handler = handler

    @property
    def on_data(self) -> Optional[DataCallback]:
        """on_data(fd, data): bytes arrived; data is borrowed (valid during the call)."""
        return self._on_data

    @on_data.setter
    def on_data(self, fn: Optional[DataCallback]) -> None:
        fn = _callback_arg(fn, "on_data")
        if fn is not None and self._c_handler:
            raise ValueError("on_data must be None with handler='c' (the C echo answers "
                             "every message)")
        self._on_data = fn

    # --- shape ---------------------------------------------------------------
    @property
    def handler(self) -> Handler:
        """"python" or "c", as given to the constructor."""
        return "c" if self._c_handler else "python"

    @property
    def buffer_size(self) -> int:
        """Bytes per receive buffer (the requested size rounded up to 4096):
        the most one on_data call can carry."""
        return self._buffer_size

    @property
    def connections(self) -> FrozenSet[int]:
        """The fds of the open connections (a new frozenset)."""
        return frozenset(self._fds)

    def fileno(self) -> int:
        """The listening socket's fd (for diagnostics; do not close it)."""
        return _ffi.zcn_server_listen_fd(self._live())

    def __repr__(self) -> str:
        if self._handle is None:
            return "<zcn.TcpServer closed>"
        return (f"<zcn.TcpServer {self._host}:{self._port} handler={self.handler} "
                f"connections={len(self._fds)}>")

    # --- sending -------------------------------------------------------------
    def send(self, fd: int, data: BytesLike) -> None:
        """Queues ``data`` (any bytes-like object) for connection ``fd`` and
        returns at once; data goes out in order. The received view of the
        current on_data call (or a slice of it) is sent without a copy;
        anything else is copied into pool buffers, so ``data`` may be reused
        as soon as send returns.

        All or nothing. Raises ClosedError (fd not open, closing, shut down,
        or the server is closed), QueueFullError (it would take the queue
        over send_queue_max_bytes or the connection's buffer share, or the
        server's buffer budget is used up: nothing was queued; on_drain
        follows), OSError EMSGSIZE (larger than send_queue_max_bytes: it can
        never fit), ExhaustedError (no pool buffer for the copy right now;
        on_drain follows),
        WrongThreadError (not the loop thread), TypeError (fd not an int,
        data not bytes-like), ValueError (data is a released view).
        """
        if type(fd) is not int:
            fd = _int_arg(fd, "fd")
        if fd not in self._fds:
            raise self._closed_error(fd)
        if data is self._cur_view:
            rc = _send_view(self._handle_arg, fd, self._cur_ptr, self._cur_len)
        elif type(data) is bytes:
            rc = _send(self._handle, fd, data, len(data))
        else:
            rc = self._send_buffer(fd, data)
        if rc:
            raise self._error(rc, f"send(fd={fd})")

    def _error(self, rc: int, where: str) -> Exception:
        """The exception for a failed call; a call from the wrong thread
        says which thread runs the loop."""
        if rc == _ERR_WRONG_THREAD:
            return _wrong_thread_error(rc, where, self._owner, "this server's loop")
        return error_from_code(rc, where)

    def _send_buffer(self, fd: int, data: BytesLike) -> int:
        return _send_bytes_like(_send, self._handle, fd, data)

    def _closed_error(self, fd: int) -> ClosedError:
        if self._handle is None:
            return ClosedError(f"{self._kind} is closed")
        return ClosedError(f"fd {fd} is not an open connection of this server",
                           code=_ERR_CLOSED)

    def close(self, fd: int) -> None:
        """Closes connection ``fd`` gracefully: no more on_data, queued data
        is still sent, then on_close(fd) follows from the loop. ClosedError
        if fd is not open (or already closing)."""
        if type(fd) is not int:
            fd = _int_arg(fd, "fd")
        if fd not in self._fds:
            raise self._closed_error(fd)
        rc = _ffi.zcn_server_close(self._handle, fd)
        if rc:
            raise self._error(rc, f"close(fd={fd})")

    def shutdown(self, fd: int) -> None:
        """Half-closes our side of ``fd``: once the queued data is sent the
        peer gets a FIN; receiving goes on, and later send() raises
        ClosedError. When the peer has finished sending too, the connection
        closes and on_close(fd) follows. ClosedError if fd is not open or
        already shut down."""
        if type(fd) is not int:
            fd = _int_arg(fd, "fd")
        if fd not in self._fds:
            raise self._closed_error(fd)
        rc = _ffi.zcn_server_shutdown(self._handle, fd)
        if rc:
            raise self._error(rc, f"shutdown(fd={fd})")

    def abort(self, fd: int) -> None:
        """Abortive close of ``fd``, for evicting a peer: the peer gets a
        reset, queued and deferred data is dropped and its buffers return at
        once; on_close(fd) follows from the loop. Works on a closing
        connection too. ClosedError if fd is not a connection of this
        server or is already ending."""
        if type(fd) is not int:
            fd = _int_arg(fd, "fd")
        if fd not in self._fds:
            raise self._closed_error(fd)
        rc = _ffi.zcn_server_abort(self._handle, fd)
        if rc:
            raise self._error(rc, f"abort(fd={fd})")

    def connection_info(self, fd: int) -> ConnectionInfo:
        """A ConnectionInfo of ``fd``: bytes in and out, what it holds of the
        buffers and its share, its state. ClosedError if fd is not a
        connection of this server."""
        if type(fd) is not int:
            fd = _int_arg(fd, "fd")
        handle = self._live()
        if fd not in self._fds:
            raise self._closed_error(fd)
        raw = _ffi.ConnInfo()
        rc = _ffi.zcn_server_conn_info(handle, fd, ctypes.byref(raw))
        if rc:
            raise self._error(rc, f"connection_info(fd={fd})")
        return _conn_info_from(raw)

    def queued_bytes(self, fd: int) -> int:
        """Bytes queued for ``fd`` and not yet sent (0 if it is not open)."""
        if type(fd) is not int:
            fd = _int_arg(fd, "fd")
        handle = self._live()
        if fd < 0 or fd > INT32_MAX:
            return 0
        return _ffi.zcn_server_queued_bytes(handle, fd)

    def stats(self) -> ServerStats:
        """A ServerStats snapshot (O(buffer_pool_size): for looking, not per
        message)."""
        raw = _ffi.ServerStats()
        with self._lock:
            _ffi.zcn_server_stats(self._live(), ctypes.byref(raw))
        return ServerStats(*(getattr(raw, name) for name in _STATS_FIELDS))

    # --- the loop ------------------------------------------------------------
    def run_once(self, timeout: Optional[float] = None) -> int:
        """Waits for events and dispatches them; returns how many were
        handled (with handler="c": completions, as the C loop counts them).

        ``timeout`` in seconds; None waits until at least one event. Returns
        0 on timeout, when a signal interrupted the wait (Python then runs
        its handler, e.g. raising KeyboardInterrupt) or when stop() was
        called (the request is consumed). Events kept from a batch whose
        callback raised are dispatched first, without waiting.
        """
        timeout_ms = _timeout_ms(timeout, "timeout")
        self._enter_loop(timeout_ms)
        try:
            if self._stop_requested:
                self._stop_requested = False
                return 0
            handled = self._run(timeout_ms)
            _flush(self._handle)  # its callbacks' sends go now, not at the next wait
            if not handled and self._stop_requested:
                self._stop_requested = False
            return handled
        finally:
            self._exit_loop()

    def serve_forever(self, poll_interval: Optional[float] = None) -> None:
        """Runs the loop until stop() (then returns normally) or until a
        callback raises (the exception propagates; calling serve_forever or
        run_once again resumes). ``poll_interval`` (seconds) bounds each wait,
        for loops that want to check something periodically; None waits as
        long as needed (signals and stop() still wake it)."""
        timeout_ms = _timeout_ms(poll_interval, "poll_interval", allow_zero=False)
        self._enter_loop(timeout_ms)
        try:
            if self._c_handler:
                run = self._run
                while not self._stop_requested:
                    run(timeout_ms)
            else:
                self._serve_python(timeout_ms)
            self._stop_requested = False
            _flush(self._handle)  # a reply sent just before stop() goes now
        finally:
            self._exit_loop()

    def stop(self) -> None:
        """Asks the loop to return: serve_forever returns, a waiting run_once
        returns 0. Callable from any thread and from a signal handler; a
        request made while no loop runs ends the next run_once/serve_forever
        at once. No-op on a closed server."""
        with self._lock:  # reentrant: safe from a signal handler on this thread
            handle = self._handle
            if handle is not None:
                # The flag first: the loop checks it when the wake-up ends its wait.
                self._stop_requested = True
                _stop(handle)

    def _enter_loop(self, timeout_ms: int) -> None:
        me = threading.get_ident()
        with self._lock:
            handle = self._live()
            if self._loop_thread is not None:
                if self._loop_thread == me:
                    raise BusyError("run_once()/serve_forever() called from inside a "
                                    "callback of the same server")
                raise WrongThreadError("zcn.TcpServer: the loop is already running in "
                                       "another thread")
            if self._owner is None:
                _ffi.zcn_server_start(handle)  # this thread becomes the ring's issuer
                self._owner = me
            elif self._owner != me:
                raise WrongThreadError("zcn.TcpServer: the loop must run on the thread that "
                                       "started it (io_uring single issuer)")
            self._loop_thread = me
        try:
            self._wakeup.enter(self._handle, timeout_ms)
        except BaseException:  # a signal handler's exception: leave as we came
            self._exit_loop()
            raise

    def _exit_loop(self) -> None:
        self._wakeup.exit()
        with self._lock:
            self._loop_thread = None
            close_now = self._close_requested
        if close_now:
            # server_close() from another thread asked this one to close
            # (callbacks run here); on_close errors surface here too.
            try:
                self._close_now()
            finally:
                self._closed_event.set()

    def _run(self, timeout_ms: int) -> int:
        """One wait and dispatch; loops while a wait brings no event."""
        if self._pending is not None:
            handled = self._dispatch()
            if handled:
                return handled
        if self._c_handler:
            return self._run_c(timeout_ms)
        handle = self._handle_arg
        ev_ptr = self._ev_ptr
        count = self._count
        count_ptr = self._count_arg
        deadline = _monotonic_ms() + timeout_ms if timeout_ms > 0 else None
        while True:
            rc = _poll_raw(handle, ev_ptr, EVENTS_MAX, timeout_ms, count_ptr)
            n = count.value
            if n:
                self._pending = _iter_events(self._ev_views[n])
                return self._dispatch()
            if rc:
                if rc == errno.EINTR:
                    return 0
                raise error_from_code(rc, "zcn_server_poll")
            # No event: a timeout, a stop request or completions that made
            # no event (sends). Only the first two end the call.
            if self._stop_requested or timeout_ms == 0:
                return 0
            if deadline is not None:
                timeout_ms = deadline - _monotonic_ms()
                if timeout_ms <= 0:
                    return 0

    def _serve_python(self, timeout_ms: int) -> None:
        """serve_forever's loop for handler="python": _run's poll and
        dispatch without a call and the local setup per batch."""
        handle = self._handle_arg
        ev_ptr = self._ev_ptr
        ev_views = self._ev_views
        count = self._count
        count_ptr = self._count_arg
        dispatch = self._dispatch
        while not self._stop_requested:
            if self._pending is not None:
                dispatch()
                continue
            rc = _poll_raw(handle, ev_ptr, EVENTS_MAX, timeout_ms, count_ptr)
            n = count.value
            if n:
                self._pending = _iter_events(ev_views[n])
                dispatch()
            elif rc and rc != errno.EINTR:
                raise error_from_code(rc, "zcn_server_poll")

    def _dispatch(self) -> int:
        """Calls the callbacks for the events of self._pending. An exception
        goes to the error policy (_callback_failed); one that propagates
        keeps the rest of the batch (see run_once)."""
        handled = 0
        slab = self._slab
        fds = self._fds
        aborted = self._aborted
        ptr_at = self._buffer_ptrs.get
        base = self._base
        try:
            for etype, fd, length, offset in self._pending:  # type: ignore[union-attr]
                handled += 1
                if etype == _DATA:
                    on_data = self._on_data
                    if on_data is None or (aborted and fd in aborted):
                        continue
                    self._cur_view = view = slab[offset:offset + length]
                    self._cur_ptr = ptr_at(offset) or _c_pointer(base + offset)
                    self._cur_len = length
                    try:
                        on_data(fd, view)
                    except Exception as exc:
                        self._callback_failed("on_data", fd, exc)
                    finally:
                        self._cur_view = _NO_VIEW
                        try:
                            view.release()
                        except BufferError:
                            pass  # exported by the user (e.g. numpy): it outlives the call
                elif etype == _ACCEPT:
                    fds.add(fd)
                    if self._on_accept is not None:
                        self._guarded(self._on_accept, "on_accept", fd)
                elif etype == _CLOSE:
                    fds.discard(fd)
                    aborted.discard(fd)
                    if self._on_close is not None:
                        self._guarded(self._on_close, "on_close", fd)
                elif aborted and fd in aborted:
                    continue
                elif etype == _EOF:
                    if self._on_eof is not None:
                        self._guarded(self._on_eof, "on_eof", fd)
                    elif fd in fds:
                        # Without on_eof: close once the replies queued so
                        # far are sent (the C default in callback mode).
                        _ffi.zcn_server_close(self._handle, fd)
                elif etype == _DRAIN:
                    if self._on_drain is not None:
                        self._guarded(self._on_drain, "on_drain", fd)
        except BaseException:
            # The batch's sends would otherwise wait for the next loop call.
            _flush_raw(self._handle)
            raise
        self._pending = None
        return handled

    def _guarded(self, fn: Callable[[int], object], name: str, fd: int) -> None:
        try:
            fn(fd)
        except Exception as exc:
            self._callback_failed(name, fd, exc)

    def _callback_failed(self, name: str, fd: int, exc: Exception) -> None:
        """The error policy for an exception a callback raised (see the
        module docstring). Raising here propagates out of the loop."""
        handler = self._error_handler
        if handler == "raise":
            raise exc
        if handler is not None:
            handler(fd, exc)  # what it raises propagates
            return
        if name == "on_close":
            log.error("zcn.TcpServer: on_close(%d) raised", fd, exc_info=exc)
            return
        log.error("zcn.TcpServer: %s(%d) raised; aborting that connection", name, fd,
                  exc_info=exc)
        self._abort_after_error(fd)

    def _abort_after_error(self, fd: int) -> None:
        handle = self._handle
        if handle is None or fd not in self._fds or fd in self._aborted:
            return
        if _ffi.zcn_server_abort(handle, fd) == 0:
            self._aborted.add(fd)  # its remaining events of the batch are skipped

    # --- handler="c": the C loop with ctypes callbacks ------------------------
    def _install_c_callbacks(self, handle: int) -> None:
        # Always installed, so the open fds are known (for server_close) and
        # the attributes may be set later; they run per connection, not per
        # message.
        def on_accept(_user_data: Optional[int], fd: int) -> None:
            self._fds.add(fd)
            self._call_guarded(self._on_accept, "on_accept", fd)

        def on_close(_user_data: Optional[int], fd: int) -> None:
            self._fds.discard(fd)
            self._aborted.discard(fd)
            self._call_guarded(self._on_close, "on_close", fd)

        def on_drain(_user_data: Optional[int], fd: int) -> None:
            self._call_guarded(self._on_drain, "on_drain", fd)

        accept_fn, close_fn = _ffi.OnAccept(on_accept), _ffi.OnClose(on_close)
        drain_fn = _ffi.OnDrain(on_drain)
        self._cfuncs = (accept_fn, close_fn, drain_fn)  # alive as long as the server
        _ffi.zcn_server_set_callbacks(handle, None, accept_fn, _ffi.OnData(), close_fn)
        _ffi.zcn_server_use_echo_handler(handle)
        _ffi.zcn_server_set_drain_callback(handle, drain_fn)
        self._install_eof_callback(handle)

    def _install_eof_callback(self, handle: int) -> None:
        """handler="c": the C on_eof thunk while on_eof is set (half-close
        mode), none otherwise (the C default closes after the replies)."""
        if self._on_eof is None:
            _ffi.zcn_server_set_eof_callback(handle, _ffi.OnEof())
            self._eof_cfunc = None
            return

        def on_eof(_user_data: Optional[int], fd: int) -> None:
            self._call_guarded(self._on_eof, "on_eof", fd)

        self._eof_cfunc = _ffi.OnEof(on_eof)  # alive while installed
        _ffi.zcn_server_set_eof_callback(handle, self._eof_cfunc)

    def _call_guarded(self, fn: Optional[Callable[[int], object]], name: str, fd: int) -> None:
        """Runs a callback under C. An exception goes to the error policy;
        one that propagates (and KeyboardInterrupt, SystemExit) is kept --
        ctypes would only print it -- and re-raised from run_once."""
        if fn is None:
            return
        try:
            try:
                fn(fd)
            except Exception as exc:
                self._callback_failed(name, fd, exc)
        except BaseException as exc:  # noqa: B902 - KeyboardInterrupt too
            self._callback_errors.append(exc)
            handle = self._handle
            if handle is not None:
                _stop(handle)  # end the C wait soon

    def _run_c(self, timeout_ms: int) -> int:
        handle = self._handle
        count = self._count
        while True:
            rc = _run_once_timeout(handle, timeout_ms, self._count_ptr)
            handled = count.value
            if self._callback_errors:
                _flush_raw(handle)  # what callbacks sent before raising
                self._raise_callback_error()
            if rc:
                if rc == errno.EINTR:
                    return 0
                raise error_from_code(rc, "zcn_server_run_once_timeout")
            if handled or timeout_ms >= 0 or self._stop_requested:
                return handled

    def _raise_callback_error(self) -> None:
        errors, self._callback_errors = self._callback_errors, []
        for extra in errors[1:]:
            log.error("zcn.TcpServer: a further callback raised in the same run",
                      exc_info=extra)
        raise errors[0]

    # --- lifetime -----------------------------------------------------------
    def server_close(self) -> None:
        """Closes every connection (on_close is called for each one still
        open), stops listening and frees the server. Idempotent.

        From another thread while the loop runs: stops the loop and waits
        until the loop thread has closed the server. From inside a callback:
        BusyError (call stop(), then server_close() after the loop returns).
        If on_close raises, the other on_close calls still happen and the
        first exception is raised at the end.
        """
        if self._loop is not None:
            return self._close_on_loop()
        me = threading.get_ident()
        with self._lock:
            if self._handle is None:
                return
            loop = self._loop_thread
            if loop == me:
                raise BusyError("server_close() cannot run inside a callback of the "
                                "same server; call stop() and close after the loop returns")
            if loop is not None:
                self._close_requested = True
                self._stop_requested = True
                _stop(self._handle)
        if loop is not None:
            self._closed_event.wait()
            if self._handle is not None:
                raise BusyError("zcn.TcpServer: the loop thread could not close the "
                                "server (see the exception raised there)")
            return
        self._close_now()

    def _close_now(self) -> None:
        with self._lock:
            handle = self._handle
            if handle is None:
                return
            # Closes are reported from our own fd set (poll mode reports
            # nothing during destroy): keep C from calling back as well.
            _ffi.zcn_server_set_callbacks(handle, None, _ffi.OnAccept(), _ffi.OnData(),
                                          _ffi.OnClose())
            _ffi.zcn_server_set_drain_callback(handle, _ffi.OnDrain())
            _ffi.zcn_server_set_eof_callback(handle, _ffi.OnEof())
            # None before destroy: a stop() from a signal handler running
            # right after it must not see a freed handle.
            self._handle = None
            try:
                _ffi.zcn_server_destroy(handle)
            except BaseException:
                self._handle = handle  # still alive (e.g. BusyError): usable again
                if self._c_handler:
                    self._install_c_callbacks(handle)
                raise
            self._pending = None
            self._cur_view = _NO_VIEW
            self._drop_memory()
            fds = sorted(self._fds)
            self._fds.clear()
        _report_closes(fds, self._on_close, self._callback_failed)  # logs by default

    def _drop_memory(self) -> None:
        self._cfuncs = ()
        self._eof_cfunc = None
        self._slab = None  # type: ignore[assignment]  # typed as there: unread once closed
        memory, self._memory = self._memory, None
        if memory is not None:
            memory.close()

    def __exit__(self, *exc: object) -> None:
        self.server_close()

    def _finalize(self) -> None:
        if self._loop is not None:
            self._on_close = None
            self._close_on_loop()
            return
        if self._handle is None:
            if self._memory is not None:
                self._drop_memory()
            return
        self._on_close = None  # no user code from the garbage collector
        self._close_now()
