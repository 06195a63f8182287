/* allgather.c - ring allgather: P - 1 steps, each forwarding the block received in
 * the previous step (streamed behind it, transport.h `dep`). All posted at once. */
#include <string.h>

#include "algo/algo.h"

int crux_allgather_ring(struct crux_coll *op)
{
    if (op->phase == 1)
        return CRUX_SUCCESS;
    int P = op->comm->size, r = op->comm->rank;
    size_t bytes = op->count * op->esize;
    char *out = op->recvbuf;
    if (op->sendbuf != out + (size_t)r * bytes && bytes)
        memcpy(out + (size_t)r * bytes, op->sendbuf, bytes);
    if (P == 1)
        return CRUX_SUCCESS;
    int left = (r - 1 + P) % P, right = (r + 1) % P;
    struct crux_xfer *prev = NULL;
    for (int s = 0; s < P - 1; s++) {
        int sb = (r - s + P) % P, rb = (r - s - 1 + 2 * P) % P;
        CRUX_TRY(crux_coll_send(op, right, (uint32_t)s, out + (size_t)sb * bytes, bytes, prev, NULL));
        CRUX_TRY(crux_coll_recv(op, left, (uint32_t)s, out + (size_t)rb * bytes, bytes, &prev));
    }
    op->phase = 1;
    return CRUX_INPROGRESS;
}
