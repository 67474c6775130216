/* tcp_client: a client on a zcn loop that survives its server going away.
 *
 *     tcp_client HOST PORT [COUNT]
 *
 * Connects to HOST:PORT (an IPv4 or IPv6 literal), sends "ping N\n" and
 * waits for the answer (any echo server will do: examples/tcp_echo), COUNT
 * times (default 10), then exits 0. When the connection fails or breaks,
 * it reconnects after a back-off on the loop's timers: 50 ms, doubling up to
 * 2 s, reset by a connection that works; a message that was not answered
 * is sent again on the next connection. SIGINT/SIGTERM stop it (exit 1).
 * One line per event on stderr, the totals on stdout. */
#define _POSIX_C_SOURCE 200809L
#include <zero_copy_net.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 2000

static struct {
    ZCN_Loop *loop;
    const char *host;
    uint16_t port;
    unsigned count, answered, connects, failures;
    unsigned backoff_ms;
    int fd;                     /* -1 while not connected */
    char line[64];              /* the message in flight */
    size_t line_len, got;       /* bytes of its answer received so far */
    int done;
} g = {.fd = -1};

static void try_connect(void);

static void retry_timer(void *ud, uint64_t id)
{
    (void)ud;
    (void)id;
    try_connect();
}

static void schedule_retry(void)
{
    unsigned ms = g.backoff_ms;
    g.backoff_ms = ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : ms * 2;
    fprintf(stderr, "tcp_client: retrying in %u ms\n", ms);
    uint64_t id;
    if (zcn_loop_timer_start(g.loop, ms, 0, retry_timer, NULL, &id) != ZCN_OK) {
        fprintf(stderr, "tcp_client: timer: %s\n", zcn_error_detail());
        zcn_loop_stop(g.loop);
    }
}

static void send_next(void)
{
    if (g.answered == g.count) {
        g.done = 1;
        zcn_loop_close(g.loop, g.fd);
        return;
    }
    g.line_len = (size_t)snprintf(g.line, sizeof g.line, "ping %u\n", g.answered + 1);
    g.got = 0;
    ZCN_Error e = zcn_loop_send(g.loop, g.fd, (const uint8_t *)g.line, g.line_len);
    if (e != ZCN_OK) {
        fprintf(stderr, "tcp_client: send: %s\n", zcn_strerror(e));
        zcn_loop_abort(g.loop, g.fd);
    }
}

static void on_connect(void *ud, int fd, ZCN_Error result)
{
    (void)ud;
    if (result != ZCN_OK) {
        g.failures++;
        fprintf(stderr, "tcp_client: connect: %s\n", zcn_strerror(result));
        schedule_retry();
        return;
    }
    g.connects++;
    g.fd = fd;
    fprintf(stderr, "tcp_client: connected (fd %d)\n", fd);
    send_next();
}

static void on_data(void *ud, int fd, const uint8_t *data, size_t len)
{
    (void)ud;
    (void)fd;
    /* The answer may come in pieces; it must be our line back. */
    if (g.got + len > g.line_len || memcmp(data, g.line + g.got, len) != 0) {
        fprintf(stderr, "tcp_client: unexpected answer\n");
        zcn_loop_abort(g.loop, g.fd);
        return;
    }
    g.got += len;
    if (g.got == g.line_len) {
        g.answered++;
        g.backoff_ms = BACKOFF_MIN_MS; /* this connection works */
        send_next();
    }
}

static void on_close(void *ud, int fd)
{
    (void)ud;
    (void)fd;
    g.fd = -1;
    if (g.done) {
        zcn_loop_stop(g.loop);
        return;
    }
    fprintf(stderr, "tcp_client: connection lost after %u answers\n", g.answered);
    schedule_retry();
}

static void try_connect(void)
{
    ZCN_ConnectConfig cc = {
        .address = g.host,
        .port = g.port,
        .timeout_ms = 1000,
        .on_connect = on_connect,
        .on_data = on_data,
        .on_close = on_close,
    };
    int fd;
    ZCN_Error e = zcn_loop_connect(g.loop, &cc, &fd);
    if (e != ZCN_OK) { /* a bad address, no fd left ...: no callback follows */
        fprintf(stderr, "tcp_client: connect: %s (%s)\n", zcn_strerror(e), zcn_error_detail());
        if (e == ZCN_ERR_INVALID_ARGUMENT) {
            zcn_loop_stop(g.loop);
            return;
        }
        g.failures++;
        schedule_retry();
    }
}

static void on_signal(int sig)
{
    (void)sig;
    zcn_loop_stop(g.loop); /* async-signal-safe */
}

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: %s HOST PORT [COUNT]\n", argv[0]);
        return 2;
    }
    g.host = argv[1];
    g.port = (uint16_t)atoi(argv[2]);
    g.count = argc == 4 ? (unsigned)atoi(argv[3]) : 10;
    g.backoff_ms = BACKOFF_MIN_MS;
    ZCN_Error err;
    ZCN_LoopConfig cfg = {.buffer_pool_size = 64, .buffer_size = 4096, .connections_max = 4};
    g.loop = zcn_loop_create(&cfg, &err);
    if (g.loop == NULL) {
        fprintf(stderr, "tcp_client: %s (%s)\n", zcn_strerror(err), zcn_error_detail());
        return err >= ZCN_ERR_URING_DISABLED && err <= ZCN_ERR_MEMLOCK ? 77 : 1; /* 77: skip */
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    try_connect();
    zcn_loop_run(g.loop);
    printf("answers %u connects %u failures %u\n", g.answered, g.connects, g.failures);
    zcn_loop_destroy(g.loop);
    return g.done ? 0 : 1;
}
