/* fuzz_hostlist.c - libFuzzer target for the Slurm hostlist expander (it parses
 * SLURM_*_NODELIST): no crash, bounded work, and consistent results. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bootstrap.h"

#define MAX_NAMES 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    if (len > 4096)
        return 0;
    char *list = malloc(len + 1);
    if (!list)
        return 0;
    memcpy(list, data, len);
    list[len] = '\0';
    static char out[MAX_NAMES][CRUX_HOST_MAX];
    char first[CRUX_HOST_MAX];
    int n = crux_hostlist_expand(list, out, MAX_NAMES);
    int f = crux_hostlist_first(list, first);
    if (n < -1 || n > MAX_NAMES || n == 0)
        __builtin_trap();
    for (int i = 0; i < n; i++) {
        size_t l = strnlen(out[i], CRUX_HOST_MAX);
        if (l == 0 || l == CRUX_HOST_MAX)
            __builtin_trap();
    }
    /* a list that expands has a first name, and it is the same one */
    if (n > 0 && (f != 0 || strcmp(first, out[0]) != 0))
        __builtin_trap();
    free(list);
    return 0;
}
