/* sgemm.h - single-precision matrix multiply for the trainer (row-major):
 *   C = beta*C + alpha * op(A) * op(B),  op(A) M x K, op(B) K x N.
 * Packed, cache-blocked, with an AVX2/FMA micro-kernel chosen at run time and a
 * portable one otherwise. The summation order over K depends only on the shape,
 * so results are reproducible run to run on the same machine. */
#ifndef CRUX_TRAIN_SGEMM_H
#define CRUX_TRAIN_SGEMM_H

#include <stddef.h>

void sgemm(int trans_a, int trans_b, size_t m, size_t n, size_t k, float alpha, const float *a,
           size_t lda, const float *b, size_t ldb, float beta, float *c, size_t ldc);
/* Name of the micro-kernel in use ("avx2-fma" or "generic"). */
const char *sgemm_kernel_name(void);

#endif
