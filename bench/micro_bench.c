/* Micro-benchmark of the two hot primitives, each against its baseline:
 *
 *   pool acquire+release      vs  malloc(4096)+free      (1 and 2 threads)
 *   zcn_ring_nop (batch 1/32) vs  the same loop written with liburing here
 *
 * Each round interleaves short slices of both sides (zcn, baseline,
 * baseline, zcn, ...) so drift on a noisy machine hits both alike; we print
 * the median over rounds with min and max.
 * A benchmark, not a test: it fails only if a call fails.
 *
 * usage: micro_bench [rounds (default 7)] [scale (default 1.0)]
 */
#include "zero_copy_net.h"

#include <liburing.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define ROUNDS_MAX 99
#define BUFFER_BYTES 4096
#define POOL_COUNT 1024
#define POOL_PAIRS 2000000
#define NOP_SINGLE_COUNT 100000
#define NOP_BATCHED_COUNT 1000000
#define NOP_BATCH 32
#define RING_ENTRIES 256
/* Slices per round for single-threaded rows (thread start-up would dominate
 * short slices of the two-thread row, which runs as one slice). */
#define SLICES 20

static double scale = 1.0;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t scaled(uint64_t n)
{
    uint64_t v = (uint64_t)((double)n * scale);
    return v > 0 ? v : 1;
}

/* Keeps the compiler from proving the pointer unused (GCC elides a
 * malloc/free pair otherwise). */
static inline void escape(void *p)
{
    __asm__ volatile("" : : "r"(p) : "memory");
}

static void die(const char *what, ZCN_Error err)
{
    fprintf(stderr, "micro_bench: %s: %s (%s)\n", what, zcn_error_name(err), zcn_error_detail());
    exit(1);
}

/* ---------------------------------------------------------------- pool */

/* One measured side: runs `pairs` operations and returns ns per pair. */
typedef double (*side_fn)(void *ctx, uint64_t pairs);

static double pool_pairs(void *ctx, uint64_t pairs)
{
    ZCN_BufferPool *pool = ctx;
    uint64_t start = now_ns();
    for (uint64_t i = 0; i < pairs; i++) {
        void *p = zcn_pool_acquire(pool);
        escape(p);
        if (zcn_pool_release(pool, p) != ZCN_OK)
            die("zcn_pool_release", ZCN_ERR_INVALID_ARGUMENT);
    }
    return (double)(now_ns() - start) / (double)pairs;
}

static double malloc_pairs(void *ctx, uint64_t pairs)
{
    (void)ctx;
    uint64_t start = now_ns();
    for (uint64_t i = 0; i < pairs; i++) {
        void *p = malloc(BUFFER_BYTES);
        escape(p);
        free(p);
    }
    return (double)(now_ns() - start) / (double)pairs;
}

struct thread_job {
    side_fn fn;
    void *ctx;
    uint64_t pairs;
    int cpu;
    pthread_barrier_t *barrier;
    double ns_per_pair;
};

static void pin_to_cpu(int cpu)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpus > 0 ? cpu % (int)cpus : 0, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static void *thread_main(void *arg)
{
    struct thread_job *job = arg;
    pin_to_cpu(job->cpu);
    pthread_barrier_wait(job->barrier);
    job->ns_per_pair = job->fn(job->ctx, job->pairs);
    return NULL;
}

/* Two threads pinned to CPUs 0 and 1 run `fn` at once on the same ctx (one
 * shared pool: the contended case). Returns the mean of their ns/pair. */
static double two_threads(side_fn fn, void *ctx, uint64_t pairs)
{
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, 2);
    struct thread_job jobs[2];
    pthread_t threads[2];
    for (int i = 0; i < 2; i++) {
        jobs[i] = (struct thread_job){fn, ctx, pairs, i, &barrier, 0.0};
        pthread_create(&threads[i], NULL, thread_main, &jobs[i]);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(threads[i], NULL);
    pthread_barrier_destroy(&barrier);
    return (jobs[0].ns_per_pair + jobs[1].ns_per_pair) / 2.0;
}

static double pool_2t(void *ctx, uint64_t pairs)
{
    return two_threads(pool_pairs, ctx, pairs);
}

static double malloc_2t(void *ctx, uint64_t pairs)
{
    return two_threads(malloc_pairs, ctx, pairs);
}

/* ---------------------------------------------------------------- ring */

/* Both sides drive the same ring (the raw loop through zcn_ring_io_uring),
 * so flags, memory and fd are identical and only the code differs. */
struct nop_ctx {
    ZCN_Ring *ring;
    uint32_t batch;
};

static double zcn_nops(void *ctx, uint64_t count)
{
    struct nop_ctx *c = ctx;
    uint64_t start = now_ns();
    ZCN_Error err = zcn_ring_nop(c->ring, count, c->batch);
    uint64_t elapsed = now_ns() - start;
    if (err != ZCN_OK)
        die("zcn_ring_nop", err);
    return (double)elapsed / (double)count;
}

/* The baseline: what a C programmer writes with liburing for the same job
 * (prepare a batch, one submit_and_wait, reap in bulk, check each res). */
static double raw_nops(void *ctx, uint64_t count)
{
    struct nop_ctx *c = ctx;
    struct io_uring *ring = zcn_ring_io_uring(c->ring);
    struct io_uring_cqe *cqes[NOP_BATCH];
    uint64_t total = count;
    uint64_t start = now_ns();
    while (count > 0) {
        unsigned n = count < c->batch ? (unsigned)count : c->batch;
        for (unsigned i = 0; i < n; i++)
            io_uring_prep_nop(io_uring_get_sqe(ring));
        if (io_uring_submit_and_wait(ring, n) != (int)n)
            die("io_uring_submit_and_wait", ZCN_ERR_INVALID_ARGUMENT);
        unsigned reaped = 0;
        while (reaped < n) {
            unsigned got = io_uring_peek_batch_cqe(ring, cqes, n - reaped);
            for (unsigned i = 0; i < got; i++)
                if (cqes[i]->res != 0)
                    die("NOP res", ZCN_ERR_INVALID_ARGUMENT);
            io_uring_cq_advance(ring, got);
            reaped += got;
        }
        count -= n;
    }
    return (double)(now_ns() - start) / (double)total;
}

/* ---------------------------------------------------------------- report */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

struct stats {
    double median, min, max;
};

static struct stats summarize(double *v, int n)
{
    qsort(v, (size_t)n, sizeof v[0], cmp_double);
    struct stats s = {v[n / 2], v[0], v[n - 1]};
    if (n % 2 == 0)
        s.median = (v[n / 2 - 1] + v[n / 2]) / 2.0;
    return s;
}

/* One round: `slices` alternating slices of each side (zcn, base, base,
 * zcn, ...), so drift within the round lands on both; ns/op of each side is
 * the mean over its slices. */
static void one_round(side_fn zcn, side_fn base, void *ctx, uint64_t ops, int slices,
                      int round, double *zcn_ns, double *base_ns)
{
    uint64_t slice_ops = ops / (uint64_t)slices + 1;
    double a = 0.0, b = 0.0;
    for (int k = 0; k < slices; k++) {
        if ((round + k) % 2 == 0) {
            a += zcn(ctx, slice_ops);
            b += base(ctx, slice_ops);
        } else {
            b += base(ctx, slice_ops);
            a += zcn(ctx, slice_ops);
        }
    }
    *zcn_ns = a / slices;
    *base_ns = b / slices;
}

/* Runs `rounds` rounds after an unmeasured warm-up and prints one table row
 * (goal_ratio 0: no goal). */
static void compare(const char *name, const char *base_name, side_fn zcn, side_fn base,
                    void *ctx, uint64_t ops, int slices, int rounds, const char *goal,
                    double goal_ratio)
{
    double a[ROUNDS_MAX], b[ROUNDS_MAX];
    zcn(ctx, ops / 10 + 1);
    base(ctx, ops / 10 + 1);
    for (int r = 0; r < rounds; r++)
        one_round(zcn, base, ctx, ops, slices, r, &a[r], &b[r]);
    struct stats sa = summarize(a, rounds), sb = summarize(b, rounds);
    double ratio = sa.median / sb.median;
    const char *verdict = goal_ratio <= 0 ? "" : ratio <= goal_ratio ? "met" : "MISSED";
    printf("%-28s %8.1f [%7.1f ..%7.1f]  %-22s %8.1f [%7.1f ..%7.1f]  %5.2fx  %-7s %s\n", name,
           sa.median, sa.min, sa.max, base_name, sb.median, sb.min, sb.max, ratio, goal, verdict);
    fflush(stdout);
}

static void bench_pool(int rounds)
{
    ZCN_Error err = ZCN_OK;
    ZCN_BufferPool *pool = zcn_pool_create(BUFFER_BYTES, POOL_COUNT, &err);
    if (pool == NULL)
        die("zcn_pool_create", err);
    pin_to_cpu(0);
    compare("pool acquire+release, 1 thr", "malloc(4096)+free", pool_pairs, malloc_pairs, pool,
            scaled(POOL_PAIRS), SLICES, rounds, "<=0.50x", 0.50);
    compare("pool acquire+release, 2 thr", "malloc(4096)+free", pool_2t, malloc_2t, pool,
            scaled(POOL_PAIRS), 1, rounds, "<=1.00x", 1.00);
    zcn_pool_destroy(pool);
}

static void bench_ring(int rounds, uint32_t batch, uint64_t count, const char *name)
{
    struct nop_ctx c;
    memset(&c, 0, sizeof c);
    ZCN_Error err = ZCN_OK;
    c.ring = zcn_ring_create(RING_ENTRIES, 0, &err);
    if (c.ring == NULL)
        die("zcn_ring_create", err);
    c.batch = batch;
    compare(name, "raw liburing loop", zcn_nops, raw_nops, &c, scaled(count), SLICES, rounds,
            "<=1.05x", 1.05);
    zcn_ring_destroy(c.ring);
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 7;
    if (rounds < 1 || rounds > ROUNDS_MAX)
        rounds = 7;
    if (argc > 2 && atof(argv[2]) > 0)
        scale = atof(argv[2]);
    ZCN_Error err = ZCN_OK;
    ZCN_Ring *probe = zcn_ring_create(8, 0, &err);
    printf("zcn micro-benchmark (C): ns per operation, median [min .. max] of %d "
           "interleaved rounds, %ld CPUs\n", rounds, sysconf(_SC_NPROCESSORS_ONLN));
    printf("%-28s %-28s  %-22s %-28s  %-6s  %s\n", "operation", "zcn ns", "baseline",
           "baseline ns", "ratio", "goal");
    bench_pool(rounds);
    if (probe == NULL) {
        printf("ring: skipped, io_uring unavailable: %s (%s)\n", zcn_error_name(err),
               zcn_error_detail());
        return 0;
    }
    zcn_ring_destroy(probe);
    bench_ring(rounds, 1, NOP_SINGLE_COUNT, "ring NOP, batch 1");
    bench_ring(rounds, NOP_BATCH, NOP_BATCHED_COUNT, "ring NOP, batch 32 (per NOP)");
    return 0;
}
