/* rank_prog.c - the per-rank program of the multi-process tests, started by
 * crux-run. Every check is exact: values are small integers whose sums, products,
 * maxima and minima every datatype represents exactly.
 *
 *   crux_test_rank coll [--quick]        every collective, dtype, op, count, in place or not
 *   crux_test_rank kill VICTIM ITER      allreduce stream; VICTIM SIGKILLs itself at ITER
 *   crux_test_rank stall VICTIM ITER     the same, but VICTIM SIGSTOPs itself (a hung peer)
 *   crux_test_rank mismatch count|bigcount|dtype|op
 *   crux_test_rank allreduce             allreduce only: exact values, bit-identical results
 *                                        of order-dependent floats, node communicators
 *   crux_test_rank node                  the node mailbox path's edges (algo/shm_node.c)
 * A leading --hosts H0,H1,... sets CRUX_HOSTNAME=H<rank> before crux_init, so ranks
 * of this machine form fake hosts and run the multi-node schedules over TCP.
 *
 * Exit: 0 all good; 1 a check failed; 3 the expected error was returned; 4 another
 * error; 5 no error where one was expected.
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "crux.h"
#include "lib/reduce.h"

static int rank, nranks, failures;
static int node_ranks; /* ranks expected on this rank's host; 0 = all (no --hosts) */

#define CHECK_RC(call)                                                                            \
    do {                                                                                          \
        int rc_ = (call);                                                                         \
        if (rc_ != CRUX_SUCCESS) {                                                                \
            printf("rank %d: FAIL %s -> %s\n", rank, #call, crux_error_string(rc_));              \
            exit(1);                                                                              \
        }                                                                                         \
    } while (0)

static const char *dtype_names[] = { "float", "double", "int32", "int64", "uint8", "float16",
                                     "bfloat16" };
static const char *op_names[] = { "sum", "prod", "max", "min" };

/* Contribution of rank r to element i. */
static int64_t val(crux_op_t op, size_t i, int r)
{
    if (op == CRUX_PROD)
        return (i + (size_t)r) % 3 == 0 ? 2 : 1;
    return (int64_t)((i * 3 + (size_t)r * 5) % 16);
}

static int64_t expect(crux_op_t op, size_t i, int nr)
{
    int64_t acc = val(op, i, 0);
    for (int r = 1; r < nr; r++) {
        int64_t v = val(op, i, r);
        acc = op == CRUX_SUM ? acc + v : op == CRUX_PROD ? acc * v : op == CRUX_MAX ? (v > acc ? v : acc)
                                                                               : (v < acc ? v : acc);
    }
    return acc;
}

static void store(crux_datatype_t dt, void *buf, size_t i, int64_t v)
{
    switch (dt) {
    case CRUX_FLOAT: ((float *)buf)[i] = (float)v; break;
    case CRUX_DOUBLE: ((double *)buf)[i] = (double)v; break;
    case CRUX_INT32: ((int32_t *)buf)[i] = (int32_t)v; break;
    case CRUX_INT64: ((int64_t *)buf)[i] = v; break;
    case CRUX_UINT8: ((uint8_t *)buf)[i] = (uint8_t)v; break;
    case CRUX_FLOAT16: ((uint16_t *)buf)[i] = crux_float_to_half((float)v); break;
    case CRUX_BFLOAT16: ((uint16_t *)buf)[i] = crux_float_to_bf16((float)v); break;
    }
}

static uint64_t fnv(const void *p, size_t n)
{
    const unsigned char *c = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ c[i]) * 1099511628211ull;
    return h;
}

/* Every rank must hold the same bits: compare hashes. */
static void check_identical(const void *buf, size_t bytes, const char *what)
{
    uint64_t mine = fnv(buf, bytes);
    uint64_t *all = malloc(sizeof(uint64_t) * (size_t)nranks);
    CHECK_RC(crux_allgather(&mine, 1, all, CRUX_INT64, CRUX_COMM_WORLD));
    for (int r = 0; r < nranks; r++)
        if (all[r] != mine) {
            printf("rank %d: FAIL %s: result bits differ from rank %d\n", rank, what, r);
            failures++;
            break;
        }
    free(all);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        printf("rank %d: out of memory (%zu bytes)\n", rank, n);
        exit(1);
    }
    return p;
}

static void fail_at(const char *what, const void *got, const void *want, size_t esize, size_t count)
{
    for (size_t i = 0; i < count; i++)
        if (memcmp((const char *)got + i * esize, (const char *)want + i * esize, esize)) {
            printf("rank %d: FAIL %s: first difference at element %zu of %zu\n", rank, what, i, count);
            failures++;
            return;
        }
}

static void test_allreduce(crux_datatype_t dt, crux_op_t op, size_t count, int in_place)
{
    size_t es = crux_datatype_size(dt), bytes = count * es;
    char what[160];
    snprintf(what, sizeof(what), "allreduce %s %s count=%zu%s", dtype_names[dt], op_names[op], count,
             in_place ? " in-place" : "");
    void *send = xmalloc(bytes), *recv = xmalloc(bytes), *want = xmalloc(bytes), *orig = xmalloc(bytes);
    for (size_t i = 0; i < count; i++) {
        store(dt, send, i, val(op, i, rank));
        store(dt, want, i, expect(op, i, nranks));
    }
    memcpy(orig, send, bytes);
    memset(recv, 0xa5, bytes);
    if (in_place) {
        memcpy(recv, send, bytes);
        CHECK_RC(crux_allreduce(CRUX_IN_PLACE, recv, count, dt, op, CRUX_COMM_WORLD));
    } else {
        CHECK_RC(crux_allreduce(send, recv, count, dt, op, CRUX_COMM_WORLD));
        if (memcmp(send, orig, bytes))
            fail_at("allreduce modified sendbuf", send, orig, es, count);
    }
    if (memcmp(recv, want, bytes))
        fail_at(what, recv, want, es, count);
    check_identical(recv, bytes, what);
    free(send), free(recv), free(want), free(orig);
}

static void test_reduce_scatter(crux_datatype_t dt, crux_op_t op, size_t rc_count, int in_place)
{
    size_t es = crux_datatype_size(dt), total = rc_count * (size_t)nranks;
    char what[160];
    snprintf(what, sizeof(what), "reduce_scatter_block %s %s recvcount=%zu%s", dtype_names[dt],
             op_names[op], rc_count, in_place ? " in-place" : "");
    char *send = xmalloc(total * es), *recv = xmalloc(total * es), *want = xmalloc(rc_count * es);
    for (size_t i = 0; i < total; i++)
        store(dt, send, i, val(op, i, rank));
    for (size_t i = 0; i < rc_count; i++)
        store(dt, want, i, expect(op, (size_t)rank * rc_count + i, nranks));
    if (in_place) {
        memcpy(recv, send, total * es);
        CHECK_RC(crux_reduce_scatter_block(CRUX_IN_PLACE, recv, rc_count, dt, op, CRUX_COMM_WORLD));
    } else {
        CHECK_RC(crux_reduce_scatter_block(send, recv, rc_count, dt, op, CRUX_COMM_WORLD));
    }
    if (memcmp(recv, want, rc_count * es))
        fail_at(what, recv, want, es, rc_count);
    free(send), free(recv), free(want);
}

static void test_allgather(crux_datatype_t dt, size_t count, int in_place)
{
    size_t es = crux_datatype_size(dt), total = count * (size_t)nranks;
    char what[160];
    snprintf(what, sizeof(what), "allgather %s count=%zu%s", dtype_names[dt], count,
             in_place ? " in-place" : "");
    char *send = xmalloc(count * es), *recv = xmalloc(total * es), *want = xmalloc(total * es);
    for (int r = 0; r < nranks; r++)
        for (size_t i = 0; i < count; i++)
            store(dt, want, (size_t)r * count + i, val(CRUX_SUM, i, r));
    for (size_t i = 0; i < count; i++)
        store(dt, send, i, val(CRUX_SUM, i, rank));
    memset(recv, 0x5a, total * es);
    if (in_place) {
        memcpy(recv + (size_t)rank * count * es, send, count * es);
        CHECK_RC(crux_allgather(CRUX_IN_PLACE, count, recv, dt, CRUX_COMM_WORLD));
    } else {
        CHECK_RC(crux_allgather(send, count, recv, dt, CRUX_COMM_WORLD));
    }
    if (memcmp(recv, want, total * es))
        fail_at(what, recv, want, es, total);
    free(send), free(recv), free(want);
}

static void test_bcast(size_t count, int root)
{
    char what[96];
    snprintf(what, sizeof(what), "bcast double count=%zu root=%d", count, root);
    double *buf = xmalloc(count * sizeof(double)), *want = xmalloc(count * sizeof(double));
    for (size_t i = 0; i < count; i++) {
        want[i] = (double)(i * 7 + (size_t)root);
        buf[i] = rank == root ? want[i] : -1.0;
    }
    CHECK_RC(crux_bcast(buf, count, CRUX_DOUBLE, root, CRUX_COMM_WORLD));
    if (memcmp(buf, want, count * sizeof(double)))
        fail_at(what, buf, want, sizeof(double), count);
    free(buf), free(want);
}

static void test_iallreduce(void)
{
    enum { N = 3, C = 4099 };
    static int32_t in[N][C], out[N][C];
    crux_request_t req[N];
    for (int k = 0; k < N; k++) {
        for (int i = 0; i < C; i++)
            in[k][i] = (int32_t)(val(CRUX_SUM, (size_t)i, rank) + k);
        CHECK_RC(crux_iallreduce(in[k], out[k], C, CRUX_INT32, CRUX_SUM, CRUX_COMM_WORLD, &req[k]));
    }
    int done = 0;
    for (int spins = 0; !done && spins < 1000; spins++)
        CHECK_RC(crux_test(&req[0], &done));
    for (int k = 0; k < N; k++)
        CHECK_RC(crux_wait(&req[k]));
    for (int k = 0; k < N; k++)
        for (int i = 0; i < C; i++)
            if (out[k][i] != (int32_t)(expect(CRUX_SUM, (size_t)i, nranks) + (int64_t)k * nranks)) {
                printf("rank %d: FAIL iallreduce %d element %d: %d\n", rank, k, i, out[k][i]);
                failures++;
                break;
            }
    if (req[0] != CRUX_REQUEST_NULL) {
        printf("rank %d: FAIL crux_wait did not reset the request\n", rank);
        failures++;
    }
}

/* Ranks whose host name equals mine (crux-run: all; namespace hosts: those of my host). */
static int ranks_on_my_host(void)
{
    char mine[64] = { 0 };
    const char *fake = getenv("CRUX_HOSTNAME"); /* what crux groups by, when set */
    if (fake)
        snprintf(mine, sizeof(mine), "%s", fake);
    else
        gethostname(mine, sizeof(mine) - 1);
    char *all = xmalloc(sizeof(mine) * (size_t)nranks);
    CHECK_RC(crux_allgather(mine, sizeof(mine), all, CRUX_UINT8, CRUX_COMM_WORLD));
    int n = 0;
    for (int r = 0; r < nranks; r++)
        n += memcmp(all + (size_t)r * sizeof(mine), mine, sizeof(mine)) == 0;
    free(all);
    return n;
}

static void test_split(void)
{
    crux_comm_t sub, node, none;
    /* Two colors, reversed key order: new rank = position among same color by -rank. */
    CHECK_RC(crux_comm_split(CRUX_COMM_WORLD, rank % 2, nranks - rank, &sub));
    int srank, ssize, want_size = (nranks + 1 - rank % 2) / 2, want_rank = 0;
    for (int r = rank + 2; r < nranks; r += 2)
        want_rank++;
    CHECK_RC(crux_comm_rank(sub, &srank));
    CHECK_RC(crux_comm_size(sub, &ssize));
    if (srank != want_rank || ssize != want_size) {
        printf("rank %d: FAIL split: rank %d size %d, want %d %d\n", rank, srank, ssize, want_rank, want_size);
        failures++;
    }
    int64_t sum = rank, want = 0;
    for (int r = rank % 2; r < nranks; r += 2)
        want += r;
    CHECK_RC(crux_allreduce(CRUX_IN_PLACE, &sum, 1, CRUX_INT64, CRUX_SUM, sub));
    if (sum != want) {
        printf("rank %d: FAIL allreduce on split comm: %lld want %lld\n", rank, (long long)sum, (long long)want);
        failures++;
    }
    CHECK_RC(crux_comm_free(&sub));
    CHECK_RC(crux_comm_split_type_node(CRUX_COMM_WORLD, &node));
    CHECK_RC(crux_comm_size(node, &ssize));
    int on_my_host = ranks_on_my_host(); /* crux-run: one host unless --hosts */
    if (ssize != on_my_host) {
        printf("rank %d: FAIL split_type_node size %d, want %d\n", rank, ssize, on_my_host);
        failures++;
    }
    CHECK_RC(crux_comm_free(&node));
    CHECK_RC(crux_comm_split(CRUX_COMM_WORLD, rank == 0 ? CRUX_UNDEFINED : 1, 0, &none));
    if ((rank == 0) != (none == NULL)) {
        printf("rank %d: FAIL split with CRUX_UNDEFINED\n", rank);
        failures++;
    }
    if (none)
        CHECK_RC(crux_comm_free(&none));
}

static int mode_coll(int quick)
{
    static const size_t counts[] = { 0, 1, 7, 1023, (1u << 20) + 3 };
    size_t ncounts = sizeof(counts) / sizeof(counts[0]);
    for (size_t c = 0; c < ncounts; c++)
        for (int dt = CRUX_FLOAT; dt <= CRUX_BFLOAT16; dt++)
            for (int op = CRUX_SUM; op <= CRUX_MIN; op++)
                for (int ip = 0; ip < 2; ip++) {
                    if (quick && c == ncounts - 1 && (op != CRUX_SUM || ip))
                        continue;
                    test_allreduce(dt, op, counts[c], ip);
                }
    if (!quick) { /* 64 MiB */
        test_allreduce(CRUX_FLOAT, CRUX_SUM, (64u << 20) / 4, 0);
        test_allreduce(CRUX_UINT8, CRUX_MAX, 64u << 20, 1);
    }
    static const size_t small[] = { 0, 1, 7, 1023, 65537 };
    for (size_t c = 0; c < 5; c++)
        for (int ip = 0; ip < 2; ip++) {
            test_reduce_scatter(CRUX_INT32, CRUX_SUM, small[c], ip);
            test_reduce_scatter(CRUX_FLOAT16, CRUX_MAX, small[c], ip);
            test_allgather(CRUX_INT64, small[c], ip);
            test_allgather(CRUX_UINT8, small[c], ip);
        }
    for (int root = 0; root < nranks; root++) {
        test_bcast(0, root);
        test_bcast(1, root);
        test_bcast(1023, root);
    }
    test_bcast((1u << 20) + 3, nranks - 1);
    for (int i = 0; i < 5; i++)
        CHECK_RC(crux_barrier(CRUX_COMM_WORLD));
    test_iallreduce();
    test_split();
    return failures ? 1 : 0;
}

static int expected_error(int rc, int want1, int want2, const char *what)
{
    printf("rank %d: %s returned %s\n", rank, what, crux_error_string(rc));
    fflush(stdout);
    if (rc == CRUX_SUCCESS)
        return 5;
    return rc == want1 || rc == want2 ? 3 : 4;
}

static int mode_kill(int victim, long at, int sig)
{
    size_t count = 1 << 16;
    float *a = xmalloc(count * 4), *b = xmalloc(count * 4);
    for (size_t i = 0; i < count; i++)
        a[i] = (float)(i % 16);
    for (long it = 0; it < 10000000; it++) {
        if (rank == victim && it == at) {
            fflush(stdout);
            raise(sig);
        }
        size_t n = it % 2 ? count : 16; /* small and large messages */
        int rc = crux_allreduce(a, b, n, CRUX_FLOAT, CRUX_SUM, CRUX_COMM_WORLD);
        if (rc != CRUX_SUCCESS) {
            int e = expected_error(rc, CRUX_ERR_PEER, CRUX_ERR_TIMEOUT, "allreduce after a peer died");
            crux_finalize();
            return e;
        }
    }
    return 5;
}

static int mode_mismatch(const char *what)
{
    static int32_t buf[1 << 20];
    size_t count = 12;
    crux_datatype_t dt = CRUX_INT32;
    crux_op_t op = CRUX_SUM;
    if (rank == 0) {
        if (!strcmp(what, "count"))
            count = 10;
        else if (!strcmp(what, "bigcount")) /* beyond the mailbox: staged messages */
            count = 1 << 20;
        else if (!strcmp(what, "dtype"))
            dt = CRUX_FLOAT;
        else
            op = CRUX_MAX;
    }
    int rc = crux_allreduce(CRUX_IN_PLACE, buf, count, dt, op, CRUX_COMM_WORLD);
    int e = expected_error(rc, CRUX_ERR_MISMATCH, CRUX_ERR_MISMATCH, "mismatched allreduce");
    crux_finalize();
    return e;
}

/* Order-dependent float values: a rounding difference anywhere shows in the bits. */
static float noisy(size_t i, int r)
{
    uint64_t h = (uint64_t)i * 0x9e3779b97f4a7c15ull ^ ((uint64_t)r + 1) * 0xc2b2ae3d27d4eb4full;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 32;
    float m = (float)(h & 0xffffff) / (float)0x1000000 - 0.5f; /* [-0.5, 0.5) */
    return m * (float)(1u << ((h >> 24) % 12));                 /* spread exponents */
}

/* x[i] = i*P + rank (exact in float up to 2^24), every op that keeps it exact. */
static void test_iP_plus_rank(crux_datatype_t dt, size_t count)
{
    static const crux_op_t ops[] = { CRUX_SUM, CRUX_MAX, CRUX_MIN };
    size_t P = (size_t)nranks;
    if (dt == CRUX_FLOAT && count > ((size_t)1 << 24) / (P * P))
        count = ((size_t)1 << 24) / (P * P); /* sums stay below 2^24: exact */
    for (int o = 0; o < 3; o++) {
        void *buf = xmalloc(count * 4), *want = xmalloc(count * 4);
        for (size_t i = 0; i < count; i++) {
            int64_t x = (int64_t)(i * P) + rank;
            int64_t w = ops[o] == CRUX_SUM ? (int64_t)(i * P * P + P * (P - 1) / 2)
                        : ops[o] == CRUX_MAX ? (int64_t)(i * P + P - 1)
                                             : (int64_t)(i * P);
            store(dt, buf, i, x);
            store(dt, want, i, w);
        }
        char what[96];
        snprintf(what, sizeof(what), "allreduce i*P+rank %s %s count=%zu", dtype_names[dt], op_names[ops[o]], count);
        CHECK_RC(crux_allreduce(CRUX_IN_PLACE, buf, count, dt, ops[o], CRUX_COMM_WORLD));
        if (memcmp(buf, want, count * 4))
            fail_at(what, buf, want, 4, count);
        check_identical(buf, count * 4, what);
        free(buf), free(want);
    }
}

/* Rounding depends on the reduction order: every rank must still hold the same
 * bits, the same on a repeated call, and close to the exact sum. */
static void test_noisy_floats(size_t count)
{
    float *x = xmalloc(count * 4), *a = xmalloc(count * 4), *b = xmalloc(count * 4);
    for (size_t i = 0; i < count; i++)
        x[i] = noisy(i, rank);
    CHECK_RC(crux_allreduce(x, a, count, CRUX_FLOAT, CRUX_SUM, CRUX_COMM_WORLD));
    CHECK_RC(crux_allreduce(x, b, count, CRUX_FLOAT, CRUX_SUM, CRUX_COMM_WORLD));
    char what[64];
    snprintf(what, sizeof(what), "noisy float sum count=%zu", count);
    check_identical(a, count * 4, what);
    if (memcmp(a, b, count * 4)) {
        printf("rank %d: FAIL %s: a repeated call gave different bits\n", rank, what);
        failures++;
    }
    for (size_t i = 0; i < count; i++) {
        double ref = 0, mag = 0;
        for (int r = 0; r < nranks; r++) {
            ref += noisy(i, r);
            mag += noisy(i, r) < 0 ? -noisy(i, r) : noisy(i, r);
        }
        double err = a[i] - ref;
        if ((err < 0 ? -err : err) > mag * 1e-6 * nranks) {
            printf("rank %d: FAIL %s: element %zu is %.9g, exact sum %.9g\n", rank, what, i, a[i], ref);
            failures++;
            break;
        }
    }
    free(x), free(a), free(b);
}

/* The node communicator, and a large allreduce on a communicator whose ranks are
 * not in world order (odd/even split with reversed keys). */
static void test_sub_comms(void)
{
    crux_comm_t node, sub;
    CHECK_RC(crux_comm_split_type_node(CRUX_COMM_WORLD, &node));
    int nsize, want = node_ranks ? node_ranks : nranks;
    CHECK_RC(crux_comm_size(node, &nsize));
    int64_t sum = rank, node_sum = 0;
    CHECK_RC(crux_allreduce(CRUX_IN_PLACE, &sum, 1, CRUX_INT64, CRUX_SUM, node));
    int64_t *all = xmalloc((size_t)nsize * 8);
    int64_t mine = rank;
    CHECK_RC(crux_allgather(&mine, 1, all, CRUX_INT64, node));
    for (int i = 0; i < nsize; i++)
        node_sum += all[i];
    if (nsize != want || sum != node_sum) {
        printf("rank %d: FAIL node comm: size %d (want %d), sum %lld (want %lld)\n", rank, nsize, want,
               (long long)sum, (long long)node_sum);
        failures++;
    }
    free(all);
    CHECK_RC(crux_comm_free(&node));
    CHECK_RC(crux_comm_split(CRUX_COMM_WORLD, rank % 2, nranks - rank, &sub));
    size_t count = 100003;
    int32_t *buf = xmalloc(count * 4);
    for (size_t i = 0; i < count; i++)
        buf[i] = (int32_t)(i + (size_t)rank);
    CHECK_RC(crux_allreduce(CRUX_IN_PLACE, buf, count, CRUX_INT32, CRUX_SUM, sub));
    int n = 0, rsum = 0;
    for (int r = rank % 2; r < nranks; r += 2)
        n++, rsum += r;
    for (size_t i = 0; i < count; i++)
        if (buf[i] != (int32_t)(i * (size_t)n + (size_t)rsum)) {
            printf("rank %d: FAIL allreduce on split comm: element %zu is %d\n", rank, i, buf[i]);
            failures++;
            break;
        }
    free(buf);
    CHECK_RC(crux_comm_free(&sub));
}

static int mode_allreduce(void)
{
    static const size_t counts[] = { 0, 1, 7, 1023, 100003 };
    static const crux_datatype_t dts[] = { CRUX_FLOAT, CRUX_INT32, CRUX_BFLOAT16, CRUX_FLOAT16 };
    test_iallreduce(); /* first: queued requests must survive the first one's setup */
    for (size_t c = 0; c < sizeof(counts) / sizeof(counts[0]); c++)
        for (size_t d = 0; d < sizeof(dts) / sizeof(dts[0]); d++)
            for (int op = CRUX_SUM; op <= CRUX_MIN; op++)
                for (int ip = 0; ip < 2; ip++)
                    test_allreduce(dts[d], op, counts[c], ip);
    test_iP_plus_rank(CRUX_INT32, 100003);
    test_iP_plus_rank(CRUX_FLOAT, 100003);
    test_iP_plus_rank(CRUX_FLOAT, 7);
    test_noisy_floats(7);
    test_noisy_floats(100003);
    test_sub_comms();
    return failures ? 1 : 0;
}

/* iallreduce on world and on an odd/even split, interleaved with a blocking call:
 * requests on two communicators (count 5, the mailbox path on one host). */
static void test_two_comm_requests(void)
{
    crux_comm_t sub;
    CHECK_RC(crux_comm_split(CRUX_COMM_WORLD, rank % 2, rank, &sub));
    int subn = 0, subsum = 0;
    for (int r = rank % 2; r < nranks; r += 2)
        subn++, subsum += r;
    for (int it = 0; it < 50; it++) {
        int32_t a[5], b[5], c[5], wa[5], wb[5], wc[5];
        for (int i = 0; i < 5; i++) {
            a[i] = rank + i + it;
            b[i] = 2 * rank + i;
            c[i] = rank * i;
            wa[i] = nranks * (nranks - 1) / 2 + nranks * (i + it);
            wb[i] = 2 * subsum + subn * i;
            wc[i] = i * nranks * (nranks - 1) / 2;
        }
        crux_request_t ra, rb;
        CHECK_RC(crux_iallreduce(CRUX_IN_PLACE, a, 5, CRUX_INT32, CRUX_SUM, CRUX_COMM_WORLD, &ra));
        CHECK_RC(crux_iallreduce(CRUX_IN_PLACE, b, 5, CRUX_INT32, CRUX_SUM, sub, &rb));
        CHECK_RC(crux_allreduce(CRUX_IN_PLACE, c, 5, CRUX_INT32, CRUX_SUM, CRUX_COMM_WORLD));
        CHECK_RC(crux_wait(&rb));
        CHECK_RC(crux_wait(&ra));
        if (memcmp(a, wa, sizeof a) || memcmp(b, wb, sizeof b) || memcmp(c, wc, sizeof c)) {
            printf("rank %d: FAIL requests on two comms, iteration %d\n", rank, it);
            failures++;
            break;
        }
    }
    CHECK_RC(crux_comm_free(&sub));
}

/* Many calls of a size that does not divide the mailbox data ring: messages wrap
 * around its end, and the result must stay exact on every call. */
static void test_ring_wrap(void)
{
    size_t count = 3001;
    int32_t *buf = xmalloc(count * 4);
    for (int it = 0; it < 64; it++) {
        for (size_t i = 0; i < count; i++)
            buf[i] = (int32_t)(i * (size_t)nranks) + rank + it;
        CHECK_RC(crux_allreduce(CRUX_IN_PLACE, buf, count, CRUX_INT32, CRUX_SUM, CRUX_COMM_WORLD));
        for (size_t i = 0; i < count; i++)
            if (buf[i] != (int32_t)(i * (size_t)nranks * (size_t)nranks) + nranks * (nranks - 1) / 2 + nranks * it) {
                printf("rank %d: FAIL ring wrap call %d element %zu is %d\n", rank, it, i, buf[i]);
                failures++;
                it = 64;
                break;
            }
    }
    free(buf);
}

/* Back-to-back large calls (two ranks: the staging pipeline), sizes varying and
 * odd, in place every other call, exact every time: a rank that finishes first
 * starts the next call while its peer still drains this one. */
static void test_large_stream_from(size_t first, size_t step, int calls)
{
    size_t maxc = first + (size_t)calls * step;
    int32_t *send = xmalloc(maxc * 4), *recv = xmalloc(maxc * 4);
    for (int it = 0; it < calls; it++) {
        size_t count = first + (size_t)it * step;
        int ip = it % 2;
        int32_t *out = ip ? send : recv;
        for (size_t i = 0; i < count; i++)
            send[i] = (int32_t)(i * (size_t)nranks) + rank + it;
        memset(recv, 0x5a, maxc * 4);
        CHECK_RC(crux_allreduce(ip ? CRUX_IN_PLACE : send, out, count, CRUX_INT32, CRUX_SUM, CRUX_COMM_WORLD));
        for (size_t i = 0; i < count; i++)
            if (out[i] != (int32_t)(i * (size_t)nranks * (size_t)nranks) + nranks * (nranks - 1) / 2 + nranks * it) {
                printf("rank %d: FAIL large stream call %d count %zu element %zu is %d\n", rank, it, count, i, out[i]);
                failures++;
                it = calls;
                break;
            }
        if (!ip && recv[count] != 0x5a5a5a5a) {
            printf("rank %d: FAIL large stream call %d wrote past the end of recvbuf\n", rank, it);
            failures++;
            break;
        }
    }
    free(send), free(recv);
}

static void test_large_stream(void) { test_large_stream_from(100003, 10007, 30); }

/* Two ranks, the staging pipeline (algo/shm_pipe.c) around its geometry: `edge` is
 * the byte size from which auto selects it. Sizes just below, at and above the
 * edge; halves of exactly 4 chunks (chunk = half / 4 rounded up to 64 bytes, at
 * least 16 KiB, at most a staging slot), one element fewer, one more (the second
 * half then has a fifth chunk of one element); back-to-back calls whose sizes
 * cross the edge and change the chunk every call, so fragments of different
 * geometry share the staging ring and it wraps at a different slot each call. */
static void test_pipe_edges(size_t edge)
{
    static const crux_datatype_t dts[] = { CRUX_FLOAT, CRUX_UINT8, CRUX_DOUBLE, CRUX_BFLOAT16 };
    for (size_t t = 0; t < sizeof(dts) / sizeof(dts[0]); t++) {
        size_t es = crux_datatype_size(dts[t]);
        for (int d = -1; d <= 1; d++)
            test_allreduce(dts[t], d ? CRUX_SUM : CRUX_MAX, edge / es - 1 + (size_t)(d + 1), d == 1);
    }
    static const size_t chunks[] = { 16384, 16384 + 64, 65536 + 192, 262144 };
    for (size_t c = 0; c < sizeof(chunks) / sizeof(chunks[0]); c++) {
        size_t even = 2 * 4 * chunks[c] / 4;
        for (int d = -1; d <= 1; d++) {
            test_allreduce(CRUX_FLOAT, CRUX_SUM, even - 1 + (size_t)(d + 1), d == 0);
            test_allreduce(CRUX_INT32, CRUX_MIN, even - 1 + (size_t)(d + 1), d != 0);
        }
    }
    test_large_stream_from(edge / 4 / 2 + 1, edge / 4 / 7 + 13, 24);
}

/* A pipelined crux_iallreduce driven only by crux_test: it resumes where the
 * staging ring stalled, call after call, and lands exact values. */
static void test_pipe_request(size_t count)
{
    int32_t *buf = xmalloc(count * 4);
    for (int it = 0; it < 3; it++) {
        for (size_t i = 0; i < count; i++)
            buf[i] = (int32_t)(i * 2) + rank + it;
        crux_request_t req;
        int done = 0;
        long polls = 0;
        CHECK_RC(crux_iallreduce(CRUX_IN_PLACE, buf, count, CRUX_INT32, CRUX_SUM, CRUX_COMM_WORLD, &req));
        while (!done) {
            CHECK_RC(crux_test(&req, &done));
            polls++;
        }
        for (size_t i = 0; i < count; i++)
            if (buf[i] != (int32_t)(i * 4) + 1 + 2 * it) {
                printf("rank %d: FAIL pipelined request call %d element %zu is %d (%ld polls)\n",
                       rank, it, i, buf[i], polls);
                failures++;
                it = 3;
                break;
            }
    }
    free(buf);
}

static int mode_pipe(const char *edge)
{
    if (!edge || nranks != 2) {
        fprintf(stderr, "pipe needs EDGE_BYTES and 2 ranks\n");
        return 1;
    }
    size_t bytes = strtoull(edge, NULL, 0);
    test_pipe_edges(bytes);
    test_pipe_request(bytes / 4 * 3 + 5);
    test_two_comm_requests();
    return failures ? 1 : 0;
}

static int mode_node(void)
{
    /* Around the 32-byte inline slot, 64-byte lines, and 16 and 64 KiB (the eager
     * limit by default and in the 64K runs) for 1-, 2-, 4- and 8-byte elements. */
    static const size_t counts[] = { 0, 1, 7, 8, 9, 17, 1023, 4095, 4096, 4097, 8192, 8193, 16384, 16385 };
    for (size_t c = 0; c < sizeof(counts) / sizeof(counts[0]); c++)
        for (int dt = CRUX_FLOAT; dt <= CRUX_BFLOAT16; dt++)
            for (int op = CRUX_SUM; op <= CRUX_MIN; op++)
                for (int ip = 0; ip < 2; ip++)
                    if (c < 4 || dt == CRUX_FLOAT || dt == CRUX_UINT8 || dt == CRUX_BFLOAT16)
                        test_allreduce(dt, op, counts[c], ip);
    test_noisy_floats(7);
    test_noisy_floats(1001);
    test_noisy_floats(4096);
    test_iP_plus_rank(CRUX_FLOAT, 4000);
    test_ring_wrap();
    test_large_stream();
    test_two_comm_requests();
    for (int i = 0; i < 20; i++)
        CHECK_RC(crux_barrier(CRUX_COMM_WORLD));
    return failures ? 1 : 0;
}

/* --hosts H0,H1,...: this rank's host name is entry CRUX_RANK; remember how many
 * ranks share it. */
static int set_fake_host(const char *list)
{
    const char *env = getenv("CRUX_RANK");
    int me = env ? atoi(env) : 0, n = 0;
    char mine[64] = "";
    char *copy = strdup(list);
    for (char *save = NULL, *h = strtok_r(copy, ",", &save); h; h = strtok_r(NULL, ",", &save), n++)
        if (n == me)
            snprintf(mine, sizeof(mine), "%s", h);
    if (!mine[0]) {
        fprintf(stderr, "--hosts %s has no entry for rank %d\n", list, me);
        free(copy);
        return -1;
    }
    free(copy);
    copy = strdup(list);
    for (char *save = NULL, *h = strtok_r(copy, ",", &save); h; h = strtok_r(NULL, ",", &save))
        node_ranks += !strcmp(h, mine);
    free(copy);
    return setenv("CRUX_HOSTNAME", mine, 1);
}

int main(int argc, char **argv)
{
    if (argc > 2 && !strcmp(argv[1], "--hosts")) {
        if (set_fake_host(argv[2]) != 0)
            return 2;
        argv[2] = argv[0];
        argv += 2;
        argc -= 2;
    }
    if (argc < 2) {
        fprintf(stderr, "usage: %s [--hosts H0,H1,...] coll [--quick] | allreduce | node | pipe EDGE_BYTES | "
                "kill|stall VICTIM ITER | mismatch count|bigcount|dtype|op\n", argv[0]);
        return 2;
    }
    CHECK_RC(crux_init(&argc, &argv));
    CHECK_RC(crux_comm_rank(CRUX_COMM_WORLD, &rank));
    CHECK_RC(crux_comm_size(CRUX_COMM_WORLD, &nranks));
    int rc;
    if (!strcmp(argv[1], "coll"))
        rc = mode_coll(argc > 2 && !strcmp(argv[2], "--quick"));
    else if (!strcmp(argv[1], "kill") && argc == 4)
        return mode_kill(atoi(argv[2]), atol(argv[3]), SIGKILL);
    else if (!strcmp(argv[1], "stall") && argc == 4)
        return mode_kill(atoi(argv[2]), atol(argv[3]), SIGSTOP);
    else if (!strcmp(argv[1], "node"))
        rc = mode_node();
    else if (!strcmp(argv[1], "pipe"))
        rc = mode_pipe(argc > 2 ? argv[2] : NULL);
    else if (!strcmp(argv[1], "allreduce"))
        rc = mode_allreduce();
    else if (!strcmp(argv[1], "mismatch") && argc == 3)
        return mode_mismatch(argv[2]);
    else {
        fprintf(stderr, "unknown mode %s\n", argv[1]);
        return 2;
    }
    CHECK_RC(crux_finalize());
    if (rc == 0)
        printf("rank %d: OK\n", rank);
    return rc;
}
