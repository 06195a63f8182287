/* test_tcp.c - the TCP transport between real forked ranks.
 *
 * Each child builds a real context (config from the environment, identity from
 * CRUX_RANK/SIZE/ROOT/JOB_KEY, the TCP bootstrap), opens the tcp transport to every
 * other rank and runs one scenario, exiting 0 on success (or the status the
 * scenario documents). The parent asserts every child's status and kills and
 * reaps whatever is still running after a deadline.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "crux_internal.h"
#include "reduce.h"
#include "transport/tcp/tcp_iface.h"
#include "transport/transport.h"

#define MAX_RANKS 4
#define CHILD_TIMEOUT_S 90.0
#define XFER_TIMEOUT_S 30.0

#define CHECK(cond)                                                                               \
    do {                                                                                          \
        if (!(cond)) {                                                                            \
            fprintf(stderr, "tcp test rank %d: %s:%d: check failed: %s\n", e->ctx.rank,          \
                    __FILE__, __LINE__, #cond);                                                   \
            return 1;                                                                             \
        }                                                                                         \
    } while (0)

struct rank_env {
    struct crux_ctx ctx;
    struct crux_tp *tp;
    int init_rc;
};

typedef int (*scenario_fn)(struct rank_env *e);

/* Scenario knobs, set by the parent before forking (children inherit them). */
static const char *g_ifname;      /* CRUX_SOCKET_IFNAME for the children, NULL = unset */
static const char *g_root_host;   /* bootstrap root address, default 127.0.0.1 */
static const char *g_netns[MAX_RANKS]; /* network namespace of each rank, NULL = ours */
static scenario_fn g_before_init; /* runs after the bootstrap, before the transport */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---------- child side ---------- */

static void set_rank_env(int rank, int size, const char *root, const char *key)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%d", rank);
    setenv("CRUX_RANK", buf, 1);
    setenv("CRUX_LOCAL_RANK", buf, 1);
    snprintf(buf, sizeof buf, "%d", size);
    setenv("CRUX_SIZE", buf, 1);
    setenv("CRUX_ROOT", root, 1);
    setenv("CRUX_JOB_KEY", key, 1);
    setenv("CRUX_BOOTSTRAP_TIMEOUT", "20", 1);
    if (g_ifname)
        setenv("CRUX_SOCKET_IFNAME", g_ifname, 1);
    else
        unsetenv("CRUX_SOCKET_IFNAME");
}

static int child_open(struct rank_env *e)
{
    struct crux_ctx *c = &e->ctx;
    if (crux_config_load(&c->cfg) != CRUX_SUCCESS ||
        crux_identity_resolve(&c->cfg, &c->id) != CRUX_SUCCESS)
        return 2;
    c->rank = c->id.rank;
    c->size = c->id.size;
    crux_log_setup(c->cfg.log_level, c->cfg.log_subsys);
    crux_log_set_rank(c->rank);
    c->peers = calloc((size_t)c->size, sizeof *c->peers);
    if (!c->peers || crux_bootstrap_init(&c->cfg, &c->id, c->peers, &c->bs) != CRUX_SUCCESS)
        return 3;
    c->local_rank = c->id.local_rank;
    c->local_size = c->size;
    c->nnodes = 1;
    c->spin_us = 50;
    if (g_before_init && g_before_init(e) != 0)
        return 5;
    int peers[MAX_RANKS], n = 0;
    for (int r = 0; r < c->size; r++)
        if (r != c->rank)
            peers[n++] = r;
    e->init_rc = crux_tp_tcp_ops.init(c, peers, n, &e->tp);
    return 0;
}

static void child_close(struct rank_env *e)
{
    if (e->tp)
        e->tp->ops->close(e->tp);
    if (e->ctx.bs)
        crux_bootstrap_close(e->ctx.bs);
    free(e->ctx.peers);
}

static int enter_netns(const char *name)
{
    char path[128];
    snprintf(path, sizeof path, "/var/run/netns/%s", name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || setns(fd, CLONE_NEWNET) != 0) {
        fprintf(stderr, "tcp test: entering netns %s: %s\n", name, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return 0;
}

static int child_main(int rank, int size, const char *root, const char *key, scenario_fn fn)
{
    struct rank_env env;
    memset(&env, 0, sizeof env);
    if (g_netns[rank] && enter_netns(g_netns[rank]) != 0)
        return 7;
    set_rank_env(rank, size, root, key);
    int rc = child_open(&env);
    if (rc == 0)
        rc = fn(&env);
    child_close(&env);
    return rc;
}

/* ---------- parent side ---------- */

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    cr_assert(fd >= 0);
    cr_assert(bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    cr_assert(getsockname(fd, (struct sockaddr *)&sa, &sl) == 0);
    close(fd);
    return ntohs(sa.sin_port);
}

/* Runs fn on n forked ranks; status[r] gets each raw wait status. */
static void run_ranks(int n, scenario_fn fn, int *status)
{
    static int serial;
    char root[64], key[64];
    pid_t pids[MAX_RANKS];
    if (g_root_host) /* a fresh namespace: any port is free there */
        snprintf(root, sizeof root, "%s:%d", g_root_host, 20000 + (int)(getpid() % 20000));
    else
        snprintf(root, sizeof root, "127.0.0.1:%d", free_port());
    snprintf(key, sizeof key, "test-tcp-%d-%d", (int)getpid(), serial++);
    fflush(NULL);
    for (int r = 0; r < n; r++) {
        pids[r] = fork();
        cr_assert(pids[r] >= 0, "fork: %s", strerror(errno));
        if (pids[r] == 0)
            _exit(child_main(r, n, root, key, fn));
    }
    int left = n;
    double end = now_s() + CHILD_TIMEOUT_S;
    while (left > 0 && now_s() < end) {
        for (int r = 0; r < n; r++) {
            if (pids[r] > 0 && waitpid(pids[r], &status[r], WNOHANG) == pids[r]) {
                pids[r] = -1;
                left--;
            }
        }
        usleep(2000);
    }
    for (int r = 0; r < n; r++) {
        if (pids[r] > 0) {
            kill(pids[r], SIGKILL);
            waitpid(pids[r], &status[r], 0);
        }
    }
    cr_assert_eq(left, 0, "%d of %d ranks hung and were killed", left, n);
}

static void assert_exit(int r, int status, int code)
{
    cr_assert(WIFEXITED(status), "rank %d did not exit (status 0x%x)", r, status);
    cr_assert_eq(WEXITSTATUS(status), code, "rank %d exited with %d, expected %d", r,
                 WEXITSTATUS(status), code);
}

static void run_expect_ok(int n, scenario_fn fn)
{
    int status[MAX_RANKS];
    run_ranks(n, fn, status);
    for (int r = 0; r < n; r++)
        assert_exit(r, status[r], 0);
}

/* ---------- transfer helpers ---------- */

/* Progress until every xfer is done; returns the first failure, or progress()'s
 * (unless ignore_sticky: then only the xfers' own results count). */
static int wait_xfers_ex(struct rank_env *e, struct crux_xfer *xs, int n, int ignore_sticky)
{
    double end = now_s() + XFER_TIMEOUT_S;
    for (unsigned it = 0;; it++) {
        int prc = e->tp->ops->progress(e->tp);
        int pending = 0, first = CRUX_SUCCESS;
        for (int i = 0; i < n; i++) {
            if (!xs[i].done)
                pending++;
            else if (xs[i].rc != CRUX_SUCCESS && first == CRUX_SUCCESS)
                first = xs[i].rc;
        }
        if (!pending)
            return first;
        if (prc != CRUX_SUCCESS && !ignore_sticky)
            return prc;
        if (now_s() > end)
            return CRUX_ERR_TIMEOUT;
        if (it > 1000)
            e->tp->ops->block(e->tp, 5);
    }
}

static int wait_xfers(struct rank_env *e, struct crux_xfer *xs, int n)
{
    return wait_xfers_ex(e, xs, n, 0);
}

static struct crux_msg_hdr mkhdr(uint32_t tag, size_t len)
{
    return (struct crux_msg_hdr){.ctx_id = 3, .tag = tag, .seq = 77 + tag,
                                 .sig = 0x1234abcd5678ull, .len = len};
}

static void xset(struct crux_xfer *x, int peer, void *buf, size_t len, uint32_t tag)
{
    memset(x, 0, sizeof *x);
    x->peer = peer;
    x->buf = buf;
    x->len = len;
    x->hdr = mkhdr(tag, len);
}

static unsigned char pattern(int src, int dst, uint32_t tag, size_t i)
{
    return (unsigned char)(i * 131 + (i >> 9) * 7 + (size_t)src * 17 + (size_t)dst * 29 + tag * 3);
}

static void fill(unsigned char *b, size_t len, int src, int dst, uint32_t tag)
{
    for (size_t i = 0; i < len; i++)
        b[i] = pattern(src, dst, tag, i);
}

static int pattern_ok(const unsigned char *b, size_t len, int src, int dst, uint32_t tag)
{
    for (size_t i = 0; i < len; i++)
        if (b[i] != pattern(src, dst, tag, i))
            return 0;
    return 1;
}

static int init_ok(struct rank_env *e)
{
    if (e->init_rc != CRUX_SUCCESS || e->tp == NULL) {
        fprintf(stderr, "tcp test rank %d: init failed: %s\n", e->ctx.rank,
                crux_error_string(e->init_rc));
        return 0;
    }
    return 1;
}

/* A closed socket is a failure to whoever still progresses: nobody closes before
 * everybody is done. */
static int quiesce(struct rank_env *e)
{
    return crux_bootstrap_barrier(e->ctx.bs) == CRUX_SUCCESS ? 0 : 6;
}

/* ---------- scenarios ---------- */

static const size_t k_lens[] = {0, 1, 7, 64, 65, (1u << 20) + 3, (16u << 20) + 64};
#define NLENS (sizeof(k_lens) / sizeof(k_lens[0]))

/* Every rank sends every length to every other rank, all posted at once. */
static int sc_all_lengths(struct rank_env *e)
{
    if (!init_ok(e))
        return 4;
    int me = e->ctx.rank, n = e->ctx.size, nx = 0;
    struct crux_xfer xs[2 * MAX_RANKS * NLENS];
    unsigned char *sbuf[MAX_RANKS][NLENS], *rbuf[MAX_RANKS][NLENS];
    for (int p = 0; p < n; p++) {
        if (p == me)
            continue;
        for (size_t l = 0; l < NLENS; l++) {
            sbuf[p][l] = malloc(k_lens[l] + 1);
            rbuf[p][l] = malloc(k_lens[l] + 1);
            CHECK(sbuf[p][l] && rbuf[p][l]);
            fill(sbuf[p][l], k_lens[l], me, p, (uint32_t)l);
            memset(rbuf[p][l], 0xee, k_lens[l] + 1);
        }
    }
    for (size_t l = 0; l < NLENS; l++) {
        for (int p = 0; p < n; p++) {
            if (p == me)
                continue;
            xset(&xs[nx], p, rbuf[p][l], k_lens[l], (uint32_t)l);
            CHECK(e->tp->ops->irecv(e->tp, &xs[nx++]) == CRUX_SUCCESS);
            xset(&xs[nx], p, sbuf[p][l], k_lens[l], (uint32_t)l);
            CHECK(e->tp->ops->isend(e->tp, &xs[nx++]) == CRUX_SUCCESS);
        }
    }
    CHECK(wait_xfers(e, xs, nx) == CRUX_SUCCESS);
    for (int i = 0; i < nx; i++)
        CHECK(xs[i].bytes_done == xs[i].len);
    for (int p = 0; p < n; p++) {
        if (p == me)
            continue;
        for (size_t l = 0; l < NLENS; l++) {
            CHECK(pattern_ok(rbuf[p][l], k_lens[l], p, me, (uint32_t)l));
            CHECK(rbuf[p][l][k_lens[l]] == 0xee); /* nothing written past the end */
            free(sbuf[p][l]);
            free(rbuf[p][l]);
        }
    }
    return quiesce(e);
}

Test(tcp, lengths_2_ranks, .timeout = 120) { run_expect_ok(2, sc_all_lengths); }
Test(tcp, lengths_3_ranks, .timeout = 120) { run_expect_ok(3, sc_all_lengths); }
Test(tcp, lengths_4_ranks, .timeout = 120) { run_expect_ok(4, sc_all_lengths); }

/* Ping-pong of many small messages: the eager path, header and payload in one read. */
static int sc_pingpong(struct rank_env *e)
{
    if (!init_ok(e))
        return 4;
    int me = e->ctx.rank, peer = 1 - me;
    unsigned char s[64], r[64];
    for (uint32_t it = 0; it < 2000; it++) {
        struct crux_xfer x;
        size_t len = it % 65;
        if ((int)(it % 2) == me) {
            fill(s, len, me, peer, it);
            xset(&x, peer, s, len, it);
            CHECK(e->tp->ops->isend(e->tp, &x) == CRUX_SUCCESS);
        } else {
            xset(&x, peer, r, len, it);
            CHECK(e->tp->ops->irecv(e->tp, &x) == CRUX_SUCCESS);
        }
        CHECK(wait_xfers(e, &x, 1) == CRUX_SUCCESS);
        if ((int)(it % 2) != me)
            CHECK(pattern_ok(r, len, peer, me, it));
    }
    return quiesce(e);
}

Test(tcp, pingpong_small, .timeout = 120) { run_expect_ok(2, sc_pingpong); }

/* 20 MB of small messages arrive long before their receives: staging fills, the
 * receiver stops listening (block() must sleep, not spin), the sender backs up on
 * EPOLLOUT, and everything drains in order once the receives are posted. */
static int sc_early_arrival(struct rank_env *e)
{
    if (!init_ok(e))
        return 4;
    enum { NMSG = 20000, LEN = 1000 };
    unsigned char *buf = malloc((size_t)NMSG * LEN);
    struct crux_xfer *xs = calloc(NMSG, sizeof *xs);
    CHECK(buf && xs);
    if (e->ctx.rank == 0) {
        for (int i = 0; i < NMSG; i++) {
            fill(buf + (size_t)i * LEN, LEN, 0, 1, (uint32_t)i);
            xset(&xs[i], 1, buf + (size_t)i * LEN, LEN, (uint32_t)i);
            CHECK(e->tp->ops->isend(e->tp, &xs[i]) == CRUX_SUCCESS);
        }
    } else {
        int wakeups = 0;
        double settle = now_s() + 0.4, end = settle + 0.3;
        while (now_s() < settle) /* arrivals wake us until staging is full */
            CHECK(e->tp->ops->block(e->tp, 50) == CRUX_SUCCESS);
        while (now_s() < end) {
            CHECK(e->tp->ops->block(e->tp, 50) == CRUX_SUCCESS);
            wakeups++;
        }
        CHECK(wakeups < 30); /* ~6 are the timeouts; a spinning block() makes thousands */
        for (int i = 0; i < NMSG; i++) {
            xset(&xs[i], 0, buf + (size_t)i * LEN, LEN, (uint32_t)i);
            CHECK(e->tp->ops->irecv(e->tp, &xs[i]) == CRUX_SUCCESS);
        }
    }
    CHECK(wait_xfers(e, xs, NMSG) == CRUX_SUCCESS);
    if (e->ctx.rank == 1)
        for (int i = 0; i < NMSG; i++)
            CHECK(pattern_ok(buf + (size_t)i * LEN, LEN, 0, 1, (uint32_t)i));
    free(buf);
    free(xs);
    return quiesce(e);
}

Test(tcp, early_arrival_backpressure, .timeout = 120) { run_expect_ok(2, sc_early_arrival); }

/* buf = mine op theirs from every peer: float SUM of exact integers, int64 MIN. */
static float fval(int rank, size_t i) { return (float)(i * 4 + (size_t)rank); }
static int64_t ival(int rank, size_t i)
{
    int64_t v = (int64_t)(i * 1000003u) + rank * 11;
    return (i + (size_t)rank) % 3 == 0 ? -v : v;
}

static int sc_reduce(struct rank_env *e)
{
    if (!init_ok(e))
        return 4;
    static const size_t counts[] = {1, 17, 300001};
    int me = e->ctx.rank, n = e->ctx.size;
    for (size_t c = 0; c < 3; c++) {
        size_t cnt = counts[c];
        float *fs = malloc(cnt * 4), *fr[MAX_RANKS];
        int64_t *is = malloc(cnt * 8), *ir[MAX_RANKS];
        struct crux_xfer xs[4 * MAX_RANKS];
        int nx = 0;
        CHECK(fs && is);
        for (size_t i = 0; i < cnt; i++) {
            fs[i] = fval(me, i);
            is[i] = ival(me, i);
        }
        for (int p = 0; p < n; p++) {
            if (p == me)
                continue;
            fr[p] = malloc(cnt * 4);
            ir[p] = malloc(cnt * 8);
            CHECK(fr[p] && ir[p]);
            xset(&xs[nx], p, fr[p], cnt * 4, 10);
            xs[nx].reduce_src = fs;
            xs[nx].dtype = CRUX_FLOAT;
            xs[nx].op = CRUX_SUM;
            CHECK(e->tp->ops->irecv(e->tp, &xs[nx++]) == CRUX_SUCCESS);
            xset(&xs[nx], p, ir[p], cnt * 8, 11);
            xs[nx].reduce_src = is;
            xs[nx].dtype = CRUX_INT64;
            xs[nx].op = CRUX_MIN;
            CHECK(e->tp->ops->irecv(e->tp, &xs[nx++]) == CRUX_SUCCESS);
            xset(&xs[nx], p, fs, cnt * 4, 10);
            CHECK(e->tp->ops->isend(e->tp, &xs[nx++]) == CRUX_SUCCESS);
            xset(&xs[nx], p, is, cnt * 8, 11);
            CHECK(e->tp->ops->isend(e->tp, &xs[nx++]) == CRUX_SUCCESS);
        }
        CHECK(wait_xfers(e, xs, nx) == CRUX_SUCCESS);
        for (int p = 0; p < n; p++) {
            if (p == me)
                continue;
            for (size_t i = 0; i < cnt; i++) {
                int64_t a = ival(me, i), b = ival(p, i);
                CHECK(fr[p][i] == fval(me, i) + fval(p, i));
                CHECK(ir[p][i] == (a < b ? a : b));
            }
            free(fr[p]);
            free(ir[p]);
        }
        free(fs);
        free(is);
    }
    return quiesce(e);
}

Test(tcp, recv_reduce_3_ranks, .timeout = 120) { run_expect_ok(3, sc_reduce); }

/* Ring 0 -> 1 -> 2 -> 0: rank 1 reduces (+1.0f) and forwards while receiving; rank 2
 * forwards while receiving; each forward streams behind its receive (dep). */
static int sc_stream_ring(struct rank_env *e)
{
    if (!init_ok(e))
        return 4;
    const size_t cnt = (2u << 20) + 3;
    int me = e->ctx.rank;
    float *a = malloc(cnt * 4), *b = malloc(cnt * 4);
    struct crux_xfer x[2];
    CHECK(a && b);
    for (size_t i = 0; i < cnt; i++)
        a[i] = me == 0 ? (float)i : 1.0f;
    if (me == 0) {
        xset(&x[0], 1, a, cnt * 4, 1);
        xset(&x[1], 2, b, cnt * 4, 3);
        CHECK(e->tp->ops->isend(e->tp, &x[0]) == CRUX_SUCCESS);
        CHECK(e->tp->ops->irecv(e->tp, &x[1]) == CRUX_SUCCESS);
    } else {
        xset(&x[0], me - 1, b, cnt * 4, (uint32_t)me);
        if (me == 1) {
            x[0].reduce_src = a;
            x[0].dtype = CRUX_FLOAT;
            x[0].op = CRUX_SUM;
        }
        xset(&x[1], (me + 1) % 3, b, cnt * 4, (uint32_t)me + 1);
        x[1].dep = &x[0];
        CHECK(e->tp->ops->irecv(e->tp, &x[0]) == CRUX_SUCCESS);
        CHECK(e->tp->ops->isend(e->tp, &x[1]) == CRUX_SUCCESS);
    }
    CHECK(wait_xfers(e, x, 2) == CRUX_SUCCESS);
    for (size_t i = 0; i < cnt; i++)
        CHECK(b[i] == (float)i + 1.0f);
    free(a);
    free(b);
    return quiesce(e);
}

Test(tcp, streaming_dep_ring_3, .timeout = 120) { run_expect_ok(3, sc_stream_ring); }

/* Wrong tag, then wrong (huge) length: both fail with MISMATCH and are skipped on
 * the wire, so the next matching message still arrives intact. */
static int sc_mismatch(struct rank_env *e)
{
    if (!init_ok(e))
        return 4;
    const size_t big = 1u << 20;
    unsigned char *buf = malloc(big);
    struct crux_xfer x[4];
    CHECK(buf);
    if (e->ctx.rank == 0) {
        fill(buf, big, 0, 1, 9);
        xset(&x[0], 1, buf, 100, 1);
        xset(&x[1], 1, buf, big, 2);
        xset(&x[2], 1, buf, 0, 7);
        xset(&x[3], 1, buf, 50, 9);
        for (int i = 0; i < 4; i++)
            CHECK(e->tp->ops->isend(e->tp, &x[i]) == CRUX_SUCCESS);
        CHECK(wait_xfers(e, x, 4) == CRUX_SUCCESS);
    } else {
        xset(&x[0], 0, buf, 100, 5);  /* wrong tag */
        xset(&x[1], 0, buf, 16, 2);   /* wrong (shorter) length */
        xset(&x[2], 0, buf, 0, 8);    /* wrong tag, empty message */
        xset(&x[3], 0, buf, 50, 9);   /* matches */
        for (int i = 0; i < 4; i++)
            CHECK(e->tp->ops->irecv(e->tp, &x[i]) == CRUX_SUCCESS);
        CHECK(wait_xfers(e, x, 4) == CRUX_ERR_MISMATCH);
        CHECK(x[0].rc == CRUX_ERR_MISMATCH);
        CHECK(x[1].rc == CRUX_ERR_MISMATCH);
        CHECK(x[2].rc == CRUX_ERR_MISMATCH);
        CHECK(x[3].rc == CRUX_SUCCESS);
        CHECK(pattern_ok(buf, 50, 0, 1, 9));
    }
    CHECK(crux_bootstrap_barrier(e->ctx.bs) == CRUX_SUCCESS);
    free(buf);
    return 0;
}

Test(tcp, header_mismatch, .timeout = 60) { run_expect_ok(2, sc_mismatch); }

/* Rank 2 dies with SIGKILL; ranks 0 and 1 get CRUX_ERR_PEER on what they posted to
 * it, promptly, and can still talk to each other. */
static int sc_peer_killed(struct rank_env *e)
{
    if (!init_ok(e))
        return 4;
    int me = e->ctx.rank;
    unsigned char buf[16];
    struct crux_xfer x[2];
    CHECK(crux_bootstrap_barrier(e->ctx.bs) == CRUX_SUCCESS);
    if (me == 2) {
        usleep(200 * 1000);
        raise(SIGKILL);
    }
    xset(&x[0], 2, buf, sizeof buf, 1);
    CHECK(e->tp->ops->irecv(e->tp, &x[0]) == CRUX_SUCCESS);
    double t0 = now_s();
    CHECK(wait_xfers(e, x, 1) == CRUX_ERR_PEER);
    CHECK(x[0].rc == CRUX_ERR_PEER);
    CHECK(now_s() - t0 < 5.0);
    CHECK(e->tp->ops->progress(e->tp) == CRUX_ERR_PEER);
    xset(&x[0], 2, buf, sizeof buf, 2); /* posting to a dead peer fails at once */
    CHECK(e->tp->ops->isend(e->tp, &x[0]) == CRUX_SUCCESS);
    CHECK(x[0].done && x[0].rc == CRUX_ERR_PEER);
    fill(buf, sizeof buf, me, 1 - me, 4);
    xset(&x[0], 1 - me, buf, sizeof buf, 4);
    unsigned char in[16];
    xset(&x[1], 1 - me, in, sizeof in, 4);
    CHECK(e->tp->ops->isend(e->tp, &x[0]) == CRUX_SUCCESS);
    CHECK(e->tp->ops->irecv(e->tp, &x[1]) == CRUX_SUCCESS);
    CHECK(wait_xfers_ex(e, x, 2, 1) == CRUX_SUCCESS); /* 0 <-> 1 still works... */
    CHECK(e->tp->ops->progress(e->tp) == CRUX_ERR_PEER); /* ...while progress() stays sticky */
    CHECK(pattern_ok(in, sizeof in, 1 - me, me, 4));
    return 0;
}

Test(tcp, peer_sigkill, .timeout = 60)
{
    int status[3];
    run_ranks(3, sc_peer_killed, status);
    assert_exit(0, status[0], 0);
    assert_exit(1, status[1], 0);
    cr_assert(WIFSIGNALED(status[2]) && WTERMSIG(status[2]) == SIGKILL,
              "rank 2 status 0x%x, expected SIGKILL", status[2]);
}

/* ---------- a stranger connecting to the listen port during init ---------- */

#define MAX_INODES 64

static int socket_inodes(pid_t pid, unsigned long *ino, int max)
{
    char path[64], link[64];
    int n = 0;
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return 0;
    for (struct dirent *de; (de = readdir(d)) && n < max;) {
        char fp[384];
        snprintf(fp, sizeof fp, "%s/%s", path, de->d_name);
        ssize_t l = readlink(fp, link, sizeof link - 1);
        if (l <= 0)
            continue;
        link[l] = '\0';
        if (sscanf(link, "socket:[%lu]", &ino[n]) == 1)
            n++;
    }
    closedir(d);
    return n;
}

static int in_set(unsigned long v, const unsigned long *s, int n)
{
    for (int i = 0; i < n; i++)
        if (s[i] == v)
            return 1;
    return 0;
}

/* A listening IPv4 socket of pid that is not in old[]. */
static int find_new_listener(pid_t pid, const unsigned long *old, int nold, struct sockaddr_in *sa)
{
    unsigned long ino[MAX_INODES];
    int nino = socket_inodes(pid, ino, MAX_INODES);
    FILE *f = fopen("/proc/net/tcp", "r");
    char line[512];
    int found = 0;
    if (!f)
        return 0;
    while (!found && fgets(line, sizeof line, f)) {
        unsigned addr, port, st;
        unsigned long inode;
        if (sscanf(line, " %*d: %x:%x %*x:%*x %x %*x:%*x %*x:%*x %*x %*d %*d %lu", &addr, &port,
                   &st, &inode) != 4)
            continue;
        if (st == 0x0a && in_set(inode, ino, nino) && !in_set(inode, old, nold)) {
            *sa = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                       .sin_addr.s_addr = addr};
            found = 1;
        }
    }
    fclose(f);
    return found;
}

static int stranger_connect(const struct sockaddr_in *sa)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (const struct sockaddr *)sa, sizeof *sa) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

/* 1 if the server closed (or reset) fd within timeout_s. */
static int closed_by_server(int fd, double timeout_s)
{
    struct timeval tv = {.tv_sec = (time_t)timeout_s};
    char c[64];
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ssize_t n = recv(fd, c, sizeof c, 0);
    return n == 0 || (n < 0 && errno == ECONNRESET);
}

/* Child of rank 1: finds rank 1's new listener and throws three strangers at it:
 * HTTP-ish garbage, a valid-looking handshake of another job, and a silent one. */
static int stranger_main(pid_t target, const unsigned long *old, int nold)
{
    struct sockaddr_in sa;
    double end = now_s() + 10.0;
    while (!find_new_listener(target, old, nold, &sa)) {
        if (now_s() > end)
            return 10;
        usleep(2000);
    }
    int g = stranger_connect(&sa), k = stranger_connect(&sa), s = stranger_connect(&sa);
    if (g < 0 || k < 0 || s < 0)
        return 11;
    static const char http[] = "GET / HTTP/1.0\r\nHost: x\r\n\r\n";
    unsigned char other_job[24] = {0x43, 0x54, 0x43, 0x50, 1, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef,
                                   1, 2, 3, 4, 0, 0, 0, 0, 1, 0, 0, 0};
    if (send(g, http, sizeof http - 1, 0) < 0 || send(k, other_job, sizeof other_job, 0) < 0)
        return 12;
    int ok = closed_by_server(g, 20) && closed_by_server(k, 20) && closed_by_server(s, 30);
    close(g);
    close(k);
    close(s);
    return ok ? 0 : 13;
}

static pid_t g_stranger = -1;

static int before_init_stranger(struct rank_env *e)
{
    if (e->ctx.rank == 0) {
        usleep(400 * 1000); /* let the strangers reach rank 1's backlog first */
        return 0;
    }
    unsigned long old[MAX_INODES];
    int nold = socket_inodes(getpid(), old, MAX_INODES);
    pid_t me = getpid();
    g_stranger = fork();
    if (g_stranger < 0)
        return 1;
    if (g_stranger == 0)
        _exit(stranger_main(me, old, nold));
    return 0;
}

static int sc_after_strangers(struct rank_env *e)
{
    int rc = sc_pingpong(e);
    if (e->ctx.rank == 1) {
        int st = 0;
        double end = now_s() + 40.0;
        while (waitpid(g_stranger, &st, WNOHANG) == 0 && now_s() < end)
            usleep(5000);
        if (now_s() >= end) {
            kill(g_stranger, SIGKILL);
            waitpid(g_stranger, &st, 0);
        }
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "stranger helper status 0x%x\n", st);
            return rc ? rc : 20;
        }
    }
    return rc;
}

Test(tcp, strangers_rejected_during_init, .timeout = 120)
{
    g_ifname = "lo";
    g_before_init = before_init_stranger;
    run_expect_ok(2, sc_after_strangers);
    g_ifname = NULL;
    g_before_init = NULL;
}

/* ---------- interface selection ---------- */

Test(tcp, ifname_lo_works, .timeout = 60)
{
    g_ifname = "lo";
    run_expect_ok(2, sc_pingpong);
    g_ifname = NULL;
}

static int sc_expect_init_fails(struct rank_env *e)
{
    if (e->tp != NULL)
        return 1;
    return e->init_rc == CRUX_ERR_TRANSPORT || e->init_rc == CRUX_ERR_ARG ? 0 : 2;
}

Test(tcp, ifname_nonexistent_fails, .timeout = 60)
{
    g_ifname = "nonexistent";
    run_expect_ok(2, sc_expect_init_fails);
    g_ifname = NULL;
}

Test(tcp, pick_iface)
{
    char name[64];
    struct sockaddr_in sa;
    cr_assert_eq(crux_tcp_pick_iface("=lo", name, sizeof name, &sa), CRUX_SUCCESS);
    cr_assert_str_eq(name, "lo");
    cr_assert_eq(ntohl(sa.sin_addr.s_addr), INADDR_LOOPBACK);
    cr_assert_eq(sa.sin_family, AF_INET);
    cr_assert_eq(crux_tcp_pick_iface("nonexistent", name, sizeof name, &sa), CRUX_ERR_TRANSPORT);
    cr_assert_eq(crux_tcp_pick_iface("", name, sizeof name, &sa), CRUX_SUCCESS);
    cr_assert_eq(sa.sin_family, AF_INET);
    /* the default avoids lo whenever another interface is up */
    struct sockaddr_in other;
    char oname[64];
    if (crux_tcp_pick_iface("^lo,docker", oname, sizeof oname, &other) == CRUX_SUCCESS)
        cr_assert_str_neq(name, "lo");
    else
        cr_assert_str_eq(name, "lo");
}

/* Ranks with no tcp peers still take part in init and get a usable, empty transport. */
static int before_init_no_peers(struct rank_env *e)
{
    struct crux_tp *tp = NULL;
    int rc = crux_tp_tcp_ops.init(&e->ctx, NULL, 0, &tp);
    if (rc != CRUX_SUCCESS || tp == NULL)
        return 1;
    rc = tp->ops->progress(tp) != CRUX_SUCCESS || tp->ops->block(tp, 1) != CRUX_SUCCESS;
    tp->ops->close(tp);
    return rc;
}

Test(tcp, init_with_no_peers, .timeout = 60)
{
    g_before_init = before_init_no_peers;
    run_expect_ok(3, sc_all_lengths);
    g_before_init = NULL;
}

/* ---------- two network namespaces joined by a veth pair ---------- */

static int sh(const char *fmt, const char *a, const char *b)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, fmt, a, b);
    return system(cmd);
}

struct netns_pair {
    char a[32], b[32], va[16], vb[16];
};

/* Creates namespaces a (10.231.7.1) and b (10.231.7.2); 0 on success. */
static int netns_up(struct netns_pair *n)
{
    int id = (int)(getpid() % 100000);
    snprintf(n->a, sizeof n->a, "crux-tcp-%d-a", id);
    snprintf(n->b, sizeof n->b, "crux-tcp-%d-b", id);
    snprintf(n->va, sizeof n->va, "ctcpa%d", id);
    snprintf(n->vb, sizeof n->vb, "ctcpb%d", id);
    if (sh("ip netns add %s && ip netns add %s", n->a, n->b) != 0)
        return -1;
    int rc = sh("ip link add %s type veth peer name %s", n->va, n->vb);
    rc |= sh("ip link set %s netns %s", n->va, n->a);
    rc |= sh("ip link set %s netns %s", n->vb, n->b);
    rc |= sh("ip -n %s addr add 10.231.7.1/24 dev %s", n->a, n->va);
    rc |= sh("ip -n %s addr add 10.231.7.2/24 dev %s", n->b, n->vb);
    rc |= sh("ip -n %s link set %s up", n->a, n->va);
    rc |= sh("ip -n %s link set %s up", n->b, n->vb);
    rc |= sh("ip -n %s link set lo up%s", n->a, "");
    rc |= sh("ip -n %s link set lo up%s", n->b, "");
    return rc == 0 ? 0 : -1;
}

static void netns_down(const struct netns_pair *n)
{
    sh("ip netns del %s 2>/dev/null; ip netns del %s 2>/dev/null", n->a, n->b);
}

static int can_netns(void)
{
    return geteuid() == 0 && system("ip -V >/dev/null 2>&1") == 0;
}

static struct netns_pair g_ns;

static void netns_fini(void)
{
    g_root_host = NULL;
    for (int r = 0; r < MAX_RANKS; r++)
        g_netns[r] = NULL;
    if (g_ns.a[0])
        netns_down(&g_ns);
    memset(&g_ns, 0, sizeof g_ns);
}

static void netns_init(void)
{
    if (!can_netns())
        cr_skip_test("needs root and iproute2 to create network namespaces");
    if (netns_up(&g_ns) != 0)
        cr_skip_test("could not create network namespaces joined by veth here");
    g_root_host = "10.231.7.1";
}

/* Rank 0 in namespace a, rank 1 in b: every length and reduce across the veth. */
Test(tcp, veth_two_netns, .init = netns_init, .fini = netns_fini, .timeout = 180)
{
    g_netns[0] = g_ns.a;
    g_netns[1] = g_ns.b;
    run_expect_ok(2, sc_all_lengths);
    run_expect_ok(2, sc_pingpong);
}

/* Ranks 0 and 1 share namespace a, rank 2 is alone in b. */
Test(tcp, veth_three_ranks_two_netns, .init = netns_init, .fini = netns_fini, .timeout = 180)
{
    g_netns[0] = g_netns[1] = g_ns.a;
    g_netns[2] = g_ns.b;
    run_expect_ok(3, sc_reduce);
    run_expect_ok(3, sc_stream_ring);
}
