"""The wait of zcn's asyncio loop (zcn.aio): a selectors.BaseSelector whose
registrations are zcn watches (io_uring polls, level-triggered) and whose
select() is one zcn_loop_poll. The same batch carries the adopted
connections' events, handed to their transports (zcn._aio_tcp), and those
of zcn objects on the loop (handed to the zcn.Loop's own dispatch). It
also collects the turn's writes and gives them to C in one call."""
from __future__ import annotations

import array
import asyncio
import ctypes
import errno
import math
import selectors
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional

from . import _ffi
from .loop import _ASYNCIO_TAG, Loop, _iter_events, _poll_raw

if TYPE_CHECKING:
    from ._aio_tcp import _ZcnTransport

EVENTS_MAX = 256
#: The ZCN_Event.tag of connections zcn.aio adopted (the zcn.Loop's own
#: servers' tags skip it).
_TAG = _ASYNCIO_TAG
(_ACCEPT, _DATA, _CLOSE, _DRAIN, _EOF, _CONNECT, _TIMER, _WATCH, _CALL) = range(1, 10)
_W_READ, _W_WRITE, _W_ERROR, _W_HUP = 1, 2, 4, 8
_NO_WATCH_CB = _ffi.OnWatch()
# One call per turn, without argtypes conversion (zcn._aio_tcp says why).
_pylib = ctypes.PyDLL(_ffi.lib._name, handle=_ffi.lib._handle)
_raw_send_many = _pylib.zcn_loop_send_many
_raw_send_many.restype = ctypes.c_int


class _ZcnSelector(selectors.BaseSelector):
    """selectors.BaseSelector over a zcn.Loop: each registered fd is one
    level-triggered zcn watch (an io_uring poll); select() is one
    zcn_loop_poll, whose batch also carries the adopted transports'
    events (dispatched to them here) and those of zcn objects on the same
    loop (handed to the zcn.Loop's own dispatch)."""

    def __init__(self, zloop: Loop) -> None:
        self._zl = zloop
        self._keys: dict[int, selectors.SelectorKey] = {}
        self._watch_of: dict[int, int] = {}        # fd -> watch id
        self._key_of_watch: dict[int, selectors.SelectorKey] = {}
        self._transports: dict[int, _ZcnTransport] = {}
        self._closed = False
        # The writes of this turn: their bytes back to back, and one
        # ZCN_SendItem {int32 fd; uint32 len} per write as two 'i' entries
        # (small ints: nothing allocated or converted per write).
        self._wbuf = bytearray()
        self._wrec = array.array("i")
        self._wres = array.array("i", bytes(4 * 64))
        self._wfailed = ctypes.c_uint32(0)
        self._wfailed_arg = ctypes.byref(self._wfailed)
        # The asyncio loop's ready queue (set by zcn.aio.EventLoop), and a
        # batch whose dispatch waits behind what was ready before its wait.
        self._aloop: Any = None
        self._deferred: Optional[memoryview] = None
        self._deferred_handle: Optional[asyncio.Handle] = None

    def _flush_writes(self) -> None:
        """Hands the writes collected since the last flush to C in one call."""
        rec = self._wrec
        n = len(rec) >> 1
        if not n:
            return
        buf = self._wbuf
        if len(self._wres) < n:
            self._wres = array.array("i", bytes(4 * 2 * n))
        data = (ctypes.c_char * len(buf)).from_buffer(buf)
        items = (ctypes.c_int32 * (2 * n)).from_buffer(rec)
        results = (ctypes.c_int32 * n).from_buffer(self._wres)
        zl = self._zl
        rc = _raw_send_many(zl._handle_arg, data, len(buf), items, n, results, self._wfailed_arg)
        del data, items, results  # the exports go: the buffers may grow again
        if rc == 0 and self._wfailed.value == 0:
            del buf[:]
            del rec[:]
            return
        # Rare: a queue full, a connection gone. What was refused goes back
        # to its transport, in order (zcn refuses the rest of an fd's
        # items once one is refused).
        chunks = []
        off = 0
        res = self._wres
        for i in range(n):
            fd, length = rec[2 * i], rec[2 * i + 1]
            code = rc or res[i]
            if code:
                chunks.append((fd, code, bytes(buf[off:off + length])))
            off += length
        del buf[:]
        del rec[:]
        for fd, code, chunk in chunks:
            tr = self._transports.get(fd)
            if tr is not None:
                tr._write_refused(code, chunk)

    # --- registration ------------------------------------------------------
    @staticmethod
    def _fd(fileobj: Any) -> int:
        return selectors._fileobj_to_fd(fileobj)

    def _watch(self, fd: int, events: int) -> None:
        bits = (_W_READ if events & selectors.EVENT_READ else 0) | \
               (_W_WRITE if events & selectors.EVENT_WRITE else 0)
        out = ctypes.c_uint64(0)
        zl = self._zl
        rc = _ffi.zcn_loop_watch(zl._live(), fd, bits, _NO_WATCH_CB, None, ctypes.byref(out))
        if rc:
            raise zl._error(rc, "register()")
        zl._claim()
        self._watch_of[fd] = out.value

    def _unwatch(self, fd: int) -> None:
        wid = self._watch_of.pop(fd, None)
        if wid is None:
            return
        self._key_of_watch.pop(wid, None)
        handle = self._zl._handle
        if handle is not None:
            _ffi.zcn_loop_unwatch(handle, wid)

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        if (not events) or (events & ~(selectors.EVENT_READ | selectors.EVENT_WRITE)):
            raise ValueError(f"Invalid events: {events!r}")
        fd = self._fd(fileobj)
        if fd in self._keys:
            raise KeyError(f"{fileobj!r} (FD {fd}) is already registered")
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._watch(fd, events)
        self._keys[fd] = key
        self._key_of_watch[self._watch_of[fd]] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = self._fd(fileobj)
        try:
            key = self._keys.pop(fd)
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        self._unwatch(fd)
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = self._fd(fileobj)
        try:
            key = self._keys[fd]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        if events != key.events:
            if (not events) or (events & ~(selectors.EVENT_READ | selectors.EVENT_WRITE)):
                raise ValueError(f"Invalid events: {events!r}")
            self._unwatch(fd)
            key = key._replace(events=events, data=data)
            self._watch(fd, events)
        elif data != key.data:
            key = key._replace(data=data)
        else:
            return key
        self._keys[fd] = key
        self._key_of_watch[self._watch_of[fd]] = key
        return key

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        fd = self._fd(fileobj)
        try:
            return self._keys[fd]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None

    def get_map(self) -> "Mapping[Any, selectors.SelectorKey]":
        return _KeyMap(self._keys)

    def close(self) -> None:
        self._closed = True
        self._deferred = None
        self._keys.clear()
        self._watch_of.clear()
        self._key_of_watch.clear()

    # --- the wait ----------------------------------------------------------
    def select(self, timeout: Optional[float] = None) -> "list[tuple[selectors.SelectorKey, int]]":
        zl = self._zl
        early = None
        if self._deferred is not None:
            # A batch whose handle did not run (a KeyboardInterrupt ended
            # the turn first): its lent memory lasts until this poll only.
            early = self._dispatch_deferred()
            timeout = 0
        if timeout is None:
            ms = -1
        elif timeout <= 0:
            ms = 0
        else:
            # Rounded up: asyncio waits for a timer due in 0.4 ms, and a
            # poll of 0 ms would spin until then.
            ms = min(math.ceil(timeout * 1000), 0x7FFFFFFF)
        if zl._pending is not None or zl._ready or zl._raised:
            ms = 0
            if zl._raised:
                zl._raise_pending()
            if zl._pending is not None:
                zl._dispatch()
        if self._wrec:
            self._flush_writes()  # what the ready callbacks wrote
        zl._c_calls = 0
        rc = _poll_raw(zl._handle_arg, zl._ev_ptr, EVENTS_MAX, ms, zl._count_arg)
        n = zl._count.value
        ready: "list[tuple[selectors.SelectorKey, int]]" = []
        if n:
            aloop = self._aloop
            if aloop is not None and aloop._ready:
                # asyncio runs what was ready before a wait ahead of the I/O
                # callbacks that wait found (a task made just before, e.g.
                # by run_until_complete, takes its first step first): the
                # batch is dispatched by a callback queued behind them, in
                # this same turn, before the next poll ends its lent data.
                # DRAIN events go now: get_write_buffer_size() reads zcn's
                # queue, which this poll emptied, so resume_writing must not
                # wait behind callbacks that may look at it.
                view = zl._ev_views[n]
                self._drains_now(view)
                self._defer(view)
            else:
                ready = self._dispatch(zl._ev_views[n])
        if early:
            ready = early + ready
        if zl._ready:
            zl._run_ready()
        if zl._raised:
            zl._raise_pending()
        if rc and rc != errno.EINTR:
            raise zl._error(rc, "zcn_loop_poll")
        return ready

    def _defer(self, view: memoryview) -> None:
        handle = self._deferred_handle
        if handle is None:
            handle = self._deferred_handle = asyncio.Handle(
                self._run_deferred, (), self._aloop)
        self._deferred = view
        self._aloop._ready.append(handle)

    def _drains_now(self, view: memoryview) -> None:
        get_transport = self._transports.get
        for etype, fd, _length, tag, _offset in _iter_events(view):
            if etype == _DRAIN and tag == _TAG:
                tr = get_transport(fd)
                if tr is not None:
                    tr._drain_event()
        if self._wrec:
            self._flush_writes()

    def _dispatch_deferred(self) -> "list[tuple[selectors.SelectorKey, int]]":
        view = self._deferred
        self._deferred = None
        if view is None:
            return []
        ready = self._dispatch(view, drains=False)
        if self._zl._ready:
            self._zl._run_ready()
        return ready

    def _run_deferred(self) -> None:
        # zcn.Loop callbacks' exceptions stay pending: the next select()
        # raises them, as it would have raised them from this one.
        ready = self._dispatch_deferred()
        if ready:
            self._aloop._process_events(ready)

    def _dispatch(self, view: memoryview, _TAG: int = _TAG, _DATA: int = _DATA,
                  drains: bool = True) -> "list[tuple[selectors.SelectorKey, int]]":
        # (the constants as locals)
        ready = []
        get_transport = self._transports.get
        keys = self._key_of_watch
        other = None
        mm: Any = self._zl._memory._mm  # type: ignore[union-attr]  # the bytes in one step
        for etype, fd, length, tag, offset in _iter_events(view):
            if tag == _TAG:
                tr = get_transport(fd)
                if tr is None:
                    continue
                if etype == _DATA:
                    if tr._rfast:
                        # (a bound method kept on the instance: loaded as an
                        # attribute, then called, which 3.11 specializes;
                        # tr._data_received(...) would look it up anew)
                        received = tr._data_received
                        try:
                            received(mm[offset:offset + length])
                        except (SystemExit, KeyboardInterrupt):
                            raise
                        except BaseException as exc:
                            tr._fatal_error(
                                exc, "Fatal error: protocol.data_received() call failed.")
                    else:
                        tr._data_event(offset, length)
                elif etype == _CLOSE:
                    del self._transports[fd]
                    tr._close_event(offset)
                elif etype == _EOF:
                    tr._eof_event()
                elif etype == _DRAIN:
                    if drains:  # (a deferred batch had them dispatched already)
                        tr._drain_event()
            elif etype == _WATCH:
                key = keys.get(offset)
                if key is None:
                    if other is None:
                        other = []
                    other.append((etype, fd, length, tag, offset))
                    continue
                if length & (_W_ERROR | _W_HUP):
                    mask = key.events
                else:
                    mask = ((selectors.EVENT_READ if length & _W_READ else 0) |
                            (selectors.EVENT_WRITE if length & _W_WRITE else 0)) & key.events
                if mask:
                    ready.append((key, mask))
            elif etype == _CALL and tag == 0 and offset == 0:
                continue  # a wake-up (call_soon_threadsafe)
            else:
                if other is None:
                    other = []
                other.append((etype, fd, length, tag, offset))
        if other is not None:
            # zcn objects on the same loop (TcpServer, zcn.Loop's own
            # timers, watches and calls): the zcn.Loop dispatches them.
            zl = self._zl
            zl._pending = iter(other)
            zl._dispatch()
        if self._wrec:
            self._flush_writes()
        return ready


class _KeyMap(Mapping[Any, selectors.SelectorKey]):
    __slots__ = ("_keys",)

    def __init__(self, keys: "dict[int, selectors.SelectorKey]") -> None:
        self._keys = keys

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, fileobj: Any) -> selectors.SelectorKey:
        fd = selectors._fileobj_to_fd(fileobj)
        try:
            return self._keys[fd]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None

    def __iter__(self) -> "Iterator[int]":
        return iter(self._keys)
