"""Python handlers with real work per message: one thread, two threads, two processes.

    python bench/py_work_bench.py [--work 2000] [--rounds 3] [--duration 3]
                                  [--python /opt/py313t/bin/python3.13t]

The echo profiles (`python -m zcn bench --threads`) measure what splitting
costs when the handler does almost nothing; there the kernel's TCP work and
the load generator bound the rate. Here every message first runs `--work`
iterations of a pure-Python loop (2000: about 30 us on this machine), so the
Python handler is the bottleneck, and what matters is how many cores run it:

    1 thread     zcn.TcpServer(handler="python"), serve_forever
    2 threads    zcn.TcpServer(handler="python", threads=2): one interpreter;
                 parallel only on a free-threaded CPython (3.13t, GIL off)
    2 processes  zcn.run_workers(serve, 2): one interpreter (and GIL) each

The servers run under `--python` (default: this interpreter), free to use
every CPU; bench/loadgen (200 connections x 1 x 64 B, every byte checked) is
pinned to the first CPU, where it needs a small share at these rates.
Server CPU counts every thread and worker process. Rounds interleaved;
medians; ratios against one thread within this run.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = ("1 thread", "2 threads", "2 processes")


def burn_factory(work):
    def burn():
        n = 0
        for _ in range(work):
            n += 1
        return n
    return burn


def serve(mode, work):
    """The server (a child process): prints its port, serves until SIGTERM."""
    import warnings

    import zcn

    burn = burn_factory(work)

    def handlers(server):
        send = server.send

        def on_data(fd, data):
            burn()
            try:
                send(fd, data)
            except zcn.ZcnError:
                pass  # a full queue or a gone peer: the load generator reports it
        return on_data

    if mode == "2 processes":
        def child(worker):
            with zcn.TcpServer(worker.host, worker.port, reuse_port=True) as server:
                server.on_data = handlers(server)
                worker.serve_forever(server)

        zcn.run_workers(child, 2, on_ready=lambda port, pids: print(
            f"listening on 127.0.0.1:{port}", flush=True))
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the GIL note of threads=2
        kw = {"threads": 2} if mode == "2 threads" else {}
        server = zcn.TcpServer("127.0.0.1", 0, handler="python", **kw)
    server.on_data = handlers(server)
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    print(f"listening on 127.0.0.1:{server.port}", flush=True)
    server.serve_forever()
    server.server_close()


def run_one(mode, args, loadgen):
    from zcn._bench_proc import tree_cpu_s

    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    srv = subprocess.Popen([args.python, __file__, "serve", mode, str(args.work)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                           cwd=str(ROOT / "tests"), preexec_fn=lambda: os.sched_setaffinity(
                               0, os.sched_getaffinity(0) | set(args.all_cpus)))
    try:
        line = srv.stdout.readline()
        m = re.search(r"listening on \S+:(\d+)", line)
        if not m:
            raise RuntimeError(f"{mode}: {line!r} {srv.stderr.read()[-2000:]}")
        lg = subprocess.Popen([str(loadgen), "--port", m.group(1), "--conns", "200", "--depth",
                               "1", "--size", "64", "--duration", str(args.duration),
                               "--warmup", str(args.warmup), "--cpu", str(args.client_cpu)],
                              stdout=subprocess.PIPE, text=True)
        cpu0 = cpu1 = t0 = t1 = None
        result = None
        for out in lg.stdout:
            ev = json.loads(out)
            if ev.get("event") == "window_start":
                cpu0, t0 = tree_cpu_s(srv.pid), time.perf_counter()
            elif ev.get("event") == "window_end":
                cpu1, t1 = tree_cpu_s(srv.pid), time.perf_counter()
            elif ev.get("event") == "result":
                result = ev
        ok = lg.wait(timeout=60) == 0 and result is not None and result.get("ok")
    finally:
        srv.send_signal(signal.SIGTERM)
        try:
            srv.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.communicate()
    msgs = result["msgs"] if result else 0
    return {"ok": bool(ok), "msgs_per_s": msgs / (t1 - t0) if msgs else 0.0,
            "cpu_us_per_msg": (cpu1 - cpu0) / msgs * 1e6 if msgs else None,
            "cpus_used": (cpu1 - cpu0) / (t1 - t0) if msgs else None}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=int, default=2000, help="loop iterations per message")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--python", default=sys.executable, help="the interpreter of the servers")
    p.add_argument("--build-dir", default=str(ROOT / "build" / "bench"))
    args = p.parse_args(argv)
    from zcn.bench import tool_path

    loadgen = tool_path(args.build_dir, "loadgen")
    if loadgen is None:
        sys.exit(f"bench/loadgen not built in {args.build_dir}")
    args.all_cpus = sorted(os.sched_getaffinity(0))
    args.client_cpu = args.all_cpus[0]
    version = subprocess.run([args.python, "-c", "import sys; print(sys.version.split()[0], "
                              "getattr(sys, '_is_gil_enabled', lambda: True)())"],
                             capture_output=True, text=True).stdout.split()
    print(f"servers on Python {version[0]} (GIL {'on' if version[1] == 'True' else 'off'}), "
          f"{args.work} iterations per message; load generator on CPU {args.client_cpu}",
          flush=True)
    res = {m: [] for m in MODES}
    for r in range(args.rounds):
        order = MODES if r % 2 == 0 else MODES[::-1]
        for mode in order:
            out = run_one(mode, args, loadgen)
            res[mode].append(out)
            print(f"round {r + 1} {mode:12} {out['msgs_per_s']:9,.0f} msg/s "
                  f"{out['cpu_us_per_msg'] or 0:6.2f} us CPU/msg "
                  f"{out['cpus_used'] or 0:4.2f} CPUs ok={out['ok']}", flush=True)
    print("\nmedians (ratios against one thread):")
    one = statistics.median(o["msgs_per_s"] for o in res["1 thread"])
    one_cpu = statistics.median(o["cpu_us_per_msg"] for o in res["1 thread"])
    for mode in MODES:
        thr = statistics.median(o["msgs_per_s"] for o in res[mode])
        cpu = statistics.median(o["cpu_us_per_msg"] for o in res[mode])
        used = statistics.median(o["cpus_used"] for o in res[mode])
        print(f"  {mode:12} {thr:9,.0f} msg/s ({thr / one:.2f}x)  {cpu:6.2f} us CPU/msg "
              f"({cpu / one_cpu:.2f}x)  {used:.2f} CPUs")
    failed = sum(not o["ok"] for m in MODES for o in res[m])
    print(f"integrity: {'every byte verified' if not failed else f'{failed} runs FAILED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(main())
