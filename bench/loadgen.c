/* The load generator of the echo benchmark (bench/, driven by zcn/bench.py).
 *
 * One thread, level-triggered epoll, non-blocking sockets, optionally pinned
 * to one CPU (--cpu), so it costs little per message and the server is what
 * is measured as far as two cores allow.
 *
 * Mode "echo": N connections, each with D messages of S bytes in flight;
 * when a message's last byte comes back, the next one is sent. A warm-up,
 * then a measured window: completed messages, bytes and (for every depth)
 * the time from issuing a message to receiving its last byte, kept in a
 * log-linear histogram with nanosecond resolution.
 *
 * Mode "connect": opens N connections as fast as it can (at most
 * --connect-inflight handshakes pending), then sends one message on each and
 * waits for every echo, reports, and holds the connections until a line (or
 * EOF) arrives on stdin, so the harness can read the server's RSS meanwhile.
 *
 * Every echoed byte is checked. The bytes of connection c at stream offset k
 * are P[(phase(c) + k) % PERIOD] for a pseudo-random table P of prime period,
 * so loss, duplication, reordering or another connection's data shows up
 * (message sizes are never a multiple of the period).
 *
 * Output on stdout, one JSON object per line, flushed:
 *   {"event":"window_start"} / {"event":"window_end"}   (echo mode)
 *   {"event":"ready", ...}                              (connect mode)
 *   {"event":"result", ...}                             (always, last)
 * Exit status 0 when every byte was verified and no connection failed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PERIOD 65521u             /* prime: no message size is a multiple */
#define PHASE_STEP 7919u
#define CHUNK_MAX (256u * 1024u)  /* largest single write */
#define READ_BYTES (64u * 1024u)
#define EVENTS_MAX 1024
#define DRAIN_TIMEOUT_NS (3ull * 1000000000ull)
#define CONNECT_TIMEOUT_NS (30ull * 1000000000ull)

/* Histogram: values below 2^LINEAR_BITS ns are exact; above, each power of
 * two is split into 2^SUB_BITS buckets (< 1.6 % relative error). */
#define LINEAR_BITS 7
#define SUB_BITS 6
#define EXP_MAX 42
#define HIST_BUCKETS ((1u << LINEAR_BITS) + (EXP_MAX - LINEAR_BITS + 1) * (1u << SUB_BITS))

struct hist {
    uint64_t counts[HIST_BUCKETS];
    uint64_t total;
    uint64_t sum_ns;
    uint64_t max_ns;
};

struct conn {
    int fd;
    uint32_t phase;
    bool connected;
    bool want_out;              /* EPOLLOUT registered */
    bool dead;
    bool echoed;                /* connect mode: its one echo came back */
    uint64_t sent;              /* bytes written */
    uint64_t target;            /* bytes issued (to be written) */
    uint64_t recvd;             /* bytes received and verified */
    uint64_t issued;            /* messages issued */
    uint64_t done;              /* messages completed */
    uint64_t *issue_ns;         /* ring of `depth` issue times */
};

struct opts {
    const char *host;
    int port;
    const char *mode;
    uint32_t conns;
    uint32_t depth;
    uint32_t size;
    double duration_s;
    double warmup_s;
    int cpu;
    uint32_t connect_inflight;
    double hold_s;              /* connect mode: < 0 = until stdin says go */
    bool spin;                  /* busy-poll: epoll_wait never sleeps */
};

static uint8_t *pattern;        /* PERIOD + CHUNK_MAX bytes */
static uint8_t rbuf[READ_BYTES];
static struct hist hist;
static int ep = -1;
static struct conn *conns;
static struct opts o;
static uint64_t verify_errors, conn_errors, bytes_verified;
static char first_error[256];

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void note_error(const char *fmt, uint32_t idx, const char *what)
{
    if (first_error[0] == '\0')
        snprintf(first_error, sizeof first_error, fmt, idx, what);
}

/* ---------------------------------------------------------------- */
/* histogram                                                         */
/* ---------------------------------------------------------------- */

static uint32_t hist_index(uint64_t v)
{
    if (v < (1u << LINEAR_BITS))
        return (uint32_t)v;
    uint32_t e = 63u - (uint32_t)__builtin_clzll(v);
    if (e > EXP_MAX)
        return HIST_BUCKETS - 1;
    uint32_t sub = (uint32_t)(v >> (e - SUB_BITS)) & ((1u << SUB_BITS) - 1);
    return (1u << LINEAR_BITS) + (e - LINEAR_BITS) * (1u << SUB_BITS) + sub;
}

/* The middle of a bucket's range (exact below 2^LINEAR_BITS). */
static uint64_t hist_value(uint32_t i)
{
    if (i < (1u << LINEAR_BITS))
        return i;
    uint32_t k = i - (1u << LINEAR_BITS);
    uint32_t e = k / (1u << SUB_BITS) + LINEAR_BITS;
    uint64_t sub = k % (1u << SUB_BITS);
    uint64_t width = 1ull << (e - SUB_BITS);
    uint64_t low = (1ull << e) + sub * width;
    return low + width / 2;
}

static void hist_add(uint64_t v)
{
    hist.counts[hist_index(v)]++;
    hist.total++;
    hist.sum_ns += v;
    if (v > hist.max_ns)
        hist.max_ns = v;
}

static uint64_t hist_percentile(double p)
{
    if (hist.total == 0)
        return 0;
    uint64_t rank = (uint64_t)(p / 100.0 * (double)hist.total + 0.5);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (uint32_t i = 0; i < HIST_BUCKETS; i++) {
        seen += hist.counts[i];
        if (seen >= rank) {
            uint64_t v = hist_value(i);
            return v > hist.max_ns ? hist.max_ns : v;
        }
    }
    return hist.max_ns;
}

/* ---------------------------------------------------------------- */
/* connections                                                       */
/* ---------------------------------------------------------------- */

static void make_pattern(void)
{
    pattern = malloc(PERIOD + CHUNK_MAX);
    if (pattern == NULL) {
        perror("loadgen: malloc");
        exit(2);
    }
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (uint32_t i = 0; i < PERIOD; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        pattern[i] = (uint8_t)(x >> 24);
    }
    for (uint32_t i = 0; i < CHUNK_MAX; i++)
        pattern[PERIOD + i] = pattern[i];
}

static inline const uint8_t *pattern_at(const struct conn *c, uint64_t offset)
{
    return pattern + (c->phase + offset) % PERIOD;
}

static void set_events(struct conn *c, bool want_out)
{
    if (c->want_out == want_out)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0),
                             .data.u32 = (uint32_t)(c - conns)};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = want_out;
}

static void kill_conn(struct conn *c, const char *why)
{
    if (c->dead)
        return;
    c->dead = true;
    conn_errors++;
    note_error("connection %u: %s", (uint32_t)(c - conns), why);
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
}

/* Writes what was issued and not yet written. */
static void flush(struct conn *c)
{
    while (c->sent < c->target) {
        uint64_t left = c->target - c->sent;
        size_t n = left < CHUNK_MAX ? (size_t)left : CHUNK_MAX;
        ssize_t w = write(c->fd, pattern_at(c, c->sent), n);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            if (errno == EINTR)
                continue;
            kill_conn(c, strerror(errno));
            return;
        }
        c->sent += (uint64_t)w;
        if ((size_t)w < n)
            break;
    }
    set_events(c, c->sent < c->target);
}

static void issue(struct conn *c, uint64_t t)
{
    c->issue_ns[c->issued % o.depth] = t;
    c->issued++;
    c->target += o.size;
}

/* Reads once; verifies; returns messages completed (their RTTs recorded
 * when `record`), or -1 if the connection ended. */
static int64_t on_readable(struct conn *c, bool record, uint64_t *t_out)
{
    ssize_t n = read(c->fd, rbuf, sizeof rbuf);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return 0;
        kill_conn(c, strerror(errno));
        return -1;
    }
    if (n == 0) {
        kill_conn(c, "closed by the server");
        return -1;
    }
    if ((uint64_t)n > c->sent - c->recvd) {
        verify_errors++;
        kill_conn(c, "received more bytes than were sent");
        return -1;
    }
    if (memcmp(rbuf, pattern_at(c, c->recvd), (size_t)n) != 0) {
        verify_errors++;
        kill_conn(c, "echoed bytes differ from the bytes sent");
        return -1;
    }
    c->recvd += (uint64_t)n;
    bytes_verified += (uint64_t)n;
    int64_t completed = 0;
    uint64_t t = 0;
    while (c->done < c->issued && c->recvd >= (c->done + 1) * (uint64_t)o.size) {
        if (t == 0)
            t = now_ns();
        if (record)
            hist_add(t - c->issue_ns[c->done % o.depth]);
        c->done++;
        completed++;
    }
    *t_out = t;
    return completed;
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int start_connect(struct conn *c, const struct sockaddr_in *sa)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* Close with RST: no TIME_WAIT left behind by 10,000-connection rounds. */
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    if (connect(fd, (const struct sockaddr *)sa, sizeof *sa) != 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        return -e;
    }
    c->fd = fd;
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)(c - conns)};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    c->want_out = true;
    return 0;
}

/* Opens every connection, at most connect_inflight handshakes at once.
 * Returns the number established. */
static uint32_t connect_all(const struct sockaddr_in *sa)
{
    struct epoll_event evs[EVENTS_MAX];
    uint32_t next = 0, pending = 0, established = 0;
    uint64_t deadline = now_ns() + CONNECT_TIMEOUT_NS;
    while (established + conn_errors < o.conns) {
        while (next < o.conns && pending < o.connect_inflight) {
            struct conn *c = &conns[next++];
            int r = start_connect(c, sa);
            if (r < 0) {
                c->dead = true;
                conn_errors++;
                note_error("connection %u: connect: %s", (uint32_t)(c - conns), strerror(-r));
                continue;
            }
            pending++;
        }
        if (now_ns() > deadline) {
            note_error("connection %u: %s", 0, "connect phase timed out");
            conn_errors += o.conns - established - conn_errors;
            break;
        }
        int n = epoll_wait(ep, evs, EVENTS_MAX, 100);
        for (int i = 0; i < n; i++) {
            struct conn *c = &conns[evs[i].data.u32];
            if (c->connected || c->dead)
                continue;
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
            pending--;
            if (err != 0) {
                kill_conn(c, strerror(err));
                continue;
            }
            c->connected = true;
            c->want_out = false;
            struct epoll_event ev = {.events = EPOLLIN, .data.u32 = evs[i].data.u32};
            epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
            established++;
        }
    }
    return established;
}

/* ---------------------------------------------------------------- */
/* modes                                                             */
/* ---------------------------------------------------------------- */

static void print_rtt(FILE *f)
{
    fprintf(f,
            "\"rtt_ns\":{\"count\":%llu,\"mean\":%.0f,\"p50\":%llu,\"p90\":%llu,\"p99\":%llu,"
            "\"p999\":%llu,\"max\":%llu}",
            (unsigned long long)hist.total,
            hist.total ? (double)hist.sum_ns / (double)hist.total : 0.0,
            (unsigned long long)hist_percentile(50), (unsigned long long)hist_percentile(90),
            (unsigned long long)hist_percentile(99), (unsigned long long)hist_percentile(99.9),
            (unsigned long long)hist.max_ns);
}

static void print_common(FILE *f)
{
    fprintf(f,
            "\"conns\":%u,\"depth\":%u,\"size\":%u,\"verify_errors\":%llu,\"conn_errors\":%llu,"
            "\"bytes_verified\":%llu,\"first_error\":\"%s\"",
            o.conns, o.depth, o.size, (unsigned long long)verify_errors,
            (unsigned long long)conn_errors, (unsigned long long)bytes_verified, first_error);
}

static int run_echo(const struct sockaddr_in *sa)
{
    uint64_t t_start = now_ns();
    uint32_t established = connect_all(sa);
    uint64_t t_connected = now_ns();
    struct epoll_event evs[EVENTS_MAX];

    uint64_t t0 = now_ns();
    for (uint32_t i = 0; i < o.conns; i++) {
        struct conn *c = &conns[i];
        if (c->dead)
            continue;
        for (uint32_t d = 0; d < o.depth; d++)
            issue(c, t0);
        flush(c);
    }
    uint64_t warm_end = t0 + (uint64_t)(o.warmup_s * 1e9);
    uint64_t win_end = warm_end + (uint64_t)(o.duration_s * 1e9);
    bool measuring = false, stopping = false;
    uint64_t win_msgs = 0, win_t0 = 0, win_t1 = 0;
    double cpu0 = 0, cpu1 = 0;
    uint64_t drain_deadline = 0;
    uint64_t outstanding_at_end = 0;

    for (;;) {
        uint64_t t = now_ns();
        if (!measuring && !stopping && t >= warm_end) {
            measuring = true;
            win_t0 = t;
            cpu0 = cpu_seconds();
            printf("{\"event\":\"window_start\"}\n");
            fflush(stdout);
        }
        if (measuring && t >= win_end) {
            measuring = false;
            stopping = true;
            win_t1 = t;
            cpu1 = cpu_seconds();
            printf("{\"event\":\"window_end\"}\n");
            fflush(stdout);
            drain_deadline = t + DRAIN_TIMEOUT_NS;
        }
        if (stopping) {
            uint64_t out = 0;
            for (uint32_t i = 0; i < o.conns; i++)
                if (!conns[i].dead)
                    out += conns[i].issued - conns[i].done;
            outstanding_at_end = out;
            if (out == 0 || t >= drain_deadline)
                break;
        }
        if (established == 0)
            break;
        int timeout_ms = 100;
        uint64_t next = measuring ? win_end : (stopping ? drain_deadline : warm_end);
        if (next > t) {
            uint64_t ms = (next - t + 999999) / 1000000;
            if (ms < (uint64_t)timeout_ms)
                timeout_ms = (int)ms;
        } else {
            timeout_ms = 0;
        }
        int n = epoll_wait(ep, evs, EVENTS_MAX, o.spin ? 0 : timeout_ms);
        for (int i = 0; i < n; i++) {
            struct conn *c = &conns[evs[i].data.u32];
            if (c->dead)
                continue;
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                uint64_t tc = 0;
                int64_t k = on_readable(c, measuring, &tc);
                if (k < 0)
                    continue;
                if (measuring)
                    win_msgs += (uint64_t)k;
                if (k > 0 && !stopping) {
                    for (int64_t j = 0; j < k; j++)
                        issue(c, tc);
                    flush(c);
                    continue;
                }
            }
            if ((evs[i].events & EPOLLOUT) && !c->dead)
                flush(c);
        }
    }
    if (win_t1 == 0) { /* no window (everything failed early) */
        win_t1 = now_ns();
        if (win_t0 == 0)
            win_t0 = win_t1;
    }
    double secs = (double)(win_t1 - win_t0) / 1e9;
    bool ok = verify_errors == 0 && conn_errors == 0 && outstanding_at_end == 0 && win_msgs > 0;
    printf("{\"event\":\"result\",\"mode\":\"echo\",\"ok\":%s,", ok ? "true" : "false");
    print_common(stdout);
    printf(",\"established\":%u,\"connect_s\":%.6f,\"window_s\":%.6f,\"msgs\":%llu,"
           "\"msgs_per_s\":%.1f,\"mb_per_s\":%.3f,\"outstanding_at_end\":%llu,"
           "\"client_cpu_util\":%.3f,",
           established, (double)(t_connected - t_start) / 1e9, secs, (unsigned long long)win_msgs,
           secs > 0 ? (double)win_msgs / secs : 0.0,
           secs > 0 ? (double)win_msgs * o.size / secs / 1e6 : 0.0,
           (unsigned long long)outstanding_at_end, secs > 0 ? (cpu1 - cpu0) / secs : 0.0);
    print_rtt(stdout);
    printf("}\n");
    fflush(stdout);
    return ok ? 0 : 1;
}

static void wait_for_go(void)
{
    if (o.hold_s >= 0) {
        struct timespec ts = {.tv_sec = (time_t)o.hold_s,
                              .tv_nsec = (long)((o.hold_s - (double)(time_t)o.hold_s) * 1e9)};
        nanosleep(&ts, NULL);
        return;
    }
    char line[64];
    if (fgets(line, sizeof line, stdin) == NULL) {
        /* EOF: go on */
    }
}

static int run_connect(const struct sockaddr_in *sa)
{
    uint64_t t0 = now_ns();
    uint32_t established = connect_all(sa);
    uint64_t t1 = now_ns();
    /* One echo on each connection, all at once. */
    o.depth = 1;
    for (uint32_t i = 0; i < o.conns; i++) {
        struct conn *c = &conns[i];
        if (c->dead)
            continue;
        issue(c, t1);
        flush(c);
    }
    struct epoll_event evs[EVENTS_MAX];
    uint32_t echoed = 0;
    uint64_t deadline = t1 + CONNECT_TIMEOUT_NS;
    while (echoed + conn_errors < o.conns && now_ns() < deadline) {
        int n = epoll_wait(ep, evs, EVENTS_MAX, 100);
        for (int i = 0; i < n; i++) {
            struct conn *c = &conns[evs[i].data.u32];
            if (c->dead)
                continue;
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                uint64_t tc;
                if (on_readable(c, true, &tc) > 0 && !c->echoed) {
                    c->echoed = true;
                    echoed++;
                }
            }
            if ((evs[i].events & EPOLLOUT) && !c->dead)
                flush(c);
        }
    }
    uint64_t t2 = now_ns();
    if (echoed + conn_errors < o.conns) {
        note_error("connection %u: %s", 0, "timed out waiting for the echoes");
        conn_errors += o.conns - echoed - conn_errors;
    }
    double connect_s = (double)(t1 - t0) / 1e9, echo_s = (double)(t2 - t1) / 1e9;
    double total_s = (double)(t2 - t0) / 1e9;
    char body[1024];
    snprintf(body, sizeof body,
             "\"established\":%u,\"echoed\":%u,\"connect_s\":%.6f,\"connect_per_s\":%.1f,"
             "\"echo_all_s\":%.6f,\"setup_s\":%.6f,\"setup_per_s\":%.1f",
             established, echoed, connect_s, connect_s > 0 ? established / connect_s : 0.0,
             echo_s, total_s, total_s > 0 ? echoed / total_s : 0.0);
    printf("{\"event\":\"ready\",%s}\n", body);
    fflush(stdout);
    wait_for_go();
    uint64_t t3 = now_ns();
    for (uint32_t i = 0; i < o.conns; i++)
        if (!conns[i].dead)
            close(conns[i].fd);
    double close_s = (double)(now_ns() - t3) / 1e9;
    bool ok = verify_errors == 0 && conn_errors == 0 && echoed == o.conns;
    printf("{\"event\":\"result\",\"mode\":\"connect\",\"ok\":%s,", ok ? "true" : "false");
    print_common(stdout);
    printf(",%s,\"close_s\":%.6f,", body, close_s);
    print_rtt(stdout);
    printf("}\n");
    fflush(stdout);
    return ok ? 0 : 1;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen --port P [--host 127.0.0.1] [--mode echo|connect]\n"
            "               [--conns N] [--depth D] [--size BYTES] [--duration S] [--warmup S]\n"
            "               [--cpu C] [--connect-inflight K] [--hold S (connect; default: until\n"
            "               a line or EOF on stdin)] [--spin (busy-poll, never sleep)]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    o = (struct opts){.host = "127.0.0.1", .port = -1, .mode = "echo", .conns = 1, .depth = 1,
                      .size = 64, .duration_s = 2.0, .warmup_s = 0.5, .cpu = -1,
                      .connect_inflight = 256, .hold_s = -1};
    static const struct option longopts[] = {
        {"host", required_argument, 0, 'h'},     {"port", required_argument, 0, 'p'},
        {"mode", required_argument, 0, 'm'},     {"conns", required_argument, 0, 'n'},
        {"depth", required_argument, 0, 'd'},    {"size", required_argument, 0, 's'},
        {"duration", required_argument, 0, 't'}, {"warmup", required_argument, 0, 'w'},
        {"cpu", required_argument, 0, 'c'},      {"connect-inflight", required_argument, 0, 'i'},
        {"hold", required_argument, 0, 'H'},     {"spin", no_argument, 0, 'S'},
        {0, 0, 0, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'h': o.host = optarg; break;
        case 'p': o.port = atoi(optarg); break;
        case 'm': o.mode = optarg; break;
        case 'n': o.conns = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'd': o.depth = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 's': o.size = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 't': o.duration_s = atof(optarg); break;
        case 'w': o.warmup_s = atof(optarg); break;
        case 'c': o.cpu = atoi(optarg); break;
        case 'i': o.connect_inflight = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'H': o.hold_s = atof(optarg); break;
        case 'S': o.spin = true; break;
        default: usage();
        }
    }
    bool connect_mode = strcmp(o.mode, "connect") == 0;
    if (o.port <= 0 || o.port > 65535 || o.conns == 0 || o.depth == 0 || o.size == 0 ||
        o.size > CHUNK_MAX || o.connect_inflight == 0 ||
        (!connect_mode && strcmp(o.mode, "echo") != 0))
        usage();
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    if (o.cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(o.cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set) != 0)
            perror("loadgen: sched_setaffinity");
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)o.port)};
    if (inet_pton(AF_INET, o.host, &sa.sin_addr) != 1) {
        fprintf(stderr, "loadgen: --host must be an IPv4 literal\n");
        return 2;
    }
    make_pattern();
    conns = calloc(o.conns, sizeof *conns);
    uint64_t *times = calloc((size_t)o.conns * (connect_mode ? 1 : o.depth), sizeof *times);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (conns == NULL || times == NULL || ep < 0) {
        perror("loadgen: setup");
        return 2;
    }
    for (uint32_t i = 0; i < o.conns; i++) {
        conns[i].fd = -1;
        conns[i].phase = (uint32_t)(((uint64_t)i * PHASE_STEP) % PERIOD);
        conns[i].issue_ns = times + (size_t)i * (connect_mode ? 1 : o.depth);
    }
    return connect_mode ? run_connect(&sa) : run_echo(&sa);
}
