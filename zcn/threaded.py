"""TcpServer(..., threads=N): one loop per thread, in C.

    import zcn
    with zcn.TcpServer("0.0.0.0", 8080, handler="c", threads=2) as server:
        server.serve_forever()          # until server.stop() (signal-safe)

N threads, each with its own io_uring, buffer pool and SO_REUSEPORT
listener on the same port (a ZCN_Group, docs/THREADS.md): the kernel
spreads new connections over the loops and each stays on the loop that
accepted it. Every message is answered by the C handler on its loop's
thread: no Python and no GIL on the per-message path.

With handler="python", ``zcn.TcpServer(..., threads=N)`` is a
ThreadedPythonServer instead: N TcpServers, each made and served by its own
thread, calling the same Python callbacks; per-connection calls inside a
callback go to that connection's loop. The threads run Python in parallel
only on a free-threaded CPython (3.13t with the GIL off); under the GIL
they take turns, and Python handlers on several cores run in processes:
zcn.run_workers.

The threads start with the server (they create their loops, pinned to
``cpus`` when given) and run from start() or serve_forever() until stop().
A threaded server runs once: after stop() it only reports its counters
until server_close(). The per-connection calls of TcpServer (send, close,
run_once, ...) belong to each loop's thread and are not offered here.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
import warnings

from . import _ffi
from ._util import bool_arg as _bool_arg
from ._util import idle_timeout_ms as _idle_timeout_ms
from ._util import int_arg as _int_arg
from ._util import loop_limits as _loop_limits
from ._util import backend_arg as _backend_arg
from ._util import read_backend as _read_backend
from ._util import resolve_host as _resolve_host
from .errors import (ClosedError, NotStartedError, WrongThreadError, ZcnTimeoutError,
                     error_from_code)
from .server import ServerStats, TcpServer, _STATS_FIELDS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, List, Optional, Sequence, Set

    from ._types import DataCallback, ErrorHandler, FdCallback, Handler
    from .loop import LoopStats

__all__ = ["ThreadedTcpServer", "ThreadedPythonServer", "gil_enabled"]

INT32_MAX = 0x7FFFFFFF
_WAIT_STEP_MS = 100  # serve_forever's wait between chances to run Python signal handlers
_ERR_TIMEOUT = ZcnTimeoutError.code
_ERR_NOT_STARTED = NotStartedError.code


def _not_here(name: str) -> ClosedError:
    return ClosedError(f"zcn.TcpServer(threads=N).{name}(): connections live on the loops' "
                       f"own threads; with threads=N the C handler answers them")


def _refused_callback(name: str) -> Any:
    """A callback property of the C handler's threaded server: always None;
    setting one is an error (nothing would call it)."""
    def get(self: ThreadedTcpServer) -> None:
        return None

    def set_(self: ThreadedTcpServer, fn: Any) -> None:
        self._no_callback(name, fn)
    return property(get, set_, doc=f"{name}: always None (the C handler answers)")


def _shared_callback(name: str) -> Any:
    """A callback property of ThreadedPythonServer: the same on every loop."""
    def get(self: ThreadedPythonServer) -> Any:
        return getattr(self._first(), name)

    def set_(self: ThreadedPythonServer, fn: Any) -> None:
        for srv in self._live_servers():
            setattr(srv, name, fn)
    return property(get, set_, doc=f"{name}, as TcpServer's; set on every loop's server")


class ThreadedTcpServer(TcpServer):
    """What ``zcn.TcpServer(..., threads=N)`` returns (see the module docstring)."""

    _kind = "zcn.TcpServer(threads=N)"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 threads: Optional[int] = None, cpus: Optional[Sequence[int]] = None,
                 steer: bool = False, handler: str = "c",
                 io_uring_entries: int = 256, buffer_pool_size: int = 1024,
                 buffer_size: int = 16384, backlog: int = 1024, connections_max: int = 4096,
                 send_queue_max_bytes: int = 1 << 20, idle_timeout: Optional[float] = None,
                 tcp_nodelay: bool = True, reuse_port: bool = True,
                 buffer_reserve: Optional[int] = None, send_timeout: Optional[float] = 60.0,
                 conn_buffers_hard_max: Optional[int] = None, loop: Any = None,
                 backend: Optional[str] = None, busy_poll_us: int = 0,
                 **callbacks: Any) -> None:
        given = sorted(name for name, fn in callbacks.items() if fn is not None)
        if given:
            raise ValueError(f"handler='c' with threads=N runs the C handler on every loop; "
                             f"{', '.join(given)} cannot be set (Python handlers on N "
                             f"threads: handler='python'; on several cores: zcn.run_workers)")
        if handler != "c":
            raise ValueError("zcn.threaded.ThreadedTcpServer is the C handler's; "
                             "zcn.TcpServer(handler='python', threads=N) makes a "
                             "ThreadedPythonServer")
        if loop is not None:
            raise ValueError("threads=N makes a loop per thread: loop must be None")
        self._lock = threading.RLock()
        if threads is None:
            threads = 1
        n = _int_arg(threads, "threads", 1, _ffi.GROUP_THREADS_MAX)
        cpu_list: List[int] = []
        if cpus is not None:
            if isinstance(cpus, (str, bytes)) or not hasattr(cpus, "__iter__"):
                raise TypeError(f"cpus must be a sequence of CPU numbers, not "
                                f"{type(cpus).__name__}")
            cpu_list = [_int_arg(c, "cpus[]", 0, INT32_MAX) for c in cpus]
            if len(cpu_list) != n:
                raise ValueError(f"cpus has {len(cpu_list)} entries for threads={n}: give one "
                                 f"CPU per thread")
        steer = _bool_arg(steer, "steer")
        if steer and not cpu_list:
            raise ValueError("steer=True needs cpus (connections go to the loop pinned to the "
                             "CPU that received them)")
        if not _bool_arg(reuse_port, "reuse_port"):
            raise ValueError("threads=N listens once per loop on one port: reuse_port is "
                             "always on")
        port = _int_arg(port, "port", 0, 65535)
        backlog = _int_arg(backlog, "backlog", 1, INT32_MAX)
        idle_ms = _idle_timeout_ms(idle_timeout)
        limits = _loop_limits(io_uring_entries, buffer_pool_size, buffer_size, connections_max,
                              send_queue_max_bytes, buffer_reserve, send_timeout,
                              conn_buffers_hard_max)
        literal = _resolve_host(host)
        self._cpus_arg = (ctypes.c_int * n)(*cpu_list) if cpu_list else None
        config = _ffi.GroupConfig(
            threads=n, flags=_ffi.GROUP_STEER_CPU if steer else 0,
            cpus=ctypes.cast(self._cpus_arg, ctypes.POINTER(ctypes.c_int))
            if self._cpus_arg is not None else None,
            loop=_ffi.LoopConfig(backend=_backend_arg(backend),
                                 busy_poll_us=_int_arg(busy_poll_us, "busy_poll_us", 0,
                                                       _ffi.LOOP_BUSY_POLL_US_MAX),
                                 **limits),
            listen=_ffi.Config(address=literal.encode(), port=port, backlog=backlog,
                               idle_timeout_ms=idle_ms,
                               tcp_nodelay=1 if _bool_arg(tcp_nodelay, "tcp_nodelay") else -1))
        handle = _ffi.create(_ffi.zcn_group_create, ctypes.byref(config))
        self._handle = handle
        self._threads = n
        self._host = literal
        self._port = _ffi.zcn_group_port(handle)
        self._started = False
        self._stopped = False
        self._c_handler = True
        self._backend = _read_backend(_ffi.zcn_loop_backend, _ffi.zcn_group_loop(handle, 0))
        _ffi.zcn_group_use_echo_handler(handle)

    # --- what it is ------------------------------------------------------------
    @property
    def threads(self) -> int:
        """The number of loops, one thread each."""
        return self._threads

    @property
    def cpus(self) -> List[Optional[int]]:
        """The CPU each loop's thread is pinned to (None: not pinned)."""
        handle = self._live()
        cpus = [_ffi.zcn_group_cpu(handle, i) for i in range(self._threads)]
        return [c if c >= 0 else None for c in cpus]

    @property
    def backend(self) -> str:
        """What the loops run on ("io_uring" or "epoll"; the same for all)."""
        self._live()
        return self._backend[0]

    @property
    def backend_reason(self) -> str:
        """Why that backend (as TcpServer.backend_reason)."""
        self._live()
        return self._backend[1]

    @property
    def handler(self) -> Handler:
        return "c"

    @property
    def loop(self) -> None:
        return None

    @property
    def connections(self) -> Any:
        raise _not_here("connections")

    # --- callbacks: none, the C handler answers on every loop ----------------------
    def _no_callback(self, name: str, fn: Any) -> None:
        if fn is not None:
            raise ValueError(f"zcn.TcpServer(handler='c', threads=N).{name}: the C handler "
                             f"answers on every loop's thread, with no Python callbacks; "
                             f"for Python handlers on N threads pass handler='python'")

    on_accept = _refused_callback("on_accept")
    on_data = _refused_callback("on_data")
    on_close = _refused_callback("on_close")
    on_drain = _refused_callback("on_drain")
    on_eof = _refused_callback("on_eof")


    def fileno(self) -> int:
        raise _not_here("fileno")

    # --- running ---------------------------------------------------------------
    def start(self) -> None:
        """Lets the loops go (each accepts from now on) and returns; they run
        on their own threads until stop(). ClosedError after a stop."""
        with self._lock:
            handle = self._live()
            if self._stopped:
                raise ClosedError("a threaded server runs once: it was stopped")
            if not self._started:
                self._started = True
                _ffi.zcn_group_start(handle)

    def serve_forever(self, poll_interval: Optional[float] = None) -> None:
        """start(), then waits until stop() (from a signal handler or another
        thread) and every loop has ended; a loop's error is raised here.
        ``poll_interval`` is accepted for TcpServer's signature; signals are
        handled within 0.1 s either way."""
        self.start()
        try:
            self.wait()  # in steps: Python runs its signal handlers in between
        finally:
            self._stopped = True

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Waits until every loop has ended after a stop() (their
        connections closed, the counters final); True when they have, False
        if ``timeout`` seconds passed first. A loop's error is raised."""
        handle = self._live()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = _WAIT_STEP_MS
            if deadline is not None:
                step = max(0, min(step, int((deadline - time.monotonic()) * 1000)))
            rc = _ffi.zcn_group_wait(handle, step)
            if rc == 0:
                return True
            if rc != _ERR_TIMEOUT and rc != _ERR_NOT_STARTED:
                raise error_from_code(rc, "zcn_group_wait")
            if rc == _ERR_NOT_STARTED:
                raise ClosedError("wait(): the server was never started")
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def run_once(self, timeout: Optional[float] = None) -> int:
        raise _not_here("run_once")

    def stop(self) -> None:
        """Stops every loop (each closes its connections, on its own
        thread). Any thread, signal handlers included; idempotent."""
        handle = self._handle
        if handle is not None:
            self._stopped = True
            _ffi.zcn_group_stop(handle)

    # --- counters --------------------------------------------------------------
    def _raw_stats(self) -> Any:
        handle = self._live()
        total = _ffi.GroupStats()
        per = (_ffi.LoopStats * self._threads)()
        _ffi.zcn_group_stats(handle, ctypes.byref(total), per, self._threads)
        return total, per

    def stats(self) -> ServerStats:
        """The sum over the loops of their TCP counters."""
        total, _ = self._raw_stats()
        return ServerStats(*(getattr(total.total.tcp, name) for name in _STATS_FIELDS))

    def loop_stats(self) -> List[LoopStats]:
        """Each loop's counters (zcn.LoopStats), in loop order."""
        from .loop import LoopStats
        _, per = self._raw_stats()
        return [LoopStats(raw) for raw in per]

    # --- what belongs to the loops' threads ---------------------------------------
    def send(self, fd: int, data: Any) -> None:
        raise _not_here("send")

    def close(self, fd: int) -> None:
        raise _not_here("close")

    def shutdown(self, fd: int) -> None:
        raise _not_here("shutdown")

    def abort(self, fd: int) -> None:
        raise _not_here("abort")

    def connection_info(self, fd: int) -> Any:
        raise _not_here("connection_info")

    def queued_bytes(self, fd: int) -> int:
        raise _not_here("queued_bytes")

    # --- closing ---------------------------------------------------------------
    def server_close(self) -> None:
        """Stops the loops (if they run), waits for their threads and frees
        the server. Idempotent."""
        with self._lock:
            handle, self._handle = self._handle, None
        if handle is not None:
            _ffi.zcn_group_destroy(handle)

    def __exit__(self, *exc: object) -> None:
        self.server_close()

    def _finalize(self) -> None:
        self.server_close()

    def __repr__(self) -> str:
        if self._handle is None:
            return "<zcn.TcpServer(threads=N) closed>"
        return f"<zcn.TcpServer {self._host}:{self._port} handler=c threads={self._threads}>"


def gil_enabled() -> bool:
    """True when Python threads take turns on one GIL (every CPython but a
    free-threaded 3.13t build running with the GIL off)."""
    check = getattr(sys, "_is_gil_enabled", None)
    return True if check is None else bool(check())


class ThreadedPythonServer(TcpServer):
    """What ``zcn.TcpServer(..., handler="python", threads=N)`` returns: N
    TcpServers (each its own loop, buffer pool and SO_REUSEPORT listener on
    one port), each served by its own thread, all calling the same Python
    callbacks. A callback runs on the thread of the loop that holds its
    connection, and ``server.send(fd, ...)`` (close, shutdown, abort,
    connection_info, queued_bytes) inside it goes to that loop.

    The threads run the handlers in parallel only on a free-threaded
    CPython (3.13t with the GIL off); under the GIL they take turns, so a
    RuntimeWarning says to use zcn.run_workers for several cores.
    """

    _kind = "zcn.TcpServer(handler='python', threads=N)"
    # at class level too, so that closing works when __init__ failed early
    _servers: List[TcpServer] = []
    _workers: List[threading.Thread] = []

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 threads: Optional[int] = None, cpus: Optional[Sequence[int]] = None,
                 steer: bool = False, handler: Handler = "python", reuse_port: bool = True,
                 loop: Any = None, **kwargs: Any) -> None:
        if loop is not None:
            raise ValueError("threads=N makes a loop per thread: loop must be None")
        if steer:
            raise ValueError("steer=True steers connections between the C handler's loops "
                             "(handler='c')")
        if not _bool_arg(reuse_port, "reuse_port"):
            raise ValueError("threads=N listens once per loop on one port: reuse_port is "
                             "always on")
        n = _int_arg(1 if threads is None else threads, "threads", 1, _ffi.GROUP_THREADS_MAX)
        cpu_list: List[Optional[int]] = [None] * n
        if cpus is not None:
            if isinstance(cpus, (str, bytes)) or not hasattr(cpus, "__iter__"):
                raise TypeError(f"cpus must be a sequence of CPU numbers, not "
                                f"{type(cpus).__name__}")
            cpu_list = [_int_arg(c, "cpus[]", 0, INT32_MAX) for c in cpus]
            if len(cpu_list) != n:
                raise ValueError(f"cpus has {len(cpu_list)} entries for threads={n}: give one "
                                 f"CPU per thread")
            allowed = os.sched_getaffinity(0)
            for c in cpu_list:
                if c not in allowed:
                    raise ValueError(f"cpus: CPU {c} is not one this process may run on "
                                     f"({sorted(allowed)})")
        if gil_enabled():
            warnings.warn("zcn.TcpServer(handler='python', threads=N): under the GIL the "
                          "threads run one Python handler at a time (one core in all); "
                          "zcn.run_workers runs Python handlers on several cores",
                          RuntimeWarning, stacklevel=2)
        self._lock = threading.RLock()
        self._threads = n
        self._cpus = cpu_list
        self._local = threading.local()
        self._errors: List[BaseException] = []
        self._started = False
        self._stopped = False
        self._go = threading.Event()     # start() or server_close(): the threads go on
        self._close = threading.Event()  # server_close(): each closes its server
        self._servers = []
        self._workers = []
        self._served: List[threading.Event] = []
        # Each thread makes its own server, one after the other (the first
        # picks the port for port=0): on a free-threaded Python an object is
        # cheap to use only on the thread that made it (biased reference
        # counting); a server made here and served on another thread cost
        # 4x the CPU per message on 3.13t.
        self._host, self._port = host, port
        try:
            for i in range(n):
                made = threading.Event()
                served = threading.Event()
                self._served.append(served)
                box: List[Any] = []
                t = threading.Thread(target=self._thread_main, daemon=True, name=f"zcn-loop-{i}",
                                     args=(i, handler, kwargs, made, served, box))
                self._workers.append(t)
                t.start()
                made.wait()
                if isinstance(box[0], BaseException):
                    raise box[0]
                self._servers.append(box[0])
                if i == 0:
                    self._host, self._port = box[0].host, box[0].port
        except BaseException:
            self.server_close()
            raise

    # --- what it is ------------------------------------------------------------
    @property
    def threads(self) -> int:
        """The number of loops, one thread each."""
        return self._threads

    @property
    def cpus(self) -> List[Optional[int]]:
        """The CPU each loop's thread is pinned to (None: not pinned)."""
        return list(self._cpus)

    @property
    def backend(self) -> str:
        return self._first().backend

    @property
    def backend_reason(self) -> str:
        return self._first().backend_reason

    @property
    def handler(self) -> Handler:
        return self._first().handler

    @property
    def buffer_size(self) -> int:
        return self._first().buffer_size

    @property
    def loop(self) -> None:
        return None

    @property
    def connections(self) -> Any:
        """The connections open on every loop (a snapshot)."""
        out: Set[int] = set()
        for srv in self._live_servers():
            out |= srv.connections
        return frozenset(out)

    def fileno(self) -> int:
        raise ClosedError(f"{self._kind}.fileno(): each loop has its own listener")

    def _first(self) -> TcpServer:
        return self._live_servers()[0]

    def _live_servers(self) -> List[TcpServer]:
        if not self._servers:
            raise ClosedError(f"{self._kind} is closed")
        return self._servers

    # --- callbacks: the same on every loop ---------------------------------------
    on_accept = _shared_callback("on_accept")
    on_data = _shared_callback("on_data")
    on_close = _shared_callback("on_close")
    on_drain = _shared_callback("on_drain")
    on_eof = _shared_callback("on_eof")
    error_handler = _shared_callback("error_handler")


    # --- the calls of a connection: on the thread of its loop ----------------------
    def _here(self, name: str) -> TcpServer:
        srv = getattr(self._local, "server", None)
        if srv is None:
            raise WrongThreadError(
                f"{self._kind}.{name}(): call it from a callback, on the thread of the loop "
                f"that holds the connection (each of the {self._threads} loops runs on its "
                f"own thread)")
        return srv

    def send(self, fd: int, data: Any) -> None:
        self._here("send").send(fd, data)

    def close(self, fd: int) -> None:
        self._here("close").close(fd)

    def shutdown(self, fd: int) -> None:
        self._here("shutdown").shutdown(fd)

    def abort(self, fd: int) -> None:
        self._here("abort").abort(fd)

    def connection_info(self, fd: int) -> Any:
        return self._here("connection_info").connection_info(fd)

    def queued_bytes(self, fd: int) -> int:
        return self._here("queued_bytes").queued_bytes(fd)

    # --- running ---------------------------------------------------------------
    def _thread_main(self, index: int, handler: Any, kwargs: Any, made: threading.Event,
                     served: threading.Event, box: List[Any]) -> None:
        try:
            cpu = self._cpus[index]
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})  # this thread only; before its memory
            srv = TcpServer(self._host, self._port, handler=handler, reuse_port=True, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - raised by __init__
            box.append(exc)
            made.set()
            served.set()
            return
        box.append(srv)
        made.set()
        self._local.server = srv
        try:
            self._go.wait()
            if self._started and not self._close.is_set():
                srv.serve_forever()
        except BaseException as exc:  # noqa: BLE001 - raised by wait()
            with self._lock:
                self._errors.append(exc)
            self.stop()
        finally:
            served.set()
            self._close.wait()
            try:
                srv.server_close()  # on_close for the connections left, on this thread
            finally:
                self._local.server = None

    def start(self) -> None:
        """Lets the threads serve (each its loop, until stop()) and returns.
        ClosedError after a stop: a threaded server runs once."""
        with self._lock:
            self._live_servers()
            if self._stopped:
                raise ClosedError("a threaded server runs once: it was stopped")
            if not self._started:
                self._started = True
                self._go.set()

    def serve_forever(self, poll_interval: Optional[float] = None) -> None:
        """start(), then waits until stop() (a signal handler, another thread
        or a failing loop) and every thread has ended; a loop's exception is
        raised here."""
        self.start()
        try:
            self.wait()
        finally:
            self._stopped = True

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Waits until every thread has ended after a stop(); True when they
        have, False if ``timeout`` seconds passed first. The first exception
        a loop's thread ended with is raised."""
        if not self._started:
            raise ClosedError("wait(): the server was never started")
        deadline = None if timeout is None else time.monotonic() + timeout
        for served in self._served:
            while not served.is_set():
                step = _WAIT_STEP_MS / 1000
                if deadline is not None:
                    step = min(step, deadline - time.monotonic())
                    if step <= 0:
                        return False
                served.wait(step)  # in steps: Python runs its signal handlers in between
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            raise errors[0]
        return True

    def run_once(self, timeout: Optional[float] = None) -> int:
        raise ClosedError(f"{self._kind}.run_once(): each loop runs on its own thread "
                          f"(start() or serve_forever())")

    def stop(self) -> None:
        """Stops every loop (each closes nothing: its connections stay until
        server_close). Any thread, signal handlers included; idempotent."""
        self._stopped = True
        for srv in list(self._servers):
            srv.stop()

    # --- counters --------------------------------------------------------------
    def stats(self) -> ServerStats:
        """The sum over the loops of their counters (exact once the threads
        have ended; while they run, each loop's as of now)."""
        per = [srv.stats() for srv in self._live_servers()]
        return ServerStats(*(sum(getattr(s, name) for s in per) for name in _STATS_FIELDS))

    def loop_stats(self) -> List[LoopStats]:
        """Each loop's counters (zcn.LoopStats), in loop order."""
        from .loop import LoopStats
        out = []
        for srv in self._live_servers():
            raw = _ffi.LoopStats()
            rc = _ffi.zcn_loop_stats(_ffi.zcn_server_get_loop(srv._live()), ctypes.byref(raw))
            if rc:
                raise error_from_code(rc, "zcn_loop_stats")
            out.append(LoopStats(raw))
        return out

    # --- closing ---------------------------------------------------------------
    def server_close(self) -> None:
        """Stops the loops, waits for their threads, closes every connection
        (on_close for each) and frees the servers. Idempotent."""
        self.stop()
        self._go.set()
        self._close.set()
        for t in self._workers:
            if t is not threading.current_thread():
                t.join()
        with self._lock:
            self._servers = []

    def __exit__(self, *exc: object) -> None:
        self.server_close()

    def _finalize(self) -> None:
        self.server_close()

    def __enter__(self) -> ThreadedPythonServer:
        self._live_servers()
        return self

    @property
    def closed(self) -> bool:
        return not self._servers

    def __repr__(self) -> str:
        if not self._servers:
            return "<zcn.TcpServer(handler='python', threads=N) closed>"
        return (f"<zcn.TcpServer {self._host}:{self._port} handler=python "
                f"threads={self._threads}>")
