/* layers.h - forward and backward passes of the trainer's layers on a batch.
 * Activations are row-major per sample, images NHWC (channels innermost), so a
 * convolution is one GEMM of the im2col patch matrix with the filter matrix.
 * Backward passes overwrite (not accumulate) their parameter gradients. */
#ifndef CRUX_TRAIN_LAYERS_H
#define CRUX_TRAIN_LAYERS_H

#include <stddef.h>
#include <stdint.h>

/* y[B x out] = x[B x in] * w[in x out] + b */
void dense_forward(const float *x, size_t batch, size_t in, size_t out, const float *w, const float *b,
                   float *y);
/* dw = x^T dy, db = column sums of dy, dx = dy w^T (skipped when dx is NULL). */
void dense_backward(const float *x, const float *dy, size_t batch, size_t in, size_t out, const float *w,
                    float *dw, float *db, float *dx);

void relu_forward(const float *x, float *y, size_t n);
/* dx = dy where the forward output y was positive, else 0 (dx may alias dy). */
void relu_backward(const float *y, const float *dy, float *dx, size_t n);

struct conv_shape {
    size_t h, w, c;     /* input */
    size_t k, pad;      /* square kernel, zero padding, stride 1 */
    size_t cout;        /* filters */
    size_t ho, wo;      /* output: h + 2 pad - k + 1 */
};
void conv_shape_init(struct conv_shape *s, size_t h, size_t w, size_t c, size_t k, size_t pad, size_t cout);
static inline size_t conv_patch(const struct conv_shape *s) { return s->k * s->k * s->c; }
/* cols: batch*ho*wo x k*k*c scratch (kept for backward); w: k*k*c x cout. */
void conv_forward(const float *x, size_t batch, const struct conv_shape *s, const float *w, const float *b,
                  float *cols, float *y);
/* Uses cols from the forward pass; dcols is scratch of the same size; dx may be NULL. */
void conv_backward(const float *cols, const float *dy, size_t batch, const struct conv_shape *s,
                   const float *w, float *dw, float *db, float *dcols, float *dx);

/* 2x2 max pooling, stride 2 (h and w even). argmax keeps the winning input index. */
void maxpool_forward(const float *x, size_t batch, size_t h, size_t w, size_t c, float *y, uint32_t *argmax);
void maxpool_backward(const float *dy, const uint32_t *argmax, size_t batch, size_t h, size_t w, size_t c,
                      float *dx);

/* Softmax cross-entropy: returns the summed loss over the batch (double), writes
 * dlogits = scale * (softmax - onehot). correct (may be NULL) counts argmax hits. */
double softmax_xent(const float *logits, const uint8_t *labels, size_t batch, size_t classes, float scale,
                    float *dlogits, size_t *correct);

#endif
