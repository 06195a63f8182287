/* crux_codec_bench.c - throughput of the compression kernels (lib/codec) per core, beside a
 * memory-bandwidth figure measured in the same run.
 *
 *   crux_codec_bench [-n elements] [-i avx512|avx2|scalar|all] [-t seconds] [--threads N]
 *
 * GB/s = 4 * n bytes (the dense float vector the kernel stands for) / time, whatever the
 * kernel really moves; so every row compares directly with "read pass" (sum |x| over the
 * same n floats). Each figure is the best of 3 windows of at least -t seconds (default
 * 0.05). Input: heavy-tailed (ratio of uniforms, like a Student-t), fixed seed.
 * Default sizes n = 1M and 16M (the 25.6M: -n 25600000).
 * Time is this thread's CPU time (CLOCK_THREAD_CPUTIME_ID): the machine is shared, and
 * "per core" is what the kernels cost, not how long they waited for one. Two memory
 * passes are measured in the same run as references: a read pass (sum |x|, 16 lanes) and
 * y += x (read 2, write 1); every kernel row shows its ratio to both, which survives the
 * machine's noise better than the GB/s alone.
 * --threads N (N >= 2) adds a scaling table: top-k, fused EF top-k and QSGD encode with an
 * encode pool of 1 and of N threads, timed by the wall clock (CPU time of one thread says
 * nothing about a pool), and the speed-up.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec/codec.h"
#include "codec/codec_isa.h"
#include "codec/pool.h"
#include "codec/qsgd.h"

static clockid_t bench_clock = CLOCK_THREAD_CPUTIME_ID;

static double now(void)
{
    struct timespec ts;
    clock_gettime(bench_clock, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng_next(uint64_t *s)
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

static double min_window = 0.05;
static volatile float sink;

/* Best-of-3 seconds per call of fn(ctx). */
#define TIME_IT(best, stmt)                                                                        \
    do {                                                                                           \
        best = 1e30;                                                                               \
        for (int rep_ = 0; rep_ < 3; rep_++) {                                                     \
            long calls_ = 0;                                                                       \
            double t0_ = now(), el_;                                                               \
            do {                                                                                   \
                stmt;                                                                              \
                calls_++;                                                                          \
            } while ((el_ = now() - t0_) < min_window);                                            \
            if (el_ / (double)calls_ < best)                                                       \
                best = el_ / (double)calls_;                                                       \
        }                                                                                          \
    } while (0)

/* Read-only memory pass: 16 independent lanes so the compiler vectorises it exactly
 * (no reassociation needed), i.e. a memory pass, not an add-latency chain. */
static float read_pass(const float *x, size_t n)
{
    float lane[16] = {0};
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++)
            lane[j] += fabsf(x[i + j]);
    for (; i < n; i++)
        lane[0] += fabsf(x[i]);
    float s = 0;
    for (int j = 0; j < 16; j++)
        s += lane[j];
    return s;
}

static void add_pass(float *restrict y, const float *restrict x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        y[i] += x[i];
}

/* What a sketch with a per-index column hash would cost at least: rows * n scalar +=
 * at random columns of a table of the same shape, row after row, the random numbers
 * streamed from a 4 MiB array (no hashing). crux hashes runs of 16 indices instead
 * (lib/codec/codec_isa.h), one vector add per run, so its encode beats this row. */
#define RND_LEN (1u << 20)
static void random_rmw(float *table, size_t cols, int rows, const uint32_t *rnd, const float *x,
                       size_t n)
{
    for (int j = 0; j < rows; j++) {
        float *row = table + (size_t)j * cols;
        for (size_t i = 0; i < n; i++)
            row[((uint64_t)rnd[i & (RND_LEN - 1)] * cols) >> 32] += x[i];
    }
}

static double ref_read, ref_add; /* GB/s of the two memory passes of this size */

static void row(const char *what, size_t n, double sec)
{
    double gbs = 4.0 * (double)n / sec / 1e9;
    printf("%-46s %10zu %9.3f %8.2f %6.2f %6.2f\n", what, n, sec * 1e3, gbs, gbs / ref_read,
           gbs / ref_add);
}

/* The ISA asked for, or with "all" the best this CPU has, for the rows after top-k. */
static void use_best_isa(const char *isa_arg)
{
    if (strcmp(isa_arg, "all") && crux_codec_force_isa(isa_arg) == 0)
        return;
    if (crux_codec_force_isa("avx512") && crux_codec_force_isa("avx2"))
        crux_codec_force_isa("scalar");
}

static void bench_size(size_t n, const char *isa_arg)
{
    float *x = aligned_alloc(64, n * 4), *m = aligned_alloc(64, n * 4);
    float *acc = aligned_alloc(64, n * 4), *g = aligned_alloc(64, n * 4);
    float *est = aligned_alloc(64, n * 4);
    if (!x || !m || !acc || !g || !est) {
        fprintf(stderr, "crux_codec_bench: out of memory for n=%zu\n", n);
        exit(1);
    }
    fill_heavy(x, n, 1);
    fill_heavy(g, n, 2);
    memset(m, 0, n * 4);
    memset(acc, 0, n * 4);
    memset(est, 0, n * 4);
    double t;
    TIME_IT(t, sink = read_pass(x, n));
    ref_read = 4.0 * (double)n / t / 1e9;
    double t_add;
    TIME_IT(t_add, add_pass(acc, x, n));
    ref_add = 4.0 * (double)n / t_add / 1e9;
    memset(acc, 0, n * 4);
    printf("\n# n = %zu floats (%.1f MB); columns: kernel, n, ms, GB/s (4n/time), ratio to the "
           "read pass, ratio to y += x\n", n, 4.0 * (double)n / 1e6);
    row("read pass (sum |x|, 16 lanes)", n, t);
    row("memory pass y += x (read 2, write 1)", n, t_add);
    TIME_IT(t, crux_mem_accumulate(acc, m, g, n));
    row("memory pass acc = m + g (read 2, write 1)", n, t);
    TIME_IT(t, crux_mem_accumulate_zero(m, m, g, acc, n));
    row("memory pass m += g, out = 0 (read 2, write 2)", n, t);
    memset(m, 0, n * 4);

    static const double dens[] = {0.001, 0.01};
    const char *isas[] = {"avx512", "avx2", "scalar"};
    for (int d = 0; d < 2; d++) {
        size_t k = (size_t)((double)n * dens[d]);
        struct crux_topk_ws *ws;
        if (crux_topk_ws_create(n, k, &ws)) {
            fprintf(stderr, "crux_codec_bench: workspace\n");
            exit(1);
        }
        uint32_t *idx = malloc(k * 4), *idx2 = malloc(k * 4), *mi = malloc(2 * k * 4);
        float *val = malloc(k * 4), *val2 = malloc(k * 4), *mv = malloc(2 * k * 4);
        uint8_t *wire = malloc(crux_idx_encode_bound(k, n));
        char name[96];
        for (int is = 0; is < 3; is++) {
            if (strcmp(isa_arg, "all") && strcmp(isa_arg, isas[is]))
                continue;
            if (crux_codec_force_isa(isas[is]))
                continue;
            snprintf(name, sizeof name, "topk d=%g (%s)", dens[d], isas[is]);
            TIME_IT(t, crux_topk(x, n, k, 7, ws, idx, val));
            row(name, n, t);
        }
        use_best_isa(isa_arg);
        crux_topk(x, n, k, 7, ws, idx, val);
        snprintf(name, sizeof name, "unfused EF: m+=g, topk(m), m[idx]=0 d=%g", dens[d]);
        TIME_IT(t, (crux_mem_accumulate(m, m, g, n), crux_topk(m, n, k, 7, ws, idx, val),
                    crux_zero_at(m, idx, k)));
        row(name, n, t);
        memset(m, 0, n * 4);
        snprintf(name, sizeof name, "fused EF crux_topk_ef d=%g", dens[d]);
        TIME_IT(t, crux_topk_ef(m, g, n, k, 7, ws, idx, val));
        row(name, n, t);
        memset(m, 0, n * 4);
        snprintf(name, sizeof name, "fused crux_topk_acc (acc != mem) d=%g", dens[d]);
        TIME_IT(t, crux_topk_acc(acc, m, g, NULL, n, k, 7, ws, idx, val));
        row(name, n, t);
        memset(m, 0, n * 4);
        /* the CLT-k leader's pass: memory in place, the dense output (acc here) zeroed */
        snprintf(name, sizeof name, "fused crux_topk_acc (m += g, out = 0) d=%g", dens[d]);
        TIME_IT(t, crux_topk_acc(m, m, g, acc, n, k, 7, ws, idx, val));
        row(name, n, t);
        size_t len = crux_idx_encode(idx, k, n, wire);
        snprintf(name, sizeof name, "idx encode d=%g (%zu B, fmt %u)", dens[d], len, wire[0]);
        TIME_IT(t, sink = (float)crux_idx_encode(idx, k, n, wire));
        row(name, n, t);
        size_t kk;
        snprintf(name, sizeof name, "idx decode d=%g", dens[d]);
        TIME_IT(t, sink = (float)crux_idx_decode(wire, len, n, idx2, k, &kk));
        row(name, n, t);
        /* a second selection half overlapping the first */
        crux_topk(g, n, k, 7, ws, idx2, val2);
        snprintf(name, sizeof name, "sparse merge of two k-lists d=%g", dens[d]);
        TIME_IT(t, sink = (float)crux_sparse_merge(idx, val, k, idx2, val2, k, mi, mv));
        row(name, n, t);
        snprintf(name, sizeof name, "gather k d=%g", dens[d]);
        TIME_IT(t, crux_gather(x, idx, k, val2));
        row(name, n, t);
        free(idx); free(idx2); free(mi); free(val); free(val2); free(mv); free(wire);
        crux_topk_ws_free(ws);
    }
    use_best_isa(isa_arg);

    uint32_t *iv = malloc(n / 100 * 4 + 4);
    size_t kk = n / 100;
    for (size_t j = 0; j < kk; j++)
        iv[j] = (uint32_t)(j * 100);
    TIME_IT(t, crux_mem_residual(m, acc, iv, kk, n));
    row("residual (mem = acc, zero 1%)", n, t);
    TIME_IT(t, crux_mem_lowpass(m, acc, iv, kk, n, 0.5f));
    row("lowpass beta=0.5 (1% sent)", n, t);
    memset(m, 0, n * 4);
    memset(est, 0, n * 4);
    TIME_IT(t, crux_mem_momentum(m, est, g, n, 0.9f));
    row("DGC momentum u=m*u+g, v+=u", n, t);

    /* QSGD 4-bit (7 levels, sign-magnitude), buckets of 512 with max-norm scales. */
    {
        struct crux_qsgd q = {127, 512, CRUX_QSGD_NORM_MAX};
        uint8_t *wire = malloc(crux_qsgd_encoded_bytes(&q, n)); /* room for 8-bit codes */
        if (!wire)
            exit(1);
        q.levels = 7;
        TIME_IT(t, sink = (float)crux_qsgd_encode(&q, x, n, 0, 99, wire));
        row("qsgd encode 4-bit, bucket 512", n, t);
        TIME_IT(t, crux_qsgd_decode_add(&q, wire, n, acc));
        row("qsgd decode + accumulate 4-bit", n, t);
        q.levels = 127;
        TIME_IT(t, sink = (float)crux_qsgd_encode(&q, x, n, 0, 99, wire));
        row("qsgd encode 8-bit, bucket 512", n, t);
        free(wire);
        memset(acc, 0, n * 4);
    }

    /* Count Sketch: shapes from LIMITS.md section 3; recall of the true top-0.1%. */
    static const int shapes[][2] = {{5, 52428}, {5, 209715}, {3, 87381}, {3, 349525}};
    size_t k = n / 1000;
    struct crux_topk_ws *ws;
    crux_topk_ws_create(n, k, &ws);
    uint32_t *truth = malloc(k * 4), *hh = malloc(k * 4), *rnd = malloc(RND_LEN * 4);
    uint64_t rs = 77;
    for (size_t i = 0; i < RND_LEN; i++)
        rnd[i] = (uint32_t)rng_next(&rs);
    crux_topk(x, n, k, 7, ws, truth, NULL);
    for (int s = 0; s < 4; s++) {
        struct crux_sketch sk;
        if (crux_sketch_init(&sk, shapes[s][0], shapes[s][1], 5))
            exit(1);
        char name[96];
        double kib = (double)shapes[s][0] * shapes[s][1] * 4 / 1024;
        snprintf(name, sizeof name, "sketch accumulate %dx%d (%.0f KiB)", shapes[s][0], shapes[s][1], kib);
        TIME_IT(t, (crux_sketch_zero(&sk), crux_sketch_accumulate(&sk, x, n, 0)));
        row(name, n, t);
        snprintf(name, sizeof name, "  per-index scatter: random += into %dx%d", shapes[s][0], shapes[s][1]);
        float *scratch = calloc((size_t)shapes[s][0] * (size_t)shapes[s][1], 4);
        if (!scratch)
            exit(1);
        TIME_IT(t, random_rmw(scratch, (size_t)shapes[s][1], shapes[s][0], rnd, x, n));
        row(name, n, t);
        free(scratch);
        snprintf(name, sizeof name, "sketch estimate all %dx%d", shapes[s][0], shapes[s][1]);
        TIME_IT(t, crux_sketch_estimate(&sk, n, est));
        row(name, n, t);
        size_t got = crux_sketch_heavy(&sk, n, k, 7, ws, est, hh);
        size_t hit = 0;
        for (size_t a = 0, b = 0; a < got && b < k;) { /* both ascending */
            if (hh[a] == truth[b]) { hit++; a++; b++; }
            else if (hh[a] < truth[b]) a++;
            else b++;
        }
        printf("%-44s recall of true top-0.1%%: %.3f\n", "", (double)hit / (double)k);
        crux_sketch_free(&sk);
    }
    free(truth); free(hh); free(iv); free(rnd);
    crux_topk_ws_free(ws);
    free(x); free(m); free(acc); free(g); free(est);
}

/* Wall-clock time of one call with an encode pool of 1 thread and of nthreads. */
static void bench_threads(size_t n, int nthreads)
{
    struct crux_pool *pool;
    if (crux_pool_create(nthreads, &pool)) {
        fprintf(stderr, "crux_codec_bench: no pool of %d threads\n", nthreads);
        exit(1);
    }
    int got = crux_pool_size(pool);
    float *x = aligned_alloc(64, n * 4), *m = aligned_alloc(64, n * 4), *g = aligned_alloc(64, n * 4);
    struct crux_qsgd q = {7, 512, CRUX_QSGD_NORM_MAX};
    uint8_t *wire = malloc(crux_qsgd_encoded_bytes(&q, n));
    size_t kmax = n / 100;
    uint32_t *idx = malloc(kmax * 4);
    float *val = malloc(kmax * 4);
    struct crux_topk_ws *ws;
    if (!x || !m || !g || !wire || !idx || !val || crux_topk_ws_create(n, kmax, &ws)) {
        fprintf(stderr, "crux_codec_bench: out of memory for n=%zu\n", n);
        exit(1);
    }
    fill_heavy(x, n, 1);
    fill_heavy(g, n, 2);
    memset(m, 0, n * 4);
    memset(wire, 0, crux_qsgd_encoded_bytes(&q, n));
    struct crux_sketch sk;
    if (crux_sketch_init(&sk, 5, 52428, 5))
        exit(1);
    printf("\n# scaling, n = %zu, pool of %d threads (asked %d); columns: kernel, GB/s with 1 "
           "thread, with %d (wall clock), speed-up; then the speed-up of the calling thread's CPU "
           "time (what the wall clock shows when the other cores are idle)\n", n, got, nthreads, got);
    static const double dens[] = {0.001, 0.01};
    for (int row_ = 0; row_ < 6; row_++) {
        double t[2][2]; /* [clock: wall, caller CPU][pool: 1, N threads] */
        for (int clk = 0; clk < 2; clk++) {
            bench_clock = clk ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC;
            for (int p = 0; p < 2; p++) {
                crux_topk_ws_use_pool(ws, p ? pool : NULL);
                struct crux_pool *use = p ? pool : NULL;
                size_t k = (size_t)((double)n * dens[row_ & 1]);
                if (row_ < 2)
                    TIME_IT(t[clk][p], crux_topk(x, n, k, 7, ws, idx, val));
                else if (row_ < 4)
                    TIME_IT(t[clk][p], crux_topk_ef(m, g, n, k, 7, ws, idx, val));
                else if (row_ == 4)
                    TIME_IT(t[clk][p], sink = (float)crux_qsgd_encode_pool(use, &q, x, n, 0, 99, wire));
                else
                    TIME_IT(t[clk][p], crux_sketch_accumulate_pool(use, &sk, x, n, 0));
            }
        }
        char name[64];
        if (row_ < 4)
            snprintf(name, sizeof name, "%s d=%g", row_ < 2 ? "topk" : "fused EF topk", dens[row_ & 1]);
        else if (row_ == 4)
            snprintf(name, sizeof name, "qsgd encode 4-bit");
        else
            snprintf(name, sizeof name, "sketch accumulate 5x52428 (1 MiB)");
        double g1 = 4.0 * (double)n / t[0][0] / 1e9, gN = 4.0 * (double)n / t[0][1] / 1e9;
        printf("%-46s %8.2f %8.2f %6.2fx   cpu %5.2fx\n", name, g1, gN, gN / g1, t[1][0] / t[1][1]);
    }
    bench_clock = CLOCK_THREAD_CPUTIME_ID;
    crux_sketch_free(&sk);
    crux_topk_ws_free(ws);
    crux_pool_free(pool);
    free(x); free(m); free(g); free(wire); free(idx); free(val);
}

int main(int argc, char **argv)
{
    size_t sizes[4] = {1u << 20, 16u << 20};
    int nsizes = 2;
    const char *isa = "all";
    int threads = 0;
    for (int a = 1; a + 1 < argc; a += 2) {
        if (!strcmp(argv[a], "-n")) {
            if (nsizes == 2 && sizes[0] == (1u << 20))
                nsizes = 0;
            if (nsizes < 4)
                sizes[nsizes++] = strtoull(argv[a + 1], NULL, 10);
        } else if (!strcmp(argv[a], "-i")) {
            isa = argv[a + 1];
        } else if (!strcmp(argv[a], "-t")) {
            min_window = atof(argv[a + 1]);
        } else if (!strcmp(argv[a], "--threads")) {
            threads = atoi(argv[a + 1]);
        } else {
            fprintf(stderr, "usage: crux_codec_bench [-n elements]... [-i avx512|avx2|scalar|all] [-t s] [--threads N]\n");
            return 2;
        }
    }
    printf("# crux_codec_bench: default ISA %s, one thread\n", crux_codec_isa());
    for (int s = 0; s < nsizes; s++)
        bench_size(sizes[s], isa);
    use_best_isa(isa);
    if (threads >= 2)
        for (int s = 0; s < nsizes; s++)
            bench_threads(sizes[s], threads);
    return 0;
}
