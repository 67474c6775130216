/* Shared by the library's own sources; not installed. */
#ifndef ZCN_INTERNAL_H
#define ZCN_INTERNAL_H

#include "zero_copy_net.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ZCN_CACHE_LINE 64

#define ZCN_LIKELY(x) __builtin_expect(!!(x), 1)
#define ZCN_UNLIKELY(x) __builtin_expect(!!(x), 0)

/* io_uring uapi values newer than liburing 2.3's headers (Linux
 * include/uapi/linux/io_uring.h). Used only after a run-time probe. */
#define ZCN_IORING_RECVSEND_BUNDLE (1U << 4)      /* sqe->ioprio, Linux 6.10 */
#define ZCN_IORING_FEAT_RECVSEND_BUNDLE (1U << 14) /* io_uring_params.features */

/* Records the detail string zcn_error_detail() returns on this thread and
 * returns err, so failure paths read `return zcn_fail(ERR, "...", ...)`. */
ZCN_Error zcn_fail(ZCN_Error err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Clears the detail string (a successful create starts clean). */
void zcn_clear_detail(void);

/* Sets *err when err is not NULL. */
static inline void zcn_set_err(ZCN_Error *err, ZCN_Error value)
{
    if (err != NULL)
        *err = value;
}

/* Maps a failed io_uring_queue_init* (negative errno) to a code naming the
 * likely cause, with the detail string set. */
ZCN_Error zcn_uring_setup_error(int neg_errno);

/* zcn_ring_create with an explicit CQ size (0 = 2 * entries); c/ring.c.
 * The server sizes its CQ for its connection count. */
ZCN_Ring *zcn_ring_create_ex(uint32_t entries, uint32_t cq_entries, uint32_t flags,
                             ZCN_Error *err);

/* A ring on the backend asked for (ZCN_BACKEND_AUTO: the ZCN_BACKEND
 * environment variable, else io_uring with epoll where io_uring is refused;
 * c/ring.c). The ring's zcn_ring_io_uring() is a struct io_uring on both
 * (c/uring.h). */
ZCN_Ring *zcn_ring_create_backend(uint32_t entries, uint32_t cq_entries, uint32_t flags,
                                  ZCN_Backend backend, ZCN_Error *err);
/* What the ring runs on and why (reason: static, never NULL; may be NULL). */
ZCN_Backend zcn_ring_backend(const ZCN_Ring *ring, const char **reason);
/* Replaces the ring's reason (printf format). */
void zcn_ring_set_reason(ZCN_Ring *ring, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Reads ZCN_BACKEND (unset, "" or "auto": ZCN_BACKEND_AUTO); an unknown value
 * is ZCN_ERR_INVALID_ARGUMENT with the detail set. value_out may be NULL. */
ZCN_Error zcn_backend_from_env(ZCN_Backend *out, const char **value_out);

/* Internal zcn_ring_create_ex flag: create the ring disabled
 * (IORING_SETUP_R_DISABLED) so that with SINGLE_ISSUER the thread that later
 * calls zcn_ring_enable, not the creating one, becomes the submitter. */
#define ZCN_RING_START_DISABLED (1u << 31)
/* Internal zcn_ring_create_ex flag: ask for IORING_SETUP_TASKRUN_FLAG on
 * top of the tuned flags, so a busy-polling loop can tell from the SQ
 * ring's flags (IORING_SQ_TASKRUN) when the kernel has completions to post
 * instead of entering it to find out (c/loop.c, busy_poll). Falls back to
 * the plain tiers where the kernel refuses it. */
#define ZCN_RING_TASKRUN_FLAG (1u << 30)
ZCN_Error zcn_ring_enable(ZCN_Ring *ring);

/* A seqlock over word-sized relaxed atomics (c/stats.c): the owner
 * writes a copy of at most ZCN_SEQLOCK_WORDS_MAX words, other threads read
 * it whole, retrying while a write is under way. */
#define ZCN_SEQLOCK_WORDS_MAX 64
void zcn_seqlock_write(_Atomic uint32_t *seq, _Atomic uint64_t *dst, const void *src,
                       size_t words);
void zcn_seqlock_read(const _Atomic uint32_t *seq, const _Atomic uint64_t *src, void *dst,
                      size_t words);
/* Whether the calling thread may read the loop's live counters: its
 * owner, or any thread before the loop has one. */
bool zcn_loop_on_owner(const ZCN_Loop *s);
/* Another thread is about to read a snapshot: the first time, the loop is
 * asked to publish before every wait from now on, and woken for a fresh
 * copy (waited for up to 100 ms while it runs a loop call). */
void zcn_loop_snapshot_request(const ZCN_Loop *s);

/* Completion sources that share a server's ring and loop (UDP sockets
 * created on a server). A source prepares its own SQEs on
 * zcn_server_uring() with user_data from zcn_source_ud(); the server's loop
 * hands each such completion to handle_cqe. Attach/detach on the owner
 * thread only; a server with sources attached refuses destroy (ZCN_ERR_BUSY). */
struct io_uring_cqe;
typedef struct zcn_source {
    void (*handle_cqe)(struct zcn_source *src, struct io_uring_cqe *cqe);
    /* Called before each wait of the server's loop: work the source
     * queued (UDP: its send batch) goes to the kernel now, and work that
     * waits for resources is retried (UDP: a receive that stopped for want
     * of a buffer or an SQE), since the source's own completions may never
     * come to do it. May be NULL. */
    void (*flush)(struct zcn_source *src);
    /* Called when a loop call starts a new poll batch (the previous one's
     * lent memory is the caller's no more): a source in batch mode (UDP,
     * zcn_udp_set_batch) takes its buffers back and empties its event
     * array. May be NULL. */
    void (*end_batch)(struct zcn_source *src);
    /* Called when the loop publishes its counters for other threads (at
     * the end of each loop call, and before each wait once one asked): the
     * source publishes its own (UDP: zcn_udp_stats). May be NULL. */
    void (*publish)(struct zcn_source *src);
} zcn_source;
#define ZCN_SOURCES_MAX 64
#define ZCN_OP_SOURCE 7u
/* A source id no server has: the server's loop drops a completion whose
 * source id is not an attached source's, so a source may retire its own
 * completions still in the CQ by rewriting their user_data to
 * zcn_source_ud(ZCN_SOURCE_NONE, 0) (UDP destroy does). */
#define ZCN_SOURCE_NONE 0xffffffffu
/* user_data for a source's SQE: `tag` (24 bits) is the source's own. */
static inline uint64_t zcn_source_ud(uint32_t source_id, uint32_t tag)
{
    return ((uint64_t)ZCN_OP_SOURCE << 56) | ((uint64_t)(tag & 0xffffffu) << 32) | source_id;
}
static inline uint32_t zcn_source_tag(uint64_t user_data)
{
    return (uint32_t)(user_data >> 32) & 0xffffffu;
}
ZCN_Error zcn_server_attach(ZCN_Server *server, zcn_source *src, uint32_t *id_out);
void zcn_server_detach(ZCN_Server *server, uint32_t id);
/* The server's struct io_uring (void * to keep liburing out of this header). */
void *zcn_server_uring(ZCN_Server *server);
/* Test hook (test_ffi/test_udp.c): while on, every sendmmsg of the socket
 * fails with EAGAIN as if its send buffer were full. */
void zcn_udp_test_full_sndbuf(ZCN_UdpSocket *sock, bool on);
/* Test hook: the next GSO send (several datagrams in one sendmmsg entry)
 * fails with errno err before reaching the kernel. */
void zcn_udp_test_fail_gso(ZCN_UdpSocket *sock, int err);
/* Test hook: the next `count` SQEs the socket asks for for its receives and
 * sends are refused, as when the SQ stays full after a submit. */
void zcn_udp_test_fail_sqes(ZCN_UdpSocket *sock, uint32_t count);
/* Test hook: completions of an earlier socket's generation this socket was
 * handed (it drops them; destroy's retire_posted means there are none). */
uint64_t zcn_udp_test_stale_completions(const ZCN_UdpSocket *sock);
/* Test hook: destroyed sockets still waiting for their last completions. */
uint32_t zcn_udp_test_lingering(void);
/* Nonzero while one of the server's callbacks runs. A source brackets its
 * own callbacks with zcn_server_callback_enter/leave so that running the
 * loop or destroying the server from them gives ZCN_ERR_BUSY. */
int zcn_server_in_callback(const ZCN_Server *server);
void zcn_server_callback_enter(ZCN_Server *server);
void zcn_server_callback_leave(ZCN_Server *server);
/* The same on a loop (zcn_udp_create_on). zcn_loop_claim gives a loop
 * without owner the calling thread as its owner (c/loop.c). */
ZCN_Error zcn_loop_claim(ZCN_Loop *loop, const char *fn);
ZCN_Error zcn_loop_attach(ZCN_Loop *loop, zcn_source *src, uint32_t *id_out);
void zcn_loop_detach(ZCN_Loop *loop, uint32_t id);
void *zcn_loop_uring(ZCN_Loop *loop);
/* What an empty io_uring_enter would say about the loop's ring, for the
 * epoll backend which has no kernel to ask: 0, -EBADFD (not started) or
 * -EEXIST (not its owner thread). */
int zcn_loop_ring_check(const ZCN_Loop *loop);
int zcn_loop_in_callback(const ZCN_Loop *loop);
void zcn_loop_callback_enter(ZCN_Loop *loop);
void zcn_loop_callback_leave(ZCN_Loop *loop);
/* For a source in batch mode: appends an event of `type` for fd and tag to
 * the batch of the zcn_loop_poll running now and returns it; the source may
 * update its fields until that poll returns. NULL when no zcn_loop_poll is
 * running (callback mode, or outside the loop) or its batch is full. */
ZCN_Event *zcn_loop_source_event(ZCN_Loop *loop, uint32_t type, int fd, uint32_t tag);
/* Nonzero while a zcn_loop_poll runs (events may be appended). */
int zcn_loop_polling(const ZCN_Loop *loop);
/* Nonzero when zcn_loop_source_event would succeed now. */
int zcn_loop_event_room(const ZCN_Loop *loop);
/* The attached source for which match(src, arg) is true, or NULL. */
zcn_source *zcn_loop_find_source(ZCN_Loop *loop, bool (*match)(zcn_source *src, void *arg),
                                 void *arg);

/* Smallest power of two >= v (v <= 2^31). */
static inline uint32_t zcn_pow2_ceil(uint32_t v)
{
    if (v <= 1)
        return 1;
    return 1u << (32 - __builtin_clz(v - 1));
}

/* ------------------------------------------------------------------ */
/* c/net.c: plumbing the TCP server and UDP sockets share              */
/* ------------------------------------------------------------------ */

struct io_uring;
struct io_uring_sqe;
struct sockaddr_storage;

/* CLOCK_MONOTONIC in milliseconds. */
uint64_t zcn_now_ms(void);

/* An SQE, submitting what is queued if the SQ is full. NULL only if the
 * kernel refuses that submit, which the caller reports. */
struct io_uring_sqe *zcn_get_sqe(struct io_uring *ring);

/* Test hook (test_ffi): the next `count` zcn_get_sqe calls (on any thread;
 * set it from the thread that runs the loop, before running it) return
 * NULL, as if the kernel had refused the submit that makes room.
 * Every path that needs an SQE must retry later instead of losing work. */
void zcn_test_fail_sqes(uint32_t count);

/* A process-wide registry of live loop handles, so that a stop request
 * from a signal handler or another thread can never touch a handle being
 * destroyed or already freed (the common "global pointer, signal handler
 * calls stop" pattern). Lock-free and async-signal-safe.
 *
 * zcn_live_add registers h (at create) and returns its slot, or -1 when the
 * registry is full: such a handle is found by nobody, so stopping it then
 * relies on the caller alone (see zcn_live_acquire). zcn_live_remove (at
 * the start of destroy) unregisters it and waits until every stop that
 * found it has finished. zcn_live_acquire finds h and pins it, returning
 * the slot to pass to zcn_live_release; -1 if h is not registered and the
 * registry never overflowed; -2 if it is not registered but the registry
 * overflowed once (h may be live but unregistered: the caller proceeds). */
#define ZCN_LIVE_MAX 1024
int zcn_live_add(void *h);
void zcn_live_remove(int slot);
int zcn_live_acquire(const void *h);
void zcn_live_release(int slot);

/* Submits what is queued and waits up to timeout_ms (-1 forever, 0 not at
 * all) for a completion. Returns 0 or a negative errno (-ETIME on timeout,
 * -EINTR on a signal); what to make of them is the caller's. */
int zcn_wait(struct io_uring *ring, int timeout_ms);

/* The loop driver both event loops share. `turn` runs one turn of a loop
 * (timers, at most one wait, the completions ready) and reports the work
 * done. zcn_run_until runs turns until something was handled, a stop
 * request arrives, or timeout_ms passes (< 0: never; 0: one turn without
 * waiting); *stopped tells the second.
 *
 * Stop requests are taken, not just seen: each zcn_*_stop makes exactly one
 * loop call return early (the one that takes it), so a loop run again later
 * waits as usual instead of returning at once forever. */
typedef ZCN_Error (*zcn_turn_fn)(void *loop, int timeout_ms, uint32_t *handled);
bool zcn_take_stop(_Atomic int *stop_requested);
ZCN_Error zcn_run_until(void *loop, zcn_turn_fn turn, _Atomic int *stop_requested,
                        int timeout_ms, uint32_t *handled_out, bool *stopped);

/* CQ size for a ring whose completions in flight at once may number
 * cq_want: a power of two, at most 65536, never below 2 * sq_entries. */
uint32_t zcn_cq_entries(uint64_t cq_want, uint32_t sq_entries);

/* Parses an IPv4 or IPv6 literal (NULL: "0.0.0.0") with port into *ss.
 * field names the config field in the error detail. */
ZCN_Error zcn_parse_address(const char *address, uint16_t port, struct sockaddr_storage *ss,
                            socklen_t *len, const char *field);

/* Wakes a loop waiting on the eventfd (signal-safe); drains it again. */
void zcn_eventfd_wake(int fd);
void zcn_eventfd_drain(int fd);

/* A loop's wakeup pipe (zcn_server_wakeup_fd, zcn_udp_wakeup_fd): created
 * on first request, watched by a multishot poll the loop arms before each
 * wait; a byte written to it ends the wait and the loop call returns EINTR,
 * as a signal would. */
struct zcn_wakeup_pipe {
    int read_fd;                /* -1 until requested */
    int write_fd;
    bool armed;                 /* a poll on read_fd is in flight */
    bool fired;                 /* bytes came: the loop call returns EINTR */
};
void zcn_wakeup_init(struct zcn_wakeup_pipe *p);
/* Creates the pipe (non-blocking, close-on-exec) if needed; *fd_out gets its
 * write end. */
ZCN_Error zcn_wakeup_open(struct zcn_wakeup_pipe *p, int *fd_out);
/* Queues the poll (user_data ud) if the pipe exists and none is armed. */
void zcn_wakeup_arm(struct zcn_wakeup_pipe *p, struct io_uring *ring, uint64_t ud);
/* The poll's completion: drains the pipe and marks it fired. */
void zcn_wakeup_on_cqe(struct zcn_wakeup_pipe *p, const struct io_uring_cqe *cqe);
/* Whether bytes came since the last call (clears the mark). */
bool zcn_wakeup_take(struct zcn_wakeup_pipe *p);
/* The loop call returns EINTR for a signal anyway: the bytes that signal
 * wrote must not end the next call too. */
void zcn_wakeup_consume(struct zcn_wakeup_pipe *p);
void zcn_wakeup_close(struct zcn_wakeup_pipe *p);

/* ------------------------------------------------------------------ */
/* c/bufring.c: pool buffers and the provided-buffer ring              */
/* ------------------------------------------------------------------ */

/* Where a pool buffer is; the same life cycle for TCP and UDP. */
enum zcn_buf_state {
    ZCN_BUF_POOL = 0,           /* free in the pool */
    ZCN_BUF_RING,               /* in the kernel's buffer ring */
    ZCN_BUF_RX,                 /* holds received data; refs > 0 */
    ZCN_BUF_USER,               /* acquired by the user (acquire_buffer) */
    ZCN_BUF_TX,                 /* being sent (copy or send_buffer); refs > 0 */
    ZCN_BUF_PACK,               /* TCP: small copies of several connections
                                   (the loop's pack buffer); refs = its chunks,
                                   +1 while the loop still fills it */
};

struct zcn_buf_meta {
    uint32_t refs;
    uint32_t len;               /* received bytes (TCP: pending deliveries) */
    int32_t next;               /* pending-rx or lent list link */
    uint8_t state;
    uint16_t ring_pos;          /* ZCN_BUF_RING: its 16-bit position in the ring */
};

/* Index of a buffer taken from the pool (for a copied send or the user);
 * -1 if the pool is empty. */
int64_t zcn_buf_take(ZCN_BufferPool *pool, const uint8_t *slab, size_t buffer_size);

/* acquire_buffer / release_buffer / "is this the user's buffer", shared by
 * zcn_server_* and zcn_udp_*. acquire_name is the public call named in the
 * error detail. */
uint8_t *zcn_user_buffer_acquire(ZCN_BufferPool *pool, struct zcn_buf_meta *meta,
                                 const uint8_t *slab, size_t buffer_size,
                                 size_t *capacity_out);
int64_t zcn_user_buffer_index(const ZCN_BufferPool *pool, const struct zcn_buf_meta *meta,
                              const uint8_t *buffer);
ZCN_Error zcn_user_buffer_release(ZCN_BufferPool *pool, struct zcn_buf_meta *meta,
                                  uint8_t *buffer, const char *acquire_name);

/* A registered provided-buffer ring over a pool's slab (liburing 2.3 has no
 * io_uring_setup_buf_ring): page-aligned memory, registered as group bgid.
 * br != NULL exactly while registered (a failed setup unmaps at once). */
struct io_uring_buf_ring;
struct zcn_bufring {
    struct io_uring_buf_ring *br;
    size_t bytes;
    const uint8_t *slab;
    size_t buffer_size;
    uint32_t mask;
    uint32_t count;             /* buffers the kernel can take now */
    uint32_t pending;           /* added, not yet published */
    uint16_t bgid;
    /* With zcn_bufring_track_order: the bid added at each 16-bit ring
     * position (the kernel's own head/tail arithmetic), so a receive
     * bundle's buffers, which follow its first one in ring order, can be
     * named. NULL otherwise. */
    uint16_t *order;
};

/* Maps and registers a ring of pow2_ceil(entries) slots; empty until
 * buffers are added and published. */
ZCN_Error zcn_bufring_setup(struct zcn_bufring *r, struct io_uring *ring, uint16_t bgid,
                            uint32_t entries, const uint8_t *slab, size_t buffer_size);
/* Unregister before the ring goes; unmap after the kernel let go. */
void zcn_bufring_unregister(struct zcn_bufring *r, struct io_uring *ring);
void zcn_bufring_unmap(struct zcn_bufring *r);
/* Keeps the mirror of ring order (r->order, 128 KiB) from now on: for
 * receive bundles. Call right after setup, before the first add. */
ZCN_Error zcn_bufring_track_order(struct zcn_bufring *r);
/* Adds buffer bid; the kernel sees it after zcn_bufring_publish. Returns
 * the 16-bit ring position it took. */
uint16_t zcn_bufring_add(struct zcn_bufring *r, uint32_t bid);
/* Publishing is one release store; callers batch it per loop turn. */
void zcn_bufring_publish(struct zcn_bufring *r);

#endif
