/* reduce_avx2.c - AVX2 (+FMA, F16C) reduction kernels, bit-identical to the portable ones
 * in reduce.c. Compiled per function for the target; reduce.c calls in only after cpuid
 * said yes. Shape of every kernel: a partial step that brings dst to a vector boundary
 * (stores then never split a cache line), unrolled full vectors, a partial step for the
 * tail.
 */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include <string.h>

#include "reduce.h"

void crux_reduce_avx2(void *dst, const void *a, const void *b, size_t count,
                      crux_datatype_t dtype, crux_op_t op);
void crux_reduce_scalar(void *dst, const void *a, const void *b, size_t count,
                        crux_datatype_t dtype, crux_op_t op);

#define T256 __attribute__((target("avx2,fma,f16c")))
#define INL static inline __attribute__((always_inline)) T256

INL __m256 ld_ps(const void *p) { return _mm256_loadu_ps((const float *)p); }
INL void st_ps(void *p, __m256 v) { _mm256_storeu_ps((float *)p, v); }
INL __m256d ld_pd(const void *p) { return _mm256_loadu_pd((const double *)p); }
INL void st_pd(void *p, __m256d v) { _mm256_storeu_pd((double *)p, v); }
INL __m256i ld_si(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
INL void st_si(void *p, __m256i v) { _mm256_storeu_si256((__m256i *)p, v); }
/* streaming stores: p is 32-byte aligned */
INL void nt_ps(void *p, __m256 v) { _mm256_stream_ps((float *)p, v); }
INL void nt_pd(void *p, __m256d v) { _mm256_stream_pd((double *)p, v); }
INL void nt_si(void *p, __m256i v) { _mm256_stream_si256((__m256i *)p, v); }

/* ---- float ops: see reduce.c for the NaN and signed-zero rules they implement ---- */

INL __m256 ps_qnan(void) { return _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000)); }
INL __m256 ps_canon(__m256 r)
{
    return _mm256_blendv_ps(r, ps_qnan(), _mm256_cmp_ps(r, r, _CMP_UNORD_Q));
}
INL __m256 ps_sum(__m256 a, __m256 b) { return ps_canon(_mm256_add_ps(a, b)); }
INL __m256 ps_prod(__m256 a, __m256 b) { return ps_canon(_mm256_mul_ps(a, b)); }
/* MAXPS alone returns its second operand for NaN and for +0/-0: fix both cases up. */
INL __m256 ps_max(__m256 a, __m256 b)
{
    __m256 r = _mm256_max_ps(a, b);
    r = _mm256_blendv_ps(r, _mm256_and_ps(a, b), _mm256_cmp_ps(a, b, _CMP_EQ_OQ));
    return _mm256_blendv_ps(r, ps_qnan(), _mm256_cmp_ps(a, b, _CMP_UNORD_Q));
}
INL __m256 ps_min(__m256 a, __m256 b)
{
    __m256 r = _mm256_min_ps(a, b);
    r = _mm256_blendv_ps(r, _mm256_or_ps(a, b), _mm256_cmp_ps(a, b, _CMP_EQ_OQ));
    return _mm256_blendv_ps(r, ps_qnan(), _mm256_cmp_ps(a, b, _CMP_UNORD_Q));
}

INL __m256d pd_qnan(void) { return _mm256_castsi256_pd(_mm256_set1_epi64x(0x7ff8000000000000ll)); }
INL __m256d pd_canon(__m256d r)
{
    return _mm256_blendv_pd(r, pd_qnan(), _mm256_cmp_pd(r, r, _CMP_UNORD_Q));
}
INL __m256d pd_sum(__m256d a, __m256d b) { return pd_canon(_mm256_add_pd(a, b)); }
INL __m256d pd_prod(__m256d a, __m256d b) { return pd_canon(_mm256_mul_pd(a, b)); }
INL __m256d pd_max(__m256d a, __m256d b)
{
    __m256d r = _mm256_max_pd(a, b);
    r = _mm256_blendv_pd(r, _mm256_and_pd(a, b), _mm256_cmp_pd(a, b, _CMP_EQ_OQ));
    return _mm256_blendv_pd(r, pd_qnan(), _mm256_cmp_pd(a, b, _CMP_UNORD_Q));
}
INL __m256d pd_min(__m256d a, __m256d b)
{
    __m256d r = _mm256_min_pd(a, b);
    r = _mm256_blendv_pd(r, _mm256_or_pd(a, b), _mm256_cmp_pd(a, b, _CMP_EQ_OQ));
    return _mm256_blendv_pd(r, pd_qnan(), _mm256_cmp_pd(a, b, _CMP_UNORD_Q));
}

/* ---- integer ops ---- */

INL __m256i i32_sum(__m256i a, __m256i b) { return _mm256_add_epi32(a, b); }
INL __m256i i32_prod(__m256i a, __m256i b) { return _mm256_mullo_epi32(a, b); }
INL __m256i i32_max(__m256i a, __m256i b) { return _mm256_max_epi32(a, b); }
INL __m256i i32_min(__m256i a, __m256i b) { return _mm256_min_epi32(a, b); }
INL __m256i i64_sum(__m256i a, __m256i b) { return _mm256_add_epi64(a, b); }
/* lo*lo + ((lo*hi + hi*lo) << 32), all mod 2^64 */
INL __m256i i64_prod(__m256i a, __m256i b)
{
    __m256i cross = _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(a, 32), b),
                                     _mm256_mul_epu32(a, _mm256_srli_epi64(b, 32)));
    return _mm256_add_epi64(_mm256_mul_epu32(a, b), _mm256_slli_epi64(cross, 32));
}
INL __m256i i64_max(__m256i a, __m256i b)
{
    return _mm256_blendv_epi8(b, a, _mm256_cmpgt_epi64(a, b));
}
INL __m256i i64_min(__m256i a, __m256i b)
{
    return _mm256_blendv_epi8(a, b, _mm256_cmpgt_epi64(a, b));
}
INL __m256i u8_sum(__m256i a, __m256i b) { return _mm256_add_epi8(a, b); }
INL __m256i u8_max(__m256i a, __m256i b) { return _mm256_max_epu8(a, b); }
INL __m256i u8_min(__m256i a, __m256i b) { return _mm256_min_epu8(a, b); }
/* The low byte of a 16-bit product depends only on the low bytes: multiply even and odd
 * bytes as 16-bit lanes and merge the low bytes. */
INL __m256i u8_prod(__m256i a, __m256i b)
{
    __m256i even = _mm256_and_si256(_mm256_mullo_epi16(a, b), _mm256_set1_epi16(0x00ff));
    __m256i odd = _mm256_mullo_epi16(_mm256_srli_epi16(a, 8), _mm256_srli_epi16(b, 8));
    return _mm256_or_si256(even, _mm256_slli_epi16(odd, 8));
}

/* ---- float16: 16 halves per vector, converted in two halves by F16C ---- */

#define F16_OP(name, fop)                                                                          \
    INL __m256i name(__m256i a, __m256i b)                                                         \
    {                                                                                              \
        __m256 lo = fop(_mm256_cvtph_ps(_mm256_castsi256_si128(a)),                                \
                        _mm256_cvtph_ps(_mm256_castsi256_si128(b)));                               \
        __m256 hi = fop(_mm256_cvtph_ps(_mm256_extracti128_si256(a, 1)),                           \
                        _mm256_cvtph_ps(_mm256_extracti128_si256(b, 1)));                          \
        __m128i rlo = _mm256_cvtps_ph(lo, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);          \
        __m128i rhi = _mm256_cvtps_ph(hi, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);          \
        return _mm256_inserti128_si256(_mm256_castsi128_si256(rlo), rhi, 1);                       \
    }
F16_OP(f16_sum, ps_sum)
F16_OP(f16_prod, ps_prod)
F16_OP(f16_max, ps_max)
F16_OP(f16_min, ps_min)

/* ---- bfloat16: even elements widen by a shift, odd ones by a mask (no lane crossing);
 * rounding to nearest even in integers (results are numbers or canonical NaNs). ---- */

INL __m256i bf16_round_hi(__m256 r) /* rounded bf16 in the upper half, lower half junk */
{
    __m256i x = _mm256_castps_si256(r);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
    return _mm256_add_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(0x7fff)), lsb);
}

#define BF16_OP(name, fop)                                                                         \
    INL __m256i name(__m256i a, __m256i b)                                                         \
    {                                                                                              \
        __m256i hi_mask = _mm256_set1_epi32((int)0xffff0000u);                                     \
        __m256 ev = fop(_mm256_castsi256_ps(_mm256_slli_epi32(a, 16)),                             \
                        _mm256_castsi256_ps(_mm256_slli_epi32(b, 16)));                            \
        __m256 od = fop(_mm256_castsi256_ps(_mm256_and_si256(a, hi_mask)),                         \
                        _mm256_castsi256_ps(_mm256_and_si256(b, hi_mask)));                        \
        __m256i e = _mm256_srli_epi32(bf16_round_hi(ev), 16);                                      \
        return _mm256_blend_epi16(e, bf16_round_hi(od), 0xaa); /* odd words from od */             \
    }
BF16_OP(bf16_sum, ps_sum)
BF16_OP(bf16_prod, ps_prod)
BF16_OP(bf16_max, ps_max)
BF16_OP(bf16_min, ps_min)

/* ---- the loop ---- */

/* Elements before dst sits on a vector boundary (0 if it does, or if dst is not even
 * element-aligned), capped at n. */
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

/* Fewer than a vector's worth (the head or the tail). AVX2 has no byte/word masked loads:
 * most types take the portable kernel (same bits by design); float16, whose software
 * conversion costs ~5 ns an element, goes through a zero-padded copy on the stack so F16C
 * does the work (the copies cost ~15 ns, hence not for 1-3 elements). */
#define PARTIAL_SCALAR(d, a, b, k, LD, ST, OP, DT, OPC) crux_reduce_scalar(d, a, b, k, DT, OPC)
#define PARTIAL_COPY(d, a, b, k, LD, ST, OP, DT, OPC)                                              \
    do {                                                                                           \
        unsigned char ta[32] = {0}, tb[32] = {0}, td[32];                                          \
        if ((k) < 4) {                                                                             \
            crux_reduce_scalar(d, a, b, k, DT, OPC);                                               \
            break;                                                                                 \
        }                                                                                          \
        memcpy(ta, a, (k) * es);                                                                   \
        memcpy(tb, b, (k) * es);                                                                   \
        ST(td, OP(LD(ta), LD(tb)));                                                                \
        memcpy(d, td, (k) * es);                                                                   \
    } while (0)

#define KERNEL(name, T, LANES, VEC, LD, ST, NT, OP, PARTIAL, DT, OPC)                              \
    T256 static void name(void *dst, const void *src_a, const void *src_b, size_t n)               \
    {                                                                                              \
        char *d = dst;                                                                             \
        const char *a = src_a, *b = src_b;                                                         \
        const size_t es = sizeof(T);                                                               \
        size_t i = head_len(d, es, LANES, n);                                                      \
        if (i)                                                                                     \
            PARTIAL(d, a, b, i, LD, ST, OP, DT, OPC);                                              \
        if (n * es >= STREAM_MIN_BYTES && (uintptr_t)AT(d, i) % 32 == 0) {                         \
            for (; i + 4 * (LANES) <= n; i += 4 * (LANES))                                         \
                UNROLLED4(NT, OP, LD, LANES, VEC);                                                 \
            _mm_sfence(); /* streaming stores are weakly ordered */                                \
        }                                                                                          \
        for (; i + 4 * (LANES) <= n; i += 4 * (LANES))                                             \
            UNROLLED4(ST, OP, LD, LANES, VEC);                                                     \
        for (; i + (LANES) <= n; i += (LANES))                                                     \
            ST(AT(d, i), OP(LD(AT(a, i)), LD(AT(b, i))));                                          \
        if (i < n)                                                                                 \
            PARTIAL(AT(d, i), AT(a, i), AT(b, i), n - i, LD, ST, OP, DT, OPC);                     \
    }

#define KERNEL_OPS(p, T, LANES, VEC, LD, ST, NT, PARTIAL, DT)                                      \
    KERNEL(k_##p##_sum, T, LANES, VEC, LD, ST, NT, p##_sum, PARTIAL, DT, CRUX_SUM)                 \
    KERNEL(k_##p##_prod, T, LANES, VEC, LD, ST, NT, p##_prod, PARTIAL, DT, CRUX_PROD)              \
    KERNEL(k_##p##_max, T, LANES, VEC, LD, ST, NT, p##_max, PARTIAL, DT, CRUX_MAX)                 \
    KERNEL(k_##p##_min, T, LANES, VEC, LD, ST, NT, p##_min, PARTIAL, DT, CRUX_MIN)

KERNEL_OPS(ps, float, 8, __m256, ld_ps, st_ps, nt_ps, PARTIAL_SCALAR, CRUX_FLOAT)
KERNEL_OPS(pd, double, 4, __m256d, ld_pd, st_pd, nt_pd, PARTIAL_SCALAR, CRUX_DOUBLE)
KERNEL_OPS(i32, int32_t, 8, __m256i, ld_si, st_si, nt_si, PARTIAL_SCALAR, CRUX_INT32)
KERNEL_OPS(i64, int64_t, 4, __m256i, ld_si, st_si, nt_si, PARTIAL_SCALAR, CRUX_INT64)
KERNEL_OPS(u8, uint8_t, 32, __m256i, ld_si, st_si, nt_si, PARTIAL_SCALAR, CRUX_UINT8)
KERNEL_OPS(f16, uint16_t, 16, __m256i, ld_si, st_si, nt_si, PARTIAL_COPY, CRUX_FLOAT16)
KERNEL_OPS(bf16, uint16_t, 16, __m256i, ld_si, st_si, nt_si, PARTIAL_SCALAR, CRUX_BFLOAT16)

#define DISPATCH_OPS(p)                                                                            \
    switch (op) {                                                                                  \
    case CRUX_SUM: k_##p##_sum(dst, a, b, count); return;                                          \
    case CRUX_PROD: k_##p##_prod(dst, a, b, count); return;                                        \
    case CRUX_MAX: k_##p##_max(dst, a, b, count); return;                                          \
    case CRUX_MIN: k_##p##_min(dst, a, b, count); return;                                          \
    }                                                                                              \
    return

T256 void crux_reduce_avx2(void *dst, const void *a, const void *b, size_t count,
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
