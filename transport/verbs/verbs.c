/* verbs.c - the verbs transport's vtable: posting and credits, completions,
 * sleeping, errors and teardown. The protocols (verbs.h) live in verbs_tx.c (send
 * side) and verbs_rx.c (receive side). */
#include "verbs.h"

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "numa.h"

static inline struct crux_verbs *vb_of(struct crux_tp *base) { return (struct crux_verbs *)base; }

/* ---------- failure ---------- */

static void fail_queue(struct crux_xfer **head, struct crux_xfer **tail, int rc)
{
    for (struct crux_xfer *x = *head, *n; x; x = n) {
        n = x->next;
        xfer_finish(x, rc);
    }
    *head = *tail = NULL;
}

static void qp_to_error(struct vb_peer *q)
{
    struct ibv_qp_attr a = {.qp_state = IBV_QPS_ERR};
    if (q->qp && !q->qp_err)
        ibv_modify_qp(q->qp, &a, IBV_QP_STATE);
    q->qp_err = 1;
    q->hangup_at = 0;
}

/* Every transfer with this peer completes with rc, and later ones fail at once. */
static void peer_fail_transfers(struct crux_verbs *vb, struct vb_peer *q, int rc)
{
    q->failed = rc;
    fail_queue(&q->sq_head, &q->sq_tail, rc);
    fail_queue(&q->rq_head, &q->rq_tail, rc);
    mrc_release(&vb->mrc, q->tx_mr);
    mrc_release(&vb->mrc, q->rx_mr);
    q->tx_mr = q->rx_mr = NULL;
    q->rx_rdv = NULL;
    if (vb->failed_rc == CRUX_SUCCESS)
        vb->failed_rc = rc;
}

/* The peer is gone or broken: its QP goes to error (flushing what is posted). */
void vb_peer_fail(struct crux_verbs *vb, struct vb_peer *q, int rc)
{
    if (q->failed)
        return;
    qp_to_error(q);
    peer_fail_transfers(vb, q, rc);
}

/* The ranks called different collectives: nothing more with this peer can match.
 * Hang up, but only after a second, so what is posted (a REFUSE, our own RTS)
 * still reaches it; then its pending transfers fail too instead of waiting. */
void vb_peer_hangup(struct crux_verbs *vb, struct vb_peer *q, int rc)
{
    if (q->failed)
        return;
    peer_fail_transfers(vb, q, rc);
    q->hangup_at = crux_now() + 1.0;
}

/* A failed completion's opcode field is undefined: name what we posted instead. */
static const char *wr_what(unsigned kind)
{
    static const char *n[] = {"?", "RECV (bounce slot)", "SEND (eager/control message)",
                              "RDMA_WRITE_WITH_IMM (rendezvous data)",
                              "RDMA_WRITE (credit return / liveness probe)"};
    return kind < 5 ? n[kind] : "?";
}

static void wc_failed(struct crux_verbs *vb, struct vb_peer *q, const struct ibv_wc *wc)
{
    if (q->failed)
        return; /* flushes after the first error */
    char g[48];
    vb_gid_format(q->rgid, g, sizeof(g));
    crux_error(CRUX_SUBSYS_NET, "verbs: work completion with rank %d (host %s, GID %s) failed: "
               "%s (status %d, vendor error 0x%x, opcode %s, qp %u) on %s port %d", q->rank,
               q->host, g, ibv_wc_status_str(wc->status), (int)wc->status, wc->vendor_err,
               wr_what((unsigned)(wc->wr_id >> 16) & 0xffff), wc->qp_num, vb->dev_name,
               vb->port);
    vb_peer_fail(vb, q, CRUX_ERR_PEER);
}

int vb_post_send_wr(struct crux_verbs *vb, struct vb_peer *q, struct ibv_send_wr *wr)
{
    struct ibv_send_wr *bad;
    int err = ibv_post_send(q->qp, wr, &bad);
    if (err) {
        crux_error(CRUX_SUBSYS_NET, "verbs: ibv_post_send to rank %d (%s): %s", q->rank, q->host,
                   strerror(err));
        vb_peer_fail(vb, q, CRUX_ERR_TRANSPORT);
        return -1;
    }
    q->sq_inflight++;
    return 0;
}

/* ---------- credits and control messages ---------- */
/* SEND a slot (header and payload already written). */
int vb_send_slot(struct crux_verbs *vb, struct vb_peer *q, uint16_t s, size_t bytes)
{
    int idx = (int)(q - vb->peers);
    struct vb_wire *w = (struct vb_wire *)(void *)(q->sslots + (size_t)s * VB_SLOT_BYTES);
    w->credit = q->reposts;
    struct ibv_sge sge = {.addr = (uintptr_t)w, .length = (uint32_t)bytes, .lkey = vb->mr->lkey};
    struct ibv_send_wr wr = {.wr_id = wr_id(idx, WR_SEND, s), .sg_list = &sge, .num_sge = 1,
                             .opcode = IBV_WR_SEND, .send_flags = IBV_SEND_SIGNALED};
    /* Small: the HCA takes the bytes with the WQE instead of fetching them. */
    if (bytes <= vb->max_inline)
        wr.send_flags |= IBV_SEND_INLINE;
    if (vb_post_send_wr(vb, q, &wr) != 0) {
        q->sfree[q->nsfree++] = s;
        return -1;
    }
    q->credits_used++;
    q->credit_sent = w->credit;
    return 0;
}

struct vb_wire *vb_take_sslot(struct vb_peer *q, uint16_t *s)
{
    *s = q->sfree[--q->nsfree];
    struct vb_wire *w = (struct vb_wire *)(void *)(q->sslots + (size_t)*s * VB_SLOT_BYTES);
    memset(w, 0, sizeof(*w));
    return w;
}

/* Hand back re-posted receive WQEs that no SEND header carried (also the liveness
 * probe: a dead peer makes it fail). Lazily: the peer still holds at least
 * VB_NRECV - VB_CREDIT_LAZY credits, and our next SEND to it may carry them. */
void vb_credit_push(struct crux_verbs *vb, struct vb_peer *q)
{
    if (q->failed || q->credit_inflight || q->sq_inflight >= VB_SQ_DEPTH ||
        (q->reposts - q->credit_sent < VB_CREDIT_LAZY && !q->probe_wanted))
        return;
    *q->credit_src = q->reposts;
    struct ibv_sge sge = {.addr = (uintptr_t)q->credit_src, .length = 8, .lkey = vb->mr->lkey};
    struct ibv_send_wr wr = {.wr_id = wr_id((int)(q - vb->peers), WR_CREDIT, 0), .sg_list = &sge,
                             .num_sge = 1, .opcode = IBV_WR_RDMA_WRITE,
                             .send_flags = IBV_SEND_SIGNALED,
                             .wr.rdma = {.remote_addr = q->remote_credit_addr,
                                         .rkey = q->remote_rkey}};
    if (vb_post_send_wr(vb, q, &wr) == 0) {
        q->credit_inflight = 1;
        q->credit_sent = q->reposts;
        q->probe_wanted = 0;
    }
}

static void on_send_done(struct crux_verbs *vb, struct vb_peer *q, const struct ibv_wc *wc)
{
    (void)vb;
    q->sq_inflight--;
    switch ((wc->wr_id >> 16) & 0xffff) {
    case WR_SEND: q->sfree[q->nsfree++] = (uint16_t)(wc->wr_id & 0xffff); break;
    case WR_WRITE: q->tx_writes--; break;
    case WR_CREDIT: q->credit_inflight = 0; break;
    }
}

/* Drain one CQ; returns the number of completions seen. */
static int poll_one_cq(struct crux_verbs *vb, struct ibv_cq *cq)
{
    struct ibv_wc wc[16];
    int total = 0, n;
    while ((n = ibv_poll_cq(cq, 16, wc)) > 0) {
        total += n;
        for (int i = 0; i < n; i++) {
            int idx = (int)(wc[i].wr_id >> 32);
            if (idx < 0 || idx >= vb->npeers)
                continue;
            struct vb_peer *q = &vb->peers[idx];
            /* By our wr_id, not wc.opcode: undefined in failed completions. */
            int is_recv = ((wc[i].wr_id >> 16) & 0xffff) == WR_RECV;
            if (wc[i].status != IBV_WC_SUCCESS)
                wc_failed(vb, q, &wc[i]);
            if (!is_recv)
                on_send_done(vb, q, &wc[i]); /* a failed or hung-up peer's sends still drain */
            else if (!q->failed)
                vb_on_recv(vb, q, &wc[i]);
        }
    }
    if (n < 0) {
        crux_error(CRUX_SUBSYS_NET, "verbs: ibv_poll_cq on %s failed (%d)", vb->dev_name, n);
        return -1;
    }
    return total;
}

static int poll_cq(struct crux_verbs *vb)
{
    int s = poll_one_cq(vb, vb->scq), r = s < 0 ? s : poll_one_cq(vb, vb->cq);
    return s < 0 || r < 0 ? -1 : s + r;
}

static void peer_progress(struct crux_verbs *vb, struct vb_peer *q)
{
    if (q->failed)
        return;
    vb_rx_send_refuse(vb, q);
    if (q->rx_rdv)
        vb_rx_send_grants(vb, q);
    vb_rx_match(vb, q);
    vb_tx_progress(vb, q);
    vb_credit_push(vb, q);
}

/* ---------- vtable ---------- */

static struct vb_peer *peer_of_xfer(struct crux_verbs *vb, const struct crux_xfer *x,
                                    const char *verb)
{
    int idx = -1;
    if (x->peer >= 0 && x->peer < vb->base.ctx->size)
        idx = vb->peer_of_rank[x->peer];
    if (idx < 0) {
        crux_error(CRUX_SUBSYS_NET, "verbs %s: rank %d is not connected through verbs", verb,
                   x->peer);
        return NULL;
    }
    return &vb->peers[idx];
}

static void xfer_reset(struct crux_xfer *x, int kind)
{
    x->kind = kind;
    x->bytes_done = 0;
    x->rc = CRUX_SUCCESS;
    x->next = NULL;
    x->done = 0;
}

static void enqueue(struct crux_xfer **head, struct crux_xfer **tail, struct crux_xfer *x)
{
    if (*head)
        (*tail)->next = x;
    else
        *head = x;
    *tail = x;
}

static int vb_isend(struct crux_tp *base, struct crux_xfer *x)
{
    struct crux_verbs *vb = vb_of(base);
    struct vb_peer *q = peer_of_xfer(vb, x, "send");
    if (!q)
        return CRUX_ERR_ARG;
    CRUX_TRY(crux_xfer_check(x, "verbs", "send"));
    xfer_reset(x, CRUX_XFER_SEND);
    if (q->failed) {
        xfer_finish(x, q->failed);
        return CRUX_SUCCESS;
    }
    enqueue(&q->sq_head, &q->sq_tail, x);
    if (q->sq_head == x)
        vb_tx_progress(vb, q);
    return CRUX_SUCCESS;
}

static int vb_irecv(struct crux_tp *base, struct crux_xfer *x)
{
    struct crux_verbs *vb = vb_of(base);
    struct vb_peer *q = peer_of_xfer(vb, x, "recv");
    if (!q)
        return CRUX_ERR_ARG;
    CRUX_TRY(crux_xfer_check(x, "verbs", "recv"));
    xfer_reset(x, CRUX_XFER_RECV);
    if (q->failed) {
        xfer_finish(x, q->failed);
        return CRUX_SUCCESS;
    }
    enqueue(&q->rq_head, &q->rq_tail, x);
    if (q->h_count > 0)
        vb_rx_match(vb, q);
    return CRUX_SUCCESS;
}

static int vb_progress(struct crux_tp *base)
{
    struct crux_verbs *vb = vb_of(base);
    if (vb->npeers == 0)
        return vb->failed_rc;
    if (poll_cq(vb) < 0)
        return CRUX_ERR_TRANSPORT;
    for (int i = 0; i < vb->npeers; i++)
        peer_progress(vb, &vb->peers[i]);
    return vb->failed_rc;
}

/* A send waiting for credits is woken by no completion (credits arrive as plain
 * RDMA writes): such waits nap briefly instead of sleeping on the channel. */
static int credit_starved(const struct crux_verbs *vb)
{
    for (int i = 0; i < vb->npeers; i++) {
        const struct vb_peer *q = &vb->peers[i];
        if (!q->failed && (q->sq_head || q->rx_grants_due || q->refuse_due) && !has_credit(q))
            return 1;
    }
    return 0;
}

/* While waiting, every 200 ms re-send our credit word to each peer we wait on: the
 * write fails (retry exceeded) if the peer died, turning a silent hang into
 * CRUX_ERR_PEER within CRUX_IB_TIMEOUT * CRUX_IB_RETRY_CNT. */
static void probe_peers(struct crux_verbs *vb)
{
    double now = crux_now();
    for (int i = 0; i < vb->npeers; i++) {
        struct vb_peer *q = &vb->peers[i];
        if (q->hangup_at > 0 && now >= q->hangup_at)
            qp_to_error(q);
        if (q->failed || (!q->rq_head && !q->sq_head) || now - q->last_probe < 0.2)
            continue;
        q->last_probe = now;
        q->probe_wanted = 1;
        vb_credit_push(vb, q);
    }
}

/* Does some wait depend on a send completion (a slot or WQE to recycle, rendezvous
 * writes to finish, a credit write or probe to land)? Otherwise our own ACKed
 * sends must not wake us: a small-message wait would pay two wake-ups. */
static int needs_send_completion(const struct crux_verbs *vb)
{
    for (int i = 0; i < vb->npeers; i++) {
        const struct vb_peer *q = &vb->peers[i];
        if (!q->failed && (q->tx_writes > 0 || q->nsfree == 0 || q->credit_inflight ||
                           q->sq_inflight >= VB_SQ_DEPTH))
            return 1;
    }
    return 0;
}

static int arm(struct ibv_cq *cq, int *armed, const char *what)
{
    if (*armed)
        return CRUX_SUCCESS;
    int err = ibv_req_notify_cq(cq, 0);
    if (err) {
        crux_error(CRUX_SUBSYS_NET, "verbs: ibv_req_notify_cq (%s): %s", what, strerror(err));
        return CRUX_ERR_TRANSPORT;
    }
    *armed = 1;
    return CRUX_SUCCESS;
}

/* The receive a small-message wait is for: the first one pending, when no
 * rendezvous is under way anywhere (its completion is one eager SEND away); else
 * NULL. */
static const struct crux_xfer *small_wait(const struct crux_verbs *vb)
{
    const struct crux_xfer *x = NULL;
    for (int i = 0; i < vb->npeers; i++) {
        const struct vb_peer *q = &vb->peers[i];
        if (q->failed)
            continue;
        if (q->rx_rdv || q->tx_rts_sent || (q->sq_head && q->sq_head->len > VB_EAGER_MAX))
            return NULL;
        if (!x && q->rq_head)
            x = q->rq_head;
    }
    return x;
}

/* Poll the CQs up to VB_POLL_US before a small-message wait sleeps, once per
 * receive (so a long wait burns at most that). Returns 1 if anything completed. */
static int poll_before_sleep(struct crux_verbs *vb)
{
    const struct crux_xfer *x = small_wait(vb);
    if (!x || vb->base.ctx->spin_us == 0 ||
        (x == vb->polled_for && x->hdr.seq == vb->polled_seq && x->hdr.tag == vb->polled_tag))
        return 0;
    double end = crux_now() + VB_POLL_US * 1e-6;
    do {
        int n = poll_cq(vb);
        if (n != 0) {
            for (int i = 0; n > 0 && i < vb->npeers; i++)
                peer_progress(vb, &vb->peers[i]);
            return 1;
        }
    } while (crux_now() < end);
    vb->polled_for = x;
    vb->polled_seq = x->hdr.seq;
    vb->polled_tag = x->hdr.tag;
    return 0;
}

static int vb_block(struct crux_tp *base, int timeout_ms)
{
    struct crux_verbs *vb = vb_of(base);
    if (vb->npeers == 0)
        return vb->failed_rc;
    if (poll_before_sleep(vb))
        return vb_progress(base);
    probe_peers(vb);
    CRUX_TRY(arm(vb->cq, &vb->cq_armed, "receive CQ"));
    if (needs_send_completion(vb))
        CRUX_TRY(arm(vb->scq, &vb->scq_armed, "send CQ"));
    /* Completions that arrived before arming raise no event: look once more. */
    int rc = vb_progress(base);
    if (rc != CRUX_SUCCESS)
        return rc;
    struct pollfd pfd = {.fd = vb->chan->fd, .events = POLLIN};
    /* Bounded: a completion event can be missed. Under Soft-RoCE one in a few thousand
     * small-message waits slept until the caller's 100 ms timeout with the message
     * already in the CQ (rxe tests the arm flag without ordering it after the CQE
     * write); a short sleep turns that into a VB_BLOCK_MS hiccup at a few hundred
     * idle wake-ups a second. */
    int ms = credit_starved(vb) ? 1 : VB_BLOCK_MS;
    if (ms > timeout_ms)
        ms = timeout_ms;
    if (poll(&pfd, 1, ms) > 0) {
        struct ibv_cq *cq;
        void *cq_ctx;
        while (ibv_get_cq_event(vb->chan, &cq, &cq_ctx) == 0) { /* O_NONBLOCK channel */
            ibv_ack_cq_events(cq, 1);
            *(cq == vb->scq ? &vb->scq_armed : &vb->cq_armed) = 0;
        }
    }
    return vb_progress(base);
}

/* Eager sends complete when posted; before the QPs go, let what is posted reach
 * the peers (an RC completion means acknowledged), or a peer finishing its last
 * collective would wait for a message that never left. Bounded: a dead peer's
 * writes fail within the retry budget, a stuck one is given up after 2 s. */
static void drain_sends(struct crux_verbs *vb)
{
    double end = crux_now() + 2.0;
    for (;;) {
        int busy = 0;
        /* Credit writes do not count: a peer that left first never acks them. */
        for (int i = 0; i < vb->npeers; i++)
            busy |= !vb->peers[i].qp_err &&
                    vb->peers[i].sq_inflight - vb->peers[i].credit_inflight > 0;
        if (!busy || crux_now() > end || poll_cq(vb) < 0)
            return;
    }
}

void vb_close(struct crux_tp *base)
{
    struct crux_verbs *vb = vb_of(base);
    if (!vb)
        return;
    if (vb->cq && vb->scq)
        drain_sends(vb);
    crux_debug(CRUX_SUBSYS_NET,
               "verbs: closing %d peers: sent %" PRIu64 " eager messages (%" PRIu64 " bytes) and %"
               PRIu64 " rendezvous (%" PRIu64 " bytes zero-copy); received %" PRIu64 " eager (%"
               PRIu64 " bytes copied), %" PRIu64 " rendezvous (%" PRIu64 " bytes zero-copy, %" PRIu64
               " bytes staged for reduce); MR cache %" PRIu64 " hits, %" PRIu64 " misses, %" PRIu64
               " evictions, %" PRIu64 " invalidated by released memory", vb->npeers,
               vb->tx_eager_msgs, vb->tx_eager_bytes, vb->tx_rdv_msgs, vb->tx_rdv_bytes,
               vb->rx_eager_msgs, vb->rx_eager_bytes, vb->rx_rdv_msgs, vb->rx_rdv_bytes,
               vb->rx_staged_bytes, vb->mrc.hits, vb->mrc.misses,
               vb->mrc.evictions, vb->mrc.invalidations);
    for (int i = 0; vb->peers && i < vb->npeers; i++)
        if (vb->peers[i].qp)
            ibv_destroy_qp(vb->peers[i].qp);
    if (vb->pd)
        mrc_destroy(&vb->mrc);
    if (vb->mr)
        ibv_dereg_mr(vb->mr);
    if (vb->region)
        crux_numa_free(vb->region, vb->region_bytes);
    if (vb->cq)
        ibv_destroy_cq(vb->cq);
    if (vb->scq)
        ibv_destroy_cq(vb->scq);
    if (vb->chan)
        ibv_destroy_comp_channel(vb->chan);
    if (vb->pd)
        ibv_dealloc_pd(vb->pd);
    if (vb->ctx)
        ibv_close_device(vb->ctx);
    free(vb->peers);
    free(vb->peer_of_rank);
    free(vb);
}

static int vb_stats(struct crux_tp *base, struct crux_tp_stats *st)
{
    struct crux_verbs *vb = vb_of(base);
    *st = (struct crux_tp_stats){
        .tx_eager_msgs = vb->tx_eager_msgs, .tx_eager_bytes = vb->tx_eager_bytes,
        .tx_rdv_msgs = vb->tx_rdv_msgs, .tx_rdv_bytes = vb->tx_rdv_bytes,
        .rx_eager_msgs = vb->rx_eager_msgs, .rx_eager_bytes = vb->rx_eager_bytes,
        .rx_rdv_msgs = vb->rx_rdv_msgs, .rx_rdv_bytes = vb->rx_rdv_bytes,
        .rx_staged_bytes = vb->rx_staged_bytes, .mr_hits = vb->mrc.hits,
        .mr_misses = vb->mrc.misses, .mr_evictions = vb->mrc.evictions,
        .mr_invalidations = vb->mrc.invalidations};
    return CRUX_SUCCESS;
}

const struct crux_tp_ops crux_tp_verbs_ops = {
    .name = "verbs",
    .init = vb_init,
    .reg_mr = NULL,
    .dereg_mr = NULL,
    .isend = vb_isend,
    .irecv = vb_irecv,
    .progress = vb_progress,
    .block = vb_block,
    .close = vb_close,
    .stats = vb_stats,
};
