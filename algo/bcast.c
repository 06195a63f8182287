/* bcast.c - binomial-tree broadcast. Each rank receives from its parent and forwards
 * to its children streamed behind that receive (transport.h `dep`), so large
 * messages pipeline down the tree. One phase. */
#include "algo/algo.h"

int crux_bcast_binomial(struct crux_coll *op)
{
    if (op->phase == 1)
        return CRUX_SUCCESS;
    int P = op->comm->size;
    if (P == 1)
        return CRUX_SUCCESS;
    int vr = (op->comm->rank - op->root + P) % P; /* rank relative to the root */
    size_t bytes = op->count * op->esize;
    uint32_t tag = (uint32_t)op->root << 8; /* a root mismatch shows in the headers */
    struct crux_xfer *from_parent = NULL;
    int mask = 1;
    while (mask < P) {
        if (vr & mask) {
            int parent = (vr - mask + op->root) % P;
            CRUX_TRY(crux_coll_recv(op, parent, tag, op->recvbuf, bytes, &from_parent));
            break;
        }
        mask <<= 1;
    }
    /* Children: vr + m for every m below our lowest set bit, biggest subtree first. */
    for (mask >>= 1; mask > 0; mask >>= 1) {
        if (vr + mask < P) {
            int child = (vr + mask + op->root) % P;
            CRUX_TRY(crux_coll_send(op, child, tag, op->recvbuf, bytes, from_parent, NULL));
        }
    }
    op->phase = 1;
    return CRUX_INPROGRESS;
}
