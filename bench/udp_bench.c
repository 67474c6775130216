/* UDP echo benchmark tools (driven by bench/udp_bench.py):
 *
 *   udp_bench zcn PORT [BUFFERS] zcn UDP echo server (C echo handler, zcn_udp_run;
 *                               BUFFERS pool buffers, default 1024), default
 *                               receive mode (readiness)
 *   udp_bench zcn-nogso PORT [BUFFERS]
 *                               the same with ZCN_UDP_NO_GSO (each datagram
 *                               its own send, as in the baselines)
 *   udp_bench zcn-multishot PORT [BUFFERS]
 *                               the same with ZCN_UDP_RECV_MULTISHOT
 *   udp_bench baseline PORT     plain recvmmsg/sendmmsg echo server (no zcn):
 *                               blocking recvmmsg (MSG_WAITFORONE)
 *   udp_bench baseline-poll PORT
 *                               the same, readiness-driven: recvmmsg with
 *                               MSG_DONTWAIT, poll() for POLLIN when empty
 *                               (how an epoll/io_uring-poll loop would read)
 *   udp_bench load PORT SIZE SECONDS [WINDOW] [BURST]
 *                               closed-loop load generator: keeps WINDOW
 *                               datagrams in flight, sends in sendmmsg bursts
 *                               of BURST, checks every echoed byte, counts loss
 *
 * Servers print "ready PORT" once bound and stop on SIGINT/SIGTERM. The load
 * generator prints one line: "sent N received N bad N lost N seconds S".
 * Both servers get the same SO_RCVBUF/SO_SNDBUF (4 MiB) so neither drops
 * more for lack of socket memory. */
#include <zero_copy_net.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64               /* recvmmsg/sendmmsg vector in the baseline */
#define SOCKBUF (4 << 20)
#define STALL_MS 20            /* no echo for this long: in-flight ones are lost */

static volatile sig_atomic_t g_stop;
static ZCN_UdpSocket *g_sock;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
    if (g_sock != NULL)
        zcn_udp_stop(g_sock);
}

static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: blocking calls return EINTR */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static struct sockaddr_in loopback(uint16_t port)
{
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static void set_bufs(int fd)
{
    int v = SOCKBUF;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, sizeof v);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof v);
}

/* ---- servers ---------------------------------------------------------- */

static int run_zcn(uint16_t port, uint32_t buffers, uint32_t recv_mode, uint32_t flags)
{
    ZCN_UdpConfig cfg = {0};
    cfg.recv_mode = recv_mode;
    cfg.flags = flags;
    cfg.address = "127.0.0.1";
    cfg.port = port;
    cfg.buffer_count = buffers;
    cfg.buffer_size = 2048;
    cfg.sends_max = 4096;
    cfg.rcvbuf = SOCKBUF;
    cfg.sndbuf = SOCKBUF;
    ZCN_Error err;
    g_sock = zcn_udp_create(&cfg, &err);
    if (g_sock == NULL) {
        fprintf(stderr, "zcn_udp_create: %s (%s)\n", zcn_error_name(err), zcn_error_detail());
        return err >= ZCN_ERR_URING_DISABLED && err <= ZCN_ERR_MEMLOCK ? 77 : 1;
    }
    zcn_udp_use_echo_handler(g_sock);
    install_signals();
    printf("ready %u\n", zcn_udp_port(g_sock));
    fflush(stdout);
    err = zcn_udp_run(g_sock);
    ZCN_UdpStats st;
    zcn_udp_stats(g_sock, &st);
    fprintf(stderr, "zcn: received %llu sent %llu gso_sends %llu enobufs %llu send_drops %llu "
            "kernel_drops %llu\n",
            (unsigned long long)st.datagrams_received, (unsigned long long)st.datagrams_sent,
            (unsigned long long)st.gso_sends,
            (unsigned long long)st.recv_exhaustion_events,
            (unsigned long long)st.send_exhaustion_drops, (unsigned long long)st.kernel_drops);
    zcn_udp_destroy(g_sock);
    return err == ZCN_OK ? 0 : 1;
}

static int run_baseline(uint16_t port, bool poll_first)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    set_bufs(fd);
    struct sockaddr_in a = loopback(port);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        perror("bind");
        return 1;
    }
    socklen_t len = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &len);
    static uint8_t bufs[BATCH][2048];
    struct sockaddr_in peers[BATCH];
    struct iovec iov[BATCH];
    struct mmsghdr msgs[BATCH];
    install_signals();
    printf("ready %u\n", ntohs(a.sin_port));
    fflush(stdout);
    while (!g_stop) {
        for (int i = 0; i < BATCH; i++) {
            iov[i] = (struct iovec){bufs[i], sizeof bufs[i]};
            memset(&msgs[i], 0, sizeof msgs[i]);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = &peers[i];
            msgs[i].msg_hdr.msg_namelen = sizeof peers[i];
        }
        int n = recvmmsg(fd, msgs, BATCH, poll_first ? MSG_DONTWAIT : MSG_WAITFORONE, NULL);
        if (n < 0 && poll_first && errno == EAGAIN) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            (void)poll(&p, 1, 100);
            continue;
        }
        if (n <= 0)
            continue; /* EINTR: g_stop decides */
        for (int i = 0; i < n; i++)
            iov[i].iov_len = msgs[i].msg_len; /* send back what came */
        int sent = 0;
        while (sent < n) {
            int m = sendmmsg(fd, msgs + sent, (unsigned)(n - sent), 0);
            if (m <= 0)
                break;
            sent += m;
        }
    }
    close(fd);
    return 0;
}

/* ---- load generator ------------------------------------------------------ */

struct load {
    int fd;
    size_t size;
    uint64_t next_seq;       /* next to send */
    uint64_t inflight;
    uint64_t sent, received, bad, lost;
    uint8_t *pattern;        /* 256 + size bytes: datagram seq s is pattern + (s & 255) */
};

static void fill(struct load *L, uint8_t *buf, uint64_t seq)
{
    memcpy(buf, L->pattern + (seq & 255), L->size);
    memcpy(buf, &seq, 8);
}

static bool check(const struct load *L, const uint8_t *buf, size_t len)
{
    if (len != L->size)
        return false;
    uint64_t seq;
    memcpy(&seq, buf, 8);
    if (seq >= L->next_seq)
        return false;
    return memcmp(buf + 8, L->pattern + (seq & 255) + 8, len - 8) == 0;
}

static void send_burst(struct load *L, int burst)
{
    static uint8_t bufs[64][2048];
    struct iovec iov[64];
    struct mmsghdr msgs[64];
    for (int i = 0; i < burst; i++) {
        fill(L, bufs[i], L->next_seq + (uint64_t)i);
        iov[i] = (struct iovec){bufs[i], L->size};
        memset(&msgs[i], 0, sizeof msgs[i]);
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    int n = sendmmsg(L->fd, msgs, (unsigned)burst, 0);
    if (n > 0) {
        L->next_seq += (uint64_t)n;
        L->sent += (uint64_t)n;
        L->inflight += (uint64_t)n;
    }
}

/* Receives what is there (waiting up to wait_ms for the first); returns
 * how many came. */
static int receive(struct load *L, int wait_ms)
{
    static uint8_t bufs[64][2048];
    struct iovec iov[64];
    struct mmsghdr msgs[64];
    struct pollfd p = {L->fd, POLLIN, 0};
    if (poll(&p, 1, wait_ms) <= 0)
        return 0;
    for (int i = 0; i < 64; i++) {
        iov[i] = (struct iovec){bufs[i], sizeof bufs[i]};
        memset(&msgs[i], 0, sizeof msgs[i]);
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    int n = recvmmsg(L->fd, msgs, 64, MSG_DONTWAIT, NULL);
    if (n <= 0)
        return 0;
    for (int i = 0; i < n; i++) {
        if (!check(L, bufs[i], msgs[i].msg_len))
            L->bad++;
        L->received++;
        if (L->inflight > 0)
            L->inflight--;
    }
    return n;
}

static int run_load(uint16_t port, size_t size, double seconds, uint64_t window, int burst)
{
    if (size < 8 || size > 2048 || burst < 1 || burst > 64 || window < (uint64_t)burst) {
        fprintf(stderr, "load: 8 <= size <= 2048, 1 <= burst <= 64, window >= burst\n");
        return 2;
    }
    struct load L;
    memset(&L, 0, sizeof L);
    L.size = size;
    L.pattern = malloc(256 + size);
    for (size_t i = 0; i < 256 + size; i++)
        L.pattern[i] = (uint8_t)(i * 131 + 7);
    L.fd = socket(AF_INET, SOCK_DGRAM, 0);
    set_bufs(L.fd);
    struct sockaddr_in a = loopback(port);
    if (connect(L.fd, (struct sockaddr *)&a, sizeof a) != 0) {
        perror("connect");
        return 1;
    }
    double start = now_s(), end = start + seconds, last_progress = start;
    while (now_s() < end) {
        while (L.inflight + (uint64_t)burst <= window)
            send_burst(&L, burst);
        if (receive(&L, 1) > 0) {
            last_progress = now_s();
        } else if (now_s() - last_progress > STALL_MS / 1000.0) {
            /* Nothing came back for a while: what is in flight is lost. */
            L.lost += L.inflight;
            L.inflight = 0;
            last_progress = now_s();
        }
    }
    double elapsed = now_s() - start;
    /* Late echoes still count as received (and not lost). */
    double drain_end = now_s() + 0.2;
    while (L.inflight > 0 && now_s() < drain_end)
        receive(&L, 10);
    L.lost += L.inflight;
    printf("sent %llu received %llu bad %llu lost %llu seconds %.6f\n",
           (unsigned long long)L.sent, (unsigned long long)L.received,
           (unsigned long long)L.bad, (unsigned long long)L.lost, elapsed);
    free(L.pattern);
    close(L.fd);
    return L.bad == 0 ? 0 : 3;
}

int main(int argc, char **argv)
{
    uint32_t buffers = argc > 3 ? (uint32_t)atoi(argv[3]) : 1024;
    if (argc >= 3 && strcmp(argv[1], "zcn") == 0)
        return run_zcn((uint16_t)atoi(argv[2]), buffers, 0, 0);
    if (argc >= 3 && strcmp(argv[1], "zcn-nogso") == 0)
        return run_zcn((uint16_t)atoi(argv[2]), buffers, 0, ZCN_UDP_NO_GSO);
    if (argc >= 3 && strcmp(argv[1], "zcn-multishot") == 0)
        return run_zcn((uint16_t)atoi(argv[2]), buffers, ZCN_UDP_RECV_MULTISHOT, 0);
    if (argc >= 3 && strcmp(argv[1], "baseline") == 0)
        return run_baseline((uint16_t)atoi(argv[2]), false);
    if (argc >= 3 && strcmp(argv[1], "baseline-poll") == 0)
        return run_baseline((uint16_t)atoi(argv[2]), true);
    if (argc >= 5 && strcmp(argv[1], "load") == 0)
        return run_load((uint16_t)atoi(argv[2]), (size_t)atol(argv[3]), atof(argv[4]),
                        argc > 5 ? (uint64_t)atol(argv[5]) : 256,
                        argc > 6 ? atoi(argv[6]) : 32);
    fprintf(stderr, "usage: udp_bench zcn|zcn-nogso|zcn-multishot PORT [BUFFERS] | baseline PORT | baseline-poll PORT | load PORT SIZE SECONDS [WINDOW] [BURST]\n");
    return 2;
}
