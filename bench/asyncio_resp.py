"""A minimal RESP2 (Redis protocol) server on asyncio, for the benchmark of
zcn's asyncio loop against uvloop and the standard loop (driven by
redis-benchmark, bench/asyncio_apps.py). The same Protocol on every loop:

    python bench/asyncio_resp.py [--loop asyncio|uvloop|zcn] [--host H] [--port P]
                                 [--backlog N]

Prints "asyncio_resp listening on HOST:PORT (loop=...)" and serves until
SIGINT/SIGTERM. One in-memory dict of bytes shared by every connection.

Commands (names in any case): PING [message], ECHO message, SET key value
(no options), GET key, DEL key [key ...], INCR key; anything else is
``-ERR unknown command`` and the connection stays usable. Requests are RESP
arrays of bulk strings (what clients send) or inline commands (words on a
line, as typed into telnet). Pipelining: every complete command in a read
is answered, in order, with one transport.write for all of them. A
malformed request gets ``-ERR Protocol error`` and a close; pause_writing
stops reading until resume_writing.
"""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from asyncio_echo import serve_protocol_main  # noqa: E402

OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
NIL = b"$-1\r\n"
NOT_INT = b"-ERR value is not an integer or out of range\r\n"
PROTOCOL_ERROR = b"-ERR Protocol error\r\n"
BULK_MAX = 512 * 1024 * 1024
INLINE_MAX = 64 * 1024
INT64_MAX = (1 << 63) - 1

DB: dict = {}


def _bulk(value):
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _wrong_args(name):
    return b"-ERR wrong number of arguments for '%s' command\r\n" % name.lower()


def execute(args, db=DB):
    """The reply to one command (a list of bytes arguments)."""
    if not args:
        return b""
    name = args[0].upper()
    n = len(args)
    if name == b"GET":
        if n != 2:
            return _wrong_args(name)
        value = db.get(args[1])
        return NIL if value is None else _bulk(value)
    if name == b"SET":
        if n != 3:
            return _wrong_args(name) if n < 3 else b"-ERR syntax error\r\n"
        db[args[1]] = args[2]
        return OK
    if name == b"PING":
        if n == 1:
            return PONG
        return _bulk(args[1]) if n == 2 else _wrong_args(name)
    if name == b"INCR":
        if n != 2:
            return _wrong_args(name)
        value = db.get(args[1], b"0")
        try:
            number = int(value)
        except ValueError:
            return NOT_INT
        if value != b"%d" % number or not -INT64_MAX - 1 <= number <= INT64_MAX:
            return NOT_INT
        if number == INT64_MAX:
            return b"-ERR increment or decrement would overflow\r\n"
        number += 1
        db[args[1]] = b"%d" % number
        return b":%d\r\n" % number
    if name == b"DEL":
        if n < 2:
            return _wrong_args(name)
        count = 0
        for key in args[1:]:
            if db.pop(key, None) is not None:
                count += 1
        return b":%d\r\n" % count
    if name == b"ECHO":
        return _bulk(args[1]) if n == 2 else _wrong_args(name)
    return b"-ERR unknown command '%s'\r\n" % args[0][:128].replace(b"\r", b" ").replace(b"\n", b" ")


def parse(buf, pos):
    """(args, next position) for the command at buf[pos:], (None, pos) if
    it is not complete yet; raises ValueError if it is malformed."""
    n = len(buf)
    if buf[pos] == 42:  # b"*": an array of bulk strings
        nl = buf.find(b"\r\n", pos)
        if nl < 0:
            if n - pos > INLINE_MAX:
                raise ValueError("array header too long")
            return None, pos
        count = int(buf[pos + 1:nl])
        if count > 1024 * 1024:
            raise ValueError("array too long")
        p = nl + 2
        args = []
        for _ in range(count):
            if p >= n:
                return None, pos
            if buf[p] != 36:  # b"$"
                raise ValueError("expected a bulk string")
            nl = buf.find(b"\r\n", p)
            if nl < 0:
                return None, pos
            size = int(buf[p + 1:nl])
            if not 0 <= size <= BULK_MAX:
                raise ValueError("bad bulk length")
            start = nl + 2
            end = start + size
            if end + 2 > n:
                return None, pos
            if buf[end:end + 2] != b"\r\n":
                raise ValueError("bulk string not terminated")
            args.append(buf[start:end])
            p = end + 2
        return args, p
    nl = buf.find(b"\n", pos)  # an inline command
    if nl < 0:
        if n - pos > INLINE_MAX:
            raise ValueError("inline command too long")
        return None, pos
    return buf[pos:nl].split(), nl + 1


class RespProtocol(asyncio.Protocol):
    __slots__ = ("transport", "buf")

    def connection_made(self, transport):
        self.transport = transport
        self.buf = b""

    def data_received(self, data):
        buf = self.buf + data if self.buf else data
        out = []
        pos = 0
        n = len(buf)
        close = False
        while pos < n:
            try:
                args, pos = parse(buf, pos)
            except ValueError:
                out.append(PROTOCOL_ERROR)
                close = True
                break
            if args is None:
                break
            out.append(execute(args))
        self.buf = buf[pos:] if pos < n else b""
        if out:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])
        if close:
            self.transport.close()

    def pause_writing(self):
        self.transport.pause_reading()

    def resume_writing(self):
        self.transport.resume_reading()


def main(argv=None):
    return serve_protocol_main(RespProtocol, "asyncio_resp", __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
