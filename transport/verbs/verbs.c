/* verbs.c - the verbs transport's vtable: posting, completions, the eager and
 * rendezvous protocols (see verbs.h), sleeping, errors and teardown. */
#include "verbs.h"

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "numa.h"
#include "reduce.h"

static inline struct crux_verbs *vb_of(struct crux_tp *base) { return (struct crux_verbs *)base; }

static inline uint64_t wr_id(int idx, enum vb_wr_kind k, unsigned slot)
{
    return (uint64_t)idx << 32 | (uint64_t)k << 16 | slot;
}

static inline size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }

static void xfer_finish(struct crux_xfer *x, int rc)
{
    x->rc = rc;
    x->done = 1;
}

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
static void peer_fail(struct crux_verbs *vb, struct vb_peer *q, int rc)
{
    if (q->failed)
        return;
    qp_to_error(q);
    peer_fail_transfers(vb, q, rc);
}

/* The ranks called different collectives: nothing more with this peer can match.
 * Hang up, but only after a second, so what is posted (a REFUSE, our own RTS)
 * still reaches it; then its pending transfers fail too instead of waiting. */
static void peer_hangup(struct crux_verbs *vb, struct vb_peer *q, int rc)
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
    peer_fail(vb, q, CRUX_ERR_PEER);
}

static int post_send_wr(struct crux_verbs *vb, struct vb_peer *q, struct ibv_send_wr *wr)
{
    struct ibv_send_wr *bad;
    int err = ibv_post_send(q->qp, wr, &bad);
    if (err) {
        crux_error(CRUX_SUBSYS_NET, "verbs: ibv_post_send to rank %d (%s): %s", q->rank, q->host,
                   strerror(err));
        peer_fail(vb, q, CRUX_ERR_TRANSPORT);
        return -1;
    }
    q->sq_inflight++;
    return 0;
}

/* ---------- credits and control messages ---------- */

static inline int has_credit(const struct vb_peer *q)
{
    return q->credits_used < VB_NRECV + *q->credit_in;
}

static inline int can_send_msg(const struct vb_peer *q)
{
    return q->nsfree > 0 && q->sq_inflight < VB_SQ_DEPTH && has_credit(q);
}

/* SEND a slot (header + len payload bytes already written). */
static int send_slot(struct crux_verbs *vb, struct vb_peer *q, uint16_t s, size_t len)
{
    int idx = (int)(q - vb->peers);
    struct ibv_sge sge = {.addr = (uintptr_t)(q->sslots + (size_t)s * VB_SLOT_BYTES),
                          .length = (uint32_t)(VB_HEAD_BYTES + len), .lkey = vb->mr->lkey};
    struct ibv_send_wr wr = {.wr_id = wr_id(idx, WR_SEND, s), .sg_list = &sge, .num_sge = 1,
                             .opcode = IBV_WR_SEND, .send_flags = IBV_SEND_SIGNALED};
    if (post_send_wr(vb, q, &wr) != 0) {
        q->sfree[q->nsfree++] = s;
        return -1;
    }
    q->credits_used++;
    return 0;
}

static struct vb_wire *take_sslot(struct vb_peer *q, uint16_t *s)
{
    *s = q->sfree[--q->nsfree];
    struct vb_wire *w = (struct vb_wire *)(void *)(q->sslots + (size_t)*s * VB_SLOT_BYTES);
    memset(w, 0, sizeof(*w));
    return w;
}

/* Hand back re-posted receive WQEs (also the liveness probe: a dead peer makes it fail). */
static void credit_push(struct crux_verbs *vb, struct vb_peer *q)
{
    if (q->failed || q->credit_inflight || q->sq_inflight >= VB_SQ_DEPTH ||
        (q->reposts == q->credit_sent && !q->probe_wanted))
        return;
    *q->credit_src = q->reposts;
    struct ibv_sge sge = {.addr = (uintptr_t)q->credit_src, .length = 8, .lkey = vb->mr->lkey};
    struct ibv_send_wr wr = {.wr_id = wr_id((int)(q - vb->peers), WR_CREDIT, 0), .sg_list = &sge,
                             .num_sge = 1, .opcode = IBV_WR_RDMA_WRITE,
                             .send_flags = IBV_SEND_SIGNALED,
                             .wr.rdma = {.remote_addr = q->remote_credit_addr,
                                         .rkey = q->remote_rkey}};
    if (post_send_wr(vb, q, &wr) == 0) {
        q->credit_inflight = 1;
        q->credit_sent = q->reposts;
        q->probe_wanted = 0;
    }
}

static void repost_recvs(struct crux_verbs *vb, struct vb_peer *q)
{
    int idx = (int)(q - vb->peers);
    while (!q->failed && q->rposted < VB_NRECV && q->nrfree > 0) {
        uint16_t s = q->rfree[q->nrfree - 1];
        struct ibv_sge sge = {.addr = (uintptr_t)(q->slots + (size_t)s * VB_SLOT_BYTES),
                              .length = VB_SLOT_BYTES, .lkey = vb->mr->lkey};
        struct ibv_recv_wr wr = {.wr_id = wr_id(idx, WR_RECV, s), .sg_list = &sge, .num_sge = 1},
                           *bad;
        int err = ibv_post_recv(q->qp, &wr, &bad);
        if (err) {
            crux_error(CRUX_SUBSYS_NET, "verbs: ibv_post_recv for rank %d (%s): %s", q->rank,
                       q->host, strerror(err));
            peer_fail(vb, q, CRUX_ERR_TRANSPORT);
            return;
        }
        q->nrfree--;
        q->rposted++;
        q->reposts++;
    }
    credit_push(vb, q);
}

static inline void slot_free(struct vb_peer *q, uint16_t s) { q->rfree[q->nrfree++] = s; }

/* ---------- send side ---------- */

static void tx_pop(struct crux_verbs *vb, struct vb_peer *q, int rc)
{
    struct crux_xfer *x = q->sq_head;
    q->sq_head = x->next;
    if (!q->sq_head)
        q->sq_tail = NULL;
    mrc_release(&vb->mrc, q->tx_mr);
    q->tx_mr = NULL;
    q->tx_rts_sent = 0;
    q->tx_posted = 0;
    q->g_head = q->g_count = 0;
    xfer_finish(x, rc);
}

/* Bytes of a send its dependency lets out: whole 64-byte units, or everything. */
static size_t tx_ready(const struct crux_xfer *x)
{
    if (!x->dep)
        return x->len;
    size_t d = x->dep->bytes_done;
    return d >= x->len ? x->len : d & ~(size_t)63;
}

static int tx_eager(struct crux_verbs *vb, struct vb_peer *q, struct crux_xfer *x)
{
    if (tx_ready(x) < x->len || !can_send_msg(q))
        return 0;
    uint16_t s;
    struct vb_wire *w = take_sslot(q, &s);
    w->type = VB_EAGER;
    w->hdr = x->hdr;
    if (x->len)
        memcpy((uint8_t *)w + VB_HEAD_BYTES, x->buf, x->len);
    if (send_slot(vb, q, s, x->len) != 0)
        return 0;
    vb->tx_eager_msgs++;
    vb->tx_eager_bytes += x->len;
    x->bytes_done = x->len;
    tx_pop(vb, q, CRUX_SUCCESS); /* the payload is in our slot: the buffer is free */
    return 1;
}

static int tx_rts(struct crux_verbs *vb, struct vb_peer *q, struct crux_xfer *x)
{
    if (!can_send_msg(q))
        return 0;
    if (!q->tx_mr) {
        int rc = mrc_acquire(&vb->mrc, x->buf, x->len, &q->tx_mr);
        if (rc != CRUX_SUCCESS) {
            /* The peer would wait for this message forever: hang up on it. */
            tx_pop(vb, q, rc);
            peer_hangup(vb, q, rc);
            return 1;
        }
    }
    uint16_t s;
    struct vb_wire *w = take_sslot(q, &s);
    w->type = VB_RTS;
    w->id = ++q->next_id;
    w->hdr = x->hdr;
    if (send_slot(vb, q, s, 0) != 0)
        return 0;
    q->tx_rts_sent = 1;
    return 1;
}

/* Write granted, ready bytes; returns 1 if anything was posted. */
static int tx_writes(struct crux_verbs *vb, struct vb_peer *q, struct crux_xfer *x)
{
    int idx = (int)(q - vb->peers), any = 0;
    size_t ready = tx_ready(x);
    while (q->g_count > 0 && q->tx_writes < VB_MAX_WRITES && q->sq_inflight < VB_SQ_DEPTH &&
           has_credit(q)) {
        struct vb_grant *g = &q->grants[q->g_head];
        size_t end = min_sz(g->off + g->len, ready);
        if (q->tx_posted >= end)
            break;
        size_t n = min_sz(end - q->tx_posted, vb->frag);
        struct ibv_sge sge = {.addr = (uintptr_t)x->buf + q->tx_posted, .length = (uint32_t)n,
                              .lkey = ((struct ibv_mr *)q->tx_mr->mr)->lkey};
        struct ibv_send_wr wr = {.wr_id = wr_id(idx, WR_WRITE, 0), .sg_list = &sge, .num_sge = 1,
                                 .opcode = IBV_WR_RDMA_WRITE_WITH_IMM,
                                 .send_flags = IBV_SEND_SIGNALED, .imm_data = htobe32(g->id),
                                 .wr.rdma = {.remote_addr = g->addr + (q->tx_posted - g->off),
                                             .rkey = g->rkey}};
        if (post_send_wr(vb, q, &wr) != 0)
            return 1;
        q->credits_used++;
        q->tx_writes++;
        q->tx_posted += n;
        x->bytes_done = q->tx_posted;
        vb->tx_rdv_bytes += n;
        any = 1;
        if (q->tx_posted == g->off + g->len) {
            q->g_head = (q->g_head + 1) % VB_NGRANTS;
            q->g_count--;
        }
    }
    return any;
}

/* Move the peer's send queue as far as resources allow. */
static void tx_progress(struct crux_verbs *vb, struct vb_peer *q)
{
    while (!q->failed && q->sq_head) {
        struct crux_xfer *x = q->sq_head;
        if (x->len <= VB_EAGER_MAX) {
            if (!tx_eager(vb, q, x))
                return;
            continue;
        }
        if (!q->tx_rts_sent) {
            if (!tx_rts(vb, q, x))
                return;
            continue;
        }
        tx_writes(vb, q, x);
        if (q->tx_posted == x->len && q->tx_writes == 0) {
            vb->tx_rdv_msgs++;
            tx_pop(vb, q, CRUX_SUCCESS);
            continue;
        }
        return;
    }
}

static void on_grant(struct crux_verbs *vb, struct vb_peer *q, const struct vb_wire *w)
{
    struct crux_xfer *x = q->sq_head;
    if (!x || !q->tx_rts_sent || w->id != q->next_id || q->g_count == VB_NGRANTS ||
        w->off + w->len > x->len) {
        crux_error(CRUX_SUBSYS_NET, "verbs: unexpected grant %u [%" PRIu64 ", +%" PRIu64 ") from "
                   "rank %d (%s): protocol error", w->id, w->off, w->len, q->rank, q->host);
        peer_fail(vb, q, CRUX_ERR_INTERNAL);
        return;
    }
    q->grants[(q->g_head + q->g_count) % VB_NGRANTS] =
        (struct vb_grant){.off = w->off, .len = w->len, .addr = w->addr, .rkey = w->rkey,
                          .id = w->id};
    q->g_count++;
}

static void on_refuse(struct crux_verbs *vb, struct vb_peer *q, const struct vb_wire *w)
{
    struct crux_xfer *x = q->sq_head;
    if (!x || !q->tx_rts_sent || w->id != q->next_id) {
        crux_error(CRUX_SUBSYS_NET, "verbs: unexpected refusal from rank %d (%s)", q->rank, q->host);
        peer_fail(vb, q, CRUX_ERR_INTERNAL);
        return;
    }
    if (w->off == VB_REFUSE_NOREG) {
        crux_error(CRUX_SUBSYS_NET, "verbs: rank %d (%s) could not register its %" PRIu64
                   "-byte receive buffer for our message (see its log)", q->rank, q->host,
                   x->hdr.len);
        tx_pop(vb, q, CRUX_ERR_PEER);
        peer_hangup(vb, q, CRUX_ERR_PEER);
        return;
    }
    char want[128], got[128];
    crux_coll_sig_describe(w->hdr.sig, want, sizeof(want));
    crux_coll_sig_describe(x->hdr.sig, got, sizeof(got));
    crux_error(CRUX_SUBSYS_NET, "verbs: rank %d (%s) refused our message: it expects %s (tag %u "
               "seq %" PRIu64 " len %" PRIu64 "), we sent %s (tag %u seq %" PRIu64 " len %" PRIu64
               ")", q->rank, q->host, want, w->hdr.tag, w->hdr.seq, w->hdr.len, got, x->hdr.tag,
               x->hdr.seq, x->hdr.len);
    tx_pop(vb, q, CRUX_ERR_MISMATCH);
    peer_hangup(vb, q, CRUX_ERR_MISMATCH);
}

/* ---------- receive side ---------- */

static void rx_pop(struct vb_peer *q, int rc)
{
    struct crux_xfer *x = q->rq_head;
    q->rq_head = x->next;
    if (!q->rq_head)
        q->rq_tail = NULL;
    xfer_finish(x, rc);
}

static int hdr_equal(const struct crux_msg_hdr *a, const struct crux_msg_hdr *b)
{
    return a->ctx_id == b->ctx_id && a->tag == b->tag && a->seq == b->seq && a->sig == b->sig &&
           a->len == b->len;
}

static void log_mismatch(const struct vb_peer *q, const struct crux_msg_hdr *want,
                         const struct crux_msg_hdr *got)
{
    char w[128], g[128];
    crux_coll_sig_describe(want->sig, w, sizeof(w));
    crux_coll_sig_describe(got->sig, g, sizeof(g));
    crux_error(CRUX_SUBSYS_NET, "verbs: message from rank %d (%s) does not match: expected %s "
               "(comm %u tag %u seq %" PRIu64 " len %" PRIu64 "), got %s (comm %u tag %u seq %"
               PRIu64 " len %" PRIu64 ")", q->rank, q->host, w, want->ctx_id, want->tag,
               want->seq, want->len, g, got->ctx_id, got->tag, got->seq, got->len);
}

/* Copy or reduce incoming bytes into the receive at offset off. */
static void land(struct crux_xfer *x, size_t off, const void *src, size_t n)
{
    if (n == 0)
        return;
    if (x->reduce_src) {
        size_t es = crux_datatype_size(x->dtype);
        crux_reduce((char *)x->buf + off, (const char *)x->reduce_src + off, src, n / es,
                    x->dtype, x->op);
    } else {
        memcpy((char *)x->buf + off, src, n);
    }
}

/* Address (in the scratch) of message offset off for a receive-with-reduce. */
static inline uint8_t *scratch_at(struct crux_verbs *vb, struct vb_peer *q, uint64_t off)
{
    return q->scratch + ((off / vb->window) % 2) * vb->window + off % vb->window;
}

static void rx_send_grants(struct crux_verbs *vb, struct vb_peer *q)
{
    while (q->rx_grants_due > 0 && !q->failed && can_send_msg(q)) {
        struct crux_xfer *x = q->rx_rdv;
        uint16_t s;
        struct vb_wire *w = take_sslot(q, &s);
        w->type = VB_CTS;
        w->id = q->rx_id;
        w->off = q->rx_granted;
        if (x->reduce_src) {
            w->len = min_sz(vb->window, x->len - q->rx_granted);
            w->addr = (uintptr_t)scratch_at(vb, q, w->off);
            w->rkey = vb->mr->rkey;
        } else {
            w->len = x->len;
            w->addr = (uintptr_t)x->buf;
            w->rkey = ((struct ibv_mr *)q->rx_mr->mr)->rkey;
        }
        if (send_slot(vb, q, s, 0) != 0)
            return;
        q->rx_granted += w->len;
        q->rx_grants_due--;
    }
}

static void rx_send_refuse(struct crux_verbs *vb, struct vb_peer *q)
{
    if (!q->refuse_due || q->failed || !can_send_msg(q))
        return;
    uint16_t s;
    struct vb_wire *w = take_sslot(q, &s);
    w->type = VB_REFUSE;
    w->id = q->refuse_id;
    w->hdr = q->refuse_hdr;
    w->off = (uint64_t)q->refuse_why;
    if (send_slot(vb, q, s, 0) == 0) {
        q->refuse_due = 0;
        q->refuse_why = VB_REFUSE_MISMATCH;
    }
}

static void rx_start_rdv(struct crux_verbs *vb, struct vb_peer *q, struct crux_xfer *x,
                         uint32_t id)
{
    if (!x->reduce_src) {
        int rc = mrc_acquire(&vb->mrc, x->buf, x->len, &q->rx_mr);
        if (rc != CRUX_SUCCESS) {
            /* Tell the sender (it would wait for a grant), then give up on the peer. */
            q->refuse_due = 1;
            q->refuse_id = id;
            q->refuse_hdr = x->hdr;
            q->refuse_why = VB_REFUSE_NOREG;
            rx_send_refuse(vb, q);
            rx_pop(q, rc);
            peer_hangup(vb, q, rc);
            return;
        }
    }
    q->rx_rdv = x;
    q->rx_id = id;
    q->rx_granted = 0;
    size_t nwin = x->reduce_src ? (x->len + vb->window - 1) / vb->window : 1;
    q->rx_grants_due = nwin < 2 ? (int)nwin : 2;
    rx_send_grants(vb, q);
}

/* Pair held messages with posted receives, in order. */
static void rx_match(struct crux_verbs *vb, struct vb_peer *q)
{
    while (!q->failed && q->rq_head && q->h_count > 0 && !q->rx_rdv && !q->refuse_due) {
        uint16_t s = q->held[q->h_head];
        const struct vb_wire *w = (const void *)(q->slots + (size_t)s * VB_SLOT_BYTES);
        struct crux_xfer *x = q->rq_head;
        q->h_head = (q->h_head + 1) % VB_NSLOTS;
        q->h_count--;
        if (!hdr_equal(&w->hdr, &x->hdr)) {
            log_mismatch(q, &x->hdr, &w->hdr);
            if (w->type == VB_RTS) {
                q->refuse_due = 1;
                q->refuse_id = w->id;
                q->refuse_hdr = x->hdr;
            }
            slot_free(q, s);
            rx_pop(q, CRUX_ERR_MISMATCH);
            rx_send_refuse(vb, q);
            peer_hangup(vb, q, CRUX_ERR_MISMATCH);
            return;
        }
        if (w->type == VB_EAGER) {
            land(x, 0, (const uint8_t *)w + VB_HEAD_BYTES, x->len);
            vb->rx_eager_msgs++;
            vb->rx_eager_bytes += x->len;
            slot_free(q, s);
            x->bytes_done = x->len;
            rx_pop(q, CRUX_SUCCESS);
        } else {
            uint32_t id = w->id;
            slot_free(q, s);
            rx_start_rdv(vb, q, x, id);
        }
    }
    repost_recvs(vb, q);
}

static void rx_data(struct crux_verbs *vb, struct vb_peer *q, uint32_t id, size_t n)
{
    struct crux_xfer *x = q->rx_rdv;
    if (!x || id != q->rx_id || x->bytes_done + n > q->rx_granted) {
        crux_error(CRUX_SUBSYS_NET, "verbs: unexpected %zu-byte write (transfer %u) from rank %d "
                   "(%s): protocol error", n, id, q->rank, q->host);
        peer_fail(vb, q, CRUX_ERR_INTERNAL);
        return;
    }
    size_t off = x->bytes_done;
    if (x->reduce_src) {
        land(x, off, scratch_at(vb, q, off), n);
        vb->rx_staged_bytes += n;
        size_t end = off + n;
        /* A window fully reduced frees its half of the scratch for the next grant. */
        if ((end % vb->window == 0 || end == x->len) && q->rx_granted < x->len)
            q->rx_grants_due++;
    } else {
        vb->rx_rdv_bytes += n;
    }
    x->bytes_done = off + n;
    if (x->bytes_done == x->len) {
        vb->rx_rdv_msgs++;
        mrc_release(&vb->mrc, q->rx_mr);
        q->rx_mr = NULL;
        q->rx_rdv = NULL;
        rx_pop(q, CRUX_SUCCESS);
    } else {
        rx_send_grants(vb, q);
    }
}

static void on_recv(struct crux_verbs *vb, struct vb_peer *q, const struct ibv_wc *wc)
{
    uint16_t s = (uint16_t)(wc->wr_id & 0xffff);
    q->rposted--;
    if (wc->opcode == IBV_WC_RECV_RDMA_WITH_IMM) {
        slot_free(q, s);
        rx_data(vb, q, be32toh(wc->imm_data), wc->byte_len);
        return;
    }
    const struct vb_wire *w = (const void *)(q->slots + (size_t)s * VB_SLOT_BYTES);
    switch (w->type) {
    case VB_EAGER:
    case VB_RTS:
        q->held[(q->h_head + q->h_count) % VB_NSLOTS] = s;
        q->h_count++;
        return;
    case VB_CTS:
        on_grant(vb, q, w);
        break;
    case VB_REFUSE:
        on_refuse(vb, q, w);
        break;
    default:
        crux_error(CRUX_SUBSYS_NET, "verbs: message of unknown type %u from rank %d (%s)",
                   w->type, q->rank, q->host);
        peer_fail(vb, q, CRUX_ERR_INTERNAL);
    }
    slot_free(q, s);
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

/* Drain the CQ; returns the number of completions seen. */
static int poll_cq(struct crux_verbs *vb)
{
    struct ibv_wc wc[16];
    int total = 0, n;
    while ((n = ibv_poll_cq(vb->cq, 16, wc)) > 0) {
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
                on_recv(vb, q, &wc[i]);
        }
    }
    if (n < 0) {
        crux_error(CRUX_SUBSYS_NET, "verbs: ibv_poll_cq on %s failed (%d)", vb->dev_name, n);
        return -1;
    }
    return total;
}

static void peer_progress(struct crux_verbs *vb, struct vb_peer *q)
{
    if (q->failed)
        return;
    rx_send_refuse(vb, q);
    if (q->rx_rdv)
        rx_send_grants(vb, q);
    rx_match(vb, q);
    tx_progress(vb, q);
    credit_push(vb, q);
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
        tx_progress(vb, q);
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
        rx_match(vb, q);
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
        credit_push(vb, q);
    }
}

static int vb_block(struct crux_tp *base, int timeout_ms)
{
    struct crux_verbs *vb = vb_of(base);
    if (vb->npeers == 0)
        return vb->failed_rc;
    probe_peers(vb);
    if (!vb->cq_armed) {
        if (ibv_req_notify_cq(vb->cq, 0) != 0) {
            crux_error(CRUX_SUBSYS_NET, "verbs: ibv_req_notify_cq: %s", strerror(errno));
            return CRUX_ERR_TRANSPORT;
        }
        vb->cq_armed = 1;
    }
    /* Completions that arrived before arming raise no event: look once more. */
    int rc = vb_progress(base);
    if (rc != CRUX_SUCCESS)
        return rc;
    struct pollfd pfd = {.fd = vb->chan->fd, .events = POLLIN};
    int ms = credit_starved(vb) && timeout_ms > 1 ? 1 : timeout_ms;
    if (poll(&pfd, 1, ms) > 0) {
        struct ibv_cq *cq;
        void *cq_ctx;
        if (ibv_get_cq_event(vb->chan, &cq, &cq_ctx) == 0) {
            ibv_ack_cq_events(cq, 1);
            vb->cq_armed = 0;
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
    if (vb->cq)
        drain_sends(vb);
    crux_debug(CRUX_SUBSYS_NET,
               "verbs: closing %d peers: sent %" PRIu64 " eager messages (%" PRIu64 " bytes) and %"
               PRIu64 " rendezvous (%" PRIu64 " bytes zero-copy); received %" PRIu64 " eager (%"
               PRIu64 " bytes copied), %" PRIu64 " rendezvous (%" PRIu64 " bytes zero-copy, %" PRIu64
               " bytes staged for reduce); MR cache %" PRIu64 " hits, %" PRIu64 " misses, %" PRIu64
               " evictions", vb->npeers, vb->tx_eager_msgs, vb->tx_eager_bytes, vb->tx_rdv_msgs,
               vb->tx_rdv_bytes, vb->rx_eager_msgs, vb->rx_eager_bytes, vb->rx_rdv_msgs,
               vb->rx_rdv_bytes, vb->rx_staged_bytes, vb->mrc.hits, vb->mrc.misses,
               vb->mrc.evictions);
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
        .mr_misses = vb->mrc.misses, .mr_evictions = vb->mrc.evictions};
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
