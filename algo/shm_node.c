/* shm_node.c - allreduce among ranks that all share one host, through the shm
 * mailboxes directly (small messages).
 *
 * Every rank sends its whole vector to every other rank (one mailbox message per
 * pair) and then reduces all P contributions itself in rank order,
 * ((x0 op x1) op x2) op ..., so one cache-line round trip replaces recursive
 * doubling's log2(P) dependent steps, and all ranks compute the same bits
 * (a op b == b op a, lib/reduce.h, lets ranks 0 and 1 start from their own
 * vector). LIMITS.md strategy A: 0.08 us at 4 B on two cores.
 *
 * The exchange bypasses the transfer queues (transport/shm/shm_direct.h), but
 * every message still carries the collective's header, so ranks that disagree on
 * count/dtype/op get CRUX_ERR_MISMATCH. Blocking calls spin on the mailbox for
 * ctx->spin_us; past that (oversubscribed host, slow peer, dead peer), or when a
 * channel is busy, the remaining receives are posted as ordinary transfers into
 * scratch and the generic wait (yield, futex, death checks, CRUX_TIMEOUT) takes
 * over; their contributions are folded in rank order once they land.
 *
 * Large messages, two ranks (LIMITS.md strategy B): a pipelined reduce-scatter +
 * allgather through the pair's persistent staging rings. Rank r owns half r. It
 * stages chunks of the peer's half (RS); for each chunk of its own half that
 * arrives it reduces with its own vector ONCE into the outgoing staging slot (the
 * allgather message) and copies that hot slot into recvbuf, so the allgather needs
 * no second pass over recvbuf; arriving allgather chunks are copied to recvbuf,
 * with non-temporal stores from 16 MiB on (skips the read-for-ownership). One
 * ring per direction carries both phases in a fixed order both ranks derive
 * (RS runs LARGE_LAG chunks ahead, then AG and RS alternate), so every fragment
 * is known without a descriptor. Each chunk is reduced by exactly one rank, so
 * both hold the same bits. A mailbox message with the call's header goes first:
 * a peer in a different call fails with CRUX_ERR_MISMATCH before any data is used.
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

enum { PH_START = 0, PH_GENERIC, PH_LARGE };

#define LARGE_LAG 2              /* RS chunks staged ahead of the first AG chunk */
#define LARGE_SUB 16384          /* fused reduce + copy in L1-sized pieces */
#define LARGE_NT_MIN (16u << 20) /* recvbuf writes non-temporal from here (LIMITS.md) */
#define LARGE_IDLE_POLL 64       /* idle passes between clock/death checks */
#define LARGE_SLEEP_MS 5         /* longest nap: a wake-up the peer still owes arrives anyway */

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
    CRUX_TRY(crux_comm_reserve(comm, 2 * P, node_stride(bytes) * (size_t)P));
    op->xfers = comm->xfers;
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
    int k = 0;
    /* A queued send needs progress, which the generic wait provides. */
    for (; direct && k < P - 1; k++) {
        int q = node_peer(op, k);
        rc = node_recv_direct(op, tps[comm->world_ranks[q]], q, &h);
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
        CRUX_TRY(crux_coll_recv(op, q, NODE_TAG, node_landing(op, q), bytes, NULL));
    }
    op->phase = PH_GENERIC;
    return CRUX_INPROGRESS;
}


/* --- large messages, two ranks --------------------------------------------- */

/* op->ctr: [0] RS chunks sent, [1] AG chunks sent (= RS chunks reduced),
 * [2] AG chunks received, [3] idle passes. op->step: bit 0 header sent, bit 1
 * header checked, bit 2 blocking call. */
enum { LG_RS_TX = 0, LG_AG_TX, LG_AG_RX, LG_IDLE };
#define LG_HDR_SENT 1
#define LG_HDR_OK 2
#define LG_BLOCKING 4

struct large_geo {
    size_t off[2], len[2]; /* bytes of each rank's half */
    size_t chunk;
    uint64_t k[2];         /* chunks per half */
    int r, q;              /* my comm rank, the peer's */
    int wq;                /* the peer's world rank */
    struct crux_tp *tp;
};

static void large_geo(const struct crux_coll *op, struct large_geo *g)
{
    size_t half = op->count / 2 * op->esize, bytes = op->count * op->esize;
    g->r = op->comm->rank;
    g->q = 1 - g->r;
    g->wq = op->comm->world_ranks[g->q];
    g->tp = op->comm->ctx->peer_tp[g->wq];
    g->off[0] = 0;
    g->len[0] = half;
    g->off[1] = half;
    g->len[1] = bytes - half;
    g->chunk = crux_shm_frag_bytes(g->tp, g->wq) & ~(size_t)63;
    for (int i = 0; i < 2; i++)
        g->k[i] = (g->len[i] + g->chunk - 1) / g->chunk;
}

static size_t large_chunk_len(const struct large_geo *g, int half, uint64_t i)
{
    size_t at = (size_t)i * g->chunk;
    return g->len[half] - at < g->chunk ? g->len[half] - at : g->chunk;
}

/* The fixed fragment order of one direction: is the next one an RS chunk? */
static int large_next_is_rs(uint64_t rs, uint64_t ag, uint64_t k_rs, uint64_t k_ag)
{
    return rs < k_rs && (ag >= k_ag || rs < ag + LARGE_LAG);
}

static int large_corrupt(const struct crux_coll *op, const struct large_geo *g, size_t n, size_t want)
{
    crux_error(CRUX_SUBSYS_COLL, "corrupt staging fragment from rank %d (host %s): %zu bytes, "
               "expected %zu (call %llu on comm %u)", g->wq, op->comm->ctx->peers[g->wq].host, n,
               want, (unsigned long long)op->seq, op->comm->ctx_id);
    return CRUX_ERR_TRANSPORT;
}

/* Reduce arriving chunk i of our half with our own vector into the outgoing slot t
 * (the allgather message), then copy it to recvbuf while it is in L1. */
static void large_fuse(const struct crux_coll *op, const struct large_geo *g, uint64_t i,
                       const char *s, char *t, size_t n)
{
    size_t at = g->off[g->r] + (size_t)i * g->chunk;
    const char *a = (const char *)op->sendbuf + at;
    char *dst = (char *)op->recvbuf + at;
    int nt = op->count * op->esize >= LARGE_NT_MIN;
    for (size_t o = 0; o < n; o += LARGE_SUB) {
        size_t m = n - o < LARGE_SUB ? n - o : LARGE_SUB;
        crux_reduce(t + o, a + o, s + o, m / op->esize, op->dtype, op->op);
        crux_shm_copy(dst + o, t + o, m, nt);
    }
}

/* Move every fragment that can move now; returns how many moved, or an error. */
static int large_pass(struct crux_coll *op, const struct large_geo *g)
{
    uint64_t *c = op->ctr;
    int moved = 0;
    int nt = op->count * op->esize >= LARGE_NT_MIN;
    for (;;) {
        size_t cap, n;
        int tx_rs = large_next_is_rs(c[LG_RS_TX], c[LG_AG_TX], g->k[g->q], g->k[g->r]);
        if (tx_rs) {
            char *t = crux_shm_frag_tx(g->tp, g->wq, &cap);
            if (t) {
                size_t m = large_chunk_len(g, g->q, c[LG_RS_TX]);
                memcpy(t, (const char *)op->sendbuf + g->off[g->q] + c[LG_RS_TX] * g->chunk, m);
                crux_shm_frag_tx_post(g->tp, g->wq, m);
                c[LG_RS_TX]++;
                moved++;
                continue;
            }
        }
        /* Everything of this call is in: what follows is the peer's next call. */
        if (!(op->step & LG_HDR_OK) || (c[LG_AG_TX] == g->k[g->r] && c[LG_AG_RX] == g->k[g->q]))
            break;
        const char *s = crux_shm_frag_rx(g->tp, g->wq, &n);
        if (!s)
            break;
        if (large_next_is_rs(c[LG_AG_TX], c[LG_AG_RX], g->k[g->r], g->k[g->q])) {
            uint64_t i = c[LG_AG_TX];
            char *t = tx_rs ? NULL : crux_shm_frag_tx(g->tp, g->wq, &cap);
            if (!t)
                break;
            if (n != large_chunk_len(g, g->r, i))
                return -large_corrupt(op, g, n, large_chunk_len(g, g->r, i));
            large_fuse(op, g, i, s, t, n);
            crux_shm_frag_rx_done(g->tp, g->wq);
            crux_shm_frag_tx_post(g->tp, g->wq, n);
            c[LG_AG_TX]++;
        } else {
            uint64_t i = c[LG_AG_RX];
            if (n != large_chunk_len(g, g->q, i))
                return -large_corrupt(op, g, n, large_chunk_len(g, g->q, i));
            crux_shm_copy((char *)op->recvbuf + g->off[g->q] + i * g->chunk, s, n, nt);
            crux_shm_frag_rx_done(g->tp, g->wq);
            c[LG_AG_RX]++;
        }
        moved++;
    }
    return moved;
}

static int large_header(struct crux_coll *op, const struct large_geo *g)
{
    struct crux_msg_hdr h = {op->comm->ctx_id, NODE_TAG, op->seq, op->sig, 0};
    if (!(op->step & LG_HDR_SENT) && crux_shm_send_now(g->tp, g->wq, &h, NULL) == CRUX_SUCCESS)
        op->step |= LG_HDR_SENT;
    if (!(op->step & LG_HDR_OK)) {
        int rc = crux_shm_recv_now(g->tp, g->wq, &h, NULL, NULL, op->dtype, op->op);
        if (rc == CRUX_SUCCESS)
            op->step |= LG_HDR_OK;
        else if (rc != CRUX_INPROGRESS)
            return rc;
    }
    return CRUX_SUCCESS;
}

/* Nothing moved for a while: look for a dead peer, the deadline, and (blocking
 * calls past the spin budget) sleep until the peer rings. */
static int large_idle(struct crux_coll *op, const struct large_geo *g)
{
    struct crux_ctx *ctx = op->comm->ctx;
    if (++op->ctr[LG_IDLE] % LARGE_IDLE_POLL)
        return CRUX_SUCCESS;
    int rc = crux_progress(ctx);
    if (rc != CRUX_SUCCESS)
        return rc;
    double now = crux_now();
    if (op->deadline == 0)
        op->deadline = now + ctx->cfg.timeout_s;
    if (now > op->deadline) {
        crux_error(CRUX_SUBSYS_COLL, "allreduce (call %llu on comm %u, %zu bytes) timed out after "
                   "%.1f s (CRUX_TIMEOUT) waiting for rank %d (host %s): %llu/%llu chunks reduced, "
                   "%llu/%llu gathered", (unsigned long long)op->seq, op->comm->ctx_id,
                   op->count * op->esize, ctx->cfg.timeout_s, g->wq, ctx->peers[g->wq].host,
                   (unsigned long long)op->ctr[LG_AG_TX], (unsigned long long)g->k[g->r],
                   (unsigned long long)op->ctr[LG_AG_RX], (unsigned long long)g->k[g->q]);
        return CRUX_ERR_TIMEOUT;
    }
    /* Spin budget in idle passes (~64 ns each with the pause), then sleep until
     * the peer moves (it rings our doorbell when it posts or frees a slot). */
    if ((op->step & LG_BLOCKING) && op->ctr[LG_IDLE] > (uint64_t)ctx->spin_us * 16)
        return crux_shm_direct_block(g->tp, g->wq, LARGE_SLEEP_MS);
    return CRUX_SUCCESS;
}

static int large_run(struct crux_coll *op)
{
    struct large_geo g;
    large_geo(op, &g);
    for (;;) {
        CRUX_TRY(large_header(op, &g));
        int moved = large_pass(op, &g);
        if (moved < 0)
            return -moved;
        if (op->ctr[LG_AG_TX] == g.k[g.r] && op->ctr[LG_AG_RX] == g.k[g.q] &&
            op->ctr[LG_RS_TX] == g.k[g.q] && (op->step & LG_HDR_SENT))
            return CRUX_SUCCESS;
        if (moved) {
            op->ctr[LG_IDLE] = 0;
            continue;
        }
        CRUX_TRY(large_idle(op, &g));
        if (!(op->step & LG_BLOCKING))
            return CRUX_INPROGRESS; /* crux_test/crux_wait call again */
        cpu_relax();
    }
}

static int large_start(struct crux_coll *op)
{
    int wq = op->comm->world_ranks[1 - op->comm->rank];
    if (!crux_shm_direct_ok(op->comm->ctx->peer_tp[wq], wq)) {
        crux_error(CRUX_SUBSYS_COLL, "allreduce on comm %u: transfers to rank %d are still queued",
                   op->comm->ctx_id, wq);
        return CRUX_ERR_INTERNAL;
    }
    memset(op->ctr, 0, sizeof op->ctr);
    /* api.c leaves deadline 0 for blocking calls; requests set it at start. */
    op->step = op->deadline == 0 ? LG_BLOCKING : 0;
    op->phase = PH_LARGE;
    return large_run(op);
}

int crux_allreduce_shm_node(struct crux_coll *op)
{
    if (op->phase == PH_LARGE)
        return large_run(op);
    if (op->phase == PH_START) {
        if (op->comm->size == 2 && op->count * op->esize > crux_shm_node_max_bytes(op->comm))
            return large_start(op);
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
