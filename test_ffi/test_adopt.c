/* What the asyncio loop (zcn/aio.py) needs from C: zcn_loop_adopt (a
 * connected socket made elsewhere becomes a loop connection: echo in
 * callback and poll mode, either side of a connection, a unix socketpair,
 * half-close, and every refusal leaving the fd as it was),
 * zcn_loop_pause_recv / resume_recv (nothing delivered and little held
 * while the peer fills its buffers, then all of it in order, EOF and close
 * after the data), zcn_loop_notify_drain (one DRAIN at the mark), the
 * errno in a CLOSE event's offset, and an unwatch that reaches the kernel
 * before the caller closes the fd. Real sockets on 127.0.0.1 (and unix
 * socketpairs) made by the test with plain socket calls; every wait is
 * bounded. */
#include "t_helpers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

/* c/internal.h: the next `count` SQE requests find none free. */
void zcn_test_fail_sqes(uint32_t count);

#define KiB 1024u
#define MiB (1024u * 1024u)

/* Runs the loop (callback mode) until cond holds or ms have passed, then
 * checks cond. */
#define RUN_UNTIL(l, cond, ms)                                                 \
    do {                                                                       \
        uint64_t dl_ = t_mono_ms() + (ms);                                     \
        while (!(cond) && t_mono_ms() < dl_)                                   \
            t_turn((l), 5);                                                      \
        if (!(cond))                                                           \
            fprintf(stderr, "%s:%d: not within %d ms: %s\n", __FILE__,         \
                    __LINE__, (int)(ms), #cond);                               \
        T_CHECK(cond);                                                         \
    } while (0)

static void run_for(ZCN_Loop *l, int ms)
{
    uint64_t dl = t_mono_ms() + (uint64_t)ms;
    for (uint64_t now = t_mono_ms(); now < dl; now = t_mono_ms())
        t_turn(l, (int)(dl - now));
}

static struct sockaddr_in loopback(uint16_t port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static uint16_t port_of(int fd)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    T_CHECK(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
    return ntohs(a.sin_port);
}

/* A plain listening socket on 127.0.0.1, an ephemeral port. */
static int plain_listener(uint16_t *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    T_CHECK(fd >= 0);
    struct sockaddr_in a = loopback(0);
    T_CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
    T_CHECK(listen(fd, 16) == 0);
    *port = port_of(fd);
    return fd;
}

/* Every blocking call the test makes on its own sockets ends within
 * `seconds`. */
static void bound_blocking_s(int fd, int seconds)
{
    struct timeval tv = {.tv_sec = seconds};
    T_CHECK(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
    T_CHECK(setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) == 0);
}

static void bound_blocking(int fd)
{
    bound_blocking_s(fd, 2);
}

/* A TCP connection made with plain socket calls: *acc from accept() on a
 * listen() socket, *cli from connect(). client_rcvbuf (0: the default)
 * is set on the client before connecting (a small window for the tests
 * whose peer does not read). */
static void tcp_pair(int *acc, int *cli, int client_rcvbuf)
{
    uint16_t port;
    int l = plain_listener(&port);
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    T_CHECK(c >= 0);
    if (client_rcvbuf > 0)
        T_CHECK(setsockopt(c, SOL_SOCKET, SO_RCVBUF, &client_rcvbuf, sizeof client_rcvbuf) == 0);
    bound_blocking_s(c, 10); /* a SYN lost on a loaded machine is resent after 1 s, 3 s */
    struct sockaddr_in a = loopback(port);
    if (connect(c, (struct sockaddr *)&a, sizeof a) != 0) {
        fprintf(stderr, "connect to a plain listener on port %u: %s\n", port, strerror(errno));
        T_CHECK(0);
    }
    bound_blocking(c);
    int s = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    T_CHECK(s >= 0);
    bound_blocking(s);
    close(l);
    *acc = s;
    *cli = c;
}

static bool fd_is_open(int fd)
{
    return fcntl(fd, F_GETFD) != -1;
}

static bool fd_is_closed(int fd)
{
    return fcntl(fd, F_GETFD) == -1 && errno == EBADF;
}

/* The byte at offset k of a test stream: a lost, duplicated or reordered
 * piece shows as a mismatch. */
static uint8_t pat(uint64_t k)
{
    return (uint8_t)(k % 251u);
}

static void check_pattern(uint64_t *off, const uint8_t *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (data[i] != pat(*off + i)) {
            fprintf(stderr, "stream byte %llu: got %u, expected %u\n",
                    (unsigned long long)(*off + i), data[i], pat(*off + i));
            T_CHECK(0);
        }
    }
    *off += len;
}

/* Writes the pattern from *off without blocking, at most max bytes;
 * returns what was written (0 when the socket buffer is full). */
static size_t peer_fill(int fd, uint64_t *off, size_t max)
{
    uint8_t buf[64 * 1024];
    size_t total = 0;
    while (total < max) {
        size_t n = max - total < sizeof buf ? max - total : sizeof buf;
        for (size_t i = 0; i < n; i++)
            buf[i] = pat(*off + i);
        ssize_t w = send(fd, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w < 0) {
            T_CHECK(errno == EAGAIN || errno == EWOULDBLOCK);
            break;
        }
        *off += (uint64_t)w;
        total += (size_t)w;
    }
    return total;
}

/* Reads what is there without blocking, at most max bytes, checking the
 * pattern; sets *eof on end of stream. */
static size_t peer_drain(int fd, uint64_t *off, size_t max, bool *eof)
{
    uint8_t buf[64 * 1024];
    size_t total = 0;
    while (total < max) {
        size_t n = max - total < sizeof buf ? max - total : sizeof buf;
        ssize_t r = recv(fd, buf, n, MSG_DONTWAIT);
        if (r == 0) {
            if (eof != NULL)
                *eof = true;
            break;
        }
        if (r < 0) {
            T_CHECK(errno == EAGAIN || errno == EWOULDBLOCK);
            break;
        }
        check_pattern(off, buf, (size_t)r);
        total += (size_t)r;
    }
    return total;
}

/* Appends what the peer has (no wait) to buf; returns the new length. */
static size_t peer_read_text(int fd, char *buf, size_t *len, size_t cap)
{
    ssize_t r = recv(fd, buf + *len, cap - 1 - *len, MSG_DONTWAIT);
    if (r > 0)
        *len += (size_t)r;
    buf[*len] = 0;
    return *len;
}

static uint64_t loop_stats_active(ZCN_Loop *l)
{
    ZCN_LoopStats st;
    T_CHECK_ERR(zcn_loop_stats(l, &st), ZCN_OK);
    return st.tcp.connections_active;
}

static uint64_t loop_stats_watches(ZCN_Loop *l)
{
    ZCN_LoopStats st;
    T_CHECK_ERR(zcn_loop_stats(l, &st), ZCN_OK);
    return st.watches_active;
}

static ZCN_ConnInfo conn_info(ZCN_Loop *l, int fd)
{
    ZCN_ConnInfo ci;
    T_CHECK_ERR(zcn_loop_conn_info(l, fd, &ci), ZCN_OK);
    return ci;
}

/* Runs fn(arg) on a thread of its own and waits for it. */
struct job {
    void (*fn)(void *);
    void *arg;
};

static void *job_main(void *p)
{
    struct job *j = p;
    j->fn(j->arg);
    return NULL;
}

static void on_other_thread(void (*fn)(void *), void *arg)
{
    struct job j = {fn, arg};
    pthread_t th;
    T_CHECK(pthread_create(&th, NULL, job_main, &j) == 0);
    T_CHECK(pthread_join(th, NULL) == 0);
}

/* ---- one adopted connection in callback mode ----------------------------- */

struct cconn {
    ZCN_Loop *loop;
    int fd;
    bool echo;              /* send back what comes */
    bool pattern;           /* data is a pattern stream: check it */
    bool pause_in_data;     /* zcn_loop_pause_recv from the first on_data */
    uint64_t got;           /* bytes received */
    char text[4096];        /* what came, for short messages */
    int data_calls, closes, eofs, drains;
    bool open_in_on_close;  /* the fd was still open while on_close ran */
    uint64_t got_at_close, got_at_eof;
    size_t queued_at_drain;
    const char *eof_reply;  /* sent from on_eof */
};

static void cc_data(void *ud, int fd, const uint8_t *data, size_t len)
{
    struct cconn *c = ud;
    T_CHECK(fd == c->fd);
    T_CHECK(c->closes == 0);
    c->data_calls++;
    if (c->pattern) {
        check_pattern(&c->got, data, len);
    } else {
        T_CHECK(c->got + len < sizeof c->text);
        memcpy(c->text + c->got, data, len);
        c->got += len;
        c->text[c->got] = 0;
    }
    if (c->echo)
        T_CHECK_ERR(zcn_loop_send(c->loop, fd, data, len), ZCN_OK);
    if (c->pause_in_data && c->data_calls == 1)
        T_CHECK_ERR(zcn_loop_pause_recv(c->loop, fd), ZCN_OK);
}

static void cc_close(void *ud, int fd)
{
    struct cconn *c = ud;
    T_CHECK(fd == c->fd);
    c->closes++;
    c->open_in_on_close = fd_is_open(fd);
    c->got_at_close = c->got;
    /* the connection is gone for the API from here */
    T_CHECK_ERR(zcn_loop_send(c->loop, fd, (const uint8_t *)"x", 1), ZCN_ERR_CLOSED);
}

static void cc_eof(void *ud, int fd)
{
    struct cconn *c = ud;
    T_CHECK(fd == c->fd);
    c->eofs++;
    c->got_at_eof = c->got;
    if (c->eof_reply != NULL)
        T_CHECK_ERR(zcn_loop_send(c->loop, fd, (const uint8_t *)c->eof_reply,
                                  strlen(c->eof_reply)),
                    ZCN_OK);
}

static void cc_drain(void *ud, int fd)
{
    struct cconn *c = ud;
    T_CHECK(fd == c->fd);
    c->drains++;
    c->queued_at_drain = zcn_loop_queued_bytes(c->loop, fd);
}

static void cc_connect_never(void *ud, int fd, ZCN_Error result)
{
    (void)ud;
    fprintf(stderr, "on_connect called for adopted fd %d (%s)\n", fd, zcn_error_name(result));
    T_CHECK(0);
}

static ZCN_ConnectConfig cc_config(struct cconn *c, bool half_close)
{
    ZCN_ConnectConfig cc = {
        .user_data = c,
        .on_connect = cc_connect_never, /* adopt never calls it */
        .on_data = cc_data,
        .on_close = cc_close,
        .on_drain = cc_drain,
        .on_eof = half_close ? cc_eof : NULL,
    };
    return cc;
}

/* ---- one adopted connection in poll mode ---------------------------------- */

struct pconn {
    int fd;
    uint32_t tag;
    bool echo;
    bool pattern;
    uint64_t got;
    char text[4096];
    int data_events, closes, eofs, drains;
    uint64_t close_offset;
    bool open_at_close_event;
    uint64_t got_at_close, got_at_eof;
    size_t queued_at_drain;
    size_t drain_log[8];    /* queued bytes at each DRAIN */
};

/* One zcn_loop_poll; every event must be for one of the n connections and
 * carry its tag. Returns the number of events. */
static uint32_t pump(ZCN_Loop *l, struct pconn **pcs, int n, int timeout_ms)
{
    ZCN_Event ev[64];
    uint32_t count = 0;
    ZCN_Error e = zcn_loop_poll(l, ev, 64, timeout_ms, &count);
    T_CHECK(e == ZCN_OK || e == (ZCN_Error)EINTR);
    for (uint32_t i = 0; i < count; i++) {
        struct pconn *p = NULL;
        for (int k = 0; k < n; k++)
            if (pcs[k]->fd == ev[i].fd)
                p = pcs[k];
        if (p == NULL) {
            fprintf(stderr, "unexpected event %u for fd %d\n", ev[i].type, ev[i].fd);
            T_CHECK(0);
        }
        T_CHECK(ev[i].tag == p->tag);
        T_CHECK(p->closes == 0); /* nothing after CLOSE */
        switch (ev[i].type) {
        case ZCN_EVENT_DATA:
            p->data_events++;
            T_CHECK(ev[i].data == zcn_loop_buffer_base(l) + ev[i].offset);
            if (p->pattern) {
                check_pattern(&p->got, ev[i].data, ev[i].len);
            } else {
                T_CHECK(p->got + ev[i].len < sizeof p->text);
                memcpy(p->text + p->got, ev[i].data, ev[i].len);
                p->got += ev[i].len;
                p->text[p->got] = 0;
            }
            if (p->echo) /* lent memory: the buffer moves, no copy */
                T_CHECK_ERR(zcn_loop_send(l, p->fd, ev[i].data, ev[i].len), ZCN_OK);
            break;
        case ZCN_EVENT_EOF:
            p->eofs++;
            p->got_at_eof = p->got;
            break;
        case ZCN_EVENT_CLOSE:
            p->closes++;
            p->close_offset = ev[i].offset;
            p->open_at_close_event = fd_is_open(p->fd);
            p->got_at_close = p->got;
            break;
        case ZCN_EVENT_DRAIN:
            p->queued_at_drain = zcn_loop_queued_bytes(l, p->fd);
            if (p->drains < 8)
                p->drain_log[p->drains] = p->queued_at_drain;
            p->drains++;
            break;
        default:
            fprintf(stderr, "unexpected event %u for fd %d\n", ev[i].type, ev[i].fd);
            T_CHECK(0);
        }
    }
    return count;
}

#define PUMP_UNTIL(l, p, cond, ms)                                             \
    do {                                                                       \
        struct pconn *pp_[1] = {(p)};                                          \
        uint64_t dl_ = t_mono_ms() + (ms);                                     \
        while (!(cond) && t_mono_ms() < dl_)                                   \
            pump((l), pp_, 1, 5);                                              \
        if (!(cond))                                                           \
            fprintf(stderr, "%s:%d: not within %d ms: %s\n", __FILE__,         \
                    __LINE__, (int)(ms), #cond);                               \
        T_CHECK(cond);                                                         \
    } while (0)

static void pump_for(ZCN_Loop *l, struct pconn *p, int ms)
{
    struct pconn *pp[1] = {p};
    uint64_t dl = t_mono_ms() + (uint64_t)ms;
    while (t_mono_ms() < dl)
        pump(l, pp, 1, 5);
}

static ZCN_Error adopt_poll(ZCN_Loop *l, struct pconn *p, int fd, uint32_t tag, uint32_t flags)
{
    memset(p, 0, sizeof *p);
    p->fd = fd;
    p->tag = tag;
    ZCN_ConnectConfig cc = {.tag = tag, .flags = flags};
    return zcn_loop_adopt(l, fd, &cc);
}

/* ---- 1. adopt ------------------------------------------------------------ */

/* Callback mode, the accepted or the connect()ed side adopted: echo, a
 * close by the loop, on_close once with the fd still open during it, the
 * fd closed afterwards; no on_connect. */
static void test_adopt_callback(bool accepted_side)
{
    int fds = t_open_fds();
    ZCN_Loop *l = t_new_loop(NULL);
    int acc, cli;
    tcp_pair(&acc, &cli, 0);
    int fd = accepted_side ? acc : cli, peer = accepted_side ? cli : acc;
    struct cconn c = {.loop = l, .fd = fd, .echo = true};
    ZCN_ConnectConfig cc = cc_config(&c, false);
    T_CHECK_ERR(zcn_loop_adopt(l, fd, &cc), ZCN_OK);
    T_CHECK(fd_is_open(fd));
    T_CHECK(loop_stats_active(l) == 1);
    const char *msg = "hello through an adopted socket";
    T_CHECK(send(peer, msg, strlen(msg), 0) == (ssize_t)strlen(msg));
    char back[256];
    size_t back_len = 0;
    RUN_UNTIL(l, peer_read_text(peer, back, &back_len, sizeof back) >= strlen(msg), 2000);
    T_CHECK(strcmp(back, msg) == 0);
    T_CHECK(strcmp(c.text, msg) == 0);
    T_CHECK(c.closes == 0);
    ZCN_ConnInfo ci = conn_info(l, fd);
    T_CHECK(ci.bytes_received == strlen(msg) && ci.bytes_sent == strlen(msg));

    T_CHECK_ERR(zcn_loop_close(l, fd), ZCN_OK);
    RUN_UNTIL(l, c.closes > 0, 2000);
    run_for(l, 30);
    T_CHECK(c.closes == 1);
    T_CHECK(c.open_in_on_close);
    T_CHECK(fd_is_closed(fd));
    char b;
    T_CHECK(recv(peer, &b, 1, 0) == 0); /* the peer saw the FIN */
    close(peer);
    T_CHECK(loop_stats_active(l) == 0);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    T_CHECK(t_open_fds() == fds);
    fprintf(stderr, "adopt %s fd, callbacks: %zu bytes echoed, zcn_loop_close -> on_close once "
            "(fd open during it), fd closed after\n", accepted_side ? "accept()ed" : "connect()ed",
            strlen(msg));
}

/* Poll mode, either side adopted: DATA with the tag, echo of lent memory,
 * the peer's close -> one CLOSE, the fd reserved until the next poll and
 * closed by it. */
static void test_adopt_poll(bool accepted_side)
{
    int fds = t_open_fds();
    ZCN_Loop *l = t_new_loop(NULL);
    int acc, cli;
    tcp_pair(&acc, &cli, 0);
    int fd = accepted_side ? acc : cli, peer = accepted_side ? cli : acc;
    struct pconn p;
    T_CHECK_ERR(adopt_poll(l, &p, fd, 77, 0), ZCN_OK);
    p.echo = true;
    const char *msg = "ping from the peer";
    T_CHECK(send(peer, msg, strlen(msg), 0) == (ssize_t)strlen(msg));
    char back[256];
    size_t back_len = 0;
    PUMP_UNTIL(l, &p, peer_read_text(peer, back, &back_len, sizeof back) >= strlen(msg), 2000);
    T_CHECK(strcmp(back, msg) == 0 && strcmp(p.text, msg) == 0);
    T_CHECK(p.data_events >= 1);

    close(peer); /* the peer's FIN: no half-close, so the loop closes */
    PUMP_UNTIL(l, &p, p.closes > 0, 2000);
    T_CHECK(p.closes == 1);
    T_CHECK(p.open_at_close_event);
    T_CHECK(fd_is_open(fd)); /* reserved until the next poll */
    T_CHECK(p.close_offset == 0);
    ZCN_ConnectConfig again = {0};
    T_CHECK_ERR(zcn_loop_adopt(l, fd, &again), ZCN_ERR_BUSY); /* still the loop's */
    struct pconn *pp[1] = {&p};
    pump(l, pp, 1, 0);
    T_CHECK(fd_is_closed(fd));
    pump_for(l, &p, 30);
    T_CHECK(p.closes == 1);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    T_CHECK(t_open_fds() == fds);
    fprintf(stderr, "adopt %s fd, poll: DATA tag 77, echo, peer FIN -> one CLOSE (offset 0), "
            "fd open until the next poll, closed by it\n",
            accepted_side ? "accept()ed" : "connect()ed");
}

/* The fd's state as a caller sees it: what an adopt that failed must
 * leave exactly as it was. */
struct fd_state {
    int fdflags, flflags;
};

static struct fd_state fd_state(int fd)
{
    struct fd_state st = {fcntl(fd, F_GETFD), fcntl(fd, F_GETFL)};
    T_CHECK(st.fdflags != -1 && st.flflags != -1);
    return st;
}

static void check_untouched(int fd, struct fd_state before)
{
    struct fd_state now = fd_state(fd);
    T_CHECK(now.fdflags == before.fdflags);
    T_CHECK(now.flflags == before.flflags);
}

/* zcn_loop_adopt(l, fd, cc) must fail with `expected` and leave fd open
 * and as it was. */
#define ADOPT_FAILS(l, fd, cc, expected)                                       \
    do {                                                                       \
        struct fd_state st_ = fd_state(fd);                                    \
        T_CHECK_ERR(zcn_loop_adopt((l), (fd), (cc)), (expected));              \
        check_untouched((fd), st_);                                            \
    } while (0)

struct wrong_thread_args {
    ZCN_Loop *loop;
    int fd;         /* not yet adopted */
    int conn_fd;    /* a connection of the loop */
};

static void wrong_thread_calls(void *arg)
{
    struct wrong_thread_args *a = arg;
    ZCN_ConnectConfig cc = {0};
    T_CHECK_ERR(zcn_loop_adopt(a->loop, a->fd, &cc), ZCN_ERR_WRONG_THREAD);
    T_CHECK_ERR(zcn_loop_pause_recv(a->loop, a->conn_fd), ZCN_ERR_WRONG_THREAD);
    T_CHECK_ERR(zcn_loop_resume_recv(a->loop, a->conn_fd), ZCN_ERR_WRONG_THREAD);
    T_CHECK_ERR(zcn_loop_notify_drain(a->loop, a->conn_fd, 0), ZCN_ERR_WRONG_THREAD);
}

static void test_adopt_errors(void)
{
    int fds = t_open_fds();
    ZCN_LoopConfig lc = {.connections_max = 2};
    ZCN_Loop *l = t_new_loop(&lc);
    ZCN_ConnectConfig cc = {0};
    int acc, cli;
    tcp_pair(&acc, &cli, 0);

    T_CHECK_ERR(zcn_loop_adopt(NULL, acc, &cc), ZCN_ERR_INVALID_ARGUMENT);
    ADOPT_FAILS(l, acc, NULL, ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_adopt(l, -1, &cc), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_adopt(l, -12345, &cc), ZCN_ERR_INVALID_ARGUMENT);
    ZCN_ConnectConfig bad_flags = {.flags = 1u << 7};
    ADOPT_FAILS(l, acc, &bad_flags, ZCN_ERR_INVALID_ARGUMENT);

    /* not a socket: a pipe (both ends), /dev/null */
    int p[2];
    T_CHECK(pipe2(p, O_CLOEXEC) == 0);
    ADOPT_FAILS(l, p[0], &cc, ZCN_ERR_INVALID_ARGUMENT);
    ADOPT_FAILS(l, p[1], &cc, ZCN_ERR_INVALID_ARGUMENT);
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    T_CHECK(devnull >= 0);
    ADOPT_FAILS(l, devnull, &cc, ZCN_ERR_INVALID_ARGUMENT);

    /* a closed fd number: the kernel's EBADF */
    int gone = dup(devnull);
    T_CHECK(gone >= 0);
    close(gone);
    T_CHECK_ERR(zcn_loop_adopt(l, gone, &cc), (ZCN_Error)EBADF);

    /* not a stream socket: UDP (also connected), unix SEQPACKET */
    int udp = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    T_CHECK(udp >= 0);
    ADOPT_FAILS(l, udp, &cc, ZCN_ERR_INVALID_ARGUMENT);
    struct sockaddr_in to = loopback(9);
    T_CHECK(connect(udp, (struct sockaddr *)&to, sizeof to) == 0);
    ADOPT_FAILS(l, udp, &cc, ZCN_ERR_INVALID_ARGUMENT);
    int sp[2];
    T_CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) == 0);
    ADOPT_FAILS(l, sp[0], &cc, ZCN_ERR_INVALID_ARGUMENT);

    /* TCP but not connected: a fresh socket, a listening one */
    int fresh = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    T_CHECK(fresh >= 0);
    ADOPT_FAILS(l, fresh, &cc, (ZCN_Error)ENOTCONN);
    uint16_t lport;
    int listener = plain_listener(&lport);
    ADOPT_FAILS(l, listener, &cc, (ZCN_Error)ENOTCONN);

    /* the same fd twice: BUSY, and the first adoption still works */
    struct cconn c1 = {.loop = l, .fd = acc, .echo = true};
    ZCN_ConnectConfig c1cfg = cc_config(&c1, false);
    T_CHECK_ERR(zcn_loop_adopt(l, acc, &c1cfg), ZCN_OK);
    ADOPT_FAILS(l, acc, &cc, ZCN_ERR_BUSY);
    ADOPT_FAILS(l, acc, &c1cfg, ZCN_ERR_BUSY);
    T_CHECK(send(cli, "one", 3, 0) == 3);
    char back[64];
    size_t back_len = 0;
    RUN_UNTIL(l, peer_read_text(cli, back, &back_len, sizeof back) >= 3, 2000);
    T_CHECK(strcmp(back, "one") == 0 && c1.data_calls >= 1);

    /* connections_max (2): a loop connect takes the second slot, then an
     * adopt finds none; the refused fd's data is still unread */
    ZCN_ConnectConfig to_listener = {.address = "127.0.0.1", .port = lport};
    int out_fd = -1;
    T_CHECK_ERR(zcn_loop_connect(l, &to_listener, &out_fd), ZCN_OK);
    int acc2, cli2;
    tcp_pair(&acc2, &cli2, 0);
    T_CHECK(send(cli2, "unread", 6, 0) == 6);
    usleep(10 * 1000);
    ADOPT_FAILS(l, acc2, &cc, ZCN_ERR_EXHAUSTED);
    char got[16] = "";
    T_CHECK(recv(acc2, got, sizeof got - 1, MSG_DONTWAIT) == 6);
    T_CHECK(strcmp(got, "unread") == 0);
    T_CHECK(loop_stats_active(l) == 2);

    /* over the fd table the loop sized from RLIMIT_NOFILE: EMFILE (a loop
     * made under a lowered soft limit, the limit then restored) */
    struct rlimit rl;
    bool emfile_tested = false;
    T_CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0);
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur >= 512) {
        struct rlimit lowered = rl;
        lowered.rlim_cur = 256;
        T_CHECK(setrlimit(RLIMIT_NOFILE, &lowered) == 0);
        ZCN_Loop *small = t_new_loop(NULL); /* its fd table: 256 */
        T_CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0);
        int high = 300;
        T_CHECK(!fd_is_open(high));
        T_CHECK(dup2(acc2, high) == high);
        ADOPT_FAILS(small, high, &cc, (ZCN_Error)EMFILE);
        T_CHECK(close(high) == 0);
        T_CHECK_ERR(zcn_loop_destroy(small), ZCN_OK);
        emfile_tested = true;
    }

    /* another thread than the owner */
    struct wrong_thread_args wa = {.loop = l, .fd = acc2, .conn_fd = acc};
    struct fd_state st = fd_state(acc2);
    on_other_thread(wrong_thread_calls, &wa);
    check_untouched(acc2, st);

    /* every refused fd is still the caller's: it closes them */
    int mine[] = {p[0], p[1], devnull, udp, sp[0], sp[1], fresh, listener, acc2, cli2};
    for (size_t i = 0; i < sizeof mine / sizeof mine[0]; i++) {
        T_CHECK(fd_is_open(mine[i]));
        T_CHECK(close(mine[i]) == 0);
    }
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK); /* closes acc and out_fd */
    T_CHECK(c1.closes == 1);
    T_CHECK(fd_is_closed(acc));
    close(cli);
    T_CHECK(t_open_fds() == fds);
    fprintf(stderr, "adopt errors, each fd left open with its flags: NULL loop/config, negative "
            "fd, bad flags, pipe, /dev/null, UDP, SEQPACKET -> INVALID_ARGUMENT; closed fd -> "
            "EBADF; unconnected and listening TCP -> ENOTCONN; twice -> BUSY; connections_max "
            "-> EXHAUSTED (its data unread); %s; other thread -> WRONG_THREAD\n",
            emfile_tested ? "over the fd table -> EMFILE" : "EMFILE not tested (rlimit)");
}

/* One end of a unix-domain socketpair: echo, then the peer's close. */
static void test_adopt_unix(void)
{
    int fds = t_open_fds();
    ZCN_Loop *l = t_new_loop(NULL);
    int sp[2];
    T_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) == 0);
    bound_blocking(sp[1]);
    struct cconn c = {.loop = l, .fd = sp[0], .echo = true};
    ZCN_ConnectConfig cc = cc_config(&c, false);
    cc.tcp_nodelay = 1; /* no TCP option on a unix socket: ignored */
    T_CHECK_ERR(zcn_loop_adopt(l, sp[0], &cc), ZCN_OK);
    const char *msg = "over AF_UNIX";
    T_CHECK(send(sp[1], msg, strlen(msg), 0) == (ssize_t)strlen(msg));
    char back[64];
    size_t back_len = 0;
    RUN_UNTIL(l, peer_read_text(sp[1], back, &back_len, sizeof back) >= strlen(msg), 2000);
    T_CHECK(strcmp(back, msg) == 0);
    close(sp[1]);
    RUN_UNTIL(l, c.closes > 0, 2000);
    run_for(l, 20);
    T_CHECK(c.closes == 1 && c.open_in_on_close);
    T_CHECK(fd_is_closed(sp[0]));
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    T_CHECK(t_open_fds() == fds);
    fprintf(stderr, "adopt unix socketpair end: echo, peer close -> on_close once, fd closed\n");
}

/* ZCN_SERVER_HALF_CLOSE: the peer's shutdown(SHUT_WR) is an EOF, and the
 * adopted connection still sends (poll mode); with on_eof (callback mode)
 * the answer goes from on_eof and later, then zcn_loop_shutdown ends it. */
static void test_adopt_half_close(void)
{
    int fds = t_open_fds();
    ZCN_Loop *l = t_new_loop(NULL);

    int acc, cli;
    tcp_pair(&acc, &cli, 0);
    struct pconn p;
    T_CHECK_ERR(adopt_poll(l, &p, acc, 9, ZCN_SERVER_HALF_CLOSE), ZCN_OK);
    T_CHECK(send(cli, "request", 7, 0) == 7);
    T_CHECK(shutdown(cli, SHUT_WR) == 0);
    PUMP_UNTIL(l, &p, p.eofs > 0, 2000);
    T_CHECK(strcmp(p.text, "request") == 0);
    T_CHECK(p.got_at_eof == 7); /* EOF after the data */
    pump_for(l, &p, 50);
    T_CHECK(p.eofs == 1 && p.closes == 0); /* still open: the answer may come */
    T_CHECK_ERR(zcn_loop_send(l, acc, (const uint8_t *)"answer after EOF", 16), ZCN_OK);
    char back[64];
    size_t back_len = 0;
    PUMP_UNTIL(l, &p, peer_read_text(cli, back, &back_len, sizeof back) >= 16, 2000);
    T_CHECK(strcmp(back, "answer after EOF") == 0);
    T_CHECK_ERR(zcn_loop_close(l, acc), ZCN_OK);
    PUMP_UNTIL(l, &p, p.closes > 0, 2000);
    T_CHECK(p.close_offset == 0);
    char b;
    T_CHECK(recv(cli, &b, 1, 0) == 0);
    close(cli);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);

    l = t_new_loop(NULL); /* a polled loop stays in poll mode */
    tcp_pair(&acc, &cli, 0);
    struct cconn c = {.loop = l, .fd = cli, .eof_reply = "from on_eof"};
    ZCN_ConnectConfig cc = cc_config(&c, true);
    T_CHECK_ERR(zcn_loop_adopt(l, cli, &cc), ZCN_OK);
    T_CHECK(send(acc, "question", 8, 0) == 8);
    T_CHECK(shutdown(acc, SHUT_WR) == 0);
    RUN_UNTIL(l, c.eofs > 0, 2000);
    T_CHECK(c.got_at_eof == 8 && strcmp(c.text, "question") == 0);
    run_for(l, 50);
    T_CHECK(c.closes == 0);
    T_CHECK_ERR(zcn_loop_send(l, cli, (const uint8_t *)" and later", 10), ZCN_OK);
    T_CHECK_ERR(zcn_loop_shutdown(l, cli), ZCN_OK); /* both sides done: it closes */
    RUN_UNTIL(l, c.closes > 0, 2000);
    back_len = 0;
    T_CHECK(peer_read_text(acc, back, &back_len, sizeof back) == 21);
    T_CHECK(strcmp(back, "from on_eof and later") == 0);
    T_CHECK(recv(acc, &b, 1, 0) == 0);
    close(acc);
    T_CHECK(c.eofs == 1 && c.closes == 1);
    T_CHECK(fd_is_closed(cli));

    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    T_CHECK(t_open_fds() == fds);
    fprintf(stderr, "adopt half-close: peer SHUT_WR -> EOF after the data, the connection "
            "still sends (poll: after 50 ms; callbacks: from on_eof, then shutdown closes)\n");
}

/* ---- 2. pause_recv / resume_recv ------------------------------------------ */

/* Poll mode, half-close: a stream flows, is paused (twice: OK), the peer
 * goes on writing until its send buffer is full and then shuts down; no
 * DATA or EOF meanwhile and only a few buffers held; resume (twice) ->
 * every byte in order, then the EOF. */
static void test_pause_poll(void)
{
    int fds = t_open_fds();
    ZCN_Loop *l = t_new_loop(NULL);
    int acc, peer;
    tcp_pair(&acc, &peer, 0);
    struct pconn p;
    T_CHECK_ERR(adopt_poll(l, &p, acc, 5, ZCN_SERVER_HALF_CLOSE), ZCN_OK);
    p.pattern = true;
    struct pconn *pp[1] = {&p};
    uint64_t sent = 0;

    /* flowing */
    uint64_t dl = t_mono_ms() + 3000;
    while ((sent < 256 * KiB || p.got < sent) && t_mono_ms() < dl) {
        if (sent < 256 * KiB)
            peer_fill(peer, &sent, 256 * KiB - (size_t)sent);
        pump(l, pp, 1, 2);
    }
    T_CHECK(sent == 256 * KiB && p.got == sent && p.data_events > 0);

    /* paused while the peer writes as fast as it can */
    T_CHECK_ERR(zcn_loop_pause_recv(l, acc), ZCN_OK);
    T_CHECK_ERR(zcn_loop_pause_recv(l, acc), ZCN_OK);
    uint64_t got_at_pause = p.got, sent_at_pause = sent;
    int data_at_pause = p.data_events;
    uint32_t max_deferred = 0;
    int turns = 0, stuck = 0;
    dl = t_mono_ms() + 5000;
    while (stuck < 50 && t_mono_ms() < dl) {
        stuck = peer_fill(peer, &sent, 4 * MiB) == 0 ? stuck + 1 : 0;
        pump(l, pp, 1, 2);
        turns++;
        ZCN_ConnInfo ci = conn_info(l, acc);
        if (ci.deferred_buffers > max_deferred)
            max_deferred = ci.deferred_buffers;
    }
    T_CHECK(stuck == 50); /* the peer blocks: 50 turns without room */
    T_CHECK(p.data_events == data_at_pause && p.got == got_at_pause);
    ZCN_ConnInfo ci = conn_info(l, acc);
    T_CHECK(ci.bytes_received == p.got + ci.deferred_bytes); /* the rest is in the kernel */
    T_CHECK(max_deferred <= 8);
    T_CHECK(ci.deferred_bytes <= 8 * zcn_loop_buffer_size(l));
    uint64_t written_paused = sent - sent_at_pause;

    /* the peer finishes while paused: no EOF either */
    T_CHECK(shutdown(peer, SHUT_WR) == 0);
    pump_for(l, &p, 100);
    T_CHECK(p.eofs == 0 && p.closes == 0 && p.data_events == data_at_pause);

    /* resume: all of it, in order, then the EOF */
    T_CHECK_ERR(zcn_loop_resume_recv(l, acc), ZCN_OK);
    T_CHECK_ERR(zcn_loop_resume_recv(l, acc), ZCN_OK);
    PUMP_UNTIL(l, &p, p.eofs > 0, 5000);
    T_CHECK(p.got == sent);
    T_CHECK(p.got_at_eof == sent);
    pump_for(l, &p, 30);
    T_CHECK(p.eofs == 1 && p.closes == 0 && p.got == sent);
    T_CHECK_ERR(zcn_loop_close(l, acc), ZCN_OK);
    PUMP_UNTIL(l, &p, p.closes > 0, 2000);
    pump(l, pp, 1, 0);
    close(peer);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    T_CHECK(t_open_fds() == fds);
    fprintf(stderr, "pause (poll, half-close): no DATA/EOF in %d turns while the peer wrote %llu "
            "KiB until it blocked, at most %u buffers held; resume -> %llu bytes in order, "
            "then EOF\n", turns, (unsigned long long)(written_paused / KiB), max_deferred,
            (unsigned long long)sent);
}

/* Callback mode without half-close, paused before the first turn: the
 * peer's data and close come only after resume, data first. */
static void test_pause_peer_close_callback(void)
{
    int fds = t_open_fds();
    ZCN_Loop *l = t_new_loop(NULL);
    int acc, peer;
    tcp_pair(&acc, &peer, 0);
    struct cconn c = {.loop = l, .fd = acc, .pattern = true};
    ZCN_ConnectConfig cc = cc_config(&c, false);
    T_CHECK_ERR(zcn_loop_adopt(l, acc, &cc), ZCN_OK);
    T_CHECK_ERR(zcn_loop_pause_recv(l, acc), ZCN_OK);
    uint64_t sent = 0;
    uint64_t dl = t_mono_ms() + 2000;
    while (sent < 300 * KiB && t_mono_ms() < dl) {
        peer_fill(peer, &sent, 300 * KiB - (size_t)sent);
        t_turn(l, 2);
    }
    T_CHECK(sent == 300 * KiB);
    close(peer);
    run_for(l, 150);
    T_CHECK(c.data_calls == 0 && c.closes == 0);
    ZCN_ConnInfo ci = conn_info(l, acc);
    T_CHECK(ci.bytes_received <= 8 * zcn_loop_buffer_size(l));
    T_CHECK_ERR(zcn_loop_resume_recv(l, acc), ZCN_OK);
    RUN_UNTIL(l, c.closes > 0, 3000);
    T_CHECK(c.got == sent && c.got_at_close == sent);
    T_CHECK(c.closes == 1);
    T_CHECK(fd_is_closed(acc));
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    T_CHECK(t_open_fds() == fds);
    fprintf(stderr, "pause (callbacks): the peer's %llu KiB and close held 150 ms, after resume "
            "all data then on_close\n", (unsigned long long)(sent / KiB));
}

/* zcn_loop_pause_recv from on_data: no further on_data, even for data
 * already on its way; resume -> the rest in order. */
static void test_pause_in_on_data(void)
{
    int fds = t_open_fds();
    ZCN_Loop *l = t_new_loop(NULL);
    int acc, peer;
    tcp_pair(&acc, &peer, 0);
    struct cconn c = {.loop = l, .fd = acc, .pattern = true, .pause_in_data = true};
    ZCN_ConnectConfig cc = cc_config(&c, true);
    T_CHECK_ERR(zcn_loop_adopt(l, acc, &cc), ZCN_OK);
    uint64_t sent = 0;
    peer_fill(peer, &sent, 1 * MiB);
    RUN_UNTIL(l, c.data_calls > 0, 2000);
    /* what the kernel had already handed over (completions in the queue
     * behind the first) is held; nothing more comes while paused */
    uint32_t held_after_pause = conn_info(l, acc).deferred_buffers;
    uint32_t max_deferred = held_after_pause;
    int stuck = 0;
    uint64_t dl = t_mono_ms() + 5000;
    while (stuck < 30 && t_mono_ms() < dl) {
        stuck = peer_fill(peer, &sent, 4 * MiB) == 0 ? stuck + 1 : 0;
        t_turn(l, 2);
        ZCN_ConnInfo ci = conn_info(l, acc);
        if (ci.deferred_buffers > max_deferred)
            max_deferred = ci.deferred_buffers;
    }
    T_CHECK(stuck == 30);
    T_CHECK(c.data_calls == 1);
    ZCN_ConnInfo ci = conn_info(l, acc);
    T_CHECK(max_deferred == held_after_pause);
    T_CHECK(max_deferred <= ci.buffer_cap);
    uint64_t got_paused = c.got;
    T_CHECK_ERR(zcn_loop_resume_recv(l, acc), ZCN_OK);
    T_CHECK(shutdown(peer, SHUT_WR) == 0);
    RUN_UNTIL(l, c.eofs > 0, 5000);
    T_CHECK(c.got == sent && c.got_at_eof == sent);
    T_CHECK_ERR(zcn_loop_close(l, acc), ZCN_OK);
    RUN_UNTIL(l, c.closes > 0, 2000);
    close(peer);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    T_CHECK(t_open_fds() == fds);
    fprintf(stderr, "pause from on_data: one on_data (%llu bytes) while the peer filled its "
            "buffers; held: the %u buffers already completed behind it (cap %u), no more; "
            "resume -> %llu bytes in order, then on_eof\n", (unsigned long long)got_paused,
            max_deferred, ci.buffer_cap, (unsigned long long)sent);
}

/* A connection still connecting may be paused: connected, nothing comes
 * until resume. And fds that are not connections: ZCN_ERR_CLOSED. */
static void test_pause_edges(void)
{
    int fds = t_open_fds();
    ZCN_Loop *l = t_new_loop(NULL);
    uint16_t port;
    int listener = plain_listener(&port);
    struct cconn c = {.loop = l};
    ZCN_ConnectConfig cc = cc_config(&c, false);
    cc.on_connect = NULL;
    cc.address = "127.0.0.1";
    cc.port = port;
    T_CHECK_ERR(zcn_loop_connect(l, &cc, &c.fd), ZCN_OK);
    T_CHECK_ERR(zcn_loop_pause_recv(l, c.fd), ZCN_OK);
    int peer = -1;
    uint64_t dl = t_mono_ms() + 2000;
    while (peer < 0 && t_mono_ms() < dl) {
        t_turn(l, 5);
        peer = accept4(listener, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    }
    T_CHECK(peer >= 0);
    T_CHECK(send(peer, "held", 4, 0) == 4);
    run_for(l, 100);
    T_CHECK(c.data_calls == 0);
    T_CHECK_ERR(zcn_loop_resume_recv(l, c.fd), ZCN_OK);
    RUN_UNTIL(l, c.got == 4, 2000);
    T_CHECK(strcmp(c.text, "held") == 0);

    /* not connections of the loop */
    int pp[2];
    T_CHECK(pipe2(pp, O_CLOEXEC) == 0);
    int bad[] = {-1, pp[0], listener, 1 << 30};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        T_CHECK_ERR(zcn_loop_pause_recv(l, bad[i]), ZCN_ERR_CLOSED);
        T_CHECK_ERR(zcn_loop_resume_recv(l, bad[i]), ZCN_ERR_CLOSED);
        T_CHECK_ERR(zcn_loop_notify_drain(l, bad[i], 0), ZCN_ERR_CLOSED);
    }
    T_CHECK_ERR(zcn_loop_pause_recv(NULL, c.fd), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_resume_recv(NULL, c.fd), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_notify_drain(NULL, c.fd, 0), ZCN_ERR_INVALID_ARGUMENT);
    /* a connection that has closed */
    int closed_fd = c.fd;
    T_CHECK_ERR(zcn_loop_close(l, closed_fd), ZCN_OK);
    RUN_UNTIL(l, c.closes > 0, 2000);
    T_CHECK_ERR(zcn_loop_pause_recv(l, closed_fd), ZCN_ERR_CLOSED);
    T_CHECK_ERR(zcn_loop_resume_recv(l, closed_fd), ZCN_ERR_CLOSED);
    close(peer);
    close(listener);
    close(pp[0]);
    close(pp[1]);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    T_CHECK(t_open_fds() == fds);
    fprintf(stderr, "pause edges: paused while connecting -> nothing until resume; pipe, "
            "listener, -1, huge, closed fd -> CLOSED; NULL loop -> INVALID_ARGUMENT\n");
}

/* ---- 3. notify_drain ------------------------------------------------------ */

/* Queues len pattern bytes (copied) from *off; every send must succeed. */
static void queue_pattern(ZCN_Loop *l, int fd, uint64_t *off, size_t len)
{
    static uint8_t chunk[64 * 1024];
    while (len > 0) {
        size_t n = len < sizeof chunk ? len : sizeof chunk;
        for (size_t i = 0; i < n; i++)
            chunk[i] = pat(*off + i);
        T_CHECK_ERR(zcn_loop_send(l, fd, chunk, n), ZCN_OK);
        *off += n;
        len -= n;
    }
}

/* Queues pattern bytes until the queue refuses (QUEUE_FULL); returns the
 * bytes queued. */
static size_t queue_until_full(ZCN_Loop *l, int fd, uint64_t *off)
{
    static uint8_t chunk[64 * 1024];
    size_t total = 0;
    for (;;) {
        for (size_t i = 0; i < sizeof chunk; i++)
            chunk[i] = pat(*off + i);
        ZCN_Error e = zcn_loop_send(l, fd, chunk, sizeof chunk);
        if (e == ZCN_ERR_QUEUE_FULL)
            return total;
        T_CHECK_ERR(e, ZCN_OK);
        *off += sizeof chunk;
        total += sizeof chunk;
    }
}

/* Lets a peer that did not read take everything (pumping meanwhile). */
static void peer_take_all(ZCN_Loop *l, struct pconn *p, int peer, uint64_t *rd, uint64_t total,
                          size_t per_turn)
{
    struct pconn *pp[1] = {p};
    uint64_t dl = t_mono_ms() + 10000;
    while (*rd < total && t_mono_ms() < dl) {
        peer_drain(peer, rd, per_turn, NULL);
        pump(l, pp, 1, 1);
    }
    T_CHECK(*rd == total);
}

/* A TCP pair whose kernel buffers take little (64 KiB each way), the
 * accepted side adopted in poll mode. */
static void small_buffered_pair(ZCN_Loop *l, struct pconn *p, int *acc, int *peer, uint32_t flags,
                                uint32_t idle_timeout_ms)
{
    tcp_pair(acc, peer, 64 * KiB);
    int sndbuf = 64 * KiB;
    T_CHECK(setsockopt(*acc, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf) == 0);
    memset(p, 0, sizeof *p);
    p->fd = *acc;
    p->tag = 3;
    ZCN_ConnectConfig cc = {.tag = 3, .flags = flags, .idle_timeout_ms = idle_timeout_ms};
    T_CHECK_ERR(zcn_loop_adopt(l, *acc, &cc), ZCN_OK);
}

static void test_notify_drain_poll(void)
{
    int fds = t_open_fds();
    ZCN_LoopConfig lc = {.send_queue_max_bytes = 8 * MiB, .buffer_pool_size = 2048};
    ZCN_Loop *l = t_new_loop(&lc);
    int acc, peer;
    struct pconn p;
    small_buffered_pair(l, &p, &acc, &peer, 0, 0);
    struct pconn *pp[1] = {&p};
    uint64_t wr = 0, rd = 0;

    /* 4 MiB to a peer that does not read; DRAIN at 1 MiB */
    queue_pattern(l, acc, &wr, 4 * MiB);
    pump_for(l, &p, 100);
    size_t queued_stalled = zcn_loop_queued_bytes(l, acc);
    T_CHECK(queued_stalled > 3 * MiB);
    const size_t mark = 1 * MiB;
    T_CHECK_ERR(zcn_loop_notify_drain(l, acc, mark), ZCN_OK);
    pump_for(l, &p, 100);
    T_CHECK(p.drains == 0);
    uint64_t dl = t_mono_ms() + 10000;
    while (rd < wr && t_mono_ms() < dl) {
        peer_drain(peer, &rd, 128 * KiB, NULL);
        pump(l, pp, 1, 1);
        if (p.drains == 0)
            T_CHECK(zcn_loop_queued_bytes(l, acc) > 0);
    }
    T_CHECK(rd == wr);
    pump_for(l, &p, 50);
    T_CHECK(p.drains == 1);
    T_CHECK(p.drain_log[0] <= mark);
    size_t at_mark = p.drain_log[0];

    /* already below at the call: the next poll has it (not the call) */
    T_CHECK(zcn_loop_queued_bytes(l, acc) == 0);
    T_CHECK_ERR(zcn_loop_notify_drain(l, acc, 4096), ZCN_OK);
    T_CHECK(p.drains == 1);
    uint64_t t0 = t_mono_ms();
    pump(l, pp, 1, 1000);
    uint64_t next_turn_ms = t_mono_ms() - t0;
    T_CHECK(p.drains == 2);
    T_CHECK(next_turn_ms < 500);
    pump_for(l, &p, 30);
    T_CHECK(p.drains == 2);

    /* below 0: when the queue is empty */
    queue_pattern(l, acc, &wr, 1 * MiB);
    T_CHECK_ERR(zcn_loop_notify_drain(l, acc, 0), ZCN_OK);
    pump_for(l, &p, 30);
    T_CHECK(p.drains == 2);
    peer_take_all(l, &p, peer, &rd, wr, 32 * KiB);
    pump_for(l, &p, 30);
    T_CHECK(p.drains == 3 && p.drain_log[2] == 0);

    /* a second call replaces the mark */
    queue_pattern(l, acc, &wr, 2 * MiB);
    T_CHECK_ERR(zcn_loop_notify_drain(l, acc, 0), ZCN_OK);
    T_CHECK_ERR(zcn_loop_notify_drain(l, acc, 1 * MiB), ZCN_OK);
    peer_take_all(l, &p, peer, &rd, wr, 32 * KiB);
    pump_for(l, &p, 30);
    T_CHECK(p.drains == 4 && p.drain_log[3] <= 1 * MiB && p.drain_log[3] > 0);

    /* with a refused send too: the DRAIN that follows the refusal (at half
     * the limit) does not use up the mark's */
    size_t full = queue_until_full(l, acc, &wr);
    T_CHECK(full >= 4 * MiB); /* the bytes or the buffer cap */
    const size_t low = 512 * KiB;
    T_CHECK_ERR(zcn_loop_notify_drain(l, acc, low), ZCN_OK);
    peer_take_all(l, &p, peer, &rd, wr, 32 * KiB);
    pump_for(l, &p, 30);
    int refused_drains = p.drains - 4;
    T_CHECK(refused_drains == 1 || refused_drains == 2);
    T_CHECK(p.drain_log[p.drains - 1] <= low);
    if (refused_drains == 2)
        T_CHECK(p.drain_log[4] <= 4 * MiB && p.drain_log[4] > low);

    T_CHECK_ERR(zcn_loop_close(l, acc), ZCN_OK);
    PUMP_UNTIL(l, &p, p.closes > 0, 2000);
    pump(l, pp, 1, 0);
    close(peer);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    T_CHECK(t_open_fds() == fds);
    fprintf(stderr, "notify_drain (poll): 4 MiB queued, mark 1 MiB -> one DRAIN at %zu bytes "
            "queued; already below -> DRAIN at the next poll (%llu ms); 0 -> at empty; a "
            "second call replaces the mark; after a refused send %d DRAINs, the last at %zu "
            "<= %zu\n", at_mark, (unsigned long long)next_turn_ms, refused_drains,
            p.drain_log[p.drains - 1], low);
}

/* Callback mode: on_drain once at the mark, and not from inside the call
 * when already below. A connection still connecting: its DRAIN (queue
 * empty) follows the connect. */
static void test_notify_drain_callback(void)
{
    int fds = t_open_fds();
    ZCN_LoopConfig lc = {.send_queue_max_bytes = 4 * MiB};
    ZCN_Loop *l = t_new_loop(&lc);
    int acc, peer;
    tcp_pair(&acc, &peer, 64 * KiB);
    int sndbuf = 64 * KiB;
    T_CHECK(setsockopt(acc, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf) == 0);
    struct cconn c = {.loop = l, .fd = acc};
    ZCN_ConnectConfig cc = cc_config(&c, false);
    T_CHECK_ERR(zcn_loop_adopt(l, acc, &cc), ZCN_OK);
    uint64_t wr = 0, rd = 0;
    queue_pattern(l, acc, &wr, 2 * MiB);
    T_CHECK_ERR(zcn_loop_notify_drain(l, acc, 256 * KiB), ZCN_OK);
    run_for(l, 50);
    T_CHECK(c.drains == 0);
    uint64_t dl = t_mono_ms() + 10000;
    while (rd < wr && t_mono_ms() < dl) {
        peer_drain(peer, &rd, 64 * KiB, NULL);
        t_turn(l, 1);
    }
    T_CHECK(rd == wr);
    run_for(l, 30);
    T_CHECK(c.drains == 1 && c.queued_at_drain <= 256 * KiB);
    size_t at_mark = c.queued_at_drain;
    T_CHECK_ERR(zcn_loop_notify_drain(l, acc, 0), ZCN_OK);
    T_CHECK(c.drains == 1); /* never from inside the call */
    t_turn(l, 1000);
    T_CHECK(c.drains == 2 && c.queued_at_drain == 0);
    T_CHECK_ERR(zcn_loop_close(l, acc), ZCN_OK);
    RUN_UNTIL(l, c.closes > 0, 2000);
    close(peer);

    uint16_t port;
    int listener = plain_listener(&port);
    struct cconn o = {.loop = l};
    ZCN_ConnectConfig oc = cc_config(&o, false);
    oc.on_connect = NULL;
    oc.address = "127.0.0.1";
    oc.port = port;
    T_CHECK_ERR(zcn_loop_connect(l, &oc, &o.fd), ZCN_OK);
    T_CHECK_ERR(zcn_loop_notify_drain(l, o.fd, 0), ZCN_OK);
    RUN_UNTIL(l, o.drains > 0, 2000);
    T_CHECK(o.drains == 1 && o.closes == 0);
    T_CHECK_ERR(zcn_loop_close(l, o.fd), ZCN_OK);
    RUN_UNTIL(l, o.closes > 0, 2000);
    close(listener);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    T_CHECK(t_open_fds() == fds);
    fprintf(stderr, "notify_drain (callbacks): on_drain once at %zu <= 256 KiB queued; already "
            "below -> next turn, not inside the call; asked while connecting -> after the "
            "connect\n", at_mark);
}

/* ---- 4. the errno in a CLOSE event ---------------------------------------- */

static void reset_close(int fd)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    T_CHECK(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0);
    T_CHECK(close(fd) == 0);
}

static void test_close_errno(void)
{
    int fds = t_open_fds();
    ZCN_LoopConfig lc = {.send_queue_max_bytes = 4 * MiB};
    ZCN_Loop *l = t_new_loop(&lc);
    struct pconn p;
    struct pconn *pp[1] = {&p};
    int acc, peer;
    char b;

    /* the peer resets: ECONNRESET */
    tcp_pair(&acc, &peer, 0);
    T_CHECK_ERR(adopt_poll(l, &p, acc, 4, 0), ZCN_OK);
    T_CHECK(send(peer, "x", 1, 0) == 1);
    PUMP_UNTIL(l, &p, p.got == 1, 2000);
    reset_close(peer);
    PUMP_UNTIL(l, &p, p.closes > 0, 2000);
    T_CHECK(p.close_offset == ECONNRESET);
    pump(l, pp, 1, 0);

    /* the peer resets while the loop has data queued for it */
    uint64_t wr = 0;
    small_buffered_pair(l, &p, &acc, &peer, 0, 0);
    queue_pattern(l, acc, &wr, 1 * MiB);
    pump_for(l, &p, 50);
    T_CHECK(zcn_loop_queued_bytes(l, acc) > 0);
    reset_close(peer);
    PUMP_UNTIL(l, &p, p.closes > 0, 2000);
    uint64_t sending_reset = p.close_offset;
    T_CHECK(sending_reset == ECONNRESET || sending_reset == EPIPE);
    pump(l, pp, 1, 0);

    /* an orderly close by the loop: 0 */
    tcp_pair(&acc, &peer, 0);
    T_CHECK_ERR(adopt_poll(l, &p, acc, 4, 0), ZCN_OK);
    T_CHECK_ERR(zcn_loop_send(l, acc, (const uint8_t *)"bye", 3), ZCN_OK);
    T_CHECK_ERR(zcn_loop_close(l, acc), ZCN_OK);
    PUMP_UNTIL(l, &p, p.closes > 0, 2000);
    T_CHECK(p.close_offset == 0);
    pump(l, pp, 1, 0);
    char text[8] = "";
    T_CHECK(recv(peer, text, sizeof text - 1, 0) == 3 && strcmp(text, "bye") == 0);
    T_CHECK(recv(peer, &b, 1, 0) == 0);
    close(peer);

    /* the peer's orderly close, half-close mode and a shutdown: 0 */
    tcp_pair(&acc, &peer, 0);
    T_CHECK_ERR(adopt_poll(l, &p, acc, 4, ZCN_SERVER_HALF_CLOSE), ZCN_OK);
    T_CHECK(shutdown(peer, SHUT_WR) == 0);
    PUMP_UNTIL(l, &p, p.eofs > 0, 2000);
    T_CHECK_ERR(zcn_loop_shutdown(l, acc), ZCN_OK);
    PUMP_UNTIL(l, &p, p.closes > 0, 2000);
    T_CHECK(p.close_offset == 0);
    pump(l, pp, 1, 0);
    close(peer);

    /* an abort by the loop: 0 (the peer sees the reset) */
    tcp_pair(&acc, &peer, 0);
    T_CHECK_ERR(adopt_poll(l, &p, acc, 4, 0), ZCN_OK);
    pump(l, pp, 1, 0);
    T_CHECK_ERR(zcn_loop_abort(l, acc), ZCN_OK);
    PUMP_UNTIL(l, &p, p.closes > 0, 2000);
    T_CHECK(p.close_offset == 0);
    pump(l, pp, 1, 0);
    T_CHECK(recv(peer, &b, 1, 0) == -1 && errno == ECONNRESET);
    close(peer);

    /* the idle timeout ends it while a send waits for the peer: the loop
     * ended it, not an error of the peer's: 0 */
    small_buffered_pair(l, &p, &acc, &peer, 0, 150);
    queue_pattern(l, acc, &wr, 1 * MiB);
    PUMP_UNTIL(l, &p, p.closes > 0, 3000);
    uint64_t idle_offset = p.close_offset;
    pump(l, pp, 1, 0);
    close(peer);
    T_CHECK(idle_offset == 0);

    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    T_CHECK(t_open_fds() == fds);
    fprintf(stderr, "CLOSE offset: peer reset -> ECONNRESET (while sending: %s); loop close, "
            "peer FIN + shutdown, abort, idle timeout with a send waiting -> 0\n",
            sending_reset == ECONNRESET ? "ECONNRESET" : "EPIPE");
}

/* ---- 5. unwatch reaches the kernel at once -------------------------------- */

static int watch_fires;

static void count_fire(void *ud, int fd, uint32_t events, uint64_t id)
{
    (void)ud;
    (void)fd;
    (void)events;
    (void)id;
    watch_fires++;
}

/* A blocking connect to 127.0.0.1:port: 0, or the errno; *ms its time. */
static int connect_result(uint16_t port, uint64_t *ms)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    T_CHECK(fd >= 0);
    bound_blocking(fd);
    struct sockaddr_in a = loopback(port);
    uint64_t t0 = t_mono_ms();
    int r = connect(fd, (struct sockaddr *)&a, sizeof a);
    int err = r == 0 ? 0 : errno;
    *ms = t_mono_ms() - t0;
    close(fd);
    return err;
}

/* Watches a plain listening socket for READ, lets `turns` loop turns
 * pass, unwatches it outside a turn and closes it: a connect to its port
 * must be refused at once. With fail_sqes the cancel finds no SQE: then
 * after one more turn. */
static uint64_t unwatch_then_close(ZCN_Loop *l, int turns, uint32_t fail_sqes)
{
    uint16_t port;
    int lfd = plain_listener(&port);
    uint64_t id;
    watch_fires = 0;
    T_CHECK_ERR(zcn_loop_watch(l, lfd, ZCN_WATCH_READ, count_fire, NULL, &id), ZCN_OK);
    for (int i = 0; i < turns; i++)
        t_turn(l, 0);
    if (fail_sqes > 0)
        zcn_test_fail_sqes(fail_sqes);
    T_CHECK_ERR(zcn_loop_unwatch(l, id), ZCN_OK);
    T_CHECK_ERR(zcn_loop_unwatch(l, id), ZCN_ERR_CLOSED);
    T_CHECK(close(lfd) == 0);
    if (fail_sqes > 0)
        t_turn(l, 0); /* the cancel had no SQE: it goes with the next turn */
    uint64_t ms;
    int err = connect_result(port, &ms);
    if (err != ECONNREFUSED)
        fprintf(stderr, "connect after unwatch+close (%d turns, %u failed SQEs): %s\n", turns,
                fail_sqes, err == 0 ? "accepted: the listener is still open" : strerror(err));
    T_CHECK(err == ECONNREFUSED);
    T_CHECK(watch_fires == 0);
    for (int i = 0; i < 3; i++)
        t_turn(l, 0);
    T_CHECK(watch_fires == 0);
    return ms;
}

struct unwatch_in_timer {
    ZCN_Loop *loop;
    uint64_t watch_id;
    int lfd;
    bool ran;
};

static void unwatch_timer(void *ud, uint64_t id)
{
    (void)id;
    struct unwatch_in_timer *u = ud;
    T_CHECK_ERR(zcn_loop_unwatch(u->loop, u->watch_id), ZCN_OK);
    T_CHECK(close(u->lfd) == 0);
    u->ran = true;
}

static void unwatch_on_fire(void *ud, int fd, uint32_t events, uint64_t id)
{
    (void)fd;
    (void)events;
    (void)id;
    struct unwatch_in_timer *u = ud;
    if (!u->ran)
        unwatch_timer(u, 0);
}

static void test_unwatch_releases_fd(void)
{
    int fds = t_open_fds();
    ZCN_Loop *l = t_new_loop(NULL);
    uint64_t ms_armed = unwatch_then_close(l, 3, 0);   /* the poll is in the kernel */
    uint64_t ms_unsent = unwatch_then_close(l, 0, 0);  /* its SQE not yet submitted */
    unwatch_then_close(l, 3, 1);                       /* no SQE for the cancel at first */

    /* from a callback, the watch being another: once the loop call that
     * ran it has returned, the listener is closed too */
    struct unwatch_in_timer u = {.loop = l};
    uint16_t port;
    u.lfd = plain_listener(&port);
    T_CHECK_ERR(zcn_loop_watch(l, u.lfd, ZCN_WATCH_READ, count_fire, NULL, &u.watch_id), ZCN_OK);
    t_turn(l, 0);
    uint64_t tid;
    T_CHECK_ERR(zcn_loop_timer_start(l, 0, 0, unwatch_timer, &u, &tid), ZCN_OK);
    RUN_UNTIL(l, u.ran, 1000);
    uint64_t ms;
    int err = connect_result(port, &ms);
    if (err != ECONNREFUSED)
        fprintf(stderr, "connect after unwatch+close in a timer callback: %s\n",
                err == 0 ? "accepted: the listener is still open" : strerror(err));
    T_CHECK(err == ECONNREFUSED);

    /* from a callback run for a completion (another watch's), the same */
    struct unwatch_in_timer v = {.loop = l};
    v.lfd = plain_listener(&port);
    T_CHECK_ERR(zcn_loop_watch(l, v.lfd, ZCN_WATCH_READ, count_fire, NULL, &v.watch_id), ZCN_OK);
    t_turn(l, 0);
    int pw[2];
    T_CHECK(pipe2(pw, O_CLOEXEC | O_NONBLOCK) == 0);
    uint64_t pipe_watch;
    T_CHECK_ERR(zcn_loop_watch(l, pw[0], ZCN_WATCH_READ, unwatch_on_fire, &v, &pipe_watch),
                ZCN_OK);
    t_turn(l, 0);
    T_CHECK(write(pw[1], "x", 1) == 1);
    RUN_UNTIL(l, v.ran, 1000);
    err = connect_result(port, &ms);
    if (err != ECONNREFUSED)
        fprintf(stderr, "connect after unwatch+close in a watch callback: %s\n",
                err == 0 ? "accepted: the listener is still open" : strerror(err));
    T_CHECK(err == ECONNREFUSED);
    T_CHECK_ERR(zcn_loop_unwatch(l, pipe_watch), ZCN_OK);
    close(pw[0]);
    close(pw[1]);

    T_CHECK(loop_stats_watches(l) == 0);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    T_CHECK(t_open_fds() == fds);
    fprintf(stderr, "unwatch then close of a watched listener: connect refused at once (%llu ms "
            "armed, %llu ms unsubmitted); after one turn when the cancel found no SQE; once "
            "the loop call returns when done from a timer or a watch callback\n",
            (unsigned long long)ms_armed, (unsigned long long)ms_unsent);
}

/* ---- zcn_loop_send_many ---------------------------------------------------- */

static void read_exact(int fd, char *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = recv(fd, buf + got, n - got, 0);
        T_CHECK(r > 0);
        got += (size_t)r;
    }
}

static bool nothing_to_read(int fd)
{
    char c;
    return recv(fd, &c, 1, MSG_DONTWAIT) < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

struct many_call {
    ZCN_Loop *l;
    int fd;
    ZCN_Error rc;
};

static void *send_many_elsewhere(void *arg)
{
    struct many_call *mc = arg;
    ZCN_SendItem it = {mc->fd, 1};
    int32_t res = 0;
    uint32_t failed = 0;
    mc->rc = zcn_loop_send_many(mc->l, (const uint8_t *)"x", 1, &it, 1, &res, &failed);
    return NULL;
}

static void test_send_many(void)
{
    int fds = t_open_fds();
    ZCN_LoopConfig lc = {.send_queue_max_bytes = 64 * KiB};
    ZCN_Loop *l = t_new_loop(&lc);
    int a1, p1, a2, p2;
    tcp_pair(&a1, &p1, 0);
    tcp_pair(&a2, &p2, 0);
    ZCN_ConnectConfig cc = {0};
    T_CHECK_ERR(zcn_loop_adopt(l, a1, &cc), ZCN_OK);
    T_CHECK_ERR(zcn_loop_adopt(l, a2, &cc), ZCN_OK);
    char buf[64];

    /* two fds' items interleaved, their bytes back to back, a zero-length one */
    const char data[] = "helloABworldCD";
    ZCN_SendItem items[5] = {{a1, 5}, {a2, 2}, {a1, 5}, {a2, 0}, {a2, 2}};
    int32_t res[8];
    uint32_t failed = 99;
    T_CHECK_ERR(zcn_loop_send_many(l, (const uint8_t *)data, 14, items, 5, res, &failed), ZCN_OK);
    T_CHECK(failed == 0);
    for (int i = 0; i < 5; i++)
        T_CHECK(res[i] == ZCN_OK);
    run_for(l, 30);
    read_exact(p1, buf, 10);
    T_CHECK(memcmp(buf, "helloworld", 10) == 0);
    read_exact(p2, buf, 4);
    T_CHECK(memcmp(buf, "ABCD", 4) == 0);

    /* a refused item refuses the later items of its fd, not the others':
     * what an fd sent is a prefix of what was written */
    size_t big_len = 64 * KiB + 1; /* over send_queue_max_bytes: EMSGSIZE */
    char *big = calloc(1, big_len + 6);
    T_CHECK(big != NULL);
    memcpy(big + big_len, "xyzuvw", 6);
    ZCN_SendItem refused[3] = {{a1, (uint32_t)big_len}, {a1, 3}, {a2, 3}};
    T_CHECK_ERR(zcn_loop_send_many(l, (const uint8_t *)big, big_len + 6, refused, 3, res,
                                   &failed), ZCN_OK);
    T_CHECK(failed == 2);
    T_CHECK(res[0] == (int32_t)EMSGSIZE && res[1] == (int32_t)EMSGSIZE && res[2] == ZCN_OK);
    run_for(l, 30);
    read_exact(p2, buf, 3);
    T_CHECK(memcmp(buf, "uvw", 3) == 0);
    T_CHECK(nothing_to_read(p1));
    free(big);

    /* items that run past data_len: those are refused, the ones before go */
    ZCN_SendItem past[3] = {{a2, 2}, {a2, 10}, {a1, 1}};
    T_CHECK_ERR(zcn_loop_send_many(l, (const uint8_t *)"qrstu", 5, past, 3, res, &failed),
                ZCN_OK);
    T_CHECK(failed == 2);
    T_CHECK(res[0] == ZCN_OK && res[1] == ZCN_ERR_INVALID_ARGUMENT &&
            res[2] == ZCN_ERR_INVALID_ARGUMENT);
    ZCN_SendItem huge[2] = {{a2, 1}, {a2, UINT32_MAX}};
    T_CHECK_ERR(zcn_loop_send_many(l, (const uint8_t *)"q", 1, huge, 2, res, &failed), ZCN_OK);
    T_CHECK(failed == 1 && res[0] == ZCN_OK && res[1] == ZCN_ERR_INVALID_ARGUMENT);
    run_for(l, 30);
    read_exact(p2, buf, 3);
    T_CHECK(memcmp(buf, "qrq", 3) == 0);

    /* not a connection of the loop: CLOSED for that item */
    ZCN_SendItem stranger[1] = {{p1, 1}};
    T_CHECK_ERR(zcn_loop_send_many(l, (const uint8_t *)"z", 1, stranger, 1, res, &failed),
                ZCN_OK);
    T_CHECK(failed == 1 && res[0] == ZCN_ERR_CLOSED);

    /* bad arguments: nothing looked at */
    failed = 99;
    T_CHECK_ERR(zcn_loop_send_many(NULL, (const uint8_t *)"z", 1, stranger, 1, res, &failed),
                ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(failed == 0);
    T_CHECK_ERR(zcn_loop_send_many(l, (const uint8_t *)"z", 1, stranger, 1, res, NULL),
                ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_send_many(l, (const uint8_t *)"z", 1, NULL, 1, res, &failed),
                ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_send_many(l, (const uint8_t *)"z", 1, stranger, 1, NULL, &failed),
                ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_send_many(l, NULL, SIZE_MAX, stranger, 1, res, &failed),
                ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_send_many(l, NULL, 0, NULL, 0, NULL, &failed), ZCN_OK);
    T_CHECK(failed == 0);

    /* from another thread than the owner */
    struct many_call mc = {l, a1, ZCN_OK};
    pthread_t th;
    T_CHECK(pthread_create(&th, NULL, send_many_elsewhere, &mc) == 0);
    pthread_join(th, NULL);
    T_CHECK(mc.rc == ZCN_ERR_WRONG_THREAD);
    run_for(l, 20);
    T_CHECK(nothing_to_read(p1));

    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    close(p1);
    close(p2);
    T_CHECK(t_open_fds() == fds);
    fprintf(stderr, "send_many: interleaved fds in order, a refused item refuses its fd's "
            "later ones only (EMSGSIZE), items past data_len (UINT32_MAX too), "
            "strangers, NULLs, wrong thread\n");
}

int main(void)
{
    t_require_loop();
    signal(SIGPIPE, SIG_IGN);
    alarm(110); /* a backstop under CTest's 120 s: every wait is bounded anyway */
    uint64_t t0 = t_mono_ms();
    test_adopt_callback(true);
    test_adopt_callback(false);
    test_adopt_poll(true);
    test_adopt_poll(false);
    test_adopt_errors();
    test_adopt_unix();
    test_adopt_half_close();
    test_pause_poll();
    test_pause_peer_close_callback();
    test_pause_in_on_data();
    test_pause_edges();
    test_notify_drain_poll();
    test_notify_drain_callback();
    test_close_errno();
    test_unwatch_releases_fd();
    test_send_many();
    fprintf(stderr, "test_adopt: all passed in %llu ms\n", (unsigned long long)(t_mono_ms() - t0));
    return T_EXIT_PASS;
}
