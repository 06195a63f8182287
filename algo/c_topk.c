/* c_topk.c - DGC: per-rank top-k with momentum correction, exchanged by sparse allgather.
 *
 * Lin et al., "Deep Gradient Compression", ICLR 2018 (arXiv 1712.01887), Section 3
 * (rules in ../shared/ALGORITHMS.md section 4, checked against the authors' code):
 *   local gradient clipping (Sec. 3.3): g *= min(1, clip / ||g||_2), clip being the
 *       global threshold scaled by P^-1/2 (crux_compressor_set_clip takes the global one);
 *   momentum correction (Sec. 3.2, eq. 5):  u = m u + g;   v = v + u;
 *   sparsification: idx = top-k(|v|) per rank (sampled threshold, crux_topk);
 *   momentum factor masking (Sec. 3.3, eq. 6):  u[idx] = v[idx] = 0;
 *   exchange: every rank's (idx, v[idx]) reaches every rank (allgather, O(kP));
 *   result: the sum over ranks of the sparse vectors (DGC divides by P later).
 * The optimiser must then apply the update without momentum of its own (DGC's DGCSGD
 * applies momentum to the weight-decay term only): the momentum lives here.
 * Warm-up (Sec. 3.4): crux_compressor_set_density lowers the density epoch by epoch.
 *
 * Message of a chunk: k indices (uint32, chunk-relative, ascending) then k values; k is
 * the same on every rank, so the allgather has fixed-size blocks. Indices are sent raw
 * rather than delta-coded: blocks must have one size, and at 0.1% density a varint gap
 * takes 2 bytes of 4 anyway.
 * Order: rank 0's entries are added first, then rank 1's..., on every rank, so the
 * result is bit-identical everywhere. Pipelining as in c_qsgd.c.
 */
#include <math.h>
#include <string.h>

#include "lib/compress.h"

static size_t block_bytes(size_t k)
{
    return k * (sizeof(uint32_t) + sizeof(float));
}

/* Clip factor of the whole gradient, computed once per call (DGC clips per node). */
static float clip_scale(const struct crux_compressor *c, const float *grad)
{
    if (c->clip <= 0.0)
        return 1.0f;
    double ss = 0.0;
    for (size_t i = 0; i < c->n; i++)
        ss += (double)grad[i] * grad[i];
    double local = c->clip / sqrt((double)c->comm->size), norm = sqrt(ss);
    return norm > local ? (float)(local / norm) : 1.0f;
}

/* u = m u + s g;  v = v + u  (c->mom = u, c->mem = v); residual: v += s g */
static void momentum_chunk(struct crux_compressor *c, size_t off, size_t len, const float *grad,
                           float s)
{
    float m = c->cfg.beta;
    float *u = c->mom ? c->mom + off : NULL, *v = c->mem + off;
    const float *g = grad + off;
    if (c->cfg.memory == CRUX_MEMORY_NONE) {
        for (size_t i = 0; i < len; i++)
            v[i] = s * g[i];
    } else if (c->cfg.memory == CRUX_MEMORY_RESIDUAL) {
        for (size_t i = 0; i < len; i++)
            v[i] += s * g[i];
    } else {
        for (size_t i = 0; i < len; i++) {
            u[i] = m * u[i] + s * g[i];
            v[i] += u[i];
        }
    }
}

static int topk_encode_chunk(struct crux_compressor *c, size_t ch, const float *grad, float s,
                             size_t k, uint8_t *block)
{
    size_t off = cx_chunk_off(c, ch), len = cx_chunk_len(c, ch);
    for (size_t o = 0; o < len; o += CX_POLL_ELEMS) {
        momentum_chunk(c, off + o, len - o < CX_POLL_ELEMS ? len - o : CX_POLL_ELEMS, grad, s);
        CRUX_TRY(cx_poll(c));
    }
    uint32_t *idx = (uint32_t *)block;
    float *val = (float *)(block + k * sizeof(uint32_t));
    size_t got = crux_topk(c->mem + off, len, k, c->cfg.seed + c->calls + ch, c->ws, idx, val);
    if (got != k) {
        crux_error(CRUX_SUBSYS_CODEC, "DGC chunk %zu: top-k returned %zu of %zu entries", ch, got, k);
        return CRUX_ERR_INTERNAL;
    }
    /* momentum factor masking; with no memory v is rebuilt every call anyway */
    if (c->cfg.memory == CRUX_MEMORY_MOMENTUM)
        crux_mem_momentum_mask(c->mom + off, c->mem + off, idx, k);
    else if (c->cfg.memory == CRUX_MEMORY_RESIDUAL)
        crux_zero_at(c->mem + off, idx, k);
    return cx_poll(c);
}

/* out[chunk] = sum over ranks, in rank order, of their sparse blocks. */
static int topk_decode_chunk(struct crux_compressor *c, size_t ch, size_t k, const uint8_t *all,
                             float *out)
{
    size_t off = cx_chunk_off(c, ch), len = cx_chunk_len(c, ch), bytes = block_bytes(k);
    memset(out + off, 0, len * 4);
    for (int r = 0; r < c->comm->size; r++) {
        const uint32_t *idx = (const uint32_t *)(all + (size_t)r * bytes); /* 4-aligned */
        const float *val = (const float *)(idx + k);
        int64_t last = -1;
        for (size_t i = 0; i < k; last = idx[i++])
            if (idx[i] >= len || (int64_t)idx[i] <= last) {
                crux_error(CRUX_SUBSYS_CODEC, "DGC chunk %zu: rank %d sent index %u (entry %zu "
                           "of %zu) outside [0, %zu) or not ascending: ranks disagree", ch, r,
                           idx[i], i, k, len);
                return CRUX_ERR_MISMATCH;
            }
        crux_scatter_add(out + off, idx, val, k);
    }
    return CRUX_SUCCESS;
}

static int topk_finish_chunk(struct crux_compressor *c, struct cx_step *s, size_t ch, size_t k,
                             float *out)
{
    CRUX_TRY(cx_wait(c, s));
    double t = cx_tic();
    int rc = topk_decode_chunk(c, ch, k, s->buf, out);
    c->st.decode_s += cx_tic() - t;
    c->st.nnz += k * (size_t)c->comm->size;
    return rc;
}

int crux_topk_allreduce(struct crux_compressor *c, const float *grad, float *out)
{
    float s = clip_scale(c, grad);
    struct cx_step *prev = NULL;
    size_t prev_k = 0;
    for (size_t ch = 0; ch < c->nchunks; ch++) {
        size_t k = cx_chunk_k(c, cx_chunk_len(c, ch)), bytes = block_bytes(k);
        uint8_t *buf;
        CRUX_TRY(cx_next_buf(c, &buf));
        double t = cx_tic();
        CRUX_TRY(topk_encode_chunk(c, ch, grad, s, k, buf + (size_t)c->comm->rank * bytes));
        c->st.encode_s += cx_tic() - t;
        struct cx_step *st;
        CRUX_TRY(cx_post_allgather(c, bytes, &st));
        if (prev)
            CRUX_TRY(topk_finish_chunk(c, prev, ch - 1, prev_k, out));
        prev = st;
        prev_k = k;
    }
    if (prev)
        CRUX_TRY(topk_finish_chunk(c, prev, c->nchunks - 1, prev_k, out));
    return CRUX_SUCCESS;
}
