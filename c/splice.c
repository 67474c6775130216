/* Splice mode of AUTO forwarding (ZCN_FORWARD_SPLICE, and the per-size
 * switch): c's data goes to its target t through a pipe, socket -> pipe ->
 * socket with splice(2) from the loop thread, instead of pool buffers
 * (multishot recv, sendmsg). io_uring only tells readiness: a one-shot
 * POLL_ADD of c's fd for POLLIN (OP_SPLICE_IN) and, when t's socket buffer
 * is full, of t's fd for POLLOUT (OP_SPLICE_OUT, under c's gen and slot).
 * The pipe bounds what the direction holds: c is polled again only once
 * the pipe has drained into t, so a t that does not read stops c's reads
 * (its data waits in the kernel's socket buffers) and holds no pool buffer.
 *
 * A direction switches once nothing is in between: c has nothing deferred,
 * t's queue is empty with no send in flight (and c's receive has ended:
 * it is cancelled first, its last data goes the usual way, then the check
 * is made again). It leaves when the link ends or changes (what the pipe
 * holds becomes c's deferred data, as for any end of forwarding), when c
 * closes, or (the per-size switch only) after SPLICE_AUTO_RUN short fills
 * in a row. A read of 0 is the peer's EOF: once the pipe has drained, the
 * usual EOF path (t's FIN after its queue, on_eof). Errors abort both.
 *
 * The sockets are made O_NONBLOCK when a direction enters splice mode (a
 * splice(2) on a socket waits unless the file is non-blocking); io_uring's
 * requests on them do not care. */
#include "buffers.h"

#include <fcntl.h>

#define SPLICE_FLAGS (SPLICE_F_NONBLOCK | SPLICE_F_MOVE)

static void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0 && !(fl & O_NONBLOCK))
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static uint64_t ud_in(ZCN_Loop *s, struct conn *c)
{
    return pack_ud(OP_SPLICE_IN, c->gen, (uint32_t)slot_of(s, c));
}

static uint64_t ud_out(ZCN_Loop *s, struct conn *c)
{
    return pack_ud(OP_SPLICE_OUT, c->gen, (uint32_t)slot_of(s, c));
}

void zcn_splice_close_pipe(struct conn *c)
{
    if (c->pipe_rd >= 0)
        close(c->pipe_rd);
    if (c->pipe_wr >= 0)
        close(c->pipe_wr);
    c->pipe_rd = c->pipe_wr = -1;
    c->pipe_bytes = 0;
    c->splicing = false;
    c->splice_eof = false;
}

static void cancel_polls(ZCN_Loop *s, struct conn *c)
{
    if (c->splice_in_armed && !c->splice_in_cancelled)
        zcn_tcp_cancel_ud(s, ud_in(s, c), &c->splice_in_cancelled, c);
    if (c->splice_out_armed && !c->splice_out_cancelled)
        zcn_tcp_cancel_ud(s, ud_out(s, c), &c->splice_out_cancelled, c);
}

bool zcn_splice_busy(ZCN_Loop *s, struct conn *c)
{
    cancel_polls(s, c);
    return c->splice_in_armed || c->splice_out_armed;
}

static void arm_poll(ZCN_Loop *s, struct conn *c, int fd, bool in)
{
    bool *armed = in ? &c->splice_in_armed : &c->splice_out_armed;
    if (*armed)
        return; /* a cancelled one completes, and its completion pumps */
    struct io_uring_sqe *sqe = zcn_get_sqe(s->ring);
    if (sqe == NULL) {
        service_add(s, c); /* the service list pumps again */
        return;
    }
    io_uring_prep_poll_add(sqe, fd, in ? POLLIN : POLLOUT);
    io_uring_sqe_set_data64(sqe, in ? ud_in(s, c) : ud_out(s, c));
    *armed = true;
    if (in)
        c->splice_in_cancelled = false;
    else
        c->splice_out_cancelled = false;
}

/* A splice(2) failed with errno e on `bad`: that one is gone, the other
 * is reset (its stream would be cut short silently otherwise). */
static void splice_fail(ZCN_Loop *s, struct conn *c, struct conn *t, struct conn *bad)
{
    struct conn *other = bad == c ? t : c;
    zcn_tcp_abort_conn(s, bad, false);
    zcn_tcp_abort_conn(s, other, true);
}

static bool eligible(ZCN_Loop *s, struct conn *c, struct conn **t_out)
{
    struct conn *t = fwd_target(s, c);
    *t_out = t;
    return t != NULL && t->state == CONN_OPEN && !t->shut_wr && c->rx_head == NIL &&
           t->sq_head == NIL && !t->send_inflight;
}

/* Moves what it can: drains the pipe into t, then fills it from c, until
 * one would block, EOF, or SPLICE_PUMP_BYTES have moved. */
static void pump(ZCN_Loop *s, struct conn *c)
{
    struct conn *t = fwd_target(s, c);
    if (t == NULL || t->state != CONN_OPEN)
        return; /* the unlink that follows leaves splice mode */
    if (t->shut_wr) {
        /* shut down by the user: as in AUTO, forwarding ends, and what the
         * pipe holds and what follows goes to c's handler */
        zcn_tcp_forward_stop(s, c);
        return;
    }
    uint64_t moved = 0;
    for (;;) {
        while (c->pipe_bytes > 0) {
            ssize_t n = splice(c->pipe_rd, NULL, t->fd, NULL, c->pipe_bytes, SPLICE_FLAGS);
            if (n > 0) {
                c->pipe_bytes -= (uint32_t)n;
                s->stats.bytes_sent += (uint64_t)n;
                s->stats.send_ops++;
                t->bytes_out += (uint64_t)n;
                t->last_active_ms = s->now_ms;
                continue;
            }
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && errno == EAGAIN) {
                arm_poll(s, c, t->fd, false);
                return;
            }
            splice_fail(s, c, t, t);
            return;
        }
        if (c->splice_eof) {
            zcn_splice_close_pipe(c); /* leaves splice mode; nothing is armed */
            c->eof = true;
            zcn_tcp_peer_eof(s, c);
            return;
        }
        if (moved >= SPLICE_PUMP_BYTES) {
            arm_poll(s, c, c->fd, true); /* yields: it fires again at once */
            return;
        }
        ssize_t n = splice(c->fd, NULL, c->pipe_wr, NULL, c->pipe_cap, SPLICE_FLAGS);
        if (n > 0) {
            c->pipe_bytes += (uint32_t)n;
            moved += (uint64_t)n;
            s->stats.bytes_received += (uint64_t)n;
            s->stats.recv_ops++;
            c->bytes_in += (uint64_t)n;
            c->last_active_ms = s->now_ms;
            if (c->splice_auto && !c->fwd_splice) {
                /* the per-size switch: short fills in a row end the stream */
                c->splice_run = (size_t)n < s->buffer_size ? c->splice_run + 1 : 0;
                if (c->splice_run >= SPLICE_AUTO_RUN) {
                    c->splice_auto = false;
                    c->splice_run = 0;
                    while (c->pipe_bytes > 0) { /* drained first where it can */
                        ssize_t w = splice(c->pipe_rd, NULL, t->fd, NULL, c->pipe_bytes,
                                           SPLICE_FLAGS);
                        if (w <= 0)
                            break;
                        c->pipe_bytes -= (uint32_t)w;
                        s->stats.bytes_sent += (uint64_t)w;
                        t->bytes_out += (uint64_t)w;
                    }
                    zcn_splice_leave(s, c);
                    return;
                }
            }
            continue;
        }
        if (n == 0) {
            if (!c->eof)
                s->stats.eofs++;
            c->splice_eof = true;
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN) {
            arm_poll(s, c, c->fd, true);
            return;
        }
        splice_fail(s, c, t, c);
        return;
    }
}

/* A pump may emit events (EOF, closes): only where the loop may (a receive
 * is armed from API calls too); otherwise from the service list. */
static void pump_now(ZCN_Loop *s, struct conn *c)
{
    if (can_emit(s))
        pump(s, c);
    else
        service_add(s, c);
}

bool zcn_splice_want(ZCN_Loop *s, struct conn *c)
{
    if (c->splicing) {
        if (!c->splice_in_armed && !c->splice_out_armed)
            pump_now(s, c); /* from the service list: a poll found no SQE */
        return true;
    }
    struct conn *t = fwd_target(s, c);
    if (t == NULL || t->state != CONN_OPEN || t->shut_wr || c->rx_head != NIL)
        return false;
    if (c->recv_armed) {
        /* Its last data goes the usual way; the recv's end asks again. */
        zcn_tcp_cancel_recv(s, c);
        return true;
    }
    if (!eligible(s, c, &t))
        /* t's queue still sends what the receive brought: no new receive,
         * the switch waits for its last send (which calls back here,
         * through zcn_tcp_forward_wake); without one, buffers go on. */
        return t->send_inflight || t->in_tx;
    int p[2];
    if (pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0) {
        c->fwd_splice = c->splice_auto = false; /* buffers, as without the flag */
        return false;
    }
    int got = fcntl(p[1], F_SETPIPE_SZ, (int)SPLICE_PIPE_BYTES);
    if (got < 0)
        got = fcntl(p[1], F_GETPIPE_SZ);
    c->pipe_rd = p[0];
    c->pipe_wr = p[1];
    c->pipe_cap = got > 0 ? (uint32_t)got : 65536u;
    c->pipe_bytes = 0;
    c->splice_eof = false;
    c->splice_run = 0;
    c->splicing = true;
    set_nonblock(c->fd);
    set_nonblock(t->fd);
    if (!c->splice_in_armed)
        pump_now(s, c);
    return true;
}

void zcn_splice_leave(ZCN_Loop *s, struct conn *c)
{
    if (!c->splicing && c->pipe_rd < 0)
        return;
    cancel_polls(s, c);
    /* What the pipe holds was received and not yet forwarded: c's deferred
     * data, as for any end of forwarding (delivered from the next turn). */
    while (c->state == CONN_OPEN && c->pipe_bytes > 0) {
        int64_t bid = pool_take(s);
        if (bid < 0) {
            zcn_splice_close_pipe(c);
            zcn_tcp_abort_conn(s, c, true); /* rather than lose it silently */
            return;
        }
        ssize_t n = read(c->pipe_rd, buf_ptr(s, (uint32_t)bid), s->buffer_size);
        if (n <= 0) {
            pool_put(s, (uint32_t)bid);
            break;
        }
        s->meta[bid].state = ZCN_BUF_RX;
        s->meta[bid].refs = 1;
        c->pipe_bytes -= (uint32_t)n;
        zcn_tcp_defer_rx(s, c, (uint32_t)bid, (uint32_t)n);
    }
    bool eof = c->splice_eof;
    zcn_splice_close_pipe(c);
    if (eof)
        c->eof = true; /* delivered after the deferred data */
    c->splice_run = 0;
    if (c->state == CONN_OPEN)
        service_add(s, c); /* the normal receive resumes */
}

void zcn_splice_on_poll(ZCN_Loop *s, struct conn *c, enum op op, int res)
{
    (void)res; /* the splice(2)s tell what happened */
    if (op == OP_SPLICE_IN) {
        c->splice_in_armed = false;
        c->splice_in_cancelled = false;
    } else {
        c->splice_out_armed = false;
        c->splice_out_cancelled = false;
    }
    if (c->state != CONN_OPEN) {
        zcn_tcp_progress_close(s, c);
        return;
    }
    if (!c->splicing)
        return;
    if (op == OP_SPLICE_IN && c->splice_out_armed)
        return; /* the pipe is still full: its POLLOUT pumps */
    if (op == OP_SPLICE_OUT && c->splice_in_armed && c->pipe_bytes == 0)
        return;
    pump(s, c);
}
