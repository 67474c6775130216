/* BufferPool: page-aligned buffers handed out by a lock-free stack of indices.
 *
 * Layout: one slab of `count` buffers, each `buffer_size` bytes (a multiple
 * of ZCN_PAGE_SIZE), and beside it a separate array of per-buffer slots, one
 * cache line each, so threads working on neighbouring buffers never share a
 * line. The free list is a Treiber stack threaded through slot.next; its head
 * packs {index (low 32 bits), ABA tag (high 32 bits)} into one 64-bit atomic,
 * so a single CAS both moves the head and proves nobody popped and pushed
 * the same index in between (the tag changes on every successful CAS).
 *
 * Double-free and foreign-pointer checks never touch the free list: the
 * pointer is mapped to an index arithmetically, and the slot's state goes
 * IN_USE -> FREE by CAS, so of two concurrent releases exactly one wins and
 * the loser changes nothing.
 *
 * Counters: the slot's state word also counts the acquires of that buffer
 * (state = acquires << 1 | in_use). The acquiring thread owns the slot, so
 * it bumps that count with a plain atomic store, not a locked add, and the
 * hot path is one CAS to acquire and two to release. zcn_pool_stats pays
 * instead: it sums one word per buffer (O(count)), which is fine for a call
 * made to look, not per message. Two global locked counters would cost two
 * more locked instructions per acquire+release pair.
 *
 * Thread caches: one shared head is lock-free but not contention-free (two
 * threads on one pool bounce its cache line: 2-3x malloc's time). So each
 * thread that releases into a pool gets a cache of its own, one of the
 * pool's `caches_max` cache lines: another Treiber stack threaded through
 * the same slot.next, with its own {index, tag} head, so popping from it
 * is ABA-safe exactly as the shared list is. Its owner pushes and pops on a
 * line no other thread writes in the common case; other threads only pop
 * from it (a steal), and only when the shared list is empty, so the pool
 * never reports exhaustion while a cache holds a buffer. The owner keeps
 * `net` (its pushes minus its pops) and stealers count `stolen`, so the
 * cache holds net - stolen buffers without any locked op on the owner's
 * path; the bound `thread_cache` is checked against that.
 *
 * A thread finds its caches through a small thread-local table of
 * {pool, pool id, cache}. Ids are never reused, so an entry of a destroyed
 * pool (maybe a new pool at the same address) never matches. The slow paths
 * that touch a cache of a pool the caller is not calling into (thread exit
 * through a pthread key destructor, evicting an entry) take registry_lock
 * and first check that the pool is still alive; zcn_pool_destroy unlinks
 * the pool under the same lock, so it never frees a pool under them.
 */
#include "internal.h"

#include <errno.h>
#include <liburing.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>

/* The kernel's cap on fixed buffers per ring (IORING_MAX_REG_BUFFERS) and on
 * one fixed buffer's length (SZ_1G in io_uring/rsrc.c). */
#define POOL_REGISTER_COUNT_MAX 16384u
#define POOL_REGISTER_BUFFER_BYTES_MAX ((size_t)1 << 30)

/* Index value meaning "no buffer": the end of the free list. Never a valid
 * index because count <= ZCN_POOL_COUNT_MAX < 2^32 - 1. */
#define INDEX_NONE UINT32_MAX

/* Bit 0 of a slot's state; the bits above count the buffer's acquires. */
#define SLOT_IN_USE ((uint64_t)1)
#define SLOT_ACQUIRE_ONE ((uint64_t)2)

/* One per buffer, alone on its cache line. */
struct pool_slot {
    _Alignas(ZCN_CACHE_LINE) _Atomic uint64_t state;
    /* Next free index while on the free list. Atomic because a popping thread
     * may read it while the owner of that index pushes it again (the read
     * value is then discarded by the failing head CAS). */
    _Atomic uint32_t next;
};

_Static_assert(sizeof(struct pool_slot) == ZCN_CACHE_LINE, "one slot per cache line");
_Static_assert(ZCN_POOL_COUNT_MAX < INDEX_NONE, "indices fit in 32 bits");

/* One thread's cache of one pool, alone on its cache line. */
struct pool_cache {
    _Alignas(ZCN_CACHE_LINE) _Atomic uint64_t head; /* {index, tag}, as the shared head */
    /* The owner's pushes minus its pops: written by the owner only (load +
     * store, no locked op); the cache holds net - stolen buffers. */
    _Atomic uint64_t net;
    /* Buffers other threads' acquires took from here (slow path). */
    _Atomic uint64_t stolen;
    /* 1 while a thread owns the cache; changed under registry_lock. */
    _Atomic uint32_t claimed;
};

_Static_assert(sizeof(struct pool_cache) == ZCN_CACHE_LINE, "one cache per cache line");

struct ZCN_BufferPool {
    /* Read-only after create: shared by every thread without contention. */
    _Alignas(ZCN_CACHE_LINE) unsigned char *base;
    struct pool_slot *slots;
    size_t buffer_size;
    size_t count;
    size_t slab_bytes;
    size_t slots_bytes;
    /* log2(buffer_size) when it is a power of two, else 0 (use a divide). */
    unsigned buffer_shift;
    bool owns_slab;
    /* The last ring zcn_pool_register succeeded with, for unregister to
     * check against; only compared, never dereferenced on its own. */
    ZCN_Ring *registered_ring;
    /* Buffers per thread cache (0: no caches) and the caches themselves. */
    uint32_t thread_cache;
    uint32_t caches_max;
    struct pool_cache *caches;
    /* Unique in the process, never reused (see the thread-local table). */
    uint64_t id;
    /* Pools with caches, linked under registry_lock. */
    ZCN_BufferPool *registry_prev;
    ZCN_BufferPool *registry_next;

    /* The one contended word, alone on its line; `failed` and `steals` are
     * written only when the shared list is empty, so they get a line of
     * their own as well. */
    _Alignas(ZCN_CACHE_LINE) _Atomic uint64_t head;
    _Alignas(ZCN_CACHE_LINE) _Atomic uint64_t failed;
    _Atomic uint64_t steals;
};

/* The pools a thread has a cache of: looked up on every acquire and release
 * (a pointer and an id compare per entry), so it stays small; a thread
 * working on more pools than this evicts one (its cache flushed). */
#define THREAD_POOLS_MAX 8u

struct cache_ref {
    ZCN_BufferPool *pool; /* NULL: a free entry */
    uint64_t pool_id;
    struct pool_cache *cache; /* NULL: every cache of the pool was taken */
};

struct thread_caches {
    struct cache_ref refs[THREAD_POOLS_MAX];
    unsigned evict_next;
    bool exit_hook; /* the pthread key is set: the caches go back at exit */
};

static _Thread_local struct thread_caches tl_caches;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static ZCN_BufferPool *registry_first; /* under registry_lock */
static _Atomic uint64_t pool_ids;
static pthread_once_t exit_key_once = PTHREAD_ONCE_INIT;
static pthread_key_t exit_key;
static bool exit_key_ok;

static inline uint64_t head_pack(uint32_t index, uint32_t tag)
{
    return ((uint64_t)tag << 32) | index;
}

static inline uint32_t head_index(uint64_t head)
{
    return (uint32_t)head;
}

static inline uint32_t head_tag(uint64_t head)
{
    return (uint32_t)(head >> 32);
}

/* ------------------------------------------------------------------ */
/* Create / destroy                                                    */
/* ------------------------------------------------------------------ */

/* Validates the sizes and computes the rounded buffer size and slab size.
 * Every bound is checked before any multiplication can overflow. */
static ZCN_Error pool_sizes(size_t buffer_size, size_t count, size_t *rounded_out,
                            size_t *slab_bytes_out)
{
    if (buffer_size == 0)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "pool: buffer_size is 0");
    if (count == 0)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "pool: count is 0");
    if (count > ZCN_POOL_COUNT_MAX)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "pool: count %zu is over ZCN_POOL_COUNT_MAX (%u)",
                        count, ZCN_POOL_COUNT_MAX);
    if ((uint64_t)buffer_size > ZCN_POOL_BYTES_MAX)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                        "pool: buffer_size %zu is over ZCN_POOL_BYTES_MAX (%llu)", buffer_size,
                        (unsigned long long)ZCN_POOL_BYTES_MAX);
    size_t rounded = (buffer_size + ZCN_PAGE_SIZE - 1) & ~(size_t)(ZCN_PAGE_SIZE - 1);
    size_t slab_bytes = 0;
    if (__builtin_mul_overflow(rounded, count, &slab_bytes) ||
        (uint64_t)slab_bytes > ZCN_POOL_BYTES_MAX)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                        "pool: %zu buffers of %zu bytes exceed ZCN_POOL_BYTES_MAX (%llu)", count,
                        rounded, (unsigned long long)ZCN_POOL_BYTES_MAX);
    *rounded_out = rounded;
    *slab_bytes_out = slab_bytes;
    return ZCN_OK;
}

static void *map_anonymous(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* Threads every index onto the free list in order, so a fresh pool hands
 * out buffer 0 first (predictable for tests and for cache warmth). */
static void pool_init_free_list(ZCN_BufferPool *pool)
{
    uint32_t count = (uint32_t)pool->count;
    for (uint32_t i = 0; i < count; i++) {
        atomic_init(&pool->slots[i].state, 0);
        atomic_init(&pool->slots[i].next, i + 1 < count ? i + 1 : INDEX_NONE);
    }
    atomic_init(&pool->head, head_pack(0, 0));
    atomic_init(&pool->failed, 0);
}

static void registry_add(ZCN_BufferPool *pool)
{
    pthread_mutex_lock(&registry_lock);
    pool->registry_prev = NULL;
    pool->registry_next = registry_first;
    if (registry_first != NULL)
        registry_first->registry_prev = pool;
    registry_first = pool;
    pthread_mutex_unlock(&registry_lock);
}

static void registry_remove(ZCN_BufferPool *pool)
{
    pthread_mutex_lock(&registry_lock);
    if (pool->registry_prev != NULL)
        pool->registry_prev->registry_next = pool->registry_next;
    else
        registry_first = pool->registry_next;
    if (pool->registry_next != NULL)
        pool->registry_next->registry_prev = pool->registry_prev;
    pthread_mutex_unlock(&registry_lock);
}

/* Whether the entry's pool is still alive. Compares pointers and ids only:
 * never dereferences `pool` unless it is on the list. */
static bool registry_has_locked(const struct cache_ref *ref)
{
    for (const ZCN_BufferPool *p = registry_first; p != NULL; p = p->registry_next)
        if (p == ref->pool)
            return p->id == ref->pool_id;
    return false;
}

/* 0 (the default) -> min(64, max(1, count / 16)); OFF -> 0 (no caches). */
static ZCN_Error thread_cache_size(uint32_t requested, size_t count, uint32_t *out)
{
    if (requested == ZCN_POOL_THREAD_CACHE_OFF) {
        *out = 0;
        return ZCN_OK;
    }
    if (requested > ZCN_POOL_THREAD_CACHE_MAX)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                        "pool: thread_cache %u is over ZCN_POOL_THREAD_CACHE_MAX (%u)", requested,
                        ZCN_POOL_THREAD_CACHE_MAX);
    if (requested == 0) {
        size_t k = count / 16;
        requested = k < 1 ? 1 : k > ZCN_POOL_THREAD_CACHE_DEFAULT ? ZCN_POOL_THREAD_CACHE_DEFAULT
                                                                  : (uint32_t)k;
    }
    *out = requested;
    return ZCN_OK;
}

static bool pool_caches_init(ZCN_BufferPool *pool, uint32_t thread_cache)
{
    pool->id = atomic_fetch_add_explicit(&pool_ids, 1, memory_order_relaxed) + 1;
    atomic_init(&pool->steals, 0);
    if (thread_cache == 0)
        return true;
    size_t bytes = ZCN_POOL_THREAD_CACHES * sizeof(struct pool_cache);
    pool->caches = aligned_alloc(ZCN_CACHE_LINE, bytes);
    if (pool->caches == NULL)
        return false;
    for (uint32_t i = 0; i < ZCN_POOL_THREAD_CACHES; i++) {
        atomic_init(&pool->caches[i].head, head_pack(INDEX_NONE, 0));
        atomic_init(&pool->caches[i].net, 0);
        atomic_init(&pool->caches[i].stolen, 0);
        atomic_init(&pool->caches[i].claimed, 0);
    }
    pool->thread_cache = thread_cache;
    pool->caches_max = ZCN_POOL_THREAD_CACHES;
    registry_add(pool);
    return true;
}

/* Builds the pool around an existing slab. Metadata is mmap'ed rather than
 * malloc'ed: at ZCN_POOL_COUNT_MAX it is 1 GiB, and untouched pages of a
 * mapping cost nothing. */
static ZCN_BufferPool *pool_new(unsigned char *base, size_t slab_bytes, size_t rounded,
                                size_t count, bool owns_slab, uint32_t thread_cache,
                                ZCN_Error *err)
{
    ZCN_BufferPool *pool = aligned_alloc(ZCN_CACHE_LINE, sizeof *pool);
    if (pool == NULL) {
        zcn_set_err(err, zcn_fail((ZCN_Error)ENOMEM, "pool: out of memory for the pool header"));
        return NULL;
    }
    memset(pool, 0, sizeof *pool);
    pool->slots_bytes = count * sizeof(struct pool_slot);
    pool->slots = map_anonymous(pool->slots_bytes);
    if (pool->slots == NULL) {
        zcn_set_err(err, zcn_fail((ZCN_Error)ENOMEM, "pool: mmap of %zu bytes of metadata failed",
                                  pool->slots_bytes));
        free(pool);
        return NULL;
    }
    pool->base = base;
    pool->buffer_size = rounded;
    pool->count = count;
    pool->slab_bytes = slab_bytes;
    pool->owns_slab = owns_slab;
    pool->buffer_shift = (rounded & (rounded - 1)) == 0 ? (unsigned)__builtin_ctzll(rounded) : 0;
    pool_init_free_list(pool);
    if (!pool_caches_init(pool, thread_cache)) {
        zcn_set_err(err, zcn_fail((ZCN_Error)ENOMEM, "pool: out of memory for %u thread caches",
                                  ZCN_POOL_THREAD_CACHES));
        munmap(pool->slots, pool->slots_bytes);
        free(pool);
        return NULL;
    }
    zcn_clear_detail();
    zcn_set_err(err, ZCN_OK);
    return pool;
}

ZCN_BufferPool *zcn_pool_create_with(const ZCN_PoolConfig *config, ZCN_Error *err)
{
    if (config == NULL) {
        zcn_set_err(err, zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "pool: config is NULL"));
        return NULL;
    }
    size_t rounded = 0, slab_bytes = 0;
    uint32_t thread_cache = 0;
    void *memory = config->memory;
    ZCN_Error e = pool_sizes(config->buffer_size, config->count, &rounded, &slab_bytes);
    if (e == ZCN_OK)
        e = thread_cache_size(config->thread_cache, config->count, &thread_cache);
    if (e == ZCN_OK && memory != NULL && ((uintptr_t)memory % ZCN_PAGE_SIZE) != 0)
        e = zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "pool: memory %p is not %u-byte aligned", memory,
                     ZCN_PAGE_SIZE);
    if (e == ZCN_OK && memory != NULL && config->memory_size < slab_bytes)
        e = zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                     "pool: memory_size %zu is less than the %zu bytes needed (%zu x %zu)",
                     config->memory_size, slab_bytes, config->count, rounded);
    if (e != ZCN_OK) {
        zcn_set_err(err, e);
        return NULL;
    }
    if (memory != NULL)
        return pool_new(memory, slab_bytes, rounded, config->count, false, thread_cache, err);
    unsigned char *base = map_anonymous(slab_bytes);
    if (base == NULL) {
        zcn_set_err(err, zcn_fail((ZCN_Error)ENOMEM, "pool: mmap of a %zu-byte slab failed: %s",
                                  slab_bytes, strerror(errno)));
        return NULL;
    }
    ZCN_BufferPool *pool = pool_new(base, slab_bytes, rounded, config->count, true,
                                    thread_cache, err);
    if (pool == NULL)
        munmap(base, slab_bytes);
    return pool;
}

ZCN_BufferPool *zcn_pool_create(size_t buffer_size, size_t count, ZCN_Error *err)
{
    ZCN_PoolConfig config = {.buffer_size = buffer_size, .count = count};
    return zcn_pool_create_with(&config, err);
}

ZCN_BufferPool *zcn_pool_create_in(void *memory, size_t memory_size, size_t buffer_size,
                                   size_t count, ZCN_Error *err)
{
    if (memory == NULL) {
        /* Checked after the sizes, as before: a bad size is named first. */
        size_t rounded = 0, slab_bytes = 0;
        ZCN_Error e = pool_sizes(buffer_size, count, &rounded, &slab_bytes);
        zcn_set_err(err, e != ZCN_OK ? e
                                     : zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "pool: memory is NULL"));
        return NULL;
    }
    ZCN_PoolConfig config = {.buffer_size = buffer_size, .count = count, .memory = memory,
                             .memory_size = memory_size};
    return zcn_pool_create_with(&config, err);
}

void zcn_pool_destroy(ZCN_BufferPool *pool)
{
    if (pool == NULL)
        return;
    /* A registration is not undone here: the ring may already be gone, and
     * the kernel holds its own references to registered pages anyway.
     * Unlinked first, under the lock: a thread returning its cache at exit
     * either finishes before this or sees the pool gone. */
    if (pool->caches != NULL) {
        registry_remove(pool);
        free(pool->caches);
    }
    munmap(pool->slots, pool->slots_bytes);
    if (pool->owns_slab)
        munmap(pool->base, pool->slab_bytes);
    free(pool);
}

/* ------------------------------------------------------------------ */
/* Acquire / release: the hot path                                     */
/* ------------------------------------------------------------------ */

/* Pops one index from a stack (the shared list or a thread cache), or
 * INDEX_NONE. The acquire ordering on success pairs with the release CAS in
 * stack_push_chain, so the previous owner's writes to the buffer and to
 * slot.next are visible here. */
static inline uint32_t stack_pop(_Atomic uint64_t *head, struct pool_slot *slots)
{
    uint64_t old = atomic_load_explicit(head, memory_order_acquire);
    for (;;) {
        uint32_t index = head_index(old);
        if (index == INDEX_NONE)
            return INDEX_NONE;
        uint32_t next = atomic_load_explicit(&slots[index].next, memory_order_relaxed);
        uint64_t new_head = head_pack(next, head_tag(old) + 1);
        if (atomic_compare_exchange_weak_explicit(head, &old, new_head, memory_order_acquire,
                                                  memory_order_acquire))
            return index;
    }
}

/* Pushes the chain first..last (linked through slot.next, which the caller
 * owns) in one CAS; first == last pushes one index. */
static inline void stack_push_chain(_Atomic uint64_t *head, struct pool_slot *slots,
                                    uint32_t first, uint32_t last)
{
    uint64_t old = atomic_load_explicit(head, memory_order_relaxed);
    for (;;) {
        atomic_store_explicit(&slots[last].next, head_index(old), memory_order_relaxed);
        uint64_t new_head = head_pack(first, head_tag(old) + 1);
        if (atomic_compare_exchange_weak_explicit(head, &old, new_head, memory_order_release,
                                                  memory_order_relaxed))
            return;
    }
}

/* ---- thread caches ---- */

/* The calling thread's entry for `pool`, or NULL. */
static inline struct cache_ref *thread_ref(const ZCN_BufferPool *pool)
{
    for (unsigned i = 0; i < THREAD_POOLS_MAX; i++) {
        struct cache_ref *ref = &tl_caches.refs[i];
        if (ref->pool == pool && ref->pool_id == pool->id)
            return ref;
    }
    return NULL;
}

static inline uint64_t cache_held(struct pool_cache *cache)
{
    return atomic_load_explicit(&cache->net, memory_order_relaxed) -
           atomic_load_explicit(&cache->stolen, memory_order_relaxed);
}

/* Owner only: net moves by `delta` (a plain load + store, no locked op). */
static inline void cache_net_add(struct pool_cache *cache, int64_t delta)
{
    uint64_t net = atomic_load_explicit(&cache->net, memory_order_relaxed);
    atomic_store_explicit(&cache->net, net + (uint64_t)delta, memory_order_relaxed);
}

/* Owner only. Takes the cache's whole chain off in one CAS (from then on
 * nobody else can reach it: stealers pop only from a non-empty head, and
 * only the owner pushes), keeps the newest half (keep_half) or nothing, and
 * moves the rest onto the shared list in one more CAS. A stealer that read
 * the head before the swap fails its CAS on the tag. */
static void cache_spill(ZCN_BufferPool *pool, struct pool_cache *cache, bool keep_half)
{
    struct pool_slot *slots = pool->slots;
    uint64_t old = atomic_load_explicit(&cache->head, memory_order_acquire);
    uint64_t empty;
    do {
        empty = head_pack(INDEX_NONE, head_tag(old) + 1);
    } while (!atomic_compare_exchange_weak_explicit(&cache->head, &old, empty,
                                                    memory_order_acquire, memory_order_acquire));
    uint32_t first = head_index(old);
    if (first == INDEX_NONE)
        return;
    uint32_t n = 0, last = first;
    for (uint32_t i = first; i != INDEX_NONE;
         i = atomic_load_explicit(&slots[i].next, memory_order_relaxed)) {
        last = i;
        n++;
    }
    uint32_t keep = keep_half ? n / 2 : 0, kept_last = INDEX_NONE, give = first;
    for (uint32_t k = 0; k < keep; k++) {
        kept_last = give;
        give = atomic_load_explicit(&slots[give].next, memory_order_relaxed);
    }
    /* keep <= n / 2 < n: `give` starts a non-empty chain ending at `last`. */
    stack_push_chain(&pool->head, slots, give, last);
    if (keep > 0) {
        atomic_store_explicit(&slots[kept_last].next, INDEX_NONE, memory_order_relaxed);
        atomic_store_explicit(&cache->head, head_pack(first, head_tag(empty) + 1),
                              memory_order_release);
    }
    cache_net_add(cache, -(int64_t)(n - keep));
}

/* Under registry_lock, `ref` alive: the cache's buffers go to the shared
 * list, the cache is free for another thread, the entry is empty. */
static void cache_return_locked(struct cache_ref *ref)
{
    if (ref->cache != NULL) {
        cache_spill(ref->pool, ref->cache, false);
        atomic_store_explicit(&ref->cache->claimed, 0, memory_order_relaxed);
    }
    memset(ref, 0, sizeof *ref);
}

/* The pthread key destructor: a thread's caches go back when it exits. */
static void thread_caches_exit(void *arg)
{
    struct thread_caches *tc = arg;
    pthread_mutex_lock(&registry_lock);
    for (unsigned i = 0; i < THREAD_POOLS_MAX; i++) {
        struct cache_ref *ref = &tc->refs[i];
        if (ref->pool != NULL && registry_has_locked(ref))
            cache_return_locked(ref);
        memset(ref, 0, sizeof *ref);
    }
    tc->exit_hook = false;
    pthread_mutex_unlock(&registry_lock);
}

static void exit_key_create(void)
{
    exit_key_ok = pthread_key_create(&exit_key, thread_caches_exit) == 0;
}

/* Under registry_lock: a free entry of the calling thread's table. Reuses an
 * entry of a destroyed pool, else evicts one (its cache returned). */
static struct cache_ref *thread_ref_slot_locked(void)
{
    struct cache_ref *refs = tl_caches.refs;
    for (unsigned i = 0; i < THREAD_POOLS_MAX; i++)
        if (refs[i].pool == NULL)
            return &refs[i];
    for (unsigned i = 0; i < THREAD_POOLS_MAX; i++)
        if (!registry_has_locked(&refs[i])) {
            memset(&refs[i], 0, sizeof refs[i]);
            return &refs[i];
        }
    struct cache_ref *victim = &refs[tl_caches.evict_next++ % THREAD_POOLS_MAX];
    cache_return_locked(victim);
    return victim;
}

/* The release path's first call on `pool` from this thread: claims one of
 * the pool's caches (NULL when all are taken, or the exit hook cannot be
 * set: then this thread uses the shared list). Not the hot path. */
static struct pool_cache *thread_cache_attach(ZCN_BufferPool *pool)
{
    pthread_once(&exit_key_once, exit_key_create);
    pthread_mutex_lock(&registry_lock);
    struct cache_ref *ref = thread_ref_slot_locked();
    ref->pool = pool;
    ref->pool_id = pool->id;
    ref->cache = NULL;
    if (!tl_caches.exit_hook && exit_key_ok &&
        pthread_setspecific(exit_key, &tl_caches) == 0)
        tl_caches.exit_hook = true;
    for (uint32_t i = 0; tl_caches.exit_hook && i < pool->caches_max; i++) {
        struct pool_cache *cache = &pool->caches[i];
        if (atomic_load_explicit(&cache->claimed, memory_order_relaxed) == 0) {
            atomic_store_explicit(&cache->claimed, 1, memory_order_relaxed);
            ref->cache = cache;
            break;
        }
    }
    pthread_mutex_unlock(&registry_lock);
    return ref->cache;
}

/* Only when the shared list is empty: a buffer from another thread's
 * cache, so buffers sitting in caches never make the pool look exhausted. */
static uint32_t cache_steal(ZCN_BufferPool *pool)
{
    for (uint32_t i = 0; i < pool->caches_max; i++) {
        struct pool_cache *cache = &pool->caches[i];
        uint32_t index = stack_pop(&cache->head, pool->slots);
        if (index != INDEX_NONE) {
            atomic_fetch_add_explicit(&cache->stolen, 1, memory_order_relaxed);
            atomic_fetch_add_explicit(&pool->steals, 1, memory_order_relaxed);
            return index;
        }
    }
    return INDEX_NONE;
}

/* Own cache, then the shared list, then other threads' caches. */
static inline uint32_t pool_take(ZCN_BufferPool *pool)
{
    if (pool->thread_cache == 0)
        return stack_pop(&pool->head, pool->slots);
    struct cache_ref *ref = thread_ref(pool);
    if (ref != NULL && ref->cache != NULL) {
        uint32_t index = stack_pop(&ref->cache->head, pool->slots);
        if (index != INDEX_NONE) {
            cache_net_add(ref->cache, -1);
            return index;
        }
    }
    uint32_t index = stack_pop(&pool->head, pool->slots);
    return index != INDEX_NONE ? index : cache_steal(pool);
}

/* Into the own cache (set up on the first release), the older half of a
 * full cache going back to the shared list first; without one, the shared
 * list. */
static inline void pool_give(ZCN_BufferPool *pool, uint32_t index)
{
    struct pool_cache *cache = NULL;
    if (pool->thread_cache != 0) {
        struct cache_ref *ref = thread_ref(pool);
        cache = ref != NULL ? ref->cache : thread_cache_attach(pool);
    }
    if (cache == NULL) {
        stack_push_chain(&pool->head, pool->slots, index, index);
        return;
    }
    uint64_t net = atomic_load_explicit(&cache->net, memory_order_relaxed);
    if (ZCN_UNLIKELY(net - atomic_load_explicit(&cache->stolen, memory_order_relaxed) >=
                     pool->thread_cache)) {
        cache_spill(pool, cache, true);
        net = atomic_load_explicit(&cache->net, memory_order_relaxed);
    }
    stack_push_chain(&cache->head, pool->slots, index, index);
    atomic_store_explicit(&cache->net, net + 1, memory_order_relaxed);
}

void *zcn_pool_acquire(ZCN_BufferPool *pool)
{
    if (ZCN_UNLIKELY(pool == NULL))
        return NULL;
    uint32_t index = pool_take(pool);
    if (ZCN_UNLIKELY(index == INDEX_NONE)) {
        atomic_fetch_add_explicit(&pool->failed, 1, memory_order_relaxed);
        return NULL;
    }
    /* The slot is ours alone now, so load + store suffices (no locked op):
     * only a release of a buffer the caller does not own could race. */
    struct pool_slot *slot = &pool->slots[index];
    uint64_t state = atomic_load_explicit(&slot->state, memory_order_relaxed);
    atomic_store_explicit(&slot->state, (state + SLOT_ACQUIRE_ONE) | SLOT_IN_USE,
                          memory_order_relaxed);
    return pool->base + (size_t)index * pool->buffer_size;
}

/* Maps a buffer start to its index; -1 for anything else. Pure arithmetic:
 * never dereferences the pointer. */
static inline int64_t pool_index(const ZCN_BufferPool *pool, const void *buffer)
{
    uintptr_t p = (uintptr_t)buffer, base = (uintptr_t)pool->base;
    if (p < base || p - base >= pool->slab_bytes)
        return -1;
    size_t offset = p - base;
    if (pool->buffer_shift != 0) {
        if ((offset & (pool->buffer_size - 1)) != 0)
            return -1;
        return (int64_t)(offset >> pool->buffer_shift);
    }
    if (offset % pool->buffer_size != 0)
        return -1;
    return (int64_t)(offset / pool->buffer_size);
}

/* IN_USE -> FREE, keeping the acquire count. False if already free: when
 * two threads release one buffer, the loser's CAS fails, it reloads, sees
 * the bit clear and reports a double free without changing anything. */
static inline bool slot_mark_free(struct pool_slot *slot)
{
    uint64_t state = atomic_load_explicit(&slot->state, memory_order_relaxed);
    do {
        if ((state & SLOT_IN_USE) == 0)
            return false;
    } while (!atomic_compare_exchange_weak_explicit(&slot->state, &state, state & ~SLOT_IN_USE,
                                                    memory_order_relaxed, memory_order_relaxed));
    return true;
}

ZCN_Error zcn_pool_release(ZCN_BufferPool *pool, void *buffer)
{
    if (ZCN_UNLIKELY(pool == NULL))
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "pool_release: pool is NULL");
    int64_t index = pool_index(pool, buffer);
    if (ZCN_UNLIKELY(index < 0))
        return zcn_fail(ZCN_ERR_FOREIGN_POINTER,
                        "pool_release: %p is not the start of a buffer of pool %p "
                        "(slab %p, %zu x %zu bytes)",
                        buffer, (void *)pool, (void *)pool->base, pool->count,
                        pool->buffer_size);
    if (ZCN_UNLIKELY(!slot_mark_free(&pool->slots[index])))
        return zcn_fail(ZCN_ERR_DOUBLE_FREE, "pool_release: buffer %lld (%p) is already free",
                        (long long)index, buffer);
    pool_give(pool, (uint32_t)index);
    return ZCN_OK;
}

/* ------------------------------------------------------------------ */
/* Queries                                                             */
/* ------------------------------------------------------------------ */

ZCN_Error zcn_pool_stats(const ZCN_BufferPool *pool, ZCN_PoolStats *out)
{
    if (pool == NULL || out == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "pool_stats: %s is NULL",
                        pool == NULL ? "pool" : "out");
    ZCN_BufferPool *p = (ZCN_BufferPool *)pool; /* atomic loads need non-const in C11 */
    /* One atomic load per slot gives that buffer's acquires and whether it
     * is out now; its releases are the difference. Summing keeps
     * in_use <= total and freed <= allocated even while threads work. */
    uint64_t allocated = 0, in_use = 0;
    for (size_t i = 0; i < pool->count; i++) {
        uint64_t state = atomic_load_explicit(&p->slots[i].state, memory_order_relaxed);
        allocated += state >> 1;
        in_use += state & SLOT_IN_USE;
    }
    out->total = pool->count;
    out->in_use = in_use;
    out->free = pool->count - in_use;
    out->allocated = allocated;
    out->freed = allocated - in_use;
    out->failed = atomic_load_explicit(&p->failed, memory_order_relaxed);
    out->buffer_size = pool->buffer_size;
    return ZCN_OK;
}

ZCN_Error zcn_pool_flush(ZCN_BufferPool *pool)
{
    if (pool == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "pool_flush: pool is NULL");
    struct cache_ref *ref = pool->thread_cache != 0 ? thread_ref(pool) : NULL;
    if (ref == NULL)
        return ZCN_OK;
    pthread_mutex_lock(&registry_lock);
    cache_return_locked(ref);
    pthread_mutex_unlock(&registry_lock);
    return ZCN_OK;
}

ZCN_Error zcn_pool_cache_stats(const ZCN_BufferPool *pool, ZCN_PoolCacheStats *out)
{
    if (pool == NULL || out == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "pool_cache_stats: %s is NULL",
                        pool == NULL ? "pool" : "out");
    ZCN_BufferPool *p = (ZCN_BufferPool *)pool; /* atomic loads need non-const in C11 */
    memset(out, 0, sizeof *out);
    out->thread_cache = pool->thread_cache;
    out->caches_max = pool->caches_max;
    for (uint32_t i = 0; i < pool->caches_max; i++) {
        out->caches_in_use += atomic_load_explicit(&p->caches[i].claimed, memory_order_relaxed);
        out->cached += cache_held(&p->caches[i]);
    }
    out->steals = atomic_load_explicit(&p->steals, memory_order_relaxed);
    return ZCN_OK;
}

size_t zcn_pool_buffer_size(const ZCN_BufferPool *pool)
{
    return pool == NULL ? 0 : pool->buffer_size;
}

size_t zcn_pool_count(const ZCN_BufferPool *pool)
{
    return pool == NULL ? 0 : pool->count;
}

void *zcn_pool_base(const ZCN_BufferPool *pool)
{
    return pool == NULL ? NULL : pool->base;
}

int64_t zcn_pool_index_of(const ZCN_BufferPool *pool, const void *buffer)
{
    return pool == NULL ? -1 : pool_index(pool, buffer);
}

/* ------------------------------------------------------------------ */
/* io_uring fixed buffers                                              */
/* ------------------------------------------------------------------ */

static ZCN_Error register_error(const ZCN_BufferPool *pool, int neg_errno)
{
    int e = -neg_errno;
    size_t needed = pool->slab_bytes;
    struct rlimit rl;
    if (e == ENOMEM && getrlimit(RLIMIT_MEMLOCK, &rl) == 0) {
        if (rl.rlim_cur == RLIM_INFINITY)
            return zcn_fail(ZCN_ERR_MEMLOCK,
                            "io_uring_register_buffers: ENOMEM pinning %zu bytes "
                            "(RLIMIT_MEMLOCK is unlimited: the system is out of memory)",
                            needed);
        return zcn_fail(ZCN_ERR_MEMLOCK,
                        "io_uring_register_buffers: ENOMEM: RLIMIT_MEMLOCK is %llu bytes, "
                        "%zu bytes needed (%zu x %zu) plus what is already locked; raise it "
                        "(ulimit -l) or use a smaller pool",
                        (unsigned long long)rl.rlim_cur, needed, pool->count, pool->buffer_size);
    }
    if (e == EBUSY)
        return zcn_fail((ZCN_Error)e, "io_uring_register_buffers: EBUSY: the ring already "
                                      "has fixed buffers registered");
    if (e == EEXIST)
        return zcn_fail((ZCN_Error)e, "io_uring_register_buffers: EEXIST: called from a thread "
                                      "that is not the owner of a SINGLE_ISSUER ring");
    return zcn_fail((ZCN_Error)e, "io_uring_register_buffers: %s", strerror(e));
}

static ZCN_Error register_check(const ZCN_BufferPool *pool, const ZCN_Ring *ring)
{
    if (pool == NULL || ring == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "pool_register: %s is NULL",
                        pool == NULL ? "pool" : "ring");
    if (pool->count > POOL_REGISTER_COUNT_MAX)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                        "pool_register: %zu buffers, the kernel registers at most %u",
                        pool->count, POOL_REGISTER_COUNT_MAX);
    if (pool->buffer_size > POOL_REGISTER_BUFFER_BYTES_MAX)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                        "pool_register: buffer_size %zu is over the kernel's 1 GiB per buffer",
                        pool->buffer_size);
    /* No "already registered" check here: the pool cannot tell whether a
     * remembered ring still exists (destroying a ring drops its fixed
     * buffers without telling the pool), and the kernel answers EBUSY for
     * a ring that already has fixed buffers anyway. */
    return ZCN_OK;
}

ZCN_Error zcn_pool_register(ZCN_BufferPool *pool, ZCN_Ring *ring)
{
    ZCN_Error e = register_check(pool, ring);
    if (e != ZCN_OK)
        return e;
    struct io_uring *uring = zcn_ring_io_uring(ring);
    if (uring == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "pool_register: ring has no io_uring");
    /* Not the hot path: a temporary iovec array (at most 256 KiB) is fine. */
    struct iovec *iovs = calloc(pool->count, sizeof *iovs);
    if (iovs == NULL)
        return zcn_fail((ZCN_Error)ENOMEM, "pool_register: out of memory for %zu iovecs",
                        pool->count);
    for (size_t i = 0; i < pool->count; i++) {
        iovs[i].iov_base = pool->base + i * pool->buffer_size;
        iovs[i].iov_len = pool->buffer_size;
    }
    int rc = io_uring_register_buffers(uring, iovs, (unsigned)pool->count);
    free(iovs);
    if (rc < 0)
        return register_error(pool, rc);
    pool->registered_ring = ring;
    return ZCN_OK;
}

ZCN_Error zcn_pool_unregister(ZCN_BufferPool *pool, ZCN_Ring *ring)
{
    if (pool == NULL || ring == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "pool_unregister: %s is NULL",
                        pool == NULL ? "pool" : "ring");
    if (pool->registered_ring != ring)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                        "pool_unregister: the pool is not registered with this ring");
    struct io_uring *uring = zcn_ring_io_uring(ring);
    if (uring == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "pool_unregister: ring has no io_uring");
    int rc = io_uring_unregister_buffers(uring);
    if (rc < 0)
        return zcn_fail((ZCN_Error)-rc, "io_uring_unregister_buffers: %s", strerror(-rc));
    pool->registered_ring = NULL;
    return ZCN_OK;
}
