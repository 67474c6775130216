#!/usr/bin/env python3
"""Application benchmark of zcn's asyncio loop: an HTTP/1.1 server under
wrk and a RESP2 server under redis-benchmark, on zcn's loop against uvloop
and the standard loop.

    python bench/asyncio_apps.py [--quick | --smoke] [--rounds 3]
                                 [--loops zcn-aio,uvloop,asyncio]
                                 [--workloads http-c100,http-c50p16,resp-c50,resp-c50p16]
                                 [--commands ping,set,get,incr,del]
    python -m zcn bench --asyncio-apps [the same options]

Servers (the same code on every loop, --loop zcn|uvloop|asyncio):
bench/asyncio_http.py (a Protocol answering every request with
"Hello, world!", keep-alive, pipelining) and bench/asyncio_resp.py (a
Protocol speaking RESP2: PING, SET, GET, DEL, INCR, pipelining). Each runs
in its own process pinned to --server-cpu (default: the last CPU); the
load tool runs pinned to --client-cpu (default: the first), and so does
this harness.

Workloads:

    http-c100     wrk -t1 -c100: 100 keep-alive connections, 1 request in flight each
    http-c50p16   wrk -t1 -c50 with 16 requests pipelined per connection
    resp-c50      redis-benchmark -c 50, one request in flight per client
    resp-c50p16   redis-benchmark -c 50 -P 16 (16 pipelined per client)

each resp workload once per command (--commands; keys drawn from 100,000
with -r, SET before GET/INCR/DEL in every round). Figures: requests/s (the
tool's), server CPU per request (user+system of the server process
from the tool's start to its exit, divided by the requests it completed)
and server CPU utilisation; p50/p99 latency as the tool reports it (wrk's
with pipelining is per batch). Every server gets one unmeasured warm-up run
per workload (it also sizes redis-benchmark's -n to about --duration
seconds); then rounds are interleaved, the loop order rotating each round;
medians with min/max, and ratios against uvloop in the same run. wrk takes
whole seconds: its window is --duration rounded, at least 1 s. Each run
also records how much CPU other processes took meanwhile (other_cpu_util);
--retry-busy N runs a round again, up to N times, while that was over 10%
of a CPU (for a shared machine).

A missing tool or loop skips what needs it, with the reason printed: wrk
(Debian package wrk), redis-benchmark (redis-tools), uvloop (pip install
.[bench]). Results: a table per workload and JSON of every round
(bench/results/apps-<timestamp>.json or --json). Exit status 1 only if a
server died or a tool reported errors; nothing is a goal here.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
LOOPS = {"zcn-aio": "zcn", "uvloop": "uvloop", "asyncio": "asyncio"}
#: servers that are not an asyncio loop: zcn's C demo servers (python -m zcn
#: http|resp) and the servers users would otherwise run. name: (apps it
#: serves, executable, Debian package)
NATIVE = {"zcn-c": (("http", "resp"), None, None),
          "nginx": (("http",), "nginx", "nginx-light"),
          "redis": (("resp",), "redis-server", "redis-server")}
SERVERS = (*LOOPS, *NATIVE)
BASELINE = "uvloop"
#: --http and --resp of python -m zcn bench: the C demo servers against
#: nginx and redis-server, and the issue's goals (ratios to the baseline:
#: requests/s at least, CPU per request at most)
NATIVE_PROFILES = {
    "http": {"workloads": "http-c100", "loops": "zcn-c,nginx", "baseline": "nginx",
             "goals": (1.0, 0.80)},
    "resp": {"workloads": "resp-c50p16", "loops": "zcn-c,redis", "baseline": "redis",
             "commands": "set,get", "goals": (1.0, 1.0)},
}
NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  default_type text/plain;
  keepalive_requests 10000000;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  server {{
    listen 127.0.0.1:{port} backlog=1024;
    location / {{ return 200 "Hello, world!"; }}
  }}
}}
"""
# key: (app, conns, depth, title)
WORKLOADS = {
    "http-c100": ("http", 100, 1, "wrk, 100 keep-alive connections, 1 request in flight each"),
    "http-c50p16": ("http", 50, 16, "wrk, 50 connections x 16 pipelined requests"),
    "resp-c50": ("resp", 50, 1, "redis-benchmark, 50 clients, 1 request in flight each"),
    "resp-c50p16": ("resp", 50, 16, "redis-benchmark, 50 clients x 16 pipelined (-P 16)"),
}
COMMANDS = ("ping", "set", "get", "incr", "del")
KEYSPACE = 100000
#: redis-benchmark's arguments per command (-t tests, or a command line)
RESP_COMMANDS = {
    "ping": ["-t", "ping_mbulk"],
    "set": ["-t", "set"],
    "get": ["-t", "get"],
    "incr": ["-t", "incr"],
    "del": ["del", "key:__rand_int__"],
}
PROFILES = {  # rounds, warm-up s, window s
    "smoke": (1, 0.2, 0.3),
    "quick": (1, 0.5, 1.0),
    "full": (3, 1.0, 2.0),
}
APP_SCRIPTS = {"http": "asyncio_http.py", "resp": "asyncio_resp.py"}
TOOLS = {"http": ("wrk", "Debian package wrk"),
         "resp": ("redis-benchmark", "Debian package redis-tools")}

from zcn.bench import (OTHER_CPU_WARN, RETRY_PAUSE_S, Server, _busy_s, _fmt,  # noqa: E402
                       _mmm, _pin_and_raise, _process, _ratio, default_results_dir,
                       machine_info, tree_cpu_s)

WRK_SCRIPT = """\
local depth = {depth}
init = function(args)
  if depth > 1 then
    local r = {{}}
    for i = 1, depth do r[i] = wrk.format() end
    req = table.concat(r)
  end
end
if depth > 1 then
  request = function() return req end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{{"event":"result","requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,' ..
    '"timeouts":%d,"p50_us":%d,"p99_us":%d}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def tool_version(app):
    exe = shutil.which(TOOLS[app][0])
    if exe is None:
        return None
    arg = "--version"
    try:
        out = subprocess.run([exe, arg], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else None


def server_argv(app, loop_name):
    script = BENCH / APP_SCRIPTS[app]
    return [sys.executable, str(script), "--loop", LOOPS[loop_name], "--port", "0"]


def server_env(build_dir):
    """The zcn package this harness runs with, and the build dir's library
    unless ZCN_LIBRARY says otherwise (as the proxy benchmark does)."""
    import zcn

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(zcn.__file__).resolve().parent.parent), env.get("PYTHONPATH")) if p)
    if build_dir is not None:
        lib = Path(build_dir) / "libzero_copy_net.so"
        if "ZCN_LIBRARY" not in env and lib.exists():
            env["ZCN_LIBRARY"] = str(lib)
    return env


def _children_cpu_s():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _run_tool(argv, server, client_cpu, timeout):
    """Runs the load tool pinned to client_cpu; (stdout, stderr, rc, server
    CPU seconds, wall seconds, share of a CPU other processes used) from
    its start to its exit."""
    pre = _pin_and_raise(client_cpu)
    cpu0, busy0, kids0, t0 = server.cpu_s(), _busy_s(), _children_cpu_s(), time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, preexec_fn=pre)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        out, err = proc.communicate()
    finally:
        timer.cancel()
    cpu1, busy1, kids1, t1 = server.cpu_s(), _busy_s(), _children_cpu_s(), time.perf_counter()
    wall = t1 - t0
    # the machine's busy time less the server's and the (reaped) tool's
    others = max(0.0, (busy1 - busy0) - (cpu1 - cpu0) - (kids1 - kids0)) / wall if wall else None
    return out, err, proc.returncode, cpu1 - cpu0, wall, others


def run_wrk(server, wl, seconds, client_cpu, script):
    _, conns, _, _ = WORKLOADS[wl]
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "5s", "-s", str(script),
            f"http://127.0.0.1:{server.port}/"]
    out, err, rc, cpu, wall, others = _run_tool(argv, server, client_cpu, seconds + 60)
    res = None
    for line in out.splitlines():
        if line.startswith("{"):
            try:
                res = json.loads(line)
            except ValueError:
                pass
    r = {"tool": "wrk", "argv": argv, "rc": rc}
    if res is None:
        return dict(r, ok=False, error=f"wrk gave no result (exit {rc}): {err.strip()[-300:]}")
    res.pop("event", None)
    r.update(res)
    n = res["requests"]
    errors = sum(res[k] for k in ("connect_errors", "read_errors", "write_errors",
                                  "status_errors", "timeouts"))
    r["errors"] = errors
    r["rps"] = n / (res["duration_us"] / 1e6) if res["duration_us"] else None
    r["p50_ms"] = res["p50_us"] / 1e3 if res["p50_us"] else None
    r["p99_ms"] = res["p99_us"] / 1e3 if res["p99_us"] else None
    r["server_cpu_s"] = cpu
    r["server_cpu_util"] = cpu / wall if wall else None
    r["other_cpu_util"] = others
    r["cpu_us_per_req"] = cpu / n * 1e6 if n else None
    r["ok"] = rc == 0 and errors == 0 and n > 0
    if not r["ok"] and "error" not in r:
        r["error"] = f"wrk: exit {rc}, {errors} errors ({err.strip()[-200:]})"
    return r


def run_redis(server, wl, command, requests, client_cpu):
    _, conns, depth, _ = WORKLOADS[wl]
    argv = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(server.port), "-c", str(conns),
            "-n", str(requests), "-P", str(depth), "-r", str(KEYSPACE), "--csv",
            *RESP_COMMANDS[command]]
    out, err, rc, cpu, wall, others = _run_tool(argv, server, client_cpu, 120)
    rows = [line for line in out.splitlines() if line.startswith('"') and
            not line.startswith('"test"')]
    r = {"tool": "redis-benchmark", "argv": argv, "rc": rc, "requests": requests}
    problems = [line for line in (out + err).splitlines()
                if "error" in line.lower() and "could not fetch server config" not in line.lower()]
    if rc != 0 or len(rows) != 1:
        return dict(r, ok=False, error=f"redis-benchmark: exit {rc}: "
                                       f"{(err or out).strip()[-300:]}")
    fields = [f.strip('"') for f in rows[0].split(",")]
    # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",
    # "p99_latency_ms","max_latency_ms"
    r["rps"] = float(fields[1])
    r["p50_ms"] = float(fields[4])
    r["p99_ms"] = float(fields[6])
    r["server_cpu_s"] = cpu
    r["server_cpu_util"] = cpu / wall if wall else None
    r["other_cpu_util"] = others
    r["cpu_us_per_req"] = cpu / requests * 1e6
    r["ok"] = not problems
    if problems:
        r["error"] = problems[0][:300]
    return r


def summarize(rounds):
    s = {k: _mmm([r.get(k) for r in rounds])
         for k in ("rps", "cpu_us_per_req", "server_cpu_util", "other_cpu_util", "p50_ms",
                   "p99_ms")}
    s["ok"] = bool(rounds) and all(r.get("ok") for r in rounds)
    return s


def _range(m, digits):
    if m is None:
        return "-"
    return f"{_fmt(m['median'], digits)} [{_fmt(m['min'], digits)}..{_fmt(m['max'], digits)}]"


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ExternalServer(Server):
    """nginx or redis-server on a free port, pinned like the others; its
    CPU is the process's and its children's (nginx's worker)."""

    def __init__(self, name, app, cpu, tmp):  # noqa: super().__init__ wants a banner
        self.name = name
        self.port = free_port()
        work = Path(tmp) / f"{name}-{self.port}"
        work.mkdir()
        if name == "nginx":
            conf = work / "nginx.conf"
            conf.write_text(NGINX_CONF.format(tmp=work, port=self.port))
            self.cmd = ["nginx", "-p", str(work), "-e", str(work / "error.log"), "-c", str(conf)]
        else:
            self.cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                        "--save", "", "--appendonly", "no", "--io-threads", "1",
                        "--protected-mode", "no", "--daemonize", "no", "--dir", str(work),
                        "--logfile", str(work / "redis.log")]
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=self._stderr,
                                     stdin=subprocess.DEVNULL, preexec_fn=_pin_and_raise(cpu))
        self.ps = _process(self.proc.pid)
        deadline = time.monotonic() + 10
        while not self._accepts():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not start: {self.stderr_text()[-300:]}")
            time.sleep(0.05)
        self.banner = f"{name} listening on 127.0.0.1:{self.port}"

    def _accepts(self):
        import socket

        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def cpu_s(self):
        return tree_cpu_s(self.proc.pid)  # nginx's master and its worker


def make_server(app, name, cpu, env, tmp):
    if name in LOOPS:
        return Server(name, server_argv(app, name), cpu, env)
    if name == "zcn-c":
        return Server(name, [sys.executable, "-m", "zcn", app, "--port", "0"], cpu, env)
    return ExternalServer(name, app, cpu, tmp)


def goals_lines(report, baseline, goals):
    """The zcn-c against baseline ratios of each workload, against goals
    (requests/s ratio at least, CPU per request ratio at most)."""
    lines = []
    for key, wl in report["workloads"].items():
        res = wl.get("results") or {}
        ours = ((res.get("zcn-c") or {}).get("summary") or {})
        base = ((res.get(baseline) or {}).get("summary") or {})
        if not ours or not base:
            continue
        rps = _ratio(ours["rps"]["median"], base["rps"]["median"]) if ours.get("rps") and \
            base.get("rps") else None
        cpu = _ratio(ours["cpu_us_per_req"]["median"], base["cpu_us_per_req"]["median"]) \
            if ours.get("cpu_us_per_req") and base.get("cpu_us_per_req") else None
        met = rps is not None and cpu is not None and rps >= goals[0] and cpu <= goals[1]
        wl["goal"] = {"baseline": baseline, "rps_ratio": rps, "cpu_per_req_ratio": cpu,
                      "rps_ratio_min": goals[0], "cpu_per_req_ratio_max": goals[1], "met": met}
        lines.append(f"goal {key}: zcn-c {_fmt(rps, 2)}x {baseline}'s requests/s (goal >= "
                     f"{goals[0]}), {_fmt(cpu, 2)}x its CPU per request (goal <= {goals[1]}): "
                     + ("met" if met else "not met"))
    return lines


def table(title, results, baseline=BASELINE):
    lines = [f"\n== {title}",
             f"  {'loop':8} {'requests/s median [min..max]':>32} {'CPU us/req [min..max]':>24} "
             f"{'srv%':>5} {'p50 ms':>7} {'p99 ms':>7} {'x ' + baseline + ' req/s':>14} "
             f"{'x ' + baseline + ' cpu':>12}  ok"]
    base = (results.get(baseline) or {}).get("summary") or {}

    def med(s, k):
        return (s.get(k) or {}).get("median")

    for name, res in results.items():
        s = res.get("summary")
        if s is None:
            lines.append(f"  {name:8} skipped: {res.get('note', 'not run')}")
            continue
        lines.append(
            f"  {name:8} {_range(s['rps'], 0):>32} {_range(s['cpu_us_per_req'], 2):>24} "
            f"{_fmt((med(s, 'server_cpu_util') or 0) * 100, 0):>5} "
            f"{_fmt(med(s, 'p50_ms'), 3):>7} {_fmt(med(s, 'p99_ms'), 3):>7} "
            f"{_fmt(_ratio(med(s, 'rps'), med(base, 'rps')), 2):>14} "
            f"{_fmt(_ratio(med(s, 'cpu_us_per_req'), med(base, 'cpu_us_per_req')), 2):>12}  "
            + ("yes" if s["ok"] else "NO"))
    others = [med(r.get("summary") or {}, "other_cpu_util") for r in results.values()]
    others = [o for o in others if o is not None]
    if others and max(others) > OTHER_CPU_WARN:
        lines.append(f"  (note: other processes kept up to {max(others) * 100:.0f}% of a CPU busy "
                     "during the runs (median per loop): the machine was not idle, so read "
                     "the ratios with care)")
    return "\n".join(lines)


def _progress(msg):
    print(msg, flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m zcn bench --asyncio-apps",
                                description=__doc__.split("\n\n")[0])
    prof = p.add_mutually_exclusive_group()
    prof.add_argument("--quick", action="store_true", help="1 round, 1 s windows")
    prof.add_argument("--smoke", action="store_true", help="1 round, the shortest windows (CI)")
    p.add_argument("--rounds", type=int)
    p.add_argument("--warmup", type=float, help="warm-up per server and workload, s")
    p.add_argument("--duration", type=float, help="measured window per run, s (wrk: whole s)")
    p.add_argument("--loops", help="comma list of servers: " + ",".join(SERVERS)
                   + " (default: the asyncio loops)")
    p.add_argument("--baseline", help="the server the ratios compare with "
                   f"(default {BASELINE})")
    native = p.add_mutually_exclusive_group()
    native.add_argument("--http", action="store_true", help="the C HTTP demo server (python -m "
                        "zcn http) against nginx under wrk -t1 -c100, with the goals")
    native.add_argument("--resp", action="store_true", help="the C RESP demo server (python -m "
                        "zcn resp) against redis-server under redis-benchmark -P 16 -c 50 "
                        "(SET, GET), with the goals")
    p.add_argument("--workloads", help="comma list of " + ",".join(WORKLOADS))
    p.add_argument("--commands", help="the resp workloads' commands: comma list of "
                   + ",".join(COMMANDS))
    p.add_argument("--build-dir", help="a CMake build dir whose libzero_copy_net.so the zcn "
                                       "servers load unless ZCN_LIBRARY is set")
    p.add_argument("--retry-busy", type=int, default=0, metavar="N",
                   help="run a round again, up to N times, while other processes kept more "
                        f"than {OTHER_CPU_WARN:.0%}% of a CPU busy (default 0)")
    p.add_argument("--server-cpu", type=int)
    p.add_argument("--client-cpu", type=int)
    p.add_argument("--json")
    args = p.parse_args(argv)
    preset = NATIVE_PROFILES.get("http" if args.http else "resp" if args.resp else "", {})
    defaults = {"loops": ",".join(LOOPS), "workloads": ",".join(WORKLOADS),
                "commands": ",".join(COMMANDS), "baseline": BASELINE}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, preset.get(name, value))
    profile = "smoke" if args.smoke else "quick" if args.quick else "full"
    rounds, warmup, duration = PROFILES[profile]
    rounds = args.rounds or rounds
    warmup = args.warmup if args.warmup is not None else warmup
    duration = args.duration or duration
    loops = [x for x in args.loops.split(",") if x]
    wls = [w for w in args.workloads.split(",") if w]
    commands = [c for c in args.commands.split(",") if c]
    for x in loops:
        if x not in SERVERS:
            raise SystemExit(f"unknown server {x!r} (choose from {', '.join(SERVERS)})")
    for w in wls:
        if w not in WORKLOADS:
            raise SystemExit(f"unknown workload {w!r} (choose from {', '.join(WORKLOADS)})")
    for c in commands:
        if c not in COMMANDS:
            raise SystemExit(f"unknown command {c!r} (choose from {', '.join(COMMANDS)})")
    if "set" in commands:  # SET first: GET, INCR and DEL then find keys
        commands = ["set"] + [c for c in commands if c != "set"]
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu = args.server_cpu if args.server_cpu is not None else cpus[-1]
    client_cpu = args.client_cpu if args.client_cpu is not None else cpus[0]
    wrk_seconds = max(1, round(duration))
    wrk_warm = max(1, round(warmup)) if warmup > 0 else 0

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    # bench/results of a checkout, else the installed package's results dir
    results = ROOT / "bench" / "results" if (ROOT / "bench").is_dir() else \
        default_results_dir(None)
    json_path = Path(args.json) if args.json else results / f"apps-{stamp}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([sys.executable, *sys.argv]),
        "profile": profile, "machine": machine_info(),
        "tools": {app: tool_version(app) for app in TOOLS},
        "settings": {"rounds": rounds, "warmup_s": warmup, "duration_s": duration,
                     "wrk_seconds": wrk_seconds, "server_cpu": server_cpu,
                     "client_cpu": client_cpu, "loops": loops, "commands": commands,
                     "retry_busy": args.retry_busy, "baseline": args.baseline},
        "workloads": {}, "skipped": {}, "notes": [],
    }
    if server_cpu == client_cpu:
        report["notes"].append("only one CPU: server and load tool share it")
    skip_app = {}
    for app, (tool, package) in TOOLS.items():
        if shutil.which(tool) is None:
            skip_app[app] = f"{tool} not found ({package})"
    skip_loop = {}
    if "uvloop" in loops:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            skip_loop["uvloop"] = "uvloop is not installed (pip install .[bench])"
    for name in loops:
        exe, package = NATIVE.get(name, (None, None, None))[1:]
        if exe is not None and shutil.which(exe) is None:
            skip_loop[name] = f"{exe} not found (Debian package {package})"
    if "zcn-aio" in loops:
        try:
            import zcn.aio  # noqa: F401
        except ImportError as exc:
            skip_loop["zcn-aio"] = f"zcn.aio cannot be imported: {exc}"
    for name, why in {**skip_app, **skip_loop}.items():
        _progress(f"asyncio_apps: skipping {name}: {why}")
        report["skipped"][name] = why
    env = server_env(args.build_dir)
    old_affinity = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {client_cpu})
    except OSError:
        pass
    _progress(f"asyncio_apps ({profile}): {', '.join(loops)} x {', '.join(wls)} x {rounds} "
              f"rounds, window {duration}s (wrk {wrk_seconds}s) after a warm-up; server on CPU "
              f"{server_cpu}, load tool on CPU {client_cpu}")
    ok_all = True
    t_start = time.monotonic()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for wl in wls:
                app, conns, depth, title = WORKLOADS[wl]
                if app in skip_app:
                    report["workloads"][wl] = {"note": skip_app[app]}
                    print(f"\n== {wl}: {title}\n  skipped: {skip_app[app]}", flush=True)
                    continue
                subs = [None] if app == "http" else commands
                script = None
                if app == "http":
                    script = Path(tmp) / f"wrk-{depth}.lua"
                    script.write_text(WRK_SCRIPT.format(depth=depth))
                live, notes = {}, {}
                for name in loops:
                    if name in skip_loop:
                        notes[name] = skip_loop[name]
                        continue
                    try:
                        if name in NATIVE and app not in NATIVE[name][0]:
                            notes[name] = f"{name} does not serve {app}"
                            continue
                        live[name] = make_server(app, name, server_cpu, env, tmp)
                    except RuntimeError as exc:
                        notes[name] = str(exc)
                        _progress(f"  {name}: skipped: {exc}")
                time.sleep(0.2)
                try:
                    for sub in subs:
                        key = wl if sub is None else f"{wl}:{sub}"
                        per = {name: [] for name in loops}
                        sizes = {}
                        # warm-up (and for redis-benchmark, -n for ~duration s)
                        for name, srv in live.items():
                            if app == "http":
                                if wrk_warm:
                                    run_wrk(srv, wl, wrk_warm, client_cpu, script)
                                continue
                            n_warm = max(1000, int(20000 * depth * warmup))
                            w = run_redis(srv, wl, sub, n_warm, client_cpu)
                            rate = w.get("rps") or 20000
                            sizes[name] = max(1000, int(rate * duration))
                        for rnd in range(rounds):
                            order = loops[rnd % len(loops):] + loops[:rnd % len(loops)]
                            for name in order:
                                srv = live.get(name)
                                if srv is None:
                                    continue
                                retries = 0
                                while True:
                                    if app == "http":
                                        r = run_wrk(srv, wl, wrk_seconds, client_cpu, script)
                                    else:
                                        r = run_redis(srv, wl, sub, sizes[name], client_cpu)
                                    if (retries >= args.retry_busy or
                                            (r.get("other_cpu_util") or 0) <= OTHER_CPU_WARN):
                                        break
                                    retries += 1  # the machine was busy: again, after a pause
                                    _progress(f"      {name}: others used "
                                              f"{r['other_cpu_util'] * 100:.0f}% of a CPU, "
                                              f"again ({retries}/{args.retry_busy})")
                                    time.sleep(RETRY_PAUSE_S)
                                r["round"] = rnd
                                r["busy_retries"] = retries
                                if not srv.alive():
                                    r["ok"] = False
                                    r["error"] = f"server exited: {srv.stderr_text()[-300:]}"
                                per[name].append(r)
                                ok_all = ok_all and bool(r.get("ok"))
                                _progress(
                                    f"  {key:18} round {rnd + 1}/{rounds} {name:8} "
                                    f"{_fmt(r.get('rps'), 0):>10} req/s "
                                    f"{_fmt(r.get('cpu_us_per_req'), 2):>6} us CPU/req "
                                    f"{_fmt((r.get('server_cpu_util') or 0) * 100, 0):>4}% CPU, "
                                    f"others {_fmt((r.get('other_cpu_util') or 0) * 100, 0)}%"
                                    + ("" if r.get("ok") else f"  FAILED: {r.get('error')}"))
                        results = {}
                        for name in loops:
                            res = {"rounds": per[name]}
                            if per[name]:
                                res["summary"] = summarize(per[name])
                                if sub is not None:
                                    res["requests_per_run"] = sizes.get(name)
                            else:
                                res["note"] = notes.get(name, "not run")
                            results[name] = res
                        report["workloads"][key] = {"title": title, "app": app, "conns": conns,
                                                    "depth": depth, "command": sub,
                                                    "results": results}
                        label = title if sub is None else f"{title}: {sub.upper()}"
                        print(table(f"{key}: {label}", results, args.baseline), flush=True)
                finally:
                    for srv in live.values():
                        srv.stop()
    finally:
        try:
            os.sched_setaffinity(0, old_affinity)
        except OSError:
            pass
    report["elapsed_s"] = round(time.monotonic() - t_start, 1)
    report["ok"] = ok_all
    goals = goals_lines(report, args.baseline, preset["goals"]) if preset else []
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    for line in goals:
        print(line)
    print(f"\nresults: {json_path}")
    for n in report["notes"]:
        print(f"note: {n}")
    print(f"elapsed {report['elapsed_s']} s; {'no errors' if ok_all else 'ERRORS (see above)'}")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
