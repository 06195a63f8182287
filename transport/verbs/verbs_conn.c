/* verbs_conn.c - verbs setup, collective over all world ranks: open the device,
 * register the library's own region (bounce slots, scratch, credit words) once,
 * create one RC QP per peer, exchange QPN/PSN/GID/LID through the bootstrap,
 * move the QPs to RTS, and agree on the verdict (a rank that failed locally still
 * takes part, so every rank returns the same answer). */
#include "verbs.h"
#include "numa.h"
#include "verbs_memhook.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct vb_rec_head {
    uint8_t gid[16];
    uint16_t lid;
    uint8_t mtu;
    uint8_t ok;
    uint32_t rkey; /* of the region holding the credit words */
    uint32_t psn;
    struct vb_agreed agreed;
};

void vb_agreed_of(const struct crux_config *cfg, struct vb_agreed *a)
{
    *a = (struct vb_agreed){.timeout = (uint8_t)cfg->ib_timeout,
                            .retry_cnt = (uint8_t)cfg->ib_retry_cnt, .sl = (uint8_t)cfg->ib_sl,
                            .tc = (uint8_t)cfg->ib_tc};
}

const char *vb_agreed_diff(const struct vb_agreed *a, const struct vb_agreed *b, int *va, int *vb)
{
    const struct { const char *name; uint8_t x, y; } k[] = {
        {"CRUX_IB_TIMEOUT", a->timeout, b->timeout},
        {"CRUX_IB_RETRY_CNT", a->retry_cnt, b->retry_cnt},
        {"CRUX_IB_SL", a->sl, b->sl},
        {"CRUX_IB_TC", a->tc, b->tc},
    };
    for (size_t i = 0; i < sizeof(k) / sizeof(k[0]); i++)
        if (k[i].x != k[i].y) {
            *va = k[i].x;
            *vb = k[i].y;
            return k[i].name;
        }
    return NULL;
}

struct vb_rec_peer {
    uint32_t qpn;
    uint32_t pad;
    uint64_t credit_addr; /* where the rank of this slot writes its credits to us */
};

static int mrc_reg_cb(void *arg, void *addr, size_t len, void **mr)
{
    struct crux_verbs *vb = arg;
    *mr = ibv_reg_mr(vb->pd, addr, len, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
    /* A send buffer in read-only memory (a const table) cannot be pinned writable;
     * the HCA only reads it, so register it read-only. */
    if (!*mr && (errno == EFAULT || errno == EACCES || errno == EPERM))
        *mr = ibv_reg_mr(vb->pd, addr, len, 0);
    if (!*mr && errno == ENOMEM && mrc_has_idle(&vb->mrc))
        return CRUX_ERR_NOMEM; /* the cache evicts its idle entries and retries */
    if (!*mr)
        *mr = vb_reg(vb->pd, addr, len, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE,
                     "user buffer");
    return *mr ? CRUX_SUCCESS : errno == ENOMEM ? CRUX_ERR_NOMEM : CRUX_ERR_TRANSPORT;
}

static void mrc_dereg_cb(void *arg, void *mr)
{
    (void)arg;
    if (ibv_dereg_mr(mr) != 0)
        crux_warn(CRUX_SUBSYS_NET, "verbs: ibv_dereg_mr: %s", strerror(errno));
}

static int region_open(struct crux_verbs *vb)
{
    size_t pp = (size_t)VB_NSLOTS * VB_SLOT_BYTES + (size_t)VB_NSEND * VB_SLOT_BYTES +
                2 * vb->window + 64;
    pp = (pp + 4095) & ~(size_t)4095;
    vb->per_peer_bytes = pp;
    vb->region_bytes = pp * (size_t)vb->npeers;
    /* On the HCA's NUMA node, zeroed (first-touched) once here. */
    void *p = crux_numa_buf_alloc(vb->dev_name, vb->region_bytes);
    if (!p) {
        crux_error(CRUX_SUBSYS_NET, "verbs: cannot allocate %zu bytes of bounce slots",
                   vb->region_bytes);
        return CRUX_ERR_NOMEM;
    }
    vb->region = p;
    vb->mr = vb_reg(vb->pd, p, vb->region_bytes,
                    IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE, "bounce slots");
    if (!vb->mr)
        return errno == ENOMEM ? CRUX_ERR_NOMEM : CRUX_ERR_TRANSPORT;
    for (int i = 0; i < vb->npeers; i++) {
        struct vb_peer *q = &vb->peers[i];
        uint8_t *b = vb->region + pp * (size_t)i;
        q->slots = b;
        q->sslots = b + (size_t)VB_NSLOTS * VB_SLOT_BYTES;
        q->scratch = q->sslots + (size_t)VB_NSEND * VB_SLOT_BYTES;
        q->credit_in = (volatile uint64_t *)(void *)(q->scratch + 2 * vb->window);
        q->credit_src = q->credit_in + 1;
        for (int s = 0; s < VB_NSEND; s++)
            q->sfree[q->nsfree++] = (uint16_t)(VB_NSEND - 1 - s);
        for (int s = 0; s < VB_NSLOTS; s++)
            q->rfree[q->nrfree++] = (uint16_t)(VB_NSLOTS - 1 - s);
    }
    return CRUX_SUCCESS;
}

static int qp_create(struct crux_verbs *vb, struct vb_peer *q)
{
    struct ibv_qp_init_attr ia = {
        .send_cq = vb->scq, .recv_cq = vb->cq, .qp_type = IBV_QPT_RC,
        .cap = {.max_send_wr = VB_SQ_DEPTH, .max_recv_wr = VB_NRECV, .max_send_sge = 1,
                .max_recv_sge = 1, .max_inline_data = VB_MAX_INLINE},
    };
    q->qp = ibv_create_qp(vb->pd, &ia);
    if (!q->qp && (errno == EINVAL || errno == ENOMEM)) {
        ia.cap.max_inline_data = 0; /* a device without inline sends */
        q->qp = ibv_create_qp(vb->pd, &ia);
    }
    if (q->qp && (q == vb->peers || ia.cap.max_inline_data < vb->max_inline))
        vb->max_inline = ia.cap.max_inline_data;
    if (!q->qp) {
        crux_error(CRUX_SUBSYS_NET, "verbs: ibv_create_qp for rank %d (%s) on %s: %s", q->rank,
                   q->host, vb->dev_name, strerror(errno));
        return CRUX_ERR_TRANSPORT;
    }
    struct ibv_qp_attr a = {.qp_state = IBV_QPS_INIT, .pkey_index = 0,
                            .port_num = (uint8_t)vb->port,
                            .qp_access_flags = IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_LOCAL_WRITE};
    if (ibv_modify_qp(q->qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT |
                      IBV_QP_ACCESS_FLAGS) != 0) {
        crux_error(CRUX_SUBSYS_NET, "verbs: QP for rank %d (%s) to INIT: %s", q->rank, q->host,
                   strerror(errno));
        return CRUX_ERR_TRANSPORT;
    }
    return CRUX_SUCCESS;
}

/* Receives must be posted before the peer may send: done in INIT, before RTR. */
static int post_initial_recvs(struct crux_verbs *vb, struct vb_peer *q, int idx)
{
    for (int i = 0; i < VB_NRECV; i++) {
        uint16_t s = q->rfree[--q->nrfree];
        struct ibv_sge sge = {.addr = (uintptr_t)(q->slots + (size_t)s * VB_SLOT_BYTES),
                              .length = VB_SLOT_BYTES, .lkey = vb->mr->lkey};
        struct ibv_recv_wr wr = {.wr_id = (uint64_t)idx << 32 | (uint64_t)WR_RECV << 16 | s,
                                 .sg_list = &sge, .num_sge = 1}, *bad;
        int err = ibv_post_recv(q->qp, &wr, &bad);
        if (err) {
            crux_error(CRUX_SUBSYS_NET, "verbs: ibv_post_recv for rank %d (%s): %s", q->rank,
                       q->host, strerror(err));
            return CRUX_ERR_TRANSPORT;
        }
        q->rposted++;
    }
    return CRUX_SUCCESS;
}

/* Cached registrations stay valid only while the memory hooks see every release
 * (verbs_memhook.h). Without them the cache would hand the HCA pages the
 * application no longer has: register per message instead, and say why. */
static size_t mr_cache_budget(const struct crux_verbs *vb, size_t wanted)
{
    if (wanted == 0)
        return 0;
    if (!mh_hooks_active()) {
        crux_warn(CRUX_SUBSYS_NET, "verbs: registration cache off: libcrux's munmap/free hooks "
                  "are not the process's (libcrux loaded after libc, e.g. dlopen'ed), so a "
                  "released buffer could not be told from a live one; link libcrux into the "
                  "program or LD_PRELOAD it to cache registrations (CRUX_IB_MR_CACHE_BYTES=0 "
                  "silences this)");
        return 0;
    }
    crux_info(CRUX_SUBSYS_NET, "verbs: registration cache of %zu bytes on %s; released memory "
              "is dropped from it (munmap/mremap/madvise/free hooks)", wanted, vb->dev_name);
    return wanted;
}

static int local_open(struct crux_verbs *vb, const struct crux_config *cfg)
{
    CRUX_TRY(vb_dev_open(vb, cfg));
    struct crux_topo *topo = crux_topo_self();
    if (topo)
        crux_topo_warn_far_binding(topo, vb->dev_name);
    vb->pd = ibv_alloc_pd(vb->ctx);
    if (!vb->pd) {
        crux_error(CRUX_SUBSYS_NET, "verbs: ibv_alloc_pd(%s): %s", vb->dev_name, strerror(errno));
        return CRUX_ERR_TRANSPORT;
    }
    vb->chan = ibv_create_comp_channel(vb->ctx);
    if (!vb->chan) {
        crux_error(CRUX_SUBSYS_NET, "verbs: ibv_create_comp_channel(%s): %s", vb->dev_name,
                   strerror(errno));
        return CRUX_ERR_TRANSPORT;
    }
    int fl = fcntl(vb->chan->fd, F_GETFL);
    if (fl < 0 || fcntl(vb->chan->fd, F_SETFL, fl | O_NONBLOCK) != 0) {
        crux_error(CRUX_SUBSYS_NET, "verbs: completion channel O_NONBLOCK: %s", strerror(errno));
        return CRUX_ERR_TRANSPORT;
    }
    int depth = vb->npeers * VB_NRECV + 16, sdepth = vb->npeers * VB_SQ_DEPTH + 16;
    vb->cq = ibv_create_cq(vb->ctx, depth, NULL, vb->chan, 0);
    if (!vb->cq) {
        crux_error(CRUX_SUBSYS_NET, "verbs: ibv_create_cq(depth=%d) on %s: %s", depth,
                   vb->dev_name, strerror(errno));
        return CRUX_ERR_TRANSPORT;
    }
    vb->scq = ibv_create_cq(vb->ctx, sdepth, NULL, vb->chan, 0);
    if (!vb->scq) {
        crux_error(CRUX_SUBSYS_NET, "verbs: ibv_create_cq(depth=%d, sends) on %s: %s", sdepth,
                   vb->dev_name, strerror(errno));
        return CRUX_ERR_TRANSPORT;
    }
    CRUX_TRY(region_open(vb));
    mrc_init(&vb->mrc, mr_cache_budget(vb, cfg->ib_mr_cache_bytes),
             (size_t)sysconf(_SC_PAGESIZE), mrc_reg_cb, mrc_dereg_cb, vb);
    for (int i = 0; i < vb->npeers; i++) {
        CRUX_TRY(qp_create(vb, &vb->peers[i]));
        CRUX_TRY(post_initial_recvs(vb, &vb->peers[i], i));
    }
    return CRUX_SUCCESS;
}

static int qp_connect(struct crux_verbs *vb, struct vb_peer *q, const struct crux_config *cfg,
                      const struct vb_rec_head *rh, uint32_t rqpn, uint32_t my_psn)
{
    enum ibv_mtu mtu = vb->mtu < (enum ibv_mtu)rh->mtu ? vb->mtu : (enum ibv_mtu)rh->mtu;
    struct ibv_qp_attr a = {
        .qp_state = IBV_QPS_RTR, .path_mtu = mtu, .dest_qp_num = rqpn, .rq_psn = rh->psn,
        .max_dest_rd_atomic = 1, .min_rnr_timer = 12,
        .ah_attr = {.dlid = rh->lid, .sl = (uint8_t)cfg->ib_sl, .port_num = (uint8_t)vb->port},
    };
    if (vb->is_eth || rh->lid == 0) {
        a.ah_attr.is_global = 1;
        memcpy(a.ah_attr.grh.dgid.raw, rh->gid, 16);
        a.ah_attr.grh.sgid_index = (uint8_t)vb->gid_index;
        a.ah_attr.grh.hop_limit = 64;
        a.ah_attr.grh.traffic_class = (uint8_t)cfg->ib_tc;
    }
    char g[48];
    vb_gid_format(rh->gid, g, sizeof(g));
    if (ibv_modify_qp(q->qp, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
                      IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER) != 0) {
        crux_error(CRUX_SUBSYS_NET, "verbs: QP to RTR for rank %d (%s, GID %s, qpn %u): %s",
                   q->rank, q->host, g, rqpn, strerror(errno));
        return CRUX_ERR_TRANSPORT;
    }
    struct ibv_qp_attr s = {.qp_state = IBV_QPS_RTS, .timeout = (uint8_t)cfg->ib_timeout,
                            .retry_cnt = (uint8_t)cfg->ib_retry_cnt, .rnr_retry = 7,
                            .sq_psn = my_psn, .max_rd_atomic = 1};
    if (ibv_modify_qp(q->qp, &s, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT |
                      IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC) != 0) {
        crux_error(CRUX_SUBSYS_NET, "verbs: QP to RTS for rank %d (%s, GID %s): %s", q->rank,
                   q->host, g, strerror(errno));
        return CRUX_ERR_TRANSPORT;
    }
    memcpy(q->rgid, rh->gid, 16);
    crux_debug(CRUX_SUBSYS_NET, "verbs: QP %u -> rank %d (%s) qpn %u GID %s MTU %d, inline %u",
               q->qp->qp_num, q->rank, q->host, rqpn, g, 128 << mtu, vb->max_inline);
    return CRUX_SUCCESS;
}

static size_t rec_bytes(int size)
{
    return sizeof(struct vb_rec_head) + (size_t)size * sizeof(struct vb_rec_peer);
}

static struct vb_rec_head *rec_of(uint8_t *all, int size, int r)
{
    return (struct vb_rec_head *)(void *)(all + rec_bytes(size) * (size_t)r);
}

static struct vb_rec_peer *rec_peer(struct vb_rec_head *h, int r)
{
    return (struct vb_rec_peer *)(void *)(h + 1) + r;
}

static void fill_record(struct crux_verbs *vb, struct vb_rec_head *h, uint32_t psn)
{
    memcpy(h->gid, vb->gid, 16);
    h->lid = vb->lid;
    h->mtu = (uint8_t)vb->mtu;
    h->rkey = vb->mr->rkey;
    h->psn = psn;
    vb_agreed_of(&vb->base.ctx->cfg, &h->agreed);
    for (int i = 0; i < vb->npeers; i++) {
        struct vb_rec_peer *e = rec_peer(h, vb->peers[i].rank);
        e->qpn = vb->peers[i].qp->qp_num;
        e->credit_addr = (uintptr_t)vb->peers[i].credit_in;
    }
}

static int connect_all(struct crux_verbs *vb, struct crux_ctx *ctx, uint8_t *all, uint32_t psn)
{
    for (int i = 0; i < vb->npeers; i++) {
        struct vb_peer *q = &vb->peers[i];
        struct vb_rec_head *rh = rec_of(all, ctx->size, q->rank);
        if (!rh->ok) /* that rank failed and says so itself */
            return CRUX_ERR_TRANSPORT;
        struct vb_agreed mine;
        int v_me, v_peer;
        vb_agreed_of(&ctx->cfg, &mine);
        const char *var = vb_agreed_diff(&mine, &rh->agreed, &v_me, &v_peer);
        if (var) {
            crux_error(CRUX_SUBSYS_NET, "verbs: %s differs between rank %d (host %s: %d) and this "
                       "rank (%d): both ends of a queue pair must use the same value", var,
                       q->rank, q->host, v_peer, v_me);
            return CRUX_ERR_MISMATCH;
        }
        struct vb_rec_peer *e = rec_peer(rh, ctx->rank);
        if (e->qpn == 0) {
            crux_error(CRUX_SUBSYS_NET, "verbs: rank %d (%s) has no QP for this rank: the ranks "
                       "disagree on which peers verbs carries", q->rank, q->host);
            return CRUX_ERR_INTERNAL;
        }
        q->remote_credit_addr = e->credit_addr;
        q->remote_rkey = rh->rkey;
        CRUX_TRY(qp_connect(vb, q, &ctx->cfg, rh, e->qpn, psn));
    }
    return CRUX_SUCCESS;
}

/* Every rank learns whether every other one succeeded. */
static int agree(struct crux_ctx *ctx, int rc)
{
    uint8_t *st = calloc((size_t)ctx->size, 1);
    if (!st) {
        crux_error(CRUX_SUBSYS_NET, "verbs: out of memory for the setup verdict");
        return CRUX_ERR_NOMEM;
    }
    st[ctx->rank] = rc == CRUX_SUCCESS;
    int brc = crux_bootstrap_allgather(ctx->bs, st, 1);
    for (int r = 0; brc == CRUX_SUCCESS && r < ctx->size; r++)
        if (!st[r] && rc == CRUX_SUCCESS) {
            crux_error(CRUX_SUBSYS_NET, "verbs: setup failed on rank %d (%s); see its log", r,
                       ctx->peers[r].host);
            rc = CRUX_ERR_TRANSPORT;
        }
    free(st);
    return brc != CRUX_SUCCESS ? brc : rc;
}

int vb_init(struct crux_ctx *ctx, const int *peers, int npeers, struct crux_tp **out)
{
    int rc = CRUX_ERR_NOMEM;
    struct crux_verbs *vb = calloc(1, sizeof(*vb));
    uint8_t *all = calloc((size_t)ctx->size, rec_bytes(ctx->size));
    if (!vb || !all) {
        crux_error(CRUX_SUBSYS_NET, "verbs: out of memory for %d peers", npeers);
        free(vb);
        free(all);
        return rc;
    }
    extern const struct crux_tp_ops crux_tp_verbs_ops;
    vb->base.ops = &crux_tp_verbs_ops;
    vb->base.ctx = ctx;
    vb->npeers = npeers;
    vb->window = ctx->cfg.chunk_bytes;
    vb->frag = ctx->cfg.chunk_bytes;
    vb->peers = calloc((size_t)(npeers ? npeers : 1), sizeof(*vb->peers));
    vb->peer_of_rank = malloc((size_t)ctx->size * sizeof(int));
    if (!vb->peers || !vb->peer_of_rank) {
        crux_error(CRUX_SUBSYS_NET, "verbs: out of memory for %d peers", npeers);
        goto fail_local;
    }
    for (int r = 0; r < ctx->size; r++)
        vb->peer_of_rank[r] = -1;
    for (int i = 0; i < npeers; i++) {
        vb->peers[i].rank = peers[i];
        vb->peers[i].host = ctx->peers[peers[i]].host;
        vb->peer_of_rank[peers[i]] = i;
    }
    uint32_t psn = (uint32_t)(crux_boot_hash(&ctx->rank, sizeof(ctx->rank),
                                             (uint64_t)getpid()) & 0xffffff);
    struct vb_rec_head *mine = rec_of(all, ctx->size, ctx->rank);
    rc = npeers > 0 ? local_open(vb, &ctx->cfg) : CRUX_SUCCESS;
    if (rc == CRUX_SUCCESS && npeers > 0)
        fill_record(vb, mine, psn);
    mine->ok = rc == CRUX_SUCCESS;
fail_local:
    {
        int brc = crux_bootstrap_allgather(ctx->bs, all, rec_bytes(ctx->size));
        if (rc == CRUX_SUCCESS)
            rc = brc;
    }
    if (rc == CRUX_SUCCESS)
        rc = connect_all(vb, ctx, all, psn);
    free(all);
    rc = agree(ctx, rc);
    if (rc != CRUX_SUCCESS) {
        vb_close(&vb->base);
        return rc;
    }
    *out = &vb->base;
    return CRUX_SUCCESS;
}
