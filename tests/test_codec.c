/* test_codec.c - the compression kernels of lib/codec (codec.h), alone: top-k exactness
 * and its tie/NaN rules against a brute-force reference on every ISA path, the sparse
 * helpers, index encoding round trips and every malformed-input rejection, the Count
 * Sketch (linearity, planted heavy hitters, median), and the memories. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "codec/codec.h"
#include "codec/codec_isa.h"
#include "crux.h"
#include "log.h"

static uint64_t rng_next(uint64_t *s) /* splitmix64 */
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint32_t fbits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float ffrom(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* Each test runs in its own process (Criterion forks), so forcing does not leak. */
static void use_isa(const char *isa)
{
    if (crux_codec_force_isa(isa) != 0)
        cr_skip_test("this CPU cannot run the %s codec kernels", isa);
    cr_assert_str_eq(crux_codec_isa(), isa);
}

/* ---- brute-force reference: sort (key desc, index asc), take k, sort by index ---- */

static uint32_t ref_key(float f)
{
    uint32_t a = fbits(f) & 0x7fffffffu;
    return isnan(f) ? 0x7f800001u : a;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static size_t ref_topk(const float *x, size_t n, size_t k, uint32_t *idx)
{
    if (k > n)
        k = n;
    uint64_t *t = malloc((n ? n : 1) * sizeof *t);
    cr_assert(t);
    for (size_t i = 0; i < n; i++)
        t[i] = ((uint64_t)(0xffffffffu - ref_key(x[i])) << 32) | i;
    qsort(t, n, sizeof *t, cmp_u64);
    for (size_t j = 0; j < k; j++)
        idx[j] = (uint32_t)t[j];
    qsort(idx, k, sizeof *idx, cmp_u32);
    free(t);
    return k;
}

static int paths_seen[4]; /* enum codec_topk_path -> calls */

static void check_topk(const float *x, size_t n, size_t k, struct crux_topk_ws *ws, uint64_t seed)
{
    size_t kk = k < n ? k : n;
    uint32_t *idx = malloc((kk + 1) * sizeof *idx), *ref = malloc((kk + 1) * sizeof *ref);
    float *val = malloc((kk + 1) * sizeof *val);
    cr_assert(idx && ref && val);
    size_t got = crux_topk(x, n, k, seed, ws, idx, val);
    size_t want = ref_topk(x, n, k, ref);
    if (ws && k > 0 && k < n)
        paths_seen[codec_topk_last_path(ws)]++;
    cr_assert_eq(got, want, "n=%zu k=%zu: %zu entries, expected %zu", n, k, got, want);
    for (size_t j = 0; j < got; j++) {
        cr_assert_eq(idx[j], ref[j], "n=%zu k=%zu: idx[%zu]=%u, expected %u", n, k, j, idx[j], ref[j]);
        cr_assert_eq(fbits(val[j]), fbits(x[idx[j]]), "n=%zu k=%zu: val[%zu]", n, k, j);
    }
    free(idx);
    free(ref);
    free(val);
}

/* ---- top-k on hand-made vectors ---- */

Test(topk, hand_made_ties_lower_index_wins)
{
    const float x[] = {1, -5, 3, 5, -2, 0, 5, -3};
    uint32_t idx[8];
    float val[8];
    cr_assert_eq(crux_topk(x, 8, 1, 1, NULL, idx, val), 1);
    cr_assert_eq(idx[0], 1);
    cr_assert_eq(val[0], -5.0f);
    cr_assert_eq(crux_topk(x, 8, 2, 1, NULL, idx, val), 2);
    cr_assert(idx[0] == 1 && idx[1] == 3);
    cr_assert_eq(crux_topk(x, 8, 4, 1, NULL, idx, val), 4); /* 5,5,5 then 3 (index 2 < 7) */
    cr_assert(idx[0] == 1 && idx[1] == 2 && idx[2] == 3 && idx[3] == 6);
    cr_assert(val[0] == -5 && val[1] == 3 && val[2] == 5 && val[3] == 5);
    const float eq[] = {2, -2, 2, 2, 1};
    cr_assert_eq(crux_topk(eq, 5, 2, 1, NULL, idx, val), 2);
    cr_assert(idx[0] == 0 && idx[1] == 1);
    const float zeros[] = {0.0f, -0.0f, 0.0f}; /* +0 and -0 tie */
    cr_assert_eq(crux_topk(zeros, 3, 2, 1, NULL, idx, val), 2);
    cr_assert(idx[0] == 0 && idx[1] == 1);
    cr_assert_eq(fbits(val[1]), 0x80000000u);
}

Test(topk, nan_is_largest_and_nans_tie)
{
    float x[] = {1, ffrom(0x7fc00001u), 3, INFINITY, ffrom(0xffc00000u), -INFINITY};
    uint32_t idx[6];
    float val[6];
    cr_assert_eq(crux_topk(x, 6, 1, 1, NULL, idx, val), 1);
    cr_assert_eq(idx[0], 1);
    cr_assert_eq(fbits(val[0]), 0x7fc00001u); /* the value itself, payload kept */
    cr_assert_eq(crux_topk(x, 6, 2, 1, NULL, idx, val), 2);
    cr_assert(idx[0] == 1 && idx[1] == 4);
    cr_assert_eq(crux_topk(x, 6, 3, 1, NULL, idx, val), 3); /* then +inf at 3 beats -inf at 5 */
    cr_assert(idx[0] == 1 && idx[1] == 3 && idx[2] == 4);
}

Test(topk, k_zero_k_n_and_k_above_n)
{
    const float x[] = {3, -1, 2};
    uint32_t idx[3] = {9, 9, 9};
    float val[3];
    cr_assert_eq(crux_topk(x, 3, 0, 1, NULL, idx, val), 0);
    cr_assert_eq(idx[0], 9);
    cr_assert_eq(crux_topk(x, 3, 3, 1, NULL, idx, val), 3);
    cr_assert(idx[0] == 0 && idx[1] == 1 && idx[2] == 2 && val[1] == -1);
    cr_assert_eq(crux_topk(x, 3, 7, 1, NULL, idx, val), 3);
    cr_assert_eq(crux_topk(x, 0, 2, 1, NULL, idx, val), 0);
    cr_assert_eq(crux_topk(x, 3, 2, 1, NULL, idx, NULL), 2); /* indices only */
    cr_assert(idx[0] == 0 && idx[1] == 2);
}

/* ---- top-k against the reference, on every ISA ---- */

enum dist { D_GAUSSIANISH, D_SMALL_INTS, D_SPARSE, D_WITH_NAN, D_NDIST };

static void fill(float *x, size_t n, enum dist d, uint64_t seed)
{
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++) {
        uint64_t r = rng_next(&s);
        switch (d) {
        case D_GAUSSIANISH: { /* heavy-ish tails: ratio of uniforms */
            double u = ((double)(r >> 40) + 0.5) / (double)(1ull << 24);
            double v = (double)((r >> 8) & 0xffff) / 65536.0 - 0.5;
            x[i] = (float)(v / u * 1e-3);
            break;
        }
        case D_SMALL_INTS: x[i] = (float)((int)(r % 41) - 20); break; /* huge ties */
        case D_SPARSE: x[i] = r % 97 == 0 ? (float)((int)(r >> 32) % 1000) : 0.0f; break;
        case D_WITH_NAN: x[i] = r % 5003 == 0 ? NAN : (float)((double)(int64_t)r / 9.2e18); break;
        default: break;
        }
    }
}

static void topk_vs_reference_on(const char *isa)
{
    use_isa(isa);
    static const size_t sizes[] = {1, 7, 100, 8191, 8193, 10007, 65537, 1000003};
    struct crux_topk_ws *ws;
    cr_assert_eq(crux_topk_ws_create(1000003, 20000, &ws), CRUX_SUCCESS);
    float *x = malloc(1000003 * sizeof *x);
    cr_assert(x);
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        size_t n = sizes[si];
        for (int d = 0; d < D_NDIST; d++) {
            if (n == 1000003 && d != D_GAUSSIANISH && d != D_SMALL_INTS)
                continue; /* keep the runtime down: the reference sorts n */
            fill(x, n, (enum dist)d, 1000 * si + (uint64_t)d);
            const size_t ks[] = {1, 2, n / 1000 + 1, n / 100 + 3, n / 10, n - 1, n, 20001};
            for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++)
                check_topk(x, n, ks[ki], ws, 42 + ki);
        }
    }
    /* a negative margin makes the first pass come up short: the retry path */
    fill(x, 300000, D_GAUSSIANISH, 77);
    codec_topk_set_margin(ws, -4.0);
    for (uint64_t seed = 0; seed < 8; seed++)
        check_topk(x, 300000, 3000, ws, seed);
    free(x);
    crux_topk_ws_free(ws);
    for (int p = 0; p < 4; p++) /* every way through crux_topk was checked */
        cr_assert_gt(paths_seen[p], 0, "path %d never taken", p);
}

Test(topk, reference_scalar, .timeout = 120) { topk_vs_reference_on("scalar"); }
Test(topk, reference_avx2, .timeout = 120) { topk_vs_reference_on("avx2"); }
Test(topk, reference_avx512, .timeout = 120) { topk_vs_reference_on("avx512"); }

Test(topk, seed_and_workspace_do_not_change_the_result)
{
    size_t n = 200000, k = 200;
    float *x = malloc(n * sizeof *x);
    uint32_t a[200], b[200];
    fill(x, n, D_GAUSSIANISH, 7);
    struct crux_topk_ws *ws, *small;
    cr_assert_eq(crux_topk_ws_create(n, k, &ws), CRUX_SUCCESS);
    cr_assert_eq(crux_topk_ws_create(1000, 10, &small), CRUX_SUCCESS); /* too small: exact path */
    cr_assert_eq(crux_topk(x, n, k, 1, ws, a, NULL), k);
    for (uint64_t seed = 2; seed < 20; seed++) {
        cr_assert_eq(crux_topk(x, n, k, seed, ws, b, NULL), k);
        cr_assert_eq(memcmp(a, b, sizeof a), 0, "seed %llu", (unsigned long long)seed);
    }
    cr_assert_eq(crux_topk(x, n, k, 1, small, b, NULL), k);
    cr_assert_eq(memcmp(a, b, sizeof a), 0);
    cr_assert_eq(crux_topk(x, n, k, 1, NULL, b, NULL), k);
    cr_assert_eq(memcmp(a, b, sizeof a), 0);
    crux_topk_ws_free(ws);
    crux_topk_ws_free(small);
    free(x);
}

/* The compaction kernels directly: same output as the scalar one, tails of every
 * length, and the cap + 1 overflow signal. */
static void compact_matches_scalar(const char *isa)
{
    use_isa(isa);
    size_t (*fn)(const float *, size_t, uint32_t, uint32_t *, float *, size_t) =
        !strcmp(isa, "avx512") ? codec_compact_avx512 : !strcmp(isa, "avx2") ? codec_compact_avx2 : codec_compact_scalar;
    float x[300];
    uint32_t i1[301], i2[301];
    float v1[301], v2[301];
    fill(x, 300, D_SMALL_INTS, 3);
    x[5] = NAN;
    x[299] = -INFINITY;
    const uint32_t thrs[] = {0, fbits(1.0f), fbits(15.0f), fbits(20.0f), 0x7f800000u, 0x7f800001u};
    for (size_t n = 0; n <= 300; n++) {
        for (size_t t = 0; t < sizeof thrs / sizeof thrs[0]; t++) {
            size_t want = codec_compact_scalar(x, n, thrs[t], i1, v1, 300);
            for (size_t cap = want > 3 ? want - 3 : 0; cap <= want + 70 && cap <= 300; cap++) {
                size_t got = fn(x, n, thrs[t], i2, v2, cap);
                if (want > cap) {
                    cr_assert_eq(got, cap + 1, "n=%zu thr=%x cap=%zu", n, thrs[t], cap);
                    continue;
                }
                cr_assert_eq(got, want, "n=%zu thr=%x cap=%zu", n, thrs[t], cap);
                cr_assert_eq(memcmp(i1, i2, got * 4), 0);
                cr_assert_eq(memcmp(v1, v2, got * 4), 0);
            }
        }
    }
}

Test(compact, avx2_matches_scalar) { compact_matches_scalar("avx2"); }
Test(compact, avx512_matches_scalar) { compact_matches_scalar("avx512"); }

Test(topk, sparse_candidates)
{
    const uint32_t ci[] = {3, 10, 11, 40, 41, 90};
    const float cv[] = {1, -7, 7, 2, NAN, -1};
    uint32_t oi[6];
    float ov[6];
    cr_assert_eq(crux_topk_sparse(ci, cv, 6, 2, oi, ov), 2);
    cr_assert(oi[0] == 10 && oi[1] == 41 && ov[0] == -7 && isnan(ov[1]));
    cr_assert_eq(crux_topk_sparse(ci, cv, 6, 4, oi, ov), 4); /* 1 at 3 beats 1 at 90 */
    cr_assert(oi[0] == 10 && oi[1] == 11 && oi[2] == 40 && oi[3] == 41);
    cr_assert_eq(crux_topk_sparse(ci, cv, 6, 0, oi, ov), 0);
    cr_assert_eq(crux_topk_sparse(ci, cv, 6, 9, oi, ov), 6);
    cr_assert_eq(oi[5], 90);
}

/* ---- sparse helpers ---- */

Test(sparse, gather_scatter_add_zero)
{
    float x[6] = {0, 1, 2, 3, 4, 5};
    const uint32_t idx[] = {1, 4, 5};
    float v[3];
    crux_gather(x, idx, 3, v);
    cr_assert(v[0] == 1 && v[1] == 4 && v[2] == 5);
    const float add[] = {10, 20, 30};
    crux_scatter_add(x, idx, add, 3);
    cr_assert(x[0] == 0 && x[1] == 11 && x[4] == 24 && x[5] == 35 && x[3] == 3);
    crux_scatter(x, idx, add, 2);
    cr_assert(x[1] == 10 && x[4] == 20 && x[5] == 35);
    crux_zero_at(x, idx + 1, 2);
    cr_assert(x[4] == 0 && x[5] == 0 && x[1] == 10 && x[2] == 2);
}

Test(sparse, merge_union_sums_shared_indices)
{
    const uint32_t ai[] = {1, 4, 7, 9};
    const float av[] = {1, 2, 3, 4};
    const uint32_t bi[] = {0, 4, 9, 12, 13};
    const float bv[] = {10, 20, 30, 40, 50};
    uint32_t oi[9];
    float ov[9];
    size_t m = crux_sparse_merge(ai, av, 4, bi, bv, 5, oi, ov);
    const uint32_t wi[] = {0, 1, 4, 7, 9, 12, 13};
    const float wv[] = {10, 1, 22, 3, 34, 40, 50};
    cr_assert_eq(m, 7);
    for (size_t j = 0; j < m; j++)
        cr_assert(oi[j] == wi[j] && ov[j] == wv[j], "entry %zu", j);
    cr_assert_eq(crux_sparse_merge(ai, av, 4, bi, bv, 0, oi, ov), 4);
    cr_assert(oi[3] == 9 && ov[3] == 4);
    cr_assert_eq(crux_sparse_merge(ai, av, 0, bi, bv, 5, oi, ov), 5);
    cr_assert(oi[4] == 13 && ov[4] == 50);
    cr_assert_eq(crux_sparse_merge(ai, av, 0, bi, bv, 0, oi, ov), 0);
}

/* ---- index encoding ---- */

static void roundtrip(const uint32_t *idx, size_t k, size_t n, uint8_t want_fmt)
{
    crux_log_setup(CRUX_LOG_NONE, 0); /* rejections below are expected */
    size_t bound = crux_idx_encode_bound(k, n);
    uint8_t *buf = malloc(bound + 1);
    uint32_t *back = malloc((k + 1) * sizeof *back);
    cr_assert(buf && back);
    size_t len = crux_idx_encode(idx, k, n, buf);
    cr_assert(len >= 1 && len <= bound, "len %zu bound %zu", len, bound);
    cr_assert_eq(buf[0], want_fmt, "k=%zu n=%zu: format %u", k, n, buf[0]);
    size_t got = 99;
    cr_assert_eq(crux_idx_decode(buf, len, n, back, k, &got), CRUX_SUCCESS);
    cr_assert_eq(got, k);
    cr_assert_eq(memcmp(back, idx, k * sizeof *idx), 0);
    if (k > 0) /* one index fewer allowed: rejected */
        cr_assert_eq(crux_idx_decode(buf, len, n, back, k - 1, &got), CRUX_ERR_MISMATCH);
    for (size_t cut = 0; cut < len; cut++) /* every truncation is rejected */
        cr_assert_eq(crux_idx_decode(buf, cut, n, back, k, &got), CRUX_ERR_MISMATCH, "cut %zu", cut);
    free(buf);
    free(back);
}

Test(idx, round_trips_pick_the_smaller_format)
{
    const uint32_t sparse[] = {0, 1, 200, 16383, 16384, 2097151, 268435455, 4000000000u};
    roundtrip(sparse, 8, 4294967295u, 0x01); /* gaps of 1..5 varint bytes */
    roundtrip(sparse, 0, 100, 0x01);
    roundtrip(sparse, 0, 0, 0x02); /* an empty bitmap is the smaller */
    uint32_t dense[700];
    size_t k = 0;
    for (uint32_t i = 0; i < 1003; i++)
        if (i % 3 != 1)
            dense[k++] = i;
    dense[k - 1] = 1002; /* the last bit of a partial byte */
    roundtrip(dense, k, 1003, 0x02);
    roundtrip(dense, k, 1003 + 5, 0x02);
    uint32_t all[64];
    for (uint32_t i = 0; i < 64; i++)
        all[i] = i;
    roundtrip(all, 64, 64, 0x02);
    roundtrip(all, 1, 64, 0x01);
}

static int dec(const uint8_t *in, size_t len, size_t n, size_t kmax)
{
    crux_log_setup(CRUX_LOG_NONE, 0); /* rejections are expected */
    uint32_t idx[64];
    size_t k;
    return crux_idx_decode(in, len, n, idx, kmax < 64 ? kmax : 64, &k);
}

Test(idx, malformed_inputs_are_rejected)
{
    cr_assert_eq(dec(NULL, 0, 10, 10), CRUX_ERR_MISMATCH);                       /* empty */
    cr_assert_eq(dec((const uint8_t[]){0x00}, 1, 10, 10), CRUX_ERR_MISMATCH);    /* format 0 */
    cr_assert_eq(dec((const uint8_t[]){0x03, 0}, 2, 10, 10), CRUX_ERR_MISMATCH); /* format 3 */
    cr_assert_eq(dec((const uint8_t[]){0x01}, 1, 10, 10), CRUX_ERR_MISMATCH);    /* no count */
    cr_assert_eq(dec((const uint8_t[]){0x01, 0x80}, 2, 10, 10), CRUX_ERR_MISMATCH); /* count cut */
    cr_assert_eq(dec((const uint8_t[]){0x01, 2, 1}, 3, 10, 10), CRUX_ERR_MISMATCH); /* 2nd missing */
    cr_assert_eq(dec((const uint8_t[]){0x01, 1, 10}, 3, 10, 10), CRUX_ERR_MISMATCH); /* idx == n */
    cr_assert_eq(dec((const uint8_t[]){0x01, 2, 5, 4}, 4, 10, 10), CRUX_ERR_MISMATCH); /* 5, 10 */
    cr_assert_eq(dec((const uint8_t[]){0x01, 2, 5, 3}, 4, 10, 10), CRUX_SUCCESS);       /* 5, 9 */
    cr_assert_eq(dec((const uint8_t[]){0x01, 3, 1, 2, 3}, 5, 100, 2), CRUX_ERR_MISMATCH); /* > kmax */
    cr_assert_eq(dec((const uint8_t[]){0x01, 1, 1, 0}, 4, 10, 10), CRUX_ERR_MISMATCH);  /* trailing */
    /* varints: 6 bytes, and 5 bytes above 2^32-1 */
    cr_assert_eq(dec((const uint8_t[]){0x01, 1, 0x81, 0x80, 0x80, 0x80, 0x80, 0}, 8, 100, 10), CRUX_ERR_MISMATCH);
    cr_assert_eq(dec((const uint8_t[]){0x01, 1, 0xff, 0xff, 0xff, 0xff, 0x1f}, 7, ~(size_t)0, 10), CRUX_ERR_MISMATCH);
    cr_assert_eq(dec((const uint8_t[]){0x01, 1, 0xff, 0xff, 0xff, 0xff, 0x0f}, 7, ~(size_t)0, 10), CRUX_SUCCESS);
    /* gaps that wrap past 2^32 stay out of range instead of wrapping */
    cr_assert_eq(dec((const uint8_t[]){0x01, 2, 0xff, 0xff, 0xff, 0xff, 0x0f, 0}, 8, 8589934592ull, 10), CRUX_ERR_MISMATCH);
    /* bitmap: wrong length either way, a bit beyond n, more than kmax bits */
    cr_assert_eq(dec((const uint8_t[]){0x02, 0x01}, 2, 10, 10), CRUX_ERR_MISMATCH);
    cr_assert_eq(dec((const uint8_t[]){0x02, 0x01, 0x00, 0x00}, 4, 10, 10), CRUX_ERR_MISMATCH);
    cr_assert_eq(dec((const uint8_t[]){0x02, 0x01, 0x02}, 3, 10, 10), CRUX_SUCCESS);
    cr_assert_eq(dec((const uint8_t[]){0x02, 0x01, 0x04}, 3, 10, 10), CRUX_ERR_MISMATCH);
    cr_assert_eq(dec((const uint8_t[]){0x02, 0xff, 0x03}, 3, 10, 9), CRUX_ERR_MISMATCH);
    cr_assert_eq(dec((const uint8_t[]){0x02, 0xff, 0x03}, 3, 10, 10), CRUX_SUCCESS);
}

/* ---- count sketch ---- */

Test(sketch, bad_shapes_are_rejected)
{
    struct crux_sketch s;
    cr_assert_eq(crux_sketch_init(&s, 0, 10, 1), CRUX_ERR_ARG);
    cr_assert_eq(crux_sketch_init(&s, 9, 10, 1), CRUX_ERR_ARG);
    cr_assert_eq(crux_sketch_init(&s, 3, 0, 1), CRUX_ERR_ARG);
}

static void sketch_of(struct crux_sketch *s, const float *x, size_t n)
{
    crux_sketch_zero(s);
    crux_sketch_accumulate(s, x, n / 3, 0); /* in pieces: base offsets must line up */
    crux_sketch_accumulate(s, x + n / 3, n - n / 3, (uint32_t)(n / 3));
}

static void sketch_linearity_on(const char *isa, float *ref_table_out)
{
    use_isa(isa);
    size_t n = 100003;
    float *a = malloc(n * 4), *b = malloc(n * 4), *ab = malloc(n * 4);
    uint64_t st = 5;
    for (size_t i = 0; i < n; i++) {
        a[i] = (float)((int)(rng_next(&st) % 201) - 100);
        b[i] = (float)((int)(rng_next(&st) % 2001) - 1000);
        ab[i] = a[i] + b[i];
    }
    struct crux_sketch sa, sb, sab;
    cr_assert_eq(crux_sketch_init(&sa, 5, 777, 99), CRUX_SUCCESS);
    cr_assert_eq(crux_sketch_init(&sb, 5, 777, 99), CRUX_SUCCESS);
    cr_assert_eq(crux_sketch_init(&sab, 5, 777, 99), CRUX_SUCCESS);
    sketch_of(&sa, a, n);
    sketch_of(&sb, b, n);
    sketch_of(&sab, ab, n);
    for (size_t c = 0; c < 5 * 777; c++) {
        float sum = sa.table[c] + sb.table[c];
        cr_assert_eq(fbits(sum), fbits(sab.table[c]), "cell %zu: %g + %g != %g", c,
                     sa.table[c], sb.table[c], sab.table[c]);
    }
    if (ref_table_out)
        memcpy(ref_table_out, sab.table, 5 * 777 * 4);
    crux_sketch_free(&sa);
    crux_sketch_free(&sb);
    crux_sketch_free(&sab);
    free(a);
    free(b);
    free(ab);
}

Test(sketch, linear_on_integers_scalar) { sketch_linearity_on("scalar", NULL); }
Test(sketch, linear_on_integers_avx2) { sketch_linearity_on("avx2", NULL); }
Test(sketch, linear_on_integers_avx512) { sketch_linearity_on("avx512", NULL); }

Test(sketch, tables_identical_on_every_isa)
{
    static float t[3][5 * 777];
    const char *isas[3] = {"scalar", "avx2", "avx512"};
    int have = 0;
    for (int i = 0; i < 3; i++) {
        if (crux_codec_force_isa(isas[i]) != 0)
            continue;
        sketch_linearity_on(isas[i], t[i]);
        cr_assert_eq(memcmp(t[0], t[i], sizeof t[0]), 0, "%s table differs from scalar", isas[i]);
        have++;
    }
    cr_assert_geq(have, 1);
}

/* Against a naive per-element loop over the documented hash (codec_isa.h), on
 * non-integer values across several internal chunks: same bits, whatever the pieces. */
Test(sketch, matches_naive_loop_bit_for_bit, .timeout = 60)
{
    size_t n = 2300001;
    float *x = malloc(n * 4);
    uint64_t st = 17;
    for (size_t i = 0; i < n; i++)
        x[i] = ffrom((uint32_t)(rng_next(&st) & 0xbfffffffu)); /* finite, any sign */
    struct crux_sketch s;
    cr_assert_eq(crux_sketch_init(&s, 3, 1001, 8), CRUX_SUCCESS);
    float *naive = calloc(3 * 1001, 4);
    for (size_t i = 0; i < n; i++)
        for (int j = 0; j < 3; j++) {
            uint32_t c = codec_hash_col(s.hash_a[j], s.hash_b[j], 1001, (uint32_t)(i + 5));
            uint32_t g = codec_hash_sign(s.sign_a[j], s.sign_b[j], (uint32_t)(i + 5));
            naive[j * 1001 + c] += g ? -x[i] : x[i];
        }
    crux_sketch_accumulate(&s, x, n, 5);
    cr_assert_eq(memcmp(naive, s.table, 3 * 1001 * 4), 0, "one call");
    crux_sketch_zero(&s);
    crux_sketch_accumulate(&s, x, 1, 5);
    crux_sketch_accumulate(&s, x + 1, 1048577, 6);
    crux_sketch_accumulate(&s, x + 1048578, n - 1048578, 1048583);
    cr_assert_eq(memcmp(naive, s.table, 3 * 1001 * 4), 0, "three pieces");
    crux_sketch_free(&s);
    free(naive);
    free(x);
}

/* Columns come in runs of CODEC_SKETCH_RUN (codec_isa.h): tables narrower than a run,
 * and runs that pass the row's end, wrap cell by cell; encode and estimate agree with
 * the naive loop and with query there too, from a base that is not run-aligned. */
Test(sketch, narrow_tables_and_runs_past_the_row_end)
{
    enum { N = 777, ROWS = 3 };
    static const int widths[] = {1, 7, 15, 16, 17, 33};
    float x[N], est[N];
    for (size_t i = 0; i < N; i++)
        x[i] = (float)((int)(i * 37 % 201) - 100);
    for (size_t w = 0; w < sizeof widths / sizeof widths[0]; w++) {
        int cols = widths[w];
        struct crux_sketch s;
        cr_assert_eq(crux_sketch_init(&s, ROWS, cols, 40 + w), CRUX_SUCCESS);
        float naive[ROWS * 33] = {0};
        for (size_t i = 0; i < N; i++)
            for (int j = 0; j < ROWS; j++) {
                uint32_t c = codec_hash_col(s.hash_a[j], s.hash_b[j], (uint32_t)cols, (uint32_t)(i + 9));
                uint32_t g = codec_hash_sign(s.sign_a[j], s.sign_b[j], (uint32_t)(i + 9));
                cr_assert_lt(c, (uint32_t)cols);
                naive[j * cols + c] += g ? -x[i] : x[i];
            }
        crux_sketch_accumulate(&s, x, N, 9);
        cr_assert_eq(memcmp(naive, s.table, (size_t)ROWS * cols * 4), 0, "cols %d", cols);
        /* Runs wrap the same way on both sides: estimate index t as a table built at
         * base 0 sees it, against query of the same index. */
        crux_sketch_zero(&s);
        crux_sketch_accumulate(&s, x, N, 0);
        crux_sketch_estimate(&s, N, est);
        for (size_t i = 0; i < N; i++)
            cr_assert_eq(memcmp(&est[i], &(float){crux_sketch_query(&s, (uint32_t)i)}, 4), 0,
                         "cols %d index %zu", cols, i);
        crux_sketch_free(&s);
    }
}

/* The 16 indices of one run land on 16 different columns of a row at least that wide
 * (so they never add into each other's cell); indices of different runs spread over
 * the whole row. */
Test(sketch, one_run_never_shares_a_column)
{
    enum { COLS = 1000, RUNS = 4096 };
    struct crux_sketch s;
    cr_assert_eq(crux_sketch_init(&s, 2, COLS, 12), CRUX_SUCCESS);
    static unsigned hits[COLS];
    for (int j = 0; j < 2; j++) {
        memset(hits, 0, sizeof hits);
        for (uint32_t r = 0; r < RUNS; r++) {
            uint32_t seen[16];
            for (uint32_t q = 0; q < 16; q++) {
                seen[q] = codec_hash_col(s.hash_a[j], s.hash_b[j], COLS, r * 16 + q);
                for (uint32_t p = 0; p < q; p++)
                    cr_assert_neq(seen[p], seen[q], "row %d run %u", j, r);
                hits[seen[q]]++;
            }
        }
        for (int c = 0; c < COLS; c++) /* 65.5 per column on average */
            cr_assert(hits[c] > 0, "row %d: column %d never used", j, c);
    }
    crux_sketch_free(&s);
}

/* Global indices that pass 2^32-1 wrap to 0 (uint32_t), on every ISA: the vector paths
 * step a*i + b by adds and must split the block there. */
Test(sketch, index_wrap_matches_naive_on_every_isa)
{
    enum { N = 1000, ROWS = 3, COLS = 97 };
    const uint32_t base = UINT32_MAX - 436;
    float x[N], naive[ROWS * COLS] = {0};
    uint64_t st = 23;
    for (size_t i = 0; i < N; i++)
        x[i] = (float)((int)(rng_next(&st) % 2001) - 1000) / 8;
    struct crux_sketch s;
    cr_assert_eq(crux_sketch_init(&s, ROWS, COLS, 6), CRUX_SUCCESS);
    for (size_t i = 0; i < N; i++)
        for (int j = 0; j < ROWS; j++) {
            uint32_t gi = base + (uint32_t)i;
            uint32_t c = codec_hash_col(s.hash_a[j], s.hash_b[j], COLS, gi);
            uint32_t g = codec_hash_sign(s.sign_a[j], s.sign_b[j], gi);
            naive[j * COLS + c] += g ? -x[i] : x[i];
        }
    const char *isas[3] = {"scalar", "avx2", "avx512"};
    for (int k = 0; k < 3; k++) {
        if (crux_codec_force_isa(isas[k]) != 0)
            continue;
        crux_sketch_zero(&s);
        crux_sketch_accumulate(&s, x, N, base);
        cr_assert_eq(memcmp(naive, s.table, sizeof naive), 0, "%s", isas[k]);
    }
    crux_sketch_free(&s);
}

/* crux_sketch_estimate hashes a block per row with the active ISA; crux_sketch_query
 * hashes one index in scalar code: the same bits for every element, on every ISA. */
Test(sketch, estimate_equals_query_on_every_isa)
{
    enum { N = 5003, COLS = 61 };
    static float x[N], est[N];
    uint64_t st = 31;
    for (size_t i = 0; i < N; i++)
        x[i] = (float)((int)(rng_next(&st) % 2001) - 1000) / 16;
    const char *isas[3] = {"scalar", "avx2", "avx512"};
    for (int rows = 3; rows <= 4; rows++) {
        struct crux_sketch s;
        cr_assert_eq(crux_sketch_init(&s, rows, COLS, 12), CRUX_SUCCESS);
        for (int k = 0; k < 3; k++) {
            if (crux_codec_force_isa(isas[k]) != 0)
                continue;
            crux_sketch_zero(&s);
            crux_sketch_accumulate(&s, x, N, 0);
            crux_sketch_estimate(&s, N, est);
            for (uint32_t i = 0; i < N; i++)
                cr_assert_eq(fbits(est[i]), fbits(crux_sketch_query(&s, i)), "%s rows=%d i=%u",
                             isas[k], rows, i);
        }
        crux_sketch_free(&s);
    }
}

Test(sketch, query_is_the_median_of_rows)
{
    struct crux_sketch s;
    for (int rows = 3; rows <= 4; rows++) {
        cr_assert_eq(crux_sketch_init(&s, rows, 101, 7), CRUX_SUCCESS);
        const float row_est[4] = {1, 5, 3, 10};
        uint32_t i = 12345;
        for (int j = 0; j < rows; j++) {
            uint32_t c = codec_hash_col(s.hash_a[j], s.hash_b[j], 101, i);
            uint32_t g = codec_hash_sign(s.sign_a[j], s.sign_b[j], i);
            s.table[j * 101 + c] = g ? -row_est[j] : row_est[j];
        }
        float q = crux_sketch_query(&s, i);
        cr_assert_eq(q, rows == 3 ? 3.0f : 4.0f, "rows=%d: %g", rows, q);
        crux_sketch_free(&s);
    }
    /* a single element comes back exactly, with any number of rows */
    for (int rows = 1; rows <= 8; rows++) {
        cr_assert_eq(crux_sketch_init(&s, rows, 64, 3), CRUX_SUCCESS);
        float x[40] = {0};
        x[17] = -7.5f;
        crux_sketch_accumulate(&s, x, 40, 1000);
        cr_assert_eq(crux_sketch_query(&s, 1017), -7.5f, "rows=%d", rows);
        crux_sketch_free(&s);
    }
}

Test(sketch, heavy_hitters_recovered_and_estimate_matches_query)
{
    size_t n = 200000;
    float *x = malloc(n * 4), *est = malloc(n * 4);
    uint64_t st = 11;
    for (size_t i = 0; i < n; i++)
        x[i] = (float)((int)(rng_next(&st) % 3) - 1); /* noise in {-1, 0, 1} */
    const uint32_t planted[] = {17, 4242, 99999, 123456, 199999};
    for (int j = 0; j < 5; j++)
        x[planted[j]] = (j & 1 ? -1.0f : 1.0f) * (float)(5000 + 1000 * j);
    struct crux_sketch s;
    struct crux_topk_ws *ws;
    cr_assert_eq(crux_sketch_init(&s, 5, 8192, 2024), CRUX_SUCCESS);
    cr_assert_eq(crux_topk_ws_create(n, 16, &ws), CRUX_SUCCESS);
    crux_sketch_accumulate(&s, x, n, 0);
    uint32_t idx[5];
    cr_assert_eq(crux_sketch_heavy(&s, n, 5, 1, ws, est, idx), 5);
    for (int j = 0; j < 5; j++)
        cr_assert_eq(idx[j], planted[j], "heavy %d: %u", j, idx[j]);
    for (size_t i = 0; i < n; i += 997)
        cr_assert_eq(fbits(est[i]), fbits(crux_sketch_query(&s, (uint32_t)i)), "i=%zu", i);
    for (int j = 0; j < 5; j++)
        cr_assert_eq(fbits(est[planted[j]]), fbits(crux_sketch_query(&s, planted[j])));
    crux_topk_ws_free(ws);
    crux_sketch_free(&s);
    free(x);
    free(est);
}

/* ---- memories ---- */

Test(memory, accumulate_and_residual)
{
    const float mem[] = {1, 2, 3, 4}, grad[] = {10, -20, 0.5f, 0};
    float acc[4], m2[4];
    crux_mem_accumulate(acc, mem, grad, 4);
    cr_assert(acc[0] == 11 && acc[1] == -18 && acc[2] == 3.5f && acc[3] == 4);
    const uint32_t idx[] = {1, 3};
    crux_mem_residual(m2, acc, idx, 2, 4);
    cr_assert(m2[0] == 11 && m2[1] == 0 && m2[2] == 3.5f && m2[3] == 0);
    crux_mem_residual(acc, acc, idx, 1, 4); /* in place */
    cr_assert(acc[0] == 11 && acc[1] == 0 && acc[3] == 4);
}

Test(memory, lowpass_exact_values)
{
    float mem[] = {2, 4, 6, 8, 10};
    const float acc[] = {10, 20, 30, 40, 50};
    const uint32_t idx[] = {1, 3};
    crux_mem_lowpass(mem, acc, idx, 2, 5, 0.5f);
    const float want[] = {6, 2, 18, 4, 30};
    for (int i = 0; i < 5; i++)
        cr_assert_eq(mem[i], want[i], "mem[%d] = %g", i, mem[i]);
    float m0[] = {1, 2, 3};
    crux_mem_lowpass(m0, acc, idx, 0, 3, 0.25f); /* nothing sent */
    cr_assert(m0[0] == 3.25f && m0[1] == 6.5f && m0[2] == 9.75f);
}

Test(memory, lowpass_beta_one_is_residual_bit_for_bit)
{
    size_t n = 4099;
    float *acc = malloc(n * 4), *m1 = malloc(n * 4), *m2 = malloc(n * 4);
    uint32_t idx[100];
    uint64_t st = 3;
    for (size_t i = 0; i < n; i++) {
        acc[i] = ffrom((uint32_t)rng_next(&st));
        m1[i] = m2[i] = ffrom((uint32_t)rng_next(&st));
    }
    acc[0] = -0.0f; /* (1-1)*m + 1*acc would give +0 */
    m1[1] = m2[1] = INFINITY; /* and NaN here */
    for (int j = 0; j < 100; j++)
        idx[j] = (uint32_t)(j * 40 + 3);
    crux_mem_residual(m1, acc, idx, 100, n);
    crux_mem_lowpass(m2, acc, idx, 100, n, 1.0f);
    cr_assert_eq(memcmp(m1, m2, n * 4), 0);
    free(acc);
    free(m1);
    free(m2);
}

Test(memory, dgc_momentum_and_masking)
{
    float u[] = {1, 2, -4}, v[] = {0, 1, 1};
    const float g[] = {1, 1, 2};
    crux_mem_momentum(u, v, g, 3, 0.5f);
    cr_assert(u[0] == 1.5f && u[1] == 2 && u[2] == 0);
    cr_assert(v[0] == 1.5f && v[1] == 3 && v[2] == 1);
    crux_mem_momentum(u, v, g, 3, 0.5f);
    cr_assert(u[0] == 1.75f && u[1] == 2 && u[2] == 2);
    cr_assert(v[0] == 3.25f && v[1] == 5 && v[2] == 3);
    const uint32_t idx[] = {1};
    crux_mem_momentum_mask(u, v, idx, 1);
    cr_assert(u[0] == 1.75f && u[1] == 0 && u[2] == 2 && v[1] == 0 && v[2] == 3);
}
