/* reduce.h - elementwise reduction kernels (lib/reduce.c).
 *
 * dst[i] = a[i] op b[i] for i < count. dst may alias a and/or b (exactly, not partially).
 * Every kernel is commutative bit-for-bit (a op b == b op a), which is what makes
 * pairwise schedules produce identical bits on both partners:
 *  - SUM/PROD: IEEE add/mul (commutative); integers wrap (two's complement).
 *  - MAX/MIN on floats: if either operand is NaN the result is NaN (the canonical
 *    quiet NaN 0x7fc00000 / 0x7ff8000000000000 / 0x7e00 / 0x7fc0); +0 and -0: MAX
 *    gives +0, MIN gives -0 regardless of order.
 *  - FLOAT16/BFLOAT16: both operands widened to float, combined, rounded to nearest
 *    even (NaN stays NaN, overflow goes to inf).
 * Buffers may have any alignment. Vectorised: -O3 auto-vectorisation plus an
 * AVX-512 / AVX2 path chosen once at runtime (cpuid); results are identical on
 * every path.
 */
#ifndef CRUX_REDUCE_H
#define CRUX_REDUCE_H

#include <stddef.h>
#include <stdint.h>

#include "crux.h"

void crux_reduce(void *dst, const void *a, const void *b, size_t count, crux_datatype_t dtype,
                 crux_op_t op);

/* Which implementation crux_reduce dispatches to: "avx512", "avx2" or "scalar". */
const char *crux_reduce_isa(void);
/* Force an implementation (tests compare them): "avx512", "avx2", "scalar";
 * returns 0, or -1 if this CPU cannot run it. */
int crux_reduce_force_isa(const char *isa);

/* Conversions used by kernels and tests (round to nearest even). */
float crux_half_to_float(uint16_t h);
uint16_t crux_float_to_half(float f);
float crux_bf16_to_float(uint16_t h);
uint16_t crux_float_to_bf16(float f);

#endif
