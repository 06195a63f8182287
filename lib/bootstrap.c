/* bootstrap.c - forming the job over TCP.
 *
 * Rank 0 listens on the root port; every other rank opens its own listen socket,
 * connects to the root (exponential backoff) and sends a hello (magic, version, job
 * key, rank, size, pid, host, host hash, listen address). The root polls many
 * connections at once; anything invalid or silent is rejected, logged and dropped
 * without stopping the job. Once every rank arrived the root sends each of them the
 * whole table of hellos, and every rank connects to its ring successor and accepts its
 * predecessor (small authenticated handshake). Allgather and barrier then go around
 * that ring.
 *
 * Connections the root accepted stay open until crux_bootstrap_close: closing them is
 * how a failing root makes every waiting rank fail at once (they see EOF), and they
 * remain a liveness channel for later use. All sockets are non-blocking and every
 * wait is bounded by cfg->bootstrap_timeout_s. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bootstrap.h"
#include "crux.h"
#include "log.h"

#define HELLO_BYTES CRUX_BOOT_HELLO_BYTES
#define HELLO_WAIT_S 3.0     /* an accepted connection must deliver its hello within this */
#define BACKOFF_FIRST_S 0.010
#define BACKOFF_MAX_S 1.0
#define TABLE_GRACE_S 1.0    /* non-roots wait this much longer than the root's deadline */
#define RING_HS_BYTES 24     /* magic, version, job key, rank, size */
#define IO_EOF (-1)          /* peer closed: distinct from every errno value */

_Static_assert(sizeof(struct crux_boot_hello) == HELLO_BYTES, "hello wire size");

struct crux_bootstrap {
    int rank, size;
    double timeout_s;
    uint64_t job_key;
    int root_fd;    /* non-root: connection to rank 0 */
    int *rank_fds;  /* root: [size] connections from every rank, kept until close */
    int next_fd;    /* ring: to (rank+1)%size */
    int prev_fd;    /* ring: from (rank-1)%size */
    char next_host[CRUX_HOST_MAX], prev_host[CRUX_HOST_MAX];
    uint8_t *barrier_buf; /* [size] */
};

/* ---- wire format ---- */

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v) { put16(p, (uint16_t)v); put16(p + 2, (uint16_t)(v >> 16)); }
static void put64(uint8_t *p, uint64_t v) { put32(p, (uint32_t)v); put32(p + 4, (uint32_t)(v >> 32)); }
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t get32(const uint8_t *p) { return get16(p) | ((uint32_t)get16(p + 2) << 16); }
static uint64_t get64(const uint8_t *p) { return get32(p) | ((uint64_t)get32(p + 4) << 32); }

void crux_boot_hello_encode(const struct crux_boot_hello *h, uint8_t buf[sizeof(struct crux_boot_hello)])
{
    put32(buf + 0, h->magic);
    put32(buf + 4, h->version);
    put64(buf + 8, h->job_key);
    put32(buf + 16, (uint32_t)h->rank);
    put32(buf + 20, (uint32_t)h->size);
    put32(buf + 24, (uint32_t)h->pid);
    put16(buf + 28, h->listen_port);
    put16(buf + 30, h->pad);
    memcpy(buf + 32, h->listen_addr, 16);
    size_t n = strnlen(h->host, CRUX_HOST_MAX);
    memcpy(buf + 48, h->host, n);
    memset(buf + 48 + n, 0, CRUX_HOST_MAX - n); /* never leak bytes after the name */
    put64(buf + 112, h->host_hash);
}

/* h is filled whenever len is right, even if validation fails (callers log it). */
int crux_boot_hello_decode(const uint8_t *buf, size_t len, uint64_t job_key, int size,
                           struct crux_boot_hello *h, const char **why)
{
    const char *bad = NULL;
    memset(h, 0, sizeof(*h));
    if (!buf || len != HELLO_BYTES) {
        bad = "wrong hello length";
        goto out;
    }
    h->magic = get32(buf + 0);
    h->version = get32(buf + 4);
    h->job_key = get64(buf + 8);
    h->rank = (int32_t)get32(buf + 16);
    h->size = (int32_t)get32(buf + 20);
    h->pid = (int32_t)get32(buf + 24);
    h->listen_port = get16(buf + 28);
    h->pad = get16(buf + 30);
    memcpy(h->listen_addr, buf + 32, 16);
    memcpy(h->host, buf + 48, CRUX_HOST_MAX);
    h->host_hash = get64(buf + 112);
    if (h->magic != CRUX_BOOT_MAGIC)
        bad = "bad magic (not a crux bootstrap client)";
    else if (h->version != CRUX_BOOT_VERSION)
        bad = "unsupported bootstrap version";
    else if (h->job_key != job_key)
        bad = "wrong job key (a rank of another job?)";
    else if (h->size != size)
        bad = "wrong job size";
    else if (h->rank < 0 || h->rank >= size)
        bad = "rank out of range";
    else if (h->pid <= 0)
        bad = "invalid pid";
    else if (h->listen_port == 0)
        bad = "no listen port";
    else if (h->pad != 0)
        bad = "non-zero padding";
    else if (memchr(buf + 48, '\0', CRUX_HOST_MAX) == NULL)
        bad = "host name not NUL-terminated";
    else if (h->host[0] == '\0')
        bad = "empty host name";
out:
    if (why)
        *why = bad;
    return bad ? CRUX_ERR_BOOTSTRAP : CRUX_SUCCESS;
}

/* ---- time and socket helpers ---- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int ms_until(double deadline)
{
    double left = deadline - now_s();
    if (left <= 0)
        return 0;
    return left > 3600 ? 3600000 : (int)(left * 1000.0) + 1;
}

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL); /* EINTR only shortens one backoff step */
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void addr_str(const struct sockaddr_in *sa, char *buf, size_t len)
{
    char ip[INET_ADDRSTRLEN] = "?";
    inet_ntop(AF_INET, &sa->sin_addr, ip, sizeof(ip));
    snprintf(buf, len, "%s:%u", ip, (unsigned)ntohs(sa->sin_port));
}

/* Wait for events on fd until deadline: 0, ETIMEDOUT or an errno. */
static int wait_fd(int fd, short events, double deadline)
{
    for (;;) {
        struct pollfd p = {fd, events, 0};
        int n = poll(&p, 1, ms_until(deadline));
        if (n > 0)
            return 0;
        if (n == 0)
            return ETIMEDOUT;
        if (errno != EINTR)
            return errno;
    }
}

/* Send/receive exactly len bytes before deadline: 0, IO_EOF, ETIMEDOUT or an errno. */
static int send_all(int fd, const void *buf, size_t len, double deadline)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int rc = wait_fd(fd, POLLOUT, deadline);
            if (rc != 0)
                return rc;
        } else if (n < 0 && errno != EINTR) {
            return errno;
        }
    }
    return 0;
}

static int recv_all(int fd, void *buf, size_t len, double deadline)
{
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = recv(fd, p, len, 0);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
        } else if (n == 0) {
            return IO_EOF;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int rc = wait_fd(fd, POLLIN, deadline);
            if (rc != 0)
                return rc;
        } else if (errno != EINTR) {
            return errno;
        }
    }
    return 0;
}

/* Send to sfd and receive from rfd at once, so a ring of senders never deadlocks on
 * full socket buffers. Returns 0 or an error; *recv_side tells which direction failed. */
static int exchange(int sfd, const void *sbuf, int rfd, void *rbuf, size_t len, double deadline,
                    bool *recv_side)
{
    const uint8_t *sp = sbuf;
    uint8_t *rp = rbuf;
    size_t sleft = len, rleft = len;
    while (sleft > 0 || rleft > 0) {
        /* a finished direction is left out (fd -1): its POLLHUP must not wake us */
        struct pollfd p[2] = {{sleft ? sfd : -1, POLLOUT, 0}, {rleft ? rfd : -1, POLLIN, 0}};
        int n = poll(p, 2, ms_until(deadline));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            *recv_side = false;
            return errno;
        }
        if (n == 0) {
            *recv_side = rleft > 0;
            return ETIMEDOUT;
        }
        if (sleft && p[0].revents) {
            ssize_t k = send(sfd, sp, sleft, MSG_NOSIGNAL);
            if (k > 0) {
                sp += k;
                sleft -= (size_t)k;
            } else if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                *recv_side = false;
                return errno;
            }
        }
        if (rleft && p[1].revents) {
            ssize_t k = recv(rfd, rp, rleft, 0);
            if (k > 0) {
                rp += k;
                rleft -= (size_t)k;
            } else if (k == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                *recv_side = true;
                return k == 0 ? IO_EOF : errno;
            }
        }
    }
    return 0;
}

static const char *io_err_str(int err)
{
    return err == IO_EOF ? "connection closed by peer" : strerror(err);
}

static int io_err_code(int err) { return err == ETIMEDOUT ? CRUX_ERR_TIMEOUT : CRUX_ERR_PEER; }

/* A non-blocking TCP listener on addr:port (port 0 = ephemeral). */
static int open_listener(struct in_addr addr, int port, int *fd_out, int *port_out)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        crux_error(CRUX_SUBSYS_BOOT, "socket(AF_INET, SOCK_STREAM): %s", strerror(errno));
        return CRUX_ERR_BOOTSTRAP;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr = addr};
    socklen_t sl = sizeof(sa);
    char where[64];
    addr_str(&sa, where, sizeof(where));
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        crux_error(CRUX_SUBSYS_BOOT, "bind(%s) for the bootstrap listener: %s%s", where, strerror(errno),
                   port ? " (is another job using this port? set CRUX_ROOT to another port)" : "");
        goto fail;
    }
    if (listen(fd, SOMAXCONN) != 0 || getsockname(fd, (struct sockaddr *)&sa, &sl) != 0) {
        crux_error(CRUX_SUBSYS_BOOT, "listen/getsockname(%s): %s", where, strerror(errno));
        goto fail;
    }
    *fd_out = fd;
    *port_out = ntohs(sa.sin_port);
    return CRUX_SUCCESS;
fail:
    close(fd);
    return CRUX_ERR_BOOTSTRAP;
}

/* One non-blocking connect attempt, bounded by deadline: 0 or an errno. */
static int try_connect(const struct sockaddr_in *sa, double deadline, int *fd_out)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return errno;
    int err = 0;
    if (connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) != 0) {
        err = errno;
        if (err == EINPROGRESS || err == EINTR) {
            socklen_t l = sizeof(err);
            err = wait_fd(fd, POLLOUT, deadline);
            if (err == 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l) != 0)
                err = errno;
        }
    }
    if (err != 0) {
        close(fd);
        return err;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    *fd_out = fd;
    return 0;
}

/* Resolve host (name or IPv4 literal) to an IPv4 address: 0, or a getaddrinfo code. */
static int resolve_ipv4(const char *host, int port, struct sockaddr_in *sa)
{
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc != 0)
        return rc;
    *sa = *(struct sockaddr_in *)res->ai_addr;
    sa->sin_port = htons((uint16_t)port);
    freeaddrinfo(res);
    return 0;
}

/* Connect with exponential backoff (10 ms doubling to 1 s) until deadline. host is
 * resolved on each attempt while it does not resolve yet (DNS may lag at job start). */
static int connect_backoff(const char *what, const char *host, const struct sockaddr_in *known,
                           int port, double deadline, int *fd_out)
{
    struct sockaddr_in sa;
    bool resolved = known != NULL;
    if (known)
        sa = *known;
    double delay = BACKOFF_FIRST_S;
    int err = 0, attempts = 0;
    const char *errs = "no attempt";
    for (;;) {
        attempts++;
        if (!resolved) {
            int g = resolve_ipv4(host, port, &sa);
            if (g == 0) {
                resolved = true;
            } else {
                errs = gai_strerror(g);
                if (g == EAI_NONAME) {
                    crux_error(CRUX_SUBSYS_BOOT, "cannot resolve %s host '%s': %s", what, host, errs);
                    return CRUX_ERR_BOOTSTRAP;
                }
            }
        }
        if (resolved) {
            err = try_connect(&sa, deadline, fd_out);
            if (err == 0)
                return CRUX_SUCCESS;
            errs = strerror(err);
        }
        if (now_s() + delay >= deadline)
            break;
        sleep_s(delay);
        delay = delay * 2 > BACKOFF_MAX_S ? BACKOFF_MAX_S : delay * 2;
    }
    crux_error(CRUX_SUBSYS_BOOT, "could not connect to %s %s:%d within the bootstrap timeout "
               "(%d attempts, last error: %s)", what, host, port, attempts, errs);
    return CRUX_ERR_TIMEOUT;
}

/* ---- this process: host, host hash, hello ---- */

static void local_host(const char *override, char host[CRUX_HOST_MAX], uint64_t *hash)
{
    if (override[0])
        snprintf(host, CRUX_HOST_MAX, "%s", override);
    else if (gethostname(host, CRUX_HOST_MAX) != 0 || host[0] == '\0')
        snprintf(host, CRUX_HOST_MAX, "localhost");
    host[CRUX_HOST_MAX - 1] = '\0';
    /* the boot id tells apart containers that share a host name */
    char mix[CRUX_HOST_MAX + 64] = {0};
    size_t n = strlen(host);
    memcpy(mix, host, n + 1);
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (f) {
        if (!fgets(mix + n + 1, 48, f))
            mix[n + 1] = '\0';
        fclose(f);
    }
    *hash = crux_boot_hash(mix, n + 1 + strlen(mix + n + 1), 0x686f7374ull);
}

static void self_hello(const struct crux_identity *id, int listen_port, struct in_addr addr,
                       struct crux_boot_hello *h)
{
    memset(h, 0, sizeof(*h));
    h->magic = CRUX_BOOT_MAGIC;
    h->version = CRUX_BOOT_VERSION;
    h->job_key = id->job_key;
    h->rank = id->rank;
    h->size = id->size;
    h->pid = (int32_t)getpid();
    h->listen_port = (uint16_t)listen_port;
    memcpy(h->listen_addr, &addr, 4);
    local_host(id->host, h->host, &h->host_hash);
}

/* Tests and crux-run use loopback literals: then bind there, not on every address
 * (a host name may map to 127.0.1.1 locally but not elsewhere, so names bind all). */
static struct in_addr bind_addr_for(const char *root_host)
{
    struct in_addr a;
    if (inet_pton(AF_INET, root_host, &a) == 1 && (ntohl(a.s_addr) >> 24) == 127)
        return a;
    a.s_addr = htonl(INADDR_ANY);
    return a;
}

/* ---- peer table ---- */

static void fill_peers(const struct crux_boot_hello *table, int size, struct crux_peer_info *peers)
{
    int nnodes = 0;
    for (int r = 0; r < size; r++) {
        struct crux_peer_info *p = &peers[r];
        memset(p, 0, sizeof(*p));
        memcpy(p->host, table[r].host, CRUX_HOST_MAX);
        p->host_hash = table[r].host_hash;
        p->pid = table[r].pid;
        p->node_id = -1;
        for (int q = 0; q < r; q++) {
            if (peers[q].host_hash != p->host_hash)
                continue;
            if (p->node_id < 0)
                p->node_id = peers[q].node_id;
            p->local_rank++;
        }
        if (p->node_id < 0)
            p->node_id = nnodes++;
    }
}

/* "rank 2" or "ranks 2,5-7" for the ranks with fds[r] < 0 (r >= 1), truncated. */
static void missing_ranks(const int *fds, int size, char *buf, size_t len)
{
    size_t off = 0;
    int nmiss = 0;
    for (int r = 1; r < size; r++)
        nmiss += fds[r] < 0;
    off += (size_t)snprintf(buf, len, "%s ", nmiss == 1 ? "rank" : "ranks");
    for (int r = 1; r < size && off < len; r++) {
        if (fds[r] >= 0 || (r > 1 && fds[r - 1] < 0))
            continue;
        int end = r;
        while (end + 1 < size && fds[end + 1] < 0)
            end++;
        if (off + 24 >= len) {
            snprintf(buf + off, len - off, ",...");
            return;
        }
        const char *sep = buf[off - 1] == ' ' ? "" : ",";
        if (end == r)
            off += (size_t)snprintf(buf + off, len - off, "%s%d", sep, r);
        else
            off += (size_t)snprintf(buf + off, len - off, "%s%d-%d", sep, r, end);
    }
}


/* ---- root: gather every hello ---- */

struct pending {
    int fd; /* -1 = free slot */
    double deadline;
    size_t got;
    uint8_t buf[HELLO_BYTES];
    char addr[64];
};

struct root_state {
    struct crux_bootstrap *bs;
    struct crux_boot_hello *table; /* [size] */
    char (*addrs)[64];             /* [size] where each arrived rank connected from */
    struct pending *pend;          /* [npend_cap] */
    int npend_cap, npend;
    int arrived;                   /* the root counts itself */
};

static void pend_drop(struct root_state *st, struct pending *p, const char *why)
{
    crux_warn(CRUX_SUBSYS_BOOT, "bootstrap root: rejected connection from %s: %s", p->addr, why);
    close_fd(&p->fd);
    st->npend--;
}

static void pend_hello_done(struct root_state *st, struct pending *p)
{
    struct crux_bootstrap *bs = st->bs;
    struct crux_boot_hello h;
    const char *why;
    char msg[256];
    if (crux_boot_hello_decode(p->buf, HELLO_BYTES, bs->job_key, bs->size, &h, &why) != CRUX_SUCCESS) {
        snprintf(msg, sizeof(msg), "%s (it claims rank %d of %d, version %u, job key %016llx; expected size %d, key %016llx)",
                 why, h.rank, h.size, h.version, (unsigned long long)h.job_key, bs->size,
                 (unsigned long long)bs->job_key);
        pend_drop(st, p, msg);
        return;
    }
    if (h.rank == 0) {
        pend_drop(st, p, "it claims rank 0, the root's own rank (two processes with rank 0?)");
        return;
    }
    if (bs->rank_fds[h.rank] >= 0) {
        snprintf(msg, sizeof(msg), "duplicate rank %d (already connected from %s, host %s)", h.rank,
                 st->addrs[h.rank], st->table[h.rank].host);
        pend_drop(st, p, msg);
        return;
    }
    bs->rank_fds[h.rank] = p->fd;
    st->table[h.rank] = h;
    memcpy(st->addrs[h.rank], p->addr, sizeof(p->addr));
    st->arrived++;
    crux_debug(CRUX_SUBSYS_BOOT, "bootstrap root: rank %d (%s pid %d) arrived from %s, %d of %d", h.rank,
               h.host, h.pid, p->addr, st->arrived, bs->size);
    p->fd = -1;
    st->npend--;
}

static void pend_read(struct root_state *st, struct pending *p)
{
    ssize_t n = recv(p->fd, p->buf + p->got, HELLO_BYTES - p->got, 0);
    char msg[128];
    if (n > 0) {
        p->got += (size_t)n;
        if (p->got == HELLO_BYTES)
            pend_hello_done(st, p);
    } else if (n == 0) {
        snprintf(msg, sizeof(msg), "closed the connection after %zu of %d hello bytes", p->got, HELLO_BYTES);
        pend_drop(st, p, msg);
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        pend_drop(st, p, strerror(errno));
    }
}

static void root_accept(struct root_state *st, int lfd)
{
    while (st->npend < st->npend_cap) {
        struct sockaddr_in sa;
        socklen_t l = sizeof(sa);
        int fd = accept4(lfd, (struct sockaddr *)&sa, &l, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                crux_warn(CRUX_SUBSYS_BOOT, "bootstrap root: accept: %s", strerror(errno));
            return;
        }
        struct pending *p = st->pend;
        while (p->fd >= 0)
            p++; /* npend < cap: a free slot exists */
        p->fd = fd;
        p->got = 0;
        p->deadline = now_s() + HELLO_WAIT_S;
        addr_str(&sa, p->addr, sizeof(p->addr));
        st->npend++;
    }
}

/* An arrived rank's socket is readable before the table went out: it died (or talks
 * out of turn). Forget it so that a restarted process can take the rank. */
static void arrived_event(struct root_state *st, int r)
{
    int *fd = &st->bs->rank_fds[r];
    uint8_t b;
    ssize_t n = recv(*fd, &b, 1, MSG_PEEK);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    crux_warn(CRUX_SUBSYS_BOOT, "bootstrap root: rank %d (%s pid %d, from %s) %s before the job formed",
              r, st->table[r].host, st->table[r].pid, st->addrs[r],
              n == 0 ? "disconnected" : n > 0 ? "sent unexpected data" : strerror(errno));
    close_fd(fd);
    st->arrived--;
}

static int root_gather(struct root_state *st, int lfd, double deadline, const struct crux_identity *id)
{
    struct crux_bootstrap *bs = st->bs;
    int cap = 1 + st->npend_cap + bs->size;
    struct pollfd *pfd = calloc((size_t)cap, sizeof(*pfd));
    int *who = calloc((size_t)cap, sizeof(*who)); /* >= 0: pending slot; < 0: -1 - rank */
    int rc = CRUX_SUCCESS;
    if (!pfd || !who) {
        crux_error(CRUX_SUBSYS_BOOT, "bootstrap root: out of memory for %d poll entries", cap);
        rc = CRUX_ERR_NOMEM;
        goto out;
    }
    while (st->arrived < bs->size) {
        double t = now_s(), wake = deadline;
        if (t >= deadline) {
            char miss[256];
            missing_ranks(bs->rank_fds, bs->size, miss, sizeof(miss));
            crux_error(CRUX_SUBSYS_BOOT, "bootstrap root %s:%d: timed out after %.1f s (CRUX_BOOTSTRAP_TIMEOUT) "
                       "with %d of %d ranks: %s never arrived", id->root_host, id->root_port,
                       bs->timeout_s, st->arrived, bs->size, miss);
            rc = CRUX_ERR_TIMEOUT;
            goto out;
        }
        int n = 0;
        pfd[n] = (struct pollfd){lfd, st->npend < st->npend_cap ? POLLIN : 0, 0};
        who[n++] = 0;
        for (int i = 0; i < st->npend_cap; i++) {
            struct pending *p = &st->pend[i];
            if (p->fd < 0)
                continue;
            if (t >= p->deadline) {
                char msg[96];
                snprintf(msg, sizeof(msg), "no complete hello within %.0f s (got %zu of %d bytes)",
                         HELLO_WAIT_S, p->got, HELLO_BYTES);
                pend_drop(st, p, msg);
                continue;
            }
            wake = p->deadline < wake ? p->deadline : wake;
            pfd[n] = (struct pollfd){p->fd, POLLIN, 0};
            who[n++] = i;
        }
        for (int r = 1; r < bs->size; r++) {
            if (bs->rank_fds[r] >= 0) {
                pfd[n] = (struct pollfd){bs->rank_fds[r], POLLIN, 0};
                who[n++] = -1 - r;
            }
        }
        int k = poll(pfd, (nfds_t)n, ms_until(wake));
        if (k < 0 && errno != EINTR) {
            crux_error(CRUX_SUBSYS_BOOT, "bootstrap root: poll: %s", strerror(errno));
            rc = CRUX_ERR_BOOTSTRAP;
            goto out;
        }
        for (int i = 1; k > 0 && i < n; i++) {
            if (!pfd[i].revents)
                continue;
            if (who[i] >= 0)
                pend_read(st, &st->pend[who[i]]);
            else if (bs->rank_fds[-1 - who[i]] == pfd[i].fd)
                arrived_event(st, -1 - who[i]);
        }
        if (k > 0 && pfd[0].revents)
            root_accept(st, lfd);
    }
out:
    free(pfd);
    free(who);
    return rc;
}

static int root_send_table(struct root_state *st)
{
    struct crux_bootstrap *bs = st->bs;
    size_t len = (size_t)bs->size * HELLO_BYTES;
    uint8_t *buf = malloc(len);
    if (!buf) {
        crux_error(CRUX_SUBSYS_BOOT, "bootstrap root: out of memory for the %zu-byte peer table", len);
        return CRUX_ERR_NOMEM;
    }
    for (int r = 0; r < bs->size; r++)
        crux_boot_hello_encode(&st->table[r], buf + (size_t)r * HELLO_BYTES);
    int rc = CRUX_SUCCESS;
    for (int r = 1; r < bs->size && rc == CRUX_SUCCESS; r++) {
        int err = send_all(bs->rank_fds[r], buf, len, now_s() + bs->timeout_s);
        if (err != 0) {
            crux_error(CRUX_SUBSYS_BOOT, "bootstrap root: sending the peer table to rank %d (%s pid %d, %s): %s",
                       r, st->table[r].host, st->table[r].pid, st->addrs[r], io_err_str(err));
            rc = io_err_code(err);
        }
    }
    free(buf);
    return rc;
}

static int root_form_job(struct crux_bootstrap *bs, const struct crux_identity *id, struct in_addr bind,
                         int lport, struct crux_boot_hello *table, double start)
{
    struct root_state st = {.bs = bs, .table = table, .arrived = 1};
    int rootl = -1, port, rc = CRUX_ERR_NOMEM;
    st.npend_cap = bs->size + 16 < 1024 ? bs->size + 16 : 1024; /* the rest waits in the backlog */
    st.pend = calloc((size_t)st.npend_cap, sizeof(*st.pend));
    st.addrs = calloc((size_t)bs->size, sizeof(*st.addrs));
    bs->rank_fds = malloc((size_t)bs->size * sizeof(int));
    if (!st.pend || !st.addrs || !bs->rank_fds) {
        crux_error(CRUX_SUBSYS_BOOT, "bootstrap root: out of memory for %d ranks", bs->size);
        goto out;
    }
    for (int i = 0; i < st.npend_cap; i++)
        st.pend[i].fd = -1;
    for (int r = 0; r < bs->size; r++)
        bs->rank_fds[r] = -1;
    self_hello(id, lport, (struct in_addr){0}, &table[0]);
    rc = open_listener(bind, id->root_port, &rootl, &port);
    if (rc != CRUX_SUCCESS)
        goto out;
    crux_debug(CRUX_SUBSYS_BOOT, "bootstrap root listening on port %d for %d ranks", port, bs->size - 1);
    rc = root_gather(&st, rootl, start + bs->timeout_s, id);
    if (rc == CRUX_SUCCESS)
        rc = root_send_table(&st);
out:
    close_fd(&rootl);
    for (int i = 0; st.pend && i < st.npend_cap; i++)
        close_fd(&st.pend[i].fd);
    free(st.pend);
    free(st.addrs);
    return rc;
}

/* ---- non-root: join through the root ---- */

static int join_root(struct crux_bootstrap *bs, const struct crux_identity *id, int lport,
                     struct crux_boot_hello *table, double start)
{
    int rc = connect_backoff("bootstrap root", id->root_host, NULL, id->root_port, start + bs->timeout_s,
                             &bs->root_fd);
    if (rc != CRUX_SUCCESS)
        return rc;
    struct sockaddr_in local, root;
    socklen_t l1 = sizeof(local), l2 = sizeof(root);
    if (getsockname(bs->root_fd, (struct sockaddr *)&local, &l1) != 0 ||
        getpeername(bs->root_fd, (struct sockaddr *)&root, &l2) != 0) {
        crux_error(CRUX_SUBSYS_BOOT, "getsockname/getpeername on the root connection: %s", strerror(errno));
        return CRUX_ERR_BOOTSTRAP;
    }
    /* peers reach us at the address the root sees us on, which works across hosts */
    uint8_t buf[HELLO_BYTES];
    self_hello(id, lport, local.sin_addr, &table[bs->rank]);
    crux_boot_hello_encode(&table[bs->rank], buf);
    size_t tlen = (size_t)bs->size * HELLO_BYTES;
    uint8_t *tbuf = malloc(tlen);
    if (!tbuf) {
        crux_error(CRUX_SUBSYS_BOOT, "out of memory for the %zu-byte peer table", tlen);
        return CRUX_ERR_NOMEM;
    }
    int err = send_all(bs->root_fd, buf, sizeof(buf), now_s() + bs->timeout_s);
    if (err == 0)
        err = recv_all(bs->root_fd, tbuf, tlen, now_s() + bs->timeout_s + TABLE_GRACE_S);
    if (err == IO_EOF) {
        crux_error(CRUX_SUBSYS_BOOT, "bootstrap: root %s:%d closed the connection before sending the peer "
                   "table (a rank is missing or was rejected: see rank 0's log)", id->root_host, id->root_port);
        rc = CRUX_ERR_BOOTSTRAP;
    } else if (err != 0) {
        crux_error(CRUX_SUBSYS_BOOT, "bootstrap: waiting for the peer table from root %s:%d: %s", id->root_host,
                   id->root_port, io_err_str(err));
        rc = io_err_code(err);
    }
    for (int r = 0; r < bs->size && rc == CRUX_SUCCESS; r++) {
        const char *why = NULL;
        if (crux_boot_hello_decode(tbuf + (size_t)r * HELLO_BYTES, HELLO_BYTES, bs->job_key, bs->size,
                                   &table[r], &why) != CRUX_SUCCESS || table[r].rank != r) {
            crux_error(CRUX_SUBSYS_BOOT, "bootstrap: entry %d of the peer table from root %s:%d is invalid: %s",
                       r, id->root_host, id->root_port, why ? why : "rank out of order");
            rc = CRUX_ERR_BOOTSTRAP;
        }
    }
    free(tbuf);
    if (rc == CRUX_SUCCESS)
        memcpy(table[0].listen_addr, &root.sin_addr, 4); /* the root advertises no address */
    return rc;
}

/* ---- ring ---- */

static void ring_hs_encode(const struct crux_bootstrap *bs, uint8_t hs[RING_HS_BYTES])
{
    put32(hs, CRUX_BOOT_MAGIC);
    put32(hs + 4, CRUX_BOOT_VERSION);
    put64(hs + 8, bs->job_key);
    put32(hs + 16, (uint32_t)bs->rank);
    put32(hs + 20, (uint32_t)bs->size);
}

static const char *ring_hs_check(const struct crux_bootstrap *bs, const uint8_t hs[RING_HS_BYTES], int pred)
{
    if (get32(hs) != CRUX_BOOT_MAGIC)
        return "bad magic";
    if (get32(hs + 4) != CRUX_BOOT_VERSION)
        return "unsupported version";
    if (get64(hs + 8) != bs->job_key)
        return "wrong job key";
    if ((int32_t)get32(hs + 20) != bs->size)
        return "wrong job size";
    if ((int32_t)get32(hs + 16) != pred)
        return "not this rank's ring predecessor";
    return NULL;
}

static int ring_accept(struct crux_bootstrap *bs, int lfd, int pred, const char *pred_host, double deadline)
{
    for (;;) {
        int err = wait_fd(lfd, POLLIN, deadline);
        if (err != 0) {
            crux_error(CRUX_SUBSYS_BOOT, "bootstrap ring: rank %d (%s) did not connect within %.1f s: %s",
                       pred, pred_host, bs->timeout_s, strerror(err));
            return io_err_code(err);
        }
        struct sockaddr_in sa;
        socklen_t l = sizeof(sa);
        int fd = accept4(lfd, (struct sockaddr *)&sa, &l, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            continue; /* EAGAIN, EINTR, ECONNABORTED: wait again */
        char from[64];
        uint8_t hs[RING_HS_BYTES];
        const char *why = NULL;
        double hs_deadline = now_s() + HELLO_WAIT_S;
        err = recv_all(fd, hs, sizeof(hs), hs_deadline < deadline ? hs_deadline : deadline);
        why = err ? io_err_str(err) : ring_hs_check(bs, hs, pred);
        if (!why) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            bs->prev_fd = fd;
            return CRUX_SUCCESS;
        }
        addr_str(&sa, from, sizeof(from));
        crux_warn(CRUX_SUBSYS_BOOT, "bootstrap ring: rejected connection from %s (waiting for rank %d): %s",
                  from, pred, why);
        close(fd);
    }
}

static int ring_setup(struct crux_bootstrap *bs, int lfd, const struct crux_boot_hello *table)
{
    int succ = (bs->rank + 1) % bs->size, pred = (bs->rank + bs->size - 1) % bs->size;
    double deadline = now_s() + bs->timeout_s;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(table[succ].listen_port)};
    memcpy(&sa.sin_addr, table[succ].listen_addr, 4);
    char what[CRUX_HOST_MAX + 48], ip[INET_ADDRSTRLEN] = "?";
    inet_ntop(AF_INET, &sa.sin_addr, ip, sizeof(ip));
    snprintf(what, sizeof(what), "ring successor rank %d (%s) at", succ, table[succ].host);
    int rc = connect_backoff(what, ip, &sa, table[succ].listen_port, deadline, &bs->next_fd);
    if (rc != CRUX_SUCCESS)
        return rc;
    uint8_t hs[RING_HS_BYTES];
    ring_hs_encode(bs, hs);
    int err = send_all(bs->next_fd, hs, sizeof(hs), deadline);
    if (err != 0) {
        crux_error(CRUX_SUBSYS_BOOT, "bootstrap ring: handshake to rank %d (%s): %s", succ, table[succ].host,
                   io_err_str(err));
        return io_err_code(err);
    }
    snprintf(bs->next_host, sizeof(bs->next_host), "%s", table[succ].host);
    snprintf(bs->prev_host, sizeof(bs->prev_host), "%s", table[pred].host);
    return ring_accept(bs, lfd, pred, table[pred].host, deadline);
}

/* ---- public entry points ---- */

int crux_bootstrap_init(const struct crux_config *cfg, const struct crux_identity *id,
                        struct crux_peer_info *peers, struct crux_bootstrap **out)
{
    if (!cfg || !id || !peers || !out || id->size < 1 || id->rank < 0 || id->rank >= id->size ||
        !(cfg->bootstrap_timeout_s > 0)) {
        crux_error(CRUX_SUBSYS_BOOT, "crux_bootstrap_init: invalid arguments (rank %d, size %d, timeout %.1f)",
                   id ? id->rank : -1, id ? id->size : -1, cfg ? cfg->bootstrap_timeout_s : 0.0);
        return CRUX_ERR_ARG;
    }
    *out = NULL;
    int rc = CRUX_ERR_NOMEM, lfd = -1, lport = 0;
    struct crux_bootstrap *bs = calloc(1, sizeof(*bs));
    struct crux_boot_hello *table = calloc((size_t)id->size, sizeof(*table));
    if (!bs || !table || !(bs->barrier_buf = calloc((size_t)id->size, 1))) {
        crux_error(CRUX_SUBSYS_BOOT, "bootstrap: out of memory for %d ranks", id->size);
        goto fail;
    }
    bs->rank = id->rank;
    bs->size = id->size;
    bs->timeout_s = cfg->bootstrap_timeout_s;
    bs->job_key = id->job_key;
    bs->root_fd = bs->next_fd = bs->prev_fd = -1;
    double start = now_s();
    if (id->size == 1) {
        self_hello(id, 0, (struct in_addr){0}, &table[0]); /* no sockets at all */
    } else {
        struct in_addr bind = bind_addr_for(id->root_host);
        rc = open_listener(bind, 0, &lfd, &lport); /* ours, for the ring: open before joining */
        if (rc == CRUX_SUCCESS)
            rc = id->rank == 0 ? root_form_job(bs, id, bind, lport, table, start)
                               : join_root(bs, id, lport, table, start);
        if (rc == CRUX_SUCCESS)
            rc = ring_setup(bs, lfd, table);
        close_fd(&lfd);
        if (rc != CRUX_SUCCESS)
            goto fail;
    }
    fill_peers(table, id->size, peers);
    free(table);
    crux_debug(CRUX_SUBSYS_BOOT, "bootstrap: job of %d ranks formed in %.3f s", id->size, now_s() - start);
    *out = bs;
    return CRUX_SUCCESS;
fail:
    free(table);
    crux_bootstrap_close(bs); /* closing the root's connections lets waiting ranks fail now */
    return rc;
}

static int ring_fail(const struct crux_bootstrap *bs, const char *what, int step, int err, bool recv_side)
{
    int peer = recv_side ? (bs->rank + bs->size - 1) % bs->size : (bs->rank + 1) % bs->size;
    crux_error(CRUX_SUBSYS_BOOT, "bootstrap %s step %d: %s rank %d (%s): %s", what, step,
               recv_side ? "receiving from" : "sending to", peer, recv_side ? bs->prev_host : bs->next_host,
               io_err_str(err));
    return io_err_code(err);
}

int crux_bootstrap_allgather(struct crux_bootstrap *bs, void *data, size_t bytes)
{
    if (!bs || (!data && bytes)) {
        crux_error(CRUX_SUBSYS_BOOT, "crux_bootstrap_allgather: NULL %s", bs ? "data" : "bootstrap");
        return CRUX_ERR_ARG;
    }
    uint8_t *d = data;
    int size = bs->size;
    for (int s = 0; s < size - 1; s++) {
        size_t sblk = (size_t)((bs->rank - s + size) % size), rblk = (size_t)((bs->rank - s - 1 + size) % size);
        double deadline = now_s() + bs->timeout_s;
        uint8_t hs[8], hr[8];
        bool recv_side = false;
        put64(hs, bytes);
        /* every block is announced by its length, so ranks that disagree fail loudly */
        int err = exchange(bs->next_fd, hs, bs->prev_fd, hr, sizeof(hs), deadline, &recv_side);
        if (err != 0)
            return ring_fail(bs, "allgather", s, err, recv_side);
        if (get64(hr) != bytes) {
            crux_error(CRUX_SUBSYS_BOOT, "bootstrap allgather: rank %d (%s) sends %llu bytes per rank, this rank %zu",
                       (bs->rank + size - 1) % size, bs->prev_host, (unsigned long long)get64(hr), bytes);
            return CRUX_ERR_MISMATCH;
        }
        err = exchange(bs->next_fd, d + sblk * bytes, bs->prev_fd, d + rblk * bytes, bytes, deadline,
                       &recv_side);
        if (err != 0)
            return ring_fail(bs, "allgather", s, err, recv_side);
    }
    return CRUX_SUCCESS;
}

int crux_bootstrap_barrier(struct crux_bootstrap *bs)
{
    if (!bs) {
        crux_error(CRUX_SUBSYS_BOOT, "crux_bootstrap_barrier: NULL bootstrap");
        return CRUX_ERR_ARG;
    }
    bs->barrier_buf[bs->rank] = 1;
    return crux_bootstrap_allgather(bs, bs->barrier_buf, 1);
}

void crux_bootstrap_close(struct crux_bootstrap *bs)
{
    if (!bs)
        return;
    close_fd(&bs->root_fd);
    close_fd(&bs->next_fd);
    close_fd(&bs->prev_fd);
    for (int r = 0; bs->rank_fds && r < bs->size; r++)
        close_fd(&bs->rank_fds[r]);
    free(bs->rank_fds);
    free(bs->barrier_buf);
    free(bs);
}
