"""`python -m zcn bench` from an installed package, outside any checkout: a
fresh virtualenv, `pip install <source tree>` (the wheel carries the load
generator, the C servers, the asyncio echo and the application profile in
zcn/_bench), then the
benchmark run from another directory with nothing of the checkout on the
path and none of the bench extra (psutil, uvloop, matplotlib) installed.

Slow-ish (one wheel build, ~10-20 s, and a smoke run of a few seconds);
skipped with the reason when there is no C compiler, CMake or liburing.
Never a performance threshold: benchmarks are not tests.
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

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _clean_env(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "ZCN_LIBRARY", "ZCN_BENCH_BUILD", "VIRTUAL_ENV")}
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A venv with zcn installed from this source tree (not editable)."""
    if not (SRC / "pyproject.toml").exists() or not (SRC / "bench" / "loadgen.c").exists():
        pytest.skip("not run from a source tree (pyproject.toml, bench/ not next to tests/)")
    for tool in ("cmake", "cc"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found: pip cannot build the package's C code")
    if not any(Path(d, "liburing.h").exists() for d in ("/usr/include", "/usr/local/include")):
        pytest.skip("liburing.h not found (apt-get install liburing-dev)")
    tmp = tmp_path_factory.mktemp("installed")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", str(SRC)], cwd=tmp,
                         env=_clean_env(tmp), capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, f"pip install failed:\n{pip.stdout[-3000:]}{pip.stderr[-3000:]}"
    return py, tmp


def test_installed_package_carries_the_bench_tools(installed):
    py, tmp = installed
    out = subprocess.run(
        [str(py), "-c", "import zcn.bench as b, zcn; print(zcn.__file__); "
                        "print(b.find_build_dir(None))"],
        cwd=tmp, env=_clean_env(tmp), capture_output=True, text=True, timeout=60, check=True)
    pkg_file, build_dir = out.stdout.split()
    assert str(SRC) not in pkg_file  # the installed copy, not the checkout
    tools = Path(build_dir)
    assert tools == Path(pkg_file).parent / "_bench"
    for name in ("loadgen", "epoll_echo", "zcn_echo"):
        assert os.access(tools / name, os.X_OK), name
    for script in ("asyncio_echo.py", "asyncio_apps.py", "asyncio_http.py", "asyncio_resp.py"):
        assert (tools / script).exists(), script


def test_bench_runs_outside_the_checkout(installed):
    require_loop()
    py, tmp = installed
    work = tmp / "elsewhere"
    work.mkdir(exist_ok=True)
    out_json = work / "smoke.json"
    r = subprocess.run(
        [str(py), "-m", "zcn", "bench", "--smoke", "--servers", "zcn-c,epoll,zcn-py,asyncio",
         "--conns-many", "200", "--json", str(out_json), "--no-plots"],
        cwd=work, env=_clean_env(tmp), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"bench failed ({r.returncode}):\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
    report = json.loads(out_json.read_text())
    assert report["ok"] is True
    assert "_bench" in report["settings"]["build_dir"]
    for wl in report["workloads"]:
        for name in ("zcn-c", "epoll", "zcn-py", "asyncio"):
            res = wl["results"][name]
            assert res["rounds"], f"{name} did not run at {wl['key']}: {res.get('note')}"
            assert all(rnd["ok"] for rnd in res["rounds"])
        if wl["mode"] == "echo":
            # CPU figures come from /proc when psutil is missing
            assert wl["results"]["zcn-c"]["rounds"][0]["cpu_us_per_msg"] > 0


def test_demo_server_profile_runs_outside_the_checkout(installed):
    """python -m zcn bench --http from the installed package: it once looked
    for bench/asyncio_apps.py in a checkout only, and needed psutil."""
    require_loop()
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found (Debian packages nginx-light, wrk)")
    py, tmp = installed
    work = tmp / "elsewhere-http"
    work.mkdir(exist_ok=True)
    out_json = work / "http.json"
    r = subprocess.run([str(py), "-m", "zcn", "bench", "--http", "--smoke", "--json", str(out_json)],
                       cwd=work, env=_clean_env(tmp), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"bench failed ({r.returncode}):\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
    report = json.loads(out_json.read_text())
    for key, w in report["workloads"].items():
        for server in ("zcn-c", "nginx"):
            s = w["results"][server]["summary"]
            assert s["ok"] is True and s["cpu_us_per_req"]["median"] > 0, (key, server, s)


def test_default_results_go_to_the_user_data_dir(installed):
    py, tmp = installed
    out = subprocess.run(
        [str(py), "-c", "import zcn.bench as b; print(b.default_results_dir(None))"],
        cwd=tmp, env=_clean_env(tmp), capture_output=True, text=True, timeout=60, check=True)
    assert Path(out.stdout.strip()) == tmp / "data" / "zcn" / "bench-results"
