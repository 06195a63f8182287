/* init.c - crux_init / crux_finalize / crux_abort: config, identity, bootstrap,
 * transport choice per peer, world communicator. */
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "algo/algo.h"
#include "crux_internal.h"

struct crux_ctx *crux_ctx_g;

/* Knobs every rank must agree on: a rank with a different CRUX_ALGO would pick a
 * different schedule and deadlock; say so at init instead. */
struct init_agree {
    int32_t transport, algo;
    uint64_t chunk_bytes, shm_eager_bytes, ring_min_bytes;
};

static int init_check_agreement(struct crux_ctx *ctx)
{
    int rc = CRUX_ERR_NOMEM;
    struct init_agree *all = calloc((size_t)ctx->size, sizeof(*all));
    if (!all) {
        crux_error(CRUX_SUBSYS_INIT, "out of memory checking config agreement");
        return rc;
    }
    struct init_agree *me = &all[ctx->rank];
    me->transport = ctx->cfg.transport;
    me->algo = ctx->cfg.algo;
    me->chunk_bytes = ctx->cfg.chunk_bytes;
    me->shm_eager_bytes = ctx->cfg.shm_eager_bytes;
    me->ring_min_bytes = ctx->cfg.ring_min_bytes;
    rc = crux_bootstrap_allgather(ctx->bs, all, sizeof(*all));
    if (rc != CRUX_SUCCESS)
        goto out;
    for (int r = 0; r < ctx->size; r++) {
        const struct init_agree *o = &all[r];
        const char *what = o->transport != me->transport             ? "CRUX_TRANSPORT"
                           : o->algo != me->algo                     ? "CRUX_ALGO"
                           : o->chunk_bytes != me->chunk_bytes       ? "CRUX_CHUNK_BYTES"
                           : o->shm_eager_bytes != me->shm_eager_bytes ? "CRUX_SHM_EAGER_BYTES"
                           : o->ring_min_bytes != me->ring_min_bytes ? "CRUX_RING_MIN_BYTES"
                                                                     : NULL;
        if (what) {
            crux_error(CRUX_SUBSYS_INIT, "%s differs between rank %d (host %s) and this rank: "
                       "every rank must use the same value", what, r, ctx->peers[r].host);
            rc = CRUX_ERR_MISMATCH;
            goto out;
        }
    }
out:
    free(all);
    return rc;
}

#ifdef CRUX_HAVE_VERBS
int crux_verbs_usable(const struct crux_config *cfg, char *why, size_t whylen);
#endif

/* Can every rank use verbs? Asked only when the answer matters (auto, several
 * hosts); every rank takes part so they all reach the same answer. */
static int init_verbs_everywhere(struct crux_ctx *ctx, int *all_ok, char *why, size_t whylen)
{
    uint8_t *ok = calloc((size_t)ctx->size, 1);
    if (!ok) {
        crux_error(CRUX_SUBSYS_INIT, "out of memory checking for RDMA devices");
        return CRUX_ERR_NOMEM;
    }
#ifdef CRUX_HAVE_VERBS
    ok[ctx->rank] = crux_verbs_usable(&ctx->cfg, why, whylen) == CRUX_SUCCESS;
#else
    snprintf(why, whylen, "this build has no verbs transport (CRUX_WITH_VERBS)");
#endif
    int rc = crux_bootstrap_allgather(ctx->bs, ok, 1);
    *all_ok = rc == CRUX_SUCCESS;
    for (int r = 0; rc == CRUX_SUCCESS && r < ctx->size; r++)
        if (!ok[r] && *all_ok) {
            *all_ok = 0;
            if (r != ctx->rank)
                snprintf(why, whylen, "rank %d (%s) has no usable RDMA device", r,
                         ctx->peers[r].host);
        }
    free(ok);
    return rc;
}

/* Which transport carries each peer: shm within a host; between hosts verbs when
 * every rank has a usable device, else tcp. CRUX_TRANSPORT forces one for all. */
static int init_pick_transports(struct crux_ctx *ctx, int *use_shm, int *use_tcp, int *use_verbs)
{
    int want = ctx->cfg.transport;
    *use_shm = *use_tcp = *use_verbs = 0;
#ifndef CRUX_HAVE_VERBS
    if (want == CRUX_TP_VERBS) {
        crux_error(CRUX_SUBSYS_INIT, "CRUX_TRANSPORT=verbs: the verbs transport is not part of "
                   "this build (libibverbs-dev and librdmacm-dev were missing); use auto, shm or "
                   "tcp");
        return CRUX_ERR_UNSUPPORTED;
    }
#endif
    if (want == CRUX_TP_VERBS) {
        *use_verbs = 1;
        crux_info(CRUX_SUBSYS_INIT, "verbs carries every peer: CRUX_TRANSPORT=verbs");
        return CRUX_SUCCESS;
    }
    /* Decided from the peer table alone, so every rank reaches the same answer and
     * calls the same transports' (collective) init. */
    int remote = 0;
    for (int a = 0; a < ctx->size; a++)
        for (int b = a + 1; b < ctx->size; b++) {
            int same = ctx->peers[a].host_hash == ctx->peers[b].host_hash;
            if (want == CRUX_TP_TCP || !same)
                remote = 1;
            else
                *use_shm = 1;
        }
    if (want == CRUX_TP_SHM && remote) {
        crux_error(CRUX_SUBSYS_INIT, "CRUX_TRANSPORT=shm but the job spans %d hosts; "
                   "shm only connects ranks of one host (use auto or tcp)", ctx->nnodes);
        return CRUX_ERR_ARG;
    }
    if (remote && want == CRUX_TP_AUTO) {
        char why[512] = "";
        int all_ok;
        CRUX_TRY(init_verbs_everywhere(ctx, &all_ok, why, sizeof(why)));
        *use_verbs = all_ok;
        *use_tcp = !all_ok;
        crux_info(CRUX_SUBSYS_INIT, "between hosts: %s (%s)", all_ok ? "verbs" : "tcp", why);
    } else {
        *use_tcp = remote;
    }
    return CRUX_SUCCESS;
}

static int init_transport(struct crux_ctx *ctx, const struct crux_tp_ops *ops, int want_local,
                          int *peers)
{
    int n = 0;
    for (int r = 0; r < ctx->size; r++) {
        if (r == ctx->rank || ctx->peer_tp[r])
            continue;
        int local = ctx->peers[r].host_hash == ctx->peers[ctx->rank].host_hash;
        if (want_local < 0 || local == want_local)
            peers[n++] = r;
    }
    struct crux_tp *tp = NULL;
    CRUX_TRY(ops->init(ctx, peers, n, &tp));
    tp->ctx = ctx;
    ctx->tps[ctx->ntps++] = tp;
    for (int i = 0; i < n; i++)
        ctx->peer_tp[peers[i]] = tp;
    crux_info(CRUX_SUBSYS_INIT, "transport %s carries %d peer(s)", ops->name, n);
    return CRUX_SUCCESS;
}

static int init_transports(struct crux_ctx *ctx)
{
    int use_shm, use_tcp, use_verbs;
    CRUX_TRY(init_pick_transports(ctx, &use_shm, &use_tcp, &use_verbs));
    (void)use_verbs;
    int *peers = malloc((size_t)ctx->size * sizeof(int));
    if (!peers)
        return CRUX_ERR_NOMEM;
    int rc = CRUX_SUCCESS;
    if (use_shm)
        rc = init_transport(ctx, &crux_tp_shm_ops, 1, peers);
    if (rc == CRUX_SUCCESS && use_tcp)
        rc = init_transport(ctx, &crux_tp_tcp_ops, ctx->cfg.transport == CRUX_TP_TCP ? -1 : 0,
                            peers);
#ifdef CRUX_HAVE_VERBS
    if (rc == CRUX_SUCCESS && use_verbs)
        rc = init_transport(ctx, &crux_tp_verbs_ops, ctx->cfg.transport == CRUX_TP_VERBS ? -1 : 0,
                            peers);
#endif
    free(peers);
    return rc;
}

/* CPUs the ranks of this host may run on together: the union of their affinity
 * masks. A launcher that pins each rank to one core (crux-run, srun --cpu-bind)
 * leaves every rank seeing a single CPU, so a rank's own mask says nothing about
 * whether its peers share that core. */
static int host_cpus(struct crux_ctx *ctx, int *ncpus)
{
    cpu_set_t *all = calloc((size_t)ctx->size, sizeof(cpu_set_t)), host;
    if (!all) {
        crux_error(CRUX_SUBSYS_INIT, "out of memory gathering CPU masks");
        return CRUX_ERR_NOMEM;
    }
    if (sched_getaffinity(0, sizeof(cpu_set_t), &all[ctx->rank]) != 0)
        CPU_ZERO(&all[ctx->rank]);
    int rc = ctx->size > 1 ? crux_bootstrap_allgather(ctx->bs, all, sizeof(cpu_set_t)) : CRUX_SUCCESS;
    CPU_ZERO(&host);
    for (int r = 0; rc == CRUX_SUCCESS && r < ctx->size; r++)
        if (ctx->peers[r].host_hash == ctx->peers[ctx->rank].host_hash)
            CPU_OR(&host, &host, &all[r]);
    *ncpus = CPU_COUNT(&host) > 0 ? CPU_COUNT(&host) : 1;
    free(all);
    return rc;
}

static int init_topology(struct crux_ctx *ctx)
{
    const struct crux_peer_info *me = &ctx->peers[ctx->rank];
    ctx->local_rank = me->local_rank;
    ctx->local_size = 0;
    ctx->nnodes = 0;
    for (int r = 0; r < ctx->size; r++) {
        if (ctx->peers[r].host_hash == me->host_hash)
            ctx->local_size++;
        if (ctx->peers[r].node_id + 1 > ctx->nnodes)
            ctx->nnodes = ctx->peers[r].node_id + 1;
    }
    /* Spin long when every rank has a core. When they share, spinning burns the
     * slice the co-located peer needs (LIMITS.md): yield to it for up to 1 ms, then
     * sleep in the transport. */
    int cpus;
    CRUX_TRY(host_cpus(ctx, &cpus));
    int oversubscribed = ctx->local_size > cpus;
    ctx->spin_us = ctx->cfg.spin_us >= 0 ? ctx->cfg.spin_us : oversubscribed ? 0 : 50;
    ctx->yield_us = oversubscribed ? 1000 : 0;
    crux_info(CRUX_SUBSYS_INIT, "rank %d of %d on %s: %d local rank(s), %d node(s), %d cpus, spin %d us",
              ctx->rank, ctx->size, me->host, ctx->local_size, ctx->nnodes, cpus, ctx->spin_us);
    return CRUX_SUCCESS;
}

static void ctx_close(struct crux_ctx *ctx)
{
    for (int i = ctx->ntps - 1; i >= 0; i--)
        ctx->tps[i]->ops->close(ctx->tps[i]);
    ctx->ntps = 0;
    while (ctx->zombies) {
        struct crux_comm *c = ctx->zombies;
        ctx->zombies = c->next_zombie;
        crux_comm_destroy(c);
    }
    while (ctx->req_head) {
        struct crux_request *r = ctx->req_head;
        ctx->req_head = r->next;
        free(r);
    }
    while (ctx->req_free) {
        struct crux_request *r = ctx->req_free;
        ctx->req_free = r->next;
        free(r);
    }
    crux_comm_destroy(ctx->world);
    if (ctx->bs)
        crux_bootstrap_close(ctx->bs);
    free(ctx->peer_tp);
    free(ctx->peers);
    free(ctx);
}

int crux_init(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    if (crux_ctx_g) {
        crux_error(CRUX_SUBSYS_INIT, "crux_init called twice");
        return CRUX_ERR_ARG;
    }
    struct crux_ctx *ctx = calloc(1, sizeof(*ctx));
    if (!ctx)
        return CRUX_ERR_NOMEM;
    int rc = crux_config_load(&ctx->cfg);
    if (rc != CRUX_SUCCESS)
        goto fail;
    rc = crux_identity_resolve(&ctx->cfg, &ctx->id);
    if (rc != CRUX_SUCCESS)
        goto fail;
    ctx->rank = ctx->id.rank;
    ctx->size = ctx->id.size;
    crux_log_set_rank(ctx->rank);
    ctx->peers = calloc((size_t)ctx->size, sizeof(*ctx->peers));
    ctx->peer_tp = calloc((size_t)ctx->size, sizeof(*ctx->peer_tp));
    if (!ctx->peers || !ctx->peer_tp) {
        crux_error(CRUX_SUBSYS_INIT, "out of memory for the peer table of %d ranks", ctx->size);
        rc = CRUX_ERR_NOMEM;
        goto fail;
    }
    rc = crux_bootstrap_init(&ctx->cfg, &ctx->id, ctx->peers, &ctx->bs);
    if (rc != CRUX_SUCCESS)
        goto fail;
    rc = init_topology(ctx);
    if (rc != CRUX_SUCCESS)
        goto fail;
    if (ctx->size > 1) {
        rc = init_check_agreement(ctx);
        if (rc == CRUX_SUCCESS)
            rc = init_transports(ctx);
        if (rc != CRUX_SUCCESS)
            goto fail;
    }
    int *world = malloc((size_t)ctx->size * sizeof(int));
    if (!world) {
        rc = CRUX_ERR_NOMEM;
        goto fail;
    }
    for (int r = 0; r < ctx->size; r++)
        world[r] = r;
    rc = crux_comm_create(ctx, ctx->size, world, ctx->rank, 1, &ctx->world);
    free(world);
    if (rc != CRUX_SUCCESS)
        goto fail;
    ctx->next_ctx_id = 2;
    crux_ctx_g = ctx;
    return CRUX_SUCCESS;
fail:
    crux_error(CRUX_SUBSYS_INIT, "crux_init failed: %s", crux_error_string(rc));
    ctx_close(ctx);
    return rc;
}

int crux_initialized(int *flag)
{
    if (!flag)
        return CRUX_ERR_ARG;
    *flag = crux_ctx_g != NULL;
    return CRUX_SUCCESS;
}

int crux_finalize(void)
{
    struct crux_ctx *ctx = crux_ctx_g;
    if (!ctx) {
        crux_error(CRUX_SUBSYS_INIT, "crux_finalize: crux is not initialized");
        return CRUX_ERR_NOT_INITIALIZED;
    }
    int rc = CRUX_SUCCESS;
    /* Finish outstanding requests, then agree everyone is done before the shared
     * segments and sockets go away under a peer still using them. */
    while (!ctx->broken && ctx->req_head) {
        crux_request_t r = ctx->req_head;
        rc = crux_wait(&r);
    }
    if (!ctx->broken && ctx->size > 1) {
        ctx->finalizing = 1;
        rc = crux_barrier(ctx->world);
    }
    if (ctx->broken && rc == CRUX_SUCCESS)
        rc = ctx->broken;
    crux_ctx_g = NULL;
    ctx_close(ctx);
    return rc;
}

int crux_abort(crux_comm_t comm, int errorcode)
{
    struct crux_ctx *ctx = crux_ctx_g;
    int code = errorcode ? errorcode & 0xff : 1;
    if (!code)
        code = 1;
    crux_error(CRUX_SUBSYS_INIT, "crux_abort(%d) called: ending every rank", errorcode);
    /* Local ranks of comm are ended directly; remote ones see this process's
     * sockets close and fail with CRUX_ERR_PEER (and their launcher ends them). */
    if (ctx && comm && comm->ctx == ctx) {
        for (int i = 0; i < comm->size; i++) {
            int wr = comm->world_ranks[i];
            if (wr != ctx->rank && ctx->peers[wr].host_hash == ctx->peers[ctx->rank].host_hash &&
                ctx->peers[wr].pid > 0)
                kill(ctx->peers[wr].pid, SIGTERM);
        }
    }
    _exit(code);
}
