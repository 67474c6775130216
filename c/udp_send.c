/* The UDP socket's send side: the turn's sends queued in one sendmmsg
 * batch (same-peer runs of one size as UDP GSO sends) and flushed at the
 * end of the turn or at once with autoflush; io_uring SENDs once the
 * socket buffer is full; destinations checked; lent receive buffers sent
 * as they are, other data copied into pool buffers; the public send,
 * sendto, sendto_batch, acquire/release, sendto_buffer, autoflush and
 * flush calls, and the built-in echo. */
#include "udp.h"

/* ------------------------------------------------------------------ */
/* sending                                                             */
/* ------------------------------------------------------------------ */

void zcn_udpi_on_send(ZCN_UdpSocket *u, uint32_t index, int res)
{
    if (index >= u->slots_max)
        return;
    struct send_slot *sl = &u->slots[index];
    if (res < 0) {
        u->stats.send_errors++;
        u->stats.last_send_error = -res;
        zcn_udpi_batch_error(u, -res);
    } else {
        u->stats.datagrams_sent++;
        u->stats.bytes_sent += (uint64_t)res;
    }
    if (sl->async) {
        sl->async = false;
        u->sends_async--;
    }
    buf_unref(u, sl->bid);
    sl->next = u->slot_free;
    u->slot_free = (int32_t)index;
    u->sends_inflight--;
}

/* Hands send slot `index` (data and length in iov) to io_uring. */
static void send_async(ZCN_UdpSocket *u, uint32_t index, const struct iovec *iov)
{
    struct send_slot *sl = &u->slots[index];
    struct io_uring_sqe *sqe = get_sqe(u);
    if (sqe == NULL) { /* the SQ stays full even after a submit */
        zcn_udpi_on_send(u, index, -EBUSY);
        return;
    }
    io_uring_prep_send(sqe, u->fd, iov->iov_base, iov->iov_len, 0);
    if (!u->connected || sl->addr.sa.sa_family != AF_UNSPEC) {
        socklen_t alen = u->family == AF_INET6 ? sizeof sl->addr.in6 : sizeof sl->addr.in4;
        io_uring_prep_send_set_addr(sqe, &sl->addr.sa, (uint16_t)alen);
    }
    io_uring_sqe_set_data64(sqe, make_ud(u, OP_SEND, index));
    sl->async = true;
    u->sends_async++;
    u->unsubmitted = true;
}

/* Datagram i of the turn has completed with `res`. */
static inline void tx_done(ZCN_UdpSocket *u, uint32_t i, int res)
{
    zcn_udpi_on_send(u, u->tx_slot[i], res);
}

/* Datagrams from..n-1 of the turn wait for room in io_uring, in order. */
static void tx_rest_async(ZCN_UdpSocket *u, uint32_t from, uint32_t n)
{
    for (uint32_t i = from; i < n; i++)
        send_async(u, u->tx_slot[i], &u->tx_iov[i]);
}

/* Entry g of the batch failed with e. An error that says GSO cannot work
 * at this size (EINVAL, EMSGSIZE: the route's MTU) or at all (EIO: no
 * checksum offload or IPsec; ENOPROTOOPT, EOPNOTSUPP: no UDP_SEGMENT)
 * stops later batches from coalescing so, and the entry's datagrams are
 * sent one by one: a GSO limit costs no datagram. Any other error (e.g.
 * ECONNREFUSED, EACCES) is the destination's: every datagram of the entry
 * fails with it, as each would alone. Returns the datagram to continue from
 * in io_uring if the socket buffer filled, else n. */
static uint32_t tx_failed(ZCN_UdpSocket *u, uint32_t g, int e, uint32_t n)
{
    const struct msghdr *h = &u->tx_msgs[g].msg_hdr;
    uint32_t first = u->tx_first[g];
    uint32_t seg = (uint32_t)u->tx_iov[first].iov_len;
    bool gso_error = h->msg_iovlen > 1 && (e == EINVAL || e == EMSGSIZE || e == EIO ||
                                          e == ENOPROTOOPT || e == EOPNOTSUPP);
    if (!gso_error) {
        for (uint32_t i = first; i < first + (uint32_t)h->msg_iovlen; i++)
            tx_done(u, i, -e);
        return n;
    }
    if (e == EINVAL || e == EMSGSIZE)
        u->gso_size_max = seg - 1; /* seg > 0: empty datagrams never coalesce */
    else
        u->gso_size_max = 0;
    for (uint32_t i = first; i < first + (uint32_t)h->msg_iovlen; i++) {
        struct msghdr one = {.msg_name = h->msg_name, .msg_namelen = h->msg_namelen,
                             .msg_iov = &u->tx_iov[i], .msg_iovlen = 1};
        ssize_t r = sendmsg(u->fd, &one, MSG_DONTWAIT);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS))
            return i;
        tx_done(u, i, r < 0 ? -errno : (int)r);
    }
    return n;
}

/* Sends the turn's datagrams with sendmmsg, same-peer runs as GSO sends.
 * Each datagram completes here; once the socket buffer is full the rest go
 * to io_uring (send_async). */
void zcn_udpi_flush_tx(ZCN_UdpSocket *u)
{
    uint32_t g = 0, groups = u->tx_groups, n = u->tx_n;
    u->tx_n = 0;
    u->tx_groups = 0;
    while (g < groups) {
        int m;
        if (u->test_full_sndbuf) {
            errno = EAGAIN;
            m = -1;
        } else if (u->test_gso_errno != 0 && u->tx_msgs[g].msg_hdr.msg_iovlen > 1) {
            errno = u->test_gso_errno;
            u->test_gso_errno = 0;
            m = -1;
        } else {
            m = sendmmsg(u->fd, &u->tx_msgs[g], groups - g, MSG_DONTWAIT);
        }
        if (m > 0) {
            for (uint32_t k = g; k < g + (uint32_t)m; k++) {
                uint32_t first = u->tx_first[k];
                for (uint32_t i = first; i < first + (uint32_t)u->tx_msgs[k].msg_hdr.msg_iovlen; i++)
                    tx_done(u, i, (int)u->tx_iov[i].iov_len);
                if (u->tx_msgs[k].msg_hdr.msg_iovlen > 1)
                    u->stats.gso_sends++;
            }
            g += (uint32_t)m;
            continue;
        }
        int e = m < 0 ? errno : EIO;
        if (e == EINTR)
            continue;
        if (e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS) {
            tx_rest_async(u, u->tx_first[g], n);
            return;
        }
        uint32_t stop = tx_failed(u, g, e, n);
        if (stop < n) {
            tx_rest_async(u, stop, n);
            return;
        }
        g++; /* the rest go on */
    }
}

/* Whether datagram `len` to `addr` (NULL: the connected peer) may join the
 * last sendmmsg entry as one more GSO segment: same peer, the entry's
 * segments all of the first one's size, this one no larger (a shorter one
 * ends the entry), within the GSO limits. */
static bool tx_can_join(const ZCN_UdpSocket *u, const struct sockaddr *addr, socklen_t alen,
                        uint32_t len)
{
    if (u->tx_groups == 0 || len == 0)
        return false;
    const struct msghdr *h = &u->tx_msgs[u->tx_groups - 1].msg_hdr;
    size_t seg = u->tx_iov[u->tx_first[u->tx_groups - 1]].iov_len;
    if (seg > u->gso_size_max || len > seg || u->tx_iov[u->tx_n - 1].iov_len != seg)
        return false;
    if (h->msg_iovlen >= GSO_SEGMENTS_MAX || u->tx_group_bytes + len > GSO_BYTES_MAX)
        return false;
    if (addr == NULL || h->msg_name == NULL)
        return addr == NULL && h->msg_name == NULL;
    return h->msg_namelen == alen && memcmp(h->msg_name, addr, alen) == 0;
}

/* Adds datagram iov (send slot `index`, destination addr of alen bytes
 * stored in the slot, or NULL) to the turn's sendmmsg batch. */
static void tx_queue(ZCN_UdpSocket *u, uint32_t index, const struct sockaddr *addr,
                     socklen_t alen, struct iovec iov)
{
    bool join = tx_can_join(u, addr, alen, (uint32_t)iov.iov_len);
    uint32_t k = u->tx_n++;
    u->tx_iov[k] = iov;
    u->tx_slot[k] = index;
    if (join) {
        uint32_t first = u->tx_first[u->tx_groups - 1];
        struct msghdr *h = &u->tx_msgs[u->tx_groups - 1].msg_hdr;
        if (h->msg_iovlen == 1) { /* the second datagram: now a GSO send */
            struct cmsghdr *c = &u->tx_ctl[first].align;
            c->cmsg_level = SOL_UDP;
            c->cmsg_type = UDP_SEGMENT;
            c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t seg = (uint16_t)u->tx_iov[first].iov_len;
            memcpy(CMSG_DATA(c), &seg, sizeof seg);
            h->msg_control = c;
            h->msg_controllen = GSO_CTL_BYTES;
        }
        h->msg_iovlen++;
        u->tx_group_bytes += (uint32_t)iov.iov_len;
        return;
    }
    uint32_t g = u->tx_groups++;
    u->tx_first[g] = k;
    u->tx_group_bytes = (uint32_t)iov.iov_len;
    struct msghdr *h = &u->tx_msgs[g].msg_hdr;
    h->msg_name = addr != NULL ? &u->slots[index].addr : NULL;
    h->msg_namelen = addr != NULL ? alen : 0;
    h->msg_iov = &u->tx_iov[k];
    h->msg_iovlen = 1;
    h->msg_control = NULL;
    h->msg_controllen = 0;
}

/* Checks a destination; on success *addr_out is the address to use (NULL
 * for the connected peer). */
static ZCN_Error check_dest(const ZCN_UdpSocket *u, const struct sockaddr *addr, socklen_t len,
                            size_t data_len)
{
    if (addr == NULL) {
        if (!u->connected)
            return zcn_fail((ZCN_Error)EDESTADDRREQ,
                            "no address given and the socket is not connected");
    } else {
        socklen_t need = u->family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                               : sizeof(struct sockaddr_in);
        if (len < need || addr->sa_family != u->family)
            return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                            "address is not a sockaddr_in%s of %u bytes (family %d, len %u)",
                            u->family == AF_INET6 ? "6" : "", (unsigned)need,
                            (int)addr->sa_family, (unsigned)len);
        uint16_t port = u->family == AF_INET6 ? ((const struct sockaddr_in6 *)addr)->sin6_port
                                              : ((const struct sockaddr_in *)addr)->sin_port;
        if (port == 0)
            return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "destination port 0");
    }
    if (data_len > datagram_max(u))
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "datagram of %zu bytes is over the UDP limit %zu",
                        data_len, datagram_max(u));
    return ZCN_OK;
}

/* Prepares the send SQE for buffer bid (the caller holds one reference for
 * it). Fails only for lack of a slot or SQE; the caller still owns the
 * reference then. */
static ZCN_Error queue_send(ZCN_UdpSocket *u, const struct sockaddr *addr, uint32_t bid,
                            const uint8_t *data, uint32_t len)
{
    if (u->slot_free == NIL) {
        u->stats.send_exhaustion_drops++;
        return zcn_fail(ZCN_ERR_QUEUE_FULL,
                        "%u sends in flight (sends_max): run the loop to complete them",
                        u->slots_max);
    }
    int32_t index = u->slot_free;
    struct send_slot *sl = &u->slots[index];
    u->slot_free = sl->next;
    sl->bid = bid;
    socklen_t alen = 0;
    if (addr != NULL) {
        alen = u->family == AF_INET6 ? sizeof sl->addr.in6 : sizeof sl->addr.in4;
        memcpy(&sl->addr, addr, alen);
    } else {
        sl->addr.sa.sa_family = AF_UNSPEC; /* the connected peer */
    }
    u->sends_inflight++;
    u->unsubmitted = true;
    struct iovec iov = {(void *)data, len};
    if (u->tx_n == TX_BATCH)
        zcn_udpi_flush_tx(u);
    if (u->sends_async > 0) { /* keep the order behind the waiting ones */
        send_async(u, (uint32_t)index, &iov);
        return ZCN_OK;
    }
    tx_queue(u, (uint32_t)index, addr != NULL ? &sl->addr.sa : NULL, alen, iov);
    return ZCN_OK;
}

/* The id of the buffer data points into, or -1 if it is in neither slab. */
static int64_t buffer_of(const ZCN_UdpSocket *u, const uint8_t *data)
{
    const uint8_t *end = u->slab + (size_t)u->buffer_count * u->buffer_size;
    if (data >= u->slab && data < end)
        return (int64_t)((size_t)(data - u->slab) / u->buffer_size);
    const uint8_t *lend = u->large_slab + (size_t)u->large_count * ZCN_UDP_LARGE_BUFFER_SIZE;
    if (u->large_count > 0 && data >= u->large_slab && data < lend)
        return u->buffer_count + (int64_t)((size_t)(data - u->large_slab) /
                                           ZCN_UDP_LARGE_BUFFER_SIZE);
    return -1;
}

/* The buffer holding lent receive data at [data, data+len), or -1 if the
 * memory is not in the slab. -2: in the slab but not sendable as is. */
static int64_t lent_buffer(const ZCN_UdpSocket *u, const uint8_t *data, size_t len)
{
    int64_t bid = buffer_of(u, data);
    if (bid < 0)
        return -1;
    size_t off = (size_t)(data - buf_ptr(u, (uint32_t)bid));
    if (len > buf_bytes(u, (uint32_t)bid) - off) /* no sum: len may be anything */
        return -2;
    uint8_t st = u->meta[bid].state;
    if (st == ZCN_BUF_USER)
        return -1; /* the user's own buffer: copy, it stays theirs */
    if ((st != ZCN_BUF_RX && st != ZCN_BUF_TX) || u->meta[bid].refs == 0)
        return -2;
    return bid;
}

/* A buffer for a copied send of len bytes: a small one when it fits, else
 * a large one, as long as the readiness receive keeps enough to give each
 * of its slots a spill again. */
static ZCN_Error copy_buffer(ZCN_UdpSocket *u, size_t len, uint32_t *bid_out)
{
    int64_t bid;
    if (len <= u->buffer_size) {
        bid = buf_take(u);
    } else if (u->large_count == 0) {
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                        "datagram of %zu bytes does not fit a %zu-byte pool buffer "
                        "(raise buffer_size, or drop ZCN_UDP_SMALL_ONLY)", len, u->buffer_size);
    } else {
        uint32_t spills_wanted = u->large_rx ? u->rx_slots - u->rx_spills : 0;
        bid = u->large_free > spills_wanted ? large_take(u) : -1;
    }
    if (bid < 0) {
        u->stats.send_exhaustion_drops++;
        return zcn_fail(ZCN_ERR_EXHAUSTED, "no free %s buffer for a %zu-byte copy",
                        len <= u->buffer_size ? "pool" : "large", len);
    }
    *bid_out = (uint32_t)bid;
    return ZCN_OK;
}

static ZCN_Error send_one(ZCN_UdpSocket *u, const struct sockaddr *addr, socklen_t addr_len,
                          const uint8_t *data, size_t len)
{
    if (data == NULL && len != 0)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "data is NULL");
    ZCN_Error e = check_dest(u, addr, addr_len, len);
    if (e != ZCN_OK)
        return e;
    int64_t bid = len == 0 ? -1 : lent_buffer(u, data, len);
    if (bid == -2)
        return zcn_fail(ZCN_ERR_FOREIGN_POINTER,
                        "data points into a receive buffer that is no longer lent");
    if (bid >= 0) {
        u->meta[bid].refs++;
        e = queue_send(u, addr, (uint32_t)bid, data, (uint32_t)len);
        if (e != ZCN_OK) {
            u->meta[bid].refs--;
            return e;
        }
        u->stats.sends_zero_copy++;
        return ZCN_OK;
    }
    uint32_t cbid = 0;
    e = copy_buffer(u, len, &cbid);
    if (e != ZCN_OK)
        return e;
    uint8_t *copy = buf_ptr(u, cbid);
    if (len > 0)
        memcpy(copy, data, len);
    u->meta[cbid].state = ZCN_BUF_TX;
    u->meta[cbid].refs = 1;
    e = queue_send(u, addr, cbid, copy, (uint32_t)len);
    if (e != ZCN_OK) {
        u->meta[cbid].refs = 0;
        recycle(u, cbid);
        return e;
    }
    u->stats.sends_copied++;
    return ZCN_OK;
}

ZCN_Error zcn_udpi_submit_now(ZCN_UdpSocket *u)
{
    if (!u->unsubmitted)
        return ZCN_OK;
    if (u->loop == NULL && !u->started)
        return ZCN_OK; /* start() submits */
    zcn_udpi_flush_tx(u);
    if (io_uring_sq_ready(u->ring) == 0) {
        u->unsubmitted = false;
        return ZCN_OK; /* everything went by sendmmsg */
    }
    int ret = zcn_uring_submit(u->ring);
    if (ret < 0 && ret != -EBUSY && ret != -EAGAIN)
        return zcn_fail((ZCN_Error)-ret, "io_uring_submit: %s", strerror(-ret));
    u->unsubmitted = false;
    return ZCN_OK;
}

/* Inside a callback or a poll batch the loop submits at the end of the
 * turn, batching; outside, autoflush submits at once. */
static ZCN_Error after_queue(ZCN_UdpSocket *u)
{
    if (u->in_callback || (u->loop != NULL && zcn_loop_in_callback(u->loop)) ||
        !u->autoflush)
        return ZCN_OK;
    return zcn_udpi_submit_now(u);
}

static ZCN_Error send_guard(ZCN_UdpSocket *u)
{
    if (u == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "socket is NULL");
    ZCN_Error e = owner_check(u);
    if (e != ZCN_OK) {
        u->stats.send_exhaustion_drops++;
        return e;
    }
    return zcn_udpi_start(u);
}

ZCN_Error zcn_udp_sendto(ZCN_UdpSocket *u, const struct sockaddr *addr, socklen_t addr_len,
                         const uint8_t *data, size_t len)
{
    ZCN_Error e = send_guard(u);
    if (e != ZCN_OK)
        return e;
    e = send_one(u, addr, addr_len, data, len);
    if (e != ZCN_OK)
        return e;
    return after_queue(u);
}

ZCN_Error zcn_udp_send(ZCN_UdpSocket *u, const uint8_t *data, size_t len)
{
    return zcn_udp_sendto(u, NULL, 0, data, len);
}

ZCN_Error zcn_udp_sendto_batch(ZCN_UdpSocket *u, const ZCN_UdpMessage *msgs, size_t count,
                               size_t *queued_out)
{
    if (queued_out != NULL)
        *queued_out = 0;
    ZCN_Error e = send_guard(u);
    if (e != ZCN_OK)
        return e;
    if (msgs == NULL && count != 0)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "msgs is NULL");
    size_t i = 0;
    for (; i < count; i++) {
        e = send_one(u, msgs[i].addr, msgs[i].addr_len, msgs[i].data, msgs[i].len);
        if (e != ZCN_OK)
            break;
    }
    if (queued_out != NULL)
        *queued_out = i;
    /* What was queued goes out even if a later message failed. */
    ZCN_Error se = after_queue(u);
    return e != ZCN_OK ? e : se;
}

uint8_t *zcn_udp_acquire_buffer(ZCN_UdpSocket *u, size_t *capacity_out)
{
    if (u == NULL)
        return NULL;
    return zcn_user_buffer_acquire(u->pool, u->meta, u->slab, u->buffer_size, capacity_out);
}

ZCN_Error zcn_udp_release_buffer(ZCN_UdpSocket *u, uint8_t *buffer)
{
    if (u == NULL || buffer == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "socket or buffer is NULL");
    return zcn_user_buffer_release(u->pool, u->meta, buffer, "zcn_udp_acquire_buffer");
}

ZCN_Error zcn_udp_sendto_buffer(ZCN_UdpSocket *u, const struct sockaddr *addr,
                                socklen_t addr_len, uint8_t *buffer, size_t len)
{
    ZCN_Error e = send_guard(u);
    if (e != ZCN_OK)
        return e;
    if (buffer == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "buffer is NULL");
    int64_t bid = zcn_user_buffer_index(u->pool, u->meta, buffer);
    if (bid < 0)
        return zcn_fail(ZCN_ERR_FOREIGN_POINTER, "not a buffer from zcn_udp_acquire_buffer");
    if (len > u->buffer_size)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "len %zu is larger than the buffer (%zu)", len,
                        u->buffer_size);
    e = check_dest(u, addr, addr_len, len);
    if (e != ZCN_OK)
        return e;
    u->meta[bid].state = ZCN_BUF_TX;
    u->meta[bid].refs = 1;
    e = queue_send(u, addr, (uint32_t)bid, buffer, (uint32_t)len);
    if (e != ZCN_OK) {
        u->meta[bid].state = ZCN_BUF_USER;
        u->meta[bid].refs = 0;
        return e;
    }
    u->stats.sends_zero_copy++;
    return after_queue(u);
}

ZCN_Error zcn_udp_set_autoflush(ZCN_UdpSocket *u, int on)
{
    if (u == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "socket is NULL");
    u->autoflush = on != 0;
    return ZCN_OK;
}

ZCN_Error zcn_udp_flush(ZCN_UdpSocket *u)
{
    ZCN_Error e = send_guard(u);
    if (e != ZCN_OK)
        return e;
    return zcn_udpi_submit_now(u);
}

static void echo_on_datagram(void *user_data, const struct sockaddr *peer, socklen_t peer_len,
                             const uint8_t *data, size_t len, uint32_t flags)
{
    ZCN_UdpSocket *u = user_data;
    if (flags & ZCN_UDP_TRUNCATED)
        return;
    /* A refused echo is counted in the stats (send_exhaustion_drops). */
    (void)zcn_udp_sendto(u, peer, peer_len, data, len);
}

ZCN_Error zcn_udp_use_echo_handler(ZCN_UdpSocket *u)
{
    if (u == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "socket is NULL");
    u->on_datagram = echo_on_datagram;
    u->user_data = u;
    return ZCN_OK;
}
