/* shm.c - the shared-memory transport's vtable: queues, progress, sleep, peer death.
 *
 * Per local peer there is a FIFO of sends and one of receives (linked through
 * x->next, no allocation). isend/irecv try to finish at once when the queue is
 * empty, which is what keeps a small exchange at one cache-line round trip.
 * block() sleeps on this rank's futex doorbell after announcing it; peers ring it
 * only when they see the announcement, so the fast path makes no syscall.
 */
#include <errno.h>
#include <linux/futex.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "shm.h"
#include "shm_direct.h"

#define SHM_DEATH_POLL_NS 10000000ull /* progress() looks for dead peers every 10 ms */
#define SHM_SLEEP_SLICE_MS 20         /* block() re-checks peers at least this often */

static uint64_t now_coarse_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static struct shm_peer *peer_lookup(struct shm_tp *tp, int rank)
{
    if (rank < 0 || rank >= tp->base.ctx->size || tp->peer_of[rank] < 0)
        return NULL;
    return &tp->peers[tp->peer_of[rank]];
}

static void queue_push(struct crux_xfer **head, struct crux_xfer **tail, struct crux_xfer *x)
{
    x->next = NULL;
    if (*tail)
        (*tail)->next = x;
    else
        *head = x;
    *tail = x;
}

static void queue_fail(struct crux_xfer **head, struct crux_xfer **tail, int rc)
{
    for (struct crux_xfer *x = *head, *n; x; x = n) {
        n = x->next;
        x->next = NULL;
        shm_xfer_finish(x, rc);
    }
    *head = *tail = NULL;
}

static void progress_sends(struct shm_tp *tp, struct shm_peer *p)
{
    while (p->sq_head && shm_send_step(tp, p, p->sq_head)) {
        struct crux_xfer *x = p->sq_head;
        tp->ncompleted++;
        p->sq_head = x->next;
        x->next = NULL;
        if (!p->sq_head)
            p->sq_tail = NULL;
    }
}

static void progress_recvs(struct shm_tp *tp, struct shm_peer *p)
{
    while (p->rq_head && shm_recv_step(tp, p, p->rq_head)) {
        struct crux_xfer *x = p->rq_head;
        tp->ncompleted++;
        p->rq_head = x->next;
        x->next = NULL;
        if (!p->rq_head)
            p->rq_tail = NULL;
    }
    if (p->rx_state == SHM_RX_DISCARD) /* keep the sender moving after a mismatch */
        shm_discard_step(tp, p);
}

static int peer_is_dead(const struct shm_peer *p)
{
    if (p->death == SHM_DEATH_PIDFD) {
        struct pollfd pf = {.fd = p->pidfd, .events = POLLIN};
        return poll(&pf, 1, 0) > 0;
    }
    if (p->death == SHM_DEATH_KILL0)
        return kill((pid_t)p->info->pid, 0) != 0 && errno == ESRCH;
    return 0;
}

/* A dead peer's last complete messages are still delivered (its stores are all
 * visible); whatever else is queued to or from it fails with CRUX_ERR_PEER. A peer
 * that closed the transport first and left nothing pending simply departed. */
static void peer_fail(struct shm_tp *tp, struct shm_peer *p)
{
    p->dead = 1;
    progress_recvs(tp, p);
    int clean = atomic_load_explicit(&p->door->departed, memory_order_acquire) && !p->rq_head &&
                !p->sq_head;
    if (clean) {
        crux_debug(CRUX_SUBSYS_SHM, "peer rank %d (host %s, pid %d) closed and exited", p->rank,
                   p->info->host, (int)p->info->pid);
        return;
    }
    crux_error(CRUX_SUBSYS_SHM, "peer rank %d (host %s, pid %d) died", p->rank, p->info->host,
               (int)p->info->pid);
    tp->ndead++;
    queue_fail(&p->rq_head, &p->rq_tail, CRUX_ERR_PEER);
    queue_fail(&p->sq_head, &p->sq_tail, CRUX_ERR_PEER);
}

static void check_deaths(struct shm_tp *tp)
{
    for (int i = 0; i < tp->npeers; i++) {
        struct shm_peer *p = &tp->peers[i];
        if (!p->dead && peer_is_dead(p))
            peer_fail(tp, p);
    }
}

static int shm_isend(struct crux_tp *base, struct crux_xfer *x)
{
    struct shm_tp *tp = (struct shm_tp *)base;
    struct shm_peer *p = peer_lookup(tp, x->peer);
    x->kind = CRUX_XFER_SEND;
    x->bytes_done = 0;
    x->done = 0;
    x->rc = CRUX_SUCCESS;
    x->next = NULL;
    x->tp_priv[0] = 0;
    if (__builtin_expect(!p || p->dead || x->len != x->hdr.len, 0)) {
        int rc = p && p->dead ? CRUX_ERR_PEER : CRUX_ERR_ARG;
        if (rc == CRUX_ERR_PEER)
            crux_error(CRUX_SUBSYS_SHM, "shm isend to rank %d (host %s): the peer is gone",
                       x->peer, p->info->host);
        else
            crux_error(CRUX_SUBSYS_SHM, "shm isend to rank %d: not a peer or len %zu != hdr.len %llu",
                       x->peer, x->len, (unsigned long long)x->hdr.len);
        shm_xfer_finish(x, rc);
        return rc;
    }
    if (!p->sq_head && shm_send_step(tp, p, x))
        return x->rc;
    queue_push(&p->sq_head, &p->sq_tail, x);
    return CRUX_SUCCESS;
}

static int shm_irecv(struct crux_tp *base, struct crux_xfer *x)
{
    struct shm_tp *tp = (struct shm_tp *)base;
    struct shm_peer *p = peer_lookup(tp, x->peer);
    x->kind = CRUX_XFER_RECV;
    x->bytes_done = 0;
    x->done = 0;
    x->rc = CRUX_SUCCESS;
    x->next = NULL;
    x->tp_priv[0] = 0;
    x->tp_priv[1] = 0; /* log2 of the element size, for reduce */
    int rc = CRUX_SUCCESS;
    if (__builtin_expect(!p || x->len != x->hdr.len, 0)) {
        crux_error(CRUX_SUBSYS_SHM, "shm irecv from rank %d: not a peer or len %zu != hdr.len %llu",
                   x->peer, x->len, (unsigned long long)x->hdr.len);
        rc = CRUX_ERR_ARG;
    } else if (x->reduce_src) {
        size_t esize = crux_datatype_size(x->dtype);
        /* Element sizes are powers of two: keep the shift, so delivering a
         * fragment divides by nothing on the receive path. */
        x->tp_priv[1] = esize ? (uint64_t)__builtin_ctzl(esize) : 0;
        if (esize == 0 || (esize & (esize - 1)) || (x->len & (esize - 1)) != 0) {
            crux_error(CRUX_SUBSYS_SHM, "shm irecv-reduce from rank %d: %zu bytes of dtype %d",
                       x->peer, x->len, (int)x->dtype);
            rc = CRUX_ERR_ARG;
        }
    }
    if (rc == CRUX_SUCCESS && p->dead && !p->rq_head && !shm_recv_step(tp, p, x)) {
        crux_error(CRUX_SUBSYS_SHM, "shm irecv from rank %d (host %s): the peer is gone",
                   x->peer, p->info->host);
        rc = CRUX_ERR_PEER; /* nothing left from it */
    }
    if (rc != CRUX_SUCCESS) {
        shm_xfer_finish(x, rc);
        return rc;
    }
    if (x->done)
        return x->rc;
    if (!p->rq_head && shm_recv_step(tp, p, x))
        return x->rc;
    queue_push(&p->rq_head, &p->rq_tail, x);
    return CRUX_SUCCESS;
}

static int shm_progress(struct crux_tp *base)
{
    struct shm_tp *tp = (struct shm_tp *)base;
    for (int i = 0; i < tp->npeers; i++) {
        struct shm_peer *p = &tp->peers[i];
        if (p->sq_head)
            progress_sends(tp, p);
        if (p->rq_head || p->rx_state == SHM_RX_DISCARD)
            progress_recvs(tp, p);
    }
    if (__builtin_expect((++tp->poll_tick & 63) == 0, 0)) {
        shm_settle(tp);
        uint64_t now = now_coarse_ns();
        if (now - tp->last_poll_ns >= SHM_DEATH_POLL_NS) {
            tp->last_poll_ns = now;
            check_deaths(tp);
        }
    }
    return tp->ndead ? CRUX_ERR_PEER : CRUX_SUCCESS;
}

static int any_ready(struct shm_tp *tp)
{
    for (int i = 0; i < tp->npeers; i++)
        if (!tp->peers[i].dead && shm_peer_ready(&tp->peers[i]))
            return 1;
    return 0;
}

static void futex_sleep(struct shm_door *door, uint32_t seen, int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    syscall(SYS_futex, &door->bell, FUTEX_WAIT, seen, &ts, NULL, 0);
}

static int shm_block(struct crux_tp *base, int timeout_ms)
{
    struct shm_tp *tp = (struct shm_tp *)base;
    int ndead = tp->ndead;
    check_deaths(tp);
    /* Transfers the caller's last progress() completed count as news: a caller
     * that blocks without re-checking them must not sleep on them. */
    int fresh = tp->ncompleted != tp->ncompleted_seen;
    tp->ncompleted_seen = tp->ncompleted;
    if (tp->ndead != ndead || !tp->door || timeout_ms == 0 || fresh)
        return tp->ndead ? CRUX_ERR_PEER : CRUX_SUCCESS;
    int left = timeout_ms < 0 ? SHM_SLEEP_SLICE_MS : timeout_ms;
    shm_settle(tp);
    do {
        atomic_store_explicit(&tp->door->sleeping, 1, memory_order_seq_cst);
        uint32_t seen = atomic_load_explicit(&tp->door->bell, memory_order_seq_cst);
        if (any_ready(tp)) {
            atomic_store_explicit(&tp->door->sleeping, 0, memory_order_relaxed);
            break;
        }
        int slice = left < SHM_SLEEP_SLICE_MS ? left : SHM_SLEEP_SLICE_MS;
        futex_sleep(tp->door, seen, slice);
        atomic_store_explicit(&tp->door->sleeping, 0, memory_order_relaxed);
        tp->st.sleeps++;
        left -= slice;
        check_deaths(tp);
        if (tp->ndead != ndead || atomic_load_explicit(&tp->door->bell, memory_order_acquire) != seen)
            break;
    } while (left > 0);
    return tp->ndead ? CRUX_ERR_PEER : CRUX_SUCCESS;
}

/* Has anything new arrived from p that a node schedule (shm_direct.h) may wait
 * for: a mailbox message, a staging fragment, or a returned staging slot? Each
 * arrival counts as news once: a schedule that cannot take the head fragment yet
 * (it waits for a free outgoing slot) must still be able to sleep. */
static int direct_news(struct shm_peer *p)
{
    uint64_t m = p->seen_msgs > p->rx_msgs ? p->seen_msgs : p->rx_msgs;
    const struct shm_slot *s = &p->rx.slots[m & (p->rx.nslots - 1)];
    if (m - p->rx_msgs < p->rx.nslots &&
        (uint32_t)atomic_load_explicit(&s->ctl, memory_order_acquire) == (uint32_t)(m + 1)) {
        p->seen_msgs = m + 1;
        return 1;
    }
    uint64_t f = p->seen_frags > p->rx_frags ? p->seen_frags : p->rx_frags;
    if (f - p->rx_frags < p->rx.depth &&
        atomic_load_explicit(&p->rx.desc[f & (p->rx.depth - 1)].stamp, memory_order_acquire) == f + 1) {
        p->seen_frags = f + 1;
        return 1;
    }
    uint64_t cr = atomic_load_explicit(&p->tx.credit->frags, memory_order_acquire);
    if (cr != p->cr_frags) {
        p->cr_frags = cr;
        return 1;
    }
    return 0;
}

int crux_shm_direct_block(struct crux_tp *base, int peer, int timeout_ms)
{
    struct shm_tp *tp = (struct shm_tp *)base;
    struct shm_peer *p = peer_lookup(tp, peer);
    if (!p || p->dead)
        return CRUX_ERR_PEER;
    /* News since the caller last looked: no sleep, and no death-check syscalls
     * (the caller's crux_progress checks deaths at its own pace). */
    if (direct_news(p))
        return CRUX_SUCCESS;
    int ndead = tp->ndead;
    check_deaths(tp);
    if (tp->ndead != ndead || p->dead)
        return CRUX_ERR_PEER;
    shm_settle(tp); /* wake-ups we still owe, before we stop running */
    atomic_store_explicit(&tp->door->sleeping, 1, memory_order_seq_cst);
    uint32_t seen = atomic_load_explicit(&tp->door->bell, memory_order_seq_cst);
    if (!direct_news(p)) {
        futex_sleep(tp->door, seen, timeout_ms);
        tp->st.sleeps++;
    }
    atomic_store_explicit(&tp->door->sleeping, 0, memory_order_relaxed);
    check_deaths(tp);
    return tp->ndead != ndead ? CRUX_ERR_PEER : CRUX_SUCCESS;
}

static void shm_close(struct crux_tp *base)
{
    struct shm_tp *tp = (struct shm_tp *)base;
    if (!tp)
        return;
    const struct shm_stats *s = &tp->st;
    crux_debug(CRUX_SUBSYS_SHM,
               "shm closed: mailbox %llu msgs %llu bytes; staging %llu msgs %llu bytes %llu "
               "frags; %llu copies %llu reduces; %llu wakes %llu sleeps",
               (unsigned long long)s->mb_msgs, (unsigned long long)s->mb_bytes,
               (unsigned long long)s->st_msgs, (unsigned long long)s->st_bytes,
               (unsigned long long)s->st_frags, (unsigned long long)s->copies,
               (unsigned long long)s->reduces, (unsigned long long)s->wakes,
               (unsigned long long)s->sleeps);
    if (tp->door)
        atomic_store_explicit(&tp->door->departed, 1, memory_order_release);
    shm_teardown(tp);
    free(tp);
}

static int shm_init(struct crux_ctx *ctx, const int *peers, int npeers, struct crux_tp **out)
{
    *out = NULL;
    struct shm_tp *tp = calloc(1, sizeof *tp);
    if (!tp) {
        /* Still take part in the two rounds so the other ranks do not hang. */
        crux_error(CRUX_SUBSYS_SHM, "out of memory for the shm transport");
        int32_t *all = calloc((size_t)ctx->size, sizeof *all);
        for (int round = 0; all && round < 2; round++) {
            all[ctx->rank] = CRUX_ERR_NOMEM;
            crux_bootstrap_allgather(ctx->bs, all, sizeof *all);
        }
        free(all);
        return CRUX_ERR_NOMEM;
    }
    tp->base.ops = &crux_tp_shm_ops;
    tp->base.ctx = ctx;
    int rc = shm_setup(tp, peers, npeers < 0 ? 0 : npeers);
    if (rc != CRUX_SUCCESS) {
        shm_teardown(tp);
        free(tp);
        return rc;
    }
    tp->last_poll_ns = now_coarse_ns();
    *out = &tp->base;
    return CRUX_SUCCESS;
}

const struct crux_tp_ops crux_tp_shm_ops = {
    .name = "shm",
    .init = shm_init,
    .reg_mr = NULL,
    .dereg_mr = NULL,
    .isend = shm_isend,
    .irecv = shm_irecv,
    .progress = shm_progress,
    .block = shm_block,
    .close = shm_close,
};
