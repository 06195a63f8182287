/* qsgd_reduce_bench.c - QSGD's two reductions side by side in one run: allgather of
 * quantised payloads vs ring with re-quantisation per hop (cfg.qsgd_reduce).
 *
 *   qsgd_reduce_bench [-n COUNT] [-i CALLS] [-s LEVELS] [-c CORR]
 *
 * Run under crux-run / netns-hosts like any rank program. Every rank's gradient is
 * CORR * (a heavy-tailed vector common to all ranks) + (1 - CORR) * (its own one):
 * real gradients of data-parallel replicas are correlated, and the ring's partial
 * sums grow with the correlation. Per mode, over CALLS calls (fresh noise each):
 * the median wall time of a call (max over ranks), the bytes this rank sent
 * (wire_bytes, rank 0) and the relative L2 error ||out - sum|| / ||sum|| against
 * the exact sum (a dense allreduce in double), mean and max over calls.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "crux.h"

static void die_rc(int rc, const char *what)
{
    if (rc != CRUX_SUCCESS) {
        fprintf(stderr, "qsgd_reduce_bench: %s: %s\n", what, crux_error_string(rc));
        exit(1);
    }
}

static float heavy(uint64_t *x)
{
    *x ^= *x << 13, *x ^= *x >> 7, *x ^= *x << 17;
    double u = (double)((*x >> 11) + 1) / 9007199254740993.0;
    float mag = (float)(1e-3 / (u * u + 1e-6));
    return (*x & 1) ? mag : -mag;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    size_t n = 1 << 22;
    int calls = 20, levels = 7, opt, rank, P;
    double corr = 0.5;
    die_rc(crux_init(&argc, &argv), "crux_init");
    while ((opt = getopt(argc, argv, "n:i:s:c:")) != -1) {
        switch (opt) {
        case 'n': n = strtoul(optarg, NULL, 10); break;
        case 'i': calls = atoi(optarg); break;
        case 's': levels = atoi(optarg); break;
        case 'c': corr = atof(optarg); break;
        default:
            fprintf(stderr, "usage: %s [-n COUNT] [-i CALLS] [-s LEVELS] [-c CORR]\n", argv[0]);
            return 2;
        }
    }
    die_rc(crux_comm_rank(CRUX_COMM_WORLD, &rank), "rank");
    die_rc(crux_comm_size(CRUX_COMM_WORLD, &P), "size");
    float *g = malloc(n * 4), *out = malloc(n * 4);
    double *gd = malloc(n * 8), *exact = malloc(n * 8), *t = malloc((size_t)calls * 8);
    if (!g || !out || !gd || !exact || !t || calls < 1) {
        fprintf(stderr, "qsgd_reduce_bench: bad arguments or out of memory\n");
        return 1;
    }
    uint64_t xc = 0x9e3779b97f4a7c15ull, xr = 0x2545f4914f6cdd1dull * (uint64_t)(rank + 1);
    for (size_t i = 0; i < n; i++) {
        g[i] = (float)(corr * heavy(&xc) + (1 - corr) * heavy(&xr));
        gd[i] = g[i];
    }
    die_rc(crux_allreduce(gd, exact, n, CRUX_DOUBLE, CRUX_SUM, CRUX_COMM_WORLD), "exact sum");
    double norm = 0;
    for (size_t i = 0; i < n; i++)
        norm += exact[i] * exact[i];
    norm = sqrt(norm);
    if (rank == 0)
        printf("# QSGD s=%d, %zu floats, %d ranks, %d calls, correlation %.2f\n"
               "# %-10s %12s %14s %14s %14s %14s\n", levels, n, P, calls, corr, "reduce",
               "median ms", "wire B/rank", "dense ring B", "rel L2 mean", "rel L2 max");
    const char *names[] = { "allgather", "ring" };
    for (int mode = 0; mode < 2; mode++) {
        crux_compress_config_t cfg;
        crux_compress_config_init(&cfg, CRUX_CODEC_QSGD);
        cfg.qsgd_levels = levels;
        cfg.qsgd_reduce = mode;
        crux_compressor_t c;
        crux_compress_stats_t st;
        die_rc(crux_compressor_create(CRUX_COMM_WORLD, n, &cfg, &c), "create");
        die_rc(crux_compressed_allreduce(c, g, out), "warm-up call");
        double err_sum = 0, err_max = 0;
        for (int k = 0; k < calls; k++) {
            die_rc(crux_barrier(CRUX_COMM_WORLD), "barrier");
            double t0 = crux_wtime();
            die_rc(crux_compressed_allreduce(c, g, out), "crux_compressed_allreduce");
            double dt = crux_wtime() - t0;
            die_rc(crux_allreduce(&dt, &t[k], 1, CRUX_DOUBLE, CRUX_MAX, CRUX_COMM_WORLD), "max time");
            double e = 0;
            for (size_t i = 0; i < n; i++)
                e += (out[i] - exact[i]) * (out[i] - exact[i]);
            e = sqrt(e) / norm;
            err_sum += e;
            err_max = e > err_max ? e : err_max;
        }
        die_rc(crux_compressor_stats(c, &st), "stats");
        qsort(t, (size_t)calls, 8, cmp_double);
        if (rank == 0)
            printf("  %-10s %12.2f %14llu %14llu %14.5f %14.5f\n", names[mode], t[calls / 2] * 1e3,
                   (unsigned long long)st.wire_bytes,
                   (unsigned long long)(2.0 * (P - 1) / P * (double)n * 4), err_sum / calls, err_max);
        die_rc(crux_compressor_free(&c), "free");
    }
    free(g), free(out), free(gd), free(exact), free(t);
    die_rc(crux_finalize(), "crux_finalize");
    return 0;
}
