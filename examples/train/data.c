/* data.c - load a Fashion-MNIST split from its IDX files (.gz as shipped by
 * Debian, or already gunzip'ed). */
#include "data.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "idx.h"

/* Mean and standard deviation of the Fashion-MNIST training pixels in [0,1]. */
#define PIXEL_MEAN 0.2860f
#define PIXEL_STD 0.3530f

/* DIR/NAME.gz if present, else DIR/NAME; -1 if neither exists. */
static int find_file(const char *dir, const char *name, char *path, size_t len)
{
    snprintf(path, len, "%s/%s.gz", dir, name);
    if (access(path, R_OK) == 0)
        return 0;
    snprintf(path, len, "%s/%s", dir, name);
    if (access(path, R_OK) == 0)
        return 0;
    snprintf(path, len, "%s/%s.gz", dir, name);
    return -1;
}

static int load_part(const char *dir, const char *name, struct idx_tensor *t, char *err, size_t errlen)
{
    char path[4096];
    if (find_file(dir, name, path, sizeof(path)) != 0) {
        snprintf(err, errlen,
                 "Fashion-MNIST file %s (or without .gz) not found; install the Debian package %s "
                 "(apt-get install %s) or pass --data DIR",
                 path, DATA_PACKAGE, DATA_PACKAGE);
        return -1;
    }
    return idx_load(path, t, err, errlen);
}

int data_load(const char *dir, const char *split, size_t limit, struct dataset *out, char *err,
              size_t errlen)
{
    char name[64];
    struct idx_tensor img = { 0 }, lab = { 0 };
    int rc = -1;
    memset(out, 0, sizeof(*out));
    snprintf(name, sizeof(name), "%s-images-idx3-ubyte", split);
    if (load_part(dir, name, &img, err, errlen) != 0)
        goto out;
    snprintf(name, sizeof(name), "%s-labels-idx1-ubyte", split);
    if (load_part(dir, name, &lab, err, errlen) != 0)
        goto out;
    if (img.ndims != 3 || img.dims[1] * img.dims[2] != DATA_PIXELS || lab.ndims != 1 ||
        lab.dims[0] != img.dims[0]) {
        snprintf(err, errlen, "%s/%s: images are not N x 28 x 28 with N labels", dir, split);
        goto out;
    }
    size_t n = img.dims[0];
    if (limit > 0 && limit < n)
        n = limit;
    out->pixels = malloc(n * DATA_PIXELS);
    out->y = malloc(n);
    if (!out->pixels || !out->y) {
        snprintf(err, errlen, "out of memory for %zu samples", n);
        data_free(out);
        goto out;
    }
    memcpy(out->pixels, img.data, n * DATA_PIXELS);
    for (int v = 0; v < 256; v++)
        out->lut[v] = ((float)v / 255.0f - PIXEL_MEAN) / PIXEL_STD;
    for (size_t i = 0; i < n; i++) {
        if (lab.data[i] >= DATA_CLASSES) {
            snprintf(err, errlen, "%s/%s: label %u of sample %zu out of range", dir, split, lab.data[i], i);
            data_free(out);
            goto out;
        }
        out->y[i] = lab.data[i];
    }
    out->n = n;
    rc = 0;
out:
    idx_free(&img);
    idx_free(&lab);
    return rc;
}

void data_gather(const struct dataset *d, const size_t *idx, size_t stride, size_t count, float *x, uint8_t *y)
{
    for (size_t j = 0; j < count; j++) {
        size_t i = idx[j * stride];
        const uint8_t *src = d->pixels + i * DATA_PIXELS;
        for (size_t p = 0; p < DATA_PIXELS; p++)
            x[j * DATA_PIXELS + p] = d->lut[src[p]];
        y[j] = d->y[i];
    }
}

void data_free(struct dataset *d)
{
    free(d->pixels);
    free(d->y);
    memset(d, 0, sizeof(*d));
}
