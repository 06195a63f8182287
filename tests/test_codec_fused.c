/* test_codec_fused.c - the fused error-feedback selection (crux_topk_acc, crux_topk_ef)
 * against the unfused reference crux_mem_accumulate + crux_topk (itself checked against a
 * brute-force sort in test_codec.c): bit-identical indices, values, accumulator and
 * memory on every ISA and every path through crux_topk; and the fused compaction kernels
 * against the scalar one. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "codec/codec.h"
#include "codec/codec_isa.h"
#include "crux.h"

static uint64_t rng_next(uint64_t *s) /* splitmix64 */
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void use_isa(const char *isa)
{
    if (crux_codec_force_isa(isa) != 0)
        cr_skip_test("this CPU cannot run the %s codec kernels", isa);
}

enum dist { D_HEAVY, D_SMALL_INTS, D_WITH_NAN, D_NDIST };

/* Heavy-tailed floats, small integers (ties everywhere, survivors overflow the
 * workspace) or floats with NaNs and infinities. */
static void fill(float *x, size_t n, enum dist d, uint64_t seed)
{
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++) {
        uint64_t r = rng_next(&s);
        double u = ((double)(r >> 40) + 0.5) / (double)(1ull << 24);
        double v = (double)((r >> 8) & 0xffff) / 65536.0 - 0.5;
        switch (d) {
        case D_HEAVY: x[i] = (float)(v / u * 1e-3); break;
        case D_SMALL_INTS: x[i] = (float)((int)(r % 9) - 4); break;
        default: x[i] = r % 4099 == 0 ? NAN : r % 4111 == 0 ? -INFINITY : (float)(v / u); break;
        }
    }
}

struct bufs {
    float *mem, *grad, *acc, *acc_ref, *val, *val_ref;
    uint32_t *idx, *idx_ref;
    float *out; /* 64-byte aligned, n + 17 floats: out + 0 streams, out + 1 does not */
};

static struct bufs bufs_new(size_t n)
{
    struct bufs b = {malloc(n * 4), malloc(n * 4), malloc(n * 4), malloc(n * 4),
                     malloc(n * 4), malloc(n * 4), malloc(n * 4), malloc(n * 4),
                     aligned_alloc(64, (n + 17 + 15) / 16 * 64)};
    cr_assert(b.mem && b.grad && b.acc && b.acc_ref && b.val && b.val_ref && b.idx && b.idx_ref &&
              b.out);
    return b;
}

static void bufs_free(struct bufs *b)
{
    free(b->mem); free(b->grad); free(b->acc); free(b->acc_ref);
    free(b->val); free(b->val_ref); free(b->idx); free(b->idx_ref); free(b->out);
}

/* x[0..n) all +0 (bit pattern), x[n] still the 0xa5 fill. */
static void expect_zeroed(const float *x, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &x[i], 4);
        cr_assert_eq(bits, 0u, "%s: out[%zu] of %zu not zeroed", what, i, n);
    }
    uint32_t after;
    memcpy(&after, &x[n], 4);
    cr_assert_eq(after, 0xa5a5a5a5u, "%s: out[%zu] written past the end", what, n);
}

/* crux_topk_acc (acc separate, then in place) and crux_topk_ef against the reference. */
static void check_fused(struct bufs *b, size_t n, size_t k, uint64_t seed, struct crux_topk_ws *ws,
                        int *paths)
{
    crux_mem_accumulate(b->acc_ref, b->mem, b->grad, n);
    size_t want = crux_topk(b->acc_ref, n, k, seed, ws, b->idx_ref, b->val_ref);

    /* without out, then zeroing an aligned (streamed) and a misaligned out in the pass */
    for (int o = -1; o <= 1; o++) {
        float *out = o < 0 ? NULL : b->out + o;
        memset(b->acc, 0xa5, n * 4);
        if (out)
            memset(out, 0xa5, (n + 1) * 4);
        size_t got = crux_topk_acc(b->acc, b->mem, b->grad, out, n, k, seed, ws, b->idx, b->val);
        if (ws && k > 0 && k < n && o < 0)
            paths[codec_topk_last_path(ws)]++;
        cr_assert_eq(got, want, "n=%zu k=%zu out %d", n, k, o);
        cr_assert_eq(memcmp(b->idx, b->idx_ref, got * 4), 0, "n=%zu k=%zu: indices", n, k);
        cr_assert_eq(memcmp(b->val, b->val_ref, got * 4), 0, "n=%zu k=%zu: values", n, k);
        cr_assert_eq(memcmp(b->acc, b->acc_ref, n * 4), 0, "n=%zu k=%zu: accumulator", n, k);
        if (out)
            expect_zeroed(out, n, "crux_topk_acc");
    }
    /* out = grad (the in-place call): grad is read before it is zeroed */
    memcpy(b->out, b->grad, n * 4);
    memset(b->out + n, 0xa5, 4);
    size_t got = crux_topk_acc(b->acc, b->mem, b->out, b->out, n, k, seed, ws, b->idx, b->val);
    cr_assert_eq(got, want);
    cr_assert_eq(memcmp(b->idx, b->idx_ref, got * 4), 0, "n=%zu k=%zu: out = grad indices", n, k);
    cr_assert_eq(memcmp(b->val, b->val_ref, got * 4), 0, "n=%zu k=%zu: out = grad values", n, k);
    cr_assert_eq(memcmp(b->acc, b->acc_ref, n * 4), 0, "n=%zu k=%zu: out = grad acc", n, k);
    expect_zeroed(b->out, n, "crux_topk_acc out = grad");

    /* error feedback in place: mem ends as acc with the selected entries zeroed */
    memcpy(b->acc, b->mem, n * 4);
    got = crux_topk_ef(b->acc, b->grad, n, k, seed, ws, b->idx, b->val);
    cr_assert_eq(got, want);
    cr_assert_eq(memcmp(b->idx, b->idx_ref, got * 4), 0, "n=%zu k=%zu: ef indices", n, k);
    cr_assert_eq(memcmp(b->val, b->val_ref, got * 4), 0);
    crux_zero_at(b->acc_ref, b->idx_ref, want);
    cr_assert_eq(memcmp(b->acc, b->acc_ref, n * 4), 0, "n=%zu k=%zu: memory", n, k);
}

static void fused_vs_unfused_on(const char *isa)
{
    use_isa(isa);
    static const size_t sizes[] = {1, 100, 8193, 65537, 300001};
    struct crux_topk_ws *ws;
    cr_assert_eq(crux_topk_ws_create(300001, 6000, &ws), CRUX_SUCCESS);
    struct bufs b = bufs_new(300001);
    int paths[4] = {0};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        size_t n = sizes[si];
        for (int d = 0; d < D_NDIST; d++) {
            fill(b.mem, n, (enum dist)d, 10 * si + (uint64_t)d);
            fill(b.grad, n, (enum dist)d, 1000 + 10 * si + (uint64_t)d);
            const size_t ks[] = {0, 1, n / 1000 + 1, n / 100 + 3, n - 1, n, 7000};
            for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++)
                check_fused(&b, n, ks[ki], 5 + ki, ws, paths);
        }
    }
    /* a negative margin makes the first (fused) pass come up short: the retry reads acc */
    fill(b.mem, 300001, D_HEAVY, 91);
    fill(b.grad, 300001, D_HEAVY, 92);
    codec_topk_set_margin(ws, -4.0);
    for (uint64_t seed = 0; seed < 6; seed++)
        check_fused(&b, 300001, 3000, seed, ws, paths);
    check_fused(&b, 300001, 30, 1, NULL, paths); /* no workspace */
    /* ties everywhere and a small workspace: the survivors overflow it, exact fallback */
    struct crux_topk_ws *small;
    cr_assert_eq(crux_topk_ws_create(300001, 400, &small), CRUX_SUCCESS);
    fill(b.mem, 300001, D_SMALL_INTS, 93);
    fill(b.grad, 300001, D_SMALL_INTS, 94);
    check_fused(&b, 300001, 301, 1, small, paths);
    crux_topk_ws_free(small);
    for (int p = 0; p < 4; p++)
        cr_assert_gt(paths[p], 0, "path %d never taken", p);
    bufs_free(&b);
    crux_topk_ws_free(ws);
}

Test(fused, same_as_unfused_scalar, .timeout = 60) { fused_vs_unfused_on("scalar"); }
Test(fused, same_as_unfused_avx2, .timeout = 60) { fused_vs_unfused_on("avx2"); }
Test(fused, same_as_unfused_avx512, .timeout = 60) { fused_vs_unfused_on("avx512"); }

/* The fused compaction kernels directly: same survivors as the unfused scalar kernel on
 * mem + grad, acc complete even on overflow, tails of every length, in place too; with
 * zero set, exactly the recorded survivors (the first cap on overflow) are stored as +0. */
typedef size_t (*compact_acc_fn)(float *, const float *, const float *, size_t, uint32_t,
                                 uint32_t *, float *, size_t, int, float *);

static void expect_acc(const float *a, const float *ref, size_t n, const uint32_t *rec, size_t nrec,
                       int zero, const char *what, size_t cap)
{
    size_t r = 0;
    for (size_t i = 0; i < n; i++) {
        int z = zero && r < nrec && rec[r] == i;
        r += r < nrec && rec[r] == i;
        uint32_t got, want;
        float w = z ? 0.0f : ref[i];
        memcpy(&got, &a[i], 4);
        memcpy(&want, &w, 4);
        cr_assert_eq(got, want, "%s: acc[%zu] (n=%zu cap=%zu zero=%d)", what, i, n, cap, zero);
    }
}

static void compact_acc_matches(const char *isa)
{
    use_isa(isa);
    compact_acc_fn fn = !strcmp(isa, "avx512") ? codec_compact_acc_avx512
                        : !strcmp(isa, "avx2") ? codec_compact_acc_avx2 : codec_compact_acc_scalar;
    enum { N = 300 };
    float m[N], g[N], a[N], ref[N], inplace[N], gz[N + 1];
    _Alignas(64) float o[N + 2];
    uint32_t i1[N + 1], i2[N + 1];
    float v1[N + 1], v2[N + 1];
    fill(m, N, D_SMALL_INTS, 3);
    fill(g, N, D_SMALL_INTS, 4);
    m[5] = NAN;
    g[299] = -INFINITY;
    for (size_t i = 0; i < N; i++)
        ref[i] = m[i] + g[i];
    const uint32_t thrs[] = {0, 0x3f800000u /* 1.0 */, 0x40e00000u /* 7.0 */, 0x7f800000u, 0x7f800001u};
    for (int zero = 0; zero < 2; zero++)
        for (size_t n = 0; n <= N; n++)
            for (size_t t = 0; t < sizeof thrs / sizeof thrs[0]; t++) {
                size_t want = codec_compact_scalar(ref, n, thrs[t], i1, v1, N);
                for (size_t cap = want > 3 ? want - 3 : 0; cap <= want + 70 && cap <= N; cap++) {
                    /* out: none, line-aligned (streamed), misaligned */
                    int oo = (int)(cap % 3) - 1;
                    float *out = oo < 0 ? NULL : o + oo;
                    memset(a, 0xa5, sizeof a);
                    memset(o, 0xa5, sizeof o);
                    size_t got = fn(a, m, g, n, thrs[t], i2, v2, cap, zero, out);
                    size_t rec = want > cap ? cap : want;
                    cr_assert_eq(got, want > cap ? cap + 1 : want, "n=%zu thr=%x cap=%zu", n, thrs[t], cap);
                    cr_assert_eq(memcmp(i1, i2, rec * 4), 0, "n=%zu cap=%zu: recorded indices", n, cap);
                    cr_assert_eq(memcmp(v1, v2, rec * 4), 0, "n=%zu cap=%zu: recorded values", n, cap);
                    expect_acc(a, ref, n, i1, rec, zero, isa, cap);
                    if (out)
                        expect_zeroed(out, n, isa);
                }
                /* out = grad: every grad element read before its zero is stored, also
                 * past an overflow (cap one short) */
                for (size_t cap = want ? want - 1 : 0; cap <= want; cap++) {
                    memcpy(gz, g, sizeof g);
                    memset(gz + n, 0xa5, 4);
                    memset(a, 0xa5, sizeof a);
                    size_t kept = fn(a, m, gz, n, thrs[t], i2, v2, cap, zero, gz);
                    size_t rec = want > cap ? cap : want;
                    cr_assert_eq(kept, want > cap ? cap + 1 : want, "out = grad: n=%zu cap=%zu", n, cap);
                    cr_assert_eq(memcmp(i1, i2, rec * 4), 0, "out = grad: n=%zu indices", n);
                    expect_acc(a, ref, n, i1, rec, zero, "out = grad", cap);
                    expect_zeroed(gz, n, "out = grad");
                }
                for (size_t cap = want > 40 ? want - 40 : 0; cap <= want; cap++) { /* in place */
                    memcpy(inplace, m, sizeof inplace);
                    size_t got = fn(inplace, inplace, g, n, thrs[t], i2, v2, cap, zero, NULL);
                    cr_assert_eq(got, want > cap ? cap + 1 : want);
                    expect_acc(inplace, ref, n, i1, want > cap ? cap : want, zero, "in place", cap);
                }
            }
}

/* crux_mem_accumulate_zero: acc as crux_mem_accumulate, out zeroed exactly over n, for
 * every tail length, aligned (streamed) and misaligned out, and out = grad. */
static void acc_zero_matches(const char *isa)
{
    use_isa(isa);
    enum { N = 300 };
    float m[N], g[N], a[N], ref[N], gz[N + 1];
    _Alignas(64) float o[N + 2];
    fill(m, N, D_WITH_NAN, 5);
    fill(g, N, D_HEAVY, 6);
    crux_mem_accumulate(ref, m, g, N);
    for (size_t n = 0; n <= N; n++) {
        for (int oo = 0; oo < 2; oo++) {
            memset(a, 0xa5, sizeof a);
            memset(o, 0xa5, sizeof o);
            crux_mem_accumulate_zero(a, m, g, o + oo, n);
            cr_assert_eq(memcmp(a, ref, n * 4), 0, "%s n=%zu: acc", isa, n);
            expect_zeroed(o + oo, n, isa);
        }
        memcpy(gz, g, sizeof g);
        memset(gz + n, 0xa5, 4);
        crux_mem_accumulate_zero(a, m, gz, gz, n);
        cr_assert_eq(memcmp(a, ref, n * 4), 0, "%s n=%zu: acc with out = grad", isa, n);
        expect_zeroed(gz, n, "out = grad");
        memcpy(a, m, sizeof m); /* acc = mem (in-place memory), out NULL */
        crux_mem_accumulate_zero(a, a, g, NULL, n);
        cr_assert_eq(memcmp(a, ref, n * 4), 0, "%s n=%zu: in place, no out", isa, n);
    }
}

Test(acc_zero, scalar) { acc_zero_matches("scalar"); }
Test(acc_zero, avx2) { acc_zero_matches("avx2"); }
Test(acc_zero, avx512) { acc_zero_matches("avx512"); }

Test(compact_acc, scalar_matches_unfused) { compact_acc_matches("scalar"); }
Test(compact_acc, avx2_matches_unfused) { compact_acc_matches("avx2"); }
Test(compact_acc, avx512_matches_unfused) { compact_acc_matches("avx512"); }

/* The AVX-512 fix-up sweep: key > t plus the first `ties` keys == t, in order; NaN keys
 * above +inf; outputs sized exactly (ASan sees a write past them), either may be NULL. */
Test(sweep, avx512_matches_reference)
{
    use_isa("avx512");
    enum { M = 203 };
    float v[M];
    uint32_t ix[M];
    fill(v, M, D_SMALL_INTS, 8);
    v[17] = NAN;
    v[18] = -NAN;
    v[150] = INFINITY;
    for (size_t j = 0; j < M; j++)
        ix[j] = (uint32_t)(3 * j + 1);
    const uint32_t ts[] = {0, 0x3f800000u, 0x40400000u, 0x40800000u, 0x7f800000u, 0x7f800001u};
    for (size_t m = 0; m <= M; m += (m < 40 ? 1 : 13))
        for (size_t a = 0; a < sizeof ts / sizeof ts[0]; a++)
            for (size_t ties = 0; ties < 40; ties += 3) {
                uint32_t want_i[M];
                float want_v[M];
                size_t w = 0, left = ties;
                for (size_t j = 0; j < m; j++) {
                    uint32_t b;
                    memcpy(&b, &v[j], 4);
                    uint32_t key = codec_key_bits(b);
                    if (key > ts[a] || (key == ts[a] && left > 0)) {
                        left -= key == ts[a];
                        want_i[w] = ix[j];
                        want_v[w++] = v[j];
                    }
                }
                uint32_t *oi = malloc((w ? w : 1) * 4);
                float *ov = malloc((w ? w : 1) * 4);
                cr_assert_eq(codec_sweep_avx512(ix, v, m, ts[a], ties, oi, ov, NULL), w);
                cr_assert_eq(memcmp(oi, want_i, w * 4), 0, "m=%zu t=%x ties=%zu", m, ts[a], ties);
                cr_assert_eq(memcmp(ov, want_v, w * 4), 0, "m=%zu t=%x ties=%zu", m, ts[a], ties);
                /* with restore: the entries not kept land at their indices, nothing else */
                float back[3 * M + 2];
                memset(back, 0xa5, sizeof back);
                cr_assert_eq(codec_sweep_avx512(ix, v, m, ts[a], ties, oi, NULL, back), w);
                cr_assert_eq(memcmp(oi, want_i, w * 4), 0);
                for (size_t j = 0, kk = 0; j < m; j++) {
                    int kept = kk < w && want_i[kk] == ix[j];
                    kk += kept;
                    uint32_t got_b, want_b = kept ? 0xa5a5a5a5u : 0;
                    if (!kept)
                        memcpy(&want_b, &v[j], 4);
                    memcpy(&got_b, &back[ix[j]], 4);
                    cr_assert_eq(got_b, want_b, "m=%zu t=%x ties=%zu j=%zu: restore", m, ts[a], ties, j);
                }
                free(oi);
                free(ov);
            }
}
