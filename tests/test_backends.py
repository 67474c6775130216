"""The two backends: choosing one (config, ZCN_BACKEND, automatic fallback),
reading which and why, and zcn working where io_uring is refused the way
Docker's default seccomp profile refuses it.

The rest of the suite runs on whichever backend this run uses (the CI runs
it once with ZCN_BACKEND=epoll); these tests pin the backend themselves.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

import zcn
from conftest import TESTS_DIR, require_io_uring, require_loop, zcn_subprocess_env

pytestmark = pytest.mark.timeout(120)


def _env(**extra):
    env = zcn_subprocess_env()
    env.pop("ZCN_BACKEND", None)
    env.update(extra)
    return env


# --- choosing -----------------------------------------------------------------

def test_config_forces_epoll_and_says_so():
    require_loop()
    with zcn.Loop(backend="epoll") as loop:
        assert loop.backend == "epoll"
        assert loop.backend_reason == "forced by the config's backend field"
    server = zcn.TcpServer("127.0.0.1", 0, backend="epoll")
    try:
        assert server.backend == "epoll"
    finally:
        server.server_close()
    with zcn.UdpSocket("127.0.0.1", 0, backend="epoll") as sock:
        assert sock.backend == "epoll"


def test_things_on_a_loop_take_its_backend():
    require_loop()
    with zcn.Loop(backend="epoll") as loop:
        server = zcn.TcpServer("127.0.0.1", 0, loop=loop)
        sock = zcn.UdpSocket("127.0.0.1", 0, loop=loop)
        try:
            assert server.backend == sock.backend == "epoll"
            assert server.backend_reason == loop.backend_reason
        finally:
            sock.close()
            server.server_close()
        with pytest.raises(ValueError, match="loop's"):
            zcn.TcpServer("127.0.0.1", 0, loop=loop, backend="epoll")
        with pytest.raises(ValueError, match="loop's"):
            zcn.UdpSocket("127.0.0.1", 0, loop=loop, backend="io_uring")


@pytest.mark.parametrize("bad", ["epol", "", "EPOLL", 2])
def test_bad_backend_argument(bad):
    with pytest.raises((ValueError, TypeError)):
        zcn.Loop(backend=bad)


def _child(code, **env):
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=_env(**env),
                         capture_output=True, text=True, timeout=90, cwd=TESTS_DIR)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_environment_variable_chooses_when_the_config_does_not():
    require_io_uring()
    line = _child("""
        import zcn
        with zcn.Loop() as a, zcn.Loop(backend="io_uring") as b:
            print(a.backend, "|", a.backend_reason, "|", b.backend)
    """, ZCN_BACKEND="epoll")
    # the config's explicit choice wins over the variable
    assert line == "epoll | forced by ZCN_BACKEND=epoll | io_uring", line


def test_unknown_environment_value_is_a_clear_error():
    line = _child("""
        import zcn
        try:
            zcn.Loop()
        except zcn.InvalidArgumentError as exc:
            print("refused:", exc)
    """, ZCN_BACKEND="kqueue")
    assert line.startswith("refused:") and "ZCN_BACKEND" in line and "kqueue" in line, line


def test_ring_is_io_uring_only():
    """A Ring under ZCN_BACKEND=epoll fails as where io_uring is refused:
    a clear error, never a crash."""
    line = _child("""
        import zcn
        try:
            zcn.Ring(8)
        except zcn.IoUringUnavailableError as exc:
            print(type(exc).__name__, "|", exc)
        with zcn.BufferPool(4096, 4) as pool:
            print("pool works:", pool.stats().total)
    """, ZCN_BACKEND="epoll")
    first, second = line.splitlines()
    assert first.startswith("IoUringUnsupportedError |") and "ZCN_BACKEND=epoll" in first
    assert second == "pool works: 4"


# --- where io_uring is refused, as in a container -----------------------------

# The child installs a seccomp filter returning EPERM for io_uring_setup,
# io_uring_enter and io_uring_register (425-427 on x86_64), as Docker's and
# containerd's default profiles do, then runs zcn's servers as a user
# would; the processes it starts inherit the filter.
_CONTAINER = r"""
import asyncio, ctypes, json, os, socket, struct, subprocess, sys, time
libc = ctypes.CDLL(None, use_errno=True)
def stmt(code, k): return struct.pack("HBBI", code, 0, 0, k)
def jump(code, k, jt, jf): return struct.pack("HBBI", code, jt, jf, k)
LD_W_ABS, JEQ_K, JGE_K, RET_K = 0x20, 0x15, 0x35, 0x06
prog = b"".join([
    stmt(LD_W_ABS, 4), jump(JEQ_K, 0xC000003E, 0, 4),   # x86_64, else allow
    stmt(LD_W_ABS, 0), jump(JGE_K, 425, 0, 2),           # nr >= io_uring_setup
    jump(JGE_K, 428, 1, 0),                              # and nr <= io_uring_register
    stmt(RET_K, 0x00050000 | 1),                         # SECCOMP_RET_ERRNO | EPERM
    stmt(RET_K, 0x7FFF0000),                             # SECCOMP_RET_ALLOW
])
buf = ctypes.create_string_buffer(prog)
class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
fprog = SockFprog(len(prog) // 8, ctypes.addressof(buf))
if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:
    print(json.dumps({"skip": "cannot install a seccomp filter"})); sys.exit(0)

import zcn
out = {}
try:
    zcn.Ring(8)
    out["ring"] = "created"
except zcn.IoUringUnavailableError as exc:
    out["ring"] = type(exc).__name__

def start(*args):
    p = subprocess.Popen([sys.executable, "-m", "zcn", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    first, second = p.stdout.readline().strip(), p.stdout.readline().strip()
    return p, first, second

def stop(p):
    p.terminate()
    p.communicate(timeout=10)

def tcp_roundtrip(port, payload):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = c.recv(65536)
            if not chunk:
                break
            got += chunk
        return got == payload

# the TCP echo server (C handler) and the proxy in front of it
echo, line, backend = start("echo", "--port", "0")
port = int(line.split("listening on ")[1].split()[0].rsplit(":", 1)[1])
out["echo"] = [backend, tcp_roundtrip(port, b"x" * 100000)]
proxy, line, backend = start("proxy", "--listen", "127.0.0.1:0",
                             "--upstream", f"127.0.0.1:{port}")
pport = int(line.split("listening on ")[1].split(",")[0].rsplit(":", 1)[1])
out["proxy"] = [backend, tcp_roundtrip(pport, b"through the proxy " * 1000)]
stop(proxy)
stop(echo)

# the UDP echo server
udp, line, backend = start("udp-echo", "--port", "0")
uport = int(line.split()[-1])
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.settimeout(10)
    s.sendto(b"datagram", ("127.0.0.1", uport))
    out["udp"] = [backend, s.recvfrom(2048)[0] == b"datagram"]
stop(udp)

# an unmodified asyncio program on zcn's loop: streams and a datagram endpoint
async def main():
    loop = asyncio.get_running_loop()
    async def handle(reader, writer):
        writer.write(await reader.readexactly(5))
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
    writer.write(b"hello")
    streams = await reader.readexactly(5) == b"hello"
    writer.close()
    server.close()
    await server.wait_closed()
    got = loop.create_future()
    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, t): self.t = t
        def datagram_received(self, data, addr): self.t.sendto(data, addr)
    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr): got.set_result(data)
    et, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    ct, _ = await loop.create_datagram_endpoint(
        Client, remote_addr=et.get_extra_info("sockname"))
    ct.sendto(b"dgram")
    udp = await asyncio.wait_for(got, 10) == b"dgram"
    ct.close(); et.close()
    z = loop.zcn_loop
    return [f"backend: {z.backend}, {z.backend_reason}", streams and udp]
out["asyncio"] = zcn.run(main())
print(json.dumps(out))
"""


def test_everything_works_where_io_uring_is_refused():
    """As in `docker run` with the default seccomp profile: io_uring_setup
    gives EPERM; the echo server, the proxy, the UDP echo server and an
    asyncio program run on epoll, and each says why."""
    if os.uname().machine != "x86_64":
        pytest.skip("the seccomp filter here is written for x86_64")
    out = subprocess.run([sys.executable, "-c", _CONTAINER], env=_env(), capture_output=True,
                         text=True, timeout=110, cwd=TESTS_DIR)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if "skip" in result:
        pytest.skip(result["skip"])
    assert result["ring"] == "IoUringBlockedError"
    for name in ("echo", "proxy", "udp", "asyncio"):
        backend, worked = result[name]
        assert worked, (name, result)
        assert backend.startswith("backend: epoll, io_uring refused: "), (name, backend)
        assert "seccomp" in backend, (name, backend)


def test_forcing_io_uring_where_it_is_refused_fails_clearly():
    if os.uname().machine != "x86_64":
        pytest.skip("the seccomp filter here is written for x86_64")
    code = _CONTAINER.split("import zcn\n")[0] + textwrap.dedent("""
        import zcn
        try:
            zcn.Loop()
        except zcn.IoUringUnavailableError as exc:
            print(json.dumps({"error": type(exc).__name__}))
    """)
    out = subprocess.run([sys.executable, "-c", code], env=_env(ZCN_BACKEND="io_uring"),
                         capture_output=True, text=True, timeout=60, cwd=TESTS_DIR)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if "skip" in result:
        pytest.skip(result["skip"])
    assert result == {"error": "IoUringBlockedError"}


def test_the_docs_examples_run():
    """docs/BACKENDS.md's Python examples, as a user would paste them."""
    require_loop()
    from conftest import doc_blocks, run_python_block

    blocks = doc_blocks("BACKENDS.md")
    assert blocks
    for code in blocks:
        out = run_python_block(code)
        assert out.returncode == 0, out.stderr
