"""Baseline echo servers for the benchmark: an asyncio Protocol, on the
standard event loop or on uvloop's (the same code, one flag).

    python bench/asyncio_echo.py [--loop asyncio|uvloop] [--host H] [--port P]
                                 [--backlog N]

Prints "asyncio_echo listening on HOST:PORT (loop=...)" and serves until
SIGINT/SIGTERM. data_received writes the bytes straight back
(transport.write), which is what an asyncio user writes; both loops set
TCP_NODELAY on accepted sockets. The backlog is raised from asyncio's
default of 100 to what a server expecting 10,000 connections would use, and
RLIMIT_NOFILE's soft limit to its hard limit.
"""
from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import sys


class Echo(asyncio.Protocol):
    __slots__ = ("transport",)

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def serve(host, port, backlog, loop_name):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, host, port, backlog=backlog)
    bound = server.sockets[0].getsockname()
    print(f"asyncio_echo listening on {bound[0]}:{bound[1]} (loop={loop_name})", flush=True)
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    async with server:
        await stop


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backlog", type=int, default=4096)
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            print("asyncio_echo: uvloop is not installed (pip install .[bench])", file=sys.stderr)
            return 3
        runner = uvloop.run if hasattr(uvloop, "run") else None
        if runner is not None:
            runner(serve(args.host, args.port, args.backlog, "uvloop"))
        else:
            uvloop.install()
            asyncio.run(serve(args.host, args.port, args.backlog, "uvloop"))
    else:
        asyncio.run(serve(args.host, args.port, args.backlog, "asyncio"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
