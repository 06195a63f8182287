/* shm_pipe.c - allreduce of large messages between the two ranks of one host,
 * entered from algo/shm_node.c (which handles the small ones).
 *
 * LIMITS.md strategy B: a pipelined reduce-scatter +
 * allgather through the pair's persistent staging rings. Rank r owns half r. It
 * stages chunks of the peer's half (RS); for each chunk of its own half that
 * arrives it reduces with its own vector ONCE, into recvbuf and the outgoing
 * staging slot (the allgather message), so the allgather needs no second pass
 * over recvbuf; arriving allgather chunks are copied to recvbuf
 * (non-temporal stores only if CRUX_SHM_NT_BYTES asks: LIMITS.md found them 10-15%
 * faster from 16 MiB on, but on 2026-12-08 this host ran 16 MiB-256 MiB 10-25%
 * faster without them, 5 interleaved launches). Chunks are a
 * quarter of a half, at least 16 KiB, at most a staging slot. One ring per
 * direction carries both phases in a fixed order both ranks derive (RS runs half
 * the ring ahead, then AG and RS alternate), so every fragment
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

#define LARGE_SPLIT 4             /* chunk <= half / LARGE_SPLIT: the pipeline fills early */
#define LARGE_MIN_CHUNK 16384     /* ... but not below: each chunk costs ~4 cache-line syncs */
#define LARGE_SUB 16384          /* fused reduce + copy in L1-sized pieces */
#define LARGE_IDLE_POLL 64       /* idle passes between clock/death checks */
#define LARGE_SLEEP_MS 5         /* longest nap: a wake-up the peer still owes arrives anyway */

#define PIPE_TAG 0u /* the header message; same tag as shm_node.c's mailbox traffic */

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
    uint64_t lag;          /* RS chunks staged ahead of the first AG chunk */
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
    size_t cap = crux_shm_frag_bytes(g->tp, g->wq) & ~(size_t)63;
    size_t want = (g->len[0] / LARGE_SPLIT + 63) & ~(size_t)63;
    want = want < LARGE_MIN_CHUNK ? LARGE_MIN_CHUNK : want;
    g->chunk = want < cap ? want : cap;
    /* RS may run half the ring ahead: more deadlocks (shm_direct.c's assert). */
    g->lag = crux_shm_frag_depth(g->tp, g->wq) / 2;
    for (int i = 0; i < 2; i++)
        g->k[i] = (g->len[i] + g->chunk - 1) / g->chunk;
}

static size_t large_chunk_len(const struct large_geo *g, int half, uint64_t i)
{
    size_t at = (size_t)i * g->chunk;
    return g->len[half] - at < g->chunk ? g->len[half] - at : g->chunk;
}

/* The fixed fragment order of one direction: is the next one an RS chunk? */
static int large_next_is_rs(const struct large_geo *g, uint64_t rs, uint64_t ag, uint64_t k_rs,
                            uint64_t k_ag)
{
    return rs < k_rs && (ag >= k_ag || rs < ag + g->lag);
}

static int large_corrupt(const struct crux_coll *op, const struct large_geo *g, size_t n, size_t want)
{
    crux_error(CRUX_SUBSYS_COLL, "corrupt staging fragment from rank %d (host %s): %zu bytes, "
               "expected %zu (call %llu on comm %u)", g->wq, op->comm->ctx->peers[g->wq].host, n,
               want, (unsigned long long)op->seq, op->comm->ctx_id);
    return CRUX_ERR_TRANSPORT;
}

/* Reduce arriving chunk i of our half with our own vector once, into recvbuf and
 * the outgoing slot t (the allgather message), in L1-sized pieces. The reduce
 * never stores into t: t's lines sit in the peer's cache (it read them last lap),
 * and vector stores would fetch each one across cores first, while memcpy's
 * string stores claim whole lines (2026-12-07, 2 ranks, 256 KiB: 38 -> 21 us).
 * With non-temporal stores (CRUX_SHM_NT_BYTES) the result goes through an L1
 * scratch piece rather than being read back from recvbuf. */
static void large_fuse(const struct crux_coll *op, const struct large_geo *g, uint64_t i,
                       const char *s, char *t, size_t n)
{
    size_t at = g->off[g->r] + (size_t)i * g->chunk;
    const char *a = (const char *)op->sendbuf + at;
    char *dst = (char *)op->recvbuf + at;
    int nt = crux_shm_nt(op->comm->ctx, op->count * op->esize);
    _Alignas(64) char l1[LARGE_SUB];
    for (size_t o = 0; o < n; o += LARGE_SUB) {
        size_t m = n - o < LARGE_SUB ? n - o : LARGE_SUB;
        char *r = nt ? l1 : dst + o;
        crux_reduce(r, a + o, s + o, m / op->esize, op->dtype, op->op);
        memcpy(t + o, r, m);
        if (nt)
            crux_shm_copy(dst + o, l1, m, 1);
    }
}

/* Move every fragment that can move now; returns how many moved, or an error. */
static int large_pass(struct crux_coll *op, const struct large_geo *g)
{
    uint64_t *c = op->ctr;
    int moved = 0;
    int nt = crux_shm_nt(op->comm->ctx, op->count * op->esize);
    for (;;) {
        size_t cap, n;
        int tx_rs = large_next_is_rs(g, c[LG_RS_TX], c[LG_AG_TX], g->k[g->q], g->k[g->r]);
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
        if (large_next_is_rs(g, c[LG_AG_TX], c[LG_AG_RX], g->k[g->r], g->k[g->q])) {
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
    struct crux_msg_hdr h = {op->comm->ctx_id, PIPE_TAG, op->seq, op->sig, 0};
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
    op->phase = CRUX_SHM_PH_PIPE;
    return large_run(op);
}

int crux_allreduce_shm_pipe(struct crux_coll *op)
{
    return op->phase == CRUX_SHM_PH_PIPE ? large_run(op) : large_start(op);
}
