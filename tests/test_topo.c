/* test_topo.c - the node map and the double binary tree of a communicator, built
 * from a fake peer table for many layouts, and what algo/select.c picks. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "algo/algo.h"
#include "lib/crux_internal.h"

/* A context whose peers sit on the hosts host_of[0..P) (world ranks). */
static struct crux_ctx *fake_ctx(int P, const int *host_of)
{
    struct crux_ctx *ctx = calloc(1, sizeof(*ctx));
    ctx->size = P;
    ctx->peers = calloc((size_t)P, sizeof(*ctx->peers));
    for (int r = 0; r < P; r++) { /* what bootstrap's fill_peers derives from host hashes */
        ctx->peers[r].host_hash = 1000 + (uint64_t)host_of[r];
        ctx->peers[r].node_id = -1;
        for (int q = 0; q < r && ctx->peers[r].node_id < 0; q++)
            if (host_of[q] == host_of[r])
                ctx->peers[r].node_id = ctx->peers[q].node_id;
        if (ctx->peers[r].node_id < 0)
            ctx->peers[r].node_id = ctx->nnodes++;
    }
    cr_assert_eq(crux_config_load(&ctx->cfg), CRUX_SUCCESS);
    return ctx;
}

static void fake_comm(struct crux_comm *c, struct crux_ctx *ctx, int size, int *world, int rank)
{
    memset(c, 0, sizeof(*c));
    c->ctx = ctx;
    c->size = size;
    c->world_ranks = world;
    c->rank = rank;
    cr_assert_eq(crux_topo_build(c), CRUX_SUCCESS);
}

/* Check every rank's view of the comm over world ranks world[0..size). */
static void check_layout(int P, const int *host_of, int size, int *world)
{
    struct crux_ctx *ctx = fake_ctx(P, host_of);
    struct crux_comm *c = calloc((size_t)size, sizeof(*c));
    for (int r = 0; r < size; r++)
        fake_comm(&c[r], ctx, size, world, r);
    const struct crux_topo *t0 = c[0].topo;
    for (int r = 0; r < size; r++) {
        const struct crux_topo *t = c[r].topo;
        cr_assert_eq(t->nnodes, t0->nnodes);
        cr_assert_eq(memcmp(t->members, t0->members, (size_t)size * sizeof(int)), 0);
        /* same host <=> same node; local index = earlier comm ranks on that host */
        int local = 0, lsize = 0;
        for (int q = 0; q < size; q++) {
            int same = host_of[world[q]] == host_of[world[r]];
            cr_assert_eq(same, t->node_of[q] == t->my_node, "rank %d vs %d", r, q);
            local += same && q < r;
            lsize += same;
        }
        cr_assert_eq(t->local_rank, local);
        cr_assert_eq(t->local_size, lsize);
        cr_assert_eq(crux_topo_rank(t, t->my_node, t->local_rank), r);
        cr_assert(t->min_local <= lsize && lsize <= t->max_local);
    }
    /* trees: links agree between parent and child, one root, heights consistent,
     * and no rank is a leaf of both trees */
    for (int tr = 0; tr < 2; tr++) {
        int roots = 0;
        for (int r = 0; r < size; r++) {
            const struct crux_tree_links *k = &c[r].topo->tree[tr];
            cr_assert_eq(k->root_height, c[0].topo->tree[tr].root_height);
            int h = 0;
            for (int i = 0; i < k->nchild; i++) {
                const struct crux_tree_links *ch = &c[k->child[i]].topo->tree[tr];
                cr_assert_eq(ch->parent, r, "tree %d: child %d of %d names parent %d", tr, k->child[i], r, ch->parent);
                cr_assert_eq(ch->height, k->child_height[i]);
                h = ch->height + 1 > h ? ch->height + 1 : h;
            }
            cr_assert_eq(k->height, h);
            if (k->parent < 0) {
                roots++;
                cr_assert_eq(k->height, k->root_height);
            } else {
                const struct crux_tree_links *pk = &c[k->parent].topo->tree[tr];
                int found = 0;
                for (int i = 0; i < pk->nchild; i++)
                    found |= pk->child[i] == r;
                cr_assert(found, "tree %d: %d's parent %d does not list it", tr, r, k->parent);
            }
        }
        cr_assert_eq(roots, 1);
    }
    for (int r = 0; size > 1 && r < size; r++)
        cr_assert(c[r].topo->tree[0].nchild || c[r].topo->tree[1].nchild, "rank %d is a leaf twice", r);
    for (int r = 0; r < size; r++)
        crux_topo_free(c[r].topo);
    free(c);
    free(ctx->peers);
    free(ctx);
}

static void check_world(int P, const int *host_of)
{
    int *world = malloc((size_t)P * sizeof(int));
    for (int r = 0; r < P; r++)
        world[r] = r;
    check_layout(P, host_of, P, world);
    free(world);
}

Test(topo, layouts)
{
    static const int l1[] = { 0 }, l2x2[] = { 0, 0, 1, 1 }, l2p1[] = { 0, 0, 1 },
                     inter[] = { 0, 1, 0, 2, 1 }, l4p1[] = { 0, 0, 0, 0, 1, 2, 3 };
    check_world(1, l1);
    check_world(4, l2x2);
    check_world(3, l2p1);
    check_world(5, inter);
    check_world(7, l4p1);
}

Test(topo, every_size_up_to_70_and_uneven_nodes)
{
    int host_of[70];
    for (int P = 1; P <= 70; P++) {
        for (int r = 0; r < P; r++)
            host_of[r] = (r * 7) % (P / 3 + 1); /* scattered, uneven */
        check_world(P, host_of);
    }
}

Test(topo, sub_communicator_in_scrambled_order)
{
    static const int host_of[] = { 0, 0, 1, 1, 2, 2, 3, 3 };
    int world[] = { 7, 2, 5, 0, 3 }; /* hosts 3, 1, 2, 0, 1 */
    check_layout(8, host_of, 5, world);
}

/* shm_max > 0: every rank reaches the others through shm mailboxes of that size
 * (algo/shm_node.c caches this per communicator). */
static int pick_shm(int nnodes, int max_local, int P, size_t bytes, size_t shm_max)
{
    static struct crux_ctx ctx;
    cr_assert_eq(crux_config_load(&ctx.cfg), CRUX_SUCCESS);
    struct crux_topo t = { .nnodes = nnodes, .max_local = max_local, .min_local = 1 };
    struct crux_comm comm = { .ctx = &ctx, .size = P, .topo = &t, .shm_node = shm_max ? 1 : 2,
                              .shm_node_max = shm_max };
    struct crux_coll op = { .comm = &comm, .count = bytes / 4, .esize = 4, .exclusive = 1 };
    crux_allreduce_select(&op);
    return op.algo;
}

static int pick(int nnodes, int max_local, int P, size_t bytes)
{
    return pick_shm(nnodes, max_local, P, bytes, 0);
}

Test(topo, auto_selection)
{
    unsetenv("CRUX_ALGO");
    unsetenv("CRUX_RING_MIN_BYTES");
    cr_assert_eq(pick(1, 4, 4, 1024), CRUX_ALGO_RECDBL);
    cr_assert_eq(pick(1, 4, 4, 1 << 20), CRUX_ALGO_RING);
    cr_assert_eq(pick(4, 1, 4, 1 << 20), CRUX_ALGO_TREE);
    cr_assert_eq(pick(4, 1, 4, 4 << 20), CRUX_ALGO_RING);
    cr_assert_eq(pick(4, 2, 8, 4 << 20), CRUX_ALGO_HIER);
    cr_assert_eq(pick(2, 2, 4, 1 << 20), CRUX_ALGO_HIER);
    cr_assert_eq(pick(2, 2, 4, 1024), CRUX_ALGO_RECDBL);
    cr_assert_eq(pick(2, 1, 2, 1 << 20), CRUX_ALGO_RING);
    setenv("CRUX_ALGO", "tree", 1);
    cr_assert_eq(pick(1, 4, 4, 1024), CRUX_ALGO_TREE);
    setenv("CRUX_ALGO", "hier", 1);
    cr_assert_eq(pick(1, 1, 1, 0), CRUX_ALGO_HIER);
    unsetenv("CRUX_ALGO");
}

/* The algorithm selection picks for an allreduce of `bytes` on op's communicator. */
static int algo_for(struct crux_coll *op, size_t bytes)
{
    op->count = bytes / op->esize;
    crux_allreduce_select(op);
    return op->algo;
}

/* One host on shm: the node path for two ranks at every size, for more ranks
 * while (P-1) x bytes fits the 16 KiB mailbox; forced shm and oversubscribed
 * hosts drop the factor. */
Test(topo, shm_node_selection)
{
    unsetenv("CRUX_ALGO");
    unsetenv("CRUX_RING_MIN_BYTES");
    size_t mb = 16384;
    cr_assert_eq(pick_shm(1, 2, 2, 4, mb), CRUX_ALGO_SHM);
    cr_assert_eq(pick_shm(1, 2, 2, 16384, mb), CRUX_ALGO_SHM);
    cr_assert_eq(pick_shm(1, 2, 2, 16388, mb), CRUX_ALGO_RECDBL);
    cr_assert_eq(pick_shm(1, 2, 2, 4u << 20, mb), CRUX_ALGO_RING);
    cr_assert_eq(pick_shm(1, 2, 2, 8u << 20, mb), CRUX_ALGO_SHM);
    cr_assert_eq(pick_shm(1, 2, 2, 256u << 20, mb), CRUX_ALGO_SHM);
    cr_assert_eq(pick_shm(1, 4, 4, 1024, mb), CRUX_ALGO_SHM);
    cr_assert_eq(pick_shm(1, 4, 4, 5460, mb), CRUX_ALGO_SHM);
    cr_assert_eq(pick_shm(1, 4, 4, 5464, mb), CRUX_ALGO_RECDBL);
    cr_assert_eq(pick_shm(1, 8, 8, 1 << 20, mb), CRUX_ALGO_RING);
    setenv("CRUX_ALGO", "shm", 1);
    cr_assert_eq(pick_shm(1, 4, 4, 16384, mb), CRUX_ALGO_SHM);
    cr_assert_eq(pick_shm(1, 4, 4, 16388, mb), CRUX_ALGO_RECDBL);
    cr_assert_eq(pick(2, 2, 4, 1024), CRUX_ALGO_RECDBL, "forced shm across hosts: auto");
    unsetenv("CRUX_ALGO");
    /* Not exclusive (lib/compress.c interleaves schedules): never the node path. */
    struct crux_topo t = { .nnodes = 1, .max_local = 2, .min_local = 1 };
    static struct crux_ctx ctx;
    cr_assert_eq(crux_config_load(&ctx.cfg), CRUX_SUCCESS);
    struct crux_comm comm = { .ctx = &ctx, .size = 2, .topo = &t, .shm_node = 1, .shm_node_max = mb };
    struct crux_coll op = { .comm = &comm, .count = 1, .esize = 4, .exclusive = 0 };
    crux_allreduce_select(&op);
    cr_assert_eq(op.algo, CRUX_ALGO_RECDBL);
    /* More ranks than cores: the node path up to the mailbox size itself (one
     * all-to-all round, fewer hand-offs of the cores than recursive doubling). */
    struct crux_comm comm4 = { .ctx = &ctx, .size = 4, .topo = &t, .shm_node = 1, .shm_node_max = mb };
    struct crux_coll op4 = { .comm = &comm4, .count = 1, .esize = 4, .exclusive = 1 };
    cr_assert_eq(algo_for(&op4, 4), CRUX_ALGO_SHM, "a core per rank: (P-1) x 4 B fits");
    cr_assert_eq(algo_for(&op4, 5464), CRUX_ALGO_RECDBL,
                 "a core per rank: (P-1) x 5464 B does not fit");
    ctx.yield_us = 1000;
    cr_assert_eq(algo_for(&op4, 5464), CRUX_ALGO_SHM, "oversubscribed: 5464 B fits the mailbox");
    cr_assert_eq(algo_for(&op4, 16384), CRUX_ALGO_SHM,
                 "oversubscribed: 16 KiB fits the mailbox");
    cr_assert_eq(algo_for(&op4, 16388), CRUX_ALGO_RECDBL, "oversubscribed: past the mailbox");
    op4.count = 1;
    comm.shm_node = 1;
    op.exclusive = 1;
    crux_allreduce_select(&op);
    cr_assert_eq(op.algo, CRUX_ALGO_SHM, "two ranks: node path even when oversubscribed");
    setenv("CRUX_ALGO", "shm", 1);
    cr_assert_eq(crux_config_load(&ctx.cfg), CRUX_SUCCESS);
    crux_allreduce_select(&op4);
    cr_assert_eq(op4.algo, CRUX_ALGO_SHM);
    unsetenv("CRUX_ALGO");
    setenv("CRUX_ALGO", "ring", 1);
    cr_assert_eq(pick_shm(1, 2, 2, 4, mb), CRUX_ALGO_RING);
    unsetenv("CRUX_ALGO");
}

/* One oversubscribed host: recursive doubling up to 16x CRUX_RING_MIN_BYTES, the
 * ring from there; with a core per rank, or across hosts, the plain threshold. */
Test(topo, oversubscribed_ring_threshold)
{
    unsetenv("CRUX_ALGO");
    unsetenv("CRUX_RING_MIN_BYTES");
    static struct crux_ctx ctx;
    cr_assert_eq(crux_config_load(&ctx.cfg), CRUX_SUCCESS);
    struct crux_topo one = { .nnodes = 1, .max_local = 4, .min_local = 4 };
    struct crux_topo two = { .nnodes = 2, .max_local = 2, .min_local = 2 };
    struct crux_comm comm = { .ctx = &ctx, .size = 4, .topo = &one };
    struct crux_coll op = { .comm = &comm, .esize = 4, .exclusive = 1 };
    size_t counts[] = { 16384, (1u << 18) - 1, 1u << 18 };
    int busy[] = { CRUX_ALGO_RING, CRUX_ALGO_RING, CRUX_ALGO_RING };
    int over[] = { CRUX_ALGO_RECDBL, CRUX_ALGO_RECDBL, CRUX_ALGO_RING };
    for (int i = 0; i < 3; i++) {
        op.count = counts[i];
        ctx.yield_us = 0;
        crux_allreduce_select(&op);
        cr_assert_eq(op.algo, busy[i], "a core per rank, %zu floats", counts[i]);
        ctx.yield_us = 1000;
        crux_allreduce_select(&op);
        cr_assert_eq(op.algo, over[i], "oversubscribed, %zu floats", counts[i]);
    }
    comm.topo = &two; /* across hosts the hosts may disagree: plain threshold */
    op.count = 16384;
    crux_allreduce_select(&op);
    cr_assert_eq(op.algo, CRUX_ALGO_HIER);
}
