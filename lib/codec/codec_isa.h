/* codec_isa.h - private to lib/codec and its tests: runtime ISA dispatch of the codec
 * kernels and the per-ISA entry points. Every path gives bit-identical results. */
#ifndef CRUX_CODEC_ISA_H
#define CRUX_CODEC_ISA_H

#include <stddef.h>
#include <stdint.h>

#include "codec/codec.h"

#if defined(__x86_64__)
#define CODEC_X86 1 /* the AVX2 and AVX-512 kernels exist */
#endif

enum codec_isa { CODEC_ISA_UNKNOWN = 0, CODEC_ISA_SCALAR, CODEC_ISA_AVX2, CODEC_ISA_AVX512 };

/* The implementation in use: "avx512", "avx2" or "scalar". */
const char *crux_codec_isa(void);
/* Test/bench hook: force "avx512", "avx2" or "scalar"; 0, or -1 if this CPU can't. */
int crux_codec_force_isa(const char *isa);
int crux_codec_active_isa(void);

/* Magnitude key of a float: |x|'s bit pattern, with every NaN mapped to one key above
 * +inf, so unsigned order of keys is magnitude order and NaN is the largest. */
#define CODEC_KEY_NAN 0x7f800001u
static inline uint32_t codec_key_bits(uint32_t bits)
{
    uint32_t a = bits & 0x7fffffffu;
    return a > CODEC_KEY_NAN ? CODEC_KEY_NAN : a;
}

/* Compaction: append (i, x[i]) for every i < n with key(x[i]) >= thr (thr <= CODEC_KEY_NAN),
 * ascending. Returns the count, or cap + 1 (and stops) if more than cap entries qualify. */
size_t codec_compact_scalar(const float *x, size_t n, uint32_t thr, uint32_t *idx, float *val,
                            size_t cap);
size_t codec_compact_avx2(const float *x, size_t n, uint32_t thr, uint32_t *idx, float *val,
                          size_t cap);
size_t codec_compact_avx512(const float *x, size_t n, uint32_t thr, uint32_t *idx, float *val,
                            size_t cap);

/* Fused error-feedback pass: acc[i] = mem[i] + grad[i] for every i < n (acc may alias mem
 * or grad), and the same compaction on acc. acc is written completely even when more
 * than cap entries qualify (then cap + 1 is returned, and the first cap are recorded).
 * With zero != 0 every recorded survivor is stored in acc as +0 instead (its value is in
 * val): error feedback then restores only the survivors that were not selected.
 * out (NULL or n floats; may be grad, else disjoint) is set to +0 in the same pass,
 * completely even on overflow; streamed when aligned to the vector. */
size_t codec_compact_acc_scalar(float *acc, const float *mem, const float *grad, size_t n,
                                uint32_t thr, uint32_t *idx, float *val, size_t cap, int zero,
                                float *out);
size_t codec_compact_acc_avx2(float *acc, const float *mem, const float *grad, size_t n,
                              uint32_t thr, uint32_t *idx, float *val, size_t cap, int zero,
                              float *out);
size_t codec_compact_acc_avx512(float *acc, const float *mem, const float *grad, size_t n,
                                uint32_t thr, uint32_t *idx, float *val, size_t cap, int zero,
                                float *out);

/* crux_mem_accumulate_zero per ISA (out not NULL); bit-identical. */
void codec_acc_zero_scalar(float *acc, const float *mem, const float *grad, float *out, size_t n);
void codec_acc_zero_avx2(float *acc, const float *mem, const float *grad, float *out, size_t n);
void codec_acc_zero_avx512(float *acc, const float *mem, const float *grad, float *out, size_t n);

/* Fix-up sweep over a survivor list: keep key > t and the first `ties` entries with
 * key == t, in order, into out_idx/out_val (either may be NULL; they may alias the
 * inputs; never written past the kept count). With restore, the entries not kept are
 * written back: restore[in_idx[j]] = in_val[j]. Returns the kept count. */
size_t codec_sweep_avx512(const uint32_t *in_idx, const float *in_val, size_t m, uint32_t t,
                          size_t ties, uint32_t *out_idx, float *out_val, float *restore);

/* Which way the last crux_topk on ws went (tests check every way gives the same result). */
enum codec_topk_path {
    CODEC_TOPK_EXACT = 0,  /* small n, k > kmax or n > ws->n: radix select on all of x */
    CODEC_TOPK_SAMPLED,    /* sampled threshold, one compaction pass, fix-up */
    CODEC_TOPK_RETRIED,    /* first pass kept fewer than k: lower threshold, another pass */
    CODEC_TOPK_FALLBACK    /* the estimate failed (too many or too few): exact on all of x */
};
int codec_topk_last_path(const struct crux_topk_ws *ws);
/* Safety margin of the sampled threshold in binomial standard deviations (default 3). */
void codec_topk_set_margin(struct crux_topk_ws *ws, double z);

/* Sketch signs of row `row` for global indices base .. base+cnt-1 (no wrap past
 * 2^32-1 on the vector paths: they step sa*i+sb by adds; sketch.c splits a block at
 * the wrap): sgn[t] = 0x80000000 if the sign is negative else 0. */
void codec_sign_scalar(const struct crux_sketch *s, int row, uint32_t base, size_t cnt,
                       uint32_t *sgn);
void codec_sign_avx2(const struct crux_sketch *s, int row, uint32_t base, size_t cnt,
                     uint32_t *sgn);
void codec_sign_avx512(const struct crux_sketch *s, int row, uint32_t base, size_t cnt,
                       uint32_t *sgn);

/* The same fused with the sign flip, for encoding: val[t] = x[t] with its sign bit
 * flipped where the row's sign is negative. */
void codec_sign_val_scalar(const struct crux_sketch *s, int row, uint32_t base, const float *x,
                           size_t cnt, float *val);
void codec_sign_val_avx2(const struct crux_sketch *s, int row, uint32_t base, const float *x,
                         size_t cnt, float *val);
void codec_sign_val_avx512(const struct crux_sketch *s, int row, uint32_t base, const float *x,
                           size_t cnt, float *val);

/* Columns come in runs: the CODEC_SKETCH_RUN consecutive indices of run i / RUN go to
 * consecutive columns from a multiply-shift hash of the run number (64-bit a*run + b,
 * top 32 bits, mapped to [0, cols) by a 32x32->64 multiply), wrapping at cols. Two
 * indices of different runs share a column with probability ~1/cols, as with a
 * per-index hash, and two of one run never do, so the row estimate keeps Count
 * Sketch's variance bound (Charikar et al. need pairwise-independent signs and
 * collisions at rate <= 1/cols); signs stay per index. A run lands as one vector
 * add instead of 16 scattered read-modify-writes (sketch.c). Sign = top bit of
 * sa*i + sb. */
#define CODEC_SKETCH_RUN 16u
static inline uint32_t codec_run_col(uint64_t a, uint64_t b, uint32_t cols, uint32_t run)
{
    uint32_t h = (uint32_t)((a * run + b) >> 32);
    return (uint32_t)(((uint64_t)h * cols) >> 32);
}
static inline uint32_t codec_hash_col(uint64_t a, uint64_t b, uint32_t cols, uint32_t i)
{
    uint32_t c = codec_run_col(a, b, cols, i / CODEC_SKETCH_RUN) + i % CODEC_SKETCH_RUN;
    return c < cols ? c : (c - cols) % cols;
}
static inline uint32_t codec_hash_sign(uint64_t a, uint64_t b, uint32_t i)
{
    return (uint32_t)((a * i + b) >> 32) & 0x80000000u;
}

#endif
