/* exchange.h - the trainer's gradient exchange: one flat float vector of all
 * parameters' gradients in, its average over the ranks out (identical on every
 * rank). Dense through crux_allreduce, or through a crux compressor when the
 * library was built with compression (CRUX_HAVE_COMPRESS). */
#ifndef CRUX_TRAIN_EXCHANGE_H
#define CRUX_TRAIN_EXCHANGE_H

#include <stddef.h>
#include <stdint.h>

#include <crux.h>

struct exchange_opts {
    const char *codec;   /* none|cltk|gtopk|topk|sketch|qsgd */
    const char *memory;  /* NULL = the codec's default, else none|residual|lowpass|momentum */
    double density;      /* < 0: codec default */
    double beta;         /* < 0: codec default */
    int sketch_rows, sketch_cols, qsgd_levels;  /* < 0: codec default */
    double momentum;     /* the optimiser's: DGC's beta when --beta is not given */
    uint64_t seed;
    int warmup_epochs;   /* DGC density warm-up over the first epochs (0 = off); top-k codecs */
    double clip;         /* DGC local gradient clipping, max L2 norm (0 = off); codec topk */
};

struct exchange_totals {
    uint64_t dense_bytes, wire_bytes; /* summed over calls, this rank */
    double comm_s;                    /* time inside the exchange */
};

struct exchange;

/* Returns CRUX_SUCCESS, or an error code with a message in err. */
int exchange_create(crux_comm_t comm, size_t count, const struct exchange_opts *opts, struct exchange **out,
                    char *err, size_t errlen);
/* grad <- (sum over ranks of grad) / P, in place. */
int exchange_run(struct exchange *x, float *grad);
void exchange_totals(const struct exchange *x, struct exchange_totals *t);
void exchange_free(struct exchange *x);
/* 1 if the compressor applies momentum itself (DGC's momentum correction,
 * CRUX_MEMORY_MOMENTUM): the optimiser must then not add its own. */
int exchange_has_momentum(const struct exchange *x);
/* DGC's exponential density warm-up (Lin et al. 2018, Sec. 3.4): in epoch e
 * (0-based) < warmup_epochs the kept fraction is 0.25^(e+1) (0.25, 0.0625,
 * 0.015625, 0.0039, ...) but never below target; from then on, target. */
double exchange_warmup_density(double target, int warmup_epochs, int epoch);
/* Call on every rank at the start of each epoch: sets the compressor's density
 * for the epoch (warm-up) and returns it in *density (1 for dense or codecs
 * without a density). */
int exchange_begin_epoch(struct exchange *x, int epoch, double *density);
/* 1 if --codec NAME can run in this build. */
int exchange_codec_built(const char *name);

#endif
