/* test_shm.c - the shared-memory transport between real forked ranks.
 *
 * Every child builds a real context (config, identity from CRUX_* env, TCP
 * bootstrap), opens the shm transport to every other rank and runs one scenario;
 * it exits 0 on success. The parent asserts each child's status, kills leftovers
 * on a timeout and checks /dev/shm holds nothing of the job afterwards.
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
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "crux_internal.h"
#include "transport/transport.h"

#define MAX_RANKS 4
#define CHILD_TIMEOUT_S 60.0
#define XFER_TIMEOUT_S 20.0

#define CHECK(cond)                                                                               \
    do {                                                                                          \
        if (!(cond)) {                                                                            \
            fprintf(stderr, "rank %d: %s:%d: check failed: %s\n", e->ctx.rank, __FILE__,          \
                    __LINE__, #cond);                                                             \
            return 1;                                                                             \
        }                                                                                         \
    } while (0)

struct rank_env {
    struct crux_ctx ctx;
    struct crux_tp *tp;
};

typedef int (*scenario_fn)(struct rank_env *e);

/* Set by a test before it forks: the last rank passes no peers to init, so the
 * others cannot find their channel in its (missing) segment. */
static int asymmetric_peers;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* --- per-child setup --- */

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
}

static int child_open(struct rank_env *e)
{
    struct crux_ctx *c = &e->ctx;
    if (crux_config_load(&c->cfg) != CRUX_SUCCESS ||
        crux_identity_resolve(&c->cfg, &c->id) != CRUX_SUCCESS)
        return 2;
    c->rank = c->id.rank;
    c->size = c->id.size;
    crux_log_set_rank(c->rank);
    c->peers = calloc((size_t)c->size, sizeof *c->peers);
    if (!c->peers || crux_bootstrap_init(&c->cfg, &c->id, c->peers, &c->bs) != CRUX_SUCCESS)
        return 3;
    c->local_rank = c->id.local_rank;
    c->local_size = c->size;
    c->nnodes = 1;
    c->spin_us = 50;
    int peers[MAX_RANKS], n = 0;
    for (int r = 0; r < c->size; r++)
        if (r != c->rank)
            peers[n++] = r;
    if (asymmetric_peers && c->rank == c->size - 1)
        n = 0;
    int rc = crux_tp_shm_ops.init(c, peers, n, &e->tp);
    if (asymmetric_peers) /* every rank must fail, with nothing left behind */
        return rc != CRUX_SUCCESS && e->tp == NULL ? 10 : 11;
    return rc == CRUX_SUCCESS ? 0 : 4;
}

static void child_close(struct rank_env *e)
{
    if (e->tp)
        e->tp->ops->close(e->tp);
    if (e->ctx.bs)
        crux_bootstrap_close(e->ctx.bs);
    free(e->ctx.peers);
}

static int child_main(int rank, int size, const char *root, const char *key, scenario_fn fn)
{
    struct rank_env env;
    memset(&env, 0, sizeof env);
    set_rank_env(rank, size, root, key);
    int rc = child_open(&env);
    if (rc == 0)
        rc = fn(&env);
    child_close(&env);
    return rc;
}

/* --- parent: launch, reap, check /dev/shm --- */

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

static int job_shm_leftovers(const char *prefix)
{
    DIR *d = opendir("/dev/shm");
    int n = 0;
    if (!d)
        return 0;
    for (struct dirent *de; (de = readdir(d));)
        if (strncmp(de->d_name, prefix, strlen(prefix)) == 0)
            n++;
    closedir(d);
    return n;
}

/* The segment name prefix of the job (same derivation as rank 0's identity). */
static void job_prefix(int size, const char *root, const char *key, char *out, size_t len)
{
    struct crux_config cfg;
    struct crux_identity id;
    set_rank_env(0, size, root, key);
    cr_assert_eq(crux_config_load(&cfg), CRUX_SUCCESS);
    cr_assert_eq(crux_identity_resolve(&cfg, &id), CRUX_SUCCESS);
    snprintf(out, len, "crux-%016llx-", (unsigned long long)id.job_key);
}

/* Run fn on n ranks; status[r] receives each child's raw wait status. */
static void run_ranks(int n, scenario_fn fn, int *status)
{
    static int serial;
    char root[64], key[64], prefix[64];
    pid_t pids[MAX_RANKS];
    snprintf(root, sizeof root, "127.0.0.1:%d", free_port());
    snprintf(key, sizeof key, "test-shm-%d-%d", (int)getpid(), serial++);
    job_prefix(n, root, key, prefix, sizeof prefix);
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
    cr_assert_eq(job_shm_leftovers(prefix), 0, "/dev/shm holds %s* after the run", prefix);
}

static void run_expect_ok(int n, scenario_fn fn)
{
    int status[MAX_RANKS];
    run_ranks(n, fn, status);
    for (int r = 0; r < n; r++) {
        cr_assert(WIFEXITED(status[r]), "rank %d did not exit (status 0x%x)", r, status[r]);
        cr_assert_eq(WEXITSTATUS(status[r]), 0, "rank %d exited with %d", r, WEXITSTATUS(status[r]));
    }
}

/* --- transfer helpers --- */

static int wait_xfers(struct rank_env *e, struct crux_xfer *xs, int n)
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
        if (prc != CRUX_SUCCESS)
            return prc;
        if (now_s() > end)
            return CRUX_ERR_TIMEOUT;
        if (it > 2000)
            e->tp->ops->block(e->tp, 5);
    }
}

static struct crux_msg_hdr mkhdr(uint32_t tag, size_t len)
{
    return (struct crux_msg_hdr){.ctx_id = 7, .tag = tag, .seq = 1000 + tag, .sig = 0xabcdef12345ull,
                                 .len = len};
}

static void xsend(struct crux_xfer *x, int peer, void *buf, size_t len, uint32_t tag)
{
    memset(x, 0, sizeof *x);
    x->peer = peer;
    x->buf = buf;
    x->len = len;
    x->hdr = mkhdr(tag, len);
}

static void xrecv(struct crux_xfer *x, int peer, void *buf, size_t len, uint32_t tag)
{
    xsend(x, peer, buf, len, tag);
}

static unsigned char pattern(int src, int dst, uint32_t tag, size_t i)
{
    return (unsigned char)(i * 131 + (i >> 8) * 7 + (size_t)src * 17 + (size_t)dst * 29 + tag * 3);
}

static void fill(unsigned char *b, size_t len, int src, int dst, uint32_t tag)
{
    for (size_t i = 0; i < len; i++)
        b[i] = pattern(src, dst, tag, i);
}

static int check_pattern(const unsigned char *b, size_t len, int src, int dst, uint32_t tag)
{
    for (size_t i = 0; i < len; i++)
        if (b[i] != pattern(src, dst, tag, i))
            return 0;
    return 1;
}

#define NLEN 11
static void lengths(const struct rank_env *e, size_t *len)
{
    size_t eager = e->ctx.cfg.shm_eager_bytes;
    size_t l[NLEN] = {0, 1, 7, 63, 64, 65, eager - 1, eager, eager + 1, (1u << 20) + 3,
                      (8u << 20) + 64};
    memcpy(len, l, sizeof l);
}

/* --- scenarios --- */

/* Rank 0 ping-pongs every length with each other rank in turn. */
static int pingpong_pair(struct rank_env *e, int other, const size_t *len)
{
    int me = e->ctx.rank;
    for (int k = 0; k < NLEN; k++) {
        unsigned char *buf = malloc(len[k] + 1);
        CHECK(buf);
        struct crux_xfer x;
        for (int hop = 0; hop < 2; hop++) {
            int peer = me == 0 ? other : me; /* the pair is (0, peer) */
            int src = hop ? peer : 0, dst = hop ? 0 : peer;
            uint32_t tag = (uint32_t)(2 * k + hop);
            if (me == src) {
                fill(buf, len[k], src, dst, tag);
                xsend(&x, dst, buf, len[k], tag);
                CHECK(e->tp->ops->isend(e->tp, &x) == CRUX_SUCCESS);
            } else {
                memset(buf, 0xee, len[k]);
                xrecv(&x, src, buf, len[k], tag);
                CHECK(e->tp->ops->irecv(e->tp, &x) == CRUX_SUCCESS);
            }
            int wrc = wait_xfers(e, &x, 1);
            if (wrc != CRUX_SUCCESS)
                fprintf(stderr, "rank %d: pair %d, length %zu, hop %d: rc %d, %zu bytes done\n", me,
                        other, len[k], hop, wrc, (size_t)x.bytes_done);
            CHECK(wrc == CRUX_SUCCESS);
            CHECK(x.done == 1 && x.bytes_done == len[k]);
            if (me == dst)
                CHECK(check_pattern(buf, len[k], src, dst, tag));
        }
        free(buf);
    }
    return 0;
}

static int sc_pingpong(struct rank_env *e)
{
    size_t len[NLEN];
    lengths(e, len);
    for (int r = 1; r < e->ctx.size; r++)
        if ((e->ctx.rank == 0 || e->ctx.rank == r) && pingpong_pair(e, e->ctx.rank ? 0 : r, len))
            return 1;
    return 0;
}

/* Every length to every peer, all posted at once: deep FIFOs mixing both paths. */
static int sc_alltoall(struct rank_env *e)
{
    size_t len[NLEN];
    lengths(e, len);
    int me = e->ctx.rank, n = e->ctx.size, nx = 0;
    struct crux_xfer *xs = calloc((size_t)(2 * NLEN * n), sizeof *xs);
    unsigned char **bufs = calloc((size_t)(2 * NLEN * n), sizeof *bufs);
    CHECK(xs && bufs);
    for (int r = 0; r < n; r++) {
        if (r == me)
            continue;
        for (int k = 0; k < NLEN; k++) {
            unsigned char *sb = malloc(len[k] + 1), *rb = malloc(len[k] + 1);
            CHECK(sb && rb);
            fill(sb, len[k], me, r, (uint32_t)k);
            memset(rb, 0xee, len[k]);
            bufs[nx] = sb;
            xsend(&xs[nx], r, sb, len[k], (uint32_t)k);
            CHECK(e->tp->ops->isend(e->tp, &xs[nx++]) == CRUX_SUCCESS);
            bufs[nx] = rb;
            xrecv(&xs[nx], r, rb, len[k], (uint32_t)k);
            CHECK(e->tp->ops->irecv(e->tp, &xs[nx++]) == CRUX_SUCCESS);
        }
    }
    CHECK(wait_xfers(e, xs, nx) == CRUX_SUCCESS);
    for (int i = 0; i < nx; i++) {
        CHECK(xs[i].done == 1 && xs[i].bytes_done == xs[i].len);
        if (i % 2 == 1)
            CHECK(check_pattern(bufs[i], xs[i].len, xs[i].peer, me, xs[i].hdr.tag));
        free(bufs[i]);
    }
    free(xs);
    free(bufs);
    return 0;
}

/* Receive-with-reduce: float SUM of exact integers and int32 MAX, every size class. */
static int sc_reduce(struct rank_env *e)
{
    int me = e->ctx.rank, n = e->ctx.size;
    size_t eager = e->ctx.cfg.shm_eager_bytes;
    size_t counts[] = {1, 8, 9, 100, eager / 4 + 16, (1u << 20) / 4 + 48};
    for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
        size_t cnt = counts[c], bytes = cnt * 4;
        float *fs = malloc(bytes), *fr = malloc(bytes * MAX_RANKS);
        int32_t *is = malloc(bytes), *ir = malloc(bytes * MAX_RANKS);
        struct crux_xfer xs[4 * MAX_RANKS];
        int nx = 0;
        CHECK(fs && fr && is && ir);
        for (size_t i = 0; i < cnt; i++) {
            fs[i] = (float)(i * (size_t)n + (size_t)me);
            is[i] = (i % 2) ? me * 1000 - (int32_t)i : (int32_t)i * 3 - me;
        }
        for (int r = 0; r < n; r++) {
            if (r == me)
                continue;
            xsend(&xs[nx], r, fs, bytes, 1);
            CHECK(e->tp->ops->isend(e->tp, &xs[nx++]) == CRUX_SUCCESS);
            xsend(&xs[nx], r, is, bytes, 2);
            CHECK(e->tp->ops->isend(e->tp, &xs[nx++]) == CRUX_SUCCESS);
            xrecv(&xs[nx], r, fr + (size_t)r * cnt, bytes, 1);
            xs[nx].reduce_src = fs;
            xs[nx].dtype = CRUX_FLOAT;
            xs[nx].op = CRUX_SUM;
            CHECK(e->tp->ops->irecv(e->tp, &xs[nx++]) == CRUX_SUCCESS);
            xrecv(&xs[nx], r, ir + (size_t)r * cnt, bytes, 2);
            xs[nx].reduce_src = is;
            xs[nx].dtype = CRUX_INT32;
            xs[nx].op = CRUX_MAX;
            CHECK(e->tp->ops->irecv(e->tp, &xs[nx++]) == CRUX_SUCCESS);
        }
        CHECK(wait_xfers(e, xs, nx) == CRUX_SUCCESS);
        for (int r = 0; r < n; r++) {
            if (r == me)
                continue;
            for (size_t i = 0; i < cnt; i++) {
                float want = (float)(2 * i * (size_t)n + (size_t)me + (size_t)r);
                int32_t a = is[i], b = (i % 2) ? r * 1000 - (int32_t)i : (int32_t)i * 3 - r;
                CHECK(fr[(size_t)r * cnt + i] == want);
                CHECK(ir[(size_t)r * cnt + i] == (a > b ? a : b));
            }
        }
        free(fs);
        free(fr);
        free(is);
        free(ir);
    }
    return 0;
}

/* Ring of 3: rank 0 sends, 1 and 2 forward what they receive with dep = the
 * receive, so bytes stream through without waiting for whole messages. */
static int sc_stream(struct rank_env *e)
{
    int me = e->ctx.rank, n = e->ctx.size, left = (me + n - 1) % n, right = (me + 1) % n;
    size_t eager = e->ctx.cfg.shm_eager_bytes;
    size_t sizes[] = {40, eager, (8u << 20) + 64};
    for (int k = 0; k < 3; k++) {
        size_t len = sizes[k];
        unsigned char *src = malloc(len), *buf = malloc(len);
        struct crux_xfer x[2];
        CHECK(src && buf);
        fill(src, len, 0, 0, (uint32_t)k);
        memset(buf, 0xee, len);
        xrecv(&x[0], left, buf, len, (uint32_t)k);
        CHECK(e->tp->ops->irecv(e->tp, &x[0]) == CRUX_SUCCESS);
        xsend(&x[1], right, me == 0 ? src : buf, len, (uint32_t)k);
        if (me != 0)
            x[1].dep = &x[0];
        CHECK(e->tp->ops->isend(e->tp, &x[1]) == CRUX_SUCCESS);
        CHECK(wait_xfers(e, x, 2) == CRUX_SUCCESS);
        CHECK(check_pattern(buf, len, 0, 0, (uint32_t)k));
        free(src);
        free(buf);
    }
    return 0;
}

/* A tag mismatch fails that receive only; the pair stays in step for the next. */
static int sc_mismatch(struct rank_env *e)
{
    int me = e->ctx.rank;
    size_t sizes[] = {16, (1u << 20) + 64};
    for (int k = 0; k < 2; k++) {
        size_t len = sizes[k];
        unsigned char *b = malloc(len);
        struct crux_xfer x[2];
        CHECK(b);
        if (me == 0) {
            fill(b, len, 0, 1, 9);
            xsend(&x[0], 1, b, len, 5);
            xsend(&x[1], 1, b, len, 6);
            CHECK(e->tp->ops->isend(e->tp, &x[0]) == CRUX_SUCCESS);
            CHECK(e->tp->ops->isend(e->tp, &x[1]) == CRUX_SUCCESS);
            CHECK(wait_xfers(e, x, 2) == CRUX_SUCCESS);
        } else {
            xrecv(&x[0], 0, b, len, 99);
            xrecv(&x[1], 0, b, len, 6);
            int rc = e->tp->ops->irecv(e->tp, &x[0]); /* may fail at once if it is there */
            CHECK(rc == CRUX_SUCCESS || rc == CRUX_ERR_MISMATCH);
            CHECK(e->tp->ops->irecv(e->tp, &x[1]) == CRUX_SUCCESS);
            CHECK(wait_xfers(e, x, 2) == CRUX_ERR_MISMATCH);
            CHECK(x[0].done && x[0].rc == CRUX_ERR_MISMATCH);
            CHECK(x[1].done && x[1].rc == CRUX_SUCCESS);
            CHECK(check_pattern(b, len, 0, 1, 9));
        }
        free(b);
    }
    return 0;
}

/* Rank 1 dies after one message; rank 0's pending receive must fail fast. */
static int sc_death(struct rank_env *e)
{
    unsigned char b[8] = {0};
    struct crux_xfer x;
    if (e->ctx.rank == 1) {
        xsend(&x, 0, b, sizeof b, 1);
        CHECK(e->tp->ops->isend(e->tp, &x) == CRUX_SUCCESS);
        CHECK(wait_xfers(e, &x, 1) == CRUX_SUCCESS);
        usleep(100000); /* let rank 0 consume it and post the next receive */
        raise(SIGKILL);
        return 1;
    }
    xrecv(&x, 1, b, sizeof b, 1);
    CHECK(e->tp->ops->irecv(e->tp, &x) == CRUX_SUCCESS);
    CHECK(wait_xfers(e, &x, 1) == CRUX_SUCCESS);
    xrecv(&x, 1, b, sizeof b, 2);
    CHECK(e->tp->ops->irecv(e->tp, &x) == CRUX_SUCCESS);
    double t0 = now_s();
    CHECK(wait_xfers(e, &x, 1) == CRUX_ERR_PEER);
    CHECK(now_s() - t0 < 2.0);
    CHECK(x.done && x.rc == CRUX_ERR_PEER);
    CHECK(e->tp->ops->progress(e->tp) == CRUX_ERR_PEER);
    return 0;
}

Test(shm, pingpong_2) { run_expect_ok(2, sc_pingpong); }
Test(shm, pingpong_3) { run_expect_ok(3, sc_pingpong); }
Test(shm, pingpong_4) { run_expect_ok(4, sc_pingpong); }
Test(shm, alltoall_2) { run_expect_ok(2, sc_alltoall); }
Test(shm, alltoall_3) { run_expect_ok(3, sc_alltoall); }
Test(shm, alltoall_4) { run_expect_ok(4, sc_alltoall); }
Test(shm, reduce_2) { run_expect_ok(2, sc_reduce); }
Test(shm, reduce_3) { run_expect_ok(3, sc_reduce); }
Test(shm, reduce_4) { run_expect_ok(4, sc_reduce); }
Test(shm, stream_ring_3) { run_expect_ok(3, sc_stream); }
Test(shm, header_mismatch) { run_expect_ok(2, sc_mismatch); }

Test(shm, init_failure_is_collective)
{
    int status[3];
    asymmetric_peers = 1;
    run_ranks(3, sc_pingpong, status);
    asymmetric_peers = 0;
    for (int r = 0; r < 3; r++)
        cr_assert(WIFEXITED(status[r]) && WEXITSTATUS(status[r]) == 10, "rank %d status 0x%x", r,
                  status[r]);
}

Test(shm, peer_killed)
{
    int status[2];
    run_ranks(2, sc_death, status);
    cr_assert(WIFEXITED(status[0]) && WEXITSTATUS(status[0]) == 0, "rank 0 status 0x%x", status[0]);
    cr_assert(WIFSIGNALED(status[1]) && WTERMSIG(status[1]) == SIGKILL, "rank 1 status 0x%x",
              status[1]);
}
