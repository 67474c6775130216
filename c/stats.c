/* The loop's counters (zcn_loop_stats, zcn_server_stats): live on the
 * owner thread, and for other threads a snapshot the owner publishes at
 * the end of each loop call and, once another thread has asked, before
 * each wait (a seqlock over word-sized relaxed atomics). */
#include "buffers.h"

#include <sched.h>
#include <string.h>

static void tcp_stats_now(const ZCN_Loop *s, ZCN_ServerStats *out)
{
    *out = s->stats;
    out->connections_active = s->conns_active;
    out->buffers_total = s->buffer_count;
    out->buffers_in_use = s->buffer_count - s->pool_free - s->rx.count;
    out->buffers_held = (uint64_t)s->parked + s->pack_bufs + s->user_bufs;
    out->buffer_budget = s->budget;
    out->buffer_waiters = s->waiters.count;
}

static void stats_now(const ZCN_Loop *s, ZCN_LoopStats *out)
{
    *out = s->lstats;
    tcp_stats_now(s, &out->tcp);
    out->timers_active = s->timers.user_count;
    out->calls_refused = atomic_load_explicit(&s->calls_refused, memory_order_relaxed);
    out->watches_active = s->watches.count;
    out->servers = 0;
    for (uint32_t i = 0; i < s->servers_count; i++)
        out->servers += s->servers[i] != NULL;
}

#define SNAP_WORDS (sizeof(ZCN_LoopStats) / sizeof(uint64_t))
_Static_assert(sizeof(ZCN_LoopStats) % sizeof(uint64_t) == 0, "ZCN_LoopStats is all uint64_t");
_Static_assert(SNAP_WORDS <= ZCN_SEQLOCK_WORDS_MAX, "the seqlock copies at most 64 words");

/* Before each wait, on the owner thread, once another thread has read the
 * counters: a copy for such readers, so they never touch what the loop
 * writes, and at the end of every loop call. ~45 plain stores (relaxed
 * atomics compile to ordinary stores on x86 and arm64); a loop nobody
 * reads from another thread pays one load a wait (publishing before every
 * wait looked like ~1% of 1-connection ping-pong's CPU). */
void zcn_seqlock_write(_Atomic uint32_t *seq, _Atomic uint64_t *dst, const void *src,
                       size_t words)
{
    uint64_t w[ZCN_SEQLOCK_WORDS_MAX];
    size_t n = words < ZCN_SEQLOCK_WORDS_MAX ? words : ZCN_SEQLOCK_WORDS_MAX;
    memcpy(w, src, n * sizeof(uint64_t));
    uint32_t q = atomic_load_explicit(seq, memory_order_relaxed);
    atomic_store_explicit(seq, q + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    for (size_t i = 0; i < n; i++)
        atomic_store_explicit(&dst[i], w[i], memory_order_relaxed);
    atomic_store_explicit(seq, q + 2, memory_order_release);
}

void zcn_seqlock_read(const _Atomic uint32_t *seq, const _Atomic uint64_t *src, void *dst,
                      size_t words)
{
    uint64_t w[ZCN_SEQLOCK_WORDS_MAX];
    size_t n = words < ZCN_SEQLOCK_WORDS_MAX ? words : ZCN_SEQLOCK_WORDS_MAX;
    for (;;) {
        uint32_t q = atomic_load_explicit(seq, memory_order_acquire);
        if (q & 1u) {
            sched_yield();
            continue;
        }
        for (size_t i = 0; i < n; i++)
            w[i] = atomic_load_explicit(&src[i], memory_order_relaxed);
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(seq, memory_order_relaxed) == q)
            break;
    }
    memcpy(dst, w, n * sizeof(uint64_t));
}

void zcn_loop_publish_stats(ZCN_Loop *s)
{
    ZCN_LoopStats now;
    stats_now(s, &now);
    zcn_seqlock_write(&s->snap_seq, s->snap, &now, SNAP_WORDS);
    /* The UDP sockets on the loop publish theirs with it (zcn_udp_stats). */
    for (uint32_t i = 0, seen = 0; seen < s->sources_count && i < ZCN_SOURCES_MAX; i++) {
        zcn_source *src = s->sources[i];
        if (src == NULL)
            continue;
        seen++;
        if (src->publish != NULL)
            src->publish(src);
    }
}

bool zcn_loop_on_owner(const ZCN_Loop *s)
{
    return !s->started || s->owner == this_thread();
}

/* Another thread's read: retried while the owner is writing. The first
 * one asks the loop to publish before every wait from now on and wakes it
 * for a fresh copy, waiting up to 100 ms for it while the owner is inside
 * a loop call (one it is not running has the copy its last call made). */
void zcn_loop_snapshot_request(const ZCN_Loop *cs)
{
    ZCN_Loop *s = (ZCN_Loop *)cs; /* the request flag and the wake-up only */
    if (ZCN_UNLIKELY(!atomic_load_explicit(&s->snap_wanted, memory_order_acquire))) {
        uint32_t q0 = atomic_load_explicit(&s->snap_seq, memory_order_acquire);
        atomic_store_explicit(&s->snap_wanted, 1, memory_order_release);
        zcn_eventfd_wake(s->wake_fd);
        uint64_t end = zcn_now_ms() + 100;
        while (atomic_load_explicit(&s->snap_running, memory_order_relaxed) &&
               atomic_load_explicit(&s->snap_seq, memory_order_acquire) == q0 &&
               zcn_now_ms() < end)
            sched_yield();
    }
}

static void stats_snapshot(const ZCN_Loop *s, ZCN_LoopStats *out)
{
    zcn_loop_snapshot_request(s);
    zcn_seqlock_read(&s->snap_seq, s->snap, out, SNAP_WORDS);
}

ZCN_Error zcn_loop_stats(const ZCN_Loop *s, ZCN_LoopStats *out)
{
    if (s == NULL || out == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "loop or out is NULL");
    if (zcn_loop_on_owner(s))
        stats_now(s, out);
    else
        stats_snapshot(s, out);
    return ZCN_OK;
}

void zcn_loop_tcp_stats(const ZCN_Loop *s, ZCN_ServerStats *out)
{
    if (zcn_loop_on_owner(s)) {
        tcp_stats_now(s, out);
        return;
    }
    ZCN_LoopStats all;
    stats_snapshot(s, &all);
    *out = all.tcp;
}
