/* comm.c - communicators: world, split, split by node, free. */
#include <stdlib.h>
#include <string.h>

#include "algo/algo.h"
#include "crux_internal.h"

int crux_comm_create(struct crux_ctx *ctx, int size, const int *world_ranks, int rank,
                     uint32_t ctx_id, struct crux_comm **out)
{
    struct crux_comm *c = calloc(1, sizeof(*c));
    if (!c)
        goto nomem;
    c->world_ranks = malloc((size_t)size * sizeof(int));
    if (!c->world_ranks)
        goto free_comm;
    memcpy(c->world_ranks, world_ranks, (size_t)size * sizeof(int));
    c->ctx = ctx;
    c->size = size;
    c->rank = rank;
    c->ctx_id = ctx_id;
    /* Enough descriptors for any schedule (ring: 4(P-1), recdbl: 2 per step + fold). */
    if (crux_comm_reserve(c, 4 * size + 16, 0) != CRUX_SUCCESS)
        goto free_xfers;
    if (crux_topo_build(c) != CRUX_SUCCESS)
        goto free_xfers;
    *out = c;
    return CRUX_SUCCESS;
free_xfers:
    crux_topo_free(c->topo);
    free(c->xfers);
    free(c->world_ranks);
free_comm:
    free(c);
nomem:
    crux_error(CRUX_SUBSYS_INIT, "cannot allocate a communicator of %d ranks", size);
    return CRUX_ERR_NOMEM;
}

void crux_comm_destroy(struct crux_comm *comm)
{
    if (!comm)
        return;
    crux_topo_free(comm->topo);
    free(comm->xfers);
    free(comm->scratch);
    free(comm->world_ranks);
    free(comm);
}

int crux_check_comm(crux_comm_t comm)
{
    if (!crux_ctx_g) {
        crux_error(CRUX_SUBSYS_INIT, "crux is not initialized (call crux_init first)");
        return CRUX_ERR_NOT_INITIALIZED;
    }
    if (!comm || comm->ctx != crux_ctx_g) {
        crux_error(CRUX_SUBSYS_INIT, "invalid communicator %p", (void *)comm);
        return CRUX_ERR_ARG;
    }
    return CRUX_SUCCESS;
}

crux_comm_t crux_comm_world(void) { return crux_ctx_g ? crux_ctx_g->world : NULL; }

int crux_comm_rank(crux_comm_t comm, int *rank)
{
    CRUX_TRY(crux_check_comm(comm));
    if (!rank)
        return CRUX_ERR_ARG;
    *rank = comm->rank;
    return CRUX_SUCCESS;
}

int crux_comm_size(crux_comm_t comm, int *size)
{
    CRUX_TRY(crux_check_comm(comm));
    if (!size)
        return CRUX_ERR_ARG;
    *size = comm->size;
    return CRUX_SUCCESS;
}

/* Child context ids must agree on every member and differ from every other live
 * communicator's: mix the parent's id, its split counter and the color. */
static uint32_t comm_child_id(const struct crux_comm *parent, int color)
{
    uint64_t h = ((uint64_t)parent->ctx_id << 32) ^ ((uint64_t)parent->nsplits << 20) ^
                 (uint32_t)color;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return (uint32_t)h | 2u; /* never 0, never world's 1 */
}

struct split_entry {
    int32_t color, key;
};

static int comm_split_members(const struct split_entry *all, int n, int color, int *members)
{
    int m = 0;
    for (int r = 0; r < n; r++)
        if (all[r].color == color)
            members[m++] = r;
    /* Stable order by key, ties by parent rank (insertion sort: n is small, stable). */
    for (int i = 1; i < m; i++) {
        int v = members[i], j = i - 1;
        while (j >= 0 && all[members[j]].key > all[v].key) {
            members[j + 1] = members[j];
            j--;
        }
        members[j + 1] = v;
    }
    return m;
}

int crux_comm_split(crux_comm_t comm, int color, int key, crux_comm_t *newcomm)
{
    CRUX_TRY(crux_check_comm(comm));
    if (!newcomm || (color < 0 && color != CRUX_UNDEFINED)) {
        crux_error(CRUX_SUBSYS_INIT, "crux_comm_split: %s", !newcomm ? "newcomm is NULL"
                                                                    : "color must be >= 0 or CRUX_UNDEFINED");
        return CRUX_ERR_ARG;
    }
    int rc = CRUX_ERR_NOMEM;
    struct split_entry *all = malloc((size_t)comm->size * sizeof(*all));
    int *members = malloc((size_t)comm->size * sizeof(int));
    int *world = malloc((size_t)comm->size * sizeof(int));
    if (!all || !members || !world) {
        crux_error(CRUX_SUBSYS_INIT, "crux_comm_split: out of memory for %d ranks", comm->size);
        goto out;
    }
    struct split_entry mine = { color, key };
    rc = crux_allgather(&mine, 2, all, CRUX_INT32, comm);
    if (rc != CRUX_SUCCESS)
        goto out;
    uint32_t id = comm_child_id(comm, color);
    comm->nsplits++;
    *newcomm = NULL;
    if (color == CRUX_UNDEFINED)
        goto out;
    int m = comm_split_members(all, comm->size, color, members), myrank = -1;
    for (int i = 0; i < m; i++) {
        world[i] = comm->world_ranks[members[i]];
        if (members[i] == comm->rank)
            myrank = i;
    }
    rc = crux_comm_create(comm->ctx, m, world, myrank, id, newcomm);
    if (rc == CRUX_SUCCESS)
        crux_debug(CRUX_SUBSYS_INIT, "split comm %u color %d -> comm %u, rank %d of %d",
                   comm->ctx_id, color, id, myrank, m);
out:
    free(all);
    free(members);
    free(world);
    return rc;
}

/* The node grouping is known from the topology built with comm: no exchange is
 * needed, but like MPI_Comm_split_type every member calls it (the child id
 * counter must advance everywhere) and gets a communicator of its own to free. */
int crux_comm_split_type_node(crux_comm_t comm, crux_comm_t *nodecomm)
{
    CRUX_TRY(crux_check_comm(comm));
    if (!nodecomm) {
        crux_error(CRUX_SUBSYS_INIT, "crux_comm_split_type_node: nodecomm is NULL");
        return CRUX_ERR_ARG;
    }
    const struct crux_topo *t = comm->topo;
    int *world = malloc((size_t)t->local_size * sizeof(int));
    if (!world) {
        crux_error(CRUX_SUBSYS_INIT, "crux_comm_split_type_node: out of memory for %d ranks", t->local_size);
        return CRUX_ERR_NOMEM;
    }
    for (int l = 0; l < t->local_size; l++)
        world[l] = comm->world_ranks[crux_topo_rank(t, t->my_node, l)];
    uint32_t id = comm_child_id(comm, t->my_node);
    comm->nsplits++;
    int rc = crux_comm_create(comm->ctx, t->local_size, world, t->local_rank, id, nodecomm);
    free(world);
    if (rc == CRUX_SUCCESS)
        crux_debug(CRUX_SUBSYS_INIT, "node comm of comm %u: node %d of %d -> comm %u, rank %d of %d",
                   comm->ctx_id, t->my_node, t->nnodes, id, t->local_rank, t->local_size);
    return rc;
}

int crux_comm_free(crux_comm_t *comm)
{
    if (!comm || !*comm)
        return CRUX_ERR_ARG;
    CRUX_TRY(crux_check_comm(*comm));
    struct crux_ctx *ctx = (*comm)->ctx;
    if (*comm == ctx->world) {
        crux_error(CRUX_SUBSYS_INIT, "crux_comm_free: the world communicator cannot be freed");
        return CRUX_ERR_ARG;
    }
    for (struct crux_request *r = ctx->req_head; r; r = r->next)
        if (r->coll.comm == *comm) {
            crux_error(CRUX_SUBSYS_INIT, "crux_comm_free: comm %u has a pending request; wait for it first",
                       (*comm)->ctx_id);
            return CRUX_ERR_ARG;
        }
    if (ctx->broken) {
        /* Transfers of a failed call may still sit in transport queues: keep the
         * memory alive until the transports are closed at finalize. */
        (*comm)->next_zombie = ctx->zombies;
        ctx->zombies = *comm;
    } else {
        crux_comm_destroy(*comm);
    }
    *comm = NULL;
    return CRUX_SUCCESS;
}
