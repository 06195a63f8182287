/* api.c - the collective entry points: argument checks, ordering of nonblocking
 * requests, running a schedule, and turning failures into a broken context. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "algo/algo.h"
#include "crux_internal.h"

#define CRUX_MAX_COUNT 0xffffffffffffull /* what the message signature can carry */

static int check_dtype_op(const char *fn, crux_datatype_t dtype, int check_op, crux_op_t op)
{
    if ((unsigned)dtype > CRUX_BFLOAT16) {
        crux_error(CRUX_SUBSYS_COLL, "%s: invalid datatype %d", fn, (int)dtype);
        return CRUX_ERR_ARG;
    }
    if (check_op && (unsigned)op > CRUX_MIN) {
        crux_error(CRUX_SUBSYS_COLL, "%s: invalid op %d", fn, (int)op);
        return CRUX_ERR_ARG;
    }
    return CRUX_SUCCESS;
}

static int check_buffers(const char *fn, const void *sendbuf, const void *recvbuf, size_t count,
                         int in_place_ok)
{
    if (count > CRUX_MAX_COUNT) {
        crux_error(CRUX_SUBSYS_COLL, "%s: count %zu is larger than crux supports (2^48-1)", fn, count);
        return CRUX_ERR_ARG;
    }
    if (recvbuf == CRUX_IN_PLACE || (sendbuf == CRUX_IN_PLACE && !in_place_ok)) {
        crux_error(CRUX_SUBSYS_COLL, "%s: CRUX_IN_PLACE is only valid as sendbuf", fn);
        return CRUX_ERR_ARG;
    }
    if (count > 0 && (!recvbuf || !sendbuf)) {
        crux_error(CRUX_SUBSYS_COLL, "%s: %s is NULL with count %zu", fn,
                   !sendbuf ? "sendbuf" : "recvbuf", count);
        return CRUX_ERR_ARG;
    }
    return CRUX_SUCCESS;
}

static int check_usable(const char *fn, crux_comm_t comm)
{
    CRUX_TRY(crux_check_comm(comm));
    if (comm->ctx->broken) {
        crux_error(CRUX_SUBSYS_COLL, "%s: an earlier collective failed (%s); crux can only be "
                   "finalized now", fn, crux_error_string(comm->ctx->broken));
        return comm->ctx->broken;
    }
    return CRUX_SUCCESS;
}

static void coll_setup(struct crux_coll *op, struct crux_comm *comm, enum crux_coll_kind kind,
                       const void *sendbuf, void *recvbuf, size_t count, crux_datatype_t dtype,
                       crux_op_t rop, int root)
{
    /* Every field is assigned below (select sets algo and fn): no memset on a
     * path whose whole budget is a few hundred cycles. */
    op->comm = comm;
    op->kind = kind;
    op->sendbuf = sendbuf == CRUX_IN_PLACE ? recvbuf : sendbuf;
    op->recvbuf = recvbuf;
    op->count = count;
    op->dtype = dtype;
    op->op = rop;
    op->esize = crux_datatype_size(dtype);
    op->root = root;
    op->seq = 0;
    op->phase = 0;
    op->step = 0;
    op->nxfers = 0;
    op->xfers = comm->xfers;
    op->deadline = 0;
    op->exclusive = 1; /* blocking calls drain requests first; requests run one at a time */
    if (kind == CRUX_COLL_ALLREDUCE)
        crux_allreduce_select(op);
    else
        crux_coll_select(op);
    op->sig = crux_coll_sig(kind, op->algo, dtype, rop, count);
}

/* A failed collective leaves transfers in the transports' queues and peers in
 * unknown states: like MPI's default error handler, every later call fails. */
static int coll_failed(struct crux_coll *op, int rc)
{
    char sig[128];
    crux_coll_sig_describe(op->sig, sig, sizeof(sig));
    crux_error(CRUX_SUBSYS_COLL, "%s (call %" PRIu64 " on comm %u, rank %d of %d) failed: %s",
               sig, op->seq, op->comm->ctx_id, op->comm->rank, op->comm->size,
               crux_error_string(rc));
    if (!op->comm->ctx->broken)
        op->comm->ctx->broken = rc;
    return rc;
}

/* --- nonblocking requests: issue order is execution order, only the head runs --- */

static void req_start(struct crux_request *r)
{
    struct crux_coll *op = &r->coll;
    r->started = 1;
    op->seq = op->comm->seq++;
    op->xfers = op->comm->xfers; /* an earlier call may have grown the array (algo/hier.c) */
    op->deadline = crux_now() + op->comm->ctx->cfg.timeout_s;
}

static void req_unlink(struct crux_ctx *ctx, struct crux_request *r)
{
    struct crux_request **pp = &ctx->req_head, *prev = NULL;
    while (*pp && *pp != r) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (!*pp)
        return;
    *pp = r->next;
    if (ctx->req_tail == r)
        ctx->req_tail = prev;
    r->next = NULL;
}

static void req_finish(struct crux_ctx *ctx, struct crux_request *r, int rc)
{
    r->done = 1;
    r->rc = rc == CRUX_SUCCESS ? rc : coll_failed(&r->coll, rc);
    req_unlink(ctx, r);
}

/* After a failure nothing queued can run: complete the rest with that error. */
static void req_fail_all(struct crux_ctx *ctx)
{
    while (ctx->req_head) {
        struct crux_request *r = ctx->req_head;
        r->done = 1;
        r->rc = ctx->broken;
        req_unlink(ctx, r);
    }
}

/* Advance the queue as far as possible without blocking. */
static void req_advance(struct crux_ctx *ctx)
{
    while (ctx->req_head && !ctx->broken) {
        struct crux_request *r = ctx->req_head;
        if (!r->started)
            req_start(r);
        int rc = crux_coll_step(&r->coll);
        if (rc == CRUX_INPROGRESS) {
            rc = crux_progress(ctx);
            if (rc == CRUX_SUCCESS)
                return;
            rc = crux_coll_phase_done(&r->coll);
            if (rc == CRUX_INPROGRESS || rc == CRUX_SUCCESS)
                rc = CRUX_ERR_PEER;
        }
        req_finish(ctx, r, rc);
    }
    if (ctx->broken)
        req_fail_all(ctx);
}

/* Block until request r (or, with r == NULL, every request) has completed. */
static int req_drain(struct crux_ctx *ctx, struct crux_request *r)
{
    while (ctx->req_head && (!r || !r->done)) {
        req_advance(ctx);
        struct crux_request *h = ctx->req_head;
        if (!h || (r && r->done))
            break;
        int rc = crux_coll_wait(&h->coll);
        if (rc != CRUX_SUCCESS)
            req_finish(ctx, h, rc);
    }
    if (ctx->broken)
        req_fail_all(ctx);
    return ctx->broken;
}

static int run_blocking(struct crux_coll *op)
{
    struct crux_ctx *ctx = op->comm->ctx;
    if (ctx->req_head)
        CRUX_TRY(req_drain(ctx, NULL));
    op->seq = op->comm->seq++;
    /* deadline 0: the wait loop starts the clock the first time it reads it (after
     * a few dozen polls). A clock read here would cost ~30 ns, as much as the
     * whole exchange of a small allreduce. */
    op->deadline = 0;
    int rc = crux_coll_run(op);
    return rc == CRUX_SUCCESS ? rc : coll_failed(op, rc);
}

/* --- collectives --- */

int crux_allreduce(const void *sendbuf, void *recvbuf, size_t count, crux_datatype_t dtype,
                   crux_op_t op, crux_comm_t comm)
{
    CRUX_TRY(check_usable("crux_allreduce", comm));
    CRUX_TRY(check_dtype_op("crux_allreduce", dtype, 1, op));
    CRUX_TRY(check_buffers("crux_allreduce", sendbuf, recvbuf, count, 1));
    struct crux_coll c;
    coll_setup(&c, comm, CRUX_COLL_ALLREDUCE, sendbuf, recvbuf, count, dtype, op, 0);
    return run_blocking(&c);
}

int crux_reduce_scatter_block(const void *sendbuf, void *recvbuf, size_t recvcount,
                              crux_datatype_t dtype, crux_op_t op, crux_comm_t comm)
{
    CRUX_TRY(check_usable("crux_reduce_scatter_block", comm));
    CRUX_TRY(check_dtype_op("crux_reduce_scatter_block", dtype, 1, op));
    CRUX_TRY(check_buffers("crux_reduce_scatter_block", sendbuf, recvbuf, recvcount, 1));
    if (recvcount > CRUX_MAX_COUNT / (size_t)comm->size) {
        crux_error(CRUX_SUBSYS_COLL, "crux_reduce_scatter_block: recvcount %zu x %d ranks is too large",
                   recvcount, comm->size);
        return CRUX_ERR_ARG;
    }
    struct crux_coll c;
    coll_setup(&c, comm, CRUX_COLL_REDUCE_SCATTER, sendbuf, recvbuf, recvcount, dtype, op, 0);
    return run_blocking(&c);
}

int crux_allgather(const void *sendbuf, size_t count, void *recvbuf, crux_datatype_t dtype,
                   crux_comm_t comm)
{
    CRUX_TRY(check_usable("crux_allgather", comm));
    CRUX_TRY(check_dtype_op("crux_allgather", dtype, 0, CRUX_SUM));
    CRUX_TRY(check_buffers("crux_allgather", sendbuf, recvbuf, count, 1));
    struct crux_coll c;
    coll_setup(&c, comm, CRUX_COLL_ALLGATHER, sendbuf, recvbuf, count, dtype, CRUX_SUM, 0);
    if (sendbuf == CRUX_IN_PLACE) /* MPI: my block already sits at recvbuf[rank] */
        c.sendbuf = (char *)recvbuf + (size_t)comm->rank * count * c.esize;
    return run_blocking(&c);
}

int crux_bcast(void *buf, size_t count, crux_datatype_t dtype, int root, crux_comm_t comm)
{
    CRUX_TRY(check_usable("crux_bcast", comm));
    CRUX_TRY(check_dtype_op("crux_bcast", dtype, 0, CRUX_SUM));
    CRUX_TRY(check_buffers("crux_bcast", buf, buf, count, 0));
    if (root < 0 || root >= comm->size) {
        crux_error(CRUX_SUBSYS_COLL, "crux_bcast: root %d is not a rank of this %d-rank communicator",
                   root, comm->size);
        return CRUX_ERR_ARG;
    }
    struct crux_coll c;
    coll_setup(&c, comm, CRUX_COLL_BCAST, buf, buf, count, dtype, CRUX_SUM, root);
    return run_blocking(&c);
}

int crux_barrier(crux_comm_t comm)
{
    CRUX_TRY(check_usable("crux_barrier", comm));
    struct crux_coll c;
    coll_setup(&c, comm, CRUX_COLL_BARRIER, NULL, NULL, 0, CRUX_UINT8, CRUX_SUM, 0);
    return run_blocking(&c);
}

int crux_iallreduce(const void *sendbuf, void *recvbuf, size_t count, crux_datatype_t dtype,
                    crux_op_t op, crux_comm_t comm, crux_request_t *req)
{
    CRUX_TRY(check_usable("crux_iallreduce", comm));
    CRUX_TRY(check_dtype_op("crux_iallreduce", dtype, 1, op));
    CRUX_TRY(check_buffers("crux_iallreduce", sendbuf, recvbuf, count, 1));
    if (!req) {
        crux_error(CRUX_SUBSYS_COLL, "crux_iallreduce: req is NULL");
        return CRUX_ERR_ARG;
    }
    struct crux_ctx *ctx = comm->ctx;
    struct crux_request *r = ctx->req_free;
    if (r) {
        ctx->req_free = r->next;
    } else if (!(r = malloc(sizeof(*r)))) {
        crux_error(CRUX_SUBSYS_COLL, "crux_iallreduce: out of memory for a request");
        return CRUX_ERR_NOMEM;
    }
    memset(r, 0, sizeof(*r));
    coll_setup(&r->coll, comm, CRUX_COLL_ALLREDUCE, sendbuf, recvbuf, count, dtype, op, 0);
    if (ctx->req_tail)
        ctx->req_tail->next = r;
    else
        ctx->req_head = r;
    ctx->req_tail = r;
    *req = r;
    /* Start it now so the transfers are in flight while the caller computes; a
     * failure is reported by crux_wait/crux_test, like MPI. */
    req_advance(ctx);
    return CRUX_SUCCESS;
}

static int req_release(struct crux_request **req)
{
    struct crux_request *r = *req;
    int rc = r->rc;
    struct crux_ctx *ctx = crux_ctx_g;
    r->next = ctx->req_free;
    ctx->req_free = r;
    *req = CRUX_REQUEST_NULL;
    return rc;
}

static int check_request(const char *fn, crux_request_t *req)
{
    if (!crux_ctx_g) {
        crux_error(CRUX_SUBSYS_COLL, "%s: crux is not initialized", fn);
        return CRUX_ERR_NOT_INITIALIZED;
    }
    if (!req) {
        crux_error(CRUX_SUBSYS_COLL, "%s: req is NULL", fn);
        return CRUX_ERR_ARG;
    }
    return CRUX_SUCCESS;
}

int crux_test(crux_request_t *req, int *done)
{
    CRUX_TRY(check_request("crux_test", req));
    if (!done)
        return CRUX_ERR_ARG;
    if (*req == CRUX_REQUEST_NULL) { /* MPI: testing a null request succeeds */
        *done = 1;
        return CRUX_SUCCESS;
    }
    struct crux_ctx *ctx = crux_ctx_g;
    if (!(*req)->done)
        req_advance(ctx);
    *done = (*req)->done;
    return *done ? req_release(req) : CRUX_SUCCESS;
}

int crux_wait(crux_request_t *req)
{
    CRUX_TRY(check_request("crux_wait", req));
    if (*req == CRUX_REQUEST_NULL)
        return CRUX_SUCCESS;
    struct crux_ctx *ctx = crux_ctx_g;
    if (!(*req)->done)
        req_drain(ctx, *req);
    if (!(*req)->done) { /* cannot happen: drain finishes or fails every request */
        crux_error(CRUX_SUBSYS_COLL, "crux_wait: request did not complete");
        (*req)->rc = CRUX_ERR_INTERNAL;
        req_unlink(ctx, *req);
    }
    return req_release(req);
}
