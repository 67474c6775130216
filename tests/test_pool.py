"""zcn.BufferPool through Python: acquire/release, zero-copy views, stats,
exhaustion, double and foreign releases, bad input for every public method,
lifetime (close, __del__, views that outlive the pool), threads, io_uring
registration (incl. a provoked RLIMIT_MEMLOCK failure) and a leak check.
Every test is bounded by pytest-timeout's default from pyproject.toml."""
from __future__ import annotations

import ctypes
import dataclasses
import errno
import gc
import os
import subprocess
import sys
import textwrap
import threading

import pytest

import zcn
from zcn.pool import BYTES_MAX, COUNT_MAX, PAGE_SIZE

from conftest import doc_blocks, require_io_uring


@pytest.fixture
def pool():
    with zcn.BufferPool(buffer_size=4096, count=8) as p:
        yield p


def _stats_tuple(p):
    s = p.stats()
    return (s.total, s.in_use, s.free, s.allocated, s.freed, s.failed)


# --- basics -----------------------------------------------------------------

def test_defaults():
    with zcn.BufferPool() as p:
        assert (p.buffer_size, p.count) == (4096, 1024)
        assert p.stats() == zcn.PoolStats(total=1024, in_use=0, free=1024, allocated=0,
                                           freed=0, failed=0, buffer_size=4096)


def test_acquire_gives_a_zero_copy_writable_view(pool):
    buf = pool.acquire()
    assert isinstance(buf, zcn.Buffer)
    assert buf.index == 0  # a fresh pool hands out buffer 0 first
    assert len(buf) == 4096 and len(buf.view) == 4096
    assert not buf.view.readonly
    assert buf.address % PAGE_SIZE == 0
    buf.view[:5] = b"hello"
    buf.view[-1] = 0x7F
    # The view is the C memory itself: read it back through the address.
    assert ctypes.string_at(buf.address, 5) == b"hello"
    assert ctypes.string_at(buf.address + 4095, 1) == b"\x7f"
    ctypes.memmove(buf.address + 10, b"from C", 6)
    assert bytes(buf.view[10:16]) == b"from C"
    assert "index=0" in repr(buf) and bool(buf)
    pool.release(buf)


def test_buffers_are_distinct_and_page_aligned(pool):
    bufs = [pool.acquire() for _ in range(8)]
    assert sorted(b.index for b in bufs) == list(range(8))
    addresses = [b.address for b in bufs]
    assert len(set(addresses)) == 8
    assert all(a % PAGE_SIZE == 0 for a in addresses)
    base = min(addresses)
    assert sorted(a - base for a in addresses) == [i * 4096 for i in range(8)]
    for i, b in enumerate(bufs):
        b.view[:] = bytes([i]) * 4096
    for i, b in enumerate(bufs):
        assert bytes(b.view) == bytes([i]) * 4096
        b.release()


def test_release_and_stats(pool):
    a, b = pool.acquire(), pool.acquire()
    assert _stats_tuple(pool) == (8, 2, 6, 2, 0, 0)
    pool.release(a)
    b.release()
    assert _stats_tuple(pool) == (8, 0, 8, 2, 2, 0)
    s = pool.stats()
    assert s.buffer_size == 4096
    assert [f.name for f in dataclasses.fields(s)] == [
        "total", "in_use", "free", "allocated", "freed", "failed", "buffer_size"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.in_use = 3


def test_exhaustion_returns_none_and_counts(pool):
    bufs = [pool.acquire() for _ in range(8)]
    assert all(b is not None for b in bufs)
    assert pool.acquire() is None
    assert pool.acquire() is None
    assert _stats_tuple(pool) == (8, 8, 0, 8, 0, 2)
    bufs[3].release()
    again = pool.acquire()
    assert again is not None and again.index == bufs[3].index
    for b in bufs[:3] + bufs[4:] + [again]:
        b.release()
    assert _stats_tuple(pool) == (8, 0, 8, 9, 9, 2)


@pytest.mark.parametrize("size,rounded", [(1, 4096), (4095, 4096), (4096, 4096),
                                          (4097, 8192), (12288, 12288), (65537, 69632)])
def test_buffer_size_rounds_up_to_pages(size, rounded):
    with zcn.BufferPool(buffer_size=size, count=3) as p:
        assert p.buffer_size == rounded
        assert p.stats().buffer_size == rounded
        bufs = [p.acquire() for _ in range(3)]
        assert all(len(b.view) == rounded and b.address % PAGE_SIZE == 0 for b in bufs)
        for b in bufs:
            b.release()


# --- misuse -----------------------------------------------------------------

def test_use_after_release_raises(pool):
    buf = pool.acquire()
    view = buf.view
    buf.release()
    assert buf.released
    with pytest.raises(zcn.ClosedError):
        buf.view
    with pytest.raises(zcn.ClosedError):
        buf.address
    with pytest.raises(zcn.ClosedError):
        len(buf)
    assert buf.index == 0  # still readable, for logs
    with pytest.raises(ValueError):  # the handed-out memoryview was released
        view[0]
    assert "released" in repr(buf)


def test_double_release(pool):
    buf = pool.acquire()
    pool.release(buf)
    before = _stats_tuple(pool)
    with pytest.raises(zcn.DoubleFreeError):
        pool.release(buf)
    with pytest.raises(zcn.DoubleFreeError):
        buf.release()
    assert _stats_tuple(pool) == before


def test_stale_buffer_cannot_free_the_new_owners_buffer(pool):
    old = pool.acquire()
    old.release()
    new = pool.acquire()
    assert new.index == old.index  # same C buffer, new owner
    with pytest.raises(zcn.DoubleFreeError):
        old.release()
    new.view[0] = 1  # still the new owner's
    assert pool.stats().in_use == 1
    new.release()


def test_foreign_buffer(pool):
    with zcn.BufferPool(4096, 2) as other:
        theirs = other.acquire()
        before = _stats_tuple(pool)
        with pytest.raises(zcn.ForeignPointerError):
            pool.release(theirs)
        assert isinstance(zcn.ForeignPointerError("x"), ValueError)
        assert _stats_tuple(pool) == before
        theirs.view[0] = 1  # untouched, still usable
        other.release(theirs)


@pytest.mark.parametrize("bad", [None, 0, b"x" * 4096, memoryview(bytearray(4096)), "buf"])
def test_release_wrong_type(pool, bad):
    with pytest.raises(TypeError):
        pool.release(bad)


def test_derived_views_are_not_covered_but_stay_safe(pool):
    # Documented: release() invalidates buf.view only. A slice or
    # memoryview(buf.view) made earlier keeps working (and may then see the
    # next owner's data), but it can never point into unmapped memory.
    buf = pool.acquire()
    derived = memoryview(buf.view)[:8]
    buf.release()
    derived[:3] = b"abc"
    pool.close()
    assert bytes(derived[:3]) == b"abc"
    derived.release()


@pytest.mark.parametrize("kwargs,exc", [
    ({"buffer_size": 0}, ValueError),
    ({"buffer_size": -1}, ValueError),
    ({"buffer_size": BYTES_MAX + 1}, ValueError),
    ({"buffer_size": 2 ** 64}, ValueError),
    ({"count": 0}, ValueError),
    ({"count": -5}, ValueError),
    ({"count": COUNT_MAX + 1}, ValueError),
    ({"buffer_size": 2 ** 30, "count": 1025}, ValueError),  # slab over BYTES_MAX
    ({"buffer_size": 4096.0}, TypeError),
    ({"buffer_size": "4096"}, TypeError),
    ({"buffer_size": None}, TypeError),
    ({"buffer_size": True}, TypeError),
    ({"count": 1.5}, TypeError),
    ({"count": None}, TypeError),
    ({"count": False}, TypeError),
    ({"count": [8]}, TypeError),
])
def test_bad_constructor_arguments(kwargs, exc):
    with pytest.raises(exc):
        zcn.BufferPool(**kwargs)


def test_index_like_arguments_are_accepted():
    class Eight:
        def __index__(self):
            return 8

    with zcn.BufferPool(buffer_size=Eight(), count=Eight()) as p:
        assert (p.buffer_size, p.count) == (4096, 8)


# --- lifetime ---------------------------------------------------------------

def test_close_is_idempotent_and_everything_after_raises():
    p = zcn.BufferPool(4096, 4)
    buf = p.acquire()
    view = buf.view
    p.close()
    p.close()
    assert p.closed and "closed" in repr(p)
    for call in (p.acquire, p.stats, p.unregister, lambda: p.release(buf), buf.release,
                 lambda: p.__enter__()):
        with pytest.raises(zcn.ClosedError):
            call()
    with pytest.raises(zcn.ClosedError):
        buf.view
    with pytest.raises(ValueError):
        view[0]
    assert (p.buffer_size, p.count) == (4096, 4)  # plain facts stay readable


def test_context_manager_closes():
    with zcn.BufferPool(4096, 2) as p:
        assert not p.closed
    assert p.closed


def test_memory_outlives_pool_while_user_holds_a_slice():
    p = zcn.BufferPool(4096, 2)
    buf = p.acquire()
    buf.view[:4] = b"keep"
    part = buf.view[:4]  # a sub-slice: documented as not covered by release
    p.close()
    gc.collect()
    # The mapping is still there: reading the slice is safe, never a crash.
    assert bytes(part) == b"keep"
    part.release()


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_del_is_safe_without_close():
    p = zcn.BufferPool(4096, 2)
    p.acquire().view[0] = 1
    del p
    gc.collect()
    with pytest.raises(TypeError):
        zcn.BufferPool(count=None)  # __del__ of a half-built object is quiet
    gc.collect()


# --- threads ----------------------------------------------------------------

def test_threads_share_a_pool():
    threads_n, ops = 4, 1500
    errors = []
    with zcn.BufferPool(4096, 6) as p:
        def work(tid):
            try:
                pattern = bytes([tid + 1]) * 64
                for _ in range(ops):
                    buf = p.acquire()
                    if buf is None:
                        continue
                    buf.view[:64] = pattern
                    buf.view[-64:] = pattern
                    if bytes(buf.view[:64]) != pattern or bytes(buf.view[-64:]) != pattern:
                        errors.append("pattern overwritten: a buffer was shared")
                    buf.release()
            except Exception as exc:  # surfaced below, not lost in the thread
                errors.append(repr(exc))

        ts = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert errors == []
        s = p.stats()
        assert s.in_use == 0 and s.allocated == s.freed
        assert s.allocated + s.failed == threads_n * ops


# --- io_uring registration --------------------------------------------------

def test_register_unregister(uring_ring):
    with zcn.BufferPool(4096, 16) as p:
        assert p.registered_ring is None
        p.register(uring_ring)
        assert p.registered_ring is uring_ring
        with pytest.raises(OSError) as info:
            p.register(uring_ring)  # the ring already has fixed buffers
        assert info.value.errno == errno.EBUSY
        buf = p.acquire()  # registration does not change acquire/release
        buf.release()
        p.unregister()
        assert p.registered_ring is None
        with pytest.raises(ValueError):
            p.unregister()
    # close() unregisters: the ring takes another pool's buffers now.
    with zcn.BufferPool(4096, 4) as p:
        p.register(uring_ring)
    with zcn.BufferPool(4096, 4) as q:
        q.register(uring_ring)
        q.unregister()


def test_register_bad_input(uring_ring):
    with zcn.BufferPool(4096, 4) as p:
        for bad in (None, 1, "ring", p):
            with pytest.raises(TypeError):
                p.register(bad)
        closed = zcn.Ring(8)
        closed.close()
        with pytest.raises(zcn.ClosedError):
            p.register(closed)
    with zcn.BufferPool(4096, 16385) as big:
        with pytest.raises(zcn.InvalidArgumentError, match="16384"):
            big.register(uring_ring)


def test_register_after_ring_closed():
    require_io_uring()
    with zcn.BufferPool(4096, 4) as p:
        r1 = zcn.Ring(8)
        p.register(r1)
        r1.close()  # takes the fixed buffers with it
        with pytest.raises(zcn.ClosedError):
            p.unregister()
        with zcn.Ring(8) as r2:
            p.register(r2)
            p.unregister()


_MEMLOCK_CHILD = textwrap.dedent("""
    import ctypes, resource, sys
    import zcn

    # Root has CAP_IPC_LOCK, which exempts it from RLIMIT_MEMLOCK: drop it.
    class Hdr(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]
    libc = ctypes.CDLL(None, use_errno=True)
    SYS_capget, SYS_capset, CAP_IPC_LOCK = 125, 126, 14  # x86_64
    hdr, data = Hdr(0x20080522, 0), (Data * 2)()
    if libc.syscall(SYS_capget, ctypes.byref(hdr), data) != 0:
        print("SKIP capget failed"); sys.exit(0)
    data[0].effective &= ~(1 << CAP_IPC_LOCK)
    data[0].permitted &= ~(1 << CAP_IPC_LOCK)
    if libc.syscall(SYS_capset, ctypes.byref(hdr), data) != 0:
        print("SKIP capset failed"); sys.exit(0)
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (65536, 65536))
    with zcn.Ring(8) as ring, zcn.BufferPool(4096, 256) as pool:
        try:
            pool.register(ring)
        except zcn.MemlockError as exc:
            print("MEMLOCK", exc)
        else:
            print("SKIP registering 1 MiB under a 64 KiB limit succeeded")
""")


def test_register_memlock_error():
    require_io_uring()
    import platform
    if platform.machine() != "x86_64":
        pytest.skip("the capset syscall numbers in the child are x86_64's")
    out = subprocess.run([sys.executable, "-c", _MEMLOCK_CHILD], capture_output=True,
                         text=True, timeout=60, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    if out.stdout.startswith("SKIP"):
        pytest.skip(out.stdout.strip())
    assert out.stdout.startswith("MEMLOCK"), out.stdout
    assert "RLIMIT_MEMLOCK is 65536 bytes" in out.stdout
    assert "1048576 bytes needed" in out.stdout
    assert issubclass(zcn.MemlockError, zcn.IoUringUnavailableError)


# --- leaks ------------------------------------------------------------------

def test_no_fd_or_rss_leak_over_many_pools():
    psutil = pytest.importorskip("psutil")
    proc = psutil.Process()

    def cycle(n):
        for _ in range(n):
            with zcn.BufferPool(4096, 64) as p:
                bufs = [p.acquire() for _ in range(4)]
                bufs[0].view[:] = b"x" * 4096
                held = bufs[1].view[:16]  # a slice the user keeps past close
                bufs[2].release()
                p.stats()
            del held, bufs
        gc.collect()

    def mappings():
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)

    cycle(200)  # warm-up: allocator arenas, caches, lazy imports
    fds, rss, maps = proc.num_fds(), proc.memory_info().rss, mappings()
    cycle(2000)
    assert proc.num_fds() <= fds
    assert mappings() <= maps + 8  # every slab and metadata mmap was unmapped
    grown = proc.memory_info().rss - rss
    assert grown < 4 * 1024 * 1024, f"RSS grew by {grown} bytes over 2000 pools"


# --- docs/POOL.md examples stay true -------------------------------------------

_DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    "docs", "POOL.md")


def _doc_blocks(lang):
    return doc_blocks("POOL.md", lang)


def test_doc_python_examples_run():
    blocks = _doc_blocks("python")
    assert len(blocks) == 2
    require_io_uring()  # the second example uses a Ring
    for code in blocks:
        exec(compile(code, _DOC, "exec"), {})


def test_doc_c_example_builds_and_runs(tmp_path):
    import shutil
    lib = zcn._ffi.lib._name  # the library this run loaded (installed or ZCN_LIBRARY)
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("needs a C compiler (cc or gcc)")
    (code,) = _doc_blocks("c")
    src = tmp_path / "example.c"
    src.write_text(code)
    include = os.path.join(os.path.dirname(_DOC), "..", "include")
    libdir = os.path.dirname(os.path.abspath(lib))
    exe = tmp_path / "example"
    subprocess.run([cc, str(src), "-I", include, "-L", libdir, "-lzero_copy_net",
                    f"-Wl,-rpath,{libdir}", "-o", str(exe)], check=True, timeout=60)
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=30, check=True)
    assert "buffer 0 of 4096 bytes" in out.stdout
    assert "second release: ZCN_ERR_DOUBLE_FREE" in out.stdout
    assert "total=1024 in_use=0 allocated=1 freed=1 failed=0" in out.stdout


def test_thread_cache_default_and_off():
    with zcn.BufferPool(4096, 1024) as pool:
        cs = pool.cache_stats()
        assert cs.thread_cache == 64 and cs.caches_max == 64
    with zcn.BufferPool(4096, 8, thread_cache=0) as pool:
        pool.release(pool.acquire())
        assert pool.cache_stats() == zcn.PoolCacheStats(0, 0, 0, 0, 0)
    for bad in (-1, zcn.pool.THREAD_CACHE_MAX + 1):
        with pytest.raises(ValueError):
            zcn.BufferPool(4096, 8, thread_cache=bad)
    with pytest.raises(TypeError):
        zcn.BufferPool(4096, 8, thread_cache=1.5)


def test_thread_cache_returned_at_thread_exit_and_stolen_while_idle():
    import threading

    with zcn.BufferPool(4096, 8, thread_cache=8) as pool:
        mine = [pool.acquire() for _ in range(8)]
        cached, leave = threading.Event(), threading.Event()

        def releaser():
            for buf in mine:  # acquired on the main thread, released here
                pool.release(buf)
            cached.set()
            leave.wait(30)

        t = threading.Thread(target=releaser)
        t.start()
        try:
            assert cached.wait(30)
            cs = pool.cache_stats()
            assert (cs.cached, cs.caches_in_use) == (8, 1)
            s = pool.stats()
            assert (s.in_use, s.free) == (0, 8)
            # All 8 sit in an idle live thread's cache: still handed out.
            again = [pool.acquire() for _ in range(8)]
            assert None not in again and pool.acquire() is None
            assert pool.cache_stats().steals == 8
            for buf in again:
                pool.release(buf)
        finally:
            leave.set()
            t.join(30)
        cs = pool.cache_stats()
        assert cs.caches_in_use == 1 and cs.cached == 8  # this thread's own now
        pool.flush()
        assert pool.cache_stats().cached == 0
        assert pool.stats().free == 8
