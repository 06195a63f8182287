/* reduce_avx512.c - AVX-512 (F/BW/VL/DQ) reduction kernels, bit-identical to the portable
 * ones in reduce.c. Compiled per function for the target (the library itself builds for
 * the baseline ISA); reduce.c calls in only after cpuid said yes.
 *
 * Shape of every kernel: one masked step that brings dst to a vector boundary (stores
 * then never split a cache line), unrolled full vectors, one masked step for the tail.
 * Masked loads do not fault on the lanes they skip, so no scalar head/tail is needed
 * and count = 1 costs one masked load/op/store.
 */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include "reduce.h"

void crux_reduce_avx512(void *dst, const void *a, const void *b, size_t count,
                        crux_datatype_t dtype, crux_op_t op);

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#define INL static inline __attribute__((always_inline)) T512

/* ---- loads and stores per lane kind; masks are the low k bits of a uint64_t ---- */

INL __m512 ld_ps(const void *p) { return _mm512_loadu_ps(p); }
INL __m512 mld_ps(uint64_t m, const void *p) { return _mm512_maskz_loadu_ps((__mmask16)m, p); }
INL void st_ps(void *p, __m512 v) { _mm512_storeu_ps(p, v); }
INL void mst_ps(void *p, uint64_t m, __m512 v) { _mm512_mask_storeu_ps(p, (__mmask16)m, v); }

INL __m512d ld_pd(const void *p) { return _mm512_loadu_pd(p); }
INL __m512d mld_pd(uint64_t m, const void *p) { return _mm512_maskz_loadu_pd((__mmask8)m, p); }
INL void st_pd(void *p, __m512d v) { _mm512_storeu_pd(p, v); }
INL void mst_pd(void *p, uint64_t m, __m512d v) { _mm512_mask_storeu_pd(p, (__mmask8)m, v); }

INL __m512i ld_si(const void *p) { return _mm512_loadu_si512(p); }
/* streaming stores: p is 64-byte aligned */
INL void nt_ps(void *p, __m512 v) { _mm512_stream_ps(p, v); }
INL void nt_pd(void *p, __m512d v) { _mm512_stream_pd(p, v); }
INL void nt_si(void *p, __m512i v) { _mm512_stream_si512(p, v); }
INL void st_si(void *p, __m512i v) { _mm512_storeu_si512(p, v); }
INL __m512i mld_e8(uint64_t m, const void *p) { return _mm512_maskz_loadu_epi8((__mmask64)m, p); }
INL void mst_e8(void *p, uint64_t m, __m512i v) { _mm512_mask_storeu_epi8(p, (__mmask64)m, v); }
INL __m512i mld_e16(uint64_t m, const void *p)
{
    return _mm512_maskz_loadu_epi16((__mmask32)m, p);
}
INL void mst_e16(void *p, uint64_t m, __m512i v) { _mm512_mask_storeu_epi16(p, (__mmask32)m, v); }
INL __m512i mld_e32(uint64_t m, const void *p)
{
    return _mm512_maskz_loadu_epi32((__mmask16)m, p);
}
INL void mst_e32(void *p, uint64_t m, __m512i v) { _mm512_mask_storeu_epi32(p, (__mmask16)m, v); }
INL __m512i mld_e64(uint64_t m, const void *p) { return _mm512_maskz_loadu_epi64((__mmask8)m, p); }
INL void mst_e64(void *p, uint64_t m, __m512i v) { _mm512_mask_storeu_epi64(p, (__mmask8)m, v); }

/* ---- float ops: see reduce.c for the NaN and signed-zero rules they implement ---- */

INL __m512 ps_qnan(void) { return _mm512_castsi512_ps(_mm512_set1_epi32(0x7fc00000)); }
INL __m512 ps_canon(__m512 r)
{
    return _mm512_mask_mov_ps(r, _mm512_cmp_ps_mask(r, r, _CMP_UNORD_Q), ps_qnan());
}
INL __m512 ps_sum(__m512 a, __m512 b) { return ps_canon(_mm512_add_ps(a, b)); }
INL __m512 ps_prod(__m512 a, __m512 b) { return ps_canon(_mm512_mul_ps(a, b)); }
/* MAXPS alone returns its second operand for NaN and for +0/-0: fix both cases up. */
INL __m512 ps_max(__m512 a, __m512 b)
{
    __m512 r = _mm512_max_ps(a, b);
    r = _mm512_mask_and_ps(r, _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ), a, b);
    return _mm512_mask_mov_ps(r, _mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q), ps_qnan());
}
INL __m512 ps_min(__m512 a, __m512 b)
{
    __m512 r = _mm512_min_ps(a, b);
    r = _mm512_mask_or_ps(r, _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ), a, b);
    return _mm512_mask_mov_ps(r, _mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q), ps_qnan());
}

INL __m512d pd_qnan(void) { return _mm512_castsi512_pd(_mm512_set1_epi64(0x7ff8000000000000ll)); }
INL __m512d pd_canon(__m512d r)
{
    return _mm512_mask_mov_pd(r, _mm512_cmp_pd_mask(r, r, _CMP_UNORD_Q), pd_qnan());
}
INL __m512d pd_sum(__m512d a, __m512d b) { return pd_canon(_mm512_add_pd(a, b)); }
INL __m512d pd_prod(__m512d a, __m512d b) { return pd_canon(_mm512_mul_pd(a, b)); }
INL __m512d pd_max(__m512d a, __m512d b)
{
    __m512d r = _mm512_max_pd(a, b);
    r = _mm512_mask_and_pd(r, _mm512_cmp_pd_mask(a, b, _CMP_EQ_OQ), a, b);
    return _mm512_mask_mov_pd(r, _mm512_cmp_pd_mask(a, b, _CMP_UNORD_Q), pd_qnan());
}
INL __m512d pd_min(__m512d a, __m512d b)
{
    __m512d r = _mm512_min_pd(a, b);
    r = _mm512_mask_or_pd(r, _mm512_cmp_pd_mask(a, b, _CMP_EQ_OQ), a, b);
    return _mm512_mask_mov_pd(r, _mm512_cmp_pd_mask(a, b, _CMP_UNORD_Q), pd_qnan());
}

/* ---- integer ops ---- */

INL __m512i i32_sum(__m512i a, __m512i b) { return _mm512_add_epi32(a, b); }
INL __m512i i32_prod(__m512i a, __m512i b) { return _mm512_mullo_epi32(a, b); }
INL __m512i i32_max(__m512i a, __m512i b) { return _mm512_max_epi32(a, b); }
INL __m512i i32_min(__m512i a, __m512i b) { return _mm512_min_epi32(a, b); }
INL __m512i i64_sum(__m512i a, __m512i b) { return _mm512_add_epi64(a, b); }
INL __m512i i64_prod(__m512i a, __m512i b) { return _mm512_mullo_epi64(a, b); }
INL __m512i i64_max(__m512i a, __m512i b) { return _mm512_max_epi64(a, b); }
INL __m512i i64_min(__m512i a, __m512i b) { return _mm512_min_epi64(a, b); }
INL __m512i u8_sum(__m512i a, __m512i b) { return _mm512_add_epi8(a, b); }
INL __m512i u8_max(__m512i a, __m512i b) { return _mm512_max_epu8(a, b); }
INL __m512i u8_min(__m512i a, __m512i b) { return _mm512_min_epu8(a, b); }
/* No byte multiply: the low byte of a 16-bit product depends only on the low bytes, so
 * multiply even and odd bytes as 16-bit lanes and merge the low bytes. */
INL __m512i u8_prod(__m512i a, __m512i b)
{
    __m512i even = _mm512_mullo_epi16(a, b);
    __m512i odd = _mm512_mullo_epi16(_mm512_srli_epi16(a, 8), _mm512_srli_epi16(b, 8));
    return _mm512_mask_blend_epi8(0xaaaaaaaaaaaaaaaaull, even, _mm512_slli_epi16(odd, 8));
}

/* ---- float16: 32 halves per vector, converted in two halves by F16C (AVX512F) ---- */

#define F16_OP(name, fop)                                                                          \
    INL __m512i name(__m512i a, __m512i b)                                                         \
    {                                                                                              \
        __m512 lo = fop(_mm512_cvtph_ps(_mm512_castsi512_si256(a)),                                \
                        _mm512_cvtph_ps(_mm512_castsi512_si256(b)));                               \
        __m512 hi = fop(_mm512_cvtph_ps(_mm512_extracti64x4_epi64(a, 1)),                          \
                        _mm512_cvtph_ps(_mm512_extracti64x4_epi64(b, 1)));                         \
        __m256i rlo = _mm512_cvtps_ph(lo, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);          \
        __m256i rhi = _mm512_cvtps_ph(hi, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);          \
        return _mm512_inserti64x4(_mm512_castsi256_si512(rlo), rhi, 1);                            \
    }
F16_OP(f16_sum, ps_sum)
F16_OP(f16_prod, ps_prod)
F16_OP(f16_max, ps_max)
F16_OP(f16_min, ps_min)

/* ---- bfloat16: each 32-bit lane holds an even and an odd element; widening is a shift
 * (even) or a mask (odd), so no lane crossing. Rounding to nearest even in integers: the
 * results are canonical NaNs or numbers, for which x + 0x7fff + lsb is exact RNE. ---- */

INL __m512i bf16_round_hi(__m512 r) /* rounded bf16 in the upper half, lower half junk */
{
    __m512i x = _mm512_castps_si512(r);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
    return _mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7fff)), lsb);
}

#define BF16_OP(name, fop)                                                                         \
    INL __m512i name(__m512i a, __m512i b)                                                         \
    {                                                                                              \
        __m512i hi_mask = _mm512_set1_epi32((int)0xffff0000u);                                     \
        __m512 ev = fop(_mm512_castsi512_ps(_mm512_slli_epi32(a, 16)),                             \
                        _mm512_castsi512_ps(_mm512_slli_epi32(b, 16)));                            \
        __m512 od = fop(_mm512_castsi512_ps(_mm512_and_si512(a, hi_mask)),                         \
                        _mm512_castsi512_ps(_mm512_and_si512(b, hi_mask)));                        \
        __m512i e = _mm512_srli_epi32(bf16_round_hi(ev), 16);                                      \
        /* 0xca: hi_mask ? odd : even, bitwise */                                                  \
        return _mm512_ternarylogic_epi32(hi_mask, bf16_round_hi(od), e, 0xca);                     \
    }
BF16_OP(bf16_sum, ps_sum)
BF16_OP(bf16_prod, ps_prod)
BF16_OP(bf16_max, ps_max)
BF16_OP(bf16_min, ps_min)

/* ---- the loop ---- */

INL uint64_t lane_mask(size_t k) { return ~0ull >> (64 - k); } /* 1 <= k <= 64 */

/* Elements to process before dst sits on a vector boundary (0 if it already does, or if
 * dst is not even element-aligned), capped at n. */
INL size_t head_len(const void *dst, size_t esize, size_t lanes, size_t n)
{
    uintptr_t p = (uintptr_t)dst;
    size_t mis = (p % (lanes * esize)) / esize;
    if (p % esize || mis == 0)
        return 0;
    return lanes - mis < n ? lanes - mis : n;
}

/* Past this many bytes per buffer the result cannot stay in cache anyway: streaming
 * stores skip the read-for-ownership of dst (a quarter of the DRAM traffic). */
#define STREAM_MIN_BYTES ((size_t)16 << 20)

/* Byte pointers throughout: no element alignment is assumed. */
#define AT(p, k) ((p) + (k) * es)

#define UNROLLED4(ST, OP, LD, LANES, VEC)                                                          \
    do {                                                                                           \
        VEC r0 = OP(LD(AT(a, i)), LD(AT(b, i)));                                                   \
        VEC r1 = OP(LD(AT(a, i + (LANES))), LD(AT(b, i + (LANES))));                               \
        VEC r2 = OP(LD(AT(a, i + 2 * (LANES))), LD(AT(b, i + 2 * (LANES))));                       \
        VEC r3 = OP(LD(AT(a, i + 3 * (LANES))), LD(AT(b, i + 3 * (LANES))));                       \
        ST(AT(d, i), r0);                                                                          \
        ST(AT(d, i + (LANES)), r1);                                                                \
        ST(AT(d, i + 2 * (LANES)), r2);                                                            \
        ST(AT(d, i + 3 * (LANES)), r3);                                                            \
    } while (0)

#define KERNEL(name, T, LANES, VEC, LD, MLD, ST, MST, NT, OP)                                      \
    T512 static void name(void *dst, const void *src_a, const void *src_b, size_t n)               \
    {                                                                                              \
        char *d = dst;                                                                             \
        const char *a = src_a, *b = src_b;                                                         \
        const size_t es = sizeof(T);                                                               \
        size_t i = head_len(d, es, LANES, n);                                                      \
        if (i) {                                                                                   \
            uint64_t m = lane_mask(i);                                                             \
            MST(d, m, OP(MLD(m, a), MLD(m, b)));                                                   \
        }                                                                                          \
        if (n * es >= STREAM_MIN_BYTES && (uintptr_t)AT(d, i) % 64 == 0) {                         \
            for (; i + 4 * (LANES) <= n; i += 4 * (LANES))                                         \
                UNROLLED4(NT, OP, LD, LANES, VEC);                                                 \
            _mm_sfence(); /* streaming stores are weakly ordered */                                \
        }                                                                                          \
        for (; i + 4 * (LANES) <= n; i += 4 * (LANES))                                             \
            UNROLLED4(ST, OP, LD, LANES, VEC);                                                     \
        for (; i + (LANES) <= n; i += (LANES))                                                     \
            ST(AT(d, i), OP(LD(AT(a, i)), LD(AT(b, i))));                                          \
        if (i < n) {                                                                               \
            uint64_t m = lane_mask(n - i);                                                         \
            MST(AT(d, i), m, OP(MLD(m, AT(a, i)), MLD(m, AT(b, i))));                              \
        }                                                                                          \
    }

#define KERNEL_OPS(p, T, LANES, VEC, LD, MLD, ST, MST, NT)                                         \
    KERNEL(k_##p##_sum, T, LANES, VEC, LD, MLD, ST, MST, NT, p##_sum)                              \
    KERNEL(k_##p##_prod, T, LANES, VEC, LD, MLD, ST, MST, NT, p##_prod)                            \
    KERNEL(k_##p##_max, T, LANES, VEC, LD, MLD, ST, MST, NT, p##_max)                              \
    KERNEL(k_##p##_min, T, LANES, VEC, LD, MLD, ST, MST, NT, p##_min)

KERNEL_OPS(ps, float, 16, __m512, ld_ps, mld_ps, st_ps, mst_ps, nt_ps)
KERNEL_OPS(pd, double, 8, __m512d, ld_pd, mld_pd, st_pd, mst_pd, nt_pd)
KERNEL_OPS(i32, int32_t, 16, __m512i, ld_si, mld_e32, st_si, mst_e32, nt_si)
KERNEL_OPS(i64, int64_t, 8, __m512i, ld_si, mld_e64, st_si, mst_e64, nt_si)
KERNEL_OPS(u8, uint8_t, 64, __m512i, ld_si, mld_e8, st_si, mst_e8, nt_si)
KERNEL_OPS(f16, uint16_t, 32, __m512i, ld_si, mld_e16, st_si, mst_e16, nt_si)
KERNEL_OPS(bf16, uint16_t, 32, __m512i, ld_si, mld_e16, st_si, mst_e16, nt_si)

#define DISPATCH_OPS(p)                                                                            \
    switch (op) {                                                                                  \
    case CRUX_SUM: k_##p##_sum(dst, a, b, count); return;                                          \
    case CRUX_PROD: k_##p##_prod(dst, a, b, count); return;                                        \
    case CRUX_MAX: k_##p##_max(dst, a, b, count); return;                                          \
    case CRUX_MIN: k_##p##_min(dst, a, b, count); return;                                          \
    }                                                                                              \
    return

T512 void crux_reduce_avx512(void *dst, const void *a, const void *b, size_t count,
                             crux_datatype_t dtype, crux_op_t op)
{
    switch (dtype) {
    case CRUX_FLOAT: DISPATCH_OPS(ps);
    case CRUX_DOUBLE: DISPATCH_OPS(pd);
    case CRUX_INT32: DISPATCH_OPS(i32);
    case CRUX_INT64: DISPATCH_OPS(i64);
    case CRUX_UINT8: DISPATCH_OPS(u8);
    case CRUX_FLOAT16: DISPATCH_OPS(f16);
    case CRUX_BFLOAT16: DISPATCH_OPS(bf16);
    }
}
#endif
