/* c_cltk.c - ScaleCom's cyclic local top-k (CLT-k) compressed allreduce.
 *
 * Chen et al., "ScaleCom: Scalable Sparsified Gradient Compression for
 * Communication-Efficient Distributed Training", NeurIPS 2020 (arXiv 2104.11125),
 * the CLT-k step and its low-pass filtered memory (rules in
 * ../shared/ALGORITHMS.md section 1(a); the paper's equation number is not
 * verified):
 *     p_i = m_i + g_i;  leader l = t mod P;  I_t = top-k(|p_l|)
 *     out = sum_i p_i restricted to I_t      (the same mask on every rank, so a
 *                                             plain allreduce of k values sums it)
 *     m_i = (1 - beta) m_i + beta (p_i - CLT-k_l(p_i))     (crux_mem_lowpass)
 * out is the SUM over ranks (crux.h), not the mean.
 *
 * Per chunk, steps posted in the same order on every rank: B(ch) the leader's
 * encoded indices (variable-length broadcast), then A(ch) the dense allreduce of
 * the k values in place.
 * - The leader never waits for the network inside the loop: it knows its indices
 *   and values once it has selected, so it posts B(ch) and A(ch) at once (the FIFO
 *   has a slot for every step of the call, cx_fifo_depth) and goes on to chunk ch+1
 *   while they move. Each wait would be a round trip through a follower that, on
 *   shared cores, may not be scheduled for milliseconds.
 * - A follower posts B(ch) before accumulating chunk ch, so its receive is ready
 *   when the leader's frame arrives, then gathers its values there.
 * - out[ch] is zeroed in the loop that reads grad[ch] (out may be grad); the k
 *   sums of every chunk are scattered into it once the queue has drained. The adding
 *   form (crux_compressed_allreduce_add) skips the zeroing, a quarter of the memory
 *   traffic of a call (grad read, memory read and written, out written), and adds the
 *   sums instead.
 */
#include <string.h>

#include "lib/compress.h"

/* The leader's part of a chunk: p = m + g and its top-k in one pass (crux_topk_acc,
 * split over the encode pool) that also zeroes out[chunk], the indices encoded.
 * Without a memory p is grad itself. Returns the encoded length in *elen. */
static int cltk_leader_select(struct crux_compressor *c, size_t ch, const float *grad,
                              float *out, uint32_t *idx, float *val, size_t *elen)
{
    size_t off = cx_chunk_off(c, ch), len = cx_chunk_len(c, ch), k = cx_chunk_k(c, len), got;
    if (c->cfg.memory == CRUX_MEMORY_NONE) {
        CRUX_TRY(cx_accumulate_zero(c, ch, grad, c->add_out ? NULL : out));
        got = crux_topk(c->acc + off, len, k, c->cfg.seed + ch, c->ws, idx, val);
    } else {
        got = crux_topk_acc(c->acc + off, c->mem + off, grad + off, c->add_out ? NULL : out + off,
                            len, k, c->cfg.seed + ch, c->ws, idx, val);
        CRUX_TRY(cx_poll(c));
    }
    c->nk[ch] = got;
    *elen = crux_idx_encode(idx, got, len, c->encbuf);
    return CRUX_SUCCESS;
}

/* A follower's part: decode the leader's indices and gather our values. */
static int cltk_receive(struct crux_compressor *c, size_t ch, const struct cx_step *s,
                        int leader, uint32_t *idx, float *val)
{
    size_t off = cx_chunk_off(c, ch), len = cx_chunk_len(c, ch), k = cx_chunk_k(c, len), got = 0;
    int rc = crux_idx_decode(s->buf + CX_FRAME_HDR, s->len, len, idx, k, &got);
    if (rc != CRUX_SUCCESS || got != k) {
        crux_error(CRUX_SUBSYS_CODEC, "CLT-k chunk %zu: the %zu index bytes from leader rank %d do "
                   "not decode to %zu indices of [0, %zu) (got %zu): ranks disagree", ch,
                   (size_t)s->len, leader, k, len, got);
        return CRUX_ERR_MISMATCH;
    }
    c->nk[ch] = got;
    crux_gather(c->acc + off, idx, got, val);
    return CRUX_SUCCESS;
}

static int cltk_post_bcast(struct crux_compressor *c, size_t ch, int leader, size_t elen,
                           struct cx_step **s)
{
    size_t head = cx_frame_head(c, cx_chunk_k(c, cx_chunk_len(c, ch)), 0);
    return cx_post_bcast_var(c, leader, c->encbuf, elen, head, s);
}

/* Every A(ch) is done: put the sums into the zeroed output (add them to the caller's
 * out for crux_compressed_allreduce_add). */
static void cltk_fill(struct crux_compressor *c, float *out)
{
    double t = cx_tic();
    for (size_t ch = 0; ch < c->nchunks; ch++) {
        float *o = out + cx_chunk_off(c, ch);
        const uint32_t *idx = c->idx + ch * c->cand_max;
        const float *val = c->val + ch * c->cand_max;
        if (c->add_out)
            crux_scatter_add(o, idx, val, c->nk[ch]);
        else
            crux_scatter(o, idx, val, c->nk[ch]);
        c->st.nnz += c->nk[ch];
    }
    c->st.decode_s += cx_tic() - t;
}

static void cltk_mem_update(struct crux_compressor *c, size_t ch)
{
    double t = cx_tic();
    cx_mem_update(c, ch, c->idx + ch * c->cand_max, c->nk[ch]);
    c->st.decode_s += cx_tic() - t;
}

static int cltk_leader(struct crux_compressor *c, const float *grad, float *out)
{
    for (size_t ch = 0; ch < c->nchunks; ch++) {
        uint32_t *idx = c->idx + ch * c->cand_max;
        float *val = c->val + ch * c->cand_max;
        double t = cx_tic();
        size_t elen;
        CRUX_TRY(cltk_leader_select(c, ch, grad, out, idx, val, &elen));
        c->st.encode_s += cx_tic() - t;
        CRUX_TRY(cltk_post_bcast(c, ch, c->comm->rank, elen, NULL));
        CRUX_TRY(cx_post_allreduce(c, val, c->nk[ch], NULL));
        cltk_mem_update(c, ch);
    }
    return CRUX_SUCCESS;
}

static int cltk_follower(struct crux_compressor *c, int leader, const float *grad, float *out)
{
    struct cx_step *b;
    CRUX_TRY(cltk_post_bcast(c, 0, leader, 0, &b));
    for (size_t ch = 0; ch < c->nchunks; ch++) {
        uint32_t *idx = c->idx + ch * c->cand_max;
        float *val = c->val + ch * c->cand_max;
        double t = cx_tic();
        CRUX_TRY(cx_accumulate_zero(c, ch, grad, c->add_out ? NULL : out));
        c->st.encode_s += cx_tic() - t;
        CRUX_TRY(cx_wait(c, b));
        t = cx_tic();
        CRUX_TRY(cltk_receive(c, ch, b, leader, idx, val));
        c->st.encode_s += cx_tic() - t;
        CRUX_TRY(cx_post_allreduce(c, val, c->nk[ch], NULL));
        if (ch + 1 < c->nchunks)
            CRUX_TRY(cltk_post_bcast(c, ch + 1, leader, 0, &b));
        cltk_mem_update(c, ch);
    }
    return CRUX_SUCCESS;
}

int crux_cltk_allreduce(struct crux_compressor *c, const float *grad, float *out)
{
    int leader = (int)(c->calls % (uint64_t)c->comm->size);
    int rc = c->comm->rank == leader ? cltk_leader(c, grad, out) : cltk_follower(c, leader, grad, out);
    if (rc == CRUX_SUCCESS)
        rc = cx_wait(c, NULL);
    if (rc == CRUX_SUCCESS)
        cltk_fill(c, out);
    return rc;
}
