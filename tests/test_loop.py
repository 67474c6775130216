"""zcn.Loop: outbound connections, servers on a shared loop, timers, fd
watches, calls from other threads, and closing with everything open. Real
sockets on 127.0.0.1; every wait is bounded."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time

import psutil
import pytest

from conftest import require_loop

import zcn

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def loop():
    require_loop()
    lp = zcn.Loop()
    yield lp
    lp.close()


def run_until(loop, cond, limit=5.0):
    """Runs the loop until cond() or the limit (seconds); returns cond()."""
    end = time.monotonic() + limit
    while not cond() and time.monotonic() < end:
        loop.run_once(timeout=0.05)
    return cond()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def open_fds():
    return psutil.Process().num_fds()


def test_connect_refused_reports_the_error_and_leaks_nothing(loop):
    loop.run_once(timeout=0)  # the loop's own fds exist before the count
    before = open_fds()
    results = []
    port = free_port()
    handle = loop.connect("127.0.0.1", port, on_connect=lambda fd, e: results.append((fd, e)),
                          on_close=lambda fd: results.append(("close", fd)))
    assert isinstance(handle.fd, int)
    assert run_until(loop, lambda: results)
    loop.run_once(timeout=0.05)
    assert len(results) == 1
    fd, error = results[0]
    assert fd == handle.fd and isinstance(error, ConnectionRefusedError)
    loop.run_once(timeout=0)  # the fd is released at the next poll
    assert open_fds() == before
    st = loop.stats()
    assert st.connects_failed == 1 and st.tcp.connections_active == 0


def test_connect_timeout_to_a_full_accept_queue(loop):
    # A listener that never accepts, its queue filled: SYNs are then dropped.
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    port = lst.getsockname()[1]
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", port))
        fillers.append(c)
    time.sleep(0.1)
    results = []
    t0 = time.monotonic()
    loop.connect("127.0.0.1", port, timeout=0.2, on_connect=lambda fd, e: results.append(e))
    assert run_until(loop, lambda: results, limit=5)
    elapsed = time.monotonic() - t0
    assert isinstance(results[0], TimeoutError), results
    assert elapsed < 3.0
    assert loop.stats().connect_timeouts == 1
    for c in fillers:
        c.close()
    lst.close()


def test_connect_resolves_a_name_without_blocking_the_loop(loop):
    server = zcn.TcpServer("127.0.0.1", 0, loop=loop, on_data=lambda fd, d: server.send(fd, d))
    got = []

    def on_connect(fd, error):
        assert error is None
        loop.send(fd, b"ping")

    def on_data(fd, data):
        got.append(bytes(data))
        loop.close(fd)

    handle = loop.connect("localhost", server.port, on_connect=on_connect, on_data=on_data)
    ticks = []
    loop.call_later(0, ticks.append, 1)  # the loop runs while the name resolves
    assert run_until(loop, lambda: got)
    assert got == [b"ping"] and ticks == [1] and handle.fd is not None


def test_unknown_name_gives_gaierror(loop):
    results = []
    loop.connect("no-such-host.invalid", 80, on_connect=lambda fd, e: results.append((fd, e)))
    assert run_until(loop, lambda: results, limit=30)
    fd, error = results[0]
    assert fd is None and isinstance(error, OSError)


def test_client_and_server_on_one_loop_many_connections(loop):
    n = 200
    closed = {"server": 0, "client": 0}
    answers = {}
    server = zcn.TcpServer("127.0.0.1", 0, loop=loop,
                           on_data=lambda fd, d: server.send(fd, d),
                           on_close=lambda fd: closed.__setitem__("server", closed["server"] + 1))

    def on_connect(fd, error):
        assert error is None, error
        loop.send(fd, b"x%d" % fd)

    def on_data(fd, data):
        answers[fd] = bytes(data)
        loop.close(fd)

    def on_close(fd):
        closed["client"] += 1

    fds = [loop.connect("127.0.0.1", server.port, on_connect=on_connect, on_data=on_data,
                        on_close=on_close).fd for _ in range(n)]
    assert run_until(loop, lambda: closed["client"] == n and closed["server"] == n, limit=20)
    assert all(answers[fd] == b"x%d" % fd for fd in fds)
    assert loop.stats().tcp.connections_active == 0


def test_two_servers_on_one_loop_and_one_closed(loop):
    seen = []
    a = zcn.TcpServer("127.0.0.1", 0, loop=loop, on_data=lambda fd, d: a.send(fd, b"A" + d))
    b = zcn.TcpServer("127.0.0.1", 0, loop=loop, on_data=lambda fd, d: b.send(fd, b"B" + d),
                      on_close=lambda fd: seen.append(fd))
    ca = socket.create_connection(("127.0.0.1", a.port), timeout=5)
    cb = socket.create_connection(("127.0.0.1", b.port), timeout=5)
    ca.sendall(b"1")
    cb.sendall(b"2")
    replies = {}

    def poll_replies():
        for name, sock in (("a", ca), ("b", cb)):
            sock.setblocking(False)
            try:
                data = sock.recv(10)
                if data:
                    replies[name] = data
            except BlockingIOError:
                pass
        return len(replies) == 2

    assert run_until(loop, poll_replies)
    assert replies == {"a": b"A1", "b": b"B2"}
    b_port = b.port
    b.server_close()            # its connection gets on_close once
    assert len(seen) == 1
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", b_port), timeout=5)
    ca.setblocking(True)
    ca.sendall(b"3")
    replies.clear()
    assert run_until(loop, lambda: poll_replies() or "a" in replies)
    assert replies["a"] == b"A3"
    ca.close()
    cb.close()
    a.server_close()


def test_timers_order_cancel_and_call_at(loop):
    order = []
    loop.call_later(0.03, order.append, "c")
    loop.call_later(0.01, order.append, "a")
    loop.call_later(0.02, order.append, "b")
    loop.call_later(0.02, order.append, "b2")   # same delay: start order
    cancelled = loop.call_later(0.015, order.append, "never")
    cancelled.cancel()
    cancelled.cancel()                          # twice is fine
    loop.call_at(loop.time() + 0.025, order.append, "at")
    assert run_until(loop, lambda: len(order) == 5)
    loop.run_once(timeout=0.05)
    assert order == ["a", "b", "b2", "at", "c"]
    assert cancelled.cancelled()


def test_timer_cancelled_from_another_timer(loop):
    fired = []
    victim = loop.call_later(0.02, fired.append, "victim")
    loop.call_later(0.01, victim.cancel)
    loop.call_later(0.04, fired.append, "end")
    assert run_until(loop, lambda: fired)
    assert fired == ["end"]


def test_many_timers(loop):
    fired = []
    for i in range(3000):
        loop.call_later((i % 50) / 1000, fired.append, i)
    assert run_until(loop, lambda: len(fired) == 3000)
    assert sorted(fired) == list(range(3000))


def test_timers_max_is_a_limit():
    require_loop()
    with zcn.Loop(timers_max=4) as lp:
        for _ in range(4):
            lp.call_later(10, print)
        with pytest.raises(zcn.ExhaustedError):
            lp.call_later(10, print)


def test_reader_and_writer_on_a_pipe(loop):
    r, w = os.pipe()
    try:
        reads = []
        loop.add_reader(r, lambda: reads.append(os.read(r, 100)))
        loop.run_once(timeout=0.02)
        assert reads == []
        os.write(w, b"abc")
        assert run_until(loop, lambda: reads)
        assert reads == [b"abc"]
        # level-triggered: unread data is reported again
        os.write(w, b"zz")
        calls = []
        loop.add_reader(r, calls.append, 1)       # replaces the reader
        assert run_until(loop, lambda: len(calls) >= 2)
        assert loop.remove_reader(r)
        assert not loop.remove_reader(r)
        n = len(calls)
        loop.run_once(timeout=0.05)
        assert len(calls) == n
        writable = []
        loop.add_writer(w, lambda: (writable.append(1), loop.remove_writer(w)))
        assert run_until(loop, lambda: writable)
        assert writable == [1]
    finally:
        os.close(r)
        os.close(w)


def test_call_soon_threadsafe_from_four_threads(loop):
    per_thread = 2000
    seen = {i: [] for i in range(4)}
    loop_thread = []

    def record(i, k):
        loop_thread.append(threading.get_ident())
        seen[i].append(k)

    def worker(i):
        for k in range(per_thread):
            loop.call_soon_threadsafe(record, i, k)

    loop.run_once(timeout=0)  # this thread owns the loop
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    assert run_until(loop, lambda: sum(map(len, seen.values())) == 4 * per_thread, limit=20)
    for t in threads:
        t.join()
    assert all(seen[i] == list(range(per_thread)) for i in range(4))
    assert set(loop_thread) == {threading.get_ident()}


def test_call_soon_threadsafe_wakes_a_waiting_loop(loop):
    woke = []
    threading.Timer(0.05, loop.call_soon_threadsafe, (woke.append, 1)).start()
    t0 = time.monotonic()
    loop.run_once(timeout=10)
    assert woke == [1] and time.monotonic() - t0 < 5


def test_wrong_thread_and_stop_from_another_thread(loop):
    loop.run_once(timeout=0)
    errors = []

    def other():
        try:
            loop.call_later(1, print)
        except zcn.WrongThreadError as exc:
            errors.append(exc)
        loop.stop()

    t = threading.Thread(target=other, name="other")
    t.start()
    t.join()
    loop.run_forever()          # returns: stop() was called
    assert errors and "other" in str(errors[0])


def test_close_with_everything_open():
    require_loop()
    lp = zcn.Loop()
    closes = []
    server = zcn.TcpServer("127.0.0.1", 0, loop=lp, on_close=lambda fd: closes.append(("s", fd)))
    connected = []
    for _ in range(3):
        lp.connect("127.0.0.1", server.port, on_connect=lambda fd, e: connected.append(fd),
                   on_close=lambda fd: closes.append(("c", fd)))
    assert run_until(lp, lambda: len(connected) == 3 and len(server._fds) == 3)
    lp.call_later(100, print)
    r, w = os.pipe()
    lp.add_reader(r, print)
    lp.close()
    assert sorted(k for k, _ in closes) == ["c"] * 3 + ["s"] * 3
    assert len(set(closes)) == 6
    assert lp.closed and server.closed
    with pytest.raises(zcn.ClosedError):
        lp.call_soon_threadsafe(print)
    with pytest.raises(zcn.ClosedError):
        lp.run_once(timeout=0)
    os.close(r)
    os.close(w)


def test_server_on_loop_refuses_loop_fields(loop):
    with pytest.raises(ValueError, match="buffer_pool_size"):
        zcn.TcpServer("127.0.0.1", 0, loop=loop, buffer_pool_size=64)
    with pytest.raises(ValueError, match="handler"):
        zcn.TcpServer("127.0.0.1", 0, loop=loop, handler="c")
    with pytest.raises(TypeError):
        zcn.TcpServer("127.0.0.1", 0, loop=object())


def test_bad_arguments(loop):
    with pytest.raises(ValueError):
        loop.connect("127.0.0.1", 0)
    with pytest.raises(TypeError):
        loop.connect(b"127.0.0.1", 80)
    with pytest.raises(ValueError):
        loop.call_later(-1, print)
    with pytest.raises(TypeError):
        loop.call_later(1, "not callable")
    with pytest.raises(ValueError):
        loop.add_reader(-1, print)
    with pytest.raises(zcn.ClosedError):
        loop.send(12345, b"x")
    with pytest.raises(ValueError):
        zcn.Loop(timers_max=0)


def test_callback_exception_aborts_only_that_connection(loop, caplog):
    server = zcn.TcpServer("127.0.0.1", 0, loop=loop, on_data=lambda fd, d: server.send(fd, d))
    state = {"closed": [], "ok": []}

    def bad_data(fd, data):
        raise RuntimeError("boom")

    def good_data(fd, data):
        state["ok"].append(bytes(data))

    def start(on_data):
        def on_connect(fd, e):
            loop.send(fd, b"hi")
        return loop.connect("127.0.0.1", server.port, on_connect=on_connect, on_data=on_data,
                            on_close=lambda fd: state["closed"].append(fd))

    bad = start(bad_data)
    good = start(good_data)
    assert run_until(loop, lambda: state["ok"] and state["closed"])
    assert state["closed"] == [bad.fd] and state["ok"] == [b"hi"]
    assert "boom" in caplog.text
    loop.close(good.fd)


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")
def test_connect_to_a_real_peer(loop):
    port = free_port()
    peer = subprocess.Popen(["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr",
                             "EXEC:cat"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        got = bytearray()
        results = []

        def on_connect(fd, e):
            results.append(e)
            if e is None:
                loop.send(fd, b"through socat")

        deadline = time.monotonic() + 5
        while True:  # socat needs a moment to listen
            results.clear()
            h = loop.connect("127.0.0.1", port, on_connect=on_connect,
                             on_data=lambda fd, d: got.extend(d))
            run_until(loop, lambda: results)
            if results and results[0] is None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert results == [None]
        assert run_until(loop, lambda: bytes(got) == b"through socat")
        loop.close(h.fd)
    finally:
        peer.kill()
        peer.wait()


# --- docs/EVENT_LOOP.md stays true ------------------------------------------------

def test_event_loop_guide_python_examples_run():
    from conftest import doc_blocks, run_python_block
    require_loop()
    blocks = doc_blocks("EVENT_LOOP.md")
    assert len(blocks) == 2
    expected = ["b'hello'", "[\"b'ping'\", 'from a thread']"]
    for code, want in zip(blocks, expected):
        proc = run_python_block(code)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == want


def test_event_loop_guide_c_example_builds_and_runs(tmp_path):
    from conftest import ROOT, doc_blocks
    require_loop()
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("needs a C compiler (cc or gcc)")
    (code,) = doc_blocks("EVENT_LOOP.md", lang="c")
    src = tmp_path / "app.c"
    src.write_text(code)
    libdir = os.path.dirname(os.path.abspath(zcn._ffi.lib._name))
    exe = tmp_path / "app"
    subprocess.run([cc, "-std=c11", "-Wall", "-Werror", str(src), "-I",
                    os.path.join(ROOT, "include"), "-L", libdir, "-lzero_copy_net",
                    f"-Wl,-rpath,{libdir}", "-o", str(exe)], check=True, timeout=60)
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "echoed 5 bytes: hello\n"


def test_connect_cancelled_while_connecting(loop):
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    port = lst.getsockname()[1]
    fillers = [socket.socket() for _ in range(4)]
    for c in fillers:
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", port))
    time.sleep(0.1)
    results = []
    handle = loop.connect("127.0.0.1", port, timeout=10,
                          on_connect=lambda fd, e: results.append(e))
    loop.run_once(timeout=0.05)
    handle.cancel()
    assert run_until(loop, lambda: results, limit=5)
    assert isinstance(results[0], zcn.ClosedError), results
    for c in fillers:
        c.close()
    lst.close()


def test_forward_gates_on_the_target_and_auto_forwards(loop):
    """loop.forward: a target that does not read pauses the source (no
    QueueFullError for an on_data that sends the view on); auto=True moves
    the data without on_data."""
    got = bytearray()
    upstream = zcn.TcpServer("127.0.0.1", 0, loop=loop, on_data=lambda fd, d: got.extend(d))
    pair = {}

    def on_accept(client):
        h = loop.connect("127.0.0.1", upstream.port, on_connect=lambda fd, e: None,
                         on_close=lambda fd: None)
        pair[client] = h.fd
        loop.forward(client, h.fd, auto=True)   # gated while connecting, then moved in C

    front = zcn.TcpServer("127.0.0.1", 0, loop=loop, on_accept=on_accept,
                          on_data=lambda fd, d: loop.send(pair[fd], d))
    payload = os.urandom(1 << 20)
    c = socket.create_connection(("127.0.0.1", front.port), timeout=5)
    # send once the pair is up, so no data can come in the ACCEPT's batch
    # (python -m zcn proxy shows how to keep such early data)
    assert run_until(loop, lambda: len(upstream._fds) == 1)
    threading.Thread(target=c.sendall, args=(payload,)).start()
    assert run_until(loop, lambda: len(got) == len(payload), limit=20)
    assert bytes(got) == payload
    with pytest.raises(zcn.ClosedError):
        loop.forward(12345, 12346)
    with pytest.raises(ValueError):
        loop.forward(1 << 40, 3)
    with pytest.raises(ValueError):
        loop.forward(3, -5)
    with pytest.raises(zcn.InvalidArgumentError):
        loop.forward(next(iter(pair)), next(iter(pair)))
    c.close()


def test_readme_loop_example_runs():
    import re
    from conftest import ROOT, run_python_block
    require_loop()
    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    (code,) = [b for b in blocks if "zcn.Loop()" in b]
    proc = run_python_block(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "b'ping'"


def test_close_reports_a_connect_in_flight_as_on_connect():
    require_loop()
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    port = lst.getsockname()[1]
    fillers = [socket.socket() for _ in range(4)]
    for c in fillers:
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", port))
    time.sleep(0.1)
    lp = zcn.Loop()
    seen = []
    lp.connect("127.0.0.1", port, timeout=10, on_connect=lambda fd, e: seen.append(("c", e)),
               on_close=lambda fd: seen.append(("close", fd)))
    lp.run_once(timeout=0.05)
    lp.close()
    assert len(seen) == 1 and seen[0][0] == "c" and isinstance(seen[0][1], zcn.ClosedError)
    for c in fillers:
        c.close()
    lst.close()
