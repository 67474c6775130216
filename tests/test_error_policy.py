"""What an exception in a zcn.TcpServer callback does (issue 11): by default,
as in asyncio, it is logged with its traceback on the "zcn.server" logger,
only that connection is aborted and the server keeps serving the others;
error_handler="raise" propagates it out of the loop (tests in
test_server_api.py), and a callable error_handler(fd, exc) decides.

Before, one malformed request ended serve_forever and, with the documented
``with server: server.serve_forever()``, every connection and the listener
closed with it."""
from __future__ import annotations

import logging
import socket
import threading
import time

import pytest

import zcn

from _tcp import Background, connect, recv_exact, recv_exact_running, run_until
from conftest import require_loop

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def _uring():
    require_loop()


class Malformed(Exception):
    pass


def strict_echo(server):
    """An echo that refuses requests starting with b"BAD"."""
    def on_data(fd, data):
        if bytes(data[:3]) == b"BAD":
            raise Malformed(f"malformed request on fd {fd}")
        server.send(fd, data)
    return on_data


def peer_is_cut_off(sock, server=None):
    """The server aborted our connection: a reset, or at least EOF. With
    server, drives its loop on this thread meanwhile."""
    sock.settimeout(0.01 if server is not None else 5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if server is not None:
            server.run_once(timeout=0.01)
        try:
            return sock.recv(100) == b""
        except ConnectionResetError:
            return True
        except socket.timeout:
            continue
    return False


def test_one_malformed_request_does_not_take_the_service_down(caplog):
    caplog.set_level(logging.ERROR, logger="zcn.server")
    server = zcn.TcpServer()
    server.on_data = strict_echo(server)
    with Background(server):
        good, bad = connect(server), connect(server)
        good.sendall(b"hello")
        assert recv_exact(good, 5) == b"hello"
        bad.sendall(b"BAD request")
        assert peer_is_cut_off(bad)
        # the service goes on: the old connection, and a new one
        good.sendall(b"still here")
        assert recv_exact(good, 10) == b"still here"
        with connect(server) as fresh:
            fresh.sendall(b"new")
            assert recv_exact(fresh, 3) == b"new"
        good.close()
        bad.close()
    records = [r for r in caplog.records if r.name == "zcn.server"]
    assert len(records) == 1, caplog.text
    assert "on_data" in records[0].getMessage() and "aborting" in records[0].getMessage()
    assert records[0].exc_info is not None and records[0].exc_info[0] is Malformed


def test_the_rest_of_the_batch_is_served_but_not_the_aborted_connection(caplog):
    caplog.set_level(logging.ERROR, logger="zcn.server")
    seen = []

    def on_data(fd, data):
        seen.append((fd, bytes(data)))
        if bytes(data).startswith(b"BAD"):
            raise Malformed()
        server.send(fd, data)

    accepted = []
    server = zcn.TcpServer(on_data=on_data, on_accept=accepted.append)
    with server:
        a, b = connect(server), connect(server)
        run_until(server, lambda: len(accepted) == 2, what="2 accepts")
        a.sendall(b"BAD")
        b.sendall(b"ok")
        run_until(server, lambda: len(seen) >= 2, what="both requests")
        assert recv_exact_running(server, b, 2) == b"ok"
        # a was aborted: it goes, and its later data is not delivered
        run_until(server, lambda: len(server.connections) == 1, what="a's close")
        assert peer_is_cut_off(a, server)
        assert [fd for fd, _ in seen].count(accepted[0]) == 1
        a.close()
        b.close()


def test_error_handler_decides():
    calls = []

    def error_handler(fd, exc):
        calls.append((fd, type(exc)))
        server.send(fd, b"400 bad request\n")
        server.close(fd)  # gracefully: the answer still goes

    server = zcn.TcpServer(error_handler=error_handler)
    server.on_data = strict_echo(server)
    with Background(server):
        with connect(server) as sock:
            sock.sendall(b"BAD")
            sock.settimeout(5)
            answer = b""
            while True:
                chunk = sock.recv(100)
                if not chunk:
                    break
                answer += chunk
    assert answer == b"400 bad request\n"
    assert [t for _, t in calls] == [Malformed]


def test_an_error_handler_that_raises_ends_the_loop():
    def error_handler(fd, exc):
        raise RuntimeError("give up") from exc

    server = zcn.TcpServer(error_handler=error_handler)
    server.on_data = strict_echo(server)
    with server:
        with connect(server) as sock:
            sock.sendall(b"BAD")
            with pytest.raises(RuntimeError, match="give up"):
                run_until(server, lambda: False, what="the error handler")


@pytest.mark.parametrize("handler", ["python", "c"])
def test_on_accept_raising_aborts_that_connection(handler, caplog):
    caplog.set_level(logging.ERROR, logger="zcn.server")
    first = []

    def on_accept(fd):
        if not first:
            first.append(fd)
            raise Malformed("refuse the first")

    server = zcn.TcpServer(handler=handler, on_accept=on_accept)
    if handler == "python":
        server.on_data = lambda fd, data: server.send(fd, data)
    with Background(server):
        try:
            refused = connect(server)
        except ConnectionResetError:
            pass  # reset before connect() returned: a loaded machine
        else:
            assert peer_is_cut_off(refused)
            refused.close()
        with connect(server) as sock:
            sock.sendall(b"echo")
            assert recv_exact(sock, 4) == b"echo"
    assert any("on_accept" in r.getMessage() for r in caplog.records), caplog.text


def test_on_close_raising_is_logged_and_the_server_goes_on(caplog):
    caplog.set_level(logging.ERROR, logger="zcn.server")

    def on_close(fd):
        raise Malformed("in on_close")

    server = zcn.TcpServer(on_close=on_close)
    server.on_data = lambda fd, data: server.send(fd, data)
    with Background(server):
        connect(server).close()
        with connect(server) as sock:
            sock.sendall(b"after")
            assert recv_exact(sock, 5) == b"after"
    assert any("on_close" in r.getMessage() for r in caplog.records), caplog.text


def test_keyboard_interrupt_always_propagates():
    def on_data(fd, data):
        raise KeyboardInterrupt

    server = zcn.TcpServer(on_data=on_data)
    with server:
        with connect(server) as sock:
            sock.sendall(b"x")
            with pytest.raises(KeyboardInterrupt):
                run_until(server, lambda: False, what="KeyboardInterrupt")


def test_error_handler_is_checked():
    with pytest.raises(TypeError):
        zcn.TcpServer(error_handler="ignore")
    with zcn.TcpServer(error_handler="raise") as server:
        assert server.error_handler == "raise"
        server.error_handler = None
        with pytest.raises(TypeError):
            server.error_handler = 42


def in_thread(fn, *args, name="intruder"):
    """Runs fn(*args) on another thread; the exception it raised, or None."""
    box = [None]

    def run():
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - handed back to the test
            box[0] = exc

    thread = threading.Thread(target=run, name=name)
    thread.start()
    thread.join(5)
    return box[0]


def test_calls_from_another_thread_name_the_loop_thread():
    # A TCP send from a thread that is not the loop's used to be accepted
    # silently: a data race on the connection's queue.
    accepted = []
    server = zcn.TcpServer(on_accept=accepted.append)
    with server:
        with connect(server):
            run_until(server, lambda: accepted, what="accept")
            fd = accepted[0]
            exc = in_thread(server.send, fd, b"racy")
            assert isinstance(exc, zcn.WrongThreadError) and isinstance(exc, RuntimeError)
            message = str(exc)
            assert "intruder" in message and threading.current_thread().name in message
            for call in (server.close, server.abort, server.shutdown, server.connection_info):
                assert isinstance(in_thread(call, fd), zcn.WrongThreadError), call
            # nothing happened to the connection
            assert fd in server.connections
            assert server.connection_info(fd).bytes_sent == 0
