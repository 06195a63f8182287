/* compress_rank_prog.c - per-rank program of tests/test_compress.c (via crux-run).
 *
 * Every rank knows every rank's inputs (functions of rank, step and index, integer
 * valued so every sum is exact), simulates the whole algorithm for all ranks with
 * plain scalar code (sort-based top-k with the documented tie rule: larger |x|
 * first, lower index among equals), and compares the library's output AND its
 * memory with the simulation bit for bit, plus the output bits across ranks.
 *
 *   crux_test_compress_rank check cltk|gtopk|sketch N STEPS BETA DENSITY [SKETCH_COLS]
 *   crux_test_compress_rank chunks cltk|gtopk|sketch   chunked == unchunked (planted)
 *   crux_test_compress_rank split cltk|gtopk|sketch    check on both halves of a split
 *   crux_test_compress_rank badcfg
 *   crux_test_compress_rank mismatch count|config
 *   crux_test_compress_rank kill cltk|gtopk|sketch VICTIM   VICTIM dies at call 3; the
 *                              others must get CRUX_ERR_PEER or _TIMEOUT (exit 3), no hang
 *
 * Exit 0 and "rank R: OK" when every check passed; 1 on a failed check.
 */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crux.h"
#include "lib/compress.h"

static int rank, P, failures;
#include "rank_util.h"
static crux_comm_t g_comm; /* the communicator under test (world, or a split half) */

/* ----------------------------------------------------------------- inputs --- */

/* General input: integers in [-500, 500] (ties happen: they test the tie rule),
 * plus a boost on the indices rank r "owns" ((i / 3) % P == r), so every leader
 * picks a different set and CLT-k's rotation shows in the output. */
static float grad_general(int r, int t, size_t i)
{
    int v = (int)(mix((uint32_t)(i * 2654435761u) ^ (uint32_t)(r * 97 + t * 7919)) % 1001) - 500;
    if ((int)((i / 3) % (size_t)P) == r && mix((uint32_t)i + (uint32_t)t) % 8 == 0)
        v += v >= 0 ? 3000 : -3000;
    return (float)v;
}

/* Planted input: background in {-1, 0, 1}; chunk c of step t has k heavy entries
 * at positions that move with t, heavy enough that any sane sketch finds them. */
static size_t g_chunk_len, g_n;
static double g_density;

static size_t chunk_k(size_t len)
{
    double want = g_density * (double)len + 0.5;
    size_t k = want >= (double)len ? len : (size_t)want;
    return k ? k : 1;
}

static float grad_planted(int r, int t, size_t i)
{
    size_t c = i / g_chunk_len, off = c * g_chunk_len;
    size_t len = g_n - off < g_chunk_len ? g_n - off : g_chunk_len, k = chunk_k(len);
    size_t j = i - off, stride = len / k;
    float bg = (float)((int)(mix((uint32_t)i ^ (uint32_t)(r * 31 + t * 131)) % 3) - 1);
    if (j % stride == (size_t)t % stride && j / stride < k) {
        float h = (float)(10000 + 100 * (int)(j / stride));
        return ((j / stride) % 2 ? -h : h) * (float)(r + 1) + bg;
    }
    return bg;
}

/* ------------------------------------------------------------ simulation --- */

static const float *cmp_x;
static int cmp_desc(const void *a, const void *b)
{
    uint32_t i = *(const uint32_t *)a, j = *(const uint32_t *)b;
    float x = fabsf(cmp_x[i]), y = fabsf(cmp_x[j]);
    if (x != y)
        return x > y ? -1 : 1;
    return i < j ? -1 : 1;
}
static int cmp_u32(const void *a, const void *b)
{
    uint32_t i = *(const uint32_t *)a, j = *(const uint32_t *)b;
    return i < j ? -1 : i > j;
}

/* Top-k of x[0..n) (dense) into ascending idx. */
static size_t ref_topk(const float *x, size_t n, size_t k, uint32_t *idx)
{
    uint32_t *all = xcalloc(n, 4);
    for (size_t i = 0; i < n; i++)
        all[i] = (uint32_t)i;
    cmp_x = x;
    qsort(all, n, 4, cmp_desc);
    if (k > n)
        k = n;
    memcpy(idx, all, k * 4);
    qsort(idx, k, 4, cmp_u32);
    free(all);
    return k;
}

struct sim {
    int codec;
    size_t n, clen, nch;
    float beta;
    float **mem, **acc; /* [P][n] */
    float *out;         /* [n] */
    char *kept;         /* [n] 1 where the step's estimate keeps the entry */
};

static void sim_mem_update(struct sim *s, int r, size_t off, size_t len, const uint32_t *sent, size_t k)
{
    float *m = s->mem[r] + off, *a = s->acc[r] + off;
    char *is_sent = xcalloc(len, 1);
    for (size_t j = 0; j < k; j++)
        is_sent[sent[j]] = 1;
    for (size_t i = 0; i < len; i++) {
        float resid = is_sent[i] ? 0.0f : a[i];
        m[i] = s->beta == 1.0f ? resid : (1.0f - s->beta) * m[i] + s->beta * resid;
    }
    free(is_sent);
}

/* A k-list: merge (a's value + b's value on equal indices), then top-k again. */
static size_t ref_merge_select(uint32_t *ai, float *av, size_t na, const uint32_t *bi,
                               const float *bv, size_t nb, size_t k, size_t clen)
{
    float *dense = xcalloc(clen, 4);
    char *in = xcalloc(clen, 1);
    for (size_t j = 0; j < na; j++)
        dense[ai[j]] = av[j], in[ai[j]] = 1;
    for (size_t j = 0; j < nb; j++)
        dense[bi[j]] = in[bi[j]] ? dense[bi[j]] + bv[j] : bv[j], in[bi[j]] = 1;
    /* top-k among the union only: others compare below everything */
    size_t m = 0;
    uint32_t *u = xcalloc(na + nb, 4);
    for (size_t i = 0; i < clen; i++)
        if (in[i])
            u[m++] = (uint32_t)i;
    cmp_x = dense;
    qsort(u, m, 4, cmp_desc);
    if (k > m)
        k = m;
    qsort(u, k, 4, cmp_u32);
    for (size_t j = 0; j < k; j++)
        ai[j] = u[j], av[j] = dense[u[j]];
    free(dense), free(in), free(u);
    return k;
}

static int pof2_floor(int p) { return 1 << (31 - __builtin_clz((unsigned)p)); }

/* gTop-k tree of one chunk, exactly as algo/c_gtopk.c documents it. */
static size_t ref_gtopk_chunk(struct sim *s, size_t off, size_t len, size_t k, uint32_t **li,
                              uint32_t *gi, float *gv)
{
    uint32_t **ci = xcalloc((size_t)P, sizeof(*ci));
    float **cv = xcalloc((size_t)P, sizeof(*cv));
    for (int r = 0; r < P; r++) {
        ci[r] = xcalloc(k, 4), cv[r] = xcalloc(k, 4);
        memcpy(ci[r], li[r], k * 4);
        for (size_t j = 0; j < k; j++)
            cv[r][j] = s->acc[r][off + li[r][j]];
    }
    int p2 = pof2_floor(P);
    for (int r = 0; r < P - p2; r++)
        ref_merge_select(ci[r], cv[r], k, ci[r + p2], cv[r + p2], k, k, len);
    for (int mask = 1; mask < p2; mask <<= 1)
        for (int r = 0; r < p2; r += 2 * mask)
            ref_merge_select(ci[r], cv[r], k, ci[r + mask], cv[r + mask], k, k, len);
    memcpy(gi, ci[0], k * 4);
    memcpy(gv, cv[0], k * 4);
    for (int r = 0; r < P; r++)
        free(ci[r]), free(cv[r]);
    free(ci), free(cv);
    return k;
}

/* One step of the whole job: s->out and every s->mem. */
static void sim_step(struct sim *s, int t, float (*grad)(int, int, size_t))
{
    for (int r = 0; r < P; r++)
        for (size_t i = 0; i < s->n; i++)
            s->acc[r][i] = s->mem[r][i] + grad(r, t, i);
    memset(s->out, 0, s->n * 4);
    memset(s->kept, 0, s->n);
    float *sum = xcalloc(s->clen, 4);
    uint32_t *idx = xcalloc(s->clen, 4), *gi = xcalloc(s->clen, 4), *sent = xcalloc(s->clen, 4);
    float *gv = xcalloc(s->clen, 4);
    uint32_t **li = xcalloc((size_t)P, sizeof(*li));
    for (int r = 0; r < P; r++)
        li[r] = xcalloc(s->clen, 4);
    for (size_t c = 0; c < s->nch; c++) {
        size_t off = c * s->clen, len = s->n - off < s->clen ? s->n - off : s->clen, k = chunk_k(len);
        if (s->codec == CRUX_CODEC_GTOPK) {
            for (int r = 0; r < P; r++)
                ref_topk(s->acc[r] + off, len, k, li[r]);
            ref_gtopk_chunk(s, off, len, k, li, gi, gv);
            for (size_t j = 0; j < k; j++)
                s->out[off + gi[j]] = gv[j], s->kept[off + gi[j]] = 1;
            for (int r = 0; r < P; r++) {
                size_t ns = 0; /* own selection that survived */
                for (size_t a = 0, b = 0; a < k && b < k;)
                    if (li[r][a] < gi[b]) a++;
                    else if (gi[b] < li[r][a]) b++;
                    else sent[ns++] = li[r][a], a++, b++;
                sim_mem_update(s, r, off, len, sent, ns);
            }
            continue;
        }
        if (s->codec == CRUX_CODEC_CLTK) {
            ref_topk(s->acc[t % P] + off, len, k, idx);
        } else { /* sketch: the true top-k of the sum (planted inputs make it unambiguous) */
            for (size_t i = 0; i < len; i++) {
                sum[i] = 0;
                for (int r = 0; r < P; r++)
                    sum[i] += s->acc[r][off + i];
            }
            ref_topk(sum, len, k, idx);
        }
        for (size_t j = 0; j < k; j++) {
            float v = 0;
            for (int r = 0; r < P; r++)
                v += s->acc[r][off + idx[j]];
            s->out[off + idx[j]] = v;
            s->kept[off + idx[j]] = 1;
        }
        for (int r = 0; r < P; r++)
            sim_mem_update(s, r, off, len, idx, k);
    }
    for (int r = 0; r < P; r++)
        free(li[r]);
    free(li), free(sum), free(idx), free(gi), free(gv), free(sent);
}

/* ------------------------------------------------------------------ checks --- */

static uint64_t fnv(const void *p, size_t n)
{
    const unsigned char *c = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ c[i]) * 1099511628211ull;
    return h;
}

static void check_identical(const void *buf, size_t bytes, const char *what)
{
    uint64_t mine = fnv(buf, bytes);
    uint64_t *all = xcalloc((size_t)P, 8);
    CHECK_RC(crux_allgather(&mine, 1, all, CRUX_INT64, g_comm));
    for (int r = 0; r < P; r++)
        if (all[r] != mine) {
            FAIL("%s: output bits differ from rank %d", what, r);
            break;
        }
    free(all);
}

static void compare(const float *got, const float *want, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++)
        if (memcmp(&got[i], &want[i], 4)) {
            FAIL("%s: element %zu is %g, want %g", what, i, (double)got[i], (double)want[i]);
            return;
        }
}

/* What crux_compressed_allreduce_add adds to: integers, and -0.0 every 5th entry
 * (adding +0 would turn it into +0.0, so untouched entries are checked bit for bit). */
static void prefill(float *out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = i % 5 == 0 ? -0.0f : (float)((int)(i % 11) - 5);
}

static void compare_added(const float *got, const struct sim *s, size_t n, const char *what)
{
    float *want = xcalloc(n, 4);
    prefill(want, n);
    size_t nkept = 0;
    for (size_t i = 0; i < n; i++)
        if (s->kept[i])
            want[i] += s->out[i], nkept++;
    char w[128];
    snprintf(w, sizeof(w), "%s, adding form (%zu kept)", what, nkept);
    compare(got, want, n, w);
    free(want);
}

static int parse_codec(const char *s)
{
    return !strcmp(s, "cltk") ? CRUX_CODEC_CLTK : !strcmp(s, "gtopk") ? CRUX_CODEC_GTOPK
                                                                     : CRUX_CODEC_SKETCH;
}

static int mode_check(int codec, size_t n, int steps, float beta, double density, int cols)
{
    crux_compress_config_t cfg;
    crux_compress_config_init(&cfg, codec);
    cfg.density = density;
    cfg.beta = beta;
    cfg.sketch_cols = cols;
    /* CLT-k keeps its default low-pass memory even at beta = 1, where it must equal
     * the residual the simulation applies, bit for bit. */
    if (codec != CRUX_CODEC_CLTK)
        cfg.memory = beta == 1.0f ? CRUX_MEMORY_RESIDUAL : CRUX_MEMORY_LOWPASS;
    crux_compressor_t c;
    CHECK_RC(crux_compressor_create(g_comm, n, &cfg, &c));
    g_n = n, g_chunk_len = c->chunk_len, g_density = density;
    struct sim s = { codec, n, c->chunk_len, c->nchunks, beta, NULL, NULL, NULL, NULL };
    s.mem = xcalloc((size_t)P, sizeof(float *));
    s.acc = xcalloc((size_t)P, sizeof(float *));
    for (int r = 0; r < P; r++)
        s.mem[r] = xcalloc(n, 4), s.acc[r] = xcalloc(n, 4);
    s.out = xcalloc(n, 4);
    s.kept = xcalloc(n, 1);
    float (*grad)(int, int, size_t) = codec == CRUX_CODEC_SKETCH ? grad_planted : grad_general;
    /* Off a 64-byte boundary by one float: vector paths must take any alignment. */
    float *g_base = xcalloc(n + 1, 4), *out_base = xcalloc(n + 1, 4);
    float *g = g_base + 1, *out = out_base + 1;
    /* Conservation (beta = 1, CLT-k and sketch): sum of outputs + sum of the
     * ranks' memories == sum of all inputs, exactly. gTop-k drops, by design, the
     * values of indices that lost a merge but reached the global set elsewhere. */
    float *in_total = xcalloc(n, 4), *out_total = xcalloc(n, 4);
    size_t want_nnz = 0;
    for (size_t ch = 0; ch < c->nchunks; ch++)
        want_nnz += chunk_k(n - ch * c->chunk_len < c->chunk_len ? n - ch * c->chunk_len : c->chunk_len);
    int rotated = 0;
    for (int t = 0; t < steps; t++) {
        char what[96];
        snprintf(what, sizeof(what), "%s P=%d n=%zu chunk=%zu step %d", codec == CRUX_CODEC_CLTK ? "cltk"
                 : codec == CRUX_CODEC_GTOPK ? "gtopk" : "sketch", P, n, c->chunk_len, t);
        for (size_t i = 0; i < n; i++)
            g[i] = grad(rank, t, i);
        int in_place = t == steps - 1, adding = t == 1 && steps > 2;
        if (adding)
            prefill(out, n);
        if (in_place)
            CHECK_RC(crux_compressed_allreduce(c, g, g));
        else if (adding)
            CHECK_RC(crux_compressed_allreduce_add(c, g, out));
        else
            CHECK_RC(crux_compressed_allreduce(c, g, out));
        float *res = in_place ? g : out;
        sim_step(&s, t, grad);
        if (adding) { /* out + estimate where kept, the prefill bits elsewhere */
            compare_added(out, &s, n, what);
            memcpy(out, s.out, n * 4); /* the estimate alone, for the checks below */
        }
        for (size_t i = 0; i < n; i++) {
            for (int r = 0; r < P; r++)
                in_total[i] += grad(r, t, i);
            out_total[i] += res[i];
        }
        compare(res, s.out, n, what);
        compare(c->mem, s.mem[rank], n, "memory");
        check_identical(res, n * 4, what);
        /* CLT-k: the support lies in the leader's boosted class. */
        if (codec == CRUX_CODEC_CLTK && P > 1) {
            size_t in_class = 0, nz = 0;
            for (size_t i = 0; i < n; i++)
                if (res[i] != 0) {
                    nz++;
                    in_class += (int)((i / 3) % (size_t)P) == t % P;
                }
            if (nz && in_class * 2 > nz)
                rotated++;
        }
        crux_compress_stats_t st;
        CHECK_RC(crux_compressor_stats(c, &st));
        if (st.nnz != want_nnz)
            FAIL("%s: stats nnz %zu, want %zu", what, st.nnz, want_nnz);
        if (st.dense_bytes != (uint64_t)n * 4)
            FAIL("%s: stats dense_bytes %llu", what, (unsigned long long)st.dense_bytes);
        /* Tiny vectors or dense "compression" may cost more than dense: only the
         * sizes the codecs are for must come out smaller. */
        int compresses = n >= 1000 && density <= 0.1;
        uint64_t ring = 2 * (uint64_t)(P - 1) * n * 4 / (uint64_t)P;
        if (st.ring_bytes != ring)
            FAIL("%s: stats ring_bytes %llu, want %llu", what, (unsigned long long)st.ring_bytes,
                 (unsigned long long)ring);
        if (P > 1 && (st.wire_bytes == 0 || (compresses && st.wire_bytes >= st.ring_bytes)))
            FAIL("%s: stats wire_bytes %llu (dense ring %llu)", what, (unsigned long long)st.wire_bytes,
                 (unsigned long long)st.ring_bytes);
        if (P == 1 && st.wire_bytes != 0)
            FAIL("%s: one rank sent %llu bytes", what, (unsigned long long)st.wire_bytes);
        if (!(st.total_s > 0) || st.encode_s < 0 || st.comm_s < 0 || st.decode_s < 0)
            FAIL("%s: stats times %g %g %g %g", what, st.encode_s, st.comm_s, st.decode_s, st.total_s);
    }
    if (beta == 1.0f && codec != CRUX_CODEC_GTOPK) {
        float *memsum = xcalloc(n, 4);
        CHECK_RC(crux_allreduce(c->mem, memsum, n, CRUX_FLOAT, CRUX_SUM, g_comm));
        for (size_t i = 0; i < n; i++)
            if (out_total[i] + memsum[i] != in_total[i]) {
                FAIL("conservation at %zu: sent %g + memories %g != inputs %g", i,
                     (double)out_total[i], (double)memsum[i], (double)in_total[i]);
                break;
            }
        free(memsum);
    }
    free(in_total), free(out_total);
    if (codec == CRUX_CODEC_CLTK && P > 1 && n >= 1000 && rotated != steps)
        FAIL("cltk: the output followed the leader's class in %d of %d steps", rotated, steps);
    CHECK_RC(crux_compressor_free(&c));
    if (c != NULL)
        FAIL("crux_compressor_free did not reset the handle");
    for (int r = 0; r < P; r++)
        free(s.mem[r]), free(s.acc[r]);
    free(s.mem), free(s.acc), free(s.out), free(s.kept), free(g_base), free(out_base);
    return failures;
}

/* Planted inputs whose global top-k has exactly k/nchunks entries in each chunk:
 * 4 chunks give the same result as 1. */
static int mode_chunks(int codec)
{
    size_t n = 4096;
    double density = 1.0 / 128;
    float *g = xcalloc(n, 4), *o1 = xcalloc(n, 4), *o4 = xcalloc(n, 4);
    crux_compress_config_t cfg;
    crux_compress_config_init(&cfg, codec);
    cfg.density = density;
    cfg.memory = CRUX_MEMORY_RESIDUAL;
    struct crux_config *ccfg = &CRUX_COMM_WORLD->ctx->cfg;
    crux_compressor_t c1, c4;
    ccfg->compress_chunk_bytes = n * 4;
    CHECK_RC(crux_compressor_create(CRUX_COMM_WORLD, n, &cfg, &c1));
    ccfg->compress_chunk_bytes = n; /* 4 chunks */
    CHECK_RC(crux_compressor_create(CRUX_COMM_WORLD, n, &cfg, &c4));
    if (c1->nchunks != 1 || c4->nchunks != 4)
        FAIL("chunks: %zu and %zu chunks, want 1 and 4", c1->nchunks, c4->nchunks);
    g_n = n, g_chunk_len = n / 4, g_density = density; /* plant per quarter */
    for (int t = 0; t < 3; t++) {
        for (size_t i = 0; i < n; i++)
            g[i] = grad_planted(rank, t, i);
        CHECK_RC(crux_compressed_allreduce(c1, g, o1));
        CHECK_RC(crux_compressed_allreduce(c4, g, o4));
        compare(o4, o1, n, "4 chunks vs 1");
        compare(c4->mem, c1->mem, n, "memory, 4 chunks vs 1");
        size_t nz = 0;
        for (size_t i = 0; i < n; i++)
            nz += o1[i] != 0;
        if (nz != 32)
            FAIL("chunks: %zu non-zeros, want 32", nz);
    }
    CHECK_RC(crux_compressor_free(&c1));
    CHECK_RC(crux_compressor_free(&c4));
    free(g), free(o1), free(o4);
    return failures;
}

static void expect_create(size_t n, const crux_compress_config_t *cfg, int want, const char *what)
{
    crux_compressor_t c = (crux_compressor_t)1;
    int rc = crux_compressor_create(CRUX_COMM_WORLD, n, cfg, &c);
    if (rc != want)
        FAIL("create with %s returned %s, want %s", what, crux_error_string(rc), crux_error_string(want));
    if (rc != CRUX_SUCCESS && c != NULL)
        FAIL("create with %s left a handle", what);
    crux_compressor_free(&c);
}

/* crux_compressed_allreduce_add refuses, before sending anything, an out that overlaps
 * grad and the codecs that sum in out (topk, qsgd); crux_compressed_allreduce refuses an
 * out that overlaps grad without being grad. Nothing is written. A good call then still
 * works on every rank. */
static int bad_add(void)
{
    float g[100], out[100];
    for (int i = 0; i < 100; i++)
        g[i] = (float)(i + 1), out[i] = 7.0f;
    const crux_codec_t codecs[] = { CRUX_CODEC_TOPK, CRUX_CODEC_QSGD, CRUX_CODEC_CLTK };
    for (int j = 0; j < 3; j++) {
        crux_compress_config_t cfg;
        crux_compress_config_init(&cfg, codecs[j]);
        crux_compressor_t c;
        CHECK_RC(crux_compressor_create(CRUX_COMM_WORLD, 100, &cfg, &c));
        int rc = codecs[j] == CRUX_CODEC_CLTK ? crux_compressed_allreduce_add(c, g, g + 50)
                                             : crux_compressed_allreduce_add(c, g, out);
        if (rc != CRUX_ERR_ARG)
            FAIL("crux_compressed_allreduce_add (codec %d%s): %d, want CRUX_ERR_ARG", (int)codecs[j],
                 codecs[j] == CRUX_CODEC_CLTK ? ", out inside grad" : "", rc);
        for (int i = 0; i < 100; i++)
            if (out[i] != 7.0f || g[i] != (float)(i + 1)) {
                FAIL("a refused crux_compressed_allreduce_add wrote element %d", i);
                break;
            }
        if (codecs[j] == CRUX_CODEC_CLTK) { /* no step was posted: the next call matches */
            float both[150];
            for (int i = 0; i < 150; i++)
                both[i] = (float)i;
            rc = crux_compressed_allreduce(c, both, both + 50);
            if (rc != CRUX_ERR_ARG)
                FAIL("crux_compressed_allreduce with out = grad + 50: %d, want CRUX_ERR_ARG", rc);
            for (int i = 0; i < 150; i++)
                if (both[i] != (float)i) {
                    FAIL("a refused crux_compressed_allreduce wrote element %d", i);
                    break;
                }
            CHECK_RC(crux_compressed_allreduce_add(c, g, out));
            size_t nz = 0;
            for (int i = 0; i < 100; i++)
                nz += out[i] != 7.0f;
            if (nz != 1 || out[99] != 7.0f + 100.0f * (float)P)
                FAIL("add after a refused call: %zu entries changed, out[99] = %g, want %g", nz,
                     (double)out[99], 7.0 + 100.0 * P);
        }
        CHECK_RC(crux_compressor_free(&c));
    }
    return failures;
}

static int mode_badcfg(void)
{
    crux_compress_config_t cfg;
    const double dens[] = { 0.0, -0.5, 1.5, NAN };
    for (int i = 0; i < 4; i++) {
        crux_compress_config_init(&cfg, CRUX_CODEC_CLTK);
        cfg.density = dens[i];
        expect_create(100, &cfg, CRUX_ERR_ARG, "a bad density");
    }
    const float betas[] = { 0.0f, -1.0f, 1.5f };
    for (int i = 0; i < 3; i++) {
        crux_compress_config_init(&cfg, CRUX_CODEC_CLTK);
        cfg.beta = betas[i];
        expect_create(100, &cfg, CRUX_ERR_ARG, "a bad beta");
    }
    crux_compress_config_init(&cfg, CRUX_CODEC_SKETCH);
    cfg.sketch_rows = 9;
    expect_create(100, &cfg, CRUX_ERR_ARG, "9 sketch rows");
    crux_compress_config_init(&cfg, CRUX_CODEC_SKETCH);
    cfg.sketch_cols = -1;
    expect_create(100, &cfg, CRUX_ERR_ARG, "negative sketch cols");
    crux_compress_config_init(&cfg, (crux_codec_t)42);
    expect_create(100, &cfg, CRUX_ERR_ARG, "an unknown codec");
    crux_compress_config_init(&cfg, CRUX_CODEC_NONE);
    expect_create(100, &cfg, CRUX_ERR_ARG, "codec none");
    crux_compress_config_init(&cfg, CRUX_CODEC_GTOPK);
    expect_create(0, &cfg, CRUX_ERR_ARG, "count 0");
    crux_compress_config_init(&cfg, CRUX_CODEC_CLTK); /* momentum is DGC's (topk) */
    cfg.memory = CRUX_MEMORY_MOMENTUM;
    expect_create(100, &cfg, CRUX_ERR_ARG, "momentum memory with cltk");
    crux_compress_config_init(&cfg, CRUX_CODEC_CLTK);
    if (crux_compressor_create(CRUX_COMM_WORLD, 100, NULL, NULL) != CRUX_ERR_ARG)
        FAIL("create with NULL cfg");
    /* The communicator still works, and a good config still creates. */
    expect_create(100, &cfg, CRUX_SUCCESS, "the default config");
    return bad_add();
}

static int mode_mismatch(const char *what)
{
    crux_compress_config_t cfg;
    crux_compress_config_init(&cfg, CRUX_CODEC_CLTK);
    size_t n = 1000;
    if (rank == 0) {
        if (!strcmp(what, "count"))
            n = 999;
        else
            cfg.density = 0.01;
    }
    expect_create(n, &cfg, P > 1 ? CRUX_ERR_MISMATCH : CRUX_SUCCESS, what);
    /* Not broken: the next collective works. */
    int64_t x = 1;
    CHECK_RC(crux_allreduce(CRUX_IN_PLACE, &x, 1, CRUX_INT64, CRUX_SUM, CRUX_COMM_WORLD));
    if (x != P)
        FAIL("allreduce after the mismatch: %lld", (long long)x);
    return failures;
}

/* A peer SIGKILLs itself in the middle of a stream of compressed calls. */
static int mode_kill(int codec, int victim)
{
    crux_compress_config_t cfg;
    crux_compress_config_init(&cfg, codec);
    size_t n = 1 << 18;
    crux_compressor_t c;
    CHECK_RC(crux_compressor_create(g_comm, n, &cfg, &c));
    float *g = xcalloc(n, 4), *out = xcalloc(n, 4);
    for (size_t i = 0; i < n; i++)
        g[i] = (float)((int)(i % 101) - 50);
    for (int t = 0; t < 1000; t++) {
        if (rank == victim && t == 3) {
            fflush(stdout);
            raise(SIGKILL);
        }
        int rc = crux_compressed_allreduce(c, g, out);
        if (rc != CRUX_SUCCESS) {
            printf("rank %d: compressed allreduce after a peer died returned %s\n", rank,
                   crux_error_string(rc));
            fflush(stdout);
            crux_compressor_free(&c);
            crux_finalize();
            return rc == CRUX_ERR_PEER || rc == CRUX_ERR_TIMEOUT ? 3 : 4;
        }
    }
    return 5;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s check CODEC N STEPS BETA DENSITY | chunks CODEC | badcfg | "
                "mismatch count|config\n", argv[0]);
        return 2;
    }
    CHECK_RC(crux_init(&argc, &argv));
    CHECK_RC(crux_comm_rank(CRUX_COMM_WORLD, &rank));
    CHECK_RC(crux_comm_size(CRUX_COMM_WORLD, &P));
    g_comm = CRUX_COMM_WORLD;
    int rc;
    if (!strcmp(argv[1], "check") && (argc == 7 || argc == 8))
        rc = mode_check(parse_codec(argv[2]), strtoul(argv[3], NULL, 10), atoi(argv[4]),
                        (float)atof(argv[5]), atof(argv[6]), argc == 8 ? atoi(argv[7]) : 0);
    else if (!strcmp(argv[1], "split") && argc == 3) {
        /* Two communicators (even and odd world ranks) compress at the same time. */
        crux_comm_t half;
        CHECK_RC(crux_comm_split(CRUX_COMM_WORLD, rank % 2, rank, &half));
        CHECK_RC(crux_comm_rank(half, &rank));
        CHECK_RC(crux_comm_size(half, &P));
        g_comm = half;
        rc = mode_check(parse_codec(argv[2]), 3001, 4, 0.5f, 0.01, 0);
        CHECK_RC(crux_comm_free(&half));
    } else if (!strcmp(argv[1], "chunks") && argc == 3)
        rc = mode_chunks(parse_codec(argv[2]));
    else if (!strcmp(argv[1], "badcfg"))
        rc = mode_badcfg();
    else if (!strcmp(argv[1], "mismatch") && argc == 3)
        rc = mode_mismatch(argv[2]);
    else if (!strcmp(argv[1], "kill") && argc == 4)
        return mode_kill(parse_codec(argv[2]), atoi(argv[3]));
    else {
        fprintf(stderr, "unknown mode %s\n", argv[1]);
        return 2;
    }
    CHECK_RC(crux_finalize());
    if (rc == 0)
        printf("rank %d: OK\n", rank);
    return rc ? 1 : 0;
}
