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

from conftest import require_io_uring

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


def _run_smoke(build, out, extra=()):
    env = dict(os.environ)
    # `python -m zcn.bench` needs no CLI registration; the same code runs
    # behind `python -m zcn bench`.
    cmd = [sys.executable, "-m", "zcn.bench", "--smoke", "--build-dir", str(build),
           "--json", str(out), "--no-plots", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.timeout(420)
def test_smoke_run_verifies_content_and_writes_json(bench_build, tmp_path):
    require_io_uring()
    out = tmp_path / "smoke.json"
    proc = _run_smoke(bench_build, out, ["--servers", "epoll,zcn-c", "--duration", "0.5"])
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    report = json.loads(out.read_text())
    assert report["ok"] is True
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
    require_io_uring()
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
    require_io_uring()
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
