/* The demo servers (zcn_demo_http_create, zcn_demo_resp_create): bad
 * arguments, then each server on a loop run by a thread while this thread
 * is the client over blocking sockets: pipelined requests, every split of
 * a request pair, malformed input (answered, then closed), the store's
 * limits, and destroy with connections still open (ASan/UBSan catch what
 * the parsers get wrong). */
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
    return T_EXIT_PASS;
}
