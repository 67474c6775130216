/* zcn_udp_adopt_on, batch mode (zcn_udp_set_batch) and receive flow
 * control (zcn_udp_pause_recv / _resume_recv) on a ZCN_Loop polled with
 * zcn_loop_poll: what the Python asyncio loop's datagram transport is built
 * on. Adoption of bound, connected, IPv6 and unbound sockets and who owns
 * the fd after success and failure; datagrams as one ZCN_EVENT_DATAGRAMS
 * per socket and poll, their peers and bytes, echoed without a copy; a
 * small array spread over several polls in order; a 60000-byte datagram;
 * receive and send errors (ICMP port unreachable) in the array, a send
 * error outside the poll held and reported by the next poll without its
 * wait; pause and resume; callback mode as before while batch mode is on;
 * turning batch mode off; bad input. */
#include "t_helpers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define EVENTS 64
#define BATCH 256
#define TAG 0x5a5a0001u

static ZCN_Event g_ev[EVENTS];
static ZCN_UdpEvent g_batch[BATCH];

static struct sockaddr_in addr4(uint16_t port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static struct sockaddr_in6 addr6(uint16_t port)
{
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(port)};
    a.sin6_addr = in6addr_loopback;
    return a;
}

static uint16_t port_of(int fd)
{
    struct sockaddr_in6 got;
    socklen_t len = sizeof got;
    T_CHECK(getsockname(fd, (struct sockaddr *)&got, &len) == 0);
    return ntohs(got.sin6_port); /* same offset in sockaddr_in */
}

/* A UDP socket bound to loopback port 0 (family's), with a receive timeout. */
static int bound(int family)
{
    int fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    T_CHECK(fd >= 0);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (family == AF_INET) {
        struct sockaddr_in a = addr4(0);
        T_CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
    } else {
        struct sockaddr_in6 a = addr6(0);
        T_CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
    }
    return fd;
}

static void send_to(int fd, int family, uint16_t port, const void *data, size_t len)
{
    ssize_t n;
    if (family == AF_INET) {
        struct sockaddr_in a = addr4(port);
        n = sendto(fd, data, len, 0, (struct sockaddr *)&a, sizeof a);
    } else {
        struct sockaddr_in6 a = addr6(port);
        n = sendto(fd, data, len, 0, (struct sockaddr *)&a, sizeof a);
    }
    T_CHECK(n == (ssize_t)len);
}

static bool fd_open(int fd)
{
    return fcntl(fd, F_GETFD) != -1;
}

static ZCN_Loop *new_loop(void)
{
    ZCN_Error err = ZCN_OK;
    ZCN_Loop *l = zcn_loop_create(NULL, &err);
    if (l == NULL)
        fprintf(stderr, "zcn_loop_create: %s (%s)\n", zcn_error_name(err), zcn_error_detail());
    T_CHECK(l != NULL);
    return l;
}

static ZCN_UdpSocket *adopt(ZCN_Loop *l, int fd, const ZCN_UdpConfig *cfg)
{
    ZCN_Error err = ZCN_OK;
    ZCN_UdpSocket *u = zcn_udp_adopt_on(l, fd, cfg, &err);
    if (u == NULL)
        fprintf(stderr, "zcn_udp_adopt_on: %s (%s)\n", zcn_error_name(err), zcn_error_detail());
    T_CHECK(u != NULL);
    T_CHECK_ERR(err, ZCN_OK);
    return u;
}

/* What the polls of one socket delivered. */
struct got {
    uint32_t datagrams, errors, polls_with;
    uint32_t last_errno;
    uint32_t seq_next;    /* the next expected 4-byte sequence number */
    bool out_of_order;
    size_t bytes;
};

/* Echo (with echo != NULL: each datagram sent back to its peer from its own
 * buffer) and count one poll's ZCN_EVENT_DATAGRAMS of u. Checks that each
 * event is the socket's, at most one per poll, and that entries are
 * datagrams with a peer or errors without one. */
static uint32_t poll_once(ZCN_Loop *l, ZCN_UdpSocket *u, int fd, int timeout_ms, struct got *g,
                          bool echo)
{
    uint32_t n = 0, mine = 0;
    ZCN_Error e = zcn_loop_poll(l, g_ev, EVENTS, timeout_ms, &n);
    T_CHECK(e == ZCN_OK || e == (ZCN_Error)EINTR);
    for (uint32_t i = 0; i < n; i++) {
        if (g_ev[i].type != ZCN_EVENT_DATAGRAMS)
            continue;
        T_CHECK(g_ev[i].fd == fd);
        T_CHECK(g_ev[i].tag == TAG);
        T_CHECK(g_ev[i].data == (const uint8_t *)g_batch);
        T_CHECK(g_ev[i].len >= 1 && g_ev[i].len <= BATCH);
        mine++;
        for (uint32_t k = 0; k < g_ev[i].len; k++) {
            const ZCN_UdpEvent *d = &g_batch[k];
            if (d->flags & ZCN_UDP_ERROR) {
                T_CHECK(d->len == 0 && d->peer_len == 0 && d->data == NULL);
                g->errors++;
                g->last_errno = d->full_len;
                continue;
            }
            T_CHECK(d->flags == 0);
            T_CHECK(d->peer_len == sizeof(struct sockaddr_in) ||
                    d->peer_len == sizeof(struct sockaddr_in6));
            T_CHECK(d->data == zcn_udp_buffer_base(u) + d->offset);
            g->datagrams++;
            g->bytes += d->len;
            if (d->len >= 4) {
                uint32_t seq;
                memcpy(&seq, d->data, 4);
                if (seq != g->seq_next)
                    g->out_of_order = true;
                g->seq_next = seq + 1;
            }
            if (echo)
                T_CHECK_ERR(zcn_udp_sendto(u, (const struct sockaddr *)d->peer, d->peer_len,
                                           d->data, d->len),
                            ZCN_OK);
        }
    }
    T_CHECK(mine <= 1);
    if (mine)
        g->polls_with++;
    return mine;
}

static void set_batch(ZCN_UdpSocket *u, uint32_t cap)
{
    T_CHECK_ERR(zcn_udp_set_batch(u, g_batch, cap, TAG), ZCN_OK);
}

/* ---- 1. adopt a bound socket, echo in batches, who owns the fd ---------- */

static void echo(int family)
{
    int fds = t_open_fds();
    ZCN_Loop *l = new_loop();
    int fd = bound(family);
    uint16_t port = port_of(fd);
    ZCN_UdpSocket *u = adopt(l, fd, NULL);
    T_CHECK(zcn_udp_fd(u) == fd);
    T_CHECK(zcn_udp_port(u) == port);
    set_batch(u, BATCH);
    int peer = bound(family);
    const uint32_t count = 100;
    for (uint32_t i = 0; i < count; i++) {
        uint8_t msg[32];
        memset(msg, (int)i, sizeof msg);
        memcpy(msg, &i, 4);
        send_to(peer, family, port, msg, sizeof msg);
    }
    struct got g = {0};
    uint64_t deadline = t_mono_ms() + 5000;
    while (g.datagrams < count && t_mono_ms() < deadline)
        poll_once(l, u, fd, 100, &g, true);
    T_CHECK(g.datagrams == count && !g.out_of_order && g.errors == 0);
    T_CHECK(g.polls_with >= 2); /* 64 per recvmmsg batch, then the next poll */
    /* the echoes go with the next poll's wait */
    poll_once(l, u, fd, 0, &g, false);
    for (uint32_t i = 0; i < count; i++) {
        uint8_t back[64];
        ssize_t n = recv(peer, back, sizeof back, 0);
        T_CHECK(n == 32);
        uint32_t seq;
        memcpy(&seq, back, 4);
        T_CHECK(seq == i);
        T_CHECK(back[31] == (uint8_t)i);
    }
    ZCN_UdpStats st;
    T_CHECK_ERR(zcn_udp_stats(u, &st), ZCN_OK);
    T_CHECK(st.datagrams_received == count && st.datagrams_sent == count);
    T_CHECK(st.sends_zero_copy == count && st.sends_copied == 0);
    /* a second adoption of the same fd is refused; the first is unharmed */
    ZCN_Error err = ZCN_OK;
    T_CHECK(zcn_udp_adopt_on(l, fd, NULL, &err) == NULL);
    T_CHECK_ERR(err, ZCN_ERR_BUSY);
    T_CHECK(fd_open(fd));
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_ERR_BUSY);
    T_CHECK_ERR(zcn_udp_destroy(u), ZCN_OK);
    T_CHECK(!fd_open(fd)); /* the socket owned it */
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    close(peer);
    T_CHECK(t_open_fds() == fds);
    fprintf(stderr, "%s: adopted, %u datagrams in %u polls, echoed from their buffers, "
            "fd closed by destroy\n", family == AF_INET ? "IPv4" : "IPv6", g.datagrams,
            g.polls_with);
}

/* ---- 2. a small array: the rest waits for the next polls, in order ------ */

static void small_array(void)
{
    ZCN_Loop *l = new_loop();
    int fd = bound(AF_INET);
    uint16_t port = port_of(fd);
    ZCN_UdpSocket *u = adopt(l, fd, NULL);
    set_batch(u, 3);
    int peer = bound(AF_INET);
    for (uint32_t i = 0; i < 20; i++)
        send_to(peer, AF_INET, port, &i, 4);
    struct got g = {0};
    uint64_t deadline = t_mono_ms() + 5000;
    while (g.datagrams < 20 && t_mono_ms() < deadline)
        poll_once(l, u, fd, 100, &g, false);
    T_CHECK(g.datagrams == 20 && !g.out_of_order);
    T_CHECK(g.polls_with >= 7); /* 3 a poll at most */
    T_CHECK_ERR(zcn_udp_destroy(u), ZCN_OK);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    close(peer);
    fprintf(stderr, "capacity 3: 20 datagrams in %u polls, in order\n", g.polls_with);
}

/* ---- 3. a large datagram, whole --------------------------------------- */

static void large(void)
{
    ZCN_Loop *l = new_loop();
    int fd = bound(AF_INET6);
    uint16_t port = port_of(fd);
    ZCN_UdpSocket *u = adopt(l, fd, NULL);
    set_batch(u, BATCH);
    int peer = bound(AF_INET6);
    int big = 1 << 20;
    setsockopt(peer, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    static uint8_t payload[60000], back[65536];
    for (size_t i = 0; i < sizeof payload; i++)
        payload[i] = (uint8_t)(i * 7 + 3);
    send_to(peer, AF_INET6, port, payload, sizeof payload);
    struct got g = {0};
    uint64_t deadline = t_mono_ms() + 5000;
    while (g.datagrams < 1 && t_mono_ms() < deadline)
        poll_once(l, u, fd, 100, &g, true);
    T_CHECK(g.datagrams == 1 && g.bytes == sizeof payload);
    poll_once(l, u, fd, 0, &g, false);
    T_CHECK(recv(peer, back, sizeof back, 0) == (ssize_t)sizeof payload);
    T_CHECK(memcmp(back, payload, sizeof payload) == 0);
    ZCN_UdpStats st;
    T_CHECK_ERR(zcn_udp_stats(u, &st), ZCN_OK);
    T_CHECK(st.large_datagrams == 1);
    T_CHECK_ERR(zcn_udp_destroy(u), ZCN_OK);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    close(peer);
    fprintf(stderr, "a 60000-byte datagram over IPv6: whole, echoed\n");
}

/* ---- 4. errors in the array: ICMP port unreachable ---------------------- */

/* A connected, adopted socket whose peer port has nobody. */
static ZCN_UdpSocket *connected_to_nobody(ZCN_Loop *l, int *fd_out)
{
    int gone = bound(AF_INET);
    uint16_t dead = port_of(gone);
    close(gone);
    int fd = bound(AF_INET);
    struct sockaddr_in to = addr4(dead);
    T_CHECK(connect(fd, (struct sockaddr *)&to, sizeof to) == 0);
    ZCN_UdpSocket *u = adopt(l, fd, NULL);
    set_batch(u, BATCH);
    *fd_out = fd;
    return u;
}

static void refused_on_receive(void)
{
    ZCN_Loop *l = new_loop();
    int fd;
    ZCN_UdpSocket *u = connected_to_nobody(l, &fd);
    T_CHECK_ERR(zcn_udp_send(u, (const uint8_t *)"ping", 4), ZCN_OK);
    struct got g = {0};
    uint64_t deadline = t_mono_ms() + 5000;
    while (g.errors == 0 && t_mono_ms() < deadline)
        poll_once(l, u, fd, 100, &g, false);
    T_CHECK(g.errors == 1 && g.last_errno == ECONNREFUSED && g.datagrams == 0);
    ZCN_UdpStats st;
    T_CHECK_ERR(zcn_udp_stats(u, &st), ZCN_OK);
    T_CHECK(st.recv_errors == 1 && st.last_recv_error == ECONNREFUSED);
    /* the socket still works: the next send is sent (and refused again) */
    T_CHECK_ERR(zcn_udp_send(u, (const uint8_t *)"ping", 4), ZCN_OK);
    deadline = t_mono_ms() + 5000;
    while (g.errors < 2 && t_mono_ms() < deadline)
        poll_once(l, u, fd, 100, &g, false);
    T_CHECK(g.errors == 2);
    T_CHECK_ERR(zcn_udp_destroy(u), ZCN_OK);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    fprintf(stderr, "connected to a closed port: ECONNREFUSED in the array, twice\n");
}

static void refused_on_send_outside_poll(void)
{
    ZCN_Loop *l = new_loop();
    int fd;
    ZCN_UdpSocket *u = connected_to_nobody(l, &fd);
    T_CHECK_ERR(zcn_udp_set_autoflush(u, 0), ZCN_OK);
    struct got g = {0};
    poll_once(l, u, fd, 0, &g, false); /* the receive's poll is in the kernel */
    /* The first send goes; its ICMP error waits on the socket (the
     * receive's poll would report it, but only once polled). */
    T_CHECK_ERR(zcn_udp_send(u, (const uint8_t *)"one", 3), ZCN_OK);
    T_CHECK_ERR(zcn_udp_flush(u), ZCN_OK);
    usleep(50 * 1000);
    /* The second send, outside any poll, is the one that meets the error:
     * it is held, and the next poll reports it without waiting. */
    T_CHECK_ERR(zcn_udp_send(u, (const uint8_t *)"two", 3), ZCN_OK);
    T_CHECK_ERR(zcn_udp_flush(u), ZCN_OK);
    ZCN_UdpStats st;
    T_CHECK_ERR(zcn_udp_stats(u, &st), ZCN_OK);
    uint64_t send_errors = st.send_errors;
    uint64_t t0 = t_mono_ms();
    T_CHECK(poll_once(l, u, fd, 3000, &g, false) == 1);
    T_CHECK(t_mono_ms() - t0 < 1000);
    T_CHECK(g.errors == 1 && g.last_errno == ECONNREFUSED);
    T_CHECK_ERR(zcn_udp_stats(u, &st), ZCN_OK);
    /* Whichever of the two met the error, it was reported once. */
    T_CHECK(st.send_errors + st.recv_errors == 1);
    fprintf(stderr, "a send error outside the poll: held, reported by the next poll at once "
            "(%s)\n", send_errors ? "the send's" : "the receive's");
    /* More than ERR_PENDING_MAX held errors: the first 8 are reported.
     * Each round's first send goes and draws the ICMP error; the second
     * meets it. */
    for (int i = 0; i < 10; i++) {
        T_CHECK_ERR(zcn_udp_send(u, (const uint8_t *)"a", 1), ZCN_OK);
        T_CHECK_ERR(zcn_udp_flush(u), ZCN_OK);
        usleep(20 * 1000);
        T_CHECK_ERR(zcn_udp_send(u, (const uint8_t *)"b", 1), ZCN_OK);
        T_CHECK_ERR(zcn_udp_flush(u), ZCN_OK);
    }
    T_CHECK_ERR(zcn_udp_stats(u, &st), ZCN_OK);
    T_CHECK(st.send_errors >= send_errors + 10);
    struct got g2 = {0};
    uint64_t deadline = t_mono_ms() + 500;
    while (t_mono_ms() < deadline)
        poll_once(l, u, fd, 50, &g2, false);
    T_CHECK(g2.errors == 8 && g2.polls_with == 1);
    T_CHECK_ERR(zcn_udp_destroy(u), ZCN_OK);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    fprintf(stderr, "10 refused sends between polls: the first 8 reported\n");
}

/* ---- 5. pause and resume ----------------------------------------------- */

static void pause_resume(void)
{
    ZCN_Loop *l = new_loop();
    int fd = bound(AF_INET);
    uint16_t port = port_of(fd);
    ZCN_UdpSocket *u = adopt(l, fd, NULL);
    set_batch(u, BATCH);
    T_CHECK_ERR(zcn_udp_pause_recv(u), ZCN_OK);
    T_CHECK_ERR(zcn_udp_pause_recv(u), ZCN_OK); /* twice: fine */
    int peer = bound(AF_INET);
    for (uint32_t i = 0; i < 10; i++)
        send_to(peer, AF_INET, port, &i, 4);
    struct got g = {0};
    for (int i = 0; i < 10; i++)
        poll_once(l, u, fd, 20, &g, false);
    T_CHECK(g.datagrams == 0);
    T_CHECK_ERR(zcn_udp_resume_recv(u), ZCN_OK);
    T_CHECK_ERR(zcn_udp_resume_recv(u), ZCN_OK);
    uint64_t deadline = t_mono_ms() + 5000;
    while (g.datagrams < 10 && t_mono_ms() < deadline)
        poll_once(l, u, fd, 100, &g, false);
    T_CHECK(g.datagrams == 10 && !g.out_of_order);
    /* paused while datagrams are on their way in the same poll: the next
     * poll holds none, resume gets them */
    for (uint32_t i = 10; i < 15; i++)
        send_to(peer, AF_INET, port, &i, 4);
    T_CHECK_ERR(zcn_udp_pause_recv(u), ZCN_OK);
    for (int i = 0; i < 5; i++)
        poll_once(l, u, fd, 20, &g, false);
    T_CHECK(g.datagrams == 10);
    T_CHECK_ERR(zcn_udp_resume_recv(u), ZCN_OK);
    deadline = t_mono_ms() + 5000;
    while (g.datagrams < 15 && t_mono_ms() < deadline)
        poll_once(l, u, fd, 100, &g, false);
    T_CHECK(g.datagrams == 15 && !g.out_of_order);
    T_CHECK_ERR(zcn_udp_destroy(u), ZCN_OK);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    close(peer);
    fprintf(stderr, "pause: nothing read; resume: every datagram, in order\n");
}

/* ---- 6. callback mode while batch mode is on; turning it off ------------ */

static uint32_t g_calls;

static void on_datagram(void *ud, const struct sockaddr *peer, socklen_t peer_len,
                        const uint8_t *data, size_t len, uint32_t flags)
{
    (void)ud;
    (void)peer;
    (void)peer_len;
    (void)data;
    (void)len;
    (void)flags;
    g_calls++;
}

static void modes(void)
{
    ZCN_Loop *l = new_loop();
    int fd = bound(AF_INET);
    uint16_t port = port_of(fd);
    ZCN_UdpSocket *u = adopt(l, fd, NULL);
    T_CHECK_ERR(zcn_udp_set_callback(u, NULL, on_datagram), ZCN_OK);
    set_batch(u, BATCH);
    int peer = bound(AF_INET);
    send_to(peer, AF_INET, port, "cb", 2);
    uint64_t deadline = t_mono_ms() + 5000;
    while (g_calls < 1 && t_mono_ms() < deadline)
        T_CHECK_ERR(zcn_loop_run_once_timeout(l, 50, NULL), ZCN_OK);
    T_CHECK(g_calls == 1);
    /* polled: the batch, not the callback */
    send_to(peer, AF_INET, port, "b1", 2);
    struct got g = {0};
    deadline = t_mono_ms() + 5000;
    while (g.datagrams < 1 && t_mono_ms() < deadline)
        poll_once(l, u, fd, 100, &g, false);
    T_CHECK(g.datagrams == 1 && g_calls == 1);
    ZCN_UdpStats st;
    T_CHECK_ERR(zcn_udp_stats(u, &st), ZCN_OK);
    T_CHECK(st.buffers_in_use == 1); /* lent to that batch */
    /* off: what the batch lent comes back at once */
    T_CHECK_ERR(zcn_udp_set_batch(u, NULL, 0, 0), ZCN_OK);
    T_CHECK_ERR(zcn_udp_stats(u, &st), ZCN_OK);
    T_CHECK(st.buffers_in_use == 0);
    send_to(peer, AF_INET, port, "b2", 2);
    deadline = t_mono_ms() + 5000;
    while (g_calls < 2 && t_mono_ms() < deadline)
        poll_once(l, u, fd, 100, &g, false);
    T_CHECK(g_calls == 2 && g.datagrams == 1);
    T_CHECK_ERR(zcn_udp_destroy(u), ZCN_OK);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    close(peer);
    fprintf(stderr, "batch mode: callbacks under zcn_loop_run*, the array under "
            "zcn_loop_poll; off gives the lent buffers back\n");
}

/* ---- 7. unbound and connected-at-adoption sockets, options --------------- */

static void other_sockets(void)
{
    ZCN_Loop *l = new_loop();
    /* unbound: the kernel binds it at the first send; replies arrive */
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    T_CHECK(fd >= 0);
    ZCN_UdpConfig cfg = {.rcvbuf = 1 << 20, .flags = ZCN_UDP_BROADCAST};
    ZCN_UdpSocket *u = adopt(l, fd, &cfg);
    T_CHECK(zcn_udp_port(u) == 0);
    int on = 0;
    socklen_t len = sizeof on;
    T_CHECK(getsockopt(fd, SOL_SOCKET, SO_BROADCAST, &on, &len) == 0 && on == 1);
    set_batch(u, BATCH);
    int peer = bound(AF_INET);
    struct sockaddr_in to = addr4(port_of(peer));
    T_CHECK_ERR(zcn_udp_sendto(u, (struct sockaddr *)&to, sizeof to, (const uint8_t *)"hi", 2),
                ZCN_OK);
    struct sockaddr_in from;
    socklen_t flen = sizeof from;
    char buf[8];
    T_CHECK(recvfrom(peer, buf, sizeof buf, 0, (struct sockaddr *)&from, &flen) == 2);
    T_CHECK(sendto(peer, "ok", 2, 0, (struct sockaddr *)&from, flen) == 2);
    struct got g = {0};
    uint64_t deadline = t_mono_ms() + 5000;
    while (g.datagrams < 1 && t_mono_ms() < deadline)
        poll_once(l, u, fd, 100, &g, false);
    T_CHECK(g.datagrams == 1);
    /* zcn_udp_send needs a peer: this one has none */
    T_CHECK_ERR(zcn_udp_send(u, (const uint8_t *)"x", 1), (ZCN_Error)EDESTADDRREQ);
    T_CHECK_ERR(zcn_udp_destroy(u), ZCN_OK);
    T_CHECK(!fd_open(fd));

    /* connected before adoption: zcn_udp_send reaches the peer */
    fd = bound(AF_INET);
    to = addr4(port_of(peer));
    T_CHECK(connect(fd, (struct sockaddr *)&to, sizeof to) == 0);
    u = adopt(l, fd, NULL);
    T_CHECK_ERR(zcn_udp_send(u, (const uint8_t *)"conn", 4), ZCN_OK);
    T_CHECK(recv(peer, buf, sizeof buf, 0) == 4 && memcmp(buf, "conn", 4) == 0);
    T_CHECK_ERR(zcn_udp_destroy(u), ZCN_OK);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    close(peer);
    fprintf(stderr, "unbound (bound by its first send) and connected sockets adopted\n");
}

/* ---- 8. bad input: the fd stays the caller's ----------------------------- */

static void refuse(ZCN_Loop *l, int fd, const ZCN_UdpConfig *cfg, ZCN_Error expected)
{
    ZCN_Error err = ZCN_OK;
    T_CHECK(zcn_udp_adopt_on(l, fd, cfg, &err) == NULL);
    T_CHECK_ERR(err, expected);
    if (fd >= 0 && expected != (ZCN_Error)EBADF)
        T_CHECK(fd_open(fd));
}

static void bad_input(void)
{
    int fds = t_open_fds();
    ZCN_Loop *l = new_loop();
    int udp = bound(AF_INET);
    refuse(NULL, udp, NULL, ZCN_ERR_INVALID_ARGUMENT);
    refuse(l, -1, NULL, ZCN_ERR_INVALID_ARGUMENT);
    int tcp = socket(AF_INET, SOCK_STREAM, 0);
    refuse(l, tcp, NULL, ZCN_ERR_INVALID_ARGUMENT);
    int unix_dgram = socket(AF_UNIX, SOCK_DGRAM, 0);
    refuse(l, unix_dgram, NULL, ZCN_ERR_INVALID_ARGUMENT);
    int ping = socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP); /* may be refused: ping_group_range */
    if (ping >= 0)
        refuse(l, ping, NULL, ZCN_ERR_INVALID_ARGUMENT);
    int pipefd[2];
    T_CHECK(pipe(pipefd) == 0);
    refuse(l, pipefd[0], NULL, (ZCN_Error)ENOTSOCK);
    int closed = dup(udp);
    close(closed);
    refuse(l, closed, NULL, (ZCN_Error)EBADF);
    ZCN_UdpConfig cfg = {.address = "127.0.0.1"};
    refuse(l, udp, &cfg, ZCN_ERR_INVALID_ARGUMENT);
    cfg = (ZCN_UdpConfig){.port = 9};
    refuse(l, udp, &cfg, ZCN_ERR_INVALID_ARGUMENT);
    cfg = (ZCN_UdpConfig){.connect_address = "127.0.0.1", .connect_port = 9};
    refuse(l, udp, &cfg, ZCN_ERR_INVALID_ARGUMENT);
    cfg = (ZCN_UdpConfig){.buffer_count = 1};
    refuse(l, udp, &cfg, ZCN_ERR_INVALID_ARGUMENT);
    cfg = (ZCN_UdpConfig){.flags = ZCN_UDP_V6ONLY}; /* not IPv6: ignored, as on create */
    ZCN_Error err = ZCN_OK;
    ZCN_UdpSocket *u = zcn_udp_adopt_on(l, udp, &cfg, &err);
    T_CHECK(u != NULL);

    /* batch mode and flow control */
    T_CHECK_ERR(zcn_udp_set_batch(NULL, g_batch, 1, 0), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_udp_set_batch(u, NULL, 1, 0), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_udp_set_batch(u, g_batch, 0, 0), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_udp_set_batch(u, NULL, 0, 0), ZCN_OK); /* off while off */
    T_CHECK_ERR(zcn_udp_pause_recv(NULL), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_udp_resume_recv(NULL), ZCN_ERR_INVALID_ARGUMENT);
    ZCN_UdpConfig ms = {.recv_mode = ZCN_UDP_RECV_MULTISHOT};
    int fd2 = bound(AF_INET);
    ZCN_UdpSocket *m = zcn_udp_adopt_on(l, fd2, &ms, &err);
    T_CHECK(m != NULL);
    T_CHECK_ERR(zcn_udp_set_batch(m, g_batch, BATCH, 0), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_udp_pause_recv(m), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_udp_resume_recv(m), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_udp_destroy(m), ZCN_OK);
    ZCN_UdpConfig own = {.address = "127.0.0.1"};
    ZCN_UdpSocket *o = zcn_udp_create(&own, &err);
    T_CHECK(o != NULL);
    T_CHECK_ERR(zcn_udp_set_batch(o, g_batch, BATCH, 0), ZCN_ERR_INVALID_ARGUMENT);
    T_CHECK_ERR(zcn_udp_pause_recv(o), ZCN_OK); /* on its own ring too */
    T_CHECK_ERR(zcn_udp_resume_recv(o), ZCN_OK);
    T_CHECK_ERR(zcn_udp_destroy(o), ZCN_OK);
    T_CHECK_ERR(zcn_udp_destroy(u), ZCN_OK);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    close(tcp);
    close(unix_dgram);
    if (ping >= 0)
        close(ping);
    close(pipefd[0]);
    close(pipefd[1]);
    T_CHECK(t_open_fds() == fds);
    fprintf(stderr, "bad input refused, the fd left open and the caller's\n");
}

/* ---- 9. many adopted sockets, the loop's limit --------------------------- */

static void limit(void)
{
    ZCN_Loop *l = new_loop();
    ZCN_UdpSocket *socks[64];
    ZCN_UdpConfig small = {.buffer_count = 8, .flags = ZCN_UDP_SMALL_ONLY};
    for (int i = 0; i < 64; i++)
        socks[i] = adopt(l, bound(AF_INET), &small);
    int extra = bound(AF_INET);
    refuse(l, extra, &small, ZCN_ERR_EXHAUSTED);
    for (int i = 0; i < 64; i++)
        T_CHECK_ERR(zcn_udp_destroy(socks[i]), ZCN_OK);
    ZCN_UdpSocket *u = adopt(l, extra, &small);
    T_CHECK_ERR(zcn_udp_destroy(u), ZCN_OK);
    T_CHECK_ERR(zcn_loop_destroy(l), ZCN_OK);
    fprintf(stderr, "64 sockets a loop: the 65th is refused (EXHAUSTED), its fd kept\n");
}

int main(void)
{
    t_require_loop();
    echo(AF_INET);
    echo(AF_INET6);
    small_array();
    large();
    refused_on_receive();
    refused_on_send_outside_poll();
    pause_resume();
    modes();
    other_sockets();
    bad_input();
    limit();
    fprintf(stderr, "PASS\n");
    return T_EXIT_PASS;
}
