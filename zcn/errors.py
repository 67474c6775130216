"""The Python side of the error model.

C functions return ZCN_Error: 0 is success, 1..4095 an errno, >= 10000 a
library condition. OS failures become the matching OSError subclass
(ConnectionResetError, PermissionError ...), exactly as Python's own socket
functions raise them; library conditions become subclasses of ZcnError.

Each ZcnError subclass is also a subclass of the standard exception a Python
user would catch for the same condition (ClosedError is a ConnectionError,
QueueFullError a BlockingIOError ...), so ``except`` clauses written for
socket or asyncio code work unchanged. The OSError-derived ones carry a fixed
``errno`` (QueueFullError.errno == errno.EAGAIN ...). docs/ERRORS.md has the
whole table and the reasons.
"""
from __future__ import annotations

import os
from errno import EAGAIN, ENOBUFS, ENOMEM, ENOSYS, ENOTCONN, EPERM, ETIMEDOUT

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    from typing import Dict, Optional, Type, Union

ERRNO_MAX = 4095
ERR_BASE = 10000


class ZcnError(Exception):
    """Base class of every library-specific zcn error.

    ``code`` is the C ZCN_Error value, ``name`` its symbolic name and
    ``detail`` what the library said about this failure (may be empty).
    Subclasses that are also OSErrors set ``errno`` and ``strerror`` from
    their class's ``_errno``; str() stays the library's message.
    """

    code: int = 0
    name: str = "ZCN_ERR_UNKNOWN"
    _errno: Optional[int] = None
    detail: str

    # OSError.__str__ would print "[Errno N] strerror" and drop the message
    # (which names the call, the code and the detail): keep the message.
    __str__ = Exception.__str__

    def __init__(self, message: str, code: Optional[int] = None, detail: str = "") -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.detail = detail
        if self._errno is not None:
            # Set here, not as class attributes, which would shadow OSError's
            # own fields. Pickling rebuilds the exception through __init__,
            # so errno survives the round trip. setattr: for type checkers
            # errno and strerror are OSError's, not every ZcnError's.
            setattr(self, "errno", self._errno)
            setattr(self, "strerror", os.strerror(self._errno))


class InvalidArgumentError(ZcnError, ValueError):
    code, name = ERR_BASE + 1, "ZCN_ERR_INVALID_ARGUMENT"


class ExhaustedError(ZcnError, OSError):
    """A bounded resource (pool buffers, send slots) is used up: the kernel
    says ENOBUFS for its own equivalent. Not MemoryError (the interpreter's
    heap) nor BufferError (the buffer protocol: exported views)."""
    code, name, _errno = ERR_BASE + 2, "ZCN_ERR_EXHAUSTED", ENOBUFS


class DoubleFreeError(ZcnError, ValueError):
    code, name = ERR_BASE + 3, "ZCN_ERR_DOUBLE_FREE"


class ForeignPointerError(ZcnError, ValueError):
    code, name = ERR_BASE + 4, "ZCN_ERR_FOREIGN_POINTER"


class NotStartedError(ZcnError, RuntimeError):
    code, name = ERR_BASE + 5, "ZCN_ERR_NOT_STARTED"


class AlreadyStartedError(ZcnError, RuntimeError):
    code, name = ERR_BASE + 6, "ZCN_ERR_ALREADY_STARTED"


class ClosedError(ZcnError, ConnectionError):
    """The handle or connection is closed (or was never open)."""
    code, name, _errno = ERR_BASE + 7, "ZCN_ERR_CLOSED", ENOTCONN


class QueueFullError(ZcnError, BlockingIOError):
    """The connection's send queue is over its limit; nothing was queued."""
    code, name, _errno = ERR_BASE + 8, "ZCN_ERR_QUEUE_FULL", EAGAIN


class BusyError(ZcnError, RuntimeError):
    code, name = ERR_BASE + 9, "ZCN_ERR_BUSY"


class IoUringUnavailableError(ZcnError, OSError):
    """io_uring cannot be used here; the message says why."""


class IoUringDisabledError(IoUringUnavailableError, PermissionError):
    code, name, _errno = ERR_BASE + 10, "ZCN_ERR_URING_DISABLED", EPERM


class IoUringBlockedError(IoUringUnavailableError, PermissionError):
    code, name, _errno = ERR_BASE + 11, "ZCN_ERR_URING_BLOCKED", EPERM


class IoUringUnsupportedError(IoUringUnavailableError):
    code, name, _errno = ERR_BASE + 12, "ZCN_ERR_URING_UNSUPPORTED", ENOSYS


class MemlockError(IoUringUnavailableError):
    code, name, _errno = ERR_BASE + 13, "ZCN_ERR_MEMLOCK", ENOMEM


class ZcnTimeoutError(ZcnError, TimeoutError):
    code, name, _errno = ERR_BASE + 14, "ZCN_ERR_TIMEOUT", ETIMEDOUT


class WrongThreadError(ZcnError, RuntimeError):
    """Called from a thread that does not own the loop."""
    code, name = ERR_BASE + 15, "ZCN_ERR_WRONG_THREAD"


_BY_CODE: Dict[int, Type[ZcnError]] = {cls.code: cls for cls in (
    InvalidArgumentError, ExhaustedError, DoubleFreeError, ForeignPointerError,
    NotStartedError, AlreadyStartedError, ClosedError, QueueFullError, BusyError,
    IoUringDisabledError, IoUringBlockedError, IoUringUnsupportedError,
    MemlockError, ZcnTimeoutError, WrongThreadError,
)}


def error_from_code(code: int, where: str = "") -> Union[OSError, ZcnError]:
    """Builds (does not raise) the exception for a nonzero ZCN_Error."""
    from . import _ffi  # late: _ffi imports this module

    detail = (_ffi.zcn_error_detail() or b"").decode(errors="replace")
    prefix = f"{where}: " if where else ""
    if 0 < code <= ERRNO_MAX:
        text = os.strerror(code)
        if detail:
            text = f"{text} ({detail})"
        exc = OSError(code, prefix + text)  # OSError picks the subclass by errno
        return exc
    cls = _BY_CODE.get(code, ZcnError)
    name = _ffi.zcn_error_name(code).decode()
    if name == ZcnError.name and cls is not ZcnError:
        name = cls.name  # a library older than these bindings: it lacks the code
    text = _ffi.zcn_strerror(code).decode()
    message = f"{prefix}{name}: {text}" + (f" ({detail})" if detail else "")
    zexc = cls(message, code=code, detail=detail)
    if name != cls.name:
        zexc.name = name  # a code newer than these bindings: a plain ZcnError
    return zexc


def check(code: int, where: str = "") -> None:
    """Raises for a nonzero ZCN_Error; returns None on success."""
    if code:
        raise error_from_code(code, where)


# Spelled out (sorted, then the functions) so type checkers see the names;
# tests/test_typing.py checks that it lists every *Error class here.
__all__ = [
    "AlreadyStartedError", "BusyError", "ClosedError", "DoubleFreeError", "ExhaustedError",
    "ForeignPointerError", "InvalidArgumentError", "IoUringBlockedError",
    "IoUringDisabledError", "IoUringUnavailableError", "IoUringUnsupportedError",
    "MemlockError", "NotStartedError", "QueueFullError", "WrongThreadError", "ZcnError",
    "ZcnTimeoutError", "error_from_code", "check",
]
