"""An asyncio event loop on zcn: unmodified asyncio programs on io_uring.

    import asyncio, zcn

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 8888)
        async with server:
            await server.serve_forever()

    zcn.run(main())                      # or, on 3.12+:
    asyncio.run(main(), loop_factory=zcn.new_event_loop)

What is zcn's own and what is asyncio's (docs/ASYNCIO.md):

* The wait. The loop is asyncio's own SelectorEventLoop (so call_soon,
  timers, futures, tasks, executors, signals, subprocesses, the exception
  handler and debug mode are asyncio's code, unchanged) with a selector
  that is a zcn.Loop: every fd asyncio watches is an io_uring poll on the
  zcn loop, and ``select(timeout)`` is one ``zcn_loop_poll``, the loop's
  only wait. No second loop, no helper thread.
* The TCP and unix stream transports. Every connection asyncio makes
  (create_connection, create_server, start_server, open_connection,
  connect_accepted_socket, the unix variants, and the raw sockets under
  TLS) is handed to the zcn loop (``zcn_loop_adopt``): data is received
  by io_uring into the loop's pool buffers and arrives in the same event
  batch as everything else; ``write`` queues into pool buffers and the
  sends of one turn go to the kernel together with the next wait.
  Protocol callbacks are called straight from the batch, not through a
  Handle each. TLS is asyncio's own sslproto over these transports.
* ``zcn.TcpServer(..., loop=loop.zcn_loop)`` (the fd-level API, the
  fastest path) runs on the same loop, in the same batches.

Semantics are asyncio's: data_received gets bytes; BufferedProtocol gets
get_buffer/buffer_updated (copied straight from the pool buffer, no bytes
object); eof_received's result decides half-close; pause_reading stops
receiving in the kernel (zcn_loop_pause_recv); write() never fails for
being too much (what the zcn send queue refuses waits in the transport,
counted by get_write_buffer_size and pause_writing); an exception in a
protocol callback goes to the loop's exception handler and aborts that
connection only.

The files: zcn/aio.py the loop, the policy and run(); zcn/_aio_selector.py
the wait (the selector) and the turn's write batch; zcn/_aio_tcp.py the
stream transport; zcn/_aio_udp.py the datagram transport.
"""
from __future__ import annotations

import asyncio
import contextvars
import heapq
import resource
import socket
import sys
from asyncio import base_events, events, format_helpers, sslproto
from typing import Any, Awaitable, Optional, TypeVar

from . import _ffi
from ._aio_selector import _ZcnSelector
from ._aio_tcp import _ZcnTransport
from .loop import Loop

__all__ = ["EventLoop", "EventLoopPolicy", "new_event_loop", "install", "run"]

_T = TypeVar("_T")

_NO_CALL = _ffi.Call()


_MIN_SCHEDULED = base_events._MIN_SCHEDULED_TIMER_HANDLES
_MIN_CANCELLED_FRACTION = base_events._MIN_CANCELLED_TIMER_HANDLES_FRACTION
_MAX_SELECT_TIMEOUT = base_events.MAXIMUM_SELECT_TIMEOUT
_PLAIN_HANDLES = (events.Handle, events.TimerHandle)
# What events.Handle.__init__ sets (3.9-3.13): call_soon below fills these
# itself, and falls back to asyncio's own where a Python has other slots.
_HANDLE_SLOTS = {"_callback", "_args", "_cancelled", "_loop", "_source_traceback", "_repr",
                 "__weakref__", "_context"}
_FAST_CALL_SOON = set(getattr(events.Handle, "__slots__", ())) == _HANDLE_SLOTS
_new_handle = events.Handle.__new__
_copy_context = contextvars.copy_context


def _handle_failed(handle: events.Handle, exc: BaseException) -> None:
    """What Handle._run does with a callback's exception."""
    cb = format_helpers._format_callback_source(handle._callback, handle._args)
    context = {
        "message": f"Exception in callback {cb}",
        "exception": exc,
        "handle": handle,
    }
    if handle._source_traceback:
        context["source_traceback"] = handle._source_traceback
    handle._loop.call_exception_handler(context)


class EventLoop(asyncio.SelectorEventLoop):
    """An asyncio event loop whose one wait is a zcn loop (see the module
    docstring). Keyword arguments are zcn.Loop's (buffer_pool_size,
    buffer_size, connections_max, send_queue_max_bytes, ...), bounding the
    connections the loop's transports and zcn servers share."""

    def __init__(self, **zcn_loop_options: Any) -> None:
        options = dict(zcn_loop_options)
        # asyncio programs are bounded by RLIMIT_NOFILE, not by a table:
        # as many connections and watches as the process may have fds.
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        fds = 65536 if soft == resource.RLIM_INFINITY else max(4096, min(soft, 65536))
        options.setdefault("connections_max", fds)
        options.setdefault("watches_max", min(fds, _ffi.LOOP_WATCHES_MAX))
        self._zcn = Loop(**options)
        # The pieces refused data goes on in: half a queue, or less once
        # zcn said a piece needs more buffers than a connection may hold
        # (EMSGSIZE: small buffers in a small pool).
        queue_max = options.get("send_queue_max_bytes") or (1 << 20)
        self._zcn._send_piece = max(queue_max // 2, 1)
        selector = _ZcnSelector(self._zcn)
        super().__init__(selector)
        selector._aloop = self

    @property
    def zcn_loop(self) -> Loop:
        """The zcn.Loop under this loop: zcn.TcpServer(..., loop=it) and
        its other objects run on it, in the same waits."""
        return self._zcn

    def _make_socket_transport(self, sock: socket.socket, protocol: asyncio.BaseProtocol,
                               waiter: "Optional[asyncio.Future[None]]" = None, *,
                               extra: "Optional[dict[str, Any]]" = None,
                               server: Any = None) -> "_ZcnTransport":
        return _ZcnTransport(self, sock, protocol, waiter, extra, server)

    def _make_datagram_transport(self, sock: socket.socket, protocol: asyncio.BaseProtocol,
                                 address: Any = None,
                                 waiter: "Optional[asyncio.Future[None]]" = None,
                                 extra: "Optional[dict[str, Any]]" = None) -> Any:
        # zcn's UDP for UDP sockets, asyncio's own for the rest (zcn/_aio_udp.py)
        from ._aio_udp import make_datagram_transport
        return make_datagram_transport(self, sock, protocol, address, waiter, extra)

    def _make_ssl_transport(self, rawsock: socket.socket, protocol: asyncio.BaseProtocol,
                            sslcontext: Any, waiter: "Optional[asyncio.Future[None]]" = None,
                            *, server_side: bool = False, server_hostname: Optional[str] = None,
                            extra: "Optional[dict[str, Any]]" = None, server: Any = None,
                            **timeouts: Any) -> Any:
        # timeouts: ssl_handshake_timeout, and ssl_shutdown_timeout from 3.11,
        # as this Python's base loop passes them
        ssl_protocol = sslproto.SSLProtocol(
            self, protocol, sslcontext, waiter,  # type: ignore[arg-type]
            server_side, server_hostname, **timeouts)
        _ZcnTransport(self, rawsock, ssl_protocol, extra=extra, server=server)
        return ssl_protocol._app_transport

    if _FAST_CALL_SOON:
        def call_soon(self, callback: Any, *args: Any,  # type: ignore[override]
                      context: Optional[contextvars.Context] = None) -> events.Handle:
            """BaseEventLoop.call_soon, the same Handle, without its checks
            and method calls when debug mode is off: every future's
            wake-up of a task comes through here (a streams read is one),
            and asyncio's version costs about twice this one."""
            if self._debug or self._closed:
                return super().call_soon(callback, *args, context=context)
            handle = _new_handle(events.Handle)
            handle._callback = callback
            handle._args = args
            handle._loop = self
            handle._context = _copy_context() if context is None else context
            handle._cancelled = False
            handle._repr = None
            handle._source_traceback = None
            self._ready.append(handle)
            return handle

    if (3, 9) <= sys.version_info[:2] <= (3, 13):
        def _run_once(self) -> None:
            """BaseEventLoop._run_once (3.9-3.13, the same there), with
            Handle._run inlined: one Python call less for every callback,
            which is most of what a streams program's turn runs."""
            scheduled = self._scheduled
            sched_count = len(scheduled)
            if (sched_count > _MIN_SCHEDULED and
                    self._timer_cancelled_count / sched_count > _MIN_CANCELLED_FRACTION):
                new_scheduled = []
                for handle in scheduled:
                    if handle._cancelled:
                        handle._scheduled = False
                    else:
                        new_scheduled.append(handle)
                heapq.heapify(new_scheduled)
                self._scheduled = scheduled = new_scheduled
                self._timer_cancelled_count = 0
            else:
                while scheduled and scheduled[0]._cancelled:
                    self._timer_cancelled_count -= 1
                    handle = heapq.heappop(scheduled)
                    handle._scheduled = False

            ready = self._ready
            timeout = None
            if ready or self._stopping:
                timeout = 0
            elif scheduled:
                when = scheduled[0]._when
                timeout = min(max(0, when - self.time()), _MAX_SELECT_TIMEOUT)

            event_list = self._selector.select(timeout)
            if event_list:
                self._process_events(event_list)
            event_list = None

            end_time = self.time() + self._clock_resolution
            while scheduled:
                handle = scheduled[0]
                if handle._when >= end_time:
                    break
                handle = heapq.heappop(scheduled)
                handle._scheduled = False
                ready.append(handle)

            if self._selector._deferred is not None:
                self._run_until_deferred()
            ntodo = len(ready)
            if self._debug:
                for _ in range(ntodo):
                    handle = ready.popleft()
                    if not handle._cancelled:
                        self._run_debug(handle)
                handle = None
                return
            popleft = ready.popleft
            for _ in range(ntodo):
                handle = popleft()
                if handle._cancelled:
                    continue
                if type(handle) not in _PLAIN_HANDLES:
                    handle._run()
                    continue
                try:
                    handle._context.run(handle._callback, *handle._args)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    _handle_failed(handle, exc)
            handle = None  # breaks cycles when an exception occurs

    def _run_debug(self, handle: events.Handle) -> None:
        """One callback in debug mode, as BaseEventLoop._run_once runs it:
        the current handle set, a warning when it was slow."""
        self._current_handle: Optional[events.Handle] = handle
        try:
            t0 = self.time()
            handle._run()
            dt = self.time() - t0
            if dt >= self.slow_callback_duration:
                base_events.logger.warning(
                    "Executing %s took %.3f seconds", base_events._format_handle(handle), dt)
        finally:
            self._current_handle = None

    def _run_until_deferred(self) -> None:
        """Runs the callbacks that were ready before this turn's wait, then
        the wait's batch (the selector deferred it behind them: asyncio's
        order); what they all schedule runs in this turn too, as when the
        batch is dispatched inside the wait (a stop queued by this turn's
        callbacks must not strand a transport's connection_lost in the
        next one)."""
        deferred = self._selector._deferred_handle
        ready = self._ready
        while ready:
            handle = ready.popleft()
            if handle._cancelled:
                continue
            if self._debug:
                self._run_debug(handle)
            else:
                handle._run()
            if handle is deferred:
                return

    def _write_to_self(self) -> None:
        # From any thread: the zcn loop's eventfd wakes its wait (a
        # destroyed loop is found gone, never touched).
        handle = self._zcn._handle
        if handle is not None:
            _ffi.zcn_loop_call(handle, _NO_CALL, None)

    def close(self) -> None:
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        selector = self._selector
        selector._flush_writes()
        super().close()
        for tr in list(selector._transports.values()):
            tr._loop_closed()
        selector._transports.clear()
        self._zcn.close_loop()


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """The default policy (child watchers included) making zcn loops."""

    def _loop_factory(self) -> EventLoop:
        return EventLoop()


def new_event_loop(**zcn_loop_options: Any) -> EventLoop:
    """A new zcn asyncio loop: asyncio.run(main(), loop_factory=zcn.new_event_loop)."""
    return EventLoop(**zcn_loop_options)


def install() -> None:
    """Makes zcn the loop asyncio.run() and asyncio.new_event_loop() use."""
    asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main: Awaitable[_T], *, debug: Optional[bool] = None) -> _T:
    """asyncio.run(main) on a zcn loop (any Python from 3.8)."""
    if sys.version_info >= (3, 12):
        return asyncio.run(main, debug=debug, loop_factory=new_event_loop)  # type: ignore
    if events._get_running_loop() is not None:
        raise RuntimeError("zcn.run() cannot be called from a running event loop")
    if sys.version_info >= (3, 11):
        with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
            return runner.run(main)  # type: ignore[arg-type]
    loop = new_event_loop()  # pragma: no cover - Python 3.9 / 3.10
    try:  # pragma: no cover
        events.set_event_loop(loop)
        if debug is not None:
            loop.set_debug(debug)
        return loop.run_until_complete(main)
    finally:  # pragma: no cover
        try:
            _cancel_all_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            events.set_event_loop(None)
            loop.close()


def _cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:  # pragma: no cover
    to_cancel = asyncio.all_tasks(loop)
    if not to_cancel:
        return
    for task in to_cancel:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*to_cancel, return_exceptions=True))
    for task in to_cancel:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler({
                "message": "unhandled exception during zcn.run() shutdown",
                "exception": task.exception(),
                "task": task,
            })
