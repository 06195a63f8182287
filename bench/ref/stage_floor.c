/*
 * stage_floor.c - the data-movement floor under a 2-rank large shm allreduce that
 * copies through staging (crux's algo/shm_pipe.c, LIMITS.md strategy B), measured
 * without any reduction or protocol. Two processes pinned to two CPUs, both at once:
 *
 *   private  each copies SIZE bytes from its own pre-touched source to its own
 *            pre-touched destination with non-temporal stores: the read N + write N
 *            per rank that any allreduce of private buffers must do (the "memory
 *            traffic bound" of README, measured here with NT stores);
 *   staged   each copies its source into 256 KiB slots of an 8-deep shared ring
 *            (memcpy) and copies the peer's slots into its destination (NT stores):
 *            the same DRAM traffic plus SIZE bytes each way between the cores, which
 *            every copy-through-shm design moves (the RS and AG messages).
 *
 * crux's time over "staged" is its protocol and reduction cost; "staged" over
 * "private" is what crossing the cores costs on the host of the day (it moves with
 * where the host puts the vCPUs, like c2c_floor.c's flag round).
 *
 * Build: gcc -O2 -o stage_floor stage_floor.c
 * Usage: stage_floor [MiB] [reps]   prints "private_ms staged_ms" (medians, default
 *        256 MiB, 7 reps after one warm-up)
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "floor_util.h"

#define SLOT (256u << 10)
#define DEPTH 8u
#define MAXREPS 64

struct ctl {
    _Alignas(64) _Atomic unsigned long posted; /* slots the owner of this ring filled */
    _Alignas(64) _Atomic unsigned long freed;  /* slots its reader emptied */
    _Alignas(64) _Atomic long arrived;         /* barrier between phases */
};

struct shared {
    struct ctl c[2];
    double ms[2][2][MAXREPS]; /* [rank][phase][rep] */
};

#define CTL_BYTES 4096u /* the rings start on the page after struct shared */
_Static_assert(sizeof(struct shared) <= CTL_BYTES, "control block outgrew its page");

/* Whole-line non-temporal copy (n a multiple of 64, dst 64-byte aligned). */
#if defined(__x86_64__)
__attribute__((target("avx512f"))) static void copy_nt512(char *dst, const char *src, size_t n)
{
    for (size_t i = 0; i < n; i += 64)
        _mm512_stream_si512((void *)(dst + i), _mm512_loadu_si512(src + i));
}

static void copy_nt(char *dst, const char *src, size_t n)
{
    if (__builtin_cpu_supports("avx512f")) {
        copy_nt512(dst, src, n);
    } else {
        for (size_t i = 0; i < n; i += 16)
            _mm_stream_si128((__m128i *)(dst + i), _mm_loadu_si128((const __m128i *)(src + i)));
    }
    _mm_sfence();
}
#else
static void copy_nt(char *dst, const char *src, size_t n)
{
    memcpy(dst, src, n);
}
#endif

/* Both ranks leave together: arrival counter, one per phase boundary. */
static void barrier(struct shared *sh, long *gen)
{
    long want = 2 * ++*gen;
    atomic_fetch_add(&sh->c[0].arrived, 1);
    while (atomic_load(&sh->c[0].arrived) < want)
        floor_relax();
}

static void staged(struct shared *sh, char *ring[2], int me, const char *src, char *dst,
                   size_t bytes, unsigned long base)
{
    struct ctl *mine = &sh->c[me], *peer = &sh->c[1 - me];
    unsigned long n = bytes / SLOT, tx = 0, rx = 0;
    while (tx < n || rx < n) {
        if (tx < n && base + tx - atomic_load_explicit(&mine->freed, memory_order_acquire) < DEPTH) {
            memcpy(ring[me] + ((base + tx) % DEPTH) * SLOT, src + tx * SLOT, SLOT);
            tx++;
            atomic_store_explicit(&mine->posted, base + tx, memory_order_release);
        }
        if (rx < n && atomic_load_explicit(&peer->posted, memory_order_acquire) > base + rx) {
            copy_nt(dst + rx * SLOT, ring[1 - me] + ((base + rx) % DEPTH) * SLOT, SLOT);
            rx++;
            atomic_store_explicit(&peer->freed, base + rx, memory_order_release);
        }
    }
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof v[0], floor_cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv)
{
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 256;
    int reps = argc > 2 ? atoi(argv[2]) : 7;
    int c0 = floor_nth_cpu(0), c1 = floor_nth_cpu(1);
    if (mib == 0 || reps < 1 || reps > MAXREPS || c0 < 0 || c1 < 0) {
        fprintf(stderr, "stage_floor: need MiB >= 1, 1 <= reps <= %d and two CPUs\n", MAXREPS);
        return 1;
    }
    size_t bytes = mib << 20;
    size_t shared_bytes = CTL_BYTES + 2 * (size_t)DEPTH * SLOT;
    struct shared *sh = mmap(NULL, shared_bytes, PROT_READ | PROT_WRITE,
                             MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) {
        perror("stage_floor: mmap");
        return 1;
    }
    memset(sh, 0, shared_bytes);
    char *ring[2] = {(char *)sh + CTL_BYTES, (char *)sh + CTL_BYTES + DEPTH * SLOT};
    /* Allocated before the fork, so a failure stops both ranks before either waits
     * in a barrier; each touches its own copy-on-write pages after it. */
    char *src = aligned_alloc(4096, bytes), *dst = aligned_alloc(4096, bytes);
    if (!src || !dst) {
        fprintf(stderr, "stage_floor: cannot allocate 2 x %zu MiB\n", mib);
        return 1;
    }
    pid_t kid = fork();
    if (kid < 0) {
        perror("stage_floor: fork");
        return 1;
    }
    int me = kid == 0;
    floor_pin(me ? c1 : c0);
    memset(src, 1 + me, bytes); /* first touch before any timing */
    memset(dst, 0, bytes);
    long gen = 0;
    unsigned long base = 0;
    for (int r = -1; r < reps; r++) {
        barrier(sh, &gen);
        double t0 = floor_now();
        copy_nt(dst, src, bytes);
        double t1 = floor_now();
        barrier(sh, &gen);
        double t2 = floor_now();
        staged(sh, ring, me, src, dst, bytes, base);
        double t3 = floor_now();
        base += bytes / SLOT;
        if (r >= 0) {
            sh->ms[me][0][r] = (t1 - t0) * 1e3;
            sh->ms[me][1][r] = (t3 - t2) * 1e3;
        }
    }
    barrier(sh, &gen);
    if (kid == 0)
        _exit(0);
    waitpid(kid, NULL, 0);
    double p[MAXREPS], s[MAXREPS];
    for (int r = 0; r < reps; r++) { /* the slower rank of each rep */
        p[r] = sh->ms[0][0][r] > sh->ms[1][0][r] ? sh->ms[0][0][r] : sh->ms[1][0][r];
        s[r] = sh->ms[0][1][r] > sh->ms[1][1][r] ? sh->ms[0][1][r] : sh->ms[1][1][r];
    }
    printf("%.2f %.2f\n", median(p, reps), median(s, reps));
    return 0;
}
