/*
 * floor_util.h - what the floor programs (c2c_floor.c, stage_floor.c, pair_floor.c)
 * share: a monotonic clock, the CPUs this process may use, pinning, a spin-wait
 * hint, and a double comparator for qsort. Header-only so each stays one
 * `gcc -O2 x.c` away.
 */
#ifndef CRUX_BENCH_FLOOR_UTIL_H
#define CRUX_BENCH_FLOOR_UTIL_H

#include <sched.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define floor_relax() _mm_pause() /* spin-wait hint */
#else
#define floor_relax() ((void)0)
#endif

static inline double floor_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* The i-th CPU this process may run on, or -1. */
static inline int floor_nth_cpu(int i)
{
    cpu_set_t s;
    if (sched_getaffinity(0, sizeof s, &s))
        return -1;
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &s) && i-- == 0)
            return c;
    return -1;
}

static inline void floor_pin(int cpu)
{
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    sched_setaffinity(0, sizeof s, &s);
}

static inline int floor_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

#endif
