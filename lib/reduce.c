/* reduce.c - elementwise reductions: runtime ISA dispatch, the portable kernels and the
 * float16/bfloat16 conversions (contract in reduce.h).
 *
 * Decisions the header leaves open, identical on every path (scalar, AVX2, AVX-512):
 *  - Every float result that is NaN, for every op, is the canonical quiet NaN
 *    (0x7fc00000, 0x7ff8000000000000, half 0x7e00, bf16 0x7fc0). x86 add/mul return the
 *    payload of the *first* NaN operand, so NaN+NaN' != NaN'+NaN bit-for-bit;
 *    canonicalising keeps every op commutative and every path identical.
 *  - crux_float_to_half matches F16C (VCVTPS2PH, round to nearest even) bit-for-bit:
 *    subnormals are exact, overflow goes to inf, a NaN keeps its sign and the top 10
 *    payload bits and is quieted. crux_half_to_float matches VCVTPH2PS (signalling NaNs
 *    are quieted). crux_float_to_bf16 keeps a NaN's sign and top payload bits and sets
 *    the quiet bit; bf16 rounding is done in integers, so float subnormals are not
 *    flushed (unlike VCVTNEPS2BF16, which the vector paths therefore do not use).
 *  - The kernels assume the default MXCSR (no FTZ/DAZ), like the rest of the library.
 */
#include <string.h>

#include "reduce.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define CRUX_REDUCE_X86 1
#endif

/* Shared with lib/reduce_avx2.c and lib/reduce_avx512.c and declared again there (reduce.h
 * is the public contract; there is no internal header for these). */
void crux_reduce_scalar(void *dst, const void *a, const void *b, size_t count,
                        crux_datatype_t dtype, crux_op_t op);
#ifdef CRUX_REDUCE_X86
void crux_reduce_avx2(void *dst, const void *a, const void *b, size_t count,
                      crux_datatype_t dtype, crux_op_t op);
void crux_reduce_avx512(void *dst, const void *a, const void *b, size_t count,
                        crux_datatype_t dtype, crux_op_t op);
#endif

/* ---- bit views and the float ops shared by every element type ---- */

static inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float f32_from(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint64_t f64_bits(double f)
{
    uint64_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline double f64_from(uint64_t u)
{
    double f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline float f32_canon(float r) { return r != r ? f32_from(0x7fc00000u) : r; }
static inline float f32_sum(float a, float b) { return f32_canon(a + b); }
static inline float f32_prod(float a, float b) { return f32_canon(a * b); }

/* a == b is true for +0/-0: AND of the bits gives +0 for MAX, OR gives -0 for MIN, and
 * leaves equal non-zero values unchanged. */
static inline float f32_max(float a, float b)
{
    if (a != a || b != b)
        return f32_from(0x7fc00000u);
    if (a == b)
        return f32_from(f32_bits(a) & f32_bits(b));
    return a > b ? a : b;
}

static inline float f32_min(float a, float b)
{
    if (a != a || b != b)
        return f32_from(0x7fc00000u);
    if (a == b)
        return f32_from(f32_bits(a) | f32_bits(b));
    return a < b ? a : b;
}

static inline double f64_canon(double r) { return r != r ? f64_from(0x7ff8000000000000ull) : r; }
static inline double f64_sum(double a, double b) { return f64_canon(a + b); }
static inline double f64_prod(double a, double b) { return f64_canon(a * b); }

static inline double f64_max(double a, double b)
{
    if (a != a || b != b)
        return f64_from(0x7ff8000000000000ull);
    if (a == b)
        return f64_from(f64_bits(a) & f64_bits(b));
    return a > b ? a : b;
}

static inline double f64_min(double a, double b)
{
    if (a != a || b != b)
        return f64_from(0x7ff8000000000000ull);
    if (a == b)
        return f64_from(f64_bits(a) | f64_bits(b));
    return a < b ? a : b;
}

/* ---- float16 / bfloat16 conversions ---- */

static inline float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t em = h & 0x7fffu;
    if (em >= 0x7c00u) { /* inf / NaN: payload moves up, NaNs are quieted */
        uint32_t mant = (uint32_t)(em & 0x3ffu) << 13;
        return f32_from(sign | 0x7f800000u | mant | (mant ? 0x00400000u : 0));
    }
    if (em >= 0x0400u) /* normal: rebias the exponent by 127 - 15 */
        return f32_from(sign | ((em << 13) + (112u << 23)));
    /* zero / subnormal: em * 2^-24 is exact in float */
    return f32_from(sign | f32_bits((float)em * 0x1p-24f));
}

static inline uint16_t float_to_half(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) /* NaN: quiet, keep the top payload bits */
        return sign | 0x7e00u | (uint16_t)((ax >> 13) & 0x3ffu);
    if (ax >= 0x477ff000u) /* >= 65520 (the tie above 65504) and inf */
        return sign | 0x7c00u;
    if (ax >= 0x38800000u) { /* normal half: rebias, round the 13 dropped bits */
        uint32_t r = ax - (112u << 23);
        return sign | (uint16_t)((r + 0xfffu + ((r >> 13) & 1u)) >> 13);
    }
    if (ax <= 0x33000000u) /* <= 2^-25: rounds to (signed) zero */
        return sign;
    /* subnormal half: round m * 2^(e-150) * 2^24 to an integer */
    uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    unsigned shift = 126u - (ax >> 23);
    uint32_t q = m >> shift, rem = m & ((1u << shift) - 1u), halfway = 1u << (shift - 1u);
    if (rem > halfway || (rem == halfway && (q & 1u)))
        q++;
    return sign | (uint16_t)q;
}

static inline float bf16_to_float(uint16_t h) { return f32_from((uint32_t)h << 16); }

static inline uint16_t float_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x0040u);
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

float crux_half_to_float(uint16_t h) { return half_to_float(h); }
uint16_t crux_float_to_half(float f) { return float_to_half(f); }
float crux_bf16_to_float(uint16_t h) { return bf16_to_float(h); }
uint16_t crux_float_to_bf16(float f) { return float_to_bf16(f); }

/* ---- element ops ---- */

#define NARROW_OPS(name, widen, narrow)                                                            \
    static inline uint16_t name##_sum(uint16_t a, uint16_t b)                                      \
    {                                                                                              \
        return narrow(f32_sum(widen(a), widen(b)));                                                \
    }                                                                                              \
    static inline uint16_t name##_prod(uint16_t a, uint16_t b)                                     \
    {                                                                                              \
        return narrow(f32_prod(widen(a), widen(b)));                                               \
    }                                                                                              \
    static inline uint16_t name##_max(uint16_t a, uint16_t b)                                      \
    {                                                                                              \
        return narrow(f32_max(widen(a), widen(b)));                                                \
    }                                                                                              \
    static inline uint16_t name##_min(uint16_t a, uint16_t b)                                      \
    {                                                                                              \
        return narrow(f32_min(widen(a), widen(b)));                                                \
    }
NARROW_OPS(f16, half_to_float, float_to_half)
NARROW_OPS(bf16, bf16_to_float, float_to_bf16)

/* Integers: SUM/PROD in unsigned arithmetic (wraps, no UB); the caller's int buffers are
 * read as their unsigned counterparts, which C allows. */
static inline uint32_t u32_sum(uint32_t a, uint32_t b) { return a + b; }
static inline uint32_t u32_prod(uint32_t a, uint32_t b) { return a * b; }
static inline int32_t i32_max(int32_t a, int32_t b) { return a > b ? a : b; }
static inline int32_t i32_min(int32_t a, int32_t b) { return a < b ? a : b; }
static inline uint64_t u64_sum(uint64_t a, uint64_t b) { return a + b; }
static inline uint64_t u64_prod(uint64_t a, uint64_t b) { return a * b; }
static inline int64_t i64_max(int64_t a, int64_t b) { return a > b ? a : b; }
static inline int64_t i64_min(int64_t a, int64_t b) { return a < b ? a : b; }
static inline uint8_t u8_sum(uint8_t a, uint8_t b) { return (uint8_t)(a + b); }
static inline uint8_t u8_prod(uint8_t a, uint8_t b) { return (uint8_t)((unsigned)a * b); }
static inline uint8_t u8_max(uint8_t a, uint8_t b) { return a > b ? a : b; }
static inline uint8_t u8_min(uint8_t a, uint8_t b) { return a < b ? a : b; }

/* ---- portable kernels (auto-vectorised at -O3 for the baseline ISA) ---- */

/* Element types with alignment 1: buffers may have any alignment, and accessing them
 * through these is defined behaviour (and UBSan-clean). */
typedef float f32_u __attribute__((aligned(1)));
typedef double f64_u __attribute__((aligned(1)));
typedef uint32_t u32_u __attribute__((aligned(1)));
typedef int32_t i32_u __attribute__((aligned(1)));
typedef uint64_t u64_u __attribute__((aligned(1)));
typedef int64_t i64_u __attribute__((aligned(1)));
typedef uint16_t u16_u __attribute__((aligned(1)));

#define SCALAR_KERNEL(name, T, fn)                                                                 \
    static void name(void *dst, const void *src_a, const void *src_b, size_t n)                    \
    {                                                                                              \
        T *d = dst;                                                                                \
        const T *a = src_a, *b = src_b;                                                            \
        for (size_t i = 0; i < n; i++)                                                             \
            d[i] = fn(a[i], b[i]);                                                                 \
    }

SCALAR_KERNEL(k_f32_sum, f32_u, f32_sum)
SCALAR_KERNEL(k_f32_prod, f32_u, f32_prod)
SCALAR_KERNEL(k_f32_max, f32_u, f32_max)
SCALAR_KERNEL(k_f32_min, f32_u, f32_min)
SCALAR_KERNEL(k_f64_sum, f64_u, f64_sum)
SCALAR_KERNEL(k_f64_prod, f64_u, f64_prod)
SCALAR_KERNEL(k_f64_max, f64_u, f64_max)
SCALAR_KERNEL(k_f64_min, f64_u, f64_min)
SCALAR_KERNEL(k_i32_sum, u32_u, u32_sum)
SCALAR_KERNEL(k_i32_prod, u32_u, u32_prod)
SCALAR_KERNEL(k_i32_max, i32_u, i32_max)
SCALAR_KERNEL(k_i32_min, i32_u, i32_min)
SCALAR_KERNEL(k_i64_sum, u64_u, u64_sum)
SCALAR_KERNEL(k_i64_prod, u64_u, u64_prod)
SCALAR_KERNEL(k_i64_max, i64_u, i64_max)
SCALAR_KERNEL(k_i64_min, i64_u, i64_min)
SCALAR_KERNEL(k_u8_sum, uint8_t, u8_sum)
SCALAR_KERNEL(k_u8_prod, uint8_t, u8_prod)
SCALAR_KERNEL(k_u8_max, uint8_t, u8_max)
SCALAR_KERNEL(k_u8_min, uint8_t, u8_min)
SCALAR_KERNEL(k_f16_sum, u16_u, f16_sum)
SCALAR_KERNEL(k_f16_prod, u16_u, f16_prod)
SCALAR_KERNEL(k_f16_max, u16_u, f16_max)
SCALAR_KERNEL(k_f16_min, u16_u, f16_min)
SCALAR_KERNEL(k_bf16_sum, u16_u, bf16_sum)
SCALAR_KERNEL(k_bf16_prod, u16_u, bf16_prod)
SCALAR_KERNEL(k_bf16_max, u16_u, bf16_max)
SCALAR_KERNEL(k_bf16_min, u16_u, bf16_min)

#define SCALAR_OPS(p)                                                                              \
    switch (op) {                                                                                  \
    case CRUX_SUM: p##_sum(dst, a, b, count); return;                                              \
    case CRUX_PROD: p##_prod(dst, a, b, count); return;                                            \
    case CRUX_MAX: p##_max(dst, a, b, count); return;                                              \
    case CRUX_MIN: p##_min(dst, a, b, count); return;                                              \
    }                                                                                              \
    return

/* Also the head/tail of the AVX2 kernels. Invalid dtype/op: nothing is written (the
 * collectives validate arguments before any data moves). */
void crux_reduce_scalar(void *dst, const void *a, const void *b, size_t count,
                        crux_datatype_t dtype, crux_op_t op)
{
    switch (dtype) {
    case CRUX_FLOAT: SCALAR_OPS(k_f32);
    case CRUX_DOUBLE: SCALAR_OPS(k_f64);
    case CRUX_INT32: SCALAR_OPS(k_i32);
    case CRUX_INT64: SCALAR_OPS(k_i64);
    case CRUX_UINT8: SCALAR_OPS(k_u8);
    case CRUX_FLOAT16: SCALAR_OPS(k_f16);
    case CRUX_BFLOAT16: SCALAR_OPS(k_bf16);
    }
}

/* ---- runtime dispatch ---- */

enum reduce_isa { ISA_UNKNOWN = 0, ISA_SCALAR, ISA_AVX2, ISA_AVX512 };

/* Written once by the first caller (racing callers compute and store the same value),
 * or by crux_reduce_force_isa. */
static int reduce_isa_cur = ISA_UNKNOWN;

#ifdef CRUX_REDUCE_X86
/* Not every compiler's __builtin_cpu_supports knows "f16c"; AVX2 being usable already
 * implies the OS saves the YMM state F16C works in. */
static int cpu_has_f16c(void)
{
    unsigned eax, ebx, ecx, edx;
    return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C);
}
#endif

static int cpu_can_run(int isa)
{
#ifdef CRUX_REDUCE_X86
    /* libgcc's checks include the OS enabling the register state (XCR0). */
    __builtin_cpu_init();
    if (isa == ISA_AVX512)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    if (isa == ISA_AVX2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
#endif
    return isa == ISA_SCALAR;
}

static int detect_isa(void)
{
    if (cpu_can_run(ISA_AVX512))
        return ISA_AVX512;
    if (cpu_can_run(ISA_AVX2))
        return ISA_AVX2;
    return ISA_SCALAR;
}

static inline int active_isa(void)
{
    int isa = __atomic_load_n(&reduce_isa_cur, __ATOMIC_RELAXED);
    if (__builtin_expect(isa == ISA_UNKNOWN, 0)) {
        isa = detect_isa();
        __atomic_store_n(&reduce_isa_cur, isa, __ATOMIC_RELAXED);
    }
    return isa;
}

/* For a handful of elements the portable loop beats one masked vector step (measured on
 * Zen5: 2.7 vs 3.5 ns for one float); not for float16, whose software conversion is slow. */
#define SMALL_COUNT 4

void crux_reduce(void *dst, const void *a, const void *b, size_t count, crux_datatype_t dtype,
                 crux_op_t op)
{
    if (count < SMALL_COUNT && dtype != CRUX_FLOAT16) {
        crux_reduce_scalar(dst, a, b, count, dtype, op);
        return;
    }
    switch (active_isa()) {
#ifdef CRUX_REDUCE_X86
    case ISA_AVX512: crux_reduce_avx512(dst, a, b, count, dtype, op); return;
    case ISA_AVX2: crux_reduce_avx2(dst, a, b, count, dtype, op); return;
#endif
    default: crux_reduce_scalar(dst, a, b, count, dtype, op); return;
    }
}

const char *crux_reduce_isa(void)
{
    switch (active_isa()) {
    case ISA_AVX512: return "avx512";
    case ISA_AVX2: return "avx2";
    default: return "scalar";
    }
}

int crux_reduce_force_isa(const char *isa)
{
    int want;
    if (!isa)
        return -1;
    if (!strcmp(isa, "avx512"))
        want = ISA_AVX512;
    else if (!strcmp(isa, "avx2"))
        want = ISA_AVX2;
    else if (!strcmp(isa, "scalar"))
        want = ISA_SCALAR;
    else
        return -1;
    if (!cpu_can_run(want))
        return -1;
    __atomic_store_n(&reduce_isa_cur, want, __ATOMIC_RELAXED);
    return 0;
}
