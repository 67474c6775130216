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
 *   - on_close gives the slot back. */
#ifndef ZCN_DEMO_COMMON_H
#define ZCN_DEMO_COMMON_H

#include <zero_copy_net.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Answers are gathered here and sent when the batch fills or on_data ends. */
#define DEMO_OUT_BYTES (64u * 1024u)

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
    /* The answers of the on_data call running now, for out_fd. */
    int out_fd;
    size_t out_len;
    uint8_t out[DEMO_OUT_BYTES];
};

/* The common part of create: checks the config, allocates the connection
 * table for config->connections_max connections of conn_size bytes, puts a
 * listener on loop with on_data as its data callback (user_data = demo) and
 * starts it. The caller allocated demo (zeroed) and fills the protocol's
 * part and hooks. On failure returns the error with everything it made
 * undone (demo itself is the caller's to free). */
ZCN_Error demo_init(ZCN_Demo *demo, ZCN_Loop *loop, const ZCN_DemoConfig *config,
                    size_t conn_size, ZCN_OnData on_data);
/* The state of fd's connection, NULL if it has none (rejected at accept). */
static inline void *demo_conn(ZCN_Demo *demo, int fd)
{
    if (fd < 0 || (uint32_t)fd >= demo->fds_max || demo->slot_of_fd[fd] < 0)
        return NULL;
    return demo->slots + (size_t)demo->slot_of_fd[fd] * demo->conn_size;
}
/* Starts the output batch of an on_data call for fd. */
static inline void demo_out_begin(ZCN_Demo *demo, int fd)
{
    demo->out_fd = fd;
    demo->out_len = 0;
}
/* Sends the batch. false: the connection cannot take it (closed, or its
 * send queue is full: then it is aborted, counted in output_aborts) and
 * nothing more should be answered. */
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
    demo->out_len += n;
}

#endif
