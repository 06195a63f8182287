/* fuzz_qsgd.c - libFuzzer target for the QSGD wire validator and decoder (payloads
 * arrive from peers): the first 4 bytes choose levels, bucket and element count, the
 * rest is the payload. Whatever validates must decode without touching memory outside
 * the buffers, and a round trip of the decoded values must validate again. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec/qsgd.h"
#include "crux.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    if (len < 4)
        return 0;
    struct crux_qsgd q = {1 + data[0] % 127, 8 * (1 + data[1] % 16), data[2] & 1};
    size_t n = (size_t)data[3] * 3;
    data += 4;
    len -= 4;
    if (crux_qsgd_check(&q) != CRUX_SUCCESS)
        __builtin_trap();
    if (crux_qsgd_validate(&q, data, len, n) != CRUX_SUCCESS)
        return 0;
    float *acc = calloc(n + 1, sizeof *acc);
    uint8_t *again = malloc(crux_qsgd_encoded_bytes(&q, n) + 1);
    if (!acc || !again)
        goto out;
    crux_qsgd_decode_add(&q, data, n, acc);
    size_t m = crux_qsgd_encode(&q, acc, n, 0, 1, again);
    if (m != crux_qsgd_encoded_bytes(&q, n) ||
        crux_qsgd_validate(&q, again, m, n) != CRUX_SUCCESS)
        __builtin_trap();
out:
    free(acc);
    free(again);
    return 0;
}
