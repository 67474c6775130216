/* A TCP proxy on one zcn loop.
 *
 *   tcp_proxy LISTEN_HOST:PORT UPSTREAM_HOST:PORT
 *
 * Addresses are literals (IPv4, or IPv6 in brackets: [::1]:8080); a listen
 * port of 0 picks a free one. The first line of output says where it
 * listens:
 *
 *   tcp_proxy listening on 127.0.0.1:40123, upstream 127.0.0.1:8080
 *
 * For each accepted client the loop connects to the upstream (1000 ms
 * timeout) and forwards both ways with zcn_loop_forward(ZCN_FORWARD_AUTO):
 * received buffers move to the other side's send queue without a copy or a
 * callback, each side's receive is gated on the other side's queue (a peer
 * that does not read pauses the one that writes to it: memory stays
 * bounded), and a FIN is passed on as a shutdown of the other side once
 * what came before it is sent (half-close, so `echo hi | nc -N` gets the
 * upstream's answer after its EOF). A direction that streams (full
 * buffers in a row) switches by itself to splice(2) through a pipe, and
 * back when the messages get small; ZCN_FORWARD_SPLICE would splice from
 * the start, which costs more CPU for small messages (docs/PERFORMANCE.md).
 *
 * The client is forwarded to the upstream while that one is still
 * connecting: its receive starts paused and waits for the connect, so what
 * it sends early is not lost. An upstream that refuses or does not answer
 * in time closes the client at once. When one side ends -- reset, error,
 * timeout -- the other is aborted (a reset passed on); when both have
 * finished sending the last one's close is graceful.
 *
 * SIGINT/SIGTERM stop the loop (zcn_loop_stop is async-signal-safe); one
 * stats line is printed and the exit status is 0. */
#define _POSIX_C_SOURCE 200809L /* sigaction */
#include <zero_copy_net.h>

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#define CONNECT_TIMEOUT_MS 1000
/* Two connections per client. */
#define CONNECTIONS_MAX 32768
/* Pool buffers of 16 KiB: 64 MiB of address space, touched as used. Each
 * direction of a pair holds at most its queue cap (1 MiB by default, less
 * under pressure), so a few stalled peers cannot take the pool. */
#define BUFFERS 4096

/* One entry per fd number: the other side of its pair, and whether its
 * peer has finished sending. A connection's fd is not reused before its
 * on_close has returned, so the table cannot name a stranger. */
struct side {
    int peer;           /* -1: no pair (alone, or the pair has ended) */
    bool eof;
};

struct proxy {
    ZCN_Loop *loop;
    struct side *sides;
    size_t sides_n;
    char upstream_host[64];
    uint16_t upstream_port;
    uint64_t clients, upstream_failed, upstream_connected, resets, graceful;
};

static ZCN_Loop *g_loop;

static void on_signal(int sig)
{
    (void)sig;
    zcn_loop_stop(g_loop);
}

static void pair_set(struct proxy *p, int a, int b)
{
    p->sides[a] = (struct side){.peer = b};
    p->sides[b] = (struct side){.peer = a};
}

/* fd's pair ends: the other side is told. Graceful when both peers have
 * finished sending (each FIN was passed on); otherwise fd went by a reset,
 * an error or a timeout, and the other side is aborted so its peer hears
 * of it at once. */
static void pair_end(struct proxy *p, int fd)
{
    struct side *me = &p->sides[fd];
    int other = me->peer;
    bool graceful = me->eof;
    me->peer = -1;
    me->eof = false;
    if (other < 0 || p->sides[other].peer != fd)
        return;
    graceful = graceful && p->sides[other].eof;
    p->sides[other].peer = -1;
    if (graceful) {
        p->graceful++;
        zcn_loop_close(p->loop, other); /* ZCN_ERR_CLOSED: it is closing already */
    } else {
        p->resets++;
        zcn_loop_abort(p->loop, other);
    }
}

static void on_eof(void *user_data, int fd)
{
    struct proxy *p = user_data;
    if ((size_t)fd < p->sides_n)
        p->sides[fd].eof = true;
}

static void on_close(void *user_data, int fd)
{
    struct proxy *p = user_data;
    if ((size_t)fd < p->sides_n)
        pair_end(p, fd);
}

static void on_connect(void *user_data, int fd, ZCN_Error result)
{
    struct proxy *p = user_data;
    if ((size_t)fd >= p->sides_n)
        return;
    if (result == ZCN_OK) {
        p->upstream_connected++;
        return;
    }
    /* No on_close follows a failed connect: the client goes now. */
    p->upstream_failed++;
    int client = p->sides[fd].peer;
    p->sides[fd] = (struct side){.peer = -1};
    if (client >= 0 && p->sides[client].peer == fd) {
        p->sides[client].peer = -1;
        zcn_loop_close(p->loop, client);
    }
}

static void on_accept(void *user_data, int client)
{
    struct proxy *p = user_data;
    p->clients++;
    ZCN_ConnectConfig cc = {
        .address = p->upstream_host,
        .port = p->upstream_port,
        .timeout_ms = CONNECT_TIMEOUT_MS,
        .flags = ZCN_SERVER_HALF_CLOSE,
        .user_data = p,
        .on_connect = on_connect,
        .on_eof = on_eof,
        .on_close = on_close,
    };
    int up = -1;
    ZCN_Error err = zcn_loop_connect(p->loop, &cc, &up);
    if (err != ZCN_OK || (size_t)up >= p->sides_n || (size_t)client >= p->sides_n) {
        p->upstream_failed++;
        if (err == ZCN_OK)
            zcn_loop_abort(p->loop, up);
        zcn_loop_close(p->loop, client);
        return;
    }
    pair_set(p, client, up);
    /* The upstream is still connecting: it has no room yet, so the client's
     * receive waits for the connect; the reverse direction starts with it. */
    if (zcn_loop_forward(p->loop, client, up, ZCN_FORWARD_AUTO) != ZCN_OK ||
        zcn_loop_forward(p->loop, up, client, ZCN_FORWARD_AUTO) != ZCN_OK) {
        zcn_loop_abort(p->loop, up);
        zcn_loop_abort(p->loop, client);
    }
}

/* "host:port" or "[v6]:port" into host and port; false if malformed. */
static bool split_hostport(const char *arg, char *host, size_t host_cap, uint16_t *port)
{
    const char *colon = strrchr(arg, ':');
    if (colon == NULL || colon == arg)
        return false;
    const char *h = arg;
    size_t hlen = (size_t)(colon - arg);
    if (h[0] == '[') {
        if (hlen < 3 || h[hlen - 1] != ']')
            return false;
        h++;
        hlen -= 2;
    }
    if (hlen >= host_cap)
        return false;
    char *end;
    errno = 0;
    long v = strtol(colon + 1, &end, 10);
    if (errno != 0 || *end != '\0' || end == colon + 1 || v < 0 || v > 65535)
        return false;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    *port = (uint16_t)v;
    return true;
}

static void print_stats(const struct proxy *p)
{
    ZCN_LoopStats st;
    zcn_loop_stats(p->loop, &st);
    printf("tcp_proxy stats: clients=%" PRIu64 " upstream_connected=%" PRIu64
           " upstream_failed=%" PRIu64 " graceful=%" PRIu64 " resets=%" PRIu64
           " connections_active=%" PRIu64 " bytes_received=%" PRIu64 " bytes_sent=%" PRIu64
           " recv_ops=%" PRIu64 " send_ops=%" PRIu64
           " zero_copy_sends=%" PRIu64 " coalesced_sends=%" PRIu64 " rejected=%" PRIu64
           " evictions=%" PRIu64 " send_timeouts=%" PRIu64 "\n",
           p->clients, p->upstream_connected, p->upstream_failed, p->graceful, p->resets,
           st.tcp.connections_active, st.tcp.bytes_received, st.tcp.bytes_sent,
           st.tcp.recv_ops, st.tcp.send_ops, st.tcp.sends_zero_copy, st.tcp.sends_coalesced, st.tcp.connections_rejected,
           st.tcp.evictions, st.tcp.send_timeouts);
}

int main(int argc, char **argv)
{
    struct proxy p = {0};
    char listen_host[64];
    uint16_t listen_port;
    if (argc != 3 || !split_hostport(argv[1], listen_host, sizeof listen_host, &listen_port) ||
        !split_hostport(argv[2], p.upstream_host, sizeof p.upstream_host, &p.upstream_port) ||
        p.upstream_port == 0) {
        fprintf(stderr, "usage: %s LISTEN_HOST:PORT UPSTREAM_HOST:PORT  (address literals; "
                "[v6]:port; listen port 0 = any)\n", argc > 0 ? argv[0] : "tcp_proxy");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);

    struct rlimit rl;
    p.sides_n = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
                        rl.rlim_cur < (1u << 24)
                    ? (size_t)rl.rlim_cur
                    : (1u << 20);
    p.sides = malloc(p.sides_n * sizeof *p.sides);
    if (p.sides == NULL) {
        fprintf(stderr, "tcp_proxy: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < p.sides_n; i++)
        p.sides[i] = (struct side){.peer = -1};

    ZCN_LoopConfig lc = {
        .io_uring_entries = 4096,
        .buffer_pool_size = BUFFERS,
        .connections_max = CONNECTIONS_MAX, /* capped by RLIMIT_NOFILE */
    };
    ZCN_Error err = ZCN_OK;
    p.loop = g_loop = zcn_loop_create(&lc, &err);
    if (p.loop == NULL) {
        fprintf(stderr, "tcp_proxy: %s: %s\n", zcn_strerror(err), zcn_error_detail());
        return 1;
    }
    ZCN_Config sc = {
        .address = listen_host,
        .port = listen_port,
        .backlog = 4096,
        .flags = ZCN_SERVER_HALF_CLOSE,
    };
    ZCN_Server *srv = zcn_server_create_on(p.loop, &sc, &err);
    if (srv == NULL) {
        fprintf(stderr, "tcp_proxy: listen on %s: %s: %s\n", argv[1], zcn_strerror(err),
                zcn_error_detail());
        zcn_loop_destroy(p.loop);
        return 1;
    }
    /* No on_data: forwarded data never reaches it, and data of a side whose
     * pair has ended (it is being aborted) is dropped. */
    zcn_server_set_callbacks(srv, &p, on_accept, NULL, on_close);
    zcn_server_set_eof_callback(srv, on_eof);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    err = zcn_server_start(srv);
    if (err == ZCN_OK) {
        bool v6 = strchr(listen_host, ':') != NULL, up6 = strchr(p.upstream_host, ':') != NULL;
        printf("tcp_proxy listening on %s%s%s:%u, upstream %s%s%s:%u\n", v6 ? "[" : "",
               listen_host, v6 ? "]" : "", zcn_server_port(srv), up6 ? "[" : "",
               p.upstream_host, up6 ? "]" : "", p.upstream_port);
        err = zcn_loop_run(p.loop); /* until zcn_loop_stop */
    }
    if (err != ZCN_OK)
        fprintf(stderr, "tcp_proxy: %s: %s\n", zcn_strerror(err), zcn_error_detail());
    print_stats(&p);
    zcn_loop_destroy(p.loop);
    free(p.sides);
    return err == ZCN_OK ? 0 : 1;
}
