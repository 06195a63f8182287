/* recdbl.c - recursive-doubling allreduce, for small messages.
 *
 * log2(P) exchange steps of the whole vector; each step combines our partial result
 * with the partner's. a op b == b op a bit for bit (lib/reduce.h), so both partners
 * hold identical bits after every step. Non-powers of two use the standard fold
 * (Rabenseifner / MPICH): with P = 2^m + rem, the first 2*rem ranks pair up, even
 * ranks hand their vector to rank + 1 and sit out, and get the result back at the end.
 *
 * Steps are separate phases: the result of a step is the input of the next, and a
 * partner's data may arrive before our previous step has finished sending. Partial
 * results ping-pong between two scratch buffers, the last step writes recvbuf.
 */
#include <string.h>

#include "algo/algo.h"

#define TAG_FOLD_IN 0x1000u
#define TAG_FOLD_OUT 0x1001u

enum { PH_START = 0, PH_STEP, PH_FINISH, PH_DONE };

static int pof2_floor(int p) { return 1 << (31 - __builtin_clz((unsigned)p)); } /* p >= 1 */

/* Rank in the power-of-two group, or -1 for ranks that sat out the fold. */
static int recdbl_newrank(int r, int rem)
{
    if (r < 2 * rem)
        return (r & 1) ? r / 2 : -1;
    return r - rem;
}

static int recdbl_realrank(int nr, int rem) { return nr < rem ? nr * 2 + 1 : nr + rem; }

/* op->step: next step; op->sendbuf is re-pointed at the current partial result. */
static int recdbl_post_step(struct crux_coll *op, int pof2, int rem)
{
    size_t bytes = op->count * op->esize;
    int nr = recdbl_newrank(op->comm->rank, rem);
    int mask = 1 << op->step;
    int peer = recdbl_realrank(nr ^ mask, rem);
    const char *cur = op->sendbuf;
    char *scratch = op->comm->scratch;
    char *next;
    if ((mask << 1) >= pof2 && cur != op->recvbuf)
        next = op->recvbuf;
    else
        next = cur == scratch ? scratch + bytes : scratch;
    CRUX_TRY(crux_coll_send(op, peer, (uint32_t)op->step, cur, bytes, NULL, NULL));
    CRUX_TRY(crux_coll_recv_reduce(op, peer, (uint32_t)op->step, next, cur, bytes, NULL));
    op->sendbuf = next;
    op->step++;
    return CRUX_INPROGRESS;
}

int crux_allreduce_recdbl(struct crux_coll *op)
{
    int P = op->comm->size, r = op->comm->rank;
    int pof2 = pof2_floor(P), rem = P - pof2;
    size_t bytes = op->count * op->esize;
    switch (op->phase) {
    case PH_START:
        if (P == 1) {
            if (op->sendbuf != op->recvbuf && bytes)
                memcpy(op->recvbuf, op->sendbuf, bytes);
            return CRUX_SUCCESS;
        }
        CRUX_TRY(crux_comm_reserve(op->comm, 0, 2 * bytes));
        if (r < 2 * rem && !(r & 1)) { /* sits out: hand over, wait for the result */
            CRUX_TRY(crux_coll_send(op, r + 1, TAG_FOLD_IN, op->sendbuf, bytes, NULL, NULL));
            CRUX_TRY(crux_coll_recv(op, r + 1, TAG_FOLD_OUT, op->recvbuf, bytes, NULL));
            op->phase = PH_DONE;
            return CRUX_INPROGRESS;
        }
        op->phase = PH_STEP;
        if (r < 2 * rem) { /* absorb the partner's vector first */
            char *scratch = op->comm->scratch;
            CRUX_TRY(crux_coll_recv_reduce(op, r - 1, TAG_FOLD_IN, scratch, op->sendbuf, bytes, NULL));
            op->sendbuf = scratch;
            return CRUX_INPROGRESS;
        }
        /* fall through */
    case PH_STEP:
        if ((1 << op->step) < pof2)
            return recdbl_post_step(op, pof2, rem);
        if (op->sendbuf != op->recvbuf && bytes)
            memcpy(op->recvbuf, op->sendbuf, bytes);
        op->phase = PH_FINISH;
        if (r < 2 * rem) {
            CRUX_TRY(crux_coll_send(op, r - 1, TAG_FOLD_OUT, op->recvbuf, bytes, NULL, NULL));
            return CRUX_INPROGRESS;
        }
        return CRUX_SUCCESS;
    case PH_FINISH:
    case PH_DONE:
    default:
        return CRUX_SUCCESS;
    }
}
