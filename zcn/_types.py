"""The types in zcn's public signatures, named once.

zcn's modules import this only for type checkers (under TYPE_CHECKING), so
``import zcn`` does not import typing; it imports at run time too, for
code that wants the names (``from zcn._types import DataCallback``).
Everything works on Python 3.9 (no ``X | Y``, no collections.abc.Buffer).

Callbacks return ``object``: zcn ignores what they return, so a lambda
whose body is a call that returns something (``lambda fd: fds.add(fd)``)
fits as well as a function returning None.
"""
from __future__ import annotations

from typing import Callable, Literal, Optional, Protocol, Tuple, Union

__all__ = ["BytesLike", "HasFileno", "FileDescriptorLike", "Address", "UdpPeer", "UdpAddress",
           "FdCallback", "DataCallback", "ConnectCallback", "DatagramCallback",
           "ErrorHandler", "LoopErrorHandler", "Handler", "RecvMode"]


class BytesLike(Protocol):
    """Any object with the buffer protocol: bytes, bytearray, memoryview,
    array.array, mmap, a ctypes array, a numpy array ... What
    collections.abc.Buffer (Python 3.12+) names; type checkers know which
    classes have ``__buffer__`` on every Python version."""

    def __buffer__(self, flags: int, /) -> memoryview: ...


class HasFileno(Protocol):
    """An object with a fileno() method (a socket, a file ...)."""

    def fileno(self) -> int: ...


#: An fd: an int or an object with fileno().
FileDescriptorLike = Union[int, HasFileno]

#: A TCP address: (numeric host, port).
Address = Tuple[str, int]
#: A UDP peer as on_datagram gets it: (host, port) for IPv4,
#: (host, port, flowinfo, scope_id) for IPv6, as the socket module gives them.
UdpPeer = Union[Tuple[str, int], Tuple[str, int, int, int]]
#: A UDP destination: (host, port), or for IPv6 up to (host, port, flowinfo, scope_id).
UdpAddress = Union[Tuple[str, int], Tuple[str, int, int], Tuple[str, int, int, int]]

#: on_accept(fd), on_eof(fd), on_close(fd), on_drain(fd).
FdCallback = Callable[[int], object]
#: on_data(fd, data): data is a read-only memoryview, valid during the call.
DataCallback = Callable[[int, memoryview], object]
#: on_connect(fd, error): error None once connected, else the exception;
#: fd is None when the connect never got an fd (a host name that did not
#: resolve, or a connect that could not start after resolving).
ConnectCallback = Callable[[Optional[int], Optional[Exception]], object]
#: on_datagram(peer, data, flags): data is a read-only memoryview, valid
#: during the call; flags & zcn.UDP_TRUNCATED says it was cut.
DatagramCallback = Callable[[UdpPeer, memoryview, int], object]

#: TcpServer's error_handler: None (log, abort the connection), "raise", or
#: error_handler(fd, exc).
ErrorHandler = Union[None, Literal["raise"], Callable[[int, Exception], object]]
#: Loop's error_handler: as ErrorHandler, with fd None for timers, watches
#: and calls.
LoopErrorHandler = Union[None, Literal["raise"], Callable[[Optional[int], Exception], object]]

#: handler=: "python" (Python callbacks) or "c" (the built-in C echo).
Handler = Literal["python", "c"]
#: UdpSocket's recv_mode=.
RecvMode = Literal["readiness", "multishot"]
