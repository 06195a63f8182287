/* compress.c - the compressor object (create, validate, agree, free, stats) and the
 * communication FIFO the compressed schedules run on (see compress.h). */
#include <inttypes.h>
#include <math.h>
#include <sched.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <immintrin.h>
#endif

#include "algo/algo.h"
#include "compress.h"
#include "codec/pool.h"

#define CX_TAG_HEAD 0x5100u
#define CX_TAG_TAIL 0x5101u
#define CX_MAX_ROWS 8
#define CX_MAX_COLS (1 << 26)

/* ------------------------------------------------------------------ config --- */

void crux_compress_config_init(crux_compress_config_t *cfg, crux_codec_t codec)
{
    if (!cfg)
        return;
    memset(cfg, 0, sizeof(*cfg));
    cfg->codec = codec;
    /* ScaleCom's filter is opt-in through beta < 1: beta = 1 is plain error feedback. */
    cfg->memory = codec == CRUX_CODEC_CLTK   ? CRUX_MEMORY_LOWPASS
                  : codec == CRUX_CODEC_TOPK ? CRUX_MEMORY_MOMENTUM /* DGC */
                  : codec == CRUX_CODEC_QSGD ? CRUX_MEMORY_NONE     /* unbiased as it is */
                                             : CRUX_MEMORY_RESIDUAL;
    cfg->density = 0.001;
    cfg->beta = codec == CRUX_CODEC_TOPK ? 0.9f : 1.0f; /* DGC: the momentum */
    cfg->sketch_rows = 0;
    cfg->sketch_cols = 0;
    cfg->qsgd_levels = 7; /* 4-bit codes: sign + 3-bit level */
    cfg->seed = 0x5eedull;
}

static const char *codec_name(int codec)
{
    static const char *names[] = { "none", "cltk", "gtopk", "topk", "sketch", "qsgd" };
    return codec >= 0 && codec <= CRUX_CODEC_QSGD ? names[codec] : "?";
}

static int config_check(const crux_compress_config_t *cfg, size_t count)
{
    const char *fn = "crux_compressor_create";
    if (count == 0 || count > UINT32_MAX) {
        crux_error(CRUX_SUBSYS_CODEC, "%s: count %zu: must be 1..2^32-1 (indices are 32-bit)", fn, count);
        return CRUX_ERR_ARG;
    }
    if ((unsigned)cfg->codec > CRUX_CODEC_QSGD || cfg->codec == CRUX_CODEC_NONE) {
        crux_error(CRUX_SUBSYS_CODEC, "%s: cfg.codec = %d is not a compressing codec "
                   "(cltk, gtopk, sketch; use crux_allreduce for dense)", fn, (int)cfg->codec);
        return CRUX_ERR_ARG;
    }
    if ((unsigned)cfg->memory > CRUX_MEMORY_MOMENTUM) {
        crux_error(CRUX_SUBSYS_CODEC, "%s: cfg.memory = %d is not a crux_memory_t", fn, (int)cfg->memory);
        return CRUX_ERR_ARG;
    }
    if (!(cfg->density > 0.0 && cfg->density <= 1.0)) {
        crux_error(CRUX_SUBSYS_CODEC, "%s: cfg.density = %g: must be in (0, 1]", fn, cfg->density);
        return CRUX_ERR_ARG;
    }
    if (!(cfg->beta > 0.0f && cfg->beta <= 1.0f)) {
        crux_error(CRUX_SUBSYS_CODEC, "%s: cfg.beta = %g: must be in (0, 1]", fn, (double)cfg->beta);
        return CRUX_ERR_ARG;
    }
    if (cfg->sketch_rows < 0 || cfg->sketch_rows > CX_MAX_ROWS) {
        crux_error(CRUX_SUBSYS_CODEC, "%s: cfg.sketch_rows = %d: must be 0 (default) or 1..%d", fn,
                   cfg->sketch_rows, CX_MAX_ROWS);
        return CRUX_ERR_ARG;
    }
    if (cfg->sketch_cols < 0 || cfg->sketch_cols > CX_MAX_COLS) {
        crux_error(CRUX_SUBSYS_CODEC, "%s: cfg.sketch_cols = %d: must be 0 (default) or 1..%d", fn,
                   cfg->sketch_cols, CX_MAX_COLS);
        return CRUX_ERR_ARG;
    }
    if (cfg->memory == CRUX_MEMORY_MOMENTUM && cfg->codec != CRUX_CODEC_TOPK) {
        crux_error(CRUX_SUBSYS_CODEC, "%s: cfg.memory = momentum is DGC's and needs cfg.codec = "
                   "topk (not %s)", fn, codec_name(cfg->codec));
        return CRUX_ERR_ARG;
    }
    if (cfg->codec == CRUX_CODEC_QSGD) {
        if (cfg->qsgd_levels < 1 || cfg->qsgd_levels > CRUX_QSGD_MAX_LEVELS) {
            crux_error(CRUX_SUBSYS_CODEC, "%s: cfg.qsgd_levels = %d: must be 1..%d", fn,
                       cfg->qsgd_levels, CRUX_QSGD_MAX_LEVELS);
            return CRUX_ERR_ARG;
        }
        if (cfg->memory != CRUX_MEMORY_NONE && cfg->memory != CRUX_MEMORY_RESIDUAL) {
            crux_error(CRUX_SUBSYS_CODEC, "%s: QSGD takes cfg.memory = none or residual", fn);
            return CRUX_ERR_ARG;
        }
        if (cfg->qsgd_reduce != CRUX_QSGD_ALLGATHER && cfg->qsgd_reduce != CRUX_QSGD_RING) {
            crux_error(CRUX_SUBSYS_CODEC, "%s: cfg.qsgd_reduce = %d: must be CRUX_QSGD_ALLGATHER "
                       "(0) or CRUX_QSGD_RING (1)", fn, cfg->qsgd_reduce);
            return CRUX_ERR_ARG;
        }
        if (cfg->qsgd_reduce == CRUX_QSGD_RING && cfg->memory != CRUX_MEMORY_NONE) {
            crux_error(CRUX_SUBSYS_CODEC, "%s: cfg.qsgd_reduce = ring takes cfg.memory = none "
                       "(re-quantisation errors belong to no single rank)", fn);
            return CRUX_ERR_ARG;
        }
    }
    return CRUX_SUCCESS;
}

size_t cx_chunk_k(const struct crux_compressor *c, size_t len)
{
    double want = c->cfg.density * (double)len + 0.5;
    size_t k = want >= (double)len ? len : (size_t)want;
    return k ? k : 1;
}

/* Everything that shapes the computation, so ranks that disagree are caught. */
static uint64_t config_hash(const struct crux_compressor *c, int valid)
{
    uint64_t w[] = { (uint64_t)c->n, (uint64_t)c->cfg.codec, (uint64_t)c->cfg.memory, 0, 0,
                     (uint64_t)c->cfg.sketch_rows, (uint64_t)c->cfg.sketch_cols,
                     (uint64_t)c->cfg.qsgd_levels, c->cfg.seed, (uint64_t)c->chunk_len,
                     (uint64_t)valid, (uint64_t)c->cfg.qsgd_reduce };
    memcpy(&w[3], &c->cfg.density, sizeof(double));
    uint32_t b;
    memcpy(&b, &c->cfg.beta, sizeof(b));
    w[4] = b;
    uint64_t h = 1469598103934665603ull;
    const unsigned char *p = (const unsigned char *)w;
    for (size_t i = 0; i < sizeof(w); i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h >> 2; /* -h must not overflow int64 */
}

/* All ranks learn whether every rank has the same count and config: one allreduce
 * of {h, -h} with MAX gives max and -min. */
static int config_agree(struct crux_compressor *c, int valid)
{
    int64_t h = (int64_t)config_hash(c, valid), v[2] = { h, -h };
    CRUX_TRY(crux_allreduce(CRUX_IN_PLACE, v, 2, CRUX_INT64, CRUX_MAX, c->comm));
    if (v[0] != -v[1]) {
        crux_error(CRUX_SUBSYS_CODEC, "crux_compressor_create: ranks of comm %u disagree on count "
                   "or config (this rank: count %zu codec %s density %g beta %g rows %d cols %d "
                   "seed %" PRIu64 " chunk %zu%s)", c->comm->ctx_id, c->n, codec_name(c->cfg.codec),
                   c->cfg.density, (double)c->cfg.beta, c->cfg.sketch_rows, c->cfg.sketch_cols,
                   c->cfg.seed, c->chunk_len, valid ? "" : ", invalid");
        return CRUX_ERR_MISMATCH;
    }
    return CRUX_SUCCESS;
}

/* ------------------------------------------------------------ allocation --- */

static void *cx_alloc(size_t bytes, const char *what, int *rc)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0) {
        crux_error(CRUX_SUBSYS_CODEC, "crux_compressor_create: cannot allocate %zu bytes for %s",
                   bytes, what);
        *rc = CRUX_ERR_NOMEM;
        return NULL;
    }
    memset(p, 0, bytes ? bytes : 64); /* first touch here, never in a call */
    return p;
}

static void sketch_shape(const struct crux_compressor *c, int *rows, int *cols)
{
    *rows = c->cfg.sketch_rows ? c->cfg.sketch_rows : 5;
    /* Default: 8 columns per kept entry, so the k heaviest rarely collide. */
    size_t want = 8 * c->kmax < 64 ? 64 : 8 * c->kmax;
    *cols = c->cfg.sketch_cols ? c->cfg.sketch_cols : (int)(want > CX_MAX_COLS ? CX_MAX_COLS : want);
}

/* CLT-k's leader posts two small steps per chunk and must never wait for a slot:
 * every wait is a round trip through a follower that may not be scheduled (ranks
 * sharing cores), so it gets a slot for every step of the call. The other codecs
 * wait for chunk i-1 while posting chunk i anyway, and their slots are large. */
static int cx_fifo_depth(const struct crux_compressor *c)
{
    size_t want = c->cfg.codec == CRUX_CODEC_CLTK ? 2 * c->nchunks + 1 : 4;
    return want > CX_FIFO ? CX_FIFO : want < 4 ? 4 : (int)want;
}

/* CRUX_ENCODE_THREADS, or by default this rank's share of its cpuset: ranks on one
 * host that all spawn a thread per core would oversubscribe it. */
static int cx_encode_threads(const struct crux_ctx *ctx)
{
    cpu_set_t set;
    if (ctx->cfg.encode_threads > 0 || sched_getaffinity(0, sizeof set, &set) != 0)
        return ctx->cfg.encode_threads;
    int share = CPU_COUNT(&set) / (ctx->local_size > 0 ? ctx->local_size : 1);
    return share > 1 ? share : 1;
}

static int cx_alloc_all(struct crux_compressor *c)
{
    int rc = CRUX_SUCCESS;
    size_t n = c->n, nch = c->nchunks, km = c->kmax, cm = c->cand_max;
    /* Plain error feedback needs no separate accumulator: acc = mem += grad, and the
     * update only clears the sent entries (crux_mem_residual with mem == acc). */
    int in_place = c->cfg.memory == CRUX_MEMORY_RESIDUAL || c->cfg.codec == CRUX_CODEC_TOPK ||
                   (c->cfg.memory == CRUX_MEMORY_LOWPASS && c->cfg.beta == 1.0f);
    if (!(c->mem = cx_alloc(n * 4, "the memory", &rc)))
        return rc;
    c->acc = in_place ? c->mem : cx_alloc(n * 4, "the accumulator", &rc);
    if (!c->acc || !(c->idx = cx_alloc(nch * cm * 4, "indices", &rc)) || !(c->val = cx_alloc(nch * cm * 4, "values", &rc)) ||
        !(c->nk = cx_alloc(nch * sizeof(size_t), "counts", &rc)) ||
        !(c->sent = cx_alloc(cm * 4, "sent indices", &rc)))
        return rc;
    if (crux_topk_ws_create(c->chunk_len, cm, &c->ws) != CRUX_SUCCESS) {
        crux_error(CRUX_SUBSYS_CODEC, "crux_compressor_create: top-k workspace for %zu elements, k %zu",
                   c->chunk_len, cm);
        return CRUX_ERR_NOMEM;
    }
    int threads = cx_encode_threads(c->comm->ctx);
    if ((rc = crux_pool_create(threads, &c->pool)) != CRUX_SUCCESS ||
        (rc = crux_topk_ws_use_pool(c->ws, c->pool)) != CRUX_SUCCESS) {
        crux_error(CRUX_SUBSYS_CODEC, "crux_compressor_create: encode pool of %d threads "
                   "(CRUX_ENCODE_THREADS): %s", threads, crux_error_string(rc));
        return rc;
    }
    size_t vals_bytes = 4 * km;
    if (c->cfg.codec == CRUX_CODEC_GTOPK) {
        if (!(c->lidx = cx_alloc(nch * km * 4, "local indices", &rc)) ||
            !(c->lval = cx_alloc(nch * km * 4, "local values", &rc)) ||
            !(c->lk = cx_alloc(nch * sizeof(size_t), "local counts", &rc)) ||
            !(c->tidx = cx_alloc(4 * km * 4, "merge indices", &rc)) ||
            !(c->tval = cx_alloc(4 * km * 4, "merge values", &rc)))
            return rc;
    }
    if (c->cfg.codec == CRUX_CODEC_SKETCH) {
        int rows, cols;
        sketch_shape(c, &rows, &cols);
        if (!(c->sk = cx_alloc(nch * sizeof(*c->sk), "sketches", &rc)) ||
            !(c->est = cx_alloc(c->chunk_len * 4, "sketch estimates", &rc)))
            return rc;
        for (size_t i = 0; i < nch; i++)
            if (crux_sketch_init(&c->sk[i], rows, cols, c->cfg.seed) != CRUX_SUCCESS) {
                crux_error(CRUX_SUBSYS_CODEC, "crux_compressor_create: sketch %d x %d", rows, cols);
                return CRUX_ERR_NOMEM;
            }
    }
    if (c->cfg.codec == CRUX_CODEC_QSGD && c->cfg.qsgd_reduce == CRUX_QSGD_RING &&
        !(c->est = cx_alloc(c->chunk_len * 4, "the ring's partial sums", &rc)))
        return rc;
    if (c->cfg.memory == CRUX_MEMORY_MOMENTUM && !(c->mom = cx_alloc(n * 4, "the momentum", &rc)))
        return rc;
    /* A step buffer holds one encoded index set plus its values (gTop-k), or every
     * rank's block of an allgather (DGC: k indices + k values; QSGD: a payload). */
    size_t need = CX_FRAME_HDR + crux_idx_encode_bound(cm, c->chunk_len) + vals_bytes + 64,
           P = (size_t)c->comm->size;
    if (c->cfg.codec == CRUX_CODEC_TOPK)
        need = P * 8 * km;
    else if (c->cfg.codec == CRUX_CODEC_QSGD) /* ring: the P blocks + a hop in and out */
        need = (P < 3 ? 3 : P) * crux_qsgd_encoded_bytes(&c->q, c->chunk_len) + 64 * P;
    c->stepcap = (need + 63) & ~(size_t)63;
    c->depth = cx_fifo_depth(c);
    if (!(c->stepbuf = cx_alloc((size_t)c->depth * c->stepcap, "message buffers", &rc)) ||
        !(c->encbuf = cx_alloc(c->stepcap, "the encode buffer", &rc)))
        return rc;
    return CRUX_SUCCESS;
}

int crux_compressor_free(crux_compressor_t *pc)
{
    if (!pc || !*pc)
        return CRUX_SUCCESS;
    struct crux_compressor *c = *pc;
    *pc = NULL;
    if (c->nsteps) {
        /* A failed call left transfers in the transports' queues that still point
         * into our buffers: keep them (the context is broken anyway). */
        crux_warn(CRUX_SUBSYS_CODEC, "crux_compressor_free: %d transfers of a failed call may "
                  "still reference the compressor; its memory is not released", c->nsteps);
        return CRUX_SUCCESS;
    }
    if (c->sk) {
        for (size_t i = 0; i < c->nchunks; i++)
            crux_sketch_free(&c->sk[i]);
        free(c->sk);
    }
    if (c->ws)
        crux_topk_ws_free(c->ws);
    crux_pool_free(c->pool);
    if (c->acc != c->mem)
        free(c->acc);
    free(c->mom), free(c->mem), free(c->idx), free(c->val), free(c->nk), free(c->sent);
    free(c->lidx), free(c->lval), free(c->lk), free(c->tidx), free(c->tval);
    free(c->est), free(c->stepbuf), free(c->encbuf);
    free(c);
    return CRUX_SUCCESS;
}

int crux_compressor_create(crux_comm_t comm, size_t count, const crux_compress_config_t *cfg,
                           crux_compressor_t *out)
{
    CRUX_TRY(crux_check_comm(comm));
    if (!cfg || !out) {
        crux_error(CRUX_SUBSYS_CODEC, "crux_compressor_create: %s is NULL", !cfg ? "cfg" : "out");
        return CRUX_ERR_ARG;
    }
    *out = NULL;
    struct crux_compressor *c = calloc(1, sizeof(*c));
    if (!c) {
        crux_error(CRUX_SUBSYS_CODEC, "crux_compressor_create: out of memory");
        return CRUX_ERR_NOMEM;
    }
    c->comm = comm;
    c->cfg = *cfg;
    c->n = count;
    size_t cb = comm->ctx->cfg.compress_chunk_bytes / 4;
    c->chunk_len = count < cb || cb == 0 ? (count ? count : 1) : cb;
    c->nchunks = count ? (count + c->chunk_len - 1) / c->chunk_len : 0;
    /* Every rank takes part in the agreement, even with a bad config: the others
     * then fail with CRUX_ERR_MISMATCH instead of waiting for us. */
    int rc = config_check(cfg, count);
    int agree = config_agree(c, rc == CRUX_SUCCESS);
    if (rc == CRUX_SUCCESS)
        rc = agree;
    if (rc != CRUX_SUCCESS)
        goto fail;
    c->density_max = cfg->density;
    c->zero_wide = cx_zero_wide();
    c->q = (struct crux_qsgd){ cfg->qsgd_levels, 512, CRUX_QSGD_NORM_MAX };
    c->kmax = cx_chunk_k(c, c->chunk_len);
    c->cand_max = c->cfg.codec == CRUX_CODEC_SKETCH ? (2 * c->kmax < c->chunk_len ? 2 * c->kmax : c->chunk_len)
                                                    : c->kmax;
    if ((rc = cx_alloc_all(c)) != CRUX_SUCCESS)
        goto fail;
    for (int i = 0; i < c->depth; i++)
        c->fifo[i].buf = c->stepbuf + (size_t)i * c->stepcap;
    /* The schedules post at most a few transfers per phase. */
    if ((rc = crux_comm_reserve(comm, 16 + 2 * comm->size, 0)) != CRUX_SUCCESS) /* + ring allgather */
        goto fail;
    c->st.dense_bytes = (uint64_t)count * 4;
    c->st.ring_bytes = 2 * (uint64_t)(comm->size - 1) * count * 4 / (uint64_t)comm->size;
    crux_debug(CRUX_SUBSYS_CODEC, "compressor %s: count %zu, %zu chunks of %zu, k %zu per chunk",
               codec_name(cfg->codec), count, c->nchunks, c->chunk_len, c->kmax);
    *out = c;
    return CRUX_SUCCESS;
fail:
    crux_compressor_free(&c);
    return rc;
}

int crux_compressor_stats(crux_compressor_t c, crux_compress_stats_t *last)
{
    if (!c || !last) {
        crux_error(CRUX_SUBSYS_CODEC, "crux_compressor_stats: %s is NULL", !c ? "compressor" : "last_call");
        return CRUX_ERR_ARG;
    }
    *last = c->st;
    return CRUX_SUCCESS;
}

/* -------------------------------------------------------------- the FIFO --- */

static void cx_coll_init(struct crux_coll *op, struct crux_comm *comm, enum crux_coll_kind kind,
                         int algo, void *buf, size_t count, crux_datatype_t dtype)
{
    memset(op, 0, sizeof(*op));
    op->comm = comm;
    op->kind = kind;
    op->sendbuf = buf;
    op->recvbuf = buf;
    op->count = count;
    op->dtype = dtype;
    op->op = CRUX_SUM;
    op->esize = crux_datatype_size(dtype);
    op->xfers = comm->xfers;
    if (kind == CRUX_COLL_ALLREDUCE) {
        crux_allreduce_select(op);
    } else {
        op->algo = algo;
    }
    op->sig = crux_coll_sig(kind, op->algo, dtype, CRUX_SUM, count);
}

/* Payload bytes this rank just posted (the wire figure of the stats). */
static void cx_count_sends(struct crux_compressor *c, const struct crux_coll *op)
{
    for (int i = 0; i < op->nxfers; i++)
        if (op->xfers[i].kind == CRUX_XFER_SEND)
            c->st.wire_bytes += op->xfers[i].len;
}

static int cx_failed(struct crux_compressor *c, struct cx_step *s, int rc)
{
    static const char *kinds[] = { "?", "value allreduce", "index broadcast", "gTop-k tree",
                                   "allgather", "QSGD ring" };
    crux_error(CRUX_SUBSYS_CODEC, "compressed allreduce (%s, call %" PRIu64 ", rank %d of %d): %s "
               "failed: %s", codec_name(c->cfg.codec), c->calls, c->comm->rank, c->comm->size,
               kinds[s->kind], crux_error_string(rc));
    if (!c->comm->ctx->broken)
        c->comm->ctx->broken = rc;
    return rc;
}

/* Run the schedule once after its phase completed; pop the step when it is done. */
static int cx_step_run(struct crux_compressor *c, struct cx_step *s)
{
    struct crux_coll *op = &s->coll;
    int rc = op->fn(op);
    if (rc == CRUX_INPROGRESS) {
        cx_count_sends(c, op);
        return CRUX_INPROGRESS;
    }
    if (rc != CRUX_SUCCESS)
        return cx_failed(c, s, rc);
    s->done = 1;
    c->head = (c->head + 1) % c->depth;
    if (--c->nsteps == 0)
        c->st.comm_s += cx_tic() - c->t_comm_busy;
    return CRUX_SUCCESS;
}

static int cx_step_start(struct crux_compressor *c, struct cx_step *s)
{
    s->started = 1;
    s->t_start = cx_tic();
    s->coll.seq = c->comm->seq++;
    s->coll.deadline = s->t_start + c->comm->ctx->cfg.timeout_s;
    return cx_step_run(c, s);
}

int cx_poll(struct crux_compressor *c)
{
    if (!c->nsteps)
        return CRUX_SUCCESS;
    int prc = crux_progress(c->comm->ctx);
    while (c->nsteps) {
        struct cx_step *s = &c->fifo[c->head];
        int rc = s->started ? crux_coll_phase_done(&s->coll) : CRUX_SUCCESS;
        if (rc == CRUX_INPROGRESS) {
            if (prc != CRUX_SUCCESS)
                return cx_failed(c, s, CRUX_ERR_PEER);
            return CRUX_SUCCESS;
        }
        if (rc != CRUX_SUCCESS)
            return cx_failed(c, s, rc);
        rc = s->started ? cx_step_run(c, s) : cx_step_start(c, s);
        if (rc == CRUX_INPROGRESS)
            return CRUX_SUCCESS;
        if (rc != CRUX_SUCCESS)
            return rc;
    }
    return CRUX_SUCCESS;
}

int cx_wait(struct crux_compressor *c, struct cx_step *until)
{
    for (;;) {
        CRUX_TRY(cx_poll(c));
        if (!c->nsteps || (until && until->done))
            return CRUX_SUCCESS;
        struct cx_step *s = &c->fifo[c->head];
        int rc = crux_coll_wait(&s->coll); /* spins, then sleeps; honours the deadline */
        if (rc != CRUX_SUCCESS)
            return cx_failed(c, s, rc);
    }
}

/* Append a step; with the FIFO full, wait for the head first. */
static int cx_enqueue(struct crux_compressor *c, struct cx_step **out)
{
    if (c->nsteps == c->depth)
        CRUX_TRY(cx_wait(c, &c->fifo[c->head]));
    struct cx_step *s = &c->fifo[(c->head + c->nsteps) % c->depth];
    s->cx = c;
    s->started = s->done = 0;
    if (c->nsteps++ == 0)
        c->t_comm_busy = cx_tic();
    *out = s;
    return CRUX_SUCCESS;
}

int cx_post_allreduce(struct crux_compressor *c, float *vals, size_t count, struct cx_step **out)
{
    struct cx_step *s;
    CRUX_TRY(cx_enqueue(c, &s));
    s->kind = CX_ALLREDUCE;
    cx_coll_init(&s->coll, c->comm, CRUX_COLL_ALLREDUCE, 0, vals, count, CRUX_FLOAT);
    if (out)
        *out = s;
    return cx_poll(c);
}

/* Binomial tree from root (as algo/bcast.c): receive from the parent, forward to
 * the children streamed behind that receive. */
static int cx_post_binomial(struct crux_coll *op, int root, void *buf, size_t bytes, uint32_t tag)
{
    int P = op->comm->size, vr = (op->comm->rank - root + P) % P, mask = 1;
    struct crux_xfer *from_parent = NULL;
    while (mask < P) {
        if (vr & mask) {
            CRUX_TRY(crux_coll_recv(op, (vr - mask + root) % P, tag, buf, bytes, &from_parent));
            break;
        }
        mask <<= 1;
    }
    for (mask >>= 1; mask > 0; mask >>= 1)
        if (vr + mask < P)
            CRUX_TRY(crux_coll_send(op, (vr + mask + root) % P, tag, buf, bytes, from_parent, NULL));
    return CRUX_SUCCESS;
}

size_t cx_frame_head(const struct crux_compressor *c, size_t k, int vals)
{
    size_t h = CX_FRAME_HDR + 2 * k + 32 + (vals ? 4 * k : 0);
    h = (h + 7) & ~(size_t)7;
    return h < c->stepcap ? h : c->stepcap;
}

/* Broadcast of a frame: the head, then the tail if the length in the head says so. */
static int cx_bcast_var_fn(struct crux_coll *op)
{
    struct cx_step *s = (struct cx_step *)op;
    struct crux_compressor *c = s->cx;
    if (op->comm->size == 1)
        return CRUX_SUCCESS;
    switch (op->phase) {
    case 0:
        CRUX_TRY(cx_post_binomial(op, op->root, s->buf, s->head, CX_TAG_HEAD));
        op->phase = 1;
        return CRUX_INPROGRESS;
    case 1: {
        s->len = cx_frame_len(s->buf);
        if (CX_FRAME_HDR + s->len > s->cap) {
            crux_error(CRUX_SUBSYS_CODEC, "index broadcast from rank %d announced %" PRIu64
                       " bytes, more than %zu possible for count %zu: ranks disagree",
                       op->root, s->len, s->cap, c->n);
            return CRUX_ERR_MISMATCH;
        }
        op->phase = 2;
        size_t tail = cx_frame_tail(s->head, s->len);
        if (tail == 0)
            return CRUX_SUCCESS;
        CRUX_TRY(cx_post_binomial(op, op->root, s->buf + s->head, tail, CX_TAG_TAIL));
        return CRUX_INPROGRESS;
    }
    default:
        return CRUX_SUCCESS;
    }
}

int cx_post_bcast_var(struct crux_compressor *c, int root, const void *src, size_t len,
                      size_t head, struct cx_step **out)
{
    struct cx_step *s;
    CRUX_TRY(cx_enqueue(c, &s));
    s->kind = CX_BCAST_VAR;
    s->cap = c->stepcap;
    s->head = head;
    cx_coll_init(&s->coll, c->comm, CRUX_COLL_COMPRESSED, c->cfg.codec, NULL, c->n, CRUX_UINT8);
    s->coll.root = root;
    s->coll.fn = cx_bcast_var_fn;
    if (c->comm->rank == root) {
        s->len = len;
        cx_frame_set_len(s->buf, len);
        memcpy(s->buf + CX_FRAME_HDR, src, len);
    } else {
        s->len = 0;
    }
    if (out)
        *out = s;
    return cx_poll(c);
}

int cx_post_gtopk(struct crux_compressor *c, size_t chunk, struct cx_step **out)
{
    struct cx_step *s;
    CRUX_TRY(cx_enqueue(c, &s));
    s->kind = CX_GTOPK;
    s->cap = c->stepcap;
    s->chunk = chunk;
    s->clen = cx_chunk_len(c, chunk);
    s->k = cx_chunk_k(c, s->clen);
    s->head = cx_frame_head(c, s->k, 1);
    s->round = 0;
    s->len = 0;
    cx_coll_init(&s->coll, c->comm, CRUX_COLL_COMPRESSED, c->cfg.codec, NULL, s->clen, CRUX_UINT8);
    s->coll.fn = crux_gtopk_tree;
    if (out)
        *out = s;
    return cx_poll(c);
}

int cx_post_qring(struct crux_compressor *c, size_t chunk, const float *src, struct cx_step **out)
{
    struct cx_step *s;
    CRUX_TRY(cx_enqueue(c, &s));
    s->kind = CX_QRING;
    s->cap = c->stepcap;
    s->chunk = chunk;
    s->clen = cx_chunk_len(c, chunk);
    s->src = src;
    s->round = 0;
    cx_coll_init(&s->coll, c->comm, CRUX_COLL_COMPRESSED, c->cfg.codec, NULL, s->clen, CRUX_UINT8);
    s->coll.fn = crux_qsgd_ring_step;
    if (out)
        *out = s;
    return cx_poll(c);
}

int cx_next_buf(struct crux_compressor *c, uint8_t **buf)
{
    if (c->nsteps == c->depth)
        CRUX_TRY(cx_wait(c, &c->fifo[c->head]));
    *buf = c->fifo[(c->head + c->nsteps) % c->depth].buf;
    return CRUX_SUCCESS;
}

int cx_post_allgather(struct crux_compressor *c, size_t bytes, struct cx_step **out)
{
    struct cx_step *s;
    CRUX_TRY(cx_enqueue(c, &s));
    s->kind = CX_ALLGATHER;
    cx_coll_init(&s->coll, c->comm, CRUX_COLL_ALLGATHER, CRUX_ALGO_RING, s->buf, bytes, CRUX_UINT8);
    s->coll.sendbuf = s->buf + (size_t)c->comm->rank * bytes;
    s->coll.fn = crux_allgather_ring;
    if (out)
        *out = s;
    return cx_poll(c);
}

/* ------------------------------------------------------ per-chunk helpers --- */

int cx_accumulate(struct crux_compressor *c, size_t chunk, const float *grad)
{
    return cx_accumulate_zero(c, chunk, grad, NULL);
}

/* Zero a block with non-temporal stores: out is written once and read by the
 * caller much later, so reading its lines in first (what plain stores do below
 * glibc's non-temporal threshold) would double the traffic of the pass. */
#ifdef __SSE2__
/* Whole 64-byte lines per store: ~18% faster than 16-byte streams (a quarter of a
 * CLT-k call is this pass). x is 64-byte aligned, n a multiple of 16. */
__attribute__((target("avx512f"))) static void cx_zero_lines512(float *x, size_t n)
{
    __m512 z = _mm512_setzero_ps();
    for (size_t i = 0; i < n; i += 16)
        _mm512_stream_ps(x + i, z);
}
#endif

int cx_zero_wide(void)
{
#ifdef __SSE2__
    return __builtin_cpu_supports("avx512f");
#else
    return 0;
#endif
}

static void cx_zero_stream(float *x, size_t n, int wide)
{
#ifdef __SSE2__
    size_t i = 0, align = wide ? 63 : 15;
    while (i < n && ((uintptr_t)(x + i) & align))
        x[i++] = 0.0f;
    if (wide) {
        size_t lines = (n - i) & ~(size_t)15;
        cx_zero_lines512(x + i, lines);
        i += lines;
    }
    __m128 z = _mm_setzero_ps();
    for (; i + 4 <= n; i += 4)
        _mm_stream_ps(x + i, z);
    for (; i < n; i++)
        x[i] = 0.0f;
#else
    (void)wide;
    memset(x, 0, n * sizeof(float));
#endif
}

static int cx_overlaps(const float *a, const float *b, size_t n)
{
    return (uintptr_t)a < (uintptr_t)(b + n) && (uintptr_t)b < (uintptr_t)(a + n);
}

void cx_zero_out(float *out, const float *grad, size_t n, size_t off, size_t m, int wide)
{
    if (cx_overlaps(grad, out, n)) {
        memset(out + off, 0, m * 4);
        return;
    }
    cx_zero_stream(out + off, m, wide);
#ifdef __SSE2__
    _mm_sfence(); /* order the streamed zeros before the scatter into out */
#endif
}

/* out == NULL: accumulate only. */
int cx_accumulate_zero(struct crux_compressor *c, size_t chunk, const float *grad, float *out)
{
    size_t off = cx_chunk_off(c, chunk), len = cx_chunk_len(c, chunk);
    /* out is zeroed in the loop that reads grad (one stream of loads and stores is cheaper
     * here than two passes, lib/codec/NOTES.md); sub-blocks so the queue is polled */
    for (size_t o = 0; o < len; o += CX_POLL_ELEMS) {
        size_t m = len - o < CX_POLL_ELEMS ? len - o : CX_POLL_ELEMS;
        if (c->cfg.memory != CRUX_MEMORY_NONE) {
            crux_mem_accumulate_zero(c->acc + off + o, c->mem + off + o, grad + off + o,
                                     out ? out + off + o : NULL, m);
        } else {
            memcpy(c->acc + off + o, grad + off + o, m * 4);
            if (out)
                cx_zero_out(out, grad, c->n, off + o, m, c->zero_wide);
        }
        CRUX_TRY(cx_poll(c));
    }
    return CRUX_SUCCESS;
}

void cx_mem_update(struct crux_compressor *c, size_t chunk, const uint32_t *sent, size_t k)
{
    size_t off = cx_chunk_off(c, chunk), len = cx_chunk_len(c, chunk);
    switch (c->cfg.memory) {
    case CRUX_MEMORY_RESIDUAL:
        crux_mem_residual(c->mem + off, c->acc + off, sent, k, len);
        break;
    case CRUX_MEMORY_LOWPASS:
        crux_mem_lowpass(c->mem + off, c->acc + off, sent, k, len, c->cfg.beta);
        break;
    default: /* NONE: the memory stays zero */
        break;
    }
}

void cx_write_out(struct crux_compressor *c, size_t chunk, float *out, const uint32_t *idx,
                  const float *val, size_t k)
{
    size_t off = cx_chunk_off(c, chunk), len = cx_chunk_len(c, chunk);
    if (c->add_out) {
        crux_scatter_add(out + off, idx, val, k);
        return;
    }
    memset(out + off, 0, len * 4);
    crux_scatter(out + off, idx, val, k);
}

/* ------------------------------------------------------------- the call --- */

/* The adding form needs an estimate that is final before out is touched (one rounding
 * per entry: out + sum) and an out that grad does not share. */
static int cx_check_add(const struct crux_compressor *c, const float *grad, const float *out)
{
    const char *fn = "crux_compressed_allreduce_add";
    if (c->cfg.codec == CRUX_CODEC_TOPK || c->cfg.codec == CRUX_CODEC_QSGD) {
        crux_error(CRUX_SUBSYS_CODEC, "%s: codec %s sums the ranks' blocks in out itself; it "
                   "takes only crux_compressed_allreduce", fn, codec_name(c->cfg.codec));
        return CRUX_ERR_ARG;
    }
    if (cx_overlaps(grad, out, c->n)) {
        crux_error(CRUX_SUBSYS_CODEC, "%s: out overlaps grad (%p, %p, %zu floats); it must be a "
                   "separate buffer", fn, (const void *)grad, (const void *)out, c->n);
        return CRUX_ERR_ARG;
    }
    return CRUX_SUCCESS;
}

static int cx_call(crux_compressor_t c, const float *grad, float *out, int add)
{
    const char *fn = add ? "crux_compressed_allreduce_add" : "crux_compressed_allreduce";
    if (!c || !grad || !out) {
        crux_error(CRUX_SUBSYS_CODEC, "%s: %s is NULL", fn, !c ? "compressor" : !grad ? "grad" : "out");
        return CRUX_ERR_ARG;
    }
    if (add)
        CRUX_TRY(cx_check_add(c, grad, out));
    else if (out != grad && cx_overlaps(grad, out, c->n)) {
        /* the passes zero out right behind their read of grad, element by element */
        crux_error(CRUX_SUBSYS_CODEC, "%s: out overlaps grad without being grad (%p, %p, %zu "
                   "floats); pass the same pointer or separate buffers", fn, (const void *)grad,
                   (const void *)out, c->n);
        return CRUX_ERR_ARG;
    }
    struct crux_ctx *ctx = c->comm->ctx;
    if (ctx->broken) {
        crux_error(CRUX_SUBSYS_CODEC, "%s: an earlier collective failed (%s)", fn,
                   crux_error_string(ctx->broken));
        return ctx->broken;
    }
    if (ctx->req_head) {
        crux_error(CRUX_SUBSYS_CODEC, "%s: complete the outstanding nonblocking requests first "
                   "(crux_wait)", fn);
        return CRUX_ERR_ARG;
    }
    c->add_out = add;
    uint64_t dense = c->st.dense_bytes, ring = c->st.ring_bytes;
    memset(&c->st, 0, sizeof(c->st));
    c->st.dense_bytes = dense;
    c->st.ring_bytes = ring;
    double t0 = cx_tic();
    int rc;
    switch (c->cfg.codec) {
    case CRUX_CODEC_CLTK: rc = crux_cltk_allreduce(c, grad, out); break;
    case CRUX_CODEC_GTOPK: rc = crux_gtopk_allreduce(c, grad, out); break;
    case CRUX_CODEC_TOPK: rc = crux_topk_allreduce(c, grad, out); break;
    case CRUX_CODEC_QSGD:
        rc = c->cfg.qsgd_reduce == CRUX_QSGD_RING ? crux_qsgd_ring_allreduce(c, grad, out)
                                                  : crux_qsgd_allreduce(c, grad, out);
        break;
    default: rc = crux_sketch_allreduce(c, grad, out); break;
    }
    c->st.total_s = cx_tic() - t0;
    crux_debug(CRUX_SUBSYS_CODEC, "compressed call %" PRIu64 ": %s, total %.3f ms, encode %.3f, "
               "comm %.3f, decode %.3f, wire %" PRIu64 " B", c->calls, crux_error_string(rc),
               c->st.total_s * 1e3, c->st.encode_s * 1e3, c->st.comm_s * 1e3, c->st.decode_s * 1e3,
               c->st.wire_bytes);
    c->calls++;
    return rc;
}

int crux_compressed_allreduce(crux_compressor_t c, const float *grad, float *out)
{
    return cx_call(c, grad, out, 0);
}

int crux_compressed_allreduce_add(crux_compressor_t c, const float *grad, float *out)
{
    return cx_call(c, grad, out, 1);
}

/* DGC warm-up (Lin et al. Sec. 3.4) lowers the density epoch by epoch; the buffers were
 * sized for the density given at create, so it can only go down from there. Every rank
 * must make the same call before the same crux_compressed_allreduce. */
int crux_compressor_set_density(crux_compressor_t c, double density)
{
    if (!c || !(density > 0.0 && density <= c->density_max)) {
        crux_error(CRUX_SUBSYS_CODEC, "crux_compressor_set_density: %g must be in (0, %g], the "
                   "density the compressor was created with", density, c ? c->density_max : 0.0);
        return CRUX_ERR_ARG;
    }
    c->cfg.density = density;
    return CRUX_SUCCESS;
}

int crux_compressor_set_clip(crux_compressor_t c, double max_norm)
{
    if (!c || !(max_norm >= 0.0) || isinf(max_norm)) {
        crux_error(CRUX_SUBSYS_CODEC, "crux_compressor_set_clip: max_norm %g must be finite and "
                   ">= 0 (0 = off)", max_norm);
        return CRUX_ERR_ARG;
    }
    if (c->cfg.codec != CRUX_CODEC_TOPK) {
        crux_error(CRUX_SUBSYS_CODEC, "crux_compressor_set_clip: local gradient clipping is DGC's "
                   "(codec topk)");
        return CRUX_ERR_ARG;
    }
    c->clip = max_norm;
    return CRUX_SUCCESS;
}
