/* Direct sends (docs/PERFORMANCE.md, "Direct sends"): when the completions
 * of a turn answer one connection, its send is a plain send(2) on the
 * loop's thread instead of an SQE. Checked here: a ping-pong goes direct
 * every time and ZCN_NO_DIRECT_SEND=1 turns it off; a turn answering two
 * connections uses SQEs; a direct send the socket takes only part of
 * finishes through the SQE path with every byte in order; a direct send
 * to a reset peer closes that connection alone, once, leaking nothing.
 * Real sockets on 127.0.0.1, one thread (the test is client and server),
 * every wait bounded. */
#include "t_helpers.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define RUN_UNTIL(l, cond, ms)                                                 \
    do {                                                                       \
        uint64_t dl_ = t_mono_ms() + (ms);                                     \
        while (!(cond) && t_mono_ms() < dl_)                                   \
            t_turn((l), 10);                                                   \
        if (!(cond))                                                           \
            fprintf(stderr, "%s:%d: not within %d ms: %s\n", __FILE__,         \
                    __LINE__, (int)(ms), #cond);                               \
        T_CHECK(cond);                                                         \
    } while (0)

static ZCN_ServerStats stats_of(ZCN_Server *s)
{
    ZCN_ServerStats st;
    T_CHECK_ERR(zcn_server_stats(s, &st), ZCN_OK);
    return st;
}

/* A server on its own loop whose on_data runs what `app` says. */
struct app {
    ZCN_Server *server;
    ZCN_Loop *loop;
    int fds[4];
    int accepted;
    int closes;
    /* on_data: echo (target < 0) or, for any data, send `reply_len`
     * bytes of pattern to fds[target] */
    int target;
    size_t reply_len;
    uint8_t *reply;
};

static void app_accept(void *ud, int fd)
{
    struct app *a = ud;
    if (a->accepted < 4)
        a->fds[a->accepted] = fd;
    a->accepted++;
}

static void app_data(void *ud, int fd, const uint8_t *data, size_t len)
{
    struct app *a = ud;
    if (a->target < 0)
        T_CHECK_ERR(zcn_server_send(a->server, fd, data, len), ZCN_OK);
    else
        T_CHECK_ERR(zcn_server_send(a->server, a->fds[a->target], a->reply, a->reply_len),
                    ZCN_OK);
}

static void app_close(void *ud, int fd)
{
    struct app *a = ud;
    (void)fd;
    a->closes++;
}

static void app_open(struct app *a, const ZCN_Config *extra)
{
    memset(a, 0, sizeof *a);
    a->target = -1;
    a->server = t_make_server(extra);
    a->loop = zcn_server_get_loop(a->server);
    T_CHECK(a->loop != NULL);
    T_CHECK_ERR(zcn_server_set_callbacks(a->server, a, app_accept, app_data, app_close), ZCN_OK);
    T_CHECK_ERR(zcn_server_start(a->server), ZCN_OK);
}

/* n clients, each accepted; returns them in cl[]. */
static void app_connect(struct app *a, int *cl, int n)
{
    for (int i = 0; i < n; i++) {
        cl[i] = t_connect(zcn_server_port(a->server));
        RUN_UNTIL(a->loop, a->accepted == i + 1, 5000);
    }
}

static void app_close_all(struct app *a, int *cl, int n)
{
    for (int i = 0; i < n; i++)
        close(cl[i]);
    RUN_UNTIL(a->loop, a->closes == a->accepted, 5000);
    ZCN_ServerStats st = stats_of(a->server);
    T_CHECK(st.connections_active == 0);
    T_CHECK(st.buffers_in_use == 0);
    T_CHECK_ERR(zcn_server_destroy(a->server), ZCN_OK);
    free(a->reply);
}

/* Reads len bytes from fd with the loop turning meanwhile (the test is
 * both ends); false if they do not come within 5 s. */
static bool pump_recv(ZCN_Loop *l, int fd, uint8_t *buf, size_t len)
{
    size_t got = 0;
    uint64_t dl = t_mono_ms() + 5000;
    while (got < len && t_mono_ms() < dl) {
        ssize_t n = recv(fd, buf + got, len - got, MSG_DONTWAIT);
        if (n > 0) {
            got += (size_t)n;
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            fprintf(stderr, "pump_recv: %s after %zu of %zu bytes\n",
                    n == 0 ? "EOF" : strerror(errno), got, len);
            return false;
        }
        t_turn(l, 10);
    }
    if (got != len)
        fprintf(stderr, "pump_recv: %zu of %zu bytes (%s)\n", got, len, strerror(errno));
    return got == len;
}

/* 1 connection x depth 1: every answer is the only one of its turn. */
static void test_ping_pong(bool knob_off)
{
    if (knob_off)
        setenv("ZCN_NO_DIRECT_SEND", "1", 1); /* read at create */
    struct app a;
    app_open(&a, NULL);
    unsetenv("ZCN_NO_DIRECT_SEND");
    int cl;
    app_connect(&a, &cl, 1);
    enum { ROUNDS = 200, LEN = 64 };
    uint8_t out[LEN], in[LEN];
    for (int r = 0; r < ROUNDS; r++) {
        for (int i = 0; i < LEN; i++)
            out[i] = (uint8_t)(r * 7 + i);
        t_send_all(cl, out, LEN);
        T_CHECK(pump_recv(a.loop, cl, in, LEN));
        T_CHECK(memcmp(in, out, LEN) == 0);
    }
    ZCN_ServerStats st = stats_of(a.server);
    fprintf(stderr, "ping-pong%s: send_ops %llu sends_direct %llu\n",
            knob_off ? " (ZCN_NO_DIRECT_SEND=1)" : "", (unsigned long long)st.send_ops,
            (unsigned long long)st.sends_direct);
    T_CHECK(st.bytes_sent == (uint64_t)ROUNDS * LEN);
    T_CHECK(st.send_ops >= ROUNDS);
    if (knob_off)
        T_CHECK(st.sends_direct == 0);
    else
        T_CHECK(st.sends_direct == st.send_ops); /* nothing else to answer */
    app_close_all(&a, &cl, 1);
}

/* Two connections' requests in one batch: two answers, both SQEs (which
 * the next wait submits together, one system call for both). */
static void test_two_answers_use_sqes(void)
{
    struct app a;
    app_open(&a, NULL);
    int cl[2];
    app_connect(&a, cl, 2);
    ZCN_ServerStats before = stats_of(a.server);
    t_send_all(cl[0], "ab", 2);
    t_send_all(cl[1], "cd", 2);
    uint8_t in[2];
    T_CHECK(pump_recv(a.loop, cl[0], in, 2) && memcmp(in, "ab", 2) == 0);
    T_CHECK(pump_recv(a.loop, cl[1], in, 2) && memcmp(in, "cd", 2) == 0);
    ZCN_ServerStats st = stats_of(a.server);
    uint64_t direct = st.sends_direct - before.sends_direct;
    uint64_t ops = st.send_ops - before.send_ops;
    fprintf(stderr, "two answers: send_ops %llu, direct %llu\n", (unsigned long long)ops,
            (unsigned long long)direct);
    T_CHECK(ops == 2);
    /* Both requests were in the kernel before the turn, so they are one
     * batch (on io_uring the receives' completions are posted when the
     * wait enters); the epoll backend may read them in two. */
    if (!t_on_epoll())
        T_CHECK(direct == 0);
    app_close_all(&a, cl, 2);
}

/* A direct send larger than the socket takes (a small send buffer here,
 * the peer's default receive buffer, 1 MiB): the kernel takes part, the
 * rest goes through an SQE that waits for room, and the peer gets every
 * byte in order once it reads. */
static void test_partial_direct_send(void)
{
    struct app a;
    app_open(&a, NULL);
    int cl[2];
    app_connect(&a, cl, 2);
    int small = 4096;
    T_CHECK(setsockopt(a.fds[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small) == 0);
    enum { BIG = 1 << 20 };
    a.target = 0;
    a.reply_len = BIG;
    a.reply = malloc(BIG);
    T_CHECK(a.reply != NULL);
    for (size_t i = 0; i < BIG; i++)
        a.reply[i] = (uint8_t)(i * 131 + (i >> 12));
    ZCN_ServerStats before = stats_of(a.server);
    /* cl[1]'s byte makes the server send 1 MiB to cl[0], which is not
     * reading yet */
    t_send_all(cl[1], "g", 1);
    RUN_UNTIL(a.loop, stats_of(a.server).send_ops > before.send_ops, 5000);
    ZCN_ServerStats mid = stats_of(a.server);
    T_CHECK(mid.sends_direct == before.sends_direct + 1);
    T_CHECK(mid.bytes_sent - before.bytes_sent < BIG); /* only part went */
    T_CHECK(zcn_server_queued_bytes(a.server, a.fds[0]) > 0);
    uint8_t *in = malloc(BIG);
    T_CHECK(in != NULL);
    T_CHECK(pump_recv(a.loop, cl[0], in, BIG));
    T_CHECK(memcmp(in, a.reply, BIG) == 0);
    free(in);
    RUN_UNTIL(a.loop, zcn_server_queued_bytes(a.server, a.fds[0]) == 0, 5000);
    ZCN_ServerStats st = stats_of(a.server);
    T_CHECK(st.bytes_sent - before.bytes_sent == BIG);
    T_CHECK(st.send_ops - before.send_ops >= 2); /* the direct part, then SQEs */
    T_CHECK(a.closes == 0);
    app_close_all(&a, cl, 2);
}

/* A direct send to a peer that reset (its receive paused, so only the
 * send finds out): that connection closes, once, with its buffers back;
 * the other goes on being served. */
static void test_direct_send_to_reset_peer(void)
{
    struct app a;
    app_open(&a, NULL);
    int cl[2];
    app_connect(&a, cl, 2);
    T_CHECK_ERR(zcn_loop_pause_recv(a.loop, a.fds[0]), ZCN_OK);
    for (int i = 0; i < 5; i++)
        t_turn(a.loop, 5); /* the pause reaches the kernel */
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    T_CHECK(setsockopt(cl[0], SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0);
    close(cl[0]); /* RST */
    for (int i = 0; i < 5; i++)
        t_turn(a.loop, 5);
    a.target = 0;
    a.reply_len = 100;
    a.reply = calloc(1, 100);
    T_CHECK(a.reply != NULL);
    ZCN_ServerStats before = stats_of(a.server);
    if (a.closes == 0) {
        t_send_all(cl[1], "g", 1);
        RUN_UNTIL(a.loop, a.closes == 1, 5000);
        ZCN_ServerStats st = stats_of(a.server);
        fprintf(stderr, "reset peer: sends_direct +%llu, send_ops +%llu\n",
                (unsigned long long)(st.sends_direct - before.sends_direct),
                (unsigned long long)(st.send_ops - before.send_ops));
        T_CHECK(st.sends_direct == before.sends_direct + 1);
        T_CHECK(st.send_ops == before.send_ops); /* it failed */
        T_CHECK(st.connections_active == 1);
    } else {
        /* The epoll backend may report the reset without a receive: the
         * send path is then not what closed it. */
        T_CHECK(t_on_epoll());
        fprintf(stderr, "reset peer: reported before the send (epoll)\n");
    }
    for (int i = 0; i < 5; i++)
        t_turn(a.loop, 5);
    T_CHECK(a.closes == 1);
    /* the other connection is still served */
    a.target = -1;
    uint8_t in[3];
    t_send_all(cl[1], "xyz", 3);
    T_CHECK(pump_recv(a.loop, cl[1], in, 3) && memcmp(in, "xyz", 3) == 0);
    app_close_all(&a, &cl[1], 1);
}

int main(void)
{
    t_require_loop();
    unsetenv("ZCN_NO_DIRECT_SEND");
    test_ping_pong(false);
    test_ping_pong(true);
    test_two_answers_use_sqes();
    test_partial_direct_send();
    test_direct_send_to_reset_peer();
    printf("test_direct_send: all passed\n");
    return T_EXIT_PASS;
}
