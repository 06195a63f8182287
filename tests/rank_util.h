/* rank_util.h - what the compressed-allreduce rank programs share: each defines
 * `static int rank, P, failures;` before including this. A failed crux call ends the
 * rank (exit 1); a failed check is counted and printed, and the rank goes on. */
#ifndef CRUX_TEST_RANK_UTIL_H
#define CRUX_TEST_RANK_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "crux.h"

#define CHECK_RC(call)                                                                            \
    do {                                                                                          \
        int rc_ = (call);                                                                         \
        if (rc_ != CRUX_SUCCESS) {                                                                \
            printf("rank %d: FAIL %s -> %s\n", rank, #call, crux_error_string(rc_));              \
            exit(1);                                                                              \
        }                                                                                         \
    } while (0)

/* Prints the first 10 failures of a rank (the count keeps going). */
#define FAIL(...)                                                                                 \
    do {                                                                                          \
        if (failures++ < 10) {                                                                    \
            printf("rank %d: FAIL ", rank);                                                       \
            printf(__VA_ARGS__);                                                                  \
            printf("\n");                                                                         \
        }                                                                                         \
    } while (0)

static inline void *xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz);
    if (!p) {
        printf("rank %d: out of memory\n", rank);
        exit(1);
    }
    return p;
}

/* lowbias32: the test inputs' hash (a function of rank, step and index). */
static inline uint32_t mix(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

#endif
