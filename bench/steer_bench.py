"""Steering new connections by CPU (ZCN_GROUP_STEER_CPU), with it and without.

    python bench/steer_bench.py [--rounds 5] [--duration 3] [--conns 100]

Two loops pinned one per CPU (`python -m zcn echo --handler c --threads 2
--cpus 0,1 [--steer]`), and one load generator pinned to each CPU, each
with --conns connections of depth 1 x 64 B (every byte checked). On
loopback a connection's SYN, and every later packet the client sends, is
handled on the client's CPU, as a NIC with RSS hands a flow to one CPU. With
steering each client's connections go to the loop on its own CPU, so a
message and its answer stay on one CPU; without it the kernel's hash sends
half of them to the other CPU, and each message crosses CPUs twice (a
remote wake-up). Figures: messages/s of both clients, server CPU per
message (every thread), how the connections spread. Rounds interleaved;
medians; ratios within this run.
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
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def proc_cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_one(steer, args, loadgen, cpus):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    argv = [sys.executable, "-m", "zcn", "echo", "--port", "0", "--handler", "c", "--threads",
            "2", "--cpus", ",".join(map(str, cpus))] + (["--steer"] if steer else [])
    srv = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=env, cwd=str(ROOT / "tests"))
    results = [None, None]
    marks = {}
    try:
        m = re.search(r"listening on \S+:(\d+)", srv.stdout.readline())
        if not m:
            raise RuntimeError(f"the server did not start: {srv.stderr.read()[-2000:]}")
        port = m.group(1)
        lgs = [subprocess.Popen([str(loadgen), "--port", port, "--conns", str(args.conns),
                                 "--depth", "1", "--size", "64", "--duration", str(args.duration),
                                 "--warmup", str(args.warmup), "--cpu", str(cpu)],
                                stdout=subprocess.PIPE, text=True) for cpu in cpus]

        def read(i):
            for line in lgs[i].stdout:
                ev = json.loads(line)
                kind = ev.get("event")
                if kind in ("window_start", "window_end") and i == 0:
                    marks[kind] = (proc_cpu_s(srv.pid), time.perf_counter())
                elif kind == "result":
                    results[i] = ev

        readers = [threading.Thread(target=read, args=(i,)) for i in range(2)]
        for t in readers:
            t.start()
        for t in readers:
            t.join(args.duration + args.warmup + 60)
        ok = all(lg.wait(timeout=60) == 0 for lg in lgs) and all(
            r is not None and r.get("ok") for r in results)
    finally:
        srv.send_signal(signal.SIGINT)
        out, _ = srv.communicate(timeout=20)
    per = re.search(r"connections per loop: loop0=(\d+) loop1=(\d+)", out)
    msgs = sum(r["msgs"] for r in results if r)
    window = statistics.mean(r["window_s"] for r in results if r)
    cpu = marks["window_end"][0] - marks["window_start"][0] if len(marks) == 2 else None
    return {"ok": ok, "msgs_per_s": msgs / window, "cpu_us_per_msg": cpu / msgs * 1e6
            if cpu is not None and msgs else None,
            "spread": (int(per.group(1)), int(per.group(2))) if per else None,
            "p50_us": statistics.mean(r["rtt_ns"]["p50"] for r in results if r) / 1e3}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--conns", type=int, default=100, help="connections per load generator")
    p.add_argument("--build-dir", default=str(ROOT / "build" / "bench"))
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from zcn.bench import tool_path

    loadgen = tool_path(args.build_dir, "loadgen")
    if loadgen is None:
        sys.exit(f"bench/loadgen not built in {args.build_dir}")
    cpus = sorted(os.sched_getaffinity(0))[:2]
    if len(cpus) < 2:
        sys.exit("needs two CPUs")
    res = {False: [], True: []}
    for r in range(args.rounds):
        for steer in ((False, True) if r % 2 == 0 else (True, False)):
            out = run_one(steer, args, loadgen, cpus)
            res[steer].append(out)
            print(f"round {r + 1} steer={'on ' if steer else 'off'} {out['msgs_per_s']:9,.0f} "
                  f"msg/s {out['cpu_us_per_msg'] or 0:5.2f} us CPU/msg p50 {out['p50_us']:7.1f} us "
                  f"spread {out['spread']} ok={out['ok']}", flush=True)
    print("\nmedians:")
    med = {s: {k: statistics.median(o[k] for o in res[s]) for k in
               ("msgs_per_s", "cpu_us_per_msg", "p50_us")} for s in res}
    for s in (False, True):
        print(f"  steer {'on ' if s else 'off'}: {med[s]['msgs_per_s']:9,.0f} msg/s "
              f"({med[s]['msgs_per_s'] / med[False]['msgs_per_s']:.2f}x), "
              f"{med[s]['cpu_us_per_msg']:.2f} us CPU/msg "
              f"({med[s]['cpu_us_per_msg'] / med[False]['cpu_us_per_msg']:.2f}x), "
              f"p50 {med[s]['p50_us']:.1f} us ({med[s]['p50_us'] / med[False]['p50_us']:.2f}x)")
    failed = sum(not o["ok"] for s in res for o in res[s])
    print(f"integrity: {'every byte verified' if not failed else f'{failed} runs FAILED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
