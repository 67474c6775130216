"""The ImportError of `import zcn` when the library cannot be loaded
(docs/BUILDING.md, troubleshooting): a source checkout's zcn/ shadowing the
installed package is named as such, with the fixes; other cases keep a
message that says what to do.

Each test copies the Python files of the zcn package under test (the
installed one in CI, the source tree in development) without any library
into a temporary directory and imports it in a subprocess with ZCN_LIBRARY
unset and PYTHONPATH empty."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import zcn

from conftest import TESTS_DIR

pytestmark = pytest.mark.timeout(120)

LIB = "libzero_copy_net.so"


def copy_package(parent: Path) -> Path:
    """parent/zcn/: the package's .py files, no library."""
    source = Path(zcn.__file__).resolve().parent
    target = parent / "zcn"
    target.mkdir(parents=True)
    for path in source.glob("*.py"):
        shutil.copy(path, target / path.name)
    assert not (target / LIB).exists()
    return target


def make_checkout(root: Path) -> Path:
    """root/: what a clone looks like to zcn (CMakeLists.txt, the header, zcn/)."""
    (root / "include").mkdir(parents=True)
    (root / "CMakeLists.txt").write_text("project(zero_copy_net C)\n")
    (root / "include" / "zero_copy_net.h").write_text("/* stand-in */\n")
    copy_package(root)
    return root


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("ZCN_LIBRARY", "PYTHONSAFEPATH", "PYTHONPATH")}
    env["PYTHONPATH"] = ""
    env.update(extra)
    return env


def import_error(cwd, **extra_env):
    """The ImportError text of `python -c "import zcn"` run in cwd."""
    proc = subprocess.run([sys.executable, "-c", "import zcn"], cwd=cwd,
                          env=clean_env(**extra_env), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0, "import zcn succeeded; it should not have found a library"
    assert "ImportError: zcn: cannot load libzero_copy_net" in proc.stderr, proc.stderr
    return proc.stderr[proc.stderr.index("ImportError: "):]


def installed_zcn(empty_dir):
    """Where the subprocess's Python would find an installed zcn once the
    current directory is out of the way (found, not imported), or None."""
    code = ("import importlib.util, os; s = importlib.util.find_spec('zcn'); "
            "print(os.path.dirname(s.origin) if s and s.origin else '')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=empty_dir, env=clean_env(),
                          capture_output=True, text=True, timeout=60, check=True)
    return proc.stdout.strip() or None


@pytest.fixture
def tmp(tmp_path):
    return tmp_path.resolve()


def test_checkout_shadowing_the_installed_package(tmp):
    root = make_checkout(tmp / "repo")
    installed = installed_zcn(TESTS_DIR)
    message = import_error(root)
    assert f"the zcn package imported from {root / 'zcn'} has no {LIB}" in message
    assert f"source tree of the checkout {root}" in message
    assert f"{root} is the current directory" in message
    # the fixes
    assert "run Python from another directory" in message
    assert "set ZCN_LIBRARY to a built" in message
    assert "cmake -S . -B build && cmake --build build" in message
    assert f"export ZCN_LIBRARY={root / 'build' / LIB}" in message
    if installed is not None:
        assert f"It shadows the installed zcn package in {installed}" in message
    else:
        assert "no installed zcn package was found elsewhere on sys.path" in message
        assert f"pip install {root}" in message
    # not the old advice, which the user has just followed
    assert "Install the package with" not in message


def test_checkout_on_pythonpath(tmp):
    root = make_checkout(tmp / "repo")
    (tmp / "elsewhere").mkdir()
    message = import_error(tmp / "elsewhere", PYTHONPATH=str(root))
    assert f"source tree of the checkout {root}" in message
    assert f"{root} is on sys.path (from PYTHONPATH" in message


def test_tree_builds_are_listed_not_loaded(tmp):
    """A build in the tree may be stale: the message names it, newest first,
    and nothing loads it unless ZCN_LIBRARY says so. Sanitizer builds (which
    abort or fail in a plain interpreter) come apart, after."""
    root = make_checkout(tmp / "repo")
    old, new = root / "build" / "old" / LIB, root / "build" / LIB
    asan = root / "build" / "asan" / LIB
    for path, content in ((old, b"old"), (new, b"new"), (asan, b"calls __asan_init")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not an ELF file: " + content)  # loading it would fail
    os.utime(old, (1_000_000_000, 1_000_000_000))
    message = import_error(root)
    assert ("built in this tree already, newest first (not loaded unless ZCN_LIBRARY "
            f"names it): {new}, {old}\n") in message
    assert f"sanitizer builds here need their runtime in LD_PRELOAD: {asan} (ASan)" in message
    assert "ELF" not in message


def test_plain_package_without_library(tmp):
    """No checkout around: a copied or broken package directory."""
    package = copy_package(tmp / "plain")
    installed = installed_zcn(TESTS_DIR)
    message = import_error(tmp / "plain")
    assert f"the zcn package imported from {package} has no {LIB}" in message
    assert "source tree" not in message
    assert "ZCN_LIBRARY" in message
    if installed is not None:
        assert f"It shadows the zcn package in {installed}" in message
        assert f"remove or rename {package}" in message
    else:
        assert "Reinstall zcn" in message


def test_library_present_but_unloadable(tmp):
    package = copy_package(tmp / "plain")
    (package / LIB).write_bytes(b"not an ELF file")
    message = import_error(tmp / "plain")
    assert f"Tried: {package / LIB} (" in message
    assert "Reinstall zcn" in message and "shadows" not in message


def test_zcn_library_pointing_nowhere(tmp):
    root = make_checkout(tmp / "repo")
    missing = tmp / "nowhere" / LIB
    message = import_error(root, ZCN_LIBRARY=str(missing))
    assert f"from ZCN_LIBRARY={missing}: {missing} (no such file)" in message
    assert "unset it" in message
