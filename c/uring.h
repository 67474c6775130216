/* The ring the loop and the UDP sockets talk to, on either backend.
 *
 * On io_uring it is the kernel's. On the epoll backend (c/epoll.c) it is a
 * ring of our own in user space with the same layout: the loop fills SQEs
 * with liburing's inline prep helpers and reads CQEs with
 * io_uring_for_each_cqe exactly as it does on the kernel's ring, and
 * c/epoll.c performs each request with ordinary system calls as epoll
 * reports the socket ready. Only the calls that enter the kernel differ:
 * the library makes them through the zcn_uring_* functions below, which
 * hand an epoll ring to c/epoll.c. An epoll ring is marked by ring_fd ==
 * ZCN_EP_RING_FD (no real ring has a negative fd), and keeps its engine in
 * sq.ring_ptr, which only io_uring_queue_exit reads (never called on it).
 *
 * Not installed. */
#ifndef ZCN_URING_H
#define ZCN_URING_H

#include "internal.h"

#include <liburing.h>

#define ZCN_EP_RING_FD (-2)

struct zcn_ep;

/* c/epoll.c. Sets up `uring` as a user-space ring of sq_entries and
 * cq_entries (powers of two) with its engine; the detail string says why
 * on failure. */
ZCN_Error zcn_ep_create(struct io_uring *uring, uint32_t sq_entries, uint32_t cq_entries);
void zcn_ep_destroy(struct io_uring *uring);
/* Performs the queued SQEs; returns how many. */
int zcn_ep_submit(struct zcn_ep *ep);
/* Submits, then gathers readiness until `want` completions are ready (0:
 * once, without waiting) or timeout_ns passes (< 0: no limit): 0, -ETIME,
 * -EINTR or another negative errno. */
int zcn_ep_wait(struct zcn_ep *ep, unsigned want, int64_t timeout_ns);
/* Readiness gathered without submitting (io_uring_get_events). */
int zcn_ep_get_events(struct zcn_ep *ep);
int zcn_ep_register_buf_ring(struct zcn_ep *ep, const struct io_uring_buf_reg *reg);
int zcn_ep_unregister_buf_ring(struct zcn_ep *ep, int bgid);
int zcn_ep_sync_cancel(struct zcn_ep *ep, const struct io_uring_sync_cancel_reg *reg);
/* The caller is about to close fd: epoll must not keep it (a file the fd
 * shared with a dup would go on reporting events under this number). */
void zcn_ep_forget_fd(struct zcn_ep *ep, int fd);

static inline struct zcn_ep *zcn_ep_of(const struct io_uring *ring)
{
    return ZCN_UNLIKELY(ring->ring_fd == ZCN_EP_RING_FD) ? (struct zcn_ep *)ring->sq.ring_ptr
                                                         : NULL;
}

static inline int zcn_uring_submit(struct io_uring *ring)
{
    struct zcn_ep *ep = zcn_ep_of(ring);
    return ep != NULL ? zcn_ep_submit(ep) : io_uring_submit(ring);
}

static inline int zcn_uring_submit_and_wait(struct io_uring *ring, unsigned want)
{
    struct zcn_ep *ep = zcn_ep_of(ring);
    return ep != NULL ? zcn_ep_wait(ep, want, -1) : io_uring_submit_and_wait(ring, want);
}

/* Submits and waits for one completion at most timeout_ms (>= 0). */
static inline int zcn_uring_submit_and_wait_ms(struct io_uring *ring, int timeout_ms)
{
    struct zcn_ep *ep = zcn_ep_of(ring);
    if (ep != NULL)
        return zcn_ep_wait(ep, 1, (int64_t)timeout_ms * 1000000);
    struct io_uring_cqe *cqe = NULL;
    struct __kernel_timespec ts = {
        .tv_sec = timeout_ms / 1000,
        .tv_nsec = (long long)(timeout_ms % 1000) * 1000000,
    };
    return io_uring_submit_and_wait_timeout(ring, &cqe, 1, &ts, NULL);
}

static inline int zcn_uring_submit_and_get_events(struct io_uring *ring)
{
    struct zcn_ep *ep = zcn_ep_of(ring);
    return ep != NULL ? zcn_ep_wait(ep, 0, 0) : io_uring_submit_and_get_events(ring);
}

static inline int zcn_uring_get_events(struct io_uring *ring)
{
    struct zcn_ep *ep = zcn_ep_of(ring);
    return ep != NULL ? zcn_ep_get_events(ep) : io_uring_get_events(ring);
}

static inline int zcn_uring_register_buf_ring(struct io_uring *ring, struct io_uring_buf_reg *reg)
{
    struct zcn_ep *ep = zcn_ep_of(ring);
    return ep != NULL ? zcn_ep_register_buf_ring(ep, reg) : io_uring_register_buf_ring(ring, reg, 0);
}

static inline int zcn_uring_unregister_buf_ring(struct io_uring *ring, int bgid)
{
    struct zcn_ep *ep = zcn_ep_of(ring);
    return ep != NULL ? zcn_ep_unregister_buf_ring(ep, bgid)
                      : io_uring_unregister_buf_ring(ring, bgid);
}

static inline int zcn_uring_sync_cancel(struct io_uring *ring, struct io_uring_sync_cancel_reg *reg)
{
    struct zcn_ep *ep = zcn_ep_of(ring);
    return ep != NULL ? zcn_ep_sync_cancel(ep, reg) : io_uring_register_sync_cancel(ring, reg);
}

/* Before close(fd) of an fd that had requests on the ring. */
static inline void zcn_uring_forget_fd(struct io_uring *ring, int fd)
{
    struct zcn_ep *ep = zcn_ep_of(ring);
    if (ep != NULL)
        zcn_ep_forget_fd(ep, fd);
}

#endif
