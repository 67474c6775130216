/* The public header on its own, first and twice (include guard), under
 * -std=c11 -Wall -Wextra -Werror -pedantic: compiled by the zcn_header_c11
 * test with -fsyntax-only. Nothing may come before the include. */
#include "zero_copy_net.h"
#include "zero_copy_net.h"

_Static_assert(ZCN_VERSION_HEX == ((ZCN_VERSION_MAJOR << 16) | (ZCN_VERSION_MINOR << 8) |
                                   ZCN_VERSION_PATCH),
               "ZCN_VERSION_HEX");
_Static_assert(ZCN_ERR_LAST_ > ZCN_ERR_BASE, "error codes");

unsigned int header_c11_probe(void);
unsigned int header_c11_probe(void)
{
    ZCN_Config config = {0};
    ZCN_PoolStats pool_stats = {0};
    ZCN_ServerStats server_stats = {0};
    ZCN_Event event = {0};
    (void)pool_stats;
    (void)server_stats;
    (void)event;
    config.port = 0;
    return zcn_version() + (unsigned int)config.port;
}
