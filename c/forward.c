/* Forwarding (zcn_loop_forward): one connection's data goes to another.
 * The link is a slot and a generation at each end (c->fwd_to, t->fwd_from),
 * so a reused slot is never followed, and it ends when either side leaves
 * service. The gate that makes it safe -- c's deliveries and receive wait
 * for room in t's queue, not c's own -- is inline in c/buffers.h; what
 * joins t's queue in AUTO mode is c/tcp_send.c's zcn_tcp_forward_buffer.
 * This file is the link's life: set, wake the forwarder when the target
 * drains, move a delivered buffer (AUTO), pass EOF on, end. */
#include "buffers.h"

/* A connection zcn_loop_forward may link: open, or still connecting. */
static struct conn *forward_end(ZCN_Loop *s, int fd, const char *what, ZCN_Error *err)
{
    struct conn *c = lookup(s, fd);
    if (c == NULL || (c->state != CONN_OPEN && c->state != CONN_CONNECTING)) {
        *err = zcn_fail(ZCN_ERR_CLOSED, "%s %d is not an open connection of this loop", what, fd);
        return NULL;
    }
    return c;
}

ZCN_Error zcn_loop_forward(ZCN_Loop *s, int fd, int to_fd, uint32_t flags)
{
    if (s == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "loop is NULL");
    const uint32_t known = ZCN_FORWARD_AUTO | ZCN_FORWARD_SPLICE;
    if (flags & ~known)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "unknown flags 0x%x", flags & ~known);
    if ((flags & ZCN_FORWARD_SPLICE) && !(flags & ZCN_FORWARD_AUTO) && to_fd >= 0)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                        "ZCN_FORWARD_SPLICE needs ZCN_FORWARD_AUTO (the loop moves the data)");
    if (to_fd == fd)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "fd %d cannot forward to itself", fd);
    if (to_fd < -1)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "to_fd %d: give an fd, or -1 to end forwarding",
                        to_fd);
    ZCN_Error err = owner_check(s, "zcn_loop_forward");
    if (err != ZCN_OK)
        return err;
    struct conn *c = forward_end(s, fd, "fd", &err);
    if (c == NULL)
        return err;
    struct conn *t = NULL;
    if (to_fd >= 0) {
        t = forward_end(s, to_fd, "to_fd", &err);
        if (t == NULL)
            return err;
        struct conn *other = fwd_source(s, t);
        if (other != NULL && other != c)
            return zcn_fail(ZCN_ERR_BUSY, "fd %d already forwards to to_fd %d (one forwarder "
                            "per target: end that one with to_fd -1 first)", other->fd, to_fd);
    }
    struct conn *old = fwd_target(s, c);
    bool auto_ = t != NULL && (flags & ZCN_FORWARD_AUTO) != 0;
    bool splice = auto_ && (flags & ZCN_FORWARD_SPLICE) != 0;
    /* A direction in splice mode stays in it only for the same link and
     * flags; otherwise the pipe's bytes become c's deferred data. */
    if (c->splicing && (old != t || !auto_ || (splice != c->fwd_splice && !c->splice_auto)))
        zcn_splice_leave(s, c);
    if (old != NULL && old != t)
        old->fwd_from = NIL;
    c->fwd_to = NIL;
    c->fwd_auto = false;
    c->fwd_splice = false;
    if (!c->splicing) {
        c->splice_auto = false;
        c->splice_run = 0;
    }
    if (t != NULL) {
        c->fwd_to = slot_of(s, t);
        c->fwd_to_gen = t->gen;
        c->fwd_auto = auto_;
        c->fwd_splice = splice;
        t->fwd_from = slot_of(s, c);
        t->fwd_from_gen = c->gen;
    }
    /* The gate changed: deferred data and a paused receive are looked at
     * again at the next turn (never from inside this call: the user's
     * callbacks may run then). */
    if (c->state == CONN_OPEN)
        service_add(s, c);
    return ZCN_OK;
}

/* ------------------------------------------------------------------ */
/* forwarding (zcn_loop_forward)                                       */
/* ------------------------------------------------------------------ */

/* Ends c's forwarding to its target (both ends of the link). c is served
 * from the next turn: its deferred data, gated on its own room again, goes
 * to its handler, and its receive re-arms if it was paused for the target. */
static void forward_stop(ZCN_Loop *s, struct conn *c)
{
    zcn_splice_leave(s, c);
    c->fwd_splice = c->splice_auto = false;
    c->splice_run = 0;
    struct conn *t = fwd_target(s, c);
    if (t != NULL)
        t->fwd_from = NIL;
    c->fwd_to = NIL;
    c->fwd_auto = false;
    if (c->state == CONN_OPEN)
        service_add(s, c);
}

void zcn_tcp_forward_stop(ZCN_Loop *s, struct conn *c)
{
    forward_stop(s, c);
}

void zcn_tcp_forward_unlink(ZCN_Loop *s, struct conn *c)
{
    if (c->fwd_to != NIL)
        forward_stop(s, c);
    if (c->fwd_from != NIL) {
        struct conn *f = fwd_source(s, c);
        c->fwd_from = NIL;
        if (f != NULL)
            forward_stop(s, f);
    }
}

void zcn_tcp_forward_wake(ZCN_Loop *s, struct conn *t)
{
    struct conn *f = fwd_source(s, t);
    if (f == NULL || f->state != CONN_OPEN)
        return;
    if (f->rx_head != NIL)
        zcn_tcp_flush_pending_rx(s, f);
    else
        zcn_tcp_maybe_arm_recv(s, f);
}

/* AUTO: the delivery gate made room for this buffer in the target's queue;
 * it moves there (the delivery's reference is dropped once the queue holds
 * its own). A target that can no longer send (shut down by the user) ends
 * the forwarding: this and later data go to c's handler, as after any end
 * of forwarding. Anything else (the chunk table used up) would lose data
 * in the middle of a stream: both are aborted. */
void zcn_tcp_forward_data(ZCN_Loop *s, struct conn *c, uint32_t bid, uint32_t len)
{
    struct conn *t = fwd_target(s, c);
    ZCN_Error err = t != NULL ? zcn_tcp_forward_buffer(s, t, bid, len) : ZCN_ERR_CLOSED;
    if (ZCN_LIKELY(err == ZCN_OK)) {
        buf_unref(s, bid);
        /* The per-size switch: SPLICE_AUTO_RUN full buffers in a row are a
         * stream, which splice mode moves for less CPU from 64 KiB on. */
        if (!c->fwd_splice && !c->splice_auto) {
            /* one short buffer (a write's tail) between full ones is
             * still the stream; two in a row are messages */
            if (len >= s->buffer_size) {
                c->splice_run++;
                c->splice_short = false;
            } else if (c->splice_short) {
                c->splice_run = 0;
            } else {
                c->splice_short = true;
            }
            if (c->splice_run >= SPLICE_AUTO_RUN) {
                c->splice_auto = true;
                c->splice_run = 0;
            }
        }
        return;
    }
    if (err == ZCN_ERR_CLOSED) {
        forward_stop(s, c);
        zcn_tcp_emit_data(s, c, bid, len);
        return;
    }
    buf_unref(s, bid);
    zcn_tcp_abort_conn(s, t, true);
    zcn_tcp_abort_conn(s, c, true);
}

/* AUTO: c's peer finished sending and all it sent is in the target's
 * queue: the target's FIN follows once that queue drains (a target still
 * connecting sends it once connected and drained). */
void zcn_tcp_forward_eof(ZCN_Loop *s, struct conn *c)
{
    struct conn *t = fwd_target(s, c);
    if (t == NULL || t->shut_wr || (t->state != CONN_OPEN && t->state != CONN_CONNECTING))
        return;
    t->shut_wr = true;
    t->want_drain = false;
    zcn_tcp_progress_shutdown(s, t);
}

