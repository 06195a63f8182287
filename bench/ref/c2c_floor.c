/*
 * c2c_floor.c - the cross-core floor under a 2-rank small allreduce: two processes,
 * pinned to two CPUs, each storing a counter into its own cache line and spinning
 * until it sees the peer's (LIMITS.md strategy L). One round is the least any
 * shared-memory allreduce can take, whatever its protocol; on this VM it moves
 * with where the host puts the vCPUs (0.08 us in LIMITS.md, 0.25 us on some days),
 * so run-ref.sh prints it beside the table: small-message ratios mean little
 * without it.
 *
 * Build: gcc -O2 -o c2c_floor c2c_floor.c
 * Usage: c2c_floor [rounds]   prints "median_us mean_us" over 20 batches
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define relax() _mm_pause()
#else
#define relax() ((void)0)
#endif

#define BATCHES 20

struct line {
    _Alignas(64) _Atomic long v;
};

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* The i-th CPU this process may run on, or -1. */
static int nth_cpu(int i)
{
    cpu_set_t s;
    if (sched_getaffinity(0, sizeof s, &s))
        return -1;
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &s) && i-- == 0)
            return c;
    return -1;
}

static void pin(int cpu)
{
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    sched_setaffinity(0, sizeof s, &s);
}

static void rounds(struct line *l, int me, long from, long n)
{
    for (long i = from; i < from + n; i++) {
        atomic_store_explicit(&l[me].v, i, memory_order_release);
        while (atomic_load_explicit(&l[1 - me].v, memory_order_acquire) < i)
            relax();
    }
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 100000;
    int c0 = nth_cpu(0), c1 = nth_cpu(1);
    if (n < 10 * BATCHES || c0 < 0 || c1 < 0) {
        fprintf(stderr, "c2c_floor: need rounds >= %d and two CPUs\n", 10 * BATCHES);
        return 1;
    }
    struct line *l = mmap(NULL, 2 * sizeof *l, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                          -1, 0);
    if (l == MAP_FAILED) {
        perror("c2c_floor: mmap");
        return 1;
    }
    pid_t kid = fork();
    if (kid < 0) {
        perror("c2c_floor: fork");
        return 1;
    }
    int me = kid == 0;
    pin(me ? c1 : c0);
    double t[BATCHES];
    long at = 1;
    rounds(l, me, at, n / 10); /* warm-up */
    at += n / 10;
    for (int b = 0; b < BATCHES; b++, at += n / BATCHES) {
        double t0 = now();
        rounds(l, me, at, n / BATCHES);
        t[b] = (now() - t0) / (double)(n / BATCHES) * 1e6;
    }
    if (kid == 0)
        _exit(0);
    waitpid(kid, NULL, 0);
    double sum = 0;
    for (int b = 0; b < BATCHES; b++)
        sum += t[b];
    qsort(t, BATCHES, sizeof t[0], cmp);
    printf("%.3f %.3f\n", (t[BATCHES / 2 - 1] + t[BATCHES / 2]) / 2, sum / BATCHES);
    return 0;
}
