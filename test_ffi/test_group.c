/* ZCN_Group: N loops on N threads, one SO_REUSEPORT listener each.
 * Bad input, echo through every loop, 1,000 connections at once, churn,
 * a stop with connections open on every loop, and a pub/sub fan-out that
 * hands each message from the loop that received it to every other loop
 * with zcn_loop_call (run under TSan too). */
#include "t_helpers.h"

#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>

#define LOOPS 2
#define FDS_MAX 65536

/* ---- per-loop state set up by on_start -------------------------------- */

struct loop_state {
    ZCN_Server *server;
    uint32_t index;
    atomic_uint accepted;
    atomic_uint closed;
    uint8_t open[FDS_MAX];     /* fd open on this loop (this thread only) */
    uint32_t double_closes;    /* on_close for an fd not open here */
};

struct app {
    struct loop_state loops[LOOPS];
    atomic_uint started;
    atomic_uint stopped;
    bool echo;                 /* on_data echoes */
    ZCN_Group *group;
    ZCN_Error wait_from_loop[LOOPS];  /* zcn_group_wait from a loop thread */
    ZCN_Error destroy_from_loop[LOOPS];
};

static void st_accept(void *ud, int fd)
{
    struct loop_state *ls = ud;
    T_CHECK(fd >= 0 && fd < FDS_MAX);
    T_CHECK(!ls->open[fd]);
    ls->open[fd] = 1;
    atomic_fetch_add(&ls->accepted, 1);
}

static void st_data(void *ud, int fd, const uint8_t *data, size_t len)
{
    struct loop_state *ls = ud;
    zcn_server_send(ls->server, fd, data, len);
}

static void st_close(void *ud, int fd)
{
    struct loop_state *ls = ud;
    if (fd < 0 || fd >= FDS_MAX || !ls->open[fd]) {
        ls->double_closes++;
        return;
    }
    ls->open[fd] = 0;
    atomic_fetch_add(&ls->closed, 1);
}

static ZCN_Error app_start(void *ud, uint32_t index, ZCN_Loop *loop, ZCN_Server *server)
{
    struct app *a = ud;
    T_CHECK(index < LOOPS);
    T_CHECK(loop != NULL && server != NULL);
    uint32_t idx = 99;
    T_CHECK(zcn_group_current(a->group, &idx) == loop && idx == index);
    T_CHECK(zcn_group_loop(a->group, index) == loop);
    struct loop_state *ls = &a->loops[index];
    ls->server = server;
    ls->index = index;
    a->wait_from_loop[index] = zcn_group_wait(a->group, 0);
    a->destroy_from_loop[index] = zcn_group_destroy(a->group);
    T_CHECK_ERR(zcn_server_set_callbacks(server, ls, st_accept, a->echo ? st_data : NULL,
                                         st_close),
                ZCN_OK);
    atomic_fetch_add(&a->started, 1);
    return ZCN_OK;
}

static void app_stop(void *ud, uint32_t index, ZCN_Loop *loop, ZCN_Server *server)
{
    struct app *a = ud;
    T_CHECK(loop != NULL && server != NULL && index < LOOPS);
    atomic_fetch_add(&a->stopped, 1);
}

static ZCN_Group *new_group(struct app *a, const ZCN_GroupConfig *extra)
{
    ZCN_GroupConfig cfg = {0};
    if (extra != NULL)
        cfg = *extra;
    cfg.threads = LOOPS;
    cfg.listen.address = "127.0.0.1";
    ZCN_Error err = ZCN_OK;
    ZCN_Group *g = zcn_group_create(&cfg, &err);
    if (g == NULL)
        fprintf(stderr, "group create: %s (%s)\n", zcn_error_name(err), zcn_error_detail());
    T_CHECK(g != NULL);
    T_CHECK(zcn_group_size(g) == LOOPS);
    T_CHECK(zcn_group_port(g) != 0);
    if (a != NULL) {
        a->group = g;
        T_CHECK_ERR(zcn_group_set_hooks(g, a, app_start, app_stop), ZCN_OK);
    }
    return g;
}

/* Closes, checks every loop's on_close matched its accepts, destroys. */
static void finish(ZCN_Group *g, struct app *a, uint32_t expect_accepted)
{
    T_CHECK_ERR(zcn_group_stop(g), ZCN_OK);
    T_CHECK_ERR(zcn_group_wait(g, 20000), ZCN_OK);
    ZCN_GroupStats gs;
    ZCN_LoopStats per[LOOPS];
    T_CHECK_ERR(zcn_group_stats(g, &gs, per, LOOPS), ZCN_OK);
    T_CHECK(gs.threads == LOOPS && gs.running == 0 && gs.loop_errors == 0);
    uint32_t acc = 0, clo = 0;
    for (int i = 0; i < LOOPS; i++) {
        acc += atomic_load(&a->loops[i].accepted);
        clo += atomic_load(&a->loops[i].closed);
        T_CHECK(a->loops[i].double_closes == 0);
        T_CHECK(per[i].tcp.connections_accepted == atomic_load(&a->loops[i].accepted));
        T_CHECK(per[i].tcp.connections_active == 0);
    }
    if (expect_accepted)
        T_CHECK(acc == expect_accepted);
    T_CHECK(acc == clo);
    T_CHECK(gs.total.tcp.connections_accepted == acc);
    T_CHECK(gs.total.tcp.connections_closed == clo);
    T_CHECK(atomic_load(&a->stopped) == LOOPS);
    T_CHECK(zcn_group_loop(g, 0) == NULL && zcn_group_server(g, 1) == NULL);
    T_CHECK_ERR(zcn_group_destroy(g), ZCN_OK);
}

/* ---- bad input ------------------------------------------------------ */

static void test_bad_input(void)
{
    ZCN_Error err = ZCN_OK;
    T_CHECK(zcn_group_create(NULL, &err) == NULL && err == ZCN_ERR_INVALID_ARGUMENT);
    ZCN_GroupConfig cfg = {.threads = ZCN_GROUP_THREADS_MAX + 1};
    T_CHECK(zcn_group_create(&cfg, &err) == NULL && err == ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(strstr(zcn_error_detail(), "threads") != NULL);
    int cpus[2] = {0, 9999};
    cfg = (ZCN_GroupConfig){.threads = 2, .cpus = cpus};
    T_CHECK(zcn_group_create(&cfg, &err) == NULL && err == ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(strstr(zcn_error_detail(), "cpus[1]") != NULL);
    cpus[1] = -1;
    T_CHECK(zcn_group_create(&cfg, &err) == NULL && err == ZCN_ERR_INVALID_ARGUMENT);
    cfg = (ZCN_GroupConfig){.cpus = cpus};
    T_CHECK(zcn_group_create(&cfg, &err) == NULL && err == ZCN_ERR_INVALID_ARGUMENT);
    cfg = (ZCN_GroupConfig){.threads = 2, .flags = ZCN_GROUP_STEER_CPU};
    T_CHECK(zcn_group_create(&cfg, &err) == NULL && err == ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(strstr(zcn_error_detail(), "STEER") != NULL);
    cfg = (ZCN_GroupConfig){.threads = 2, .flags = 1u << 20};
    T_CHECK(zcn_group_create(&cfg, &err) == NULL && err == ZCN_ERR_INVALID_ARGUMENT);
    static char mem[8192];
    cfg = (ZCN_GroupConfig){.threads = 2};
    cfg.loop.buffer_memory = mem;
    T_CHECK(zcn_group_create(&cfg, &err) == NULL && err == ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(strstr(zcn_error_detail(), "buffer_memory") != NULL);
    /* errors of a loop or listener name it, and leave nothing behind */
    int fds_before = t_open_fds();
    cfg = (ZCN_GroupConfig){.threads = 2};
    cfg.listen.address = "not an address";
    T_CHECK(zcn_group_create(&cfg, &err) == NULL && err == ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(strstr(zcn_error_detail(), "loop 0") != NULL);
    cfg.listen.address = "127.0.0.1";
    cfg.listen.buffer_pool_size = 64; /* a loop field on a listener */
    T_CHECK(zcn_group_create(&cfg, &err) == NULL && err == ZCN_ERR_INVALID_ARGUMENT);
    cfg.listen.buffer_pool_size = 0;
    cfg.loop.buffer_size = UINT32_MAX;
    T_CHECK(zcn_group_create(&cfg, &err) == NULL && err == ZCN_ERR_INVALID_ARGUMENT);
    /* a port another socket holds without SO_REUSEPORT */
    int holder = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    T_CHECK(bind(holder, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(holder, 1) == 0);
    socklen_t sl = sizeof sa;
    getsockname(holder, (struct sockaddr *)&sa, &sl);
    cfg = (ZCN_GroupConfig){.threads = 2};
    cfg.listen.address = "127.0.0.1";
    cfg.listen.port = ntohs(sa.sin_port);
    T_CHECK(zcn_group_create(&cfg, &err) == NULL && err == (ZCN_Error)EADDRINUSE);
    close(holder);
    T_CHECK(t_open_fds() == fds_before);

    /* NULL handles */
    T_CHECK_ERR(zcn_group_start(NULL), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_group_stop(NULL), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_group_wait(NULL, 0), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_group_destroy(NULL), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_group_set_hooks(NULL, NULL, NULL, NULL), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_group_use_echo_handler(NULL), ZCN_ERR_INVALID_ARGUMENT);
    ZCN_GroupStats gs;
    T_CHECK_ERR(zcn_group_stats(NULL, &gs, NULL, 0), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(zcn_group_size(NULL) == 0 && zcn_group_port(NULL) == 0);
    T_CHECK(zcn_group_loop(NULL, 0) == NULL && zcn_group_server(NULL, 0) == NULL);
    T_CHECK(zcn_group_cpu(NULL, 0) == -1);
    uint32_t idx = 0;
    T_CHECK(zcn_group_current(NULL, &idx) == NULL && idx == UINT32_MAX);

    /* a group that never starts: wait says so, destroy ends its threads */
    ZCN_Group *g = new_group(NULL, NULL);
    T_CHECK_ERR(zcn_group_stats(g, NULL, NULL, 0), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_group_stats(g, &gs, NULL, 3), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_group_wait(g, 0), ZCN_ERR_NOT_STARTED);
    T_CHECK(zcn_group_loop(g, LOOPS) == NULL && zcn_group_cpu(g, 0) == -1);
    T_CHECK(zcn_group_current(g, &idx) == NULL && idx == UINT32_MAX);
    T_CHECK_ERR(zcn_group_destroy(g), ZCN_OK);
    /* a stop before start: the threads end, start then refuses */
    g = new_group(NULL, NULL);
    T_CHECK_ERR(zcn_group_stop(g), ZCN_OK);
    T_CHECK_ERR(zcn_group_wait(g, 10000), ZCN_OK);
    T_CHECK_ERR(zcn_group_destroy(g), ZCN_OK);
    T_CHECK(t_open_fds() == fds_before);
}

/* ---- echo through every loop, pinned ----------------------------------- */

static void test_echo_pinned(void)
{
    ZCN_GroupConfig cfg = {.flags = ZCN_GROUP_PIN};
    ZCN_Group *g = new_group(NULL, &cfg);
    T_CHECK(zcn_group_cpu(g, 0) >= 0 && zcn_group_cpu(g, 1) >= 0);
    T_CHECK_ERR(zcn_group_use_echo_handler(g), ZCN_OK);
    T_CHECK_ERR(zcn_group_start(g), ZCN_OK);
    T_CHECK_ERR(zcn_group_start(g), ZCN_ERR_ALREADY_STARTED);
    T_CHECK_ERR(zcn_group_use_echo_handler(g), ZCN_ERR_ALREADY_STARTED);
    T_CHECK_ERR(zcn_group_set_hooks(g, NULL, NULL, NULL), ZCN_ERR_ALREADY_STARTED);
    T_CHECK_ERR(zcn_group_wait(g, 10), ZCN_ERR_TIMEOUT);
    uint16_t port = zcn_group_port(g);
    enum { CONNS = 200 };
    for (int i = 0; i < CONNS; i++) {
        int fd = t_connect(port);
        char out[64], in[64];
        int n = snprintf(out, sizeof out, "message %d through the group", i);
        t_send_all(fd, out, (size_t)n);
        T_CHECK(t_recv_exact(fd, in, (size_t)n));
        T_CHECK(memcmp(in, out, (size_t)n) == 0);
        close(fd);
    }
    ZCN_GroupStats gs;
    ZCN_LoopStats per[LOOPS];
    /* the closes reach the loops a little later */
    uint64_t deadline = t_mono_ms() + 10000;
    do {
        T_CHECK_ERR(zcn_group_stats(g, &gs, per, LOOPS), ZCN_OK);
    } while (gs.total.tcp.connections_closed < CONNS && t_mono_ms() < deadline &&
             usleep(10000) == 0);
    T_CHECK(gs.running == LOOPS);
    T_CHECK(gs.total.tcp.connections_accepted == CONNS);
    T_CHECK(gs.total.tcp.connections_closed == CONNS);
    /* the kernel spread them over both loops */
    T_CHECK(per[0].tcp.connections_accepted > 0 && per[1].tcp.connections_accepted > 0);
    T_CHECK(per[0].tcp.connections_accepted + per[1].tcp.connections_accepted == CONNS);
    T_CHECK_ERR(zcn_group_destroy(g), ZCN_OK); /* stops and joins */
}

/* ---- 1,000 connections at once; churn; stop with connections open --- */

static void test_thousand_open(void)
{
    static struct app a;
    memset(&a, 0, sizeof a);
    a.echo = true;
    ZCN_Group *g = new_group(&a, NULL);
    T_CHECK_ERR(zcn_group_start(g), ZCN_OK);
    T_CHECK(atomic_load(&a.started) == LOOPS);
    for (int i = 0; i < LOOPS; i++) {
        T_CHECK_ERR(a.wait_from_loop[i], ZCN_ERR_WRONG_THREAD);
        T_CHECK_ERR(a.destroy_from_loop[i], ZCN_ERR_WRONG_THREAD);
    }
    uint16_t port = zcn_group_port(g);
    enum { CONNS = 1000 };
    static int fds[CONNS];
    for (int i = 0; i < CONNS; i++) {
        fds[i] = t_connect(port);
        char b[16];
        snprintf(b, sizeof b, "%015d", i);
        t_send_all(fds[i], b, 15);
    }
    for (int i = 0; i < CONNS; i++) {
        char want[16], got[16];
        snprintf(want, sizeof want, "%015d", i);
        T_CHECK(t_recv_exact(fds[i], got, 15));
        T_CHECK(memcmp(got, want, 15) == 0);
    }
    T_CHECK(atomic_load(&a.loops[0].accepted) > 0 && atomic_load(&a.loops[1].accepted) > 0);
    T_CHECK(atomic_load(&a.loops[0].accepted) + atomic_load(&a.loops[1].accepted) == CONNS);
    /* stop with all 1,000 open: each loop closes its own, on_close once each */
    finish(g, &a, CONNS);
    for (int i = 0; i < CONNS; i++) {
        char b;
        T_CHECK(recv(fds[i], &b, 1, 0) <= 0); /* closed by the server */
        close(fds[i]);
    }
}

struct churn_job {
    uint16_t port;
    int conns;
    atomic_int failures;
};

static void *churn_client(void *arg)
{
    struct churn_job *j = arg;
    for (int i = 0; i < j->conns; i++) {
        int fd = t_connect(j->port);
        char out[32], in[32];
        int n = snprintf(out, sizeof out, "churn %d", i);
        if (i % 3 == 0) { /* some leave without a word, some with a reset */
            if (i % 2 == 0) {
                struct linger lg = {.l_onoff = 1, .l_linger = 0};
                setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            }
            close(fd);
            continue;
        }
        t_send_all(fd, out, (size_t)n);
        if (!t_recv_exact(fd, in, (size_t)n) || memcmp(in, out, (size_t)n) != 0)
            atomic_fetch_add(&j->failures, 1);
        close(fd);
    }
    return NULL;
}

static void test_churn(void)
{
    static struct app a;
    memset(&a, 0, sizeof a);
    a.echo = true;
    ZCN_Group *g = new_group(&a, NULL);
    T_CHECK_ERR(zcn_group_start(g), ZCN_OK);
    enum { THREADS = 4, PER = 500 };
    struct churn_job job = {.port = zcn_group_port(g), .conns = PER};
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++)
        T_CHECK(pthread_create(&th[i], NULL, churn_client, &job) == 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    T_CHECK(atomic_load(&job.failures) == 0);
    uint64_t deadline = t_mono_ms() + 10000;
    for (;;) { /* every close reached its loop */
        uint32_t c = atomic_load(&a.loops[0].closed) + atomic_load(&a.loops[1].closed);
        if (c == THREADS * PER || t_mono_ms() > deadline)
            break;
        usleep(10000);
    }
    T_CHECK(atomic_load(&a.loops[0].accepted) > 0 && atomic_load(&a.loops[1].accepted) > 0);
    finish(g, &a, THREADS * PER);
}

/* ---- a loop's on_start failing stops the group ------------------------- */

static ZCN_Error fail_second(void *ud, uint32_t index, ZCN_Loop *loop, ZCN_Server *server)
{
    (void)loop;
    (void)server;
    atomic_fetch_add((atomic_uint *)ud, 1);
    return index == 1 ? (ZCN_Error)EPERM : ZCN_OK;
}

static void test_start_failure(void)
{
    atomic_uint calls = 0;
    ZCN_Group *g = new_group(NULL, NULL);
    T_CHECK_ERR(zcn_group_set_hooks(g, &calls, fail_second, NULL), ZCN_OK);
    T_CHECK_ERR(zcn_group_start(g), (ZCN_Error)EPERM);
    T_CHECK(strstr(zcn_error_detail(), "loop 1: on_start") != NULL);
    T_CHECK_ERR(zcn_group_wait(g, 20000), (ZCN_Error)EPERM);
    ZCN_GroupStats gs;
    T_CHECK_ERR(zcn_group_stats(g, &gs, NULL, 0), ZCN_OK);
    T_CHECK(gs.loop_errors == 1 && gs.running == 0);
    T_CHECK(atomic_load(&calls) >= 1);
    T_CHECK_ERR(zcn_group_destroy(g), ZCN_OK);
}

/* ---- pub/sub fan-out across loops with zcn_loop_call ---------------- */

/* A subscriber says "S" first; every other connection publishes: what it
 * sends goes, in order, to every subscriber on every loop. The bytes go
 * from the receiving loop to the others in a refcounted message taken
 * from a pool shared by the loops (thread-safe, no malloc per message). */
#define MSG_BUF 16384
struct fanout;
struct msg {
    atomic_uint refs;
    uint32_t len;
    struct fanout *f;
    uint8_t data[];
};
struct fan_loop {
    ZCN_Loop *loop;
    uint32_t index;
    int subs[64];
    int nsubs;
    uint8_t role[FDS_MAX];     /* 0 unknown, 'S' subscriber, 'P' publisher */
};
struct fanout {
    ZCN_Group *group;
    ZCN_BufferPool *pool;
    struct fan_loop loops[LOOPS];
    atomic_uint subscribed;
    atomic_ullong delivered;    /* bytes queued to subscribers */
    atomic_uint refused;        /* zcn_loop_call or pool refusals */
};

static void msg_unref(struct msg *m)
{
    if (atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) == 1)
        T_CHECK_ERR(zcn_pool_release(m->f->pool, m), ZCN_OK);
}

static void fan_deliver(void *arg)
{
    struct msg *m = arg;
    uint32_t idx;
    ZCN_Loop *loop = zcn_group_current(m->f->group, &idx);
    T_CHECK(loop != NULL);
    struct fan_loop *fl = &m->f->loops[idx];
    for (int i = 0; i < fl->nsubs; i++)
        if (zcn_loop_send(loop, fl->subs[i], m->data, m->len) == ZCN_OK)
            atomic_fetch_add(&m->f->delivered, m->len);
    msg_unref(m);
}

static void fan_data(void *ud, int fd, const uint8_t *data, size_t len)
{
    struct fan_loop *fl = ud;
    struct fanout *f = (struct fanout *)((char *)(fl - fl->index) - offsetof(struct fanout, loops));
    if (fl->role[fd] == 0) {
        fl->role[fd] = data[0] == 'S' ? 'S' : 'P';
        if (fl->role[fd] == 'S') {
            T_CHECK(fl->nsubs < 64);
            fl->subs[fl->nsubs++] = fd;
            atomic_fetch_add(&f->subscribed, 1);
            return;
        }
    }
    if (fl->role[fd] != 'P')
        return;
    while (len > 0) {
        struct msg *m = zcn_pool_acquire(f->pool);
        if (m == NULL) {
            atomic_fetch_add(&f->refused, 1);
            return;
        }
        size_t room = MSG_BUF - sizeof *m;
        m->len = (uint32_t)(len < room ? len : room);
        memcpy(m->data, data, m->len);
        m->f = f;
        atomic_init(&m->refs, LOOPS);
        for (uint32_t j = 0; j < LOOPS; j++) {
            ZCN_Loop *target = zcn_group_loop(f->group, j);
            if (j == fl->index) {
                fan_deliver(m); /* our own subscribers: no hand-off */
            } else if (zcn_loop_call(target, fan_deliver, m) != ZCN_OK) {
                atomic_fetch_add(&f->refused, 1);
                msg_unref(m);
            }
        }
        data += m->len;
        len -= m->len;
    }
}

static void fan_close(void *ud, int fd)
{
    struct fan_loop *fl = ud;
    if (fl->role[fd] == 'S')
        for (int i = 0; i < fl->nsubs; i++)
            if (fl->subs[i] == fd)
                fl->subs[i] = fl->subs[--fl->nsubs];
    fl->role[fd] = 0;
}

static ZCN_Error fan_start(void *ud, uint32_t index, ZCN_Loop *loop, ZCN_Server *server)
{
    struct fanout *f = ud;
    f->loops[index].loop = loop;
    f->loops[index].index = index;
    return zcn_server_set_callbacks(server, &f->loops[index], NULL, fan_data, fan_close);
}

struct sub_job {
    int fd;
    size_t want;
    uint8_t *got;
    bool ok;
};

static void *sub_reader(void *arg)
{
    struct sub_job *j = arg;
    j->ok = t_recv_exact(j->fd, j->got, j->want);
    return NULL;
}

static void test_fanout(void)
{
    static struct fanout f;
    memset(&f, 0, sizeof f);
    ZCN_Error err = ZCN_OK;
    f.pool = zcn_pool_create(MSG_BUF, 256, &err);
    T_CHECK(f.pool != NULL);
    ZCN_GroupConfig cfg = {0};
    cfg.loop.calls_max = 65536;
    cfg.loop.send_queue_max_bytes = 8u << 20;
    cfg.loop.buffer_pool_size = 2048;
    ZCN_Group *g = new_group(NULL, &cfg);
    f.group = g;
    T_CHECK_ERR(zcn_group_set_hooks(g, &f, fan_start, NULL), ZCN_OK);
    T_CHECK_ERR(zcn_group_start(g), ZCN_OK);
    uint16_t port = zcn_group_port(g);

    enum { SUBS = 16, BYTES = 1 << 20 };
    struct sub_job subs[SUBS];
    pthread_t th[SUBS];
    for (int i = 0; i < SUBS; i++) {
        subs[i].fd = t_connect(port);
        t_send_all(subs[i].fd, "S", 1);
    }
    uint64_t deadline = t_mono_ms() + 10000;
    while (atomic_load(&f.subscribed) < SUBS && t_mono_ms() < deadline)
        usleep(1000);
    T_CHECK(atomic_load(&f.subscribed) == SUBS);
    T_CHECK(f.loops[0].nsubs > 0 && f.loops[1].nsubs > 0); /* on both loops */
    uint8_t *stream = malloc(BYTES);
    T_CHECK(stream != NULL);
    for (size_t i = 0; i < BYTES; i++)
        stream[i] = (uint8_t)((i * 2654435761u) >> 13);
    stream[0] = 'P';
    for (int i = 0; i < SUBS; i++) {
        subs[i].want = BYTES;
        subs[i].got = malloc(BYTES);
        T_CHECK(subs[i].got != NULL);
        T_CHECK(pthread_create(&th[i], NULL, sub_reader, &subs[i]) == 0);
    }
    int pub = t_connect(port);
    for (size_t off = 0; off < BYTES; off += 4096) {
        t_send_all(pub, stream + off, 4096);
        if (atomic_load(&f.refused) != 0)
            break;
    }
    for (int i = 0; i < SUBS; i++) {
        pthread_join(th[i], NULL);
        T_CHECK(subs[i].ok);
        T_CHECK(memcmp(subs[i].got, stream, BYTES) == 0);
        free(subs[i].got);
    }
    T_CHECK(atomic_load(&f.refused) == 0);
    T_CHECK(atomic_load(&f.delivered) == (unsigned long long)SUBS * BYTES);
    ZCN_GroupStats gs;
    T_CHECK_ERR(zcn_group_stop(g), ZCN_OK);
    T_CHECK_ERR(zcn_group_wait(g, 20000), ZCN_OK);
    T_CHECK_ERR(zcn_group_stats(g, &gs, NULL, 0), ZCN_OK);
    T_CHECK(gs.total.calls_run > 0);
    T_CHECK_ERR(zcn_group_destroy(g), ZCN_OK);
    ZCN_PoolStats ps;
    T_CHECK_ERR(zcn_pool_stats(f.pool, &ps), ZCN_OK);
    T_CHECK(ps.in_use == 0); /* every message went back once */
    zcn_pool_destroy(f.pool);
    close(pub);
    for (int i = 0; i < SUBS; i++)
        close(subs[i].fd);
    free(stream);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    t_require_loop();
    test_bad_input();
    test_echo_pinned();
    test_thousand_open();
    test_churn();
    test_start_failure();
    test_fanout();
    printf("test_group: ok\n");
    return T_EXIT_PASS;
}
