/* Outbound TCP connections. zcn_loop_connect takes a connection slot,
 * makes a socket (bound first if asked), and submits IORING_OP_CONNECT;
 * the connection's own timer is the connect timeout. When the connect
 * completes the slot becomes an open connection exactly like an accepted
 * one (c/tcp_conn.c: the same receive path, send queue, limits, budget and
 * close state machine) with the callbacks its config gave (kept per slot
 * in loop->out_h). A failure -- the kernel's error, the timeout, a cancel
 * by close/abort, or the loop's destroy -- is reported once through
 * on_connect (or a CONNECT event) and the slot freed; no on_close follows
 * for a connection that never opened. A connect that must end while its
 * request is in the kernel is cancelled first, and ends when the kernel
 * answers (the slot is not reused before). */

#include "buffers.h"

static uint64_t connect_ud(const ZCN_Loop *s, const struct conn *c)
{
    return pack_ud(OP_CONNECT, c->gen, (uint32_t)slot_of(s, c));
}

static void submit_connect(ZCN_Loop *s, struct conn *c)
{
    struct io_uring_sqe *sqe = zcn_get_sqe(s->ring);
    if (sqe == NULL) {
        service_add(s, c); /* retried from the service list */
        return;
    }
    io_uring_prep_connect(sqe, c->fd, (struct sockaddr *)&c->h->addr, c->h->addr_len);
    io_uring_sqe_set_data64(sqe, connect_ud(s, c));
    c->connect_submitted = true;
    c->connect_inflight = true;
}

/* The connect failed: tell the user, then the slot goes. In poll mode the
 * fd stays reserved until the caller has seen the event (as a CLOSE). */
static void connect_failed(ZCN_Loop *s, struct conn *c)
{
    ZCN_Error result = (ZCN_Error)c->connect_error;
    zcn_tcp_forward_unlink(s, c); /* before on_connect, which may forward anew */
    zcn_timer_conn_disarm(s, (uint32_t)slot_of(s, c));
    list_remove(s, &s->service, OFF_SERVICE, c);
    s->conns_active--;
    s->lstats.connects_failed++;
    c->state = CONN_ZOMBIE;
    if (!c->quiet)
        zcn_tcp_emit_connect(s, c, result);
    if (s->ev != NULL && !c->quiet) {
        c->zombie_next = s->zombie_head;
        s->zombie_head = slot_of(s, c);
    } else {
        zcn_tcp_free_slot(s, c);
    }
    zcn_tcp_fd_freed(s);
}

void zcn_tcp_connect_progress(ZCN_Loop *s, struct conn *c)
{
    if (c->state != CONN_CONNECTING)
        return;
    if (c->connect_error == 0) {
        if (!c->connect_submitted)
            submit_connect(s, c);
        return;
    }
    if (c->connect_inflight) {
        if (!c->connect_cancelled)
            zcn_tcp_cancel_ud(s, connect_ud(s, c), &c->connect_cancelled, c);
        return; /* ends when the kernel answers */
    }
    if (!can_emit(s) || !has_room(s, 1)) {
        service_add(s, c);
        return;
    }
    connect_failed(s, c);
}

void zcn_tcp_on_connect_cqe(ZCN_Loop *s, struct conn *c, int res)
{
    c->connect_inflight = false;
    if (c->state != CONN_CONNECTING)
        return;
    if (res == 0 && c->connect_error == 0) {
        zcn_timer_conn_disarm(s, (uint32_t)slot_of(s, c));
        c->state = CONN_OPEN;
        s->stats.connections_accepted++; /* counted as a connection opened */
        zcn_tcp_emit_connect(s, c, ZCN_OK);
        if (c->state == CONN_OPEN) {
            zcn_tcp_conn_start(s, c);
            /* A connection forwarding here waited for this queue to exist;
             * a FIN forwarded meanwhile (AUTO) goes once it has drained. */
            if (c->fwd_from != NIL)
                zcn_tcp_forward_wake(s, c);
            /* A DRAIN asked for while connecting (zcn_loop_notify_drain):
             * its mark may hold already, and no send completion would
             * check it; the service list does at the next turn. */
            if (c->drain_notify)
                service_add(s, c);
            zcn_tcp_progress_shutdown(s, c);
        }
        /* on_connect may have queued data or closed it already */
        zcn_tcp_submit_send(s, c);
        zcn_tcp_progress_close(s, c);
        return;
    }
    if (c->connect_error == 0)
        c->connect_error = res < 0 ? -res : ECONNABORTED;
    zcn_tcp_connect_progress(s, c);
}

static ZCN_Error bind_local(int fd, const ZCN_ConnectConfig *cfg, int family)
{
    if (cfg->local_address == NULL && cfg->local_port == 0)
        return ZCN_OK;
    struct sockaddr_storage ss;
    socklen_t len;
    const char *any = family == AF_INET6 ? "::" : "0.0.0.0";
    ZCN_Error e = zcn_parse_address(cfg->local_address ? cfg->local_address : any,
                                    cfg->local_port, &ss, &len, "local_address");
    if (e != ZCN_OK)
        return e;
    if (ss.ss_family != family)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                        "local_address \"%.64s\" is not of the address's family",
                        cfg->local_address);
    if (cfg->local_port != 0) {
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    } else {
        /* The port is picked at connect time, so many connections from one
         * local address to different peers can share ports. */
        int one = 1;
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    }
    if (bind(fd, (struct sockaddr *)&ss, len) != 0)
        return zcn_fail((ZCN_Error)errno, "bind %s port %u: %s",
                        cfg->local_address ? cfg->local_address : any, cfg->local_port,
                        strerror(errno));
    return ZCN_OK;
}

/* Takes the free slot for fd with the callbacks and settings of cfg (its
 * handler is the slot's entry in out_h): what a connect and an adopt
 * share. The caller has checked that a slot is free and fd fits. */
static struct conn *open_outbound(ZCN_Loop *s, int fd, const ZCN_ConnectConfig *cfg,
                                  const struct sockaddr_storage *addr, socklen_t addr_len)
{
    struct zcn_handler *h = &s->out_h[s->conn_free];
    *h = (struct zcn_handler){
        .user_data = cfg->user_data,
        .on_data = cfg->on_data,
        .on_close = cfg->on_close,
        .on_drain = cfg->on_drain,
        .on_eof = cfg->on_eof,
        .idle_timeout_ms = cfg->idle_timeout_ms,
        .tag = cfg->tag,
        .half_close_flag = (cfg->flags & ZCN_SERVER_HALF_CLOSE) != 0,
        .nodelay = cfg->tcp_nodelay >= 0,
        .addr = *addr,
        .addr_len = addr_len,
    };
    if (s->in_loop == 0)
        s->now_ms = zcn_now_ms();
    struct conn *c = zcn_tcp_conn_open(s, fd, h);
    if (c != NULL)
        c->outbound = true;
    return c;
}

ZCN_Error zcn_loop_connect(ZCN_Loop *s, const ZCN_ConnectConfig *cfg, int *fd_out)
{
    if (fd_out != NULL)
        *fd_out = -1;
    if (s == NULL || cfg == NULL || fd_out == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "%s is NULL",
                        s == NULL ? "loop" : cfg == NULL ? "config" : "fd_out");
    if (s->destroying)
        return zcn_fail(ZCN_ERR_BUSY, "the loop is being destroyed");
    if (cfg->flags & ~(uint32_t)ZCN_SERVER_HALF_CLOSE)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "unknown flags 0x%x",
                        cfg->flags & ~(uint32_t)ZCN_SERVER_HALF_CLOSE);
    if (cfg->address == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "address is NULL");
    if (cfg->port == 0)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "port 0: give the port to connect to");
    ZCN_Error err = zcn_loop_claim(s, "zcn_loop_connect");
    if (err != ZCN_OK)
        return err;
    struct sockaddr_storage ss;
    socklen_t len;
    err = zcn_parse_address(cfg->address, cfg->port, &ss, &len, "address");
    if (err != ZCN_OK)
        return err;
    if (s->conn_free == NIL)
        return zcn_fail(ZCN_ERR_EXHAUSTED, "%u connections are open (connections_max)",
                        s->conns_max);
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return zcn_fail((ZCN_Error)errno, "socket: %s", strerror(errno));
    if ((uint32_t)fd >= s->fd_table_size) {
        close(fd);
        return zcn_fail((ZCN_Error)EMFILE, "fd %d is over RLIMIT_NOFILE as the loop read it", fd);
    }
    err = bind_local(fd, cfg, ss.ss_family);
    if (err != ZCN_OK) {
        close(fd);
        return err;
    }
    uint32_t slot = (uint32_t)s->conn_free;
    struct conn *c = open_outbound(s, fd, cfg, &ss, len);
    if (c == NULL) /* cannot happen: a slot and the fd were checked */
        return zcn_fail(ZCN_ERR_EXHAUSTED, "no connection slot");
    c->h->on_connect = cfg->on_connect;
    c->state = CONN_CONNECTING;
    s->lstats.connects_started++;
    uint32_t timeout = cfg->timeout_ms ? cfg->timeout_ms : CONNECT_TIMEOUT_DEFAULT_MS;
    if (timeout != ZCN_TIMEOUT_NEVER)
        zcn_timer_conn_arm(s, slot, s->now_ms + timeout);
    submit_connect(s, c);
    *fd_out = fd;
    return ZCN_OK;
}

/* A connected TCP socket made elsewhere (an asyncio loop's accept or
 * connect, a socket the user passes in) becomes a connection of the loop:
 * the same slot, receive path, queue and close state machine as if the
 * loop had connected it, with no on_connect. Every check comes before the
 * slot is taken, so on an error the fd is untouched and still the
 * caller's. */
ZCN_Error zcn_loop_adopt(ZCN_Loop *s, int fd, const ZCN_ConnectConfig *cfg)
{
    if (s == NULL || cfg == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "%s is NULL", s == NULL ? "loop" : "config");
    if (s->destroying)
        return zcn_fail(ZCN_ERR_BUSY, "the loop is being destroyed");
    if (cfg->flags & ~(uint32_t)ZCN_SERVER_HALF_CLOSE)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "unknown flags 0x%x",
                        cfg->flags & ~(uint32_t)ZCN_SERVER_HALF_CLOSE);
    if (fd < 0)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "fd %d is negative", fd);
    ZCN_Error err = zcn_loop_claim(s, "zcn_loop_adopt");
    if (err != ZCN_OK)
        return err;
    if ((uint32_t)fd >= s->fd_table_size)
        return zcn_fail((ZCN_Error)EMFILE, "fd %d is over RLIMIT_NOFILE as the loop read it", fd);
    if (s->fd_table[fd] != NIL)
        return zcn_fail(ZCN_ERR_BUSY, "fd %d is already a connection of this loop", fd);
    int type = 0;
    socklen_t tlen = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) != 0) {
        if (errno == ENOTSOCK) /* a pipe, a file: not a stream socket */
            return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "fd %d is not a socket", fd);
        return zcn_fail((ZCN_Error)errno, "fd %d: %s", fd, strerror(errno));
    }
    if (type != SOCK_STREAM)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "fd %d is not a stream socket", fd);
    struct sockaddr_storage peer;
    socklen_t plen = sizeof peer;
    if (getpeername(fd, (struct sockaddr *)&peer, &plen) != 0)
        return zcn_fail((ZCN_Error)errno, "fd %d is not connected: %s", fd, strerror(errno));
    if (s->conn_free == NIL)
        return zcn_fail(ZCN_ERR_EXHAUSTED, "%u connections are open (connections_max)",
                        s->conns_max);
    uint32_t slot = (uint32_t)s->conn_free;
    struct conn *c = open_outbound(s, fd, cfg, &peer, plen);
    if (c == NULL) /* cannot happen: a slot and the fd were checked */
        return zcn_fail(ZCN_ERR_EXHAUSTED, "no connection slot");
    struct zcn_handler *h = c->h;
    s->stats.connections_accepted++; /* counted as a connection opened */
    /* Its receive is armed from the service list at the next turn, not
     * now: a zcn_loop_pause_recv right after the adopt (asyncio pauses a
     * new transport from connection_made) then arms nothing, where a
     * receive prepared now would reach the kernel with the pause's cancel
     * behind it and take whatever the socket already holds. */
    if (h->idle_timeout_ms != 0)
        zcn_timer_conn_arm(s, slot, s->now_ms + h->idle_timeout_ms);
    service_add(s, c);
    return ZCN_OK;
}
