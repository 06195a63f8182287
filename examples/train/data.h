/* data.h - Fashion-MNIST: byte images (a quarter of the memory of floats, which
 * matters with one copy per rank) turned into normalised floats per batch. */
#ifndef CRUX_TRAIN_DATA_H
#define CRUX_TRAIN_DATA_H

#include <stddef.h>
#include <stdint.h>

#define DATA_DEFAULT_DIR "/usr/share/datasets/fashion-mnist"
#define DATA_PACKAGE "dataset-fashion-mnist"
#define DATA_PIXELS 784
#define DATA_CLASSES 10

struct dataset {
    size_t n;
    uint8_t *pixels; /* n x 784 */
    uint8_t *y;      /* n labels in 0..9 */
    float lut[256];  /* pixel value -> (v/255 - mean) / std */
};

/* split is "train" or "t10k". limit > 0 keeps the first limit samples.
 * Returns 0, or -1 with a message naming the path (and the package) in err. */
int data_load(const char *dir, const char *split, size_t limit, struct dataset *out, char *err,
              size_t errlen);
void data_free(struct dataset *d);
/* Samples idx[0], idx[stride], ... (count of them) into x (count x 784) and y. */
void data_gather(const struct dataset *d, const size_t *idx, size_t stride, size_t count, float *x, uint8_t *y);

#endif
