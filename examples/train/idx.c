/* idx.c - IDX parser: every size is checked against the bytes actually present,
 * so a truncated or hostile file is an error, never an overread. */
#include "idx.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define IDX_TYPE_UBYTE 0x08

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

int idx_parse(const uint8_t *buf, size_t len, struct idx_tensor *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    if (len < 4) {
        snprintf(err, errlen, "file too short for an IDX header (%zu bytes)", len);
        return -1;
    }
    if (buf[0] != 0 || buf[1] != 0) {
        snprintf(err, errlen, "bad IDX magic %02x %02x (want 00 00)", buf[0], buf[1]);
        return -1;
    }
    if (buf[2] != IDX_TYPE_UBYTE) {
        snprintf(err, errlen, "IDX element type 0x%02x unsupported (want 0x08, unsigned byte)", buf[2]);
        return -1;
    }
    int nd = buf[3];
    if (nd < 1 || nd > IDX_MAX_DIMS) {
        snprintf(err, errlen, "IDX has %d dimensions (want 1..%d)", nd, IDX_MAX_DIMS);
        return -1;
    }
    size_t hdr = 4 + 4 * (size_t)nd;
    if (len < hdr) {
        snprintf(err, errlen, "IDX header truncated: %zu of %zu bytes", len, hdr);
        return -1;
    }
    size_t count = 1;
    for (int d = 0; d < nd; d++) {
        uint32_t n = be32(buf + 4 + 4 * d);
        if (n == 0 || count > IDX_MAX_BYTES / n) {
            snprintf(err, errlen, "IDX dimension %d has size %u (zero or total over %zu bytes)", d, n,
                     IDX_MAX_BYTES);
            return -1;
        }
        count *= n;
        out->dims[d] = n;
    }
    if (len - hdr != count) {
        snprintf(err, errlen, "IDX header promises %zu data bytes, file has %zu", count, len - hdr);
        return -1;
    }
    out->data = malloc(count);
    if (!out->data) {
        snprintf(err, errlen, "out of memory for %zu bytes", count);
        return -1;
    }
    memcpy(out->data, buf + hdr, count);
    out->ndims = nd;
    out->count = count;
    return 0;
}

/* Whole (decompressed) file into memory; bounded so a gzip bomb stops early. */
static int read_all(const char *path, uint8_t **bufp, size_t *lenp, char *err, size_t errlen)
{
    gzFile f = gzopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno ? errno : ENOMEM));
        return -1;
    }
    size_t cap = 1 << 20, len = 0;
    uint8_t *buf = malloc(cap);
    int rc = -1;
    if (!buf) {
        snprintf(err, errlen, "%s: out of memory", path);
        goto close;
    }
    for (;;) {
        if (len == cap) {
            if (cap > IDX_MAX_BYTES) {
                snprintf(err, errlen, "%s: larger than %zu bytes", path, IDX_MAX_BYTES);
                goto close;
            }
            uint8_t *nb = realloc(buf, cap * 2);
            if (!nb) {
                snprintf(err, errlen, "%s: out of memory", path);
                goto close;
            }
            buf = nb;
            cap *= 2;
        }
        int n = gzread(f, buf + len, (unsigned)(cap - len));
        if (n < 0) {
            int zerr;
            const char *msg = gzerror(f, &zerr);
            snprintf(err, errlen, "%s: read failed: %s", path, zerr == Z_ERRNO ? strerror(errno) : msg);
            goto close;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    *bufp = buf;
    *lenp = len;
    buf = NULL;
    rc = 0;
close:
    free(buf);
    gzclose(f);
    return rc;
}

int idx_load(const char *path, struct idx_tensor *out, char *err, size_t errlen)
{
    uint8_t *buf;
    size_t len;
    memset(out, 0, sizeof(*out));
    if (read_all(path, &buf, &len, err, errlen) != 0)
        return -1;
    char why[200];
    int rc = idx_parse(buf, len, out, why, sizeof(why));
    if (rc != 0)
        snprintf(err, errlen, "%s: %s", path, why);
    free(buf);
    return rc;
}

void idx_free(struct idx_tensor *t)
{
    free(t->data);
    memset(t, 0, sizeof(*t));
}
