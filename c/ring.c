/* Ring: one io_uring instance with setup flags chosen by probing the kernel.
 *
 * liburing here is Debian's 2.3, older than the kernels we run on: flags it
 * does not name are defined below with the kernel's values. */
#include "uring.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef IORING_SETUP_SUBMIT_ALL
#define IORING_SETUP_SUBMIT_ALL (1U << 7) /* Linux 5.18 */
#endif
#ifndef IORING_SETUP_COOP_TASKRUN
#define IORING_SETUP_COOP_TASKRUN (1U << 8) /* Linux 5.19 */
#endif
#ifndef IORING_SETUP_TASKRUN_FLAG
#define IORING_SETUP_TASKRUN_FLAG (1U << 9) /* Linux 5.19 */
#endif
#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12) /* Linux 6.0 */
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13) /* Linux 6.1 */
#endif

/* The kernel's limits (IORING_MAX_ENTRIES, IORING_MAX_CQ_ENTRIES). */
#define RING_SQ_ENTRIES_MAX 32768u
#define RING_CQ_ENTRIES_MAX (2u * RING_SQ_ENTRIES_MAX)

/* Completions reaped per io_uring_peek_batch_cqe call (stack array). */
#define REAP_BATCH 256u

/* Marks our own NOPs so a debugger can tell them from user requests. */
#define NOP_USER_DATA 0x7a636e6e6f70ull /* "zcnnop" */

#define KNOWN_FLAGS \
    (ZCN_RING_NO_TUNING | ZCN_RING_SQPOLL | ZCN_RING_START_DISABLED | ZCN_RING_TASKRUN_FLAG)

/* Flags that make the kernel refuse SQPOLL ("IPI related flags don't make
 * sense with SQPOLL"). */
#define TASKRUN_FLAGS \
    (IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG | IORING_SETUP_DEFER_TASKRUN)

struct ZCN_Ring {
    struct io_uring uring; /* first: zcn_ring_io_uring hands it out */
    struct io_uring_probe *probe; /* NULL if the kernel cannot probe */
    uint32_t setup_flags;
    uint32_t features;
    uint32_t sq_entries;
    uint32_t cq_entries;
    ZCN_Backend backend;        /* what it runs on: io_uring or epoll */
    char backend_reason[200];
};

/* Tuning tiers, best first. Each is tried in turn while the kernel answers
 * EINVAL (it does not know a flag), so the newest set the kernel accepts
 * wins: DEFER_TASKRUN (6.1) runs completion work only when we enter the
 * kernel, which is what a single-threaded event loop wants; COOP_TASKRUN
 * (5.19) at least avoids an IPI per completion; SUBMIT_ALL (5.18) keeps a
 * batch going past one failed SQE. */
static const uint32_t tuned_tiers[] = {
    IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL,
    IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG |
        IORING_SETUP_SUBMIT_ALL,
    IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG | IORING_SETUP_SUBMIT_ALL,
    IORING_SETUP_SUBMIT_ALL,
    0,
};
static const uint32_t untuned_tiers[] = {IORING_SETUP_SUBMIT_ALL, 0};

static ZCN_Error check_sizes(uint32_t entries, uint32_t cq_entries)
{
    if (entries == 0 || entries > RING_SQ_ENTRIES_MAX)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                        "ring entries %u out of range 1..%u", entries, RING_SQ_ENTRIES_MAX);
    if (cq_entries < entries || cq_entries > RING_CQ_ENTRIES_MAX)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                        "ring cq_entries %u out of range %u..%u", cq_entries, entries,
                        RING_CQ_ENTRIES_MAX);
    return ZCN_OK;
}

/* One io_uring_queue_init_params attempt; returns 0 or a negative errno. */
static int try_setup(ZCN_Ring *ring, uint32_t entries, uint32_t cq_entries,
                     uint32_t setup_flags)
{
    struct io_uring_params params;
    memset(&params, 0, sizeof params);
    params.flags = setup_flags;
    params.cq_entries = cq_entries;
    int ret = io_uring_queue_init_params(entries, &ring->uring, &params);
    if (ret == 0) {
        ring->setup_flags = params.flags;
        ring->features = params.features;
        ring->sq_entries = params.sq_entries;
        ring->cq_entries = params.cq_entries;
    }
    return ret;
}

/* Steps down the tiers while the kernel says EINVAL; any other error (EPERM,
 * ENOMEM, ENOSYS) will not go away with fewer flags, so it ends the search. */
static int setup_best(ZCN_Ring *ring, uint32_t entries, uint32_t cq_entries, uint32_t flags)
{
    const uint32_t *tiers = tuned_tiers;
    size_t tiers_count = sizeof tuned_tiers / sizeof tuned_tiers[0];
    uint32_t base = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
    uint32_t mask = ~0u;
    if (flags & ZCN_RING_NO_TUNING) {
        tiers = untuned_tiers;
        tiers_count = sizeof untuned_tiers / sizeof untuned_tiers[0];
    }
    if (flags & ZCN_RING_START_DISABLED)
        base |= IORING_SETUP_R_DISABLED;
    if (flags & ZCN_RING_SQPOLL) {
        base |= IORING_SETUP_SQPOLL;
        mask = ~TASKRUN_FLAGS;
    }
    int ret = -EINVAL;
    uint32_t tried = ~0u;
    /* DEFER_TASKRUN with TASKRUN_FLAG (6.1): the kernel raises
     * IORING_SQ_TASKRUN when it has completions to post at our next entry. */
    if ((flags & ZCN_RING_TASKRUN_FLAG) && !(flags & (ZCN_RING_NO_TUNING | ZCN_RING_SQPOLL)))
        ret = try_setup(ring, entries, cq_entries,
                        base | tuned_tiers[0] | IORING_SETUP_TASKRUN_FLAG);
    for (size_t i = 0; i < tiers_count && ret == -EINVAL; i++) {
        uint32_t setup_flags = base | (tiers[i] & mask);
        if (setup_flags == tried)
            continue; /* SQPOLL masked two tiers into the same set */
        tried = setup_flags;
        ret = try_setup(ring, entries, cq_entries, setup_flags);
    }
    return ret;
}

ZCN_Ring *zcn_ring_create_ex(uint32_t entries, uint32_t cq_entries, uint32_t flags,
                             ZCN_Error *err)
{
    if (flags & ~(uint32_t)KNOWN_FLAGS) {
        zcn_set_err(err, zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                                  "unknown ring flags 0x%x", flags & ~(uint32_t)KNOWN_FLAGS));
        return NULL;
    }
    if (cq_entries == 0 && entries <= RING_SQ_ENTRIES_MAX)
        cq_entries = 2 * entries;
    ZCN_Error e = check_sizes(entries, cq_entries);
    if (e != ZCN_OK) {
        zcn_set_err(err, e);
        return NULL;
    }
    ZCN_Ring *ring = calloc(1, sizeof *ring);
    if (ring == NULL) {
        zcn_set_err(err, zcn_fail((ZCN_Error)ENOMEM, "ring: out of memory"));
        return NULL;
    }
    int ret = setup_best(ring, entries, cq_entries, flags);
    if (ret < 0) {
        free(ring);
        zcn_set_err(err, zcn_uring_setup_error(ret));
        return NULL;
    }
    /* A kernel without IORING_REGISTER_PROBE (< 5.6) still gives a usable
     * ring; opcode queries then answer 0. */
    ring->probe = io_uring_get_probe_ring(&ring->uring);
    ring->backend = ZCN_BACKEND_IO_URING;
    zcn_clear_detail();
    zcn_set_err(err, ZCN_OK);
    return ring;
}

ZCN_Ring *zcn_ring_create(uint32_t entries, uint32_t flags, ZCN_Error *err)
{
    /* The Ring is io_uring itself: under ZCN_BACKEND=epoll (as where
     * io_uring is refused) there is none to give. */
    ZCN_Backend forced;
    if (zcn_backend_from_env(&forced, NULL) == ZCN_OK && forced == ZCN_BACKEND_EPOLL) {
        zcn_set_err(err, zcn_fail(ZCN_ERR_URING_UNSUPPORTED,
                                  "ZCN_BACKEND=epoll: io_uring is not used, so there is no "
                                  "ring (a Ring exists on the io_uring backend only)"));
        return NULL;
    }
    return zcn_ring_create_ex(entries, 0, flags, err);
}

ZCN_Error zcn_backend_from_env(ZCN_Backend *out, const char **value_out)
{
    const char *v = getenv("ZCN_BACKEND");
    if (value_out != NULL)
        *value_out = v;
    *out = ZCN_BACKEND_AUTO;
    if (v == NULL || v[0] == '\0' || strcmp(v, "auto") == 0)
        return ZCN_OK;
    if (strcmp(v, "epoll") == 0) {
        *out = ZCN_BACKEND_EPOLL;
        return ZCN_OK;
    }
    if (strcmp(v, "io_uring") == 0 || strcmp(v, "iouring") == 0 || strcmp(v, "uring") == 0) {
        *out = ZCN_BACKEND_IO_URING;
        return ZCN_OK;
    }
    return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                    "ZCN_BACKEND=\"%.40s\" is not one of auto, io_uring, epoll", v);
}

/* Errors after which AUTO goes on with epoll: io_uring is there but
 * refused (a seccomp filter, the sysctl, locked memory) or too old. */
static bool falls_back(ZCN_Error e)
{
    return e == ZCN_ERR_URING_BLOCKED || e == ZCN_ERR_URING_DISABLED ||
           e == ZCN_ERR_URING_UNSUPPORTED || e == ZCN_ERR_MEMLOCK || e == (ZCN_Error)EPERM ||
           e == (ZCN_Error)EACCES || e == (ZCN_Error)ENOSYS;
}

static ZCN_Ring *create_epoll(uint32_t entries, uint32_t cq_entries, const char *why,
                              ZCN_Error *err)
{
    ZCN_Ring *ring = calloc(1, sizeof *ring);
    if (ring == NULL) {
        zcn_set_err(err, zcn_fail((ZCN_Error)ENOMEM, "ring: out of memory"));
        return NULL;
    }
    uint32_t sq = zcn_pow2_ceil(entries);
    uint32_t cq = zcn_pow2_ceil(cq_entries ? cq_entries : 2 * entries);
    ZCN_Error e = zcn_ep_create(&ring->uring, sq, cq);
    if (e != ZCN_OK) {
        free(ring);
        zcn_set_err(err, e);
        return NULL;
    }
    ring->backend = ZCN_BACKEND_EPOLL;
    ring->sq_entries = sq;
    ring->cq_entries = cq;
    snprintf(ring->backend_reason, sizeof ring->backend_reason, "%s", why);
    zcn_clear_detail();
    zcn_set_err(err, ZCN_OK);
    return ring;
}

ZCN_Ring *zcn_ring_create_backend(uint32_t entries, uint32_t cq_entries, uint32_t flags,
                                  ZCN_Backend backend, ZCN_Error *err)
{
    if ((uint32_t)backend > ZCN_BACKEND_EPOLL) {
        zcn_set_err(err, zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                                  "backend %u is not a ZCN_BACKEND_* value", (unsigned)backend));
        return NULL;
    }
    if (cq_entries == 0 && entries <= RING_SQ_ENTRIES_MAX)
        cq_entries = 2 * entries;
    ZCN_Error e = check_sizes(entries, cq_entries);
    if (e != ZCN_OK) {
        zcn_set_err(err, e);
        return NULL;
    }
    bool from_env = false;
    if (backend == ZCN_BACKEND_AUTO) {
        e = zcn_backend_from_env(&backend, NULL);
        if (e != ZCN_OK) {
            zcn_set_err(err, e);
            return NULL;
        }
        from_env = backend != ZCN_BACKEND_AUTO;
    }
    char why[200];
    if (backend == ZCN_BACKEND_EPOLL) {
        snprintf(why, sizeof why, "forced by %s",
                 from_env ? "ZCN_BACKEND=epoll" : "the config's backend field");
        return create_epoll(entries, cq_entries, why, err);
    }
    ZCN_Ring *ring = zcn_ring_create_ex(entries, cq_entries, flags, &e);
    if (ring != NULL) {
        if (backend == ZCN_BACKEND_IO_URING)
            snprintf(ring->backend_reason, sizeof ring->backend_reason, "forced by %s",
                     from_env ? "ZCN_BACKEND=io_uring" : "the config's backend field");
        else
            snprintf(ring->backend_reason, sizeof ring->backend_reason,
                     "io_uring works here (the default)");
        zcn_set_err(err, ZCN_OK);
        return ring;
    }
    if (backend == ZCN_BACKEND_IO_URING || !falls_back(e)) {
        zcn_set_err(err, e);
        return NULL;
    }
    snprintf(why, sizeof why, "io_uring refused: %s", zcn_error_detail());
    return create_epoll(entries, cq_entries, why, err);
}

void zcn_ring_set_reason(ZCN_Ring *ring, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ring->backend_reason, sizeof ring->backend_reason, fmt, ap);
    va_end(ap);
}

ZCN_Backend zcn_ring_backend(const ZCN_Ring *ring, const char **reason)
{
    if (reason != NULL)
        *reason = ring != NULL ? ring->backend_reason : "";
    return ring != NULL ? ring->backend : ZCN_BACKEND_AUTO;
}

ZCN_Error zcn_ring_enable(ZCN_Ring *ring)
{
    if (ring->backend == ZCN_BACKEND_EPOLL || !(ring->setup_flags & IORING_SETUP_R_DISABLED))
        return ZCN_OK;
    /* Raw syscall: Debian's liburing.so.2 (2.3) does not export
     * io_uring_enable_rings although its header declares it. */
    long ret = syscall(__NR_io_uring_register, ring->uring.ring_fd,
                       IORING_REGISTER_ENABLE_RINGS, NULL, 0);
    if (ret < 0)
        return zcn_fail((ZCN_Error)errno, "IORING_REGISTER_ENABLE_RINGS: %s", strerror(errno));
    ring->setup_flags &= ~(uint32_t)IORING_SETUP_R_DISABLED;
    return ZCN_OK;
}

void zcn_ring_destroy(ZCN_Ring *ring)
{
    if (ring == NULL)
        return;
    if (ring->probe != NULL)
        io_uring_free_probe(ring->probe);
    if (ring->backend == ZCN_BACKEND_EPOLL)
        zcn_ep_destroy(&ring->uring);
    else
        io_uring_queue_exit(&ring->uring);
    free(ring);
}

uint32_t zcn_ring_setup_flags(const ZCN_Ring *ring)
{
    return ring != NULL ? ring->setup_flags : 0;
}

uint32_t zcn_ring_features(const ZCN_Ring *ring)
{
    return ring != NULL ? ring->features : 0;
}

uint32_t zcn_ring_sq_entries(const ZCN_Ring *ring)
{
    return ring != NULL ? ring->sq_entries : 0;
}

uint32_t zcn_ring_cq_entries(const ZCN_Ring *ring)
{
    return ring != NULL ? ring->cq_entries : 0;
}

int zcn_ring_opcode_supported(const ZCN_Ring *ring, int opcode)
{
    /* probe->ops holds at most 256 entries (opcodes are a __u8) and
     * last_op bounds what the kernel filled in. */
    if (ring == NULL || ring->probe == NULL || opcode < 0 || opcode > 255)
        return 0;
    if (opcode > ring->probe->last_op || opcode >= ring->probe->ops_len)
        return 0;
    return (ring->probe->ops[opcode].flags & IO_URING_OP_SUPPORTED) != 0;
}

void *zcn_ring_io_uring(ZCN_Ring *ring)
{
    return ring != NULL ? &ring->uring : NULL;
}

/* Waits for and consumes `n` completions, in bulk. Every one must be a
 * successful NOP (res 0); the first failure is reported after all are
 * consumed so the CQ is left clean either way. */
static ZCN_Error reap_nops(struct io_uring *uring, unsigned n)
{
    struct io_uring_cqe *cqes[REAP_BATCH];
    ZCN_Error first = ZCN_OK;
    unsigned reaped = 0;
    while (reaped < n) {
        unsigned want = n - reaped < REAP_BATCH ? n - reaped : REAP_BATCH;
        unsigned got = io_uring_peek_batch_cqe(uring, cqes, want);
        if (got == 0) {
            struct io_uring_cqe *cqe;
            int ret = io_uring_wait_cqe(uring, &cqe);
            if (ret < 0 && ret != -EINTR)
                return zcn_fail((ZCN_Error)-ret, "io_uring_wait_cqe: %s", strerror(-ret));
            continue;
        }
        for (unsigned i = 0; i < got; i++)
            if (cqes[i]->res != 0 && first == ZCN_OK)
                first = zcn_fail((ZCN_Error)(cqes[i]->res < 0 ? -cqes[i]->res : EIO),
                                 "NOP completed with res %d", cqes[i]->res);
        io_uring_cq_advance(uring, got);
        reaped += got;
    }
    return first;
}

/* Prepares `n` NOPs, submits them and waits for all in one io_uring_enter. */
static ZCN_Error nop_batch(struct io_uring *uring, unsigned n)
{
    if (io_uring_sq_space_left(uring) < n)
        return zcn_fail(ZCN_ERR_EXHAUSTED,
                        "zcn_ring_nop: the SQ holds unsubmitted requests of the caller");
    for (unsigned i = 0; i < n; i++) {
        struct io_uring_sqe *sqe = io_uring_get_sqe(uring);
        io_uring_prep_nop(sqe);
        sqe->user_data = NOP_USER_DATA;
    }
    int ret = io_uring_submit_and_wait(uring, n);
    if (ret < 0)
        return zcn_fail((ZCN_Error)-ret, "io_uring_submit_and_wait: %s", strerror(-ret));
    ZCN_Error e = reap_nops(uring, (unsigned)ret);
    if (e == ZCN_OK && (unsigned)ret != n)
        return zcn_fail((ZCN_Error)EAGAIN, "io_uring_submit_and_wait took %d of %u NOPs", ret, n);
    return e;
}

ZCN_Error zcn_ring_nop(ZCN_Ring *ring, uint64_t count, uint32_t batch)
{
    if (ring == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "zcn_ring_nop: ring is NULL");
    if (batch == 0 || batch > ring->sq_entries)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "zcn_ring_nop: batch %u out of range 1..%u",
                        batch, ring->sq_entries);
    while (count > 0) {
        unsigned n = count < batch ? (unsigned)count : batch;
        ZCN_Error e = nop_batch(&ring->uring, n);
        if (e != ZCN_OK)
            return e;
        count -= n;
    }
    return ZCN_OK;
}

const char *zcn_backend_name(ZCN_Backend backend)
{
    switch (backend) {
    case ZCN_BACKEND_AUTO:
        return "auto";
    case ZCN_BACKEND_IO_URING:
        return "io_uring";
    case ZCN_BACKEND_EPOLL:
        return "epoll";
    }
    return "unknown";
}
