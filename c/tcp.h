/* The TCP server's private header: its connection table and server
 * structures, the inline helpers every part shares (user_data packing,
 * lookups, the intrusive lists) and the functions one part calls in
 * another. The parts: c/server.c (the loop, accept, create and destroy),
 * c/tcp_conn.c (a connection's life and its receive side), c/tcp_send.c
 * (the send queue and the send/close calls), c/tcp_budget.c and
 * c/tcp_budget.h (the buffer policy). Not installed. */
#ifndef ZCN_TCP_H
#define ZCN_TCP_H

#include "internal.h"

#include <liburing.h>

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stddef.h>
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
/* Room under its cap a connection needs to receive with multishot (the
 * kernel posts up to 32 completions per request before it lets others
 * run, MULTISHOT_MAX_RETRY). */
#define MSHOT_ROOM 32
/* Buffers of one connection a poll batch carries at most. */
#define BATCH_PER_CONN 2
#define NIL (-1)

enum op {
    OP_ACCEPT = 1,
    OP_RECV,
    OP_SEND,
    OP_WAKE,
    OP_IGNORE,                  /* cancels: the result does not matter */
    OP_WAKEUP_PIPE,             /* zcn_server_wakeup_fd's pipe */
    OP_SOURCE = ZCN_OP_SOURCE,  /* an attached source's request (UDP) */
    OP_TICK = ZCN_OP_SOURCE + 1, /* the policy's clock (send timeouts, evictions) */
};

enum conn_state {
    CONN_FREE = 0,
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

struct conn {
    int fd;
    uint8_t state;
    bool recv_armed;
    bool recv_multishot;        /* the armed recv takes any number of buffers */
    bool recv_cancelled;        /* a cancel for the armed recv is queued */
    bool send_inflight;
    bool send_cancelled;
    bool eof;                   /* the peer closed its side */
    bool eof_reported;          /* on_eof / EOF event emitted */
    bool shut_wr;               /* zcn_server_shutdown: FIN once drained */
    bool shut_wr_done;
    bool want_drain;            /* a send was refused: emit DRAIN later */
    bool rst;                   /* aborted: close with a reset */
    bool in_tx;                 /* on the send-submission list */
    uint32_t gen;
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
    struct link lru;            /* idle order (idle_timeout_ms) */
    struct link wait;           /* waiting for budget, FIFO */
    int32_t zombie_next;        /* also the free-slot link */
    uint64_t last_active_ms;
    uint64_t progress_ms;       /* last send progress (or queue start) */
    uint64_t bytes_in, bytes_out;
    struct msghdr msg;
    struct iovec iov[IOV_BATCH];
};

struct ZCN_Server {
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

    /* the buffer policy */
    uint32_t pool_free;         /* buffers free in the pool */
    uint32_t reserve;
    uint32_t budget;            /* buffer_count - reserve */
    uint32_t parked;            /* buffers held by connections */
    uint32_t holders;           /* connections holding any */
    uint32_t user_bufs;         /* acquired by the application */
    uint32_t lent_count;        /* lent to the current poll batch */
    uint32_t copy_headroom;     /* pool buffers the ring leaves for copies */
    uint32_t ring_target;       /* ring_want and pool_keep as of the last */
    uint32_t pool_keep;         /* zcn_tcp_ring_refill (recycle reads them) */
    uint64_t send_timeout_ms;   /* 0 = never */
    uint32_t hard_max_bufs;
    uint64_t evict_check_ms;    /* last eviction scan */

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

    int listen_fd;
    uint16_t port;
    int wake_fd;
    bool started;
    bool accept_armed;
    bool wake_armed;
    bool tick_armed;            /* an OP_TICK timeout is in the kernel */
    struct __kernel_timespec tick_ts;
    bool destroying;
    bool poll_mode;             /* events go to zcn_server_poll's array */
    bool half_close_flag;
    struct zcn_wakeup_pipe wakeup;
    int in_callback;
    struct conn *delivering;    /* on_data is running for it */
    int in_loop;                /* inside a loop call (events may be emitted) */
    int live_slot;              /* zcn_live registry entry (safe stop) */
    const void *owner;          /* this_thread() of the thread that started it */
    _Atomic int stop_requested;

    uint32_t backlog;
    uint64_t send_queue_max_bytes;
    uint32_t send_queue_max_bufs; /* the same limit counted in buffers */
    uint32_t batch;             /* poll batches started (end_batch) */
    uint64_t idle_timeout_ms;
    bool nodelay;
    uint64_t now_ms;
    uint64_t accept_resume_ms;
    uint32_t accept_backoff_ms;
    struct list lru, service, waiters;
    uint32_t queues_busy;       /* connections with queued data */
    uint32_t slots_high;        /* slots below this have been used; freed slots
                                   are reused before untouched ones, so this is
                                   the peak of connections at once, where the
                                   periodic scans stop */
    uint64_t send_sweep_ms;     /* next send-timeout sweep */
    int32_t zombie_head;
    int32_t lent_head;          /* bids lent to the current poll batch */

    /* callback mode */
    void *user_data;
    ZCN_OnAccept on_accept;
    ZCN_OnData on_data;
    ZCN_OnClose on_close;
    ZCN_OnDrain on_drain;
    ZCN_OnEof on_eof;
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

/* ------------------------------------------------------------------ */
/* small helpers                                                       */
/* ------------------------------------------------------------------ */

/* ------------------------------------------------------------------ */
/* functions of one part called in another                            */
/* ------------------------------------------------------------------ */

/* c/tcp_conn.c */
void zcn_tcp_emit(ZCN_Server *s, uint32_t type, struct conn *c);
void zcn_tcp_maybe_arm_recv(ZCN_Server *s, struct conn *c);
void zcn_tcp_cancel_ud(ZCN_Server *s, uint64_t ud, bool *done_flag, struct conn *c);
void zcn_tcp_free_slot(ZCN_Server *s, struct conn *c);
void zcn_tcp_finalize(ZCN_Server *s, struct conn *c);
void zcn_tcp_progress_close(ZCN_Server *s, struct conn *c);
void zcn_tcp_abort_conn(ZCN_Server *s, struct conn *c, bool rst);
void zcn_tcp_begin_close(ZCN_Server *s, struct conn *c);
void zcn_tcp_progress_shutdown(ZCN_Server *s, struct conn *c);
void zcn_tcp_flush_pending_rx(ZCN_Server *s, struct conn *c);
void zcn_tcp_on_recv(ZCN_Server *s, struct conn *c, struct io_uring_cqe *cqe);
void zcn_tcp_on_send(ZCN_Server *s, struct conn *c, int res);
void zcn_tcp_new_connection(ZCN_Server *s, int fd);

/* c/tcp_send.c */
void zcn_tcp_submit_send(ZCN_Server *s, struct conn *c);
void zcn_tcp_flush_tx(ZCN_Server *s);
void zcn_tcp_echo_on_data(void *user_data, int fd, const uint8_t *data, size_t len);

/* c/tcp_budget.c */
void zcn_tcp_ring_refill(ZCN_Server *s);
void zcn_tcp_serve_waiters(ZCN_Server *s);
void zcn_tcp_evict_for_waiters(ZCN_Server *s);
void zcn_tcp_sweep_send_timeouts(ZCN_Server *s);
void zcn_tcp_sweep_idle(ZCN_Server *s);
bool zcn_tcp_tick_needed(const ZCN_Server *s);
void zcn_tcp_arm_tick(ZCN_Server *s);

/* c/server.c */
ZCN_Error zcn_tcp_wrong_thread(const char *fn);

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

static inline uint8_t *buf_ptr(const ZCN_Server *s, uint32_t bid)
{
    return s->slab + (size_t)bid * s->buffer_size;
}

static inline int32_t slot_of(const ZCN_Server *s, const struct conn *c)
{
    return (int32_t)(c - s->conns);
}

/* The connection for fd if it is a live connection of this server. */
static inline struct conn *lookup(const ZCN_Server *s, int fd)
{
    if (fd < 0 || (uint32_t)fd >= s->fd_table_size)
        return NULL;
    int32_t slot = s->fd_table[fd];
    if (slot == NIL)
        return NULL;
    return &s->conns[slot];
}

/* Room for k more events (always true in callback mode). */
static inline bool has_room(const ZCN_Server *s, uint32_t k)
{
    return s->ev == NULL || s->ev_n + k <= s->ev_cap;
}

/* Events may be emitted now: inside a loop call, and in poll mode only
 * inside zcn_server_poll. Work that would emit one outside (a close
 * started between polls) waits on the service list for the next turn, so
 * callbacks never run inside an API call made outside the loop and a poll
 * caller always sees its CLOSE event. */
static inline bool can_emit(const ZCN_Server *s)
{
    return s->in_loop > 0 && (!s->poll_mode || s->ev != NULL);
}

static inline bool half_close(const ZCN_Server *s)
{
    return s->half_close_flag || s->on_eof != NULL;
}

/* The calling thread, as the thread pointer (the fs base on x86-64): the
 * owner check on every send is a compare, not a call into libc
 * (pthread_self) nor, in the shared library, into __tls_get_addr. */
static inline const void *this_thread(void)
{
    return __builtin_thread_pointer();
}

static inline ZCN_Error owner_check(const ZCN_Server *s, const char *fn)
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

static inline void list_push(ZCN_Server *s, struct list *l, size_t off, struct conn *c)
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

static inline void list_push_head(ZCN_Server *s, struct list *l, size_t off, struct conn *c)
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

static inline void list_remove(ZCN_Server *s, struct list *l, size_t off, struct conn *c)
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

static inline struct conn *list_pop(ZCN_Server *s, struct list *l, size_t off)
{
    if (l->head == NIL)
        return NULL;
    struct conn *c = &s->conns[l->head];
    list_remove(s, l, off, c);
    return c;
}

#define OFF_SERVICE offsetof(struct conn, service)
#define OFF_LRU offsetof(struct conn, lru)
#define OFF_WAIT offsetof(struct conn, wait)

static inline void service_add(ZCN_Server *s, struct conn *c)
{
    list_push(s, &s->service, OFF_SERVICE, c);
}

static inline void unlink_all(ZCN_Server *s, struct conn *c)
{
    list_remove(s, &s->service, OFF_SERVICE, c);
    list_remove(s, &s->lru, OFF_LRU, c);
    list_remove(s, &s->waiters, OFF_WAIT, c);
}

/* ------------------------------------------------------------------ */
/* the send queue's small pieces                                      */
/* ------------------------------------------------------------------ */

/* The queue moved, started or emptied: the stall clock that send timeouts
 * and evictions read restarts. A store per message; the sweeps that read
 * it scan the connections now and then (their cost does not ride on every
 * message). */
static inline void send_progress(ZCN_Server *s, struct conn *c, bool was_busy)
{
    bool busy = c->sq_head != NIL;
    c->progress_ms = s->now_ms;
    if (busy != was_busy)
        s->queues_busy += busy ? 1 : (uint32_t)-1;
}

static inline void chunk_put(ZCN_Server *s, int32_t idx)
{
    s->chunks[idx].next = s->chunk_free;
    s->chunk_free = idx;
    s->chunks_used--;
}

static inline int32_t chunk_take(ZCN_Server *s)
{
    int32_t idx = s->chunk_free;
    if (idx != NIL) {
        s->chunk_free = s->chunks[idx].next;
        s->chunks_used++;
    }
    return idx;
}

/* Data was queued for c: its send goes out with the batch (flush_tx). */
static inline void want_send(ZCN_Server *s, struct conn *c)
{
    if (c->send_inflight || c->in_tx)
        return;
    if (s->tx_n == s->tx_cap)
        zcn_tcp_flush_tx(s);
    c->in_tx = true;
    s->tx[s->tx_n++] = (struct tx_entry){(uint32_t)slot_of(s, c), c->gen};
}

#endif
