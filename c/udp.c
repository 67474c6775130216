/* UDP sockets: two ways to receive into pool buffers, sends from pool
 * buffers (copied, moved from a receive, or handed over by the user), on
 * the socket's own ring or on a TCP server's.
 *
 * Receiving (ZCN_UdpConfig.recv_mode):
 * - readiness (the default): recvmmsg(MSG_DONTWAIT) reads up to RX_BATCH
 *   datagrams straight into pool buffers held ready in rx_bid[]. A full
 *   batch asks for another turn with a NOP (OP_RECV index RX_MORE), so sends
 *   and other sources get their turn between batches; a short one means the
 *   socket is empty, and only then is a one-shot poll armed. (A multishot
 *   poll would stay on the socket's wait queue, where every datagram we send
 *   wakes it from sock_wfree: measurably dearer than one poll per drain.)
 * - multishot: a multishot recvmsg on a provided-buffer ring built from the
 *   pool. No system call per batch, but a CQE and a wake-up per datagram;
 *   slightly dearer than readiness on Linux 6.18 (docs/PERFORMANCE.md).
 *
 * Sending: a turn's sends queue in tx_msgs and go to the kernel with one
 * sendmmsg (at the end of the loop's turn, or at once outside callbacks
 * with autoflush); a UDP send completes in that call, so the buffer is
 * free again right after it. Runs of datagrams to the same peer with the
 * same size share one tx_msgs entry, a UDP GSO send (UDP_SEGMENT): the
 * kernel does the route, IP and device work once for the run and cuts it
 * into the same datagrams the peer would have got one by one. Only when
 * the socket buffer is full (EAGAIN) do the rest become io_uring SENDs,
 * which wait for room; while any is in flight, later sends follow them
 * there so datagrams leave in order. (An io_uring SEND per datagram would
 * add an SQE, a CQE and task work to the same kernel send.)
 *
 * Receive buffer layout, the same for both:
 *   [16 bytes: io_uring_recvmsg_out][peer name NAME_BYTES][payload]
 * so the payload always starts ZCN_UDP_HEADROOM bytes into the buffer.
 *
 * Large datagrams: besides its buffer_count small buffers a socket has
 * large ones (ZCN_UDP_LARGE_BUFFER_SIZE, any datagram fits) in the same
 * slab, after the small ones; buffer ids run on, small ones first. A
 * readiness read cannot know a datagram's size before recvmmsg consumes
 * it, so each receive slot reads into two iovecs: its small buffer, then
 * the rest of a large buffer parked behind the slot (its "spill"). A
 * datagram that fits the small buffer never touches the spill; one that
 * does not continues into the spill, and its first bytes (the small
 * buffer's room) are copied in front of the rest there, so it is handed
 * over whole and contiguous in the large buffer, and the slot takes a new
 * spill. The spills' pages stay untouched, so unused address space, until
 * a large datagram comes. The multishot receive cannot do this (the kernel
 * picks one ring buffer before it sees the datagram): there, as with
 * ZCN_UDP_SMALL_ONLY, a datagram over buffer_size arrives truncated. In
 * both modes a copied send over buffer_size goes from a large buffer.
 *
 * A buffer's life: ring -> received (refs = 1 while lent to the callback or
 * poll batch) -> maybe referenced by sends -> back to the ring (or the pool,
 * which keeps a reserve for copied sends) when the last reference drops.
 *
 * SQE user_data: zcn_source_ud(source_id, tag) with tag = op | gen | index.
 * On a server's ring a destroyed socket's completions must never reach the
 * socket that takes its source id (and buffer group) next: destroy cancels
 * its requests, waits for the kernel to let go of them, and retires the
 * completions already posted but not yet reaped (retire_posted); it gives
 * the source id up only once every request's last completion is accounted
 * for (kernel_reqs), lingering until the server's loop has reaped the rest
 * when that cannot be done at once. gen, 6 bits, is a second line only.
 *
 * This file: completions dispatched by user_data, the wake-ups, the loop
 * calls (run, run_once, poll, stop, wakeup_fd), the test hooks, socket
 * options and multicast, create and destroy, the queries. The receive
 * side is in c/udp_recv.c, the send side in c/udp_send.c; c/udp.h holds
 * what they share.
 */
#include "udp.h"

#ifndef SO_MEMINFO
#define SO_MEMINFO 55 /* Linux 4.12 */
#endif
#define SK_MEMINFO_DROPS 8 /* index in the SO_MEMINFO array (linux/sock_diag.h) */
#define SK_MEMINFO_VARS 9

static _Atomic uint32_t next_gen;
static _Atomic uint32_t lingering_sockets; /* zcn_udp_test_lingering */

/* ------------------------------------------------------------------ */
/* completions and the loop                                            */
/* ------------------------------------------------------------------ */

static void arm_wake(ZCN_UdpSocket *u)
{
    struct io_uring_sqe *sqe = zcn_get_sqe(u->ring);
    if (sqe == NULL)
        return;
    io_uring_prep_poll_multishot(sqe, u->wake_fd, POLLIN);
    io_uring_sqe_set_data64(sqe, make_ud(u, OP_WAKE, 0));
    u->wake_armed = true;
    u->unsubmitted = true;
}

static void on_wake(ZCN_UdpSocket *u, struct io_uring_cqe *cqe)
{
    if (!(cqe->flags & IORING_CQE_F_MORE))
        u->wake_armed = false;
    zcn_eventfd_drain(u->wake_fd);
    if (!u->wake_armed && !u->destroying)
        arm_wake(u);
}

static void free_socket(ZCN_UdpSocket *u);

/* A receive's or send's last completion: the kernel holds one less. */
static inline bool ends_request(enum op op, const struct io_uring_cqe *cqe)
{
    return (op == OP_RECV || op == OP_SEND) && !(cqe->flags & IORING_CQE_F_MORE);
}

static void handle_cqe(zcn_source *src, struct io_uring_cqe *cqe)
{
    ZCN_UdpSocket *u = (ZCN_UdpSocket *)src;
    uint32_t tag = zcn_source_tag(io_uring_cqe_get_data64(cqe));
    if (ZCN_UNLIKELY(tag_gen(tag) != (u->gen & 0x3fu))) {
        u->test_stale++; /* an earlier socket's: retire_posted prevents it */
        return;
    }
    if (ends_request(tag_op(tag), cqe))
        u->kernel_reqs--;
    if (ZCN_UNLIKELY(u->lingering)) {
        /* Destroyed: only the count matters; the last one frees it all
         * (the server touches nothing of ours after this call). */
        if (u->kernel_reqs == 0) {
            atomic_fetch_sub(&lingering_sockets, 1);
            free_socket(u);
        }
        return;
    }
    switch (tag_op(tag)) {
    case OP_RECV:
        if (u->recv_mode == ZCN_UDP_RECV_READINESS)
            zcn_udpi_on_ready(u, cqe, tag_index(tag));
        else
            zcn_udpi_on_recv(u, cqe);
        break;
    case OP_SEND: /* only a send that went to io_uring completes here */
        if (tag_index(tag) < u->slots_max && u->slots[tag_index(tag)].async)
            zcn_udpi_on_send(u, tag_index(tag), cqe->res);
        break;
    case OP_WAKE:
        if (tag_index(tag) == WAKE_PIPE)
            zcn_wakeup_on_cqe(&u->wakeup, cqe);
        else
            on_wake(u, cqe);
        break;
    default:
        break;
    }
    zcn_udpi_maybe_rearm(u);
}

void zcn_udp_test_full_sndbuf(ZCN_UdpSocket *u, bool on)
{
    u->test_full_sndbuf = on;
}

void zcn_udp_test_fail_gso(ZCN_UdpSocket *u, int err)
{
    u->test_gso_errno = err;
}

void zcn_udp_test_fail_sqes(ZCN_UdpSocket *u, uint32_t count)
{
    u->test_sqe_failures = count;
}

uint64_t zcn_udp_test_stale_completions(const ZCN_UdpSocket *u)
{
    return u->test_stale;
}

uint32_t zcn_udp_test_lingering(void)
{
    return atomic_load(&lingering_sockets);
}

/* The server's loop is about to wait: send what callbacks queued, then
 * resume receiving if it stopped for want of a buffer or an SQE. On its
 * own ring the socket's loop does that every turn; in a server's loop
 * only this hook runs every turn, and the socket's own completions, which
 * also retry, never come once it has stopped reading. The sends go first:
 * the buffers they free may be the ones the receive waits for. */
static void flush_source(zcn_source *src)
{
    ZCN_UdpSocket *u = (ZCN_UdpSocket *)src;
    if (u->lingering)
        return;
    zcn_udpi_flush_tx(u);
    if (u->in_callback == 0) /* zcn_server_flush from our callback: the batch rearms */
        zcn_udpi_maybe_rearm(u);
    zcn_udpi_batch_flush_errors(u); /* batch mode: errors held since the last poll */
}

static void publish_source(zcn_source *src); /* with zcn_udp_stats, below */

/* The loop starts a new poll batch: in batch mode the last one's datagrams
 * come back (their buffers, the array). */
static void end_batch_source(zcn_source *src)
{
    ZCN_UdpSocket *u = (ZCN_UdpSocket *)src;
    if (u->lingering || u->batch_ev == NULL)
        return;
    zcn_udpi_batch_end(u);
}

/* Enables the ring on the calling thread (own ring) and arms the receive. */
ZCN_Error zcn_udpi_start(ZCN_UdpSocket *u)
{
    if (u->started)
        return ZCN_OK;
    if (u->loop == NULL) {
        ZCN_Error e = zcn_ring_enable(u->ring_handle);
        if (e != ZCN_OK)
            return e;
        arm_wake(u);
    }
    u->started = true;
    u->rx_idle = true; /* readiness: until the first poll fires */
    zcn_udpi_arm_recv(u);
    if (u->loop == NULL)
        return zcn_udpi_submit_now(u);
    return ZCN_OK; /* the server's loop submits */
}

static int wait_cqe(ZCN_UdpSocket *u, int timeout_ms)
{
    if (!u->destroying)
        zcn_wakeup_arm(&u->wakeup, u->ring, make_ud(u, OP_WAKE, WAKE_PIPE));
    zcn_udpi_flush_tx(u);
    ring_publish(u);
    u->unsubmitted = false;
    return zcn_wait(u->ring, timeout_ms);
}

static uint32_t reap(ZCN_UdpSocket *u)
{
    struct io_uring_cqe *cqe;
    unsigned head;
    uint32_t seen = 0;
    io_uring_for_each_cqe(u->ring, head, cqe)
    {
        if (seen == CQE_BATCH || (u->ev != NULL && u->ev_n == u->ev_cap))
            break;
        handle_cqe(&u->src, cqe);
        seen++;
    }
    io_uring_cq_advance(u->ring, seen);
    return seen;
}

/* One wait and the completions it brought. Sends queued by callbacks are
 * submitted by the next wait (zcn_udp_run) or when run_once/poll return. */
static ZCN_Error turn(ZCN_UdpSocket *u, int timeout_ms, uint32_t *handled)
{
    *handled = 0;
    zcn_udpi_maybe_rearm(u);
    int ret = wait_cqe(u, timeout_ms);
    if (ret == -EINTR) {
        zcn_wakeup_consume(&u->wakeup);
        return zcn_fail((ZCN_Error)EINTR, "interrupted by a signal");
    }
    if (ret < 0 && ret != -ETIME && ret != -EAGAIN && ret != -EBUSY)
        return zcn_fail((ZCN_Error)-ret, "io_uring_enter: %s", strerror(-ret));
    *handled = reap(u);
    zcn_udpi_maybe_rearm(u);
    if (zcn_wakeup_take(&u->wakeup))
        return zcn_fail((ZCN_Error)EINTR, "interrupted: a byte came on the wakeup fd");
    return ZCN_OK;
}

static ZCN_Error loop_guard(ZCN_UdpSocket *u)
{
    if (u == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "socket is NULL");
    if (u->loop != NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                        "this socket runs in its server's loop: drive the server instead");
    if (u->in_callback)
        return zcn_fail(ZCN_ERR_BUSY, "the loop cannot be run from inside a callback");
    ZCN_Error e = owner_check(u);
    if (e != ZCN_OK)
        return e;
    return zcn_udpi_start(u);
}

static ZCN_Error turn_cb(void *loop, int timeout_ms, uint32_t *handled)
{
    return turn(loop, timeout_ms, handled);
}

/* A loop call returns: sends its callbacks queued go now, also when the
 * call ends with EINTR (the wakeup pipe ends it after a turn's work). */
static ZCN_Error submit_after(ZCN_UdpSocket *u, ZCN_Error err)
{
    if (err != ZCN_OK && err != (ZCN_Error)EINTR)
        return err;
    ZCN_Error e = zcn_udpi_submit_now(u);
    return e != ZCN_OK ? e : err;
}

/* Ends the previous poll batch, then runs turns (zcn_run_until). */
static ZCN_Error run_until(ZCN_UdpSocket *u, int timeout_ms, uint32_t *handled_out, bool *stopped)
{
    zcn_udpi_end_batch(u);
    ZCN_Error err = zcn_run_until(u, turn_cb, &u->stop_requested, timeout_ms, handled_out, stopped);
    zcn_udpi_publish_stats(u); /* for zcn_udp_stats on other threads */
    return err;
}

ZCN_Error zcn_udp_run_once(ZCN_UdpSocket *u)
{
    return zcn_udp_run_once_timeout(u, -1, NULL);
}

ZCN_Error zcn_udp_run_once_timeout(ZCN_UdpSocket *u, int timeout_ms, uint32_t *handled_out)
{
    if (handled_out != NULL)
        *handled_out = 0;
    ZCN_Error err = loop_guard(u);
    if (err != ZCN_OK)
        return err;
    u->ev = NULL;
    bool stopped;
    err = run_until(u, timeout_ms, handled_out, &stopped);
    return submit_after(u, err);
}

ZCN_Error zcn_udp_poll(ZCN_UdpSocket *u, ZCN_UdpEvent *events, uint32_t capacity, int timeout_ms,
                       uint32_t *count_out)
{
    if (count_out != NULL)
        *count_out = 0;
    ZCN_Error err = loop_guard(u);
    if (err != ZCN_OK)
        return err;
    if (events == NULL || capacity == 0)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "events must hold at least 1 entry");
    u->ev = events;
    u->ev_cap = capacity;
    u->ev_n = 0;
    bool stopped;
    err = run_until(u, timeout_ms, NULL, &stopped);
    err = submit_after(u, err); /* sends from this turn go now, not at the next call */
    if (count_out != NULL)
        *count_out = u->ev_n;
    u->ev = NULL;
    u->ev_cap = 0;
    return err;
}

ZCN_Error zcn_udp_run(ZCN_UdpSocket *u)
{
    ZCN_Error err = loop_guard(u);
    if (err != ZCN_OK)
        return err;
    u->ev = NULL;
    for (;;) {
        bool stopped = false;
        err = run_until(u, -1, NULL, &stopped);
        if (stopped) /* sends queued meanwhile go now, not at a next wait */
            return err == ZCN_OK || err == (ZCN_Error)EINTR ? zcn_udpi_submit_now(u) : err;
        if (err != ZCN_OK && err != (ZCN_Error)EINTR)
            return err;
    }
}

ZCN_Error zcn_udp_stop(ZCN_UdpSocket *u)
{
    /* As zcn_server_stop: the registry is looked up, never *u, so a socket
     * destroyed or being destroyed is simply not found. Sockets on a server
     * are never registered (drive and stop the server instead). */
    int slot = zcn_live_acquire(u);
    if (slot == -1)
        return ZCN_ERR_INVALID_ARGUMENT; /* no detail: must stay signal-safe */
    atomic_store_explicit(&u->stop_requested, 1, memory_order_release);
    zcn_eventfd_wake(u->wake_fd);
    zcn_live_release(slot);
    return ZCN_OK;
}

ZCN_Error zcn_udp_wakeup_fd(ZCN_UdpSocket *u, int *fd_out)
{
    if (fd_out != NULL)
        *fd_out = -1;
    if (u == NULL || fd_out == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, u == NULL ? "socket is NULL" : "fd_out is NULL");
    if (u->loop != NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                        "this socket runs in its server's loop: use zcn_server_wakeup_fd");
    return zcn_wakeup_open(&u->wakeup, fd_out);
}

/* ------------------------------------------------------------------ */
/* options                                                             */
/* ------------------------------------------------------------------ */

static ZCN_Error set_int_opt(int fd, int level, int name, int value, const char *what)
{
    if (setsockopt(fd, level, name, &value, sizeof value) != 0)
        return zcn_fail((ZCN_Error)errno, "%s: %s", what, strerror(errno));
    return ZCN_OK;
}

static ZCN_Error apply_options(int fd, int family, const ZCN_UdpConfig *cfg)
{
    ZCN_Error e = ZCN_OK;
    if (cfg->flags & ZCN_UDP_REUSEADDR)
        e = set_int_opt(fd, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR");
    if (e == ZCN_OK && (cfg->flags & ZCN_UDP_REUSEPORT))
        e = set_int_opt(fd, SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT");
    if (e == ZCN_OK && (cfg->flags & ZCN_UDP_BROADCAST))
        e = set_int_opt(fd, SOL_SOCKET, SO_BROADCAST, 1, "SO_BROADCAST");
    if (e == ZCN_OK && (cfg->flags & ZCN_UDP_V6ONLY) && family == AF_INET6)
        e = set_int_opt(fd, IPPROTO_IPV6, IPV6_V6ONLY, 1, "IPV6_V6ONLY");
    if (e == ZCN_OK && cfg->rcvbuf > 0)
        e = set_int_opt(fd, SOL_SOCKET, SO_RCVBUF, cfg->rcvbuf, "SO_RCVBUF");
    if (e == ZCN_OK && cfg->sndbuf > 0)
        e = set_int_opt(fd, SOL_SOCKET, SO_SNDBUF, cfg->sndbuf, "SO_SNDBUF");
    return e;
}

static ZCN_Error open_socket(ZCN_UdpSocket *u, const ZCN_UdpConfig *cfg)
{
    struct sockaddr_storage local;
    socklen_t len = 0;
    const char *address = cfg->address != NULL ? cfg->address : "0.0.0.0";
    ZCN_Error e = zcn_parse_address(address, cfg->port, &local, &len, "address");
    if (e != ZCN_OK)
        return e;
    u->family = local.ss_family;
    u->fd = socket(u->family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (u->fd < 0)
        return zcn_fail((ZCN_Error)errno, "socket: %s", strerror(errno));
    e = apply_options(u->fd, u->family, cfg);
    if (e != ZCN_OK)
        return e;
    if (bind(u->fd, (struct sockaddr *)&local, len) != 0)
        return zcn_fail((ZCN_Error)errno, "bind %s port %u: %s", address, cfg->port,
                        strerror(errno));
    if (cfg->connect_address != NULL) {
        struct sockaddr_storage peer;
        socklen_t plen = 0;
        e = zcn_parse_address(cfg->connect_address, cfg->connect_port, &peer, &plen,
                              "connect_address");
        if (e != ZCN_OK)
            return e;
        if (peer.ss_family != u->family || cfg->connect_port == 0)
            return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                            "connect_address must be of the bound address's family, with a port");
        if (connect(u->fd, (struct sockaddr *)&peer, plen) != 0)
            return zcn_fail((ZCN_Error)errno, "connect: %s", strerror(errno));
        u->connected = true;
    }
    len = sizeof local;
    getsockname(u->fd, (struct sockaddr *)&local, &len);
    u->port = ntohs(u->family == AF_INET6 ? ((struct sockaddr_in6 *)&local)->sin6_port
                                          : ((struct sockaddr_in *)&local)->sin_port);
    return ZCN_OK;
}

/* zcn_udp_adopt_on: fd becomes the socket's, with its own address and
 * peer. u->fd is set only once everything checked out. */
static ZCN_Error adopt_socket(ZCN_UdpSocket *u, int fd, const ZCN_UdpConfig *cfg)
{
    if (cfg->address != NULL || cfg->port != 0 || cfg->connect_address != NULL ||
        cfg->connect_port != 0)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                        "address, port, connect_address and connect_port must be 0: an "
                        "adopted socket keeps its own");
    int type = 0, domain = 0, proto = 0;
    socklen_t len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0)
        return zcn_fail((ZCN_Error)errno, "fd %d: getsockopt(SO_TYPE): %s", fd, strerror(errno));
    len = sizeof domain;
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0)
        return zcn_fail((ZCN_Error)errno, "fd %d: getsockopt(SO_DOMAIN): %s", fd,
                        strerror(errno));
    len = sizeof proto;
    if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &len) != 0)
        return zcn_fail((ZCN_Error)errno, "fd %d: getsockopt(SO_PROTOCOL): %s", fd,
                        strerror(errno));
    if (type != SOCK_DGRAM || (domain != AF_INET && domain != AF_INET6) || proto != IPPROTO_UDP)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                        "fd %d is not a UDP socket (type %d, family %d, protocol %d)", fd, type,
                        domain, proto);
    ZCN_Error e = apply_options(fd, domain, cfg);
    if (e != ZCN_OK)
        return e;
    struct sockaddr_storage local;
    memset(&local, 0, sizeof local);
    len = sizeof local;
    if (getsockname(fd, (struct sockaddr *)&local, &len) != 0)
        return zcn_fail((ZCN_Error)errno, "getsockname: %s", strerror(errno));
    struct sockaddr_storage peer;
    len = sizeof peer;
    bool connected = getpeername(fd, (struct sockaddr *)&peer, &len) == 0;
    if (!connected && errno != ENOTCONN)
        return zcn_fail((ZCN_Error)errno, "getpeername: %s", strerror(errno));
    u->family = domain;
    u->connected = connected;
    u->port = ntohs(domain == AF_INET6 ? ((struct sockaddr_in6 *)&local)->sin6_port
                                       : ((struct sockaddr_in *)&local)->sin_port);
    u->fd = fd;
    return ZCN_OK;
}

/* Fills an ip_mreqn / ipv6_mreq and calls setsockopt. */
static ZCN_Error membership(ZCN_UdpSocket *u, const char *group, const char *if_addr,
                            uint32_t if_index, bool join)
{
    if (u == NULL || group == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "socket or group is NULL");
    if (u->family == AF_INET) {
        struct ip_mreqn mr;
        memset(&mr, 0, sizeof mr);
        if (inet_pton(AF_INET, group, &mr.imr_multiaddr) != 1 ||
            !IN_MULTICAST(ntohl(mr.imr_multiaddr.s_addr)))
            return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "\"%.64s\" is not an IPv4 multicast group",
                            group);
        if (if_addr != NULL && inet_pton(AF_INET, if_addr, &mr.imr_address) != 1)
            return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                            "interface \"%.64s\" is not an IPv4 literal", if_addr);
        mr.imr_ifindex = (int)if_index;
        int opt = join ? IP_ADD_MEMBERSHIP : IP_DROP_MEMBERSHIP;
        if (setsockopt(u->fd, IPPROTO_IP, opt, &mr, sizeof mr) != 0)
            return zcn_fail((ZCN_Error)errno, "%s %s: %s", join ? "IP_ADD_MEMBERSHIP"
                            : "IP_DROP_MEMBERSHIP", group, strerror(errno));
        return ZCN_OK;
    }
    struct ipv6_mreq mr6;
    memset(&mr6, 0, sizeof mr6);
    if (inet_pton(AF_INET6, group, &mr6.ipv6mr_multiaddr) != 1 ||
        !IN6_IS_ADDR_MULTICAST(&mr6.ipv6mr_multiaddr))
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "\"%.64s\" is not an IPv6 multicast group",
                        group);
    mr6.ipv6mr_interface = if_index;
    int opt = join ? IPV6_JOIN_GROUP : IPV6_LEAVE_GROUP;
    if (setsockopt(u->fd, IPPROTO_IPV6, opt, &mr6, sizeof mr6) != 0)
        return zcn_fail((ZCN_Error)errno, "%s %s: %s", join ? "IPV6_JOIN_GROUP"
                        : "IPV6_LEAVE_GROUP", group, strerror(errno));
    return ZCN_OK;
}

ZCN_Error zcn_udp_join_multicast(ZCN_UdpSocket *u, const char *group, const char *if_addr,
                                 uint32_t if_index)
{
    return membership(u, group, if_addr, if_index, true);
}

ZCN_Error zcn_udp_leave_multicast(ZCN_UdpSocket *u, const char *group, const char *if_addr,
                                  uint32_t if_index)
{
    return membership(u, group, if_addr, if_index, false);
}

/* ------------------------------------------------------------------ */
/* create / destroy                                                    */
/* ------------------------------------------------------------------ */

struct settings {
    uint32_t entries, buffers, sends;
    size_t buffer_size; /* rounded pool buffer size */
    uint32_t recv_mode;
    uint32_t rx_slots;  /* readiness receive slots */
    uint32_t large;     /* large buffers in all (0: small only) */
    bool large_rx;      /* readiness reads datagrams over buffer_size whole */
};

/* Buffers the receive may hold: all but a send reserve of a quarter. */
static uint32_t receive_max(uint32_t buffers)
{
    uint32_t reserve = buffers / 4 > 0 ? buffers / 4 : 1;
    return buffers - reserve;
}

static ZCN_Error read_config(const ZCN_UdpConfig *cfg, struct settings *st)
{
    st->entries = cfg->io_uring_entries ? cfg->io_uring_entries : 256;
    st->buffers = cfg->buffer_count ? cfg->buffer_count : 256;
    st->sends = cfg->sends_max ? cfg->sends_max : 1024;
    uint32_t payload = cfg->buffer_size ? cfg->buffer_size : 2048;
    if (st->entries > ZCN_UDP_ENTRIES_MAX)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "io_uring_entries %u is over %u", st->entries,
                        ZCN_UDP_ENTRIES_MAX);
    if (st->buffers < 2 || st->buffers > ZCN_UDP_BUFFERS_MAX)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "buffer_count %u is not in 2..%u", st->buffers,
                        ZCN_UDP_BUFFERS_MAX);
    if (payload > ZCN_UDP_DATAGRAM_MAX_V6)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                        "buffer_size %u is over the largest UDP datagram (%u)", payload,
                        ZCN_UDP_DATAGRAM_MAX_V6);
    if (st->sends > ZCN_UDP_SENDS_MAX)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "sends_max %u is over %u", st->sends,
                        ZCN_UDP_SENDS_MAX);
    if (cfg->rcvbuf < 0 || cfg->sndbuf < 0)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "rcvbuf/sndbuf must not be negative");
    st->recv_mode = cfg->recv_mode ? cfg->recv_mode : ZCN_UDP_RECV_READINESS;
    if (st->recv_mode != ZCN_UDP_RECV_READINESS && st->recv_mode != ZCN_UDP_RECV_MULTISHOT)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "recv_mode %u is not a ZCN_UDP_RECV_* value",
                        cfg->recv_mode);
    uint32_t known = ZCN_UDP_REUSEADDR | ZCN_UDP_REUSEPORT | ZCN_UDP_BROADCAST | ZCN_UDP_V6ONLY |
                     ZCN_UDP_NO_GSO | ZCN_UDP_SMALL_ONLY;
    if (cfg->flags & ~known)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "unknown flags 0x%x", cfg->flags & ~known);
    if (cfg->backend > ZCN_BACKEND_EPOLL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "backend %u is not a ZCN_BACKEND_* value",
                        cfg->backend);
    if (cfg->large_buffer_count > ZCN_UDP_LARGE_BUFFERS_MAX)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "large_buffer_count %u is over %u",
                        cfg->large_buffer_count, ZCN_UDP_LARGE_BUFFERS_MAX);
    size_t raw = (size_t)payload + ZCN_UDP_HEADROOM;
    st->buffer_size = (raw + ZCN_PAGE_SIZE - 1) / ZCN_PAGE_SIZE * ZCN_PAGE_SIZE;
    uint32_t rx_max = receive_max(st->buffers);
    st->rx_slots = rx_max < RX_BATCH ? rx_max : RX_BATCH;
    /* Large buffers unless told not to, or unless a small one holds any
     * datagram already. The readiness receive parks one behind each slot. */
    bool large = !(cfg->flags & ZCN_UDP_SMALL_ONLY) &&
                 st->buffer_size - ZCN_UDP_HEADROOM < ZCN_UDP_DATAGRAM_MAX_V6;
    st->large_rx = large && st->recv_mode == ZCN_UDP_RECV_READINESS;
    st->large = !large ? 0
                       : (cfg->large_buffer_count ? cfg->large_buffer_count : LARGE_DEFAULT) +
                             (st->large_rx ? st->rx_slots : 0);
    return ZCN_OK;
}

/* Bytes of buffer memory: the small buffers, then the large ones. */
static size_t small_bytes(const struct settings *st)
{
    return (size_t)st->buffers * st->buffer_size;
}

static size_t slab_bytes(const struct settings *st)
{
    return small_bytes(st) + (size_t)st->large * ZCN_UDP_LARGE_BUFFER_SIZE;
}

size_t zcn_udp_memory_size(const ZCN_UdpConfig *cfg)
{
    if (cfg == NULL) {
        zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "config is NULL");
        return 0;
    }
    struct settings st = {0};
    if (read_config(cfg, &st) != ZCN_OK)
        return 0;
    return slab_bytes(&st);
}

/* Receive buffers may use all but a send reserve of a quarter. Readiness
 * mode: recvmmsg slots (filled at the first read). Multishot mode: the
 * receive ring (c/bufring.c), filled with br_target buffers at first. */
static ZCN_Error setup_receive(ZCN_UdpSocket *u, const struct settings *st)
{
    u->br_max = receive_max(u->buffer_count);
    if (u->recv_mode == ZCN_UDP_RECV_READINESS) {
        u->br_target = 0; /* freed buffers go straight back to the pool */
        u->rx_slots = st->rx_slots;
        u->large_rx = st->large_rx;
        for (uint32_t i = 0; i < RX_BATCH; i++) {
            u->rx_bid[i] = NIL;
            u->rx_spill[i] = NIL;
            u->rx_msgs[i].msg_hdr.msg_iov = &u->rx_iov[2 * i];
            u->rx_msgs[i].msg_hdr.msg_iovlen = u->large_rx ? 2 : 1;
        }
        return ZCN_OK;
    }
    u->br_target = u->br_max < RING_START ? u->br_max : RING_START;
    ZCN_Error e = zcn_bufring_setup(&u->rx, u->ring, u->bgid, u->br_max, u->slab,
                                    u->buffer_size);
    if (e != ZCN_OK)
        return e;
    for (uint32_t i = 0; i < u->br_target; i++) {
        int64_t bid = buf_take(u);
        if (bid < 0)
            break;
        ring_add(u, (uint32_t)bid);
    }
    ring_publish(u);
    return ZCN_OK;
}

static ZCN_Error map_own(ZCN_UdpSocket *u, size_t bytes, uint8_t **out)
{
    void *m = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return zcn_fail((ZCN_Error)ENOMEM, "mmap of %zu bytes of UDP buffers: %s", bytes,
                        strerror(errno));
    u->own_map = m;
    u->own_map_bytes = bytes;
    *out = m;
    return ZCN_OK;
}

/* The slab: small buffers, then the large ones, in the caller's memory
 * or in one mapping of ours. Caller memory with room for the small ones
 * only (sized before large buffers existed) still works: the large ones
 * then get a mapping of their own. Untouched pages cost nothing. */
static ZCN_Error map_slabs(ZCN_UdpSocket *u, const struct settings *st, const ZCN_UdpConfig *cfg)
{
    size_t small = small_bytes(st), large = slab_bytes(st) - small;
    uint8_t *mem = cfg->buffer_memory, *large_mem = NULL;
    ZCN_Error e = ZCN_OK;
    if (mem == NULL) {
        e = map_own(u, small + large, &mem);
        large_mem = mem + small;
    } else if (cfg->buffer_memory_size < small) {
        e = zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                     "buffer_memory_size %zu is less than the %zu bytes of the buffer_count "
                     "buffers (zcn_udp_memory_size gives what the config needs)",
                     cfg->buffer_memory_size, small);
    } else if (cfg->buffer_memory_size >= small + large) {
        large_mem = mem + small;
    } else if (large > 0) {
        e = map_own(u, large, &large_mem);
    }
    if (e != ZCN_OK)
        return e;
    /* The socket's owner thread alone takes and returns its buffers: no
     * thread caches (their lookup would be on every datagram). */
    ZCN_PoolConfig pc = {.buffer_size = st->buffer_size, .count = st->buffers, .memory = mem,
                         .memory_size = small, .thread_cache = ZCN_POOL_THREAD_CACHE_OFF};
    u->pool = zcn_pool_create_with(&pc, &e);
    if (u->pool == NULL)
        return e;
    u->slab = mem;
    if (large == 0)
        return ZCN_OK;
    pc = (ZCN_PoolConfig){.buffer_size = ZCN_UDP_LARGE_BUFFER_SIZE, .count = st->large,
                          .memory = large_mem, .memory_size = large,
                          .thread_cache = ZCN_POOL_THREAD_CACHE_OFF};
    u->large_pool = zcn_pool_create_with(&pc, &e);
    if (u->large_pool == NULL)
        return e;
    u->large_slab = large_mem;
    u->large_count = st->large;
    u->large_free = st->large;
    return ZCN_OK;
}

static ZCN_Error alloc_tables(ZCN_UdpSocket *u, const struct settings *st,
                              const ZCN_UdpConfig *cfg)
{
    u->meta = calloc((size_t)u->buffer_count + st->large, sizeof *u->meta);
    u->slots = calloc(st->sends, sizeof *u->slots);
    if (u->meta == NULL || u->slots == NULL)
        return zcn_fail((ZCN_Error)ENOMEM, "UDP socket tables");
    u->slots_max = st->sends;
    for (uint32_t i = 0; i < st->sends; i++)
        u->slots[i].next = i + 1 < st->sends ? (int32_t)(i + 1) : NIL;
    u->slot_free = 0;
    return map_slabs(u, st, cfg);
}

/* Cancels every request of this socket and, on a shared ring, waits until
 * the kernel is done with them: the memory they point at is freed next. */
static void cancel_all(ZCN_UdpSocket *u)
{
    u->destroying = true;
    if (!u->started)
        return;
    /* Queued SQEs point into this socket's memory: hand them to the kernel
     * now so none is submitted after the free. */
    zcn_uring_submit(u->ring);
    struct io_uring_sync_cancel_reg reg;
    memset(&reg, 0, sizeof reg);
    reg.fd = u->fd;
    reg.flags = IORING_ASYNC_CANCEL_FD | IORING_ASYNC_CANCEL_ALL;
    reg.timeout.tv_sec = 1;
    reg.timeout.tv_nsec = 0;
    (void)zcn_uring_sync_cancel(u->ring, &reg);
    if (u->wake_armed) {
        reg.fd = u->wake_fd;
        (void)zcn_uring_sync_cancel(u->ring, &reg);
    }
    if (u->wakeup.armed) {
        reg.fd = u->wakeup.read_fd;
        (void)zcn_uring_sync_cancel(u->ring, &reg);
    }
}

/* A socket on a server, after cancel_all: its requests' completions that
 * are posted but not reaped would be dispatched to whichever socket takes
 * this source id next. First have the kernel post what it still holds
 * back (deferred task work, a CQ overflow backlog: io_uring_get_events),
 * then retire each of ours in place: the CQEs between head and tail are
 * userspace's, and one whose source id no server has (ZCN_SOURCE_NONE) is
 * dropped by the server's loop unread. Each request whose last completion
 * is retired leaves kernel_reqs. */
static void retire_posted(ZCN_UdpSocket *u)
{
    (void)zcn_uring_get_events(u->ring); /* -EEXIST off the owner thread: lingers */
    struct io_uring_cqe *cqe;
    unsigned head;
    io_uring_for_each_cqe(u->ring, head, cqe)
    {
        uint64_t ud = io_uring_cqe_get_data64(cqe);
        if ((ud >> 56) != ZCN_OP_SOURCE || (uint32_t)ud != u->source_id)
            continue;
        uint32_t tag = zcn_source_tag(ud);
        if (tag_gen(tag) == (u->gen & 0x3fu) && ends_request(tag_op(tag), cqe))
            u->kernel_reqs--;
        cqe->user_data = zcn_source_ud(ZCN_SOURCE_NONE, 0);
    }
}

static void free_socket(ZCN_UdpSocket *u)
{
    zcn_bufring_unregister(&u->rx, u->ring);
    if (u->loop != NULL)
        zcn_loop_detach(u->loop, u->source_id);
    /* Ring teardown (own ring) cancels anything left before memory goes. */
    if (u->ring_handle != NULL)
        zcn_ring_destroy(u->ring_handle);
    zcn_bufring_unmap(&u->rx);
    if (u->fd >= 0) {
        if (u->loop != NULL && u->ring != NULL)
            zcn_uring_forget_fd(u->ring, u->fd);
        close(u->fd);
    }
    if (u->wake_fd >= 0)
        close(u->wake_fd);
    zcn_wakeup_close(&u->wakeup);
    zcn_pool_destroy(u->pool);
    zcn_pool_destroy(u->large_pool);
    if (u->own_map != NULL)
        munmap(u->own_map, u->own_map_bytes);
    free(u->meta);
    free(u->slots);
    free(u);
}

static ZCN_UdpSocket *alloc_socket(const ZCN_UdpConfig *cfg, struct settings *st,
                                   ZCN_Error *err)
{
    zcn_clear_detail();
    if (cfg == NULL) {
        zcn_set_err(err, zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "config is NULL"));
        return NULL;
    }
    ZCN_Error e = read_config(cfg, st);
    if (e != ZCN_OK) {
        zcn_set_err(err, e);
        return NULL;
    }
    ZCN_UdpSocket *u = calloc(1, sizeof *u);
    if (u == NULL) {
        zcn_set_err(err, zcn_fail((ZCN_Error)ENOMEM, "UDP socket"));
        return NULL;
    }
    u->src.handle_cqe = handle_cqe;
    u->src.flush = flush_source;
    u->src.end_batch = end_batch_source;
    u->src.publish = publish_source;
    u->fd = -1;
    u->wake_fd = -1;
    u->live_slot = -1;
    zcn_wakeup_init(&u->wakeup);
    u->lent_head = NIL;
    u->autoflush = true;
    u->buffer_count = st->buffers;
    u->buffer_size = st->buffer_size;
    u->recv_mode = st->recv_mode;
    u->gso_size_max = (cfg->flags & ZCN_UDP_NO_GSO) ? 0 : ZCN_UDP_DATAGRAM_MAX_V6;
    u->gen = atomic_fetch_add(&next_gen, 1) & 0x3fu;
    /* Only the sizes matter: the kernel lays name, control and payload out
     * in each provided buffer. */
    u->rmsg.msg_namelen = NAME_BYTES;
    u->rmsg.msg_controllen = GAP_BYTES;
    return u;
}

/* The parts common to the create calls, once the ring is known: the
 * socket is opened, or adopt_fd (>= 0) adopted. */
static ZCN_Error finish_create(ZCN_UdpSocket *u, const ZCN_UdpConfig *cfg,
                               const struct settings *st, int adopt_fd)
{
    ZCN_Error e = alloc_tables(u, st, cfg);
    if (e == ZCN_OK)
        e = adopt_fd >= 0 ? adopt_socket(u, adopt_fd, cfg) : open_socket(u, cfg);
    if (e == ZCN_OK)
        e = setup_receive(u, st);
    return e;
}

ZCN_UdpSocket *zcn_udp_create(const ZCN_UdpConfig *cfg, ZCN_Error *err)
{
    struct settings st = {0};
    ZCN_UdpSocket *u = alloc_socket(cfg, &st, err);
    if (u == NULL)
        return NULL;
    u->bgid = OWN_BGID;
    ZCN_Error e = ZCN_OK;
    /* CQ room for a completion per buffer and per send at once, so the
     * multishot receive is not ended by overflow in normal operation. */
    uint64_t cq = (uint64_t)st.buffers + st.sends + 64;
    u->ring_handle = zcn_ring_create_backend(st.entries, zcn_cq_entries(cq, st.entries),
                                             ZCN_RING_START_DISABLED,
                                             (ZCN_Backend)(cfg != NULL ? cfg->backend : 0), &e);
    if (u->ring_handle != NULL)
        u->ring = zcn_ring_io_uring(u->ring_handle);
    if (e == ZCN_OK) {
        u->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (u->wake_fd < 0)
            e = zcn_fail((ZCN_Error)errno, "eventfd: %s", strerror(errno));
    }
    if (e == ZCN_OK)
        e = finish_create(u, cfg, &st, -1);
    if (e != ZCN_OK) {
        free_socket(u);
        zcn_set_err(err, e);
        return NULL;
    }
    u->live_slot = zcn_live_add(u);
    zcn_udpi_publish_stats(u); /* other threads read a copy from the start */
    zcn_set_err(err, ZCN_OK);
    return u;
}

/* A socket on a loop's ring: ready (enabled, this thread its owner) is
 * the caller's check; what_loop names the handle for error messages. */
static ZCN_UdpSocket *create_on_loop(ZCN_Loop *loop, const ZCN_UdpConfig *cfg, ZCN_Error *err,
                                     const char *what_loop, int adopt_fd)
{
    if (cfg != NULL && cfg->backend != 0) {
        zcn_set_err(err, zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                                  "backend is the %s's: leave it 0 for a socket on a %s",
                                  what_loop, what_loop));
        return NULL;
    }
    struct settings st = {0};
    ZCN_UdpSocket *u = alloc_socket(cfg, &st, err);
    if (u == NULL)
        return NULL;
    u->ring = zcn_loop_uring(loop);
    /* An empty enter proves the ring is enabled (the loop has an owner)
     * and that this is its owner thread, before any SQE of ours is queued:
     * an SQE left in a disabled ring would outlive a failed create. */
    int ret = zcn_ep_of(u->ring) != NULL ? zcn_loop_ring_check(loop)
                                         : zcn_uring_get_events(u->ring);
    ZCN_Error e = ZCN_OK;
    if (ret == -EBADFD)
        e = zcn_fail(ZCN_ERR_NOT_STARTED, "start the %s before attaching UDP sockets", what_loop);
    else if (ret == -EEXIST)
        e = zcn_fail(ZCN_ERR_WRONG_THREAD, "not the %s's owner thread", what_loop);
    else if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY)
        e = zcn_fail((ZCN_Error)-ret, "io_uring_enter: %s", strerror(-ret));
    if (e == ZCN_OK)
        e = zcn_loop_attach(loop, &u->src, &u->source_id);
    if (e == ZCN_OK) {
        u->loop = loop;
        /* The loop's own receive ring is group 0. */
        u->bgid = (uint16_t)(1 + u->source_id);
        e = finish_create(u, cfg, &st, adopt_fd);
    }
    if (e == ZCN_OK)
        e = zcn_udpi_start(u);
    if (e != ZCN_OK) {
        u->started = false; /* nothing was submitted to the kernel yet */
        if (adopt_fd >= 0)
            u->fd = -1; /* still the caller's */
        free_socket(u);
        zcn_set_err(err, e);
        return NULL;
    }
    zcn_udpi_publish_stats(u); /* other threads read a copy from the start */
    zcn_set_err(err, ZCN_OK);
    return u;
}

ZCN_UdpSocket *zcn_udp_create_on_server(ZCN_Server *server, const ZCN_UdpConfig *cfg,
                                        ZCN_Error *err)
{
    if (server == NULL) {
        zcn_set_err(err, zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL"));
        return NULL;
    }
    return create_on_loop(zcn_server_get_loop(server), cfg, err, "server", -1);
}

ZCN_UdpSocket *zcn_udp_create_on(ZCN_Loop *loop, const ZCN_UdpConfig *cfg, ZCN_Error *err)
{
    if (loop == NULL) {
        zcn_set_err(err, zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "loop is NULL"));
        return NULL;
    }
    /* A loop nobody ran yet gets its owner here, as zcn_loop_connect does. */
    ZCN_Error e = zcn_loop_claim(loop, "zcn_udp_create_on");
    if (e != ZCN_OK) {
        zcn_set_err(err, e);
        return NULL;
    }
    return create_on_loop(loop, cfg, err, "loop", -1);
}

static bool has_fd(zcn_source *src, void *arg)
{
    return src->handle_cqe == handle_cqe && ((ZCN_UdpSocket *)src)->fd == *(const int *)arg &&
           !((ZCN_UdpSocket *)src)->lingering;
}

ZCN_UdpSocket *zcn_udp_adopt_on(ZCN_Loop *loop, int fd, const ZCN_UdpConfig *cfg, ZCN_Error *err)
{
    static const ZCN_UdpConfig defaults;
    if (loop == NULL || fd < 0) {
        zcn_set_err(err, zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                                  loop == NULL ? "loop is NULL" : "fd is negative"));
        return NULL;
    }
    ZCN_Error e = zcn_loop_claim(loop, "zcn_udp_adopt_on");
    if (e == ZCN_OK && zcn_loop_find_source(loop, has_fd, &fd) != NULL)
        e = zcn_fail(ZCN_ERR_BUSY, "fd %d is already a UDP socket of this loop", fd);
    if (e != ZCN_OK) {
        zcn_set_err(err, e);
        return NULL;
    }
    return create_on_loop(loop, cfg != NULL ? cfg : &defaults, err, "loop", fd);
}

ZCN_Error zcn_udp_destroy(ZCN_UdpSocket *u)
{
    if (u == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "socket is NULL");
    if (u->in_callback || (u->loop != NULL && zcn_loop_in_callback(u->loop)))
        return zcn_fail(ZCN_ERR_BUSY, "the UDP socket cannot be destroyed from a callback");
    zcn_live_remove(u->live_slot); /* zcn_udp_stop no longer finds it */
    u->live_slot = -1;
    cancel_all(u);
    if (u->loop != NULL && u->started) {
        retire_posted(u);
        if (u->kernel_reqs > 0) {
            /* Completions still to come (a CQ overflow the kernel could not
             * post back, or a request the cancel did not end in time): the
             * socket keeps its source id, memory and fd until the server's
             * loop has handed it the last of them (handle_cqe). */
            u->lingering = true;
            u->on_datagram = NULL;
            atomic_fetch_add(&lingering_sockets, 1);
            return ZCN_OK;
        }
    }
    free_socket(u);
    return ZCN_OK;
}

/* ------------------------------------------------------------------ */
/* queries                                                             */
/* ------------------------------------------------------------------ */

uint16_t zcn_udp_port(const ZCN_UdpSocket *u)
{
    return u == NULL ? 0 : u->port;
}

int zcn_udp_fd(const ZCN_UdpSocket *u)
{
    return u == NULL ? -1 : u->fd;
}

ZCN_Error zcn_udp_local_address(const ZCN_UdpSocket *u, struct sockaddr *addr,
                                socklen_t *len_inout)
{
    if (u == NULL || addr == NULL || len_inout == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "socket, addr or len is NULL");
    if (getsockname(u->fd, addr, len_inout) != 0)
        return zcn_fail((ZCN_Error)errno, "getsockname: %s", strerror(errno));
    return ZCN_OK;
}

size_t zcn_udp_buffer_size(const ZCN_UdpSocket *u)
{
    return u == NULL ? 0 : u->buffer_size;
}

size_t zcn_udp_datagram_capacity(const ZCN_UdpSocket *u)
{
    if (u == NULL)
        return 0;
    size_t cap = u->buffer_size - ZCN_UDP_HEADROOM;
    return cap < datagram_max(u) && !u->large_rx ? cap : datagram_max(u);
}

const uint8_t *zcn_udp_buffer_base(const ZCN_UdpSocket *u)
{
    return u == NULL ? NULL : u->slab;
}

/* The counters as the owner sees them (kernel_drops aside). */
static void udp_stats_now(const ZCN_UdpSocket *u, ZCN_UdpStats *out)
{
    *out = u->stats;
    out->buffers_total = u->buffer_count;
    ZCN_PoolStats ps;
    uint64_t in_pool = 0;
    if (zcn_pool_stats(u->pool, &ps) == ZCN_OK)
        in_pool = ps.free;
    out->buffers_in_use = u->buffer_count - in_pool - u->rx.count - u->rx_held;
    out->large_buffers_total = u->large_count;
    out->large_buffers_in_use = u->large_count - u->large_free - u->rx_spills;
}

#define UDP_SNAP_WORDS (sizeof(ZCN_UdpStats) / sizeof(uint64_t))
_Static_assert(sizeof(ZCN_UdpStats) % sizeof(uint64_t) == 0, "ZCN_UdpStats packs into words");
_Static_assert(UDP_SNAP_WORDS <= ZCN_SEQLOCK_WORDS_MAX, "the seqlock copies at most 64 words");

/* The copy other threads read, on the owner thread: at the end of each of
 * the socket's loop calls, and on a loop whenever the loop publishes its
 * own (src.publish). About 20 plain stores. */
void zcn_udpi_publish_stats(ZCN_UdpSocket *u)
{
    ZCN_UdpStats now;
    udp_stats_now(u, &now);
    zcn_seqlock_write(&u->snap_seq, u->snap, &now, UDP_SNAP_WORDS);
}

static void publish_source(zcn_source *src)
{
    ZCN_UdpSocket *u = (ZCN_UdpSocket *)src;
    if (!u->lingering)
        zcn_udpi_publish_stats(u);
}

/* Whether the calling thread may read the live counters: the thread that
 * drives the socket (its loop's owner on a loop), or any thread before
 * one does. */
static bool udp_on_owner(const ZCN_UdpSocket *u)
{
    if (u->loop != NULL)
        return zcn_loop_on_owner(u->loop);
    return !atomic_load_explicit(&u->owner_set, memory_order_acquire) ||
           pthread_equal(u->owner, pthread_self());
}

ZCN_Error zcn_udp_stats(const ZCN_UdpSocket *u, ZCN_UdpStats *out)
{
    if (u == NULL || out == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "socket or out is NULL");
    if (udp_on_owner(u)) {
        udp_stats_now(u, out);
    } else {
        if (u->loop != NULL)
            zcn_loop_snapshot_request(u->loop);
        zcn_seqlock_read(&u->snap_seq, u->snap, out, UDP_SNAP_WORDS);
    }
    /* The socket's drop counter: datagrams the kernel threw away because
     * the receive queue (SO_RCVBUF) was full while we were not reading. */
    uint32_t mem[SK_MEMINFO_VARS];
    socklen_t len = sizeof mem;
    if (getsockopt(u->fd, SOL_SOCKET, SO_MEMINFO, mem, &len) == 0 &&
        len > SK_MEMINFO_DROPS * sizeof(uint32_t))
        out->kernel_drops = mem[SK_MEMINFO_DROPS];
    return ZCN_OK;
}

ZCN_Backend zcn_udp_backend(const ZCN_UdpSocket *u, const char **reason)
{
    if (u == NULL) {
        if (reason != NULL)
            *reason = "";
        return ZCN_BACKEND_AUTO;
    }
    if (u->loop != NULL)
        return zcn_loop_backend(u->loop, reason);
    return zcn_ring_backend(u->ring_handle, reason);
}
