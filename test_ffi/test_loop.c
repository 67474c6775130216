/* ZCN_Loop through the C API: outbound connects (refused, timed out, a
 * thousand at once to a listener on the same loop), a client and a server
 * on one loop with half-close, timers, fd watches, cross-thread calls, poll
 * mode with tags, two listeners on one loop, destroy with everything still
 * open, and the threading rule and bad input. Real sockets on 127.0.0.1,
 * every wait bounded. */
#include "t_helpers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

/* c/internal.h: the next `count` SQE requests find none free. */
void zcn_test_fail_sqes(uint32_t count);

#define LOCALHOST "127.0.0.1"
#define FD_SLOTS 65536

/* A listener on loop l, 127.0.0.1, an ephemeral port, started. */
static ZCN_Server *new_server_on(ZCN_Loop *l, uint32_t flags, uint32_t tag)
{
    ZCN_Config cfg = {.address = LOCALHOST, .flags = flags, .tag = tag};
    ZCN_Error err = ZCN_OK;
    ZCN_Server *s = zcn_server_create_on(l, &cfg, &err);
    if (s == NULL)
        fprintf(stderr, "zcn_server_create_on: %s (%s)\n", zcn_error_name(err),
                zcn_error_detail());
    T_CHECK(s != NULL);
    T_CHECK(zcn_server_port(s) != 0);
    T_CHECK(zcn_server_get_loop(s) == l);
    T_CHECK_ERR(zcn_server_start(s), ZCN_OK);
    return s;
}

/* Runs the loop until cond holds or ms have passed, then checks cond. */
#define RUN_UNTIL(l, cond, ms)                                                 \
    do {                                                                       \
        uint64_t dl_ = t_mono_ms() + (ms);                                     \
        while (!(cond) && t_mono_ms() < dl_)                                   \
            t_turn((l), 10);                                                     \
        if (!(cond))                                                           \
            fprintf(stderr, "%s:%d: not within %d ms: %s\n", __FILE__,         \
                    __LINE__, (int)(ms), #cond);                               \
        T_CHECK(cond);                                                         \
    } while (0)

/* Runs the loop for about ms. */
static void run_for(ZCN_Loop *l, int ms)
{
    uint64_t dl = t_mono_ms() + (uint64_t)ms;
    for (uint64_t now = t_mono_ms(); now < dl; now = t_mono_ms())
        t_turn(l, (int)(dl - now));
}

static ZCN_LoopStats loop_stats(ZCN_Loop *l)
{
    ZCN_LoopStats st;
    T_CHECK_ERR(zcn_loop_stats(l, &st), ZCN_OK);
    return st;
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

/* A port nothing listens on: bound, then closed. */
static uint16_t refused_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    T_CHECK(fd >= 0);
    struct sockaddr_in a = loopback(0);
    T_CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
    uint16_t port = port_of(fd);
    close(fd);
    return port;
}

/* A listener that never accepts, its queue full (backlog 0: one
 * connection queued, later SYNs dropped), so a connect to it hangs. */
#define FILLERS 3
struct full_listener {
    int fd;
    int fillers[FILLERS];
    uint16_t port;
};

static void full_listener_open(struct full_listener *f)
{
    f->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    T_CHECK(f->fd >= 0);
    struct sockaddr_in a = loopback(0);
    T_CHECK(bind(f->fd, (struct sockaddr *)&a, sizeof a) == 0);
    T_CHECK(listen(f->fd, 0) == 0);
    f->port = port_of(f->fd);
    a = loopback(f->port);
    for (int i = 0; i < FILLERS; i++) {
        f->fillers[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        T_CHECK(f->fillers[i] >= 0);
        int r = connect(f->fillers[i], (struct sockaddr *)&a, sizeof a);
        T_CHECK(r == 0 || errno == EINPROGRESS);
        if (i == 0)
            usleep(20 * 1000); /* the first completes and fills the queue */
    }
}

static void full_listener_close(struct full_listener *f)
{
    for (int i = 0; i < FILLERS; i++)
        close(f->fillers[i]);
    close(f->fd);
}

/* What one outbound connection saw. */
struct client {
    ZCN_Loop *loop;
    int fd;                 /* from zcn_loop_connect */
    int connects, closes, eofs;
    ZCN_Error result;
    int cb_fd;
    char got[256];
    size_t got_len;
    const char *msg;        /* sent from on_connect; NULL = nothing */
    size_t close_after;     /* close once this much came back (0 = never) */
    int sends_after_close;  /* zcn_loop_send from on_close: ZCN_ERR_CLOSED */
};

static void cl_connect(void *ud, int fd, ZCN_Error result)
{
    struct client *c = ud;
    c->connects++;
    c->result = result;
    c->cb_fd = fd;
    if (result == ZCN_OK && c->msg != NULL)
        T_CHECK_ERR(zcn_loop_send(c->loop, fd, (const uint8_t *)c->msg, strlen(c->msg)),
                    ZCN_OK);
}

static void cl_data(void *ud, int fd, const uint8_t *data, size_t len)
{
    struct client *c = ud;
    T_CHECK(fd == c->fd);
    T_CHECK(c->connects == 1 && c->result == ZCN_OK);
    T_CHECK(c->got_len + len < sizeof c->got);
    memcpy(c->got + c->got_len, data, len);
    c->got_len += len;
    c->got[c->got_len] = 0;
    if (c->close_after != 0 && c->got_len == c->close_after)
        T_CHECK_ERR(zcn_loop_close(c->loop, fd), ZCN_OK);
}

static void cl_close(void *ud, int fd)
{
    struct client *c = ud;
    T_CHECK(fd == c->fd);
    T_CHECK(c->connects == 1 && c->result == ZCN_OK); /* no on_close after a failure */
    c->closes++;
    if (zcn_loop_send(c->loop, fd, (const uint8_t *)"x", 1) == ZCN_ERR_CLOSED)
        c->sends_after_close++;
}

static void cl_eof(void *ud, int fd)
{
    struct client *c = ud;
    T_CHECK(fd == c->fd);
    c->eofs++;
}

static ZCN_Error client_connect(struct client *c, uint16_t port, uint32_t timeout_ms,
                                uint32_t tag)
{
    ZCN_ConnectConfig cc = {
        .address = LOCALHOST,
        .port = port,
        .timeout_ms = timeout_ms,
        .tag = tag,
        .user_data = c,
        .on_connect = cl_connect,
        .on_data = cl_data,
        .on_close = cl_close,
    };
    c->fd = -1;
    return zcn_loop_connect(c->loop, &cc, &c->fd);
}

/* ---- 1. a refused connect ------------------------------------------------ */

static void test_connect_refused(void)
{
    ZCN_Loop *l = t_new_loop(NULL);
    t_turn(l, 0);
    int fds = t_open_fds();
    struct client c = {.loop = l};
    T_CHECK_ERR(client_connect(&c, refused_port(), 0, 0), ZCN_OK);
    T_CHECK(c.fd >= 0);
    T_CHECK(c.connects == 0); /* never from inside the call */
    RUN_UNTIL(l, c.connects > 0, 2000);
    run_for(l, 30);
    T_CHECK(c.connects == 1);
    T_CHECK_ERR(c.result, (ZCN_Error)ECONNREFUSED);
    T_CHECK(c.cb_fd == c.fd);
    T_CHECK(c.closes == 0);
    T_CHECK(t_open_fds() == fds);
    T_CHECK_ERR(zcn_loop_close(l, c.fd), ZCN_ERR_CLOSED);
    ZCN_LoopStats st = loop_stats(l);
    T_CHECK(st.connects_started == 1);
    T_CHECK(st.connects_failed == 1);
    T_CHECK(st.connect_timeouts == 0);
    T_CHECK(st.tcp.connections_active == 0);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    fprintf(stderr, "connect refused: ECONNREFUSED once, no on_close, fds back\n");
}

/* ---- 2. a connect that times out ----------------------------------------- */

static void test_connect_timeout(void)
{
    ZCN_Loop *l = t_new_loop(NULL);
    t_turn(l, 0);
    int fds = t_open_fds();
    struct full_listener f;
    full_listener_open(&f);
    struct client c = {.loop = l};
    uint64_t t0 = t_mono_ms();
    T_CHECK_ERR(client_connect(&c, f.port, 200, 0), ZCN_OK);
    RUN_UNTIL(l, c.connects > 0, 3000);
    uint64_t elapsed = t_mono_ms() - t0;
    run_for(l, 20);
    T_CHECK(c.connects == 1);
    T_CHECK_ERR(c.result, (ZCN_Error)ETIMEDOUT);
    T_CHECK(c.closes == 0);
    T_CHECK(elapsed >= 150);
    T_CHECK(elapsed < 2000);
    ZCN_LoopStats st = loop_stats(l);
    T_CHECK(st.connect_timeouts == 1);
    T_CHECK(st.connects_failed == 1);
    T_CHECK(st.tcp.connections_active == 0);
    full_listener_close(&f);
    T_CHECK(t_open_fds() == fds);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    fprintf(stderr, "connect timeout: ETIMEDOUT after %llu ms\n", (unsigned long long)elapsed);
}

/* ---- 2b. connects that end early, the table's limit, idle timeouts ------- */

static void test_connect_edges(void)
{
    int fds = t_open_fds();
    ZCN_LoopConfig lc = {.connections_max = 3};
    ZCN_Loop *l = t_new_loop(&lc);
    struct full_listener f;
    full_listener_open(&f);
    struct client c[4];
    for (int i = 0; i < 3; i++) {
        c[i] = (struct client){.loop = l};
        T_CHECK_ERR(client_connect(&c[i], f.port, 10000, 0), ZCN_OK);
    }
    /* the table is full: nothing started, no fd, no callback */
    int before = t_open_fds();
    c[3] = (struct client){.loop = l};
    T_CHECK_ERR(client_connect(&c[3], f.port, 10000, 0), ZCN_ERR_EXHAUSTED);
    T_CHECK(c[3].fd == -1);
    T_CHECK(t_open_fds() == before);
    run_for(l, 30);
    /* still connecting: no sends, no shutdown; close and abort end it */
    uint8_t x = 'x';
    T_CHECK_ERR(zcn_loop_send(l, c[0].fd, &x, 1), ZCN_ERR_NOT_STARTED);
    T_CHECK_ERR(zcn_loop_shutdown(l, c[0].fd), ZCN_ERR_NOT_STARTED);
    T_CHECK_ERR(zcn_loop_close(l, c[0].fd), ZCN_OK);
    T_CHECK_ERR(zcn_loop_abort(l, c[1].fd), ZCN_OK);
    T_CHECK(c[0].connects == 0 && c[1].connects == 0); /* at the next turn */
    RUN_UNTIL(l, c[0].connects == 1 && c[1].connects == 1, 2000);
    T_CHECK_ERR(c[0].result, (ZCN_Error)ECANCELED);
    T_CHECK_ERR(c[1].result, (ZCN_Error)ECANCELED);
    run_for(l, 20);
    T_CHECK(c[0].connects == 1 && c[1].connects == 1 && c[2].connects == 0);
    T_CHECK(c[0].closes == 0 && c[1].closes == 0);
    T_CHECK(loop_stats(l).tcp.connections_active == 1);
    /* slots are free again */
    T_CHECK_ERR(client_connect(&c[3], f.port, 10000, 0), ZCN_OK);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    T_CHECK(c[2].connects == 1 && c[3].connects == 1);
    T_CHECK_ERR(c[2].result, ZCN_ERR_CLOSED);
    T_CHECK_ERR(c[3].result, ZCN_ERR_CLOSED);
    full_listener_close(&f);
    T_CHECK(t_open_fds() == fds);

    /* a connect that finds no free SQE is retried at the next turn */
    l = t_new_loop(NULL);
    ZCN_Server *echo = new_server_on(l, 0, 0);
    T_CHECK_ERR(zcn_server_use_echo_handler(echo), ZCN_OK);
    struct client late = {.loop = l, .msg = "late"};
    zcn_test_fail_sqes(1);
    T_CHECK_ERR(client_connect(&late, zcn_server_port(echo), 0, 0), ZCN_OK);
    RUN_UNTIL(l, late.got_len == 4, 2000);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    T_CHECK(late.closes == 1);

    /* bound first: to a given local port; one in use fails at once */
    l = t_new_loop(NULL);
    echo = new_server_on(l, 0, 0);
    T_CHECK_ERR(zcn_server_use_echo_handler(echo), ZCN_OK);
    struct client bound = {.loop = l, .msg = "bound"};
    uint16_t local = refused_port();
    ZCN_ConnectConfig bc = {.address = LOCALHOST,
                            .port = zcn_server_port(echo),
                            .local_address = LOCALHOST,
                            .local_port = local,
                            .user_data = &bound,
                            .on_connect = cl_connect,
                            .on_data = cl_data,
                            .on_close = cl_close};
    T_CHECK_ERR(zcn_loop_connect(l, &bc, &bound.fd), ZCN_OK);
    RUN_UNTIL(l, bound.got_len == 5, 2000);
    T_CHECK(port_of(bound.fd) == local);
    before = t_open_fds();
    struct client clash = {.loop = l};
    bc.user_data = &clash;
    bc.local_port = zcn_server_port(echo); /* a listener has it */
    T_CHECK_ERR(zcn_loop_connect(l, &bc, &clash.fd), (ZCN_Error)EADDRINUSE);
    T_CHECK(clash.fd == -1);
    T_CHECK(t_open_fds() == before);
    /* IPv6, where the machine has it */
    ZCN_Config c6 = {.address = "::1"};
    ZCN_Error err6;
    ZCN_Server *echo6 = zcn_server_create_on(l, &c6, &err6);
    if (echo6 != NULL) {
        T_CHECK_ERR(zcn_server_start(echo6), ZCN_OK);
        T_CHECK_ERR(zcn_server_use_echo_handler(echo6), ZCN_OK);
        struct client v6 = {.loop = l, .msg = "six", .close_after = 3};
        ZCN_ConnectConfig c6c = {.address = "::1",
                                 .port = zcn_server_port(echo6),
                                 .user_data = &v6,
                                 .on_connect = cl_connect,
                                 .on_data = cl_data,
                                 .on_close = cl_close};
        T_CHECK_ERR(zcn_loop_connect(l, &c6c, &v6.fd), ZCN_OK);
        RUN_UNTIL(l, v6.closes == 1, 2000);
        T_CHECK(strcmp(v6.got, "six") == 0);
    }
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    T_CHECK(bound.closes == 1 && clash.connects == 0);
    T_CHECK(t_open_fds() == fds);

    /* idle timeouts: an outbound connection (its own) and an accepted one
     * (its listener's), the connect timeout's slot reused for them */
    l = t_new_loop(NULL);
    ZCN_Config scfg = {.address = LOCALHOST, .idle_timeout_ms = 150};
    ZCN_Error err;
    ZCN_Server *srv = zcn_server_create_on(l, &scfg, &err);
    T_CHECK(srv != NULL);
    T_CHECK_ERR(zcn_server_start(srv), ZCN_OK);
    struct client quiet = {.loop = l}, idle = {.loop = l};
    T_CHECK_ERR(client_connect(&quiet, zcn_server_port(srv), 0, 0), ZCN_OK); /* never idles out */
    ZCN_ConnectConfig cc = {.address = LOCALHOST,
                            .port = zcn_server_port(srv),
                            .idle_timeout_ms = 80,
                            .timeout_ms = 50, /* connected well before */
                            .user_data = &idle,
                            .on_connect = cl_connect,
                            .on_data = cl_data,
                            .on_close = cl_close};
    uint64_t t0 = t_mono_ms();
    T_CHECK_ERR(zcn_loop_connect(l, &cc, &idle.fd), ZCN_OK);
    RUN_UNTIL(l, idle.closes == 1, 2000);
    uint64_t idle_ms = t_mono_ms() - t0;
    T_CHECK_ERR(idle.result, ZCN_OK);
    T_CHECK(idle_ms >= 70 && idle_ms < 1000);
    /* the server's side of `quiet` idles out at 150 ms: quiet sees EOF */
    RUN_UNTIL(l, quiet.closes == 1, 2000);
    ZCN_LoopStats st = loop_stats(l);
    T_CHECK(st.tcp.idle_timeouts == 2);
    T_CHECK(st.connect_timeouts == 0);
    T_CHECK(st.tcp.connections_active == 0);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    T_CHECK(t_open_fds() == fds);
    fprintf(stderr, "connect edges: EXHAUSTED at connections_max, close/abort while connecting "
            "(ECANCELED), idle timeouts out and in (%llu ms)\n", (unsigned long long)idle_ms);
}

/* ---- 3. many outbound connections to a listener on the same loop --------- */

struct accept_log {
    int accepts, closes, errors;
    uint8_t open[FD_SLOTS];
};

static void al_accept(void *ud, int fd)
{
    struct accept_log *a = ud;
    a->accepts++;
    if (fd < 0 || fd >= FD_SLOTS || a->open[fd])
        a->errors++;
    else
        a->open[fd] = 1;
}

static void al_close(void *ud, int fd)
{
    struct accept_log *a = ud;
    a->closes++;
    if (fd < 0 || fd >= FD_SLOTS || !a->open[fd])
        a->errors++;
    else
        a->open[fd] = 0;
}

static int many_conns(void)
{
    int n = 1000;
    struct rlimit rl;
    T_CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0);
    if (rl.rlim_cur < (rlim_t)(2 * n + 200))
        n = ((int)rl.rlim_cur - 200) / 2;
    return n;
}

static void test_many_connects(void)
{
    int n = many_conns();
    T_CHECK(n >= 100);
    int fds = t_open_fds();
    /* Every client sends a copy from on_connect, and the connects may all
     * complete in one turn (they do on epoll, where each is one EPOLLOUT of
     * the same wait): the pool's free buffers must hold n copies at once
     * beside the receive ring's share. */
    ZCN_LoopConfig lc = {.connections_max = (uint32_t)(2 * n + 16),
                         .buffer_pool_size = (uint32_t)(4 * n + 64),
                         .buffer_size = 4096};
    ZCN_Loop *l = t_new_loop(&lc);
    ZCN_Server *srv = new_server_on(l, 0, 0);
    struct accept_log *al = calloc(1, sizeof *al);
    struct client *cl = calloc((size_t)n, sizeof *cl);
    T_CHECK(al != NULL && cl != NULL);
    T_CHECK_ERR(zcn_server_set_callbacks(srv, al, al_accept, NULL, al_close), ZCN_OK);
    T_CHECK_ERR(zcn_server_use_echo_handler(srv), ZCN_OK);
    t_turn(l, 0);
    int fds_loop = t_open_fds();
    static char msgs[1000][32];
    uint64_t t0 = t_mono_ms();
    for (int i = 0; i < n; i++) {
        snprintf(msgs[i % 1000], sizeof msgs[0], "hello from client %04d", i);
        cl[i] = (struct client){.loop = l, .msg = msgs[i % 1000]};
        cl[i].close_after = strlen(cl[i].msg);
        T_CHECK_ERR(client_connect(&cl[i], zcn_server_port(srv), 10000, 0), ZCN_OK);
    }
    int done = 0;
    uint64_t dl = t_mono_ms() + 15000;
    while ((done < n || al->closes < n) && t_mono_ms() < dl) {
        t_turn(l, 10);
        done = 0;
        for (int i = 0; i < n; i++)
            done += cl[i].closes;
    }
    uint64_t elapsed = t_mono_ms() - t0;
    run_for(l, 20);
    int bad = 0;
    for (int i = 0; i < n; i++) {
        struct client *c = &cl[i];
        if (c->connects != 1 || c->result != ZCN_OK || c->closes != 1 ||
            strcmp(c->got, c->msg) != 0 || c->sends_after_close != 1) {
            if (bad++ < 5)
                fprintf(stderr, "client %d: connects %d (%s) closes %d got \"%s\"\n", i,
                        c->connects, zcn_error_name(c->result), c->closes, c->got);
        }
    }
    T_CHECK(bad == 0);
    T_CHECK(al->accepts == n);
    T_CHECK(al->closes == n);
    T_CHECK(al->errors == 0);
    ZCN_LoopStats st = loop_stats(l);
    T_CHECK(st.tcp.connections_active == 0);
    T_CHECK(st.tcp.connections_accepted == (uint64_t)(2 * n)); /* both sides opened */
    T_CHECK(st.tcp.connections_closed == (uint64_t)(2 * n));
    T_CHECK(st.connects_started == (uint64_t)n);
    T_CHECK(st.connects_failed == 0);
    T_CHECK(st.tcp.buffers_in_use == 0);
    T_CHECK(t_open_fds() == fds_loop);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    T_CHECK(t_open_fds() == fds);
    free(al);
    free(cl);
    fprintf(stderr, "%d connects to a listener on the same loop: all echoed and closed in %llu ms\n",
            n, (unsigned long long)elapsed);
}

/* ---- 4. a client and a server on one loop, half-close -------------------- */

struct hc_server {
    ZCN_Server *srv;
    int fd, accepts, eofs, closes;
    char got[64];
    size_t got_len;
    bool eof_before_data_done;
};

static void hc_accept(void *ud, int fd)
{
    struct hc_server *h = ud;
    h->accepts++;
    h->fd = fd;
}

static void hc_data(void *ud, int fd, const uint8_t *data, size_t len)
{
    struct hc_server *h = ud;
    T_CHECK(h->eofs == 0);
    T_CHECK(h->got_len + len < sizeof h->got);
    memcpy(h->got + h->got_len, data, len);
    h->got_len += len;
    h->got[h->got_len] = 0;
    T_CHECK_ERR(zcn_server_send(h->srv, fd, (const uint8_t *)"srv:", 4), ZCN_OK);
    T_CHECK_ERR(zcn_server_send(h->srv, fd, data, len), ZCN_OK);
}

static void hc_eof(void *ud, int fd)
{
    struct hc_server *h = ud;
    h->eofs++;
    ZCN_ConnInfo ci;
    T_CHECK_ERR(zcn_server_conn_info(h->srv, fd, &ci), ZCN_OK);
    T_CHECK(ci.flags & ZCN_CONN_EOF);
    T_CHECK(!(ci.flags & ZCN_CONN_CLOSING));
}

static void hc_close(void *ud, int fd)
{
    struct hc_server *h = ud;
    T_CHECK(fd == h->fd);
    h->closes++;
}

/* The client answers the first reply with more data, then half-closes. */
static void hc_client_data(void *ud, int fd, const uint8_t *data, size_t len)
{
    struct client *c = ud;
    cl_data(ud, fd, data, len);
    if (c->got_len == 8 && strcmp(c->got, "srv:ping") == 0) {
        T_CHECK_ERR(zcn_loop_send(c->loop, fd, (const uint8_t *)"more", 4), ZCN_OK);
        T_CHECK_ERR(zcn_loop_shutdown(c->loop, fd), ZCN_OK);
        T_CHECK_ERR(zcn_loop_send(c->loop, fd, (const uint8_t *)"late", 4), ZCN_ERR_CLOSED);
        T_CHECK_ERR(zcn_loop_shutdown(c->loop, fd), ZCN_ERR_CLOSED);
        ZCN_ConnInfo ci;
        T_CHECK_ERR(zcn_loop_conn_info(c->loop, fd, &ci), ZCN_OK);
        T_CHECK(ci.flags & ZCN_CONN_SHUT_WR);
    }
}

static void test_half_close_one_loop(void)
{
    int fds = t_open_fds();
    ZCN_Loop *l = t_new_loop(NULL);
    struct hc_server h = {.fd = -1};
    h.srv = new_server_on(l, ZCN_SERVER_HALF_CLOSE, 0);
    T_CHECK_ERR(zcn_server_set_callbacks(h.srv, &h, hc_accept, hc_data, hc_close), ZCN_OK);
    T_CHECK_ERR(zcn_server_set_eof_callback(h.srv, hc_eof), ZCN_OK);
    struct client c = {.loop = l, .msg = "ping"};
    ZCN_ConnectConfig cc = {
        .address = LOCALHOST,
        .port = zcn_server_port(h.srv),
        .flags = ZCN_SERVER_HALF_CLOSE,
        .user_data = &c,
        .on_connect = cl_connect,
        .on_data = hc_client_data,
        .on_eof = cl_eof,
        .on_close = cl_close,
    };
    T_CHECK_ERR(zcn_loop_connect(l, &cc, &c.fd), ZCN_OK);
    /* the server has the whole request and its EOF; it has not answered
     * the EOF yet: the client still waits, open */
    RUN_UNTIL(l, h.eofs == 1, 3000);
    T_CHECK(strcmp(h.got, "pingmore") == 0);
    RUN_UNTIL(l, c.got_len == 16, 3000);
    run_for(l, 30);
    T_CHECK(strcmp(c.got, "srv:pingsrv:more") == 0);
    T_CHECK(c.closes == 0 && h.closes == 0 && c.eofs == 0);
    /* a late answer, then the server closes */
    T_CHECK_ERR(zcn_server_send(h.srv, h.fd, (const uint8_t *)"late", 4), ZCN_OK);
    T_CHECK_ERR(zcn_server_close(h.srv, h.fd), ZCN_OK);
    /* the client had shut down its side: both finished, it closes */
    RUN_UNTIL(l, c.eofs == 1 && h.closes == 1 && c.closes == 1, 3000);
    T_CHECK(strcmp(c.got, "srv:pingsrv:morelate") == 0);
    run_for(l, 20);
    T_CHECK(h.accepts == 1 && h.eofs == 1 && h.closes == 1);
    T_CHECK(c.connects == 1 && c.eofs == 1 && c.closes == 1);
    ZCN_LoopStats st = loop_stats(l);
    T_CHECK(st.tcp.connections_active == 0);
    T_CHECK(st.tcp.eofs == 2);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    T_CHECK(t_open_fds() == fds);
    fprintf(stderr, "half-close on one loop: both directions, late answer, one close each\n");
}

/* ---- 4b. bulk both ways, both ends on one loop's budget ----------------- */

#define BULK_TOTAL (8u << 20)
#define BULK_CHUNK (64u << 10)
static struct {
    ZCN_Loop *loop;
    int fd;
    size_t sent, received;
    int connects, closes, drains, queue_full, exhausted, bad_bytes;
    bool retry_armed;
    uint8_t chunk[BULK_CHUNK];
} bulk;

static uint8_t bulk_byte(size_t at)
{
    return (uint8_t)(at * 2654435761u >> 13);
}

static void bulk_pump(void);

static void bulk_retry(void *ud, uint64_t id)
{
    (void)ud;
    (void)id;
    bulk.retry_armed = false;
    bulk_pump();
}

static void bulk_pump(void)
{
    while (bulk.sent < BULK_TOTAL) {
        size_t n = BULK_TOTAL - bulk.sent < BULK_CHUNK ? BULK_TOTAL - bulk.sent : BULK_CHUNK;
        for (size_t i = 0; i < n; i++)
            bulk.chunk[i] = bulk_byte(bulk.sent + i);
        ZCN_Error e = zcn_loop_send(bulk.loop, bulk.fd, bulk.chunk, n);
        if (e == ZCN_OK) {
            bulk.sent += n;
            continue;
        }
        if (e == ZCN_ERR_QUEUE_FULL) {
            bulk.queue_full++; /* on_drain resumes */
        } else {
            T_CHECK_ERR(e, ZCN_ERR_EXHAUSTED); /* no buffer for the copy: soon */
            bulk.exhausted++;
            if (!bulk.retry_armed) {
                uint64_t id;
                T_CHECK_ERR(zcn_loop_timer_start(bulk.loop, 1, 0, bulk_retry, NULL, &id), ZCN_OK);
                bulk.retry_armed = true;
            }
        }
        return;
    }
}

static void bulk_connect(void *ud, int fd, ZCN_Error result)
{
    (void)ud;
    T_CHECK_ERR(result, ZCN_OK);
    bulk.connects++;
    bulk.fd = fd;
    bulk_pump();
}

static void bulk_data(void *ud, int fd, const uint8_t *data, size_t len)
{
    (void)ud;
    (void)fd;
    for (size_t i = 0; i < len; i++)
        if (data[i] != bulk_byte(bulk.received + i))
            bulk.bad_bytes++;
    bulk.received += len;
    if (bulk.received == BULK_TOTAL)
        T_CHECK_ERR(zcn_loop_close(bulk.loop, fd), ZCN_OK);
}

static void bulk_drain(void *ud, int fd)
{
    (void)ud;
    (void)fd;
    bulk.drains++;
    bulk_pump();
}

static void bulk_close(void *ud, int fd)
{
    (void)ud;
    (void)fd;
    bulk.closes++;
}

static void test_bulk_one_loop(void)
{
    int fds = t_open_fds();
    /* a small pool, so the two ends compete for the budget */
    ZCN_LoopConfig lc = {.buffer_pool_size = 128, .buffer_size = 4096,
                         .send_queue_max_bytes = 256u << 10};
    ZCN_Loop *l = t_new_loop(&lc);
    ZCN_Server *srv = new_server_on(l, 0, 0);
    struct accept_log *al = calloc(1, sizeof *al);
    T_CHECK(al != NULL);
    T_CHECK_ERR(zcn_server_set_callbacks(srv, al, al_accept, NULL, al_close), ZCN_OK);
    T_CHECK_ERR(zcn_server_use_echo_handler(srv), ZCN_OK);
    memset(&bulk, 0, sizeof bulk);
    bulk.loop = l;
    ZCN_ConnectConfig cc = {.address = LOCALHOST,
                            .port = zcn_server_port(srv),
                            .on_connect = bulk_connect,
                            .on_data = bulk_data,
                            .on_drain = bulk_drain,
                            .on_close = bulk_close};
    int fd;
    uint64_t t0 = t_mono_ms();
    T_CHECK_ERR(zcn_loop_connect(l, &cc, &fd), ZCN_OK);
    uint64_t dl = t_mono_ms() + 10000;
    while ((bulk.closes == 0 || al->closes == 0) && t_mono_ms() < dl)
        t_turn(l, 10);
    uint64_t ms = t_mono_ms() - t0;
    if (bulk.closes == 0)
        fprintf(stderr, "bulk: sent %zu received %zu queue_full %d exhausted %d drains %d\n",
                bulk.sent, bulk.received, bulk.queue_full, bulk.exhausted, bulk.drains);
    T_CHECK(bulk.connects == 1 && bulk.closes == 1 && al->closes == 1);
    T_CHECK(bulk.sent == BULK_TOTAL && bulk.received == BULK_TOTAL);
    T_CHECK(bulk.bad_bytes == 0);
    ZCN_LoopStats st = loop_stats(l);
    T_CHECK(st.tcp.connections_active == 0);
    T_CHECK(st.tcp.buffers_held == 0);
    T_CHECK(st.tcp.evictions == 0 && st.tcp.hard_limit_aborts == 0);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    free(al);
    T_CHECK(t_open_fds() == fds);
    fprintf(stderr, "bulk: %u MiB both ways through one loop's %u buffers in %llu ms "
            "(%d refusals, %d drains)\n", BULK_TOTAL >> 20, lc.buffer_pool_size,
            (unsigned long long)ms, bulk.queue_full + bulk.exhausted, bulk.drains);
}

/* ---- 5. timers ----------------------------------------------------------- */

struct tlog {
    ZCN_Loop *loop;
    int order[64];
    int n;
    uint64_t ids[64];
    int count[64];
    int cancel_at;          /* cancel itself at this count */
    uint64_t victim;        /* a timer to cancel from the callback */
    ZCN_Error cancel_result;
};
struct tmark {
    struct tlog *log;
    int idx;
};

static void tl_fire(void *ud, uint64_t id)
{
    struct tmark *m = ud;
    struct tlog *t = m->log;
    T_CHECK(id == t->ids[m->idx]);
    T_CHECK(t->n < 64);
    t->order[t->n++] = m->idx;
    t->count[m->idx]++;
    if (t->cancel_at != 0 && t->count[m->idx] == t->cancel_at)
        t->cancel_result = zcn_loop_timer_cancel(t->loop, id);
    if (t->victim != 0) {
        t->cancel_result = zcn_loop_timer_cancel(t->loop, t->victim);
        t->victim = 0;
    }
}

static void tlog_start(struct tlog *t, struct tmark *m, int idx, uint64_t delay, uint64_t repeat)
{
    m[idx] = (struct tmark){t, idx};
    T_CHECK_ERR(zcn_loop_timer_start(t->loop, delay, repeat, tl_fire, &m[idx], &t->ids[idx]),
                ZCN_OK);
    T_CHECK(t->ids[idx] != 0);
}

static void test_timer_order(ZCN_Loop *l)
{
    struct tlog t = {.loop = l};
    struct tmark m[64];
    /* different delays, and equal ones in start order */
    static const uint64_t delays[] = {60, 20, 40, 20, 20, 0, 60};
    static const int expect[] = {5, 1, 3, 4, 2, 0, 6};
    for (int i = 0; i < 7; i++)
        tlog_start(&t, m, i, delays[i], 0);
    RUN_UNTIL(l, t.n == 7, 2000);
    for (int i = 0; i < 7; i++)
        T_CHECK(t.order[i] == expect[i]);
    /* a tie of 20, the heap is not stable: start order must still hold */
    t = (struct tlog){.loop = l};
    for (int i = 0; i < 20; i++)
        tlog_start(&t, m, i, i % 3 == 0 ? 25 : 15, 0);
    RUN_UNTIL(l, t.n == 20, 2000);
    int k = 0;
    for (int i = 0; i < 20; i++)
        if (i % 3 != 0)
            T_CHECK(t.order[k++] == i);
    for (int i = 0; i < 20; i++)
        if (i % 3 == 0)
            T_CHECK(t.order[k++] == i);
    /* a fired one-shot's id is not pending any more */
    T_CHECK_ERR(zcn_loop_timer_cancel(l, t.ids[0]), ZCN_ERR_CLOSED);
}

static void test_timer_cancel_and_repeat(ZCN_Loop *l)
{
    struct tlog t = {.loop = l};
    struct tmark m[64];
    /* cancelled before it fires */
    tlog_start(&t, m, 0, 20, 0);
    T_CHECK_ERR(zcn_loop_timer_cancel(l, t.ids[0]), ZCN_OK);
    T_CHECK_ERR(zcn_loop_timer_cancel(l, t.ids[0]), ZCN_ERR_CLOSED);
    /* unknown ids */
    T_CHECK_ERR(zcn_loop_timer_cancel(l, 0), ZCN_ERR_CLOSED);
    T_CHECK_ERR(zcn_loop_timer_cancel(l, 12345), ZCN_ERR_CLOSED);
    T_CHECK_ERR(zcn_loop_timer_cancel(l, UINT64_MAX), ZCN_ERR_CLOSED);
    T_CHECK_ERR(zcn_loop_timer_cancel(l, t.ids[0] + ((uint64_t)1 << 32)), ZCN_ERR_CLOSED);
    /* repeating every 10 ms for 200 ms */
    tlog_start(&t, m, 1, 10, 10);
    run_for(l, 200);
    int fired = t.count[1];
    T_CHECK(fired >= 5 && fired <= 25);
    T_CHECK_ERR(zcn_loop_timer_cancel(l, t.ids[1]), ZCN_OK);
    run_for(l, 50);
    T_CHECK(t.count[1] == fired);
    T_CHECK(t.count[0] == 0);
    T_CHECK(loop_stats(l).timers_active == 0);

    /* a repeating timer cancels itself from its callback on its 3rd call */
    t = (struct tlog){.loop = l, .cancel_at = 3};
    tlog_start(&t, m, 0, 0, 5);
    run_for(l, 100);
    T_CHECK(t.count[0] == 3);
    T_CHECK_ERR(t.cancel_result, ZCN_OK);
    T_CHECK_ERR(zcn_loop_timer_cancel(l, t.ids[0]), ZCN_ERR_CLOSED);

    /* one cancels another, later one */
    t = (struct tlog){.loop = l};
    tlog_start(&t, m, 0, 10, 0);
    tlog_start(&t, m, 1, 40, 0);
    t.victim = t.ids[1];
    run_for(l, 80);
    T_CHECK(t.count[0] == 1 && t.count[1] == 0);
    T_CHECK_ERR(t.cancel_result, ZCN_OK);
    /* ... and one due in the same turn, behind it */
    t = (struct tlog){.loop = l};
    tlog_start(&t, m, 0, 10, 0);
    tlog_start(&t, m, 1, 10, 0);
    t.victim = t.ids[1];
    run_for(l, 60);
    T_CHECK(t.count[0] == 1 && t.count[1] == 0);
    T_CHECK_ERR(t.cancel_result, ZCN_OK);
    T_CHECK(loop_stats(l).timers_active == 0);

    /* no callback, callback mode: fires silently */
    uint64_t fired_before = loop_stats(l).timers_fired, silent;
    T_CHECK_ERR(zcn_loop_timer_start(l, 0, 0, NULL, NULL, &silent), ZCN_OK);
    RUN_UNTIL(l, loop_stats(l).timers_fired == fired_before + 1, 1000);
    T_CHECK(loop_stats(l).timers_active == 0);
    T_CHECK_ERR(zcn_loop_timer_cancel(l, silent), ZCN_ERR_CLOSED);
}

/* A timer that restarts itself with delay 0 from its callback: "0 = at
 * the next turn", so one turn runs it once, whatever else is pending. */
struct again {
    ZCN_Loop *loop;
    int runs, limit;
};

static void again_fire(void *ud, uint64_t id)
{
    (void)id;
    struct again *a = ud;
    a->runs++;
    uint64_t next;
    if (a->runs < a->limit)
        T_CHECK_ERR(zcn_loop_timer_start(a->loop, 0, 0, again_fire, a, &next), ZCN_OK);
}

static void test_timer_zero_delay_is_next_turn(ZCN_Loop *l)
{
    uint64_t far[100];
    for (int i = 0; i < 100; i++)
        T_CHECK_ERR(zcn_loop_timer_start(l, 60000, 0, NULL, NULL, &far[i]), ZCN_OK);
    struct again a = {.loop = l, .limit = 1000};
    uint64_t id;
    T_CHECK_ERR(zcn_loop_timer_start(l, 0, 0, again_fire, &a, &id), ZCN_OK);
    t_turn(l, 0);
    if (a.runs > 2)
        fprintf(stderr, "a 0 ms timer restarting itself ran %d times in one turn\n", a.runs);
    T_CHECK(a.runs >= 1 && a.runs <= 2);
    RUN_UNTIL(l, a.runs == a.limit, 5000);
    for (int i = 0; i < 100; i++)
        T_CHECK_ERR(zcn_loop_timer_cancel(l, far[i]), ZCN_OK);
}

#define MANY_TIMERS 10000
struct many_timer {
    uint64_t due;
    int idx, fired;
};
static struct {
    ZCN_Loop *loop;
    struct many_timer t[MANY_TIMERS];
    uint64_t last_due;
    int last_idx, fired, early, out_of_order;
} mt;

static void mt_fire(void *ud, uint64_t id)
{
    (void)id;
    struct many_timer *x = ud;
    x->fired++;
    mt.fired++;
    if (zcn_loop_now_ms(mt.loop) < x->due)
        mt.early++;
    if (x->due < mt.last_due || (x->due == mt.last_due && x->idx < mt.last_idx))
        mt.out_of_order++;
    mt.last_due = x->due;
    mt.last_idx = x->idx;
}

static void test_many_timers(ZCN_Loop *l)
{
    memset(&mt, 0, sizeof mt);
    mt.loop = l;
    mt.last_idx = -1;
    for (int i = 0; i < MANY_TIMERS; i++) {
        uint64_t delay = (uint64_t)((i * 7919) % 61);
        uint64_t id;
        mt.t[i].idx = i;
        T_CHECK_ERR(zcn_loop_timer_start(l, delay, 0, mt_fire, &mt.t[i], &id), ZCN_OK);
        mt.t[i].due = zcn_loop_now_ms(l) + delay;
    }
    T_CHECK(loop_stats(l).timers_active == MANY_TIMERS);
    uint64_t id = 0;
    T_CHECK_ERR(zcn_loop_timer_start(l, 1, 0, mt_fire, NULL, &id), ZCN_ERR_EXHAUSTED);
    T_CHECK(id == 0);
    RUN_UNTIL(l, mt.fired == MANY_TIMERS, 5000);
    for (int i = 0; i < MANY_TIMERS; i++)
        T_CHECK(mt.t[i].fired == 1);
    T_CHECK(mt.early == 0);
    T_CHECK(mt.out_of_order == 0);
    T_CHECK(loop_stats(l).timers_active == 0);
}

static void test_huge_delay(ZCN_Loop *l)
{
    struct tlog t = {.loop = l};
    struct tmark m[64];
    tlog_start(&t, m, 0, UINT64_MAX, 0);
    tlog_start(&t, m, 1, UINT64_MAX - 1, UINT64_MAX);
    tlog_start(&t, m, 2, 0, UINT64_MAX); /* once now, then practically never */
    uint64_t t0 = t_mono_ms();
    run_for(l, 60);
    T_CHECK(t_mono_ms() - t0 >= 55);
    T_CHECK(t.count[0] == 0 && t.count[1] == 0 && t.count[2] == 1);
    /* the loop waits (its timeout), it does not spin on a wrapped due time */
    uint32_t handled = 99;
    t0 = t_mono_ms();
    T_CHECK_ERR(zcn_loop_run_once_timeout(l, 50, &handled), ZCN_OK);
    T_CHECK(handled == 0);
    T_CHECK(t_mono_ms() - t0 >= 40);
    for (int i = 0; i < 3; i++)
        T_CHECK_ERR(zcn_loop_timer_cancel(l, t.ids[i]), ZCN_OK);
}

static void test_timers(void)
{
    int fds = t_open_fds();
    ZCN_LoopConfig lc = {.timers_max = MANY_TIMERS};
    ZCN_Loop *l = t_new_loop(&lc);
    test_timer_order(l);
    test_timer_cancel_and_repeat(l);
    test_timer_zero_delay_is_next_turn(l);
    test_many_timers(l);
    test_huge_delay(l);
    ZCN_LoopStats st = loop_stats(l);
    T_CHECK(st.timers_active == 0);
    T_CHECK(st.timers_fired >= MANY_TIMERS);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    T_CHECK(t_open_fds() == fds);
    fprintf(stderr, "timers: order, ties, cancel, repeat, 0 = next turn, %d at once, "
            "EXHAUSTED, huge delays\n", MANY_TIMERS);
}

/* ---- 6. fd watches ------------------------------------------------------- */

struct wlog {
    ZCN_Loop *loop;
    int calls;
    int fd;
    uint32_t events, all_events;
    uint64_t id;
    bool unwatch_in_cb;
    ZCN_Error unwatch_result;
};

static void wl_fire(void *ud, int fd, uint32_t events, uint64_t id)
{
    struct wlog *w = ud;
    T_CHECK(fd == w->fd);
    T_CHECK(id == w->id);
    w->calls++;
    w->events = events;
    w->all_events |= events;
    if (w->unwatch_in_cb) {
        w->unwatch_result = zcn_loop_unwatch(w->loop, id);
        w->unwatch_in_cb = false;
    }
}

static void watch(struct wlog *w, int fd, uint32_t events)
{
    w->fd = fd;
    w->calls = 0;
    w->all_events = w->events = 0;
    T_CHECK_ERR(zcn_loop_watch(w->loop, fd, events, wl_fire, w, &w->id), ZCN_OK);
    T_CHECK(w->id != 0);
}

static void test_watches(void)
{
    int fds = t_open_fds();
    ZCN_LoopConfig lc = {.watches_max = 8};
    ZCN_Loop *l = t_new_loop(&lc);
    int p[2];
    T_CHECK(pipe2(p, O_NONBLOCK | O_CLOEXEC) == 0);
    struct wlog w = {.loop = l};
    char b[16];

    /* READ: nothing until a write; level-triggered while unread */
    watch(&w, p[0], ZCN_WATCH_READ);
    run_for(l, 30);
    T_CHECK(w.calls == 0);
    T_CHECK(write(p[1], "x", 1) == 1);
    RUN_UNTIL(l, w.calls == 1, 2000);
    T_CHECK(w.events & ZCN_WATCH_READ);
    t_turn(l, 500);
    t_turn(l, 500);
    T_CHECK(w.calls >= 3); /* again at each turn while unread */
    T_CHECK(read(p[0], b, sizeof b) == 1);
    int after_read = w.calls;
    run_for(l, 40);
    T_CHECK(w.calls <= after_read + 1); /* at most the poll already reported */
    after_read = w.calls;
    run_for(l, 30);
    T_CHECK(w.calls == after_read);
    /* unwatch: no more calls, even with data waiting */
    T_CHECK_ERR(zcn_loop_unwatch(l, w.id), ZCN_OK);
    T_CHECK_ERR(zcn_loop_unwatch(l, w.id), ZCN_ERR_CLOSED);
    T_CHECK(write(p[1], "y", 1) == 1);
    int before = w.calls;
    run_for(l, 40);
    T_CHECK(w.calls == before);

    /* unwatch from inside the callback: one call, none after */
    watch(&w, p[0], ZCN_WATCH_READ);
    w.unwatch_in_cb = true;
    RUN_UNTIL(l, w.calls == 1, 2000);
    T_CHECK_ERR(w.unwatch_result, ZCN_OK);
    run_for(l, 40);
    T_CHECK(w.calls == 1);
    T_CHECK_ERR(zcn_loop_unwatch(l, w.id), ZCN_ERR_CLOSED);
    T_CHECK(read(p[0], b, sizeof b) == 1);

    /* two watches on one fd are independent */
    struct wlog w2 = {.loop = l};
    watch(&w, p[0], ZCN_WATCH_READ);
    watch(&w2, p[0], ZCN_WATCH_READ);
    T_CHECK(w.id != w2.id);
    T_CHECK(write(p[1], "z", 1) == 1);
    RUN_UNTIL(l, w.calls >= 1 && w2.calls >= 1, 2000);
    T_CHECK_ERR(zcn_loop_unwatch(l, w.id), ZCN_OK);
    before = w.calls;
    int before2 = w2.calls;
    run_for(l, 40);
    T_CHECK(w.calls == before);
    T_CHECK(w2.calls > before2);
    T_CHECK_ERR(zcn_loop_unwatch(l, w2.id), ZCN_OK);
    T_CHECK(read(p[0], b, sizeof b) == 1);

    /* WRITE on an empty pipe, armed late: no SQE at first */
    zcn_test_fail_sqes(1);
    watch(&w, p[1], ZCN_WATCH_WRITE);
    w.unwatch_in_cb = true;
    RUN_UNTIL(l, w.calls == 1, 2000);
    T_CHECK(w.events & ZCN_WATCH_WRITE);
    T_CHECK(!(w.events & ZCN_WATCH_READ));

    /* bad fd / events */
    uint64_t id = 7;
    T_CHECK_ERR(zcn_loop_watch(l, -1, ZCN_WATCH_READ, wl_fire, &w, &id), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(id == 0);
    T_CHECK_ERR(zcn_loop_watch(l, p[0], 0, wl_fire, &w, &id), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_watch(l, p[0], ZCN_WATCH_HUP, wl_fire, &w, &id),
                ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_watch(l, p[0], ZCN_WATCH_READ | 0x100, wl_fire, &w, &id),
                ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_watch(l, p[0], ZCN_WATCH_READ, wl_fire, &w, NULL),
                ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_unwatch(l, 0), ZCN_ERR_CLOSED);
    T_CHECK_ERR(zcn_loop_unwatch(l, UINT64_MAX), ZCN_ERR_CLOSED);

    /* EXHAUSTED at watches_max (8) */
    uint64_t ids[8];
    for (int i = 0; i < 8; i++)
        T_CHECK_ERR(zcn_loop_watch(l, p[0], ZCN_WATCH_READ, NULL, NULL, &ids[i]), ZCN_OK);
    T_CHECK(loop_stats(l).watches_active == 8);
    T_CHECK_ERR(zcn_loop_watch(l, p[0], ZCN_WATCH_READ, NULL, NULL, &id), ZCN_ERR_EXHAUSTED);
    for (int i = 0; i < 8; i++)
        T_CHECK_ERR(zcn_loop_unwatch(l, ids[i]), ZCN_OK);
    T_CHECK(loop_stats(l).watches_active == 0);

    /* HUP when the writer closes */
    watch(&w, p[0], ZCN_WATCH_READ);
    run_for(l, 20);
    T_CHECK(w.calls == 0);
    close(p[1]);
    RUN_UNTIL(l, w.calls >= 1, 2000);
    T_CHECK(w.events & ZCN_WATCH_HUP);
    T_CHECK_ERR(zcn_loop_unwatch(l, w.id), ZCN_OK);
    run_for(l, 20);
    close(p[0]);
    T_CHECK(loop_stats(l).watch_events > 0);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    T_CHECK(t_open_fds() == fds);
    fprintf(stderr, "watches: READ level-triggered, unwatch (in callback too), WRITE, HUP, "
            "EXHAUSTED, bad input\n");
}

/* ---- 7. cross-thread calls ----------------------------------------------- */

#define CALL_THREADS 4
#define CALLS_EACH 20000
static struct {
    ZCN_Loop *loop;
    pthread_t loop_thread;
    uint32_t next[CALL_THREADS];
    long ran;
    int wrong_thread, out_of_order;
    atomic_long refused;
    atomic_int woke;
} ct;

static void ct_call(void *arg)
{
    uintptr_t v = (uintptr_t)arg;
    unsigned t = (unsigned)(v >> 24);
    uint32_t seq = (uint32_t)(v & 0xffffffu);
    if (!pthread_equal(pthread_self(), ct.loop_thread))
        ct.wrong_thread++;
    if (t >= CALL_THREADS || seq != ct.next[t])
        ct.out_of_order++;
    else
        ct.next[t] = seq + 1;
    ct.ran++;
}

static void *ct_caller(void *arg)
{
    uintptr_t t = (uintptr_t)arg;
    for (uint32_t seq = 0; seq < CALLS_EACH;) {
        ZCN_Error e = zcn_loop_call(ct.loop, ct_call, (void *)((t << 24) | seq));
        if (e == ZCN_OK) {
            seq++;
        } else {
            T_CHECK_ERR(e, ZCN_ERR_QUEUE_FULL);
            atomic_fetch_add(&ct.refused, 1);
            sched_yield();
        }
    }
    return NULL;
}

static int self_calls;
static void count_self_call(void *arg)
{
    T_CHECK(pthread_equal(pthread_self(), ct.loop_thread));
    (*(int *)arg)++;
}

static void queue_from_callback(void *ud, uint64_t id)
{
    (void)id;
    T_CHECK_ERR(zcn_loop_call(ud, count_self_call, &self_calls), ZCN_OK);
}

/* Wakes the loop with a NULL call after 100 ms; stops it if that did not
 * work within 2 s, so the test fails rather than hangs. */
static void *ct_late_wake(void *arg)
{
    (void)arg;
    usleep(100 * 1000);
    T_CHECK_ERR(zcn_loop_call(ct.loop, NULL, NULL), ZCN_OK);
    for (int i = 0; i < 200 && !atomic_load(&ct.woke); i++)
        usleep(10 * 1000);
    if (!atomic_load(&ct.woke))
        zcn_loop_stop(ct.loop);
    return NULL;
}

static void settle(ZCN_Loop *l)
{
    uint32_t handled = 1;
    for (int i = 0; i < 100 && handled > 0; i++)
        T_CHECK_ERR(zcn_loop_run_once_timeout(l, 0, &handled), ZCN_OK);
    T_CHECK(handled == 0);
}

static void test_cross_thread_calls(void)
{
    int fds = t_open_fds();
    ZCN_LoopConfig lc = {.calls_max = 64};
    ZCN_Loop *l = t_new_loop(&lc);
    memset(&ct, 0, sizeof ct);
    ct.loop = l;
    ct.loop_thread = pthread_self();
    t_turn(l, 0); /* this thread owns the loop */
    pthread_t th[CALL_THREADS];
    uint64_t t0 = t_mono_ms();
    for (uintptr_t i = 0; i < CALL_THREADS; i++)
        T_CHECK(pthread_create(&th[i], NULL, ct_caller, (void *)i) == 0);
    const long total = (long)CALL_THREADS * CALLS_EACH;
    uint64_t dl = t_mono_ms() + 15000;
    while (ct.ran < total && t_mono_ms() < dl)
        t_turn(l, 10);
    for (int i = 0; i < CALL_THREADS; i++)
        pthread_join(th[i], NULL);
    uint64_t elapsed = t_mono_ms() - t0;
    T_CHECK(ct.ran == total);
    T_CHECK(ct.wrong_thread == 0);
    T_CHECK(ct.out_of_order == 0);
    for (int i = 0; i < CALL_THREADS; i++)
        T_CHECK(ct.next[i] == CALLS_EACH);
    ZCN_LoopStats st = loop_stats(l);
    T_CHECK(st.calls_run == (uint64_t)total);
    T_CHECK(st.calls_refused == (uint64_t)atomic_load(&ct.refused));
    T_CHECK(st.calls_refused > 0);

    /* from the loop's own thread: outside the loop and from a callback */
    self_calls = 0;
    T_CHECK_ERR(zcn_loop_call(l, count_self_call, &self_calls), ZCN_OK);
    T_CHECK(self_calls == 0); /* at the next turn, not inside the call */
    uint64_t tid;
    T_CHECK_ERR(zcn_loop_timer_start(l, 0, 0, queue_from_callback, l, &tid), ZCN_OK);
    RUN_UNTIL(l, self_calls == 2, 2000);

    /* a NULL fn wakes a zcn_loop_run_once blocked with nothing to do */
    settle(l);
    pthread_t waker;
    T_CHECK(pthread_create(&waker, NULL, ct_late_wake, NULL) == 0);
    t0 = t_mono_ms();
    ZCN_Error e = zcn_loop_run_once(l);
    uint64_t woke_ms = t_mono_ms() - t0;
    atomic_store(&ct.woke, 1);
    pthread_join(waker, NULL);
    T_CHECK_ERR(e, ZCN_OK);
    T_CHECK(woke_ms >= 50);
    T_CHECK(woke_ms < 1500);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    T_CHECK(t_open_fds() == fds);
    fprintf(stderr, "calls: %ld from %d threads in %llu ms, FIFO per thread, %ld refused "
            "(QUEUE_FULL, retried); own thread; NULL fn woke run_once after %llu ms\n",
            total, CALL_THREADS, (unsigned long long)elapsed, (long)st.calls_refused,
            (unsigned long long)woke_ms);
}

/* zcn_loop_stats and zcn_server_stats from another thread while the loop
 * runs ("any thread"): they read the loop's counters as the loop wrote
 * them, a data race (TSan: "data race ... zcn_loop_tcp_stats"). Another
 * thread now reads the snapshot the owner publishes before each wait:
 * consistent counters that only grow. */
static struct {
    ZCN_Loop *loop;
    ZCN_Server *srv;
    atomic_int stop, reading;
    long reads, went_back;
    ZCN_ServerStats last;
} sx;

static void *sx_read_once(void *arg)
{
    (void)arg;
    T_CHECK_ERR(zcn_server_stats(sx.srv, &sx.last), ZCN_OK);
    return NULL;
}

static void *sx_reader(void *arg)
{
    (void)arg;
    uint64_t turns = 0, got = 0;
    while (!atomic_load(&sx.stop)) {
        ZCN_LoopStats ls;
        ZCN_ServerStats ss;
        T_CHECK_ERR(zcn_loop_stats(sx.loop, &ls), ZCN_OK);
        T_CHECK_ERR(zcn_server_stats(sx.srv, &ss), ZCN_OK);
        if (ls.turns < turns || ss.bytes_received < got ||
            ls.tcp.bytes_sent > ls.tcp.bytes_received)
            sx.went_back++;
        turns = ls.turns;
        got = ss.bytes_received;
        sx.reads++;
        atomic_store(&sx.reading, 1);
    }
    return NULL;
}

static void test_stats_from_another_thread(void)
{
    ZCN_Loop *l = t_new_loop(NULL);
    memset(&sx, 0, sizeof sx);
    sx.loop = l;
    sx.srv = new_server_on(l, 0, 0);
    T_CHECK_ERR(zcn_server_use_echo_handler(sx.srv), ZCN_OK);
    t_turn(l, 0); /* this thread owns the loop */
    int fd = t_connect(zcn_server_port(sx.srv));
    pthread_t th;
    T_CHECK(pthread_create(&th, NULL, sx_reader, NULL) == 0);
    /* As the UDP test below: the reader has read before the echoes start. */
    uint64_t start_by = t_mono_ms() + 5000;
    while (!atomic_load(&sx.reading) && t_mono_ms() < start_by)
        t_turn(l, 1);
    T_CHECK(atomic_load(&sx.reading));
    char msg[64], back[64];
    memset(msg, 's', sizeof msg);
    const int rounds = 2000;
    for (int i = 0; i < rounds; i++) {
        t_send_all(fd, msg, sizeof msg);
        size_t have = 0;
        uint64_t dl = t_mono_ms() + 2000;
        while (have < sizeof back && t_mono_ms() < dl) {
            t_turn(l, 1);
            ssize_t r = recv(fd, back + have, sizeof back - have, MSG_DONTWAIT);
            if (r > 0)
                have += (size_t)r;
        }
        T_CHECK(have == sizeof back);
    }
    t_turn(l, 0); /* one more wait publishes the last counters */
    atomic_store(&sx.stop, 1);
    pthread_join(th, NULL);
    T_CHECK(sx.went_back == 0);
    T_CHECK(sx.reads > 0);
    /* Another thread sees what the last wait published: every byte. */
    T_CHECK(pthread_create(&th, NULL, sx_read_once, NULL) == 0);
    pthread_join(th, NULL);
    T_CHECK(sx.last.bytes_received == (uint64_t)rounds * sizeof msg);
    T_CHECK(sx.last.bytes_sent == (uint64_t)rounds * sizeof msg);
    close(fd);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    fprintf(stderr, "stats from another thread: %ld reads while %d echoes ran, never "
            "going back\n", sx.reads, rounds);
}

/* zcn_udp_stats from another thread while the socket's loop runs: it read
 * the counters the owner was writing (TSan: a data race in zcn_udp_stats),
 * on a loop and on the socket's own ring alike. Another thread now reads
 * the copy the owner publishes: consistent, never going back, and after
 * the owner's last loop call every datagram. */
static struct {
    ZCN_UdpSocket *u;
    atomic_int stop, reading;
    long reads, went_back;
    ZCN_UdpStats last;
} ux;

static void *ux_reader(void *arg)
{
    (void)arg;
    uint64_t got = 0;
    while (!atomic_load(&ux.stop)) {
        ZCN_UdpStats st;
        T_CHECK_ERR(zcn_udp_stats(ux.u, &st), ZCN_OK);
        if (st.datagrams_received < got || st.datagrams_sent > st.datagrams_received)
            ux.went_back++;
        got = st.datagrams_received;
        ux.reads++;
        atomic_store(&ux.reading, 1);
    }
    T_CHECK_ERR(zcn_udp_stats(ux.u, &ux.last), ZCN_OK);
    return NULL;
}

static void ux_run(ZCN_Loop *l, ZCN_UdpSocket *u, int ms)
{
    if (l != NULL)
        t_turn(l, ms);
    else
        T_CHECK_ERR(zcn_udp_run_once_timeout(u, ms, NULL), ZCN_OK);
}

static void udp_stats_from_another_thread(bool on_loop)
{
    ZCN_Loop *l = on_loop ? t_new_loop(NULL) : NULL;
    ZCN_UdpConfig cfg = {.address = "127.0.0.1"};
    ZCN_Error err = ZCN_OK;
    memset(&ux, 0, sizeof ux);
    ux.u = on_loop ? zcn_udp_create_on(l, &cfg, &err) : zcn_udp_create(&cfg, &err);
    T_CHECK_ERR(err, ZCN_OK);
    T_CHECK(ux.u != NULL);
    T_CHECK_ERR(zcn_udp_use_echo_handler(ux.u), ZCN_OK);
    ux_run(l, ux.u, 0); /* this thread drives the socket */
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(zcn_udp_port(ux.u))};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    T_CHECK(connect(fd, (struct sockaddr *)&to, sizeof to) == 0);
    pthread_t th;
    T_CHECK(pthread_create(&th, NULL, ux_reader, NULL) == 0);
    /* The reader reads while the echoes run, even on a loaded machine (in
     * CI, with other tests beside it, it once had not read at all before
     * the 1,000 echoes were done). The loop runs meanwhile: a first read
     * on a loop waits for it to publish. */
    uint64_t start_by = t_mono_ms() + 5000;
    while (!atomic_load(&ux.reading) && t_mono_ms() < start_by)
        ux_run(l, ux.u, 1);
    T_CHECK(atomic_load(&ux.reading));
    const int rounds = 1000;
    char msg[64], back[64];
    memset(msg, 'u', sizeof msg);
    for (int i = 0; i < rounds; i++) {
        T_CHECK(send(fd, msg, sizeof msg, 0) == (ssize_t)sizeof msg);
        ssize_t r = -1;
        uint64_t dl = t_mono_ms() + 2000;
        while (r < 0 && t_mono_ms() < dl) {
            ux_run(l, ux.u, 1);
            r = recv(fd, back, sizeof back, MSG_DONTWAIT);
        }
        T_CHECK(r == (ssize_t)sizeof back);
    }
    ux_run(l, ux.u, 0); /* the last call publishes the last counters */
    atomic_store(&ux.stop, 1);
    pthread_join(th, NULL);
    T_CHECK(ux.went_back == 0);
    T_CHECK(ux.reads > 0);
    T_CHECK(ux.last.datagrams_received == (uint64_t)rounds);
    T_CHECK(ux.last.datagrams_sent == (uint64_t)rounds);
    T_CHECK(ux.last.buffers_total > 0);
    close(fd);
    T_CHECK_ERR(zcn_udp_destroy(ux.u), ZCN_OK);
    if (l != NULL)
        T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    fprintf(stderr, "UDP stats from another thread (%s): %ld reads while %d echoes ran\n",
            on_loop ? "on a loop" : "own ring", ux.reads, rounds);
}

static void test_udp_stats_from_another_thread(void)
{
    udp_stats_from_another_thread(true);
    udp_stats_from_another_thread(false);
}

/* zcn_loop_call and zcn_loop_stop racing zcn_loop_destroy: each either
 * reaches the live loop (and the call runs, at the latest in the destroy)
 * or finds it gone and touches nothing. */
static ZCN_Loop *_Atomic race_target;
static atomic_int racing;
static atomic_long race_accepted, race_gone, race_ran;

static void race_call(void *arg)
{
    free(arg);
    atomic_fetch_add(&race_ran, 1);
}

static void *race_caller(void *arg)
{
    (void)arg;
    while (atomic_load(&racing)) {
        ZCN_Loop *l = atomic_load(&race_target);
        if (l == NULL)
            continue;
        void *box = malloc(16);
        ZCN_Error e = zcn_loop_call(l, race_call, box);
        if (e == ZCN_OK) {
            atomic_fetch_add(&race_accepted, 1);
        } else {
            free(box);
            T_CHECK(e == ZCN_ERR_INVALID_ARGUMENT || e == ZCN_ERR_QUEUE_FULL);
            if (e == ZCN_ERR_INVALID_ARGUMENT)
                atomic_fetch_add(&race_gone, 1);
        }
        e = zcn_loop_stop(l);
        T_CHECK(e == ZCN_OK || e == ZCN_ERR_INVALID_ARGUMENT);
    }
    return NULL;
}

static void test_calls_racing_destroy(void)
{
    int fds = t_open_fds();
    atomic_store(&racing, 1);
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        T_CHECK(pthread_create(&th[i], NULL, race_caller, NULL) == 0);
    for (int r = 0; r < 100; r++) {
        ZCN_LoopConfig lc = {.calls_max = 16};
        ZCN_Loop *l = t_new_loop(&lc);
        atomic_store(&race_target, l);
        /* Odd rounds never run the loop: its queue fills and the callers
         * spin on QUEUE_FULL while it is destroyed (that path once read
         * the loop after letting go of it). */
        for (int i = 0; i < (r % 2 ? 0 : 3); i++) {
            ZCN_Error e = zcn_loop_run_once_timeout(l, 5, NULL);
            T_CHECK(e == ZCN_OK);
        }
        if (r % 2) {
            for (int spin = 0; spin < 200000; spin++)
                __asm__ volatile("" ::: "memory");
        }
        /* the pointer stays visible to the callers during and after */
        T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
        for (int spin = 0; spin < 1000; spin++)
            __asm__ volatile("" ::: "memory");
        atomic_store(&race_target, NULL);
    }
    atomic_store(&racing, 0);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    T_CHECK(atomic_load(&race_ran) == atomic_load(&race_accepted));
    T_CHECK(atomic_load(&race_accepted) > 0);
    T_CHECK(t_open_fds() == fds);
    fprintf(stderr, "calls racing destroy: %ld accepted and run, %ld found the loop gone\n",
            atomic_load(&race_accepted), atomic_load(&race_gone));
}

/* ---- 8. poll mode -------------------------------------------------------- */

static void test_poll_mode(void)
{
    int fds = t_open_fds();
    ZCN_Loop *l = t_new_loop(NULL);
    ZCN_Server *sa = new_server_on(l, 0, 11);
    ZCN_Server *sb = new_server_on(l, 0, 22);
    uint64_t tid;
    T_CHECK_ERR(zcn_loop_timer_start(l, 0, 0, NULL, NULL, &tid), ZCN_OK);
    int p[2];
    T_CHECK(pipe2(p, O_NONBLOCK | O_CLOEXEC) == 0);
    T_CHECK(write(p[1], "w", 1) == 1);
    uint64_t wid;
    T_CHECK_ERR(zcn_loop_watch(l, p[0], ZCN_WATCH_READ, NULL, NULL, &wid), ZCN_OK);
    T_CHECK_ERR(zcn_loop_call(l, NULL, (void *)(uintptr_t)0x5eed), ZCN_OK);
    ZCN_ConnectConfig cc = {.address = LOCALHOST, .port = zcn_server_port(sa), .tag = 101};
    int fa, fb, fr;
    T_CHECK_ERR(zcn_loop_connect(l, &cc, &fa), ZCN_OK);
    cc.port = zcn_server_port(sb);
    cc.tag = 202;
    T_CHECK_ERR(zcn_loop_connect(l, &cc, &fb), ZCN_OK);
    cc.port = refused_port();
    cc.tag = 303;
    T_CHECK_ERR(zcn_loop_connect(l, &cc, &fr), ZCN_OK);

    int timers = 0, watches = 0, calls = 0, connects = 0, refused = 0, accepts = 0;
    int accepted[2] = {-1, -1};
    uint32_t accepted_tag[2] = {0, 0};
    char got_a[8] = "", got_b[8] = "";
    int srv_data = 0, closes = 0;
    ZCN_Event ev[64];
    uint32_t n;
    uint64_t dl = t_mono_ms() + 3000;
    while (t_mono_ms() < dl && !(timers && watches && calls && connects == 2 && refused &&
                                  accepts == 2 && srv_data == 2 && got_a[0] && got_b[0])) {
        T_CHECK_ERR(zcn_loop_poll(l, ev, 64, 20, &n), ZCN_OK);
        for (uint32_t i = 0; i < n; i++) {
            ZCN_Event *e = &ev[i];
            switch (e->type) {
            case ZCN_EVENT_TIMER:
                T_CHECK(e->offset == tid);
                T_CHECK(e->tag == 0);
                timers++;
                break;
            case ZCN_EVENT_WATCH:
                T_CHECK(e->fd == p[0]);
                T_CHECK(e->len & ZCN_WATCH_READ);
                T_CHECK(e->offset == wid);
                watches++;
                T_CHECK_ERR(zcn_loop_unwatch(l, wid), ZCN_OK);
                break;
            case ZCN_EVENT_CALL:
                T_CHECK(e->offset == 0x5eed);
                calls++;
                break;
            case ZCN_EVENT_CONNECT:
                if (e->fd == fr) {
                    T_CHECK(e->offset == ECONNREFUSED);
                    T_CHECK(e->tag == 303);
                    /* reserved until the next poll, as a CLOSE */
                    T_CHECK(fcntl(fr, F_GETFD) != -1);
                    refused++;
                } else {
                    T_CHECK(e->fd == fa || e->fd == fb);
                    T_CHECK(e->offset == 0);
                    T_CHECK(e->tag == (e->fd == fa ? 101u : 202u));
                    T_CHECK_ERR(zcn_loop_send(l, e->fd, (const uint8_t *)(e->fd == fa ? "a" : "b"),
                                              1),
                                ZCN_OK);
                    connects++;
                }
                break;
            case ZCN_EVENT_ACCEPT:
                T_CHECK(e->tag == 11 || e->tag == 22);
                T_CHECK(accepts < 2);
                accepted[accepts] = e->fd;
                accepted_tag[accepts++] = e->tag;
                break;
            case ZCN_EVENT_DATA:
                if (e->fd == fa || e->fd == fb) {
                    T_CHECK(e->tag == (e->fd == fa ? 101u : 202u));
                    char *g = e->fd == fa ? got_a : got_b;
                    T_CHECK(e->len == 1 && strlen(g) == 0);
                    g[0] = (char)e->data[0];
                } else {
                    int k = e->fd == accepted[0] ? 0 : 1;
                    T_CHECK(e->fd == accepted[k]);
                    T_CHECK(e->tag == accepted_tag[k]);
                    /* a's data reaches listener 11, b's listener 22 */
                    T_CHECK(e->data[0] == (e->tag == 11 ? 'a' : 'b'));
                    T_CHECK_ERR(zcn_loop_send(l, e->fd, e->data, e->len), ZCN_OK);
                    srv_data++;
                }
                break;
            default:
                fprintf(stderr, "unexpected event %u fd %d\n", e->type, e->fd);
                T_CHECK(0);
            }
        }
    }
    T_CHECK(timers == 1 && watches == 1 && calls == 1);
    T_CHECK(connects == 2 && refused == 1 && accepts == 2 && srv_data == 2);
    T_CHECK(strcmp(got_a, "a") == 0 && strcmp(got_b, "b") == 0);
    /* closes carry the tags too */
    T_CHECK_ERR(zcn_loop_close(l, fa), ZCN_OK);
    T_CHECK_ERR(zcn_loop_close(l, fb), ZCN_OK);
    uint32_t tags_seen = 0;
    dl = t_mono_ms() + 3000;
    while (closes < 4 && t_mono_ms() < dl) {
        T_CHECK_ERR(zcn_loop_poll(l, ev, 64, 20, &n), ZCN_OK);
        for (uint32_t i = 0; i < n; i++) {
            T_CHECK(ev[i].type == ZCN_EVENT_CLOSE);
            T_CHECK(ev[i].tag == 101 || ev[i].tag == 202 || ev[i].tag == 11 || ev[i].tag == 22);
            tags_seen |= ev[i].tag == 101 ? 1u : ev[i].tag == 202 ? 2u : ev[i].tag == 11 ? 4u : 8u;
            closes++;
        }
    }
    T_CHECK(closes == 4 && tags_seen == 15);
    T_CHECK_ERR(zcn_loop_poll(l, ev, 64, 20, &n), ZCN_OK);
    T_CHECK(n == 0);

    /* a listener destroyed while polled: its connections end without a
     * late CLOSE event (tag 0) once the kernel lets go of them */
    ZCN_Server *sc = new_server_on(l, 0, 33);
    int peer = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in to_c = loopback(zcn_server_port(sc));
    T_CHECK(connect(peer, (struct sockaddr *)&to_c, sizeof to_c) == 0);
    int accepted_c = -1;
    dl = t_mono_ms() + 3000;
    while (accepted_c < 0 && t_mono_ms() < dl) {
        T_CHECK_ERR(zcn_loop_poll(l, ev, 64, 20, &n), ZCN_OK);
        for (uint32_t i = 0; i < n; i++)
            if (ev[i].type == ZCN_EVENT_ACCEPT && ev[i].tag == 33)
                accepted_c = ev[i].fd;
    }
    T_CHECK(accepted_c >= 0);
    T_CHECK_ERR(zcn_server_destroy(sc), ZCN_OK);
    for (int k = 0; k < 5; k++) {
        T_CHECK_ERR(zcn_loop_poll(l, ev, 64, 20, &n), ZCN_OK);
        for (uint32_t i = 0; i < n; i++)
            fprintf(stderr, "after destroying its listener: event %u fd %d tag %u\n",
                    ev[i].type, ev[i].fd, ev[i].tag);
        T_CHECK(n == 0);
    }
    T_CHECK(loop_stats(l).tcp.connections_active == 0);
    char b;
    T_CHECK(recv(peer, &b, 1, 0) == 0); /* the peer saw the close */
    close(peer);

    /* batches of 4: more timer and call events than fit wait, in order */
    uint64_t tids[10];
    for (int i = 0; i < 10; i++) {
        T_CHECK_ERR(zcn_loop_timer_start(l, 0, 0, NULL, NULL, &tids[i]), ZCN_OK);
        T_CHECK_ERR(zcn_loop_call(l, NULL, (void *)(uintptr_t)(1000 + i)), ZCN_OK);
    }
    int next_timer = 0, next_call = 0;
    dl = t_mono_ms() + 3000;
    while ((next_timer < 10 || next_call < 10) && t_mono_ms() < dl) {
        T_CHECK_ERR(zcn_loop_poll(l, ev, 4, 20, &n), ZCN_OK);
        T_CHECK(n <= 4);
        for (uint32_t i = 0; i < n; i++) {
            if (ev[i].type == ZCN_EVENT_TIMER) {
                T_CHECK(next_timer < 10 && ev[i].offset == tids[next_timer]);
                next_timer++;
            } else {
                T_CHECK(ev[i].type == ZCN_EVENT_CALL);
                T_CHECK(ev[i].offset == (uint64_t)(1000 + next_call));
                next_call++;
            }
        }
    }
    T_CHECK(next_timer == 10 && next_call == 10);
    T_CHECK(loop_stats(l).timers_active == 0);
    ZCN_LoopStats st = loop_stats(l);
    T_CHECK(st.tcp.connections_active == 0);
    T_CHECK(st.servers == 2);
    T_CHECK(st.calls_run == 11);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    close(p[0]);
    close(p[1]);
    T_CHECK(t_open_fds() == fds);
    fprintf(stderr, "poll: TIMER, WATCH, CALL, CONNECT (ok and refused), tags of two listeners "
            "and two connects\n");
}

/* ---- 9. two servers on one loop, one destroyed --------------------------- */

struct prefix_server {
    ZCN_Server *srv;
    char prefix;
    int accepts, closes;
};

static void ps_accept(void *ud, int fd)
{
    (void)fd;
    ((struct prefix_server *)ud)->accepts++;
}

static void ps_data(void *ud, int fd, const uint8_t *data, size_t len)
{
    struct prefix_server *p = ud;
    T_CHECK_ERR(zcn_server_send(p->srv, fd, (const uint8_t *)&p->prefix, 1), ZCN_OK);
    T_CHECK_ERR(zcn_server_send(p->srv, fd, data, len), ZCN_OK);
}

static void ps_close(void *ud, int fd)
{
    (void)fd;
    ((struct prefix_server *)ud)->closes++;
}

static void test_two_servers(void)
{
    int fds = t_open_fds();
    ZCN_Loop *l = t_new_loop(NULL);
    struct prefix_server a = {.prefix = 'A'}, b = {.prefix = 'B'};
    a.srv = new_server_on(l, 0, 0);
    b.srv = new_server_on(l, 0, 0);
    T_CHECK_ERR(zcn_server_set_callbacks(a.srv, &a, ps_accept, ps_data, ps_close), ZCN_OK);
    T_CHECK_ERR(zcn_server_set_callbacks(b.srv, &b, ps_accept, ps_data, ps_close), ZCN_OK);
    uint16_t port_a = zcn_server_port(a.srv);
    struct client c[4];
    for (int i = 0; i < 4; i++) {
        c[i] = (struct client){.loop = l, .msg = "x"};
        T_CHECK_ERR(client_connect(&c[i], i < 2 ? port_a : zcn_server_port(b.srv), 0, 0),
                    ZCN_OK);
    }
    RUN_UNTIL(l, c[0].got_len == 2 && c[1].got_len == 2 && c[2].got_len == 2 &&
                     c[3].got_len == 2, 3000);
    T_CHECK(strcmp(c[0].got, "Ax") == 0 && strcmp(c[1].got, "Ax") == 0);
    T_CHECK(strcmp(c[2].got, "Bx") == 0 && strcmp(c[3].got, "Bx") == 0);
    T_CHECK(loop_stats(l).servers == 2);

    T_CHECK_ERR(zcn_server_destroy(a.srv), ZCN_OK);
    T_CHECK(a.closes == 2); /* told during the destroy */
    T_CHECK(loop_stats(l).servers == 1);
    RUN_UNTIL(l, c[0].closes == 1 && c[1].closes == 1, 3000);
    /* b serves on */
    T_CHECK_ERR(zcn_loop_send(l, c[2].fd, (const uint8_t *)"y", 1), ZCN_OK);
    T_CHECK_ERR(zcn_loop_send(l, c[3].fd, (const uint8_t *)"z", 1), ZCN_OK);
    RUN_UNTIL(l, c[2].got_len == 4 && c[3].got_len == 4, 3000);
    T_CHECK(strcmp(c[2].got, "BxBy") == 0 && strcmp(c[3].got, "BxBz") == 0);
    /* a's port refuses */
    struct client r = {.loop = l};
    T_CHECK_ERR(client_connect(&r, port_a, 0, 0), ZCN_OK);
    RUN_UNTIL(l, r.connects == 1, 3000);
    T_CHECK_ERR(r.result, (ZCN_Error)ECONNREFUSED);
    T_CHECK(a.accepts == 2 && b.accepts == 2);
    run_for(l, 30);
    T_CHECK(a.closes == 2 && b.closes == 0);
    T_CHECK(c[2].closes == 0 && c[3].closes == 0);
    T_CHECK(loop_stats(l).tcp.connections_active == 4); /* b's two and their clients */
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    T_CHECK(b.closes == 2 && c[2].closes == 1 && c[3].closes == 1);
    T_CHECK(a.closes == 2 && c[0].closes == 1 && c[1].closes == 1);
    T_CHECK(t_open_fds() == fds);
    fprintf(stderr, "two servers: one destroyed (its connections closed once), the other "
            "serves on, its port refuses\n");
}

/* ---- 10. destroy with everything open ------------------------------------ */

static struct {
    int srv_accepts, srv_closes, srv_sends_closed;
    int watch_events, timer_fires, calls_ran;
    ZCN_Server *srv;
} d10;

static void d10_accept(void *ud, int fd)
{
    (void)ud;
    (void)fd;
    d10.srv_accepts++;
}

static void d10_close(void *ud, int fd)
{
    (void)ud;
    d10.srv_closes++;
    if (zcn_server_send(d10.srv, fd, (const uint8_t *)"x", 1) == ZCN_ERR_CLOSED)
        d10.srv_sends_closed++;
}

static void d10_timer(void *ud, uint64_t id)
{
    (void)ud;
    (void)id;
    d10.timer_fires++;
}

static void d10_watch(void *ud, int fd, uint32_t events, uint64_t id)
{
    (void)ud;
    (void)fd;
    (void)events;
    (void)id;
    d10.watch_events++;
}

static void d10_call(void *arg)
{
    free(arg); /* ASan's leak check fails the test if a call never runs */
    d10.calls_ran++;
}

static void test_destroy_with_everything_open(void)
{
    int fds = t_open_fds();
    memset(&d10, 0, sizeof d10);
    ZCN_Loop *l = t_new_loop(NULL);
    d10.srv = new_server_on(l, 0, 0);
    T_CHECK_ERR(zcn_server_set_callbacks(d10.srv, NULL, d10_accept, NULL, d10_close), ZCN_OK);
    T_CHECK_ERR(zcn_server_use_echo_handler(d10.srv), ZCN_OK);
    struct client c[3];
    for (int i = 0; i < 3; i++) {
        c[i] = (struct client){.loop = l, .msg = "hi"};
        T_CHECK_ERR(client_connect(&c[i], zcn_server_port(d10.srv), 0, 0), ZCN_OK);
    }
    RUN_UNTIL(l, c[0].got_len == 2 && c[1].got_len == 2 && c[2].got_len == 2 &&
                     d10.srv_accepts == 3, 3000);
    /* one still connecting */
    struct full_listener f;
    full_listener_open(&f);
    struct client pending = {.loop = l};
    T_CHECK_ERR(client_connect(&pending, f.port, 10000, 0), ZCN_OK);
    /* data in flight on one, a queued send on another */
    T_CHECK_ERR(zcn_loop_send(l, c[0].fd, (const uint8_t *)"more", 4), ZCN_OK);
    run_for(l, 30);
    T_CHECK(pending.connects == 0);
    T_CHECK_ERR(zcn_loop_send(l, c[1].fd, (const uint8_t *)"queued", 6), ZCN_OK);
    /* timers, watches (one firing at every turn), calls */
    uint64_t id;
    T_CHECK_ERR(zcn_loop_timer_start(l, 10000, 0, d10_timer, NULL, &id), ZCN_OK);
    T_CHECK_ERR(zcn_loop_timer_start(l, 5000, 1000, d10_timer, NULL, &id), ZCN_OK);
    int p[2];
    T_CHECK(pipe2(p, O_NONBLOCK | O_CLOEXEC) == 0);
    T_CHECK(write(p[1], "r", 1) == 1);
    T_CHECK_ERR(zcn_loop_watch(l, p[0], ZCN_WATCH_READ, d10_watch, NULL, &id), ZCN_OK);
    T_CHECK_ERR(zcn_loop_watch(l, p[1], ZCN_WATCH_READ, d10_watch, NULL, &id), ZCN_OK);
    t_turn(l, 0);
    t_turn(l, 0);
    T_CHECK(d10.watch_events > 0);
    T_CHECK_ERR(zcn_loop_timer_start(l, 0, 0, d10_timer, NULL, &id), ZCN_OK); /* due, not run */
    for (int i = 0; i < 5; i++)
        T_CHECK_ERR(zcn_loop_call(l, d10_call, malloc(32)), ZCN_OK);
    int watch_events = d10.watch_events, timer_fires = d10.timer_fires;
    T_CHECK(d10.srv_closes == 0);

    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    T_CHECK(d10.srv_accepts == 3 && d10.srv_closes == 3);
    T_CHECK(d10.srv_sends_closed == 3);
    for (int i = 0; i < 3; i++) {
        T_CHECK(c[i].connects == 1 && c[i].closes == 1);
        T_CHECK(c[i].sends_after_close == 1);
    }
    T_CHECK(pending.connects == 1);
    T_CHECK_ERR(pending.result, ZCN_ERR_CLOSED);
    T_CHECK(pending.closes == 0);
    T_CHECK(d10.calls_ran == 5);
    T_CHECK(d10.watch_events == watch_events);
    T_CHECK(d10.timer_fires == timer_fires);
    /* gone: found in no registry, not touched */
    T_CHECK_ERR(zcn_loop_call(l, d10_call, NULL), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_stop(l), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_server_stop(d10.srv), ZCN_ERR_INVALID_ARGUMENT);
    full_listener_close(&f);
    close(p[0]);
    close(p[1]);
    T_CHECK(t_open_fds() == fds);
    fprintf(stderr, "destroy with everything open: every on_close once, the connecting one "
            "ZCN_ERR_CLOSED, queued calls ran, no fd left\n");
}

/* Destroy from a thread that is not the owner, while the loop does not
 * run: allowed; everything is still told once. */
static void *destroy_loop(void *arg)
{
    T_CHECK_ERR(zcn_loop_destroy(arg), ZCN_OK);
    return NULL;
}

static void test_destroy_from_other_thread(void)
{
    int fds = t_open_fds();
    memset(&d10, 0, sizeof d10);
    ZCN_Loop *l = t_new_loop(NULL);
    d10.srv = new_server_on(l, 0, 0);
    T_CHECK_ERR(zcn_server_set_callbacks(d10.srv, NULL, d10_accept, NULL, d10_close), ZCN_OK);
    T_CHECK_ERR(zcn_server_use_echo_handler(d10.srv), ZCN_OK);
    struct client c[2];
    for (int i = 0; i < 2; i++) {
        c[i] = (struct client){.loop = l, .msg = "hi"};
        T_CHECK_ERR(client_connect(&c[i], zcn_server_port(d10.srv), 0, 0), ZCN_OK);
    }
    RUN_UNTIL(l, c[0].got_len == 2 && c[1].got_len == 2 && d10.srv_accepts == 2, 3000);
    struct full_listener f;
    full_listener_open(&f);
    struct client pending = {.loop = l};
    T_CHECK_ERR(client_connect(&pending, f.port, 10000, 0), ZCN_OK);
    t_turn(l, 0);
    T_CHECK_ERR(zcn_loop_call(l, d10_call, malloc(8)), ZCN_OK);
    pthread_t th;
    T_CHECK(pthread_create(&th, NULL, destroy_loop, l) == 0);
    pthread_join(th, NULL);
    T_CHECK(d10.srv_closes == 2);
    T_CHECK(c[0].closes == 1 && c[1].closes == 1);
    T_CHECK(pending.connects == 1);
    T_CHECK_ERR(pending.result, ZCN_ERR_CLOSED);
    T_CHECK(d10.calls_ran == 1);
    full_listener_close(&f);
    T_CHECK(t_open_fds() == fds);
    fprintf(stderr, "destroy from another thread: every on_close once, no fd left\n");
}

/* ---- 10b. a UDP socket on the loop --------------------------------------- */

static void *udp_from_other_thread(void *arg)
{
    ZCN_UdpConfig uc = {.address = LOCALHOST};
    ZCN_Error err = ZCN_OK;
    T_CHECK(zcn_udp_create_on(arg, &uc, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_WRONG_THREAD);
    return NULL;
}

static void test_udp_on_loop(void)
{
    int fds = t_open_fds();
    ZCN_Loop *l = t_new_loop(NULL);
    ZCN_UdpConfig uc = {.address = LOCALHOST};
    ZCN_Error err = ZCN_OK;
    ZCN_UdpSocket *u = zcn_udp_create_on(l, &uc, &err); /* makes this thread the owner */
    if (u == NULL)
        fprintf(stderr, "zcn_udp_create_on: %s (%s)\n", zcn_error_name(err), zcn_error_detail());
    T_CHECK(u != NULL);
    T_CHECK_ERR(zcn_udp_use_echo_handler(u), ZCN_OK);
    T_CHECK_ERR(zcn_udp_run_once_timeout(u, 0, NULL), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_udp_stop(u), ZCN_ERR_INVALID_ARGUMENT);
    pthread_t th;
    T_CHECK(pthread_create(&th, NULL, udp_from_other_thread, l) == 0);
    pthread_join(th, NULL);
    ZCN_Server *srv = new_server_on(l, 0, 0);
    T_CHECK_ERR(zcn_server_use_echo_handler(srv), ZCN_OK);
    struct client c = {.loop = l, .msg = "tcp"};
    T_CHECK_ERR(client_connect(&c, zcn_server_port(srv), 0, 0), ZCN_OK);
    int peer = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    T_CHECK(peer >= 0);
    struct sockaddr_in to = loopback(zcn_udp_port(u));
    T_CHECK(sendto(peer, "dgram", 5, 0, (struct sockaddr *)&to, sizeof to) == 5);
    char back[16] = "";
    ssize_t got = -1;
    uint64_t udl = t_mono_ms() + 3000;
    while ((got < 0 || c.got_len < 3) && t_mono_ms() < udl) {
        t_turn(l, 10);
        if (got < 0)
            got = recv(peer, back, sizeof back, 0);
    }
    T_CHECK(got == 5 && c.got_len == 3);
    T_CHECK(memcmp(back, "dgram", 5) == 0);
    /* the socket first, then the loop */
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_ERR_BUSY);
    T_CHECK_ERR(zcn_loop_send(l, c.fd, (const uint8_t *)"!", 1), ZCN_OK); /* still alive */
    RUN_UNTIL(l, c.got_len == 4, 2000);
    T_CHECK_ERR(zcn_udp_destroy(u), ZCN_OK);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    T_CHECK(c.closes == 1);
    close(peer);
    T_CHECK(t_open_fds() == fds);
    fprintf(stderr, "UDP on the loop: datagrams and TCP in the same turns, BUSY destroy while "
            "it is there\n");
}

/* ---- 11. threading and bad input ----------------------------------------- */

static void noop_call(void *arg)
{
    (void)arg;
}

static void bad_input(void)
{
    ZCN_Error err = ZCN_OK;
    int fd = 5;
    uint64_t id = 5;
    ZCN_LoopStats st;
    ZCN_ConnInfo ci;
    ZCN_Event ev[4];
    uint32_t n = 9;
    ZCN_Config scfg = {.address = LOCALHOST};
    ZCN_ConnectConfig cc = {.address = LOCALHOST, .port = 9};
    uint8_t byte = 0;

    T_CHECK_ERR(zcn_loop_destroy(NULL), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_run_once(NULL), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_run_once_timeout(NULL, 0, &n), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(n == 0);
    T_CHECK_ERR(zcn_loop_run(NULL), ZCN_ERR_INVALID_ARGUMENT);
    n = 9;
    T_CHECK_ERR(zcn_loop_poll(NULL, ev, 4, 0, &n), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(n == 0);
    T_CHECK_ERR(zcn_loop_stop(NULL), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_flush(NULL), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_wakeup_fd(NULL, &fd), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(fd == -1);
    T_CHECK_ERR(zcn_loop_stats(NULL, &st), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(zcn_loop_now_ms(NULL) == 0);
    T_CHECK(zcn_loop_buffer_base(NULL) == NULL);
    T_CHECK(zcn_loop_buffer_size(NULL) == 0);
    T_CHECK(zcn_server_create_on(NULL, &scfg, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(zcn_server_get_loop(NULL) == NULL);
    fd = 5;
    T_CHECK_ERR(zcn_loop_connect(NULL, &cc, &fd), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(fd == -1);
    T_CHECK_ERR(zcn_loop_send(NULL, 3, &byte, 1), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(zcn_loop_acquire_buffer(NULL, NULL) == NULL);
    T_CHECK_ERR(zcn_loop_release_buffer(NULL, &byte), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_send_buffer(NULL, 3, &byte, 1), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_close(NULL, 3), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_shutdown(NULL, 3), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_abort(NULL, 3), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_conn_info(NULL, 3, &ci), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(zcn_loop_queued_bytes(NULL, 3) == 0);
    T_CHECK_ERR(zcn_loop_timer_start(NULL, 1, 0, NULL, NULL, &id), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(id == 0);
    T_CHECK_ERR(zcn_loop_timer_cancel(NULL, 1), ZCN_ERR_INVALID_ARGUMENT);
    id = 5;
    T_CHECK_ERR(zcn_loop_watch(NULL, 0, ZCN_WATCH_READ, NULL, NULL, &id),
                ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(id == 0);
    T_CHECK_ERR(zcn_loop_unwatch(NULL, 1), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_call(NULL, noop_call, NULL), ZCN_ERR_INVALID_ARGUMENT);
    ZCN_UdpConfig uc = {.address = LOCALHOST};
    T_CHECK(zcn_udp_create_on(NULL, &uc, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);

    /* bad loop configs name the field */
    ZCN_LoopConfig lc = {.timers_max = ZCN_LOOP_TIMERS_MAX + 1};
    T_CHECK(zcn_loop_create(&lc, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(strstr(zcn_error_detail(), "timers_max") != NULL);
    lc = (ZCN_LoopConfig){.watches_max = ZCN_LOOP_WATCHES_MAX + 1};
    T_CHECK(zcn_loop_create(&lc, &err) == NULL);
    T_CHECK(strstr(zcn_error_detail(), "watches_max") != NULL);
    lc = (ZCN_LoopConfig){.calls_max = ZCN_LOOP_CALLS_MAX + 1};
    T_CHECK(zcn_loop_create(&lc, &err) == NULL);
    T_CHECK(strstr(zcn_error_detail(), "calls_max") != NULL);

    /* a live loop: NULL config and out parameters, the loop's own fields */
    ZCN_Loop *l = t_new_loop(NULL); /* NULL config: all defaults */
    T_CHECK(zcn_server_create_on(l, NULL, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_connect(l, NULL, &fd), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_connect(l, &cc, NULL), ZCN_ERR_INVALID_ARGUMENT);
    ZCN_ConnectConfig bad = cc;
    bad.address = NULL;
    T_CHECK_ERR(zcn_loop_connect(l, &bad, &fd), ZCN_ERR_INVALID_ARGUMENT);
    bad = cc;
    bad.address = "localhost";
    T_CHECK_ERR(zcn_loop_connect(l, &bad, &fd), ZCN_ERR_INVALID_ARGUMENT);
    bad = cc;
    bad.port = 0;
    T_CHECK_ERR(zcn_loop_connect(l, &bad, &fd), ZCN_ERR_INVALID_ARGUMENT);
    bad = cc;
    bad.flags = 0x80;
    T_CHECK_ERR(zcn_loop_connect(l, &bad, &fd), ZCN_ERR_INVALID_ARGUMENT);
    bad = cc;
    bad.local_address = "::1"; /* not the address's family */
    T_CHECK_ERR(zcn_loop_connect(l, &bad, &fd), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_wakeup_fd(l, NULL), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(zcn_udp_create_on(l, NULL, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_stats(l, NULL), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_timer_start(l, 1, 0, NULL, NULL, NULL), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_poll(l, NULL, 4, 0, &n), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_poll(l, ev, 3, 0, &n), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_conn_info(l, 3, NULL), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_send(l, 3, NULL, 1), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_close(l, 12345), ZCN_ERR_CLOSED);
    T_CHECK_ERR(zcn_loop_close(l, -1), ZCN_ERR_CLOSED);
    T_CHECK_ERR(zcn_loop_send(l, 1 << 30, &byte, 1), ZCN_ERR_CLOSED);
    static const struct {
        const char *name;
        ZCN_Config cfg;
    } own[] = {
        {"io_uring_entries", {.io_uring_entries = 64}},
        {"buffer_pool_size", {.buffer_pool_size = 64}},
        {"buffer_size", {.buffer_size = 4096}},
        {"connections_max", {.connections_max = 8}},
        {"send_queue_max_bytes", {.send_queue_max_bytes = 65536}},
        {"buffer_memory", {.buffer_memory = (void *)&own}},
        {"buffer_reserve", {.buffer_reserve = 4}},
        {"send_timeout_ms", {.send_timeout_ms = 1000}},
        {"conn_buffers_hard_max", {.conn_buffers_hard_max = 100}},
    };
    for (size_t i = 0; i < sizeof own / sizeof own[0]; i++) {
        ZCN_Config c = own[i].cfg;
        c.address = LOCALHOST;
        err = ZCN_OK;
        T_CHECK(zcn_server_create_on(l, &c, &err) == NULL);
        T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);
        if (strstr(zcn_error_detail(), own[i].name) == NULL)
            fprintf(stderr, "detail for %s: %s\n", own[i].name, zcn_error_detail());
        T_CHECK(strstr(zcn_error_detail(), own[i].name) != NULL);
    }
    ZCN_Config c = {.address = "not an address"};
    T_CHECK(zcn_server_create_on(l, &c, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);
    c = (ZCN_Config){.address = LOCALHOST, .flags = 0x100};
    T_CHECK(zcn_server_create_on(l, &c, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(loop_stats(l).servers == 0);
    /* at most 256 listeners per loop; a destroyed one's place is reused */
    static ZCN_Server *many[256];
    ZCN_Config one = {.address = LOCALHOST};
    for (int i = 0; i < 256; i++) {
        many[i] = zcn_server_create_on(l, &one, &err);
        T_CHECK(many[i] != NULL);
    }
    T_CHECK(zcn_server_create_on(l, &one, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_EXHAUSTED);
    T_CHECK_ERR(zcn_server_destroy(many[100]), ZCN_OK);
    many[100] = zcn_server_create_on(l, &one, &err);
    T_CHECK(many[100] != NULL);
    T_CHECK_ERR(zcn_server_start(many[100]), ZCN_OK);
    T_CHECK(loop_stats(l).servers == 256);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK); /* frees them all */
}

static struct {
    ZCN_Loop *loop;
    pthread_t owner;
    int calls_ran, calls_on_owner;
} wt;

static void wt_call(void *arg)
{
    (void)arg;
    wt.calls_ran++;
    if (pthread_equal(pthread_self(), wt.owner))
        wt.calls_on_owner++;
}

static void *wt_other_thread(void *arg)
{
    ZCN_Loop *l = wt.loop;
    uint64_t id = 5;
    int fd = 5;
    uint8_t byte = 0;
    const int *live_fd = arg;
    T_CHECK_ERR(zcn_loop_timer_start(l, 1, 0, NULL, NULL, &id), ZCN_ERR_WRONG_THREAD);
    T_CHECK(id == 0);
    T_CHECK_ERR(zcn_loop_timer_cancel(l, 1), ZCN_ERR_WRONG_THREAD);
    T_CHECK_ERR(zcn_loop_watch(l, 0, ZCN_WATCH_READ, NULL, NULL, &id), ZCN_ERR_WRONG_THREAD);
    T_CHECK_ERR(zcn_loop_unwatch(l, 1), ZCN_ERR_WRONG_THREAD);
    ZCN_ConnectConfig cc = {.address = LOCALHOST, .port = 9};
    T_CHECK_ERR(zcn_loop_connect(l, &cc, &fd), ZCN_ERR_WRONG_THREAD);
    T_CHECK(fd == -1);
    T_CHECK_ERR(zcn_loop_run_once_timeout(l, 0, NULL), ZCN_ERR_WRONG_THREAD);
    T_CHECK_ERR(zcn_loop_flush(l), ZCN_ERR_WRONG_THREAD);
    T_CHECK_ERR(zcn_loop_send(l, *live_fd, &byte, 1), ZCN_ERR_WRONG_THREAD);
    T_CHECK_ERR(zcn_loop_close(l, *live_fd), ZCN_ERR_WRONG_THREAD);
    ZCN_Config scfg = {.address = LOCALHOST};
    ZCN_Error err = ZCN_OK;
    T_CHECK(zcn_server_create_on(l, &scfg, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_WRONG_THREAD);
    /* these two work from any thread */
    T_CHECK_ERR(zcn_loop_call(l, wt_call, NULL), ZCN_OK);
    T_CHECK_ERR(zcn_loop_stop(l), ZCN_OK);
    ZCN_LoopStats st;
    T_CHECK_ERR(zcn_loop_stats(l, &st), ZCN_OK);
    return NULL;
}

/* What a callback may not do: run, destroy, add listeners. */
struct busy_probe {
    ZCN_Loop *loop;
    ZCN_Server *srv;
    int ran;
};

static void busy_timer(void *ud, uint64_t id)
{
    (void)id;
    struct busy_probe *b = ud;
    ZCN_Config cfg = {.address = LOCALHOST};
    ZCN_Error err = ZCN_OK;
    T_CHECK_ERR(zcn_loop_run_once_timeout(b->loop, 0, NULL), ZCN_ERR_BUSY);
    T_CHECK_ERR(zcn_loop_destroy(b->loop), ZCN_ERR_BUSY);
    T_CHECK_ERR(zcn_server_destroy(b->srv), ZCN_ERR_BUSY);
    T_CHECK(zcn_server_create_on(b->loop, &cfg, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_BUSY);
    b->ran++;
}

static void test_threading(void)
{
    /* calls queued on a loop that never ran still run at its destroy */
    memset(&d10, 0, sizeof d10);
    ZCN_Loop *idle = t_new_loop(NULL);
    T_CHECK_ERR(zcn_loop_call(idle, d10_call, malloc(8)), ZCN_OK);
    T_CHECK_ERR(zcn_loop_call(idle, d10_call, malloc(8)), ZCN_OK);
    T_CHECK_ERR(zcn_loop_destroy(idle), ZCN_OK);
    T_CHECK(d10.calls_ran == 2);

    int fds = t_open_fds();
    memset(&wt, 0, sizeof wt);
    wt.loop = t_new_loop(NULL);
    wt.owner = pthread_self();
    ZCN_Loop *l = wt.loop;
    ZCN_Server *srv = new_server_on(l, 0, 0); /* this thread owns the loop */
    T_CHECK_ERR(zcn_server_use_echo_handler(srv), ZCN_OK);
    struct client c = {.loop = l};
    T_CHECK_ERR(client_connect(&c, zcn_server_port(srv), 0, 0), ZCN_OK);
    RUN_UNTIL(l, c.connects == 1, 3000);
    T_CHECK_ERR(c.result, ZCN_OK);
    pthread_t th;
    T_CHECK(pthread_create(&th, NULL, wt_other_thread, &c.fd) == 0);
    pthread_join(th, NULL);
    /* the stop request: zcn_loop_run returns (alarm: a hang fails) */
    alarm(10);
    T_CHECK_ERR(zcn_loop_run(l), ZCN_OK);
    alarm(0);
    RUN_UNTIL(l, wt.calls_ran == 1, 2000);
    T_CHECK(wt.calls_on_owner == 1);
    struct busy_probe bp = {.loop = l, .srv = srv};
    uint64_t bid;
    T_CHECK_ERR(zcn_loop_timer_start(l, 0, 0, busy_timer, &bp, &bid), ZCN_OK);
    RUN_UNTIL(l, bp.ran == 1, 2000);
    /* the owner's calls still work */
    T_CHECK_ERR(zcn_loop_send(l, c.fd, (const uint8_t *)"ok", 2), ZCN_OK);
    RUN_UNTIL(l, c.got_len == 2, 2000);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    T_CHECK(c.closes == 1);
    T_CHECK(t_open_fds() == fds);
    fprintf(stderr, "threading: WRONG_THREAD from another thread, call and stop work from it; "
            "bad input\n");
}

/* A watch without a callback reports to polls only: ready while the loop
 * runs in callback mode, it waits for the next poll instead of being
 * re-armed every turn (a busy loop: before the fix, 20 turns of 10 ms
 * ended at once, each with a watch event nobody saw). */
static void test_null_watch_in_callback_mode(void)
{
    ZCN_Loop *l = zcn_loop_create(NULL, NULL);
    T_CHECK(l != NULL);
    int p[2];
    T_CHECK(pipe(p) == 0);
    T_CHECK(write(p[1], "x", 1) == 1);
    uint64_t id;
    T_CHECK_ERR(zcn_loop_watch(l, p[0], ZCN_WATCH_READ, NULL, NULL, &id), ZCN_OK);
    uint64_t t0 = t_mono_ms();
    for (int i = 0; i < 20; i++)
        t_turn(l, 10);
    uint64_t elapsed = t_mono_ms() - t0;
    ZCN_LoopStats st = loop_stats(l);
    T_CHECK(st.watch_events <= 1);
    T_CHECK(elapsed >= 150); /* the turns waited: nothing was ready for anyone */
    ZCN_Event ev[8];
    uint32_t n = 0;
    bool seen = false;
    for (int i = 0; i < 20 && !seen; i++) {
        T_CHECK_ERR(zcn_loop_poll(l, ev, 8, 10, &n), ZCN_OK);
        for (uint32_t k = 0; k < n; k++)
            seen |= ev[k].type == ZCN_EVENT_WATCH && ev[k].offset == id && ev[k].fd == p[0];
    }
    T_CHECK(seen);
    T_CHECK_ERR(zcn_loop_unwatch(l, id), ZCN_OK);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    close(p[0]);
    close(p[1]);
    fprintf(stderr, "null-callback watch: waits for a poll in callback mode (%u events in 20 "
            "turns)\n", (unsigned)st.watch_events);
}

int main(void)
{
    t_require_loop();
    /* 1000 connections with both ends in this process */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 4096 && rl.rlim_max > rl.rlim_cur) {
        rl.rlim_cur = rl.rlim_max < 4096 ? rl.rlim_max : 4096;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    uint64_t t0 = t_mono_ms();
    test_connect_refused();
    test_connect_timeout();
    test_connect_edges();
    test_many_connects();
    test_half_close_one_loop();
    test_bulk_one_loop();
    test_timers();
    test_watches();
    test_null_watch_in_callback_mode();
    test_cross_thread_calls();
    test_stats_from_another_thread();
    test_udp_stats_from_another_thread();
    test_calls_racing_destroy();
    test_poll_mode();
    test_two_servers();
    test_destroy_with_everything_open();
    test_destroy_from_other_thread();
    test_udp_on_loop();
    bad_input();
    test_threading();
    fprintf(stderr, "test_loop: all passed in %llu ms\n", (unsigned long long)(t_mono_ms() - t0));
    return T_EXIT_PASS;
}
