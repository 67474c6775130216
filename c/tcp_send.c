/* The TCP send queue and the calls that queue or end: zcn_server_send
 * (zero-copy for lent data, packed copies otherwise), send_buffer,
 * acquire/release, close, shutdown, abort, queued_bytes, conn_info, the
 * built-in echo. Admission against the connection's limits and the
 * server's budget is here; submission to the kernel too (one send or
 * sendmsg in flight per connection, collected per batch). */
#include "buffers.h"

/* What c's queue sends next: one chunk as (*ptr, *len), several (up to
 * IOV_BATCH) in c->msg over c->iov. Returns the number of chunks. */
static uint32_t send_args(ZCN_Loop *s, struct conn *c, void **ptr, size_t *len)
{
    struct chunk *ch = &s->chunks[c->sq_head];
    if (ch->next == NIL) {
        *ptr = buf_ptr(s, ch->bid) + ch->off;
        *len = ch->len;
        return 1;
    }
    size_t n = 0;
    for (int32_t i = c->sq_head; i != NIL && n < IOV_BATCH; i = s->chunks[i].next) {
        c->iov[n].iov_base = buf_ptr(s, s->chunks[i].bid) + s->chunks[i].off;
        c->iov[n].iov_len = s->chunks[i].len;
        n++;
    }
    memset(&c->msg, 0, sizeof c->msg);
    c->msg.msg_iov = c->iov;
    c->msg.msg_iovlen = n;
    return (uint32_t)n;
}

void zcn_tcp_submit_send(ZCN_Loop *s, struct conn *c)
{
    if (c->send_inflight || c->sq_head == NIL)
        return;
    struct io_uring_sqe *sqe = zcn_get_sqe(s->ring);
    if (sqe == NULL) {
        service_add(s, c);
        return;
    }
    void *ptr;
    size_t len;
    uint32_t n = send_args(s, c, &ptr, &len);
    if (n == 1)
        io_uring_prep_send(sqe, c->fd, ptr, len, MSG_NOSIGNAL);
    else
        io_uring_prep_sendmsg(sqe, c->fd, &c->msg, MSG_NOSIGNAL);
    c->inflight_chunks = n;
    io_uring_sqe_set_data64(sqe, pack_ud(OP_SEND, c->gen, (uint32_t)slot_of(s, c)));
    c->send_inflight = true;
    c->send_cancelled = false;
}

void zcn_tcp_flush_tx(ZCN_Loop *s)
{
    for (uint32_t i = 0; i < s->tx_n; i++) {
        struct conn *c = &s->conns[s->tx[i].slot];
        if (c->gen != s->tx[i].gen || !c->in_tx)
            continue;
        c->in_tx = false;
        if (c->state == CONN_OPEN || c->state == CONN_CLOSING)
            zcn_tcp_submit_send(s, c);
    }
    s->tx_n = 0;
}

/* The send of a turn that answers one connection, made at once with a
 * plain sendmsg instead of an SQE. Its completion would be the only thing
 * the next wait finds (an inline send posts its CQE in the same system
 * call, so the wait returns at once): a second system call and a turn per
 * round trip, where a direct send needs neither. The kernel copies out of
 * the same pool buffer either way. True when it was sent (whole or in
 * part) or failed, and was completed like a CQE; false when the socket had
 * no room (the SQE then waits for it). */
static bool send_direct(ZCN_Loop *s, struct conn *c)
{
    void *ptr;
    size_t len;
    uint32_t n = send_args(s, c, &ptr, &len);
    ssize_t r = n == 1 ? send(c->fd, ptr, len, MSG_NOSIGNAL | MSG_DONTWAIT)
                       : sendmsg(c->fd, &c->msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return false;
    s->stats.sends_direct++;
    c->inflight_chunks = n;
    c->send_inflight = true;
    zcn_tcp_on_send(s, c, r < 0 ? -errno : (int)r);
    return true;
}

/* reap()'s flush, once a batch's completions have run (callbacks may run
 * from here as from a completion). One connection to send to: sent now
 * (send_direct); more: SQEs, which the wait submits together. */
void zcn_tcp_flush_tx_reaped(ZCN_Loop *s)
{
    if (s->tx_n == 1 && s->direct_sends) {
        struct conn *c = &s->conns[s->tx[0].slot];
        if (c->gen == s->tx[0].gen && c->in_tx && !c->send_inflight && c->sq_head != NIL &&
            (c->state == CONN_OPEN || c->state == CONN_CLOSING)) {
            s->tx_n = 0;
            c->in_tx = false;
            if (!send_direct(s, c))
                zcn_tcp_submit_send(s, c);
        }
    }
    zcn_tcp_flush_tx(s); /* and whatever the completion queued */
}

static void enqueue_chunk(ZCN_Loop *s, struct conn *c, int32_t idx)
{
    bool was_empty = c->sq_head == NIL;
    s->chunks[idx].next = NIL;
    bool counts = chunk_counts(s, s->chunks[idx].bid);
    if (c->sq_tail != NIL) {
        struct chunk *prev = &s->chunks[c->sq_tail];
        prev->next = idx;
        if (prev->bid != s->chunks[idx].bid && counts)
            held_add(s, c, &c->sq_bufs, 1);
    } else {
        c->sq_head = idx;
        if (counts)
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
static struct conn *send_target(ZCN_Loop *s, int fd, ZCN_Error *err)
{
    struct conn *c = lookup(s, fd);
    if (ZCN_UNLIKELY(c == NULL || c->state != CONN_OPEN)) {
        if (c != NULL && c->state == CONN_CONNECTING)
            *err = zcn_fail(ZCN_ERR_NOT_STARTED,
                            "fd %d is still connecting: send from on_connect on", fd);
        else
            *err = zcn_fail(ZCN_ERR_CLOSED, "fd %d is not an open connection of this server",
                            fd);
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

static ZCN_Error refuse(ZCN_Loop *s, struct conn *c, size_t len, const char *why, bool budget);

/* Refuses a send that would not fit: its bytes into the queue, cap_bufs
 * more buffers into the connection's cap, budget_bufs more into the
 * server's budget (0 for a buffer counted already), new_chunks into the
 * server's chunk table and own_chunks of them into the connection's chunk
 * cap. A refusal asks for DRAIN. Inline, on every send; the refusal itself
 * is out of line. */
static inline ZCN_Error admit_chunks(ZCN_Loop *s, struct conn *c, size_t len, uint32_t cap_bufs,
                                     uint32_t budget_bufs, uint32_t new_chunks,
                                     uint32_t own_chunks)
{
    if (ZCN_UNLIKELY(len > s->send_queue_max_bytes))
        return zcn_fail((ZCN_Error)EMSGSIZE,
                        "a %zu-byte send is larger than send_queue_max_bytes (%llu)", len,
                        (unsigned long long)s->send_queue_max_bytes);
    uint32_t slack = own_slack(s, c);
    /* Past the cap even into an empty queue: it could never fit (data
     * being delivered to c has slack and may go over, as before). */
    if (ZCN_UNLIKELY(cap_bufs > s->send_queue_max_bufs && slack == 0))
        return zcn_fail((ZCN_Error)EMSGSIZE,
                        "a %zu-byte send needs %u buffers of %zu bytes, more than one "
                        "connection may hold (%u): send it in pieces",
                        len, cap_bufs, s->buffer_size, s->send_queue_max_bufs);
    const char *why = NULL;
    bool budget = false;
    if (c->queued_bytes + len > s->send_queue_max_bytes)
        why = "its bytes";
    /* The cap applies to a queue that holds something: an empty one takes
     * one send up to the unpressured cap, or no completion would ever come
     * to announce the DRAIN a refusal promises (the budget still rules). */
    else if (cap_bufs > 0 && slack == 0 && c->sq_bufs > 0 &&
             c->sq_bufs + cap_bufs > buf_cap(s))
        why = "its buffer cap";
    else if (own_chunks > 0 && c->sq_chunks + own_chunks > s->conn_chunks_max + 2 * slack)
        why = "its chunk cap";
    else if (budget_bufs > 0 && slack == 0 && budget_used(s) + budget_bufs > s->budget)
        why = "the server's buffer budget", budget = true;
    else if (new_chunks > 0 && s->chunks_used + new_chunks > s->chunks_max)
        why = "the server's chunk table", budget = true;
    if (ZCN_LIKELY(why == NULL))
        return ZCN_OK;
    return refuse(s, c, len, why, budget);
}

static inline ZCN_Error admit(ZCN_Loop *s, struct conn *c, size_t len, uint32_t cap_bufs,
                              uint32_t budget_bufs, uint32_t new_chunks)
{
    return admit_chunks(s, c, len, cap_bufs, budget_bufs, new_chunks, new_chunks);
}

static ZCN_Error refuse(ZCN_Loop *s, struct conn *c, size_t len, const char *why, bool budget)
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
static size_t tail_room(const ZCN_Loop *s, const struct conn *c)
{
    if (c->sq_tail == NIL)
        return 0;
    const struct chunk *tail = &s->chunks[c->sq_tail];
    const struct zcn_buf_meta *tm = &s->meta[tail->bid];
    if (tm->state != ZCN_BUF_TX || tm->refs != 1)
        return 0;
    return s->buffer_size - (tail->off + tail->len);
}

/* Whether a small copy for c goes into the loop's pack buffer: c's queue
 * is empty, or ends with c's chunk of the pack buffer right at its fill
 * mark (then that chunk grows). So a connection has at most one chunk in
 * pack buffers, and pins at most one of them while its peer does not
 * read; what it queues behind that chunk goes into buffers of its own,
 * which its cap and the fair share count as before. */
static inline bool pack_fits(const ZCN_Loop *s, const struct conn *c, size_t len)
{
    if (len > s->pack_max || len == 0)
        return false;
    if (c->sq_tail == NIL)
        return true;
    const struct chunk *tail = &s->chunks[c->sq_tail];
    return (int64_t)tail->bid == s->pack_bid && tail->off + tail->len == s->pack_off &&
           s->pack_off + len <= s->buffer_size;
}

/* Copies a small send into the pack buffer (pack_fits said it may): a
 * new chunk there for an empty queue, or c's tail chunk grown. A full
 * pack buffer is retired (it lives on until its chunks are sent) and a
 * fresh one taken from the pool: one buffer of the budget for all the
 * connections whose copies it will hold. */
static ZCN_Error send_packed(ZCN_Loop *s, struct conn *c, const uint8_t *data, size_t len)
{
    bool grow = c->sq_tail != NIL;
    bool fresh = s->pack_bid < 0 || s->pack_off + len > s->buffer_size;
    ZCN_Error err = admit(s, c, len, 0, fresh ? 1 : 0, grow ? 0 : 1);
    if (err != ZCN_OK)
        return err;
    if (fresh) {
        int64_t bid = pool_take(s);
        if (bid < 0)
            return zcn_fail(ZCN_ERR_EXHAUSTED, "no free pool buffer for a %zu-byte copy", len);
        zcn_tcp_pack_retire(s);
        s->meta[bid].state = ZCN_BUF_PACK;
        s->meta[bid].refs = 1; /* the loop's, while it fills it */
        s->pack_bid = bid;
        s->pack_off = 0;
        s->pack_bufs++;
    }
    uint32_t bid = (uint32_t)s->pack_bid;
    /* Past the bytes any send in flight reads (theirs end at pack_off). */
    memcpy(buf_ptr(s, bid) + s->pack_off, data, len);
    if (grow) {
        s->chunks[c->sq_tail].len += (uint32_t)len;
        c->queued_bytes += len;
    } else {
        int32_t idx = chunk_take(s); /* admit left one in the table */
        buf_ref(s, bid);
        s->chunks[idx] = (struct chunk){bid, s->pack_off, (uint32_t)len, NIL};
        enqueue_chunk(s, c, idx);
    }
    s->pack_off += (uint32_t)len;
    s->stats.sends_copied++;
    want_send(s, c);
    return ZCN_OK;
}

/* Copies data into pool buffers and queues them. A small send to an empty
 * queue goes into the pack buffer that several connections share; other
 * small sends first fill the room left in the queue's last buffer when
 * the server owns it alone, so a stream of short messages to a slow
 * reader costs bytes, not one buffer each. All or nothing. */
static ZCN_Error send_copy(ZCN_Loop *s, struct conn *c, const uint8_t *data, size_t len)
{
    if (len > s->send_queue_max_bytes)
        return admit(s, c, len, 0, 0, 0); /* EMSGSIZE, before any size arithmetic */
    if (pack_fits(s, c, len))
        return send_packed(s, c, data, len);
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

/* send_copy for the user's own bytes: a copy that finds no free pool
 * buffer promises a DRAIN, as a refusal does, from the budget waiters when
 * buffers are back (c/buffers.c), or the caller had no event to retry on. */
static ZCN_Error send_copy_or_wait(ZCN_Loop *s, struct conn *c, const uint8_t *data, size_t len)
{
    ZCN_Error err = send_copy(s, c, data, len);
    if (ZCN_UNLIKELY(err == ZCN_ERR_EXHAUSTED)) {
        c->want_drain = true;
        wait_for_budget(s, c);
    }
    return err;
}

/* A slice of a lent receive buffer: referenced, not copied, unless it is
 * small and would wait behind other data anyway (then packed), or c is at
 * its chunk cap. */
static ZCN_Error send_lent(ZCN_Loop *s, struct conn *c, uint32_t bid, size_t off,
                           const uint8_t *data, size_t len)
{
    bool same_buf = false, unpacked = false;
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
            /* An answer to c's own delivery that would need a fresh pack
             * buffer where none is free, or a chunk past c's cap, is
             * referenced instead (below), never refused. */
            if (tail_room(s, c) < len && delivered_to(s, c) &&
                (s->pool_free == 0 ||
                 c->sq_chunks + 1 > s->conn_chunks_max + 2 * own_slack(s, c))) {
                unpacked = true;
            } else {
                ZCN_Error err = send_copy(s, c, data, len);
                if (err == ZCN_OK)
                    s->stats.sends_coalesced++;
                /* With no pool buffer for the copy (the ring holds them),
                 * referencing still works if a chunk is left (admit says). */
                if (err != ZCN_ERR_EXHAUSTED)
                    return err;
                unpacked = true;
            }
        }
    }
    /* Data delivered to c itself passed the delivery gate, which made room
     * for it in c's cap and the budget: echoing it never fails on them.
     * Data of another connection (a proxy) must fit c's cap and the
     * budget like any other buffer. */
    bool own = delivered_to(s, c);
    uint32_t more = same_buf || own ? 0 : 1;
    /* An answer to c's own delivery that could not be packed (no pool
     * buffer free, or its chunk past c's cap) takes a chunk per slice:
     * c's chunk cap would refuse what the contract promises (a handler
     * answering 16-byte lines of a 4 KiB buffer was refused at its 42nd
     * line), so only the server's chunk table bounds these. The delivery
     * gate still holds c's next delivery until its queue is back under
     * the cap. */
    ZCN_Error err = admit_chunks(s, c, len, more, more, 1, unpacked && own ? 0 : 1);
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

/* ------------------------------------------------------------------ */
/* forwarding (zcn_loop_forward)                                       */
/* ------------------------------------------------------------------ */

/* A small piece behind queued data is copied instead of referenced, as
 * send_lent does: into the room left in the queue's last buffer, or into
 * one fresh pool buffer the next pieces fill (which takes no more of the
 * budget than the reference would have: the received buffer goes back).
 * False when neither is to be had. */
static bool forward_pack(ZCN_Loop *s, struct conn *t, const uint8_t *data, uint32_t len)
{
    if (tail_room(s, t) >= len) {
        struct chunk *tail = &s->chunks[t->sq_tail];
        memcpy(buf_ptr(s, tail->bid) + tail->off + tail->len, data, len);
        tail->len += len;
        t->queued_bytes += len;
        return true;
    }
    if (s->chunk_free == NIL)
        return false;
    int64_t bid = pool_take(s);
    if (bid < 0)
        return false;
    int32_t idx = chunk_take(s);
    memcpy(buf_ptr(s, (uint32_t)bid), data, len);
    s->meta[bid].state = ZCN_BUF_TX;
    s->meta[bid].refs = 1;
    s->chunks[idx] = (struct chunk){(uint32_t)bid, 0, len, NIL};
    enqueue_chunk(s, t, idx);
    return true;
}

/* AUTO forwarding's send: the delivery gate of the connection the data
 * came from made room for it in t's queue (bytes, buffers, chunks,
 * budget), so nothing is admitted again here; the caller keeps its own
 * reference to the buffer and drops it after. */
ZCN_Error zcn_tcp_forward_buffer(ZCN_Loop *s, struct conn *t, uint32_t bid, uint32_t len)
{
    if (ZCN_UNLIKELY(t->state != CONN_OPEN || t->shut_wr))
        return ZCN_ERR_CLOSED;
    if (t->sq_tail != NIL && len < COALESCE_BYTES && forward_pack(s, t, buf_ptr(s, bid), len)) {
        s->stats.sends_coalesced++;
        want_send(s, t);
        return ZCN_OK;
    }
    int32_t idx = chunk_take(s);
    if (ZCN_UNLIKELY(idx == NIL))
        return zcn_fail(ZCN_ERR_EXHAUSTED, "fd %d: the loop's chunk table (%u) is used up",
                        t->fd, s->chunks_max);
    buf_ref(s, bid);
    s->chunks[idx] = (struct chunk){bid, 0, len, NIL};
    enqueue_chunk(s, t, idx);
    s->stats.sends_zero_copy++;
    want_send(s, t);
    return ZCN_OK;
}

static ZCN_Error loop_send(ZCN_Loop *s, int fd, const uint8_t *data, size_t len, const char *fn)
{
    if (s == NULL || (data == NULL && len != 0))
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server or data is NULL");
    ZCN_Error err = owner_check(s, fn);
    if (err != ZCN_OK)
        return err;
    struct conn *c = send_target(s, fd, &err);
    if (c == NULL)
        return err;
    if (len == 0)
        return ZCN_OK;
    const uint8_t *end = s->slab + (size_t)s->buffer_count * s->buffer_size;
    if (data < s->slab || data >= end)
        return send_copy_or_wait(s, c, data, len);

    uint32_t bid = (uint32_t)((size_t)(data - s->slab) / s->buffer_size);
    size_t off = (size_t)(data - buf_ptr(s, bid));
    /* len may be anything (SIZE_MAX): compare without adding to it. */
    if (len > s->buffer_size - off)
        return zcn_fail(ZCN_ERR_FOREIGN_POINTER,
                        "data at offset %zu with len %zu runs past its %zu-byte pool buffer", off,
                        len, s->buffer_size);
    struct zcn_buf_meta *m = &s->meta[bid];
    if (m->state == ZCN_BUF_USER)
        return send_copy_or_wait(s, c, data, len);
    if (m->state != ZCN_BUF_RX || m->refs == 0)
        return zcn_fail(ZCN_ERR_FOREIGN_POINTER,
                        "data points into a receive buffer that is no longer lent");
    return send_lent(s, c, bid, off, data, len);
}

static uint8_t *loop_acquire_buffer(ZCN_Loop *s, size_t *capacity_out, const char *fn)
{
    if (s == NULL || owner_check(s, fn) != ZCN_OK)
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

static ZCN_Error loop_release_buffer(ZCN_Loop *s, uint8_t *buffer, const char *fn)
{
    if (s == NULL || buffer == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server or buffer is NULL");
    ZCN_Error err = owner_check(s, fn);
    if (err != ZCN_OK)
        return err;
    err = zcn_user_buffer_release(s->pool, s->meta, buffer, "zcn_server_acquire_buffer");
    if (err == ZCN_OK) {
        s->pool_free++;
        s->user_bufs--;
    }
    return err;
}

static ZCN_Error loop_send_buffer(ZCN_Loop *s, int fd, uint8_t *buffer, size_t len, const char *fn)
{
    if (s == NULL || buffer == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server or buffer is NULL");
    ZCN_Error err = owner_check(s, fn);
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

/* A connection of this server that has not ended yet (OPEN or CLOSING). A
 * connect still in flight is cancelled instead (on_connect gets
 * ECANCELED): *err is ZCN_OK and NULL returned. */
static struct conn *live_conn(ZCN_Loop *s, int fd, ZCN_Error *err, bool open_only)
{
    struct conn *c = lookup(s, fd);
    if (c != NULL && c->state == CONN_CONNECTING) {
        if (c->connect_error == 0)
            c->connect_error = ECANCELED;
        zcn_tcp_connect_progress(s, c);
        *err = ZCN_OK;
        return NULL;
    }
    if (c == NULL || (c->state != CONN_OPEN && (open_only || c->state != CONN_CLOSING))) {
        *err = zcn_fail(ZCN_ERR_CLOSED, "fd %d is not an open connection of this server", fd);
        return NULL;
    }
    return c;
}

static ZCN_Error loop_close(ZCN_Loop *s, int fd, const char *fn)
{
    if (s == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    ZCN_Error err = owner_check(s, fn);
    if (err != ZCN_OK)
        return err;
    struct conn *c = live_conn(s, fd, &err, true);
    if (c == NULL)
        return err;
    zcn_tcp_begin_close(s, c);
    return ZCN_OK;
}

static ZCN_Error loop_shutdown(ZCN_Loop *s, int fd, const char *fn)
{
    if (s == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    ZCN_Error err = owner_check(s, fn);
    if (err != ZCN_OK)
        return err;
    struct conn *c = lookup(s, fd);
    if (c != NULL && c->state == CONN_CONNECTING)
        return zcn_fail(ZCN_ERR_NOT_STARTED, "fd %d is still connecting", fd);
    c = live_conn(s, fd, &err, true);
    if (c == NULL)
        return err;
    if (c->shut_wr)
        return zcn_fail(ZCN_ERR_CLOSED, "fd %d is already shut down for sending", fd);
    c->shut_wr = true;
    c->want_drain = false;
    zcn_tcp_progress_shutdown(s, c);
    return ZCN_OK;
}

static ZCN_Error loop_abort(ZCN_Loop *s, int fd, const char *fn)
{
    if (s == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    ZCN_Error err = owner_check(s, fn);
    if (err != ZCN_OK)
        return err;
    struct conn *c = live_conn(s, fd, &err, false);
    if (c == NULL)
        return err;
    s->stats.aborts++;
    zcn_tcp_abort_conn(s, c, true);
    return ZCN_OK;
}

static size_t loop_queued_bytes(const ZCN_Loop *s, int fd, const char *fn)
{
    (void)fn;
    if (s == NULL)
        return 0;
    struct conn *c = lookup(s, fd);
    if (c == NULL || c->state == CONN_FREE || c->state == CONN_ZOMBIE)
        return 0;
    return (size_t)c->queued_bytes;
}

static ZCN_Error loop_conn_info(const ZCN_Loop *s, int fd, ZCN_ConnInfo *out, const char *fn)
{
    if (s == NULL || out == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server or out is NULL");
    ZCN_Error err = owner_check(s, fn);
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
                 (c->state == CONN_OPEN && !c->recv_armed && !c->eof &&
                          !(c->splicing && c->splice_in_armed) ? ZCN_CONN_PAUSED : 0u) |
                 (fwd_target(s, c) != NULL ? ZCN_CONN_FORWARDING : 0u) |
                 (c->splicing ? ZCN_CONN_SPLICING : 0u);
    uint64_t now = zcn_now_ms();
    if (c->sq_head != NIL && now > c->progress_ms)
        out->send_stall_ms = now - c->progress_ms;
    return ZCN_OK;
}

void zcn_tcp_echo_on_data(void *user_data, int fd, const uint8_t *data, size_t len)
{
    ZCN_Loop *s = user_data;
    if (loop_send(s, fd, data, len, "zcn_server_send") != ZCN_OK) {
        /* An echo that cannot send would silently lose data: end it. */
        struct conn *c = lookup(s, fd);
        if (c != NULL)
            zcn_tcp_abort_conn(s, c, false);
    }
}

ZCN_Error zcn_server_use_echo_handler(ZCN_Server *srv)
{
    if (srv == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    srv->h.on_data = zcn_tcp_echo_on_data; /* user_data stays the caller's */
    return ZCN_OK;
}

/* The public calls: a server's work on its loop's connections, the loop's
 * on any of its own. */
ZCN_Error zcn_server_send(ZCN_Server *srv, int fd, const uint8_t *data, size_t len)
{
    if (srv == NULL) {
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    }
    return loop_send(srv->loop, fd, data, len, "zcn_server_send");
}

ZCN_Error zcn_loop_send(ZCN_Loop *loop, int fd, const uint8_t *data, size_t len)
{
    if (loop == NULL) {
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "loop is NULL");
    }
    return loop_send(loop, fd, data, len, "zcn_loop_send");
}

uint8_t *zcn_server_acquire_buffer(ZCN_Server *srv, size_t *capacity_out)
{
    if (srv == NULL) {
        zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
        return NULL;
    }
    return loop_acquire_buffer(srv->loop, capacity_out, "zcn_server_acquire_buffer");
}

uint8_t *zcn_loop_acquire_buffer(ZCN_Loop *loop, size_t *capacity_out)
{
    if (loop == NULL) {
        zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "loop is NULL");
        return NULL;
    }
    return loop_acquire_buffer(loop, capacity_out, "zcn_loop_acquire_buffer");
}

ZCN_Error zcn_server_release_buffer(ZCN_Server *srv, uint8_t *buffer)
{
    if (srv == NULL) {
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    }
    return loop_release_buffer(srv->loop, buffer, "zcn_server_release_buffer");
}

ZCN_Error zcn_loop_release_buffer(ZCN_Loop *loop, uint8_t *buffer)
{
    if (loop == NULL) {
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "loop is NULL");
    }
    return loop_release_buffer(loop, buffer, "zcn_loop_release_buffer");
}

ZCN_Error zcn_server_send_buffer(ZCN_Server *srv, int fd, uint8_t *buffer, size_t len)
{
    if (srv == NULL) {
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    }
    return loop_send_buffer(srv->loop, fd, buffer, len, "zcn_server_send_buffer");
}

ZCN_Error zcn_loop_send_buffer(ZCN_Loop *loop, int fd, uint8_t *buffer, size_t len)
{
    if (loop == NULL) {
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "loop is NULL");
    }
    return loop_send_buffer(loop, fd, buffer, len, "zcn_loop_send_buffer");
}

ZCN_Error zcn_server_close(ZCN_Server *srv, int fd)
{
    if (srv == NULL) {
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    }
    return loop_close(srv->loop, fd, "zcn_server_close");
}

ZCN_Error zcn_loop_close(ZCN_Loop *loop, int fd)
{
    if (loop == NULL) {
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "loop is NULL");
    }
    return loop_close(loop, fd, "zcn_loop_close");
}

ZCN_Error zcn_server_shutdown(ZCN_Server *srv, int fd)
{
    if (srv == NULL) {
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    }
    return loop_shutdown(srv->loop, fd, "zcn_server_shutdown");
}

ZCN_Error zcn_loop_shutdown(ZCN_Loop *loop, int fd)
{
    if (loop == NULL) {
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "loop is NULL");
    }
    return loop_shutdown(loop, fd, "zcn_loop_shutdown");
}

ZCN_Error zcn_server_abort(ZCN_Server *srv, int fd)
{
    if (srv == NULL) {
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    }
    return loop_abort(srv->loop, fd, "zcn_server_abort");
}

ZCN_Error zcn_loop_abort(ZCN_Loop *loop, int fd)
{
    if (loop == NULL) {
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "loop is NULL");
    }
    return loop_abort(loop, fd, "zcn_loop_abort");
}

size_t zcn_server_queued_bytes(const ZCN_Server *srv, int fd)
{
    if (srv == NULL) {
        return 0;
    }
    return loop_queued_bytes(srv->loop, fd, "zcn_server_queued_bytes");
}

size_t zcn_loop_queued_bytes(const ZCN_Loop *loop, int fd)
{
    if (loop == NULL) {
        return 0;
    }
    return loop_queued_bytes(loop, fd, "zcn_loop_queued_bytes");
}

ZCN_Error zcn_server_conn_info(const ZCN_Server *srv, int fd, ZCN_ConnInfo *out)
{
    if (srv == NULL) {
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    }
    return loop_conn_info(srv->loop, fd, out, "zcn_server_conn_info");
}

ZCN_Error zcn_loop_conn_info(const ZCN_Loop *loop, int fd, ZCN_ConnInfo *out)
{
    if (loop == NULL) {
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "loop is NULL");
    }
    return loop_conn_info(loop, fd, out, "zcn_loop_conn_info");
}


/* Receive flow control for one connection (asyncio's pause_reading): the
 * gates say GATE_PAUSED, so what the kernel hands over meanwhile is kept
 * as deferred data (a receive in flight is cancelled, so that is little)
 * and the rest stays in the socket buffer, where TCP's window pushes back
 * on the peer. Resuming hands it on from the next turn. */
static ZCN_Error loop_set_paused(ZCN_Loop *s, int fd, bool paused, const char *fn)
{
    if (s == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "loop is NULL");
    ZCN_Error err = owner_check(s, fn);
    if (err != ZCN_OK)
        return err;
    struct conn *c = lookup(s, fd);
    if (c == NULL || (c->state != CONN_OPEN && c->state != CONN_CONNECTING &&
                      c->state != CONN_CLOSING))
        return zcn_fail(ZCN_ERR_CLOSED, "fd %d is not an open connection of this loop", fd);
    if (c->rx_paused == paused)
        return ZCN_OK;
    c->rx_paused = paused;
    if (paused)
        zcn_tcp_cancel_recv(s, c);
    else if (c->state == CONN_OPEN)
        service_add(s, c); /* deferred data, EOF and the receive: next turn */
    return ZCN_OK;
}

ZCN_Error zcn_loop_pause_recv(ZCN_Loop *loop, int fd)
{
    return loop_set_paused(loop, fd, true, "zcn_loop_pause_recv");
}

ZCN_Error zcn_loop_resume_recv(ZCN_Loop *loop, int fd)
{
    return loop_set_paused(loop, fd, false, "zcn_loop_resume_recv");
}

/* One DRAIN (on_drain) once fd's send queue holds at most below_bytes:
 * asyncio's write-buffer low-water mark. Checked after every send
 * completion; already true now, it comes at the next turn. */
ZCN_Error zcn_loop_notify_drain(ZCN_Loop *s, int fd, size_t below_bytes)
{
    if (s == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "loop is NULL");
    ZCN_Error err = owner_check(s, "zcn_loop_notify_drain");
    if (err != ZCN_OK)
        return err;
    struct conn *c = lookup(s, fd);
    if (c == NULL || (c->state != CONN_OPEN && c->state != CONN_CONNECTING))
        return zcn_fail(ZCN_ERR_CLOSED, "fd %d is not an open connection of this loop", fd);
    c->drain_notify = true;
    c->drain_below = below_bytes;
    if (c->state == CONN_OPEN && c->queued_bytes <= below_bytes)
        service_add(s, c);
    return ZCN_OK;
}

/* Many sends in one call: what a binding collects during a turn (the
 * asyncio loop's transport.write) goes to the queues in one FFI crossing.
 * Each item is a copy, exactly as zcn_loop_send; an item refused makes the
 * later items of the same fd in this call refused the same way, so a
 * stream never has a hole in it. */
ZCN_Error zcn_loop_send_many(ZCN_Loop *s, const uint8_t *data, size_t data_len,
                             const ZCN_SendItem *items, uint32_t count, int32_t *results,
                             uint32_t *failed_out)
{
    if (failed_out != NULL)
        *failed_out = 0;
    if (s == NULL || failed_out == NULL || (count > 0 && (items == NULL || results == NULL)) ||
        (data == NULL && data_len != 0))
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "%s is NULL",
                        s == NULL ? "loop" : failed_out == NULL ? "failed_out"
                        : data == NULL ? "data" : "items or results");
    ZCN_Error err = owner_check(s, "zcn_loop_send_many");
    if (err != ZCN_OK)
        return err;
    uint32_t seq = ++s->send_many_seq;
    if (seq == 0)
        seq = s->send_many_seq = 1;
    size_t off = 0;
    uint32_t failed = 0;
    for (uint32_t i = 0; i < count; i++) {
        uint32_t len = items[i].len;
        if (len > data_len - off) {
            /* The items promise more bytes than `data` holds: none of the
             * rest is sent. */
            zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "item %u: %u bytes past the %zu of data", i, len,
                     data_len);
            failed += count - i;
            for (; i < count; i++)
                results[i] = ZCN_ERR_INVALID_ARGUMENT;
            break;
        }
        struct conn *c = send_target(s, items[i].fd, &err);
        if (c != NULL && c->send_many_seq == seq) {
            err = (ZCN_Error)c->send_many_err;
        } else if (c != NULL && len > 0) {
            err = send_copy_or_wait(s, c, data + off, len);
            if (err != ZCN_OK) {
                c->send_many_seq = seq;
                c->send_many_err = (int32_t)err;
            }
        }
        results[i] = (int32_t)err;
        failed += err != ZCN_OK;
        off += len;
    }
    *failed_out = failed;
    return ZCN_OK;
}
