/* The part the demo servers share: see demo_common.h. */
#include "demo_common.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#define DEMO_CONNECTIONS_DEFAULT 4096u
/* fds above this are not given a slot (and so are aborted at accept). */
#define DEMO_FDS_MAX (1u << 20)

static void demo_on_accept(void *user_data, int fd)
{
    ZCN_Demo *d = user_data;
    if (fd < 0 || (uint32_t)fd >= d->fds_max || d->free_count == 0) {
        d->stats.rejected++;
        zcn_loop_abort(d->loop, fd);
        return;
    }
    uint32_t slot = d->free_slots[--d->free_count];
    d->slot_of_fd[fd] = (int32_t)slot;
    memset(d->slots + (size_t)slot * d->conn_size, 0, d->conn_size);
    d->stats.connections++;
}

static void demo_on_close(void *user_data, int fd)
{
    ZCN_Demo *d = user_data;
    void *conn = demo_conn(d, fd);
    if (conn == NULL)
        return;
    if (d->conn_closed != NULL)
        d->conn_closed(d, conn);
    d->free_slots[d->free_count++] = (uint32_t)d->slot_of_fd[fd];
    d->slot_of_fd[fd] = -1;
    d->stats.connections--;
}

static uint32_t fd_table_size(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY ||
        rl.rlim_cur > DEMO_FDS_MAX)
        return DEMO_FDS_MAX;
    return (uint32_t)rl.rlim_cur;
}

static void demo_free_tables(ZCN_Demo *d)
{
    free(d->slot_of_fd);
    free(d->slots);
    free(d->free_slots);
    d->slot_of_fd = NULL;
    d->slots = NULL;
    d->free_slots = NULL;
}

ZCN_Error demo_init(ZCN_Demo *d, ZCN_Loop *loop, const ZCN_DemoConfig *cfg, size_t conn_size,
                    ZCN_OnData on_data)
{
    if (loop == NULL)
        return ZCN_ERR_INVALID_ARGUMENT;
    uint32_t conns = cfg->connections_max ? cfg->connections_max : DEMO_CONNECTIONS_DEFAULT;
    if (conns > ZCN_SERVER_CONNECTIONS_MAX)
        return ZCN_ERR_INVALID_ARGUMENT;
    d->loop = loop;
    d->conn_size = (conn_size + 15u) & ~(size_t)15u;
    d->slots_max = conns;
    d->fds_max = fd_table_size();
    /* calloc: untouched pages of the tables cost no memory until used. */
    d->slot_of_fd = malloc((size_t)d->fds_max * sizeof *d->slot_of_fd);
    d->slots = calloc(conns, d->conn_size);
    d->free_slots = malloc((size_t)conns * sizeof *d->free_slots);
    if (d->slot_of_fd == NULL || d->slots == NULL || d->free_slots == NULL) {
        demo_free_tables(d);
        return ENOMEM;
    }
    memset(d->slot_of_fd, 0xff, (size_t)d->fds_max * sizeof *d->slot_of_fd); /* -1 */
    for (uint32_t i = 0; i < conns; i++)
        d->free_slots[i] = conns - 1 - i; /* slot 0 first */
    d->free_count = conns;

    ZCN_Config lc = {.address = cfg->address ? cfg->address : "127.0.0.1",
                     .port = cfg->port,
                     .backlog = cfg->backlog};
    ZCN_Error err = ZCN_OK;
    d->server = zcn_server_create_on(loop, &lc, &err);
    if (d->server == NULL) {
        demo_free_tables(d);
        return err;
    }
    zcn_server_set_callbacks(d->server, d, demo_on_accept, on_data, demo_on_close);
    err = zcn_server_start(d->server);
    if (err != ZCN_OK) {
        zcn_server_destroy(d->server);
        d->server = NULL;
        demo_free_tables(d);
    }
    return err;
}

/* A refused send: the peer does not read what it asked for. Its queue is
 * at the loop's limit, so it is aborted rather than buffered without
 * bound (the answers to one receive are bounded, the receives are not). */
static bool demo_refused(ZCN_Demo *d, ZCN_Error err)
{
    if (err != ZCN_ERR_CLOSED) {
        d->stats.output_aborts++;
        zcn_loop_abort(d->loop, d->out_fd);
    }
    d->out_len = 0;
    return false;
}

bool demo_flush(ZCN_Demo *d)
{
    if (d->out_len == 0)
        return true;
    ZCN_Error err = zcn_loop_send(d->loop, d->out_fd, d->out, d->out_len);
    if (err != ZCN_OK)
        return demo_refused(d, err);
    d->out_len = 0;
    return true;
}

uint8_t *demo_out_room(ZCN_Demo *d, size_t n)
{
    if (d->out_len + n > DEMO_OUT_BYTES && !demo_flush(d))
        return NULL;
    return d->out + d->out_len;
}

bool demo_out(ZCN_Demo *d, const void *bytes, size_t n)
{
    if (n > DEMO_OUT_BYTES) {
        if (!demo_flush(d))
            return false;
        ZCN_Error err = zcn_loop_send(d->loop, d->out_fd, bytes, n);
        return err == ZCN_OK || demo_refused(d, err);
    }
    uint8_t *room = demo_out_room(d, n);
    if (room == NULL)
        return false;
    memcpy(room, bytes, n);
    d->out_len += n;
    return true;
}

uint16_t zcn_demo_port(const ZCN_Demo *d)
{
    return d != NULL && d->server != NULL ? zcn_server_port(d->server) : 0;
}

ZCN_Error zcn_demo_stats(const ZCN_Demo *d, ZCN_DemoStats *out)
{
    if (d == NULL || out == NULL)
        return ZCN_ERR_INVALID_ARGUMENT;
    *out = d->stats;
    return ZCN_OK;
}

ZCN_Error zcn_demo_destroy(ZCN_Demo *d)
{
    if (d == NULL)
        return ZCN_ERR_INVALID_ARGUMENT;
    if (d->server != NULL) {
        ZCN_Error err = zcn_server_destroy(d->server); /* on_close for each connection */
        if (err != ZCN_OK)
            return err;
    }
    demo_free_tables(d);
    if (d->free_protocol != NULL)
        d->free_protocol(d);
    free(d);
    return ZCN_OK;
}
