"""`python -m zcn http|resp --port 0 ...` in a subprocess, for the demo
servers' tests (test_demo_http.py, test_demo_resp.py), and raw-socket
helpers they share."""
from __future__ import annotations

import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import TESTS_DIR, require_loop, zcn_subprocess_env

LISTENING = re.compile(r"zcn (http|resp) listening on (\S+):(\d+)$")


class DemoServer:
    def __init__(self, kind, *args):
        require_loop()
        self.kind = kind
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zcn", kind, "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=zcn_subprocess_env(), cwd=TESTS_DIR)
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        line = self.proc.stdout.readline().rstrip("\n") if ready else ""
        match = LISTENING.match(line)
        if match is None:
            self.kill()
            pytest.fail(f"unexpected first line {line!r}; stderr: {self.proc.stderr.read()}")
        self.port = int(match.group(3))

    def connect(self, timeout=10.0):
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def rss_bytes(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def finish(self, sig=signal.SIGTERM):
        """Sends sig; (exit code, stdout after the banner, stderr)."""
        self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail("the server did not exit after the signal")
        return self.proc.returncode, out, err

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def require_tool(name, package):
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not found (Debian package {package})")
    return path


def read_until_closed(sock, timeout=10.0):
    """Everything the peer sends until it closes (a reset counts as a close)."""
    sock.settimeout(timeout)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    else:
        pytest.fail(f"the peer did not close within {timeout} s")
    return b"".join(chunks)


def read_exactly_count(sock, marker, count, timeout=10.0):
    """Reads until `marker` occurred `count` times; returns all that was read."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while data.count(marker) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"got {data.count(marker)} of {count} answers: {data[-300:]!r}")
        chunk = sock.recv(65536)
        if not chunk:
            pytest.fail(f"closed after {data.count(marker)} of {count} answers: {data[-300:]!r}")
        data += chunk
    return data


def flood_without_reading(sock, payload, seconds):
    """Writes payload over and over without reading, until the kernel's
    buffers are full for a while or the peer gives up; the bytes written."""
    sock.setblocking(False)
    sent = 0
    deadline = time.monotonic() + seconds
    stalled_since = None
    while time.monotonic() < deadline:
        try:
            sent += sock.send(payload)
            stalled_since = None
        except BlockingIOError:
            now = time.monotonic()
            stalled_since = stalled_since or now
            if now - stalled_since > 1.0:
                break
            select.select([], [sock], [], 0.05)
        except (BrokenPipeError, ConnectionResetError):
            break
    return sent
