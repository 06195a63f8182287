/* test_codec_pool.c - the encode worker pool (lib/codec/pool.h) and the kernels that use
 * it: every part runs exactly once per job, the ranges tile [0, n), and pooled kernels
 * give bit-identical results to one thread. */
#include <criterion/criterion.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "codec/codec.h"
#include "codec/codec_isa.h"
#include "codec/pool.h"
#include "codec/qsgd.h"
#include "crux.h"
#include "crux_internal.h"
#include "lib/compress.h"

static int cpuset_count(void)
{
    cpu_set_t s;
    cr_assert_eq(sched_getaffinity(0, sizeof s, &s), 0);
    return CPU_COUNT(&s);
}

/* Pools of `want` threads; skips when the cpuset is too small to give that many. */
static struct crux_pool *pool_of(int want)
{
    if (cpuset_count() < want)
        cr_skip_test("the cpuset has %d cores, the test needs %d", cpuset_count(), want);
    struct crux_pool *p;
    cr_assert_eq(crux_pool_create(want, &p), CRUX_SUCCESS);
    cr_assert_eq(crux_pool_size(p), want);
    return p;
}

struct count_job {
    int hits[64];
    int nparts_seen;
};

static void count_part(void *arg, int part, int nparts)
{
    struct count_job *j = arg;
    j->hits[part]++; /* each part owns its slot: no race */
    if (part == 0)
        j->nparts_seen = nparts;
}

Test(pool, sizes_follow_the_cpuset_and_the_request)
{
    struct crux_pool *p;
    cr_assert_eq(crux_pool_create(0, &p), CRUX_SUCCESS);
    cr_assert_eq(crux_pool_size(p), cpuset_count());
    crux_pool_free(p);
    cr_assert_eq(crux_pool_create(1000, &p), CRUX_SUCCESS);
    cr_assert_eq(crux_pool_size(p), cpuset_count() < 64 ? cpuset_count() : 64);
    crux_pool_free(p);
    cr_assert_eq(crux_pool_create(1, &p), CRUX_SUCCESS);
    cr_assert_eq(crux_pool_size(p), 1);
    crux_pool_free(p);
    cr_assert_eq(crux_pool_create(-1, &p), CRUX_ERR_ARG);
    cr_assert_null(p);
    cr_assert_eq(crux_pool_size(NULL), 1);
    crux_pool_free(NULL);
}

Test(pool, every_part_runs_once_per_job, .timeout = 60)
{
    struct crux_pool *p = pool_of(2);
    struct count_job j;
    memset(&j, 0, sizeof j);
    /* many short jobs: exercises both the spinning and the sleeping hand-over */
    for (int r = 0; r < 20000; r++)
        crux_pool_run(p, count_part, &j);
    cr_assert_eq(j.nparts_seen, 2);
    cr_assert_eq(j.hits[0], 20000);
    cr_assert_eq(j.hits[1], 20000);
    cr_assert_eq(j.hits[2], 0);
    crux_pool_free(p);
    memset(&j, 0, sizeof j);
    crux_pool_run(NULL, count_part, &j);
    cr_assert_eq(j.hits[0], 1);
    cr_assert_eq(j.nparts_seen, 1);
}

Test(pool, ranges_tile_and_align)
{
    static const size_t ns[] = {0, 1, 7, 64, 1000, 1 << 20, 12345679};
    for (size_t a = 0; a < sizeof ns / sizeof ns[0]; a++)
        for (int np = 1; np <= 5; np++) {
            size_t at = 0;
            for (int part = 0; part < np; part++) {
                size_t lo, hi;
                crux_pool_range(ns[a], 64, part, np, &lo, &hi);
                cr_assert_eq(lo, at, "n=%zu np=%d part=%d", ns[a], np, part);
                cr_assert_leq(lo, hi);
                if (hi != ns[a])
                    cr_assert_eq(hi % 64, 0);
                at = hi;
            }
            cr_assert_eq(at, ns[a]);
        }
}

/* ---- pooled kernels: bit-identical to one thread ---- */

static uint64_t rng_next(uint64_t *s) /* splitmix64 */
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void fill_heavy(float *x, size_t n, uint64_t seed)
{
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++) {
        uint64_t r = rng_next(&s);
        double u = ((double)(r >> 40) + 0.5) / (double)(1ull << 24);
        double v = (double)((r >> 8) & 0xffff) / 65536.0 - 0.5;
        x[i] = (float)(v / u * 1e-3);
    }
}

/* x[0..n) all +0 and x[n] still the 0xa5 fill (each part zeroed exactly its range). */
static void expect_zeroed(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &x[i], 4);
        cr_assert_eq(bits, 0u, "out[%zu] of %zu not zeroed", i, n);
    }
    uint32_t after;
    memcpy(&after, &x[n], 4);
    cr_assert_eq(after, 0xa5a5a5a5u, "out[%zu] written past the end", n);
}

/* Survivors near the part boundary and a planted cluster in the second half: the joined
 * per-part lists must be exactly the one-thread list (and the pooled pass zeroes out). */
Test(pool, topk_and_fused_topk_bit_identical_to_one_thread, .timeout = 60)
{
    struct crux_pool *p = pool_of(2);
    const size_t N = 1000003;
    float *m = malloc(N * 4), *g = malloc(N * 4), *a1 = malloc(N * 4), *a2 = malloc(N * 4);
    float *v1 = malloc(N * 4), *v2 = malloc(N * 4);
    uint32_t *i1 = malloc(N * 4), *i2 = malloc(N * 4);
    float *o = aligned_alloc(64, (N + 16) / 16 * 64); /* the dense output zeroed in the pass */
    cr_assert(m && g && a1 && a2 && v1 && v2 && i1 && i2 && o);
    fill_heavy(m, N, 1);
    fill_heavy(g, N, 2);
    for (size_t i = N / 2 - 40; i < N / 2 + 4000; i += 3)
        g[i] = 50.0f; /* ties at the top, straddling the split */
    struct crux_topk_ws *w1, *w2;
    cr_assert_eq(crux_topk_ws_create(N, 20000, &w1), CRUX_SUCCESS);
    cr_assert_eq(crux_topk_ws_create(N, 20000, &w2), CRUX_SUCCESS);
    cr_assert_eq(crux_topk_ws_use_pool(w2, p), CRUX_SUCCESS);
    static const size_t ns[] = {8192, 16383, 100000, 1000003};
    static const size_t ks[] = {1, 100, 1001, 1400, 10000, 20000};
    for (size_t a = 0; a < sizeof ns / sizeof ns[0]; a++)
        for (size_t b = 0; b < sizeof ks / sizeof ks[0]; b++) {
            size_t n = ns[a], k = ks[b];
            size_t c1 = crux_topk(g, n, k, 3, w1, i1, v1), c2 = crux_topk(g, n, k, 3, w2, i2, v2);
            cr_assert_eq(c1, c2, "n=%zu k=%zu", n, k);
            cr_assert_eq(codec_topk_last_path(w1), codec_topk_last_path(w2));
            cr_assert_eq(memcmp(i1, i2, c1 * 4), 0, "n=%zu k=%zu: indices", n, k);
            cr_assert_eq(memcmp(v1, v2, c1 * 4), 0, "n=%zu k=%zu: values", n, k);
            memset(o, 0xa5, (n + 1) * 4);
            c1 = crux_topk_acc(a1, m, g, NULL, n, k, 4, w1, i1, v1);
            c2 = crux_topk_acc(a2, m, g, o, n, k, 4, w2, i2, v2);
            cr_assert_eq(c1, c2, "n=%zu k=%zu", n, k);
            expect_zeroed(o, n);
            cr_assert_eq(memcmp(i1, i2, c1 * 4), 0, "n=%zu k=%zu: fused indices", n, k);
            cr_assert_eq(memcmp(v1, v2, c1 * 4), 0, "n=%zu k=%zu: fused values", n, k);
            cr_assert_eq(memcmp(a1, a2, n * 4), 0, "n=%zu k=%zu: accumulator", n, k);
            memcpy(a1, m, n * 4);
            memcpy(a2, m, n * 4);
            c1 = crux_topk_ef(a1, g, n, k, 5, w1, i1, v1);
            c2 = crux_topk_ef(a2, g, n, k, 5, w2, i2, v2);
            cr_assert_eq(c1, c2, "n=%zu k=%zu", n, k);
            cr_assert_eq(memcmp(i1, i2, c1 * 4), 0, "n=%zu k=%zu: EF indices", n, k);
            cr_assert_eq(memcmp(a1, a2, n * 4), 0, "n=%zu k=%zu: EF memory", n, k);
        }
    /* survivors overflow a small workspace under the pool: zeroed survivors restored */
    struct crux_topk_ws *s1, *s2;
    cr_assert_eq(crux_topk_ws_create(N, 100, &s1), CRUX_SUCCESS);
    cr_assert_eq(crux_topk_ws_create(N, 100, &s2), CRUX_SUCCESS);
    cr_assert_eq(crux_topk_ws_use_pool(s2, p), CRUX_SUCCESS);
    for (size_t i = 0; i < N; i++)
        a1[i] = (float)(int)(i % 7), a2[i] = a1[i]; /* ties everywhere */
    float *zeros = calloc(N, 4);
    cr_assert(zeros);
    size_t e1 = crux_topk_ef(a1, zeros, N, 90, 1, s1, i1, v1);
    size_t e2 = crux_topk_ef(a2, zeros, N, 90, 1, s2, i2, v2);
    free(zeros);
    cr_assert_eq(codec_topk_last_path(s2), CODEC_TOPK_FALLBACK);
    cr_assert_eq(e1, e2);
    cr_assert_eq(memcmp(i1, i2, e1 * 4), 0);
    cr_assert_eq(memcmp(a1, a2, N * 4), 0, "overflowed EF memory");
    crux_topk_ws_free(s1);
    crux_topk_ws_free(s2);
    /* the retry path under the pool */
    codec_topk_set_margin(w1, -4.0);
    codec_topk_set_margin(w2, -4.0);
    memset(o, 0xa5, (N + 1) * 4);
    size_t c1 = crux_topk_acc(a1, m, g, NULL, N, 3000, 9, w1, i1, v1);
    size_t c2 = crux_topk_acc(a2, m, g, o, N, 3000, 9, w2, i2, v2);
    cr_assert_eq(codec_topk_last_path(w2), CODEC_TOPK_RETRIED);
    expect_zeroed(o, N);
    cr_assert_eq(c1, c2);
    cr_assert_eq(memcmp(i1, i2, c1 * 4), 0);
    cr_assert_eq(memcmp(a1, a2, N * 4), 0);
    cr_assert_eq(crux_topk_ws_use_pool(w2, NULL), CRUX_SUCCESS); /* back to one thread */
    cr_assert_eq(crux_topk(g, N, 777, 1, w2, i2, v2), crux_topk(g, N, 777, 1, w1, i1, v1));
    cr_assert_eq(memcmp(i1, i2, 777 * 4), 0);
    crux_topk_ws_free(w1);
    crux_topk_ws_free(w2);
    crux_pool_free(p);
    free(m); free(g); free(a1); free(a2); free(v1); free(v2); free(i1); free(i2); free(o);
}

/* ---- the pool inside the compressor: one rank, two compressors that differ only in
 * CRUX_ENCODE_THREADS, fed the same gradients: bit-identical outputs every step ---- */


static void compressor_threads_agree(crux_codec_t codec, crux_memory_t memory)
{
    if (cpuset_count() < 2)
        cr_skip_test("the cpuset has %d core(s): no second encode thread", cpuset_count());
    setenv("CRUX_RANK", "0", 1);
    setenv("CRUX_SIZE", "1", 1);
    cr_assert_eq(crux_init(NULL, NULL), CRUX_SUCCESS);
    const size_t n = 600000;
    crux_compress_config_t cfg;
    crux_compress_config_init(&cfg, codec);
    cfg.memory = memory;
    cfg.density = 0.01;
    cfg.seed = 17;
    crux_compressor_t c[2];
    for (int t = 0; t < 2; t++) {
        crux_ctx_g->cfg.encode_threads = t + 1;
        cr_assert_eq(crux_compressor_create(CRUX_COMM_WORLD, n, &cfg, &c[t]), CRUX_SUCCESS);
    }
    cr_assert_eq(crux_pool_size(c[0]->pool), 1);
    cr_assert_eq(crux_pool_size(c[1]->pool), 2);
    float *g = malloc(n * 4), *o0 = malloc(n * 4), *o1 = malloc(n * 4);
    cr_assert(g && o0 && o1);
    for (int step = 0; step < 4; step++) {
        fill_heavy(g, n, 100 + (uint64_t)step);
        cr_assert_eq(crux_compressed_allreduce(c[0], g, o0), CRUX_SUCCESS);
        cr_assert_eq(crux_compressed_allreduce(c[1], g, o1), CRUX_SUCCESS);
        cr_assert_eq(memcmp(o0, o1, n * 4), 0, "step %d: outputs differ", step);
        cr_assert_eq(memcmp(c[0]->mem, c[1]->mem, n * 4), 0, "step %d: memories differ", step);
    }
    for (int t = 0; t < 2; t++)
        crux_compressor_free(&c[t]);
    free(g); free(o0); free(o1);
    crux_finalize();
}

Test(pool_compressor, cltk_residual, .timeout = 60) { compressor_threads_agree(CRUX_CODEC_CLTK, CRUX_MEMORY_RESIDUAL); }
Test(pool_compressor, gtopk_residual, .timeout = 60) { compressor_threads_agree(CRUX_CODEC_GTOPK, CRUX_MEMORY_RESIDUAL); }
Test(pool_compressor, qsgd_residual, .timeout = 60) { compressor_threads_agree(CRUX_CODEC_QSGD, CRUX_MEMORY_RESIDUAL); }
Test(pool_compressor, sketch_residual, .timeout = 60) { compressor_threads_agree(CRUX_CODEC_SKETCH, CRUX_MEMORY_RESIDUAL); }

Test(pool, sketch_rows_split_bit_identical, .timeout = 60)
{
    struct crux_pool *p = pool_of(2);
    const size_t N = 300007;
    float *x = malloc(N * 4);
    cr_assert(x);
    fill_heavy(x, N, 5);
    for (int rows = 1; rows <= 5; rows += 2) {
        struct crux_sketch a, b;
        cr_assert_eq(crux_sketch_init(&a, rows, 5003, 9), CRUX_SUCCESS);
        cr_assert_eq(crux_sketch_init(&b, rows, 5003, 9), CRUX_SUCCESS);
        crux_sketch_accumulate(&a, x, N, 1000);
        crux_sketch_accumulate_pool(p, &b, x, N, 1000);
        cr_assert_eq(memcmp(a.table, b.table, (size_t)rows * 5003 * 4), 0, "rows %d", rows);
        crux_sketch_free(&a);
        crux_sketch_free(&b);
    }
    crux_pool_free(p);
    free(x);
}
