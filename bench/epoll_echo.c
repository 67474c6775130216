/* The baseline of the echo benchmark: a classic single-threaded epoll echo
 * server, written the way a competent C programmer would without io_uring.
 *
 * Level-triggered epoll, non-blocking sockets, TCP_NODELAY (as zcn sets by
 * default), accept4 in a loop up to EAGAIN. One read of up to 64 KiB per
 * readiness event into a buffer shared by all connections, written straight
 * back; what the socket does not take is copied into a per-connection
 * buffer, reading from that connection stops, and EPOLLOUT is awaited
 * (back-pressure instead of unbounded buffering). No allocation per message.
 *
 * usage: epoll_echo [--host 127.0.0.1] [--port 0] [--backlog 4096] [--spin US]
 * Prints "epoll_echo listening on HOST:PORT" and serves until SIGINT/SIGTERM.
 *
 * --spin US: busy polling as zcn's busy_poll_us does it, for a fair
 * comparison (python -m zcn bench --busy-poll): epoll_wait with timeout 0
 * until US microseconds have passed since the last event, then a blocking
 * epoll_wait.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define READ_BYTES (64u * 1024u)
#define EVENTS_MAX 1024

struct pending {
    uint8_t *data;              /* allocated on the first short write, kept */
    uint32_t off, len, cap;
};

static volatile sig_atomic_t running = 1;
static uint8_t rbuf[READ_BYTES];
static struct pending *pend;    /* indexed by fd */
static size_t pend_size;
static int ep;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void on_signal(int sig)
{
    (void)sig;
    running = 0;
}

static void close_conn(int fd)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    pend[fd].off = pend[fd].len = 0;
}

static void watch(int fd, uint32_t events, int op)
{
    struct epoll_event ev = {.events = events, .data.fd = fd};
    epoll_ctl(ep, op, fd, &ev);
}

/* Keeps bytes the socket did not take; then waits for EPOLLOUT only. */
static bool keep(int fd, const uint8_t *data, uint32_t len)
{
    struct pending *p = &pend[fd];
    if (p->cap < len) {
        uint8_t *d = realloc(p->data, len);
        if (d == NULL)
            return false;
        p->data = d;
        p->cap = len;
    }
    memcpy(p->data, data, len);
    p->off = 0;
    p->len = len;
    watch(fd, EPOLLOUT, EPOLL_CTL_MOD);
    return true;
}

static void on_readable(int fd)
{
    ssize_t n = read(fd, rbuf, sizeof rbuf);
    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        close_conn(fd);
        return;
    }
    ssize_t w = write(fd, rbuf, (size_t)n);
    if (w == n)
        return;
    if (w < 0) {
        if (errno != EAGAIN) {
            close_conn(fd);
            return;
        }
        w = 0;
    }
    if (!keep(fd, rbuf + w, (uint32_t)(n - w)))
        close_conn(fd);
}

static void on_writable(int fd)
{
    struct pending *p = &pend[fd];
    while (p->len > 0) {
        ssize_t w = write(fd, p->data + p->off, p->len);
        if (w < 0) {
            if (errno == EAGAIN)
                return;
            if (errno == EINTR)
                continue;
            close_conn(fd);
            return;
        }
        p->off += (uint32_t)w;
        p->len -= (uint32_t)w;
    }
    watch(fd, EPOLLIN, EPOLL_CTL_MOD);
}

static void on_listener(int lfd)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return; /* EAGAIN, or EMFILE etc.: try again at the next event */
        if ((size_t)fd >= pend_size) {
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        pend[fd].off = pend[fd].len = 0;
        watch(fd, EPOLLIN, EPOLL_CTL_ADD);
    }
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    int port = 0, backlog = 4096;
    uint64_t spin_ns = 0;
    static const struct option longopts[] = {
        {"host", required_argument, 0, 'h'},
        {"port", required_argument, 0, 'p'},
        {"backlog", required_argument, 0, 'b'},
        {"spin", required_argument, 0, 's'},
        {0, 0, 0, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'h': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'b': backlog = atoi(optarg); break;
        case 's': spin_ns = strtoull(optarg, NULL, 10) * 1000u; break;
        default:
            fprintf(stderr, "usage: epoll_echo [--host H] [--port P] [--backlog N] [--spin US]\n");
            return 2;
        }
    }
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
    pend_size = rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > (1u << 20) ? (1u << 20) : rl.rlim_cur;
    pend = calloc(pend_size, sizeof *pend);

    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "epoll_echo: --host must be an IPv4 literal\n");
        return 2;
    }
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (pend == NULL || lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        listen(lfd, backlog) != 0) {
        perror("epoll_echo");
        return 1;
    }
    socklen_t len = sizeof sa;
    getsockname(lfd, (struct sockaddr *)&sa, &len);
    ep = epoll_create1(EPOLL_CLOEXEC);
    watch(lfd, EPOLLIN, EPOLL_CTL_ADD);

    struct sigaction act = {.sa_handler = on_signal};
    sigaction(SIGINT, &act, NULL);
    sigaction(SIGTERM, &act, NULL);
    signal(SIGPIPE, SIG_IGN);
    printf("epoll_echo listening on %s:%u\n", host, ntohs(sa.sin_port));
    fflush(stdout);

    struct epoll_event evs[EVENTS_MAX];
    uint64_t last_event_ns = 0;
    while (running) {
        int n = 0;
        while (spin_ns != 0 && running && (n = epoll_wait(ep, evs, EVENTS_MAX, 0)) == 0 &&
               now_ns() - last_event_ns < spin_ns) {
        }
        if (n == 0 && running)
            n = epoll_wait(ep, evs, EVENTS_MAX, -1);
        if (spin_ns != 0 && n > 0)
            last_event_ns = now_ns();
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd)
                on_listener(lfd);
            else if (evs[i].events & EPOLLOUT)
                on_writable(fd);
            else
                on_readable(fd); /* EPOLLIN, EPOLLHUP, EPOLLERR: read tells */
        }
    }
    return 0;
}
