/* reduce_bench.c - throughput of the reduction kernels (lib/reduce*.c) for every ISA path,
 * dtype and op, at an L1-, an L2- and a DRAM-sized buffer, out of place (dst = a op b) and
 * in place (a = a op b); plus the cost of a one-element call (small-message latency).
 *
 *   reduce_bench [-i avx512|avx2|scalar] [-d float|...] [-s bytes] [-t seconds]
 *
 * Each figure is the best of 3 windows of at least -t seconds (default 0.01). *
 * "size" is the bytes of one buffer; buf GB/s = size / time (what a collective moves),
 * mem GB/s = 3 * size / time (two streams read, one written).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "reduce.h"

static const char *const isa_names[] = {"avx512", "avx2", "scalar"};
static const char *const dtype_names[] = {"float", "double", "int32", "int64",
                                          "uint8", "float16", "bfloat16"};
static const size_t dtype_sizes[] = {4, 8, 4, 8, 1, 2, 2};
static const char *const op_names[] = {"sum", "prod", "max", "min"};
static const size_t default_sizes[] = {4096, 256 * 1024, 64 * 1024 * 1024};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Values in [1, 2) (or small integers): repeated in-place reduction never produces
 * subnormals, whose slow paths would measure the FPU instead of the kernel. */
static void fill(void *buf, size_t bytes, crux_datatype_t dt)
{
    size_t n = bytes / dtype_sizes[dt];
    for (size_t i = 0; i < n; i++) {
        double v = 1.0 + (double)(i % 1000) / 1000.0;
        float f = (float)v;
        int32_t i32 = (int32_t)(i % 1000);
        int64_t i64 = (int64_t)(i % 1000);
        uint16_t h = dt == CRUX_FLOAT16 ? crux_float_to_half(f) : crux_float_to_bf16(f);
        unsigned char *p = (unsigned char *)buf + i * dtype_sizes[dt];
        switch (dt) {
        case CRUX_FLOAT: memcpy(p, &f, 4); break;
        case CRUX_DOUBLE: memcpy(p, &v, 8); break;
        case CRUX_INT32: memcpy(p, &i32, 4); break;
        case CRUX_INT64: memcpy(p, &i64, 8); break;
        case CRUX_UINT8: *p = (unsigned char)(i * 7); break;
        default: memcpy(p, &h, 2); break;
        }
    }
}

#define TRIALS 3

/* Seconds per call, the best of TRIALS windows (the machine may be shared): in each, calls
 * are batched until min_time has passed. */
static double time_reduce(void *d, const void *a, const void *b, size_t n, crux_datatype_t dt,
                          crux_op_t op, double min_time)
{
    double best = 1e30;
    crux_reduce(d, a, b, n, dt, op); /* warm caches and page tables */
    for (int trial = 0; trial < TRIALS; trial++) {
        long calls = 0, batch = 1;
        double t0 = now(), t;
        do {
            for (long k = 0; k < batch; k++)
                crux_reduce(d, a, b, n, dt, op);
            calls += batch;
            batch *= 2;
            t = now() - t0;
        } while (t < min_time);
        if (t / (double)calls < best)
            best = t / (double)calls;
    }
    return best;
}

static void bench_isa(const char *isa, int only_dtype, size_t only_size, double min_time,
                      unsigned char *bufs[3])
{
    if (crux_reduce_force_isa(isa) != 0) {
        printf("# %s: not supported by this CPU, skipped\n", isa);
        return;
    }
    printf("# %s: one-element calls (ns), out of place / in place:", isa);
    for (int dt = 0; dt < 7; dt++)
        printf(" %s %.1f/%.1f", dtype_names[dt],
               1e9 * time_reduce(bufs[2] + 4096, bufs[0], bufs[1] + 8192, 1, (crux_datatype_t)dt,
                                 CRUX_SUM, min_time),
               1e9 * time_reduce(bufs[0], bufs[0], bufs[1] + 8192, 1, (crux_datatype_t)dt,
                                 CRUX_SUM, min_time));
    printf("\n");
    for (int dt = 0; dt < 7; dt++) {
        if (only_dtype >= 0 && dt != only_dtype)
            continue;
        for (size_t s = 0; s < 3; s++) {
            size_t bytes = only_size ? only_size : default_sizes[s];
            size_t n = bytes / dtype_sizes[dt];
            fill(bufs[0], bytes, (crux_datatype_t)dt);
            fill(bufs[1], bytes, (crux_datatype_t)dt);
            for (int op = 0; op < 4; op++)
                for (int inplace = 0; inplace < 2; inplace++) {
                    void *d = inplace ? bufs[0] : bufs[2];
                    double sec = time_reduce(d, bufs[0], bufs[1], n, (crux_datatype_t)dt,
                                             (crux_op_t)op, min_time);
                    printf("%-7s %-9s %-5s %10zu %-8s %9.2f %9.2f\n", isa, dtype_names[dt],
                           op_names[op], bytes, inplace ? "inplace" : "outplace",
                           (double)bytes / sec / 1e9, 3.0 * (double)bytes / sec / 1e9);
                }
            if (only_size)
                break;
        }
    }
}

static int lookup(const char *const *names, int count, const char *s)
{
    for (int i = 0; i < count; i++)
        if (!strcmp(names[i], s))
            return i;
    return -1;
}

int main(int argc, char **argv)
{
    int only_isa = -1, only_dtype = -1, opt;
    size_t only_size = 0;
    double min_time = 0.01;
    while ((opt = getopt(argc, argv, "i:d:s:t:h")) != -1) {
        switch (opt) {
        case 'i': only_isa = lookup(isa_names, 3, optarg); break;
        case 'd': only_dtype = lookup(dtype_names, 7, optarg); break;
        case 's': only_size = strtoull(optarg, NULL, 0); break;
        case 't': min_time = atof(optarg); break;
        default:
            fprintf(stderr, "usage: %s [-i avx512|avx2|scalar] [-d dtype] [-s bytes] "
                            "[-t min_seconds_per_point]\n", argv[0]);
            return opt == 'h' ? 0 : 2;
        }
        if ((opt == 'i' && only_isa < 0) || (opt == 'd' && only_dtype < 0) ||
            (opt == 's' && only_size == 0) || (opt == 't' && !(min_time > 0))) {
            fprintf(stderr, "%s: bad value '%s' for -%c\n", argv[0], optarg, opt);
            return 2;
        }
    }
    size_t max_bytes = only_size ? only_size : default_sizes[2];
    if (max_bytes < 16384) /* room for the one-element calls' offsets */
        max_bytes = 16384;
    unsigned char *bufs[3];
    for (int k = 0; k < 3; k++) {
        bufs[k] = aligned_alloc(64, (max_bytes + 63) / 64 * 64);
        if (!bufs[k]) {
            fprintf(stderr, "%s: cannot allocate 3 x %zu bytes\n", argv[0], max_bytes);
            return 1;
        }
        memset(bufs[k], 0, max_bytes);
    }
    printf("# default ISA: %s; size = bytes per buffer; buf GB/s = size/t, mem GB/s = 3*size/t\n",
           crux_reduce_isa());
    printf("%-7s %-9s %-5s %10s %-8s %9s %9s\n", "# isa", "dtype", "op", "size", "mode",
           "buf_GB/s", "mem_GB/s");
    for (int i = 0; i < 3; i++)
        if (only_isa < 0 || i == only_isa)
            bench_isa(isa_names[i], only_dtype, only_size, min_time, bufs);
    for (int k = 0; k < 3; k++)
        free(bufs[k]);
    return 0;
}
