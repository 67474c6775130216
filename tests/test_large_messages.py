"""Large messages through the echo server: receive bundles on and off.

A multishot receive with IORING_RECVSEND_BUNDLE (Linux 6.10; emulated by
the epoll backend) hands the loop one completion for several buffers,
taken in ring order (docs/BUFFERS.md, "Receive bundles"). These tests send
4 MiB of patterned data through several connections at once, in writes of
16 KiB, 64 KiB and odd sizes, check every byte of the echo, and check that
the buffer accounting adds up afterwards (every buffer back in the ring or
the pool). ZCN_NO_BUNDLE=1 forces the one-buffer-per-completion path, so
both paths run on a kernel that has bundles, on both backends.
"""
from __future__ import annotations

import array
import threading

import pytest

from _peers import connect, recv_exact
from conftest import io_uring_unavailable_reason

pytest.importorskip("psutil")  # the server fixture measures the server with it

STREAM_BYTES = 4 << 20
CONNS = 4
#: Write sizes, cycled: whole buffers, four buffers, and sizes that cut
#: buffers anywhere.
WRITES = (16384, 65536, 1000, 70001, 16385, 131072, 4095)
BUFFER_SIZE = 16384


def stream(n, seed):
    """n bytes in which every 8-byte word differs (its index, xor seed), so
    a dropped, duplicated or reordered buffer anywhere changes the bytes."""
    words = array.array("Q", range(seed << 32, (seed << 32) + n // 8 + 1))
    return words.tobytes()[:n]


def echo_stream(port, data, errors):
    try:
        with connect(port, timeout=30) as sock:
            def writer():
                try:
                    off, k = 0, 0
                    while off < len(data):
                        n = WRITES[k % len(WRITES)]
                        sock.sendall(data[off:off + n])
                        off += n
                        k += 1
                except OSError as exc:  # pragma: no cover - reported below
                    errors.append(exc)

            t = threading.Thread(target=writer)
            t.start()
            back = recv_exact(sock, len(data))
            t.join()
            if back != data:
                bad = next((i for i, (a, b) in enumerate(zip(back, data)) if a != b), len(back))
                errors.append(AssertionError(f"echo differs at byte {bad} of {len(data)}"
                                             f" (got {len(back)} bytes)"))
    except Exception as exc:  # pragma: no cover - reported below
        errors.append(exc)


BACKENDS = ["io_uring", "epoll"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("handler", ["c", "python"])
@pytest.mark.parametrize("bundles", ["on", "off"])
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_large_echo_integrity(server, monkeypatch, backend_name, bundles, handler):
    if backend_name == "io_uring":
        reason = io_uring_unavailable_reason()
        if reason:
            pytest.skip(f"io_uring unavailable: {reason}")
    monkeypatch.setenv("ZCN_BACKEND", backend_name)
    if bundles == "off":
        monkeypatch.setenv("ZCN_NO_BUNDLE", "1")
    else:
        monkeypatch.delenv("ZCN_NO_BUNDLE", raising=False)
    srv = server(handler=handler, buffer_size=BUFFER_SIZE, buffer_pool_size=1024)
    errors = []
    datas = [stream(STREAM_BYTES, seed=i + 1) for i in range(CONNS)]
    threads = [threading.Thread(target=echo_stream, args=(srv.port, d, errors)) for d in datas]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=100)
    assert not any(t.is_alive() for t in threads), "an echo did not finish"
    if errors:
        nonzero = {k: v for k, v in srv.stats().items() if v}
        pytest.fail(f"{errors[:3]}; server stats: {nonzero}")

    st = srv.wait_stats(lambda s: s["connections_active"] == 0 and s["buffers_in_use"] == 0)
    total = STREAM_BYTES * CONNS
    assert st["bytes_received"] == total
    assert st["bytes_sent"] == total
    # No buffer leaked: each is back in the receive ring or the free pool.
    assert st["buffers_in_use"] == 0, st
    assert st["buffers_total"] == 1024
    assert st["hard_limit_aborts"] == 0 and st["evictions"] == 0
    # recv_ops counts completions: one buffer each without bundles; with
    # them, 16 MiB streamed as fast as loopback goes fills several buffers
    # per read many times over.
    whole_buffers = total // BUFFER_SIZE
    if bundles == "off":
        assert st["recv_ops"] >= whole_buffers, st
    else:
        assert st["recv_ops"] < whole_buffers, st
