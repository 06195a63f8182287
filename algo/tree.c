/* tree.c - double binary tree allreduce (NCCL-style), pipelined in chunks.
 *
 * Trees: over tree positions q = 0..P-1, q's parent is (q ^ b) | (b << 1) with b
 * its lowest set bit, or q ^ b when that is past the end; q = 0 is the root. Odd
 * positions are leaves. Tree 1 uses q = p, tree 2 the mirror q = P-1-p (P even) or
 * the shift q = (p+1) mod P (P odd), where p is the rank's node-major position
 * (topo->members order): so the leaves of one tree are inner nodes of the other,
 * and every rank sends and receives about one half-vector in total. Node-major
 * order makes most low-level edges (p, p +- 1) intra-node, so across nodes mostly
 * the upper levels of the trees travel - the tree spans all ranks rather than
 * chaining inside a node (a deliberate simplification, one schedule everywhere).
 *
 * Data: tree 1 reduces and broadcasts elements [0, ceil(count/2)), tree 2 the
 * rest, each cut into chunks of CRUX_CHUNK_BYTES.
 *
 * Rounds: op->step is a round number shared by every rank, and each transfer is
 * posted by both of its ends in the same round, so a round completes everywhere
 * without waiting on a later one (no deadlock however the trees interleave). A
 * rank of height h (longest path to a leaf) sends chunk c up in round c + h; its
 * parent receives it in that round into a per-child scratch slot and reduces it
 * at the start of round c + h(parent), before sending its own partial up. In round
 * c + H (H: the root's height) chunk c goes down the whole tree, each rank
 * forwarding it to its children streamed behind the receive from its parent.
 *
 * Reduction order (fixed, see crux.h): at each tree node, acc = own value, then
 * acc = acc op child for each child in increasing tree position; each element is
 * reduced once and broadcast, so every rank holds the same bits.
 */
#include <stdlib.h>
#include <string.h>

#include "algo/algo.h"
#include "lib/reduce.h"

#define TREE_TAG(tree, down, round) \
    (((uint32_t)(tree) << 31) | ((uint32_t)(down) << 30) | ((uint32_t)(round) & 0x3fffffffu))

static int btree_parent(int q, int P)
{
    if (q == 0)
        return -1;
    int b = q & -q, up = (q ^ b) | (b << 1);
    return up < P ? up : q ^ b;
}

static int tree_pos(int tree, int p, int P) /* node-major position -> tree position */
{
    if (tree == 0)
        return p;
    return P % 2 == 0 ? P - 1 - p : (p + 1) % P;
}

static int tree_unpos(int tree, int q, int P) /* tree position -> node-major position */
{
    if (tree == 0)
        return q;
    return P % 2 == 0 ? P - 1 - q : (q - 1 + P) % P;
}

/* Heights of every tree position: children have a lower lowest set bit than
 * their parent (the root 0 last), so one sweep by bit level suffices. */
static void btree_heights(int P, int *h)
{
    memset(h, 0, (size_t)P * sizeof(int));
    for (int b = 1; b < P; b <<= 1)
        for (int q = b; q < P; q += 2 * b) {
            int up = btree_parent(q, P);
            if (h[q] + 1 > h[up])
                h[up] = h[q] + 1;
        }
}

int crux_tree_build(struct crux_topo *t, int P, int my_pos)
{
    int *h = malloc((size_t)P * sizeof(int));
    if (!h) {
        crux_error(CRUX_SUBSYS_COLL, "cannot allocate the tree map of %d ranks", P);
        return CRUX_ERR_NOMEM;
    }
    btree_heights(P, h);
    for (int tr = 0; tr < 2; tr++) {
        struct crux_tree_links *k = &t->tree[tr];
        int me = tree_pos(tr, my_pos, P), up = btree_parent(me, P);
        k->parent = up < 0 ? -1 : t->members[tree_unpos(tr, up, P)];
        k->height = h[me];
        k->root_height = h[0];
        k->nchild = 0;
        for (int q = 0; q < P; q++) {
            if (btree_parent(q, P) != me)
                continue;
            if (k->nchild == 2) { /* cannot happen: the rule gives at most two */
                free(h);
                crux_error(CRUX_SUBSYS_COLL, "tree of %d ranks: position %d has a third child %d", P, me, q);
                return CRUX_ERR_INTERNAL;
            }
            k->child[k->nchild] = t->members[tree_unpos(tr, q, P)];
            k->child_height[k->nchild++] = h[q];
        }
    }
    free(h);
    return CRUX_SUCCESS;
}

/* One tree's share of the vector, in chunks. */
struct tree_part {
    size_t first, count, chunk; /* elements */
    int nchunks;
};

static struct tree_part tree_part(const struct crux_coll *op, int tr)
{
    size_t half = (op->count + 1) / 2;
    struct tree_part p = { tr ? half : 0, tr ? op->count - half : half, 0, 0 };
    size_t per = op->comm->ctx->cfg.chunk_bytes / op->esize;
    p.chunk = per ? per : 1;
    p.nchunks = (int)((p.count + p.chunk - 1) / p.chunk);
    return p;
}

/* Byte offset and length of chunk c of a part. */
static size_t chunk_off(const struct crux_coll *op, const struct tree_part *p, int c)
{
    return (p->first + (size_t)c * p->chunk) * op->esize;
}

static size_t chunk_len(const struct crux_coll *op, const struct tree_part *p, int c)
{
    size_t left = p->count - (size_t)c * p->chunk;
    return (left < p->chunk ? left : p->chunk) * op->esize;
}

static int in_range(int c, const struct tree_part *p) { return c >= 0 && c < p->nchunks; }

/* Scratch slot of child i: a whole copy of the vector's layout, so chunks of both
 * trees land at their own offsets. */
static char *child_slot(const struct crux_coll *op, int i)
{
    return (char *)op->comm->scratch + (size_t)i * op->count * op->esize;
}

/* Reduce-up part of round t for one tree. */
static int tree_up(struct crux_coll *op, int tr, const struct tree_part *p, int t)
{
    const struct crux_tree_links *k = &op->comm->topo->tree[tr];
    uint32_t tag = TREE_TAG(tr, 0, t);
    int c = t - k->height;
    if (in_range(c, p)) {
        size_t off = chunk_off(op, p, c), len = chunk_len(op, p, c);
        const char *src = (const char *)op->sendbuf + off;
        char *acc = (char *)op->recvbuf + off;
        for (int i = 0; i < k->nchild; i++) { /* children's partials arrived in earlier rounds */
            crux_reduce(acc, src, child_slot(op, i) + off, len / op->esize, op->dtype, op->op);
            src = acc;
        }
        if (k->parent >= 0)
            CRUX_TRY(crux_coll_send(op, k->parent, tag, src, len, NULL, NULL));
    }
    for (int i = 0; i < k->nchild; i++) {
        int cc = t - k->child_height[i];
        if (in_range(cc, p))
            CRUX_TRY(crux_coll_recv(op, k->child[i], tag, child_slot(op, i) + chunk_off(op, p, cc),
                                    chunk_len(op, p, cc), NULL));
    }
    return CRUX_SUCCESS;
}

/* Broadcast part of round t: chunk t - H goes down the whole tree. */
static int tree_down(struct crux_coll *op, int tr, const struct tree_part *p, int t)
{
    const struct crux_tree_links *k = &op->comm->topo->tree[tr];
    int c = t - k->root_height;
    if (!in_range(c, p))
        return CRUX_SUCCESS;
    uint32_t tag = TREE_TAG(tr, 1, t);
    size_t off = chunk_off(op, p, c), len = chunk_len(op, p, c);
    char *buf = (char *)op->recvbuf + off;
    struct crux_xfer *from_parent = NULL;
    if (k->parent >= 0)
        CRUX_TRY(crux_coll_recv(op, k->parent, tag, buf, len, &from_parent));
    for (int i = 0; i < k->nchild; i++)
        CRUX_TRY(crux_coll_send(op, k->child[i], tag, buf, len, from_parent, NULL));
    return CRUX_SUCCESS;
}

int crux_allreduce_tree(struct crux_coll *op)
{
    struct crux_comm *comm = op->comm;
    size_t bytes = op->count * op->esize;
    if (comm->size == 1 || bytes == 0) {
        if (op->sendbuf != op->recvbuf && bytes)
            memcpy(op->recvbuf, op->sendbuf, bytes);
        return CRUX_SUCCESS;
    }
    struct tree_part parts[2] = { tree_part(op, 0), tree_part(op, 1) };
    int last = 0; /* the last round any tree needs */
    for (int tr = 0; tr < 2; tr++) {
        int end = parts[tr].nchunks - 1 + comm->topo->tree[tr].root_height;
        if (parts[tr].nchunks && end > last)
            last = end;
    }
    if (op->step > last)
        return CRUX_SUCCESS;
    if (op->step == 0) {
        int inner = comm->topo->tree[0].nchild || comm->topo->tree[1].nchild;
        CRUX_TRY(crux_comm_reserve(comm, 0, inner ? 2 * bytes : 0));
    }
    for (int tr = 0; tr < 2; tr++) {
        CRUX_TRY(tree_up(op, tr, &parts[tr], op->step));
        CRUX_TRY(tree_down(op, tr, &parts[tr], op->step));
    }
    op->step++;
    return CRUX_INPROGRESS;
}
