/* qsgd.c - bucketed QSGD quantiser (see qsgd.h for the math and the wire layout).
 *
 * Every loop is written so gcc vectorises it without changing a single bit of the
 * result: sums run in 16 fixed lanes, the noise is a counter-based integer hash, and
 * the build uses -ffp-contract=off semantics (ISO C), so the AVX-512, AVX2 and portable
 * clones below produce the same bytes.
 */
#include <math.h>
#include <string.h>

#include "crux.h"
#include "lib/log.h"
#include "qsgd.h"
#include "pool.h"

/* Kernel bodies are always inlined into one wrapper per ISA (bottom of the file). */
#define BODY static inline __attribute__((always_inline))

#define LANES 16
#define BLOCK 256 /* codes unpacked/packed through a stack block of this many */

int crux_qsgd_code_bits(int levels)
{
    return levels <= 1 ? 2 : levels <= 7 ? 4 : 8;
}

int crux_qsgd_check(const struct crux_qsgd *q)
{
    if (!q || q->levels < 1 || q->levels > CRUX_QSGD_MAX_LEVELS) {
        crux_error(CRUX_SUBSYS_ALL, "qsgd: levels %d out of range 1..%d", q ? q->levels : -1,
                   CRUX_QSGD_MAX_LEVELS);
        return CRUX_ERR_ARG;
    }
    if (q->bucket < 8 || q->bucket % 8 || q->bucket > (1 << 24)) {
        crux_error(CRUX_SUBSYS_ALL, "qsgd: bucket %d must be a multiple of 8 in 8..2^24",
                   q->bucket);
        return CRUX_ERR_ARG;
    }
    if (q->norm != CRUX_QSGD_NORM_MAX && q->norm != CRUX_QSGD_NORM_L2) {
        crux_error(CRUX_SUBSYS_ALL, "qsgd: unknown norm %d", (int)q->norm);
        return CRUX_ERR_ARG;
    }
    return CRUX_SUCCESS;
}

static size_t code_bytes(int bits, size_t m)
{
    return (m * (size_t)bits + 7) / 8;
}

size_t crux_qsgd_encoded_bytes(const struct crux_qsgd *q, size_t n)
{
    size_t nb = (n + (size_t)q->bucket - 1) / (size_t)q->bucket;
    /* every block but the vector's last holds a multiple of 8 codes: whole bytes */
    return nb * sizeof(float) + code_bytes(crux_qsgd_code_bits(q->levels), n);
}

/* lowbias32 (Wellons): a full-avalanche 32-bit mix, cheap in vector lanes. */
static inline uint32_t mix32(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

/* The per-element noise: a Weyl counter key + i * golden (one add per vector when
 * stepping) and half of lowbias32, one multiply per 16 lanes. Its top 24 bits are
 * uniform enough for dithering; the full mix32 above costs a second multiply, and the
 * quantiser is compute-bound. */
static inline uint32_t noise32(uint32_t ctr)
{
    ctr ^= ctr >> 16;
    ctr *= 0x7feb352du;
    return ctr ^ (ctr >> 15);
}

/* The bucket's scale; NaN if it holds a NaN or an infinity (see bucket_inv). */
BODY float bucket_scale_body(const float *x, size_t m, enum crux_qsgd_norm norm)
{
    size_t i = 0;
    if (norm == CRUX_QSGD_NORM_MAX) {
        /* |x| compared as integers: for non-negative floats the bit patterns order like
         * the values, and NaN/inf are exactly the patterns >= 0x7f800000. */
        uint32_t lane[LANES] = {0};
        for (; i + LANES <= m; i += LANES)
            for (int j = 0; j < LANES; j++) {
                uint32_t a;
                memcpy(&a, &x[i + j], sizeof a);
                a &= 0x7fffffffu;
                lane[j] = a > lane[j] ? a : lane[j];
            }
        for (; i < m; i++) {
            uint32_t a;
            memcpy(&a, &x[i], sizeof a);
            a &= 0x7fffffffu;
            lane[0] = a > lane[0] ? a : lane[0];
        }
        uint32_t mx = 0;
        for (int j = 0; j < LANES; j++)
            mx = lane[j] > mx ? lane[j] : mx;
        float r;
        memcpy(&r, &mx, sizeof r);
        return mx < 0x7f800000u ? r : NAN;
    }
    double dl[LANES] = {0};
    for (; i + LANES <= m; i += LANES)
        for (int j = 0; j < LANES; j++)
            dl[j] += (double)x[i + j] * (double)x[i + j];
    for (; i < m; i++)
        dl[0] += (double)x[i] * (double)x[i];
    double s = 0.0;
    for (int j = 0; j < LANES; j++)
        s += dl[j];
    float r = (float)sqrt(s);
    return r <= 3.402823466e38f ? r : NAN;
}

/* s / scale, or 0 when the bucket encodes as all-zero codes: scale 0, NaN, or so small
 * (subnormal) that s / scale would overflow. */
static float bucket_inv(float scale, int s)
{
    return scale >= 1.17549435e-38f && scale <= 3.402823466e38f ? (float)s / scale : 0.0f;
}

/* Codes of m <= BLOCK elements (global indices base..) into c[]. */
BODY void quantize_block_body(const float *x, size_t m, uint32_t base, uint32_t key, float inv,
                           int s, int sign_bit, uint8_t *c)
{
    const float lim = (float)s;
    const uint32_t mm = (uint32_t)m; /* 32-bit lanes: m <= BLOCK */
    for (uint32_t i = 0; i < mm; i++) {
        uint32_t h = noise32(key + (base + i) * 0x9e3779b9u);
        float u = (float)(int32_t)(h >> 8) * 0x1p-24f;
        float t = fabsf(x[i]) * inv + u;
        t = t < lim ? t : lim; /* rounding at |x| == scale; never above s */
        uint32_t lvl = (uint32_t)(int32_t)t; /* 0 <= t <= 127: signed converts faster */
        uint32_t xb;
        memcpy(&xb, &x[i], sizeof xb);
        uint32_t neg = (xb >> 31) & (lvl != 0);
        c[i] = (uint8_t)(lvl | neg << sign_bit);
    }
}

BODY void pack_block_body(const uint8_t *c, size_t m, int bits, uint8_t *out)
{
    if (bits == 8) {
        memcpy(out, c, m);
    } else if (bits == 4) {
        for (size_t j = 0; j < m / 2; j++)
            out[j] = (uint8_t)(c[2 * j] | c[2 * j + 1] << 4);
        if (m & 1)
            out[m / 2] = c[m - 1];
    } else {
        for (size_t j = 0; j < m / 4; j++)
            out[j] = (uint8_t)(c[4 * j] | c[4 * j + 1] << 2 | c[4 * j + 2] << 4 |
                               c[4 * j + 3] << 6);
        if (m & 3) {
            uint8_t b = 0;
            for (size_t k = 0; k < (m & 3); k++)
                b |= (uint8_t)(c[m / 4 * 4 + k] << (2 * k));
            out[m / 4] = b;
        }
    }
}


BODY void dequant_add_block_body(const uint8_t *c, size_t m, float step, int sign_bit, float *acc,
                                 uint32_t flip)
{
    const uint32_t lvl_mask = (1u << sign_bit) - 1;
    for (size_t i = 0; i < m; i++) {
        float v = (float)(c[i] & lvl_mask) * step;
        uint32_t vb;
        memcpy(&vb, &v, sizeof vb);
        vb ^= ((uint32_t)(c[i] >> sign_bit) << 31) ^ flip;
        memcpy(&v, &vb, sizeof v);
        acc[i] += v;
    }
}

BODY void unpack_block_body(const uint8_t *in, size_t m, int bits, uint8_t *c)
{
    if (bits == 8) {
        memcpy(c, in, m);
    } else if (bits == 4) {
        for (size_t j = 0; j < m / 2; j++) {
            c[2 * j] = in[j] & 15;
            c[2 * j + 1] = in[j] >> 4;
        }
        if (m & 1)
            c[m - 1] = in[m / 2] & 15;
    } else {
        for (size_t i = 0; i < m; i++)
            c[i] = (uint8_t)(in[i / 4] >> (2 * (i % 4)) & 3);
    }
}

/* ---- one copy of the kernels per ISA, chosen once ---- */

struct qsgd_kernels {
    const char *name;
    float (*scale)(const float *x, size_t m, enum crux_qsgd_norm norm);
    void (*quantize)(const float *x, size_t m, uint32_t base, uint32_t key, float inv, int s,
                     int sign_bit, uint8_t *c);
    void (*dequant_add)(const uint8_t *c, size_t m, float step, int sign_bit, float *acc,
                        uint32_t flip);
    void (*pack)(const uint8_t *c, size_t m, int bits, uint8_t *out);
    void (*unpack)(const uint8_t *in, size_t m, int bits, uint8_t *c);
    /* quantize + pack of whole groups of 32 (NULL: quantize then pack through c[]);
     * returns how many elements it did (a multiple of 32) */
    size_t (*quantize_pack)(const float *x, size_t m, uint32_t base, uint32_t key, float inv,
                            int s, int bits, uint8_t *out);
};

#define QSGD_ISA(suffix, attr)                                                                \
    attr static float scale_##suffix(const float *x, size_t m, enum crux_qsgd_norm norm)      \
    {                                                                                         \
        return bucket_scale_body(x, m, norm);                                                 \
    }                                                                                         \
    attr static void quantize_##suffix(const float *x, size_t m, uint32_t base, uint32_t key, \
                                       float inv, int s, int sign_bit, uint8_t *c)            \
    {                                                                                         \
        quantize_block_body(x, m, base, key, inv, s, sign_bit, c);                            \
    }                                                                                         \
    attr static void dequant_##suffix(const uint8_t *c, size_t m, float step, int sign_bit,   \
                                      float *acc, uint32_t flip)                              \
    {                                                                                         \
        dequant_add_block_body(c, m, step, sign_bit, acc, flip);                              \
    }                                                                                         \
    attr static void pack_##suffix(const uint8_t *c, size_t m, int bits, uint8_t *out)        \
    {                                                                                         \
        pack_block_body(c, m, bits, out);                                                     \
    }                                                                                         \
    attr static void unpack_##suffix(const uint8_t *in, size_t m, int bits, uint8_t *c)       \
    {                                                                                         \
        unpack_block_body(in, m, bits, c);                                                    \
    }                                                                                         \
    static const struct qsgd_kernels kernels_##suffix = {                                     \
        #suffix, scale_##suffix, quantize_##suffix, dequant_##suffix, pack_##suffix,          \
        unpack_##suffix, QP_##suffix};

#define QP_scalar NULL
#define QP_avx2 NULL
#define QP_avx512 quantize_pack_avx512
QSGD_ISA(scalar, )
#if defined(__x86_64__) && defined(__GNUC__)
#define QSGD_X86 1
#include <immintrin.h>
#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

/* 16 codes of quantize_block_body, the same integer and IEEE operations in the same
 * order (no FMA: the sum is rounded after the product, as in the C body). ctr holds
 * key + (base + i) * 0x9e3779b9 per lane. */
static inline __attribute__((always_inline)) T512 __m512i codes16(const float *x, __m512i ctr,
                                                                 __m512 inv, __m512 lim,
                                                                 __m512i sign)
{
    __m512i h = _mm512_xor_si512(ctr, _mm512_srli_epi32(ctr, 16)); /* noise32 */
    h = _mm512_mullo_epi32(h, _mm512_set1_epi32(0x7feb352d));
    h = _mm512_xor_si512(h, _mm512_srli_epi32(h, 15));
    __m512 u = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(h, 8)), _mm512_set1_ps(0x1p-24f));
    __m512i xb = _mm512_loadu_si512(x);
    __m512 a = _mm512_castsi512_ps(_mm512_and_si512(xb, _mm512_set1_epi32(0x7fffffff)));
    __m512 t = _mm512_min_ps(_mm512_add_ps(_mm512_mul_ps(a, inv), u), lim); /* NaN -> lim */
    __m512i lvl = _mm512_cvttps_epi32(t);
    __mmask16 neg = _mm512_mask_cmpneq_epi32_mask(_mm512_movepi32_mask(xb), lvl, _mm512_setzero_si512());
    return _mm512_mask_or_epi32(lvl, neg, lvl, sign);
}

/* Pack 32 codes (two vectors of 16 lanes, values < 2^bits) LSB-first into bits*4 bytes. */
static inline __attribute__((always_inline)) T512 void pack32(__m512i c0, __m512i c1, int bits,
                                                             uint8_t *out)
{
    if (bits == 8) {
        _mm_storeu_si128((__m128i *)out, _mm512_cvtepi32_epi8(c0));
        _mm_storeu_si128((__m128i *)(out + 16), _mm512_cvtepi32_epi8(c1));
        return;
    }
    if (bits == 4) { /* 32 code bytes, then byte pairs: even + 16 * odd (maddubs) */
        __m256i b = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm512_cvtepi32_epi8(c0)),
                                            _mm512_cvtepi32_epi8(c1), 1);
        __m256i pairs = _mm256_maddubs_epi16(b, _mm256_set1_epi16(0x1001));
        _mm_storeu_si128((__m128i *)out, _mm256_cvtepi16_epi8(pairs));
        return;
    }
    /* pairs of lanes: even | odd << bits in the low byte of each 64-bit lane (the odd code
     * also stays in the high half: the narrowing below keeps only the low byte) */
    __m512i p0 = _mm512_or_si512(c0, _mm512_srli_epi64(c0, 32 - bits));
    __m512i p1 = _mm512_or_si512(c1, _mm512_srli_epi64(c1, 32 - bits));
    /* 2 bits: pairs of pairs (4-bit values) again, in 128-bit halves */
    __m512i q = _mm512_permutex2var_epi64(p0, _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14), p1);
    __m512i r = _mm512_permutex2var_epi64(p0, _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15), p1);
    __m512i b = _mm512_or_si512(q, _mm512_slli_epi64(r, 4));
    _mm_storel_epi64((__m128i *)out, _mm512_cvtepi64_epi8(b));
}

/* One loop per code width, so the packing is branch-free inside it. */
static inline __attribute__((always_inline)) T512 size_t
quantize_pack_bits(const float *x, size_t m, uint32_t base, uint32_t key, float inv, int s,
                   const int bits, uint8_t *out)
{
    const __m512 vinv = _mm512_set1_ps(inv), lim = _mm512_set1_ps((float)s);
    const __m512i sign = _mm512_set1_epi32(1 << (bits - 1));
    const __m512i step = _mm512_set1_epi32((int)(16u * 0x9e3779b9u));
    __m512i ctr = _mm512_add_epi32(
        _mm512_set1_epi32((int)(key + base * 0x9e3779b9u)),
        _mm512_setr_epi32(0, (int)0x9e3779b9u, (int)(2u * 0x9e3779b9u), (int)(3u * 0x9e3779b9u),
                          (int)(4u * 0x9e3779b9u), (int)(5u * 0x9e3779b9u), (int)(6u * 0x9e3779b9u),
                          (int)(7u * 0x9e3779b9u), (int)(8u * 0x9e3779b9u), (int)(9u * 0x9e3779b9u),
                          (int)(10u * 0x9e3779b9u), (int)(11u * 0x9e3779b9u),
                          (int)(12u * 0x9e3779b9u), (int)(13u * 0x9e3779b9u),
                          (int)(14u * 0x9e3779b9u), (int)(15u * 0x9e3779b9u)));
    size_t i = 0;
    for (; i + 32 <= m; i += 32) {
        __m512i c0 = codes16(x + i, ctr, vinv, lim, sign);
        ctr = _mm512_add_epi32(ctr, step);
        __m512i c1 = codes16(x + i + 16, ctr, vinv, lim, sign);
        ctr = _mm512_add_epi32(ctr, step);
        pack32(c0, c1, bits, out + i * (size_t)bits / 8);
    }
    return i;
}

static T512 size_t quantize_pack_avx512(const float *x, size_t m, uint32_t base, uint32_t key,
                                        float inv, int s, int bits, uint8_t *out)
{
    switch (bits) {
    case 2: return quantize_pack_bits(x, m, base, key, inv, s, 2, out);
    case 4: return quantize_pack_bits(x, m, base, key, inv, s, 4, out);
    default: return quantize_pack_bits(x, m, base, key, inv, s, 8, out);
    }
}

/* Max-norm scale of a bucket: the same maximum of |x| bit patterns as bucket_scale_body
 * (a maximum does not depend on the order), NaN for a bucket holding NaN or inf. */
static inline __attribute__((always_inline)) T512 float max_scale_avx512(const float *x, size_t m)
{
    const __m512i absmask = _mm512_set1_epi32(0x7fffffff);
    __m512i mx = _mm512_setzero_si512();
    size_t i = 0;
    for (; i + 16 <= m; i += 16)
        mx = _mm512_max_epu32(mx, _mm512_and_si512(_mm512_loadu_si512(x + i), absmask));
    uint32_t r = _mm512_reduce_max_epu32(mx);
    for (; i < m; i++) {
        uint32_t a;
        memcpy(&a, &x[i], sizeof a);
        a &= 0x7fffffffu;
        r = a > r ? a : r;
    }
    float f;
    memcpy(&f, &r, sizeof f);
    return r < 0x7f800000u ? f : NAN;
}

/* Whole max-norm buckets [b0, b1) with one code width: scale and quantise+pack inline,
 * no calls per bucket. Returns the bucket it stopped at (the vector's last, partial
 * bucket, whose 32-code tail the caller finishes), with *codes advanced. */
static inline __attribute__((always_inline)) T512 size_t
max_buckets_bits(const struct crux_qsgd *q, const float *x, size_t n, uint64_t base, uint32_t key,
                 size_t b0, size_t b1, uint8_t *out, uint8_t **codes, const int bits)
{
    const size_t bucket = (size_t)q->bucket;
    size_t b = b0;
    for (; b < b1; b++) {
        const size_t off = b * bucket;
        if (n - off < bucket || bucket % 32)
            break;
        float scale = max_scale_avx512(x + off, bucket);
        memcpy(out + b * sizeof(float), &scale, sizeof scale);
        quantize_pack_bits(x + off, bucket, (uint32_t)(base + off), key,
                           bucket_inv(scale, q->levels), q->levels, bits, *codes);
        *codes += bucket * (size_t)bits / 8;
    }
    return b;
}

static T512 size_t max_buckets_avx512(const struct crux_qsgd *q, const float *x, size_t n,
                                      uint64_t base, uint32_t key, size_t b0, size_t b1,
                                      uint8_t *out, uint8_t **codes)
{
    switch (crux_qsgd_code_bits(q->levels)) {
    case 2: return max_buckets_bits(q, x, n, base, key, b0, b1, out, codes, 2);
    case 4: return max_buckets_bits(q, x, n, base, key, b0, b1, out, codes, 4);
    default: return max_buckets_bits(q, x, n, base, key, b0, b1, out, codes, 8);
    }
}

QSGD_ISA(avx2, __attribute__((target("avx2,fma"))))
QSGD_ISA(avx512, T512)
#endif

static const struct qsgd_kernels *qsgd_k;

static const struct qsgd_kernels *kernels_for(const char *isa)
{
#ifdef QSGD_X86
    __builtin_cpu_init();
    if (!strcmp(isa, "avx512"))
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                       __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")
                   ? &kernels_avx512
                   : NULL;
    if (!strcmp(isa, "avx2"))
        return __builtin_cpu_supports("avx2") ? &kernels_avx2 : NULL;
#endif
    return strcmp(isa, "scalar") ? NULL : &kernels_scalar;
}

static const struct qsgd_kernels *active(void)
{
    const struct qsgd_kernels *k = __atomic_load_n(&qsgd_k, __ATOMIC_RELAXED);
    if (__builtin_expect(!k, 0)) {
        k = kernels_for("avx512");
        if (!k)
            k = kernels_for("avx2");
        if (!k)
            k = &kernels_scalar;
        __atomic_store_n(&qsgd_k, k, __ATOMIC_RELAXED);
    }
    return k;
}

const char *crux_qsgd_isa(void)
{
    return active()->name;
}

int crux_qsgd_force_isa(const char *isa)
{
    const struct qsgd_kernels *k = isa ? kernels_for(isa) : NULL;
    if (!k)
        return -1;
    __atomic_store_n(&qsgd_k, k, __ATOMIC_RELAXED);
    return 0;
}

/* Buckets [b0, b1) of the encoding of x[0..n): their scales at out[4*b], their codes from
 * codes (the byte where bucket b0's codes start). key already folds the base's high half. */
static void encode_buckets(const struct crux_qsgd *q, const float *x, size_t n, uint64_t base,
                           uint32_t key, size_t b0, size_t b1, uint8_t *out, uint8_t *codes)
{
    const int bits = crux_qsgd_code_bits(q->levels);
    const size_t bucket = (size_t)q->bucket;
    const struct qsgd_kernels *kern = active();
    uint8_t c[BLOCK];
#ifdef QSGD_X86
    if (kern == &kernels_avx512 && q->norm == CRUX_QSGD_NORM_MAX) /* the common case, inline */
        b0 = max_buckets_avx512(q, x, n, base, key, b0, b1, out, &codes);
#endif
    for (size_t b = b0; b < b1; b++) {
        const size_t off = b * bucket, m = n - off < bucket ? n - off : bucket;
        float scale = kern->scale(x + off, m, q->norm);
        float inv = bucket_inv(scale, q->levels);
        memcpy(out + b * sizeof(float), &scale, sizeof scale);
        size_t i = 0;
        if (kern->quantize_pack) {
            i = kern->quantize_pack(x + off, m, (uint32_t)(base + off), key, inv, q->levels, bits,
                                    codes);
            codes += i * (size_t)bits / 8;
        }
        for (; i < m; i += BLOCK) {
            size_t mb = m - i < BLOCK ? m - i : BLOCK;
            kern->quantize(x + off + i, mb, (uint32_t)(base + off + i), key, inv, q->levels,
                           bits - 1, c);
            kern->pack(c, mb, bits, codes);
            codes += code_bytes(bits, mb);
        }
    }
}

/* The hash takes 32-bit positions: fold the high half of the base into the key. */
static uint32_t stream_key(uint32_t key, uint64_t base)
{
    return key ^ mix32((uint32_t)(base >> 32) ^ 0x51ed2701u);
}

size_t crux_qsgd_encode(const struct crux_qsgd *q, const float *x, size_t n, uint64_t base,
                        uint32_t key, uint8_t *out)
{
    const size_t nb = (n + (size_t)q->bucket - 1) / (size_t)q->bucket;
    encode_buckets(q, x, n, base, stream_key(key, base), 0, nb, out, out + nb * sizeof(float));
    return crux_qsgd_encoded_bytes(q, n);
}

struct encode_job {
    const struct crux_qsgd *q;
    const float *x;
    size_t n, nb;
    uint64_t base;
    uint32_t key;
    uint8_t *out;
};

/* Part of the buckets; every bucket but the last holds a multiple of 8 codes, so a part's
 * codes start at a whole byte: (first element * bits) / 8. */
static void encode_part(void *arg, int part, int nparts)
{
    const struct encode_job *j = arg;
    size_t b0, b1;
    crux_pool_range(j->nb, 1, part, nparts, &b0, &b1);
    if (b0 == b1)
        return;
    size_t first = b0 * (size_t)j->q->bucket;
    uint8_t *codes = j->out + j->nb * sizeof(float) +
                     first * (size_t)crux_qsgd_code_bits(j->q->levels) / 8;
    encode_buckets(j->q, j->x, j->n, j->base, j->key, b0, b1, j->out, codes);
}

size_t crux_qsgd_encode_pool(struct crux_pool *pool, const struct crux_qsgd *q, const float *x,
                             size_t n, uint64_t base, uint32_t key, uint8_t *out)
{
    struct encode_job j = {q, x, n, (n + (size_t)q->bucket - 1) / (size_t)q->bucket, base,
                           stream_key(key, base), out};
    crux_pool_run(j.nb >= 64 ? pool : NULL, encode_part, &j);
    return crux_qsgd_encoded_bytes(q, n);
}

int crux_qsgd_validate(const struct crux_qsgd *q, const uint8_t *in, size_t len, size_t n)
{
    const int bits = crux_qsgd_code_bits(q->levels);
    const size_t bucket = (size_t)q->bucket;
    const size_t nb = (n + bucket - 1) / bucket;
    const unsigned lvl_mask = (1u << (bits - 1)) - 1, sign = 1u << (bits - 1);
    uint8_t c[BLOCK];
    if (len != crux_qsgd_encoded_bytes(q, n)) {
        crux_error(CRUX_SUBSYS_ALL, "qsgd: %zu bytes for %zu elements, expected %zu", len, n,
                   crux_qsgd_encoded_bytes(q, n));
        return CRUX_ERR_MISMATCH;
    }
    const uint8_t *codes = in + nb * sizeof(float);
    for (size_t b = 0; b < nb; b++) {
        const size_t m = n - b * bucket < bucket ? n - b * bucket : bucket;
        float scale;
        memcpy(&scale, in + b * sizeof(float), sizeof scale);
        if (scale < 0.0f) {
            crux_error(CRUX_SUBSYS_ALL, "qsgd: bucket %zu has negative scale %g", b,
                       (double)scale);
            return CRUX_ERR_MISMATCH;
        }
        for (size_t i = 0; i < m; i += BLOCK) {
            size_t mb = m - i < BLOCK ? m - i : BLOCK;
            active()->unpack(codes, mb, bits, c);
            for (size_t k = 0; k < mb; k++)
                if ((c[k] & lvl_mask) > (unsigned)q->levels || c[k] == sign) {
                    crux_error(CRUX_SUBSYS_ALL, "qsgd: bad code 0x%x at element %zu",
                               c[k], b * bucket + i + k);
                    return CRUX_ERR_MISMATCH;
                }
            size_t used = code_bytes(bits, mb);
            /* padding bits of a last, partial byte must be zero (one encoding per vector) */
            if ((mb * (size_t)bits) % 8 && codes[used - 1] >> ((mb * (size_t)bits) % 8)) {
                crux_error(CRUX_SUBSYS_ALL, "qsgd: non-zero padding after element %zu",
                           b * bucket + i + mb - 1);
                return CRUX_ERR_MISMATCH;
            }
            codes += used;
        }
    }
    return CRUX_SUCCESS;
}

/* flip = 0x80000000 subtracts (the sign of every decoded value flipped). */
static void decode_into(const struct crux_qsgd *q, const uint8_t *in, size_t n, float *acc,
                        uint32_t flip)
{
    const int bits = crux_qsgd_code_bits(q->levels);
    const size_t bucket = (size_t)q->bucket;
    const size_t nb = (n + bucket - 1) / bucket;
    const uint8_t *codes = in + nb * sizeof(float);
    const struct qsgd_kernels *kern = active();
    uint8_t c[BLOCK];
    for (size_t b = 0; b < nb; b++) {
        const size_t off = b * bucket, m = n - off < bucket ? n - off : bucket;
        float scale;
        memcpy(&scale, in + b * sizeof(float), sizeof scale);
        /* A non-finite scale marks a bucket that held NaN/inf: it decodes as NaN. */
        float step = scale <= 3.402823466e38f ? scale / (float)q->levels : NAN;
        for (size_t i = 0; i < m; i += BLOCK) {
            size_t mb = m - i < BLOCK ? m - i : BLOCK;
            kern->unpack(codes, mb, bits, c);
            if (step != step)
                for (size_t k = 0; k < mb; k++)
                    acc[off + i + k] += NAN;
            else
                kern->dequant_add(c, mb, step, bits - 1, acc + off + i, flip);
            codes += code_bytes(bits, mb);
        }
    }
}

void crux_qsgd_decode_add(const struct crux_qsgd *q, const uint8_t *in, size_t n, float *acc)
{
    decode_into(q, in, n, acc, 0);
}

void crux_qsgd_decode_sub(const struct crux_qsgd *q, const uint8_t *in, size_t n, float *acc)
{
    decode_into(q, in, n, acc, 0x80000000u);
}
