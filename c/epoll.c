/* The epoll backend: a ring in user space (c/uring.h says why it has the
 * kernel ring's layout).
 *
 * Every request the loop prepares is performed here with the system call a
 * hand-written epoll loop would make, when epoll says the fd is ready, and
 * its completion is posted to our CQ in the format the kernel would use:
 *   - a multishot receive (RECV with a provided buffer) stays registered for
 *     EPOLLIN, level-triggered: each report reads into the next buffers of
 *     its group's buffer ring (up to EP_RECV_IOV in one recvmsg), posting
 *     one completion per buffer, with IORING_CQE_F_MORE while it goes on;
 *     EOF, an error or an empty buffer ring end it as on io_uring;
 *   - a send is tried at once when it is submitted (most sockets have room)
 *     and waits for EPOLLOUT only if the socket is full, behind which later
 *     sends of that fd queue in order;
 *   - accept, connect, poll, recvmsg (multishot, in io_uring_recvmsg_out
 *     format), timeouts, cancels and NOPs as io_uring defines them.
 * An fd is registered with epoll while it has requests, with the union of
 * what they wait for; changes are applied once per submit or wait (a
 * request re-armed in between costs no epoll_ctl).
 *
 * One thread uses a ring (the loop's owner): nothing here is atomic but the
 * CQ tail, which liburing's helpers read with acquire semantics. Memory is
 * bounded by the requests the loop itself bounds (one entry each, grown on
 * demand) and the fd numbers it uses (RLIMIT_NOFILE). */
#include "uring.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define EP_EVENTS 512       /* readiness reports per epoll_wait */
/* Reports run per wait: the rest wait for the next turns, so the loop
 * answers the first sockets before it reads the others (as a hand-written
 * epoll loop does), and the replies' skbs, which the peer's CPU frees, go
 * back to this CPU in small batches. At 200 x 1 x 64 B: 1.01-1.02x the C
 * epoll server's CPU per message against 1.02-1.03x running all 200 in one
 * turn, p50 0.47 against 0.59-0.63 ms (docs/PERFORMANCE.md, "zcn on
 * epoll"). */
#define EP_RUN 32
#define EP_RECV_IOV 4       /* buffers one multishot receive reads into at once */
#define EP_RECVMSG_RUN 64   /* datagrams per report */
#define EP_ACCEPT_RUN 64    /* accepts per report */
#define EP_NIL (-1)

enum side { SIDE_READ = 1, SIDE_WRITE = 2, SIDE_POLL = 3 };

struct ep_op {
    uint64_t ud;
    uint64_t addr;          /* buffer, msghdr, sockaddr */
    uint64_t addr2;         /* send: destination; accept: socklen_t * */
    uint64_t deadline_ns;   /* timeout */
    int32_t fd;             /* -1 for a timeout */
    uint32_t len;
    uint32_t flags;         /* msg_flags, accept_flags, poll mask */
    uint32_t addr_len;
    int32_t next, prev;     /* the fd's requests, or the timeouts */
    int32_t hnext;          /* user_data hash chain */
    uint16_t buf_group;
    uint8_t opcode;
    uint8_t side;
    uint8_t multishot;
    uint8_t buffer_select;
    uint8_t in_use;
    uint8_t restore_blocking; /* connect: the fd was blocking before */
    uint8_t filled;         /* recv: its last read filled every buffer it had */
    uint8_t bundle;         /* recv: IORING_RECVSEND_BUNDLE, one completion per read */
};

struct ep_fd {
    int32_t head, tail;     /* its requests, oldest first */
    uint32_t registered;    /* the epoll mask it has now (0: not registered) */
    uint32_t gen;           /* in epoll_data: tells a stale report */
    uint8_t dirty;
    uint8_t nonblock_set;   /* accept: made non-blocking once */
};

struct ep_group {
    struct io_uring_buf_ring *br;
    uint32_t mask;
    uint16_t head;
    uint8_t used;
};

struct zcn_ep {
    struct io_uring *uring;
    int epfd;
    /* the rings' counters (liburing points at these) */
    unsigned sq_khead, sq_ktail, sq_mask, sq_entries;
    unsigned cq_khead, cq_mask, cq_entries, zero;
    unsigned sq_kflags;     /* IORING_SQ_CQ_OVERFLOW while completions wait in overflow,
                               where io_uring_cq_has_overflow looks */
    _Atomic unsigned cq_ktail;
    unsigned *sq_array;
    struct io_uring_cqe *overflow;
    uint32_t overflow_n, overflow_cap, overflow_off;
    /* requests */
    struct ep_op *ops;
    uint32_t ops_cap;
    int32_t op_free;
    int32_t *hash;
    uint32_t hash_mask;
    int32_t timeouts;       /* sorted by deadline */
    /* fds */
    struct ep_fd *fds;
    uint32_t fds_cap;
    int32_t *dirty;
    uint32_t dirty_n, dirty_cap;
    struct ep_group *groups;
    uint32_t groups_n;
    struct epoll_event events[EP_EVENTS];
    int events_n, events_next; /* the last epoll_wait's reports, and the next to run */
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------------ */
/* completions                                                         */
/* ------------------------------------------------------------------ */

static bool cq_room(struct zcn_ep *ep)
{
    unsigned tail = atomic_load_explicit(&ep->cq_ktail, memory_order_relaxed);
    return tail - __atomic_load_n(&ep->cq_khead, __ATOMIC_ACQUIRE) < ep->cq_entries;
}

static void cq_push(struct zcn_ep *ep, uint64_t ud, int32_t res, uint32_t flags)
{
    unsigned tail = atomic_load_explicit(&ep->cq_ktail, memory_order_relaxed);
    struct io_uring_cqe *cqe = &ep->uring->cq.cqes[tail & ep->cq_mask];
    cqe->user_data = ud;
    cqe->res = res;
    cqe->flags = flags;
    atomic_store_explicit(&ep->cq_ktail, tail + 1, memory_order_release);
}

/* Completions that found the CQ full wait here, in order, as the kernel's
 * overflow list (they are never dropped). */
static void overflow_push(struct zcn_ep *ep, uint64_t ud, int32_t res, uint32_t flags)
{
    if (ep->overflow_off > 0 && ep->overflow_off == ep->overflow_n)
        ep->overflow_off = ep->overflow_n = 0;
    if (ep->overflow_n == ep->overflow_cap) {
        uint32_t cap = ep->overflow_cap ? ep->overflow_cap * 2 : 256;
        struct io_uring_cqe *o = realloc(ep->overflow, (size_t)cap * sizeof *o);
        if (o == NULL)
            abort(); /* as the kernel, we cannot drop a completion */
        ep->overflow = o;
        ep->overflow_cap = cap;
    }
    struct io_uring_cqe *cqe = &ep->overflow[ep->overflow_n++];
    cqe->user_data = ud;
    cqe->res = res;
    cqe->flags = flags;
    ep->sq_kflags |= IORING_SQ_CQ_OVERFLOW;
}

static void post(struct zcn_ep *ep, uint64_t ud, int32_t res, uint32_t flags)
{
    if (ZCN_LIKELY(ep->overflow_off == ep->overflow_n) && cq_room(ep))
        cq_push(ep, ud, res, flags);
    else
        overflow_push(ep, ud, res, flags);
}

static void flush_overflow(struct zcn_ep *ep)
{
    while (ep->overflow_off < ep->overflow_n && cq_room(ep)) {
        struct io_uring_cqe *o = &ep->overflow[ep->overflow_off++];
        cq_push(ep, o->user_data, o->res, o->flags);
    }
    if (ep->overflow_off == ep->overflow_n) {
        ep->overflow_off = ep->overflow_n = 0;
        ep->sq_kflags &= ~(unsigned)IORING_SQ_CQ_OVERFLOW;
    }
}

static unsigned cq_ready(struct zcn_ep *ep)
{
    return atomic_load_explicit(&ep->cq_ktail, memory_order_relaxed) -
           __atomic_load_n(&ep->cq_khead, __ATOMIC_ACQUIRE);
}

/* ------------------------------------------------------------------ */
/* requests: the table, the user_data hash, the fd lists               */
/* ------------------------------------------------------------------ */

static uint32_t hash_of(struct zcn_ep *ep, uint64_t ud)
{
    ud ^= ud >> 33;
    ud *= 0xff51afd7ed558ccdull;
    ud ^= ud >> 33;
    return (uint32_t)ud & ep->hash_mask;
}

static void hash_insert(struct zcn_ep *ep, int32_t i)
{
    uint32_t h = hash_of(ep, ep->ops[i].ud);
    ep->ops[i].hnext = ep->hash[h];
    ep->hash[h] = i;
}

static void hash_remove(struct zcn_ep *ep, int32_t i)
{
    int32_t *p = &ep->hash[hash_of(ep, ep->ops[i].ud)];
    while (*p != EP_NIL && *p != i)
        p = &ep->ops[*p].hnext;
    if (*p == i)
        *p = ep->ops[i].hnext;
}

/* Doubles the table (indices stay valid) and rebuilds the hash at twice
 * the table's size. */
static bool ops_grow(struct zcn_ep *ep)
{
    uint32_t cap = ep->ops_cap ? ep->ops_cap * 2 : 64;
    struct ep_op *ops = realloc(ep->ops, (size_t)cap * sizeof *ops);
    if (ops == NULL)
        return false;
    int32_t *hash = malloc((size_t)cap * 2 * sizeof *hash);
    if (hash == NULL) {
        ep->ops = ops;
        return false;
    }
    memset(ops + ep->ops_cap, 0, (size_t)(cap - ep->ops_cap) * sizeof *ops);
    for (uint32_t i = ep->ops_cap; i < cap; i++)
        ops[i].next = i + 1 < cap ? (int32_t)(i + 1) : ep->op_free;
    ep->op_free = (int32_t)ep->ops_cap;
    ep->ops = ops;
    ep->ops_cap = cap;
    free(ep->hash);
    ep->hash = hash;
    ep->hash_mask = cap * 2 - 1;
    for (uint32_t h = 0; h <= ep->hash_mask; h++)
        hash[h] = EP_NIL;
    for (uint32_t i = 0; i < cap; i++)
        if (ops[i].in_use)
            hash_insert(ep, (int32_t)i);
    return true;
}

static int32_t op_new(struct zcn_ep *ep, const struct io_uring_sqe *sqe)
{
    if (ep->op_free == EP_NIL && !ops_grow(ep))
        return EP_NIL;
    int32_t i = ep->op_free;
    struct ep_op *op = &ep->ops[i];
    ep->op_free = op->next;
    memset(op, 0, sizeof *op);
    op->ud = sqe->user_data;
    op->fd = sqe->fd;
    op->opcode = sqe->opcode;
    op->addr = sqe->addr;
    op->len = sqe->len;
    op->next = op->prev = EP_NIL;
    op->in_use = 1;
    hash_insert(ep, i);
    return i;
}

static void op_free(struct zcn_ep *ep, int32_t i)
{
    hash_remove(ep, i);
    ep->ops[i].in_use = 0;
    ep->ops[i].next = ep->op_free;
    ep->op_free = i;
}

/* The fd's entry, the table grown to hold it; NULL with errno set (EBADF
 * for a negative or closed fd, ENOMEM) otherwise. Only an open fd grows the
 * table, so a bogus large number costs a fcntl, not memory. */
static struct ep_fd *fd_slot(struct zcn_ep *ep, int fd)
{
    if (fd < 0) {
        errno = EBADF;
        return NULL;
    }
    if ((uint32_t)fd >= ep->fds_cap) {
        if (fcntl(fd, F_GETFD) < 0)
            return NULL;
        uint32_t cap = ep->fds_cap ? ep->fds_cap : 64;
        while (cap <= (uint32_t)fd)
            cap *= 2;
        struct ep_fd *fds = realloc(ep->fds, (size_t)cap * sizeof *fds);
        if (fds == NULL) {
            errno = ENOMEM;
            return NULL;
        }
        for (uint32_t i = ep->fds_cap; i < cap; i++)
            fds[i] = (struct ep_fd){.head = EP_NIL, .tail = EP_NIL};
        ep->fds = fds;
        ep->fds_cap = cap;
    }
    return &ep->fds[fd];
}

static void mark_dirty(struct zcn_ep *ep, int fd)
{
    struct ep_fd *f = &ep->fds[fd];
    if (f->dirty)
        return;
    if (ep->dirty_n == ep->dirty_cap) {
        uint32_t cap = ep->dirty_cap ? ep->dirty_cap * 2 : 64;
        int32_t *d = realloc(ep->dirty, (size_t)cap * sizeof *d);
        if (d == NULL)
            return; /* reconciled when the fd next changes; its reports are tolerated */
        ep->dirty = d;
        ep->dirty_cap = cap;
    }
    f->dirty = 1;
    ep->dirty[ep->dirty_n++] = fd;
}

static void fd_append(struct zcn_ep *ep, struct ep_fd *f, int32_t i)
{
    struct ep_op *op = &ep->ops[i];
    op->prev = f->tail;
    op->next = EP_NIL;
    if (f->tail != EP_NIL)
        ep->ops[f->tail].next = i;
    else
        f->head = i;
    f->tail = i;
    mark_dirty(ep, op->fd);
}

static void fd_unlink(struct zcn_ep *ep, int32_t i)
{
    struct ep_op *op = &ep->ops[i];
    struct ep_fd *f = &ep->fds[op->fd];
    if (op->prev != EP_NIL)
        ep->ops[op->prev].next = op->next;
    else
        f->head = op->next;
    if (op->next != EP_NIL)
        ep->ops[op->next].prev = op->prev;
    else
        f->tail = op->prev;
    mark_dirty(ep, op->fd);
}

/* Ends a request queued on its fd with its last completion. */
static void finish(struct zcn_ep *ep, int32_t i, int32_t res, uint32_t flags)
{
    uint64_t ud = ep->ops[i].ud;
    fd_unlink(ep, i);
    op_free(ep, i);
    post(ep, ud, res, flags);
}

static uint32_t op_events(const struct ep_op *op)
{
    switch (op->side) {
    case SIDE_READ:
        return EPOLLIN;
    case SIDE_WRITE:
        return EPOLLOUT;
    default:
        return op->flags & (EPOLLIN | EPOLLOUT | EPOLLPRI | EPOLLRDHUP);
    }
}

/* Brings epoll in line with what the dirty fds' requests wait for. */
static void reconcile(struct zcn_ep *ep)
{
    for (uint32_t k = 0; k < ep->dirty_n; k++) {
        int fd = ep->dirty[k];
        struct ep_fd *f = &ep->fds[fd];
        f->dirty = 0;
        uint32_t want = 0;
        for (int32_t i = f->head; i != EP_NIL; i = ep->ops[i].next)
            want |= op_events(&ep->ops[i]);
        if (want == f->registered)
            continue;
        if (want == 0) {
            (void)epoll_ctl(ep->epfd, EPOLL_CTL_DEL, fd, NULL);
            f->registered = 0;
            continue;
        }
        struct epoll_event ev = {.events = want};
        int rc = -1, err = ENOENT;
        if (f->registered != 0) {
            ev.data.u64 = (uint64_t)(uint32_t)fd | (uint64_t)f->gen << 32;
            rc = epoll_ctl(ep->epfd, EPOLL_CTL_MOD, fd, &ev);
            err = rc == 0 ? 0 : errno;
        }
        if (rc != 0 && err == ENOENT) { /* new, or closed and reused meanwhile */
            f->gen++;
            ev.data.u64 = (uint64_t)(uint32_t)fd | (uint64_t)f->gen << 32;
            rc = epoll_ctl(ep->epfd, EPOLL_CTL_ADD, fd, &ev);
            if (rc != 0 && errno == EEXIST) /* registered by an earlier life of ours */
                rc = epoll_ctl(ep->epfd, EPOLL_CTL_MOD, fd, &ev);
            err = rc == 0 ? 0 : errno;
        }
        if (rc == 0) {
            f->registered = want;
            continue;
        }
        /* EPERM: a file epoll cannot watch (a regular file is always
         * ready); EBADF: not open. Its requests end, as io_uring's would. */
        f->registered = 0;
        while (f->head != EP_NIL) {
            int32_t i = f->head;
            struct ep_op *op = &ep->ops[i];
            if (err == EPERM && op->side == SIDE_POLL)
                finish(ep, i, (int32_t)(op->flags & (POLLIN | POLLOUT)), 0);
            else
                finish(ep, i, -err, 0);
        }
        f->dirty = 0;
    }
    ep->dirty_n = 0;
}

/* ------------------------------------------------------------------ */
/* performing requests                                                 */
/* ------------------------------------------------------------------ */

static struct ep_group *group_of(struct zcn_ep *ep, uint16_t bgid)
{
    return bgid < ep->groups_n && ep->groups[bgid].used ? &ep->groups[bgid] : NULL;
}

/* The next buffer of the group, or NULL when its ring is empty. */
static struct io_uring_buf *group_peek(struct ep_group *g)
{
    uint16_t tail = __atomic_load_n(&g->br->tail, __ATOMIC_ACQUIRE);
    if (g->head == tail)
        return NULL;
    return &g->br->bufs[g->head & g->mask];
}

/* Whether err means "try again when ready". */
static bool again(int err)
{
    return err == EAGAIN || err == EWOULDBLOCK;
}

/* A stream receive. A multishot one whose last read filled its buffers
 * reads into up to EP_RECV_IOV buffers of its group with one recvmsg (what
 * one 64 KiB read of an epoll server takes) and posts a completion per
 * buffer it filled, in order; otherwise (small messages: the common case,
 * and the cheaper call) one recv into one buffer. Level-triggered: what is left in
 * the socket is reported again by the next epoll_wait, so no read is spent
 * finding it empty. Returns true if the request ended. */
static bool run_recv(struct zcn_ep *ep, int32_t i)
{
    struct ep_op *op = &ep->ops[i];
    struct iovec iov[EP_RECV_IOV];
    struct io_uring_buf *bufs[EP_RECV_IOV];
    struct ep_group *g = NULL;
    uint32_t k = 0;
    if (op->buffer_select) {
        g = group_of(ep, op->buf_group);
        uint32_t want = op->multishot && op->filled ? EP_RECV_IOV : 1;
        uint16_t tail = g != NULL ? __atomic_load_n(&g->br->tail, __ATOMIC_ACQUIRE) : 0;
        for (; g != NULL && k < want && (uint16_t)(g->head + k) != tail; k++) {
            bufs[k] = &g->br->bufs[(uint16_t)(g->head + k) & g->mask];
            iov[k].iov_base = (void *)(uintptr_t)bufs[k]->addr;
            iov[k].iov_len = bufs[k]->len;
        }
        if (k == 0) {
            finish(ep, i, -ENOBUFS, 0);
            return true;
        }
    } else {
        iov[0].iov_base = (void *)(uintptr_t)op->addr;
        iov[0].iov_len = op->len;
        k = 1;
    }
    ssize_t n;
    do {
        if (k == 1) {
            n = recv(op->fd, iov[0].iov_base, iov[0].iov_len, (int)op->flags | MSG_DONTWAIT);
        } else {
            struct msghdr m = {.msg_iov = iov, .msg_iovlen = k};
            n = recvmsg(op->fd, &m, (int)op->flags | MSG_DONTWAIT);
        }
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (again(errno))
            return false;
        finish(ep, i, -errno, 0);
        return true;
    }
    if (n == 0) {
        finish(ep, i, 0, 0);
        return true;
    }
    if (g == NULL) {
        finish(ep, i, (int32_t)n, 0);
        return true;
    }
    size_t room = 0;
    for (uint32_t j = 0; j < k; j++)
        room += iov[j].iov_len;
    op->filled = (size_t)n == room;
    if (op->bundle) {
        /* As the kernel's bundle: one completion for all the buffers the
         * read filled, named by the first (they follow in ring order). */
        size_t left = (size_t)n;
        for (uint32_t j = 0; left > 0; j++) {
            left -= left < iov[j].iov_len ? left : iov[j].iov_len;
            g->head++;
        }
        uint32_t flags = IORING_CQE_F_BUFFER | ((uint32_t)bufs[0]->bid << IORING_CQE_BUFFER_SHIFT);
        if (!op->multishot) {
            finish(ep, i, (int32_t)n, flags);
            return true;
        }
        post(ep, op->ud, (int32_t)n, flags | IORING_CQE_F_MORE);
        return false;
    }
    size_t left = (size_t)n;
    for (uint32_t j = 0; left > 0; j++) {
        size_t part = left < iov[j].iov_len ? left : iov[j].iov_len;
        left -= part;
        g->head++;
        uint32_t flags = IORING_CQE_F_BUFFER | ((uint32_t)bufs[j]->bid << IORING_CQE_BUFFER_SHIFT);
        if (!op->multishot) {
            finish(ep, i, (int32_t)part, flags);
            return true;
        }
        post(ep, op->ud, (int32_t)part, flags | IORING_CQE_F_MORE);
    }
    return false;
}

/* A multishot recvmsg into provided buffers, in the layout of
 * io_uring_recvmsg_out: header, name, control, payload. */
static bool run_recvmsg(struct zcn_ep *ep, int32_t i)
{
    for (int run = 0; run < EP_RECVMSG_RUN; run++) {
        struct ep_op *op = &ep->ops[i];
        const struct msghdr *tmpl = (const struct msghdr *)(uintptr_t)op->addr;
        struct ep_group *g = group_of(ep, op->buf_group);
        struct io_uring_buf *b = g != NULL ? group_peek(g) : NULL;
        if (!op->buffer_select || b == NULL) {
            finish(ep, i, op->buffer_select ? -ENOBUFS : -EINVAL, 0);
            return true;
        }
        size_t head = sizeof(struct io_uring_recvmsg_out) + tmpl->msg_namelen +
                      tmpl->msg_controllen;
        if (b->len < head) {
            finish(ep, i, -EFAULT, 0);
            return true;
        }
        uint8_t *base = (uint8_t *)(uintptr_t)b->addr;
        struct io_uring_recvmsg_out *out = (struct io_uring_recvmsg_out *)base;
        struct iovec iov = {base + head, b->len - head};
        struct msghdr m = {
            .msg_name = tmpl->msg_namelen ? base + sizeof *out : NULL,
            .msg_namelen = tmpl->msg_namelen,
            .msg_iov = &iov,
            .msg_iovlen = 1,
            .msg_control = tmpl->msg_controllen ? base + sizeof *out + tmpl->msg_namelen : NULL,
            .msg_controllen = tmpl->msg_controllen,
        };
        ssize_t n = recvmsg(op->fd, &m, (int)op->flags | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (again(errno))
                return false;
            finish(ep, i, -errno, 0);
            return true;
        }
        g->head++;
        out->namelen = m.msg_namelen;
        out->controllen = (uint32_t)m.msg_controllen;
        out->payloadlen = (uint32_t)n;
        out->flags = (uint32_t)m.msg_flags;
        size_t copied = (size_t)n < iov.iov_len ? (size_t)n : iov.iov_len;
        post(ep, op->ud, (int32_t)(head + copied),
             IORING_CQE_F_BUFFER | ((uint32_t)b->bid << IORING_CQE_BUFFER_SHIFT) |
                 IORING_CQE_F_MORE);
    }
    return false;
}

static bool run_accept(struct zcn_ep *ep, int32_t i)
{
    for (int run = 0; run < EP_ACCEPT_RUN; run++) {
        struct ep_op *op = &ep->ops[i];
        int fd = accept4(op->fd, (struct sockaddr *)(uintptr_t)op->addr,
                         (socklen_t *)(uintptr_t)op->addr2, (int)op->flags);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (again(errno))
                return false;
            finish(ep, i, -errno, 0);
            return true;
        }
        if (!op->multishot) {
            finish(ep, i, fd, 0);
            return true;
        }
        post(ep, op->ud, fd, IORING_CQE_F_MORE);
    }
    return false;
}

static void restore_blocking(const struct ep_op *op)
{
    if (!op->restore_blocking)
        return;
    int fl = fcntl(op->fd, F_GETFL);
    if (fl >= 0)
        (void)fcntl(op->fd, F_SETFL, fl & ~O_NONBLOCK);
}

/* One send, sendto or sendmsg: the bytes sent, or -errno (-EAGAIN: the
 * socket has no room). */
static ssize_t do_send(uint8_t opcode, int fd, uint64_t addr, uint32_t len, uint32_t flags,
                       uint64_t dest, uint32_t dest_len)
{
    for (;;) {
        ssize_t n;
        if (opcode == IORING_OP_SENDMSG)
            n = sendmsg(fd, (const struct msghdr *)(uintptr_t)addr, (int)flags | MSG_DONTWAIT);
        else if (dest != 0)
            n = sendto(fd, (const void *)(uintptr_t)addr, len, (int)flags | MSG_DONTWAIT,
                       (const struct sockaddr *)(uintptr_t)dest, dest_len);
        else
            n = send(fd, (const void *)(uintptr_t)addr, len, (int)flags | MSG_DONTWAIT);
        if (n >= 0)
            return n;
        if (errno == EINTR)
            continue;
        return again(errno) ? -EAGAIN : -errno;
    }
}

/* A queued send, sendmsg or connect: returns true if it ended (its
 * completion posted), false if the socket has no room yet. */
static bool run_write(struct zcn_ep *ep, int32_t i)
{
    struct ep_op *op = &ep->ops[i];
    ssize_t n;
    if (op->opcode == IORING_OP_CONNECT) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(op->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
            err = errno;
        restore_blocking(op);
        n = err != 0 ? -err : 0;
    } else {
        n = do_send(op->opcode, op->fd, op->addr, op->len, op->flags, op->addr2, op->addr_len);
        if (n == -EAGAIN)
            return false;
    }
    finish(ep, i, (int32_t)n, 0);
    return true;
}

/* epoll and poll(2) share their bit values on Linux. */
static bool run_poll(struct zcn_ep *ep, int32_t i, uint32_t revents)
{
    struct ep_op *op = &ep->ops[i];
    uint32_t res = revents & (op->flags | EPOLLERR | EPOLLHUP);
    if (res == 0)
        return false;
    if (op->multishot) {
        post(ep, op->ud, (int32_t)res, IORING_CQE_F_MORE);
        return false;
    }
    finish(ep, i, (int32_t)res, 0);
    return true;
}

/* A readiness report for fd: each of its requests that it concerns runs;
 * writes in order, each only after the one before it ended. */
static void run_fd(struct zcn_ep *ep, int fd, uint32_t revents)
{
    struct ep_fd *f = &ep->fds[fd];
    bool readable = (revents & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP)) != 0;
    bool writable = (revents & (EPOLLOUT | EPOLLERR | EPOLLHUP)) != 0;
    bool writes_blocked = false;
    for (int32_t i = f->head; i != EP_NIL;) {
        int32_t next = ep->ops[i].next;
        struct ep_op *op = &ep->ops[i];
        switch (op->side) {
        case SIDE_POLL:
            run_poll(ep, i, revents);
            break;
        case SIDE_WRITE:
            if (writable && !writes_blocked && !run_write(ep, i))
                writes_blocked = true;
            break;
        default:
            if (!readable)
                break;
            if (op->opcode == IORING_OP_ACCEPT)
                run_accept(ep, i);
            else if (op->opcode == IORING_OP_RECVMSG)
                run_recvmsg(ep, i);
            else
                run_recv(ep, i);
            break;
        }
        i = next; /* a run ends only its own request: next is still queued */
    }
}

/* Whether the fd has a write waiting (a new one queues behind it). */
static bool writes_waiting(struct zcn_ep *ep, struct ep_fd *f)
{
    for (int32_t i = f->head; i != EP_NIL; i = ep->ops[i].next)
        if (ep->ops[i].side == SIDE_WRITE)
            return true;
    return false;
}

static void timeout_insert(struct zcn_ep *ep, int32_t i)
{
    int32_t *p = &ep->timeouts;
    while (*p != EP_NIL && ep->ops[*p].deadline_ns <= ep->ops[i].deadline_ns)
        p = &ep->ops[*p].next;
    ep->ops[i].next = *p;
    *p = i;
}

/* Takes request i off whichever list holds it (not its slot). */
static void detach(struct zcn_ep *ep, int32_t i)
{
    if (ep->ops[i].opcode == IORING_OP_TIMEOUT) {
        int32_t *p = &ep->timeouts;
        while (*p != EP_NIL && *p != i)
            p = &ep->ops[*p].next;
        if (*p == i)
            *p = ep->ops[i].next;
    } else {
        fd_unlink(ep, i);
    }
}

static void cancel_one(struct zcn_ep *ep, int32_t i)
{
    struct ep_op *op = &ep->ops[i];
    uint64_t ud = op->ud;
    if (op->opcode == IORING_OP_CONNECT)
        restore_blocking(op);
    detach(ep, i);
    op_free(ep, i);
    post(ep, ud, -ECANCELED, 0);
}

/* Cancels the requests with user_data ud (all of them with ALL); returns
 * how many, or -ENOENT. */
static int cancel_ud(struct zcn_ep *ep, uint64_t ud, bool all)
{
    int count = 0;
    for (;;) {
        int32_t i = ep->hash[hash_of(ep, ud)];
        while (i != EP_NIL && ep->ops[i].ud != ud)
            i = ep->ops[i].hnext;
        if (i == EP_NIL)
            break;
        cancel_one(ep, i);
        count++;
        if (!all)
            break;
    }
    return count > 0 ? (all ? count : 0) : -ENOENT;
}

static int cancel_fd(struct zcn_ep *ep, int fd, bool all)
{
    if (fd < 0 || (uint32_t)fd >= ep->fds_cap)
        return -ENOENT;
    int count = 0;
    while (ep->fds[fd].head != EP_NIL) {
        cancel_one(ep, ep->fds[fd].head);
        count++;
        if (!all)
            break;
    }
    return count > 0 ? (all ? count : 0) : -ENOENT;
}

static void make_nonblocking(int fd, struct ep_op *op)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0 && !(fl & O_NONBLOCK)) {
        (void)fcntl(fd, F_SETFL, fl | O_NONBLOCK);
        if (op != NULL)
            op->restore_blocking = 1;
    }
}

/* Queues request i on its fd (reconcile registers it). */
static void queue_on_fd(struct zcn_ep *ep, int32_t i)
{
    int fd = ep->ops[i].fd;
    struct ep_fd *f = fd_slot(ep, fd);
    if (f == NULL) {
        int err = errno;
        uint64_t ud = ep->ops[i].ud;
        op_free(ep, i);
        post(ep, ud, -err, 0);
        return;
    }
    fd_append(ep, f, i);
}

static void issue(struct zcn_ep *ep, const struct io_uring_sqe *sqe)
{
    uint64_t ud = sqe->user_data;
    uint8_t known = IOSQE_BUFFER_SELECT;
    if (sqe->flags & ~known) {
        post(ep, ud, -EINVAL, 0); /* links, fixed files, ...: not used by zcn */
        return;
    }
    switch (sqe->opcode) {
    case IORING_OP_NOP:
        post(ep, ud, 0, 0);
        return;
    case IORING_OP_ASYNC_CANCEL: {
        bool all = (sqe->cancel_flags & IORING_ASYNC_CANCEL_ALL) != 0;
        int res = (sqe->cancel_flags & IORING_ASYNC_CANCEL_FD) ? cancel_fd(ep, sqe->fd, all)
                                                              : cancel_ud(ep, sqe->addr, all);
        post(ep, ud, res, 0);
        return;
    }
    case IORING_OP_TIMEOUT_REMOVE: {
        int32_t i = ep->hash[hash_of(ep, sqe->addr)];
        while (i != EP_NIL && !(ep->ops[i].ud == sqe->addr &&
                                ep->ops[i].opcode == IORING_OP_TIMEOUT))
            i = ep->ops[i].hnext;
        if (i != EP_NIL)
            cancel_one(ep, i);
        post(ep, ud, i != EP_NIL ? 0 : -ENOENT, 0);
        return;
    }
    case IORING_OP_SEND:
    case IORING_OP_SENDMSG: {
        /* The common case: the socket has room and nothing of it waits.
         * Sent now, with no request entry at all. */
        struct ep_fd *f = fd_slot(ep, sqe->fd);
        if (f != NULL && !writes_waiting(ep, f)) {
            ssize_t n = do_send(sqe->opcode, sqe->fd, sqe->addr, sqe->len, sqe->msg_flags,
                                sqe->addr2, sqe->addr_len);
            if (n != -EAGAIN) {
                post(ep, ud, (int32_t)n, 0);
                return;
            }
        }
        break;
    }
    default:
        break;
    }
    int32_t i = op_new(ep, sqe);
    if (i == EP_NIL) {
        post(ep, ud, -ENOMEM, 0);
        return;
    }
    struct ep_op *op = &ep->ops[i];
    op->buffer_select = (sqe->flags & IOSQE_BUFFER_SELECT) != 0;
    op->buf_group = sqe->buf_group;
    switch (sqe->opcode) {
    case IORING_OP_POLL_ADD:
        op->side = SIDE_POLL;
        op->flags = sqe->poll32_events;
        op->multishot = (sqe->len & IORING_POLL_ADD_MULTI) != 0;
        queue_on_fd(ep, i);
        return;
    case IORING_OP_ACCEPT: {
        op->side = SIDE_READ;
        op->flags = sqe->accept_flags;
        op->addr2 = sqe->addr2;
        op->multishot = (sqe->ioprio & IORING_ACCEPT_MULTISHOT) != 0;
        struct ep_fd *f = fd_slot(ep, op->fd);
        if (f != NULL && !f->nonblock_set) {
            make_nonblocking(op->fd, NULL); /* a listener: accept4 must not block */
            f->nonblock_set = 1;
        }
        queue_on_fd(ep, i);
        return;
    }
    case IORING_OP_RECV:
    case IORING_OP_RECVMSG:
        op->side = SIDE_READ;
        op->flags = sqe->msg_flags;
        op->multishot = (sqe->ioprio & IORING_RECV_MULTISHOT) != 0;
        op->bundle = sqe->opcode == IORING_OP_RECV && op->buffer_select &&
                     (sqe->ioprio & ZCN_IORING_RECVSEND_BUNDLE) != 0;
        queue_on_fd(ep, i);
        return;
    case IORING_OP_SEND:
    case IORING_OP_SENDMSG:
    case IORING_OP_CONNECT: {
        op->side = SIDE_WRITE;
        op->flags = sqe->msg_flags;
        op->addr2 = sqe->addr2;
        op->addr_len = sqe->addr_len;
        struct ep_fd *f = fd_slot(ep, op->fd);
        if (sqe->opcode == IORING_OP_CONNECT) {
            op->flags = 0;
            make_nonblocking(op->fd, op);
            int rc = connect(op->fd, (const struct sockaddr *)(uintptr_t)op->addr,
                             (socklen_t)sqe->off);
            int res = rc == 0 ? 0 : -errno;
            if (res != -EINPROGRESS || f == NULL) {
                restore_blocking(op);
                op_free(ep, i);
                post(ep, ud, res == -EINPROGRESS ? -ENOMEM : res, 0);
                return;
            }
        }
        queue_on_fd(ep, i); /* waits for EPOLLOUT (a send found no room above) */
        return;
    }
    case IORING_OP_TIMEOUT: {
        const struct __kernel_timespec *ts = (const struct __kernel_timespec *)(uintptr_t)sqe->addr;
        if (ts == NULL || sqe->off != 0 || (sqe->timeout_flags & ~IORING_TIMEOUT_ABS)) {
            op_free(ep, i);
            post(ep, ud, -EINVAL, 0);
            return;
        }
        uint64_t span = (uint64_t)ts->tv_sec * 1000000000u + (uint64_t)ts->tv_nsec;
        op->fd = -1;
        op->deadline_ns = (sqe->timeout_flags & IORING_TIMEOUT_ABS) ? span : now_ns() + span;
        timeout_insert(ep, i);
        return;
    }
    default:
        op_free(ep, i);
        post(ep, ud, -EINVAL, 0);
        return;
    }
}

static void expire_timeouts(struct zcn_ep *ep, uint64_t now)
{
    while (ep->timeouts != EP_NIL && ep->ops[ep->timeouts].deadline_ns <= now) {
        int32_t i = ep->timeouts;
        uint64_t ud = ep->ops[i].ud;
        ep->timeouts = ep->ops[i].next;
        op_free(ep, i);
        post(ep, ud, -ETIME, 0);
    }
}

/* ------------------------------------------------------------------ */
/* the ring calls                                                      */
/* ------------------------------------------------------------------ */

int zcn_ep_submit(struct zcn_ep *ep)
{
    struct io_uring_sq *sq = &ep->uring->sq;
    int n = 0;
    while (sq->sqe_head != sq->sqe_tail) {
        const struct io_uring_sqe *sqe = &sq->sqes[sq->sqe_head & sq->ring_mask];
        sq->sqe_head++;
        issue(ep, sqe);
        n++;
    }
    ep->sq_khead = ep->sq_ktail = sq->sqe_head;
    reconcile(ep);
    return n;
}

/* Runs the next reports of the last epoll_wait, at most EP_RUN; when none
 * are left, one epoll_wait of at most timeout_ms first. -errno on failure.
 * A report kept for a later turn may be stale by then: the gen check drops
 * one for a registration that is gone, and a read or write that finds the
 * socket not ready any more waits for the next report (level-triggered). */
static int gather(struct zcn_ep *ep, int timeout_ms)
{
    if (ep->events_next >= ep->events_n) {
        int n = epoll_wait(ep->epfd, ep->events, EP_EVENTS, timeout_ms);
        if (n < 0)
            return -errno;
        ep->events_n = n;
        ep->events_next = 0;
    }
    int end = ep->events_n - ep->events_next > EP_RUN ? ep->events_next + EP_RUN
                                                      : ep->events_n;
    for (int k = ep->events_next; k < end; k++) {
        int fd = (int)(uint32_t)ep->events[k].data.u64;
        uint32_t gen = (uint32_t)(ep->events[k].data.u64 >> 32);
        if ((uint32_t)fd >= ep->fds_cap || ep->fds[fd].registered == 0 ||
            ep->fds[fd].gen != gen)
            continue; /* a report for a registration that is gone */
        run_fd(ep, fd, ep->events[k].events);
    }
    ep->events_next = end;
    if (ep->timeouts != EP_NIL)
        expire_timeouts(ep, now_ns());
    reconcile(ep);
    return 0;
}

int zcn_ep_get_events(struct zcn_ep *ep)
{
    flush_overflow(ep);
    int rc = gather(ep, 0);
    flush_overflow(ep);
    return rc;
}

int zcn_ep_wait(struct zcn_ep *ep, unsigned want, int64_t timeout_ns)
{
    (void)zcn_ep_submit(ep);
    flush_overflow(ep);
    /* The clock is read only when there is something to wait for (a busy
     * loop's waits find completions ready and never block). */
    uint64_t deadline = timeout_ns < 0 ? UINT64_MAX : 0;
    for (;;) {
        int ms = 0;
        if (want > 0 && cq_ready(ep) < want && timeout_ns != 0) {
            if (deadline == 0)
                deadline = now_ns() + (uint64_t)timeout_ns;
            uint64_t until = deadline;
            if (ep->timeouts != EP_NIL && ep->ops[ep->timeouts].deadline_ns < until)
                until = ep->ops[ep->timeouts].deadline_ns;
            if (until == UINT64_MAX) {
                ms = -1;
            } else {
                uint64_t now = now_ns();
                uint64_t left = until > now ? until - now : 0;
                ms = (int)((left + 999999u) / 1000000u); /* never wake early */
                if (left > (uint64_t)INT32_MAX * 1000000u)
                    ms = INT32_MAX;
            }
        }
        int rc = gather(ep, ms);
        flush_overflow(ep);
        if (rc < 0)
            return rc;
        if (want == 0 || cq_ready(ep) >= want || timeout_ns == 0)
            return 0;
        if (timeout_ns > 0 && now_ns() >= deadline)
            return -ETIME;
    }
}

int zcn_ep_register_buf_ring(struct zcn_ep *ep, const struct io_uring_buf_reg *reg)
{
    uint32_t entries = reg->ring_entries;
    if (reg->ring_addr == 0 || entries == 0 || (entries & (entries - 1)) || entries > 32768)
        return -EINVAL;
    if (reg->bgid >= ep->groups_n) {
        uint32_t n = (uint32_t)reg->bgid + 1;
        struct ep_group *g = realloc(ep->groups, (size_t)n * sizeof *g);
        if (g == NULL)
            return -ENOMEM;
        memset(g + ep->groups_n, 0, (size_t)(n - ep->groups_n) * sizeof *g);
        ep->groups = g;
        ep->groups_n = n;
    }
    struct ep_group *g = &ep->groups[reg->bgid];
    if (g->used)
        return -EEXIST;
    g->br = (struct io_uring_buf_ring *)(uintptr_t)reg->ring_addr;
    g->mask = entries - 1;
    g->head = 0;
    g->used = 1;
    return 0;
}

int zcn_ep_unregister_buf_ring(struct zcn_ep *ep, int bgid)
{
    if (bgid < 0 || (uint32_t)bgid >= ep->groups_n || !ep->groups[bgid].used)
        return -EINVAL;
    ep->groups[bgid].used = 0;
    return 0;
}

int zcn_ep_sync_cancel(struct zcn_ep *ep, const struct io_uring_sync_cancel_reg *reg)
{
    bool all = (reg->flags & IORING_ASYNC_CANCEL_ALL) != 0;
    int res = (reg->flags & IORING_ASYNC_CANCEL_FD) ? cancel_fd(ep, reg->fd, all)
                                                    : cancel_ud(ep, reg->addr, all);
    flush_overflow(ep);
    return res < 0 ? res : 0;
}

void zcn_ep_forget_fd(struct zcn_ep *ep, int fd)
{
    if (fd < 0 || (uint32_t)fd >= ep->fds_cap)
        return;
    struct ep_fd *f = &ep->fds[fd];
    if (f->registered != 0 && f->head == EP_NIL) {
        (void)epoll_ctl(ep->epfd, EPOLL_CTL_DEL, fd, NULL);
        f->registered = 0;
    }
    f->nonblock_set = 0;
}

/* ------------------------------------------------------------------ */
/* create and destroy                                                  */
/* ------------------------------------------------------------------ */

ZCN_Error zcn_ep_create(struct io_uring *uring, uint32_t sq_entries, uint32_t cq_entries)
{
    memset(uring, 0, sizeof *uring);
    struct zcn_ep *ep = calloc(1, sizeof *ep);
    if (ep == NULL)
        return zcn_fail((ZCN_Error)ENOMEM, "epoll backend: out of memory");
    ep->uring = uring;
    ep->epfd = epoll_create1(EPOLL_CLOEXEC);
    ep->timeouts = EP_NIL;
    ep->op_free = EP_NIL;
    struct io_uring_sqe *sqes = calloc(sq_entries, sizeof *sqes);
    struct io_uring_cqe *cqes = calloc(cq_entries, sizeof *cqes);
    ep->sq_array = calloc(sq_entries, sizeof *ep->sq_array);
    ZCN_Error e = ZCN_OK;
    if (ep->epfd < 0)
        e = zcn_fail((ZCN_Error)errno, "epoll_create1: %s", strerror(errno));
    else if (sqes == NULL || cqes == NULL || ep->sq_array == NULL || !ops_grow(ep))
        e = zcn_fail((ZCN_Error)ENOMEM, "epoll backend: out of memory");
    if (e != ZCN_OK) {
        if (ep->epfd >= 0)
            close(ep->epfd);
        free(ep->ops);
        free(ep->hash);
        free(ep->sq_array);
        free(sqes);
        free(cqes);
        free(ep);
        return e;
    }
    ep->sq_mask = sq_entries - 1;
    ep->sq_entries = sq_entries;
    ep->cq_mask = cq_entries - 1;
    ep->cq_entries = cq_entries;
    struct io_uring_sq *sq = &uring->sq;
    sq->khead = &ep->sq_khead;
    sq->ktail = &ep->sq_ktail;
    sq->kring_mask = &ep->sq_mask;
    sq->kring_entries = &ep->sq_entries;
    sq->kflags = &ep->sq_kflags;
    sq->kdropped = &ep->zero;
    sq->array = ep->sq_array;
    sq->sqes = sqes;
    sq->ring_mask = sq_entries - 1;
    sq->ring_entries = sq_entries;
    sq->ring_ptr = ep;
    struct io_uring_cq *cq = &uring->cq;
    cq->khead = &ep->cq_khead;
    cq->ktail = (unsigned *)&ep->cq_ktail;
    cq->kring_mask = &ep->cq_mask;
    cq->kring_entries = &ep->cq_entries;
    cq->kflags = &ep->zero;
    cq->koverflow = &ep->zero;
    cq->cqes = cqes;
    cq->ring_mask = cq_entries - 1;
    cq->ring_entries = cq_entries;
    uring->ring_fd = ZCN_EP_RING_FD;
    uring->enter_ring_fd = ZCN_EP_RING_FD;
    return ZCN_OK;
}

void zcn_ep_destroy(struct io_uring *uring)
{
    struct zcn_ep *ep = zcn_ep_of(uring);
    if (ep == NULL)
        return;
    close(ep->epfd);
    free(ep->ops);
    free(ep->hash);
    free(ep->fds);
    free(ep->dirty);
    free(ep->groups);
    free(ep->overflow);
    free(ep->sq_array);
    free(uring->sq.sqes);
    free(uring->cq.cqes);
    free(ep);
    memset(uring, 0, sizeof *uring);
    uring->ring_fd = -1;
}
