/* Shared by the library's own sources; not installed. */
#ifndef ZCN_INTERNAL_H
#define ZCN_INTERNAL_H

#include "zero_copy_net.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ZCN_CACHE_LINE 64

#define ZCN_LIKELY(x) __builtin_expect(!!(x), 1)
#define ZCN_UNLIKELY(x) __builtin_expect(!!(x), 0)

/* Records the detail string zcn_error_detail() returns on this thread and
 * returns err, so failure paths read `return zcn_fail(ERR, "...", ...)`. */
ZCN_Error zcn_fail(ZCN_Error err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Clears the detail string (a successful create starts clean). */
void zcn_clear_detail(void);

/* Sets *err when err is not NULL. */
static inline void zcn_set_err(ZCN_Error *err, ZCN_Error value)
{
    if (err != NULL)
        *err = value;
}

/* Maps a failed io_uring_queue_init* (negative errno) to a code naming the
 * likely cause, with the detail string set. */
ZCN_Error zcn_uring_setup_error(int neg_errno);

/* zcn_ring_create with an explicit CQ size (0 = 2 * entries); c/ring.c.
 * The server sizes its CQ for its connection count. */
ZCN_Ring *zcn_ring_create_ex(uint32_t entries, uint32_t cq_entries, uint32_t flags,
                             ZCN_Error *err);

/* Internal zcn_ring_create_ex flag: create the ring disabled
 * (IORING_SETUP_R_DISABLED) so that with SINGLE_ISSUER the thread that later
 * calls zcn_ring_enable, not the creating one, becomes the submitter. */
#define ZCN_RING_START_DISABLED (1u << 31)
ZCN_Error zcn_ring_enable(ZCN_Ring *ring);

/* Completion sources that share a server's ring and loop (UDP sockets
 * created on a server). A source prepares its own SQEs on
 * zcn_server_uring() with user_data from zcn_source_ud(); the server's loop
 * hands each such completion to handle_cqe. Attach/detach on the owner
 * thread only; a server with sources attached refuses destroy (ZCN_ERR_BUSY). */
struct io_uring_cqe;
typedef struct zcn_source {
    void (*handle_cqe)(struct zcn_source *src, struct io_uring_cqe *cqe);
} zcn_source;
#define ZCN_SOURCES_MAX 64
#define ZCN_OP_SOURCE 7u
/* user_data for a source's SQE: `tag` (24 bits) is the source's own. */
static inline uint64_t zcn_source_ud(uint32_t source_id, uint32_t tag)
{
    return ((uint64_t)ZCN_OP_SOURCE << 56) | ((uint64_t)(tag & 0xffffffu) << 32) | source_id;
}
static inline uint32_t zcn_source_tag(uint64_t user_data)
{
    return (uint32_t)(user_data >> 32) & 0xffffffu;
}
ZCN_Error zcn_server_attach(ZCN_Server *server, zcn_source *src, uint32_t *id_out);
void zcn_server_detach(ZCN_Server *server, uint32_t id);
/* The server's struct io_uring (void * to keep liburing out of this header). */
void *zcn_server_uring(ZCN_Server *server);
/* Nonzero while one of the server's callbacks runs. A source brackets its
 * own callbacks with zcn_server_callback_enter/leave so that running the
 * loop or destroying the server from them gives ZCN_ERR_BUSY. */
int zcn_server_in_callback(const ZCN_Server *server);
void zcn_server_callback_enter(ZCN_Server *server);
void zcn_server_callback_leave(ZCN_Server *server);

/* Smallest power of two >= v (v <= 2^31). */
static inline uint32_t zcn_pow2_ceil(uint32_t v)
{
    if (v <= 1)
        return 1;
    return 1u << (32 - __builtin_clz(v - 1));
}

#endif
