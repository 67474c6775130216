"""zcn.aio's asyncio loop at the edges users hit: flow control both ways,
closes and aborts at awkward moments, cancellation, many connections,
failing protocols, half-close, BufferedProtocol, unix sockets, TLS, a zcn
TcpServer beside asyncio code, the entry points, threads, signals,
subprocesses and closing the loop with connections open.

Real sockets on 127.0.0.1 (port 0) or a temporary unix path. Every test
runs its coroutine under asyncio.wait_for and the module's timeout marker.
Where the behaviour should be asyncio's own, the test is parametrized over
zcn's loop and asyncio's stock selector loop (`kind`) and asserts the same
outcome on both; where only zcn's loop is meant (its TcpServer on the
same loop, zcn.aio's entry points, its loop.close() closing connections),
the test says so.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

from conftest import require_loop

import zcn
import zcn.aio

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"
KINDS = ["zcn", "asyncio"]


def new_loop(kind):
    if kind == "zcn":
        require_loop()
        return zcn.aio.new_event_loop()
    return asyncio.SelectorEventLoop()


def open_fds():
    return len(os.listdir("/proc/self/fd"))


class Run:
    """Runs coroutine functions fn(loop) on a fresh loop of one kind, each
    bounded by `timeout`; collects the loop exception handler's contexts
    (a test that expects none asserts run.contexts == [])."""

    def __init__(self, kind):
        self.kind = kind
        self.loop = new_loop(kind)
        self.contexts = []
        self.loop.set_exception_handler(lambda _loop, ctx: self.contexts.append(ctx))

    def __call__(self, fn, *args, timeout=15):
        return self.loop.run_until_complete(asyncio.wait_for(fn(self.loop, *args), timeout))

    def close(self):
        loop = self.loop
        if not loop.is_closed():
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


@pytest.fixture
def run(kind):
    r = Run(kind)
    yield r
    r.close()


def on_both(fn, *args, timeout=15):
    """fn(loop, *args) on a zcn loop and on asyncio's stock loop: the two
    results, (zcn's, asyncio's), with each loop's handler contexts."""
    out = []
    for k in KINDS:
        r = Run(k)
        try:
            out.append((r(fn, *args, timeout=timeout), r.contexts))
        finally:
            r.close()
    return out


async def wait_for_cond(cond, timeout=5.0, step=0.005):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(step)


async def echo_handler(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def raw_pair(loop, *, rcvbuf=None):
    """A connected (peer, client) pair of plain non-blocking sockets, the
    peer accepted with loop.sock_accept; rcvbuf sets the peer's receive
    buffer (small: a peer that stops reading pushes back soon)."""
    lsock = socket.socket()
    if rcvbuf is not None:
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # inherited
    lsock.bind((HOST, 0))
    lsock.listen(1)
    lsock.setblocking(False)
    client = socket.socket()
    client.setblocking(False)
    try:
        await loop.sock_connect(client, lsock.getsockname())
        peer, _ = await loop.sock_accept(lsock)
    finally:
        lsock.close()
    peer.setblocking(False)
    return peer, client


async def recv_until_eof(loop, sock, limit=1 << 26):
    chunks = []
    total = 0
    while total < limit:
        data = await loop.sock_recv(sock, 65536)
        if not data:
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


# --- reading: pause in connection_made ------------------------------------

class PausedAtStart(asyncio.Protocol):
    def __init__(self):
        self.data = bytearray()
        self.early = 0          # data_received calls before resume_reading
        self.resumed = False
        self.eof = False
        self.was_reading = None

    def connection_made(self, transport):
        self.transport = transport
        transport.pause_reading()
        self.was_reading = transport.is_reading()

    def data_received(self, data):
        if not self.resumed:
            self.early += 1
        self.data += data

    def eof_received(self):
        self.eof = True


def test_call_soon_behaves_as_asyncios(kind):
    """zcn's loop builds call_soon's Handle itself (outside debug mode,
    half the cost of asyncio's): the same order, context, cancel, repr,
    closed-loop error and debug-mode thread check as the stock loop."""
    import contextvars

    var = contextvars.ContextVar("var", default="unset")
    loop = new_loop(kind)
    try:
        seen = []
        ctx = contextvars.copy_context()
        ctx.run(var.set, "in ctx")
        loop.call_soon(lambda: seen.append(("plain", var.get())))
        loop.call_soon(lambda: seen.append(("ctx", var.get())), context=ctx)
        cancelled = loop.call_soon(seen.append, "cancelled")
        h = loop.call_soon(seen.append, "args")
        assert type(h) is asyncio.Handle and "list.append" in repr(h)
        cancelled.cancel()
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert seen == [("plain", "unset"), ("ctx", "in ctx"), "args"]
        loop.set_debug(True)  # asyncio's checks: a call from another thread while it runs
        errors = []

        async def from_another_thread():
            t = threading.Thread(target=_call_soon_error, args=(loop, errors))
            t.start()
            await loop.run_in_executor(None, t.join, 10)

        loop.run_until_complete(from_another_thread())
        assert errors and "thread" in str(errors[0]), errors
        loop.set_debug(False)
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_soon(print)


def _call_soon_error(loop, errors):
    try:
        loop.call_soon(print)
    except RuntimeError as e:
        errors.append(e)


def test_pause_reading_in_connection_made(run, kind):
    if kind == "asyncio" and sys.version_info < (3, 10):
        pytest.skip("asyncio's own loop before 3.10 starts reading after connection_made "
                    "even when it paused reading there")
    payload = os.urandom(3 << 20)  # more than the socket buffers hold

    async def body(loop):
        protos = []
        lsock = socket.socket()
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # accepted ones inherit it
        lsock.bind((HOST, 0))
        server = await loop.create_server(lambda: protos.append(PausedAtStart()) or protos[-1],
                                          sock=lsock)
        csock = socket.socket()
        csock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        csock.setblocking(False)
        await loop.sock_connect(csock, lsock.getsockname())
        reader, writer = await asyncio.open_connection(sock=csock)
        writer.write(payload[:1000])
        writer.write(payload[1000:])
        drain = asyncio.ensure_future(writer.drain())
        await asyncio.sleep(0.3)
        proto = protos[0]
        assert proto.was_reading is False
        assert proto.early == 0 and not proto.data
        assert not drain.done()          # TCP pushed back on the writer
        proto.resumed = True
        proto.transport.resume_reading()
        assert proto.transport.is_reading()
        await drain
        writer.write_eof()
        await wait_for_cond(lambda: proto.eof)
        assert bytes(proto.data) == payload   # complete and in order, then the EOF
        writer.close()
        proto.transport.close()
        server.close()
        await server.wait_closed()

    run(body)
    assert run.contexts == []


def test_pause_and_resume_reading_repeatedly(run):
    """Pausing and resuming between arrivals loses and reorders nothing."""
    async def body(loop):
        protos = []
        server = await loop.create_server(lambda: protos.append(PausedAtStart()) or protos[-1],
                                          HOST, 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(HOST, port)
        await wait_for_cond(lambda: protos)
        proto = protos[0]
        proto.resumed = True
        sent = bytearray()
        for i in range(50):
            chunk = (b"%05d:" % i) * 200
            sent += chunk
            writer.write(chunk)
            await writer.drain()
            if i % 2:
                proto.transport.resume_reading()
            else:
                proto.transport.pause_reading()
            await asyncio.sleep(0.002)
        proto.transport.resume_reading()
        await wait_for_cond(lambda: len(proto.data) >= len(sent))
        assert bytes(proto.data) == bytes(sent)
        writer.close()
        proto.transport.close()
        server.close()
        await server.wait_closed()

    run(body)
    assert run.contexts == []


class Recorder(asyncio.Protocol):
    """Records its callbacks in order ('data' once per run of data)."""

    def __init__(self):
        self.events = []
        self.data = bytearray()
        self.lost = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if not self.events or self.events[-1] != "data":
            self.events.append("data")
        self.data += data

    def eof_received(self):
        self.events.append("eof")
        return True

    def pause_writing(self):
        self.events.append("pause")

    def resume_writing(self):
        self.events.append("resume")

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost = exc


def test_eof_while_paused_waits_for_resume(run):
    """Data and the peer's EOF that arrive while reading is paused are
    delivered after resume_reading, the data first."""
    async def body(loop):
        peer, client = await raw_pair(loop)
        tr, proto = await loop.create_connection(Recorder, sock=client)
        tr.pause_reading()
        await loop.sock_sendall(peer, b"before the end")
        peer.shutdown(socket.SHUT_WR)
        await asyncio.sleep(0.2)
        assert proto.events == []
        tr.resume_reading()
        await wait_for_cond(lambda: "eof" in proto.events)
        assert proto.events == ["data", "eof"]
        assert bytes(proto.data) == b"before the end"
        tr.write(b"half-closed, still writing")   # eof_received returned True
        tr.close()
        assert await recv_until_eof(loop, peer) == b"half-closed, still writing"
        await wait_for_cond(lambda: "lost" in proto.events)
        peer.close()

    run(body)
    assert run.contexts == []


class AbortOnPause(Recorder):
    def pause_writing(self):
        super().pause_writing()
        self.transport.abort()


def test_abort_inside_pause_writing_gets_no_resume(run):
    async def body(loop):
        peer, client = await raw_pair(loop, rcvbuf=16384)
        tr, proto = await loop.create_connection(AbortOnPause, sock=client)
        tr.set_write_buffer_limits(high=32 << 10)
        for _ in range(256):
            tr.write(b"z" * (64 << 10))
            if proto.events:
                break
            await asyncio.sleep(0)
        await wait_for_cond(lambda: "lost" in proto.events)
        await asyncio.sleep(0.05)
        peer.close()
        return proto.events

    assert run(body) == ["pause", "lost"]
    assert run.contexts == []


def test_sendfile_right_after_a_write_over_the_mark(run, tmp_path):
    """loop.sendfile's fallback takes over a transport paused for writing
    (a plaintext write of 256 KiB just before it): everything arrives in
    order and the protocol's pauses and resumes stay paired."""
    path = tmp_path / "data.bin"
    content = os.urandom(1 << 20)
    path.write_bytes(content)
    head = b"H" * (256 << 10)

    async def body(loop):
        peer, client = await raw_pair(loop, rcvbuf=16384)
        tr, proto = await loop.create_connection(Recorder, sock=client)
        tr.write(head)
        with open(path, "rb") as f:
            reading = asyncio.ensure_future(recv_until_eof(loop, peer))
            sent = await loop.sendfile(tr, f)
        tr.write(b"tail")
        tr.close()
        got = await reading
        peer.close()
        return sent, got, proto.events

    sent, got, events = run(body)
    assert sent == len(content)
    assert got == head + content + b"tail"
    flow = [e for e in events if e in ("pause", "resume")]
    assert flow == ["pause", "resume"] * (len(flow) // 2)
    assert run.contexts == []


# --- writing after close, and close during a drain ------------------------

def test_write_after_close_is_silent_and_counted(run, caplog):
    """As asyncio's transports: no exception, nothing sent, and the
    'socket.send() raised exception.' warning from the 5th write after
    the close on (constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES)."""
    async def body(loop):
        peer, client = await raw_pair(loop)
        tr, _ = await loop.create_connection(asyncio.Protocol, sock=client)
        tr.write(b"before")
        tr.close()
        assert tr.is_closing()
        for _ in range(10):
            tr.write(b"after")
        got = await recv_until_eof(loop, peer)
        peer.close()
        return got

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        got = run(body)
    assert got == b"before"
    warned = [r for r in caplog.records if r.getMessage() == "socket.send() raised exception."]
    assert len(warned) == 10 - 4
    assert run.contexts == []


async def _fill_until_drain_blocks(writer):
    """Writes until a drain() stays pending; returns that drain's task and
    how much was written."""
    chunk = b"x" * (256 << 10)
    written = 0
    for _ in range(256):
        writer.write(chunk)
        written += len(chunk)
        drain = asyncio.ensure_future(writer.drain())
        await asyncio.sleep(0.02)
        if not drain.done():
            return drain, written
        await drain
    raise AssertionError("drain() never blocked")


async def _outcome(aw, timeout=5):
    try:
        await asyncio.wait_for(aw, timeout)
    except asyncio.TimeoutError:
        return "timeout"
    except Exception as exc:  # noqa: BLE001 - the outcome is what is compared
        return type(exc).__name__
    return "returned"


async def _close_during_drain(loop, how):
    peer, client = await raw_pair(loop, rcvbuf=16384)
    reader, writer = await asyncio.open_connection(sock=client)
    drain, written = await _fill_until_drain_blocks(writer)
    if how == "close, then the peer reads":
        writer.close()
        got = await recv_until_eof(loop, peer)
        assert len(got) == written
    elif how == "abort":
        writer.transport.abort()
    elif how == "the peer resets":
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        peer.close()
    result = await _outcome(drain)
    closed = await _outcome(writer.wait_closed())
    again = await _outcome(writer.drain())
    writer.close()
    peer.close()
    return result, closed, again


@pytest.mark.parametrize("how", ["close, then the peer reads", "abort", "the peer resets"])
def test_close_during_pending_drain_matches_asyncio(how):
    """A drain() pending when the connection ends: its outcome, then
    wait_closed()'s, then a second drain()'s, the same on both loops (on
    3.11: close or abort, 'returned', 'returned', ConnectionResetError;
    a reset from the peer, ConnectionResetError three times)."""
    (zcn_result, zcn_ctx), (stock_result, stock_ctx) = on_both(_close_during_drain, how)
    assert zcn_result == stock_result, (zcn_result, stock_result)
    assert "timeout" not in zcn_result
    assert zcn_ctx == stock_ctx == []


# --- cancellation ---------------------------------------------------------

def test_cancelled_read_leaves_the_connection_usable(run):
    async def body(loop):
        peer, client = await raw_pair(loop)
        reader, writer = await asyncio.open_connection(sock=client)
        task = asyncio.ensure_future(reader.read(100))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # a partial readexactly cancelled keeps what it had
        await loop.sock_sendall(peer, b"abc")
        task = asyncio.ensure_future(reader.readexactly(6))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await loop.sock_sendall(peer, b"def")
        assert await reader.readexactly(6) == b"abcdef"
        await loop.sock_sendall(peer, b"hello")
        assert await reader.read(100) == b"hello"
        writer.write(b"still here")
        await writer.drain()
        assert await loop.sock_recv(peer, 100) == b"still here"
        writer.close()
        await writer.wait_closed()
        peer.close()

    run(body)
    assert run.contexts == []


# --- many connections -----------------------------------------------------

def test_thousand_concurrent_stream_connections(run):
    n = 1000

    async def body(loop):
        fds_at_start = open_fds()
        handlers_done = 0

        async def handler(reader, writer):
            nonlocal handlers_done
            try:
                await echo_handler(reader, writer)
                await writer.wait_closed()
            finally:
                handlers_done += 1

        server = await asyncio.start_server(handler, HOST, 0, backlog=n)
        port = server.sockets[0].getsockname()[1]

        async def client(i):
            reader, writer = await asyncio.open_connection(HOST, port)
            msg = b"%06d:" % i * (1 + i % 50) + b"\n"
            writer.write(msg)
            await writer.drain()
            line = await reader.readline()
            writer.close()
            await writer.wait_closed()
            return line == msg

        results = await asyncio.gather(*(client(i) for i in range(n)))
        assert all(results), results.count(False)
        await wait_for_cond(lambda: handlers_done == n, timeout=20)
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)
        return fds_at_start

    fds_before = open_fds()
    fds_at_start = run(body, timeout=50)
    if run.kind == "zcn":
        assert run.loop.zcn_loop.stats().tcp.connections_active == 0
    assert open_fds() <= fds_at_start
    run.close()
    gc.collect()
    assert open_fds() <= fds_before
    assert run.contexts == []


# --- failing protocols ----------------------------------------------------

class Failing(asyncio.Protocol):
    instances: list

    def __init__(self):
        self.lost = "not yet"
        Failing.instances.append(self)

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if data.startswith(b"boom"):
            raise ZeroDivisionError("boom")
        self.transport.write(data)

    def connection_lost(self, exc):
        self.lost = exc


def test_data_received_raising_closes_only_that_connection(run):
    Failing.instances = []

    async def body(loop):
        server = await loop.create_server(Failing, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        conns = [await asyncio.open_connection(HOST, port) for _ in range(3)]
        await wait_for_cond(lambda: len(Failing.instances) == 3)
        for r, w in conns:
            w.write(b"hi")
            assert await r.readexactly(2) == b"hi"
        bad_r, bad_w = conns[1]
        bad_proto = Failing.instances[1]
        bad_w.write(b"boom")
        assert await bad_r.read() == b""      # that connection is closed
        await wait_for_cond(lambda: bad_proto.lost != "not yet")
        assert isinstance(bad_proto.lost, ZeroDivisionError)
        for r, w in (conns[0], conns[2]):
            w.write(b"after")
            assert await r.readexactly(5) == b"after"
        for i in (0, 2):
            assert Failing.instances[i].lost == "not yet"
            assert not Failing.instances[i].transport.is_closing()
        for _, w in conns:
            w.close()
        server.close()
        await server.wait_closed()
        return bad_proto

    bad_proto = run(body)
    assert len(run.contexts) == 1, run.contexts
    ctx = run.contexts[0]
    assert ctx["message"] == "Fatal error: protocol.data_received() call failed."
    assert isinstance(ctx["exception"], ZeroDivisionError)
    assert ctx["transport"] is bad_proto.transport
    assert ctx["protocol"] is bad_proto


# --- half-close -----------------------------------------------------------

class EofServer(asyncio.Protocol):
    def __init__(self, keep_open, done):
        self.keep_open = keep_open
        self.done = done
        self.data = b""
        self.closing_after_eof = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.data += data

    def eof_received(self):
        if self.keep_open:
            asyncio.get_running_loop().call_soon(self._reply)
        return self.keep_open

    def _reply(self):
        self.closing_after_eof = self.transport.is_closing()
        self.transport.write(b"reply to " + self.data)
        self.transport.close()

    def connection_lost(self, exc):
        if self.closing_after_eof is None:
            self.closing_after_eof = self.transport.is_closing()
        self.done.set_result((exc, self.closing_after_eof))


@pytest.mark.parametrize("keep_open", [True, False])
def test_eof_received_decides_half_close(run, keep_open):
    async def body(loop):
        done = loop.create_future()
        server = await loop.create_server(lambda: EofServer(keep_open, done), HOST, 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"question")
        writer.write_eof()
        answer = await reader.read()
        exc, closing_after_eof = await done
        writer.close()
        server.close()
        await server.wait_closed()
        return answer, exc, closing_after_eof

    answer, exc, closing_after_eof = run(body)
    assert exc is None
    if keep_open:
        assert closing_after_eof is False        # still open after eof_received
        assert answer == b"reply to question"   # and we could still write
    else:
        assert closing_after_eof is True         # the loop closed the transport
        assert answer == b""
    assert run.contexts == []


def test_write_eof(run):
    async def body(loop):
        peer, client = await raw_pair(loop)
        reader, writer = await asyncio.open_connection(sock=client)
        assert writer.can_write_eof()
        writer.write(b"all of it")
        writer.write_eof()
        with pytest.raises(RuntimeError):
            writer.write(b"more")
        assert await recv_until_eof(loop, peer) == b"all of it"
        # half-closed: still reading
        await loop.sock_sendall(peer, b"answer")
        peer.shutdown(socket.SHUT_WR)
        assert await reader.read() == b"answer"
        writer.close()
        await writer.wait_closed()
        peer.close()

    run(body)
    assert run.contexts == []


# --- BufferedProtocol -----------------------------------------------------

class SmallBuffers(asyncio.BufferedProtocol):
    def __init__(self, size, done):
        self.buf = bytearray(size)
        self.size = size
        self.data = bytearray()
        self.gets = 0
        self.hints = []
        self.done = done

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        self.gets += 1
        self.hints.append(sizehint)
        return memoryview(self.buf)

    def buffer_updated(self, nbytes):
        assert 0 < nbytes <= self.size
        self.data += self.buf[:nbytes]

    def eof_received(self):
        self.done.set_result(None)


@pytest.mark.parametrize("size", [7, 1 << 16])
def test_buffered_protocol(run, size):
    payload = os.urandom(200_000)

    async def body(loop):
        done = loop.create_future()
        peer, client = await raw_pair(loop)
        tr, proto = await loop.create_connection(lambda: SmallBuffers(size, done), sock=client)
        await loop.sock_sendall(peer, payload)
        peer.shutdown(socket.SHUT_WR)
        await done
        tr.close()
        peer.close()
        return proto

    proto = run(body)
    assert bytes(proto.data) == payload
    assert proto.gets >= len(payload) // size     # one arrival fills many buffers
    assert all(h == -1 or h > 0 for h in proto.hints)
    assert run.contexts == []


# --- write flow control ---------------------------------------------------

class Writer(asyncio.Protocol):
    def __init__(self):
        self.pauses = 0
        self.resumes = 0
        self.size_at_resume = None

    def connection_made(self, transport):
        self.transport = transport

    def pause_writing(self):
        self.pauses += 1

    def resume_writing(self):
        self.resumes += 1
        self.size_at_resume = self.transport.get_write_buffer_size()


def test_write_buffer_limits_and_flow_control(run):
    high, low = 64 << 10, 16 << 10

    async def body(loop):
        peer, client = await raw_pair(loop, rcvbuf=16384)
        tr, proto = await loop.create_connection(Writer, sock=client)
        tr.set_write_buffer_limits(high=high, low=low)
        assert tr.get_write_buffer_limits() == (low, high)
        chunk = b"y" * (16 << 10)
        written = 0
        for _ in range(4096):             # the peer does not read
            tr.write(chunk)
            written += len(chunk)
            if proto.pauses:
                break
            await asyncio.sleep(0)
        assert proto.pauses == 1
        assert tr.get_write_buffer_size() > high
        for _ in range(20):                # more writes while paused: no second call
            tr.write(chunk)
            written += len(chunk)
        await asyncio.sleep(0.2)
        assert proto.pauses == 1 and proto.resumes == 0
        assert tr.get_write_buffer_size() > high
        got = 0                            # the peer reads everything now
        while got < written:
            data = await loop.sock_recv(peer, 1 << 20)
            assert data
            got += len(data)
        await wait_for_cond(lambda: tr.get_write_buffer_size() == 0)
        assert proto.pauses == 1 and proto.resumes == 1
        assert proto.size_at_resume <= low
        tr.close()
        assert await recv_until_eof(loop, peer) == b""
        peer.close()

    run(body)
    assert run.contexts == []


# --- extra info, abort, refused -------------------------------------------

def test_get_extra_info(run):
    async def body(loop):
        server_side = loop.create_future()

        async def handler(reader, writer):
            server_side.set_result(writer)

        server = await asyncio.start_server(handler, HOST, 0)
        addr = server.sockets[0].getsockname()
        reader, writer = await asyncio.open_connection(*addr)
        swriter = await server_side
        info = {}
        for name, w in (("client", writer), ("server", swriter)):
            sock = w.get_extra_info("socket")
            info[name] = (w.get_extra_info("sockname"), w.get_extra_info("peername"), sock)
            assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
            assert sock.fileno() >= 0
            assert sock.getsockname() == w.get_extra_info("sockname")
            assert sock.getpeername() == w.get_extra_info("peername")
            assert w.get_extra_info("no such key", "default") == "default"
        assert info["client"][1] == addr
        assert info["server"][0] == addr
        assert info["client"][0] == info["server"][1]
        writer.close()
        swriter.close()
        server.close()
        await server.wait_closed()

    run(body)
    assert run.contexts == []


class Holder(asyncio.Protocol):
    def __init__(self, made):
        self.made = made

    def connection_made(self, transport):
        self.transport = transport
        self.made.set_result(self)


@pytest.mark.parametrize("unread", [True, False], ids=["unread-data", "nothing-unread"])
def test_abort(run, unread):
    """abort() drops what is buffered and ends the connection at once, as
    asyncio's transports do (a close): with data the protocol has not read
    the peer sees a reset; with nothing unread, an EOF."""
    seen = []

    async def body(loop):
        made = loop.create_future()
        server = await loop.create_server(lambda: Holder(made), HOST, 0)
        conn = socket.create_connection(server.sockets[0].getsockname(), timeout=10)
        proto = await made
        if unread:
            proto.transport.pause_reading()
            conn.sendall(b"unread" * 1000)
            await asyncio.sleep(0.05)
        proto.transport.write(b"dropped" * 100000)
        proto.transport.abort()
        assert proto.transport.is_closing()

        def peer():
            try:
                while True:
                    data = conn.recv(1 << 20)
                    if not data:
                        seen.append("eof")
                        return
            except ConnectionResetError:
                seen.append("reset")
            except socket.timeout:
                seen.append("nothing")
            finally:
                conn.close()

        await loop.run_in_executor(None, peer)
        server.close()
        await server.wait_closed()

    run(body)
    assert seen == ["reset" if unread else "eof"], run.kind
    assert run.contexts == []


def test_create_connection_refused(run):
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]     # bound, never listening: refused

        async def body(loop):
            with pytest.raises(ConnectionRefusedError):
                await loop.create_connection(asyncio.Protocol, HOST, port)
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(HOST, port)

        fds = open_fds()
        run(body)
        assert open_fds() == fds
    assert run.contexts == []


# --- unix sockets ---------------------------------------------------------

def test_unix_stream_server_and_connection(run, tmp_path):
    path = str(tmp_path / "echo.sock")

    async def body(loop):
        server = await asyncio.start_unix_server(echo_handler, path)
        reader, writer = await asyncio.open_unix_connection(path)
        if run.kind == "zcn":
            assert isinstance(writer.transport, zcn.aio._ZcnTransport)
        assert writer.get_extra_info("peername") == path
        assert writer.get_extra_info("socket").family == socket.AF_UNIX
        payload = os.urandom(1 << 20)
        writer.write(payload)
        writer.write_eof()
        assert await reader.read() == payload
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(body)
    assert run.contexts == []


# --- TLS ------------------------------------------------------------------

@pytest.fixture(scope="module")
def cert_files(tmp_path_factory):
    """(certfile, keyfile) for 'localhost': CPython's test certificate when
    test.test_asyncio is installed, else a self-signed one from openssl."""
    try:
        from test.test_asyncio import utils as test_utils
        if os.path.exists(test_utils.ONLYCERT) and os.path.exists(test_utils.ONLYKEY):
            return test_utils.ONLYCERT, test_utils.ONLYKEY
    except Exception:  # noqa: BLE001 - not installed, or unusable here
        pass
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no test certificate: neither test.test_asyncio nor openssl is installed")
    d = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "2", "-subj", "/CN=localhost"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture
def tls_contexts(cert_files):
    """(server, client) SSLContexts; the client does not verify."""
    certfile, keyfile = cert_files
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(certfile, keyfile)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    return server_ctx, client_ctx


def test_tls_over_zcn_transports(run, tls_contexts):
    server_ctx, client_ctx = tls_contexts

    async def body(loop):
        server = await asyncio.start_server(echo_handler, HOST, 0, ssl=server_ctx)
        reader, writer = await asyncio.open_connection(
            *server.sockets[0].getsockname(), ssl=client_ctx)
        assert writer.get_extra_info("ssl_object") is not None
        if run.kind == "zcn":
            raw = writer.transport._ssl_protocol._transport
            assert isinstance(raw, zcn.aio._ZcnTransport)
        payload = os.urandom(1 << 20)
        writer.write(payload)
        await writer.drain()
        got = await reader.readexactly(len(payload))
        assert got == payload
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(body)
    assert run.contexts == []


def test_start_tls_with_writes_pending(run, tls_contexts):
    """STARTTLS right after a plaintext write over the high-water mark: the
    write is still queued (zcn queues until the next poll), so the
    transport may be paused for writing when loop.start_tls() switches its
    protocol to the TLS one (StreamWriter.start_tls drains first;
    loop.start_tls does not). Pauses and resumes must stay paired. The
    peer is a thread that reads exactly the plaintext, then speaks TLS
    and echoes."""
    server_ctx, client_ctx = tls_contexts
    hello = b"h" * (200 << 10)
    size = 1 << 20
    lsock = socket.socket()
    lsock.bind((HOST, 0))
    lsock.listen(1)
    errors = []

    def peer():
        try:
            conn, _ = lsock.accept()
            conn.settimeout(10)
            got = 0
            while got < len(hello):
                data = conn.recv(len(hello) - got)   # never past the plaintext
                assert data
                got += len(data)
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                left = size
                while left:
                    data = tls.recv(min(left, 65536))
                    assert data
                    tls.sendall(data)
                    left -= len(data)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    th = threading.Thread(target=peer, daemon=True)
    th.start()

    class App(asyncio.Protocol):
        def __init__(self):
            self.paused = False
            self.data = bytearray()
            self.got_all = None

        def pause_writing(self):
            assert not self.paused
            self.paused = True

        def resume_writing(self):
            assert self.paused
            self.paused = False

        def data_received(self, data):
            self.data += data
            if len(self.data) >= size:
                self.got_all.set_result(None)

    async def body(loop):
        tr, app = await loop.create_connection(App, *lsock.getsockname())
        app.got_all = loop.create_future()
        tr.write(hello)
        tls = await loop.start_tls(tr, app, client_ctx)
        assert tls.get_extra_info("ssl_object") is not None
        payload = os.urandom(size)
        tls.write(payload)
        await app.got_all
        assert bytes(app.data) == payload
        assert not app.paused          # every pause_writing had its resume_writing
        tls.close()

    try:
        run(body)
    finally:
        lsock.close()
        th.join(10)
    assert errors == []
    assert run.contexts == []


# --- a zcn TcpServer on the same loop -------------------------------------

def test_zcn_tcpserver_beside_asyncio_code():
    require_loop()
    r = Run("zcn")

    async def body(loop):
        zs = zcn.TcpServer(HOST, 0, loop=loop.zcn_loop,
                           on_data=lambda fd, d: zs.send(fd, b"Z" + bytes(d)))

        async def handler(reader, writer):
            writer.write(b"A" + await reader.read(100))
            await writer.drain()
            writer.close()

        aserver = await asyncio.start_server(handler, HOST, 0)
        try:
            zr, zw = await asyncio.open_connection(HOST, zs.port)
            ar, aw = await asyncio.open_connection(*aserver.sockets[0].getsockname())
            ticks = []
            loop.call_later(0.01, ticks.append, 1)
            zw.write(b"1")
            aw.write(b"2")
            replies = await asyncio.gather(zr.readexactly(2), ar.read())
            assert replies == [b"Z1", b"A2"]
            await wait_for_cond(lambda: ticks)
            zw.close()
            aw.close()
            await wait_for_cond(lambda: not zs.connections)
        finally:
            zs.server_close()
            aserver.close()
            await aserver.wait_closed()

    try:
        r(body)
    finally:
        r.close()
    assert r.contexts == []


# --- entry points ---------------------------------------------------------

async def _running_loop_type():
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop())


@pytest.fixture
def restore_policy():
    old = asyncio.get_event_loop_policy()
    yield
    asyncio.set_event_loop_policy(old)


def test_zcn_aio_run():
    require_loop()
    assert zcn.aio.run(_running_loop_type()) is zcn.aio.EventLoop
    assert zcn.aio.run(_running_loop_type(), debug=True) is zcn.aio.EventLoop


def test_package_level_names_are_zcn_aio_ones():
    for name in ("EventLoop", "EventLoopPolicy", "new_event_loop", "install", "run"):
        assert getattr(zcn, name) is getattr(zcn.aio, name)
    require_loop()
    assert zcn.run(_running_loop_type()) is zcn.aio.EventLoop


def test_event_loop_policy(restore_policy):
    require_loop()
    policy = zcn.aio.EventLoopPolicy()
    loop = policy.new_event_loop()
    try:
        assert isinstance(loop, zcn.aio.EventLoop)
        assert loop.run_until_complete(_running_loop_type()) is zcn.aio.EventLoop
    finally:
        loop.close()
    asyncio.set_event_loop_policy(policy)
    assert asyncio.run(_running_loop_type()) is zcn.aio.EventLoop


def test_install(restore_policy):
    require_loop()
    zcn.aio.install()
    assert isinstance(asyncio.get_event_loop_policy(), zcn.aio.EventLoopPolicy)
    loop = asyncio.new_event_loop()
    try:
        assert isinstance(loop, zcn.aio.EventLoop)
    finally:
        loop.close()
    assert asyncio.run(_running_loop_type()) is zcn.aio.EventLoop


@pytest.mark.skipif(not hasattr(asyncio, "Runner"), reason="asyncio.Runner is 3.11+")
def test_asyncio_runner_with_loop_factory():
    require_loop()
    with asyncio.Runner(loop_factory=zcn.aio.new_event_loop) as runner:
        assert runner.run(_running_loop_type()) is zcn.aio.EventLoop
        assert isinstance(runner.get_loop(), zcn.aio.EventLoop)
        assert runner.run(_running_loop_type()) is zcn.aio.EventLoop


@pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio.run(loop_factory=) is 3.12+")
def test_asyncio_run_with_loop_factory():
    require_loop()
    assert asyncio.run(_running_loop_type(), loop_factory=zcn.aio.new_event_loop) \
        is zcn.aio.EventLoop


def test_new_event_loop_passes_zcn_options():
    require_loop()
    loop = zcn.aio.new_event_loop(buffer_size=4096, connections_max=64)
    try:
        assert isinstance(loop.zcn_loop, zcn.Loop)
        assert loop.zcn_loop.buffer_size == 4096
        assert loop.run_until_complete(_running_loop_type()) is zcn.aio.EventLoop
    finally:
        loop.close()


# --- threads and signals --------------------------------------------------

def test_call_soon_threadsafe_wakes_the_wait(run):
    async def body(loop):
        fut = loop.create_future()

        def other():
            time.sleep(0.2)
            loop.call_soon_threadsafe(fut.set_result, threading.get_ident())

        t0 = time.monotonic()
        th = threading.Thread(target=other)
        th.start()
        ident = await fut       # nothing else is due for 15 s (the wait_for)
        elapsed = time.monotonic() - t0
        th.join()
        assert ident == th.ident
        assert 0.15 <= elapsed < 2.0, elapsed

        # many threads at once: every call runs, each thread's in order
        got = {i: [] for i in range(4)}
        done = loop.create_future()
        remaining = [4 * 500]

        def record(i, k):
            got[i].append(k)
            remaining[0] -= 1
            if remaining[0] == 0:
                done.set_result(None)

        threads = [threading.Thread(target=lambda i=i: [loop.call_soon_threadsafe(record, i, k)
                                                        for k in range(500)])
                   for i in range(4)]
        for th in threads:
            th.start()
        await done
        for th in threads:
            th.join()
        assert all(got[i] == list(range(500)) for i in range(4))

    run(body)
    assert run.contexts == []


def test_add_signal_handler(run):
    async def body(loop):
        fired = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR1, lambda *a: fired.set_result(a), "arg")
        try:
            threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR1)).start()
            assert await fired == ("arg",)
        finally:
            assert loop.remove_signal_handler(signal.SIGUSR1)
        assert not loop.remove_signal_handler(signal.SIGUSR1)

    run(body)
    assert run.contexts == []


def test_subprocess(run):
    async def body(loop):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.read().upper())",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate(b"hello from zcn")
        assert out == b"HELLO FROM ZCN" and proc.returncode == 0
        proc = await asyncio.create_subprocess_shell("exit 3")
        assert await proc.wait() == 3

    run(body)
    assert run.contexts == []


# --- closing the loop with transports open --------------------------------

@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_loop_close_with_transports_open(kind, tmp_path):
    fds_before = open_fds()
    r = Run(kind)
    made = []

    async def body(loop):
        server = await loop.create_server(lambda: Holder(loop.create_future()), HOST, 0)
        port = server.sockets[0].getsockname()[1]
        userver = await asyncio.start_unix_server(echo_handler, str(tmp_path / "u.sock"))
        for _ in range(5):
            tr, _ = await loop.create_connection(asyncio.Protocol, HOST, port)
            tr.write(b"x" * 100000)
            made.append(tr)
        _, w = await asyncio.open_unix_connection(str(tmp_path / "u.sock"))
        w.write(b"pending")
        made.append(w.transport)
        await asyncio.sleep(0.05)
        server.close()
        userver.close()

    r(body)
    r.loop.close()               # the connections are all still open
    if kind == "zcn":
        assert open_fds() <= fds_before   # zcn closed them with the loop
        for tr in made:          # and using them afterwards is harmless
            tr.write(b"late")
            tr.pause_reading()
            tr.resume_reading()
            tr.write_eof()
            tr.close()
            tr.abort()
            assert tr.get_write_buffer_size() == 0
            assert tr.is_closing()
    made.clear()
    gc.collect()
    assert open_fds() <= fds_before


class _NeedsItsWaiter(asyncio.Protocol):
    """data_received sets a future that a coroutine made just before it
    (as CPython's test_datagram_send_to_non_listening_address does)."""

    def __init__(self):
        self.fut = None
        self.made = None

    def connection_made(self, transport):
        self.made = transport

    def data_received(self, data):
        self.fut.set_result(data)


@pytest.mark.parametrize("debug", [False, True], ids=["", "debug"])
def test_a_new_task_runs_before_io_of_the_same_turn(run, debug):
    # asyncio runs the callbacks that were ready before a wait ahead of
    # the I/O callbacks that wait found; zcn's loop once handed data
    # straight to data_received inside the wait, ahead of the task made by
    # run_until_complete, whose first step was to set the future. (Debug
    # mode runs callbacks through another path.)
    loop = run.loop
    loop.set_debug(debug)
    proto = _NeedsItsWaiter()
    srv = loop.run_until_complete(loop.create_server(lambda: proto, "127.0.0.1", 0))
    try:
        port = srv.sockets[0].getsockname()[1]
        tr, _ = loop.run_until_complete(
            loop.create_connection(asyncio.Protocol, "127.0.0.1", port))
        run(lambda _loop: wait_for_cond(lambda: proto.made is not None))

        async def receive():
            proto.fut = loop.create_future()
            return await asyncio.wait_for(proto.fut, 5)

        for i in range(20):
            tr.write(b"%d" % i)
            if run.kind == "asyncio":
                time.sleep(0.01)  # its write is sent now: let it land before the wait
            assert loop.run_until_complete(receive()) == b"%d" % i
        tr.close()
    finally:
        srv.close()
        loop.run_until_complete(srv.wait_closed())
    assert run.contexts == []


class _DatagramNeedsItsWaiter(asyncio.DatagramProtocol):
    def __init__(self):
        self.fut = None

    def datagram_received(self, data, addr):
        self.fut.set_result(data)


def test_a_new_task_runs_before_a_datagram_of_the_same_turn(run):
    loop = run.loop
    socks = []
    for _ in range(2):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    t1, _ = loop.run_until_complete(
        loop.create_datagram_endpoint(asyncio.DatagramProtocol, sock=socks[0]))
    t2, p2 = loop.run_until_complete(
        loop.create_datagram_endpoint(_DatagramNeedsItsWaiter, sock=socks[1]))
    addr2 = socks[1].getsockname()

    async def receive():
        p2.fut = loop.create_future()
        return await asyncio.wait_for(p2.fut, 5)

    for i in range(20):
        t1.sendto(b"%d" % i, addr2)
        time.sleep(0.01)
        assert loop.run_until_complete(receive()) == b"%d" % i
    t1.close()
    t2.close()
    run(lambda _loop: asyncio.sleep(0))
    assert run.contexts == []
