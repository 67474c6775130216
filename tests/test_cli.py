"""The command line: `python -m zcn echo` with both handlers, driven by a
socket, `nc` and `socat`; SIGINT/SIGTERM end it with exit 0 and a stats
line; `python -m zcn version`; examples/tcp_echo.py."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _tcp import readline_within, recv_until_eof
from conftest import TESTS_DIR, require_loop, zcn_subprocess_env

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"^zcn echo listening on (\S+):(\d+) \(handler=(c|python)\)$")
BACKEND_LINE = re.compile(r"^backend: (io_uring|epoll), .+$")
STATS = re.compile(r"^zcn echo stats: connections_accepted=(\d+) .*bytes_received=(\d+) "
                   r"bytes_sent=(\d+) ")

pytestmark = pytest.mark.timeout(30)


def _env():
    return zcn_subprocess_env()




class Echo:
    """`python -m zcn echo --port 0 ...` in a subprocess."""

    def __init__(self, *args):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zcn", "echo", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=TESTS_DIR)
        line = readline_within(self.proc)
        match = LISTENING.match(line)
        if match is None:
            self.proc.kill()
            pytest.fail(f"unexpected first line {line!r}; stderr: {self.proc.stderr.read()}")
        self.host, self.port, self.handler = match.group(1), int(match.group(2)), match.group(3)
        # the second line says which backend and why (docs/BACKENDS.md);
        # printed right after the first, so it may already sit in the
        # pipe's read buffer, where select() would not see it
        self.backend_line = self.proc.stdout.readline().rstrip("\n")
        if not BACKEND_LINE.match(self.backend_line):
            self.proc.kill()
            pytest.fail(f"unexpected second line {self.backend_line!r}")

    def finish(self, sig=signal.SIGINT):
        """Sends sig; returns (exit code, stdout rest, stderr)."""
        self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail("the server did not exit after the signal")
        return self.proc.returncode, out, err

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def echo(request):
    require_loop()
    server = Echo(*request.param)
    yield server
    server.kill()


def _socket_echo(port, payload):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return recv_until_eof(sock)


HANDLERS = [("--handler", "c"), ("--handler", "python")]


@pytest.mark.parametrize("echo", HANDLERS, indirect=True, ids=["c", "python"])
def test_echo_with_socket_nc_and_socat_then_sigint(echo):
    if echo.host != "127.0.0.1" or echo.handler not in ("c", "python"):
        pytest.fail(f"listening line: {echo.host} {echo.handler}")
    payload = os.urandom(200_000)
    if _socket_echo(echo.port, payload) != payload:
        pytest.fail("socket echo differs")
    accepted = 1
    if shutil.which("nc"):
        out = subprocess.run(["nc", "-N", "127.0.0.1", str(echo.port)], input=b"via nc\n",
                             capture_output=True, timeout=10).stdout
        if out != b"via nc\n":
            pytest.fail(f"nc got {out!r}")
        accepted += 1
    if shutil.which("socat"):
        out = subprocess.run(["socat", "-t", "5", "-", f"TCP:127.0.0.1:{echo.port}"],
                             input=b"via socat\n", capture_output=True, timeout=10).stdout
        if out != b"via socat\n":
            pytest.fail(f"socat got {out!r}")
        accepted += 1
    code, out, err = echo.finish(signal.SIGINT)
    if code != 0:
        pytest.fail(f"exit {code}; stderr: {err}")
    lines = out.strip().splitlines()
    match = STATS.match(lines[-1]) if lines else None
    if match is None or len(lines) != 1:
        pytest.fail(f"expected one stats line, got {out!r}")
    total = len(payload) + 7 * (accepted >= 2) + 10 * (accepted >= 3)
    if (int(match.group(1)), int(match.group(2)), int(match.group(3))) != (accepted, total, total):
        pytest.fail(f"stats line {lines[-1]!r}: expected {accepted} connections, {total} bytes")


@pytest.mark.parametrize("echo", HANDLERS, indirect=True, ids=["c", "python"])
def test_sigterm_exits_zero(echo):
    if _socket_echo(echo.port, b"x") != b"x":
        pytest.fail("echo")
    code, out, err = echo.finish(signal.SIGTERM)
    if code != 0 or not STATS.match(out.strip()):
        pytest.fail(f"exit {code}, out {out!r}, err {err!r}")


@pytest.mark.parametrize("echo", [("--handler", "python", "--buffer-size", "4096",
                                   "--buffer-pool-size", "64", "--connections-max", "8")],
                         indirect=True, ids=["small"])
def test_echo_options_and_many_connections(echo):
    socks = [socket.create_connection(("127.0.0.1", echo.port), timeout=10) for _ in range(6)]
    try:
        for i, sock in enumerate(socks):
            sock.sendall(b"%d" % i * 5000)  # more than one 4 KiB buffer each
        for i, sock in enumerate(socks):
            want = b"%d" % i * 5000
            got = b""
            while len(got) < len(want):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += chunk
            if got != want:
                pytest.fail(f"connection {i}: {len(got)} bytes")
    finally:
        for sock in socks:
            sock.close()
    code, _, err = echo.finish()
    if code != 0:
        pytest.fail(f"exit {code}: {err}")


def test_port_in_use_fails_cleanly():
    require_loop()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "zcn", "echo", "--port", str(port)],
                              capture_output=True, text=True, env=_env(), cwd=TESTS_DIR, timeout=20)
    if proc.returncode != 1 or "Address already in use" not in proc.stderr:
        pytest.fail(f"exit {proc.returncode}, stderr {proc.stderr!r}")


def test_bad_arguments_are_usage_errors():
    for args in (["echo", "--handler", "rust"], ["echo", "--port", "x"], []):
        proc = subprocess.run([sys.executable, "-m", "zcn", *args], capture_output=True,
                              text=True, env=_env(), cwd=TESTS_DIR, timeout=20)
        if proc.returncode != 2 or "usage" not in proc.stderr:
            pytest.fail(f"{args}: exit {proc.returncode}, stderr {proc.stderr!r}")


def test_help_lists_the_commands():
    proc = subprocess.run([sys.executable, "-m", "zcn", "--help"], capture_output=True,
                          text=True, env=_env(), cwd=TESTS_DIR, timeout=20)
    if proc.returncode != 0 or "echo" not in proc.stdout or "version" not in proc.stdout:
        pytest.fail(proc.stdout + proc.stderr)


def test_every_command_has_help():
    # `bench --help` once crashed in argparse: a help text held a bare "%".
    for cmd in ("echo", "udp-echo", "proxy", "http", "resp", "bench", "version"):
        proc = subprocess.run([sys.executable, "-m", "zcn", cmd, "--help"], capture_output=True,
                              text=True, env=_env(), cwd=TESTS_DIR, timeout=20)
        if proc.returncode != 0 or "usage" not in proc.stdout or proc.stderr:
            pytest.fail(f"{cmd} --help: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")


def test_version():
    proc = subprocess.run([sys.executable, "-m", "zcn", "version"], capture_output=True,
                          text=True, env=_env(), cwd=TESTS_DIR, timeout=20)
    import zcn
    if proc.returncode != 0 or f"zcn {zcn.__version__}" not in proc.stdout:
        pytest.fail(proc.stdout + proc.stderr)
    if not re.search(r"^io_uring: (available|unavailable)", proc.stdout, re.M):
        pytest.fail(proc.stdout)


def test_example_tcp_echo():
    require_loop()
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "tcp_echo.py"), "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())
    try:
        line = readline_within(proc)
        match = re.match(r"^echo server on 127\.0\.0\.1:(\d+)$", line)
        if match is None:
            pytest.fail(f"first line {line!r}")
        port = int(match.group(1))
        if _socket_echo(port, b"example") != b"example":
            pytest.fail("example echo")
        if shutil.which("nc"):
            out = subprocess.run(["nc", "-N", "127.0.0.1", str(port)], input=b"nc\n",
                                 capture_output=True, timeout=10).stdout
            if out != b"nc\n":
                pytest.fail(f"nc got {out!r}")
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        if proc.returncode != 0 or "ServerStats(" not in out:
            pytest.fail(f"exit {proc.returncode}; out {out!r}; err {err!r}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
