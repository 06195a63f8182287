/* test_compress.c - compressed allreduce through crux-run: CLT-k, gTop-k and sketch
 * on 1, 2, 3 and 4 ranks (shm; 3 ranks also over TCP), one chunk and many chunks,
 * residual (beta = 1) and low-pass (beta = 0.5) memories over 3 steps. The rank
 * program (compress_rank_prog.c) simulates every rank with scalar code and compares
 * outputs and memories exactly; here we only launch it and count the OKs. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "crux.h"
#include "harness.h"

static void run_ranks(int n, const char *transport, const char *chunk_bytes, char *const args[])
{
    char nbuf[16], tp[64], cb[64];
    snprintf(nbuf, sizeof(nbuf), "%d", n);
    snprintf(tp, sizeof(tp), "CRUX_TRANSPORT=%s", transport);
    snprintf(cb, sizeof(cb), "CRUX_COMPRESS_CHUNK_BYTES=%s", chunk_bytes);
    char *argv[16] = { CRUX_RUN_PATH, "-n", nbuf, "--", CRUX_TEST_COMPRESS_RANKPROG };
    int a = 5;
    for (int i = 0; args[i] && a < 15; i++)
        argv[a++] = args[i];
    argv[a] = NULL;
    char *env[] = { tp, cb, "CRUX_TIMEOUT=60", NULL };
    struct proc_result res;
    cr_assert_eq(run_proc(argv, env, 120, &res), 0);
    if (res.status != 0)
        proc_result_dump(&res);
    int status = res.status, oks = 0;
    for (const char *p = res.out; (p = strstr(p, ": OK")); p++)
        oks++;
    proc_result_free(&res);
    cr_assert_eq(status, 0, "%d ranks, %s, %s %s: exit status %d", n, transport, args[0],
                 args[1] ? args[1] : "", status);
    cr_assert_eq(oks, n, "%d ranks reported OK, want %d", oks, n);
    cr_assert_eq(shm_leftovers(), 0, "crux segments left in /dev/shm");
}

/* n = 5000: one chunk (4M default), or 5 chunks of 1024 (the last 904). */
#define CODEC_TESTS(CODEC, N)                                                                     \
    Test(compress_##CODEC, ranks##N##_residual)                                                   \
    {                                                                                             \
        char *args[] = { "check", #CODEC, "5000", "6", "1", "0.01", NULL };                       \
        run_ranks(N, "shm", "4M", args);                                                          \
    }                                                                                             \
    Test(compress_##CODEC, ranks##N##_lowpass_chunked)                                            \
    {                                                                                             \
        char *args[] = { "check", #CODEC, "5000", "3", "0.5", "0.01", NULL };                     \
        run_ranks(N, "shm", "4096", args);                                                        \
    }

CODEC_TESTS(cltk, 1)
CODEC_TESTS(cltk, 2)
CODEC_TESTS(cltk, 3)
CODEC_TESTS(cltk, 4)
CODEC_TESTS(gtopk, 1)
CODEC_TESTS(gtopk, 2)
CODEC_TESTS(gtopk, 3)
CODEC_TESTS(gtopk, 4)
CODEC_TESTS(sketch, 1)
CODEC_TESTS(sketch, 2)
CODEC_TESTS(sketch, 3)
CODEC_TESTS(sketch, 4)

/* 5 and 8 ranks (recursive doubling folds, deeper gTop-k trees) on n = 50000 at density
 * 0.001: one chunk, or 4 chunks of 16384 (the last 848). */
#define MANY_RANKS_TESTS(CODEC, N)                                                                \
    Test(compress_##CODEC, ranks##N##_residual)                                                   \
    {                                                                                             \
        char *args[] = { "check", #CODEC, "50000", "3", "1", "0.001", NULL };                     \
        run_ranks(N, "shm", "4M", args);                                                          \
    }                                                                                             \
    Test(compress_##CODEC, ranks##N##_lowpass_chunked)                                            \
    {                                                                                             \
        char *args[] = { "check", #CODEC, "50000", "3", "0.5", "0.001", NULL };                   \
        run_ranks(N, "shm", "65536", args);                                                       \
    }
MANY_RANKS_TESTS(cltk, 5)
MANY_RANKS_TESTS(cltk, 8)
MANY_RANKS_TESTS(gtopk, 5)
MANY_RANKS_TESTS(gtopk, 8)

/* The sketch on 5 and 8 ranks, same sizes. Its planted inputs (grad_planted) put k heavy
 * entries of at least 10^4 * P(P+1)/2 over a background of |sum| <= 3P per step, so the
 * exact top-k is unambiguous; recovery then needs every heavy entry among the 2k
 * candidates of largest |estimate|. With the default 8 columns per kept entry an element
 * shares a column with one of the k heavies in a row with probability ~1/8, so ~1% of
 * the n elements get a heavy-sized median estimate (3 of 5 rows): 500 false candidates
 * at n/k = 1000 crowd out the heavies. With c = 64 k columns that is n * C(5,3) / 64^3
 * ~ 2 expected false candidates against a slack of k (50, or 16 per chunk), and a heavy
 * loses its median to other heavies with probability C(5,3) / 64^3 ~ 4e-5: recovery
 * holds by a wide margin (hashes are seeded, so the run is deterministic), and the
 * table, 5 x 64k floats, stays under the vector's size. */
Test(compress_sketch, ranks5_residual) { char *a[] = { "check", "sketch", "50000", "3", "1", "0.001", "3200", NULL }; run_ranks(5, "shm", "4M", a); }
Test(compress_sketch, ranks8_residual) { char *a[] = { "check", "sketch", "50000", "3", "1", "0.001", "3200", NULL }; run_ranks(8, "shm", "4M", a); }
Test(compress_sketch, ranks5_lowpass_chunked) { char *a[] = { "check", "sketch", "50000", "3", "0.5", "0.001", "1024", NULL }; run_ranks(5, "shm", "65536", a); }
Test(compress_sketch, ranks8_lowpass_chunked) { char *a[] = { "check", "sketch", "50000", "3", "0.5", "0.001", "1024", NULL }; run_ranks(8, "shm", "65536", a); }

#define TCP_TEST(CODEC)                                                                           \
    Test(compress_tcp, CODEC##_ranks3)                                                            \
    {                                                                                             \
        char *args[] = { "check", #CODEC, "5000", "6", "1", "0.01", NULL };                       \
        run_ranks(3, "tcp", "4096", args);                                                        \
    }
TCP_TEST(cltk)
TCP_TEST(gtopk)
TCP_TEST(sketch)

/* Counts 1 and 7, density 1 (everything kept) and 0.3, on 3 ranks. */
#define TINY_TEST(CODEC)                                                                          \
    Test(compress_tiny, CODEC)                                                                    \
    {                                                                                             \
        char *a1[] = { "check", #CODEC, "1", "3", "1", "1", NULL };                               \
        char *a2[] = { "check", #CODEC, "7", "3", "1", "1", NULL };                               \
        char *a3[] = { "check", #CODEC, "7", "3", "0.5", "0.3", NULL };                           \
        run_ranks(3, "shm", "4M", a1);                                                            \
        run_ranks(3, "shm", "4M", a2);                                                            \
        run_ranks(3, "shm", "4M", a3);                                                            \
    }
TINY_TEST(cltk)
TINY_TEST(gtopk)
TINY_TEST(sketch)

/* Split communicators (even/odd world ranks of 5: sizes 3 and 2) at the same time. */
#define SPLIT_TEST(CODEC)                                                                         \
    Test(compress_split, CODEC)                                                                   \
    {                                                                                             \
        char *args[] = { "split", #CODEC, NULL };                                                 \
        run_ranks(5, "shm", "4096", args);                                                        \
    }
SPLIT_TEST(cltk)
SPLIT_TEST(gtopk)
SPLIT_TEST(sketch)

#define CHUNK_TEST(CODEC)                                                                         \
    Test(compress_chunks, CODEC)                                                                  \
    {                                                                                             \
        char *args[] = { "chunks", #CODEC, NULL };                                                \
        run_ranks(3, "shm", "4M", args);                                                          \
    }
CHUNK_TEST(cltk)
CHUNK_TEST(gtopk)
CHUNK_TEST(sketch)

Test(compress_errors, bad_config)
{
    char *args[] = { "badcfg", NULL };
    run_ranks(2, "shm", "4M", args);
}

Test(compress_errors, mismatched_count)
{
    char *args[] = { "mismatch", "count", NULL };
    run_ranks(3, "shm", "4M", args);
}

Test(compress_errors, mismatched_config)
{
    char *args[] = { "mismatch", "config", NULL };
    run_ranks(2, "shm", "4M", args);
}

/* A rank dies between calls: every survivor returns CRUX_ERR_PEER or _TIMEOUT (the
 * rank program exits 3 after printing it), nobody hangs. */
static void run_kill(int n, const char *transport, const char *codec, int victim)
{
    char nbuf[16], tp[64], vbuf[16];
    snprintf(nbuf, sizeof(nbuf), "%d", n);
    snprintf(tp, sizeof(tp), "CRUX_TRANSPORT=%s", transport);
    snprintf(vbuf, sizeof(vbuf), "%d", victim);
    char *argv[] = { CRUX_RUN_PATH, "-n", nbuf, "--grace", "60", "--", CRUX_TEST_COMPRESS_RANKPROG,
                     "kill", (char *)codec, vbuf, NULL };
    char *env[] = { tp, "CRUX_TIMEOUT=20", "CRUX_COMPRESS_CHUNK_BYTES=64K", NULL };
    struct proc_result res;
    cr_assert_eq(run_proc(argv, env, 120, &res), 0);
    int timed_out = res.timed_out, status = res.status, reports = 0, bad = 0;
    for (const char *p = res.out; (p = strstr(p, "after a peer died returned ")); p++) {
        const char *e = p + strlen("after a peer died returned ");
        if (strncmp(e, crux_error_string(CRUX_ERR_PEER), strlen(crux_error_string(CRUX_ERR_PEER))) &&
            strncmp(e, crux_error_string(CRUX_ERR_TIMEOUT), strlen(crux_error_string(CRUX_ERR_TIMEOUT))))
            bad++;
        reports++;
    }
    if (timed_out || reports != n - 1 || bad)
        proc_result_dump(&res);
    proc_result_free(&res);
    cr_assert(!timed_out, "the job hung");
    cr_assert_neq(status, 0, "crux-run must fail when a rank is killed");
    cr_assert_eq(bad, 0, "a survivor returned another error");
    cr_assert_eq(reports, n - 1, "%d of %d survivors reported the failure", reports, n - 1);
}

Test(compress_fail, kill_cltk_shm_3ranks, .timeout = 180) { run_kill(3, "shm", "cltk", 1); }
Test(compress_fail, kill_gtopk_tcp_3ranks, .timeout = 180) { run_kill(3, "tcp", "gtopk", 2); }
Test(compress_fail, kill_sketch_shm_2ranks, .timeout = 180) { run_kill(2, "shm", "sketch", 0); }
