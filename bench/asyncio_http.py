"""A minimal HTTP/1.1 keep-alive server on asyncio, for the benchmark of
zcn's asyncio loop against uvloop and the standard loop (driven by wrk,
bench/asyncio_apps.py). The same Protocol on every loop:

    python bench/asyncio_http.py [--loop asyncio|uvloop|zcn] [--host H] [--port P]
                                 [--backlog N]

Prints "asyncio_http listening on HOST:PORT (loop=...)" and serves until
SIGINT/SIGTERM. Every request, whatever its method and target, is answered
``200 OK`` with the body ``Hello, world!`` and its Content-Length.

What it does of HTTP/1.1, and no more:

* pipelining: every complete request in a read is answered, in order, with
  one transport.write for all of them;
* keep-alive: HTTP/1.1 connections stay open unless the request says
  ``Connection: close`` (then the answer says it too and the connection is
  closed after it); HTTP/1.0 ones close unless they ask ``keep-alive``;
* request bodies with a Content-Length are read and skipped;
  ``Transfer-Encoding`` (chunked) bodies are refused with 501 and a close;
* a malformed request line or header gets 400 and a close, a head over
  64 KiB 431 and a close;
* backpressure: pause_writing stops reading until resume_writing.
"""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from asyncio_echo import serve_protocol_main  # noqa: E402

BODY = b"Hello, world!"
_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
         + str(len(BODY)).encode() + b"\r\n")
OK_KEEP = _HEAD + b"\r\n" + BODY
OK_CLOSE = _HEAD + b"Connection: close\r\n\r\n" + BODY
OK_KEEP_10 = _HEAD + b"Connection: keep-alive\r\n\r\n" + BODY


def _error(status):
    reason = {400: b"Bad Request", 431: b"Request Header Fields Too Large",
              501: b"Not Implemented"}[status]
    body = reason + b"\n"
    return (b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (status, reason, len(body), body))


HEAD_MAX = 65536


class HttpProtocol(asyncio.Protocol):
    __slots__ = ("transport", "buf", "skip", "closing")

    def connection_made(self, transport):
        self.transport = transport
        self.buf = b""
        self.skip = 0        # body bytes of the current request still to come
        self.closing = False

    def data_received(self, data):
        if self.closing:
            return
        if self.skip:
            if len(data) <= self.skip:
                self.skip -= len(data)
                return
            data = data[self.skip:]
            self.skip = 0
        buf = self.buf + data if self.buf else data
        out = []
        pos = 0
        n = len(buf)
        while pos < n:
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                if n - pos > HEAD_MAX:
                    out.append(_error(431))
                    self.closing = True
                break
            answer, body, close = self.parse(buf[pos:end])
            out.append(answer)
            pos = end + 4
            if close:
                self.closing = True
                break
            if body:
                if n - pos < body:
                    self.skip = body - (n - pos)
                    pos = n
                    break
                pos += body
        self.buf = buf[pos:] if pos < n and not self.closing else b""
        if out:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])
        if self.closing:
            self.transport.close()

    @staticmethod
    def parse(head):
        """(answer, body length to skip, close after it) for one request head."""
        lines = head.split(b"\r\n")
        request = lines[0].split(b" ")
        if len(request) != 3 or not request[2].startswith(b"HTTP/1."):
            return _error(400), 0, True
        http10 = request[2] == b"HTTP/1.0"
        keep = not http10
        body = 0
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name[-1:] in (b" ", b"\t"):
                return _error(400), 0, True
            name = name.lower()
            if name == b"connection":
                tokens = [t.strip() for t in value.lower().split(b",")]
                if b"close" in tokens:
                    keep = False
                elif b"keep-alive" in tokens:
                    keep = True
            elif name == b"content-length":
                value = value.strip()
                if not value.isdigit():
                    return _error(400), 0, True
                body = int(value)
            elif name == b"transfer-encoding":
                return _error(501), 0, True
        if not keep:
            return OK_CLOSE, body, True
        return (OK_KEEP_10 if http10 else OK_KEEP), body, False

    def pause_writing(self):
        self.transport.pause_reading()

    def resume_writing(self):
        self.transport.resume_reading()


def main(argv=None):
    return serve_protocol_main(HttpProtocol, "asyncio_http", __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
