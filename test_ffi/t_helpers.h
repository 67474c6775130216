/* Helpers shared by the C tests (liburing's test/ style): exit 0 = pass,
 * 1 = fail, 77 = skip (CTest SKIP_RETURN_CODE). */
#ifndef ZCN_T_HELPERS_H
#define ZCN_T_HELPERS_H

#include "zero_copy_net.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define T_EXIT_PASS 0
#define T_EXIT_FAIL 1
#define T_EXIT_SKIP 77

/* Fails the test with file:line and the expression when cond is false. */
#define T_CHECK(cond)                                                          \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__,   \
                    #cond);                                                    \
            exit(T_EXIT_FAIL);                                                 \
        }                                                                      \
    } while (0)

/* Fails unless err == expected, printing both names. */
#define T_CHECK_ERR(err, expected)                                             \
    do {                                                                       \
        ZCN_Error t_e_ = (err), t_x_ = (expected);                             \
        if (t_e_ != t_x_) {                                                    \
            fprintf(stderr, "%s:%d: %s gave %s (%s), expected %s\n", __FILE__,  \
                    __LINE__, #err, zcn_error_name(t_e_), zcn_error_detail(),  \
                    zcn_error_name(t_x_));                                     \
            exit(T_EXIT_FAIL);                                                 \
        }                                                                      \
    } while (0)

/* Exits 77 with the reason when io_uring cannot be used on this machine. */
static inline void t_require_io_uring(void)
{
    ZCN_Error err = ZCN_OK;
    ZCN_Ring *ring = zcn_ring_create(8, 0, &err);
    if (ring == NULL) {
        fprintf(stderr, "SKIP: io_uring unavailable: %s (%s)\n",
                zcn_error_name(err), zcn_error_detail());
        exit(T_EXIT_SKIP);
    }
    zcn_ring_destroy(ring);
}

/* A loop with cfg (NULL: the defaults), or the test fails saying why. */
static inline ZCN_Loop *t_new_loop(const ZCN_LoopConfig *cfg)
{
    ZCN_Error err = ZCN_OK;
    ZCN_Loop *l = zcn_loop_create(cfg, &err);
    if (l == NULL)
        fprintf(stderr, "zcn_loop_create: %s (%s)\n", zcn_error_name(err), zcn_error_detail());
    T_CHECK(l != NULL);
    T_CHECK_ERR(err, ZCN_OK);
    return l;
}

/* One loop turn of at most timeout_ms. EINTR is a turn too: a signal, or
 * the task work of an io_uring ring this process closed, interrupts the
 * wait on either backend. */
static inline void t_turn(ZCN_Loop *l, int timeout_ms)
{
    ZCN_Error e = zcn_loop_run_once_timeout(l, timeout_ms, NULL);
    if (e != ZCN_OK && e != (ZCN_Error)EINTR)
        fprintf(stderr, "zcn_loop_run_once_timeout: %s (%s)\n", zcn_error_name(e),
                zcn_error_detail());
    T_CHECK(e == ZCN_OK || e == (ZCN_Error)EINTR);
}

/* For tests of loops, servers and UDP sockets, which run on either backend
 * (ZCN_BACKEND=epoll runs them on epoll): exits 77 only when neither can
 * make a loop, and says on stderr which one this run uses. */
static inline void t_require_loop(void)
{
    ZCN_Error err = ZCN_OK;
    ZCN_LoopConfig cfg = {.buffer_pool_size = 4, .connections_max = 4};
    ZCN_Loop *loop = zcn_loop_create(&cfg, &err);
    if (loop == NULL) {
        fprintf(stderr, "SKIP: no loop can be made here: %s (%s)\n", zcn_error_name(err),
                zcn_error_detail());
        exit(T_EXIT_SKIP);
    }
    const char *why = "";
    ZCN_Backend b = zcn_loop_backend(loop, &why);
    fprintf(stderr, "backend: %s (%s)\n", zcn_backend_name(b), why);
    zcn_loop_destroy(loop);
}

/* Whether this run's loops are on epoll (ZCN_BACKEND=epoll, or io_uring
 * refused), for the few checks whose answer differs by backend. */
static inline bool t_on_epoll(void)
{
    static int cached = -1;
    if (cached < 0) {
        ZCN_LoopConfig cfg = {.buffer_pool_size = 4, .connections_max = 4};
        ZCN_Loop *loop = zcn_loop_create(&cfg, NULL);
        cached = loop != NULL && zcn_loop_backend(loop, NULL) == ZCN_BACKEND_EPOLL;
        zcn_loop_destroy(loop);
    }
    return cached == 1;
}

/* CLOCK_MONOTONIC in milliseconds. */
static inline uint64_t t_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* How many fds the process has open (/proc/self/fd, its own dir fd included). */
static inline int t_open_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    T_CHECK(d != NULL);
    while (readdir(d) != NULL)
        n++;
    closedir(d);
    return n;
}

/* A server on 127.0.0.1, an ephemeral port, with extra's other fields
 * (NULL: all defaults); the test fails if it cannot be created. */
static inline ZCN_Server *t_make_server(const ZCN_Config *extra)
{
    ZCN_Config cfg = {0};
    if (extra != NULL)
        cfg = *extra;
    cfg.address = "127.0.0.1";
    cfg.port = 0;
    ZCN_Error err = ZCN_OK;
    ZCN_Server *s = zcn_server_create(&cfg, &err);
    if (s == NULL)
        fprintf(stderr, "create: %s (%s)\n", zcn_error_name(err), zcn_error_detail());
    T_CHECK(s != NULL);
    T_CHECK(zcn_server_port(s) != 0);
    return s;
}

/* An on_accept that stores the accepted fd in the int its user_data
 * points to (zcn_server_set_callbacks(s, &fd, t_store_fd, ...)). */
static inline void t_store_fd(void *user_data, int fd)
{
    *(int *)user_data = fd;
}

/* The wakeup fd t_write_wakeup writes to (zcn_*_wakeup_fd). */
static inline int *t_wakeup_target(void)
{
    static int fd = -1;
    return &fd;
}

/* What Python's C-level signal handler does: one byte (the signal number)
 * to the wakeup fd. Usable as a signal handler. */
static inline void t_write_wakeup(int sig)
{
    char b = (char)sig;
    ssize_t n = write(*t_wakeup_target(), &b, 1);
    (void)n;
}

/* Thread body: the same byte, 100 ms from now. */
static inline void *t_late_wakeup(void *arg)
{
    (void)arg;
    usleep(100 * 1000);
    t_write_wakeup(12); /* SIGUSR2's number here; any byte will do */
    return NULL;
}

/* A blocking TCP client connected to 127.0.0.1:port, with a 10 s receive
 * timeout (a lost reply fails the read instead of hanging the test). */
static inline int t_connect(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    T_CHECK(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    T_CHECK(connect(fd, (struct sockaddr *)&a, sizeof a) == 0);
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

/* Sends all of buf (fails the test on an error). */
static inline void t_send_all(int fd, const void *buf, size_t len)
{
    size_t sent = 0;
    while (sent < len) {
        ssize_t n = send(fd, (const char *)buf + sent, len - sent, MSG_NOSIGNAL);
        T_CHECK(n > 0);
        sent += (size_t)n;
    }
}

/* Reads exactly len bytes; false on EOF, error or the receive timeout. */
static inline bool t_recv_exact(int fd, void *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = recv(fd, (char *)buf + got, len - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        got += (size_t)n;
    }
    return true;
}

#endif
