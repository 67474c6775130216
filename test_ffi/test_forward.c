/* zcn_loop_forward: a connection's deliveries gated on another's send
 * queue. Each case runs a loop with one listener; the test's own client
 * socket X connects to it (accepted as A), and A's on_accept connects out
 * (B) to a plain listener of the test, accepted as Y:
 *
 *     X --> A [loop] B --> Y
 *
 * Cases: a forwarding handler (on_data + zcn_loop_send) whose target never
 * reads gets no QUEUE_FULL, holds a bounded number of buffers, blocks the
 * client, and resumes when the target reads; AUTO keeps two 4 MiB streams
 * with random write and read sizes intact (callbacks and poll mode); data
 * and a FIN sent before the upstream is connected arrive, and the FIN
 * propagates both ways (half-close); closing one side ends the link, also
 * for a slot reused afterwards; a refused upstream ends it without losing
 * the deferred data; bad arguments. Single-threaded: the test's sockets are
 * non-blocking and the loop is pumped between their reads and writes. */
#include "t_helpers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define STREAM_BYTES (4u << 20)

/* ---- plain sockets -------------------------------------------------------- */

static void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    T_CHECK(fl >= 0 && fcntl(fd, F_SETFL, fl | O_NONBLOCK) == 0);
}

/* A plain listener on 127.0.0.1 (rcvbuf > 0: SO_RCVBUF of what it accepts). */
static int plain_listener(uint16_t *port, int rcvbuf)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    T_CHECK(fd >= 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (rcvbuf > 0)
        T_CHECK(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf) == 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    T_CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
    T_CHECK(listen(fd, 64) == 0);
    socklen_t len = sizeof a;
    T_CHECK(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
    *port = ntohs(a.sin_port);
    set_nonblock(fd);
    return fd;
}

/* A port nothing listens on (bound, then closed). */
static uint16_t dead_port(void)
{
    uint16_t port;
    int fd = plain_listener(&port, 0);
    close(fd);
    return port;
}

static int client_to(uint16_t port, int sndbuf)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    T_CHECK(fd >= 0);
    if (sndbuf > 0)
        T_CHECK(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf) == 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    T_CHECK(connect(fd, (struct sockaddr *)&a, sizeof a) == 0);
    set_nonblock(fd);
    return fd;
}

/* ---- the streams: byte i of stream `seed` is a function of both ----------- */

static uint8_t pat(uint64_t i, uint32_t seed)
{
    uint64_t x = (i >> 2) * 0x9E3779B97F4A7C15ull + seed;
    return (uint8_t)(x >> (56 - 8 * (i & 3)));
}

static uint32_t rng_state = 12345;
static uint32_t rnd(uint32_t n)
{
    rng_state = rng_state * 1103515245u + 12345u;
    return (rng_state >> 8) % n;
}

struct stream {
    uint32_t seed;
    uint64_t total;     /* bytes to write */
    uint64_t written, read;
    int eof;            /* the reader saw EOF */
    int bad;            /* a byte did not match */
};

/* Writes one piece of random size (1..max) if the socket takes it: the
 * bytes it took (0: it would block, or all is written). */
static size_t write_piece(int fd, struct stream *st, uint32_t max)
{
    static uint8_t buf[1 << 17];
    if (st->written >= st->total)
        return 0;
    uint64_t left = st->total - st->written;
    size_t n = 1 + rnd(max < sizeof buf ? max : (uint32_t)sizeof buf);
    if (n > left)
        n = (size_t)left;
    for (size_t i = 0; i < n; i++)
        buf[i] = pat(st->written + i, st->seed);
    ssize_t w = send(fd, buf, n, MSG_NOSIGNAL);
    if (w < 0) {
        T_CHECK(errno == EAGAIN || errno == EWOULDBLOCK);
        return 0;
    }
    st->written += (uint64_t)w;
    return (size_t)w;
}

/* Reads what is there in pieces of random size (1..max), checking each
 * byte: the bytes read. */
static size_t read_check(int fd, struct stream *st, uint32_t max)
{
    static uint8_t buf[1 << 17];
    size_t got = 0;
    for (;;) {
        size_t n = 1 + rnd(max < sizeof buf ? max : (uint32_t)sizeof buf);
        ssize_t r = recv(fd, buf, n, 0);
        if (r == 0) {
            st->eof = 1;
            return got;
        }
        if (r < 0) {
            T_CHECK(errno == EAGAIN || errno == EWOULDBLOCK);
            return got;
        }
        for (ssize_t i = 0; i < r; i++)
            if (buf[i] != pat(st->read + (uint64_t)i, st->seed))
                st->bad = 1;
        st->read += (uint64_t)r;
        got += (size_t)r;
    }
}

/* ---- the loop side ------------------------------------------------------- */

enum mode {
    MODE_HANDLER,   /* on_data forwards with zcn_loop_send, zcn_loop_forward gates */
    MODE_AUTO,      /* ZCN_FORWARD_AUTO both ways */
    MODE_AUTO_ONE,  /* ZCN_FORWARD_AUTO A -> B only */
    MODE_NONE,      /* accept only: no connect, no forward */
    MODE_SPLICE,    /* ZCN_FORWARD_AUTO | ZCN_FORWARD_SPLICE both ways */
    MODE_SPLICE_ONE, /* the same A -> B only */
};

struct fwd {
    ZCN_Loop *loop;
    ZCN_Server *srv;
    enum mode mode;
    uint16_t upstream_port;
    int half_close;
    int a, b;                   /* the accepted and the connected fd */
    int connect_calls;
    ZCN_Error connect_result;
    uint64_t data_a, data_b;    /* bytes on_data saw on each */
    int send_errors;
    ZCN_Error last_send_error;
    int closes_a, closes_b, eofs_a, eofs_b;
    uint8_t seen[64];           /* MODE_NONE: the first bytes on_data saw on a */
    size_t seen_n;
    uint64_t splicing_a, splicing_b; /* pumps that found a / b in splice mode */
};

static void on_connect(void *ud, int fd, ZCN_Error result)
{
    struct fwd *f = ud;
    T_CHECK(fd == f->b);
    f->connect_calls++;
    f->connect_result = result;
}

static void on_data(void *ud, int fd, const uint8_t *data, size_t len)
{
    struct fwd *f = ud;
    if (fd == f->a) {
        f->data_a += len;
        for (size_t i = 0; i < len && f->seen_n < sizeof f->seen; i++)
            f->seen[f->seen_n++] = data[i];
    } else {
        T_CHECK(fd == f->b);
        f->data_b += len;
    }
    if (f->mode != MODE_HANDLER || fd != f->a)
        return;
    ZCN_Error err = zcn_loop_send(f->loop, f->b, data, len);
    if (err != ZCN_OK) {
        f->send_errors++;
        f->last_send_error = err;
    }
}

static void on_eof(void *ud, int fd)
{
    struct fwd *f = ud;
    if (fd == f->a)
        f->eofs_a++;
    else
        f->eofs_b++;
}

static void on_close(void *ud, int fd)
{
    struct fwd *f = ud;
    if (fd == f->a)
        f->closes_a++;
    else if (fd == f->b)
        f->closes_b++;
}

static void on_accept(void *ud, int fd)
{
    struct fwd *f = ud;
    if (f->mode == MODE_NONE) {
        f->a = fd;
        return;
    }
    if (f->a >= 0) /* a later connection (slot reuse case): left alone */
        return;
    f->a = fd;
    ZCN_ConnectConfig cc = {
        .address = "127.0.0.1",
        .port = f->upstream_port,
        .timeout_ms = 1000,
        .flags = f->half_close ? ZCN_SERVER_HALF_CLOSE : 0,
        .user_data = f,
        .on_connect = on_connect,
        .on_data = on_data,
        .on_eof = f->half_close ? on_eof : NULL,
        .on_close = on_close,
    };
    T_CHECK_ERR(zcn_loop_connect(f->loop, &cc, &f->b), ZCN_OK);
    uint32_t flags = f->mode == MODE_HANDLER ? 0 : ZCN_FORWARD_AUTO;
    if (f->mode == MODE_SPLICE || f->mode == MODE_SPLICE_ONE)
        flags |= ZCN_FORWARD_SPLICE;
    /* b is still connecting: a's receive starts paused. */
    T_CHECK_ERR(zcn_loop_forward(f->loop, f->a, f->b, flags), ZCN_OK);
    if (f->mode == MODE_AUTO || f->mode == MODE_SPLICE)
        T_CHECK_ERR(zcn_loop_forward(f->loop, f->b, f->a, flags), ZCN_OK);
}

static void setup(struct fwd *f, enum mode mode, const ZCN_LoopConfig *lc, int half_close,
                  uint16_t upstream_port)
{
    memset(f, 0, sizeof *f);
    f->a = f->b = -1;
    f->mode = mode;
    f->half_close = half_close;
    f->upstream_port = upstream_port;
    ZCN_Error err = ZCN_OK;
    f->loop = zcn_loop_create(lc, &err);
    if (f->loop == NULL && (err == ZCN_ERR_URING_DISABLED || err == ZCN_ERR_URING_BLOCKED ||
                            err == ZCN_ERR_URING_UNSUPPORTED || err == ZCN_ERR_MEMLOCK)) {
        fprintf(stderr, "SKIP: %s (%s)\n", zcn_error_name(err), zcn_error_detail());
        exit(T_EXIT_SKIP);
    }
    T_CHECK_ERR(err, ZCN_OK);
    ZCN_Config cfg = {.address = "127.0.0.1", .flags = half_close ? ZCN_SERVER_HALF_CLOSE : 0};
    f->srv = zcn_server_create_on(f->loop, &cfg, &err);
    T_CHECK_ERR(err, ZCN_OK);
    T_CHECK_ERR(zcn_server_set_callbacks(f->srv, f, on_accept, on_data, on_close), ZCN_OK);
    if (half_close)
        T_CHECK_ERR(zcn_server_set_eof_callback(f->srv, on_eof), ZCN_OK);
    T_CHECK_ERR(zcn_server_start(f->srv), ZCN_OK);
}

static void teardown(struct fwd *f)
{
    T_CHECK_ERR(zcn_loop_destroy(f->loop), ZCN_OK);
}

static void note_splicing(struct fwd *f)
{
    ZCN_ConnInfo ci;
    if (f->a >= 0 && zcn_loop_conn_info(f->loop, f->a, &ci) == ZCN_OK &&
        (ci.flags & ZCN_CONN_SPLICING))
        f->splicing_a++;
    if (f->b >= 0 && zcn_loop_conn_info(f->loop, f->b, &ci) == ZCN_OK &&
        (ci.flags & ZCN_CONN_SPLICING))
        f->splicing_b++;
}

static void pump(struct fwd *f, int ms)
{
    ZCN_Error err = zcn_loop_run_once_timeout(f->loop, ms, NULL);
    T_CHECK(err == ZCN_OK || err == ZCN_ERR_TIMEOUT);
    note_splicing(f);
}

/* Pumps until the test's listener has the loop's outbound connection. */
static int accept_upstream(struct fwd *f, int lfd)
{
    for (int i = 0; i < 500; i++) {
        int y = accept(lfd, NULL, NULL);
        if (y >= 0) {
            set_nonblock(y);
            return y;
        }
        T_CHECK(errno == EAGAIN || errno == EWOULDBLOCK);
        pump(f, 10);
    }
    fprintf(stderr, "the loop never connected to the upstream\n");
    exit(T_EXIT_FAIL);
}

static uint64_t held_now(ZCN_Loop *l)
{
    ZCN_LoopStats st;
    T_CHECK_ERR(zcn_loop_stats(l, &st), ZCN_OK);
    return st.tcp.buffers_held;
}

/* ---- 1. a handler forwarding to a target that does not read -------------- */

static void test_handler_backpressure(void)
{
    ZCN_LoopConfig lc = {.buffer_pool_size = 256, .send_queue_max_bytes = 256 << 10};
    uint16_t up_port;
    int lfd = plain_listener(&up_port, 4096);
    struct fwd f;
    setup(&f, MODE_HANDLER, &lc, 0, up_port);
    int x = client_to(zcn_server_port(f.srv), 0);
    int y = accept_upstream(&f, lfd);
    T_CHECK(f.connect_calls == 1 && f.connect_result == ZCN_OK);

    /* Y does not read: X writes until the whole path is full and its
     * writes stay blocked. */
    struct stream st = {.seed = 7, .total = UINT64_MAX};
    uint64_t max_held = 0;
    int blocked = 0;
    for (int i = 0; i < 5000 && blocked < 100; i++) {
        size_t w = 0;
        for (int k = 0; k < 8; k++)
            w += write_piece(x, &st, 65536);
        blocked = w == 0 ? blocked + 1 : 0;
        pump(&f, w == 0 ? 5 : 0);
        uint64_t h = held_now(f.loop);
        if (h > max_held)
            max_held = h;
    }
    T_CHECK(blocked >= 100); /* the client is held back, not buffered without end */
    ZCN_ConnInfo ia, ib;
    T_CHECK_ERR(zcn_loop_conn_info(f.loop, f.a, &ia), ZCN_OK);
    T_CHECK_ERR(zcn_loop_conn_info(f.loop, f.b, &ib), ZCN_OK);
    T_CHECK(ia.flags & ZCN_CONN_FORWARDING);
    T_CHECK(ia.flags & ZCN_CONN_PAUSED);
    T_CHECK(!(ib.flags & ZCN_CONN_FORWARDING));
    T_CHECK(ib.queued_bytes <= (256u << 10));
    T_CHECK(ib.queued_bytes >= (128u << 10)); /* the queue was used, then the gate shut */
    fprintf(stderr, "handler: %llu bytes written before blocking, at most %llu buffers held "
            "(cap %u), b queued %llu\n", (unsigned long long)st.written,
            (unsigned long long)max_held, ia.buffer_cap, (unsigned long long)ib.queued_bytes);
    T_CHECK(max_held <= (uint64_t)ia.buffer_cap + 4);
    T_CHECK(f.send_errors == 0);
    ZCN_LoopStats ls;
    T_CHECK_ERR(zcn_loop_stats(f.loop, &ls), ZCN_OK);
    T_CHECK(ls.tcp.send_queue_full_events == 0);

    /* Y reads: A resumes, and 2 MiB more go through intact. */
    st.total = st.written + (2u << 20);
    struct stream rd = {.seed = 7};
    for (int i = 0; i < 20000 && rd.read < st.total; i++) {
        write_piece(x, &st, 65536);
        pump(&f, 0);
        if (read_check(y, &rd, 65536) == 0)
            pump(&f, 1);
    }
    T_CHECK(rd.read == st.total && !rd.bad);
    T_CHECK(f.send_errors == 0);
    T_CHECK(f.data_a == st.total);
    close(x);
    close(y);
    close(lfd);
    for (int i = 0; i < 200 && (f.closes_a == 0 || f.closes_b == 0); i++)
        pump(&f, 5);
    T_CHECK(f.closes_a == 1 && f.closes_b == 1);
    T_CHECK(held_now(f.loop) == 0);
    teardown(&f);
}

/* ---- 2. AUTO both ways: two streams with random sizes --------------------- */

static void run_streams(struct fwd *f, int x, int y, uint64_t bytes, int poll_mode);

static void test_auto_integrity(void)
{
    ZCN_LoopConfig lc = {.buffer_pool_size = 512, .send_queue_max_bytes = 512 << 10};
    uint16_t up_port;
    int lfd = plain_listener(&up_port, 0);
    struct fwd f;
    setup(&f, MODE_AUTO, &lc, 1, up_port);
    int x = client_to(zcn_server_port(f.srv), 0);
    int y = accept_upstream(&f, lfd);
    run_streams(&f, x, y, STREAM_BYTES, 0);
    T_CHECK(f.data_a == 0 && f.data_b == 0); /* AUTO: no on_data */
    T_CHECK(f.closes_a == 1 && f.closes_b == 1);
    T_CHECK(f.eofs_a == 1 && f.eofs_b == 1); /* on_eof still told */
    ZCN_LoopStats ls;
    T_CHECK_ERR(zcn_loop_stats(f.loop, &ls), ZCN_OK);
    T_CHECK(ls.tcp.send_queue_full_events == 0);
    T_CHECK(ls.tcp.connections_active == 0);
    T_CHECK(ls.tcp.buffers_held == 0);
    close(x);
    close(y);
    close(lfd);
    teardown(&f);
}

/* X -> Y and Y -> X at once, random write and read sizes, the reader
 * sometimes pausing; then X's FIN must reach Y after the last byte and
 * Y's reach X, and both connections close on their own (half-close). */
static void run_streams(struct fwd *f, int x, int y, uint64_t bytes, int poll_mode)
{
    struct stream up = {.seed = 1, .total = bytes}, upr = {.seed = 1};
    struct stream down = {.seed = 2, .total = bytes}, downr = {.seed = 2};
    int x_shut = 0, y_shut = 0;
    ZCN_Event ev[64];
    uint64_t deadline = t_mono_ms() + 60000;
    while (!(upr.eof && downr.eof) && t_mono_ms() < deadline) {
        uint32_t max = rnd(4) == 0 ? 256 : 70000;
        write_piece(x, &up, max);
        write_piece(y, &down, max);
        if (!x_shut && up.written == up.total) {
            T_CHECK(shutdown(x, SHUT_WR) == 0);
            x_shut = 1;
        }
        if (!y_shut && down.written == down.total) {
            T_CHECK(shutdown(y, SHUT_WR) == 0);
            y_shut = 1;
        }
        if (poll_mode) {
            uint32_t n = 0;
            ZCN_Error err = zcn_loop_poll(f->loop, ev, 64, 1, &n);
            T_CHECK(err == ZCN_OK || err == ZCN_ERR_TIMEOUT);
            note_splicing(f);
            for (uint32_t i = 0; i < n; i++) {
                T_CHECK(ev[i].type != ZCN_EVENT_DATA);
                if (ev[i].type == ZCN_EVENT_CLOSE)
                    on_close(f, ev[i].fd);
                else if (ev[i].type == ZCN_EVENT_EOF)
                    on_eof(f, ev[i].fd);
            }
        } else {
            pump(f, 1);
        }
        /* A slow reader now and then: the gates must hold the writer. */
        if (rnd(8) != 0)
            read_check(y, &upr, 1 + rnd(2) * 65536);
        if (rnd(8) != 0)
            read_check(x, &downr, 1 + rnd(2) * 65536);
    }
    T_CHECK(!upr.bad && !downr.bad);
    T_CHECK(upr.read == bytes && downr.read == bytes);
    T_CHECK(upr.eof && downr.eof);
    for (int i = 0; i < 200 && (f->closes_a == 0 || f->closes_b == 0); i++) {
        if (poll_mode) {
            uint32_t n = 0;
            zcn_loop_poll(f->loop, ev, 64, 5, &n);
            for (uint32_t k = 0; k < n; k++)
                if (ev[k].type == ZCN_EVENT_CLOSE)
                    on_close(f, ev[k].fd);
                else if (ev[k].type == ZCN_EVENT_EOF)
                    on_eof(f, ev[k].fd);
        } else {
            pump(f, 5);
        }
    }
}

/* ---- 3. poll mode: the same with events ------------------------------------ */

static void auto_poll_mode(uint32_t fwd_flags, uint64_t bytes)
{
    ZCN_LoopConfig lc = {.buffer_pool_size = 256, .send_queue_max_bytes = 256 << 10};
    uint16_t up_port;
    int lfd = plain_listener(&up_port, 0);
    ZCN_Error err = ZCN_OK;
    struct fwd f;
    memset(&f, 0, sizeof f);
    f.a = f.b = -1;
    f.loop = zcn_loop_create(&lc, &err);
    T_CHECK_ERR(err, ZCN_OK);
    ZCN_Config cfg = {.address = "127.0.0.1", .flags = ZCN_SERVER_HALF_CLOSE};
    f.srv = zcn_server_create_on(f.loop, &cfg, &err);
    T_CHECK_ERR(err, ZCN_OK);
    T_CHECK_ERR(zcn_server_start(f.srv), ZCN_OK);
    int x = client_to(zcn_server_port(f.srv), 0);
    ZCN_Event ev[16];
    int connected = 0;
    for (int i = 0; i < 500 && !connected; i++) {
        uint32_t n = 0;
        err = zcn_loop_poll(f.loop, ev, 16, 10, &n);
        T_CHECK(err == ZCN_OK || err == ZCN_ERR_TIMEOUT);
        for (uint32_t k = 0; k < n; k++) {
            if (ev[k].type == ZCN_EVENT_ACCEPT) {
                f.a = ev[k].fd;
                ZCN_ConnectConfig cc = {.address = "127.0.0.1", .port = up_port,
                                        .timeout_ms = 1000, .flags = ZCN_SERVER_HALF_CLOSE};
                T_CHECK_ERR(zcn_loop_connect(f.loop, &cc, &f.b), ZCN_OK);
                T_CHECK_ERR(zcn_loop_forward(f.loop, f.a, f.b, fwd_flags), ZCN_OK);
                T_CHECK_ERR(zcn_loop_forward(f.loop, f.b, f.a, fwd_flags), ZCN_OK);
            } else if (ev[k].type == ZCN_EVENT_CONNECT) {
                T_CHECK(ev[k].fd == f.b && ev[k].offset == 0);
                connected = 1;
            }
        }
    }
    T_CHECK(connected);
    int y = -1;
    for (int i = 0; i < 100 && y < 0; i++) {
        y = accept(lfd, NULL, NULL);
        if (y < 0)
            usleep(1000);
    }
    T_CHECK(y >= 0);
    set_nonblock(y);
    run_streams(&f, x, y, bytes, 1);
    T_CHECK(f.closes_a == 1 && f.closes_b == 1);
    T_CHECK(f.eofs_a == 1 && f.eofs_b == 1);
    if (fwd_flags & ZCN_FORWARD_SPLICE)
        T_CHECK(f.splicing_a > 0 && f.splicing_b > 0);
    close(x);
    close(y);
    close(lfd);
    teardown(&f);
}

static void test_auto_poll_mode(void)
{
    auto_poll_mode(ZCN_FORWARD_AUTO, 1u << 20);
}

static void test_splice_poll_mode(void)
{
    auto_poll_mode(ZCN_FORWARD_AUTO | ZCN_FORWARD_SPLICE, 8u << 20);
}

/* ---- 4. data and FIN before the upstream is connected; half-close --------- */

static void test_early_data_and_eof(void)
{
    uint16_t up_port;
    int lfd = plain_listener(&up_port, 0);
    struct fwd f;
    setup(&f, MODE_AUTO, NULL, 1, up_port);
    /* Written and shut before the loop has even accepted: A exists, B is
     * connecting, A's receive must wait for B. */
    int x = client_to(zcn_server_port(f.srv), 0);
    const char req[] = "hi\n";
    T_CHECK(send(x, req, 3, 0) == 3);
    T_CHECK(shutdown(x, SHUT_WR) == 0);
    int y = accept_upstream(&f, lfd);
    /* The upstream answers only after EOF: it reads everything first. */
    char buf[64];
    size_t got = 0;
    int eof = 0;
    for (int i = 0; i < 500 && !eof; i++) {
        ssize_t r = recv(y, buf + got, sizeof buf - got, 0);
        if (r == 0)
            eof = 1;
        else if (r > 0)
            got += (size_t)r;
        else
            pump(&f, 5);
    }
    T_CHECK(eof && got == 3 && memcmp(buf, req, 3) == 0);
    T_CHECK(f.eofs_a == 1 && f.closes_a == 0); /* A stays open for the answer */
    const char ans[] = "late answer\n";
    T_CHECK(send(y, ans, sizeof ans - 1, 0) == (ssize_t)(sizeof ans - 1));
    close(y);
    got = 0;
    eof = 0;
    for (int i = 0; i < 500 && !eof; i++) {
        ssize_t r = recv(x, buf + got, sizeof buf - got, 0);
        if (r == 0)
            eof = 1;
        else if (r > 0)
            got += (size_t)r;
        else
            pump(&f, 5);
    }
    T_CHECK(eof && got == sizeof ans - 1 && memcmp(buf, ans, got) == 0);
    for (int i = 0; i < 200 && (f.closes_a == 0 || f.closes_b == 0); i++)
        pump(&f, 5);
    T_CHECK(f.closes_a == 1 && f.closes_b == 1);
    close(x);
    close(lfd);
    teardown(&f);
}

/* ---- 5. a close ends the link; a reused slot is not followed -------------- */

static int read_all_now(int fd, char *buf, size_t cap, struct fwd *f, size_t want)
{
    size_t got = 0;
    for (int i = 0; i < 300 && got < want; i++) {
        ssize_t r = recv(fd, buf + got, cap - got, 0);
        if (r > 0)
            got += (size_t)r;
        else
            pump(f, 5);
    }
    return (int)got;
}

static void test_close_ends_link(void)
{
    uint16_t up_port;
    int lfd = plain_listener(&up_port, 0);
    struct fwd f;
    setup(&f, MODE_AUTO_ONE, NULL, 0, up_port);
    int x = client_to(zcn_server_port(f.srv), 0);
    int y = accept_upstream(&f, lfd);
    char buf[64];
    T_CHECK(send(x, "abc", 3, 0) == 3);
    T_CHECK(read_all_now(y, buf, sizeof buf, &f, 3) == 3 && memcmp(buf, "abc", 3) == 0);
    T_CHECK(f.data_a == 0);

    /* Y goes: B (not in half-close mode) closes at its EOF, which ends A's
     * forwarding; A's data now goes to its own on_data. */
    close(y);
    for (int i = 0; i < 200 && f.closes_b == 0; i++)
        pump(&f, 5);
    T_CHECK(f.closes_b == 1);
    ZCN_ConnInfo ia;
    T_CHECK_ERR(zcn_loop_conn_info(f.loop, f.a, &ia), ZCN_OK);
    T_CHECK(!(ia.flags & ZCN_CONN_FORWARDING));
    T_CHECK(send(x, "def", 3, 0) == 3);
    for (int i = 0; i < 200 && f.data_a < 3; i++)
        pump(&f, 5);
    T_CHECK(f.data_a == 3 && memcmp(f.seen, "def", 3) == 0);

    /* A new connection takes B's slot (freed slots are reused first): A
     * must not forward to it. */
    int old_a = f.a;
    int x2 = client_to(zcn_server_port(f.srv), 0);
    for (int i = 0; i < 200; i++) {
        ZCN_LoopStats ls;
        T_CHECK_ERR(zcn_loop_stats(f.loop, &ls), ZCN_OK);
        if (ls.tcp.connections_active == 2)
            break;
        pump(&f, 5);
    }
    T_CHECK(f.a == old_a);
    T_CHECK(send(x, "ghi", 3, 0) == 3);
    for (int i = 0; i < 200 && f.data_a < 6; i++)
        pump(&f, 5);
    T_CHECK(f.data_a == 6 && memcmp(f.seen, "defghi", 6) == 0);
    for (int i = 0; i < 20; i++)
        pump(&f, 1);
    T_CHECK(recv(x2, buf, sizeof buf, 0) < 0 && errno == EAGAIN);

    close(x2);
    close(x);
    close(lfd);
    teardown(&f);
}

static void test_forward_off(void)
{
    uint16_t up_port;
    int lfd = plain_listener(&up_port, 0);
    struct fwd f;
    setup(&f, MODE_AUTO_ONE, NULL, 0, up_port);
    int x = client_to(zcn_server_port(f.srv), 0);
    int y = accept_upstream(&f, lfd);
    char buf[64];
    T_CHECK(send(x, "abc", 3, 0) == 3);
    T_CHECK(read_all_now(y, buf, sizeof buf, &f, 3) == 3);
    T_CHECK_ERR(zcn_loop_forward(f.loop, f.a, -1, 0), ZCN_OK);
    T_CHECK_ERR(zcn_loop_forward(f.loop, f.a, -1, 0), ZCN_OK); /* again: nothing to end */
    T_CHECK(send(x, "xyz", 3, 0) == 3);
    for (int i = 0; i < 200 && f.data_a < 3; i++)
        pump(&f, 5);
    T_CHECK(f.data_a == 3 && memcmp(f.seen, "xyz", 3) == 0);
    /* And back on: a new target for the same fd. */
    T_CHECK_ERR(zcn_loop_forward(f.loop, f.a, f.b, ZCN_FORWARD_AUTO), ZCN_OK);
    T_CHECK(send(x, "123", 3, 0) == 3);
    T_CHECK(read_all_now(y, buf, sizeof buf, &f, 3) == 3 && memcmp(buf, "123", 3) == 0);
    T_CHECK(f.data_a == 3);
    close(x);
    close(y);
    close(lfd);
    teardown(&f);
}

/* ---- 6. a refused upstream: the link goes, no data is lost ---------------- */

static void test_refused_upstream(void)
{
    struct fwd f;
    setup(&f, MODE_AUTO_ONE, NULL, 0, dead_port());
    int x = client_to(zcn_server_port(f.srv), 0);
    T_CHECK(send(x, "early", 5, 0) == 5);
    for (int i = 0; i < 200 && f.connect_calls == 0; i++)
        pump(&f, 5);
    T_CHECK(f.connect_calls == 1 && f.connect_result == (ZCN_Error)ECONNREFUSED);
    /* The deferred bytes are A's handler's now. */
    for (int i = 0; i < 200 && f.data_a < 5; i++)
        pump(&f, 5);
    T_CHECK(f.data_a == 5 && memcmp(f.seen, "early", 5) == 0);
    ZCN_ConnInfo ia;
    T_CHECK_ERR(zcn_loop_conn_info(f.loop, f.a, &ia), ZCN_OK);
    T_CHECK(!(ia.flags & ZCN_CONN_FORWARDING));
    close(x);
    teardown(&f);
}

/* ---- 7. bad arguments ------------------------------------------------------- */

static void test_errors(void)
{
    uint16_t up_port;
    int lfd = plain_listener(&up_port, 0);
    struct fwd f;
    setup(&f, MODE_NONE, NULL, 0, up_port);
    int x1 = client_to(zcn_server_port(f.srv), 0);
    for (int i = 0; i < 200 && f.a < 0; i++)
        pump(&f, 5);
    int a1 = f.a;
    f.a = -1;
    int x2 = client_to(zcn_server_port(f.srv), 0);
    for (int i = 0; i < 200 && f.a < 0; i++)
        pump(&f, 5);
    int a2 = f.a;
    f.a = -1;
    int x3 = client_to(zcn_server_port(f.srv), 0);
    for (int i = 0; i < 200 && f.a < 0; i++)
        pump(&f, 5);
    int a3 = f.a;
    T_CHECK(a1 >= 0 && a2 >= 0 && a3 >= 0);

    T_CHECK_ERR(zcn_loop_forward(NULL, a1, a2, 0), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_forward(f.loop, a1, a2, 0x80), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_forward(f.loop, a1, a2, ZCN_FORWARD_SPLICE), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_forward(f.loop, a1, a1, 0), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_forward(f.loop, a1, -2, 0), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_loop_forward(f.loop, 99999, a2, 0), ZCN_ERR_CLOSED);
    T_CHECK_ERR(zcn_loop_forward(f.loop, a1, lfd, 0), ZCN_ERR_CLOSED); /* not the loop's */
    T_CHECK_ERR(zcn_loop_forward(f.loop, a1, a2, 0), ZCN_OK);
    T_CHECK_ERR(zcn_loop_forward(f.loop, a1, a2, ZCN_FORWARD_AUTO), ZCN_OK); /* new flags */
    T_CHECK_ERR(zcn_loop_forward(f.loop, a3, a2, 0), ZCN_ERR_BUSY); /* a2 has a forwarder */
    T_CHECK_ERR(zcn_loop_forward(f.loop, a2, a1, 0), ZCN_OK);       /* the other way is fine */
    T_CHECK_ERR(zcn_loop_forward(f.loop, a1, a3, 0), ZCN_OK);       /* a1 moves to a3 */
    T_CHECK_ERR(zcn_loop_forward(f.loop, a3, a2, ZCN_FORWARD_AUTO), ZCN_OK); /* a2 is free */
    ZCN_ConnInfo info;
    T_CHECK_ERR(zcn_loop_conn_info(f.loop, a1, &info), ZCN_OK);
    T_CHECK(info.flags & ZCN_CONN_FORWARDING);
    T_CHECK_ERR(zcn_loop_close(f.loop, a1), ZCN_OK);
    T_CHECK_ERR(zcn_loop_forward(f.loop, a1, a2, 0), ZCN_ERR_CLOSED); /* closing */
    T_CHECK_ERR(zcn_loop_forward(f.loop, a2, a1, 0), ZCN_ERR_CLOSED);
    T_CHECK_ERR(zcn_loop_conn_info(f.loop, a2, &info), ZCN_OK);
    T_CHECK(!(info.flags & ZCN_CONN_FORWARDING)); /* a2 -> a1 ended with a1's close */
    close(x1);
    close(x2);
    close(x3);
    close(lfd);
    teardown(&f);
}

/* ---- 8. splice mode (ZCN_FORWARD_SPLICE) and the per-size switch ---------- */

/* 8 MiB each way through the pipes, random write and read sizes, the FIN
 * passed on both ways after the last byte (half-close), no pool buffer
 * held at the end, and the directions were in splice mode. */
static void test_splice_integrity(void)
{
    ZCN_LoopConfig lc = {.buffer_pool_size = 256, .send_queue_max_bytes = 256 << 10};
    uint16_t up_port;
    int lfd = plain_listener(&up_port, 0);
    struct fwd f;
    setup(&f, MODE_SPLICE, &lc, 1, up_port);
    int x = client_to(zcn_server_port(f.srv), 0);
    int y = accept_upstream(&f, lfd);
    run_streams(&f, x, y, 8u << 20, 0);
    T_CHECK(f.data_a == 0 && f.data_b == 0);
    T_CHECK(f.closes_a == 1 && f.closes_b == 1);
    T_CHECK(f.eofs_a == 1 && f.eofs_b == 1);
    T_CHECK(f.splicing_a > 0 && f.splicing_b > 0);
    ZCN_LoopStats ls;
    T_CHECK_ERR(zcn_loop_stats(f.loop, &ls), ZCN_OK);
    T_CHECK(ls.tcp.connections_active == 0);
    T_CHECK(ls.tcp.buffers_held == 0);
    T_CHECK(ls.tcp.bytes_received >= (16u << 20) && ls.tcp.bytes_sent >= (16u << 20));
    close(x);
    close(y);
    close(lfd);
    teardown(&f);
}

/* A small exchange then the client's FIN: it reaches the upstream after the
 * data, A stays open for the answer (half-close), which comes back and is
 * followed by the upstream's FIN. */
static void test_splice_early_data_and_eof(void)
{
    uint16_t up_port;
    int lfd = plain_listener(&up_port, 0);
    struct fwd f;
    setup(&f, MODE_SPLICE, NULL, 1, up_port);
    int x = client_to(zcn_server_port(f.srv), 0);
    int y = accept_upstream(&f, lfd);
    for (int i = 0; i < 50 && f.splicing_a == 0; i++)
        pump(&f, 2);
    T_CHECK(f.splicing_a > 0); /* nothing in between: splice mode at once */
    T_CHECK(send(x, "hello", 5, 0) == 5);
    T_CHECK(shutdown(x, SHUT_WR) == 0);
    char buf[64];
    size_t got = 0;
    int eof = 0;
    for (int i = 0; i < 500 && !eof; i++) {
        ssize_t r = recv(y, buf + got, sizeof buf - got, 0);
        if (r == 0)
            eof = 1;
        else if (r > 0)
            got += (size_t)r;
        else
            pump(&f, 5);
    }
    T_CHECK(eof && got == 5 && memcmp(buf, "hello", 5) == 0);
    for (int i = 0; i < 20; i++)
        pump(&f, 1);
    T_CHECK(f.eofs_a == 1 && f.closes_a == 0);
    T_CHECK(send(y, "answer", 6, 0) == 6);
    T_CHECK(shutdown(y, SHUT_WR) == 0);
    got = 0;
    eof = 0;
    for (int i = 0; i < 500 && !eof; i++) {
        ssize_t r = recv(x, buf + got, sizeof buf - got, 0);
        if (r == 0)
            eof = 1;
        else if (r > 0)
            got += (size_t)r;
        else
            pump(&f, 5);
    }
    T_CHECK(eof && got == 6 && memcmp(buf, "answer", 6) == 0);
    for (int i = 0; i < 200 && (f.closes_a == 0 || f.closes_b == 0); i++)
        pump(&f, 5);
    T_CHECK(f.closes_a == 1 && f.closes_b == 1);
    close(x);
    close(y);
    close(lfd);
    teardown(&f);
}

/* A target that does not read: the client is blocked, the loop holds no
 * pool buffer and at most the pipe (1 MiB) between A's receive and B's
 * send; when the target reads, everything arrives intact. */
static void test_splice_backpressure(void)
{
    uint16_t up_port;
    int lfd = plain_listener(&up_port, 64 << 10);
    struct fwd f;
    setup(&f, MODE_SPLICE_ONE, NULL, 0, up_port);
    int x = client_to(zcn_server_port(f.srv), 64 << 10);
    int y = accept_upstream(&f, lfd);
    struct stream up = {.seed = 7, .total = 32u << 20}, upr = {.seed = 7};
    uint64_t last = t_mono_ms();
    uint64_t stop = last + 10000;
    while (t_mono_ms() - last < 300 && t_mono_ms() < stop) {
        if (write_piece(x, &up, 65536) > 0)
            last = t_mono_ms();
        pump(&f, 1);
    }
    T_CHECK(up.written < up.total); /* blocked */
    T_CHECK(held_now(f.loop) == 0);
    ZCN_ConnInfo ia, ib;
    T_CHECK_ERR(zcn_loop_conn_info(f.loop, f.a, &ia), ZCN_OK);
    T_CHECK_ERR(zcn_loop_conn_info(f.loop, f.b, &ib), ZCN_OK);
    T_CHECK(ia.flags & ZCN_CONN_SPLICING);
    T_CHECK(ia.flags & ZCN_CONN_PAUSED); /* waits for the target, not reading */
    T_CHECK(ia.bytes_received - ib.bytes_sent <= (1u << 20));
    T_CHECK(ia.buffers_held == 0 && ib.queued_bytes == 0);
    ZCN_LoopStats ls;
    T_CHECK_ERR(zcn_loop_stats(f.loop, &ls), ZCN_OK);
    T_CHECK(ls.tcp.buffers_in_use <= 1);
    /* The target reads: all of it arrives, the client's writes go on. */
    uint64_t deadline = t_mono_ms() + 30000;
    while (!upr.eof && t_mono_ms() < deadline) {
        write_piece(x, &up, 65536);
        if (up.written == up.total && up.total != 0) {
            shutdown(x, SHUT_WR);
            up.total = 0; /* shut once */
        }
        pump(&f, 1);
        read_check(y, &upr, 65536);
    }
    T_CHECK(!upr.bad && upr.eof && upr.read == (32u << 20));
    close(x);
    close(y);
    close(lfd);
    teardown(&f);
}

/* The client resets mid-stream: both connections end. */
static void test_splice_reset(void)
{
    uint16_t up_port;
    int lfd = plain_listener(&up_port, 0);
    struct fwd f;
    setup(&f, MODE_SPLICE, NULL, 0, up_port);
    int x = client_to(zcn_server_port(f.srv), 0);
    int y = accept_upstream(&f, lfd);
    struct stream up = {.seed = 3, .total = 64u << 20}, upr = {.seed = 3};
    for (int i = 0; i < 200; i++) {
        write_piece(x, &up, 65536);
        pump(&f, 1);
        if (i < 100)
            read_check(y, &upr, 65536);
    }
    T_CHECK(f.splicing_a > 0 && !upr.bad);
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    T_CHECK(setsockopt(x, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0);
    close(x);
    int y_end = 0; /* y sees the reset passed on (or EOF) */
    for (int i = 0; i < 400 && (f.closes_a == 0 || f.closes_b == 0 || !y_end); i++) {
        pump(&f, 5);
        static char sink[65536];
        ssize_t r = recv(y, sink, sizeof sink, MSG_DONTWAIT);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
            y_end = 1;
    }
    T_CHECK(f.closes_a == 1 && f.closes_b == 1 && y_end);
    ZCN_LoopStats ls;
    T_CHECK_ERR(zcn_loop_stats(f.loop, &ls), ZCN_OK);
    T_CHECK(ls.tcp.connections_active == 0 && ls.tcp.buffers_held == 0);
    close(y);
    close(lfd);
    teardown(&f);
}

/* Streams both ways, then: zcn_loop_close(a) (mode 0) or the loop destroyed
 * (mode 1) while splicing; nothing leaks (fds: the pipes closed). */
static void splice_cut(int destroy)
{
    int fds0 = t_open_fds();
    uint16_t up_port;
    int lfd = plain_listener(&up_port, 64 << 10);
    struct fwd f;
    setup(&f, MODE_SPLICE, NULL, 0, up_port);
    int x = client_to(zcn_server_port(f.srv), 0);
    int y = accept_upstream(&f, lfd);
    struct stream up = {.seed = 4, .total = 64u << 20}, upr = {.seed = 4};
    struct stream down = {.seed = 5, .total = 64u << 20}, downr = {.seed = 5};
    for (int i = 0; i < 300; i++) {
        write_piece(x, &up, 65536);
        write_piece(y, &down, 65536);
        pump(&f, 1);
        if (i < 150) { /* then the upstream stops reading: a pipe fills */
            read_check(y, &upr, 65536);
        }
        read_check(x, &downr, 65536);
    }
    T_CHECK(f.splicing_a > 0 && f.splicing_b > 0 && !upr.bad && !downr.bad);
    if (destroy) {
        teardown(&f);
        T_CHECK(f.closes_a == 1 && f.closes_b == 1);
    } else {
        T_CHECK_ERR(zcn_loop_close(f.loop, f.a), ZCN_OK);
        for (int i = 0; i < 400 && f.closes_a == 0; i++) {
            pump(&f, 5);
            read_check(x, &downr, 65536);
        }
        T_CHECK(f.closes_a == 1 && f.closes_b == 0); /* the other stays */
        T_CHECK_ERR(zcn_loop_close(f.loop, f.b), ZCN_OK);
        for (int i = 0; i < 400 && f.closes_b == 0; i++)
            pump(&f, 5);
        T_CHECK(f.closes_b == 1);
        ZCN_LoopStats ls;
        T_CHECK_ERR(zcn_loop_stats(f.loop, &ls), ZCN_OK);
        T_CHECK(ls.tcp.connections_active == 0 && ls.tcp.buffers_held == 0);
        teardown(&f);
    }
    close(x);
    close(y);
    close(lfd);
    T_CHECK(t_open_fds() == fds0);
}

static void test_splice_close(void)
{
    splice_cut(0);
}

static void test_splice_destroy(void)
{
    splice_cut(1);
}

/* Forwarding ended while the pipe holds data: those bytes come to on_data
 * (as deferred data), then the later ones; back on (AUTO|SPLICE), data goes
 * to the target again. */
static void test_splice_forward_off(void)
{
    uint16_t up_port;
    int lfd = plain_listener(&up_port, 64 << 10);
    struct fwd f;
    setup(&f, MODE_SPLICE_ONE, NULL, 0, up_port);
    int x = client_to(zcn_server_port(f.srv), 0);
    int y = accept_upstream(&f, lfd);
    struct stream up = {.seed = 9, .total = 64u << 20};
    uint64_t last = t_mono_ms();
    while (t_mono_ms() - last < 200) { /* y does not read: the pipe fills */
        if (write_piece(x, &up, 65536) > 0)
            last = t_mono_ms();
        pump(&f, 1);
    }
    ZCN_ConnInfo ia, ib;
    T_CHECK_ERR(zcn_loop_conn_info(f.loop, f.a, &ia), ZCN_OK);
    T_CHECK_ERR(zcn_loop_conn_info(f.loop, f.b, &ib), ZCN_OK);
    T_CHECK(ia.flags & ZCN_CONN_SPLICING);
    uint64_t in_pipe = ia.bytes_received - ib.bytes_sent;
    T_CHECK(in_pipe > 0);
    T_CHECK_ERR(zcn_loop_forward(f.loop, f.a, -1, 0), ZCN_OK);
    T_CHECK_ERR(zcn_loop_conn_info(f.loop, f.a, &ia), ZCN_OK);
    T_CHECK(!(ia.flags & ZCN_CONN_SPLICING));
    /* y reads what was sent to it; the rest comes to on_data */
    struct stream upr = {.seed = 9};
    for (int i = 0; i < 300; i++) {
        read_check(y, &upr, 65536);
        pump(&f, 2);
    }
    T_CHECK(!upr.bad && upr.read == ib.bytes_sent);
    T_CHECK(f.data_a > 0 && upr.read + f.data_a == up.written);
    close(x);
    close(y);
    close(lfd);
    teardown(&f);
}

/* The user shuts the target down while a direction splices into it: the
 * forwarding ends at the next data, which goes to on_data. */
static void test_splice_target_shut(void)
{
    uint16_t up_port;
    int lfd = plain_listener(&up_port, 0);
    struct fwd f;
    setup(&f, MODE_SPLICE_ONE, NULL, 0, up_port);
    int x = client_to(zcn_server_port(f.srv), 0);
    int y = accept_upstream(&f, lfd);
    char buf[64];
    T_CHECK(send(x, "abc", 3, 0) == 3);
    T_CHECK(read_all_now(y, buf, sizeof buf, &f, 3) == 3 && memcmp(buf, "abc", 3) == 0);
    T_CHECK(f.splicing_a > 0);
    T_CHECK_ERR(zcn_loop_shutdown(f.loop, f.b), ZCN_OK);
    T_CHECK(send(x, "xyz", 3, 0) == 3);
    for (int i = 0; i < 200 && f.data_a < 3; i++)
        pump(&f, 5);
    T_CHECK(f.data_a == 3 && memcmp(f.seen, "xyz", 3) == 0);
    ZCN_ConnInfo ci;
    T_CHECK_ERR(zcn_loop_conn_info(f.loop, f.a, &ci), ZCN_OK);
    T_CHECK(!(ci.flags & (ZCN_CONN_SPLICING | ZCN_CONN_FORWARDING)));
    close(x);
    close(y);
    close(lfd);
    teardown(&f);
}

/* Writes n bytes of the stream at once if the socket takes them. */
static void write_block(int fd, struct stream *st, size_t n)
{
    static uint8_t buf[1 << 17];
    if (n > sizeof buf)
        n = sizeof buf;
    if (n > st->total - st->written)
        n = (size_t)(st->total - st->written);
    for (size_t i = 0; i < n; i++)
        buf[i] = pat(st->written + i, st->seed);
    ssize_t w = send(fd, buf, n, MSG_NOSIGNAL);
    if (w > 0)
        st->written += (uint64_t)w;
}

/* AUTO without the flag: small messages stay on buffers, a stream of full
 * buffers switches to splice mode, small messages after it switch back. */
static void test_auto_switch(void)
{
    uint16_t up_port;
    int lfd = plain_listener(&up_port, 0);
    struct fwd f;
    setup(&f, MODE_AUTO_ONE, NULL, 0, up_port);
    int x = client_to(zcn_server_port(f.srv), 0);
    int y = accept_upstream(&f, lfd);
    const uint64_t small = 200 * 256, big = 16u << 20;
    struct stream up = {.seed = 11, .total = small + big + small}, upr = {.seed = 11};
    for (int i = 0; i < 200; i++) { /* small messages: buffers */
        write_block(x, &up, 256);
        pump(&f, 1);
        read_check(y, &upr, 1 << 17);
    }
    T_CHECK(f.splicing_a == 0);
    uint64_t deadline = t_mono_ms() + 30000;
    while (up.written < small + big && t_mono_ms() < deadline) {
        size_t left = (size_t)(small + big - up.written);
        write_block(x, &up, left < (1u << 17) ? left : (1u << 17));
        pump(&f, 1);
        read_check(y, &upr, 1 << 17);
    }
    T_CHECK(f.splicing_a > 0);
    while (upr.read < up.written && t_mono_ms() < deadline) {
        pump(&f, 1);
        read_check(y, &upr, 1 << 17);
    }
    int back = 0;
    for (int i = 0; i < 200; i++) { /* small again: back to buffers */
        write_block(x, &up, 256);
        pump(&f, 1);
        read_check(y, &upr, 1 << 17);
        ZCN_ConnInfo ci;
        T_CHECK_ERR(zcn_loop_conn_info(f.loop, f.a, &ci), ZCN_OK);
        if (!(ci.flags & ZCN_CONN_SPLICING))
            back++;
    }
    T_CHECK(back > 150);
    shutdown(x, SHUT_WR);
    while (!upr.eof && t_mono_ms() < deadline) {
        pump(&f, 1);
        read_check(y, &upr, 1 << 17);
    }
    T_CHECK(!upr.bad && upr.eof && upr.read == up.total);
    T_CHECK(f.data_a == 0);
    close(x);
    close(y);
    close(lfd);
    teardown(&f);
}

int main(void)
{
    t_require_loop();
    struct {
        const char *name;
        void (*fn)(void);
    } cases[] = {
        {"handler_backpressure", test_handler_backpressure},
        {"auto_integrity", test_auto_integrity},
        {"auto_poll_mode", test_auto_poll_mode},
        {"early_data_and_eof", test_early_data_and_eof},
        {"close_ends_link", test_close_ends_link},
        {"forward_off", test_forward_off},
        {"refused_upstream", test_refused_upstream},
        {"errors", test_errors},
        {"splice_integrity", test_splice_integrity},
        {"splice_poll_mode", test_splice_poll_mode},
        {"splice_early_data_and_eof", test_splice_early_data_and_eof},
        {"splice_backpressure", test_splice_backpressure},
        {"splice_reset", test_splice_reset},
        {"splice_close", test_splice_close},
        {"splice_destroy", test_splice_destroy},
        {"splice_forward_off", test_splice_forward_off},
        {"splice_target_shut", test_splice_target_shut},
        {"auto_switch", test_auto_switch},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint64_t t0 = t_mono_ms();
        cases[i].fn();
        fprintf(stderr, "ok %s (%llu ms)\n", cases[i].name,
                (unsigned long long)(t_mono_ms() - t0));
    }
    return T_EXIT_PASS;
}
