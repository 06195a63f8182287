/* select.c - the only place that chooses a schedule. */
#include "algo/algo.h"

const char *crux_algo_name(int algo)
{
    switch (algo) {
    case CRUX_ALGO_RING: return "ring";
    case CRUX_ALGO_RECDBL: return "recdbl";
    case CRUX_ALGO_HIER: return "hier";
    case CRUX_ALGO_TREE: return "tree";
    case CRUX_ALGO_SHM: return "shm";
    default: return "auto";
    }
}

/* Recursive doubling moves the whole vector log2(P) times: best while latency
 * dominates (below CRUX_RING_MIN_BYTES, 64 KiB by default, or fewer elements than
 * ranks). Past that, by topology:
 *  - 4 or more nodes and at most SELECT_TREE_MAX_BYTES (1 MiB): the double binary
 *    tree, whose ~2 log2(P) hops beat the ring's 2(P-1) steps while the message is
 *    still too small for the ring's bandwidth advantage to pay for its latency;
 *  - several nodes with more than one rank on some node: hierarchical, which keeps
 *    (L-1)/L of the traffic on shared memory and sends only 2(N-1)/N of the vector
 *    over the network, spread over every rank's rail;
 *  - otherwise the pipelined ring (one node, or one rank per node).
 * Everything is decided from values all ranks share (count, dtype, comm topology,
 * config), so every rank picks the same schedule. */
#define SELECT_TREE_MIN_NODES 4
#define SELECT_TREE_MAX_BYTES ((size_t)1 << 20)
#define SELECT_SHM_PIPE_MIN_BYTES ((size_t)8 << 20)

/* One oversubscribed host (more ranks than cores): every ring step needs the next
 * rank scheduled, so the ring's 2(P-1) hand-offs cost a scheduler round each, while
 * recursive doubling has log2(P). 4 ranks on 2 cores, 2026-11-23, quiet: 64 KiB
 * recdbl 20 us vs ring 58-150 us, 256 KiB 68-81 vs 84-441, 512 KiB 470-504 vs
 * 882-922, 1 MiB 334-349 vs 230-1512. So recursive doubling runs up to 16x
 * CRUX_RING_MIN_BYTES there (1 MiB by default). The whole communicator is on one
 * host, so every rank sees the same oversubscription and picks alike. */
#define SELECT_OVERSUB_RING_SCALE 16

/* One host, every rank on shared memory: the node path (algo/shm_node.c). Two
 * ranks: the mailbox up to the eager limit, and its own RS + AG pipeline through
 * the staging rings from SELECT_SHM_PIPE_MIN_BYTES. In between the generic ring is
 * as fast or faster (2026-11-23, 2 ranks, loaded machine: equal at 256 KiB-2 MiB,
 * 4 MiB ring 366-461 us vs pipeline 433-605 us; 16 MiB ring 3.7-4.9 ms vs 2.9-3.2 ms,
 * 64 MiB 17.1 vs 10.7 ms). More ranks: while the whole exchange fits the
 * mailboxes; each rank sends its vector to P-1 peers, so while (P-1) x bytes
 * stays within the eager limit (what two ranks send); past that recursive doubling
 * and the ring move less. With more ranks than cores what costs is handing the
 * cores over, not moving bytes: one all-to-all round needs fewer hand-offs than
 * recursive doubling's log2(P) rounds, so there (and when forced, CRUX_ALGO=shm)
 * the node path runs up to the mailbox size itself. 2026-12-08, 2 cores, 3
 * interleaved launches each, recdbl -> node path: 3 ranks 12.1-15.9 -> 6.9-12.4 us
 * (4 B-16 KiB), 4 ranks 10.5-15.8 -> 7.3-12.6 us (4 B-16 KiB; a tie from 32 KiB,
 * where both run recursive doubling), 8 ranks 61-81 -> 34-69 us.
 * Only for calls that own the context (op->exclusive): the node path bypasses the
 * transfer queues, so schedules interleaved by lib/compress.c keep theirs. */
static int select_shm_node(struct crux_coll *op, int forced)
{
    struct crux_comm *comm = op->comm;
    if (!op->exclusive || !crux_shm_node_usable(comm))
        return 0;
    size_t bytes = op->count * op->esize;
    if (comm->size == 2)
        return forced || bytes <= crux_shm_node_max_bytes(comm) || bytes >= SELECT_SHM_PIPE_MIN_BYTES;
    int oversubscribed = comm->ctx->yield_us > 0; /* lib/init.c */
    size_t fanout = forced || oversubscribed ? 1 : (size_t)comm->size - 1;
    return bytes * fanout <= crux_shm_node_max_bytes(comm);
}

static int select_auto(struct crux_coll *op)
{
    const struct crux_config *cfg = &op->comm->ctx->cfg;
    const struct crux_topo *t = op->comm->topo;
    size_t bytes = op->count * op->esize;
    if (select_shm_node(op, 0))
        return CRUX_ALGO_SHM;
    size_t ring_min = cfg->ring_min_bytes;
    if (t->nnodes == 1 && op->comm->ctx->yield_us > 0)
        ring_min *= SELECT_OVERSUB_RING_SCALE;
    if (bytes < ring_min || op->count < (size_t)op->comm->size)
        return CRUX_ALGO_RECDBL;
    if (t->nnodes >= SELECT_TREE_MIN_NODES && bytes <= SELECT_TREE_MAX_BYTES)
        return CRUX_ALGO_TREE;
    if (t->nnodes > 1 && t->max_local > 1)
        return CRUX_ALGO_HIER;
    return CRUX_ALGO_RING;
}

void crux_allreduce_select(struct crux_coll *op)
{
    int algo = op->comm->ctx->cfg.algo;
    const struct crux_comm *comm = op->comm;
    /* The common small call, from the state select_shm_node cached in the comm:
     * the answer below, without its calls. */
    if (comm->shm_node == 1 && comm->size == 2 && op->exclusive &&
        (algo == CRUX_ALGO_AUTO || algo == CRUX_ALGO_SHM) &&
        op->count * op->esize <= comm->shm_node_max) {
        op->algo = CRUX_ALGO_SHM;
        op->fn = crux_allreduce_shm_node;
        return;
    }
    /* Forced shm where it cannot run (other hosts, or beyond the mailbox): auto. */
    if (algo == CRUX_ALGO_AUTO || (algo == CRUX_ALGO_SHM && !select_shm_node(op, 1)))
        algo = select_auto(op);
    op->algo = algo;
    switch (algo) {
    case CRUX_ALGO_RING: op->fn = crux_allreduce_ring; break;
    case CRUX_ALGO_HIER: op->fn = crux_allreduce_hier; break;
    case CRUX_ALGO_TREE: op->fn = crux_allreduce_tree; break;
    case CRUX_ALGO_SHM: op->fn = crux_allreduce_shm_node; break;
    default: op->fn = crux_allreduce_recdbl; break;
    }
}

void crux_coll_select(struct crux_coll *op)
{
    int algo = op->comm->ctx->cfg.algo;
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
        /* On one host a barrier is the node path's empty allreduce: one mailbox
         * message to each peer instead of log2(P) dependent rounds. */
        if ((algo == CRUX_ALGO_AUTO || algo == CRUX_ALGO_SHM) &&
            select_shm_node(op, algo == CRUX_ALGO_SHM)) {
            op->algo = CRUX_ALGO_SHM;
            op->fn = crux_allreduce_shm_node;
        } else {
            op->algo = CRUX_ALGO_AUTO;
            op->fn = crux_barrier_dissemination;
        }
        break;
    }
}
