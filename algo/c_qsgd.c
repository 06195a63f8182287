/* c_qsgd.c - QSGD compressed allreduce by allgather of quantised payloads.
 *
 * Alistarh et al., "QSGD: Communication-Efficient SGD via Gradient Quantization and
 * Encoding", NeurIPS 2017 (arXiv 1610.02132): each rank sends Q_s(v) (its Section 3.1
 * quantiser, bucketed, see lib/codec/qsgd.h), every rank decodes all P payloads and sums
 * them. Quantised codes cannot be added on the wire, so the exchange is an allgather:
 * every rank receives (P - 1) payloads of n/2 bytes (4-bit codes) instead of a ring
 * allreduce's 2(P-1)/P * 4n. The alternative, a ring that dequantises, adds and
 * re-quantises at every hop, sends less at large P but compounds the quantisation
 * variance P - 1 times and puts a decode + encode on the critical path of every step;
 * it is not implemented.
 *
 * Order: payloads are decoded into out in rank order 0..P-1 on every rank, so the
 * result is bit-identical everywhere. Pipelining: chunk i+1 is encoded while chunk i's
 * allgather runs; chunk i is decoded while chunk i+1's runs.
 *
 * Memory: none (QSGD is unbiased), or residual error feedback: mem = acc - Q(acc).
 */
#include <string.h>

#include "lib/codec/qsgd.h"
#include "lib/compress.h"

/* The random stream differs per call, chunk and rank, and is the same for a rank on
 * every run with the same seed. */
static uint32_t qsgd_key(const struct crux_compressor *c)
{
    uint64_t k = c->cfg.seed ^ (c->calls * 0x9e3779b97f4a7c15ull) ^
                 ((uint64_t)c->comm->rank << 40);
    return (uint32_t)(k ^ k >> 32);
}

/* Encode chunk ch into out_bytes (this rank's block of the allgather buffer). */
static int qsgd_encode_chunk(struct crux_compressor *c, size_t ch, const float *grad,
                             uint8_t *slot)
{
    size_t off = cx_chunk_off(c, ch), len = cx_chunk_len(c, ch);
    if (c->cfg.memory == CRUX_MEMORY_NONE) { /* unbiased as it is: encode grad itself */
        crux_qsgd_encode_pool(c->pool, &c->q, grad + off, len, off, qsgd_key(c), slot);
        return cx_poll(c);
    }
    CRUX_TRY(cx_accumulate(c, ch, grad));
    crux_qsgd_encode_pool(c->pool, &c->q, c->acc + off, len, off, qsgd_key(c), slot);
    /* residual error feedback: mem = acc - Q(acc) */
    if (c->mem != c->acc)
        memcpy(c->mem + off, c->acc + off, len * 4);
    crux_qsgd_decode_sub(&c->q, slot, len, c->mem + off);
    return cx_poll(c);
}

/* out[chunk] = sum over ranks, in rank order, of the decoded payloads. */
static int qsgd_decode_chunk(struct crux_compressor *c, size_t ch, const uint8_t *all,
                             float *out)
{
    size_t off = cx_chunk_off(c, ch), len = cx_chunk_len(c, ch);
    size_t bytes = crux_qsgd_encoded_bytes(&c->q, len);
    memset(out + off, 0, len * 4);
    for (int r = 0; r < c->comm->size; r++) {
        const uint8_t *p = all + (size_t)r * bytes;
        if (r != c->comm->rank && crux_qsgd_validate(&c->q, p, bytes, len) != CRUX_SUCCESS) {
            crux_error(CRUX_SUBSYS_CODEC, "QSGD chunk %zu: the payload of rank %d does not "
                       "decode as %zu elements at %d levels: ranks disagree", ch, r, len,
                       c->q.levels);
            return CRUX_ERR_MISMATCH;
        }
        crux_qsgd_decode_add(&c->q, p, len, out + off);
    }
    return CRUX_SUCCESS;
}

static int qsgd_finish_chunk(struct crux_compressor *c, struct cx_step *s, size_t ch,
                             float *out)
{
    CRUX_TRY(cx_wait(c, s));
    double t = cx_tic();
    int rc = qsgd_decode_chunk(c, ch, s->buf, out);
    c->st.decode_s += cx_tic() - t;
    return rc;
}

int crux_qsgd_allreduce(struct crux_compressor *c, const float *grad, float *out)
{
    struct cx_step *prev = NULL;
    for (size_t ch = 0; ch < c->nchunks; ch++) {
        size_t bytes = crux_qsgd_encoded_bytes(&c->q, cx_chunk_len(c, ch));
        uint8_t *buf;
        CRUX_TRY(cx_next_buf(c, &buf));
        double t = cx_tic();
        CRUX_TRY(qsgd_encode_chunk(c, ch, grad, buf + (size_t)c->comm->rank * bytes));
        c->st.encode_s += cx_tic() - t;
        struct cx_step *s;
        CRUX_TRY(cx_post_allgather(c, bytes, &s));
        if (prev)
            CRUX_TRY(qsgd_finish_chunk(c, prev, ch - 1, out));
        prev = s;
    }
    if (prev)
        CRUX_TRY(qsgd_finish_chunk(c, prev, c->nchunks - 1, out));
    c->st.nnz = c->n;
    return CRUX_SUCCESS;
}
