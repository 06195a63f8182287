/*
 * crux_osu_allreduce.c - crux_allreduce latency, timed and printed the way OSU
 * Micro-Benchmarks 7.x `osu_allreduce` does, so its rows can sit beside Open MPI
 * and MPICH (bench/ref/run-ref.sh parses them).
 *
 * Methodology (the same loop as bench/ref/ref_osu_allreduce.c and OMB 7.x):
 *   - send, recv and warm-up recv buffers allocated once at the largest size,
 *     page-aligned, touched once (memset 1 / 0 / 0) before any timing;
 *   - sizes min, 2*min, ... <= max bytes; count = size / sizeof(dtype), sizes
 *     with count 0 are skipped;
 *   - iterations/warm-up 1000/100 up to 8192 bytes, 100/10 above; -i and -x
 *     set both (as OMB does);
 *   - crux_barrier; per iteration: [-c: refill the pattern, -u untimed
 *     allreduces each after a barrier, barrier], t0 = crux_wtime(),
 *     crux_allreduce, t1, untimed crux_barrier, [-c: check every element];
 *     warm-up iterations are not timed;
 *   - per-rank latency = sum(t1 - t0) / iterations; rank 0 prints the mean over
 *     ranks and, with -f, the min and max of the per-rank means.
 * Output: OMB's header and rows "%-10d%20.2f" (FIELD_WIDTH 20 as in OMB 7.x),
 * -f adds "%20.2f%20.2f%12lu", -c "%20s" Pass/Fail, --busbw two "%20.2f"
 * columns: algbw = size / avg and busbw = algbw * 2(n-1)/n in GB/s (1e9 B/s,
 * nccl-tests convention).
 * Unlike OMB this runs with a single rank too.
 *
 * --codec cltk|gtopk|sketch|topk|qsgd [--density D] [--beta B] [--sketch-rows R]
 * [--sketch-cols C] times crux_compressed_allreduce instead (float only; the
 * compressor is created once per size, untimed; inputs are a fixed pseudo-random
 * heavy-tailed pattern per rank). Extra columns: the mean over ranks and timed
 * iterations of the compressor's encode, comm and decode times (us) and of the
 * bytes each rank put on the wire. With --busbw: Algbw/Busbw are the
 * dense-equivalent figures (the size as if sent dense), WireBW is the wire bytes a
 * rank sent per second (already the per-rank traffic, so no 2(n-1)/n factor).
 * --add times crux_compressed_allreduce_add (out += estimate) instead: the output
 * buffer is left as it is between iterations, only the kept entries are added.
 */
#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "crux.h"

#define FIELD_WIDTH 20
#define FLOAT_PRECISION 2
#define LARGE_MESSAGE_SIZE 8192UL
#define COLL_LOOP_SMALL 1000
#define COLL_SKIP_SMALL 100
#define COLL_LOOP_LARGE 100
#define COLL_SKIP_LARGE 10
#define VALIDATION_SKIP_DEFAULT 5
#define MIN_MESSAGE_SIZE 1UL
#define MAX_MSG_SIZE_COLL (1UL << 20)
#define MAX_DTYPES 8
#define PATTERN_PERIOD 101 /* element period of the -c pattern */

struct opts {
    size_t min_size, max_size;
    int iters, skip, iters_large, skip_large, warmup_validation;
    int full, validate, in_place, busbw;
    int add; /* --add: crux_compressed_allreduce_add */
    crux_compress_config_t ccfg; /* ccfg.codec == CRUX_CODEC_NONE: dense allreduce */
    double density;
    float beta;
    int sketch_rows, sketch_cols;
    int qsgd_levels;
    crux_op_t op;
    crux_datatype_t dtypes[MAX_DTYPES];
    int ndtypes;
    int bad_opt;         /* the option that failed to parse, for the message */
    const char *bad_arg;
};

enum parse_result { PARSE_OK, PARSE_HELP, PARSE_VERSION, PARSE_BAD };

/* ------------------------------------------------------------------ names */

static const struct {
    const char *name;
    crux_datatype_t dt;
} dtype_names[] = {
    { "float", CRUX_FLOAT },       { "double", CRUX_DOUBLE },   { "int", CRUX_INT32 },
    { "int32", CRUX_INT32 },       { "int32_t", CRUX_INT32 },   { "int64", CRUX_INT64 },
    { "int64_t", CRUX_INT64 },     { "long", CRUX_INT64 },      { "uint8", CRUX_UINT8 },
    { "uint8_t", CRUX_UINT8 },     { "char", CRUX_UINT8 },      { "float16", CRUX_FLOAT16 },
    { "half", CRUX_FLOAT16 },      { "fp16", CRUX_FLOAT16 },    { "bfloat16", CRUX_BFLOAT16 },
    { "bf16", CRUX_BFLOAT16 },
};

static const char *dtype_label(crux_datatype_t dt)
{
    static const char *const labels[] = { "CRUX_FLOAT", "CRUX_DOUBLE",  "CRUX_INT32",
                                          "CRUX_INT64", "CRUX_UINT8",   "CRUX_FLOAT16",
                                          "CRUX_BFLOAT16" };
    return (unsigned)dt < sizeof(labels) / sizeof(labels[0]) ? labels[dt] : "?";
}

static const char *const op_labels[] = { "CRUX_SUM", "CRUX_PROD", "CRUX_MAX", "CRUX_MIN" };
static const char *const op_names[] = { "sum", "prod", "max", "min" };

static int parse_dtype(const char *s, crux_datatype_t *dt)
{
    if (!strncasecmp(s, "mpi_", 4))
        s += 4;
    else if (!strncasecmp(s, "crux_", 5))
        s += 5;
    for (size_t i = 0; i < sizeof(dtype_names) / sizeof(dtype_names[0]); i++) {
        if (!strcasecmp(s, dtype_names[i].name)) {
            *dt = dtype_names[i].dt;
            return 0;
        }
    }
    return -1;
}

/* OMB's -T takes a comma separated list and runs every type in turn. */
static int parse_dtype_list(char *s, struct opts *o)
{
    char *save = NULL;
    o->ndtypes = 0;
    for (char *tok = strtok_r(s, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (o->ndtypes == MAX_DTYPES || parse_dtype(tok, &o->dtypes[o->ndtypes]))
            return -1;
        o->ndtypes++;
    }
    return o->ndtypes > 0 ? 0 : -1;
}

static int parse_op(const char *s, crux_op_t *op)
{
    if (!strncasecmp(s, "mpi_", 4))
        s += 4;
    for (int i = 0; i < 4; i++) {
        if (!strcasecmp(s, op_names[i])) {
            *op = (crux_op_t)i;
            return 0;
        }
    }
    return -1;
}

static const char *codec_name(crux_codec_t c)
{
    static const char *names[] = { "none", "cltk", "gtopk", "topk", "sketch", "qsgd" };
    return (unsigned)c < sizeof(names) / sizeof(names[0]) ? names[c] : "?";
}

static int parse_codec(const char *s, struct opts *o)
{
    static const struct {
        const char *name;
        crux_codec_t codec;
    } codecs[] = { { "cltk", CRUX_CODEC_CLTK }, { "gtopk", CRUX_CODEC_GTOPK },
                   { "sketch", CRUX_CODEC_SKETCH }, { "topk", CRUX_CODEC_TOPK },
                   { "qsgd", CRUX_CODEC_QSGD } };
    for (size_t i = 0; i < sizeof(codecs) / sizeof(codecs[0]); i++)
        if (!strcasecmp(s, codecs[i].name)) {
            crux_compress_config_init(&o->ccfg, codecs[i].codec);
            return 0;
        }
    return -1;
}

static int parse_double(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end)
        return -1;
    *out = v;
    return 0;
}

/* A byte count with an optional binary K/M/G suffix; "" leaves *out alone. */
static int parse_bytes(const char *s, size_t *out)
{
    char *end;
    unsigned long long v;
    if (*s == '\0')
        return 0;
    if (*s == '-')
        return -1;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || end == s)
        return -1;
    switch (*end) {
    case 'k': case 'K': v <<= 10; end++; break;
    case 'm': case 'M': v <<= 20; end++; break;
    case 'g': case 'G': v <<= 30; end++; break;
    default: break;
    }
    if (*end != '\0')
        return -1;
    *out = (size_t)v;
    return 0;
}

/* -m MAX, -m MIN:MAX, -m MIN:, -m :MAX (OMB syntax). */
static int parse_sizes(char *s, struct opts *o)
{
    char *colon = strchr(s, ':');
    if (!colon)
        return parse_bytes(s, &o->max_size);
    *colon = '\0';
    if (parse_bytes(s, &o->min_size) || parse_bytes(colon + 1, &o->max_size))
        return -1;
    return o->min_size > 0 ? 0 : -1;
}

static int parse_int(const char *s, int min, int *out)
{
    char *end;
    long v;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || end == s || *end != '\0' || v < min || v > 1000000000L)
        return -1;
    *out = (int)v;
    return 0;
}

static void usage(const char *prog)
{
    printf("Usage: %s [options]\n"
           "Options:\n"
           "  -m, --message-size [MIN:]MAX  sizes in bytes, K/M/G suffixes ok (default %lu:%lu)\n"
           "  -i, --iterations N            timed iterations, all sizes (default %d up to %lu B, %d above)\n"
           "  -x, --warmup N                warm-up iterations, all sizes (default %d / %d)\n"
           "  -f, --full                    min/max over ranks of the per-rank mean, iterations\n"
           "  -c, --validation              check every element of every result (Pass/Fail column)\n"
           "  -u, --validation-warmup N     untimed allreduces per iteration with -c (default %d)\n"
           "  -T, --type LIST               float|double|int|int32|int64|uint8|float16|bfloat16,\n"
           "                                comma separated, mpi_ prefix ok (default float); -d = -T\n"
           "  -o, --op OP                   sum|prod|max|min (default sum)\n"
           "  -l, --in-place                sendbuf = CRUX_IN_PLACE\n"
           "  -b, --busbw                   add algbw and busbw = algbw*2(n-1)/n columns (GB/s)\n"
           "      --codec cltk|gtopk|sketch|topk|qsgd time crux_compressed_allreduce (float) instead\n"
           "      --density D               kept fraction for --codec (default 0.001)\n"
           "      --beta B                  low-pass beta for cltk (default 1 = residual), momentum for topk (0.9)\n"
           "      --levels S                qsgd levels (default 7: 4-bit codes)\n"
           "      --sketch-rows R, --sketch-cols C  sketch shape (default derived)\n"
           "      --add                     time crux_compressed_allreduce_add (out += estimate)\n"
           "  -v, --version                 print the version\n"
           "  -h, --help                    this help\n",
           prog, MIN_MESSAGE_SIZE, MAX_MSG_SIZE_COLL, COLL_LOOP_SMALL, LARGE_MESSAGE_SIZE,
           COLL_LOOP_LARGE, COLL_SKIP_SMALL, COLL_SKIP_LARGE, VALIDATION_SKIP_DEFAULT);
}

static void print_bad_usage(const struct opts *o)
{
    if (o->bad_opt > 0 && o->bad_opt < 128)
        fprintf(stderr, "Invalid option or argument [-%c%s%s]\n\n", o->bad_opt,
                o->bad_arg ? " " : "", o->bad_arg ? o->bad_arg : "");
    else if (o->bad_arg)
        fprintf(stderr, "Invalid option or argument [%s]\n\n", o->bad_arg);
    else
        fprintf(stderr, "Invalid option or argument\n\n");
    fflush(stderr);
}

static enum parse_result parse_options(int argc, char **argv, struct opts *o)
{
    static const struct option longopts[] = {
        { "message-size", required_argument, NULL, 'm' },
        { "iterations", required_argument, NULL, 'i' },
        { "warmup", required_argument, NULL, 'x' },
        { "full", no_argument, NULL, 'f' },
        { "validation", no_argument, NULL, 'c' },
        { "validation-warmup", required_argument, NULL, 'u' },
        { "type", required_argument, NULL, 'T' },
        { "op", required_argument, NULL, 'o' },
        { "in-place", no_argument, NULL, 'l' },
        { "busbw", no_argument, NULL, 'b' },
        { "codec", required_argument, NULL, 1001 },
        { "density", required_argument, NULL, 1002 },
        { "beta", required_argument, NULL, 1003 },
        { "levels", required_argument, NULL, 1006 },
        { "sketch-rows", required_argument, NULL, 1004 },
        { "sketch-cols", required_argument, NULL, 1005 },
        { "add", no_argument, NULL, 1007 },
        { "version", no_argument, NULL, 'v' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int c;

    *o = (struct opts){ .min_size = MIN_MESSAGE_SIZE, .max_size = MAX_MSG_SIZE_COLL,
                        .iters = COLL_LOOP_SMALL, .skip = COLL_SKIP_SMALL,
                        .iters_large = COLL_LOOP_LARGE, .skip_large = COLL_SKIP_LARGE,
                        .warmup_validation = VALIDATION_SKIP_DEFAULT, .op = CRUX_SUM,
                        .dtypes = { CRUX_FLOAT }, .ndtypes = 1, .density = 0.001,
                        .beta = -1.0f /* codec default */ };
    opterr = 0;
    while ((c = getopt_long(argc, argv, "+m:i:x:fcu:T:d:o:lbvh", longopts, NULL)) != -1) {
        o->bad_opt = c == '?' || c == ':' ? optopt : c;
        o->bad_arg = c == '?' && optopt == 0 ? argv[optind - 1] : optarg; /* unknown --long */
        switch (c) {
        case 'm':
            if (parse_sizes(optarg, o))
                return PARSE_BAD;
            break;
        case 'i':
            if (parse_int(optarg, 1, &o->iters))
                return PARSE_BAD;
            o->iters_large = o->iters;
            break;
        case 'x':
            if (parse_int(optarg, 0, &o->skip))
                return PARSE_BAD;
            o->skip_large = o->skip;
            break;
        case 'u':
            if (parse_int(optarg, 0, &o->warmup_validation))
                return PARSE_BAD;
            break;
        case 'f': o->full = 1; break;
        case 'c': o->validate = 1; break;
        case 'l': o->in_place = 1; break;
        case 'b': o->busbw = 1; break;
        case 'T':
        case 'd':
            if (parse_dtype_list(optarg, o))
                return PARSE_BAD;
            break;
        case 'o':
            if (parse_op(optarg, &o->op))
                return PARSE_BAD;
            break;
        case 1001:
            if (parse_codec(optarg, o))
                return PARSE_BAD;
            break;
        case 1002:
            if (parse_double(optarg, &o->density))
                return PARSE_BAD;
            break;
        case 1003: {
            double b;
            if (parse_double(optarg, &b))
                return PARSE_BAD;
            o->beta = (float)b;
            break;
        }
        case 1006:
            if (parse_int(optarg, 1, &o->qsgd_levels))
                return PARSE_BAD;
            break;
        case 1004:
            if (parse_int(optarg, 0, &o->sketch_rows))
                return PARSE_BAD;
            break;
        case 1005:
            if (parse_int(optarg, 0, &o->sketch_cols))
                return PARSE_BAD;
            break;
        case 1007:
            o->add = 1;
            break;
        case 'v': return PARSE_VERSION;
        case 'h': return PARSE_HELP;
        default: return PARSE_BAD;
        }
    }
    o->bad_opt = 'm';
    o->bad_arg = NULL;
    if (optind < argc) {
        o->bad_opt = 0;
        o->bad_arg = argv[optind];
        return PARSE_BAD;
    }
    if (o->add && o->ccfg.codec == CRUX_CODEC_NONE) {
        o->bad_opt = 0;
        o->bad_arg = "--add needs --codec";
        return PARSE_BAD;
    }
    if (o->ccfg.codec != CRUX_CODEC_NONE) {
        /* Compressed runs are float and their output is an estimate: no -c/-o/-l/-T. */
        if (o->validate || o->op != CRUX_SUM || o->in_place || o->ndtypes != 1 ||
            o->dtypes[0] != CRUX_FLOAT) {
            o->bad_opt = 0;
            o->bad_arg = "--codec takes neither -c, -o, -l nor a -T other than float";
            return PARSE_BAD;
        }
        o->ccfg.density = o->density;
        if (o->beta >= 0.0f)
            o->ccfg.beta = o->beta;
        if (o->qsgd_levels)
            o->ccfg.qsgd_levels = o->qsgd_levels;
        o->ccfg.sketch_rows = o->sketch_rows;
        o->ccfg.sketch_cols = o->sketch_cols;
    }
    return o->max_size < o->min_size ? PARSE_BAD : PARSE_OK;
}

/* -------------------------------------------------- validation pattern -c */

/*
 * Every value is a small non-negative integer and so is every partial result,
 * so the reduction is exact in every dtype whatever the combine order:
 *   sum/max/min: v = (i + it) % A + rank % B, A and B chosen so that
 *                P*(A-1) + sum_r (r % B) <= the largest exactly held integer;
 *   prod:        v = 1 + (i + it) % 16 on rank (i + it) % P, 1 elsewhere.
 */
struct pattern {
    crux_op_t op;
    int nranks, rank;
    long a, b, rank_sum, rank_max;
};

static long exact_limit(crux_datatype_t dt)
{
    switch (dt) {
    case CRUX_UINT8: return 255;
    case CRUX_BFLOAT16: return 256;
    case CRUX_FLOAT16: return 2048;
    case CRUX_FLOAT: return 1L << 24;
    default: return 1L << 30;
    }
}

static long rank_mod_sum(long nranks, long b)
{
    long full = nranks / b, rem = nranks % b;
    return full * (b * (b - 1) / 2) + rem * (rem - 1) / 2;
}

static void pattern_init(struct pattern *p, crux_datatype_t dt, crux_op_t op, int nranks, int rank)
{
    long lim = exact_limit(dt), b;
    *p = (struct pattern){ .op = op, .nranks = nranks, .rank = rank, .a = 1, .b = 1 };
    /* widest rank spread first, as long as the element part keeps >= 2 values */
    for (b = nranks; b >= 1; b--) {
        long s = rank_mod_sum(nranks, b);
        if (s <= lim && (lim - s) / nranks >= 1) {
            p->b = b;
            break;
        }
    }
    if (b < 1)
        p->b = 1;
    p->rank_sum = rank_mod_sum(nranks, p->b);
    p->a = (lim - p->rank_sum) / nranks + 1;
    if (p->a > PATTERN_PERIOD)
        p->a = PATTERN_PERIOD;
    if (p->a < 1)
        p->a = 1;
    p->rank_max = (p->b < nranks ? p->b : nranks) - 1;
}

static long pattern_value(const struct pattern *p, size_t i, int it)
{
    size_t k = i + (size_t)it;
    if (p->op == CRUX_PROD)
        return (long)(k % (size_t)p->nranks) == p->rank ? 1 + (long)(k % 16) : 1;
    return (long)(k % (size_t)p->a) + p->rank % p->b;
}

static long pattern_expected(const struct pattern *p, size_t i, int it)
{
    size_t k = i + (size_t)it;
    long e = (long)(k % (size_t)p->a);
    switch (p->op) {
    case CRUX_SUM: return p->nranks * e + p->rank_sum;
    case CRUX_PROD: return 1 + (long)(k % 16);
    case CRUX_MAX: return e + p->rank_max;
    default: return e;
    }
}

/* Exact for the small non-negative integers the pattern uses (< 2^11). */
static uint16_t half_from_int(long v)
{
    int e;
    if (v == 0)
        return 0;
    e = 63 - __builtin_clzl((unsigned long)v);
    return (uint16_t)(((e + 15) << 10) | ((e <= 10 ? v << (10 - e) : v >> (e - 10)) & 0x3ff));
}

/* Exact for integers with at most 8 significant bits. */
static uint16_t bfloat16_from_int(long v)
{
    float f = (float)v;
    uint32_t bits;
    memcpy(&bits, &f, sizeof(bits));
    return (uint16_t)(bits >> 16);
}

static void encode(crux_datatype_t dt, long v, void *dst)
{
    switch (dt) {
    case CRUX_FLOAT: { float x = (float)v; memcpy(dst, &x, sizeof(x)); break; }
    case CRUX_DOUBLE: { double x = (double)v; memcpy(dst, &x, sizeof(x)); break; }
    case CRUX_INT32: { int32_t x = (int32_t)v; memcpy(dst, &x, sizeof(x)); break; }
    case CRUX_INT64: { int64_t x = v; memcpy(dst, &x, sizeof(x)); break; }
    case CRUX_UINT8: *(uint8_t *)dst = (uint8_t)v; break;
    case CRUX_FLOAT16: { uint16_t x = half_from_int(v); memcpy(dst, &x, sizeof(x)); break; }
    case CRUX_BFLOAT16: { uint16_t x = bfloat16_from_int(v); memcpy(dst, &x, sizeof(x)); break; }
    }
}

static void fill_pattern(const struct pattern *p, void *buf, size_t count, crux_datatype_t dt,
                         int it)
{
    size_t esz = crux_datatype_size(dt);
    for (size_t i = 0; i < count; i++)
        encode(dt, pattern_value(p, i, it), (char *)buf + i * esz);
}

/* Bit-exact comparison; returns the number of wrong elements. */
static long check_pattern(const struct pattern *p, const void *buf, size_t count,
                          crux_datatype_t dt, int it)
{
    size_t esz = crux_datatype_size(dt);
    unsigned char want[8];
    long errors = 0;
    for (size_t i = 0; i < count; i++) {
        encode(dt, pattern_expected(p, i, it), want);
        if (memcmp(want, (const char *)buf + i * esz, esz) != 0)
            errors++;
    }
    return errors;
}

/* ------------------------------------------------------------ benchmark */

struct bench {
    struct opts o;
    crux_comm_t comm;
    int rank, nranks;
    char *sendbuf, *recvbuf, *recvbuf_warmup;
};

/* A failed crux call ends the whole job: after an error the communicator may
 * only be freed, and the other ranks would otherwise wait for CRUX_TIMEOUT. */
static void check_crux(const struct bench *b, int rc, const char *call, size_t size)
{
    if (rc == CRUX_SUCCESS)
        return;
    fprintf(stderr, "crux_osu_allreduce: rank %d: %s failed at size %zu: %s (%d)\n", b->rank,
            call, size, crux_error_string(rc), rc);
    fflush(stderr);
    crux_abort(b->comm, EXIT_FAILURE);
    exit(EXIT_FAILURE);
}

static void print_header(const struct bench *b, crux_datatype_t dt)
{
    const struct opts *o = &b->o;
    printf("# Datatype: %s.\n", dtype_label(dt));
    if (o->op != CRUX_SUM)
        printf("# Op: %s.\n", op_labels[o->op]);
    if (o->in_place)
        printf("# In-place: CRUX_IN_PLACE.\n");
    printf("%-*s%*s", 10, "# Size", FIELD_WIDTH, "Avg Latency(us)");
    if (o->full)
        printf("%*s%*s%*s", FIELD_WIDTH, "Min Latency(us)", FIELD_WIDTH, "Max Latency(us)", 12,
               "Iterations");
    if (o->validate)
        printf("%*s", FIELD_WIDTH, "Validation");
    if (o->busbw)
        printf("%*s%*s", FIELD_WIDTH, "Algbw(GB/s)", FIELD_WIDTH, "Busbw(GB/s)");
    if (o->ccfg.codec != CRUX_CODEC_NONE) {
        printf("%*s%*s%*s%*s", FIELD_WIDTH, "Encode(us)", FIELD_WIDTH, "Comm(us)", FIELD_WIDTH,
               "Decode(us)", FIELD_WIDTH, "Wire(B)");
        if (o->busbw)
            printf("%*s", FIELD_WIDTH, "WireBW(GB/s)");
    }
    printf("\n");
    fflush(stdout);
}

static void print_row(const struct bench *b, size_t size, double avg, double mn, double mx,
                      int iters, long errors)
{
    const struct opts *o = &b->o;
    printf("%-*zu%*.*f", 10, size, FIELD_WIDTH, FLOAT_PRECISION, avg);
    if (o->full)
        printf("%*.*f%*.*f%*lu", FIELD_WIDTH, FLOAT_PRECISION, mn, FIELD_WIDTH,
               FLOAT_PRECISION, mx, 12, (unsigned long)iters);
    if (o->validate)
        printf("%*s", FIELD_WIDTH, errors > 0 ? "Fail" : "Pass");
    if (o->busbw) {
        double algbw = avg > 0.0 ? (double)size / (avg * 1e-6) / 1e9 : 0.0;
        double busbw = algbw * 2.0 * (b->nranks - 1) / b->nranks;
        printf("%*.*f%*.*f", FIELD_WIDTH, FLOAT_PRECISION, algbw, FIELD_WIDTH, FLOAT_PRECISION,
               busbw);
    }
    printf("\n");
    fflush(stdout);
}

/* The untimed part of a -c iteration: fresh inputs, OMB's extra allreduces. */
static void prepare_validation(struct bench *b, const struct pattern *p, size_t size,
                               size_t count, crux_datatype_t dt, int it)
{
    const struct opts *o = &b->o;
    fill_pattern(p, b->sendbuf, count, dt, it);
    if (o->in_place)
        fill_pattern(p, b->recvbuf, count, dt, it);
    else
        memset(b->recvbuf, 0, size);
    for (int j = 0; j < o->warmup_validation; j++) {
        check_crux(b, crux_barrier(b->comm), "crux_barrier", size);
        check_crux(b, crux_allreduce(b->sendbuf, b->recvbuf_warmup, count, dt, o->op, b->comm),
                   "crux_allreduce (validation warm-up)", size);
    }
    check_crux(b, crux_barrier(b->comm), "crux_barrier", size);
}

/* Heavy-tailed pseudo-random gradient, different on every rank. */
static void fill_gradient(float *g, size_t count, int rank)
{
    uint64_t x = 0x9e3779b97f4a7c15ull * (uint64_t)(rank + 1);
    for (size_t i = 0; i < count; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        double u = (double)((x >> 11) + 1) / 9007199254740993.0; /* (0, 1] */
        float mag = (float)(1e-3 / (u * u + 1e-6));              /* a few large entries */
        g[i] = (x & 1) ? mag : -mag;
    }
}

static double mean_over_ranks(struct bench *b, double v, size_t size)
{
    double sum = 0;
    check_crux(b, crux_allreduce(&v, &sum, 1, CRUX_DOUBLE, CRUX_SUM, b->comm),
               "crux_allreduce (stats)", size);
    return sum / b->nranks;
}

/* One row of crux_compressed_allreduce timings and its compressor stats. */
static long run_size_codec(struct bench *b, size_t size)
{
    const struct opts *o = &b->o;
    size_t count = size / sizeof(float);
    int large = size > LARGE_MESSAGE_SIZE;
    int iters = large ? o->iters_large : o->iters, skip = large ? o->skip_large : o->skip;
    double timer = 0, enc = 0, comm = 0, dec = 0, wire = 0, mn, mx;
    crux_compressor_t c;
    crux_compress_stats_t st;

    fill_gradient((float *)b->sendbuf, count, b->rank);
    check_crux(b, crux_compressor_create(b->comm, count, &o->ccfg, &c), "crux_compressor_create", size);
    check_crux(b, crux_barrier(b->comm), "crux_barrier", size);
    for (int it = 0; it < iters + skip; it++) {
        double t0 = crux_wtime();
        int rc = o->add ? crux_compressed_allreduce_add(c, (const float *)b->sendbuf, (float *)b->recvbuf)
                        : crux_compressed_allreduce(c, (const float *)b->sendbuf, (float *)b->recvbuf);
        check_crux(b, rc, o->add ? "crux_compressed_allreduce_add" : "crux_compressed_allreduce", size);
        double t1 = crux_wtime();
        check_crux(b, crux_barrier(b->comm), "crux_barrier", size);
        if (it < skip)
            continue;
        check_crux(b, crux_compressor_stats(c, &st), "crux_compressor_stats", size);
        timer += t1 - t0;
        enc += st.encode_s, comm += st.comm_s, dec += st.decode_s, wire += (double)st.wire_bytes;
    }
    check_crux(b, crux_compressor_free(&c), "crux_compressor_free", size);
    double latency = timer * 1e6 / iters;
    check_crux(b, crux_allreduce(&latency, &mn, 1, CRUX_DOUBLE, CRUX_MIN, b->comm),
               "crux_allreduce (min latency)", size);
    check_crux(b, crux_allreduce(&latency, &mx, 1, CRUX_DOUBLE, CRUX_MAX, b->comm),
               "crux_allreduce (max latency)", size);
    double avg = mean_over_ranks(b, latency, size);
    enc = mean_over_ranks(b, enc * 1e6 / iters, size);
    comm = mean_over_ranks(b, comm * 1e6 / iters, size);
    dec = mean_over_ranks(b, dec * 1e6 / iters, size);
    wire = mean_over_ranks(b, wire / iters, size);
    if (b->rank == 0) {
        printf("%-*zu%*.*f", 10, size, FIELD_WIDTH, FLOAT_PRECISION, avg);
        if (o->full)
            printf("%*.*f%*.*f%*lu", FIELD_WIDTH, FLOAT_PRECISION, mn, FIELD_WIDTH,
                   FLOAT_PRECISION, mx, 12, (unsigned long)iters);
        double secs = avg * 1e-6;
        if (o->busbw) {
            double algbw = secs > 0 ? (double)size / secs / 1e9 : 0.0;
            printf("%*.*f%*.*f", FIELD_WIDTH, FLOAT_PRECISION, algbw, FIELD_WIDTH, FLOAT_PRECISION,
                   algbw * 2.0 * (b->nranks - 1) / b->nranks);
        }
        printf("%*.*f%*.*f%*.*f%*.0f", FIELD_WIDTH, FLOAT_PRECISION, enc, FIELD_WIDTH,
               FLOAT_PRECISION, comm, FIELD_WIDTH, FLOAT_PRECISION, dec, FIELD_WIDTH, wire);
        if (o->busbw)
            printf("%*.*f", FIELD_WIDTH, 3, secs > 0 ? wire / secs / 1e9 : 0.0);
        printf("\n");
        fflush(stdout);
    }
    check_crux(b, crux_barrier(b->comm), "crux_barrier", size);
    return 0;
}

/* One row: returns this size's wrong-element count summed over all ranks. */
static long run_size(struct bench *b, crux_datatype_t dt, size_t size)
{
    const struct opts *o = &b->o;
    size_t count = size / crux_datatype_size(dt);
    int large = size > LARGE_MESSAGE_SIZE;
    int iters = large ? o->iters_large : o->iters, skip = large ? o->skip_large : o->skip;
    const void *src = o->in_place ? CRUX_IN_PLACE : b->sendbuf;
    double timer = 0.0, latency, mn, mx, sum;
    int64_t errors = 0, total = 0;
    struct pattern p;

    if (o->ccfg.codec != CRUX_CODEC_NONE)
        return run_size_codec(b, size);
    pattern_init(&p, dt, o->op, b->nranks, b->rank);
    check_crux(b, crux_barrier(b->comm), "crux_barrier", size);
    for (int it = 0; it < iters + skip; it++) {
        double t0, t1;
        if (o->validate)
            prepare_validation(b, &p, size, count, dt, it);
        t0 = crux_wtime();
        check_crux(b, crux_allreduce(src, b->recvbuf, count, dt, o->op, b->comm),
                   "crux_allreduce", size);
        t1 = crux_wtime();
        check_crux(b, crux_barrier(b->comm), "crux_barrier", size);
        if (o->validate)
            errors += check_pattern(&p, b->recvbuf, count, dt, it);
        if (it >= skip)
            timer += t1 - t0;
    }
    latency = timer * 1e6 / iters;
    check_crux(b, crux_allreduce(&latency, &mn, 1, CRUX_DOUBLE, CRUX_MIN, b->comm),
               "crux_allreduce (min latency)", size);
    check_crux(b, crux_allreduce(&latency, &mx, 1, CRUX_DOUBLE, CRUX_MAX, b->comm),
               "crux_allreduce (max latency)", size);
    check_crux(b, crux_allreduce(&latency, &sum, 1, CRUX_DOUBLE, CRUX_SUM, b->comm),
               "crux_allreduce (avg latency)", size);
    if (o->validate)
        check_crux(b, crux_allreduce(&errors, &total, 1, CRUX_INT64, CRUX_SUM, b->comm),
                   "crux_allreduce (error count)", size);
    if (b->rank == 0)
        print_row(b, size, sum / b->nranks, mn, mx, iters, (long)total);
    check_crux(b, crux_barrier(b->comm), "crux_barrier", size);
    return (long)total;
}

/* Returns the size that failed validation, or 0. */
static size_t run_dtype(struct bench *b, crux_datatype_t dt)
{
    const struct opts *o = &b->o;
    if (b->rank == 0)
        print_header(b, dt);
    for (size_t size = o->min_size; size <= o->max_size; size *= 2) {
        if (size / crux_datatype_size(dt) > 0 && run_size(b, dt, size) != 0)
            return size;
        if (size > o->max_size / 2)
            break; /* size *= 2 would overflow */
    }
    return 0;
}

static int alloc_buffers(struct bench *b)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE), bytes = b->o.max_size ? b->o.max_size : 1;
    if (posix_memalign((void **)&b->sendbuf, page, bytes) ||
        posix_memalign((void **)&b->recvbuf, page, bytes) ||
        posix_memalign((void **)&b->recvbuf_warmup, page, bytes)) {
        fprintf(stderr, "crux_osu_allreduce: rank %d: cannot allocate 3 x %zu bytes\n", b->rank,
                bytes);
        return -1;
    }
    /* touch every page once, before any timing (OMB set_buffer) */
    memset(b->sendbuf, 1, bytes);
    memset(b->recvbuf, 0, bytes);
    memset(b->recvbuf_warmup, 0, bytes);
    return 0;
}

int main(int argc, char **argv)
{
    struct bench b = { 0 };
    enum parse_result pr;
    size_t failed_size = 0;
    int rc;

    rc = crux_init(&argc, &argv);
    if (rc != CRUX_SUCCESS) {
        fprintf(stderr, "crux_osu_allreduce: crux_init failed: %s (%d)\n", crux_error_string(rc),
                rc);
        return EXIT_FAILURE;
    }
    b.comm = CRUX_COMM_WORLD;
    check_crux(&b, crux_comm_rank(b.comm, &b.rank), "crux_comm_rank", 0);
    check_crux(&b, crux_comm_size(b.comm, &b.nranks), "crux_comm_size", 0);
    pr = parse_options(argc, argv, &b.o);

    if (pr != PARSE_OK) {
        if (b.rank == 0) {
            if (pr == PARSE_BAD)
                print_bad_usage(&b.o);
            if (pr == PARSE_VERSION)
                printf("# crux OSU-compatible Allreduce Latency Test v%s\n", CRUX_VERSION_STRING);
            else
                usage(argv[0]);
        }
        crux_finalize();
        return pr == PARSE_BAD ? EXIT_FAILURE : EXIT_SUCCESS;
    }
    if (alloc_buffers(&b)) {
        crux_abort(b.comm, EXIT_FAILURE);
        return EXIT_FAILURE;
    }
    if (b.rank == 0)
        printf("\n# crux OSU-compatible Allreduce Latency Test v%s\n", CRUX_VERSION_STRING);
    if (b.rank == 0 && b.o.ccfg.codec != CRUX_CODEC_NONE)
        printf("# Compressed: codec %s, density %g, beta %g%s\n",
               codec_name(b.o.ccfg.codec),
               b.o.density, (double)b.o.ccfg.beta, b.o.add ? ", out += estimate (--add)" : "");
    for (int d = 0; d < b.o.ndtypes && failed_size == 0; d++)
        failed_size = run_dtype(&b, b.o.dtypes[d]);

    free(b.sendbuf);
    free(b.recvbuf);
    free(b.recvbuf_warmup);
    rc = crux_finalize();
    if (rc != CRUX_SUCCESS) {
        fprintf(stderr, "crux_osu_allreduce: rank %d: crux_finalize failed: %s (%d)\n", b.rank,
                crux_error_string(rc), rc);
        return EXIT_FAILURE;
    }
    if (failed_size != 0) {
        if (b.rank == 0)
            printf("DATA VALIDATION ERROR: %s exited with status %d on message size %zu.\n",
                   argv[0], EXIT_FAILURE, failed_size);
        return EXIT_FAILURE;
    }
    return EXIT_SUCCESS;
}
