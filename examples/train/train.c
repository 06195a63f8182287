/* train.c - crux-train: data-parallel SGD on Fashion-MNIST.
 *
 *   crux-run -n 2 crux-train --model mlp --epochs 5 --csv mlp.csv
 *
 * Every rank holds the whole model. Each epoch the training set is shuffled with
 * the same seed on every rank; step s uses samples perm[s*B .. s*B+B) and rank r
 * takes those at positions r, r+P, ... (B/P each), so P ranks see exactly the
 * batch one rank would. The mean gradient of the rank's share goes through the
 * exchange (sum over ranks, divided by P), then SGD with momentum updates the
 * weights identically on every rank. One thread per rank. */
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <crux.h>

#include "data.h"
#include "exchange.h"
#include "model.h"
#include "rng.h"
#include "sgemm.h"

#define EVAL_BATCH 500

enum schedule { SCHED_CONST, SCHED_STEP, SCHED_COSINE };

struct opts {
    enum model_kind model;
    struct exchange_opts ex;
    int epochs;
    size_t batch, limit;
    double lr, momentum, weight_decay;
    enum schedule schedule;
    uint64_t seed;
    const char *csv, *data;
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: crux-train [options]      (run under crux-run -n P, srun, ... for P ranks)\n"
            "  --model mlp|cnn        network: 784-512-256-10 MLP or LeNet-5 style CNN (mlp)\n"
            "  --epochs N             passes over the training set (5)\n"
            "  --batch B              global batch, split evenly over the ranks (128)\n"
            "  --lr X                 base learning rate (0.05)\n"
            "  --momentum X           SGD momentum (0.9)\n"
            "  --weight-decay X       L2 penalty added to the gradient (0)\n"
            "  --schedule const|step|cosine  learning rate: fixed, x0.1 at 1/2 and 3/4 of the\n"
            "                         epochs, or cosine decay per step to 0 (cosine)\n"
            "  --seed N               weights, shuffles and codec seeds (1)\n"
            "  --codec none|cltk|gtopk|topk|sketch|qsgd  gradient exchange (none = dense)\n"
            "  --memory none|residual|lowpass|momentum   error feedback (codec default)\n"
            "  --density X            kept fraction for top-k codecs (codec default)\n"
            "  --beta X               low-pass coefficient, or DGC momentum (codec default;\n"
            "                         DGC: --momentum, and SGD then runs without its own)\n"
            "  --sketch-rows N, --sketch-cols N  Count Sketch shape (codec default)\n"
            "  --qsgd-levels N        QSGD quantisation levels (codec default)\n"
            "  --warmup-epochs E      DGC density warm-up (cltk|gtopk|topk): 0.25, 0.0625, ...\n"
            "                         (x1/4 per epoch, not below --density) in the first E\n"
            "                         epochs, then --density (0 = off)\n"
            "  --clip NORM            DGC local gradient clipping (topk): each rank's gradient\n"
            "                         scaled to L2 norm <= NORM/sqrt(P) (0 = off)\n"
            "  --data DIR             Fashion-MNIST IDX files (%s)\n"
            "  --limit N              use only the first N training samples\n"
            "  --csv FILE             per epoch: epoch,train_loss,test_acc,epoch_s,wall_s,\n"
            "                         dense_bytes,wire_bytes,cpu_s (rank 0 writes it; dense_bytes =\n"
            "                         a dense ring allreduce's bytes per rank, 2(P-1)/P * count * 4)\n"
            "  --help\n",
            DATA_DEFAULT_DIR);
}

static int parse_double(const char *flag, const char *s, double lo, double *out)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !isfinite(v) || v < lo) {
        fprintf(stderr, "crux-train: %s %s: want a number >= %g\n", flag, s, lo);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_long(const char *flag, const char *s, long long lo, long long *out)
{
    char *end;
    long long v = strtoll(s, &end, 0);
    if (end == s || *end || v < lo) {
        fprintf(stderr, "crux-train: %s %s: want an integer >= %lld\n", flag, s, lo);
        return -1;
    }
    *out = v;
    return 0;
}

/* The warm-up changes a top-k density; clipping is DGC's alone (the library
 * refuses it for other codecs, say so before starting). */
static int check_dgc_flags(const struct opts *o)
{
    const char *c = o->ex.codec;
    if (o->ex.warmup_epochs > 0 && strcmp(c, "cltk") && strcmp(c, "gtopk") && strcmp(c, "topk")) {
        fprintf(stderr, "crux-train: --warmup-epochs %d: codec %s has no density to warm up (want "
                "cltk|gtopk|topk)\n", o->ex.warmup_epochs, c);
        return -1;
    }
    if (o->ex.clip > 0 && strcmp(c, "topk")) {
        fprintf(stderr, "crux-train: --clip %g: local gradient clipping is DGC's, want --codec topk\n",
                o->ex.clip);
        return -1;
    }
    return 0;
}

enum { O_MODEL = 256, O_CODEC, O_MEMORY, O_DENSITY, O_BETA, O_SROWS, O_SCOLS, O_QLEVELS, O_EPOCHS,
       O_BATCH, O_LR, O_MOMENTUM, O_WD, O_SCHED, O_SEED, O_CSV, O_DATA, O_LIMIT, O_WARMUP, O_CLIP, O_HELP };

/* Returns 0 to run, 1 after --help, -1 on a bad flag (message printed). */
static int parse_args(int argc, char **argv, struct opts *o)
{
    static const struct option longopts[] = {
        { "model", 1, 0, O_MODEL },       { "codec", 1, 0, O_CODEC },       { "memory", 1, 0, O_MEMORY },
        { "density", 1, 0, O_DENSITY },   { "beta", 1, 0, O_BETA },         { "sketch-rows", 1, 0, O_SROWS },
        { "sketch-cols", 1, 0, O_SCOLS }, { "qsgd-levels", 1, 0, O_QLEVELS }, { "epochs", 1, 0, O_EPOCHS },
        { "batch", 1, 0, O_BATCH },       { "lr", 1, 0, O_LR },             { "momentum", 1, 0, O_MOMENTUM },
        { "weight-decay", 1, 0, O_WD },   { "schedule", 1, 0, O_SCHED },    { "seed", 1, 0, O_SEED },
        { "csv", 1, 0, O_CSV },           { "data", 1, 0, O_DATA },         { "limit", 1, 0, O_LIMIT },
        { "warmup-epochs", 1, 0, O_WARMUP }, { "clip", 1, 0, O_CLIP },  { "help", 0, 0, O_HELP },
        { 0, 0, 0, 0 },
    };
    *o = (struct opts){ .model = MODEL_MLP, .epochs = 5, .batch = 128, .lr = 0.05, .momentum = 0.9,
                        .schedule = SCHED_COSINE, .seed = 1, .data = DATA_DEFAULT_DIR };
    o->ex = (struct exchange_opts){ .codec = "none", .density = -1, .beta = -1, .sketch_rows = -1,
                                    .sketch_cols = -1, .qsgd_levels = -1 };
    int c;
    long long n;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        const char *flag = optind > 0 && optind <= argc ? argv[optind - 1] : "?";
        int bad = 0;
        switch (c) {
        case O_MODEL:
            if (strcmp(optarg, "mlp") == 0)
                o->model = MODEL_MLP;
            else if (strcmp(optarg, "cnn") == 0)
                o->model = MODEL_CNN;
            else
                bad = fprintf(stderr, "crux-train: --model %s: want mlp or cnn\n", optarg);
            break;
        case O_CODEC: o->ex.codec = optarg; break;
        case O_MEMORY: o->ex.memory = optarg; break;
        case O_DENSITY: bad = parse_double("--density", optarg, 0, &o->ex.density); break;
        case O_BETA: bad = parse_double("--beta", optarg, 0, &o->ex.beta); break;
        case O_SROWS: bad = parse_long("--sketch-rows", optarg, 0, &n); o->ex.sketch_rows = (int)n; break;
        case O_SCOLS: bad = parse_long("--sketch-cols", optarg, 0, &n); o->ex.sketch_cols = (int)n; break;
        case O_QLEVELS: bad = parse_long("--qsgd-levels", optarg, 1, &n); o->ex.qsgd_levels = (int)n; break;
        case O_EPOCHS: bad = parse_long("--epochs", optarg, 1, &n); o->epochs = (int)n; break;
        case O_BATCH: bad = parse_long("--batch", optarg, 1, &n); o->batch = (size_t)n; break;
        case O_LR: bad = parse_double("--lr", optarg, 0, &o->lr); break;
        case O_MOMENTUM: bad = parse_double("--momentum", optarg, 0, &o->momentum); break;
        case O_WD: bad = parse_double("--weight-decay", optarg, 0, &o->weight_decay); break;
        case O_SCHED:
            if (strcmp(optarg, "const") == 0)
                o->schedule = SCHED_CONST;
            else if (strcmp(optarg, "step") == 0)
                o->schedule = SCHED_STEP;
            else if (strcmp(optarg, "cosine") == 0)
                o->schedule = SCHED_COSINE;
            else
                bad = fprintf(stderr, "crux-train: --schedule %s: want const, step or cosine\n", optarg);
            break;
        case O_SEED: bad = parse_long("--seed", optarg, 0, &n); o->seed = (uint64_t)n; break;
        case O_CSV: o->csv = optarg; break;
        case O_DATA: o->data = optarg; break;
        case O_LIMIT: bad = parse_long("--limit", optarg, 1, &n); o->limit = (size_t)n; break;
        case O_WARMUP: bad = parse_long("--warmup-epochs", optarg, 0, &n); o->ex.warmup_epochs = (int)n; break;
        case O_CLIP: bad = parse_double("--clip", optarg, 0, &o->ex.clip); break;
        case O_HELP: usage(stdout); return 1;
        default:
            fprintf(stderr, "crux-train: unknown or incomplete option %s\n", flag);
            usage(stderr);
            return -1;
        }
        if (bad)
            return -1;
    }
    if (optind < argc) {
        fprintf(stderr, "crux-train: unexpected argument %s\n", argv[optind]);
        return -1;
    }
    if (!exchange_codec_built(o->ex.codec)) {
        fprintf(stderr,
                "crux-train: --codec %s: %s\n", o->ex.codec,
                strcmp(o->ex.codec, "cltk") && strcmp(o->ex.codec, "gtopk") && strcmp(o->ex.codec, "topk") &&
                        strcmp(o->ex.codec, "sketch") && strcmp(o->ex.codec, "qsgd")
                    ? "unknown codec, want none|cltk|gtopk|topk|sketch|qsgd"
                    : "codec not built: this crux-train was built without the compression API "
                      "(CRUX_HAVE_COMPRESS), only --codec none is available");
        return -1;
    }
    if (check_dgc_flags(o) != 0)
        return -1;
    o->ex.seed = o->seed;
    o->ex.momentum = o->momentum;
    return 0;
}

static double learning_rate(const struct opts *o, int epoch, size_t step, size_t steps)
{
    switch (o->schedule) {
    case SCHED_STEP: /* x0.1 from half-way, x0.01 from three quarters */
        if (o->epochs >= 4 && 4 * epoch >= 3 * o->epochs)
            return o->lr * 0.01;
        if (o->epochs >= 2 && 2 * epoch >= o->epochs)
            return o->lr * 0.1;
        return o->lr;
    case SCHED_COSINE: {
        double t = ((double)epoch * (double)steps + (double)step) / ((double)o->epochs * (double)steps);
        return o->lr * 0.5 * (1.0 + cos(M_PI * t));
    }
    default:
        return o->lr;
    }
}

/* Fisher-Yates with a per-epoch stream: every rank derives the same order. */
static void shuffle(size_t *perm, size_t n, uint64_t seed, int epoch)
{
    uint64_t s = seed ^ (0x5851f42d4c957f2dull * (uint64_t)(epoch + 1));
    for (size_t i = 0; i < n; i++)
        perm[i] = i;
    for (size_t i = n - 1; i > 0; i--) {
        size_t j = (size_t)rng_below(&s, i + 1), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

/* w -= lr * v,  v = mu v + g + wd w  (PyTorch's SGD form). */
static void sgd_update(float *w, float *v, const float *g, size_t n, float lr, float mu, float wd)
{
    for (size_t i = 0; i < n; i++) {
        v[i] = mu * v[i] + g[i] + wd * w[i];
        w[i] -= lr * v[i];
    }
}

/* Test accuracy: rank r scores test samples r, r+P, ...; counts summed. */
static int evaluate(struct model *m, const struct dataset *test, int rank, int size, float *xb, uint8_t *yb,
                    double *acc)
{
    int64_t counts[2] = { 0, 0 }; /* correct, seen */
    size_t idx[EVAL_BATCH];
    for (size_t first = (size_t)rank; first < test->n;) {
        size_t n = 0;
        for (; n < EVAL_BATCH && first < test->n; first += (size_t)size)
            idx[n++] = first;
        data_gather(test, idx, 1, n, xb, yb);
        counts[0] += (int64_t)model_count_correct(m, xb, yb, n);
        counts[1] += (int64_t)n;
    }
    int rc = crux_allreduce(CRUX_IN_PLACE, counts, 2, CRUX_INT64, CRUX_SUM, CRUX_COMM_WORLD);
    *acc = counts[1] ? (double)counts[0] / (double)counts[1] : 0.0;
    return rc;
}

/* CPU seconds of this process: on a shared machine the honest compute figure
 * beside wall time. */
static double cpu_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* FNV-1a over the weights' bytes: equal on every rank iff the weights are. */
static uint64_t params_hash(const float *p, size_t n)
{
    const unsigned char *b = (const unsigned char *)p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n * sizeof(float); i++)
        h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

struct run {
    struct opts o;
    int rank, size;
    struct dataset train, test;
    struct model model;
    struct exchange *ex;
    float *velocity, *xb;
    uint8_t *yb;
    size_t *perm;
    FILE *csv;
};

static int run_setup(struct run *r)
{
    char err[4608];
    const struct opts *o = &r->o;
    if (o->batch % (size_t)r->size) {
        if (r->rank == 0)
            fprintf(stderr, "crux-train: --batch %zu is not divisible by the %d ranks\n", o->batch,
                    r->size);
        return CRUX_ERR_ARG;
    }
    if (data_load(o->data, "train", o->limit, &r->train, err, sizeof(err)) != 0 ||
        data_load(o->data, "t10k", 0, &r->test, err, sizeof(err)) != 0) {
        fprintf(stderr, "crux-train: rank %d: %s\n", r->rank, err);
        return CRUX_ERR_ARG;
    }
    if (r->train.n < o->batch) {
        fprintf(stderr, "crux-train: %zu training samples, fewer than one batch of %zu\n", r->train.n, o->batch);
        return CRUX_ERR_ARG;
    }
    size_t local = o->batch / (size_t)r->size, maxb = local > EVAL_BATCH ? local : EVAL_BATCH;
    if (model_create(&r->model, o->model, maxb, o->seed) != 0) {
        fprintf(stderr, "crux-train: out of memory building the %s model\n", model_name(o->model));
        return CRUX_ERR_NOMEM;
    }
    r->velocity = calloc(r->model.nparams, sizeof(float));
    r->xb = malloc(maxb * DATA_PIXELS * sizeof(float));
    r->yb = malloc(maxb);
    r->perm = malloc(r->train.n * sizeof(size_t));
    if (!r->velocity || !r->xb || !r->yb || !r->perm) {
        fprintf(stderr, "crux-train: out of memory\n");
        return CRUX_ERR_NOMEM;
    }
    int rc = exchange_create(CRUX_COMM_WORLD, r->model.nparams, &o->ex, &r->ex, err, sizeof(err));
    if (rc != CRUX_SUCCESS) {
        fprintf(stderr, "crux-train: %s\n", err);
        return rc;
    }
    if (exchange_has_momentum(r->ex) && r->o.momentum != 0.0) {
        /* DGC (Lin et al. 2018, sec. 3.2): momentum is accumulated before
         * sparsification, inside the compressor; a second one would compound it. */
        if (r->rank == 0)
            printf("crux-train: codec memory is momentum (DGC): momentum correction inside the "
                   "compressor (--beta, default --momentum), plain SGD outside\n");
        r->o.momentum = 0.0;
    }
    if (o->csv && r->rank == 0) {
        if (!(r->csv = fopen(o->csv, "w"))) {
            perror(o->csv);
            return CRUX_ERR_ARG;
        }
        fprintf(r->csv, "epoch,train_loss,test_acc,epoch_s,wall_s,dense_bytes,wire_bytes,cpu_s\n");
    }
    return CRUX_SUCCESS;
}

static void run_teardown(struct run *r)
{
    if (r->csv)
        fclose(r->csv);
    exchange_free(r->ex);
    model_free(&r->model);
    free(r->velocity);
    free(r->xb);
    free(r->yb);
    free(r->perm);
    data_free(&r->train);
    data_free(&r->test);
}

/* One epoch of training; *loss gets the mean training loss over all ranks. */
static int train_epoch(struct run *r, int epoch, double *loss)
{
    const struct opts *o = &r->o;
    size_t local = o->batch / (size_t)r->size, steps = r->train.n / o->batch;
    double sum = 0.0;
    int rc;
    shuffle(r->perm, r->train.n, o->seed, epoch);
    for (size_t s = 0; s < steps; s++) {
        data_gather(&r->train, r->perm + s * o->batch + (size_t)r->rank, (size_t)r->size, local, r->xb, r->yb);
        sum += model_train_step(&r->model, r->xb, r->yb, local, 1.0f / (float)local);
        if ((rc = exchange_run(r->ex, r->model.grads)) != CRUX_SUCCESS) {
            fprintf(stderr, "crux-train: rank %d: gradient exchange at epoch %d step %zu: %s\n", r->rank,
                    epoch + 1, s, crux_error_string(rc));
            return rc;
        }
        sgd_update(r->model.params, r->velocity, r->model.grads, r->model.nparams,
                   (float)learning_rate(o, epoch, s, steps), (float)o->momentum, (float)o->weight_decay);
    }
    if ((rc = crux_allreduce(CRUX_IN_PLACE, &sum, 1, CRUX_DOUBLE, CRUX_SUM, CRUX_COMM_WORLD)) != CRUX_SUCCESS)
        fprintf(stderr, "crux-train: rank %d: summing the losses of epoch %d: %s\n", r->rank, epoch + 1,
                crux_error_string(rc));
    *loss = sum / (double)(steps * o->batch);
    return rc;
}

static int run_epochs(struct run *r)
{
    const struct opts *o = &r->o;
    double wall = 0.0, loss = 0.0, acc = 0.0;
    struct exchange_totals before = { 0 }, after;
    int rc;
    if (r->rank == 0)
        printf("crux-train: %s, %zu parameters, %d ranks, batch %zu (%zu per rank), %zu train / %zu test "
               "samples, codec %s, sgemm %s\n",
               model_name(o->model), r->model.nparams, r->size, o->batch, o->batch / (size_t)r->size,
               r->train.n, r->test.n, o->ex.codec, sgemm_kernel_name());
    /* Ranks finish loading the data at different times; start the clocks together. */
    if ((rc = crux_barrier(CRUX_COMM_WORLD)) != CRUX_SUCCESS) {
        fprintf(stderr, "crux-train: rank %d: barrier before training: %s\n", r->rank, crux_error_string(rc));
        return rc;
    }
    for (int e = 0; e < o->epochs; e++) {
        double t0 = crux_wtime(), c0 = cpu_seconds(), density;
        if ((rc = exchange_begin_epoch(r->ex, e, &density)) != CRUX_SUCCESS) {
            fprintf(stderr, "crux-train: rank %d: density %g for epoch %d: %s\n", r->rank, density, e + 1,
                    crux_error_string(rc));
            return rc;
        }
        if (r->rank == 0 && o->ex.warmup_epochs > 0)
            printf("epoch %d/%d  density %g%s\n", e + 1, o->epochs, density,
                   e < o->ex.warmup_epochs ? " (warm-up)" : "");
        if ((rc = train_epoch(r, e, &loss)) != CRUX_SUCCESS)
            return rc;
        double dt = crux_wtime() - t0, cpu = cpu_seconds() - c0;
        wall += dt;
        if ((rc = evaluate(&r->model, &r->test, r->rank, r->size, r->xb, r->yb, &acc)) != CRUX_SUCCESS) {
            fprintf(stderr, "crux-train: rank %d: summing test counts after epoch %d: %s\n", r->rank, e + 1,
                    crux_error_string(rc));
            return rc;
        }
        exchange_totals(r->ex, &after);
        uint64_t dense = after.dense_bytes - before.dense_bytes, wire = after.wire_bytes - before.wire_bytes;
        double comm = after.comm_s - before.comm_s;
        before = after;
        if (r->rank == 0) {
            printf("epoch %d/%d  loss %.9g  test acc %.4f  %.3f s (exchange %.3f s, cpu %.3f s)  dense %" PRIu64
                   " B  wire %" PRIu64 " B\n",
                   e + 1, o->epochs, loss, acc, dt, comm, cpu, dense, wire);
            fflush(stdout);
        }
        if (r->csv) {
            fprintf(r->csv, "%d,%.9g,%.4f,%.6f,%.6f,%" PRIu64 ",%" PRIu64 ",%.6f\n", e + 1, loss, acc, dt, wall,
                    dense, wire, cpu);
            fflush(r->csv);
        }
    }
    /* Every rank reports: identical hashes show the replicas never diverged. */
    printf("rank %d: final loss %.9g test acc %.4f weights fnv1a %016" PRIx64 "\n", r->rank, loss, acc,
           params_hash(r->model.params, r->model.nparams));
    return CRUX_SUCCESS;
}

int main(int argc, char **argv)
{
    struct run r;
    memset(&r, 0, sizeof(r));
    int p = parse_args(argc, argv, &r.o);
    if (p != 0)
        return p > 0 ? 0 : 2;
    int rc = crux_init(&argc, &argv);
    if (rc != CRUX_SUCCESS) {
        fprintf(stderr, "crux-train: crux_init: %s\n", crux_error_string(rc));
        return 1;
    }
    crux_comm_rank(CRUX_COMM_WORLD, &r.rank);
    crux_comm_size(CRUX_COMM_WORLD, &r.size);
    rc = run_setup(&r);
    if (rc == CRUX_SUCCESS)
        rc = run_epochs(&r);
    run_teardown(&r);
    crux_finalize();
    return rc == CRUX_SUCCESS ? 0 : 1;
}
