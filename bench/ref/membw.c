/*
 * membw.c - quick memory-bandwidth estimates for the allreduce baselines.
 *
 *   triad   a[i] = b[i] + s*c[i]   (float, STREAM convention: 3 arrays counted)
 *   add     a[i] += b[i]           (float, the allreduce inner loop: 3 accesses
 *                                   counted = read a, read b, write a)
 *   memcpy  single thread, bytes copied per second (traffic is 2x that)
 *
 * Arrays of ARRAY_MIB MiB each (default 256), page-aligned, touched before
 * timing. Threads: OpenMP (OMP_NUM_THREADS / -t). Reports best and mean of
 * the repetitions; 1 GB = 1e9 B.
 *
 * Build: gcc -O2 -march=native -fopenmp -o membw membw.c
 * Usage: membw [-s MiB] [-r reps] [-t threads]   (runs triad/add at 1 and 2
 *        threads unless -t given, then memcpy at 1 MiB and at -s MiB)
 *
 * Origin: ../shared/tools/refbench/membw.c, the reference tools behind the
 * baseline measurements in ../shared/LIMITS.md; copied into crux's bench/ref/
 * so the project does not depend on ../shared.
 */
#define _GNU_SOURCE
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void *xalloc(size_t bytes)
{
    void *p = NULL;
    if (posix_memalign(&p, 4096, bytes)) {
        perror("posix_memalign");
        exit(1);
    }
    return p;
}

int main(int argc, char **argv)
{
    size_t mib = 256;
    int reps = 10, only_threads = 0, c, t, r;
    while ((c = getopt(argc, argv, "s:r:t:")) != -1) {
        switch (c) {
        case 's': mib = strtoul(optarg, NULL, 10); break;
        case 'r': reps = atoi(optarg); break;
        case 't': only_threads = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: %s [-s MiB] [-r reps] [-t threads]\n", argv[0]);
            return 2;
        }
    }
    size_t bytes = mib << 20, n = bytes / sizeof(float), i;
    float *a = xalloc(bytes), *b = xalloc(bytes), *cc = xalloc(bytes);
    const float s = 3.0f;

    for (t = 1; t <= 2; t++) {
        if (only_threads && t != only_threads)
            continue;
        omp_set_num_threads(t);
        /* first touch with the same thread layout that will use the data */
#pragma omp parallel for schedule(static)
        for (i = 0; i < n; i++) {
            a[i] = 1.0f; b[i] = 2.0f; cc[i] = 0.5f;
        }
        double best = 1e30, sum = 0;
        for (r = 0; r < reps + 1; r++) {
            double t0 = now();
#pragma omp parallel for schedule(static)
            for (i = 0; i < n; i++)
                a[i] = b[i] + s * cc[i];
            double dt = now() - t0;
            if (r == 0) continue; /* warm-up */
            sum += dt; if (dt < best) best = dt;
        }
        printf("triad   a=b+s*c  threads=%d arrays=%zu MiB x3   best %7.2f GB/s  mean %7.2f GB/s\n",
               t, mib, 3.0 * bytes / best / 1e9, 3.0 * bytes / (sum / reps) / 1e9);
        best = 1e30; sum = 0;
        for (r = 0; r < reps + 1; r++) {
            double t0 = now();
#pragma omp parallel for schedule(static)
            for (i = 0; i < n; i++)
                a[i] += b[i];
            double dt = now() - t0;
            if (r == 0) continue;
            sum += dt; if (dt < best) best = dt;
        }
        printf("add     a+=b     threads=%d arrays=%zu MiB x2   best %7.2f GB/s  mean %7.2f GB/s"
               "  (3 accesses counted; %.2f Gelem/s)\n",
               t, mib, 3.0 * bytes / best / 1e9, 3.0 * bytes / (sum / reps) / 1e9,
               n / best / 1e9);
    }
    if (a[12345] < 0) printf("%f\n", a[12345]); /* keep results live */

    /* single-thread memcpy: 1 MiB (cache resident) and mib MiB (DRAM) */
    {
        size_t sizes[2] = {1u << 20, bytes};
        int k;
        for (k = 0; k < 2; k++) {
            size_t sz = sizes[k];
            int inner = sz <= (4u << 20) ? 2000 : 1;
            double best = 1e30, sum = 0;
            memset(a, 1, sz);
            memset(b, 0, sz);
            for (r = 0; r < reps + 1; r++) {
                double t0 = now();
                for (int q = 0; q < inner; q++) {
                    memcpy(b, a, sz);
                    __asm__ __volatile__("" ::: "memory");
                }
                double dt = (now() - t0) / inner;
                if (r == 0) continue;
                sum += dt; if (dt < best) best = dt;
            }
            printf("memcpy  1 thread  size=%zu KiB%s  best %7.2f GB/s  mean %7.2f GB/s (bytes copied/s)\n",
                   sz >> 10, sz <= (4u << 20) ? " (in cache)" : " (DRAM)   ",
                   sz / best / 1e9, sz / (sum / reps) / 1e9);
        }
    }
    free(a); free(b); free(cc);
    return 0;
}
