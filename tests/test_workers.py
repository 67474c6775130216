"""zcn.run_workers and `python -m zcn echo --workers N`: Python handlers in
N pre-forked processes on one SO_REUSEPORT port; start-up failures, crash
restarts within a bound, shutdown on SIGINT/SIGTERM with every worker
reaped, and no worker outliving its parent.

Tests that run run_workers in this process (it forks this process) check
that no child of it is left afterwards; tests that signal a parent from
outside run tests/_workers_proc.py. Either way a fixture kills whatever
is left at the end, so no worker outlives its test."""
from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest

import zcn
from zcn.workers import RESTARTS_MAX, WORKERS_MAX
from _tcp import readline_within, recv_exact
from conftest import TESTS_DIR, doc_blocks, require_loop, run_python_block, zcn_subprocess_env

pytestmark = pytest.mark.timeout(30)

PROC = os.path.join(TESTS_DIR, "_workers_proc.py")


# --- helpers -----------------------------------------------------------------
def echo_serve(worker):
    """The serve the docs show: a Python-handler echo on the shared port."""
    with zcn.TcpServer(worker.host, worker.port, reuse_port=True) as server:
        server.on_data = lambda fd, data: server.send(fd, data)
        worker.serve_forever(server)


def echo_clients(port, n, tag=b"hello"):
    """n connections one after the other, each echoing a different payload."""
    for i in range(n):
        payload = b"%s %d %s" % (tag, i, b"x" * (i % 97))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(payload)
            assert recv_exact(sock, len(payload)) == payload


def gone(procs):
    """The psutil.Processes that no longer exist (reaped, or never were)."""
    return [p for p in procs if not p.is_running()]


def dead(proc):
    """Not running: gone, or a zombie waiting for whoever adopted it."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(predicate, timeout=10.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def in_process():
    """For tests that call run_workers here: every child it forks must be
    reaped by the time it returns (a zombie would still be listed)."""
    require_loop()
    me = psutil.Process()
    before = {p.pid for p in me.children()}
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    left = [p for p in me.children() if p.pid not in before]
    for p in left:
        p.kill()
    for p in left:
        p.wait(5)
    assert not left, f"run_workers left children: {left}"
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers, "handlers not restored"


class Parent:
    """tests/_workers_proc.py: a run_workers parent in a subprocess."""

    def __init__(self, **cfg):
        self.proc = subprocess.Popen([sys.executable, PROC, json.dumps(cfg)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=zcn_subprocess_env(), cwd=TESTS_DIR)
        self.seen = []  # psutil.Process of every worker seen, to kill at the end
        ready = self.read()["ready"]
        self.port, self.pids = ready["port"], ready["pids"]
        self.workers = [psutil.Process(pid) for pid in self.pids]
        self.seen += self.workers

    def read(self, timeout=10.0):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.proc.kill()
            pytest.fail(f"no message from the parent; stderr: {self.proc.stderr.read()}")
        return json.loads(line)

    def children(self):
        kids = psutil.Process(self.proc.pid).children()
        self.seen += kids
        return kids

    def finish(self, sig=signal.SIGTERM, timeout=15):
        """Signals the parent; (exit code, its messages, stderr)."""
        self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail("the parent did not exit after the signal")
        return self.proc.returncode, [json.loads(line) for line in out.splitlines()], err

    def kill_all(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        for p in self.seen:
            try:
                if p.is_running():
                    p.kill()
            except psutil.NoSuchProcess:
                pass


@pytest.fixture
def parent():
    require_loop()
    made = []

    def start(**cfg):
        p = Parent(**cfg)
        made.append(p)
        return p

    yield start
    for p in made:
        p.kill_all()


# --- serving -------------------------------------------------------------------
def test_two_python_workers_answer_200_connections_spread_over_both(in_process):
    reported = {}

    def on_ready(port, pids):
        assert len(pids) == 2 and os.getpid() not in pids
        reported["ready"] = (port, pids)
        echo_clients(port, 200)
        signal.raise_signal(signal.SIGTERM)  # as a supervisor would: stop them all

    result = zcn.run_workers(echo_serve, 2, on_ready=on_ready,
                             on_worker_stats=lambda i, s: reported.setdefault(i, s))
    port, pids = reported["ready"]
    assert result.ok and result.signal == signal.SIGTERM
    assert result.port == port and result.pids == pids and result.exit_codes == [0, 0]
    assert result.restarts == [0, 0] and result.killed == []
    per = [s["connections_accepted"] for s in result.stats]
    assert sum(per) == 200 and all(n > 0 for n in per), per  # the kernel spread them
    assert reported[0] == result.stats[0] and reported[1] == result.stats[1]
    assert sum(s["bytes_received"] for s in result.stats) == sum(
        s["bytes_sent"] for s in result.stats)


def test_workers_none_is_one_per_usable_cpu(in_process):
    result = zcn.run_workers(echo_serve, None, on_ready=lambda port, pids: (
        echo_clients(port, 1), signal.raise_signal(signal.SIGINT)))
    assert len(result.pids) == len(os.sched_getaffinity(0)) and result.ok


def test_the_worker_object_says_where_to_listen(in_process):
    seen = []

    def serve(worker):
        assert (worker.index, worker.workers, worker.host) in ((0, 2, "127.0.0.1"),
                                                              (1, 2, "127.0.0.1"))
        assert worker.port > 0 and not worker.stop_requested
        with zcn.TcpServer(worker.host, worker.port, reuse_port=True) as server:
            worker.serve_forever(server)
        assert worker.stop_requested
        worker.send_stats({"index": worker.index})  # the last one sent counts

    result = zcn.run_workers(serve, 2, host="localhost", on_ready=lambda port, pids: (
        seen.append(port), signal.raise_signal(signal.SIGINT)))
    assert result.ok and result.port == seen[0]
    assert result.stats == [{"index": 0}, {"index": 1}]


def test_a_fixed_port_is_held_by_the_parent_and_shared(in_process):
    with socket.socket() as probe:  # find a free port, then give it to run_workers
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def on_ready(got, pids):
        assert got == port
        echo_clients(port, 10)
        with socket.socket() as other:  # held: nobody else may bind it
            with pytest.raises(OSError, match="Address already in use"):
                other.bind(("127.0.0.1", port))
        signal.raise_signal(signal.SIGTERM)

    assert zcn.run_workers(echo_serve, 2, port=port, on_ready=on_ready).ok


# --- failures ------------------------------------------------------------------
def test_a_serve_that_raises_before_ready_fails_run_workers_with_its_message(in_process):
    def serve(worker):
        if worker.index == 1:
            raise ValueError("no configuration for worker 1")
        echo_serve(worker)

    with pytest.raises(zcn.WorkerError, match=r"zcn worker 1 \(pid \d+\) exited with status 1 "
                       r"before it was ready: ValueError: no configuration for worker 1") as info:
        zcn.run_workers(serve, 2, on_ready=lambda *a: pytest.fail("on_ready was called"))
    exc = info.value
    assert exc.index == 1 and exc.exit_code == 1 and "Traceback" in exc.traceback
    assert exc.result is not None and exc.result.exit_codes[0] == 0  # worker 0 stopped cleanly


def test_a_serve_that_returns_without_ready_is_a_failure(in_process):
    with pytest.raises(zcn.WorkerError, match=r"returned before it called worker\.ready\(\)"):
        zcn.run_workers(lambda worker: None, 1)


def test_a_port_taken_fails_before_any_fork(in_process):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="Address already in use"):
            zcn.run_workers(echo_serve, 2, port=taken.getsockname()[1])


def test_a_listener_without_reuse_port_gets_a_hint(in_process):
    def serve(worker):
        with zcn.TcpServer(worker.host, worker.port) as server:
            worker.serve_forever(server)

    with pytest.raises(zcn.WorkerError, match=r"reuse_port=True\?"):
        zcn.run_workers(serve, 1)


def crash_after_ready(worker):
    worker.ready()
    raise RuntimeError(f"crash of worker {worker.index}")


def test_a_worker_that_always_crashes_is_restarted_a_bounded_number_of_times(in_process):
    start = time.monotonic()
    with pytest.raises(zcn.WorkerError, match=r"RuntimeError: crash of worker \d") as info:
        zcn.run_workers(crash_after_ready, 2)
    elapsed = time.monotonic() - start
    exc = info.value
    assert "giving up" in str(exc) and f"restarted at most {RESTARTS_MAX} times" in str(exc)
    assert exc.result is not None and exc.result.restarts[exc.index] == RESTARTS_MAX
    assert all(n <= RESTARTS_MAX for n in exc.result.restarts)
    assert elapsed < 10, elapsed


def test_restart_false_stops_at_the_first_crash(in_process):
    with pytest.raises(zcn.WorkerError, match=r"exited with status 1 \(restart=False") as info:
        zcn.run_workers(crash_after_ready, 2, restart=False)
    assert info.value.result is not None and info.value.result.restarts == [0, 0]


def test_a_worker_deaf_to_sigterm_is_killed_after_shutdown_timeout(in_process):
    def serve(worker):
        if worker.index == 1:
            echo_serve(worker)
            return
        worker.on_stop(lambda: None)  # hears the signal, does nothing about it
        worker.ready()
        while True:
            time.sleep(0.05)

    start = time.monotonic()
    result = zcn.run_workers(serve, 2, shutdown_timeout=0.5,
                             on_ready=lambda *a: signal.raise_signal(signal.SIGTERM))
    elapsed = time.monotonic() - start
    assert result.killed == [0] and result.exit_codes == [-signal.SIGKILL, 0]
    assert not result.ok and 0.5 <= elapsed < 5, elapsed


def test_a_stop_signal_during_start_up_ends_a_worker_still_starting(in_process):
    def serve(worker):
        if worker.index == 1:
            os.kill(os.getppid(), signal.SIGTERM)  # the parent is asked to stop ...
            time.sleep(20)  # ... while this worker is still starting: SystemExit(0) here
            pytest.fail("not stopped")  # (would exit 1, never reach the test)
        echo_serve(worker)

    start = time.monotonic()
    result = zcn.run_workers(serve, 2, on_ready=lambda *a: pytest.fail("on_ready was called"))
    assert result.signal == signal.SIGTERM and result.exit_codes == [0, 0] and result.ok
    assert time.monotonic() - start < 5


def test_an_exception_from_on_ready_stops_the_workers_and_propagates(in_process):
    def on_ready(port, pids):
        raise KeyError("from on_ready")

    with pytest.raises(KeyError, match="from on_ready"):
        zcn.run_workers(echo_serve, 2, on_ready=on_ready)


def test_an_exception_from_on_worker_stats_comes_after_every_worker_stopped(in_process):
    def on_stats(index, stats):
        raise LookupError(f"stats of {index}")

    with pytest.raises(LookupError, match="stats of"):
        zcn.run_workers(echo_serve, 2, on_worker_stats=on_stats,
                        on_ready=lambda *a: signal.raise_signal(signal.SIGINT))


def test_off_the_main_thread_is_an_error():
    errors = []

    def call():
        try:
            zcn.run_workers(echo_serve, 1)
        except RuntimeError as exc:
            errors.append(str(exc))

    t = threading.Thread(target=call)
    t.start()
    t.join(10)
    assert errors and "main thread" in errors[0]


@pytest.mark.parametrize("kw, error, words", [
    (dict(serve=None), TypeError, "serve"),
    (dict(workers=0), ValueError, "workers"),
    (dict(workers=WORKERS_MAX + 1), ValueError, "workers"),
    (dict(workers="2"), TypeError, "workers"),
    (dict(workers=True), TypeError, "workers"),
    (dict(port=-1), ValueError, "port"),
    (dict(port=65536), ValueError, "port"),
    (dict(port="80"), TypeError, "port"),
    (dict(host=None), TypeError, "host"),
    (dict(shutdown_timeout=-1), ValueError, "shutdown_timeout"),
    (dict(shutdown_timeout=float("inf")), ValueError, "shutdown_timeout"),
    (dict(shutdown_timeout=float("nan")), ValueError, "shutdown_timeout"),
    (dict(shutdown_timeout="1"), TypeError, "shutdown_timeout"),
    (dict(on_ready=1), TypeError, "on_ready"),
    (dict(on_worker_stats="x"), TypeError, "on_worker_stats"),
    (dict(restart="yes"), TypeError, "restart"),
])
def test_bad_arguments(in_process, kw, error, words):
    kw.setdefault("serve", echo_serve)
    with pytest.raises(error, match=words):
        zcn.run_workers(**kw)


# --- signals from outside --------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_the_parent_stops_and_reaps_every_worker(parent, sig):
    p = parent(workers=2)
    echo_clients(p.port, 20)
    code, messages, err = p.finish(sig)
    assert code == 0, err
    result = messages[-1]["result"]
    assert result["signal"] == sig and result["exit_codes"] == [0, 0], result
    assert sorted(m["stats"]["index"] for m in messages if "stats" in m) == [0, 1]
    assert sum(s["connections_accepted"] for s in result["stats"]) == 20
    assert len(gone(p.workers)) == 2  # reaped by the parent: not even zombies


def test_a_worker_killed_is_restarted_and_service_goes_on(parent):
    p = parent(workers=2)
    old = p.workers[0]
    old.kill()
    # restarted: a new child; the old one reaped (not a zombie child of the parent)
    wait_until(lambda: {c.pid for c in p.children()} - set(p.pids) and
               old.pid not in {c.pid for c in p.children()}, what="the restart")
    new_pid = ({c.pid for c in p.children()} - set(p.pids)).pop()
    echo_clients(p.port, 50)
    code, messages, err = p.finish(signal.SIGTERM)
    assert code == 0, err
    result = messages[-1]["result"]
    assert result["restarts"] == [1, 0] and result["exit_codes"] == [0, 0]
    assert result["pids"] == [new_pid, p.pids[1]]
    assert all(dead(w) for w in p.seen)


def test_workers_die_with_their_parent(parent):
    p = parent(workers=2)
    p.proc.kill()  # SIGKILL: no handler runs; PR_SET_PDEATHSIG does
    p.proc.communicate()
    wait_until(lambda: all(dead(w) for w in p.workers), timeout=5, what="the workers to die")


def test_a_second_signal_kills_workers_at_once(parent):
    p = parent(workers=2, mode="ignore_term", shutdown_timeout=20)
    p.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)  # the parent waits for the deaf worker 0 ...
    assert p.proc.poll() is None
    start = time.monotonic()
    code, messages, err = p.finish(signal.SIGINT)  # ... until asked again
    assert time.monotonic() - start < 5
    result = messages[-1]["result"]
    assert code == 3 and result["killed"] == [0] and result["exit_codes"][0] == -9, result
    assert len(gone(p.workers)) == 2


# --- the command line -----------------------------------------------------------
def _cli(*args, own_group=False):
    return subprocess.Popen([sys.executable, "-m", "zcn", "echo", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=zcn_subprocess_env(), cwd=TESTS_DIR, start_new_session=own_group)




@pytest.mark.parametrize("handler, sig, group", [
    ("python", signal.SIGINT, False), ("python", signal.SIGTERM, False),
    ("python", signal.SIGINT, True), ("c", signal.SIGTERM, False)],
    ids=["python-SIGINT", "python-SIGTERM", "python-Ctrl-C", "c-SIGTERM"])
def test_cli_echo_workers_serves_and_reports_per_worker(handler, sig, group):
    # group: SIGINT to the whole process group, as Ctrl-C in a terminal sends
    # it: the workers stop on their own as the parent's SIGTERM comes
    require_loop()
    proc = _cli("--handler", handler, "--workers", "2", own_group=group)
    workers = []
    try:
        first = readline_within(proc)
        m = re.match(rf"^zcn echo listening on 127\.0\.0\.1:(\d+) \(handler={handler}\)$", first)
        assert m, first
        port = int(m.group(1))
        assert port > 0
        # printed with the first: already in the pipe's read buffer
        assert proc.stdout.readline().startswith("backend: ")
        line = proc.stdout.readline().rstrip("\n")
        m = re.match(r"^workers: 2 processes \(pids (\d+) (\d+)\)$", line)
        assert m, line
        workers = [psutil.Process(int(pid)) for pid in m.groups()]
        echo_clients(port, 40)
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for w in workers:
            if w.is_running():
                w.kill()
    assert proc.returncode == 0, err
    per = re.search(r"^zcn echo connections per worker: worker0=(\d+) worker1=(\d+)$", out, re.M)
    assert per, out
    assert int(per.group(1)) + int(per.group(2)) == 40
    assert re.search(r"^zcn echo stats: connections_accepted=40 ", out, re.M), out
    assert len(gone(workers)) == 2


@pytest.mark.parametrize("args, words", [
    (["--workers", "2", "--threads", "2"], "choose one"),
    (["--workers", "2", "--cpus", "0,1"], "choose one"),
    (["--workers", "0"], "--workers must be in 1.."),
    (["--workers", "2", "--buffer-size", "0"], "before it was ready: ValueError"),
])
def test_cli_bad_worker_options(args, words):
    require_loop()
    proc = subprocess.run([sys.executable, "-m", "zcn", "echo", "--port", "0", *args],
                          capture_output=True, text=True, env=zcn_subprocess_env(),
                          cwd=TESTS_DIR, timeout=20)
    assert proc.returncode == 1 and words in proc.stderr, proc.stderr


def test_cli_workers_on_a_port_in_use_fails_cleanly():
    require_loop()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = subprocess.run([sys.executable, "-m", "zcn", "echo", "--workers", "2", "--port",
                               str(taken.getsockname()[1])], capture_output=True, text=True,
                              env=zcn_subprocess_env(), cwd=TESTS_DIR, timeout=20)
    assert proc.returncode == 1 and "Address already in use" in proc.stderr, proc.stderr


# --- the docs ------------------------------------------------------------------
def test_the_processes_doc_example_runs():
    require_loop()
    blocks = [code for code in doc_blocks("THREADS.md") if "run_workers(" in code]
    assert blocks, "docs/THREADS.md has no run_workers example"
    for code in blocks:
        proc = run_python_block(code)
        assert proc.returncode == 0, proc.stderr
        m = re.search(r"accepted per worker: \[(\d+), (\d+)\]", proc.stdout)
        assert m and int(m.group(1)) + int(m.group(2)) == 20, proc.stdout
