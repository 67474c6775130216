/* Timers on the loop's clock: a binary heap of timer slots ordered by due
 * time, then start order. The loop's wait is bounded by the heap's top;
 * each turn runs what is due. Slots below `conns` belong to the
 * connections (one each: the connect timeout while connecting, then the
 * idle timeout, re-armed lazily: activity only stores a time, and a timer
 * that finds its connection active since re-arms for the new deadline).
 * The others are the users', from a free list of timers_max: no
 * allocation after create. A user timer's id is (gen << 32 | slot + 1);
 * gen changes each time the slot is taken, so an id is never reused and a
 * stale cancel finds nothing. */

#include "buffers.h"

ZCN_Error zcn_timers_init(struct zcn_timers *t, uint32_t conns, uint32_t user_max)
{
    uint64_t total = (uint64_t)conns + user_max;
    t->t = calloc(total, sizeof *t->t);
    t->heap = malloc(total * sizeof *t->heap);
    if (t->t == NULL || t->heap == NULL)
        return zcn_fail((ZCN_Error)ENOMEM, "timer tables");
    t->n = 0;
    t->conns = conns;
    t->user_max = user_max;
    t->free = NIL;
    for (uint64_t i = total; i-- > 0;) {
        t->t[i].pos = NIL;
        if (i >= conns) {
            t->t[i].next_free = t->free;
            t->free = (int32_t)i;
        }
    }
    return ZCN_OK;
}

void zcn_timers_free(struct zcn_timers *t)
{
    free(t->t);
    free(t->heap);
    t->t = NULL;
    t->heap = NULL;
}

static bool before(const struct zcn_timers *t, uint32_t a, uint32_t b)
{
    const struct zcn_timer *x = &t->t[a], *y = &t->t[b];
    return x->due_ms < y->due_ms || (x->due_ms == y->due_ms && x->seq < y->seq);
}

static void place(struct zcn_timers *t, uint32_t pos, uint32_t slot)
{
    t->heap[pos] = slot;
    t->t[slot].pos = (int32_t)pos;
}

static void sift_up(struct zcn_timers *t, uint32_t pos)
{
    uint32_t slot = t->heap[pos];
    while (pos > 0) {
        uint32_t parent = (pos - 1) / 2;
        if (!before(t, slot, t->heap[parent]))
            break;
        place(t, pos, t->heap[parent]);
        pos = parent;
    }
    place(t, pos, slot);
}

static void sift_down(struct zcn_timers *t, uint32_t pos)
{
    uint32_t slot = t->heap[pos];
    for (;;) {
        uint32_t child = 2 * pos + 1;
        if (child >= t->n)
            break;
        if (child + 1 < t->n && before(t, t->heap[child + 1], t->heap[child]))
            child++;
        if (!before(t, t->heap[child], slot))
            break;
        place(t, pos, t->heap[child]);
        pos = child;
    }
    place(t, pos, slot);
}

static void heap_remove(struct zcn_timers *t, uint32_t slot)
{
    int32_t pos = t->t[slot].pos;
    if (pos == NIL)
        return;
    t->t[slot].pos = NIL;
    uint32_t last = t->heap[--t->n];
    if ((uint32_t)pos == t->n)
        return;
    place(t, (uint32_t)pos, last);
    sift_down(t, (uint32_t)pos);
    sift_up(t, (uint32_t)t->t[last].pos);
}

static void heap_set(struct zcn_timers *t, uint32_t slot, uint64_t due_ms)
{
    struct zcn_timer *x = &t->t[slot];
    x->due_ms = due_ms;
    x->seq = ++t->seq;
    if (x->pos == NIL) {
        x->pos = (int32_t)t->n;
        t->heap[t->n++] = slot;
        sift_up(t, (uint32_t)x->pos);
    } else {
        /* Later than before (re-armed idle deadlines): usually down. */
        sift_down(t, (uint32_t)x->pos);
        sift_up(t, (uint32_t)x->pos);
    }
}

void zcn_timer_conn_arm(ZCN_Loop *s, uint32_t slot, uint64_t due_ms)
{
    heap_set(&s->timers, slot, due_ms);
}

void zcn_timer_conn_disarm(ZCN_Loop *s, uint32_t slot)
{
    heap_remove(&s->timers, slot);
}

int64_t zcn_timers_next_ms(const ZCN_Loop *s)
{
    const struct zcn_timers *t = &s->timers;
    if (t->n == 0)
        return -1;
    uint64_t due = t->t[t->heap[0]].due_ms;
    return due > s->now_ms ? (int64_t)(due - s->now_ms) : 0;
}

static uint64_t timer_id(const struct zcn_timers *t, uint32_t slot)
{
    return ((uint64_t)t->t[slot].gen << 32) | (slot + 1);
}

static void release(struct zcn_timers *t, uint32_t slot)
{
    t->t[slot].cb = NULL;
    t->t[slot].user_data = NULL;
    t->t[slot].next_free = t->free;
    t->free = (int32_t)slot;
    t->user_count--;
}

uint32_t zcn_timers_run(ZCN_Loop *s)
{
    struct zcn_timers *t = &s->timers;
    uint32_t fired = 0;
    /* Only timers set before this run began: one started (or re-armed)
     * by a callback meanwhile is due now at the earliest, so it sorts
     * behind every older due one, and stopping at it makes "delay 0" mean
     * the next turn. Counting entries instead let a callback that restarts
     * its timer with delay 0 run once per pending timer in a single run. */
    const uint64_t set_before = t->seq;
    while (t->n > 0) {
        uint32_t slot = t->heap[0];
        struct zcn_timer *x = &t->t[slot];
        if (x->due_ms > s->now_ms || x->seq > set_before)
            break;
        if (slot < t->conns) {
            if (!has_room(s, 2))
                break;
            heap_remove(t, slot);
            zcn_tcp_conn_timer(s, &s->conns[slot]);
            continue;
        }
        bool to_poll = x->cb == NULL && s->ev != NULL;
        if (to_poll && !has_room(s, 1))
            break;
        uint64_t id = timer_id(t, slot);
        ZCN_OnTimer cb = x->cb;
        void *ud = x->user_data;
        heap_remove(t, slot);
        if (x->repeat_ms != 0) {
            /* The next one is due a period after this one was; one that
             * fell behind (a long turn) is due now, not in a burst. */
            uint64_t next = x->due_ms + x->repeat_ms;
            heap_set(t, slot, next > s->now_ms ? next : s->now_ms + 1);
        } else {
            release(t, slot);
        }
        s->lstats.timers_fired++;
        fired++;
        if (to_poll) {
            next_event(s, ZCN_EVENT_TIMER, -1)->offset = id;
        } else if (cb != NULL) {
            s->in_callback++;
            cb(ud, id);
            s->in_callback--;
        }
    }
    return fired;
}

/* A pending user timer's slot from its id, or -1. */
static int64_t user_slot(const struct zcn_timers *t, uint64_t id)
{
    uint64_t low = id & 0xffffffffu;
    if (low == 0 || low - 1 < t->conns || low - 1 >= (uint64_t)t->conns + t->user_max)
        return -1;
    uint32_t slot = (uint32_t)(low - 1);
    const struct zcn_timer *x = &t->t[slot];
    if (x->gen != (uint32_t)(id >> 32) || x->pos == NIL)
        return -1;
    return slot;
}

ZCN_Error zcn_loop_timer_start(ZCN_Loop *s, uint64_t delay_ms, uint64_t repeat_ms,
                               ZCN_OnTimer cb, void *user_data, uint64_t *id_out)
{
    if (id_out != NULL)
        *id_out = 0;
    if (s == NULL || id_out == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, s == NULL ? "loop is NULL" : "id_out is NULL");
    ZCN_Error err = owner_check(s, "zcn_loop_timer_start");
    if (err != ZCN_OK)
        return err;
    if (s->destroying)
        return zcn_fail(ZCN_ERR_BUSY, "the loop is being destroyed");
    /* Clamp: a delay of SIZE_MAX means "practically never", not a wrap. */
    const uint64_t far = UINT64_MAX / 4;
    if (delay_ms > far)
        delay_ms = far;
    if (repeat_ms > far)
        repeat_ms = far;
    struct zcn_timers *t = &s->timers;
    if (t->free == NIL)
        return zcn_fail(ZCN_ERR_EXHAUSTED, "%u timers are pending (timers_max)", t->user_max);
    uint32_t slot = (uint32_t)t->free;
    struct zcn_timer *x = &t->t[slot];
    t->free = x->next_free;
    t->user_count++;
    x->gen = x->gen + 1 == 0 ? 1 : x->gen + 1;
    x->cb = cb;
    x->user_data = user_data;
    x->repeat_ms = repeat_ms;
    uint64_t now = s->now_ms != 0 && s->in_loop > 0 ? s->now_ms : zcn_now_ms();
    if (s->in_loop == 0)
        s->now_ms = now;
    heap_set(t, slot, now + delay_ms);
    *id_out = timer_id(t, slot);
    return ZCN_OK;
}

ZCN_Error zcn_loop_timer_cancel(ZCN_Loop *s, uint64_t id)
{
    if (s == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "loop is NULL");
    ZCN_Error err = owner_check(s, "zcn_loop_timer_cancel");
    if (err != ZCN_OK)
        return err;
    struct zcn_timers *t = &s->timers;
    int64_t slot = user_slot(t, id);
    if (slot < 0)
        return zcn_fail(ZCN_ERR_CLOSED, "timer %llu is not pending", (unsigned long long)id);
    heap_remove(t, (uint32_t)slot);
    release(t, (uint32_t)slot);
    return ZCN_OK;
}
