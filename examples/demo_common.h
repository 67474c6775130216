/* What the two demo servers share (examples/http_server.c and
 * examples/resp_server.c, both compiled into the library): the handle's
 * common part, a table from fd to each connection's parser state, and the
 * batch of answers to one receive.
 *
 * The pattern is the one any protocol server on zcn would follow:
 *   - on_accept takes a slot for the connection's state (sized at create:
 *     nothing is allocated per connection or per message);
 *   - on_data runs the protocol's state machine over the borrowed bytes and
 *     appends the answers to one output batch, sent once at the end of the
 *     callback (pipelined requests leave in one send);
 *   - a send refused for a reason that passes (no free pool buffer, the
 *     server's budget used up) holds the connection: its unsent answers and
 *     the unparsed rest of the delivery are copied aside (the slow path's
 *     only allocation, capped for the whole demo), its receive is paused,
 *     and on_drain sends them, parses the rest and resumes it;
 *   - on_close gives the slot back. */
#ifndef ZCN_DEMO_COMMON_H
#define ZCN_DEMO_COMMON_H

#include <zero_copy_net.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Answers are gathered here and sent when the batch fills or on_data ends. */
#define DEMO_OUT_BYTES (64u * 1024u)
/* What all held connections may keep aside together (answers and input):
 * one more to hold past it is aborted instead (hold_aborts). */
#define DEMO_HOLD_MAX_BYTES (32u << 20)

/* A connection whose answers wait for on_drain: what was kept aside, in
 * order. Allocated when a hold starts, freed when it ends or the
 * connection closes. */
typedef struct DemoHold {
    uint8_t *out;         /* answers not yet queued: out[out_sent..out_len) */
    size_t out_len;
    size_t out_cap;
    size_t out_sent;
    uint8_t *in;          /* the rest of the delivery, not parsed yet */
    size_t in_len;
    bool active;          /* receiving paused, waiting for on_drain */
    bool close_after;     /* close once the answers are queued (the last one
                             asked for it, or was a protocol error) */
} DemoHold;

struct ZCN_Demo {
    ZCN_Loop *loop;
    ZCN_Server *server;
    ZCN_DemoStats stats;
    /* The protocol's hooks: a connection's state is given back (free what
     * it holds), and the demo itself is freed (after the common part). */
    void (*conn_closed)(ZCN_Demo *demo, void *conn);
    void (*free_protocol)(ZCN_Demo *demo);
    /* fd -> slot (-1: none), and the slots of conn_size bytes each. */
    int32_t *slot_of_fd;
    uint32_t fds_max;
    uint8_t *slots;
    size_t conn_size;
    uint32_t *free_slots;
    uint32_t free_count;
    uint32_t slots_max;
    /* The protocol's parser (on_data): the server's on_data is the common
     * one, which calls it unless the connection is held. */
    ZCN_OnData parse;
    /* Per slot; what all holds keep aside; the piece a send from on_drain
     * may be at most (one pool buffer: outside on_data a copy must fit the
     * connection's buffer cap, so a whole batch could be EMSGSIZE). */
    DemoHold *holds;
    uint64_t hold_bytes;
    size_t piece_max;
    /* The answers of the on_data (or on_drain) call running now, for
     * out_fd: in out until sent; once a send was refused for now
     * (holding), in hold->out. out_dead: the connection was aborted or
     * closed under the call, nothing more is answered. */
    int out_fd;
    DemoHold *hold;
    bool holding;
    bool out_dead;
    bool draining;        /* called from on_drain: no lent data, sends in pieces */
    size_t out_len;
    uint8_t out[DEMO_OUT_BYTES];
};

/* The common part of create: checks the config, allocates the connection
 * table for config->connections_max connections of conn_size bytes, puts a
 * listener on loop (user_data = demo) whose data goes to parse (unless the
 * connection is held; parse is also called from on_drain with the held
 * rest of a delivery, which is not lent memory) and starts it. The caller allocated demo (zeroed) and fills the protocol's
 * part and hooks. On failure returns the error with everything it made
 * undone (demo itself is the caller's to free). */
ZCN_Error demo_init(ZCN_Demo *demo, ZCN_Loop *loop, const ZCN_DemoConfig *config,
                    size_t conn_size, ZCN_OnData parse);
/* The state of fd's connection, NULL if it has none (rejected at accept). */
static inline void *demo_conn(ZCN_Demo *demo, int fd)
{
    if (fd < 0 || (uint32_t)fd >= demo->fds_max || demo->slot_of_fd[fd] < 0)
        return NULL;
    return demo->slots + (size_t)demo->slot_of_fd[fd] * demo->conn_size;
}
/* Starts the output batch of an on_data call for fd. */
void demo_out_begin(ZCN_Demo *demo, int fd);
/* Sends the batch. false: the connection cannot take it and nothing more
 * should be answered: it is closed, or it was aborted (its answers to one
 * receive do not fit its send queue: output_aborts; or holding them would
 * pass DEMO_HOLD_MAX_BYTES: hold_aborts). A send refused for now (the pool
 * or the server's budget is short) is not false: the answers are held
 * (demo_holding) and go out from on_drain. */
bool demo_flush(ZCN_Demo *demo);
/* Appends n bytes to the batch (sending it first when they do not fit;
 * more than the batch holds goes to zcn_loop_send directly, which copies
 * it into pool buffers). false as demo_flush. */
bool demo_out(ZCN_Demo *demo, const void *bytes, size_t n);
/* Room for n (<= DEMO_OUT_BYTES) bytes at the end of the batch, flushing
 * first if needed; NULL as demo_flush's false. Commit with demo_out_used. */
uint8_t *demo_out_room(ZCN_Demo *demo, size_t n);
static inline void demo_out_used(ZCN_Demo *demo, size_t n)
{
    if (demo->holding)
        demo->hold->out_len += n;
    else
        demo->out_len += n;
}
/* A send of this call was refused for now: the answers so far are held.
 * The parser must stop after the request it is answering (at a request
 * boundary its state is complete) and hand the rest of the delivery to
 * demo_hold_input; on_drain calls it again with that rest. */
static inline bool demo_holding(const ZCN_Demo *demo)
{
    return demo->holding;
}
/* Keeps the n unparsed bytes at p (copied: they are borrowed) for on_drain.
 * false: aborted instead (hold_aborts), as demo_flush's false. */
bool demo_hold_input(ZCN_Demo *demo, const uint8_t *p, size_t n);
/* The last answer is in: sends the batch and closes the connection once
 * every answer is queued (from on_drain if they are held). */
void demo_close_after(ZCN_Demo *demo);

#endif
