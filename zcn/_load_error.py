"""The ImportError text for a libzero_copy_net that could not be loaded.

The common case: `pip install .` in a checkout, then `python` in that same
directory. Python puts the current directory first on sys.path, so the
source tree's zcn/ (which holds no built library) is imported instead of the
installed package. The message says so and gives the fixes, rather than
asking for the `pip install .` the user has just run.

Only _ffi imports this module, and only after loading failed. Nothing here
imports zcn (the package is half-imported) and nothing here may raise: a
failure to explain must not hide the failure to load.
"""
from __future__ import annotations

import glob
import importlib.machinery
import os
import sys

#: How many libraries built in the tree the message lists (plain, and again
#: sanitizer builds).
TREE_BUILDS_MAX = 3
#: How much of a library is read to tell a sanitizer build.
SCAN_BYTES_MAX = 64 << 20


def describe(package_dir, tried, env_name, env_value, lib_name):
    """The ImportError message. tried: (path, reason) for each path tried,
    reason "no such file" or the dlopen error."""
    try:
        return _describe(package_dir, tried, env_name, env_value, lib_name)
    except Exception as exc:  # pragma: no cover - never hide the load failure
        return (f"zcn: cannot load libzero_copy_net. Tried: {_tried_text(tried)} "
                f"(explaining why failed: {exc!r}). Set {env_name} to a built {lib_name}.")


def _describe(package_dir, tried, env_name, env_value, lib_name):
    if env_value:
        return (f"zcn: cannot load libzero_copy_net from {env_name}={env_value}: "
                f"{_tried_text(tried)}. Point {env_name} at a built {lib_name}, or unset "
                f"it to load the library inside the installed zcn package.")
    if any(reason != "no such file" for _, reason in tried):
        # The library is there but dlopen refused it: not a shadowing problem.
        return (f"zcn: cannot load libzero_copy_net. Tried: {_tried_text(tried)}. "
                f"Reinstall zcn (`pip install .` in a checkout builds the C library into "
                f"the package) or set {env_name} to a working {lib_name}.")
    head = (f"zcn: cannot load libzero_copy_net: the zcn package imported from "
            f"{package_dir} has no {lib_name}")
    if any(path != os.path.join(package_dir, lib_name) for path, _ in tried):
        head += f" (tried: {_tried_text(tried)})"  # importlib.resources looked elsewhere
    head += "."
    root = source_checkout_root(package_dir)
    installed = other_zcn_on_path(package_dir)
    how = _why_on_path(os.path.dirname(package_dir))
    if root is not None:
        return "\n".join([head] + _checkout_lines(root, installed, how, env_name, lib_name))
    if installed is not None:
        return (f"{head}\nIt shadows the zcn package in {installed}"
                + (f", because {how}" if how else "")
                + f".\nFixes: run Python from another directory, remove or rename "
                f"{package_dir}, or set {env_name} to a built {lib_name}.")
    return (f"{head}\nReinstall zcn (`pip install .` in a checkout builds the C library "
            f"into the package) or set {env_name} to a built {lib_name}.")


def _checkout_lines(root, installed, how, env_name, lib_name):
    """The explanation and the fixes when the imported zcn/ is a source tree."""
    text = f"That zcn/ is the source tree of the checkout {root}, not an installed package"
    if installed is not None:
        text += f". It shadows the installed zcn package in {installed}"
        text += f", because {how}." if how else "."
        run_elsewhere = ("run Python from another directory (e.g. `cd tests`), which "
                         "imports the installed package;")
    else:
        text += f"; it was imported because {how}" if how else ""
        text += ", and no installed zcn package was found elsewhere on sys.path."
        run_elsewhere = (f"`pip install {root}` (which builds the C library into the "
                         f"package), then run Python from another directory;")
    lines = [text, "Fixes:", f"  - {run_elsewhere}",
             f"  - or set {env_name} to a built {lib_name}:",
             f"      cd {root} && cmake -S . -B build && cmake --build build && "
             f"export {env_name}={os.path.join(root, 'build', lib_name)}"]
    built = tree_builds(root, lib_name)
    plain = [path for path, sanitizer in built if sanitizer is None][:TREE_BUILDS_MAX]
    instrumented = [f"{path} ({sanitizer})" for path, sanitizer in built
                    if sanitizer][:TREE_BUILDS_MAX]
    if plain:
        lines.append(f"    built in this tree already, newest first (not loaded unless "
                     f"{env_name} names it): {', '.join(plain)}")
    if instrumented:
        lines.append(f"    sanitizer builds here need their runtime in LD_PRELOAD: "
                     f"{', '.join(instrumented)}")
    return lines


def _tried_text(tried):
    return "; ".join(f"{path} ({reason})" for path, reason in tried)


def _real(path):
    return os.path.realpath(path or os.curdir)


def _cwd():
    try:
        return os.path.realpath(os.getcwd())
    except OSError:  # the working directory was deleted
        return None


def source_checkout_root(package_dir):
    """The checkout's root when package_dir is the zcn/ of a source checkout
    (CMakeLists.txt and include/zero_copy_net.h beside it), else None."""
    root = os.path.dirname(os.path.abspath(package_dir))
    if (os.path.isfile(os.path.join(root, "CMakeLists.txt"))
            and os.path.isfile(os.path.join(root, "include", "zero_copy_net.h"))):
        return root
    return None


def other_zcn_on_path(package_dir):
    """The directory of another zcn package on sys.path, found without
    importing it, or None. The current directory and the directory holding
    package_dir are left out: they are what shadows it."""
    left_out = {_real(os.path.dirname(os.path.abspath(package_dir))), _cwd()}
    paths = [p for p in sys.path if p and _real(p) not in left_out]
    spec = importlib.machinery.PathFinder.find_spec("zcn", paths)
    if spec is None or spec.submodule_search_locations is None:
        return None
    if not spec.origin or not os.path.isfile(spec.origin):
        return None  # a namespace package: a directory named zcn, not zcn
    found = os.path.dirname(spec.origin)
    if _real(found) == _real(package_dir):
        return None
    return found


def _why_on_path(parent):
    """Why `parent` (the directory holding the imported zcn/) is on sys.path,
    as a clause to follow "because", or None if no sys.path entry names it."""
    parent = _real(parent)
    for entry in sys.path:
        if _real(entry) != parent:
            continue
        if entry in ("", os.curdir) or _real(entry) == _cwd():
            return (f"{parent} is the current directory, which `python -c`, `python -m` "
                    f"and the interactive interpreter put first on sys.path")
        return (f"{entry} is on sys.path (from PYTHONPATH, a .pth file or the running "
                f"script's directory)")
    return None


def tree_builds(root, lib_name):
    """Libraries built in the checkout (build/ and build/*/), newest first:
    (path, "ASan" / "TSan" / None). Listed, never loaded: see docs/BUILDING.md."""
    paths = (glob.glob(os.path.join(root, "build", lib_name))
             + glob.glob(os.path.join(root, "build", "*", lib_name)))
    dated = []
    for path in paths:
        try:
            dated.append((os.path.getmtime(path), path))
        except OSError:  # removed meanwhile (a build running)
            continue
    dated.sort(reverse=True)
    return [(path, _sanitizer(path)) for _, path in dated]


def _sanitizer(path):
    """Which sanitizer instruments the library, if any: an ASan or TSan build
    aborts or fails to load in a plain interpreter, so it is not the one to
    suggest first."""
    try:
        with open(path, "rb") as f:
            data = f.read(SCAN_BYTES_MAX)
    except OSError:
        return None
    for marker, name in ((b"__asan_init", "ASan"), (b"__tsan_init", "TSan")):
        if marker in data:
            return name
    return None
