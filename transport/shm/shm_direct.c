/* shm_direct.c - synchronous mailbox sends/receives without transfer queues
 * (see shm_direct.h). A transfer descriptor on the stack drives the same per-pair
 * protocol as the queued path (shm_chan.c), limited to what completes in one step:
 * eager sends, and receives of messages that did not go through staging. */
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() __asm__ __volatile__("" ::: "memory")
#endif

#include "shm_direct.h"
#include "shm.h"

static struct shm_peer *direct_peer(struct crux_tp *base, int rank)
{
    struct shm_tp *tp = (struct shm_tp *)base;
    if (rank < 0 || rank >= base->ctx->size || tp->peer_of[rank] < 0)
        return NULL;
    return &tp->peers[tp->peer_of[rank]];
}

int crux_shm_is_shm(const struct crux_tp *tp) { return tp && tp->ops == &crux_tp_shm_ops; }

int crux_shm_direct_ok(struct crux_tp *tp, int peer)
{
    struct shm_peer *p = direct_peer(tp, peer);
    return p && !p->dead && !p->sq_head && !p->rq_head && p->rx_state == SHM_RX_IDLE;
}

size_t crux_shm_direct_max(struct crux_tp *tp, int peer)
{
    struct shm_peer *p = direct_peer(tp, peer);
    return p ? p->eager_max : 0;
}

int crux_shm_send_now(struct crux_tp *base, int peer, const struct crux_msg_hdr *hdr,
                      const void *buf)
{
    struct shm_peer *p = direct_peer(base, peer);
    /* Larger messages stage in fragments over many steps: the queued path's job. */
    if (hdr->len > p->eager_max || !shm_post_eager((struct shm_tp *)base, p, hdr, buf))
        return CRUX_INPROGRESS;
    return CRUX_SUCCESS;
}

int crux_shm_recv_now(struct crux_tp *base, int peer, const struct crux_msg_hdr *want, void *dst,
                      const void *a, crux_datatype_t dtype, crux_op_t op)
{
    struct shm_tp *tp = (struct shm_tp *)base;
    struct shm_peer *p = direct_peer(base, peer);
    const struct shm_slot *s = &p->rx.slots[p->rx_msgs & (p->rx.nslots - 1)];
    uint64_t ctl = atomic_load_explicit(&s->ctl, memory_order_acquire);
    if ((uint32_t)ctl != (uint32_t)(p->rx_msgs + 1))
        return CRUX_INPROGRESS;
    if (__builtin_expect(!shm_hdr_check(p, s, ctl, want), 0)) {
        shm_skip_message(tp, p, s, ctl);
        return CRUX_ERR_MISMATCH;
    }
    /* A staged message (the peer's eager limit differs) is for irecv to take. */
    if ((uint32_t)(ctl >> 32) == SHM_STAGED)
        return CRUX_INPROGRESS;
    struct shm_land how = {dtype, op, a ? (unsigned)__builtin_ctzl(crux_datatype_size(dtype)) : 0, 0};
    shm_take_eager(tp, p, s, want->len, dst, a, &how);
    return CRUX_SUCCESS;
}

/* A message longer than a slot's inline bytes lands in the eager ring at rx_data,
 * written before its slot. Fetching those lines while we poll the slot overlaps their
 * transfer with the slot's, instead of starting it once the slot shows up (one
 * cross-core round trip less; 2026-12-07, 2 ranks, medians at a 0.27 us floor: 64 B
 * 0.44 -> 0.33 us, 256 B 0.46 -> 0.35, 1 KiB 0.69 -> 0.63). Only the first lines
 * before the ring wraps: a longer message's copy streams anyway, and each poll
 * should stay cheap. */
#define XCHG_PREFETCH_LINES 16
static const unsigned char *ring_lines_ahead(const struct shm_peer *p, size_t len, size_t *lines)
{
    uint64_t at = p->rx_data & (p->rx.data_bytes - 1);
    size_t first = p->rx.data_bytes - at;
    size_t n = len < first ? len : first;
    *lines = (n + SHM_LINE - 1) / SHM_LINE;
    if (*lines > XCHG_PREFETCH_LINES)
        *lines = XCHG_PREFETCH_LINES;
    return p->rx.data + at;
}

static inline void prefetch_lines(const unsigned char *at, size_t lines)
{
    for (size_t l = 0; l < lines; l++)
        __builtin_prefetch(at + l * SHM_LINE, 0, 3);
}

int crux_shm_xchg_now(struct crux_tp *base, int peer, const struct crux_msg_hdr *hdr,
                      const void *buf, void *dst, const void *a, crux_datatype_t dtype,
                      crux_op_t op, unsigned polls, int *sent)
{
    *sent = 0;
    if (!crux_shm_direct_ok(base, peer) || crux_shm_send_now(base, peer, hdr, buf) != CRUX_SUCCESS)
        return CRUX_INPROGRESS;
    *sent = 1;
    int rc = CRUX_INPROGRESS;
    const unsigned char *ring = NULL;
    size_t lines = 0;
    if (hdr->len > SHM_INLINE) /* the payload comes through the eager ring: see below */
        ring = ring_lines_ahead(direct_peer(base, peer), hdr->len, &lines);
    for (unsigned i = 0; i < polls && (rc = crux_shm_recv_now(base, peer, hdr, dst, a, dtype, op)) ==
                                          CRUX_INPROGRESS; i++) {
        prefetch_lines(ring, lines);
        cpu_relax();
    }
    return rc;
}

/* algo/shm_pipe.c's two-phase order (RS depth/2 chunks ahead, then AG and RS
 * alternating on one ring) never deadlocks when the lag is at most half the ring
 * (exhaustive simulation of both ranks' interleavings: depth 4, 8 and 16 with
 * lag depth/2 for up to 20 chunks a half and halves differing by one chunk;
 * any larger lag deadlocks). */
_Static_assert(SHM_STAGE_DEPTH >= 4 && SHM_STAGE_DEPTH % 2 == 0,
               "node schedules need >= 4 staging slots, an even number");

size_t crux_shm_frag_depth(struct crux_tp *base, int peer)
{
    struct shm_peer *p = direct_peer(base, peer);
    return p->tx.depth < p->rx.depth ? p->tx.depth : p->rx.depth;
}

size_t crux_shm_frag_bytes(struct crux_tp *base, int peer)
{
    struct shm_peer *p = direct_peer(base, peer);
    return p->tx.stage_bytes < p->rx.stage_bytes ? p->tx.stage_bytes : p->rx.stage_bytes;
}

void *crux_shm_frag_tx(struct crux_tp *base, int peer, size_t *cap)
{
    struct shm_peer *p = direct_peer(base, peer);
    if (p->tx_frags - p->cr_frags >= p->tx.depth) {
        p->cr_frags = atomic_load_explicit(&p->tx.credit->frags, memory_order_acquire);
        if (p->tx_frags - p->cr_frags >= p->tx.depth)
            return NULL;
    }
    *cap = p->tx.stage_bytes;
    return p->tx.stage + (p->tx_frags & (p->tx.depth - 1)) * p->tx.stage_bytes;
}

void crux_shm_frag_tx_post(struct crux_tp *base, int peer, size_t n)
{
    struct shm_tp *tp = (struct shm_tp *)base;
    struct shm_peer *p = direct_peer(base, peer);
    uint64_t k = p->tx_frags & (p->tx.depth - 1);
    p->tx.desc[k].bytes = n;
    p->tx_frags++;
    atomic_store_explicit(&p->tx.desc[k].stamp, p->tx_frags, memory_order_release);
    /* Order the stamp before the peer's sleeping flag is read (a peer that just
     * went to sleep is woken, not left to its timeout). */
    atomic_thread_fence(memory_order_seq_cst);
    shm_ring(tp, p);
    tp->st.st_frags++;
    tp->st.st_bytes += n;
}

const void *crux_shm_frag_rx(struct crux_tp *base, int peer, size_t *n)
{
    struct shm_peer *p = direct_peer(base, peer);
    uint64_t k = p->rx_frags & (p->rx.depth - 1);
    if (atomic_load_explicit(&p->rx.desc[k].stamp, memory_order_acquire) != p->rx_frags + 1)
        return NULL;
    *n = p->rx.desc[k].bytes;
    return p->rx.stage + k * p->rx.stage_bytes;
}

void crux_shm_frag_rx_done(struct crux_tp *base, int peer)
{
    struct shm_tp *tp = (struct shm_tp *)base;
    struct shm_peer *p = direct_peer(base, peer);
    p->rx_frags++;
    atomic_store_explicit(&p->rx.credit->frags, p->rx_frags, memory_order_release);
    atomic_thread_fence(memory_order_seq_cst); /* as in frag_tx_post */
    shm_ring(tp, p);
}

int crux_shm_nt(const struct crux_ctx *ctx, size_t bytes)
{
    return ctx->cfg.shm_nt_bytes && bytes >= ctx->cfg.shm_nt_bytes;
}

void crux_shm_copy(void *dst, const void *src, size_t n, int nt)
{
    if (nt)
        shm_copy_nt(dst, src, n);
    else if (n)
        memcpy(dst, src, n);
}
