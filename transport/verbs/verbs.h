/* verbs.h - state shared by the verbs transport's files (not a public contract).
 *
 * Protocol, per ordered pair of ranks, over one RC QP:
 *   EAGER  (len <= VB_EAGER_MAX): header + payload SENT into a bounce slot the
 *          receiver pre-posted; the receiver copies (or reduces) it out.
 *   RTS    (larger): the header only. When the matching receive is posted the
 *          receiver answers with CTS grants {message offset, length, addr, rkey};
 *          the sender RDMA_WRITE_WITH_IMMs the granted bytes (imm = transfer id)
 *          straight from the user buffer. A plain receive grants its own buffer
 *          once (zero copy). So does a receive-with-reduce whose buffer does not
 *          overlap its operand: each fragment is reduced in place as it lands. One
 *          into its own operand (in place) grants two windows of a registered
 *          scratch region in turn and reduces each fragment out of it. Both are one
 *          reduce pass, counted as staged bytes.
 *   REFUSE the receiver's answer to an RTS whose header it does not expect (or whose
 *          buffer it cannot register); both sides then hang up on each other.
 * Every SEND and WRITE_WITH_IMM consumes one receive WQE of the peer: the sender
 * spends a credit on each, and the receiver hands back its cumulative count of
 * re-posted WQEs, so a fast sender never overruns a slow receiver. The count rides
 * in the header of every SEND going the other way (free: a collective's traffic
 * runs both ways); only when VB_CREDIT_LAZY re-posts are still unreported is it
 * RDMA-written into the sender's credit word (no WQE consumed). One send is active
 * per peer at a time: FIFO order on the wire is FIFO order of completion.
 */
#ifndef CRUX_VERBS_H
#define CRUX_VERBS_H

#include <infiniband/verbs.h>
#include <stddef.h>
#include <stdint.h>

#include "crux_internal.h"
#include "verbs_mr_cache.h"

#define VB_EAGER_MAX 8192u   /* payload bytes carried in a bounce slot */
/* An EAGER message is the head of struct vb_wire (up to `off`) and its payload:
 * 8 payload bytes make a 56-byte SEND, not one padded to 128 + 8 (every byte is
 * copied and checksummed once more per hop under Soft-RoCE). Unaligned payloads
 * cost the reduce kernels nothing. */
#define VB_EAGER_OFF 48u
#define VB_SLOT_BYTES (VB_EAGER_OFF + VB_EAGER_MAX)
#define VB_NRECV 32          /* receive WQEs posted per peer = the sender's credits */
#define VB_NSPARE 32         /* more slots, for eager messages waiting for their receive */
#define VB_NSLOTS (VB_NRECV + VB_NSPARE)
#define VB_NSEND 16          /* send slots per peer (EAGER, RTS, CTS, REFUSE) */
#define VB_MAX_WRITES 16     /* rendezvous writes in flight per peer */
#define VB_SQ_DEPTH (VB_NSEND + VB_MAX_WRITES + 2)
#define VB_NGRANTS 4
#define VB_CREDIT_LAZY (VB_NRECV / 2) /* unreported re-posts that force a credit write */
#define VB_MAX_INLINE 256    /* inline data asked of the QP: header-only and tiny SENDs */
#define VB_BLOCK_MS 2        /* longest sleep on the completion channel (see vb_block) */
/* A small-message wait polls this long before it sleeps on the completion channel:
 * about what a sleep costs, so waiting costs at most twice the wait (spin, then
 * block). Under Soft-RoCE in a TCG guest on a loaded host, 8-byte allreduces slept
 * in 1 of 10-20 calls, 1.1 ms on average per sleep, nearly always woken by the
 * completion event (not the VB_BLOCK_MS bound), and the peer's next message then
 * waited for that wake-up too; polling 1 ms first took the mean from 149-243 us to
 * 87-110 us in the same guest (medians unchanged, 25 us). */
#define VB_POLL_US 1000

enum vb_type { VB_EAGER = 1, VB_RTS, VB_CTS, VB_REFUSE };
enum vb_refuse_why { VB_REFUSE_MISMATCH = 0, VB_REFUSE_NOREG = 1 }; /* in vb_wire.off */

/* What heads every slot. */
struct vb_wire {
    uint32_t type;
    uint32_t id;             /* rendezvous transfer id (RTS, CTS, REFUSE) */
    struct crux_msg_hdr hdr; /* EAGER/RTS: the sender's; REFUSE: the receiver's expected */
    uint64_t credit;         /* the sender's re-post count (piggybacked credits) */
    /* Not sent with EAGER messages (their payload starts here, VB_EAGER_OFF): */
    uint64_t off, len, addr; /* CTS: grant of message bytes [off, off+len) at addr */
    uint32_t rkey;
    uint32_t pad;
};
_Static_assert(offsetof(struct vb_wire, off) == VB_EAGER_OFF, "EAGER payload offset");
_Static_assert(sizeof(struct vb_wire) <= VB_SLOT_BYTES, "a control message fits a slot");

/* wr_id = peer index << 32 | kind << 16 | slot */
enum vb_wr_kind { WR_RECV = 1, WR_SEND, WR_WRITE, WR_CREDIT };

struct vb_grant {
    uint64_t off, len, addr;
    uint32_t rkey, id;
};

struct vb_peer {
    int rank;
    const char *host;
    struct ibv_qp *qp;
    uint8_t rgid[16];           /* the peer's GID, for error messages */
    int failed;                 /* 0 or the CRUX_ERR_* its transfers completed with */
    int qp_err;                 /* QP moved to the error state */
    double hangup_at;           /* after a mismatch: when to move the QP to error */
    uint8_t *slots;             /* [VB_NSLOTS] receive bounce slots */
    uint8_t *sslots;            /* [VB_NSEND] send slots */
    uint8_t *scratch;           /* 2 * tp->window: receive-with-reduce landing zone */
    volatile uint64_t *credit_in;  /* the peer writes its WQE re-posts here */
    uint64_t credit_seen;          /* ... or tells them in its SEND headers */
    volatile uint64_t *credit_src; /* our re-posts, the source of our credit writes */
    uint64_t remote_credit_addr;   /* where our credit writes go on the peer */
    uint32_t remote_rkey;
    int sq_inflight;
    /* --- send side --- */
    struct crux_xfer *sq_head, *sq_tail;
    uint64_t credits_used;      /* SENDs and WRITE_WITH_IMMs posted to the peer */
    uint16_t sfree[VB_NSEND];
    int nsfree;
    uint32_t next_id;           /* rendezvous transfer ids */
    int tx_rts_sent;            /* head send: RTS posted, waiting for grants */
    struct vb_grant grants[VB_NGRANTS];
    int g_head, g_count;
    uint64_t tx_posted;         /* head send: bytes handed to WRITEs */
    int tx_writes;              /* head send: WRITEs not yet completed */
    struct mrc_entry *tx_mr;
    /* --- receive side --- */
    struct crux_xfer *rq_head, *rq_tail;
    uint16_t held[VB_NSLOTS];   /* FIFO of slots holding EAGER/RTS not yet matched */
    int h_head, h_count;
    uint16_t rfree[VB_NSLOTS];
    int nrfree;
    int rposted;                /* receive WQEs outstanding */
    uint64_t reposts;           /* cumulative, the credits we hand back */
    uint64_t credit_sent;
    int credit_inflight;
    int probe_wanted;
    double last_probe;
    struct crux_xfer *rx_rdv;   /* receive whose rendezvous is in progress */
    uint32_t rx_id;
    uint64_t rx_granted;        /* message bytes granted so far */
    int rx_grants_due;          /* CTS to send when resources allow */
    struct mrc_entry *rx_mr;
    int refuse_due;             /* REFUSE to send for rx_refuse_id */
    uint32_t refuse_id;
    int refuse_why;             /* enum vb_refuse_why */
    struct crux_msg_hdr refuse_hdr;
};

struct crux_tp_stats;

struct crux_verbs {
    struct crux_tp base;
    struct ibv_context *ctx;
    struct ibv_pd *pd;
    struct ibv_comp_channel *chan;
    struct ibv_cq *cq;          /* receive completions: every wait sleeps on these */
    struct ibv_cq *scq;         /* send completions: armed only when a wait needs one */
    int cq_armed, scq_armed;
    struct ibv_mr *mr;          /* the library's own region: slots, scratch, credit words */
    uint8_t *region;
    size_t region_bytes, per_peer_bytes;
    size_t window;              /* receive-with-reduce window (CRUX_CHUNK_BYTES) */
    size_t frag;                /* bytes per RDMA write */
    char dev_name[64];
    int port, gid_index;
    uint8_t gid[16];
    uint16_t lid;
    enum ibv_mtu mtu;
    uint32_t max_inline;        /* what the QPs accepted of VB_MAX_INLINE */
    int is_eth;
    int npeers;
    struct vb_peer *peers;
    int *peer_of_rank;          /* [world size] -> index, -1 */
    int failed_rc;
    const struct crux_xfer *polled_for; /* poll_before_sleep polled in vain for it */
    uint64_t polled_seq;
    uint32_t polled_tag;
    struct mr_cache mrc;
    /* counters (tests assert on them; logged at close) */
    uint64_t tx_eager_msgs, tx_eager_bytes, tx_rdv_msgs, tx_rdv_bytes;
    uint64_t rx_eager_msgs, rx_eager_bytes, rx_rdv_msgs, rx_rdv_bytes, rx_staged_bytes;
};

/* verbs_dev.c: device, port and GID choice. */
struct vb_port_desc {
    const char *name;
    int port;
    int active;
};
/* Index of the first active port selected by list (CRUX_IB_HCA syntax), or -1. */
int vb_hca_pick(const char *list, const struct vb_port_desc *ports, int n);
/* Open the device/port chosen by cfg; fills ctx, dev_name, port, gid*, lid, mtu, is_eth. */
int vb_dev_open(struct crux_verbs *vb, const struct crux_config *cfg);
/* Can this process use verbs at all (a matching active port)? Logs why not at info. */
int crux_verbs_usable(const struct crux_config *cfg, char *why, size_t whylen);
void vb_gid_format(const uint8_t gid[16], char *buf, size_t len);
/* ibv_reg_mr with an actionable error (ulimit -l). */
struct ibv_mr *vb_reg(struct ibv_pd *pd, void *addr, size_t len, int access, const char *what);

/* verbs_conn.c: everything up to connected QPs (collective). */
/* The CRUX_IB_* knobs both ends of a QP must share: the retry budget decides how
 * soon each side declares the other dead, SL/TC the lane both directions travel.
 * Not here, on purpose: CRUX_IB_HCA and CRUX_IB_GID_INDEX name local hardware and
 * may differ per host; CRUX_IB_MR_CACHE_BYTES is a local memory budget. */
struct vb_agreed {
    uint8_t timeout, retry_cnt, sl, tc;
};
void vb_agreed_of(const struct crux_config *cfg, struct vb_agreed *a);
/* NULL if a and b agree, else the first differing variable's name and both values. */
const char *vb_agreed_diff(const struct vb_agreed *a, const struct vb_agreed *b, int *va, int *vb);
int vb_init(struct crux_ctx *ctx, const int *peers, int npeers, struct crux_tp **out);

/* verbs.c: posting, credits, failures, completions and the vtable. */
void vb_close(struct crux_tp *base);
/* The peer is gone or broken: QP to error, every transfer with it fails with rc. */
void vb_peer_fail(struct crux_verbs *vb, struct vb_peer *q, int rc);
/* The ranks called different collectives: fail the peer's transfers, hang up later. */
void vb_peer_hangup(struct crux_verbs *vb, struct vb_peer *q, int rc);
/* ibv_post_send; on failure logs, fails the peer and returns -1. */
int vb_post_send_wr(struct crux_verbs *vb, struct vb_peer *q, struct ibv_send_wr *wr);
/* A free send slot, its header zeroed; the caller checked can_send_msg. */
struct vb_wire *vb_take_sslot(struct vb_peer *q, uint16_t *s);
/* SEND the first `bytes` bytes of send slot s, spending a credit: sizeof(struct
 * vb_wire) for control messages, VB_EAGER_OFF + payload for EAGER. */
int vb_send_slot(struct crux_verbs *vb, struct vb_peer *q, uint16_t s, size_t bytes);
/* Hand our re-posted receive count to the peer (RDMA write), if due. */
void vb_credit_push(struct crux_verbs *vb, struct vb_peer *q);

/* verbs_tx.c: the send side (eager, RTS, rendezvous writes). */
void vb_tx_progress(struct crux_verbs *vb, struct vb_peer *q);
void vb_on_grant(struct crux_verbs *vb, struct vb_peer *q, const struct vb_wire *w);
void vb_on_refuse(struct crux_verbs *vb, struct vb_peer *q, const struct vb_wire *w);

/* verbs_rx.c: the receive side (matching, landing, grants, refusals, re-posting). */
void vb_repost_recvs(struct crux_verbs *vb, struct vb_peer *q);
void vb_rx_send_grants(struct crux_verbs *vb, struct vb_peer *q);
void vb_rx_send_refuse(struct crux_verbs *vb, struct vb_peer *q);
void vb_rx_match(struct crux_verbs *vb, struct vb_peer *q);
void vb_on_recv(struct crux_verbs *vb, struct vb_peer *q, const struct ibv_wc *wc);

/* Small helpers of all three. */
static inline uint64_t wr_id(int idx, enum vb_wr_kind k, unsigned slot)
{
    return (uint64_t)idx << 32 | (uint64_t)k << 16 | slot;
}

static inline size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }

static inline void xfer_finish(struct crux_xfer *x, int rc)
{
    x->rc = rc;
    x->done = 1;
}

static inline int has_credit(const struct vb_peer *q)
{
    uint64_t written = *q->credit_in;
    return q->credits_used < VB_NRECV + (written > q->credit_seen ? written : q->credit_seen);
}

static inline int can_send_msg(const struct vb_peer *q)
{
    return q->nsfree > 0 && q->sq_inflight < VB_SQ_DEPTH && has_credit(q);
}

static inline void slot_free(struct vb_peer *q, uint16_t s) { q->rfree[q->nrfree++] = s; }

#endif
