#!/usr/bin/env python3
"""The proxy benchmark: examples/tcp_proxy against HAProxy in TCP mode.

    python bench/proxy_bench.py [--build-dir build/bench] [--rounds 5]
                                [--proxies zcn,haproxy] [--workloads c200,...]
    python -m zcn bench --proxy [the same options]

--proxies also takes zcn-py-c (`python -m zcn proxy`, the loop forwarding
by itself) and zcn-py (its Python handler, on_data per chunk), and for the
splice experiment (docs/PERFORMANCE.md) splice (bench/splice_proxy,
IORING_OP_SPLICE through a pipe), splice-sync (the same with splice(2) from
its loop thread) and haproxy-splice (HAProxy with `option splice-auto`).

Both proxies run one thread, pinned to --proxy-cpu (0), and forward to the
same upstream, the C epoll echo (bench/epoll_echo.c); the load generator
(bench/loadgen.c, which verifies every echoed byte) and the upstream share
--load-cpu (1). Each message crosses the proxy twice (request and echo).
The harness reads the proxy's CPU time (user+system, psutil) over exactly
the load generator's measured window, so "CPU us per message" is what the
proxy spent per round trip, whatever saturates first. Rounds are
interleaved (the proxy order rotates each round); medians with min/max.

Workloads (conns x depth x size): c200 = 200 x 1 x 64 B, c50d16 = 50 x 16 x
64 B, c10x16k = 10 x 1 x 16 KiB, stream = 1 x 8 x 64 KiB; on request,
stream256k = 1 x 4 x 256 KiB (loadgen's largest message). The goals of the
issue are printed (never enforced): zcn's CPU per message <= 0.80x
HAProxy's on the two small loads, its throughput >= 1.0x on the two large.

Needs psutil and the zcn package (its benchmark helpers); HAProxy from the `haproxy` Debian package (skipped with a
note if `haproxy` is not on PATH). The C tools are built with CMake:
    cmake -S . -B build/bench -DCMAKE_BUILD_TYPE=Release -DZCN_BUILD_BENCH=ON \\
          -DZCN_BUILD_EXAMPLES=ON -DZCN_BUILD_TESTS=OFF
    cmake --build build/bench --target loadgen epoll_echo tcp_proxy
Results: a table per workload, and JSON of every round
(bench/results/proxy-<timestamp>.json or --json). Exit status 1 only if a
byte failed verification or a process died.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = {
    # key: (conns, depth, size, title)
    "c200": (200, 1, 64, "200 connections x depth 1 x 64 B"),
    "c50d16": (50, 16, 64, "50 connections x depth 16 x 64 B"),
    "c10x16k": (10, 1, 16384, "10 connections x depth 1 x 16 KiB"),
    "stream": (1, 8, 65536, "1 connection x depth 8 x 64 KiB"),
}
#: On request (--workloads): loadgen's largest message (CHUNK_MAX), where
#: splice should gain most.
EXTRA_WORKLOADS = {
    "stream256k": (1, 4, 262144, "1 connection x depth 4 x 256 KiB"),
}
ALL_WORKLOADS = {**WORKLOADS, **EXTRA_WORKLOADS}
SMALL, LARGE = ("c200", "c50d16"), ("c10x16k", "stream")
PROXIES = ("zcn", "haproxy")
#: More contenders, on request (--proxies): `python -m zcn proxy` with the
#: loop forwarding by itself, and with a Python on_data per chunk; the splice
#: experiment's bench/splice_proxy and HAProxy with splice-auto.
EXTRA_PROXIES = ("zcn-py-c", "zcn-py", "splice", "splice-sync", "haproxy-splice")
LISTEN_RE = re.compile(r"listening on (\S+):(\d+)")


# pinned to one CPU, with the fd limit raised to the hard one (as zcn.bench)
from zcn.bench import _pin_and_raise as _pin  # noqa: E402


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_listening(port, proc, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.02)
    return False


class Proc:
    """A pinned child process with a psutil handle."""

    def __init__(self, name, argv, cpu, port=None, env=None):
        import psutil

        self.name = name
        self.argv = argv
        self._err = tempfile.TemporaryFile(mode="w+")
        self._out = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE if port is None else self._out,
                                     stderr=self._err, stdin=subprocess.DEVNULL, text=True,
                                     preexec_fn=_pin(cpu), env=env)
        if port is None:  # the port is on its first line
            line = self.proc.stdout.readline()
            m = LISTEN_RE.search(line or "")
            if m is None:
                self.stop()
                raise RuntimeError(f"{name} did not start: {self.stderr()[-300:]}")
            self.banner = line.strip()
            self.port = int(m.group(2))
        else:
            self.port = port
            self.banner = " ".join(argv)
            if not wait_listening(port, self.proc):
                self.stop()
                raise RuntimeError(f"{name} did not start: {self.stderr()[-300:]}")
        self.ps = psutil.Process(self.proc.pid)

    def cpu_s(self):
        t = self.ps.cpu_times()
        return t.user + t.system

    def alive(self):
        return self.proc.poll() is None

    def stderr(self):
        self._err.seek(0)
        return self._err.read().strip()

    def stdout_rest(self):
        if self.proc.stdout is not None:
            try:
                return self.proc.stdout.read()
            except ValueError:
                return ""
        self._out.seek(0)
        return self._out.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return self.proc.returncode


HAPROXY_CFG = """\
global
    nbthread 1
    maxconn 8000
defaults
    mode tcp
    timeout connect 1s
    timeout client 60s
    timeout server 60s
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    server upstream 127.0.0.1:{upstream}
"""
#: haproxy-splice: the same, with kernel splicing where HAProxy's heuristics
#: think it pays (doc/configuration.txt, option splice-auto). Its pipes
#: count against the fd limit (maxpipes defaults to maxconn/4, two fds
#: each): a few hundred are plenty for these loads.
HAPROXY_SPLICE_GLOBAL = "    maxpipes 256\n"
HAPROXY_SPLICE_OPTION = "    option splice-auto\n"


def start_proxy(name, build_dir, upstream_port, cpu, tmpdir):
    if name == "zcn":
        exe = build_dir / "examples" / "tcp_proxy"
        return Proc(name, [str(exe), "127.0.0.1:0", f"127.0.0.1:{upstream_port}"], cpu)
    if name in ("splice", "splice-sync"):
        exe = build_dir / "bench" / "splice_proxy"
        if not exe.exists():
            raise FileNotFoundError(f"{exe} not found: build the splice_proxy target")
        env = dict(os.environ, SPLICE_PROXY_OPS="syscall" if name == "splice-sync" else "uring")
        return Proc(name, [str(exe), "127.0.0.1:0", f"127.0.0.1:{upstream_port}"], cpu,
                    env=env)
    if name in ("zcn-py-c", "zcn-py"):
        # the zcn package this harness runs with, and the library of the
        # build dir unless ZCN_LIBRARY says otherwise
        import zcn
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(zcn.__file__).resolve().parent.parent), env.get("PYTHONPATH", "")])
        lib = build_dir / "libzero_copy_net.so"
        if "ZCN_LIBRARY" not in env and lib.exists():
            env["ZCN_LIBRARY"] = str(lib)
        handler = "c" if name == "zcn-py-c" else "python"
        return Proc(name, [sys.executable, "-m", "zcn", "proxy", "--listen", "127.0.0.1:0",
                           "--upstream", f"127.0.0.1:{upstream_port}", "--handler", handler],
                    cpu, env=env)
    exe = shutil.which("haproxy")
    if exe is None:
        raise FileNotFoundError("haproxy is not installed (Debian package `haproxy`)")
    port = free_port()
    cfg = Path(tmpdir) / f"{name}.cfg"
    text = HAPROXY_CFG.format(port=port, upstream=upstream_port)
    if name == "haproxy-splice":
        text = text.replace("global\n", "global\n" + HAPROXY_SPLICE_GLOBAL)
        text = text.replace("defaults\n", "defaults\n" + HAPROXY_SPLICE_OPTION)
    cfg.write_text(text)
    return Proc(name, [exe, "-db", "-f", str(cfg)], cpu, port=port)


def haproxy_version():
    exe = shutil.which("haproxy")
    if exe is None:
        return None
    out = subprocess.run([exe, "-v"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else None


def run_loadgen(loadgen, proxy, wl, warmup, duration, load_cpu):
    conns, depth, size, _ = ALL_WORKLOADS[wl]
    argv = [str(loadgen), "--port", str(proxy.port), "--mode", "echo", "--conns", str(conns),
            "--depth", str(depth), "--size", str(size), "--duration", str(duration),
            "--warmup", str(warmup), "--cpu", str(load_cpu)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, preexec_fn=_pin(None))
    timer = threading.Timer(warmup + duration + 60, proc.kill)
    timer.start()
    cpu0 = cpu1 = t0 = t1 = None
    result = None
    try:
        for line in proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == "window_start":
                cpu0, t0 = proxy.cpu_s(), time.perf_counter()
            elif ev.get("event") == "window_end":
                cpu1, t1 = proxy.cpu_s(), time.perf_counter()
            elif ev.get("event") == "result":
                result = ev
        proc.wait(timeout=30)
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stderr = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    out = {"proxy": proxy.name}
    if result is None:
        return dict(out, ok=False, error=f"loadgen gave no result: {stderr.strip()[-300:]}")
    result.pop("event", None)
    out.update(result)
    msgs = result.get("msgs") or 0
    if cpu0 is not None and cpu1 is not None and msgs:
        out["proxy_cpu_s"] = cpu1 - cpu0
        out["proxy_cpu_util"] = (cpu1 - cpu0) / (t1 - t0)
        out["cpu_us_per_msg"] = (cpu1 - cpu0) / msgs * 1e6
    if not proxy.alive():
        out["ok"] = False
        out["error"] = f"{proxy.name} exited: {proxy.stderr()[-300:]}"
    return out


# median/min/max of a list (Nones dropped), as the echo benchmark reports
from zcn.bench import _mmm as mmm  # noqa: E402


def summarize(rounds):
    keys = ("msgs_per_s", "mb_per_s", "cpu_us_per_msg", "proxy_cpu_util", "client_cpu_util")
    s = {k: mmm([r.get(k) for r in rounds]) for k in keys}
    s["p50_us"] = mmm([(r.get("rtt_ns") or {}).get("p50", 0) / 1e3 for r in rounds
                       if r.get("rtt_ns")])
    s["ok"] = bool(rounds) and all(r.get("ok") for r in rounds)
    return s


def fmt(m, digits=1, scale=1.0):
    if m is None:
        return "-"
    return (f"{m['median'] * scale:.{digits}f} [{m['min'] * scale:.{digits}f}.."
            f"{m['max'] * scale:.{digits}f}]")


def table(wl, results):
    lines = [f"\n{ALL_WORKLOADS[wl][3]} ({wl})",
             f"  {'proxy':14} {'msgs/s median [min..max]':>32} {'CPU us/msg median [min..max]':>32}"
             f" {'proxy CPU':>9} {'p50 us':>9}"]
    for name, res in results.items():
        s = res.get("summary")
        if s is None:
            lines.append(f"  {name:14} {res.get('note', 'not run')}")
            continue
        util = s["proxy_cpu_util"]["median"] * 100 if s["proxy_cpu_util"] else float("nan")
        p50 = s["p50_us"]["median"] if s["p50_us"] else float("nan")
        lines.append(f"  {name:14} {fmt(s['msgs_per_s'], 0):>32} {fmt(s['cpu_us_per_msg'], 2):>32}"
                     f" {util:8.0f}% {p50:9.0f}" + ("" if s["ok"] else "  FAILED"))
    return "\n".join(lines)


def goals(report):
    out = []

    def med(wl, proxy, key):
        s = ((report["workloads"].get(wl) or {}).get(proxy) or {}).get("summary") or {}
        m = s.get(key)
        return m["median"] if m else None

    for wl in SMALL:
        a, b = med(wl, "zcn", "cpu_us_per_msg"), med(wl, "haproxy", "cpu_us_per_msg")
        if a is not None and b:
            r = a / b
            out.append({"goal": f"{wl}: zcn CPU/msg <= 0.80x HAProxy's", "ratio": r,
                        "met": r <= 0.80})
    for wl in LARGE:
        a, b = med(wl, "zcn", "msgs_per_s"), med(wl, "haproxy", "msgs_per_s")
        if a is not None and b:
            r = a / b
            out.append({"goal": f"{wl}: zcn msgs/s >= 1.0x HAProxy's", "ratio": r,
                        "met": r >= 1.0})
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build-dir", default=str(ROOT / "build" / "bench"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--duration", type=float, default=2.0)
    p.add_argument("--proxies", default=",".join(PROXIES))
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--proxy-cpu", type=int, default=0)
    p.add_argument("--load-cpu", type=int, default=1)
    p.add_argument("--json")
    args = p.parse_args(argv)
    try:
        import psutil  # noqa: F401
    except ImportError:
        raise SystemExit("proxy_bench needs psutil") from None
    build = Path(args.build_dir).resolve()
    loadgen, echo = build / "bench" / "loadgen", build / "bench" / "epoll_echo"
    proxies = [x for x in args.proxies.split(",") if x]
    needed = [loadgen, echo] + [build / "examples" / "tcp_proxy"] * ("zcn" in proxies)
    for tool in needed:
        if not tool.exists():
            raise SystemExit(f"{tool} not found: build it (see the top of {__file__})")
    for x in proxies:
        if x not in PROXIES + EXTRA_PROXIES:
            raise SystemExit(f"unknown proxy {x!r} (choose from "
                             f"{', '.join(PROXIES + EXTRA_PROXIES)})")
    wls = [w for w in args.workloads.split(",") if w]
    for w in wls:
        if w not in ALL_WORKLOADS:
            raise SystemExit(f"unknown workload {w!r} (choose from {', '.join(ALL_WORKLOADS)})")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = Path(args.json) if args.json else ROOT / "bench" / "results" / f"proxy-{stamp}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": {"kernel": platform.release(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "haproxy": haproxy_version()},
        "settings": vars(args), "workloads": {}, "notes": [],
    }
    try:
        os.sched_setaffinity(0, {args.load_cpu})  # the harness stays off the proxy's CPU
    except OSError:
        pass
    ok_all = True
    upstream = Proc("epoll_echo", [str(echo), "--port", "0"], args.load_cpu)
    report["upstream"] = upstream.banner
    print(f"proxy_bench: {', '.join(proxies)} x {len(wls)} workloads x {args.rounds} rounds, "
          f"window {args.duration}s after {args.warmup}s; proxy on CPU {args.proxy_cpu}, "
          f"load generator and upstream ({upstream.banner}) on CPU {args.load_cpu}", flush=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for wl in wls:
                live, notes = {}, {}
                rounds = {name: [] for name in proxies}
                for name in proxies:
                    try:
                        live[name] = start_proxy(name, build, upstream.port, args.proxy_cpu, tmp)
                    except (FileNotFoundError, RuntimeError) as exc:
                        notes[name] = str(exc)
                        print(f"  {name}: skipped: {exc}", flush=True)
                time.sleep(0.2)
                try:
                    for rnd in range(args.rounds):
                        order = proxies[rnd % len(proxies):] + proxies[:rnd % len(proxies)]
                        for name in order:
                            if name not in live:
                                continue
                            r = run_loadgen(loadgen, live[name], wl, args.warmup, args.duration,
                                            args.load_cpu)
                            r["round"] = rnd
                            rounds[name].append(r)
                            ok_all = ok_all and bool(r.get("ok"))
                            print(f"  {wl:10} round {rnd + 1}/{args.rounds} {name:14} "
                                  f"{r.get('msgs_per_s', 0):10.0f} msg/s "
                                  f"{r.get('cpu_us_per_msg') or 0:6.2f} us CPU/msg "
                                  f"{(r.get('proxy_cpu_util') or 0) * 100:4.0f}% CPU"
                                  + ("" if r.get("ok") else f"  FAILED: {r.get('error') or r.get('first_error')}"),
                                  flush=True)
                finally:
                    stats = {}
                    for name, proc in live.items():
                        proc.stop()
                        rest = proc.stdout_rest()
                        stats[name] = [line for line in rest.splitlines() if "stats" in line][-1:]
                results = {}
                for name in proxies:
                    res = {"rounds": rounds[name]}
                    if rounds[name]:
                        res["summary"] = summarize(rounds[name])
                    else:
                        res["note"] = notes.get(name, "not run")
                    if stats.get(name):
                        res["proxy_stats"] = stats[name][0]
                    results[name] = res
                report["workloads"][wl] = results
                print(table(wl, results), flush=True)
    finally:
        upstream.stop()
    report["goals"] = goals(report)
    print("\ngoals (reported, not enforced):")
    for g in report["goals"]:
        print(f"  {g['goal']}: {g['ratio']:.2f}x  {'met' if g['met'] else 'MISSED'}")
    json_path.write_text(json.dumps(report, indent=1))
    print(f"\nJSON: {json_path}")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
