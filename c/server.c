/* The TCP server: one io_uring event loop with multishot accept, recv into
 * a provided-buffer ring built from the pool, and a per-connection send
 * queue of pool buffers.
 *
 * The path of one message: the kernel picks a buffer from the buffer ring and
 * posts a recv completion naming it; on_data borrows it; zcn_server_send of
 * that memory takes a reference instead of copying; when the last reference
 * (callback, pending delivery, send chunk) drops, the buffer goes back to the
 * buffer ring (or to the pool, to keep room for copied sends).
 *
 * Every connection is a slot in a fixed array sized connections_max; fd ->
 * slot goes through a table sized by RLIMIT_NOFILE. A slot is reused only
 * when no request in the kernel refers to it any more (recv_armed and
 * send_inflight both clear), and SQE user_data carries a generation so a
 * stale completion could never touch a new connection.
 *
 * The buffer policy (docs/BUFFERS.md, ZCN_Config in the header): buffers a
 * connection keeps beyond a callback -- its send queue and its deferred
 * receives -- are "held" and counted against a server-wide budget of
 * buffer_count - reserve, so the reserve always feeds receives. Each
 * connection may hold up to its cap, a fair share of the budget under
 * pressure. A receive is armed only for a connection that may take another
 * buffer; multishot only while it has room for a burst under its cap and
 * the server is not under pressure (else one buffer per request), so held
 * data cannot grow behind our back by more than the completions in flight
 * when a cap was reached. Connections waiting for budget wait in FIFO
 * order; if the budget stays used up while one waits, stalled connections
 * are aborted, biggest first, until what they held would serve the
 * waiters. Queued data that makes no progress for send_timeout_ms is
 * aborted too, as is a connection over the hard limit.
 */
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
    uint32_t pool_keep;         /* ring_refill (recycle reads them) */
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
static struct conn *lookup(const ZCN_Server *s, int fd)
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

static ZCN_Error wrong_thread(const char *fn)
{
    return zcn_fail(ZCN_ERR_WRONG_THREAD,
                    "%s called from a thread that does not own the server: the thread that "
                    "called zcn_server_start runs its loop and makes its calls",
                    fn);
}

static inline ZCN_Error owner_check(const ZCN_Server *s, const char *fn)
{
    if (ZCN_UNLIKELY(s->started && s->owner != this_thread()))
        return wrong_thread(fn);
    return ZCN_OK;
}

/* ------------------------------------------------------------------ */
/* intrusive lists over the connection array                           */
/* ------------------------------------------------------------------ */

#define LINK(s, slot, off) ((struct link *)((char *)&(s)->conns[slot] + (off)))

static inline bool linked(const struct link *l)
{
    return l->prev != NOT_LINKED;
}

static void list_push(ZCN_Server *s, struct list *l, size_t off, struct conn *c)
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

static void list_push_head(ZCN_Server *s, struct list *l, size_t off, struct conn *c)
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

static void list_remove(ZCN_Server *s, struct list *l, size_t off, struct conn *c)
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

static struct conn *list_pop(ZCN_Server *s, struct list *l, size_t off)
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

static void service_add(ZCN_Server *s, struct conn *c)
{
    list_push(s, &s->service, OFF_SERVICE, c);
}

static void unlink_all(ZCN_Server *s, struct conn *c)
{
    list_remove(s, &s->service, OFF_SERVICE, c);
    list_remove(s, &s->lru, OFF_LRU, c);
    list_remove(s, &s->waiters, OFF_WAIT, c);
}

/* ------------------------------------------------------------------ */
/* the buffer policy                                                   */
/* ------------------------------------------------------------------ */

static inline uint32_t held(const struct conn *c)
{
    return c->sq_bufs + c->rx_bufs;
}

/* Buffers counted against the budget; the current poll batch's lent data
 * counts too, since the caller may still queue it. */
static inline uint32_t budget_used(const ZCN_Server *s)
{
    return s->parked + s->user_bufs + (s->ev != NULL ? s->lent_count : 0);
}

static inline bool under_pressure(const ZCN_Server *s)
{
    return 2 * (uint64_t)budget_used(s) >= s->budget;
}

/* The most one connection may hold under pressure: the budget split among
 * the connections holding or waiting for buffers, with one share left over
 * so a newcomer finds room without an eviction. */
static inline uint32_t fair_share(const ZCN_Server *s)
{
    uint32_t share = s->budget / (s->holders + s->waiters.count + 1);
    return share < 1 ? 1 : share;
}

static inline uint32_t buf_cap(const ZCN_Server *s)
{
    uint32_t cap = s->send_queue_max_bufs;
    if (under_pressure(s)) {
        uint32_t share = fair_share(s);
        if (share < cap)
            cap = share;
    }
    return cap;
}

static inline void held_add(ZCN_Server *s, struct conn *c, uint32_t *field, int32_t delta)
{
    uint32_t before = held(c);
    *field = (uint32_t)((int32_t)*field + delta);
    s->parked = (uint32_t)((int32_t)s->parked + delta);
    uint32_t after = held(c);
    if (before == 0 && after > 0)
        s->holders++;
    else if (before > 0 && after == 0)
        s->holders--;
}

static inline bool lent_now(const ZCN_Server *s, const struct conn *c)
{
    return s->ev != NULL && c->lent_batch == s->batch && c->lent_bufs > 0;
}

/* c was handed data by the on_data call running now, or by the last poll
 * batch (whose answers come after zcn_server_poll returned). */
static inline bool delivered_to(const ZCN_Server *s, const struct conn *c)
{
    if (s->poll_mode)
        return c->lent_batch == s->batch && c->lent_bufs > 0;
    return s->delivering == c;
}

enum gate {
    GATE_OPEN = 0,
    GATE_OWN,                   /* over its own limits: wait for its sends */
    GATE_BUDGET,                /* the server-wide budget is used up: wait */
    GATE_BATCH,                 /* this poll batch has its share of c: next one */
};

/* Whether c may be handed `len` more bytes in one more buffer (`extra` is
 * 1 for a fresh receive, 0 for the oldest deferred one, which the budget
 * counts already): if the user echoed it, its queue would stay within its
 * limits and the server's budget. Its other deferred buffers do not count
 * against its cap here -- they come after this one -- or a connection
 * that overshot its cap could never deliver again. In poll mode what the
 * current batch lent c counts as queued already; otherwise a batch of
 * deliveries would all pass the check and the echoes get QUEUE_FULL. A
 * poll batch also carries at most BATCH_PER_CONN buffers of one
 * connection, so a few busy connections cannot fill every batch and make
 * the others wait behind their handler's work. */
static enum gate delivery_gate(const ZCN_Server *s, const struct conn *c, uint64_t len,
                               uint32_t extra)
{
    uint64_t bytes = c->queued_bytes + len;
    uint32_t bufs = c->sq_bufs + 1;
    if (lent_now(s, c)) {
        if (c->lent_bufs >= BATCH_PER_CONN)
            return GATE_BATCH;
        bytes += c->lent_bytes;
        bufs += c->lent_bufs;
    }
    if (bytes > s->send_queue_max_bytes || bufs > buf_cap(s) ||
        c->sq_chunks >= s->conn_chunks_max)
        return GATE_OWN;
    /* A deferred buffer is in the budget already: handing it over takes
     * nothing more (its answer's extra buffer is own_slack's). */
    if (extra > 0 && budget_used(s) + extra > s->budget)
        return GATE_BUDGET;
    return GATE_OPEN;
}

/* Whether c may take another buffer from the kernel: counting what it
 * holds already, deferred receives included (the delivery gate does not,
 * or deferred data could pile up without bound behind a receive left
 * armed). */
static enum gate intake_gate(const ZCN_Server *s, const struct conn *c)
{
    uint64_t bytes = c->queued_bytes + c->rx_bytes + s->buffer_size;
    uint32_t bufs = held(c) + 1;
    if (lent_now(s, c)) {
        bytes += c->lent_bytes;
        bufs += c->lent_bufs;
    }
    if (bytes > s->send_queue_max_bytes + s->buffer_size || bufs > buf_cap(s))
        return GATE_OWN;
    if (budget_used(s) + 1 > s->budget)
        return GATE_BUDGET;
    return GATE_OPEN;
}

/* Answers to data c was just handed (nonzero: the deliveries they answer)
 * are not held to c's buffer cap or the server's budget, only to its
 * bytes and chunks (two more per delivery): the delivery gate made room
 * for each delivery when it was made, and a handler that sends at most
 * what it received must never get ZCN_ERR_QUEUE_FULL -- though an answer
 * can reference the delivered buffer and also pack small pieces into a new
 * one (two buffers where the gate counted one), and the cap may have
 * shrunk to a fair share since. What that takes beyond the cap is bounded
 * by the deliveries (the gate stops the next one), and beyond the budget
 * by the deliveries in flight, which the reserve absorbs; a deferred
 * buffer is handed over even while the budget is overshot, or data
 * deferred by completions already in flight could never be delivered. */
static inline uint32_t own_slack(const ZCN_Server *s, const struct conn *c)
{
    if (s->poll_mode)
        return c->lent_batch == s->batch ? c->lent_bufs : 0;
    return s->delivering == c ? 1 : 0;
}


/* Pool buffers the ring may not take: room left in the budget for copied
 * sends, up to a headroom. */
static inline uint32_t pool_keep(const ZCN_Server *s)
{
    uint32_t used = budget_used(s);
    uint32_t room = used < s->budget ? s->budget - used : 0;
    return room < s->copy_headroom ? room : s->copy_headroom;
}

static void wait_for_budget(ZCN_Server *s, struct conn *c)
{
    list_push(s, &s->waiters, OFF_WAIT, c);
}

/* ------------------------------------------------------------------ */
/* buffers                                                             */
/* ------------------------------------------------------------------ */

static void ring_add(ZCN_Server *s, uint32_t bid)
{
    zcn_bufring_add(&s->rx, bid);
    s->meta[bid].state = ZCN_BUF_RING;
    s->meta[bid].refs = 0;
}

/* How many buffers the receive ring should hold now: enough for a burst
 * from every open connection, not the whole pool. The ring is FIFO, so a
 * returned buffer is reused only after all the others in it; keeping it
 * small keeps the buffers the kernel writes into warm in cache and TLB
 * (the pool behind it is LIFO). And no more than the reserve plus the part
 * of the budget's room that copies do not need: what the ring holds the
 * kernel owns, and a copied send (a packed answer) that finds the pool
 * empty would fail for nothing. */
static inline uint32_t ring_want(const ZCN_Server *s)
{
    uint64_t want = 32 + 2 * (uint64_t)s->conns_active + s->br_extra;
    uint32_t used = budget_used(s);
    uint32_t room = used < s->budget ? s->budget - used : 0;
    /* Half the reserve, at least: the other half is for the packed
     * answers to data just delivered, which may go over the budget. */
    uint64_t limit = (uint64_t)(s->reserve > 1 ? s->reserve / 2 : 1) +
                     (room > s->copy_headroom ? room - s->copy_headroom : 0);
    if (want > limit)
        want = limit;
    return want < s->br_target ? (uint32_t)want : s->br_target;
}

static inline void pool_put(ZCN_Server *s, uint32_t bid)
{
    s->meta[bid].state = ZCN_BUF_POOL;
    s->meta[bid].refs = 0;
    s->pool_free++;
    zcn_pool_release(s->pool, buf_ptr(s, bid));
}

/* Takes a pool buffer for a copied send or for the user; -1 if none. */
static inline int64_t pool_take(ZCN_Server *s)
{
    int64_t bid = zcn_buf_take(s->pool, s->slab, s->buffer_size);
    if (bid >= 0)
        s->pool_free--;
    return bid;
}

/* Tops the ring up from the pool before waiting, and sets the ring's
 * target and the pool's keep for the buffers recycled until the next
 * refill (computed here, once or twice a turn, not per buffer). */
static void ring_refill(ZCN_Server *s)
{
    uint32_t want = s->ring_target = ring_want(s);
    uint32_t keep = s->pool_keep = pool_keep(s);
    while (s->rx.count < want && s->pool_free > keep) {
        int64_t bid = pool_take(s);
        if (bid < 0)
            break;
        ring_add(s, (uint32_t)bid);
    }
}

/* A buffer nobody refers to any more: refill the buffer ring first, the
 * pool after. */
static inline void recycle(ZCN_Server *s, uint32_t bid)
{
    if (s->rx.count < s->ring_target && s->pool_free >= s->pool_keep) {
        ring_add(s, bid);
        return;
    }
    pool_put(s, bid);
}

static inline void buf_ref(ZCN_Server *s, uint32_t bid)
{
    s->meta[bid].refs++;
}

static inline void buf_unref(ZCN_Server *s, uint32_t bid)
{
    struct zcn_buf_meta *m = &s->meta[bid];
    if (--m->refs == 0)
        recycle(s, bid);
}

/* ------------------------------------------------------------------ */
/* events                                                              */
/* ------------------------------------------------------------------ */

static void emit(ZCN_Server *s, uint32_t type, struct conn *c)
{
    if (s->ev != NULL) {
        ZCN_Event *e = &s->ev[s->ev_n++];
        memset(e, 0, sizeof *e);
        e->type = type;
        e->fd = c->fd;
        return;
    }
    s->in_callback++;
    switch (type) {
    case ZCN_EVENT_ACCEPT:
        if (s->on_accept != NULL)
            s->on_accept(s->user_data, c->fd);
        break;
    case ZCN_EVENT_CLOSE:
        if (s->on_close != NULL)
            s->on_close(s->user_data, c->fd);
        break;
    case ZCN_EVENT_DRAIN:
        if (s->on_drain != NULL)
            s->on_drain(s->user_data, c->fd);
        break;
    case ZCN_EVENT_EOF:
        if (s->on_eof != NULL)
            s->on_eof(s->user_data, c->fd);
        break;
    default:
        break;
    }
    s->in_callback--;
}

static void echo_on_data(void *user_data, int fd, const uint8_t *data, size_t len);

/* Hands one received buffer to the user. The delivery's reference is held
 * until the callback returns (callback mode) or the next poll (poll mode). */
static void emit_data(ZCN_Server *s, struct conn *c, uint32_t bid, uint32_t len)
{
    uint8_t *data = buf_ptr(s, bid);
    if (s->ev != NULL) {
        ZCN_Event *e = &s->ev[s->ev_n++];
        e->type = ZCN_EVENT_DATA;
        e->fd = c->fd;
        e->len = len;
        e->reserved = 0;
        e->offset = (uint64_t)(data - s->slab);
        e->data = data;
        if (c->lent_batch != s->batch) {
            c->lent_batch = s->batch;
            c->lent_bufs = 0;
            c->lent_bytes = 0;
        }
        c->lent_bufs++;
        c->lent_bytes += len;
        s->lent_count++;
        s->meta[bid].next = s->lent_head;
        s->lent_head = (int32_t)bid;
        return;
    }
    if (s->on_data != NULL) {
        /* The built-in echo gets the server; user callbacks their user_data. */
        void *ud = s->on_data == echo_on_data ? (void *)s : s->user_data;
        struct conn *outer = s->delivering;
        s->in_callback++;
        s->delivering = c;
        s->on_data(ud, c->fd, data, len);
        s->delivering = outer;
        s->in_callback--;
    }
    buf_unref(s, bid);
}

/* ------------------------------------------------------------------ */
/* connection lifetime                                                 */
/* ------------------------------------------------------------------ */

/* Marks activity: the connection moves to the young end of the idle list. */
static void touch(ZCN_Server *s, struct conn *c)
{
    if (s->idle_timeout_ms == 0 || c->state != CONN_OPEN)
        return;
    c->last_active_ms = s->now_ms;
    if (c->lru.next == NIL && linked(&c->lru))
        return; /* already the youngest */
    list_remove(s, &s->lru, OFF_LRU, c);
    list_push(s, &s->lru, OFF_LRU, c);
}

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

static void arm_recv(ZCN_Server *s, struct conn *c)
{
    struct io_uring_sqe *sqe = zcn_get_sqe(s->ring);
    if (sqe == NULL) {
        service_add(s, c); /* retried from the service list */
        return;
    }
    /* Multishot takes buffers as fast as the peer sends, so it is kept for
     * connections with MSHOT_ROOM buffers of room under their cap: the
     * burst of completions already in flight when a cap is reached then
     * rarely goes past it (and never past the hard limit). Near it,
     * or while the server is under pressure, each request takes one
     * buffer. A connection that merely holds the echo it just queued stays
     * on multishot: re-arming one shot per message costs every healthy
     * connection a request per message. */
    bool multishot = held(c) + MSHOT_ROOM <= buf_cap(s) && !under_pressure(s);
    if (multishot)
        io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
    else
        io_uring_prep_recv(sqe, c->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = BUFFER_GROUP;
    io_uring_sqe_set_data64(sqe, pack_ud(OP_RECV, c->gen, (uint32_t)slot_of(s, c)));
    c->recv_armed = true;
    c->recv_multishot = multishot;
    c->recv_cancelled = false;
}

/* Arms c's receive if it may take another full buffer; otherwise it waits:
 * for its own sends (they call back here) or for budget (the wait list). */
static void maybe_arm_recv(ZCN_Server *s, struct conn *c)
{
    if (c->state != CONN_OPEN || c->recv_armed || c->eof || c->rx_head != NIL)
        return;
    enum gate g = intake_gate(s, c);
    if (g == GATE_BUDGET) {
        wait_for_budget(s, c);
        return;
    }
    if (g == GATE_OWN) {
        /* Its own sends call back here, except when what holds it back is
         * data the current poll batch lent it: that returns next turn. */
        if (lent_now(s, c))
            service_add(s, c);
        return;
    }
    if (s->rx.count == 0) {
        service_add(s, c); /* no buffer in the ring yet: wait for one */
        return;
    }
    arm_recv(s, c);
}

static void cancel_ud(ZCN_Server *s, uint64_t ud, bool *done_flag, struct conn *c)
{
    struct io_uring_sqe *sqe = zcn_get_sqe(s->ring);
    if (sqe == NULL) {
        /* Retried from the service list: a DEAD connection whose recv is
         * never cancelled would never finish. */
        if (c != NULL)
            service_add(s, c);
        return;
    }
    io_uring_prep_cancel64(sqe, ud, 0);
    io_uring_sqe_set_data64(sqe, pack_ud(OP_IGNORE, 0, 0));
    if (done_flag != NULL)
        *done_flag = true;
}

static void cancel_recv(ZCN_Server *s, struct conn *c)
{
    if (!c->recv_armed || c->recv_cancelled)
        return;
    cancel_ud(s, pack_ud(OP_RECV, c->gen, (uint32_t)slot_of(s, c)), &c->recv_cancelled, c);
}

static void cancel_send(ZCN_Server *s, struct conn *c)
{
    if (!c->send_inflight || c->send_cancelled)
        return;
    cancel_ud(s, pack_ud(OP_SEND, c->gen, (uint32_t)slot_of(s, c)), &c->send_cancelled, c);
}

static void drop_pending_rx(ZCN_Server *s, struct conn *c)
{
    while (c->rx_head != NIL) {
        uint32_t bid = (uint32_t)c->rx_head;
        c->rx_head = s->meta[bid].next;
        held_add(s, c, &c->rx_bufs, -1);
        buf_unref(s, bid);
    }
    c->rx_tail = NIL;
    c->rx_bytes = 0;
}

static void chunk_put(ZCN_Server *s, int32_t idx)
{
    s->chunks[idx].next = s->chunk_free;
    s->chunk_free = idx;
    s->chunks_used--;
}

static int32_t chunk_take(ZCN_Server *s)
{
    int32_t idx = s->chunk_free;
    if (idx != NIL) {
        s->chunk_free = s->chunks[idx].next;
        s->chunks_used++;
    }
    return idx;
}

/* Drops the queue after its first `keep` chunks (those a send in flight
 * still reads; they go when it completes). */
static void drop_send_queue_after(ZCN_Server *s, struct conn *c, uint32_t keep)
{
    bool was_busy = c->sq_head != NIL;
    int32_t prev = NIL, i = c->sq_head;
    for (uint32_t n = 0; n < keep && i != NIL; n++) {
        prev = i;
        i = s->chunks[i].next;
    }
    if (i == NIL)
        return;
    if (prev != NIL) {
        s->chunks[prev].next = NIL;
        c->sq_tail = prev;
    } else {
        c->sq_head = c->sq_tail = NIL;
    }
    int32_t last_bid = prev != NIL ? (int32_t)s->chunks[prev].bid : -1;
    while (i != NIL) {
        struct chunk *ch = &s->chunks[i];
        int32_t next = ch->next;
        c->queued_bytes -= ch->len;
        /* sq_bufs counts runs of chunks on one buffer */
        if ((int32_t)ch->bid != last_bid)
            held_add(s, c, &c->sq_bufs, -1);
        last_bid = (int32_t)ch->bid;
        c->sq_chunks--;
        buf_unref(s, ch->bid);
        chunk_put(s, i);
        i = next;
    }
    send_progress(s, c, was_busy);
}

static void drop_send_queue(ZCN_Server *s, struct conn *c)
{
    drop_send_queue_after(s, c, 0);
}

static void free_slot(ZCN_Server *s, struct conn *c)
{
    if (c->fd >= 0 && (uint32_t)c->fd < s->fd_table_size)
        s->fd_table[c->fd] = NIL;
    if (c->rst) {
        /* An abortive close: the peer gets a reset, not a FIN. */
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    close(c->fd);
    c->fd = -1;
    c->state = CONN_FREE;
    c->gen = (c->gen + 1) & 0xffffffu;
    c->zombie_next = s->conn_free;
    s->conn_free = slot_of(s, c);
}

/* The kernel has let go of the connection: tell the user, then close. */
static void finalize(ZCN_Server *s, struct conn *c)
{
    drop_pending_rx(s, c);
    drop_send_queue(s, c);
    unlink_all(s, c);
    s->conns_active--;
    s->stats.connections_closed++;
    if (s->ev != NULL) {
        emit(s, ZCN_EVENT_CLOSE, c);
        /* The fd stays open until the caller has seen the event, so the
         * number cannot be reused under it. */
        c->state = CONN_ZOMBIE;
        c->zombie_next = s->zombie_head;
        s->zombie_head = slot_of(s, c);
    } else {
        c->state = CONN_ZOMBIE; /* sends from on_close get ZCN_ERR_CLOSED */
        emit(s, ZCN_EVENT_CLOSE, c);
        free_slot(s, c);
    }
    if (s->accept_backoff_ms != 0)
        s->accept_resume_ms = s->now_ms; /* an fd is free: try again now */
}

/* Advances the close state machine after anything changed. */
static void progress_close(ZCN_Server *s, struct conn *c)
{
    if (c->state == CONN_CLOSING && c->sq_head == NIL && !c->send_inflight) {
        if (!c->shut_wr_done)
            shutdown(c->fd, SHUT_WR);
        c->state = CONN_DEAD;
    }
    if (c->state != CONN_DEAD)
        return;
    cancel_recv(s, c); /* again if the last try found no SQE */
    if (c->rst)
        cancel_send(s, c);
    if (c->recv_armed || c->send_inflight)
        return;
    if (!can_emit(s) || !has_room(s, 1)) {
        service_add(s, c);
        return;
    }
    finalize(s, c);
}

/* Ends a connection now: queued and deferred data is dropped. With rst the
 * peer gets a reset (eviction, zcn_server_abort); otherwise both directions
 * are shut down (idle timeout, a failed receive). */
static void abort_conn(ZCN_Server *s, struct conn *c, bool rst)
{
    if (c->state != CONN_OPEN && c->state != CONN_CLOSING)
        return;
    c->state = CONN_DEAD;
    c->want_drain = false;
    if (rst) {
        /* Cancels end the requests; the close in free_slot sends the RST. */
        c->rst = true;
        cancel_send(s, c);
    } else {
        /* shutdown ends a pending recv (EOF) and send (EPIPE) promptly. */
        shutdown(c->fd, SHUT_RDWR);
    }
    cancel_recv(s, c);
    drop_pending_rx(s, c);
    drop_send_queue_after(s, c, c->send_inflight ? c->inflight_chunks : 0);
    list_remove(s, &s->waiters, OFF_WAIT, c);
    progress_close(s, c);
}

/* Starts a graceful close: no more deliveries, queued data still goes. */
static void begin_close(ZCN_Server *s, struct conn *c)
{
    if (c->state != CONN_OPEN)
        return;
    c->state = CONN_CLOSING;
    c->want_drain = false;
    cancel_recv(s, c);
    drop_pending_rx(s, c);
    list_remove(s, &s->waiters, OFF_WAIT, c);
    progress_close(s, c);
}

/* zcn_server_shutdown's FIN goes once the queue has drained; when the peer
 * has finished too, nothing is left to do: close. */
static void progress_shutdown(ZCN_Server *s, struct conn *c)
{
    if (c->state != CONN_OPEN || !c->shut_wr)
        return;
    if (!c->shut_wr_done && c->sq_head == NIL && !c->send_inflight) {
        shutdown(c->fd, SHUT_WR);
        c->shut_wr_done = true;
    }
    if (c->shut_wr_done && c->eof && c->rx_head == NIL &&
        (c->eof_reported || !half_close(s)))
        begin_close(s, c);
}

/* ------------------------------------------------------------------ */
/* sending                                                             */
/* ------------------------------------------------------------------ */

static void submit_send(ZCN_Server *s, struct conn *c)
{
    if (c->send_inflight || c->sq_head == NIL)
        return;
    struct io_uring_sqe *sqe = zcn_get_sqe(s->ring);
    if (sqe == NULL) {
        service_add(s, c);
        return;
    }
    struct chunk *ch = &s->chunks[c->sq_head];
    if (ch->next == NIL) {
        io_uring_prep_send(sqe, c->fd, buf_ptr(s, ch->bid) + ch->off, ch->len, MSG_NOSIGNAL);
        c->inflight_chunks = 1;
    } else {
        size_t n = 0;
        for (int32_t i = c->sq_head; i != NIL && n < IOV_BATCH; i = s->chunks[i].next) {
            c->iov[n].iov_base = buf_ptr(s, s->chunks[i].bid) + s->chunks[i].off;
            c->iov[n].iov_len = s->chunks[i].len;
            n++;
        }
        memset(&c->msg, 0, sizeof c->msg);
        c->msg.msg_iov = c->iov;
        c->msg.msg_iovlen = n;
        io_uring_prep_sendmsg(sqe, c->fd, &c->msg, MSG_NOSIGNAL);
        c->inflight_chunks = (uint32_t)n;
    }
    io_uring_sqe_set_data64(sqe, pack_ud(OP_SEND, c->gen, (uint32_t)slot_of(s, c)));
    c->send_inflight = true;
    c->send_cancelled = false;
}

static void flush_tx(ZCN_Server *s)
{
    for (uint32_t i = 0; i < s->tx_n; i++) {
        struct conn *c = &s->conns[s->tx[i].slot];
        if (c->gen != s->tx[i].gen || !c->in_tx)
            continue;
        c->in_tx = false;
        if (c->state == CONN_OPEN || c->state == CONN_CLOSING)
            submit_send(s, c);
    }
    s->tx_n = 0;
}

/* Data was queued for c: its send goes out with the batch (flush_tx). */
static void want_send(ZCN_Server *s, struct conn *c)
{
    if (c->send_inflight || c->in_tx)
        return;
    if (s->tx_n == s->tx_cap)
        flush_tx(s);
    c->in_tx = true;
    s->tx[s->tx_n++] = (struct tx_entry){(uint32_t)slot_of(s, c), c->gen};
}

static void enqueue_chunk(ZCN_Server *s, struct conn *c, int32_t idx)
{
    bool was_empty = c->sq_head == NIL;
    s->chunks[idx].next = NIL;
    if (c->sq_tail != NIL) {
        struct chunk *prev = &s->chunks[c->sq_tail];
        prev->next = idx;
        if (prev->bid != s->chunks[idx].bid)
            held_add(s, c, &c->sq_bufs, 1);
    } else {
        c->sq_head = idx;
        held_add(s, c, &c->sq_bufs, 1);
    }
    c->sq_tail = idx;
    c->sq_chunks++;
    c->queued_bytes += s->chunks[idx].len;
    if (was_empty)
        send_progress(s, c, false); /* the stall clock starts now */
}

/* Checks common to every send; returns the open connection or NULL with
 * *err set. */
static struct conn *send_target(ZCN_Server *s, int fd, ZCN_Error *err)
{
    struct conn *c = lookup(s, fd);
    if (c == NULL || c->state != CONN_OPEN) {
        *err = zcn_fail(ZCN_ERR_CLOSED, "fd %d is not an open connection of this server", fd);
        return NULL;
    }
    if (c->shut_wr) {
        *err = zcn_fail(ZCN_ERR_CLOSED, "fd %d was shut down for sending (zcn_server_shutdown)",
                        fd);
        return NULL;
    }
    *err = ZCN_OK;
    return c;
}

static ZCN_Error refuse(ZCN_Server *s, struct conn *c, size_t len, const char *why, bool budget);

/* Refuses a send that would not fit: its bytes into the queue, cap_bufs
 * more buffers into the connection's cap, budget_bufs more into the
 * server's budget (0 for a buffer counted already), its chunks into the
 * connection's and the server's chunk tables. A refusal asks for DRAIN.
 * Inline, on every send; the refusal itself is out of line. */
static inline ZCN_Error admit(ZCN_Server *s, struct conn *c, size_t len, uint32_t cap_bufs,
                              uint32_t budget_bufs, uint32_t new_chunks)
{
    if (ZCN_UNLIKELY(len > s->send_queue_max_bytes))
        return zcn_fail((ZCN_Error)EMSGSIZE,
                        "a %zu-byte send is larger than send_queue_max_bytes (%llu)", len,
                        (unsigned long long)s->send_queue_max_bytes);
    const char *why = NULL;
    bool budget = false;
    uint32_t slack = own_slack(s, c);
    if (c->queued_bytes + len > s->send_queue_max_bytes)
        why = "its bytes";
    else if (cap_bufs > 0 && slack == 0 && c->sq_bufs + cap_bufs > buf_cap(s))
        why = "its buffer cap";
    else if (new_chunks > 0 && c->sq_chunks + new_chunks > s->conn_chunks_max + 2 * slack)
        why = "its chunk cap";
    else if (budget_bufs > 0 && slack == 0 && budget_used(s) + budget_bufs > s->budget)
        why = "the server's buffer budget", budget = true;
    else if (new_chunks > 0 && s->chunks_used + new_chunks > s->chunks_max)
        why = "the server's chunk table", budget = true;
    if (ZCN_LIKELY(why == NULL))
        return ZCN_OK;
    return refuse(s, c, len, why, budget);
}

static ZCN_Error refuse(ZCN_Server *s, struct conn *c, size_t len, const char *why, bool budget)
{
    c->want_drain = true;
    if (budget)
        wait_for_budget(s, c); /* DRAIN comes when the budget frees */
    s->stats.send_queue_full_events++;
    return zcn_fail(ZCN_ERR_QUEUE_FULL,
                    "fd %d: a %zu-byte send would exceed %s (%llu bytes in %u buffers queued; "
                    "limits %llu bytes, %u buffers now; server: %u of %u buffers held)",
                    c->fd, len, why, (unsigned long long)c->queued_bytes, c->sq_bufs,
                    (unsigned long long)s->send_queue_max_bytes, buf_cap(s), budget_used(s),
                    s->budget);
}

/* The server owns the last buffer of c's queue alone (a copy or a
 * send_buffer buffer): how many bytes still fit after its data. */
static size_t tail_room(const ZCN_Server *s, const struct conn *c)
{
    if (c->sq_tail == NIL)
        return 0;
    const struct chunk *tail = &s->chunks[c->sq_tail];
    const struct zcn_buf_meta *tm = &s->meta[tail->bid];
    if (tm->state != ZCN_BUF_TX || tm->refs != 1)
        return 0;
    return s->buffer_size - (tail->off + tail->len);
}

/* Copies data into pool buffers and queues them. Small sends first fill the
 * room left in the queue's last buffer when the server owns it alone, so a
 * stream of short messages to a slow reader costs bytes, not one buffer
 * each. All or nothing. */
static ZCN_Error send_copy(ZCN_Server *s, struct conn *c, const uint8_t *data, size_t len)
{
    if (len > s->send_queue_max_bytes)
        return admit(s, c, len, 0, 0, 0); /* EMSGSIZE, before any size arithmetic */
    size_t room = tail_room(s, c);
    size_t into_tail = len < room ? len : room;
    size_t rest = len - into_tail;
    size_t need = rest / s->buffer_size + (rest % s->buffer_size != 0);
    ZCN_Error err = admit(s, c, len, (uint32_t)need, (uint32_t)need, (uint32_t)need);
    if (err != ZCN_OK)
        return err;
    int32_t first = NIL, last = NIL;
    size_t taken = 0;
    for (; taken < need; taken++) {
        int32_t idx = chunk_take(s);
        int64_t bid = idx == NIL ? -1 : pool_take(s);
        if (bid < 0) {
            if (idx != NIL)
                chunk_put(s, idx);
            break;
        }
        size_t off = into_tail + taken * s->buffer_size;
        size_t n = len - off < s->buffer_size ? len - off : s->buffer_size;
        memcpy(buf_ptr(s, (uint32_t)bid), data + off, n);
        s->meta[bid].state = ZCN_BUF_TX;
        s->meta[bid].refs = 1;
        s->chunks[idx] = (struct chunk){(uint32_t)bid, 0, (uint32_t)n, NIL};
        if (last != NIL)
            s->chunks[last].next = idx;
        else
            first = idx;
        last = idx;
    }
    if (taken < need) {
        /* all or nothing: give back what was taken */
        while (first != NIL) {
            int32_t next = s->chunks[first].next;
            pool_put(s, s->chunks[first].bid);
            chunk_put(s, first);
            first = next;
        }
        return zcn_fail(ZCN_ERR_EXHAUSTED, "no free pool buffer for a %zu-byte copy", len);
    }
    if (into_tail > 0) {
        /* Past the bytes a send in flight may be reading, so safe to write
         * while it runs; on_send consumes chunks by byte count. */
        struct chunk *tail = &s->chunks[c->sq_tail];
        memcpy(buf_ptr(s, tail->bid) + tail->off + tail->len, data, into_tail);
        tail->len += (uint32_t)into_tail;
        c->queued_bytes += into_tail;
    }
    for (int32_t i = first; i != NIL;) {
        int32_t next = s->chunks[i].next;
        enqueue_chunk(s, c, i);
        i = next;
    }
    s->stats.sends_copied++;
    want_send(s, c);
    return ZCN_OK;
}

/* A slice of a lent receive buffer: referenced, not copied, unless it is
 * small and would wait behind other data anyway (then packed), or c is at
 * its chunk cap. */
static ZCN_Error send_lent(ZCN_Server *s, struct conn *c, uint32_t bid, size_t off,
                           const uint8_t *data, size_t len)
{
    bool same_buf = false;
    if (c->sq_tail != NIL) {
        /* The next bytes of the buffer the queue ends with (a message
         * parsed and answered piece by piece): grow that chunk. */
        struct chunk *tail = &s->chunks[c->sq_tail];
        if (tail->bid == bid && tail->off + tail->len == off) {
            ZCN_Error err = admit(s, c, len, 0, 0, 0);
            if (err != ZCN_OK)
                return err;
            tail->len += (uint32_t)len;
            c->queued_bytes += len;
            s->stats.sends_zero_copy++;
            want_send(s, c);
            return ZCN_OK;
        }
        same_buf = tail->bid == bid;
        if (len < COALESCE_BYTES || c->sq_chunks >= s->conn_chunks_max) {
            ZCN_Error err = send_copy(s, c, data, len);
            if (err == ZCN_OK)
                s->stats.sends_coalesced++;
            /* With no pool buffer for the copy (the ring holds them),
             * referencing still works if a chunk is left (admit says). */
            if (err != ZCN_ERR_EXHAUSTED)
                return err;
        }
    }
    /* Data delivered to c itself passed the delivery gate, which made room
     * for it in c's cap and the budget: echoing it never fails on them.
     * Data of another connection (a proxy) must fit c's cap and the
     * budget like any other buffer. */
    uint32_t more = same_buf || delivered_to(s, c) ? 0 : 1;
    ZCN_Error err = admit(s, c, len, more, more, 1);
    if (err != ZCN_OK)
        return err;
    int32_t idx = chunk_take(s);
    buf_ref(s, bid);
    s->chunks[idx] = (struct chunk){bid, (uint32_t)off, (uint32_t)len, NIL};
    enqueue_chunk(s, c, idx);
    s->stats.sends_zero_copy++;
    want_send(s, c);
    return ZCN_OK;
}

ZCN_Error zcn_server_send(ZCN_Server *s, int fd, const uint8_t *data, size_t len)
{
    if (s == NULL || (data == NULL && len != 0))
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server or data is NULL");
    ZCN_Error err = owner_check(s, "zcn_server_send");
    if (err != ZCN_OK)
        return err;
    struct conn *c = send_target(s, fd, &err);
    if (c == NULL)
        return err;
    if (len == 0)
        return ZCN_OK;
    const uint8_t *end = s->slab + (size_t)s->buffer_count * s->buffer_size;
    if (data < s->slab || data >= end)
        return send_copy(s, c, data, len);

    uint32_t bid = (uint32_t)((size_t)(data - s->slab) / s->buffer_size);
    size_t off = (size_t)(data - buf_ptr(s, bid));
    /* len may be anything (SIZE_MAX): compare without adding to it. */
    if (len > s->buffer_size - off)
        return zcn_fail(ZCN_ERR_FOREIGN_POINTER,
                        "data at offset %zu with len %zu runs past its %zu-byte pool buffer", off,
                        len, s->buffer_size);
    struct zcn_buf_meta *m = &s->meta[bid];
    if (m->state == ZCN_BUF_USER)
        return send_copy(s, c, data, len);
    if (m->state != ZCN_BUF_RX || m->refs == 0)
        return zcn_fail(ZCN_ERR_FOREIGN_POINTER,
                        "data points into a receive buffer that is no longer lent");
    return send_lent(s, c, bid, off, data, len);
}

uint8_t *zcn_server_acquire_buffer(ZCN_Server *s, size_t *capacity_out)
{
    if (s == NULL || owner_check(s, "zcn_server_acquire_buffer") != ZCN_OK)
        return NULL;
    if (budget_used(s) + 1 > s->budget) {
        zcn_fail(ZCN_ERR_EXHAUSTED, "the budget of %u buffers is used up (%u more are the "
                 "receive reserve)", s->budget, s->reserve);
        return NULL;
    }
    uint8_t *p = zcn_user_buffer_acquire(s->pool, s->meta, s->slab, s->buffer_size,
                                         capacity_out);
    if (p == NULL) {
        zcn_fail(ZCN_ERR_EXHAUSTED, "no free pool buffer");
        return NULL;
    }
    s->pool_free--;
    s->user_bufs++;
    return p;
}

ZCN_Error zcn_server_release_buffer(ZCN_Server *s, uint8_t *buffer)
{
    if (s == NULL || buffer == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server or buffer is NULL");
    ZCN_Error err = owner_check(s, "zcn_server_release_buffer");
    if (err != ZCN_OK)
        return err;
    err = zcn_user_buffer_release(s->pool, s->meta, buffer, "zcn_server_acquire_buffer");
    if (err == ZCN_OK) {
        s->pool_free++;
        s->user_bufs--;
    }
    return err;
}

ZCN_Error zcn_server_send_buffer(ZCN_Server *s, int fd, uint8_t *buffer, size_t len)
{
    if (s == NULL || buffer == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server or buffer is NULL");
    ZCN_Error err = owner_check(s, "zcn_server_send_buffer");
    if (err != ZCN_OK)
        return err;
    int64_t bid = zcn_user_buffer_index(s->pool, s->meta, buffer);
    if (bid < 0)
        return zcn_fail(ZCN_ERR_FOREIGN_POINTER, "not a buffer from zcn_server_acquire_buffer");
    if (len > s->buffer_size)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "len %zu is larger than the buffer (%zu)", len,
                        s->buffer_size);
    struct conn *c = send_target(s, fd, &err);
    if (c == NULL)
        return err;
    if (len == 0) {
        s->user_bufs--;
        pool_put(s, (uint32_t)bid);
        return ZCN_OK;
    }
    /* The buffer is counted already (as the user's): moving it into the
     * queue takes nothing more from the budget, only from c's cap. */
    err = admit(s, c, len, 1, 0, 1);
    if (err != ZCN_OK)
        return err;
    int32_t idx = chunk_take(s);
    s->user_bufs--;
    s->meta[bid].state = ZCN_BUF_TX;
    s->meta[bid].refs = 1;
    s->chunks[idx] = (struct chunk){(uint32_t)bid, 0, (uint32_t)len, NIL};
    enqueue_chunk(s, c, idx);
    s->stats.sends_zero_copy++;
    want_send(s, c);
    return ZCN_OK;
}

/* A connection of this server that has not ended yet (OPEN or CLOSING). */
static struct conn *live_conn(ZCN_Server *s, int fd, ZCN_Error *err, bool open_only)
{
    struct conn *c = lookup(s, fd);
    if (c == NULL || (c->state != CONN_OPEN && (open_only || c->state != CONN_CLOSING))) {
        *err = zcn_fail(ZCN_ERR_CLOSED, "fd %d is not an open connection of this server", fd);
        return NULL;
    }
    return c;
}

ZCN_Error zcn_server_close(ZCN_Server *s, int fd)
{
    if (s == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    ZCN_Error err = owner_check(s, "zcn_server_close");
    if (err != ZCN_OK)
        return err;
    struct conn *c = live_conn(s, fd, &err, true);
    if (c == NULL)
        return err;
    begin_close(s, c);
    return ZCN_OK;
}

ZCN_Error zcn_server_shutdown(ZCN_Server *s, int fd)
{
    if (s == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    ZCN_Error err = owner_check(s, "zcn_server_shutdown");
    if (err != ZCN_OK)
        return err;
    struct conn *c = live_conn(s, fd, &err, true);
    if (c == NULL)
        return err;
    if (c->shut_wr)
        return zcn_fail(ZCN_ERR_CLOSED, "fd %d is already shut down for sending", fd);
    c->shut_wr = true;
    c->want_drain = false;
    progress_shutdown(s, c);
    return ZCN_OK;
}

ZCN_Error zcn_server_abort(ZCN_Server *s, int fd)
{
    if (s == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    ZCN_Error err = owner_check(s, "zcn_server_abort");
    if (err != ZCN_OK)
        return err;
    struct conn *c = live_conn(s, fd, &err, false);
    if (c == NULL)
        return err;
    s->stats.aborts++;
    abort_conn(s, c, true);
    return ZCN_OK;
}

size_t zcn_server_queued_bytes(const ZCN_Server *s, int fd)
{
    if (s == NULL)
        return 0;
    struct conn *c = lookup(s, fd);
    if (c == NULL || c->state == CONN_FREE || c->state == CONN_ZOMBIE)
        return 0;
    return (size_t)c->queued_bytes;
}

ZCN_Error zcn_server_conn_info(const ZCN_Server *s, int fd, ZCN_ConnInfo *out)
{
    if (s == NULL || out == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server or out is NULL");
    ZCN_Error err = owner_check(s, "zcn_server_conn_info");
    if (err != ZCN_OK)
        return err;
    struct conn *c = lookup(s, fd);
    if (c == NULL || c->state == CONN_FREE || c->state == CONN_ZOMBIE)
        return zcn_fail(ZCN_ERR_CLOSED, "fd %d is not a connection of this server", fd);
    memset(out, 0, sizeof *out);
    out->bytes_received = c->bytes_in;
    out->bytes_sent = c->bytes_out;
    out->queued_bytes = c->queued_bytes;
    out->deferred_bytes = c->rx_bytes;
    out->queued_buffers = c->sq_bufs;
    out->deferred_buffers = c->rx_bufs;
    out->buffers_held = held(c);
    out->buffer_cap = buf_cap(s);
    out->flags = (c->eof ? ZCN_CONN_EOF : 0u) | (c->shut_wr ? ZCN_CONN_SHUT_WR : 0u) |
                 (c->state != CONN_OPEN ? ZCN_CONN_CLOSING : 0u) |
                 (linked(&c->wait) ? ZCN_CONN_WAITING : 0u) |
                 (c->state == CONN_OPEN && !c->recv_armed && !c->eof ? ZCN_CONN_PAUSED : 0u);
    uint64_t now = zcn_now_ms();
    if (c->sq_head != NIL && now > c->progress_ms)
        out->send_stall_ms = now - c->progress_ms;
    return ZCN_OK;
}

static void echo_on_data(void *user_data, int fd, const uint8_t *data, size_t len)
{
    ZCN_Server *s = user_data;
    if (zcn_server_send(s, fd, data, len) != ZCN_OK) {
        /* An echo that cannot send would silently lose data: end it. */
        struct conn *c = lookup(s, fd);
        if (c != NULL)
            abort_conn(s, c, false);
    }
}

ZCN_Error zcn_server_use_echo_handler(ZCN_Server *s)
{
    if (s == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    s->on_data = echo_on_data; /* user_data stays the caller's */
    return ZCN_OK;
}

/* ------------------------------------------------------------------ */
/* completions                                                         */
/* ------------------------------------------------------------------ */

/* The peer has finished sending and all it sent was delivered. In
 * half-close mode the application hears of it and decides; otherwise the
 * connection closes once the answers are queued. In poll mode the caller
 * answers the current batch after the poll returns, so a close now would
 * refuse those sends (ZCN_ERR_CLOSED) and lose the reply to a half-closed
 * request; the close waits for the next poll. */
static void on_peer_eof(ZCN_Server *s, struct conn *c)
{
    if (c->state != CONN_OPEN)
        return;
    if (half_close(s)) {
        if (!c->eof_reported) {
            if (!has_room(s, 1)) {
                service_add(s, c);
                return;
            }
            c->eof_reported = true;
            emit(s, ZCN_EVENT_EOF, c);
        }
        progress_shutdown(s, c);
        return;
    }
    if (lent_now(s, c)) {
        service_add(s, c);
        return;
    }
    begin_close(s, c);
}

/* Delivers deferred data while c's limits and the budget allow and there is
 * room, then re-arms its receive. */
static void flush_pending_rx(ZCN_Server *s, struct conn *c)
{
    while (c->rx_head != NIL && c->state == CONN_OPEN) {
        uint32_t bid = (uint32_t)c->rx_head;
        enum gate g = delivery_gate(s, c, s->meta[bid].len, 0);
        if (g == GATE_BUDGET)
            wait_for_budget(s, c);
        else if (g == GATE_BATCH || (g == GATE_OWN && !c->send_inflight && !c->in_tx))
            service_add(s, c); /* no send completion will call back: retry */
        if (g != GATE_OPEN)
            return;
        if (!has_room(s, 2)) {
            service_add(s, c);
            return;
        }
        c->rx_head = s->meta[bid].next;
        if (c->rx_head == NIL)
            c->rx_tail = NIL;
        held_add(s, c, &c->rx_bufs, -1);
        c->rx_bytes -= s->meta[bid].len;
        emit_data(s, c, bid, s->meta[bid].len);
    }
    if (c->state != CONN_OPEN || c->rx_head != NIL)
        return;
    list_remove(s, &s->waiters, OFF_WAIT, c);
    if (c->eof) {
        on_peer_eof(s, c);
        return;
    }
    maybe_arm_recv(s, c);
}

static void defer_rx(ZCN_Server *s, struct conn *c, uint32_t bid, uint32_t len)
{
    s->meta[bid].len = len;
    s->meta[bid].next = NIL;
    if (c->rx_tail != NIL)
        s->meta[c->rx_tail].next = (int32_t)bid;
    else
        c->rx_head = (int32_t)bid;
    c->rx_tail = (int32_t)bid;
    held_add(s, c, &c->rx_bufs, 1);
    c->rx_bytes += len;
}

/* The hard limit: a connection holding more than this (its cap overshot
 * by completions already in flight, many times over) is aborted. */
static bool over_hard_limit(ZCN_Server *s, struct conn *c)
{
    if (held(c) <= s->hard_max_bufs)
        return false;
    s->stats.hard_limit_aborts++;
    abort_conn(s, c, true);
    return true;
}

static void on_recv(ZCN_Server *s, struct conn *c, struct io_uring_cqe *cqe)
{
    bool more = (cqe->flags & IORING_CQE_F_MORE) != 0;
    int res = cqe->res;
    if (!more)
        c->recv_armed = false;

    if (cqe->flags & IORING_CQE_F_BUFFER) {
        uint32_t bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
        s->rx.count--;
        s->meta[bid].state = ZCN_BUF_RX;
        s->meta[bid].refs = 1;
        if (res > 0 && c->state == CONN_OPEN) {
            s->stats.recv_ops++;
            s->stats.bytes_received += (uint64_t)res;
            c->bytes_in += (uint64_t)res;
            touch(s, c);
            /* Data already deferred goes first: this waits behind it (and
             * the intake gate says whether c may take more meanwhile). */
            enum gate g = c->rx_head != NIL ? GATE_BATCH : delivery_gate(s, c, (uint32_t)res, 1);
            if (g == GATE_OPEN && has_room(s, 2)) {
                emit_data(s, c, bid, (uint32_t)res);
            } else {
                /* Deferred data is ours to keep: stop taking more until it
                 * has been delivered, so what waits stays in the kernel's
                 * socket buffers, not in the pool -- unless only this poll
                 * batch is full of c and it may take more (a stream: its
                 * receive goes on, bounded by the intake gate, instead of
                 * a cancel and a new request every batch). */
                defer_rx(s, c, bid, (uint32_t)res);
                if (g != GATE_BATCH || intake_gate(s, c) != GATE_OPEN)
                    cancel_recv(s, c);
                if (g == GATE_BUDGET)
                    wait_for_budget(s, c);
                else if (!linked(&c->wait))
                    service_add(s, c); /* re-checked each turn */
                if (over_hard_limit(s, c))
                    return;
            }
        } else {
            buf_unref(s, bid); /* closing: data after close is dropped */
        }
    }

    if (res == 0) {
        if (!c->eof)
            s->stats.eofs++;
        c->eof = true;
    } else if (res < 0) {
        switch (-res) {
        case ENOBUFS:
            /* The ring ran dry for a moment; re-armed when buffers return.
             * The ring's working set may be too small for such bursts: let
             * it hold more from now on (up to its full size). */
            s->stats.buffer_exhaustion_events++;
            if (s->br_extra < s->br_target)
                s->br_extra = s->br_extra * 2 + 32;
            if (c->state == CONN_OPEN)
                service_add(s, c);
            break;
        case ECANCELED:
            break; /* paused or closing */
        case EINTR:
        case EAGAIN:
            break;
        default: /* ECONNRESET, ETIMEDOUT, EPIPE ...: the connection is gone */
            /* Also when already closing: the recv has ended either way
             * (no F_MORE), and progress_close below must see that, or a
             * closing connection whose recv fails would never finish. */
            abort_conn(s, c, false);
            break;
        }
    }

    if (c->state == CONN_OPEN) {
        if (c->eof && c->rx_head == NIL)
            on_peer_eof(s, c);
        else if (!c->recv_armed && res != -ENOBUFS)
            maybe_arm_recv(s, c);
    } else {
        progress_close(s, c);
    }
}

/* c's queue drained below half its limits after a refused send. */
static bool drain_due(const ZCN_Server *s, const struct conn *c)
{
    return c->want_drain && c->queued_bytes <= s->send_queue_max_bytes / 2 &&
           c->sq_bufs <= buf_cap(s) / 2 && budget_used(s) < s->budget;
}

static void on_send(ZCN_Server *s, struct conn *c, int res)
{
    c->send_inflight = false;
    c->send_cancelled = false;
    if (res < 0 && res != -EINTR && res != -EAGAIN) {
        drop_send_queue(s, c);
        if (c->state == CONN_OPEN || c->state == CONN_CLOSING)
            abort_conn(s, c, false);
        progress_close(s, c);
        return;
    }
    s->stats.send_ops++;
    if (res > 0) {
        size_t left = (size_t)res;
        s->stats.bytes_sent += left;
        c->bytes_out += left;
        c->queued_bytes -= left;
        while (left > 0 && c->sq_head != NIL) {
            struct chunk *ch = &s->chunks[c->sq_head];
            if (left < ch->len) {
                ch->off += (uint32_t)left;
                ch->len -= (uint32_t)left;
                break;
            }
            left -= ch->len;
            int32_t done = c->sq_head;
            c->sq_head = ch->next;
            if (c->sq_head == NIL)
                c->sq_tail = NIL;
            if (c->sq_head == NIL || s->chunks[c->sq_head].bid != ch->bid)
                held_add(s, c, &c->sq_bufs, -1);
            c->sq_chunks--;
            buf_unref(s, ch->bid);
            chunk_put(s, done);
        }
        touch(s, c);
        send_progress(s, c, true);
    }
    if (c->state == CONN_DEAD) {
        drop_send_queue(s, c);
        progress_close(s, c);
        return;
    }
    want_send(s, c);
    if (c->state == CONN_OPEN) {
        if (drain_due(s, c) && has_room(s, 1)) {
            c->want_drain = false;
            emit(s, ZCN_EVENT_DRAIN, c);
        }
        if (c->rx_head != NIL)
            flush_pending_rx(s, c);
        else
            maybe_arm_recv(s, c);
        progress_shutdown(s, c);
    }
    progress_close(s, c);
}

static void arm_accept(ZCN_Server *s)
{
    struct io_uring_sqe *sqe = zcn_get_sqe(s->ring);
    if (sqe == NULL)
        return; /* try_resume_accept tries again next turn */
    io_uring_prep_multishot_accept(sqe, s->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, pack_ud(OP_ACCEPT, 0, 0));
    s->accept_armed = true;
}

static void try_resume_accept(ZCN_Server *s)
{
    if (s->started && !s->accept_armed && !s->destroying && s->now_ms >= s->accept_resume_ms)
        arm_accept(s);
}

static void accept_backoff(ZCN_Server *s)
{
    uint32_t ms = s->accept_backoff_ms == 0 ? ACCEPT_BACKOFF_MIN_MS : s->accept_backoff_ms * 2;
    if (ms > ACCEPT_BACKOFF_MAX_MS)
        ms = ACCEPT_BACKOFF_MAX_MS;
    s->accept_backoff_ms = ms;
    s->accept_resume_ms = s->now_ms + ms;
    s->stats.accept_backoffs++;
}

static void new_connection(ZCN_Server *s, int fd)
{
    if ((uint32_t)fd >= s->fd_table_size || s->conn_free == NIL) {
        s->stats.connections_rejected++;
        close(fd);
        return;
    }
    if (s->nodelay) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    int32_t slot = s->conn_free;
    struct conn *c = &s->conns[slot];
    s->conn_free = c->zombie_next;
    if ((uint32_t)slot >= s->slots_high)
        s->slots_high = (uint32_t)slot + 1;
    uint32_t gen = c->gen;
    memset(c, 0, sizeof *c); /* on no list: finalize unlinked it */
    c->gen = gen;
    c->fd = fd;
    c->state = CONN_OPEN;
    c->sq_head = c->sq_tail = NIL;
    c->rx_head = c->rx_tail = NIL;
    c->service.prev = c->service.next = NOT_LINKED;
    c->lru = c->wait = c->service;
    c->zombie_next = NIL;
    s->fd_table[fd] = slot;
    s->conns_active++;
    s->stats.connections_accepted++;
    touch(s, c);
    emit(s, ZCN_EVENT_ACCEPT, c);
    maybe_arm_recv(s, c);
}

static void on_accept_cqe(ZCN_Server *s, struct io_uring_cqe *cqe)
{
    bool more = (cqe->flags & IORING_CQE_F_MORE) != 0;
    if (!more)
        s->accept_armed = false;
    if (cqe->res >= 0) {
        s->accept_backoff_ms = 0;
        if (s->destroying)
            close(cqe->res);
        else
            new_connection(s, cqe->res);
    } else {
        switch (-cqe->res) {
        case EMFILE:
        case ENFILE:
        case ENOBUFS:
        case ENOMEM:
            /* Out of fds or memory: wait before trying again, and make sure
             * the kernel is not retrying on its own meanwhile. */
            accept_backoff(s);
            if (more)
                cancel_ud(s, pack_ud(OP_ACCEPT, 0, 0), NULL, NULL);
            return;
        default: /* ECONNABORTED, EINTR, ECANCELED ...: transient */
            break;
        }
    }
    if (!s->accept_armed && s->accept_backoff_ms == 0)
        try_resume_accept(s);
}

/* The policy's clock: send timeouts and evictions are checked by time,
 * and a loop whose queues are stuck may get no completion at all, so
 * something must wake it. A timeout request in the kernel, re-armed while
 * needed, rather than a timed wait: every wait stays untimed, and the
 * kernel does not set up a timer per sleep (1-connection ping-pong cost
 * 15 % more CPU per message with timed waits). */
static inline uint64_t send_sweep_period(const ZCN_Server *s);

static bool tick_needed(const ZCN_Server *s)
{
    return !s->destroying && ((s->queues_busy > 0 && s->send_timeout_ms != 0) ||
                              s->waiters.head != NIL);
}

static void arm_tick(ZCN_Server *s)
{
    if (s->tick_armed || !tick_needed(s))
        return;
    struct io_uring_sqe *sqe = zcn_get_sqe(s->ring);
    if (sqe == NULL)
        return; /* next_timer_ms bounds the wait instead */
    uint64_t ms = s->waiters.head != NIL ? EVICT_STALL_MS / 4 : send_sweep_period(s);
    s->tick_ts.tv_sec = (long long)(ms / 1000);
    s->tick_ts.tv_nsec = (long long)(ms % 1000) * 1000000;
    io_uring_prep_timeout(sqe, &s->tick_ts, 0, 0);
    io_uring_sqe_set_data64(sqe, pack_ud(OP_TICK, 0, 0));
    s->tick_armed = true;
}

static void arm_wake(ZCN_Server *s)
{
    struct io_uring_sqe *sqe = zcn_get_sqe(s->ring);
    if (sqe == NULL)
        return; /* turn() tries again before its next wait */
    io_uring_prep_poll_multishot(sqe, s->wake_fd, POLLIN);
    io_uring_sqe_set_data64(sqe, pack_ud(OP_WAKE, 0, 0));
    s->wake_armed = true;
}

static void on_wake(ZCN_Server *s, struct io_uring_cqe *cqe)
{
    if (!(cqe->flags & IORING_CQE_F_MORE))
        s->wake_armed = false;
    zcn_eventfd_drain(s->wake_fd);
    if (!s->wake_armed && !s->destroying)
        arm_wake(s);
}

static void handle_cqe(ZCN_Server *s, struct io_uring_cqe *cqe)
{
    uint64_t ud = io_uring_cqe_get_data64(cqe);
    enum op op = ud_op(ud);
    switch (op) {
    case OP_ACCEPT:
        on_accept_cqe(s, cqe);
        return;
    case OP_WAKE:
        on_wake(s, cqe);
        return;
    case OP_WAKEUP_PIPE:
        zcn_wakeup_on_cqe(&s->wakeup, cqe);
        return;
    case OP_TICK:
        s->tick_armed = false; /* the turn's housekeeping does the checks */
        return;
    case OP_IGNORE:
        return;
    case OP_SOURCE:
        if (ud_slot(ud) < ZCN_SOURCES_MAX && s->sources[ud_slot(ud)] != NULL)
            s->sources[ud_slot(ud)]->handle_cqe(s->sources[ud_slot(ud)], cqe);
        return;
    case OP_RECV:
    case OP_SEND:
        break;
    default:
        return;
    }
    uint32_t slot = ud_slot(ud);
    struct conn *c = slot < s->conns_max ? &s->conns[slot] : NULL;
    if (c == NULL || c->gen != ud_gen(ud) || c->state == CONN_FREE) {
        /* Cannot happen: slots are reused only after their requests end.
         * Return a buffer it may carry so none leaks. */
        if (cqe->flags & IORING_CQE_F_BUFFER) {
            uint32_t bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
            s->rx.count--;
            s->meta[bid].refs = 1;
            buf_unref(s, bid);
        }
        return;
    }
    if (op == OP_RECV)
        on_recv(s, c, cqe);
    else
        on_send(s, c, cqe->res);
}

/* ------------------------------------------------------------------ */
/* the loop                                                            */
/* ------------------------------------------------------------------ */

/* Connections waiting for budget, first come first served, while the
 * budget has room; a refused sender hears DRAIN. */
static void serve_waiters(ZCN_Server *s)
{
    while (s->waiters.head != NIL && budget_used(s) < s->budget && has_room(s, 2)) {
        struct conn *c = &s->conns[s->waiters.head];
        list_remove(s, &s->waiters, OFF_WAIT, c);
        if (c->state != CONN_OPEN)
            continue;
        if (drain_due(s, c)) {
            c->want_drain = false;
            emit(s, ZCN_EVENT_DRAIN, c);
        }
        if (c->state != CONN_OPEN)
            continue;
        if (c->rx_head != NIL)
            flush_pending_rx(s, c);
        else
            maybe_arm_recv(s, c);
        if (linked(&c->wait)) {
            /* Still short of budget: it keeps its place at the head. */
            list_remove(s, &s->waiters, OFF_WAIT, c);
            list_push_head(s, &s->waiters, OFF_WAIT, c);
            return;
        }
    }
}

/* Someone waits for budget and none is left: abort, biggest first, the
 * connections whose queued data made no progress for EVICT_STALL_MS, until
 * what they hold would serve every waiter (at most EVICT_BATCH a scan).
 * One victim per scan is not enough against thousands of such peers: each
 * victim frees a buffer or two, and the waiters ahead of a well-behaved
 * newcomer are mostly the attackers' own connections. A scan visits the
 * used slots, at most every EVICT_SCAN_MS and only under this pressure. */
static void evict_for_waiters(ZCN_Server *s)
{
    if (s->waiters.head == NIL || budget_used(s) < s->budget ||
        s->now_ms < s->evict_check_ms + EVICT_SCAN_MS)
        return;
    s->evict_check_ms = s->now_ms;
    struct conn *top[EVICT_BATCH]; /* the biggest candidates, unordered */
    uint32_t n = 0, smallest = 0;
    for (uint32_t i = 0; i < s->slots_high; i++) {
        struct conn *c = &s->conns[i];
        bool live = c->state == CONN_OPEN || c->state == CONN_CLOSING;
        if (!live || c->sq_head == NIL || s->now_ms - c->progress_ms < EVICT_STALL_MS)
            continue;
        if (n < EVICT_BATCH) {
            top[n++] = c;
        } else if (held(c) > held(top[smallest])) {
            top[smallest] = c;
        } else {
            continue;
        }
        for (uint32_t k = 0; k < n; k++) /* where the smallest is now */
            if (held(top[k]) < held(top[smallest]))
                smallest = k;
    }
    uint64_t want = s->waiters.count, freed = 0;
    while (n > 0 && freed < want) {
        uint32_t best = 0;
        for (uint32_t k = 1; k < n; k++)
            if (held(top[k]) > held(top[best]))
                best = k;
        struct conn *victim = top[best];
        top[best] = top[--n];
        freed += held(victim) > 0 ? held(victim) : 1;
        s->stats.evictions++;
        abort_conn(s, victim, true);
    }
}

static inline uint64_t send_sweep_period(const ZCN_Server *s)
{
    uint64_t quarter = s->send_timeout_ms / 4;
    return quarter < SEND_SWEEP_MS ? (quarter > 0 ? quarter : 1) : SEND_SWEEP_MS;
}

/* Connections whose queued data made no progress for send_timeout_ms:
 * checked every send_sweep_period while any has data queued. */
static void sweep_send_timeouts(ZCN_Server *s)
{
    if (s->send_timeout_ms == 0 || s->queues_busy == 0 || s->now_ms < s->send_sweep_ms)
        return;
    s->send_sweep_ms = s->now_ms + send_sweep_period(s);
    for (uint32_t i = 0, busy = 0; i < s->slots_high && busy < s->queues_busy && has_room(s, 1);
         i++) {
        struct conn *c = &s->conns[i];
        if ((c->state != CONN_OPEN && c->state != CONN_CLOSING) || c->sq_head == NIL)
            continue;
        busy++;
        if (s->now_ms - c->progress_ms < s->send_timeout_ms)
            continue;
        s->stats.send_timeouts++;
        abort_conn(s, c, true);
    }
}

/* Work that was waiting for room, buffers, budget or SQEs. */
static void run_service_list(ZCN_Server *s)
{
    ring_refill(s);
    serve_waiters(s);
    evict_for_waiters(s);
    /* Only what is queued now: entries re-added meanwhile wait a turn. */
    for (uint32_t n = s->service.count; n > 0; n--) {
        struct conn *c = list_pop(s, &s->service, OFF_SERVICE);
        if (c == NULL)
            break;
        if (!has_room(s, 2)) {
            service_add(s, c);
            continue;
        }
        if (c->state == CONN_OPEN) {
            if (c->rx_head != NIL || c->eof)
                flush_pending_rx(s, c);
            else
                maybe_arm_recv(s, c);
            submit_send(s, c);
            progress_shutdown(s, c);
        } else {
            progress_close(s, c);
        }
    }
    serve_waiters(s);
}

static void sweep_idle(ZCN_Server *s)
{
    if (s->idle_timeout_ms == 0)
        return;
    while (s->lru.head != NIL && has_room(s, 1)) {
        struct conn *c = &s->conns[s->lru.head];
        if (s->now_ms - c->last_active_ms < s->idle_timeout_ms)
            break;
        list_remove(s, &s->lru, OFF_LRU, c);
        s->stats.idle_timeouts++;
        abort_conn(s, c, false);
    }
}

static void min_due(int64_t *best, uint64_t due, uint64_t now)
{
    int64_t ms = due > now ? (int64_t)(due - now) : 0;
    if (*best < 0 || ms < *best)
        *best = ms;
}

/* Milliseconds until the next timer the wait must honour (idle expiry,
 * accept resume; the policy's checks have their tick), or -1. */
static int next_timer_ms(const ZCN_Server *s)
{
    int64_t best = -1;
    if (s->idle_timeout_ms != 0 && s->lru.head != NIL)
        min_due(&best, s->conns[s->lru.head].last_active_ms + s->idle_timeout_ms, s->now_ms);
    if (s->started && !s->accept_armed && !s->destroying)
        min_due(&best, s->accept_resume_ms, s->now_ms);
    if (!s->tick_armed && tick_needed(s)) /* no SQE for the tick: time the wait */
        min_due(&best, s->now_ms + EVICT_STALL_MS / 4, s->now_ms);
    return best > INT32_MAX ? INT32_MAX : (int)best;
}

/* Ends the previous poll batch: lent buffers return, closed fds close. */
static void end_batch(ZCN_Server *s)
{
    while (s->lent_head != NIL) {
        uint32_t bid = (uint32_t)s->lent_head;
        s->lent_head = s->meta[bid].next;
        buf_unref(s, bid);
    }
    s->lent_count = 0;
    while (s->zombie_head != NIL) {
        struct conn *c = &s->conns[s->zombie_head];
        s->zombie_head = c->zombie_next;
        free_slot(s, c);
    }
    s->batch++; /* what the last batch lent is the caller's answer now */
}

/* What a wait hands the kernel first: queued sends (ours and the attached
 * sources'), receive buffers back in the ring. */
static void prepare_submit(ZCN_Server *s)
{
    flush_tx(s);
    for (uint32_t i = 0, seen = 0; seen < s->sources_count && i < ZCN_SOURCES_MAX; i++) {
        zcn_source *src = s->sources[i];
        if (src == NULL)
            continue;
        seen++;
        if (src->flush != NULL)
            src->flush(src);
    }
    ring_refill(s);
    zcn_bufring_publish(&s->rx);
}

/* Waits up to timeout_ms (-1 forever, 0 not at all) for a completion.
 * Returns 0 or a negative errno (-ETIME on timeout, -EINTR on a signal). */
static int wait_cqe(ZCN_Server *s, int timeout_ms)
{
    prepare_submit(s);
    return zcn_wait(s->ring, timeout_ms);
}

/* Sends queued since the last wait (by callbacks, or by a binding after
 * zcn_server_poll returned) go to the kernel now rather than at the next
 * wait. No system call when nothing is queued. */
static ZCN_Error submit_now(ZCN_Server *s)
{
    prepare_submit(s);
    int ret = io_uring_submit(s->ring);
    if (ret < 0 && ret != -EAGAIN && ret != -EBUSY && ret != -EINTR)
        return zcn_fail((ZCN_Error)-ret, "io_uring_submit: %s", strerror(-ret));
    return ZCN_OK;
}

static uint32_t reap(ZCN_Server *s)
{
    struct io_uring_cqe *cqe;
    unsigned head;
    uint32_t seen = 0;
    io_uring_for_each_cqe(s->ring, head, cqe)
    {
        if (seen == CQE_BATCH || !has_room(s, 3))
            break;
        handle_cqe(s, cqe);
        seen++;
    }
    io_uring_cq_advance(s->ring, seen);
    flush_tx(s);
    return seen;
}

/* Timers and deferred work of a turn. */
static void housekeeping(ZCN_Server *s)
{
    sweep_idle(s);
    sweep_send_timeouts(s);
    run_service_list(s);
}

/* One turn of the loop: timers, deferred work, at most one wait, then the
 * completions that are ready. *handled gets the work done. */
static ZCN_Error turn(ZCN_Server *s, int timeout_ms, uint32_t *handled)
{
    *handled = 0;
    s->now_ms = zcn_now_ms();
    uint64_t closed_before = s->stats.connections_closed;
    try_resume_accept(s);
    if (!s->wake_armed)
        arm_wake(s); /* a stop from another thread must always wake us */
    housekeeping(s);
    arm_tick(s);
    uint32_t early = (uint32_t)(s->stats.connections_closed - closed_before) + s->ev_n;

    int wait_ms = early > 0 ? 0 : timeout_ms;
    int timer_ms = next_timer_ms(s);
    if (timer_ms >= 0 && (wait_ms < 0 || timer_ms < wait_ms))
        wait_ms = timer_ms;
    zcn_wakeup_arm(&s->wakeup, s->ring, pack_ud(OP_WAKEUP_PIPE, 0, 0));
    int ret = wait_cqe(s, wait_ms);
    if (ret == -EINTR) {
        zcn_wakeup_consume(&s->wakeup);
        *handled = early;
        return early > 0 ? ZCN_OK : zcn_fail((ZCN_Error)EINTR, "interrupted by a signal");
    }
    if (ret < 0 && ret != -ETIME && ret != -EAGAIN && ret != -EBUSY)
        return zcn_fail((ZCN_Error)-ret, "io_uring_enter failed");
    s->now_ms = zcn_now_ms();
    uint32_t seen = reap(s);
    housekeeping(s);
    *handled = early + seen;
    if (zcn_wakeup_take(&s->wakeup))
        return zcn_fail((ZCN_Error)EINTR, "interrupted: a byte came on the wakeup fd");
    return ZCN_OK;
}

static ZCN_Error loop_guard(ZCN_Server *s, const char *fn)
{
    if (s == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    ZCN_Error err = owner_check(s, fn);
    if (err != ZCN_OK)
        return err;
    if (s->in_callback)
        return zcn_fail(ZCN_ERR_BUSY, "the loop cannot be run from inside a callback");
    if (!s->started)
        return zcn_fail(ZCN_ERR_NOT_STARTED, "call zcn_server_start first");
    return ZCN_OK;
}

static ZCN_Error turn_cb(void *loop, int timeout_ms, uint32_t *handled)
{
    return turn(loop, timeout_ms, handled);
}

/* Ends the previous poll batch, then runs turns (zcn_run_until). */
static ZCN_Error run_until(ZCN_Server *s, int timeout_ms, uint32_t *handled_out, bool *stopped)
{
    s->in_loop++;
    end_batch(s);
    ZCN_Error err = zcn_run_until(s, turn_cb, &s->stop_requested, timeout_ms, handled_out, stopped);
    /* A stopped loop may not wait again soon: what its callbacks sent (a
     * reply, then stop) goes now. Other returns leave that to the next
     * wait, which submits it in the same system call. */
    if (*stopped) {
        ZCN_Error e = submit_now(s);
        if (err == ZCN_OK)
            err = e;
    }
    s->in_loop--;
    return err;
}

ZCN_Error zcn_server_run_once(ZCN_Server *s)
{
    ZCN_Error err = loop_guard(s, "zcn_server_run_once");
    if (err != ZCN_OK)
        return err;
    s->ev = NULL;
    bool stopped;
    return run_until(s, -1, NULL, &stopped);
}

ZCN_Error zcn_server_run_once_timeout(ZCN_Server *s, int timeout_ms, uint32_t *handled_out)
{
    if (handled_out != NULL)
        *handled_out = 0;
    ZCN_Error err = loop_guard(s, "zcn_server_run_once_timeout");
    if (err != ZCN_OK)
        return err;
    s->ev = NULL;
    bool stopped;
    return run_until(s, timeout_ms, handled_out, &stopped);
}

ZCN_Error zcn_server_poll(ZCN_Server *s, ZCN_Event *events, uint32_t capacity, int timeout_ms,
                          uint32_t *count_out)
{
    if (count_out != NULL)
        *count_out = 0;
    ZCN_Error err = loop_guard(s, "zcn_server_poll");
    if (err != ZCN_OK)
        return err;
    if (events == NULL || capacity < 4)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "events must hold at least 4 entries");
    s->poll_mode = true;
    s->ev = events;
    s->ev_cap = capacity;
    s->ev_n = 0;
    bool stopped;
    err = run_until(s, timeout_ms, NULL, &stopped);
    if (count_out != NULL)
        *count_out = s->ev_n;
    s->ev = NULL;
    s->ev_cap = 0;
    return err;
}

ZCN_Error zcn_server_run(ZCN_Server *s)
{
    ZCN_Error err = loop_guard(s, "zcn_server_run");
    if (err != ZCN_OK)
        return err;
    s->ev = NULL;
    for (;;) {
        bool stopped = false;
        err = run_until(s, -1, NULL, &stopped);
        if (stopped)
            return ZCN_OK;
        if (err != ZCN_OK && err != (ZCN_Error)EINTR)
            return err;
    }
}

ZCN_Error zcn_server_stop(ZCN_Server *s)
{
    /* The registry lookup touches only the registry, never *s: a server
     * destroyed (or being destroyed) is simply not found. */
    int slot = zcn_live_acquire(s);
    if (slot == -1)
        return ZCN_ERR_INVALID_ARGUMENT; /* no detail: must stay signal-safe */
    atomic_store_explicit(&s->stop_requested, 1, memory_order_release);
    zcn_eventfd_wake(s->wake_fd);
    zcn_live_release(slot);
    return ZCN_OK;
}

ZCN_Error zcn_server_flush(ZCN_Server *s)
{
    if (s == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    ZCN_Error err = owner_check(s, "zcn_server_flush");
    if (err != ZCN_OK)
        return err;
    if (!s->started)
        return ZCN_OK; /* nothing can be queued before start */
    return submit_now(s);
}

ZCN_Error zcn_server_wakeup_fd(ZCN_Server *s, int *fd_out)
{
    if (fd_out != NULL)
        *fd_out = -1;
    if (s == NULL || fd_out == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, s == NULL ? "server is NULL" : "fd_out is NULL");
    ZCN_Error err = owner_check(s, "zcn_server_wakeup_fd");
    if (err != ZCN_OK)
        return err;
    return zcn_wakeup_open(&s->wakeup, fd_out);
}

/* ------------------------------------------------------------------ */
/* create / start / destroy                                            */
/* ------------------------------------------------------------------ */

struct settings {
    uint32_t entries, buffers, backlog, conns_max, idle_ms, flags, reserve, send_timeout_ms,
        hard_max;
    size_t buffer_size;
    uint64_t sendq_max;
    bool nodelay;
};

#define KNOWN_FLAGS ((uint32_t)(ZCN_SERVER_REUSEPORT | ZCN_SERVER_HALF_CLOSE))

static ZCN_Error read_config(const ZCN_Config *cfg, struct settings *out)
{
    out->entries = cfg->io_uring_entries ? cfg->io_uring_entries : 256;
    out->buffers = cfg->buffer_pool_size ? cfg->buffer_pool_size : 1024;
    out->buffer_size = cfg->buffer_size ? cfg->buffer_size : 16384;
    out->backlog = cfg->backlog ? cfg->backlog : 1024;
    out->conns_max = cfg->connections_max ? cfg->connections_max : 4096;
    out->sendq_max = cfg->send_queue_max_bytes ? cfg->send_queue_max_bytes : (1u << 20);
    out->idle_ms = cfg->idle_timeout_ms;
    out->nodelay = cfg->tcp_nodelay >= 0;
    out->flags = cfg->flags;
    out->send_timeout_ms = cfg->send_timeout_ms ? cfg->send_timeout_ms : SEND_TIMEOUT_DEFAULT_MS;
    out->hard_max = cfg->conn_buffers_hard_max;
    if (out->entries > ZCN_SERVER_ENTRIES_MAX)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "io_uring_entries %u is over %u", out->entries,
                        ZCN_SERVER_ENTRIES_MAX);
    if (out->buffers < 2 || out->buffers > ZCN_SERVER_BUFFERS_MAX)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "buffer_pool_size %u is not in 2..%u",
                        out->buffers, ZCN_SERVER_BUFFERS_MAX);
    if (out->buffer_size > ZCN_SERVER_BUFFER_SIZE_MAX)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "buffer_size %zu is over %u", out->buffer_size,
                        ZCN_SERVER_BUFFER_SIZE_MAX);
    if (out->conns_max > ZCN_SERVER_CONNECTIONS_MAX)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "connections_max %u is over %u",
                        out->conns_max, ZCN_SERVER_CONNECTIONS_MAX);
    if (out->flags & ~KNOWN_FLAGS)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "unknown flags 0x%x", out->flags & ~KNOWN_FLAGS);
    out->reserve = cfg->buffer_reserve ? cfg->buffer_reserve : out->buffers / 4;
    if (out->reserve == 0)
        out->reserve = 1;
    if (out->reserve >= out->buffers)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                        "buffer_reserve %u must be below buffer_pool_size %u", out->reserve,
                        out->buffers);
    if (out->backlog > INT32_MAX)
        out->backlog = INT32_MAX;
    out->buffer_size = (out->buffer_size + ZCN_PAGE_SIZE - 1) / ZCN_PAGE_SIZE * ZCN_PAGE_SIZE;
    if (out->sendq_max < out->buffer_size)
        out->sendq_max = out->buffer_size; /* one received buffer always fits */
    return ZCN_OK;
}

static ZCN_Error open_listener(ZCN_Server *s, const ZCN_Config *cfg, const struct settings *st)
{
    struct sockaddr_storage ss;
    socklen_t len;
    ZCN_Error err = zcn_parse_address(cfg->address, cfg->port, &ss, &len, "address");
    if (err != ZCN_OK)
        return err;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return zcn_fail((ZCN_Error)errno, "socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if ((st->flags & ZCN_SERVER_REUSEPORT) &&
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
        int e = errno;
        close(fd);
        return zcn_fail((ZCN_Error)e, "SO_REUSEPORT: %s", strerror(e));
    }
    if (bind(fd, (struct sockaddr *)&ss, len) != 0) {
        int e = errno;
        close(fd);
        return zcn_fail((ZCN_Error)e, "bind %s port %u: %s",
                        cfg->address ? cfg->address : "0.0.0.0", cfg->port, strerror(e));
    }
    if (listen(fd, (int)st->backlog) != 0) {
        int e = errno;
        close(fd);
        return zcn_fail((ZCN_Error)e, "listen: %s", strerror(e));
    }
    len = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &len);
    s->port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                            : ((struct sockaddr_in6 *)&ss)->sin6_port);
    s->listen_fd = fd;
    return ZCN_OK;
}

/* The receive ring (c/bufring.c), filled from the pool, and the limits
 * that depend on the buffer counts. */
static ZCN_Error setup_buffer_ring(ZCN_Server *s, const struct settings *st)
{
    s->reserve = st->reserve;
    s->budget = s->buffer_count - s->reserve;
    s->br_target = s->buffer_count - s->reserve;
    if (s->br_target < 1)
        s->br_target = 1;
    s->copy_headroom = s->buffer_count / 8 > 2 ? s->buffer_count / 8 : 2;
    s->pool_free = s->buffer_count;
    ZCN_Error e = zcn_bufring_setup(&s->rx, s->ring, BUFFER_GROUP, s->br_target, s->slab,
                                    s->buffer_size);
    if (e != ZCN_OK)
        return e;
    ring_refill(s);
    zcn_bufring_publish(&s->rx);
    /* The per-connection cap in buffers: what send_queue_max_bytes needs
     * when buffers are full, but never more than a quarter of the budget,
     * so a few peers that stop reading cannot take it all. */
    uint64_t bufs = s->send_queue_max_bytes / s->buffer_size + 1;
    if (bufs > s->budget / 4)
        bufs = s->budget / 4;
    s->send_queue_max_bufs = bufs < 2 ? 2 : (uint32_t)bufs;
    s->hard_max_bufs = st->hard_max ? st->hard_max : 2 * s->send_queue_max_bufs + 64;
    s->conn_chunks_max = 2 * s->send_queue_max_bufs + IOV_BATCH;
    return ZCN_OK;
}

static ZCN_Error alloc_tables(ZCN_Server *s, const struct settings *st)
{
    struct rlimit rl;
    uint64_t nofile = 65536;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        nofile = rl.rlim_cur;
    if (nofile > (1u << 24))
        nofile = 1u << 24;
    s->fd_table_size = (uint32_t)nofile;
    s->conns_max = st->conns_max < nofile ? st->conns_max : (uint32_t)nofile;
    /* Chunks: a packed or zero-copy chunk per buffer and a few slices
     * more, and some per connection; each connection is capped too
     * (conn_chunks_max), so none can take the table. */
    s->chunks_max = s->buffer_count * 4 + s->conns_max * 2;
    s->meta = calloc(s->buffer_count, sizeof *s->meta);
    s->conns = calloc(s->conns_max, sizeof *s->conns);
    s->fd_table = malloc((size_t)s->fd_table_size * sizeof *s->fd_table);
    s->chunks = malloc((size_t)s->chunks_max * sizeof *s->chunks);
    s->tx_cap = s->conns_max * 2;
    s->tx = malloc((size_t)s->tx_cap * sizeof *s->tx);
    if (!s->meta || !s->conns || !s->fd_table || !s->chunks || !s->tx)
        return zcn_fail((ZCN_Error)ENOMEM, "server tables");
    for (uint32_t i = 0; i < s->fd_table_size; i++)
        s->fd_table[i] = NIL;
    for (uint32_t i = 0; i < s->chunks_max; i++)
        s->chunks[i].next = i + 1 < s->chunks_max ? (int32_t)(i + 1) : NIL;
    s->chunk_free = 0;
    for (uint32_t i = 0; i < s->conns_max; i++) {
        struct conn *c = &s->conns[i];
        c->fd = -1;
        c->zombie_next = i + 1 < s->conns_max ? (int32_t)(i + 1) : NIL;
        c->service.prev = c->service.next = NOT_LINKED;
        c->lru = c->wait = c->service;
    }
    s->conn_free = 0;
    return ZCN_OK;
}

static void free_server(ZCN_Server *s)
{
    zcn_bufring_unregister(&s->rx, s->ring);
    zcn_bufring_unmap(&s->rx);
    if (s->ring_handle != NULL)
        zcn_ring_destroy(s->ring_handle);
    if (s->listen_fd >= 0)
        close(s->listen_fd);
    if (s->wake_fd >= 0)
        close(s->wake_fd);
    zcn_wakeup_close(&s->wakeup);
    zcn_pool_destroy(s->pool);
    free(s->meta);
    free(s->conns);
    free(s->fd_table);
    free(s->chunks);
    free(s->tx);
    free(s);
}

static void init_lists(ZCN_Server *s)
{
    struct list empty = {NIL, NIL, 0};
    s->lru = s->service = s->waiters = empty;
    s->zombie_head = NIL;
    s->lent_head = NIL;
}

ZCN_Server *zcn_server_create(const ZCN_Config *cfg, ZCN_Error *err)
{
    zcn_clear_detail();
    if (cfg == NULL) {
        zcn_set_err(err, zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "config is NULL"));
        return NULL;
    }
    struct settings st = {0};
    ZCN_Error e = read_config(cfg, &st);
    if (e != ZCN_OK) {
        zcn_set_err(err, e);
        return NULL;
    }
    ZCN_Server *s = calloc(1, sizeof *s);
    if (s == NULL) {
        zcn_set_err(err, zcn_fail((ZCN_Error)ENOMEM, "server"));
        return NULL;
    }
    s->listen_fd = -1;
    s->wake_fd = -1;
    s->live_slot = -1;
    zcn_wakeup_init(&s->wakeup);
    s->buffer_count = st.buffers;
    s->buffer_size = st.buffer_size;
    s->backlog = st.backlog;
    s->send_queue_max_bytes = st.sendq_max;
    s->idle_timeout_ms = st.idle_ms;
    s->send_timeout_ms = st.send_timeout_ms == ZCN_TIMEOUT_NEVER ? 0 : st.send_timeout_ms;
    s->nodelay = st.nodelay;
    s->half_close_flag = (st.flags & ZCN_SERVER_HALF_CLOSE) != 0;
    init_lists(s);

    e = alloc_tables(s, &st);
    if (e == ZCN_OK) {
        if (cfg->buffer_memory != NULL)
            s->pool = zcn_pool_create_in(cfg->buffer_memory, cfg->buffer_memory_size,
                                         st.buffer_size, st.buffers, &e);
        else
            s->pool = zcn_pool_create(st.buffer_size, st.buffers, &e);
        if (s->pool != NULL)
            s->slab = zcn_pool_base(s->pool);
    }
    if (e == ZCN_OK) {
        /* CQ room for a completion per connection and per buffer at once, so
         * multishot requests are not ended by overflow in normal operation. */
        uint64_t cq = (uint64_t)s->conns_max * 2 + s->buffer_count + 64;
        s->ring_handle = zcn_ring_create_ex(st.entries, zcn_cq_entries(cq, st.entries),
                                            ZCN_RING_START_DISABLED, &e);
        if (s->ring_handle != NULL)
            s->ring = zcn_ring_io_uring(s->ring_handle);
    }
    if (e == ZCN_OK)
        e = open_listener(s, cfg, &st);
    if (e == ZCN_OK) {
        s->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (s->wake_fd < 0)
            e = zcn_fail((ZCN_Error)errno, "eventfd: %s", strerror(errno));
    }
    if (e == ZCN_OK)
        e = setup_buffer_ring(s, &st);
    if (e != ZCN_OK) {
        free_server(s);
        zcn_set_err(err, e);
        return NULL;
    }
    s->live_slot = zcn_live_add(s);
    zcn_set_err(err, ZCN_OK);
    return s;
}

ZCN_Error zcn_server_start(ZCN_Server *s)
{
    if (s == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    if (s->started)
        return zcn_fail(ZCN_ERR_ALREADY_STARTED, "zcn_server_start was already called");
    if (s->in_callback)
        return zcn_fail(ZCN_ERR_BUSY, "not from inside a callback");
    /* The ring was created disabled: enabling it here makes this thread its
     * single issuer, so a server may be created on one thread and run on
     * another. */
    ZCN_Error e = zcn_ring_enable(s->ring_handle);
    if (e != ZCN_OK)
        return e;
    s->owner = this_thread();
    s->started = true;
    s->now_ms = zcn_now_ms();
    arm_accept(s);
    arm_wake(s);
    int ret = io_uring_submit(s->ring);
    if (ret < 0) {
        s->started = false;
        return zcn_fail((ZCN_Error)-ret, "io_uring_submit: %s", strerror(-ret));
    }
    return ZCN_OK;
}

/* Ends every connection and waits (bounded) for the kernel to finish with
 * them, so no request can write into memory about to be freed. */
static void drain_for_destroy(ZCN_Server *s)
{
    s->destroying = true;
    s->in_loop++;
    if (s->listen_fd >= 0) {
        shutdown(s->listen_fd, SHUT_RDWR);
        if (s->accept_armed)
            cancel_ud(s, pack_ud(OP_ACCEPT, 0, 0), NULL, NULL);
    }
    if (s->wake_armed)
        cancel_ud(s, pack_ud(OP_WAKE, 0, 0), NULL, NULL);
    if (s->wakeup.armed)
        cancel_ud(s, pack_ud(OP_WAKEUP_PIPE, 0, 0), NULL, NULL);
    if (s->tick_armed)
        cancel_ud(s, pack_ud(OP_TICK, 0, 0), NULL, NULL);
    s->ev = NULL; /* destroy reports closes through callbacks only */
    s->poll_mode = false;
    end_batch(s);
    for (uint32_t i = 0; i < s->conns_max; i++)
        abort_conn(s, &s->conns[i], false);
    uint64_t deadline = zcn_now_ms() + DESTROY_DRAIN_MS;
    while (s->conns_active > 0 || s->accept_armed || s->wake_armed || s->wakeup.armed ||
           s->tick_armed) {
        s->now_ms = zcn_now_ms();
        if (s->now_ms >= deadline)
            break;
        /* -EEXIST: destroy runs on another thread than the loop did, which
         * may not reap a DEFER_TASKRUN ring; ring teardown cancels instead. */
        int ret = wait_cqe(s, 50);
        if (ret < 0 && ret != -ETIME && ret != -EINTR)
            break;
        reap(s);
        run_service_list(s);
    }
    /* Whatever the kernel did not give back in time still gets on_close. */
    for (uint32_t i = 0; i < s->conns_max; i++) {
        struct conn *c = &s->conns[i];
        if (c->state == CONN_FREE)
            continue;
        c->recv_armed = c->send_inflight = false;
        if (c->state != CONN_ZOMBIE)
            finalize(s, c);
    }
    s->in_loop--;
}

ZCN_Error zcn_server_destroy(ZCN_Server *s)
{
    if (s == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    if (s->in_callback)
        return zcn_fail(ZCN_ERR_BUSY, "the server cannot be destroyed from its own callback");
    if (s->sources_count > 0)
        return zcn_fail(ZCN_ERR_BUSY,
                        "%u UDP sockets still use this server's loop: destroy them first (one "
                        "already destroyed waits for its last completions: run the loop once more)",
                        s->sources_count);
    /* From now on zcn_server_stop does not find the server; one already
     * inside it has finished when this returns. */
    zcn_live_remove(s->live_slot);
    if (s->started)
        drain_for_destroy(s);
    /* io_uring_queue_exit (in zcn_ring_destroy) cancels what is left. */
    free_server(s);
    return ZCN_OK;
}

ZCN_Error zcn_server_set_callbacks(ZCN_Server *s, void *user_data, ZCN_OnAccept on_accept,
                                   ZCN_OnData on_data, ZCN_OnClose on_close)
{
    if (s == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    s->user_data = user_data;
    s->on_accept = on_accept;
    s->on_data = on_data;
    s->on_close = on_close;
    return ZCN_OK;
}

ZCN_Error zcn_server_set_drain_callback(ZCN_Server *s, ZCN_OnDrain on_drain)
{
    if (s == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    s->on_drain = on_drain;
    return ZCN_OK;
}

ZCN_Error zcn_server_set_eof_callback(ZCN_Server *s, ZCN_OnEof on_eof)
{
    if (s == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    s->on_eof = on_eof;
    return ZCN_OK;
}

uint16_t zcn_server_port(const ZCN_Server *s)
{
    return s == NULL ? 0 : s->port;
}

int zcn_server_listen_fd(const ZCN_Server *s)
{
    return s == NULL ? -1 : s->listen_fd;
}

ZCN_Error zcn_server_stats(const ZCN_Server *s, ZCN_ServerStats *out)
{
    if (s == NULL || out == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server or out is NULL");
    *out = s->stats;
    out->connections_active = s->conns_active;
    out->buffers_total = s->buffer_count;
    out->buffers_in_use = s->buffer_count - s->pool_free - s->rx.count;
    out->buffers_held = (uint64_t)s->parked + s->user_bufs;
    out->buffer_budget = s->budget;
    out->buffer_waiters = s->waiters.count;
    return ZCN_OK;
}

const uint8_t *zcn_server_buffer_base(const ZCN_Server *s)
{
    return s == NULL ? NULL : s->slab;
}

size_t zcn_server_buffer_size(const ZCN_Server *s)
{
    return s == NULL ? 0 : s->buffer_size;
}

/* ------------------------------------------------------------------ */
/* attached completion sources (internal.h)                            */
/* ------------------------------------------------------------------ */

ZCN_Error zcn_server_attach(ZCN_Server *s, zcn_source *src, uint32_t *id_out)
{
    if (s == NULL || src == NULL || src->handle_cqe == NULL || id_out == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server or source is NULL");
    for (uint32_t i = 0; i < ZCN_SOURCES_MAX; i++) {
        if (s->sources[i] == NULL) {
            s->sources[i] = src;
            s->sources_count++;
            *id_out = i;
            return ZCN_OK;
        }
    }
    return zcn_fail(ZCN_ERR_EXHAUSTED, "at most %d sockets can share one server's loop",
                    ZCN_SOURCES_MAX);
}

void zcn_server_detach(ZCN_Server *s, uint32_t id)
{
    if (s == NULL || id >= ZCN_SOURCES_MAX || s->sources[id] == NULL)
        return;
    s->sources[id] = NULL;
    s->sources_count--;
}

void *zcn_server_uring(ZCN_Server *s)
{
    return s == NULL ? NULL : s->ring;
}

int zcn_server_in_callback(const ZCN_Server *s)
{
    return s != NULL && s->in_callback > 0;
}

void zcn_server_callback_enter(ZCN_Server *s)
{
    s->in_callback++;
}

void zcn_server_callback_leave(ZCN_Server *s)
{
    s->in_callback--;
}
