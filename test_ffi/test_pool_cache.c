/* BufferPool thread caches (docs/POOL.md, "Thread caches"): what a user of
 * a pool shared by threads relies on.
 *  - a thread's released buffers wait in its cache, bounded by thread_cache,
 *    and count as free, never in use;
 *  - a thread that exits gives its cache back;
 *  - a buffer released on another thread than it was acquired on is fine;
 *  - buffers sitting in other (idle, live) threads' caches are handed out
 *    before the pool says it is empty: exhaustion means every buffer in use;
 *  - destroying a pool while other threads still cache its buffers is safe,
 *    and those threads go on with other pools (one at the same address);
 *  - a thread using more pools than its table holds evicts one cleanly;
 *  - many threads passing buffers to each other never share a buffer.
 * Run it under -DZCN_TSAN=ON and -DZCN_ASAN=ON as well. */
#include "t_helpers.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

static ZCN_BufferPool *cached_pool(size_t count, uint32_t thread_cache)
{
    ZCN_Error err = ZCN_OK;
    ZCN_PoolConfig cfg = {.buffer_size = 4096, .count = count, .thread_cache = thread_cache};
    ZCN_BufferPool *pool = zcn_pool_create_with(&cfg, &err);
    T_CHECK_ERR(err, ZCN_OK);
    T_CHECK(pool != NULL);
    return pool;
}

static ZCN_PoolCacheStats cache_stats(ZCN_BufferPool *pool)
{
    ZCN_PoolCacheStats cs;
    T_CHECK_ERR(zcn_pool_cache_stats(pool, &cs), ZCN_OK);
    return cs;
}

static ZCN_PoolStats stats(ZCN_BufferPool *pool)
{
    ZCN_PoolStats s;
    T_CHECK_ERR(zcn_pool_stats(pool, &s), ZCN_OK);
    return s;
}

/* Takes every buffer; checks they are distinct; releases them. */
static void check_all_free(ZCN_BufferPool *pool, size_t count)
{
    void **all = calloc(count, sizeof *all);
    unsigned char *seen = calloc(count, 1);
    T_CHECK(all != NULL && seen != NULL);
    for (size_t i = 0; i < count; i++) {
        all[i] = zcn_pool_acquire(pool);
        T_CHECK(all[i] != NULL);
        int64_t index = zcn_pool_index_of(pool, all[i]);
        T_CHECK(index >= 0 && (size_t)index < count && !seen[index]);
        seen[index] = 1;
    }
    T_CHECK(zcn_pool_acquire(pool) == NULL);
    for (size_t i = 0; i < count; i++)
        T_CHECK_ERR(zcn_pool_release(pool, all[i]), ZCN_OK);
    free(all);
    free(seen);
}

/* ---- configuration ---- */

static void test_config(void)
{
    ZCN_Error err = ZCN_OK;
    T_CHECK(zcn_pool_create_with(NULL, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);
    ZCN_PoolConfig cfg = {.buffer_size = 4096, .count = 8,
                          .thread_cache = ZCN_POOL_THREAD_CACHE_MAX + 1};
    T_CHECK(zcn_pool_create_with(&cfg, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);
    cfg.thread_cache = 0;
    cfg.memory = (void *)(uintptr_t)4097; /* misaligned: refused before any use */
    cfg.memory_size = 1 << 20;
    T_CHECK(zcn_pool_create_with(&cfg, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);

    /* Defaults: min(64, max(1, count / 16)); OFF: no caches at all. */
    ZCN_BufferPool *pool = zcn_pool_create(4096, 24, &err);
    T_CHECK(cache_stats(pool).thread_cache == 1);
    T_CHECK(cache_stats(pool).caches_max == ZCN_POOL_THREAD_CACHES);
    zcn_pool_destroy(pool);
    pool = zcn_pool_create(4096, 4096, &err);
    T_CHECK(cache_stats(pool).thread_cache == ZCN_POOL_THREAD_CACHE_DEFAULT);
    zcn_pool_destroy(pool);
    pool = cached_pool(8, ZCN_POOL_THREAD_CACHE_OFF);
    void *b = zcn_pool_acquire(pool);
    T_CHECK_ERR(zcn_pool_release(pool, b), ZCN_OK);
    ZCN_PoolCacheStats cs = cache_stats(pool);
    T_CHECK(cs.thread_cache == 0 && cs.caches_max == 0 && cs.cached == 0);
    T_CHECK_ERR(zcn_pool_flush(pool), ZCN_OK);
    zcn_pool_destroy(pool);

    /* Over caller memory, as zcn_pool_create_in. */
    static _Alignas(4096) unsigned char mem[4 * 4096];
    cfg = (ZCN_PoolConfig){.buffer_size = 4096, .count = 4, .memory = mem,
                           .memory_size = sizeof mem, .thread_cache = 2};
    pool = zcn_pool_create_with(&cfg, &err);
    T_CHECK(pool != NULL && zcn_pool_base(pool) == mem);
    check_all_free(pool, 4);
    zcn_pool_destroy(pool);

    T_CHECK_ERR(zcn_pool_flush(NULL), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_pool_cache_stats(NULL, &cs), ZCN_ERR_INVALID_ARGUMENT);
}

/* ---- one thread: bound, LIFO, counted as free, flush ---- */

static void test_bound_and_stats(void)
{
    enum { COUNT = 64, K = 8 };
    ZCN_BufferPool *pool = cached_pool(COUNT, K);
    void *bufs[COUNT];
    for (int i = 0; i < COUNT; i++)
        T_CHECK((bufs[i] = zcn_pool_acquire(pool)) != NULL);
    for (int i = 0; i < COUNT; i++) {
        T_CHECK_ERR(zcn_pool_release(pool, bufs[i]), ZCN_OK);
        ZCN_PoolCacheStats cs = cache_stats(pool);
        T_CHECK(cs.cached >= 1 && cs.cached <= K);
        T_CHECK(cs.caches_in_use == 1);
        ZCN_PoolStats s = stats(pool);
        T_CHECK(s.in_use == (uint64_t)(COUNT - 1 - i));
        T_CHECK(s.free == (uint64_t)(i + 1));
    }
    /* The buffer released last is the next one out (cache-warm). */
    void *last = zcn_pool_acquire(pool);
    T_CHECK(last == bufs[COUNT - 1]);
    T_CHECK_ERR(zcn_pool_release(pool, last), ZCN_OK);
    T_CHECK_ERR(zcn_pool_release(pool, last), ZCN_ERR_DOUBLE_FREE);

    T_CHECK_ERR(zcn_pool_flush(pool), ZCN_OK);
    ZCN_PoolCacheStats cs = cache_stats(pool);
    T_CHECK(cs.cached == 0 && cs.caches_in_use == 0);
    check_all_free(pool, COUNT);
    ZCN_PoolStats s = stats(pool);
    T_CHECK(s.in_use == 0 && s.freed == s.allocated && s.failed == 1);
    zcn_pool_destroy(pool);
}

/* ---- thread exit returns the cache ---- */

struct holder {
    ZCN_BufferPool *pool;
    int n;                     /* buffers to acquire and release */
    void *given[16];           /* or, if given_n > 0, these to release */
    int given_n;
    pthread_barrier_t *cached; /* reached once the buffers sit in its cache */
    pthread_barrier_t *leave;  /* waited on before exiting (NULL: exit at once) */
};

static void *holder_main(void *arg)
{
    struct holder *h = arg;
    void *bufs[16];
    int got = 0;
    for (; got < h->n; got++)
        if ((bufs[got] = zcn_pool_acquire(h->pool)) == NULL)
            break;
    for (int i = 0; i < got; i++)
        T_CHECK_ERR(zcn_pool_release(h->pool, bufs[i]), ZCN_OK);
    for (int i = 0; i < h->given_n; i++)
        T_CHECK_ERR(zcn_pool_release(h->pool, h->given[i]), ZCN_OK);
    if (h->cached != NULL)
        pthread_barrier_wait(h->cached);
    if (h->leave != NULL)
        pthread_barrier_wait(h->leave);
    return NULL;
}

/* Starts n holders that each acquire and release `per_thread` buffers of
 * pool, meet at `cached`, then wait at `leave` before exiting. */
static void holders_start(struct holder *h, pthread_t *t, int n, ZCN_BufferPool *pool,
                          int per_thread, pthread_barrier_t *cached, pthread_barrier_t *leave)
{
    for (int i = 0; i < n; i++) {
        h[i] = (struct holder){.pool = pool, .n = per_thread, .cached = cached, .leave = leave};
        T_CHECK(pthread_create(&t[i], NULL, holder_main, &h[i]) == 0);
    }
}

static void test_thread_exit_returns_cache(void)
{
    enum { COUNT = 32, K = 8, THREADS = 3 };
    ZCN_BufferPool *pool = cached_pool(COUNT, K);
    pthread_barrier_t cached, leave;
    pthread_barrier_init(&cached, NULL, THREADS + 1);
    pthread_barrier_init(&leave, NULL, THREADS + 1);
    struct holder h[THREADS];
    pthread_t t[THREADS];
    holders_start(h, t, THREADS, pool, 4, &cached, &leave);
    pthread_barrier_wait(&cached);
    ZCN_PoolCacheStats cs = cache_stats(pool);
    T_CHECK(cs.caches_in_use == THREADS);
    T_CHECK(cs.cached == THREADS * 4);
    T_CHECK(stats(pool).in_use == 0 && stats(pool).free == COUNT);
    pthread_barrier_wait(&leave);
    for (int i = 0; i < THREADS; i++)
        T_CHECK(pthread_join(t[i], NULL) == 0);
    cs = cache_stats(pool);
    T_CHECK(cs.caches_in_use == 0);
    T_CHECK(cs.cached == 0);
    T_CHECK(cs.steals == 0);
    check_all_free(pool, COUNT); /* all on the shared list: no steal needed */
    T_CHECK(cache_stats(pool).steals == 0);
    pthread_barrier_destroy(&cached);
    pthread_barrier_destroy(&leave);
    zcn_pool_destroy(pool);
}

/* ---- cross-thread release, and exhaustion with buffers in live caches ---- */

static void test_cross_thread_and_exhaustion(void)
{
    enum { COUNT = 8, K = 8, THREADS = 2 };
    ZCN_BufferPool *pool = cached_pool(COUNT, K);
    void *mine[COUNT];
    for (int i = 0; i < COUNT; i++)
        T_CHECK((mine[i] = zcn_pool_acquire(pool)) != NULL);
    T_CHECK(zcn_pool_acquire(pool) == NULL);
    T_CHECK(stats(pool).failed == 1);

    /* Two threads release what this one acquired and stay alive (idle). */
    pthread_barrier_t cached, leave;
    pthread_barrier_init(&cached, NULL, THREADS + 1);
    pthread_barrier_init(&leave, NULL, THREADS + 1);
    struct holder h[THREADS];
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++) {
        h[i] = (struct holder){.pool = pool, .given_n = COUNT / THREADS, .cached = &cached,
                               .leave = &leave};
        memcpy(h[i].given, &mine[i * (COUNT / THREADS)], sizeof(void *) * (COUNT / THREADS));
        T_CHECK(pthread_create(&t[i], NULL, holder_main, &h[i]) == 0);
    }
    pthread_barrier_wait(&cached);
    T_CHECK(cache_stats(pool).cached == COUNT);
    T_CHECK(stats(pool).in_use == 0);

    /* Every buffer sits in an idle thread's cache, the shared list is empty:
     * the pool still hands out all of them, then says it is empty. */
    check_all_free(pool, COUNT);
    ZCN_PoolCacheStats cs = cache_stats(pool);
    T_CHECK(cs.steals == COUNT);
    T_CHECK(stats(pool).failed == 2);
    /* The releases of check_all_free went into this thread's cache. */
    T_CHECK(cs.cached == K && cs.caches_in_use == THREADS + 1);

    pthread_barrier_wait(&leave);
    for (int i = 0; i < THREADS; i++)
        T_CHECK(pthread_join(t[i], NULL) == 0);
    cs = cache_stats(pool);
    T_CHECK(cs.caches_in_use == 1 && cs.cached == K);
    T_CHECK_ERR(zcn_pool_flush(pool), ZCN_OK);
    T_CHECK(cache_stats(pool).cached == 0);
    ZCN_PoolStats s = stats(pool);
    T_CHECK(s.in_use == 0 && s.freed == s.allocated);
    pthread_barrier_destroy(&cached);
    pthread_barrier_destroy(&leave);
    zcn_pool_destroy(pool);
}

/* ---- destroy while other threads cache buffers ---- */

struct survivor {
    ZCN_BufferPool *_Atomic pool;
    pthread_barrier_t *step;
};

/* Caches buffers of the first pool, waits while it is destroyed and a new
 * one made (often at the same address), then works on the new one and
 * exits: its exit must not touch the destroyed pool (ASan would say). */
static void *survivor_main(void *arg)
{
    struct survivor *sv = arg;
    ZCN_BufferPool *pool = atomic_load(&sv->pool);
    void *b = zcn_pool_acquire(pool);
    T_CHECK(b != NULL);
    T_CHECK_ERR(zcn_pool_release(pool, b), ZCN_OK);
    pthread_barrier_wait(sv->step); /* 1: cached */
    pthread_barrier_wait(sv->step); /* 2: destroyed and replaced */
    pool = atomic_load(&sv->pool);
    for (int i = 0; i < 100; i++) {
        void *c = zcn_pool_acquire(pool);
        T_CHECK(c != NULL);
        T_CHECK_ERR(zcn_pool_release(pool, c), ZCN_OK);
    }
    pthread_barrier_wait(sv->step); /* 3: cached in the new pool */
    pthread_barrier_wait(sv->step); /* 4: looked at; exit */
    return NULL;
}

static void test_destroy_with_live_caches(void)
{
    enum { THREADS = 2, COUNT = 16 };
    pthread_barrier_t step;
    pthread_barrier_init(&step, NULL, THREADS + 1);
    struct survivor sv = {.step = &step};
    atomic_store(&sv.pool, cached_pool(COUNT, 4));
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        T_CHECK(pthread_create(&t[i], NULL, survivor_main, &sv) == 0);
    pthread_barrier_wait(&step);
    T_CHECK(cache_stats(atomic_load(&sv.pool)).cached == THREADS);
    zcn_pool_destroy(atomic_load(&sv.pool));
    atomic_store(&sv.pool, cached_pool(COUNT, 4));
    pthread_barrier_wait(&step);
    pthread_barrier_wait(&step);
    ZCN_BufferPool *pool = atomic_load(&sv.pool);
    T_CHECK(cache_stats(pool).caches_in_use == THREADS);
    pthread_barrier_wait(&step);
    for (int i = 0; i < THREADS; i++)
        T_CHECK(pthread_join(t[i], NULL) == 0);
    T_CHECK(cache_stats(pool).caches_in_use == 0);
    check_all_free(pool, COUNT);
    zcn_pool_destroy(pool);
    pthread_barrier_destroy(&step);
}

/* ---- more pools than a thread's table: eviction flushes cleanly ---- */

static void test_many_pools(void)
{
    enum { POOLS = 20, COUNT = 4 };
    ZCN_BufferPool *pools[POOLS];
    for (int i = 0; i < POOLS; i++) {
        pools[i] = cached_pool(COUNT, 2);
        void *a = zcn_pool_acquire(pools[i]), *b = zcn_pool_acquire(pools[i]);
        T_CHECK_ERR(zcn_pool_release(pools[i], a), ZCN_OK);
        T_CHECK_ERR(zcn_pool_release(pools[i], b), ZCN_OK);
    }
    uint64_t cached = 0, in_use = 0;
    for (int i = 0; i < POOLS; i++) {
        ZCN_PoolCacheStats cs = cache_stats(pools[i]);
        cached += cs.cached;
        in_use += cs.caches_in_use;
        T_CHECK(stats(pools[i]).in_use == 0);
    }
    /* This thread keeps a cache of at most 8 pools at once (the table). */
    T_CHECK(in_use >= 1 && in_use <= 8 && cached == in_use * 2);
    /* Destroy every other pool, then use them all again. */
    for (int i = 0; i < POOLS; i += 2) {
        zcn_pool_destroy(pools[i]);
        pools[i] = cached_pool(COUNT, 2);
    }
    for (int round = 0; round < 3; round++)
        for (int i = 0; i < POOLS; i++)
            check_all_free(pools[i], COUNT);
    for (int i = 0; i < POOLS; i++) {
        T_CHECK_ERR(zcn_pool_flush(pools[i]), ZCN_OK);
        T_CHECK(cache_stats(pools[i]).caches_in_use == 0);
        zcn_pool_destroy(pools[i]);
    }
}

/* ---- more threads than caches: the rest use the shared list ---- */

static void test_more_threads_than_caches(void)
{
    enum { THREADS = ZCN_POOL_THREAD_CACHES + 4, COUNT = THREADS * 2 };
    ZCN_BufferPool *pool = cached_pool(COUNT, 2);
    pthread_barrier_t cached, leave;
    pthread_barrier_init(&cached, NULL, THREADS + 1);
    pthread_barrier_init(&leave, NULL, THREADS + 1);
    struct holder *h = calloc(THREADS, sizeof *h);
    pthread_t *t = calloc(THREADS, sizeof *t);
    T_CHECK(h != NULL && t != NULL);
    holders_start(h, t, THREADS, pool, 2, &cached, &leave);
    pthread_barrier_wait(&cached);
    ZCN_PoolCacheStats cs = cache_stats(pool);
    T_CHECK(cs.caches_in_use == ZCN_POOL_THREAD_CACHES);
    T_CHECK(stats(pool).in_use == 0);
    check_all_free(pool, COUNT);
    pthread_barrier_wait(&leave);
    for (int i = 0; i < THREADS; i++)
        T_CHECK(pthread_join(t[i], NULL) == 0);
    T_CHECK(cache_stats(pool).caches_in_use <= 1); /* this thread's own */
    T_CHECK_ERR(zcn_pool_flush(pool), ZCN_OK);
    T_CHECK(cache_stats(pool).cached == 0);
    free(h);
    free(t);
    pthread_barrier_destroy(&cached);
    pthread_barrier_destroy(&leave);
    zcn_pool_destroy(pool);
}

/* ---- stress: threads pass buffers to each other ---- */

enum { PASS_THREADS = 4, PASS_OPS = 50000, PASS_COUNT = 10, MAILBOXES = 8 };

static ZCN_BufferPool *pass_pool;
static void *_Atomic mailbox[MAILBOXES];
static _Atomic uint32_t owner[PASS_COUNT];
static _Atomic uint64_t violations;

/* Marks a buffer owned by `id` (0 = nobody) and checks nobody else had it. */
static void own(void *buf, uint32_t from, uint32_t to)
{
    int64_t index = zcn_pool_index_of(pass_pool, buf);
    T_CHECK(index >= 0 && index < PASS_COUNT);
    uint32_t expected = from;
    if (!atomic_compare_exchange_strong(&owner[index], &expected, to))
        atomic_fetch_add(&violations, 1);
}

static void *passer_main(void *arg)
{
    uint32_t id = (uint32_t)(uintptr_t)arg;
    uint64_t x = id * 0x9E3779B97F4A7C15ull;
    for (int op = 0; op < PASS_OPS; op++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        void *buf = zcn_pool_acquire(pass_pool);
        if (buf != NULL) {
            own(buf, 0, id);
            memset(buf, (int)id, 64);
            /* Hand it to whoever takes the mailbox next; release what was there. */
            own(buf, id, 0);
            void *prev = atomic_exchange(&mailbox[x % MAILBOXES], buf);
            if (prev != NULL) {
                own(prev, 0, id);
                own(prev, id, 0);
                T_CHECK_ERR(zcn_pool_release(pass_pool, prev), ZCN_OK);
            }
        }
        if (x % 3 == 0) {
            void *taken = atomic_exchange(&mailbox[(x >> 8) % MAILBOXES], NULL);
            if (taken != NULL)
                T_CHECK_ERR(zcn_pool_release(pass_pool, taken), ZCN_OK);
        }
    }
    return NULL;
}

static void test_pass_stress(void)
{
    pass_pool = cached_pool(PASS_COUNT, 4);
    pthread_t t[PASS_THREADS];
    for (uintptr_t i = 0; i < PASS_THREADS; i++)
        T_CHECK(pthread_create(&t[i], NULL, passer_main, (void *)(i + 1)) == 0);
    for (int i = 0; i < PASS_THREADS; i++)
        T_CHECK(pthread_join(t[i], NULL) == 0);
    for (int i = 0; i < MAILBOXES; i++) {
        void *left = atomic_exchange(&mailbox[i], NULL);
        if (left != NULL)
            T_CHECK_ERR(zcn_pool_release(pass_pool, left), ZCN_OK);
    }
    T_CHECK(atomic_load(&violations) == 0);
    ZCN_PoolStats s = stats(pass_pool);
    T_CHECK(s.in_use == 0 && s.freed == s.allocated && s.free == PASS_COUNT);
    ZCN_PoolCacheStats cs = cache_stats(pass_pool);
    printf("pass stress: %llu acquires, %llu failed, %llu steals\n",
           (unsigned long long)s.allocated, (unsigned long long)s.failed,
           (unsigned long long)cs.steals);
    T_CHECK(cs.caches_in_use <= 1); /* the workers exited */
    check_all_free(pass_pool, PASS_COUNT);
    zcn_pool_destroy(pass_pool);
}

int main(void)
{
    test_config();
    test_bound_and_stats();
    test_thread_exit_returns_cache();
    test_cross_thread_and_exhaustion();
    test_destroy_with_live_caches();
    test_many_pools();
    test_more_threads_than_caches();
    test_pass_stress();
    printf("pool cache: passed\n");
    return T_EXIT_PASS;
}
