/* tcp.c - the TCP transport's vtable: posting, progress, sleeping, teardown.
 * The byte streams themselves are in tcp_stream.c, setup in tcp_conn.c. */
#include "tcp.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

const char *tcp_peer_host(const struct crux_ctx *ctx, int rank)
{
    if (ctx == NULL || ctx->peers == NULL || rank < 0 || rank >= ctx->size)
        return "?";
    return ctx->peers[rank].host[0] ? ctx->peers[rank].host : "?";
}

static inline struct crux_tcp *tcp_of(struct crux_tp *base) { return (struct crux_tcp *)base; }

/* ---------- vtable ---------- */

static struct tcp_peer *peer_of_xfer(struct crux_tcp *tp, const struct crux_xfer *x,
                                     const char *verb)
{
    int idx = -1;
    if (x->peer >= 0 && x->peer < tp->base.ctx->size)
        idx = tp->peer_of_rank[x->peer];
    if (idx < 0) {
        crux_error(CRUX_SUBSYS_NET, "tcp %s: rank %d is not connected through tcp", verb,
                   x->peer);
        return NULL;
    }
    return &tp->peers[idx];
}

static void xfer_reset(struct crux_xfer *x, int kind)
{
    x->kind = kind;
    x->bytes_done = 0;
    x->rc = CRUX_SUCCESS;
    x->next = NULL;
    x->done = 0;
}

static int tcp_isend(struct crux_tp *base, struct crux_xfer *x)
{
    struct crux_tcp *tp = tcp_of(base);
    struct tcp_peer *p = peer_of_xfer(tp, x, "send");
    if (p == NULL)
        return CRUX_ERR_ARG;
    CRUX_TRY(crux_xfer_check(x, "tcp", "send"));
    xfer_reset(x, CRUX_XFER_SEND);
    if (p->failed) {
        tcp_xfer_finish(x, p->failed);
        return CRUX_SUCCESS;
    }
    crux_tcp_hdr_encode(&x->hdr, (uint8_t *)x->tp_priv);
    if (p->sq_head == NULL)
        p->sq_head = x;
    else
        p->sq_tail->next = x;
    p->sq_tail = x;
    tcp_peer_activate(tp, p);
    if (p->sq_head == x && !p->tx_blocked)
        tcp_tx_progress(tp, p);
    tcp_peer_maybe_idle(tp, p);
    return CRUX_SUCCESS;
}

static int tcp_irecv(struct crux_tp *base, struct crux_xfer *x)
{
    struct crux_tcp *tp = tcp_of(base);
    struct tcp_peer *p = peer_of_xfer(tp, x, "recv");
    if (p == NULL)
        return CRUX_ERR_ARG;
    CRUX_TRY(crux_xfer_check(x, "tcp", "recv"));
    if (x->reduce_src != NULL) {
        size_t es = crux_datatype_size(x->dtype);
        if (es == 0 || x->len % es != 0 || (int)x->op < CRUX_SUM || (int)x->op > CRUX_MIN) {
            crux_error(CRUX_SUBSYS_NET, "tcp recv-reduce from rank %d: len %zu, dtype %d, op %d",
                       x->peer, x->len, (int)x->dtype, (int)x->op);
            return CRUX_ERR_ARG;
        }
    }
    xfer_reset(x, CRUX_XFER_RECV);
    if (p->failed) {
        tcp_xfer_finish(x, p->failed);
        return CRUX_SUCCESS;
    }
    if (p->rq_head == NULL) {
        p->rq_head = x;
        tp->nrx++;
    } else {
        p->rq_tail->next = x;
    }
    p->rq_tail = x;
    tcp_peer_activate(tp, p);
    if (p->rx_held) {
        p->rx_held = 0;
        tcp_peer_set_events(tp, p, p->ev_mask | EPOLLIN);
    }
    if (p->rq_head == x)
        tcp_rx_progress(tp, p, 0);
    tcp_peer_maybe_idle(tp, p);
    return CRUX_SUCCESS;
}

/* Reports a socket error on a peer whose receive side is parked. */
static void check_parked_error(struct crux_tcp *tp, struct tcp_peer *p)
{
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        err = errno;
    tcp_fail_peer_errno(tp, p, err ? err : ECONNRESET);
}

static int poll_events(struct crux_tcp *tp, int timeout_ms)
{
    int n = epoll_wait(tp->epfd, tp->events, tp->npeers > 0 ? tp->npeers : 1, timeout_ms);
    if (n < 0) {
        if (errno == EINTR)
            return CRUX_SUCCESS;
        crux_error(CRUX_SUBSYS_NET, "epoll_wait: %s", strerror(errno));
        return CRUX_ERR_TRANSPORT;
    }
    for (int i = 0; i < n; i++) {
        struct tcp_peer *p = &tp->peers[tp->events[i].data.u32];
        uint32_t ev = tp->events[i].events;
        if (p->failed)
            continue;
        if (ev & EPOLLOUT) {
            if (p->tx_blocked) {
                p->tx_blocked = 0;
                tp->ntx_blocked--;
                tcp_tx_progress(tp, p);
            } else {
                tcp_peer_set_events(tp, p, p->ev_mask & ~(uint32_t)EPOLLOUT);
            }
        }
        if (!p->failed && (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))) {
            if (p->rx_held && (ev & (EPOLLERR | EPOLLHUP)))
                check_parked_error(tp, p);
            else
                tcp_rx_progress(tp, p, 1);
        }
        tcp_peer_maybe_idle(tp, p);
    }
    return CRUX_SUCCESS;
}

/* Sends whose dependency advanced since the last call (no syscall otherwise). */
static void tx_all(struct crux_tcp *tp)
{
    for (int i = tp->nactive - 1; i >= 0; i--) {
        struct tcp_peer *p = &tp->peers[tp->active[i]];
        if (p->sq_head != NULL && !p->tx_blocked)
            tcp_tx_progress(tp, p);
        tcp_peer_maybe_idle(tp, p);
    }
}

/* Mid-way through a long message: polling it with recv() would take the socket
 * lock while the sender's segments arrive (pushing them onto the backlog, and onto
 * our CPU); epoll_wait looks without locking. */
static int rx_streaming(const struct tcp_peer *p)
{
    const struct crux_xfer *x = p->rq_head;
    return p->rx_state == RX_BODY && x->reduce_src == NULL &&
           x->len - x->bytes_done >= TCP_DIRECT_MIN;
}

/* The receiving peer when exactly one has receives posted. */
static struct tcp_peer *sole_receiver(struct crux_tcp *tp)
{
    for (int i = tp->nactive - 1; i >= 0; i--)
        if (tp->peers[tp->active[i]].rq_head != NULL)
            return &tp->peers[tp->active[i]];
    return NULL;
}

/* One direct recv is cheaper than epoll_wait while a single peer has receives
 * posted and no long message is streaming in; otherwise one epoll_wait finds the
 * ready sockets. */
static int tcp_progress(struct crux_tp *base)
{
    struct crux_tcp *tp = tcp_of(base);
    int rc = CRUX_SUCCESS;
    if (tp->nactive == 0)
        return tp->failed_rc;
    struct tcp_peer *solo = tp->nrx == 1 && tp->ntx_blocked == 0 ? sole_receiver(tp) : NULL;
    if (solo != NULL && !rx_streaming(solo))
        tcp_rx_progress(tp, solo, 0);
    else if (tp->nrx > 0 || tp->ntx_blocked > 0)
        rc = poll_events(tp, 0);
    tx_all(tp);
    return rc != CRUX_SUCCESS ? rc : tp->failed_rc;
}

static int tcp_block(struct crux_tp *base, int timeout_ms)
{
    struct crux_tcp *tp = tcp_of(base);
    if (tp->npeers == 0)
        return tp->failed_rc;
    int rc = poll_events(tp, timeout_ms); /* sleeps even after a failure: others may live */
    tx_all(tp);
    return rc != CRUX_SUCCESS ? rc : tp->failed_rc;
}

void tcp_close(struct crux_tp *base)
{
    struct crux_tcp *tp = tcp_of(base);
    uint64_t txb = 0, rxb = 0, txm = 0, rxm = 0, red = 0;
    if (tp == NULL)
        return;
    for (int i = 0; tp->peers != NULL && i < tp->npeers; i++) {
        struct tcp_peer *p = &tp->peers[i];
        txb += p->tx_bytes;
        rxb += p->rx_bytes;
        txm += p->tx_msgs;
        rxm += p->rx_msgs;
        red += p->reduce_calls;
        if (p->fd >= 0) {
            /* Best effort, never blocks: tell the peer this is a departure, not a
             * death (only between messages, or the stream would be misframed). */
            if (!p->failed && p->sq_head == NULL && p->shdr_sent == 0) {
                uint8_t bye[CRUX_TCP_HDR_BYTES];
                crux_tcp_bye_encode(bye);
                (void)!send(p->fd, bye, sizeof(bye), MSG_NOSIGNAL | MSG_DONTWAIT);
            }
            close(p->fd);
        }
        free(p->stage);
    }
    crux_debug(CRUX_SUBSYS_NET,
               "tcp: closing %d peers: sent %" PRIu64 " bytes in %" PRIu64 " messages, received %"
               PRIu64 " bytes in %" PRIu64 " messages, %" PRIu64 " reduce copies",
               tp->npeers, txb, txm, rxb, rxm, red);
    if (tp->epfd >= 0)
        close(tp->epfd);
    free(tp->peers);
    free(tp->peer_of_rank);
    free(tp->active);
    free(tp->events);
    free(tp);
}

const struct crux_tp_ops crux_tp_tcp_ops = {
    .name = "tcp",
    .init = tcp_init,
    .reg_mr = NULL,
    .dereg_mr = NULL,
    .isend = tcp_isend,
    .irecv = tcp_irecv,
    .progress = tcp_progress,
    .block = tcp_block,
    .close = tcp_close,
};
