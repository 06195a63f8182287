/* fuzz_idx.c - libFuzzer target for crux-train's IDX parser (it reads dataset
 * files from disk): no crash or overread, and an accepted file is consistent
 * with its own header. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "idx.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    struct idx_tensor t;
    char err[256];
    if (idx_parse(data, len, &t, err, sizeof(err)) != 0) {
        if (t.data || !memchr(err, '\0', sizeof(err)) || err[0] == '\0')
            __builtin_trap();
        return 0;
    }
    size_t count = 1;
    for (int d = 0; d < t.ndims; d++)
        count *= t.dims[d];
    if (t.ndims < 1 || t.ndims > IDX_MAX_DIMS || count != t.count || 4 + 4 * (size_t)t.ndims + count != len ||
        memcmp(t.data, data + len - count, count) != 0)
        __builtin_trap();
    idx_free(&t);
    return 0;
}
