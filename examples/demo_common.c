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

static DemoHold *hold_of(ZCN_Demo *d, int fd)
{
    if (fd < 0 || (uint32_t)fd >= d->fds_max || d->slot_of_fd[fd] < 0)
        return NULL;
    return &d->holds[d->slot_of_fd[fd]];
}

static void hold_free(ZCN_Demo *d, DemoHold *k)
{
    d->hold_bytes -= k->out_cap + k->in_len;
    free(k->out);
    free(k->in);
    *k = (DemoHold){0};
}

static void demo_on_close(void *user_data, int fd)
{
    ZCN_Demo *d = user_data;
    void *conn = demo_conn(d, fd);
    if (conn == NULL)
        return;
    hold_free(d, hold_of(d, fd));
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
    free(d->holds);
    d->slot_of_fd = NULL;
    d->slots = NULL;
    d->free_slots = NULL;
    d->holds = NULL;
}

static void demo_on_data(void *user_data, int fd, const uint8_t *data, size_t len);
static void demo_on_drain(void *user_data, int fd);

ZCN_Error demo_init(ZCN_Demo *d, ZCN_Loop *loop, const ZCN_DemoConfig *cfg, size_t conn_size,
                    ZCN_OnData parse)
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
    d->holds = calloc(conns, sizeof *d->holds);
    if (d->slot_of_fd == NULL || d->slots == NULL || d->free_slots == NULL || d->holds == NULL) {
        demo_free_tables(d);
        return ENOMEM;
    }
    memset(d->slot_of_fd, 0xff, (size_t)d->fds_max * sizeof *d->slot_of_fd); /* -1 */
    for (uint32_t i = 0; i < conns; i++)
        d->free_slots[i] = conns - 1 - i; /* slot 0 first */
    d->free_count = conns;
    d->parse = parse;
    d->piece_max = zcn_loop_buffer_size(loop);

    ZCN_Config lc = {.address = cfg->address ? cfg->address : "127.0.0.1",
                     .port = cfg->port,
                     .backlog = cfg->backlog};
    ZCN_Error err = ZCN_OK;
    d->server = zcn_server_create_on(loop, &lc, &err);
    if (d->server == NULL) {
        demo_free_tables(d);
        return err;
    }
    zcn_server_set_callbacks(d->server, d, demo_on_accept, demo_on_data, demo_on_close);
    zcn_server_set_drain_callback(d->server, demo_on_drain);
    err = zcn_server_start(d->server);
    if (err != ZCN_OK) {
        zcn_server_destroy(d->server);
        d->server = NULL;
        demo_free_tables(d);
    }
    return err;
}

/* ---- output: the batch, and holding what cannot be sent now ---------- */

void demo_out_begin(ZCN_Demo *d, int fd)
{
    d->out_fd = fd;
    d->out_len = 0;
    d->hold = hold_of(d, fd);
    d->holding = false;
    d->out_dead = d->hold == NULL;
}

/* Ends out_fd now (a reset), counted in *counter: nothing more is answered.
 * on_close may run inside the abort and free the hold. */
static bool demo_give_up(ZCN_Demo *d, uint64_t *counter)
{
    (*counter)++;
    d->out_dead = true;
    d->holding = false;
    d->out_len = 0;
    zcn_loop_abort(d->loop, d->out_fd);
    return false;
}

/* Room for n more held answer bytes at hold->out + out_len, within the
 * demo-wide cap; NULL: aborted instead. */
static uint8_t *hold_room(ZCN_Demo *d, size_t n)
{
    DemoHold *k = d->hold;
    if (k->out_cap - k->out_len >= n)
        return k->out + k->out_len;
    size_t need = k->out_len + n, cap = k->out_cap ? k->out_cap : 4096;
    while (n <= DEMO_HOLD_MAX_BYTES && cap < need)
        cap *= 2;
    uint8_t *out = n <= DEMO_HOLD_MAX_BYTES && d->hold_bytes - k->out_cap + cap <=
                                                   DEMO_HOLD_MAX_BYTES
                       ? realloc(k->out, cap)
                       : NULL;
    if (out == NULL) {
        demo_give_up(d, &d->stats.hold_aborts);
        return NULL;
    }
    d->hold_bytes += cap - k->out_cap;
    k->out = out;
    k->out_cap = cap;
    return out + k->out_len;
}

static bool hold_append(ZCN_Demo *d, const void *bytes, size_t n)
{
    uint8_t *room = hold_room(d, n);
    if (room == NULL)
        return false;
    memcpy(room, bytes, n);
    d->hold->out_len += n;
    return true;
}

/* Whether a refused send may succeed later with nothing but time and the
 * peer reading: no free pool buffer for the copy (EXHAUSTED), or a
 * QUEUE_FULL for the server as a whole (its budget or chunk table: the
 * connection then waits for budget) or from on_drain (the queue drained to
 * half its limits only; the answers held were accepted already). Both
 * promise on_drain. Not so in on_data: a QUEUE_FULL for the connection's
 * own limits, or EMSGSIZE, means its answers to this receive do not fit
 * its queue. */
static bool refusal_passes(ZCN_Demo *d, ZCN_Error err)
{
    if (err == ZCN_ERR_EXHAUSTED)
        return true;
    if (err != ZCN_ERR_QUEUE_FULL)
        return false;
    if (d->draining)
        return true;
    ZCN_ConnInfo info;
    return zcn_loop_conn_info(d->loop, d->out_fd, &info) == ZCN_OK &&
           (info.flags & ZCN_CONN_WAITING);
}

/* The answers from here on are held and out_fd's receive paused until
 * on_drain has sent them. Every refusal that passes set the loop to call
 * on_drain (a refused send asks for DRAIN; one the budget refused, or a
 * copy that found no buffer, also waits for budget, so the DRAIN comes even
 * with nothing queued to complete): no zcn_loop_notify_drain is needed. */
static bool hold_begin(ZCN_Demo *d)
{
    DemoHold *k = d->hold;
    if (!k->active) {
        if (zcn_loop_pause_recv(d->loop, d->out_fd) != ZCN_OK) {
            d->out_dead = true;
            return false;
        }
        k->active = true;
        d->stats.output_holds++;
    }
    d->holding = true;
    return true;
}

/* Queues n answer bytes for out_fd (in pieces of one pool buffer from
 * on_drain); what a refusal that passes leaves is held. */
static bool demo_send(ZCN_Demo *d, const uint8_t *bytes, size_t n)
{
    size_t sent = 0;
    while (sent < n && !d->holding) {
        size_t piece = n - sent;
        if (d->draining && piece > d->piece_max)
            piece = d->piece_max;
        ZCN_Error err = zcn_loop_send(d->loop, d->out_fd, bytes + sent, piece);
        if (err == ZCN_OK) {
            sent += piece;
        } else if (err == ZCN_ERR_CLOSED) {
            d->out_dead = true;
            d->out_len = 0;
            return false;
        } else if (!refusal_passes(d, err)) {
            /* Its answers to one receive do not fit its queue: aborted
             * rather than buffered without bound (the answers to one
             * receive are bounded, the receives are not). */
            return demo_give_up(d, &d->stats.output_aborts);
        } else if (!hold_begin(d)) {
            return false;
        }
    }
    return sent == n || hold_append(d, bytes + sent, n - sent);
}

bool demo_flush(ZCN_Demo *d)
{
    if (d->out_dead)
        return false;
    size_t n = d->out_len;
    d->out_len = 0; /* always 0 while holding: answers go to the hold */
    return n == 0 || demo_send(d, d->out, n);
}

uint8_t *demo_out_room(ZCN_Demo *d, size_t n)
{
    if (d->out_dead)
        return NULL;
    if (!d->holding && d->out_len + n > DEMO_OUT_BYTES && !demo_flush(d))
        return NULL;
    return d->holding ? hold_room(d, n) : d->out + d->out_len;
}

bool demo_out(ZCN_Demo *d, const void *bytes, size_t n)
{
    if (d->out_dead)
        return false;
    if (d->holding)
        return hold_append(d, bytes, n);
    if (n > DEMO_OUT_BYTES)
        return demo_flush(d) && demo_send(d, bytes, n);
    uint8_t *room = demo_out_room(d, n);
    if (room == NULL)
        return false;
    memcpy(room, bytes, n);
    demo_out_used(d, n);
    return true;
}

bool demo_hold_input(ZCN_Demo *d, const uint8_t *p, size_t n)
{
    if (d->out_dead)
        return false;
    DemoHold *k = d->hold;
    if (n == 0)
        return true;
    /* Exactly what is kept, not rounded up: in_len is what hold_bytes counts. */
    uint8_t *in = n <= DEMO_HOLD_MAX_BYTES && d->hold_bytes + n <= DEMO_HOLD_MAX_BYTES
                      ? realloc(k->in, k->in_len + n)
                      : NULL;
    if (in == NULL)
        return demo_give_up(d, &d->stats.hold_aborts);
    memcpy(in + k->in_len, p, n);
    k->in = in;
    k->in_len += n;
    d->hold_bytes += n;
    return true;
}

void demo_close_after(ZCN_Demo *d)
{
    if (!demo_flush(d))
        return;
    d->hold->close_after = true;
    if (!d->holding)
        zcn_loop_close(d->loop, d->out_fd); /* after the answers queued */
}

/* ---- the common callbacks -------------------------------------------- */

static void demo_on_data(void *user_data, int fd, const uint8_t *data, size_t len)
{
    ZCN_Demo *d = user_data;
    DemoHold *k = hold_of(d, fd);
    if (k != NULL && k->active) {
        /* The loop delivers nothing after zcn_loop_pause_recv; should it,
         * the bytes wait behind the rest, in order. */
        demo_out_begin(d, fd);
        if (!k->close_after)
            demo_hold_input(d, data, len);
        return;
    }
    d->parse(user_data, fd, data, len);
}

/* A held connection's queue drained (or the budget has room again): its
 * held answers go first, in pieces; then the rest of its delivery is
 * parsed, which may hold again (then the next on_drain goes on); once
 * nothing is held, it receives again. */
static void demo_on_drain(void *user_data, int fd)
{
    ZCN_Demo *d = user_data;
    DemoHold *k = hold_of(d, fd);
    if (k == NULL || !k->active)
        return;
    while (k->out_sent < k->out_len) {
        size_t n = k->out_len - k->out_sent;
        n = n < d->piece_max ? n : d->piece_max;
        ZCN_Error err = zcn_loop_send(d->loop, fd, k->out + k->out_sent, n);
        if (err == ZCN_ERR_QUEUE_FULL || err == ZCN_ERR_EXHAUSTED)
            return; /* refused again: another on_drain is promised */
        if (err != ZCN_OK) {
            if (err != ZCN_ERR_CLOSED) {
                demo_out_begin(d, fd);
                demo_give_up(d, &d->stats.output_aborts);
            }
            return;
        }
        k->out_sent += n;
    }
    k->out_len = 0;
    k->out_sent = 0;
    if (k->close_after) {
        zcn_loop_close(d->loop, fd); /* the hold goes in on_close */
        return;
    }
    /* The rest leaves the hold before the parse, which may hold a new rest
     * (of it) or end in on_close: either way it is freed here, after. */
    uint8_t *in = k->in;
    size_t in_len = k->in_len;
    k->in = NULL;
    k->in_len = 0;
    if (in_len > 0) {
        d->draining = true;
        d->parse(d, fd, in, in_len);
        d->draining = false;
    }
    free(in);
    d->hold_bytes -= in_len;
    k = hold_of(d, fd);
    if (k == NULL || d->out_dead || !k->active || k->out_len > 0 || k->in_len > 0 ||
        k->close_after)
        return; /* closed or aborted, held again, or closing */
    hold_free(d, k);
    zcn_loop_resume_recv(d->loop, fd);
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
