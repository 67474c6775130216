"""`python -m zcn resp`: the RESP2 key/value store (examples/resp_server.c),
driven by redis-cli, redis-benchmark and raw sockets on 127.0.0.1."""
from __future__ import annotations

import signal
import socket
import subprocess
import time

import pytest

from _demo_proc import (DemoServer, flood_without_reading, read_exactly_count,
                        read_until_closed, require_tool)

pytestmark = pytest.mark.timeout(60)


def cmd(*args):
    """A command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


@pytest.fixture(scope="module")
def resp():
    server = DemoServer("resp", "--keys-max", "100000", "--bulk-max-bytes", "200000",
                        "--args-max", "64", "--key-max-bytes", "64")
    yield server
    server.kill()


def roundtrip(server, payload, expect_count, marker=b"\r\n"):
    with server.connect() as sock:
        sock.sendall(payload)
        return read_exactly_count(sock, marker, expect_count)


def redis_cli(server, *args):
    cli = require_tool("redis-cli", "redis-tools")
    proc = subprocess.run([cli, "-p", str(server.port), *args], capture_output=True,
                          text=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_redis_cli(resp):
    assert redis_cli(resp, "ping") == "PONG\n"
    assert redis_cli(resp, "set", "cli:a", "hello world") == "OK\n"
    assert redis_cli(resp, "get", "cli:a") == "hello world\n"
    assert redis_cli(resp, "incr", "cli:n") == "1\n"
    assert redis_cli(resp, "incr", "cli:n") == "2\n"
    assert redis_cli(resp, "del", "cli:a", "cli:n", "cli:none") == "2\n"
    assert redis_cli(resp, "get", "cli:a") == "\n"  # nil
    assert redis_cli(resp, "echo", "x y") == "x y\n"
    assert redis_cli(resp, "config", "get", "save") == "save\n\n"
    assert "unknown command" in redis_cli(resp, "flushall")
    assert "wrong number of arguments for 'get'" in redis_cli(resp, "get")
    assert redis_cli(resp, "set", "cli:s", "abc") == "OK\n"
    assert "not an integer" in redis_cli(resp, "incr", "cli:s")


def test_redis_benchmark(resp):
    bench = require_tool("redis-benchmark", "redis-tools")
    proc = subprocess.run([bench, "-p", str(resp.port), "-t", "set,get,incr,ping", "-n", "2000",
                           "-c", "5", "-P", "16", "-r", "1000", "--csv"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith('"')]
    assert len(rows) == 1 + 5, proc.stdout  # the header, PING_INLINE, PING_MBULK, SET, GET, INCR
    assert "error" not in (proc.stdout + proc.stderr).lower(), proc.stdout + proc.stderr


def test_pipelined_commands_in_one_write(resp):
    stream = b"".join(cmd("SET", f"p:{i}", f"v{i}") + cmd("GET", f"p:{i}") for i in range(200))
    data = roundtrip(resp, stream, 200, marker=b"+OK\r\n")
    data = data + b""  # the GETs' answers follow each +OK
    with resp.connect() as sock:
        sock.sendall(b"".join(cmd("GET", f"p:{i}") for i in range(200)))
        got = read_exactly_count(sock, b"\r\n", 400)
    assert got == b"".join(b"$%d\r\nv%d\r\n" % (len(f"v{i}"), i) for i in range(200))


def test_inline_commands(resp):
    data = roundtrip(resp, b"PING\r\nSET in:a 41\r\nINCR in:a\r\nGET in:a\n \r\nECHO  hi\r\n",
                     6)
    assert data == b"+PONG\r\n+OK\r\n:42\r\n$2\r\n42\r\n$2\r\nhi\r\n"


def test_byte_by_byte_trickle(resp):
    value = b"x" * 300
    stream = cmd("SET", "tr:k", value) + cmd("GET", "tr:k") + b"PING\r\n"
    with resp.connect() as sock:
        for i in range(len(stream)):
            sock.send(stream[i:i + 1])
            time.sleep(0.0005)
        data = read_exactly_count(sock, b"\r\n", 4)
    assert data == b"+OK\r\n$300\r\n" + value + b"\r\n+PONG\r\n"


def test_split_at_every_byte(resp):
    value = b"0123456789" * 5
    with resp.connect() as sock:
        for cut in range(1, len(cmd("SET", "sp:key", value)) + 1):
            v = value[:-1] + bytes([48 + cut % 10])
            pair = cmd("SET", "sp:key", v) + cmd("GET", "sp:key")
            sock.sendall(pair[:cut])
            time.sleep(0.002)
            sock.sendall(pair[cut:])
            got = read_exactly_count(sock, b"\r\n", 3)
            assert got == b"+OK\r\n$50\r\n" + v + b"\r\n", cut


def test_big_value_across_many_receives(resp):
    value = bytes(range(256)) * 700  # 179200 bytes: many receive buffers
    with resp.connect() as sock:
        sock.sendall(cmd("SET", "big", value) + cmd("GET", "big"))
        got = read_exactly_count(sock, b"\r\n", 3)
    assert got == b"+OK\r\n$179200\r\n" + value + b"\r\n"


def test_a_set_cut_short_leaves_no_trace(resp):
    with resp.connect() as sock:
        sock.sendall(cmd("SET", "cut:k", "old"))
        read_exactly_count(sock, b"+OK\r\n", 1)
        sock.sendall(b"*3\r\n$3\r\nSET\r\n$5\r\ncut:k\r\n$100000\r\n" + b"n" * 50000)
        time.sleep(0.05)
    assert roundtrip(resp, cmd("GET", "cut:k"), 2) == b"$3\r\nold\r\n"


MALFORMED = [
    (b"!x\r\n", b"unexpected type byte"),
    (b"$3\r\nGET\r\n", b"unexpected type byte"),
    (b"*1\r\n$-5\r\n", b"invalid bulk length"),
    (b"*1\r\n$-1\r\n", b"invalid bulk length"),
    (b"*1\r\n$200001\r\n", b"invalid bulk length"),  # over --bulk-max-bytes
    (b"*1\r\n$18446744073709551615\r\n", b"invalid bulk length"),
    (b"*1\r\n$99999999999999999999999999\r\n", b"invalid bulk length"),
    (b"*9223372036854775807\r\n", b"invalid multibulk length"),
    (b"*65\r\n", b"invalid multibulk length"),  # over --args-max
    (b"*-2\r\n", b"invalid multibulk length"),
    (b"*x\r\n", b"invalid multibulk length"),
    (b"*\r\n", b"invalid multibulk length"),
    (b"*1\n", b"invalid multibulk length"),
    (b"*1\r\r", b"expected LF"),
    (b"*2\r\n$3\r\nGET\r\n:1\r\n", b"expected '$'"),
    (b"*1\r\n$4\r\nPINGxx", b"expected CRLF"),
    (b"*1\r\n$4\r\nPING\rx", b"expected CRLF"),
    (b"SET k " + b"v" * 2000 + b"\r\n", b"too big inline request"),
]


@pytest.mark.parametrize("bad, why", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_input_gets_an_error_and_a_close(resp, bad, why):
    with resp.connect() as sock:
        sock.sendall(cmd("PING") + bad + cmd("PING"))
        data = read_until_closed(sock)
    assert data.startswith(b"+PONG\r\n-ERR Protocol error: "), data
    assert why in data and data.endswith(b"\r\n") and data.count(b"\r\n") == 2, data


def test_truncated_then_closed(resp):
    for partial in (b"*3\r\n$3\r\nSET\r\n$2\r\ntk\r\n$10\r\nabc", b"*2\r\n$3\r\nGE", b"*",
                    b"PIN", b"*1\r\n$4\r\nPING\r"):
        with resp.connect() as sock:
            sock.sendall(partial)
        assert roundtrip(resp, cmd("GET", "tk"), 1) == b"$-1\r\n"


def test_errors_that_keep_the_connection(resp):
    payload = (cmd("NOSUCH", "a") + cmd("GET") + cmd("SET", "k") + cmd("SET", "k", "v", "EX", 1) +
               cmd("GET", "k" * 65) + cmd("SET", "big:int", "9223372036854775807") +
               cmd("INCR", "big:int") + cmd("SET", "z", "012") + cmd("INCR", "z") +
               cmd("a" * 40) + cmd("PING"))
    data = roundtrip(resp, payload, 11)
    lines = data.split(b"\r\n")[:-1]
    assert lines[0] == b"-ERR unknown command 'NOSUCH'"
    assert lines[1] == b"-ERR wrong number of arguments for 'GET' command"
    assert lines[2] == b"-ERR wrong number of arguments for 'SET' command"
    assert lines[3] == b"-ERR syntax error"
    assert lines[4].startswith(b"-ERR key or message too long")
    assert lines[5] == b"+OK"
    assert lines[6] == b"-ERR increment or decrement would overflow"
    assert lines[7] == b"+OK"
    assert lines[8] == b"-ERR value is not an integer or out of range"
    assert lines[9].startswith(b"-ERR unknown command 'aaaaaaaaaaaaaaaa...'")
    assert lines[10] == b"+PONG"


def test_store_limits_answer_oom():
    server = DemoServer("resp", "--keys-max", "10", "--memory-max-bytes", "4096")
    try:
        with server.connect() as sock:
            sock.sendall(b"".join(cmd("SET", f"k{i}", "v") for i in range(11)))
            data = read_exactly_count(sock, b"\r\n", 11)
            assert data.split(b"\r\n")[:11] == [b"+OK"] * 10 + [
                b"-OOM command not allowed: the store is full (keys_max or memory_max_bytes)"]
            sock.sendall(cmd("SET", "k0", "overwrite") + cmd("DEL", "k1") + cmd("SET", "k10", "v")
                         + cmd("SET", "k2", "m" * 5000) + cmd("GET", "k2") + cmd("INCR", "new"))
            data = read_exactly_count(sock, b"\r\n", 7)
            lines = data.split(b"\r\n")
            assert lines[:3] == [b"+OK", b":1", b"+OK"]
            assert lines[3].startswith(b"-OOM") and lines[4:6] == [b"$1", b"v"], lines
            assert lines[6].startswith(b"-OOM")
        rc, out, err = server.finish()
    finally:
        server.kill()
    assert rc == 0, err
    assert "keys=10" in out and "limit_errors=3" in out, out


def test_a_peer_that_never_reads_is_bounded_and_others_are_served(resp):
    with resp.connect() as sock:
        sock.sendall(cmd("SET", "hostile:v", b"h" * 100000))
        read_exactly_count(sock, b"+OK\r\n", 1)
    rss_before = resp.rss_bytes()
    hostile = resp.connect()
    hostile.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    gets = cmd("GET", "hostile:v") * 100  # 100 KB of answer per 2.4 KB asked
    try:
        flood_without_reading(hostile, gets, seconds=10)
        assert roundtrip(resp, cmd("PING"), 1) == b"+PONG\r\n"
        growth = resp.rss_bytes() - rss_before
        assert growth < 64 << 20, growth
    finally:
        hostile.close()
    assert roundtrip(resp, cmd("GET", "hostile:v"), 2).startswith(b"$100000\r\nhhh")


def test_sigterm_stops_and_prints_the_counters():
    server = DemoServer("resp")
    try:
        roundtrip(server, cmd("SET", "a", "1") + cmd("GET", "a"), 3)
        rc, out, err = server.finish(signal.SIGTERM)
    finally:
        server.kill()
    assert rc == 0, err
    assert "requests=2 " in out and "keys=1 " in out, out
