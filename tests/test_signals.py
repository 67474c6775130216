"""Signals while a zcn loop runs on the main thread.

Python runs a signal's handler only after the C call in progress returns.
A signal that lands after run_once/serve_forever entered the C library but
before the loop went to sleep in the kernel used to be noticed only at the
next event: SIGINT to an idle `python -m zcn udp-echo` could hang it. The
loops now point signal.set_wakeup_fd at the C loop's wakeup pipe while they
may wait; these tests check that wiring and hammer the window itself.
"""
from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

from conftest import require_loop

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _uring():
    require_loop()


def _current_wakeup_fd():
    fd = signal.set_wakeup_fd(-1)
    if fd != -1:
        signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
    return fd


def _udp_echo():
    import zcn
    sock = zcn.UdpSocket("127.0.0.1", 0)
    sock.on_datagram = lambda peer, data, flags: sock.sendto(data, peer)
    return sock


def _tcp_echo():
    import zcn
    srv = zcn.TcpServer("127.0.0.1", 0)
    srv.on_data = lambda fd, data: srv.send(fd, data)
    return srv


def _udp_ping(port):
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.settimeout(5)
    c.sendto(b"ping", ("127.0.0.1", port))
    assert c.recv(16) == b"ping"
    c.close()


def _tcp_ping(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(b"ping")
        assert c.recv(16) == b"ping"


KINDS = pytest.mark.parametrize("kind", ["udp", "tcp"])


class _Thread(threading.Thread):
    """A thread whose exception fails the test at join()."""

    def __init__(self, fn, *args):
        super().__init__(daemon=True)
        self.fn, self.args, self.error = fn, args, None

    def run(self):
        try:
            self.fn(*self.args)
        except BaseException as exc:  # re-raised by join()
            self.error = exc

    def join(self, timeout=10):
        super().join(timeout)
        assert not self.is_alive(), "client thread still running"
        if self.error is not None:
            raise self.error


def _make(kind):
    return (_udp_echo(), _udp_ping) if kind == "udp" else (_tcp_echo(), _tcp_ping)


@KINDS
def test_wakeup_fd_set_only_while_the_loop_waits_and_replies_leave_on_stop(kind):
    loop, ping = _make(kind)
    seen = []
    with loop:
        inner = loop.on_datagram if kind == "udp" else loop.on_data

        def record(*args):
            seen.append(_current_wakeup_fd())
            inner(*args)
            loop.stop()

        if kind == "udp":
            loop.on_datagram = record
        else:
            loop.on_data = record
        assert _current_wakeup_fd() == -1
        t = _Thread(ping, loop.port)
        t.start()
        loop.serve_forever()
        # The reply was sent just before stop(): it leaves with serve_forever's
        # return, no further loop call needed.
        t.join()
        assert _current_wakeup_fd() == -1  # put back on return
        # Short waits (<= 100 ms, here run_once(0.05)) go without: a signal
        # in the gap costs at most the timeout, and the fd costs ~1 us.
        t = _Thread(ping, loop.port)
        t.start()
        while len(seen) < 2:
            loop.run_once(0.05)
        t.join()
        assert _current_wakeup_fd() == -1
    assert seen[0] >= 0 and seen[1] == -1


@KINDS
def test_foreign_wakeup_fd_is_left_alone(kind):
    """asyncio (add_signal_handler) owns the wakeup fd: zcn must not take it."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    loop, _ping = _make(kind)
    try:
        signal.set_wakeup_fd(w)
        with loop:
            loop.run_once(0.2)
            assert _current_wakeup_fd() == w
    finally:
        signal.set_wakeup_fd(-1)
        os.close(r)
        os.close(w)


def test_not_touched_from_another_thread():
    loop = _udp_echo()
    result = []

    def run():
        loop.run_once(0.2)
        result.append(True)

    with loop:
        t = _Thread(run)
        t.start()
        t.join()
    assert result == [True]
    assert _current_wakeup_fd() == -1


@KINDS
def test_signal_right_after_an_echo_stops_the_loop(kind):
    """The failing shape from CI: the peer gets its echo and at once signals
    the server, whose loop is between its send and its next wait. Both on
    one CPU so the signal often lands in that window. Each round must end
    serve_forever; before the wakeup fd about 1 round in 40 hung."""
    loop, ping = _make(kind)
    rounds, late = 200, []
    main = threading.main_thread().ident
    stopped = threading.Event()

    def on_usr1(signum, frame):
        loop.stop()

    cpus = os.sched_getaffinity(0)
    previous = signal.signal(signal.SIGUSR1, on_usr1)
    try:
        os.sched_setaffinity(0, {min(cpus)})
        with loop:
            for i in range(rounds):
                stopped.clear()

                def client():
                    ping(loop.port)
                    signal.pthread_kill(main, signal.SIGUSR1)
                    if not stopped.wait(3):  # the round hung: record it, unstick it
                        late.append(i)
                        loop.stop()

                t = _Thread(client)
                t.start()
                loop.serve_forever()
                stopped.set()
                t.join()
    finally:
        os.sched_setaffinity(0, cpus)
        signal.signal(signal.SIGUSR1, previous)
    assert late == [], f"{len(late)} of {rounds} signals were seen only by the watchdog"


@KINDS
def test_keyboard_interrupt_while_installing_leaves_a_clean_loop(kind, monkeypatch):
    """A handler may raise (KeyboardInterrupt) at any bytecode, also just
    after the wakeup fd was pointed at the loop: the loop call must still
    put it back and not count as running."""
    loop, _ping = _make(kind)
    real = signal.set_wakeup_fd
    calls = []

    def set_then_interrupt(fd, **kw):
        old = real(fd, **kw)
        calls.append(fd)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return old

    with loop:
        monkeypatch.setattr(signal, "set_wakeup_fd", set_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            loop.run_once(None)
        monkeypatch.undo()
        assert _current_wakeup_fd() == -1
        assert loop.run_once(0) == 0  # not "already running"
