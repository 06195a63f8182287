/* tcp_conn.c - TCP transport setup, collective over all world ranks.
 *
 * Every rank: listen on the chosen interface (ephemeral port), allgather the
 * addresses, connect to each higher-ranked peer (with retries) and send a
 * handshake, accept each lower-ranked peer (validating handshakes, rejecting
 * strangers without failing), then allgather a status byte so that every rank
 * returns the same verdict. Ranks with no tcp peers still take part.
 */
#include "tcp.h"
#include "tcp_iface.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* One rank's listen address as exchanged through the bootstrap. */
struct tcp_addr_rec {
    uint8_t ip[4];   /* network order */
    uint8_t port[2]; /* network order */
    uint8_t listening;
    uint8_t pad;
};

#define TCP_MAX_PENDING 16

struct pending_conn {
    int fd;
    size_t got;
    uint8_t buf[CRUX_TCP_HS_BYTES];
    char from[INET_ADDRSTRLEN + 8];
};

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int ms_until(double deadline)
{
    double left = deadline - mono_now();
    if (left <= 0)
        return 0;
    return left > 3600.0 ? 3600000 : (int)(left * 1000.0) + 1;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void addr_format(const struct sockaddr_in *sa, char *buf, size_t len)
{
    char ip[INET_ADDRSTRLEN] = "?";
    inet_ntop(AF_INET, &sa->sin_addr, ip, sizeof(ip));
    snprintf(buf, len, "%s:%u", ip, (unsigned)ntohs(sa->sin_port));
}

/* Latency (no Nagle) and large buffers; failures only cost speed. */
static void socket_tune(int fd)
{
    int one = 1, sz = (int)TCP_SOCKBUF_BYTES;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0)
        crux_debug(CRUX_SUBSYS_NET, "setsockopt(TCP_NODELAY): %s", strerror(errno));
    if (sz > 0 && (setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz)) != 0 ||
                   setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz)) != 0))
        crux_debug(CRUX_SUBSYS_NET, "setsockopt(SO_SNDBUF/SO_RCVBUF %d): %s", sz, strerror(errno));
}

static int listen_open(struct crux_tcp *tp, struct tcp_addr_rec *rec, int *lfd_out)
{
    struct sockaddr_in sa;
    socklen_t slen = sizeof(sa);
    char where[64];
    int rc = crux_tcp_pick_iface(tp->base.ctx->cfg.socket_ifname, tp->ifname,
                                 sizeof(tp->ifname), &sa);
    if (rc != CRUX_SUCCESS)
        return rc;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        crux_error(CRUX_SUBSYS_NET, "tcp: socket(): %s", strerror(errno));
        return CRUX_ERR_TRANSPORT;
    }
    socket_tune(fd); /* before listen(): accepted sockets inherit the window scale */
    addr_format(&sa, where, sizeof(where));
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(fd, SOMAXCONN) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &slen) != 0) {
        crux_error(CRUX_SUBSYS_NET, "tcp: bind/listen on %s (%s): %s", tp->ifname, where,
                   strerror(errno));
        close(fd);
        return CRUX_ERR_TRANSPORT;
    }
    addr_format(&sa, where, sizeof(where));
    crux_info(CRUX_SUBSYS_NET, "tcp: listening on %s %s for %d peers", tp->ifname, where,
              tp->npeers);
    memcpy(rec->ip, &sa.sin_addr.s_addr, 4);
    memcpy(rec->port, &sa.sin_port, 2);
    rec->listening = 1;
    *lfd_out = fd;
    return CRUX_SUCCESS;
}

static int errno_is_transient(int err)
{
    return err == ECONNREFUSED || err == ETIMEDOUT || err == EHOSTUNREACH || err == ENETUNREACH ||
           err == ECONNRESET || err == EAGAIN || err == EINTR || err == ECONNABORTED;
}

/* One non-blocking connect attempt bounded by the deadline; returns 0 or an errno. */
static int connect_once(int fd, const struct sockaddr_in *to, double deadline)
{
    if (connect(fd, (const struct sockaddr *)to, sizeof(*to)) == 0)
        return 0;
    if (errno != EINPROGRESS)
        return errno;
    struct pollfd pfd = {.fd = fd, .events = POLLOUT};
    int r = poll(&pfd, 1, ms_until(deadline));
    if (r == 0)
        return ETIMEDOUT;
    if (r < 0)
        return errno;
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        return errno;
    return err;
}

static int write_all(int fd, const uint8_t *buf, size_t len, double deadline)
{
    while (len > 0) {
        ssize_t w = send(fd, buf, len, MSG_NOSIGNAL);
        if (w > 0) {
            buf += w;
            len -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            return errno;
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        if (poll(&pfd, 1, ms_until(deadline)) <= 0)
            return ETIMEDOUT;
    }
    return 0;
}

static int connect_peer(struct crux_tcp *tp, struct tcp_peer *p, const struct tcp_addr_rec *rec,
                        double deadline)
{
    struct crux_ctx *ctx = tp->base.ctx;
    struct sockaddr_in to = {.sin_family = AF_INET};
    char where[64];
    int backoff_ms = 5, err;
    memcpy(&to.sin_addr.s_addr, rec->ip, 4);
    memcpy(&to.sin_port, rec->port, 2);
    addr_format(&to, where, sizeof(where));
    if (!rec->listening) {
        crux_error(CRUX_SUBSYS_NET, "tcp: rank %d (host %s) has no tcp listener (it does not "
                   "list this rank as a tcp peer)", p->rank, p->host);
        return CRUX_ERR_TRANSPORT;
    }
    for (;;) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            crux_error(CRUX_SUBSYS_NET, "tcp: socket(): %s", strerror(errno));
            return CRUX_ERR_TRANSPORT;
        }
        socket_tune(fd);
        err = connect_once(fd, &to, deadline);
        if (err == 0) {
            p->fd = fd;
            break;
        }
        close(fd);
        if (!errno_is_transient(err) || ms_until(deadline) == 0) {
            crux_error(CRUX_SUBSYS_NET, "tcp: connect to rank %d (host %s) at %s: %s", p->rank,
                       p->host, where, strerror(err));
            return CRUX_ERR_TRANSPORT;
        }
        sleep_ms(backoff_ms);
        backoff_ms = backoff_ms < 500 ? backoff_ms * 2 : 500;
    }
    struct crux_tcp_hs hs = {CRUX_TCP_HS_MAGIC, CRUX_TCP_HS_VERSION, ctx->id.job_key, ctx->rank,
                             p->rank};
    uint8_t buf[CRUX_TCP_HS_BYTES];
    crux_tcp_hs_encode(&hs, buf);
    err = write_all(p->fd, buf, sizeof(buf), deadline);
    if (err != 0) {
        crux_error(CRUX_SUBSYS_NET, "tcp: handshake to rank %d (host %s) at %s: %s", p->rank,
                   p->host, where, strerror(err));
        return CRUX_ERR_TRANSPORT;
    }
    crux_debug(CRUX_SUBSYS_NET, "tcp: connected to rank %d (host %s) at %s", p->rank, p->host,
               where);
    return CRUX_SUCCESS;
}

/* Reads a pending connection's handshake. 1: it became peer's socket; 0: needs more;
 * -1: rejected and closed (a stranger must not fail the job). */
static int pending_read(struct crux_tcp *tp, struct pending_conn *pc)
{
    struct crux_ctx *ctx = tp->base.ctx;
    const char *why = NULL;
    struct crux_tcp_hs hs;
    ssize_t n = recv(pc->fd, pc->buf + pc->got, sizeof(pc->buf) - pc->got, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return 0;
    if (n <= 0) {
        crux_warn(CRUX_SUBSYS_NET, "tcp: rejected connection from %s: %s before the handshake",
                  pc->from, n == 0 ? "closed" : strerror(errno));
        goto reject;
    }
    pc->got += (size_t)n;
    if (pc->got < sizeof(pc->buf))
        return 0;
    if (crux_tcp_hs_decode(pc->buf, pc->got, ctx->id.job_key, ctx->rank, ctx->size, &hs, &why) != 0)
        goto bad;
    int idx = tp->peer_of_rank[hs.rank];
    if (idx < 0 || hs.rank > ctx->rank) {
        why = "that rank is not expected to connect here";
        goto bad;
    }
    if (tp->peers[idx].fd >= 0) {
        why = "that rank is already connected";
        goto bad;
    }
    int one = 1;
    setsockopt(pc->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    tp->peers[idx].fd = pc->fd;
    crux_debug(CRUX_SUBSYS_NET, "tcp: accepted rank %d (host %s) from %s", hs.rank,
               tp->peers[idx].host, pc->from);
    return 1;
bad:
    crux_warn(CRUX_SUBSYS_NET, "tcp: rejected connection from %s: %s", pc->from, why);
reject:
    close(pc->fd);
    return -1;
}

static void pending_add(struct pending_conn *pend, int *npend, int fd,
                        const struct sockaddr_in *from)
{
    if (*npend == TCP_MAX_PENDING) {
        crux_warn(CRUX_SUBSYS_NET, "tcp: dropping connection from %s: no handshake yet",
                  pend[0].from);
        close(pend[0].fd);
        memmove(pend, pend + 1, sizeof(pend[0]) * (TCP_MAX_PENDING - 1));
        (*npend)--;
    }
    struct pending_conn *pc = &pend[(*npend)++];
    pc->fd = fd;
    pc->got = 0;
    addr_format(from, pc->from, sizeof(pc->from));
}

static int accept_new(int lfd, struct pending_conn *pend, int *npend)
{
    for (;;) {
        struct sockaddr_in from;
        socklen_t flen = sizeof(from);
        int fd = accept4(lfd, (struct sockaddr *)&from, &flen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            pending_add(pend, npend, fd, &from);
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return CRUX_SUCCESS;
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        crux_error(CRUX_SUBSYS_NET, "tcp: accept: %s", strerror(errno));
        return CRUX_ERR_TRANSPORT;
    }
}

static void log_missing(struct crux_tcp *tp)
{
    char list[512];
    size_t off = 0;
    list[0] = '\0';
    for (int i = 0; i < tp->npeers && off < sizeof(list); i++) {
        const struct tcp_peer *p = &tp->peers[i];
        if (p->fd >= 0 || p->rank > tp->base.ctx->rank)
            continue;
        int n = snprintf(list + off, sizeof(list) - off, "%s%d (%s)", off ? ", " : "", p->rank,
                         p->host);
        if (n < 0)
            break;
        off += (size_t)n;
    }
    crux_error(CRUX_SUBSYS_NET, "tcp: timed out after %.0f s waiting for connections from "
               "rank(s) %s", tp->base.ctx->cfg.bootstrap_timeout_s, list);
}

/* Accept every lower-ranked peer before the deadline. */
static int accept_lower(struct crux_tcp *tp, int lfd, double deadline)
{
    struct pending_conn pend[TCP_MAX_PENDING];
    int npend = 0, nexp = 0, rc = CRUX_SUCCESS;
    for (int i = 0; i < tp->npeers; i++)
        nexp += tp->peers[i].rank < tp->base.ctx->rank;
    while (nexp > 0) {
        int ms = ms_until(deadline);
        if (ms == 0) {
            log_missing(tp);
            rc = CRUX_ERR_TRANSPORT;
            break;
        }
        struct pollfd pfd[1 + TCP_MAX_PENDING];
        pfd[0] = (struct pollfd){.fd = lfd, .events = POLLIN};
        for (int i = 0; i < npend; i++)
            pfd[1 + i] = (struct pollfd){.fd = pend[i].fd, .events = POLLIN};
        int r = poll(pfd, (nfds_t)(1 + npend), ms < 1000 ? ms : 1000);
        if (r < 0 && errno != EINTR) {
            crux_error(CRUX_SUBSYS_NET, "tcp: poll while accepting: %s", strerror(errno));
            rc = CRUX_ERR_TRANSPORT;
            break;
        }
        for (int i = npend - 1; r > 0 && i >= 0; i--) { /* backwards: swap-remove is safe */
            if (pfd[1 + i].revents == 0)
                continue;
            int got = pending_read(tp, &pend[i]);
            if (got != 0)
                pend[i] = pend[--npend];
            nexp -= got == 1;
        }
        if (r > 0 && (pfd[0].revents & POLLIN) && (rc = accept_new(lfd, pend, &npend)) != 0)
            break;
    }
    for (int i = 0; i < npend; i++)
        close(pend[i].fd);
    return rc;
}

static int peers_alloc(struct crux_tcp *tp, const int *peers, int npeers)
{
    struct crux_ctx *ctx = tp->base.ctx;
    int n = npeers > 0 ? npeers : 1;
    tp->peer_of_rank = malloc(sizeof(int) * (size_t)ctx->size);
    tp->peers = calloc((size_t)n, sizeof(*tp->peers));
    tp->active = calloc((size_t)n, sizeof(int));
    tp->events = calloc((size_t)n, sizeof(*tp->events));
    if (!tp->peer_of_rank || !tp->peers || !tp->active || !tp->events) {
        crux_error(CRUX_SUBSYS_NET, "tcp: out of memory for %d peers", npeers);
        return CRUX_ERR_NOMEM;
    }
    for (int r = 0; r < ctx->size; r++)
        tp->peer_of_rank[r] = -1;
    for (int i = 0; i < npeers; i++) {
        int r = peers[i];
        if (r < 0 || r >= ctx->size || r == ctx->rank || tp->peer_of_rank[r] >= 0) {
            crux_error(CRUX_SUBSYS_NET, "tcp: bad peer list entry %d: rank %d (world size %d, "
                       "self %d, or listed twice)", i, r, ctx->size, ctx->rank);
            return CRUX_ERR_ARG;
        }
        tp->peer_of_rank[r] = i;
        tp->peers[i].rank = r;
        tp->peers[i].fd = -1;
        tp->peers[i].active_idx = -1;
        tp->peers[i].host = tcp_peer_host(ctx, r);
    }
    tp->npeers = npeers;
    return CRUX_SUCCESS;
}

/* Staging per peer (touched now, on this rank's NUMA node) and one epoll set. */
static int data_path_ready(struct crux_tcp *tp)
{
    size_t cap = tp->base.ctx->cfg.chunk_bytes;
    cap = cap < TCP_STAGE_MIN ? TCP_STAGE_MIN : cap > TCP_STAGE_MAX ? TCP_STAGE_MAX : cap;
    cap &= ~(size_t)63;
    tp->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (tp->epfd < 0) {
        crux_error(CRUX_SUBSYS_NET, "tcp: epoll_create1: %s", strerror(errno));
        return CRUX_ERR_TRANSPORT;
    }
    for (int i = 0; i < tp->npeers; i++) {
        struct tcp_peer *p = &tp->peers[i];
        p->stage = aligned_alloc(64, cap);
        if (p->stage == NULL) {
            crux_error(CRUX_SUBSYS_NET, "tcp: out of memory for %zu-byte staging", cap);
            return CRUX_ERR_NOMEM;
        }
        memset(p->stage, 0, cap);
        p->stage_cap = cap;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(tp->epfd, EPOLL_CTL_ADD, p->fd, &ev) != 0) {
            crux_error(CRUX_SUBSYS_NET, "tcp: epoll_ctl(ADD) for rank %d: %s", p->rank,
                       strerror(errno));
            return CRUX_ERR_TRANSPORT;
        }
        p->ev_mask = EPOLLIN;
    }
    return CRUX_SUCCESS;
}

/* Local work between the two allgathers; the return is this rank's verdict. */
static int mesh_connect(struct crux_tcp *tp, const struct tcp_addr_rec *recs, int lfd,
                        double deadline)
{
    for (int i = 0; i < tp->npeers; i++) {
        struct tcp_peer *p = &tp->peers[i];
        if (p->rank > tp->base.ctx->rank)
            CRUX_TRY(connect_peer(tp, p, &recs[p->rank], deadline));
    }
    CRUX_TRY(accept_lower(tp, lfd, deadline));
    return data_path_ready(tp);
}

/* Every rank learns every verdict, so all of them return an error together. */
static int agree(struct crux_tcp *tp, int local)
{
    struct crux_ctx *ctx = tp->base.ctx;
    uint8_t *st = calloc((size_t)ctx->size, 1);
    char list[256];
    size_t off = 0;
    if (st == NULL) {
        crux_error(CRUX_SUBSYS_NET, "tcp: out of memory");
        return CRUX_ERR_NOMEM;
    }
    st[ctx->rank] = (uint8_t)(local != CRUX_SUCCESS);
    int rc = crux_bootstrap_allgather(ctx->bs, st, 1);
    if (rc != CRUX_SUCCESS) {
        crux_error(CRUX_SUBSYS_NET, "tcp: status exchange through the bootstrap failed");
        free(st);
        return rc;
    }
    list[0] = '\0';
    for (int r = 0; r < ctx->size && off < sizeof(list); r++) {
        if (!st[r])
            continue;
        int n = snprintf(list + off, sizeof(list) - off, "%s%d", off ? "," : "", r);
        off += n > 0 ? (size_t)n : 0;
    }
    free(st);
    if (local != CRUX_SUCCESS)
        return local;
    if (off > 0) {
        crux_error(CRUX_SUBSYS_NET, "tcp: transport setup failed on rank(s) %s", list);
        return CRUX_ERR_TRANSPORT;
    }
    return CRUX_SUCCESS;
}

int tcp_init(struct crux_ctx *ctx, const int *peers, int npeers, struct crux_tp **out)
{
    double tmo = ctx->cfg.bootstrap_timeout_s > 0 ? ctx->cfg.bootstrap_timeout_s : 60.0;
    double deadline = mono_now() + tmo;
    struct tcp_addr_rec *recs = calloc((size_t)ctx->size, sizeof(*recs));
    struct crux_tcp *tp = calloc(1, sizeof(*tp));
    int lfd = -1, local = CRUX_SUCCESS, rc;

    *out = NULL;
    if (recs == NULL || tp == NULL) {
        crux_error(CRUX_SUBSYS_NET, "tcp: out of memory");
        rc = CRUX_ERR_NOMEM; /* cannot take part: the others time out in the bootstrap */
        goto fail;
    }
    tp->base.ops = &crux_tp_tcp_ops;
    tp->base.ctx = ctx;
    tp->epfd = -1;
    local = peers_alloc(tp, peers, npeers);
    if (local == CRUX_SUCCESS && npeers > 0)
        local = listen_open(tp, &recs[ctx->rank], &lfd);
    rc = crux_bootstrap_allgather(ctx->bs, recs, sizeof(*recs));
    if (rc != CRUX_SUCCESS) {
        crux_error(CRUX_SUBSYS_NET, "tcp: address exchange through the bootstrap failed");
        goto fail;
    }
    if (local == CRUX_SUCCESS)
        local = mesh_connect(tp, recs, lfd, deadline);
    if (lfd >= 0)
        close(lfd);
    lfd = -1;
    rc = agree(tp, local);
    if (rc != CRUX_SUCCESS)
        goto fail;
    free(recs);
    crux_debug(CRUX_SUBSYS_NET, "tcp: %d peers connected", npeers);
    *out = &tp->base;
    return CRUX_SUCCESS;
fail:
    if (lfd >= 0)
        close(lfd);
    free(recs);
    if (tp != NULL)
        tcp_close(&tp->base);
    return rc;
}
