/* Ring: creation and the flags we got, NOPs one by one and in batches, bad
 * arguments, direct liburing access and opcode queries. */
#include "t_helpers.h"

#include <errno.h>
#include <liburing.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef IORING_SETUP_SUBMIT_ALL
#define IORING_SETUP_SUBMIT_ALL (1U << 7)
#endif
#ifndef IORING_SETUP_COOP_TASKRUN
#define IORING_SETUP_COOP_TASKRUN (1U << 8)
#endif
#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif

static void test_init(void)
{
    ZCN_Error err = ZCN_ERR_LAST_;
    ZCN_Ring *ring = zcn_ring_create(100, 0, &err);
    T_CHECK_ERR(err, ZCN_OK);
    T_CHECK(ring != NULL);
    /* Rounded up to a power of two; the CQ is twice the SQ. */
    T_CHECK(zcn_ring_sq_entries(ring) == 128);
    T_CHECK(zcn_ring_cq_entries(ring) == 256);
    uint32_t setup = zcn_ring_setup_flags(ring);
    T_CHECK(setup & IORING_SETUP_CQSIZE);
    T_CHECK(setup & IORING_SETUP_CLAMP);
    /* Every kernel with io_uring maps SQ and CQ in one region since 5.4;
     * NODROP (5.5) is what keeps the CQ from losing completions. */
    T_CHECK(zcn_ring_features(ring) & IORING_FEAT_NODROP);
    /* DEFER_TASKRUN is only valid together with SINGLE_ISSUER. */
    if (setup & IORING_SETUP_DEFER_TASKRUN)
        T_CHECK(setup & IORING_SETUP_SINGLE_ISSUER);
    /* On a kernel that has SINGLE_ISSUER, the tuned set must be taken. */
    if (zcn_ring_opcode_supported(ring, IORING_OP_SEND_ZC)) /* 6.0, like SINGLE_ISSUER */
        T_CHECK(setup & IORING_SETUP_SINGLE_ISSUER);
    zcn_ring_destroy(ring);
}

static void test_no_tuning(void)
{
    ZCN_Error err = ZCN_ERR_LAST_;
    ZCN_Ring *ring = zcn_ring_create(8, ZCN_RING_NO_TUNING, &err);
    T_CHECK_ERR(err, ZCN_OK);
    uint32_t setup = zcn_ring_setup_flags(ring);
    T_CHECK(!(setup & (IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
                       IORING_SETUP_COOP_TASKRUN)));
    T_CHECK_ERR(zcn_ring_nop(ring, 10, 4), ZCN_OK);
    zcn_ring_destroy(ring);
}

/* Internal (c/internal.h, not exported from the shared library) but in the
 * static library these tests link; the server sizes its CQ with it. */
ZCN_Ring *zcn_ring_create_ex(uint32_t entries, uint32_t cq_entries, uint32_t flags,
                             ZCN_Error *err);

static void test_cq_size_ex(void)
{
    ZCN_Error err = ZCN_ERR_LAST_;
    ZCN_Ring *ring = zcn_ring_create_ex(8, 1000, 0, &err);
    T_CHECK_ERR(err, ZCN_OK);
    T_CHECK(zcn_ring_sq_entries(ring) == 8);
    T_CHECK(zcn_ring_cq_entries(ring) == 1024); /* rounded up by the kernel */
    zcn_ring_destroy(ring);
    ring = zcn_ring_create_ex(8, 0, 0, &err); /* 0 = twice the SQ */
    T_CHECK_ERR(err, ZCN_OK);
    T_CHECK(zcn_ring_cq_entries(ring) == 16);
    zcn_ring_destroy(ring);
    T_CHECK(zcn_ring_create_ex(16, 8, 0, &err) == NULL); /* CQ below SQ */
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(zcn_ring_create_ex(16, 65537, 0, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);

    /* The largest ring. */
    ring = zcn_ring_create(32768, 0, &err);
    if (ring == NULL && err == ZCN_ERR_MEMLOCK)
        return; /* an old kernel charging rings to a small RLIMIT_MEMLOCK */
    T_CHECK_ERR(err, ZCN_OK);
    T_CHECK(zcn_ring_sq_entries(ring) == 32768);
    T_CHECK(zcn_ring_cq_entries(ring) == 65536);
    zcn_ring_destroy(ring);
}

static void test_nop_single(void)
{
    ZCN_Ring *ring = zcn_ring_create(8, 0, NULL);
    T_CHECK(ring != NULL);
    T_CHECK_ERR(zcn_ring_nop(ring, 1, 1), ZCN_OK);
    T_CHECK_ERR(zcn_ring_nop(ring, 0, 1), ZCN_OK); /* count 0 is a no-op */
    T_CHECK_ERR(zcn_ring_nop(ring, 100, 1), ZCN_OK);
    /* Nothing is left behind in either queue. */
    struct io_uring *uring = zcn_ring_io_uring(ring);
    T_CHECK(io_uring_cq_ready(uring) == 0);
    T_CHECK(io_uring_sq_ready(uring) == 0);
    zcn_ring_destroy(ring);
}

static void test_nop_batch(void)
{
    ZCN_Ring *ring = zcn_ring_create(64, 0, NULL);
    T_CHECK(ring != NULL);
    T_CHECK_ERR(zcn_ring_nop(ring, 10000, 32), ZCN_OK);
    T_CHECK_ERR(zcn_ring_nop(ring, 10001, 64), ZCN_OK); /* a short last batch */
    T_CHECK_ERR(zcn_ring_nop(ring, 5, 64), ZCN_OK);     /* count < batch */
    struct io_uring *uring = zcn_ring_io_uring(ring);
    T_CHECK(io_uring_cq_ready(uring) == 0);
    zcn_ring_destroy(ring);
}

static void test_bad_args(void)
{
    ZCN_Error err = ZCN_OK;
    T_CHECK(zcn_ring_create(0, 0, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);
    err = ZCN_OK;
    T_CHECK(zcn_ring_create(32769, 0, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);
    err = ZCN_OK;
    T_CHECK(zcn_ring_create(UINT32_MAX, 0, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);
    err = ZCN_OK;
    T_CHECK(zcn_ring_create(8, 1u << 7, &err) == NULL); /* unknown flag */
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(strstr(zcn_error_detail(), "flags") != NULL);
    T_CHECK(zcn_ring_create(0, 0, NULL) == NULL); /* err may be NULL */

    /* NULL handles never crash. */
    zcn_ring_destroy(NULL);
    T_CHECK(zcn_ring_setup_flags(NULL) == 0);
    T_CHECK(zcn_ring_features(NULL) == 0);
    T_CHECK(zcn_ring_sq_entries(NULL) == 0);
    T_CHECK(zcn_ring_cq_entries(NULL) == 0);
    T_CHECK(zcn_ring_opcode_supported(NULL, IORING_OP_NOP) == 0);
    T_CHECK(zcn_ring_io_uring(NULL) == NULL);
    T_CHECK_ERR(zcn_ring_nop(NULL, 1, 1), ZCN_ERR_INVALID_ARGUMENT);

    ZCN_Ring *ring = zcn_ring_create(16, 0, NULL);
    T_CHECK(ring != NULL);
    T_CHECK_ERR(zcn_ring_nop(ring, 1, 0), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_ring_nop(ring, 1, 17), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_ring_nop(ring, 0, 0), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_ring_nop(ring, 16, 16), ZCN_OK); /* the full SQ is fine */
    zcn_ring_destroy(ring);
}

/* A C user prepares a request with liburing directly and gets its
 * user_data back; zcn_ring_nop still works afterwards. */
static void test_direct_access(void)
{
    ZCN_Ring *ring = zcn_ring_create(8, 0, NULL);
    T_CHECK(ring != NULL);
    struct io_uring *uring = zcn_ring_io_uring(ring);
    T_CHECK(uring != NULL);
    T_CHECK(uring->ring_fd >= 0);

    struct io_uring_sqe *sqe = io_uring_get_sqe(uring);
    T_CHECK(sqe != NULL);
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, 0xdeadbeefcafef00dull);
    T_CHECK(io_uring_submit_and_wait(uring, 1) == 1);
    struct io_uring_cqe *cqe = NULL;
    T_CHECK(io_uring_peek_cqe(uring, &cqe) == 0);
    T_CHECK(cqe != NULL);
    T_CHECK(cqe->res == 0);
    T_CHECK(io_uring_cqe_get_data64(cqe) == 0xdeadbeefcafef00dull);
    io_uring_cqe_seen(uring, cqe);
    T_CHECK(io_uring_cq_ready(uring) == 0);

    /* SQEs the caller left unsubmitted make zcn_ring_nop refuse rather
     * than submit them as if they were its own. */
    for (int i = 0; i < 8; i++)
        io_uring_prep_nop(io_uring_get_sqe(uring));
    T_CHECK_ERR(zcn_ring_nop(ring, 1, 1), ZCN_ERR_EXHAUSTED);
    T_CHECK(io_uring_submit_and_wait(uring, 8) == 8);
    io_uring_cq_advance(uring, io_uring_cq_ready(uring));

    T_CHECK_ERR(zcn_ring_nop(ring, 3, 2), ZCN_OK);
    zcn_ring_destroy(ring);
}

static void test_opcodes(void)
{
    ZCN_Ring *ring = zcn_ring_create(8, 0, NULL);
    T_CHECK(ring != NULL);
    T_CHECK(zcn_ring_opcode_supported(ring, IORING_OP_NOP) == 1);
    T_CHECK(zcn_ring_opcode_supported(ring, IORING_OP_RECV) == 1);
    T_CHECK(zcn_ring_opcode_supported(ring, IORING_OP_SEND) == 1);
    T_CHECK(zcn_ring_opcode_supported(ring, IORING_OP_ACCEPT) == 1);
    T_CHECK(zcn_ring_opcode_supported(ring, -1) == 0);
    T_CHECK(zcn_ring_opcode_supported(ring, 255) == 0);
    T_CHECK(zcn_ring_opcode_supported(ring, 256) == 0);
    T_CHECK(zcn_ring_opcode_supported(ring, 1 << 20) == 0);
    zcn_ring_destroy(ring);
}

#if defined(__x86_64__)
/* Makes io_uring_setup fail with `errno_value` in this process, the way a
 * container runtime's seccomp profile does. Returns 0 or -1. */
static int block_io_uring_setup(int errno_value)
{
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (unsigned)errno_value),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof filter / sizeof filter[0], filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -1;
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
}

/* In a child (the filter cannot be removed): creation must fail with
 * `expected` and a detail containing `word`. */
static void check_unavailable(int errno_value, ZCN_Error expected, const char *word)
{
    pid_t pid = fork();
    T_CHECK(pid >= 0);
    if (pid == 0) {
        if (block_io_uring_setup(errno_value) != 0)
            _exit(T_EXIT_SKIP);
        ZCN_Error err = ZCN_OK;
        T_CHECK(zcn_ring_create(8, 0, &err) == NULL);
        T_CHECK_ERR(err, expected);
        T_CHECK(strstr(zcn_error_detail(), word) != NULL);
        _exit(T_EXIT_PASS);
    }
    int status = 0;
    T_CHECK(waitpid(pid, &status, 0) == pid);
    T_CHECK(WIFEXITED(status));
    T_CHECK(WEXITSTATUS(status) == T_EXIT_PASS || WEXITSTATUS(status) == T_EXIT_SKIP);
}

static void test_unavailable(void)
{
    check_unavailable(EPERM, ZCN_ERR_URING_BLOCKED, "seccomp");
    check_unavailable(ENOSYS, ZCN_ERR_URING_UNSUPPORTED, "ENOSYS");
    check_unavailable(ENOMEM, ZCN_ERR_MEMLOCK, "RLIMIT_MEMLOCK");
}
#else
static void test_unavailable(void)
{
}
#endif

int main(void)
{
    t_require_io_uring();
    test_init();
    test_no_tuning();
    test_cq_size_ex();
    test_nop_single();
    test_nop_batch();
    test_bad_args();
    test_direct_access();
    test_opcodes();
    test_unavailable();
    return T_EXIT_PASS;
}
