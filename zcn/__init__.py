"""zero_copy_net: low-latency Linux networking on io_uring.

    import zcn
    with zcn.BufferPool(buffer_size=4096, count=1024) as pool: ...
    with zcn.Ring(entries=256) as ring: ring.nop(1000)
    with zcn.TcpServer("127.0.0.1", 8080, on_data=lambda fd, data: ...) as server:
        server.serve_forever()
    with zcn.Loop() as loop:        # servers, outbound connections, timers, fd watches
        loop.connect("127.0.0.1", 8080, on_connect=..., on_data=...)
        loop.run_forever()
    zcn.run_workers(serve, workers=4, port=8080)   # Python handlers on 4 processes
    zcn.run(main())                 # an asyncio program on zcn (zcn.aio)
    asyncio.run(main(), loop_factory=zcn.new_event_loop)   # Python 3.12+
"""
from __future__ import annotations

import logging as _logging

from . import _ffi
from .errors import *  # noqa: F401,F403 - the exception classes are API
from .errors import ZcnError
from . import errors as _errors
from .pool import BufferPool, Buffer, PoolCacheStats, PoolStats
from .loop import ConnectHandle, Loop, LoopStats, TimerHandle
from .ring import Ring
from .server import ServerStats, TcpServer
from .threaded import ThreadedPythonServer, ThreadedTcpServer
from .udp import UDP_TRUNCATED, UdpSocket, UdpStats
from .workers import Worker, WorkerError, WorkersResult, run_workers

__version__ = _ffi.zcn_version_string().decode()

_logging.getLogger(__name__).addHandler(_logging.NullHandler())

__all__ = ["BufferPool", "Buffer", "PoolStats", "PoolCacheStats", "Ring", "TcpServer",
           "ThreadedTcpServer", "ThreadedPythonServer",
           "ServerStats", "ZcnError", "__version__"]
__all__ += ["UdpSocket", "UdpStats", "UDP_TRUNCATED"]
__all__ += ["Loop", "LoopStats", "TimerHandle", "ConnectHandle"]
__all__ += ["run_workers", "Worker", "WorkersResult", "WorkerError"]
__all__ += ["EventLoop", "EventLoopPolicy", "new_event_loop", "install", "run"]
# The exception classes are API (zcn.ClosedError ...): exported, so type
# checkers that go by __all__ (pyright) accept them too.
__all__ += [name for name in _errors.__all__ if name not in __all__]

_AIO_NAMES = frozenset(("EventLoop", "EventLoopPolicy", "new_event_loop", "install", "run"))

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    # Type checkers see the names themselves, and no module __getattr__
    # (which would make every zcn.<typo> an Any).
    from .aio import EventLoop, EventLoopPolicy, install, new_event_loop, run
else:
    def __getattr__(name: str):
        # zcn.aio imports asyncio: only when its names are asked for.
        if name in _AIO_NAMES:
            from . import aio
            return getattr(aio, name)
        raise AttributeError(f"module 'zcn' has no attribute {name!r}")
