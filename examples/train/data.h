/* data.h - Fashion-MNIST as float images (normalised) and byte labels. */
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
    float *x;   /* n x 784, (pixel/255 - mean) / std */
    uint8_t *y; /* n labels in 0..9 */
};

/* split is "train" or "t10k". limit > 0 keeps the first limit samples.
 * Returns 0, or -1 with a message naming the path (and the package) in err. */
int data_load(const char *dir, const char *split, size_t limit, struct dataset *out, char *err,
              size_t errlen);
void data_free(struct dataset *d);

#endif
