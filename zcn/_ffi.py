"""ctypes mirror of include/zero_copy_net.h.

One binding per C function, with the C prototype in the comment above it, so
this file can be checked against the header line by line. Nothing here is
public API: the classes in zcn.pool, zcn.ring and zcn.server wrap it.

The shared library is looked for, in order:
  1. the path in the environment variable ZCN_LIBRARY;
  2. inside the installed zcn package (importlib.resources), where
     `pip install .` puts it.
"""
from __future__ import annotations

import ctypes
import os
from ctypes import (
    CFUNCTYPE, POINTER, Structure, c_char_p, c_int, c_int32, c_int64, c_size_t,
    c_uint, c_uint16, c_uint32, c_uint64, c_void_p,
)

from .errors import check, error_from_code

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    from typing import Any

#: The header version these bindings mirror; the loaded library must match
#: major and minor.
VERSION_MAJOR, VERSION_MINOR, VERSION_PATCH = 0, 8, 0
VERSION_HEX = (VERSION_MAJOR << 16) | (VERSION_MINOR << 8) | VERSION_PATCH

ENV_LIBRARY = "ZCN_LIBRARY"
_LIB_NAMES = ("libzero_copy_net.so",)


def _candidates():
    env = os.environ.get(ENV_LIBRARY)
    if env:
        yield env
        return
    try:
        from importlib.resources import files
        pkg = files(__package__)
        for name in _LIB_NAMES:
            yield str(pkg / name)
    except Exception:  # pragma: no cover - importlib.resources unavailable
        here = os.path.dirname(os.path.abspath(__file__))
        for name in _LIB_NAMES:
            yield os.path.join(here, name)


def _load():
    tried = []  # (path, why it failed)
    for path in _candidates():
        if not os.path.exists(path):
            tried.append((path, "no such file"))
            continue
        try:
            return ctypes.CDLL(path, use_errno=True)
        except OSError as exc:
            tried.append((path, str(exc)))
    # Most often the source tree's zcn/ shadowing the installed package: the
    # message says which case it is and how to fix it.
    from ._load_error import describe
    raise ImportError(describe(os.path.dirname(os.path.abspath(__file__)), tried,
                               ENV_LIBRARY, os.environ.get(ENV_LIBRARY), _LIB_NAMES[0]))


lib = _load()


def _fn(name, restype, argtypes, errcheck=None):
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = argtypes
    if errcheck is not None:
        f.errcheck = errcheck
    return f


def _check_rc(result, func, args):
    """errcheck for functions returning ZCN_Error."""
    if result != 0:
        raise error_from_code(result, func.__name__)
    return result


ZCN_Error = c_int
ErrOut = POINTER(c_int)

# --- version and errors ---------------------------------------------------
# unsigned int zcn_version(void);
zcn_version = _fn("zcn_version", c_uint, [])
# const char *zcn_version_string(void);
zcn_version_string = _fn("zcn_version_string", c_char_p, [])
# const char *zcn_strerror(ZCN_Error err);
zcn_strerror = _fn("zcn_strerror", c_char_p, [ZCN_Error])
# const char *zcn_error_name(ZCN_Error err);
zcn_error_name = _fn("zcn_error_name", c_char_p, [ZCN_Error])
# const char *zcn_error_detail(void);
zcn_error_detail = _fn("zcn_error_detail", c_char_p, [])

_loaded = zcn_version()
if (_loaded >> 8) != (VERSION_HEX >> 8):
    raise ImportError(
        f"zcn: libzero_copy_net version {zcn_version_string().decode()} does not "
        f"match the Python bindings ({VERSION_MAJOR}.{VERSION_MINOR}.{VERSION_PATCH})"
        f"; loaded from {getattr(lib, '_name', '?')}"
    )

# --- ring -------------------------------------------------------------------
RING_NO_TUNING = 1 << 0
RING_SQPOLL = 1 << 1

# ZCN_Ring *zcn_ring_create(uint32_t entries, uint32_t flags, ZCN_Error *err);
zcn_ring_create = _fn("zcn_ring_create", c_void_p, [c_uint32, c_uint32, ErrOut])
# void zcn_ring_destroy(ZCN_Ring *ring);
zcn_ring_destroy = _fn("zcn_ring_destroy", None, [c_void_p])
# uint32_t zcn_ring_setup_flags(const ZCN_Ring *ring);
zcn_ring_setup_flags = _fn("zcn_ring_setup_flags", c_uint32, [c_void_p])
# uint32_t zcn_ring_features(const ZCN_Ring *ring);
zcn_ring_features = _fn("zcn_ring_features", c_uint32, [c_void_p])
# uint32_t zcn_ring_sq_entries(const ZCN_Ring *ring);
zcn_ring_sq_entries = _fn("zcn_ring_sq_entries", c_uint32, [c_void_p])
# uint32_t zcn_ring_cq_entries(const ZCN_Ring *ring);
zcn_ring_cq_entries = _fn("zcn_ring_cq_entries", c_uint32, [c_void_p])
# int zcn_ring_opcode_supported(const ZCN_Ring *ring, int opcode);
zcn_ring_opcode_supported = _fn("zcn_ring_opcode_supported", c_int, [c_void_p, c_int])
# ZCN_Error zcn_ring_nop(ZCN_Ring *ring, uint64_t count, uint32_t batch);
zcn_ring_nop = _fn("zcn_ring_nop", ZCN_Error, [c_void_p, c_uint64, c_uint32], _check_rc)
# void *zcn_ring_io_uring(ZCN_Ring *ring);
zcn_ring_io_uring = _fn("zcn_ring_io_uring", c_void_p, [c_void_p])

# --- buffer pool ------------------------------------------------------------
PAGE_SIZE = 4096
POOL_COUNT_MAX = 1 << 24
POOL_BYTES_MAX = 1 << 40


class PoolStats(Structure):
    # typedef struct ZCN_PoolStats {...} ZCN_PoolStats;
    _fields_ = [
        ("total", c_uint64),
        ("in_use", c_uint64),
        ("free", c_uint64),
        ("allocated", c_uint64),
        ("freed", c_uint64),
        ("failed", c_uint64),
        ("buffer_size", c_uint64),
    ]


POOL_THREAD_CACHES = 64
POOL_THREAD_CACHE_MAX = 1024
POOL_THREAD_CACHE_OFF = 0xFFFFFFFF


class PoolConfig(Structure):
    # typedef struct ZCN_PoolConfig {...} ZCN_PoolConfig;
    _fields_ = [
        ("buffer_size", c_size_t),
        ("count", c_size_t),
        ("memory", c_void_p),
        ("memory_size", c_size_t),
        ("thread_cache", c_uint32),
    ]


class PoolCacheStats(Structure):
    # typedef struct ZCN_PoolCacheStats {...} ZCN_PoolCacheStats;
    _fields_ = [
        ("thread_cache", c_uint64),
        ("caches_max", c_uint64),
        ("caches_in_use", c_uint64),
        ("cached", c_uint64),
        ("steals", c_uint64),
    ]


# ZCN_BufferPool *zcn_pool_create(size_t buffer_size, size_t count, ZCN_Error *err);
zcn_pool_create = _fn("zcn_pool_create", c_void_p, [c_size_t, c_size_t, ErrOut])
# ZCN_BufferPool *zcn_pool_create_in(void *memory, size_t memory_size,
#                                    size_t buffer_size, size_t count, ZCN_Error *err);
zcn_pool_create_in = _fn("zcn_pool_create_in", c_void_p,
                         [c_void_p, c_size_t, c_size_t, c_size_t, ErrOut])
# ZCN_BufferPool *zcn_pool_create_with(const ZCN_PoolConfig *config, ZCN_Error *err);
zcn_pool_create_with = _fn("zcn_pool_create_with", c_void_p, [POINTER(PoolConfig), ErrOut])
# void zcn_pool_destroy(ZCN_BufferPool *pool);
zcn_pool_destroy = _fn("zcn_pool_destroy", None, [c_void_p])
# void *zcn_pool_acquire(ZCN_BufferPool *pool);
zcn_pool_acquire = _fn("zcn_pool_acquire", c_void_p, [c_void_p])
# ZCN_Error zcn_pool_release(ZCN_BufferPool *pool, void *buffer);
zcn_pool_release = _fn("zcn_pool_release", ZCN_Error, [c_void_p, c_void_p], _check_rc)
# ZCN_Error zcn_pool_stats(const ZCN_BufferPool *pool, ZCN_PoolStats *out);
zcn_pool_stats = _fn("zcn_pool_stats", ZCN_Error, [c_void_p, POINTER(PoolStats)], _check_rc)
# ZCN_Error zcn_pool_flush(ZCN_BufferPool *pool);
zcn_pool_flush = _fn("zcn_pool_flush", ZCN_Error, [c_void_p], _check_rc)
# ZCN_Error zcn_pool_cache_stats(const ZCN_BufferPool *pool, ZCN_PoolCacheStats *out);
zcn_pool_cache_stats = _fn("zcn_pool_cache_stats", ZCN_Error,
                           [c_void_p, POINTER(PoolCacheStats)], _check_rc)
# size_t zcn_pool_buffer_size(const ZCN_BufferPool *pool);
zcn_pool_buffer_size = _fn("zcn_pool_buffer_size", c_size_t, [c_void_p])
# size_t zcn_pool_count(const ZCN_BufferPool *pool);
zcn_pool_count = _fn("zcn_pool_count", c_size_t, [c_void_p])
# void *zcn_pool_base(const ZCN_BufferPool *pool);
zcn_pool_base = _fn("zcn_pool_base", c_void_p, [c_void_p])
# int64_t zcn_pool_index_of(const ZCN_BufferPool *pool, const void *buffer);
zcn_pool_index_of = _fn("zcn_pool_index_of", c_int64, [c_void_p, c_void_p])
# ZCN_Error zcn_pool_register(ZCN_BufferPool *pool, ZCN_Ring *ring);
zcn_pool_register = _fn("zcn_pool_register", ZCN_Error, [c_void_p, c_void_p], _check_rc)
# ZCN_Error zcn_pool_unregister(ZCN_BufferPool *pool, ZCN_Ring *ring);
zcn_pool_unregister = _fn("zcn_pool_unregister", ZCN_Error, [c_void_p, c_void_p], _check_rc)


def create(func: Any, *args: Any) -> int:
    """Calls a C constructor taking a trailing `ZCN_Error *err`; raises on NULL."""
    err = c_int(0)
    handle = func(*args, ctypes.byref(err))
    if not handle:
        raise error_from_code(err.value or 10001, func.__name__)
    return handle

# --- TCP server ---------------------------------------------------------------
SERVER_REUSEPORT = 1 << 0
SERVER_HALF_CLOSE = 1 << 1
TIMEOUT_NEVER = 0xFFFFFFFF
EVENT_ACCEPT, EVENT_DATA, EVENT_CLOSE, EVENT_DRAIN, EVENT_EOF = 1, 2, 3, 4, 5
EVENT_CONNECT, EVENT_TIMER, EVENT_WATCH, EVENT_CALL = 6, 7, 8, 9
EVENT_DATAGRAMS = 10
WATCH_READ, WATCH_WRITE, WATCH_ERROR, WATCH_HUP = 1 << 0, 1 << 1, 1 << 2, 1 << 3
# ZCN_CONN_*: ZCN_ConnInfo.flags
CONN_EOF, CONN_SHUT_WR, CONN_CLOSING, CONN_WAITING, CONN_PAUSED, CONN_FORWARDING = (
    1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4, 1 << 5)
CONN_SPLICING = 1 << 6


class Config(Structure):
    # typedef struct ZCN_Config {...} ZCN_Config;
    _fields_ = [
        ("address", c_char_p),
        ("port", c_uint16),
        ("io_uring_entries", c_uint32),
        ("buffer_pool_size", c_uint32),
        ("buffer_size", c_uint32),
        ("backlog", c_uint32),
        ("connections_max", c_uint32),
        ("send_queue_max_bytes", c_uint32),
        ("idle_timeout_ms", c_uint32),
        ("tcp_nodelay", c_int32),
        ("flags", c_uint32),
        ("buffer_memory", c_void_p),
        ("buffer_memory_size", c_size_t),
        ("buffer_reserve", c_uint32),
        ("send_timeout_ms", c_uint32),
        ("conn_buffers_hard_max", c_uint32),
        ("tag", c_uint32),
        ("backend", c_uint32),
        ("busy_poll_us", c_uint32),
    ]


class ServerStats(Structure):
    # typedef struct ZCN_ServerStats {...} ZCN_ServerStats;
    _fields_ = [(name, c_uint64) for name in (
        "connections_active", "connections_accepted", "connections_closed",
        "connections_rejected", "idle_timeouts", "bytes_received", "bytes_sent",
        "recv_ops", "send_ops", "buffers_total", "buffers_in_use",
        "buffer_exhaustion_events", "sends_zero_copy", "sends_copied",
        "send_queue_full_events", "accept_backoffs",
        "buffers_held", "buffer_budget", "buffer_waiters", "evictions", "send_timeouts",
        "hard_limit_aborts", "aborts", "sends_coalesced", "eofs", "sends_direct",
    )]


class ConnInfo(Structure):
    # typedef struct ZCN_ConnInfo {...} ZCN_ConnInfo;
    _fields_ = [
        ("bytes_received", c_uint64),
        ("bytes_sent", c_uint64),
        ("queued_bytes", c_uint64),
        ("deferred_bytes", c_uint64),
        ("queued_buffers", c_uint32),
        ("deferred_buffers", c_uint32),
        ("buffers_held", c_uint32),
        ("buffer_cap", c_uint32),
        ("flags", c_uint32),
        ("reserved", c_uint32),
        ("send_stall_ms", c_uint64),
    ]


class Event(Structure):
    # typedef struct ZCN_Event {...} ZCN_Event;
    _fields_ = [
        ("type", c_uint32),
        ("fd", c_int32),
        ("len", c_uint32),
        ("tag", c_uint32),
        ("offset", c_uint64),
        ("data", c_void_p),
    ]


#: struct module format of one ZCN_Event (type, fd, len, tag, offset, data)
EVENT_FORMAT = "=IiIIQQ"

# typedef void (*ZCN_OnAccept)(void *user_data, int fd);
OnAccept = CFUNCTYPE(None, c_void_p, c_int)
# typedef void (*ZCN_OnData)(void *user_data, int fd, const uint8_t *data, size_t len);
OnData = CFUNCTYPE(None, c_void_p, c_int, c_void_p, c_size_t)
# typedef void (*ZCN_OnClose)(void *user_data, int fd);
OnClose = CFUNCTYPE(None, c_void_p, c_int)
# typedef void (*ZCN_OnDrain)(void *user_data, int fd);
OnDrain = CFUNCTYPE(None, c_void_p, c_int)
# typedef void (*ZCN_OnEof)(void *user_data, int fd);
OnEof = CFUNCTYPE(None, c_void_p, c_int)

# ZCN_Server *zcn_server_create(const ZCN_Config *config, ZCN_Error *err);
zcn_server_create = _fn("zcn_server_create", c_void_p, [POINTER(Config), ErrOut])
# ZCN_Error zcn_server_destroy(ZCN_Server *server);
zcn_server_destroy = _fn("zcn_server_destroy", ZCN_Error, [c_void_p], _check_rc)
# ZCN_Error zcn_server_set_callbacks(ZCN_Server *server, void *user_data,
#     ZCN_OnAccept on_accept, ZCN_OnData on_data, ZCN_OnClose on_close);
zcn_server_set_callbacks = _fn("zcn_server_set_callbacks", ZCN_Error,
                               [c_void_p, c_void_p, OnAccept, OnData, OnClose], _check_rc)
# ZCN_Error zcn_server_set_drain_callback(ZCN_Server *server, ZCN_OnDrain on_drain);
zcn_server_set_drain_callback = _fn("zcn_server_set_drain_callback", ZCN_Error,
                                    [c_void_p, OnDrain], _check_rc)
# ZCN_Error zcn_server_set_eof_callback(ZCN_Server *server, ZCN_OnEof on_eof);
zcn_server_set_eof_callback = _fn("zcn_server_set_eof_callback", ZCN_Error,
                                  [c_void_p, OnEof], _check_rc)
# ZCN_Error zcn_server_use_echo_handler(ZCN_Server *server);
zcn_server_use_echo_handler = _fn("zcn_server_use_echo_handler", ZCN_Error, [c_void_p], _check_rc)
# ZCN_Error zcn_server_start(ZCN_Server *server);
zcn_server_start = _fn("zcn_server_start", ZCN_Error, [c_void_p], _check_rc)
# uint16_t zcn_server_port(const ZCN_Server *server);
zcn_server_port = _fn("zcn_server_port", c_uint16, [c_void_p])
# ZCN_Backend zcn_server_backend(const ZCN_Server *server, const char **reason);
zcn_server_backend = _fn("zcn_server_backend", c_int, [c_void_p, POINTER(c_char_p)])
# int zcn_server_listen_fd(const ZCN_Server *server);
zcn_server_listen_fd = _fn("zcn_server_listen_fd", c_int, [c_void_p])
# ZCN_Error zcn_server_run_once(ZCN_Server *server);
zcn_server_run_once = _fn("zcn_server_run_once", ZCN_Error, [c_void_p])
# ZCN_Error zcn_server_run_once_timeout(ZCN_Server *server, int timeout_ms, uint32_t *handled_out);
zcn_server_run_once_timeout = _fn("zcn_server_run_once_timeout", ZCN_Error,
                                  [c_void_p, c_int, POINTER(c_uint32)])
# ZCN_Error zcn_server_run(ZCN_Server *server);
zcn_server_run = _fn("zcn_server_run", ZCN_Error, [c_void_p])
# ZCN_Error zcn_server_stop(ZCN_Server *server);
zcn_server_stop = _fn("zcn_server_stop", ZCN_Error, [c_void_p], _check_rc)
# ZCN_Error zcn_server_flush(ZCN_Server *server);
zcn_server_flush = _fn("zcn_server_flush", ZCN_Error, [c_void_p])
# ZCN_Error zcn_server_wakeup_fd(ZCN_Server *server, int *fd_out);
zcn_server_wakeup_fd = _fn("zcn_server_wakeup_fd", ZCN_Error, [c_void_p, POINTER(c_int)],
                           _check_rc)
# ZCN_Error zcn_server_poll(ZCN_Server *server, ZCN_Event *events, uint32_t capacity,
#                           int timeout_ms, uint32_t *count_out);
zcn_server_poll = _fn("zcn_server_poll", ZCN_Error,
                      [c_void_p, c_void_p, c_uint32, c_int, POINTER(c_uint32)])
# ZCN_Error zcn_server_send(ZCN_Server *server, int fd, const uint8_t *data, size_t len);
#   (no errcheck: the Python layer maps codes itself on the hot path)
zcn_server_send = _fn("zcn_server_send", ZCN_Error, [c_void_p, c_int, c_void_p, c_size_t])
# uint8_t *zcn_server_acquire_buffer(ZCN_Server *server, size_t *capacity_out);
zcn_server_acquire_buffer = _fn("zcn_server_acquire_buffer", c_void_p,
                                [c_void_p, POINTER(c_size_t)])
# ZCN_Error zcn_server_release_buffer(ZCN_Server *server, uint8_t *buffer);
zcn_server_release_buffer = _fn("zcn_server_release_buffer", ZCN_Error,
                                [c_void_p, c_void_p], _check_rc)
# ZCN_Error zcn_server_send_buffer(ZCN_Server *server, int fd, uint8_t *buffer, size_t len);
zcn_server_send_buffer = _fn("zcn_server_send_buffer", ZCN_Error,
                             [c_void_p, c_int, c_void_p, c_size_t])
# ZCN_Error zcn_server_close(ZCN_Server *server, int fd);
zcn_server_close = _fn("zcn_server_close", ZCN_Error, [c_void_p, c_int])
# ZCN_Error zcn_server_shutdown(ZCN_Server *server, int fd);
zcn_server_shutdown = _fn("zcn_server_shutdown", ZCN_Error, [c_void_p, c_int])
# ZCN_Error zcn_server_abort(ZCN_Server *server, int fd);
zcn_server_abort = _fn("zcn_server_abort", ZCN_Error, [c_void_p, c_int])
# ZCN_Error zcn_server_conn_info(const ZCN_Server *server, int fd, ZCN_ConnInfo *out);
zcn_server_conn_info = _fn("zcn_server_conn_info", ZCN_Error,
                           [c_void_p, c_int, POINTER(ConnInfo)])
# size_t zcn_server_queued_bytes(const ZCN_Server *server, int fd);
zcn_server_queued_bytes = _fn("zcn_server_queued_bytes", c_size_t, [c_void_p, c_int])
# ZCN_Error zcn_server_stats(const ZCN_Server *server, ZCN_ServerStats *out);
zcn_server_stats = _fn("zcn_server_stats", ZCN_Error, [c_void_p, POINTER(ServerStats)], _check_rc)
# const uint8_t *zcn_server_buffer_base(const ZCN_Server *server);
zcn_server_buffer_base = _fn("zcn_server_buffer_base", c_void_p, [c_void_p])
# size_t zcn_server_buffer_size(const ZCN_Server *server);
zcn_server_buffer_size = _fn("zcn_server_buffer_size", c_size_t, [c_void_p])

# --- Loop ----------------------------------------------------------------------
LOOP_TIMERS_MAX = 1 << 20
LOOP_WATCHES_MAX = 65536
LOOP_CALLS_MAX = 1 << 20
LOOP_BUSY_POLL_US_MAX = 10000


class LoopConfig(Structure):
    # typedef struct ZCN_LoopConfig {...} ZCN_LoopConfig;
    _fields_ = [
        ("io_uring_entries", c_uint32),
        ("buffer_pool_size", c_uint32),
        ("buffer_size", c_uint32),
        ("connections_max", c_uint32),
        ("send_queue_max_bytes", c_uint32),
        ("buffer_reserve", c_uint32),
        ("send_timeout_ms", c_uint32),
        ("conn_buffers_hard_max", c_uint32),
        ("timers_max", c_uint32),
        ("watches_max", c_uint32),
        ("calls_max", c_uint32),
        ("backend", c_uint32),
        ("buffer_memory", c_void_p),
        ("buffer_memory_size", c_size_t),
        ("busy_poll_us", c_uint32),
    ]


class LoopStats(Structure):
    # typedef struct ZCN_LoopStats {...} ZCN_LoopStats;
    _fields_ = [("tcp", ServerStats)] + [(name, c_uint64) for name in (
        "turns", "timers_active", "timers_fired", "watches_active", "watch_events",
        "calls_run", "calls_refused", "connects_started", "connects_failed",
        "connect_timeouts", "servers", "busy_polls_found", "busy_polls_expired",
    )]


# typedef void (*ZCN_OnConnect)(void *user_data, int fd, ZCN_Error result);
OnConnect = CFUNCTYPE(None, c_void_p, c_int, c_int)


class ConnectConfig(Structure):
    # typedef struct ZCN_ConnectConfig {...} ZCN_ConnectConfig;
    _fields_ = [
        ("address", c_char_p),
        ("port", c_uint16),
        ("local_port", c_uint16),
        ("local_address", c_char_p),
        ("timeout_ms", c_uint32),
        ("idle_timeout_ms", c_uint32),
        ("tcp_nodelay", c_int32),
        ("flags", c_uint32),
        ("tag", c_uint32),
        ("reserved", c_uint32),
        ("user_data", c_void_p),
        ("on_connect", OnConnect),
        ("on_data", OnData),
        ("on_eof", OnEof),
        ("on_close", OnClose),
        ("on_drain", OnDrain),
    ]


# ZCN_Loop *zcn_loop_create(const ZCN_LoopConfig *config, ZCN_Error *err);
zcn_loop_create = _fn("zcn_loop_create", c_void_p, [POINTER(LoopConfig), ErrOut])
# ZCN_Error zcn_loop_destroy(ZCN_Loop *loop);
zcn_loop_destroy = _fn("zcn_loop_destroy", ZCN_Error, [c_void_p], _check_rc)
# ZCN_Backend zcn_loop_backend(const ZCN_Loop *loop, const char **reason);
zcn_loop_backend = _fn("zcn_loop_backend", c_int, [c_void_p, POINTER(c_char_p)])
# ZCN_Error zcn_loop_run_once(ZCN_Loop *loop);
zcn_loop_run_once = _fn("zcn_loop_run_once", ZCN_Error, [c_void_p])
# ZCN_Error zcn_loop_run_once_timeout(ZCN_Loop *loop, int timeout_ms, uint32_t *handled_out);
zcn_loop_run_once_timeout = _fn("zcn_loop_run_once_timeout", ZCN_Error,
                                [c_void_p, c_int, POINTER(c_uint32)])
# ZCN_Error zcn_loop_run(ZCN_Loop *loop);
zcn_loop_run = _fn("zcn_loop_run", ZCN_Error, [c_void_p])
# ZCN_Error zcn_loop_poll(ZCN_Loop *loop, ZCN_Event *events, uint32_t capacity,
#                         int timeout_ms, uint32_t *count_out);
zcn_loop_poll = _fn("zcn_loop_poll", ZCN_Error,
                    [c_void_p, c_void_p, c_uint32, c_int, POINTER(c_uint32)])
# ZCN_Error zcn_loop_stop(ZCN_Loop *loop);
zcn_loop_stop = _fn("zcn_loop_stop", ZCN_Error, [c_void_p])
# ZCN_Error zcn_loop_flush(ZCN_Loop *loop);
zcn_loop_flush = _fn("zcn_loop_flush", ZCN_Error, [c_void_p])
# ZCN_Error zcn_loop_wakeup_fd(ZCN_Loop *loop, int *fd_out);
zcn_loop_wakeup_fd = _fn("zcn_loop_wakeup_fd", ZCN_Error, [c_void_p, POINTER(c_int)], _check_rc)
# ZCN_Error zcn_loop_stats(const ZCN_Loop *loop, ZCN_LoopStats *out);
zcn_loop_stats = _fn("zcn_loop_stats", ZCN_Error, [c_void_p, POINTER(LoopStats)], _check_rc)
# uint64_t zcn_loop_now_ms(const ZCN_Loop *loop);
zcn_loop_now_ms = _fn("zcn_loop_now_ms", c_uint64, [c_void_p])
# const uint8_t *zcn_loop_buffer_base(const ZCN_Loop *loop);
zcn_loop_buffer_base = _fn("zcn_loop_buffer_base", c_void_p, [c_void_p])
# size_t zcn_loop_buffer_size(const ZCN_Loop *loop);
zcn_loop_buffer_size = _fn("zcn_loop_buffer_size", c_size_t, [c_void_p])
# ZCN_Server *zcn_server_create_on(ZCN_Loop *loop, const ZCN_Config *config, ZCN_Error *err);
zcn_server_create_on = _fn("zcn_server_create_on", c_void_p, [c_void_p, POINTER(Config), ErrOut])
# ZCN_Loop *zcn_server_get_loop(const ZCN_Server *server);
zcn_server_get_loop = _fn("zcn_server_get_loop", c_void_p, [c_void_p])
# ZCN_Error zcn_loop_connect(ZCN_Loop *loop, const ZCN_ConnectConfig *config, int *fd_out);
zcn_loop_connect = _fn("zcn_loop_connect", ZCN_Error,
                       [c_void_p, POINTER(ConnectConfig), POINTER(c_int)])
# ZCN_Error zcn_loop_adopt(ZCN_Loop *loop, int fd, const ZCN_ConnectConfig *config);
zcn_loop_adopt = _fn("zcn_loop_adopt", ZCN_Error, [c_void_p, c_int, POINTER(ConnectConfig)])
# ZCN_Error zcn_loop_pause_recv(ZCN_Loop *loop, int fd);
zcn_loop_pause_recv = _fn("zcn_loop_pause_recv", ZCN_Error, [c_void_p, c_int])
# ZCN_Error zcn_loop_resume_recv(ZCN_Loop *loop, int fd);
zcn_loop_resume_recv = _fn("zcn_loop_resume_recv", ZCN_Error, [c_void_p, c_int])
# ZCN_Error zcn_loop_notify_drain(ZCN_Loop *loop, int fd, size_t below_bytes);
zcn_loop_notify_drain = _fn("zcn_loop_notify_drain", ZCN_Error, [c_void_p, c_int, c_size_t])
# ZCN_Error zcn_loop_send_many(ZCN_Loop *loop, const uint8_t *data, size_t data_len,
#     const ZCN_SendItem *items, uint32_t count, int32_t *results, uint32_t *failed_out);
# (ZCN_SendItem is {int32 fd; uint32 len}: zcn.aio passes an array('i') of pairs)
zcn_loop_send_many = _fn("zcn_loop_send_many", ZCN_Error,
                         [c_void_p, c_void_p, c_size_t, c_void_p, c_uint32, c_void_p,
                          POINTER(c_uint32)])
# ZCN_Error zcn_loop_send(ZCN_Loop *loop, int fd, const uint8_t *data, size_t len);
zcn_loop_send = _fn("zcn_loop_send", ZCN_Error, [c_void_p, c_int, c_void_p, c_size_t])
# uint8_t *zcn_loop_acquire_buffer(ZCN_Loop *loop, size_t *capacity_out);
zcn_loop_acquire_buffer = _fn("zcn_loop_acquire_buffer", c_void_p, [c_void_p, POINTER(c_size_t)])
# ZCN_Error zcn_loop_release_buffer(ZCN_Loop *loop, uint8_t *buffer);
zcn_loop_release_buffer = _fn("zcn_loop_release_buffer", ZCN_Error, [c_void_p, c_void_p],
                              _check_rc)
# ZCN_Error zcn_loop_send_buffer(ZCN_Loop *loop, int fd, uint8_t *buffer, size_t len);
zcn_loop_send_buffer = _fn("zcn_loop_send_buffer", ZCN_Error,
                           [c_void_p, c_int, c_void_p, c_size_t])
# ZCN_Error zcn_loop_close(ZCN_Loop *loop, int fd);
zcn_loop_close = _fn("zcn_loop_close", ZCN_Error, [c_void_p, c_int])
# ZCN_Error zcn_loop_shutdown(ZCN_Loop *loop, int fd);
zcn_loop_shutdown = _fn("zcn_loop_shutdown", ZCN_Error, [c_void_p, c_int])
# ZCN_Error zcn_loop_abort(ZCN_Loop *loop, int fd);
zcn_loop_abort = _fn("zcn_loop_abort", ZCN_Error, [c_void_p, c_int])
# ZCN_Error zcn_loop_conn_info(const ZCN_Loop *loop, int fd, ZCN_ConnInfo *out);
zcn_loop_conn_info = _fn("zcn_loop_conn_info", ZCN_Error, [c_void_p, c_int, POINTER(ConnInfo)])
# size_t zcn_loop_queued_bytes(const ZCN_Loop *loop, int fd);
zcn_loop_queued_bytes = _fn("zcn_loop_queued_bytes", c_size_t, [c_void_p, c_int])
# ZCN_FORWARD_*: zcn_loop_forward's flags
FORWARD_AUTO = 1 << 0
FORWARD_SPLICE = 1 << 1
# ZCN_Error zcn_loop_forward(ZCN_Loop *loop, int fd, int to_fd, uint32_t flags);
zcn_loop_forward = _fn("zcn_loop_forward", ZCN_Error, [c_void_p, c_int, c_int, c_uint32])
# typedef void (*ZCN_OnTimer)(void *user_data, uint64_t timer_id);
OnTimer = CFUNCTYPE(None, c_void_p, c_uint64)
# ZCN_Error zcn_loop_timer_start(ZCN_Loop *loop, uint64_t delay_ms, uint64_t repeat_ms,
#                                ZCN_OnTimer cb, void *user_data, uint64_t *id_out);
zcn_loop_timer_start = _fn("zcn_loop_timer_start", ZCN_Error,
                           [c_void_p, c_uint64, c_uint64, OnTimer, c_void_p, POINTER(c_uint64)])
# ZCN_Error zcn_loop_timer_cancel(ZCN_Loop *loop, uint64_t timer_id);
zcn_loop_timer_cancel = _fn("zcn_loop_timer_cancel", ZCN_Error, [c_void_p, c_uint64])
# typedef void (*ZCN_OnWatch)(void *user_data, int fd, uint32_t events, uint64_t watch_id);
OnWatch = CFUNCTYPE(None, c_void_p, c_int, c_uint32, c_uint64)
# ZCN_Error zcn_loop_watch(ZCN_Loop *loop, int fd, uint32_t events, ZCN_OnWatch cb,
#                          void *user_data, uint64_t *id_out);
zcn_loop_watch = _fn("zcn_loop_watch", ZCN_Error,
                     [c_void_p, c_int, c_uint32, OnWatch, c_void_p, POINTER(c_uint64)])
# ZCN_Error zcn_loop_unwatch(ZCN_Loop *loop, uint64_t watch_id);
zcn_loop_unwatch = _fn("zcn_loop_unwatch", ZCN_Error, [c_void_p, c_uint64])
# typedef void (*ZCN_Call)(void *arg);
Call = CFUNCTYPE(None, c_void_p)
# ZCN_Error zcn_loop_call(ZCN_Loop *loop, ZCN_Call fn, void *arg);
zcn_loop_call = _fn("zcn_loop_call", ZCN_Error, [c_void_p, Call, c_void_p])

# --- Group: one loop per thread ---------------------------------------------------
GROUP_THREADS_MAX = 1024
GROUP_PIN, GROUP_STEER_CPU = 1 << 0, 1 << 1


class GroupConfig(Structure):
    # typedef struct ZCN_GroupConfig {...} ZCN_GroupConfig;
    _fields_ = [
        ("threads", c_uint32),
        ("flags", c_uint32),
        ("cpus", POINTER(c_int)),
        ("loop", LoopConfig),
        ("listen", Config),
    ]


class GroupStats(Structure):
    # typedef struct ZCN_GroupStats {...} ZCN_GroupStats;
    _fields_ = [
        ("total", LoopStats),
        ("threads", c_uint32),
        ("running", c_uint32),
        ("loop_errors", c_uint32),
        ("reserved", c_uint32),
    ]


# ZCN_Group *zcn_group_create(const ZCN_GroupConfig *config, ZCN_Error *err);
zcn_group_create = _fn("zcn_group_create", c_void_p, [POINTER(GroupConfig), ErrOut])
# ZCN_Error zcn_group_use_echo_handler(ZCN_Group *group);
zcn_group_use_echo_handler = _fn("zcn_group_use_echo_handler", ZCN_Error, [c_void_p],
                                 _check_rc)
# ZCN_Error zcn_group_start(ZCN_Group *group);
zcn_group_start = _fn("zcn_group_start", ZCN_Error, [c_void_p], _check_rc)
# ZCN_Error zcn_group_stop(ZCN_Group *group);  (async-signal-safe: no errcheck)
zcn_group_stop = _fn("zcn_group_stop", ZCN_Error, [c_void_p])
# ZCN_Error zcn_group_wait(ZCN_Group *group, int timeout_ms);  (ZCN_ERR_TIMEOUT expected)
zcn_group_wait = _fn("zcn_group_wait", ZCN_Error, [c_void_p, c_int])
# ZCN_Error zcn_group_destroy(ZCN_Group *group);
zcn_group_destroy = _fn("zcn_group_destroy", ZCN_Error, [c_void_p], _check_rc)
# uint32_t zcn_group_size(const ZCN_Group *group);
zcn_group_size = _fn("zcn_group_size", c_uint32, [c_void_p])
# uint16_t zcn_group_port(const ZCN_Group *group);
zcn_group_port = _fn("zcn_group_port", c_uint16, [c_void_p])
# ZCN_Loop *zcn_group_loop(const ZCN_Group *group, uint32_t index);
zcn_group_loop = _fn("zcn_group_loop", c_void_p, [c_void_p, c_uint32])
# ZCN_Server *zcn_group_server(const ZCN_Group *group, uint32_t index);
zcn_group_server = _fn("zcn_group_server", c_void_p, [c_void_p, c_uint32])
# int zcn_group_cpu(const ZCN_Group *group, uint32_t index);
zcn_group_cpu = _fn("zcn_group_cpu", c_int, [c_void_p, c_uint32])
# ZCN_Error zcn_group_stats(const ZCN_Group *group, ZCN_GroupStats *out,
#                           ZCN_LoopStats *per_loop, uint32_t capacity);
zcn_group_stats = _fn("zcn_group_stats", ZCN_Error,
                      [c_void_p, POINTER(GroupStats), POINTER(LoopStats), c_uint32], _check_rc)

# --- UDP ------------------------------------------------------------------------
UDP_DATAGRAM_MAX_V4 = 65507
UDP_DATAGRAM_MAX_V6 = 65527
UDP_HEADROOM = 512
UDP_BUFFERS_MAX = 32768
UDP_SENDS_MAX = 65535
UDP_ENTRIES_MAX = 32768
UDP_LARGE_BUFFER_SIZE = 69632
UDP_LARGE_BUFFERS_MAX = 4096
UDP_REUSEADDR, UDP_REUSEPORT, UDP_BROADCAST, UDP_V6ONLY = 1 << 0, 1 << 1, 1 << 2, 1 << 3
UDP_NO_GSO = 1 << 4
UDP_SMALL_ONLY = 1 << 5
# ZCN_UDP_RECV_*: ZCN_UdpConfig.recv_mode
UDP_RECV_READINESS, UDP_RECV_MULTISHOT = 1, 2
UDP_TRUNCATED = 1 << 0
UDP_ERROR = 1 << 1


class UdpConfig(Structure):
    # typedef struct ZCN_UdpConfig {...} ZCN_UdpConfig;
    _fields_ = [
        ("address", c_char_p),
        ("port", c_uint16),
        ("connect_address", c_char_p),
        ("connect_port", c_uint16),
        ("io_uring_entries", c_uint32),
        ("buffer_count", c_uint32),
        ("buffer_size", c_uint32),
        ("sends_max", c_uint32),
        ("rcvbuf", c_int32),
        ("sndbuf", c_int32),
        ("flags", c_uint32),
        ("buffer_memory", c_void_p),
        ("buffer_memory_size", c_size_t),
        ("recv_mode", c_uint32),
        ("large_buffer_count", c_uint32),
        ("backend", c_uint32),
    ]


class UdpStats(Structure):
    # typedef struct ZCN_UdpStats {...} ZCN_UdpStats;
    _fields_ = [(name, c_uint64) for name in (
        "datagrams_received", "bytes_received", "datagrams_sent", "bytes_sent",
        "truncated", "recv_exhaustion_events", "kernel_drops", "send_exhaustion_drops",
        "send_errors", "recv_errors", "sends_zero_copy", "sends_copied",
        "buffers_total", "buffers_in_use",
    )] + [("last_send_error", c_int32), ("last_recv_error", c_int32)] + [
        (name, c_uint64) for name in (
            "gso_sends", "large_datagrams", "large_buffers_total", "large_buffers_in_use")]


class UdpEvent(Structure):
    # typedef struct ZCN_UdpEvent {...} ZCN_UdpEvent;
    _fields_ = [
        ("len", c_uint32),
        ("flags", c_uint32),
        ("peer_len", c_uint32),
        ("full_len", c_uint32),
        ("offset", c_uint64),
        ("data", c_void_p),
        ("peer", ctypes.c_uint8 * 32),
    ]


#: struct module format of one ZCN_UdpEvent (len, flags, peer_len, full_len,
#: offset, data, peer bytes)
UDP_EVENT_FORMAT = "=IIIIQQ32s"


class UdpMessage(Structure):
    # typedef struct ZCN_UdpMessage {...} ZCN_UdpMessage;
    _fields_ = [
        ("addr", c_void_p),
        ("addr_len", c_uint32),  # socklen_t
        ("data", c_void_p),
        ("len", c_size_t),
    ]


# typedef void (*ZCN_OnDatagram)(void *user_data, const struct sockaddr *peer,
#     socklen_t peer_len, const uint8_t *data, size_t len, uint32_t flags);
OnDatagram = CFUNCTYPE(None, c_void_p, c_void_p, c_uint32, c_void_p, c_size_t, c_uint32)

# ZCN_UdpSocket *zcn_udp_create(const ZCN_UdpConfig *config, ZCN_Error *err);
zcn_udp_create = _fn("zcn_udp_create", c_void_p, [POINTER(UdpConfig), ErrOut])
# ZCN_UdpSocket *zcn_udp_create_on_server(ZCN_Server *server, const ZCN_UdpConfig *config,
#                                         ZCN_Error *err);
zcn_udp_create_on_server = _fn("zcn_udp_create_on_server", c_void_p,
                               [c_void_p, POINTER(UdpConfig), ErrOut])
# ZCN_UdpSocket *zcn_udp_create_on(ZCN_Loop *loop, const ZCN_UdpConfig *config, ZCN_Error *err);
zcn_udp_create_on = _fn("zcn_udp_create_on", c_void_p, [c_void_p, POINTER(UdpConfig), ErrOut])
# ZCN_UdpSocket *zcn_udp_adopt_on(ZCN_Loop *loop, int fd, const ZCN_UdpConfig *config,
#                                 ZCN_Error *err);
zcn_udp_adopt_on = _fn("zcn_udp_adopt_on", c_void_p, [c_void_p, c_int, POINTER(UdpConfig), ErrOut])
# ZCN_Error zcn_udp_destroy(ZCN_UdpSocket *sock);
zcn_udp_destroy = _fn("zcn_udp_destroy", ZCN_Error, [c_void_p], _check_rc)
# ZCN_Error zcn_udp_set_callback(ZCN_UdpSocket *sock, void *user_data, ZCN_OnDatagram on_datagram);
zcn_udp_set_callback = _fn("zcn_udp_set_callback", ZCN_Error,
                           [c_void_p, c_void_p, OnDatagram], _check_rc)
# ZCN_Error zcn_udp_use_echo_handler(ZCN_UdpSocket *sock);
zcn_udp_use_echo_handler = _fn("zcn_udp_use_echo_handler", ZCN_Error, [c_void_p], _check_rc)
# uint16_t zcn_udp_port(const ZCN_UdpSocket *sock);
zcn_udp_port = _fn("zcn_udp_port", c_uint16, [c_void_p])
# ZCN_Backend zcn_udp_backend(const ZCN_UdpSocket *sock, const char **reason);
zcn_udp_backend = _fn("zcn_udp_backend", c_int, [c_void_p, POINTER(c_char_p)])
# int zcn_udp_fd(const ZCN_UdpSocket *sock);
zcn_udp_fd = _fn("zcn_udp_fd", c_int, [c_void_p])
# ZCN_Error zcn_udp_local_address(const ZCN_UdpSocket *sock, struct sockaddr *addr,
#                                 socklen_t *len_inout);
zcn_udp_local_address = _fn("zcn_udp_local_address", ZCN_Error,
                            [c_void_p, c_void_p, POINTER(c_uint32)], _check_rc)
# size_t zcn_udp_buffer_size(const ZCN_UdpSocket *sock);
zcn_udp_buffer_size = _fn("zcn_udp_buffer_size", c_size_t, [c_void_p])
# size_t zcn_udp_datagram_capacity(const ZCN_UdpSocket *sock);
zcn_udp_datagram_capacity = _fn("zcn_udp_datagram_capacity", c_size_t, [c_void_p])
# size_t zcn_udp_memory_size(const ZCN_UdpConfig *config);
zcn_udp_memory_size = _fn("zcn_udp_memory_size", c_size_t, [POINTER(UdpConfig)])
# const uint8_t *zcn_udp_buffer_base(const ZCN_UdpSocket *sock);
zcn_udp_buffer_base = _fn("zcn_udp_buffer_base", c_void_p, [c_void_p])
# ZCN_Error zcn_udp_sendto(ZCN_UdpSocket *sock, const struct sockaddr *addr, socklen_t addr_len,
#                          const uint8_t *data, size_t len);
#   (no errcheck: the Python layer maps codes itself on the hot path)
zcn_udp_sendto = _fn("zcn_udp_sendto", ZCN_Error,
                     [c_void_p, c_void_p, c_uint32, c_void_p, c_size_t])
# ZCN_Error zcn_udp_send(ZCN_UdpSocket *sock, const uint8_t *data, size_t len);
zcn_udp_send = _fn("zcn_udp_send", ZCN_Error, [c_void_p, c_void_p, c_size_t])
# uint8_t *zcn_udp_acquire_buffer(ZCN_UdpSocket *sock, size_t *capacity_out);
zcn_udp_acquire_buffer = _fn("zcn_udp_acquire_buffer", c_void_p, [c_void_p, POINTER(c_size_t)])
# ZCN_Error zcn_udp_release_buffer(ZCN_UdpSocket *sock, uint8_t *buffer);
zcn_udp_release_buffer = _fn("zcn_udp_release_buffer", ZCN_Error, [c_void_p, c_void_p], _check_rc)
# ZCN_Error zcn_udp_sendto_buffer(ZCN_UdpSocket *sock, const struct sockaddr *addr,
#                                 socklen_t addr_len, uint8_t *buffer, size_t len);
zcn_udp_sendto_buffer = _fn("zcn_udp_sendto_buffer", ZCN_Error,
                            [c_void_p, c_void_p, c_uint32, c_void_p, c_size_t])
# ZCN_Error zcn_udp_sendto_batch(ZCN_UdpSocket *sock, const ZCN_UdpMessage *msgs, size_t count,
#                                size_t *queued_out);
zcn_udp_sendto_batch = _fn("zcn_udp_sendto_batch", ZCN_Error,
                           [c_void_p, c_void_p, c_size_t, POINTER(c_size_t)])
# ZCN_Error zcn_udp_set_autoflush(ZCN_UdpSocket *sock, int on);
zcn_udp_set_autoflush = _fn("zcn_udp_set_autoflush", ZCN_Error, [c_void_p, c_int], _check_rc)
# ZCN_Error zcn_udp_flush(ZCN_UdpSocket *sock);
zcn_udp_flush = _fn("zcn_udp_flush", ZCN_Error, [c_void_p])
# ZCN_Error zcn_udp_join_multicast(ZCN_UdpSocket *sock, const char *group,
#                                  const char *interface_address, uint32_t interface_index);
zcn_udp_join_multicast = _fn("zcn_udp_join_multicast", ZCN_Error,
                             [c_void_p, c_char_p, c_char_p, c_uint32], _check_rc)
# ZCN_Error zcn_udp_leave_multicast(ZCN_UdpSocket *sock, const char *group,
#                                   const char *interface_address, uint32_t interface_index);
zcn_udp_leave_multicast = _fn("zcn_udp_leave_multicast", ZCN_Error,
                              [c_void_p, c_char_p, c_char_p, c_uint32], _check_rc)
# ZCN_Error zcn_udp_run_once(ZCN_UdpSocket *sock);
zcn_udp_run_once = _fn("zcn_udp_run_once", ZCN_Error, [c_void_p])
# ZCN_Error zcn_udp_run_once_timeout(ZCN_UdpSocket *sock, int timeout_ms, uint32_t *handled_out);
zcn_udp_run_once_timeout = _fn("zcn_udp_run_once_timeout", ZCN_Error,
                               [c_void_p, c_int, POINTER(c_uint32)])
# ZCN_Error zcn_udp_run(ZCN_UdpSocket *sock);
zcn_udp_run = _fn("zcn_udp_run", ZCN_Error, [c_void_p])
# ZCN_Error zcn_udp_stop(ZCN_UdpSocket *sock);
zcn_udp_stop = _fn("zcn_udp_stop", ZCN_Error, [c_void_p])
# ZCN_Error zcn_udp_wakeup_fd(ZCN_UdpSocket *sock, int *fd_out);
zcn_udp_wakeup_fd = _fn("zcn_udp_wakeup_fd", ZCN_Error, [c_void_p, POINTER(c_int)], _check_rc)
# ZCN_Error zcn_udp_poll(ZCN_UdpSocket *sock, ZCN_UdpEvent *events, uint32_t capacity,
#                        int timeout_ms, uint32_t *count_out);
zcn_udp_poll = _fn("zcn_udp_poll", ZCN_Error,
                   [c_void_p, c_void_p, c_uint32, c_int, POINTER(c_uint32)])
# ZCN_Error zcn_udp_stats(const ZCN_UdpSocket *sock, ZCN_UdpStats *out);
zcn_udp_stats = _fn("zcn_udp_stats", ZCN_Error, [c_void_p, POINTER(UdpStats)], _check_rc)
# ZCN_Error zcn_udp_set_batch(ZCN_UdpSocket *sock, ZCN_UdpEvent *events, uint32_t capacity,
#                             uint32_t tag);
zcn_udp_set_batch = _fn("zcn_udp_set_batch", ZCN_Error, [c_void_p, c_void_p, c_uint32, c_uint32],
                        _check_rc)
# ZCN_Error zcn_udp_pause_recv(ZCN_UdpSocket *sock);
zcn_udp_pause_recv = _fn("zcn_udp_pause_recv", ZCN_Error, [c_void_p], _check_rc)
# ZCN_Error zcn_udp_resume_recv(ZCN_UdpSocket *sock);
zcn_udp_resume_recv = _fn("zcn_udp_resume_recv", ZCN_Error, [c_void_p], _check_rc)

# --- demo servers (examples/http_server.c, examples/resp_server.c) -----------


class DemoConfig(Structure):
    # typedef struct ZCN_DemoConfig {...} ZCN_DemoConfig;
    _fields_ = [
        ("address", c_char_p),
        ("port", c_uint16),
        ("reserved", c_uint16),
        ("backlog", c_uint32),
        ("connections_max", c_uint32),
        ("header_max_bytes", c_uint32),
        ("body_max_bytes", c_uint32),
        ("keys_max", c_uint32),
        ("bulk_max_bytes", c_uint32),
        ("args_max", c_uint32),
        ("key_max_bytes", c_uint32),
        ("inline_max_bytes", c_uint32),
        ("memory_max_bytes", c_uint64),
    ]


class DemoStats(Structure):
    # typedef struct ZCN_DemoStats {...} ZCN_DemoStats;
    _fields_ = [(name, c_uint64) for name in (
        "connections", "requests", "protocol_errors", "limit_errors", "output_aborts",
        "rejected", "keys", "memory_bytes", "output_holds", "hold_aborts")]


# ZCN_Demo *zcn_demo_http_create(ZCN_Loop *loop, const ZCN_DemoConfig *config, ZCN_Error *err);
zcn_demo_http_create = _fn("zcn_demo_http_create", c_void_p,
                           [c_void_p, POINTER(DemoConfig), ErrOut])
# ZCN_Demo *zcn_demo_resp_create(ZCN_Loop *loop, const ZCN_DemoConfig *config, ZCN_Error *err);
zcn_demo_resp_create = _fn("zcn_demo_resp_create", c_void_p,
                           [c_void_p, POINTER(DemoConfig), ErrOut])
# uint16_t zcn_demo_port(const ZCN_Demo *demo);
zcn_demo_port = _fn("zcn_demo_port", c_uint16, [c_void_p])
# ZCN_Error zcn_demo_stats(const ZCN_Demo *demo, ZCN_DemoStats *out);
zcn_demo_stats = _fn("zcn_demo_stats", ZCN_Error, [c_void_p, POINTER(DemoStats)], _check_rc)
# ZCN_Error zcn_demo_destroy(ZCN_Demo *demo);
zcn_demo_destroy = _fn("zcn_demo_destroy", ZCN_Error, [c_void_p], _check_rc)
