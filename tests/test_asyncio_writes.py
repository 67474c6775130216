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
