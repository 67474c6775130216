"""Busy polling (busy_poll_us= on zcn.Loop and zcn.TcpServer, python -m zcn
echo --busy-poll): bad values refused; echo works on both backends; a
timer, a call from another thread and a stop from another thread are
handled while the loop spins; an idle loop stops spinning and sleeps.

No timing asserts but one: a loop idle for 0.5 s must have used far less
CPU than that (its spin lasts 10 ms at most after the last completion).
"""
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import zcn
from conftest import TESTS_DIR, require_io_uring, require_loop, zcn_subprocess_env
from _tcp import readline_within

pytestmark = pytest.mark.timeout(60)

SPIN_US = 10000  # the limit: the widest window, so events land in spins
BACKENDS = ["io_uring", "epoll"]


def _require(backend):
    require_loop()
    if backend == "io_uring":
        require_io_uring()


def _kick(loop):
    """A completion now: a loop spins only within busy_poll_us of its last one."""
    loop.call_soon_threadsafe(lambda: None)
    loop.run_once(1.0)


@pytest.mark.parametrize("bad", [-1, zcn._ffi.LOOP_BUSY_POLL_US_MAX + 1, 1 << 40])
def test_bad_values_are_refused(bad):
    with pytest.raises(ValueError, match="busy_poll_us"):
        zcn.Loop(busy_poll_us=bad)
    with pytest.raises(ValueError, match="busy_poll_us"):
        zcn.TcpServer("127.0.0.1", 0, busy_poll_us=bad)


def test_not_an_int_is_a_type_error():
    with pytest.raises(TypeError):
        zcn.Loop(busy_poll_us="50")  # type: ignore[arg-type]


def test_server_on_a_loop_leaves_it_to_the_loop():
    require_loop()
    with zcn.Loop(busy_poll_us=50) as loop:
        with pytest.raises(ValueError, match="loop's"):
            zcn.TcpServer("127.0.0.1", 0, loop=loop, busy_poll_us=50)


@pytest.mark.parametrize("backend", BACKENDS)
def test_echo_then_stop_from_another_thread(backend):
    _require(backend)
    with zcn.Loop(busy_poll_us=SPIN_US, backend=backend) as loop:
        assert loop.backend == backend
        made = []
        ready = threading.Event()

        def serve():  # the loop's thread makes its server and runs it
            server = zcn.TcpServer("127.0.0.1", 0, loop=loop)
            server.on_data = lambda fd, data: server.send(fd, data)
            made.append(server)
            ready.set()
            try:
                loop.run_forever()
            finally:
                server.server_close()

        runner = threading.Thread(target=serve)
        runner.start()
        try:
            assert ready.wait(10)
            with socket.create_connection(("127.0.0.1", made[0].port), timeout=10) as sock:
                for i in range(200):
                    payload = b"%03d" % i * 20
                    sock.sendall(payload)
                    got = b""
                    while len(got) < len(payload):
                        chunk = sock.recv(4096)
                        assert chunk, "the server closed"
                        got += chunk
                    assert got == payload
        finally:
            loop.stop()  # from this thread, while the loop spins on the reply's send
            runner.join(10)
        assert not runner.is_alive(), "the stop did not end run_forever"
        assert loop.stats().busy_polls_found > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_timer_fires_while_spinning(backend):
    _require(backend)
    with zcn.Loop(busy_poll_us=SPIN_US, backend=backend) as loop:
        _kick(loop)
        fired = []
        loop.call_later(0.002, fired.append, 1)
        deadline = time.monotonic() + 5
        while not fired and time.monotonic() < deadline:
            loop.run_once(1.0)
        assert fired == [1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_call_from_another_thread_while_spinning(backend):
    _require(backend)
    with zcn.Loop(busy_poll_us=SPIN_US, backend=backend) as loop:
        _kick(loop)
        ran = threading.Event()
        caller = threading.Timer(0.002, loop.call_soon_threadsafe, (ran.set,))
        caller.start()
        deadline = time.monotonic() + 5
        while not ran.is_set() and time.monotonic() < deadline:
            loop.run_once(1.0)
        caller.join(5)
        assert ran.is_set()


@pytest.mark.parametrize("backend", BACKENDS)
def test_idle_loop_sleeps(backend):
    _require(backend)
    with zcn.Loop(busy_poll_us=SPIN_US, backend=backend) as loop:
        _kick(loop)
        cpu0, t0 = time.thread_time(), time.monotonic()
        while time.monotonic() - t0 < 0.5:
            loop.run_once(0.1)
        cpu, wall = time.thread_time() - cpu0, time.monotonic() - t0
        stats = loop.stats()
        assert cpu < 0.5 * wall, f"{cpu:.3f} s of CPU over {wall:.3f} s idle"
        assert stats.busy_polls_expired >= 1  # it spun, then slept


def test_threaded_server_takes_it():
    require_loop()
    server = zcn.TcpServer("127.0.0.1", 0, threads=1, busy_poll_us=100)
    try:
        assert server.threads == 1
    finally:
        server.server_close()


def test_cli_echo_busy_poll():
    require_loop()
    proc = subprocess.Popen([sys.executable, "-m", "zcn", "echo", "--port", "0",
                             "--busy-poll", "50"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=zcn_subprocess_env(),
                            cwd=TESTS_DIR)
    try:
        line = readline_within(proc)
        assert line.startswith("zcn echo listening on "), line
        port = int(line.split(":")[-1].split()[0])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"spin")
            assert sock.recv(16) == b"spin"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_cli_echo_busy_poll_too_large():
    require_loop()
    out = subprocess.run([sys.executable, "-m", "zcn", "echo", "--port", "0",
                          "--busy-poll", "20000"], capture_output=True, text=True,
                         env=zcn_subprocess_env(), cwd=TESTS_DIR, timeout=30)
    assert out.returncode == 1
    assert "busy_poll_us" in out.stderr
