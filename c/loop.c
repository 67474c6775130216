/* The loop: one io_uring with everything on it. A turn runs the timers
 * that are due, the calls queued from other threads and the deferred work
 * of the connections (the service list), then waits at most until the
 * nearest timer, then hands each completion to its owner by the op code in
 * its user_data: a listener (accept), a connection (connect, recv, send),
 * an fd watch, the wake-up eventfd or pipe, the policy's tick, or an
 * attached source (a UDP socket). This file is also the loop's life:
 * create (config, pool, ring, tables), the owner rule, run / poll / stop,
 * destroy (everything still on it ends, bounded), and its queries; its
 * counters are c/stats.c's.
 *
 * The path of one message: the kernel picks a buffer from the buffer ring and
 * posts a recv completion naming it; on_data borrows it; zcn_loop_send of
 * that memory takes a reference instead of copying; when the last reference
 * (callback, pending delivery, send chunk) drops, the buffer goes back to the
 * buffer ring (or to the pool, to keep room for copied sends).
 *
 * Every connection, accepted or connected out, is a slot in a fixed array
 * sized connections_max; fd -> slot goes through a table sized by
 * RLIMIT_NOFILE. A slot is reused only when no request in the kernel refers
 * to it any more, and SQE user_data carries a generation so a stale
 * completion could never touch a new connection. The buffer policy is
 * c/buffers.c's (docs/BUFFERS.md).
 */

#include "buffers.h"

ZCN_Error zcn_tcp_wrong_thread(const char *fn)
{
    return zcn_fail(ZCN_ERR_WRONG_THREAD,
                    "%s called from a thread that does not own the loop: the thread that "
                    "first ran it (or called zcn_server_start) runs it and makes its calls",
                    fn);
}

static void arm_wake(ZCN_Loop *s)
{
    struct io_uring_sqe *sqe = zcn_get_sqe(s->ring);
    if (sqe == NULL)
        return; /* turn() tries again before its next wait */
    io_uring_prep_poll_multishot(sqe, s->wake_fd, POLLIN);
    io_uring_sqe_set_data64(sqe, pack_ud(OP_WAKE, 0, 0));
    s->wake_armed = true;
}

static void on_wake(ZCN_Loop *s, struct io_uring_cqe *cqe)
{
    if (!(cqe->flags & IORING_CQE_F_MORE))
        s->wake_armed = false;
    zcn_eventfd_drain(s->wake_fd);
    if (!s->wake_armed && !s->destroying)
        arm_wake(s);
}

static void handle_cqe(ZCN_Loop *s, struct io_uring_cqe *cqe)
{
    uint64_t ud = io_uring_cqe_get_data64(cqe);
    enum op op = ud_op(ud);
    switch (op) {
    case OP_ACCEPT:
        zcn_tcp_on_accept_cqe(s, cqe);
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
    case OP_WATCH:
        zcn_watch_on_cqe(s, ud, cqe->res);
        return;
    case OP_IGNORE:
        return;
    case OP_SOURCE:
        if (ud_slot(ud) < ZCN_SOURCES_MAX && s->sources[ud_slot(ud)] != NULL)
            s->sources[ud_slot(ud)]->handle_cqe(s->sources[ud_slot(ud)], cqe);
        return;
    case OP_RECV:
    case OP_SEND:
    case OP_CONNECT:
    case OP_SPLICE_IN:
    case OP_SPLICE_OUT:
        break;
    default:
        return;
    }
    uint32_t slot = ud_slot(ud);
    struct conn *c = slot < s->conns_max ? &s->conns[slot] : NULL;
    if (c == NULL || c->gen != ud_gen(ud) || c->state == CONN_FREE) {
        /* Cannot happen: slots are reused only after their requests end.
         * Return a buffer it may carry so none leaks. */
        if (op == OP_RECV)
            zcn_tcp_drop_rx_cqe(s, cqe);
        return;
    }
    if (op == OP_RECV)
        zcn_tcp_on_recv(s, c, cqe);
    else if (op == OP_SEND)
        zcn_tcp_on_send(s, c, cqe->res);
    else if (op == OP_SPLICE_IN || op == OP_SPLICE_OUT)
        zcn_splice_on_poll(s, c, op, cqe->res);
    else
        zcn_tcp_on_connect_cqe(s, c, cqe->res);
}

/* Work that was waiting for room, buffers, budget or SQEs. */
static void run_service_list(ZCN_Loop *s)
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
        if (c->state == CONN_CONNECTING) {
            zcn_tcp_connect_progress(s, c);
        } else if (c->state == CONN_OPEN) {
            if (ZCN_UNLIKELY(c->drain_notify) && drain_due(s, c)) {
                drain_consume(s, c);
                zcn_tcp_emit(s, ZCN_EVENT_DRAIN, c);
                if (c->state != CONN_OPEN)
                    continue;
            }
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

/* Milliseconds until the nearest thing the wait must honour (timers, an
 * accept to resume; the policy's checks have their tick), or -1. */
static int next_timer_ms(const ZCN_Loop *s)
{
    int64_t best = zcn_timers_next_ms(s);
    int accept_ms = zcn_tcp_accept_timer_ms(s);
    if (accept_ms >= 0)
        min_due(&best, s->now_ms + (uint64_t)accept_ms, s->now_ms);
    if (!s->tick_armed && zcn_tcp_tick_needed(s)) /* no SQE for the tick: time the wait */
        min_due(&best, s->now_ms + EVICT_STALL_MS / 4, s->now_ms);
    if (s->watches.want_arm > 0 || s->watches.cancels > 0)
        min_due(&best, s->now_ms + 1, s->now_ms); /* a watch waits for an SQE */
    return best > INT32_MAX ? INT32_MAX : (int)best;
}

/* Ends the previous poll batch: lent buffers return, closed fds close. */
static void end_batch(ZCN_Loop *s)
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
    for (uint32_t i = 0, seen = 0; seen < s->sources_count && i < ZCN_SOURCES_MAX; i++) {
        zcn_source *src = s->sources[i];
        if (src == NULL)
            continue;
        seen++;
        if (src->end_batch != NULL)
            src->end_batch(src);
    }
}

/* What a wait hands the kernel first: queued sends (ours and the attached
 * sources'), receive buffers back in the ring. */
static void prepare_submit(ZCN_Loop *s)
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
    if (ZCN_UNLIKELY(atomic_load_explicit(&s->snap_wanted, memory_order_relaxed)))
        zcn_loop_publish_stats(s);
}

/* Waits up to timeout_ms (-1 forever, 0 not at all) for a completion.
 * Returns 0 or a negative errno (-ETIME on timeout, -EINTR on a signal). */
static int wait_cqe(ZCN_Loop *s, int timeout_ms)
{
    uint32_t emitted = s->ev_n;
    prepare_submit(s);
    /* A source's flush may add to the poll batch (a UDP socket in batch
     * mode reports a send error): the caller gets it now, not after the
     * wait. */
    if (s->ev != NULL && s->ev_n != emitted)
        timeout_ms = 0;
    return zcn_wait(s->ring, timeout_ms);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Something for the turn besides completions: a call or a stop queued by
 * another thread (their eventfd completion follows; no need to wait for it). */
static bool cross_thread_work(ZCN_Loop *s)
{
    return atomic_load_explicit(&s->calls.pending, memory_order_acquire) > 0 ||
           atomic_load_explicit(&s->stop_requested, memory_order_relaxed) != 0;
}

/* One look for completions without blocking. With DEFER_TASKRUN the kernel
 * posts them only when this thread enters it (io_uring_get_events), so a
 * peek at the CQ ring alone would never see one; with TASKRUN_FLAG it says
 * when entering is worth it (IORING_SQ_TASKRUN), and the spin costs a load
 * until then. On the epoll backend: epoll_wait with timeout 0. */
static void poll_events(ZCN_Loop *s)
{
    if (s->busy_peek && !(IO_URING_READ_ONCE(*s->ring->sq.kflags) & IORING_SQ_TASKRUN))
        return;
    (void)zcn_uring_get_events(s->ring); /* an error shows in the blocking wait */
}

/* Spins until there is work (true) or the spin is over (false): until
 * busy_poll_ns have passed since the last completion, and never past
 * timeout_ms (>= 0), what the turn may wait (the nearest timer, the
 * caller's timeout). The turn's submissions went to the kernel already. */
static bool busy_poll(ZCN_Loop *s, uint64_t start_ns, int timeout_ms)
{
    uint64_t end = s->busy_last_ns + s->busy_poll_ns;
    if (timeout_ms >= 0 && start_ns + (uint64_t)timeout_ms * 1000000u < end)
        end = start_ns + (uint64_t)timeout_ms * 1000000u;
    for (;;) {
        if (io_uring_cq_ready(s->ring) > 0 || cross_thread_work(s)) {
            s->lstats.busy_polls_found++;
            return true;
        }
        if (now_ns() >= end) {
            s->lstats.busy_polls_expired++;
            return false;
        }
        poll_events(s);
    }
}

/* wait_cqe with busy polling: the turn's sends and recycled buffers go to
 * the kernel without waiting, then a spin (busy_poll), then, if it found
 * nothing, the blocking wait for what is left of timeout_ms. A loop that
 * had no completion for busy_poll_ns blocks at once: an idle loop sleeps. */
static int busy_wait(ZCN_Loop *s, int timeout_ms)
{
    uint32_t emitted = s->ev_n;
    prepare_submit(s);
    if (s->ev != NULL && s->ev_n != emitted)
        timeout_ms = 0;
    uint64_t start = now_ns();
    if (timeout_ms != 0 && start < s->busy_last_ns + s->busy_poll_ns &&
        io_uring_cq_ready(s->ring) == 0) {
        int ret = zcn_uring_submit_and_get_events(s->ring);
        if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY)
            return ret;
        if (busy_poll(s, start, timeout_ms)) {
            s->busy_last_ns = now_ns();
            return 0;
        }
        if (timeout_ms > 0) { /* what is left, rounded up: a timer is never early */
            uint64_t spent = now_ns() - start, limit = (uint64_t)timeout_ms * 1000000u;
            timeout_ms = spent >= limit ? 0 : (int)((limit - spent + 999999u) / 1000000u);
        }
    }
    int ret = zcn_wait(s->ring, timeout_ms);
    if (io_uring_cq_ready(s->ring) > 0)
        s->busy_last_ns = now_ns();
    return ret;
}

/* Sends queued since the last wait (by callbacks, or by a binding after
 * zcn_loop_poll returned) go to the kernel now rather than at the next
 * wait. No system call when nothing is queued. */
static ZCN_Error submit_now(ZCN_Loop *s)
{
    prepare_submit(s);
    int ret = zcn_uring_submit(s->ring);
    if (ret < 0 && ret != -EAGAIN && ret != -EBUSY && ret != -EINTR)
        return zcn_fail((ZCN_Error)-ret, "io_uring_submit: %s", strerror(-ret));
    return ZCN_OK;
}

/* Ring buffers a completion carries, if it is a TCP receive's. */
static inline uint32_t rx_bufs_of(const ZCN_Loop *s, const struct io_uring_cqe *cqe)
{
    if (!(cqe->flags & IORING_CQE_F_BUFFER) || ud_op(io_uring_cqe_get_data64(cqe)) != OP_RECV)
        return 0;
    return rx_bufs_in(s, cqe->res);
}

static uint32_t reap(ZCN_Loop *s)
{
    struct io_uring_cqe *cqe;
    unsigned head;
    uint32_t seen = 0, unreaped = 0;
    /* First the buffers this batch's receives took (recycle() counts
     * them out of the ring): a look at flags of CQEs about to be read. */
    io_uring_for_each_cqe(s->ring, head, cqe)
    {
        if (seen++ == CQE_BATCH)
            break;
        unreaped += rx_bufs_of(s, cqe);
    }
    s->rx_unreaped = unreaped;
    seen = 0;
    io_uring_for_each_cqe(s->ring, head, cqe)
    {
        if (seen == CQE_BATCH || !has_room(s, 3))
            break;
        s->rx_unreaped -= rx_bufs_of(s, cqe);
        handle_cqe(s, cqe);
        seen++;
    }
    s->rx_unreaped = 0;
    io_uring_cq_advance(s->ring, seen);
    zcn_tcp_flush_tx_reaped(s);
    return seen;
}

/* Timers, calls and deferred work of a turn; returns the timers and calls
 * that ran (work done, as completions are). */
static uint32_t housekeeping(ZCN_Loop *s)
{
    uint32_t done = zcn_timers_run(s);
    done += zcn_calls_run(s);
    zcn_tcp_sweep_send_timeouts(s);
    run_service_list(s);
    zcn_watches_rearm(s);
    return done;
}

/* One turn of the loop: timers, deferred work, at most one wait, then the
 * completions that are ready. *handled gets the work done. */
static ZCN_Error turn(ZCN_Loop *s, int timeout_ms, uint32_t *handled)
{
    *handled = 0;
    s->now_ms = zcn_now_ms();
    s->reaped = false;
    s->lstats.turns++;
    uint64_t closed_before = s->stats.connections_closed;
    zcn_tcp_resume_accepts(s);
    if (!s->wake_armed)
        arm_wake(s); /* a stop from another thread must always wake us */
    uint32_t early = housekeeping(s);
    zcn_tcp_arm_tick(s);
    early += (uint32_t)(s->stats.connections_closed - closed_before) + s->ev_n;

    int wait_ms = early > 0 ? 0 : timeout_ms;
    int timer_ms = next_timer_ms(s);
    if (timer_ms >= 0 && (wait_ms < 0 || timer_ms < wait_ms))
        wait_ms = timer_ms;
    if (atomic_load_explicit(&s->calls.pending, memory_order_acquire) > 0)
        wait_ms = 0; /* queued while this turn ran */
    zcn_wakeup_arm(&s->wakeup, s->ring, pack_ud(OP_WAKEUP_PIPE, 0, 0));
    int ret = s->busy_poll_ns != 0 ? busy_wait(s, wait_ms) : wait_cqe(s, wait_ms);
    if (ret == -EINTR) {
        zcn_wakeup_consume(&s->wakeup);
        *handled = early;
        return early > 0 ? ZCN_OK : zcn_fail((ZCN_Error)EINTR, "interrupted by a signal");
    }
    if (ret < 0 && ret != -ETIME && ret != -EAGAIN && ret != -EBUSY)
        return zcn_fail((ZCN_Error)-ret, "io_uring_enter failed");
    s->now_ms = zcn_now_ms();
    uint32_t seen = reap(s);
    s->reaped = true;
    uint32_t late = housekeeping(s);
    *handled = early + seen + late;
    if (zcn_wakeup_take(&s->wakeup))
        return zcn_fail((ZCN_Error)EINTR, "interrupted: a byte came on the wakeup fd");
    return ZCN_OK;
}

ZCN_Error zcn_loop_claim(ZCN_Loop *s, const char *fn)
{
    if (s->started)
        return owner_check(s, fn);
    /* The ring was created disabled: enabling it here makes this thread its
     * single issuer, so a loop may be created on one thread and run on
     * another. */
    ZCN_Error e = zcn_ring_enable(s->ring_handle);
    if (e != ZCN_OK)
        return e;
    s->owner = this_thread();
    s->started = true;
    s->now_ms = zcn_now_ms();
    zcn_loop_publish_stats(s);
    arm_wake(s);
    return ZCN_OK;
}

static ZCN_Error loop_guard(ZCN_Loop *s, const char *fn)
{
    if (s == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "loop is NULL");
    if (s->in_callback)
        return zcn_fail(ZCN_ERR_BUSY, "the loop cannot be run from inside a callback");
    if (s->destroying)
        return zcn_fail(ZCN_ERR_BUSY, "the loop is being destroyed");
    return zcn_loop_claim(s, fn);
}

static ZCN_Error turn_cb(void *loop, int timeout_ms, uint32_t *handled)
{
    return turn(loop, timeout_ms, handled);
}

/* Ends the previous poll batch, then runs turns (zcn_run_until). */
static ZCN_Error run_until(ZCN_Loop *s, int timeout_ms, uint32_t *handled_out, bool *stopped)
{
    s->in_loop++;
    atomic_store_explicit(&s->snap_running, 1, memory_order_relaxed);
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
    /* A watch removed by a callback: its poll holds the fd's file until
     * the kernel has run the cancel, and the caller may close the fd as
     * soon as this returns (zcn_loop_unwatch). */
    if (s->watches.submit_due) {
        s->watches.submit_due = false;
        (void)zcn_uring_submit_and_get_events(s->ring);
    }
    /* What this call counted, for other threads: a loop its owner has
     * stopped running (a thread that ended, say) reads exactly. Once per
     * call; before each wait only while another thread reads them. */
    zcn_loop_publish_stats(s);
    atomic_store_explicit(&s->snap_running, 0, memory_order_relaxed);
    s->in_loop--;
    return err;
}

/* The loop calls, with the public name of the caller for the owner check
 * (the zcn_server_* forms come through here too). */
ZCN_Error zcn_loop_run_once_as(ZCN_Loop *s, int timeout_ms, uint32_t *handled_out, const char *fn)
{
    if (handled_out != NULL)
        *handled_out = 0;
    ZCN_Error err = loop_guard(s, fn);
    if (err != ZCN_OK)
        return err;
    s->ev = NULL;
    bool stopped;
    return run_until(s, timeout_ms, handled_out, &stopped);
}

ZCN_Error zcn_loop_poll_as(ZCN_Loop *s, ZCN_Event *events, uint32_t capacity, int timeout_ms,
                           uint32_t *count_out, const char *fn)
{
    if (count_out != NULL)
        *count_out = 0;
    ZCN_Error err = loop_guard(s, fn);
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

ZCN_Error zcn_loop_run_as(ZCN_Loop *s, const char *fn)
{
    ZCN_Error err = loop_guard(s, fn);
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

ZCN_Error zcn_loop_run_once(ZCN_Loop *s)
{
    return zcn_loop_run_once_as(s, -1, NULL, "zcn_loop_run_once");
}

ZCN_Error zcn_loop_run_once_timeout(ZCN_Loop *s, int timeout_ms, uint32_t *handled_out)
{
    return zcn_loop_run_once_as(s, timeout_ms, handled_out, "zcn_loop_run_once_timeout");
}

ZCN_Error zcn_loop_poll(ZCN_Loop *s, ZCN_Event *events, uint32_t capacity, int timeout_ms,
                        uint32_t *count_out)
{
    return zcn_loop_poll_as(s, events, capacity, timeout_ms, count_out, "zcn_loop_poll");
}

ZCN_Error zcn_loop_run(ZCN_Loop *s)
{
    return zcn_loop_run_as(s, "zcn_loop_run");
}

/* Async-signal-safe: an atomic flag and an eventfd write. */
void zcn_loop_request_stop(ZCN_Loop *s)
{
    atomic_store_explicit(&s->stop_requested, 1, memory_order_release);
    zcn_eventfd_wake(s->wake_fd);
}

ZCN_Error zcn_loop_stop(ZCN_Loop *s)
{
    /* The registry lookup touches only the registry, never *s: a loop
     * destroyed (or being destroyed) is simply not found. */
    int slot = zcn_live_acquire(s);
    if (slot == -1)
        return ZCN_ERR_INVALID_ARGUMENT; /* no detail: must stay signal-safe */
    zcn_loop_request_stop(s);
    zcn_live_release(slot);
    return ZCN_OK;
}

ZCN_Error zcn_loop_flush_as(ZCN_Loop *s, const char *fn)
{
    if (s == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "loop is NULL");
    ZCN_Error err = owner_check(s, fn);
    if (err != ZCN_OK)
        return err;
    if (!s->started)
        return ZCN_OK; /* nothing can be queued before the loop has an owner */
    return submit_now(s);
}

ZCN_Error zcn_loop_flush(ZCN_Loop *s)
{
    return zcn_loop_flush_as(s, "zcn_loop_flush");
}

ZCN_Error zcn_loop_wakeup_fd_as(ZCN_Loop *s, int *fd_out, const char *fn)
{
    if (fd_out != NULL)
        *fd_out = -1;
    if (s == NULL || fd_out == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, s == NULL ? "loop is NULL" : "fd_out is NULL");
    ZCN_Error err = owner_check(s, fn);
    if (err != ZCN_OK)
        return err;
    return zcn_wakeup_open(&s->wakeup, fd_out);
}

ZCN_Error zcn_loop_wakeup_fd(ZCN_Loop *s, int *fd_out)
{
    return zcn_loop_wakeup_fd_as(s, fd_out, "zcn_loop_wakeup_fd");
}

struct settings {
    uint32_t entries, buffers, conns_max, reserve, send_timeout_ms, hard_max, timers_max,
        watches_max, calls_max, busy_poll_us;
    size_t buffer_size;
    uint64_t sendq_max;
    ZCN_Backend backend;
};

static ZCN_Error read_config(const ZCN_LoopConfig *cfg, struct settings *out)
{
    out->entries = cfg->io_uring_entries ? cfg->io_uring_entries : 256;
    out->buffers = cfg->buffer_pool_size ? cfg->buffer_pool_size : 1024;
    out->buffer_size = cfg->buffer_size ? cfg->buffer_size : 16384;
    out->conns_max = cfg->connections_max ? cfg->connections_max : 4096;
    out->sendq_max = cfg->send_queue_max_bytes ? cfg->send_queue_max_bytes : (1u << 20);
    out->send_timeout_ms = cfg->send_timeout_ms ? cfg->send_timeout_ms : SEND_TIMEOUT_DEFAULT_MS;
    out->hard_max = cfg->conn_buffers_hard_max;
    out->timers_max = cfg->timers_max ? cfg->timers_max : 4096;
    out->watches_max = cfg->watches_max ? cfg->watches_max : 1024;
    out->calls_max = cfg->calls_max ? cfg->calls_max : 4096;
    out->backend = (ZCN_Backend)cfg->backend;
    if (cfg->backend > ZCN_BACKEND_EPOLL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "backend %u is not a ZCN_BACKEND_* value",
                        cfg->backend);
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
    if (out->timers_max > ZCN_LOOP_TIMERS_MAX)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "timers_max %u is over %u", out->timers_max,
                        ZCN_LOOP_TIMERS_MAX);
    if (out->watches_max > ZCN_LOOP_WATCHES_MAX)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "watches_max %u is over %u", out->watches_max,
                        ZCN_LOOP_WATCHES_MAX);
    if (out->calls_max > ZCN_LOOP_CALLS_MAX)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "calls_max %u is over %u", out->calls_max,
                        ZCN_LOOP_CALLS_MAX);
    out->busy_poll_us = cfg->busy_poll_us;
    if (out->busy_poll_us > ZCN_LOOP_BUSY_POLL_US_MAX)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                        "busy_poll_us %u is over %u (0 turns busy polling off)",
                        out->busy_poll_us, ZCN_LOOP_BUSY_POLL_US_MAX);
    out->reserve = cfg->buffer_reserve ? cfg->buffer_reserve : out->buffers / 4;
    if (out->reserve == 0)
        out->reserve = 1;
    if (out->reserve >= out->buffers)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                        "buffer_reserve %u must be below buffer_pool_size %u", out->reserve,
                        out->buffers);
    out->buffer_size = (out->buffer_size + ZCN_PAGE_SIZE - 1) / ZCN_PAGE_SIZE * ZCN_PAGE_SIZE;
    if (out->sendq_max < out->buffer_size)
        out->sendq_max = out->buffer_size; /* one received buffer always fits */
    return ZCN_OK;
}

/* A diagnostic knob in the environment: set, not empty and not "0". */
static bool env_set(const char *name)
{
    const char *v = getenv(name);
    return v != NULL && v[0] != '\0' && strcmp(v, "0") != 0;
}

/* Whether multishot receives take bundles: where the kernel says it can
 * (IORING_FEAT_RECVSEND_BUNDLE, Linux 6.10) and always on the epoll
 * backend, which emulates them; ZCN_NO_BUNDLE=1 turns them off (a
 * diagnostic knob, read once here, so the tests cover the one-buffer path
 * on kernels that have bundles). */
static bool bundles_wanted(const ZCN_Loop *s)
{
    if (env_set("ZCN_NO_BUNDLE"))
        return false;
    if (zcn_ep_of(s->ring) != NULL)
        return true;
    return (zcn_ring_features(s->ring_handle) & ZCN_IORING_FEAT_RECVSEND_BUNDLE) != 0;
}

/* The receive ring (c/bufring.c), filled from the pool, and the limits
 * that depend on the buffer counts. */
static ZCN_Error setup_buffer_ring(ZCN_Loop *s, const struct settings *st)
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
    s->rx_bundle = bundles_wanted(s);
    if (s->rx_bundle && (e = zcn_bufring_track_order(&s->rx)) != ZCN_OK)
        return e; /* free_loop unregisters the ring */
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
    /* The ring while receives take bundles: a connection at its cap may
     * still get what one pass of the kernel hands it (the ring's whole
     * content, at most), and must stay under its hard limit with room for
     * MSHOT_ROOM more. Too small for a useful ring: no bundles. */
    uint64_t room = s->hard_max_bufs > s->send_queue_max_bufs + MSHOT_ROOM
                        ? s->hard_max_bufs - s->send_queue_max_bufs - MSHOT_ROOM
                        : 0;
    /* And within half the receive reserve, which absorbs what receives
     * in flight bring past the budget: with 256 x 4 KiB buffers, 64
     * peers that never read took the whole pool through bundles and
     * starved a well-behaved connection (tests/test_hostile.py). */
    if (room > s->reserve / 2)
        room = s->reserve / 2;
    s->bundle_ring_max = room > s->br_target ? s->br_target : (uint32_t)room;
    if (s->bundle_ring_max < 2 * MSHOT_ROOM)
        s->rx_bundle = false;
    /* On epoll a receive reads at most EP_RECV_IOV (4) buffers per report,
     * bundle or not (c/epoll.c): no pass hands a connection the whole
     * ring, so the ring need not shrink while bundles are armed. Capped,
     * it held ~97 buffers for 200 connections, and at 200 x 1 x 64 B
     * three receives in four found it empty (ENOBUFS, the request ended,
     * re-armed the next turn with an EPOLL_CTL_DEL and _ADD). */
    if (zcn_ring_backend(s->ring_handle, NULL) == ZCN_BACKEND_EPOLL)
        s->bundle_ring_max = s->br_target;
    s->conn_chunks_max = 2 * s->send_queue_max_bufs + IOV_BATCH;
    return ZCN_OK;
}

static ZCN_Error alloc_tables(ZCN_Loop *s, const struct settings *st)
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
    s->pack_bid = -1;
    s->pack_max = (uint32_t)(s->buffer_size / 8);
    s->meta = calloc(s->buffer_count, sizeof *s->meta);
    s->conns = calloc(s->conns_max, sizeof *s->conns);
    s->fd_table = malloc((size_t)s->fd_table_size * sizeof *s->fd_table);
    s->chunks = malloc((size_t)s->chunks_max * sizeof *s->chunks);
    s->tx_cap = s->conns_max * 2;
    s->tx = malloc((size_t)s->tx_cap * sizeof *s->tx);
    s->out_h = calloc(s->conns_max, sizeof *s->out_h);
    if (!s->meta || !s->conns || !s->fd_table || !s->chunks || !s->tx || !s->out_h)
        return zcn_fail((ZCN_Error)ENOMEM, "loop tables");
    for (uint32_t i = 0; i < s->fd_table_size; i++)
        s->fd_table[i] = NIL;
    for (uint32_t i = 0; i < s->chunks_max; i++)
        s->chunks[i].next = i + 1 < s->chunks_max ? (int32_t)(i + 1) : NIL;
    s->chunk_free = 0;
    for (uint32_t i = 0; i < s->conns_max; i++) {
        struct conn *c = &s->conns[i];
        c->fd = -1;
        c->pipe_rd = c->pipe_wr = -1;
        c->zombie_next = i + 1 < s->conns_max ? (int32_t)(i + 1) : NIL;
        c->service.prev = c->service.next = NOT_LINKED;
        c->wait = c->service;
    }
    s->conn_free = 0;
    return ZCN_OK;
}

static void free_loop(ZCN_Loop *s)
{
    zcn_bufring_unregister(&s->rx, s->ring);
    zcn_bufring_unmap(&s->rx);
    if (s->ring_handle != NULL)
        zcn_ring_destroy(s->ring_handle);
    if (s->wake_fd >= 0)
        close(s->wake_fd);
    zcn_wakeup_close(&s->wakeup);
    zcn_pool_destroy(s->pool);
    zcn_timers_free(&s->timers);
    zcn_watches_free(&s->watches);
    zcn_calls_free(&s->calls);
    free(s->meta);
    free(s->conns);
    free(s->fd_table);
    free(s->chunks);
    free(s->tx);
    free(s->out_h);
    free(s);
}

/* AUTO on a kernel whose io_uring lacks provided-buffer rings (< 5.19):
 * the loop goes on epoll instead, unless ZCN_BACKEND forced io_uring. */
static ZCN_Error fall_back_to_epoll(ZCN_Loop *s, const struct settings *st)
{
    ZCN_Backend env;
    if (zcn_backend_from_env(&env, NULL) != ZCN_OK || env == ZCN_BACKEND_IO_URING)
        return ZCN_ERR_URING_UNSUPPORTED;
    char why[160];
    snprintf(why, sizeof why, "%s", zcn_error_detail());
    zcn_bufring_unmap(&s->rx);
    zcn_ring_destroy(s->ring_handle);
    s->ring = NULL;
    ZCN_Error e;
    uint64_t cq = (uint64_t)s->conns_max * 2 + s->buffer_count + 64;
    s->ring_handle = zcn_ring_create_backend(st->entries, zcn_cq_entries(cq, st->entries),
                                             ZCN_RING_START_DISABLED, ZCN_BACKEND_EPOLL, &e);
    if (s->ring_handle == NULL)
        return e;
    zcn_ring_set_reason(s->ring_handle, "io_uring lacks a feature the loop needs: %s", why);
    s->ring = zcn_ring_io_uring(s->ring_handle);
    return setup_buffer_ring(s, st);
}

ZCN_Loop *zcn_loop_create(const ZCN_LoopConfig *cfg, ZCN_Error *err)
{
    zcn_clear_detail();
    ZCN_LoopConfig defaults = {0};
    if (cfg == NULL)
        cfg = &defaults;
    struct settings st = {0};
    ZCN_Error e = read_config(cfg, &st);
    if (e != ZCN_OK) {
        zcn_set_err(err, e);
        return NULL;
    }
    ZCN_Loop *s = calloc(1, sizeof *s);
    if (s == NULL) {
        zcn_set_err(err, zcn_fail((ZCN_Error)ENOMEM, "loop"));
        return NULL;
    }
    s->wake_fd = -1;
    s->live_slot = -1;
    zcn_wakeup_init(&s->wakeup);
    s->buffer_count = st.buffers;
    s->buffer_size = st.buffer_size;
    s->send_queue_max_bytes = st.sendq_max;
    s->send_timeout_ms = st.send_timeout_ms == ZCN_TIMEOUT_NEVER ? 0 : st.send_timeout_ms;
    struct list empty = {NIL, NIL, 0};
    s->service = s->waiters = empty;
    s->zombie_head = NIL;
    s->lent_head = NIL;

    e = alloc_tables(s, &st);
    if (e == ZCN_OK)
        e = zcn_timers_init(&s->timers, s->conns_max, st.timers_max);
    if (e == ZCN_OK)
        e = zcn_watches_init(&s->watches, st.watches_max);
    if (e == ZCN_OK)
        e = zcn_calls_init(&s->calls, st.calls_max);
    if (e == ZCN_OK) {
        /* One thread takes and returns the loop's buffers: thread caches
         * would only add their lookup to every acquire and release. */
        ZCN_PoolConfig pc = {.buffer_size = st.buffer_size,
                             .count = st.buffers,
                             .memory = cfg->buffer_memory,
                             .memory_size = cfg->buffer_memory_size,
                             .thread_cache = ZCN_POOL_THREAD_CACHE_OFF};
        s->pool = zcn_pool_create_with(&pc, &e);
        if (s->pool != NULL)
            s->slab = zcn_pool_base(s->pool);
    }
    if (e == ZCN_OK) {
        /* CQ room for a completion per connection and per buffer at once, so
         * multishot requests are not ended by overflow in normal operation. */
        uint64_t cq = (uint64_t)s->conns_max * 2 + s->buffer_count + 64;
        uint32_t flags = ZCN_RING_START_DISABLED;
        if (st.busy_poll_us > 0)
            flags |= ZCN_RING_TASKRUN_FLAG;
        s->ring_handle = zcn_ring_create_backend(st.entries, zcn_cq_entries(cq, st.entries),
                                                 flags, st.backend, &e);
        if (s->ring_handle != NULL)
            s->ring = zcn_ring_io_uring(s->ring_handle);
    }
    if (e == ZCN_OK) {
        s->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (s->wake_fd < 0)
            e = zcn_fail((ZCN_Error)errno, "eventfd: %s", strerror(errno));
    }
    if (e == ZCN_OK)
        e = setup_buffer_ring(s, &st);
    if (e == ZCN_ERR_URING_UNSUPPORTED && st.backend == ZCN_BACKEND_AUTO &&
        zcn_ring_backend(s->ring_handle, NULL) == ZCN_BACKEND_IO_URING)
        e = fall_back_to_epoll(s, &st);
    if (e != ZCN_OK) {
        free_loop(s);
        zcn_set_err(err, e);
        return NULL;
    }
    s->busy_poll_ns = (uint64_t)st.busy_poll_us * 1000u;
    /* ZCN_NO_DIRECT_SEND=1: every send an SQE (a diagnostic knob, as
     * ZCN_NO_BUNDLE, so the tests and benchmarks can compare the paths). */
    s->direct_sends = !env_set("ZCN_NO_DIRECT_SEND");
    s->busy_peek = zcn_ring_backend(s->ring_handle, NULL) == ZCN_BACKEND_IO_URING &&
                   (zcn_ring_setup_flags(s->ring_handle) & IORING_SETUP_TASKRUN_FLAG);
    s->live_slot = zcn_live_add(s);
    zcn_set_err(err, ZCN_OK);
    return s;
}

/* The handler of connections whose owner is gone: nothing is called. */
static struct zcn_handler quiet_handler;

void zcn_loop_end_conns(ZCN_Loop *s, const struct zcn_handler *h)
{
    ZCN_Event *ev = s->ev;
    s->ev = NULL; /* these closes are reported through callbacks only */
    s->in_loop++;
    for (uint32_t i = 0; i < s->slots_high; i++) {
        struct conn *c = &s->conns[i];
        if (c->state == CONN_FREE || c->quiet || (h != NULL && c->h != h))
            continue;
        if (c->state == CONN_CONNECTING) {
            if (c->connect_error == 0)
                c->connect_error = ZCN_ERR_CLOSED;
            zcn_tcp_connect_progress(s, c);
            if (c->state == CONN_FREE)
                continue;
        } else {
            zcn_tcp_abort_conn(s, c, false);
        }
        if (c->state == CONN_FREE || c->state == CONN_ZOMBIE)
            continue; /* finalized (told) already */
        /* The kernel still has requests of it: tell the user now; the slot
         * goes quietly when they end. */
        if (c->state == CONN_CONNECTING)
            zcn_tcp_emit_connect(s, c, (ZCN_Error)c->connect_error);
        else
            zcn_tcp_emit(s, ZCN_EVENT_CLOSE, c);
        c->quiet = true;
        c->h = &quiet_handler;
    }
    s->in_loop--;
    s->ev = ev;
}

/* Ends everything on the loop and waits (bounded) for the kernel to finish
 * with it, so no request can write into memory about to be freed. */
static void drain_for_destroy(ZCN_Loop *s)
{
    s->in_loop++;
    if (s->wake_armed)
        zcn_tcp_cancel_ud(s, pack_ud(OP_WAKE, 0, 0), NULL, NULL);
    if (s->wakeup.armed)
        zcn_tcp_cancel_ud(s, pack_ud(OP_WAKEUP_PIPE, 0, 0), NULL, NULL);
    if (s->tick_armed)
        zcn_tcp_cancel_ud(s, pack_ud(OP_TICK, 0, 0), NULL, NULL);
    zcn_watches_cancel_all(s);
    s->ev = NULL; /* destroy reports closes through callbacks only */
    s->poll_mode = false;
    end_batch(s);
    for (uint32_t i = 0; i < s->conns_max; i++) {
        struct conn *c = &s->conns[i];
        if (c->state == CONN_CONNECTING) {
            if (c->connect_error == 0)
                c->connect_error = ZCN_ERR_CLOSED;
            zcn_tcp_connect_progress(s, c);
        } else {
            zcn_tcp_abort_conn(s, c, false);
        }
    }
    uint64_t deadline = zcn_now_ms() + DESTROY_DRAIN_MS;
    for (;;) {
        bool busy = s->conns_active > 0 || s->wake_armed || s->wakeup.armed || s->tick_armed;
        for (uint32_t i = 0; !busy && i < s->servers_count; i++)
            busy = s->servers[i] != NULL && s->servers[i]->accept_armed;
        if (!busy)
            break;
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
    /* Whatever the kernel did not give back in time still gets its call. */
    for (uint32_t i = 0; i < s->conns_max; i++) {
        struct conn *c = &s->conns[i];
        if (c->state == CONN_FREE)
            continue;
        c->recv_armed = c->send_inflight = c->connect_inflight = false;
        c->splice_in_armed = c->splice_out_armed = false;
        if (c->state == CONN_CONNECTING)
            zcn_tcp_connect_progress(s, c);
        else if (c->state != CONN_ZOMBIE)
            zcn_tcp_finalize(s, c);
    }
    zcn_tcp_pack_retire(s);
    s->in_loop--;
}

ZCN_Error zcn_loop_destroy(ZCN_Loop *s)
{
    ZCN_Error e = zcn_loop_teardown(s);
    if (e == ZCN_OK)
        zcn_loop_free(s);
    return e;
}

void zcn_loop_free(ZCN_Loop *s)
{
    free_loop(s);
}

ZCN_Error zcn_loop_teardown(ZCN_Loop *s)
{
    if (s == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "loop is NULL");
    if (s->in_callback)
        return zcn_fail(ZCN_ERR_BUSY, "the loop cannot be destroyed from its own callback");
    if (s->sources_count > 0)
        return zcn_fail(ZCN_ERR_BUSY,
                        "%u UDP sockets still use this loop: destroy them first (one "
                        "already destroyed waits for its last completions: run the loop once more)",
                        s->sources_count);
    if (s->destroying)
        return zcn_fail(ZCN_ERR_BUSY, "the loop is being destroyed");
    /* From now on zcn_loop_stop and zcn_loop_call do not find the loop, nor
     * zcn_server_stop its servers; one already inside has finished when
     * these return. */
    zcn_live_remove(s->live_slot);
    for (uint32_t i = 0; i < s->servers_count; i++)
        if (s->servers[i] != NULL)
            zcn_server_unlisten(s->servers[i]);
    s->destroying = true;
    if (s->started)
        drain_for_destroy(s);
    /* Calls still queued run now, so they can free what they carry. */
    s->in_loop++;
    while (zcn_calls_run(s) > 0) {
    }
    s->in_loop--;
    for (uint32_t i = 0; i < s->servers_count; i++)
        if (s->servers[i] != NULL) {
            if (s->servers[i]->listen_fd >= 0)
                close(s->servers[i]->listen_fd);
            free(s->servers[i]);
        }
    s->servers_count = 0; /* freed: the loop's stats count none */
    return ZCN_OK;
}

uint64_t zcn_loop_now_ms(const ZCN_Loop *s)
{
    if (s == NULL)
        return 0;
    return s->now_ms != 0 ? s->now_ms : zcn_now_ms();
}

const uint8_t *zcn_loop_buffer_base(const ZCN_Loop *s)
{
    return s == NULL ? NULL : s->slab;
}

size_t zcn_loop_buffer_size(const ZCN_Loop *s)
{
    return s == NULL ? 0 : s->buffer_size;
}

ZCN_Error zcn_loop_attach(ZCN_Loop *s, zcn_source *src, uint32_t *id_out)
{
    if (s == NULL || src == NULL || src->handle_cqe == NULL || id_out == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "loop or source is NULL");
    for (uint32_t i = 0; i < ZCN_SOURCES_MAX; i++) {
        if (s->sources[i] == NULL) {
            s->sources[i] = src;
            s->sources_count++;
            *id_out = i;
            return ZCN_OK;
        }
    }
    return zcn_fail(ZCN_ERR_EXHAUSTED, "at most %d sockets can share one loop", ZCN_SOURCES_MAX);
}

void zcn_loop_detach(ZCN_Loop *s, uint32_t id)
{
    if (s == NULL || id >= ZCN_SOURCES_MAX || s->sources[id] == NULL)
        return;
    s->sources[id] = NULL;
    s->sources_count--;
}

zcn_source *zcn_loop_find_source(ZCN_Loop *s, bool (*match)(zcn_source *src, void *arg),
                                 void *arg)
{
    for (uint32_t i = 0, seen = 0; s != NULL && seen < s->sources_count && i < ZCN_SOURCES_MAX;
         i++) {
        zcn_source *src = s->sources[i];
        if (src == NULL)
            continue;
        seen++;
        if (match(src, arg))
            return src;
    }
    return NULL;
}

int zcn_loop_polling(const ZCN_Loop *s)
{
    return s != NULL && s->in_loop > 0 && s->ev != NULL;
}

int zcn_loop_event_room(const ZCN_Loop *s)
{
    return zcn_loop_polling(s) && has_room(s, 1);
}

ZCN_Event *zcn_loop_source_event(ZCN_Loop *s, uint32_t type, int fd, uint32_t tag)
{
    if (!zcn_loop_event_room(s))
        return NULL;
    ZCN_Event *e = next_event(s, type, fd);
    e->tag = tag;
    return e;
}

ZCN_Backend zcn_loop_backend(const ZCN_Loop *s, const char **reason)
{
    if (s == NULL) {
        if (reason != NULL)
            *reason = "";
        return ZCN_BACKEND_AUTO;
    }
    return zcn_ring_backend(s->ring_handle, reason);
}

int zcn_loop_ring_check(const ZCN_Loop *s)
{
    if (!s->started)
        return -EBADFD;
    return s->owner == this_thread() ? 0 : -EEXIST;
}

void *zcn_loop_uring(ZCN_Loop *s)
{
    return s == NULL ? NULL : s->ring;
}

int zcn_loop_in_callback(const ZCN_Loop *s)
{
    return s != NULL && s->in_callback > 0;
}

void zcn_loop_callback_enter(ZCN_Loop *s)
{
    s->in_callback++;
}

void zcn_loop_callback_leave(ZCN_Loop *s)
{
    s->in_callback--;
}
