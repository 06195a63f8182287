/* c_qsgd_ring.c - QSGD compressed allreduce by a ring that re-quantises per hop.
 *
 * Alistarh et al., "QSGD" (NeurIPS 2017), Section 3.1 quantiser Q (lib/codec/qsgd.h).
 * Quantised codes cannot be added as they are, so each hop of a ring reduce-scatter
 * decodes what it received, adds its own block and quantises the partial sum again:
 *
 *   chunk cut into P blocks of whole buckets (crux_qsgd_ring_block);
 *   hop 0:      rank r sends Q_0(x_r[block r]) to rank r+1
 *   hop h > 0:  rank r received Q_{h-1}(p) of block b = r-h (mod P) from rank r-1;
 *               p' = x_r[b] + decode(Q_{h-1}(p));  sends Q_h(p') to r+1   (h < P-1)
 *   owner:      after hop P-2 rank r holds the full sum of block r+1 in floats and
 *               quantises it once more, Q_{P-1}; the P final payloads are allgathered
 *               (ring), and every rank decodes the same bytes: out is bit-identical.
 *
 * Each Q_h draws fresh noise (key = f(seed, call, chunk, h), element index = its
 * global offset), so E[Q_h(p)] = p at every hop and the result is unbiased. The price
 * is variance: block b goes through P quantisations scaled by partial sums of 1..P
 * ranks, where the allgather (algo/c_qsgd.c) quantises each rank's vector once. The
 * gain is bytes: 2(P-1)/P * n/2 per rank instead of (P-1) * n/2 (4-bit codes).
 * Addition order (documented for the tests' simulation): p' = x_r[i] + Q_i.
 *
 * One chunk is one queued step (the FIFO runs one at a time); the caller decodes
 * chunk i while chunk i+1's ring runs.
 */
#include <string.h>

#include "lib/codec/qsgd.h"
#include "lib/compress.h"

#define TAG_RS 0x7000u
#define TAG_AG 0x7400u

enum { PH_START = 0, PH_RS, PH_AG, PH_DONE };

void crux_qsgd_ring_block(const struct crux_qsgd *q, size_t len, int P, int b, size_t *lo, size_t *hi)
{
    size_t nb = (len + (size_t)q->bucket - 1) / (size_t)q->bucket;
    size_t a = nb * (size_t)b / (size_t)P, z = nb * (size_t)(b + 1) / (size_t)P;
    *lo = a * (size_t)q->bucket < len ? a * (size_t)q->bucket : len;
    *hi = z * (size_t)q->bucket < len ? z * (size_t)q->bucket : len;
}

uint32_t crux_qsgd_ring_key(uint64_t seed, uint64_t call, size_t chunk, int hop)
{
    uint64_t z = seed ^ (call * 0x9e3779b97f4a7c15ull) ^ ((uint64_t)chunk << 32) ^
                 ((uint64_t)(uint32_t)hop * 0xbf58476d1ce4e5b9ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull; /* splitmix64 finaliser */
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (uint32_t)(z ^ (z >> 31));
}

static int mod(int a, int P) { return ((a % P) + P) % P; }

/* Block b's geometry within the step: elements [lo, hi), payload at buf + layout off. */
struct qblock {
    size_t lo, len, bytes, off;
};

static struct qblock qblock(const struct cx_step *s, int b)
{
    const struct crux_compressor *c = s->cx;
    int P = c->comm->size;
    struct qblock k = { 0, 0, 0, 0 };
    size_t hi;
    for (int j = 0; j <= b; j++) {
        crux_qsgd_ring_block(&c->q, s->clen, P, j, &k.lo, &hi);
        k.off += j ? k.bytes : 0;
        k.len = hi - k.lo;
        k.bytes = crux_qsgd_encoded_bytes(&c->q, k.len);
    }
    return k;
}

/* Scratch regions of the step buffer after the layout of the P final payloads. */
static uint8_t *rs_recv_buf(const struct cx_step *s)
{
    size_t layout = crux_qsgd_encoded_bytes(&s->cx->q, s->clen);
    return s->buf + ((layout + 63) & ~(size_t)63);
}
static uint8_t *rs_send_buf(const struct cx_step *s)
{
    size_t layout = crux_qsgd_encoded_bytes(&s->cx->q, s->clen);
    return rs_recv_buf(s) + ((layout + 63) & ~(size_t)63);
}

static void quantise(struct cx_step *s, const float *x, const struct qblock *k, int hop, uint8_t *out)
{
    struct crux_compressor *c = s->cx;
    double t = cx_tic();
    crux_qsgd_encode_pool(c->pool, &c->q, x, k->len, cx_chunk_off(c, s->chunk) + k->lo,
                          crux_qsgd_ring_key(c->cfg.seed, c->calls, s->chunk, hop), out);
    c->st.encode_s += cx_tic() - t;
}

/* Post hop h of the reduce-scatter: send our partial of block r-h, receive r-h-1. */
static int rs_post(struct crux_coll *op, struct cx_step *s, int h)
{
    int P = op->comm->size, r = op->comm->rank;
    struct qblock out = qblock(s, mod(r - h, P)), in = qblock(s, mod(r - h - 1, P));
    if (out.len) /* hop 0 sends our own block, later hops the partial sum in est */
        quantise(s, h == 0 ? s->src + out.lo : s->cx->est, &out, h, rs_send_buf(s));
    if (out.bytes)
        CRUX_TRY(crux_coll_send(op, (r + 1) % P, TAG_RS + (uint32_t)h, rs_send_buf(s), out.bytes,
                                NULL, NULL));
    if (in.bytes)
        CRUX_TRY(crux_coll_recv(op, mod(r - 1, P), TAG_RS + (uint32_t)h, rs_recv_buf(s), in.bytes, NULL));
    return CRUX_SUCCESS;
}

/* Hop h arrived: est = our block + the decoded partial sum. */
static int rs_absorb(struct crux_coll *op, struct cx_step *s, int h)
{
    struct crux_compressor *c = s->cx;
    int P = op->comm->size, r = op->comm->rank;
    struct qblock in = qblock(s, mod(r - h - 1, P));
    if (!in.len)
        return CRUX_SUCCESS;
    if (crux_qsgd_validate(&c->q, rs_recv_buf(s), in.bytes, in.len) != CRUX_SUCCESS) {
        crux_error(CRUX_SUBSYS_CODEC, "QSGD ring chunk %zu hop %d: the payload from rank %d does "
                   "not decode as %zu elements at %d levels: ranks disagree", s->chunk, h,
                   mod(r - 1, P), in.len, c->q.levels);
        return CRUX_ERR_MISMATCH;
    }
    double t = cx_tic();
    memcpy(c->est, s->src + in.lo, in.len * sizeof(float));
    crux_qsgd_decode_add(&c->q, rs_recv_buf(s), in.len, c->est);
    c->st.decode_s += cx_tic() - t;
    return CRUX_SUCCESS;
}

/* Allgather step a: send the final payload of block r+1-a, receive block r-a. */
static int ag_post(struct crux_coll *op, struct cx_step *s, int a)
{
    int P = op->comm->size, r = op->comm->rank;
    struct qblock out = qblock(s, mod(r + 1 - a, P)), in = qblock(s, mod(r - a, P));
    if (out.bytes)
        CRUX_TRY(crux_coll_send(op, (r + 1) % P, TAG_AG + (uint32_t)a, s->buf + out.off, out.bytes,
                                NULL, NULL));
    if (in.bytes)
        CRUX_TRY(crux_coll_recv(op, mod(r - 1, P), TAG_AG + (uint32_t)a, s->buf + in.off, in.bytes, NULL));
    return CRUX_SUCCESS;
}

int crux_qsgd_ring_step(struct crux_coll *op)
{
    struct cx_step *s = (struct cx_step *)op;
    int P = op->comm->size, r = op->comm->rank;
    for (;;) {
        switch (op->phase) {
        case PH_START:
            if (P == 1) { /* the owner's final quantisation is all there is */
                struct qblock all = qblock(s, 0);
                quantise(s, s->src, &all, 0, s->buf);
                op->phase = PH_DONE;
                return CRUX_SUCCESS;
            }
            s->round = 0;
            CRUX_TRY(rs_post(op, s, 0));
            op->phase = PH_RS;
            break;
        case PH_RS:
            CRUX_TRY(rs_absorb(op, s, s->round));
            if (++s->round < P - 1) {
                CRUX_TRY(rs_post(op, s, s->round));
                break;
            }
            { /* we own block r+1 now: its final payload goes into the layout */
                struct qblock own = qblock(s, mod(r + 1, P));
                if (own.len)
                    quantise(s, s->cx->est, &own, P - 1, s->buf + own.off);
            }
            s->round = 0;
            CRUX_TRY(ag_post(op, s, 0));
            op->phase = PH_AG;
            break;
        case PH_AG:
            if (++s->round < P - 1) {
                CRUX_TRY(ag_post(op, s, s->round));
                break;
            }
            op->phase = PH_DONE;
            return CRUX_SUCCESS;
        default:
            return CRUX_SUCCESS;
        }
        if (op->nxfers)
            return CRUX_INPROGRESS; /* else nothing to move at this hop: go on */
    }
}

/* out[chunk] = the decoded final payloads (every rank the same bytes). */
static int qring_decode_chunk(struct crux_compressor *c, struct cx_step *s, float *out)
{
    int P = c->comm->size, mine = (c->comm->rank + 1) % P;
    size_t off = cx_chunk_off(c, s->chunk);
    double t = cx_tic();
    for (int b = 0; b < P; b++) {
        struct qblock k = qblock(s, b);
        if (b != mine && crux_qsgd_validate(&c->q, s->buf + k.off, k.bytes, k.len) != CRUX_SUCCESS) {
            crux_error(CRUX_SUBSYS_CODEC, "QSGD ring chunk %zu: the final payload of block %d (from "
                       "rank %d) does not decode as %zu elements: ranks disagree", s->chunk, b,
                       mod(b - 1, P), k.len);
            return CRUX_ERR_MISMATCH;
        }
        memset(out + off + k.lo, 0, k.len * sizeof(float));
        crux_qsgd_decode_add(&c->q, s->buf + k.off, k.len, out + off + k.lo);
    }
    c->st.decode_s += cx_tic() - t;
    return CRUX_SUCCESS;
}

int crux_qsgd_ring_allreduce(struct crux_compressor *c, const float *grad, float *out)
{
    struct cx_step *prev = NULL;
    for (size_t ch = 0; ch < c->nchunks; ch++) {
        struct cx_step *s;
        CRUX_TRY(cx_post_qring(c, ch, grad + cx_chunk_off(c, ch), &s));
        if (prev) {
            CRUX_TRY(cx_wait(c, prev));
            CRUX_TRY(qring_decode_chunk(c, prev, out));
        }
        prev = s;
    }
    CRUX_TRY(cx_wait(c, prev));
    CRUX_TRY(qring_decode_chunk(c, prev, out));
    c->st.nnz = c->n;
    return CRUX_SUCCESS;
}
