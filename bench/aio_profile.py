#!/usr/bin/env python3
"""Where an asyncio echo server's CPU goes, under the echo benchmark's load:
the profile behind docs/PERFORMANCE.md's "asyncio on zcn".

    python bench/aio_profile.py [--loop zcn|uvloop|asyncio] [--api protocol|streams]
                                [--conns 200 --depth 1 --size 64] [--seconds 4]
                                [--tool perf|py-spy|both] [--build-dir build/bench]

Starts bench/asyncio_echo.py pinned to --server-cpu (default the last CPU)
and bench/loadgen pinned to --client-cpu (the first), lets it warm up 1 s,
then samples the server for --seconds:

* perf (`perf record -g -p PID`, then `perf report --sort dso`): the
  share of the server's CPU in the kernel, libpython, ctypes/libffi, zcn's
  library or uvloop's extension;
* py-spy (`py-spy record -f raw`, `pip install py-spy`): the Python line
  each active sample was on, grouped into what zcn's loop spends it on
  (the zcn_loop_poll and zcn_loop_send calls through ctypes, the rest of
  zcn/aio.py, asyncio's own Python loop machinery, the streams code and
  the protocol). py-spy counts only samples where the thread is running.

The server's CPU per message over the same window is printed too, so a
share can be read as microseconds. A tool that is missing is skipped with
the reason.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LISTEN_RE = re.compile(r"listening on (\S+):(\d+)")


def categorize(leaf):
    """The group of a py-spy leaf frame ("func (file:line)")."""
    if "zcn/aio.py" in leaf:
        if re.search(r"_ZcnSelector\.select \(.*aio\.py", leaf) and "_poll_raw" in _line(leaf):
            return "zcn_loop_poll through ctypes (C, and the kernel: sends, receives, the wait)"
        if "_ZcnTransport.write" in leaf and "_send(" in _line(leaf):
            return "zcn_loop_send through ctypes (one per write)"
        if "_ZcnTransport._data_event" in leaf and "bytes(" in _line(leaf):
            return "zcn/aio.py: bytes() of the received data, and the data_received call"
        return "zcn/aio.py: the rest (event dispatch loop, transport checks)"
    if "asyncio/streams.py" in leaf or "echo_stream" in leaf:
        return "asyncio streams and the handler (the same code on uvloop)"
    if "Echo." in leaf:
        return "the Protocol (data_received)"
    if "asyncio/" in leaf:
        return "asyncio's loop machinery in Python (_run_once, Handle, call_soon, futures)"
    return "other: " + leaf.split(" (")[0]


_SOURCE_CACHE = {}


def _line(leaf):
    """The source text of a py-spy frame's line."""
    m = re.search(r"\((.+):(\d+)\)$", leaf)
    if not m:
        return ""
    path, no = m.group(1), int(m.group(2))
    if path not in _SOURCE_CACHE:
        text = None
        for base in [ROOT] + [Path(p) for p in sys.path if p]:
            cand = base / path
            if cand.is_file():
                text = cand.read_text().splitlines()
                break
        _SOURCE_CACHE[path] = text or []
    lines = _SOURCE_CACHE[path]
    return lines[no - 1] if 0 < no <= len(lines) else ""


def start_server(args, env):
    argv = [sys.executable, str(BENCH / "asyncio_echo.py"), "--loop", args.loop, "--api",
            args.api, "--port", "0"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, preexec_fn=lambda: os.sched_setaffinity(0, {args.server_cpu}))
    m = LISTEN_RE.search(proc.stdout.readline() or "")
    if m is None:
        proc.kill()
        raise SystemExit(f"asyncio_echo did not start: {proc.stderr.read()[-500:]}")
    return proc, int(m.group(2))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--loop", choices=("zcn", "uvloop", "asyncio"), default="zcn")
    p.add_argument("--api", choices=("protocol", "streams"), default="protocol")
    p.add_argument("--conns", type=int, default=200)
    p.add_argument("--depth", type=int, default=1)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--tool", choices=("perf", "py-spy", "both"), default="both")
    p.add_argument("--build-dir", default=str(ROOT / "build" / "bench"))
    p.add_argument("--server-cpu", type=int)
    p.add_argument("--client-cpu", type=int)
    args = p.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    args.server_cpu = cpus[-1] if args.server_cpu is None else args.server_cpu
    args.client_cpu = cpus[0] if args.client_cpu is None else args.client_cpu
    loadgen = Path(args.build_dir) / "bench" / "loadgen"
    if not loadgen.exists():
        raise SystemExit(f"{loadgen} not found: build the bench tools (docs/PERFORMANCE.md)")
    import psutil

    tools = []
    if args.tool in ("perf", "both"):
        if shutil.which("perf"):
            tools.append("perf")
        else:
            print("perf not found (Debian package linux-perf): skipped")
    if args.tool in ("py-spy", "both"):
        spy = shutil.which("py-spy")
        if spy:
            tools.append("py-spy")
        else:
            print("py-spy not found (pip install py-spy): skipped")
    env = dict(os.environ)
    import zcn
    env["PYTHONPATH"] = os.pathsep.join(
        x for x in (str(Path(zcn.__file__).resolve().parent.parent), env.get("PYTHONPATH")) if x)
    for tool in tools:
        server, port = start_server(args, env)
        ps = psutil.Process(server.pid)
        total = args.seconds + 3
        lg = subprocess.Popen([str(loadgen), "--port", str(port), "--conns", str(args.conns),
                               "--depth", str(args.depth), "--size", str(args.size),
                               "--duration", str(total), "--warmup", "0",
                               "--cpu", str(args.client_cpu)],
                              stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "profile"
            t0 = ps.cpu_times()
            w0 = time.perf_counter()
            if tool == "perf":
                cmd = ["perf", "record", "-q", "-F", "2000", "-g", "-p", str(server.pid),
                       "-o", str(out), "--", "sleep", str(args.seconds)]
            else:
                cmd = ["py-spy", "record", "-r", "400", "-d", str(int(round(args.seconds))),
                       "-f", "raw", "-o", str(out), "-p", str(server.pid)]
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            t1 = ps.cpu_times()
            w1 = time.perf_counter()
            result = lg.communicate()[0].strip().splitlines()
            server.terminate()
            server.wait(timeout=10)
            res = json.loads(result[-1]) if result else {}
            cpu = (t1.user + t1.system) - (t0.user + t0.system)
            rate = res.get("msgs_per_s") or 0
            print(f"\n== {tool}: {args.loop} {args.api} echo, {args.conns}x{args.depth}x"
                  f"{args.size}B: {rate:,.0f} msgs/s over the run, server CPU "
                  f"{cpu / (w1 - w0) * 100:.0f}% of its CPU while sampled"
                  + (f", ~{cpu / (w1 - w0) / rate * 1e6:.2f} us per message" if rate else ""))
            if tool == "perf":
                rep = subprocess.run(["perf", "report", "-i", str(out), "--no-children",
                                      "--sort", "dso", "--stdio", "-g", "none"],
                                     capture_output=True, text=True).stdout
                for line in rep.splitlines():
                    if line.strip() and not line.startswith("#"):
                        print("  " + line.strip())
            else:
                groups = collections.Counter()
                n = 0
                for line in out.read_text().splitlines():
                    stack, _, count = line.rpartition(" ")
                    groups[categorize(stack.split(";")[-1])] += int(count)
                    n += int(count)
                for name, count in groups.most_common():
                    print(f"  {count / n * 100:5.1f}%  {name}")
                print(f"  ({n} samples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
