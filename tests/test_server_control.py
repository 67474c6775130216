"""Half-close, shutdown, abort, connection_info and the send limits of
zcn.TcpServer, and the examples of docs/BUFFERS.md (issue 11). A peer's FIN ends its stream, not the connection: with on_eof set the
connection stays open for sending until the application closes it, so an
answer computed later (a proxy waiting for its upstream) still reaches the
peer. Before, the FIN closed the connection and the late reply was refused
with ClosedError and lost (seen with `echo hi | nc -N` through a proxy)."""
from __future__ import annotations

import errno
import shutil
import socket
import subprocess
import time

import pytest

import zcn

from _tcp import Background, connect, recv_exact, recv_until_eof, run_until
from conftest import doc_blocks, require_loop, run_python_block

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def _uring():
    require_loop()


@pytest.mark.parametrize("handler", ["python", "c"])
def test_twenty_half_closed_requests_answered_on_a_later_turn(handler):
    requests = {}     # fd -> request bytes (handler="python")
    finished = []     # fds whose peer sent FIN

    def on_data(fd, data):
        requests[fd] = requests.get(fd, b"") + bytes(data)

    server = zcn.TcpServer(handler=handler, on_eof=finished.append)
    if handler == "python":
        server.on_data = on_data
    with server:
        socks = [connect(server) for _ in range(20)]
        for i, sock in enumerate(socks):
            sock.sendall(b"request %d" % i)
            sock.shutdown(socket.SHUT_WR)
        run_until(server, lambda: len(finished) == 20, what="20 EOFs")
        for _ in range(5):  # later loop turns: the connections stay open
            server.run_once(timeout=0.01)
        assert len(server.connections) == 20
        for fd in finished:
            info = server.connection_info(fd)
            assert info.eof and not info.closing
            if handler == "python":
                server.send(fd, b"answer to " + requests[fd])
            else:
                server.send(fd, b"answer")
            server.close(fd)
        answers = []
        for sock in socks:
            sock.setblocking(False)
        deadline = time.monotonic() + 10
        pending = list(socks)
        got = {sock: b"" for sock in socks}
        while pending and time.monotonic() < deadline:
            server.run_once(timeout=0.01)
            for sock in list(pending):
                try:
                    chunk = sock.recv(100)
                except BlockingIOError:
                    continue
                if chunk:
                    got[sock] += chunk
                else:
                    pending.remove(sock)
                    answers.append(got[sock])
        assert not pending, "some connections were not closed after their answer"
        for i, sock in enumerate(socks):
            # handler="c" echoed the request at once, the answer came later
            want = b"answer to request %d" % i if handler == "python" else b"request %d" % i + b"answer"
            assert got[sock] == want
            sock.close()
        run_until(server, lambda: not server.connections, what="the closes")
        assert server.stats().eofs == 20


def test_without_on_eof_a_fin_closes_after_the_replies():
    # The default stays: the connection closes once the replies queued by
    # then are sent (nc -N, HTTP/1.0 style requests).
    server = zcn.TcpServer()
    server.on_data = lambda fd, data: server.send(fd, data)
    with Background(server):
        for i in range(20):
            with connect(server) as sock:
                sock.sendall(b"request %d" % i)
                sock.shutdown(socket.SHUT_WR)
                assert recv_until_eof(sock) == b"request %d" % i


def test_shutdown_sends_fin_and_keeps_receiving():
    received = []
    closed = []
    accepted = []
    server = zcn.TcpServer(on_accept=accepted.append, on_close=closed.append,
                           on_data=lambda fd, data: received.append(bytes(data)),
                           on_eof=lambda fd: None)
    with server:
        sock = connect(server)
        run_until(server, lambda: accepted, what="accept")
        fd = accepted[0]
        server.send(fd, b"last words")
        server.shutdown(fd)
        with pytest.raises(zcn.ClosedError, match="shut down"):
            server.send(fd, b"more")
        with pytest.raises(zcn.ClosedError):
            server.shutdown(fd)
        sock.settimeout(0.01)
        data = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # our FIN arrives after the data
            server.run_once(timeout=0.01)
            try:
                chunk = sock.recv(100)
            except socket.timeout:
                continue
            if not chunk:
                break
            data += chunk
        assert data == b"last words"
        assert server.connection_info(fd).shut_down
        sock.sendall(b"the peer still talks")
        run_until(server, lambda: b"".join(received) == b"the peer still talks",
                  what="data after our FIN")
        sock.shutdown(socket.SHUT_WR)  # both directions done: it closes by itself
        run_until(server, lambda: closed == [fd], what="the close")
        sock.close()


def test_abort_resets_the_peer_and_returns_the_buffers():
    accepted = []
    server = zcn.TcpServer(on_accept=accepted.append, buffer_size=4096,
                           send_timeout=None)
    with server:
        sock = connect(server)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        run_until(server, lambda: accepted, what="accept")
        fd = accepted[0]
        chunk = b"q" * 4096
        while True:  # fill the peer's window, the kernel's buffers, then our queue
            try:
                server.send(fd, chunk)
            except zcn.QueueFullError:
                break
            server.run_once(timeout=0)
        held = server.connection_info(fd).buffers_held
        assert held > 0
        server.abort(fd)
        with pytest.raises(zcn.ClosedError):
            server.abort(fd)
        run_until(server, lambda: not server.connections, what="the close")
        server.run_once(timeout=0)  # the fd is the caller's until the next poll
        stats = server.stats()
        assert stats.buffers_held == 0 and stats.aborts == 1
        sock.settimeout(5)
        with pytest.raises(ConnectionResetError):
            while sock.recv(65536):
                pass
        sock.close()


def test_connection_info():
    accepted = []
    server = zcn.TcpServer(on_accept=accepted.append)
    server.on_data = lambda fd, data: server.send(fd, data)
    with server:
        with connect(server) as sock:
            run_until(server, lambda: accepted, what="accept")
            fd = accepted[0]
            sock.sendall(b"12345")
            run_until(server, lambda: server.connection_info(fd).bytes_sent == 5,
                      what="the echo")
            info = server.connection_info(fd)
            assert info.bytes_received == 5 and info.queued_bytes == 0
            assert info.buffers_held == 0 and info.buffer_cap > 0
            assert not (info.eof or info.closing or info.waiting)
            assert recv_exact(sock, 5) == b"12345"
        with pytest.raises(zcn.ClosedError):
            server.connection_info(12345)
        with pytest.raises(TypeError):
            server.connection_info("3")


def test_a_send_larger_than_the_queue_limit_is_refused_whole():
    # One copying send of 15 MiB to a connection limited to 1 MiB used to be
    # queued whole and take 789 of 1024 buffers.
    accepted = []
    server = zcn.TcpServer(on_accept=accepted.append)
    with server:
        with connect(server):
            run_until(server, lambda: accepted, what="accept")
            with pytest.raises(OSError) as info:
                server.send(accepted[0], bytes(15 << 20))
            assert info.value.errno == errno.EMSGSIZE
            assert "send_queue_max_bytes" in str(info.value)
            stats = server.stats()
            assert stats.buffers_held == 0 and server.queued_bytes(accepted[0]) == 0


def test_policy_arguments_are_checked():
    with pytest.raises(ValueError):
        zcn.TcpServer(buffer_pool_size=8, buffer_reserve=8)
    with pytest.raises(ValueError):
        zcn.TcpServer(send_timeout=0)
    with pytest.raises(TypeError):
        zcn.TcpServer(send_timeout="1")
    with pytest.raises(ValueError):
        zcn.TcpServer(conn_buffers_hard_max=0)
    with zcn.TcpServer(buffer_pool_size=64, buffer_reserve=16, send_timeout=float("inf"),
                       conn_buffers_hard_max=10) as server:
        assert server.stats().buffer_budget == 48


@pytest.mark.skipif(shutil.which("nc") is None, reason="nc (netcat-openbsd) not installed")
def test_nc_half_close_through_a_late_answer():
    # `echo hi | nc -N`: the request and its FIN come together; the answer
    # is computed later (here: on the next loop turn after the EOF).
    pending = []
    server = zcn.TcpServer(on_eof=pending.append)
    with server:
        proc = subprocess.Popen(["nc", "-N", "127.0.0.1", str(server.port)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        proc.stdin.write(b"hi\n")
        proc.stdin.close()
        run_until(server, lambda: pending, what="the EOF")
        server.run_once(timeout=0.05)
        server.send(pending[0], b"late answer\n")
        server.close(pending[0])
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            server.run_once(timeout=0.01)
        out = proc.stdout.read()
        proc.wait(5)
    assert out == b"late answer\n"


def test_buffers_doc_example_runs():
    (code,) = doc_blocks("BUFFERS.md")
    proc = run_python_block(code)
    assert proc.returncode == 0, proc.stderr
    assert "paused: True" in proc.stdout and "the peer saw a reset" in proc.stdout, proc.stdout
