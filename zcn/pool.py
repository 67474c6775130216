"""zcn.BufferPool: page-aligned buffers from the C pool, seen as memoryviews.

    import zcn
    with zcn.BufferPool(buffer_size=4096, count=1024) as pool:
        buf = pool.acquire()          # a zcn.Buffer, or None when all are out
        buf.view[:5] = b"hello"       # writes straight into the C buffer
        pool.release(buf)             # or buf.release()
        print(pool.stats().in_use)    # 0

Memory: Python owns the slab. It is an anonymous private mmap made here and
handed to the C pool with zcn_pool_create_in, so a memoryview that outlives
the pool can never point into unmapped memory: close() unmaps only if no
view is left, and otherwise leaves the mapping to die with the last view.

Views: ``Buffer.view`` is a writable memoryview of exactly buffer_size bytes.
release() (and close()) call memoryview.release() on it, so a stale
reference raises ValueError instead of reading a buffer someone else now
owns. Views the caller derived from it (``buf.view[0:10]``,
``memoryview(buf.view)``, ``numpy.frombuffer(buf.view)``) are not covered:
they stay usable and may see the next owner's data, though never unmapped
memory. Should a consumer hold a raw buffer export of the view itself,
release() raises BufferError and releases nothing until it lets go.

Threads: a BufferPool may be shared by threads; each call holds the pool's
lock around its C call (the C pool itself is lock-free; the lock makes
close() safe against a concurrent acquire). A Buffer is meant for one
owner at a time.
"""
from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

from . import _ffi
from ._util import HandleOwner, MappedMemory, int_arg, round_up_pages
from .errors import ClosedError, DoubleFreeError, ForeignPointerError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    from typing import Dict, Optional

    from .ring import Ring

__all__ = ["BufferPool", "Buffer", "PoolStats", "PoolCacheStats", "PAGE_SIZE", "COUNT_MAX",
           "BYTES_MAX", "THREAD_CACHE_MAX"]

PAGE_SIZE = _ffi.PAGE_SIZE
#: Bounds checked before anything reaches C (ZCN_POOL_COUNT_MAX/_BYTES_MAX).
COUNT_MAX = _ffi.POOL_COUNT_MAX
BYTES_MAX = _ffi.POOL_BYTES_MAX
#: Upper bound of BufferPool(thread_cache=...) (ZCN_POOL_THREAD_CACHE_MAX).
THREAD_CACHE_MAX = _ffi.POOL_THREAD_CACHE_MAX


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a pool's counters (see zcn_pool_stats)."""

    total: int        #: buffers in the pool
    in_use: int       #: acquired and not yet released
    free: int         #: total - in_use
    allocated: int    #: successful acquires since create
    freed: int        #: successful releases since create
    failed: int       #: acquires that found the pool empty
    buffer_size: int  #: bytes per buffer (a multiple of 4096)


@dataclass(frozen=True)
class PoolCacheStats:
    """The pool's per-thread caches (see zcn_pool_cache_stats)."""

    thread_cache: int   #: buffers per thread cache at most (0: caches off)
    caches_max: int     #: threads that can hold a cache of this pool
    caches_in_use: int  #: threads holding one now
    cached: int         #: free buffers sitting in thread caches (counted in free)
    steals: int         #: acquires served from another thread's cache


class Buffer:
    """One acquired pool buffer. Get it from BufferPool.acquire().

    ``view`` is a writable memoryview over the C memory (no copy), ``index``
    the buffer's index in the pool (its fixed-buffer index once the pool is
    registered with a ring) and ``address`` its C address. After release,
    or once the pool is closed, ``view``, ``address`` and len() raise
    zcn.ClosedError; ``index`` stays readable.
    """

    __slots__ = ("_pool", "_index", "_address", "_view", "_live")

    def __init__(self, pool: BufferPool, index: int, address: int, view: memoryview) -> None:
        self._pool = pool
        self._index = index
        self._address = address
        self._view = view
        self._live = True

    def _check(self) -> None:
        if not self._live:
            raise ClosedError("zcn.Buffer was released (or its pool closed)")

    @property
    def view(self) -> memoryview:
        """The buffer's bytes: a writable memoryview of buffer_size bytes."""
        self._check()
        return self._view

    @property
    def index(self) -> int:
        """The buffer's index in the pool (its fixed-buffer index)."""
        return self._index

    @property
    def address(self) -> int:
        """The buffer's C address."""
        self._check()
        return self._address

    @property
    def released(self) -> bool:
        """True once released or once its pool is closed."""
        return not self._live

    def __len__(self) -> int:
        self._check()
        return len(self._view)

    def __bool__(self) -> bool:
        # `if buf:` must not depend on __len__, which raises after release.
        return True

    def release(self) -> None:
        """Gives the buffer back to its pool (same as pool.release(self))."""
        self._pool.release(self)

    def _invalidate(self) -> bool:
        """Marks the buffer dead; False if its view is still exported."""
        try:
            self._view.release()
        except BufferError:
            return False
        self._live = False
        return True

    def __repr__(self) -> str:
        state = "released" if not self._live else f"{len(self._view)} bytes"
        return f"<zcn.Buffer index={self._index} {state}>"


class BufferPool(HandleOwner):
    """``count`` page-aligned buffers of ``buffer_size`` bytes (rounded up to
    a multiple of 4096), acquired and released without copying or
    allocating in C.

    A context manager; close() is idempotent and also runs from __del__.
    """

    _kind = "zcn.BufferPool"

    def __init__(self, buffer_size: int = 4096, count: int = 1024,
                 thread_cache: Optional[int] = None) -> None:
        buffer_size = int_arg(buffer_size, "buffer_size", 1, BYTES_MAX)
        count = int_arg(count, "count", 1, COUNT_MAX)
        # None: the C default; 0: no thread caches; else buffers per thread.
        cache = 0 if thread_cache is None else int_arg(thread_cache, "thread_cache", 0,
                                                           THREAD_CACHE_MAX)
        if thread_cache is not None and cache == 0:
            cache = _ffi.POOL_THREAD_CACHE_OFF
        rounded = round_up_pages(buffer_size)
        slab_bytes = rounded * count
        if slab_bytes > BYTES_MAX:
            raise ValueError(f"{count} buffers of {rounded} bytes exceed the pool limit "
                             f"of {BYTES_MAX} bytes")
        self._lock = threading.Lock()
        self._out: Dict[int, Buffer] = {}    # index -> Buffer, the buffers acquired now
        self._ring: Optional[Ring] = None  # the zcn.Ring we registered with
        self._memory: MappedMemory = MappedMemory(slab_bytes)
        self._slab = self._memory.view
        self._base = self._memory.address
        self._buffer_size = rounded
        self._count = count
        config = _ffi.PoolConfig(buffer_size=rounded, count=count, memory=self._base,
                                 memory_size=slab_bytes, thread_cache=cache)
        self._handle = _ffi.create(_ffi.zcn_pool_create_with, ctypes.byref(config))

    # --- lifetime -----------------------------------------------------------
    def close(self) -> None:
        """Destroys the pool. Idempotent.

        Every buffer still acquired is invalidated (its view released). The
        pool is unregistered from its ring if that ring is still open. The
        memory is unmapped now unless the caller still holds views of it, in
        which case it is unmapped when the last of them goes away.
        """
        lock = getattr(self, "_lock", None)
        if lock is None:  # __init__ failed before the C pool existed
            return
        with lock:
            handle, self._handle = self._handle, None
            if handle is None:
                return
            for buf in self._out.values():
                if not buf._invalidate():
                    buf._live = False  # exported view: the mapping outlives us
            self._out.clear()
            self._unregister_quietly(handle)
            _ffi.zcn_pool_destroy(handle)
        self._drop_memory()

    def _unregister_quietly(self, handle: int) -> None:
        ring, self._ring = self._ring, None
        if ring is None or ring.closed:
            return  # a closed ring took its fixed buffers with it
        try:
            _ffi.zcn_pool_unregister(handle, ring._live())
        except Exception:
            pass  # e.g. closed from another thread than a SINGLE_ISSUER ring's

    def _drop_memory(self) -> None:
        # Typed as always there: nothing reads them once the pool is closed.
        self._slab = None  # type: ignore[assignment]
        memory, self._memory = self._memory, None  # type: ignore[assignment]
        memory.close()

    def __repr__(self) -> str:
        if self._handle is None:
            return "<zcn.BufferPool closed>"
        return (f"<zcn.BufferPool buffer_size={self._buffer_size} count={self._count} "
                f"in_use={len(self._out)}>")

    # --- shape --------------------------------------------------------------
    @property
    def buffer_size(self) -> int:
        """Bytes per buffer: the requested size rounded up to 4096."""
        return self._buffer_size

    @property
    def count(self) -> int:
        """The number of buffers."""
        return self._count

    # --- acquire / release --------------------------------------------------
    def acquire(self) -> Optional[Buffer]:
        """Takes a free buffer; returns None when all are in use."""
        with self._lock:
            handle = self._live()
            address = _ffi.zcn_pool_acquire(handle)
            if not address:
                return None
            offset = address - self._base
            index = offset // self._buffer_size
            view = self._slab[offset:offset + self._buffer_size]
            buf = Buffer(self, index, address, view)
            self._out[index] = buf
            return buf

    def release(self, buf: Buffer) -> None:
        """Gives ``buf`` back.

        TypeError if it is not a zcn.Buffer, ForeignPointerError if it came
        from another pool, DoubleFreeError if it was already released,
        ClosedError if this pool is closed, BufferError if something still
        holds an export of ``buf.view`` (then nothing is released).
        """
        if not isinstance(buf, Buffer):
            raise TypeError(f"release() takes a zcn.Buffer, not {type(buf).__name__}")
        with self._lock:
            handle = self._live()
            if buf._pool is not self:
                raise ForeignPointerError("zcn.Buffer belongs to another BufferPool")
            if not buf._live or self._out.get(buf._index) is not buf:
                raise DoubleFreeError(f"zcn.Buffer {buf._index} was already released")
            if not buf._invalidate():
                raise BufferError(f"zcn.Buffer {buf._index}: its view is still exported "
                                  "by another object; drop it first")
            del self._out[buf._index]
            _ffi.zcn_pool_release(handle, buf._address)

    def stats(self) -> PoolStats:
        """A PoolStats snapshot. Reads one word per buffer (O(count))."""
        with self._lock:
            raw = _ffi.PoolStats()
            _ffi.zcn_pool_stats(self._live(), ctypes.byref(raw))
        return PoolStats(total=raw.total, in_use=raw.in_use, free=raw.free,
                         allocated=raw.allocated, freed=raw.freed, failed=raw.failed,
                         buffer_size=raw.buffer_size)

    def cache_stats(self) -> PoolCacheStats:
        """The per-thread caches' figures (docs/POOL.md, "Thread caches")."""
        with self._lock:
            raw = _ffi.PoolCacheStats()
            _ffi.zcn_pool_cache_stats(self._live(), ctypes.byref(raw))
        return PoolCacheStats(thread_cache=raw.thread_cache, caches_max=raw.caches_max,
                              caches_in_use=raw.caches_in_use, cached=raw.cached,
                              steals=raw.steals)

    def flush(self) -> None:
        """Returns the calling thread's cached buffers to the shared list and
        gives up its cache of this pool (a thread's exit does the same)."""
        with self._lock:
            _ffi.zcn_pool_flush(self._live())

    # --- io_uring -----------------------------------------------------------
    def register(self, ring: Ring) -> None:
        """Registers every buffer with ``ring`` (a zcn.Ring) as io_uring fixed
        buffers; a Buffer's ``index`` is its fixed-buffer index.

        ValueError (InvalidArgumentError) over 16384 buffers, MemlockError
        when RLIMIT_MEMLOCK is too low (the message gives the limit),
        OSError(EBUSY) if the ring already has fixed buffers. A pool may be
        registered with several rings; it remembers the last one, which
        unregister() and close() undo. Call it from the ring's owner thread.
        """
        from .ring import Ring  # late: keeps zcn.pool importable on its own

        if not isinstance(ring, Ring):
            raise TypeError(f"register() takes a zcn.Ring, not {type(ring).__name__}")
        with self._lock:
            handle = self._live()
            _ffi.zcn_pool_register(handle, ring._live())
            self._ring = ring

    def unregister(self) -> None:
        """Drops the fixed buffers registered by register(). ValueError if
        the pool is not registered."""
        with self._lock:
            handle = self._live()
            ring = self._ring
            if ring is None:
                raise ValueError("zcn.BufferPool is not registered with a ring")
            if ring.closed:
                raise ClosedError("the zcn.Ring this pool was registered with is closed "
                                  "(its fixed buffers went with it)")
            _ffi.zcn_pool_unregister(handle, ring._live())
            self._ring = None

    @property
    def registered_ring(self) -> Optional[Ring]:
        """The zcn.Ring the pool is registered with, or None."""
        return self._ring
