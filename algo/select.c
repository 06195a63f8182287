/* select.c - the only place that chooses a schedule. */
#include "algo/algo.h"

const char *crux_algo_name(int algo)
{
    switch (algo) {
    case CRUX_ALGO_RING: return "ring";
    case CRUX_ALGO_RECDBL: return "recdbl";
    default: return "auto";
    }
}

/* Recursive doubling moves the whole vector log2(P) times: best while latency
 * dominates. The ring moves 2(P-1)/P of it once: best once bandwidth does, and it
 * needs at least one element per rank to be worth its 2(P-1) steps. */
void crux_allreduce_select(struct crux_coll *op)
{
    const struct crux_config *cfg = &op->comm->ctx->cfg;
    int algo = cfg->algo;
    if (algo == CRUX_ALGO_AUTO) {
        size_t bytes = op->count * op->esize;
        algo = bytes >= cfg->ring_min_bytes && op->count >= (size_t)op->comm->size
                   ? CRUX_ALGO_RING
                   : CRUX_ALGO_RECDBL;
    }
    op->algo = algo;
    op->fn = algo == CRUX_ALGO_RING ? crux_allreduce_ring : crux_allreduce_recdbl;
}

void crux_coll_select(struct crux_coll *op)
{
    switch (op->kind) {
    case CRUX_COLL_REDUCE_SCATTER:
        op->algo = CRUX_ALGO_RING;
        op->fn = crux_reduce_scatter_ring;
        break;
    case CRUX_COLL_ALLGATHER:
        op->algo = CRUX_ALGO_RING;
        op->fn = crux_allgather_ring;
        break;
    case CRUX_COLL_BCAST:
        op->algo = CRUX_ALGO_AUTO;
        op->fn = crux_bcast_binomial;
        break;
    default:
        op->algo = CRUX_ALGO_AUTO;
        op->fn = crux_barrier_dissemination;
        break;
    }
}
