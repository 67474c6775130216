"""The stream transport of zcn's asyncio loop (zcn.aio): asyncio's
transport interface over a socket adopted into the zcn loop
(zcn_loop_adopt). Its events come from the selector's batch
(zcn._aio_selector); its small writes go into the selector's per-turn
batch, larger ones straight to C."""
from __future__ import annotations

import asyncio
import collections
import ctypes
import errno
import fcntl
import inspect
import os
import socket
import termios
import warnings
from asyncio import base_events, constants, futures, protocols, sslproto, transports
from asyncio import trsock
from typing import TYPE_CHECKING, Any, Iterable, Optional

from . import _ffi
from ._aio_selector import _TAG
from ._util import send_bytes_like as _send_bytes_like

if TYPE_CHECKING:
    from .aio import EventLoop


def _codes() -> "tuple[int, int, int]":
    from .errors import ClosedError, ExhaustedError, QueueFullError
    return ClosedError.code, QueueFullError.code, ExhaustedError.code


_ERR_CLOSED, _QUEUE_FULL, _EXHAUSTED = _codes()
_RETRY_FIRST = 0.0005  # s: the first delayed retry after EXHAUSTED
_RETRY_MAX = 0.02      # s: the longest
_send = _ffi.zcn_loop_send
# The per-message calls without argtypes, holding the GIL (PyDLL): ctypes'
# argument conversion costs more than the C work. The loop handle goes as
# a pointer object (Loop._handle_arg), bytes as char *, lengths as ints
# (an int over 2**31 raises OverflowError: the typed call then).
_pylib = ctypes.PyDLL(_ffi.lib._name, handle=_ffi.lib._handle)
_raw_send = _pylib.zcn_loop_send
_raw_send.restype = ctypes.c_int
_raw_queued = _pylib.zcn_loop_queued_bytes
_raw_queued.restype = ctypes.c_size_t
#: Writes up to this size are collected and go to C together, once per
#: turn (zcn_loop_send_many); larger ones are sent by themselves (after
#: what was collected), saving the second copy.
_COLLECT_MAX = 4096
#: Server._attach/_detach take the transport from 3.13 on (Server keeps its
#: clients, for close_clients/abort_clients), nothing before.
_ATTACH_WITH_TRANSPORT = len(inspect.signature(base_events.Server._attach).parameters) > 1


def _unread(fd: int) -> bool:
    """Bytes wait in fd's receive queue (FIONREAD); True when unknown."""
    try:
        return fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0") != b"\0\0\0\0"
    except OSError:
        return True


class _ZcnTransport(transports._FlowControlMixin, transports.Transport):
    """A stream transport whose socket is a connection of the zcn loop."""

    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE
    _sock: Optional[socket.socket] = None

    def __init__(self, loop: "EventLoop", sock: socket.socket, protocol: asyncio.BaseProtocol,
                 waiter: "Optional[asyncio.Future[None]]" = None,
                 extra: "Optional[dict[str, Any]]" = None,
                 server: Any = None) -> None:
        super().__init__(extra, loop)
        self._extra["socket"] = trsock.TransportSocket(sock)
        try:
            self._extra["sockname"] = sock.getsockname()
        except OSError:
            self._extra["sockname"] = None
        if "peername" not in self._extra:
            try:
                self._extra["peername"] = sock.getpeername()
            except OSError:
                self._extra["peername"] = None
        self._sock = sock
        self._sock_fd = fd = sock.fileno()
        self._zl = loop._zcn
        self._handle = self._zl._handle
        self._protocol_connected = False
        self._server = server
        self._closing = False       # close() or abort() called, or the connection ended
        self._conn_lost = 0         # writes after the end (asyncio's warning count)
        self._gone = False          # zcn reported the close: connection_lost scheduled
        self._paused = False        # pause_reading()
        self._started = False       # connection_made has run: deliveries may go
        self._held: "Optional[collections.deque[Optional[bytes]]]" = None  # while paused
        self._eof = False           # write_eof()
        self._overflow: "Optional[collections.deque[bytes]]" = None  # zcn's queue refused
        self._overflow_size = 0
        self._unchecked = 0         # bytes written since the queue was last read
        self._c_closed = False      # zcn_loop_close/abort called
        self._shutdown_pending = False
        self._close_pending = False
        self._waiting_drain = False
        self._empty_waiter: "Optional[asyncio.Future[None]]" = None
        self._handle_arg = self._zl._handle_arg
        sel = self._sel = loop._selector
        self._wbuf_extend = sel._wbuf.extend
        self._wrec_append = sel._wrec.append
        self.set_protocol(protocol)
        cfg = _ffi.ConnectConfig(tag=_TAG, flags=_ffi.SERVER_HALF_CLOSE, tcp_nodelay=0)
        rc = _ffi.zcn_loop_adopt(self._handle, fd, ctypes.byref(cfg))
        if rc:
            self._sock = None  # still the caller's: asyncio closes it
            raise self._zl._error(rc, "adopting a socket into the zcn loop")
        loop._selector._transports[fd] = self
        loop._transports[fd] = self
        if server is not None:
            if _ATTACH_WITH_TRANSPORT:
                server._attach(self)
            else:
                server._attach()
        loop.call_soon(self._connection_made)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def __repr__(self) -> str:
        info = [self.__class__.__name__]
        if self._sock is None:
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={self._sock_fd}")
        if self._sock is not None:
            info.append("read=" + ("paused" if self._paused else "polling"))
            info.append(f"write=<bufsize={self.get_write_buffer_size()}>")
        return "<{}>".format(" ".join(info))

    # --- protocol ----------------------------------------------------------
    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        if (self._protocol_paused and isinstance(protocol, sslproto.SSLProtocol)
                and getattr(protocol, "_ssl_writing_paused", None) is False):
            # loop.start_tls while paused for writing (zcn pauses on what
            # waits for the next poll; start_tls does not flush first): the
            # TLS protocol takes the state over, so the coming
            # resume_writing is its own, and passes on to the protocol it
            # wraps if that is the one paused (CPython gh-109051; else
            # SSLProtocol asserts and the old protocol stays paused).
            protocol._ssl_writing_paused = True
            if protocol._app_protocol is getattr(self, "_protocol", None):
                protocol._app_writing_paused = True
        self._protocol = protocol
        self._buffered = isinstance(protocol, protocols.BufferedProtocol)
        self._data_received = getattr(protocol, "data_received", None)
        self._protocol_connected = True
        self._sync()

    # The fast paths (the selector's DATA dispatch, write) test one flag
    # each, recomputed here at every change of what they depend on.
    _rfast = False
    _wfast = False

    def _sync(self) -> None:
        closed = self._gone or self._c_closed
        self._rfast = (self._started and not self._paused and not self._held and not closed
                       and not self._buffered and self._data_received is not None)
        self._wfast = (not closed and not self._eof and self._overflow is None
                       and self._empty_waiter is None)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def _connection_made(self) -> None:
        try:
            self._protocol.connection_made(self)
        finally:
            self._started = True
            self._sync()
            if self._held and not self._paused:
                self._loop.call_soon(self._deliver_held)

    # --- reading -----------------------------------------------------------
    def is_closing(self) -> bool:
        return self._closing

    def is_reading(self) -> bool:
        return not self._closing and not self._paused

    def pause_reading(self) -> None:
        if self._closing or self._paused:
            return
        self._paused = True
        self._sync()
        if not self._c_closed:
            _ffi.zcn_loop_pause_recv(self._handle, self._sock_fd)

    def resume_reading(self) -> None:
        if self._closing or not self._paused:
            return
        self._paused = False
        self._sync()
        if self._held:
            self._loop.call_soon(self._deliver_held)
        if not self._c_closed:
            _ffi.zcn_loop_resume_recv(self._handle, self._sock_fd)

    def _hold(self, item: Optional[bytes]) -> None:
        if self._held is None:
            self._held = collections.deque()
        self._held.append(item)
        self._rfast = False

    def _deliver_held(self) -> None:
        held = self._held
        while held and not self._paused and not self._gone and self._started:
            item = held.popleft()
            if item is None:
                self._on_eof()
            else:
                self._deliver(item)
        self._sync()

    def _data_event(self, offset: int, length: int) -> None:
        if self._gone or self._c_closed:
            return
        slab = self._zl._slab
        if self._paused or not self._started or self._held:
            self._hold(bytes(slab[offset:offset + length]))
            return
        if self._buffered:
            self._deliver_buffered(slab[offset:offset + length])
            return
        try:
            self._protocol.data_received(bytes(slab[offset:offset + length]))
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")

    def _deliver(self, data: bytes) -> None:
        if self._buffered:
            self._deliver_buffered(memoryview(data))
            return
        try:
            self._protocol.data_received(data)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")

    def _deliver_buffered(self, data: memoryview) -> None:
        protocol = self._protocol
        while data:
            try:
                buf = memoryview(protocol.get_buffer(len(data))).cast("B")
                if not len(buf):
                    raise RuntimeError("get_buffer() returned an empty buffer")
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.get_buffer() call failed.")
                return
            n = min(len(buf), len(data))
            buf[:n] = data[:n]
            data = data[n:]
            try:
                protocol.buffer_updated(n)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.buffer_updated() call failed.")
                return
            if self._gone or self._c_closed:
                return
            if data and (self._paused or self._protocol is not protocol):
                # paused (or switched protocols) half way: the rest waits
                self._hold(bytes(data))
                return

    def _eof_event(self) -> None:
        if self._gone or self._c_closed:
            return
        if self._paused or not self._started or self._held:
            self._hold(None)
            return
        self._on_eof()

    def _on_eof(self) -> None:
        if self._loop.get_debug():
            base_events.logger.debug("%r received EOF", self)
        try:
            keep_open = self._protocol.eof_received()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return
        if not keep_open:
            self.close()

    # --- writing -----------------------------------------------------------
    def write(self, data: "bytes | bytearray | memoryview") -> None:
        # The common case in one test: bytes, an open connection, nothing
        # waiting in the transport. One C call queues them (a copy into a
        # pool buffer); the sends of the turn go out with the next wait.
        if self._wfast and type(data) is bytes:
            n = len(data)
            if n <= _COLLECT_MAX:
                if n:
                    # attributes loaded, then called (see _dispatch)
                    extend = self._wbuf_extend
                    extend(data)
                    append = self._wrec_append
                    append(self._sock_fd)
                    append(n)
                    n += self._unchecked
                    self._unchecked = n
                    if n > self._high_water:
                        self._maybe_pause_protocol()
                return
            # Larger: sent by itself, after what was collected (no copy
            # into the batch buffer), still without argument conversion.
            sel = self._sel
            if sel._wrec:
                sel._flush_writes()
            if self._wfast:  # the flush may have refused this fd's writes
                try:
                    rc = _raw_send(self._handle_arg, self._sock_fd, data, n)
                except OverflowError:  # over 2 GiB: the typed call below
                    rc = -1
                if rc == 0:
                    n += self._unchecked
                    self._unchecked = n
                    if n > self._high_water:
                        self._maybe_pause_protocol()
                    return
        self._write_slow(data)

    def _write_refused(self, code: int, chunk: bytes) -> None:
        """A collected write zcn refused at the flush."""
        if code == _QUEUE_FULL or code == errno.EMSGSIZE or code == _EXHAUSTED:
            self._overflow_add(chunk)
            if code != _QUEUE_FULL:  # EMSGSIZE: no DRAIN follows; see _retry_later
                self._retry_later()
            self._maybe_pause_protocol()
        elif code == _ERR_CLOSED:
            self._conn_lost += 1
        else:
            self._fatal_error(self._zl._error(code, "write()"),
                              "Fatal write error on socket transport")

    def _write_slow(self, data: Any) -> None:
        self._sel._flush_writes()  # what was collected goes first
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, "
                            f"not {type(data).__name__!r}")
        if self._eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._empty_waiter is not None:
            raise RuntimeError("unable to write; sendfile is in progress")
        if not data:
            return
        if self._gone or self._c_closed:
            if self._conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                base_events.logger.warning("socket.send() raised exception.")
            self._conn_lost += 1
            return
        if self._overflow is not None:
            self._overflow_add(data)
            self._maybe_pause_protocol()
            return
        if type(data) is bytes:
            rc = _send(self._handle, self._sock_fd, data, len(data))
        else:
            data = memoryview(data).cast("B")
            rc = _send_bytes_like(_send, self._handle, self._sock_fd, data)
        if rc:
            if rc == _QUEUE_FULL or rc == errno.EMSGSIZE or rc == _EXHAUSTED:
                self._overflow_add(data)
                if rc == errno.EMSGSIZE:
                    # larger than the whole queue: nothing was refused for
                    # room, so no DRAIN would come; it goes on in pieces
                    self._push_overflow()
                elif rc == _EXHAUSTED:
                    self._retry_later()
                self._maybe_pause_protocol()
                return
            if rc == _ERR_CLOSED:
                self._conn_lost += 1
                return
            self._fatal_error(self._zl._error(rc, "write()"),
                              "Fatal write error on socket transport")
            return
        self._unchecked += len(data)
        if self._unchecked > self._high_water:
            self._maybe_pause_protocol()

    def _overflow_add(self, data: Any) -> None:
        if self._overflow is None:
            self._overflow = collections.deque()
            self._sync()
        self._overflow.append(bytes(data))
        self._overflow_size += len(data)

    def _push_overflow(self) -> None:
        """Moves refused data into zcn's queue as far as it takes it."""
        q = self._overflow
        if q is None:
            return
        self._sel._flush_writes()
        zl = self._zl
        limit = zl._send_piece
        while q:
            chunk = q[0]
            piece = chunk[:limit]
            rc = _send(self._handle, self._sock_fd, piece, len(piece))
            if rc:
                if rc == _QUEUE_FULL:
                    return
                if rc == errno.EMSGSIZE and len(piece) > 1:
                    # more buffers than one connection may hold: smaller
                    zl._send_piece = limit = len(piece) // 2
                    continue
                if rc == _EXHAUSTED:
                    if len(piece) > zl._buffer_size:
                        # Fewer free buffers than the piece needs (the
                        # receive ring holds the others): a smaller one
                        # may fit now, and every piece sent frees buffers.
                        limit = max(len(piece) // 2, zl._buffer_size)
                        continue
                    self._retry_later()
                    return
                if rc == _ERR_CLOSED:
                    q.clear()
                    self._overflow_size = 0
                    return
                self._fatal_error(self._zl._error(rc, "write()"),
                                  "Fatal write error on socket transport")
                return
            self._retries = 0
            self._overflow_size -= len(piece)
            if len(piece) == len(chunk):
                q.popleft()
            else:
                q[0] = chunk[len(piece):]
        self._overflow = None
        self._sync()
        self._overflow_size = 0
        if self._shutdown_pending:
            self._shutdown_pending = False
            self._c_shutdown()
        if self._close_pending:
            self._close_pending = False
            self._c_close()

    _retry_pending = False
    _retries = 0  # refusals in a row without a piece taken

    def _retry_later(self) -> None:
        """zcn had no free pool buffer for a copy just now (many
        connections' sends in one turn overshot the budget), or a piece
        was too large (EMSGSIZE, which no DRAIN follows). zcn promises a
        DRAIN for EXHAUSTED once the budget has room again; this retry
        goes on sooner when buffers come back before that. The overflow
        is pushed again after the next poll, which sends (and so frees)
        what is queued; if that was not enough, after 0.5 ms, doubling to
        20 ms: a pool that stays empty costs a few retries a second, not
        a busy loop."""
        if not self._retry_pending:
            self._retry_pending = True
            n = self._retries
            self._retries = n + 1
            if n == 0:
                self._loop.call_soon(self._retry_overflow)
            else:
                delay = _RETRY_FIRST * (1 << min(n - 1, 8))
                self._loop.call_later(min(delay, _RETRY_MAX), self._retry_overflow)

    def _retry_overflow(self) -> None:
        self._retry_pending = False
        self._drain_event()

    def _drain_event(self) -> None:
        if self._gone:
            return
        self._waiting_drain = False
        if self._overflow is not None:
            self._push_overflow()
        self._check_resume()

    def _check_resume(self) -> None:
        size = self.get_write_buffer_size()
        self._unchecked = size
        if size <= self._low_water:
            self._maybe_resume_protocol()
            if size == 0 and self._empty_waiter is not None:
                self._empty_waiter.set_result(None)
        elif not self._waiting_drain and (
                self._overflow is None or size - self._overflow_size > self._low_water):
            # A DRAIN when zcn's queue goes under the mark. Not while it is
            # under it already with data refused: that DRAIN would come at
            # once, every turn; the refusal's own DRAIN (QUEUE_FULL,
            # EXHAUSTED) or the retry pushes the rest.
            self._request_drain()

    def _request_drain(self) -> None:
        if self._c_closed or self._gone:
            return
        self._waiting_drain = True
        # A DRAIN event once the queue is under the low-water mark (or
        # empty for a low-water mark of 0); checked after every send.
        rc = _ffi.zcn_loop_notify_drain(self._handle, self._sock_fd, self._low_water)
        if rc:
            self._waiting_drain = False

    def _maybe_pause_protocol(self) -> None:
        size = self.get_write_buffer_size()
        self._unchecked = size
        if size <= self._high_water:
            return
        if not self._protocol_paused:
            self._protocol_paused = True
            try:
                self._protocol.pause_writing()
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._loop.call_exception_handler({
                    "message": "protocol.pause_writing() failed",
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                })
        if not self._waiting_drain and self._overflow is None:
            self._request_drain()

    def get_write_buffer_size(self) -> int:
        self._sel._flush_writes()
        queued = 0
        if self._sock is not None and not self._gone:
            queued = _raw_queued(self._handle_arg, self._sock_fd)
        return queued + self._overflow_size

    def writelines(self, list_of_data: "Iterable[bytes | bytearray | memoryview]") -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        if self._closing or self._eof:
            return
        self._sel._flush_writes()
        self._eof = True
        self._sync()
        if self._overflow is not None:
            self._shutdown_pending = True
        else:
            self._c_shutdown()

    def _c_shutdown(self) -> None:
        if not self._c_closed:
            _ffi.zcn_loop_shutdown(self._handle, self._sock_fd)

    def can_write_eof(self) -> bool:
        return True

    # --- closing -----------------------------------------------------------
    def close(self) -> None:
        if self._closing:
            return
        self._sel._flush_writes()
        self._closing = True
        if self._overflow is not None:
            self._close_pending = True
        else:
            empty = self.get_write_buffer_size() == 0
            self._c_close()
            self._conn_lost += 1  # writes from here on are dropped, and counted
            if empty and not self._gone:
                # Nothing left to send: as asyncio's transports, the
                # connection is lost now (connection_lost runs next), not
                # when zcn reports the close a poll or two later
                # (StreamWriter.drain() after close() must see it).
                self._gone = True
                self._loop.call_soon(self._call_connection_lost, None)

    def _c_close(self) -> None:
        if self._c_closed or self._gone:
            return
        self._c_closed = True
        self._sync()
        _ffi.zcn_loop_close(self._handle, self._sock_fd)

    def abort(self) -> None:
        self._force_close(None)

    def _force_close(self, exc: Optional[BaseException]) -> None:
        if self._gone or self._aborted:
            return
        self._aborted = True
        self._closing = True
        self._conn_lost += 1
        self._overflow = None
        self._overflow_size = 0
        self._close_pending = self._shutdown_pending = False
        self._lost_exc = exc
        self._c_closed = True
        self._sync()
        if self._sock is not None and not self._held and not _unread(self._sock_fd):
            # As asyncio's abort, a close: with nothing unread the peer sees
            # an EOF, and at once (zcn's reset below goes out only when its
            # requests are cancelled, at a later poll, and a loop stopped
            # now would leave the peer waiting). With data unread a close
            # resets the peer, and so does zcn's abort alone.
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        # also over a graceful close in progress: the rest is dropped (RST)
        _ffi.zcn_loop_abort(self._handle, self._sock_fd)

    def _fatal_error(self, exc: BaseException, message: str = "Fatal error on transport") -> None:
        if isinstance(exc, OSError):
            if self._loop.get_debug():
                base_events.logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler({
                "message": message,
                "exception": exc,
                "transport": self,
                "protocol": self._protocol,
            })
        self._force_close(exc)

    _lost_exc: Optional[BaseException] = None
    _aborted = False

    def _close_event(self, code: int) -> None:
        """zcn reports the connection over: connection_lost follows (the
        fd is the zcn loop's to close, at its next poll)."""
        if self._gone:
            return  # close() found nothing to send and reported the loss
        self._closing = True
        self._c_closed = True
        self._sync()
        exc = self._lost_exc
        if exc is None and code:
            exc = OSError(code, os.strerror(code))
            if code in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
                exc = {errno.ECONNRESET: ConnectionResetError,
                       errno.EPIPE: BrokenPipeError,
                       errno.ECONNABORTED: ConnectionAbortedError}[code](code, os.strerror(code))
        self._gone = True
        self._sync()
        self._loop.call_soon(self._call_connection_lost, exc)

    def _release(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.detach()  # the zcn loop closes the fd
        loop = self._loop
        if loop is not None:
            loop._transports.pop(self._sock_fd, None)

    def _call_connection_lost(self, exc: Optional[BaseException]) -> None:
        try:
            if self._protocol_connected:
                self._protocol.connection_lost(exc)  # type: ignore[arg-type]
        finally:
            self._release()
            self._protocol = None  # type: ignore[assignment]
            self._loop = None
            server = self._server
            if server is not None:
                if _ATTACH_WITH_TRANSPORT:
                    server._detach(self)
                else:
                    server._detach()
                self._server = None
            if self._empty_waiter is not None and not self._empty_waiter.done():
                self._empty_waiter.set_exception(ConnectionError("Connection is closed by peer"))

    def _loop_closed(self) -> None:
        """The zcn loop was destroyed under this transport (loop.close()
        with it open): the fd is gone with it."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.detach()
        self._closing = True
        self._c_closed = True
        self._gone = True
        self._sync()

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if self._sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)

    # sendfile's fallback and start_tls wait for an empty buffer this way
    def _make_empty_waiter(self) -> "asyncio.Future[None]":
        if self._empty_waiter is not None:
            raise RuntimeError("Empty waiter is already set")
        waiter: "asyncio.Future[None]" = self._loop.create_future()
        self._empty_waiter = waiter
        self._sync()
        if self.get_write_buffer_size() == 0:
            waiter.set_result(None)
        else:
            self._waiting_drain = False
            self._request_drain_empty()
        return waiter

    def _request_drain_empty(self) -> None:
        if self._overflow is None and not self._c_closed:
            self._waiting_drain = True
            _ffi.zcn_loop_notify_drain(self._handle, self._sock_fd, 0)

    def _reset_empty_waiter(self) -> None:
        self._empty_waiter = None
        self._sync()
