"""Writes on zcn's asyncio transports that zcn's send queue cannot take at
once: they wait in the transport and go on as the queue drains, in order,
on zcn's loop as on asyncio's own."""
import asyncio
import hashlib

import pytest

from conftest import require_loop

pytestmark = pytest.mark.timeout(60)


def _loops():
    import zcn
    return {"zcn": zcn.new_event_loop, "asyncio": asyncio.new_event_loop}


@pytest.fixture(params=["zcn", "asyncio"])
def new_loop(request):
    if request.param == "zcn":
        require_loop()
    loop = _loops()[request.param]()
    yield loop
    loop.close()


async def _echo_roundtrip(payloads, **loop_options):
    async def handle(reader, writer):
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    want = hashlib.sha256()
    total = 0
    for p in payloads:
        writer.write(p)         # no drain: everything waits in the transport
        want.update(p)
        total += len(p)
    writer.write_eof()
    got = hashlib.sha256()
    n = 0
    while data := await reader.read(1 << 16):
        got.update(data)
        n += len(data)
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return n, total, got.hexdigest() == want.hexdigest()


def test_one_write_larger_than_the_send_queue(new_loop):
    # 4 MiB in one write() against zcn's 1 MiB queue: it once waited for a
    # DRAIN that never came (EMSGSIZE refuses nothing for room).
    blob = bytes(range(256)) * (4 * 4096)
    n, total, same = new_loop.run_until_complete(_echo_roundtrip([blob]))
    assert (n, same) == (total, True)


def test_many_writes_past_the_queue_in_order(new_loop):
    chunks = [bytes([i % 251]) * (1000 + i) for i in range(3000)]  # ~7.5 MiB
    n, total, same = new_loop.run_until_complete(_echo_roundtrip(chunks))
    assert (n, same) == (total, True)


def test_a_small_send_queue_large_writes():
    require_loop()
    import zcn
    loop = zcn.new_event_loop(send_queue_max_bytes=64 * 1024)
    try:
        blob = b"z" * (3 * 1024 * 1024 + 7)
        n, total, same = loop.run_until_complete(_echo_roundtrip([blob, b"tail"]))
        assert (n, same) == (total, True)
    finally:
        loop.close()


@pytest.mark.parametrize("pool", [16, 64])
def test_writes_larger_than_a_small_pools_buffer_cap(pool):
    # In a pool of 64 (or 16) buffers of 4 KiB one connection may hold 12
    # (or 3) of them, far under the 1 MiB queue. A 64 KiB write once got
    # QUEUE_FULL with an empty queue, and the DRAIN it waited for never
    # came: the echo hung. Now zcn says EMSGSIZE and the transport sends
    # in pieces that fit.
    require_loop()
    import zcn
    loop = zcn.new_event_loop(buffer_pool_size=pool, buffer_size=4096)
    try:
        blobs = [bytes([i]) * (64 * 1024) for i in range(4)] + [b"y" * 200_000]
        n, total, same = loop.run_until_complete(
            asyncio.wait_for(_echo_roundtrip(blobs), 20))
        assert (n, same) == (total, True)
    finally:
        loop.close()


def test_peers_that_never_read_leave_the_loop_asleep():
    # Eight peers that never read, on a pool so small that their queued
    # data and the receive ring take every buffer. The writers' data waits
    # in the transports, and the loop used to run ~45,000 turns a second
    # trying again: a DRAIN asked for under the low-water mark came at
    # once, every turn, and EXHAUSTED was retried every turn. Now it
    # sleeps between retries that back off to 20 ms.
    require_loop()
    import socket
    import zcn

    async def main():
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        floods = []

        async def flood(reader, writer):
            floods.append(asyncio.current_task())
            await reader.read(4)
            chunk = b"x" * 65536
            while not stop.is_set():
                writer.write(chunk)
                await writer.drain()

        server = await asyncio.start_server(flood, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        peers = []
        for _ in range(8):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", port))
            s.sendall(b"fill")
            peers.append(s)
        zl = loop._selector._zl
        held, sent = 0, -1
        for _ in range(200):  # until the peers' data is stuck in zcn
            await asyncio.sleep(0.01)
            tcp = zl.stats().tcp
            held = tcp.buffers_held
            if held and tcp.bytes_sent == sent:
                break
            sent = tcp.bytes_sent
        t0 = zl.stats().turns
        await asyncio.sleep(0.5)
        turns = zl.stats().turns - t0
        stop.set()
        for task in floods:
            task.cancel()
        await asyncio.gather(*floods, return_exceptions=True)
        for s in peers:
            s.close()
        server.close()
        return held, turns

    loop = zcn.new_event_loop(buffer_pool_size=64, buffer_size=4096)
    try:
        held, turns = loop.run_until_complete(main())
    finally:
        loop.close()
    assert held > 0, "the peers' data never got stuck in zcn's queues"
    assert turns < 2000, f"{turns} loop turns in 0.5 s while nothing could move"
