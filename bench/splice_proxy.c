/* An experiment, not part of the library: a single-threaded io_uring TCP
 * proxy that forwards each direction with IORING_OP_SPLICE, socket -> pipe
 * -> socket, so the bytes never leave the kernel (what HAProxy does with
 * `option splice-auto`). bench/proxy_bench.py runs it as contender
 * "splice" against examples/tcp_proxy (buffer forwarding) and HAProxy; the
 * result is in docs/PERFORMANCE.md ("Splice against buffer forwarding").
 *
 *   splice_proxy LISTEN_HOST:PORT UPSTREAM_HOST:PORT
 *
 * Address literals (IPv4, or [v6]:port); listen port 0 picks a free one.
 * The first line of output is, like tcp_proxy's,
 *
 *   splice_proxy listening on 127.0.0.1:40123, upstream 127.0.0.1:8080
 *
 * SIGINT/SIGTERM end it: one stats line, exit status 0.
 *
 * Each direction of a pair is a pump: one pipe (F_SETPIPE_SZ 1 MiB), an
 * "in" splice socket -> pipe and an "out" splice pipe -> socket, both in
 * flight at once so reading and writing overlap. The two are chained, not
 * linked: a splice that moves less than asked fails its link (io_splice
 * sets the link failure when ret != len), and a receive is nearly always
 * short. The pump counts the bytes sitting in the pipe (in results minus
 * out results); an out splice asks for all of them, and a short one is
 * simply followed by another.
 *
 * The kernel runs every IORING_OP_SPLICE in an io-wq worker thread
 * (io_splice_prep sets REQ_F_FORCE_ASYNC; there is no poll-driven inline
 * path as for recv/send), so nothing may wait inside a splice: sockets and
 * pipes are non-blocking and every splice has SPLICE_F_NONBLOCK. An in
 * splice is linked behind a POLL_ADD(POLLIN) on its socket; an out splice
 * is tried at once and, on EAGAIN, again behind a POLL_ADD(POLLOUT). No
 * thread waits; each splice costs a hand-off to a worker and back. This is
 * HAProxy's scheme (epoll plus non-blocking splice(2)) on io_uring.
 *
 * SPLICE_PROXY_OPS=syscall keeps the io_uring polls but makes each splice
 * a splice(2) from the loop thread when its poll completes (what HAProxy's
 * loop does, on io_uring): it measures what the worker hand-off costs.
 * proxy_bench.py runs it as contender "splice-sync".
 *
 * Blocking splices in the workers (no poll, one parked worker per pump)
 * looked cheaper and deadlock: a socket -> pipe splice holds the pipe's
 * mutex while it sleeps for data (splice_file_to_pipe), so the out splice
 * of the same pipe cannot take the bytes already there, and a request /
 * response exchange stalls with its last message in the pipe.
 *
 * io-wq workers get the proxy's own CPU affinity (IORING_REGISTER_IOWQ_AFF)
 * so the proxy cannot borrow the load generator's CPU through them; their
 * time is the process's (they are threads of it), so psutil counts it.
 *
 * A FIN (in splice returns 0) is passed on as shutdown(SHUT_WR) of the other
 * side once the pipe is drained; when both directions have done so the pair
 * closes. Any error ends both: the sockets are shut down (which wakes what
 * waits on them), every op still in flight is cancelled, and the fds close
 * when the last completion is in.
 *
 * Not measured, so kept simple: accept is a multishot IORING_OP_ACCEPT, but
 * the connect to the upstream is a blocking connect(2) in the loop. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <liburing.h>

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef IORING_SETUP_SUBMIT_ALL
#define IORING_SETUP_SUBMIT_ALL (1U << 7) /* Linux 5.18 */
#endif
#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12) /* Linux 6.0 */
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13) /* Linux 6.1 */
#endif
#ifndef IORING_ASYNC_CANCEL_ALL
#define IORING_ASYNC_CANCEL_ALL (1U << 0) /* Linux 5.19 */
#endif

#define RING_ENTRIES 4096
#define PAIRS_MAX 4096
#define PIPE_SIZE_BYTES (1u << 20)
#define BACKLOG 4096
#define SPLICE_FLAGS (SPLICE_F_MOVE | SPLICE_F_NONBLOCK)

/* user_data: a pump's address with the op in the low bits (a pump is
 * 8-aligned), or one of the two specials below (address 0). */
enum op { OP_IN = 0, OP_OUT = 1, OP_POLL_IN = 2, OP_POLL_OUT = 3 };
#define OP_MASK ((uint64_t)7)
#define UD_ACCEPT ((uint64_t)1)
#define UD_CANCEL ((uint64_t)2)

struct pair;

struct pump {
    struct pair *pair;
    int src, dst;
    int pipe_r, pipe_w;
    uint32_t cap;     /* the pipe's size */
    uint32_t queued;  /* bytes in the pipe whose in splice has completed */
    bool in_busy;     /* an in splice (and maybe its poll) is in flight */
    bool out_busy;
    bool in_blocked;  /* in got EAGAIN on a non-empty pipe: out of pipe slots */
    bool eof;         /* src has sent its FIN */
    bool shut;        /* ... and it was passed on: shutdown(dst, SHUT_WR) */
};

struct pair {
    struct pump pump[2]; /* [0] client -> upstream, [1] upstream -> client */
    int fd[2];           /* client, upstream */
    uint32_t pending;    /* SQEs whose CQE is still to come */
    bool dead;
    struct pair *next_free;
};

struct proxy {
    struct io_uring ring;
    bool syscall_splice; /* SPLICE_PROXY_OPS=syscall */
    uint32_t pipe_min; /* the smallest pipe a pump got (stats) */
    struct sockaddr_storage upstream;
    socklen_t upstream_len;
    int listen_fd;
    struct pair *pairs, *free_list;
    uint64_t clients, upstream_failed, rejected, graceful, errors, splices_in, splices_out,
        eagain_in, eagain_out, bytes;
    int first_error;
};

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static struct io_uring_sqe *sqe_get(struct proxy *px)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&px->ring);
    if (sqe == NULL) {
        io_uring_submit(&px->ring);
        sqe = io_uring_get_sqe(&px->ring);
    }
    if (sqe == NULL) {
        fprintf(stderr, "splice_proxy: submission queue full\n");
        exit(1);
    }
    return sqe;
}

static uint64_t ud_of(struct pump *d, enum op op)
{
    return (uint64_t)(uintptr_t)d | (uint64_t)op;
}

/* The in side: a poll for readability and, with IORING_OP_SPLICE, the
 * splice linked behind it. The splice asks for the room left in the pipe by
 * byte count; the kernel clamps it further to the free pipe slots. */
static void in_arm(struct proxy *px, struct pump *d)
{
    assert(!d->in_busy);
    assert(!d->eof);
    assert(d->queued < d->cap);
    struct io_uring_sqe *sqe = sqe_get(px);
    io_uring_prep_poll_add(sqe, d->src, POLLIN);
    io_uring_sqe_set_data64(sqe, ud_of(d, OP_POLL_IN));
    d->pair->pending++;
    d->in_busy = true;
    if (px->syscall_splice)
        return; /* the splice runs when the poll completes */
    sqe->flags |= IOSQE_IO_LINK;
    sqe = sqe_get(px);
    io_uring_prep_splice(sqe, d->src, -1, d->pipe_w, -1, d->cap - d->queued, SPLICE_FLAGS);
    io_uring_sqe_set_data64(sqe, ud_of(d, OP_IN));
    d->pair->pending++;
}

/* The out side as io_uring ops: the splice of everything in the pipe, or
 * (after an EAGAIN) a poll for writability with, for IORING_OP_SPLICE, the
 * splice linked behind it. */
static void out_arm(struct proxy *px, struct pump *d, bool after_poll)
{
    assert(!d->out_busy);
    assert(d->queued > 0);
    assert(after_poll || !px->syscall_splice);
    struct io_uring_sqe *sqe;
    d->out_busy = true;
    if (after_poll) {
        sqe = sqe_get(px);
        io_uring_prep_poll_add(sqe, d->dst, POLLOUT);
        io_uring_sqe_set_data64(sqe, ud_of(d, OP_POLL_OUT));
        d->pair->pending++;
        if (px->syscall_splice)
            return;
        sqe->flags |= IOSQE_IO_LINK;
    }
    sqe = sqe_get(px);
    io_uring_prep_splice(sqe, d->pipe_r, -1, d->dst, -1, d->queued, SPLICE_FLAGS);
    io_uring_sqe_set_data64(sqe, ud_of(d, OP_OUT));
    d->pair->pending++;
}

static void pair_release(struct proxy *px, struct pair *pr)
{
    assert(pr->pending == 0);
    for (int i = 0; i < 2; i++) {
        close(pr->fd[i]);
        close(pr->pump[i].pipe_r);
        close(pr->pump[i].pipe_w);
    }
    memset(pr, 0, sizeof *pr);
    pr->next_free = px->free_list;
    px->free_list = pr;
}

/* Both ends go: shutting the sockets down wakes every splice and poll that
 * waits on them; cancelling covers the rest. The fds close with the last
 * completion, so the pair may be gone when this returns. */
static void pair_fail(struct proxy *px, struct pair *pr, int res)
{
    if (pr->dead)
        return;
    pr->dead = true;
    px->errors++;
    if (px->first_error == 0)
        px->first_error = res;
    shutdown(pr->fd[0], SHUT_RDWR);
    shutdown(pr->fd[1], SHUT_RDWR);
    for (int i = 0; i < 2; i++) {
        for (enum op op = OP_IN; op <= OP_POLL_OUT; op++) {
            struct io_uring_sqe *sqe = sqe_get(px);
            io_uring_prep_cancel64(sqe, ud_of(&pr->pump[i], op), IORING_ASYNC_CANCEL_ALL);
            io_uring_sqe_set_data64(sqe, UD_CANCEL);
        }
    }
    if (pr->pending == 0)
        pair_release(px, pr);
}

/* An out splice's result, however it ran. False: the pair has failed (and
 * may be gone). */
static bool out_result(struct proxy *px, struct pump *d, int res)
{
    if (res > 0) {
        px->splices_out++;
        px->bytes += (uint64_t)res;
        assert((uint32_t)res <= d->queued);
        d->queued -= (uint32_t)res;
        d->in_blocked = false;
        return true;
    }
    if (res == -EAGAIN) {
        px->eagain_out++;
        out_arm(px, d, true);
        return true;
    }
    /* 0 cannot come from a pipe known to hold bytes: an error too. */
    pair_fail(px, d->pair, res == 0 ? -EIO : res);
    return false;
}

/* Whatever the pump can start now. Never re-entered: the splice(2)s it
 * makes report through out_result, which only arms ops. */
static void pump_kick(struct proxy *px, struct pump *d)
{
    while (!d->out_busy && d->queued > 0) {
        if (!px->syscall_splice) {
            out_arm(px, d, false);
            break;
        }
        ssize_t n = splice(d->pipe_r, NULL, d->dst, NULL, d->queued, SPLICE_FLAGS);
        if (!out_result(px, d, n < 0 ? -errno : (int)n))
            return;
    }
    if (!d->in_busy && !d->eof && !d->in_blocked && d->queued < d->cap)
        in_arm(px, d);
    if (d->eof && d->queued == 0 && !d->out_busy && !d->shut) {
        d->shut = true;
        shutdown(d->dst, SHUT_WR);
        struct pair *pr = d->pair;
        if (pr->pump[0].shut && pr->pump[1].shut) {
            assert(pr->pending == 0);
            px->graceful++;
            pair_release(px, pr);
        }
    }
}

/* An in splice's result, however it ran. */
static void on_in(struct proxy *px, struct pump *d, int res)
{
    d->in_busy = false;
    if (res > 0) {
        px->splices_in++;
        d->queued += (uint32_t)res;
        assert(d->queued <= d->cap);
    } else if (res == 0) {
        d->eof = true;
    } else if (res == -EAGAIN) {
        /* Poll said readable, yet nothing came: spurious, poll again. Or the
         * pipe ran out of slots (one per skb fragment, not per byte): wait
         * for the out splice to free some. */
        px->eagain_in++;
        if (d->queued > 0)
            d->in_blocked = true;
    } else {
        pair_fail(px, d->pair, res);
        return;
    }
    pump_kick(px, d);
}

static void on_pump_cqe(struct proxy *px, struct pump *d, enum op op, int res)
{
    switch (op) {
    case OP_IN:
        on_in(px, d, res);
        break;
    case OP_OUT:
        d->out_busy = false;
        if (out_result(px, d, res))
            pump_kick(px, d);
        break;
    case OP_POLL_IN:
    case OP_POLL_OUT:
        /* With IORING_OP_SPLICE the linked splice reports what the socket
         * has (a failed poll fails it with ECANCELED): nothing to do. */
        if (!px->syscall_splice)
            break;
        if (res < 0) {
            pair_fail(px, d->pair, res);
        } else if (op == OP_POLL_IN) {
            ssize_t n = splice(d->src, NULL, d->pipe_w, NULL, d->cap - d->queued, SPLICE_FLAGS);
            on_in(px, d, n < 0 ? -errno : (int)n);
        } else {
            d->out_busy = false;
            pump_kick(px, d);
        }
        break;
    }
}

/* A pipe for one pump; its size, or a negative errno. */
static int pipe_make(struct proxy *px, int p[2])
{
    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0)
        return -errno;
    /* Beyond fs.pipe-max-size or pipe-user-pages-soft this fails (EPERM)
     * for an unprivileged user: the pipe keeps its default size. */
    int got = fcntl(p[1], F_SETPIPE_SZ, (int)PIPE_SIZE_BYTES);
    if (got < 0)
        got = fcntl(p[1], F_GETPIPE_SZ);
    if (got <= 0) {
        int e = got < 0 ? errno : EINVAL;
        close(p[0]);
        close(p[1]);
        return -e;
    }
    if (px->pipe_min == 0 || (uint32_t)got < px->pipe_min)
        px->pipe_min = (uint32_t)got;
    return got;
}

static void on_accept(struct proxy *px, int client)
{
    px->clients++;
    struct pair *pr = px->free_list;
    if (pr == NULL) {
        px->rejected++;
        close(client);
        return;
    }
    int up = socket(px->upstream.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    /* Blocking connect: not the measured part (loadgen connects before its
     * window opens). */
    if (up < 0 || connect(up, (struct sockaddr *)&px->upstream, px->upstream_len) != 0) {
        px->upstream_failed++;
        if (up >= 0)
            close(up);
        close(client);
        return;
    }
    int one = 1;
    setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(up, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(client, F_SETFL, fcntl(client, F_GETFL) | O_NONBLOCK);
    fcntl(up, F_SETFL, fcntl(up, F_GETFL) | O_NONBLOCK);
    int p0[2], p1[2];
    int cap0 = pipe_make(px, p0), cap1 = cap0 < 0 ? -1 : pipe_make(px, p1);
    if (cap0 < 0) {
        close(up);
        close(client);
        px->upstream_failed++;
        return;
    }
    if (cap1 < 0) {
        close(p0[0]);
        close(p0[1]);
        close(up);
        close(client);
        px->upstream_failed++;
        return;
    }
    px->free_list = pr->next_free;
    *pr = (struct pair){.fd = {client, up}};
    pr->pump[0] = (struct pump){.pair = pr, .src = client, .dst = up, .pipe_r = p0[0],
                                .pipe_w = p0[1], .cap = (uint32_t)cap0};
    pr->pump[1] = (struct pump){.pair = pr, .src = up, .dst = client, .pipe_r = p1[0],
                                .pipe_w = p1[1], .cap = (uint32_t)cap1};
    pump_kick(px, &pr->pump[0]);
    pump_kick(px, &pr->pump[1]);
}

static void accept_arm(struct proxy *px)
{
    struct io_uring_sqe *sqe = sqe_get(px);
    io_uring_prep_multishot_accept(sqe, px->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, UD_ACCEPT);
}

static void on_cqe(struct proxy *px, const struct io_uring_cqe *cqe)
{
    uint64_t ud = cqe->user_data;
    if (ud == UD_CANCEL)
        return;
    if (ud == UD_ACCEPT) {
        if (cqe->res >= 0)
            on_accept(px, cqe->res);
        else if (cqe->res != -EINTR && cqe->res != -ECONNABORTED)
            fprintf(stderr, "splice_proxy: accept: %s\n", strerror(-cqe->res));
        if (!(cqe->flags & IORING_CQE_F_MORE))
            accept_arm(px);
        return;
    }
    struct pump *d = (struct pump *)(uintptr_t)(ud & ~OP_MASK);
    struct pair *pr = d->pair;
    assert(pr->pending > 0);
    pr->pending--;
    enum op op = (enum op)(ud & OP_MASK);
    if (pr->dead) {
        if (pr->pending == 0)
            pair_release(px, pr);
        return;
    }
    on_pump_cqe(px, d, op, cqe->res);
}

static bool parse_addr(const char *arg, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[128];
    const char *colon = strrchr(arg, ':');
    if (colon == NULL || colon == arg || (size_t)(colon - arg) >= sizeof host)
        return false;
    size_t hlen = (size_t)(colon - arg);
    const char *h = arg;
    if (h[0] == '[') {
        if (hlen < 3 || h[hlen - 1] != ']')
            return false;
        h++;
        hlen -= 2;
    }
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    struct addrinfo hints = {.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV,
                             .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai = NULL;
    if (getaddrinfo(host, colon + 1, &hints, &ai) != 0 || ai == NULL)
        return false;
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    *len = ai->ai_addrlen;
    freeaddrinfo(ai);
    return true;
}

static void addr_format(const struct sockaddr_storage *ss, char *out, size_t cap)
{
    char host[INET6_ADDRSTRLEN];
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const void *)ss;
        inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof host);
        snprintf(out, cap, "[%s]:%u", host, ntohs(s6->sin6_port));
    } else {
        const struct sockaddr_in *s4 = (const void *)ss;
        inet_ntop(AF_INET, &s4->sin_addr, host, sizeof host);
        snprintf(out, cap, "%s:%u", host, ntohs(s4->sin_port));
    }
}

static int ring_init(struct proxy *px)
{
    static const unsigned tiers[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL,
        IORING_SETUP_SUBMIT_ALL, 0};
    int ret = -EINVAL;
    for (size_t i = 0; i < sizeof tiers / sizeof tiers[0]; i++) {
        struct io_uring_params p = {.flags = tiers[i]};
        ret = io_uring_queue_init_params(RING_ENTRIES, &px->ring, &p);
        if (ret != -EINVAL)
            break;
    }
    if (ret < 0)
        return ret;
    /* The workers that run the splices stay on the proxy's CPUs. */
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        io_uring_register_iowq_aff(&px->ring, sizeof set, &set);
    return 0;
}

int main(int argc, char **argv)
{
    static struct proxy px;
    struct sockaddr_storage listen_addr;
    socklen_t listen_len;
    if (argc != 3 || !parse_addr(argv[1], &listen_addr, &listen_len) ||
        !parse_addr(argv[2], &px.upstream, &px.upstream_len)) {
        fprintf(stderr, "usage: %s LISTEN_HOST:PORT UPSTREAM_HOST:PORT  (address literals; "
                "[v6]:port; listen port 0 = any)\n  SPLICE_PROXY_OPS=uring|syscall\n",
                argc > 0 ? argv[0] : "splice_proxy");
        return 2;
    }
    const char *ops = getenv("SPLICE_PROXY_OPS");
    if (ops != NULL && strcmp(ops, "syscall") == 0) {
        px.syscall_splice = true;
    } else if (ops != NULL && strcmp(ops, "uring") != 0) {
        fprintf(stderr, "splice_proxy: SPLICE_PROXY_OPS is uring or syscall\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);

    px.pairs = calloc(PAIRS_MAX, sizeof *px.pairs);
    if (px.pairs == NULL) {
        fprintf(stderr, "splice_proxy: out of memory\n");
        return 1;
    }
    for (size_t i = PAIRS_MAX; i-- > 0;) {
        px.pairs[i].next_free = px.free_list;
        px.free_list = &px.pairs[i];
    }
    int ret = ring_init(&px);
    if (ret < 0) {
        fprintf(stderr, "splice_proxy: io_uring_queue_init: %s (io_uring disabled by sysctl "
                "kernel.io_uring_disabled?)\n", strerror(-ret));
        return 1;
    }
    px.listen_fd = socket(listen_addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (px.listen_fd < 0 ||
        setsockopt(px.listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(px.listen_fd, (struct sockaddr *)&listen_addr, listen_len) != 0 ||
        listen(px.listen_fd, BACKLOG) != 0 ||
        getsockname(px.listen_fd, (struct sockaddr *)&listen_addr, &listen_len) != 0) {
        fprintf(stderr, "splice_proxy: listen on %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: the wait returns EINTR */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    char la[80], ua[80];
    addr_format(&listen_addr, la, sizeof la);
    addr_format(&px.upstream, ua, sizeof ua);
    printf("splice_proxy listening on %s, upstream %s\n", la, ua);
    accept_arm(&px);
    while (!g_stop) {
        ret = io_uring_submit_and_wait(&px.ring, 1);
        if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
            fprintf(stderr, "splice_proxy: io_uring_submit_and_wait: %s\n", strerror(-ret));
            break;
        }
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&px.ring, head, cqe)
        {
            on_cqe(&px, cqe);
            seen++;
        }
        io_uring_cq_advance(&px.ring, seen);
    }
    printf("splice_proxy stats: ops=%s pipe_bytes=%" PRIu32 " clients=%" PRIu64
           " upstream_failed=%" PRIu64 " rejected=%" PRIu64 " graceful=%" PRIu64
           " errors=%" PRIu64 " first_error=%s splices_in=%" PRIu64 " splices_out=%" PRIu64
           " eagain_in=%" PRIu64 " eagain_out=%" PRIu64 " bytes_out=%" PRIu64 "\n",
           px.syscall_splice ? "syscall" : "uring", px.pipe_min, px.clients, px.upstream_failed,
           px.rejected, px.graceful, px.errors,
           px.first_error ? strerror(-px.first_error) : "none", px.splices_in, px.splices_out,
           px.eagain_in, px.eagain_out, px.bytes);
    /* Exit tears down the ring, which cancels what is still in flight. */
    return ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY ? 1 : 0;
}
