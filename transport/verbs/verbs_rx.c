/* verbs_rx.c - the receive side of the verbs protocols (verbs.h): re-posting bounce
 * slots, matching held messages with posted receives in order, landing eager
 * payloads, granting rendezvous buffers or scratch windows, refusing mismatches. */
#include "verbs.h"

#include <endian.h>
#include <inttypes.h>
#include <string.h>

#include "reduce.h"

void vb_repost_recvs(struct crux_verbs *vb, struct vb_peer *q)
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
            vb_peer_fail(vb, q, CRUX_ERR_TRANSPORT);
            return;
        }
        q->nrfree--;
        q->rposted++;
        q->reposts++;
    }
    vb_credit_push(vb, q);
}


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

void vb_rx_send_grants(struct crux_verbs *vb, struct vb_peer *q)
{
    while (q->rx_grants_due > 0 && !q->failed && can_send_msg(q)) {
        struct crux_xfer *x = q->rx_rdv;
        uint16_t s;
        struct vb_wire *w = vb_take_sslot(q, &s);
        w->type = VB_CTS;
        w->id = q->rx_id;
        w->off = q->rx_granted;
        if (!q->rx_mr) {
            w->len = min_sz(vb->window, x->len - q->rx_granted);
            w->addr = (uintptr_t)scratch_at(vb, q, w->off);
            w->rkey = vb->mr->rkey;
        } else {
            w->len = x->len;
            w->addr = (uintptr_t)x->buf;
            w->rkey = ((struct ibv_mr *)q->rx_mr->mr)->rkey;
        }
        if (vb_send_slot(vb, q, s, sizeof(*w)) != 0)
            return;
        q->rx_granted += w->len;
        q->rx_grants_due--;
    }
}

void vb_rx_send_refuse(struct crux_verbs *vb, struct vb_peer *q)
{
    if (!q->refuse_due || q->failed || !can_send_msg(q))
        return;
    uint16_t s;
    struct vb_wire *w = vb_take_sslot(q, &s);
    w->type = VB_REFUSE;
    w->id = q->refuse_id;
    w->hdr = q->refuse_hdr;
    w->off = (uint64_t)q->refuse_why;
    if (vb_send_slot(vb, q, s, sizeof(*w)) == 0) {
        q->refuse_due = 0;
        q->refuse_why = VB_REFUSE_MISMATCH;
    }
}

/* Can a receive-with-reduce land in its own buffer and reduce there in place
 * (buf = reduce_src op buf)? Only if the two do not overlap: in place, incoming
 * bytes would overwrite the operand before it is read. */
static int reduce_lands_direct(const struct crux_xfer *x)
{
    uintptr_t b = (uintptr_t)x->buf, s = (uintptr_t)x->reduce_src;
    return b + x->len <= s || s + x->len <= b;
}

static void rx_start_rdv(struct crux_verbs *vb, struct vb_peer *q, struct crux_xfer *x,
                         uint32_t id)
{
    /* Into the user's buffer: one grant of all of it, so the sender never waits for
     * a window to be reduced and re-granted (a round trip and a wake-up per window).
     * Scratch windows only for a reduce into its own operand (in place). */
    if (!x->reduce_src || reduce_lands_direct(x)) {
        int rc = mrc_acquire(&vb->mrc, x->buf, x->len, &q->rx_mr);
        if (rc != CRUX_SUCCESS) {
            /* Tell the sender (it would wait for a grant), then give up on the peer. */
            q->refuse_due = 1;
            q->refuse_id = id;
            q->refuse_hdr = x->hdr;
            q->refuse_why = VB_REFUSE_NOREG;
            vb_rx_send_refuse(vb, q);
            rx_pop(q, rc);
            vb_peer_hangup(vb, q, rc);
            return;
        }
    }
    q->rx_rdv = x;
    q->rx_id = id;
    q->rx_granted = 0;
    size_t nwin = q->rx_mr ? 1 : (x->len + vb->window - 1) / vb->window;
    q->rx_grants_due = nwin < 2 ? (int)nwin : 2;
    vb_rx_send_grants(vb, q);
}

/* Pair held messages with posted receives, in order. */
void vb_rx_match(struct crux_verbs *vb, struct vb_peer *q)
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
            vb_rx_send_refuse(vb, q);
            vb_peer_hangup(vb, q, CRUX_ERR_MISMATCH);
            return;
        }
        if (w->type == VB_EAGER) {
            land(x, 0, (const uint8_t *)w + VB_EAGER_OFF, x->len);
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
    vb_repost_recvs(vb, q);
}

static void rx_data(struct crux_verbs *vb, struct vb_peer *q, uint32_t id, size_t n)
{
    struct crux_xfer *x = q->rx_rdv;
    if (!x || id != q->rx_id || x->bytes_done + n > q->rx_granted) {
        crux_error(CRUX_SUBSYS_NET, "verbs: unexpected %zu-byte write (transfer %u) from rank %d "
                   "(%s): protocol error", n, id, q->rank, q->host);
        vb_peer_fail(vb, q, CRUX_ERR_INTERNAL);
        return;
    }
    size_t off = x->bytes_done;
    if (x->reduce_src) {
        /* Landed in the scratch window, or in place in buf (reduce_lands_direct). */
        land(x, off, q->rx_mr ? (uint8_t *)x->buf + off : scratch_at(vb, q, off), n);
        vb->rx_staged_bytes += n;
        size_t end = off + n;
        /* A window fully reduced frees its half of the scratch for the next grant. */
        if (!q->rx_mr && (end % vb->window == 0 || end == x->len) && q->rx_granted < x->len)
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
        vb_rx_send_grants(vb, q);
    }
}

void vb_on_recv(struct crux_verbs *vb, struct vb_peer *q, const struct ibv_wc *wc)
{
    uint16_t s = (uint16_t)(wc->wr_id & 0xffff);
    q->rposted--;
    if (wc->opcode == IBV_WC_RECV_RDMA_WITH_IMM) {
        slot_free(q, s);
        rx_data(vb, q, be32toh(wc->imm_data), wc->byte_len);
        return;
    }
    const struct vb_wire *w = (const void *)(q->slots + (size_t)s * VB_SLOT_BYTES);
    if (w->credit > q->credit_seen)
        q->credit_seen = w->credit;
    switch (w->type) {
    case VB_EAGER:
    case VB_RTS:
        q->held[(q->h_head + q->h_count) % VB_NSLOTS] = s;
        q->h_count++;
        return;
    case VB_CTS:
        vb_on_grant(vb, q, w);
        break;
    case VB_REFUSE:
        vb_on_refuse(vb, q, w);
        break;
    default:
        crux_error(CRUX_SUBSYS_NET, "verbs: message of unknown type %u from rank %d (%s)",
                   w->type, q->rank, q->host);
        vb_peer_fail(vb, q, CRUX_ERR_INTERNAL);
    }
    slot_free(q, s);
}
