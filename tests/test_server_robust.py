"""The TCP server under load and abuse, with real sockets on 127.0.0.1.

The server runs in its own process (tests/_server_proc.py: zcn.TcpServer, or
the raw bindings before that class exists) and the clients run here, so each
side has its own RLIMIT_NOFILE and the server's fds, memory and CPU time can
be measured with psutil without the clients' share in them.
"""
from __future__ import annotations

import selectors
import shutil
import socket
import subprocess
import time

import pytest

from _peers import connect, echo_roundtrip, pattern, recv_exact, reset

pytest.importorskip("psutil")  # the server fixture measures the server with it

HANDLERS = ["c", "python"]


# --------------------------------------------------------------------------
# integrity
# --------------------------------------------------------------------------

SIZES = [1, 100, 4095, 4096, 16383, 16384, 16385, 100_000, 1 << 20, 4 << 20]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("handler", HANDLERS)
def test_echo_integrity_1b_to_4mib(server, handler):
    srv = server(handler=handler)
    for i, n in enumerate(SIZES):
        with connect(srv.port) as c:
            payload = pattern(n, seed=i)
            back = echo_roundtrip(c, payload)
            assert len(back) == n
            assert back == payload, f"echo of {n} bytes differs"
    st = srv.wait_stats(lambda s: s["connections_active"] == 0)
    total = sum(SIZES)
    assert st["bytes_received"] == total
    assert st["bytes_sent"] == total
    assert st["connections_closed"] == len(SIZES)
    assert st["buffers_in_use"] == 0


@pytest.mark.timeout(60)
def test_1000_concurrent_connections(server):
    n = 1000
    srv = server(handler="c", backlog=1024)
    socks = [connect(srv.port) for _ in range(n)]
    try:
        st = srv.wait_stats(lambda s: s["connections_active"] == n)
        assert st["connections_active"] == n
        msgs = [b"conn-%05d:" % i + pattern(200, seed=i) for i in range(n)]
        for s, m in zip(socks, msgs):
            s.sendall(m)
        sel = selectors.DefaultSelector()
        got = {}
        for i, s in enumerate(socks):
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, i)
            got[i] = b""
        pending = n
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1):
                i = key.data
                data = key.fileobj.recv(65536)
                assert data, f"connection {i} closed early"
                got[i] += data
                if len(got[i]) >= len(msgs[i]):
                    sel.unregister(key.fileobj)
                    pending -= 1
        sel.close()
        assert pending == 0
        for i in range(n):
            assert got[i] == msgs[i]
    finally:
        for s in socks:
            s.close()
    st = srv.wait_stats(lambda s: s["connections_active"] == 0)
    assert st["connections_closed"] == n
    assert st["connections_rejected"] == 0


@pytest.mark.timeout(60)
def test_small_messages_from_200_connections_never_find_the_ring_empty(server):
    """200 connections x 64 B, all at once, 20 times over: each holds one
    buffer at a time, and the receive ring holds 32 + 2 per connection, so
    no receive may find it empty. On epoll it was capped at the bundle
    bound (~97 buffers with the defaults) though a receive there never
    takes more than 4 buffers per report: three receives in four ended
    with ENOBUFS and were re-armed.

    The server is stopped while each round is sent, so all 200 messages
    wait in their sockets when it next runs. On io_uring with receive
    bundles the ring is held to the bundle bound (97 buffers; one kernel
    pass of a bundle may take the whole ring: docs/BUFFERS.md, "Receive
    bundles"), yet this holds there too: the kernel runs a deferred-taskrun
    ring's receives at most 20 per io_uring_enter (IO_LOCAL_TW_DEFAULT_MAX,
    Linux 6.13), and the loop refills the ring between enters."""
    from conftest import backend

    n, rounds = 200, 20
    srv = server(handler="c", backlog=1024)
    socks = [connect(srv.port) for _ in range(n)]
    try:
        srv.wait_stats(lambda s: s["connections_active"] == n)
        for r in range(rounds):
            msgs = [b"%03d:%05d:" % (r, i) + pattern(54, seed=i + r) for i in range(n)]
            srv.proc.suspend()
            try:
                for s, m in zip(socks, msgs):
                    s.sendall(m)
            finally:
                srv.proc.resume()
            for i, (s, m) in enumerate(zip(socks, msgs)):
                assert recv_exact(s, len(m)) == m, f"connection {i}, round {r}"
    finally:
        for s in socks:
            s.close()
    st = srv.wait_stats(lambda s: s["connections_active"] == 0)
    assert st["buffers_in_use"] == 0
    assert st["bytes_received"] == st["bytes_sent"] == n * rounds * 64
    assert st["aborts"] == st["hard_limit_aborts"] == 0
    assert st["buffer_exhaustion_events"] == 0, backend()


@pytest.mark.timeout(120)
def test_connect_close_churn_keeps_fds_and_memory_flat(server):
    srv = server(handler="c")

    def churn(count, with_data):
        for i in range(count):
            with connect(srv.port) as c:
                if with_data and i % 5 == 0:
                    c.sendall(b"ping")
                    assert recv_exact(c, 4) == b"ping"

    def settle(total):
        # every connect accepted (some may still sit in the backlog when the
        # client has already closed them) and every one closed again
        return srv.wait_stats(lambda s: s["connections_accepted"] == total
                              and s["connections_closed"] == total)

    churn(500, True)  # warm-up: the allocator and kernel caches settle
    settle(500)
    fds0, rss0 = srv.proc.num_fds(), srv.proc.memory_info().rss
    churn(5000, True)
    st = settle(5500)
    fds1, rss1 = srv.proc.num_fds(), srv.proc.memory_info().rss
    assert st["connections_active"] == 0
    assert st["connections_accepted"] == 5500
    assert st["connections_closed"] == 5500
    assert fds1 <= fds0 + 2, (fds0, fds1)
    assert rss1 - rss0 < 4 << 20, (rss0, rss1)
    assert st["buffers_in_use"] == 0


# --------------------------------------------------------------------------
# peers that misbehave
# --------------------------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("handler", HANDLERS)
def test_peer_reset_mid_transfer(server, handler):
    """A client that sends a lot, reads nothing, then resets: the echo is
    mid-send (server send queue full) and its recv is armed when the RST
    lands. Every such connection must still be closed and counted."""
    srv = server(handler=handler)
    rounds = 40
    payload = pattern(1 << 20)
    for i in range(rounds):
        c = connect(srv.port)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.settimeout(0.5)
        sent = 0
        try:
            while sent < 8 << 20:
                sent += c.send(payload)
        except (socket.timeout, BlockingIOError):
            pass  # the server stopped reading: its queue is full
        if i % 2:
            try:
                c.recv(100)  # some rounds have the server's send half done
            except socket.timeout:
                pass  # a loaded machine: no echo yet; the reset still lands mid-stream
        reset(c)
    # Poll mode returns the last batch's lent buffers at the next poll, so
    # wait for both rather than read buffers_in_use in the same instant.
    st = srv.wait_stats(lambda s: s["connections_active"] == 0 and s["buffers_in_use"] == 0,
                        timeout=15)
    assert st["connections_active"] == 0, st
    assert st["connections_accepted"] == rounds, st
    assert st["connections_closed"] == rounds, st
    assert st["buffers_in_use"] == 0, st
    with connect(srv.port) as c:  # still healthy
        assert echo_roundtrip(c, b"still alive") == b"still alive"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("handler", HANDLERS)
def test_half_close_gets_full_echo_then_eof(server, handler):
    srv = server(handler=handler)
    for n in (1, 5000, 300_000):
        with connect(srv.port) as c:
            payload = pattern(n, seed=n)
            c.sendall(payload)
            c.shutdown(socket.SHUT_WR)
            back = recv_exact(c, n + 1)  # asks for one more: must hit EOF
            assert back == payload
            assert c.recv(10) == b""
    st = srv.wait_stats(lambda s: s["connections_active"] == 0)
    assert st["connections_closed"] == 3


@pytest.mark.timeout(60)
@pytest.mark.parametrize("handler", HANDLERS)
def test_stalled_reader_bounded_and_others_unaffected(server, handler):
    """One client floods and never reads: the server's memory stays bounded
    (send queue limit + deferred delivery) and other clients still echo."""
    srv = server(handler=handler)
    other = connect(srv.port)
    assert echo_roundtrip(other, b"warm") == b"warm"
    rss0 = srv.proc.memory_info().rss
    hog = connect(srv.port)
    hog.setblocking(False)
    chunk = pattern(1 << 16)
    sent = 0
    stuck_since = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and sent < 256 << 20:
        try:
            sent += hog.send(chunk)
            stuck_since = None
        except BlockingIOError:
            if stuck_since is None:
                stuck_since = time.monotonic()
            elif time.monotonic() - stuck_since > 1.0:
                break  # flow control reached the hog: the server stopped reading
            time.sleep(0.01)
    assert stuck_since is not None, "server read 256 MiB without echoing back?"
    rss1 = srv.proc.memory_info().rss
    assert rss1 - rss0 < 64 << 20, (rss0, rss1, sent)
    for i in range(20):  # the others are unaffected while the hog is stuck
        msg = pattern(10_000, seed=i)
        assert echo_roundtrip(other, msg) == msg
    with connect(srv.port) as fresh:
        assert echo_roundtrip(fresh, b"x" * 70_000) == b"x" * 70_000
    hog.close()
    other.close()
    st = srv.wait_stats(lambda s: s["connections_active"] == 0)
    assert st["buffers_in_use"] == 0, st


@pytest.mark.timeout(60)
@pytest.mark.parametrize("handler", HANDLERS)
def test_stalled_reader_with_small_writes_cannot_starve_buffers(server, handler):
    """A client that never reads and sends many small segments: each
    segment lands in its own pool buffer, so a byte-only queue limit would
    let this one connection hold every buffer (1 MiB of 64-byte echoes is
    16384 buffers) and every other connection's receive would stall on
    ENOBUFS. The queue limit must bound buffers too."""
    srv = server(handler=handler, buffer_pool_size=256, buffer_size=4096)
    other = connect(srv.port)
    assert echo_roundtrip(other, b"warm") == b"warm"
    hog = connect(srv.port)
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.setblocking(False)
    # fill the kernel buffers between the two ends with bulk data first
    bulk = b"B" * 65536
    stuck = 0
    while stuck < 20:
        try:
            hog.send(bulk)
            stuck = 0
        except BlockingIOError:
            stuck += 1
            time.sleep(0.01)
    # now small writes, slowly enough that each is received on its own
    small_sent = 0
    for i in range(3000):
        try:
            hog.send(b"%063d" % i)
            small_sent += 1
        except BlockingIOError:
            time.sleep(0.005)
        if i % 50 == 0:
            time.sleep(0.002)
    st = srv.stats()
    assert st["buffers_in_use"] < st["buffers_total"], st
    for i in range(10):
        msg = pattern(3000, seed=i)
        other.settimeout(5)
        assert echo_roundtrip(other, msg) == msg, st
    hog.close()
    other.close()
    st = srv.wait_stats(lambda s: s["connections_active"] == 0)
    assert st["buffers_in_use"] == 0, st


@pytest.mark.timeout(30)
def test_idle_timeout_closes_idle_not_active(server):
    srv = server(handler="c", idle_timeout=0.5)
    idle = connect(srv.port)
    active = connect(srv.port)
    t0 = time.monotonic()
    closed_at = None
    idle.settimeout(0.05)
    while time.monotonic() - t0 < 3.0:
        assert echo_roundtrip(active, b"tick") == b"tick"
        try:
            if idle.recv(10) == b"":
                closed_at = time.monotonic() - t0
                break
        except socket.timeout:
            pass
        except ConnectionResetError:
            closed_at = time.monotonic() - t0
            break
    assert closed_at is not None, "idle connection was not closed"
    assert 0.4 <= closed_at <= 1.5, closed_at
    for _ in range(10):  # the active one keeps working past the timeout
        assert echo_roundtrip(active, b"tock") == b"tock"
        time.sleep(0.1)
    st = srv.stats()
    assert st["idle_timeouts"] == 1
    assert st["connections_active"] == 1
    idle.close()
    active.close()


@pytest.mark.timeout(30)
def test_connections_max_rejects_then_recovers(server):
    limit = 8
    srv = server(handler="c", connections_max=limit)
    socks = [connect(srv.port) for _ in range(limit)]
    srv.wait_stats(lambda s: s["connections_active"] == limit)
    extra = connect(srv.port)
    extra.settimeout(5)
    try:
        data = extra.recv(10)
    except ConnectionResetError:
        data = b""
    assert data == b"", "connection over connections_max was not closed"
    extra.close()
    st = srv.stats()
    assert st["connections_rejected"] == 1
    assert st["connections_active"] == limit
    for s in socks:  # the admitted ones are unaffected
        assert echo_roundtrip(s, b"ok") == b"ok"
    socks.pop().close()
    srv.wait_stats(lambda s: s["connections_active"] == limit - 1)
    with connect(srv.port) as again:
        assert echo_roundtrip(again, b"in again") == b"in again"
    for s in socks:
        s.close()
    st = srv.wait_stats(lambda s: s["connections_active"] == 0)
    assert st["connections_rejected"] == 1


def _cpu(proc):
    t = proc.cpu_times()
    return t.user + t.system


@pytest.mark.timeout(60)
def test_accept_emfile_backs_off_and_recovers(server):
    """RLIMIT_NOFILE low in the server: accept fails with EMFILE. The loop
    must not spin on it (the pending connection stays in the backlog) and
    must accept again once fds are free."""
    srv = server(handler="c", nofile=64, connections_max=1000)
    socks = []
    for _ in range(200):  # far more than the server can hold
        try:
            socks.append(connect(srv.port, timeout=2))
        except OSError:
            break
    st = srv.wait_stats(lambda s: s["accept_backoffs"] > 0)
    assert st["accept_backoffs"] > 0, st
    held = st["connections_active"]
    assert 0 < held < 64
    time.sleep(0.3)
    cpu0 = _cpu(srv.proc)
    time.sleep(1.5)
    cpu1 = _cpu(srv.proc)
    assert cpu1 - cpu0 < 0.3, f"server burnt {cpu1 - cpu0:.2f}s CPU while out of fds"
    # the admitted connections still work
    assert echo_roundtrip(socks[0], b"hello") == b"hello"
    # free them all: the waiting ones in the backlog get accepted
    first = socks[:held]
    rest = socks[held:]
    for s in first:
        s.close()
    st = srv.wait_stats(lambda s: s["connections_accepted"] >= held + min(len(rest), held - 4),
                        timeout=10)
    assert st["connections_accepted"] > held, st
    for s in rest:
        s.close()
    srv.wait_stats(lambda s: s["connections_active"] == 0, timeout=10)
    with connect(srv.port) as c:
        assert echo_roundtrip(c, b"recovered") == b"recovered"


# --------------------------------------------------------------------------
# standard tools
# --------------------------------------------------------------------------

@pytest.mark.timeout(30)
@pytest.mark.parametrize("handler", HANDLERS)
@pytest.mark.parametrize("tool", ["nc", "socat"])
def test_tool_round_trip(server, handler, tool):
    exe = shutil.which(tool)
    if exe is None:
        pytest.skip(f"{tool} not installed")
    srv = server(handler=handler)
    payload = b"hello from " + tool.encode() + b"\n" + pattern(50_000)
    if tool == "nc":
        cmd = [exe, "-N", "127.0.0.1", str(srv.port)]
    else:
        cmd = [exe, "-t5", "-", f"TCP:127.0.0.1:{srv.port}"]
    out = subprocess.run(cmd, input=payload, capture_output=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout == payload
    st = srv.wait_stats(lambda s: s["connections_active"] == 0)
    assert st["connections_closed"] == 1


# --------------------------------------------------------------------------
# configuration errors at the server level
# --------------------------------------------------------------------------

def _create_raw(**fields):
    import ctypes
    from zcn import _ffi
    c = _ffi.Config()
    c.address = b"127.0.0.1"
    for k, v in fields.items():
        setattr(c, k, v)
    return _ffi.create(_ffi.zcn_server_create, ctypes.byref(c))


@pytest.mark.timeout(30)
def test_bad_configs_give_clear_errors(server):
    import zcn
    srv = server(handler="c")
    with pytest.raises(OSError) as ei:  # the port is taken by the other process
        _create_raw(port=srv.port)
    assert "EADDRINUSE" in str(ei.value) or "in use" in str(ei.value).lower()
    for fields, word in [({"address": b"localhost"}, "address"),
                         ({"buffer_pool_size": 1}, "buffer_pool_size"),
                         ({"connections_max": (1 << 20) + 1}, "connections_max"),
                         ({"io_uring_entries": 1 << 20}, "io_uring_entries"),
                         ({"flags": 0x40}, "flags")]:
        with pytest.raises(zcn.ZcnError) as ei:
            _create_raw(**fields)
        assert word in str(ei.value), (fields, str(ei.value))
