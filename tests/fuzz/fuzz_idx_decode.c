/* fuzz_idx_decode.c - libFuzzer target for the sparse index decoder (lib/codec/idx_codec.c),
 * which parses wire data from peers. Sources: this file, lib/codec/idx_codec.c, lib/log.c.
 * Input: 4 bytes n (little endian), 2 bytes kmax, then the message. Any input must decode
 * without reading past its end; an accepted set must be strictly ascending, < n, at most
 * kmax long, and re-encode to a message that decodes to the same set. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec/codec.h"
#include "crux.h"
#include "log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define KMAX_LIMIT 65535

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint32_t idx[KMAX_LIMIT], again[KMAX_LIMIT];
    if (size < 6)
        return 0;
    crux_log_setup(CRUX_LOG_NONE, 0);
    size_t n = (size_t)data[0] | (size_t)data[1] << 8 | (size_t)data[2] << 16 | (size_t)data[3] << 24;
    size_t kmax = (size_t)data[4] | (size_t)data[5] << 8;
    /* a copy of exactly the message, so ASan sees any read past its end */
    size_t len = size - 6;
    uint8_t *msg = malloc(len ? len : 1);
    if (!msg)
        return 0;
    memcpy(msg, data + 6, len);
    size_t k = 0;
    int rc = crux_idx_decode(msg, len, n, idx, kmax, &k);
    free(msg);
    if (rc != CRUX_SUCCESS) {
        if (rc != CRUX_ERR_MISMATCH)
            __builtin_trap();
        return 0;
    }
    if (k > kmax)
        __builtin_trap();
    for (size_t j = 0; j < k; j++)
        if (idx[j] >= n || (j && idx[j] <= idx[j - 1]))
            __builtin_trap();
    if (n > (1u << 20)) /* keep the bitmap re-encode small */
        return 0;
    size_t bound = crux_idx_encode_bound(k, n);
    uint8_t *enc = malloc(bound);
    if (!enc)
        return 0;
    size_t elen = crux_idx_encode(idx, k, n, enc);
    size_t k2 = 0;
    if (elen > bound || crux_idx_decode(enc, elen, n, again, kmax, &k2) != CRUX_SUCCESS || k2 != k ||
        memcmp(idx, again, k * sizeof *idx) != 0)
        __builtin_trap();
    free(enc);
    return 0;
}
