"""``python -m zcn http`` and ``python -m zcn resp``: the demo servers.

Both are written in C on the zcn loop (examples/http_server.c and
examples/resp_server.c, compiled into libzero_copy_net as zcn_demo_*): this
module only parses the command line, then runs the loop in C
(zcn_loop_run) on a thread of its own, so no Python runs per message. The
main thread waits for SIGINT/SIGTERM and stops the loop (zcn_loop_stop is
safe from any thread), then prints the counters.
"""
from __future__ import annotations

import ctypes
import queue
import signal
import sys
import threading

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    from typing import Any

_DEFAULT_PORTS = {"http": 8080, "resp": 6380}
_SUMMARY = ("requests", "protocol_errors", "limit_errors", "output_aborts", "rejected",
            "keys", "memory_bytes", "output_holds", "hold_aborts")


def _common_arguments(p, kind):
    p.add_argument("--host", default="127.0.0.1", help="address or name to bind "
                   "(default 127.0.0.1; 0.0.0.0 = all IPv4 interfaces)")
    p.add_argument("--port", type=int, default=_DEFAULT_PORTS[kind],
                   help=f"port (0 = any free one; default {_DEFAULT_PORTS[kind]})")
    p.add_argument("--connections-max", type=int, default=4096,
                   help="open connections at once; more are closed at accept (default 4096)")
    p.add_argument("--backlog", type=int, default=1024, help="listen() backlog (default 1024)")
    p.add_argument("--send-queue-max-bytes", type=int, default=4 << 20,
                   help="answers queued per connection; a peer whose answers to one receive "
                        "do not fit is aborted (default 4 MiB)")
    p.set_defaults(func=lambda args: run_demo(kind, args))


def add_http_parser(subparsers):
    p = subparsers.add_parser(
        "http", help="HTTP/1.1 'Hello, world!' server in C (keep-alive, pipelining)",
        description="Answer every HTTP/1.1 or 1.0 request with a 13-byte 'Hello, world!' "
                    "(TechEmpower plaintext style) until SIGINT/SIGTERM. Keep-alive and "
                    "pipelining; 'Connection: close' is answered, then the connection closed; "
                    "a malformed request gets 400 and a close. Written in C "
                    "(examples/http_server.c): no Python per request.")
    _common_arguments(p, "http")
    p.add_argument("--header-max-bytes", type=int, default=8192,
                   help="request line + headers; more is a 400 (default 8192)")
    p.add_argument("--body-max-bytes", type=int, default=1 << 20,
                   help="largest request body skipped; more is a 400 (default 1 MiB)")
    return p


def add_resp_parser(subparsers):
    p = subparsers.add_parser(
        "resp", help="RESP2 (Redis protocol) in-memory key/value store in C",
        description="An in-memory key/value store speaking RESP2 until SIGINT/SIGTERM: PING, "
                    "ECHO, SET, GET, DEL, INCR, QUIT, COMMAND, CONFIG GET; inline commands; "
                    "pipelining. Malformed input gets -ERR and a close; a full store answers "
                    "-OOM. Written in C (examples/resp_server.c): no Python per command.")
    _common_arguments(p, "resp")
    p.add_argument("--keys-max", type=int, default=1000000, help="keys stored (default 1000000)")
    p.add_argument("--memory-max-bytes", type=int, default=256 << 20,
                   help="bytes of keys, values and entries (default 256 MiB)")
    p.add_argument("--bulk-max-bytes", type=int, default=512 << 10,
                   help="longest argument (a value); more is a protocol error (default 512 KiB)")
    p.add_argument("--args-max", type=int, default=1024,
                   help="arguments of one command; more is a protocol error (default 1024)")
    p.add_argument("--key-max-bytes", type=int, default=512, help="longest key (default 512)")
    p.add_argument("--inline-max-bytes", type=int, default=1024,
                   help="longest inline command line (default 1024)")
    return p


def _u32(args, name):
    value = getattr(args, name)
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"--{name.replace('_', '-')} must be in 0..4294967295")
    return value


def _configs(kind, args):
    from . import _ffi
    from ._util import resolve_host

    loop_cfg = _ffi.LoopConfig(connections_max=_u32(args, "connections_max"),
                               send_queue_max_bytes=_u32(args, "send_queue_max_bytes"))
    demo_cfg = _ffi.DemoConfig(address=resolve_host(args.host).encode(), port=args.port,
                               backlog=_u32(args, "backlog"),
                               connections_max=_u32(args, "connections_max"))
    if not 0 <= args.port <= 65535:
        raise ValueError("--port must be in 0..65535")
    names = (("header_max_bytes", "body_max_bytes") if kind == "http" else
             ("keys_max", "bulk_max_bytes", "args_max", "key_max_bytes", "inline_max_bytes"))
    for name in names:
        setattr(demo_cfg, name, _u32(args, name))
    if kind == "resp":
        if args.memory_max_bytes < 0:
            raise ValueError("--memory-max-bytes must be >= 0")
        demo_cfg.memory_max_bytes = args.memory_max_bytes
    return loop_cfg, demo_cfg


def _serve(kind, loop_cfg, demo_cfg, started, done):
    """The loop's thread: creates the loop and the demo (so this thread owns
    them), reports the port (or the error), runs until stopped, destroys."""
    from . import _ffi
    from .errors import error_from_code

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    err = ctypes.c_int(0)
    loop = _ffi.zcn_loop_create(ctypes.byref(loop_cfg), ctypes.byref(err))
    if not loop:
        started.put(error_from_code(err.value, "zcn_loop_create"))
        return
    create = _ffi.zcn_demo_http_create if kind == "http" else _ffi.zcn_demo_resp_create
    demo = create(loop, ctypes.byref(demo_cfg), ctypes.byref(err))
    if not demo:
        started.put(error_from_code(err.value, create.__name__))
        _ffi.zcn_loop_destroy(loop)
        return
    started.put((loop, _ffi.zcn_demo_port(demo)))
    rc = _ffi.zcn_loop_run(loop)
    stats = _ffi.DemoStats()
    _ffi.zcn_demo_stats(demo, ctypes.byref(stats))
    _ffi.zcn_demo_destroy(demo)
    _ffi.zcn_loop_destroy(loop)
    done.append((rc, stats))


def run_demo(kind, args):
    from . import _ffi
    from .errors import ZcnError

    try:
        loop_cfg, demo_cfg = _configs(kind, args)
    except (OSError, ValueError) as exc:
        print(f"zcn {kind}: {exc}", file=sys.stderr)
        return 2
    started: queue.Queue[Any] = queue.Queue()
    done: list[Any] = []
    thread = threading.Thread(target=_serve, args=(kind, loop_cfg, demo_cfg, started, done),
                              name=f"zcn-{kind}", daemon=True)
    thread.start()
    first = started.get()
    if isinstance(first, BaseException):
        thread.join()
        reason = f"{type(first).__name__}: {first}" if isinstance(first, ZcnError) else first
        print(f"zcn {kind}: cannot start on {args.host} port {args.port}: {reason}",
              file=sys.stderr)
        return 1
    loop, port = first
    previous = {sig: signal.signal(sig, lambda *_: _ffi.zcn_loop_stop(loop))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        host = demo_cfg.address.decode()
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        print(f"zcn {kind} listening on {shown}", flush=True)
        while thread.is_alive():
            thread.join(0.5)  # signals are handled between joins
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    rc, stats = done[0] if done else (-1, None)
    if stats is not None:
        summary = " ".join(f"{name}={getattr(stats, name)}" for name in _SUMMARY)
        print(f"zcn {kind} stats: {summary}", flush=True)
    if rc != 0:
        print(f"zcn {kind}: the loop ended with {_ffi.zcn_error_name(rc).decode()}",
              file=sys.stderr)
        return 1
    return 0
