"""Smoke test of the echo benchmark harness (zcn.bench): it runs, the JSON
holds the figures, and every echoed byte was verified. Never a performance
threshold: benchmarks are not tests.

The C tools (loadgen, epoll_echo, zcn_echo) come from $ZCN_BENCH_BUILD if
set, else they are built here with CMake into a temporary directory (skipped,
with the reason, when there is no compiler, CMake or liburing).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_loop

SRC = Path(__file__).resolve().parent.parent
TOOLS = ("loadgen", "epoll_echo", "zcn_echo", "udp_bench")


def _has_tools(build):
    return all((Path(build) / "bench" / t).exists() or (Path(build) / t).exists() for t in TOOLS)


@pytest.fixture(scope="module")
def bench_build(tmp_path_factory):
    env_dir = os.environ.get("ZCN_BENCH_BUILD")
    if env_dir and _has_tools(env_dir):
        return Path(env_dir)
    if not (SRC / "bench" / "loadgen.c").exists():
        pytest.skip("bench/ sources not found next to tests/")
    for tool in ("cmake", "cc"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found: cannot build the benchmark's C tools")
    build = tmp_path_factory.mktemp("bench-build")
    configure = subprocess.run(
        ["cmake", "-S", str(SRC), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
         "-DZCN_BUILD_TESTS=OFF", "-DZCN_BUILD_EXAMPLES=OFF", "-DZCN_BUILD_BENCH=ON",
         "-DZCN_ASAN=OFF", "-DZCN_TSAN=OFF"],
        capture_output=True, text=True, timeout=120)
    if configure.returncode != 0:
        if "liburing (>= 2.1) not found" in configure.stderr:
            pytest.skip("liburing-dev is not installed: cannot build the benchmark's C tools")
        pytest.fail(f"cmake configure failed:\n{configure.stderr[-2000:]}")
    jobs = str(os.cpu_count() or 2)
    b = subprocess.run(["cmake", "--build", str(build), "-j", jobs, "--target", *TOOLS],
                       capture_output=True, text=True, timeout=300)
    assert b.returncode == 0, f"building the bench tools failed:\n{b.stdout[-2000:]}{b.stderr[-2000:]}"
    return build


def _run_smoke(build, out, extra=(), plots_with=None):
    """The smoke profile; plots only with plots_with, a directory put first
    on PYTHONPATH (a stand-in matplotlib: _standin_matplotlib)."""
    env = dict(os.environ)
    if plots_with is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(plots_with), env.get("PYTHONPATH")) if p)
    # `python -m zcn.bench` needs no CLI registration; the same code runs
    # behind `python -m zcn bench`.
    cmd = [sys.executable, "-m", "zcn.bench", "--smoke", "--build-dir", str(build),
           "--json", str(out), *([] if plots_with else ["--no-plots"]), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def _standin_matplotlib(where):
    """A stand-in matplotlib that draws nothing and writes a marker file for
    each figure: the plot path of `python -m zcn bench` runs without the
    real one (the test extras do not install it; bench/run.sh does)."""
    pkg = where / "matplotlib"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("def use(backend):\n    pass\n")
    (pkg / "pyplot.py").write_text(
        "class _Any:\n"
        "    def __getattr__(self, name):\n"
        "        return lambda *a, **k: None\n"
        "class _Fig(_Any):\n"
        "    def savefig(self, path):\n"
        "        open(path, 'wb').write(b'no image')\n"
        "def subplots(*a, **k):\n"
        "    return _Fig(), _Any()\n"
        "def close(fig):\n"
        "    pass\n")
    return where


@pytest.mark.timeout(120)
def test_every_bench_script_answers_help():
    # bench/asyncio_apps.py --help once crashed in argparse on a bare "%",
    # and bench/micro.py took "--help" for its rounds.
    scripts = sorted((SRC / "bench").glob("*.py"))
    if not scripts:
        pytest.skip("bench/ sources not found next to tests/")
    for script in scripts:
        proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                              text=True, timeout=30)
        if proc.returncode != 0 or not proc.stdout.strip():
            pytest.fail(f"{script.name} --help: exit {proc.returncode}\n{proc.stderr[-2000:]}")


@pytest.mark.timeout(420)
def test_smoke_run_verifies_content_and_writes_json(bench_build, tmp_path):
    """Also draws the plots (through a stand-in matplotlib): the plot step
    once named a constant its module no longer had, and bench/run.sh, which
    installs matplotlib, died with a NameError after every run."""
    require_loop()
    out = tmp_path / "smoke.json"
    fake = tmp_path / "standin"
    fake.mkdir()
    proc = _run_smoke(bench_build, out, ["--servers", "epoll,zcn-c", "--duration", "0.5"],
                      plots_with=_standin_matplotlib(fake))
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    report = json.loads(out.read_text())
    assert report["ok"] is True
    assert sorted(Path(p).name for p in report["plots"]) == ["smoke-cpu.png",
                                                             "smoke-throughput.png"]
    assert all(Path(p).read_bytes() == b"no image" for p in report["plots"])
    assert report["profile"] == "smoke"
    for key in ("cpu_model", "cpus", "kernel"):
        assert key in report["machine"]
    keys = {w["key"] for w in report["workloads"]}
    assert {"ping", "c200", "conn10k"} <= keys
    for w in report["workloads"]:
        for server in ("epoll", "zcn-c"):
            res = w["results"][server]
            assert res["rounds"], f"{server} did not run {w['key']}: {res.get('note')}"
            summary = res["summary"]
            assert summary["ok"] is True
            assert summary["verify_errors"] == 0
            assert summary["bytes_verified"] > 0
            for r in res["rounds"]:
                assert r["ok"] is True and r["conn_errors"] == 0, r
            if w["mode"] == "echo":
                for metric in ("msgs_per_s", "mb_per_s", "cpu_us_per_msg"):
                    assert summary[metric]["median"] > 0, (w["key"], server, metric)
                assert summary["rtt_p50_ns"]["median"] > 0
                assert summary["rtt_p999_ns"]["median"] >= summary["rtt_p50_ns"]["median"]
            else:
                assert summary["setup_per_s"]["median"] > 0
                assert "rss_per_conn" in summary
                assert all(r["echoed"] == w["conns"] for r in res["rounds"])
    assert {g["goal"] for g in report["goals"]}  # goals are reported, never enforced
    assert "content verification passed" in proc.stdout


@pytest.mark.timeout(60)
def test_loadgen_detects_a_server_that_corrupts_data(bench_build, tmp_path):
    """The verification is real: a server that echoes altered bytes fails."""
    import socket
    import threading

    loadgen = next(p for p in (bench_build / "bench" / "loadgen", bench_build / "loadgen")
                   if p.exists())
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    port = lsock.getsockname()[1]

    def bad_echo():
        try:
            conn, _ = lsock.accept()
            with conn:
                data = conn.recv(65536)
                if data:
                    conn.sendall(bytes([data[0] ^ 0xFF]) + data[1:])
                conn.recv(1)
        except OSError:
            pass  # the load generator resets the connection when it gives up

    t = threading.Thread(target=bad_echo, daemon=True)
    t.start()
    proc = subprocess.run([str(loadgen), "--port", str(port), "--conns", "1", "--duration", "0.3",
                           "--warmup", "0"], capture_output=True, text=True, timeout=30)
    lsock.close()
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode != 0
    assert result["ok"] is False
    assert result["verify_errors"] >= 1
    assert "differ" in result["first_error"]


@pytest.mark.timeout(180)
def test_udp_bench_runs_and_verifies_every_echo(bench_build):
    """bench/udp_bench.py: every server answers, every echoed byte checked
    (the load generator counts corrupt echoes in `bad`)."""
    require_loop()
    script = SRC / "bench" / "udp_bench.py"
    tool = next(p for p in (bench_build / "bench" / "udp_bench", bench_build / "udp_bench")
                if p.exists())
    servers = ["baseline", "zcn", "zcn-nogso", "zcn-multishot", "zcn-py"]
    proc = subprocess.run(
        [sys.executable, str(script), "--bin", str(tool), "--rounds", "1", "--seconds", "0.5",
         "--sizes", "64", "1400", "--servers", *servers],
        capture_output=True, text=True, timeout=150, cwd=Path(__file__).resolve().parent)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines()
            if line.startswith("| 64 ") or line.startswith("| 1400 ")]
    assert {(r[0].strip(), r[1].strip()) for r in rows} == \
        {(size, s) for size in ("64", "1400") for s in servers}
    for size, server, rate, _cpu, _rel, lost_sent, bad in (map(str.strip, r) for r in rows):
        assert float(rate.split()[0].replace(",", "")) > 0, (size, server)
        assert int(lost_sent.split("/")[1]) > 0, (size, server)
        assert bad == "0", (size, server)


@pytest.mark.timeout(180)
def test_proxy_profile_runs_from_the_zcn_command(bench_build, tmp_path):
    """python -m zcn bench --proxy hands its options (--build-dir among
    them) to bench/proxy_bench.py; python -m zcn proxy as the contender
    (the C example is not in this build)."""
    require_loop()
    out = tmp_path / "proxy.json"
    cmd = [sys.executable, "-m", "zcn", "bench", "--proxy", "--build-dir", str(bench_build),
           "--proxies", "zcn-py-c", "--workloads", "c200", "--rounds", "1", "--warmup", "0.1",
           "--duration", "0.3", "--json", str(out)]
    from conftest import TESTS_DIR, zcn_subprocess_env
    env = zcn_subprocess_env()
    env.pop("ZCN_BENCH_BUILD", None)  # the build dir must come from --build-dir
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150, cwd=TESTS_DIR,
                          env=env)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    report = json.loads(out.read_text())
    rounds = report["workloads"]["c200"]["zcn-py-c"]["rounds"]
    assert rounds and all(r["ok"] for r in rounds)
    assert rounds[0]["cpu_us_per_msg"] > 0


# --------------------------------------------------------------------------
# zcn's asyncio loop (zcn.aio) against uvloop and asyncio
# --------------------------------------------------------------------------

def _require_uvloop():
    try:
        import uvloop  # noqa: F401
    except ImportError:
        pytest.skip("uvloop is not installed (pip install .[bench]): the asyncio profiles "
                    "compare against it")


def _run_zcn(args, timeout):
    from conftest import TESTS_DIR, zcn_subprocess_env
    env = zcn_subprocess_env()
    env.pop("ZCN_BENCH_BUILD", None)
    return subprocess.run([sys.executable, "-m", "zcn", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=TESTS_DIR, env=env)


@pytest.mark.timeout(240)
def test_asyncio_profile_runs_every_loop_and_api(bench_build, tmp_path):
    """python -m zcn bench --asyncio: the six asyncio servers (zcn-aio,
    uvloop, asyncio; Protocol and streams) echo every byte back verified,
    with CPU per message, and the goals against uvloop are reported."""
    require_loop()
    _require_uvloop()
    out = tmp_path / "aio.json"
    proc = _run_zcn(["bench", "--asyncio", "--smoke", "--build-dir", str(bench_build),
                     "--duration", "0.3", "--warmup", "0.1", "--json", str(out), "--no-plots"],
                    200)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    report = json.loads(out.read_text())
    assert report["asyncio"] is True and report["ok"] is True
    servers = ("zcn-aio", "uvloop", "asyncio", "zcn-aio-streams", "uvloop-streams",
               "asyncio-streams")
    assert {w["key"] for w in report["workloads"]} == {"c200", "c50d16"}
    for w in report["workloads"]:
        for server in servers:
            res = w["results"][server]
            assert res["rounds"], f"{server} did not run {w['key']}: {res.get('note')}"
            assert res["config"]["api"] == ("streams" if "streams" in server else "protocol")
            s = res["summary"]
            assert s["ok"] is True and s["verify_errors"] == 0 and s["bytes_verified"] > 0
            assert s["cpu_us_per_msg"]["median"] > 0 and s["msgs_per_s"]["median"] > 0
    goals = {g["goal"] for g in report["goals"]}
    assert "zcn-aio CPU per message <= 0.85x uvloop at 200x1x64B" in goals
    assert "zcn-aio-streams CPU per message <= 0.90x uvloop-streams at 50x16x64B" in goals
    assert all(g["met"] is not None for g in report["goals"])  # reported, never enforced
    assert "x uvloop cpu" in proc.stdout or "x base cpu" in proc.stdout


@pytest.mark.timeout(240)
def test_threads_profile_runs_every_layout(bench_build, tmp_path):
    """python -m zcn bench --threads: the C echo on one loop and on two
    (one per CPU, and both on the server's CPU), the Python echo in one
    process and in two pre-fork workers; every byte verified, the
    connections of the two-loop and two-worker servers counted per loop or
    worker (both got some), the goals against one loop reported."""
    require_loop()
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("the threads profile needs two CPUs")
    out = tmp_path / "threads.json"
    proc = _run_zcn(["bench", "--threads", "--smoke", "--build-dir", str(bench_build),
                     "--duration", "0.3", "--warmup", "0.1", "--json", str(out), "--no-plots"],
                    200)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    report = json.loads(out.read_text())
    assert report["threads"] is True and report["ok"] is True
    assert {w["key"] for w in report["workloads"]} == {"c200", "c50d16"}
    for w in report["workloads"]:
        for server in ("zcn-c-1loop", "zcn-c-2loops", "zcn-c-2loops-1cpu", "zcn-py-1proc",
                       "zcn-py-2workers", "zcn-py-2workers-1cpu", "zcn-py-2threads",
                       "zcn-py-2threads-1cpu"):
            res = w["results"][server]
            assert res["rounds"], f"{server} did not run {w['key']}: {res.get('note')}"
            s = res["summary"]
            assert s["ok"] is True and s["verify_errors"] == 0 and s["bytes_verified"] > 0
            assert s["cpu_us_per_msg"]["median"] > 0, (server, w["key"], res["rounds"])
            spread = res.get("spread")
            if server.endswith("1proc"):
                continue
            parts = 1 if server == "zcn-c-1loop" else 2
            assert spread is not None and len(spread) == parts, (server, spread)
            # every connection of every round was accepted by some loop/worker
            assert sum(spread) >= w["conns"] and min(spread) > 0, (server, spread)
    goals = {g["goal"] for g in report["goals"]}
    assert "zcn-c-2loops-1cpu CPU per message <= 1.10x zcn-c-1loop at 200x1x64B" in goals
    assert "zcn-py-2workers CPU per message <= 1.10x zcn-py-1proc at 50x16x64B" in goals
    assert all(g["met"] is not None for g in report["goals"])
    assert "connections per loop/worker" in proc.stdout


@pytest.mark.timeout(240)
@pytest.mark.parametrize("profile, tools", [
    ("--http", (("nginx", "nginx-light"), ("wrk", "wrk"))),
    ("--resp", (("redis-server", "redis-server"), ("redis-benchmark", "redis-tools"))),
])
def test_demo_server_profiles_run_against_nginx_and_redis(bench_build, tmp_path, profile,
                                                          tools):
    """python -m zcn bench --http / --resp: the C demo servers against nginx
    and redis-server. Stopping nginx once raised AttributeError after the
    last round (the external servers lacked an attribute added for the
    workers' CPU), so no table or JSON came out."""
    require_loop()
    for tool, package in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found (Debian package {package})")
    out = tmp_path / "demo.json"
    proc = _run_zcn(["bench", profile, "--smoke", "--commands", "get",
                     "--build-dir", str(bench_build), "--json", str(out)], 200)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    report = json.loads(out.read_text())
    other = "nginx" if profile == "--http" else "redis"
    assert report["workloads"], report
    for key, w in report["workloads"].items():
        for server in ("zcn-c", other):
            res = w["results"][server]
            assert res["rounds"], f"{server} did not run {key}: {res.get('note')}"
            s = res["summary"]
            assert s["ok"] is True, res["rounds"]
            assert s["rps"]["median"] > 0 and s["cpu_us_per_req"]["median"] > 0
    assert f"x {other} cpu" in proc.stdout


@pytest.mark.timeout(240)
def test_asyncio_apps_profile_runs_wrk_and_redis_benchmark(bench_build, tmp_path):
    """python -m zcn bench --asyncio-apps: the HTTP server under wrk and the
    RESP server under redis-benchmark, on each loop, without errors."""
    require_loop()
    _require_uvloop()
    for tool, package in (("wrk", "wrk"), ("redis-benchmark", "redis-tools")):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found (Debian package {package})")
    out = tmp_path / "apps.json"
    # --build-dir leads the command to the source tree's bench/ (the
    # installed package has none)
    proc = _run_zcn(["bench", "--asyncio-apps", "--smoke", "--commands", "set,get",
                     "--build-dir", str(bench_build), "--json", str(out)], 200)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    report = json.loads(out.read_text())
    assert report["ok"] is True and not report["skipped"]
    assert set(report["workloads"]) == {"http-c100", "http-c50p16", "resp-c50:set",
                                        "resp-c50:get", "resp-c50p16:set", "resp-c50p16:get"}
    for key, w in report["workloads"].items():
        for loop in ("zcn-aio", "uvloop", "asyncio"):
            res = w["results"][loop]
            assert res["rounds"], f"{loop} did not run {key}: {res.get('note')}"
            s = res["summary"]
            assert s["ok"] is True, res["rounds"]
            assert s["rps"]["median"] > 0 and s["cpu_us_per_req"]["median"] > 0
    assert "x uvloop cpu" in proc.stdout


# The servers themselves, on each loop, with a plain socket client.

def _loops():
    loops = ["zcn", "asyncio"]
    try:
        import uvloop  # noqa: F401
        loops.append("uvloop")
    except ImportError:
        pass
    return loops


@pytest.fixture
def bench_server():
    """start(script, loop) -> port of bench/<script> running on that loop."""
    import re
    import signal

    from conftest import TESTS_DIR, zcn_subprocess_env
    procs = []

    def start(script, loop):
        if loop == "zcn":
            require_loop()
        proc = subprocess.Popen([sys.executable, str(SRC / "bench" / script), "--loop", loop,
                                 "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=TESTS_DIR, env=zcn_subprocess_env())
        procs.append(proc)
        line = proc.stdout.readline()
        m = re.search(r"listening on \S+:(\d+)", line)
        assert m, f"{script} did not start: {line!r} {proc.stderr.read() if proc.poll() else ''}"
        return int(m.group(1))

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def _read_until_eof(sock, limit=1 << 20):
    chunks = []
    while sum(map(len, chunks)) < limit:
        data = sock.recv(65536)
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def _read_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", _loops())
def test_asyncio_http_server_pipelines_and_honours_connection_close(bench_server, loop):
    import socket

    port = bench_server("asyncio_http.py", loop)
    ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        # three pipelined requests in one write, one with a body, the last
        # asking to close; then bytes the server must not answer
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                  b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                  b"GET /after HTTP/1.1\r\n\r\n")
        data = _read_until_eof(s)
    assert data == (ok + b"\r\nHello, world!") * 2 + ok + b"Connection: close\r\n\r\nHello, world!"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        # a request split across writes, then keep-alive goes on
        s.sendall(b"GET / HTTP/1.1\r\nHo")
        s.sendall(b"st: x\r\n\r")
        s.sendall(b"\n")
        assert _read_exactly(s, len(ok) + 15) == ok + b"\r\nHello, world!"
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")  # HTTP/1.0 without keep-alive: closed after
        assert _read_until_eof(s) == ok + b"Connection: close\r\n\r\nHello, world!"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"NONSENSE\r\n\r\n")
        assert _read_until_eof(s).startswith(b"HTTP/1.1 400 Bad Request\r\n")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", _loops())
def test_asyncio_resp_server_answers_pipelined_commands(bench_server, loop):
    import socket

    port = bench_server("asyncio_resp.py", loop)

    def cmd(*args):
        return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)

    request = (cmd(b"PING") + cmd(b"SET", b"k", b"v a l") + cmd(b"get", b"k")
               + cmd(b"INCR", b"n") + cmd(b"INCR", b"n") + cmd(b"INCR", b"k")
               + cmd(b"DEL", b"k", b"n", b"missing") + cmd(b"GET", b"k")
               + b"PING\r\n" + cmd(b"PING", b"hi") + cmd(b"NOPE", b"x"))
    expected = (b"+PONG\r\n" b"+OK\r\n" b"$5\r\nv a l\r\n" b":1\r\n" b":2\r\n"
                b"-ERR value is not an integer or out of range\r\n" b":2\r\n" b"$-1\r\n"
                b"+PONG\r\n" b"$2\r\nhi\r\n" b"-ERR unknown command 'NOPE'\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        assert _read_exactly(s, len(expected)) == expected
        # one command split at every byte boundary still parses
        one = cmd(b"SET", b"key", b"x" * 20)
        for i in range(len(one)):
            s.sendall(one[i:i + 1])
        assert _read_exactly(s, 5) == b"+OK\r\n"
        s.sendall(b"*1\r\n+PING\r\n")  # not a bulk string: an error, then closed
        assert _read_until_eof(s) == b"-ERR Protocol error\r\n"


@pytest.mark.timeout(200)
def test_busy_poll_profile_runs_sleeping_and_spinning_servers(bench_build, tmp_path):
    """python -m zcn bench --busy-poll: the 1-connection ping-pong against
    the epoll and zcn servers that sleep and those that spin (zcn-c-busy,
    epoll-spin), every byte verified, p50/p99/p99.9 and server CPU reported
    with ratios against epoll's, and the 0.6x goal reported."""
    require_loop()
    out = tmp_path / "busy.json"
    proc = _run_zcn(["bench", "--busy-poll", "--smoke", "--build-dir", str(bench_build),
                     "--duration", "0.3", "--warmup", "0.1", "--json", str(out), "--no-plots"],
                    150)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    report = json.loads(out.read_text())
    assert report["busy_poll"] is True and report["ok"] is True
    assert [w["key"] for w in report["workloads"]] == ["ping"]
    results = report["workloads"][0]["results"]
    for server in ("epoll", "zcn-c", "zcn-c-busy", "epoll-spin"):
        res = results[server]
        assert res["rounds"], f"{server} did not run: {res.get('note')}"
        s = res["summary"]
        assert s["ok"] is True and s["verify_errors"] == 0 and s["bytes_verified"] > 0
        for key in ("rtt_p50_ns", "rtt_p99_ns", "rtt_p999_ns", "server_cpu_util"):
            assert s[key]["median"] > 0, (server, key)
    assert results["zcn-c-busy"]["config"]["busy_poll_us"] > 0
    goals = {g["goal"]: g for g in report["goals"]}
    assert goals["zcn-c-busy 1-connection p50 RTT <= 0.6x epoll (blocking)"]["met"] is not None
    assert "latency against epoll" in proc.stdout
