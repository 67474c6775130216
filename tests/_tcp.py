"""Helpers the zcn.TcpServer tests share: clients on 127.0.0.1, driving a
server on this thread (run_until, recv_exact_running) or on a background
thread (Background), and an echo server."""
from __future__ import annotations

import socket
import threading
import time

import pytest

import zcn


def connect(server, timeout=10.0):
    sock = socket.create_connection(server.address, timeout=timeout)
    return sock


def recv_exact(sock, n):
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(1 << 20, n - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_until_eof(sock):
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def run_until(server, condition, timeout=10.0, what="the condition"):
    """Drives server.run_once on this thread until condition() holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        server.run_once(timeout=0.02)


class Background:
    """Runs server.serve_forever() on a thread, which also closes the server
    (the recommended pattern: the loop thread owns the server)."""

    def __init__(self, server):
        self.server = server
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            self.server.serve_forever()
        except BaseException as exc:  # noqa: B902 - reported by __exit__
            self.error = exc
        finally:
            self.server.server_close()

    def __enter__(self):
        self.thread.start()
        return self.server

    def __exit__(self, *exc):
        self.server.stop()
        self.thread.join(10)
        if self.thread.is_alive():
            pytest.fail("serve_forever did not return after stop()")
        if self.error is not None:
            raise self.error


def wait_stats(server, condition, timeout=5.0):
    """server.stats() once condition(stats) holds (the loop runs on another
    thread: a send completion may be reaped just after the peer has the data)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = server.stats()
        if condition(stats) or time.monotonic() > deadline:
            return stats
        time.sleep(0.005)


def echo_server(**kw):
    server = zcn.TcpServer("127.0.0.1", 0, **kw)

    def on_data(fd, data):
        server.send(fd, data)

    if kw.get("handler") != "c":
        server.on_data = on_data
    return server


def recv_exact_running(server, sock, n, timeout=10.0):
    """Reads n bytes from sock while driving the server on this thread."""
    sock.setblocking(False)
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) < n:
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {len(data)} of {n} bytes")
        server.run_once(timeout=0.01)
        try:
            chunk = sock.recv(n - len(data))
        except BlockingIOError:
            continue
        if not chunk:
            break
        data += chunk
    sock.setblocking(True)
    return data


def readline_within(proc, timeout=10.0):
    """The next line a subprocess (text mode) prints, without its newline;
    kills it and fails the test if none comes within ``timeout`` seconds.
    Reads in a thread, so lines already buffered by an earlier read count
    (a select() on the pipe would not see them)."""
    box = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not box:
        proc.kill()
        reader.join(5)
        pytest.fail(f"no output within {timeout} s; stderr: {proc.stderr.read()}")
    return box[0].rstrip("\n")
