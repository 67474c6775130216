//! A safe Rust wrapper over libzero_copy_net, with no dependencies.
//!
//! * [`Server`] owns a `ZCN_Server`: dropping it destroys the server. It is
//!   neither `Send` nor `Sync`, because one thread drives a server: create it
//!   on the thread that runs it. [`Stopper`] (`Send + Sync + Clone`) stops it
//!   from any other thread.
//! * The handler is one Rust closure, `FnMut(&Context, Event<'_>)`, boxed and
//!   owned by the `Server`; its address is the C `user_data`. Received bytes
//!   arrive as `Event::Data(fd, &[u8])`, a slice borrowed from the library's
//!   receive buffer and valid only during the call (the borrow checker keeps
//!   it there). `Context::send` of that slice moves the buffer to the send
//!   queue without copying.
//! * Errors are [`Error`]: `Os(errno)` or a library condition.
//! * [`BufferPool`] is the lock-free pool; it is `Send + Sync` and hands out
//!   [`PoolBuffer`] guards that give the buffer back on drop.
//!
//! See docs/RUST_INTEGRATION.md.

pub mod sys;

use std::any::Any;
use std::ffi::{CStr, CString};
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::os::raw::{c_int, c_void};
use std::panic::{self, AssertUnwindSafe};
use std::ptr::{self, NonNull};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A connection, as the kernel's file descriptor number. Valid from
/// `Event::Accept` until `Event::Close`; the number may be reused later.
pub type Fd = i32;

// ---- errors ------------------------------------------------------------

/// A `ZCN_Error` other than `ZCN_OK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Error {
    /// A Linux errno from a failed system call (e.g. `libc::EADDRINUSE`).
    Os(i32),
    InvalidArgument,
    Exhausted,
    DoubleFree,
    ForeignPointer,
    NotStarted,
    AlreadyStarted,
    Closed,
    QueueFull,
    Busy,
    /// io_uring disabled by sysctl kernel.io_uring_disabled.
    UringDisabled,
    /// io_uring_setup refused (seccomp, kernel.io_uring_group).
    UringBlocked,
    /// No io_uring, or a feature this needs is missing.
    UringUnsupported,
    /// RLIMIT_MEMLOCK too low.
    Memlock,
    Timeout,
    /// A code this crate does not know (a newer library).
    Unknown(i32),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Maps a C code; `None` for `ZCN_OK`.
    pub fn from_code(code: sys::ZCN_Error) -> Option<Error> {
        use Error::*;
        Some(match code {
            sys::ZCN_OK => return None,
            1..=sys::ZCN_ERRNO_MAX => Os(code),
            sys::ZCN_ERR_INVALID_ARGUMENT => InvalidArgument,
            sys::ZCN_ERR_EXHAUSTED => Exhausted,
            sys::ZCN_ERR_DOUBLE_FREE => DoubleFree,
            sys::ZCN_ERR_FOREIGN_POINTER => ForeignPointer,
            sys::ZCN_ERR_NOT_STARTED => NotStarted,
            sys::ZCN_ERR_ALREADY_STARTED => AlreadyStarted,
            sys::ZCN_ERR_CLOSED => Closed,
            sys::ZCN_ERR_QUEUE_FULL => QueueFull,
            sys::ZCN_ERR_BUSY => Busy,
            sys::ZCN_ERR_URING_DISABLED => UringDisabled,
            sys::ZCN_ERR_URING_BLOCKED => UringBlocked,
            sys::ZCN_ERR_URING_UNSUPPORTED => UringUnsupported,
            sys::ZCN_ERR_MEMLOCK => Memlock,
            sys::ZCN_ERR_TIMEOUT => Timeout,
            other => Unknown(other),
        })
    }

    /// The C code.
    pub fn code(self) -> sys::ZCN_Error {
        use Error::*;
        match self {
            Os(errno) | Unknown(errno) => errno,
            InvalidArgument => sys::ZCN_ERR_INVALID_ARGUMENT,
            Exhausted => sys::ZCN_ERR_EXHAUSTED,
            DoubleFree => sys::ZCN_ERR_DOUBLE_FREE,
            ForeignPointer => sys::ZCN_ERR_FOREIGN_POINTER,
            NotStarted => sys::ZCN_ERR_NOT_STARTED,
            AlreadyStarted => sys::ZCN_ERR_ALREADY_STARTED,
            Closed => sys::ZCN_ERR_CLOSED,
            QueueFull => sys::ZCN_ERR_QUEUE_FULL,
            Busy => sys::ZCN_ERR_BUSY,
            UringDisabled => sys::ZCN_ERR_URING_DISABLED,
            UringBlocked => sys::ZCN_ERR_URING_BLOCKED,
            UringUnsupported => sys::ZCN_ERR_URING_UNSUPPORTED,
            Memlock => sys::ZCN_ERR_MEMLOCK,
            Timeout => sys::ZCN_ERR_TIMEOUT,
        }
    }

    /// The symbolic name: "ZCN_ERR_EXHAUSTED", "ECONNRESET" ...
    pub fn name(self) -> &'static str {
        // Static strings in the library.
        unsafe { static_str(sys::zcn_error_name(self.code())) }
    }

    /// True when io_uring cannot be used on this machine (tests skip then).
    pub fn is_io_uring_unavailable(self) -> bool {
        matches!(
            self,
            Error::UringDisabled | Error::UringBlocked | Error::UringUnsupported | Error::Memlock
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = unsafe { static_str(sys::zcn_strerror(self.code())) };
        write!(f, "{} ({})", text, self.name())
    }
}

impl std::error::Error for Error {}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> std::io::Error {
        match e {
            Error::Os(errno) => std::io::Error::from_raw_os_error(errno),
            other => std::io::Error::new(std::io::ErrorKind::Other, other),
        }
    }
}

fn check(code: sys::ZCN_Error) -> Result<()> {
    match Error::from_code(code) {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

unsafe fn static_str(p: *const std::os::raw::c_char) -> &'static str {
    if p.is_null() {
        return "";
    }
    CStr::from_ptr(p).to_str().unwrap_or("?")
}

/// More about the last error a zcn call returned on this thread
/// (`zcn_error_detail`), copied out.
pub fn last_error_detail() -> String {
    unsafe { CStr::from_ptr(sys::zcn_error_detail()).to_string_lossy().into_owned() }
}

/// The loaded library's version as (major, minor, patch).
pub fn version() -> (u32, u32, u32) {
    let v = unsafe { sys::zcn_version() };
    (v >> 16, (v >> 8) & 0xff, v & 0xff)
}

pub fn version_string() -> &'static str {
    unsafe { static_str(sys::zcn_version_string()) }
}

// ---- buffer pool -------------------------------------------------------

/// `ZCN_BufferPool`: page-aligned buffers, lock-free, usable from any thread.
pub struct BufferPool {
    raw: NonNull<sys::ZCN_BufferPool>,
}

// The C pool is documented as safe to use from any number of threads.
unsafe impl Send for BufferPool {}
unsafe impl Sync for BufferPool {}

pub type PoolStats = sys::ZCN_PoolStats;

impl BufferPool {
    /// `count` buffers of `buffer_size` bytes rounded up to 4096.
    pub fn new(buffer_size: usize, count: usize) -> Result<BufferPool> {
        let mut err = sys::ZCN_OK;
        let raw = unsafe { sys::zcn_pool_create(buffer_size, count, &mut err) };
        NonNull::new(raw).map(|raw| BufferPool { raw }).ok_or_else(|| {
            Error::from_code(err).unwrap_or(Error::InvalidArgument)
        })
    }

    /// A free buffer, or `None` when all are in use (never blocks).
    pub fn acquire(&self) -> Option<PoolBuffer<'_>> {
        let p = unsafe { sys::zcn_pool_acquire(self.raw.as_ptr()) } as *mut u8;
        NonNull::new(p).map(|ptr| PoolBuffer { pool: self, ptr, len: self.buffer_size() })
    }

    pub fn buffer_size(&self) -> usize {
        unsafe { sys::zcn_pool_buffer_size(self.raw.as_ptr()) }
    }

    pub fn count(&self) -> usize {
        unsafe { sys::zcn_pool_count(self.raw.as_ptr()) }
    }

    pub fn stats(&self) -> PoolStats {
        let mut out = PoolStats::default();
        // Cannot fail for a live pool and a valid out pointer.
        let _ = unsafe { sys::zcn_pool_stats(self.raw.as_ptr(), &mut out) };
        out
    }
}

impl Drop for BufferPool {
    fn drop(&mut self) {
        // No PoolBuffer can outlive the pool: they borrow it.
        unsafe { sys::zcn_pool_destroy(self.raw.as_ptr()) }
    }
}

/// One acquired buffer; released to its pool on drop.
pub struct PoolBuffer<'a> {
    pool: &'a BufferPool,
    ptr: NonNull<u8>,
    len: usize,
}

// The buffer is exclusively ours until released; the pool is Sync.
unsafe impl Send for PoolBuffer<'_> {}
unsafe impl Sync for PoolBuffer<'_> {}

impl Deref for PoolBuffer<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for PoolBuffer<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for PoolBuffer<'_> {
    fn drop(&mut self) {
        let e = unsafe { sys::zcn_pool_release(self.pool.raw.as_ptr(), self.ptr.as_ptr().cast()) };
        debug_assert_eq!(e, sys::ZCN_OK, "a PoolBuffer is released exactly once");
    }
}

// ---- server ------------------------------------------------------------

/// Server settings; zero means the library default (see ZCN_Config).
#[derive(Debug, Clone)]
pub struct Config {
    pub address: String,
    pub port: u16,
    pub io_uring_entries: u32,
    pub buffer_pool_size: u32,
    pub buffer_size: u32,
    pub backlog: u32,
    pub connections_max: u32,
    pub send_queue_max_bytes: u32,
    pub idle_timeout_ms: u32,
    /// 0 = default (on), > 0 on, < 0 off.
    pub tcp_nodelay: i32,
    pub reuse_port: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            address: "127.0.0.1".into(),
            port: 0,
            io_uring_entries: 0,
            buffer_pool_size: 0,
            buffer_size: 0,
            backlog: 0,
            connections_max: 0,
            send_queue_max_bytes: 0,
            idle_timeout_ms: 0,
            tcp_nodelay: 0,
            reuse_port: false,
        }
    }
}

/// What the handler is told.
#[derive(Debug)]
pub enum Event<'a> {
    Accept(Fd),
    /// Bytes borrowed from a receive buffer, valid during this call only.
    Data(Fd, &'a [u8]),
    /// Exactly once per accepted connection, whatever ended it.
    Close(Fd),
    /// A connection refused with `Error::QueueFull` can be sent to again.
    Drain(Fd),
}

pub type ServerStats = sys::ZCN_ServerStats;

/// What a handler may do while it runs (it only ever gets a `&Context`).
pub struct Context {
    raw: *mut sys::ZCN_Server,
}

impl Context {
    /// Queues `data` for `fd`. A slice from the current `Event::Data` moves
    /// its buffer to the send queue (no copy); other memory is copied.
    pub fn send(&self, fd: Fd, data: &[u8]) -> Result<()> {
        check(unsafe { sys::zcn_server_send(self.raw, fd, data.as_ptr(), data.len()) })
    }

    /// Sends what is queued, then closes; `Event::Close` follows.
    pub fn close(&self, fd: Fd) -> Result<()> {
        check(unsafe { sys::zcn_server_close(self.raw, fd) })
    }

    pub fn queued_bytes(&self, fd: Fd) -> usize {
        unsafe { sys::zcn_server_queued_bytes(self.raw, fd) }
    }

    /// Makes the running loop (`Server::run`) return after this callback.
    pub fn stop(&self) {
        let _ = unsafe { sys::zcn_server_stop(self.raw) };
    }

    pub fn stats(&self) -> ServerStats {
        let mut out = ServerStats::default();
        let _ = unsafe { sys::zcn_server_stats(self.raw, &mut out) };
        out
    }
}

type Handler = dyn FnMut(&Context, Event<'_>);

/// What `user_data` points at: the boxed closure plus a panic caught in it.
struct HandlerState {
    raw: *mut sys::ZCN_Server,
    handler: Box<Handler>,
    panic: Option<Box<dyn Any + Send + 'static>>,
}

/// The server pointer as seen by Stoppers: null once the server is gone.
struct StopShared {
    raw: Mutex<ServerPtr>,
}
struct ServerPtr(*mut sys::ZCN_Server);
// zcn_server_stop is documented callable from any thread; the Mutex makes
// sure no stop races with destroy.
unsafe impl Send for ServerPtr {}

/// Stops a server from any thread (`Send + Sync + Clone`). Harmless after
/// the server is dropped.
#[derive(Clone)]
pub struct Stopper {
    shared: Arc<StopShared>,
}

impl Stopper {
    /// Asks the loop to return; `false` if the server no longer exists.
    /// A request made while the loop is not running makes the next
    /// `Server::run` return at once.
    pub fn stop(&self) -> bool {
        let guard = self.shared.raw.lock().unwrap_or_else(|p| p.into_inner());
        if guard.0.is_null() {
            return false;
        }
        let _ = unsafe { sys::zcn_server_stop(guard.0) };
        true
    }
}

/// An owned `ZCN_Server`, driven by the thread that created it.
pub struct Server {
    raw: *mut sys::ZCN_Server,
    state: *mut HandlerState,
    shared: Arc<StopShared>,
    // *mut makes Server !Send and !Sync (one thread drives a server).
    _owner_thread: PhantomData<*mut ()>,
}

impl Server {
    pub fn new(config: &Config) -> Result<Server> {
        let address = CString::new(config.address.as_str()).map_err(|_| Error::InvalidArgument)?;
        let c = sys::ZCN_Config {
            address: address.as_ptr(),
            port: config.port,
            io_uring_entries: config.io_uring_entries,
            buffer_pool_size: config.buffer_pool_size,
            buffer_size: config.buffer_size,
            backlog: config.backlog,
            connections_max: config.connections_max,
            send_queue_max_bytes: config.send_queue_max_bytes,
            idle_timeout_ms: config.idle_timeout_ms,
            tcp_nodelay: config.tcp_nodelay,
            flags: if config.reuse_port { sys::ZCN_SERVER_REUSEPORT } else { 0 },
            buffer_memory: ptr::null_mut(),
            buffer_memory_size: 0,
            buffer_reserve: 0,
            send_timeout_ms: 0,
            conn_buffers_hard_max: 0,
            tag: 0,
            backend: 0,
            busy_poll_us: 0,
        };
        let mut err = sys::ZCN_OK;
        // The config (and the address string) need only live through this call.
        let raw = unsafe { sys::zcn_server_create(&c, &mut err) };
        if raw.is_null() {
            return Err(Error::from_code(err).unwrap_or(Error::InvalidArgument));
        }
        Ok(Server {
            raw,
            state: ptr::null_mut(),
            shared: Arc::new(StopShared { raw: Mutex::new(ServerPtr(raw)) }),
            _owner_thread: PhantomData,
        })
    }

    /// `Server::new` with defaults on `address:port` (port 0 = ephemeral).
    pub fn bind(address: &str, port: u16) -> Result<Server> {
        Server::new(&Config { address: address.into(), port, ..Config::default() })
    }

    /// Installs the handler (replacing any earlier one). It runs on this
    /// thread, inside `run*`, and also for the `Close` events of `drop`.
    /// A panic in it is caught at the C boundary, stops the loop and is
    /// resumed from the `run*` call.
    pub fn set_handler<F>(&mut self, handler: F) -> Result<()>
    where
        F: FnMut(&Context, Event<'_>) + 'static,
    {
        let state = Box::into_raw(Box::new(HandlerState {
            raw: self.raw,
            handler: Box::new(handler),
            panic: None,
        }));
        let e = unsafe {
            sys::zcn_server_set_callbacks(
                self.raw,
                state.cast(),
                Some(on_accept),
                Some(on_data),
                Some(on_close),
            )
        };
        if let Err(err) = check(e) {
            drop(unsafe { Box::from_raw(state) });
            return Err(err);
        }
        unsafe { check(sys::zcn_server_set_drain_callback(self.raw, Some(on_drain)))? };
        // The C side now points at the new state; the old one can go.
        let old = std::mem::replace(&mut self.state, state);
        if !old.is_null() {
            drop(unsafe { Box::from_raw(old) });
        }
        Ok(())
    }

    /// The built-in C echo (received buffers sent straight back, no Rust
    /// on the data path). Removes the Rust handler: the C echo replaces the
    /// callbacks' user_data with its own, so no Rust callback may stay
    /// installed beside it.
    pub fn use_echo_handler(&mut self) -> Result<()> {
        unsafe {
            check(sys::zcn_server_set_callbacks(self.raw, ptr::null_mut(), None, None, None))?;
            check(sys::zcn_server_set_drain_callback(self.raw, None))?;
            check(sys::zcn_server_use_echo_handler(self.raw))?;
        }
        let old = std::mem::replace(&mut self.state, ptr::null_mut());
        if !old.is_null() {
            drop(unsafe { Box::from_raw(old) });
        }
        Ok(())
    }

    /// Starts accepting. The calling thread becomes the server's submitter.
    pub fn start(&mut self) -> Result<()> {
        check(unsafe { sys::zcn_server_start(self.raw) })
    }

    pub fn port(&self) -> u16 {
        unsafe { sys::zcn_server_port(self.raw) }
    }

    pub fn stopper(&self) -> Stopper {
        Stopper { shared: Arc::clone(&self.shared) }
    }

    /// Handles at least one completion (or returns on stop / EINTR).
    pub fn run_once(&mut self) -> Result<()> {
        let e = unsafe { sys::zcn_server_run_once(self.raw) };
        self.resume_panic();
        check(e)
    }

    /// Waits at most `timeout` (`None` = forever); returns the number of
    /// completions handled (0 on timeout).
    pub fn run_once_timeout(&mut self, timeout: Option<Duration>) -> Result<u32> {
        let ms = match timeout {
            None => -1,
            Some(d) => d.as_millis().min(i32::MAX as u128) as c_int,
        };
        let mut handled = 0u32;
        let e = unsafe { sys::zcn_server_run_once_timeout(self.raw, ms, &mut handled) };
        self.resume_panic();
        check(e).map(|()| handled)
    }

    /// Runs until a `Stopper::stop` / `Context::stop` (Ok) or an error.
    pub fn run(&mut self) -> Result<()> {
        let e = unsafe { sys::zcn_server_run(self.raw) };
        self.resume_panic();
        check(e)
    }

    /// Queues bytes for fd from outside a callback (always copied).
    pub fn send(&mut self, fd: Fd, data: &[u8]) -> Result<()> {
        check(unsafe { sys::zcn_server_send(self.raw, fd, data.as_ptr(), data.len()) })
    }

    pub fn close(&mut self, fd: Fd) -> Result<()> {
        check(unsafe { sys::zcn_server_close(self.raw, fd) })
    }

    pub fn stats(&self) -> ServerStats {
        let mut out = ServerStats::default();
        let _ = unsafe { sys::zcn_server_stats(self.raw, &mut out) };
        out
    }

    fn resume_panic(&mut self) {
        if self.state.is_null() {
            return;
        }
        if let Some(payload) = unsafe { (*self.state).panic.take() } {
            panic::resume_unwind(payload);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Stoppers see null from now on, and none is inside zcn_server_stop.
        self.shared.raw.lock().unwrap_or_else(|p| p.into_inner()).0 = ptr::null_mut();
        // Calls Close for each open connection, so the handler lives on until
        // after it. Busy is impossible: no callback can hold the Server.
        let _ = unsafe { sys::zcn_server_destroy(self.raw) };
        if !self.state.is_null() {
            drop(unsafe { Box::from_raw(self.state) });
        }
    }
}

/// Calls the handler for one event, keeping panics on the Rust side.
unsafe fn dispatch(user_data: *mut c_void, event: Event<'_>) {
    let state = &mut *(user_data as *mut HandlerState);
    if state.panic.is_some() {
        return; // the loop is stopping to re-raise; stay quiet until then
    }
    let ctx = Context { raw: state.raw };
    let handler = &mut state.handler;
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| handler(&ctx, event))) {
        state.panic = Some(payload);
        let _ = sys::zcn_server_stop(state.raw);
    }
}

unsafe extern "C" fn on_accept(user_data: *mut c_void, fd: c_int) {
    dispatch(user_data, Event::Accept(fd));
}

unsafe extern "C" fn on_data(user_data: *mut c_void, fd: c_int, data: *const u8, len: usize) {
    let bytes: &[u8] = if len == 0 { &[] } else { std::slice::from_raw_parts(data, len) };
    dispatch(user_data, Event::Data(fd, bytes));
}

unsafe extern "C" fn on_close(user_data: *mut c_void, fd: c_int) {
    dispatch(user_data, Event::Close(fd));
}

unsafe extern "C" fn on_drain(user_data: *mut c_void, fd: c_int) {
    dispatch(user_data, Event::Drain(fd));
}
