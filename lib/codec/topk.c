/* topk.c - exact top-k by magnitude (codec.h) and the codec's runtime ISA dispatch.
 *
 * crux_topk, in the common case one pass over x plus a sample, no sort of n:
 *  1. Threshold from a seeded sample: ~n/1000 elements (at least 4096) taken as runs
 *     of 64 from random offsets in equal strata (cache-line friendly); the threshold
 *     is the sample's ks-th largest key, ks = expected rank of the k-th entry plus
 *     3 binomial standard deviations, so the pass keeps ~k(1+margin) and is rarely short.
 *  2. One vectorised compaction pass writes (idx, val) of every entry whose key is
 *     >= threshold into the workspace (ascending by construction).
 *  3. Exact-k fix-up on the survivors: radix-select their k-th largest key T (an
 *     11-bit histogram over the candidates, then two 10-bit digits over the keys of the
 *     boundary bucket only), then keep key > T and the lowest-index entries with
 *     key == T. Too few survivors -> the margin grows by 6 sigma and another pass (twice
 *     at most); too many for the workspace -> the exact path.
 * The exact path (small n, k > kmax, no workspace, or a failed estimate) radix-selects
 * on all of x (3 histogram passes) and sweeps once. Both paths apply the same rule, so
 * the result never depends on the path, the ISA or the seed.
 *
 * Key of x = |x| as bits (monotone in |x| for non-NaN floats), every NaN = one key above
 * +inf (codec_isa.h). -0 and +0 tie.
 */
#include <stdlib.h>
#include <string.h>

#include "codec/codec_isa.h"
#include "codec/pool.h"
#include "crux.h"
#include "log.h"

/* ---- dispatch ---- */

static int codec_isa_cur = CODEC_ISA_UNKNOWN;

static int cpu_can_run(int isa)
{
#ifdef CODEC_X86
    __builtin_cpu_init();
    if (isa == CODEC_ISA_AVX512)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("bmi2"); /* the fix-up sweep uses pdep */
    if (isa == CODEC_ISA_AVX2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("bmi2");
#endif
    return isa == CODEC_ISA_SCALAR;
}

int crux_codec_active_isa(void)
{
    int isa = __atomic_load_n(&codec_isa_cur, __ATOMIC_RELAXED);
    if (__builtin_expect(isa == CODEC_ISA_UNKNOWN, 0)) {
        isa = cpu_can_run(CODEC_ISA_AVX512) ? CODEC_ISA_AVX512
              : cpu_can_run(CODEC_ISA_AVX2) ? CODEC_ISA_AVX2
                                            : CODEC_ISA_SCALAR;
        __atomic_store_n(&codec_isa_cur, isa, __ATOMIC_RELAXED);
    }
    return isa;
}

const char *crux_codec_isa(void)
{
    switch (crux_codec_active_isa()) {
    case CODEC_ISA_AVX512: return "avx512";
    case CODEC_ISA_AVX2: return "avx2";
    default: return "scalar";
    }
}

int crux_codec_force_isa(const char *isa)
{
    int want;
    if (!isa)
        return -1;
    if (!strcmp(isa, "avx512"))
        want = CODEC_ISA_AVX512;
    else if (!strcmp(isa, "avx2"))
        want = CODEC_ISA_AVX2;
    else if (!strcmp(isa, "scalar"))
        want = CODEC_ISA_SCALAR;
    else
        return -1;
    if (!cpu_can_run(want))
        return -1;
    __atomic_store_n(&codec_isa_cur, want, __ATOMIC_RELAXED);
    return 0;
}

static inline uint32_t key_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return codec_key_bits(u);
}

size_t codec_compact_scalar(const float *x, size_t n, uint32_t thr, uint32_t *idx, float *val,
                            size_t cap)
{
    size_t cnt = 0;
    for (size_t i = 0; i < n; i++) {
        if (key_of(x[i]) >= thr) {
            if (cnt == cap)
                return cap + 1;
            idx[cnt] = (uint32_t)i;
            val[cnt] = x[i];
            cnt++;
        }
    }
    return cnt;
}

size_t codec_compact_acc_scalar(float *acc, const float *mem, const float *grad, size_t n,
                                uint32_t thr, uint32_t *idx, float *val, size_t cap, int zero,
                                float *out)
{
    size_t cnt = 0, i = 0;
    int over = 0;
    for (; i < n && !over; i++) {
        float a = mem[i] + grad[i];
        if (out) /* after the read of grad[i]: out may be grad */
            out[i] = 0.0f;
        if (key_of(a) >= thr && !(over = cnt == cap)) {
            idx[cnt] = (uint32_t)i;
            val[cnt] = a;
            cnt++;
            acc[i] = zero ? 0.0f : a;
        } else {
            acc[i] = a; /* also the first survivor past cap: not recorded, kept whole */
        }
    }
    if (!over)
        return cnt;
    /* over capacity: the caller falls back, but acc and out must be complete (and only
     * the recorded survivors zeroed) */
    for (; i < n; i++) {
        acc[i] = mem[i] + grad[i];
        if (out)
            out[i] = 0.0f;
    }
    return cap + 1;
}

static size_t compact_acc(float *acc, const float *mem, const float *grad, size_t n, uint32_t thr,
                          uint32_t *idx, float *val, size_t cap, int zero, float *out)
{
    switch (crux_codec_active_isa()) {
#ifdef CODEC_X86
    case CODEC_ISA_AVX512:
        return codec_compact_acc_avx512(acc, mem, grad, n, thr, idx, val, cap, zero, out);
    case CODEC_ISA_AVX2:
        return codec_compact_acc_avx2(acc, mem, grad, n, thr, idx, val, cap, zero, out);
#endif
    default: return codec_compact_acc_scalar(acc, mem, grad, n, thr, idx, val, cap, zero, out);
    }
}

static size_t compact(const float *x, size_t n, uint32_t thr, uint32_t *idx, float *val,
                      size_t cap)
{
    switch (crux_codec_active_isa()) {
#ifdef CODEC_X86
    case CODEC_ISA_AVX512: return codec_compact_avx512(x, n, thr, idx, val, cap);
    case CODEC_ISA_AVX2: return codec_compact_avx2(x, n, thr, idx, val, cap);
#endif
    default: return codec_compact_scalar(x, n, thr, idx, val, cap);
    }
}

/* ---- radix select on keys ---- */

/* Keys are < 2^31: digits of 11, 10 and 10 bits, most significant first. */
static const int digit_shift[3] = {20, 10, 0};
static const uint32_t digit_mask[3] = {0x7ff, 0x3ff, 0x3ff};

/* One radix digit: histogram the keys that match prefix on pmask, then find the bucket
 * holding the k-th largest; *greater accumulates the keys above it. Keys come from
 * floats (v) or, when v is NULL, from precomputed keys. */
static uint32_t digit_select(const float *v, const uint32_t *keys, size_t m, size_t k, int d,
                             uint32_t prefix, uint32_t pmask, size_t *greater, uint32_t *hist)
{
    int sh = digit_shift[d];
    uint32_t dm = digit_mask[d];
    memset(hist, 0, (dm + 1) * sizeof hist[0]);
    if (v) {
        for (size_t i = 0; i < m; i++) {
            uint32_t key = key_of(v[i]);
            if ((key & pmask) == prefix)
                hist[(key >> sh) & dm]++;
        }
    } else {
        for (size_t i = 0; i < m; i++)
            if ((keys[i] & pmask) == prefix)
                hist[(keys[i] >> sh) & dm]++;
    }
    uint32_t b = dm;
    for (; *greater + hist[b] < k; b--)
        *greater += hist[b];
    return b;
}

/* The k-th largest key of v[0..m) (1 <= k <= m), and how many keys are strictly larger.
 * With scratch (room for scratch_cap keys), the keys of the boundary bucket of the first
 * digit are copied out once, so the two later digits scan a small set, not all of v. */
static uint32_t kth_largest_key(const float *v, size_t m, size_t k, size_t *n_greater,
                                uint32_t *scratch, size_t scratch_cap)
{
    uint32_t hist[2048];
    size_t greater = 0;
    uint32_t b = digit_select(v, NULL, m, k, 0, 0, 0, &greater, hist);
    uint32_t prefix = b << digit_shift[0], pmask = digit_mask[0] << digit_shift[0];
    const uint32_t *keys = NULL;
    if (scratch && hist[b] <= scratch_cap) {
        size_t c = 0;
        for (size_t i = 0; i < m; i++) {
            uint32_t key = key_of(v[i]);
            scratch[c] = key;
            c += (key & pmask) == prefix; /* branch-free append */
        }
        keys = scratch;
        v = NULL;
        m = c;
    }
    for (int d = 1; d < 3; d++) {
        b = digit_select(v, keys, m, k, d, prefix, pmask, &greater, hist);
        prefix |= b << digit_shift[d];
        pmask |= digit_mask[d] << digit_shift[d];
    }
    *n_greater = greater;
    return prefix;
}

/* Keep key > t and the first `ties` entries with key == t, in order: exactly
 * n_greater + ties entries land in out_idx/out_val (which may alias the inputs). */
static size_t sweep_keep(const uint32_t *in_idx, const float *in_val, size_t m, uint32_t t,
                         size_t ties, uint32_t *out_idx, float *out_val, float *restore)
{
    size_t o = 0;
    for (size_t j = 0; j < m; j++) {
        uint32_t key = key_of(in_val[j]);
        if (key > t || (key == t && ties > 0)) {
            ties -= key == t;
            uint32_t ix = in_idx ? in_idx[j] : (uint32_t)j;
            float vv = in_val[j];
            if (out_idx)
                out_idx[o] = ix;
            if (out_val)
                out_val[o] = vv;
            o++;
        } else if (restore) {
            restore[in_idx[j]] = in_val[j];
        }
    }
    return o;
}

/* restore (with in_idx only): where the candidates that were not kept go back to,
 * restore[in_idx[j]] = in_val[j] (the zeroing EF pass). */
static size_t select_exact(const uint32_t *in_idx, const float *in_val, size_t m, size_t k,
                           uint32_t *scratch, size_t scratch_cap, uint32_t *out_idx,
                           float *out_val, float *restore)
{
    size_t greater;
    uint32_t t = kth_largest_key(in_val, m, k, &greater, scratch, scratch_cap);
#ifdef CODEC_X86
    if (in_idx && crux_codec_active_isa() == CODEC_ISA_AVX512)
        return codec_sweep_avx512(in_idx, in_val, m, t, k - greater, out_idx, out_val, restore);
#endif
    return sweep_keep(in_idx, in_val, m, t, k - greater, out_idx, out_val, restore);
}

/* ---- workspace ---- */

#define SAMPLE_RUN 64       /* elements per sampled run: whole cache lines */
#define SAMPLE_MIN 4096     /* below ~4 samples per stratum... the exact path is as cheap */
#define MARGIN_Z 3.0        /* binomial standard deviations of safety in the sample rank */
#define EXACT_BELOW 8192    /* n below which the exact path is used directly */
#define PART_ALIGN 1024     /* pool parts split x at multiples of this many elements */

struct crux_topk_ws {
    size_t n, kmax;
    size_t cap;        /* survivors the compaction may write */
    size_t stride;     /* survivor region of one pool part in cidx/cval (part 0 at 0) */
    int nparts;        /* regions allocated */
    struct crux_pool *pool;
    uint32_t *cidx;
    float *cval;
    uint32_t *ckey;    /* fix-up scratch: keys of the boundary radix bucket */
    float *sample;
    size_t sample_cap;
    int last_path;     /* enum codec_topk_path of the last call (tests, bench) */
    double margin_z;   /* MARGIN_Z; tests lower it to force the retry path */
};

void codec_topk_set_margin(struct crux_topk_ws *ws, double z) { ws->margin_z = z; }

int codec_topk_last_path(const struct crux_topk_ws *ws) { return ws->last_path; }

static size_t sample_size(size_t n)
{
    size_t s = n / 1000;
    if (s < SAMPLE_MIN)
        s = SAMPLE_MIN;
    s = (s + SAMPLE_RUN - 1) / SAMPLE_RUN * SAMPLE_RUN;
    return s;
}

/* Survivor regions for nparts pool parts, first-touched now (not on the hot path). */
static int alloc_regions(struct crux_topk_ws *ws, int nparts)
{
    size_t total = (size_t)nparts * ws->stride + 1;
    uint32_t *ci = malloc(total * sizeof *ci);
    float *cv = malloc(total * sizeof *cv);
    if (!ci || !cv) {
        free(ci);
        free(cv);
        crux_error(CRUX_SUBSYS_CODEC, "top-k workspace for n=%zu kmax=%zu, %d parts: out of memory",
                   ws->n, ws->kmax, nparts);
        return CRUX_ERR_NOMEM;
    }
    memset(ci, 0, total * sizeof *ci);
    memset(cv, 0, total * sizeof *cv);
    free(ws->cidx);
    free(ws->cval);
    ws->cidx = ci;
    ws->cval = cv;
    ws->nparts = nparts;
    return CRUX_SUCCESS;
}

int crux_topk_ws_create(size_t n, size_t kmax, struct crux_topk_ws **out)
{
    struct crux_topk_ws *ws = calloc(1, sizeof *ws);
    if (!ws) {
        crux_error(CRUX_SUBSYS_CODEC, "top-k workspace for n=%zu: out of memory", n);
        return CRUX_ERR_NOMEM;
    }
    ws->n = n;
    ws->kmax = kmax < n ? kmax : n;
    /* room for the usual 1.2-2.5x surplus of survivors over k; more falls back */
    ws->cap = 3 * ws->kmax + 4096;
    if (ws->cap > n)
        ws->cap = n;
    ws->stride = ws->cap + 64;
    ws->sample_cap = sample_size(n);
    ws->margin_z = MARGIN_Z;
    ws->ckey = malloc((ws->cap + 2) * sizeof *ws->ckey);
    ws->sample = malloc(ws->sample_cap * sizeof *ws->sample);
    if (!ws->ckey || !ws->sample || alloc_regions(ws, 1) != CRUX_SUCCESS) {
        crux_error(CRUX_SUBSYS_CODEC, "top-k workspace for n=%zu kmax=%zu: out of memory", n, kmax);
        crux_topk_ws_free(ws);
        return CRUX_ERR_NOMEM;
    }
    memset(ws->ckey, 0, (ws->cap + 2) * sizeof *ws->ckey);
    memset(ws->sample, 0, ws->sample_cap * sizeof *ws->sample);
    *out = ws;
    return CRUX_SUCCESS;
}

int crux_topk_ws_use_pool(struct crux_topk_ws *ws, struct crux_pool *pool)
{
    int parts = crux_pool_size(pool);
    if (parts > ws->nparts) {
        int rc = alloc_regions(ws, parts);
        if (rc != CRUX_SUCCESS)
            return rc;
    }
    ws->pool = pool;
    return CRUX_SUCCESS;
}

void crux_topk_ws_free(struct crux_topk_ws *ws)
{
    if (!ws)
        return;
    free(ws->cidx);
    free(ws->cval);
    free(ws->ckey);
    free(ws->sample);
    free(ws);
}

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Runs of SAMPLE_RUN elements, one at a seeded offset in each of s/SAMPLE_RUN equal
 * strata of x (stratified: every region is represented). With grad, the sample is of
 * x + grad (the fused pass samples the accumulator before it exists). */
static size_t take_sample(const float *x, const float *grad, size_t n, uint64_t seed, float *out,
                          size_t s)
{
    size_t runs = s / SAMPLE_RUN;
    size_t stratum = n / runs;
    uint64_t st = seed;
    for (size_t r = 0; r < runs; r++) {
        size_t span = stratum - SAMPLE_RUN + 1;
        size_t off = r * stratum + (size_t)(splitmix64(&st) % span);
        float *o = out + r * SAMPLE_RUN;
        if (grad)
            for (size_t j = 0; j < SAMPLE_RUN; j++)
                o[j] = x[off + j] + grad[off + j];
        else
            memcpy(o, x + off, SAMPLE_RUN * sizeof *out);
    }
    return runs * SAMPLE_RUN;
}

/* Rank in a sample of s (out of n) expected to hold the k-th entry, plus z sigma. */
static size_t sample_rank(size_t k, size_t n, size_t s, double z)
{
    double mean = (double)k * (double)s / (double)n;
    double r = mean + z * __builtin_sqrt(mean) + 1.0;
    return r >= (double)s ? s : r < 1.0 ? 1 : (size_t)r;
}

/* One survivor pass, split over the pool: part p compacts its range of x into its own
 * region; the regions are then joined in part order, which is exactly the list one
 * thread would have written. The fused form (acc != NULL) also writes acc = mem + grad. */
struct survivor_pass {
    const float *x;
    float *acc;
    const float *mem, *grad;
    float *out;        /* first fused pass only: zeroed as grad is read (may be grad) */
    size_t n;
    uint32_t thr;
    int zero;          /* this (fused) pass stores survivors as 0 in acc */
    int ef;            /* crux_topk_ef: the selected entries end as 0 in acc */
    struct crux_topk_ws *ws;
    size_t got[CRUX_POOL_MAX];
};

static void survivor_part(void *arg, int part, int nparts)
{
    struct survivor_pass *sp = arg;
    struct crux_topk_ws *ws = sp->ws;
    size_t lo, hi, c;
    crux_pool_range(sp->n, PART_ALIGN, part, nparts, &lo, &hi);
    uint32_t *idx = ws->cidx + (size_t)part * ws->stride;
    float *val = ws->cval + (size_t)part * ws->stride;
    if (sp->acc)
        c = compact_acc(sp->acc + lo, sp->mem + lo, sp->grad + lo, hi - lo, sp->thr, idx, val,
                        ws->cap, sp->zero, sp->out ? sp->out + lo : NULL);
    else
        c = compact(sp->x + lo, hi - lo, sp->thr, idx, val, ws->cap);
    if (c <= ws->cap && lo)
        for (size_t j = 0; j < c; j++)
            idx[j] += (uint32_t)lo;
    sp->got[part] = c;
}

/* Put the values of zeroed survivors back: acc[idx[j]] = val[j] (idx relative to lo). */
static void restore(float *acc, size_t lo, const uint32_t *idx, const float *val, size_t m)
{
    for (size_t j = 0; j < m; j++)
        acc[lo + idx[j]] = val[j];
}

/* Survivor count in ws->cidx/cval[0..m), or cap + 1 when more than cap qualified (then
 * any survivors a zeroing pass stored as 0 are restored first: acc is whole again). */
static size_t run_survivor_pass(struct survivor_pass *sp)
{
    struct crux_topk_ws *ws = sp->ws;
    struct crux_pool *pool = ws->nparts >= crux_pool_size(ws->pool) ? ws->pool : NULL;
    int nparts = crux_pool_size(pool);
    if (sp->n < (size_t)nparts * 4 * PART_ALIGN) /* too little to be worth a hand-over */
        pool = NULL, nparts = 1;
    crux_pool_run(pool, survivor_part, sp);
    size_t m = 0;
    int over = 0;
    for (int p = 0; p < nparts; p++)
        over |= sp->got[p] > ws->cap || (m += sp->got[p]) > ws->cap;
    if (over) {
        for (int p = 0; sp->zero && p < nparts; p++) { /* part p recorded min(got, cap) */
            size_t lo, hi, rec = sp->got[p] > ws->cap ? ws->cap : sp->got[p];
            crux_pool_range(sp->n, PART_ALIGN, p, nparts, &lo, &hi);
            restore(sp->acc, sp->got[p] > ws->cap ? lo : 0 /* overflowed: not rebased */,
                    ws->cidx + (size_t)p * ws->stride, ws->cval + (size_t)p * ws->stride, rec);
        }
        return ws->cap + 1;
    }
    m = 0;
    for (int p = 0; p < nparts; p++) {
        if (p) { /* regions move down only: m <= p * cap < p * stride */
            memmove(ws->cidx + m, ws->cidx + (size_t)p * ws->stride, sp->got[p] * sizeof *ws->cidx);
            memmove(ws->cval + m, ws->cval + (size_t)p * ws->stride, sp->got[p] * sizeof *ws->cval);
        }
        m += sp->got[p];
    }
    return m;
}

/* The sampled path: threshold from the sample, survivor pass, exact-k fix-up. The first
 * pass is sp as given (maybe fused, maybe zeroing); retries and the fallback read acc. */
static size_t topk_sampled(struct survivor_pass *sp, size_t k, uint64_t seed, uint32_t *idx,
                           float *val)
{
    struct crux_topk_ws *ws = sp->ws;
    size_t n = sp->n;
    size_t s = take_sample(sp->acc ? sp->mem : sp->x, sp->acc ? sp->grad : NULL, n, seed,
                           ws->sample, sample_size(n));
    float *acc = sp->acc;
    double z = ws->margin_z;
    for (int attempt = 0; attempt < 3; attempt++, z += 6.0) {
        size_t rank = sample_rank(k, n, s, z), greater;
        uint32_t thr = kth_largest_key(ws->sample, s, rank, &greater, NULL, 0);
        sp->thr = thr;
        size_t m = run_survivor_pass(sp);
        int zeroed = sp->zero && m <= ws->cap;
        if (sp->acc) { /* acc now holds mem + grad (and out is zero): later passes read acc */
            sp->x = sp->acc;
            sp->acc = NULL;
            sp->out = NULL;
            sp->zero = 0;
        }
        if (m > ws->cap)
            break;
        if (m >= k) {
            ws->last_path = attempt == 0 ? CODEC_TOPK_SAMPLED : CODEC_TOPK_RETRIED;
            size_t got = select_exact(ws->cidx, ws->cval, m, k, ws->ckey, ws->cap + 1, idx, val,
                                      zeroed ? acc : NULL);
            if (!zeroed && sp->ef)
                crux_zero_at(acc, idx, got);
            return got;
        }
        if (zeroed)
            restore(acc, 0, ws->cidx, ws->cval, m);
        if (rank == s) /* already kept everything the sample allows */
            break;
    }
    ws->last_path = CODEC_TOPK_FALLBACK;
    size_t got = select_exact(NULL, sp->x, n, k, NULL, 0, idx, val, NULL);
    if (sp->ef)
        crux_zero_at(acc, idx, got);
    return got;
}

/* Paths that skip sampling: nothing to select, everything, or no usable workspace. */
static int topk_trivial(size_t n, size_t k, const struct crux_topk_ws *ws)
{
    return k == 0 || k == n || !ws || n > ws->n || k > ws->kmax || n < EXACT_BELOW;
}

static size_t topk_direct(const float *x, size_t n, size_t k, struct crux_topk_ws *ws,
                          uint32_t *idx, float *val)
{
    if (k == 0)
        return 0;
    if (k == n)
        return sweep_keep(NULL, x, n, 0, n, idx, val, NULL);
    if (ws)
        ws->last_path = CODEC_TOPK_EXACT;
    return select_exact(NULL, x, n, k, NULL, 0, idx, val, NULL);
}

size_t crux_topk(const float *x, size_t n, size_t k, uint64_t seed, struct crux_topk_ws *ws,
                 uint32_t *idx, float *val)
{
    if (k > n)
        k = n;
    if (topk_trivial(n, k, ws))
        return topk_direct(x, n, k, ws, idx, val);
    struct survivor_pass sp = {.x = x, .n = n, .ws = ws};
    return topk_sampled(&sp, k, seed, idx, val);
}

size_t crux_topk_acc(float *acc, const float *mem, const float *grad, float *out, size_t n,
                     size_t k, uint64_t seed, struct crux_topk_ws *ws, uint32_t *idx, float *val)
{
    if (k > n)
        k = n;
    if (topk_trivial(n, k, ws)) {
        crux_mem_accumulate_zero(acc, mem, grad, out, n);
        return topk_direct(acc, n, k, ws, idx, val);
    }
    struct survivor_pass sp = {.acc = acc, .mem = mem, .grad = grad, .out = out, .n = n, .ws = ws};
    return topk_sampled(&sp, k, seed, idx, val);
}

size_t crux_topk_ef(float *mem, const float *grad, size_t n, size_t k, uint64_t seed,
                    struct crux_topk_ws *ws, uint32_t *idx, float *val)
{
    if (k > n)
        k = n;
    if (topk_trivial(n, k, ws)) {
        crux_mem_accumulate(mem, mem, grad, n);
        size_t got = topk_direct(mem, n, k, ws, idx, val);
        crux_zero_at(mem, idx, got);
        return got;
    }
    /* Survivors are stored as 0 during the pass; afterwards only the ~0.2-0.5 k that were
     * not selected get their value back: fewer random stores than zeroing k entries. */
    struct survivor_pass sp = {.acc = mem, .mem = mem, .grad = grad, .n = n, .ws = ws,
                               .zero = 1, .ef = 1};
    return topk_sampled(&sp, k, seed, idx, val);
}

size_t crux_topk_sparse(const uint32_t *cand_idx, const float *cand_val, size_t m, size_t k,
                        uint32_t *out_idx, float *out_val)
{
    if (k > m)
        k = m;
    if (k == 0)
        return 0;
    return select_exact(cand_idx, cand_val, m, k, NULL, 0, out_idx, out_val, NULL);
}
