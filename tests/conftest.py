"""Shared pytest helpers. Kept generic: anything specific to one module lives
in that module's test file.

    from conftest import require_loop, require_io_uring

    def test_w():
        require_loop()          # skips, with the reason, when no loop can run
                                # (never where epoll works: loops, servers and
                                # UDP sockets run on either backend)

    def test_x():
        require_io_uring()      # skips when io_uring is unusable (zcn.Ring only)

    def test_y(uring_ring):     # a fresh zcn.Ring(64), skipped likewise
        ...

    def test_z(server):         # a server in its own process (tests/_server_proc.py)
        srv = server(handler="c")
        ...
"""
from __future__ import annotations

import functools
import os
import re
import subprocess
import sys

import pytest

#: The tests' own directory: a safe working directory for subprocesses
#: (`python -m` puts the working directory first on sys.path, and the source
#: tree's zcn/ holds no built library).
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def zcn_subprocess_env():
    """os.environ plus a PYTHONPATH that makes a subprocess import the same
    zcn package as this test process: the installed one in CI, the source
    tree (with ZCN_LIBRARY) in development. Run such subprocesses with
    cwd=TESTS_DIR, not the repository root."""
    import zcn

    env = dict(os.environ)
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(zcn.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    return env


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: one of the slowest parametrizations (still run by default and in "
        "CI; deselect with -m 'not slow' for a quick run)")


@functools.lru_cache(maxsize=None)
def io_uring_unavailable_reason():
    """None when a zcn.Ring can be created here, else why not (the error's
    message, e.g. a seccomp filter or kernel.io_uring_disabled)."""
    import zcn

    try:
        zcn.Ring(8).close()
    except zcn.IoUringUnavailableError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def require_io_uring():
    """Skips the calling test, with the reason, when io_uring is unavailable."""
    reason = io_uring_unavailable_reason()
    if reason is not None:
        pytest.skip(f"io_uring unavailable: {reason}")


@functools.lru_cache(maxsize=None)
def loop_unavailable_reason():
    """None when a zcn.Loop can be created here (on io_uring, or on epoll
    where io_uring is refused or ZCN_BACKEND=epoll), else why not."""
    import zcn

    try:
        zcn.Loop(buffer_pool_size=4, connections_max=4).close()
    except (zcn.ZcnError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def require_loop():
    """Skips the calling test, with the reason, when no zcn loop can run
    here. Loops, servers and UDP sockets run on either backend: tests of
    them call this, not require_io_uring (which is for zcn.Ring)."""
    reason = loop_unavailable_reason()
    if reason is not None:
        pytest.skip(f"no zcn loop here: {reason}")


@functools.lru_cache(maxsize=None)
def backend():
    """The backend this run's loops use: "io_uring" or "epoll"."""
    import zcn

    with zcn.Loop(buffer_pool_size=4, connections_max=4) as loop:
        return loop.backend


@pytest.fixture
def uring_ring():
    """A zcn.Ring(64), closed after the test; skips when io_uring is unavailable."""
    require_io_uring()
    import zcn

    with zcn.Ring(64) as ring:
        yield ring


#: The repository root (docs/ lives there).
ROOT = os.path.dirname(TESTS_DIR)


def markdown_blocks(path, lang="python"):
    """(line, code) of each ```lang code block of the Markdown file at
    ``path``, in order; line is the 1-based line of the code's first line."""
    with open(path) as f:
        text = f.read()
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1))
            for m in re.finditer(rf"```{lang}\n(.*?)```", text, re.S)]


def doc_blocks(doc, lang="python"):
    """The ```lang code blocks of docs/<doc>, in order."""
    return [code for _, code in markdown_blocks(os.path.join(ROOT, "docs", doc), lang)]


def run_python_block(code, timeout=30):
    """Runs a doc's Python block in a fresh interpreter that imports the
    same zcn as the tests; the CompletedProcess (text output)."""
    return subprocess.run([sys.executable, "-c", code], env=zcn_subprocess_env(),
                          capture_output=True, text=True, timeout=timeout, cwd=TESTS_DIR)


@pytest.fixture
def server():
    """server(**cfg) starts a server process (tests/_server_proc.py, where
    the config keys are described) and returns its ServerProc; all are
    stopped, and must exit cleanly, at the end of the test. Skips when
    no loop can run."""
    require_loop()
    from _server_proc import ServerProc

    procs = []

    def start(**cfg):
        s = ServerProc(**cfg)
        procs.append(s)
        return s

    yield start
    for s in procs:
        s.quit()
