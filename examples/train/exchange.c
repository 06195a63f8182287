/* exchange.c - dense or compressed averaging of the flat gradient vector. */
#include "exchange.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct exchange {
    crux_comm_t comm;
    size_t count;
    int size;
    float inv_size;
    struct exchange_totals totals;
#ifdef CRUX_HAVE_COMPRESS
    crux_compressor_t comp; /* NULL for --codec none */
    int momentum;           /* the codec's memory is CRUX_MEMORY_MOMENTUM */
    int warmup_epochs;      /* 0: the density stays target_density */
    double target_density;
    float *sum;             /* compressed result, count floats */
#endif
};

static const char *const codec_names[] = { "none", "cltk", "gtopk", "topk", "sketch", "qsgd" };

static int known_codec(const char *name)
{
    for (size_t i = 0; i < sizeof(codec_names) / sizeof(codec_names[0]); i++)
        if (strcmp(name, codec_names[i]) == 0)
            return 1;
    return 0;
}

int exchange_codec_built(const char *name)
{
#ifdef CRUX_HAVE_COMPRESS
    return known_codec(name);
#else
    return strcmp(name, "none") == 0;
#endif
}

#ifdef CRUX_HAVE_COMPRESS
static int parse_codec(const char *name, crux_codec_t *c)
{
    static const struct { const char *name; crux_codec_t codec; } map[] = {
        { "none", CRUX_CODEC_NONE }, { "cltk", CRUX_CODEC_CLTK }, { "gtopk", CRUX_CODEC_GTOPK },
        { "topk", CRUX_CODEC_TOPK }, { "sketch", CRUX_CODEC_SKETCH }, { "qsgd", CRUX_CODEC_QSGD },
    };
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if (strcmp(name, map[i].name) == 0) {
            *c = map[i].codec;
            return 0;
        }
    return -1;
}

static int parse_memory(const char *name, crux_memory_t *m)
{
    static const struct { const char *name; crux_memory_t memory; } map[] = {
        { "none", CRUX_MEMORY_NONE }, { "residual", CRUX_MEMORY_RESIDUAL },
        { "lowpass", CRUX_MEMORY_LOWPASS }, { "momentum", CRUX_MEMORY_MOMENTUM },
    };
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if (strcmp(name, map[i].name) == 0) {
            *m = map[i].memory;
            return 0;
        }
    return -1;
}

/* The codec's defaults from the library, overridden by the flags that were given. */
static int compressor_open(struct exchange *x, const struct exchange_opts *o, char *err, size_t errlen)
{
    crux_codec_t codec = CRUX_CODEC_NONE;
    crux_compress_config_t cfg;
    if (parse_codec(o->codec, &codec) != 0) {
        snprintf(err, errlen, "--codec %s: unknown", o->codec);
        return CRUX_ERR_ARG;
    }
    crux_compress_config_init(&cfg, codec);
    if (o->memory && parse_memory(o->memory, &cfg.memory) != 0) {
        snprintf(err, errlen, "--memory %s: want none|residual|lowpass|momentum", o->memory);
        return CRUX_ERR_ARG;
    }
    if (o->density >= 0)
        cfg.density = o->density;
    if (o->beta >= 0)
        cfg.beta = (float)o->beta;
    if (o->sketch_rows >= 0)
        cfg.sketch_rows = o->sketch_rows;
    if (o->sketch_cols >= 0)
        cfg.sketch_cols = o->sketch_cols;
    if (o->qsgd_levels >= 0)
        cfg.qsgd_levels = o->qsgd_levels;
    cfg.seed = o->seed;
    x->sum = malloc((x->count ? x->count : 1) * sizeof(float));
    if (!x->sum) {
        snprintf(err, errlen, "out of memory for a %zu-float gradient", x->count);
        return CRUX_ERR_NOMEM;
    }
    x->momentum = cfg.memory == CRUX_MEMORY_MOMENTUM;
    if (x->momentum && o->beta < 0)
        cfg.beta = (float)o->momentum;
    /* Warm-up lowers the density from its first-epoch value; the compressor's
     * buffers are sized for the largest one it will see. */
    x->target_density = cfg.density;
    x->warmup_epochs = o->warmup_epochs;
    if (o->warmup_epochs > 0)
        cfg.density = exchange_warmup_density(cfg.density, o->warmup_epochs, 0);
    int rc = crux_compressor_create(x->comm, x->count, &cfg, &x->comp);
    if (rc != CRUX_SUCCESS) {
        snprintf(err, errlen, "crux_compressor_create(codec %s, %zu floats): %s", o->codec, x->count,
                 crux_error_string(rc));
        return rc;
    }
    if (o->clip > 0 && (rc = crux_compressor_set_clip(x->comp, o->clip)) != CRUX_SUCCESS)
        snprintf(err, errlen, "crux_compressor_set_clip(%g): %s", o->clip, crux_error_string(rc));
    return rc;
}
#endif

int exchange_create(crux_comm_t comm, size_t count, const struct exchange_opts *opts, struct exchange **out,
                    char *err, size_t errlen)
{
    int size, rc;
    *out = NULL;
    if (!known_codec(opts->codec)) {
        snprintf(err, errlen, "--codec %s: want none|cltk|gtopk|topk|sketch|qsgd", opts->codec);
        return CRUX_ERR_ARG;
    }
    if (!exchange_codec_built(opts->codec)) {
        snprintf(err, errlen,
                 "--codec %s: this crux-train was built without the compression API "
                 "(CRUX_HAVE_COMPRESS); only --codec none is available",
                 opts->codec);
        return CRUX_ERR_UNSUPPORTED;
    }
    if ((rc = crux_comm_size(comm, &size)) != CRUX_SUCCESS) {
        snprintf(err, errlen, "crux_comm_size: %s", crux_error_string(rc));
        return rc;
    }
    struct exchange *x = calloc(1, sizeof(*x));
    if (!x) {
        snprintf(err, errlen, "out of memory");
        return CRUX_ERR_NOMEM;
    }
    x->comm = comm;
    x->count = count;
    x->size = size;
    x->inv_size = 1.0f / (float)size;
#ifdef CRUX_HAVE_COMPRESS
    if (strcmp(opts->codec, "none") != 0 && (rc = compressor_open(x, opts, err, errlen)) != CRUX_SUCCESS) {
        exchange_free(x);
        return rc;
    }
#endif
    *out = x;
    return CRUX_SUCCESS;
}

static void scale(float *v, size_t n, float s)
{
    for (size_t i = 0; i < n; i++)
        v[i] *= s;
}

int exchange_run(struct exchange *x, float *grad)
{
    double t0 = crux_wtime();
    int rc;
#ifdef CRUX_HAVE_COMPRESS
    if (x->comp) {
        crux_compress_stats_t st;
        if ((rc = crux_compressed_allreduce(x->comp, grad, x->sum)) != CRUX_SUCCESS)
            return rc;
        if ((rc = crux_compressor_stats(x->comp, &st)) != CRUX_SUCCESS)
            return rc;
        for (size_t i = 0; i < x->count; i++)
            grad[i] = x->sum[i] * x->inv_size;
        x->totals.dense_bytes += st.ring_bytes; /* the dense reference, see crux.h */
        x->totals.wire_bytes += st.wire_bytes;
        x->totals.comm_s += crux_wtime() - t0;
        return CRUX_SUCCESS;
    }
#endif
    if ((rc = crux_allreduce(CRUX_IN_PLACE, grad, x->count, CRUX_FLOAT, CRUX_SUM, x->comm)) != CRUX_SUCCESS)
        return rc;
    scale(grad, x->count, x->inv_size);
    /* Dense: what a ring allreduce sends per rank, 2(P-1)/P * count * 4 (crux.h's
     * ring_bytes), counts as both figures, so dense/wire is the ratio (1 here). */
    uint64_t ring = 2 * (uint64_t)(x->size - 1) * x->count * sizeof(float) / (uint64_t)x->size;
    x->totals.dense_bytes += ring;
    x->totals.wire_bytes += ring;
    x->totals.comm_s += crux_wtime() - t0;
    return CRUX_SUCCESS;
}

double exchange_warmup_density(double target, int warmup_epochs, int epoch)
{
    if (epoch >= warmup_epochs)
        return target;
    double d = 0.25;
    for (int e = 0; e < epoch; e++)
        d *= 0.25;
    return d > target ? d : target;
}

int exchange_begin_epoch(struct exchange *x, int epoch, double *density)
{
    *density = 1.0;
#ifdef CRUX_HAVE_COMPRESS
    if (x->comp && x->warmup_epochs > 0) {
        *density = exchange_warmup_density(x->target_density, x->warmup_epochs, epoch);
        return crux_compressor_set_density(x->comp, *density);
    }
    if (x->comp)
        *density = x->target_density;
#else
    (void)x, (void)epoch;
#endif
    return CRUX_SUCCESS;
}

int exchange_has_momentum(const struct exchange *x)
{
#ifdef CRUX_HAVE_COMPRESS
    return x->comp && x->momentum;
#else
    (void)x;
    return 0;
#endif
}

void exchange_totals(const struct exchange *x, struct exchange_totals *t)
{
    *t = x->totals;
}

void exchange_free(struct exchange *x)
{
    if (!x)
        return;
#ifdef CRUX_HAVE_COMPRESS
    if (x->comp)
        crux_compressor_free(&x->comp);
    free(x->sum);
#endif
    free(x);
}
