/* verbs_tx.c - the send side of the verbs protocols (verbs.h): eager messages into
 * the peer's bounce slots, RTS, and rendezvous RDMA_WRITE_WITH_IMMs straight from
 * the user's buffer into the buffer (or scratch window) the peer granted. */
#include "verbs.h"

#include <endian.h>
#include <inttypes.h>
#include <string.h>

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
    struct vb_wire *w = vb_take_sslot(q, &s);
    w->type = VB_EAGER;
    w->hdr = x->hdr;
    if (x->len)
        memcpy((uint8_t *)w + VB_EAGER_OFF, x->buf, x->len);
    if (vb_send_slot(vb, q, s, VB_EAGER_OFF + x->len) != 0)
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
            vb_peer_hangup(vb, q, rc);
            return 1;
        }
    }
    uint16_t s;
    struct vb_wire *w = vb_take_sslot(q, &s);
    w->type = VB_RTS;
    w->id = ++q->next_id;
    w->hdr = x->hdr;
    if (vb_send_slot(vb, q, s, sizeof(*w)) != 0)
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
        if (vb_post_send_wr(vb, q, &wr) != 0)
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
void vb_tx_progress(struct crux_verbs *vb, struct vb_peer *q)
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

void vb_on_grant(struct crux_verbs *vb, struct vb_peer *q, const struct vb_wire *w)
{
    struct crux_xfer *x = q->sq_head;
    if (!x || !q->tx_rts_sent || w->id != q->next_id || q->g_count == VB_NGRANTS ||
        w->off + w->len > x->len) {
        crux_error(CRUX_SUBSYS_NET, "verbs: unexpected grant %u [%" PRIu64 ", +%" PRIu64 ") from "
                   "rank %d (%s): protocol error", w->id, w->off, w->len, q->rank, q->host);
        vb_peer_fail(vb, q, CRUX_ERR_INTERNAL);
        return;
    }
    q->grants[(q->g_head + q->g_count) % VB_NGRANTS] =
        (struct vb_grant){.off = w->off, .len = w->len, .addr = w->addr, .rkey = w->rkey,
                          .id = w->id};
    q->g_count++;
}

void vb_on_refuse(struct crux_verbs *vb, struct vb_peer *q, const struct vb_wire *w)
{
    struct crux_xfer *x = q->sq_head;
    if (!x || !q->tx_rts_sent || w->id != q->next_id) {
        crux_error(CRUX_SUBSYS_NET, "verbs: unexpected refusal from rank %d (%s)", q->rank, q->host);
        vb_peer_fail(vb, q, CRUX_ERR_INTERNAL);
        return;
    }
    if (w->off == VB_REFUSE_NOREG) {
        crux_error(CRUX_SUBSYS_NET, "verbs: rank %d (%s) could not register its %" PRIu64
                   "-byte receive buffer for our message (see its log)", q->rank, q->host,
                   x->hdr.len);
        tx_pop(vb, q, CRUX_ERR_PEER);
        vb_peer_hangup(vb, q, CRUX_ERR_PEER);
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
    vb_peer_hangup(vb, q, CRUX_ERR_MISMATCH);
}
