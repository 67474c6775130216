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
 */
#include "internal.h"

#include <errno.h>
#include <liburing.h>
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

    /* The one contended word, alone on its line; `failed` is written only
     * when the pool is empty, so it gets a line of its own as well. */
    _Alignas(ZCN_CACHE_LINE) _Atomic uint64_t head;
    _Alignas(ZCN_CACHE_LINE) _Atomic uint64_t failed;
};

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

/* Builds the pool around an existing slab. Metadata is mmap'ed rather than
 * malloc'ed: at ZCN_POOL_COUNT_MAX it is 1 GiB, and untouched pages of a
 * mapping cost nothing. */
static ZCN_BufferPool *pool_new(unsigned char *base, size_t slab_bytes, size_t rounded,
                                size_t count, bool owns_slab, ZCN_Error *err)
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
    zcn_clear_detail();
    zcn_set_err(err, ZCN_OK);
    return pool;
}

ZCN_BufferPool *zcn_pool_create(size_t buffer_size, size_t count, ZCN_Error *err)
{
    size_t rounded = 0, slab_bytes = 0;
    ZCN_Error e = pool_sizes(buffer_size, count, &rounded, &slab_bytes);
    if (e != ZCN_OK) {
        zcn_set_err(err, e);
        return NULL;
    }
    unsigned char *base = map_anonymous(slab_bytes);
    if (base == NULL) {
        zcn_set_err(err, zcn_fail((ZCN_Error)ENOMEM, "pool: mmap of a %zu-byte slab failed: %s",
                                  slab_bytes, strerror(errno)));
        return NULL;
    }
    ZCN_BufferPool *pool = pool_new(base, slab_bytes, rounded, count, true, err);
    if (pool == NULL)
        munmap(base, slab_bytes);
    return pool;
}

ZCN_BufferPool *zcn_pool_create_in(void *memory, size_t memory_size, size_t buffer_size,
                                   size_t count, ZCN_Error *err)
{
    size_t rounded = 0, slab_bytes = 0;
    ZCN_Error e = pool_sizes(buffer_size, count, &rounded, &slab_bytes);
    if (e == ZCN_OK && memory == NULL)
        e = zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "pool: memory is NULL");
    if (e == ZCN_OK && ((uintptr_t)memory % ZCN_PAGE_SIZE) != 0)
        e = zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "pool: memory %p is not %u-byte aligned", memory,
                     ZCN_PAGE_SIZE);
    if (e == ZCN_OK && memory_size < slab_bytes)
        e = zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                     "pool: memory_size %zu is less than the %zu bytes needed (%zu x %zu)",
                     memory_size, slab_bytes, count, rounded);
    if (e != ZCN_OK) {
        zcn_set_err(err, e);
        return NULL;
    }
    return pool_new(memory, slab_bytes, rounded, count, false, err);
}

void zcn_pool_destroy(ZCN_BufferPool *pool)
{
    if (pool == NULL)
        return;
    /* A registration is not undone here: the ring may already be gone, and
     * the kernel holds its own references to registered pages anyway. */
    munmap(pool->slots, pool->slots_bytes);
    if (pool->owns_slab)
        munmap(pool->base, pool->slab_bytes);
    free(pool);
}

/* ------------------------------------------------------------------ */
/* Acquire / release: the hot path                                     */
/* ------------------------------------------------------------------ */

/* Pops one index, or INDEX_NONE. The acquire ordering on success pairs with
 * the release CAS in push_index, so the previous owner's writes to the
 * buffer and to slot.next are visible here. */
static inline uint32_t pop_index(ZCN_BufferPool *pool)
{
    uint64_t old = atomic_load_explicit(&pool->head, memory_order_acquire);
    for (;;) {
        uint32_t index = head_index(old);
        if (index == INDEX_NONE)
            return INDEX_NONE;
        uint32_t next = atomic_load_explicit(&pool->slots[index].next, memory_order_relaxed);
        uint64_t new_head = head_pack(next, head_tag(old) + 1);
        if (atomic_compare_exchange_weak_explicit(&pool->head, &old, new_head,
                                                  memory_order_acquire, memory_order_acquire))
            return index;
    }
}

static inline void push_index(ZCN_BufferPool *pool, uint32_t index)
{
    uint64_t old = atomic_load_explicit(&pool->head, memory_order_relaxed);
    for (;;) {
        atomic_store_explicit(&pool->slots[index].next, head_index(old), memory_order_relaxed);
        uint64_t new_head = head_pack(index, head_tag(old) + 1);
        if (atomic_compare_exchange_weak_explicit(&pool->head, &old, new_head,
                                                  memory_order_release, memory_order_relaxed))
            return;
    }
}

void *zcn_pool_acquire(ZCN_BufferPool *pool)
{
    if (ZCN_UNLIKELY(pool == NULL))
        return NULL;
    uint32_t index = pop_index(pool);
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
    push_index(pool, (uint32_t)index);
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
