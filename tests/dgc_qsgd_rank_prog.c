/* dgc_qsgd_rank_prog.c - per-rank program of tests/test_dgc_qsgd.c (via crux-run).
 *
 *   dgc N STEPS none|residual|momentum DENSITY CLIP
 *       DGC (codec topk): every rank simulates every rank with scalar code (momentum
 *       correction, sort-based top-k per chunk with the documented tie rule, masking,
 *       rank-ordered sum) and compares output, v and u bit for bit. From step 2 on the
 *       density is halved (warm-up runs the other way, but the call is the same).
 *   qsgd-exact N LEVELS none|residual
 *       QSGD on integer inputs in [-s, s] where every bucket holds a +-s: every level is
 *       exact whatever the noise, so out must be the exact sum and the residual zero.
 *   qsgd-noisy N
 *       QSGD on random inputs: identical output on every rank, and every element within
 *       one quantisation step per rank of the true sum.
 *   qsgd-ring N STEPS
 *       QSGD with cfg.qsgd_reduce = ring: the output equals a brute-force simulation of
 *       the same hops bit for bit, on every rank; wire bytes exact.
 *   qsgd-unbiased N CALLS
 *       the ring's mean over CALLS calls is within a variance-derived bound of the sum.
 *   errors
 *       bad configs and calls give CRUX_ERR_ARG.
 *
 * Exit 0 and "rank R: OK" when every check passed; 1 otherwise.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crux.h"
#include "lib/compress.h"

static int rank, P, failures;
#include "rank_util.h"

/* Integer-valued gradient of rank r at step t: distinct magnitudes are not needed, the
 * simulation applies the same tie rule. */
static float grad_at(int r, int t, size_t i)
{
    return (float)((int)(mix((uint32_t)(r * 7919 + t * 104729) ^ (uint32_t)i * 2654435761u) % 41) - 20);
}

/* ------------------------------------------------------------------- DGC --- */

struct sim_rank {
    float *u, *v;
};

static const float *sort_base;
static int by_mag(const void *a, const void *b)
{
    uint32_t i = *(const uint32_t *)a, j = *(const uint32_t *)b;
    float x = fabsf(sort_base[i]), y = fabsf(sort_base[j]);
    if (x != y)
        return x > y ? -1 : 1;
    return i < j ? -1 : 1;
}
static int by_index(const void *a, const void *b)
{
    uint32_t i = *(const uint32_t *)a, j = *(const uint32_t *)b;
    return i < j ? -1 : i > j;
}

/* Top-k of |x[0..len)| with the library's tie rule, indices ascending. */
static void sim_topk(const float *x, size_t len, size_t k, uint32_t *idx, uint32_t *tmp)
{
    for (size_t i = 0; i < len; i++)
        tmp[i] = (uint32_t)i;
    sort_base = x;
    qsort(tmp, len, sizeof(*tmp), by_mag);
    memcpy(idx, tmp, k * sizeof(*idx));
    qsort(idx, k, sizeof(*idx), by_index);
}

static size_t sim_k(double density, size_t len)
{
    double want = density * (double)len + 0.5;
    size_t k = want >= (double)len ? len : (size_t)want;
    return k ? k : 1;
}

static float sim_clip(const float *g, size_t n, double clip)
{
    if (clip <= 0.0)
        return 1.0f;
    double ss = 0.0;
    for (size_t i = 0; i < n; i++)
        ss += (double)g[i] * g[i];
    double local = clip / sqrt((double)P), norm = sqrt(ss);
    return norm > local ? (float)(local / norm) : 1.0f;
}

static int run_dgc(size_t n, int steps, const char *memname, double density, double clip)
{
    crux_compress_config_t cfg;
    crux_compress_config_init(&cfg, CRUX_CODEC_TOPK);
    cfg.memory = !strcmp(memname, "none")       ? CRUX_MEMORY_NONE
                 : !strcmp(memname, "residual") ? CRUX_MEMORY_RESIDUAL
                                                : CRUX_MEMORY_MOMENTUM;
    cfg.density = density;
    cfg.beta = 0.5f; /* dyadic: every momentum value stays exact */
    crux_compressor_t c;
    CHECK_RC(crux_compressor_create(CRUX_COMM_WORLD, n, &cfg, &c));
    if (clip > 0)
        CHECK_RC(crux_compressor_set_clip(c, clip));
    struct sim_rank *sr = xcalloc((size_t)P, sizeof(*sr));
    for (int r = 0; r < P; r++) {
        sr[r].u = xcalloc(n, 4);
        sr[r].v = xcalloc(n, 4);
    }
    float *g = xcalloc(n, 4), *out = xcalloc(n, 4), *want = xcalloc(n, 4);
    uint32_t *idx = xcalloc(n, 4), *tmp = xcalloc(n, 4);
    const size_t chunk = c->chunk_len;
    for (int t = 0; t < steps; t++) {
        double d = t >= 1 ? density / 2 : density;
        CHECK_RC(crux_compressor_set_density(c, d));
        memset(want, 0, n * 4);
        for (int r = 0; r < P; r++) {
            for (size_t i = 0; i < n; i++)
                g[i] = grad_at(r, t, i);
            float s = sim_clip(g, n, clip);
            float *u = sr[r].u, *v = sr[r].v;
            for (size_t i = 0; i < n; i++) {
                if (cfg.memory == CRUX_MEMORY_NONE) {
                    v[i] = s * g[i];
                } else {
                    float m = cfg.memory == CRUX_MEMORY_MOMENTUM ? 0.5f : 0.0f;
                    u[i] = m * u[i] + s * g[i];
                    v[i] += u[i];
                }
            }
            for (size_t off = 0; off < n; off += chunk) {
                size_t len = n - off < chunk ? n - off : chunk, k = sim_k(d, len);
                sim_topk(v + off, len, k, idx, tmp);
                for (size_t j = 0; j < k; j++) {
                    want[off + idx[j]] += v[off + idx[j]];
                    if (cfg.memory != CRUX_MEMORY_NONE)
                        v[off + idx[j]] = 0;
                    if (cfg.memory == CRUX_MEMORY_MOMENTUM)
                        u[off + idx[j]] = 0;
                }
            }
        }
        for (size_t i = 0; i < n; i++)
            g[i] = grad_at(rank, t, i);
        CHECK_RC(crux_compressed_allreduce(c, g, out));
        for (size_t i = 0; i < n; i++)
            if (memcmp(&out[i], &want[i], 4))
                FAIL("dgc step %d out[%zu] = %g, want %g", t, i, (double)out[i], (double)want[i]);
        if (cfg.memory != CRUX_MEMORY_NONE)
            for (size_t i = 0; i < n; i++)
                if (memcmp(&c->mem[i], &sr[rank].v[i], 4))
                    FAIL("dgc step %d v[%zu] = %g, want %g", t, i, (double)c->mem[i],
                         (double)sr[rank].v[i]);
        if (cfg.memory == CRUX_MEMORY_MOMENTUM)
            for (size_t i = 0; i < n; i++)
                if (memcmp(&c->mom[i], &sr[rank].u[i], 4))
                    FAIL("dgc step %d u[%zu] = %g, want %g", t, i, (double)c->mom[i],
                         (double)sr[rank].u[i]);
        crux_compress_stats_t st;
        CHECK_RC(crux_compressor_stats(c, &st));
        size_t nnz = 0;
        for (size_t off = 0; off < n; off += chunk)
            nnz += sim_k(d, n - off < chunk ? n - off : chunk) * (size_t)P;
        if (st.nnz != nnz)
            FAIL("dgc stats nnz %zu, want %zu", st.nnz, nnz);
        if (st.dense_bytes != n * 4)
            FAIL("dgc stats dense_bytes %llu", (unsigned long long)st.dense_bytes);
        if (P > 1 && st.wire_bytes != (uint64_t)(P - 1) * 8 * (nnz / (size_t)P))
            FAIL("dgc stats wire_bytes %llu, want %llu", (unsigned long long)st.wire_bytes,
                 (unsigned long long)((P - 1) * 8 * (nnz / (size_t)P)));
    }
    CHECK_RC(crux_compressor_free(&c));
    for (int r = 0; r < P; r++)
        free(sr[r].u), free(sr[r].v);
    free(sr), free(g), free(out), free(want), free(idx), free(tmp);
    return failures;
}

/* ------------------------------------------------------------------ QSGD --- */

#define QSGD_BUCKET 512

/* In [-s, s], and the first element of every bucket is +-s. */
static float exact_at(int r, int t, size_t i, int s)
{
    int v = (int)(mix((uint32_t)(r * 31 + t * 977) ^ (uint32_t)i * 2246822519u) % (uint32_t)(2 * s + 1)) - s;
    if (i % QSGD_BUCKET == 0)
        v = (r + (int)(i / QSGD_BUCKET)) % 2 ? -s : s;
    return (float)v;
}

static int run_qsgd_exact(size_t n, int levels, const char *memname)
{
    crux_compress_config_t cfg;
    crux_compress_config_init(&cfg, CRUX_CODEC_QSGD);
    cfg.qsgd_levels = levels;
    cfg.memory = !strcmp(memname, "residual") ? CRUX_MEMORY_RESIDUAL : CRUX_MEMORY_NONE;
    crux_compressor_t c;
    CHECK_RC(crux_compressor_create(CRUX_COMM_WORLD, n, &cfg, &c));
    float *g = xcalloc(n, 4), *out = xcalloc(n, 4);
    for (int t = 0; t < 2; t++) {
        for (size_t i = 0; i < n; i++)
            g[i] = exact_at(rank, t, i, levels);
        CHECK_RC(crux_compressed_allreduce(c, g, out));
        for (size_t i = 0; i < n; i++) {
            float want = 0;
            for (int r = 0; r < P; r++)
                want += exact_at(r, t, i, levels);
            if (out[i] != want)
                FAIL("qsgd step %d out[%zu] = %g, want %g", t, i, (double)out[i], (double)want);
        }
        if (cfg.memory == CRUX_MEMORY_RESIDUAL)
            for (size_t i = 0; i < n; i++)
                if (c->mem[i] != 0.0f)
                    FAIL("qsgd step %d residual[%zu] = %g, want 0", t, i, (double)c->mem[i]);
        crux_compress_stats_t st;
        CHECK_RC(crux_compressor_stats(c, &st));
        size_t chunk = c->chunk_len, per = 0;
        for (size_t off = 0; off < n; off += chunk)
            per += crux_qsgd_encoded_bytes(&c->q, n - off < chunk ? n - off : chunk);
        if (st.wire_bytes != (uint64_t)(P - 1) * per)
            FAIL("qsgd wire_bytes %llu, want %llu", (unsigned long long)st.wire_bytes,
                 (unsigned long long)((P - 1) * per));
    }
    CHECK_RC(crux_compressor_free(&c));
    free(g), free(out);
    return failures;
}

static float noisy_at(int r, size_t i)
{
    return ((float)(mix((uint32_t)r * 0x51ed27u ^ (uint32_t)i * 2654435761u) >> 8) * 0x1p-24f - 0.5f) *
           (float)(1 + i % 5);
}

static int run_qsgd_noisy(size_t n)
{
    crux_compress_config_t cfg;
    crux_compress_config_init(&cfg, CRUX_CODEC_QSGD);
    crux_compressor_t c;
    CHECK_RC(crux_compressor_create(CRUX_COMM_WORLD, n, &cfg, &c));
    float *g = xcalloc(n, 4), *out = xcalloc(n, 4);
    for (size_t i = 0; i < n; i++)
        g[i] = noisy_at(rank, i);
    CHECK_RC(crux_compressed_allreduce(c, g, out));
    /* within one step (bucket max / s) per rank of the exact sum */
    for (size_t b = 0; b < n; b += QSGD_BUCKET) {
        size_t e = n - b < QSGD_BUCKET ? n : b + QSGD_BUCKET;
        double tol = 0;
        for (int r = 0; r < P; r++) {
            double mx = 0;
            for (size_t i = b; i < e; i++)
                mx = fmax(mx, fabs((double)noisy_at(r, i)));
            tol += mx / cfg.qsgd_levels;
        }
        for (size_t i = b; i < e; i++) {
            double sum = 0;
            for (int r = 0; r < P; r++)
                sum += noisy_at(r, i);
            if (fabs(out[i] - sum) > tol * 1.0001)
                FAIL("qsgd noisy out[%zu] = %g, sum %g, tolerance %g", i, (double)out[i], sum, tol);
        }
    }
    /* the same bytes on every rank: max and min of a hash agree */
    uint64_t h = 1469598103934665603ull;
    const unsigned char *p = (const unsigned char *)out;
    for (size_t i = 0; i < n * 4; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    int64_t v[2] = {(int64_t)(h >> 2), -(int64_t)(h >> 2)};
    CHECK_RC(crux_allreduce(CRUX_IN_PLACE, v, 2, CRUX_INT64, CRUX_MAX, CRUX_COMM_WORLD));
    if (v[0] != -v[1])
        FAIL("qsgd output differs between ranks");
    CHECK_RC(crux_compressor_free(&c));
    free(g), free(out);
    return failures;
}

/* ------------------------------------------------------------ QSGD ring --- */

static crux_compressor_t qring_create(size_t n)
{
    crux_compress_config_t cfg;
    crux_compress_config_init(&cfg, CRUX_CODEC_QSGD);
    cfg.qsgd_reduce = CRUX_QSGD_RING;
    crux_compressor_t c;
    CHECK_RC(crux_compressor_create(CRUX_COMM_WORLD, n, &cfg, &c));
    return c;
}

/* Inputs on a 1/64 grid of [-8, 8), scaled per bucket, so the exact sum is exact in
 * float and buckets differ in scale. */
static float ring_at(int r, int t, size_t i)
{
    int v = (int)(mix((uint32_t)(r * 7477 + t * 1299709) ^ (uint32_t)i * 2654435761u) % 1024) - 512;
    return (float)v / 64.0f * (float)(1 + (i / QSGD_BUCKET) % 3);
}

/* The hops of algo/c_qsgd_ring.c for block [lo, lo+len) of chunk ch at call t, done
 * the obvious way for every rank in turn: Q_0(x_b), then rank b+h decodes, adds its
 * own block (own + decoded) and re-quantises with key h; the last quantisation is the
 * owner's; out = 0 + decode. */
static void sim_ring_block(const crux_compressor_t c, int t, size_t ch, int b, size_t lo, size_t len,
                           float *out)
{
    size_t off = ch * c->chunk_len, bytes = crux_qsgd_encoded_bytes(&c->q, len);
    uint8_t *q = xcalloc(bytes, 1);
    float *x = xcalloc(len, 4);
    for (int h = 0; h < P; h++) {
        int j = (b + h) % P;
        for (size_t i = 0; i < len; i++)
            x[i] = ring_at(j, t, off + lo + i);
        if (h > 0)
            crux_qsgd_decode_add(&c->q, q, len, x);
        crux_qsgd_encode(&c->q, x, len, off + lo, crux_qsgd_ring_key(c->cfg.seed, (uint64_t)t, ch, h), q);
    }
    memset(out, 0, len * 4);
    crux_qsgd_decode_add(&c->q, q, len, out);
    free(q), free(x);
}

/* Ring output == the brute-force hops, bit for bit; the same on every rank; wire bytes
 * are exactly the reduce-scatter's and allgather's payloads. */
static int run_qsgd_ring(size_t n, int steps)
{
    crux_compressor_t c = qring_create(n);
    float *g = xcalloc(n, 4), *out = xcalloc(n, 4), *want = xcalloc(n, 4);
    for (int t = 0; t < steps; t++) {
        for (size_t i = 0; i < n; i++)
            g[i] = ring_at(rank, t, i);
        int in_place = t == steps - 1;
        CHECK_RC(crux_compressed_allreduce(c, g, in_place ? g : out));
        float *res = in_place ? g : out;
        uint64_t wire = 0;
        for (size_t ch = 0; ch < c->nchunks; ch++) {
            size_t off = ch * c->chunk_len, len = n - off < c->chunk_len ? n - off : c->chunk_len;
            for (int b = 0; b < P; b++) {
                size_t lo, hi;
                crux_qsgd_ring_block(&c->q, len, P, b, &lo, &hi);
                sim_ring_block(c, t, ch, b, lo, hi - lo, want + off + lo);
                /* this rank sends block b at RS hop (rank - b) and AG step (rank + 1 - b),
                 * except RS hop P-1 and AG step P-1, which do not exist */
                int hop = ((rank - b) % P + P) % P, ag = ((rank + 1 - b) % P + P) % P;
                size_t bytes = crux_qsgd_encoded_bytes(&c->q, hi - lo);
                wire += (hop < P - 1 ? bytes : 0) + (ag < P - 1 ? bytes : 0);
            }
        }
        for (size_t i = 0; i < n; i++)
            if (memcmp(&res[i], &want[i], 4)) {
                FAIL("qsgd ring P=%d n=%zu step %d: out[%zu] = %a, simulation %a", P, n, t, i,
                     (double)res[i], (double)want[i]);
                break;
            }
        crux_compress_stats_t st;
        CHECK_RC(crux_compressor_stats(c, &st));
        if (st.wire_bytes != (P > 1 ? wire : 0))
            FAIL("qsgd ring wire_bytes %llu, want %llu", (unsigned long long)st.wire_bytes,
                 (unsigned long long)wire);
        uint64_t h = 1469598103934665603ull;
        const unsigned char *p = (const unsigned char *)res;
        for (size_t i = 0; i < n * 4; i++)
            h = (h ^ p[i]) * 1099511628211ull;
        int64_t v[2] = {(int64_t)(h >> 2), -(int64_t)(h >> 2)};
        CHECK_RC(crux_allreduce(CRUX_IN_PLACE, v, 2, CRUX_INT64, CRUX_MAX, CRUX_COMM_WORLD));
        if (v[0] != -v[1])
            FAIL("qsgd ring output differs between ranks");
    }
    CHECK_RC(crux_compressor_free(&c));
    free(g), free(out), free(want);
    return failures;
}

/* Unbiasedness of the ring over `calls` calls on the same input (fresh noise each
 * call). Per element, the hop-h quantisation has variance <= (S_h / s)^2 / 4 with
 * S_h its bucket's scale; S_h <= M (h + 1), M = the largest |x| of the bucket over the
 * ranks, since a partial sum of h+1 blocks each decoded within its scale stays within
 * the sum of their maxima. Hop errors are martingale differences (uncorrelated), so
 * var(out_i) <= (M / s)^2 / 4 * sum_{h=1..P} h^2. Checked: every element's mean within
 * 6 sigma / sqrt(calls) of the exact sum, and the sum of all deviations within 6
 * sigma of its own (a systematic bias of any size shows there first). */
static int run_qsgd_unbiased(size_t n, int calls)
{
    crux_compressor_t c = qring_create(n);
    float *g = xcalloc(n, 4), *out = xcalloc(n, 4);
    double *mean = xcalloc(n, sizeof(double));
    for (size_t i = 0; i < n; i++)
        g[i] = ring_at(rank, 0, i);
    for (int t = 0; t < calls; t++) {
        CHECK_RC(crux_compressed_allreduce(c, g, out));
        for (size_t i = 0; i < n; i++)
            mean[i] += out[i];
    }
    double hsum = 0, dev_sum = 0, var_sum = 0;
    for (int h = 1; h <= P; h++)
        hsum += (double)h * h;
    int s = c->q.levels;
    for (size_t b = 0; b < n; b += QSGD_BUCKET) {
        size_t e = n - b < QSGD_BUCKET ? n : b + QSGD_BUCKET;
        double m = 0;
        for (size_t i = b; i < e; i++)
            for (int r = 0; r < P; r++)
                m = fmax(m, fabs((double)ring_at(r, 0, i)));
        double var = (m / s) * (m / s) / 4 * hsum, sd = sqrt(var / calls);
        for (size_t i = b; i < e; i++) {
            double exact = 0;
            for (int r = 0; r < P; r++)
                exact += ring_at(r, 0, i);
            double d = mean[i] / calls - exact;
            dev_sum += d;
            var_sum += var / calls;
            if (fabs(d) > 6 * sd)
                FAIL("qsgd ring bias at %zu: mean %g, exact %g, 6 sigma %g", i, mean[i] / calls, exact, 6 * sd);
        }
    }
    if (fabs(dev_sum) > 6 * sqrt(var_sum))
        FAIL("qsgd ring: the deviations sum to %g, 6 sigma %g", dev_sum, 6 * sqrt(var_sum));
    printf("rank %d: ring bias statistic %.3f sigma\n", rank, dev_sum / sqrt(var_sum));
    CHECK_RC(crux_compressor_free(&c));
    free(g), free(out), free(mean);
    return failures;
}

/* ---------------------------------------------------------------- errors --- */

static void expect_create(int want, crux_codec_t codec, crux_memory_t mem, int levels,
                          const char *what)
{
    crux_compress_config_t cfg;
    crux_compress_config_init(&cfg, codec);
    cfg.memory = mem;
    if (levels)
        cfg.qsgd_levels = levels;
    crux_compressor_t c = NULL;
    int rc = crux_compressor_create(CRUX_COMM_WORLD, 1000, &cfg, &c);
    if (rc != want)
        FAIL("%s: create -> %s, want %s", what, crux_error_string(rc), crux_error_string(want));
    crux_compressor_free(&c);
}

static int run_errors(void)
{
    expect_create(CRUX_ERR_ARG, CRUX_CODEC_CLTK, CRUX_MEMORY_MOMENTUM, 0, "momentum with cltk");
    expect_create(CRUX_ERR_ARG, CRUX_CODEC_QSGD, CRUX_MEMORY_NONE, 200, "qsgd 200 levels");
    expect_create(CRUX_ERR_ARG, CRUX_CODEC_QSGD, CRUX_MEMORY_LOWPASS, 0, "qsgd lowpass");
    expect_create(CRUX_SUCCESS, CRUX_CODEC_QSGD, CRUX_MEMORY_RESIDUAL, 127, "qsgd 127 levels");
    crux_compress_config_t qc;
    crux_compressor_t qh = NULL;
    crux_compress_config_init(&qc, CRUX_CODEC_QSGD);
    qc.qsgd_reduce = 2;
    if (crux_compressor_create(CRUX_COMM_WORLD, 1000, &qc, &qh) != CRUX_ERR_ARG)
        FAIL("qsgd_reduce 2 accepted");
    qc.qsgd_reduce = CRUX_QSGD_RING;
    qc.memory = CRUX_MEMORY_RESIDUAL;
    if (crux_compressor_create(CRUX_COMM_WORLD, 1000, &qc, &qh) != CRUX_ERR_ARG)
        FAIL("qsgd ring with residual memory accepted");
    crux_compress_config_t cfg;
    crux_compress_config_init(&cfg, CRUX_CODEC_TOPK);
    if (cfg.memory != CRUX_MEMORY_MOMENTUM || cfg.beta != 0.9f)
        FAIL("topk defaults: memory %d beta %g", (int)cfg.memory, (double)cfg.beta);
    cfg.density = 0.25;
    crux_compressor_t c;
    CHECK_RC(crux_compressor_create(CRUX_COMM_WORLD, 1000, &cfg, &c));
    if (crux_compressor_set_density(c, 0.5) != CRUX_ERR_ARG)
        FAIL("set_density above the created density accepted");
    if (crux_compressor_set_density(c, 0.0) != CRUX_ERR_ARG)
        FAIL("set_density 0 accepted");
    if (crux_compressor_set_density(c, 0.001) != CRUX_SUCCESS)
        FAIL("set_density 0.001 refused");
    if (crux_compressor_set_clip(c, -1.0) != CRUX_ERR_ARG || crux_compressor_set_clip(c, INFINITY) != CRUX_ERR_ARG)
        FAIL("bad clip accepted");
    CHECK_RC(crux_compressor_free(&c));
    crux_compress_config_init(&cfg, CRUX_CODEC_GTOPK);
    CHECK_RC(crux_compressor_create(CRUX_COMM_WORLD, 1000, &cfg, &c));
    if (crux_compressor_set_clip(c, 1.0) != CRUX_ERR_ARG)
        FAIL("clip accepted for gtopk");
    CHECK_RC(crux_compressor_free(&c));
    return failures;
}

int main(int argc, char **argv)
{
    CHECK_RC(crux_init(&argc, &argv));
    CHECK_RC(crux_comm_rank(CRUX_COMM_WORLD, &rank));
    CHECK_RC(crux_comm_size(CRUX_COMM_WORLD, &P));
    const char *mode = argc > 1 ? argv[1] : "";
    if (!strcmp(mode, "dgc") && argc == 7)
        run_dgc(strtoul(argv[2], NULL, 10), atoi(argv[3]), argv[4], atof(argv[5]), atof(argv[6]));
    else if (!strcmp(mode, "qsgd-exact") && argc == 5)
        run_qsgd_exact(strtoul(argv[2], NULL, 10), atoi(argv[3]), argv[4]);
    else if (!strcmp(mode, "qsgd-noisy") && argc == 3)
        run_qsgd_noisy(strtoul(argv[2], NULL, 10));
    else if (!strcmp(mode, "qsgd-ring") && argc == 4)
        run_qsgd_ring(strtoul(argv[2], NULL, 10), atoi(argv[3]));
    else if (!strcmp(mode, "qsgd-unbiased") && argc == 4)
        run_qsgd_unbiased(strtoul(argv[2], NULL, 10), atoi(argv[3]));
    else if (!strcmp(mode, "errors"))
        run_errors();
    else {
        printf("usage: %s dgc N STEPS MEM DENSITY CLIP | qsgd-exact N LEVELS MEM | qsgd-noisy N | errors\n", argv[0]);
        failures = 1;
    }
    CHECK_RC(crux_finalize());
    if (!failures)
        printf("rank %d: OK\n", rank);
    return failures ? 1 : 0;
}
