/* sgemm.c - GotoBLAS-style blocking: B is packed into KC x NR column panels,
 * A into MR x KC row panels, and an MR x NR micro-kernel keeps its tile of C in
 * registers for the whole KC loop. */
#include "sgemm.h"

#include <stdlib.h>
#include <string.h>


#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SGEMM_X86 1
#endif

#define MR 6
#define NR 16
#define KC 256
#define MC 96  /* multiple of MR: A block stays in L2 */
#define NC 2048

/* A's element (i, p) of the tile is ap[i * rs + p * cs]: (1, MR) when packed,
 * (lda, 1) or (1, lda) when read in place. */
typedef void (*kernel_fn)(size_t kc, const float *ap, size_t rs, size_t cs, const float *bp, float *c,
                          size_t ldc, size_t mr, size_t nr, float alpha);

/* Portable kernel: plain loops over the packed panels, left to -O3 to vectorise. */
static void kernel_generic(size_t kc, const float *ap, size_t rs, size_t cs, const float *bp, float *c,
                           size_t ldc, size_t mr, size_t nr, float alpha)
{
    float acc[MR][NR];
    memset(acc, 0, sizeof(acc));
    for (size_t p = 0; p < kc; p++)
        for (int i = 0; i < MR; i++) {
            float a = ap[i * rs + p * cs];
            for (int j = 0; j < NR; j++)
                acc[i][j] += a * bp[p * NR + j];
        }
    for (size_t i = 0; i < mr; i++)
        for (size_t j = 0; j < nr; j++)
            c[i * ldc + j] += alpha * acc[i][j];
}

#ifdef SGEMM_X86
__attribute__((target("avx2,fma"))) static void kernel_avx2(size_t kc, const float *ap, size_t rs,
                                                            size_t cs, const float *bp, float *c, size_t ldc,
                                                            size_t mr, size_t nr, float alpha)
{
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
    __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
    __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
    __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
    __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
    if (nr <= 8) { /* narrow panel (a 6-filter conv): half the work */
        for (size_t p = 0; p < kc; p++) {
            __m256 b0 = _mm256_loadu_ps(bp + p * NR);
            const float *a = ap + p * cs;
            c00 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 0 * rs), b0, c00);
            c10 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 1 * rs), b0, c10);
            c20 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 2 * rs), b0, c20);
            c30 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 3 * rs), b0, c30);
            c40 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 4 * rs), b0, c40);
            c50 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 5 * rs), b0, c50);
        }
    } else {
        for (size_t p = 0; p < kc; p++) {
            __m256 b0 = _mm256_loadu_ps(bp + p * NR), b1 = _mm256_loadu_ps(bp + p * NR + 8);
            const float *a = ap + p * cs;
            __m256 x;
            x = _mm256_broadcast_ss(a + 0 * rs); c00 = _mm256_fmadd_ps(x, b0, c00); c01 = _mm256_fmadd_ps(x, b1, c01);
            x = _mm256_broadcast_ss(a + 1 * rs); c10 = _mm256_fmadd_ps(x, b0, c10); c11 = _mm256_fmadd_ps(x, b1, c11);
            x = _mm256_broadcast_ss(a + 2 * rs); c20 = _mm256_fmadd_ps(x, b0, c20); c21 = _mm256_fmadd_ps(x, b1, c21);
            x = _mm256_broadcast_ss(a + 3 * rs); c30 = _mm256_fmadd_ps(x, b0, c30); c31 = _mm256_fmadd_ps(x, b1, c31);
            x = _mm256_broadcast_ss(a + 4 * rs); c40 = _mm256_fmadd_ps(x, b0, c40); c41 = _mm256_fmadd_ps(x, b1, c41);
            x = _mm256_broadcast_ss(a + 5 * rs); c50 = _mm256_fmadd_ps(x, b0, c50); c51 = _mm256_fmadd_ps(x, b1, c51);
        }
    }
    float acc[MR][NR];
    _mm256_storeu_ps(acc[0], c00); _mm256_storeu_ps(acc[0] + 8, c01);
    _mm256_storeu_ps(acc[1], c10); _mm256_storeu_ps(acc[1] + 8, c11);
    _mm256_storeu_ps(acc[2], c20); _mm256_storeu_ps(acc[2] + 8, c21);
    _mm256_storeu_ps(acc[3], c30); _mm256_storeu_ps(acc[3] + 8, c31);
    _mm256_storeu_ps(acc[4], c40); _mm256_storeu_ps(acc[4] + 8, c41);
    _mm256_storeu_ps(acc[5], c50); _mm256_storeu_ps(acc[5] + 8, c51);
    __m256 va = _mm256_set1_ps(alpha);
    if (nr == NR) {
        for (size_t i = 0; i < mr; i++) {
            float *ci = c + i * ldc;
            _mm256_storeu_ps(ci, _mm256_fmadd_ps(va, _mm256_loadu_ps(acc[i]), _mm256_loadu_ps(ci)));
            _mm256_storeu_ps(ci + 8, _mm256_fmadd_ps(va, _mm256_loadu_ps(acc[i] + 8), _mm256_loadu_ps(ci + 8)));
        }
        return;
    }
    for (size_t i = 0; i < mr; i++)
        for (size_t j = 0; j < nr; j++)
            c[i * ldc + j] += alpha * acc[i][j];
}
#endif

static kernel_fn pick_kernel(void)
{
#ifdef SGEMM_X86
    if (!getenv("CRUX_TRAIN_GENERIC_SGEMM") && __builtin_cpu_supports("avx2") &&
        __builtin_cpu_supports("fma"))
        return kernel_avx2;
#endif
    return kernel_generic;
}

static kernel_fn kernel(void)
{
    static kernel_fn k; /* one thread per rank: no race */
    if (!k)
        k = pick_kernel();
    return k;
}

const char *sgemm_kernel_name(void)
{
#ifdef SGEMM_X86
    if (kernel() == kernel_avx2)
        return "avx2-fma";
#endif
    return "generic";
}

/* A(i, p) of op(A), zero-padded to whole MR panels; the transpose test is
 * hoisted out of the copy loops. */
static void pack_a(int trans, const float *a, size_t lda, size_t mc, size_t kc, float *dst)
{
    for (size_t i0 = 0; i0 < mc; i0 += MR) {
        size_t mr = mc - i0 < MR ? mc - i0 : MR;
        if (mr < MR)
            memset(dst, 0, kc * MR * sizeof(float));
        if (trans)
            for (size_t p = 0; p < kc; p++)
                for (size_t i = 0; i < mr; i++)
                    dst[p * MR + i] = a[p * lda + i0 + i];
        else
            for (size_t i = 0; i < mr; i++)
                for (size_t p = 0; p < kc; p++)
                    dst[p * MR + i] = a[(i0 + i) * lda + p];
        dst += kc * MR;
    }
}

/* B(p, j) of op(B), zero-padded to whole NR panels. */
static void pack_b(int trans, const float *b, size_t ldb, size_t kc, size_t nc, float *dst)
{
    for (size_t j0 = 0; j0 < nc; j0 += NR) {
        size_t nr = nc - j0 < NR ? nc - j0 : NR;
        if (nr < NR)
            memset(dst, 0, kc * NR * sizeof(float));
        if (trans)
            for (size_t j = 0; j < nr; j++)
                for (size_t p = 0; p < kc; p++)
                    dst[p * NR + j] = b[(j0 + j) * ldb + p];
        else
            for (size_t p = 0; p < kc; p++)
                for (size_t j = 0; j < nr; j++)
                    dst[p * NR + j] = b[p * ldb + j0 + j];
        dst += kc * NR;
    }
}

static void scale_c(size_t m, size_t n, float beta, float *c, size_t ldc)
{
    if (beta == 1.0f)
        return;
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++)
            c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
}

void sgemm(int trans_a, int trans_b, size_t m, size_t n, size_t k, float alpha, const float *a,
           size_t lda, const float *b, size_t ldb, float beta, float *c, size_t ldc)
{
    /* Pack buffers for the largest block, static: one thread per rank, and no
     * allocation per call. */
    static _Alignas(64) float abuf[MC * KC], bbuf[KC * NC];
    scale_c(m, n, beta, c, ldc);
    if (m == 0 || n == 0 || k == 0 || alpha == 0.0f)
        return;
    kernel_fn kern = kernel();
    for (size_t jc = 0; jc < n; jc += NC) {
        size_t nc = n - jc < NC ? n - jc : NC;
        for (size_t pc = 0; pc < k; pc += KC) {
            size_t kc = k - pc < KC ? k - pc : KC;
            pack_b(trans_b, trans_b ? b + jc * ldb + pc : b + pc * ldb + jc, ldb, kc, nc, bbuf);
            for (size_t ic = 0; ic < m; ic += MC) {
                size_t mc = m - ic < MC ? m - ic : MC;
                const float *ablk = trans_a ? a + pc * lda + ic : a + ic * lda + pc;
                /* With one column panel each A element is used once: packing it
                 * would cost as much as the multiply (skinny conv GEMMs). */
                int in_place = nc <= NR;
                if (!in_place)
                    pack_a(trans_a, ablk, lda, mc, kc, abuf);
                for (size_t jr = 0; jr < nc; jr += NR) {
                    size_t nr = nc - jr < NR ? nc - jr : NR;
                    for (size_t ir = 0; ir < mc; ir += MR) {
                        size_t mr = mc - ir < MR ? mc - ir : MR;
                        float *ct = c + (ic + ir) * ldc + jc + jr;
                        if (!in_place)
                            kern(kc, abuf + ir * kc, 1, MR, bbuf + jr * kc, ct, ldc, mr, nr, alpha);
                        else if (mr < MR) { /* the kernel reads MR rows: pad this one */
                            pack_a(trans_a, trans_a ? ablk + ir : ablk + ir * lda, lda, mr, kc, abuf);
                            kern(kc, abuf, 1, MR, bbuf + jr * kc, ct, ldc, mr, nr, alpha);
                        } else if (trans_a)
                            kern(kc, ablk + ir, 1, lda, bbuf + jr * kc, ct, ldc, mr, nr, alpha);
                        else
                            kern(kc, ablk + ir * lda, lda, 1, bbuf + jr * kc, ct, ldc, mr, nr, alpha);
                    }
                }
            }
        }
    }
}
