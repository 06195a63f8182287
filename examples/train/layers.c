/* layers.c - the layer math; all heavy lifting is in sgemm(). */
#include "layers.h"

#include <math.h>
#include <string.h>

#include "sgemm.h"

/* Copy bias into every row, then accumulate the GEMM on top (beta = 1). */
static void broadcast_bias(float *y, size_t rows, size_t cols, const float *b)
{
    for (size_t i = 0; i < rows; i++)
        memcpy(y + i * cols, b, cols * sizeof(float));
}

static void column_sums(const float *dy, size_t rows, size_t cols, float *db)
{
    memset(db, 0, cols * sizeof(float));
    for (size_t i = 0; i < rows; i++)
        for (size_t j = 0; j < cols; j++)
            db[j] += dy[i * cols + j];
}

void dense_forward(const float *x, size_t batch, size_t in, size_t out, const float *w, const float *b,
                   float *y)
{
    broadcast_bias(y, batch, out, b);
    sgemm(0, 0, batch, out, in, 1.0f, x, in, w, out, 1.0f, y, out);
}

void dense_backward(const float *x, const float *dy, size_t batch, size_t in, size_t out, const float *w,
                    float *dw, float *db, float *dx)
{
    sgemm(1, 0, in, out, batch, 1.0f, x, in, dy, out, 0.0f, dw, out);
    column_sums(dy, batch, out, db);
    if (dx)
        sgemm(0, 1, batch, in, out, 1.0f, dy, out, w, out, 0.0f, dx, in);
}

void relu_forward(const float *x, float *y, size_t n)
{
    for (size_t i = 0; i < n; i++)
        y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void relu_backward(const float *y, const float *dy, float *dx, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

void conv_shape_init(struct conv_shape *s, size_t h, size_t w, size_t c, size_t k, size_t pad, size_t cout)
{
    s->h = h, s->w = w, s->c = c, s->k = k, s->pad = pad, s->cout = cout;
    s->ho = h + 2 * pad - k + 1;
    s->wo = w + 2 * pad - k + 1;
}

/* Kernel columns kx in [*lo, *hi) that land inside the image for output column ox. */
static void valid_kx(const struct conv_shape *s, size_t ox, size_t *lo, size_t *hi)
{
    *lo = ox < s->pad ? s->pad - ox : 0;
    *hi = s->w + s->pad - ox < s->k ? s->w + s->pad - ox : s->k;
}

/* One row per output pixel: the k x k x c patch under it, zeros outside the
 * image. In NHWC the in-image part of each kernel row is one contiguous run.
 * The shape is copied to locals: with -fno-strict-aliasing the compiler would
 * otherwise reload it after every store. */
static void im2col(const float *x, size_t batch, const struct conv_shape *sp, float *cols)
{
    const struct conv_shape s = *sp;
    const size_t kc = s.k * s.c, patch = s.k * kc;
    for (size_t n = 0; n < batch; n++) {
        const float *img = x + n * s.h * s.w * s.c;
        for (size_t oy = 0; oy < s.ho; oy++)
            for (size_t ox = 0; ox < s.wo; ox++) {
                float *row = cols + ((n * s.ho + oy) * s.wo + ox) * patch;
                size_t lo, hi;
                valid_kx(&s, ox, &lo, &hi);
                const size_t zlo = lo * s.c, run = (hi - lo) * s.c, zhi = hi * s.c;
                for (size_t ky = 0; ky < s.k; ky++) {
                    size_t iy = oy + ky; /* in padded coordinates */
                    float *dst = row + ky * kc;
                    if (iy < s.pad || iy >= s.h + s.pad) {
                        memset(dst, 0, kc * sizeof(float));
                        continue;
                    }
                    const float *src = img + ((iy - s.pad) * s.w + ox + lo - s.pad) * s.c;
                    for (size_t i = 0; i < zlo; i++)
                        dst[i] = 0.0f;
                    for (size_t i = 0; i < run; i++)
                        dst[zlo + i] = src[i];
                    for (size_t i = zhi; i < kc; i++)
                        dst[i] = 0.0f;
                }
            }
    }
}

/* Adjoint of im2col: every patch entry adds back into the pixel it came from. */
static void col2im(const float *dcols, size_t batch, const struct conv_shape *sp, float *dx)
{
    const struct conv_shape s = *sp;
    const size_t kc = s.k * s.c, patch = s.k * kc;
    memset(dx, 0, batch * s.h * s.w * s.c * sizeof(float));
    for (size_t n = 0; n < batch; n++) {
        float *img = dx + n * s.h * s.w * s.c;
        for (size_t oy = 0; oy < s.ho; oy++)
            for (size_t ox = 0; ox < s.wo; ox++) {
                const float *row = dcols + ((n * s.ho + oy) * s.wo + ox) * patch;
                size_t lo, hi;
                valid_kx(&s, ox, &lo, &hi);
                const size_t run = (hi - lo) * s.c;
                for (size_t ky = 0; ky < s.k; ky++) {
                    size_t iy = oy + ky;
                    if (iy < s.pad || iy >= s.h + s.pad)
                        continue;
                    float *dst = img + ((iy - s.pad) * s.w + ox + lo - s.pad) * s.c;
                    const float *src = row + ky * kc + lo * s.c;
                    for (size_t i = 0; i < run; i++)
                        dst[i] += src[i];
                }
            }
    }
}

void conv_forward(const float *x, size_t batch, const struct conv_shape *s, const float *w, const float *b,
                  float *cols, float *y)
{
    size_t rows = batch * s->ho * s->wo, patch = conv_patch(s);
    im2col(x, batch, s, cols);
    broadcast_bias(y, rows, s->cout, b);
    sgemm(0, 0, rows, s->cout, patch, 1.0f, cols, patch, w, s->cout, 1.0f, y, s->cout);
}

void conv_backward(const float *cols, const float *dy, size_t batch, const struct conv_shape *s,
                   const float *w, float *dw, float *db, float *dcols, float *dx)
{
    size_t rows = batch * s->ho * s->wo, patch = conv_patch(s);
    sgemm(1, 0, patch, s->cout, rows, 1.0f, cols, patch, dy, s->cout, 0.0f, dw, s->cout);
    column_sums(dy, rows, s->cout, db);
    if (!dx)
        return;
    sgemm(0, 1, rows, patch, s->cout, 1.0f, dy, s->cout, w, s->cout, 0.0f, dcols, patch);
    col2im(dcols, batch, s, dx);
}

void maxpool_forward(const float *x, size_t batch, size_t h, size_t w, size_t c, float *y, uint32_t *argmax)
{
    size_t ho = h / 2, wo = w / 2;
    for (size_t n = 0; n < batch; n++)
        for (size_t oy = 0; oy < ho; oy++)
            for (size_t ox = 0; ox < wo; ox++)
                for (size_t ch = 0; ch < c; ch++) {
                    size_t base = n * h * w * c, best = base + ((2 * oy) * w + 2 * ox) * c + ch;
                    for (size_t dy = 0; dy < 2; dy++)
                        for (size_t dx = 0; dx < 2; dx++) {
                            size_t i = base + ((2 * oy + dy) * w + 2 * ox + dx) * c + ch;
                            if (x[i] > x[best])
                                best = i;
                        }
                    size_t o = ((n * ho + oy) * wo + ox) * c + ch;
                    y[o] = x[best];
                    argmax[o] = (uint32_t)best;
                }
}

void maxpool_backward(const float *dy, const uint32_t *argmax, size_t batch, size_t h, size_t w, size_t c,
                      float *dx)
{
    size_t nout = batch * (h / 2) * (w / 2) * c;
    memset(dx, 0, batch * h * w * c * sizeof(float));
    for (size_t o = 0; o < nout; o++)
        dx[argmax[o]] += dy[o];
}

double softmax_xent(const float *logits, const uint8_t *labels, size_t batch, size_t classes, float scale,
                    float *dlogits, size_t *correct)
{
    double loss = 0.0;
    size_t hits = 0;
    for (size_t i = 0; i < batch; i++) {
        const float *z = logits + i * classes;
        size_t best = 0;
        for (size_t j = 1; j < classes; j++)
            if (z[j] > z[best])
                best = j;
        hits += best == labels[i];
        float zmax = z[best], sum = 0.0f;
        for (size_t j = 0; j < classes; j++)
            sum += expf(z[j] - zmax);
        /* log-sum-exp shifted by the max so exp never overflows */
        loss += (double)(logf(sum) + zmax - z[labels[i]]);
        if (dlogits)
            for (size_t j = 0; j < classes; j++)
                dlogits[i * classes + j] =
                    scale * (expf(z[j] - zmax) / sum - (j == labels[i] ? 1.0f : 0.0f));
    }
    if (correct)
        *correct = hits;
    return loss;
}
