"""``python -m zcn echo --workers N``: the echo server in N processes
(zcn.run_workers), for Python handlers on several cores.

    python -m zcn echo --handler python --workers 2 --port 8080

Prints the echo's two first lines once every worker listens, then
``workers: N processes (pids ...)``; at SIGINT/SIGTERM the connections each
worker accepted and the summed counters. Exit 0 when every worker stopped
cleanly, 1 otherwise (a worker that failed, or had to be killed).
"""
from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any, Callable, Dict, List, Sequence, Tuple

    import zcn


def run_echo_workers(args: argparse.Namespace,
                     python_echo: Callable[[zcn.TcpServer], Tuple[Any, Any, Any]],
                     format_address: Callable[[str, int], str],
                     summary_fields: Sequence[str]) -> int:
    """run_echo's --workers path (the echo's handlers, address format and
    summary fields come from zcn.__main__, so that the lines are the same)."""
    import zcn
    import zcn.workers
    from zcn._util import backend_line, resolve_host

    if not 1 <= args.workers <= zcn.workers.WORKERS_MAX:
        print(f"zcn echo: --workers must be in 1..{zcn.workers.WORKERS_MAX}, got {args.workers}",
              file=sys.stderr)
        return 1
    try:
        host = resolve_host(args.host)
        # The parent runs no server; a loop made and closed here says which
        # backend the workers' loops will get (the same choice, same process).
        with zcn.Loop(buffer_pool_size=4, connections_max=4, backend=args.backend) as probe:
            backend = backend_line(probe)
    except (OSError, ValueError, TypeError, zcn.ZcnError) as exc:
        print(f"zcn echo: cannot listen on {args.host} port {args.port}: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1

    def serve(worker: zcn.Worker) -> None:
        with zcn.TcpServer(
                worker.host, worker.port, handler=args.handler, buffer_size=args.buffer_size,
                buffer_pool_size=args.buffer_pool_size, connections_max=args.connections_max,
                backlog=args.backlog, io_uring_entries=args.io_uring_entries,
                send_queue_max_bytes=args.send_queue_max_bytes,
                idle_timeout=args.idle_timeout, reuse_port=True,
                backend=args.backend, busy_poll_us=args.busy_poll) as server:
            if args.handler == "python":
                server.on_data, server.on_drain, server.on_close = python_echo(server)
            worker.serve_forever(server)

    def on_ready(port: int, pids: List[int]) -> None:
        print(f"zcn echo listening on {format_address(host, port)} (handler={args.handler})",
              flush=True)
        print(backend, flush=True)
        print(f"workers: {len(pids)} processes (pids {' '.join(map(str, pids))})", flush=True)

    try:
        result = zcn.run_workers(serve, args.workers, host=host, port=args.port,
                                 on_ready=on_ready)
    except zcn.WorkerError as exc:
        print(f"zcn echo: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError, TypeError) as exc:
        print(f"zcn echo: cannot listen on {args.host} port {args.port}: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    per = " ".join(f"worker{i}={stats.get('connections_accepted', '?')}"
                   for i, stats in enumerate(result.stats))
    print(f"zcn echo connections per worker: {per}", flush=True)
    total: Dict[str, int] = {}
    for stats in result.stats:
        for name, value in stats.items():
            total[name] = total.get(name, 0) + value
    summary = " ".join(f"{name}={total.get(name, 0)}" for name in summary_fields)
    print(f"zcn echo stats: {summary}", flush=True)
    if result.ok:
        return 0
    from zcn.workers import describe_exit

    for i, code in enumerate(result.exit_codes):
        killed = " after shutdown_timeout" if i in result.killed else ""
        if code != 0 or killed:
            print(f"zcn echo: worker {i} (pid {result.pids[i]}) {describe_exit(code)}{killed}",
                  file=sys.stderr)
    return 1
