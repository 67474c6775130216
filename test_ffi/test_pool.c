/* BufferPool, single-threaded: lifecycle, acquire/release, exhaustion,
 * double free, foreign pointers, stats, alignment and rounding, bad sizes,
 * create_in, and io_uring fixed-buffer registration (including a provoked
 * RLIMIT_MEMLOCK failure). The registration part exits 77 (skip) only when
 * io_uring itself is unavailable. */
#include "t_helpers.h"

#include <errno.h>
#include <linux/capability.h>
#include <liburing.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static ZCN_BufferPool *new_pool(size_t buffer_size, size_t count)
{
    ZCN_Error err = ZCN_ERR_LAST_;
    ZCN_BufferPool *pool = zcn_pool_create(buffer_size, count, &err);
    T_CHECK_ERR(err, ZCN_OK);
    T_CHECK(pool != NULL);
    return pool;
}

static ZCN_PoolStats stats_of(const ZCN_BufferPool *pool)
{
    ZCN_PoolStats s;
    memset(&s, 0xab, sizeof s);
    T_CHECK_ERR(zcn_pool_stats(pool, &s), ZCN_OK);
    T_CHECK(s.total == s.in_use + s.free);
    return s;
}

static void test_init_deinit(void)
{
    ZCN_BufferPool *pool = new_pool(4096, 16);
    T_CHECK(zcn_pool_buffer_size(pool) == 4096);
    T_CHECK(zcn_pool_count(pool) == 16);
    T_CHECK(zcn_pool_base(pool) != NULL);
    ZCN_PoolStats s = stats_of(pool);
    T_CHECK(s.total == 16);
    T_CHECK(s.in_use == 0);
    T_CHECK(s.free == 16);
    T_CHECK(s.allocated == 0);
    T_CHECK(s.freed == 0);
    T_CHECK(s.failed == 0);
    T_CHECK(s.buffer_size == 4096);
    zcn_pool_destroy(pool);
    zcn_pool_destroy(NULL); /* a no-op */
}

static void test_acquire_release(void)
{
    ZCN_BufferPool *pool = new_pool(4096, 4);
    unsigned char *buf = zcn_pool_acquire(pool);
    T_CHECK(buf != NULL);
    T_CHECK(buf == zcn_pool_base(pool)); /* a fresh pool hands out buffer 0 first */
    T_CHECK(zcn_pool_index_of(pool, buf) == 0);
    memset(buf, 0x5a, 4096); /* the whole buffer is writable */
    T_CHECK(buf[4095] == 0x5a);
    ZCN_PoolStats s = stats_of(pool);
    T_CHECK(s.in_use == 1);
    T_CHECK(s.free == 3);
    T_CHECK(s.allocated == 1);
    T_CHECK_ERR(zcn_pool_release(pool, buf), ZCN_OK);
    s = stats_of(pool);
    T_CHECK(s.in_use == 0);
    T_CHECK(s.freed == 1);
    /* LIFO: the buffer just released is the next one handed out (cache-warm). */
    T_CHECK(zcn_pool_acquire(pool) == buf);
    T_CHECK_ERR(zcn_pool_release(pool, buf), ZCN_OK);
    zcn_pool_destroy(pool);
}

static void test_exhaustion(void)
{
    enum { COUNT = 8 };
    ZCN_BufferPool *pool = new_pool(4096, COUNT);
    void *bufs[COUNT];
    for (int i = 0; i < COUNT; i++) {
        bufs[i] = zcn_pool_acquire(pool);
        T_CHECK(bufs[i] != NULL);
        for (int j = 0; j < i; j++)
            T_CHECK(bufs[j] != bufs[i]);
    }
    T_CHECK(zcn_pool_acquire(pool) == NULL);
    T_CHECK(zcn_pool_acquire(pool) == NULL);
    ZCN_PoolStats s = stats_of(pool);
    T_CHECK(s.in_use == COUNT);
    T_CHECK(s.free == 0);
    T_CHECK(s.allocated == COUNT);
    T_CHECK(s.failed == 2);
    /* One back, one out again. */
    T_CHECK_ERR(zcn_pool_release(pool, bufs[3]), ZCN_OK);
    T_CHECK(zcn_pool_acquire(pool) == bufs[3]);
    for (int i = 0; i < COUNT; i++)
        T_CHECK_ERR(zcn_pool_release(pool, bufs[i]), ZCN_OK);
    s = stats_of(pool);
    T_CHECK(s.in_use == 0);
    T_CHECK(s.allocated == COUNT + 1);
    T_CHECK(s.freed == COUNT + 1);
    T_CHECK(s.failed == 2);
    zcn_pool_destroy(pool);
}

static void test_double_free(void)
{
    ZCN_BufferPool *pool = new_pool(4096, 4);
    void *a = zcn_pool_acquire(pool);
    void *b = zcn_pool_acquire(pool);
    T_CHECK_ERR(zcn_pool_release(pool, a), ZCN_OK);
    ZCN_PoolStats before = stats_of(pool);
    T_CHECK_ERR(zcn_pool_release(pool, a), ZCN_ERR_DOUBLE_FREE);
    T_CHECK(strstr(zcn_error_detail(), "already free") != NULL);
    /* Never acquired at all counts as free too. */
    void *never = (unsigned char *)zcn_pool_base(pool) + 3 * 4096;
    T_CHECK_ERR(zcn_pool_release(pool, never), ZCN_ERR_DOUBLE_FREE);
    ZCN_PoolStats after = stats_of(pool);
    T_CHECK(memcmp(&before, &after, sizeof before) == 0); /* nothing changed */
    /* The free list is intact: exactly 3 buffers come out, none twice. */
    void *x = zcn_pool_acquire(pool), *y = zcn_pool_acquire(pool), *z = zcn_pool_acquire(pool);
    T_CHECK(x != NULL);
    T_CHECK(y != NULL);
    T_CHECK(z != NULL);
    T_CHECK(x != y && y != z && x != z);
    T_CHECK(x != b && y != b && z != b);
    T_CHECK(zcn_pool_acquire(pool) == NULL);
    zcn_pool_destroy(pool);
}

static void test_foreign_pointer(void)
{
    ZCN_BufferPool *pool = new_pool(4096, 4);
    ZCN_BufferPool *other = new_pool(4096, 4);
    unsigned char *buf = zcn_pool_acquire(pool);
    void *theirs = zcn_pool_acquire(other);
    int on_stack = 0;
    ZCN_PoolStats before = stats_of(pool);

    T_CHECK_ERR(zcn_pool_release(pool, &on_stack), ZCN_ERR_FOREIGN_POINTER);
    T_CHECK(strstr(zcn_error_detail(), "not the start of a buffer") != NULL);
    T_CHECK_ERR(zcn_pool_release(pool, buf + 1), ZCN_ERR_FOREIGN_POINTER);
    T_CHECK_ERR(zcn_pool_release(pool, buf + 2048), ZCN_ERR_FOREIGN_POINTER);
    T_CHECK_ERR(zcn_pool_release(pool, buf - 1), ZCN_ERR_FOREIGN_POINTER);
    T_CHECK_ERR(zcn_pool_release(pool, buf + 4 * 4096), ZCN_ERR_FOREIGN_POINTER); /* one past */
    T_CHECK_ERR(zcn_pool_release(pool, theirs), ZCN_ERR_FOREIGN_POINTER);
    T_CHECK_ERR(zcn_pool_release(pool, NULL), ZCN_ERR_FOREIGN_POINTER);
    T_CHECK(zcn_pool_index_of(pool, buf + 1) == -1);
    T_CHECK(zcn_pool_index_of(pool, theirs) == -1);
    T_CHECK(zcn_pool_index_of(pool, &on_stack) == -1);
    ZCN_PoolStats after = stats_of(pool);
    T_CHECK(memcmp(&before, &after, sizeof before) == 0);

    /* Each pool takes back its own. */
    T_CHECK_ERR(zcn_pool_release(other, theirs), ZCN_OK);
    T_CHECK_ERR(zcn_pool_release(pool, buf), ZCN_OK);
    zcn_pool_destroy(other);
    zcn_pool_destroy(pool);
}

static void test_alignment_and_rounding(void)
{
    static const size_t sizes[] = {1, 100, 4095, 4096, 4097, 8192, 12288, 65536 + 1};
    static const size_t rounded[] = {4096, 4096, 4096, 4096, 8192, 8192, 12288, 69632};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        ZCN_BufferPool *pool = new_pool(sizes[i], 5);
        T_CHECK(zcn_pool_buffer_size(pool) == rounded[i]);
        T_CHECK(stats_of(pool).buffer_size == rounded[i]);
        void *bufs[5];
        for (int j = 0; j < 5; j++) {
            bufs[j] = zcn_pool_acquire(pool);
            T_CHECK(bufs[j] != NULL);
            T_CHECK((uintptr_t)bufs[j] % ZCN_PAGE_SIZE == 0);
            T_CHECK(zcn_pool_index_of(pool, bufs[j]) == j);
            memset(bufs[j], j, rounded[i]);
        }
        /* Page-aligned interior pointers are foreign too, also for sizes
         * that are not a power of two (12288, 69632). */
        if (rounded[i] > 4096)
            T_CHECK(zcn_pool_index_of(pool, (char *)bufs[1] + 4096) == -1);
        for (int j = 0; j < 5; j++)
            T_CHECK_ERR(zcn_pool_release(pool, bufs[j]), ZCN_OK);
        zcn_pool_destroy(pool);
    }
}

static void expect_create_fails(size_t buffer_size, size_t count, const char *detail_part)
{
    ZCN_Error err = ZCN_OK;
    T_CHECK(zcn_pool_create(buffer_size, count, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);
    if (strstr(zcn_error_detail(), detail_part) == NULL) {
        fprintf(stderr, "detail \"%s\" lacks \"%s\"\n", zcn_error_detail(), detail_part);
        exit(T_EXIT_FAIL);
    }
    T_CHECK(zcn_pool_create(buffer_size, count, NULL) == NULL); /* err may be NULL */
}

static void test_bad_sizes(void)
{
    expect_create_fails(0, 16, "buffer_size is 0");
    expect_create_fails(4096, 0, "count is 0");
    expect_create_fails(4096, (size_t)ZCN_POOL_COUNT_MAX + 1, "ZCN_POOL_COUNT_MAX");
    expect_create_fails(SIZE_MAX, 1, "ZCN_POOL_BYTES_MAX");          /* would wrap on rounding */
    expect_create_fails(SIZE_MAX - 4095, 1, "ZCN_POOL_BYTES_MAX");
    expect_create_fails((size_t)1 << 40 | 1, 1, "ZCN_POOL_BYTES_MAX");
    expect_create_fails((size_t)1 << 30, 1025, "exceed ZCN_POOL_BYTES_MAX");
    expect_create_fails(SIZE_MAX / 2, SIZE_MAX / 2, "ZCN_POOL_COUNT_MAX");
    expect_create_fails((size_t)1 << 39, ZCN_POOL_COUNT_MAX, "exceed ZCN_POOL_BYTES_MAX");
    /* Exactly at the limits is accepted: the mapping is lazy, so 1 TiB of
     * address space costs nothing until touched (may fail with ENOMEM under
     * a strict overcommit policy or an address-space rlimit; that is fine). */
    ZCN_Error err = ZCN_OK;
    ZCN_BufferPool *big = zcn_pool_create((size_t)1 << 28, 4096, &err);
    T_CHECK(big != NULL || err == (ZCN_Error)ENOMEM);
    if (big != NULL) {
        T_CHECK(zcn_pool_count(big) == 4096);
        char *b = zcn_pool_acquire(big);
        b[0] = 1;
        T_CHECK_ERR(zcn_pool_release(big, b), ZCN_OK);
    }
    zcn_pool_destroy(big);
}

static void test_create_in(void)
{
    size_t bytes = 8 * 4096;
    unsigned char *mem = mmap(NULL, bytes + 4096, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    T_CHECK(mem != MAP_FAILED);
    ZCN_Error err = ZCN_OK;

    T_CHECK(zcn_pool_create_in(NULL, bytes, 4096, 8, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(zcn_pool_create_in(mem + 64, bytes, 4096, 8, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(strstr(zcn_error_detail(), "aligned") != NULL);
    T_CHECK(zcn_pool_create_in(mem, bytes - 1, 4096, 8, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(strstr(zcn_error_detail(), "memory_size") != NULL);
    T_CHECK(zcn_pool_create_in(mem, bytes, 4097, 8, &err) == NULL); /* rounds to 8192 each */
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(zcn_pool_create_in(mem, bytes, 0, 8, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);

    /* The pool uses exactly the caller's memory, at the start. */
    ZCN_BufferPool *pool = zcn_pool_create_in(mem, bytes + 4096, 4096, 8, &err);
    T_CHECK_ERR(err, ZCN_OK);
    T_CHECK(zcn_pool_base(pool) == mem);
    unsigned char *buf = zcn_pool_acquire(pool);
    T_CHECK(buf == mem);
    memset(buf, 0x77, 4096);
    T_CHECK_ERR(zcn_pool_release(pool, mem + 8 * 4096), ZCN_ERR_FOREIGN_POINTER);
    T_CHECK_ERR(zcn_pool_release(pool, buf), ZCN_OK);
    zcn_pool_destroy(pool);
    /* destroy left the caller's memory mapped and untouched */
    T_CHECK(mem[0] == 0x77);
    T_CHECK(mem[4095] == 0x77);
    T_CHECK(munmap(mem, bytes + 4096) == 0);
}

static void test_null_arguments(void)
{
    ZCN_PoolStats s;
    T_CHECK(zcn_pool_acquire(NULL) == NULL);
    int x = 0;
    T_CHECK_ERR(zcn_pool_release(NULL, &x), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_pool_stats(NULL, &s), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(zcn_pool_buffer_size(NULL) == 0);
    T_CHECK(zcn_pool_count(NULL) == 0);
    T_CHECK(zcn_pool_base(NULL) == NULL);
    T_CHECK(zcn_pool_index_of(NULL, &x) == -1);
    T_CHECK_ERR(zcn_pool_register(NULL, NULL), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_pool_unregister(NULL, NULL), ZCN_ERR_INVALID_ARGUMENT);
    ZCN_BufferPool *pool = new_pool(4096, 1);
    T_CHECK_ERR(zcn_pool_stats(pool, NULL), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_pool_register(pool, NULL), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_pool_unregister(pool, NULL), ZCN_ERR_INVALID_ARGUMENT);
    zcn_pool_destroy(pool);
}

/* ---- registration: needs a working io_uring ---------------------------- */

static ZCN_Ring *new_ring(void)
{
    ZCN_Error err = ZCN_OK;
    ZCN_Ring *ring = zcn_ring_create(8, 0, &err);
    T_CHECK_ERR(err, ZCN_OK);
    T_CHECK(ring != NULL);
    return ring;
}

/* Reads buffer 2 of the pool back through IORING_OP_READ_FIXED from a pipe:
 * proves the kernel really has the pool's pages as fixed buffer index 2. */
static void check_read_fixed(ZCN_BufferPool *pool, ZCN_Ring *ring)
{
    struct io_uring *uring = zcn_ring_io_uring(ring);
    int fds[2];
    T_CHECK(pipe(fds) == 0);
    T_CHECK(write(fds[1], "fixed", 5) == 5);
    unsigned char *buf = (unsigned char *)zcn_pool_base(pool) + 2 * zcn_pool_buffer_size(pool);
    struct io_uring_sqe *sqe = io_uring_get_sqe(uring);
    T_CHECK(sqe != NULL);
    io_uring_prep_read_fixed(sqe, fds[0], buf, 5, 0, 2);
    T_CHECK(io_uring_submit(uring) == 1);
    struct io_uring_cqe *cqe = NULL;
    T_CHECK(io_uring_wait_cqe(uring, &cqe) == 0);
    T_CHECK(cqe->res == 5);
    io_uring_cqe_seen(uring, cqe);
    T_CHECK(memcmp(buf, "fixed", 5) == 0);
    close(fds[0]);
    close(fds[1]);
}

static void test_register(void)
{
    ZCN_Ring *ring = new_ring();
    ZCN_Ring *ring2 = new_ring();
    ZCN_BufferPool *pool = new_pool(4096, 64);

    T_CHECK_ERR(zcn_pool_unregister(pool, ring), ZCN_ERR_INVALID_ARGUMENT); /* not registered */
    T_CHECK_ERR(zcn_pool_register(pool, ring), ZCN_OK);
    T_CHECK_ERR(zcn_pool_register(pool, ring), (ZCN_Error)EBUSY); /* the kernel says so */
    check_read_fixed(pool, ring);
    /* A pool may be registered with a second ring; it remembers the last. */
    T_CHECK_ERR(zcn_pool_register(pool, ring2), ZCN_OK);
    check_read_fixed(pool, ring2);
    T_CHECK_ERR(zcn_pool_unregister(pool, ring), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(strstr(zcn_error_detail(), "not registered with this ring") != NULL);
    T_CHECK_ERR(zcn_pool_unregister(pool, ring2), ZCN_OK);
    T_CHECK_ERR(zcn_pool_register(pool, ring2), ZCN_OK);
    /* Destroying a ring drops its fixed buffers; the pool can go elsewhere. */
    zcn_ring_destroy(ring);
    ring = new_ring();
    T_CHECK_ERR(zcn_pool_register(pool, ring), ZCN_OK);
    check_read_fixed(pool, ring);
    /* acquire/release are unaffected by registration */
    void *b = zcn_pool_acquire(pool);
    T_CHECK_ERR(zcn_pool_release(pool, b), ZCN_OK);
    T_CHECK_ERR(zcn_pool_unregister(pool, ring), ZCN_OK);
    T_CHECK_ERR(zcn_pool_unregister(pool, ring), ZCN_ERR_INVALID_ARGUMENT);
    zcn_ring_destroy(ring2); /* still holds the pool's buffers: fine */
    ring2 = new_ring();

    /* The ring is free for another pool's buffers now; a ring that already
     * has fixed buffers refuses a second set with EBUSY from the kernel. */
    ZCN_BufferPool *other = new_pool(8192, 4);
    T_CHECK_ERR(zcn_pool_register(other, ring), ZCN_OK);
    T_CHECK_ERR(zcn_pool_register(pool, ring), (ZCN_Error)EBUSY);
    T_CHECK(strstr(zcn_error_detail(), "already has fixed buffers") != NULL);
    T_CHECK_ERR(zcn_pool_unregister(other, ring), ZCN_OK);
    T_CHECK_ERR(zcn_pool_register(pool, ring2), ZCN_OK);
    T_CHECK_ERR(zcn_pool_unregister(pool, ring2), ZCN_OK);
    zcn_pool_destroy(other);

    /* Over the kernel's 16384 fixed buffers: refused before the syscall. */
    ZCN_BufferPool *many = new_pool(4096, 16385);
    T_CHECK_ERR(zcn_pool_register(many, ring), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(strstr(zcn_error_detail(), "16384") != NULL);
    zcn_pool_destroy(many);

    zcn_pool_destroy(pool);
    zcn_ring_destroy(ring2);
    zcn_ring_destroy(ring);
}

/* Drops CAP_IPC_LOCK from this process: with it (root here) the kernel does
 * not account registered buffers against RLIMIT_MEMLOCK at all. */
static int drop_ipc_lock(void)
{
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    if (syscall(SYS_capget, &hdr, data) != 0)
        return -1;
    data[CAP_TO_INDEX(CAP_IPC_LOCK)].effective &= ~CAP_TO_MASK(CAP_IPC_LOCK);
    data[CAP_TO_INDEX(CAP_IPC_LOCK)].permitted &= ~CAP_TO_MASK(CAP_IPC_LOCK);
    return (int)syscall(SYS_capset, &hdr, data);
}

/* Child body: exit 0 = MEMLOCK provoked and reported well, 77 = could not
 * be provoked here (reason printed), 1 = wrong behaviour. */
static void memlock_child(void)
{
    if (drop_ipc_lock() != 0) {
        fprintf(stderr, "SKIP memlock: cannot drop CAP_IPC_LOCK: %s\n", strerror(errno));
        exit(T_EXIT_SKIP);
    }
    struct rlimit rl = {64 * 1024, 64 * 1024};
    if (setrlimit(RLIMIT_MEMLOCK, &rl) != 0) {
        fprintf(stderr, "SKIP memlock: setrlimit failed: %s\n", strerror(errno));
        exit(T_EXIT_SKIP);
    }
    ZCN_Ring *ring = new_ring(); /* after the drop: the ring accounts to this user */
    ZCN_BufferPool *pool = new_pool(4096, 256); /* 1 MiB > 64 KiB */
    ZCN_Error err = zcn_pool_register(pool, ring);
    if (err == ZCN_OK) {
        fprintf(stderr, "SKIP memlock: registering 1 MiB under a 64 KiB RLIMIT_MEMLOCK "
                        "succeeded; this kernel does not account it\n");
        exit(T_EXIT_SKIP);
    }
    T_CHECK_ERR(err, ZCN_ERR_MEMLOCK);
    const char *detail = zcn_error_detail();
    printf("memlock detail: %s\n", detail);
    T_CHECK(strstr(detail, "RLIMIT_MEMLOCK is 65536 bytes") != NULL);
    T_CHECK(strstr(detail, "1048576 bytes needed") != NULL);
    /* A failed registration leaves the pool unregistered and usable. */
    T_CHECK_ERR(zcn_pool_unregister(pool, ring), ZCN_ERR_INVALID_ARGUMENT);
    ZCN_BufferPool *small = new_pool(4096, 2); /* 8 KiB fits */
    T_CHECK_ERR(zcn_pool_register(small, ring), ZCN_OK);
    T_CHECK_ERR(zcn_pool_unregister(small, ring), ZCN_OK);
    zcn_pool_destroy(small);
    zcn_pool_destroy(pool);
    zcn_ring_destroy(ring);
    exit(T_EXIT_PASS);
}

/* Returns 1 if the memlock part ran, 0 if it had to be skipped. */
static int test_register_memlock(void)
{
    fflush(NULL);
    pid_t pid = fork();
    T_CHECK(pid >= 0);
    if (pid == 0)
        memlock_child();
    int status = 0;
    T_CHECK(waitpid(pid, &status, 0) == pid);
    T_CHECK(WIFEXITED(status));
    T_CHECK(WEXITSTATUS(status) == T_EXIT_PASS || WEXITSTATUS(status) == T_EXIT_SKIP);
    return WEXITSTATUS(status) == T_EXIT_PASS;
}

int main(void)
{
    test_init_deinit();
    test_acquire_release();
    test_exhaustion();
    test_double_free();
    test_foreign_pointer();
    test_alignment_and_rounding();
    test_bad_sizes();
    test_create_in();
    test_null_arguments();
    printf("pool: core tests passed\n");

    t_require_io_uring(); /* exits 77 with the reason if io_uring is unavailable */
    test_register();
    printf("pool: register tests passed\n");
    if (!test_register_memlock()) {
        fprintf(stderr, "SKIP: the RLIMIT_MEMLOCK part could not run (reason above)\n");
        return T_EXIT_SKIP;
    }
    printf("pool: memlock test passed\n");
    return T_EXIT_PASS;
}
