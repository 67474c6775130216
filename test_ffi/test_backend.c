/* Choosing the backend and reading it back (docs/BACKENDS.md): the names,
 * the config fields of loops, servers and UDP sockets (bad values refused,
 * a socket on a loop takes the loop's), ZCN_BACKEND (epoll, io_uring, a bad
 * value), the reasons, a Ring under ZCN_BACKEND=epoll, and the same echo and
 * fd watches on both backends in one process (a regular file, which epoll
 * cannot watch, is ready at once on both, as poll(2) says). Real sockets on
 * 127.0.0.1; every wait is bounded. The rest of the C suite runs over
 * whichever backend ZCN_BACKEND picks. */
#include "t_helpers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static ZCN_Loop *loop_on(uint32_t backend)
{
    ZCN_LoopConfig cfg = {.buffer_pool_size = 64, .connections_max = 16, .backend = backend};
    return t_new_loop(&cfg);
}

static bool io_uring_works(void)
{
    ZCN_Ring *r = zcn_ring_create(8, 0, NULL);
    zcn_ring_destroy(r);
    return r != NULL;
}

static void test_names_and_null(void)
{
    T_CHECK(strcmp(zcn_backend_name(ZCN_BACKEND_AUTO), "auto") == 0);
    T_CHECK(strcmp(zcn_backend_name(ZCN_BACKEND_IO_URING), "io_uring") == 0);
    T_CHECK(strcmp(zcn_backend_name(ZCN_BACKEND_EPOLL), "epoll") == 0);
    T_CHECK(strcmp(zcn_backend_name((ZCN_Backend)7), "unknown") == 0);
    const char *why = "unset";
    T_CHECK(zcn_loop_backend(NULL, &why) == ZCN_BACKEND_AUTO && strcmp(why, "") == 0);
    why = "unset";
    T_CHECK(zcn_server_backend(NULL, &why) == ZCN_BACKEND_AUTO && strcmp(why, "") == 0);
    why = "unset";
    T_CHECK(zcn_udp_backend(NULL, &why) == ZCN_BACKEND_AUTO && strcmp(why, "") == 0);
    T_CHECK(zcn_loop_backend(NULL, NULL) == ZCN_BACKEND_AUTO);
}

static void test_config_fields(void)
{
    ZCN_Error err = ZCN_OK;
    ZCN_LoopConfig bad = {.backend = 3};
    T_CHECK(zcn_loop_create(&bad, &err) == NULL && err == ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(strstr(zcn_error_detail(), "backend") != NULL);
    bad.backend = UINT32_MAX;
    T_CHECK(zcn_loop_create(&bad, &err) == NULL && err == ZCN_ERR_INVALID_ARGUMENT);

    ZCN_Loop *l = loop_on(ZCN_BACKEND_EPOLL);
    const char *why = NULL;
    T_CHECK(zcn_loop_backend(l, &why) == ZCN_BACKEND_EPOLL);
    T_CHECK(strcmp(why, "forced by the config's backend field") == 0);
    t_turn(l, 0); /* this thread owns it now */
    /* a listener and a UDP socket on the loop run on its backend */
    ZCN_Config sc = {.address = "127.0.0.1", .backend = ZCN_BACKEND_IO_URING};
    T_CHECK(zcn_server_create_on(l, &sc, &err) == NULL && err == ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(strstr(zcn_error_detail(), "backend") != NULL);
    sc.backend = 0;
    ZCN_Server *srv = zcn_server_create_on(l, &sc, &err);
    T_CHECK(srv != NULL);
    T_CHECK(zcn_server_backend(srv, &why) == ZCN_BACKEND_EPOLL);
    ZCN_UdpConfig uc = {.address = "127.0.0.1", .backend = ZCN_BACKEND_EPOLL};
    T_CHECK(zcn_udp_create_on(l, &uc, &err) == NULL && err == ZCN_ERR_INVALID_ARGUMENT);
    uc.backend = 0;
    ZCN_UdpSocket *u = zcn_udp_create_on(l, &uc, &err);
    T_CHECK(u != NULL);
    T_CHECK(zcn_udp_backend(u, NULL) == ZCN_BACKEND_EPOLL);
    T_CHECK_ERR(zcn_udp_destroy(u), ZCN_OK);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);

    /* a server and a UDP socket with their own loop or ring */
    ZCN_Config own = {.address = "127.0.0.1", .backend = ZCN_BACKEND_EPOLL};
    srv = zcn_server_create(&own, &err);
    T_CHECK(srv != NULL);
    T_CHECK(zcn_server_backend(srv, &why) == ZCN_BACKEND_EPOLL);
    T_CHECK_ERR(zcn_server_destroy(srv), ZCN_OK);
    own.backend = 9;
    T_CHECK(zcn_server_create(&own, &err) == NULL && err == ZCN_ERR_INVALID_ARGUMENT);
    ZCN_UdpConfig ownu = {.address = "127.0.0.1", .backend = ZCN_BACKEND_EPOLL};
    u = zcn_udp_create(&ownu, &err);
    T_CHECK(u != NULL);
    T_CHECK(zcn_udp_backend(u, &why) == ZCN_BACKEND_EPOLL);
    T_CHECK(strcmp(why, "forced by the config's backend field") == 0);
    T_CHECK_ERR(zcn_udp_destroy(u), ZCN_OK);
    ownu.backend = 5;
    T_CHECK(zcn_udp_create(&ownu, &err) == NULL && err == ZCN_ERR_INVALID_ARGUMENT);

    if (io_uring_works()) {
        l = loop_on(ZCN_BACKEND_IO_URING);
        T_CHECK(zcn_loop_backend(l, &why) == ZCN_BACKEND_IO_URING);
        T_CHECK(strcmp(why, "forced by the config's backend field") == 0);
        T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    }
    fprintf(stderr, "config: backend fields chosen, refused out of range, taken from the loop\n");
}

static void test_environment(void)
{
    const char *saved = getenv("ZCN_BACKEND");
    char *copy = saved != NULL ? strdup(saved) : NULL;
    ZCN_Error err = ZCN_OK;
    const char *why = NULL;

    T_CHECK(setenv("ZCN_BACKEND", "epoll", 1) == 0);
    ZCN_Loop *l = loop_on(ZCN_BACKEND_AUTO);
    T_CHECK(zcn_loop_backend(l, &why) == ZCN_BACKEND_EPOLL);
    T_CHECK(strcmp(why, "forced by ZCN_BACKEND=epoll") == 0);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    /* a Ring is io_uring only: refused as in a container */
    T_CHECK(zcn_ring_create(8, 0, &err) == NULL && err == ZCN_ERR_URING_UNSUPPORTED);
    T_CHECK(strstr(zcn_error_detail(), "ZCN_BACKEND=epoll") != NULL);
    /* the config's explicit choice wins over the variable (and fails as
     * before where io_uring is refused) */
    ZCN_LoopConfig cfg = {.buffer_pool_size = 64, .backend = ZCN_BACKEND_IO_URING};
    l = zcn_loop_create(&cfg, &err);
    if (l != NULL) {
        T_CHECK(zcn_loop_backend(l, NULL) == ZCN_BACKEND_IO_URING);
        T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    } else {
        T_CHECK(err == ZCN_ERR_URING_BLOCKED || err == ZCN_ERR_URING_DISABLED ||
                err == ZCN_ERR_URING_UNSUPPORTED || err == ZCN_ERR_MEMLOCK);
    }

    T_CHECK(setenv("ZCN_BACKEND", "kqueue", 1) == 0);
    T_CHECK(zcn_loop_create(NULL, &err) == NULL && err == ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(strstr(zcn_error_detail(), "ZCN_BACKEND") != NULL);
    T_CHECK(strstr(zcn_error_detail(), "kqueue") != NULL);
    ZCN_UdpConfig uc = {.address = "127.0.0.1"};
    T_CHECK(zcn_udp_create(&uc, &err) == NULL && err == ZCN_ERR_INVALID_ARGUMENT);

    T_CHECK(setenv("ZCN_BACKEND", "auto", 1) == 0);
    l = loop_on(ZCN_BACKEND_AUTO);
    ZCN_Backend b = zcn_loop_backend(l, &why);
    T_CHECK(b == ZCN_BACKEND_IO_URING || b == ZCN_BACKEND_EPOLL);
    if (b == ZCN_BACKEND_IO_URING)
        T_CHECK(strcmp(why, "io_uring works here (the default)") == 0);
    else
        T_CHECK(strncmp(why, "io_uring refused: ", 18) == 0);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);

    if (copy != NULL)
        setenv("ZCN_BACKEND", copy, 1);
    else
        unsetenv("ZCN_BACKEND");
    free(copy);
    fprintf(stderr, "ZCN_BACKEND: epoll, auto and a bad value; Ring refused under epoll\n");
}

/* ---- the same behaviour on both backends --------------------------------- */

static int client_to(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    T_CHECK(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    T_CHECK(connect(fd, (struct sockaddr *)&a, sizeof a) == 0);
    T_CHECK(fcntl(fd, F_SETFL, O_NONBLOCK) == 0);
    return fd;
}

/* Resident pages of this process (/proc/self/statm). */
static long rss_pages(void)
{
    long size = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f != NULL) {
        if (fscanf(f, "%ld %ld", &size, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return resident;
}

struct watched {
    int calls;
    uint32_t events;
};

static void on_watch(void *ud, int fd, uint32_t events, uint64_t id)
{
    (void)fd;
    (void)id;
    struct watched *w = ud;
    w->calls++;
    w->events |= events;
}

static void echo_and_watch_on(uint32_t backend)
{
    ZCN_Loop *l = loop_on(backend);
    ZCN_Error err = ZCN_OK;
    t_turn(l, 0);
    ZCN_Config sc = {.address = "127.0.0.1"};
    ZCN_Server *srv = zcn_server_create_on(l, &sc, &err);
    T_CHECK(srv != NULL);
    T_CHECK_ERR(zcn_server_use_echo_handler(srv), ZCN_OK);
    T_CHECK_ERR(zcn_server_start(srv), ZCN_OK);
    int c = client_to(zcn_server_port(srv));
    /* more than a socket buffer, so some sends wait for room on epoll */
    enum { TOTAL = 4 << 20 };
    static uint8_t out[TOTAL], in[TOTAL];
    for (size_t i = 0; i < TOTAL; i++)
        out[i] = (uint8_t)(i * 131 + 7);
    size_t sent = 0, got = 0;
    uint64_t dl = t_mono_ms() + 20000;
    while (got < TOTAL && t_mono_ms() < dl) {
        if (sent < TOTAL) {
            ssize_t n = send(c, out + sent, TOTAL - sent, MSG_NOSIGNAL);
            if (n > 0)
                sent += (size_t)n;
        }
        t_turn(l, 1);
        ssize_t n = recv(c, in + got, TOTAL - got, 0);
        if (n > 0)
            got += (size_t)n;
    }
    if (got != TOTAL) {
        ZCN_LoopStats st;
        zcn_loop_stats(l, &st);
        fprintf(stderr, "sent %zu got %zu: recv_ops %llu send_ops %llu in_use %llu held %llu "
                "waiters %llu\n", sent, got, (unsigned long long)st.tcp.recv_ops,
                (unsigned long long)st.tcp.send_ops, (unsigned long long)st.tcp.buffers_in_use,
                (unsigned long long)st.tcp.buffers_held, (unsigned long long)st.tcp.buffer_waiters);
    }
    T_CHECK(got == TOTAL);
    T_CHECK(memcmp(in, out, TOTAL) == 0);
    close(c);

    /* a regular file: always ready for both (epoll_ctl refuses it with
     * EPERM; the epoll backend answers as poll(2) does) */
    char path[] = "/tmp/zcn-backend-XXXXXX";
    int f = mkstemp(path);
    T_CHECK(f >= 0);
    unlink(path);
    struct watched w = {0};
    uint64_t id = 0;
    T_CHECK_ERR(zcn_loop_watch(l, f, ZCN_WATCH_READ | ZCN_WATCH_WRITE, on_watch, &w, &id),
                ZCN_OK);
    dl = t_mono_ms() + 5000;
    while (w.calls == 0 && t_mono_ms() < dl)
        t_turn(l, 10);
    T_CHECK(w.calls > 0);
    T_CHECK((w.events & (ZCN_WATCH_READ | ZCN_WATCH_WRITE)) ==
            (ZCN_WATCH_READ | ZCN_WATCH_WRITE));
    T_CHECK_ERR(zcn_loop_unwatch(l, id), ZCN_OK);
    close(f);

    /* a watch on a huge fd number that is not open: the poll fails as the
     * kernel's would (EBADF), no table grows to its size, the loop goes on */
    struct watched bogus = {0};
    long rss_before = rss_pages();
    ZCN_Error we = zcn_loop_watch(l, 50000000, ZCN_WATCH_READ, on_watch, &bogus, &id);
    for (int k = 0; k < 5; k++)
        t_turn(l, 2);
    if (we == ZCN_OK)
        (void)zcn_loop_unwatch(l, id);
    t_turn(l, 0);
    T_CHECK(rss_pages() - rss_before < (64l << 20) / 4096);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    fprintf(stderr, "%s: 4 MiB echoed intact, a regular file watched\n",
            backend == ZCN_BACKEND_EPOLL ? "epoll" : "io_uring");
}

int main(void)
{
    t_require_loop();
    int fds = t_open_fds();
    test_names_and_null();
    test_config_fields();
    test_environment();
    echo_and_watch_on(ZCN_BACKEND_EPOLL);
    if (io_uring_works())
        echo_and_watch_on(ZCN_BACKEND_IO_URING);
    T_CHECK(t_open_fds() == fds);
    fprintf(stderr, "test_backend: all passed\n");
    return 0;
}
