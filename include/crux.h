/*
 * crux.h - the public API of crux, an RDMA-native allreduce library.
 *
 * MPI-like: every call returns CRUX_SUCCESS (0) or a CRUX_ERR_* code; the log
 * line printed before a failing return says what failed, where and which peer.
 *
 * Semantics:
 *  - Results are bit-identical on all ranks, and from run to run for the same
 *    rank count, count, algorithm, transport and host layout (which ranks share
 *    a host). Reduction order: recursive
 *    doubling combines pairs of partial results (a op b == b op a exactly for
 *    every op crux offers, so both partners hold the same bits); the ring
 *    reduces each block in ring order starting at the block's owner + 1 and the
 *    owner's fully reduced block is then copied to every rank. hier: each node
 *    first reduces every slice in its intra-node ring order (owner + 1 first,
 *    owner last), then the node partials of each sub-block in ring order of the
 *    nodes (owner node + 1 first); tree: each tree node combines its own value,
 *    then its children's partials in increasing tree position (the first half of
 *    the vector follows tree 1, the second tree 2). Both copy the result out.
 *  - Any count (0 included), any rank count >= 1, any buffer alignment,
 *    CRUX_IN_PLACE for sendbuf.
 *  - float16/bfloat16 are reduced in float and rounded to nearest even after
 *    each pairwise combine.
 *  - No call hangs forever: a dead or stalled peer becomes CRUX_ERR_PEER or
 *    CRUX_ERR_TIMEOUT within CRUX_TIMEOUT seconds; ranks that call a collective
 *    with different count/dtype/op get CRUX_ERR_MISMATCH. After such an error
 *    the communicator may only be freed.
 *  - Collectives on communicators that share ranks must be issued in the same
 *    order on every rank (stricter than MPI for nonblocking ones; a violation is
 *    detected and reported as CRUX_ERR_MISMATCH, never silent corruption).
 *  - Not thread-safe per communicator (like MPI_THREAD_FUNNELED).
 */
#ifndef CRUX_H
#define CRUX_H

#include <stddef.h>
#include <stdint.h>

#include "crux_version.h"

#ifdef __cplusplus
extern "C" {
#endif

/* libcrux.so exports only what this header declares: the library is built with
 * hidden visibility, so its internals neither collide with the application's
 * symbols nor go through the PLT inside the library. */
#if defined(__GNUC__)
#define CRUX_API __attribute__((visibility("default")))
#else
#define CRUX_API
#endif

enum {
    CRUX_SUCCESS = 0,
    CRUX_ERR_ARG,
    CRUX_ERR_NOMEM,
    CRUX_ERR_NOT_INITIALIZED,
    CRUX_ERR_BOOTSTRAP,
    CRUX_ERR_TRANSPORT,
    CRUX_ERR_PEER,
    CRUX_ERR_TIMEOUT,
    CRUX_ERR_MISMATCH, /* ranks disagree on count/dtype/op/config */
    CRUX_ERR_UNSUPPORTED,
    CRUX_ERR_INTERNAL
};

typedef struct crux_comm *crux_comm_t;

CRUX_API int crux_init(int *argc, char ***argv); /* argc/argv may be NULL */
CRUX_API int crux_finalize(void);
CRUX_API int crux_initialized(int *flag);
/* Ends every rank of comm with a non-zero exit. */
CRUX_API int crux_abort(crux_comm_t comm, int errorcode);
CRUX_API double crux_wtime(void);
CRUX_API const char *crux_error_string(int err);

CRUX_API crux_comm_t crux_comm_world(void);
#define CRUX_COMM_WORLD (crux_comm_world())
CRUX_API int crux_comm_rank(crux_comm_t, int *rank);
CRUX_API int crux_comm_size(crux_comm_t, int *size);
CRUX_API int crux_comm_split(crux_comm_t, int color, int key, crux_comm_t *newcomm);
CRUX_API int crux_comm_split_type_node(crux_comm_t, crux_comm_t *nodecomm); /* ranks on my host */
CRUX_API int crux_comm_free(crux_comm_t *);

/* color for crux_comm_split: this rank gets no communicator (*newcomm = NULL) */
#define CRUX_UNDEFINED (-32766)

typedef enum {
    CRUX_FLOAT,
    CRUX_DOUBLE,
    CRUX_INT32,
    CRUX_INT64,
    CRUX_UINT8,
    CRUX_FLOAT16,
    CRUX_BFLOAT16
} crux_datatype_t;
typedef enum { CRUX_SUM, CRUX_PROD, CRUX_MAX, CRUX_MIN } crux_op_t;
#define CRUX_IN_PLACE ((void *)1)

CRUX_API int crux_allreduce(const void *sendbuf, void *recvbuf, size_t count, crux_datatype_t,
                            crux_op_t, crux_comm_t);
CRUX_API int crux_reduce_scatter_block(const void *sendbuf, void *recvbuf, size_t recvcount,
                                       crux_datatype_t, crux_op_t, crux_comm_t);
CRUX_API int crux_allgather(const void *sendbuf, size_t count, void *recvbuf, crux_datatype_t,
                            crux_comm_t);
CRUX_API int crux_bcast(void *buf, size_t count, crux_datatype_t, int root, crux_comm_t);
CRUX_API int crux_barrier(crux_comm_t);

typedef struct crux_request *crux_request_t;
#define CRUX_REQUEST_NULL ((crux_request_t)0)
CRUX_API int crux_iallreduce(const void *sendbuf, void *recvbuf, size_t count, crux_datatype_t,
                             crux_op_t, crux_comm_t, crux_request_t *req);
CRUX_API int crux_wait(crux_request_t *req);           /* sets *req = CRUX_REQUEST_NULL */
CRUX_API int crux_test(crux_request_t *req, int *done); /* on done, *req = CRUX_REQUEST_NULL */

/* ------------------------------------------------------------------------------
 * Compressed allreduce of gradients (float32).
 *
 * A compressor is created once per (communicator, count, config) by every rank of
 * the communicator, with the same count and config on every rank (checked:
 * CRUX_ERR_MISMATCH otherwise). It owns all scratch (memories, accumulators,
 * index/value buffers, sketch tables, encoded buffers), so a call allocates
 * nothing. Each call computes
 *     out = estimate of SUM over ranks of (grad + this rank's memory)
 * and updates the memory (error feedback) with what was not sent. The vector is
 * cut into chunks of CRUX_COMPRESS_CHUNK_BYTES; each chunk keeps
 * k = max(1, round(density * chunk_len)) entries, and the encoding of chunk i+1
 * overlaps the transfer of chunk i.
 *
 *  - CRUX_CODEC_CLTK (ScaleCom): at call t the leader is rank t mod P; its top-k
 *    indices (of memory + grad) are broadcast and every rank contributes its
 *    values there; out = the sums at those indices, 0 elsewhere.
 *  - CRUX_CODEC_GTOPK: local top-k, merged pairwise up a tree (sum on the union,
 *    re-select top-k), the global top-k broadcast back; out = its sums.
 *  - CRUX_CODEC_SKETCH: Count Sketches of memory + grad are summed; the k heavy
 *    hitters of the summed sketch are the shared indices of a second round that
 *    sums the exact values there.
 *
 * Results are bit-identical on all ranks and from run to run: values are summed
 * by the dense allreduce (its fixed order) or by the fixed tree of gTop-k.
 * Calls must not overlap nonblocking requests on the same communicator.
 * ------------------------------------------------------------------------------ */
typedef enum {
    CRUX_CODEC_NONE,
    CRUX_CODEC_CLTK, /* ScaleCom cyclic local top-k */
    CRUX_CODEC_GTOPK,
    CRUX_CODEC_TOPK, /* DGC: per-rank top-k + momentum correction, sparse allgather */
    CRUX_CODEC_SKETCH,
    CRUX_CODEC_QSGD /* stochastic quantisation, buckets of 512, allgather or ring (qsgd_reduce) */
} crux_codec_t;

typedef enum {
    CRUX_MEMORY_NONE,     /* unsent mass is dropped */
    CRUX_MEMORY_RESIDUAL, /* error feedback: memory = what was not sent */
    CRUX_MEMORY_LOWPASS,  /* ScaleCom: memory = (1-beta) memory + beta (acc - sent) */
    CRUX_MEMORY_MOMENTUM  /* DGC (codec topk only): u = beta u + g; v += u; sent from v,
                             then u and v masked where sent */
} crux_memory_t;

typedef struct {
    crux_codec_t codec;
    crux_memory_t memory;
    double density;               /* kept fraction, in (0, 1], e.g. 0.001 */
    float beta;                   /* low-pass coefficient in (0, 1] (1 = residual);
                                     DGC: the momentum (default 0.9) */
    int sketch_rows, sketch_cols; /* rows 1..8, cols per chunk; 0 = derived from density */
    int qsgd_levels;              /* s, 1..127: 1 -> 2-bit, <= 7 -> 4-bit, else 8-bit codes */
    uint64_t seed;                /* selection sampling and sketch hashes */
    int qsgd_reduce;              /* QSGD only: how payloads are summed, crux_qsgd_reduce_t */
} crux_compress_config_t;

/* QSGD reduction (cfg.qsgd_reduce). Per rank and call, n floats, 4-bit codes:
 *  ALLGATHER: every rank quantises its vector once; the payloads are allgathered and
 *    every rank decodes all P of them. Sends (P-1) * n/2 bytes; the error is the sum of
 *    P independent quantisation errors, each scaled by one rank's values.
 *  RING: reduce-scatter in which every hop decodes the partial sum it receives, adds
 *    its own block and re-quantises with fresh seeded noise; the owner quantises the
 *    finished block once more and the quantised blocks are allgathered, so every rank
 *    decodes the same bytes. Sends 2(P-1)/P * n/2 bytes (less than ALLGATHER from 3
 *    ranks on), but the P quantisations of a block are scaled by partial sums that
 *    grow with the hop, so the error is larger. Takes no memory (CRUX_MEMORY_NONE):
 *    the per-hop errors belong to no single rank. Both are unbiased.
 * README "Compressed allreduce" has the measured trade-off behind the default. */
typedef enum { CRUX_QSGD_ALLGATHER = 0, CRUX_QSGD_RING = 1 } crux_qsgd_reduce_t;

/* Defaults for codec: density 0.001, memory LOWPASS with beta 1 for CLT-k (set
 * beta < 1 for ScaleCom's filter), MOMENTUM with beta 0.9 for TOPK (DGC), NONE for
 * QSGD (7 levels: 4-bit codes), RESIDUAL otherwise; sketch 5 rows x derived
 * columns; seed 0x5eed. */
CRUX_API void crux_compress_config_init(crux_compress_config_t *cfg, crux_codec_t codec);

typedef struct crux_compressor *crux_compressor_t;
/* Collective over comm. CRUX_ERR_ARG names a bad config field (or a memory the
 * codec does not take); ranks with different count or config get
 * CRUX_ERR_MISMATCH (all of them). count 0 is an error (nothing to compress). */
CRUX_API int crux_compressor_create(crux_comm_t comm, size_t count,
                                    const crux_compress_config_t *cfg, crux_compressor_t *out);
/* out = estimate of the SUM over ranks of grad (+ this rank's memory); identical on
 * all ranks. grad and out hold count floats; out may equal grad, and must not otherwise
 * overlap it (CRUX_ERR_ARG). */
CRUX_API int crux_compressed_allreduce(crux_compressor_t c, const float *grad, float *out);
/* Opt-in adding form, for callers that consume the estimate by adding it somewhere
 * (an update or gradient-sum buffer they clear themselves): out[i] += estimate[i] at
 * the entries the estimate keeps (one float addition each, out + sum), and every
 * other entry of out is left untouched (not read, not written). Communication,
 * memories and the estimate are exactly those of crux_compressed_allreduce; it only
 * skips writing count floats of zeros, a quarter of CLT-k's memory traffic. Codecs
 * CLTK, GTOPK and SKETCH (TOPK and QSGD sum the ranks' blocks in out itself:
 * CRUX_ERR_ARG); out must not overlap grad (CRUX_ERR_ARG). Both checks come before
 * anything is sent. Calls of both forms may alternate on one compressor. */
CRUX_API int crux_compressed_allreduce_add(crux_compressor_t c, const float *grad, float *out);

/* Bytes: wire_bytes counts the payload of every message this rank sent during the
 * call (transport headers excluded), whatever it carries: indices, values, sketches,
 * norms, and blocks it forwards for others in an allgather or a ring. The fair dense
 * reference is ring_bytes, what this rank sends in a dense ring allreduce of the same
 * vector, 2(P-1)/P * count * 4 (bandwidth-optimal; recursive doubling and trees send
 * more). Compression ratio = ring_bytes / wire_bytes, comparable across codecs and P:
 * the allgather codecs (topk, QSGD) send O(P) payloads, so theirs falls as P grows. */
typedef struct {
    uint64_t wire_bytes;  /* payload bytes this rank sent during the call */
    uint64_t dense_bytes; /* the vector's size: count * 4 */
    double encode_s;      /* CPU time in accumulate / select / sketch / gather */
    double comm_s;        /* time transfers were in flight (overlaps encode) */
    double decode_s;      /* scatter into out and memory update */
    double total_s;       /* wall time of the call: < encode_s + comm_s when overlapped */
    size_t nnz;           /* non-zeros sent in the result (sum of k over chunks) */
    uint64_t ring_bytes;  /* a dense ring allreduce's bytes per rank: 2(P-1)/P * count * 4,
                             rounded down; 0 on one rank */
} crux_compress_stats_t;
/* Statistics of the last crux_compressed_allreduce on c (zeros before the first). */
CRUX_API int crux_compressor_stats(crux_compressor_t c, crux_compress_stats_t *last_call);
/* Local: frees everything and sets *c = NULL (NULL is fine). */
CRUX_API int crux_compressor_free(crux_compressor_t *c);
/* DGC's density warm-up: lower the kept fraction for the following calls (e.g. 0.25,
 * 0.0625, 0.0156, 0.0039, then 0.001 over the first epochs, Lin et al. Sec. 3.4). It
 * may not exceed the density given at create (buffers are sized for it); every rank
 * must make the same call. Works for every top-k codec. */
CRUX_API int crux_compressor_set_density(crux_compressor_t c, double density);
/* DGC's local gradient clipping: each rank scales grad so ||grad||_2 <= max_norm /
 * sqrt(P) before accumulating (0 = off, the default). Codec topk only. */
CRUX_API int crux_compressor_set_clip(crux_compressor_t c, double max_norm);

/* Size in bytes of one element of a datatype (0 for an invalid one). */
CRUX_API size_t crux_datatype_size(crux_datatype_t dtype);

#ifdef __cplusplus
}
#endif
#endif /* CRUX_H */
