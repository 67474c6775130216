"""Pieces shared by zcn's classes: argument checks, host resolution, the
handle lifecycle, mmap-owned buffer memory and the buffer protocol.

Private: nothing here is API. The per-message paths of TcpServer and
UdpSocket import the objects below as module globals (one lookup) and do
not call through extra Python layers.
"""
from __future__ import annotations

import ctypes
import logging
import math
import mmap
import operator
import signal
import socket
import threading
from ctypes import POINTER, c_int, c_void_p, py_object
from time import monotonic as _monotonic

from . import _ffi
from .errors import ClosedError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Iterable, Optional, Tuple, TypeVar

    from ._types import Address, BytesLike
    from .errors import WrongThreadError

    _H = TypeVar("_H", bound="HandleOwner")

PAGE_SIZE = _ffi.PAGE_SIZE
INT32_MAX = 0x7FFFFFFF


# --- argument checks ---------------------------------------------------------
def int_arg(value: Any, name: str, low: Optional[int] = None,
            high: Optional[int] = None) -> int:
    """An int (or an object with __index__), never a bool, float or None;
    checked against low..high when both are given."""
    if type(value) is not int:  # the common case skips the conversion
        if isinstance(value, bool) or value is None:
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
        try:
            value = operator.index(value)
        except TypeError:
            raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None
    if low is not None and not low <= value <= high:
        raise ValueError(f"{name} must be in {low}..{high}, got {value}")
    return value


def bool_arg(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    return value


def callback_arg(value: Any, name: str) -> Any:
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable or None, not {type(value).__name__}")
    return value


def seconds_to_ms(value: object, name: str, allow_zero: bool) -> Optional[int]:
    """A number of seconds (int or float, not bool) -> milliseconds, rounded
    up; None for infinity."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, "
                        f"not {type(value).__name__}")
    if math.isnan(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    if math.isinf(value):
        return None
    return math.ceil(value * 1000)


def timeout_ms(value: Optional[float], name: str, allow_zero: bool = True) -> int:
    """A loop timeout in seconds (None or infinity = forever) -> the C
    side's milliseconds (-1 = forever, at most INT32_MAX)."""
    if value is None:
        return -1
    ms = seconds_to_ms(value, name, allow_zero)
    return -1 if ms is None else min(ms, INT32_MAX)


# --- signals while a loop waits ----------------------------------------------
# Python runs a signal's handler on the main thread once the C call in
# progress returns. A loop call that has begun but not yet gone to sleep in
# the kernel when the signal lands would sleep on until the next event, and
# the handler (stop(), KeyboardInterrupt) with it. While such a call may
# wait, signal.set_wakeup_fd points at the loop's wakeup fd: the byte
# Python's C-level handler writes there ends the wait, whenever it comes.
_MAIN_IDENT = threading.main_thread().ident
WAKEUP_MIN_WAIT_MS = 100


class LoopWakeup:
    """The wakeup fd of one C loop (zcn_server_wakeup_fd or
    zcn_udp_wakeup_fd, made on first use) and whether it is installed."""

    __slots__ = ("_get_fd", "_fd", "_installed")

    def __init__(self, get_fd: Callable[[Any, Any], object]) -> None:
        self._get_fd = get_fd
        self._fd: Optional[int] = None
        self._installed: Optional[int] = None

    def enter(self, handle: Optional[int], timeout_ms: int) -> None:
        """A loop call begins: on the main thread, if it may wait longer
        than WAKEUP_MIN_WAIT_MS (timeout_ms < 0: forever), points
        signal.set_wakeup_fd at the loop's pipe. That costs about 1 µs (two
        system calls), so shorter waits go without: a signal in the gap is
        then handled when the wait times out. Nothing changes on other
        threads (handlers do not run there; their stop() wakes the loop by
        itself), without a pipe (no fd left), or when another wakeup fd is
        in place (asyncio's), which is left alone."""
        if 0 <= timeout_ms <= WAKEUP_MIN_WAIT_MS or threading.get_ident() != _MAIN_IDENT:
            return
        fd = self._fd
        if fd is None:
            out = c_int(-1)
            try:
                self._get_fd(handle, out)
            except OSError:  # no fd left: signals are then seen at the next event
                return
            fd = self._fd = out.value
        self._installed = fd  # first: a KeyboardInterrupt below still gets exit()
        try:
            old = signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
        except ValueError:  # not the main interpreter
            self._installed = None
            return
        if old not in (-1, fd):
            signal.set_wakeup_fd(old)
            self._installed = None

    def exit(self) -> None:
        """The loop call returns: no wakeup fd again, unless a handler set
        another one meanwhile."""
        fd, self._installed = self._installed, None
        if fd is not None:
            current = signal.set_wakeup_fd(-1)
            if current not in (-1, fd):
                signal.set_wakeup_fd(current)


def monotonic_ms() -> int:
    return int(_monotonic() * 1000)


def resolve_host(host: str, family: int = socket.AF_UNSPEC,
                 socktype: int = socket.SOCK_STREAM) -> str:
    """A numeric address for ``host`` (IPv4 preferred unless ``family``
    says), for the C side, which takes literals only. "" means all
    interfaces of the family (IPv4 unless family is AF_INET6)."""
    if not isinstance(host, str):
        raise TypeError(f"host must be a str, not {type(host).__name__}")
    if host == "":
        return "::" if family == socket.AF_INET6 else "0.0.0.0"
    if "\0" in host:
        raise ValueError("host contains a NUL character")
    infos = socket.getaddrinfo(host, None, family, socktype, 0, socket.AI_PASSIVE)
    for want in (socket.AF_INET, socket.AF_INET6):
        for fam, _type, _proto, _name, sockaddr in infos:
            if fam == want:
                return str(sockaddr[0])
    raise socket.gaierror(socket.EAI_FAMILY, f"no IPv4 or IPv6 address for {host!r}")


def round_up_pages(size: int) -> int:
    return (size + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


# --- the handle lifecycle ----------------------------------------------------
BACKENDS = {None: 0, "auto": 0, "io_uring": 1, "epoll": 2}
_BACKEND_NAMES = {0: "auto", 1: "io_uring", 2: "epoll"}
_backend_logged = False


def backend_arg(value: Optional[str]) -> int:
    """A backend= argument (None or "auto", "io_uring", "epoll") as its
    ZCN_Backend value."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"backend must be None, 'auto', 'io_uring' or 'epoll', "
                        f"not {type(value).__name__}")
    if value not in BACKENDS:
        raise ValueError(f"backend must be None, 'auto', 'io_uring' or 'epoll', got {value!r}")
    return BACKENDS[value]


def read_backend(fn: Callable[..., int], handle: int) -> Tuple[str, str]:
    """(name, reason) of what the handle runs on, from zcn_*_backend; logged
    once per process at debug level (the choice is the same for every loop
    unless configs differ)."""
    global _backend_logged
    reason = ctypes.c_char_p()
    code = fn(handle, ctypes.byref(reason))
    name = _BACKEND_NAMES.get(code, "unknown")
    why = (reason.value or b"").decode(errors="replace")
    if not _backend_logged:
        _backend_logged = True
        logging.getLogger("zcn").debug("zcn runs on %s: %s", name, why)
    return name, why


class HasBackend:
    """The backend and backend_reason properties of Loop, TcpServer and
    UdpSocket: a subclass sets ``_backend_fn`` to its zcn_*_backend."""

    _backend_fn: Any

    @property
    def backend(self) -> str:
        """What it runs on: "io_uring" or "epoll" (a server's or socket's
        on a loop is the loop's; docs/BACKENDS.md)."""
        return read_backend(type(self)._backend_fn, self._live())[0]  # type: ignore[attr-defined]

    @property
    def backend_reason(self) -> str:
        """Why that backend: "io_uring works here (the default)",
        "forced by ...", or "io_uring refused: ..." with the kernel's answer."""
        return read_backend(type(self)._backend_fn, self._live())[1]  # type: ignore[attr-defined]


def backend_line(obj: Any) -> str:
    """The line the command-line servers print after they start: the
    backend and why ("backend: epoll, io_uring refused: ...")."""
    return f"backend: {obj.backend}, {obj.backend_reason}"


class HandleOwner:
    """Base of the classes owning a C handle (None once closed).

    A subclass sets ``_kind`` (its name in messages) and defines close();
    __del__ runs _finalize() (close() unless overridden) and swallows
    errors, as the interpreter may be shutting down. ``_handle`` defaults to
    None at class level, so everything here works when __init__ failed.
    """

    _kind = "zcn object"
    _handle: Optional[int] = None

    def _live(self) -> int:
        handle = self._handle
        if handle is None:
            raise ClosedError(f"{self._kind} is closed")
        return handle

    @property
    def closed(self) -> bool:
        """True once closed (or if the constructor failed)."""
        return self._handle is None

    def __enter__(self: _H) -> _H:
        self._live()
        return self

    # close() is each subclass's (TcpServer's and Loop's take an fd and
    # override the two methods below), so it is not declared here.
    def __exit__(self, *exc: object) -> None:
        self.close()  # type: ignore[attr-defined]

    def _finalize(self) -> None:
        self.close()  # type: ignore[attr-defined]

    def __del__(self) -> None:
        try:
            self._finalize()
        except Exception:
            pass  # interpreter shutdown: modules may already be gone


class BoundSocket(HandleOwner):
    """A HandleOwner bound to a local address: sets ``_host`` (the numeric
    address) and ``_port`` (the bound port, the kernel's pick for 0)."""

    _host: str
    _port: int

    @property
    def host(self) -> str:
        """The numeric address bound to."""
        return self._host

    @property
    def port(self) -> int:
        """The bound port (the kernel's pick when created with port 0)."""
        return self._port

    @property
    def address(self) -> Address:
        """(host, port), as socket.create_connection() and sendto() take it."""
        return (self._host, self._port)


# --- memory C reads and writes -----------------------------------------------
class MappedMemory:
    """An anonymous private mmap handed to C by address.

    Python owns it, so a memoryview a user keeps can never point into
    unmapped memory: the ctypes anchor holds a buffer export (mm.close()
    cannot unmap while C uses it), and close() unmaps only when no user view
    is left; otherwise the mapping dies with the last view.
    """

    __slots__ = ("_anchor", "_mm", "address", "view")

    _anchor: Optional[ctypes.c_char]
    _mm: Optional[mmap.mmap]
    address: int
    #: None once closed; typed as always there: nothing reads it after close().
    view: memoryview

    def __init__(self, size: int, readonly: bool = False) -> None:
        self._mm = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._anchor = ctypes.c_char.from_buffer(self._mm)
        view = memoryview(self._mm)
        self.view = view.toreadonly() if readonly else view
        self.address = ctypes.addressof(self._anchor)

    def close(self) -> None:
        """Releases our view and export and unmaps if nobody else holds a
        view. Idempotent."""
        self._anchor = None  # drops the ctypes export
        view, self.view = self.view, None  # type: ignore[assignment]
        if view is not None:
            view.release()
        mm, self._mm = self._mm, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass  # a user keeps a view: the mapping lives until it dies


def c_writable_bytes(size: int) -> Tuple[ctypes.Array[ctypes.c_char], int, memoryview]:
    """A zeroed bytearray for C to write into: (anchor, address, memoryview).
    Keep the anchor as long as C may write: it pins the bytearray."""
    raw = bytearray(size)
    anchor = (ctypes.c_char * size).from_buffer(raw)
    return anchor, ctypes.addressof(anchor), memoryview(raw)


# --- the buffer protocol, for sending any bytes-like object ------------------
class PyBuffer(ctypes.Structure):
    # typedef struct bufferinfo {...} Py_buffer;  (Include/pybuffer.h)
    _fields_ = [
        ("buf", c_void_p), ("obj", py_object), ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t), ("readonly", c_int), ("ndim", c_int),
        ("format", c_void_p), ("shape", c_void_p), ("strides", c_void_p),
        ("suboffsets", c_void_p), ("internal", c_void_p),
    ]


PyBUF_SIMPLE = 0
# Own function objects (a prototype bound to the symbol), not the shared
# ctypes.pythonapi attributes: another module setting argtypes on those
# would change ours. PYFUNCTYPE: a set Python error (BufferError) is raised.
get_buffer = ctypes.PYFUNCTYPE(c_int, py_object, POINTER(PyBuffer), c_int)(
    ("PyObject_GetBuffer", ctypes.pythonapi))
release_buffer = ctypes.PYFUNCTYPE(None, POINTER(PyBuffer))(
    ("PyBuffer_Release", ctypes.pythonapi))


# --- shared by TcpServer and Loop -------------------------------------------
UINT32_MAX = 0xFFFFFFFF
#: The C side's bounds (ZCN_SERVER_*_MAX in the header).
ENTRIES_MAX = 32768
BUFFERS_MIN, BUFFERS_MAX = 2, 32768
BUFFER_SIZE_MAX = 64 << 20
CONNECTIONS_MAX = 1 << 20


def loop_limits(io_uring_entries: int, buffer_pool_size: int, buffer_size: int,
                connections_max: int, send_queue_max_bytes: int, buffer_reserve: Optional[int],
                send_timeout: Optional[float],
                conn_buffers_hard_max: Optional[int]) -> Dict[str, int]:
    """The checked limits of a C loop (ZCN_Config / ZCN_LoopConfig fields),
    from a TcpServer's or a Loop's keyword arguments: a dict of the C field
    names. Raises TypeError/ValueError naming the argument."""
    from . import _ffi
    out = {
        "io_uring_entries": int_arg(io_uring_entries, "io_uring_entries", 1, ENTRIES_MAX),
        "buffer_pool_size": int_arg(buffer_pool_size, "buffer_pool_size", BUFFERS_MIN,
                                    BUFFERS_MAX),
        "buffer_size": int_arg(buffer_size, "buffer_size", 1, BUFFER_SIZE_MAX),
        "connections_max": int_arg(connections_max, "connections_max", 1, CONNECTIONS_MAX),
        "send_queue_max_bytes": int_arg(send_queue_max_bytes, "send_queue_max_bytes", 1,
                                        UINT32_MAX),
        "buffer_reserve": 0, "send_timeout_ms": _ffi.TIMEOUT_NEVER, "conn_buffers_hard_max": 0,
    }
    if buffer_reserve is not None:
        out["buffer_reserve"] = int_arg(buffer_reserve, "buffer_reserve", 1,
                                        out["buffer_pool_size"] - 1)
    if send_timeout is not None:
        ms = seconds_to_ms(send_timeout, "send_timeout", allow_zero=False)
        if ms is not None and ms >= UINT32_MAX:
            raise ValueError(f"send_timeout must be below {UINT32_MAX / 1000} s (or None)")
        out["send_timeout_ms"] = _ffi.TIMEOUT_NEVER if ms is None else ms  # None: infinity
    if conn_buffers_hard_max is not None:
        out["conn_buffers_hard_max"] = int_arg(conn_buffers_hard_max, "conn_buffers_hard_max",
                                               1, UINT32_MAX)
    return out


def idle_timeout_ms(idle_timeout: Optional[float]) -> int:
    """ZCN_Config.idle_timeout_ms of a server's ``idle_timeout`` (seconds,
    None = never): 0 for never; ValueError past what 32 bits of ms hold."""
    if idle_timeout is None:
        return 0
    ms = seconds_to_ms(idle_timeout, "idle_timeout", allow_zero=False) or 0
    if ms > UINT32_MAX:
        raise ValueError(f"idle_timeout must be at most {UINT32_MAX / 1000} s")
    return ms


def wrong_thread_error(code: int, where: str, owner_ident: Optional[int], what: str,
                       hint: str = "") -> WrongThreadError:
    """A WrongThreadError that names the thread running ``what``."""
    from .errors import WrongThreadError
    name = next((t.name for t in threading.enumerate() if t.ident == owner_ident), owner_ident)
    return WrongThreadError(
        f"{where}: called from thread {threading.current_thread().name!r}, but {what} runs "
        f"on thread {name!r}; call it from a callback (or otherwise on that thread){hint}",
        code=code)


def send_bytes_like(send: Callable[..., int], handle: Optional[int], fd: int,
                    data: BytesLike) -> int:
    """send(handle, fd, pointer, length) of any bytes-like object (a
    contiguous copy for a strided one); returns send's code."""
    if isinstance(data, str):
        raise TypeError("send() takes a bytes-like object, not str (encode it first)")
    view = PyBuffer()
    try:
        get_buffer(data, ctypes.byref(view), PyBUF_SIMPLE)
    except BufferError:
        data = memoryview(data).tobytes()  # not contiguous (e.g. a strided memoryview)
        return send(handle, fd, data, len(data))
    try:
        return send(handle, fd, view.buf, view.len)
    finally:
        release_buffer(ctypes.byref(view))


def report_closes(fds: Iterable[int], on_close: Optional[Callable[[int], object]],
                  failed: Callable[[str, int, Exception], object]) -> None:
    """Calls on_close(fd) for each fd a destroy closed without reporting it;
    an exception goes to failed(name, fd, exc) (the error policy). Raises
    the first one the policy lets through, after all the calls."""
    first: Optional[Exception] = None
    if on_close is None:
        return
    for fd in fds:
        try:
            try:
                on_close(fd)
            except Exception as exc:
                failed("on_close", fd, exc)
        except Exception as exc:
            if first is None:
                first = exc
            else:
                logging.getLogger("zcn").error("on_close(%d) raised while closing", fd,
                                               exc_info=exc)
    if first is not None:
        raise first
