/* UDP sockets: two ways to receive into pool buffers, sends from pool
 * buffers (copied, moved from a receive, or handed over by the user), on
 * the socket's own ring or on a TCP server's.
 *
 * Receiving (ZCN_UdpConfig.recv_mode):
 * - readiness (the default): recvmmsg(MSG_DONTWAIT) reads up to RX_BATCH
 *   datagrams straight into pool buffers held ready in rx_bid[]. A full
 *   batch asks for another turn with a NOP (OP_RECV index RX_MORE), so sends
 *   and other sources get their turn between batches; a short one means the
 *   socket is empty, and only then is a one-shot poll armed. (A multishot
 *   poll would stay on the socket's wait queue, where every datagram we send
 *   wakes it from sock_wfree: measurably dearer than one poll per drain.)
 * - multishot: a multishot recvmsg on a provided-buffer ring built from the
 *   pool. No system call per batch, but a CQE and a wake-up per datagram;
 *   slightly dearer than readiness on Linux 6.18 (docs/PERFORMANCE.md).
 *
 * Sending: a turn's sends queue in tx_msgs and go to the kernel with one
 * sendmmsg (at the end of the loop's turn, or at once outside callbacks
 * with autoflush); a UDP send completes in that call, so the buffer is
 * free again right after it. Runs of datagrams to the same peer with the
 * same size share one tx_msgs entry, a UDP GSO send (UDP_SEGMENT): the
 * kernel does the route, IP and device work once for the run and cuts it
 * into the same datagrams the peer would have got one by one. Only when
 * the socket buffer is full (EAGAIN) do the rest become io_uring SENDs,
 * which wait for room; while any is in flight, later sends follow them
 * there so datagrams leave in order. (An io_uring SEND per datagram would
 * add an SQE, a CQE and task work to the same kernel send.)
 *
 * Receive buffer layout, the same for both:
 *   [16 bytes: io_uring_recvmsg_out][peer name NAME_BYTES][payload]
 * so the payload always starts ZCN_UDP_HEADROOM bytes into the buffer.
 *
 * Large datagrams: besides its buffer_count small buffers a socket has
 * large ones (ZCN_UDP_LARGE_BUFFER_SIZE, any datagram fits) in the same
 * slab, after the small ones; buffer ids run on, small ones first. A
 * readiness read cannot know a datagram's size before recvmmsg consumes
 * it, so each receive slot reads into two iovecs: its small buffer, then
 * the rest of a large buffer parked behind the slot (its "spill"). A
 * datagram that fits the small buffer never touches the spill; one that
 * does not continues into the spill, and its first bytes (the small
 * buffer's room) are copied in front of the rest there, so it is handed
 * over whole and contiguous in the large buffer, and the slot takes a new
 * spill. The spills' pages stay untouched, so unused address space, until
 * a large datagram comes. The multishot receive cannot do this (the kernel
 * picks one ring buffer before it sees the datagram): there, as with
 * ZCN_UDP_SMALL_ONLY, a datagram over buffer_size arrives truncated. In
 * both modes a copied send over buffer_size goes from a large buffer.
 *
 * A buffer's life: ring -> received (refs = 1 while lent to the callback or
 * poll batch) -> maybe referenced by sends -> back to the ring (or the pool,
 * which keeps a reserve for copied sends) when the last reference drops.
 *
 * SQE user_data: zcn_source_ud(source_id, tag) with tag = op | gen | index.
 * On a server's ring a destroyed socket's completions must never reach the
 * socket that takes its source id (and buffer group) next: destroy cancels
 * its requests, waits for the kernel to let go of them, and retires the
 * completions already posted but not yet reaped (retire_posted); it gives
 * the source id up only once every request's last completion is accounted
 * for (kernel_reqs), lingering until the server's loop has reaped the rest
 * when that cannot be done at once. gen, 6 bits, is a second line only.
 */
#include "internal.h"

#include <liburing.h>

#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103 /* Linux 4.18, linux/udp.h */
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef SO_MEMINFO
#define SO_MEMINFO 55 /* Linux 4.12 */
#endif
#define SK_MEMINFO_DROPS 8 /* index in the SO_MEMINFO array (linux/sock_diag.h) */
#define SK_MEMINFO_VARS 9

#define NAME_BYTES 32u          /* >= sizeof(struct sockaddr_in6), 8-aligned */
#define LARGE_DEFAULT 16u       /* large_buffer_count 0 */
#define CQE_BATCH 256u          /* completions handled per wait */
#define OWN_BGID 0              /* buffer group on a socket's own ring */
#define RING_START 64u          /* buffers in the receive ring at first */
#define RX_BATCH 64u            /* datagrams per recvmmsg (readiness mode) */
#define RX_MORE 1u              /* OP_RECV index of the read-on NOP */
#define TX_BATCH 64u            /* datagrams per sendmmsg */
/* UDP GSO limits: segments per send (UDP_MAX_SEGMENTS is 64 before Linux
 * 6.9) and payload bytes per send (the IP length field's 64 KiB, minus
 * headers, with room to spare for IPv6 extension headers). */
#define GSO_SEGMENTS_MAX 64u
#define GSO_BYTES_MAX 65000u
#define GSO_CTL_BYTES CMSG_SPACE(sizeof(uint16_t))
#define NIL (-1)

/* Room between the peer name and the payload (the msghdr's control area in
 * multishot mode; unused with recvmmsg). */
#define GAP_BYTES (ZCN_UDP_HEADROOM - sizeof(struct io_uring_recvmsg_out) - NAME_BYTES)
_Static_assert(ZCN_UDP_HEADROOM >= sizeof(struct io_uring_recvmsg_out) + NAME_BYTES,
               "ZCN_UDP_HEADROOM must hold the recvmsg header and name");
_Static_assert(NAME_BYTES >= sizeof(struct sockaddr_in6), "name room");
_Static_assert(ZCN_UDP_LARGE_BUFFER_SIZE % ZCN_PAGE_SIZE == 0 &&
               ZCN_UDP_LARGE_BUFFER_SIZE - ZCN_PAGE_SIZE <
                   ZCN_UDP_DATAGRAM_MAX_V6 + ZCN_UDP_HEADROOM &&
               ZCN_UDP_LARGE_BUFFER_SIZE >= ZCN_UDP_DATAGRAM_MAX_V6 + ZCN_UDP_HEADROOM,
               "a large buffer is the fewest pages any datagram fits in");

#define WAKE_PIPE 1u /* OP_WAKE index of the wakeup pipe's poll */

enum op {
    OP_IGNORE = 0, /* cancels: the result does not matter */
    OP_RECV = 1,
    OP_SEND = 2,
    OP_WAKE = 3,       /* index 0: the stop eventfd; 1: the wakeup pipe */
};

union peer_addr {
    struct sockaddr sa;
    struct sockaddr_in in4;
    struct sockaddr_in6 in6;
};

/* One queued or in-flight send. The kernel reads the address when the
 * batch is sent (or the SQE issued), which may be after the call that
 * queued it, so it lives here until the completion. */
struct send_slot {
    union peer_addr addr;
    uint32_t bid;
    int32_t next; /* free list */
    bool async;   /* went to io_uring (the socket buffer was full) */
};

struct ZCN_UdpSocket {
    zcn_source src; /* handle_cqe for the server's loop */
    ZCN_Server *server;     /* NULL: the socket has its own ring */
    uint32_t source_id;
    uint32_t gen;           /* 6 bits, see tag() */
    ZCN_Ring *ring_handle;  /* own ring only */
    struct io_uring *ring;

    int fd;
    int family;
    uint16_t port;
    bool connected;

    ZCN_BufferPool *pool;
    uint8_t *slab;
    size_t buffer_size;     /* bytes per pool buffer */
    uint32_t buffer_count;
    struct zcn_buf_meta *meta; /* small buffers, then large ones */
    /* Large buffers: ids buffer_count .. + large_count - 1, at large_slab
     * (right after the small ones unless the caller's memory held only
     * those). large_count = 0: small only. */
    ZCN_BufferPool *large_pool;
    uint8_t *large_slab;
    uint32_t large_count;
    uint32_t large_free;    /* in large_pool */
    uint8_t *own_map;       /* the mapping we made for the slab(s), or NULL */
    size_t own_map_bytes;

    struct zcn_bufring rx;  /* the receive ring, group bgid */
    uint16_t bgid;
    uint32_t br_target;     /* keep this many in the ring (grows after ENOBUFS) */
    uint32_t br_max;        /* the ring's capacity: buffers minus the send reserve */

    uint32_t recv_mode;     /* ZCN_UDP_RECV_READINESS or _MULTISHOT */
    struct msghdr rmsg;     /* recvmsg template: only the sizes matter */
    bool recv_armed;        /* the multishot recvmsg or poll is in the kernel */

    /* readiness mode: recvmmsg slot i reads into buffer rx_bid[i] (iovec
     * 2i), then, with large_rx, into the spill rx_spill[i] (iovec 2i + 1) */
    struct mmsghdr rx_msgs[RX_BATCH];
    struct iovec rx_iov[2 * RX_BATCH];
    int32_t rx_bid[RX_BATCH]; /* NIL: the slot holds no buffer */
    int32_t rx_spill[RX_BATCH]; /* a large buffer, or NIL */
    uint32_t rx_slots;      /* slots in use: min(RX_BATCH, br_max) */
    uint32_t rx_held;       /* slots holding a buffer */
    uint32_t rx_spills;     /* slots holding a spill */
    bool large_rx;          /* datagrams over buffer_size are read whole */
    bool rx_more;           /* the read-on NOP is queued */
    bool rx_idle;           /* the socket was drained: wait for POLLIN */
    bool rx_resume;         /* reading stopped early (no buffer or SQE): read
                               on once maybe_rearm can queue the NOP */
    bool started;           /* ring enabled and receiving */
    bool destroying;
    /* Receive and send requests the kernel holds: SQE taken (get_sqe), its
     * last completion (no IORING_CQE_F_MORE) not yet seen. On a server the
     * source id and bgid are given up only when this is 0 (retire). */
    uint32_t kernel_reqs;
    bool lingering;         /* destroyed, waiting for kernel_reqs to reach 0 */
    uint64_t test_stale;    /* completions of another generation that reached us */

    struct send_slot *slots;
    uint32_t slots_max;
    int32_t slot_free;
    uint32_t sends_inflight;  /* queued in tx_msgs or in io_uring */
    uint32_t sends_async;     /* of those, in io_uring */
    /* The turn's sends: datagram i is tx_iov[i] in send slot tx_slot[i];
     * tx_msgs[g] sends datagrams tx_first[g] .. + msg_iovlen - 1, several
     * of them as one UDP GSO send (cmsg in tx_ctl[tx_first[g]]). */
    struct mmsghdr tx_msgs[TX_BATCH];
    struct iovec tx_iov[TX_BATCH];
    uint32_t tx_slot[TX_BATCH];
    uint32_t tx_first[TX_BATCH];
    union {
        struct cmsghdr align;
        uint8_t bytes[GSO_CTL_BYTES];
    } tx_ctl[TX_BATCH];
    uint32_t tx_n;            /* datagrams queued */
    uint32_t tx_groups;       /* sendmmsg entries */
    uint32_t tx_group_bytes;  /* payload bytes of the last entry */
    uint32_t gso_size_max;    /* coalesce datagrams up to this size; 0 = GSO off */
    bool test_full_sndbuf;    /* zcn_udp_test_full_sndbuf */
    int test_gso_errno;       /* zcn_udp_test_fail_gso */
    uint32_t test_sqe_failures; /* zcn_udp_test_fail_sqes */
    bool autoflush;
    bool unsubmitted;       /* SQEs queued since the last submit */

    int wake_fd;
    bool wake_armed;
    struct zcn_wakeup_pipe wakeup;
    _Atomic int stop_requested;
    int live_slot;              /* zcn_live registry entry (safe stop); -1 if none */
    pthread_t owner;
    bool owner_set;

    int in_callback;
    void *user_data;
    ZCN_OnDatagram on_datagram;
    ZCN_UdpEvent *ev;       /* poll mode: events go here */
    uint32_t ev_cap;
    uint32_t ev_n;
    int32_t lent_head;      /* buffers lent to the current poll batch */

    ZCN_UdpStats stats;
};

static _Atomic uint32_t next_gen;
static _Atomic uint32_t lingering_sockets; /* zcn_udp_test_lingering */

/* ------------------------------------------------------------------ */
/* small helpers                                                       */
/* ------------------------------------------------------------------ */

/* tag (24 bits) = op (2) | gen (6) | index (16). */
static inline uint64_t make_ud(const ZCN_UdpSocket *u, enum op op, uint32_t index)
{
    uint32_t tag = ((uint32_t)op << 22) | ((u->gen & 0x3fu) << 16) | (index & 0xffffu);
    return zcn_source_ud(u->source_id, tag);
}

static inline enum op tag_op(uint32_t tag)
{
    return (enum op)(tag >> 22);
}

static inline uint32_t tag_gen(uint32_t tag)
{
    return (tag >> 16) & 0x3fu;
}

static inline uint32_t tag_index(uint32_t tag)
{
    return tag & 0xffffu;
}

static inline bool is_large(const ZCN_UdpSocket *u, uint32_t bid)
{
    return bid >= u->buffer_count;
}

static inline uint8_t *buf_ptr(const ZCN_UdpSocket *u, uint32_t bid)
{
    if (ZCN_UNLIKELY(is_large(u, bid)))
        return u->large_slab + (size_t)(bid - u->buffer_count) * ZCN_UDP_LARGE_BUFFER_SIZE;
    return u->slab + (size_t)bid * u->buffer_size;
}

static inline size_t buf_bytes(const ZCN_UdpSocket *u, uint32_t bid)
{
    return is_large(u, bid) ? ZCN_UDP_LARGE_BUFFER_SIZE : u->buffer_size;
}

static inline size_t datagram_max(const ZCN_UdpSocket *u)
{
    return u->family == AF_INET6 ? ZCN_UDP_DATAGRAM_MAX_V6 : ZCN_UDP_DATAGRAM_MAX_V4;
}

static void callback_enter(ZCN_UdpSocket *u)
{
    u->in_callback++;
    if (u->server != NULL)
        zcn_server_callback_enter(u->server);
}

static void callback_leave(ZCN_UdpSocket *u)
{
    if (u->server != NULL)
        zcn_server_callback_leave(u->server);
    u->in_callback--;
}

/* Sends and loop calls come from one thread: the ring's SQ has no lock, and
 * a SINGLE_ISSUER ring refuses other submitters. */
static ZCN_Error owner_check(ZCN_UdpSocket *u)
{
    if (u->server != NULL)
        return ZCN_OK; /* the server's owner rules apply */
    if (!u->owner_set) {
        u->owner = pthread_self();
        u->owner_set = true;
        return ZCN_OK;
    }
    if (!pthread_equal(u->owner, pthread_self()))
        return zcn_fail(ZCN_ERR_WRONG_THREAD, "the UDP socket is driven by another thread "
                        "(the first one that ran its loop or sent)");
    return ZCN_OK;
}

/* An SQE for a receive or send request of this socket (counted in
 * kernel_reqs until its last completion); NULL when the SQ
 * stays full even after a submit (the caller retries from maybe_rearm,
 * which runs after each of the socket's completions and, on a server,
 * before each wait of the server's loop). */
static struct io_uring_sqe *get_sqe(ZCN_UdpSocket *u)
{
    if (ZCN_UNLIKELY(u->test_sqe_failures > 0)) {
        u->test_sqe_failures--;
        return NULL;
    }
    struct io_uring_sqe *sqe = zcn_get_sqe(u->ring);
    if (sqe != NULL)
        u->kernel_reqs++;
    return sqe;
}

/* ------------------------------------------------------------------ */
/* buffers                                                             */
/* ------------------------------------------------------------------ */

static void ring_add(ZCN_UdpSocket *u, uint32_t bid)
{
    zcn_bufring_add(&u->rx, bid);
    u->meta[bid].state = ZCN_BUF_RING;
    u->meta[bid].refs = 0;
}

/* Publishing is one release store; done per recycle batch so a shared
 * server's loop (which does not know our ring) never waits on it. */
static inline void ring_publish(ZCN_UdpSocket *u)
{
    zcn_bufring_publish(&u->rx);
}

static void arm_recv(ZCN_UdpSocket *u);

/* A buffer nobody refers to: refill the ring first, then the pool (a LIFO
 * stack, so the next buffer taken from it is the warmest). */
static void recycle(ZCN_UdpSocket *u, uint32_t bid)
{
    if (ZCN_UNLIKELY(is_large(u, bid))) {
        u->meta[bid].state = ZCN_BUF_POOL;
        zcn_pool_release(u->large_pool, buf_ptr(u, bid));
        u->large_free++;
        return;
    }
    if (u->rx.count < u->br_target && !u->destroying) {
        ring_add(u, bid);
        return;
    }
    u->meta[bid].state = ZCN_BUF_POOL;
    zcn_pool_release(u->pool, buf_ptr(u, bid));
}

static inline void buf_unref(ZCN_UdpSocket *u, uint32_t bid)
{
    if (--u->meta[bid].refs == 0)
        recycle(u, bid);
}

static inline int64_t buf_take(ZCN_UdpSocket *u)
{
    return zcn_buf_take(u->pool, u->slab, u->buffer_size);
}

/* A large buffer's id, or -1 when none is free. */
static int64_t large_take(ZCN_UdpSocket *u)
{
    if (u->large_free == 0)
        return -1;
    int64_t i = zcn_buf_take(u->large_pool, u->large_slab, ZCN_UDP_LARGE_BUFFER_SIZE);
    if (i < 0)
        return -1;
    u->large_free--;
    return u->buffer_count + i;
}

static void queue_read_on(ZCN_UdpSocket *u);
static uint32_t fill_slots(ZCN_UdpSocket *u, uint32_t want);

/* Resumes receiving where it stopped for want of a buffer or an SQE:
 * readiness mode reads on (or polls again), multishot mode refills its
 * ring and re-arms the receive once it has ended. Runs after each of the
 * socket's completions, at each turn of its own loop and, on a server,
 * before each wait of the server's loop (flush_source); with nothing to
 * resume it costs a few branches. */
static void maybe_rearm(ZCN_UdpSocket *u)
{
    if (u->recv_mode == ZCN_UDP_RECV_READINESS) {
        if (!u->started || u->destroying)
            return;
        /* Buffers came back (or an SQE is free again) after a stop. */
        if (u->rx_resume && !u->rx_more && fill_slots(u, 1) > 0) {
            u->rx_resume = false;
            queue_read_on(u);
        }
        if (u->rx_idle && !u->recv_armed)
            arm_recv(u);
        return;
    }
    while (u->rx.count < u->br_target && !u->destroying) {
        int64_t bid = buf_take(u);
        if (bid < 0)
            break;
        ring_add(u, (uint32_t)bid);
    }
    ring_publish(u);
    if (u->started && !u->recv_armed && !u->destroying && u->rx.count > 0)
        arm_recv(u);
}

/* Ends the previous poll batch: its lent buffers come back. */
static void end_batch(ZCN_UdpSocket *u)
{
    while (u->lent_head != NIL) {
        uint32_t bid = (uint32_t)u->lent_head;
        u->lent_head = u->meta[bid].next;
        buf_unref(u, bid);
    }
}

/* ------------------------------------------------------------------ */
/* receiving                                                           */
/* ------------------------------------------------------------------ */

static void arm_recv(ZCN_UdpSocket *u)
{
    struct io_uring_sqe *sqe = get_sqe(u);
    if (sqe == NULL)
        return; /* retried by maybe_rearm */
    if (u->recv_mode == ZCN_UDP_RECV_READINESS) {
        io_uring_prep_poll_add(sqe, u->fd, POLLIN);
        io_uring_sqe_set_data64(sqe, make_ud(u, OP_RECV, 0));
        u->recv_armed = true;
        u->unsubmitted = true;
        return;
    }
    /* MSG_TRUNC makes the kernel report the datagram's real size in
     * io_uring_recvmsg_out.payloadlen while copying only what fits. */
    io_uring_prep_recvmsg_multishot(sqe, u->fd, &u->rmsg, MSG_TRUNC);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = u->bgid;
    io_uring_sqe_set_data64(sqe, make_ud(u, OP_RECV, 0));
    u->recv_armed = true;
    u->unsubmitted = true;
}

static void emit_event(ZCN_UdpSocket *u, uint32_t bid, const void *peer, uint32_t peer_len,
                       const uint8_t *data, uint32_t len, uint32_t full_len, uint32_t flags)
{
    ZCN_UdpEvent *e = &u->ev[u->ev_n++];
    e->len = len;
    e->flags = flags;
    e->peer_len = peer_len;
    e->full_len = full_len;
    e->offset = (uint64_t)(data - u->slab);
    e->data = data;
    memset(e->peer, 0, sizeof e->peer);
    memcpy(e->peer, peer, peer_len);
    u->meta[bid].next = u->lent_head;
    u->lent_head = (int32_t)bid;
}

/* Hands one received buffer (refs 1) to the user: len bytes of a datagram
 * of full_len, room the bytes the buffer had for it. */
static void hand_over(ZCN_UdpSocket *u, uint32_t bid, const void *peer, uint32_t peer_len,
                      uint32_t len, uint32_t full_len, bool truncated)
{
    const uint8_t *data = buf_ptr(u, bid) + ZCN_UDP_HEADROOM;
    uint32_t flags = truncated || full_len > len ? ZCN_UDP_TRUNCATED : 0;
    if (peer_len > NAME_BYTES)
        peer_len = NAME_BYTES;
    u->stats.datagrams_received++;
    u->stats.bytes_received += len;
    if (flags & ZCN_UDP_TRUNCATED)
        u->stats.truncated++;
    if (u->ev != NULL) {
        emit_event(u, bid, peer, peer_len, data, len, full_len, flags);
        return;
    }
    if (u->on_datagram != NULL) {
        callback_enter(u);
        u->on_datagram(u->user_data, peer, (socklen_t)peer_len, data, len, flags);
        callback_leave(u);
    }
    buf_unref(u, bid);
}

/* A multishot recvmsg completion's buffer. */
static void deliver(ZCN_UdpSocket *u, uint32_t bid, int res)
{
    struct io_uring_recvmsg_out *o = io_uring_recvmsg_validate(buf_ptr(u, bid), res, &u->rmsg);
    if (o == NULL) { /* cannot happen: the kernel always writes the header */
        u->stats.recv_errors++;
        buf_unref(u, bid);
        return;
    }
    uint32_t room = (uint32_t)res - ZCN_UDP_HEADROOM;
    uint32_t len = o->payloadlen < room ? o->payloadlen : room;
    hand_over(u, bid, io_uring_recvmsg_name(o), o->namelen, len, o->payloadlen,
              (o->flags & MSG_TRUNC) != 0);
}

/* Readiness mode: makes the first `want` slots hold a buffer (and, with
 * large_rx, a spill); returns how many leading slots do (fewer when a
 * pool is empty: a slot without a spill would cut a large datagram). */
static uint32_t fill_slots(ZCN_UdpSocket *u, uint32_t want)
{
    for (uint32_t i = 0; i < want; i++) {
        if (u->rx_bid[i] == NIL) {
            int64_t bid = buf_take(u);
            if (bid < 0)
                return i;
            uint8_t *buf = buf_ptr(u, (uint32_t)bid);
            u->meta[bid].state = ZCN_BUF_RING; /* reserved for a receive */
            u->meta[bid].refs = 0;
            u->rx_bid[i] = (int32_t)bid;
            u->rx_held++;
            u->rx_iov[2 * i].iov_base = buf + ZCN_UDP_HEADROOM;
            u->rx_iov[2 * i].iov_len = u->buffer_size - ZCN_UDP_HEADROOM;
            u->rx_msgs[i].msg_hdr.msg_name = buf + sizeof(struct io_uring_recvmsg_out);
        }
        if (u->large_rx && u->rx_spill[i] == NIL) {
            int64_t bid = large_take(u);
            if (bid < 0)
                return i;
            u->meta[bid].state = ZCN_BUF_RING;
            u->meta[bid].refs = 0;
            u->rx_spill[i] = (int32_t)bid;
            u->rx_spills++;
            /* The rest of the datagram lands where it will follow its
             * first buffer_size - HEADROOM bytes once they are copied in. */
            size_t room = u->buffer_size - ZCN_UDP_HEADROOM;
            u->rx_iov[2 * i + 1].iov_base = buf_ptr(u, (uint32_t)bid) + ZCN_UDP_HEADROOM + room;
            u->rx_iov[2 * i + 1].iov_len = datagram_max(u) - room;
        }
    }
    return want;
}

/* Queues the NOP whose completion makes the loop read on (OP_RECV, RX_MORE):
 * it comes back on whichever ring and loop the socket runs in. */
static void queue_read_on(ZCN_UdpSocket *u)
{
    if (u->rx_more)
        return;
    struct io_uring_sqe *sqe = get_sqe(u);
    if (sqe == NULL) {
        u->rx_resume = true;
        return;
    }
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, make_ud(u, OP_RECV, RX_MORE));
    u->rx_more = true;
    u->unsubmitted = true;
}

/* Readiness mode: slot i's datagram of `full` bytes did not fit its small
 * buffer and went on into its spill. The small buffer's part (and the peer
 * name) is copied in front of the rest, the large buffer is handed over,
 * and the small one stays in the slot for the next read. */
static void deliver_spill(ZCN_UdpSocket *u, uint32_t i, uint32_t full)
{
    const struct msghdr *h = &u->rx_msgs[i].msg_hdr;
    uint32_t lbid = (uint32_t)u->rx_spill[i];
    u->rx_spill[i] = NIL;
    u->rx_spills--;
    uint8_t *large = buf_ptr(u, lbid);
    const struct iovec *head = &u->rx_iov[2 * i];
    memcpy(large + ZCN_UDP_HEADROOM, head->iov_base, head->iov_len);
    uint32_t peer_len = h->msg_namelen < NAME_BYTES ? h->msg_namelen : NAME_BYTES;
    uint8_t *peer = large + sizeof(struct io_uring_recvmsg_out);
    memcpy(peer, h->msg_name, peer_len);
    uint32_t room = (uint32_t)(head->iov_len + u->rx_iov[2 * i + 1].iov_len);
    u->meta[lbid].state = ZCN_BUF_RX;
    u->meta[lbid].refs = 1;
    u->stats.large_datagrams++;
    hand_over(u, lbid, peer, peer_len, full < room ? full : room, full,
              (h->msg_flags & MSG_TRUNC) != 0);
}

/* Readiness mode: one recvmmsg batch into the slots, delivered in order. */
static void read_batch(ZCN_UdpSocket *u)
{
    uint32_t want = u->rx_slots;
    if (u->ev != NULL) {
        uint32_t room = u->ev_cap - u->ev_n;
        if (room == 0) { /* the poll batch is full: read on at the next call */
            queue_read_on(u);
            return;
        }
        if (room < want)
            want = room;
    }
    want = fill_slots(u, want);
    if (want == 0) {
        /* Datagrams wait in the socket (up to SO_RCVBUF) until a buffer
         * comes back; maybe_rearm then reads on. */
        u->stats.recv_exhaustion_events++;
        u->rx_resume = true;
        return;
    }
    for (uint32_t i = 0; i < want; i++)
        u->rx_msgs[i].msg_hdr.msg_namelen = NAME_BYTES;
    int n = -1;
    for (int attempt = 0; attempt < 2 && n < 0; attempt++) {
        /* MSG_TRUNC: msg_len is the datagram's real size. */
        n = recvmmsg(u->fd, u->rx_msgs, want, MSG_DONTWAIT | MSG_TRUNC, NULL);
        if (n >= 0 || errno == EAGAIN || errno == EWOULDBLOCK)
            break;
        /* A pending socket error (ECONNREFUSED after an ICMP error on a
         * connected socket) is returned once and cleared: read again. */
        u->stats.recv_errors++;
        u->stats.last_recv_error = errno;
    }
    if (n <= 0) {
        u->rx_idle = true; /* drained, or failing: the poll reports what comes next */
        return;
    }
    for (uint32_t i = 0; i < (uint32_t)n; i++) {
        const struct msghdr *h = &u->rx_msgs[i].msg_hdr;
        uint32_t full = u->rx_msgs[i].msg_len;
        uint32_t room = (uint32_t)u->rx_iov[2 * i].iov_len;
        if (ZCN_UNLIKELY(full > room && u->large_rx)) {
            deliver_spill(u, i, full);
            continue;
        }
        uint32_t bid = (uint32_t)u->rx_bid[i];
        u->rx_bid[i] = NIL;
        u->rx_held--;
        u->meta[bid].state = ZCN_BUF_RX;
        u->meta[bid].refs = 1;
        hand_over(u, bid, h->msg_name, h->msg_namelen, full < room ? full : room, full,
                  (h->msg_flags & MSG_TRUNC) != 0);
    }
    if ((uint32_t)n == want)
        queue_read_on(u); /* maybe more: after the loop has had its turn */
    else
        u->rx_idle = true; /* recvmmsg stopped at an empty queue */
}

/* Readiness mode: the poll (index 0) or the read-on NOP (RX_MORE). */
static void on_ready(ZCN_UdpSocket *u, struct io_uring_cqe *cqe, uint32_t index)
{
    if (index == RX_MORE) {
        u->rx_more = false;
    } else {
        u->recv_armed = false; /* one-shot */
        u->rx_idle = false;
        if (cqe->res < 0) {
            if (cqe->res != -ECANCELED) {
                u->stats.recv_errors++;
                u->stats.last_recv_error = -cqe->res;
            }
            u->rx_idle = true; /* maybe_rearm polls again */
            return;
        }
    }
    if (!u->destroying)
        read_batch(u);
}

static void on_recv(ZCN_UdpSocket *u, struct io_uring_cqe *cqe)
{
    if (!(cqe->flags & IORING_CQE_F_MORE))
        u->recv_armed = false;
    uint32_t bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
    /* A buffer the ring does not hold cannot be ours to take (a stray
     * completion): touching it would put it in the ring twice. */
    if ((cqe->flags & IORING_CQE_F_BUFFER) &&
        ZCN_LIKELY(bid < u->buffer_count && u->meta[bid].state == ZCN_BUF_RING)) {
        u->rx.count--;
        u->meta[bid].state = ZCN_BUF_RX;
        u->meta[bid].refs = 1;
        if (cqe->res >= (int)ZCN_UDP_HEADROOM && !u->destroying)
            deliver(u, bid, cqe->res);
        else
            buf_unref(u, bid);
    }
    if (cqe->res < 0) {
        switch (-cqe->res) {
        case ENOBUFS:
            /* The ring ran dry; datagrams wait in the socket (up to
             * SO_RCVBUF) until maybe_rearm finds buffers again. */
            u->stats.recv_exhaustion_events++;
            /* The ring is FIFO: a small one keeps the buffers the kernel
             * writes into warm in cache; it grows only when bursts need it. */
            if (u->br_target < u->br_max)
                u->br_target = u->br_target * 2 < u->br_max ? u->br_target * 2 : u->br_max;
            break;
        case ECANCELED:
        case EINTR:
        case EAGAIN:
            break;
        default:
            /* ECONNREFUSED after an ICMP error on a connected socket and
             * the like: the socket itself still works. */
            u->stats.recv_errors++;
            u->stats.last_recv_error = -cqe->res;
            break;
        }
    }
}

/* ------------------------------------------------------------------ */
/* sending                                                             */
/* ------------------------------------------------------------------ */

static void on_send(ZCN_UdpSocket *u, uint32_t index, int res)
{
    if (index >= u->slots_max)
        return;
    struct send_slot *sl = &u->slots[index];
    if (res < 0) {
        u->stats.send_errors++;
        u->stats.last_send_error = -res;
    } else {
        u->stats.datagrams_sent++;
        u->stats.bytes_sent += (uint64_t)res;
    }
    if (sl->async) {
        sl->async = false;
        u->sends_async--;
    }
    buf_unref(u, sl->bid);
    sl->next = u->slot_free;
    u->slot_free = (int32_t)index;
    u->sends_inflight--;
}

/* Hands send slot `index` (data and length in iov) to io_uring. */
static void send_async(ZCN_UdpSocket *u, uint32_t index, const struct iovec *iov)
{
    struct send_slot *sl = &u->slots[index];
    struct io_uring_sqe *sqe = get_sqe(u);
    if (sqe == NULL) { /* the SQ stays full even after a submit */
        on_send(u, index, -EBUSY);
        return;
    }
    io_uring_prep_send(sqe, u->fd, iov->iov_base, iov->iov_len, 0);
    if (!u->connected || sl->addr.sa.sa_family != AF_UNSPEC) {
        socklen_t alen = u->family == AF_INET6 ? sizeof sl->addr.in6 : sizeof sl->addr.in4;
        io_uring_prep_send_set_addr(sqe, &sl->addr.sa, (uint16_t)alen);
    }
    io_uring_sqe_set_data64(sqe, make_ud(u, OP_SEND, index));
    sl->async = true;
    u->sends_async++;
    u->unsubmitted = true;
}

/* Datagram i of the turn has completed with `res`. */
static inline void tx_done(ZCN_UdpSocket *u, uint32_t i, int res)
{
    on_send(u, u->tx_slot[i], res);
}

/* Datagrams from..n-1 of the turn wait for room in io_uring, in order. */
static void tx_rest_async(ZCN_UdpSocket *u, uint32_t from, uint32_t n)
{
    for (uint32_t i = from; i < n; i++)
        send_async(u, u->tx_slot[i], &u->tx_iov[i]);
}

/* Entry g of the batch failed with e. An error that says GSO cannot work
 * at this size (EINVAL, EMSGSIZE: the route's MTU) or at all (EIO: no
 * checksum offload or IPsec; ENOPROTOOPT, EOPNOTSUPP: no UDP_SEGMENT)
 * stops later batches from coalescing so, and the entry's datagrams are
 * sent one by one: a GSO limit costs no datagram. Any other error (e.g.
 * ECONNREFUSED, EACCES) is the destination's: every datagram of the entry
 * fails with it, as each would alone. Returns the datagram to continue from
 * in io_uring if the socket buffer filled, else n. */
static uint32_t tx_failed(ZCN_UdpSocket *u, uint32_t g, int e, uint32_t n)
{
    const struct msghdr *h = &u->tx_msgs[g].msg_hdr;
    uint32_t first = u->tx_first[g];
    uint32_t seg = (uint32_t)u->tx_iov[first].iov_len;
    bool gso_error = h->msg_iovlen > 1 && (e == EINVAL || e == EMSGSIZE || e == EIO ||
                                          e == ENOPROTOOPT || e == EOPNOTSUPP);
    if (!gso_error) {
        for (uint32_t i = first; i < first + (uint32_t)h->msg_iovlen; i++)
            tx_done(u, i, -e);
        return n;
    }
    if (e == EINVAL || e == EMSGSIZE)
        u->gso_size_max = seg - 1; /* seg > 0: empty datagrams never coalesce */
    else
        u->gso_size_max = 0;
    for (uint32_t i = first; i < first + (uint32_t)h->msg_iovlen; i++) {
        struct msghdr one = {.msg_name = h->msg_name, .msg_namelen = h->msg_namelen,
                             .msg_iov = &u->tx_iov[i], .msg_iovlen = 1};
        ssize_t r = sendmsg(u->fd, &one, MSG_DONTWAIT);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS))
            return i;
        tx_done(u, i, r < 0 ? -errno : (int)r);
    }
    return n;
}

/* Sends the turn's datagrams with sendmmsg, same-peer runs as GSO sends.
 * Each datagram completes here; once the socket buffer is full the rest go
 * to io_uring (send_async). */
static void flush_tx(ZCN_UdpSocket *u)
{
    uint32_t g = 0, groups = u->tx_groups, n = u->tx_n;
    u->tx_n = 0;
    u->tx_groups = 0;
    while (g < groups) {
        int m;
        if (u->test_full_sndbuf) {
            errno = EAGAIN;
            m = -1;
        } else if (u->test_gso_errno != 0 && u->tx_msgs[g].msg_hdr.msg_iovlen > 1) {
            errno = u->test_gso_errno;
            u->test_gso_errno = 0;
            m = -1;
        } else {
            m = sendmmsg(u->fd, &u->tx_msgs[g], groups - g, MSG_DONTWAIT);
        }
        if (m > 0) {
            for (uint32_t k = g; k < g + (uint32_t)m; k++) {
                uint32_t first = u->tx_first[k];
                for (uint32_t i = first; i < first + (uint32_t)u->tx_msgs[k].msg_hdr.msg_iovlen; i++)
                    tx_done(u, i, (int)u->tx_iov[i].iov_len);
                if (u->tx_msgs[k].msg_hdr.msg_iovlen > 1)
                    u->stats.gso_sends++;
            }
            g += (uint32_t)m;
            continue;
        }
        int e = m < 0 ? errno : EIO;
        if (e == EINTR)
            continue;
        if (e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS) {
            tx_rest_async(u, u->tx_first[g], n);
            return;
        }
        uint32_t stop = tx_failed(u, g, e, n);
        if (stop < n) {
            tx_rest_async(u, stop, n);
            return;
        }
        g++; /* the rest go on */
    }
}

/* Whether datagram `len` to `addr` (NULL: the connected peer) may join the
 * last sendmmsg entry as one more GSO segment: same peer, the entry's
 * segments all of the first one's size, this one no larger (a shorter one
 * ends the entry), within the GSO limits. */
static bool tx_can_join(const ZCN_UdpSocket *u, const struct sockaddr *addr, socklen_t alen,
                        uint32_t len)
{
    if (u->tx_groups == 0 || len == 0)
        return false;
    const struct msghdr *h = &u->tx_msgs[u->tx_groups - 1].msg_hdr;
    size_t seg = u->tx_iov[u->tx_first[u->tx_groups - 1]].iov_len;
    if (seg > u->gso_size_max || len > seg || u->tx_iov[u->tx_n - 1].iov_len != seg)
        return false;
    if (h->msg_iovlen >= GSO_SEGMENTS_MAX || u->tx_group_bytes + len > GSO_BYTES_MAX)
        return false;
    if (addr == NULL || h->msg_name == NULL)
        return addr == NULL && h->msg_name == NULL;
    return h->msg_namelen == alen && memcmp(h->msg_name, addr, alen) == 0;
}

/* Adds datagram iov (send slot `index`, destination addr of alen bytes
 * stored in the slot, or NULL) to the turn's sendmmsg batch. */
static void tx_queue(ZCN_UdpSocket *u, uint32_t index, const struct sockaddr *addr,
                     socklen_t alen, struct iovec iov)
{
    bool join = tx_can_join(u, addr, alen, (uint32_t)iov.iov_len);
    uint32_t k = u->tx_n++;
    u->tx_iov[k] = iov;
    u->tx_slot[k] = index;
    if (join) {
        uint32_t first = u->tx_first[u->tx_groups - 1];
        struct msghdr *h = &u->tx_msgs[u->tx_groups - 1].msg_hdr;
        if (h->msg_iovlen == 1) { /* the second datagram: now a GSO send */
            struct cmsghdr *c = &u->tx_ctl[first].align;
            c->cmsg_level = SOL_UDP;
            c->cmsg_type = UDP_SEGMENT;
            c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t seg = (uint16_t)u->tx_iov[first].iov_len;
            memcpy(CMSG_DATA(c), &seg, sizeof seg);
            h->msg_control = c;
            h->msg_controllen = GSO_CTL_BYTES;
        }
        h->msg_iovlen++;
        u->tx_group_bytes += (uint32_t)iov.iov_len;
        return;
    }
    uint32_t g = u->tx_groups++;
    u->tx_first[g] = k;
    u->tx_group_bytes = (uint32_t)iov.iov_len;
    struct msghdr *h = &u->tx_msgs[g].msg_hdr;
    h->msg_name = addr != NULL ? &u->slots[index].addr : NULL;
    h->msg_namelen = addr != NULL ? alen : 0;
    h->msg_iov = &u->tx_iov[k];
    h->msg_iovlen = 1;
    h->msg_control = NULL;
    h->msg_controllen = 0;
}

/* Checks a destination; on success *addr_out is the address to use (NULL
 * for the connected peer). */
static ZCN_Error check_dest(const ZCN_UdpSocket *u, const struct sockaddr *addr, socklen_t len,
                            size_t data_len)
{
    if (addr == NULL) {
        if (!u->connected)
            return zcn_fail((ZCN_Error)EDESTADDRREQ,
                            "no address given and the socket is not connected");
    } else {
        socklen_t need = u->family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                               : sizeof(struct sockaddr_in);
        if (len < need || addr->sa_family != u->family)
            return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                            "address is not a sockaddr_in%s of %u bytes (family %d, len %u)",
                            u->family == AF_INET6 ? "6" : "", (unsigned)need,
                            (int)addr->sa_family, (unsigned)len);
        uint16_t port = u->family == AF_INET6 ? ((const struct sockaddr_in6 *)addr)->sin6_port
                                              : ((const struct sockaddr_in *)addr)->sin_port;
        if (port == 0)
            return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "destination port 0");
    }
    if (data_len > datagram_max(u))
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "datagram of %zu bytes is over the UDP limit %zu",
                        data_len, datagram_max(u));
    return ZCN_OK;
}

/* Prepares the send SQE for buffer bid (the caller holds one reference for
 * it). Fails only for lack of a slot or SQE; the caller still owns the
 * reference then. */
static ZCN_Error queue_send(ZCN_UdpSocket *u, const struct sockaddr *addr, uint32_t bid,
                            const uint8_t *data, uint32_t len)
{
    if (u->slot_free == NIL) {
        u->stats.send_exhaustion_drops++;
        return zcn_fail(ZCN_ERR_QUEUE_FULL,
                        "%u sends in flight (sends_max): run the loop to complete them",
                        u->slots_max);
    }
    int32_t index = u->slot_free;
    struct send_slot *sl = &u->slots[index];
    u->slot_free = sl->next;
    sl->bid = bid;
    socklen_t alen = 0;
    if (addr != NULL) {
        alen = u->family == AF_INET6 ? sizeof sl->addr.in6 : sizeof sl->addr.in4;
        memcpy(&sl->addr, addr, alen);
    } else {
        sl->addr.sa.sa_family = AF_UNSPEC; /* the connected peer */
    }
    u->sends_inflight++;
    u->unsubmitted = true;
    struct iovec iov = {(void *)data, len};
    if (u->tx_n == TX_BATCH)
        flush_tx(u);
    if (u->sends_async > 0) { /* keep the order behind the waiting ones */
        send_async(u, (uint32_t)index, &iov);
        return ZCN_OK;
    }
    tx_queue(u, (uint32_t)index, addr != NULL ? &sl->addr.sa : NULL, alen, iov);
    return ZCN_OK;
}

/* The id of the buffer data points into, or -1 if it is in neither slab. */
static int64_t buffer_of(const ZCN_UdpSocket *u, const uint8_t *data)
{
    const uint8_t *end = u->slab + (size_t)u->buffer_count * u->buffer_size;
    if (data >= u->slab && data < end)
        return (int64_t)((size_t)(data - u->slab) / u->buffer_size);
    const uint8_t *lend = u->large_slab + (size_t)u->large_count * ZCN_UDP_LARGE_BUFFER_SIZE;
    if (u->large_count > 0 && data >= u->large_slab && data < lend)
        return u->buffer_count + (int64_t)((size_t)(data - u->large_slab) /
                                           ZCN_UDP_LARGE_BUFFER_SIZE);
    return -1;
}

/* The buffer holding lent receive data at [data, data+len), or -1 if the
 * memory is not in the slab. -2: in the slab but not sendable as is. */
static int64_t lent_buffer(const ZCN_UdpSocket *u, const uint8_t *data, size_t len)
{
    int64_t bid = buffer_of(u, data);
    if (bid < 0)
        return -1;
    size_t off = (size_t)(data - buf_ptr(u, (uint32_t)bid));
    if (len > buf_bytes(u, (uint32_t)bid) - off) /* no sum: len may be anything */
        return -2;
    uint8_t st = u->meta[bid].state;
    if (st == ZCN_BUF_USER)
        return -1; /* the user's own buffer: copy, it stays theirs */
    if ((st != ZCN_BUF_RX && st != ZCN_BUF_TX) || u->meta[bid].refs == 0)
        return -2;
    return bid;
}

/* A buffer for a copied send of len bytes: a small one when it fits, else
 * a large one, as long as the readiness receive keeps enough to give each
 * of its slots a spill again. */
static ZCN_Error copy_buffer(ZCN_UdpSocket *u, size_t len, uint32_t *bid_out)
{
    int64_t bid;
    if (len <= u->buffer_size) {
        bid = buf_take(u);
    } else if (u->large_count == 0) {
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                        "datagram of %zu bytes does not fit a %zu-byte pool buffer "
                        "(raise buffer_size, or drop ZCN_UDP_SMALL_ONLY)", len, u->buffer_size);
    } else {
        uint32_t spills_wanted = u->large_rx ? u->rx_slots - u->rx_spills : 0;
        bid = u->large_free > spills_wanted ? large_take(u) : -1;
    }
    if (bid < 0) {
        u->stats.send_exhaustion_drops++;
        return zcn_fail(ZCN_ERR_EXHAUSTED, "no free %s buffer for a %zu-byte copy",
                        len <= u->buffer_size ? "pool" : "large", len);
    }
    *bid_out = (uint32_t)bid;
    return ZCN_OK;
}

static ZCN_Error send_one(ZCN_UdpSocket *u, const struct sockaddr *addr, socklen_t addr_len,
                          const uint8_t *data, size_t len)
{
    if (data == NULL && len != 0)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "data is NULL");
    ZCN_Error e = check_dest(u, addr, addr_len, len);
    if (e != ZCN_OK)
        return e;
    int64_t bid = len == 0 ? -1 : lent_buffer(u, data, len);
    if (bid == -2)
        return zcn_fail(ZCN_ERR_FOREIGN_POINTER,
                        "data points into a receive buffer that is no longer lent");
    if (bid >= 0) {
        u->meta[bid].refs++;
        e = queue_send(u, addr, (uint32_t)bid, data, (uint32_t)len);
        if (e != ZCN_OK) {
            u->meta[bid].refs--;
            return e;
        }
        u->stats.sends_zero_copy++;
        return ZCN_OK;
    }
    uint32_t cbid = 0;
    e = copy_buffer(u, len, &cbid);
    if (e != ZCN_OK)
        return e;
    uint8_t *copy = buf_ptr(u, cbid);
    if (len > 0)
        memcpy(copy, data, len);
    u->meta[cbid].state = ZCN_BUF_TX;
    u->meta[cbid].refs = 1;
    e = queue_send(u, addr, cbid, copy, (uint32_t)len);
    if (e != ZCN_OK) {
        u->meta[cbid].refs = 0;
        recycle(u, cbid);
        return e;
    }
    u->stats.sends_copied++;
    return ZCN_OK;
}

static ZCN_Error submit_now(ZCN_UdpSocket *u)
{
    if (!u->unsubmitted)
        return ZCN_OK;
    if (u->server == NULL && !u->started)
        return ZCN_OK; /* start() submits */
    flush_tx(u);
    if (io_uring_sq_ready(u->ring) == 0) {
        u->unsubmitted = false;
        return ZCN_OK; /* everything went by sendmmsg */
    }
    int ret = io_uring_submit(u->ring);
    if (ret < 0 && ret != -EBUSY && ret != -EAGAIN)
        return zcn_fail((ZCN_Error)-ret, "io_uring_submit: %s", strerror(-ret));
    u->unsubmitted = false;
    return ZCN_OK;
}

/* Inside a callback or a poll batch the loop submits at the end of the
 * turn, batching; outside, autoflush submits at once. */
static ZCN_Error after_queue(ZCN_UdpSocket *u)
{
    if (u->in_callback || (u->server != NULL && zcn_server_in_callback(u->server)) ||
        !u->autoflush)
        return ZCN_OK;
    return submit_now(u);
}

static ZCN_Error start(ZCN_UdpSocket *u);

static ZCN_Error send_guard(ZCN_UdpSocket *u)
{
    if (u == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "socket is NULL");
    ZCN_Error e = owner_check(u);
    if (e != ZCN_OK) {
        u->stats.send_exhaustion_drops++;
        return e;
    }
    return start(u);
}

ZCN_Error zcn_udp_sendto(ZCN_UdpSocket *u, const struct sockaddr *addr, socklen_t addr_len,
                         const uint8_t *data, size_t len)
{
    ZCN_Error e = send_guard(u);
    if (e != ZCN_OK)
        return e;
    e = send_one(u, addr, addr_len, data, len);
    if (e != ZCN_OK)
        return e;
    return after_queue(u);
}

ZCN_Error zcn_udp_send(ZCN_UdpSocket *u, const uint8_t *data, size_t len)
{
    return zcn_udp_sendto(u, NULL, 0, data, len);
}

ZCN_Error zcn_udp_sendto_batch(ZCN_UdpSocket *u, const ZCN_UdpMessage *msgs, size_t count,
                               size_t *queued_out)
{
    if (queued_out != NULL)
        *queued_out = 0;
    ZCN_Error e = send_guard(u);
    if (e != ZCN_OK)
        return e;
    if (msgs == NULL && count != 0)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "msgs is NULL");
    size_t i = 0;
    for (; i < count; i++) {
        e = send_one(u, msgs[i].addr, msgs[i].addr_len, msgs[i].data, msgs[i].len);
        if (e != ZCN_OK)
            break;
    }
    if (queued_out != NULL)
        *queued_out = i;
    /* What was queued goes out even if a later message failed. */
    ZCN_Error se = after_queue(u);
    return e != ZCN_OK ? e : se;
}

uint8_t *zcn_udp_acquire_buffer(ZCN_UdpSocket *u, size_t *capacity_out)
{
    if (u == NULL)
        return NULL;
    return zcn_user_buffer_acquire(u->pool, u->meta, u->slab, u->buffer_size, capacity_out);
}

ZCN_Error zcn_udp_release_buffer(ZCN_UdpSocket *u, uint8_t *buffer)
{
    if (u == NULL || buffer == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "socket or buffer is NULL");
    return zcn_user_buffer_release(u->pool, u->meta, buffer, "zcn_udp_acquire_buffer");
}

ZCN_Error zcn_udp_sendto_buffer(ZCN_UdpSocket *u, const struct sockaddr *addr,
                                socklen_t addr_len, uint8_t *buffer, size_t len)
{
    ZCN_Error e = send_guard(u);
    if (e != ZCN_OK)
        return e;
    if (buffer == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "buffer is NULL");
    int64_t bid = zcn_user_buffer_index(u->pool, u->meta, buffer);
    if (bid < 0)
        return zcn_fail(ZCN_ERR_FOREIGN_POINTER, "not a buffer from zcn_udp_acquire_buffer");
    if (len > u->buffer_size)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "len %zu is larger than the buffer (%zu)", len,
                        u->buffer_size);
    e = check_dest(u, addr, addr_len, len);
    if (e != ZCN_OK)
        return e;
    u->meta[bid].state = ZCN_BUF_TX;
    u->meta[bid].refs = 1;
    e = queue_send(u, addr, (uint32_t)bid, buffer, (uint32_t)len);
    if (e != ZCN_OK) {
        u->meta[bid].state = ZCN_BUF_USER;
        u->meta[bid].refs = 0;
        return e;
    }
    u->stats.sends_zero_copy++;
    return after_queue(u);
}

ZCN_Error zcn_udp_set_autoflush(ZCN_UdpSocket *u, int on)
{
    if (u == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "socket is NULL");
    u->autoflush = on != 0;
    return ZCN_OK;
}

ZCN_Error zcn_udp_flush(ZCN_UdpSocket *u)
{
    ZCN_Error e = send_guard(u);
    if (e != ZCN_OK)
        return e;
    return submit_now(u);
}

static void echo_on_datagram(void *user_data, const struct sockaddr *peer, socklen_t peer_len,
                             const uint8_t *data, size_t len, uint32_t flags)
{
    ZCN_UdpSocket *u = user_data;
    if (flags & ZCN_UDP_TRUNCATED)
        return;
    /* A refused echo is counted in the stats (send_exhaustion_drops). */
    (void)zcn_udp_sendto(u, peer, peer_len, data, len);
}

ZCN_Error zcn_udp_use_echo_handler(ZCN_UdpSocket *u)
{
    if (u == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "socket is NULL");
    u->on_datagram = echo_on_datagram;
    u->user_data = u;
    return ZCN_OK;
}

ZCN_Error zcn_udp_set_callback(ZCN_UdpSocket *u, void *user_data, ZCN_OnDatagram on_datagram)
{
    if (u == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "socket is NULL");
    u->user_data = user_data;
    u->on_datagram = on_datagram;
    return ZCN_OK;
}

/* ------------------------------------------------------------------ */
/* completions and the loop                                            */
/* ------------------------------------------------------------------ */

static void arm_wake(ZCN_UdpSocket *u)
{
    struct io_uring_sqe *sqe = zcn_get_sqe(u->ring);
    if (sqe == NULL)
        return;
    io_uring_prep_poll_multishot(sqe, u->wake_fd, POLLIN);
    io_uring_sqe_set_data64(sqe, make_ud(u, OP_WAKE, 0));
    u->wake_armed = true;
    u->unsubmitted = true;
}

static void on_wake(ZCN_UdpSocket *u, struct io_uring_cqe *cqe)
{
    if (!(cqe->flags & IORING_CQE_F_MORE))
        u->wake_armed = false;
    zcn_eventfd_drain(u->wake_fd);
    if (!u->wake_armed && !u->destroying)
        arm_wake(u);
}

static void free_socket(ZCN_UdpSocket *u);

/* A receive's or send's last completion: the kernel holds one less. */
static inline bool ends_request(enum op op, const struct io_uring_cqe *cqe)
{
    return (op == OP_RECV || op == OP_SEND) && !(cqe->flags & IORING_CQE_F_MORE);
}

static void handle_cqe(zcn_source *src, struct io_uring_cqe *cqe)
{
    ZCN_UdpSocket *u = (ZCN_UdpSocket *)src;
    uint32_t tag = zcn_source_tag(io_uring_cqe_get_data64(cqe));
    if (ZCN_UNLIKELY(tag_gen(tag) != (u->gen & 0x3fu))) {
        u->test_stale++; /* an earlier socket's: retire_posted prevents it */
        return;
    }
    if (ends_request(tag_op(tag), cqe))
        u->kernel_reqs--;
    if (ZCN_UNLIKELY(u->lingering)) {
        /* Destroyed: only the count matters; the last one frees it all
         * (the server touches nothing of ours after this call). */
        if (u->kernel_reqs == 0) {
            atomic_fetch_sub(&lingering_sockets, 1);
            free_socket(u);
        }
        return;
    }
    switch (tag_op(tag)) {
    case OP_RECV:
        if (u->recv_mode == ZCN_UDP_RECV_READINESS)
            on_ready(u, cqe, tag_index(tag));
        else
            on_recv(u, cqe);
        break;
    case OP_SEND: /* only a send that went to io_uring completes here */
        if (tag_index(tag) < u->slots_max && u->slots[tag_index(tag)].async)
            on_send(u, tag_index(tag), cqe->res);
        break;
    case OP_WAKE:
        if (tag_index(tag) == WAKE_PIPE)
            zcn_wakeup_on_cqe(&u->wakeup, cqe);
        else
            on_wake(u, cqe);
        break;
    default:
        break;
    }
    maybe_rearm(u);
}

void zcn_udp_test_full_sndbuf(ZCN_UdpSocket *u, bool on)
{
    u->test_full_sndbuf = on;
}

void zcn_udp_test_fail_gso(ZCN_UdpSocket *u, int err)
{
    u->test_gso_errno = err;
}

void zcn_udp_test_fail_sqes(ZCN_UdpSocket *u, uint32_t count)
{
    u->test_sqe_failures = count;
}

uint64_t zcn_udp_test_stale_completions(const ZCN_UdpSocket *u)
{
    return u->test_stale;
}

uint32_t zcn_udp_test_lingering(void)
{
    return atomic_load(&lingering_sockets);
}

/* The server's loop is about to wait: send what callbacks queued, then
 * resume receiving if it stopped for want of a buffer or an SQE. On its
 * own ring the socket's loop does that every turn; in a server's loop
 * only this hook runs every turn, and the socket's own completions, which
 * also retry, never come once it has stopped reading. The sends go first:
 * the buffers they free may be the ones the receive waits for. */
static void flush_source(zcn_source *src)
{
    ZCN_UdpSocket *u = (ZCN_UdpSocket *)src;
    if (u->lingering)
        return;
    flush_tx(u);
    if (u->in_callback == 0) /* zcn_server_flush from our callback: the batch rearms */
        maybe_rearm(u);
}

/* Enables the ring on the calling thread (own ring) and arms the receive. */
static ZCN_Error start(ZCN_UdpSocket *u)
{
    if (u->started)
        return ZCN_OK;
    if (u->server == NULL) {
        ZCN_Error e = zcn_ring_enable(u->ring_handle);
        if (e != ZCN_OK)
            return e;
        arm_wake(u);
    }
    u->started = true;
    u->rx_idle = true; /* readiness: until the first poll fires */
    arm_recv(u);
    if (u->server == NULL)
        return submit_now(u);
    return ZCN_OK; /* the server's loop submits */
}

static int wait_cqe(ZCN_UdpSocket *u, int timeout_ms)
{
    if (!u->destroying)
        zcn_wakeup_arm(&u->wakeup, u->ring, make_ud(u, OP_WAKE, WAKE_PIPE));
    flush_tx(u);
    ring_publish(u);
    u->unsubmitted = false;
    return zcn_wait(u->ring, timeout_ms);
}

static uint32_t reap(ZCN_UdpSocket *u)
{
    struct io_uring_cqe *cqe;
    unsigned head;
    uint32_t seen = 0;
    io_uring_for_each_cqe(u->ring, head, cqe)
    {
        if (seen == CQE_BATCH || (u->ev != NULL && u->ev_n == u->ev_cap))
            break;
        handle_cqe(&u->src, cqe);
        seen++;
    }
    io_uring_cq_advance(u->ring, seen);
    return seen;
}

/* One wait and the completions it brought. Sends queued by callbacks are
 * submitted by the next wait (zcn_udp_run) or when run_once/poll return. */
static ZCN_Error turn(ZCN_UdpSocket *u, int timeout_ms, uint32_t *handled)
{
    *handled = 0;
    maybe_rearm(u);
    int ret = wait_cqe(u, timeout_ms);
    if (ret == -EINTR) {
        zcn_wakeup_consume(&u->wakeup);
        return zcn_fail((ZCN_Error)EINTR, "interrupted by a signal");
    }
    if (ret < 0 && ret != -ETIME && ret != -EAGAIN && ret != -EBUSY)
        return zcn_fail((ZCN_Error)-ret, "io_uring_enter: %s", strerror(-ret));
    *handled = reap(u);
    maybe_rearm(u);
    if (zcn_wakeup_take(&u->wakeup))
        return zcn_fail((ZCN_Error)EINTR, "interrupted: a byte came on the wakeup fd");
    return ZCN_OK;
}

static ZCN_Error loop_guard(ZCN_UdpSocket *u)
{
    if (u == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "socket is NULL");
    if (u->server != NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                        "this socket runs in its server's loop: drive the server instead");
    if (u->in_callback)
        return zcn_fail(ZCN_ERR_BUSY, "the loop cannot be run from inside a callback");
    ZCN_Error e = owner_check(u);
    if (e != ZCN_OK)
        return e;
    return start(u);
}

static ZCN_Error turn_cb(void *loop, int timeout_ms, uint32_t *handled)
{
    return turn(loop, timeout_ms, handled);
}

/* A loop call returns: sends its callbacks queued go now, also when the
 * call ends with EINTR (the wakeup pipe ends it after a turn's work). */
static ZCN_Error submit_after(ZCN_UdpSocket *u, ZCN_Error err)
{
    if (err != ZCN_OK && err != (ZCN_Error)EINTR)
        return err;
    ZCN_Error e = submit_now(u);
    return e != ZCN_OK ? e : err;
}

/* Ends the previous poll batch, then runs turns (zcn_run_until). */
static ZCN_Error run_until(ZCN_UdpSocket *u, int timeout_ms, uint32_t *handled_out, bool *stopped)
{
    end_batch(u);
    return zcn_run_until(u, turn_cb, &u->stop_requested, timeout_ms, handled_out, stopped);
}

ZCN_Error zcn_udp_run_once(ZCN_UdpSocket *u)
{
    return zcn_udp_run_once_timeout(u, -1, NULL);
}

ZCN_Error zcn_udp_run_once_timeout(ZCN_UdpSocket *u, int timeout_ms, uint32_t *handled_out)
{
    if (handled_out != NULL)
        *handled_out = 0;
    ZCN_Error err = loop_guard(u);
    if (err != ZCN_OK)
        return err;
    u->ev = NULL;
    bool stopped;
    err = run_until(u, timeout_ms, handled_out, &stopped);
    return submit_after(u, err);
}

ZCN_Error zcn_udp_poll(ZCN_UdpSocket *u, ZCN_UdpEvent *events, uint32_t capacity, int timeout_ms,
                       uint32_t *count_out)
{
    if (count_out != NULL)
        *count_out = 0;
    ZCN_Error err = loop_guard(u);
    if (err != ZCN_OK)
        return err;
    if (events == NULL || capacity == 0)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "events must hold at least 1 entry");
    u->ev = events;
    u->ev_cap = capacity;
    u->ev_n = 0;
    bool stopped;
    err = run_until(u, timeout_ms, NULL, &stopped);
    err = submit_after(u, err); /* sends from this turn go now, not at the next call */
    if (count_out != NULL)
        *count_out = u->ev_n;
    u->ev = NULL;
    u->ev_cap = 0;
    return err;
}

ZCN_Error zcn_udp_run(ZCN_UdpSocket *u)
{
    ZCN_Error err = loop_guard(u);
    if (err != ZCN_OK)
        return err;
    u->ev = NULL;
    for (;;) {
        bool stopped = false;
        err = run_until(u, -1, NULL, &stopped);
        if (stopped) /* sends queued meanwhile go now, not at a next wait */
            return err == ZCN_OK || err == (ZCN_Error)EINTR ? submit_now(u) : err;
        if (err != ZCN_OK && err != (ZCN_Error)EINTR)
            return err;
    }
}

ZCN_Error zcn_udp_stop(ZCN_UdpSocket *u)
{
    /* As zcn_server_stop: the registry is looked up, never *u, so a socket
     * destroyed or being destroyed is simply not found. Sockets on a server
     * are never registered (drive and stop the server instead). */
    int slot = zcn_live_acquire(u);
    if (slot == -1)
        return ZCN_ERR_INVALID_ARGUMENT; /* no detail: must stay signal-safe */
    atomic_store_explicit(&u->stop_requested, 1, memory_order_release);
    zcn_eventfd_wake(u->wake_fd);
    zcn_live_release(slot);
    return ZCN_OK;
}

ZCN_Error zcn_udp_wakeup_fd(ZCN_UdpSocket *u, int *fd_out)
{
    if (fd_out != NULL)
        *fd_out = -1;
    if (u == NULL || fd_out == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, u == NULL ? "socket is NULL" : "fd_out is NULL");
    if (u->server != NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                        "this socket runs in its server's loop: use zcn_server_wakeup_fd");
    return zcn_wakeup_open(&u->wakeup, fd_out);
}

/* ------------------------------------------------------------------ */
/* options                                                             */
/* ------------------------------------------------------------------ */

static ZCN_Error set_int_opt(int fd, int level, int name, int value, const char *what)
{
    if (setsockopt(fd, level, name, &value, sizeof value) != 0)
        return zcn_fail((ZCN_Error)errno, "%s: %s", what, strerror(errno));
    return ZCN_OK;
}

static ZCN_Error apply_options(int fd, int family, const ZCN_UdpConfig *cfg)
{
    ZCN_Error e = ZCN_OK;
    if (cfg->flags & ZCN_UDP_REUSEADDR)
        e = set_int_opt(fd, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR");
    if (e == ZCN_OK && (cfg->flags & ZCN_UDP_REUSEPORT))
        e = set_int_opt(fd, SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT");
    if (e == ZCN_OK && (cfg->flags & ZCN_UDP_BROADCAST))
        e = set_int_opt(fd, SOL_SOCKET, SO_BROADCAST, 1, "SO_BROADCAST");
    if (e == ZCN_OK && (cfg->flags & ZCN_UDP_V6ONLY) && family == AF_INET6)
        e = set_int_opt(fd, IPPROTO_IPV6, IPV6_V6ONLY, 1, "IPV6_V6ONLY");
    if (e == ZCN_OK && cfg->rcvbuf > 0)
        e = set_int_opt(fd, SOL_SOCKET, SO_RCVBUF, cfg->rcvbuf, "SO_RCVBUF");
    if (e == ZCN_OK && cfg->sndbuf > 0)
        e = set_int_opt(fd, SOL_SOCKET, SO_SNDBUF, cfg->sndbuf, "SO_SNDBUF");
    return e;
}

static ZCN_Error open_socket(ZCN_UdpSocket *u, const ZCN_UdpConfig *cfg)
{
    struct sockaddr_storage local;
    socklen_t len = 0;
    const char *address = cfg->address != NULL ? cfg->address : "0.0.0.0";
    ZCN_Error e = zcn_parse_address(address, cfg->port, &local, &len, "address");
    if (e != ZCN_OK)
        return e;
    u->family = local.ss_family;
    u->fd = socket(u->family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (u->fd < 0)
        return zcn_fail((ZCN_Error)errno, "socket: %s", strerror(errno));
    e = apply_options(u->fd, u->family, cfg);
    if (e != ZCN_OK)
        return e;
    if (bind(u->fd, (struct sockaddr *)&local, len) != 0)
        return zcn_fail((ZCN_Error)errno, "bind %s port %u: %s", address, cfg->port,
                        strerror(errno));
    if (cfg->connect_address != NULL) {
        struct sockaddr_storage peer;
        socklen_t plen = 0;
        e = zcn_parse_address(cfg->connect_address, cfg->connect_port, &peer, &plen,
                              "connect_address");
        if (e != ZCN_OK)
            return e;
        if (peer.ss_family != u->family || cfg->connect_port == 0)
            return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                            "connect_address must be of the bound address's family, with a port");
        if (connect(u->fd, (struct sockaddr *)&peer, plen) != 0)
            return zcn_fail((ZCN_Error)errno, "connect: %s", strerror(errno));
        u->connected = true;
    }
    len = sizeof local;
    getsockname(u->fd, (struct sockaddr *)&local, &len);
    u->port = ntohs(u->family == AF_INET6 ? ((struct sockaddr_in6 *)&local)->sin6_port
                                          : ((struct sockaddr_in *)&local)->sin_port);
    return ZCN_OK;
}

/* Fills an ip_mreqn / ipv6_mreq and calls setsockopt. */
static ZCN_Error membership(ZCN_UdpSocket *u, const char *group, const char *if_addr,
                            uint32_t if_index, bool join)
{
    if (u == NULL || group == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "socket or group is NULL");
    if (u->family == AF_INET) {
        struct ip_mreqn mr;
        memset(&mr, 0, sizeof mr);
        if (inet_pton(AF_INET, group, &mr.imr_multiaddr) != 1 ||
            !IN_MULTICAST(ntohl(mr.imr_multiaddr.s_addr)))
            return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "\"%.64s\" is not an IPv4 multicast group",
                            group);
        if (if_addr != NULL && inet_pton(AF_INET, if_addr, &mr.imr_address) != 1)
            return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                            "interface \"%.64s\" is not an IPv4 literal", if_addr);
        mr.imr_ifindex = (int)if_index;
        int opt = join ? IP_ADD_MEMBERSHIP : IP_DROP_MEMBERSHIP;
        if (setsockopt(u->fd, IPPROTO_IP, opt, &mr, sizeof mr) != 0)
            return zcn_fail((ZCN_Error)errno, "%s %s: %s", join ? "IP_ADD_MEMBERSHIP"
                            : "IP_DROP_MEMBERSHIP", group, strerror(errno));
        return ZCN_OK;
    }
    struct ipv6_mreq mr6;
    memset(&mr6, 0, sizeof mr6);
    if (inet_pton(AF_INET6, group, &mr6.ipv6mr_multiaddr) != 1 ||
        !IN6_IS_ADDR_MULTICAST(&mr6.ipv6mr_multiaddr))
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "\"%.64s\" is not an IPv6 multicast group",
                        group);
    mr6.ipv6mr_interface = if_index;
    int opt = join ? IPV6_JOIN_GROUP : IPV6_LEAVE_GROUP;
    if (setsockopt(u->fd, IPPROTO_IPV6, opt, &mr6, sizeof mr6) != 0)
        return zcn_fail((ZCN_Error)errno, "%s %s: %s", join ? "IPV6_JOIN_GROUP"
                        : "IPV6_LEAVE_GROUP", group, strerror(errno));
    return ZCN_OK;
}

ZCN_Error zcn_udp_join_multicast(ZCN_UdpSocket *u, const char *group, const char *if_addr,
                                 uint32_t if_index)
{
    return membership(u, group, if_addr, if_index, true);
}

ZCN_Error zcn_udp_leave_multicast(ZCN_UdpSocket *u, const char *group, const char *if_addr,
                                  uint32_t if_index)
{
    return membership(u, group, if_addr, if_index, false);
}

/* ------------------------------------------------------------------ */
/* create / destroy                                                    */
/* ------------------------------------------------------------------ */

struct settings {
    uint32_t entries, buffers, sends;
    size_t buffer_size; /* rounded pool buffer size */
    uint32_t recv_mode;
    uint32_t rx_slots;  /* readiness receive slots */
    uint32_t large;     /* large buffers in all (0: small only) */
    bool large_rx;      /* readiness reads datagrams over buffer_size whole */
};

/* Buffers the receive may hold: all but a send reserve of a quarter. */
static uint32_t receive_max(uint32_t buffers)
{
    uint32_t reserve = buffers / 4 > 0 ? buffers / 4 : 1;
    return buffers - reserve;
}

static ZCN_Error read_config(const ZCN_UdpConfig *cfg, struct settings *st)
{
    st->entries = cfg->io_uring_entries ? cfg->io_uring_entries : 256;
    st->buffers = cfg->buffer_count ? cfg->buffer_count : 256;
    st->sends = cfg->sends_max ? cfg->sends_max : 1024;
    uint32_t payload = cfg->buffer_size ? cfg->buffer_size : 2048;
    if (st->entries > ZCN_UDP_ENTRIES_MAX)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "io_uring_entries %u is over %u", st->entries,
                        ZCN_UDP_ENTRIES_MAX);
    if (st->buffers < 2 || st->buffers > ZCN_UDP_BUFFERS_MAX)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "buffer_count %u is not in 2..%u", st->buffers,
                        ZCN_UDP_BUFFERS_MAX);
    if (payload > ZCN_UDP_DATAGRAM_MAX_V6)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                        "buffer_size %u is over the largest UDP datagram (%u)", payload,
                        ZCN_UDP_DATAGRAM_MAX_V6);
    if (st->sends > ZCN_UDP_SENDS_MAX)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "sends_max %u is over %u", st->sends,
                        ZCN_UDP_SENDS_MAX);
    if (cfg->rcvbuf < 0 || cfg->sndbuf < 0)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "rcvbuf/sndbuf must not be negative");
    st->recv_mode = cfg->recv_mode ? cfg->recv_mode : ZCN_UDP_RECV_READINESS;
    if (st->recv_mode != ZCN_UDP_RECV_READINESS && st->recv_mode != ZCN_UDP_RECV_MULTISHOT)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "recv_mode %u is not a ZCN_UDP_RECV_* value",
                        cfg->recv_mode);
    uint32_t known = ZCN_UDP_REUSEADDR | ZCN_UDP_REUSEPORT | ZCN_UDP_BROADCAST | ZCN_UDP_V6ONLY |
                     ZCN_UDP_NO_GSO | ZCN_UDP_SMALL_ONLY;
    if (cfg->flags & ~known)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "unknown flags 0x%x", cfg->flags & ~known);
    if (cfg->large_buffer_count > ZCN_UDP_LARGE_BUFFERS_MAX)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "large_buffer_count %u is over %u",
                        cfg->large_buffer_count, ZCN_UDP_LARGE_BUFFERS_MAX);
    size_t raw = (size_t)payload + ZCN_UDP_HEADROOM;
    st->buffer_size = (raw + ZCN_PAGE_SIZE - 1) / ZCN_PAGE_SIZE * ZCN_PAGE_SIZE;
    uint32_t rx_max = receive_max(st->buffers);
    st->rx_slots = rx_max < RX_BATCH ? rx_max : RX_BATCH;
    /* Large buffers unless told not to, or unless a small one holds any
     * datagram already. The readiness receive parks one behind each slot. */
    bool large = !(cfg->flags & ZCN_UDP_SMALL_ONLY) &&
                 st->buffer_size - ZCN_UDP_HEADROOM < ZCN_UDP_DATAGRAM_MAX_V6;
    st->large_rx = large && st->recv_mode == ZCN_UDP_RECV_READINESS;
    st->large = !large ? 0
                       : (cfg->large_buffer_count ? cfg->large_buffer_count : LARGE_DEFAULT) +
                             (st->large_rx ? st->rx_slots : 0);
    return ZCN_OK;
}

/* Bytes of buffer memory: the small buffers, then the large ones. */
static size_t small_bytes(const struct settings *st)
{
    return (size_t)st->buffers * st->buffer_size;
}

static size_t slab_bytes(const struct settings *st)
{
    return small_bytes(st) + (size_t)st->large * ZCN_UDP_LARGE_BUFFER_SIZE;
}

size_t zcn_udp_memory_size(const ZCN_UdpConfig *cfg)
{
    if (cfg == NULL) {
        zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "config is NULL");
        return 0;
    }
    struct settings st = {0};
    if (read_config(cfg, &st) != ZCN_OK)
        return 0;
    return slab_bytes(&st);
}

/* Receive buffers may use all but a send reserve of a quarter. Readiness
 * mode: recvmmsg slots (filled at the first read). Multishot mode: the
 * receive ring (c/bufring.c), filled with br_target buffers at first. */
static ZCN_Error setup_receive(ZCN_UdpSocket *u, const struct settings *st)
{
    u->br_max = receive_max(u->buffer_count);
    if (u->recv_mode == ZCN_UDP_RECV_READINESS) {
        u->br_target = 0; /* freed buffers go straight back to the pool */
        u->rx_slots = st->rx_slots;
        u->large_rx = st->large_rx;
        for (uint32_t i = 0; i < RX_BATCH; i++) {
            u->rx_bid[i] = NIL;
            u->rx_spill[i] = NIL;
            u->rx_msgs[i].msg_hdr.msg_iov = &u->rx_iov[2 * i];
            u->rx_msgs[i].msg_hdr.msg_iovlen = u->large_rx ? 2 : 1;
        }
        return ZCN_OK;
    }
    u->br_target = u->br_max < RING_START ? u->br_max : RING_START;
    ZCN_Error e = zcn_bufring_setup(&u->rx, u->ring, u->bgid, u->br_max, u->slab,
                                    u->buffer_size);
    if (e != ZCN_OK)
        return e;
    for (uint32_t i = 0; i < u->br_target; i++) {
        int64_t bid = buf_take(u);
        if (bid < 0)
            break;
        ring_add(u, (uint32_t)bid);
    }
    ring_publish(u);
    return ZCN_OK;
}

static ZCN_Error map_own(ZCN_UdpSocket *u, size_t bytes, uint8_t **out)
{
    void *m = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return zcn_fail((ZCN_Error)ENOMEM, "mmap of %zu bytes of UDP buffers: %s", bytes,
                        strerror(errno));
    u->own_map = m;
    u->own_map_bytes = bytes;
    *out = m;
    return ZCN_OK;
}

/* The slab: small buffers, then the large ones, in the caller's memory
 * or in one mapping of ours. Caller memory with room for the small ones
 * only (sized before large buffers existed) still works: the large ones
 * then get a mapping of their own. Untouched pages cost nothing. */
static ZCN_Error map_slabs(ZCN_UdpSocket *u, const struct settings *st, const ZCN_UdpConfig *cfg)
{
    size_t small = small_bytes(st), large = slab_bytes(st) - small;
    uint8_t *mem = cfg->buffer_memory, *large_mem = NULL;
    ZCN_Error e = ZCN_OK;
    if (mem == NULL) {
        e = map_own(u, small + large, &mem);
        large_mem = mem + small;
    } else if (cfg->buffer_memory_size < small) {
        e = zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                     "buffer_memory_size %zu is less than the %zu bytes of the buffer_count "
                     "buffers (zcn_udp_memory_size gives what the config needs)",
                     cfg->buffer_memory_size, small);
    } else if (cfg->buffer_memory_size >= small + large) {
        large_mem = mem + small;
    } else if (large > 0) {
        e = map_own(u, large, &large_mem);
    }
    if (e != ZCN_OK)
        return e;
    u->pool = zcn_pool_create_in(mem, small, st->buffer_size, st->buffers, &e);
    if (u->pool == NULL)
        return e;
    u->slab = mem;
    if (large == 0)
        return ZCN_OK;
    u->large_pool = zcn_pool_create_in(large_mem, large, ZCN_UDP_LARGE_BUFFER_SIZE, st->large, &e);
    if (u->large_pool == NULL)
        return e;
    u->large_slab = large_mem;
    u->large_count = st->large;
    u->large_free = st->large;
    return ZCN_OK;
}

static ZCN_Error alloc_tables(ZCN_UdpSocket *u, const struct settings *st,
                              const ZCN_UdpConfig *cfg)
{
    u->meta = calloc((size_t)u->buffer_count + st->large, sizeof *u->meta);
    u->slots = calloc(st->sends, sizeof *u->slots);
    if (u->meta == NULL || u->slots == NULL)
        return zcn_fail((ZCN_Error)ENOMEM, "UDP socket tables");
    u->slots_max = st->sends;
    for (uint32_t i = 0; i < st->sends; i++)
        u->slots[i].next = i + 1 < st->sends ? (int32_t)(i + 1) : NIL;
    u->slot_free = 0;
    return map_slabs(u, st, cfg);
}

/* Cancels every request of this socket and, on a shared ring, waits until
 * the kernel is done with them: the memory they point at is freed next. */
static void cancel_all(ZCN_UdpSocket *u)
{
    u->destroying = true;
    if (!u->started)
        return;
    /* Queued SQEs point into this socket's memory: hand them to the kernel
     * now so none is submitted after the free. */
    io_uring_submit(u->ring);
    struct io_uring_sync_cancel_reg reg;
    memset(&reg, 0, sizeof reg);
    reg.fd = u->fd;
    reg.flags = IORING_ASYNC_CANCEL_FD | IORING_ASYNC_CANCEL_ALL;
    reg.timeout.tv_sec = 1;
    reg.timeout.tv_nsec = 0;
    (void)io_uring_register_sync_cancel(u->ring, &reg);
    if (u->wake_armed) {
        reg.fd = u->wake_fd;
        (void)io_uring_register_sync_cancel(u->ring, &reg);
    }
    if (u->wakeup.armed) {
        reg.fd = u->wakeup.read_fd;
        (void)io_uring_register_sync_cancel(u->ring, &reg);
    }
}

/* A socket on a server, after cancel_all: its requests' completions that
 * are posted but not reaped would be dispatched to whichever socket takes
 * this source id next. First have the kernel post what it still holds
 * back (deferred task work, a CQ overflow backlog: io_uring_get_events),
 * then retire each of ours in place: the CQEs between head and tail are
 * userspace's, and one whose source id no server has (ZCN_SOURCE_NONE) is
 * dropped by the server's loop unread. Each request whose last completion
 * is retired leaves kernel_reqs. */
static void retire_posted(ZCN_UdpSocket *u)
{
    (void)io_uring_get_events(u->ring); /* -EEXIST off the owner thread: lingers */
    struct io_uring_cqe *cqe;
    unsigned head;
    io_uring_for_each_cqe(u->ring, head, cqe)
    {
        uint64_t ud = io_uring_cqe_get_data64(cqe);
        if ((ud >> 56) != ZCN_OP_SOURCE || (uint32_t)ud != u->source_id)
            continue;
        uint32_t tag = zcn_source_tag(ud);
        if (tag_gen(tag) == (u->gen & 0x3fu) && ends_request(tag_op(tag), cqe))
            u->kernel_reqs--;
        cqe->user_data = zcn_source_ud(ZCN_SOURCE_NONE, 0);
    }
}

static void free_socket(ZCN_UdpSocket *u)
{
    zcn_bufring_unregister(&u->rx, u->ring);
    if (u->server != NULL)
        zcn_server_detach(u->server, u->source_id);
    /* Ring teardown (own ring) cancels anything left before memory goes. */
    if (u->ring_handle != NULL)
        zcn_ring_destroy(u->ring_handle);
    zcn_bufring_unmap(&u->rx);
    if (u->fd >= 0)
        close(u->fd);
    if (u->wake_fd >= 0)
        close(u->wake_fd);
    zcn_wakeup_close(&u->wakeup);
    zcn_pool_destroy(u->pool);
    zcn_pool_destroy(u->large_pool);
    if (u->own_map != NULL)
        munmap(u->own_map, u->own_map_bytes);
    free(u->meta);
    free(u->slots);
    free(u);
}

static ZCN_UdpSocket *alloc_socket(const ZCN_UdpConfig *cfg, struct settings *st,
                                   ZCN_Error *err)
{
    zcn_clear_detail();
    if (cfg == NULL) {
        zcn_set_err(err, zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "config is NULL"));
        return NULL;
    }
    ZCN_Error e = read_config(cfg, st);
    if (e != ZCN_OK) {
        zcn_set_err(err, e);
        return NULL;
    }
    ZCN_UdpSocket *u = calloc(1, sizeof *u);
    if (u == NULL) {
        zcn_set_err(err, zcn_fail((ZCN_Error)ENOMEM, "UDP socket"));
        return NULL;
    }
    u->src.handle_cqe = handle_cqe;
    u->src.flush = flush_source;
    u->fd = -1;
    u->wake_fd = -1;
    u->live_slot = -1;
    zcn_wakeup_init(&u->wakeup);
    u->lent_head = NIL;
    u->autoflush = true;
    u->buffer_count = st->buffers;
    u->buffer_size = st->buffer_size;
    u->recv_mode = st->recv_mode;
    u->gso_size_max = (cfg->flags & ZCN_UDP_NO_GSO) ? 0 : ZCN_UDP_DATAGRAM_MAX_V6;
    u->gen = atomic_fetch_add(&next_gen, 1) & 0x3fu;
    /* Only the sizes matter: the kernel lays name, control and payload out
     * in each provided buffer. */
    u->rmsg.msg_namelen = NAME_BYTES;
    u->rmsg.msg_controllen = GAP_BYTES;
    return u;
}

/* The parts common to both create calls, once the ring is known. */
static ZCN_Error finish_create(ZCN_UdpSocket *u, const ZCN_UdpConfig *cfg,
                               const struct settings *st)
{
    ZCN_Error e = alloc_tables(u, st, cfg);
    if (e == ZCN_OK)
        e = open_socket(u, cfg);
    if (e == ZCN_OK)
        e = setup_receive(u, st);
    return e;
}

ZCN_UdpSocket *zcn_udp_create(const ZCN_UdpConfig *cfg, ZCN_Error *err)
{
    struct settings st = {0};
    ZCN_UdpSocket *u = alloc_socket(cfg, &st, err);
    if (u == NULL)
        return NULL;
    u->bgid = OWN_BGID;
    ZCN_Error e = ZCN_OK;
    /* CQ room for a completion per buffer and per send at once, so the
     * multishot receive is not ended by overflow in normal operation. */
    uint64_t cq = (uint64_t)st.buffers + st.sends + 64;
    u->ring_handle = zcn_ring_create_ex(st.entries, zcn_cq_entries(cq, st.entries),
                                        ZCN_RING_START_DISABLED, &e);
    if (u->ring_handle != NULL)
        u->ring = zcn_ring_io_uring(u->ring_handle);
    if (e == ZCN_OK) {
        u->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (u->wake_fd < 0)
            e = zcn_fail((ZCN_Error)errno, "eventfd: %s", strerror(errno));
    }
    if (e == ZCN_OK)
        e = finish_create(u, cfg, &st);
    if (e != ZCN_OK) {
        free_socket(u);
        zcn_set_err(err, e);
        return NULL;
    }
    u->live_slot = zcn_live_add(u);
    zcn_set_err(err, ZCN_OK);
    return u;
}

ZCN_UdpSocket *zcn_udp_create_on_server(ZCN_Server *server, const ZCN_UdpConfig *cfg,
                                        ZCN_Error *err)
{
    if (server == NULL) {
        zcn_set_err(err, zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "server is NULL"));
        return NULL;
    }
    struct settings st = {0};
    ZCN_UdpSocket *u = alloc_socket(cfg, &st, err);
    if (u == NULL)
        return NULL;
    u->ring = zcn_server_uring(server);
    /* An empty enter proves the ring is enabled (the server started) and
     * that this is its owner thread, before any SQE of ours is queued: an
     * SQE left in a disabled ring would outlive a failed create. */
    int ret = io_uring_get_events(u->ring);
    ZCN_Error e = ZCN_OK;
    if (ret == -EBADFD)
        e = zcn_fail(ZCN_ERR_NOT_STARTED, "start the server before attaching UDP sockets");
    else if (ret == -EEXIST)
        e = zcn_fail(ZCN_ERR_WRONG_THREAD, "not the server's owner thread");
    else if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY)
        e = zcn_fail((ZCN_Error)-ret, "io_uring_enter: %s", strerror(-ret));
    if (e == ZCN_OK)
        e = zcn_server_attach(server, &u->src, &u->source_id);
    if (e == ZCN_OK) {
        u->server = server;
        /* The server's own receive ring is group 0. */
        u->bgid = (uint16_t)(1 + u->source_id);
        e = finish_create(u, cfg, &st);
    }
    if (e == ZCN_OK)
        e = start(u);
    if (e != ZCN_OK) {
        u->started = false; /* nothing was submitted to the kernel yet */
        free_socket(u);
        zcn_set_err(err, e);
        return NULL;
    }
    zcn_set_err(err, ZCN_OK);
    return u;
}

ZCN_Error zcn_udp_destroy(ZCN_UdpSocket *u)
{
    if (u == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "socket is NULL");
    if (u->in_callback || (u->server != NULL && zcn_server_in_callback(u->server)))
        return zcn_fail(ZCN_ERR_BUSY, "the UDP socket cannot be destroyed from a callback");
    zcn_live_remove(u->live_slot); /* zcn_udp_stop no longer finds it */
    u->live_slot = -1;
    cancel_all(u);
    if (u->server != NULL && u->started) {
        retire_posted(u);
        if (u->kernel_reqs > 0) {
            /* Completions still to come (a CQ overflow the kernel could not
             * post back, or a request the cancel did not end in time): the
             * socket keeps its source id, memory and fd until the server's
             * loop has handed it the last of them (handle_cqe). */
            u->lingering = true;
            u->on_datagram = NULL;
            atomic_fetch_add(&lingering_sockets, 1);
            return ZCN_OK;
        }
    }
    free_socket(u);
    return ZCN_OK;
}

/* ------------------------------------------------------------------ */
/* queries                                                             */
/* ------------------------------------------------------------------ */

uint16_t zcn_udp_port(const ZCN_UdpSocket *u)
{
    return u == NULL ? 0 : u->port;
}

int zcn_udp_fd(const ZCN_UdpSocket *u)
{
    return u == NULL ? -1 : u->fd;
}

ZCN_Error zcn_udp_local_address(const ZCN_UdpSocket *u, struct sockaddr *addr,
                                socklen_t *len_inout)
{
    if (u == NULL || addr == NULL || len_inout == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "socket, addr or len is NULL");
    if (getsockname(u->fd, addr, len_inout) != 0)
        return zcn_fail((ZCN_Error)errno, "getsockname: %s", strerror(errno));
    return ZCN_OK;
}

size_t zcn_udp_buffer_size(const ZCN_UdpSocket *u)
{
    return u == NULL ? 0 : u->buffer_size;
}

size_t zcn_udp_datagram_capacity(const ZCN_UdpSocket *u)
{
    if (u == NULL)
        return 0;
    size_t cap = u->buffer_size - ZCN_UDP_HEADROOM;
    return cap < datagram_max(u) && !u->large_rx ? cap : datagram_max(u);
}

const uint8_t *zcn_udp_buffer_base(const ZCN_UdpSocket *u)
{
    return u == NULL ? NULL : u->slab;
}

ZCN_Error zcn_udp_stats(const ZCN_UdpSocket *u, ZCN_UdpStats *out)
{
    if (u == NULL || out == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "socket or out is NULL");
    *out = u->stats;
    out->buffers_total = u->buffer_count;
    ZCN_PoolStats ps;
    uint64_t in_pool = 0;
    if (zcn_pool_stats(u->pool, &ps) == ZCN_OK)
        in_pool = ps.free;
    out->buffers_in_use = u->buffer_count - in_pool - u->rx.count - u->rx_held;
    out->large_buffers_total = u->large_count;
    out->large_buffers_in_use = u->large_count - u->large_free - u->rx_spills;
    /* The socket's drop counter: datagrams the kernel threw away because
     * the receive queue (SO_RCVBUF) was full while we were not reading. */
    uint32_t mem[SK_MEMINFO_VARS];
    socklen_t len = sizeof mem;
    if (getsockopt(u->fd, SOL_SOCKET, SO_MEMINFO, mem, &len) == 0 &&
        len > SK_MEMINFO_DROPS * sizeof(uint32_t))
        out->kernel_drops = mem[SK_MEMINFO_DROPS];
    return ZCN_OK;
}
