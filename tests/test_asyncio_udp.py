"""create_datagram_endpoint on zcn's asyncio loop (zcn.aio, datagram
transports in zcn/_aio_udp.py) against asyncio's own loop.

Every behavioural test runs on both loops ("zcn" and "asyncio") with the
same assertions: where asyncio's loop does something, zcn's must do the
same. Real sockets on 127.0.0.1 / ::1, port 0; each test bounded by the
timeout marker. The zcn-only tests check that the zcn transport is the one
in use (and asyncio's own for what zcn leaves to it: AF_UNIX), that a
write buffer builds and drains with pause_writing/resume_writing when zcn
refuses, and what happens when the loop closes under an endpoint.
"""
from __future__ import annotations

import asyncio
import gc
import os
import socket
import struct
import tempfile
import warnings

import pytest

from conftest import loop_unavailable_reason

if loop_unavailable_reason() is not None:  # pragma: no cover
    pytest.skip(f"no zcn loop here: {loop_unavailable_reason()}",
                allow_module_level=True)

import zcn.aio  # noqa: E402
from zcn import _aio_udp  # noqa: E402

pytestmark = pytest.mark.timeout(60)

SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)
SK_MEMINFO_DROPS = 8


def _has_ipv6():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture(params=["zcn", "asyncio"])
def loop(request):
    lp = zcn.aio.new_event_loop() if request.param == "zcn" else asyncio.SelectorEventLoop()
    lp.kind = request.param
    errors = []
    lp.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    lp.errors = errors
    yield lp
    lp.close()


@pytest.fixture
def zloop():
    lp = zcn.aio.new_event_loop()
    errors = []
    lp.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    lp.errors = errors
    yield lp
    lp.close()


def run(loop, coro, timeout=20):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


async def until(pred, timeout=5.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.002)


def check_transport(loop, tr):
    """zcn's loop gives UDP sockets its own transport."""
    if getattr(loop, "kind", "zcn") == "zcn":
        assert type(tr).__name__ == "_ZcnDatagramTransport"
    assert isinstance(tr, asyncio.Transport)  # as asyncio's own (test_events)


class Recorder(asyncio.DatagramProtocol):
    """Records every call, in order; echo=True sends each datagram back."""

    def __init__(self, echo=False):
        self.echo = echo
        self.events = []
        self.datagrams = []
        self.errors = []
        self.transport = None
        self.lost = asyncio.get_running_loop().create_future()
        self.paused = self.resumed = 0

    def connection_made(self, transport):
        self.events.append("made")
        self.transport = transport

    def datagram_received(self, data, addr):
        assert type(data) is bytes
        self.datagrams.append((data, addr))
        if self.echo:
            self.transport.sendto(data, addr)

    def error_received(self, exc):
        self.events.append(("error", type(exc)))
        self.errors.append(exc)

    def connection_lost(self, exc):
        self.events.append(("lost", exc))
        if not self.lost.done():
            self.lost.set_result(exc)

    def pause_writing(self):
        self.paused += 1

    def resume_writing(self):
        self.resumed += 1


async def endpoint(echo=False, **kw):
    loop = asyncio.get_running_loop()
    return await loop.create_datagram_endpoint(lambda: Recorder(echo), **kw)


def plain(family=socket.AF_INET, host="127.0.0.1"):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.settimeout(5)
    return s


# --- echo, connected and unconnected endpoints -------------------------------

def test_echo_unconnected_and_connected(loop):
    async def main():
        st, server = await endpoint(echo=True, local_addr=("127.0.0.1", 0))
        check_transport(loop, st)
        addr = st.get_extra_info("sockname")
        assert st.get_extra_info("peername") is None
        ct, client = await endpoint(remote_addr=addr)
        check_transport(loop, ct)
        assert ct.get_extra_info("peername") == addr
        assert client.events == ["made"] and server.events == ["made"]
        for i in range(50):
            ct.sendto(b"msg %d" % i)
        await until(lambda: len(client.datagrams) == 50)
        assert [d for d, _ in client.datagrams] == [b"msg %d" % i for i in range(50)]
        assert all(a == addr for _, a in client.datagrams)
        caddr = ct.get_extra_info("sockname")
        assert all(a == caddr for _, a in server.datagrams)
        # an unconnected endpoint talking to a plain socket
        peer = plain()
        st.sendto(b"to plain", peer.getsockname())
        assert peer.recv(100) == b"to plain"  # sent by sendto itself, as asyncio's
        peer.sendto(b"from plain", addr)
        await until(lambda: any(d == b"from plain" for d, _ in server.datagrams))
        assert (b"from plain", peer.getsockname()) in server.datagrams
        assert st.get_write_buffer_size() == 0 and ct.get_write_buffer_size() == 0
        ct.close()
        st.close()
        assert await client.lost is None
        assert await server.lost is None
        peer.close()
        return client.events, server.events

    cev, sev = run(loop, main())
    assert cev == ["made", ("lost", None)]
    assert sev == ["made", ("lost", None)]
    assert not loop.errors


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback")
def test_ipv6_echo_and_peer_tuples(loop):
    async def main():
        st, server = await endpoint(echo=True, local_addr=("::1", 0))
        check_transport(loop, st)
        addr = st.get_extra_info("sockname")
        assert len(addr) == 4
        peer = plain(socket.AF_INET6, "::1")
        peer.setblocking(False)
        peer.sendto(b"six", addr)
        await until(lambda: server.datagrams)
        data, frm = server.datagrams[0]
        assert data == b"six"
        assert frm == peer.getsockname()  # (host, port, flowinfo, scope_id)
        await until(lambda: _readable(peer))
        assert peer.recvfrom(100) == (b"six", addr)
        # a 4-tuple address to sendto, and a connected IPv6 endpoint
        st.sendto(b"four", peer.getsockname())
        await until(lambda: _readable(peer))
        assert peer.recv(100) == b"four"
        ct, client = await endpoint(remote_addr=("::1", addr[1]))
        ct.sendto(b"c6")
        await until(lambda: client.datagrams)
        assert client.datagrams[0][0] == b"c6"
        assert client.datagrams[0][1][:2] == ("::1", addr[1])
        ct.close()
        st.close()
        await client.lost
        await server.lost
        peer.close()

    run(loop, main())
    assert not loop.errors


def _readable(sock):
    try:
        sock.recv(65536, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        return True
    except BlockingIOError:
        return False


def test_large_datagrams(loop):
    async def main():
        st, server = await endpoint(echo=True, local_addr=("127.0.0.1", 0))
        addr = st.get_extra_info("sockname")
        peer = plain()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sizes = [1, 2047, 2048, 3585, 9000, 60000, 65507]
        payloads = [os.urandom(n) for n in sizes]
        for p in payloads:
            peer.sendto(p, addr)
        await until(lambda: len(server.datagrams) == len(sizes))
        assert [d for d, _ in server.datagrams] == payloads
        peer.setblocking(True)
        for p in payloads:
            assert peer.recv(65536) == p
        # too large for UDP: error_received(OSError EMSGSIZE), as from the socket
        st.sendto(b"x" * 65508, peer.getsockname())
        await until(lambda: server.errors)
        assert isinstance(server.errors[0], OSError)
        assert server.errors[0].errno == 90  # EMSGSIZE
        st.close()
        await server.lost
        peer.close()

    run(loop, main())
    assert not loop.errors


# --- a burst -------------------------------------------------------------------

@pytest.mark.parametrize("rcvbuf", [None, 8 << 20])
def test_burst_of_10000(loop, rcvbuf):
    count = 10000

    async def main():
        sock = None
        if rcvbuf is not None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.bind(("127.0.0.1", 0))
            st, server = await endpoint(sock=sock)
        else:
            st, server = await endpoint(local_addr=("127.0.0.1", 0))
        addr = st.get_extra_info("sockname")
        ct, client = await endpoint(remote_addr=addr)
        for i in range(count):
            ct.sendto(struct.pack("!I", i) + b"." * 60)
        raw = st.get_extra_info("socket")

        def drops():
            mem = raw.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 9 * 4)
            return struct.unpack("9I", mem)[SK_MEMINFO_DROPS]

        await until(lambda: len(server.datagrams) + drops() == count, timeout=20)
        await asyncio.sleep(0.05)
        got = [struct.unpack("!I", d[:4])[0] for d, _ in server.datagrams]
        assert got == sorted(got)               # in order, none twice
        assert len(got) + drops() == count      # lost only where the kernel says so
        if rcvbuf is not None:
            assert drops() == 0 and len(got) == count
        dropped = drops()
        ct.close()
        st.close()
        await client.lost
        await server.lost
        return len(got), dropped

    got, dropped = run(loop, main(), timeout=40)
    assert got + dropped == count
    assert not loop.errors


# --- errors ----------------------------------------------------------------

def _dead_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_error_received_on_port_unreachable(loop):
    async def main():
        ct, client = await endpoint(remote_addr=("127.0.0.1", _dead_port()))
        check_transport(loop, ct)
        ct.sendto(b"anyone?")
        await until(lambda: client.errors)
        assert isinstance(client.errors[0], ConnectionRefusedError)
        # the endpoint still works: the next one is refused again
        await asyncio.sleep(0.05)
        ct.sendto(b"still?")
        await until(lambda: len(client.errors) >= 2)
        assert all(isinstance(e, ConnectionRefusedError) for e in client.errors)
        assert not ct.is_closing()
        ct.close()
        await client.lost
        return client.events

    events = run(loop, main())
    assert events[0] == "made" and events[-1] == ("lost", None)
    assert all(e == ("error", ConnectionRefusedError) for e in events[1:-1])
    assert not loop.errors


def test_sendto_checks(loop):
    async def main():
        st, server = await endpoint(local_addr=("127.0.0.1", 0))
        addr = st.get_extra_info("sockname")
        ct, client = await endpoint(remote_addr=addr)
        with pytest.raises(TypeError):
            ct.sendto("text")
        with pytest.raises(ValueError):
            ct.sendto(b"x", ("127.0.0.1", addr[1] + 1))
        ct.sendto(b"same", addr)                 # the connected address is fine
        ct.sendto(b"")                           # nothing up to 3.12, sent from 3.13
        ct.sendto(bytearray(b"ba"))
        ct.sendto(memoryview(b"..mv..")[2:4])
        want = [b"same", b"ba", b"mv"] if _aio_udp._DROPS_EMPTY else [b"same", b"", b"ba", b"mv"]
        await until(lambda: len(server.datagrams) == len(want))
        assert [d for d, _ in server.datagrams] == want
        # names and other forms go through the socket's own sendto
        st.sendto(b"by name", ("localhost", ct.get_extra_info("sockname")[1]))
        await until(lambda: client.datagrams)
        assert client.datagrams[0][0] == b"by name"
        # an unconnected endpoint without an address: asyncio's fatal error
        st.sendto(b"nowhere")
        await server.lost
        ct.close()
        await client.lost
        return server.events

    events = run(loop, main())
    assert len(loop.errors) == 1
    assert loop.errors[0]["message"] == "Fatal write error on datagram transport"
    assert isinstance(loop.errors[0]["exception"], TypeError)
    assert events[-1][0] == "lost" and isinstance(events[-1][1], TypeError)


def test_callback_exception_goes_to_handler(loop):
    class Bad(Recorder):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            if data == b"boom":
                raise RuntimeError("boom")

    async def main():
        st, server = await asyncio.get_running_loop().create_datagram_endpoint(
            Bad, local_addr=("127.0.0.1", 0))
        peer = plain()
        for d in (b"a", b"boom", b"c"):
            peer.sendto(d, st.get_extra_info("sockname"))
        await until(lambda: len(server.datagrams) == 3)
        assert [d for d, _ in server.datagrams] == [b"a", b"boom", b"c"]
        assert not st.is_closing()
        st.close()
        await server.lost
        peer.close()

    run(loop, main())
    assert len(loop.errors) == 1
    assert isinstance(loop.errors[0]["exception"], RuntimeError)


# --- close and abort ---------------------------------------------------------

def test_close_sends_what_was_sent_then_connection_lost(loop):
    async def main():
        peer = plain()
        ct, client = await endpoint(remote_addr=peer.getsockname())
        for i in range(200):
            ct.sendto(b"%d" % i)
        ct.close()
        assert ct.is_closing()
        ct.close()  # twice: nothing more
        ct.sendto(b"after")  # connected and closed: dropped, no exception
        assert await client.lost is None
        assert ct.get_extra_info("socket") is not None
        peer.setblocking(False)
        got = []
        while True:
            try:
                got.append(peer.recv(100))
            except BlockingIOError:
                break
        peer.close()
        return got, client.events

    got, events = run(loop, main())
    assert got == [b"%d" % i for i in range(200)]
    assert events == ["made", ("lost", None)]
    assert not loop.errors


def test_abort(loop):
    async def main():
        st, server = await endpoint(echo=True, local_addr=("127.0.0.1", 0))
        st.abort()
        assert st.is_closing()
        assert await server.lost is None
        st.abort()
        st.close()
        peer = plain()
        peer.sendto(b"late", st.get_extra_info("sockname"))
        await asyncio.sleep(0.05)
        assert server.datagrams == []
        peer.close()
        return server.events

    assert run(loop, main()) == ["made", ("lost", None)]
    assert not loop.errors


def test_close_from_datagram_received_stops_delivery(loop):
    class Closer(Recorder):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            self.transport.sendto(b"bye", addr)
            self.transport.close()

    async def main():
        st, server = await asyncio.get_running_loop().create_datagram_endpoint(
            Closer, local_addr=("127.0.0.1", 0))
        peer = plain()
        for i in range(5):
            peer.sendto(b"%d" % i, st.get_extra_info("sockname"))
        await server.lost
        assert peer.recv(100) == b"bye"
        peer.close()
        return server.datagrams

    got = run(loop, main())
    assert [d for d, _ in got] == [b"0"]


def test_connection_lost_sees_the_socket(loop):
    class Lost(Recorder):
        def connection_lost(self, exc):
            self.name = self.transport.get_extra_info("socket").getsockname()
            super().connection_lost(exc)

    async def main():
        st, server = await asyncio.get_running_loop().create_datagram_endpoint(
            Lost, local_addr=("127.0.0.1", 0))
        addr = st.get_extra_info("sockname")
        st.close()
        await server.lost
        return server.name, addr

    name, addr = run(loop, main())
    assert name == addr


# --- reading flow control, protocol switch ------------------------------------

def test_pause_and_resume_reading(loop):
    async def main():
        st, server = await endpoint(local_addr=("127.0.0.1", 0))
        await asyncio.sleep(0)
        assert st.is_reading()
        st.pause_reading()
        assert not st.is_reading()
        peer = plain()
        for i in range(20):
            peer.sendto(b"%d" % i, st.get_extra_info("sockname"))
        await asyncio.sleep(0.1)
        assert server.datagrams == []
        st.resume_reading()
        await until(lambda: len(server.datagrams) == 20)
        assert [d for d, _ in server.datagrams] == [b"%d" % i for i in range(20)]
        st.close()
        await server.lost
        peer.close()

    run(loop, main())


def test_pause_reading_inside_a_batch(loop):
    class Pauser(Recorder):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            if data == b"5":
                self.transport.pause_reading()

    async def main():
        st, server = await asyncio.get_running_loop().create_datagram_endpoint(
            Pauser, local_addr=("127.0.0.1", 0))
        peer = plain()
        for i in range(10):
            peer.sendto(b"%d" % i, st.get_extra_info("sockname"))
        await until(lambda: len(server.datagrams) == 6)
        await asyncio.sleep(0.1)
        assert len(server.datagrams) == 6
        st.resume_reading()
        await until(lambda: len(server.datagrams) == 10)
        assert [d for d, _ in server.datagrams] == [b"%d" % i for i in range(10)]
        st.close()
        await server.lost
        peer.close()

    run(loop, main())


def test_set_protocol_mid_stream(loop):
    class Switch(Recorder):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            if data == b"2":
                self.transport.set_protocol(self.other)

    async def main():
        other = Recorder()
        st, first = await asyncio.get_running_loop().create_datagram_endpoint(
            Switch, local_addr=("127.0.0.1", 0))
        first.other = other
        peer = plain()
        for i in range(6):
            peer.sendto(b"%d" % i, st.get_extra_info("sockname"))
        await until(lambda: len(first.datagrams) + len(other.datagrams) == 6)
        st.close()
        await other.lost
        peer.close()
        return [d for d, _ in first.datagrams], [d for d, _ in other.datagrams]

    a, b = run(loop, main())
    assert a == [b"0", b"1", b"2"]
    assert b == [b"3", b"4", b"5"]


# --- create_datagram_endpoint's arguments ---------------------------------------

def test_endpoint_arguments(loop):
    async def main():
        lp = asyncio.get_running_loop()
        st, server = await endpoint(local_addr=("127.0.0.1", 0), reuse_port=True,
                                    allow_broadcast=True)
        check_transport(loop, st)
        s = st.get_extra_info("socket")
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST) == 1
        port = st.get_extra_info("sockname")[1]
        # a second endpoint on the same port (reuse_port)
        st2, server2 = await endpoint(local_addr=("127.0.0.1", port), reuse_port=True)
        assert st2.get_extra_info("sockname")[1] == port
        # family= alone: an unbound socket, bound by its first sendto
        ut, unbound = await endpoint(family=socket.AF_INET)
        check_transport(loop, ut)
        ut.sendto(b"hello", ("127.0.0.1", port))
        await until(lambda: server.datagrams or server2.datagrams)
        data, frm = (server.datagrams or server2.datagrams)[0]
        assert data == b"hello"
        assert frm == ("127.0.0.1", ut.get_extra_info("socket").getsockname()[1])
        # proto and flags go to getaddrinfo, as on asyncio's loop
        pt, pp = await endpoint(local_addr=("127.0.0.1", 0), proto=socket.IPPROTO_UDP,
                                flags=socket.AI_NUMERICHOST)
        check_transport(loop, pt)
        for tr, pr in ((st, server), (st2, server2), (ut, unbound), (pt, pp)):
            tr.close()
            await pr.lost

    run(loop, main())
    assert not loop.errors


def test_sock_argument(loop):
    async def main():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        st, server = await endpoint(echo=True, sock=sock)
        check_transport(loop, st)
        assert st.get_extra_info("sockname") == sock.getsockname()
        peer = plain()
        peer.sendto(b"via sock", sock.getsockname())
        await until(lambda: server.datagrams)
        assert peer.recv(100) == b"via sock"
        st.close()
        await server.lost
        assert sock.fileno() == -1  # the transport closed it, as on asyncio's loop
        peer.close()

    run(loop, main())


def test_connected_sock_ignores_sendto_address(loop):
    # asyncio: with a connected socket given as sock= (no remote_addr), sendto
    # sends to the peer whatever address it gets.
    async def main():
        peer = plain()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(peer.getsockname())
        st, server = await endpoint(sock=sock)
        st.sendto(b"to peer", ("127.0.0.1", 9))
        assert peer.recv(100) == b"to peer"
        st.close()
        await server.lost
        peer.close()

    run(loop, main())


def test_unix_datagram_endpoint(loop):
    async def main():
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "s")
            st, server = await endpoint(echo=True, local_addr=path, family=socket.AF_UNIX)
            if loop.kind == "zcn":
                # not zcn's: AF_UNIX datagrams keep asyncio's own transport
                assert type(st).__name__ == "_SelectorDatagramTransport"
            cpath = os.path.join(d, "c")
            ct, client = await endpoint(local_addr=cpath, remote_addr=path,
                                        family=socket.AF_UNIX)
            ct.sendto(b"unix")
            await until(lambda: client.datagrams)
            assert client.datagrams[0] == (b"unix", path)
            ct.close()
            st.close()
            await client.lost
            await server.lost

    run(loop, main())
    assert not loop.errors


# --- zcn only ------------------------------------------------------------------

def test_write_buffer_builds_and_drains(zloop, monkeypatch):
    """zcn refusing sends (its queue full even after a flush) makes asyncio's
    buffer: get_write_buffer_size, pause_writing over the high-water mark,
    drained (in order) when the socket is writable, resume_writing."""
    refuse = {"on": True}
    real = _aio_udp._raw_sendto

    def sendto(*args):
        if refuse["on"]:
            return _aio_udp._QUEUE_FULL
        return real(*args)

    async def main():
        peer = plain()
        ct, client = await endpoint(remote_addr=peer.getsockname())
        ct.set_write_buffer_limits(high=1000, low=100)
        monkeypatch.setattr(_aio_udp, "_raw_sendto", sendto)
        for i in range(30):
            ct.sendto(b"%03d" % i + b"." * 97)
        assert ct.get_write_buffer_size() == 3000
        assert client.paused == 1 and client.resumed == 0
        await asyncio.sleep(0.02)
        assert ct.get_write_buffer_size() == 3000  # still refused
        refuse["on"] = False
        await until(lambda: ct.get_write_buffer_size() == 0)
        assert client.resumed == 1
        got = [peer.recv(200)[:3] for _ in range(30)]
        assert got == [b"%03d" % i for i in range(30)]
        # closing with a buffer: connection_lost once it is sent
        refuse["on"] = True
        ct.sendto(b"last")
        ct.close()
        await asyncio.sleep(0.02)
        assert not client.lost.done()
        refuse["on"] = False
        await client.lost
        assert peer.recv(100) == b"last"
        peer.close()

    run(zloop, main())
    assert not zloop.errors


def test_zcn_transport_and_loop_close():
    """The zcn loop closing under an open endpoint destroys its zcn socket;
    the transport then warns when collected, as asyncio's does."""
    lp = zcn.aio.new_event_loop()

    async def main():
        st, server = await endpoint(local_addr=("127.0.0.1", 0))
        assert type(st).__name__ == "_ZcnDatagramTransport"
        return st

    st = run(lp, main())
    z = st._z
    assert z.handle is not None
    lp.close()
    assert z.handle is None
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        del st
        gc.collect()
    assert any(issubclass(x.category, ResourceWarning) for x in w)


def test_many_endpoints_fall_back_past_the_loops_limit(zloop):
    """A zcn loop takes 64 UDP sockets; the 65th endpoint gets asyncio's
    own transport and works the same."""
    async def main():
        eps = [await endpoint(echo=True, local_addr=("127.0.0.1", 0)) for _ in range(70)]
        kinds = [type(tr).__name__ for tr, _ in eps]
        assert kinds.count("_ZcnDatagramTransport") == 64
        assert kinds.count("_SelectorDatagramTransport") == 6
        peer = plain()
        peer.setblocking(False)
        for tr, _ in eps:
            peer.sendto(b"ping", tr.get_extra_info("sockname"))
        got = []

        def drain():
            while True:
                try:
                    got.append(peer.recvfrom(100))
                except BlockingIOError:
                    return len(got) == len(eps)
        await until(drain)
        assert sorted(a for _, a in got) == sorted(tr.get_extra_info("sockname") for tr, _ in eps)
        for tr, pr in eps:
            tr.close()
            await pr.lost
        peer.close()

    run(zloop, main())
    assert not zloop.errors


def test_keyboard_interrupt_in_datagram_received_keeps_the_rest(loop):
    """A KeyboardInterrupt leaves the loop; the datagrams not yet delivered
    come when it runs again (asyncio's loop had not read them yet)."""
    class Interrupting(Recorder):
        raised = False

        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            if data == b"2" and not self.raised:
                self.raised = True
                raise KeyboardInterrupt

    async def setup():
        st, pr = await asyncio.get_running_loop().create_datagram_endpoint(
            Interrupting, local_addr=("127.0.0.1", 0))
        await asyncio.sleep(0.01)
        return st, pr

    st, pr = run(loop, setup())
    peer = plain()
    for i in range(5):
        peer.sendto(b"%d" % i, st.get_extra_info("sockname"))
    sleeper = loop.create_task(asyncio.sleep(5))
    with pytest.raises(KeyboardInterrupt):
        loop.run_until_complete(sleeper)
    run(loop, until(lambda: len(pr.datagrams) == 5))
    assert [d for d, _ in pr.datagrams] == [b"%d" % i for i in range(5)]
    sleeper.cancel()
    st.close()
    run(loop, pr.lost)
    peer.close()


@pytest.mark.parametrize("kind", ["zcn", "asyncio", "uvloop"])
def test_bench_echo_server_answers(kind):
    """bench/aio_udp_echo.py (the udp_bench.py servers aio-zcn, aio-asyncio,
    aio-uvloop) echoes every datagram, byte for byte, and stops on SIGINT."""
    import signal
    import subprocess
    import sys

    from conftest import TESTS_DIR, zcn_subprocess_env

    if kind == "uvloop":
        pytest.importorskip("uvloop")
    script = os.path.join(os.path.dirname(TESTS_DIR), "bench", "aio_udp_echo.py")
    proc = subprocess.Popen([sys.executable, script, "--loop", kind, "--rcvbuf", str(1 << 20)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=zcn_subprocess_env(), cwd=TESTS_DIR)
    try:
        line = proc.stdout.readline()
        assert line.startswith("ready "), proc.stderr.read()
        port = int(line.split()[1])
        peer = plain()
        payloads = [os.urandom(n) for n in (1, 64, 1400, 9000, 65507)] * 4
        for p in payloads:
            peer.sendto(p, ("127.0.0.1", port))
            assert peer.recv(65536) == p
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert f"echoed {len(payloads)}" in err
    expected = {"zcn": "_ZcnDatagramTransport", "asyncio": "_SelectorDatagramTransport",
                "uvloop": "UDPTransport"}[kind]
    assert expected in err
    peer.close()


_CPYTHON_DATAGRAM_TESTS = """
import io, sys, unittest
import zcn.aio
from test.test_asyncio import test_events as te

class ZcnLoopTests(te.EventLoopTestsMixin, te.SubprocessTestsMixin, te.test_utils.TestCase):
    def create_event_loop(self):
        return zcn.aio.new_event_loop()

loader = unittest.TestLoader()
loader.testNamePatterns = ["*datagram*"]
suite = loader.loadTestsFromTestCase(ZcnLoopTests)
out = io.StringIO()
result = unittest.TextTestRunner(verbosity=2, stream=out).run(suite)
print(out.getvalue())
print("RAN", result.testsRun, "OK" if result.wasSuccessful() else "FAILED")
"""


def test_cpython_test_events_datagram_tests():
    """CPython's own datagram tests of test.test_asyncio.test_events
    (EventLoopTestsMixin: test_create_datagram_endpoint, _ipv6, _sock) on
    zcn's loop, in a fresh interpreter (their tearDown waits for threads
    and children other tests of this process leave)."""
    import subprocess
    import sys

    from conftest import TESTS_DIR, zcn_subprocess_env

    try:
        import test.test_asyncio.test_events  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the interpreter
        pytest.skip(f"CPython's test.test_asyncio is not available ({exc})")
    proc = subprocess.run([sys.executable, "-c", _CPYTHON_DATAGRAM_TESTS], capture_output=True,
                          text=True, timeout=120, env=zcn_subprocess_env(), cwd=TESTS_DIR)
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("RAN ") and last.endswith(" OK"), proc.stdout + proc.stderr
    assert int(last.split()[1]) >= 3, proc.stdout
