"""Two loops against one: `python -m zcn echo --handler c --threads N`.

    python bench/threads_bench.py [--rounds 5] [--duration 3] [--build-dir build/bench]

For N = 1 (pinned to the last CPU) and N = 2 (one loop per CPU), rounds
interleaved, the load generator (bench/loadgen, every byte checked) pinned
to the first CPU in both: server CPU per message (all its threads, from
/proc), messages per second, and how the connections spread over the
loops. This machine has two cores, so the two-loop server shares one with
the load generator: the figure that must hold is CPU per message (goal:
two loops <= 1.10x one), not throughput. Medians; ratios within this run.
"""

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
TICK = os.sysconf("SC_CLK_TCK")

WORKLOADS = {  # name: (connections, depth, message bytes)
    "200x1 64B": (200, 1, 64),
    "50x16 64B": (50, 16, 64),
}


def proc_cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def run_one(layout, cpus, wl, args, loadgen):
    threads = len(cpus)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    argv = [sys.executable, "-m", "zcn", "echo", "--port", "0", "--handler", "c",
            "--threads", str(threads), "--cpus", ",".join(map(str, cpus))]
    srv = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=env, cwd=str(ROOT / "tests"))
    try:
        first = srv.stdout.readline()
        m = re.search(r"listening on \S+:(\d+)", first)
        if not m:
            raise RuntimeError(f"server said {first!r}: {srv.stderr.read()}")
        port = m.group(1)
        conns, depth, size = WORKLOADS[wl]
        lg = subprocess.Popen([str(loadgen), "--port", port, "--conns", str(conns), "--depth",
                               str(depth), "--size", str(size), "--duration", str(args.duration),
                               "--warmup", str(args.warmup), "--cpu", str(args.client_cpu)],
                              stdout=subprocess.PIPE, text=True)
        cpu0 = cpu1 = t0 = t1 = None
        result = None
        for line in lg.stdout:
            ev = json.loads(line)
            if ev.get("event") == "window_start":
                cpu0, t0 = proc_cpu_s(srv.pid), time.perf_counter()
            elif ev.get("event") == "window_end":
                cpu1, t1 = proc_cpu_s(srv.pid), time.perf_counter()
            elif ev.get("event") == "result":
                result = ev
        ok = lg.wait(timeout=60) == 0
        srv.send_signal(signal.SIGINT)
        out, _ = srv.communicate(timeout=20)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.communicate()
    per = re.search(r"connections per loop: (.*)$", out, re.M)
    msgs = result["msgs"] if result else 0
    return {"ok": ok and result is not None, "msgs_per_s": msgs / (t1 - t0),
            "cpu_us_per_msg": (cpu1 - cpu0) / msgs * 1e6 if msgs else None,
            "spread": per.group(1) if per else "?"}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--build-dir", default=str(ROOT / "build" / "bench"))
    args = p.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        sys.exit("needs two CPUs")
    args.client_cpu = cpus[0]
    loadgen = Path(args.build_dir) / "bench" / "loadgen"
    if not loadgen.exists():
        sys.exit(f"{loadgen} not built (cmake --build {args.build_dir})")
    # one loop on the last CPU; two loops on both CPUs (one shares the load
    # generator's); two loops both on the last CPU (what splitting the
    # connections over two loops costs, without sharing a CPU with the load)
    layouts = {1: [cpus[-1]], 2: cpus[:2], "2s": [cpus[-1], cpus[-1]]}
    res = {(wl, n): [] for wl in WORKLOADS for n in layouts}
    for r in range(args.rounds):
        for wl in WORKLOADS:
            order = (1, 2, "2s") if r % 2 == 0 else ("2s", 2, 1)  # interleaved, alternating
            for n in order:
                out = run_one(n, layouts[n], wl, args, loadgen)
                res[(wl, n)].append(out)
                print(f"round {r + 1} {wl} threads={n}: {out['msgs_per_s']:,.0f} msg/s, "
                      f"{out['cpu_us_per_msg']:.2f} us CPU/msg, ok={out['ok']}, "
                      f"{out['spread']}", flush=True)
    print("\nmedians against one loop (2 = one loop per CPU, the load generator on one of "
          "them; 2s = both loops on the server's CPU):")
    failed = 0
    for wl in WORKLOADS:
        med = {n: {k: statistics.median(o[k] for o in res[(wl, n)])
                   for k in ("msgs_per_s", "cpu_us_per_msg")} for n in layouts}
        failed += sum(not o["ok"] for n in layouts for o in res[(wl, n)])
        one = med[1]
        print(f"  {wl}: one loop {one['cpu_us_per_msg']:.2f} us CPU/msg, "
              f"{one['msgs_per_s']:,.0f} msg/s")
        for n in (2, "2s"):
            print(f"    threads={n}: CPU/msg {med[n]['cpu_us_per_msg']:.2f} us "
                  f"({med[n]['cpu_us_per_msg'] / one['cpu_us_per_msg']:.2f}x, goal <= 1.10x), "
                  f"msg/s {med[n]['msgs_per_s'] / one['msgs_per_s']:.2f}x")
    print(f"integrity: {'every byte verified' if not failed else f'{failed} runs FAILED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
