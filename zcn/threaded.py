"""TcpServer(..., threads=N): one loop per thread, in C.

    import zcn
    with zcn.TcpServer("0.0.0.0", 8080, handler="c", threads=2) as server:
        server.serve_forever()          # until server.stop() (signal-safe)

N threads, each with its own io_uring, buffer pool and SO_REUSEPORT
listener on the same port (a ZCN_Group, docs/THREADS.md): the kernel
spreads new connections over the loops and each stays on the loop that
accepted it. Every message is answered by the C handler on its loop's
thread: no Python and no GIL on the per-message path, which is why
``handler`` must be "c". Python handlers on several cores run in
processes: zcn.run_workers (the GIL serialises Python threads).

The threads start with the server (they create their loops, pinned to
``cpus`` when given) and run from start() or serve_forever() until stop().
A threaded server runs once: after stop() it only reports its counters
until server_close(). The per-connection calls of TcpServer (send, close,
run_once, ...) belong to each loop's thread and are not offered here.
"""

from __future__ import annotations

import ctypes
import threading
import time

from . import _ffi
from ._util import bool_arg as _bool_arg
from ._util import idle_timeout_ms as _idle_timeout_ms
from ._util import int_arg as _int_arg
from ._util import loop_limits as _loop_limits
from ._util import backend_arg as _backend_arg
from ._util import read_backend as _read_backend
from ._util import resolve_host as _resolve_host
from .errors import ClosedError, NotStartedError, ZcnTimeoutError, error_from_code
from .server import ServerStats, TcpServer, _STATS_FIELDS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, List, Optional, Sequence

    from ._types import Handler
    from .loop import LoopStats

__all__ = ["ThreadedTcpServer"]

INT32_MAX = 0x7FFFFFFF
_WAIT_STEP_MS = 100  # serve_forever's wait between chances to run Python signal handlers
_ERR_TIMEOUT = ZcnTimeoutError.code
_ERR_NOT_STARTED = NotStartedError.code


def _not_here(name: str) -> ClosedError:
    return ClosedError(f"zcn.TcpServer(threads=N).{name}(): connections live on the loops' "
                       f"own threads; with threads=N the C handler answers them")


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
                 backend: Optional[str] = None, **callbacks: Any) -> None:
        given = sorted(name for name, fn in callbacks.items() if fn is not None)
        if given:
            raise ValueError(f"threads=N runs the C handler on every loop; {', '.join(given)} "
                             f"cannot be set (Python handlers on several cores: "
                             f"zcn.run_workers)")
        if handler != "c":
            raise ValueError("threads=N needs handler='c': Python handlers would share the "
                             "GIL; run them in processes with zcn.run_workers")
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
            loop=_ffi.LoopConfig(backend=_backend_arg(backend), **limits),
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
