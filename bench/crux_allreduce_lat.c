/* crux_allreduce_lat - the distribution of one small allreduce's latency.
 *
 * OSU's format reports the mean, which on a shared or emulated machine is set by a
 * few scheduler stalls of milliseconds; perftest reports the "typical" (median)
 * beside its mean. This prints both, so crux can be compared with ib_write_lat
 * statistic for statistic (bench/verbs_vm.sh).
 *   crux-run -n 2 crux_allreduce_lat [-s BYTES(8)] [-i ITERS(3000)] [-x WARMUP(200)]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "crux.h"

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    size_t bytes = 8;
    int iters = 3000, warmup = 200, c, rank, rc;
    while ((c = getopt(argc, argv, "s:i:x:")) != -1) {
        switch (c) {
        case 's': bytes = strtoul(optarg, NULL, 10); break;
        case 'i': iters = atoi(optarg); break;
        case 'x': warmup = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: %s [-s bytes] [-i iters] [-x warmup]\n", argv[0]);
            return 2;
        }
    }
    if (bytes % 4 || bytes == 0 || iters < 1 || warmup < 0) {
        fprintf(stderr, "%s: -s must be a positive multiple of 4, -i >= 1, -x >= 0\n", argv[0]);
        return 2;
    }
    if ((rc = crux_init(&argc, &argv)) != CRUX_SUCCESS) {
        fprintf(stderr, "crux_init: %s\n", crux_error_string(rc));
        return 1;
    }
    crux_comm_rank(CRUX_COMM_WORLD, &rank);
    size_t count = bytes / 4;
    float *in = calloc(count, 4), *out = calloc(count, 4);
    double *t = malloc((size_t)iters * sizeof(double));
    if (!in || !out || !t) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    for (int i = 0; i < warmup; i++)
        crux_allreduce(in, out, count, CRUX_FLOAT, CRUX_SUM, CRUX_COMM_WORLD);
    crux_barrier(CRUX_COMM_WORLD);
    double t0 = crux_wtime();
    for (int i = 0; i < iters; i++) {
        double s = crux_wtime();
        rc = crux_allreduce(in, out, count, CRUX_FLOAT, CRUX_SUM, CRUX_COMM_WORLD);
        t[i] = (crux_wtime() - s) * 1e6;
        if (rc != CRUX_SUCCESS) {
            fprintf(stderr, "crux_allreduce: %s\n", crux_error_string(rc));
            return 1;
        }
    }
    double mean = (crux_wtime() - t0) * 1e6 / iters;
    qsort(t, (size_t)iters, sizeof(double), by_value);
    if (rank == 0)
        printf("# bytes iters t_min[us] t_median[us] t_mean[us] t_p99[us] t_max[us]\n"
               "%zu %d %.2f %.2f %.2f %.2f %.2f\n", bytes, iters, t[0], t[iters / 2], mean,
               t[iters * 99 / 100], t[iters - 1]);
    free(in);
    free(out);
    free(t);
    return crux_finalize() == CRUX_SUCCESS ? 0 : 1;
}
