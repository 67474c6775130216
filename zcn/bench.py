"""The echo benchmark: ``python -m zcn bench [--quick | --smoke] ...``.

Servers, each in its own process pinned to one CPU (the load generator on the
other):

    zcn-c     zcn with the built-in C echo handler (bench/zcn_echo.c)
    zcn-py    zcn.TcpServer with a Python on_data that sends the view back
    epoll     a classic single-threaded epoll echo server in C (bench/epoll_echo.c)
    asyncio   an asyncio Protocol echo (bench/asyncio_echo.py)
    uvloop    the same Protocol on uvloop (skipped with a note if not installed)

With --asyncio, the asyncio profile instead: the same echo on zcn's asyncio
loop (zcn.aio) against uvloop and the standard loop, as a Protocol and with
streams (reader.read / writer.write / drain):

    zcn-aio, uvloop, asyncio                          Protocol echo
    zcn-aio-streams, uvloop-streams, asyncio-streams  streams echo

at 200x1x64B, 50x16x64B and 10x1x16KiB, ratios against uvloop (the streams
servers against uvloop-streams). With --threads, the threads profile (docs/THREADS.md): `python -m zcn echo`
with the C handler on one loop (zcn-c-1loop), on two loops one per CPU
(zcn-c-2loops) and on two loops sharing the server's CPU
(zcn-c-2loops-1cpu), and with the Python handler in one process
(zcn-py-1proc) and in two pre-fork workers (zcn-py-2workers on both CPUs,
zcn-py-2workers-1cpu on the server's; CPU summed over the worker
processes) and on two threads (zcn-py-2threads, -1cpu: they run Python in
parallel only on a free-threaded CPython, under the GIL they take turns),
ratios against the one-loop and one-process
rows, and the connections each loop or worker accepted. With --asyncio-apps, an HTTP/1.1 server
driven by wrk and a RESP2 server driven by redis-benchmark on the same
three loops (bench/asyncio_apps.py; the options after it go to it).

The load generator (bench/loadgen.c) drives N connections with D messages of
S bytes in flight each, verifies every echoed byte and reports msgs/s, MB/s
and RTT percentiles; the harness reads the server's CPU time (user+system,
psutil) over exactly the measured window, so CPU per message separates the
servers even when the load generator saturates first. Rounds are
interleaved (the server order rotates each round); medians with min/max.
Each window also records the CPU other processes took meanwhile
(other_cpu_util); --retry-busy N runs a round again, up to N times, while
that exceeded 10% of a CPU (a shared machine).

The C tools are built with CMake (targets loadgen, epoll_echo, zcn_echo);
the harness finds them in --build-dir, $ZCN_BENCH_BUILD, ./build/bench of a
checkout, or else in the installed package (zcn/_bench: `pip install` builds
them into the wheel). psutil is used when installed, else /proc directly.
Results: a table on the terminal, a JSON file of every figure
(bench/results/<timestamp>.json or --json) and PNG plots when matplotlib is
installed. Exit status 1 only if content verification failed or a server
died: goals are reported, never enforced.

This file holds the profiles, the servers and the run; beside it:
zcn/_bench_proc.py reads processes' CPU and memory, zcn/_bench_report.py
summarizes, tabulates, judges the goals and plots, and
zcn/_bench_threads.py defines the threads profile.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import queue
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# the processes' CPU and memory (psutil or /proc), and the threads profile
from ._bench_proc import busy_s as _busy_s
from ._bench_proc import proc_cpu_s as _proc_cpu_s
from ._bench_proc import process as _process
from ._bench_proc import psutil_process as _psutil_process
from ._bench_proc import tree_cpu_s
from ._bench_report import (OTHER_CPU_WARN, RETRY_PAUSE_S, _fmt, _mmm, _ratio,  # noqa: F401
                             evaluate_goals, goals_text, latency_ratios, make_plots, summarize,
                             table)
from ._bench_threads import (THREADS_DESCRIPTIONS, THREADS_LAYOUTS, THREADS_SERVERS,
                             THREADS_WORKLOADS, set_threads_cpus, spread_of, threads_baseline,
                             threads_command)

SERVER_ORDER = ("zcn-c", "zcn-c-epoll", "zcn-py", "epoll", "asyncio", "uvloop")
SERVER_DESCRIPTIONS = {
    "zcn-c": "zcn, built-in C echo handler (bench/zcn_echo.c)",
    "zcn-py": "zcn.TcpServer, Python on_data: server.send(fd, data)",
    "epoll": "single-threaded epoll echo in C, level-triggered, 64 KiB read buffer (bench/epoll_echo.c)",
    "asyncio": "asyncio Protocol echo, standard event loop (bench/asyncio_echo.py)",
    "uvloop": "the same asyncio Protocol on uvloop (bench/asyncio_echo.py --loop uvloop)",
}
#: The asyncio profile (--asyncio): one asyncio echo, three loops, two APIs.
ASYNCIO_SERVERS = ("zcn-aio", "uvloop", "asyncio", "zcn-aio-streams", "uvloop-streams",
                   "asyncio-streams")
ASYNCIO_WORKLOADS = ("c200", "c50d16", "c10x16k")
ASYNCIO_LOOPS = {"zcn-aio": "zcn", "uvloop": "uvloop", "asyncio": "asyncio"}
SERVER_DESCRIPTIONS.update({
    "zcn-aio": "the asyncio Protocol echo on zcn's loop (bench/asyncio_echo.py --loop zcn)",
    "zcn-aio-streams": "asyncio streams echo (read/write/drain) on zcn's loop "
                       "(bench/asyncio_echo.py --loop zcn --api streams)",
    "uvloop-streams": "the streams echo on uvloop (--loop uvloop --api streams)",
    "asyncio-streams": "the streams echo on the standard loop (--loop asyncio --api streams)",
})
#: zcn's servers on the epoll backend (docs/BACKENDS.md): the same
#: programs with ZCN_BACKEND=epoll; the plain zcn-* rows run on the default
#: (io_uring where the kernel allows it).
EPOLL_VARIANTS = ("zcn-c-epoll", "zcn-py-epoll", "zcn-aio-epoll")
for _name in EPOLL_VARIANTS:
    SERVER_DESCRIPTIONS[_name] = (SERVER_DESCRIPTIONS[_name[:-len("-epoll")]]
                                  + ", on the epoll backend (ZCN_BACKEND=epoll)")
#: The epoll profile (--epoll): zcn on both backends against the C epoll
#: server (its goals), with the Python servers beside them.
EPOLL_SERVERS = ("epoll", "zcn-c-epoll", "zcn-c", "zcn-py-epoll", "zcn-py", "uvloop")
EPOLL_WORKLOADS = ("c200", "c50d16", "c10x16k")
# The threads profile (--threads): zcn/_bench_threads.py.
SERVER_DESCRIPTIONS.update(THREADS_DESCRIPTIONS)
#: The busy-poll profile (--busy-poll): the 1-connection ping-pong, the load
#: generator spinning, servers that sleep against servers that spin
#: (ZCN_LoopConfig.busy_poll_us; epoll_echo --spin does the same in C).
BUSY_POLL_US = 50
BUSY_SERVERS = ("epoll", "zcn-c", "zcn-c-busy", "epoll-spin")
BUSY_WORKLOADS = ("ping",)
SERVER_DESCRIPTIONS.update({
    "zcn-c-busy": f"zcn-c with busy_poll_us={BUSY_POLL_US} (zcn_echo --busy-poll "
                  f"{BUSY_POLL_US})",
    "epoll-spin": f"the C epoll echo spinning: epoll_wait(0) until {BUSY_POLL_US} us after "
                  f"the last event, then blocking (epoll_echo --spin {BUSY_POLL_US})",
})
KNOWN_SERVERS = SERVER_ORDER + tuple(s for s in ASYNCIO_SERVERS + EPOLL_VARIANTS + THREADS_SERVERS
                                     + BUSY_SERVERS if s not in SERVER_ORDER)
#: With --baseline-build: the same zcn servers from another build (an older
#: commit), interleaved with today's in one run, for before/after figures.
BASELINE_SERVERS = {
    "zcn-c-base": "zcn-c from the --baseline-build (before/after comparisons)",
    "zcn-py-base": "zcn-py from the --baseline-build's source tree and library",
    "zcn-c-epoll-base": "zcn-c-epoll from the --baseline-build (before/after on the epoll "
                        "backend)",
}
LISTEN_RE = re.compile(r"listening on (\S+):(\d+)")
START_TIMEOUT_S = 20.0


@dataclass
class Workload:
    key: str
    title: str
    conns: int
    depth: int
    size: int
    mode: str = "echo"            # "echo" or "connect"
    spin: bool = False            # load generator busy-polls (latency workload)
    zcn_config: dict = field(default_factory=dict)
    fresh_server: bool = False    # a new server per round (RSS per connection)

    def label(self):
        if self.mode == "connect":
            return f"{self.conns} conns setup"
        size = f"{self.size // 1024}KiB" if self.size % 1024 == 0 else f"{self.size}B"
        return f"{self.conns}x{self.depth}x{size}"


def workloads(profile, conns_many=None):
    """The workloads of a profile. zcn_config is what a user would pick for
    the workload (the rest are the library's defaults)."""
    small = {"buffer_size": 16384, "buffer_pool_size": 1024}  # the defaults
    many = conns_many or (500 if profile == "smoke" else 10000)
    wls = [
        Workload("ping", "1 connection ping-pong, 64 B (latency)", 1, 1, 64, spin=True,
                 zcn_config=dict(small)),
        Workload("c200", "200 connections x depth 1 x 64 B", 200, 1, 64, zcn_config=dict(small)),
        Workload("c50d16", "50 connections x depth 16 x 64 B", 50, 16, 64, zcn_config=dict(small)),
        Workload("c10x16k", "10 connections x depth 1 x 16 KiB", 10, 1, 16384,
                 zcn_config=dict(small)),
        # 64 KiB messages in the default 16 KiB buffers: four buffers a
        # message, what receive bundles (docs/BUFFERS.md) cut down.
        Workload("c1x64k", "1 connection x depth 8 x 64 KiB, default 16 KiB buffers", 1, 8,
                 65536, zcn_config=dict(small)),
        Workload("stream", "1 connection streaming 64 KiB messages (depth 8)", 1, 8, 65536,
                 zcn_config={"buffer_size": 65536, "buffer_pool_size": 256}),
        Workload("conn10k", f"{many} concurrent connections: setup rate, RSS per connection",
                 many, 1, 64, mode="connect",
                 zcn_config={"buffer_size": 4096, "buffer_pool_size": 4096,
                             "connections_max": max(12000, many + many // 5), "backlog": 4096},
                 fresh_server=True),
    ]
    if profile == "smoke":
        keep = {"ping", "c200", "conn10k"}
        wls = [w for w in wls if w.key in keep]
    return wls


def asyncio_baseline(name):
    """The server an asyncio-profile server is compared with: uvloop for
    the Protocol servers, uvloop-streams for the streams ones."""
    return "uvloop-streams" if name.endswith("-streams") else "uvloop"


PROFILES = {
    # rounds, warm-up s, window s
    "smoke": (1, 0.1, 0.4),
    "quick": (1, 0.2, 0.6),
    "full": (3, 0.5, 2.0),
}

# --------------------------------------------------------------------------
# locating things
# --------------------------------------------------------------------------


#: Where `pip install` puts the C tools and the asyncio echo (CMakeLists.txt,
#: ZCN_WHEEL_BENCH).
PACKAGE_TOOLS = Path(__file__).resolve().parent / "_bench"


def _source_root(build_dir):
    here = Path(__file__).resolve().parent.parent
    if (here / "bench" / "loadgen.c").exists():
        return here
    return _cmake_source_dir(build_dir) if build_dir else None


def find_build_dir(arg):
    candidates = []
    if arg:
        candidates.append(Path(arg))
    elif os.environ.get("ZCN_BENCH_BUILD"):
        candidates.append(Path(os.environ["ZCN_BENCH_BUILD"]))
    else:
        root = Path(__file__).resolve().parent.parent
        candidates += [root / "build" / "bench", Path.cwd() / "build" / "bench"]
        candidates.append(PACKAGE_TOOLS)  # an installed package
    for c in candidates:
        if tool_path(c, "loadgen") is not None:
            return c.resolve()
    raise SystemExit(
        "zcn bench: the C tools (loadgen, epoll_echo, zcn_echo) were not found in "
        + ", ".join(str(c) for c in candidates)
        + ".\nInstall the package with them (pip install zero_copy_net from a source "
        "tree: the wheel builds them unless -C cmake.define.ZCN_WHEEL_BENCH=OFF), or "
        "build them in a checkout: cmake -S . -B build/bench -DCMAKE_BUILD_TYPE=Release && "
        "cmake --build build/bench -j --target loadgen epoll_echo zcn_echo\n"
        "then pass --build-dir build/bench (or set ZCN_BENCH_BUILD).")


def asyncio_echo_script(src_root):
    """bench/asyncio_echo.py of the source tree, else the installed copy."""
    for p in ((src_root / "bench" / "asyncio_echo.py") if src_root else None,
              PACKAGE_TOOLS / "asyncio_echo.py"):
        if p is not None and p.exists():
            return p
    return None


def default_results_dir(src_root):
    """bench/results of a checkout; outside one, $XDG_DATA_HOME/zcn/bench-results
    (~/.local/share/zcn/bench-results)."""
    if src_root is not None and (src_root / "bench").is_dir():
        return src_root / "bench" / "results"
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                           "share")
    return Path(data) / "zcn" / "bench-results"


def tool_path(build_dir, name):
    for p in (Path(build_dir) / "bench" / name, Path(build_dir) / name):
        if p.is_file() and os.access(p, os.X_OK):
            return p
    return None


def _cmake_source_dir(build_dir):
    """The source tree a CMake build dir was configured from, or None."""
    cache = Path(build_dir) / "CMakeCache.txt"
    if cache.exists():
        for line in cache.read_text(errors="replace").splitlines():
            if line.startswith("CMAKE_HOME_DIRECTORY:"):
                return Path(line.split("=", 1)[1])
    return None


def _baseline_command(name, wl, baseline):
    """zcn-c-base / zcn-py-base: today's command, run from the baseline
    build (its zcn_echo; its source tree's zcn package with its library)."""
    if baseline is None:
        raise FileNotFoundError(f"{name} needs --baseline-build")
    root = _cmake_source_dir(baseline)
    if name in ("zcn-c-base", "zcn-c-epoll-base"):
        argv, env, cfg = server_command(name[:-len("-base")], wl, baseline, root)
        return argv, env, dict(cfg, build=str(baseline))
    lib = next((p for p in (Path(baseline) / "libzero_copy_net.so",) if p.exists()), None)
    if lib is None or root is None:
        raise FileNotFoundError(f"no libzero_copy_net.so or source tree for {baseline}")
    argv, env, cfg = server_command("zcn-py", wl, baseline, root)
    env["PYTHONPATH"] = str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")
    env["ZCN_LIBRARY"] = str(lib)
    return argv, env, dict(cfg, build=str(baseline))


def machine_info():
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu_model": model or platform.processor(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_gil": bool(getattr(sys, "_is_gil_enabled", lambda: True)()),
        "hostname_hash": hash(platform.node()) & 0xFFFF,
    }
    try:
        info["liburing"] = subprocess.run(["pkg-config", "--modversion", "liburing"],
                                          capture_output=True, text=True,
                                          timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import zcn
        info["zcn"] = zcn.__version__
    except Exception as exc:  # noqa: BLE001 - informational only
        info["zcn"] = f"unavailable: {exc}"
    try:
        import uvloop
        info["uvloop"] = uvloop.__version__
    except ImportError:
        info["uvloop"] = None
    try:
        import psutil
        info["psutil"] = psutil.__version__
    except ImportError:
        pass
    return info


# --------------------------------------------------------------------------
# servers
# --------------------------------------------------------------------------


def _pin_and_raise(cpu):
    def pre():
        if cpu is not None:  # one CPU, or a set of them
            os.sched_setaffinity(0, set(cpu) if isinstance(cpu, (set, frozenset)) else {cpu})
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return pre


class Server:
    """One echo server process, pinned; knows its port and psutil handle."""

    tree = False  # (also for subclasses with their own __init__: bench/asyncio_apps.py)

    def __init__(self, name, cmd, cpu, env=None, tree=False):
        self.name = name
        self.cmd = cmd
        self.tree = tree  # count the CPU of its child processes too (pre-fork workers)
        self.tail = ""  # what it printed after the listening line, read at stop()
        self.stderr_path = None
        import tempfile

        self._stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr,
                                     stdin=subprocess.DEVNULL, text=True, env=env,
                                     preexec_fn=_pin_and_raise(cpu))
        lines = queue.Queue()
        threading.Thread(target=lambda: lines.put(self.proc.stdout.readline()),
                         daemon=True).start()
        try:
            line = lines.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            line = ""
        m = LISTEN_RE.search(line or "")
        if m is None:
            self.stop()
            last = (self.stderr_text().splitlines() or ["(no output)"])[-1]
            raise RuntimeError(f"{name} did not start: {last}")
        self.banner = line.strip()
        self.port = int(m.group(2))
        self.ps = _process(self.proc.pid)

    def cpu_s(self):
        t = self.ps.cpu_times()
        total = t.user + t.system
        if self.tree:
            total += tree_cpu_s(self.proc.pid, include_root=False)
        return total

    def rss(self):
        return self.ps.memory_info().rss

    def alive(self):
        return self.proc.poll() is None

    def stderr_text(self):
        try:
            self._stderr.seek(0)
            return self._stderr.read().strip()[-2000:]
        except (OSError, ValueError):
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15 if self.tree else 5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stdout is not None:
            try:
                self.tail = self.proc.stdout.read()
            except (OSError, ValueError):
                pass
            self.proc.stdout.close()
        return self.proc.returncode


def server_command(name, wl, build_dir, src_root, baseline=None):
    """(argv, env, config description) for one server and workload.
    baseline: the --baseline-build directory, for the *-base servers."""
    if name in BASELINE_SERVERS:
        return _baseline_command(name, wl, baseline)
    if name in EPOLL_VARIANTS:
        argv, env, cfg = server_command(name[:-len("-epoll")], wl, build_dir, src_root)
        env["ZCN_BACKEND"] = "epoll"
        return argv, env, dict(cfg, backend="epoll")
    if name == "zcn-c-busy":
        argv, env, cfg = server_command("zcn-c", wl, build_dir, src_root)
        return argv + ["--busy-poll", str(BUSY_POLL_US)], env, dict(cfg, busy_poll_us=BUSY_POLL_US)
    if name == "epoll-spin":
        argv, env, cfg = server_command("epoll", wl, build_dir, src_root)
        return argv + ["--spin", str(BUSY_POLL_US)], env, dict(cfg, spin_us=BUSY_POLL_US)
    cfg = wl.zcn_config
    py = sys.executable
    env = dict(os.environ)
    env.pop("ZCN_BACKEND", None)  # the default backend; the *-epoll rows set it
    if name in THREADS_LAYOUTS:
        return threads_command(name, cfg, env)
    if name == "zcn-c":
        exe = tool_path(build_dir, "zcn_echo")
        if exe is None:
            raise FileNotFoundError(f"zcn_echo not built in {build_dir}")
        argv = [str(exe), "--port", "0"]
        for key, opt in (("buffer_size", "--buffer-size"), ("buffer_pool_size", "--buffers"),
                         ("connections_max", "--connections-max"), ("backlog", "--backlog")):
            if key in cfg:
                argv += [opt, str(cfg[key])]
        return argv, env, dict(cfg, handler="c")
    if name == "zcn-py":
        import zcn

        pkg_parent = str(Path(zcn.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = pkg_parent + os.pathsep + env.get("PYTHONPATH", "")
        argv = [py, "-m", "zcn.bench", "serve-python", "--port", "0"]
        for key in ("buffer_size", "buffer_pool_size", "connections_max", "backlog"):
            if key in cfg:
                argv += ["--" + key.replace("_", "-"), str(cfg[key])]
        return argv, env, dict(cfg, handler="python")
    if name == "epoll":
        exe = tool_path(build_dir, "epoll_echo")
        if exe is None:
            raise FileNotFoundError(f"epoll_echo not built in {build_dir}")
        return [str(exe), "--port", "0", "--backlog", "4096"], env, {"backlog": 4096}
    streams = name.endswith("-streams")
    base = name[:-len("-streams")] if streams else name
    if base in ASYNCIO_LOOPS:
        api = "streams" if streams else "protocol"
        loop = ASYNCIO_LOOPS[base]
        script = asyncio_echo_script(src_root)
        if script is None:
            raise FileNotFoundError("bench/asyncio_echo.py not found (run from a source checkout)")
        if loop == "uvloop":
            try:
                import uvloop  # noqa: F401
            except ImportError:
                raise FileNotFoundError("uvloop is not installed (pip install .[bench])") from None
        if loop == "zcn":
            # the zcn package this harness runs with (and its ZCN_LIBRARY)
            import zcn

            pkg_parent = str(Path(zcn.__file__).resolve().parent.parent)
            env["PYTHONPATH"] = pkg_parent + os.pathsep + env.get("PYTHONPATH", "")
        return ([py, str(script), "--loop", loop, "--api", api,
                 "--port", "0", "--backlog", "4096"], env,
                {"backlog": 4096, "loop": loop, "api": api})
    raise ValueError(f"unknown server {name!r}")


def serve_python(argv):
    """The zcn-py server process: zcn.TcpServer with a Python echo."""
    p = argparse.ArgumentParser(prog="python -m zcn.bench serve-python")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--buffer-size", type=int, default=16384)
    p.add_argument("--buffer-pool-size", type=int, default=1024)
    p.add_argument("--connections-max", type=int, default=4096)
    p.add_argument("--backlog", type=int, default=1024)
    a = p.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import zcn

    server = zcn.TcpServer(a.host, a.port, handler="python", buffer_size=a.buffer_size,
                           buffer_pool_size=a.buffer_pool_size,
                           connections_max=a.connections_max, backlog=a.backlog)
    send = server.send

    def on_data(fd, data):
        send(fd, data)

    server.on_data = on_data
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: server.stop())
    print(f"zcn-py listening on {a.host}:{server.port} (handler=python)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


# --------------------------------------------------------------------------
# one measurement
# --------------------------------------------------------------------------


def run_loadgen(loadgen, server, wl, warmup, duration, client_cpu):
    argv = [str(loadgen), "--port", str(server.port), "--mode", wl.mode, "--conns",
            str(wl.conns), "--depth", str(wl.depth), "--size", str(wl.size),
            "--duration", str(duration), "--warmup", str(warmup)]
    if client_cpu is not None:
        argv += ["--cpu", str(client_cpu)]
    if wl.spin:
        argv.append("--spin")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.PIPE, text=True, preexec_fn=_pin_and_raise(None))
    timer = threading.Timer(warmup + duration + 90, proc.kill)
    timer.start()
    lg = _psutil_process(proc.pid)
    others0 = others1 = None
    out = {"server": server.name}
    rss_before = server.rss()
    cpu0 = cpu1 = None
    t0 = t1 = None
    result = None
    try:
        for line in proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            kind = ev.get("event")
            if kind == "window_start":
                cpu0, t0 = server.cpu_s(), time.perf_counter()
                others0 = _busy_s() - _proc_cpu_s(lg)
            elif kind == "window_end":
                cpu1, t1 = server.cpu_s(), time.perf_counter()
                others1 = _busy_s() - _proc_cpu_s(lg)
            elif kind == "ready":
                out["rss_before"] = rss_before
                out["rss_held"] = server.rss()
                proc.stdin.write("go\n")
                proc.stdin.flush()
            elif kind == "result":
                result = ev
        proc.wait(timeout=30)
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stderr = proc.stderr.read()
        for f in (proc.stdout, proc.stderr, proc.stdin):
            try:
                f.close()
            except (OSError, BrokenPipeError):
                pass
    if result is None:
        return dict(out, ok=False, error=f"loadgen gave no result (exit {proc.returncode}): "
                                         f"{stderr.strip()[-500:]}")
    result.pop("event", None)
    out.update(result)
    if wl.mode == "echo" and cpu0 is not None and cpu1 is not None:
        msgs = result.get("msgs") or 0
        out["server_cpu_s"] = cpu1 - cpu0
        out["server_cpu_util"] = (cpu1 - cpu0) / (t1 - t0) if t1 > t0 else None
        if others0 is not None and others1 is not None and t1 > t0:
            out["other_cpu_util"] = max(0.0, (others1 - others0 - (cpu1 - cpu0)) / (t1 - t0))
        out["cpu_us_per_msg"] = (cpu1 - cpu0) / msgs * 1e6 if msgs else None
    if wl.mode == "connect" and "rss_held" in out:
        n = result.get("established") or wl.conns
        out["rss_per_conn"] = (out["rss_held"] - out["rss_before"]) / n
    if not server.alive():
        out["ok"] = False
        out["error"] = f"server exited ({server.proc.returncode}): {server.stderr_text()[-500:]}"
    return out


# --------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------


def add_arguments(p):
    p.add_argument("--proxy", action="store_true",
                   help="the proxy profile instead: examples/tcp_proxy (and, with --proxies, "
                        "python -m zcn proxy) against HAProxy in front of the C epoll echo "
                        "(bench/proxy_bench.py; the options after --proxy go to it)")
    p.add_argument("--asyncio", action="store_true",
                   help="the asyncio profile: zcn's asyncio loop (zcn.aio) against uvloop and "
                        "asyncio, Protocol and streams echo (servers "
                        + ",".join(ASYNCIO_SERVERS) + "; workloads "
                        + ",".join(ASYNCIO_WORKLOADS) + "); combines with --quick/--smoke")
    p.add_argument("--epoll", action="store_true",
                   help="the epoll-backend profile: zcn on epoll (ZCN_BACKEND=epoll) and on "
                        "io_uring against the C epoll server (servers "
                        + ",".join(EPOLL_SERVERS) + "; workloads " + ",".join(EPOLL_WORKLOADS)
                        + "); combines with --quick/--smoke")
    p.add_argument("--threads", action="store_true",
                   help="the threads profile: the C echo on one loop against two loops (a "
                        "ZCN_Group), the Python echo in one process against two pre-fork "
                        "workers (docs/THREADS.md)")
    p.add_argument("--busy-poll", action="store_true",
                   help="the busy-poll profile: 1-connection 64 B ping-pong, the load "
                        "generator spinning, against servers that sleep (epoll, zcn-c) and "
                        f"that spin (zcn-c-busy: busy_poll_us={BUSY_POLL_US}; epoll-spin); "
                        "p50/p99/p99.9 and server CPU, ratios against epoll's p50")
    p.add_argument("--asyncio-apps", action="store_true",
                   help="an HTTP/1.1 server (wrk) and a RESP2 server (redis-benchmark) on "
                        "zcn's asyncio loop, uvloop and asyncio (bench/asyncio_apps.py; the "
                        "options after --asyncio-apps go to it)")
    p.add_argument("--http", action="store_true",
                   help="python -m zcn http (C) against nginx under wrk -t1 -c100 "
                        "(bench/asyncio_apps.py --http; the options after it go to it)")
    p.add_argument("--resp", action="store_true",
                   help="python -m zcn resp (C) against redis-server under redis-benchmark "
                        "-P 16 -c 50 (bench/asyncio_apps.py --resp; likewise)")
    prof = p.add_mutually_exclusive_group()
    prof.add_argument("--quick", action="store_true",
                      help="1 round of short windows, every workload (< 1 minute)")
    prof.add_argument("--smoke", action="store_true",
                      help="seconds: ping, 200x1x64B, 500-connection setup; for CI")
    p.add_argument("--rounds", type=int, help="rounds per workload (default by profile)")
    p.add_argument("--duration", type=float, help="measured window per run, s")
    p.add_argument("--warmup", type=float, help="warm-up per run, s")
    p.add_argument("--servers", help=f"comma list of {','.join(KNOWN_SERVERS)} "
                                     "(default: the first six; --smoke: epoll,zcn-c; "
                                     "--asyncio: the asyncio servers)")
    p.add_argument("--workloads", help="comma list of workload keys "
                                       "(ping,c200,c50d16,c10x16k,c1x64k,stream,conn10k)")
    p.add_argument("--conns-many", type=int, help="connections of the setup workload "
                                                  "(default 10000; 500 with --smoke)")
    p.add_argument("--build-dir", help="CMake build dir holding bench/loadgen etc. "
                                       "(default $ZCN_BENCH_BUILD or ./build/bench)")
    p.add_argument("--baseline-build", help="a build dir of another commit (with bench/zcn_echo "
                                            "and libzero_copy_net.so): adds the servers "
                                            "zcn-c-base, zcn-c-epoll-base and zcn-py-base "
                                            "for before/after runs")
    p.add_argument("--json", help="results file (default bench/results/<timestamp>.json)")
    p.add_argument("--plots", help="directory for the PNG plots (default: beside the JSON)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--retry-busy", type=int, default=0, metavar="N",
                   help="run a round again, up to N times, while other processes kept more "
                        f"than {OTHER_CPU_WARN:.0%}% of a CPU busy during its window (a shared "
                        "machine); the JSON counts the retries (default 0)")
    p.add_argument("--server-cpu", type=int, help="CPU for the servers (default: the last)")
    p.add_argument("--client-cpu", type=int, help="CPU for the load generator (default: the first)")
    return p


def add_parser(subparsers):
    p = subparsers.add_parser("bench", help="echo benchmark: zcn vs epoll, asyncio, uvloop",
                              description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def _progress(msg):
    print(msg, file=sys.stderr, flush=True)


def run(args):
    if args.proxy:
        rest = sys.argv[sys.argv.index("--proxy") + 1:] if "--proxy" in sys.argv else []
        return run_proxy_profile(rest, args.build_dir)
    if args.asyncio_apps:
        rest = (sys.argv[sys.argv.index("--asyncio-apps") + 1:]
                if "--asyncio-apps" in sys.argv else [])
        return run_apps_profile(rest, args.build_dir)
    profile = "smoke" if args.smoke else "quick" if args.quick else "full"
    rounds, warmup, duration = PROFILES[profile]
    rounds = args.rounds or rounds
    warmup = args.warmup if args.warmup is not None else warmup
    duration = args.duration or duration
    build_dir = find_build_dir(args.build_dir)
    loadgen = tool_path(build_dir, "loadgen")
    src_root = _source_root(build_dir)
    if sum(map(bool, (args.asyncio, args.epoll, args.threads, args.busy_poll))) > 1:
        raise SystemExit("zcn bench: --asyncio, --epoll, --threads and --busy-poll are "
                         "separate profiles")
    if args.busy_poll:
        default_servers = ",".join(BUSY_SERVERS)
    elif args.asyncio:
        default_servers = ",".join(ASYNCIO_SERVERS)
    elif args.epoll:
        default_servers = ",".join(EPOLL_SERVERS)
    elif args.threads:
        default_servers = ",".join(THREADS_SERVERS)
    else:
        default_servers = "epoll,zcn-c" if profile == "smoke" else ",".join(SERVER_ORDER)
    servers = [s.strip() for s in (args.servers or default_servers).split(",") if s.strip()]
    baseline = Path(args.baseline_build).resolve() if args.baseline_build else None
    known = KNOWN_SERVERS + (tuple(BASELINE_SERVERS) if baseline else ())
    for s in servers:
        if s not in known:
            raise SystemExit(f"zcn bench: unknown server {s!r} (choose from {known})")
    if args.asyncio or args.epoll or args.threads or args.busy_poll:
        keys = (ASYNCIO_WORKLOADS if args.asyncio else EPOLL_WORKLOADS if args.epoll
                else BUSY_WORKLOADS if args.busy_poll else THREADS_WORKLOADS)
        keys = keys[:2] if profile == "smoke" else keys
        wls = [w for w in workloads("full") if w.key in keys]
    else:
        wls = workloads(profile, args.conns_many)
    if args.workloads:
        keys = [k.strip() for k in args.workloads.split(",")]
        unknown = set(keys) - {w.key for w in workloads("full")}
        if unknown:
            raise SystemExit(f"zcn bench: unknown workloads {sorted(unknown)}")
        wls = [w for w in workloads("full", args.conns_many) if w.key in keys]

    cpus = sorted(os.sched_getaffinity(0))
    server_cpu = args.server_cpu if args.server_cpu is not None else cpus[-1]
    client_cpu = args.client_cpu if args.client_cpu is not None else cpus[0]
    notes = []
    if server_cpu == client_cpu:
        notes.append("only one CPU: server and load generator share it")
    set_threads_cpus(server=server_cpu, client=client_cpu)
    if args.threads and len(cpus) == 2:
        notes.append("two CPUs: the two-loop and two-worker servers share the load "
                     "generator's CPU, so their CPU per message is the figure that must "
                     "hold, not their throughput")

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    if args.json:
        json_path = Path(args.json)
    else:
        json_path = default_results_dir(src_root) / f"{stamp}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)

    report = {
        "version": 1, "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "profile": profile, "asyncio": bool(args.asyncio), "epoll": bool(args.epoll),
        "threads": bool(args.threads), "busy_poll": bool(args.busy_poll),
        "command": " ".join(["python -m zcn bench"] + sys.argv[1:]),
        "machine": machine_info(),
        "settings": {"rounds": rounds, "warmup_s": warmup, "duration_s": duration,
                     "retry_busy": args.retry_busy,
                     "server_cpu": server_cpu, "client_cpu": client_cpu,
                     "build_dir": str(build_dir)},
        "servers": {s: {"description": SERVER_DESCRIPTIONS.get(s) or BASELINE_SERVERS[s]}
                    for s in servers},
        "workloads": [], "notes": notes,
    }
    total_runs = sum(rounds * len(servers) for _ in wls)
    name_width = max([8] + [len(n) for n in servers])
    done = 0
    t_start = time.monotonic()
    old_affinity = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {client_cpu})  # keep the harness off the server's CPU
    except OSError:
        pass
    ok_all = True
    _progress(f"zcn bench ({profile}{', asyncio' if args.asyncio else ''}"
              f"{', threads' if args.threads else ''}): {len(servers)} servers x {len(wls)} workloads x "
              f"{rounds} rounds, window {duration}s after {warmup}s warm-up; server on CPU "
              f"{server_cpu}, load generator on CPU {client_cpu}")
    try:
        for wl in wls:
            entry = {"key": wl.key, "label": wl.label(), "title": wl.title, "mode": wl.mode,
                     "conns": wl.conns, "depth": wl.depth, "size": wl.size, "spin": wl.spin,
                     "zcn_config": wl.zcn_config, "results": {}}
            per_server = {s: {"rounds": [], "config": None, "note": None} for s in servers}
            live = {}

            def start(name):
                try:
                    argv, env, cfg = server_command(name, wl, build_dir, src_root, baseline)
                    per_server[name]["config"] = cfg
                    cpu, tree = server_cpu, False
                    if name in THREADS_LAYOUTS:
                        cpu = set(cpus) if THREADS_LAYOUTS[name][1] == "all" else server_cpu
                        tree = "--workers" in argv
                    srv = Server(name, argv, cpu, env, tree=tree)
                    time.sleep(0.05)
                    return srv
                except (FileNotFoundError, RuntimeError) as exc:
                    per_server[name]["note"] = str(exc)
                    _progress(f"  {name}: skipped: {exc}")
                    return None

            try:
                if not wl.fresh_server:
                    for name in servers:
                        live[name] = start(name)
                for rnd in range(rounds):
                    order = servers[rnd % len(servers):] + servers[:rnd % len(servers)]
                    for name in order:
                        done += 1
                        if per_server[name]["note"] and name not in live:
                            continue
                        srv = start(name) if wl.fresh_server else live.get(name)
                        if srv is None:
                            continue
                        try:
                            r = run_loadgen(loadgen, srv, wl, warmup, duration, client_cpu)
                            retries = 0
                            while (not wl.fresh_server and retries < args.retry_busy
                                   and (r.get("other_cpu_util") or 0) > OTHER_CPU_WARN):
                                # the machine was busy: the round again, after a pause
                                retries += 1
                                _progress(f"      {name}: others used "
                                          f"{r['other_cpu_util'] * 100:.0f}% of a CPU, "
                                          f"again ({retries}/{args.retry_busy})")
                                time.sleep(RETRY_PAUSE_S)
                                r = run_loadgen(loadgen, srv, wl, warmup, duration, client_cpu)
                            r["busy_retries"] = retries
                        finally:
                            if wl.fresh_server:
                                srv.stop()
                                r_stderr = srv.stderr_text()
                            else:
                                r_stderr = None
                        r["round"] = rnd
                        if r_stderr and "stats:" in r_stderr:
                            r["server_stats"] = r_stderr.splitlines()[-1]
                        per_server[name]["rounds"].append(r)
                        if not r.get("ok"):
                            ok_all = False
                        if wl.mode == "connect":
                            fig = (f"{_fmt(r.get('setup_per_s'), 0)} conns/s set up, "
                                   f"{_fmt((r.get('rss_per_conn') or 0) / 1024, 2)} KiB RSS/conn")
                        else:
                            fig = (f"{_fmt(r.get('msgs_per_s'), 0)} msg/s, "
                                   f"{_fmt(r.get('cpu_us_per_msg'), 2)} us CPU/msg, p50 "
                                   f"{_fmt(((r.get('rtt_ns') or {}).get('p50') or 0) / 1e3, 1)} us"
                                   f", others {_fmt((r.get('other_cpu_util') or 0) * 100, 0)}% CPU")
                        err = "" if r.get("ok") else f"  FAILED: {r.get('error') or r.get('first_error')}"
                        _progress(f"[{done:3}/{total_runs}] {wl.label():22} round {rnd + 1}/{rounds} "
                                  f"{name:{name_width}} {fig}{err}")
            finally:
                for name, srv in live.items():
                    if srv is not None:
                        srv.stop()
                        text = srv.stderr_text()
                        if "stats:" in text:
                            per_server[name]["server_stats"] = text.splitlines()[-1]
                        spread = spread_of(srv.tail)
                        if spread is not None:
                            per_server[name]["spread"] = spread
            for name in servers:
                ps = per_server[name]
                res = {"config": ps["config"], "rounds": ps["rounds"]}
                if ps.get("server_stats"):
                    res["server_stats"] = ps["server_stats"]
                if ps.get("spread"):
                    res["spread"] = ps["spread"]  # connections each loop/worker accepted
                if ps["rounds"]:
                    res["summary"] = summarize(ps["rounds"])
                else:
                    res["note"] = ps["note"] or "not run"
                entry["results"][name] = res
            report["workloads"].append(entry)
            print(table(wl, entry["results"], asyncio_baseline if args.asyncio else
                        threads_baseline if args.threads else None), flush=True)
            if args.busy_poll:
                print(latency_ratios(entry["results"], "epoll"), flush=True)
            if args.threads:
                for name, res in entry["results"].items():
                    if res.get("spread"):
                        print(f"  {name}: connections per loop/worker "
                              f"{'/'.join(map(str, res['spread']))}", flush=True)
    finally:
        try:
            os.sched_setaffinity(0, old_affinity)
        except OSError:
            pass
    report["elapsed_s"] = round(time.monotonic() - t_start, 1)
    report["goals"] = evaluate_goals(report)
    report["ok"] = ok_all
    print(goals_text(report["goals"]))
    if not args.no_plots:
        stem = str(Path(args.plots) / json_path.stem) if args.plots else str(json_path.with_suffix(""))
        if args.plots:
            Path(args.plots).mkdir(parents=True, exist_ok=True)
        paths, note = make_plots(report, stem, KNOWN_SERVERS + tuple(BASELINE_SERVERS))
        report["plots"] = paths
        if note:
            notes.append(note)
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nresults: {json_path}" + "".join(f"\nplot: {p}" for p in report.get("plots", [])))
    for n in notes:
        print(f"note: {n}")
    print(f"elapsed {report['elapsed_s']} s; content verification "
          f"{'passed' if ok_all else 'FAILED'}")
    return 0 if ok_all else 1


def run_proxy_profile(argv, build_dir=None):
    """python -m zcn bench --proxy ...: bench/proxy_bench.py of the source
    tree, with the rest of the command line."""
    import importlib.util

    if build_dir is None and "--build-dir" in argv[:-1]:
        build_dir = argv[argv.index("--build-dir") + 1]
    build = find_build_dir(build_dir)
    root = _source_root(build) or Path.cwd()
    script = root / "bench" / "proxy_bench.py"
    if not script.exists():
        raise SystemExit(f"zcn bench --proxy: {script} not found (run from a source checkout)")
    spec = importlib.util.spec_from_file_location("proxy_bench", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if "--build-dir" not in argv:
        argv = ["--build-dir", str(build)] + argv
    return mod.main(argv)


def run_apps_profile(argv, build_dir=None):
    """python -m zcn bench --asyncio-apps ...: bench/asyncio_apps.py of the
    source tree, else the installed package's copy (HTTP with wrk, RESP with
    redis-benchmark), with the rest of the command line."""
    import importlib.util

    if build_dir is None and "--build-dir" in argv[:-1]:
        build_dir = argv[argv.index("--build-dir") + 1]
    root = _source_root(Path(build_dir) if build_dir else None)
    script = (root or Path.cwd()) / "bench" / "asyncio_apps.py"
    if not script.exists():
        script = PACKAGE_TOOLS / "asyncio_apps.py"  # an installed package
    if not script.exists():
        raise SystemExit("zcn bench --asyncio-apps: bench/asyncio_apps.py not found (run "
                         "from a source checkout, pass --build-dir of one, or install the "
                         "package with its benchmark tools)")
    spec = importlib.util.spec_from_file_location("asyncio_apps", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main([a for a in argv if a != "--asyncio-apps"])


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve-python"]:
        return serve_python(argv[1:])
    if "--proxy" in argv:
        argv.remove("--proxy")
        return run_proxy_profile(argv)
    if "--asyncio-apps" in argv or "--http" in argv or "--resp" in argv:
        return run_apps_profile(argv)  # --http, --resp: the C demo servers vs nginx, redis
    p = argparse.ArgumentParser(prog="python -m zcn bench", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
