/* codec_avx2.c - AVX2 (+BMI2) codec kernels, bit-identical to the scalar ones in topk.c
 * and sketch.c; called only after the dispatcher (topk.c) saw the CPU support them. */
#if defined(__x86_64__)
#include <immintrin.h>

#include "codec/codec_isa.h"

#define T256 __attribute__((target("avx2,bmi2")))

/* Lane indices of the set bits of an 8-bit mask, packed to the front: spread each mask
 * bit to a byte (pdep), pull the matching bytes of 0..7 out (pext), widen to 8 lanes. */
static inline __attribute__((always_inline)) T256 __m256i compress_perm(unsigned mask)
{
    uint64_t bytes = _pdep_u64(mask, 0x0101010101010101ull) * 0xffu;
    uint64_t lanes = _pext_u64(0x0706050403020100ull, bytes);
    return _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)lanes));
}

T256 size_t codec_compact_avx2(const float *x, size_t n, uint32_t thr, uint32_t *idx,
                               float *val, size_t cap)
{
    const __m256i absmask = _mm256_set1_epi32(0x7fffffff);
    /* key >= thr  <=>  abs bits > thr - 1 (signed; abs bits are non-negative, thr-1 >= -1) */
    const __m256i below = _mm256_set1_epi32((int)thr - 1);
    const __m256i step = _mm256_set1_epi32(8);
    __m256i iv = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    size_t i = 0, cnt = 0;
    for (; i + 32 <= n && cnt + 32 <= cap; i += 32) {
        __m256i b0 = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i)), absmask);
        __m256i b1 = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i + 8)), absmask);
        __m256i b2 = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i + 16)), absmask);
        __m256i b3 = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i + 24)), absmask);
        __m256i g0 = _mm256_cmpgt_epi32(b0, below), g1 = _mm256_cmpgt_epi32(b1, below);
        __m256i g2 = _mm256_cmpgt_epi32(b2, below), g3 = _mm256_cmpgt_epi32(b3, below);
        __m256i any = _mm256_or_si256(_mm256_or_si256(g0, g1), _mm256_or_si256(g2, g3));
        if (_mm256_testz_si256(any, any)) { /* the common case at low density */
            iv = _mm256_add_epi32(iv, _mm256_set1_epi32(32));
            continue;
        }
        const __m256i g[4] = {g0, g1, g2, g3};
        for (int q = 0; q < 4; q++) { /* branch-free, as in codec_avx512.c */
            unsigned m = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(g[q]));
            __m256i perm = compress_perm(m);
            __m256 v = _mm256_loadu_ps(x + i + 8 * (size_t)q);
            _mm256_storeu_ps(val + cnt, _mm256_permutevar8x32_ps(v, perm));
            _mm256_storeu_si256((__m256i *)(idx + cnt), _mm256_permutevar8x32_epi32(iv, perm));
            cnt += (size_t)__builtin_popcount(m);
            iv = _mm256_add_epi32(iv, step);
        }
    }
    size_t rest = codec_compact_scalar(x + i, n - i, thr, idx + cnt, val + cnt, cap - cnt);
    if (rest > cap - cnt)
        return cap + 1;
    for (size_t j = cnt; j < cnt + rest; j++)
        idx[j] += (uint32_t)i;
    return cnt + rest;
}

/* Zero the 4 vectors at out (32 floats, two lines) after their grad was read; streamed
 * when out is 32-byte aligned (the loops keep that alignment). */
static inline __attribute__((always_inline)) T256 void zero4(float *out, int nt)
{
    const __m256 z = _mm256_setzero_ps();
    for (int q = 0; q < 4; q++) {
        if (nt)
            _mm256_stream_ps(out + 8 * q, z);
        else
            _mm256_storeu_ps(out + 8 * q, z);
    }
}

/* codec_compact_avx2 on acc = mem + grad, storing acc as it goes (codec_isa.h). */
T256 size_t codec_compact_acc_avx2(float *acc, const float *mem, const float *grad, size_t n,
                                   uint32_t thr, uint32_t *idx, float *val, size_t cap, int zero,
                                   float *out)
{
    const int nt = out && !((uintptr_t)out & 31);
    const __m256i absmask = _mm256_set1_epi32(0x7fffffff);
    const __m256i below = _mm256_set1_epi32((int)thr - 1);
    const __m256i step = _mm256_set1_epi32(8);
    __m256i iv = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    size_t i = 0, cnt = 0;
    for (; i + 32 <= n && cnt + 32 <= cap; i += 32) {
        __m256 v[4];
        __m256i g[4];
        for (int q = 0; q < 4; q++) {
            v[q] = _mm256_add_ps(_mm256_loadu_ps(mem + i + 8 * q), _mm256_loadu_ps(grad + i + 8 * q));
            g[q] = _mm256_cmpgt_epi32(_mm256_and_si256(_mm256_castps_si256(v[q]), absmask), below);
            __m256 keep = zero ? _mm256_andnot_ps(_mm256_castsi256_ps(g[q]), v[q]) : v[q];
            _mm256_storeu_ps(acc + i + 8 * q, keep);
        }
        if (out)
            zero4(out + i, nt);
        __m256i any = _mm256_or_si256(_mm256_or_si256(g[0], g[1]), _mm256_or_si256(g[2], g[3]));
        if (_mm256_testz_si256(any, any)) {
            iv = _mm256_add_epi32(iv, _mm256_set1_epi32(32));
            continue;
        }
        for (int q = 0; q < 4; q++) {
            unsigned m = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(g[q]));
            __m256i perm = compress_perm(m);
            _mm256_storeu_ps(val + cnt, _mm256_permutevar8x32_ps(v[q], perm));
            _mm256_storeu_si256((__m256i *)(idx + cnt), _mm256_permutevar8x32_epi32(iv, perm));
            cnt += (size_t)__builtin_popcount(m);
            iv = _mm256_add_epi32(iv, step);
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

T256 void codec_acc_zero_avx2(float *acc, const float *mem, const float *grad, float *out,
                              size_t n)
{
    const int nt = !((uintptr_t)out & 31);
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        for (int q = 0; q < 4; q++)
            _mm256_storeu_ps(acc + i + 8 * q, _mm256_add_ps(_mm256_loadu_ps(mem + i + 8 * q),
                                                            _mm256_loadu_ps(grad + i + 8 * q)));
        zero4(out + i, nt);
    }
    if (nt)
        _mm_sfence();
    codec_acc_zero_scalar(acc + i, mem + i, grad + i, out + i, n - i);
}

/* a*i + b for i = base + first, base + first + 2, ... (4 lanes), as the scalar hash. */
static inline __attribute__((always_inline)) T256 __m256i mad_lanes(uint64_t a, uint64_t b,
                                                                    uint32_t base, uint32_t first)
{
    uint64_t v[4];
    for (int k = 0; k < 4; k++)
        v[k] = a * (uint32_t)(base + first + 2u * (uint32_t)k) + b;
    return _mm256_loadu_si256((const __m256i *)v);
}

/* codec_avx512.c's sign16 with 8 elements per step (even / odd lanes, i steps by adds). */
static inline __attribute__((always_inline)) T256 void
sign8(const struct crux_sketch *s, int row, uint32_t base, const float *x, size_t cnt,
      uint32_t *out)
{
    const uint64_t sa = s->sign_a[row], sb = s->sign_b[row];
    __m256i ge = mad_lanes(sa, sb, base, 0), go = mad_lanes(sa, sb, base, 1);
    const __m256i dsa = _mm256_set1_epi64x((long long)(sa * 8));
    const __m256i sign = _mm256_set1_epi32((int)0x80000000u);
    for (size_t t = 0; t + 8 <= cnt; t += 8) {
        __m256i sg = _mm256_and_si256(_mm256_blend_epi32(_mm256_srli_epi64(ge, 32), go, 0xaa), sign);
        if (x)
            sg = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(x + t)), sg);
        _mm256_storeu_si256((__m256i *)(out + t), sg);
        ge = _mm256_add_epi64(ge, dsa);
        go = _mm256_add_epi64(go, dsa);
    }
}

T256 void codec_sign_avx2(const struct crux_sketch *s, int row, uint32_t base, size_t cnt,
                          uint32_t *sgn)
{
    sign8(s, row, base, NULL, cnt, sgn);
    size_t t = cnt & ~(size_t)7;
    if (t < cnt)
        codec_sign_scalar(s, row, base + (uint32_t)t, cnt - t, sgn + t);
}

T256 void codec_sign_val_avx2(const struct crux_sketch *s, int row, uint32_t base, const float *x,
                              size_t cnt, float *val)
{
    sign8(s, row, base, x, cnt, (uint32_t *)val);
    size_t t = cnt & ~(size_t)7;
    if (t < cnt)
        codec_sign_val_scalar(s, row, base + (uint32_t)t, x + t, cnt - t, val + t);
}
#endif
