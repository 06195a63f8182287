/* test_qsgd.c - the QSGD quantiser (lib/codec/qsgd.c) alone: exact codes where the
 * noise cannot matter, unbiasedness, chunked == whole, identical bytes on every ISA,
 * the wire validator's rejections, NaN buckets. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "codec/pool.h"
#include "codec/qsgd.h"
#include "crux.h"

static void use_isa(const char *isa)
{
    if (crux_qsgd_force_isa(isa) != 0)
        cr_skip_test("this CPU cannot run the %s kernels", isa);
    cr_assert_str_eq(crux_qsgd_isa(), isa);
}

static float frand(uint64_t *s) /* splitmix64 -> [-1, 1) */
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (float)(int32_t)(z >> 32) * 0x1p-31f;
}

static uint8_t *encode(const struct crux_qsgd *q, const float *x, size_t n, uint32_t key,
                       size_t *len)
{
    *len = crux_qsgd_encoded_bytes(q, n);
    uint8_t *out = malloc(*len + 1);
    cr_assert_not_null(out);
    cr_assert_eq(crux_qsgd_encode(q, x, n, 0, key, out), *len);
    return out;
}

Test(qsgd, sizes_and_arguments)
{
    struct crux_qsgd q = {7, 512, CRUX_QSGD_NORM_MAX};
    cr_assert_eq(crux_qsgd_check(&q), CRUX_SUCCESS);
    cr_assert_eq(crux_qsgd_code_bits(1), 2);
    cr_assert_eq(crux_qsgd_code_bits(7), 4);
    cr_assert_eq(crux_qsgd_code_bits(8), 8);
    cr_assert_eq(crux_qsgd_code_bits(127), 8);
    cr_assert_eq(crux_qsgd_encoded_bytes(&q, 0), 0);
    cr_assert_eq(crux_qsgd_encoded_bytes(&q, 1), 4 + 1);
    cr_assert_eq(crux_qsgd_encoded_bytes(&q, 1000), 2 * 4 + 500);
    cr_assert_eq(crux_qsgd_encoded_bytes(&q, 1025), 3 * 4 + 513);
    struct crux_qsgd bad[] = {{0, 512, 0}, {128, 512, 0}, {7, 12, 0}, {7, 0, 0}, {7, 512, 9}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_eq(crux_qsgd_check(&bad[i]), CRUX_ERR_ARG, "case %zu", i);
}

/* |x| integer and scale == s: the level is |x| whatever the noise, so decoding is exact. */
Test(qsgd, integer_levels_decode_exactly)
{
    struct crux_qsgd q = {7, 8, CRUX_QSGD_NORM_MAX};
    const float x[11] = {0, 1, -2, 3, -4, 5, -6, 7, /* bucket 2, scale 7: */ -7, 0, 2};
    size_t len;
    uint8_t *e = encode(&q, x, 11, 12345, &len);
    cr_assert_eq(len, 2 * 4 + 6);
    float s0, s1;
    memcpy(&s0, e, 4);
    memcpy(&s1, e + 4, 4);
    cr_assert_eq(s0, 7.0f);
    cr_assert_eq(s1, 7.0f);
    /* codes: sign bit 3, level bits 0-2, two per byte, low nibble first */
    const uint8_t want[6] = {0x10, 0x3a, 0x5c, 0x7e, 0x0f, 0x02};
    cr_assert_arr_eq(e + 8, want, 6);
    float acc[11] = {0};
    cr_assert_eq(crux_qsgd_validate(&q, e, len, 11), CRUX_SUCCESS);
    crux_qsgd_decode_add(&q, e, 11, acc);
    for (int i = 0; i < 11; i++)
        cr_assert_eq(acc[i], x[i], "element %d: %g != %g", i, (double)acc[i], (double)x[i]);
    free(e);
}

Test(qsgd, zero_vector_is_zero_codes)
{
    struct crux_qsgd q = {3, 16, CRUX_QSGD_NORM_L2};
    float x[40] = {0}, acc[40];
    for (int i = 0; i < 40; i++)
        acc[i] = (float)i;
    size_t len;
    uint8_t *e = encode(&q, x, 40, 1, &len);
    for (size_t i = 0; i < len; i++)
        cr_assert_eq(e[i], 0, "byte %zu", i);
    crux_qsgd_decode_add(&q, e, 40, acc);
    for (int i = 0; i < 40; i++)
        cr_assert_eq(acc[i], (float)i);
    free(e);
}

/* Mean of R independent quantisations converges to x: the error of the mean must be far
 * inside the per-sample spread (deterministic keys, so the test is reproducible). */
static void check_unbiased(enum crux_qsgd_norm norm, int levels, double *mse_out)
{
    enum { N = 1024, R = 400 };
    struct crux_qsgd q = {levels, 256, norm};
    static float x[N], mean[N], one[N];
    uint64_t seed = 42;
    for (int i = 0; i < N; i++) {
        x[i] = frand(&seed);
        mean[i] = 0;
    }
    uint8_t *e = malloc(crux_qsgd_encoded_bytes(&q, N));
    double mse = 0;
    for (uint32_t r = 0; r < R; r++) {
        crux_qsgd_encode(&q, x, N, 0, r * 7919u + 1, e);
        memset(one, 0, sizeof one);
        crux_qsgd_decode_add(&q, e, N, one);
        for (int i = 0; i < N; i++) {
            mean[i] += one[i] / R;
            mse += (double)(one[i] - x[i]) * (one[i] - x[i]) / ((double)N * R);
        }
    }
    double bias2 = 0;
    for (int i = 0; i < N; i++)
        bias2 += (double)(mean[i] - x[i]) * (mean[i] - x[i]) / N;
    /* unbiased: squared error of the mean ~ mse / R; allow 2x */
    cr_assert_lt(bias2, 2.0 * mse / R, "norm %d: bias^2 %g vs mse/R %g", norm, bias2, mse / R);
    cr_assert_gt(mse, 0.0);
    *mse_out = mse;
    free(e);
}

Test(qsgd, unbiased_and_max_norm_has_lower_variance)
{
    double mse_max, mse_l2;
    check_unbiased(CRUX_QSGD_NORM_MAX, 7, &mse_max);
    check_unbiased(CRUX_QSGD_NORM_L2, 7, &mse_l2);
    /* uniform [-1,1) in buckets of 256: max ~1, L2 ~ 9.2: steps 1/7 vs 9.2/7 */
    cr_assert_lt(mse_max * 4, mse_l2, "max-norm mse %g, L2 mse %g", mse_max, mse_l2);
    double mse8;
    check_unbiased(CRUX_QSGD_NORM_MAX, 127, &mse8);
    cr_assert_lt(mse8 * 50, mse_max, "127 levels %g vs 7 levels %g", mse8, mse_max);
}

/* Encoding in bucket-aligned pieces with the right base gives the bytes of one call. */
Test(qsgd, chunked_equals_whole)
{
    enum { N = 5000 };
    struct crux_qsgd q = {7, 64, CRUX_QSGD_NORM_MAX};
    static float x[N];
    uint64_t seed = 7;
    for (int i = 0; i < N; i++)
        x[i] = frand(&seed) * 3;
    size_t len;
    uint8_t *whole = encode(&q, x, N, 99, &len);
    float a[N] = {0}, b[N] = {0};
    crux_qsgd_decode_add(&q, whole, N, a);
    size_t cuts[] = {0, 640, 1920, 4992, N};
    for (int c = 0; c < 4; c++) {
        size_t n = cuts[c + 1] - cuts[c];
        uint8_t *part = malloc(crux_qsgd_encoded_bytes(&q, n));
        crux_qsgd_encode(&q, x + cuts[c], n, cuts[c], 99, part);
        crux_qsgd_decode_add(&q, part, n, b + cuts[c]);
        free(part);
    }
    cr_assert_arr_eq(a, b, sizeof a);
    free(whole);
}

static void encode_with(const char *isa, const struct crux_qsgd *q, const float *x, size_t n,
                        uint8_t *out, float *dec)
{
    use_isa(isa);
    crux_qsgd_encode(q, x, n, 1ull << 33, 5, out);
    memset(dec, 0, n * sizeof *dec);
    crux_qsgd_decode_add(q, out, n, dec);
}

Test(qsgd, every_isa_same_bytes)
{
    enum { N = 3001 };
    static float x[N], d0[N], d1[N];
    uint64_t seed = 3;
    for (int i = 0; i < N; i++)
        x[i] = frand(&seed) * (float)(1 + i % 13);
    const int levels[] = {1, 5, 7, 100};
    for (int l = 0; l < 4; l++)
        for (int norm = 0; norm < 2; norm++) {
            struct crux_qsgd q = {levels[l], 128, norm};
            size_t len = crux_qsgd_encoded_bytes(&q, N);
            uint8_t *e0 = malloc(len), *e1 = malloc(len);
            encode_with("scalar", &q, x, N, e0, d0);
            const char *isas[] = {"avx2", "avx512"};
            for (int k = 0; k < 2; k++) {
                if (crux_qsgd_force_isa(isas[k]) != 0)
                    continue;
                encode_with(isas[k], &q, x, N, e1, d1);
                cr_assert_arr_eq(e0, e1, len, "%s levels %d norm %d", isas[k], levels[l], norm);
                cr_assert_arr_eq(d0, d1, sizeof d0, "%s decode", isas[k]);
            }
            free(e0);
            free(e1);
        }
}

Test(qsgd, nan_bucket_decodes_nan_and_spares_the_others)
{
    struct crux_qsgd q = {7, 8, CRUX_QSGD_NORM_MAX};
    float x[24] = {0};
    for (int i = 0; i < 24; i++)
        x[i] = (float)(i % 8);
    x[10] = NAN;
    x[20] = INFINITY;
    float acc[24] = {0};
    size_t len;
    uint8_t *e = encode(&q, x, 24, 3, &len);
    cr_assert_eq(crux_qsgd_validate(&q, e, len, 24), CRUX_SUCCESS);
    crux_qsgd_decode_add(&q, e, 24, acc);
    for (int i = 0; i < 8; i++)
        cr_assert_eq(acc[i], x[i]);
    for (int i = 8; i < 24; i++)
        cr_assert(isnan(acc[i]), "element %d = %g", i, (double)acc[i]);
    free(e);
}

Test(qsgd, validator_rejects_malformed_input)
{
    struct crux_qsgd q = {5, 8, CRUX_QSGD_NORM_MAX};
    const float x[9] = {5, -5, 1, 2, 3, 4, 0, 0, 5};
    size_t len;
    uint8_t *e = encode(&q, x, 9, 1, &len);
    cr_assert_eq(len, 8 + 5);
    cr_assert_eq(crux_qsgd_validate(&q, e, len, 9), CRUX_SUCCESS);
    cr_assert_eq(crux_qsgd_validate(&q, e, len - 1, 9), CRUX_ERR_MISMATCH);
    cr_assert_eq(crux_qsgd_validate(&q, e, len, 17), CRUX_ERR_MISMATCH);
    uint8_t bad[13];
    float neg = -1.0f;
    memcpy(bad, e, len);
    memcpy(bad + 4, &neg, 4);
    cr_assert_eq(crux_qsgd_validate(&q, bad, len, 9), CRUX_ERR_MISMATCH, "negative scale");
    memcpy(bad, e, len);
    bad[8] = (uint8_t)((bad[8] & 0xf0) | 6); /* level 6 > s = 5 */
    cr_assert_eq(crux_qsgd_validate(&q, bad, len, 9), CRUX_ERR_MISMATCH, "level > s");
    memcpy(bad, e, len);
    bad[11] = (uint8_t)((bad[11] & 0x0f) | 0x80); /* element 7: sign with level 0 */
    cr_assert_eq(crux_qsgd_validate(&q, bad, len, 9), CRUX_ERR_MISMATCH, "negative zero");
    memcpy(bad, e, len);
    bad[12] |= 0x10; /* padding nibble after element 8 */
    cr_assert_eq(crux_qsgd_validate(&q, bad, len, 9), CRUX_ERR_MISMATCH, "padding");
    free(e);
}

/* Special values on every ISA: NaN and infinite buckets, an all-zero bucket, subnormal
 * scales, -0, |x| == scale (the clamp), bucket sizes that are not multiples of the
 * vector groups; and the pooled encoder gives the same bytes. */
Test(qsgd, every_isa_same_bytes_on_special_values)
{
    enum { N = 4133 };
    static float x[N], d0[N], d1[N];
    uint64_t seed = 11;
    for (int i = 0; i < N; i++)
        x[i] = frand(&seed) * (float)(1 + i % 7);
    for (int i = 0; i < 40; i++)
        x[i] = 0.0f;                    /* zero buckets (bucket 8, 24) */
    x[41] = -0.0f;
    x[100] = NAN;
    x[333] = INFINITY;
    x[700] = -INFINITY;
    for (int i = 800; i < 900; i++)
        x[i] = (float)(i % 3) * 1e-40f; /* subnormal scale: encodes as zeros */
    for (int i = 1000; i < 1100; i++)
        x[i] = (i & 1) ? 2.0f : -2.0f;  /* every |x| equals the scale */
    const int levels[] = {1, 3, 7, 127};
    const int buckets[] = {8, 24, 40, 512};
    struct crux_pool *pool;
    cr_assert_eq(crux_pool_create(0, &pool), CRUX_SUCCESS);
    for (int l = 0; l < 4; l++)
        for (int b = 0; b < 4; b++)
            for (int norm = 0; norm < 2; norm++) {
                struct crux_qsgd q = {levels[l], buckets[b], norm};
                size_t len = crux_qsgd_encoded_bytes(&q, N);
                uint8_t *e0 = malloc(len), *e1 = malloc(len);
                encode_with("scalar", &q, x, N, e0, d0);
                const char *isas[] = {"avx2", "avx512"};
                for (int k = 0; k < 2; k++) {
                    if (crux_qsgd_force_isa(isas[k]) != 0)
                        continue;
                    encode_with(isas[k], &q, x, N, e1, d1);
                    cr_assert_arr_eq(e0, e1, len, "%s levels %d bucket %d norm %d", isas[k],
                                     levels[l], buckets[b], norm);
                    cr_assert_eq(memcmp(d0, d1, sizeof d0), 0); /* NaN-safe: bits */
                    memset(e1, 0, len);
                    cr_assert_eq(crux_qsgd_encode_pool(pool, &q, x, N, 1ull << 33, 5, e1), len);
                    cr_assert_arr_eq(e0, e1, len, "pooled %s levels %d bucket %d", isas[k],
                                     levels[l], buckets[b]);
                }
                free(e0);
                free(e1);
            }
    crux_pool_free(pool);
}
