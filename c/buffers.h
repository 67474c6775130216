/* The buffer policy's arithmetic, inline on the per-message path: what a
 * connection holds and may hold (its cap, its fair share under pressure),
 * the gates that decide whether data is delivered and whether a receive
 * may take another buffer, the slack answers to delivered data get, and
 * where a freed buffer goes (the receive ring or the pool). The policy
 * itself is described in docs/BUFFERS.md; its actions (waiters, eviction,
 * timeouts) are in c/buffers.c. Not installed. */
#ifndef ZCN_BUFFERS_H
#define ZCN_BUFFERS_H

#include "loop.h"

/* ------------------------------------------------------------------ */
/* what is held, and the caps                                         */
/* ------------------------------------------------------------------ */

static inline uint32_t held(const struct conn *c)
{
    return c->sq_bufs + c->rx_bufs;
}

/* Buffers counted against the budget; the current poll batch's lent data
 * counts too, since the caller may still queue it. Pack buffers count
 * once each, however many connections' chunks they hold: a chunk in one
 * is in no connection's sq_bufs. */
static inline uint32_t budget_used(const ZCN_Loop *s)
{
    return s->parked + s->pack_bufs + s->user_bufs + (s->ev != NULL ? s->lent_count : 0);
}

static inline bool under_pressure(const ZCN_Loop *s)
{
    return 2 * (uint64_t)budget_used(s) >= s->budget;
}

/* The most one connection may hold under pressure: the budget split among
 * the connections holding or waiting for buffers, with one share left over
 * so a newcomer finds room without an eviction. */
static inline uint32_t fair_share(const ZCN_Loop *s)
{
    uint32_t share = s->budget / (s->holders + s->waiters.count + 1);
    return share < 1 ? 1 : share;
}

static inline uint32_t buf_cap(const ZCN_Loop *s)
{
    uint32_t cap = s->send_queue_max_bufs;
    if (under_pressure(s)) {
        uint32_t share = fair_share(s);
        if (share < cap)
            cap = share;
    }
    return cap;
}

static inline void held_add(ZCN_Loop *s, struct conn *c, uint32_t *field, int32_t delta)
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

static inline bool lent_now(const ZCN_Loop *s, const struct conn *c)
{
    return s->ev != NULL && c->lent_batch == s->batch && c->lent_bufs > 0;
}

/* ------------------------------------------------------------------ */
/* forwarding (zcn_loop_forward): whose room gates a connection        */
/* ------------------------------------------------------------------ */

/* The connection c forwards to, if the link is current (the generation
 * guards against a reused slot; unlink clears both ends, so a stale link
 * would be a bug, and is then treated as no link). */
static inline struct conn *fwd_target(const ZCN_Loop *s, const struct conn *c)
{
    if (c->fwd_to == NIL)
        return NULL;
    struct conn *t = &s->conns[c->fwd_to];
    return t->gen == c->fwd_to_gen && t->fwd_from == slot_of(s, c) ? t : NULL;
}

static inline struct conn *fwd_source(const ZCN_Loop *s, const struct conn *c)
{
    if (c->fwd_from == NIL)
        return NULL;
    struct conn *f = &s->conns[c->fwd_from];
    return f->gen == c->fwd_from_gen && f->fwd_to == slot_of(s, c) ? f : NULL;
}

/* Whose send queue c's deliveries would fill: c's own, or its forward
 * target's. NULL while the target is still connecting: it has no room
 * yet, and its connect calls back (zcn_tcp_forward_wake). */
static inline const struct conn *fwd_room(const ZCN_Loop *s, const struct conn *c)
{
    const struct conn *t = fwd_target(s, c);
    if (t == NULL)
        return c;
    return t->state == CONN_CONNECTING ? NULL : t;
}

/* The pool buffers counted against c's intake: what its room's queue holds
 * plus c's own deferred receives (held(c) without forwarding). */
static inline uint32_t intake_held(const ZCN_Loop *s, const struct conn *c)
{
    if (ZCN_LIKELY(c->fwd_to == NIL))
        return held(c);
    const struct conn *t = fwd_room(s, c);
    return (t != NULL ? t->sq_bufs : 0) + c->rx_bufs;
}

static inline uint32_t lent_slack(const ZCN_Loop *s, const struct conn *c)
{
    return c->lent_batch == s->batch ? c->lent_bufs : 0;
}

/* own_slack for a connection another forwards to: the deliveries whose
 * room was checked in c's queue are the forwarder's, and c's own unless c
 * forwards elsewhere itself. */
static inline uint32_t forward_slack(const ZCN_Loop *s, const struct conn *c)
{
    const struct conn *f = fwd_source(s, c);
    bool own = c->fwd_to == NIL;
    if (s->poll_mode)
        return (own ? lent_slack(s, c) : 0) + (f != NULL ? lent_slack(s, f) : 0);
    return (s->delivering == c && own) || (f != NULL && s->delivering == f) ? 1 : 0;
}

enum gate {
    GATE_OPEN = 0,
    GATE_OWN,                   /* over its own limits: wait for its sends */
    GATE_BUDGET,                /* the server-wide budget is used up: wait */
    GATE_BATCH,                 /* this poll batch has its share of c: next one */
    GATE_PAUSED,                /* the user paused c: nothing until it resumes */
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
 * the others wait behind their handler's work. A connection that
 * forwards (zcn_loop_forward) is asked the same of its target's queue,
 * where its data goes: one predictable branch for those that do not. */
static inline enum gate delivery_gate(const ZCN_Loop *s, const struct conn *c, uint64_t len,
                               uint32_t extra)
{
    if (ZCN_UNLIKELY(c->rx_paused))
        return GATE_PAUSED;
    const struct conn *t = c;
    if (ZCN_UNLIKELY(c->fwd_to != NIL)) {
        t = fwd_room(s, c);
        if (t == NULL)
            return GATE_OWN;
    }
    uint64_t bytes = t->queued_bytes + len;
    uint32_t bufs = t->sq_bufs + 1;
    if (lent_now(s, c)) {
        if (c->lent_bufs >= BATCH_PER_CONN)
            return GATE_BATCH;
        bytes += c->lent_bytes;
        bufs += c->lent_bufs;
    }
    if (bytes > s->send_queue_max_bytes || bufs > buf_cap(s) ||
        t->sq_chunks >= s->conn_chunks_max)
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
 * armed). With forwarding, the target's queue stands for c's own. */
static inline enum gate intake_gate(const ZCN_Loop *s, const struct conn *c)
{
    if (ZCN_UNLIKELY(c->rx_paused))
        return GATE_PAUSED;
    const struct conn *t = c;
    if (ZCN_UNLIKELY(c->fwd_to != NIL)) {
        t = fwd_room(s, c);
        if (t == NULL)
            return GATE_OWN;
    }
    uint64_t bytes = t->queued_bytes + c->rx_bytes + s->buffer_size;
    uint32_t bufs = t->sq_bufs + c->rx_bufs + 1;
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

/* A GATE_OWN refusal of c ends by itself when a send of the queue that
 * gates it is in flight or about to be submitted, or that queue's connect
 * is (they call back: zcn_tcp_on_send, zcn_tcp_forward_wake). Otherwise c
 * must be retried from the service list. */
static inline bool room_calls_back(const ZCN_Loop *s, const struct conn *c)
{
    const struct conn *t = c;
    if (ZCN_UNLIKELY(c->fwd_to != NIL)) {
        t = fwd_room(s, c);
        if (t == NULL)
            return true;
    }
    return t->send_inflight || t->in_tx;
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
static inline uint32_t own_slack(const ZCN_Loop *s, const struct conn *c)
{
    if (ZCN_UNLIKELY(c->fwd_from != NIL))
        return forward_slack(s, c);
    if (s->poll_mode)
        return lent_slack(s, c);
    return s->delivering == c ? 1 : 0;
}

/* c was handed data by the on_data call running now, or by the last poll
 * batch (whose answers come after zcn_server_poll returned) -- or, when
 * another connection forwards to c, that one was: the delivery gate made
 * room for the data in c's queue either way. */
static inline bool delivered_to(const ZCN_Loop *s, const struct conn *c)
{
    return own_slack(s, c) > 0;
}

/* Pool buffers the ring may not take: room left in the budget for copied
 * sends, up to a headroom. */
static inline uint32_t pool_keep(const ZCN_Loop *s)
{
    uint32_t used = budget_used(s);
    uint32_t room = used < s->budget ? s->budget - used : 0;
    return room < s->copy_headroom ? room : s->copy_headroom;
}

static inline void wait_for_budget(ZCN_Loop *s, struct conn *c)
{
    list_push(s, &s->waiters, OFF_WAIT, c);
}

/* ------------------------------------------------------------------ */
/* buffers: the ring, the pool, references                            */
/* ------------------------------------------------------------------ */

static inline void ring_add(ZCN_Loop *s, uint32_t bid)
{
    s->meta[bid].ring_pos = zcn_bufring_add(&s->rx, bid);
    s->meta[bid].state = ZCN_BUF_RING;
    s->meta[bid].refs = 0;
}

/* How many ring buffers a receive completion of res bytes carries. One,
 * or with a bundle (IORING_RECVSEND_BUNDLE) as many as res fills: the
 * kernel fills the buffers it took in ring order, each whole but the
 * last (every ring entry is buffer_size long; only a lone first one may
 * be cut to what the socket held), and returns none it did not fill. */
static inline uint32_t rx_bufs_in(const ZCN_Loop *s, int res)
{
    if (res <= (int64_t)s->buffer_size)
        return 1;
    return (uint32_t)(((uint64_t)res + s->buffer_size - 1) / s->buffer_size);
}

/* Takes buffer bid out of the ring for a completion that carries it: it
 * holds received data now, with the delivery's reference. */
static inline void rx_take(ZCN_Loop *s, uint32_t bid)
{
    s->rx.count--;
    s->meta[bid].state = ZCN_BUF_RX;
    s->meta[bid].refs = 1;
}

/* The buffer after `bid` in ring order, which a bundle carries next: -1
 * if the mirror does not name a ring buffer at that position (which
 * would mean the kernel took buffers out of order; the caller then drops
 * the connection rather than hand out a buffer the kernel did not fill). */
static inline int64_t rx_bundle_next(const ZCN_Loop *s, uint32_t bid)
{
    uint16_t pos = (uint16_t)(s->meta[bid].ring_pos + 1);
    uint32_t next = s->rx.order != NULL ? s->rx.order[pos] : UINT32_MAX;
    if (ZCN_UNLIKELY(next >= s->buffer_count || s->meta[next].state != ZCN_BUF_RING ||
                     s->meta[next].ring_pos != pos))
        return -1;
    return next;
}

/* How many buffers the receive ring should hold now: enough for a burst
 * from every open connection, not the whole pool. The ring is FIFO, so a
 * returned buffer is reused only after all the others in it; keeping it
 * small keeps the buffers the kernel writes into warm in cache and TLB
 * (the pool behind it is LIFO). And no more than the reserve plus the part
 * of the budget's room that copies do not need: what the ring holds the
 * kernel owns, and a copied send (a packed answer) that finds the pool
 * empty would fail for nothing. */
static inline uint32_t ring_want(const ZCN_Loop *s)
{
    uint64_t want = RING_BASE + 2 * (uint64_t)s->conns_active + s->br_extra;
    uint32_t used = budget_used(s);
    uint32_t room = used < s->budget ? s->budget - used : 0;
    /* Half the reserve, at least: the other half is for the packed
     * answers to data just delivered, which may go over the budget. */
    uint64_t limit = (uint64_t)(s->reserve > 1 ? s->reserve / 2 : 1) +
                     (room > s->copy_headroom ? room - s->copy_headroom : 0);
    /* And never more than the reserve: the budget's room must stay in
     * the pool, where copies can take it. The kernel gives nothing back
     * from the ring, so a ring grown into the room while the server was
     * idle stayed grown when queues filled it, and copies found the pool
     * empty with the budget half free (no eviction: the budget was not
     * used up): a new client of an asyncio server on a 64 x 4 KiB pool,
     * behind 8 peers that never read, got no answer in 10 s. */
    if (limit > s->reserve)
        limit = s->reserve;
    if (want > limit)
        want = limit;
    /* One bundle can take every buffer the ring holds: while any receive
     * takes bundles, the ring stays small enough that a connection's cap
     * plus one kernel pass of bundles stays under its hard limit. */
    if (s->bundles_armed > 0 && want > s->bundle_ring_max)
        want = s->bundle_ring_max;
    return want < s->br_target ? (uint32_t)want : s->br_target;
}

/* Whether c's multishot receive may take bundles now: the ring (what one
 * kernel pass of bundles can hand c at most) fits in what c's hard limit
 * leaves over its cap. Many connections want a bigger ring than that:
 * they get one buffer per completion, as before bundles. */
static inline bool bundle_fits(const ZCN_Loop *s)
{
    uint32_t ring = s->rx.count > s->ring_target ? s->rx.count : s->ring_target;
    return s->rx_bundle && ring <= s->bundle_ring_max;
}

static inline void pool_put(ZCN_Loop *s, uint32_t bid)
{
    s->meta[bid].state = ZCN_BUF_POOL;
    s->meta[bid].refs = 0;
    s->pool_free++;
    zcn_pool_release(s->pool, buf_ptr(s, bid));
}

/* Takes a pool buffer for a copied send or for the user; -1 if none. */
static inline int64_t pool_take(ZCN_Loop *s)
{
    int64_t bid = zcn_buf_take(s->pool, s->slab, s->buffer_size);
    if (bid >= 0)
        s->pool_free--;
    return bid;
}

/* A buffer nobody refers to any more: refill the buffer ring first, the
 * pool after. What the ring holds is rx.count less the buffers of the
 * receive completions the reap has still to handle (rx_unreaped): the
 * send completions reaped before them would otherwise find the ring
 * "full" and send their buffers to the pool, for the refill to take back. */
static inline void recycle(ZCN_Loop *s, uint32_t bid)
{
    if (s->rx.count < s->ring_target + s->rx_unreaped && s->pool_free >= s->pool_keep) {
        ring_add(s, bid);
        return;
    }
    pool_put(s, bid);
}

static inline void buf_ref(ZCN_Loop *s, uint32_t bid)
{
    s->meta[bid].refs++;
}

/* Drops a reference to buffer bid, recycling it when it was the last.
 * The pack buffer goes back too once only the loop's own reference is
 * left (every copy in it sent): a loop between bursts holds none. */
static inline void buf_unref(ZCN_Loop *s, uint32_t bid)
{
    struct zcn_buf_meta *m = &s->meta[bid];
    m->refs--;
    if (ZCN_UNLIKELY(m->state == ZCN_BUF_PACK)) {
        if (m->refs == 1 && (int64_t)bid == s->pack_bid) {
            s->pack_bid = -1;
            m->refs = 0;
        }
        if (m->refs > 0)
            return;
        s->pack_bufs--;
        recycle(s, bid);
        return;
    }
    if (m->refs == 0)
        recycle(s, bid);
}

/* Whether a queued chunk on buffer bid counts in its connection's
 * sq_bufs: not in a pack buffer, which the budget counts once. Read
 * before the chunk's buf_unref, which may recycle the buffer. */
static inline bool chunk_counts(const ZCN_Loop *s, uint32_t bid)
{
    return s->meta[bid].state != ZCN_BUF_PACK;
}

/* The loop stops filling its pack buffer: it lives on while chunks refer
 * to it. */
static inline void zcn_tcp_pack_retire(ZCN_Loop *s)
{
    if (s->pack_bid < 0)
        return;
    uint32_t bid = (uint32_t)s->pack_bid;
    s->pack_bid = -1;
    buf_unref(s, bid);
}

/* c's queue drained below half its limits after a refused send. */
static inline bool drain_refused_due(const ZCN_Loop *s, const struct conn *c)
{
    return c->want_drain && c->queued_bytes <= s->send_queue_max_bytes / 2 &&
           c->sq_bufs <= buf_cap(s) / 2 && budget_used(s) < s->budget;
}

/* c's queue holds at most the mark zcn_loop_notify_drain set. */
static inline bool drain_mark_due(const struct conn *c)
{
    return ZCN_UNLIKELY(c->drain_notify) && c->queued_bytes <= c->drain_below;
}

/* A DRAIN is due for either reason. */
static inline bool drain_due(const ZCN_Loop *s, const struct conn *c)
{
    return drain_mark_due(c) || drain_refused_due(s, c);
}

/* The DRAIN about to be emitted answers the requests whose condition
 * holds; the other one waits for its own (the two are independent: the
 * DRAIN after a refused send comes at half the limits, which may be far
 * above a notify_drain mark). */
static inline void drain_consume(const ZCN_Loop *s, struct conn *c)
{
    if (drain_mark_due(c))
        c->drain_notify = false;
    if (drain_refused_due(s, c))
        c->want_drain = false;
}

static inline uint64_t send_sweep_period(const ZCN_Loop *s)
{
    uint64_t quarter = s->send_timeout_ms / 4;
    return quarter < SEND_SWEEP_MS ? (quarter > 0 ? quarter : 1) : SEND_SWEEP_MS;
}

#endif
