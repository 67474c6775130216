/* The TCP listener: a listening socket on a loop with multishot accept,
 * and the seed's server API over it. zcn_server_create is a private loop
 * plus one listener; zcn_server_create_on puts a listener on a shared
 * loop. An accepted socket becomes a connection of the loop
 * (c/tcp_conn.c) with the listener's callbacks; the zcn_server_* calls
 * that take an fd work on any connection of the server's loop, and those
 * that run or stop the loop run or stop the whole of it (c/loop.c). */

#include "buffers.h"

#include <stdio.h>

#define KNOWN_FLAGS ((uint32_t)(ZCN_SERVER_REUSEPORT | ZCN_SERVER_HALF_CLOSE))

static uint64_t accept_ud(const ZCN_Server *srv)
{
    return pack_ud(OP_ACCEPT, srv->gen, srv->index);
}

static void arm_accept(ZCN_Server *srv)
{
    struct io_uring_sqe *sqe = zcn_get_sqe(srv->loop->ring);
    if (sqe == NULL)
        return; /* try_resume_accept tries again next turn */
    io_uring_prep_multishot_accept(sqe, srv->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, accept_ud(srv));
    srv->accept_armed = true;
}

static bool may_accept(const ZCN_Server *srv)
{
    return srv->started && !srv->accept_armed && !srv->closing && !srv->loop->destroying;
}

static void try_resume_accept(ZCN_Server *srv)
{
    if (may_accept(srv) && srv->loop->now_ms >= srv->accept_resume_ms)
        arm_accept(srv);
}

void zcn_tcp_resume_accepts(ZCN_Loop *s)
{
    for (uint32_t i = 0; i < s->servers_count; i++)
        if (s->servers[i] != NULL)
            try_resume_accept(s->servers[i]);
}

int zcn_tcp_accept_timer_ms(const ZCN_Loop *s)
{
    int64_t best = -1;
    for (uint32_t i = 0; i < s->servers_count; i++) {
        const ZCN_Server *srv = s->servers[i];
        if (srv == NULL || !may_accept(srv))
            continue;
        int64_t ms = srv->accept_resume_ms > s->now_ms ? (int64_t)(srv->accept_resume_ms - s->now_ms)
                                                        : 0;
        if (best < 0 || ms < best)
            best = ms;
    }
    return best > INT32_MAX ? INT32_MAX : (int)best;
}

void zcn_tcp_fd_freed(ZCN_Loop *s)
{
    for (uint32_t i = 0; i < s->servers_count; i++) {
        ZCN_Server *srv = s->servers[i];
        if (srv != NULL && srv->accept_backoff_ms != 0)
            srv->accept_resume_ms = s->now_ms; /* an fd is free: try again now */
    }
}

static void accept_backoff(ZCN_Server *srv)
{
    uint32_t ms = srv->accept_backoff_ms == 0 ? ACCEPT_BACKOFF_MIN_MS : srv->accept_backoff_ms * 2;
    if (ms > ACCEPT_BACKOFF_MAX_MS)
        ms = ACCEPT_BACKOFF_MAX_MS;
    srv->accept_backoff_ms = ms;
    srv->accept_resume_ms = srv->loop->now_ms + ms;
    srv->loop->stats.accept_backoffs++;
}

static void new_connection(ZCN_Server *srv, int fd)
{
    ZCN_Loop *s = srv->loop;
    struct conn *c = zcn_tcp_conn_open(s, fd, &srv->h);
    if (c == NULL)
        return;
    s->stats.connections_accepted++;
    zcn_tcp_emit(s, ZCN_EVENT_ACCEPT, c);
    zcn_tcp_conn_start(s, c);
}

void zcn_tcp_on_accept_cqe(ZCN_Loop *s, struct io_uring_cqe *cqe)
{
    uint64_t ud = io_uring_cqe_get_data64(cqe);
    uint32_t index = ud_slot(ud);
    ZCN_Server *srv = index < s->servers_count ? s->servers[index] : NULL;
    bool more = (cqe->flags & IORING_CQE_F_MORE) != 0;
    if (srv == NULL || srv->gen != ud_gen(ud)) {
        /* A listener destroyed meanwhile: nobody takes the connection. */
        if (cqe->res >= 0)
            close(cqe->res);
        return;
    }
    if (!more)
        srv->accept_armed = false;
    if (cqe->res >= 0) {
        srv->accept_backoff_ms = 0;
        if (s->destroying || srv->closing)
            close(cqe->res);
        else
            new_connection(srv, cqe->res);
    } else {
        switch (-cqe->res) {
        case EMFILE:
        case ENFILE:
        case ENOBUFS:
        case ENOMEM:
            /* Out of fds or memory: wait before trying again, and make sure
             * the kernel is not retrying on its own meanwhile. */
            accept_backoff(srv);
            if (more)
                zcn_tcp_cancel_ud(s, accept_ud(srv), NULL, NULL);
            return;
        default: /* ECONNABORTED, EINTR, ECANCELED ...: transient */
            break;
        }
    }
    if (!srv->accept_armed && srv->accept_backoff_ms == 0)
        try_resume_accept(srv);
}

/* ------------------------------------------------------------------ */
/* create, start, destroy                                              */
/* ------------------------------------------------------------------ */

static ZCN_Error open_listener(ZCN_Server *srv, const ZCN_Config *cfg)
{
    struct sockaddr_storage ss;
    socklen_t len;
    ZCN_Error err = zcn_parse_address(cfg->address, cfg->port, &ss, &len, "address");
    if (err != ZCN_OK)
        return err;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return zcn_fail((ZCN_Error)errno, "socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if ((cfg->flags & ZCN_SERVER_REUSEPORT) &&
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
        int e = errno;
        close(fd);
        return zcn_fail((ZCN_Error)e, "SO_REUSEPORT: %s", strerror(e));
    }
    if (bind(fd, (struct sockaddr *)&ss, len) != 0) {
        int e = errno;
        close(fd);
        return zcn_fail((ZCN_Error)e, "bind %s port %u: %s",
                        cfg->address ? cfg->address : "0.0.0.0", cfg->port, strerror(e));
    }
    if (listen(fd, (int)srv->backlog) != 0) {
        int e = errno;
        close(fd);
        return zcn_fail((ZCN_Error)e, "listen: %s", strerror(e));
    }
    len = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &len);
    srv->port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                              : ((struct sockaddr_in6 *)&ss)->sin6_port);
    srv->listen_fd = fd;
    return ZCN_OK;
}

/* A listener on loop s from the listener fields of cfg. */
static ZCN_Server *add_listener(ZCN_Loop *s, const ZCN_Config *cfg, bool own_loop, ZCN_Error *err)
{
    if (cfg->flags & ~KNOWN_FLAGS) {
        *err = zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "unknown flags 0x%x", cfg->flags & ~KNOWN_FLAGS);
        return NULL;
    }
    uint32_t index = s->servers_count;
    for (uint32_t i = 0; i < s->servers_count; i++) {
        if (s->servers[i] == NULL) {
            index = i;
            break;
        }
    }
    if (index == ZCN_LOOP_SERVERS_MAX) {
        *err = zcn_fail(ZCN_ERR_EXHAUSTED, "at most %u servers per loop", ZCN_LOOP_SERVERS_MAX);
        return NULL;
    }
    ZCN_Server *srv = calloc(1, sizeof *srv);
    if (srv == NULL) {
        *err = zcn_fail((ZCN_Error)ENOMEM, "server");
        return NULL;
    }
    srv->loop = s;
    srv->own_loop = own_loop;
    srv->index = index;
    srv->gen = ++s->server_gen;
    srv->listen_fd = -1;
    srv->live_slot = -1;
    srv->backlog = cfg->backlog ? cfg->backlog : 1024;
    if (srv->backlog > INT32_MAX)
        srv->backlog = INT32_MAX;
    srv->h.idle_timeout_ms = cfg->idle_timeout_ms;
    srv->h.nodelay = cfg->tcp_nodelay >= 0;
    srv->h.half_close_flag = (cfg->flags & ZCN_SERVER_HALF_CLOSE) != 0;
    srv->h.tag = cfg->tag;
    *err = open_listener(srv, cfg);
    if (*err != ZCN_OK) {
        free(srv);
        return NULL;
    }
    s->servers[index] = srv;
    if (index == s->servers_count)
        s->servers_count++;
    srv->live_slot = zcn_live_add(srv);
    return srv;
}

ZCN_Server *zcn_server_create(const ZCN_Config *cfg, ZCN_Error *err)
{
    zcn_clear_detail();
    if (cfg == NULL) {
        zcn_set_err(err, zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "config is NULL"));
        return NULL;
    }
    if (cfg->flags & ~KNOWN_FLAGS) {
        zcn_set_err(err, zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "unknown flags 0x%x",
                                  cfg->flags & ~KNOWN_FLAGS));
        return NULL;
    }
    ZCN_LoopConfig lc = {
        .io_uring_entries = cfg->io_uring_entries,
        .buffer_pool_size = cfg->buffer_pool_size,
        .buffer_size = cfg->buffer_size,
        .connections_max = cfg->connections_max,
        .send_queue_max_bytes = cfg->send_queue_max_bytes,
        .buffer_reserve = cfg->buffer_reserve,
        .send_timeout_ms = cfg->send_timeout_ms,
        .conn_buffers_hard_max = cfg->conn_buffers_hard_max,
        .buffer_memory = cfg->buffer_memory,
        .buffer_memory_size = cfg->buffer_memory_size,
        .backend = cfg->backend,
        .busy_poll_us = cfg->busy_poll_us,
    };
    ZCN_Error e;
    ZCN_Loop *loop = zcn_loop_create(&lc, &e);
    if (loop == NULL) {
        zcn_set_err(err, e);
        return NULL;
    }
    ZCN_Server *srv = add_listener(loop, cfg, true, &e);
    if (srv == NULL) {
        /* The listener's detail, kept across the loop's destroy (a copy:
         * zcn_fail writes the buffer zcn_error_detail returns). */
        char detail[256];
        snprintf(detail, sizeof detail, "%s", zcn_error_detail());
        zcn_loop_destroy(loop);
        zcn_fail(e, "%s", detail);
        zcn_set_err(err, e);
        return NULL;
    }
    zcn_set_err(err, ZCN_OK);
    return srv;
}

ZCN_Server *zcn_server_create_on(ZCN_Loop *s, const ZCN_Config *cfg, ZCN_Error *err)
{
    zcn_clear_detail();
    if (s == NULL || cfg == NULL) {
        zcn_set_err(err, zcn_fail(ZCN_ERR_INVALID_ARGUMENT, s == NULL ? "loop is NULL"
                                                                      : "config is NULL"));
        return NULL;
    }
    ZCN_Error e = owner_check(s, "zcn_server_create_on");
    if (e == ZCN_OK && (s->in_callback || s->destroying))
        e = zcn_fail(ZCN_ERR_BUSY, "not from a callback or while the loop is destroyed");
    const char *field = cfg->io_uring_entries       ? "io_uring_entries"
                        : cfg->buffer_pool_size     ? "buffer_pool_size"
                        : cfg->buffer_size          ? "buffer_size"
                        : cfg->connections_max      ? "connections_max"
                        : cfg->send_queue_max_bytes ? "send_queue_max_bytes"
                        : cfg->buffer_memory        ? "buffer_memory"
                        : cfg->buffer_reserve       ? "buffer_reserve"
                        : cfg->send_timeout_ms      ? "send_timeout_ms"
                        : cfg->conn_buffers_hard_max ? "conn_buffers_hard_max"
                        : cfg->backend              ? "backend"
                        : cfg->busy_poll_us         ? "busy_poll_us"
                                                     : NULL;
    if (e == ZCN_OK && field != NULL)
        e = zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                     "%s is the loop's (ZCN_LoopConfig): leave it 0 in a server on a loop", field);
    ZCN_Server *srv = e == ZCN_OK ? add_listener(s, cfg, false, &e) : NULL;
    zcn_set_err(err, e);
    return srv;
}

ZCN_Error zcn_server_start(ZCN_Server *srv)
{
    if (srv == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    ZCN_Loop *s = srv->loop;
    if (srv->started)
        return zcn_fail(ZCN_ERR_ALREADY_STARTED, "zcn_server_start was already called");
    if (s->in_callback)
        return zcn_fail(ZCN_ERR_BUSY, "not from inside a callback");
    ZCN_Error e = zcn_loop_claim(s, "zcn_server_start");
    if (e != ZCN_OK)
        return e;
    srv->started = true;
    s->now_ms = zcn_now_ms();
    arm_accept(srv);
    int ret = zcn_uring_submit(s->ring);
    if (ret < 0) {
        srv->started = false;
        return zcn_fail((ZCN_Error)-ret, "io_uring_submit: %s", strerror(-ret));
    }
    return ZCN_OK;
}

void zcn_server_unlisten(ZCN_Server *srv)
{
    /* From now on zcn_server_stop does not find the server; one already
     * inside it has finished when this returns. */
    zcn_live_remove(srv->live_slot);
    srv->live_slot = -1;
    srv->closing = true;
    if (srv->listen_fd >= 0) {
        shutdown(srv->listen_fd, SHUT_RDWR);
        if (srv->accept_armed)
            zcn_tcp_cancel_ud(srv->loop, accept_ud(srv), NULL, NULL);
    }
}

static void free_listener(ZCN_Server *srv)
{
    if (srv->listen_fd >= 0) {
        if (srv->loop != NULL && srv->loop->ring != NULL)
            zcn_uring_forget_fd(srv->loop->ring, srv->listen_fd);
        close(srv->listen_fd);
    }
    free(srv);
}

ZCN_Error zcn_server_destroy(ZCN_Server *srv)
{
    if (srv == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    ZCN_Loop *s = srv->loop;
    if (s->in_callback)
        return zcn_fail(ZCN_ERR_BUSY, "the server cannot be destroyed from its own callback");
    if (srv->own_loop) {
        if (s->sources_count > 0)
            return zcn_fail(ZCN_ERR_BUSY,
                            "%u UDP sockets still use this server's loop: destroy them first "
                            "(one already destroyed waits for its last completions: run the "
                            "loop once more)",
                            s->sources_count);
        return zcn_loop_destroy(s); /* frees srv with the loop's servers */
    }
    ZCN_Error e = owner_check(s, "zcn_server_destroy");
    if (e != ZCN_OK)
        return e;
    zcn_server_unlisten(srv);
    zcn_loop_end_conns(s, &srv->h);
    s->servers[srv->index] = NULL;
    if (s->started)
        zcn_loop_flush_as(s, "zcn_server_destroy"); /* the cancels go now */
    free_listener(srv);
    return ZCN_OK;
}

/* ------------------------------------------------------------------ */
/* the seed's calls on a server: its callbacks, its loop               */
/* ------------------------------------------------------------------ */

ZCN_Error zcn_server_set_callbacks(ZCN_Server *srv, void *user_data, ZCN_OnAccept on_accept,
                                   ZCN_OnData on_data, ZCN_OnClose on_close)
{
    if (srv == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    srv->h.user_data = user_data;
    srv->h.on_accept = on_accept;
    srv->h.on_data = on_data;
    srv->h.on_close = on_close;
    return ZCN_OK;
}

ZCN_Error zcn_server_set_drain_callback(ZCN_Server *srv, ZCN_OnDrain on_drain)
{
    if (srv == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    srv->h.on_drain = on_drain;
    return ZCN_OK;
}

ZCN_Error zcn_server_set_eof_callback(ZCN_Server *srv, ZCN_OnEof on_eof)
{
    if (srv == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    srv->h.on_eof = on_eof;
    return ZCN_OK;
}

uint16_t zcn_server_port(const ZCN_Server *srv)
{
    return srv == NULL ? 0 : srv->port;
}

int zcn_server_listen_fd(const ZCN_Server *srv)
{
    return srv == NULL ? -1 : srv->listen_fd;
}

ZCN_Loop *zcn_server_get_loop(const ZCN_Server *srv)
{
    return srv == NULL ? NULL : srv->loop;
}

/* The loop calls through a server: it must have been started (the seed's
 * order: create, set callbacks, start, run). */
static ZCN_Error started(const ZCN_Server *srv)
{
    if (srv == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    ZCN_Error err = owner_check(srv->loop, "zcn_server_run");
    if (err != ZCN_OK)
        return err;
    if (srv->loop->in_callback)
        return zcn_fail(ZCN_ERR_BUSY, "the loop cannot be run from inside a callback");
    if (!srv->started)
        return zcn_fail(ZCN_ERR_NOT_STARTED, "call zcn_server_start first");
    return ZCN_OK;
}

ZCN_Error zcn_server_run_once(ZCN_Server *srv)
{
    ZCN_Error err = started(srv);
    if (err != ZCN_OK)
        return err;
    return zcn_loop_run_once_as(srv->loop, -1, NULL, "zcn_server_run_once");
}

ZCN_Error zcn_server_run_once_timeout(ZCN_Server *srv, int timeout_ms, uint32_t *handled_out)
{
    if (handled_out != NULL)
        *handled_out = 0;
    ZCN_Error err = started(srv);
    if (err != ZCN_OK)
        return err;
    return zcn_loop_run_once_as(srv->loop, timeout_ms, handled_out, "zcn_server_run_once_timeout");
}

ZCN_Error zcn_server_poll(ZCN_Server *srv, ZCN_Event *events, uint32_t capacity, int timeout_ms,
                          uint32_t *count_out)
{
    if (count_out != NULL)
        *count_out = 0;
    ZCN_Error err = started(srv);
    if (err != ZCN_OK)
        return err;
    return zcn_loop_poll_as(srv->loop, events, capacity, timeout_ms, count_out,
                            "zcn_server_poll");
}

ZCN_Error zcn_server_run(ZCN_Server *srv)
{
    ZCN_Error err = started(srv);
    if (err != ZCN_OK)
        return err;
    return zcn_loop_run_as(srv->loop, "zcn_server_run");
}

ZCN_Error zcn_server_stop(ZCN_Server *srv)
{
    /* The registry lookup touches only the registry, never *srv: a server
     * destroyed (or being destroyed) is simply not found; while it is
     * pinned its loop cannot go either (loop destroy unregisters it). */
    int slot = zcn_live_acquire(srv);
    if (slot == -1)
        return ZCN_ERR_INVALID_ARGUMENT; /* no detail: must stay signal-safe */
    zcn_loop_request_stop(srv->loop);
    zcn_live_release(slot);
    return ZCN_OK;
}

ZCN_Error zcn_server_flush(ZCN_Server *srv)
{
    if (srv == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    return zcn_loop_flush_as(srv->loop, "zcn_server_flush");
}

ZCN_Error zcn_server_wakeup_fd(ZCN_Server *srv, int *fd_out)
{
    if (srv == NULL) {
        if (fd_out != NULL)
            *fd_out = -1;
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    }
    return zcn_loop_wakeup_fd_as(srv->loop, fd_out, "zcn_server_wakeup_fd");
}

ZCN_Error zcn_server_stats(const ZCN_Server *srv, ZCN_ServerStats *out)
{
    if (srv == NULL || out == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server or out is NULL");
    zcn_loop_tcp_stats(srv->loop, out);
    return ZCN_OK;
}

const uint8_t *zcn_server_buffer_base(const ZCN_Server *srv)
{
    return srv == NULL ? NULL : srv->loop->slab;
}

size_t zcn_server_buffer_size(const ZCN_Server *srv)
{
    return srv == NULL ? 0 : srv->loop->buffer_size;
}

/* internal.h: a UDP socket created on a server shares its loop. */
ZCN_Error zcn_server_attach(ZCN_Server *srv, zcn_source *src, uint32_t *id_out)
{
    if (srv == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    return zcn_loop_attach(srv->loop, src, id_out);
}

void zcn_server_detach(ZCN_Server *srv, uint32_t id)
{
    if (srv != NULL)
        zcn_loop_detach(srv->loop, id);
}

ZCN_Backend zcn_server_backend(const ZCN_Server *srv, const char **reason)
{
    if (srv == NULL) {
        if (reason != NULL)
            *reason = "";
        return ZCN_BACKEND_AUTO;
    }
    return zcn_loop_backend(srv->loop, reason);
}

void *zcn_server_uring(ZCN_Server *srv)
{
    return srv == NULL ? NULL : srv->loop->ring;
}

int zcn_server_in_callback(const ZCN_Server *srv)
{
    return srv != NULL && srv->loop->in_callback > 0;
}

void zcn_server_callback_enter(ZCN_Server *srv)
{
    srv->loop->in_callback++;
}

void zcn_server_callback_leave(ZCN_Server *srv)
{
    srv->loop->in_callback--;
}
