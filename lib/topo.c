/* topo.c - which ranks of a communicator share a host, computed once when the
 * communicator is created.
 *
 * Nodes come from the host hashes every rank learnt at bootstrap (ctx->peers:
 * node_id), so the grouping needs no communication and every member derives the
 * same one.
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
    int P = comm->size, wnodes = 0;
    for (int r = 0; r < P; r++) {
        int n = peers[comm->world_ranks[r]].node_id;
        wnodes = n + 1 > wnodes ? n + 1 : wnodes;
    }
    struct crux_topo *t = calloc(1, sizeof(*t));
    int *mem = malloc((size_t)(4 * P + 1) * sizeof(int));
    int *wmap = malloc((size_t)(2 * wnodes) * sizeof(int)); /* world node -> ours, its size */
    if (!t || !mem || !wmap) {
        free(t);
        free(mem);
        free(wmap);
        crux_error(CRUX_SUBSYS_INIT, "cannot allocate the node map of a %d-rank communicator", P);
        return CRUX_ERR_NOMEM;
    }
    t->node_of = mem;
    t->local_of = mem + P;
    t->members = mem + 2 * P;
    t->node_start = mem + 3 * P; /* [nnodes + 1] <= P + 1 */
    /* bootstrap numbered the world's hosts (peers[].node_id, from the host hashes);
     * renumber the ones this communicator spans in order of first comm rank */
    for (int n = 0; n < wnodes; n++)
        wmap[n] = -1, wmap[wnodes + n] = 0;
    for (int r = 0; r < P; r++) {
        int wn = peers[comm->world_ranks[r]].node_id;
        if (wmap[wn] < 0)
            wmap[wn] = t->nnodes++;
        t->node_of[r] = wmap[wn];
        t->local_of[r] = wmap[wnodes + wn]++;
    }
    free(wmap);
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
