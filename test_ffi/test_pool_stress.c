/* BufferPool under contention: THREADS threads each do OPS acquire / write a
 * thread-unique pattern / verify / release cycles on a pool smaller than the
 * number of buffers they could want, so the free list is hot and exhaustion
 * happens. Two independent proofs that no buffer is handed out twice:
 *  - a per-buffer atomic owner word: set from 0 to the thread's id by CAS
 *    right after acquire (fails if another thread holds it) and back to 0
 *    just before release;
 *  - the pattern written over the buffer is still intact before release.
 * Then the stats must balance and a double release race has one winner.
 * Run it under -DZCN_TSAN=ON and -DZCN_ASAN=ON as well. */
#include "t_helpers.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

enum {
    THREADS = 8,
    OPS = 100000,
    POOL_COUNT = 24,
    HOLD_MAX = 4, /* up to 8 x 4 = 32 wanted at once > POOL_COUNT: exhaustion */
    RACE_ROUNDS = 2000,
};

static ZCN_BufferPool *pool;
static _Atomic uint32_t owner[POOL_COUNT];
static _Atomic uint64_t ownership_violations;
static _Atomic uint64_t pattern_violations;
static _Atomic uint64_t thread_acquires;
static _Atomic uint64_t thread_failed;

/* A pattern unique to (thread, op), spread over the buffer so a writer
 * sharing the buffer anywhere would be caught. */
static void fill(uint64_t *words, size_t n, uint64_t tag)
{
    for (size_t i = 0; i < n; i += 61)
        words[i] = tag ^ i;
    words[n - 1] = tag;
}

static int intact(const uint64_t *words, size_t n, uint64_t tag)
{
    for (size_t i = 0; i < n; i += 61)
        if (words[i] != (tag ^ i))
            return 0;
    return words[n - 1] == tag;
}

static void give_back(uint32_t id, void *buf, uint64_t tag, size_t words)
{
    int64_t index = zcn_pool_index_of(pool, buf);
    if (!intact(buf, words, tag))
        atomic_fetch_add(&pattern_violations, 1);
    uint32_t expected = id;
    if (!atomic_compare_exchange_strong(&owner[index], &expected, 0))
        atomic_fetch_add(&ownership_violations, 1);
    ZCN_Error err = zcn_pool_release(pool, buf);
    if (err != ZCN_OK) {
        fprintf(stderr, "release failed: %s (%s)\n", zcn_error_name(err), zcn_error_detail());
        exit(T_EXIT_FAIL);
    }
}

static void *worker(void *arg)
{
    uint32_t id = (uint32_t)(uintptr_t)arg; /* 1..THREADS: 0 means "nobody" */
    size_t words = zcn_pool_buffer_size(pool) / sizeof(uint64_t);
    void *held[HOLD_MAX];
    uint64_t tags[HOLD_MAX];
    uint64_t acquires = 0, failed = 0;
    for (uint32_t op = 0; op < OPS; op++) {
        int want = 1 + (int)(op % HOLD_MAX);
        int got = 0;
        for (; got < want; got++) {
            void *buf = zcn_pool_acquire(pool);
            if (buf == NULL) {
                failed++;
                break;
            }
            acquires++;
            int64_t index = zcn_pool_index_of(pool, buf);
            T_CHECK(index >= 0 && index < POOL_COUNT);
            uint32_t expected = 0;
            if (!atomic_compare_exchange_strong(&owner[index], &expected, id))
                atomic_fetch_add(&ownership_violations, 1);
            held[got] = buf;
            tags[got] = ((uint64_t)id << 48) ^ ((uint64_t)op << 8) ^ (uint64_t)got;
            fill(buf, words, tags[got]);
        }
        for (int i = got - 1; i >= 0; i--)
            give_back(id, held[i], tags[i], words);
    }
    atomic_fetch_add(&thread_acquires, acquires);
    atomic_fetch_add(&thread_failed, failed);
    return NULL;
}

/* Two threads release the same buffer at once: exactly one may win. */
static _Atomic int race_go;
static void *race_release(void *buf)
{
    while (!atomic_load(&race_go))
        ;
    return (void *)(intptr_t)zcn_pool_release(pool, buf);
}

static void double_release_race(void)
{
    for (int round = 0; round < RACE_ROUNDS; round++) {
        void *buf = zcn_pool_acquire(pool);
        T_CHECK(buf != NULL);
        pthread_t a, b;
        void *ra = NULL, *rb = NULL;
        atomic_store(&race_go, 0);
        T_CHECK(pthread_create(&a, NULL, race_release, buf) == 0);
        T_CHECK(pthread_create(&b, NULL, race_release, buf) == 0);
        atomic_store(&race_go, 1);
        T_CHECK(pthread_join(a, &ra) == 0);
        T_CHECK(pthread_join(b, &rb) == 0);
        ZCN_Error ea = (ZCN_Error)(intptr_t)ra, eb = (ZCN_Error)(intptr_t)rb;
        T_CHECK((ea == ZCN_OK && eb == ZCN_ERR_DOUBLE_FREE) ||
                (ea == ZCN_ERR_DOUBLE_FREE && eb == ZCN_OK));
    }
}

int main(void)
{
    ZCN_Error err = ZCN_OK;
    pool = zcn_pool_create(4096, POOL_COUNT, &err);
    T_CHECK_ERR(err, ZCN_OK);
    pthread_t threads[THREADS];
    for (uintptr_t i = 0; i < THREADS; i++)
        T_CHECK(pthread_create(&threads[i], NULL, worker, (void *)(i + 1)) == 0);
    for (int i = 0; i < THREADS; i++)
        T_CHECK(pthread_join(threads[i], NULL) == 0);

    ZCN_PoolStats s;
    T_CHECK_ERR(zcn_pool_stats(pool, &s), ZCN_OK);
    printf("stress: %d threads x %d ops: %llu acquires, %llu failed (pool of %d)\n", THREADS,
           OPS, (unsigned long long)s.allocated, (unsigned long long)s.failed, POOL_COUNT);
    T_CHECK(atomic_load(&ownership_violations) == 0);
    T_CHECK(atomic_load(&pattern_violations) == 0);
    T_CHECK(s.allocated == atomic_load(&thread_acquires));
    T_CHECK(s.failed == atomic_load(&thread_failed));
    T_CHECK(s.freed == s.allocated);
    T_CHECK(s.in_use == 0);
    T_CHECK(s.free == POOL_COUNT);
    for (int i = 0; i < POOL_COUNT; i++)
        T_CHECK(atomic_load(&owner[i]) == 0);

    /* The free list survived intact: exactly POOL_COUNT distinct buffers. */
    void *all[POOL_COUNT];
    for (int i = 0; i < POOL_COUNT; i++) {
        all[i] = zcn_pool_acquire(pool);
        T_CHECK(all[i] != NULL);
        T_CHECK(atomic_fetch_add(&owner[zcn_pool_index_of(pool, all[i])], 1) == 0);
    }
    T_CHECK(zcn_pool_acquire(pool) == NULL);
    for (int i = 0; i < POOL_COUNT; i++)
        T_CHECK_ERR(zcn_pool_release(pool, all[i]), ZCN_OK);

    double_release_race();
    T_CHECK_ERR(zcn_pool_stats(pool, &s), ZCN_OK);
    T_CHECK(s.in_use == 0);
    T_CHECK(s.freed == s.allocated);
    zcn_pool_destroy(pool);
    printf("stress: passed\n");
    return T_EXIT_PASS;
}
