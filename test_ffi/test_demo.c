/* The demo servers (zcn_demo_http_create, zcn_demo_resp_create): bad
 * arguments, then each server on a loop run by a thread while this thread
 * is the client over blocking sockets: pipelined requests, every split of
 * a request pair, malformed input (answered, then closed), the store's
 * limits, and destroy with connections still open (ASan/UBSan catch what
 * the parsers get wrong); then each server on a loop this thread runs, with
 * the pool held by the test so that answers find no free buffer: the
 * client is not aborted, and every answer comes, in order, once the
 * buffers are back. */
#include "t_helpers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>

static ZCN_Loop *loop;
static ZCN_Demo *demo;

/* The loop's thread creates the loop and the demo (the create makes the
 * calling thread the loop's owner), runs it until stopped, destroys both. */
struct serve {
    bool http;
    const ZCN_DemoConfig *cfg;
    sem_t ready;
};

static void *serve(void *arg)
{
    struct serve *sv = arg;
    ZCN_Error err = ZCN_OK;
    loop = zcn_loop_create(NULL, &err);
    T_CHECK(loop != NULL);
    demo = sv->http ? zcn_demo_http_create(loop, sv->cfg, &err)
                    : zcn_demo_resp_create(loop, sv->cfg, &err);
    T_CHECK_ERR(err, ZCN_OK);
    T_CHECK(demo != NULL && zcn_demo_port(demo) != 0);
    sem_post(&sv->ready);
    T_CHECK_ERR(zcn_loop_run(loop), ZCN_OK);
    ZCN_DemoStats st;
    T_CHECK_ERR(zcn_demo_stats(demo, &st), ZCN_OK);
    T_CHECK(st.connections >= 1); /* open_fd's */
    T_CHECK_ERR(zcn_demo_destroy(demo), ZCN_OK);
    T_CHECK_ERR(zcn_loop_destroy(loop), ZCN_OK);
    return NULL;
}

static int connect_to(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    T_CHECK(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    T_CHECK(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static void send_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        T_CHECK(n > 0);
        data += n;
        len -= (size_t)n;
    }
}

static size_t count_of(const char *hay, size_t len, const char *needle)
{
    size_t n = 0, k = strlen(needle);
    for (size_t i = 0; i + k <= len; i++)
        if (memcmp(hay + i, needle, k) == 0)
            n++;
    return n;
}

/* Reads until `needle` was seen `want` times (want 0: until the peer closes). */
static size_t read_answers(int fd, char *buf, size_t cap, const char *needle, size_t want)
{
    size_t len = 0;
    for (;;) {
        if (want > 0 && count_of(buf, len, needle) >= want)
            return len;
        T_CHECK(len < cap);
        ssize_t n = recv(fd, buf + len, cap - len, 0);
        if (n < 0 && errno == EINTR)
            continue; /* seen: a blocking recv here may end early with EINTR */
        if (n <= 0) {
            T_CHECK(want == 0); /* a close (or reset) before the answers */
            return len;
        }
        len += (size_t)n;
    }
}

static char buf[1 << 20];

static struct serve sv;

static void start(bool http, const ZCN_DemoConfig *cfg, pthread_t *thread)
{
    sv.http = http;
    sv.cfg = cfg;
    T_CHECK(sem_init(&sv.ready, 0, 0) == 0);
    T_CHECK(pthread_create(thread, NULL, serve, &sv) == 0);
    sem_wait(&sv.ready);
    sem_destroy(&sv.ready);
}

static void finish(pthread_t thread, int open_fd)
{
    zcn_loop_stop(loop);
    pthread_join(thread, NULL);
    close(open_fd);
}

#define HTTP_GET "GET / HTTP/1.1\r\nHost: x\r\n\r\n"

static void test_http(void)
{
    ZCN_DemoConfig cfg = {.address = "127.0.0.1", .header_max_bytes = 1024};
    pthread_t thread;
    start(true, &cfg, &thread);
    uint16_t port = zcn_demo_port(demo);

    int fd = connect_to(port);
    static char many[100 * sizeof HTTP_GET];
    for (int i = 0; i < 100; i++)
        memcpy(many + i * (sizeof HTTP_GET - 1), HTTP_GET, sizeof HTTP_GET - 1);
    send_all(fd, many, 100 * (sizeof HTTP_GET - 1));
    read_answers(fd, buf, sizeof buf, "Hello, world!", 100);

    const char pair[] = HTTP_GET "POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody";
    for (size_t cut = 1; cut < sizeof pair - 1; cut++) {
        send_all(fd, pair, cut);
        usleep(1000);
        send_all(fd, pair + cut, sizeof pair - 1 - cut);
        size_t n = read_answers(fd, buf, sizeof buf, "Hello, world!", 2);
        T_CHECK(count_of(buf, n, "HTTP/1.1 200 OK") == 2);
    }

    static const char *const bad[] = {"BAD\r\n\r\n", "GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                                      "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                                      "GET / HTTP/9.9\r\n\r\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int b = connect_to(port);
        send_all(b, bad[i], strlen(bad[i]));
        size_t n = read_answers(b, buf, sizeof buf, "", 0);
        T_CHECK(n > 24 && memcmp(buf, "HTTP/1.1 400 Bad Request\r\n", 26) == 0);
        close(b);
    }
    int b = connect_to(port);
    static char huge[4096];
    memset(huge, 'a', sizeof huge);
    memcpy(huge, "GET / HTTP/1.1\r\nX: ", 19);
    send_all(b, huge, sizeof huge);
    size_t n = read_answers(b, buf, sizeof buf, "", 0);
    T_CHECK(n > 24 && memcmp(buf, "HTTP/1.1 400", 12) == 0);
    close(b);

    send_all(fd, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n", 37);
    n = read_answers(fd, buf, sizeof buf, "", 0);
    T_CHECK(count_of(buf, n, "Connection: close") == 1);
    close(fd);

    fd = connect_to(port);
    send_all(fd, "GET / HT", 8); /* left half-parsed at destroy */
    usleep(10000);
    finish(thread, fd);
}

static void test_resp(void)
{
    ZCN_DemoConfig cfg = {.address = "127.0.0.1", .keys_max = 4, .bulk_max_bytes = 100000};
    pthread_t thread;
    start(false, &cfg, &thread);
    uint16_t port = zcn_demo_port(demo);

    int fd = connect_to(port);
    const char cmds[] = "*3\r\n$3\r\nSET\r\n$1\r\na\r\n$2\r\n41\r\n*2\r\n$4\r\nINCR\r\n$1\r\na\r\n"
                        "*2\r\n$3\r\nGET\r\n$1\r\na\r\nPING\r\n*3\r\n$3\r\nDEL\r\n$1\r\na\r\n$1\r\nb\r\n";
    send_all(fd, cmds, sizeof cmds - 1);
    size_t n = read_answers(fd, buf, sizeof buf, "\r\n", 6);
    T_CHECK(n == 29 && memcmp(buf, "+OK\r\n:42\r\n$2\r\n42\r\n+PONG\r\n:1\r\n", 29) == 0);

    const char pair[] = "*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$10\r\n0123456789\r\n"
                        "*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n";
    for (size_t cut = 1; cut < sizeof pair - 1; cut++) {
        send_all(fd, pair, cut);
        usleep(1000);
        send_all(fd, pair + cut, sizeof pair - 1 - cut);
        n = read_answers(fd, buf, sizeof buf, "\r\n", 3);
        T_CHECK(n == 22 && memcmp(buf, "+OK\r\n$10\r\n0123456789\r\n", 22) == 0);
    }

    /* keys_max 4: "key" is one; three more fit, the fifth is refused */
    const char fill[] = "*3\r\n$3\r\nSET\r\n$1\r\n1\r\n$1\r\nv\r\n*3\r\n$3\r\nSET\r\n$1\r\n2\r\n$1\r\nv\r\n"
                        "*3\r\n$3\r\nSET\r\n$1\r\n3\r\n$1\r\nv\r\n*3\r\n$3\r\nSET\r\n$1\r\n4\r\n$1\r\nv\r\n";
    send_all(fd, fill, sizeof fill - 1);
    n = read_answers(fd, buf, sizeof buf, "\r\n", 4);
    T_CHECK(count_of(buf, n, "+OK") == 3 && count_of(buf, n, "-OOM") == 1);

    static const char *const bad[] = {"!\r\n", "*1\r\n$-3\r\n", "*1\r\n$100001\r\n",
                                      "*99999999999999999999\r\n", "*1\r\n$1\r\nxyz"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int b = connect_to(port);
        send_all(b, bad[i], strlen(bad[i]));
        n = read_answers(b, buf, sizeof buf, "", 0);
        T_CHECK(n > 20 && memcmp(buf, "-ERR Protocol error: ", 21) == 0);
        close(b);
    }
    /* a SET cut short by a close: its reserved entry is freed */
    int b = connect_to(port);
    send_all(b, "*3\r\n$3\r\nSET\r\n$1\r\nz\r\n$50000\r\nabc", 31);
    usleep(10000);
    close(b);

    /* a value spanning receives, left unfinished at destroy */
    send_all(fd, "*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$60000\r\nxx", 31);
    usleep(10000);
    finish(thread, fd);
}

/* ---- answers while the pool has no free buffer ---------------------------- */

/* A loop this thread runs (the test holds its pool buffers, which only the
 * owner may), with a small pool: a pipelined receive's answers need more
 * buffers than the test leaves free, so their send is refused with
 * ZCN_ERR_EXHAUSTED. */
#define HB_POOL 64

static ZCN_Demo *hb_start(ZCN_Loop **l_out, bool http)
{
    /* The ring holds the whole reserve (its base size): what the test does
     * not hold is then one free pool buffer. */
    ZCN_LoopConfig lc = {.buffer_pool_size = HB_POOL, .buffer_size = 16384, .connections_max = 8,
                         .buffer_reserve = 8};
    ZCN_Loop *l = t_new_loop(&lc);
    ZCN_DemoConfig cfg = {.address = "127.0.0.1", .bulk_max_bytes = 100000};
    ZCN_Error err = ZCN_OK;
    ZCN_Demo *d = http ? zcn_demo_http_create(l, &cfg, &err) : zcn_demo_resp_create(l, &cfg, &err);
    T_CHECK_ERR(err, ZCN_OK);
    T_CHECK(d != NULL);
    *l_out = l;
    return d;
}

static ZCN_DemoStats hb_stats(ZCN_Demo *d)
{
    ZCN_DemoStats st;
    T_CHECK_ERR(zcn_demo_stats(d, &st), ZCN_OK);
    return st;
}

/* Takes pool buffers from l until it has none to give (into held[n..]). */
static int hb_take_all(ZCN_Loop *l, uint8_t **held, int n)
{
    while (n < HB_POOL && (held[n] = zcn_loop_acquire_buffer(l, NULL)) != NULL)
        n++;
    T_CHECK(n < HB_POOL);
    return n;
}

static void hb_release(ZCN_Loop *l, uint8_t **held, int n)
{
    for (int i = 0; i < n; i++)
        T_CHECK_ERR(zcn_loop_release_buffer(l, held[i]), ZCN_OK);
}

/* Reads what is there without waiting; *closed on EOF or reset. */
static size_t hb_read(int fd, char *into, size_t have, size_t cap, bool *closed)
{
    for (;;) {
        T_CHECK(have < cap);
        ssize_t n = recv(fd, into + have, cap - have, MSG_DONTWAIT);
        if (n > 0) {
            have += (size_t)n;
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
            *closed = true;
        return have;
    }
}

/* Sends all of data, running the loop (and reading) while the socket is full. */
static size_t hb_send(ZCN_Loop *l, int fd, const char *data, size_t len, char *into,
                      size_t have, size_t cap, bool *closed)
{
    uint64_t end = t_mono_ms() + 10000;
    while (len > 0 && !*closed) {
        T_CHECK(t_mono_ms() < end);
        ssize_t n = send(fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0) {
            data += n;
            len -= (size_t)n;
            continue;
        }
        T_CHECK(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR));
        t_turn(l, 1);
        have = hb_read(fd, into, have, cap, closed);
    }
    return have;
}

/* Runs the loop for ms (or until want bytes came, or a close), reading. */
static size_t hb_pump(ZCN_Loop *l, int fd, char *into, size_t have, size_t cap, size_t want,
                      int ms, bool *closed)
{
    uint64_t end = t_mono_ms() + (uint64_t)ms;
    while (have < want && !*closed && t_mono_ms() < end) {
        t_turn(l, 1);
        have = hb_read(fd, into, have, cap, closed);
    }
    return have;
}

static char hb_in[1 << 20];
static char hb_want[4 << 20];
static char hb_got[4 << 20];

/* The pipelined stream is sent while the test holds all but one of the
 * buffers the budget allows; once the demo answered (or tried to), the
 * test takes that last one too, so no send can succeed: the connection
 * must stay open, not aborted. Then the buffers come back and every
 * answer must arrive, in order, once, then the close the last request
 * asked for. */
static bool hb_fix_dates;
static void hb_date_fix(char *w, size_t want_len, const char *got, size_t have);

static void hb_run(bool http, const char *in, size_t in_len, char *want, size_t want_len,
                   const char *setup, const char *setup_answer)
{
    ZCN_Loop *l;
    ZCN_Demo *d = hb_start(&l, http);
    int fd = connect_to(zcn_demo_port(d));
    bool closed = false;
    size_t have = 0;
    uint64_t end = t_mono_ms() + 5000;
    while (hb_stats(d).connections == 0 && t_mono_ms() < end)
        t_turn(l, 1);
    T_CHECK(hb_stats(d).connections == 1);
    if (setup != NULL) {
        size_t n = strlen(setup_answer);
        have = hb_send(l, fd, setup, strlen(setup), hb_got, have, sizeof hb_got, &closed);
        have = hb_pump(l, fd, hb_got, have, sizeof hb_got, n, 5000, &closed);
        T_CHECK(have == n && memcmp(hb_got, setup_answer, n) == 0);
        have = 0;
    }

    uint8_t *held[HB_POOL];
    int n_held = hb_take_all(l, held, 0);
    T_CHECK(n_held > 1);
    T_CHECK_ERR(zcn_loop_release_buffer(l, held[--n_held]), ZCN_OK);
    uint64_t answered = hb_stats(d).requests;
    have = hb_send(l, fd, in, in_len, hb_got, have, sizeof hb_got, &closed);
    end = t_mono_ms() + 5000;
    while (hb_stats(d).requests == answered && !closed && t_mono_ms() < end) {
        t_turn(l, 1);
        have = hb_read(fd, hb_got, have, sizeof hb_got, &closed);
    }
    /* Every buffer that comes back between turns is taken too. */
    end = t_mono_ms() + 200;
    while (!closed && t_mono_ms() < end) {
        n_held = hb_take_all(l, held, n_held);
        t_turn(l, 1);
        have = hb_read(fd, hb_got, have, sizeof hb_got, &closed);
    }
    ZCN_DemoStats st = hb_stats(d);
    fprintf(stderr, "  %s: %zu of %zu bytes while %d buffers were held; closed %d, "
            "output_aborts %llu, output_holds %llu\n", http ? "http" : "resp", have, want_len,
            n_held, closed, (unsigned long long)st.output_aborts,
            (unsigned long long)st.output_holds);
    T_CHECK(!closed || have == want_len); /* closed only after the last answer */
    T_CHECK(st.output_aborts == 0);

    hb_release(l, held, n_held);
    have = hb_pump(l, fd, hb_got, have, sizeof hb_got, want_len + 1, 10000, &closed);
    if (hb_fix_dates)
        hb_date_fix(want, want_len, hb_got, have);
    if (have != want_len || memcmp(hb_got, want, want_len) != 0) {
        size_t i = 0;
        while (i < have && i < want_len && hb_got[i] == want[i])
            i++;
        fprintf(stderr, "  %s: %zu of %zu bytes, first difference at %zu\n",
                http ? "http" : "resp", have, want_len, i);
    }
    T_CHECK(have == want_len && memcmp(hb_got, want, want_len) == 0);
    T_CHECK(closed); /* the last request closes, after its answer */
    st = hb_stats(d);
    T_CHECK(st.output_aborts == 0 && st.hold_aborts == 0);
    T_CHECK(st.output_holds >= 1); /* the answers did wait for on_drain */
    close(fd);
    T_CHECK_ERR(zcn_demo_destroy(d), ZCN_OK);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
}

/* An answer as http_server.c builds it, with the Date the demo used (the
 * same in every answer, unless the second changed: then hb_date_fix). */
static size_t http_answer(char *out, const char *date, const char *connection)
{
    return (size_t)sprintf(out,
                           "HTTP/1.1 200 OK\r\nServer: zcn\r\nDate: %s\r\n"
                           "Content-Type: text/plain\r\nContent-Length: 13\r\n%s\r\n"
                           "Hello, world!",
                           date, connection);
}

/* The Date headers of got, copied into want (they are the only bytes that
 * may differ: the demo rebuilds its answers every second). */
static void hb_date_fix(char *w, size_t want_len, const char *got, size_t have)
{
    static const char tag[] = "\r\nDate: ";
    for (size_t i = 0; i + sizeof tag - 1 + 29 <= want_len && i + sizeof tag - 1 + 29 <= have;
         i++)
        if (memcmp(w + i, tag, sizeof tag - 1) == 0 && memcmp(got + i, tag, sizeof tag - 1) == 0)
            memcpy(w + i + sizeof tag - 1, got + i + sizeof tag - 1, 29);
}

static void test_http_answers_wait_for_buffers(void)
{
    static const char *const reqs[] = {
        "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        "POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    };
    static const char *const conns[] = {"", "Connection: keep-alive\r\n", ""};
    const char *date = "Thu, 01 Jan 1970 00:00:00 GMT"; /* replaced by what came */
    size_t in_len = 0, want_len = 0;
    for (int i = 0; i < 3000; i++) {
        int k = i % 7 == 3 ? 1 : i % 11 == 5 ? 2 : 0;
        in_len += (size_t)sprintf(hb_in + in_len, "%s", reqs[k]);
        want_len += http_answer(hb_want + want_len, date, conns[k]);
    }
    in_len += (size_t)sprintf(hb_in + in_len, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    want_len += http_answer(hb_want + want_len, date, "Connection: close\r\n");
    T_CHECK(in_len < sizeof hb_in && want_len < sizeof hb_want);
    hb_fix_dates = true;
    hb_run(true, hb_in, in_len, hb_want, want_len, NULL, NULL);
    hb_fix_dates = false;
}

#define BIG_VALUE 70000 /* over the demo's 64 KiB batch: sent on its own */

static void test_resp_answers_wait_for_buffers(void)
{
    static char value[BIG_VALUE + 1];
    for (int i = 0; i < BIG_VALUE; i++)
        value[i] = (char)('a' + i % 26);
    static char setup[BIG_VALUE + 64];
    sprintf(setup, "*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$%d\r\n%s\r\n", BIG_VALUE, value);
    size_t in_len = 0, want_len = 0;
    for (int i = 0; i < 2000; i++) {
        char msg[16];
        int m = sprintf(msg, "m%d", i);
        in_len += (size_t)sprintf(hb_in + in_len, "*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n");
        want_len += (size_t)sprintf(hb_want + want_len, ":%d\r\n", i + 1);
        in_len += (size_t)sprintf(hb_in + in_len, "*2\r\n$4\r\nECHO\r\n$%d\r\n%s\r\n", m, msg);
        want_len += (size_t)sprintf(hb_want + want_len, "$%d\r\n%s\r\n", m, msg);
        if (i % 13 == 0) {
            in_len += (size_t)sprintf(hb_in + in_len, "PING\r\n");
            want_len += (size_t)sprintf(hb_want + want_len, "+PONG\r\n");
        }
        if (i % 200 == 7) {
            in_len += (size_t)sprintf(hb_in + in_len, "*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n");
            want_len += (size_t)sprintf(hb_want + want_len, "$%d\r\n%s\r\n", BIG_VALUE, value);
        }
    }
    in_len += (size_t)sprintf(hb_in + in_len, "*1\r\n$4\r\nQUIT\r\n");
    want_len += (size_t)sprintf(hb_want + want_len, "+OK\r\n");
    T_CHECK(in_len < sizeof hb_in && want_len < sizeof hb_want);
    hb_run(false, hb_in, in_len, hb_want, want_len, setup, "+OK\r\n");
}

/* Destroyed while answers and input are held: on_close frees them (ASan's
 * leak check would say otherwise). */
static void test_destroy_while_held(void)
{
    ZCN_Loop *l;
    ZCN_Demo *d = hb_start(&l, true);
    int fd = connect_to(zcn_demo_port(d));
    bool closed = false;
    uint64_t end = t_mono_ms() + 5000;
    while (hb_stats(d).connections == 0 && t_mono_ms() < end)
        t_turn(l, 1);
    uint8_t *held[HB_POOL];
    int n_held = hb_take_all(l, held, 0);
    T_CHECK_ERR(zcn_loop_release_buffer(l, held[--n_held]), ZCN_OK);
    size_t in_len = 0;
    for (int i = 0; i < 2000; i++)
        in_len += (size_t)sprintf(hb_in + in_len, "GET / HTTP/1.1\r\n\r\n");
    hb_send(l, fd, hb_in, in_len, hb_got, 0, sizeof hb_got, &closed);
    end = t_mono_ms() + 5000;
    while (hb_stats(d).output_holds == 0 && t_mono_ms() < end)
        t_turn(l, 1);
    n_held = hb_take_all(l, held, n_held);
    t_turn(l, 1);
    T_CHECK(hb_stats(d).output_holds == 1 && hb_stats(d).connections == 1);
    hb_release(l, held, hb_take_all(l, held, n_held));
    T_CHECK_ERR(zcn_demo_destroy(d), ZCN_OK);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    close(fd);
}

int main(void)
{
    t_require_loop();
    ZCN_Error err = ZCN_OK;
    T_CHECK(zcn_demo_http_create(NULL, NULL, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(zcn_demo_resp_create(NULL, NULL, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK(zcn_demo_port(NULL) == 0);
    T_CHECK_ERR(zcn_demo_destroy(NULL), ZCN_ERR_INVALID_ARGUMENT);
    ZCN_DemoStats st;
    T_CHECK_ERR(zcn_demo_stats(NULL, &st), ZCN_ERR_INVALID_ARGUMENT);
    ZCN_Loop *l = zcn_loop_create(NULL, &err);
    T_CHECK(l != NULL);
    ZCN_DemoConfig over = {.keys_max = UINT32_MAX};
    T_CHECK(zcn_demo_resp_create(l, &over, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_INVALID_ARGUMENT);
    zcn_loop_destroy(l);

    test_http();
    test_resp();
    test_http_answers_wait_for_buffers();
    test_resp_answers_wait_for_buffers();
    test_destroy_while_held();
    return T_EXIT_PASS;
}
