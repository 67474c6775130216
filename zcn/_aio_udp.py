"""Datagram transports of zcn's asyncio loop (zcn.aio) on zcn's own UDP.

zcn.aio.EventLoop hands every socket that create_datagram_endpoint makes
(or is given with sock=) to make_datagram_transport() below. asyncio's own
create_datagram_endpoint does everything up to there (address lookup,
socket options, bind, connect), so every argument works as it does on
asyncio's loop; what changes is how datagrams move:

* A UDP socket (AF_INET or AF_INET6) is adopted by the zcn loop
  (zcn_udp_adopt_on, on a dup of its fd: the socket object stays the
  transport's, as on asyncio's loop). Datagrams are read by recvmmsg
  into pool buffers when io_uring says the socket is readable, 64 per
  system call, and reach Python in batch mode (zcn_udp_set_batch): one
  ZCN_EVENT_DATAGRAMS per socket in the loop's poll batch, the datagrams
  in an array decoded with struct.iter_unpack, each handed to
  datagram_received() as bytes, without a Handle each and without a
  ctypes callback per datagram. sendto() queues into a pool buffer; the
  datagrams of a loop turn leave in one sendmmsg with the next wait,
  runs of equal size to one peer as one UDP GSO send.
* Anything else (AF_UNIX datagram sockets, ICMP "ping" sockets, UDP-Lite,
  a loop that has 64 UDP sockets already, ...) gets asyncio's own
  _SelectorDatagramTransport, decided per socket.

The semantics are asyncio's, and the transport is asyncio's class
(_SelectorDatagramTransport) with only the I/O replaced: datagram_received
(bytes, addr) with the socket module's address tuples, error_received for
the socket's errors (a receive's, e.g. ConnectionRefusedError after an
ICMP port unreachable on a connected endpoint, or a send's, reported by the
poll after the send left: zcn sends a turn's datagrams together), sendto's
checks and errors (TypeError; ValueError for an address other than a
connected endpoint's; a datagram or address zcn cannot take goes through
the socket's own sendto, which raises what asyncio's would), the write
buffer (what neither zcn nor the kernel took: get_write_buffer_size,
pause_writing / resume_writing through _FlowControlMixin, drained when the
socket is writable), pause_reading / resume_reading (in the kernel:
zcn_udp_pause_recv), close (what was sent still leaves, connection_lost
after), abort, get_extra_info('socket' / 'sockname' / 'peername').
"""
from __future__ import annotations

import asyncio
import ctypes
import mmap
import os
import socket
import struct
import threading
import weakref
from asyncio import base_events, constants, futures, selector_events
from typing import Any, Callable, Iterator, List, Optional, Tuple, cast

from . import _ffi
from ._util import MappedMemory, c_writable_bytes
from .errors import BusyError, ExhaustedError, QueueFullError
from .loop import Loop
from .udp import _decode_peer


def _stock_drops_empty() -> bool:
    """Whether this Python's own datagram transport drops an empty
    datagram (up to 3.12) or sends it (3.13 on): zcn's does what the
    interpreter's asyncio does."""
    import inspect
    try:
        src = inspect.getsource(selector_events._SelectorDatagramTransport.sendto)
    except (OSError, TypeError):  # no sources installed
        import sys
        return sys.version_info < (3, 13)
    return "if not data:" in src


_DROPS_EMPTY = _stock_drops_empty()

__all__ = ["make_datagram_transport"]

#: Datagram entries per socket and poll (one recvmmsg reads up to 64).
BATCH_MAX = 256
#: The zcn socket of each endpoint: receive + send buffers (2 KiB
#: datagrams in small ones, larger ones whole in large ones) and sends in
#: flight. Address space; pages are touched only by the datagrams.
BUFFER_COUNT = 256
BUFFER_SIZE = 2048
SENDS_MAX = 1024
LARGE_BUFFER_COUNT = 16

_EVENT = struct.Struct("=II4xIQ8x32s")  # len, flags, full_len (errno), offset, peer
if _EVENT.size != ctypes.sizeof(_ffi.UdpEvent):  # pragma: no cover - a broken mirror
    raise ImportError("zcn: ZCN_UdpEvent changed; update zcn._aio_udp's decoder")
_EVENT_SIZE = _EVENT.size
_iter_events = _EVENT.iter_unpack
_UDP_ERROR = _ffi.UDP_ERROR
_QUEUE_FULL = QueueFullError.code
_EXHAUSTED = ExhaustedError.code
_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6
_PEER_CACHE_MAX = 4096
_TAG_BASE = 0x7A640000

# The per-datagram calls without ctypes argument conversion, holding the
# GIL (PyDLL), as zcn.aio does for TCP: the handle as a pointer object,
# bytes as char *, lengths as ints.
_pylib = ctypes.PyDLL(_ffi.lib._name, handle=_ffi.lib._handle)
_raw_sendto = _pylib.zcn_udp_sendto
_raw_sendto.restype = ctypes.c_int
_raw_autoflush = _pylib.zcn_udp_set_autoflush
_raw_autoflush.restype = ctypes.c_int
_flush = _ffi.zcn_udp_flush

_next_tag = 0


def _new_tag(zloop: Loop) -> int:
    """A batch tag no endpoint of this zcn loop has (loop thread only)."""
    global _next_tag
    while True:
        _next_tag = (_next_tag + 1) & 0xFFFF
        tag = _TAG_BASE | _next_tag
        if tag not in zloop._batch_handlers:
            return tag


class _NotAdopted(Exception):
    """zcn cannot take this socket: asyncio's own transport does."""


def make_datagram_transport(loop: Any, sock: socket.socket, protocol: asyncio.BaseProtocol,
                            address: Any = None,
                            waiter: "Optional[asyncio.Future[None]]" = None,
                            extra: "Optional[dict[str, Any]]" = None) -> Any:
    """zcn.aio.EventLoop._make_datagram_transport: a zcn transport for a
    UDP socket, asyncio's own for any other (and for a UDP socket zcn
    cannot adopt)."""
    if sock.family in (_AF_INET, _AF_INET6) and sock.type == socket.SOCK_DGRAM:
        try:
            return _ZcnDatagramTransport(loop, sock, protocol, address, waiter, extra)
        except _NotAdopted:
            pass
    return selector_events._SelectorDatagramTransport(loop, sock, protocol, address, waiter,
                                                      extra)


class _ZcnUdp:
    """The zcn side of one endpoint: the adopted socket (a dup of the
    transport's fd, owned and closed by zcn), its buffer slab and its batch
    array. Kept in the zcn.Loop's _udp_sockets, so closing the loop
    destroys it (close())."""

    __slots__ = ("handle", "arg", "memory", "mm", "anchor", "view", "tag", "zloop",
                 "__weakref__")

    handle: Optional[int]
    arg: Optional[ctypes.c_void_p]
    memory: Optional[MappedMemory]
    mm: Optional[mmap.mmap]
    anchor: Any
    view: Optional[memoryview]

    def __init__(self, zloop: Loop, fd: int, tag: int) -> None:
        self.zloop = zloop
        self.tag = tag
        self.handle = None
        config = _ffi.UdpConfig(buffer_count=BUFFER_COUNT, buffer_size=BUFFER_SIZE,
                                sends_max=SENDS_MAX, recv_mode=_ffi.UDP_RECV_READINESS,
                                large_buffer_count=LARGE_BUFFER_COUNT)
        size = _ffi.zcn_udp_memory_size(ctypes.byref(config))
        if not size:  # pragma: no cover - the constants above are valid
            raise _NotAdopted
        memory = MappedMemory(size, readonly=True)
        config.buffer_memory = memory.address
        config.buffer_memory_size = size
        handle_ = zloop._handle
        if handle_ is None:
            memory.close()
            raise _NotAdopted
        try:
            dup = os.dup(fd)
        except (OSError, TypeError, ValueError):  # not a real fd (a mock, a closed socket)
            memory.close()
            raise _NotAdopted from None
        err = ctypes.c_int(0)
        handle = _ffi.zcn_udp_adopt_on(handle_, dup, ctypes.byref(config), ctypes.byref(err))
        if not handle:
            # Not a UDP socket, 64 sockets on the loop already ...: asyncio's
            # transport. On failure the fd stays ours.
            os.close(dup)
            memory.close()
            raise _NotAdopted
        zloop._claim()  # as zcn_udp_adopt_on did in C
        self.handle = handle
        self.arg = ctypes.c_void_p(handle)
        self.memory = memory
        self.mm = memory._mm  # slicing the mmap makes the bytes in one step
        self.anchor, address, self.view = c_writable_bytes(BATCH_MAX * _EVENT_SIZE)
        try:
            _ffi.zcn_udp_pause_recv(handle)  # until connection_made has run
            _ffi.zcn_udp_set_batch(handle, address, BATCH_MAX, tag)
        except BaseException:
            self.close()
            raise
        # closed by zloop.close_loop() as its zcn.UdpSockets are
        zloop._udp_sockets[cast(Any, self)] = None

    def pending_sends(self) -> int:
        """Datagrams zcn queued or has in flight (not yet sent or failed)."""
        if self.handle is None:
            return 0
        st = _ffi.UdpStats()
        _ffi.zcn_udp_stats(self.handle, ctypes.byref(st))
        return (st.sends_zero_copy + st.sends_copied) - (st.datagrams_sent + st.send_errors)

    def close(self) -> None:
        """Sends what is queued and destroys the zcn socket (closing its fd).
        Idempotent."""
        handle = self.handle
        if handle is None:
            return
        _flush(handle)
        _ffi.zcn_udp_destroy(handle)  # BusyError inside a C callback: nothing done
        self.handle = None
        self.arg = None
        zloop = self.zloop
        zloop._udp_sockets.pop(cast(Any, self), None)
        zloop._batch_handlers.pop(self.tag, None)
        self.mm = None
        memory, self.memory = self.memory, None
        if memory is not None:
            memory.close()
        self.anchor = self.view = None


def _batch_handler(ref: "weakref.ReferenceType[_ZcnDatagramTransport]") -> Callable[[int], None]:
    """The zcn.Loop's handler for an endpoint's ZCN_EVENT_DATAGRAMS; holds
    the transport weakly, so an endpoint dropped unclosed is collected and
    warned about as on asyncio's loop."""
    def on_batch(count: int) -> None:
        tr = ref()
        if tr is not None:
            tr._on_batch(count)
    return on_batch


class _ZcnDatagramTransport(selector_events._SelectorDatagramTransport):  # type: ignore[name-defined,misc]
    """asyncio's datagram transport with zcn's UDP underneath (see the
    module docstring)."""

    _z: Optional[_ZcnUdp] = None

    def __init__(self, loop: Any, sock: socket.socket, protocol: asyncio.BaseProtocol,
                 address: Any = None, waiter: "Optional[asyncio.Future[None]]" = None,
                 extra: "Optional[dict[str, Any]]" = None) -> None:
        zloop = loop._zcn
        tag = _new_tag(zloop)
        self._z = _ZcnUdp(zloop, sock.fileno(), tag)  # _NotAdopted: nothing changed
        try:
            # asyncio's _SelectorTransport.__init__, not the datagram one,
            # which would add a reader: zcn reads.
            selector_events._SelectorTransport.__init__(self, loop, sock, protocol, extra)
        except BaseException:
            self._z.close()
            raise
        self._address = address
        self._buffer_size = 0
        self._family = sock.family
        self._connected = bool(self._extra["peername"])
        self._addrs: "dict[Any, bytes]" = {}  # address tuple -> sockaddr bytes
        self._peers: "dict[bytes, Any]" = {}  # sockaddr bytes -> address tuple
        # entries of a batch paused or interrupted mid-way: (data, peer), (None, errno)
        self._held: "Optional[List[Tuple[Optional[bytes], Any]]]" = None
        self._started = False        # _start_reading has run
        self._queued = False         # a batch's replies wait in zcn for its end
        # The two fast paths test one attribute each, kept up to date by
        # _sync(): _zfast is the zcn socket while sendto may go straight
        # to it (open, nothing buffered), else None; _rcheck says a batch
        # being delivered must look again (paused, closing, new protocol).
        self._zfast: Optional[_ZcnUdp] = None
        self._rcheck = False
        self._sync()
        zloop._batch_handlers[tag] = _batch_handler(weakref.ref(self))
        self._loop.call_soon(self._protocol.connection_made, self)
        # only start reading when connection_made() has been called
        self._loop.call_soon(self._start_reading)
        if waiter is not None:
            # only wake up the waiter when connection_made() has been called
            self._loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def __repr__(self) -> str:
        info = [self.__class__.__name__]
        if self._sock is None:
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={self._sock_fd}")
        if self._sock is not None:
            info.append("read=" + ("polling" if self.is_reading() else "idle"))
            info.append(f"write=<bufsize={self.get_write_buffer_size()}>")
        return "<{}>".format(" ".join(info))

    def _sync(self) -> None:
        z = self._z
        alive = z is not None and z.handle is not None
        self._zfast = z if alive and not self._buffer and not self._conn_lost else None
        self._rcheck = True

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        super().set_protocol(protocol)
        self._rcheck = True

    # --- reading -------------------------------------------------------------
    def _zcall(self, fn: Callable[[int], object]) -> None:
        z = self._z
        if z is not None and z.handle is not None:
            fn(z.handle)

    def _start_reading(self) -> None:
        self._started = True
        if self.is_reading():
            self._zcall(_ffi.zcn_udp_resume_recv)
            if self._held:
                self._loop.call_soon(self._deliver_held)

    def pause_reading(self) -> None:
        if not self.is_reading():
            return
        self._paused = True
        self._rcheck = True
        self._zcall(_ffi.zcn_udp_pause_recv)
        if self._loop.get_debug():
            base_events.logger.debug("%r pauses reading", self)

    def resume_reading(self) -> None:
        if self._closing or not self._paused:
            return
        self._paused = False
        if self._started:
            self._zcall(_ffi.zcn_udp_resume_recv)
            if self._held:
                self._loop.call_soon(self._deliver_held)
        if self._loop.get_debug():
            base_events.logger.debug("%r resumes reading", self)

    def _peer(self, raw: bytes) -> Any:
        peers = self._peers
        if len(peers) >= _PEER_CACHE_MAX:
            peers.clear()
        peer = _decode_peer(raw)
        if len(peer) == 4 and peer[3]:
            # a scoped IPv6 address: the socket module writes "fe80::1%lo"
            host = socket.getnameinfo(peer, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)[0]
            peer = (host,) + peer[1:]
        peers[raw] = peer
        return peer

    def _on_batch(self, count: int) -> None:
        """The zcn loop's poll has `count` entries for this endpoint in its
        array (lent until the next poll): datagrams to datagram_received as
        bytes, errors to error_received, in order. Stops delivering as soon
        as the protocol pauses reading, closes or changes (the rest is held
        for resume_reading); a callback's exception goes to the loop's
        exception handler, as from asyncio's own reader callback."""
        z = self._z
        if z is None or z.handle is None or self._closing:
            return
        view, mm = z.view, z.mm
        if view is None or mm is None:  # pragma: no cover - set while handle is
            return
        entries = _iter_events(view[:count * _EVENT_SIZE])
        if self._paused or self._held or not self._started:
            self._hold(entries, mm)
            return
        protocol = self._protocol
        received = protocol.datagram_received
        peers = self._peers
        # The replies of a batch are queued and leave together (one
        # sendmmsg, runs to one peer as GSO sends) when it ends; sendto
        # elsewhere sends at once, as asyncio's does.
        _raw_autoflush(z.arg, 0)
        self._rcheck = False
        try:
            for length, flags, error, offset, raw in entries:
                if flags & _UDP_ERROR:
                    self._call(protocol.error_received, OSError(error, os.strerror(error)))
                else:
                    try:
                        received(mm[offset:offset + length], peers.get(raw) or self._peer(raw))
                    except (SystemExit, KeyboardInterrupt):
                        raise
                    except BaseException as exc:
                        self._callback_failed(received, exc)
                if self._rcheck:
                    # pause_reading(), close(), set_protocol() ... from a callback
                    self._rcheck = False
                    if self._paused or self._closing:
                        if not self._closing:
                            self._hold(entries, mm)
                        return
                    protocol = self._protocol
                    received = protocol.datagram_received
        except (SystemExit, KeyboardInterrupt):
            # Out of the loop. The rest of the batch is kept for when the
            # loop runs again, as the socket keeps what asyncio's loop had
            # not read yet.
            if not self._closing:
                self._hold(entries, mm)
                self._loop.call_soon(self._deliver_held)
            raise
        finally:
            if z.handle is not None:
                _raw_autoflush(z.arg, 1)
                if self._queued:
                    self._queued = False
                    _flush(z.handle)

    def _hold(self, entries: Iterator[Tuple[Any, ...]], mm: Any) -> None:
        """Keeps the rest of a batch (as bytes: its memory goes back at the
        next poll) for when reading resumes. At most a batch: zcn reads
        nothing while paused."""
        held = self._held
        if held is None:
            held = self._held = []
        for length, flags, error, offset, raw in entries:
            if flags & _UDP_ERROR:
                held.append((None, error))
            else:
                peer = self._peers.get(raw)
                if peer is None:
                    peer = self._peer(raw)
                held.append((mm[offset:offset + length], peer))

    def _deliver_held(self) -> None:
        held = self._held
        while held and self.is_reading() and self._started:
            data, peer = held.pop(0)
            protocol = self._protocol
            if data is None:
                self._call(protocol.error_received, OSError(peer, os.strerror(peer)))
            else:
                try:
                    protocol.datagram_received(data, peer)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self._callback_failed(protocol.datagram_received, exc)
        if not held:
            self._held = None

    def _call(self, fn: Callable[[Any], object], arg: Any) -> None:
        try:
            fn(arg)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._callback_failed(fn, exc)

    def _callback_failed(self, fn: Callable[..., object], exc: BaseException) -> None:
        # What asyncio's Handle._run reports for its reader callback.
        from asyncio import format_helpers
        cb = format_helpers._format_callback_source(fn, ())
        self._loop.call_exception_handler({
            "message": f"Exception in callback {cb}",
            "exception": exc,
            "transport": self,
            "protocol": self._protocol,
        })

    # --- writing -------------------------------------------------------------
    def sendto(self, data: Any, addr: Any = None) -> None:
        # The common case first: bytes, zcn's socket open, nothing buffered,
        # a connected endpoint's own address (or none) or an unconnected
        # one's known peer: one C call queues it (or sends it: at once
        # outside a batch's delivery, at its end inside).
        z = self._zfast
        if z is not None and type(data) is bytes and data:
            if self._connected:
                if addr is None or addr == self._address or self._address is None:
                    if not _raw_sendto(z.arg, None, 0, data, len(data)):
                        self._queued = True
                        return
            elif type(addr) is tuple:
                raw = self._addrs.get(addr)
                if raw is not None and not _raw_sendto(z.arg, raw, len(raw), data, len(data)):
                    self._queued = True
                    return
        self._sendto(data, addr)

    def _sendto(self, data: Any, addr: Any) -> None:
        """asyncio's sendto, with zcn sending (_send)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f'data argument must be a bytes-like object, '
                            f'not {type(data).__name__!r}')
        if not data and _DROPS_EMPTY:
            return

        if self._address:
            if addr not in (None, self._address):
                raise ValueError(
                    f'Invalid address: must be None or {self._address}')
            addr = self._address

        if self._conn_lost and self._address:
            if self._conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                base_events.logger.warning('socket.send() raised exception.')
            self._conn_lost += 1
            return

        if not self._buffer:
            # Attempt to send it right away first.
            try:
                self._send(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                self._loop._add_writer(self._sock_fd, self._sendto_ready)
            except OSError as exc:
                self._protocol.error_received(exc)
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(
                    exc, 'Fatal write error on datagram transport')
                return

        # Ensure that what we buffer is immutable.
        self._buffer.append((bytes(data), addr))
        self._buffer_size += len(data)
        self._zfast = None
        self._maybe_pause_protocol()

    def _send(self, data: Any, addr: Any) -> None:
        """One datagram into zcn's queue (it leaves with the loop's next
        wait); BlockingIOError when zcn has no room even after sending what
        it holds. What zcn cannot take (an address that is not an IP
        literal tuple, a datagram over the UDP limit, a port 0 ...) goes
        through the socket's own call, after what zcn holds, so the
        exception is the one asyncio's loop would give."""
        z = self._z
        if z is None or z.handle is None:  # the zcn loop was closed under us
            return self._sock_send(data, addr)
        if self._connected:
            raw = None
        else:
            raw = self._addrs.get(addr) if type(addr) is tuple else None
            if raw is None:
                raw = self._sockaddr(addr)
                if raw is None:
                    return self._sock_send_after(z, data, addr)
        if type(data) is not bytes:
            if type(data) is memoryview and not data.c_contiguous:
                return self._sock_send_after(z, data, addr)
            data = bytes(data)
        rc = _raw_sendto(z.arg, raw, 0 if raw is None else len(raw), data, len(data))
        if not rc:
            self._queued = True
            return
        if rc == _QUEUE_FULL or rc == _EXHAUSTED:
            # What zcn holds goes now, freeing buffers and send slots.
            _flush(z.handle)
            rc = _raw_sendto(z.arg, raw, 0 if raw is None else len(raw), data, len(data))
            if not rc:
                self._queued = True
                return
            if rc == _QUEUE_FULL or rc == _EXHAUSTED:
                raise BlockingIOError(rc, "zcn's send queue is full")
        self._sock_send_after(z, data, addr)

    def _sock_send(self, data: Any, addr: Any) -> None:
        if self._extra['peername']:
            self._sock.send(data)
        else:
            self._sock.sendto(data, addr)

    def _sock_send_after(self, z: _ZcnUdp, data: Any, addr: Any) -> None:
        _flush(z.handle)  # keeps the order of the datagrams
        self._sock_send(data, addr)

    def _sockaddr(self, addr: Any) -> Optional[bytes]:
        """addr as the sockaddr bytes zcn takes, for numeric addresses of
        the socket's family (cached); None for anything else."""
        try:
            if type(addr) is not tuple:
                return None
            host, port = addr[0], addr[1]
            if type(host) is not str or type(port) is not int or not 0 < port < 65536:
                return None
            if self._family == _AF_INET:
                if len(addr) != 2:
                    return None
                raw = (struct.pack("=H", _AF_INET) + port.to_bytes(2, "big")
                       + socket.inet_pton(_AF_INET, host) + bytes(8))
            else:
                if not 2 <= len(addr) <= 4 or "%" in host:
                    return None
                flowinfo = addr[2] if len(addr) > 2 else 0
                scope_id = addr[3] if len(addr) > 3 else 0
                if (type(flowinfo) is not int or type(scope_id) is not int
                        or not 0 <= flowinfo <= 0xFFFFF or not 0 <= scope_id <= 0xFFFFFFFF):
                    return None
                raw = (struct.pack("=H", _AF_INET6) + port.to_bytes(2, "big")
                       + flowinfo.to_bytes(4, "big") + socket.inet_pton(_AF_INET6, host)
                       + scope_id.to_bytes(4, "little"))
        except (OSError, TypeError, ValueError, IndexError):
            return None
        if len(self._addrs) >= _PEER_CACHE_MAX:
            self._addrs.clear()
        self._addrs[addr] = raw
        return raw

    def _sendto_ready(self) -> None:
        while self._buffer:
            data, addr = self._buffer.popleft()
            self._buffer_size -= len(data)
            try:
                self._send(data, addr)
            except (BlockingIOError, InterruptedError):
                self._buffer.appendleft((data, addr))  # Try again later.
                self._buffer_size += len(data)
                break
            except OSError as exc:
                self._protocol.error_received(exc)
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(
                    exc, 'Fatal write error on datagram transport')
                return

        self._maybe_resume_protocol()  # May append to buffer.
        self._sync()
        if not self._buffer:
            if self._closing and self._z is not None and self._z.pending_sends():
                return  # zcn's sends waiting for room go first
            self._loop._remove_writer(self._sock_fd)
            if self._closing:
                self._call_connection_lost(None)

    # --- closing -------------------------------------------------------------
    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._zcall(_ffi.zcn_udp_pause_recv)
        self._held = None
        self._rcheck = True
        if not self._buffer:
            self._conn_lost += 1
            self._sync()
            z = self._z
            if z is not None and z.handle is not None:
                _flush(z.handle)
                if z.pending_sends():
                    # zcn's datagrams waiting for room in the socket still
                    # go, as asyncio's buffer would: connection_lost then
                    self._loop._add_writer(self._sock_fd, self._sendto_ready)
                    return
            self._loop._remove_writer(self._sock_fd)
            self._loop.call_soon(self._call_connection_lost, None)

    def _force_close(self, exc: Optional[BaseException]) -> None:
        if self._conn_lost:
            return
        if self._buffer:
            self._buffer.clear()
        self._loop._remove_writer(self._sock_fd)
        if not self._closing:
            self._closing = True
            self._zcall(_ffi.zcn_udp_pause_recv)
        self._held = None
        self._conn_lost += 1
        self._sync()
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: Optional[BaseException]) -> None:
        try:
            if self._protocol_connected:
                self._protocol.connection_lost(exc)
        finally:
            self._zclose()
            self._sock.close()
            self._sock = None
            self._protocol = None
            self._loop = None
            server = self._server
            if server is not None:
                server._detach()
                self._server = None

    def _zclose(self) -> None:
        z = self._z
        if z is not None:
            z.close()
        self._sync()

    def __del__(self) -> None:
        z = self._z
        if z is not None and z.handle is not None and z.zloop._owner == threading.get_ident():
            try:
                z.close()
            except BusyError:
                pass  # inside a C callback of the loop: the loop's close destroys it
            except Exception:  # pragma: no cover - interpreter shutdown
                pass
        super().__del__()
