/* sketch.c - Count Sketch (codec.h): r x c table, seeded multiply-shift hashes.
 *
 * Row j sends the run of 16 indices i / 16 to the consecutive columns from
 * fastrange(hi32(a_j*(i/16) + b_j), c) (wrapping at c), each index with sign bit
 * hi32(sa_j*i + sb_j) >> 31 (codec_isa.h says why runs), a_j and sa_j odd. x is
 * processed in blocks of BLOCK elements: the signed values of a block are computed in
 * vector lanes (AVX-512 / AVX2 / scalar, identical bits), then each run is added to its
 * columns as one vector add. Every cell receives its additions in increasing i on
 * every path, so tables are bit-identical whatever the ISA.
 * The median of an even number of rows is the mean of the two middle estimates.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#ifdef __SSE2__
#include <immintrin.h>
#endif

#include "codec/codec_isa.h"
#include "codec/pool.h"
#include "crux.h"
#include "log.h"

#define BLOCK 1024 /* elements hashed at a time: (column, value) pairs of 8 KiB, in L1 */

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A table of 2 MiB or more is 2 MiB-aligned and asks for transparent huge pages: a row
 * of a 4 MiB table spans 200-340 4 KiB pages, more than the L1 TLB holds, so without
 * them most scattered updates also miss the L1 TLB (5 x 209715 encodes ~8% faster,
 * NOTES.md). */
#define HUGE_PAGE (2u << 20)
static float *table_alloc(size_t bytes)
{
    if (bytes < HUGE_PAGE)
        return aligned_alloc(64, (bytes + 63) / 64 * 64);
    bytes = (bytes + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
    float *t = aligned_alloc(HUGE_PAGE, bytes);
#ifdef MADV_HUGEPAGE
    if (t)
        (void)madvise(t, bytes, MADV_HUGEPAGE); /* advice only: 4 KiB pages still work */
#endif
    return t;
}

int crux_sketch_init(struct crux_sketch *s, int rows, int cols, uint64_t seed)
{
    memset(s, 0, sizeof *s);
    if (rows < 1 || rows > 8 || cols < 1) {
        crux_error(CRUX_SUBSYS_CODEC, "count sketch of %d x %d: rows must be 1..8, cols >= 1",
                   rows, cols);
        return CRUX_ERR_ARG;
    }
    size_t bytes = (size_t)rows * (size_t)cols * sizeof(float);
    s->table = table_alloc(bytes);
    if (!s->table) {
        crux_error(CRUX_SUBSYS_CODEC, "count sketch table of %zu bytes: out of memory", bytes);
        return CRUX_ERR_NOMEM;
    }
    memset(s->table, 0, bytes); /* after madvise: the first touch maps huge pages */
    s->rows = rows;
    s->cols = cols;
    uint64_t st = seed;
    for (int j = 0; j < rows; j++) {
        s->hash_a[j] = splitmix64(&st) | 1;
        s->hash_b[j] = splitmix64(&st);
        s->sign_a[j] = splitmix64(&st) | 1;
        s->sign_b[j] = splitmix64(&st);
    }
    return CRUX_SUCCESS;
}

void crux_sketch_free(struct crux_sketch *s)
{
    free(s->table);
    s->table = NULL;
}

void crux_sketch_zero(struct crux_sketch *s)
{
    memset(s->table, 0, (size_t)s->rows * (size_t)s->cols * sizeof(float));
}

static inline float flip(float v, uint32_t sign)
{
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    u ^= sign;
    memcpy(&v, &u, sizeof v);
    return v;
}

void codec_sign_scalar(const struct crux_sketch *s, int row, uint32_t base, size_t cnt,
                       uint32_t *sgn)
{
    for (size_t t = 0; t < cnt; t++)
        sgn[t] = codec_hash_sign(s->sign_a[row], s->sign_b[row], base + (uint32_t)t);
}

static void sign_block_isa(const struct crux_sketch *s, int row, uint32_t base, size_t cnt,
                           uint32_t *sgn)
{
    switch (crux_codec_active_isa()) {
#if defined(__x86_64__)
    case CODEC_ISA_AVX512: codec_sign_avx512(s, row, base, cnt, sgn); return;
    case CODEC_ISA_AVX2: codec_sign_avx2(s, row, base, cnt, sgn); return;
#endif
    default: codec_sign_scalar(s, row, base, cnt, sgn); return;
    }
}

/* The vector paths need indices that do not wrap: split the block where i passes 2^32-1. */
static void sign_block(const struct crux_sketch *s, int row, uint32_t base, size_t cnt,
                       uint32_t *sgn)
{
    uint64_t room = (uint64_t)UINT32_MAX - base + 1;
    if ((uint64_t)cnt > room) {
        sign_block_isa(s, row, base, (size_t)room, sgn);
        sign_block_isa(s, row, 0, cnt - (size_t)room, sgn + room);
        return;
    }
    sign_block_isa(s, row, base, cnt, sgn);
}

void codec_sign_val_scalar(const struct crux_sketch *s, int row, uint32_t base, const float *x,
                           size_t cnt, float *val)
{
    for (size_t t = 0; t < cnt; t++)
        val[t] = flip(x[t], codec_hash_sign(s->sign_a[row], s->sign_b[row], base + (uint32_t)t));
}

static void sign_val_isa(const struct crux_sketch *s, int row, uint32_t base, const float *x,
                         size_t cnt, float *val)
{
    switch (crux_codec_active_isa()) {
#if defined(__x86_64__)
    case CODEC_ISA_AVX512: codec_sign_val_avx512(s, row, base, x, cnt, val); return;
    case CODEC_ISA_AVX2: codec_sign_val_avx2(s, row, base, x, cnt, val); return;
#endif
    default: codec_sign_val_scalar(s, row, base, x, cnt, val); return;
    }
}

static void sign_val(const struct crux_sketch *s, int row, uint32_t base, const float *x,
                     size_t cnt, float *val)
{
    uint64_t room = (uint64_t)UINT32_MAX - base + 1;
    if ((uint64_t)cnt > room) {
        sign_val_isa(s, row, base, x, (size_t)room, val);
        sign_val_isa(s, row, 0, x + room, cnt - (size_t)room, val + room);
        return;
    }
    sign_val_isa(s, row, base, x, cnt, val);
}

/* The run holding global index base + t in row `row`: its first column there goes to
 * *c (not yet wrapped), and the return value is how many of the cnt - t elements left
 * it covers. */
static inline size_t run_at(const struct crux_sketch *s, int row, uint32_t base, size_t t,
                            size_t cnt, uint32_t *c)
{
    uint32_t i = base + (uint32_t)t, k = i % CODEC_SKETCH_RUN;
    *c = codec_run_col(s->hash_a[row], s->hash_b[row], (uint32_t)s->cols, i / CODEC_SKETCH_RUN) + k;
    return CODEC_SKETCH_RUN - k < cnt - t ? CODEC_SKETCH_RUN - k : cnt - t;
}

static inline uint32_t wrap_col(uint32_t c, uint32_t cols) { return c < cols ? c : (c - cols) % cols; }

/* out[t] = row[col(base + t)] with sign sgn[t] applied, t < cnt: a run is a contiguous
 * read of the row; one that passes the row's end wraps cell by cell. */
static void read_runs(const struct crux_sketch *s, int row_no, const float *row, uint32_t base,
                      const uint32_t *sgn, size_t cnt, float *out)
{
    const uint32_t cols = (uint32_t)s->cols;
    uint32_t c;
    for (size_t t = 0, m; t < cnt; t += m) {
        m = run_at(s, row_no, base, t, cnt, &c);
        for (size_t q = 0; q < m; q++)
            out[t + q] = flip(row[c + m <= cols ? c + q : wrap_col(c + (uint32_t)q, cols)], sgn[t + q]);
    }
}

/* dst[0..m) += src[0..m): a whole run is four 4-lane adds (the same IEEE adds as the
 * scalar loop, so the same bits). */
static inline void add_run(float *restrict dst, const float *restrict src, size_t m)
{
#ifdef __SSE2__
    if (m == 16) {
        for (int q = 0; q < 16; q += 4)
            _mm_storeu_ps(dst + q, _mm_add_ps(_mm_loadu_ps(dst + q), _mm_loadu_ps(src + q)));
        return;
    }
#endif
    for (size_t q = 0; q < m; q++)
        dst[q] += src[q];
}

/* row[col(base + t)] += val[t] for t < cnt, run by run in increasing t; a run that
 * would pass the row's end wraps cell by cell. */
static void add_runs(const struct crux_sketch *s, int row_no, float *row, uint32_t base,
                     const float *val, size_t cnt)
{
    const uint32_t cols = (uint32_t)s->cols;
    uint32_t c;
    for (size_t t = 0, m; t < cnt; t += m) {
        m = run_at(s, row_no, base, t, cnt, &c);
        if (c + m <= cols) {
            add_run(row + c, val + t, m);
            continue;
        }
        for (size_t q = 0; q < m; q++)
            row[wrap_col(c + (uint32_t)q, cols)] += val[t + q];
    }
}

/* Row-outer within chunks of CHUNK elements: the chunk of x (128 KiB) stays in L2 while
 * every row passes over it, and while one row is updated only that row (table/r bytes)
 * is hot. Each row signs BLOCK elements at a time into L1 with vectors, then adds them
 * run by run (with a per-index column hash the scattered read-modify-writes were the
 * whole cost: LIMITS.md section 3). Each cell still receives its additions in
 * increasing i, so the table does not depend on CHUNK, BLOCK or the ISA. */
#define CHUNK (1u << 15)
static void accumulate_rows(struct crux_sketch *s, const float *x, size_t n, uint32_t base,
                            int r0, int r1)
{
    float val[BLOCK];
    for (size_t c0 = 0; c0 < n; c0 += CHUNK) {
        size_t cend = n - c0 < CHUNK ? n : c0 + CHUNK;
        for (int j = r0; j < r1; j++) {
            float *row = s->table + (size_t)j * (size_t)s->cols;
            for (size_t off = c0; off < cend; off += BLOCK) {
                size_t cnt = cend - off < BLOCK ? cend - off : BLOCK;
                sign_val(s, j, base + (uint32_t)off, x + off, cnt, val);
                add_runs(s, j, row, base + (uint32_t)off, val, cnt);
            }
        }
    }
}

void crux_sketch_accumulate(struct crux_sketch *s, const float *x, size_t n, uint32_t base)
{
    accumulate_rows(s, x, n, base, 0, s->rows);
}

/* Rows are independent tables: part p of the pool owns rows [r0, r1), so every cell
 * still gets its additions in increasing i from one thread (bit-identical). */
struct sketch_job {
    struct crux_sketch *s;
    const float *x;
    size_t n;
    uint32_t base;
};

static void sketch_part(void *arg, int part, int nparts)
{
    struct sketch_job *j = arg;
    size_t r0, r1;
    crux_pool_range((size_t)j->s->rows, 1, part, nparts, &r0, &r1);
    if (r0 < r1)
        accumulate_rows(j->s, j->x, j->n, j->base, (int)r0, (int)r1);
}

void crux_sketch_accumulate_pool(struct crux_pool *pool, struct crux_sketch *s, const float *x,
                                 size_t n, uint32_t base)
{
    struct sketch_job j = {s, x, n, base};
    crux_pool_run(s->rows > 1 && n >= 8192 ? pool : NULL, sketch_part, &j);
}

#define QBLOCK 512 /* elements estimated at a time (query, estimate) */

/* Compare-exchange of two rows of lanes: lo = a < b ? a : b (exactly MINPS), hi =
 * b > a ? b : a (MAXPS(b, a)); with SSE explicitly, as the compiler emits branches
 * otherwise, which mispredict on random estimates. */
static void cmp_swap(float *restrict lo, float *restrict hi, size_t cnt)
{
    size_t t = 0;
#ifdef __SSE2__
    for (; t + 4 <= cnt; t += 4) {
        __m128 a = _mm_loadu_ps(lo + t), b = _mm_loadu_ps(hi + t);
        _mm_storeu_ps(lo + t, _mm_min_ps(a, b));
        _mm_storeu_ps(hi + t, _mm_max_ps(b, a));
    }
#endif
    for (; t < cnt; t++) {
        float a = lo[t], b = hi[t];
        lo[t] = a < b ? a : b;
        hi[t] = b > a ? b : a;
    }
}

/* Odd-even transposition sort of e[0..r) per lane from..cnt-1 (r passes sort r values).
 * The same network serves one element (query) and a block (estimate): identical results. */
static void sort_rows(float (*e)[QBLOCK], int r, size_t from, size_t cnt)
{
    for (int p = 0; p < r; p++)
        for (int j = p & 1; j + 1 < r; j += 2)
            cmp_swap(e[j] + from, e[j + 1] + from, cnt - from);
}

static inline float median_sorted(float (*e)[QBLOCK], int r, size_t t)
{
    if (r & 1)
        return e[r / 2][t];
    return 0.5f * (e[r / 2 - 1][t] + e[r / 2][t]);
}

#ifdef __SSE2__
/* sort_rows + median_sorted for lanes t..t+3 with the lanes kept in registers (r is a
 * constant once inlined): the same MINPS/MAXPS network, so the same bits, without
 * storing and reloading every row at every compare-exchange. */
static inline __attribute__((always_inline)) void median4(float (*e)[QBLOCK], const int r,
                                                          size_t t, float *out)
{
    __m128 v[8];
    for (int j = 0; j < r; j++)
        v[j] = _mm_loadu_ps(e[j] + t);
    for (int p = 0; p < r; p++)
        for (int j = p & 1; j + 1 < r; j += 2) {
            __m128 a = v[j], b = v[j + 1];
            v[j] = _mm_min_ps(a, b);
            v[j + 1] = _mm_max_ps(b, a);
        }
    if (r & 1)
        _mm_storeu_ps(out, v[r / 2]);
    else
        _mm_storeu_ps(out, _mm_mul_ps(_mm_set1_ps(0.5f), _mm_add_ps(v[(r - 1) / 2], v[r / 2])));
}
#define MEDIAN4_ROWS(R)                                                                            \
    case R:                                                                                        \
        for (; t + 4 <= cnt; t += 4)                                                               \
            median4(e, R, t, out + t);                                                             \
        break;
#endif

/* out[t] = median over the r rows of e[.][t], t < cnt (e is sorted in place for the tail). */
static void median_block(float (*e)[QBLOCK], int r, size_t cnt, float *out)
{
    size_t t = 0;
#ifdef __SSE2__
    switch (r) {
        MEDIAN4_ROWS(1) MEDIAN4_ROWS(2) MEDIAN4_ROWS(3) MEDIAN4_ROWS(4)
        MEDIAN4_ROWS(5) MEDIAN4_ROWS(6) MEDIAN4_ROWS(7) MEDIAN4_ROWS(8)
    }
#endif
    if (t == cnt)
        return;
    sort_rows(e, r, t, cnt);
    for (; t < cnt; t++)
        out[t] = median_sorted(e, r, t);
}

float crux_sketch_query(const struct crux_sketch *s, uint32_t i)
{
    float e[8][QBLOCK];
    for (int j = 0; j < s->rows; j++) {
        uint32_t c = codec_hash_col(s->hash_a[j], s->hash_b[j], (uint32_t)s->cols, i);
        uint32_t g = codec_hash_sign(s->sign_a[j], s->sign_b[j], i);
        e[j][0] = flip(s->table[(size_t)j * (size_t)s->cols + c], g);
    }
    float m;
    median_block(e, s->rows, 1, &m);
    return m;
}

void crux_sketch_estimate(const struct crux_sketch *s, size_t n, float *est)
{
    float e[8][QBLOCK];
    uint32_t sgn[QBLOCK];
    for (size_t off = 0; off < n; off += QBLOCK) {
        size_t cnt = n - off < QBLOCK ? n - off : QBLOCK;
        for (int j = 0; j < s->rows; j++) {
            const float *row = s->table + (size_t)j * (size_t)s->cols;
            sign_block(s, j, (uint32_t)off, cnt, sgn);
            read_runs(s, j, row, (uint32_t)off, sgn, cnt, e[j]);
        }
        median_block(e, s->rows, cnt, est + off);
    }
}

size_t crux_sketch_heavy(const struct crux_sketch *s, size_t n, size_t k, uint64_t seed,
                         struct crux_topk_ws *ws, float *est, uint32_t *idx)
{
    crux_sketch_estimate(s, n, est);
    return crux_topk(est, n, k, seed, ws, idx, NULL);
}
