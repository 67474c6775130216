/* The TCP server: one io_uring event loop with multishot accept, recv into
 * a provided-buffer ring built from the pool, and a per-connection send
 * queue of pool buffers. This file is the loop (turns, waits, the service
 * list, completions dispatched by user_data), accepting, and create, start,
 * destroy and the queries; c/tcp.h says where the other parts are.
 *
 * The path of one message: the kernel picks a buffer from the buffer ring and
 * posts a recv completion naming it; on_data borrows it; zcn_server_send of
 * that memory takes a reference instead of copying; when the last reference
 * (callback, pending delivery, send chunk) drops, the buffer goes back to the
 * buffer ring (or to the pool, to keep room for copied sends).
 *
 * Every connection is a slot in a fixed array sized connections_max; fd ->
 * slot goes through a table sized by RLIMIT_NOFILE. A slot is reused only
 * when no request in the kernel refers to it any more (recv_armed and
 * send_inflight both clear), and SQE user_data carries a generation so a
 * stale completion could never touch a new connection.
 *
 * The buffer policy (docs/BUFFERS.md, ZCN_Config in the header): buffers a
 * connection keeps beyond a callback -- its send queue and its deferred
 * receives -- are "held" and counted against a server-wide budget of
 * buffer_count - reserve, so the reserve always feeds receives. Each
 * connection may hold up to its cap, a fair share of the budget under
 * pressure. A receive is armed only for a connection that may take another
 * buffer; multishot only while it has room for a burst under its cap and
 * the server is not under pressure (else one buffer per request), so held
 * data cannot grow behind our back by more than the completions in flight
 * when a cap was reached. Connections waiting for budget wait in FIFO
 * order; if the budget stays used up while one waits, stalled connections
 * are aborted, biggest first, until what they held would serve the
 * waiters. Queued data that makes no progress for send_timeout_ms is
 * aborted too, as is a connection over the hard limit.
 */

#include "tcp_budget.h"

ZCN_Error zcn_tcp_wrong_thread(const char *fn)
{
    return zcn_fail(ZCN_ERR_WRONG_THREAD,
                    "%s called from a thread that does not own the server: the thread that "
                    "called zcn_server_start runs its loop and makes its calls",
                    fn);
}

static void arm_accept(ZCN_Server *s)
{
    struct io_uring_sqe *sqe = zcn_get_sqe(s->ring);
    if (sqe == NULL)
        return; /* try_resume_accept tries again next turn */
    io_uring_prep_multishot_accept(sqe, s->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, pack_ud(OP_ACCEPT, 0, 0));
    s->accept_armed = true;
}

static void try_resume_accept(ZCN_Server *s)
{
    if (s->started && !s->accept_armed && !s->destroying && s->now_ms >= s->accept_resume_ms)
        arm_accept(s);
}

static void accept_backoff(ZCN_Server *s)
{
    uint32_t ms = s->accept_backoff_ms == 0 ? ACCEPT_BACKOFF_MIN_MS : s->accept_backoff_ms * 2;
    if (ms > ACCEPT_BACKOFF_MAX_MS)
        ms = ACCEPT_BACKOFF_MAX_MS;
    s->accept_backoff_ms = ms;
    s->accept_resume_ms = s->now_ms + ms;
    s->stats.accept_backoffs++;
}

static void on_accept_cqe(ZCN_Server *s, struct io_uring_cqe *cqe)
{
    bool more = (cqe->flags & IORING_CQE_F_MORE) != 0;
    if (!more)
        s->accept_armed = false;
    if (cqe->res >= 0) {
        s->accept_backoff_ms = 0;
        if (s->destroying)
            close(cqe->res);
        else
            zcn_tcp_new_connection(s, cqe->res);
    } else {
        switch (-cqe->res) {
        case EMFILE:
        case ENFILE:
        case ENOBUFS:
        case ENOMEM:
            /* Out of fds or memory: wait before trying again, and make sure
             * the kernel is not retrying on its own meanwhile. */
            accept_backoff(s);
            if (more)
                zcn_tcp_cancel_ud(s, pack_ud(OP_ACCEPT, 0, 0), NULL, NULL);
            return;
        default: /* ECONNABORTED, EINTR, ECANCELED ...: transient */
            break;
        }
    }
    if (!s->accept_armed && s->accept_backoff_ms == 0)
        try_resume_accept(s);
}

static void arm_wake(ZCN_Server *s)
{
    struct io_uring_sqe *sqe = zcn_get_sqe(s->ring);
    if (sqe == NULL)
        return; /* turn() tries again before its next wait */
    io_uring_prep_poll_multishot(sqe, s->wake_fd, POLLIN);
    io_uring_sqe_set_data64(sqe, pack_ud(OP_WAKE, 0, 0));
    s->wake_armed = true;
}

static void on_wake(ZCN_Server *s, struct io_uring_cqe *cqe)
{
    if (!(cqe->flags & IORING_CQE_F_MORE))
        s->wake_armed = false;
    zcn_eventfd_drain(s->wake_fd);
    if (!s->wake_armed && !s->destroying)
        arm_wake(s);
}

static void handle_cqe(ZCN_Server *s, struct io_uring_cqe *cqe)
{
    uint64_t ud = io_uring_cqe_get_data64(cqe);
    enum op op = ud_op(ud);
    switch (op) {
    case OP_ACCEPT:
        on_accept_cqe(s, cqe);
        return;
    case OP_WAKE:
        on_wake(s, cqe);
        return;
    case OP_WAKEUP_PIPE:
        zcn_wakeup_on_cqe(&s->wakeup, cqe);
        return;
    case OP_TICK:
        s->tick_armed = false; /* the turn's housekeeping does the checks */
        return;
    case OP_IGNORE:
        return;
    case OP_SOURCE:
        if (ud_slot(ud) < ZCN_SOURCES_MAX && s->sources[ud_slot(ud)] != NULL)
            s->sources[ud_slot(ud)]->handle_cqe(s->sources[ud_slot(ud)], cqe);
        return;
    case OP_RECV:
    case OP_SEND:
        break;
    default:
        return;
    }
    uint32_t slot = ud_slot(ud);
    struct conn *c = slot < s->conns_max ? &s->conns[slot] : NULL;
    if (c == NULL || c->gen != ud_gen(ud) || c->state == CONN_FREE) {
        /* Cannot happen: slots are reused only after their requests end.
         * Return a buffer it may carry so none leaks. */
        if (cqe->flags & IORING_CQE_F_BUFFER) {
            uint32_t bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
            s->rx.count--;
            s->meta[bid].refs = 1;
            buf_unref(s, bid);
        }
        return;
    }
    if (op == OP_RECV)
        zcn_tcp_on_recv(s, c, cqe);
    else
        zcn_tcp_on_send(s, c, cqe->res);
}

/* Work that was waiting for room, buffers, budget or SQEs. */
static void run_service_list(ZCN_Server *s)
{
    zcn_tcp_ring_refill(s);
    zcn_tcp_serve_waiters(s);
    zcn_tcp_evict_for_waiters(s);
    /* Only what is queued now: entries re-added meanwhile wait a turn. */
    for (uint32_t n = s->service.count; n > 0; n--) {
        struct conn *c = list_pop(s, &s->service, OFF_SERVICE);
        if (c == NULL)
            break;
        if (!has_room(s, 2)) {
            service_add(s, c);
            continue;
        }
        if (c->state == CONN_OPEN) {
            if (c->rx_head != NIL || c->eof)
                zcn_tcp_flush_pending_rx(s, c);
            else
                zcn_tcp_maybe_arm_recv(s, c);
            zcn_tcp_submit_send(s, c);
            zcn_tcp_progress_shutdown(s, c);
        } else {
            zcn_tcp_progress_close(s, c);
        }
    }
    zcn_tcp_serve_waiters(s);
}

static void min_due(int64_t *best, uint64_t due, uint64_t now)
{
    int64_t ms = due > now ? (int64_t)(due - now) : 0;
    if (*best < 0 || ms < *best)
        *best = ms;
}

/* Milliseconds until the next timer the wait must honour (idle expiry,
 * accept resume; the policy's checks have their tick), or -1. */
static int next_timer_ms(const ZCN_Server *s)
{
    int64_t best = -1;
    if (s->idle_timeout_ms != 0 && s->lru.head != NIL)
        min_due(&best, s->conns[s->lru.head].last_active_ms + s->idle_timeout_ms, s->now_ms);
    if (s->started && !s->accept_armed && !s->destroying)
        min_due(&best, s->accept_resume_ms, s->now_ms);
    if (!s->tick_armed && zcn_tcp_tick_needed(s)) /* no SQE for the tick: time the wait */
        min_due(&best, s->now_ms + EVICT_STALL_MS / 4, s->now_ms);
    return best > INT32_MAX ? INT32_MAX : (int)best;
}

/* Ends the previous poll batch: lent buffers return, closed fds close. */
static void end_batch(ZCN_Server *s)
{
    while (s->lent_head != NIL) {
        uint32_t bid = (uint32_t)s->lent_head;
        s->lent_head = s->meta[bid].next;
        buf_unref(s, bid);
    }
    s->lent_count = 0;
    while (s->zombie_head != NIL) {
        struct conn *c = &s->conns[s->zombie_head];
        s->zombie_head = c->zombie_next;
        zcn_tcp_free_slot(s, c);
    }
    s->batch++; /* what the last batch lent is the caller's answer now */
}

/* What a wait hands the kernel first: queued sends (ours and the attached
 * sources'), receive buffers back in the ring. */
static void prepare_submit(ZCN_Server *s)
{
    zcn_tcp_flush_tx(s);
    for (uint32_t i = 0, seen = 0; seen < s->sources_count && i < ZCN_SOURCES_MAX; i++) {
        zcn_source *src = s->sources[i];
        if (src == NULL)
            continue;
        seen++;
        if (src->flush != NULL)
            src->flush(src);
    }
    zcn_tcp_ring_refill(s);
    zcn_bufring_publish(&s->rx);
}

/* Waits up to timeout_ms (-1 forever, 0 not at all) for a completion.
 * Returns 0 or a negative errno (-ETIME on timeout, -EINTR on a signal). */
static int wait_cqe(ZCN_Server *s, int timeout_ms)
{
    prepare_submit(s);
    return zcn_wait(s->ring, timeout_ms);
}

/* Sends queued since the last wait (by callbacks, or by a binding after
 * zcn_server_poll returned) go to the kernel now rather than at the next
 * wait. No system call when nothing is queued. */
static ZCN_Error submit_now(ZCN_Server *s)
{
    prepare_submit(s);
    int ret = io_uring_submit(s->ring);
    if (ret < 0 && ret != -EAGAIN && ret != -EBUSY && ret != -EINTR)
        return zcn_fail((ZCN_Error)-ret, "io_uring_submit: %s", strerror(-ret));
    return ZCN_OK;
}

static uint32_t reap(ZCN_Server *s)
{
    struct io_uring_cqe *cqe;
    unsigned head;
    uint32_t seen = 0;
    io_uring_for_each_cqe(s->ring, head, cqe)
    {
        if (seen == CQE_BATCH || !has_room(s, 3))
            break;
        handle_cqe(s, cqe);
        seen++;
    }
    io_uring_cq_advance(s->ring, seen);
    zcn_tcp_flush_tx(s);
    return seen;
}

/* Timers and deferred work of a turn. */
static void housekeeping(ZCN_Server *s)
{
    zcn_tcp_sweep_idle(s);
    zcn_tcp_sweep_send_timeouts(s);
    run_service_list(s);
}

/* One turn of the loop: timers, deferred work, at most one wait, then the
 * completions that are ready. *handled gets the work done. */
static ZCN_Error turn(ZCN_Server *s, int timeout_ms, uint32_t *handled)
{
    *handled = 0;
    s->now_ms = zcn_now_ms();
    uint64_t closed_before = s->stats.connections_closed;
    try_resume_accept(s);
    if (!s->wake_armed)
        arm_wake(s); /* a stop from another thread must always wake us */
    housekeeping(s);
    zcn_tcp_arm_tick(s);
    uint32_t early = (uint32_t)(s->stats.connections_closed - closed_before) + s->ev_n;

    int wait_ms = early > 0 ? 0 : timeout_ms;
    int timer_ms = next_timer_ms(s);
    if (timer_ms >= 0 && (wait_ms < 0 || timer_ms < wait_ms))
        wait_ms = timer_ms;
    zcn_wakeup_arm(&s->wakeup, s->ring, pack_ud(OP_WAKEUP_PIPE, 0, 0));
    int ret = wait_cqe(s, wait_ms);
    if (ret == -EINTR) {
        zcn_wakeup_consume(&s->wakeup);
        *handled = early;
        return early > 0 ? ZCN_OK : zcn_fail((ZCN_Error)EINTR, "interrupted by a signal");
    }
    if (ret < 0 && ret != -ETIME && ret != -EAGAIN && ret != -EBUSY)
        return zcn_fail((ZCN_Error)-ret, "io_uring_enter failed");
    s->now_ms = zcn_now_ms();
    uint32_t seen = reap(s);
    housekeeping(s);
    *handled = early + seen;
    if (zcn_wakeup_take(&s->wakeup))
        return zcn_fail((ZCN_Error)EINTR, "interrupted: a byte came on the wakeup fd");
    return ZCN_OK;
}

static ZCN_Error loop_guard(ZCN_Server *s, const char *fn)
{
    if (s == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    ZCN_Error err = owner_check(s, fn);
    if (err != ZCN_OK)
        return err;
    if (s->in_callback)
        return zcn_fail(ZCN_ERR_BUSY, "the loop cannot be run from inside a callback");
    if (!s->started)
        return zcn_fail(ZCN_ERR_NOT_STARTED, "call zcn_server_start first");
    return ZCN_OK;
}

static ZCN_Error turn_cb(void *loop, int timeout_ms, uint32_t *handled)
{
    return turn(loop, timeout_ms, handled);
}

/* Ends the previous poll batch, then runs turns (zcn_run_until). */
static ZCN_Error run_until(ZCN_Server *s, int timeout_ms, uint32_t *handled_out, bool *stopped)
{
    s->in_loop++;
    end_batch(s);
    ZCN_Error err = zcn_run_until(s, turn_cb, &s->stop_requested, timeout_ms, handled_out, stopped);
    /* A stopped loop may not wait again soon: what its callbacks sent (a
     * reply, then stop) goes now. Other returns leave that to the next
     * wait, which submits it in the same system call. */
    if (*stopped) {
        ZCN_Error e = submit_now(s);
        if (err == ZCN_OK)
            err = e;
    }
    s->in_loop--;
    return err;
}

ZCN_Error zcn_server_run_once(ZCN_Server *s)
{
    ZCN_Error err = loop_guard(s, "zcn_server_run_once");
    if (err != ZCN_OK)
        return err;
    s->ev = NULL;
    bool stopped;
    return run_until(s, -1, NULL, &stopped);
}

ZCN_Error zcn_server_run_once_timeout(ZCN_Server *s, int timeout_ms, uint32_t *handled_out)
{
    if (handled_out != NULL)
        *handled_out = 0;
    ZCN_Error err = loop_guard(s, "zcn_server_run_once_timeout");
    if (err != ZCN_OK)
        return err;
    s->ev = NULL;
    bool stopped;
    return run_until(s, timeout_ms, handled_out, &stopped);
}

ZCN_Error zcn_server_poll(ZCN_Server *s, ZCN_Event *events, uint32_t capacity, int timeout_ms,
                          uint32_t *count_out)
{
    if (count_out != NULL)
        *count_out = 0;
    ZCN_Error err = loop_guard(s, "zcn_server_poll");
    if (err != ZCN_OK)
        return err;
    if (events == NULL || capacity < 4)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "events must hold at least 4 entries");
    s->poll_mode = true;
    s->ev = events;
    s->ev_cap = capacity;
    s->ev_n = 0;
    bool stopped;
    err = run_until(s, timeout_ms, NULL, &stopped);
    if (count_out != NULL)
        *count_out = s->ev_n;
    s->ev = NULL;
    s->ev_cap = 0;
    return err;
}

ZCN_Error zcn_server_run(ZCN_Server *s)
{
    ZCN_Error err = loop_guard(s, "zcn_server_run");
    if (err != ZCN_OK)
        return err;
    s->ev = NULL;
    for (;;) {
        bool stopped = false;
        err = run_until(s, -1, NULL, &stopped);
        if (stopped)
            return ZCN_OK;
        if (err != ZCN_OK && err != (ZCN_Error)EINTR)
            return err;
    }
}

ZCN_Error zcn_server_stop(ZCN_Server *s)
{
    /* The registry lookup touches only the registry, never *s: a server
     * destroyed (or being destroyed) is simply not found. */
    int slot = zcn_live_acquire(s);
    if (slot == -1)
        return ZCN_ERR_INVALID_ARGUMENT; /* no detail: must stay signal-safe */
    atomic_store_explicit(&s->stop_requested, 1, memory_order_release);
    zcn_eventfd_wake(s->wake_fd);
    zcn_live_release(slot);
    return ZCN_OK;
}

ZCN_Error zcn_server_flush(ZCN_Server *s)
{
    if (s == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    ZCN_Error err = owner_check(s, "zcn_server_flush");
    if (err != ZCN_OK)
        return err;
    if (!s->started)
        return ZCN_OK; /* nothing can be queued before start */
    return submit_now(s);
}

ZCN_Error zcn_server_wakeup_fd(ZCN_Server *s, int *fd_out)
{
    if (fd_out != NULL)
        *fd_out = -1;
    if (s == NULL || fd_out == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, s == NULL ? "server is NULL" : "fd_out is NULL");
    ZCN_Error err = owner_check(s, "zcn_server_wakeup_fd");
    if (err != ZCN_OK)
        return err;
    return zcn_wakeup_open(&s->wakeup, fd_out);
}

struct settings {
    uint32_t entries, buffers, backlog, conns_max, idle_ms, flags, reserve, send_timeout_ms,
        hard_max;
    size_t buffer_size;
    uint64_t sendq_max;
    bool nodelay;
};

#define KNOWN_FLAGS ((uint32_t)(ZCN_SERVER_REUSEPORT | ZCN_SERVER_HALF_CLOSE))

static ZCN_Error read_config(const ZCN_Config *cfg, struct settings *out)
{
    out->entries = cfg->io_uring_entries ? cfg->io_uring_entries : 256;
    out->buffers = cfg->buffer_pool_size ? cfg->buffer_pool_size : 1024;
    out->buffer_size = cfg->buffer_size ? cfg->buffer_size : 16384;
    out->backlog = cfg->backlog ? cfg->backlog : 1024;
    out->conns_max = cfg->connections_max ? cfg->connections_max : 4096;
    out->sendq_max = cfg->send_queue_max_bytes ? cfg->send_queue_max_bytes : (1u << 20);
    out->idle_ms = cfg->idle_timeout_ms;
    out->nodelay = cfg->tcp_nodelay >= 0;
    out->flags = cfg->flags;
    out->send_timeout_ms = cfg->send_timeout_ms ? cfg->send_timeout_ms : SEND_TIMEOUT_DEFAULT_MS;
    out->hard_max = cfg->conn_buffers_hard_max;
    if (out->entries > ZCN_SERVER_ENTRIES_MAX)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "io_uring_entries %u is over %u", out->entries,
                        ZCN_SERVER_ENTRIES_MAX);
    if (out->buffers < 2 || out->buffers > ZCN_SERVER_BUFFERS_MAX)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "buffer_pool_size %u is not in 2..%u",
                        out->buffers, ZCN_SERVER_BUFFERS_MAX);
    if (out->buffer_size > ZCN_SERVER_BUFFER_SIZE_MAX)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "buffer_size %zu is over %u", out->buffer_size,
                        ZCN_SERVER_BUFFER_SIZE_MAX);
    if (out->conns_max > ZCN_SERVER_CONNECTIONS_MAX)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "connections_max %u is over %u",
                        out->conns_max, ZCN_SERVER_CONNECTIONS_MAX);
    if (out->flags & ~KNOWN_FLAGS)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "unknown flags 0x%x", out->flags & ~KNOWN_FLAGS);
    out->reserve = cfg->buffer_reserve ? cfg->buffer_reserve : out->buffers / 4;
    if (out->reserve == 0)
        out->reserve = 1;
    if (out->reserve >= out->buffers)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                        "buffer_reserve %u must be below buffer_pool_size %u", out->reserve,
                        out->buffers);
    if (out->backlog > INT32_MAX)
        out->backlog = INT32_MAX;
    out->buffer_size = (out->buffer_size + ZCN_PAGE_SIZE - 1) / ZCN_PAGE_SIZE * ZCN_PAGE_SIZE;
    if (out->sendq_max < out->buffer_size)
        out->sendq_max = out->buffer_size; /* one received buffer always fits */
    return ZCN_OK;
}

static ZCN_Error open_listener(ZCN_Server *s, const ZCN_Config *cfg, const struct settings *st)
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
    if ((st->flags & ZCN_SERVER_REUSEPORT) &&
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
    if (listen(fd, (int)st->backlog) != 0) {
        int e = errno;
        close(fd);
        return zcn_fail((ZCN_Error)e, "listen: %s", strerror(e));
    }
    len = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &len);
    s->port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                            : ((struct sockaddr_in6 *)&ss)->sin6_port);
    s->listen_fd = fd;
    return ZCN_OK;
}

/* The receive ring (c/bufring.c), filled from the pool, and the limits
 * that depend on the buffer counts. */
static ZCN_Error setup_buffer_ring(ZCN_Server *s, const struct settings *st)
{
    s->reserve = st->reserve;
    s->budget = s->buffer_count - s->reserve;
    s->br_target = s->buffer_count - s->reserve;
    if (s->br_target < 1)
        s->br_target = 1;
    s->copy_headroom = s->buffer_count / 8 > 2 ? s->buffer_count / 8 : 2;
    s->pool_free = s->buffer_count;
    ZCN_Error e = zcn_bufring_setup(&s->rx, s->ring, BUFFER_GROUP, s->br_target, s->slab,
                                    s->buffer_size);
    if (e != ZCN_OK)
        return e;
    zcn_tcp_ring_refill(s);
    zcn_bufring_publish(&s->rx);
    /* The per-connection cap in buffers: what send_queue_max_bytes needs
     * when buffers are full, but never more than a quarter of the budget,
     * so a few peers that stop reading cannot take it all. */
    uint64_t bufs = s->send_queue_max_bytes / s->buffer_size + 1;
    if (bufs > s->budget / 4)
        bufs = s->budget / 4;
    s->send_queue_max_bufs = bufs < 2 ? 2 : (uint32_t)bufs;
    s->hard_max_bufs = st->hard_max ? st->hard_max : 2 * s->send_queue_max_bufs + 64;
    s->conn_chunks_max = 2 * s->send_queue_max_bufs + IOV_BATCH;
    return ZCN_OK;
}

static ZCN_Error alloc_tables(ZCN_Server *s, const struct settings *st)
{
    struct rlimit rl;
    uint64_t nofile = 65536;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        nofile = rl.rlim_cur;
    if (nofile > (1u << 24))
        nofile = 1u << 24;
    s->fd_table_size = (uint32_t)nofile;
    s->conns_max = st->conns_max < nofile ? st->conns_max : (uint32_t)nofile;
    /* Chunks: a packed or zero-copy chunk per buffer and a few slices
     * more, and some per connection; each connection is capped too
     * (conn_chunks_max), so none can take the table. */
    s->chunks_max = s->buffer_count * 4 + s->conns_max * 2;
    s->meta = calloc(s->buffer_count, sizeof *s->meta);
    s->conns = calloc(s->conns_max, sizeof *s->conns);
    s->fd_table = malloc((size_t)s->fd_table_size * sizeof *s->fd_table);
    s->chunks = malloc((size_t)s->chunks_max * sizeof *s->chunks);
    s->tx_cap = s->conns_max * 2;
    s->tx = malloc((size_t)s->tx_cap * sizeof *s->tx);
    if (!s->meta || !s->conns || !s->fd_table || !s->chunks || !s->tx)
        return zcn_fail((ZCN_Error)ENOMEM, "server tables");
    for (uint32_t i = 0; i < s->fd_table_size; i++)
        s->fd_table[i] = NIL;
    for (uint32_t i = 0; i < s->chunks_max; i++)
        s->chunks[i].next = i + 1 < s->chunks_max ? (int32_t)(i + 1) : NIL;
    s->chunk_free = 0;
    for (uint32_t i = 0; i < s->conns_max; i++) {
        struct conn *c = &s->conns[i];
        c->fd = -1;
        c->zombie_next = i + 1 < s->conns_max ? (int32_t)(i + 1) : NIL;
        c->service.prev = c->service.next = NOT_LINKED;
        c->lru = c->wait = c->service;
    }
    s->conn_free = 0;
    return ZCN_OK;
}

static void free_server(ZCN_Server *s)
{
    zcn_bufring_unregister(&s->rx, s->ring);
    zcn_bufring_unmap(&s->rx);
    if (s->ring_handle != NULL)
        zcn_ring_destroy(s->ring_handle);
    if (s->listen_fd >= 0)
        close(s->listen_fd);
    if (s->wake_fd >= 0)
        close(s->wake_fd);
    zcn_wakeup_close(&s->wakeup);
    zcn_pool_destroy(s->pool);
    free(s->meta);
    free(s->conns);
    free(s->fd_table);
    free(s->chunks);
    free(s->tx);
    free(s);
}

static void init_lists(ZCN_Server *s)
{
    struct list empty = {NIL, NIL, 0};
    s->lru = s->service = s->waiters = empty;
    s->zombie_head = NIL;
    s->lent_head = NIL;
}

ZCN_Server *zcn_server_create(const ZCN_Config *cfg, ZCN_Error *err)
{
    zcn_clear_detail();
    if (cfg == NULL) {
        zcn_set_err(err, zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "config is NULL"));
        return NULL;
    }
    struct settings st = {0};
    ZCN_Error e = read_config(cfg, &st);
    if (e != ZCN_OK) {
        zcn_set_err(err, e);
        return NULL;
    }
    ZCN_Server *s = calloc(1, sizeof *s);
    if (s == NULL) {
        zcn_set_err(err, zcn_fail((ZCN_Error)ENOMEM, "server"));
        return NULL;
    }
    s->listen_fd = -1;
    s->wake_fd = -1;
    s->live_slot = -1;
    zcn_wakeup_init(&s->wakeup);
    s->buffer_count = st.buffers;
    s->buffer_size = st.buffer_size;
    s->backlog = st.backlog;
    s->send_queue_max_bytes = st.sendq_max;
    s->idle_timeout_ms = st.idle_ms;
    s->send_timeout_ms = st.send_timeout_ms == ZCN_TIMEOUT_NEVER ? 0 : st.send_timeout_ms;
    s->nodelay = st.nodelay;
    s->half_close_flag = (st.flags & ZCN_SERVER_HALF_CLOSE) != 0;
    init_lists(s);

    e = alloc_tables(s, &st);
    if (e == ZCN_OK) {
        if (cfg->buffer_memory != NULL)
            s->pool = zcn_pool_create_in(cfg->buffer_memory, cfg->buffer_memory_size,
                                         st.buffer_size, st.buffers, &e);
        else
            s->pool = zcn_pool_create(st.buffer_size, st.buffers, &e);
        if (s->pool != NULL)
            s->slab = zcn_pool_base(s->pool);
    }
    if (e == ZCN_OK) {
        /* CQ room for a completion per connection and per buffer at once, so
         * multishot requests are not ended by overflow in normal operation. */
        uint64_t cq = (uint64_t)s->conns_max * 2 + s->buffer_count + 64;
        s->ring_handle = zcn_ring_create_ex(st.entries, zcn_cq_entries(cq, st.entries),
                                            ZCN_RING_START_DISABLED, &e);
        if (s->ring_handle != NULL)
            s->ring = zcn_ring_io_uring(s->ring_handle);
    }
    if (e == ZCN_OK)
        e = open_listener(s, cfg, &st);
    if (e == ZCN_OK) {
        s->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (s->wake_fd < 0)
            e = zcn_fail((ZCN_Error)errno, "eventfd: %s", strerror(errno));
    }
    if (e == ZCN_OK)
        e = setup_buffer_ring(s, &st);
    if (e != ZCN_OK) {
        free_server(s);
        zcn_set_err(err, e);
        return NULL;
    }
    s->live_slot = zcn_live_add(s);
    zcn_set_err(err, ZCN_OK);
    return s;
}

ZCN_Error zcn_server_start(ZCN_Server *s)
{
    if (s == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    if (s->started)
        return zcn_fail(ZCN_ERR_ALREADY_STARTED, "zcn_server_start was already called");
    if (s->in_callback)
        return zcn_fail(ZCN_ERR_BUSY, "not from inside a callback");
    /* The ring was created disabled: enabling it here makes this thread its
     * single issuer, so a server may be created on one thread and run on
     * another. */
    ZCN_Error e = zcn_ring_enable(s->ring_handle);
    if (e != ZCN_OK)
        return e;
    s->owner = this_thread();
    s->started = true;
    s->now_ms = zcn_now_ms();
    arm_accept(s);
    arm_wake(s);
    int ret = io_uring_submit(s->ring);
    if (ret < 0) {
        s->started = false;
        return zcn_fail((ZCN_Error)-ret, "io_uring_submit: %s", strerror(-ret));
    }
    return ZCN_OK;
}

/* Ends every connection and waits (bounded) for the kernel to finish with
 * them, so no request can write into memory about to be freed. */
static void drain_for_destroy(ZCN_Server *s)
{
    s->destroying = true;
    s->in_loop++;
    if (s->listen_fd >= 0) {
        shutdown(s->listen_fd, SHUT_RDWR);
        if (s->accept_armed)
            zcn_tcp_cancel_ud(s, pack_ud(OP_ACCEPT, 0, 0), NULL, NULL);
    }
    if (s->wake_armed)
        zcn_tcp_cancel_ud(s, pack_ud(OP_WAKE, 0, 0), NULL, NULL);
    if (s->wakeup.armed)
        zcn_tcp_cancel_ud(s, pack_ud(OP_WAKEUP_PIPE, 0, 0), NULL, NULL);
    if (s->tick_armed)
        zcn_tcp_cancel_ud(s, pack_ud(OP_TICK, 0, 0), NULL, NULL);
    s->ev = NULL; /* destroy reports closes through callbacks only */
    s->poll_mode = false;
    end_batch(s);
    for (uint32_t i = 0; i < s->conns_max; i++)
        zcn_tcp_abort_conn(s, &s->conns[i], false);
    uint64_t deadline = zcn_now_ms() + DESTROY_DRAIN_MS;
    while (s->conns_active > 0 || s->accept_armed || s->wake_armed || s->wakeup.armed ||
           s->tick_armed) {
        s->now_ms = zcn_now_ms();
        if (s->now_ms >= deadline)
            break;
        /* -EEXIST: destroy runs on another thread than the loop did, which
         * may not reap a DEFER_TASKRUN ring; ring teardown cancels instead. */
        int ret = wait_cqe(s, 50);
        if (ret < 0 && ret != -ETIME && ret != -EINTR)
            break;
        reap(s);
        run_service_list(s);
    }
    /* Whatever the kernel did not give back in time still gets on_close. */
    for (uint32_t i = 0; i < s->conns_max; i++) {
        struct conn *c = &s->conns[i];
        if (c->state == CONN_FREE)
            continue;
        c->recv_armed = c->send_inflight = false;
        if (c->state != CONN_ZOMBIE)
            zcn_tcp_finalize(s, c);
    }
    s->in_loop--;
}

ZCN_Error zcn_server_destroy(ZCN_Server *s)
{
    if (s == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    if (s->in_callback)
        return zcn_fail(ZCN_ERR_BUSY, "the server cannot be destroyed from its own callback");
    if (s->sources_count > 0)
        return zcn_fail(ZCN_ERR_BUSY,
                        "%u UDP sockets still use this server's loop: destroy them first (one "
                        "already destroyed waits for its last completions: run the loop once more)",
                        s->sources_count);
    /* From now on zcn_server_stop does not find the server; one already
     * inside it has finished when this returns. */
    zcn_live_remove(s->live_slot);
    if (s->started)
        drain_for_destroy(s);
    /* io_uring_queue_exit (in zcn_ring_destroy) cancels what is left. */
    free_server(s);
    return ZCN_OK;
}

ZCN_Error zcn_server_set_callbacks(ZCN_Server *s, void *user_data, ZCN_OnAccept on_accept,
                                   ZCN_OnData on_data, ZCN_OnClose on_close)
{
    if (s == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    s->user_data = user_data;
    s->on_accept = on_accept;
    s->on_data = on_data;
    s->on_close = on_close;
    return ZCN_OK;
}

ZCN_Error zcn_server_set_drain_callback(ZCN_Server *s, ZCN_OnDrain on_drain)
{
    if (s == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    s->on_drain = on_drain;
    return ZCN_OK;
}

ZCN_Error zcn_server_set_eof_callback(ZCN_Server *s, ZCN_OnEof on_eof)
{
    if (s == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL");
    s->on_eof = on_eof;
    return ZCN_OK;
}

uint16_t zcn_server_port(const ZCN_Server *s)
{
    return s == NULL ? 0 : s->port;
}

int zcn_server_listen_fd(const ZCN_Server *s)
{
    return s == NULL ? -1 : s->listen_fd;
}

ZCN_Error zcn_server_stats(const ZCN_Server *s, ZCN_ServerStats *out)
{
    if (s == NULL || out == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server or out is NULL");
    *out = s->stats;
    out->connections_active = s->conns_active;
    out->buffers_total = s->buffer_count;
    out->buffers_in_use = s->buffer_count - s->pool_free - s->rx.count;
    out->buffers_held = (uint64_t)s->parked + s->user_bufs;
    out->buffer_budget = s->budget;
    out->buffer_waiters = s->waiters.count;
    return ZCN_OK;
}

const uint8_t *zcn_server_buffer_base(const ZCN_Server *s)
{
    return s == NULL ? NULL : s->slab;
}

size_t zcn_server_buffer_size(const ZCN_Server *s)
{
    return s == NULL ? 0 : s->buffer_size;
}

ZCN_Error zcn_server_attach(ZCN_Server *s, zcn_source *src, uint32_t *id_out)
{
    if (s == NULL || src == NULL || src->handle_cqe == NULL || id_out == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server or source is NULL");
    for (uint32_t i = 0; i < ZCN_SOURCES_MAX; i++) {
        if (s->sources[i] == NULL) {
            s->sources[i] = src;
            s->sources_count++;
            *id_out = i;
            return ZCN_OK;
        }
    }
    return zcn_fail(ZCN_ERR_EXHAUSTED, "at most %d sockets can share one server's loop",
                    ZCN_SOURCES_MAX);
}

void zcn_server_detach(ZCN_Server *s, uint32_t id)
{
    if (s == NULL || id >= ZCN_SOURCES_MAX || s->sources[id] == NULL)
        return;
    s->sources[id] = NULL;
    s->sources_count--;
}

void *zcn_server_uring(ZCN_Server *s)
{
    return s == NULL ? NULL : s->ring;
}

int zcn_server_in_callback(const ZCN_Server *s)
{
    return s != NULL && s->in_callback > 0;
}

void zcn_server_callback_enter(ZCN_Server *s)
{
    s->in_callback++;
}

void zcn_server_callback_leave(ZCN_Server *s)
{
    s->in_callback--;
}
