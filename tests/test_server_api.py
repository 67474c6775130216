"""zcn.TcpServer through Python: echo integrity through the Python handler,
callback order, zero-copy and copied sends, errors (closed fds, closed
server, bad configs), exceptions from callbacks, borrowed views, stop from a
thread and from a signal handler, threads, backpressure, handler="c", and
the code in docs/PYTHON_GUIDE.md. The C server's own robustness is tested in
test_server_robust.py and test_ffi/test_server.c."""
from __future__ import annotations

import array
import dataclasses
import errno
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

import zcn
from zcn.server import EVENTS_MAX

from conftest import doc_blocks, require_loop, run_python_block
from _tcp import (Background, connect, echo_server, recv_exact, recv_exact_running,
                  recv_until_eof, run_until, wait_stats)

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def _uring():
    require_loop()


# --- echo integrity --------------------------------------------------------------

@pytest.mark.parametrize("size", [1, 100, 4096, 16384, 16385, 65543, (1 << 20) + 3, 4 << 20])
def test_echo_integrity_python_handler(size):
    payload = os.urandom(size)
    with Background(echo_server()) as server:
        with connect(server) as sock:
            sender = threading.Thread(target=sock.sendall, args=(payload,))
            sender.start()  # read while writing: the echo comes back meanwhile
            echoed = recv_exact(sock, size)
            sender.join(10)
        stats = wait_stats(server, lambda st: st.bytes_sent >= size)
    if echoed != payload:
        pytest.fail(f"echo of {size} bytes differs (got {len(echoed)} bytes)")
    if stats.bytes_received != size or stats.bytes_sent != size:
        pytest.fail(f"counters: {stats}")
    # Copies only where a short tail segment waited behind a full buffer
    # (packed so a slow reader holds bytes, not buffers: docs/BUFFERS.md).
    if stats.sends_zero_copy == 0 or stats.sends_copied != stats.sends_coalesced:
        pytest.fail(f"echoing the received view should move buffers, not copy: {stats}")


def test_echo_many_connections_at_once():
    with Background(echo_server()) as server:
        socks = [connect(server) for _ in range(20)]
        try:
            for round_ in range(5):
                for i, sock in enumerate(socks):
                    sock.sendall(b"%d:%d;" % (i, round_))
                for i, sock in enumerate(socks):
                    want = b"%d:%d;" % (i, round_)
                    got = recv_exact(sock, len(want))
                    if got != want:
                        pytest.fail(f"connection {i} round {round_}: {got!r} != {want!r}")
        finally:
            for sock in socks:
                sock.close()


def test_half_closed_request_gets_its_reply():
    # The peer sends and shuts down its side at once (nc -N, HTTP/1.0):
    # the data and the EOF arrive in one batch, the reply must still go.
    with Background(echo_server()) as server:
        for i in range(50):
            with connect(server) as sock:
                sock.sendall(b"request %d" % i)
                sock.shutdown(socket.SHUT_WR)
                got = recv_until_eof(sock)
            if got != b"request %d" % i:
                pytest.fail(f"round {i}: reply {got!r}")


def test_localhost_name_is_resolved():
    with zcn.TcpServer("localhost", 0) as server:
        if server.host not in ("127.0.0.1", "::1"):
            pytest.fail(f"host {server.host!r}")
        if server.address != (server.host, server.port) or server.port == 0:
            pytest.fail(f"address {server.address}")


# --- callbacks -----------------------------------------------------------------

def test_callback_order_per_connection():
    log = []
    server = zcn.TcpServer(on_accept=lambda fd: log.append(("accept", fd)),
                           on_data=lambda fd, data: log.append(("data", fd, bytes(data))),
                           on_close=lambda fd: log.append(("close", fd)))
    with server:
        with connect(server) as sock:
            run_until(server, lambda: len(log) >= 1, what="accept")
            sock.sendall(b"one")
            run_until(server, lambda: len(log) >= 2, what="data")
        run_until(server, lambda: len(log) >= 3, what="close")
        fd = log[0][1]
        if log != [("accept", fd), ("data", fd, b"one"), ("close", fd)]:
            pytest.fail(f"order: {log}")
        if server.connections:
            pytest.fail(f"connections after close: {server.connections}")


def test_callbacks_are_settable_attributes():
    server = zcn.TcpServer()
    with server:
        seen = []
        server.on_accept = seen.append
        server.on_data = lambda fd, data: server.send(fd, data)
        with connect(server) as sock:
            run_until(server, lambda: seen, what="accept")
            sock.sendall(b"x")
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                server.run_once(timeout=0.02)
                sock.settimeout(0.01)
                try:
                    if sock.recv(1) == b"x":
                        break
                except socket.timeout:
                    pass
            else:
                pytest.fail("no echo after setting on_data")
        with pytest.raises(TypeError):
            server.on_data = 42
        with pytest.raises(TypeError):
            server.on_close = "not callable"


def test_on_data_gets_a_readonly_memoryview():
    seen = []

    def on_data(fd, data):
        seen.append((type(data), data.readonly, bytes(data), data.nbytes))

    with zcn.TcpServer(on_data=on_data) as server:
        with connect(server) as sock:
            sock.sendall(b"abc")
            run_until(server, lambda: seen, what="data")
    if seen[0] != (memoryview, True, b"abc", 3):
        pytest.fail(f"view: {seen}")


# --- sends ----------------------------------------------------------------------

def test_zero_copy_for_the_view_and_its_slices():
    def on_data(fd, data):
        server.send(fd, data[:2])   # a slice: still moved, not copied
        server.send(fd, data[2:])

    server = zcn.TcpServer(on_data=on_data)
    with server:
        with connect(server) as sock:
            sock.sendall(b"hello")
            run_until(server, lambda: server.stats().bytes_sent >= 5, what="echo")
            got = recv_exact(sock, 5)
        stats = server.stats()
    if got != b"hello":
        pytest.fail(f"got {got!r}")
    if stats.sends_zero_copy != 2 or stats.sends_copied != 0:
        pytest.fail(f"expected 2 zero-copy sends, got {stats}")


@pytest.mark.parametrize("make", [
    bytes, bytearray, lambda b: memoryview(bytearray(b)), lambda b: array.array("B", b),
    lambda b: memoryview(b), lambda b: memoryview(bytes(x for c in b for x in (c, 0)))[::2],
], ids=["bytes", "bytearray", "memoryview-bytearray", "array", "memoryview-bytes", "strided"])
def test_copy_path_for_other_buffers(make):
    def on_data(fd, data):
        reply = make(b"<" + bytes(data) + b">")
        server.send(fd, reply)

    server = zcn.TcpServer(on_data=on_data)
    with server:
        with connect(server) as sock:
            sock.sendall(b"abc")
            got = recv_exact_running(server, sock, 5)
        stats = server.stats()
    if got != b"<abc>":
        pytest.fail(f"got {got!r}")
    if stats.sends_copied != 1 or stats.sends_zero_copy != 0:
        pytest.fail(f"expected one copied send: {stats}")


def test_send_outside_callbacks_and_large_copies():
    accepted = []
    server = zcn.TcpServer(on_accept=accepted.append, buffer_size=4096)
    with server:
        with connect(server) as sock:
            run_until(server, lambda: accepted, what="accept")
            fd = accepted[0]
            blob = os.urandom(100_000)  # spans many 4 KiB pool buffers
            server.send(fd, blob)
            server.send(fd, b"")        # a no-op
            got = recv_exact_running(server, sock, len(blob))
    if got != blob:
        pytest.fail("large copied send differs")


def test_send_errors():
    accepted = []
    server = zcn.TcpServer(on_accept=accepted.append)
    with server:
        with pytest.raises(zcn.ClosedError):
            server.send(12345, b"x")          # never accepted
        with pytest.raises(zcn.ClosedError):
            server.send(-1, b"x")
        with pytest.raises(zcn.ClosedError):
            server.send(1 << 40, b"x")
        with pytest.raises(TypeError):
            server.send(True, b"x")           # a bool is not an fd
        with pytest.raises(TypeError):
            server.send(3.0, b"x")
        with connect(server) as sock:
            run_until(server, lambda: accepted, what="accept")
            fd = accepted[0]
            with pytest.raises(TypeError):
                server.send(fd, "text")       # str must be encoded
            with pytest.raises(TypeError):
                server.send(fd, 42)
            with pytest.raises(TypeError):
                server.send(fd, None)
            server.close(fd)
            with pytest.raises(zcn.ClosedError):
                server.send(fd, b"after close")
            with pytest.raises(zcn.ClosedError):
                server.close(fd)              # already closing
            sock.settimeout(5)
            if recv_until_eof_running(server, sock) != b"":
                pytest.fail("data after close")
        if server.queued_bytes(fd) != 0:
            pytest.fail("queued_bytes of a closed connection")
        with pytest.raises(zcn.ClosedError):
            server.send(fd, b"x")
        with pytest.raises(TypeError):
            server.close("3")
        if server.queued_bytes(99999) != 0:
            pytest.fail("queued_bytes of an unknown fd")


def recv_until_eof_running(server, sock, timeout=10.0):
    sock.setblocking(False)
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        if time.monotonic() > deadline:
            pytest.fail("no EOF")
        server.run_once(timeout=0.01)
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            continue
        if not chunk:
            return data
        data += chunk


def test_close_sends_queued_data_first():
    def on_data(fd, data):
        server.send(fd, b"bye:" + bytes(data))
        server.close(fd)

    server = zcn.TcpServer(on_data=on_data)
    closed = []
    server.on_close = closed.append
    with server:
        with connect(server) as sock:
            sock.sendall(b"x")
            got = recv_until_eof_running(server, sock)
        run_until(server, lambda: closed, what="on_close")
    if got != b"bye:x":
        pytest.fail(f"got {got!r}")


def test_backpressure_queue_full_and_drain():
    accepted, drained = [], []
    limit = 64 * 1024
    server = zcn.TcpServer(on_accept=accepted.append, on_drain=drained.append,
                           send_queue_max_bytes=limit, buffer_size=16384)
    chunk = os.urandom(16 * 1024)
    with server:
        sock = connect(server)  # and not reading yet: the socket buffers fill, then the queue
        run_until(server, lambda: accepted, what="accept")
        fd = accepted[0]
        sent = 0
        with pytest.raises(zcn.QueueFullError):
            for _ in range(1000):
                server.send(fd, chunk)
                sent += len(chunk)
                server.run_once(timeout=0)
        # All or nothing: the refused send queued nothing, and the queue
        # never goes over its limit.
        queued = server.queued_bytes(fd)
        if not limit - len(chunk) < queued <= limit:
            pytest.fail(f"queued {queued} after QueueFullError (limit {limit})")
        if server.stats().send_queue_full_events < 1:
            pytest.fail("send_queue_full_events not counted")
        got = recv_exact_running(server, sock, sent)
        run_until(server, lambda: drained, what="on_drain")
        sock.close()
    if drained != [fd] or got != chunk * (sent // len(chunk)):
        pytest.fail(f"drained {drained}, got {len(got)} of {sent} bytes")


# --- exceptions from callbacks --------------------------------------------------

class Boom(Exception):
    pass


def test_exception_in_on_data_surfaces_and_the_batch_resumes():
    # error_handler="raise": the policy before the default became "log and
    # abort that connection" (tests/test_error_policy.py)
    order = []
    bad = {}

    def on_data(fd, data):
        order.append(bytes(data))
        if fd == bad.get("fd") and not bad.get("raised"):
            bad["raised"] = True
            raise Boom("from on_data")
        server.send(fd, data)

    accepted = []
    server = zcn.TcpServer(on_data=on_data, on_accept=accepted.append, error_handler="raise")
    with server:
        a, b, c = connect(server), connect(server), connect(server)
        run_until(server, lambda: len(accepted) == 3, what="3 accepts")
        bad["fd"] = accepted[0]  # a is the first accepted
        for sock, msg in ((a, b"A"), (b, b"B"), (c, b"C")):
            sock.sendall(msg)
        time.sleep(0.2)  # all three arrive before the next poll: one batch
        with pytest.raises(Boom):
            server.run_once(timeout=1)
        raised_at = len(order)
        # The events after the failing one were kept: the next call
        # dispatches them before it waits for anything new.
        run_until(server, lambda: len(order) == 3, what="the kept events")
        if sorted(order) != [b"A", b"B", b"C"] or raised_at < 1:
            pytest.fail(f"dispatched {order} (raised after {raised_at})")
        for sock, msg in ((b, b"B"), (c, b"C")):
            if recv_exact_running(server, sock, 1) != msg:
                pytest.fail("other connections stopped working")
        # the failing connection still works too
        a.sendall(b"again")
        if recv_exact_running(server, a, 5) != b"again":
            pytest.fail("the connection whose callback raised stopped working")
        for sock in (a, b, c):
            sock.close()


@pytest.mark.parametrize("which", ["on_accept", "on_close"])
def test_exception_in_other_callbacks_surfaces(which):
    def boom(fd):
        raise Boom(which)

    server = zcn.TcpServer(**{which: boom}, error_handler="raise")
    with server:
        sock = connect(server)
        if which == "on_close":
            run_until(server, lambda: server.connections, what="accept")
            sock.close()
        with pytest.raises(Boom):
            run_until(server, lambda: False, timeout=5, what=which)
        if which == "on_accept":
            # on_accept raised after the connection was registered: usable
            fd = next(iter(server.connections))
            server.send(fd, b"ok")
            if recv_exact_running(server, sock, 2) != b"ok":
                pytest.fail("connection unusable after on_accept raised")
            sock.close()


def test_kept_view_is_released_after_the_callback():
    kept = []

    def on_data(fd, data):
        kept.append(data)
        kept.append(data[1:])  # a slice: not released, stays mapped

    server = zcn.TcpServer(on_data=on_data)
    with server:
        with connect(server) as sock:
            sock.sendall(b"xyz")
            run_until(server, lambda: kept, what="data")
            fd = next(iter(server.connections))
            with pytest.raises(ValueError):
                bytes(kept[0])
            with pytest.raises(ValueError):
                kept[0][0]
            with pytest.raises(ValueError):
                server.send(fd, kept[0])
    # after server_close the slice still reads mapped memory, no crash
    if len(bytes(kept[1])) != 2:
        pytest.fail("slice length")


def test_kept_view_is_released_when_the_callback_raises():
    kept = []

    def on_data(fd, data):
        kept.append(data)
        raise Boom()

    server = zcn.TcpServer(on_data=on_data, error_handler="raise")
    with server:
        with connect(server) as sock:
            sock.sendall(b"q")
            with pytest.raises(Boom):
                run_until(server, lambda: False, what="data")
    with pytest.raises(ValueError):
        bytes(kept[0])


# --- lifetime -------------------------------------------------------------------

def test_calls_after_server_close():
    server = zcn.TcpServer()
    server.server_close()
    server.server_close()  # idempotent
    if not server.closed or "closed" not in repr(server):
        pytest.fail("not marked closed")
    for call in (lambda: server.send(5, b"x"), lambda: server.close(5),
                 lambda: server.queued_bytes(5), lambda: server.run_once(0),
                 lambda: server.serve_forever(), server.stats, server.fileno):
        with pytest.raises(zcn.ClosedError):
            call()
    server.stop()  # a no-op, never an error (it may come from a signal handler)
    with pytest.raises(zcn.ClosedError):
        with server:
            pass


def test_server_close_calls_on_close_for_open_connections():
    closed = []
    accepted = []
    server = zcn.TcpServer(on_accept=accepted.append, on_close=closed.append)
    socks = [connect(server) for _ in range(3)]
    run_until(server, lambda: len(accepted) == 3, what="3 accepts")
    server.server_close()
    if sorted(closed) != sorted(accepted):
        pytest.fail(f"on_close for {closed}, accepted {accepted}")
    server.server_close()
    if len(closed) != 3:
        pytest.fail("on_close called again by a second server_close")
    for sock in socks:
        sock.settimeout(5)
        try:
            if sock.recv(10) != b"":
                pytest.fail("data from a closed server")
        except ConnectionResetError:
            pass
        sock.close()


def test_server_close_from_inside_a_callback_is_busy():
    errors = []

    def on_accept(fd):
        try:
            server.server_close()
        except zcn.BusyError as exc:
            errors.append(exc)
        server.stop()

    server = zcn.TcpServer(on_accept=on_accept)
    with server:
        with connect(server):
            server.serve_forever()
        if len(errors) != 1 or server.closed:
            pytest.fail(f"errors {errors}, closed {server.closed}")
        server.error_handler = "raise"  # by default it would be logged, fd aborted
        with pytest.raises(zcn.BusyError):
            server.on_accept = lambda fd: server.run_once(0)
            with connect(server):
                run_until(server, lambda: False, what="BusyError")


def test_server_close_from_another_thread_while_serving():
    closed_on = []
    server = zcn.TcpServer(on_close=lambda fd: closed_on.append(threading.get_ident()))
    errors = []

    def serve():
        try:
            server.serve_forever()
        except BaseException as exc:  # noqa: B902
            errors.append(exc)

    thread = threading.Thread(target=serve)
    sock = connect(server)
    thread.start()
    deadline = time.monotonic() + 5
    while not server.connections and time.monotonic() < deadline:
        time.sleep(0.01)
    server.server_close()  # stops the loop and waits until it has closed
    if not server.closed:
        pytest.fail("not closed on return")
    thread.join(5)
    if thread.is_alive() or errors:
        pytest.fail(f"serve_forever: alive={thread.is_alive()} errors={errors}")
    if closed_on != [thread.ident]:
        pytest.fail(f"on_close ran on {closed_on}, loop thread {thread.ident}")
    sock.close()


def test_loop_thread_is_the_first_runner():
    server = zcn.TcpServer()
    with server:
        with Background(server):
            time.sleep(0.05)
        # the background thread closed it; a fresh one shows the thread rule
    server = zcn.TcpServer()
    try:
        thread = threading.Thread(target=server.run_once, args=(0,))
        thread.start()
        thread.join(5)
        with pytest.raises(RuntimeError):
            server.run_once(0)  # started by the other thread
    finally:
        server.server_close()  # from a non-loop thread after the loop ended: fine


def test_garbage_collected_server_does_not_leak_fds():
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        server = zcn.TcpServer()
        server.run_once(0)
        del server
    import gc
    gc.collect()
    after = len(os.listdir("/proc/self/fd"))
    if after > before + 2:
        pytest.fail(f"fds {before} -> {after}")


# --- stop -----------------------------------------------------------------------

def test_stop_from_another_thread_ends_serve_forever():
    server = zcn.TcpServer()
    with server:
        timer = threading.Timer(0.1, server.stop)
        timer.start()
        start = time.monotonic()
        server.serve_forever()
        if time.monotonic() - start > 5:
            pytest.fail("serve_forever returned late")
        # the request was consumed: the loop runs again
        if server.run_once(timeout=0.05) != 0:
            pytest.fail("events on an idle server")


def test_stop_before_serving_returns_at_once():
    with zcn.TcpServer() as server:
        server.stop()
        server.serve_forever()
        server.stop()
        if server.run_once() != 0:
            pytest.fail("run_once after stop() should return 0")


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signals are delivered to the main thread")
def test_stop_from_a_signal_handler():
    with zcn.TcpServer() as server:
        previous = signal.signal(signal.SIGUSR1, lambda *_: server.stop())
        try:
            timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR1))
            timer.start()
            server.serve_forever()
            timer.join()
        finally:
            signal.signal(signal.SIGUSR1, previous)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signals are delivered to the main thread")
def test_exception_from_a_signal_handler_leaves_the_server_usable():
    def raise_boom(*_):
        raise Boom("signal")

    with echo_server() as server:
        previous = signal.signal(signal.SIGUSR1, raise_boom)
        try:
            threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR1)).start()
            with pytest.raises(Boom):
                server.serve_forever()
        finally:
            signal.signal(signal.SIGUSR1, previous)
        with connect(server) as sock:
            sock.sendall(b"still here")
            if recv_exact_running(server, sock, 10) != b"still here":
                pytest.fail("server unusable after a signal handler raised")


def test_run_once_timeout_on_an_idle_server():
    with zcn.TcpServer() as server:
        start = time.monotonic()
        n = server.run_once(timeout=0.05)
        elapsed = time.monotonic() - start
        if n != 0 or not 0.03 <= elapsed < 2:
            pytest.fail(f"run_once(0.05) gave {n} after {elapsed:.3f} s")
        if server.run_once(timeout=0) != 0:
            pytest.fail("run_once(0) on an idle server")
        with pytest.raises(ValueError):
            server.run_once(timeout=-1)
        with pytest.raises(TypeError):
            server.run_once(timeout="1")


def test_serve_forever_with_poll_interval():
    with zcn.TcpServer() as server:
        threading.Timer(0.1, server.stop).start()
        server.serve_forever(poll_interval=0.01)
        with pytest.raises(ValueError):
            server.serve_forever(poll_interval=0)


# --- handler="c" ----------------------------------------------------------------

def test_c_handler_echo_with_python_accept_and_close():
    log = []
    server = zcn.TcpServer(handler="c", on_accept=lambda fd: log.append(("accept", fd)),
                           on_close=lambda fd: log.append(("close", fd)))
    payload = os.urandom(300_000)
    with Background(server):
        with connect(server) as sock:
            sender = threading.Thread(target=sock.sendall, args=(payload,))
            sender.start()
            got = recv_exact(sock, len(payload))
            sender.join(10)
        deadline = time.monotonic() + 5
        while len(log) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = wait_stats(server, lambda st: st.bytes_sent >= len(payload))
    if got != payload:
        pytest.fail("C echo differs")
    if [e[0] for e in log] != ["accept", "close"] or log[0][1] != log[1][1]:
        pytest.fail(f"callbacks: {log}")
    if stats.sends_zero_copy == 0:
        pytest.fail(f"C echo should not copy: {stats}")


def test_c_handler_rules():
    with pytest.raises(ValueError):
        zcn.TcpServer(handler="c", on_data=lambda fd, data: None)
    with zcn.TcpServer(handler="c") as server:
        if server.handler != "c":
            pytest.fail("handler")
        with pytest.raises(ValueError):
            server.on_data = lambda fd, data: None
        if server.run_once(timeout=0.02) != 0:
            pytest.fail("events on an idle C-handler server")


def test_c_handler_callback_exception_surfaces():
    def on_accept(fd):
        raise Boom("accept")

    closed = []
    server = zcn.TcpServer(handler="c", on_accept=on_accept, on_close=closed.append,
                           error_handler="raise")
    with server:
        with connect(server) as sock:
            with pytest.raises(Boom):
                run_until(server, lambda: False, what="Boom")
            sock.sendall(b"c echo")
            if recv_exact_running(server, sock, 6) != b"c echo":
                pytest.fail("C echo stopped after a callback raised")
    if len(closed) != 1:
        pytest.fail(f"on_close: {closed}")


# --- configuration ----------------------------------------------------------------

def test_defaults_and_shape():
    with zcn.TcpServer() as server:
        if server.host != "127.0.0.1" or not 0 < server.port < 65536:
            pytest.fail(f"address {server.address}")
        if server.handler != "python" or server.buffer_size != 16384:
            pytest.fail("defaults")
        stats = server.stats()
        if not dataclasses.is_dataclass(stats) or stats.buffers_total != 1024:
            pytest.fail(f"stats {stats}")
        with pytest.raises(dataclasses.FrozenInstanceError):
            stats.bytes_sent = 1
        names = [f.name for f in dataclasses.fields(zcn.ServerStats)]
        from zcn import _ffi
        if names != [n for n, _ in _ffi.ServerStats._fields_]:
            pytest.fail("ServerStats fields differ from the C struct")
        if server.fileno() < 0 or "TcpServer" not in repr(server):
            pytest.fail("fileno/repr")
    if EVENTS_MAX < 4:
        pytest.fail("EVENTS_MAX")


def test_buffer_size_is_rounded_up():
    with zcn.TcpServer(buffer_size=1000, buffer_pool_size=8) as server:
        if server.buffer_size != 4096 or server.stats().buffers_total != 8:
            pytest.fail("rounding")


def test_port_in_use():
    with zcn.TcpServer() as first:
        with pytest.raises(OSError) as info:
            zcn.TcpServer("127.0.0.1", first.port)
        if info.value.errno != errno.EADDRINUSE:
            pytest.fail(f"errno {info.value.errno}")


def test_reuse_port_allows_two_servers():
    with zcn.TcpServer(reuse_port=True) as first:
        with zcn.TcpServer("127.0.0.1", first.port, reuse_port=True) as second:
            if second.port != first.port:
                pytest.fail("ports differ")


def test_bad_host():
    with pytest.raises(socket.gaierror):
        zcn.TcpServer("no-such-host.invalid")
    with pytest.raises(OSError):
        zcn.TcpServer("192.0.2.1")  # not a local address: EADDRNOTAVAIL
    with pytest.raises(ValueError):
        zcn.TcpServer("127.0.0.1\0x")
    with pytest.raises(TypeError):
        zcn.TcpServer(b"127.0.0.1")
    with pytest.raises(TypeError):
        zcn.TcpServer(None)


@pytest.mark.parametrize("kwargs, exc", [
    ({"port": -1}, ValueError), ({"port": 65536}, ValueError), ({"port": "80"}, TypeError),
    ({"port": True}, TypeError), ({"port": 1.5}, TypeError), ({"port": None}, TypeError),
    ({"io_uring_entries": 0}, ValueError), ({"io_uring_entries": 1 << 20}, ValueError),
    ({"buffer_pool_size": 0}, ValueError), ({"buffer_pool_size": 1}, ValueError),
    ({"buffer_pool_size": -5}, ValueError), ({"buffer_pool_size": 1 << 20}, ValueError),
    ({"buffer_size": 0}, ValueError), ({"buffer_size": 1 << 30}, ValueError),
    ({"buffer_size": 4096.0}, TypeError), ({"buffer_size": False}, TypeError),
    ({"backlog": 0}, ValueError), ({"backlog": 1 << 40}, ValueError),
    ({"connections_max": 0}, ValueError), ({"connections_max": 1 << 30}, ValueError),
    ({"send_queue_max_bytes": 0}, ValueError), ({"send_queue_max_bytes": 1 << 40}, ValueError),
    ({"idle_timeout": 0}, ValueError), ({"idle_timeout": -1}, ValueError),
    ({"idle_timeout": float("nan")}, ValueError), ({"idle_timeout": "5"}, TypeError),
    ({"idle_timeout": True}, TypeError), ({"idle_timeout": 1e12}, ValueError),
    ({"tcp_nodelay": 1}, TypeError), ({"reuse_port": "yes"}, TypeError),
    ({"handler": "rust"}, ValueError), ({"handler": None}, TypeError),
    ({"on_data": 5}, TypeError), ({"on_accept": "f"}, TypeError),
])
def test_bad_config(kwargs, exc):
    with pytest.raises(exc):
        zcn.TcpServer(**kwargs)


def test_idle_timeout_closes_quiet_connections():
    closed = []
    with zcn.TcpServer(idle_timeout=0.1, on_close=closed.append) as server:
        with connect(server) as sock:
            run_until(server, lambda: closed, timeout=5, what="idle close")
            sock.settimeout(5)
            if sock.recv(1) != b"":
                pytest.fail("no EOF after the idle timeout")
        if server.stats().idle_timeouts != 1:
            pytest.fail("idle_timeouts")


# --- the guide ------------------------------------------------------------------

def test_python_guide_examples_run():
    blocks = doc_blocks("PYTHON_GUIDE.md")
    if len(blocks) < 5:
        pytest.fail(f"only {len(blocks)} python blocks in the guide")
    for i, code in enumerate(blocks):
        if code.lstrip().startswith("# not run"):
            continue
        proc = run_python_block(code)
        if proc.returncode != 0:
            pytest.fail(f"guide block {i} failed:\n{code}\n--- stderr:\n{proc.stderr}")
