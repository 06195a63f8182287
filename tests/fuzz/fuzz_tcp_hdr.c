/* fuzz_tcp_hdr.c - libFuzzer target for the TCP transport's wire decoders.
 * Sources: tests/fuzz/fuzz_tcp_hdr.c transport/tcp/tcp_wire.c (include dirs: include,
 * the generated include dir, the source root and lib). Any input must decode without
 * reading past its end, and a decoded header must re-encode to the same bytes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "transport/tcp/tcp_wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct crux_msg_hdr h, expect;
    uint8_t again[CRUX_TCP_HDR_BYTES];
    char text[160];

    if (crux_tcp_hdr_decode(data, size, &h) == 0) {
        if (size < CRUX_TCP_HDR_BYTES)
            abort(); /* decoded from too few bytes */
        crux_tcp_hdr_encode(&h, again);
        if (memcmp(again, data, CRUX_TCP_HDR_BYTES) != 0)
            abort(); /* encode(decode(x)) != x */
        crux_tcp_hdr_format(&h, text, sizeof(text));
        memset(&expect, 0, sizeof(expect));
        expect.len = h.len;
        (void)crux_tcp_hdr_equal(&h, &expect);
    } else if (size >= CRUX_TCP_HDR_BYTES) {
        abort(); /* rejected a full header */
    }

    struct crux_tcp_hs hs;
    const char *why = NULL;
    uint64_t key = size >= 8 ? 0x0123456789abcdefull : 0;
    int ok = crux_tcp_hs_decode(data, size, key, 1, 4, &hs, &why) == 0;
    if (ok && (size < CRUX_TCP_HS_BYTES || hs.rank < 0 || hs.rank >= 4 || hs.to != 1 ||
               hs.job_key != key || why != NULL))
        abort(); /* accepted something invalid */
    if (!ok && why == NULL)
        abort(); /* rejected without a reason */
    return 0;
}
