/* ring.c - ring reduce-scatter (+ allgather for allreduce), pipelined.
 *
 * Blocks: the count is cut into P blocks (the first count % P one element longer).
 * Reduce-scatter step s: send block (r - s) to the right, receive block (r - s - 1)
 * from the left and reduce it with our own contribution. Every transfer of the whole
 * schedule is posted at once: the send of step s streams behind the receive of step
 * s - 1 (it forwards the very block that receive produces, see transport.h `dep`), so
 * fragments flow around the ring without waiting for whole steps. Rank r ends the
 * reduce-scatter owning block (r + 1) fully reduced, in the order owner+1, owner+2, ...
 * around the ring; the allgather then copies that block to everyone, so every rank
 * holds the same bits.
 */
#include <string.h>

#include "algo/algo.h"

struct ring_blocks {
    size_t base, rem, esize;
};

static size_t block_off(const struct ring_blocks *b, int i)
{
    size_t ui = (size_t)i;
    return (ui * b->base + (ui < b->rem ? ui : b->rem)) * b->esize;
}

static size_t block_len(const struct ring_blocks *b, int i)
{
    return (b->base + ((size_t)i < b->rem ? 1 : 0)) * b->esize;
}

static int mod(int a, int p) { return ((a % p) + p) % p; }

/* Post the reduce-scatter. shift = 0: rank r ends owning block r + 1 (allreduce);
 * shift = 1: rank r owns block r (reduce_scatter_block). Intermediate blocks land in
 * acc; the owned block lands in acc too unless last_dst is given. Returns the last
 * receive (the owned block), or NULL with *rc set on failure. */
static struct crux_xfer *ring_post_rs(struct crux_coll *op, const struct ring_blocks *b, int shift,
                                      const char *src, char *acc, char *last_dst, int *rc)
{
    int P = op->comm->size, r = op->comm->rank;
    int left = mod(r - 1, P), right = mod(r + 1, P);
    struct crux_xfer *prev = NULL;
    for (int s = 0; s < P - 1; s++) {
        int sb = mod(r - s - shift, P), rb = mod(r - s - 1 - shift, P);
        const char *from = s == 0 ? src : acc;
        char *to = (s == P - 2 && last_dst) ? last_dst : acc + block_off(b, rb);
        *rc = crux_coll_send(op, right, (uint32_t)s, from + block_off(b, sb), block_len(b, sb),
                             prev, NULL);
        if (*rc == CRUX_SUCCESS)
            *rc = crux_coll_recv_reduce(op, left, (uint32_t)s, to, src + block_off(b, rb),
                                        block_len(b, rb), &prev);
        if (*rc != CRUX_SUCCESS)
            return NULL;
    }
    return prev;
}

int crux_allreduce_ring(struct crux_coll *op)
{
    if (op->phase == 1)
        return CRUX_SUCCESS;
    int P = op->comm->size, r = op->comm->rank, rc = CRUX_SUCCESS;
    char *dst = op->recvbuf;
    if (P == 1) {
        if (op->sendbuf != dst && op->count)
            memcpy(dst, op->sendbuf, op->count * op->esize);
        return CRUX_SUCCESS;
    }
    struct ring_blocks b = { op->count / (size_t)P, op->count % (size_t)P, op->esize };
    struct crux_xfer *prev = ring_post_rs(op, &b, 0, op->sendbuf, dst, NULL, &rc);
    if (!prev)
        return rc;
    int left = mod(r - 1, P), right = mod(r + 1, P);
    for (int s = 0; s < P - 1; s++) {
        int sb = mod(r + 1 - s, P), rb = mod(r - s, P);
        uint32_t tag = (uint32_t)(P + s);
        CRUX_TRY(crux_coll_send(op, right, tag, dst + block_off(&b, sb), block_len(&b, sb), prev, NULL));
        CRUX_TRY(crux_coll_recv(op, left, tag, dst + block_off(&b, rb), block_len(&b, rb), &prev));
    }
    op->phase = 1;
    return CRUX_INPROGRESS;
}

/* reduce_scatter_block: count is the per-rank block; rank r gets block r. */
int crux_reduce_scatter_ring(struct crux_coll *op)
{
    if (op->phase == 1)
        return CRUX_SUCCESS;
    int P = op->comm->size, rc = CRUX_SUCCESS;
    size_t bytes = op->count * op->esize;
    const char *src = op->sendbuf;
    if (P == 1) {
        if (src != op->recvbuf && bytes)
            memcpy(op->recvbuf, src, bytes);
        return CRUX_SUCCESS;
    }
    /* Scratch holds the partial blocks; in place, also a copy of the input, since
     * our result overwrites the start of it while other blocks still need it. */
    int in_place = src == op->recvbuf;
    CRUX_TRY(crux_comm_reserve(op->comm, 0, bytes * (size_t)P * (in_place ? 2 : 1)));
    char *acc = op->comm->scratch;
    if (in_place && bytes) {
        char *copy = acc + bytes * (size_t)P;
        memcpy(copy, src, bytes * (size_t)P);
        src = copy;
    }
    struct ring_blocks b = { op->count, 0, op->esize };
    if (!ring_post_rs(op, &b, 1, src, acc, op->recvbuf, &rc))
        return rc;
    op->phase = 1;
    return CRUX_INPROGRESS;
}
