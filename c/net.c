/* Plumbing the TCP server (server.c) and the UDP sockets (udp.c) share:
 * the clock, SQEs, the wait of a loop turn, CQ sizing, address literals
 * and the wake-up eventfd and pipe. */
#include "uring.h"

#include <liburing.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

uint64_t zcn_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Not thread-local: a TLS read in the shared library would be a call into
 * __tls_get_addr on every SQE. Written by tests only, before the loop runs. */
static uint32_t sqe_failures_left;

void zcn_test_fail_sqes(uint32_t count)
{
    sqe_failures_left = count;
}

struct io_uring_sqe *zcn_get_sqe(struct io_uring *ring)
{
    if (ZCN_UNLIKELY(sqe_failures_left > 0)) {
        sqe_failures_left--;
        return NULL;
    }
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (sqe != NULL)
        return sqe;
    zcn_uring_submit(ring);
    return io_uring_get_sqe(ring);
}

int zcn_wait(struct io_uring *ring, int timeout_ms)
{
    if (io_uring_cq_ready(ring) > 0 || timeout_ms == 0) {
        int ret = zcn_uring_submit_and_get_events(ring);
        return ret < 0 ? ret : 0;
    }
    if (timeout_ms < 0) {
        int ret = zcn_uring_submit_and_wait(ring, 1);
        return ret < 0 ? ret : 0;
    }
    int ret = zcn_uring_submit_and_wait_ms(ring, timeout_ms);
    return ret < 0 ? ret : 0;
}

uint32_t zcn_cq_entries(uint64_t cq_want, uint32_t sq_entries)
{
    uint32_t cq_entries = cq_want > 65536 ? 65536 : zcn_pow2_ceil((uint32_t)cq_want);
    if (cq_entries < sq_entries * 2)
        cq_entries = sq_entries * 2;
    return cq_entries;
}

ZCN_Error zcn_parse_address(const char *address, uint16_t port, struct sockaddr_storage *ss,
                            socklen_t *len, const char *field)
{
    memset(ss, 0, sizeof *ss);
    if (address == NULL)
        address = "0.0.0.0";
    struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, address, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons(port);
        *len = sizeof *in4;
        return ZCN_OK;
    }
    if (inet_pton(AF_INET6, address, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(port);
        *len = sizeof *in6;
        return ZCN_OK;
    }
    return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                    "%s \"%.64s\" is not an IPv4 or IPv6 literal (resolve names first)", field,
                    address);
}

void zcn_eventfd_wake(int fd)
{
    uint64_t one = 1;
    ssize_t n = write(fd, &one, sizeof one);
    (void)n; /* EAGAIN means a wake-up is already pending */
}

void zcn_eventfd_drain(int fd)
{
    uint64_t value;
    while (read(fd, &value, sizeof value) > 0) {
    }
}

/* Reads the pipe empty; whether there was anything. A poll completion
 * whose bytes a consume took already finds none: no second EINTR. */
static bool drain_pipe(int fd)
{
    char sink[64];
    bool any = false;
    while (read(fd, sink, sizeof sink) > 0)
        any = true;
    return any;
}

void zcn_wakeup_init(struct zcn_wakeup_pipe *p)
{
    p->read_fd = p->write_fd = -1;
    p->armed = p->fired = false;
}

ZCN_Error zcn_wakeup_open(struct zcn_wakeup_pipe *p, int *fd_out)
{
    if (p->write_fd < 0) {
        int fds[2];
        if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0)
            return zcn_fail((ZCN_Error)errno, "pipe2: %s", strerror(errno));
        p->read_fd = fds[0];
        p->write_fd = fds[1];
    }
    *fd_out = p->write_fd;
    return ZCN_OK;
}

void zcn_wakeup_arm(struct zcn_wakeup_pipe *p, struct io_uring *ring, uint64_t ud)
{
    if (p->read_fd < 0 || p->armed)
        return;
    struct io_uring_sqe *sqe = zcn_get_sqe(ring);
    if (sqe == NULL)
        return; /* tried again before the next wait */
    io_uring_prep_poll_multishot(sqe, p->read_fd, POLLIN);
    io_uring_sqe_set_data64(sqe, ud);
    p->armed = true;
}

void zcn_wakeup_on_cqe(struct zcn_wakeup_pipe *p, const struct io_uring_cqe *cqe)
{
    if (!(cqe->flags & IORING_CQE_F_MORE))
        p->armed = false;
    if (cqe->res != -ECANCELED && drain_pipe(p->read_fd))
        p->fired = true;
}

void zcn_wakeup_consume(struct zcn_wakeup_pipe *p)
{
    if (p->read_fd >= 0)
        drain_pipe(p->read_fd);
    p->fired = false;
}

bool zcn_wakeup_take(struct zcn_wakeup_pipe *p)
{
    bool fired = p->fired;
    p->fired = false;
    return fired;
}

void zcn_wakeup_close(struct zcn_wakeup_pipe *p)
{
    if (p->read_fd >= 0)
        close(p->read_fd);
    if (p->write_fd >= 0)
        close(p->write_fd);
    zcn_wakeup_init(p);
}

bool zcn_take_stop(_Atomic int *stop_requested)
{
    /* A load first: the exchange is a locked instruction, twice per turn,
     * and almost every turn finds no stop. One set after the load is taken
     * at the next check. */
    if (atomic_load_explicit(stop_requested, memory_order_relaxed) == 0)
        return false;
    return atomic_exchange_explicit(stop_requested, 0, memory_order_acq_rel) != 0;
}

ZCN_Error zcn_run_until(void *loop, zcn_turn_fn turn, _Atomic int *stop_requested,
                        int timeout_ms, uint32_t *handled_out, bool *stopped)
{
    uint64_t deadline = timeout_ms < 0 ? UINT64_MAX : zcn_now_ms() + (uint64_t)timeout_ms;
    uint32_t handled = 0;
    ZCN_Error err = ZCN_OK;
    *stopped = zcn_take_stop(stop_requested);
    for (;;) {
        int left;
        if (*stopped || timeout_ms == 0) {
            left = 0;
        } else if (timeout_ms < 0) {
            left = -1;
        } else {
            uint64_t now = zcn_now_ms();
            left = now >= deadline ? 0 : (int)(deadline - now);
        }
        err = turn(loop, left, &handled);
        if (!*stopped)
            *stopped = zcn_take_stop(stop_requested);
        if (err != ZCN_OK || handled > 0 || left == 0 || *stopped)
            break;
    }
    if (handled_out != NULL)
        *handled_out = handled;
    return err;
}

/* ------------------------------------------------------------------ */
/* the live-handle registry (internal.h)                               */
/* ------------------------------------------------------------------ */

static struct {
    _Atomic(const void *) handle;
    _Atomic uint32_t users;     /* stop calls inside, pinning the handle */
} live[ZCN_LIVE_MAX];
static _Atomic int live_overflowed;

int zcn_live_add(void *h)
{
    for (int i = 0; i < ZCN_LIVE_MAX; i++) {
        const void *expected = NULL;
        if (atomic_compare_exchange_strong(&live[i].handle, &expected, h))
            return i;
    }
    atomic_store(&live_overflowed, 1);
    return -1;
}

void zcn_live_remove(int slot)
{
    if (slot < 0 || slot >= ZCN_LIVE_MAX)
        return;
    atomic_store(&live[slot].handle, NULL);
    /* A stop that pinned the handle before it went finishes its eventfd
     * write and leaves; a signal handler interrupting this thread runs to
     * the end before we continue, so this never waits on ourselves. */
    while (atomic_load(&live[slot].users) != 0)
        sched_yield();
}

int zcn_live_acquire(const void *h)
{
    if (h == NULL)
        return -1;
    for (int i = 0; i < ZCN_LIVE_MAX; i++) {
        if (atomic_load_explicit(&live[i].handle, memory_order_acquire) != h)
            continue;
        atomic_fetch_add(&live[i].users, 1);
        /* Pinned first, then checked again: a remove that cleared the
         * slot in between either sees our pin and waits, or we see it
         * gone and let go. */
        if (atomic_load(&live[i].handle) == h)
            return i;
        atomic_fetch_sub(&live[i].users, 1);
        break;
    }
    return atomic_load(&live_overflowed) ? -2 : -1;
}

void zcn_live_release(int slot)
{
    if (slot >= 0 && slot < ZCN_LIVE_MAX)
        atomic_fetch_sub(&live[slot].users, 1);
}
