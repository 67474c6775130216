"""`python -m zcn http`: the HTTP/1.1 demo server (examples/http_server.c),
driven by curl, wrk and raw sockets on 127.0.0.1."""
from __future__ import annotations

import re
import socket
import subprocess
import time

import pytest

from _demo_proc import (DemoServer, flood_without_reading, read_exactly_count,
                        read_until_closed, require_tool)

pytestmark = pytest.mark.timeout(60)

BODY = b"Hello, world!"
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: test\r\nAccept: */*\r\n\r\n"
ANSWER = re.compile(rb"HTTP/1\.1 200 OK\r\nServer: zcn\r\nDate: [^\r]+ GMT\r\n"
                    rb"Content-Type: text/plain\r\nContent-Length: 13\r\n"
                    rb"(Connection: (?:close|keep-alive)\r\n)?\r\nHello, world!")


@pytest.fixture(scope="module")
def http():
    server = DemoServer("http", "--header-max-bytes", "4096", "--body-max-bytes", "65536")
    yield server
    server.kill()


def answers(data):
    """The answers in data, checking that nothing else is there."""
    found = list(ANSWER.finditer(data))
    assert b"".join(m.group(0) for m in found) == data, data[:500]
    return found


def test_curl_keep_alive_reuses_the_connection(http):
    curl = require_tool("curl", "curl")
    url = f"http://127.0.0.1:{http.port}/"
    proc = subprocess.run([curl, "-sv", url, url, url], capture_output=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == BODY * 3
    assert proc.stderr.count(b"Re-using existing connection") == 2, proc.stderr
    assert b"Content-Type: text/plain" in proc.stderr


def test_curl_http10_and_connection_close(http):
    curl = require_tool("curl", "curl")
    url = f"http://127.0.0.1:{http.port}/x?y=1"
    for extra in (["--http1.0"], ["-H", "Connection: close"]):
        proc = subprocess.run([curl, "-sv", *extra, url], capture_output=True, timeout=20)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == BODY
        assert b"Connection: close" in proc.stderr


def test_wrk(http):
    wrk = require_tool("wrk", "wrk")
    proc = subprocess.run([wrk, "-t1", "-c20", "-d1s", f"http://127.0.0.1:{http.port}/"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    requests = int(re.search(r"(\d+) requests in", proc.stdout).group(1))
    assert requests > 100, proc.stdout
    assert "Non-2xx" not in proc.stdout and "Socket errors" not in proc.stdout, proc.stdout


def test_100_pipelined_requests_in_one_write(http):
    with http.connect() as sock:
        sock.sendall(REQUEST * 100)
        data = read_exactly_count(sock, BODY, 100)
        assert len(answers(data)) == 100
        sock.sendall(REQUEST)  # still open
        assert len(answers(read_exactly_count(sock, BODY, 1))) == 1


def test_byte_by_byte_trickle(http):
    stream = REQUEST + b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello" + REQUEST
    with http.connect() as sock:
        for i in range(len(stream)):
            sock.send(stream[i:i + 1])
            time.sleep(0.001)
        data = read_exactly_count(sock, BODY, 3)
        assert len(answers(data)) == 3


def test_split_at_every_byte(http):
    pair = REQUEST + b"GET /2 HTTP/1.1\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nabc"
    with http.connect() as sock:
        for cut in range(1, len(pair)):
            sock.sendall(pair[:cut])
            time.sleep(0.002)
            sock.sendall(pair[cut:])
            assert len(answers(read_exactly_count(sock, BODY, 2))) == 2, cut


def test_connection_close_answers_then_closes(http):
    with http.connect() as sock:
        sock.sendall(REQUEST + b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n" + REQUEST)
        data = read_until_closed(sock)
    found = answers(data)
    assert len(found) == 2  # what followed the close was not answered
    assert found[1].group(1) == b"Connection: close\r\n"


@pytest.mark.parametrize("request_, stays_open", [
    (b"GET / HTTP/1.0\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\nConnection: Keep-Alive, Upgrade\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\nconnection: upgrade, CLOSE\r\n\r\n", False),
])
def test_keep_alive_rules(http, request_, stays_open):
    with http.connect() as sock:
        sock.sendall(request_)
        if not stays_open:
            assert len(answers(read_until_closed(sock))) == 1
            return
        assert len(answers(read_exactly_count(sock, BODY, 1))) == 1
        sock.sendall(REQUEST)
        assert len(answers(read_exactly_count(sock, BODY, 1))) == 1


MALFORMED = [
    b"GARBAGE\r\n\r\n",
    b"GET /\r\n\r\n",
    b"GET  / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/2.0\r\n\r\n",
    b"GET / HTTPS/1.1\r\n\r\n",
    b"GET / HTTP/1.1\rX\n\r\n",
    b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
    b"GET / HTTP/1.1\r\n folded: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: \r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    b"GET / HTTP/1.1\r\nContent-Length: 65537\r\n\r\n",  # over --body-max-bytes
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"\x00\x01\x02\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
]


@pytest.mark.parametrize("bad", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_request_gets_400_and_close(http, bad):
    with http.connect() as sock:
        sock.sendall(REQUEST + bad + REQUEST)
        data = read_until_closed(sock)
    first = ANSWER.match(data)
    assert first is not None, data[:300]  # the good request before it is answered first
    rest = data[first.end():]
    assert rest.startswith(b"HTTP/1.1 400 Bad Request\r\n"), rest[:300]
    assert b"Connection: close\r\n" in rest and rest.endswith(b"\r\n\r\n")


def test_huge_header_gets_400(http):
    big = b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n"  # over 4096
    with http.connect() as sock:
        sock.sendall(big)
        assert read_until_closed(sock).startswith(b"HTTP/1.1 400 Bad Request\r\n")
    many = b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 1000 + b"\r\n"  # many small ones, slowly
    with http.connect() as sock:
        for i in range(0, len(many), 700):
            try:
                sock.sendall(many[i:i + 700])
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.002)
        assert read_until_closed(sock).startswith(b"HTTP/1.1 400 Bad Request\r\n")


def test_body_is_skipped_across_receives(http):
    with http.connect() as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nContent-Length: 60000\r\n\r\n" + b"G" * 30000)
        time.sleep(0.01)
        sock.sendall(b"G" * 30000 + REQUEST)
        assert len(answers(read_exactly_count(sock, BODY, 2))) == 2


def test_a_peer_that_never_reads_is_bounded_and_others_are_served(http):
    rss_before = http.rss_bytes()
    hostile = http.connect()
    hostile.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    tiny = b"GET / HTTP/1.1\r\n\r\n" * 1000  # ~7x amplification
    try:
        sent = flood_without_reading(hostile, tiny, seconds=10)
        with http.connect() as other:
            other.sendall(REQUEST)
            assert len(answers(read_exactly_count(other, BODY, 1))) == 1
        growth = http.rss_bytes() - rss_before
        assert growth < 64 << 20, (growth, sent)
    finally:
        hostile.close()
    with http.connect() as other:
        other.sendall(REQUEST * 10)
        assert len(answers(read_exactly_count(other, BODY, 10))) == 10


def test_sigint_stops_and_prints_the_counters():
    server = DemoServer("http")
    try:
        with server.connect() as sock:
            sock.sendall(REQUEST * 3 + b"BAD\r\n\r\n")
            read_until_closed(sock)
        import signal

        rc, out, err = server.finish(signal.SIGINT)
    finally:
        server.kill()
    assert rc == 0, err
    assert "requests=3 protocol_errors=1" in out, out
