/* hier.c - hierarchical allreduce: intra-node reduce-scatter, per-rail inter-node
 * ring allreduce, intra-node allgather.
 *
 * Slices: the vector is cut into S = (most ranks on one node) slices, the first
 * count % S one element longer. On a node of L ranks, local rank l owns the
 * contiguous slices [l*S/L, (l+1)*S/L): with L == S one slice each; on smaller
 * nodes some ranks own several, so every node takes part in every slice and every
 * rank of the largest nodes drives a rail (links or NICs all busy at once).
 *
 * Phases (each all posted at once, fragments streaming behind receives):
 *  1. intra-node ring reduce-scatter over the node's ranks; local rank l ends with
 *     its slices reduced over the node, in recvbuf;
 *  2. for each owned slice, a ring allreduce (reduce-scatter + allgather) among that
 *     slice's owners on every node, in order of node index, in place in recvbuf;
 *  3. intra-node ring allgather of the slices.
 * One node: phase 2 is empty (intra-node reduce-scatter + allgather). One rank per
 * node: phases 1 and 3 are empty (a ring across nodes per slice, S = 1).
 *
 * Reduction order (fixed, see crux.h): within a node, the block owned by local rank
 * l is combined around the node's ring starting at l + 1 and ending at l; across
 * nodes, sub-block b of a slice is combined around the ring of nodes starting at
 * node b + 1 and ending at node b. Each element is reduced once and then copied,
 * so every rank holds the same bits.
 *
 * Tags: phase in bits 28..31, slice in bits 16..27, ring step in bits 0..15.
 */
#include <string.h>

#include "algo/algo.h"

enum { PH_INTRA_RS = 0, PH_INTER, PH_INTRA_AG, PH_DONE };

#define HIER_TAG(ph, slice, step) \
    (((uint32_t)(ph) << 28) | (((uint32_t)(slice) & 0xfffu) << 16) | ((uint32_t)(step) & 0xffffu))

/* n blocks over a range of elements: block i starts at start + g(i * num / den),
 * g(k) = k * base + min(k, rem). Intra-node blocks are runs of slices (num/den =
 * S/L); inter-node blocks split one slice evenly (num = den = 1). */
struct hier_blocks {
    size_t start, base, rem, esize;
    int num, den;
};

static size_t blk_elem(const struct hier_blocks *b, int i)
{
    size_t k = (size_t)((long long)i * b->num / b->den);
    return b->start + k * b->base + (k < b->rem ? k : b->rem);
}

static size_t blk_off(const struct hier_blocks *b, int i) { return blk_elem(b, i) * b->esize; }
static size_t blk_len(const struct hier_blocks *b, int i)
{
    return (blk_elem(b, i + 1) - blk_elem(b, i)) * b->esize;
}

static int mod(int a, int p) { return ((a % p) + p) % p; }

/* Ring of n members (me is our position, left/right comm ranks): member i ends
 * with block i reduced over all members. Returns the last receive (our block). */
static int ring_rs(struct crux_coll *op, int n, int me, int left, int right,
                   const struct hier_blocks *b, const char *src, char *acc, uint32_t tag0,
                   struct crux_xfer **last)
{
    struct crux_xfer *prev = NULL;
    for (int k = 0; k < n - 1; k++) {
        int sb = mod(me - k - 1, n), rb = mod(me - k - 2, n);
        const char *from = k == 0 ? src : acc;
        CRUX_TRY(crux_coll_send(op, right, tag0 + (uint32_t)k, from + blk_off(b, sb), blk_len(b, sb),
                                prev, NULL));
        CRUX_TRY(crux_coll_recv_reduce(op, left, tag0 + (uint32_t)k, acc + blk_off(b, rb),
                                       src + blk_off(b, rb), blk_len(b, rb), &prev));
    }
    *last = prev;
    return CRUX_SUCCESS;
}

/* Member i holds block i of buf; afterwards every member holds every block. The
 * first send streams behind dep (the reduce-scatter's last receive) if given. */
static int ring_ag(struct crux_coll *op, int n, int me, int left, int right,
                   const struct hier_blocks *b, char *buf, uint32_t tag0, struct crux_xfer *dep)
{
    struct crux_xfer *prev = dep;
    for (int k = 0; k < n - 1; k++) {
        int sb = mod(me - k, n), rb = mod(me - k - 1, n);
        CRUX_TRY(crux_coll_send(op, right, tag0 + (uint32_t)k, buf + blk_off(b, sb), blk_len(b, sb),
                                prev, NULL));
        CRUX_TRY(crux_coll_recv(op, left, tag0 + (uint32_t)k, buf + blk_off(b, rb), blk_len(b, rb),
                                &prev));
    }
    return CRUX_SUCCESS;
}

static int nslices(const struct crux_topo *t) { return t->max_local; }

/* Local rank owning slice s on a node of L ranks: the largest l with l*S/L <= s. */
static int slice_owner(int s, int S, int L) { return (int)(((long long)(s + 1) * L - 1) / S); }

static struct hier_blocks intra_blocks(const struct crux_coll *op, const struct crux_topo *t)
{
    int S = nslices(t);
    return (struct hier_blocks){ 0, op->count / (size_t)S, op->count % (size_t)S, op->esize, S,
                                 t->local_size };
}

static int intra_ring(struct crux_coll *op, int allgather)
{
    const struct crux_topo *t = op->comm->topo;
    int L = t->local_size, l = t->local_rank;
    int left = crux_topo_rank(t, t->my_node, mod(l - 1, L));
    int right = crux_topo_rank(t, t->my_node, mod(l + 1, L));
    struct hier_blocks b = intra_blocks(op, t);
    if (allgather)
        return ring_ag(op, L, l, left, right, &b, op->recvbuf, HIER_TAG(PH_INTRA_AG, 0, 0), NULL);
    struct crux_xfer *last;
    return ring_rs(op, L, l, left, right, &b, op->sendbuf, op->recvbuf, HIER_TAG(PH_INTRA_RS, 0, 0),
                   &last);
}

/* Ring allreduce of slice s among its owners on every node (position = node index). */
static int inter_slice(struct crux_coll *op, int s)
{
    const struct crux_topo *t = op->comm->topo;
    int S = nslices(t), N = t->nnodes, me = t->my_node;
    int ln = mod(me - 1, N), rn = mod(me + 1, N);
    int left = crux_topo_rank(t, ln, slice_owner(s, S, crux_topo_node_size(t, ln)));
    int right = crux_topo_rank(t, rn, slice_owner(s, S, crux_topo_node_size(t, rn)));
    struct hier_blocks sl = intra_blocks(op, t);
    sl.num = sl.den = 1;
    size_t start = blk_elem(&sl, s), len = blk_elem(&sl, s + 1) - start;
    struct hier_blocks b = { start, len / (size_t)N, len % (size_t)N, op->esize, 1, 1 };
    char *buf = op->recvbuf;
    struct crux_xfer *last;
    CRUX_TRY(ring_rs(op, N, me, left, right, &b, buf, buf, HIER_TAG(PH_INTER, s, 0), &last));
    return ring_ag(op, N, me, left, right, &b, buf, HIER_TAG(PH_INTER, s, N - 1), last);
}

static int inter_rings(struct crux_coll *op)
{
    const struct crux_topo *t = op->comm->topo;
    int S = nslices(t), L = t->local_size, l = t->local_rank;
    int first = (int)((long long)l * S / L), end = (int)((long long)(l + 1) * S / L);
    /* every transfer of this phase must fit the descriptor array */
    CRUX_TRY(crux_comm_reserve(op->comm, (end - first) * 4 * t->nnodes, 0));
    op->xfers = op->comm->xfers;
    for (int s = first; s < end; s++)
        CRUX_TRY(inter_slice(op, s));
    return CRUX_SUCCESS;
}

int crux_allreduce_hier(struct crux_coll *op)
{
    const struct crux_topo *t = op->comm->topo;
    switch (op->phase) {
    case PH_INTRA_RS:
        op->phase = PH_INTER;
        if (t->local_size > 1) {
            CRUX_TRY(intra_ring(op, 0));
            return CRUX_INPROGRESS;
        }
        if (op->sendbuf != op->recvbuf && op->count)
            memcpy(op->recvbuf, op->sendbuf, op->count * op->esize);
        /* fall through */
    case PH_INTER:
        op->phase = PH_INTRA_AG;
        if (t->nnodes > 1) {
            CRUX_TRY(inter_rings(op));
            return CRUX_INPROGRESS;
        }
        /* fall through */
    case PH_INTRA_AG:
        op->phase = PH_DONE;
        if (t->local_size > 1) {
            CRUX_TRY(intra_ring(op, 1));
            return CRUX_INPROGRESS;
        }
        /* fall through */
    default:
        return CRUX_SUCCESS;
    }
}
