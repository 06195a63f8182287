/* idx.h - reader for the IDX format of (Fashion-)MNIST (big-endian header:
 * two zero bytes, a type byte, the number of dimensions, one uint32 size per
 * dimension, then the data). Only unsigned-byte tensors are needed here. */
#ifndef CRUX_TRAIN_IDX_H
#define CRUX_TRAIN_IDX_H

#include <stddef.h>
#include <stdint.h>

#define IDX_MAX_DIMS 4
#define IDX_MAX_BYTES ((size_t)1 << 30) /* refuse files that would claim more */

struct idx_tensor {
    int ndims;
    uint32_t dims[IDX_MAX_DIMS];
    size_t count;  /* product of dims */
    uint8_t *data; /* count bytes, malloc'ed */
};

/* Parse an in-memory IDX image. Returns 0, or -1 with a reason in err. */
int idx_parse(const uint8_t *buf, size_t len, struct idx_tensor *out, char *err, size_t errlen);
/* Read a file, gzip'ed or plain (zlib reads both), and parse it. */
int idx_load(const char *path, struct idx_tensor *out, char *err, size_t errlen);
void idx_free(struct idx_tensor *t);

#endif
