/* qsgd.h - QSGD stochastic quantisation (Alistarh et al., NeurIPS 2017), bucketed.
 *
 * The vector is cut into buckets of `bucket` consecutive elements (the last one may be
 * shorter); each bucket carries one fp32 scale and one code per element:
 *
 *     Q(v)_i = scale * sgn(v_i) * l_i / s,   l_i = floor(s * |v_i| / scale + u_i),
 *
 * u_i uniform in [0, 1), so E[Q(v)_i] = v_i (unbiased: paper eq. (3)/Lemma 3.1 with
 * scale = ||v||_2). The scale is either the bucket's L2 norm (the paper) or its max |v_i|
 * (what practical QSGD uses: same unbiasedness, far lower variance, every level in use).
 *
 * Codes are sign-magnitude, packed LSB-first: 2 bits (s = 1), 4 bits (s <= 7) or 8 bits
 * (s <= 127). Wire layout of n elements: nb = ceil(n / bucket) fp32 scales, then the
 * codes of each bucket starting on a byte boundary (bucket is a multiple of 8, so only
 * the last bucket is padded).
 *
 * u_i is a counter-based hash of (key, base + i): encoding a vector in chunks with the
 * right base gives the same bytes as encoding it whole, on any ISA.
 */
#ifndef CRUX_CODEC_QSGD_H
#define CRUX_CODEC_QSGD_H

#include <stddef.h>
#include <stdint.h>

enum crux_qsgd_norm { CRUX_QSGD_NORM_MAX = 0, CRUX_QSGD_NORM_L2 = 1 };

struct crux_qsgd {
    int levels;                /* s, 1..127 */
    int bucket;                /* elements per scale, multiple of 8, >= 8 */
    enum crux_qsgd_norm norm;
};

#define CRUX_QSGD_MAX_LEVELS 127

/* CRUX_SUCCESS, or CRUX_ERR_ARG when levels/bucket/norm are out of range. */
int crux_qsgd_check(const struct crux_qsgd *q);
int crux_qsgd_code_bits(int levels);
/* Bytes of the encoding of n elements. */
size_t crux_qsgd_encoded_bytes(const struct crux_qsgd *q, size_t n);

/* Encode x[0..n), elements numbered base.. for the random stream; n must be a multiple
 * of q->bucket unless it is the vector's last piece. key: per call and rank (the caller
 * mixes seed, step and rank), so ranks draw independent noise. Returns bytes written. */
size_t crux_qsgd_encode(const struct crux_qsgd *q, const float *x, size_t n, uint64_t base,
                        uint32_t key, uint8_t *out);

/* crux_qsgd_encode split by buckets over a worker pool (pool.h; NULL = one thread): the
 * same bytes for any pool. */
struct crux_pool;
size_t crux_qsgd_encode_pool(struct crux_pool *pool, const struct crux_qsgd *q, const float *x,
                             size_t n, uint64_t base, uint32_t key, uint8_t *out);

/* Wire parser (fuzzed): checks that len matches n, that every scale is >= 0 or NaN
 * (a NaN gradient stays visible, like in a dense allreduce) and every level is <= s.
 * CRUX_SUCCESS or CRUX_ERR_MISMATCH. Never reads past in[len). */
int crux_qsgd_validate(const struct crux_qsgd *q, const uint8_t *in, size_t len, size_t n);

/* acc[i] += Q(v)_i for an encoding produced by crux_qsgd_encode (validated if it came off
 * the wire). */
void crux_qsgd_decode_add(const struct crux_qsgd *q, const uint8_t *in, size_t n, float *acc);
/* acc[i] -= Q(v)_i: the residual of error feedback. */
void crux_qsgd_decode_sub(const struct crux_qsgd *q, const uint8_t *in, size_t n, float *acc);

/* The kernel copy in use ("avx512", "avx2", "scalar"); tests force one (-1 if the CPU
 * cannot run it). All copies produce the same bytes. */
const char *crux_qsgd_isa(void);
int crux_qsgd_force_isa(const char *isa);

#endif
