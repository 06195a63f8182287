/* model.h - a feed-forward network as a list of layers whose parameters live
 * in one flat vector (and their gradients in another of the same layout), so
 * the gradient exchange and the optimiser see a single array. */
#ifndef CRUX_TRAIN_MODEL_H
#define CRUX_TRAIN_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "layers.h"

enum layer_kind { LAYER_DENSE, LAYER_RELU, LAYER_CONV, LAYER_MAXPOOL };
enum model_kind { MODEL_MLP, MODEL_CNN };

#define MODEL_MAX_LAYERS 16

struct layer {
    enum layer_kind kind;
    size_t in_size, out_size;  /* per sample */
    size_t in_h, in_w, in_c;   /* image shape for conv and pooling */
    struct conv_shape conv;
    size_t w_off, b_off;       /* into params/grads (dense, conv) */
    float *out;                /* max_batch x out_size */
    float *cols;               /* conv: im2col patches */
    uint32_t *argmax;          /* maxpool */
};

struct model {
    enum model_kind kind;
    size_t max_batch;
    int nlayers;
    struct layer layers[MODEL_MAX_LAYERS];
    size_t nparams;
    float *params, *grads;
    float *dbuf[2];            /* ping-pong activation gradients */
    float *dcols;              /* conv backward scratch */
    float *dlogits;
};

/* Build the network for batches of up to max_batch samples, weights drawn from
 * seed (He initialisation, zero biases). Returns 0 or -1 (out of memory). */
int model_create(struct model *m, enum model_kind kind, size_t max_batch, uint64_t seed);
void model_free(struct model *m);
/* Forward pass; returns the logits (batch x 10), valid until the next call. */
const float *model_forward(struct model *m, const float *x, size_t batch);
/* Forward and backward: grads = d(loss_scale * summed loss)/d params.
 * Returns the summed (unscaled) loss of the batch. */
double model_train_step(struct model *m, const float *x, const uint8_t *y, size_t batch, float loss_scale);
/* Number of correct predictions on a batch. */
size_t model_count_correct(struct model *m, const float *x, const uint8_t *y, size_t batch);
const char *model_name(enum model_kind kind);

#endif
