"""Baseline echo servers for the benchmark: an asyncio echo, as a Protocol
or with streams, on the standard event loop, on uvloop's or on zcn's (the
same code, one flag).

    python bench/asyncio_echo.py [--loop asyncio|uvloop|zcn]
                                 [--api protocol|streams]
                                 [--host H] [--port P] [--backlog N]

Prints "asyncio_echo listening on HOST:PORT (loop=..., api=...)" and serves
until SIGINT/SIGTERM. What an asyncio user writes:

* protocol: data_received writes the bytes straight back (transport.write);
* streams: asyncio.start_server with a handler looping
  ``data = await reader.read(65536)``, ``writer.write(data)``,
  ``await writer.drain()`` until EOF.

All three loops set TCP_NODELAY on accepted sockets. --loop zcn is
``zcn.aio.new_event_loop()`` with the library's defaults. The backlog is
raised from asyncio's default of 100 to what a server expecting 10,000
connections would use, and RLIMIT_NOFILE's soft limit to its hard limit.

``run_on(loop_name, coroutine)`` is shared with the other asyncio servers
of the benchmark (bench/asyncio_http.py, bench/asyncio_resp.py).
"""
from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import sys

LOOPS = ("asyncio", "uvloop", "zcn")
APIS = ("protocol", "streams")


class Echo(asyncio.Protocol):
    __slots__ = ("transport",)

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def echo_stream(reader, writer):
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


async def serve_until_signalled(server, banner):
    """Prints the banner (HOST:PORT filled in) and serves until SIGINT or
    SIGTERM."""
    loop = asyncio.get_running_loop()
    bound = server.sockets[0].getsockname()
    print(banner.format(address=f"{bound[0]}:{bound[1]}"), flush=True)
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    async with server:
        await stop


async def serve(host, port, backlog, loop_name, api):
    loop = asyncio.get_running_loop()
    if api == "streams":
        server = await asyncio.start_server(echo_stream, host, port, backlog=backlog)
    else:
        server = await loop.create_server(Echo, host, port, backlog=backlog)
    await serve_until_signalled(
        server, f"asyncio_echo listening on {{address}} (loop={loop_name}, api={api})")


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_on(loop_name, coro, prog="asyncio_echo"):
    """Runs coro to completion on the named loop; returns an exit status
    (3 when the loop's package is missing, after saying so)."""
    if loop_name == "uvloop":
        try:
            import uvloop
        except ImportError:
            coro.close()
            print(f"{prog}: uvloop is not installed (pip install .[bench])", file=sys.stderr)
            return 3
        if hasattr(uvloop, "run"):
            uvloop.run(coro)
        else:
            uvloop.install()
            asyncio.run(coro)
    elif loop_name == "zcn":
        try:
            import zcn.aio
        except ImportError as exc:
            coro.close()
            print(f"{prog}: zcn.aio cannot be imported: {exc}", file=sys.stderr)
            return 3
        zcn.aio.run(coro)
    else:
        asyncio.run(coro)
    return 0


def serve_protocol_main(protocol_factory, prog, description, argv=None):
    """The command line of a Protocol server (bench/asyncio_http.py,
    asyncio_resp.py): --loop, --host, --port, --backlog; serves until
    SIGINT/SIGTERM; the exit status."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--loop", choices=LOOPS, default="asyncio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backlog", type=int, default=4096)
    args = parser.parse_args(argv)
    raise_nofile()

    async def serve_it():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(protocol_factory, args.host, args.port,
                                          backlog=args.backlog)
        await serve_until_signalled(server, f"{prog} listening on {{address}} (loop={args.loop})")

    return run_on(args.loop, serve_it(), prog=prog)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=LOOPS, default="asyncio")
    parser.add_argument("--api", choices=APIS, default="protocol")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backlog", type=int, default=4096)
    args = parser.parse_args(argv)
    raise_nofile()
    return run_on(args.loop, serve(args.host, args.port, args.backlog, args.loop, args.api))


if __name__ == "__main__":
    sys.exit(main())
