/* zcn_server_stop racing zcn_server_destroy: threads that keep stopping a
 * server while it is destroyed (and after), and a signal handler that stops
 * it through a global pointer while it goes. Each stop either reaches the
 * live server or finds it gone and touches nothing. Run under TSan and
 * ASan (CTest): a use after free or a data race fails the test. */
#include "t_helpers.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/time.h>

#define ROUNDS 100
#define STOPPERS 3

static ZCN_Server *_Atomic target;
static atomic_int stopping = 1;
static atomic_long stops_ok, stops_gone;

static void *stopper(void *arg)
{
    (void)arg;
    while (atomic_load(&stopping)) {
        ZCN_Server *s = atomic_load(&target);
        if (s == NULL)
            continue;
        ZCN_Error e = zcn_server_stop(s);
        if (e == ZCN_OK)
            atomic_fetch_add(&stops_ok, 1);
        else if (e == ZCN_ERR_INVALID_ARGUMENT)
            atomic_fetch_add(&stops_gone, 1);
        else
            T_CHECK(!"unexpected error from zcn_server_stop");
    }
    return NULL;
}

static ZCN_Server *new_server(void)
{
    ZCN_Config cfg = {.address = "127.0.0.1", .buffer_pool_size = 16, .connections_max = 4};
    ZCN_Error err = ZCN_OK;
    ZCN_Server *s = zcn_server_create(&cfg, &err);
    T_CHECK(s != NULL);
    return s;
}

static void test_threads_stop_while_destroying(void)
{
    pthread_t th[STOPPERS];
    for (int i = 0; i < STOPPERS; i++)
        pthread_create(&th[i], NULL, stopper, NULL);
    for (int r = 0; r < ROUNDS; r++) {
        ZCN_Server *s = new_server();
        T_CHECK_ERR(zcn_server_start(s), ZCN_OK);
        atomic_store(&target, s);
        /* the loop sees the stops: each run returns */
        for (int i = 0; i < 3; i++)
            T_CHECK_ERR(zcn_server_run_once_timeout(s, 1000, NULL), ZCN_OK);
        /* The pointer stays visible to the stoppers during and after the
         * destroy: exactly the pattern that used to touch freed memory. */
        T_CHECK_ERR(zcn_server_destroy(s), ZCN_OK);
        for (int spin = 0; spin < 1000; spin++)
            __asm__ volatile("" ::: "memory");
        atomic_store(&target, NULL);
    }
    atomic_store(&stopping, 0);
    for (int i = 0; i < STOPPERS; i++)
        pthread_join(th[i], NULL);
    fprintf(stderr, "stops that reached a server: %ld, that found it gone: %ld\n",
            atomic_load(&stops_ok), atomic_load(&stops_gone));
    T_CHECK(atomic_load(&stops_ok) > 0);
}

/* The C signal-handler pattern: a global the handler passes to stop. */
static ZCN_Server *volatile g_server;
static volatile sig_atomic_t g_handled;

static void on_alarm(int sig)
{
    (void)sig;
    ZCN_Error e = zcn_server_stop(g_server);
    if (e == ZCN_OK || e == ZCN_ERR_INVALID_ARGUMENT)
        g_handled++;
}

static void test_signal_handler_during_destroy(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    /* SIGALRM every 100 us while servers come and go on this thread */
    struct itimerval it = {.it_interval = {0, 100}, .it_value = {0, 100}};
    setitimer(ITIMER_REAL, &it, NULL);
    for (int r = 0; r < ROUNDS; r++) {
        ZCN_Server *s = new_server();
        g_server = s;
        T_CHECK_ERR(zcn_server_start(s), ZCN_OK);
        ZCN_Error e = zcn_server_run_once_timeout(s, 2, NULL);
        T_CHECK(e == ZCN_OK || e == (ZCN_Error)EINTR);
        zcn_server_destroy(s); /* g_server still points at it */
        usleep(200);           /* signals land after the free too */
    }
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    signal(SIGALRM, SIG_DFL);
    fprintf(stderr, "signal handler stops: %d\n", (int)g_handled);
    T_CHECK(g_handled > 0);
}

/* The same for a UDP socket with its own ring. */
static ZCN_UdpSocket *_Atomic udp_target;

static void *udp_stopper(void *arg)
{
    (void)arg;
    while (atomic_load(&stopping)) {
        ZCN_UdpSocket *u = atomic_load(&udp_target);
        if (u == NULL)
            continue;
        ZCN_Error e = zcn_udp_stop(u);
        T_CHECK(e == ZCN_OK || e == ZCN_ERR_INVALID_ARGUMENT);
    }
    return NULL;
}

static void test_udp_stop_while_destroying(void)
{
    atomic_store(&stopping, 1);
    pthread_t th;
    pthread_create(&th, NULL, udp_stopper, NULL);
    for (int r = 0; r < ROUNDS; r++) {
        ZCN_UdpConfig cfg = {.address = "127.0.0.1", .buffer_count = 8};
        ZCN_Error err = ZCN_OK;
        ZCN_UdpSocket *u = zcn_udp_create(&cfg, &err);
        T_CHECK(u != NULL);
        atomic_store(&udp_target, u);
        ZCN_Error e = zcn_udp_run_once_timeout(u, 100, NULL);
        T_CHECK(e == ZCN_OK || e == (ZCN_Error)EINTR);
        T_CHECK_ERR(zcn_udp_destroy(u), ZCN_OK);
        for (int spin = 0; spin < 1000; spin++)
            __asm__ volatile("" ::: "memory");
        atomic_store(&udp_target, NULL);
        T_CHECK_ERR(zcn_udp_stop(u), ZCN_ERR_INVALID_ARGUMENT); /* gone: not touched */
    }
    atomic_store(&stopping, 0);
    pthread_join(th, NULL);
}

int main(void)
{
    t_require_loop();
    test_threads_stop_while_destroying();
    test_udp_stop_while_destroying();
    test_signal_handler_during_destroy();
    return T_EXIT_PASS;
}
