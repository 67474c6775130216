"""zcn.TcpServer(..., threads=N) and `python -m zcn echo --threads N`: N
loops on N threads (a ZCN_Group), the C handler on each, connections
spread by the kernel (SO_REUSEPORT) or steered by CPU."""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings

import pytest

import zcn
from conftest import TESTS_DIR, doc_blocks, require_loop, run_python_block, zcn_subprocess_env
from _tcp import readline_within, recv_exact

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def threaded():
    require_loop()
    made = []

    def make(**kw):
        kw.setdefault("threads", 2)
        server = zcn.TcpServer("127.0.0.1", 0, handler="c", **kw)
        made.append(server)
        return server

    yield make
    for server in made:
        server.server_close()


def _serve_in_thread(server):
    t = threading.Thread(target=server.serve_forever, name="serve_forever", daemon=True)
    t.start()
    return t


def _wait_for(predicate, timeout=10.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_is_a_tcpserver_with_the_group_s_properties(threaded):
    server = threaded(threads=2)
    assert isinstance(server, zcn.TcpServer) and isinstance(server, zcn.ThreadedTcpServer)
    assert server.threads == 2 and server.handler == "c"
    assert server.port > 0 and server.host == "127.0.0.1"
    assert server.cpus == [None, None]
    assert server.backend in ("io_uring", "epoll") and server.backend_reason
    assert "threads=2" in repr(server)
    one = threaded(threads=1)  # a group of one loop: the same class, pinnable
    assert one.threads == 1


def test_echo_through_every_loop_then_stop_from_another_thread(threaded):
    server = threaded(threads=2)
    t = _serve_in_thread(server)
    payloads = [os.urandom(1 + (i * 37) % 5000) for i in range(200)]
    for payload in payloads:
        with socket.create_connection(server.address, timeout=10) as sock:
            sock.sendall(payload)
            assert recv_exact(sock, len(payload)) == payload
    _wait_for(lambda: server.stats().connections_closed == 200, what="200 closes")
    per = [ls.tcp.connections_accepted for ls in server.loop_stats()]
    assert sum(per) == 200 and all(n > 0 for n in per), per  # the kernel spread them
    stats = server.stats()
    assert stats.bytes_received == stats.bytes_sent == sum(map(len, payloads))
    server.stop()
    t.join(10)
    assert not t.is_alive()
    with pytest.raises(zcn.ClosedError):
        server.start()  # a threaded server runs once


def test_a_thousand_connections_open_then_stop_closes_all_on_their_loops(threaded):
    server = threaded(threads=2, connections_max=2000)
    server.start()
    socks = [socket.create_connection(server.address, timeout=10) for _ in range(1000)]
    try:
        for i, sock in enumerate(socks):
            sock.sendall(b"%06d" % i)
        for i, sock in enumerate(socks):
            assert recv_exact(sock, 6) == b"%06d" % i
        per = [ls.tcp.connections_active for ls in server.loop_stats()]
        assert sum(per) == 1000 and all(n > 0 for n in per), per
        server.stop()  # with every connection open on both loops
        for sock in socks:
            sock.settimeout(10)
            try:
                assert sock.recv(1) == b""
            except ConnectionResetError:
                pass
        assert server.wait(10)  # the loops have ended: the counters are final
        stats = server.stats()
        assert stats.connections_accepted == stats.connections_closed == 1000
        assert stats.connections_active == 0
    finally:
        for sock in socks:
            sock.close()


def test_churn_with_resets_every_connection_served_once(threaded):
    server = threaded(threads=2)
    server.start()
    failures = []

    def client(k):
        for i in range(150):
            sock = socket.create_connection(server.address, timeout=10)
            if i % 4 == 0:  # leave with a reset, nothing sent
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                sock.close()
                continue
            msg = b"client %d message %d" % (k, i)
            sock.sendall(msg)
            if recv_exact(sock, len(msg)) != msg:
                failures.append((k, i))
            sock.close()

    clients = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for c in clients:
        c.start()
    for c in clients:
        c.join(30)
    assert not failures
    _wait_for(lambda: server.stats().connections_closed == 600, what="600 closes")
    stats = server.stats()
    assert stats.connections_accepted == 600 and stats.connections_active == 0


def _accepted_from_cpu(server, cpu, conns=40):
    before = [ls.tcp.connections_accepted for ls in server.loop_stats()]
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})  # the SYN is taken on the sending CPU on loopback
    try:
        for _ in range(conns):
            with socket.create_connection(server.address, timeout=10) as sock:
                sock.sendall(b"x")
                assert sock.recv(1) == b"x"
    finally:
        os.sched_setaffinity(0, allowed)
    after = [ls.tcp.connections_accepted for ls in server.loop_stats()]
    return [a - b for a, b in zip(after, before)]


def test_steering_sends_a_connection_to_the_loop_on_its_cpu(threaded):
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("steering needs two CPUs this process may run on")
    server = threaded(threads=2, cpus=cpus[:2], steer=True)
    assert server.cpus == cpus[:2]
    server.start()
    assert _accepted_from_cpu(server, cpus[1]) == [0, 40]
    assert _accepted_from_cpu(server, cpus[0]) == [40, 0]


def test_bad_arguments_say_what_is_wrong():
    require_loop()
    cases = [
        (dict(threads=0), ValueError, "threads"),
        (dict(threads=zcn._ffi.GROUP_THREADS_MAX + 1), ValueError, "threads"),
        (dict(threads="2"), TypeError, "threads"),
        (dict(threads=2, on_data=lambda fd, data: None), ValueError, "on_data"),
        (dict(threads=2, cpus=[0]), ValueError, "one CPU per thread"),
        (dict(threads=2, cpus="01"), TypeError, "cpus"),
        (dict(threads=2, cpus=[0, 1 << 20]), zcn.InvalidArgumentError, "cpus[1]"),
        (dict(threads=2, steer=True), ValueError, "steer"),
        (dict(threads=2, reuse_port=False), ValueError, "reuse_port"),
        (dict(threads=2, loop=object()), ValueError, "loop"),
        (dict(cpus=[0]), ValueError, "threads"),
        (dict(steer=True), ValueError, "threads"),
    ]
    for kw, exc, words in cases:
        kw.setdefault("handler", "c")
        with pytest.raises(exc, match=re.escape(words)):
            zcn.TcpServer("127.0.0.1", 0, **kw)


def test_closed_server_and_per_connection_calls(threaded):
    server = threaded(threads=2)
    for call in (lambda: server.send(5, b"x"), lambda: server.close(5),
                 lambda: server.run_once(0), lambda: server.connection_info(5)):
        with pytest.raises(zcn.ClosedError, match="own threads"):
            call()
    with pytest.raises(zcn.ClosedError, match="never started"):
        server.wait(0.1)
    server.server_close()
    server.server_close()  # idempotent
    assert server.closed
    with pytest.raises(zcn.ClosedError):
        server.stats()
    server.stop()  # a no-op once closed


# --- the command line ----------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_cli_echo_threads_serves_and_sums_on_a_signal(sig):
    require_loop()
    proc = subprocess.Popen(
        [sys.executable, "-m", "zcn", "echo", "--port", "0", "--handler", "c", "--threads", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=zcn_subprocess_env(),
        cwd=TESTS_DIR)
    try:
        first = readline_within(proc)
        m = re.match(r"^zcn echo listening on 127\.0\.0\.1:(\d+) \(handler=c\)$", first)
        assert m, first
        port = int(m.group(1))
        # printed with the first: already in the pipe's read buffer, where
        # select() would not see them
        assert proc.stdout.readline().startswith("backend: ")
        assert proc.stdout.readline().rstrip("\n") == "threads: 2 loops"
        for i in range(40):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"hello %d" % i)
                assert recv_exact(sock, len(b"hello %d" % i)) == b"hello %d" % i
        time.sleep(0.2)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    per = re.search(r"^zcn echo connections per loop: loop0=(\d+) loop1=(\d+)$", out, re.M)
    assert per, out
    assert int(per.group(1)) + int(per.group(2)) == 40
    assert "connections_accepted=40 connections_closed=40" in out


@pytest.mark.parametrize("args, words", [
    (["--threads", "2", "--handler", "python", "--steer", "--cpus", "0,0"], "--steer"),
    (["--cpus", "0,1"], "--threads"),
    (["--threads", "2", "--cpus", "0,x"], "--cpus"),
    (["--threads", "0"], "threads"),
])
def test_cli_bad_thread_options(args, words):
    require_loop()
    proc = subprocess.run([sys.executable, "-m", "zcn", "echo", "--port", "0", *args],
                          capture_output=True, text=True, env=zcn_subprocess_env(),
                          cwd=TESTS_DIR, timeout=30)
    assert proc.returncode == 1
    assert words in proc.stderr


def test_the_threads_doc_example_runs():
    require_loop()
    blocks = doc_blocks("THREADS.md")
    assert blocks, "docs/THREADS.md has no Python example"
    ran = 0
    for code in blocks:
        if "ThreadedTcpServer(" not in code and "ThreadedPythonServer(" not in code:
            continue  # the workers' example is tested with run_workers
        ran += 1
        proc = run_python_block(code)
        assert proc.returncode == 0, proc.stderr
        m = re.search(r"accepted per loop: \[(\d+), (\d+)\]", proc.stdout)
        assert m and int(m.group(1)) + int(m.group(2)) == 20, proc.stdout
        if "ThreadedPythonServer(" in code:
            assert "threads: ['zcn-loop-0', 'zcn-loop-1']" in proc.stdout, proc.stdout
    assert ran == 2


# --- Python handlers on N threads (ThreadedPythonServer) ---------------------------


@pytest.fixture
def py_threaded():
    require_loop()
    made = []

    def make(**kw):
        kw.setdefault("threads", 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the GIL note
            server = zcn.TcpServer("127.0.0.1", 0, handler="python", **kw)
        made.append(server)
        return server

    yield make
    for server in made:
        server.server_close()


def test_handler_decides_which_threaded_server():
    require_loop()
    with zcn.TcpServer("127.0.0.1", 0, threads=2) as c_server:  # no callbacks: the C echo
        assert isinstance(c_server, zcn.ThreadedTcpServer) and c_server.handler == "c"
        with pytest.raises(ValueError, match="handler='python'"):
            c_server.on_accept = print  # it would never be called
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with zcn.TcpServer("127.0.0.1", 0, threads=2, on_data=lambda fd, d: None) as py:
            assert isinstance(py, zcn.ThreadedPythonServer) and py.handler == "python"
            assert isinstance(py, zcn.TcpServer)


@pytest.mark.skipif(not zcn.threaded.gil_enabled(), reason="a free-threaded Python: no GIL")
def test_python_threads_under_the_gil_warn_and_point_to_workers():
    require_loop()
    with pytest.warns(RuntimeWarning, match="run_workers") as record:
        server = zcn.TcpServer("127.0.0.1", 0, handler="python", threads=2)
    server.server_close()
    assert record[0].filename == __file__  # the warning names the caller's line


def test_python_threads_echo_routes_calls_to_the_connection_s_loop(py_threaded):
    """200 connections over two loops, each answered by the Python on_data
    on its loop's thread; server.send inside the callback goes to that
    loop; from another thread it is refused; the counters add up; every
    connection gets on_close once, on its loop's thread."""
    server = py_threaded(threads=2)
    threads_seen = set()
    closed = []

    def on_data(fd, data):
        threads_seen.add(threading.current_thread().name)
        server.send(fd, data)

    def on_close(fd):
        closed.append((fd, threading.current_thread().name))

    server.on_data = on_data
    server.on_close = on_close
    assert server.threads == 2 and server.cpus == [None, None] and server.loop is None
    server.start()
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=10)
             for _ in range(200)]
    for i, s in enumerate(socks):
        s.sendall(b"message %d" % i)
    for i, s in enumerate(socks):
        want = b"message %d" % i
        assert recv_exact(s, len(want)) == want
    assert threads_seen == {"zcn-loop-0", "zcn-loop-1"}
    per = [ls.tcp.connections_accepted for ls in server.loop_stats()]
    assert sum(per) == 200 and min(per) > 0, per
    assert server.stats().connections_accepted == 200
    assert len(server.connections) == 200
    with pytest.raises(zcn.WrongThreadError, match="from a callback"):
        server.send(socks[0].fileno(), b"x")
    for s in socks[:100]:
        s.close()
    _wait_for(lambda: len(closed) == 100, what="100 closes")
    server.stop()
    assert server.wait(10) is True
    with pytest.raises(zcn.ClosedError, match="runs once"):
        server.start()
    server.server_close()  # closes the other 100, each on_close once
    assert len(closed) == 200 and len({fd for fd, _ in closed}) <= 200
    assert {name for _, name in closed[:100]} <= {"zcn-loop-0", "zcn-loop-1"}
    for s in socks[100:]:
        s.close()


def test_python_threads_contain_a_raising_callback(py_threaded):
    """An exception in one connection's on_data aborts that connection
    only (the default error policy, on each loop); the other loop's and the
    same loop's other connections go on."""
    server = py_threaded(threads=2)

    def on_data(fd, data):
        if data.tobytes().startswith(b"boom"):
            raise RuntimeError("boom")
        server.send(fd, data)

    server.on_data = on_data
    server.start()
    good = [socket.create_connection(("127.0.0.1", server.port), timeout=10)
            for _ in range(20)]
    bad = [socket.create_connection(("127.0.0.1", server.port), timeout=10)
           for _ in range(4)]
    for s in bad:
        s.sendall(b"boom")
    for s in bad:
        try:
            assert s.recv(10) == b""  # aborted: a reset, or an EOF
        except ConnectionResetError:
            pass
    for i, s in enumerate(good):
        s.sendall(b"ok %d" % i)
        assert recv_exact(s, len(b"ok %d" % i)) == b"ok %d" % i
    for s in good + bad:
        s.close()


def test_python_threads_error_raise_stops_all_and_wait_raises(py_threaded):
    server = py_threaded(threads=2, error_handler="raise")

    def on_data(fd, data):
        raise ValueError("handler failed")

    server.on_data = on_data
    server.start()
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall(b"x")
    with pytest.raises(ValueError, match="handler failed"):
        server.wait(10)
    s.close()


def test_python_threads_pinned(py_threaded):
    cpus = sorted(os.sched_getaffinity(0))
    server = py_threaded(threads=2, cpus=[cpus[0], cpus[-1]])
    where = {}

    def on_accept(fd):
        where[threading.current_thread().name] = os.sched_getaffinity(0)

    server.on_accept = on_accept
    server.start()
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=10)
             for _ in range(40)]
    _wait_for(lambda: len(where) == 2, what="accepts on both loops")
    assert where == {"zcn-loop-0": {cpus[0]}, "zcn-loop-1": {cpus[-1]}}
    for s in socks:
        s.close()


def test_python_threads_bad_arguments(py_threaded):
    require_loop()
    cases = [
        (dict(steer=True), ValueError, "steer"),
        (dict(loop=object()), ValueError, "loop"),
        (dict(reuse_port=False), ValueError, "reuse_port"),
        (dict(cpus=[0]), ValueError, "one CPU per thread"),
        (dict(cpus=[0, 1 << 20]), ValueError, "not one this process may run on"),
        (dict(threads=0), ValueError, "threads"),
        (dict(buffer_size=0), ValueError, "buffer_size"),
    ]
    for kw, exc, words in cases:
        with pytest.raises(exc, match=re.escape(words)):
            py_threaded(**kw)
    server = py_threaded()
    with pytest.raises(zcn.ClosedError, match="never started"):
        server.wait(0.1)
    with pytest.raises(zcn.ClosedError, match="own thread"):
        server.run_once(0)
    server.server_close()
    server.server_close()  # idempotent
    with pytest.raises(zcn.ClosedError):
        server.stats()


def test_cli_echo_python_threads_serves_and_counts_per_loop():
    require_loop()
    proc = subprocess.Popen(
        [sys.executable, "-m", "zcn", "echo", "--port", "0", "--handler", "python",
         "--threads", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=zcn_subprocess_env(),
        cwd=TESTS_DIR)
    try:
        first = readline_within(proc)
        m = re.search(r"listening on 127\.0\.0\.1:(\d+) \(handler=python\)", first)
        assert m, first
        assert readline_within(proc).startswith("backend: ")
        assert readline_within(proc) == "threads: 2 loops"
        port = int(m.group(1))
        socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(60)]
        for i, s in enumerate(socks):
            s.sendall(b"line %d" % i)
        for i, s in enumerate(socks):
            assert recv_exact(s, len(b"line %d" % i)) == b"line %d" % i
        for s in socks:
            s.close()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    per = re.search(r"connections per loop: loop0=(\d+) loop1=(\d+)", out)
    assert per and int(per.group(1)) + int(per.group(2)) == 60, out
    if zcn.threaded.gil_enabled():
        assert "--workers N runs Python handlers on several cores" in err
    assert "RuntimeWarning" not in err
