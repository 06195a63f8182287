/* topo.c - which ranks of a communicator share a host, computed once when the
 * communicator is created.
 *
 * Nodes come from the host hashes every rank learnt at bootstrap (ctx->peers), so
 * the grouping needs no communication and every member derives the same one.
 * Nodes are numbered in order of their first comm rank; within a node, ranks keep
 * comm order (their local index). The rail of local index l is the set of ranks
 * with local index l across nodes: members[node_start[n] + l] on every node n with
 * more than l ranks. Ranks per node may differ between nodes.
 */
#include <stdlib.h>

#include "algo/algo.h"
#include "crux_internal.h"

int crux_topo_build(struct crux_comm *comm)
{
    const struct crux_peer_info *peers = comm->ctx->peers;
    int P = comm->size;
    struct crux_topo *t = calloc(1, sizeof(*t));
    int *mem = malloc((size_t)(4 * P + 1) * sizeof(int));
    if (!t || !mem) {
        free(t);
        free(mem);
        crux_error(CRUX_SUBSYS_INIT, "cannot allocate the node map of a %d-rank communicator", P);
        return CRUX_ERR_NOMEM;
    }
    t->node_of = mem;
    t->local_of = mem + P;
    t->members = mem + 2 * P;
    t->node_start = mem + 3 * P; /* [nnodes + 1] <= P + 1 */
    /* node of r: the node of the first rank before it on the same host, else a new one */
    for (int r = 0; r < P; r++) {
        uint64_t h = peers[comm->world_ranks[r]].host_hash;
        t->node_of[r] = -1;
        t->local_of[r] = 0;
        for (int q = 0; q < r; q++)
            if (peers[comm->world_ranks[q]].host_hash == h) {
                t->node_of[r] = t->node_of[q];
                t->local_of[r] = t->local_of[q] + 1; /* q is the latest such rank so far */
            }
        if (t->node_of[r] < 0)
            t->node_of[r] = t->nnodes++;
    }
    /* counting sort by node: members grouped by node, comm order within */
    for (int n = 0; n <= t->nnodes; n++)
        t->node_start[n] = 0;
    for (int r = 0; r < P; r++)
        t->node_start[t->node_of[r] + 1]++;
    for (int n = 0; n < t->nnodes; n++)
        t->node_start[n + 1] += t->node_start[n];
    for (int r = 0; r < P; r++)
        t->members[t->node_start[t->node_of[r]] + t->local_of[r]] = r;
    t->min_local = P;
    t->max_local = 0;
    for (int n = 0; n < t->nnodes; n++) {
        int l = crux_topo_node_size(t, n);
        t->min_local = l < t->min_local ? l : t->min_local;
        t->max_local = l > t->max_local ? l : t->max_local;
    }
    t->my_node = t->node_of[comm->rank];
    t->local_rank = t->local_of[comm->rank];
    t->local_size = crux_topo_node_size(t, t->my_node);
    comm->topo = t;
    return crux_tree_build(t, P, t->node_start[t->my_node] + t->local_rank);
}

void crux_topo_free(struct crux_topo *t)
{
    if (!t)
        return;
    free(t->node_of); /* the one block holding every array */
    free(t);
}
