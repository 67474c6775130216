"""Micro-benchmark of the Python layer, per call (run: python bench/micro.py).

    BufferPool.acquire()+release() through the Python class  vs  bytearray(4096)
    Ring.nop() batch 1 and batch 32 through the Python class  vs  the bare
        ctypes binding zcn._ffi.zcn_ring_nop (so the ratio is the class's cost)

Rounds are interleaved (zcn, baseline, baseline, zcn, ...); the table gives the
median with min and max. Uses the library in ZCN_LIBRARY if set.

usage: python bench/micro.py [rounds (default 7)] [scale (default 1.0)]
"""
from __future__ import annotations

import gc
import os
import statistics
import sys
import time

try:
    import zcn
except ModuleNotFoundError as exc:  # not installed: use the source tree
    if exc.name != "zcn":
        raise
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import zcn
from zcn import _ffi  # noqa: E402

POOL_PAIRS = 200_000
NOP_SINGLE_CALLS = 50_000
NOP_BATCHED_CALLS = 20_000
BATCH = 32


def timed(fn, n):
    """ns per call of fn(n) (fn runs n operations)."""
    start = time.perf_counter_ns()
    fn(n)
    return (time.perf_counter_ns() - start) / n


def compare(name, base_name, zcn_fn, base_fn, n, rounds, per=1):
    a, b = [], []
    zcn_fn(n // 10 + 1)
    base_fn(n // 10 + 1)
    gc.disable()  # a collection inside one side's round is noise, not cost
    try:
        for r in range(rounds):
            order = ((zcn_fn, a), (base_fn, b)) if r % 2 == 0 else ((base_fn, b), (zcn_fn, a))
            for fn, out in order:
                out.append(timed(fn, n) / per)
    finally:
        gc.enable()
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"{name:<34} {ma:9.1f} [{min(a):8.1f} ..{max(a):8.1f}]  {base_name:<24} "
          f"{mb:9.1f} [{min(b):8.1f} ..{max(b):8.1f}]  {ma / mb:5.2f}x", flush=True)


def bench_pool(rounds, scale):
    pool = zcn.BufferPool(4096, 1024)
    acquire, release = pool.acquire, pool.release

    def pool_pairs(n):
        for _ in range(n):
            release(acquire())

    def bytearray_pairs(n):
        for _ in range(n):
            bytearray(4096)

    compare("BufferPool.acquire+release", "bytearray(4096)", pool_pairs, bytearray_pairs,
            max(1, int(POOL_PAIRS * scale)), rounds)
    close = getattr(pool, "close", None)
    if close is not None:
        close()


def bench_ring(rounds, scale):
    with zcn.Ring(256) as ring:
        handle = ring._handle
        raw = _ffi.zcn_ring_nop

        def nop_single(n):
            nop = ring.nop
            for _ in range(n):
                nop()

        def raw_single(n):
            for _ in range(n):
                raw(handle, 1, 1)

        def nop_batched(n):
            nop = ring.nop
            for _ in range(n):
                nop(BATCH, BATCH)

        def raw_batched(n):
            for _ in range(n):
                raw(handle, BATCH, BATCH)

        compare("Ring.nop(), batch 1 (per call)", "ctypes zcn_ring_nop", nop_single,
                raw_single, max(1, int(NOP_SINGLE_CALLS * scale)), rounds)
        calls = max(1, int(NOP_BATCHED_CALLS * scale))
        compare(f"Ring.nop({BATCH}, batch={BATCH}) per call", "ctypes zcn_ring_nop",
                nop_batched, raw_batched, calls, rounds)
        compare(f"Ring.nop({BATCH}, batch={BATCH}) per NOP", "ctypes zcn_ring_nop",
                nop_batched, raw_batched, calls, rounds, per=BATCH)


def main(argv):
    if len(argv) > 1 and argv[1] in ("-h", "--help"):
        print(__doc__)
        return 0
    rounds = int(argv[1]) if len(argv) > 1 else 7
    scale = float(argv[2]) if len(argv) > 2 else 1.0
    print(f"zcn micro-benchmark (Python {sys.version.split()[0]}): ns per operation, "
          f"median [min .. max] of {rounds} interleaved rounds, {os.cpu_count()} CPUs")
    print(f"{'operation':<34} {'zcn ns':<29}  {'baseline':<24} {'baseline ns':<29}  ratio")
    bench_pool(rounds, scale)
    try:
        zcn.Ring(8).close()
    except zcn.IoUringUnavailableError as exc:
        print(f"ring: skipped, io_uring unavailable: {exc}")
        return 0
    bench_ring(rounds, scale)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
