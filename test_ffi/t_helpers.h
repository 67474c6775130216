/* Helpers shared by the C tests (liburing's test/ style): exit 0 = pass,
 * 1 = fail, 77 = skip (CTest SKIP_RETURN_CODE). */
#ifndef ZCN_T_HELPERS_H
#define ZCN_T_HELPERS_H

#include "zero_copy_net.h"

#include <stdio.h>
#include <stdlib.h>

#define T_EXIT_PASS 0
#define T_EXIT_FAIL 1
#define T_EXIT_SKIP 77

/* Fails the test with file:line and the expression when cond is false. */
#define T_CHECK(cond)                                                          \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__,   \
                    #cond);                                                    \
            exit(T_EXIT_FAIL);                                                 \
        }                                                                      \
    } while (0)

/* Fails unless err == expected, printing both names. */
#define T_CHECK_ERR(err, expected)                                             \
    do {                                                                       \
        ZCN_Error t_e_ = (err), t_x_ = (expected);                             \
        if (t_e_ != t_x_) {                                                    \
            fprintf(stderr, "%s:%d: %s gave %s (%s), expected %s\n", __FILE__,  \
                    __LINE__, #err, zcn_error_name(t_e_), zcn_error_detail(),  \
                    zcn_error_name(t_x_));                                     \
            exit(T_EXIT_FAIL);                                                 \
        }                                                                      \
    } while (0)

/* Exits 77 with the reason when io_uring cannot be used on this machine. */
static inline void t_require_io_uring(void)
{
    ZCN_Error err = ZCN_OK;
    ZCN_Ring *ring = zcn_ring_create(8, 0, &err);
    if (ring == NULL) {
        fprintf(stderr, "SKIP: io_uring unavailable: %s (%s)\n",
                zcn_error_name(err), zcn_error_detail());
        exit(T_EXIT_SKIP);
    }
    zcn_ring_destroy(ring);
}

#endif
