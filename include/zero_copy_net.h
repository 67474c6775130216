/*
 * zero_copy_net.h - the one public header of libzero_copy_net.
 *
 * A Linux networking library on io_uring: a lock-free page-aligned buffer
 * pool, a thin ring wrapper, and an event loop (ZCN_Loop) with TCP
 * listeners, outbound TCP connections, UDP sockets, timers, fd watches and
 * cross-thread calls on it, whose receive path hands out pool buffers
 * without copying.
 *
 * General rules (each function's comment says where it differs):
 *
 * - Errors are values. Functions return ZCN_Error (0 = ZCN_OK) or take a
 *   ZCN_Error out parameter; nothing prints. Values 1..4095 are Linux errno
 *   values (ECONNRESET, EADDRINUSE ...); library conditions have codes from
 *   ZCN_ERR_BASE up. zcn_strerror() names every code, zcn_error_detail() says
 *   more about the last failure on the calling thread.
 * - Handles are opaque. Passing NULL gives ZCN_ERR_INVALID_ARGUMENT (or a
 *   NULL/0 result where a function returns a pointer or size); passing a
 *   handle after its destroy call is undefined behaviour in C (the Python
 *   layer guards against it).
 * - When a function that takes a callback returns an error, that callback is
 *   never called because of that call.
 * - Threading: a ZCN_BufferPool may be used from any number of threads at
 *   once. A ZCN_Ring, a ZCN_Loop and everything on it (servers, outbound
 *   connections, UDP sockets, timers, watches) belong to the one thread
 *   that drives the loop; the exceptions are zcn_server_stop() and
 *   zcn_loop_stop(), which any thread or a signal handler may call,
 *   zcn_loop_call(), which any thread may call, and a write to a wakeup_fd
 *   pipe (plain I/O on an fd). Once a loop has its owner it checks the
 *   rule: its functions called from another thread return
 *   ZCN_ERR_WRONG_THREAD and do nothing.
 */
#ifndef ZERO_COPY_NET_H
#define ZERO_COPY_NET_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h> /* struct sockaddr, socklen_t (UDP) */

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) || defined(__clang__)
#define ZCN_API __attribute__((visibility("default")))
#else
#define ZCN_API
#endif

/* ------------------------------------------------------------------ */
/* Version                                                             */
/* ------------------------------------------------------------------ */

#define ZCN_VERSION_MAJOR 0
#define ZCN_VERSION_MINOR 8
#define ZCN_VERSION_PATCH 0
/* (major << 16) | (minor << 8) | patch, comparable with zcn_version(). */
#define ZCN_VERSION_HEX \
    ((ZCN_VERSION_MAJOR << 16) | (ZCN_VERSION_MINOR << 8) | ZCN_VERSION_PATCH)
#define ZCN_VERSION_STRING "0.8.0"

/* The version of the library actually loaded, as ZCN_VERSION_HEX. */
ZCN_API unsigned int zcn_version(void);
/* The same as a static string, e.g. "0.8.0". Never NULL. */
ZCN_API const char *zcn_version_string(void);

/* ------------------------------------------------------------------ */
/* Errors                                                              */
/* ------------------------------------------------------------------ */

typedef enum ZCN_Error {
    ZCN_OK = 0,
    /* 1 .. ZCN_ERRNO_MAX: a Linux errno value from a failed system call. */
    ZCN_ERRNO_MAX = 4095,
    ZCN_ERR_BASE = 10000,
    /* An argument is NULL, zero, out of range or inconsistent. */
    ZCN_ERR_INVALID_ARGUMENT = ZCN_ERR_BASE + 1,
    /* A bounded resource (pool buffers, send slots) is used up. */
    ZCN_ERR_EXHAUSTED,
    /* A buffer released to a pool was already free. */
    ZCN_ERR_DOUBLE_FREE,
    /* A pointer is not the start of a buffer of this pool. */
    ZCN_ERR_FOREIGN_POINTER,
    /* The server has not been started (zcn_server_start). */
    ZCN_ERR_NOT_STARTED,
    /* zcn_server_start was already called. */
    ZCN_ERR_ALREADY_STARTED,
    /* The fd is not an open connection of this server (never accepted,
     * already closed, or closing). */
    ZCN_ERR_CLOSED,
    /* The connection's send queue is over its limit; nothing was queued.
     * Wait for the drain event. */
    ZCN_ERR_QUEUE_FULL,
    /* Called from inside a callback where that is not allowed (e.g. running
     * the loop or destroying the server from its own callback). */
    ZCN_ERR_BUSY,
    /* io_uring is disabled by sysctl kernel.io_uring_disabled. */
    ZCN_ERR_URING_DISABLED,
    /* io_uring_setup was refused (EPERM): a seccomp filter (containers) or
     * kernel.io_uring_group. */
    ZCN_ERR_URING_BLOCKED,
    /* The kernel has no io_uring (ENOSYS) or lacks a feature this call
     * needs (e.g. provided-buffer rings, multishot accept). */
    ZCN_ERR_URING_UNSUPPORTED,
    /* Locked memory ran out: RLIMIT_MEMLOCK is too low for the ring or
     * the registered buffers (zcn_error_detail() gives the limit). */
    ZCN_ERR_MEMLOCK,
    /* A wait ended without an event. */
    ZCN_ERR_TIMEOUT,
    /* Called from a thread that does not own the handle: a started server
     * belongs to the thread that called zcn_server_start (see each
     * function's threading note). Nothing was done. */
    ZCN_ERR_WRONG_THREAD,
    ZCN_ERR_LAST_
} ZCN_Error;

/* A short static description of any code (errno values included).
 * Never NULL; unknown codes give "unknown error". */
ZCN_API const char *zcn_strerror(ZCN_Error err);
/* The symbolic name of a library code ("ZCN_ERR_EXHAUSTED") or of an errno
 * ("ECONNRESET"). Never NULL. */
ZCN_API const char *zcn_error_name(ZCN_Error err);
/* More about the last error a zcn call returned on this thread (e.g. "io_uring
 * disabled by sysctl kernel.io_uring_disabled=2"), or "" if none. The string is
 * thread-local and valid until the next zcn call on this thread. */
ZCN_API const char *zcn_error_detail(void);

/* ------------------------------------------------------------------ */
/* Ring: one io_uring instance                                         */
/* ------------------------------------------------------------------ */

typedef struct ZCN_Ring ZCN_Ring;

/* Flags for zcn_ring_create (bit values of our own, not IORING_SETUP_*). */
enum {
    /* Do not add SINGLE_ISSUER / DEFER_TASKRUN / COOP_TASKRUN even where the
     * kernel has them (use when more than one thread submits). */
    ZCN_RING_NO_TUNING = 1u << 0,
    /* Add IORING_SETUP_SQPOLL (a kernel thread polls the SQ). */
    ZCN_RING_SQPOLL = 1u << 1,
};

/* Creates a ring with at least `entries` SQ entries (1..32768, rounded up to
 * a power of two) and a CQ of twice that. Probes the kernel and adds
 * SINGLE_ISSUER, DEFER_TASKRUN and COOP_TASKRUN where supported unless
 * ZCN_RING_NO_TUNING is given. On failure returns NULL and sets *err (err may
 * be NULL): ZCN_ERR_URING_DISABLED / _BLOCKED / _UNSUPPORTED / ZCN_ERR_MEMLOCK
 * name why io_uring is unavailable. The creating thread is the ring's owner:
 * with SINGLE_ISSUER only it may submit. */
ZCN_API ZCN_Ring *zcn_ring_create(uint32_t entries, uint32_t flags, ZCN_Error *err);
/* A Ring is io_uring itself, whatever ZCN_Backend a loop would pick: where
 * io_uring is refused zcn_ring_create fails as above, and with the
 * environment variable ZCN_BACKEND=epoll it fails with
 * ZCN_ERR_URING_UNSUPPORTED (so a run under it behaves as a container
 * would). zcn_pool_register needs such a ring too. */
/* Tears the ring down; pending requests are cancelled. NULL is a no-op. */
ZCN_API void zcn_ring_destroy(ZCN_Ring *ring);

/* The IORING_SETUP_* flags the ring was created with (0 for NULL). */
ZCN_API uint32_t zcn_ring_setup_flags(const ZCN_Ring *ring);
/* The IORING_FEAT_* bits the kernel reported (0 for NULL). */
ZCN_API uint32_t zcn_ring_features(const ZCN_Ring *ring);
/* SQ and CQ sizes as created (0 for NULL). */
ZCN_API uint32_t zcn_ring_sq_entries(const ZCN_Ring *ring);
ZCN_API uint32_t zcn_ring_cq_entries(const ZCN_Ring *ring);
/* 1 if the kernel supports IORING_OP_<opcode>, 0 if not or if unknown. */
ZCN_API int zcn_ring_opcode_supported(const ZCN_Ring *ring, int opcode);

/* Submits `count` NOP requests, `batch` at a time (one io_uring_enter per
 * batch, batch 1 = one syscall per NOP), and reaps every completion before
 * returning. For tests and benchmarks of the ring itself. count 0 is a no-op;
 * batch 0 or larger than the SQ gives ZCN_ERR_INVALID_ARGUMENT. */
ZCN_API ZCN_Error zcn_ring_nop(ZCN_Ring *ring, uint64_t count, uint32_t batch);

/* The underlying liburing ring, for C users who prepare their own requests.
 * Owned by the ZCN_Ring: valid until zcn_ring_destroy. The return type is
 * `struct io_uring *`; it is void * here so this header does not need
 * liburing.h. */
ZCN_API void *zcn_ring_io_uring(ZCN_Ring *ring);

/* ------------------------------------------------------------------ */
/* Backends: io_uring, or epoll where io_uring is refused              */
/* ------------------------------------------------------------------ */

/* What a loop, server or UDP socket runs on (docs/BACKENDS.md). Both give
 * the same API, callbacks, events, limits and buffer pools; the epoll
 * backend performs each request with the system call an epoll loop would
 * make when epoll reports the socket ready. A TCP receive takes several
 * buffers per completion (receive bundles, Linux 6.10, emulated on epoll)
 * where the kernel has them; ZCN_NO_BUNDLE=1 in the environment when a
 * loop is created turns that off, a diagnostic knob (docs/BUFFERS.md,
 * "Receive bundles"). Either way on_data gets one buffer per call. */
typedef enum ZCN_Backend {
    /* The default: the ZCN_BACKEND environment variable ("io_uring",
     * "epoll" or "auto") if set, else io_uring, falling back to epoll when
     * io_uring_setup is refused (EPERM from a container's seccomp filter,
     * kernel.io_uring_disabled, ENOSYS, locked-memory limits) or lacks a
     * feature the loop needs (provided-buffer rings). */
    ZCN_BACKEND_AUTO = 0,
    /* io_uring or fail (the ZCN_ERR_URING_* codes). */
    ZCN_BACKEND_IO_URING = 1,
    /* epoll, even where io_uring works. */
    ZCN_BACKEND_EPOLL = 2,
} ZCN_Backend;

/* "auto", "io_uring", "epoll", or "unknown". Never NULL. */
ZCN_API const char *zcn_backend_name(ZCN_Backend backend);

/* ------------------------------------------------------------------ */
/* BufferPool: page-aligned buffers, lock-free acquire/release         */
/* ------------------------------------------------------------------ */

typedef struct ZCN_BufferPool ZCN_BufferPool;

#define ZCN_PAGE_SIZE 4096u
/* Upper bounds checked at create time. */
#define ZCN_POOL_COUNT_MAX (1u << 24)
#define ZCN_POOL_BYTES_MAX ((uint64_t)1 << 40)

typedef struct ZCN_PoolStats {
    uint64_t total;          /* buffers in the pool */
    uint64_t in_use;         /* acquired and not yet released */
    uint64_t free;           /* total - in_use */
    uint64_t allocated;      /* successful acquires since create */
    uint64_t freed;          /* successful releases since create */
    uint64_t failed;         /* acquires that found the pool empty */
    uint64_t buffer_size;    /* bytes per buffer (a multiple of 4096) */
} ZCN_PoolStats;

/* Per-thread caches (docs/POOL.md, "Thread caches"). A thread that releases
 * a buffer keeps it in a small cache of its own, in front of the shared free
 * list, and its next acquire takes it from there: no cache line shared with
 * other threads on the acquire/release path. A cache is bounded: it holds at
 * most `thread_cache` buffers (over that, the older half goes back to the
 * shared list). Cached buffers are free buffers of the pool: they count in
 * `free`, never in `in_use`, and add nothing to `total`. An acquire that
 * finds its cache and the shared list empty takes a buffer from another
 * thread's cache, so the pool reports exhaustion only when every buffer is
 * in use (as without caches). A thread's caches go back to their pools
 * when it exits. At most ZCN_POOL_THREAD_CACHES threads have a cache of one
 * pool; further threads use the shared list directly. */
#define ZCN_POOL_THREAD_CACHES 64u
/* Upper bound of ZCN_PoolConfig.thread_cache. */
#define ZCN_POOL_THREAD_CACHE_MAX 1024u
/* The default (thread_cache = 0): min(64, max(1, count / 16)) buffers. */
#define ZCN_POOL_THREAD_CACHE_DEFAULT 64u
/* ZCN_PoolConfig.thread_cache value for a pool without thread caches: every
 * call works on the shared list (one CAS on one shared word). */
#define ZCN_POOL_THREAD_CACHE_OFF UINT32_MAX

typedef struct ZCN_PoolConfig {
    size_t buffer_size;     /* bytes per buffer, rounded up to ZCN_PAGE_SIZE */
    size_t count;           /* buffers */
    void *memory;           /* NULL: the pool maps its slab; else as zcn_pool_create_in */
    size_t memory_size;     /* bytes at `memory` (ignored when memory is NULL) */
    uint32_t thread_cache;  /* buffers per thread cache: 0 = default,
                               ZCN_POOL_THREAD_CACHE_OFF = none */
} ZCN_PoolConfig;

typedef struct ZCN_PoolCacheStats {
    uint64_t thread_cache;   /* buffers per thread cache at most (0: caches off) */
    uint64_t caches_max;     /* threads that can hold a cache of this pool */
    uint64_t caches_in_use;  /* threads holding one now */
    uint64_t cached;         /* free buffers sitting in thread caches now */
    uint64_t steals;         /* acquires served from another thread's cache */
} ZCN_PoolCacheStats;

/* Creates `count` buffers of `buffer_size` bytes rounded up to a multiple of
 * ZCN_PAGE_SIZE, in one page-aligned slab allocated here (mmap), with the
 * default thread caches. Zero sizes, count > ZCN_POOL_COUNT_MAX or a slab
 * over ZCN_POOL_BYTES_MAX give ZCN_ERR_INVALID_ARGUMENT; ENOMEM if the
 * memory is not there. */
ZCN_API ZCN_BufferPool *zcn_pool_create(size_t buffer_size, size_t count, ZCN_Error *err);
/* The same over caller-provided memory: `memory` must be page-aligned and at
 * least `memory_size` >= count * rounded buffer_size bytes; it stays owned by
 * the caller and must outlive the pool. */
ZCN_API ZCN_BufferPool *zcn_pool_create_in(void *memory, size_t memory_size,
                                           size_t buffer_size, size_t count,
                                           ZCN_Error *err);
/* Either of the above, with the thread cache size set: config->memory NULL
 * maps a slab, else the pool is laid over it as zcn_pool_create_in does.
 * thread_cache over ZCN_POOL_THREAD_CACHE_MAX (other than
 * ZCN_POOL_THREAD_CACHE_OFF) or a NULL config give ZCN_ERR_INVALID_ARGUMENT. */
ZCN_API ZCN_BufferPool *zcn_pool_create_with(const ZCN_PoolConfig *config, ZCN_Error *err);
/* Frees the pool and (unless created over caller memory) its slab.
 * Buffers still acquired become invalid. No other thread may be calling
 * into the pool; other threads may still have cached buffers of it: those
 * are freed with the pool, and each such thread forgets its cache of the
 * pool without touching the freed memory (when it exits, or when it needs
 * the room for another pool's cache). NULL is a no-op. */
ZCN_API void zcn_pool_destroy(ZCN_BufferPool *pool);

/* Takes a free buffer; NULL when none is free (never blocks, never
 * allocates) or pool is NULL. The buffer is page-aligned and
 * zcn_pool_buffer_size() bytes long; its contents are unspecified.
 * Thread-safe, lock-free. */
ZCN_API void *zcn_pool_acquire(ZCN_BufferPool *pool);
/* Gives a buffer back. ZCN_ERR_FOREIGN_POINTER if `buffer` is not the start
 * of one of this pool's buffers, ZCN_ERR_DOUBLE_FREE if it is already free;
 * in both cases nothing changes. Thread-safe, lock-free. */
ZCN_API ZCN_Error zcn_pool_release(ZCN_BufferPool *pool, void *buffer);

/* Returns the calling thread's cached buffers of `pool` to the shared list
 * and gives up its cache of the pool (another thread may then take it); its
 * next release on the pool sets up a new one. For a long-lived thread that
 * is done with a pool. ZCN_OK also when the thread had no cache of it. */
ZCN_API ZCN_Error zcn_pool_flush(ZCN_BufferPool *pool);
/* Fills *out with the thread caches' figures (sums of per-cache counters:
 * exact when no other thread is working on the pool). */
ZCN_API ZCN_Error zcn_pool_cache_stats(const ZCN_BufferPool *pool, ZCN_PoolCacheStats *out);

/* Fills *out with a snapshot of the counters. Each buffer's acquire count
 * and in-use bit are read atomically together and summed (O(count): for
 * looking, not per message); the sums are not one atomic snapshot while
 * other threads work, but in_use <= total and freed <= allocated hold. */
ZCN_API ZCN_Error zcn_pool_stats(const ZCN_BufferPool *pool, ZCN_PoolStats *out);
/* Bytes per buffer (rounded), number of buffers, start of the slab; 0/NULL
 * for a NULL pool. */
ZCN_API size_t zcn_pool_buffer_size(const ZCN_BufferPool *pool);
ZCN_API size_t zcn_pool_count(const ZCN_BufferPool *pool);
ZCN_API void *zcn_pool_base(const ZCN_BufferPool *pool);
/* Index of a buffer (0..count-1) given its start, or -1 if foreign. */
ZCN_API int64_t zcn_pool_index_of(const ZCN_BufferPool *pool, const void *buffer);

/* Registers every buffer of the pool with the ring as io_uring fixed buffers
 * (index = zcn_pool_index_of). ZCN_ERR_MEMLOCK when RLIMIT_MEMLOCK is too
 * low (zcn_error_detail() gives its value and the bytes needed); EBUSY if
 * the ring already has fixed buffers; EEXIST if called from a thread other
 * than a SINGLE_ISSUER ring's owner. More than 16384 buffers (the kernel's
 * limit) gives ZCN_ERR_INVALID_ARGUMENT. The pool remembers the last ring
 * it was registered with; zcn_pool_destroy does not unregister (destroying
 * the ring drops its fixed buffers). Must not race with destroy or another
 * register/unregister of the same pool. */
ZCN_API ZCN_Error zcn_pool_register(ZCN_BufferPool *pool, ZCN_Ring *ring);
/* Drops the ring's fixed buffers. ZCN_ERR_INVALID_ARGUMENT unless `ring` is
 * the ring the pool was last registered with. */
ZCN_API ZCN_Error zcn_pool_unregister(ZCN_BufferPool *pool, ZCN_Ring *ring);

/* ------------------------------------------------------------------ */
/* TcpServer: accept/data/close callbacks on one io_uring event loop    */
/* ------------------------------------------------------------------ */

typedef struct ZCN_Server ZCN_Server;

/* Bits for ZCN_Config.flags. */
enum {
    /* SO_REUSEPORT on the listening socket (several servers, one port). */
    ZCN_SERVER_REUSEPORT = 1u << 0,
    /* Half-close mode: a peer's FIN ends its stream, not the connection.
     * The connection stays open for sending after on_eof / the EOF event
     * until the application calls zcn_server_close, zcn_server_shutdown or
     * zcn_server_abort. Setting an on_eof callback turns it on as well.
     * Without it, a connection closes once the peer has finished sending
     * and the replies queued by then are sent. */
    ZCN_SERVER_HALF_CLOSE = 1u << 1,
};

/* Upper bounds checked by zcn_server_create. */
#define ZCN_SERVER_ENTRIES_MAX 32768u
#define ZCN_SERVER_BUFFERS_MAX 32768u
#define ZCN_SERVER_BUFFER_SIZE_MAX (64u << 20)
#define ZCN_SERVER_CONNECTIONS_MAX (1u << 20)
/* A timeout field set to this never expires. */
#define ZCN_TIMEOUT_NEVER UINT32_MAX

/* Server configuration. Zero in any field but `address`/`port` means the
 * default given beside it, so `ZCN_Config c = {0}` plus an address is a
 * working server. The struct is read by zcn_server_create only; strings need
 * not outlive that call.
 *
 * The buffer policy (docs/BUFFERS.md). Every byte the server holds lives in
 * one of buffer_pool_size pool buffers. A connection *holds* the buffers of
 * its send queue and of its received data whose delivery is deferred; the
 * sum over all connections (plus buffers the application acquired) may
 * never exceed buffer_pool_size - buffer_reserve: the reserve always feeds
 * receives, so every connection can make progress whatever the others do.
 * Each connection may hold at most send_queue_max_bytes and the matching
 * number of buffers; once half the budget is in use ("pressure") that cap
 * shrinks to a fair share, budget / (connections holding or waiting + 1).
 * A connection over its cap gets no more data delivered (its receive is
 * paused; the kernel's socket buffers hold the rest) and its sends get
 * ZCN_ERR_QUEUE_FULL until it drains. A connection that waits for budget
 * waits in first-come first-served order; while one waits and the budget is
 * used up, connections holding more than one buffer whose send in the
 * kernel made no progress for 100 ms are aborted, biggest holders first,
 * until their buffers would serve every waiter (stats.evictions). A
 * connection whose queued data makes no progress for send_timeout_ms, or
 * that holds more than conn_buffers_hard_max buffers, is aborted too. */
typedef struct ZCN_Config {
    const char *address;            /* IPv4 or IPv6 literal; NULL = "0.0.0.0" */
    uint16_t port;                  /* 0 = an ephemeral port (zcn_server_port) */
    uint32_t io_uring_entries;      /* SQ entries; 0 = 256 */
    uint32_t buffer_pool_size;      /* pool buffers for receive and send; 0 = 1024 */
    uint32_t buffer_size;           /* bytes per buffer, rounded up to 4096; 0 = 16384 */
    uint32_t backlog;               /* listen() backlog; 0 = 1024 */
    uint32_t connections_max;       /* open connections at once; 0 = 4096 (capped
                                       by RLIMIT_NOFILE); more are closed at accept */
    uint32_t send_queue_max_bytes;  /* per connection; 0 = 1 MiB; raised to
                                       buffer_size if smaller. Also caps the pool
                                       buffers one connection may hold at
                                       send_queue_max_bytes / buffer_size + 1 (at
                                       most a quarter of the budget). See
                                       zcn_server_send */
    uint32_t idle_timeout_ms;       /* close after this long without I/O; 0 = never */
    int32_t tcp_nodelay;            /* 0 = default (on), > 0 on, < 0 off */
    uint32_t flags;                 /* ZCN_SERVER_* bits */
    /* Optional caller-owned memory for the buffers (NULL = the server maps its
     * own): page-aligned, at least buffer_pool_size * rounded buffer_size
     * bytes, and it must outlive the server. Bindings use it to keep memory
     * alive while views of it exist; C users may pass huge pages. */
    void *buffer_memory;
    size_t buffer_memory_size;
    /* Pool buffers held data may never take (they feed receives; the
     * receive ring holds at most this many, so the rest of the pool is the
     * budget's); 0 = buffer_pool_size / 4 (at least 1); at most
     * buffer_pool_size - 1. */
    uint32_t buffer_reserve;
    /* Abort (RST) a connection whose queued data made no send progress for
     * this long; 0 = 60000; ZCN_TIMEOUT_NEVER = never. */
    uint32_t send_timeout_ms;
    /* Abort (RST) a connection holding more pool buffers than this (its
     * cap can be overshot by receives already in flight when it was
     * reached); 0 = 2 * the per-connection buffer cap + 64. */
    uint32_t conn_buffers_hard_max;
    /* Copied into ZCN_Event.tag of this listener's connection events, so
     * one zcn_loop_poll can tell several listeners apart. */
    uint32_t tag;
    /* A ZCN_Backend for the server's own loop; 0 = ZCN_BACKEND_AUTO. Leave
     * it 0 for a server on a loop (the loop's config chooses). */
    uint32_t backend;
    /* Busy polling of the server's own loop, in microseconds: as
     * ZCN_LoopConfig.busy_poll_us (0 = off, the default; at most
     * ZCN_LOOP_BUSY_POLL_US_MAX). Leave it 0 for a server on a loop. */
    uint32_t busy_poll_us;
} ZCN_Config;

/* Data callbacks receive borrowed memory: `data` points into a pool buffer
 * and is valid only until the callback returns. Copy what you keep, or pass
 * it to zcn_server_send from inside the callback (no copy: the buffer moves
 * to the send queue). All callbacks run on the thread inside
 * zcn_server_run_once / zcn_server_poll / zcn_server_run, never concurrently,
 * and never from inside another zcn_server_* call made outside the loop:
 * what such a call starts (a close, say) is reported at the loop's next
 * turn. From a callback you may call zcn_server_send*, zcn_server_close,
 * zcn_server_shutdown, zcn_server_abort, zcn_server_*_buffer,
 * zcn_server_stats, zcn_server_conn_info and zcn_server_stop; running the
 * loop or destroying the server from a callback gives ZCN_ERR_BUSY. */
typedef void (*ZCN_OnAccept)(void *user_data, int fd);
typedef void (*ZCN_OnData)(void *user_data, int fd, const uint8_t *data, size_t len);
/* Called exactly once per accepted connection, whatever ends it (peer close,
 * reset, error, idle timeout, zcn_server_close, destroy). The fd is still
 * open during the call but no longer accepts sends (ZCN_ERR_CLOSED); it is
 * closed right after, so the number may be reused by a later accept. */
typedef void (*ZCN_OnClose)(void *user_data, int fd);
/* A connection whose send was refused with ZCN_ERR_QUEUE_FULL or
 * ZCN_ERR_EXHAUSTED has drained to half its limit, with budget to spare:
 * sending will succeed again (for EXHAUSTED: most likely; the pool is
 * shared). */
typedef void (*ZCN_OnDrain)(void *user_data, int fd);
/* Half-close mode: the peer has finished sending (FIN) and every byte it
 * sent has been delivered. Once per connection. The connection stays open
 * for sending until the application closes it. */
typedef void (*ZCN_OnEof)(void *user_data, int fd);

typedef struct ZCN_ServerStats {
    uint64_t connections_active;
    uint64_t connections_accepted;
    uint64_t connections_closed;
    uint64_t connections_rejected;   /* closed at accept: over connections_max */
    uint64_t idle_timeouts;
    uint64_t bytes_received;
    uint64_t bytes_sent;
    uint64_t recv_ops;               /* receive completions carrying data */
    uint64_t send_ops;               /* send completions */
    uint64_t buffers_total;
    uint64_t buffers_in_use;         /* not in the receive ring or the free pool */
    uint64_t buffer_exhaustion_events; /* receives that found no buffer (ENOBUFS) */
    uint64_t sends_zero_copy;        /* zcn_server_send calls that moved a buffer */
    uint64_t sends_copied;           /* zcn_server_send calls that copied */
    uint64_t send_queue_full_events; /* sends refused with ZCN_ERR_QUEUE_FULL */
    uint64_t accept_backoffs;        /* accept paused for EMFILE/ENFILE/ENOMEM */
    /* The buffer policy (see ZCN_Config). */
    uint64_t buffers_held;           /* held by connections (send queues and
                                        deferred receives), by small copies
                                        (shared pack buffers) and by the
                                        application */
    uint64_t buffer_budget;          /* buffer_pool_size - buffer_reserve */
    uint64_t buffer_waiters;         /* connections waiting for budget now */
    uint64_t evictions;              /* aborted to free budget for a waiter */
    uint64_t send_timeouts;          /* aborted: no send progress for send_timeout_ms */
    uint64_t hard_limit_aborts;      /* aborted: over conn_buffers_hard_max */
    uint64_t aborts;                 /* zcn_server_abort calls that aborted */
    uint64_t sends_coalesced;        /* small zero-copy slices copied into a packed
                                        buffer instead of holding their own */
    uint64_t eofs;                   /* peers that finished sending (FIN) */
    uint64_t sends_direct;           /* sends made at once by a plain send(2)
                                        or sendmsg(2), not an SQE, because a
                                        turn's completions answered one
                                        connection; failed ones too (they
                                        close it as a failed send_op would).
                                        ZCN_NO_DIRECT_SEND=1 in the
                                        environment turns them off
                                        (docs/PERFORMANCE.md, "Direct
                                        sends") */
} ZCN_ServerStats;

/* One connection's share of the buffers and its state, for applications
 * that watch or evict peers themselves (zcn_server_conn_info). */
enum {
    ZCN_CONN_EOF = 1u << 0,          /* the peer finished sending */
    ZCN_CONN_SHUT_WR = 1u << 1,      /* zcn_server_shutdown was called */
    ZCN_CONN_CLOSING = 1u << 2,      /* closing: sends refused */
    ZCN_CONN_WAITING = 1u << 3,      /* waiting for budget (see ZCN_Config) */
    ZCN_CONN_PAUSED = 1u << 4,       /* no receive armed: over its cap or waiting */
    ZCN_CONN_FORWARDING = 1u << 5,   /* forwards its data (zcn_loop_forward) */
    ZCN_CONN_SPLICING = 1u << 6,     /* forwards it through a pipe (splice mode) */
};
typedef struct ZCN_ConnInfo {
    uint64_t bytes_received;         /* since accept */
    uint64_t bytes_sent;
    uint64_t queued_bytes;           /* in the send queue, not yet sent */
    uint64_t deferred_bytes;         /* received, not yet delivered */
    uint32_t queued_buffers;         /* distinct pool buffers of the send queue
                                        (not the shared pack buffer of a small copy) */
    uint32_t deferred_buffers;       /* pool buffers of deferred receives */
    uint32_t buffers_held;           /* the two above: what counts against the budget */
    uint32_t buffer_cap;             /* the most it may hold now (its share under pressure) */
    uint32_t flags;                  /* ZCN_CONN_* bits */
    uint32_t reserved;
    uint64_t send_stall_ms;          /* ms since its queued data last made progress
                                        (0 when nothing is queued) */
} ZCN_ConnInfo;

/* Creates a server: validates the config, creates its io_uring (probed as
 * zcn_ring_create does), its buffer pool and a listening socket bound to
 * address:port (SO_REUSEADDR). Nothing is accepted until zcn_server_start.
 * The server is the caller's until zcn_server_destroy. Its ring starts
 * disabled: the thread that calls zcn_server_start becomes the owner, so a
 * server may be created on one thread and run on another. The config is read
 * during this call only. On failure returns NULL and
 * sets *err (err may be NULL): ZCN_ERR_INVALID_ARGUMENT for a bad config or
 * address (detail names the field), EADDRINUSE, EACCES, the ZCN_ERR_URING_*
 * codes when io_uring is unavailable, ENOMEM. */
ZCN_API ZCN_Server *zcn_server_create(const ZCN_Config *config, ZCN_Error *err);
/* Closes every connection (on_close is called for each, callback mode),
 * cancels all I/O and frees everything. Not from inside a callback
 * (ZCN_ERR_BUSY, nothing done). Any thread while the loop is not running
 * (ideally the owner: another thread cannot reap a DEFER_TASKRUN ring and
 * leaves the last cancellations to the kernel's ring teardown). A
 * zcn_server_stop racing with destroy from a signal handler or another
 * thread is safe: it either stops the server before it goes or returns
 * ZCN_ERR_INVALID_ARGUMENT without touching it. NULL gives
 * ZCN_ERR_INVALID_ARGUMENT. */
ZCN_API ZCN_Error zcn_server_destroy(ZCN_Server *server);

/* Sets the callbacks (any may be NULL) and the user_data passed to them.
 * user_data is passed through, never freed: it must stay valid until the
 * callbacks are replaced or zcn_server_destroy returns (destroy calls
 * on_close). May be called again at any time from the owner thread, or from
 * any thread while the loop is not running (as zcn_server_set_drain_callback,
 * zcn_server_set_eof_callback and zcn_server_use_echo_handler). */
ZCN_API ZCN_Error zcn_server_set_callbacks(ZCN_Server *server, void *user_data,
                                           ZCN_OnAccept on_accept, ZCN_OnData on_data,
                                           ZCN_OnClose on_close);
ZCN_API ZCN_Error zcn_server_set_drain_callback(ZCN_Server *server, ZCN_OnDrain on_drain);
/* Sets the end-of-stream callback (NULL to remove it), with the user_data
 * of zcn_server_set_callbacks. While one is set the server is in half-close
 * mode (see ZCN_SERVER_HALF_CLOSE). Owner thread, or any thread while the
 * loop is not running; it applies to FINs seen from then on. */
ZCN_API ZCN_Error zcn_server_set_eof_callback(ZCN_Server *server, ZCN_OnEof on_eof);
/* Replaces on_data with a built-in echo written in C (each received buffer is
 * sent back without copying); on_accept/on_close and user_data stay as set.
 * A later zcn_server_set_callbacks replaces the echo with its on_data. */
ZCN_API ZCN_Error zcn_server_use_echo_handler(ZCN_Server *server);

/* Starts accepting (multishot accept). The calling thread becomes the
 * server's owner: from now on only it may run the loop, send, close and so
 * on (zcn_server_stop excepted; others get ZCN_ERR_WRONG_THREAD).
 * ZCN_ERR_ALREADY_STARTED if called twice, ZCN_ERR_BUSY from inside a
 * callback. */
ZCN_API ZCN_Error zcn_server_start(ZCN_Server *server);
/* The bound port (useful with port 0); 0 for NULL. */
ZCN_API uint16_t zcn_server_port(const ZCN_Server *server);
/* The backend the server runs on (its loop's), and in *reason (may be
 * NULL) why: "io_uring works here (the default)", "forced by ...", or
 * "io_uring refused: ..." with what the kernel said. The string is the
 * server's: valid until it is destroyed. ZCN_BACKEND_AUTO for NULL. Any
 * thread. */
ZCN_API ZCN_Backend zcn_server_backend(const ZCN_Server *server, const char **reason);
/* The listening socket's fd (for diagnostics; do not close it); -1 for NULL. */
ZCN_API int zcn_server_listen_fd(const ZCN_Server *server);

/* Runs the loop until at least one completion has been handled (callbacks
 * called), or a stop request, or a signal interrupts the wait (EINTR is
 * returned, so a `while (running)` loop whose signal handler clears
 * `running` ends). Work per call is bounded by the CQ size. Sends its
 * callbacks made reach the kernel with the next wait, or at once when the
 * call ends because of a stop (see zcn_server_flush). Owner thread. */
ZCN_API ZCN_Error zcn_server_run_once(ZCN_Server *server);
/* The same with a timeout: timeout_ms < 0 waits forever, 0 does not wait.
 * Returns ZCN_OK also on timeout; *handled_out (may be NULL) gets the number
 * of completions handled. */
ZCN_API ZCN_Error zcn_server_run_once_timeout(ZCN_Server *server, int timeout_ms,
                                              uint32_t *handled_out);
/* Runs until zcn_server_stop (returns ZCN_OK and clears the request) or an
 * error (returned). EINTR from signals is retried, so stop it from the signal
 * handler with zcn_server_stop. */
ZCN_API ZCN_Error zcn_server_run(ZCN_Server *server);
/* Asks a running loop to return. Async-signal-safe and callable from any
 * thread (an atomic flag plus an eventfd write). Each request makes exactly
 * one loop call (zcn_server_run, run_once, run_once_timeout or poll) return
 * early, the one that sees it, which also clears it; a request made while no
 * loop runs makes the next loop call return at once. A server being
 * destroyed, or already destroyed (the common global-pointer-in-a-signal-
 * handler pattern), gives ZCN_ERR_INVALID_ARGUMENT and touches nothing. */
ZCN_API ZCN_Error zcn_server_stop(ZCN_Server *server);
/* Hands sends queued since the loop last waited to the kernel now. Sends
 * made in callbacks, or after zcn_server_poll returned, are otherwise
 * submitted by the loop's next wait (in the same system call); a loop call
 * that ends because of zcn_server_stop submits them itself. Use it when the
 * loop will not run again soon after sending outside it. No system call if
 * nothing is queued. The owner thread only (inside callbacks too). */
ZCN_API ZCN_Error zcn_server_flush(ZCN_Server *server);
/* A file descriptor that interrupts the loop: the write end of a
 * non-blocking pipe the loop watches. Whenever a byte is written to it, the
 * loop's current wait -- or its next one, if none is in progress -- ends and
 * that loop call returns EINTR, as if a signal had interrupted it (callbacks
 * for completions reaped in the same turn still run; zcn_server_run just
 * goes on). The loop reads the pipe empty.
 *
 * For bindings whose signal handlers run after the C call returns, such as
 * Python's signal module: give this fd to signal.set_wakeup_fd while the
 * loop runs. Otherwise a signal that arrives just before the loop goes to
 * sleep leaves the handler waiting until the next event. C programs do not
 * need it: zcn_server_stop is async-signal-safe and has no such gap.
 *
 * Created on the first call (errno EMFILE/ENFILE if no fd is left); later
 * calls return the same fd. Owned by the server: do not close it;
 * zcn_server_destroy does. Call it on the thread that runs the loop or
 * before the loop runs; the loop starts watching the pipe at its next turn.
 * NULL server or fd_out: ZCN_ERR_INVALID_ARGUMENT. */
ZCN_API ZCN_Error zcn_server_wakeup_fd(ZCN_Server *server, int *fd_out);

/* Event-batch alternative to callbacks, for bindings where a callback per
 * event is costly (the Python layer uses it). */
enum {
    ZCN_EVENT_ACCEPT = 1,
    ZCN_EVENT_DATA = 2,
    ZCN_EVENT_CLOSE = 3,    /* offset = the errno that ended it (ECONNRESET,
                               EPIPE ...), 0 for an orderly end or one the
                               loop made (close, abort, timeouts) */
    ZCN_EVENT_DRAIN = 4,
    ZCN_EVENT_EOF = 5,      /* half-close mode: the peer finished sending */
    /* Events of a ZCN_Loop polled with zcn_loop_poll (see there): */
    ZCN_EVENT_CONNECT = 6,  /* an outbound connect ended: offset = 0 (connected)
                               or the ZCN_Error of the failure */
    ZCN_EVENT_TIMER = 7,    /* a timer without callback fired: offset = its id */
    ZCN_EVENT_WATCH = 8,    /* a watched fd without callback is ready: fd, len =
                               ZCN_WATCH_* bits, offset = the watch id */
    ZCN_EVENT_CALL = 9,     /* zcn_loop_call(loop, NULL, arg): offset = arg */
    /* A UDP socket in batch mode (zcn_udp_set_batch) has datagrams or
     * errors in its event array: fd = the socket's fd, tag = its batch tag,
     * len = the ZCN_UdpEvent entries in the array, data = the array. At
     * most one per socket and poll. */
    ZCN_EVENT_DATAGRAMS = 10,
};
typedef struct ZCN_Event {
    uint32_t type;          /* ZCN_EVENT_* */
    int32_t fd;
    uint32_t len;           /* DATA: bytes at `data`; WATCH: ZCN_WATCH_* bits */
    uint32_t tag;           /* connection events: the tag of the listener it came
                               from (ZCN_Config.tag) or of its connect
                               (ZCN_ConnectConfig.tag); 0 otherwise */
    uint64_t offset;        /* DATA: data - zcn_server_buffer_base(); see the
                               event types for the others */
    const uint8_t *data;    /* DATA: borrowed, see zcn_server_poll */
} ZCN_Event;
/* Like zcn_server_run_once_timeout but, instead of calling callbacks,
 * writes up to `capacity` (>= 4) events to `events` and sets *count_out.
 * DATA memory stays valid, and may be passed to zcn_server_send without a
 * copy, until the next zcn_server_poll / run_once call on this server. A
 * CLOSE event's fd stays reserved until that next call too, so its number is
 * not reused before the caller has seen the event. Completions that do not
 * fit stay queued for the next call. A batch carries at most 2 DATA events
 * of one connection (the rest of its data waits for the next call), so a
 * few busy connections cannot fill every batch and keep the others
 * waiting behind their handler's work. Do not mix with callbacks: once a
 * server has been polled, callbacks are not called, and closes started
 * between polls (zcn_server_close, _abort, _shutdown) are reported as CLOSE
 * events by the next poll, the fd staying open until then. */
ZCN_API ZCN_Error zcn_server_poll(ZCN_Server *server, ZCN_Event *events, uint32_t capacity,
                                  int timeout_ms, uint32_t *count_out);

/* Queues `len` bytes for fd and returns at once; never blocks. Data is sent in
 * order per connection, partial sends are resumed, MSG_NOSIGNAL is used.
 * If `data` is memory lent by the current on_data call (or the current poll
 * batch), the buffer moves to the send queue without copying; any other
 * memory is copied into pool buffers, so the caller's memory is free again
 * on return. A copy of at most buffer_size / 8 bytes to a connection with
 * nothing queued goes into a buffer the small copies of all connections
 * share (docs/BUFFERS.md rule 11), so a broadcast of short messages to
 * many connections takes a few buffers, not one each. Small slices (under 512 bytes) of a lent buffer sent while the
 * queue is not empty are copied into the queue's packed last buffer, so a
 * peer that does not read holds bytes, not one buffer per message. len 0 is
 * a no-op. All or nothing: on any error nothing is queued.
 * Errors: ZCN_ERR_CLOSED (fd is not an open connection of this server, or it
 * was shut down for sending), EMSGSIZE (len is larger than
 * send_queue_max_bytes, or a copy needs more buffers than one connection
 * may hold outside its own on_data: it could never fit; send it in
 * pieces), ZCN_ERR_QUEUE_FULL (the bytes
 * would take the queue over send_queue_max_bytes, or the buffers over the
 * connection's cap, or the server-wide budget is used up; nothing is queued
 * and on_drain follows once sending can succeed. While a connection is over
 * its limits its received data is not delivered, so a handler that sends at
 * most what it received per callback never sees this error),
 * ZCN_ERR_EXHAUSTED (no free pool buffer for the copy right now: the
 * budget is overshot, or the application holds the buffers; nothing is
 * queued and on_drain follows once buffers are back, as for QUEUE_FULL),
 * ZCN_ERR_FOREIGN_POINTER (data points into a receive buffer that is no
 * longer lent, or runs past the end of a lent buffer),
 * ZCN_ERR_WRONG_THREAD (not the owner thread). */
ZCN_API ZCN_Error zcn_server_send(ZCN_Server *server, int fd, const uint8_t *data, size_t len);
/* Takes a free pool buffer to fill and pass to zcn_server_send_buffer; NULL
 * when none can be had: the pool is empty, or taking one would eat into the
 * receive reserve (it counts as held, see ZCN_Config), or the caller is not
 * the owner thread (zcn_error_detail says which). *capacity_out (may be
 * NULL) gets its size. Release it with zcn_server_release_buffer if not
 * sent. */
ZCN_API uint8_t *zcn_server_acquire_buffer(ZCN_Server *server, size_t *capacity_out);
ZCN_API ZCN_Error zcn_server_release_buffer(ZCN_Server *server, uint8_t *buffer);
/* Sends the first `len` bytes of a buffer from zcn_server_acquire_buffer
 * without copying. On ZCN_OK the server owns the buffer (released after the
 * send); on any error the caller still owns it. Errors as zcn_server_send,
 * plus ZCN_ERR_FOREIGN_POINTER if `buffer` is not an acquired buffer start and
 * ZCN_ERR_INVALID_ARGUMENT if len is larger than the buffer. */
ZCN_API ZCN_Error zcn_server_send_buffer(ZCN_Server *server, int fd, uint8_t *buffer, size_t len);
/* Stops receiving on fd, sends what is queued, then closes; on_close follows
 * (at the loop's next turn when called outside it). A queue that makes no
 * progress is dropped after send_timeout_ms. ZCN_ERR_CLOSED if fd is not
 * open (or already closing). Owner thread. */
ZCN_API ZCN_Error zcn_server_close(ZCN_Server *server, int fd);
/* Half-closes our side: once the queued data is sent, a FIN goes to the
 * peer (shutdown(SHUT_WR)); receiving goes on. Later sends get
 * ZCN_ERR_CLOSED. When the peer has finished sending too, the connection
 * closes (on_close follows). ZCN_ERR_CLOSED if fd is not open or already
 * shut down. Owner thread. */
ZCN_API ZCN_Error zcn_server_shutdown(ZCN_Server *server, int fd);
/* Abortive close: the peer gets a reset (RST), queued and deferred data is
 * dropped and its buffers return at once (those of a send in flight as soon
 * as the kernel lets go of them, within a loop turn); on_close follows at
 * the loop's next turn. For evicting a peer. Works on a closing connection
 * too. ZCN_ERR_CLOSED if fd is not a connection of this server or already
 * ending. Owner thread. */
ZCN_API ZCN_Error zcn_server_abort(ZCN_Server *server, int fd);
/* Bytes queued for fd and not yet sent (0 if not open). */
ZCN_API size_t zcn_server_queued_bytes(const ZCN_Server *server, int fd);
/* Fills *out with fd's share of the buffers and its state. ZCN_ERR_CLOSED if
 * fd is not a connection of this server (closing ones are reported until
 * on_close). Owner thread. */
ZCN_API ZCN_Error zcn_server_conn_info(const ZCN_Server *server, int fd, ZCN_ConnInfo *out);

/* A snapshot of the counters. Any thread: on the loop's owner thread (or
 * before it has one) the live values; on any other, the counters as the
 * loop published them at the end of its last loop call or, once another
 * thread has read them, before its last wait: all from the same moment,
 * exact for an idle loop or one its owner no longer runs. The first read
 * from another thread during a loop call wakes the loop and waits for a
 * fresh copy (at most 100 ms). */
ZCN_API ZCN_Error zcn_server_stats(const ZCN_Server *server, ZCN_ServerStats *out);
/* The start of the server's buffer slab and each buffer's size (for
 * ZCN_Event.offset); NULL/0 for NULL. */
ZCN_API const uint8_t *zcn_server_buffer_base(const ZCN_Server *server);
ZCN_API size_t zcn_server_buffer_size(const ZCN_Server *server);

/* ------------------------------------------------------------------ */
/* Loop: one io_uring event loop with everything on it                 */
/* ------------------------------------------------------------------ */

/* A ZCN_Loop owns an io_uring, one buffer pool with its receive ring and
 * buffer policy, a table of TCP connections (accepted by its listeners or
 * connected out), timers, fd watches and a queue of calls from other
 * threads. TCP listeners (zcn_server_create_on) and UDP sockets
 * (zcn_udp_create_on) are handles on it. zcn_server_create is a server
 * with a private loop; everything said of zcn_server_run* holds for the
 * loop calls below.
 *
 * Threading: a loop may be created on any thread; the first thread that
 * runs it, starts a server on it, connects, or watches an fd becomes its
 * owner, and from then on every call but zcn_loop_stop, zcn_loop_call and
 * zcn_loop_stats from another thread returns ZCN_ERR_WRONG_THREAD.
 * Callbacks of everything on the loop run on the owner thread, inside the
 * loop calls, one at a time. */
typedef struct ZCN_Loop ZCN_Loop;

/* Upper bounds checked by zcn_loop_create. */
#define ZCN_LOOP_TIMERS_MAX (1u << 20)
#define ZCN_LOOP_WATCHES_MAX 65536u
#define ZCN_LOOP_CALLS_MAX (1u << 20)
/* ZCN_LoopConfig.busy_poll_us: 10 ms. A spin longer than the gap between
 * a peer's messages buys nothing; one longer than this is a core given away. */
#define ZCN_LOOP_BUSY_POLL_US_MAX 10000u

/* Loop configuration: zero in any field means the default beside it (so a
 * NULL config is all defaults). The buffer and connection fields mean what
 * they mean in ZCN_Config, for every connection on the loop. Read during
 * zcn_loop_create only. */
typedef struct ZCN_LoopConfig {
    uint32_t io_uring_entries;      /* SQ entries; 0 = 256 */
    uint32_t buffer_pool_size;      /* 0 = 1024 */
    uint32_t buffer_size;           /* rounded up to 4096; 0 = 16384 */
    uint32_t connections_max;       /* accepted plus connected; 0 = 4096 */
    uint32_t send_queue_max_bytes;  /* per connection; 0 = 1 MiB */
    uint32_t buffer_reserve;        /* 0 = buffer_pool_size / 4 */
    uint32_t send_timeout_ms;       /* 0 = 60000; ZCN_TIMEOUT_NEVER */
    uint32_t conn_buffers_hard_max; /* 0 = 2 * the per-connection cap + 64 */
    uint32_t timers_max;            /* timers pending at once; 0 = 4096 */
    uint32_t watches_max;           /* fd watches at once; 0 = 1024 */
    uint32_t calls_max;             /* cross-thread calls queued at once; 0 = 4096 */
    uint32_t backend;               /* a ZCN_Backend; 0 = ZCN_BACKEND_AUTO */
    void *buffer_memory;            /* as ZCN_Config.buffer_memory */
    size_t buffer_memory_size;
    /* Busy polling, for a loop that has a core to itself and wants
     * latency: 0 = off (the default); at most ZCN_LOOP_BUSY_POLL_US_MAX
     * (larger: ZCN_ERR_INVALID_ARGUMENT). When set, a turn that would
     * block in the kernel first submits what it has and spins on the
     * completion queue (on the epoll backend: epoll_wait with timeout 0)
     * until busy_poll_us have passed since the loop's last completion,
     * handling completions as soon as they appear; only then does it
     * block as usual. The cost: one CPU at 100 % for up to busy_poll_us
     * after every completion, so a loop with steady traffic spins all
     * the time, and an idle one (no completion for busy_poll_us) sleeps
     * as without it. Timers, zcn_loop_call, zcn_loop_stop, the wakeup fd
     * and a caller's timeout end a spin as they end a blocking wait; a
     * spin never runs in a turn that has work already or a 0 timeout.
     * Also sets SO_BUSY_POLL to busy_poll_us on the loop's TCP sockets
     * (ignored where the kernel refuses: raising it past the sysctl
     * net.core.busy_read needs CAP_NET_ADMIN); that busy-polls the NIC's
     * queue where the device has NAPI, which loopback has not
     * (docs/PERFORMANCE.md, "Busy polling"). The counters are
     * ZCN_LoopStats.busy_polls_found / busy_polls_expired. */
    uint32_t busy_poll_us;
} ZCN_LoopConfig;

typedef struct ZCN_LoopStats {
    ZCN_ServerStats tcp;            /* every TCP connection of the loop; its
                                       connections_accepted counts outbound ones
                                       once established */
    uint64_t turns;                 /* loop turns (waits) */
    uint64_t timers_active;         /* pending now */
    uint64_t timers_fired;
    uint64_t watches_active;
    uint64_t watch_events;
    uint64_t calls_run;             /* cross-thread calls run (or polled) */
    uint64_t calls_refused;         /* zcn_loop_call: queue full */
    uint64_t connects_started;
    uint64_t connects_failed;       /* refused, unreachable, timed out ... */
    uint64_t connect_timeouts;
    uint64_t servers;               /* listeners on the loop */
    /* Busy polling (ZCN_LoopConfig.busy_poll_us): spins that found work
     * (a completion, a call, a stop) and spins that ran out of time and
     * let the loop block. Mostly expired spins under steady traffic mean
     * busy_poll_us is shorter than the gap between messages. */
    uint64_t busy_polls_found;
    uint64_t busy_polls_expired;
} ZCN_LoopStats;

/* Creates a loop (config may be NULL: all defaults). Nothing runs until a
 * loop call. The loop is the caller's until zcn_loop_destroy. Errors as
 * zcn_server_create (ZCN_ERR_INVALID_ARGUMENT naming the field, the
 * ZCN_ERR_URING_* codes, ENOMEM). */
ZCN_API ZCN_Loop *zcn_loop_create(const ZCN_LoopConfig *config, ZCN_Error *err);
/* Destroys everything still on the loop, then the loop: each server
 * (its connections get on_close, as zcn_server_destroy; the ZCN_Server
 * handles are invalid afterwards), each outbound connection (on_close, or
 * on_connect with ZCN_ERR_CLOSED for one still connecting), timers and
 * watches (dropped without a call), and queued cross-thread calls (run,
 * so they can free their argument). UDP sockets on the loop must be
 * destroyed first (ZCN_ERR_BUSY). Not from a callback (ZCN_ERR_BUSY); the
 * owner thread, or any thread while the loop does not run. Safe against a
 * racing zcn_loop_stop or zcn_loop_call (they get ZCN_ERR_INVALID_ARGUMENT). */
ZCN_API ZCN_Error zcn_loop_destroy(ZCN_Loop *loop);
/* The backend the loop runs on and why, as zcn_server_backend. */
ZCN_API ZCN_Backend zcn_loop_backend(const ZCN_Loop *loop, const char **reason);

/* The loop calls: as zcn_server_run_once / _run_once_timeout / _run /
 * _poll / _stop / _flush / _wakeup_fd, for everything on the loop. Each
 * turn first runs the timers that are due and the queued calls, then waits
 * at most until the nearest timer. */
ZCN_API ZCN_Error zcn_loop_run_once(ZCN_Loop *loop);
ZCN_API ZCN_Error zcn_loop_run_once_timeout(ZCN_Loop *loop, int timeout_ms,
                                            uint32_t *handled_out);
ZCN_API ZCN_Error zcn_loop_run(ZCN_Loop *loop);
/* zcn_server_poll for the whole loop. Connection events carry the tag of
 * their listener or connect; a timer, watch or call without a callback
 * gives its own event (ZCN_EVENT_TIMER, _WATCH, _CALL); ones with a
 * callback run it, from inside this call. A CONNECT event that failed
 * keeps its fd reserved (not reusable) until the next poll, as CLOSE. */
ZCN_API ZCN_Error zcn_loop_poll(ZCN_Loop *loop, ZCN_Event *events, uint32_t capacity,
                                int timeout_ms, uint32_t *count_out);
/* Async-signal-safe, any thread, safe against destroy: as zcn_server_stop. */
ZCN_API ZCN_Error zcn_loop_stop(ZCN_Loop *loop);
ZCN_API ZCN_Error zcn_loop_flush(ZCN_Loop *loop);
ZCN_API ZCN_Error zcn_loop_wakeup_fd(ZCN_Loop *loop, int *fd_out);
/* Counters; any thread (from a thread that is not the owner: as of the
 * loop's last wait, consistent, as zcn_server_stats). */
ZCN_API ZCN_Error zcn_loop_stats(const ZCN_Loop *loop, ZCN_LoopStats *out);
/* The loop's clock (CLOCK_MONOTONIC in ms) as of its current turn: what
 * timers are measured on. 0 for NULL. */
ZCN_API uint64_t zcn_loop_now_ms(const ZCN_Loop *loop);
/* The loop's buffer slab and buffer size (ZCN_Event.offset). */
ZCN_API const uint8_t *zcn_loop_buffer_base(const ZCN_Loop *loop);
ZCN_API size_t zcn_loop_buffer_size(const ZCN_Loop *loop);

/* A TCP listener on a shared loop: zcn_server_create without the loop's
 * own fields. The config's address, port, backlog, idle_timeout_ms,
 * tcp_nodelay, flags and tag apply; the fields that size a loop
 * (io_uring_entries, buffer_pool_size, buffer_size, connections_max,
 * send_queue_max_bytes, buffer_memory, buffer_reserve, send_timeout_ms,
 * conn_buffers_hard_max, backend, busy_poll_us) must be 0 (ZCN_ERR_INVALID_ARGUMENT names the
 * one that is not): they are the loop's. Accepting starts with
 * zcn_server_start. Every zcn_server_* call works on it; those that take
 * an fd accept any connection of the loop, and zcn_server_run* /
 * zcn_server_poll / zcn_server_stop run or stop the whole loop.
 * zcn_server_destroy closes the listener and its accepted connections
 * (on_close for each, through callbacks only: a poll caller drops its own
 * state for them) and leaves the loop and the rest on it (UDP sockets are
 * the loop's: they do not hold a server on a shared loop back). Owner
 * thread once the loop has one. At most 256 servers per loop. */
ZCN_API ZCN_Server *zcn_server_create_on(ZCN_Loop *loop, const ZCN_Config *config,
                                         ZCN_Error *err);
/* The loop a server runs on (its private one for zcn_server_create). */
ZCN_API ZCN_Loop *zcn_server_get_loop(const ZCN_Server *server);

/* Outbound TCP. on_connect is called once: result ZCN_OK when the
 * connection is established (it is then a connection like an accepted one:
 * on_data, on_eof, on_drain and exactly one on_close follow, and every
 * zcn_loop_send* / close / shutdown / abort / conn_info works on it), or
 * the error: ECONNREFUSED, ENETUNREACH, EHOSTUNREACH, ETIMEDOUT (the
 * connect timeout), ZCN_ERR_CLOSED (the loop was destroyed first) ...;
 * after a failure nothing else is called for that fd and it is closed
 * when the callback returns. */
typedef void (*ZCN_OnConnect)(void *user_data, int fd, ZCN_Error result);
typedef struct ZCN_ConnectConfig {
    const char *address;            /* IPv4 or IPv6 literal (resolve names first) */
    uint16_t port;
    uint16_t local_port;            /* bind to this port first; 0 = any */
    const char *local_address;      /* bind to this address first; NULL = any */
    uint32_t timeout_ms;            /* 0 = 30000; ZCN_TIMEOUT_NEVER = the kernel's */
    uint32_t idle_timeout_ms;       /* once connected, as ZCN_Config; 0 = never */
    int32_t tcp_nodelay;            /* 0 = default (on), > 0 on, < 0 off */
    uint32_t flags;                 /* ZCN_SERVER_HALF_CLOSE */
    uint32_t tag;                   /* ZCN_Event.tag of its events */
    uint32_t reserved;
    void *user_data;                /* passed to the callbacks below */
    ZCN_OnConnect on_connect;
    ZCN_OnData on_data;
    ZCN_OnEof on_eof;               /* set: half-close mode, as servers */
    ZCN_OnClose on_close;
    ZCN_OnDrain on_drain;
} ZCN_ConnectConfig;
/* Starts a non-blocking connect (IORING_OP_CONNECT) and returns at once
 * with the socket's fd in *fd_out (the same fd the callbacks and events
 * name). The config is read during this call only. Counts against
 * connections_max (ZCN_ERR_EXHAUSTED when the table is full: nothing
 * started). Bad addresses give ZCN_ERR_INVALID_ARGUMENT, a failed bind
 * its errno; in both cases no callback follows. Owner thread (the first
 * call makes one). Data may be queued with zcn_loop_send from on_connect
 * on. */
ZCN_API ZCN_Error zcn_loop_connect(ZCN_Loop *loop, const ZCN_ConnectConfig *config, int *fd_out);

/* Adopts fd, a connected stream socket (TCP or unix-domain) made elsewhere
 * (an asyncio loop's accept or connect, a socket handed in by the user), as
 * a connection of the loop, exactly like one zcn_loop_connect opened: config
 * gives the callbacks, flags, tag, idle timeout and TCP_NODELAY (address,
 * port, local_* and timeout_ms are ignored), no on_connect is called, and
 * receiving starts at the next turn (so a zcn_loop_pause_recv right after
 * the adopt means nothing is received). On ZCN_OK the loop owns the fd: it
 * closes it after on_close (in poll mode, at the poll after the one that
 * returned its CLOSE event), so the caller must not close it, and may detach
 * its own socket object when the close is reported. On an error nothing was
 * taken and the fd is still the caller's: ZCN_ERR_INVALID_ARGUMENT (not a
 * socket, not a stream socket, bad flags), EBADF (not an open fd), ENOTCONN
 * (not connected), ZCN_ERR_BUSY (already a connection of this loop),
 * ZCN_ERR_EXHAUSTED (connections_max), EMFILE (fd over the loop's fd table).
 * Owner thread (the first call makes one). The fd may be blocking or not;
 * the loop never blocks on it. */
ZCN_API ZCN_Error zcn_loop_adopt(ZCN_Loop *loop, int fd, const ZCN_ConnectConfig *config);

/* Connection calls for any TCP connection of the loop, accepted or
 * connected: the same semantics, limits, errors and threading as the
 * zcn_server_* function of the same name. */
ZCN_API ZCN_Error zcn_loop_send(ZCN_Loop *loop, int fd, const uint8_t *data, size_t len);
ZCN_API uint8_t *zcn_loop_acquire_buffer(ZCN_Loop *loop, size_t *capacity_out);
ZCN_API ZCN_Error zcn_loop_release_buffer(ZCN_Loop *loop, uint8_t *buffer);
ZCN_API ZCN_Error zcn_loop_send_buffer(ZCN_Loop *loop, int fd, uint8_t *buffer, size_t len);
ZCN_API ZCN_Error zcn_loop_close(ZCN_Loop *loop, int fd);
ZCN_API ZCN_Error zcn_loop_shutdown(ZCN_Loop *loop, int fd);
ZCN_API ZCN_Error zcn_loop_abort(ZCN_Loop *loop, int fd);
ZCN_API ZCN_Error zcn_loop_conn_info(const ZCN_Loop *loop, int fd, ZCN_ConnInfo *out);
ZCN_API size_t zcn_loop_queued_bytes(const ZCN_Loop *loop, int fd);
/* Many copies in one call, for bindings that collect the writes of a turn
 * (the Python asyncio loop): item i is zcn_loop_send(loop, items[i].fd,
 * data + (the lengths of the items before it), items[i].len), with its
 * result in results[i] (ZCN_OK, ZCN_ERR_QUEUE_FULL, EMSGSIZE,
 * ZCN_ERR_CLOSED, ...) and *failed_out the number of items not ZCN_OK.
 * Once an item of an fd is refused, the later items of that fd in this
 * call are refused the same way, so what was sent is always a prefix of
 * what was written. Items whose lengths run past data_len are refused
 * with ZCN_ERR_INVALID_ARGUMENT. Returns ZCN_OK when the items were
 * looked at (even if some failed); ZCN_ERR_INVALID_ARGUMENT (NULL
 * pointers) or ZCN_ERR_WRONG_THREAD when none was. Owner thread. */
typedef struct ZCN_SendItem {
    int32_t fd;
    uint32_t len;
} ZCN_SendItem;
ZCN_API ZCN_Error zcn_loop_send_many(ZCN_Loop *loop, const uint8_t *data, size_t data_len,
                                     const ZCN_SendItem *items, uint32_t count, int32_t *results,
                                     uint32_t *failed_out);
/* Receive flow control for one connection of the loop (asyncio's
 * pause_reading / resume_reading). After pause_recv no DATA or EOF of fd
 * is produced (in callback mode: no on_data / on_eof) until resume_recv;
 * events already in a batch the caller holds stay there. What arrives
 * meanwhile stays in the kernel's socket buffer (TCP's window pushes back
 * on the peer), except a few buffers already in flight, held by the loop
 * within the connection's limits. After resume_recv the held data, then
 * the EOF if one came, is delivered from the next turn, and receiving
 * goes on. Either call on a state it is already in is ZCN_OK; the setting
 * lasts until the connection closes (closes and resets are reported as
 * ever). ZCN_ERR_CLOSED for an fd that is not a connection of the loop.
 * Owner thread. */
ZCN_API ZCN_Error zcn_loop_pause_recv(ZCN_Loop *loop, int fd);
ZCN_API ZCN_Error zcn_loop_resume_recv(ZCN_Loop *loop, int fd);
/* Asks for one DRAIN event (on_drain) as soon as fd's send queue holds
 * at most below_bytes (0: when it is empty), for write-buffer watermarks
 * such as asyncio's: checked after every send completion, and at the next
 * turn when it already holds (for a connection still connecting: the
 * turn after it connected). Independent of the DRAIN that follows a
 * refused send (at half the limits): each comes when its own condition
 * holds, one event when both do. A second call replaces the mark.
 * ZCN_ERR_CLOSED for an fd that is not an open or connecting connection
 * of the loop. Owner thread. */
ZCN_API ZCN_Error zcn_loop_notify_drain(ZCN_Loop *loop, int fd, size_t below_bytes);

/* Bits for zcn_loop_forward's flags. */
enum {
    /* The loop sends the data itself: no on_data call (no DATA event), and
     * the peer's EOF is passed on as a shutdown of to_fd. */
    ZCN_FORWARD_AUTO = 1u << 0,
    /* With ZCN_FORWARD_AUTO only: the data goes through a pipe with
     * splice(2) instead of pool buffers (see below). */
    ZCN_FORWARD_SPLICE = 1u << 1,
};
/* Data received on fd is forwarded to to_fd: fd's deliveries (and the
 * arming of its receive) are gated on to_fd's send-queue room and cap
 * instead of its own, so a to_fd that does not drain pauses receiving on
 * fd (its data waits in the kernel's socket buffers; the pool holds at
 * most to_fd's cap) and fd resumes when to_fd drains. A handler that
 * passes what on_data lends it to zcn_loop_send(loop, to_fd, ...) then
 * never gets ZCN_ERR_QUEUE_FULL (the buffer moves, no copy). While to_fd
 * is still connecting it has no room: fd's receive starts paused and
 * nothing it sends is lost, so a proxy may forward a client to its
 * upstream from on_accept, before the connect completes. (In poll mode an
 * accepted connection's receive is armed before the caller sees its
 * ACCEPT event: what arrived by the time of the call comes as DATA events.)
 *
 * With ZCN_FORWARD_AUTO the loop itself sends fd's data to to_fd (moving
 * the buffers; small pieces behind queued data are packed into one buffer
 * as zcn_loop_send does) and, when fd's peer finishes sending (EOF, once
 * all its data is queued on to_fd), shuts down to_fd's sending side once
 * its queue drained, as zcn_loop_shutdown (half-close propagated; fd's
 * on_eof is still called, and with ZCN_SERVER_HALF_CLOSE fd stays open for
 * what comes back). A forward each way is a proxy. A to_fd the user shut
 * down for sending ends the forwarding at fd's next data; if the data
 * cannot be queued for any other reason (the loop's chunk table is used
 * up) both connections are aborted rather than lose it silently.
 *
 * Splice mode. With ZCN_FORWARD_AUTO | ZCN_FORWARD_SPLICE the data goes
 * socket -> pipe -> socket with splice(2) called from the loop thread (io_uring
 * polls tell readiness) instead of through pool buffers: for large
 * messages and streams it costs about half the CPU (docs/PERFORMANCE.md,
 * "Splice against buffer forwarding"), below 64 KiB nothing or worse. The
 * direction switches once nothing is in between (fd has nothing deferred,
 * to_fd's queue is empty) and holds no pool buffer while in it: at most a
 * pipe (1 MiB if the kernel grants it, else its default) between fd and
 * to_fd, fd's reads pausing while it is full. EOF and errors are passed
 * on as above (an error resets the other side); leaving it (to_fd -1,
 * other flags or target, either side closing) makes what the pipe holds
 * fd's deferred data. Both sockets are made O_NONBLOCK. AUTO alone
 * switches a direction to splice mode by itself once it has forwarded 8
 * full pool buffers with never two short ones in a row (a stream), and
 * back to buffers after 8 reads shorter than a buffer in a row.
 * zcn_loop_conn_info's ZCN_CONN_SPLICING tells which mode a direction is
 * in; bytes are counted as for buffers (no recv_ops or send_ops detail).
 * ZCN_FORWARD_SPLICE without ZCN_FORWARD_AUTO is ZCN_ERR_INVALID_ARGUMENT.
 *
 * to_fd = -1 ends forwarding (flags ignored). Forwarding also ends when
 * either side closes, aborts or fails to connect: fd's later data, and
 * what it had deferred, goes to its own on_data (or DATA events), gated on
 * its own queue, from the next loop turn. Calling it again replaces fd's
 * forwarding (another target, other flags). The new gate applies from the
 * next loop turn; data already lent by the current on_data call or poll
 * batch stays the caller's. Both fds stay the caller's connections:
 * callbacks, timeouts and the budget apply as before, and on_close of one
 * does not close the other (a proxy does that in its on_close).
 *
 * Errors (nothing changed): ZCN_ERR_INVALID_ARGUMENT (NULL loop, unknown
 * flags, ZCN_FORWARD_SPLICE without ZCN_FORWARD_AUTO, to_fd == fd,
 * to_fd < -1), ZCN_ERR_CLOSED (fd or to_fd is not an
 * open or connecting connection of this loop), ZCN_ERR_BUSY (another fd
 * forwards to to_fd already: one forwarder per target),
 * ZCN_ERR_WRONG_THREAD. Owner thread; from callbacks too. */
ZCN_API ZCN_Error zcn_loop_forward(ZCN_Loop *loop, int fd, int to_fd, uint32_t flags);

/* Timers on the loop's clock, millisecond resolution. The callback gets
 * the timer's id. A timer with a NULL callback gives a ZCN_EVENT_TIMER to
 * zcn_loop_poll instead (and fires silently in callback mode). */
typedef void (*ZCN_OnTimer)(void *user_data, uint64_t timer_id);
/* Starts a timer due in delay_ms (0 = at the next turn), then every
 * repeat_ms if that is not 0, until cancelled. *id_out gets its id (never
 * 0). ZCN_ERR_EXHAUSTED when timers_max are pending (the policy: the
 * caller decides; nothing started). Owner thread once the loop has one;
 * from callbacks too. Timers due in the same turn run in order of their
 * due time, then of their start. */
ZCN_API ZCN_Error zcn_loop_timer_start(ZCN_Loop *loop, uint64_t delay_ms, uint64_t repeat_ms,
                                       ZCN_OnTimer cb, void *user_data, uint64_t *id_out);
/* Cancels a pending timer, also from inside its own or another timer's
 * callback (a repeating timer cancelled in its callback does not come
 * again). ZCN_ERR_CLOSED if the id is not pending (fired one-shot,
 * cancelled, or never started): an id is never reused for another timer. */
ZCN_API ZCN_Error zcn_loop_timer_cancel(ZCN_Loop *loop, uint64_t timer_id);

/* Readiness of any fd the caller owns (io_uring poll, level-triggered:
 * the callback comes again at the next turn while the condition holds).
 * The fd stays the caller's: remove the watch before closing it. */
enum {
    ZCN_WATCH_READ = 1u << 0,
    ZCN_WATCH_WRITE = 1u << 1,
    ZCN_WATCH_ERROR = 1u << 2,      /* reported only: POLLERR */
    ZCN_WATCH_HUP = 1u << 3,        /* reported only: POLLHUP / POLLRDHUP */
};
typedef void (*ZCN_OnWatch)(void *user_data, int fd, uint32_t events, uint64_t watch_id);
/* Watches fd for `events` (ZCN_WATCH_READ and/or _WRITE). *id_out gets
 * the watch's id (never 0). A NULL callback gives ZCN_EVENT_WATCH events
 * to zcn_loop_poll; such a watch that becomes ready while the loop runs in
 * callback mode waits, unreported, for the next zcn_loop_poll. Several
 * watches on one fd are independent.
 * ZCN_ERR_EXHAUSTED at watches_max; ZCN_ERR_INVALID_ARGUMENT for a
 * negative fd or no events. Owner thread (the first call makes one). */
ZCN_API ZCN_Error zcn_loop_watch(ZCN_Loop *loop, int fd, uint32_t events, ZCN_OnWatch cb,
                                 void *user_data, uint64_t *id_out);
/* Ends a watch: its callback is not called again, from the moment this
 * returns (also from inside a callback). Called outside a loop call it
 * tells the kernel at once (one io_uring_enter), because a pending poll
 * holds a reference to the fd's file: closing the fd right after unwatch
 * then really closes it (a listening socket stops accepting). Called from
 * a callback, the loop call that ran it does the same before it returns.
 * (Should the kernel refuse the submit that makes room for the cancel, it
 * goes with the next turn.) ZCN_ERR_CLOSED for an unknown or removed id. */
ZCN_API ZCN_Error zcn_loop_unwatch(ZCN_Loop *loop, uint64_t watch_id);

/* Runs fn(arg) on the loop's thread at its next turn; from any thread,
 * the owner's and another loop's included. Lock-free: callers never wait
 * for each other or for the loop (a bounded queue of calls_max cells; the
 * loop is woken, one eventfd write, only when its queue was empty). Not
 * from a signal handler (an error formats its detail string;
 * zcn_loop_stop is the signal-safe call). Calls from one thread run in
 * the order they were queued. fn NULL just wakes the loop: in poll mode it gives a
 * ZCN_EVENT_CALL with offset = arg. ZCN_ERR_QUEUE_FULL when calls_max are
 * queued (count in stats.calls_refused; nothing queued);
 * ZCN_ERR_INVALID_ARGUMENT for a loop being or already destroyed (the
 * call is not queued and nothing is touched). */
typedef void (*ZCN_Call)(void *arg);
ZCN_API ZCN_Error zcn_loop_call(ZCN_Loop *loop, ZCN_Call fn, void *arg);

/* ------------------------------------------------------------------ */
/* Group: one loop per thread, one SO_REUSEPORT listener on each        */
/* ------------------------------------------------------------------ */

/* A ZCN_Group is a TCP server on N threads: each thread owns one loop
 * (its own ring, buffer pool and connection table) and one listener on
 * the same address and port (SO_REUSEPORT), so the kernel spreads new
 * connections over the loops and nothing is shared on the per-message
 * path. A connection stays on the loop that accepted it. Work goes from
 * one loop to another with zcn_loop_call (lock-free; see docs/THREADS.md
 * for a fan-out across loops).
 *
 * Lifetime: zcn_group_create starts the threads; each pins itself (when
 * asked) and then creates its loop and listener, so the loop's memory is
 * first touched on its own CPU (its NUMA node). They wait for
 * zcn_group_start. zcn_group_stop ends them: each thread stops its loop,
 * calls on_stop, then destroys its loop (on_close for each connection
 * still open, on that thread). A group runs once: it cannot be started
 * again after a stop. zcn_group_destroy stops and joins what still runs
 * and frees the group.
 *
 * Threading: zcn_group_stop is async-signal-safe and, with
 * zcn_group_stats, callable from any thread (a loop's thread included);
 * create, start, wait and destroy from a thread that is not one of the
 * group's (ZCN_ERR_WRONG_THREAD). The group's threads block every signal,
 * so signals reach the application's own threads. Everything on loop i
 * follows the loop rules with thread i as its owner. */
typedef struct ZCN_Group ZCN_Group;

#define ZCN_GROUP_THREADS_MAX 1024u

enum {
    /* Pin thread i to a CPU: cpus[i] when cpus is given, else the i-th CPU
     * (round robin) of the process's affinity mask. */
    ZCN_GROUP_PIN = 1u << 0,
    /* Steer each new connection to the loop pinned to the CPU that took
     * it from the network (a reuseport BPF program reading the CPU; other
     * CPUs fall back to the kernel's hash). Needs pinning. Helps where the
     * NIC spreads flows over the CPUs (RSS); on loopback the CPU is the
     * client's. See docs/THREADS.md for when it pays. */
    ZCN_GROUP_STEER_CPU = 1u << 1,
};

/* Group configuration. Read during zcn_group_create only. */
typedef struct ZCN_GroupConfig {
    uint32_t threads;               /* loops, one thread each; 0 = the CPUs the
                                       process may run on; at most
                                       ZCN_GROUP_THREADS_MAX */
    uint32_t flags;                 /* ZCN_GROUP_* bits */
    const int *cpus;                /* NULL, or `threads` CPU numbers (each in
                                       the process's affinity mask): thread i
                                       runs on cpus[i] (implies ZCN_GROUP_PIN) */
    /* Each loop's configuration (as zcn_loop_create; buffer_memory must be
     * NULL: each loop maps its own). */
    ZCN_LoopConfig loop;
    /* Each listener's fields (as zcn_server_create_on: address, port,
     * backlog, idle_timeout_ms, tcp_nodelay, flags, tag; the loop-sizing
     * fields must be 0). ZCN_SERVER_REUSEPORT is implied. Port 0: the
     * first loop's listener picks a free port and the others join it. */
    ZCN_Config listen;
} ZCN_GroupConfig;

/* Called on thread `index` once its loop and listener exist and before
 * it accepts (from zcn_group_start): set the server's callbacks here
 * (zcn_server_set_callbacks with this loop's own user_data), add timers,
 * connects or UDP sockets to the loop. A non-OK return stops the group
 * and zcn_group_start returns it. */
typedef ZCN_Error (*ZCN_OnLoopStart)(void *user_data, uint32_t index, ZCN_Loop *loop,
                                     ZCN_Server *server);
/* Called on thread `index` after its loop stopped (the loop and server
 * still valid, nothing running): destroy the UDP sockets made on it and
 * anything else that must go before the loop. After it returns the loop
 * is destroyed: connections still open get on_close then, on this
 * thread, so keep what on_close uses until then (zcn_server_destroy
 * here closes the listener's connections now, with on_close). */
typedef void (*ZCN_OnLoopStop)(void *user_data, uint32_t index, ZCN_Loop *loop,
                               ZCN_Server *server);

/* Creates the group: validates the config, starts `threads` threads and
 * waits until each has its loop and listener (created one after the other,
 * so listener i is index i in the reuseport group). On failure returns
 * NULL with *err set (err may be NULL): ZCN_ERR_INVALID_ARGUMENT naming
 * the field (threads, cpus[i], flags, loop.*, listen.*), EADDRINUSE, the
 * ZCN_ERR_URING_* codes, ENOMEM, EAGAIN (no thread); nothing is left. */
ZCN_API ZCN_Group *zcn_group_create(const ZCN_GroupConfig *config, ZCN_Error *err);
/* Hooks run on each loop's thread (either may be NULL); before
 * zcn_group_start only (ZCN_ERR_ALREADY_STARTED). */
ZCN_API ZCN_Error zcn_group_set_hooks(ZCN_Group *group, void *user_data,
                                      ZCN_OnLoopStart on_start, ZCN_OnLoopStop on_stop);
/* Every loop answers with the built-in echo (zcn_server_use_echo_handler
 * on each listener, before on_start). Before zcn_group_start only. */
ZCN_API ZCN_Error zcn_group_use_echo_handler(ZCN_Group *group);
/* Lets the threads go: each runs on_start, starts accepting and runs its
 * loop until zcn_group_stop. Returns once every loop accepts, or with the
 * first on_start or start error (the group is then stopping: wait or
 * destroy it). ZCN_ERR_ALREADY_STARTED the second time. */
ZCN_API ZCN_Error zcn_group_start(ZCN_Group *group);
/* Stops every loop (each finishes its turn, runs on_stop and destroys its
 * loop). Async-signal-safe, any thread, idempotent; before start it makes
 * the threads end without running. ZCN_ERR_INVALID_ARGUMENT for NULL. */
ZCN_API ZCN_Error zcn_group_stop(ZCN_Group *group);
/* Waits until every thread has ended (after a stop, or a loop's failure,
 * which stops the others), at most timeout_ms (-1 = no limit). ZCN_OK,
 * or the first error a loop ended with (its detail is lost: see the
 * group's loop_errors in zcn_group_stats), ZCN_ERR_TIMEOUT when time ran
 * out first, ZCN_ERR_NOT_STARTED before zcn_group_start. */
ZCN_API ZCN_Error zcn_group_wait(ZCN_Group *group, int timeout_ms);
/* Stops the group (if it runs), waits for its threads and frees it. The
 * handle and the loop and server pointers it gave are invalid after. */
ZCN_API ZCN_Error zcn_group_destroy(ZCN_Group *group);

/* The number of loops (0 for NULL). */
ZCN_API uint32_t zcn_group_size(const ZCN_Group *group);
/* The port every listener is bound to (0 for NULL). */
ZCN_API uint16_t zcn_group_port(const ZCN_Group *group);
/* Loop i and its listener: valid from create until that loop's thread
 * destroys it after a stop (then NULL); for zcn_loop_call from anywhere,
 * and for the other calls from thread i. NULL for a bad index. */
ZCN_API ZCN_Loop *zcn_group_loop(const ZCN_Group *group, uint32_t index);
ZCN_API ZCN_Server *zcn_group_server(const ZCN_Group *group, uint32_t index);
/* The CPU thread i is pinned to, or -1 (not pinned, bad index). */
ZCN_API int zcn_group_cpu(const ZCN_Group *group, uint32_t index);
/* The loop the calling thread runs for a group, and its index (NULL and
 * UINT32_MAX on any other thread). index_out may be NULL. */
ZCN_API ZCN_Loop *zcn_group_current(const ZCN_Group *group, uint32_t *index_out);

typedef struct ZCN_GroupStats {
    ZCN_LoopStats total;            /* the sum over the loops (a loop already
                                       destroyed counts with its final values) */
    uint32_t threads;               /* loops in the group */
    uint32_t running;               /* threads running their loop now */
    uint32_t loop_errors;           /* loops that ended with an error */
    uint32_t reserved;
} ZCN_GroupStats;
/* Counters of the whole group (out) and, when per_loop is not NULL, of
 * each loop: per_loop[i] for i < min(capacity, threads). Any thread. */
ZCN_API ZCN_Error zcn_group_stats(const ZCN_Group *group, ZCN_GroupStats *out,
                                  ZCN_LoopStats *per_loop, uint32_t capacity);

/* ------------------------------------------------------------------ */
/* UdpSocket: datagrams on io_uring, alone or in a server's loop        */
/* ------------------------------------------------------------------ */

typedef struct ZCN_UdpSocket ZCN_UdpSocket;

/* The largest UDP payloads: IPv4 (65535 - 20 - 8) and IPv6 (65535 - 8). */
#define ZCN_UDP_DATAGRAM_MAX_V4 65507u
#define ZCN_UDP_DATAGRAM_MAX_V6 65527u
/* Bytes at the start of every receive buffer that hold the kernel's
 * io_uring_recvmsg_out header and the peer address; the datagram follows. */
#define ZCN_UDP_HEADROOM 512u
/* Upper bounds checked by zcn_udp_create. */
#define ZCN_UDP_BUFFERS_MAX 32768u
#define ZCN_UDP_SENDS_MAX 65535u
#define ZCN_UDP_ENTRIES_MAX 32768u
/* Bytes of a large buffer (ZCN_UdpConfig.large_buffer_count): headroom and
 * the largest datagram, in whole pages. */
#define ZCN_UDP_LARGE_BUFFER_SIZE 69632u
#define ZCN_UDP_LARGE_BUFFERS_MAX 4096u

/* Bits for ZCN_UdpConfig.flags. */
enum {
    ZCN_UDP_REUSEADDR = 1u << 0, /* SO_REUSEADDR */
    ZCN_UDP_REUSEPORT = 1u << 1, /* SO_REUSEPORT: several sockets, one port */
    ZCN_UDP_BROADCAST = 1u << 2, /* SO_BROADCAST: may send to broadcast addresses */
    ZCN_UDP_V6ONLY = 1u << 3,    /* IPV6_V6ONLY on an IPv6 socket */
    /* Send every datagram on its own. By default, datagrams of one turn's
     * batch that go to the same peer with the same size are handed to the
     * kernel as one UDP GSO send (UDP_SEGMENT, Linux 4.18): the peer still
     * receives separate, identical datagrams, and the route and IP work is
     * done once per batch instead of once per datagram. Where the route
     * refuses GSO (MTU, no checksum offload, IPsec) the datagrams are sent
     * one by one and the socket stops coalescing at that size. */
    ZCN_UDP_NO_GSO = 1u << 4,
    /* Small buffers only, as before large buffers existed: a datagram over
     * buffer_size arrives cut (ZCN_UDP_TRUNCATED, ZCN_UdpEvent.full_len,
     * stats.truncated) and a copied send must fit one small buffer. Saves
     * the large buffers' address space. */
    ZCN_UDP_SMALL_ONLY = 1u << 5,
};

/* ZCN_UdpConfig.recv_mode: how datagrams reach the pool buffers. Both
 * deliver the same datagrams, peers, flags and stats; they differ in cost. */
enum {
    /* 0 = the default, ZCN_UDP_RECV_READINESS. */
    /* recvmmsg reads up to 64 datagrams straight into pool buffers, one
     * system call per batch; when a read finds the socket empty, a one-shot
     * io_uring poll says when it is readable again. The faster one on
     * Linux 6.18 (docs/PERFORMANCE.md). */
    ZCN_UDP_RECV_READINESS = 1,
    /* Multishot recvmsg on a provided-buffer ring: no system call per
     * batch, but a completion and a wake-up per datagram; a few per cent
     * more CPU per datagram than readiness on the kernels measured.
     * Receives datagrams up to buffer_size whole only: the kernel picks a
     * ring buffer before it sees the datagram, so a larger one arrives
     * truncated (ZCN_UDP_TRUNCATED) even with large buffers, which serve
     * copied sends only in this mode. Raise buffer_size to receive large
     * datagrams whole here. */
    ZCN_UDP_RECV_MULTISHOT = 2,
};

/* Bits of the `flags` argument of ZCN_OnDatagram / ZCN_UdpEvent.flags. */
enum {
    /* The datagram was larger than the buffer: `len` bytes are its start
     * only (ZCN_UdpEvent.full_len has its real size). Never passed on as
     * if whole. Happens only with ZCN_UDP_SMALL_ONLY or in multishot mode,
     * for datagrams over buffer_size (raise buffer_size to receive them
     * whole there). */
    ZCN_UDP_TRUNCATED = 1u << 0,
    /* Batch mode only (zcn_udp_set_batch): not a datagram but an error of
     * the socket, in the order it happened: full_len = the errno (a
     * receive's, e.g. ECONNREFUSED after an ICMP port unreachable on a
     * connected socket, or a send's), len 0, no peer, data NULL. */
    ZCN_UDP_ERROR = 1u << 1,
};

/* UDP configuration. Zero in any field means the default beside it, so
 * `ZCN_UdpConfig c = {0}` plus an address is a working socket. Read by
 * zcn_udp_create* only; strings need not outlive that call. */
typedef struct ZCN_UdpConfig {
    const char *address;          /* local IPv4 or IPv6 literal; NULL = "0.0.0.0" */
    uint16_t port;                /* 0 = an ephemeral port (zcn_udp_port) */
    const char *connect_address;  /* NULL = not connected; else the one peer */
    uint16_t connect_port;        /* the peer's port (needed with connect_address) */
    uint32_t io_uring_entries;    /* own ring's SQ entries; 0 = 256 (ignored on a server) */
    uint32_t buffer_count;        /* receive + send buffers; 0 = 256; 2..ZCN_UDP_BUFFERS_MAX */
    uint32_t buffer_size;         /* largest datagram received into a small buffer;
                                     0 = 2048; at most ZCN_UDP_DATAGRAM_MAX_V6. Each
                                     buffer is buffer_size + ZCN_UDP_HEADROOM rounded
                                     up to 4096, so it may hold more. Larger datagrams
                                     go to large buffers (see large_buffer_count) */
    uint32_t sends_max;           /* sends queued or in flight at once; 0 = 1024 */
    int32_t rcvbuf;               /* SO_RCVBUF bytes; 0 = system default */
    int32_t sndbuf;               /* SO_SNDBUF bytes; 0 = system default */
    uint32_t flags;               /* ZCN_UDP_* bits */
    /* Optional caller-owned buffer memory, as ZCN_Config.buffer_memory:
     * page-aligned, outliving the socket, zcn_udp_memory_size(config)
     * bytes: the small buffers (buffer_count * zcn_udp_buffer_size()), then
     * the large ones. With room for the small ones only, the socket maps
     * the large ones itself (ZCN_UdpEvent.offset is then relative to
     * zcn_udp_buffer_base() only for datagrams in small buffers). */
    void *buffer_memory;
    size_t buffer_memory_size;
    uint32_t recv_mode;           /* ZCN_UDP_RECV_*; 0 = ZCN_UDP_RECV_READINESS */
    /* Large buffers (ZCN_UDP_LARGE_BUFFER_SIZE bytes each), so that every
     * datagram up to ZCN_UDP_DATAGRAM_MAX_V4/V6 arrives whole by default,
     * in readiness mode, and copied sends may be that large, in both
     * modes. Datagrams that fit buffer_size take the small buffers' path,
     * unchanged; one that does not is read on into a large buffer held
     * behind its receive slot and handed over there, whole and contiguous
     * (its first zcn_udp_buffer_size() - ZCN_UDP_HEADROOM bytes copied in
     * front of the rest). large_buffer_count: how many large datagrams may
     * be held (lent to callbacks or a poll batch, or being sent) while
     * every receive slot still has a large buffer behind it; 0 = 16, at
     * most ZCN_UDP_LARGE_BUFFERS_MAX. Readiness mode has one more per
     * receive slot (min(64, 3/4 of buffer_count)). Their pages stay
     * untouched (address space only) until a datagram needs them. When
     * none is free, reading waits (datagrams wait in the socket), it does
     * not cut. None with ZCN_UDP_SMALL_ONLY, or when a small buffer holds
     * any datagram already. */
    uint32_t large_buffer_count;
    /* A ZCN_Backend for the socket's own ring; 0 = ZCN_BACKEND_AUTO. A
     * socket on a loop or server runs on that one's backend: leave it 0. */
    uint32_t backend;
} ZCN_UdpConfig;

/* One received datagram. `data` is borrowed from a pool buffer: valid until
 * the callback returns; pass it to zcn_udp_sendto / zcn_udp_send from inside
 * the callback to send it on without a copy. `peer` is a sockaddr_in or
 * sockaddr_in6 of peer_len bytes, valid as long as `data`. flags: ZCN_UDP_*
 * (ZCN_UDP_TRUNCATED). Callbacks run on the thread that drives the loop
 * (zcn_udp_run* or the server's loop), never concurrently. */
typedef void (*ZCN_OnDatagram)(void *user_data, const struct sockaddr *peer,
                               socklen_t peer_len, const uint8_t *data, size_t len,
                               uint32_t flags);

typedef struct ZCN_UdpStats {
    uint64_t datagrams_received;
    uint64_t bytes_received;         /* payload bytes delivered */
    uint64_t datagrams_sent;         /* send completions that succeeded */
    uint64_t bytes_sent;
    uint64_t truncated;              /* datagrams delivered with ZCN_UDP_TRUNCATED */
    uint64_t recv_exhaustion_events; /* receives that found no buffer (ENOBUFS);
                                        datagrams wait in the socket meanwhile */
    uint64_t kernel_drops;           /* datagrams the kernel dropped because the
                                        socket's receive queue was full (SO_MEMINFO) */
    uint64_t send_exhaustion_drops;  /* sends refused: no send slot or no pool buffer */
    uint64_t send_errors;            /* send completions with an error */
    uint64_t recv_errors;            /* receive completions with an error (e.g.
                                        ECONNREFUSED on a connected socket) */
    uint64_t sends_zero_copy;        /* sends that moved a buffer */
    uint64_t sends_copied;           /* sends that copied into a pool buffer */
    uint64_t buffers_total;
    uint64_t buffers_in_use;         /* not in the receive ring or the free pool */
    int32_t last_send_error;         /* errno of the last failed send, 0 if none */
    int32_t last_recv_error;         /* errno of the last failed receive, 0 if none */
    uint64_t gso_sends;              /* system-call sends that carried several
                                        datagrams as one UDP GSO send */
    uint64_t large_datagrams;        /* received whole into a large buffer */
    uint64_t large_buffers_total;    /* large buffers, those behind receive slots
                                        included (0 with ZCN_UDP_SMALL_ONLY) */
    uint64_t large_buffers_in_use;   /* holding a datagram: lent or being sent */
} ZCN_UdpStats;

/* Creates a UDP socket with its own io_uring: validates the config, creates
 * the ring (disabled: the first thread that runs the loop or sends becomes
 * its owner), the buffer pool and provided-buffer ring, and the socket,
 * bound to address:port (and connected when connect_address is set).
 * Receiving starts at the first loop call or send. On failure returns NULL
 * and sets *err (may be NULL): ZCN_ERR_INVALID_ARGUMENT for a bad config or
 * address (detail names the field), EADDRINUSE, EACCES, the ZCN_ERR_URING_*
 * codes when io_uring is unavailable, ENOMEM. */
ZCN_API ZCN_UdpSocket *zcn_udp_create(const ZCN_UdpConfig *config, ZCN_Error *err);
/* The same, sharing a started TCP server's ring and loop (ZCN_ERR_NOT_STARTED
 * before zcn_server_start): datagrams are delivered
 * from zcn_server_run* / zcn_server_poll (callbacks only: UDP datagrams are
 * not poll events). Call on the server's owner thread; io_uring_entries is
 * ignored. At most 64 sockets per server. Destroy the socket before the
 * server (zcn_server_destroy gives ZCN_ERR_BUSY while sockets remain).
 * zcn_udp_run* / zcn_udp_poll / zcn_udp_stop on such a socket give
 * ZCN_ERR_INVALID_ARGUMENT: drive (and stop) the server instead. */
ZCN_API ZCN_UdpSocket *zcn_udp_create_on_server(ZCN_Server *server,
                                                const ZCN_UdpConfig *config,
                                                ZCN_Error *err);
/* The same on a ZCN_Loop: datagrams are delivered from the loop calls
 * (callbacks only), the calling thread becomes the loop's owner if it has
 * none (else it must be the owner: ZCN_ERR_WRONG_THREAD). Everything said
 * above of a socket on a server holds, with the loop in the server's
 * place (zcn_loop_destroy gives ZCN_ERR_BUSY while sockets remain). */
ZCN_API ZCN_UdpSocket *zcn_udp_create_on(ZCN_Loop *loop, const ZCN_UdpConfig *config,
                                         ZCN_Error *err);
/* Adopts fd, a UDP socket made elsewhere (an asyncio loop's
 * create_datagram_endpoint, a socket handed in by the user: AF_INET or
 * AF_INET6, SOCK_DGRAM, IPPROTO_UDP; bound or not, connected or not,
 * blocking or not), as a UDP socket on the loop, exactly like one
 * zcn_udp_create_on made: the config gives the buffers, sends_max,
 * recv_mode, large buffers and the flags (ZCN_UDP_NO_GSO,
 * ZCN_UDP_SMALL_ONLY; the socket-option flags, rcvbuf and sndbuf are set
 * on fd when given, 0 leaves the socket's own); address, port,
 * connect_address and connect_port must be NULL/0 (the socket's own
 * address, and its peer if connected, are used; zcn_udp_port is the bound
 * port as of this call). config NULL = all defaults. Receiving starts at
 * the loop's next turn.
 * Ownership: on success the socket owns fd: zcn_udp_destroy closes it (a
 * destroyed socket that lingers for its last completions closes it when it
 * frees itself), so the caller must not close fd, and may detach its own
 * socket object once it has destroyed the socket. On failure NULL, *err
 * set, and fd is still the caller's, open (a socket option set before the
 * failure stays set): ZCN_ERR_INVALID_ARGUMENT (NULL loop, negative fd, not
 * a UDP socket, an address field set, a bad config), ZCN_ERR_BUSY (fd is
 * already a UDP socket of this loop), ZCN_ERR_EXHAUSTED (the loop has 64
 * sockets), ZCN_ERR_WRONG_THREAD, the errno of getsockopt/setsockopt
 * (ENOTSOCK, EBADF ...), ENOMEM. Threads: as zcn_udp_create_on (the
 * loop's owner, or the first thread if it has none). */
ZCN_API ZCN_UdpSocket *zcn_udp_adopt_on(ZCN_Loop *loop, int fd, const ZCN_UdpConfig *config,
                                        ZCN_Error *err);
/* Cancels the socket's I/O, closes it and frees everything; queued sends
 * not yet completed are dropped. Not from inside a callback (ZCN_ERR_BUSY,
 * nothing done). NULL gives ZCN_ERR_INVALID_ARGUMENT.
 * On a server: waits for the kernel to let go of the socket's requests and
 * retires their completions the server's loop has not reaped yet, so none
 * can reach a socket created after it. Call it on the server's owner
 * thread. Where some cannot be retired at once (the server's completion
 * queue overflowed, or another thread called), the socket lingers, inert,
 * until the server's loop has reaped them, and frees itself then;
 * zcn_server_destroy gives ZCN_ERR_BUSY meanwhile (run the loop again). */
ZCN_API ZCN_Error zcn_udp_destroy(ZCN_UdpSocket *sock);

/* Sets the datagram callback (NULL = datagrams are dropped after counting)
 * and its user_data. Owner thread; any time. */
ZCN_API ZCN_Error zcn_udp_set_callback(ZCN_UdpSocket *sock, void *user_data,
                                       ZCN_OnDatagram on_datagram);
/* Replaces the callback with a built-in echo written in C: each datagram is
 * sent back to its peer without copying. Truncated datagrams are not echoed
 * (they would not be the peer's datagram). */
ZCN_API ZCN_Error zcn_udp_use_echo_handler(ZCN_UdpSocket *sock);

/* The bound port; 0 for NULL. */
ZCN_API uint16_t zcn_udp_port(const ZCN_UdpSocket *sock);
/* The backend the socket runs on (its own ring's, or its loop's or
 * server's) and why, as zcn_server_backend. */
ZCN_API ZCN_Backend zcn_udp_backend(const ZCN_UdpSocket *sock, const char **reason);
/* The socket's fd (for getsockopt and diagnostics; do not close it or read
 * from it); -1 for NULL. */
ZCN_API int zcn_udp_fd(const ZCN_UdpSocket *sock);
/* The bound address as a sockaddr; *len_inout is the room at addr in, the
 * length out. */
ZCN_API ZCN_Error zcn_udp_local_address(const ZCN_UdpSocket *sock, struct sockaddr *addr,
                                        socklen_t *len_inout);
/* Bytes per (small) pool buffer, a multiple of 4096, and the largest
 * datagram received whole: the largest legal one (ZCN_UDP_DATAGRAM_MAX_V4 /
 * _V6) with large buffers in readiness mode, else buffer size -
 * ZCN_UDP_HEADROOM; 0 for NULL. */
ZCN_API size_t zcn_udp_buffer_size(const ZCN_UdpSocket *sock);
ZCN_API size_t zcn_udp_datagram_capacity(const ZCN_UdpSocket *sock);
/* The bytes of buffer memory a socket created with this config uses (small
 * buffers, then large ones): what ZCN_UdpConfig.buffer_memory must hold.
 * Reads the config during the call only; any thread. 0 for NULL or an
 * invalid config (zcn_error_detail() names the field). */
ZCN_API size_t zcn_udp_memory_size(const ZCN_UdpConfig *config);
/* The start of the buffer slab (for ZCN_UdpEvent.offset); NULL for NULL. */
ZCN_API const uint8_t *zcn_udp_buffer_base(const ZCN_UdpSocket *sock);

/* Sends `len` bytes as one datagram to addr (a sockaddr_in/_in6 of the
 * socket's family; NULL = the connected peer). Returns once queued; never
 * blocks. If `data` is memory lent by the current callback or poll batch
 * (a large buffer's too), the buffer is sent without a copy; other memory
 * is copied into one pool buffer (a large one over buffer_size), so the
 * caller's memory is free again on return.
 * Submission: sends made inside callbacks go to the kernel together, in
 * one system call, when zcn_udp_run_once* returns (zcn_udp_run: with its
 * next wait); sends made outside callbacks go at once, unless autoflush is
 * off (zcn_udp_set_autoflush): then zcn_udp_flush or the next loop call
 * submits them, all in one system call.
 * Errors: ZCN_ERR_INVALID_ARGUMENT (NULL data with len > 0, an address of
 * the wrong family or too short, port 0, len over ZCN_UDP_DATAGRAM_MAX_V4/V6,
 * or, with ZCN_UDP_SMALL_ONLY, over a pool buffer for a copy), EDESTADDRREQ
 * (addr NULL on a socket that is not connected), ZCN_ERR_QUEUE_FULL
 * (sends_max sends in flight: run the loop to reap them), ZCN_ERR_EXHAUSTED
 * (no pool buffer for the copy; over buffer_size: no large buffer free but
 * those the readiness receive needs behind its slots), ZCN_ERR_WRONG_THREAD
 * (another thread owns the socket). The last two are
 * counted in send_exhaustion_drops. A send that fails in the kernel later
 * (ECONNREFUSED ...) is counted in send_errors / last_send_error, once per
 * datagram (with GSO, for every datagram of the run it was sent in; see
 * ZCN_UDP_NO_GSO). A 0-byte datagram is a valid datagram and is sent. */
ZCN_API ZCN_Error zcn_udp_sendto(ZCN_UdpSocket *sock, const struct sockaddr *addr,
                                 socklen_t addr_len, const uint8_t *data, size_t len);
/* zcn_udp_sendto to the connected peer. */
ZCN_API ZCN_Error zcn_udp_send(ZCN_UdpSocket *sock, const uint8_t *data, size_t len);

/* A free pool buffer to fill and pass to zcn_udp_sendto_buffer (no copy);
 * NULL when none is free. *capacity_out (may be NULL) gets its size. Release
 * it with zcn_udp_release_buffer if not sent. Owner thread only. */
ZCN_API uint8_t *zcn_udp_acquire_buffer(ZCN_UdpSocket *sock, size_t *capacity_out);
ZCN_API ZCN_Error zcn_udp_release_buffer(ZCN_UdpSocket *sock, uint8_t *buffer);
/* Sends the first `len` bytes of an acquired buffer to addr (NULL = the
 * connected peer) without copying. On ZCN_OK the socket owns the buffer;
 * on any error the caller still does. Errors as zcn_udp_sendto, plus
 * ZCN_ERR_FOREIGN_POINTER if `buffer` is not an acquired buffer's start. */
ZCN_API ZCN_Error zcn_udp_sendto_buffer(ZCN_UdpSocket *sock, const struct sockaddr *addr,
                                        socklen_t addr_len, uint8_t *buffer, size_t len);

/* One message of a batch. */
typedef struct ZCN_UdpMessage {
    const struct sockaddr *addr;  /* NULL = the connected peer */
    socklen_t addr_len;
    const uint8_t *data;
    size_t len;
} ZCN_UdpMessage;
/* Queues `count` datagrams as zcn_udp_sendto would and submits them with
 * one system call. Stops at the first message that cannot be queued and
 * returns its error; *queued_out (may be NULL) gets how many were queued
 * (and submitted) either way. */
ZCN_API ZCN_Error zcn_udp_sendto_batch(ZCN_UdpSocket *sock, const ZCN_UdpMessage *msgs,
                                       size_t count, size_t *queued_out);
/* With autoflush off (on by default), sends made outside callbacks are only
 * queued until zcn_udp_flush or the next loop call. */
ZCN_API ZCN_Error zcn_udp_set_autoflush(ZCN_UdpSocket *sock, int on);
/* Submits every queued send now (one system call). */
ZCN_API ZCN_Error zcn_udp_flush(ZCN_UdpSocket *sock);

/* Joins (or leaves) a multicast group on an interface: IP_ADD_MEMBERSHIP
 * for an IPv4 group (interface by its address, e.g. "127.0.0.1", or by
 * index; NULL and 0 = the kernel's choice), IPV6_JOIN_GROUP for an IPv6 one
 * (interface by index; 0 = default). Errors: ZCN_ERR_INVALID_ARGUMENT for a
 * group that is not a multicast literal of the socket's family, or the
 * kernel's errno (ENODEV, EADDRINUSE if already joined ...). */
ZCN_API ZCN_Error zcn_udp_join_multicast(ZCN_UdpSocket *sock, const char *group,
                                         const char *interface_address,
                                         uint32_t interface_index);
ZCN_API ZCN_Error zcn_udp_leave_multicast(ZCN_UdpSocket *sock, const char *group,
                                          const char *interface_address,
                                          uint32_t interface_index);

/* The loop of a socket with its own ring; same semantics and errors as
 * zcn_server_run_once / _run_once_timeout / _run / _stop: the first call
 * makes the calling thread the owner (another thread then gets
 * ZCN_ERR_WRONG_THREAD), EINTR returns from run_once, ZCN_ERR_BUSY from
 * inside a callback, stop is async-signal-safe and callable from any
 * thread, and safe against destroy (a destroyed socket gives
 * ZCN_ERR_INVALID_ARGUMENT and is not touched). */
ZCN_API ZCN_Error zcn_udp_run_once(ZCN_UdpSocket *sock);
ZCN_API ZCN_Error zcn_udp_run_once_timeout(ZCN_UdpSocket *sock, int timeout_ms,
                                           uint32_t *handled_out);
ZCN_API ZCN_Error zcn_udp_run(ZCN_UdpSocket *sock);
ZCN_API ZCN_Error zcn_udp_stop(ZCN_UdpSocket *sock);
/* zcn_server_wakeup_fd for a socket with its own ring (same semantics,
 * ownership and threading). A socket on a server gives
 * ZCN_ERR_INVALID_ARGUMENT: use the server's. */
ZCN_API ZCN_Error zcn_udp_wakeup_fd(ZCN_UdpSocket *sock, int *fd_out);

/* Event-batch alternative to the callback (the Python layer uses it). */
typedef struct ZCN_UdpEvent {
    uint32_t len;        /* payload bytes at data */
    uint32_t flags;      /* ZCN_UDP_* (ZCN_UDP_TRUNCATED) */
    uint32_t peer_len;   /* bytes of peer used (16 IPv4, 28 IPv6) */
    uint32_t full_len;   /* the datagram's real size (> len when truncated) */
    uint64_t offset;     /* data - zcn_udp_buffer_base() */
    const uint8_t *data; /* borrowed, see zcn_udp_poll */
    uint8_t peer[32];    /* sockaddr_in / sockaddr_in6 bytes (memcpy them out) */
} ZCN_UdpEvent;
/* Like zcn_udp_run_once_timeout but writes up to `capacity` (>= 1) datagram
 * events instead of calling the callback, and sets *count_out. The memory
 * stays valid, and may be passed to zcn_udp_sendto without a copy, until
 * the next zcn_udp_poll / run call. Returns after a turn that handled any
 * completion (sends included), so *count_out may be 0. */
ZCN_API ZCN_Error zcn_udp_poll(ZCN_UdpSocket *sock, ZCN_UdpEvent *events, uint32_t capacity,
                               int timeout_ms, uint32_t *count_out);

/* A snapshot of the socket's counters; any thread. On the thread that
 * drives the socket (its loop's owner, for a socket on a loop) the counters
 * are live; another thread reads a consistent copy the owner publishes at
 * the end of each of its loop calls (on a loop: with the loop's own, as
 * zcn_loop_stats, so the first such read wakes a running loop and waits up
 * to 100 ms for a fresh one). kernel_drops is read from the socket at the
 * call, on any thread. The socket must not be destroyed meanwhile. */
ZCN_API ZCN_Error zcn_udp_stats(const ZCN_UdpSocket *sock, ZCN_UdpStats *out);

/* Batch mode, for a socket on a loop (zcn_udp_create_on, _adopt_on) whose
 * loop is driven by zcn_loop_poll: datagrams come as a batch instead of a
 * callback each. Each zcn_loop_poll writes the socket's datagrams of that
 * poll into `events` (up to `capacity`, >= 1; the read waits for the next
 * poll beyond that) as zcn_udp_poll would, and, when there is any, one
 * ZCN_EVENT_DATAGRAMS event into the poll's own batch saying how many
 * (len) for this socket (fd, tag). Errors of the socket arrive in the same
 * array, in order, as entries flagged ZCN_UDP_ERROR (full_len = errno):
 * receive errors (ECONNREFUSED after an ICMP error on a connected
 * socket ...) and send errors (each datagram that failed in the kernel),
 * besides being counted in the stats as ever; one that happens outside a
 * poll (a send submitted by zcn_udp_flush) is held (up to 8, later ones
 * only counted) and reported by the next poll, which then does not wait.
 * The datagrams' memory is lent until the next loop call (poll or run) on
 * this loop, and may be passed to zcn_udp_sendto without a copy until
 * then; the array must stay valid and untouched by the caller until the
 * socket is destroyed or batch mode is turned off. While the loop runs in
 * callback mode (zcn_loop_run*) the datagrams go to the callback, as
 * without batch mode. events NULL (capacity 0) turns batch mode off,
 * giving back what the current batch lent at once. Readiness receive mode
 * only. Owner thread, not from a callback.
 * Errors: ZCN_ERR_INVALID_ARGUMENT (NULL sock, a socket with its own ring
 * (use zcn_udp_poll), multishot receive mode, events NULL with capacity
 * > 0 or capacity 0 with events), ZCN_ERR_BUSY (from a callback). */
ZCN_API ZCN_Error zcn_udp_set_batch(ZCN_UdpSocket *sock, ZCN_UdpEvent *events, uint32_t capacity,
                                    uint32_t tag);
/* Receive flow control (asyncio's pause_reading / resume_reading): after
 * pause_recv the socket reads no datagram (they wait in the kernel's
 * receive queue, up to SO_RCVBUF, and the kernel drops what does not fit,
 * counted in kernel_drops) until resume_recv; datagrams already delivered
 * or in the current batch stay there. Sends go on. Either call on a state
 * it is already in is ZCN_OK. Readiness receive mode only. Owner thread.
 * Errors: ZCN_ERR_INVALID_ARGUMENT (NULL, multishot mode). */
ZCN_API ZCN_Error zcn_udp_pause_recv(ZCN_UdpSocket *sock);
ZCN_API ZCN_Error zcn_udp_resume_recv(ZCN_UdpSocket *sock);

/* ------------------------------------------------------------------ */
/* Demo servers: HTTP/1.1 "Hello, world!" and a RESP2 key/value store  */
/* ------------------------------------------------------------------ */

/* Two protocol servers written on the public API above, as examples to
 * read (examples/http_server.c, examples/resp_server.c; the program
 * examples/demo_server.c runs either) and compiled into the library so
 * that `python -m zcn http` and `python -m zcn resp` run them with no
 * Python per message. Each is a listener on a loop the caller owns and
 * runs in callback mode (zcn_loop_run, zcn_loop_run_once*; not
 * zcn_loop_poll, which turns callbacks off).
 *
 * HTTP: HTTP/1.1 and 1.0 with keep-alive and pipelining; every request is
 * answered "200 OK" with the 13-byte body "Hello, world!" (Content-Type
 * text/plain, Server and Date headers, as the TechEmpower plaintext test).
 * A request body announced by Content-Length is skipped. "Connection:
 * close" (or HTTP/1.0 without "Connection: keep-alive") is answered and the
 * connection closed. A malformed request (bad request line or header, a
 * head over header_max_bytes, a bad or duplicate Content-Length, a body
 * over body_max_bytes, any Transfer-Encoding) is answered "400 Bad
 * Request" after the answers before it, and the connection closed.
 *
 * RESP: RESP2 arrays of bulk strings and inline commands: PING [msg],
 * ECHO msg, SET key value, GET key, DEL key [key ...], INCR key, QUIT,
 * COMMAND (an empty array), CONFIG GET save|appendonly (what
 * redis-benchmark asks). Malformed input (a type byte other than '*' or a
 * command's first letter, a bad or out-of-range length, a missing CRLF)
 * gets "-ERR Protocol error: ..." and a close. A store over keys_max or
 * memory_max_bytes answers SET/INCR with "-OOM ...", and keeps serving.
 *
 * Both parse straight out of the loop's receive buffers, one byte state
 * machine per connection that carries its state across buffers (a SET
 * value is copied once, into the store; a key is copied only when it
 * spans two receives); the answers to everything one receive carried leave
 * in one zcn_loop_send. Output is bounded by the loop's send_queue_max_bytes:
 * a peer that stops reading is paused by the loop's delivery gate (no more
 * of its data is delivered until its queue drains; send_timeout_ms ends
 * it), and one whose answers to a single receive do not fit in its queue
 * (small requests for large answers: the send in on_data is refused with
 * ZCN_ERR_QUEUE_FULL for the connection's own limits, or EMSGSIZE) is
 * aborted (output_aborts), as Redis's client-output-buffer-limit does.
 * A send refused only for now aborts nobody: ZCN_ERR_EXHAUSTED (no free
 * pool buffer for the copy) or ZCN_ERR_QUEUE_FULL for the server as a
 * whole (its buffer budget used up: the connection waits for budget), the
 * load of other peers. Then that connection's unsent answers and the
 * unparsed rest of the receive are copied aside (output_holds), its
 * receive is paused, and at the on_drain the refusal promises the answers
 * are queued (in pieces of one pool buffer; refused again, the next
 * on_drain goes on), the rest is parsed likewise and receiving resumes:
 * answers stay in order, none lost or repeated, and a close the last one
 * asked for waits for them. What all connections hold aside is capped at
 * 32 MiB together; a connection whose hold would pass it is aborted
 * (hold_aborts). Nothing is allocated for this unless a send is refused. */
typedef struct ZCN_Demo ZCN_Demo;

/* Zero in any field means the default beside it. Read during create only. */
typedef struct ZCN_DemoConfig {
    const char *address;            /* IPv4 or IPv6 literal; NULL = "127.0.0.1" */
    uint16_t port;                  /* 0 = an ephemeral port (zcn_demo_port) */
    uint16_t reserved;
    uint32_t backlog;               /* 0 = 1024 */
    uint32_t connections_max;       /* 0 = 4096; more are aborted at accept */
    uint32_t header_max_bytes;      /* HTTP: request line + headers; 0 = 8192 */
    uint32_t body_max_bytes;        /* HTTP: largest body skipped; 0 = 1 MiB */
    uint32_t keys_max;              /* RESP: keys in the store; 0 = 1000000 */
    uint32_t bulk_max_bytes;        /* RESP: one argument (a value); 0 = 512 KiB */
    uint32_t args_max;              /* RESP: arguments of one command; 0 = 1024 */
    uint32_t key_max_bytes;         /* RESP: a key or PING/ECHO message; 0 = 512 */
    uint32_t inline_max_bytes;      /* RESP: an inline command line; 0 = 1024 */
    uint64_t memory_max_bytes;      /* RESP: keys + values + 16 B per entry;
                                       0 = 256 MiB */
} ZCN_DemoConfig;

typedef struct ZCN_DemoStats {
    uint64_t connections;           /* open now */
    uint64_t requests;              /* requests (HTTP) or commands (RESP) answered */
    uint64_t protocol_errors;       /* malformed input: 400 or -ERR, then closed */
    uint64_t limit_errors;          /* RESP: refused by a limit (-OOM, too long) */
    uint64_t output_aborts;         /* aborted: answers over the send queue limit */
    uint64_t rejected;              /* aborted at accept: over connections_max */
    uint64_t keys;                  /* RESP: keys stored now */
    uint64_t memory_bytes;          /* RESP: bytes the store accounts now */
    uint64_t output_holds;          /* answers held for on_drain: a send refused
                                       for now (no free pool buffer, the
                                       server's budget used up) */
    uint64_t hold_aborts;           /* aborted: holding its answers would pass
                                       the demo's hold cap (32 MiB in all) */
} ZCN_DemoStats;

/* Creates the HTTP (or RESP) demo as a listener on loop (zcn_server_create_on
 * with address, port and backlog) and starts accepting: the calling thread
 * becomes the loop's owner, as with zcn_server_start, so call it on the
 * thread that will run the loop. All memory is allocated here (the RESP
 * store's table for keys_max keys; its entries as values are set, within
 * memory_max_bytes). The handle is the caller's until zcn_demo_destroy,
 * which must come before zcn_loop_destroy (the listener is the loop's).
 * config may be NULL (all defaults). Errors: ZCN_ERR_INVALID_ARGUMENT (NULL
 * loop, a limit out of range), ENOMEM, those of zcn_server_create_on and
 * zcn_server_start. */
ZCN_API ZCN_Demo *zcn_demo_http_create(ZCN_Loop *loop, const ZCN_DemoConfig *config,
                                       ZCN_Error *err);
ZCN_API ZCN_Demo *zcn_demo_resp_create(ZCN_Loop *loop, const ZCN_DemoConfig *config,
                                       ZCN_Error *err);
/* The bound port; 0 for NULL. Any thread. */
ZCN_API uint16_t zcn_demo_port(const ZCN_Demo *demo);
/* A snapshot of the counters: the owner thread, or any thread once the
 * loop has stopped. ZCN_ERR_INVALID_ARGUMENT for NULL. */
ZCN_API ZCN_Error zcn_demo_stats(const ZCN_Demo *demo, ZCN_DemoStats *out);
/* Closes the listener and its connections (on_close for each) and frees
 * the demo and its store. Before zcn_loop_destroy; the owner thread while
 * the loop is not running (not from a callback: ZCN_ERR_BUSY, nothing
 * done). NULL gives ZCN_ERR_INVALID_ARGUMENT. */
ZCN_API ZCN_Error zcn_demo_destroy(ZCN_Demo *demo);

#ifdef __cplusplus
}
#endif

#endif /* ZERO_COPY_NET_H */
