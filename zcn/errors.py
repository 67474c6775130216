"""The Python side of the error model.

C functions return ZCN_Error: 0 is success, 1..4095 an errno, >= 10000 a
library condition. OS failures become the matching OSError subclass
(ConnectionResetError, PermissionError ...), exactly as Python's own socket
functions raise them; library conditions become subclasses of ZcnError.
"""
from __future__ import annotations

import os

ERRNO_MAX = 4095
ERR_BASE = 10000


class ZcnError(Exception):
    """Base class of every library-specific zcn error.

    ``code`` is the C ZCN_Error value, ``name`` its symbolic name and
    ``detail`` what the library said about this failure (may be empty).
    """

    code = 0

    def __init__(self, message, code=None, detail=""):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.detail = detail


class InvalidArgumentError(ZcnError, ValueError):
    code = ERR_BASE + 1


class ExhaustedError(ZcnError):
    code = ERR_BASE + 2


class DoubleFreeError(ZcnError):
    code = ERR_BASE + 3


class ForeignPointerError(ZcnError, ValueError):
    code = ERR_BASE + 4


class NotStartedError(ZcnError):
    code = ERR_BASE + 5


class AlreadyStartedError(ZcnError):
    code = ERR_BASE + 6


class ClosedError(ZcnError):
    """The handle or connection is closed (or was never open)."""
    code = ERR_BASE + 7


class QueueFullError(ZcnError):
    """The connection's send queue is over its limit; nothing was queued."""
    code = ERR_BASE + 8


class BusyError(ZcnError):
    code = ERR_BASE + 9


class IoUringUnavailableError(ZcnError):
    """io_uring cannot be used here; the message says why."""


class IoUringDisabledError(IoUringUnavailableError):
    code = ERR_BASE + 10


class IoUringBlockedError(IoUringUnavailableError):
    code = ERR_BASE + 11


class IoUringUnsupportedError(IoUringUnavailableError):
    code = ERR_BASE + 12


class MemlockError(IoUringUnavailableError):
    code = ERR_BASE + 13


class ZcnTimeoutError(ZcnError, TimeoutError):
    code = ERR_BASE + 14


_BY_CODE = {cls.code: cls for cls in (
    InvalidArgumentError, ExhaustedError, DoubleFreeError, ForeignPointerError,
    NotStartedError, AlreadyStartedError, ClosedError, QueueFullError, BusyError,
    IoUringDisabledError, IoUringBlockedError, IoUringUnsupportedError,
    MemlockError, ZcnTimeoutError,
)}


def error_from_code(code, where=""):
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
    name = _ffi.zcn_error_name(code).decode()
    text = _ffi.zcn_strerror(code).decode()
    message = f"{prefix}{name}: {text}" + (f" ({detail})" if detail else "")
    cls = _BY_CODE.get(code, ZcnError)
    return cls(message, code=code, detail=detail)


def check(code, where=""):
    """Raises for a nonzero ZCN_Error; returns None on success."""
    if code:
        raise error_from_code(code, where)


__all__ = sorted(n for n in dir() if n.endswith("Error")) + ["error_from_code", "check"]
