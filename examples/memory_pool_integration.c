/*
 * memory_pool_integration.c - the seed's "Integration with Memory Pool", made
 * real and measured.
 *
 * Two zcn pools take part in every message:
 *
 *   network buffers   the server's own pool: the kernel receives into it
 *                     (provided-buffer ring) and on_data lends a buffer out
 *   message objects   a second ZCN_BufferPool of fixed-size Message objects
 *
 * The life of one message, with no malloc anywhere on the way:
 *
 *   kernel recv -> pool buffer -> on_data(data, len) borrowed
 *     -> frame parsed in place (header fields read from the buffer, the
 *        payload pointer points into it; nothing copied)
 *     -> Message object acquired from the object pool and filled
 *     -> TICK:  handled right there, object released   (the common case)
 *        ORDER: must outlive the callback, so its payload is copied into the
 *               object, which waits in a fixed-size queue; the main loop
 *               handles it after zcn_server_run_once_timeout returns and
 *               releases the object
 *     -> on_data returns: the network buffer goes back to the kernel
 *
 * TCP is a byte stream, so a frame may straddle two receives: its start is
 * copied into a per-connection staging object (also from the object pool)
 * and parsed from there once complete. Everything else is parsed in place.
 *
 * What it measures (a client thread sends N framed messages over loopback):
 *   - ns per message inside on_data: parse + validate + object acquire/
 *     release + handling, timed per callback and divided by its frames;
 *   - the same parse loop over an in-memory copy of the stream, without
 *     the network (the pure CPU cost per message);
 *   - one object acquire + release pair;
 *   - malloc/calloc/realloc/free calls on the server thread while messages
 *     flow, counted by wrapping them at link time (-Wl,--wrap=..., see
 *     examples/integration.cmake; the wrap covers this file and the
 *     statically linked libzero_copy_net.a). The run fails unless the count
 *     is zero.
 *
 * Usage: memory_pool_integration [messages]   (default 1000000)
 * Exit 0 = pass, 1 = fail, 77 = io_uring unavailable here.
 */
#define _GNU_SOURCE
#include "zero_copy_net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- allocation counter (link with -Wl,--wrap=malloc,...) ---------------- */

/* Per thread: only the server (main) thread's allocations are of interest;
 * the client thread may allocate what it likes. */
/* volatile: the compiler knows malloc and free as builtins that touch no
 * program globals, and would otherwise fold reads of the counter across them. */
static _Thread_local volatile uint64_t alloc_calls;

void *__real_malloc(size_t size);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t size);
void __real_free(void *p);
void *__wrap_malloc(size_t size);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t size);
void __wrap_free(void *p);

void *__wrap_malloc(size_t size)
{
    alloc_calls++;
    return __real_malloc(size);
}
void *__wrap_calloc(size_t n, size_t size)
{
    alloc_calls++;
    return __real_calloc(n, size);
}
void *__wrap_realloc(void *p, size_t size)
{
    alloc_calls++;
    return __real_realloc(p, size);
}
void __wrap_free(void *p)
{
    if (p != NULL)
        alloc_calls++;
    __real_free(p);
}

/* ---- the wire format ------------------------------------------------------ */

/* Little-endian header, then `len` payload bytes:
 *   u16 magic, u16 type, u32 len, u64 seq, u32 check (FNV-1a of the payload),
 *   u32 reserved */
#define FRAME_MAGIC 0x5a43u
#define HEADER_BYTES 24u
#define PAYLOAD_MAX 1024u
#define FRAME_MAX (HEADER_BYTES + PAYLOAD_MAX)

enum { TYPE_TICK = 1, TYPE_ORDER = 2, TYPE_END = 3 };

static inline uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}
static inline uint32_t get32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v); /* x86-64 and aarch64 Linux are little-endian */
    return v;
}
static inline uint64_t get64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static uint32_t fnv1a(const uint8_t *p, size_t len)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

/* The payload checksum is most of the per-message CPU cost (a byte-at-a-time
 * hash over ~100 bytes); the offline run measures with and without it. */
static bool validate_payload = true;

/* ---- message objects ------------------------------------------------------ */

/* One object per buffer of the object pool (zcn buffers are whole pages, so
 * the object has room to keep a payload inline when it must outlive the
 * receive buffer). */
typedef struct Message {
    uint64_t seq;
    uint32_t type;
    uint32_t len;
    int fd;
    const uint8_t *payload; /* into the receive buffer (borrowed) or `inline_payload` */
    uint8_t inline_payload[];
} Message;

#define OBJECTS 1024u
#define OBJECT_BYTES 4096u
_Static_assert(sizeof(Message) + PAYLOAD_MAX <= OBJECT_BYTES, "payload fits inline");
_Static_assert(FRAME_MAX <= OBJECT_BYTES, "a frame fits a staging object");

#define CONNS_MAX 8

struct conn {
    int fd; /* -1 = free slot */
    uint8_t *staging; /* an object-pool buffer holding a frame's start */
    uint32_t staged;  /* bytes in staging */
};

struct app {
    ZCN_Server *server;
    ZCN_BufferPool *objects;
    struct conn conns[CONNS_MAX];
    Message *deferred[OBJECTS]; /* ORDER messages waiting for the main loop */
    uint32_t deferred_count;

    /* counters */
    uint64_t frames, ticks, orders, in_place, reassembled, bad, object_exhausted;
    uint64_t next_seq, value_sum;
    uint64_t on_data_ns, on_data_calls, deferred_ns;
    uint64_t allocs_in_on_data, allocs_steady_start;
    bool steady, done, failed;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The business logic: a running sum the client can check. */
static void handle(struct app *a, const Message *m)
{
    uint64_t value = 0;
    memcpy(&value, m->payload, m->len < 8 ? m->len : 8);
    a->value_sum += value ^ m->seq;
}

static void process_deferred(struct app *a)
{
    uint64_t t0 = now_ns();
    for (uint32_t i = 0; i < a->deferred_count; i++) {
        Message *m = a->deferred[i];
        handle(a, m);
        ZCN_Error e = zcn_pool_release(a->objects, m);
        if (e != ZCN_OK) {
            fprintf(stderr, "release: %s\n", zcn_error_name(e));
            a->failed = true;
        }
    }
    if (a->deferred_count > 0)
        a->deferred_ns += now_ns() - t0;
    a->deferred_count = 0;
}

static Message *take_object(struct app *a)
{
    Message *m = zcn_pool_acquire(a->objects);
    if (m == NULL) {
        /* Every object is waiting in the deferred queue: handle that queue
         * now rather than drop a message (back-pressure, still no malloc). */
        a->object_exhausted++;
        process_deferred(a);
        m = zcn_pool_acquire(a->objects);
    }
    return m;
}

/* Parses the complete frame at `p` (validated length). Returns false on a
 * protocol error (the connection is closed). */
static bool on_frame(struct app *a, int fd, const uint8_t *p)
{
    uint16_t type = get16(p + 2);
    uint32_t len = get32(p + 4);
    uint64_t seq = get64(p + 8);
    const uint8_t *payload = p + HEADER_BYTES;
    if (seq != a->next_seq || (validate_payload && fnv1a(payload, len) != get32(p + 16)))
        return false;
    a->next_seq++;
    a->frames++;

    Message *m = take_object(a);
    if (m == NULL)
        return false;
    m->seq = seq;
    m->type = type;
    m->len = len;
    m->fd = fd;
    m->payload = payload; /* in place: borrowed from the receive buffer */

    switch (type) {
    case TYPE_TICK:
        a->ticks++;
        handle(a, m);
        break;
    case TYPE_ORDER:
        /* Kept past the callback: the one copy, into the object itself. */
        a->orders++;
        memcpy(m->inline_payload, payload, len);
        m->payload = m->inline_payload;
        a->deferred[a->deferred_count++] = m;
        return true;
    case TYPE_END:
        a->done = true; /* on_data acknowledges */
        break;
    default:
        zcn_pool_release(a->objects, m);
        return false;
    }
    return zcn_pool_release(a->objects, m) == ZCN_OK;
}

static struct conn *find_conn(struct app *a, int fd)
{
    for (int i = 0; i < CONNS_MAX; i++)
        if (a->conns[i].fd == fd)
            return &a->conns[i];
    return NULL;
}

/* Length of the frame starting at p given `avail` bytes: 0 if the header is
 * incomplete, UINT32_MAX if it is invalid. */
static uint32_t frame_length(const uint8_t *p, size_t avail)
{
    if (avail < HEADER_BYTES)
        return 0;
    if (get16(p) != FRAME_MAGIC || get32(p + 4) > PAYLOAD_MAX)
        return UINT32_MAX;
    return HEADER_BYTES + get32(p + 4);
}

static bool consume(struct app *a, struct conn *c, const uint8_t *data, size_t len)
{
    size_t off = 0;
    /* First finish a frame whose start arrived in an earlier receive. */
    while (c->staged > 0 && off < len) {
        uint32_t need = frame_length(c->staging, c->staged);
        if (need == UINT32_MAX)
            return false;
        size_t want = need == 0 ? HEADER_BYTES - c->staged : need - c->staged;
        size_t n = want < len - off ? want : len - off;
        memcpy(c->staging + c->staged, data + off, n);
        c->staged += (uint32_t)n;
        off += n;
        need = frame_length(c->staging, c->staged);
        if (need == UINT32_MAX)
            return false;
        if (need != 0 && c->staged == need) {
            a->reassembled++;
            c->staged = 0;
            if (!on_frame(a, c->fd, c->staging))
                return false;
        }
    }
    /* Then every complete frame in place. */
    while (off < len) {
        uint32_t need = frame_length(data + off, len - off);
        if (need == UINT32_MAX)
            return false;
        if (need == 0 || need > len - off)
            break;
        a->in_place++;
        if (!on_frame(a, c->fd, data + off))
            return false;
        off += need;
    }
    /* Keep the start of a straddling frame. */
    if (off < len) {
        memcpy(c->staging, data + off, len - off);
        c->staged = (uint32_t)(len - off);
    }
    return true;
}

static void on_accept(void *user_data, int fd)
{
    struct app *a = user_data;
    struct conn *c = find_conn(a, -1);
    uint8_t *staging = c != NULL ? zcn_pool_acquire(a->objects) : NULL;
    if (staging == NULL) {
        zcn_server_close(a->server, fd);
        return;
    }
    c->fd = fd;
    c->staging = staging;
    c->staged = 0;
}

static void on_data(void *user_data, int fd, const uint8_t *data, size_t len)
{
    struct app *a = user_data;
    uint64_t allocs_before = alloc_calls;
    if (!a->steady) {
        a->steady = true;
        a->allocs_steady_start = alloc_calls;
    }
    uint64_t t0 = now_ns();
    struct conn *c = find_conn(a, fd);
    bool was_done = a->done;
    if (c == NULL || !consume(a, c, data, len)) {
        a->bad++;
        a->failed = true;
        zcn_server_close(a->server, fd);
    }
    a->on_data_ns += now_ns() - t0;
    a->on_data_calls++;
    a->allocs_in_on_data += alloc_calls - allocs_before;
    if (a->done && !was_done) {
        /* Flush the queue first so the acknowledged sum covers every message. */
        process_deferred(a);
        uint8_t ack[16];
        memcpy(ack, &a->frames, 8);
        memcpy(ack + 8, &a->value_sum, 8);
        ZCN_Error e = zcn_server_send(a->server, fd, ack, sizeof ack); /* copied into a pool buffer */
        if (e != ZCN_OK) {
            fprintf(stderr, "ack: %s\n", zcn_error_name(e));
            a->failed = true;
        }
    }
}

static void on_close(void *user_data, int fd)
{
    struct app *a = user_data;
    struct conn *c = find_conn(a, fd);
    if (c == NULL)
        return;
    zcn_pool_release(a->objects, c->staging);
    c->fd = -1;
    c->staging = NULL;
    c->staged = 0;
}

/* ---- the client ----------------------------------------------------------- */

struct stream {
    uint8_t *bytes;
    size_t len;
    uint64_t messages; /* including the END frame */
    uint64_t value_sum;
};

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Builds N frames: payloads of 8..200 bytes, one ORDER in 16, then END. */
static int build_stream(struct stream *st, uint64_t n)
{
    size_t cap = (size_t)n * (HEADER_BYTES + 200) + FRAME_MAX;
    st->bytes = malloc(cap);
    if (st->bytes == NULL)
        return -1;
    st->len = 0;
    st->value_sum = 0;
    uint64_t rng = 0x9e3779b97f4a7c15u;
    for (uint64_t seq = 0; seq <= n; seq++) {
        uint8_t *p = st->bytes + st->len;
        uint16_t type = seq == n ? TYPE_END : (seq % 16 == 7 ? TYPE_ORDER : TYPE_TICK);
        uint32_t len = type == TYPE_END ? 8 : 8 + (uint32_t)(rng_next(&rng) % 193);
        uint8_t *payload = p + HEADER_BYTES;
        for (uint32_t i = 0; i < len; i++)
            payload[i] = (uint8_t)rng_next(&rng);
        put16(p, FRAME_MAGIC);
        put16(p + 2, type);
        memcpy(p + 4, &len, 4);
        memcpy(p + 8, &seq, 8);
        uint32_t check = fnv1a(payload, len);
        memcpy(p + 16, &check, 4);
        memset(p + 20, 0, 4);
        if (type != TYPE_END) {
            uint64_t value = 0;
            memcpy(&value, payload, 8);
            st->value_sum += value ^ seq;
        }
        st->len += HEADER_BYTES + len;
    }
    st->messages = n + 1;
    return 0;
}

struct client {
    uint16_t port;
    const struct stream *stream;
    int ok;
    atomic_int finished;
    char why[128];
};

static void *client_main(void *arg)
{
    struct client *cl = arg;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(cl->port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {.tv_sec = 30};
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
        connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        snprintf(cl->why, sizeof cl->why, "connect: %s", strerror(errno));
        goto out;
    }
    /* 64 KiB writes: frame boundaries fall anywhere in a receive. */
    for (size_t off = 0; off < cl->stream->len;) {
        size_t chunk = cl->stream->len - off < 65536 ? cl->stream->len - off : 65536;
        ssize_t n = send(fd, cl->stream->bytes + off, chunk, MSG_NOSIGNAL);
        if (n <= 0) {
            snprintf(cl->why, sizeof cl->why, "send: %s", strerror(errno));
            goto out;
        }
        off += (size_t)n;
    }
    uint8_t ack[16];
    for (size_t got = 0; got < sizeof ack;) {
        ssize_t n = recv(fd, ack + got, sizeof ack - got, 0);
        if (n <= 0) {
            snprintf(cl->why, sizeof cl->why, "recv ack: %s", n == 0 ? "closed" : strerror(errno));
            goto out;
        }
        got += (size_t)n;
    }
    uint64_t frames, sum;
    memcpy(&frames, ack, 8);
    memcpy(&sum, ack + 8, 8);
    if (frames != cl->stream->messages || sum != cl->stream->value_sum) {
        snprintf(cl->why, sizeof cl->why, "ack: %llu frames sum %llx, expected %llu sum %llx",
                 (unsigned long long)frames, (unsigned long long)sum,
                 (unsigned long long)cl->stream->messages,
                 (unsigned long long)cl->stream->value_sum);
        goto out;
    }
    cl->ok = 1;
out:
    if (fd >= 0)
        close(fd);
    atomic_store(&cl->finished, 1);
    return NULL;
}

/* ---- the same parse loop without the network ------------------------------ */

/* Runs consume() over the stream in 16 KiB slices (what recv would hand
 * over) `rounds` times and returns ns per message. */
static double offline_parse_ns(struct app *a, const struct stream *st, int rounds)
{
    struct conn c = {.fd = 0, .staging = zcn_pool_acquire(a->objects)};
    if (c.staging == NULL)
        return -1;
    uint64_t messages = 0, t0 = now_ns();
    for (int r = 0; r < rounds; r++) {
        a->next_seq = 0;
        a->done = false;
        c.staged = 0;
        uint64_t before = a->frames;
        for (size_t off = 0; off < st->len; off += 16384) {
            size_t n = st->len - off < 16384 ? st->len - off : 16384;
            if (!consume(a, &c, st->bytes + off, n))
                return -1;
            process_deferred(a);
        }
        messages += a->frames - before;
    }
    uint64_t elapsed = now_ns() - t0;
    zcn_pool_release(a->objects, c.staging);
    return messages ? (double)elapsed / (double)messages : -1;
}

static double acquire_release_ns(ZCN_BufferPool *pool, int rounds)
{
    uint64_t t0 = now_ns();
    for (int i = 0; i < rounds; i++) {
        void *p = zcn_pool_acquire(pool);
        if (p == NULL || zcn_pool_release(pool, p) != ZCN_OK)
            return -1;
    }
    return (double)(now_ns() - t0) / rounds;
}

int main(int argc, char **argv)
{
    uint64_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 1000000;
    if (n == 0 || n > 50000000) {
        fprintf(stderr, "usage: %s [messages 1..50000000]\n", argv[0]);
        return 1;
    }

    /* The counter must see this thread's allocations, or a zero below would
     * prove nothing (the --wrap link options are missing). */
    uint64_t probe_before = alloc_calls;
    void *volatile probe = malloc(16);
    free(probe);
    if (alloc_calls - probe_before != 2) {
        fprintf(stderr, "FAIL: malloc is not wrapped; link with -Wl,--wrap=malloc,... "
                        "(examples/integration.cmake)\n");
        return 1;
    }

    static struct app a; /* large (the deferred queue): not on the stack */
    for (int i = 0; i < CONNS_MAX; i++)
        a.conns[i].fd = -1;
    ZCN_Error err = ZCN_OK;
    a.objects = zcn_pool_create(OBJECT_BYTES, OBJECTS, &err);
    if (a.objects == NULL) {
        fprintf(stderr, "object pool: %s (%s)\n", zcn_error_name(err), zcn_error_detail());
        return 1;
    }
    ZCN_Config cfg = {0};
    cfg.address = "127.0.0.1";
    cfg.buffer_pool_size = 256;
    cfg.buffer_size = 16384;
    a.server = zcn_server_create(&cfg, &err);
    if (a.server == NULL) {
        int io_uring_missing = err == ZCN_ERR_URING_DISABLED || err == ZCN_ERR_URING_BLOCKED ||
                               err == ZCN_ERR_URING_UNSUPPORTED || err == ZCN_ERR_MEMLOCK;
        fprintf(stderr, "%s: server: %s (%s)\n", io_uring_missing ? "SKIP" : "FAIL",
                zcn_error_name(err), zcn_error_detail());
        zcn_pool_destroy(a.objects);
        return io_uring_missing ? 77 : 1;
    }
    zcn_server_set_callbacks(a.server, &a, on_accept, on_data, on_close);
    if ((err = zcn_server_start(a.server)) != ZCN_OK) {
        fprintf(stderr, "start: %s (%s)\n", zcn_error_name(err), zcn_error_detail());
        return 1;
    }

    static struct stream st;
    if (build_stream(&st, n) != 0) {
        fprintf(stderr, "no memory for %llu messages\n", (unsigned long long)n);
        return 1;
    }
    struct client cl = {.port = zcn_server_port(a.server), .stream = &st};
    pthread_t client;
    if (pthread_create(&client, NULL, client_main, &cl) != 0) {
        fprintf(stderr, "pthread_create failed\n");
        return 1;
    }

    uint64_t t_start = now_ns(), deadline = t_start + 120ull * 1000000000u;
    while (!a.done && !a.failed && now_ns() < deadline) {
        err = zcn_server_run_once_timeout(a.server, 100, NULL);
        if (err != ZCN_OK && err != (ZCN_Error)EINTR) {
            fprintf(stderr, "run_once: %s (%s)\n", zcn_error_name(err), zcn_error_detail());
            a.failed = true;
        }
        process_deferred(&a);
    }
    uint64_t t_end = now_ns();
    uint64_t allocs_steady = alloc_calls - a.allocs_steady_start;
    /* Keep the loop turning so the ack goes out, until the client has its
     * verdict and its connection is closed. */
    while ((!atomic_load(&cl.finished) || a.conns[0].fd >= 0) && now_ns() < deadline)
        zcn_server_run_once_timeout(a.server, 10, NULL);
    pthread_join(client, NULL);
    ZCN_PoolStats objects_stats;
    zcn_pool_stats(a.objects, &objects_stats);
    uint64_t frames_online = a.frames, calls_online = a.on_data_calls;
    double online_ns = a.frames ? (double)a.on_data_ns / (double)a.frames : 0;
    double deferred_ns = a.orders ? (double)a.deferred_ns / (double)a.orders : 0;
    double e2e_s = (double)(t_end - t_start) / 1e9;
    uint64_t in_place = a.in_place, reassembled = a.reassembled, exhausted = a.object_exhausted;
    uint64_t objects_leaked = objects_stats.in_use;

    /* Offline: the same parse over the same bytes, no kernel in between. */
    uint64_t allocs_before_offline = alloc_calls;
    int rounds = n >= 1000000 ? 3 : 10;
    double offline_ns = offline_parse_ns(&a, &st, rounds);
    validate_payload = false;
    double offline_nocheck_ns = offline_parse_ns(&a, &st, rounds);
    validate_payload = true;
    uint64_t allocs_offline = alloc_calls - allocs_before_offline;
    double pair_ns = acquire_release_ns(a.objects, 10000000);

    printf("memory_pool_integration: %llu messages (%.1f MB) over loopback TCP\n",
           (unsigned long long)st.messages, (double)st.len / 1e6);
    printf("  received and parsed        %llu messages in %llu on_data calls, %.3f s (%.2f M msg/s end to end)\n",
           (unsigned long long)frames_online, (unsigned long long)calls_online, e2e_s,
           (double)frames_online / e2e_s / 1e6);
    printf("  parsed in place            %llu, reassembled across receives %llu\n",
           (unsigned long long)in_place, (unsigned long long)reassembled);
    printf("  in on_data, per message    %.1f ns (parse + validate + object acquire/release + handle)\n",
           online_ns);
    printf("  deferred ORDER, per message %.1f ns (handle + release after the callback)\n", deferred_ns);
    printf("  offline, per message       %.1f ns (the same code over an in-memory copy)\n", offline_ns);
    printf("  offline, no payload hash   %.1f ns (parse + object acquire/release + handle)\n",
           offline_nocheck_ns);
    printf("  object acquire+release     %.1f ns per pair\n", pair_ns);
    printf("  object pool exhausted      %llu times (queue handled early)\n",
           (unsigned long long)exhausted);
    printf("  allocator calls on the server thread: %llu in on_data, %llu from first data to END, %llu offline\n",
           (unsigned long long)a.allocs_in_on_data, (unsigned long long)allocs_steady,
           (unsigned long long)allocs_offline);

    int ok = 1;
    if (!cl.ok) {
        fprintf(stderr, "FAIL: client: %s\n", cl.why[0] ? cl.why : "no ack");
        ok = 0;
    }
    if (a.failed || a.bad) {
        fprintf(stderr, "FAIL: server saw %llu bad frames\n", (unsigned long long)a.bad);
        ok = 0;
    }
    if (a.allocs_in_on_data != 0 || allocs_steady != 0 || allocs_offline != 0) {
        fprintf(stderr, "FAIL: the per-message path allocated\n");
        ok = 0;
    }
    if (objects_leaked != 0) {
        fprintf(stderr, "FAIL: %llu message objects not released\n", (unsigned long long)objects_leaked);
        ok = 0;
    }
    if (offline_ns < 0 || offline_nocheck_ns < 0 || pair_ns < 0) {
        fprintf(stderr, "FAIL: offline measurement\n");
        ok = 0;
    }
    zcn_server_destroy(a.server);
    zcn_pool_destroy(a.objects);
    free(st.bytes);
    printf("%s\n", ok ? "PASS" : "FAIL");
    return ok ? 0 : 1;
}
