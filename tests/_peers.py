"""Client-side socket helpers for the tests of the server in its own process
(tests/_server_proc.py): test_server_robust.py and test_hostile.py."""
from __future__ import annotations

import socket
import struct
import threading


def connect(port, timeout=10.0, rcvbuf=None, sndbuf=None):
    """A TCP_NODELAY connection to 127.0.0.1:port. rcvbuf and sndbuf set
    SO_RCVBUF and SO_SNDBUF before connecting (so the window offered from
    the SYN on is that small) and turn the kernel's autotuning off."""
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if sndbuf is not None:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.settimeout(timeout)
        c.connect(("127.0.0.1", port))
    except BaseException:
        c.close()
        raise
    return c


def recv_exact(sock, n):
    parts, got = [], 0
    while got < n:
        b = sock.recv(min(n - got, 1 << 20))
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def echo_roundtrip(sock, payload):
    """Sends payload from a writer thread while this thread reads the echo."""
    err = []

    def writer():
        try:
            sock.sendall(payload)
        except OSError as exc:  # pragma: no cover - reported below
            err.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    back = recv_exact(sock, len(payload))
    t.join()
    assert not err, err
    return back


def pattern(n, seed=0):
    """n bytes that differ at every offset mod 251 and between seeds, so a
    reordered, dropped or duplicated chunk changes the content."""
    block = bytes((i * 7 + seed) % 251 for i in range(251 * 16))
    reps = n // len(block) + 1
    return (block * reps)[:n]


def reset(sock):
    """Closes with SO_LINGER {1, 0}: the peer gets a RST, not a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
