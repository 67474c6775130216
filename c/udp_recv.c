/* The UDP socket's receive side: the readiness receive (recvmmsg
 * batches into slots, spills for large datagrams, the read-on NOP and the
 * one-shot poll) and the multishot recvmsg on a buffer ring; resuming
 * either once buffers or SQEs are back (maybe_rearm); handing datagrams to
 * the callback or to a poll batch, and ending that batch. c/udp.c's
 * opening comment describes both modes. */
#include "udp.h"

static void callback_enter(ZCN_UdpSocket *u)
{
    u->in_callback++;
    if (u->loop != NULL)
        zcn_loop_callback_enter(u->loop);
}

static void callback_leave(ZCN_UdpSocket *u)
{
    if (u->loop != NULL)
        zcn_loop_callback_leave(u->loop);
    u->in_callback--;
}

static void queue_read_on(ZCN_UdpSocket *u);
static uint32_t fill_slots(ZCN_UdpSocket *u, uint32_t want);

/* Resumes receiving where it stopped for want of a buffer or an SQE:
 * readiness mode reads on (or polls again), multishot mode refills its
 * ring and re-arms the receive once it has ended. Runs after each of the
 * socket's completions, at each turn of its own loop and, on a server,
 * before each wait of the server's loop (flush_source); with nothing to
 * resume it costs a few branches. */
void zcn_udpi_maybe_rearm(ZCN_UdpSocket *u)
{
    if (u->recv_mode == ZCN_UDP_RECV_READINESS) {
        if (!u->started || u->destroying || u->recv_paused)
            return;
        /* Buffers came back (or an SQE is free again) after a stop. */
        if (u->rx_resume && !u->rx_more && fill_slots(u, 1) > 0) {
            u->rx_resume = false;
            queue_read_on(u);
        }
        if (u->rx_idle && !u->recv_armed)
            zcn_udpi_arm_recv(u);
        return;
    }
    while (u->rx.count < u->br_target && !u->destroying) {
        int64_t bid = buf_take(u);
        if (bid < 0)
            break;
        ring_add(u, (uint32_t)bid);
    }
    ring_publish(u);
    if (u->started && !u->recv_armed && !u->destroying && u->rx.count > 0)
        zcn_udpi_arm_recv(u);
}

/* Ends the previous poll batch: its lent buffers come back. */
void zcn_udpi_end_batch(ZCN_UdpSocket *u)
{
    while (u->lent_head != NIL) {
        uint32_t bid = (uint32_t)u->lent_head;
        u->lent_head = u->meta[bid].next;
        buf_unref(u, bid);
    }
}

/* ------------------------------------------------------------------ */
/* batch mode on a loop (zcn_udp_set_batch)                            */
/* ------------------------------------------------------------------ */

/* Whether entries may go into batch_ev now: inside a zcn_loop_poll whose
 * batch has (or can be given) this socket's ZCN_EVENT_DATAGRAMS. Errors
 * held from before go in first, so the array keeps the order things
 * happened in. */
static bool batch_open(ZCN_UdpSocket *u)
{
    if (u->batch_event != NULL)
        return zcn_loop_polling(u->loop) != 0;
    ZCN_Event *e = zcn_loop_source_event(u->loop, ZCN_EVENT_DATAGRAMS, u->fd, u->batch_tag);
    if (e == NULL)
        return false;
    e->data = (const uint8_t *)u->batch_ev;
    e->len = u->ev_n;
    u->batch_event = e;
    zcn_udpi_batch_flush_errors(u);
    return true;
}

static void error_entry(ZCN_UdpSocket *u, int err)
{
    ZCN_UdpEvent *e = &u->batch_ev[u->ev_n++];
    memset(e, 0, sizeof *e);
    e->flags = ZCN_UDP_ERROR;
    e->full_len = (uint32_t)err;
    u->batch_event->len = u->ev_n;
}

/* Moves held errors into this poll's batch, as far as it is open and the
 * array has room. */
void zcn_udpi_batch_flush_errors(ZCN_UdpSocket *u)
{
    if (u->err_n == 0 || u->batch_ev == NULL || !batch_open(u))
        return;
    uint32_t k = 0;
    while (k < u->err_n && u->ev_n < u->batch_cap)
        error_entry(u, u->err_pending[k++]);
    memmove(u->err_pending, u->err_pending + k, (u->err_n - k) * sizeof u->err_pending[0]);
    u->err_n -= k;
}

/* An error of the socket, for a batch-mode caller: into this poll's batch
 * now, or held for the next (the oldest ERR_PENDING_MAX are kept; the
 * stats count every one). */
void zcn_udpi_batch_error(ZCN_UdpSocket *u, int err)
{
    if (u->batch_ev == NULL || u->destroying)
        return;
    if (u->err_n < ERR_PENDING_MAX)
        u->err_pending[u->err_n++] = err;
    zcn_udpi_batch_flush_errors(u);
}

/* A loop call starts a new batch: the last one's datagrams come back. */
void zcn_udpi_batch_end(ZCN_UdpSocket *u)
{
    zcn_udpi_end_batch(u);
    u->ev_n = 0;
    u->batch_event = NULL;
    zcn_udpi_batch_flush_errors(u); /* held ones: this poll reports them */
}

ZCN_Error zcn_udp_set_batch(ZCN_UdpSocket *u, ZCN_UdpEvent *events, uint32_t capacity,
                            uint32_t tag)
{
    if (u == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "socket is NULL");
    if (u->loop == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                        "batch mode is for sockets on a loop; this one has its own ring: "
                        "use zcn_udp_poll");
    if (u->recv_mode != ZCN_UDP_RECV_READINESS)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "batch mode needs the readiness receive mode");
    if ((events == NULL) != (capacity == 0))
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                        "events and capacity must be both set (batch mode) or both 0 (off)");
    if (u->in_callback || zcn_loop_in_callback(u->loop))
        return zcn_fail(ZCN_ERR_BUSY, "batch mode cannot change inside a callback");
    /* What an earlier array holds is given back: its caller is done with it. */
    zcn_udpi_end_batch(u);
    u->ev_n = 0;
    u->batch_event = NULL;
    u->err_n = 0;
    u->batch_ev = events;
    u->batch_cap = capacity;
    u->batch_tag = tag;
    return ZCN_OK;
}

static ZCN_Error recv_flow_guard(const ZCN_UdpSocket *u)
{
    if (u == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "socket is NULL");
    if (u->recv_mode != ZCN_UDP_RECV_READINESS)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                        "pause_recv/resume_recv need the readiness receive mode");
    return ZCN_OK;
}

ZCN_Error zcn_udp_pause_recv(ZCN_UdpSocket *u)
{
    ZCN_Error e = recv_flow_guard(u);
    if (e == ZCN_OK)
        u->recv_paused = true; /* an armed poll may still fire: read_batch reads nothing */
    return e;
}

ZCN_Error zcn_udp_resume_recv(ZCN_UdpSocket *u)
{
    ZCN_Error e = recv_flow_guard(u);
    if (e != ZCN_OK || !u->recv_paused)
        return e;
    u->recv_paused = false;
    /* Poll again (or read on): what waits in the socket is read from the
     * next turn. On a loop its next wait submits the SQE. */
    zcn_udpi_maybe_rearm(u);
    if (u->loop == NULL && u->started && u->in_callback == 0)
        return zcn_udpi_submit_now(u);
    return ZCN_OK;
}

/* ------------------------------------------------------------------ */
/* receiving                                                           */
/* ------------------------------------------------------------------ */

void zcn_udpi_arm_recv(ZCN_UdpSocket *u)
{
    struct io_uring_sqe *sqe = get_sqe(u);
    if (sqe == NULL)
        return; /* retried by maybe_rearm */
    if (u->recv_mode == ZCN_UDP_RECV_READINESS) {
        io_uring_prep_poll_add(sqe, u->fd, POLLIN);
        io_uring_sqe_set_data64(sqe, make_ud(u, OP_RECV, 0));
        u->recv_armed = true;
        u->unsubmitted = true;
        return;
    }
    /* MSG_TRUNC makes the kernel report the datagram's real size in
     * io_uring_recvmsg_out.payloadlen while copying only what fits. */
    io_uring_prep_recvmsg_multishot(sqe, u->fd, &u->rmsg, MSG_TRUNC);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = u->bgid;
    io_uring_sqe_set_data64(sqe, make_ud(u, OP_RECV, 0));
    u->recv_armed = true;
    u->unsubmitted = true;
}

static void emit_event(ZCN_UdpSocket *u, uint32_t bid, const void *peer, uint32_t peer_len,
                       const uint8_t *data, uint32_t len, uint32_t full_len, uint32_t flags)
{
    ZCN_UdpEvent *e = &u->ev[u->ev_n++];
    e->len = len;
    e->flags = flags;
    e->peer_len = peer_len;
    e->full_len = full_len;
    e->offset = (uint64_t)(data - u->slab);
    e->data = data;
    memset(e->peer, 0, sizeof e->peer);
    memcpy(e->peer, peer, peer_len);
    u->meta[bid].next = u->lent_head;
    u->lent_head = (int32_t)bid;
}

/* Hands one received buffer (refs 1) to the user: len bytes of a datagram
 * of full_len, room the bytes the buffer had for it. */
static void hand_over(ZCN_UdpSocket *u, uint32_t bid, const void *peer, uint32_t peer_len,
                      uint32_t len, uint32_t full_len, bool truncated)
{
    const uint8_t *data = buf_ptr(u, bid) + ZCN_UDP_HEADROOM;
    uint32_t flags = truncated || full_len > len ? ZCN_UDP_TRUNCATED : 0;
    if (peer_len > NAME_BYTES)
        peer_len = NAME_BYTES;
    u->stats.datagrams_received++;
    u->stats.bytes_received += len;
    if (flags & ZCN_UDP_TRUNCATED)
        u->stats.truncated++;
    if (u->ev != NULL) {
        emit_event(u, bid, peer, peer_len, data, len, full_len, flags);
        return;
    }
    if (u->on_datagram != NULL) {
        callback_enter(u);
        u->on_datagram(u->user_data, peer, (socklen_t)peer_len, data, len, flags);
        callback_leave(u);
    }
    buf_unref(u, bid);
}

/* A multishot recvmsg completion's buffer. */
static void deliver(ZCN_UdpSocket *u, uint32_t bid, int res)
{
    struct io_uring_recvmsg_out *o = io_uring_recvmsg_validate(buf_ptr(u, bid), res, &u->rmsg);
    if (o == NULL) { /* cannot happen: the kernel always writes the header */
        u->stats.recv_errors++;
        buf_unref(u, bid);
        return;
    }
    uint32_t room = (uint32_t)res - ZCN_UDP_HEADROOM;
    uint32_t len = o->payloadlen < room ? o->payloadlen : room;
    hand_over(u, bid, io_uring_recvmsg_name(o), o->namelen, len, o->payloadlen,
              (o->flags & MSG_TRUNC) != 0);
}

/* Readiness mode: makes the first `want` slots hold a buffer (and, with
 * large_rx, a spill); returns how many leading slots do (fewer when a
 * pool is empty: a slot without a spill would cut a large datagram). */
static uint32_t fill_slots(ZCN_UdpSocket *u, uint32_t want)
{
    for (uint32_t i = 0; i < want; i++) {
        if (u->rx_bid[i] == NIL) {
            int64_t bid = buf_take(u);
            if (bid < 0)
                return i;
            uint8_t *buf = buf_ptr(u, (uint32_t)bid);
            u->meta[bid].state = ZCN_BUF_RING; /* reserved for a receive */
            u->meta[bid].refs = 0;
            u->rx_bid[i] = (int32_t)bid;
            u->rx_held++;
            u->rx_iov[2 * i].iov_base = buf + ZCN_UDP_HEADROOM;
            u->rx_iov[2 * i].iov_len = u->buffer_size - ZCN_UDP_HEADROOM;
            u->rx_msgs[i].msg_hdr.msg_name = buf + sizeof(struct io_uring_recvmsg_out);
        }
        if (u->large_rx && u->rx_spill[i] == NIL) {
            int64_t bid = large_take(u);
            if (bid < 0)
                return i;
            u->meta[bid].state = ZCN_BUF_RING;
            u->meta[bid].refs = 0;
            u->rx_spill[i] = (int32_t)bid;
            u->rx_spills++;
            /* The rest of the datagram lands where it will follow its
             * first buffer_size - HEADROOM bytes once they are copied in. */
            size_t room = u->buffer_size - ZCN_UDP_HEADROOM;
            u->rx_iov[2 * i + 1].iov_base = buf_ptr(u, (uint32_t)bid) + ZCN_UDP_HEADROOM + room;
            u->rx_iov[2 * i + 1].iov_len = datagram_max(u) - room;
        }
    }
    return want;
}

/* Queues the NOP whose completion makes the loop read on (OP_RECV, RX_MORE):
 * it comes back on whichever ring and loop the socket runs in. */
static void queue_read_on(ZCN_UdpSocket *u)
{
    if (u->rx_more)
        return;
    struct io_uring_sqe *sqe = get_sqe(u);
    if (sqe == NULL) {
        u->rx_resume = true;
        return;
    }
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, make_ud(u, OP_RECV, RX_MORE));
    u->rx_more = true;
    u->unsubmitted = true;
}

/* Readiness mode: slot i's datagram of `full` bytes did not fit its small
 * buffer and went on into its spill. The small buffer's part (and the peer
 * name) is copied in front of the rest, the large buffer is handed over,
 * and the small one stays in the slot for the next read. */
static void deliver_spill(ZCN_UdpSocket *u, uint32_t i, uint32_t full)
{
    const struct msghdr *h = &u->rx_msgs[i].msg_hdr;
    uint32_t lbid = (uint32_t)u->rx_spill[i];
    u->rx_spill[i] = NIL;
    u->rx_spills--;
    uint8_t *large = buf_ptr(u, lbid);
    const struct iovec *head = &u->rx_iov[2 * i];
    memcpy(large + ZCN_UDP_HEADROOM, head->iov_base, head->iov_len);
    uint32_t peer_len = h->msg_namelen < NAME_BYTES ? h->msg_namelen : NAME_BYTES;
    uint8_t *peer = large + sizeof(struct io_uring_recvmsg_out);
    memcpy(peer, h->msg_name, peer_len);
    uint32_t room = (uint32_t)(head->iov_len + u->rx_iov[2 * i + 1].iov_len);
    u->meta[lbid].state = ZCN_BUF_RX;
    u->meta[lbid].refs = 1;
    u->stats.large_datagrams++;
    hand_over(u, lbid, peer, peer_len, full < room ? full : room, full,
              (h->msg_flags & MSG_TRUNC) != 0);
}

/* Readiness mode: one recvmmsg batch into the slots, delivered in order. */
static void read_into(ZCN_UdpSocket *u)
{
    uint32_t want = u->rx_slots;
    if (u->ev != NULL) {
        uint32_t room = u->ev_cap - u->ev_n;
        if (room == 0) { /* the poll batch is full: read on at the next call */
            queue_read_on(u);
            return;
        }
        if (room < want)
            want = room;
    }
    want = fill_slots(u, want);
    if (want == 0) {
        /* Datagrams wait in the socket (up to SO_RCVBUF) until a buffer
         * comes back; maybe_rearm then reads on. */
        u->stats.recv_exhaustion_events++;
        u->rx_resume = true;
        return;
    }
    for (uint32_t i = 0; i < want; i++)
        u->rx_msgs[i].msg_hdr.msg_namelen = NAME_BYTES;
    int n = -1;
    for (int attempt = 0; attempt < 2 && n < 0; attempt++) {
        /* MSG_TRUNC: msg_len is the datagram's real size. */
        n = recvmmsg(u->fd, u->rx_msgs, want, MSG_DONTWAIT | MSG_TRUNC, NULL);
        if (n >= 0 || errno == EAGAIN || errno == EWOULDBLOCK)
            break;
        /* A pending socket error (ECONNREFUSED after an ICMP error on a
         * connected socket) is returned once and cleared: read again. */
        int err = errno;
        u->stats.recv_errors++;
        u->stats.last_recv_error = err;
        zcn_udpi_batch_error(u, err);
        if (u->ev != NULL && u->ev_cap - u->ev_n < want) {
            /* the error took the batch's last room: the datagrams wait */
            want = u->ev_cap - u->ev_n;
            if (want == 0) {
                queue_read_on(u);
                return;
            }
        }
        errno = err;
    }
    if (n <= 0) {
        u->rx_idle = true; /* drained, or failing: the poll reports what comes next */
        return;
    }
    for (uint32_t i = 0; i < (uint32_t)n; i++) {
        const struct msghdr *h = &u->rx_msgs[i].msg_hdr;
        uint32_t full = u->rx_msgs[i].msg_len;
        uint32_t room = (uint32_t)u->rx_iov[2 * i].iov_len;
        if (ZCN_UNLIKELY(full > room && u->large_rx)) {
            deliver_spill(u, i, full);
            continue;
        }
        uint32_t bid = (uint32_t)u->rx_bid[i];
        u->rx_bid[i] = NIL;
        u->rx_held--;
        u->meta[bid].state = ZCN_BUF_RX;
        u->meta[bid].refs = 1;
        hand_over(u, bid, h->msg_name, h->msg_namelen, full < room ? full : room, full,
                  (h->msg_flags & MSG_TRUNC) != 0);
    }
    if ((uint32_t)n == want)
        queue_read_on(u); /* maybe more: after the loop has had its turn */
    else
        u->rx_idle = true; /* recvmmsg stopped at an empty queue */
}

/* read_into, in batch mode into this poll's batch (or, when the loop runs
 * callbacks, to the callback; when the poll's batch is full, at the next
 * poll). Nothing is read while paused. */
static void read_batch(ZCN_UdpSocket *u)
{
    if (u->recv_paused) {
        u->rx_idle = true; /* resume_recv polls again */
        return;
    }
    if (u->batch_ev == NULL) {
        read_into(u);
        return;
    }
    bool room = u->batch_event != NULL ? zcn_loop_polling(u->loop) != 0
                                       : zcn_loop_event_room(u->loop) != 0;
    if (!room) {
        if (zcn_loop_polling(u->loop))
            queue_read_on(u); /* no room in the poll's batch */
        else
            read_into(u); /* callback mode */
        return;
    }
    u->ev = u->batch_ev;
    u->ev_cap = u->batch_cap;
    read_into(u);
    u->ev = NULL;
    u->ev_cap = 0;
    /* The event only now, so a read that found nothing reports nothing;
     * reading took none of the poll batch's room, so it is there. */
    if (u->ev_n > 0 && batch_open(u))
        u->batch_event->len = u->ev_n;
}

/* Readiness mode: the poll (index 0) or the read-on NOP (RX_MORE). */
void zcn_udpi_on_ready(ZCN_UdpSocket *u, struct io_uring_cqe *cqe, uint32_t index)
{
    if (index == RX_MORE) {
        u->rx_more = false;
    } else {
        u->recv_armed = false; /* one-shot */
        u->rx_idle = false;
        if (cqe->res < 0) {
            if (cqe->res != -ECANCELED) {
                u->stats.recv_errors++;
                u->stats.last_recv_error = -cqe->res;
                zcn_udpi_batch_error(u, -cqe->res);
            }
            u->rx_idle = true; /* maybe_rearm polls again */
            return;
        }
    }
    if (!u->destroying)
        read_batch(u);
}

void zcn_udpi_on_recv(ZCN_UdpSocket *u, struct io_uring_cqe *cqe)
{
    if (!(cqe->flags & IORING_CQE_F_MORE))
        u->recv_armed = false;
    uint32_t bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
    /* A buffer the ring does not hold cannot be ours to take (a stray
     * completion): touching it would put it in the ring twice. */
    if ((cqe->flags & IORING_CQE_F_BUFFER) &&
        ZCN_LIKELY(bid < u->buffer_count && u->meta[bid].state == ZCN_BUF_RING)) {
        u->rx.count--;
        u->meta[bid].state = ZCN_BUF_RX;
        u->meta[bid].refs = 1;
        if (cqe->res >= (int)ZCN_UDP_HEADROOM && !u->destroying)
            deliver(u, bid, cqe->res);
        else
            buf_unref(u, bid);
    }
    if (cqe->res < 0) {
        switch (-cqe->res) {
        case ENOBUFS:
            /* The ring ran dry; datagrams wait in the socket (up to
             * SO_RCVBUF) until maybe_rearm finds buffers again. */
            u->stats.recv_exhaustion_events++;
            /* The ring is FIFO: a small one keeps the buffers the kernel
             * writes into warm in cache; it grows only when bursts need it. */
            if (u->br_target < u->br_max)
                u->br_target = u->br_target * 2 < u->br_max ? u->br_target * 2 : u->br_max;
            break;
        case ECANCELED:
        case EINTR:
        case EAGAIN:
            break;
        default:
            /* ECONNREFUSED after an ICMP error on a connected socket and
             * the like: the socket itself still works. */
            u->stats.recv_errors++;
            u->stats.last_recv_error = -cqe->res;
            break;
        }
    }
}

ZCN_Error zcn_udp_set_callback(ZCN_UdpSocket *u, void *user_data, ZCN_OnDatagram on_datagram)
{
    if (u == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "socket is NULL");
    u->user_data = user_data;
    u->on_datagram = on_datagram;
    return ZCN_OK;
}
