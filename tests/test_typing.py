"""zcn's public API is typed: a py.typed marker, annotations on every public
class and function, and mypy (configured in pyproject.toml's [tool.mypy])
passing over zcn/, over the Python examples of docs/*.md and README.md and
over examples/*.py.

The mypy run checks the source tree's zcn/ (the examples import it from
there too), whichever zcn this test process imported; it skips, saying so,
where mypy is not installed (`pip install .[test]` brings it).
"""
from __future__ import annotations

import glob
import importlib.util
import inspect
import os
import subprocess
import sys

import pytest

from conftest import ROOT, markdown_blocks

import zcn

#: Seconds the mypy run may take (a cold cache: it takes a few here).
MYPY_TIMEOUT = 300

#: Blocks that are fragments, by (file, a line of the block): the names
#: they use from around them, declared so that the rest is type-checked.
FRAGMENT_PRELUDES = {
    ("docs/ERRORS.md", "backlog[fd].append(bytes(data))"): (
        "import zcn\n"
        "server: zcn.TcpServer\n"
        "fd: int\n"
        "data: memoryview\n"
        "backlog: dict[int, list[bytes]]\n"
    ),
}


#: Modules with ignore_errors in pyproject.toml's [tool.mypy] (the
#: benchmark driver, an internal tool): not held to the annotation check.
NOT_YET_TYPED = ("zcn.bench", "zcn._bench_proc", "zcn._bench_report", "zcn._bench_threads")

#: Markdown files whose examples are not type-checked, and why.
UNCHECKED_DOCS: "dict[str, str]" = {}


def _example_files():
    """The Markdown files whose ```python blocks are type-checked."""
    files = [os.path.relpath(f, ROOT)
             for f in sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
    for doc in UNCHECKED_DOCS:
        assert doc in files, f"UNCHECKED_DOCS names {doc}, which is gone"
    return [f for f in files if f not in UNCHECKED_DOCS] + ["README.md"]


def _write_examples(out_dir):
    """Writes each ```python block of the docs and the README to out_dir as
    its own module, its code on the lines it has in the Markdown file (so
    mypy's line numbers are the document's); returns how many."""
    count = 0
    used_preludes = set()
    for doc in _example_files():
        for line, code in markdown_blocks(os.path.join(ROOT, doc)):
            prelude = ""
            for (prelude_doc, marker), text in FRAGMENT_PRELUDES.items():
                if prelude_doc == doc and marker in code:
                    prelude = text
                    used_preludes.add((prelude_doc, marker))
            pad = line - 1 - prelude.count("\n")
            assert pad >= 0, f"{doc}:{line}: the prelude is longer than the text before it"
            name = f"{os.path.splitext(doc)[0].replace(os.sep, '_').replace('/', '_')}_L{line}"
            with open(os.path.join(out_dir, f"{name}.py"), "w") as f:
                f.write(prelude + "\n" * pad + code)
            count += 1
    unused = set(FRAGMENT_PRELUDES) - used_preludes
    assert not unused, f"FRAGMENT_PRELUDES names blocks that are gone: {sorted(unused)}"
    return count


@pytest.mark.timeout(MYPY_TIMEOUT + 60)
def test_mypy_passes_over_zcn_and_the_examples(tmp_path):
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install .[test] installs it)")
    examples = tmp_path / "doc_examples"
    examples.mkdir()
    n_examples = _write_examples(str(examples))
    assert n_examples >= 20, "found fewer ```python blocks than the docs have"
    n_modules = len(glob.glob(os.path.join(ROOT, "zcn", "*.py")))
    scripts = sorted(os.path.relpath(p, ROOT)
                     for p in glob.glob(os.path.join(ROOT, "examples", "*.py")))
    cmd = [sys.executable, "-m", "mypy", "--config-file", os.path.join(ROOT, "pyproject.toml"),
           "--cache-dir", str(tmp_path / "mypy_cache"), "zcn", *scripts, str(examples)]
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "MYPY_CACHE_DIR")}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=MYPY_TIMEOUT)
    output = (proc.stdout + proc.stderr).replace(str(examples) + os.sep, "<doc example> ")
    assert proc.returncode == 0, f"mypy found type errors:\n{output}"
    # Every file was checked (a path mypy skipped would not show up as an error).
    assert f"in {n_modules + len(scripts) + n_examples} source files" in proc.stdout, output


def test_py_typed_marker_ships_with_the_package():
    # The imported zcn: the installed package in CI (so the wheel has it),
    # the source tree in development.
    package_dir = os.path.dirname(os.path.abspath(zcn.__file__))
    assert os.path.isfile(os.path.join(package_dir, "py.typed")), package_dir
    assert os.path.isfile(os.path.join(ROOT, "zcn", "py.typed"))


def _public_callables():
    """(qualified name, function) of every public function, method and
    property getter/setter of the classes zcn exports and of zcn.proxy's
    entry points."""
    import zcn.proxy

    classes = [getattr(zcn, name) for name in zcn.__all__ if inspect.isclass(getattr(zcn, name))]
    classes = [cls for cls in classes if cls.__module__ not in NOT_YET_TYPED]
    classes += [getattr(zcn.errors, name) for name in zcn.errors.__all__
                if inspect.isclass(getattr(zcn.errors, name))]
    classes.append(zcn.proxy.Proxy)
    out = [(f"zcn.errors.{name}", getattr(zcn.errors, name))
           for name in ("error_from_code", "check")]
    out += [(f"zcn.proxy.{name}", getattr(zcn.proxy, name))
            for name in ("add_proxy_parser", "run_proxy")]
    for cls in classes:
        for klass in cls.__mro__:
            if not klass.__module__.startswith("zcn"):
                continue  # Exception, OSError, object ...: not ours to annotate
            for name, attr in vars(klass).items():
                if name.startswith("_") and name not in ("__init__", "__enter__", "__exit__"):
                    continue
                where = f"{klass.__module__}.{klass.__qualname__}.{name}"
                if isinstance(attr, property):
                    out += [(f"{where} ({part})", fn) for part, fn in
                            (("getter", attr.fget), ("setter", attr.fset)) if fn is not None]
                elif inspect.isfunction(attr):
                    out.append((where, attr))
    return sorted(set(out), key=lambda item: item[0])


def test_every_public_function_is_annotated():
    callables = _public_callables()
    assert len(callables) > 100
    missing = []
    for where, fn in callables:
        sig = inspect.signature(fn)
        params = list(sig.parameters.values())
        if params and params[0].name in ("self", "cls"):
            params = params[1:]
        if fn.__name__ == "__init__" and not params:
            continue  # dataclass-made or inherited shapes are checked by mypy
        bare = [p.name for p in params if p.annotation is inspect.Parameter.empty]
        if bare:
            missing.append(f"{where}: parameters {bare}")
        if sig.return_annotation is inspect.Signature.empty:
            missing.append(f"{where}: return type")
    assert not missing, "public callables without annotations:\n" + "\n".join(missing)


def test_errors_all_lists_every_error_class():
    # Spelled out for type checkers: it must not miss a class.
    names = sorted(n for n in dir(zcn.errors) if n.endswith("Error"))
    assert zcn.errors.__all__ == names + ["error_from_code", "check"]


def test_loop_stats_annotations_name_its_fields():
    from zcn.loop import _STATS_FIELDS

    assert list(zcn.LoopStats.__annotations__) == ["tcp"] + list(_STATS_FIELDS)
    assert zcn.LoopStats.__slots__ == ("tcp",) + tuple(_STATS_FIELDS)
