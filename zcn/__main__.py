"""The zcn command line: ``python -m zcn <command>`` (or ``zcn <command>``).

    python -m zcn echo --port 8080 --handler c      TCP echo server (Ctrl-C ends it)
    python -m zcn echo --port 8080 --handler python the same through a Python on_data
    python -m zcn echo --handler python --workers 4  ... in 4 processes (zcn.run_workers)
    python -m zcn proxy --listen H:P --upstream H:P  zero-copy TCP proxy (C or Python handler)
    python -m zcn http --port 8080                  HTTP/1.1 "Hello, world!" server in C
    python -m zcn resp --port 6380                  RESP2 key/value store in C (redis-cli)
    python -m zcn version                           library, bindings, io_uring here

Each subcommand is a ``add_*_parser(subparsers)`` function that registers
itself with ``set_defaults(func=...)``; ``func(args)`` returns the exit code.
Subcommands that live in other modules (``bench``, ``udp-echo``) are added
when their module is present, so adding one is one line in _REGISTRARS.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import warnings

_STATS_SUMMARY = ("connections_accepted", "connections_closed", "connections_rejected",
                  "bytes_received", "bytes_sent", "recv_ops", "send_ops",
                  "sends_zero_copy", "sends_copied", "send_queue_full_events",
                  "buffer_exhaustion_events", "idle_timeouts")


# --- echo ---------------------------------------------------------------------
def add_echo_parser(subparsers):
    p = subparsers.add_parser(
        "echo", help="TCP echo server on io_uring",
        description="Echo every byte received back to its sender until SIGINT/SIGTERM, "
                    "then print a one-line summary of the server's counters.")
    p.add_argument("--host", default="127.0.0.1", help="address or name to bind "
                   "(default 127.0.0.1; 0.0.0.0 = all IPv4 interfaces)")
    p.add_argument("--port", type=int, default=8080, help="port (0 = any free one; "
                   "default 8080)")
    p.add_argument("--handler", choices=("c", "python"), default="c",
                   help="c: the built-in C echo, no Python per message; python: a Python "
                        "on_data that sends the received view back (default c)")
    p.add_argument("--buffer-size", type=int, default=16384,
                   help="bytes per receive buffer, rounded up to 4096 (default 16384)")
    p.add_argument("--buffer-pool-size", type=int, default=1024,
                   help="receive and send buffers (default 1024)")
    p.add_argument("--connections-max", type=int, default=4096,
                   help="open connections at once; more are closed at accept (default 4096)")
    p.add_argument("--backlog", type=int, default=1024, help="listen() backlog (default 1024)")
    p.add_argument("--io-uring-entries", type=int, default=256,
                   help="io_uring submission queue entries (default 256)")
    p.add_argument("--send-queue-max-bytes", type=int, default=1 << 20,
                   help="per-connection send queue limit (default 1 MiB)")
    p.add_argument("--idle-timeout", type=float, default=None,
                   help="close connections idle this many seconds (default: never)")
    p.add_argument("--reuse-port", action="store_true", help="set SO_REUSEPORT")
    p.add_argument("--backend", choices=("auto", "io_uring", "epoll"), default="auto",
                   help="io_uring, epoll, or auto: io_uring with epoll where it is refused "
                        "(the default; the ZCN_BACKEND environment variable also chooses)")
    p.add_argument("--busy-poll", type=int, default=0, metavar="US",
                   help="busy polling: spin on completions for up to US microseconds "
                        "(at most 10000) since the last one before sleeping; lower latency "
                        "for a CPU kept busy while traffic flows (default 0: off)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="N loops on N threads, one SO_REUSEPORT listener each "
                        "(docs/THREADS.md); with --handler python the threads take turns "
                        "on the GIL unless Python is free-threaded (3.13t): --workers N "
                        "for several cores")
    p.add_argument("--cpus", default=None, metavar="LIST",
                   help="with --threads: pin loop i to the i-th CPU of this comma-separated "
                        "list (e.g. 0,1)")
    p.add_argument("--steer", action="store_true",
                   help="with --threads and --cpus: send each new connection to the loop "
                        "pinned to the CPU that received it (reuseport BPF)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="N processes, one SO_REUSEPORT listener each (zcn.run_workers, "
                        "docs/THREADS.md): Python handlers on several cores; either handler")
    p.set_defaults(func=run_echo)
    return p


def _format_address(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _python_echo(server):
    """on_data/on_drain/on_close for an echo that keeps order under
    backpressure: the received view goes back without a copy; when the
    queue is full the rest is copied and sent on drain."""
    import zcn

    send = server.send
    backlog: dict[int, list[bytes]] = {}  # fd -> [bytes ...] waiting for on_drain

    def on_data(fd, data):
        waiting = backlog.get(fd)
        if waiting:
            waiting.append(bytes(data))
            return
        try:
            send(fd, data)
        except zcn.QueueFullError:
            backlog[fd] = [bytes(data)]
        except zcn.ClosedError:
            pass  # the peer is gone (reset in this batch): nothing to answer

    def on_drain(fd):
        waiting = backlog.get(fd)
        while waiting:
            try:
                send(fd, waiting[0])
            except zcn.QueueFullError:
                return
            except zcn.ClosedError:
                break
            waiting.pop(0)
        backlog.pop(fd, None)

    def on_close(fd):
        backlog.pop(fd, None)

    return on_data, on_drain, on_close


def _threads_args(args):
    """The threads/cpus/steer keywords of --threads/--cpus/--steer (or
    ValueError saying what is wrong with them)."""
    if args.threads is None:
        if args.cpus is not None or args.steer:
            raise ValueError("--cpus and --steer go with --threads N")
        return {}
    if args.handler != "c" and args.steer:
        raise ValueError("--steer steers between the C handler's loops (--handler c)")
    kw = {"threads": args.threads, "steer": args.steer}
    if args.cpus is not None:
        try:
            kw["cpus"] = [int(c) for c in args.cpus.split(",")]
        except ValueError:
            raise ValueError(f"--cpus must be comma-separated CPU numbers, got "
                             f"{args.cpus!r}") from None
    return kw


def run_echo(args):
    import zcn
    from zcn._util import backend_line

    if args.workers is not None:
        if args.threads is not None or args.cpus is not None or args.steer:
            print("zcn echo: --workers N runs N processes, --threads N (with --cpus, "
                  "--steer) N loops in one: choose one", file=sys.stderr)
            return 1
        from zcn._workers_cli import run_echo_workers
        return run_echo_workers(args, _python_echo, _format_address, _STATS_SUMMARY)
    try:
        kw = _threads_args(args)  # threads=N implies reuse_port (a listener per loop)
        if kw and args.handler == "python":
            from zcn.threaded import gil_enabled

            if gil_enabled():
                print("zcn echo: note: under the GIL the threads run one Python handler at "
                      "a time; --workers N runs Python handlers on several cores",
                      file=sys.stderr)
            warnings.filterwarnings("ignore", "zcn.TcpServer.handler='python', threads=N",
                                    RuntimeWarning)
        server = zcn.TcpServer(
            args.host, args.port, handler=args.handler, buffer_size=args.buffer_size,
            buffer_pool_size=args.buffer_pool_size, connections_max=args.connections_max,
            backlog=args.backlog, io_uring_entries=args.io_uring_entries,
            send_queue_max_bytes=args.send_queue_max_bytes, idle_timeout=args.idle_timeout,
            reuse_port=args.reuse_port or bool(kw), backend=args.backend,
            busy_poll_us=args.busy_poll, **kw)
    except (OSError, ValueError, TypeError, zcn.ZcnError) as exc:
        print(f"zcn echo: cannot listen on {args.host} port {args.port}: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.handler == "python":
        server.on_data, server.on_drain, server.on_close = _python_echo(server)
    previous = {sig: signal.signal(sig, lambda *_: server.stop())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"zcn echo listening on {_format_address(server.host, server.port)} "
              f"(handler={args.handler})", flush=True)
        print(backend_line(server), flush=True)
        from zcn.threaded import ThreadedPythonServer, ThreadedTcpServer
        threaded = (server if isinstance(server, (ThreadedTcpServer, ThreadedPythonServer))
                    else None)
        if threaded is not None:
            cpus = threaded.cpus
            pinned = "" if cpus[0] is None else " on CPUs " + ",".join(map(str, cpus))
            print(f"threads: {threaded.threads} loops{pinned}"
                  f"{', steered by CPU' if args.steer else ''}", flush=True)
        server.serve_forever()
        stats = server.stats()
        if threaded is not None:
            per = " ".join(f"loop{i}={ls.tcp.connections_accepted}"
                           for i, ls in enumerate(threaded.loop_stats()))
            print(f"zcn echo connections per loop: {per}", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.server_close()
    summary = " ".join(f"{name}={getattr(stats, name)}" for name in _STATS_SUMMARY)
    print(f"zcn echo stats: {summary}", flush=True)
    return 0


# --- version ------------------------------------------------------------------
def add_version_parser(subparsers):
    p = subparsers.add_parser("version", help="library and binding versions, io_uring here")
    p.set_defaults(func=run_version)
    return p


def run_version(args):
    import platform

    import zcn
    from zcn import _ffi

    print(f"zcn {zcn.__version__} (library {_ffi.zcn_version_string().decode()} at "
          f"{getattr(_ffi.lib, '_name', '?')}; bindings "
          f"{_ffi.VERSION_MAJOR}.{_ffi.VERSION_MINOR}.{_ffi.VERSION_PATCH})")
    print(f"python {platform.python_version()}, kernel {platform.release()}")
    try:
        with zcn.Ring(8) as ring:
            flags = "|".join(ring.setup_flag_names()) or "none"
        print(f"io_uring: available (setup flags {flags})")
    except zcn.IoUringUnavailableError as exc:
        print(f"io_uring: unavailable ({type(exc).__name__}: {exc})")
    try:
        with zcn.Loop(buffer_pool_size=4, connections_max=4) as loop:
            print(f"loops run on: {loop.backend}, {loop.backend_reason}")
    except (OSError, zcn.ZcnError) as exc:
        print(f"loops: cannot be created ({type(exc).__name__}: {exc})")
    return 0


# --- the command --------------------------------------------------------------
# (module, function) pairs: each function adds one subparser. Modules that
# are not there (a partial install) are skipped.
_REGISTRARS = (
    (__name__, "add_echo_parser"),
    ("zcn._udp_cli", "add_udp_echo_parser"),
    ("zcn.proxy", "add_proxy_parser"),
    ("zcn._demo_cli", "add_http_parser"),
    ("zcn._demo_cli", "add_resp_parser"),
    ("zcn.bench", "add_parser"),
    (__name__, "add_version_parser"),
)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m zcn", description="zero_copy_net: networking on io_uring.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name, function_name in _REGISTRARS:
        if module_name == __name__:
            register = globals()[function_name]
        else:
            try:
                register = getattr(importlib.import_module(module_name), function_name)
            except (ImportError, AttributeError):
                continue
        register(subparsers)
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"] and {"--proxy", "--asyncio-apps", "--http", "--resp"} & set(argv):
        # the proxy and application profiles have options of their own
        # (bench/proxy_bench.py, bench/asyncio_apps.py)
        from .bench import main as bench_main
        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
