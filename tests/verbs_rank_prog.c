/* verbs_rank_prog.c - per-rank program of the verbs tests (run inside rxe guests).
 *
 *   crux_test_verbs_rank paths     allreduce of several sizes and dtypes with exact checks,
 *                                  then the verbs counters prove which path each took;
 *                                  then registered buffers are released and their
 *                                  addresses reused (exact results, cache invalidated)
 *   crux_test_verbs_rank sizes     the exact checks only, up to 64 Ki elements (jobs
 *                                  mixing shm and verbs)
 *   crux_test_verbs_rank flow      rank 0 floods rank 1 with 400 messages (eager and
 *                                  rendezvous) while rank 1 posts nothing: credits hold
 *                                  the sender to the receiver's posted slots; then every
 *                                  message arrives in order with its exact bytes
 *   crux_test_verbs_rank mismatch  rank 0 passes one element more to a large (rendezvous)
 *                                  allreduce: every rank must get CRUX_ERR_MISMATCH (exit 3)
 *
 * Exit 0 all good, 1 a check failed, 2 usage/setup.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "crux.h"
#include "crux_internal.h"
#ifdef CRUX_HAVE_VERBS
#include "transport/verbs/verbs.h"
#else
#define VB_NRECV 32
#endif

static int rank, nranks, failures;
static int salt; /* changes the data between calls, so stale memory shows */

#define CHECK(cond, ...)                                                                          \
    do {                                                                                          \
        if (!(cond)) {                                                                            \
            printf("rank %d: FAIL ", rank);                                                       \
            printf(__VA_ARGS__);                                                                  \
            printf("\n");                                                                         \
            failures++;                                                                           \
        }                                                                                         \
    } while (0)

static int verbs_stats(struct crux_tp_stats *st)
{
    struct crux_ctx *ctx = crux_ctx_g;
    for (int i = 0; ctx && i < ctx->ntps; i++)
        if (!strcmp(ctx->tps[i]->ops->name, "verbs") && ctx->tps[i]->ops->stats)
            return ctx->tps[i]->ops->stats(ctx->tps[i], st);
    return -1;
}

static struct crux_tp_stats delta(const struct crux_tp_stats *a, const struct crux_tp_stats *b)
{
    struct crux_tp_stats d;
    const uint64_t *pa = (const uint64_t *)a, *pb = (const uint64_t *)b;
    uint64_t *pd = (uint64_t *)&d;
    for (size_t i = 0; i < sizeof(d) / sizeof(uint64_t); i++)
        pd[i] = pb[i] - pa[i];
    return d;
}

/* x[i] = i*P + rank in integers every dtype holds exactly (mod 2^k for the small ones). */
static void fill(crux_datatype_t dt, void *buf, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        int64_t v = (int64_t)(((i + (size_t)salt) % 97) * (size_t)nranks + (size_t)rank);
        switch (dt) {
        case CRUX_FLOAT: ((float *)buf)[i] = (float)v; break;
        case CRUX_DOUBLE: ((double *)buf)[i] = (double)v; break;
        case CRUX_INT32: ((int32_t *)buf)[i] = (int32_t)v; break;
        case CRUX_INT64: ((int64_t *)buf)[i] = v; break;
        default: ((uint8_t *)buf)[i] = (uint8_t)v; break;
        }
    }
}

static int check(crux_datatype_t dt, const void *buf, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        int64_t want = 0;
        for (int r = 0; r < nranks; r++)
            want += (int64_t)(((i + (size_t)salt) % 97) * (size_t)nranks + (size_t)r);
        int64_t got;
        switch (dt) {
        case CRUX_FLOAT: got = (int64_t)((const float *)buf)[i]; break;
        case CRUX_DOUBLE: got = (int64_t)((const double *)buf)[i]; break;
        case CRUX_INT32: got = ((const int32_t *)buf)[i]; break;
        case CRUX_INT64: got = ((const int64_t *)buf)[i]; break;
        default: got = ((const uint8_t *)buf)[i]; want &= 0xff; break;
        }
        if (got != want) {
            CHECK(0, "allreduce dtype %d count %zu: element %zu = %lld, want %lld", (int)dt, count,
                  i, (long long)got, (long long)want);
            return -1;
        }
    }
    return 0;
}

/* Ring blocks as algo/ring.c cuts them. */
static size_t block_bytes(size_t count, int b, size_t es)
{
    size_t base = count / (size_t)nranks, rem = count % (size_t)nranks;
    return (base + ((size_t)b < rem ? 1 : 0)) * es;
}

static int mod(int a, int p) { return ((a % p) + p) % p; }

/* A large ring allreduce: reduce-scatter receives land in scratch and are reduced
 * (staged), allgather receives land in the user buffer (zero copy), and nothing of
 * the payload goes through a bounce slot. */
static void paths_large(void)
{
    size_t count = (4u << 20) / 4 + 5, es = 4, bytes = count * es;
    float *in = malloc(bytes), *out = malloc(bytes);
    struct crux_tp_stats s0, s1, s2;
    fill(CRUX_FLOAT, in, count);
    if (verbs_stats(&s0) != 0) {
        CHECK(0, "no verbs transport in this job");
        return;
    }
    CHECK(crux_allreduce(in, out, count, CRUX_FLOAT, CRUX_SUM, CRUX_COMM_WORLD) == CRUX_SUCCESS,
          "allreduce 4 MiB");
    verbs_stats(&s1);
    check(CRUX_FLOAT, out, count);
    struct crux_tp_stats d = delta(&s0, &s1);
    size_t rs = 0, ag = 0, tx = 0;
    for (int s = 0; s < nranks - 1; s++) {
        rs += block_bytes(count, mod(rank - s - 1, nranks), es);
        ag += block_bytes(count, mod(rank - s, nranks), es);
        tx += block_bytes(count, mod(rank - s, nranks), es) +
              block_bytes(count, mod(rank + 1 - s, nranks), es);
    }
    printf("rank %d: 4 MiB allreduce: rendezvous tx %llu rx %llu (zero copy), staged %llu, eager "
           "tx %llu rx %llu bytes; MR cache hits %llu misses %llu\n", rank,
           (unsigned long long)d.tx_rdv_bytes, (unsigned long long)d.rx_rdv_bytes,
           (unsigned long long)d.rx_staged_bytes, (unsigned long long)d.tx_eager_bytes,
           (unsigned long long)d.rx_eager_bytes, (unsigned long long)d.mr_hits,
           (unsigned long long)d.mr_misses);
    CHECK(d.tx_rdv_bytes == tx, "rendezvous bytes sent %llu, want %zu",
          (unsigned long long)d.tx_rdv_bytes, tx);
    CHECK(d.rx_rdv_bytes == ag && ag > 0, "zero-copy bytes received %llu, want %zu",
          (unsigned long long)d.rx_rdv_bytes, ag);
    CHECK(d.rx_staged_bytes == rs, "staged (reduce) bytes %llu, want %zu",
          (unsigned long long)d.rx_staged_bytes, rs);
    CHECK(d.tx_eager_bytes == 0 && d.rx_eager_bytes == 0,
          "payload copied through bounce slots: tx %llu rx %llu bytes",
          (unsigned long long)d.tx_eager_bytes, (unsigned long long)d.rx_eager_bytes);
    /* Same buffers again: found in the registration cache. */
    CHECK(crux_allreduce(in, out, count, CRUX_FLOAT, CRUX_SUM, CRUX_COMM_WORLD) == CRUX_SUCCESS,
          "allreduce 4 MiB again");
    verbs_stats(&s2);
    check(CRUX_FLOAT, out, count);
    d = delta(&s1, &s2);
    CHECK(d.mr_misses == 0 && d.mr_hits > 0, "second call: MR cache hits %llu misses %llu",
          (unsigned long long)d.mr_hits, (unsigned long long)d.mr_misses);
    free(in);
    free(out);
}

/* A rendezvous-sized send buffer in read-only memory (registered read-only). */
static void paths_readonly_send(void)
{
    static const float table[32768] = {1.0f, 2.0f, 3.0f};
    float *out = malloc(sizeof(table));
    CHECK(crux_allreduce(table, out, 32768, CRUX_FLOAT, CRUX_SUM, CRUX_COMM_WORLD) ==
              CRUX_SUCCESS, "allreduce from a const table");
    for (int i = 0; i < 32768; i++)
        if (out[i] != (float)nranks * table[i]) {
            CHECK(0, "allreduce from a const table: element %d = %g", i, (double)out[i]);
            break;
        }
    free(out);
}

/* Small messages go eagerly: no rendezvous at all. */
static void paths_small(void)
{
    int64_t v[33];
    struct crux_tp_stats s0, s1;
    fill(CRUX_INT64, v, 33);
    verbs_stats(&s0);
    CHECK(crux_allreduce(CRUX_IN_PLACE, v, 33, CRUX_INT64, CRUX_SUM, CRUX_COMM_WORLD) ==
              CRUX_SUCCESS, "allreduce 33 int64");
    verbs_stats(&s1);
    check(CRUX_INT64, v, 33);
    struct crux_tp_stats d = delta(&s0, &s1);
    CHECK(d.tx_rdv_bytes == 0 && d.rx_eager_bytes > 0, "small allreduce: rendezvous %llu eager %llu",
          (unsigned long long)d.tx_rdv_bytes, (unsigned long long)d.rx_eager_bytes);
}

/* A 4 MiB allreduce (rendezvous: both buffers registered and cached) of fresh data. */
static int remap_round(float *in, float *out, size_t count, const char *what)
{
    salt++;
    fill(CRUX_FLOAT, in, count);
    memset(out, 0xff, count * sizeof(float));
    CHECK(crux_allreduce(in, out, count, CRUX_FLOAT, CRUX_SUM, CRUX_COMM_WORLD) == CRUX_SUCCESS,
          "allreduce (%s)", what);
    return check(CRUX_FLOAT, out, count);
}

static float *map_at(void *at, size_t bytes)
{
    void *p = mmap(at, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | (at ? MAP_FIXED_NOREPLACE : 0), -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* Registered buffers released and their addresses reused for new pages: the
 * cached registrations must not be used (the HCA would read and write the old
 * pages), so every result must be exact. munmap + mmap at the same address;
 * madvise(DONTNEED); and malloc/free of a chunk glibc unmaps inside free(). */
static void paths_released_memory(void)
{
    size_t count = (4u << 20) / 4 + 5, bytes = count * 4;
    struct crux_tp_stats s0, s1;
    verbs_stats(&s0);
    float *in = map_at(NULL, bytes), *out = map_at(NULL, bytes);
    CHECK(in && out, "mmap");
    if (!in || !out)
        return;
    remap_round(in, out, count, "mmap'ed buffers");
    munmap(in, bytes);
    munmap(out, bytes);
    float *in2 = map_at(in, bytes), *out2 = map_at(out, bytes);
    CHECK(in2 == in && out2 == out, "new mappings at the old addresses: %p %p", (void *)in2,
          (void *)out2);
    if (in2 != in || out2 != out)
        return;
    remap_round(in, out, count, "after munmap + mmap at the same addresses");
    madvise(in, bytes, MADV_DONTNEED);
    madvise(out, bytes, MADV_DONTNEED);
    remap_round(in, out, count, "after madvise(DONTNEED)");
    munmap(in, bytes);
    munmap(out, bytes);
    /* Above glibc's largest dynamic mmap threshold (32 MiB): free() unmaps it. */
    size_t big = (40u << 20) / 4;
    float *a = malloc(big * 4), *b = malloc(big * 4);
    remap_round(a, b, big, "malloc'ed 40 MiB");
    free(a);
    free(b);
    float *a2 = malloc(big * 4), *b2 = malloc(big * 4);
    CHECK(a2 == a || a2 == b || b2 == a || b2 == b, "malloc did not reuse a freed address: "
          "the free hook is not exercised");
    remap_round(a2, b2, big, "malloc'ed 40 MiB after free");
    free(a2);
    free(b2);
    verbs_stats(&s1);
    struct crux_tp_stats d = delta(&s0, &s1);
    printf("rank %d: released memory: %llu cached registrations invalidated, %llu misses, "
           "%llu hits\n", rank, (unsigned long long)d.mr_invalidations,
           (unsigned long long)d.mr_misses, (unsigned long long)d.mr_hits);
    CHECK(d.mr_invalidations >= 3, "only %llu registrations invalidated",
          (unsigned long long)d.mr_invalidations);
}

static void sizes_and_dtypes(int quick)
{
    static const size_t counts[] = {0, 1, 7, 2049, 65536 + 3, (1u << 20) + 1};
    size_t ncounts = sizeof(counts) / sizeof(counts[0]) - (quick ? 1 : 0);
    static const crux_datatype_t dts[] = {CRUX_FLOAT, CRUX_DOUBLE, CRUX_INT32, CRUX_INT64,
                                          CRUX_UINT8};
    for (size_t c = 0; c < ncounts; c++)
        for (size_t t = 0; t < sizeof(dts) / sizeof(dts[0]); t++) {
            size_t es = crux_datatype_size(dts[t]), n = counts[c];
            void *buf = malloc(n * es + 1);
            fill(dts[t], buf, n);
            int in_place = (c + t) % 2;
            void *out = in_place ? buf : malloc(n * es + 1);
            CHECK(crux_allreduce(in_place ? CRUX_IN_PLACE : buf, out, n, dts[t], CRUX_SUM,
                                 CRUX_COMM_WORLD) == CRUX_SUCCESS, "allreduce");
            check(dts[t], out, n);
            if (!in_place)
                free(out);
            free(buf);
        }
}

enum { FLOW_N = 400 };

/* 200 eager messages first (the flood credits must stop), then every tenth rendezvous. */
static size_t flow_len(int i)
{
    return i >= 200 && i % 10 == 9 ? 20000 + (size_t)i : (size_t)(i * 13) % 8000;
}

/* Drive the transport until every xfer is done. */
static int flow_wait(struct crux_tp *tp, struct crux_xfer *xs, int n)
{
    for (;;) {
        int rc = tp->ops->progress(tp), pending = 0;
        if (rc != CRUX_SUCCESS)
            return rc;
        for (int i = 0; i < n; i++)
            pending += !xs[i].done;
        if (!pending)
            return CRUX_SUCCESS;
        tp->ops->block(tp, 10);
    }
}

static int mode_flow(void)
{
    struct crux_ctx *ctx = crux_ctx_g;
    if (nranks != 2 || !ctx->peer_tp[1 - rank]) {
        CHECK(0, "flow needs 2 ranks");
        return 1;
    }
    struct crux_tp *tp = ctx->peer_tp[1 - rank];
    static struct crux_xfer xs[FLOW_N];
    static uint8_t *bufs[FLOW_N];
    for (int i = 0; i < FLOW_N; i++) {
        size_t len = flow_len(i);
        bufs[i] = malloc(len + 1);
        for (size_t k = 0; k < len; k++)
            bufs[i][k] = rank == 0 ? (uint8_t)(i * 7 + k) : 0xee;
        struct crux_xfer *x = &xs[i];
        memset(x, 0, sizeof(*x));
        x->peer = 1 - rank;
        x->buf = bufs[i];
        x->len = len;
        x->hdr = (struct crux_msg_hdr){.ctx_id = 99, .tag = (uint32_t)i, .seq = 1, .sig = 7,
                                       .len = len};
    }
    /* A slow receiver: rank 1 posts nothing (and progresses nothing) until rank 0
     * has pushed as hard as it can; the out-of-band barrier orders the two. */
    if (rank == 1)
        CHECK(crux_bootstrap_barrier(ctx->bs) == CRUX_SUCCESS, "bootstrap barrier");
    for (int i = 0; i < FLOW_N; i++)
        CHECK((rank == 0 ? tp->ops->isend(tp, &xs[i]) : tp->ops->irecv(tp, &xs[i])) ==
                  CRUX_SUCCESS, "post %d", i);
    if (rank == 0) {
        /* While the receiver sleeps (not re-posting anything), only its initially
         * posted slots can be filled: eager sends complete on posting, so at most
         * VB_NRECV of them can be done, however long we push. */
        for (int k = 0; k < 50; k++) {
            tp->ops->progress(tp);
            tp->ops->block(tp, 10);
        }
        int sent = 0;
        for (int i = 0; i < FLOW_N; i++)
            sent += xs[i].done;
        printf("rank 0: flow: %d of %d messages out before the receiver woke\n", sent, FLOW_N);
        CHECK(sent > 0 && sent <= VB_NRECV, "%d messages sent to a receiver with %d credits",
              sent, VB_NRECV);
        CHECK(crux_bootstrap_barrier(ctx->bs) == CRUX_SUCCESS, "bootstrap barrier");
    }
    CHECK(flow_wait(tp, xs, FLOW_N) == CRUX_SUCCESS, "flow transfers");
    for (int i = 0; i < FLOW_N; i++) {
        CHECK(xs[i].rc == CRUX_SUCCESS, "message %d: %s", i, crux_error_string(xs[i].rc));
        for (size_t k = 0; rank == 1 && k < xs[i].len; k++)
            if (bufs[i][k] != (uint8_t)(i * 7 + k)) {
                CHECK(0, "message %d byte %zu: %u", i, k, bufs[i][k]);
                break;
            }
        free(bufs[i]);
    }
    struct crux_tp_stats st;
    if (verbs_stats(&st) == 0)
        printf("rank %d: flow: %llu eager and %llu rendezvous messages\n", rank,
               (unsigned long long)(rank ? st.rx_eager_msgs : st.tx_eager_msgs),
               (unsigned long long)(rank ? st.rx_rdv_msgs : st.tx_rdv_msgs));
    int rc = crux_finalize();
    CHECK(rc == CRUX_SUCCESS, "finalize: %s", crux_error_string(rc));
    if (!failures)
        printf("rank %d: OK\n", rank);
    return failures ? 1 : 0;
}

static int mode_mismatch(void)
{
    size_t count = 100000 + (rank == 0);
    float *b = calloc(count, sizeof(float));
    int rc = crux_allreduce(CRUX_IN_PLACE, b, count, CRUX_FLOAT, CRUX_SUM, CRUX_COMM_WORLD);
    printf("rank %d: mismatched large allreduce returned %s\n", rank, crux_error_string(rc));
    fflush(stdout);
    crux_finalize();
    free(b);
    return rc == CRUX_ERR_MISMATCH ? 3 : rc == CRUX_SUCCESS ? 5 : 4;
}

int main(int argc, char **argv)
{
    if (argc < 2 || (strcmp(argv[1], "paths") && strcmp(argv[1], "sizes") &&
                     strcmp(argv[1], "mismatch") && strcmp(argv[1], "flow"))) {
        fprintf(stderr, "usage: %s paths|sizes|mismatch|flow\n", argv[0]);
        return 2;
    }
    int irc = crux_init(&argc, &argv);
    if (irc != CRUX_SUCCESS) {
        printf("crux_init returned %s\n", crux_error_string(irc));
        return 2;
    }
    crux_comm_rank(CRUX_COMM_WORLD, &rank);
    crux_comm_size(CRUX_COMM_WORLD, &nranks);
    if (!strcmp(argv[1], "mismatch"))
        return mode_mismatch();
    if (!strcmp(argv[1], "flow"))
        return mode_flow();
    sizes_and_dtypes(!strcmp(argv[1], "sizes"));
    if (!strcmp(argv[1], "paths")) {
        paths_readonly_send();
        paths_small();
        paths_large();
        paths_released_memory();
    }
    int rc = crux_finalize();
    CHECK(rc == CRUX_SUCCESS, "finalize: %s", crux_error_string(rc));
    if (!failures)
        printf("rank %d: OK\n", rank);
    return failures ? 1 : 0;
}
