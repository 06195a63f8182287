/*
 * ref_osu_allreduce.c - reference MPI_Allreduce latency benchmark.
 *
 * An independent re-implementation of the methodology and output format of
 * OSU Micro-Benchmarks 7.x `osu_allreduce` (blocking collective latency),
 * written so that Open MPI, MPICH and a future allreduce library can be
 * measured with byte-identical timing loops.  OMB is not packaged in Debian 12,
 * hence this program.
 *
 * Methodology (same as OMB 7.2 c/mpi/collective/blocking/osu_allreduce.c):
 *   - send/recv buffers allocated once at the largest size with
 *     posix_memalign(page size) and touched once (memset 1 / 0) before any
 *     timing; an extra "warmup" recv buffer is allocated as OMB does;
 *   - for each size (min, min*2, ..., max; sizes with 0 elements skipped):
 *       iterations/warmup = 1000/100 for size <= 8192 bytes, 100/10 above
 *       (-i / -x set both the small and the large value, as in OMB);
 *       MPI_Barrier;
 *       for it in 0 .. warmup+iters-1:
 *           [-c: refill buffers with an iteration-dependent pattern,
 *                -u extra untimed allreduces, MPI_Barrier]
 *           t0 = MPI_Wtime(); MPI_Allreduce(SUM); t1 = MPI_Wtime();
 *           MPI_Barrier                       (not timed)
 *           [-c: check the result]            (not timed)
 *           if it >= warmup: timer += t1 - t0
 *       per-rank latency = timer*1e6/iters;
 *       rank 0 prints the mean over ranks (MPI_Reduce SUM / n) and, with -f,
 *       the min and max of the per-rank means and the iteration count.
 *   - output: OMB header + rows "%-10d%20.2f" (FIELD_WIDTH is 20 in OMB 7.x),
 *     -f adds "%20.2f%20.2f%12lu", -c adds "%20s" Pass/Fail.
 *
 * Extensions (not in OMB): -d float|double|int (default float), -b prints an
 * extra bus-bandwidth column (GB/s, 1e9 B/s, NCCL-tests convention:
 * busbw = size/avg_time * 2*(n-1)/n), -F size step factor (default 2),
 * and -c really compares the result (OMB 7.2's validate_reduction builds the
 * expected buffer but never compares it).
 *
 * Build: mpicc -O2 -o ref_osu_allreduce ref_osu_allreduce.c   (run-ref.sh does it)
 *
 * Origin: ../shared/tools/refbench/ref_osu_allreduce.c, the reference tools behind the
 * baseline measurements in ../shared/LIMITS.md; copied into crux's bench/ref/
 * so the project does not depend on ../shared.
 * The timing loop is the one bench/crux_osu_allreduce.c mirrors.
 */
#define _GNU_SOURCE
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <getopt.h>
#include <math.h>

#define OMB_VERSION_STR "7.2"
#define FIELD_WIDTH 20
#define FLOAT_PRECISION 2
#define LARGE_MESSAGE_SIZE 8192L
#define COLL_LOOP_SMALL 1000
#define COLL_SKIP_SMALL 100
#define COLL_LOOP_LARGE 100
#define COLL_SKIP_LARGE 10
#define VALIDATION_SKIP_DEFAULT 5
#define MIN_MESSAGE_SIZE 1L
#define MAX_MSG_SIZE_COLL (1L << 20)

enum dtype_id { DT_FLOAT, DT_DOUBLE, DT_INT };

struct opts {
    long min_size, max_size;
    int iters, skip, iters_large, skip_large;
    int full, validate, warmup_validation, busbw;
    long factor;
    enum dtype_id dt;
};

static void usage(const char *prog)
{
    printf("Usage: %s [options]\n"
           "Options:\n"
           "  -m [MIN:]MAX  message sizes in bytes (default %ld:%ld; -m 128, -m 2:128, -m 2:)\n"
           "  -i ITER       timed iterations, all sizes (default %d for <=%ld B, %d above)\n"
           "  -x ITER       warmup iterations, all sizes (default %d / %d)\n"
           "  -f            full statistics (min/max of per-rank averages, iterations)\n"
           "  -d TYPE       float|double|int (default float); op is MPI_SUM\n"
           "  -T TYPE       OMB-style alias: mpi_float|mpi_double|mpi_int\n"
           "  -c            validate every result (Pass/Fail column)\n"
           "  -u N          untimed warmup allreduces per iteration with -c (default %d, as OMB)\n"
           "  -b            extra column: bus bandwidth GB/s = size/avg * 2(n-1)/n\n"
           "  -F K          multiply size by K between steps (default 2)\n"
           "  -h            this help\n",
           prog, MIN_MESSAGE_SIZE, MAX_MSG_SIZE_COLL, COLL_LOOP_SMALL,
           LARGE_MESSAGE_SIZE, COLL_LOOP_LARGE, COLL_SKIP_SMALL,
           COLL_SKIP_LARGE, VALIDATION_SKIP_DEFAULT);
}

static int parse_sizes(char *s, struct opts *o)
{
    char *colon = strchr(s, ':');
    if (!colon) {
        o->max_size = atol(s);
        return o->max_size >= 0 ? 0 : -1;
    }
    *colon = '\0';
    if (s[0] != '\0')
        o->min_size = atol(s);
    if (colon[1] != '\0')
        o->max_size = atol(colon + 1);
    return (o->min_size > 0 && o->max_size >= 0) ? 0 : -1;
}

static int parse_dtype(const char *s, enum dtype_id *dt)
{
    if (!strncasecmp(s, "mpi_", 4))
        s += 4;
    if (!strcasecmp(s, "float"))
        *dt = DT_FLOAT;
    else if (!strcasecmp(s, "double"))
        *dt = DT_DOUBLE;
    else if (!strcasecmp(s, "int"))
        *dt = DT_INT;
    else
        return -1;
    return 0;
}

/* Returns 0 ok, 1 help, -1 bad usage. */
static int parse_options(int argc, char **argv, struct opts *o)
{
    int c;
    o->min_size = MIN_MESSAGE_SIZE;
    o->max_size = MAX_MSG_SIZE_COLL;
    o->iters = COLL_LOOP_SMALL;
    o->skip = COLL_SKIP_SMALL;
    o->iters_large = COLL_LOOP_LARGE;
    o->skip_large = COLL_SKIP_LARGE;
    o->full = o->validate = o->busbw = 0;
    o->warmup_validation = VALIDATION_SKIP_DEFAULT;
    o->factor = 2;
    o->dt = DT_FLOAT;
    opterr = 0;
    while ((c = getopt(argc, argv, "+m:i:x:fd:T:cu:bF:h")) != -1) {
        switch (c) {
        case 'm':
            if (parse_sizes(optarg, o))
                return -1;
            break;
        case 'i':
            o->iters = o->iters_large = atoi(optarg);
            if (o->iters < 1)
                return -1;
            break;
        case 'x':
            o->skip = o->skip_large = atoi(optarg);
            if (o->skip < 0)
                return -1;
            break;
        case 'f': o->full = 1; break;
        case 'd':
        case 'T':
            if (parse_dtype(optarg, &o->dt))
                return -1;
            break;
        case 'c': o->validate = 1; break;
        case 'u':
            o->warmup_validation = atoi(optarg);
            if (o->warmup_validation < 0)
                return -1;
            break;
        case 'b': o->busbw = 1; break;
        case 'F':
            o->factor = atol(optarg);
            if (o->factor < 2)
                return -1;
            break;
        case 'h': return 1;
        default: return -1;
        }
    }
    if (o->max_size < o->min_size)
        return -1;
    return 0;
}

static MPI_Datatype mpi_dtype(enum dtype_id dt)
{
    return dt == DT_FLOAT ? MPI_FLOAT : dt == DT_DOUBLE ? MPI_DOUBLE : MPI_INT;
}

static const char *dtype_name(enum dtype_id dt)
{
    return dt == DT_FLOAT ? "MPI_FLOAT" : dt == DT_DOUBLE ? "MPI_DOUBLE" : "MPI_INT";
}

static size_t dtype_size(enum dtype_id dt)
{
    return dt == DT_FLOAT ? sizeof(float) : dt == DT_DOUBLE ? sizeof(double) : sizeof(int);
}

/* Validation pattern: element i of rank r at iteration it holds
 * v = (i % 100 + 1) * (it + 1) + r  (integers, exact in float up to 2^24).
 * Expected sum over n ranks: n*(i%100+1)*(it+1) + n(n-1)/2. */
static void fill_pattern(void *buf, size_t n, enum dtype_id dt, int it, int rank)
{
    size_t i;
    for (i = 0; i < n; i++) {
        long v = (long)(i % 100 + 1) * (it + 1) + rank;
        switch (dt) {
        case DT_FLOAT: ((float *)buf)[i] = (float)v; break;
        case DT_DOUBLE: ((double *)buf)[i] = (double)v; break;
        case DT_INT: ((int *)buf)[i] = (int)v; break;
        }
    }
}

static int check_pattern(const void *buf, size_t n, enum dtype_id dt, int it, int np)
{
    size_t i;
    int errors = 0;
    for (i = 0; i < n; i++) {
        long e = (long)np * (long)(i % 100 + 1) * (it + 1) + (long)np * (np - 1) / 2;
        double got;
        switch (dt) {
        case DT_FLOAT: got = ((const float *)buf)[i]; break;
        case DT_DOUBLE: got = ((const double *)buf)[i]; break;
        default: got = ((const int *)buf)[i]; break;
        }
        /* all values are integers well inside the exact range of each type */
        if (fabs(got - (double)e) > 0.0) {
            errors++;
            if (errors > 1000)
                break;
        }
    }
    return errors;
}

int main(int argc, char **argv)
{
    struct opts o;
    int rank, np, po, it, j;
    long size;
    char *sendbuf = NULL, *recvbuf = NULL, *recvbuf_warmup = NULL;
    size_t pagesz = (size_t)sysconf(_SC_PAGESIZE);
    int errors = 0, local_errors = 0;
    MPI_Datatype mdt;

    po = parse_options(argc, argv, &o);
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &np);

    if (po != 0) {
        if (rank == 0) {
            if (po < 0)
                fprintf(stderr, "Invalid option or argument\n\n");
            usage(argv[0]);
        }
        MPI_Finalize();
        return po < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
    }
    if (np < 2) {
        if (rank == 0)
            fprintf(stderr, "This test requires at least two processes\n");
        MPI_Finalize();
        return EXIT_FAILURE;
    }
    mdt = mpi_dtype(o.dt);

    if (posix_memalign((void **)&sendbuf, pagesz, (size_t)o.max_size) ||
        posix_memalign((void **)&recvbuf, pagesz, (size_t)o.max_size) ||
        posix_memalign((void **)&recvbuf_warmup, pagesz, (size_t)o.max_size)) {
        fprintf(stderr, "Could Not Allocate Memory [rank %d]\n", rank);
        MPI_Abort(MPI_COMM_WORLD, EXIT_FAILURE);
    }
    /* touch every page once, before any timing (OMB set_buffer) */
    memset(sendbuf, 1, (size_t)o.max_size);
    memset(recvbuf, 0, (size_t)o.max_size);
    memset(recvbuf_warmup, 0, (size_t)o.max_size);

    if (rank == 0) {
        printf("\n# OSU MPI Allreduce Latency Test v" OMB_VERSION_STR "\n");
        printf("# Datatype: %s.\n", dtype_name(o.dt));
        printf("%-*s", 10, "# Size");
        printf("%*s", FIELD_WIDTH, "Avg Latency(us)");
        if (o.full) {
            printf("%*s", FIELD_WIDTH, "Min Latency(us)");
            printf("%*s", FIELD_WIDTH, "Max Latency(us)");
            printf("%*s", 12, "Iterations");
        }
        if (o.validate)
            printf("%*s", FIELD_WIDTH, "Validation");
        if (o.busbw)
            printf("%*s", FIELD_WIDTH, "Busbw(GB/s)");
        printf("\n");
        fflush(stdout);
    }

    for (size = o.min_size; size <= o.max_size; size *= o.factor) {
        size_t count = (size_t)size / dtype_size(o.dt);
        int iters, skip;
        double timer = 0.0, t0, t1, latency, avg = 0.0, mn = 0.0, mx = 0.0;

        if (count == 0)
            continue;
        if (size > LARGE_MESSAGE_SIZE) {
            iters = o.iters_large;
            skip = o.skip_large;
        } else {
            iters = o.iters;
            skip = o.skip;
        }

        MPI_Barrier(MPI_COMM_WORLD);
        for (it = 0; it < iters + skip; it++) {
            if (o.validate) {
                fill_pattern(sendbuf, count, o.dt, it, rank);
                memset(recvbuf, 0, (size_t)size);
                for (j = 0; j < o.warmup_validation; j++) {
                    MPI_Barrier(MPI_COMM_WORLD);
                    MPI_Allreduce(sendbuf, recvbuf_warmup, (int)count, mdt,
                                  MPI_SUM, MPI_COMM_WORLD);
                }
                MPI_Barrier(MPI_COMM_WORLD);
            }
            t0 = MPI_Wtime();
            MPI_Allreduce(sendbuf, recvbuf, (int)count, mdt, MPI_SUM,
                          MPI_COMM_WORLD);
            t1 = MPI_Wtime();
            MPI_Barrier(MPI_COMM_WORLD);
            if (o.validate)
                local_errors += check_pattern(recvbuf, count, o.dt, it, np);
            if (it >= skip)
                timer += t1 - t0;
        }
        latency = timer * 1e6 / iters;
        MPI_Reduce(&latency, &mn, 1, MPI_DOUBLE, MPI_MIN, 0, MPI_COMM_WORLD);
        MPI_Reduce(&latency, &mx, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
        MPI_Reduce(&latency, &avg, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
        avg /= np;
        if (o.validate)
            MPI_Allreduce(&local_errors, &errors, 1, MPI_INT, MPI_SUM,
                          MPI_COMM_WORLD);

        if (rank == 0) {
            printf("%-*ld", 10, size);
            printf("%*.*f", FIELD_WIDTH, FLOAT_PRECISION, avg);
            if (o.full)
                printf("%*.*f%*.*f%*lu", FIELD_WIDTH, FLOAT_PRECISION, mn,
                       FIELD_WIDTH, FLOAT_PRECISION, mx, 12,
                       (unsigned long)iters);
            if (o.validate)
                printf("%*s", FIELD_WIDTH, errors > 0 ? "Fail" : "Pass");
            if (o.busbw) {
                double busbw = avg > 0.0
                    ? ((double)size / (avg * 1e-6)) / 1e9 * 2.0 * (np - 1) / np
                    : 0.0;
                printf("%*.*f", FIELD_WIDTH, FLOAT_PRECISION, busbw);
            }
            printf("\n");
            fflush(stdout);
        }
        MPI_Barrier(MPI_COMM_WORLD);
        if (errors != 0)
            break;
        if (size > o.max_size / o.factor)
            break; /* avoid overflow of size *= factor */
    }

    free(sendbuf);
    free(recvbuf);
    free(recvbuf_warmup);
    MPI_Finalize();

    if (errors != 0 && rank == 0) {
        printf("DATA VALIDATION ERROR: %s exited with status %d on message size %ld.\n",
               argv[0], EXIT_FAILURE, size);
        return EXIT_FAILURE;
    }
    return EXIT_SUCCESS;
}
