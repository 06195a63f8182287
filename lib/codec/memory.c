/* memory.c - error-feedback memories (codec.h). Plain loops over contiguous arrays,
 * vectorised by the compiler; the sparse parts touch only the k sent entries. */
#include <string.h>

#include "codec/codec.h"
#include "codec/codec_isa.h"

void crux_mem_accumulate(float *acc, const float *mem, const float *grad, size_t n)
{
    for (size_t i = 0; i < n; i++)
        acc[i] = mem[i] + grad[i];
}

void codec_acc_zero_scalar(float *acc, const float *mem, const float *grad, float *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        acc[i] = mem[i] + grad[i];
        out[i] = 0.0f; /* after the read: out may be grad */
    }
}

void crux_mem_accumulate_zero(float *acc, const float *mem, const float *grad, float *out,
                              size_t n)
{
    if (!out) {
        crux_mem_accumulate(acc, mem, grad, n);
        return;
    }
    switch (crux_codec_active_isa()) {
#ifdef CODEC_X86
    case CODEC_ISA_AVX512: codec_acc_zero_avx512(acc, mem, grad, out, n); return;
    case CODEC_ISA_AVX2: codec_acc_zero_avx2(acc, mem, grad, out, n); return;
#endif
    default: codec_acc_zero_scalar(acc, mem, grad, out, n); return;
    }
}

void crux_mem_residual(float *mem, const float *acc, const uint32_t *idx, size_t k, size_t n)
{
    if (mem != acc)
        memcpy(mem, acc, n * sizeof *mem);
    for (size_t j = 0; j < k; j++)
        mem[idx[j]] = 0.0f;
}

/* One stretch [lo, hi) of unsent entries: mem = (1-beta)*mem + beta*acc. */
static void lowpass_span(float *mem, const float *acc, size_t lo, size_t hi, float keep,
                         float beta)
{
    for (size_t i = lo; i < hi; i++)
        mem[i] = keep * mem[i] + beta * acc[i];
}

/* ScaleCom (Chen et al., NeurIPS 2020, arXiv 2104.11125), the low-pass memory update of
 * its Algorithm 1 (equation number not verified: only secondary sources were available,
 * ../shared/ALGORITHMS.md section 1(a)):
 *   m_i <- (1 - beta) m_i + beta (m_i + g_i - CLT-k(m_i + g_i))
 * with acc = m_i + g_i, so acc - CLT-k(acc) is acc off idx and 0 on it
 * (../shared/ALGORITHMS.md section 1(a)). idx must be ascending (as crux_topk gives it).
 * beta = 1 is delegated to crux_mem_residual: (1-1)*m + 1*acc differs from acc in the
 * sign of zero (and is NaN for an infinite m), and error feedback must be exact. */
void crux_mem_lowpass(float *mem, const float *acc, const uint32_t *idx, size_t k, size_t n,
                      float beta)
{
    if (beta == 1.0f) {
        crux_mem_residual(mem, acc, idx, k, n);
        return;
    }
    const float keep = 1.0f - beta;
    size_t lo = 0;
    for (size_t j = 0; j < k; j++) {
        size_t at = idx[j];
        lowpass_span(mem, acc, lo, at, keep, beta);
        mem[at] = keep * mem[at] + beta * 0.0f; /* the sent entry's residual is 0 */
        lo = at + 1;
    }
    lowpass_span(mem, acc, lo, n, keep, beta);
}

/* DGC (Lin et al., ICLR 2018, arXiv 1712.01887), Sec. 3.2 "momentum correction", as the
 * reference code does it (../shared/ALGORITHMS.md section 4(a); eq. number not verified):
 *   u = m*u + g;  v = v + u;  the sparsifier then selects on v. */
void crux_mem_momentum(float *u, float *v, const float *grad, size_t n, float m)
{
    for (size_t i = 0; i < n; i++) {
        u[i] = m * u[i] + grad[i];
        v[i] = v[i] + u[i];
    }
}

/* DGC momentum factor masking (Sec. 3.2): the sent coordinates restart from zero in
 * both the momentum and the accumulation, so stale momentum does not push them again. */
void crux_mem_momentum_mask(float *u, float *v, const uint32_t *idx, size_t k)
{
    for (size_t j = 0; j < k; j++) {
        u[idx[j]] = 0.0f;
        v[idx[j]] = 0.0f;
    }
}
