/* compress.h - the compressor object and the pipeline the compressed schedules
 * (algo/c_*.c) are written against.
 *
 * Pipeline: communication steps (a dense allreduce of values or sketches, a
 * variable-length broadcast, a gTop-k tree) are queued in a small FIFO and run one
 * at a time, in posting order, through the same transfer machinery as every
 * collective (struct crux_coll). Posting order is identical on every rank, so the
 * per-peer FIFO message matching of the transports holds. Between the CPU's
 * encode sub-blocks the schedules call cx_poll(), which advances the head step:
 * encoding chunk i+1 overlaps the transfer of chunk i.
 */
#ifndef CRUX_COMPRESS_H
#define CRUX_COMPRESS_H

#include <string.h>

#include "codec/codec.h"
#include "codec/pool.h"
#include "codec/qsgd.h"
#include "crux_internal.h"

#define CX_FIFO 16                     /* most communication steps queued at once */
#define CX_POLL_ELEMS ((size_t)16384)  /* encode sub-block between two polls */

enum cx_step_kind { CX_ALLREDUCE = 1, CX_BCAST_VAR, CX_GTOPK, CX_ALLGATHER, CX_QRING };

/* One queued communication step. */
struct cx_step {
    struct crux_coll coll;      /* the schedule state; coll.fn drives it */
    struct crux_compressor *cx;
    int kind;                   /* enum cx_step_kind */
    int started, done;
    double t_start;
    /* CX_BCAST_VAR: the root's frame in buf reaches every rank (see cx_frame) */
    uint64_t len;               /* payload bytes of the frame in buf, once known */
    uint8_t *buf;               /* cx->stepbuf slice, cap bytes */
    size_t cap, head;
    /* CX_GTOPK: the chunk being merged (see algo/c_gtopk.c) */
    size_t chunk, clen, k;
    int round;
    /* CX_QRING: this rank's contribution to the chunk (see algo/c_qsgd_ring.c) */
    const float *src;
};

struct crux_compressor {
    struct crux_comm *comm;
    crux_compress_config_t cfg;
    size_t n;                   /* elements */
    size_t chunk_len, nchunks;  /* every chunk chunk_len long but the last */
    size_t kmax;                /* largest per-chunk k */
    size_t cand_max;            /* largest sketch candidate count (2k) */
    uint64_t calls;             /* t: leader of CLT-k is t mod P */
    int add_out;                /* this call adds into out (crux_compressed_allreduce_add) */
    int zero_wide;              /* cx_zero_wide(), probed at create */
    float *mem, *acc;           /* [n] memory and memory + grad (acc == mem for residual;
                                   DGC: mem = v) */
    float *mom;                 /* [n] DGC momentum u (CRUX_MEMORY_MOMENTUM) */
    struct crux_qsgd q;         /* QSGD quantiser */
    double density_max;         /* density at create: buffers are sized for it */
    double clip;                /* DGC global clipping norm, 0 = off */
    uint32_t *idx;              /* [nchunks * cand_max] indices per chunk */
    float *val;                 /* [nchunks * cand_max] values per chunk */
    size_t *nk;                 /* [nchunks] entries in idx/val per chunk */
    uint32_t *lidx;             /* [nchunks * kmax] gTop-k: local selection */
    float *lval;
    size_t *lk;
    uint32_t *tidx;             /* [4 * kmax] gTop-k: received + merged lists */
    float *tval;
    uint32_t *sent;             /* [cand_max] scratch: indices to clear in memory */
    struct crux_topk_ws *ws;
    struct crux_pool *pool;     /* encode workers (CRUX_ENCODE_THREADS), NULL = this thread */
    struct crux_sketch *sk;     /* [nchunks] (SKETCH) */
    float *est;                 /* [chunk_len] sketch estimates; QSGD ring partial sums */
    uint8_t *stepbuf;           /* [depth * stepcap] encoded messages */
    size_t stepcap;
    uint8_t *encbuf;            /* [stepcap] this rank's encoded message */
    struct cx_step fifo[CX_FIFO];
    int depth;                  /* slots in use, <= CX_FIFO (see cx_fifo_depth) */
    int head, nsteps;           /* queued steps: fifo[head .. head + nsteps) mod depth */
    crux_compress_stats_t st;   /* of the call in progress / the last call */
    double t_comm_busy;         /* start of the current busy period of the FIFO */
};

/* Framed message: [8-byte payload length | payload]. The first `head` bytes go as
 * one message, so the length rides with the start of the payload; only a payload
 * longer than head - 8 needs a second message (the tail). head is a function of the
 * chunk's k, the same on every rank, sized for the typical encoding (2 bytes per
 * index: gaps below 16384), so most messages take one latency, not two. */
#define CX_FRAME_HDR 8
static inline uint64_t cx_frame_len(const uint8_t *f)
{
    uint64_t l;
    memcpy(&l, f, sizeof(l));
    return l;
}
static inline void cx_frame_set_len(uint8_t *f, uint64_t l) { memcpy(f, &l, sizeof(l)); }
static inline size_t cx_frame_tail(size_t head, uint64_t len)
{
    return CX_FRAME_HDR + len > head ? (size_t)(CX_FRAME_HDR + len - head) : 0;
}
/* head for k indices (+ k floats with vals). */
size_t cx_frame_head(const struct crux_compressor *c, size_t k, int vals);

/* Chunk geometry. */
static inline size_t cx_chunk_off(const struct crux_compressor *c, size_t ch) { return ch * c->chunk_len; }
static inline size_t cx_chunk_len(const struct crux_compressor *c, size_t ch)
{
    size_t off = cx_chunk_off(c, ch);
    return c->n - off < c->chunk_len ? c->n - off : c->chunk_len;
}
/* k of a chunk: round(density * len), at least 1. */
size_t cx_chunk_k(const struct crux_compressor *c, size_t len);

/* Queue steps (they start once every earlier step has finished). The returned
 * step stays valid until it is done and the FIFO moves past it. */
int cx_post_allreduce(struct crux_compressor *c, float *vals, size_t count, struct cx_step **out);
int cx_post_bcast_var(struct crux_compressor *c, int root, const void *src, size_t len,
                      size_t head, struct cx_step **out);
int cx_post_gtopk(struct crux_compressor *c, size_t chunk, struct cx_step **out);
/* Fixed-size allgather in place: the buffer of the step the next post will use
 * (cx_next_buf, waiting for room in the FIFO) holds P blocks of `bytes`; fill this
 * rank's block, then post. The step's buf keeps the result until the FIFO wraps. */
int cx_next_buf(struct crux_compressor *c, uint8_t **buf);
int cx_post_allgather(struct crux_compressor *c, size_t bytes, struct cx_step **out);
/* QSGD ring of a chunk whose contribution is src (chunk-relative); the result,
 * P quantised blocks, is left in the step's buf (algo/c_qsgd_ring.c). */
int cx_post_qring(struct crux_compressor *c, size_t chunk, const float *src, struct cx_step **out);
/* Advance the queue without blocking (between encode sub-blocks). */
int cx_poll(struct crux_compressor *c);
/* Block until s (and everything before it) is done; NULL = the whole queue. */
int cx_wait(struct crux_compressor *c, struct cx_step *s);

/* acc[chunk] = mem[chunk] + grad[chunk], polling the queue between sub-blocks. */
int cx_accumulate(struct crux_compressor *c, size_t chunk, const float *grad);
/* The same, and out[chunk] = 0 in the same pass (out may be grad). */
int cx_accumulate_zero(struct crux_compressor *c, size_t chunk, const float *grad, float *out);
/* out[off, off+m) = 0 once grad there was read (out may be grad): plain stores when they
 * alias (the lines are cached), non-temporal ones into a separate out (64-byte ones when
 * wide, see cx_zero_wide). */
void cx_zero_out(float *out, const float *grad, size_t n, size_t off, size_t m, int wide);
/* Whether this CPU has 64-byte non-temporal stores (AVX-512F). */
int cx_zero_wide(void);
/* Memory update of a chunk after sent[0..k) (chunk-relative, ascending) left. */
void cx_mem_update(struct crux_compressor *c, size_t chunk, const uint32_t *sent, size_t k);
/* out[chunk] = 0 except out[idx] = val; with c->add_out only out[idx] += val. */
void cx_write_out(struct crux_compressor *c, size_t chunk, float *out, const uint32_t *idx,
                  const float *val, size_t k);

/* Time accounting: encode/decode are the CPU's, comm the FIFO's busy time. */
static inline double cx_tic(void) { return crux_now(); }

/* The schedules (one file each). */
int crux_cltk_allreduce(struct crux_compressor *c, const float *grad, float *out);  /* algo/c_cltk.c */
int crux_gtopk_allreduce(struct crux_compressor *c, const float *grad, float *out); /* algo/c_gtopk.c */
int crux_sketch_allreduce(struct crux_compressor *c, const float *grad, float *out); /* algo/c_sketch.c */
int crux_topk_allreduce(struct crux_compressor *c, const float *grad, float *out);   /* algo/c_topk.c (DGC) */
int crux_qsgd_allreduce(struct crux_compressor *c, const float *grad, float *out);   /* algo/c_qsgd.c */
int crux_qsgd_ring_allreduce(struct crux_compressor *c, const float *grad, float *out); /* algo/c_qsgd_ring.c */
int crux_qsgd_ring_step(struct crux_coll *op);  /* coll.fn of a CX_QRING step */
/* QSGD ring geometry, shared with the tests' simulation: block b of a chunk of len
 * elements is [lo, hi), whole buckets; the key of the quantisation at hop h (0..P-2
 * the reduce-scatter, P-1 the owner's final one) of call `call`. */
void crux_qsgd_ring_block(const struct crux_qsgd *q, size_t len, int P, int b, size_t *lo, size_t *hi);
uint32_t crux_qsgd_ring_key(uint64_t seed, uint64_t call, size_t chunk, int hop);
/* algo/c_gtopk.c: the tree schedule of one chunk (coll.fn of a CX_GTOPK step). */
int crux_gtopk_tree(struct crux_coll *op);

#endif
