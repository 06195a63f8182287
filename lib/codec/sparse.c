/* sparse.c - gather/scatter on index lists and the ordered merge of two sparse lists
 * (codec.h). Random access dominates; the loops stay simple so the compiler can
 * unroll them. */
#include "codec/codec.h"

void crux_gather(const float *x, const uint32_t *idx, size_t k, float *val)
{
    for (size_t j = 0; j < k; j++)
        val[j] = x[idx[j]];
}

void crux_scatter(float *x, const uint32_t *idx, const float *val, size_t k)
{
    for (size_t j = 0; j < k; j++)
        x[idx[j]] = val[j];
}

void crux_scatter_add(float *x, const uint32_t *idx, const float *val, size_t k)
{
    for (size_t j = 0; j < k; j++)
        x[idx[j]] += val[j];
}

void crux_zero_at(float *x, const uint32_t *idx, size_t k)
{
    for (size_t j = 0; j < k; j++)
        x[idx[j]] = 0.0f;
}

/* Branchy two-finger merge: it beats the branchless form on real index sets (the
 * branches follow runs), see ../shared/LIMITS.md section 5. */
size_t crux_sparse_merge(const uint32_t *a_idx, const float *a_val, size_t na,
                         const uint32_t *b_idx, const float *b_val, size_t nb,
                         uint32_t *out_idx, float *out_val)
{
    size_t i = 0, j = 0, o = 0;
    while (i < na && j < nb) {
        if (a_idx[i] < b_idx[j]) {
            out_idx[o] = a_idx[i];
            out_val[o++] = a_val[i++];
        } else if (b_idx[j] < a_idx[i]) {
            out_idx[o] = b_idx[j];
            out_val[o++] = b_val[j++];
        } else {
            out_idx[o] = a_idx[i];
            out_val[o++] = a_val[i++] + b_val[j++]; /* a + b, never b + a */
        }
    }
    for (; i < na; i++, o++) {
        out_idx[o] = a_idx[i];
        out_val[o] = a_val[i];
    }
    for (; j < nb; j++, o++) {
        out_idx[o] = b_idx[j];
        out_val[o] = b_val[j];
    }
    return o;
}
