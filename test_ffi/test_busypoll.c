/* Busy polling (ZCN_LoopConfig.busy_poll_us), on both backends: bad values
 * refused; echo works; a timer, a zcn_loop_call and a zcn_loop_stop from
 * another thread end a spin; a caller's 0 timeout is not spun on; a loop
 * with nothing to do stops spinning and sleeps. No timing asserts but the
 * last: a loop idle for 0.5 s must have used far less than 0.5 s of CPU
 * (its spin is 10 ms at most). */
#include "t_helpers.h"

#include <pthread.h>
#include <stdatomic.h>

#define PINGS 2000
#define SPIN_US ZCN_LOOP_BUSY_POLL_US_MAX /* the widest window: events land in spins */

static ZCN_Loop *busy_loop(ZCN_Backend backend, uint32_t us)
{
    ZCN_LoopConfig cfg = {.buffer_pool_size = 64, .connections_max = 16, .backend = backend,
                          .busy_poll_us = us};
    return t_new_loop(&cfg);
}

static ZCN_LoopStats stats_of(ZCN_Loop *l)
{
    ZCN_LoopStats st;
    T_CHECK_ERR(zcn_loop_stats(l, &st), ZCN_OK);
    return st;
}

/* A completion now, so the next turns spin (a loop spins only within
 * busy_poll_us of its last completion). */
static void kick(ZCN_Loop *l)
{
    T_CHECK_ERR(zcn_loop_call(l, NULL, NULL), ZCN_OK);
    t_turn(l, 1000);
}

static void test_bad_values(void)
{
    ZCN_Error err = ZCN_OK;
    ZCN_LoopConfig lc = {.busy_poll_us = ZCN_LOOP_BUSY_POLL_US_MAX + 1};
    T_CHECK(zcn_loop_create(&lc, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(strstr(zcn_error_detail(), "busy_poll_us") != NULL);
    lc.busy_poll_us = UINT32_MAX;
    T_CHECK(zcn_loop_create(&lc, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);

    ZCN_Config sc = {.address = "127.0.0.1", .busy_poll_us = ZCN_LOOP_BUSY_POLL_US_MAX + 1};
    T_CHECK(zcn_server_create(&sc, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(strstr(zcn_error_detail(), "busy_poll_us") != NULL);

    /* The loop's field: a server on a loop must leave it 0. */
    ZCN_Loop *l = busy_loop(ZCN_BACKEND_AUTO, 0);
    sc.busy_poll_us = 50;
    T_CHECK(zcn_server_create_on(l, &sc, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(strstr(zcn_error_detail(), "busy_poll_us") != NULL);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);

    /* The limit itself is fine, and a server's own loop takes it. */
    l = busy_loop(ZCN_BACKEND_AUTO, ZCN_LOOP_BUSY_POLL_US_MAX);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    sc.busy_poll_us = ZCN_LOOP_BUSY_POLL_US_MAX;
    ZCN_Server *s = zcn_server_create(&sc, &err);
    T_CHECK(s != NULL);
    T_CHECK_ERR(zcn_server_destroy(s), ZCN_OK);
}

struct client {
    uint16_t port;
    ZCN_Loop *loop;
    int echoed;
};

/* PINGS round trips, then a stop from this thread while the loop spins
 * (it had a completion microseconds ago). */
static void *ping_client(void *arg)
{
    struct client *c = arg;
    int fd = t_connect(c->port);
    char out[64], in[64];
    for (int i = 0; i < PINGS; i++) {
        memset(out, 'a' + i % 26, sizeof out);
        t_send_all(fd, out, sizeof out);
        if (!t_recv_exact(fd, in, sizeof in) || memcmp(in, out, sizeof in) != 0)
            break;
        c->echoed++;
    }
    T_CHECK_ERR(zcn_loop_stop(c->loop), ZCN_OK);
    close(fd);
    return NULL;
}

static void test_echo_and_stop(ZCN_Backend backend)
{
    ZCN_Loop *l = busy_loop(backend, SPIN_US);
    ZCN_Config sc = {.address = "127.0.0.1"};
    ZCN_Error err;
    ZCN_Server *s = zcn_server_create_on(l, &sc, &err);
    T_CHECK(s != NULL);
    T_CHECK_ERR(zcn_server_use_echo_handler(s), ZCN_OK);
    T_CHECK_ERR(zcn_server_start(s), ZCN_OK);
    struct client c = {.port = zcn_server_port(s), .loop = l};
    pthread_t th;
    T_CHECK(pthread_create(&th, NULL, ping_client, &c) == 0);
    /* zcn_loop_run returns only on the client's stop. */
    T_CHECK_ERR(zcn_loop_run(l), ZCN_OK);
    pthread_join(th, NULL);
    T_CHECK(c.echoed == PINGS);
    ZCN_LoopStats st = stats_of(l);
    fprintf(stderr, "echo: %d round trips, busy polls found %llu expired %llu, turns %llu\n",
            c.echoed, (unsigned long long)st.busy_polls_found,
            (unsigned long long)st.busy_polls_expired, (unsigned long long)st.turns);
    T_CHECK(st.busy_polls_found > 0); /* the replies' sends, at least, end spins */
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
}

static void on_timer(void *user_data, uint64_t id)
{
    (void)id;
    (*(int *)user_data)++;
}

static void test_timer_while_spinning(ZCN_Backend backend)
{
    ZCN_Loop *l = busy_loop(backend, SPIN_US);
    kick(l);
    int fired = 0;
    uint64_t id;
    T_CHECK_ERR(zcn_loop_timer_start(l, 2, 0, on_timer, &fired, &id), ZCN_OK);
    uint64_t deadline = t_mono_ms() + 5000;
    while (fired == 0 && t_mono_ms() < deadline)
        t_turn(l, 1000);
    T_CHECK(fired == 1);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
}

struct caller {
    ZCN_Loop *loop;
    atomic_int ran;
};

static void mark_ran(void *arg)
{
    atomic_store(&((struct caller *)arg)->ran, 1);
}

static void *late_call(void *arg)
{
    struct caller *c = arg;
    usleep(2000); /* the loop is spinning by now (2 ms of a 10 ms spin) */
    T_CHECK_ERR(zcn_loop_call(c->loop, mark_ran, c), ZCN_OK);
    return NULL;
}

static void test_call_while_spinning(ZCN_Backend backend)
{
    struct caller c = {.loop = busy_loop(backend, SPIN_US)};
    kick(c.loop);
    pthread_t th;
    T_CHECK(pthread_create(&th, NULL, late_call, &c) == 0);
    uint64_t deadline = t_mono_ms() + 5000;
    while (!atomic_load(&c.ran) && t_mono_ms() < deadline)
        t_turn(c.loop, 1000);
    pthread_join(th, NULL);
    T_CHECK(atomic_load(&c.ran));
    T_CHECK_ERR(zcn_loop_destroy(c.loop), ZCN_OK);
}

static void *late_stop(void *arg)
{
    usleep(2000);
    T_CHECK_ERR(zcn_loop_stop(arg), ZCN_OK);
    return NULL;
}

static void test_stop_while_spinning(ZCN_Backend backend)
{
    ZCN_Loop *l = busy_loop(backend, SPIN_US);
    kick(l);
    pthread_t th;
    T_CHECK(pthread_create(&th, NULL, late_stop, l) == 0);
    T_CHECK_ERR(zcn_loop_run(l), ZCN_OK); /* returns on the stop only */
    pthread_join(th, NULL);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
}

/* A 0 timeout is a look, never a spin; a short one returns (empty). */
static void test_caller_timeouts(ZCN_Backend backend)
{
    ZCN_Loop *l = busy_loop(backend, SPIN_US);
    kick(l);
    uint64_t before = stats_of(l).busy_polls_found + stats_of(l).busy_polls_expired;
    uint32_t handled = 7;
    T_CHECK_ERR(zcn_loop_run_once_timeout(l, 0, &handled), ZCN_OK);
    T_CHECK(handled == 0);
    T_CHECK(stats_of(l).busy_polls_found + stats_of(l).busy_polls_expired == before);
    ZCN_Event ev[8];
    uint32_t n = 7;
    kick(l);
    T_CHECK_ERR(zcn_loop_poll(l, ev, 8, 0, &n), ZCN_OK);
    T_CHECK(n == 0);
    kick(l);
    T_CHECK_ERR(zcn_loop_poll(l, ev, 8, 20, &n), ZCN_OK);
    T_CHECK(n == 0);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
}

static double thread_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void test_idle_sleeps(ZCN_Backend backend)
{
    ZCN_Loop *l = busy_loop(backend, SPIN_US);
    kick(l);
    double cpu0 = thread_cpu_s();
    uint64_t t0 = t_mono_ms();
    while (t_mono_ms() - t0 < 500)
        t_turn(l, 100);
    double cpu = thread_cpu_s() - cpu0;
    double wall = (double)(t_mono_ms() - t0) / 1e3;
    ZCN_LoopStats st = stats_of(l);
    fprintf(stderr, "idle: %.3f s CPU over %.3f s, spins expired %llu, turns %llu\n", cpu, wall,
            (unsigned long long)st.busy_polls_expired, (unsigned long long)st.turns);
    T_CHECK(cpu < wall * 0.5);
    T_CHECK(st.busy_polls_expired >= 1); /* it spun, then slept */
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
}

static bool backend_works(ZCN_Backend backend)
{
    ZCN_LoopConfig cfg = {.buffer_pool_size = 4, .connections_max = 4, .backend = backend};
    ZCN_Loop *l = zcn_loop_create(&cfg, NULL);
    if (l == NULL) {
        fprintf(stderr, "%s: unavailable here, skipped (%s)\n", zcn_backend_name(backend),
                zcn_error_detail());
        return false;
    }
    zcn_loop_destroy(l);
    return true;
}

int main(void)
{
    t_require_loop();
    test_bad_values();
    const ZCN_Backend backends[] = {ZCN_BACKEND_IO_URING, ZCN_BACKEND_EPOLL};
    int ran = 0;
    for (size_t i = 0; i < sizeof backends / sizeof backends[0]; i++) {
        if (!backend_works(backends[i]))
            continue;
        fprintf(stderr, "backend %s\n", zcn_backend_name(backends[i]));
        test_echo_and_stop(backends[i]);
        test_timer_while_spinning(backends[i]);
        test_call_while_spinning(backends[i]);
        test_stop_while_spinning(backends[i]);
        test_caller_timeouts(backends[i]);
        test_idle_sleeps(backends[i]);
        ran++;
    }
    T_CHECK(ran > 0);
    return T_EXIT_PASS;
}
