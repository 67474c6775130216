"""zcn.run_workers: Python handlers on several cores, in pre-forked processes.

    import zcn

    def serve(worker: zcn.Worker) -> None:          # runs in each worker process
        with zcn.TcpServer(worker.host, worker.port, reuse_port=True) as server:
            server.on_data = lambda fd, data: server.send(fd, data)
            worker.serve_forever(server)            # ready, serve, stop on SIGTERM/SIGINT

    result = zcn.run_workers(serve, workers=4, port=8080)   # until SIGINT/SIGTERM

Python threads share one GIL, so Python handlers scale over processes, as
gunicorn's workers do: the parent forks N workers; each makes its own
server (its own interpreter, loop, buffers and SO_REUSEPORT listener) on
one port, and the kernel spreads new connections over their listeners.
Nothing is shared between workers.

The parent holds the port for the workers' whole life: it binds an
SO_REUSEPORT socket (never listening, so the kernel never gives it a
connection) before it forks, which for port 0 is how the port is chosen,
and which keeps anyone else from taking the port while a worker restarts.

Each worker has a pipe to the parent: it says when it listens
(worker.ready()), what failed (the exception, before the worker exits) and
its final counters (worker.send_stats(), at the end). Each worker also has a
pidfd, so the parent sleeps in poll() until a worker writes, exits or a
signal comes: no timers, no SIGCHLD handler, no waitpid(-1) that would reap
the caller's other children.

Shutdown: SIGINT or SIGTERM to the parent sends SIGTERM to every worker,
waits up to shutdown_timeout for them and SIGKILLs the rest (a second
signal SIGKILLs at once). Every worker is reaped before run_workers
returns or raises. A worker whose parent dies (even by SIGKILL) gets SIGKILL
from the kernel (PR_SET_PDEATHSIG): no orphans. docs/THREADS.md has the rest.

Why os.fork and not multiprocessing: the child needs the parent death
signal set first thing, the parent's descriptors closed, the signal
handlers replaced before any user code runs, and must end with os._exit so
that nothing of the parent's (atexit handlers, buffered output, a test
runner's state) runs twice. multiprocessing's fork context would add its
own finalizers and helper state around the same fork, and its spawn context
would need ``serve`` to be picklable (no closures) and re-import the program.
"""
from __future__ import annotations

import collections
import ctypes
import dataclasses
import errno
import json
import logging
import math
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
import warnings

from ._util import int_arg as _int_arg
from ._util import resolve_host as _resolve_host

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType
    from typing import Any, Callable, Deque, Dict, List, Mapping, Optional

    from .server import TcpServer

__all__ = ["run_workers", "Worker", "WorkersResult", "WorkerError", "describe_exit", "WORKERS_MAX",
           "RESTARTS_MAX", "RESTART_WINDOW"]

log = logging.getLogger(__name__)

#: The most workers one run_workers call forks.
WORKERS_MAX = 1024
#: A worker index that crashed more than RESTARTS_MAX times within the last
#: RESTART_WINDOW seconds is not restarted again: run_workers gives up.
RESTARTS_MAX = 5
RESTART_WINDOW = 60.0
#: The longest message a worker sends over its pipe (a traceback is cut to fit).
_MESSAGE_MAX = 64 * 1024
_TRACEBACK_MAX = 16 * 1024
#: Where pidfds are refused (seccomp, a kernel before 5.3): how often exits are polled.
_POLL_WITHOUT_PIDFD_S = 0.05
_PR_SET_PDEATHSIG = 1
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class WorkerError(RuntimeError):
    """A worker failed so that run_workers stopped them all: before every
    worker was ready (its exception, a port taken ...), or by crashing more
    often than the restart policy allows (or at all, with restart=False).

    ``index`` and ``pid`` name the worker, ``exit_code`` is how it ended
    (as subprocess reports it: the exit status, or -N for signal N; None if
    unknown), ``error`` the exception it sent ("OSError: [Errno 98] ...", or
    "" if it sent none), ``traceback`` the child's traceback text, and
    ``result`` the WorkersResult of the stopped workers.
    """

    def __init__(self, message: str, index: int, pid: int, exit_code: Optional[int],
                 error: str = "", traceback_text: str = "",
                 result: Optional[WorkersResult] = None) -> None:
        super().__init__(message)
        self.index = index
        self.pid = pid
        self.exit_code = exit_code
        self.error = error
        self.traceback = traceback_text
        self.result = result


@dataclasses.dataclass
class WorkersResult:
    """What run_workers returns once every worker has ended."""

    port: int                      #: the port the workers listened on
    pids: List[int]                #: the last process of each worker index
    exit_codes: List[Optional[int]]  #: how each ended: 0, a status, -signal; None unknown
    stats: List[Dict[str, int]]    #: each one's final send_stats() ({} if none came)
    restarts: List[int]            #: how often each index was restarted after a crash
    killed: List[int]              #: indices SIGKILLed after shutdown_timeout
    signal: Optional[int]          #: the signal that stopped them (None: they ended)

    @property
    def ok(self) -> bool:
        """True when every worker exited with status 0 and none had to be
        killed."""
        return not self.killed and all(code == 0 for code in self.exit_codes)


def describe_exit(code: Optional[int]) -> str:
    """'exited with status 1', 'was killed by SIGKILL' ... for an exit code
    as WorkersResult.exit_codes holds it."""
    if code is None:
        return "ended (exit status unknown: it was reaped elsewhere)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with status {code}"


# --- the worker's side ---------------------------------------------------------
class Worker:
    """What ``serve(worker)`` gets in each worker process.

    The simplest use is ``worker.serve_forever(server)`` with a server made
    on ``worker.host``/``worker.port`` with ``reuse_port=True``. Serve code
    with a loop of its own calls ``worker.on_stop(fn)`` (``fn`` runs in the
    SIGTERM/SIGINT handler: make it signal-safe, as TcpServer.stop is),
    ``worker.ready()`` once it listens, and ``worker.send_stats(...)`` at
    the end. A stop signal before ready() while nothing is registered with
    on_stop (the worker is still starting) raises SystemExit(0) in serve;
    after ready() it only sets stop_requested and calls the callbacks.
    """

    def __init__(self, index: int, workers: int, host: str, port: int, pipe_fd: int) -> None:
        self._index = index
        self._workers = workers
        self._host = host
        self._port = port
        self._pipe_fd = pipe_fd
        self._stop_callbacks: List[Callable[[], object]] = []
        self._stop_requested = False
        self._ready = False
        self._in_serve = False  # only serve itself is ended by SystemExit

    @property
    def index(self) -> int:
        """This worker's number, 0..workers-1 (a restarted worker keeps it)."""
        return self._index

    @property
    def workers(self) -> int:
        """How many workers run_workers runs."""
        return self._workers

    @property
    def host(self) -> str:
        """The numeric address to listen on (the same for every worker)."""
        return self._host

    @property
    def port(self) -> int:
        """The port to listen on, with reuse_port=True (never 0: the
        parent's pick when run_workers was given port 0)."""
        return self._port

    @property
    def stop_requested(self) -> bool:
        """True once SIGTERM or SIGINT reached this worker."""
        return self._stop_requested

    def on_stop(self, callback: Callable[[], object]) -> None:
        """Calls ``callback()`` from the SIGTERM/SIGINT handler (at once if a
        stop signal came already). It must be safe there: TcpServer.stop is."""
        if not callable(callback):
            raise TypeError(f"on_stop takes a callable, not {type(callback).__name__}")
        self._stop_callbacks.append(callback)
        if self._stop_requested:
            callback()

    def ready(self) -> None:
        """Tells the parent this worker listens (once; later calls do nothing).
        run_workers calls on_ready when every worker has said so."""
        if not self._ready:
            self._ready = True
            self._send({"ready": True})

    def send_stats(self, stats: Mapping[str, int]) -> None:
        """Sends counters to the parent (its on_worker_stats and
        WorkersResult.stats): a mapping of names to ints, e.g.
        dataclasses.asdict(server.stats()). The last one sent counts."""
        clean = {str(k): _int_arg(v, f"stats[{k!r}]") for k, v in stats.items()}
        self._send({"stats": clean})

    def serve_forever(self, server: TcpServer) -> None:
        """Makes SIGTERM/SIGINT stop ``server``, reports ready, runs
        ``server.serve_forever()`` until the stop, then sends the server's
        final stats to the parent. An exception from the server propagates
        (the worker then exits with status 1, and is restarted)."""
        # stays registered: a later signal (Ctrl-C reaches the whole process
        # group, then the parent's SIGTERM comes) must not interrupt the
        # stats, and stop() on a stopped or closed server does nothing
        self.on_stop(server.stop)
        self.ready()
        server.serve_forever()
        self.send_stats(dataclasses.asdict(server.stats()))

    # --- internals -------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        self._stop_requested = True
        if not self._stop_callbacks and not self._ready and self._in_serve:
            raise SystemExit(0)  # still starting: nothing to stop but serve itself
        for callback in list(self._stop_callbacks):
            callback()

    def _send(self, message: Mapping[str, Any]) -> None:
        data = json.dumps(message).encode() + b"\n"
        if len(data) > _MESSAGE_MAX:
            raise ValueError(f"zcn worker message of {len(data)} bytes: the most is "
                             f"{_MESSAGE_MAX}")
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._pipe_fd, view):]
        except BrokenPipeError:
            pass  # the parent is gone; PR_SET_PDEATHSIG ends this process


def _set_parent_death_signal(parent_pid: int) -> None:
    """SIGKILL this process when the parent dies; exits at once if it
    already has (it died between fork and here, and would never signal)."""
    libc = ctypes.CDLL(None, use_errno=True)
    # prctl is variadic and reads unsigned longs: pass them as such
    if libc.prctl(ctypes.c_int(_PR_SET_PDEATHSIG), ctypes.c_ulong(signal.SIGKILL),
                  ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent_pid:
        os._exit(1)


def _child_main(serve: Callable[[Worker], object], worker: Worker, parent_pid: int,
                parent_fds: List[int]) -> None:
    """The worker process, from fork to os._exit: never returns."""
    status = 1
    try:
        _set_parent_death_signal(parent_pid)
        for fd in parent_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        signal.set_wakeup_fd(-1)  # the parent's (e.g. an asyncio loop's) is not ours
        for sig in _STOP_SIGNALS:
            signal.signal(sig, worker._on_signal)
        # blocked by the parent around fork: a stop signal sent meanwhile
        # is delivered now, to the handler above
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        try:
            worker._in_serve = True
            try:
                serve(worker)
            finally:
                worker._in_serve = False  # a signal now must not cut the last message
            if worker._ready or worker.stop_requested:
                status = 0
            else:
                worker._send({"error": "serve(worker) returned before it called "
                                       "worker.ready() (or worker.serve_forever(server))"})
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                status = exc.code or 0
            else:
                worker._send({"error": f"SystemExit: {exc.code}"})
        except BaseException as exc:
            log.error("zcn worker %d: serve raised", worker.index, exc_info=True)
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            worker._send({"error": "".join(traceback.format_exception_only(type(exc), exc))
                          .strip()[:_TRACEBACK_MAX], "traceback": text[-_TRACEBACK_MAX:]})
    except BaseException as exc:  # status stays 1; nothing may unwind into the parent's code
        try:
            worker._send({"error": f"zcn worker set-up failed: {type(exc).__name__}: {exc}"})
        except BaseException:
            pass
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except BaseException:
                pass
        os._exit(status)


# --- the parent's side ---------------------------------------------------------
class _Child:
    """One worker process as the parent tracks it."""

    def __init__(self, index: int, pid: int, pipe_fd: int, pidfd: Optional[int]) -> None:
        self.index = index
        self.pid = pid
        self.pipe_fd = pipe_fd
        self.pidfd = pidfd
        self.buffer = b""
        self.ready = False
        self.error = ""
        self.traceback = ""
        self.exit_code: Optional[int] = None
        self.reaped = False
        self.pipe_open = True


class _Supervisor:
    def __init__(self, serve: Callable[[Worker], object], workers: int, host: str, port: int,
                 on_worker_stats: Optional[Callable[[int, Dict[str, int]], object]],
                 restart: bool, reserved: socket.socket) -> None:
        self.serve = serve
        self.workers = workers
        self.host = host
        self.port = port
        self.on_worker_stats = on_worker_stats
        self.restart = restart
        self.reserved = reserved
        self.children: Dict[int, _Child] = {}   # by index: the live or last process
        self.stats: List[Dict[str, int]] = [{} for _ in range(workers)]
        self.restarts = [0] * workers
        self.crash_times: List[Deque[float]] = [collections.deque() for _ in range(workers)]
        self.killed: List[int] = []
        self.poller = select.poll()
        self.fd_owner: Dict[int, _Child] = {}
        self.use_pidfd = hasattr(os, "pidfd_open")
        self.signal: Optional[int] = None
        self.signals_seen = 0
        self.callback_error: Optional[BaseException] = None
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.poller.register(self.wake_r, select.POLLIN)

    # --- signals ---------------------------------------------------------------
    def on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.signal is None:
            self.signal = signum
        self.signals_seen += 1
        try:
            os.write(self.wake_w, b"s")
        except BlockingIOError:
            pass  # a wake-up is pending already

    # --- processes -------------------------------------------------------------
    def spawn(self, index: int) -> _Child:
        read_fd, write_fd = os.pipe()
        parent_fds = [read_fd, self.wake_r, self.wake_w, self.reserved.fileno()]
        for child in self.children.values():
            if child.pipe_open:
                parent_fds.append(child.pipe_fd)
            if child.pidfd is not None:
                parent_fds.append(child.pidfd)
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()  # else the child would print the parent's buffered text again
        parent_pid = os.getpid()
        # Blocked until the child has its own handlers: a SIGTERM meant for
        # it must not run the parent's handler in the child.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                worker = Worker(index, self.workers, self.host, self.port, write_fd)
                _child_main(self.serve, worker, parent_pid, parent_fds)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        pidfd = None
        if self.use_pidfd:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError as exc:
                if exc.errno not in (errno.ENOSYS, errno.EPERM):
                    raise
                self.use_pidfd = False
        child = _Child(index, pid, read_fd, pidfd)
        self.children[index] = child
        self.poller.register(read_fd, select.POLLIN)
        self.fd_owner[read_fd] = child
        if pidfd is not None:
            self.poller.register(pidfd, select.POLLIN)
            self.fd_owner[pidfd] = child
        log.debug("zcn worker %d started: pid %d", index, pid)
        return child

    def live(self) -> List[_Child]:
        return [c for c in self.children.values() if not c.reaped]

    def wait(self, timeout: Optional[float]) -> List[_Child]:
        """Sleeps until a worker writes or exits, a signal comes or timeout
        (seconds; None: no limit) passes; handles what came; returns the
        workers that were reaped."""
        if not self.use_pidfd:
            timeout = _POLL_WITHOUT_PIDFD_S if timeout is None else min(
                timeout, _POLL_WITHOUT_PIDFD_S)
        events = self.poller.poll(None if timeout is None else max(0, math.ceil(timeout * 1000)))
        for fd, _ in events:
            if fd == self.wake_r:
                try:
                    while os.read(self.wake_r, 64):
                        pass
                except BlockingIOError:
                    pass
            elif fd in self.fd_owner and fd == self.fd_owner[fd].pipe_fd:
                self.read_pipe(self.fd_owner[fd])
        reaped = [child for child in self.live() if self.try_reap(child)]
        error, self.callback_error = self.callback_error, None
        if error is not None:
            raise error
        return reaped

    def read_pipe(self, child: _Child) -> None:
        while child.pipe_open:
            try:
                data = os.read(child.pipe_fd, 65536)
            except BlockingIOError:
                return
            if not data:
                self.close_fd(child, child.pipe_fd)
                child.pipe_open = False
                break
            child.buffer += data
            while b"\n" in child.buffer:
                line, child.buffer = child.buffer.split(b"\n", 1)
                self.handle_message(child, line)
            if len(child.buffer) > _MESSAGE_MAX:
                child.buffer = b""  # not our protocol: drop it, the exit still counts
                log.warning("zcn worker %d (pid %d) wrote an over-long message",
                            child.index, child.pid)

    def handle_message(self, child: _Child, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            log.warning("zcn worker %d (pid %d) wrote a malformed message", child.index,
                        child.pid)
            return
        if not isinstance(message, dict):
            return
        if message.get("ready"):
            child.ready = True
        if "error" in message:
            child.error = str(message["error"])
            child.traceback = str(message.get("traceback", ""))
        stats = message.get("stats")
        if isinstance(stats, dict):
            self.stats[child.index] = stats
            if self.on_worker_stats is not None:
                try:
                    self.on_worker_stats(child.index, dict(stats))
                except Exception as exc:  # raised by wait(), after its bookkeeping
                    self.callback_error = self.callback_error or exc

    def try_reap(self, child: _Child) -> bool:
        try:
            pid, status = os.waitpid(child.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = child.pid, None  # reaped by someone else (a SIGCHLD handler)
        if pid == 0:
            return False
        child.exit_code = None if status is None else os.waitstatus_to_exitcode(status)
        child.reaped = True
        if child.pidfd is not None:
            self.close_fd(child, child.pidfd)
            child.pidfd = None
        if child.pipe_open:
            self.read_pipe(child)  # its last words (error, stats) are in the pipe
        if child.pipe_open:  # a process it forked still holds the pipe: stop listening
            self.close_fd(child, child.pipe_fd)
            child.pipe_open = False
        log.debug("zcn worker %d (pid %d) %s", child.index, child.pid,
                  describe_exit(child.exit_code))
        return True

    def close_fd(self, child: _Child, fd: int) -> None:
        self.poller.unregister(fd)
        self.fd_owner.pop(fd, None)
        os.close(fd)

    def kill(self, child: _Child, sig: int) -> None:
        if not child.reaped:  # unreaped: the pid cannot belong to anyone else
            try:
                os.kill(child.pid, sig)
            except ProcessLookupError:
                pass

    # --- the phases ------------------------------------------------------------
    def failure(self, child: _Child, what: str) -> WorkerError:
        how = describe_exit(child.exit_code)
        message = f"zcn worker {child.index} (pid {child.pid}) {how}{what}"
        if child.error:
            message += f": {child.error}"
            if "[Errno 98]" in child.error or "Address already in use" in child.error:
                message += " (does serve listen with reuse_port=True?)"
        return WorkerError(message, child.index, child.pid, child.exit_code, child.error,
                           child.traceback)

    def start(self) -> bool:
        """Forks every worker and waits until each is ready: True, or False
        if a stop signal came first. WorkerError if one failed."""
        for index in range(self.workers):
            self.spawn(index)
        while not all(c.ready for c in self.children.values()):
            for child in self.wait(None):
                if self.signal is not None:
                    return False
                if not child.ready:
                    raise self.failure(child, " before it was ready")
                if child.exit_code != 0:
                    self.restart_or_give_up(child)  # it crashed while others were starting
            if self.signal is not None:
                return False
        return True

    def supervise(self) -> None:
        """Until a stop signal, or every worker ended by itself (status 0):
        restarts crashed workers within the policy, else WorkerError."""
        while self.signal is None and self.live():
            for child in self.wait(None):
                if self.signal is not None:
                    return
                if child.exit_code == 0 and child.ready:
                    log.info("zcn worker %d (pid %d) ended by itself", child.index, child.pid)
                    continue
                self.restart_or_give_up(child)

    def restart_or_give_up(self, child: _Child) -> None:
        if not self.restart:
            raise self.failure(child, " (restart=False: stopping the others)")
        now = time.monotonic()
        crashes = self.crash_times[child.index]
        while crashes and now - crashes[0] > RESTART_WINDOW:
            crashes.popleft()
        if len(crashes) >= RESTARTS_MAX:
            raise self.failure(child, f", {len(crashes) + 1} crashes within "
                                      f"{RESTART_WINDOW:g} s (restarted at most "
                                      f"{RESTARTS_MAX} times): giving up")
        crashes.append(now)
        self.restarts[child.index] += 1
        new = self.spawn(child.index)
        log.warning("zcn worker %d (pid %d) %s%s; restarted as pid %d", child.index,
                    child.pid, describe_exit(child.exit_code),
                    f" ({child.error})" if child.error else "", new.pid)

    def stop_all(self, timeout: float) -> None:
        """SIGTERM to every live worker, SIGKILL to those left after timeout
        (or at a further stop signal), and every one reaped. Also reads the
        stats they send meanwhile."""
        signals_before = self.signals_seen
        for child in self.live():
            self.kill(child, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        error: Optional[BaseException] = None
        while self.live():
            left = deadline - time.monotonic()
            if left <= 0 or self.signals_seen > signals_before:
                break  # out of time, or asked again: no more waiting
            try:
                self.wait(left)
            except Exception as exc:  # on_worker_stats raised: finish the stop first
                error = error or exc
        for child in self.live():
            self.killed.append(child.index)
            log.warning("zcn worker %d (pid %d) still running after %g s: SIGKILL",
                        child.index, child.pid, timeout)
            self.kill(child, signal.SIGKILL)
        while self.live():
            try:
                self.wait(None)
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error

    def result(self) -> WorkersResult:
        children = [self.children[i] for i in range(self.workers) if i in self.children]
        return WorkersResult(
            port=self.port, pids=[c.pid for c in children],
            exit_codes=[c.exit_code for c in children], stats=self.stats,
            restarts=self.restarts, killed=sorted(set(self.killed)), signal=self.signal)

    def close(self) -> None:
        for child in self.children.values():
            for fd in (child.pidfd, child.pipe_fd if child.pipe_open else None):
                if fd is not None:
                    self.close_fd(child, fd)
            child.pidfd = None
            child.pipe_open = False
        os.close(self.wake_r)
        os.close(self.wake_w)


# --- the entry point -----------------------------------------------------------
def _check_args(serve: object, workers: Optional[int], host: object, port: int,
                on_ready: object, on_worker_stats: object, shutdown_timeout: float,
                restart: object) -> int:
    if not callable(serve):
        raise TypeError(f"serve must be a callable taking a zcn.Worker, not "
                        f"{type(serve).__name__}")
    for name, fn in (("on_ready", on_ready), ("on_worker_stats", on_worker_stats)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be callable or None, not {type(fn).__name__}")
    if not isinstance(host, str):
        raise TypeError(f"host must be a str, not {type(host).__name__}")
    _int_arg(port, "port", 0, 65535)
    if not isinstance(restart, bool):
        raise TypeError(f"restart must be a bool, not {type(restart).__name__}")
    if isinstance(shutdown_timeout, bool) or not isinstance(shutdown_timeout, (int, float)):
        raise TypeError(f"shutdown_timeout must be a number of seconds, not "
                        f"{type(shutdown_timeout).__name__}")
    if not 0 <= shutdown_timeout < math.inf:
        raise ValueError(f"shutdown_timeout must be >= 0 seconds and finite, got "
                         f"{shutdown_timeout}")
    if workers is None:
        return min(len(os.sched_getaffinity(0)), WORKERS_MAX)
    return _int_arg(workers, "workers", 1, WORKERS_MAX)


def _reserve_port(host: str, port: int) -> socket.socket:
    """A bound, never listening SO_REUSEPORT socket on host:port (port 0:
    a free one): the workers' listeners join its port."""
    literal = _resolve_host(host)  # as TcpServer resolves it: IPv4 first
    sock = socket.socket(socket.AF_INET6 if ":" in literal else socket.AF_INET,
                         socket.SOCK_STREAM)
    try:
        # SO_REUSEPORT only: any listener with it (of this user) may join;
        # with SO_REUSEADDR too, any SO_REUSEADDR server could bind the port
        # while no worker listens (both flags set, this socket not
        # listening). The cost: TIME_WAIT connections of an earlier server
        # on this port without SO_REUSEPORT make the bind fail (EADDRINUSE)
        # until they end (those of earlier workers do not).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((literal, port))
    except BaseException:
        sock.close()
        raise
    return sock


def run_workers(serve: Callable[[Worker], object], workers: Optional[int] = None, *,
                host: str = "127.0.0.1", port: int = 0,
                on_ready: Optional[Callable[[int, List[int]], object]] = None,
                on_worker_stats: Optional[Callable[[int, Dict[str, int]], object]] = None,
                shutdown_timeout: float = 10.0, restart: bool = True) -> WorkersResult:
    """Runs ``serve(worker)`` in ``workers`` forked processes (None: one per
    CPU this process may use) until SIGINT or SIGTERM, then stops them all;
    returns a WorkersResult (check ``.ok``).

    ``serve`` listens on ``worker.host``/``worker.port`` with
    ``reuse_port=True``, typically ending in ``worker.serve_forever(server)``
    (see Worker). ``port`` 0 picks a free port, shared by every worker.
    ``on_ready(port, pids)`` is called in the parent once every worker is
    ready; ``on_worker_stats(index, stats)`` whenever a worker sends its
    final counters. ``shutdown_timeout`` is how long (seconds) the workers
    get to exit after SIGTERM before SIGKILL. With ``restart`` a worker that
    crashes (exits non-zero or by a signal) is forked again, at most
    RESTARTS_MAX times per index within RESTART_WINDOW seconds; beyond that,
    or at any crash with restart=False, or when a worker fails before every
    worker was ready, every worker is stopped and WorkerError raised with
    the worker's exception. A worker that returns from serve with status 0
    is not restarted; when all have, run_workers returns.

    Must run on the main thread (it installs SIGINT/SIGTERM handlers, which
    it restores on return, and the workers' parent-death signal follows the
    thread that forked them): RuntimeError elsewhere. Fork with other threads
    running copies none of them, and any lock one held stays locked in the
    workers: that warns (RuntimeWarning). Make servers, rings and loops in
    ``serve``, not before.
    """
    n = _check_args(serve, workers, host, port, on_ready, on_worker_stats, shutdown_timeout,
                    restart)
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("zcn.run_workers must run on the main thread: it installs "
                           "SIGINT/SIGTERM handlers, and the workers' parent-death signal "
                           "fires when the thread that forked them ends")
    others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
    if others:
        warnings.warn(f"zcn.run_workers forks with other threads running ({', '.join(others)}):"
                      f" the workers have none of them, and locks they held stay locked",
                      RuntimeWarning, stacklevel=2)
    reserved = _reserve_port(host, port)
    previous: Dict[int, Any] = {}
    supervisor: Optional[_Supervisor] = None
    try:
        bound_host, bound_port = reserved.getsockname()[:2]
        supervisor = _Supervisor(serve, n, bound_host, bound_port, on_worker_stats, restart,
                                 reserved)
        for sig in _STOP_SIGNALS:
            previous[sig] = signal.signal(sig, supervisor.on_signal)
        if signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:
            # SIG_IGN makes the kernel reap children itself: no exit codes
            previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        try:
            if supervisor.start():
                if on_ready is not None:
                    on_ready(bound_port, [supervisor.children[i].pid for i in range(n)])
                supervisor.supervise()
        except WorkerError as exc:
            supervisor.stop_all(shutdown_timeout)
            exc.result = supervisor.result()
            raise
        except BaseException:
            supervisor.stop_all(shutdown_timeout)
            raise
        supervisor.stop_all(shutdown_timeout)
        return supervisor.result()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if supervisor is not None:
            supervisor.close()
        reserved.close()
