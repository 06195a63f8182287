/* c_sketch.c - Count-Sketch compressed allreduce (Ivkin et al., "Communication-
 * efficient Distributed SGD with Sketching", NeurIPS 2019, arXiv 1903.04488; the
 * rules of ../shared/ALGORITHMS.md section 3.1, read from dhroth/sketchedsgd):
 *
 *   v = m + g;  S_i = CountSketch(v_i)         linear: sum_i S_i = S(sum_i v_i)
 *   S = allreduce_sum(S_i)                      the dense allreduce, bit-identical
 *   H = heavy hitters of S, p2 * k candidates   same S, same hashes -> same H everywhere
 *   x_H = allreduce_sum(v_i[H])                 second round: exact values at H
 *   Delta = top-k(x_H);  out = Delta;  m = v with supp(Delta) cleared
 * with p2 = 2 (the reference code asserts p2 <= workers; 2 keeps the second round
 * small while letting the exact values, not the estimates, pick the final k).
 *
 * Per chunk: its own r x c table over chunk-relative indices. The sketch of chunk
 * i+1 is built while the table of chunk i is summed; the candidates' values of
 * chunk i are queued behind it.
 */
#include <string.h>

#include "lib/compress.h"

#define SKETCH_P2 2

static size_t cand_count(size_t k, size_t len) { return SKETCH_P2 * k < len ? SKETCH_P2 * k : len; }

/* Sketch the chunk's accumulator, polling the queue between sub-blocks. */
static int sketch_chunk(struct crux_compressor *c, size_t ch)
{
    size_t off = cx_chunk_off(c, ch), len = cx_chunk_len(c, ch);
    struct crux_sketch *s = &c->sk[ch];
    crux_sketch_zero(s);
    for (size_t o = 0; o < len; o += CX_POLL_ELEMS) {
        size_t m = len - o < CX_POLL_ELEMS ? len - o : CX_POLL_ELEMS;
        crux_sketch_accumulate_pool(c->pool, s, c->acc + off + o, m, (uint32_t)o);
        CRUX_TRY(cx_poll(c));
    }
    return CRUX_SUCCESS;
}

/* Round two of a chunk whose summed table has arrived: candidates and their values. */
static int sketch_candidates(struct crux_compressor *c, size_t ch)
{
    size_t off = cx_chunk_off(c, ch), len = cx_chunk_len(c, ch);
    size_t m = cand_count(cx_chunk_k(c, len), len);
    uint32_t *idx = c->idx + ch * c->cand_max;
    float *val = c->val + ch * c->cand_max;
    double t = cx_tic();
    c->nk[ch] = crux_sketch_heavy(&c->sk[ch], len, m, c->cfg.seed + ch, c->ws, c->est, idx);
    crux_gather(c->acc + off, idx, c->nk[ch], val);
    c->st.encode_s += cx_tic() - t;
    return cx_post_allreduce(c, val, c->nk[ch], NULL);
}

/* Final k of a chunk among its exactly summed candidates; memory cleared there. */
static void sketch_finish_chunk(struct crux_compressor *c, size_t ch)
{
    size_t k = cx_chunk_k(c, cx_chunk_len(c, ch));
    uint32_t *idx = c->idx + ch * c->cand_max;
    float *val = c->val + ch * c->cand_max;
    size_t got = crux_topk_sparse(idx, val, c->nk[ch], k, c->sent, c->est);
    memcpy(idx, c->sent, got * sizeof(uint32_t));
    memcpy(val, c->est, got * sizeof(float));
    c->nk[ch] = got;
    cx_mem_update(c, ch, idx, got);
}

int crux_sketch_allreduce(struct crux_compressor *c, const float *grad, float *out)
{
    struct cx_step *prev = NULL;
    for (size_t ch = 0; ch < c->nchunks; ch++) {
        double t = cx_tic();
        CRUX_TRY(cx_accumulate(c, ch, grad));
        CRUX_TRY(sketch_chunk(c, ch));
        c->st.encode_s += cx_tic() - t;
        struct cx_step *s;
        struct crux_sketch *sk = &c->sk[ch];
        CRUX_TRY(cx_post_allreduce(c, sk->table, (size_t)sk->rows * (size_t)sk->cols, &s));
        if (prev) {
            CRUX_TRY(cx_wait(c, prev));
            CRUX_TRY(sketch_candidates(c, ch - 1));
        }
        prev = s;
    }
    CRUX_TRY(cx_wait(c, prev));
    CRUX_TRY(sketch_candidates(c, c->nchunks - 1));
    CRUX_TRY(cx_wait(c, NULL));
    double t = cx_tic();
    for (size_t ch = 0; ch < c->nchunks; ch++) {
        sketch_finish_chunk(c, ch);
        cx_write_out(c, ch, out, c->idx + ch * c->cand_max, c->val + ch * c->cand_max, c->nk[ch]);
        c->st.nnz += c->nk[ch];
    }
    c->st.decode_s += cx_tic() - t;
    return CRUX_SUCCESS;
}
