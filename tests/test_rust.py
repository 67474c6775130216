"""The Rust crate in examples/rust against a freshly built static library:
`cargo test --offline` and `cargo run --offline --example echo`.

Skips (with the reason) when cargo, cmake or a C compiler is missing. The
crate has no dependencies, so nothing is fetched; its build output goes to a
temporary CARGO_TARGET_DIR, never into the source tree. The Rust tests print
SKIP and pass where io_uring is unavailable.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CRATE = ROOT / "examples" / "rust"

# The C sizes the Rust declarations must match (compared by the crate's
# version_and_layout_match_the_header test through ZCN_C_LAYOUT).
LAYOUT_C = r"""
#include "zero_copy_net.h"
#include <stdio.h>
int main(void)
{
    printf("ZCN_Config=%zu,ZCN_PoolStats=%zu,ZCN_ServerStats=%zu,ZCN_Event=%zu,ZCN_Error=%zu",
           sizeof(ZCN_Config), sizeof(ZCN_PoolStats), sizeof(ZCN_ServerStats),
           sizeof(ZCN_Event), sizeof(ZCN_Error));
    return 0;
}
"""


def _tool(name: str, *extra: Path) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for candidate in extra:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _run(cmd, *, timeout, env=None, cwd=None):
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(map(str, cmd))} timed out after {timeout} s\n"
                    f"{exc.stdout or ''}\n{exc.stderr or ''}")
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
                    f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def rust_env(tmp_path_factory):
    cargo = _tool("cargo", Path.home() / ".cargo" / "bin" / "cargo")
    if cargo is None:
        pytest.skip("cargo not found (install Rust to run the Rust integration tests)")
    cmake = _tool("cmake")
    cc = _tool("cc") or _tool("gcc")
    if cmake is None or cc is None:
        pytest.skip("cmake or a C compiler not found: cannot build libzero_copy_net.a")

    work = tmp_path_factory.mktemp("rust")
    build = work / "build"
    _run([cmake, "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
          "-DZCN_BUILD_TESTS=OFF", "-DZCN_BUILD_EXAMPLES=OFF", "-DZCN_BUILD_BENCH=OFF"],
         timeout=120)
    _run([cmake, "--build", str(build), "--target", "zero_copy_net_static", "-j2"],
         timeout=300)
    assert (build / "libzero_copy_net.a").is_file()

    layout_src = work / "layout.c"
    layout_src.write_text(LAYOUT_C)
    _run([cc, "-I", str(ROOT / "include"), "-o", str(work / "layout"), str(layout_src)],
         timeout=60)
    layout = _run([str(work / "layout")], timeout=10).stdout.strip()

    env = dict(os.environ)
    env.update({
        "ZCN_LIB_DIR": str(build),
        "ZCN_C_LAYOUT": layout,
        "CARGO_TARGET_DIR": str(work / "target"),
        "CARGO_NET_OFFLINE": "true",
        "CARGO_TERM_COLOR": "never",
    })
    env["PATH"] = os.pathsep.join([str(Path(cargo).parent), env.get("PATH", "")])
    return cargo, env


def test_cargo_test(rust_env):
    cargo, env = rust_env
    proc = _run([cargo, "test", "--offline", "--", "--test-threads=2"],
                cwd=CRATE, env=env, timeout=600)
    out = proc.stdout + proc.stderr
    assert "test result: ok" in out
    assert "FAILED" not in out


def test_cargo_run_echo_example(rust_env):
    cargo, env = rust_env
    proc = _run([cargo, "run", "--offline", "--example", "echo", "--", "zero copy from Rust"],
                cwd=CRATE, env=env, timeout=600)
    if "SKIP: io_uring unavailable" in proc.stderr:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    assert 'got "zero copy from Rust"' in proc.stdout
    assert "echo ok" in proc.stdout
