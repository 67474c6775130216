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

/* Smallest power of two >= v (v <= 2^31). */
static inline uint32_t zcn_pow2_ceil(uint32_t v)
{
    if (v <= 1)
        return 1;
    return 1u << (32 - __builtin_clz(v - 1));
}

#endif
