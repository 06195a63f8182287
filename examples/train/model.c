/* model.c - the two networks of the trainer:
 *   mlp: 784-512-256-10, ReLU;
 *   cnn: LeNet-5 style, conv5x5x6 (pad 2) - pool - conv5x5x16 - pool - 120 - 84 - 10, ReLU. */
#include "model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"

#define MODEL_CLASSES 10

const char *model_name(enum model_kind kind)
{
    return kind == MODEL_MLP ? "mlp" : "cnn";
}

static struct layer *push(struct model *m, enum layer_kind kind, size_t in_size)
{
    struct layer *l = &m->layers[m->nlayers++];
    memset(l, 0, sizeof(*l));
    l->kind = kind;
    l->in_size = in_size;
    return l;
}

static size_t last_size(const struct model *m, size_t input)
{
    return m->nlayers ? m->layers[m->nlayers - 1].out_size : input;
}

static void add_dense(struct model *m, size_t in, size_t out)
{
    struct layer *l = push(m, LAYER_DENSE, in);
    l->out_size = out;
    l->w_off = m->nparams;
    l->b_off = l->w_off + in * out;
    m->nparams = l->b_off + out;
}

static void add_relu(struct model *m)
{
    size_t n = last_size(m, 0);
    struct layer *l = push(m, LAYER_RELU, n);
    l->out_size = n;
}

static void add_conv(struct model *m, size_t h, size_t w, size_t c, size_t k, size_t pad, size_t cout)
{
    struct layer *l = push(m, LAYER_CONV, h * w * c);
    conv_shape_init(&l->conv, h, w, c, k, pad, cout);
    l->in_h = h, l->in_w = w, l->in_c = c;
    l->out_size = l->conv.ho * l->conv.wo * cout;
    l->w_off = m->nparams;
    l->b_off = l->w_off + conv_patch(&l->conv) * cout;
    m->nparams = l->b_off + cout;
}

static void add_maxpool(struct model *m, size_t h, size_t w, size_t c)
{
    struct layer *l = push(m, LAYER_MAXPOOL, h * w * c);
    l->in_h = h, l->in_w = w, l->in_c = c;
    l->out_size = (h / 2) * (w / 2) * c;
}

static void build(struct model *m)
{
    if (m->kind == MODEL_MLP) {
        add_dense(m, 784, 512);
        add_relu(m);
        add_dense(m, 512, 256);
        add_relu(m);
        add_dense(m, 256, MODEL_CLASSES);
        return;
    }
    add_conv(m, 28, 28, 1, 5, 2, 6);
    add_relu(m);
    add_maxpool(m, 28, 28, 6);
    add_conv(m, 14, 14, 6, 5, 0, 16);
    add_relu(m);
    add_maxpool(m, 10, 10, 16);
    add_dense(m, 400, 120);
    add_relu(m);
    add_dense(m, 120, 84);
    add_relu(m);
    add_dense(m, 84, MODEL_CLASSES);
}

/* He et al. 2015: N(0, 2 / fan_in) keeps ReLU activations' variance constant. */
static void init_params(struct model *m, uint64_t seed)
{
    uint64_t s = seed;
    memset(m->params, 0, m->nparams * sizeof(float));
    for (int i = 0; i < m->nlayers; i++) {
        struct layer *l = &m->layers[i];
        if (l->kind != LAYER_DENSE && l->kind != LAYER_CONV)
            continue;
        size_t fan_in = l->kind == LAYER_DENSE ? l->in_size : conv_patch(&l->conv);
        double sd = sqrt(2.0 / (double)fan_in);
        for (size_t j = l->w_off; j < l->b_off; j++)
            m->params[j] = (float)(sd * rng_normal(&s));
    }
}

static void *zalloc(size_t bytes)
{
    return calloc(1, bytes ? bytes : 1);
}

int model_create(struct model *m, enum model_kind kind, size_t max_batch, uint64_t seed)
{
    memset(m, 0, sizeof(*m));
    m->kind = kind;
    m->max_batch = max_batch;
    build(m);
    size_t widest = 784, cols = 0;
    for (int i = 0; i < m->nlayers; i++) {
        struct layer *l = &m->layers[i];
        widest = l->out_size > widest ? l->out_size : widest;
        if (!(l->out = zalloc(max_batch * l->out_size * sizeof(float))))
            goto fail;
        if (l->kind == LAYER_CONV) {
            size_t n = max_batch * l->conv.ho * l->conv.wo * conv_patch(&l->conv);
            cols = n > cols ? n : cols;
            if (!(l->cols = zalloc(n * sizeof(float))))
                goto fail;
        }
        if (l->kind == LAYER_MAXPOOL && !(l->argmax = zalloc(max_batch * l->out_size * sizeof(uint32_t))))
            goto fail;
    }
    m->params = zalloc(m->nparams * sizeof(float));
    m->grads = zalloc(m->nparams * sizeof(float));
    m->dbuf[0] = zalloc(max_batch * widest * sizeof(float));
    m->dbuf[1] = zalloc(max_batch * widest * sizeof(float));
    m->dcols = zalloc(cols * sizeof(float));
    m->dlogits = zalloc(max_batch * MODEL_CLASSES * sizeof(float));
    if (!m->params || !m->grads || !m->dbuf[0] || !m->dbuf[1] || !m->dcols || !m->dlogits)
        goto fail;
    init_params(m, seed);
    return 0;
fail:
    model_free(m);
    return -1;
}

void model_free(struct model *m)
{
    for (int i = 0; i < m->nlayers; i++) {
        free(m->layers[i].out);
        free(m->layers[i].cols);
        free(m->layers[i].argmax);
    }
    free(m->params);
    free(m->grads);
    free(m->dbuf[0]);
    free(m->dbuf[1]);
    free(m->dcols);
    free(m->dlogits);
    memset(m, 0, sizeof(*m));
}

static void layer_forward(struct model *m, struct layer *l, const float *x, size_t batch)
{
    const float *p = m->params;
    switch (l->kind) {
    case LAYER_DENSE:
        dense_forward(x, batch, l->in_size, l->out_size, p + l->w_off, p + l->b_off, l->out);
        break;
    case LAYER_RELU:
        relu_forward(x, l->out, batch * l->out_size);
        break;
    case LAYER_CONV:
        conv_forward(x, batch, &l->conv, p + l->w_off, p + l->b_off, l->cols, l->out);
        break;
    case LAYER_MAXPOOL:
        maxpool_forward(x, batch, l->in_h, l->in_w, l->in_c, l->out, l->argmax);
        break;
    }
}

const float *model_forward(struct model *m, const float *x, size_t batch)
{
    const float *in = x;
    for (int i = 0; i < m->nlayers; i++) {
        layer_forward(m, &m->layers[i], in, batch);
        in = m->layers[i].out;
    }
    return in;
}

/* dy: gradient at this layer's output; dx: where to put the input gradient
 * (NULL for the first layer, whose input is the data). */
static void layer_backward(struct model *m, struct layer *l, const float *x, const float *dy, float *dx,
                           size_t batch)
{
    const float *p = m->params;
    float *g = m->grads;
    switch (l->kind) {
    case LAYER_DENSE:
        dense_backward(x, dy, batch, l->in_size, l->out_size, p + l->w_off, g + l->w_off, g + l->b_off, dx);
        break;
    case LAYER_RELU:
        if (dx)
            relu_backward(l->out, dy, dx, batch * l->out_size);
        break;
    case LAYER_CONV:
        conv_backward(l->cols, dy, batch, &l->conv, p + l->w_off, g + l->w_off, g + l->b_off, m->dcols, dx);
        break;
    case LAYER_MAXPOOL:
        if (dx)
            maxpool_backward(dy, l->argmax, batch, l->in_h, l->in_w, l->in_c, dx);
        break;
    }
}

double model_train_step(struct model *m, const float *x, const uint8_t *y, size_t batch, float loss_scale)
{
    const float *logits = model_forward(m, x, batch);
    double loss = softmax_xent(logits, y, batch, MODEL_CLASSES, loss_scale, m->dlogits, NULL);
    const float *dy = m->dlogits;
    for (int i = m->nlayers - 1; i >= 0; i--) {
        float *dx = i > 0 ? m->dbuf[i & 1] : NULL;
        const float *in = i > 0 ? m->layers[i - 1].out : x;
        layer_backward(m, &m->layers[i], in, dy, dx, batch);
        dy = dx;
    }
    return loss;
}

size_t model_count_correct(struct model *m, const float *x, const uint8_t *y, size_t batch)
{
    size_t hits;
    softmax_xent(model_forward(m, x, batch), y, batch, MODEL_CLASSES, 0.0f, NULL, &hits);
    return hits;
}
