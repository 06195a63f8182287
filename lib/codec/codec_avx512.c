/* codec_avx512.c - AVX-512 (F, DQ, VL, BW) codec kernels, bit-identical to the scalar
 * ones; called only after the dispatcher (topk.c) saw the CPU support them. */
#if defined(__x86_64__)
#include <immintrin.h>
#include <string.h>

#include "codec/codec_isa.h"

#define T512 __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,bmi2")))

T512 size_t codec_compact_avx512(const float *x, size_t n, uint32_t thr, uint32_t *idx,
                                 float *val, size_t cap)
{
    const __m512i absmask = _mm512_set1_epi32(0x7fffffff);
    const __m512i t = _mm512_set1_epi32((int)thr); /* thr <= 0x7f800001: a signed compare works */
    const __m512i step = _mm512_set1_epi32(16);
    __m512i iv = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    size_t i = 0, cnt = 0;
    for (; i + 64 <= n && cnt + 64 <= cap; i += 64) {
        __m512 v0 = _mm512_loadu_ps(x + i), v1 = _mm512_loadu_ps(x + i + 16);
        __m512 v2 = _mm512_loadu_ps(x + i + 32), v3 = _mm512_loadu_ps(x + i + 48);
        __mmask16 m0 = _mm512_cmpge_epi32_mask(_mm512_and_si512(_mm512_castps_si512(v0), absmask), t);
        __mmask16 m1 = _mm512_cmpge_epi32_mask(_mm512_and_si512(_mm512_castps_si512(v1), absmask), t);
        __mmask16 m2 = _mm512_cmpge_epi32_mask(_mm512_and_si512(_mm512_castps_si512(v2), absmask), t);
        __mmask16 m3 = _mm512_cmpge_epi32_mask(_mm512_and_si512(_mm512_castps_si512(v3), absmask), t);
        if (!(m0 | m1 | m2 | m3)) { /* the common case at low density */
            iv = _mm512_add_epi32(iv, _mm512_set1_epi32(64));
            continue;
        }
        const __m512 v[4] = {v0, v1, v2, v3};
        const __mmask16 m[4] = {m0, m1, m2, m3};
        for (int q = 0; q < 4; q++) {
            /* no branch per vector (it mispredicts at ~1% density): an empty mask stores
             * lanes the next store overwrites. Compress into a register, then a plain
             * store: faster than compressstoreu. */
            _mm512_storeu_ps(val + cnt, _mm512_maskz_compress_ps(m[q], v[q]));
            _mm512_storeu_si512(idx + cnt, _mm512_maskz_compress_epi32(m[q], iv));
            cnt += (size_t)__builtin_popcount(m[q]);
            iv = _mm512_add_epi32(iv, step);
        }
    }
    size_t rest = codec_compact_scalar(x + i, n - i, thr, idx + cnt, val + cnt, cap - cnt);
    if (rest > cap - cnt)
        return cap + 1;
    for (size_t j = cnt; j < cnt + rest; j++)
        idx[j] += (uint32_t)i;
    return cnt + rest;
}

/* Zero the 4 lines at out (64 floats) after their grad was read; streamed when out is
 * line-aligned (the loops step by whole lines, so that holds for the whole loop). */
static inline __attribute__((always_inline)) T512 void zero4(float *out, int nt)
{
    const __m512 z = _mm512_setzero_ps();
    for (int q = 0; q < 4; q++) {
        if (nt)
            _mm512_stream_ps(out + 16 * q, z);
        else
            _mm512_storeu_ps(out + 16 * q, z);
    }
}

/* The same loop as codec_compact_avx512 on acc = mem + grad, storing acc as it goes:
 * one read-2-write-1 pass instead of an accumulate pass plus a compaction pass. */
T512 size_t codec_compact_acc_avx512(float *acc, const float *mem, const float *grad, size_t n,
                                     uint32_t thr, uint32_t *idx, float *val, size_t cap,
                                     int zero, float *out)
{
    const int nt = out && !((uintptr_t)out & 63);
    const __m512i absmask = _mm512_set1_epi32(0x7fffffff);
    const __m512i t = _mm512_set1_epi32((int)thr);
    const __m512i step = _mm512_set1_epi32(16);
    __m512i iv = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    size_t i = 0, cnt = 0;
    for (; i + 64 <= n && cnt + 64 <= cap; i += 64) {
        __m512 v[4];
        __mmask16 m[4];
        for (int q = 0; q < 4; q++) {
            v[q] = _mm512_add_ps(_mm512_loadu_ps(mem + i + 16 * q), _mm512_loadu_ps(grad + i + 16 * q));
            m[q] = _mm512_cmpge_epi32_mask(_mm512_and_si512(_mm512_castps_si512(v[q]), absmask), t);
            _mm512_storeu_ps(acc + i + 16 * q, _mm512_maskz_mov_ps(zero ? (__mmask16)~m[q] : 0xffff, v[q]));
        }
        if (out)
            zero4(out + i, nt);
        if (!(m[0] | m[1] | m[2] | m[3])) {
            iv = _mm512_add_epi32(iv, _mm512_set1_epi32(64));
            continue;
        }
        for (int q = 0; q < 4; q++) {
            _mm512_storeu_ps(val + cnt, _mm512_maskz_compress_ps(m[q], v[q]));
            _mm512_storeu_si512(idx + cnt, _mm512_maskz_compress_epi32(m[q], iv));
            cnt += (size_t)__builtin_popcount(m[q]);
            iv = _mm512_add_epi32(iv, step);
        }
    }
    if (nt)
        _mm_sfence(); /* the streamed zeros before any later store to out */
    size_t rest = codec_compact_acc_scalar(acc + i, mem + i, grad + i, n - i, thr, idx + cnt,
                                           val + cnt, cap - cnt, zero, out ? out + i : NULL);
    size_t rec = rest > cap - cnt ? cap - cnt : rest; /* on overflow: cap recorded in all */
    for (size_t j = cnt; j < cnt + rec; j++)
        idx[j] += (uint32_t)i;
    return rest > cap - cnt ? cap + 1 : cnt + rest;
}

T512 void codec_acc_zero_avx512(float *acc, const float *mem, const float *grad, float *out,
                                size_t n)
{
    const int nt = !((uintptr_t)out & 63);
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        for (int q = 0; q < 4; q++)
            _mm512_storeu_ps(acc + i + 16 * q, _mm512_add_ps(_mm512_loadu_ps(mem + i + 16 * q),
                                                             _mm512_loadu_ps(grad + i + 16 * q)));
        zero4(out + i, nt);
    }
    if (nt)
        _mm_sfence();
    codec_acc_zero_scalar(acc + i, mem + i, grad + i, out + i, n - i);
}

T512 size_t codec_sweep_avx512(const uint32_t *in_idx, const float *in_val, size_t m, uint32_t t,
                               size_t ties, uint32_t *out_idx, float *out_val, float *restore)
{
    const __m512i absmask = _mm512_set1_epi32(0x7fffffff);
    const __m512i nankey = _mm512_set1_epi32(0x7f800001);
    const __m512i tv = _mm512_set1_epi32((int)t);
    size_t j = 0, o = 0;
    for (; j + 16 <= m; j += 16) {
        __m512 v = _mm512_loadu_ps(in_val + j);
        __m512i key = _mm512_min_epi32(_mm512_and_si512(_mm512_castps_si512(v), absmask), nankey);
        __mmask16 keep = _mm512_cmpgt_epi32_mask(key, tv);
        __mmask16 eq = _mm512_cmpeq_epi32_mask(key, tv);
        if (eq && ties) { /* the lowest-index `ties` equal keys */
            unsigned e = eq;
            if ((size_t)__builtin_popcount(e) > ties)
                e = _pdep_u32((1u << ties) - 1, e);
            ties -= (size_t)__builtin_popcount(e);
            keep |= (__mmask16)e;
        }
        __mmask16 low = (__mmask16)((1u << __builtin_popcount(keep)) - 1);
        __m512i iv = _mm512_loadu_si512(in_idx + j);
        __mmask16 back = (__mmask16)(keep ^ 0xffffu);
        if (restore && back) { /* 64-bit indices: n may exceed 2^31 */
            _mm512_mask_i64scatter_ps(restore, (__mmask8)back,
                                      _mm512_cvtepu32_epi64(_mm512_castsi512_si256(iv)),
                                      _mm512_castps512_ps256(v), 4);
            _mm512_mask_i64scatter_ps(restore, (__mmask8)(back >> 8),
                                      _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(iv, 1)),
                                      _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)), 4);
        }
        if (out_val)
            _mm512_mask_storeu_ps(out_val + o, low, _mm512_maskz_compress_ps(keep, v));
        if (out_idx)
            _mm512_mask_storeu_epi32(out_idx + o, low, _mm512_maskz_compress_epi32(keep, iv));
        o += (size_t)__builtin_popcount(keep);
    }
    for (; j < m; j++) {
        uint32_t bits;
        memcpy(&bits, &in_val[j], sizeof bits);
        uint32_t key = codec_key_bits(bits);
        if (key > t || (key == t && ties > 0)) {
            ties -= key == t;
            float vv = in_val[j];
            uint32_t ix = in_idx[j];
            if (out_idx)
                out_idx[o] = ix;
            if (out_val)
                out_val[o] = vv;
            o++;
        } else if (restore) {
            restore[in_idx[j]] = in_val[j];
        }
    }
    return o;
}

/* a*i + b for i = base + first, base + first + 2, ... (8 lanes), as the scalar hash. */
static inline __attribute__((always_inline)) T512 __m512i mad_lanes(uint64_t a, uint64_t b,
                                                                    uint32_t base, uint32_t first)
{
    uint64_t v[8];
    for (int k = 0; k < 8; k++)
        v[k] = a * (uint32_t)(base + first + 2u * (uint32_t)k) + b;
    return _mm512_loadu_si512(v);
}

/* Signs of 16 elements per step: even elements in the e lanes, odd ones in the o
 * lanes, so bit 63 of each lane's sign hash lands in element order with one blend.
 * i advances by 16, so every lane adds 16*sa (no multiply). out[t] = x[t] with the
 * sign applied, or the sign bit alone when x is NULL. */
static inline __attribute__((always_inline)) T512 void
sign16(const struct crux_sketch *s, int row, uint32_t base, const float *x, size_t cnt,
       uint32_t *out)
{
    const uint64_t sa = s->sign_a[row], sb = s->sign_b[row];
    __m512i ge = mad_lanes(sa, sb, base, 0), go = mad_lanes(sa, sb, base, 1);
    const __m512i dsa = _mm512_set1_epi64((long long)(sa * 16));
    const __m512i sign = _mm512_set1_epi32((int)0x80000000u);
    for (size_t t = 0; t + 16 <= cnt; t += 16) {
        __m512i sg = _mm512_mask_blend_epi32(0xaaaa, _mm512_srli_epi64(ge, 32), go);
        if (x) /* x ^ (sg & sign) */
            sg = _mm512_ternarylogic_epi32(_mm512_loadu_si512(x + t), sg, sign, 0x78);
        else
            sg = _mm512_and_si512(sg, sign);
        _mm512_storeu_si512(out + t, sg);
        ge = _mm512_add_epi64(ge, dsa);
        go = _mm512_add_epi64(go, dsa);
    }
}

T512 void codec_sign_avx512(const struct crux_sketch *s, int row, uint32_t base, size_t cnt,
                            uint32_t *sgn)
{
    sign16(s, row, base, NULL, cnt, sgn);
    size_t t = cnt & ~(size_t)15;
    if (t < cnt)
        codec_sign_scalar(s, row, base + (uint32_t)t, cnt - t, sgn + t);
}

T512 void codec_sign_val_avx512(const struct crux_sketch *s, int row, uint32_t base,
                                const float *x, size_t cnt, float *val)
{
    sign16(s, row, base, x, cnt, (uint32_t *)val);
    size_t t = cnt & ~(size_t)15;
    if (t < cnt)
        codec_sign_val_scalar(s, row, base + (uint32_t)t, x + t, cnt - t, val + t);
}
#endif
