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

#include "floor_util.h"

#define BATCHES 20

struct line {
    _Alignas(64) _Atomic long v;
};

static void rounds(struct line *l, int me, long from, long n)
{
    for (long i = from; i < from + n; i++) {
        atomic_store_explicit(&l[me].v, i, memory_order_release);
        while (atomic_load_explicit(&l[1 - me].v, memory_order_acquire) < i)
            floor_relax();
    }
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 100000;
    int c0 = floor_nth_cpu(0), c1 = floor_nth_cpu(1);
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
    floor_pin(me ? c1 : c0);
    double t[BATCHES];
    long at = 1;
    rounds(l, me, at, n / 10); /* warm-up */
    at += n / 10;
    for (int b = 0; b < BATCHES; b++, at += n / BATCHES) {
        double t0 = floor_now();
        rounds(l, me, at, n / BATCHES);
        t[b] = (floor_now() - t0) / (double)(n / BATCHES) * 1e6;
    }
    if (kid == 0)
        _exit(0);
    waitpid(kid, NULL, 0);
    double sum = 0;
    for (int b = 0; b < BATCHES; b++)
        sum += t[b];
    qsort(t, BATCHES, sizeof t[0], floor_cmp_double);
    printf("%.3f %.3f\n", (t[BATCHES / 2 - 1] + t[BATCHES / 2]) / 2, sum / BATCHES);
    return 0;
}
