/* Event delivery: what a connection has to say reaches the application
 * either as a callback (run, run_once: the handler's function, on the loop
 * thread, with in_callback held so the loop cannot be re-entered) or as an
 * entry in the caller's event array (zcn_loop_poll / zcn_server_poll: one
 * FFI crossing per batch). The two modes share every state machine; only
 * these functions differ. Received data is lent: a callback borrows the
 * buffer for the call, a poll batch until the next poll (the buffer is
 * kept on the lent list, counted against the connection's limits meanwhile,
 * and released by end_batch in c/loop.c). The other events of the loop
 * (timers, watches, calls) are delivered where they happen, c/timer.c and
 * c/watch.c, the same way. */
#include "buffers.h"

void zcn_tcp_emit(ZCN_Loop *s, uint32_t type, struct conn *c)
{
    const struct zcn_handler *h = c->h;
    if (s->ev != NULL) {
        ZCN_Event *e = next_event(s, type, c->fd);
        e->tag = h->tag;
        if (type == ZCN_EVENT_CLOSE)
            e->offset = (uint64_t)(uint32_t)c->close_errno;
        return;
    }
    s->in_callback++;
    switch (type) {
    case ZCN_EVENT_ACCEPT:
        if (h->on_accept != NULL)
            h->on_accept(h->user_data, c->fd);
        break;
    case ZCN_EVENT_CLOSE:
        if (h->on_close != NULL)
            h->on_close(h->user_data, c->fd);
        break;
    case ZCN_EVENT_DRAIN:
        if (h->on_drain != NULL)
            h->on_drain(h->user_data, c->fd);
        break;
    case ZCN_EVENT_EOF:
        if (h->on_eof != NULL)
            h->on_eof(h->user_data, c->fd);
        break;
    default:
        break;
    }
    s->in_callback--;
}

/* An outbound connect ended: on_connect, or a CONNECT event whose offset
 * is the result. */
void zcn_tcp_emit_connect(ZCN_Loop *s, struct conn *c, ZCN_Error result)
{
    const struct zcn_handler *h = c->h;
    if (s->ev != NULL) {
        ZCN_Event *e = next_event(s, ZCN_EVENT_CONNECT, c->fd);
        e->tag = h->tag;
        e->offset = (uint64_t)result;
        return;
    }
    if (h->on_connect != NULL) {
        s->in_callback++;
        h->on_connect(h->user_data, c->fd, result);
        s->in_callback--;
    }
}

/* Hands one received buffer to the user. The delivery's reference is held
 * until the callback returns (callback mode) or the next poll (poll mode).
 * A connection forwarding with ZCN_FORWARD_AUTO hands it to its target's
 * queue instead. */
void zcn_tcp_emit_data(ZCN_Loop *s, struct conn *c, uint32_t bid, uint32_t len)
{
    if (ZCN_UNLIKELY(c->fwd_auto)) {
        zcn_tcp_forward_data(s, c, bid, len);
        return;
    }
    uint8_t *data = buf_ptr(s, bid);
    if (s->ev != NULL) {
        ZCN_Event *e = &s->ev[s->ev_n++];
        e->type = ZCN_EVENT_DATA;
        e->fd = c->fd;
        e->len = len;
        e->tag = c->h->tag;
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
    ZCN_OnData on_data = c->h->on_data;
    if (on_data != NULL) {
        /* The built-in echo gets the loop; user callbacks their user_data. */
        void *ud = on_data == zcn_tcp_echo_on_data ? (void *)s : c->h->user_data;
        struct conn *outer = s->delivering;
        s->in_callback++;
        s->delivering = c;
        on_data(ud, c->fd, data, len);
        s->delivering = outer;
        s->in_callback--;
    }
    buf_unref(s, bid);
}
