/* The buffer policy's actions (docs/BUFFERS.md): refilling the receive
 * ring within the budget, serving the connections that wait for buffers
 * (first come first served), evicting stalled holders when the budget stays
 * used up, send and idle timeouts, and the clock that drives them. The
 * arithmetic they share with the per-message path is in c/buffers.h. */
#include "buffers.h"

/* Tops the ring up from the pool before waiting, and sets the ring's
 * target and the pool's keep for the buffers recycled until the next
 * refill (computed here, once or twice a turn, not per buffer).
 *
 * Only once the ring is short of its target by an eighth: the buffers of
 * the replies in flight come back to the ring by themselves (recycle())
 * when their sends complete. Topped up to the target every turn, the ring
 * was full when those completions were reaped -- they come before the
 * receives that took its buffers -- so every echoed buffer went ring ->
 * pool -> ring: a pool release and a pool take per message (16 % of zcn's
 * user-space instructions at 200 x 1 x 64 B, callgrind). */
void zcn_tcp_ring_refill(ZCN_Loop *s)
{
    uint32_t want = s->ring_target = ring_want(s);
    uint32_t keep = s->pool_keep = pool_keep(s);
    if (s->rx.count + want / RING_REFILL_SLACK_DIV >= want)
        return;
    while (s->rx.count < want && s->pool_free > keep) {
        int64_t bid = pool_take(s);
        if (bid < 0)
            break;
        ring_add(s, (uint32_t)bid);
    }
}

/* The policy's clock: send timeouts and evictions are checked by time,
 * and a loop whose queues are stuck may get no completion at all, so
 * something must wake it. A timeout request in the kernel, re-armed while
 * needed, rather than a timed wait: every wait stays untimed, and the
 * kernel does not set up a timer per sleep (1-connection ping-pong cost
 * 15 % more CPU per message with timed waits). */
bool zcn_tcp_tick_needed(const ZCN_Loop *s)
{
    return !s->destroying && ((s->queues_busy > 0 && s->send_timeout_ms != 0) ||
                              s->waiters.head != NIL);
}

void zcn_tcp_arm_tick(ZCN_Loop *s)
{
    if (s->tick_armed || !zcn_tcp_tick_needed(s))
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

/* Connections waiting for budget, first come first served, while the
 * budget has room; a refused sender hears DRAIN. */
void zcn_tcp_serve_waiters(ZCN_Loop *s)
{
    while (s->waiters.head != NIL && budget_used(s) < s->budget && has_room(s, 2)) {
        struct conn *c = &s->conns[s->waiters.head];
        list_remove(s, &s->waiters, OFF_WAIT, c);
        if (c->state != CONN_OPEN)
            continue;
        if (drain_due(s, c)) {
            drain_consume(s, c);
            zcn_tcp_emit(s, ZCN_EVENT_DRAIN, c);
        }
        if (c->state != CONN_OPEN)
            continue;
        if (c->rx_head != NIL)
            zcn_tcp_flush_pending_rx(s, c);
        else
            zcn_tcp_maybe_arm_recv(s, c);
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
void zcn_tcp_evict_for_waiters(ZCN_Loop *s)
{
    /* Judged only after a reap, and only sends the kernel has: a turn that
     * starts after a long stretch of handler work (Python under load)
     * finds queues "stalled" for 100 ms whose sends were never submitted,
     * or whose completions wait unreaped, and evicted readers that were
     * fine (64 of 1,000 asyncio stream connections on one loop). */
    if (!s->reaped || s->waiters.head == NIL || budget_used(s) < s->budget ||
        s->now_ms < s->evict_check_ms + EVICT_SCAN_MS)
        return;
    s->evict_check_ms = s->now_ms;
    struct conn *top[EVICT_BATCH]; /* the biggest candidates, unordered */
    uint32_t n = 0, smallest = 0;
    for (uint32_t i = 0; i < s->slots_high; i++) {
        struct conn *c = &s->conns[i];
        bool live = c->state == CONN_OPEN || c->state == CONN_CLOSING;
        /* One buffer is the least a sender holds: evicting it frees one
         * buffer for one waiter, a trade, not relief. A connection whose
         * one small send waits for a retransmit (a listen queue that
         * overflowed drops the handshake's last ACK: the client's first
         * data is resent after 200 ms or more) is no hog; a peer that never
         * reads fills more than one buffer, or the send timeout ends it. */
        if (!live || !c->send_inflight || held(c) <= 1 ||
            s->now_ms - c->progress_ms < EVICT_STALL_MS)
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
        zcn_tcp_abort_conn(s, victim, true);
    }
}

/* Connections whose queued data made no progress for send_timeout_ms:
 * checked every send_sweep_period while any has data queued. */
void zcn_tcp_sweep_send_timeouts(ZCN_Loop *s)
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
        zcn_tcp_abort_conn(s, c, true);
    }
}
