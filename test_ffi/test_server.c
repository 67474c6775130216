/* TCP server through the C API: echo round trips with the built-in and a
 * user handler, callback order, poll mode, close, backpressure, stop from a
 * thread and from a signal, the wakeup fd, bad input. */
#include "t_helpers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int connect_to(uint16_t port)
{
    return t_connect(port);
}

static void read_exact(int fd, uint8_t *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = recv(fd, buf + got, len - got, 0);
        T_CHECK(n > 0);
        got += (size_t)n;
    }
}

/* ---- echo with a client thread ------------------------------------------- */

struct client_job {
    uint16_t port;
    size_t len;
    int rounds;
    atomic_int done;
    int ok;
};

static void *echo_client(void *arg)
{
    struct client_job *job = arg;
    int fd = connect_to(job->port);
    uint8_t *out = malloc(job->len), *in = malloc(job->len);
    T_CHECK(out && in);
    job->ok = 1;
    for (int r = 0; r < job->rounds; r++) {
        for (size_t i = 0; i < job->len; i++)
            out[i] = (uint8_t)(i * 31 + (size_t)r);
        size_t sent = 0;
        while (sent < job->len) {
            ssize_t n = send(fd, out + sent, job->len - sent, 0);
            T_CHECK(n > 0);
            sent += (size_t)n;
        }
        read_exact(fd, in, job->len);
        if (memcmp(in, out, job->len) != 0)
            job->ok = 0;
    }
    close(fd);
    free(out);
    free(in);
    atomic_store(&job->done, 1);
    return NULL;
}

struct trace {
    char log[256];
    size_t n;
    size_t bytes;
    int closes;
    ZCN_Server *server;
};

static void t_accept(void *ud, int fd)
{
    struct trace *t = ud;
    (void)fd;
    if (t->n + 1 < sizeof t->log)
        t->log[t->n++] = 'A';
}

static void t_data(void *ud, int fd, const uint8_t *data, size_t len)
{
    struct trace *t = ud;
    if (t->n == 0 || t->log[t->n - 1] != 'D')
        if (t->n + 1 < sizeof t->log)
            t->log[t->n++] = 'D';
    t->bytes += len;
    T_CHECK_ERR(zcn_server_send(t->server, fd, data, len), ZCN_OK);
}

static void t_close(void *ud, int fd)
{
    struct trace *t = ud;
    if (t->n + 1 < sizeof t->log)
        t->log[t->n++] = 'C';
    t->closes++;
    /* the fd is no longer valid for sends once on_close runs */
    T_CHECK_ERR(zcn_server_send(t->server, fd, (const uint8_t *)"x", 1), ZCN_ERR_CLOSED);
}

static void run_until_done(ZCN_Server *s, atomic_int *done)
{
    for (int i = 0; i < 200000 && !atomic_load(done); i++) {
        ZCN_Error err = zcn_server_run_once_timeout(s, 50, NULL);
        T_CHECK(err == ZCN_OK || err == (ZCN_Error)EINTR);
    }
    T_CHECK(atomic_load(done));
}

static void test_callback_echo(size_t len, int rounds)
{
    ZCN_Server *s = t_make_server(NULL);
    struct trace t = {.server = s};
    T_CHECK_ERR(zcn_server_set_callbacks(s, &t, t_accept, t_data, t_close), ZCN_OK);
    T_CHECK_ERR(zcn_server_start(s), ZCN_OK);
    struct client_job job = {.port = zcn_server_port(s), .len = len, .rounds = rounds};
    pthread_t th;
    pthread_create(&th, NULL, echo_client, &job);
    run_until_done(s, &job.done);
    pthread_join(th, NULL);
    T_CHECK(job.ok);
    /* the client closed: on_close must follow */
    for (int i = 0; i < 100 && t.closes == 0; i++)
        zcn_server_run_once_timeout(s, 20, NULL);
    t.log[t.n] = 0;
    T_CHECK(t.closes == 1);
    T_CHECK(strcmp(t.log, "ADC") == 0);
    T_CHECK(t.bytes == len * (size_t)rounds);
    ZCN_ServerStats st;
    T_CHECK_ERR(zcn_server_stats(s, &st), ZCN_OK);
    T_CHECK(st.connections_accepted == 1);
    T_CHECK(st.connections_closed == 1);
    T_CHECK(st.connections_active == 0);
    T_CHECK(st.bytes_received == len * (size_t)rounds);
    T_CHECK(st.bytes_sent == len * (size_t)rounds);
    /* zero-copy, but for short segments that waited behind others: those
     * are packed (copied) so a slow reader holds bytes, not buffers */
    T_CHECK(st.sends_copied == st.sends_coalesced);
    T_CHECK(st.buffers_in_use == 0);
    T_CHECK_ERR(zcn_server_destroy(s), ZCN_OK);
}

static void test_builtin_echo_many(void)
{
    ZCN_Server *s = t_make_server(NULL);
    T_CHECK_ERR(zcn_server_use_echo_handler(s), ZCN_OK);
    T_CHECK_ERR(zcn_server_start(s), ZCN_OK);
    enum { N = 8 };
    struct client_job jobs[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        jobs[i] = (struct client_job){.port = zcn_server_port(s), .len = 1000u + 7919u * (unsigned)i,
                                      .rounds = 20};
        pthread_create(&th[i], NULL, echo_client, &jobs[i]);
    }
    for (int i = 0; i < N; i++) {
        run_until_done(s, &jobs[i].done);
        pthread_join(th[i], NULL);
        T_CHECK(jobs[i].ok);
    }
    T_CHECK_ERR(zcn_server_destroy(s), ZCN_OK);
}

/* ---- poll mode ----------------------------------------------------------- */

static void test_poll_mode(void)
{
    ZCN_Server *s = t_make_server(NULL);
    T_CHECK_ERR(zcn_server_start(s), ZCN_OK);
    int fd = connect_to(zcn_server_port(s));
    T_CHECK(send(fd, "hello", 5, 0) == 5);
    ZCN_Event ev[8];
    uint32_t n = 0;
    int seen_accept = 0, seen_data = 0;
    for (int i = 0; i < 100 && !seen_data; i++) {
        T_CHECK_ERR(zcn_server_poll(s, ev, 8, 100, &n), ZCN_OK);
        for (uint32_t k = 0; k < n; k++) {
            if (ev[k].type == ZCN_EVENT_ACCEPT)
                seen_accept = 1;
            if (ev[k].type == ZCN_EVENT_DATA) {
                T_CHECK(seen_accept);
                T_CHECK(ev[k].len == 5);
                T_CHECK(memcmp(ev[k].data, "hello", 5) == 0);
                T_CHECK(zcn_server_buffer_base(s) + ev[k].offset == ev[k].data);
                T_CHECK_ERR(zcn_server_send(s, ev[k].fd, ev[k].data, ev[k].len), ZCN_OK);
                seen_data = 1;
            }
        }
    }
    T_CHECK(seen_data);
    uint8_t back[5];
    /* the send goes out with the next poll */
    T_CHECK_ERR(zcn_server_poll(s, ev, 8, 0, &n), ZCN_OK);
    read_exact(fd, back, 5);
    T_CHECK(memcmp(back, "hello", 5) == 0);
    ZCN_ServerStats st;
    zcn_server_stats(s, &st);
    T_CHECK(st.sends_zero_copy == 1);
    close(fd);
    int seen_close = 0;
    for (int i = 0; i < 100 && !seen_close; i++) {
        T_CHECK_ERR(zcn_server_poll(s, ev, 8, 100, &n), ZCN_OK);
        for (uint32_t k = 0; k < n; k++)
            seen_close |= ev[k].type == ZCN_EVENT_CLOSE;
    }
    T_CHECK(seen_close);
    T_CHECK_ERR(zcn_server_poll(s, NULL, 8, 0, &n), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_server_poll(s, ev, 2, 0, &n), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_server_destroy(s), ZCN_OK);
}

/* ---- server-side close and copied sends --------------------------------- */

static int greet_fd = -1;
static ZCN_Server *greet_server;

static void greet_accept(void *ud, int fd)
{
    (void)ud;
    greet_fd = fd;
    static const char msg[] = "bye!";
    T_CHECK_ERR(zcn_server_send(greet_server, fd, (const uint8_t *)msg, 4), ZCN_OK);
    size_t cap = 0;
    uint8_t *buf = zcn_server_acquire_buffer(greet_server, &cap);
    T_CHECK(buf != NULL && cap >= 4096);
    memcpy(buf, "owned", 5);
    T_CHECK_ERR(zcn_server_send_buffer(greet_server, fd, buf, 5), ZCN_OK);
    T_CHECK_ERR(zcn_server_close(greet_server, fd), ZCN_OK);
    T_CHECK_ERR(zcn_server_close(greet_server, fd), ZCN_ERR_CLOSED);
}

static void test_close_after_send(void)
{
    ZCN_Server *s = t_make_server(NULL);
    greet_server = s;
    T_CHECK_ERR(zcn_server_set_callbacks(s, NULL, greet_accept, NULL, NULL), ZCN_OK);
    T_CHECK_ERR(zcn_server_start(s), ZCN_OK);
    int fd = connect_to(zcn_server_port(s));
    for (int i = 0; i < 50; i++)
        zcn_server_run_once_timeout(s, 20, NULL);
    char buf[16];
    read_exact(fd, (uint8_t *)buf, 9);
    T_CHECK(memcmp(buf, "bye!owned", 9) == 0);
    T_CHECK(recv(fd, buf, sizeof buf, 0) == 0); /* then EOF */
    close(fd);
    ZCN_ServerStats st;
    zcn_server_stats(s, &st);
    T_CHECK(st.connections_closed == 1);
    T_CHECK(st.sends_copied == 1);
    T_CHECK(st.buffers_in_use == 0);
    T_CHECK_ERR(zcn_server_destroy(s), ZCN_OK);
}

/* ---- stop from another thread and from a signal ------------------------- */

static void *stopper(void *arg)
{
    usleep(100 * 1000);
    zcn_server_stop(arg);
    return NULL;
}

static ZCN_Server *signal_server;
static volatile sig_atomic_t running = 1;

static void on_alarm(int sig)
{
    (void)sig;
    running = 0;
    zcn_server_stop(signal_server);
}

static void test_stop(void)
{
    ZCN_Server *s = t_make_server(NULL);
    T_CHECK_ERR(zcn_server_start(s), ZCN_OK);
    pthread_t th;
    pthread_create(&th, NULL, stopper, s);
    T_CHECK_ERR(zcn_server_run(s), ZCN_OK); /* returns only because of stop */
    pthread_join(th, NULL);

    signal_server = s;
    struct sigaction sa = {.sa_handler = on_alarm};
    sigaction(SIGALRM, &sa, NULL);
    ualarm(100 * 1000, 0);
    while (running)
        zcn_server_run_once(s); /* the seed's loop shape */
    /* that loop took the request: later calls wait again (the first may
     * still reap the eventfd wake-up) */
    uint32_t handled = 1;
    zcn_server_run_once_timeout(s, 0, NULL);
    T_CHECK_ERR(zcn_server_run_once_timeout(s, 50, &handled), ZCN_OK);
    T_CHECK(handled == 0);
    /* a request made while no loop runs ends the next call at once */
    T_CHECK_ERR(zcn_server_stop(s), ZCN_OK);
    T_CHECK_ERR(zcn_server_run(s), ZCN_OK);
    T_CHECK_ERR(zcn_server_destroy(s), ZCN_OK);
}

/* ---- sends leave when the loop stops, or on zcn_server_flush -------------- */

static ZCN_Server *bye_server;

static void bye_data(void *ud, int fd, const uint8_t *data, size_t len)
{
    (void)ud;
    T_CHECK_ERR(zcn_server_send(bye_server, fd, data, len), ZCN_OK);
    T_CHECK_ERR(zcn_server_stop(bye_server), ZCN_OK); /* reply, then stop */
}

static void test_send_then_stop(void)
{
    ZCN_Server *s = bye_server = t_make_server(NULL);
    T_CHECK_ERR(zcn_server_flush(NULL), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_server_flush(s), ZCN_OK); /* not started: nothing to do */
    T_CHECK_ERR(zcn_server_set_callbacks(s, NULL, NULL, bye_data, NULL), ZCN_OK);
    T_CHECK_ERR(zcn_server_start(s), ZCN_OK);
    int fd = connect_to(zcn_server_port(s));
    T_CHECK(send(fd, "bye", 3, 0) == 3);
    T_CHECK_ERR(zcn_server_run(s), ZCN_OK);
    uint8_t back[3];
    read_exact(fd, back, 3); /* no loop call runs meanwhile */
    T_CHECK(memcmp(back, "bye", 3) == 0);

    /* Poll mode: a send made after zcn_server_poll returned leaves on
     * zcn_server_flush. */
    T_CHECK_ERR(zcn_server_set_callbacks(s, NULL, NULL, NULL, NULL), ZCN_OK);
    T_CHECK(send(fd, "hey", 3, 0) == 3);
    ZCN_Event ev[8];
    uint32_t n = 0;
    int got = 0;
    for (int i = 0; i < 100 && !got; i++) {
        T_CHECK_ERR(zcn_server_poll(s, ev, 8, 100, &n), ZCN_OK);
        for (uint32_t k = 0; k < n; k++) {
            if (ev[k].type == ZCN_EVENT_DATA) {
                T_CHECK_ERR(zcn_server_send(s, ev[k].fd, ev[k].data, ev[k].len), ZCN_OK);
                got = 1;
            }
        }
    }
    T_CHECK(got);
    T_CHECK_ERR(zcn_server_flush(s), ZCN_OK);
    read_exact(fd, back, 3);
    T_CHECK(memcmp(back, "hey", 3) == 0);
    T_CHECK_ERR(zcn_server_flush(s), ZCN_OK); /* nothing queued: no-op */
    close(fd);
    T_CHECK_ERR(zcn_server_destroy(s), ZCN_OK);
}

/* ---- the wakeup fd ---------------------------------------------------------- */

static void test_wakeup_fd(void)
{
    int fds0 = t_open_fds();
    ZCN_Server *s = t_make_server(NULL);
    int fd = 7, again = -1;
    T_CHECK_ERR(zcn_server_wakeup_fd(NULL, &fd), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(fd == -1);
    T_CHECK_ERR(zcn_server_wakeup_fd(s, NULL), ZCN_ERR_INVALID_ARGUMENT);
    int fds1 = t_open_fds();
    T_CHECK_ERR(zcn_server_wakeup_fd(s, &fd), ZCN_OK); /* before start: fine */
    T_CHECK(fd >= 0 && (fcntl(fd, F_GETFL) & O_NONBLOCK));
    T_CHECK_ERR(zcn_server_wakeup_fd(s, &again), ZCN_OK);
    T_CHECK(again == fd && t_open_fds() == fds1 + 2);
    *t_wakeup_target() = fd;
    T_CHECK_ERR(zcn_server_start(s), ZCN_OK);

    /* The race it closes: a signal after the loop call began, before it
     * sleeps. Raised first here, it must end the wait at once. */
    struct sigaction sa = {.sa_handler = t_write_wakeup};
    sigaction(SIGUSR2, &sa, NULL);
    raise(SIGUSR2);
    uint64_t t0 = t_mono_ms();
    T_CHECK_ERR(zcn_server_run_once_timeout(s, 5000, NULL), (ZCN_Error)EINTR);
    T_CHECK(t_mono_ms() - t0 < 2000);
    uint32_t handled = 99;
    t0 = t_mono_ms();
    T_CHECK_ERR(zcn_server_run_once_timeout(s, 100, &handled), ZCN_OK); /* taken */
    T_CHECK(handled == 0 && t_mono_ms() - t0 >= 90);

    /* While the loop sleeps, in poll mode: events that came in the same
     * turn are still reported. */
    pthread_t th;
    T_CHECK(pthread_create(&th, NULL, t_late_wakeup, NULL) == 0);
    ZCN_Event ev[8];
    uint32_t n = 9;
    t0 = t_mono_ms();
    T_CHECK_ERR(zcn_server_poll(s, ev, 8, 5000, &n), (ZCN_Error)EINTR);
    T_CHECK(n == 0 && t_mono_ms() - t0 < 2000);
    pthread_join(th, NULL);
    int c = connect_to(zcn_server_port(s));
    usleep(20 * 1000);
    t_write_wakeup(SIGUSR2);
    T_CHECK_ERR(zcn_server_poll(s, ev, 8, 5000, &n), (ZCN_Error)EINTR);
    T_CHECK(n == 1 && ev[0].type == ZCN_EVENT_ACCEPT);
    close(c);

    /* zcn_server_run goes on through it; only a stop ends it. */
    t_write_wakeup(SIGUSR2);
    T_CHECK(pthread_create(&th, NULL, stopper, s) == 0);
    t0 = t_mono_ms();
    T_CHECK_ERR(zcn_server_run(s), ZCN_OK);
    T_CHECK(t_mono_ms() - t0 >= 90);
    pthread_join(th, NULL);

    sa.sa_handler = SIG_DFL;
    sigaction(SIGUSR2, &sa, NULL);
    T_CHECK_ERR(zcn_server_destroy(s), ZCN_OK);
    T_CHECK(t_open_fds() == fds0); /* destroy closed the pipe */
}

/* ---- backpressure --------------------------------------------------------- */

static int bp_fd = -1;
static int bp_drained;
static ZCN_Server *bp_server;

static void bp_accept(void *ud, int fd)
{
    (void)ud;
    bp_fd = fd;
}

static void bp_drain(void *ud, int fd)
{
    (void)ud;
    T_CHECK(fd == bp_fd);
    bp_drained++;
}

static void test_backpressure(void)
{
    ZCN_Config cfg = {.send_queue_max_bytes = 64 * 1024};
    ZCN_Server *s = t_make_server(&cfg);
    bp_server = s;
    zcn_server_set_callbacks(s, NULL, bp_accept, NULL, NULL);
    zcn_server_set_drain_callback(s, bp_drain);
    T_CHECK_ERR(zcn_server_start(s), ZCN_OK);
    int fd = connect_to(zcn_server_port(s));
    int rcv = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
    for (int i = 0; i < 50 && bp_fd < 0; i++)
        zcn_server_run_once_timeout(s, 20, NULL);
    T_CHECK(bp_fd >= 0);
    /* small kernel buffers on both sides so the server's queue fills fast */
    int snd = 4096;
    setsockopt(bp_fd, SOL_SOCKET, SO_SNDBUF, &snd, sizeof snd);
    static uint8_t chunk[8192];
    memset(chunk, 'z', sizeof chunk);
    size_t queued = 0;
    ZCN_Error err = ZCN_OK;
    for (int i = 0; i < 100000; i++) {
        err = zcn_server_send(s, bp_fd, chunk, sizeof chunk);
        if (err != ZCN_OK)
            break;
        queued += sizeof chunk;
        zcn_server_run_once_timeout(s, 0, NULL);
    }
    T_CHECK_ERR(err, ZCN_ERR_QUEUE_FULL);
    T_CHECK(zcn_server_queued_bytes(s, bp_fd) <= 64 * 1024 + sizeof chunk);
    /* now read everything: the queue drains and on_drain is called */
    size_t got = 0;
    uint8_t buf[65536];
    while (got < queued) {
        zcn_server_run_once_timeout(s, 0, NULL);
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0)
            got += (size_t)n;
    }
    for (int i = 0; i < 20 && bp_drained == 0; i++)
        zcn_server_run_once_timeout(s, 10, NULL);
    T_CHECK(bp_drained == 1);
    T_CHECK_ERR(zcn_server_send(s, bp_fd, chunk, 10), ZCN_OK);
    close(fd);
    T_CHECK_ERR(zcn_server_destroy(s), ZCN_OK);
}

/* ---- bad input ------------------------------------------------------------ */

static void test_bad_input(void)
{
    ZCN_Error err = ZCN_OK;
    T_CHECK(zcn_server_create(NULL, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);
    ZCN_Config cfg = {.address = "not-an-address"};
    T_CHECK(zcn_server_create(&cfg, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);
    cfg = (ZCN_Config){.address = "127.0.0.1", .buffer_pool_size = 1};
    T_CHECK(zcn_server_create(&cfg, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);
    cfg = (ZCN_Config){.address = "127.0.0.1", .io_uring_entries = 1u << 20};
    T_CHECK(zcn_server_create(&cfg, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);
    cfg = (ZCN_Config){.address = "127.0.0.1", .flags = 0x80};
    T_CHECK(zcn_server_create(&cfg, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);

    ZCN_Server *s = t_make_server(NULL);
    cfg = (ZCN_Config){.address = "127.0.0.1", .port = zcn_server_port(s)};
    T_CHECK(zcn_server_create(&cfg, &err) == NULL);
    T_CHECK_ERR(err, (ZCN_Error)EADDRINUSE);
    T_CHECK_ERR(zcn_server_run_once(s), ZCN_ERR_NOT_STARTED);
    T_CHECK_ERR(zcn_server_start(s), ZCN_OK);
    T_CHECK_ERR(zcn_server_start(s), ZCN_ERR_ALREADY_STARTED);
    T_CHECK_ERR(zcn_server_send(s, 12345, (const uint8_t *)"x", 1), ZCN_ERR_CLOSED);
    T_CHECK_ERR(zcn_server_send(s, -1, (const uint8_t *)"x", 1), ZCN_ERR_CLOSED);
    T_CHECK_ERR(zcn_server_send(s, 0, NULL, 1), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_server_close(s, 12345), ZCN_ERR_CLOSED);
    uint8_t local[8];
    T_CHECK_ERR(zcn_server_send_buffer(s, 0, local, 1), ZCN_ERR_FOREIGN_POINTER);
    T_CHECK_ERR(zcn_server_release_buffer(s, local), ZCN_ERR_FOREIGN_POINTER);
    T_CHECK_ERR(zcn_server_send(NULL, 0, local, 1), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_server_run_once(NULL), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_server_stop(NULL), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_server_destroy(NULL), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_server_stats(s, NULL), ZCN_ERR_INVALID_ARGUMENT);
    uint32_t handled = 7;
    T_CHECK_ERR(zcn_server_run_once_timeout(s, 10, &handled), ZCN_OK);
    T_CHECK(zcn_server_port(NULL) == 0);
    T_CHECK_ERR(zcn_server_destroy(s), ZCN_OK);

    cfg = (ZCN_Config){.address = "::1"};
    s = zcn_server_create(&cfg, &err);
    if (s != NULL) { /* IPv6 may be off on some hosts */
        T_CHECK(zcn_server_port(s) != 0);
        zcn_server_destroy(s);
    }
}

/* ---- poll mode: data and EOF in one batch -------------------------------- */

/* A client that sends a request and shuts down its side (nc -N, HTTP/1.0
 * style) must get the reply: the EOF arriving in the same poll batch as the
 * data must not close the connection before the caller has answered. */
static void test_poll_half_close(void)
{
    ZCN_Server *s = t_make_server(NULL);
    T_CHECK_ERR(zcn_server_start(s), ZCN_OK);
    for (int round = 0; round < 20; round++) {
        int fd = connect_to(zcn_server_port(s));
        T_CHECK(send(fd, "hello", 5, 0) == 5);
        T_CHECK(shutdown(fd, SHUT_WR) == 0);
        usleep(20 * 1000); /* data and FIN are both waiting at the first poll */
        ZCN_Event ev[16];
        uint32_t n = 0;
        int seen_data = 0, seen_close = 0;
        for (int i = 0; i < 200 && !seen_close; i++) {
            T_CHECK_ERR(zcn_server_poll(s, ev, 16, 50, &n), ZCN_OK);
            for (uint32_t k = 0; k < n; k++) {
                if (ev[k].type == ZCN_EVENT_DATA) {
                    T_CHECK_ERR(zcn_server_send(s, ev[k].fd, ev[k].data, ev[k].len), ZCN_OK);
                    seen_data = 1;
                }
                if (ev[k].type == ZCN_EVENT_CLOSE)
                    seen_close = 1;
            }
        }
        T_CHECK(seen_data && seen_close);
        uint8_t back[8];
        read_exact(fd, back, 5);
        T_CHECK(memcmp(back, "hello", 5) == 0);
        T_CHECK(recv(fd, back, sizeof back, 0) == 0);
        close(fd);
    }
    ZCN_ServerStats st;
    zcn_server_stats(s, &st);
    T_CHECK(st.connections_closed == 20);
    T_CHECK(st.buffers_in_use == 0);
    T_CHECK_ERR(zcn_server_destroy(s), ZCN_OK);
}

/* ---- many small sends: bytes, not buffers ---------------------------------- */

static int small_fd = -1;

static void small_accept(void *ud, int fd)
{
    (void)ud;
    small_fd = fd;
}

/* 20000 copied 10-byte sends to a peer that is not reading yet: queued
 * bytes stay far under the limit, and they must not take a pool buffer
 * each (the pool would run out: ZCN_ERR_EXHAUSTED). */
static void test_small_copied_sends_share_buffers(void)
{
    ZCN_Server *s = t_make_server(NULL);
    zcn_server_set_callbacks(s, NULL, small_accept, NULL, NULL);
    T_CHECK_ERR(zcn_server_start(s), ZCN_OK);
    int fd = connect_to(zcn_server_port(s));
    int rcv = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
    for (int i = 0; i < 50 && small_fd < 0; i++)
        zcn_server_run_once_timeout(s, 20, NULL);
    T_CHECK(small_fd >= 0);
    int snd = 4096;
    setsockopt(small_fd, SOL_SOCKET, SO_SNDBUF, &snd, sizeof snd);
    enum { MSGS = 20000, LEN = 10 };
    uint64_t peak = 0;
    for (int i = 0; i < MSGS; i++) {
        char msg[LEN + 1];
        snprintf(msg, sizeof msg, "%09d|", i);
        T_CHECK_ERR(zcn_server_send(s, small_fd, (const uint8_t *)msg, LEN), ZCN_OK);
        if (i % 100 == 0) {
            zcn_server_run_once_timeout(s, 0, NULL);
            ZCN_ServerStats st;
            zcn_server_stats(s, &st);
            if (st.buffers_in_use > peak)
                peak = st.buffers_in_use;
        }
    }
    /* 200 kB is 13 buffers of 16 kB; allow for the in-flight ones */
    T_CHECK(peak <= 40);
    static uint8_t got[MSGS * LEN];
    size_t have = 0;
    while (have < sizeof got) {
        zcn_server_run_once_timeout(s, 0, NULL);
        ssize_t n = recv(fd, got + have, sizeof got - have, MSG_DONTWAIT);
        if (n > 0)
            have += (size_t)n;
    }
    for (int i = 0; i < MSGS; i++) {
        char msg[LEN + 1];
        snprintf(msg, sizeof msg, "%09d|", i);
        T_CHECK(memcmp(got + (size_t)i * LEN, msg, LEN) == 0);
    }
    close(fd);
    T_CHECK_ERR(zcn_server_destroy(s), ZCN_OK);
}

/* on_data answering a message piece by piece (one byte at a time here):
 * the slices of one receive buffer must not take a send chunk each (they
 * grow the queue's last chunk, or are packed into one copied buffer). */
static void slice_on_data(void *ud, int fd, const uint8_t *data, size_t len)
{
    ZCN_Server *s = ud;
    for (size_t i = 0; i < len; i++)
        T_CHECK_ERR(zcn_server_send(s, fd, data + i, 1), ZCN_OK);
}

static void test_zero_copy_slices(void)
{
    ZCN_Server *s = t_make_server(NULL);
    zcn_server_set_callbacks(s, s, NULL, slice_on_data, NULL);
    T_CHECK_ERR(zcn_server_start(s), ZCN_OK);
    struct client_job job = {.port = zcn_server_port(s), .len = 300000, .rounds = 2};
    pthread_t th;
    pthread_create(&th, NULL, echo_client, &job);
    run_until_done(s, &job.done);
    pthread_join(th, NULL);
    T_CHECK(job.ok);
    ZCN_ServerStats st;
    zcn_server_stats(s, &st);
    T_CHECK(st.bytes_sent == 600000);
    T_CHECK(st.sends_zero_copy + st.sends_copied == 600000);
    T_CHECK_ERR(zcn_server_destroy(s), ZCN_OK);
}

/* ---- the built-in echo keeps the user's on_accept/on_close user_data ---- */

struct echo_ud {
    int accepts, closes;
};

static void eu_accept(void *ud, int fd)
{
    (void)fd;
    ((struct echo_ud *)ud)->accepts++;
}

static void eu_close(void *ud, int fd)
{
    (void)fd;
    ((struct echo_ud *)ud)->closes++;
}

static void test_echo_keeps_user_data(void)
{
    ZCN_Server *s = t_make_server(NULL);
    struct echo_ud ud = {0};
    T_CHECK_ERR(zcn_server_set_callbacks(s, &ud, eu_accept, NULL, eu_close), ZCN_OK);
    T_CHECK_ERR(zcn_server_use_echo_handler(s), ZCN_OK);
    T_CHECK_ERR(zcn_server_start(s), ZCN_OK);
    struct client_job job = {.port = zcn_server_port(s), .len = 3000, .rounds = 3};
    pthread_t th;
    pthread_create(&th, NULL, echo_client, &job);
    run_until_done(s, &job.done);
    pthread_join(th, NULL);
    T_CHECK(job.ok);
    for (int i = 0; i < 100 && ud.closes == 0; i++)
        zcn_server_run_once_timeout(s, 20, NULL);
    T_CHECK(ud.accepts == 1);
    T_CHECK(ud.closes == 1);
    T_CHECK_ERR(zcn_server_destroy(s), ZCN_OK);
}

int main(void)
{
    t_require_loop();
    test_bad_input();
    test_callback_echo(5, 1);
    test_callback_echo(100000, 3);
    test_callback_echo(1 << 20, 2);
    test_builtin_echo_many();
    test_echo_keeps_user_data();
    test_poll_mode();
    test_close_after_send();
    test_backpressure();
    test_poll_half_close();
    test_small_copied_sends_share_buffers();
    test_zero_copy_slices();
    test_stop();
    test_wakeup_fd();
    test_send_then_stop();
    printf("test_server: all passed\n");
    return T_EXIT_PASS;
}
