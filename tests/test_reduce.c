/* test_reduce.c - the reduction kernels (lib/reduce.c, reduce_avx2.c, reduce_avx512.c):
 * exact values for every dtype x op x ISA, aliasing, alignment and lengths around the
 * vector widths; the NaN/signed-zero rules; commutativity and cross-ISA identity on
 * random bits; exhaustive float16/bfloat16 conversion checks against F16C. */
#include <criterion/criterion.h>
#include <cpuid.h>
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "reduce.h"

#define NDTYPES 7
#define NOPS 4
static const crux_datatype_t dtypes[NDTYPES] = {CRUX_FLOAT,   CRUX_DOUBLE,  CRUX_INT32,
                                                CRUX_INT64,   CRUX_UINT8,   CRUX_FLOAT16,
                                                CRUX_BFLOAT16};
static const char *const dtype_names[NDTYPES] = {"float", "double", "int32", "int64",
                                                 "uint8", "float16", "bfloat16"};
static const char *const op_names[NOPS] = {"SUM", "PROD", "MAX", "MIN"};
static const size_t counts[] = {0, 1, 15, 16, 17, 63, 64, 65, 1000, 4099};
#define GUARD 128 /* bytes checked around every destination */

static size_t esize(crux_datatype_t dt)
{
    static const size_t sz[NDTYPES] = {4, 8, 4, 8, 1, 2, 2};
    return sz[dt];
}

/* Each ISA test runs in its own process (Criterion forks), so forcing does not leak. */
static void use_isa(const char *isa)
{
    if (crux_reduce_force_isa(isa) != 0)
        cr_skip_test("this CPU cannot run the %s kernels", isa);
    cr_assert_str_eq(crux_reduce_isa(), isa);
}

static uint64_t rng_next(uint64_t *s) /* splitmix64 */
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint32_t fbits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float ffrom(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* ---- exact values on small integers (exact in every dtype) ---- */

static int64_t val_a(crux_datatype_t dt, size_t i)
{
    return dt == CRUX_UINT8 ? (int64_t)((i * 37 + 11) & 255) : (int64_t)(i * 7 % 23) - 11;
}
static int64_t val_b(crux_datatype_t dt, size_t i)
{
    return dt == CRUX_UINT8 ? (int64_t)((i * 101 + 7) & 255) : (int64_t)((i * 5 + 3) % 19) - 9;
}

static void put(crux_datatype_t dt, void *buf, size_t i, int64_t v)
{
    unsigned char *p = (unsigned char *)buf + i * esize(dt);
    float f = (float)v;
    double d = (double)v;
    int32_t i32 = (int32_t)v;
    uint8_t u8 = (uint8_t)(v & 255);
    uint16_t h;
    switch (dt) {
    case CRUX_FLOAT: memcpy(p, &f, 4); break;
    case CRUX_DOUBLE: memcpy(p, &d, 8); break;
    case CRUX_INT32: memcpy(p, &i32, 4); break;
    case CRUX_INT64: memcpy(p, &v, 8); break;
    case CRUX_UINT8: memcpy(p, &u8, 1); break;
    case CRUX_FLOAT16: h = crux_float_to_half(f); memcpy(p, &h, 2); break;
    case CRUX_BFLOAT16: h = crux_float_to_bf16(f); memcpy(p, &h, 2); break;
    }
}

static int is_float(crux_datatype_t dt)
{
    return dt == CRUX_FLOAT || dt == CRUX_DOUBLE || dt == CRUX_FLOAT16 || dt == CRUX_BFLOAT16;
}

static void put_neg_zero(crux_datatype_t dt, void *buf, size_t i)
{
    size_t es = esize(dt);
    memset((unsigned char *)buf + i * es, 0, es);
    ((unsigned char *)buf)[i * es + es - 1] = 0x80; /* the sign bit, little endian */
}

static int64_t int_op(crux_op_t op, int64_t x, int64_t y)
{
    switch (op) {
    case CRUX_SUM: return x + y;
    case CRUX_PROD: return x * y;
    case CRUX_MAX: return x > y ? x : y;
    default: return x < y ? x : y;
    }
}

/* mode 0: dst separate, 1: dst == a, 2: dst == b, 3: dst == a == b */
static void check_exact_case(crux_datatype_t dt, crux_op_t op, size_t n, const size_t off[3],
                             int mode)
{
    size_t es = esize(dt), bytes = n * es + 2 * GUARD + 64;
    unsigned char *bufs[3], *expect = malloc(n * es + 1);
    for (int k = 0; k < 3; k++) {
        bufs[k] = malloc(bytes);
        memset(bufs[k], 0xa5, bytes);
    }
    unsigned char *a = bufs[0] + GUARD + off[0], *b = bufs[1] + GUARD + off[1];
    unsigned char *d = bufs[2] + GUARD + off[2];
    if (mode == 3)
        b = a;
    for (size_t i = 0; i < n; i++) {
        put(dt, a, i, val_a(dt, i));
        if (mode != 3)
            put(dt, b, i, val_b(dt, i));
        int64_t va = val_a(dt, i), vb = mode == 3 ? val_a(dt, i) : val_b(dt, i);
        put(dt, expect, i, int_op(op, va, vb));
        if (is_float(dt) && op == CRUX_PROD && (va == 0 || vb == 0) && (va < 0) != (vb < 0))
            put_neg_zero(dt, expect, i); /* 0 * -x is -0 in IEEE */
    }
    if (mode == 1 || mode == 3)
        d = a;
    else if (mode == 2)
        d = b;
    crux_reduce(d, a, b, n, dt, op);
    for (size_t i = 0; i < n * es; i++)
        if (d[i] != expect[i])
            cr_assert_fail("%s %s n=%zu mode=%d offs=%zu/%zu/%zu: byte %zu (element %zu) is "
                           "0x%02x, expected 0x%02x", dtype_names[dt], op_names[op], n, mode,
                           off[0], off[1], off[2], i, i / es, d[i], expect[i]);
    if (mode == 0) { /* masked and scalar tails must not touch the neighbours */
        size_t doff = GUARD + off[2];
        for (size_t i = 0; i < bytes; i++)
            if ((i < doff || i >= doff + n * es) && bufs[2][i] != 0xa5)
                cr_assert_fail("%s %s n=%zu: wrote outside dst at byte %zd", dtype_names[dt],
                               op_names[op], n, (ssize_t)i - (ssize_t)doff);
    }
    for (int k = 0; k < 3; k++)
        free(bufs[k]);
    free(expect);
}

static void check_exact(const char *isa)
{
    static const size_t offs[][3] = {{0, 0, 0}, {1, 2, 3}, {8, 0, 24}, {0, 4, 62}, {2, 6, 2}};
    use_isa(isa);
    for (int t = 0; t < NDTYPES; t++)
        for (int op = 0; op < NOPS; op++)
            for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++)
                for (size_t o = 0; o < sizeof offs / sizeof offs[0]; o++)
                    for (int mode = 0; mode < 4; mode++)
                        check_exact_case(dtypes[t], (crux_op_t)op, counts[c], offs[o], mode);
}

/* ---- wrap-around of integer SUM/PROD ---- */

static void check_wrap(const char *isa)
{
    use_isa(isa);
    enum { N = 67 };
    int32_t a32[N], b32[N], d32[N];
    int64_t a64[N], b64[N], d64[N];
    uint8_t a8[N], b8[N], d8[N];
    for (int i = 0; i < N; i++) {
        a32[i] = INT32_MAX; b32[i] = i % 2 ? 1 : 0x10000;
        a64[i] = INT64_MAX; b64[i] = 1;
        a8[i] = 200; b8[i] = 100;
    }
    crux_reduce(d32, a32, b32, N, CRUX_INT32, CRUX_SUM);
    for (int i = 0; i < N; i++)
        cr_assert_eq(d32[i], i % 2 ? INT32_MIN : (int32_t)(0x7fffffffu + 0x10000u), "i=%d", i);
    for (int i = 0; i < N; i++)
        a32[i] = 0x10000;
    crux_reduce(d32, a32, b32, N, CRUX_INT32, CRUX_PROD);
    for (int i = 0; i < N; i++)
        cr_assert_eq(d32[i], i % 2 ? 0x10000 : 0, "i=%d", i);
    crux_reduce(d64, a64, b64, N, CRUX_INT64, CRUX_SUM);
    for (int i = 0; i < N; i++)
        cr_assert_eq(d64[i], INT64_MIN, "i=%d", i);
    for (int i = 0; i < N; i++) {
        a64[i] = (int64_t)((1ull << 32) + 3);
        b64[i] = i % 2 ? (int64_t)((1ull << 32) + 5) : -7;
    }
    crux_reduce(d64, a64, b64, N, CRUX_INT64, CRUX_PROD);
    for (int i = 0; i < N; i++)
        cr_assert_eq((uint64_t)d64[i], i % 2 ? (8ull << 32) + 15 : 0ull - 7 * ((1ull << 32) + 3));
    crux_reduce(d64, a64, b64, N, CRUX_INT64, CRUX_MIN);
    for (int i = 0; i < N; i++)
        cr_assert_eq(d64[i], i % 2 ? (int64_t)((1ull << 32) + 3) : -7);
    crux_reduce(d8, a8, b8, N, CRUX_UINT8, CRUX_SUM);
    for (int i = 0; i < N; i++)
        cr_assert_eq(d8[i], 44);
    for (int i = 0; i < N; i++) {
        a8[i] = i % 2 ? 255 : 16; b8[i] = i % 2 ? 255 : 16;
    }
    crux_reduce(d8, a8, b8, N, CRUX_UINT8, CRUX_PROD);
    for (int i = 0; i < N; i++)
        cr_assert_eq(d8[i], i % 2 ? 1 : 0);
    crux_reduce(d8, a8, b8, N, CRUX_UINT8, CRUX_MAX); /* unsigned compare: 255 > 16 */
    for (int i = 0; i < N; i++)
        cr_assert_eq(d8[i], i % 2 ? 255 : 16);
}

/* ---- an independent reference for one element ---- */

static float ref_f32(crux_op_t op, float x, float y)
{
    float r;
    if (isnan(x) || isnan(y))
        return ffrom(0x7fc00000u);
    switch (op) {
    case CRUX_SUM: r = x + y; break;
    case CRUX_PROD: r = x * y; break;
    case CRUX_MAX:
        if (x == 0 && y == 0)
            return signbit(x) && signbit(y) ? -0.0f : 0.0f;
        r = x > y ? x : y;
        break;
    default:
        if (x == 0 && y == 0)
            return signbit(x) || signbit(y) ? -0.0f : 0.0f;
        r = x < y ? x : y;
        break;
    }
    return isnan(r) ? ffrom(0x7fc00000u) : r;
}

static double ref_f64(crux_op_t op, double x, double y)
{
    double r, qnan;
    uint64_t q = 0x7ff8000000000000ull;
    memcpy(&qnan, &q, 8);
    if (isnan(x) || isnan(y))
        return qnan;
    switch (op) {
    case CRUX_SUM: r = x + y; break;
    case CRUX_PROD: r = x * y; break;
    case CRUX_MAX:
        if (x == 0 && y == 0)
            return signbit(x) && signbit(y) ? -0.0 : 0.0;
        r = x > y ? x : y;
        break;
    default:
        if (x == 0 && y == 0)
            return signbit(x) || signbit(y) ? -0.0 : 0.0;
        r = x < y ? x : y;
        break;
    }
    return isnan(r) ? qnan : r;
}

static void ref_elem(crux_datatype_t dt, crux_op_t op, const void *x, const void *y, void *out)
{
    float f1, f2, f;
    double d1, d2, d;
    int32_t i1, i2, i;
    int64_t l1, l2, l;
    uint16_t h1, h2, h;
    uint8_t b1, b2, b;
    switch (dt) {
    case CRUX_FLOAT:
        memcpy(&f1, x, 4); memcpy(&f2, y, 4);
        f = ref_f32(op, f1, f2); memcpy(out, &f, 4);
        break;
    case CRUX_DOUBLE:
        memcpy(&d1, x, 8); memcpy(&d2, y, 8);
        d = ref_f64(op, d1, d2); memcpy(out, &d, 8);
        break;
    case CRUX_INT32:
        memcpy(&i1, x, 4); memcpy(&i2, y, 4);
        i = (int32_t)(uint32_t)int_op(op, i1, i2); memcpy(out, &i, 4);
        break;
    case CRUX_INT64:
        memcpy(&l1, x, 8); memcpy(&l2, y, 8);
        if (op == CRUX_SUM)
            l = (int64_t)((uint64_t)l1 + (uint64_t)l2);
        else if (op == CRUX_PROD)
            l = (int64_t)((uint64_t)l1 * (uint64_t)l2);
        else
            l = int_op(op, l1, l2);
        memcpy(out, &l, 8);
        break;
    case CRUX_UINT8:
        memcpy(&b1, x, 1); memcpy(&b2, y, 1);
        b = (uint8_t)(int_op(op, b1, b2) & 255); memcpy(out, &b, 1);
        break;
    case CRUX_FLOAT16:
        memcpy(&h1, x, 2); memcpy(&h2, y, 2);
        h = crux_float_to_half(ref_f32(op, crux_half_to_float(h1), crux_half_to_float(h2)));
        memcpy(out, &h, 2);
        break;
    case CRUX_BFLOAT16:
        memcpy(&h1, x, 2); memcpy(&h2, y, 2);
        h = crux_float_to_bf16(ref_f32(op, crux_bf16_to_float(h1), crux_bf16_to_float(h2)));
        memcpy(out, &h, 2);
        break;
    }
}

/* ---- random inputs rich in NaN (any payload/sign), +-0, inf, subnormals, ties ---- */

static uint64_t special_bits(crux_datatype_t dt, uint64_t r)
{
    static const uint32_t f32s[] = {0, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u,
                                    0xffc00001u, 0x7f800001u, 0x00000001u, 0x807fffffu,
                                    0x7f7fffffu, 0x3f800000u};
    static const uint64_t f64s[] = {0, 0x8000000000000000ull, 0x7ff0000000000000ull,
                                    0xfff0000000000000ull, 0x7ff8000000000000ull,
                                    0xfff8000000000123ull, 0x7ff0000000000001ull, 1,
                                    0x800fffffffffffffull, 0x7fefffffffffffffull};
    static const uint16_t f16s[] = {0, 0x8000, 0x7c00, 0xfc00, 0x7e00, 0xfe01, 0x7c01,
                                    0x0001, 0x83ff, 0x7bff, 0x3c00, 0x6800};
    static const uint16_t bf16s[] = {0, 0x8000, 0x7f80, 0xff80, 0x7fc0, 0xffc1, 0x7f81,
                                     0x0001, 0x807f, 0x7f7f, 0x3f80, 0x4380};
    switch (dt) {
    case CRUX_FLOAT: return f32s[r % (sizeof f32s / 4)];
    case CRUX_DOUBLE: return f64s[r % (sizeof f64s / 8)];
    case CRUX_FLOAT16: return f16s[r % (sizeof f16s / 2)];
    case CRUX_BFLOAT16: return bf16s[r % (sizeof bf16s / 2)];
    default: return r;
    }
}

static void fill_random(crux_datatype_t dt, unsigned char *p, size_t n, uint64_t *seed)
{
    size_t es = esize(dt);
    for (size_t i = 0; i < n; i++) {
        uint64_t r = rng_next(seed), v = rng_next(seed);
        if (r % 8 == 0)
            v = special_bits(dt, r >> 8);
        else if (r % 8 == 1 && dt == CRUX_FLOAT) /* moderate exponents: rounding, not overflow */
            v = (v & 0x807fffffu) | ((uint64_t)(100 + (r >> 8) % 56) << 23);
        memcpy(p + i * es, &v, es); /* little endian: the low bytes */
    }
}

/* b[i] becomes a[i] or a[i] with the sign flipped now and then: equal-operand paths */
static void add_equal_pairs(crux_datatype_t dt, const unsigned char *a, unsigned char *b,
                            size_t n, uint64_t *seed)
{
    size_t es = esize(dt);
    for (size_t i = 0; i < n; i++) {
        uint64_t r = rng_next(seed);
        if (r % 16 == 0)
            memcpy(b + i * es, a + i * es, es);
        else if (r % 16 == 1 && dt != CRUX_UINT8 && dt != CRUX_INT32 && dt != CRUX_INT64) {
            memcpy(b + i * es, a + i * es, es);
            b[i * es + es - 1] ^= 0x80;
        }
    }
}

struct rand_bufs {
    unsigned char *a, *b, *d1, *d2;
    void *mem[4];
};

static void rand_bufs_init(struct rand_bufs *rb, crux_datatype_t dt, size_t n, uint64_t seed,
                           const size_t off[4])
{
    size_t bytes = n * esize(dt) + 64;
    for (int k = 0; k < 4; k++)
        rb->mem[k] = malloc(bytes);
    rb->a = (unsigned char *)rb->mem[0] + off[0];
    rb->b = (unsigned char *)rb->mem[1] + off[1];
    rb->d1 = (unsigned char *)rb->mem[2] + off[2];
    rb->d2 = (unsigned char *)rb->mem[3] + off[3];
    fill_random(dt, rb->a, n, &seed);
    fill_random(dt, rb->b, n, &seed);
    add_equal_pairs(dt, rb->a, rb->b, n, &seed);
}

static void rand_bufs_free(struct rand_bufs *rb)
{
    for (int k = 0; k < 4; k++)
        free(rb->mem[k]);
}

static void assert_same_bytes(const unsigned char *got, const unsigned char *want, size_t n,
                              crux_datatype_t dt, crux_op_t op, const char *what)
{
    size_t es = esize(dt);
    for (size_t i = 0; i < n; i++)
        if (memcmp(got + i * es, want + i * es, es)) {
            uint64_t g = 0, w = 0;
            memcpy(&g, got + i * es, es);
            memcpy(&w, want + i * es, es);
            cr_assert_fail("%s %s: %s differs at element %zu of %zu: 0x%llx vs 0x%llx",
                     dtype_names[dt], op_names[op], what, i, n, (unsigned long long)g,
                     (unsigned long long)w);
        }
}

static void check_random_vs_reference(const char *isa)
{
    static const size_t off[4] = {3, 1, 6, 0};
    use_isa(isa);
    for (int t = 0; t < NDTYPES; t++)
        for (int op = 0; op < NOPS; op++) {
            size_t n = 5003, es = esize(dtypes[t]);
            struct rand_bufs rb;
            rand_bufs_init(&rb, dtypes[t], n, 42 + (uint64_t)(t * NOPS + op), off);
            for (size_t i = 0; i < n; i++)
                ref_elem(dtypes[t], (crux_op_t)op, rb.a + i * es, rb.b + i * es, rb.d2 + i * es);
            crux_reduce(rb.d1, rb.a, rb.b, n, dtypes[t], (crux_op_t)op);
            assert_same_bytes(rb.d1, rb.d2, n, dtypes[t], (crux_op_t)op, "kernel vs reference");
            rand_bufs_free(&rb);
        }
}

static void check_commutative(const char *isa)
{
    static const size_t off[4] = {0, 5, 2, 9};
    use_isa(isa);
    for (int t = 0; t < NDTYPES; t++)
        for (int op = 0; op < NOPS; op++) {
            size_t n = 20011;
            struct rand_bufs rb;
            rand_bufs_init(&rb, dtypes[t], n, 7 + (uint64_t)(t * NOPS + op), off);
            crux_reduce(rb.d1, rb.a, rb.b, n, dtypes[t], (crux_op_t)op);
            crux_reduce(rb.d2, rb.b, rb.a, n, dtypes[t], (crux_op_t)op);
            assert_same_bytes(rb.d1, rb.d2, n, dtypes[t], (crux_op_t)op, "a op b vs b op a");
            rand_bufs_free(&rb);
        }
}

/* Large random inputs, then every half/bfloat16 bit pattern against a set of partners:
 * the vector conversions must give the portable ones' bits. */
static void check_same_as_scalar(const char *isa)
{
    static const size_t off[4] = {1, 0, 3, 3};
    static const uint16_t f16_partners[] = {0x8000, 0x0000, 0x3c00, 0x1000, 0x0001, 0xbe00,
                                            0x7bff, 0x7e00, 0xfc00, 0x0401};
    static const uint16_t bf16_partners[] = {0x8000, 0x0000, 0x3f80, 0x3b80, 0x0001, 0xbfc0,
                                             0x7f7f, 0x7fc0, 0xff80, 0x0081};
    if (crux_reduce_force_isa(isa) != 0)
        cr_skip_test("this CPU cannot run the %s kernels", isa);
    for (int t = 0; t < NDTYPES; t++)
        for (int op = 0; op < NOPS; op++) {
            size_t n = 100003;
            struct rand_bufs rb;
            rand_bufs_init(&rb, dtypes[t], n, 1000 + (uint64_t)(t * NOPS + op), off);
            cr_assert_eq(crux_reduce_force_isa("scalar"), 0);
            crux_reduce(rb.d2, rb.a, rb.b, n, dtypes[t], (crux_op_t)op);
            cr_assert_eq(crux_reduce_force_isa(isa), 0);
            crux_reduce(rb.d1, rb.a, rb.b, n, dtypes[t], (crux_op_t)op);
            assert_same_bytes(rb.d1, rb.d2, n, dtypes[t], (crux_op_t)op, "ISA vs scalar");
            rand_bufs_free(&rb);
        }
    uint16_t *all = malloc(65536 * 2), *other = malloc(65536 * 2);
    uint16_t *r1 = malloc(65536 * 2), *r2 = malloc(65536 * 2);
    for (int k = 0; k < 2; k++) {
        crux_datatype_t dt = k ? CRUX_BFLOAT16 : CRUX_FLOAT16;
        const uint16_t *partners = k ? bf16_partners : f16_partners;
        for (uint32_t i = 0; i < 65536; i++)
            all[i] = (uint16_t)i;
        for (size_t p = 0; p < sizeof f16_partners / 2; p++)
            for (int op = 0; op < NOPS; op++) {
                for (uint32_t i = 0; i < 65536; i++)
                    other[i] = partners[p];
                cr_assert_eq(crux_reduce_force_isa("scalar"), 0);
                crux_reduce(r2, all, other, 65536, dt, (crux_op_t)op);
                cr_assert_eq(crux_reduce_force_isa(isa), 0);
                crux_reduce(r1, all, other, 65536, dt, (crux_op_t)op);
                assert_same_bytes((unsigned char *)r1, (unsigned char *)r2, 65536, dt,
                                  (crux_op_t)op, "all patterns, ISA vs scalar");
            }
    }
    free(all); free(other); free(r1); free(r2);
}

/* ---- the NaN / signed-zero / rounding rules of reduce.h, spelled out ---- */

struct special_case {
    crux_datatype_t dt;
    crux_op_t op;
    uint64_t a, b, want;
};

static const struct special_case special_cases[] = {
    {CRUX_FLOAT, CRUX_MAX, 0x00000000, 0x80000000, 0x00000000},
    {CRUX_FLOAT, CRUX_MIN, 0x00000000, 0x80000000, 0x80000000},
    {CRUX_FLOAT, CRUX_MAX, 0x80000000, 0x80000000, 0x80000000},
    {CRUX_FLOAT, CRUX_MIN, 0x00000000, 0x00000000, 0x00000000},
    {CRUX_FLOAT, CRUX_MAX, 0xffc12345, 0x3f800000, 0x7fc00000}, /* -NaN with payload */
    {CRUX_FLOAT, CRUX_MIN, 0x7f800001, 0xff800000, 0x7fc00000}, /* signalling NaN */
    {CRUX_FLOAT, CRUX_SUM, 0x7fc00001, 0xffc00002, 0x7fc00000}, /* two payloads */
    {CRUX_FLOAT, CRUX_SUM, 0x7f800000, 0xff800000, 0x7fc00000}, /* inf - inf */
    {CRUX_FLOAT, CRUX_PROD, 0x00000000, 0xff800000, 0x7fc00000}, /* 0 * -inf */
    {CRUX_FLOAT, CRUX_SUM, 0x7f7fffff, 0x7f7fffff, 0x7f800000},
    {CRUX_FLOAT, CRUX_SUM, 0x00000001, 0x00000001, 0x00000002}, /* subnormals kept */
    {CRUX_FLOAT, CRUX_MIN, 0x00000001, 0x80000001, 0x80000001},
    {CRUX_FLOAT, CRUX_MAX, 0xff800000, 0xff7fffff, 0xff7fffff},
    {CRUX_DOUBLE, CRUX_MAX, 0, 0x8000000000000000ull, 0},
    {CRUX_DOUBLE, CRUX_MIN, 0, 0x8000000000000000ull, 0x8000000000000000ull},
    {CRUX_DOUBLE, CRUX_MAX, 0xfff8000000000abcull, 0, 0x7ff8000000000000ull},
    {CRUX_DOUBLE, CRUX_PROD, 0x7ff0000000000001ull, 0x7ff8000000000002ull,
     0x7ff8000000000000ull},
    {CRUX_DOUBLE, CRUX_SUM, 0x0000000000000001ull, 0x8000000000000001ull, 0},
    {CRUX_FLOAT16, CRUX_MAX, 0x0000, 0x8000, 0x0000},
    {CRUX_FLOAT16, CRUX_MIN, 0x0000, 0x8000, 0x8000},
    {CRUX_FLOAT16, CRUX_MAX, 0xfe01, 0x3c00, 0x7e00},
    {CRUX_FLOAT16, CRUX_SUM, 0x7c01, 0xfd00, 0x7e00},
    {CRUX_FLOAT16, CRUX_SUM, 0x7bff, 0x7bff, 0x7c00}, /* 65504 + 65504 overflows to inf */
    {CRUX_FLOAT16, CRUX_SUM, 0x6800, 0x3c00, 0x6800}, /* 2048 + 1: tie, even stays */
    {CRUX_FLOAT16, CRUX_SUM, 0x6801, 0x3c00, 0x6802}, /* 2050 + 1: tie, to even 2052 */
    {CRUX_FLOAT16, CRUX_SUM, 0x0001, 0x0001, 0x0002}, /* subnormals */
    {CRUX_FLOAT16, CRUX_PROD, 0x0001, 0x3800, 0x0000}, /* 2^-25: tie to even 0 */
    {CRUX_FLOAT16, CRUX_PROD, 0x0003, 0x3800, 0x0002}, /* 1.5 * 2^-24: tie to even 2 */
    {CRUX_BFLOAT16, CRUX_MAX, 0x0000, 0x8000, 0x0000},
    {CRUX_BFLOAT16, CRUX_MIN, 0x0000, 0x8000, 0x8000},
    {CRUX_BFLOAT16, CRUX_MIN, 0xff81, 0x3f80, 0x7fc0},
    {CRUX_BFLOAT16, CRUX_SUM, 0x7f80, 0xff80, 0x7fc0},
    {CRUX_BFLOAT16, CRUX_SUM, 0x7f7f, 0x7f7f, 0x7f80},
    {CRUX_BFLOAT16, CRUX_SUM, 0x4380, 0x3f80, 0x4380}, /* 256 + 1: tie, even stays */
    {CRUX_BFLOAT16, CRUX_SUM, 0x4381, 0x3f80, 0x4382}, /* 258 + 1: tie, to even 260 */
    {CRUX_BFLOAT16, CRUX_SUM, 0x0001, 0x0001, 0x0002}, /* subnormals not flushed */
};

static void check_special_rules(const char *isa)
{
    enum { N = 67 };
    use_isa(isa);
    for (size_t c = 0; c < sizeof special_cases / sizeof special_cases[0]; c++) {
        const struct special_case *sc = &special_cases[c];
        size_t es = esize(sc->dt);
        unsigned char a[N * 8], b[N * 8], d[N * 8];
        for (int order = 0; order < 2; order++) {
            for (int i = 0; i < N; i++) {
                memcpy(a + i * es, order ? &sc->b : &sc->a, es);
                memcpy(b + i * es, order ? &sc->a : &sc->b, es);
            }
            crux_reduce(d, a, b, N, sc->dt, sc->op);
            for (int i = 0; i < N; i++) {
                uint64_t got = 0;
                memcpy(&got, d + i * es, es);
                cr_expect_eq(got, sc->want, "%s %s(0x%llx, 0x%llx) = 0x%llx, want 0x%llx (i=%d)",
                             dtype_names[sc->dt], op_names[sc->op],
                             (unsigned long long)(order ? sc->b : sc->a),
                             (unsigned long long)(order ? sc->a : sc->b),
                             (unsigned long long)got, (unsigned long long)sc->want, i);
            }
        }
    }
}

/* ---- conversions ---- */

__attribute__((target("f16c"))) static float hw_half_to_float(uint16_t h)
{
    return _cvtsh_ss(h);
}
__attribute__((target("f16c"))) static uint16_t hw_float_to_half(float f)
{
    return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

static int is_half_nan(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff); }

Test(reduce_convert, half_round_trip_all_patterns)
{
    for (uint32_t i = 0; i < 65536; i++) {
        uint16_t h = (uint16_t)i, back = crux_float_to_half(crux_half_to_float(h));
        float f = crux_half_to_float(h);
        if (is_half_nan(h)) { /* quieted, sign and payload kept */
            cr_assert(isnan(f), "0x%04x", i);
            cr_assert_eq(back, h | 0x0200, "NaN 0x%04x -> 0x%04x", i, back);
        } else {
            cr_assert_eq(back, h, "0x%04x -> %a -> 0x%04x", i, (double)f, back);
        }
    }
    cr_assert_eq(crux_half_to_float(0x3c00), 1.0f);
    cr_assert_eq(crux_half_to_float(0x7bff), 65504.0f);
    cr_assert_eq(crux_half_to_float(0x0001), 0x1p-24f);
    cr_assert_eq(fbits(crux_half_to_float(0x8000)), 0x80000000u);
}

Test(reduce_convert, half_ties_to_even)
{
    static const struct { float f; uint16_t h; } cases[] = {
        {2049.0f, 0x6800},       {2051.0f, 0x6802},        {1.0f + 0x1p-11f, 0x3c00},
        {1.0f + 0x3p-11f, 0x3c02}, {1.0f + 0x1p-11f + 0x1p-20f, 0x3c01},
        {65519.0f, 0x7bff},      {65520.0f, 0x7c00},       {1e30f, 0x7c00},
        {-65520.0f, 0xfc00},     {0x1p-25f, 0x0000},       {0x1.000002p-25f, 0x0001},
        {0x3p-25f, 0x0002},      {0x5p-25f, 0x0002},       {-0x1p-26f, 0x8000},
        {0x7ffp-25f, 0x0400}, /* 1023.5 * 2^-24: tie, up into the normals */
        {0x1p-14f, 0x0400},      {0x1p-149f, 0x0000},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        cr_assert_eq(crux_float_to_half(cases[i].f), cases[i].h, "%a -> 0x%04x, want 0x%04x",
                     (double)cases[i].f, crux_float_to_half(cases[i].f), cases[i].h);
    cr_assert_eq(crux_float_to_half(ffrom(0x7fc00000u)), 0x7e00);
    cr_assert_eq(crux_float_to_half(ffrom(0xff800001u)), 0xfe00); /* sNaN quieted */
}

Test(reduce_convert, half_matches_f16c)
{
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & bit_F16C))
        cr_skip_test("this CPU has no F16C to compare against");
    for (uint32_t i = 0; i < 65536; i++)
        cr_assert_eq(fbits(crux_half_to_float((uint16_t)i)), fbits(hw_half_to_float((uint16_t)i)),
                     "half 0x%04x", i);
    /* around every half value: the midpoints to its neighbour, +-1 ulp, and a stride over
     * all float bit patterns (NaNs, subnormals and huge values included) */
    for (uint32_t i = 0; i < 65536; i++) {
        uint16_t h = (uint16_t)i;
        if ((h & 0x7fff) >= 0x7c00)
            continue;
        uint32_t lo = fbits(crux_half_to_float(h));
        uint32_t hi = (h & 0x7fff) == 0x7bff ? (lo & 0x80000000u) | 0x47800000u
                                             : fbits(crux_half_to_float((uint16_t)(h + 1)));
        uint32_t mid = lo + (hi - lo) / 2;
        uint32_t probes[] = {lo, mid - 1, mid, mid + 1, lo + 1, hi - 1};
        for (size_t k = 0; k < sizeof probes / 4; k++) {
            float f = ffrom(probes[k]);
            cr_assert_eq(crux_float_to_half(f), hw_float_to_half(f), "float 0x%08x", probes[k]);
        }
    }
    for (uint64_t x = 0; x <= 0xffffffffull; x += 4093) {
        float f = ffrom((uint32_t)x);
        cr_assert_eq(crux_float_to_half(f), hw_float_to_half(f), "float 0x%08llx",
                     (unsigned long long)x);
    }
}

Test(reduce_convert, bf16_round_trip_and_rounding)
{
    for (uint32_t i = 0; i < 65536; i++) {
        uint16_t h = (uint16_t)i, back = crux_float_to_bf16(crux_bf16_to_float(h));
        int nan = (h & 0x7f80) == 0x7f80 && (h & 0x7f);
        cr_assert_eq(back, nan ? h | 0x0040 : h, "0x%04x -> 0x%04x", i, back);
    }
    static const struct { uint32_t f; uint16_t h; } cases[] = {
        {0x3f808000u, 0x3f80}, /* 1 + 2^-8: tie, even stays */
        {0x3f818000u, 0x3f82}, /* tie, to even */
        {0x3f808001u, 0x3f81}, {0x3f807fffu, 0x3f80},
        {0x7f7fffffu, 0x7f80}, /* FLT_MAX rounds to inf */
        {0x7f7f7fffu, 0x7f7f}, {0xff7fffffu, 0xff80},
        {0x00008000u, 0x0000}, {0x00018000u, 0x0002}, /* subnormal ties, not flushed */
        {0x7f800000u, 0x7f80}, {0x7fc00000u, 0x7fc0}, {0x7f800001u, 0x7fc0},
        {0xffa00000u, 0xffe0}, {0x80000000u, 0x8000},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        cr_assert_eq(crux_float_to_bf16(ffrom(cases[i].f)), cases[i].h,
                     "0x%08x -> 0x%04x, want 0x%04x", cases[i].f,
                     crux_float_to_bf16(ffrom(cases[i].f)), cases[i].h);
    cr_assert_eq(crux_bf16_to_float(0x3f80), 1.0f);
}

/* ---- dispatch ---- */

Test(reduce_dispatch, names_and_force)
{
    const char *def = crux_reduce_isa();
    cr_assert(!strcmp(def, "avx512") || !strcmp(def, "avx2") || !strcmp(def, "scalar"), "%s", def);
    cr_assert_eq(crux_reduce_force_isa("scalar"), 0);
    cr_assert_str_eq(crux_reduce_isa(), "scalar");
    cr_assert_eq(crux_reduce_force_isa("sse9"), -1);
    cr_assert_eq(crux_reduce_force_isa(NULL), -1);
    cr_assert_str_eq(crux_reduce_isa(), "scalar");
    cr_assert_eq(crux_reduce_force_isa(def), 0);
    cr_assert_str_eq(crux_reduce_isa(), def);
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        cr_assert_str_eq(def, "avx512");
    else
        cr_assert_eq(crux_reduce_force_isa("avx512"), -1);
}

/* Buffers past the kernels' streaming-store threshold (16 MiB), with dst aligned to an
 * element (streaming engages after the head; one case per store kind) and not (it cannot). */
static void check_streaming_same_as_scalar(const char *isa)
{
    static const size_t offs[2][4] = {{1, 2, 0, 0}, {0, 0, 1, 1}};
    static const struct { crux_datatype_t dt; crux_op_t op; int o; } cases[] = {
        {CRUX_FLOAT, CRUX_SUM, 0}, {CRUX_DOUBLE, CRUX_MAX, 0}, {CRUX_BFLOAT16, CRUX_PROD, 0},
        {CRUX_UINT8, CRUX_MIN, 1}, {CRUX_INT64, CRUX_SUM, 1}};
    if (crux_reduce_force_isa(isa) != 0)
        cr_skip_test("this CPU cannot run the %s kernels", isa);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        crux_datatype_t dt = cases[c].dt;
        crux_op_t op = cases[c].op;
        int o = cases[c].o;
        size_t n = ((size_t)17 << 20) / esize(dt) + 37;
        struct rand_bufs rb;
        rand_bufs_init(&rb, dt, n, 77 + c, offs[o]);
        rb.d1 += esize(dt) * (size_t)(o == 0); /* element-aligned but not vector-aligned */
        rb.d2 += esize(dt) * (size_t)(o == 0);
        cr_assert_eq(crux_reduce_force_isa("scalar"), 0);
        crux_reduce(rb.d2, rb.a, rb.b, n, dt, op);
        cr_assert_eq(crux_reduce_force_isa(isa), 0);
        crux_reduce(rb.d1, rb.a, rb.b, n, dt, op);
        assert_same_bytes(rb.d1, rb.d2, n, dt, op, "streaming stores, ISA vs scalar");
        crux_reduce(rb.a, rb.a, rb.b, n, dt, op); /* in place */
        assert_same_bytes(rb.a, rb.d2, n, dt, op, "streaming in place, ISA vs scalar");
        rand_bufs_free(&rb);
    }
}

#define ISA_TESTS(isa)                                                                             \
    Test(reduce_##isa, exact_values) { check_exact(#isa); }                                        \
    Test(reduce_##isa, integer_wrap) { check_wrap(#isa); }                                         \
    Test(reduce_##isa, nan_zero_rounding_rules) { check_special_rules(#isa); }                     \
    Test(reduce_##isa, random_vs_reference) { check_random_vs_reference(#isa); }                   \
    Test(reduce_##isa, commutative_bitwise) { check_commutative(#isa); }

ISA_TESTS(scalar)
ISA_TESTS(avx2)
ISA_TESTS(avx512)
Test(reduce_avx2, same_bits_as_scalar) { check_same_as_scalar("avx2"); }
Test(reduce_avx512, same_bits_as_scalar) { check_same_as_scalar("avx512"); }
Test(reduce_avx2, streaming_same_as_scalar) { check_streaming_same_as_scalar("avx2"); }
Test(reduce_avx512, streaming_same_as_scalar) { check_streaming_same_as_scalar("avx512"); }
