/* coll.c - what every schedule shares: message signatures, posting transfers,
 * and driving a schedule to completion within CRUX_TIMEOUT. */
#include <errno.h>
#include <inttypes.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "algo/algo.h"
#include "crux_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() __asm__ __volatile__("" ::: "memory")
#endif

/* sig = kind:4 | algo:4 | dtype:4 | op:4 | count:48. Packed rather than hashed so a
 * mismatch can be explained ("rank 3 called allreduce count=12, we expect 10"). */
uint64_t crux_coll_sig(enum crux_coll_kind kind, int algo, crux_datatype_t dtype, crux_op_t op,
                       size_t count)
{
    return ((uint64_t)(kind & 0xf) << 60) | ((uint64_t)(algo & 0xf) << 56) |
           ((uint64_t)(dtype & 0xf) << 52) | ((uint64_t)(op & 0xf) << 48) |
           ((uint64_t)count & 0xffffffffffffull);
}

static const char *coll_kind_name(unsigned k)
{
    static const char *names[] = { "?", "allreduce", "reduce_scatter_block", "allgather",
                                   "bcast", "barrier", "comm_split", "compressed" };
    return k < sizeof(names) / sizeof(names[0]) ? names[k] : "?";
}

static const char *dtype_name(unsigned d)
{
    static const char *names[] = { "float", "double", "int32", "int64", "uint8", "float16",
                                   "bfloat16" };
    return d < sizeof(names) / sizeof(names[0]) ? names[d] : "?";
}

static const char *op_name(unsigned o)
{
    static const char *names[] = { "sum", "prod", "max", "min" };
    return o < sizeof(names) / sizeof(names[0]) ? names[o] : "?";
}

void crux_coll_sig_describe(uint64_t sig, char *buf, size_t len)
{
    snprintf(buf, len, "%s algo=%s dtype=%s op=%s count=%" PRIu64,
             coll_kind_name((unsigned)(sig >> 60)), crux_algo_name((int)((sig >> 56) & 0xf)),
             dtype_name((unsigned)((sig >> 52) & 0xf)), op_name((unsigned)((sig >> 48) & 0xf)),
             (uint64_t)(sig & 0xffffffffffffull));
}

int crux_comm_reserve(struct crux_comm *comm, int nxfers, size_t scratch_bytes)
{
    if (nxfers > comm->nxfers_cap) {
        struct crux_xfer *x = calloc((size_t)nxfers, sizeof(*x));
        if (!x) {
            crux_error(CRUX_SUBSYS_COLL, "cannot allocate %d transfer descriptors", nxfers);
            return CRUX_ERR_NOMEM;
        }
        free(comm->xfers);
        comm->xfers = x;
        comm->nxfers_cap = nxfers;
    }
    if (scratch_bytes > comm->scratch_cap || (scratch_bytes && !comm->scratch)) {
        /* Grow geometrically and touch once, so steady state never faults. */
        size_t cap = comm->scratch_cap ? comm->scratch_cap : 4096;
        while (cap < scratch_bytes)
            cap *= 2;
        void *p = NULL;
        if (posix_memalign(&p, 4096, cap) != 0) {
            crux_error(CRUX_SUBSYS_COLL, "cannot allocate %zu bytes of collective scratch", cap);
            return CRUX_ERR_NOMEM;
        }
        memset(p, 0, cap);
        free(comm->scratch);
        comm->scratch = p;
        comm->scratch_cap = cap;
    }
    return CRUX_SUCCESS;
}

static struct crux_xfer *coll_next_xfer(struct crux_coll *op, int peer, uint32_t tag, void *buf,
                                        size_t len)
{
    struct crux_comm *comm = op->comm;
    struct crux_xfer *x = &op->xfers[op->nxfers++];
    /* Only the caller's half of the descriptor: isend/irecv initialise their own
     * fields (done, rc, bytes_done, next, tp_priv), and the descriptor is rewritten
     * on every call, so a memset of all of it is pure overhead. */
    x->peer = comm->world_ranks[peer];
    x->buf = buf;
    x->len = len;
    x->reduce_src = NULL;
    x->dtype = op->dtype;
    x->op = op->op;
    x->dep = NULL;
    x->hdr.ctx_id = comm->ctx_id;
    x->hdr.tag = tag;
    x->hdr.seq = op->seq;
    x->hdr.sig = op->sig;
    x->hdr.len = len;
    return x;
}

static int coll_post(struct crux_coll *op, struct crux_xfer *x, int is_send)
{
    struct crux_tp *tp = op->comm->ctx->peer_tp[x->peer];
    x->kind = is_send ? CRUX_XFER_SEND : CRUX_XFER_RECV;
    int rc = is_send ? tp->ops->isend(tp, x) : tp->ops->irecv(tp, x);
    if (rc != CRUX_SUCCESS) {
        x->done = 1;
        x->rc = rc;
    }
    return rc;
}

int crux_coll_send(struct crux_coll *op, int peer, uint32_t tag, const void *buf, size_t len,
                   const struct crux_xfer *dep, struct crux_xfer **out)
{
    struct crux_xfer *x = coll_next_xfer(op, peer, tag, (void *)buf, len);
    x->dep = dep;
    if (out)
        *out = x;
    return coll_post(op, x, 1);
}

int crux_coll_recv(struct crux_coll *op, int peer, uint32_t tag, void *buf, size_t len,
                   struct crux_xfer **out)
{
    struct crux_xfer *x = coll_next_xfer(op, peer, tag, buf, len);
    if (out)
        *out = x;
    return coll_post(op, x, 0);
}

int crux_coll_recv_reduce(struct crux_coll *op, int peer, uint32_t tag, void *dst,
                          const void *src, size_t len, struct crux_xfer **out)
{
    struct crux_xfer *x = coll_next_xfer(op, peer, tag, dst, len);
    x->reduce_src = src;
    if (out)
        *out = x;
    return coll_post(op, x, 0);
}

int crux_coll_phase_done(struct crux_coll *op)
{
    /* One pass (this runs on every poll). Among failures report the root cause: a
     * mismatch makes the peer give up and hang up, so our other transfers to it
     * fail with CRUX_ERR_PEER as a consequence. */
    int rc = CRUX_SUCCESS;
    for (int i = 0; i < op->nxfers; i++) {
        const struct crux_xfer *x = &op->xfers[i];
        if (!x->done)
            return CRUX_INPROGRESS;
        int r = x->rc;
        if (r != CRUX_SUCCESS && (rc == CRUX_SUCCESS || r == CRUX_ERR_MISMATCH))
            rc = r;
    }
    if (rc != CRUX_SUCCESS)
        return rc;
    op->nxfers = 0;
    return CRUX_SUCCESS;
}

/* Name what we are stuck on, so a timeout is actionable. */
static void coll_log_stuck(const struct crux_coll *op)
{
    struct crux_ctx *ctx = op->comm->ctx;
    char sig[128];
    crux_coll_sig_describe(op->sig, sig, sizeof(sig));
    for (int i = 0; i < op->nxfers; i++) {
        const struct crux_xfer *x = &op->xfers[i];
        if (x->done)
            continue;
        crux_error(CRUX_SUBSYS_COLL,
                   "%s (call %" PRIu64 " on comm %u) timed out after %.1f s (CRUX_TIMEOUT): "
                   "still %s rank %d (host %s), %zu of %zu bytes done",
                   sig, op->seq, op->comm->ctx_id, ctx->cfg.timeout_s,
                   x->kind == CRUX_XFER_SEND ? "sending to" : "receiving from", x->peer,
                   ctx->peers[x->peer].host,
                   (size_t)x->bytes_done, x->len);
        return;
    }
}

/* Progress until the current phase completes: spin ctx->spin_us, then block. */
static int coll_wait_phase(struct crux_coll *op)
{
    struct crux_ctx *ctx = op->comm->ctx;
    double spin_end = 0;
    /* No spin budget (oversubscribed): start yielding at once. */
    int yielding = ctx->spin_us == 0 && ctx->yield_us > 0;
    int rc = crux_coll_phase_done(op);
    if (rc != CRUX_INPROGRESS)
        return rc;
    for (unsigned iter = 0;; iter++) {
        rc = crux_progress(ctx);
        /* In finalize's barrier a peer that already passed it may exit: only a
         * failure of our own transfers counts then. */
        if (rc != CRUX_SUCCESS && !ctx->finalizing) {
            /* A peer died: ours may not be among our transfers, but the
             * collective cannot finish (and must not hang). */
            rc = crux_coll_phase_done(op);
            return rc == CRUX_INPROGRESS || rc == CRUX_SUCCESS ? CRUX_ERR_PEER : rc;
        }
        /* Look right after progress, before pausing: the pause would otherwise sit
         * between an arrival and its use on every small call. */
        rc = crux_coll_phase_done(op);
        if (rc != CRUX_INPROGRESS)
            return rc;
        if ((iter & 63) != 63) {
            if (yielding)
                sched_yield();
            else
                cpu_relax();
            continue;
        }
        double now = crux_now();
        if (spin_end == 0)
            spin_end = now + ctx->spin_us * 1e-6;
        if (op->deadline == 0) /* blocking calls start the clock here (api.c) */
            op->deadline = now + ctx->cfg.timeout_s;
        if (now > op->deadline) {
            coll_log_stuck(op);
            return CRUX_ERR_TIMEOUT;
        }
        if (now < spin_end)
            continue;
        /* Oversubscribed: hand the core to a co-located peer (it is likely the one
         * we wait for) before paying a futex sleep and wake-up per message. */
        yielding = now < spin_end + ctx->yield_us * 1e-6;
        if (yielding)
            continue;
        /* The phase was checked after the last progress call, so nothing that
         * call finished is slept on. */
        int ms = (int)((op->deadline - now) * 1e3) + 1;
        rc = crux_progress_block(ctx, ms < 100 ? ms : 100);
        if (rc != CRUX_SUCCESS && !ctx->finalizing)
            return rc;
    }
}

int crux_coll_run(struct crux_coll *op)
{
    /* A fresh call has no transfers and coll_wait_phase returns only once the phase
     * is done (nxfers reset), so the schedule runs without crux_coll_step's check. */
    for (;;) {
        int rc = op->fn(op);
        if (rc != CRUX_INPROGRESS)
            return rc;
        rc = coll_wait_phase(op);
        if (rc != CRUX_SUCCESS)
            return rc;
    }
}

int crux_coll_step(struct crux_coll *op)
{
    int rc = crux_coll_phase_done(op);
    if (rc != CRUX_SUCCESS)
        return rc;
    return op->fn(op);
}

int crux_coll_wait(struct crux_coll *op)
{
    return coll_wait_phase(op);
}

int crux_xfer_check(const struct crux_xfer *x, const char *tp, const char *verb)
{
    if (x->len != x->hdr.len || (x->len > 0 && x->buf == NULL)) {
        crux_error(CRUX_SUBSYS_NET, "%s %s to/from rank %d: len %zu, header len %" PRIu64
                   ", buf %p", tp, verb, x->peer, x->len, x->hdr.len, x->buf);
        return CRUX_ERR_ARG;
    }
    if (x->reduce_src) {
        size_t es = crux_datatype_size(x->dtype);
        if (es == 0 || x->len % es != 0 || (int)x->op < CRUX_SUM || (int)x->op > CRUX_MIN) {
            crux_error(CRUX_SUBSYS_NET, "%s recv-reduce from rank %d: len %zu, dtype %d, op %d",
                       tp, x->peer, x->len, (int)x->dtype, (int)x->op);
            return CRUX_ERR_ARG;
        }
    }
    return CRUX_SUCCESS;
}
