/* tcp_stream.c - the per-peer byte stream of the TCP transport.
 *
 * Per peer, one socket carrying both directions, a FIFO of posted sends and one of
 * posted receives. Sends go out with sendmsg (header + user buffer, no copy), long
 * payloads in pieces of an eighth of the message (tcp_tx_frag).
 * Receives read into a small per-peer staging area, so a small message costs one
 * recv(2), and then copy into the user buffer; a long plain receive is read
 * straight into the user buffer. Receive-with-reduce combines out of staging in
 * 64-byte multiples. Nothing here allocates.
 */
#include "tcp.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "reduce.h"

void tcp_xfer_finish(struct crux_xfer *x, int rc)
{
    x->rc = rc;
    x->next = NULL;
    x->done = 1;
}

/* ---------- bookkeeping: active list, epoll interest ---------- */

void tcp_peer_activate(struct crux_tcp *tp, struct tcp_peer *p)
{
    if (p->active_idx >= 0)
        return;
    p->active_idx = tp->nactive;
    tp->active[tp->nactive++] = (int)(p - tp->peers);
}

/* Swap-remove: only entries after p's slot move, so callers may walk the list backwards. */
void tcp_peer_maybe_idle(struct crux_tcp *tp, struct tcp_peer *p)
{
    if (p->active_idx < 0 || p->sq_head != NULL || p->rq_head != NULL)
        return;
    int last = tp->active[--tp->nactive];
    tp->active[p->active_idx] = last;
    tp->peers[last].active_idx = p->active_idx;
    p->active_idx = -1;
}

void tcp_peer_set_events(struct crux_tcp *tp, struct tcp_peer *p, uint32_t mask)
{
    if (p->fd < 0 || mask == p->ev_mask)
        return;
    struct epoll_event ev = {.events = mask, .data.u32 = (uint32_t)(p - tp->peers)};
    if (epoll_ctl(tp->epfd, EPOLL_CTL_MOD, p->fd, &ev) != 0) {
        /* Not fatal: progress() still polls the socket directly. */
        crux_warn(CRUX_SUBSYS_NET, "epoll_ctl(MOD) for rank %d (host %s): %s", p->rank, p->host,
                  strerror(errno));
        return;
    }
    p->ev_mask = mask;
}

/* ---------- failure ---------- */

static void fail_queue(struct crux_xfer *x, int rc)
{
    while (x != NULL) {
        struct crux_xfer *next = x->next;
        tcp_xfer_finish(x, rc);
        x = next;
    }
}

/* Completes every transfer of p with rc, drops the socket; logs once. Returns -1. */
static int fail_peer(struct crux_tcp *tp, struct tcp_peer *p, int rc, const char *what, int err)
{
    if (p->failed)
        return -1;
    if (err != 0)
        crux_error(CRUX_SUBSYS_NET, "peer rank %d (host %s) %s: %s", p->rank, p->host, what,
                   strerror(err));
    else
        crux_error(CRUX_SUBSYS_NET, "peer rank %d (host %s) %s", p->rank, p->host, what);
    p->failed = rc;
    if (p->rq_head != NULL)
        tp->nrx--;
    if (p->tx_blocked)
        tp->ntx_blocked--;
    p->tx_blocked = 0;
    fail_queue(p->sq_head, rc);
    fail_queue(p->rq_head, rc);
    p->sq_head = p->sq_tail = p->rq_head = p->rq_tail = NULL;
    if (p->fd >= 0) {
        epoll_ctl(tp->epfd, EPOLL_CTL_DEL, p->fd, NULL);
        close(p->fd);
        p->fd = -1;
    }
    tcp_peer_maybe_idle(tp, p);
    if (tp->failed_rc == CRUX_SUCCESS)
        tp->failed_rc = rc;
    return -1;
}

int tcp_fail_peer_errno(struct crux_tcp *tp, struct tcp_peer *p, int err)
{
    if (err == ECONNRESET || err == EPIPE)
        return fail_peer(tp, p, CRUX_ERR_PEER, "reset the connection", err);
    return fail_peer(tp, p, CRUX_ERR_PEER, "connection failed", err);
}

/* End of stream. After the peer's BYE (the last header in staging) it departed on
 * purpose: what it sent before stays deliverable and only a receive that needs more
 * fails. Without BYE it died. */
static int rx_eof(struct crux_tcp *tp, struct tcp_peer *p)
{
    int bye_last = p->rx_state == RX_HDR && p->rend - p->rpos >= CRUX_TCP_HDR_BYTES &&
                   crux_tcp_is_bye(p->stage + p->rend - CRUX_TCP_HDR_BYTES);
    if (p->bye_seen || bye_last) {
        if (bye_last)
            p->rend -= CRUX_TCP_HDR_BYTES;
        p->departed = 1;
        crux_debug(CRUX_SUBSYS_NET, "peer rank %d (host %s) departed", p->rank, p->host);
        epoll_ctl(tp->epfd, EPOLL_CTL_DEL, p->fd, NULL);
        close(p->fd);
        p->fd = -1;
        return 0; /* FILL_EMPTY */
    }
    return fail_peer(tp, p, CRUX_ERR_PEER, "closed the connection (end of stream)", 0);
}

/* ---------- send side ---------- */

static void tx_block(struct crux_tcp *tp, struct tcp_peer *p)
{
    if (!p->tx_blocked) {
        p->tx_blocked = 1;
        tp->ntx_blocked++;
    }
    tcp_peer_set_events(tp, p, p->ev_mask | EPOLLOUT);
}

/* How many payload bytes of x may go out now; a streaming send follows its dep. */
static size_t tx_allowed(const struct crux_xfer *x)
{
    if (x->dep == NULL)
        return x->len;
    return tcp_min(x->dep->bytes_done, x->len);
}

/* Payload bytes per sendmsg for a message of len bytes (tcp.h). */
static size_t tcp_tx_frag(size_t len)
{
    size_t f = len / 8;
    return f < TCP_TX_FRAG_MIN ? TCP_TX_FRAG_MIN : f > TCP_TX_FRAG_MAX ? TCP_TX_FRAG_MAX : f;
}

/* Writes as much of the queued sends as the socket takes. Returns 0 or -1 (peer failed). */
int tcp_tx_progress(struct crux_tcp *tp, struct tcp_peer *p)
{
    struct crux_xfer *x;
    while ((x = p->sq_head) != NULL) {
        if (x->dep != NULL && x->dep->done && x->dep->rc != CRUX_SUCCESS) {
            if (p->shdr_sent == 0 && x->bytes_done == 0) {
                p->sq_head = x->next; /* nothing on the wire yet: the stream stays framed */
                tcp_xfer_finish(x, x->dep->rc);
                continue;
            }
            return fail_peer(tp, p, CRUX_ERR_TRANSPORT,
                             "stream abandoned mid-message: the receive it forwards failed", 0);
        }
        size_t allowed = tx_allowed(x);
        if (x->len > 0 && allowed == 0 && p->shdr_sent == 0)
            return 0; /* don't announce a message before any of it can follow */
        struct iovec iov[2];
        int niov = 0;
        size_t want = 0;
        if (p->shdr_sent < CRUX_TCP_HDR_BYTES) {
            iov[niov].iov_base = (uint8_t *)x->tp_priv + p->shdr_sent;
            iov[niov].iov_len = CRUX_TCP_HDR_BYTES - p->shdr_sent;
            want += iov[niov++].iov_len;
        }
        if (allowed > x->bytes_done) {
            iov[niov].iov_base = (uint8_t *)x->buf + x->bytes_done;
            iov[niov].iov_len = tcp_min(allowed - x->bytes_done, tcp_tx_frag(x->len));
            want += iov[niov++].iov_len;
        }
        if (niov == 0)
            return 0; /* waiting for the dependency */
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)niov};
        ssize_t w = sendmsg(p->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                tx_block(tp, p);
                return 0;
            }
            return tcp_fail_peer_errno(tp, p, errno);
        }
        size_t wr = (size_t)w;
        p->tx_bytes += wr;
        if (p->shdr_sent < CRUX_TCP_HDR_BYTES) {
            size_t h = tcp_min(wr, CRUX_TCP_HDR_BYTES - p->shdr_sent);
            p->shdr_sent += (uint32_t)h;
            wr -= h;
        }
        x->bytes_done += wr;
        if (p->shdr_sent == CRUX_TCP_HDR_BYTES && x->bytes_done == x->len) {
            p->sq_head = x->next;
            p->shdr_sent = 0;
            p->tx_msgs++;
            tcp_xfer_finish(x, CRUX_SUCCESS);
            continue;
        }
        if ((size_t)w < want) {
            tx_block(tp, p); /* short write: the socket buffer is full */
            return 0;
        }
    }
    p->sq_tail = NULL;
    return 0;
}

/* ---------- receive side ---------- */

enum { FILL_FAILED = -1, FILL_EMPTY = 0, FILL_GOT = 1, FILL_FULL = 2 };

/* Reads up to want bytes the socket already has into staging. */
static int rx_fill(struct crux_tcp *tp, struct tcp_peer *p, size_t want)
{
    if (p->rpos == p->rend) {
        p->rpos = p->rend = 0;
    } else if (p->rpos > 0 && p->stage_cap - p->rend < tcp_min(want, p->stage_cap / 4)) {
        memmove(p->stage, p->stage + p->rpos, p->rend - p->rpos);
        p->rend -= p->rpos;
        p->rpos = 0;
    }
    size_t room = tcp_min(p->stage_cap - p->rend, want);
    if (room == 0)
        return FILL_FULL;
    if (p->departed)
        return FILL_EMPTY;
    for (;;) {
        ssize_t n = recv(p->fd, p->stage + p->rend, room, MSG_DONTWAIT);
        if (n > 0) {
            p->rend += (size_t)n;
            p->rx_bytes += (size_t)n;
            return FILL_GOT;
        }
        if (n == 0)
            return rx_eof(tp, p);
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return FILL_EMPTY;
        return tcp_fail_peer_errno(tp, p, errno);
    }
}

static void rx_complete(struct crux_tcp *tp, struct tcp_peer *p, struct crux_xfer *x, int rc)
{
    p->rq_head = x->next;
    if (p->rq_head == NULL) {
        p->rq_tail = NULL;
        tp->nrx--;
    }
    if (rc == CRUX_SUCCESS)
        p->rx_msgs++;
    tcp_xfer_finish(x, rc);
}

/* A full header sits in staging and x is the oldest posted receive. */
static void rx_match_header(struct crux_tcp *tp, struct tcp_peer *p, struct crux_xfer *x)
{
    struct crux_msg_hdr h;
    crux_tcp_hdr_decode(p->stage + p->rpos, p->rend - p->rpos, &h);
    p->rpos += CRUX_TCP_HDR_BYTES;
    if (crux_tcp_hdr_equal(&h, &x->hdr)) {
        p->rx_state = RX_BODY;
        return;
    }
    char want[128], got[128];
    crux_tcp_hdr_format(&x->hdr, want, sizeof(want));
    crux_tcp_hdr_format(&h, got, sizeof(got));
    crux_error(CRUX_SUBSYS_NET,
               "message from rank %d (host %s) does not match the posted receive: expected "
               "[%s], got [%s] (ranks called different collectives, counts, types or ops)",
               p->rank, p->host, want, got);
    /* Skip that message's payload so the stream stays framed for later receives. */
    p->discard_left = h.len;
    p->rx_state = RX_DISCARD;
    rx_complete(tp, p, x, CRUX_ERR_MISMATCH);
}

/* Nothing is posted: buffer what fits (that also notices a closed socket); once
 * staging is full stop listening until a receive is posted. */
static int rx_hold(struct crux_tcp *tp, struct tcp_peer *p)
{
    int r = rx_fill(tp, p, p->stage_cap);
    if (r == FILL_FULL && !p->rx_held) {
        p->rx_held = 1;
        tcp_peer_set_events(tp, p, p->ev_mask & ~(uint32_t)EPOLLIN);
    }
    return r;
}

/* Returns FILL_GOT to keep going, else stop (FILL_EMPTY / FILL_FAILED). */
static int rx_body_plain(struct crux_tcp *tp, struct tcp_peer *p, struct crux_xfer *x)
{
    size_t left = x->len - x->bytes_done;
    size_t avail = p->rend - p->rpos;
    if (avail > 0) {
        size_t c = tcp_min(avail, left);
        memcpy((uint8_t *)x->buf + x->bytes_done, p->stage + p->rpos, c);
        p->rpos += c;
        x->bytes_done += c;
        return FILL_GOT;
    }
    size_t want = tcp_min(left, TCP_RX_FRAG);
    if (p->departed)
        return FILL_EMPTY;
    for (;;) {
        ssize_t n = recv(p->fd, (uint8_t *)x->buf + x->bytes_done, want, MSG_DONTWAIT);
        if (n > 0) {
            x->bytes_done += (size_t)n;
            p->rx_bytes += (size_t)n;
            return (size_t)n < want ? FILL_EMPTY : FILL_GOT; /* short read: drained */
        }
        if (n == 0)
            return fail_peer(tp, p, CRUX_ERR_PEER, "closed the connection (end of stream)", 0);
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return FILL_EMPTY;
        return tcp_fail_peer_errno(tp, p, errno);
    }
}

/* buf = reduce_src op incoming, in 64-byte multiples except the message's tail. */
static int rx_body_reduce(struct crux_tcp *tp, struct tcp_peer *p, struct crux_xfer *x)
{
    size_t left = x->len - x->bytes_done;
    size_t take = tcp_min(p->rend - p->rpos, left);
    if (take < left)
        take &= ~(size_t)63;
    if (take == 0)
        return rx_fill(tp, p, p->stage_cap);
    size_t off = x->bytes_done;
    crux_reduce((uint8_t *)x->buf + off, (const uint8_t *)x->reduce_src + off,
                p->stage + p->rpos, take / crux_datatype_size(x->dtype), x->dtype, x->op);
    p->rpos += take;
    p->reduce_calls++;
    x->bytes_done = off + take;
    return FILL_GOT;
}

static int rx_discard(struct crux_tcp *tp, struct tcp_peer *p)
{
    if (p->discard_left == 0) {
        p->rx_state = RX_HDR;
        return FILL_GOT;
    }
    size_t avail = p->rend - p->rpos;
    size_t c = p->discard_left < avail ? (size_t)p->discard_left : avail;
    if (c == 0)
        return rx_fill(tp, p, p->stage_cap);
    p->rpos += c;
    p->discard_left -= c;
    if (p->discard_left == 0)
        p->rx_state = RX_HDR;
    return FILL_GOT;
}

/* Advances p's receives until the socket is drained or nothing more can be placed.
 * With no receive posted it reads ahead only when epoll said the socket is readable
 * (idle_read), which spares a recv(2) that would say EAGAIN after every message. */
int tcp_rx_progress(struct crux_tcp *tp, struct tcp_peer *p, int idle_read)
{
    int r = FILL_GOT;
    if (p->departed && p->rend - p->rpos == 0 && p->rq_head && p->rx_state != RX_BODY)
        return fail_peer(tp, p, CRUX_ERR_PEER, "departed before sending an expected message", 0);
    while (r == FILL_GOT && !p->failed) {
        struct crux_xfer *x = p->rq_head;
        switch (p->rx_state) {
        case RX_HDR:
            if (x == NULL) {
                r = idle_read ? rx_hold(tp, p) : FILL_EMPTY;
            } else if (p->rend - p->rpos >= CRUX_TCP_HDR_BYTES) {
                if (crux_tcp_is_bye(p->stage + p->rpos)) {
                    p->rpos += CRUX_TCP_HDR_BYTES;
                    p->bye_seen = 1;
                } else {
                    rx_match_header(tp, p, x);
                }
            } else {
                size_t want = p->stage_cap;
                if (x->reduce_src == NULL && x->len >= TCP_DIRECT_MIN)
                    want = CRUX_TCP_HDR_BYTES - (p->rend - p->rpos); /* payload goes direct */
                r = rx_fill(tp, p, want);
            }
            break;
        case RX_BODY:
            if (x->bytes_done == x->len) {
                p->rx_state = RX_HDR;
                rx_complete(tp, p, x, CRUX_SUCCESS);
            } else {
                r = x->reduce_src ? rx_body_reduce(tp, p, x) : rx_body_plain(tp, p, x);
            }
            break;
        default:
            r = rx_discard(tp, p);
            break;
        }
    }
    /* A departed peer sends nothing more: a receive still waiting can never finish. */
    if (!p->failed && p->departed && p->rq_head && r != FILL_GOT)
        return fail_peer(tp, p, CRUX_ERR_PEER, "departed before sending an expected message", 0);
    return p->failed ? -1 : 0;
}
