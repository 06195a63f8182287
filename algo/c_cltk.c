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
 * Per chunk: every rank accumulates p; the leader selects k indices and encodes
 * them (crux_idx_encode); a variable-length broadcast carries them; every rank
 * gathers its values there, updates its memory and queues a dense allreduce of
 * the k values in place. That allreduce runs while the next chunk is accumulated
 * and selected; the broadcast of the next chunk queues behind it.
 */
#include <string.h>

#include "lib/compress.h"

/* The leader's part of a chunk: select and encode. Returns the encoded length. */
static size_t cltk_select(struct crux_compressor *c, size_t ch, uint32_t *idx, float *val,
                          uint8_t *enc)
{
    size_t off = cx_chunk_off(c, ch), len = cx_chunk_len(c, ch), k = cx_chunk_k(c, len);
    size_t got = crux_topk(c->acc + off, len, k, c->cfg.seed + ch, c->ws, idx, val);
    c->nk[ch] = got;
    return crux_idx_encode(idx, got, len, enc);
}

/* A non-leader's part: decode the leader's indices and gather our values. */
static int cltk_receive(struct crux_compressor *c, size_t ch, const struct cx_step *s,
                        int leader, uint32_t *idx, float *val)
{
    size_t off = cx_chunk_off(c, ch), len = cx_chunk_len(c, ch), k = cx_chunk_k(c, len), got = 0;
    int rc = crux_idx_decode(s->buf, s->len, len, idx, k, &got);
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

int crux_cltk_allreduce(struct crux_compressor *c, const float *grad, float *out)
{
    int P = c->comm->size, me = c->comm->rank, leader = (int)(c->calls % (uint64_t)P);
    for (size_t ch = 0; ch < c->nchunks; ch++) {
        uint32_t *idx = c->idx + ch * c->cand_max;
        float *val = c->val + ch * c->cand_max;
        double t = cx_tic();
        CRUX_TRY(cx_accumulate(c, ch, grad));
        size_t elen = 0;
        if (me == leader)
            elen = cltk_select(c, ch, idx, val, c->encbuf);
        c->st.encode_s += cx_tic() - t;
        struct cx_step *s;
        CRUX_TRY(cx_post_bcast_var(c, leader, c->encbuf, elen, &s));
        CRUX_TRY(cx_wait(c, s));
        t = cx_tic();
        if (me != leader)
            CRUX_TRY(cltk_receive(c, ch, s, leader, idx, val));
        c->st.encode_s += cx_tic() - t;
        t = cx_tic();
        cx_mem_update(c, ch, idx, c->nk[ch]);
        c->st.decode_s += cx_tic() - t;
        CRUX_TRY(cx_post_allreduce(c, val, c->nk[ch], NULL));
    }
    CRUX_TRY(cx_wait(c, NULL));
    double t = cx_tic();
    for (size_t ch = 0; ch < c->nchunks; ch++) {
        cx_write_out(c, ch, out, c->idx + ch * c->cand_max, c->val + ch * c->cand_max, c->nk[ch]);
        c->st.nnz += c->nk[ch];
    }
    c->st.decode_s += cx_tic() - t;
    return CRUX_SUCCESS;
}
