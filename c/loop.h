/* The loop's private header: the loop structure (ring, buffers, the
 * connection table, timers, watches, calls, the handles on it), the
 * listener and connection structures, the inline helpers every part shares
 * (user_data packing, lookups, the intrusive lists) and the functions one
 * part calls in another. The parts:
 *   c/loop.c        the loop: turns, waits, dispatch of each completion to
 *                   its owner, run/poll/stop, wake-up, create and destroy
 *   c/timer.c       timers (a heap on the loop's clock)
 *   c/watch.c       fd watches and cross-thread calls
 *   c/server.c      the TCP listener (accept) and the seed's server API
 *   c/connect.c     outbound TCP connections
 *   c/tcp_conn.c    a connection's life and its receive side (listeners
 *                   and connectors share it)
 *   c/tcp_send.c    the send queue and the send/close calls
 *   c/deliver.c     event delivery: callbacks or poll batches
 *   c/forward.c     forwarding one connection's data to another
 *   c/splice.c      forwarded streams through a pipe (splice(2))
 *   c/buffers.c, c/buffers.h  buffers: refcounts, the receive ring's refill, the policy
 * Not installed. */
#ifndef ZCN_LOOP_H
#define ZCN_LOOP_H

#include "uring.h"

#include <liburing.h>

#include <errno.h>
#include <pthread.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUFFER_GROUP 0
#define IOV_BATCH 16            /* chunks per sendmsg */
#define CQE_BATCH 256           /* completions handled per wait */
#define ACCEPT_BACKOFF_MIN_MS 10
#define ACCEPT_BACKOFF_MAX_MS 1000
#define DESTROY_DRAIN_MS 2000
#define SEND_TIMEOUT_DEFAULT_MS 60000
/* A connection whose queued data made no progress for this long may be
 * evicted when another one waits for budget. */
#define EVICT_STALL_MS 100
#define EVICT_SCAN_MS 10
#define EVICT_BATCH 64
/* How often connections with queued data are checked for send timeouts
 * (at most; a quarter of send_timeout_ms when that is shorter). */
#define SEND_SWEEP_MS 250
/* Zero-copy slices shorter than this are copied into the packed last
 * buffer of a non-empty queue: bytes then bound buffers and chunks. */
#define COALESCE_BYTES 512
/* The receive ring's base size, before 2 per open connection (ring_want):
 * small, so the buffers the kernel writes into come round again soon and
 * are warm. At 1 connection x 8 x 64 KiB a base of 8 against 32 gave 9-14%
 * more messages/s at 8-12% less CPU per message in three runs
 * (PERFORMANCE.md), with no ENOBUFS either way (bursts grow the ring by
 * br_extra). */
#define RING_BASE 8
/* Room under its cap a connection needs to receive with multishot (the
 * kernel posts up to 32 completions per request before it lets others
 * run, MULTISHOT_MAX_RETRY). */
#define MSHOT_ROOM 32
/* The ring is topped up from the pool once it is short of its target by
 * this fraction (1/8); short of less, recycled buffers refill it. */
#define RING_REFILL_SLACK_DIV 8
/* Buffers of one connection a poll batch carries at most. */
#define BATCH_PER_CONN 2
#define NIL (-1)
#define ZCN_LOOP_SERVERS_MAX 256
#define CONNECT_TIMEOUT_DEFAULT_MS 30000

enum op {
    OP_ACCEPT = 1,              /* slot = the listener's index */
    OP_RECV,
    OP_SEND,
    OP_WAKE,
    OP_IGNORE,                  /* cancels: the result does not matter */
    OP_WAKEUP_PIPE,             /* zcn_server_wakeup_fd's pipe */
    OP_SOURCE = ZCN_OP_SOURCE,  /* an attached source's request (UDP) */
    OP_TICK = ZCN_OP_SOURCE + 1, /* the policy's clock (send timeouts, evictions) */
    OP_CONNECT,                 /* an outbound connect: gen and slot of the conn */
    OP_WATCH,                   /* an fd watch's poll: gen and slot of the watch */
    OP_SPLICE_IN,               /* splice mode: POLLIN on the source (c/splice.c) */
    OP_SPLICE_OUT,              /* splice mode: POLLOUT on the target, under the
                                   source's gen and slot */
};

/* Splice mode's pipe (c/splice.c): asked for this size, the kernel's
 * default (64 KiB) if refused. */
#define SPLICE_PIPE_BYTES (1u << 20)
/* What one pump moves at most before it yields to the other connections
 * (its POLLIN fires again at once if more is there). */
#define SPLICE_PUMP_BYTES (4u << 20)
/* AUTO without ZCN_FORWARD_SPLICE: a direction that forwarded this many
 * full pool buffers with never two short ones in a row (one short buffer,
 * a write's tail, between full ones is still a stream) switches to splice
 * mode; a splice mode the switch chose goes back to buffers after this
 * many fills of the pipe shorter than a pool buffer in a row. */
#define SPLICE_AUTO_RUN 8

enum conn_state {
    CONN_FREE = 0,
    CONN_CONNECTING,            /* outbound: the connect is in flight */
    CONN_OPEN,
    CONN_CLOSING,               /* flushing the send queue, then closing */
    CONN_DEAD,                  /* waiting for the kernel to let go */
    CONN_ZOMBIE,                /* close event emitted; fd closed at next poll */
};

struct chunk {
    uint32_t bid;
    uint32_t off;
    uint32_t len;
    int32_t next;
};

/* Links of the intrusive lists connections are on (NOT_LINKED = on none). */
#define NOT_LINKED (-2)
struct link {
    int32_t prev, next;
};
struct list {
    int32_t head, tail;
    uint32_t count;
};

/* Timers (c/timer.c): a binary heap of slots ordered by (due, seq). Slots
 * below conns_max are the connections' own (idle and connect timeouts,
 * slot = the connection's); the rest are the users' (zcn_loop_timer_*). */
struct zcn_timer {
    uint64_t due_ms;
    uint64_t repeat_ms;
    uint64_t seq;               /* start order: ties of due_ms */
    ZCN_OnTimer cb;
    void *user_data;
    uint32_t gen;               /* ids carry it: a stale id finds no timer */
    int32_t pos;                /* in the heap; NIL when not pending */
    int32_t next_free;
};
struct zcn_timers {
    struct zcn_timer *t;
    uint32_t *heap;
    uint32_t n;                 /* heap entries */
    uint32_t conns;             /* the first user slot */
    uint32_t user_max, user_count;
    int32_t free;               /* free user slots */
    uint64_t seq;
};

/* Fd watches (c/watch.c): one poll request at a time per watch, re-armed
 * after each event (level-triggered). */
struct zcn_watch {
    int fd;
    uint32_t events;            /* ZCN_WATCH_READ | _WRITE */
    ZCN_OnWatch cb;
    void *user_data;
    uint32_t gen;
    bool active;
    bool armed;                 /* a poll request is in the kernel */
    bool want_arm;              /* no SQE last time: armed at the next turn */
    bool parked;                /* no callback, fired outside a poll: the next
                                   poll re-arms it */
    bool cancel_pending;        /* removed, its poll still in the kernel and no
                                   SQE for the cancel yet: the slot waits */
    int32_t next_free;
};
struct zcn_watches {
    struct zcn_watch *w;
    uint32_t max, count;
    int32_t free;
    uint32_t high;              /* slots below this have been used */
    uint32_t want_arm;          /* watches waiting for an SQE */
    uint32_t parked;            /* watches waiting for a poll */
    uint32_t cancels;           /* removed watches waiting for an SQE to cancel */
    bool submit_due;            /* a cancel was queued inside a loop call: that
                                   call submits it before it returns */
};

/* Cross-thread calls (c/watch.c): a bounded lock-free FIFO, many
 * producers (any thread) and one consumer (the loop). Each cell carries a
 * sequence number (D. Vyukov's bounded queue): a producer claims position
 * `tail` by compare-and-swap when its cell's seq equals it, writes the call
 * and publishes seq = pos + 1; the loop takes the cell at `head` once seq
 * is head + 1 and hands it back with seq = head + cap. No producer ever
 * waits on another or on the loop. The fields producers write and the one
 * the loop writes are kept on different cache lines. */
struct zcn_call {
    _Atomic uint64_t seq;
    ZCN_Call fn;
    void *arg;
};
struct zcn_calls {
    struct zcn_call *q;
    uint32_t cap;
    bool inited;
    char pad0[64];
    _Atomic uint64_t tail;      /* next position a producer claims */
    _Atomic uint32_t pending;   /* published and not yet run: wakes the loop
                                   on 0 -> 1, checked before each wait */
    char pad1[64];
    uint64_t head;              /* the loop's next position (loop only) */
    char pad2[64];
};

/* What a connection calls: its listener's callbacks (embedded in the
 * ZCN_Server) or those of its connect (one per slot, in the loop). */
struct zcn_handler {
    void *user_data;
    ZCN_OnAccept on_accept;
    ZCN_OnData on_data;
    ZCN_OnClose on_close;
    ZCN_OnDrain on_drain;
    ZCN_OnEof on_eof;
    ZCN_OnConnect on_connect;
    uint64_t idle_timeout_ms;   /* 0 = never */
    uint32_t tag;               /* ZCN_Event.tag */
    bool half_close_flag;
    bool nodelay;
    /* outbound: the peer's address, read by the kernel at submission */
    struct sockaddr_storage addr;
    socklen_t addr_len;
};

struct conn {
    int fd;
    uint8_t state;
    bool outbound;              /* connected out; h is loop->out_h[slot] */
    bool rx_paused;             /* zcn_loop_pause_recv: no deliveries, no receive */
    int close_errno;            /* the first error that ended it (CLOSE offset) */
    uint32_t send_many_seq;     /* the zcn_loop_send_many call that refused it */
    int32_t send_many_err;      /* and with what: its later items get the same */
    bool connect_inflight;      /* the OP_CONNECT is in the kernel */
    bool connect_submitted;     /* it was prepared (else: no SQE yet) */
    bool connect_cancelled;     /* a cancel for it is queued */
    bool quiet;                 /* its owner is gone and was told: no more calls */
    bool recv_armed;
    bool recv_multishot;        /* the armed recv takes any number of buffers */
    bool recv_bundle;           /* ... and several per completion (a bundle) */
    bool recv_cancelled;        /* a cancel for the armed recv is queued */
    bool send_inflight;
    bool send_cancelled;
    bool eof;                   /* the peer closed its side */
    bool eof_reported;          /* on_eof / EOF event emitted */
    bool shut_wr;               /* zcn_server_shutdown: FIN once drained */
    bool shut_wr_done;
    bool want_drain;            /* a send was refused: emit DRAIN later */
    bool drain_notify;          /* zcn_loop_notify_drain: DRAIN at drain_below */
    uint64_t drain_below;
    bool rst;                   /* aborted: close with a reset */
    bool in_tx;                 /* on the send-submission list */
    bool fwd_auto;              /* zcn_loop_forward AUTO: data goes to fwd_to
                                   without an on_data call */
    bool fwd_splice;            /* ZCN_FORWARD_SPLICE: AUTO through a pipe */
    bool splice_auto;           /* the per-size switch wants splice mode */
    bool splicing;              /* in splice mode (c is the source) */
    bool splice_in_armed;       /* OP_SPLICE_IN is in the kernel */
    bool splice_out_armed;      /* OP_SPLICE_OUT is in the kernel */
    bool splice_in_cancelled;
    bool splice_out_cancelled;
    bool splice_eof;            /* splice read 0: EOF once the pipe drains */
    bool splice_short;          /* the last buffer forwarded was short */
    uint8_t splice_run;         /* full buffers (or short fills) in a row */
    int pipe_rd, pipe_wr;       /* splice mode's pipe, -1 when none */
    uint32_t pipe_bytes, pipe_cap;
    uint32_t gen;
    /* zcn_loop_forward: c's data goes to the connection in slot fwd_to
     * (c's deliveries and receives are gated on that one's send-queue
     * room), and the one in slot fwd_from forwards to c; NIL for none.
     * Each link carries the generation of the slot it names, and both
     * ends are cleared when either leaves service (zcn_tcp_forward_unlink),
     * so a reused slot is never followed. */
    int32_t fwd_to, fwd_from;
    uint32_t fwd_to_gen, fwd_from_gen;
    /* send queue: a list of chunks */
    int32_t sq_head, sq_tail;
    uint64_t queued_bytes;
    uint32_t sq_bufs;           /* distinct buffers the queue holds (runs of
                                   chunks on one buffer count once) */
    uint32_t sq_chunks;
    uint32_t inflight_chunks;   /* chunks the send in flight reads */
    /* received data not yet delivered (delivery deferred while the
     * connection is over its cap), linked through zcn_buf_meta.next */
    int32_t rx_head, rx_tail;
    uint32_t rx_bufs;
    uint64_t rx_bytes;
    /* poll mode: data lent to the caller in batch `lent_batch`, which the
     * caller may still send: counted against the queue limit */
    uint32_t lent_batch;
    uint32_t lent_bufs;
    uint64_t lent_bytes;
    struct link service;        /* work waiting for room, buffers or SQEs */
    struct link wait;           /* waiting for budget, FIFO */
    int32_t zombie_next;        /* also the free-slot link */
    uint64_t last_active_ms;
    uint64_t progress_ms;       /* last send progress (or queue start) */
    uint64_t bytes_in, bytes_out;
    struct zcn_handler *h;
    int connect_error;          /* outbound: the errno it failed with */
    struct msghdr msg;
    struct iovec iov[IOV_BATCH];
};

struct ZCN_Loop {
    ZCN_Ring *ring_handle;
    struct io_uring *ring;
    ZCN_BufferPool *pool;
    uint8_t *slab;
    size_t buffer_size;
    uint32_t buffer_count;
    struct zcn_buf_meta *meta;

    struct zcn_bufring rx;      /* the receive ring, group BUFFER_GROUP */
    uint32_t br_target;         /* the most the ring may hold */
    uint32_t br_extra;          /* grown when bursts found the ring empty */
    bool rx_bundle;             /* multishot receives take bundles (docs/BUFFERS.md) */
    uint32_t bundles_armed;     /* connections whose armed receive takes bundles */
    uint32_t bundle_ring_max;   /* the most the ring holds while any does */

    /* the buffer policy */
    uint32_t pool_free;         /* buffers free in the pool */
    uint32_t reserve;
    uint32_t budget;            /* buffer_count - reserve */
    uint32_t parked;            /* buffers held by connections */
    uint32_t holders;           /* connections holding any */
    uint32_t user_bufs;         /* acquired by the application */
    uint32_t lent_count;        /* lent to the current poll batch */
    /* Small copies into empty send queues share one buffer, the pack
     * buffer (docs/BUFFERS.md, "Small copies"): a thousand connections
     * each sent 64 bytes take one or a few buffers, not a thousand. */
    int64_t pack_bid;           /* the buffer being filled; -1: none */
    uint32_t pack_off;          /* its bytes handed out so far */
    uint32_t pack_max;          /* the largest copy packed (buffer_size / 8) */
    uint32_t pack_bufs;         /* pack buffers alive: this one and retired
                                   ones chunks still refer to (budgeted) */
    uint32_t copy_headroom;     /* pool buffers the ring leaves for copies */
    uint32_t ring_target;       /* ring_want and pool_keep as of the last */
    uint32_t pool_keep;         /* zcn_tcp_ring_refill (recycle reads them) */
    /* Ring buffers the kernel took for receives whose completions the
     * current reap has not handled yet: counted in rx.count, no longer in
     * the ring (reap() sets it; 0 outside a reap). */
    uint32_t rx_unreaped;
    uint64_t send_timeout_ms;   /* 0 = never */
    uint32_t hard_max_bufs;
    uint64_t evict_check_ms;    /* last eviction scan */
    bool reaped;                /* this turn has reaped: stalls can be judged */

    struct chunk *chunks;
    uint32_t chunks_max;
    uint32_t conn_chunks_max;
    int32_t chunk_free;
    uint32_t chunks_used;

    struct conn *conns;
    uint32_t conns_max;
    uint32_t conns_active;
    int32_t conn_free;          /* free slots, linked via zombie_next */
    int32_t *fd_table;          /* fd -> slot, NIL if none */
    uint32_t fd_table_size;

    int wake_fd;
    bool started;               /* claimed by its owner thread, ring enabled */
    bool wake_armed;
    bool tick_armed;            /* an OP_TICK timeout is in the kernel */
    struct __kernel_timespec tick_ts;
    bool destroying;
    bool poll_mode;             /* events go to zcn_server_poll's array */
    struct zcn_wakeup_pipe wakeup;
    int in_callback;
    struct conn *delivering;    /* on_data is running for it */
    int in_loop;                /* inside a loop call (events may be emitted) */
    int live_slot;              /* zcn_live registry entry (safe stop, call) */
    const void *owner;          /* this_thread() of the thread that started it */
    _Atomic int stop_requested;
    /* busy polling (ZCN_LoopConfig.busy_poll_us; c/loop.c busy_wait) */
    uint64_t busy_poll_ns;      /* 0 = off */
    uint64_t busy_last_ns;      /* when a wait last found completions */
    bool busy_peek;             /* the ring has TASKRUN_FLAG: a spin enters the
                                   kernel only when IORING_SQ_TASKRUN says so */
    bool direct_sends;          /* a reaped batch answering one connection sends
                                   with sendmsg, not an SQE (c/tcp_send.c) */

    uint64_t send_queue_max_bytes;
    uint32_t send_queue_max_bufs; /* the same limit counted in buffers */
    uint32_t batch;             /* poll batches started (end_batch) */
    uint32_t send_many_seq;     /* zcn_loop_send_many calls */
    uint64_t now_ms;
    struct list service, waiters;
    uint32_t queues_busy;       /* connections with queued data */
    uint32_t slots_high;        /* slots below this have been used; freed slots
                                   are reused before untouched ones, so this is
                                   the peak of connections at once, where the
                                   periodic scans stop */
    uint64_t send_sweep_ms;     /* next send-timeout sweep */
    int32_t zombie_head;
    int32_t lent_head;          /* bids lent to the current poll batch */

    /* the handles on the loop */
    struct ZCN_Server *servers[ZCN_LOOP_SERVERS_MAX];
    uint32_t servers_count;     /* slots used (some may be NULL) */
    uint32_t server_gen;
    struct zcn_handler *out_h;  /* outbound connections' callbacks, by slot */
    struct zcn_timers timers;
    struct zcn_watches watches;
    struct zcn_calls calls;
    ZCN_LoopStats lstats;       /* the loop's own counters (lstats.tcp unused) */
    _Atomic uint64_t calls_refused; /* zcn_loop_call from any thread */
    /* The counters as of the last wait, for other threads (zcn_loop_stats,
     * zcn_server_stats): a seqlock over word-sized atomics, written by the
     * owner before each wait (odd while it writes) once another thread has
     * asked for them (snap_wanted). */
    _Atomic uint32_t snap_wanted;
    _Atomic uint32_t snap_running; /* inside a loop call: a wake-up is answered */
    _Atomic uint32_t snap_seq;
    _Atomic uint64_t snap[sizeof(ZCN_LoopStats) / sizeof(uint64_t)];
    /* poll mode: events go here instead */
    ZCN_Event *ev;
    uint32_t ev_cap;
    uint32_t ev_n;

    ZCN_ServerStats stats;
    /* Connections with data queued and no send in flight: their sends
     * are submitted once per reaped batch, so several messages to one
     * connection leave in one sendmsg. Entries carry the slot generation;
     * a slot freed and reused meanwhile leaves a stale entry, skipped. */
    struct tx_entry {
        uint32_t slot;
        uint32_t gen;
    } *tx;
    uint32_t tx_n, tx_cap;
    zcn_source *sources[ZCN_SOURCES_MAX];
    uint32_t sources_count;
};

/* A TCP listener on a loop. */
struct ZCN_Server {
    ZCN_Loop *loop;
    bool own_loop;              /* zcn_server_create: the loop is its own */
    uint32_t index;             /* in loop->servers; OP_ACCEPT's slot */
    uint32_t gen;               /* OP_ACCEPT's gen: a late accept of a
                                   destroyed listener finds no server */
    bool closing;               /* destroyed or its loop is: no accepts */
    int listen_fd;
    uint16_t port;
    uint32_t backlog;
    bool started;
    bool accept_armed;
    uint64_t accept_resume_ms;
    uint32_t accept_backoff_ms;
    int live_slot;              /* zcn_live registry entry (safe stop) */
    struct zcn_handler h;
};

/* ------------------------------------------------------------------ */
/* small helpers                                                       */
/* ------------------------------------------------------------------ */

/* ------------------------------------------------------------------ */
/* functions of one part called in another                            */
/* ------------------------------------------------------------------ */

/* c/deliver.c */
void zcn_tcp_emit(ZCN_Loop *s, uint32_t type, struct conn *c);
/* Hands one received buffer to the user. The delivery's reference is held
 * until the callback returns (callback mode) or the next poll (poll mode). */
void zcn_tcp_emit_data(ZCN_Loop *s, struct conn *c, uint32_t bid, uint32_t len);

/* c/tcp_conn.c */
void zcn_tcp_maybe_arm_recv(ZCN_Loop *s, struct conn *c);
void zcn_tcp_cancel_ud(ZCN_Loop *s, uint64_t ud, bool *done_flag, struct conn *c);
void zcn_tcp_free_slot(ZCN_Loop *s, struct conn *c);
void zcn_tcp_finalize(ZCN_Loop *s, struct conn *c);
void zcn_tcp_progress_close(ZCN_Loop *s, struct conn *c);
void zcn_tcp_abort_conn(ZCN_Loop *s, struct conn *c, bool rst);
void zcn_tcp_begin_close(ZCN_Loop *s, struct conn *c);
void zcn_tcp_progress_shutdown(ZCN_Loop *s, struct conn *c);
void zcn_tcp_flush_pending_rx(ZCN_Loop *s, struct conn *c);
void zcn_tcp_on_recv(ZCN_Loop *s, struct conn *c, struct io_uring_cqe *cqe);
/* Returns the buffers of a receive completion nobody takes (a stale slot). */
void zcn_tcp_drop_rx_cqe(ZCN_Loop *s, struct io_uring_cqe *cqe);
void zcn_tcp_on_send(ZCN_Loop *s, struct conn *c, int res);
/* A connected socket becomes a connection: a free slot, or NULL (the fd
 * is closed, connections_rejected counted). */
struct conn *zcn_tcp_conn_open(ZCN_Loop *s, int fd, struct zcn_handler *h);
/* Arms the receive and starts the idle clock of a connection just open. */
void zcn_tcp_conn_start(ZCN_Loop *s, struct conn *c);
/* The connection's own timer fired (idle or connect timeout). */
void zcn_tcp_conn_timer(ZCN_Loop *s, struct conn *c);
void zcn_tcp_emit_connect(ZCN_Loop *s, struct conn *c, ZCN_Error result);
/* zcn_loop_forward's links: c leaves service (closing, aborted, its
 * connect failed), so it forwards to nobody and nobody to it; the one that
 * forwarded to c is served from the next turn on its own room. */
void zcn_tcp_forward_unlink(ZCN_Loop *s, struct conn *c);
/* c forwards to nobody from now on (its target shut down by the user). */
void zcn_tcp_forward_stop(ZCN_Loop *s, struct conn *c);
/* t's queue has room again (a send completed, or its connect did): the
 * connection forwarding to t may deliver and receive. */
void zcn_tcp_forward_wake(ZCN_Loop *s, struct conn *t);
/* AUTO: a delivered buffer moves to c's target (or to c's handler if the
 * target can no longer send). */
void zcn_tcp_forward_data(ZCN_Loop *s, struct conn *c, uint32_t bid, uint32_t len);
/* AUTO: c's peer finished and all it sent is queued on the target: the
 * target's FIN follows once that queue drains. */
void zcn_tcp_forward_eof(ZCN_Loop *s, struct conn *c);

/* c/splice.c: ZCN_FORWARD_SPLICE and the per-size switch */
/* c may forward through a pipe now (c/tcp_conn.c asks before it arms a
 * receive): true when c is, or is about to be, in splice mode, so no
 * receive may be armed. */
bool zcn_splice_want(ZCN_Loop *s, struct conn *c);
/* Splice mode ends (the link ended or changed, c closes): the polls are
 * cancelled, what the pipe holds becomes c's deferred data (if c is
 * still open; dropped otherwise), the pipe is closed. */
void zcn_splice_leave(ZCN_Loop *s, struct conn *c);
void zcn_splice_on_poll(ZCN_Loop *s, struct conn *c, enum op op, int res);
/* The DEAD connection's polls: cancelled (again if no SQE last time);
 * true while one is in the kernel. */
bool zcn_splice_busy(ZCN_Loop *s, struct conn *c);
void zcn_splice_close_pipe(struct conn *c);
/* c/tcp_conn.c for c/splice.c */
void zcn_tcp_defer_rx(ZCN_Loop *s, struct conn *c, uint32_t bid, uint32_t len);
void zcn_tcp_peer_eof(ZCN_Loop *s, struct conn *c);
void zcn_tcp_cancel_recv(ZCN_Loop *s, struct conn *c);

/* c/tcp_send.c */
void zcn_tcp_submit_send(ZCN_Loop *s, struct conn *c);
void zcn_tcp_flush_tx(ZCN_Loop *s);
void zcn_tcp_flush_tx_reaped(ZCN_Loop *s);
void zcn_tcp_echo_on_data(void *user_data, int fd, const uint8_t *data, size_t len);
/* zcn_loop_forward AUTO: len bytes of a delivered buffer join t's queue. */
ZCN_Error zcn_tcp_forward_buffer(ZCN_Loop *s, struct conn *t, uint32_t bid, uint32_t len);

/* c/buffers.c */
void zcn_tcp_ring_refill(ZCN_Loop *s);
void zcn_tcp_serve_waiters(ZCN_Loop *s);
void zcn_tcp_evict_for_waiters(ZCN_Loop *s);
void zcn_tcp_sweep_send_timeouts(ZCN_Loop *s);
bool zcn_tcp_tick_needed(const ZCN_Loop *s);
void zcn_tcp_arm_tick(ZCN_Loop *s);

/* c/loop.c */
ZCN_Error zcn_tcp_wrong_thread(const char *fn);
/* Makes the calling thread the loop's owner if it has none (enables the
 * ring, arms the wake-up), else checks it is the owner. */
ZCN_Error zcn_loop_claim(ZCN_Loop *s, const char *fn);
/* zcn_loop_destroy in two steps (c/group.c reads the loop's final stats
 * in between): teardown ends everything on the loop (checks and callbacks
 * as zcn_loop_destroy; the loop stays readable by zcn_loop_stats), free
 * releases its memory, ring included (io_uring_queue_exit cancels what is
 * left). */
ZCN_Error zcn_loop_teardown(ZCN_Loop *s);
void zcn_loop_free(ZCN_Loop *s);
/* Tears down the connections of one handler (all when h is NULL): each is
 * ended now and told on_close (callbacks only), and points to no handler
 * from then on. */
void zcn_loop_end_conns(ZCN_Loop *s, const struct zcn_handler *h);

void zcn_loop_request_stop(ZCN_Loop *s);
/* The loop's counters: live on the owner thread (and before it has one),
 * the snapshot of the last wait on any other. */
void zcn_loop_tcp_stats(const ZCN_Loop *s, ZCN_ServerStats *out);
void zcn_loop_publish_stats(ZCN_Loop *s);
ZCN_Error zcn_loop_run_once_as(ZCN_Loop *s, int timeout_ms, uint32_t *handled_out, const char *fn);
ZCN_Error zcn_loop_poll_as(ZCN_Loop *s, ZCN_Event *events, uint32_t capacity, int timeout_ms,
                           uint32_t *count_out, const char *fn);
ZCN_Error zcn_loop_run_as(ZCN_Loop *s, const char *fn);
ZCN_Error zcn_loop_flush_as(ZCN_Loop *s, const char *fn);
ZCN_Error zcn_loop_wakeup_fd_as(ZCN_Loop *s, int *fd_out, const char *fn);

/* c/server.c: the listeners */
/* Stops accepting for good (loop destroy): out of the registry, the
 * listening socket shut down, its accept cancelled. */
void zcn_server_unlisten(ZCN_Server *srv);
void zcn_tcp_on_accept_cqe(ZCN_Loop *s, struct io_uring_cqe *cqe);
void zcn_tcp_resume_accepts(ZCN_Loop *s);
int zcn_tcp_accept_timer_ms(const ZCN_Loop *s);
void zcn_tcp_fd_freed(ZCN_Loop *s);

/* c/connect.c */
void zcn_tcp_on_connect_cqe(ZCN_Loop *s, struct conn *c, int res);
void zcn_tcp_connect_progress(ZCN_Loop *s, struct conn *c);

/* c/timer.c */
ZCN_Error zcn_timers_init(struct zcn_timers *t, uint32_t conns, uint32_t user_max);
void zcn_timers_free(struct zcn_timers *t);
void zcn_timer_conn_arm(ZCN_Loop *s, uint32_t slot, uint64_t due_ms);
void zcn_timer_conn_disarm(ZCN_Loop *s, uint32_t slot);
/* Ms until the nearest timer (0 if due), -1 if none. */
int64_t zcn_timers_next_ms(const ZCN_Loop *s);
/* Runs the timers due now; returns how many fired. */
uint32_t zcn_timers_run(ZCN_Loop *s);

/* c/watch.c */
ZCN_Error zcn_watches_init(struct zcn_watches *w, uint32_t max);
void zcn_watches_free(struct zcn_watches *w);
void zcn_watch_on_cqe(ZCN_Loop *s, uint64_t ud, int res);
void zcn_watches_rearm(ZCN_Loop *s);
/* Cancels every armed watch (destroy). */
void zcn_watches_cancel_all(ZCN_Loop *s);
ZCN_Error zcn_calls_init(struct zcn_calls *q, uint32_t cap);
void zcn_calls_free(struct zcn_calls *q);
/* Runs the calls queued before this one started; returns how many. */
uint32_t zcn_calls_run(ZCN_Loop *s);

/* ------------------------------------------------------------------ */
/* small helpers                                                      */
/* ------------------------------------------------------------------ */

static inline uint64_t pack_ud(enum op op, uint32_t gen, uint32_t slot)
{
    return ((uint64_t)op << 56) | ((uint64_t)(gen & 0xffffffu) << 32) | slot;
}

static inline enum op ud_op(uint64_t ud)
{
    return (enum op)(ud >> 56);
}

static inline uint32_t ud_gen(uint64_t ud)
{
    return (uint32_t)(ud >> 32) & 0xffffffu;
}

static inline uint32_t ud_slot(uint64_t ud)
{
    return (uint32_t)ud;
}

static inline uint8_t *buf_ptr(const ZCN_Loop *s, uint32_t bid)
{
    return s->slab + (size_t)bid * s->buffer_size;
}

static inline int32_t slot_of(const ZCN_Loop *s, const struct conn *c)
{
    return (int32_t)(c - s->conns);
}

/* The connection for fd if it is a live connection of this server. */
static inline struct conn *lookup(const ZCN_Loop *s, int fd)
{
    if (fd < 0 || (uint32_t)fd >= s->fd_table_size)
        return NULL;
    int32_t slot = s->fd_table[fd];
    if (slot == NIL)
        return NULL;
    return &s->conns[slot];
}

/* The next event of a poll batch (has_room checked by the caller). */
static inline ZCN_Event *next_event(ZCN_Loop *s, uint32_t type, int fd)
{
    ZCN_Event *e = &s->ev[s->ev_n++];
    memset(e, 0, sizeof *e);
    e->type = type;
    e->fd = fd;
    return e;
}

/* Room for k more events (always true in callback mode). */
static inline bool has_room(const ZCN_Loop *s, uint32_t k)
{
    return s->ev == NULL || s->ev_n + k <= s->ev_cap;
}

/* Events may be emitted now: inside a loop call, and in poll mode only
 * inside zcn_server_poll. Work that would emit one outside (a close
 * started between polls) waits on the service list for the next turn, so
 * callbacks never run inside an API call made outside the loop and a poll
 * caller always sees its CLOSE event. */
static inline bool can_emit(const ZCN_Loop *s)
{
    return s->in_loop > 0 && (!s->poll_mode || s->ev != NULL);
}

static inline bool half_close(const struct conn *c)
{
    return c->h->half_close_flag || c->h->on_eof != NULL;
}

/* The calling thread, as the thread pointer (the fs base on x86-64): the
 * owner check on every send is a compare, not a call into libc
 * (pthread_self) nor, in the shared library, into __tls_get_addr. */
static inline const void *this_thread(void)
{
    return __builtin_thread_pointer();
}

static inline ZCN_Error owner_check(const ZCN_Loop *s, const char *fn)
{
    if (ZCN_UNLIKELY(s->started && s->owner != this_thread()))
        return zcn_tcp_wrong_thread(fn);
    return ZCN_OK;
}

/* ------------------------------------------------------------------ */
/* intrusive lists over the connection array                          */
/* ------------------------------------------------------------------ */

#define LINK(s, slot, off) ((struct link *)((char *)&(s)->conns[slot] + (off)))

static inline bool linked(const struct link *l)
{
    return l->prev != NOT_LINKED;
}

static inline void list_push(ZCN_Loop *s, struct list *l, size_t off, struct conn *c)
{
    int32_t slot = slot_of(s, c);
    struct link *k = LINK(s, slot, off);
    if (linked(k))
        return;
    k->prev = l->tail;
    k->next = NIL;
    if (l->tail != NIL)
        LINK(s, l->tail, off)->next = slot;
    else
        l->head = slot;
    l->tail = slot;
    l->count++;
}

static inline void list_push_head(ZCN_Loop *s, struct list *l, size_t off, struct conn *c)
{
    int32_t slot = slot_of(s, c);
    struct link *k = LINK(s, slot, off);
    if (linked(k))
        return;
    k->prev = NIL;
    k->next = l->head;
    if (l->head != NIL)
        LINK(s, l->head, off)->prev = slot;
    else
        l->tail = slot;
    l->head = slot;
    l->count++;
}

static inline void list_remove(ZCN_Loop *s, struct list *l, size_t off, struct conn *c)
{
    int32_t slot = slot_of(s, c);
    struct link *k = LINK(s, slot, off);
    if (!linked(k))
        return;
    if (k->prev != NIL)
        LINK(s, k->prev, off)->next = k->next;
    else
        l->head = k->next;
    if (k->next != NIL)
        LINK(s, k->next, off)->prev = k->prev;
    else
        l->tail = k->prev;
    k->prev = k->next = NOT_LINKED;
    l->count--;
}

static inline struct conn *list_pop(ZCN_Loop *s, struct list *l, size_t off)
{
    if (l->head == NIL)
        return NULL;
    struct conn *c = &s->conns[l->head];
    list_remove(s, l, off, c);
    return c;
}

#define OFF_SERVICE offsetof(struct conn, service)
#define OFF_WAIT offsetof(struct conn, wait)

static inline void service_add(ZCN_Loop *s, struct conn *c)
{
    list_push(s, &s->service, OFF_SERVICE, c);
}

static inline void unlink_all(ZCN_Loop *s, struct conn *c)
{
    list_remove(s, &s->service, OFF_SERVICE, c);
    list_remove(s, &s->waiters, OFF_WAIT, c);
}

/* ------------------------------------------------------------------ */
/* the send queue's small pieces                                      */
/* ------------------------------------------------------------------ */

/* The queue moved, started or emptied: the stall clock that send timeouts
 * and evictions read restarts. A store per message; the sweeps that read
 * it scan the connections now and then (their cost does not ride on every
 * message). */
static inline void send_progress(ZCN_Loop *s, struct conn *c, bool was_busy)
{
    bool busy = c->sq_head != NIL;
    c->progress_ms = s->now_ms;
    if (busy != was_busy)
        s->queues_busy += busy ? 1 : (uint32_t)-1;
}

static inline void chunk_put(ZCN_Loop *s, int32_t idx)
{
    s->chunks[idx].next = s->chunk_free;
    s->chunk_free = idx;
    s->chunks_used--;
}

static inline int32_t chunk_take(ZCN_Loop *s)
{
    int32_t idx = s->chunk_free;
    if (idx != NIL) {
        s->chunk_free = s->chunks[idx].next;
        s->chunks_used++;
    }
    return idx;
}

/* Data was queued for c: its send goes out with the batch (flush_tx). */
static inline void want_send(ZCN_Loop *s, struct conn *c)
{
    if (c->send_inflight || c->in_tx)
        return;
    if (s->tx_n == s->tx_cap)
        zcn_tcp_flush_tx(s);
    c->in_tx = true;
    s->tx[s->tx_n++] = (struct tx_entry){(uint32_t)slot_of(s, c), c->gen};
}

#endif
