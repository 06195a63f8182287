/* idx_codec.c - wire encoding of an ascending index set over [0, n) (codec.h).
 *
 * Format (first byte):
 *   0x01 LEB128: varint k, then k varints: idx[0], then idx[j] - idx[j-1] - 1
 *        (strictly ascending, so the gap minus one is >= 0 and small gaps fit a byte).
 *   0x02 bitmap: exactly ceil(n/8) bytes, bit i%8 of byte i/8 set when i is in the set;
 *        the unused high bits of the last byte must be 0.
 * The encoder picks whichever is smaller (LEB128 on a tie). Varints are at most 5 bytes
 * and at most 2^32-1; the decoder rejects anything else, trailing bytes included.
 */
#include <string.h>

#include "codec/codec.h"
#include "crux.h"
#include "log.h"

#define FMT_LEB128 0x01
#define FMT_BITMAP 0x02

static size_t varint_len(uint32_t v)
{
    size_t l = 1;
    while (v >= 0x80) {
        v >>= 7;
        l++;
    }
    return l;
}

static size_t put_varint(uint8_t *out, uint32_t v)
{
    size_t l = 0;
    while (v >= 0x80) {
        out[l++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    out[l++] = (uint8_t)v;
    return l;
}

/* Reads one varint from in[*pos, len); 0 on success, -1 if truncated, longer than
 * 5 bytes or above 2^32-1. */
static int get_varint(const uint8_t *in, size_t len, size_t *pos, uint32_t *v)
{
    uint64_t acc = 0;
    for (int sh = 0; sh < 35; sh += 7) {
        if (*pos >= len)
            return -1;
        uint8_t b = in[(*pos)++];
        acc |= (uint64_t)(b & 0x7f) << sh;
        if (!(b & 0x80)) {
            if (acc > UINT32_MAX)
                return -1;
            *v = (uint32_t)acc;
            return 0;
        }
    }
    return -1;
}

static size_t bitmap_bytes(size_t n) { return (n + 7) / 8; }

size_t crux_idx_encode_bound(size_t k, size_t n)
{
    size_t leb = 5 + 5 * k, bm = bitmap_bytes(n);
    return 1 + (leb < bm ? leb : bm);
}

static size_t leb_size(const uint32_t *idx, size_t k)
{
    size_t s = varint_len((uint32_t)k);
    for (size_t j = 0; j < k; j++)
        s += varint_len(j ? idx[j] - idx[j - 1] - 1 : idx[0]);
    return s;
}

size_t crux_idx_encode(const uint32_t *idx, size_t k, size_t n, uint8_t *out)
{
    size_t bm = bitmap_bytes(n);
    /* the LEB128 size is only worth computing when it can win */
    size_t leb = 5 + 5 * k <= bm ? 0 : leb_size(idx, k);
    if (5 + 5 * k <= bm || leb <= bm) {
        size_t o = 0;
        out[o++] = FMT_LEB128;
        o += put_varint(out + o, (uint32_t)k);
        for (size_t j = 0; j < k; j++)
            o += put_varint(out + o, j ? idx[j] - idx[j - 1] - 1 : idx[0]);
        return o;
    }
    out[0] = FMT_BITMAP;
    memset(out + 1, 0, bm);
    for (size_t j = 0; j < k; j++)
        out[1 + idx[j] / 8] |= (uint8_t)(1u << (idx[j] % 8));
    return 1 + bm;
}

static int reject(const char *why, size_t len, size_t n)
{
    crux_error(CRUX_SUBSYS_CODEC, "index message of %zu bytes for n=%zu rejected: %s", len, n, why);
    return CRUX_ERR_MISMATCH;
}

static int decode_leb128(const uint8_t *in, size_t len, size_t n, uint32_t *idx, size_t kmax,
                         size_t *k)
{
    size_t pos = 1;
    uint32_t cnt;
    if (get_varint(in, len, &pos, &cnt))
        return reject("bad or truncated count", len, n);
    if (cnt > kmax)
        return reject("more indices than the receiver allows", len, n);
    uint64_t cur = 0;
    for (uint32_t j = 0; j < cnt; j++) {
        uint32_t d;
        if (get_varint(in, len, &pos, &d))
            return reject("bad or truncated index gap", len, n);
        cur = j ? cur + d + 1 : d;
        if (cur >= n || cur > UINT32_MAX)
            return reject("index out of range", len, n);
        idx[j] = (uint32_t)cur;
    }
    if (pos != len)
        return reject("trailing bytes", len, n);
    *k = cnt;
    return CRUX_SUCCESS;
}

static int decode_bitmap(const uint8_t *in, size_t len, size_t n, uint32_t *idx, size_t kmax,
                         size_t *k)
{
    size_t bm = bitmap_bytes(n);
    if (len - 1 != bm)
        return reject("bitmap length does not match n", len, n);
    if (n % 8 && (in[bm] >> (n % 8)))
        return reject("bitmap bit set beyond n", len, n);
    size_t cnt = 0;
    for (size_t b = 0; b < bm; b++) {
        unsigned byte = in[1 + b];
        while (byte) {
            if (cnt == kmax)
                return reject("more indices than the receiver allows", len, n);
            idx[cnt++] = (uint32_t)(b * 8 + (size_t)__builtin_ctz(byte));
            byte &= byte - 1;
        }
    }
    *k = cnt;
    return CRUX_SUCCESS;
}

int crux_idx_decode(const uint8_t *in, size_t len, size_t n, uint32_t *idx, size_t kmax,
                    size_t *k)
{
    if (len < 1)
        return reject("empty", len, n);
    switch (in[0]) {
    case FMT_LEB128: return decode_leb128(in, len, n, idx, kmax, k);
    case FMT_BITMAP: return decode_bitmap(in, len, n, idx, kmax, k);
    default: return reject("unknown format byte", len, n);
    }
}
