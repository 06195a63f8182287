/* codec.h - compression kernels: pure functions on arrays, no communication.
 *
 * Everything here is deterministic (same input, same seed -> same output on every
 * rank and run) and allocates nothing on its hot path: callers own the buffers,
 * and the workspaces are created once (per compressor) and reused.
 *
 * Index type is uint32_t: a compressor handles at most 2^32-1 elements.
 */
#ifndef CRUX_CODEC_H
#define CRUX_CODEC_H

#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------- top-k --- */

/* Workspace for top-k over vectors of up to n elements with k <= kmax. */
struct crux_topk_ws;
int  crux_topk_ws_create(size_t n, size_t kmax, struct crux_topk_ws **out);
void crux_topk_ws_free(struct crux_topk_ws *ws);

/* Select exactly min(k, n) entries of x with the largest |x|, found by a sampled
 * threshold (seeded) plus one vectorised compaction pass and an exact-k fix-up;
 * no full sort. Output indices are strictly ascending; val[j] = x[idx[j]].
 * Tie rule: among entries of equal |x| at the k-th boundary, the lower index wins.
 * NaN compares as the largest magnitude (so it is never silently dropped).
 * val may be NULL (indices only). Returns the number of entries written. */
size_t crux_topk(const float *x, size_t n, size_t k, uint64_t seed,
                 struct crux_topk_ws *ws, uint32_t *idx, float *val);

/* Fused error-feedback selection, one read-2-write-1 pass instead of two:
 *   acc[i] = mem[i] + grad[i] for every i < n, then exactly crux_topk(acc, ...).
 * Bit-identical to crux_mem_accumulate_zero(acc, mem, grad, out, n) followed by
 * crux_topk(acc, n, k, seed, ws, idx, val): same idx, val, acc and out, on every ISA and
 * thread count. acc may alias mem (in-place memory) or grad. out: NULL, or n floats set
 * to +0 in the same pass (a dense output about to receive a sparse result); out may be
 * grad itself but must not otherwise overlap grad, mem or acc. */
size_t crux_topk_acc(float *acc, const float *mem, const float *grad, float *out, size_t n,
                     size_t k, uint64_t seed, struct crux_topk_ws *ws, uint32_t *idx, float *val);
/* Plain error feedback in one call (the memory is the accumulator):
 *   mem += grad;  idx, val = top-k of mem (crux_topk rule);  mem[idx] = 0.
 * = crux_topk_acc(mem, mem, grad, ...) then crux_zero_at(mem, idx, got). idx must not be
 * NULL; val may be. */
size_t crux_topk_ef(float *mem, const float *grad, size_t n, size_t k, uint64_t seed,
                    struct crux_topk_ws *ws, uint32_t *idx, float *val);

/* Split the survivor pass of crux_topk / crux_topk_acc over a worker pool (pool.h); NULL
 * = one thread again. Allocates the per-thread survivor regions now (setup time, not on
 * the hot path). Results do not depend on the pool. CRUX_SUCCESS or CRUX_ERR_NOMEM. */
struct crux_pool;
int crux_topk_ws_use_pool(struct crux_topk_ws *ws, struct crux_pool *pool);

/* The same rule on the magnitude of a[i] restricted to a candidate list cand[0..m)
 * (ascending): used to re-select top-k of a merged sparse vector. Writes ascending
 * indices into out_idx (taken from cand) and their values. */
size_t crux_topk_sparse(const uint32_t *cand_idx, const float *cand_val, size_t m,
                        size_t k, uint32_t *out_idx, float *out_val);

/* ------------------------------------------------------- sparse helpers --- */

void crux_gather(const float *x, const uint32_t *idx, size_t k, float *val);   /* val[j] = x[idx[j]] */
void crux_scatter(float *x, const uint32_t *idx, const float *val, size_t k);  /* x[idx[j]] = val[j] */
void crux_scatter_add(float *x, const uint32_t *idx, const float *val, size_t k);
void crux_zero_at(float *x, const uint32_t *idx, size_t k);

/* Union of two ascending sparse lists, values summed where indices coincide
 * (a's value + b's value, in that order, so the result is bit-reproducible).
 * out must hold na + nb entries. Returns the merged count. */
size_t crux_sparse_merge(const uint32_t *a_idx, const float *a_val, size_t na,
                         const uint32_t *b_idx, const float *b_val, size_t nb,
                         uint32_t *out_idx, float *out_val);

/* ---------------------------------------------------- index encoding --- */

/* An ascending index set over [0, n) is encoded either as a bitmap (ceil(n/8)
 * bytes) or as LEB128 varint deltas, whichever is smaller, chosen per message;
 * the first byte names the format. */
size_t crux_idx_encode_bound(size_t k, size_t n);
size_t crux_idx_encode(const uint32_t *idx, size_t k, size_t n, uint8_t *out);
/* Wire parser (fuzzed): rejects truncated input, indices >= n, non-ascending
 * indices and more than kmax entries with CRUX_ERR_MISMATCH; never reads past
 * in[len). On success *k = number of indices. */
int crux_idx_decode(const uint8_t *in, size_t len, size_t n, uint32_t *idx,
                    size_t kmax, size_t *k);

/* ------------------------------------------------------ count sketch --- */

/* r rows x c columns; row j sends index i to column h_j(i) with sign s_j(i): s_j a
 * seeded multiply-shift hash of i, h_j the run of 16 consecutive columns a seeded
 * multiply-shift hash of i/16 picks (codec_isa.h); same seed -> same hashes on every
 * rank. */
struct crux_sketch {
    int rows, cols;
    float *table;          /* rows * cols, row-major, 64-byte aligned */
    uint64_t hash_a[8], hash_b[8], sign_a[8], sign_b[8]; /* rows <= 8 */
};
int  crux_sketch_init(struct crux_sketch *s, int rows, int cols, uint64_t seed);
void crux_sketch_free(struct crux_sketch *s);
void crux_sketch_zero(struct crux_sketch *s);
/* table += sketch of x[0..n), element i treated as global index base + i.
 * Blocked so the table stays in cache; vectorised hashing. */
void crux_sketch_accumulate(struct crux_sketch *s, const float *x, size_t n, uint32_t base);
/* The same, rows split over a worker pool (pool.h; NULL = one thread): bit-identical. */
struct crux_pool;
void crux_sketch_accumulate_pool(struct crux_pool *pool, struct crux_sketch *s, const float *x,
                                 size_t n, uint32_t base);
/* Median over rows of s_j(i) * table[j][h_j(i)]. */
float crux_sketch_query(const struct crux_sketch *s, uint32_t i);
/* Estimate all n coordinates into est[0..n) (vectorised query). */
void crux_sketch_estimate(const struct crux_sketch *s, size_t n, float *est);
/* Heavy hitters: the k indices with the largest estimated |value| (same top-k
 * rule as crux_topk), ascending, using est[] as scratch of n floats. */
size_t crux_sketch_heavy(const struct crux_sketch *s, size_t n, size_t k, uint64_t seed,
                         struct crux_topk_ws *ws, float *est, uint32_t *idx);

/* ----------------------------------------------------------- memories --- */

/* acc = mem + grad (error-feedback accumulation), vectorised. */
void crux_mem_accumulate(float *acc, const float *mem, const float *grad, size_t n);
/* The same, and out[0..n) = +0 in the same loop (out NULL: nothing more). Zeroing in the
 * loop that reads grad is ~20% cheaper here than a second pass (one stream of reads and
 * writes instead of two phases); out is written with non-temporal stores when it is
 * vector-aligned. out may be grad itself but must not otherwise overlap the others. */
void crux_mem_accumulate_zero(float *acc, const float *mem, const float *grad, float *out,
                              size_t n);
/* Residual (error feedback): mem = acc, then mem[idx] = 0 for the sent entries. */
void crux_mem_residual(float *mem, const float *acc, const uint32_t *idx, size_t k, size_t n);
/* ScaleCom low-pass filter (cite the equation in the .c):
 *   mem = (1 - beta) * mem + beta * (acc - sent), sent = acc at idx, 0 elsewhere.
 * beta = 1 gives exactly crux_mem_residual (bit for bit). */
void crux_mem_lowpass(float *mem, const float *acc, const uint32_t *idx, size_t k,
                      size_t n, float beta);
/* DGC momentum correction (Lin et al. 2018, eq. in the .c):
 *   u = m*u + grad;  v = v + u;  acc = v.
 * After sending idx: momentum factor masking u[idx] = v[idx] = 0. */
void crux_mem_momentum(float *u, float *v, const float *grad, size_t n, float m);
void crux_mem_momentum_mask(float *u, float *v, const uint32_t *idx, size_t k);

#endif
