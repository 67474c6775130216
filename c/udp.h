/* The UDP socket's private header: its structure, the constants and
 * the inline helpers every part shares (user_data tags, buffer addresses,
 * the receive ring, buffer references, the owner check, SQEs) and the
 * functions one part calls in another. The parts: c/udp.c (completions,
 * the loop, options, create and destroy, queries; its opening comment
 * describes the design), c/udp_recv.c (the receive side) and c/udp_send.c
 * (the send side). Not installed. */
#ifndef ZCN_UDP_H
#define ZCN_UDP_H

#include "uring.h"

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
#define ERR_PENDING_MAX 8u      /* batch mode: errors held between polls */

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
    ZCN_Loop *loop;         /* NULL: the socket has its own ring */
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
    _Atomic bool owner_set;     /* release after owner is written: other
                                   threads read both (zcn_udp_stats) */
    /* zcn_udp_stats for other threads: a seqlock copy the owner publishes
     * at the end of each of its loop calls (on a loop: with the loop's). */
    _Atomic uint32_t snap_seq;
    _Atomic uint64_t snap[sizeof(ZCN_UdpStats) / sizeof(uint64_t)];

    int in_callback;
    void *user_data;
    ZCN_OnDatagram on_datagram;
    ZCN_UdpEvent *ev;       /* poll mode: events go here */
    uint32_t ev_cap;
    uint32_t ev_n;
    int32_t lent_head;      /* buffers lent to the current poll batch */

    /* Batch mode on a loop (zcn_udp_set_batch): datagrams of a zcn_loop_poll
     * go to batch_ev (ev points there while read_batch fills it), ev_n
     * counting them until the next loop call's end_batch; batch_event is
     * this poll's ZCN_EVENT_DATAGRAMS (NULL until the first entry). Errors
     * that cannot be reported yet wait in err_pending. */
    ZCN_UdpEvent *batch_ev;
    uint32_t batch_cap;
    uint32_t batch_tag;
    ZCN_Event *batch_event;
    int32_t err_pending[ERR_PENDING_MAX];
    uint32_t err_n;
    bool recv_paused;       /* zcn_udp_pause_recv */

    ZCN_UdpStats stats;
};

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
/* Sends and loop calls come from one thread: the ring's SQ has no lock, and
 * a SINGLE_ISSUER ring refuses other submitters. */
static inline ZCN_Error owner_check(ZCN_UdpSocket *u)
{
    if (u->loop != NULL)
        return ZCN_OK; /* the server's owner rules apply */
    if (!atomic_load_explicit(&u->owner_set, memory_order_relaxed)) {
        u->owner = pthread_self();
        atomic_store_explicit(&u->owner_set, true, memory_order_release);
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
static inline struct io_uring_sqe *get_sqe(ZCN_UdpSocket *u)
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

static inline void ring_add(ZCN_UdpSocket *u, uint32_t bid)
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

/* A buffer nobody refers to: refill the ring first, then the pool (a LIFO
 * stack, so the next buffer taken from it is the warmest). */
static inline void recycle(ZCN_UdpSocket *u, uint32_t bid)
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
static inline int64_t large_take(ZCN_UdpSocket *u)
{
    if (u->large_free == 0)
        return -1;
    int64_t i = zcn_buf_take(u->large_pool, u->large_slab, ZCN_UDP_LARGE_BUFFER_SIZE);
    if (i < 0)
        return -1;
    u->large_free--;
    return u->buffer_count + i;
}

/* ------------------------------------------------------------------ */
/* functions of one part called in another                             */
/* ------------------------------------------------------------------ */

/* c/udp_recv.c */
void zcn_udpi_maybe_rearm(ZCN_UdpSocket *u);
void zcn_udpi_publish_stats(ZCN_UdpSocket *u);
void zcn_udpi_end_batch(ZCN_UdpSocket *u);
void zcn_udpi_arm_recv(ZCN_UdpSocket *u);
void zcn_udpi_on_ready(ZCN_UdpSocket *u, struct io_uring_cqe *cqe, uint32_t index);
void zcn_udpi_on_recv(ZCN_UdpSocket *u, struct io_uring_cqe *cqe);
void zcn_udpi_batch_error(ZCN_UdpSocket *u, int err);
void zcn_udpi_batch_end(ZCN_UdpSocket *u);
void zcn_udpi_batch_flush_errors(ZCN_UdpSocket *u);

/* c/udp_send.c */
void zcn_udpi_on_send(ZCN_UdpSocket *u, uint32_t index, int res);
void zcn_udpi_flush_tx(ZCN_UdpSocket *u);
ZCN_Error zcn_udpi_submit_now(ZCN_UdpSocket *u);

/* c/udp.c */
ZCN_Error zcn_udpi_start(ZCN_UdpSocket *u);

#endif
