/* barrier.c - dissemination barrier: ceil(log2 P) rounds of empty messages, round k
 * to rank + 2^k and from rank - 2^k. A round is a phase: it must finish before the
 * next starts, or the barrier would not order anything. */
#include "algo/algo.h"

int crux_barrier_dissemination(struct crux_coll *op)
{
    int P = op->comm->size, r = op->comm->rank;
    int dist = 1 << op->step;
    if (dist >= P)
        return CRUX_SUCCESS;
    CRUX_TRY(crux_coll_send(op, (r + dist) % P, (uint32_t)op->step, NULL, 0, NULL, NULL));
    CRUX_TRY(crux_coll_recv(op, (r - dist + P) % P, (uint32_t)op->step, NULL, 0, NULL));
    op->step++;
    return CRUX_INPROGRESS;
}
