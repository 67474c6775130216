/* Pool buffers as the TCP server and the UDP sockets use them: the
 * registered provided-buffer ring the kernel receives into, and the
 * buffers lent to the user (acquire_buffer / release_buffer). */
#include "uring.h"

#include <liburing.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

int64_t zcn_buf_take(ZCN_BufferPool *pool, const uint8_t *slab, size_t buffer_size)
{
    void *p = zcn_pool_acquire(pool);
    if (p == NULL)
        return -1;
    return (int64_t)(((uint8_t *)p - slab) / buffer_size);
}

uint8_t *zcn_user_buffer_acquire(ZCN_BufferPool *pool, struct zcn_buf_meta *meta,
                                 const uint8_t *slab, size_t buffer_size,
                                 size_t *capacity_out)
{
    void *p = zcn_pool_acquire(pool);
    if (p == NULL)
        return NULL;
    size_t bid = (size_t)((uint8_t *)p - slab) / buffer_size;
    meta[bid].state = ZCN_BUF_USER;
    meta[bid].refs = 0;
    if (capacity_out != NULL)
        *capacity_out = buffer_size;
    return p;
}

int64_t zcn_user_buffer_index(const ZCN_BufferPool *pool, const struct zcn_buf_meta *meta,
                              const uint8_t *buffer)
{
    int64_t bid = zcn_pool_index_of(pool, buffer);
    if (bid < 0 || meta[bid].state != ZCN_BUF_USER)
        return -1;
    return bid;
}

ZCN_Error zcn_user_buffer_release(ZCN_BufferPool *pool, struct zcn_buf_meta *meta,
                                  uint8_t *buffer, const char *acquire_name)
{
    int64_t bid = zcn_user_buffer_index(pool, meta, buffer);
    if (bid < 0)
        return zcn_fail(ZCN_ERR_FOREIGN_POINTER, "not a buffer from %s", acquire_name);
    meta[bid].state = ZCN_BUF_POOL;
    return zcn_pool_release(pool, buffer);
}

ZCN_Error zcn_bufring_setup(struct zcn_bufring *r, struct io_uring *ring, uint16_t bgid,
                            uint32_t entries, const uint8_t *slab, size_t buffer_size)
{
    memset(r, 0, sizeof *r);
    entries = zcn_pow2_ceil(entries);
    r->slab = slab;
    r->buffer_size = buffer_size;
    r->bgid = bgid;
    r->mask = entries - 1;
    r->bytes = ((size_t)entries * sizeof(struct io_uring_buf) + ZCN_PAGE_SIZE - 1) /
               ZCN_PAGE_SIZE * ZCN_PAGE_SIZE;
    void *mem = mmap(NULL, r->bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        return zcn_fail((ZCN_Error)errno, "mmap of the buffer ring: %s", strerror(errno));
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof reg);
    reg.ring_addr = (uint64_t)(uintptr_t)mem;
    reg.ring_entries = entries;
    reg.bgid = bgid;
    int ret = zcn_uring_register_buf_ring(ring, &reg);
    if (ret < 0) {
        munmap(mem, r->bytes);
        if (ret == -EINVAL || ret == -ENOSYS)
            return zcn_fail(ZCN_ERR_URING_UNSUPPORTED,
                            "provided-buffer rings need Linux >= 5.19 (register_buf_ring: %s)",
                            strerror(-ret));
        if (ret == -ENOMEM)
            return zcn_fail(ZCN_ERR_MEMLOCK, "register_buf_ring: ENOMEM (RLIMIT_MEMLOCK?)");
        if (ret == -EEXIST)
            return zcn_fail((ZCN_Error)EEXIST,
                            "register_buf_ring: EEXIST (not the ring's owner thread?)");
        return zcn_fail((ZCN_Error)-ret, "register_buf_ring: %s", strerror(-ret));
    }
    r->br = mem;
    io_uring_buf_ring_init(r->br);
    return ZCN_OK;
}

void zcn_bufring_unregister(struct zcn_bufring *r, struct io_uring *ring)
{
    if (r->br != NULL)
        zcn_uring_unregister_buf_ring(ring, r->bgid);
}

void zcn_bufring_unmap(struct zcn_bufring *r)
{
    if (r->br != NULL)
        munmap(r->br, r->bytes);
    r->br = NULL;
    free(r->order);
    r->order = NULL;
}

/* Indexed by the full 16-bit position rather than by position & mask: a
 * bundle's completion may be reaped after other receives' buffers were
 * recycled into the ring, and a slot of a ring-sized mirror could by then
 * name a newer buffer; a position is reused only after 65536 adds. */
ZCN_Error zcn_bufring_track_order(struct zcn_bufring *r)
{
    r->order = calloc(65536, sizeof *r->order);
    if (r->order == NULL)
        return zcn_fail((ZCN_Error)ENOMEM, "the receive ring's order mirror");
    return ZCN_OK;
}

uint16_t zcn_bufring_add(struct zcn_bufring *r, uint32_t bid)
{
    io_uring_buf_ring_add(r->br, (void *)(r->slab + (size_t)bid * r->buffer_size),
                          (unsigned)r->buffer_size, (unsigned short)bid, (int)r->mask,
                          (int)r->pending);
    /* The position liburing just wrote: the tail as published plus what
     * is pending (the kernel only ever reads the published tail). */
    uint16_t pos = (uint16_t)(r->br->tail + r->pending);
    if (r->order != NULL)
        r->order[pos] = (uint16_t)bid;
    r->pending++;
    r->count++;
    return pos;
}

void zcn_bufring_publish(struct zcn_bufring *r)
{
    if (r->pending == 0)
        return;
    io_uring_buf_ring_advance(r->br, (int)r->pending);
    r->pending = 0;
}
