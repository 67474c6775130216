"""zcn.UdpSocket: UDP datagrams on io_uring with Python callbacks.

    import zcn

    def on_datagram(peer, data, flags):     # data: a read-only memoryview, borrowed
        sock.sendto(data, peer)              # echo without copying

    with zcn.UdpSocket("127.0.0.1", 9999, on_datagram=on_datagram) as sock:
        sock.serve_forever()                 # until sock.stop() (or Ctrl-C)

How it runs. With handler="python" (the default) the loop is zcn_udp_poll:
one ctypes call fills a preallocated array with up to EVENTS_MAX datagram
events (length, flags, peer address bytes, buffer offset), decoded with
struct.iter_unpack and dispatched here; no C-to-Python callback per
datagram. Sends made during a batch are queued and go to the kernel
together with the next wait (one system call). With handler="c" the
built-in C echo answers every datagram without entering Python.

Peers are Python's usual address tuples: (host, port) for IPv4 and
(host, port, flowinfo, scope_id) for IPv6, as the socket module gives them.

Borrowed data. ``on_datagram(peer, data, flags)`` gets a read-only
memoryview into the receive buffer, valid only during the call (it is
released afterwards). Copy what you keep (``bytes(data)``); passing the view
itself to sendto()/send() from the callback sends it without a copy.
Every datagram arrives whole by default, up to 65507 bytes (IPv4) / 65527
(IPv6): those over buffer_size in a large buffer. ``flags &
zcn.UDP_TRUNCATED`` says the datagram was larger than buffer_size and
``data`` is only its start, which happens only with small_only=True or
recv_mode="multishot".

Threads. The first thread that runs the loop or sends becomes the socket's
owner (the ring is single-issuer): run_once, serve_forever, sendto and send
belong to it and callbacks run on it; another thread gets WrongThreadError.
stop() may be called from any thread or a signal handler; close() from
another thread while the loop runs stops the loop and waits for it.

Exceptions from on_datagram are not swallowed: they propagate out of
run_once()/serve_forever(); the rest of the batch is kept and dispatched
by the next call.

On a zcn.Loop. ``UdpSocket(..., loop=loop)`` puts the socket on a shared
loop, next to TcpServers, connections and timers: the loop drives it
(run_once/serve_forever/stop are the loop's), and datagrams reach
on_datagram through a C callback (ZCN_OnDatagram) from inside the loop's
poll, with the same borrowed view and zero-copy sendto. The socket keeps its
own buffers and limits (io_uring_entries is ignored). It belongs to the
loop's thread: sendto/send/sendmany and close() from another thread raise
WrongThreadError (close() while the loop runs there: BusyError). An
exception from on_datagram goes to the loop's error policy (logged by
default; error_handler="raise" makes the loop's run_once/run_forever raise
it once the poll returns). Loop.close_loop() closes the socket first.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import socket
import struct
import threading
from ctypes import c_uint32
from dataclasses import dataclass
from threading import get_ident as _get_ident

from . import _ffi
from ._util import (
    BoundSocket,
    LoopWakeup,
    MappedMemory,
    PyBUF_SIMPLE,
    c_writable_bytes,
    resolve_host,
)
from ._util import PyBuffer as _PyBuffer
from ._util import backend_arg as _backend_arg
from ._util import bool_arg as _bool_arg
from ._util import HasBackend
from ._util import callback_arg as _callback_arg
from ._util import get_buffer as _get_buffer
from ._util import int_arg as _int_arg
from ._util import monotonic_ms as _monotonic_ms
from ._util import release_buffer as _release_buffer
from ._util import timeout_ms as _timeout_ms
from .errors import (BusyError, ClosedError, InvalidArgumentError, QueueFullError,
                     WrongThreadError, error_from_code)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

    from ._types import BytesLike, DatagramCallback, Handler, RecvMode, UdpAddress, UdpPeer
    from .loop import Loop

__all__ = ["UdpSocket", "UdpStats", "UDP_TRUNCATED", "EVENTS_MAX"]

log = logging.getLogger(__name__)

#: Datagram events fetched per zcn_udp_poll call (one ctypes crossing each).
EVENTS_MAX = 256
#: on_datagram flag: the datagram was cut to the buffer size.
UDP_TRUNCATED = _ffi.UDP_TRUNCATED

PAGE_SIZE = _ffi.PAGE_SIZE
INT32_MAX = 0x7FFFFFFF
_HANDLERS = ("python", "c")
_RECV_MODES = {"readiness": _ffi.UDP_RECV_READINESS, "multishot": _ffi.UDP_RECV_MULTISHOT}
_PEER_CACHE_MAX = 4096

_EVENT = struct.Struct(_ffi.UDP_EVENT_FORMAT)
_EVENT_SIZE = _EVENT.size
if _EVENT_SIZE != ctypes.sizeof(_ffi.UdpEvent):  # pragma: no cover - a broken mirror
    raise ImportError("zcn: UDP_EVENT_FORMAT does not match ZCN_UdpEvent")

_sendto = _ffi.zcn_udp_sendto
_poll = _ffi.zcn_udp_poll
_flush = _ffi.zcn_udp_flush
_QUEUE_FULL = QueueFullError.code
_run_once_timeout = _ffi.zcn_udp_run_once_timeout
_stop = _ffi.zcn_udp_stop
_inet_ntop = socket.inet_ntop
_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6
_string_at = ctypes.string_at


@dataclass(frozen=True)
class UdpStats:
    """A snapshot of a UDP socket's counters (see zcn_udp_stats)."""

    datagrams_received: int
    bytes_received: int
    datagrams_sent: int
    bytes_sent: int
    truncated: int               #: delivered cut, with UDP_TRUNCATED
    recv_exhaustion_events: int  #: receives that found no buffer (ENOBUFS)
    kernel_drops: int            #: dropped by the kernel: receive queue full
    send_exhaustion_drops: int   #: sends refused: no send slot or pool buffer
    send_errors: int             #: sends that failed in the kernel
    recv_errors: int             #: receive errors (e.g. ECONNREFUSED when connected)
    sends_zero_copy: int
    sends_copied: int
    buffers_total: int
    buffers_in_use: int
    last_send_error: int         #: errno of the last failed send, 0 if none
    last_recv_error: int
    gso_sends: int               #: sends that carried several datagrams (UDP GSO)
    large_datagrams: int         #: received whole into a large buffer
    large_buffers_total: int     #: large buffers (0 with small_only)
    large_buffers_in_use: int    #: holding a datagram: lent or being sent


_STATS_FIELDS = tuple(field[0] for field in _ffi.UdpStats._fields_)


def _resolve(host: str, family: int = socket.AF_UNSPEC) -> str:
    """A numeric address for host (IPv4 preferred unless family says)."""
    return resolve_host(host, family, socket.SOCK_DGRAM)


def _decode_peer(raw: bytes) -> UdpPeer:
    """sockaddr_in / sockaddr_in6 bytes -> the socket module's tuple."""
    family = raw[0] | (raw[1] << 8)  # sa_family is host order (little endian here)
    port = (raw[2] << 8) | raw[3]
    if family == _AF_INET:
        return (_inet_ntop(_AF_INET, raw[4:8]), port)
    if family == _AF_INET6:
        flowinfo = int.from_bytes(raw[4:8], "big")
        scope_id = int.from_bytes(raw[24:28], "little")
        return (_inet_ntop(_AF_INET6, raw[8:24]), port, flowinfo, scope_id)
    return (f"<family {family}>", port)


def _encode_addr(family: int, addr: UdpAddress) -> bytes:
    """An address tuple -> sockaddr bytes of the socket's family."""
    if not isinstance(addr, tuple) or len(addr) < 2:
        raise TypeError(f"address must be a (host, port) tuple, not {addr!r}")
    host, port = addr[0], addr[1]
    port = _int_arg(port, "port", 1, 65535)
    other = _AF_INET6 if family == _AF_INET else _AF_INET
    try:
        socket.inet_pton(other, host)
    except (OSError, TypeError, ValueError):
        pass
    else:
        raise ValueError(f"{host!r} is not an {'IPv4' if family == _AF_INET else 'IPv6'} "
                         f"address, and the socket is "
                         f"{'IPv4' if family == _AF_INET else 'IPv6 (use ::ffff:a.b.c.d)'}")
    literal = _resolve(host, family)
    if family == _AF_INET:
        if ":" in literal:
            raise ValueError(f"{host!r} is not an IPv4 address (the socket is IPv4)")
        return struct.pack("<H", _AF_INET) + struct.pack(">H", port) + \
            socket.inet_pton(_AF_INET, literal) + bytes(8)
    if ":" not in literal:
        raise ValueError(f"{host!r} is not an IPv6 address (the socket is IPv6; "
                         "use ::ffff:a.b.c.d for IPv4 peers)")
    flowinfo = _int_arg(addr[2], "flowinfo", 0, 0xFFFFFFFF) if len(addr) > 2 else 0
    scope_id = _int_arg(addr[3], "scope_id", 0, 0xFFFFFFFF) if len(addr) > 3 else 0
    return (struct.pack("<H", _AF_INET6) + struct.pack(">H", port)
            + flowinfo.to_bytes(4, "big") + socket.inet_pton(_AF_INET6, literal)
            + scope_id.to_bytes(4, "little"))


class UdpSocket(BoundSocket, HasBackend):
    """A UDP socket on io_uring bound to ``host``:``port`` (port 0 picks a
    free port: read it from ``port``). ``connect=(host, port)`` fixes the
    one peer (send() then works, and only its datagrams arrive).

    ``buffer_size`` is the largest datagram received into a small buffer;
    ``buffer_count`` such buffers serve both directions (a quarter is kept
    for copied sends). Bigger datagrams, up to the UDP limit, arrive whole in
    a large buffer (``large_buffer_count`` of them for datagrams held, plus
    one behind each receive slot; address space, touched only by a large
    datagram), and bigger sendto() copies go from one.
    ``small_only=True`` has no large buffers: bigger datagrams arrive cut,
    flagged UDP_TRUNCATED, and a copy must fit buffer_size. So does
    recv_mode="multishot" on receive (the kernel picks the buffer before it
    sees the datagram). ``sends_max`` bounds sends in flight. ``rcvbuf``/``sndbuf``
    set SO_RCVBUF/SO_SNDBUF; ``reuse_addr``, ``reuse_port`` and ``broadcast``
    set the socket options of those names. ``gso=False`` sends every
    datagram on its own instead of coalescing same-peer, same-size runs of
    a batch into UDP GSO sends (the peer sees the same datagrams either way).
    ``recv_mode`` picks how datagrams reach the buffers: "readiness"
    (default: recvmmsg batches, an io_uring poll when the socket is empty)
    or "multishot" (multishot recvmsg on a provided-buffer ring); see
    docs/UDP.md.

    handler="c" answers every datagram with the built-in C echo (no Python
    per datagram); on_datagram must then be None.

    ``loop=`` a zcn.Loop puts the socket on that loop (see the module
    docstring): created on the loop's thread, driven by the loop.
    """

    _kind = "zcn.UdpSocket"
    _backend_fn = _ffi.zcn_udp_backend
    _memory: Optional[MappedMemory] = None
    _loop: Optional[Loop] = None
    #: None before the memory exists and once closed; typed as there: unread then.
    _slab: memoryview

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 on_datagram: Optional[DatagramCallback] = None,
                 connect: Optional[UdpAddress] = None, buffer_size: int = 2048,
                 buffer_count: int = 256, sends_max: int = 1024, io_uring_entries: int = 256,
                 reuse_addr: bool = False, reuse_port: bool = False,
                 rcvbuf: Optional[int] = None, sndbuf: Optional[int] = None,
                 broadcast: bool = False, handler: Handler = "python",
                 recv_mode: RecvMode = "readiness", gso: bool = True,
                 large_buffer_count: int = 16, small_only: bool = False,
                 loop: Optional[Loop] = None, backend: Optional[str] = None) -> None:
        self._slab = None  # type: ignore[assignment]
        if loop is not None:
            from .loop import Loop
            if not isinstance(loop, Loop):
                raise TypeError(f"loop must be a zcn.Loop, not {type(loop).__name__}")
        backend_code = _backend_arg(backend)
        if loop is not None and backend_code:
            raise ValueError("backend is the loop's: pass it to zcn.Loop, not to a socket on it")
        if handler not in _HANDLERS:
            raise ValueError(f"handler must be 'python' or 'c', got {handler!r}")
        if recv_mode not in _RECV_MODES:
            raise ValueError(f"recv_mode must be 'readiness' or 'multishot', got {recv_mode!r}")
        self._c_handler = handler == "c"
        self._on_datagram: Optional[DatagramCallback] = None
        self.on_datagram = on_datagram
        port = _int_arg(port, "port", 0, 65535)
        buffer_size = _int_arg(buffer_size, "buffer_size", 1, _ffi.UDP_DATAGRAM_MAX_V6)
        buffer_count = _int_arg(buffer_count, "buffer_count", 2, _ffi.UDP_BUFFERS_MAX)
        sends_max = _int_arg(sends_max, "sends_max", 1, _ffi.UDP_SENDS_MAX)
        entries = _int_arg(io_uring_entries, "io_uring_entries", 1, _ffi.UDP_ENTRIES_MAX)
        large = _int_arg(large_buffer_count, "large_buffer_count", 1, _ffi.UDP_LARGE_BUFFERS_MAX)
        rcvbuf = 0 if rcvbuf is None else _int_arg(rcvbuf, "rcvbuf", 1, INT32_MAX)
        sndbuf = 0 if sndbuf is None else _int_arg(sndbuf, "sndbuf", 1, INT32_MAX)
        flags = 0
        if _bool_arg(reuse_addr, "reuse_addr"):
            flags |= _ffi.UDP_REUSEADDR
        if _bool_arg(reuse_port, "reuse_port"):
            flags |= _ffi.UDP_REUSEPORT
        if _bool_arg(broadcast, "broadcast"):
            flags |= _ffi.UDP_BROADCAST
        if not _bool_arg(gso, "gso"):
            flags |= _ffi.UDP_NO_GSO
        if _bool_arg(small_only, "small_only"):
            flags |= _ffi.UDP_SMALL_ONLY
        literal = _resolve(host)
        self._family = _AF_INET6 if ":" in literal else _AF_INET
        connect_literal, connect_port = None, 0
        if connect is not None:
            if not isinstance(connect, tuple) or len(connect) < 2:
                raise TypeError(f"connect must be a (host, port) tuple, not {connect!r}")
            connect_literal = _resolve(connect[0], self._family).encode()
            connect_port = _int_arg(connect[1], "connect port", 1, 65535)

        self._lock = threading.RLock()
        self._loop_thread: Optional[int] = None
        self._wakeup = LoopWakeup(_ffi.zcn_udp_wakeup_fd)  # signals end its waits
        self._stop_requested = False
        self._close_requested = False
        self._closed_event = threading.Event()
        self._pending: Optional[Iterator[Tuple[Any, ...]]] = None
        self._dispatching = False
        self._queued = False
        self._cur_view: Optional[memoryview] = None
        self._cur_addr: Optional[int] = 0  # the view's C address (None: NULL)
        self._cur_len = 0
        self._peers: Dict[bytes, UdpPeer] = {}  # raw sockaddr bytes -> tuple
        # tuple -> (sockaddr bytes, len)
        self._addrs: Dict[UdpAddress, Tuple[bytes, int]] = {}
        self._callback_errors: List[BaseException] = []
        self._cfunc: Any = None

        self._ev_anchor, self._ev_addr, self._ev_view = c_writable_bytes(
            EVENTS_MAX * _EVENT_SIZE)
        self._count = c_uint32(0)
        self._count_ptr = ctypes.pointer(self._count)

        config = _ffi.UdpConfig(
            address=literal.encode(), port=port, connect_address=connect_literal,
            connect_port=connect_port, io_uring_entries=entries, buffer_count=buffer_count,
            buffer_size=buffer_size, sends_max=sends_max, rcvbuf=rcvbuf, sndbuf=sndbuf,
            flags=flags, recv_mode=_RECV_MODES[recv_mode], large_buffer_count=large,
            backend=backend_code,
        )
        # The buffer slab (small buffers, then large ones) is Python's mmap
        # (as in zcn.TcpServer): a view a user keeps never points into
        # unmapped memory, and one slab keeps every event's offset in it.
        slab_bytes = _ffi.zcn_udp_memory_size(ctypes.byref(config))
        if not slab_bytes:
            raise error_from_code(InvalidArgumentError.code, "zcn_udp_memory_size")
        self._memory = MappedMemory(slab_bytes, readonly=True)
        self._slab = self._memory.view
        config.buffer_memory = self._memory.address
        config.buffer_memory_size = slab_bytes
        try:
            if loop is None:
                handle = _ffi.create(_ffi.zcn_udp_create, ctypes.byref(config))
            else:
                handle = self._create_on(loop, config)
        except BaseException:
            self._drop_memory()
            raise
        self._handle = handle
        self._host = literal
        self._port = _ffi.zcn_udp_port(handle)
        self._capacity = _ffi.zcn_udp_datagram_capacity(handle)
        self._connected = connect is not None
        # Sends are submitted by the next wait (batched) or by an explicit
        # flush when made outside the loop; see sendto.
        _ffi.zcn_udp_set_autoflush(handle, 0)
        if self._c_handler:
            _ffi.zcn_udp_use_echo_handler(handle)
        if loop is not None:
            self._init_on_loop(loop, handle)

    # --- on a zcn.Loop ------------------------------------------------------
    def _create_on(self, loop: Loop, config: Any) -> int:
        loop._check_thread("zcn.UdpSocket(loop=)")
        handle = _ffi.create(_ffi.zcn_udp_create_on, loop._live(), ctypes.byref(config))
        loop._claim()  # as zcn_udp_create_on did in C
        return handle

    def _init_on_loop(self, loop: Loop, handle: int) -> None:
        """The loop drives the socket: its calls replace the socket's own,
        and a ZCN_OnDatagram callback stands in for zcn_udp_poll."""
        self._loop = loop
        loop._udp_sockets[self] = None
        self.run_once = loop.run_once  # type: ignore[method-assign]
        self.stop = loop.stop  # type: ignore[method-assign]
        self.serve_forever = (  # type: ignore[method-assign]
            lambda poll_interval=None: loop.run_forever())
        self.sendto = self._sendto_on_loop  # type: ignore[method-assign]
        self.send = self._send_on_loop  # type: ignore[method-assign]
        self.sendmany = self._sendmany_on_loop  # type: ignore[method-assign]
        if not self._c_handler:
            self._cfunc = self._datagram_thunk(loop)
            _ffi.zcn_udp_set_callback(handle, None, self._cfunc)

    def _datagram_thunk(self, loop: Loop) -> Any:
        """on_datagram behind a ZCN_OnDatagram, which C calls from inside
        zcn_loop_poll: the same peer tuple, borrowed view and zero-copy
        sendto as the polled path. ctypes would only print an exception, so
        each one goes to the loop's error policy here (and a BaseException
        such as KeyboardInterrupt is kept for the loop to raise)."""
        slab = self._slab
        base = self._memory.address  # type: ignore[union-attr]  # made in __init__
        peers = self._peers
        failed = loop._c_callback_failed
        raised = loop._raised

        def on_datagram_c(_user_data: Optional[int], peer: int, peer_len: int,
                          data: Optional[int], length: int, flags: int) -> None:
            loop._c_calls += 1
            on_datagram = self._on_datagram
            if on_datagram is None:
                return
            key = _string_at(peer, peer_len)
            peer_tuple = peers.get(key)
            if peer_tuple is None:
                if len(peers) >= _PEER_CACHE_MAX:
                    peers.clear()
                peer_tuple = peers[key] = _decode_peer(key)
            offset = data - base if data else 0
            view = slab[offset:offset + length]
            self._cur_view = view
            self._cur_addr = data
            self._cur_len = length
            self._dispatching = True  # sends queue; the loop submits after the turn
            try:
                on_datagram(peer_tuple, view, flags)
            except Exception as exc:
                failed("on_datagram", exc)
            except BaseException as exc:
                raised.append(exc)
            finally:
                self._dispatching = False
                self._cur_view = None
                try:
                    view.release()
                except BufferError:
                    pass  # exported by the user: it outlives the call

        return _ffi.OnDatagram(on_datagram_c)

    def _on_loop(self, method: Callable[..., Any], where: str, *args: Any) -> Any:
        """method(self, *args) on the loop's thread. While the loop runs
        (a callback of the loop), the sends wait for its next wait or the
        end of run_once, with the rest of the turn's; otherwise they go now."""
        loop: Loop = self._loop  # type: ignore[assignment]  # only called with a loop
        if loop._owner != _get_ident():
            raise loop._error(WrongThreadError.code, f"zcn.UdpSocket.{where}")
        if self._dispatching or loop._loop_thread is None:
            return method(self, *args)
        self._dispatching = True
        try:
            return method(self, *args)
        finally:
            self._dispatching = False

    def _sendto_on_loop(self, data: BytesLike, addr: UdpAddress) -> None:
        return self._on_loop(UdpSocket.sendto, "sendto()", data, addr)

    def _send_on_loop(self, data: BytesLike) -> None:
        return self._on_loop(UdpSocket.send, "send()", data)

    def _sendmany_on_loop(self,
                          datagrams: Iterable[Union[BytesLike, Tuple[BytesLike, UdpAddress]]],
                          addr: Optional[UdpAddress] = None) -> int:
        return self._on_loop(UdpSocket.sendmany, "sendmany()", datagrams, addr)

    @property
    def loop(self) -> Optional[Loop]:
        """The zcn.Loop this socket is on (None: its own ring)."""
        return self._loop

    def _close_on_loop(self) -> None:
        loop: Loop = self._loop  # type: ignore[assignment]  # only called with a loop
        with self._lock:
            handle = self._handle
            if handle is None:
                return
            if loop._owner != _get_ident():
                if loop._loop_thread is not None:
                    raise BusyError("zcn.UdpSocket.close() while its loop runs on another "
                                    "thread: close it on the loop's thread (e.g. through "
                                    "loop.call_soon_threadsafe(sock.close))")
                raise loop._error(WrongThreadError.code, "zcn.UdpSocket.close()")
            try:
                _ffi.zcn_udp_destroy(handle)  # refuses (nothing done) inside a C callback
            except BusyError:
                raise BusyError("zcn.UdpSocket.close() cannot run inside on_datagram (of any "
                                "UDP socket on the loop); call loop.call_soon(sock.close) "
                                "to close it once the poll has returned") from None
            self._handle = None
            loop._udp_sockets.pop(self, None)
            self._cfunc = None
            self._cur_view = None
            self._drop_memory()
            self._closed_event.set()

    # --- attributes -------------------------------------------------------
    @property
    def on_datagram(self) -> Optional[DatagramCallback]:
        """on_datagram(peer, data, flags): a datagram arrived; data is borrowed."""
        return self._on_datagram

    @on_datagram.setter
    def on_datagram(self, fn: Optional[DatagramCallback]) -> None:
        fn = _callback_arg(fn, "on_datagram")
        if fn is not None and self._c_handler:
            raise ValueError("on_datagram must be None with handler='c'")
        self._on_datagram = fn

    @property
    def family(self) -> socket.AddressFamily:
        """socket.AF_INET or socket.AF_INET6."""
        return self._family

    @property
    def buffer_size(self) -> int:
        """The largest datagram received whole: the UDP limit (65507 IPv4,
        65527 IPv6) with large buffers in readiness mode, else the small
        buffers' room (may exceed the requested size: buffers are whole
        pages)."""
        return self._capacity

    def fileno(self) -> int:
        """The socket's fd (for getsockopt/diagnostics; do not read or close it)."""
        return _ffi.zcn_udp_fd(self._live())

    def __repr__(self) -> str:
        if self._handle is None:
            return "<zcn.UdpSocket closed>"
        where = "" if self._loop is None else " on a zcn.Loop"
        return f"<zcn.UdpSocket {self._host}:{self._port}{where}>"

    # --- sending ------------------------------------------------------------
    def _sockaddr(self, addr: UdpAddress) -> Tuple[bytes, int]:
        entry = self._addrs.get(addr)
        if entry is None:
            raw = _encode_addr(self._family, addr)
            entry = (raw, len(raw))
            if len(self._addrs) >= _PEER_CACHE_MAX:
                self._addrs.clear()
            self._addrs[addr] = entry
        return entry

    def sendto(self, data: BytesLike, addr: UdpAddress) -> None:
        """Sends ``data`` (bytes-like) as one datagram to ``addr``, a
        (host, port) tuple (IPv6: up to (host, port, flowinfo, scope_id)).
        Returns once queued. The view passed to on_datagram is sent without
        a copy; anything else is copied, so it may be reused at once.

        Raises ValueError/InvalidArgumentError (bad address, over 65507/65527
        bytes, or over buffer_size with small_only=True), QueueFullError
        (sends_max in flight: run the loop), ExhaustedError (no pool buffer,
        or no large one for a copy over buffer_size), WrongThreadError
        (another thread owns the socket), ClosedError.
        """
        handle = self._handle
        if handle is None:
            raise ClosedError("zcn.UdpSocket is closed")
        raw, raw_len = self._sockaddr(addr)
        self._send(handle, raw, raw_len, data)

    def send(self, data: BytesLike) -> None:
        """Sends ``data`` to the connected peer (see connect=); OSError
        EDESTADDRREQ when not connected."""
        handle = self._handle
        if handle is None:
            raise ClosedError("zcn.UdpSocket is closed")
        self._send(handle, None, 0, data)

    def sendmany(self, datagrams: Iterable[Union[BytesLike, Tuple[BytesLike, UdpAddress]]],
                 addr: Optional[UdpAddress] = None) -> int:
        """Sends several datagrams with one system call (sendmmsg; a run of
        equal-size datagrams to one peer leaves as one UDP GSO send).

        Each item of ``datagrams`` is a bytes-like object, sent to ``addr``
        (None: the connected peer), or a ``(data, addr)`` pair with its own
        address. Returns how many were sent. Inside on_datagram they are
        queued like sendto's and leave with the loop's next wait.

        Raises what sendto raises, for the first datagram that cannot be
        queued; those before it have been sent, and the exception's
        ``sent`` attribute says how many. With sends_max in flight it
        submits what is queued and retries once before QueueFullError.
        """
        handle = self._handle
        if handle is None:
            raise ClosedError("zcn.UdpSocket is closed")
        if isinstance(datagrams, (bytes, bytearray, memoryview, str)):
            raise TypeError("sendmany() takes an iterable of datagrams; "
                            "send a single one with sendto()")
        raw, raw_len = (None, 0) if addr is None else self._sockaddr(addr)
        sockaddr = self._sockaddr
        cur = self._cur_view
        sent = 0
        try:
            for data in datagrams:
                to, to_len = raw, raw_len
                if type(data) is tuple:
                    if len(data) != 2:
                        raise TypeError("sendmany() items are bytes-like objects or "
                                        f"(data, addr) pairs, not a {len(data)}-tuple")
                    data, item_addr = data
                    to, to_len = sockaddr(item_addr)
                # sendto's choice, inlined: the borrowed view without a copy.
                if data is cur and data is not None:
                    rc = _sendto(handle, to, to_len, self._cur_addr, self._cur_len)
                elif type(data) is bytes:
                    rc = _sendto(handle, to, to_len, data, len(data))
                else:
                    rc = self._send_buffer(handle, to, to_len, data)  # type: ignore[arg-type]
                if rc == _QUEUE_FULL and not self._dispatching:
                    rc = (_flush(handle)
                          or self._send_buffer(handle, to, to_len, data))  # type: ignore[arg-type]
                if rc:
                    raise error_from_code(rc, "sendmany")
                sent += 1
        except BaseException as exc:
            if not self._dispatching:
                _flush(handle)  # what was queued before the failure goes
            exc.sent = sent  # type: ignore[attr-defined]
            raise
        if self._dispatching:
            self._queued = self._queued or sent > 0
        else:
            rc = _flush(handle)
            if rc:
                raise error_from_code(rc, "zcn_udp_flush")
        return sent

    def _send(self, handle: int, raw: Optional[bytes], raw_len: int, data: BytesLike) -> None:
        if data is self._cur_view and data is not None:
            rc = _sendto(handle, raw, raw_len, self._cur_addr, self._cur_len)
        elif type(data) is bytes:
            rc = _sendto(handle, raw, raw_len, data, len(data))
        else:
            rc = self._send_buffer(handle, raw, raw_len, data)
        if rc == 0:
            if self._dispatching:
                self._queued = True  # submitted with the next wait or by run_once
            else:
                rc = _flush(handle)
        if rc:
            raise error_from_code(rc, "sendto")

    def _send_buffer(self, handle: int, raw: Optional[bytes], raw_len: int,
                     data: BytesLike) -> int:
        if isinstance(data, str):
            raise TypeError("sendto() takes a bytes-like object, not str (encode it first)")
        view = _PyBuffer()
        try:
            _get_buffer(data, ctypes.byref(view), PyBUF_SIMPLE)
        except BufferError:
            data = memoryview(data).tobytes()
            return _sendto(handle, raw, raw_len, data, len(data))
        try:
            return _sendto(handle, raw, raw_len, view.buf, view.len)
        finally:
            _release_buffer(ctypes.byref(view))

    def join_multicast(self, group: str, interface: Union[str, int, None] = None) -> None:
        """Joins a multicast group. ``interface``: an IPv4 address string
        (e.g. "127.0.0.1") or an interface index (int) / name (str, IPv6 too);
        None lets the kernel choose."""
        self._membership(_ffi.zcn_udp_join_multicast, group, interface)

    def leave_multicast(self, group: str, interface: Union[str, int, None] = None) -> None:
        """Leaves a multicast group joined with join_multicast."""
        self._membership(_ffi.zcn_udp_leave_multicast, group, interface)

    def _membership(self, fn: Callable[..., object], group: str,
                    interface: Union[str, int, None]) -> None:
        if not isinstance(group, str):
            raise TypeError(f"group must be a str, not {type(group).__name__}")
        if_addr, if_index = None, 0
        if isinstance(interface, int) and not isinstance(interface, bool):
            if_index = _int_arg(interface, "interface", 0, 0xFFFFFFFF)
        elif isinstance(interface, str):
            try:
                socket.inet_pton(_AF_INET, interface)
                if_addr = interface.encode()
            except OSError:
                if_index = socket.if_nametoindex(interface)
        elif interface is not None:
            raise TypeError("interface must be an address, a name, an index or None")
        with self._lock:
            fn(self._live(), group.encode(), if_addr, if_index)

    def stats(self) -> UdpStats:
        """A UdpStats snapshot (for looking, not per datagram). Any thread:
        live on the one that drives the socket, elsewhere as of the end of
        its last loop call."""
        raw = _ffi.UdpStats()
        with self._lock:
            _ffi.zcn_udp_stats(self._live(), ctypes.byref(raw))
        return UdpStats(*(getattr(raw, name) for name in _STATS_FIELDS))

    # --- the loop -----------------------------------------------------------
    def run_once(self, timeout: Optional[float] = None) -> int:
        """Waits for datagrams and dispatches them; returns how many were
        handled. ``timeout`` in seconds, None = until something happens.
        Returns 0 on timeout, on a signal (Python then runs its handler) or
        after stop() (the request is consumed)."""
        timeout_ms = _timeout_ms(timeout, "timeout")
        self._enter_loop(timeout_ms)
        try:
            if self._stop_requested:
                self._stop_requested = False
                return 0
            handled = self._run(timeout_ms)
            self._flush_queued()
            if not handled and self._stop_requested:
                self._stop_requested = False
            return handled
        finally:
            self._exit_loop()

    def serve_forever(self, poll_interval: Optional[float] = None) -> None:
        """Runs the loop until stop() (returns normally) or until on_datagram
        raises (the exception propagates; calling again resumes)."""
        timeout_ms = _timeout_ms(poll_interval, "poll_interval", allow_zero=False)
        self._enter_loop(timeout_ms)
        try:
            run = self._run
            while not self._stop_requested:
                run(timeout_ms)
            self._stop_requested = False
            self._flush_queued()
        finally:
            self._exit_loop()

    def _flush_queued(self) -> None:
        # Within serve_forever the next wait submits what on_datagram sent;
        # a loop call returning may not wait again soon, so it goes now.
        if self._queued:
            self._queued = False
            rc = _flush(self._handle)
            if rc:
                raise error_from_code(rc, "zcn_udp_flush")

    def stop(self) -> None:
        """Asks the loop to return. Any thread or a signal handler; a request
        made while no loop runs ends the next run_once/serve_forever at once.
        No-op when closed."""
        with self._lock:
            handle = self._handle
            if handle is not None:
                # The flag first: the loop, once woken, must see it.
                self._stop_requested = True
                _stop(handle)

    def _enter_loop(self, timeout_ms: int) -> None:
        me = threading.get_ident()
        with self._lock:
            self._live()
            if self._loop_thread is not None:
                if self._loop_thread == me:
                    raise BusyError("run_once()/serve_forever() called from inside "
                                    "on_datagram of the same socket")
                raise WrongThreadError("zcn.UdpSocket: the loop is already running in "
                                       "another thread")
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
            self._close_now()

    def _run(self, timeout_ms: int) -> int:
        if self._pending is not None:
            handled = self._dispatch()
            if handled:
                return handled
        handle = self._handle
        if self._c_handler:
            rc = _run_once_timeout(handle, timeout_ms, self._count_ptr)
            if rc and rc != errno.EINTR:
                raise error_from_code(rc, "zcn_udp_run_once_timeout")
            return self._count.value
        count = self._count
        deadline = _monotonic_ms() + timeout_ms if timeout_ms > 0 else None
        while True:
            rc = _poll(handle, self._ev_addr, EVENTS_MAX, timeout_ms, self._count_ptr)
            n = count.value
            if n:
                self._pending = _EVENT.iter_unpack(self._ev_view[:n * _EVENT_SIZE])
                return self._dispatch()
            if rc:
                if rc == errno.EINTR:
                    return 0
                raise error_from_code(rc, "zcn_udp_poll")
            # Completions without datagrams (sends): only a timeout or a stop
            # ends the call.
            if self._stop_requested or timeout_ms == 0:
                return 0
            if deadline is not None:
                timeout_ms = deadline - _monotonic_ms()
                if timeout_ms <= 0:
                    return 0

    def _dispatch(self) -> int:
        handled = 0
        slab = self._slab
        peers = self._peers
        on_datagram = self._on_datagram
        self._dispatching = True
        try:
            for length, flags, peer_len, _full, offset, address, raw in (
                    self._pending):  # type: ignore[union-attr]
                handled += 1
                if on_datagram is None:
                    continue
                key = raw[:peer_len]
                peer = peers.get(key)
                if peer is None:
                    if len(peers) >= _PEER_CACHE_MAX:
                        peers.clear()
                    peer = peers[key] = _decode_peer(key)
                view = slab[offset:offset + length]
                self._cur_view = view
                self._cur_addr = address
                self._cur_len = length
                try:
                    on_datagram(peer, view, flags)
                finally:
                    self._cur_view = None
                    try:
                        view.release()
                    except BufferError:
                        pass  # exported by the user: it outlives the call
            self._pending = None
        except BaseException:
            # The batch's sends would otherwise wait for the next loop call.
            _flush(self._handle)
            raise
        finally:
            self._dispatching = False
        return handled

    # --- lifetime -------------------------------------------------------------
    def close(self) -> None:
        """Cancels the socket's I/O and frees it. Idempotent. From another
        thread while the loop runs: stops the loop and waits until the loop
        thread has closed it; from inside on_datagram: BusyError. On a
        zcn.Loop: on the loop's thread (WrongThreadError from another;
        BusyError while the loop runs there or inside on_datagram)."""
        if self._loop is not None:
            return self._close_on_loop()
        me = threading.get_ident()
        with self._lock:
            if self._handle is None:
                return
            loop = self._loop_thread
            if loop == me:
                raise BusyError("close() cannot run inside on_datagram of the same socket; "
                                "call stop() and close after the loop returns")
            if loop is not None:
                self._close_requested = True
                self._stop_requested = True
                _stop(self._handle)
        if loop is not None:
            self._closed_event.wait()
            return
        self._close_now()

    def _close_now(self) -> None:
        with self._lock:
            handle, self._handle = self._handle, None
            if handle is None:
                return
            self._pending = None
            self._cur_view = None
            try:
                _ffi.zcn_udp_destroy(handle)
            finally:
                self._drop_memory()
                self._closed_event.set()

    def _drop_memory(self) -> None:
        self._slab = None  # type: ignore[assignment]
        memory, self._memory = self._memory, None
        if memory is not None:
            memory.close()

    def _finalize(self) -> None:
        if self._handle is not None and self._loop is not None:
            self._close_on_loop()  # off the loop's thread it raises: leaked, not freed unsafely
        elif self._handle is not None:
            self._close_now()
        elif self._memory is not None:
            self._drop_memory()
