/* A TCP connection's life and its receive side: events to the user,
 * arming and cancelling the receive, delivery and deferral of received
 * data, half-close (the peer's EOF, our shutdown), the close state machine
 * (OPEN -> CLOSING -> DEAD -> closed), aborts, and the send completions
 * that move the queue on. */
#include "buffers.h"

/* Marks activity for the idle timeout: a store. The connection's timer
 * reads it when it fires and, if the connection was active meanwhile,
 * re-arms for the new deadline (so activity costs no heap work). */
static inline void touch(ZCN_Loop *s, struct conn *c)
{
    c->last_active_ms = s->now_ms;
}

void zcn_tcp_conn_timer(ZCN_Loop *s, struct conn *c)
{
    if (c->state == CONN_CONNECTING) {
        s->lstats.connect_timeouts++;
        c->connect_error = ETIMEDOUT;
        zcn_tcp_connect_progress(s, c);
        return;
    }
    uint64_t idle = c->h->idle_timeout_ms;
    if (c->state != CONN_OPEN || idle == 0)
        return;
    uint64_t due = c->last_active_ms + idle;
    if (due > s->now_ms) {
        zcn_timer_conn_arm(s, (uint32_t)slot_of(s, c), due);
        return;
    }
    s->stats.idle_timeouts++;
    zcn_tcp_abort_conn(s, c, false);
}

static void arm_recv(ZCN_Loop *s, struct conn *c)
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
    bool multishot = intake_held(s, c) + MSHOT_ROOM <= buf_cap(s) && !under_pressure(s);
    bool bundle = false;
    if (multishot) {
        io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
        /* A bundle: one completion for all the buffers one read fills
         * (a 64 KiB message in 16 KiB buffers: one instead of four). */
        if (bundle_fits(s)) {
            sqe->ioprio |= ZCN_IORING_RECVSEND_BUNDLE;
            bundle = true;
        }
    } else
        io_uring_prep_recv(sqe, c->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = BUFFER_GROUP;
    io_uring_sqe_set_data64(sqe, pack_ud(OP_RECV, c->gen, (uint32_t)slot_of(s, c)));
    c->recv_armed = true;
    c->recv_multishot = multishot;
    c->recv_bundle = bundle;
    s->bundles_armed += bundle;
    c->recv_cancelled = false;
}

/* Arms c's receive if it may take another full buffer; otherwise it waits:
 * for its own sends (they call back here) or for budget (the wait list). */
void zcn_tcp_maybe_arm_recv(ZCN_Loop *s, struct conn *c)
{
    if (c->state != CONN_OPEN || c->eof || c->rx_head != NIL)
        return;
    /* Splice mode (c/splice.c) takes over a direction with nothing in
     * between: no receive while it lasts. */
    if (ZCN_UNLIKELY(c->fwd_auto && (c->fwd_splice || c->splice_auto || c->splicing)) &&
        zcn_splice_want(s, c))
        return;
    if (c->recv_armed)
        return;
    enum gate g = intake_gate(s, c);
    if (g == GATE_PAUSED)
        return; /* zcn_loop_resume_recv arms it */
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

void zcn_tcp_cancel_ud(ZCN_Loop *s, uint64_t ud, bool *done_flag, struct conn *c)
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

static void cancel_recv(ZCN_Loop *s, struct conn *c)
{
    if (!c->recv_armed || c->recv_cancelled)
        return;
    zcn_tcp_cancel_ud(s, pack_ud(OP_RECV, c->gen, (uint32_t)slot_of(s, c)), &c->recv_cancelled, c);
}

void zcn_tcp_cancel_recv(ZCN_Loop *s, struct conn *c)
{
    cancel_recv(s, c);
}

static void cancel_send(ZCN_Loop *s, struct conn *c)
{
    if (!c->send_inflight || c->send_cancelled)
        return;
    zcn_tcp_cancel_ud(s, pack_ud(OP_SEND, c->gen, (uint32_t)slot_of(s, c)), &c->send_cancelled, c);
}

static void drop_pending_rx(ZCN_Loop *s, struct conn *c)
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

/* Drops the queue after its first `keep` chunks (those a send in flight
 * still reads; they go when it completes). */
static void drop_send_queue_after(ZCN_Loop *s, struct conn *c, uint32_t keep)
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
        if ((int32_t)ch->bid != last_bid && chunk_counts(s, ch->bid))
            held_add(s, c, &c->sq_bufs, -1);
        last_bid = (int32_t)ch->bid;
        c->sq_chunks--;
        buf_unref(s, ch->bid);
        chunk_put(s, i);
        i = next;
    }
    send_progress(s, c, was_busy);
}

static void drop_send_queue(ZCN_Loop *s, struct conn *c)
{
    drop_send_queue_after(s, c, 0);
}

void zcn_tcp_free_slot(ZCN_Loop *s, struct conn *c)
{
    if (c->fd >= 0 && (uint32_t)c->fd < s->fd_table_size)
        s->fd_table[c->fd] = NIL;
    if (c->rst) {
        /* An abortive close: the peer gets a reset, not a FIN. */
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    zcn_uring_forget_fd(s->ring, c->fd);
    close(c->fd);
    c->fd = -1;
    c->state = CONN_FREE;
    c->gen = (c->gen + 1) & 0xffffffu;
    c->zombie_next = s->conn_free;
    s->conn_free = slot_of(s, c);
}

/* The kernel has let go of the connection: tell the user, then close. */
void zcn_tcp_finalize(ZCN_Loop *s, struct conn *c)
{
    drop_pending_rx(s, c);
    drop_send_queue(s, c);
    unlink_all(s, c);
    zcn_tcp_forward_unlink(s, c); /* done by every way here; kept for safety */
    zcn_splice_close_pipe(c);
    zcn_timer_conn_disarm(s, (uint32_t)slot_of(s, c));
    s->conns_active--;
    s->stats.connections_closed++;
    if (c->quiet) {
        /* Its owner is gone and heard of the close already (when the
         * listener or connect was torn down): no second report, and in
         * poll mode no CLOSE event with no tag for a caller who has
         * forgotten the fd; nobody is left to see it, so it goes now. */
        c->state = CONN_ZOMBIE;
        zcn_tcp_free_slot(s, c);
    } else if (s->ev != NULL) {
        zcn_tcp_emit(s, ZCN_EVENT_CLOSE, c);
        /* The fd stays open until the caller has seen the event, so the
         * number cannot be reused under it. */
        c->state = CONN_ZOMBIE;
        c->zombie_next = s->zombie_head;
        s->zombie_head = slot_of(s, c);
    } else {
        c->state = CONN_ZOMBIE; /* sends from on_close get ZCN_ERR_CLOSED */
        zcn_tcp_emit(s, ZCN_EVENT_CLOSE, c);
        zcn_tcp_free_slot(s, c);
    }
    zcn_tcp_fd_freed(s);
}

/* Advances the close state machine after anything changed. */
void zcn_tcp_progress_close(ZCN_Loop *s, struct conn *c)
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
    bool polls = zcn_splice_busy(s, c); /* splice mode's, cancelled */
    if (c->recv_armed || c->send_inflight || polls)
        return;
    if (!can_emit(s) || !has_room(s, 1)) {
        service_add(s, c);
        return;
    }
    zcn_tcp_finalize(s, c);
}

/* Ends a connection now: queued and deferred data is dropped. With rst the
 * peer gets a reset (eviction, zcn_server_abort); otherwise both directions
 * are shut down (idle timeout, a failed receive). */
void zcn_tcp_abort_conn(ZCN_Loop *s, struct conn *c, bool rst)
{
    if (c->state != CONN_OPEN && c->state != CONN_CLOSING)
        return;
    c->state = CONN_DEAD;
    c->want_drain = false;
    zcn_tcp_forward_unlink(s, c);
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
    zcn_tcp_progress_close(s, c);
}

/* Starts a graceful close: no more deliveries, queued data still goes. */
void zcn_tcp_begin_close(ZCN_Loop *s, struct conn *c)
{
    if (c->state != CONN_OPEN)
        return;
    c->state = CONN_CLOSING;
    c->want_drain = false;
    zcn_tcp_forward_unlink(s, c);
    cancel_recv(s, c);
    drop_pending_rx(s, c);
    list_remove(s, &s->waiters, OFF_WAIT, c);
    zcn_tcp_progress_close(s, c);
}

/* zcn_server_shutdown's FIN goes once the queue has drained; when the peer
 * has finished too, nothing is left to do: close. */
void zcn_tcp_progress_shutdown(ZCN_Loop *s, struct conn *c)
{
    if (c->state != CONN_OPEN || !c->shut_wr)
        return;
    if (!c->shut_wr_done && c->sq_head == NIL && !c->send_inflight) {
        shutdown(c->fd, SHUT_WR);
        c->shut_wr_done = true;
    }
    if (c->shut_wr_done && c->eof && c->rx_head == NIL &&
        (c->eof_reported || !half_close(c)))
        zcn_tcp_begin_close(s, c);
}

/* The peer has finished sending and all it sent was delivered. In
 * half-close mode the application hears of it and decides; otherwise the
 * connection closes once the answers are queued. In poll mode the caller
 * answers the current batch after the poll returns, so a close now would
 * refuse those sends (ZCN_ERR_CLOSED) and lose the reply to a half-closed
 * request; the close waits for the next poll. */
static void on_peer_eof(ZCN_Loop *s, struct conn *c)
{
    if (c->state != CONN_OPEN)
        return;
    if (ZCN_UNLIKELY(c->fwd_auto))
        zcn_tcp_forward_eof(s, c);
    if (c->state != CONN_OPEN)
        return;
    if (half_close(c)) {
        if (!c->eof_reported) {
            if (!has_room(s, 1)) {
                service_add(s, c);
                return;
            }
            c->eof_reported = true;
            zcn_tcp_emit(s, ZCN_EVENT_EOF, c);
        }
        zcn_tcp_progress_shutdown(s, c);
        return;
    }
    if (lent_now(s, c)) {
        service_add(s, c);
        return;
    }
    zcn_tcp_begin_close(s, c);
}

void zcn_tcp_peer_eof(ZCN_Loop *s, struct conn *c)
{
    on_peer_eof(s, c);
}

/* Delivers deferred data while c's limits and the budget allow and there is
 * room, then re-arms its receive. */
void zcn_tcp_flush_pending_rx(ZCN_Loop *s, struct conn *c)
{
    while (c->rx_head != NIL && c->state == CONN_OPEN) {
        uint32_t bid = (uint32_t)c->rx_head;
        enum gate g = delivery_gate(s, c, s->meta[bid].len, 0);
        if (g == GATE_BUDGET)
            wait_for_budget(s, c);
        else if (g == GATE_BATCH || (g == GATE_OWN && !room_calls_back(s, c)))
            service_add(s, c); /* nothing will call back: retry */
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
        zcn_tcp_emit_data(s, c, bid, s->meta[bid].len);
    }
    if (c->state != CONN_OPEN || c->rx_head != NIL || c->rx_paused)
        return;
    list_remove(s, &s->waiters, OFF_WAIT, c);
    if (c->eof) {
        on_peer_eof(s, c);
        return;
    }
    zcn_tcp_maybe_arm_recv(s, c);
}

static void defer_rx(ZCN_Loop *s, struct conn *c, uint32_t bid, uint32_t len)
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

void zcn_tcp_defer_rx(ZCN_Loop *s, struct conn *c, uint32_t bid, uint32_t len)
{
    defer_rx(s, c, bid, len);
}

/* The hard limit: a connection holding more than this (its cap overshot
 * by completions already in flight, many times over) is aborted. */
static bool over_hard_limit(ZCN_Loop *s, struct conn *c)
{
    if (held(c) <= s->hard_max_bufs)
        return false;
    s->stats.hard_limit_aborts++;
    zcn_tcp_abort_conn(s, c, true);
    return true;
}

/* One buffer of a receive completion, len bytes of c's stream: delivered
 * now if c's gates allow, otherwise kept in order behind what waits
 * already. Returns false if c was aborted (over its hard limit). */
static bool rx_buffer(ZCN_Loop *s, struct conn *c, uint32_t bid, uint32_t len)
{
    if (c->state != CONN_OPEN) {
        buf_unref(s, bid); /* closing: data after close is dropped */
        return true;
    }
    /* Data already deferred goes first: this waits behind it (and the
     * intake gate says whether c may take more meanwhile). */
    enum gate g = c->rx_head != NIL ? GATE_BATCH : delivery_gate(s, c, len, 1);
    if (g == GATE_OPEN && has_room(s, 2)) {
        zcn_tcp_emit_data(s, c, bid, len);
        return true;
    }
    /* Deferred data is ours to keep: stop taking more until it has been
     * delivered, so what waits stays in the kernel's socket buffers, not
     * in the pool -- unless only this poll batch is full of c and it may
     * take more (a stream: its receive goes on, bounded by the intake
     * gate, instead of a cancel and a new request every batch). */
    defer_rx(s, c, bid, len);
    if (g != GATE_BATCH || intake_gate(s, c) != GATE_OPEN)
        cancel_recv(s, c);
    if (g == GATE_BUDGET)
        wait_for_budget(s, c);
    else if (g != GATE_PAUSED && !linked(&c->wait))
        service_add(s, c); /* re-checked each turn */
    return !over_hard_limit(s, c);
}

/* Takes the buffers a receive completion carries out of the ring and
 * hands each to rx_buffer in stream order: one, or a bundle's several
 * (the bid in the CQE and those after it in ring order, each full but
 * the last). Returns false if c was aborted on the way; the rest of the
 * bundle is then returned to the ring or the pool. */
static bool rx_buffers(ZCN_Loop *s, struct conn *c, struct io_uring_cqe *cqe, int res)
{
    int64_t bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
    uint32_t n = rx_bufs_in(s, res);
    uint32_t left = res > 0 ? (uint32_t)res : 0;
    bool alive = true;
    for (uint32_t k = 0; k < n; k++) {
        if (ZCN_UNLIKELY(bid < 0)) {
            /* The mirror lost the ring's order: the rest of the bundle
             * cannot be named. Cannot happen (see rx_bundle_next); the
             * connection's stream would have a hole, so it goes. */
            s->rx.count -= n - k;
            if (c->close_errno == 0)
                c->close_errno = EIO;
            zcn_tcp_abort_conn(s, c, true);
            return false;
        }
        /* The next one is named before this one is handed over: once
         * recycled, this buffer's ring position is a new one. */
        int64_t next = k + 1 < n ? rx_bundle_next(s, (uint32_t)bid) : -1;
        rx_take(s, (uint32_t)bid);
        uint32_t len = left < s->buffer_size ? left : (uint32_t)s->buffer_size;
        left -= len;
        if (alive && res > 0)
            alive = rx_buffer(s, c, (uint32_t)bid, len);
        else
            buf_unref(s, (uint32_t)bid);
        bid = next;
    }
    return alive;
}

void zcn_tcp_drop_rx_cqe(ZCN_Loop *s, struct io_uring_cqe *cqe)
{
    if (!(cqe->flags & IORING_CQE_F_BUFFER))
        return;
    int64_t bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
    uint32_t n = rx_bufs_in(s, cqe->res);
    for (uint32_t k = 0; k < n && bid >= 0; k++) {
        int64_t next = k + 1 < n ? rx_bundle_next(s, (uint32_t)bid) : -1;
        rx_take(s, (uint32_t)bid);
        buf_unref(s, (uint32_t)bid);
        bid = next;
    }
}

void zcn_tcp_on_recv(ZCN_Loop *s, struct conn *c, struct io_uring_cqe *cqe)
{
    bool more = (cqe->flags & IORING_CQE_F_MORE) != 0;
    int res = cqe->res;
    if (!more) {
        c->recv_armed = false;
        s->bundles_armed -= c->recv_bundle;
        c->recv_bundle = false;
    }

    if (cqe->flags & IORING_CQE_F_BUFFER) {
        if (res > 0 && c->state == CONN_OPEN) {
            s->stats.recv_ops++;
            s->stats.bytes_received += (uint64_t)res;
            c->bytes_in += (uint64_t)res;
            touch(s, c);
        }
        if (!rx_buffers(s, c, cqe, res))
            return;
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
            if (c->close_errno == 0 && c->state != CONN_DEAD)
                c->close_errno = -res;
            zcn_tcp_abort_conn(s, c, false);
            break;
        }
    }

    if (c->state == CONN_OPEN) {
        if (c->eof && c->rx_head == NIL && !c->rx_paused)
            on_peer_eof(s, c);
        else if (!c->recv_armed && res != -ENOBUFS)
            zcn_tcp_maybe_arm_recv(s, c);
    } else {
        zcn_tcp_progress_close(s, c);
    }
}

void zcn_tcp_on_send(ZCN_Loop *s, struct conn *c, int res)
{
    c->send_inflight = false;
    c->send_cancelled = false;
    if (res < 0 && res != -EINTR && res != -EAGAIN) {
        /* The errno that ended it, not one the end caused: an abort of
         * the loop's own (the idle timeout) made it DEAD first, and its
         * shutdown fails the send in flight with EPIPE. */
        if (c->close_errno == 0 && res != -ECANCELED && c->state != CONN_DEAD)
            c->close_errno = -res;
        drop_send_queue(s, c);
        if (c->state == CONN_OPEN || c->state == CONN_CLOSING)
            zcn_tcp_abort_conn(s, c, false);
        zcn_tcp_progress_close(s, c);
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
            if ((c->sq_head == NIL || s->chunks[c->sq_head].bid != ch->bid) &&
                chunk_counts(s, ch->bid))
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
        zcn_tcp_progress_close(s, c);
        return;
    }
    want_send(s, c);
    if (c->state == CONN_OPEN) {
        if (drain_due(s, c) && has_room(s, 1)) {
            drain_consume(s, c);
            zcn_tcp_emit(s, ZCN_EVENT_DRAIN, c);
        } else if (ZCN_UNLIKELY(c->want_drain) && c->sq_head == NIL) {
            /* The last completion, and the DRAIN a refused send was
             * promised could not come (the budget is used up or the SQ
             * full): the waiters hand it out once there is room. */
            wait_for_budget(s, c);
        }
        if (c->rx_head != NIL)
            zcn_tcp_flush_pending_rx(s, c);
        else
            zcn_tcp_maybe_arm_recv(s, c);
        /* The queue another connection forwards into moved: its deferred
         * data flows and its receive re-arms. */
        if (ZCN_UNLIKELY(c->fwd_from != NIL))
            zcn_tcp_forward_wake(s, c);
        zcn_tcp_progress_shutdown(s, c);
    }
    zcn_tcp_progress_close(s, c);
}

struct conn *zcn_tcp_conn_open(ZCN_Loop *s, int fd, struct zcn_handler *h)
{
    if ((uint32_t)fd >= s->fd_table_size || s->conn_free == NIL) {
        s->stats.connections_rejected++;
        close(fd);
        return NULL;
    }
    if (h->nodelay) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    if (ZCN_UNLIKELY(s->busy_poll_ns != 0)) {
        /* Busy-polls the device queue where it has NAPI (not loopback).
         * Refused quietly: EPERM past net.core.busy_read without
         * CAP_NET_ADMIN, ENOPROTOOPT without CONFIG_NET_RX_BUSY_POLL. */
        int us = (int)(s->busy_poll_ns / 1000u);
        (void)setsockopt(fd, SOL_SOCKET, SO_BUSY_POLL, &us, sizeof us);
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
    c->h = h;
    c->state = CONN_OPEN;
    c->sq_head = c->sq_tail = NIL;
    c->rx_head = c->rx_tail = NIL;
    c->service.prev = c->service.next = NOT_LINKED;
    c->wait = c->service;
    c->zombie_next = NIL;
    c->fwd_to = c->fwd_from = NIL;
    c->pipe_rd = c->pipe_wr = -1;
    s->fd_table[fd] = slot;
    s->conns_active++;
    touch(s, c);
    return c;
}

void zcn_tcp_conn_start(ZCN_Loop *s, struct conn *c)
{
    touch(s, c);
    if (c->h->idle_timeout_ms != 0)
        zcn_timer_conn_arm(s, (uint32_t)slot_of(s, c), s->now_ms + c->h->idle_timeout_ms);
    zcn_tcp_maybe_arm_recv(s, c);
}
