/* Fd watches and cross-thread calls: how other code lives on a loop.
 *
 * A watch is one io_uring poll request at a time for an fd the user owns.
 * Each completion is delivered (callback, or a WATCH event in poll mode)
 * and the request re-armed, so the readiness is level-triggered: while
 * the fd stays readable, the next turn reports it again. Removing a watch
 * frees its slot at once; a completion still on its way carries the old
 * generation and is dropped, and a cancel makes the kernel let go of the
 * fd promptly.
 *
 * Calls are a bounded lock-free FIFO (loop.h, struct zcn_calls): any
 * thread appends and, when the queue was empty, writes the loop's eventfd; the loop runs what was
 * queued when its turn began (calls queued by calls wait a turn). The
 * loop handle is pinned through the live registry meanwhile, so a call
 * racing with destroy finds no loop rather than a freed one. */

#include "buffers.h"

ZCN_Error zcn_watches_init(struct zcn_watches *w, uint32_t max)
{
    w->w = calloc(max, sizeof *w->w);
    if (w->w == NULL)
        return zcn_fail((ZCN_Error)ENOMEM, "watch table");
    w->max = max;
    w->free = NIL;
    for (uint32_t i = max; i-- > 0;) {
        w->w[i].fd = -1;
        w->w[i].next_free = w->free;
        w->free = (int32_t)i;
    }
    return ZCN_OK;
}

void zcn_watches_free(struct zcn_watches *w)
{
    free(w->w);
    w->w = NULL;
}

static uint64_t watch_id(const struct zcn_watch *x, uint32_t slot)
{
    return ((uint64_t)x->gen << 32) | (slot + 1);
}

static uint32_t poll_mask(uint32_t events)
{
    uint32_t m = POLLERR | POLLHUP | POLLRDHUP;
    if (events & ZCN_WATCH_READ)
        m |= POLLIN | POLLPRI;
    if (events & ZCN_WATCH_WRITE)
        m |= POLLOUT;
    return m;
}

static uint32_t watch_bits(int revents)
{
    uint32_t b = 0;
    if (revents & (POLLIN | POLLPRI))
        b |= ZCN_WATCH_READ;
    if (revents & POLLOUT)
        b |= ZCN_WATCH_WRITE;
    if (revents & (POLLERR | POLLNVAL))
        b |= ZCN_WATCH_ERROR;
    if (revents & (POLLHUP | POLLRDHUP))
        b |= ZCN_WATCH_HUP;
    return b;
}

static void arm(ZCN_Loop *s, uint32_t slot)
{
    struct zcn_watch *x = &s->watches.w[slot];
    struct io_uring_sqe *sqe = zcn_get_sqe(s->ring);
    if (sqe == NULL) {
        if (!x->want_arm) {
            x->want_arm = true;
            s->watches.want_arm++;
        }
        return;
    }
    if (x->want_arm) {
        x->want_arm = false;
        s->watches.want_arm--;
    }
    io_uring_prep_poll_add(sqe, x->fd, poll_mask(x->events));
    io_uring_sqe_set_data64(sqe, pack_ud(OP_WATCH, x->gen, slot));
    x->armed = true;
}

static void free_slot(struct zcn_watches *w, uint32_t slot)
{
    struct zcn_watch *x = &w->w[slot];
    x->fd = -1;
    x->next_free = w->free;
    w->free = (int32_t)slot;
}

/* Cancels the poll of a removed watch; true if the cancel is queued. */
static bool cancel_poll(ZCN_Loop *s, uint32_t slot)
{
    bool done = false;
    zcn_tcp_cancel_ud(s, pack_ud(OP_WATCH, s->watches.w[slot].gen, slot), &done, NULL);
    return done;
}

void zcn_watches_rearm(ZCN_Loop *s)
{
    struct zcn_watches *w = &s->watches;
    /* Removed watches whose cancel found no SQE: their poll holds the
     * fd's file, so the cancel must still go; the slot is reused after. */
    for (uint32_t i = 0; i < w->high && w->cancels > 0; i++) {
        struct zcn_watch *x = &w->w[i];
        if (x->cancel_pending && cancel_poll(s, i)) {
            x->cancel_pending = false;
            w->cancels--;
            free_slot(w, i);
        }
    }
    for (uint32_t i = 0; i < w->high && w->want_arm > 0; i++)
        if (w->w[i].active && w->w[i].want_arm && !w->w[i].armed)
            arm(s, i);
    /* Watches without a callback report to polls only: one that fired
     * while the loop ran in callback mode waits for the next poll (re-armed
     * at once it would fire every turn, a busy loop, for nobody). */
    for (uint32_t i = 0; i < w->high && w->parked > 0 && s->ev != NULL; i++) {
        struct zcn_watch *x = &w->w[i];
        if (x->active && x->parked) {
            x->parked = false;
            w->parked--;
            arm(s, i);
        }
    }
}

void zcn_watch_on_cqe(ZCN_Loop *s, uint64_t ud, int res)
{
    uint32_t slot = ud_slot(ud);
    if (slot >= s->watches.max)
        return;
    struct zcn_watch *x = &s->watches.w[slot];
    if (x->gen != (ud_gen(ud) & 0xffffffu) || !x->active)
        return; /* removed: its last completion */
    x->armed = false;
    if (res == -ECANCELED || res == -EINTR) {
        arm(s, slot);
        return;
    }
    if (x->cb == NULL && s->ev == NULL) {
        x->parked = true; /* for the next poll: zcn_watches_rearm */
        s->watches.parked++;
        return;
    }
    uint32_t bits = res < 0 ? ZCN_WATCH_ERROR : watch_bits(res);
    uint64_t id = watch_id(x, slot);
    s->lstats.watch_events++;
    if (x->cb == NULL) {
        if (s->ev != NULL) {
            ZCN_Event *e = next_event(s, ZCN_EVENT_WATCH, x->fd);
            e->len = bits;
            e->offset = id;
        }
    } else {
        s->in_callback++;
        x->cb(x->user_data, x->fd, bits, id);
        s->in_callback--;
    }
    /* The callback may have removed it (or removed it and added another in
     * the same slot: a new generation, armed by its own watch call). */
    if (x->active && x->gen == (ud_gen(ud) & 0xffffffu) && !x->armed) {
        if (res < 0 && res != -EAGAIN) {
            /* EBADF and the like: the fd is no more; say so once. */
            return;
        }
        arm(s, slot);
    }
}

void zcn_watches_cancel_all(ZCN_Loop *s)
{
    struct zcn_watches *w = &s->watches;
    for (uint32_t i = 0; i < w->high; i++) {
        struct zcn_watch *x = &w->w[i];
        if ((x->active && x->armed) || x->cancel_pending)
            zcn_tcp_cancel_ud(s, pack_ud(OP_WATCH, x->gen, i), NULL, NULL);
        x->active = false;
    }
}

ZCN_Error zcn_loop_watch(ZCN_Loop *s, int fd, uint32_t events, ZCN_OnWatch cb, void *user_data,
                         uint64_t *id_out)
{
    if (id_out != NULL)
        *id_out = 0;
    if (s == NULL || id_out == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, s == NULL ? "loop is NULL" : "id_out is NULL");
    if (fd < 0)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "fd %d is negative", fd);
    if ((events & (ZCN_WATCH_READ | ZCN_WATCH_WRITE)) == 0 ||
        (events & ~(uint32_t)(ZCN_WATCH_READ | ZCN_WATCH_WRITE)) != 0)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                        "events 0x%x: give ZCN_WATCH_READ and/or ZCN_WATCH_WRITE", events);
    if (s->destroying)
        return zcn_fail(ZCN_ERR_BUSY, "the loop is being destroyed");
    ZCN_Error err = zcn_loop_claim(s, "zcn_loop_watch");
    if (err != ZCN_OK)
        return err;
    struct zcn_watches *w = &s->watches;
    if (w->free == NIL)
        return zcn_fail(ZCN_ERR_EXHAUSTED, "%u fds are watched (watches_max)", w->max);
    uint32_t slot = (uint32_t)w->free;
    struct zcn_watch *x = &w->w[slot];
    w->free = x->next_free;
    w->count++;
    if (slot >= w->high)
        w->high = slot + 1;
    x->gen = (x->gen + 1) & 0xffffffu;
    if (x->gen == 0)
        x->gen = 1;
    x->fd = fd;
    x->events = events;
    x->cb = cb;
    x->user_data = user_data;
    x->active = true;
    x->armed = false;
    x->want_arm = false;
    x->parked = false;
    arm(s, slot);
    *id_out = watch_id(x, slot);
    return ZCN_OK;
}

ZCN_Error zcn_loop_unwatch(ZCN_Loop *s, uint64_t id)
{
    if (s == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "loop is NULL");
    ZCN_Error err = owner_check(s, "zcn_loop_unwatch");
    if (err != ZCN_OK)
        return err;
    struct zcn_watches *w = &s->watches;
    uint64_t low = id & 0xffffffffu;
    struct zcn_watch *x = low >= 1 && low <= w->max ? &w->w[low - 1] : NULL;
    if (x == NULL || !x->active || x->gen != (uint32_t)(id >> 32))
        return zcn_fail(ZCN_ERR_CLOSED, "watch %llu is not active", (unsigned long long)id);
    uint32_t slot = (uint32_t)(low - 1);
    bool cancel_later = false;
    if (x->armed) {
        /* The poll request holds a reference to the fd's file: until the
         * kernel has seen the cancel, a socket the caller closes next
         * would stay open (a listener would go on accepting). Outside a
         * loop call, tell the kernel now; inside one (a callback), that
         * call does before it returns (run_until in c/loop.c). With no
         * SQE for the cancel, the slot keeps the poll's generation and
         * zcn_watches_rearm retries it from the next turn. */
        cancel_later = !cancel_poll(s, slot);
        if (!cancel_later && s->in_loop == 0)
            (void)zcn_uring_submit_and_get_events(s->ring);
        else if (!cancel_later)
            w->submit_due = true;
    }
    if (x->want_arm)
        w->want_arm--;
    if (x->parked)
        w->parked--;
    x->active = x->armed = x->want_arm = x->parked = false;
    x->cb = NULL;
    x->user_data = NULL;
    w->count--;
    if (cancel_later) {
        x->cancel_pending = true;
        w->cancels++;
    } else {
        free_slot(w, slot);
    }
    return ZCN_OK;
}

/* ------------------------------------------------------------------ */
/* cross-thread calls                                                  */
/* ------------------------------------------------------------------ */

ZCN_Error zcn_calls_init(struct zcn_calls *q, uint32_t cap)
{
    q->q = malloc((size_t)cap * sizeof *q->q);
    if (q->q == NULL)
        return zcn_fail((ZCN_Error)ENOMEM, "call queue");
    for (uint32_t i = 0; i < cap; i++)
        atomic_init(&q->q[i].seq, i);
    q->cap = cap;
    q->head = 0;
    atomic_init(&q->tail, 0);
    atomic_init(&q->pending, 0);
    q->inited = true;
    return ZCN_OK;
}

void zcn_calls_free(struct zcn_calls *q)
{
    q->inited = false;
    free(q->q);
    q->q = NULL;
}

uint32_t zcn_calls_run(ZCN_Loop *s)
{
    struct zcn_calls *q = &s->calls;
    /* calls queued by these calls wait a turn */
    uint32_t queued = atomic_load_explicit(&q->pending, memory_order_acquire);
    uint32_t ran = 0;
    while (ran < queued) {
        struct zcn_call *cell = &q->q[q->head % q->cap];
        if (atomic_load_explicit(&cell->seq, memory_order_acquire) != q->head + 1)
            break; /* claimed, not yet written: the next turn gets it */
        struct zcn_call call = {.fn = cell->fn, .arg = cell->arg};
        if (call.fn == NULL && s->ev != NULL && !has_room(s, 1))
            break; /* the next poll gets it */
        atomic_store_explicit(&cell->seq, q->head + q->cap, memory_order_release);
        q->head++;
        atomic_fetch_sub_explicit(&q->pending, 1, memory_order_acq_rel);
        ran++;
        s->lstats.calls_run++;
        if (call.fn != NULL) {
            s->in_callback++;
            call.fn(call.arg);
            s->in_callback--;
        } else if (s->ev != NULL) {
            next_event(s, ZCN_EVENT_CALL, -1)->offset = (uint64_t)(uintptr_t)call.arg;
        }
    }
    return ran;
}

ZCN_Error zcn_loop_call(ZCN_Loop *s, ZCN_Call fn, void *arg)
{
    int slot = zcn_live_acquire(s);
    if (slot == -1)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "not a live loop (NULL, destroyed or being "
                        "destroyed)");
    struct zcn_calls *q = &s->calls;
    uint64_t pos = atomic_load_explicit(&q->tail, memory_order_relaxed);
    struct zcn_call *cell;
    for (;;) {
        cell = &q->q[pos % q->cap];
        uint64_t seq = atomic_load_explicit(&cell->seq, memory_order_acquire);
        if (seq == pos) {
            if (atomic_compare_exchange_weak_explicit(&q->tail, &pos, pos + 1,
                                                      memory_order_relaxed,
                                                      memory_order_relaxed))
                break; /* the cell is ours */
        } else if (seq < pos) {
            /* the loop has not taken the call cap positions back: full */
            uint32_t cap = q->cap; /* read while pinned: once released the loop may go */
            atomic_fetch_add_explicit(&s->calls_refused, 1, memory_order_relaxed);
            zcn_live_release(slot);
            return zcn_fail(ZCN_ERR_QUEUE_FULL, "%u calls are queued (calls_max)", cap);
        } else {
            pos = atomic_load_explicit(&q->tail, memory_order_relaxed);
        }
    }
    cell->fn = fn;
    cell->arg = arg;
    atomic_store_explicit(&cell->seq, pos + 1, memory_order_release);
    if (atomic_fetch_add_explicit(&q->pending, 1, memory_order_acq_rel) == 0)
        zcn_eventfd_wake(s->wake_fd);
    zcn_live_release(slot);
    return ZCN_OK;
}
