/* shm_node.c - allreduce among ranks that all share one host, through the shm
 * mailboxes directly (small messages).
 *
 * Every rank sends its whole vector to every other rank (one mailbox message per
 * pair) and then reduces all P contributions itself in rank order,
 * ((x0 op x1) op x2) op ..., so one cache-line round trip replaces recursive
 * doubling's log2(P) dependent steps, and all ranks compute the same bits
 * (a op b == b op a, lib/reduce.h, lets ranks 0 and 1 start from their own
 * vector). LIMITS.md strategy A: 0.08 us at 4 B on two cores. Two ranks with
 * large messages go through algo/shm_pipe.c instead.
 *
 * The exchange bypasses the transfer queues (transport/shm/shm_direct.h), but
 * every message still carries the collective's header, so ranks that disagree on
 * count/dtype/op get CRUX_ERR_MISMATCH. Blocking calls spin on the mailbox for
 * ctx->spin_us; past that (oversubscribed host, slow peer, dead peer), or when a
 * channel is busy, the remaining receives are posted as ordinary transfers into
 * scratch and the generic wait (yield, futex, death checks, CRUX_TIMEOUT) takes
 * over; their contributions are folded in rank order once they land.
 */
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() __asm__ __volatile__("" ::: "memory")
#endif

#include "algo/algo.h"
#include "lib/reduce.h"
#include "transport/shm/shm_direct.h"

enum { PH_START = 0, PH_GENERIC, PH_PIPE = CRUX_SHM_PH_PIPE };

#define NODE_TAG 0u

/* Scratch: [accumulator][one landing buffer per peer], each 64-byte aligned. */
static size_t node_stride(size_t bytes) { return (bytes + 63) & ~(size_t)63; }

static char *node_landing(const struct crux_coll *op, int q)
{
    int slot = q < op->comm->rank ? q : q - 1;
    size_t stride = node_stride(op->count * op->esize);
    return (char *)op->comm->scratch + stride * (size_t)(1 + slot);
}

/* The partial result lives in recvbuf, except in place on ranks >= 2: there the
 * running sum of ranks 0..r-1 would overwrite our own contribution before it is
 * folded in, so it runs in scratch and only the last fold writes recvbuf. */
static char *node_acc(const struct crux_coll *op)
{
    int r = op->comm->rank;
    if (r >= 2 && op->sendbuf == op->recvbuf)
        return op->comm->scratch;
    return op->recvbuf;
}

/* Peers in fold order: ascending comm rank, skipping ours. */
static int node_peer(const struct crux_coll *op, int k) { return k < op->comm->rank ? k : k + 1; }

/* Where the fold of peer q reads its other operand (NULL: plain copy) and writes. */
static void node_fold_args(const struct crux_coll *op, int q, const void **a, void **dst)
{
    int r = op->comm->rank, P = op->comm->size;
    int last_peer = r == P - 1 ? P - 2 : P - 1;
    int send_last = r >= 2 && r == P - 1; /* our own vector is the last operand */
    char *acc = node_acc(op);
    if (r <= 1 && q == (r == 0 ? 1 : 0))
        *a = op->sendbuf; /* x0 op x1 starts from our own vector */
    else if (r >= 2 && q == 0)
        *a = NULL;
    else
        *a = acc;
    *dst = q == last_peer && !send_last ? op->recvbuf : acc;
}

/* After peer r-1 (ranks >= 2): fold in our own vector. */
static void node_fold_self(const struct crux_coll *op, int q)
{
    int r = op->comm->rank;
    if (r < 2 || q != r - 1)
        return;
    char *acc = node_acc(op);
    void *dst = r == op->comm->size - 1 ? op->recvbuf : acc;
    crux_reduce(dst, acc, op->sendbuf, op->count, op->dtype, op->op);
}

static void node_fold_landed(const struct crux_coll *op, int q)
{
    const void *a;
    void *dst;
    size_t bytes = op->count * op->esize;
    node_fold_args(op, q, &a, &dst);
    if (a)
        crux_reduce(dst, a, node_landing(op, q), op->count, op->dtype, op->op);
    else if (bytes)
        memcpy(dst, node_landing(op, q), bytes);
    node_fold_self(op, q);
}

/* Spin on peer q's mailbox, landing its vector straight into the fold. Blocking
 * calls spin up to ctx->spin_us; a nonblocking start looks only briefly. */
static int node_recv_direct(struct crux_coll *op, struct crux_tp *tp, int q,
                            const struct crux_msg_hdr *h)
{
    const void *a;
    void *dst;
    node_fold_args(op, q, &a, &dst);
    int w = op->comm->world_ranks[q];
    double end = 0;
    for (unsigned it = 1;; it++) {
        int rc = crux_shm_recv_now(tp, w, h, dst, a, op->dtype, op->op);
        if (rc != CRUX_INPROGRESS) {
            if (rc == CRUX_SUCCESS)
                node_fold_self(op, q);
            return rc;
        }
        if ((it & 63) == 0) {
            double now = crux_now();
            if (end == 0)
                end = op->deadline == 0 ? now + op->comm->ctx->spin_us * 1e-6 : now;
            if (now >= end)
                return CRUX_INPROGRESS;
        }
        cpu_relax();
    }
}

/* Send our vector to every peer, starting with our right neighbour so that P
 * ranks do not all write rank 0's mailbox first. Returns 1 if every send went
 * through the mailbox directly. */
static int node_send_all(struct crux_coll *op, struct crux_tp **tps, const struct crux_msg_hdr *h,
                         int *rc)
{
    int P = op->comm->size, r = op->comm->rank, direct = 1;
    for (int i = 1; i < P; i++) {
        int q = (r + i) % P, w = op->comm->world_ranks[q];
        if (crux_shm_send_now(tps[w], w, h, op->sendbuf) == CRUX_SUCCESS)
            continue;
        direct = 0;
        *rc = crux_coll_send(op, q, NODE_TAG, op->sendbuf, h->len, NULL, NULL);
        if (*rc != CRUX_SUCCESS)
            return 0;
    }
    return direct;
}

/* Receive from every peer in fold order starting at the k-th: straight from the
 * mailboxes while `direct`, the rest as queued transfers into scratch. */
static int node_recv_from(struct crux_coll *op, const struct crux_msg_hdr *h, int direct, int k)
{
    struct crux_comm *comm = op->comm;
    int P = comm->size;
    /* A queued send needs progress, which the generic wait provides. */
    for (; direct && k < P - 1; k++) {
        int q = node_peer(op, k);
        int rc = node_recv_direct(op, comm->ctx->peer_tp[comm->world_ranks[q]], q, h);
        if (rc == CRUX_INPROGRESS)
            break;
        if (rc != CRUX_SUCCESS)
            return rc;
    }
    if (k == P - 1)
        return CRUX_SUCCESS;
    op->step = k;
    for (; k < P - 1; k++) {
        int q = node_peer(op, k);
        CRUX_TRY(crux_coll_recv(op, q, NODE_TAG, node_landing(op, q), h->len, NULL));
    }
    op->phase = PH_GENERIC;
    return CRUX_INPROGRESS;
}

static int node_reserve(struct crux_coll *op)
{
    struct crux_comm *comm = op->comm;
    CRUX_TRY(crux_comm_reserve(comm, 2 * comm->size,
                               node_stride(op->count * op->esize) * (size_t)comm->size));
    op->xfers = comm->xfers;
    return CRUX_SUCCESS;
}

static int node_start(struct crux_coll *op)
{
    struct crux_comm *comm = op->comm;
    int P = comm->size, rc = CRUX_SUCCESS;
    size_t bytes = op->count * op->esize;
    if (P == 1) {
        if (op->sendbuf != op->recvbuf && bytes)
            memcpy(op->recvbuf, op->sendbuf, bytes);
        return CRUX_SUCCESS;
    }
    CRUX_TRY(node_reserve(op));
    struct crux_tp **tps = comm->ctx->peer_tp;
    struct crux_msg_hdr h = {comm->ctx_id, NODE_TAG, op->seq, op->sig, bytes};
    /* Queued transfers (a failed earlier call) would be overtaken: all generic then. */
    int direct = 1;
    for (int q = 0; q < P; q++)
        if (q != comm->rank && !crux_shm_direct_ok(tps[comm->world_ranks[q]], comm->world_ranks[q]))
            direct = 0;
    if (direct)
        direct = node_send_all(op, tps, &h, &rc);
    else
        for (int i = 1; rc == CRUX_SUCCESS && i < P; i++)
            rc = crux_coll_send(op, (comm->rank + i) % P, NODE_TAG, op->sendbuf, bytes, NULL, NULL);
    if (rc != CRUX_SUCCESS)
        return rc;
    return node_recv_from(op, &h, direct, 0);
}

/* Polls of the peer's mailbox inside the exchange call; node_recv_direct (clock,
 * spin budget) takes over after them. */
#define PAIR_POLLS 64

/* Two ranks within the mailbox, the common small call: send and receive in one
 * transport call, dst = sendbuf op peer's vector. The result is the peer's too
 * (a op b == b op a). Anything unusual continues as node_start would. */
static int node_pair(struct crux_coll *op)
{
    struct crux_comm *comm = op->comm;
    int q = 1 - comm->rank, w = comm->world_ranks[q], sent;
    struct crux_msg_hdr h = {comm->ctx_id, NODE_TAG, op->seq, op->sig, op->count * op->esize};
    int rc = crux_shm_xchg_now(comm->ctx->peer_tp[w], w, &h, op->sendbuf, op->recvbuf,
                               op->sendbuf, op->dtype, op->op, PAIR_POLLS, &sent);
    if (rc != CRUX_INPROGRESS)
        return rc;
    if (!sent)
        return node_start(op);
    CRUX_TRY(node_reserve(op));
    return node_recv_from(op, &h, 1, 0);
}

int crux_allreduce_shm_node(struct crux_coll *op)
{
    if (op->phase == PH_PIPE)
        return crux_allreduce_shm_pipe(op);
    if (op->phase == PH_START) {
        if (op->comm->size == 2)
            return op->count * op->esize > crux_shm_node_max_bytes(op->comm)
                       ? crux_allreduce_shm_pipe(op)
                       : node_pair(op);
        return node_start(op);
    }
    for (int k = op->step; k < op->comm->size - 1; k++)
        node_fold_landed(op, node_peer(op, k));
    return CRUX_SUCCESS;
}

int crux_shm_node_usable(struct crux_comm *comm)
{
    if (comm->shm_node == 0) {
        struct crux_ctx *ctx = comm->ctx;
        int ok = comm->size > 1 && comm->topo->nnodes == 1 && ctx->peer_tp && comm->world_ranks;
        size_t max = (size_t)-1;
        for (int q = 0; ok && q < comm->size; q++) {
            int w = comm->world_ranks[q];
            if (q == comm->rank)
                continue;
            ok = crux_shm_is_shm(ctx->peer_tp[w]);
            size_t m = ok ? crux_shm_direct_max(ctx->peer_tp[w], w) : 0;
            max = m < max ? m : max;
        }
        comm->shm_node_max = ok ? max : 0;
        comm->shm_node = ok ? 1 : 2;
    }
    return comm->shm_node == 1;
}

size_t crux_shm_node_max_bytes(struct crux_comm *comm)
{
    return crux_shm_node_usable(comm) ? comm->shm_node_max : 0;
}
