/* fuzz_boot_hello.c - libFuzzer target for the bootstrap wire parser: whatever arrives on
 * the root port must decode or be rejected, never crash, and what decodes must survive
 * an encode/decode round trip unchanged. */
#include <stdint.h>
#include <string.h>

#include "bootstrap.h"
#include "crux.h"

static uint32_t le32(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }

static uint64_t le64(const uint8_t *p) { return le32(p) | (uint64_t)le32(p + 4) << 32; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    struct crux_boot_hello h, h2;
    const char *why = NULL;
    /* Expect the key and size the input claims, so the fuzzer reaches the later checks. */
    uint64_t key = len >= 16 ? le64(data + 8) : 0;
    int size = len >= 24 ? (int)le32(data + 20) : 1;
    int rc = crux_boot_hello_decode(data, len, key, size, &h, &why);
    if ((rc == CRUX_SUCCESS) != (why == NULL))
        __builtin_trap();
    if (rc != CRUX_SUCCESS)
        return 0;
    if (len != CRUX_BOOT_HELLO_BYTES || h.rank < 0 || h.rank >= size || h.size != size ||
        h.magic != CRUX_BOOT_MAGIC || strnlen(h.host, CRUX_HOST_MAX) == CRUX_HOST_MAX || !h.host[0])
        __builtin_trap();
    uint8_t buf[CRUX_BOOT_HELLO_BYTES];
    crux_boot_hello_encode(&h, buf);
    if (crux_boot_hello_decode(buf, sizeof(buf), key, size, &h2, &why) != CRUX_SUCCESS)
        __builtin_trap();
    /* bytes after the host's NUL are dropped by encode; everything else is identical */
    if (strcmp(h.host, h2.host) != 0)
        __builtin_trap();
    memcpy(h2.host, h.host, sizeof(h.host));
    if (memcmp(&h, &h2, sizeof(h)) != 0)
        __builtin_trap();
    return 0;
}
