//! Raw declarations mirroring include/zero_copy_net.h (errors, buffer pool,
//! TCP server). One item per C declaration, in the header's order; the C
//! prototype is the doc comment where the mapping is not obvious. Everything
//! here is `unsafe` to call; the safe API is in the crate root.
#![allow(non_camel_case_types)]

use std::os::raw::{c_char, c_int, c_uint, c_void};

// ---- Version -----------------------------------------------------------

pub const ZCN_VERSION_MAJOR: c_uint = 0;
pub const ZCN_VERSION_MINOR: c_uint = 8;
pub const ZCN_VERSION_PATCH: c_uint = 0;
pub const ZCN_VERSION_HEX: c_uint =
    (ZCN_VERSION_MAJOR << 16) | (ZCN_VERSION_MINOR << 8) | ZCN_VERSION_PATCH;

// ---- Errors --------------------------------------------------------------

/// `typedef enum ZCN_Error`: 0 = ok, 1..=4095 a Linux errno, library codes
/// from ZCN_ERR_BASE up. A C enum with these values is an `int`.
pub type ZCN_Error = c_int;
pub const ZCN_OK: ZCN_Error = 0;
pub const ZCN_ERRNO_MAX: ZCN_Error = 4095;
pub const ZCN_ERR_BASE: ZCN_Error = 10000;
pub const ZCN_ERR_INVALID_ARGUMENT: ZCN_Error = ZCN_ERR_BASE + 1;
pub const ZCN_ERR_EXHAUSTED: ZCN_Error = ZCN_ERR_BASE + 2;
pub const ZCN_ERR_DOUBLE_FREE: ZCN_Error = ZCN_ERR_BASE + 3;
pub const ZCN_ERR_FOREIGN_POINTER: ZCN_Error = ZCN_ERR_BASE + 4;
pub const ZCN_ERR_NOT_STARTED: ZCN_Error = ZCN_ERR_BASE + 5;
pub const ZCN_ERR_ALREADY_STARTED: ZCN_Error = ZCN_ERR_BASE + 6;
pub const ZCN_ERR_CLOSED: ZCN_Error = ZCN_ERR_BASE + 7;
pub const ZCN_ERR_QUEUE_FULL: ZCN_Error = ZCN_ERR_BASE + 8;
pub const ZCN_ERR_BUSY: ZCN_Error = ZCN_ERR_BASE + 9;
pub const ZCN_ERR_URING_DISABLED: ZCN_Error = ZCN_ERR_BASE + 10;
pub const ZCN_ERR_URING_BLOCKED: ZCN_Error = ZCN_ERR_BASE + 11;
pub const ZCN_ERR_URING_UNSUPPORTED: ZCN_Error = ZCN_ERR_BASE + 12;
pub const ZCN_ERR_MEMLOCK: ZCN_Error = ZCN_ERR_BASE + 13;
pub const ZCN_ERR_TIMEOUT: ZCN_Error = ZCN_ERR_BASE + 14;

// ---- BufferPool ------------------------------------------------------------

#[repr(C)]
pub struct ZCN_BufferPool {
    _opaque: [u8; 0],
}

pub const ZCN_PAGE_SIZE: usize = 4096;

#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ZCN_PoolStats {
    pub total: u64,
    pub in_use: u64,
    pub free: u64,
    pub allocated: u64,
    pub freed: u64,
    pub failed: u64,
    pub buffer_size: u64,
}

// ---- TcpServer -------------------------------------------------------------

#[repr(C)]
pub struct ZCN_Server {
    _opaque: [u8; 0],
}

pub const ZCN_SERVER_REUSEPORT: u32 = 1 << 0;
pub const ZCN_SERVER_HALF_CLOSE: u32 = 1 << 1;
pub const ZCN_TIMEOUT_NEVER: u32 = u32::MAX;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ZCN_Config {
    pub address: *const c_char,
    pub port: u16,
    pub io_uring_entries: u32,
    pub buffer_pool_size: u32,
    pub buffer_size: u32,
    pub backlog: u32,
    pub connections_max: u32,
    pub send_queue_max_bytes: u32,
    pub idle_timeout_ms: u32,
    pub tcp_nodelay: i32,
    pub flags: u32,
    pub buffer_memory: *mut c_void,
    pub buffer_memory_size: usize,
    pub buffer_reserve: u32,
    pub send_timeout_ms: u32,
    pub conn_buffers_hard_max: u32,
    pub tag: u32,
    /// A `ZCN_Backend` (0 = auto, 1 = io_uring, 2 = epoll).
    pub backend: u32,
    /// Busy polling of the server's loop in microseconds (0 = off; at most 10000).
    pub busy_poll_us: u32,
}

/// `typedef void (*ZCN_OnAccept)(void *user_data, int fd);` (also OnClose, OnDrain)
pub type ZCN_OnFd = Option<unsafe extern "C" fn(user_data: *mut c_void, fd: c_int)>;
pub type ZCN_OnAccept = ZCN_OnFd;
pub type ZCN_OnClose = ZCN_OnFd;
pub type ZCN_OnDrain = ZCN_OnFd;
/// `typedef void (*ZCN_OnData)(void *user_data, int fd, const uint8_t *data, size_t len);`
pub type ZCN_OnData =
    Option<unsafe extern "C" fn(user_data: *mut c_void, fd: c_int, data: *const u8, len: usize)>;

#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ZCN_ServerStats {
    pub connections_active: u64,
    pub connections_accepted: u64,
    pub connections_closed: u64,
    pub connections_rejected: u64,
    pub idle_timeouts: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub recv_ops: u64,
    pub send_ops: u64,
    pub buffers_total: u64,
    pub buffers_in_use: u64,
    pub buffer_exhaustion_events: u64,
    pub sends_zero_copy: u64,
    pub sends_copied: u64,
    pub send_queue_full_events: u64,
    pub accept_backoffs: u64,
    pub buffers_held: u64,
    pub buffer_budget: u64,
    pub buffer_waiters: u64,
    pub evictions: u64,
    pub send_timeouts: u64,
    pub hard_limit_aborts: u64,
    pub aborts: u64,
    pub sends_coalesced: u64,
    pub eofs: u64,
    pub sends_direct: u64,
}

pub const ZCN_EVENT_ACCEPT: u32 = 1;
pub const ZCN_EVENT_DATA: u32 = 2;
pub const ZCN_EVENT_CLOSE: u32 = 3;
pub const ZCN_EVENT_DRAIN: u32 = 4;
pub const ZCN_EVENT_EOF: u32 = 5;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ZCN_Event {
    pub type_: u32,
    pub fd: i32,
    pub len: u32,
    pub tag: u32,
    pub offset: u64,
    pub data: *const u8,
}

extern "C" {
    pub fn zcn_version() -> c_uint;
    pub fn zcn_version_string() -> *const c_char;

    pub fn zcn_strerror(err: ZCN_Error) -> *const c_char;
    pub fn zcn_error_name(err: ZCN_Error) -> *const c_char;
    pub fn zcn_error_detail() -> *const c_char;

    pub fn zcn_pool_create(buffer_size: usize, count: usize, err: *mut ZCN_Error)
        -> *mut ZCN_BufferPool;
    pub fn zcn_pool_create_in(
        memory: *mut c_void,
        memory_size: usize,
        buffer_size: usize,
        count: usize,
        err: *mut ZCN_Error,
    ) -> *mut ZCN_BufferPool;
    pub fn zcn_pool_destroy(pool: *mut ZCN_BufferPool);
    pub fn zcn_pool_acquire(pool: *mut ZCN_BufferPool) -> *mut c_void;
    pub fn zcn_pool_release(pool: *mut ZCN_BufferPool, buffer: *mut c_void) -> ZCN_Error;
    pub fn zcn_pool_stats(pool: *const ZCN_BufferPool, out: *mut ZCN_PoolStats) -> ZCN_Error;
    pub fn zcn_pool_buffer_size(pool: *const ZCN_BufferPool) -> usize;
    pub fn zcn_pool_count(pool: *const ZCN_BufferPool) -> usize;
    pub fn zcn_pool_base(pool: *const ZCN_BufferPool) -> *mut c_void;
    pub fn zcn_pool_index_of(pool: *const ZCN_BufferPool, buffer: *const c_void) -> i64;

    pub fn zcn_server_create(config: *const ZCN_Config, err: *mut ZCN_Error) -> *mut ZCN_Server;
    pub fn zcn_server_destroy(server: *mut ZCN_Server) -> ZCN_Error;
    pub fn zcn_server_set_callbacks(
        server: *mut ZCN_Server,
        user_data: *mut c_void,
        on_accept: ZCN_OnAccept,
        on_data: ZCN_OnData,
        on_close: ZCN_OnClose,
    ) -> ZCN_Error;
    pub fn zcn_server_set_drain_callback(server: *mut ZCN_Server, on_drain: ZCN_OnDrain)
        -> ZCN_Error;
    pub fn zcn_server_use_echo_handler(server: *mut ZCN_Server) -> ZCN_Error;
    pub fn zcn_server_start(server: *mut ZCN_Server) -> ZCN_Error;
    pub fn zcn_server_port(server: *const ZCN_Server) -> u16;
    pub fn zcn_server_listen_fd(server: *const ZCN_Server) -> c_int;
    pub fn zcn_server_run_once(server: *mut ZCN_Server) -> ZCN_Error;
    pub fn zcn_server_run_once_timeout(
        server: *mut ZCN_Server,
        timeout_ms: c_int,
        handled_out: *mut u32,
    ) -> ZCN_Error;
    pub fn zcn_server_run(server: *mut ZCN_Server) -> ZCN_Error;
    pub fn zcn_server_stop(server: *mut ZCN_Server) -> ZCN_Error;
    pub fn zcn_server_poll(
        server: *mut ZCN_Server,
        events: *mut ZCN_Event,
        capacity: u32,
        timeout_ms: c_int,
        count_out: *mut u32,
    ) -> ZCN_Error;
    pub fn zcn_server_send(server: *mut ZCN_Server, fd: c_int, data: *const u8, len: usize)
        -> ZCN_Error;
    pub fn zcn_server_acquire_buffer(server: *mut ZCN_Server, capacity_out: *mut usize)
        -> *mut u8;
    pub fn zcn_server_release_buffer(server: *mut ZCN_Server, buffer: *mut u8) -> ZCN_Error;
    pub fn zcn_server_send_buffer(
        server: *mut ZCN_Server,
        fd: c_int,
        buffer: *mut u8,
        len: usize,
    ) -> ZCN_Error;
    pub fn zcn_server_close(server: *mut ZCN_Server, fd: c_int) -> ZCN_Error;
    pub fn zcn_server_queued_bytes(server: *const ZCN_Server, fd: c_int) -> usize;
    pub fn zcn_server_stats(server: *const ZCN_Server, out: *mut ZCN_ServerStats) -> ZCN_Error;
    pub fn zcn_server_buffer_base(server: *const ZCN_Server) -> *const u8;
    pub fn zcn_server_buffer_size(server: *const ZCN_Server) -> usize;
}
