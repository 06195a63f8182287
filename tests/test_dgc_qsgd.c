/* test_dgc_qsgd.c - DGC (codec topk: momentum correction, masking, clipping, density
 * warm-up, sparse allgather) and QSGD (allgather of quantised payloads) through
 * crux-run on 1-5 and 8 ranks, one chunk and many, shm and TCP. The rank program
 * (dgc_qsgd_rank_prog.c) simulates every rank and compares exactly. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "harness.h"

static void run_ranks(int n, const char *transport, const char *chunk_bytes, char *const args[])
{
    char nbuf[16], tp[64], cb[64];
    snprintf(nbuf, sizeof(nbuf), "%d", n);
    snprintf(tp, sizeof(tp), "CRUX_TRANSPORT=%s", transport);
    snprintf(cb, sizeof(cb), "CRUX_COMPRESS_CHUNK_BYTES=%s", chunk_bytes);
    char *argv[16] = {CRUX_RUN_PATH, "-n", nbuf, "--", CRUX_TEST_DGC_QSGD_RANKPROG};
    int a = 5;
    for (int i = 0; args[i] && a < 15; i++)
        argv[a++] = args[i];
    argv[a] = NULL;
    char *env[] = {tp, cb, "CRUX_TIMEOUT=60", NULL};
    struct proc_result res;
    cr_assert_eq(run_proc(argv, env, 120, &res), 0);
    if (res.status != 0)
        proc_result_dump(&res);
    cr_assert_eq(res.status, 0, "%d ranks, %s, %s %s: exit status %d", n, transport, args[0],
                 args[1] ? args[1] : "", res.status);
    int oks = 0;
    for (const char *p = res.out; (p = strstr(p, ": OK")); p++)
        oks++;
    cr_assert_eq(oks, n, "%d ranks reported OK, want %d", oks, n);
    cr_assert_eq(shm_leftovers(), 0, "crux segments left in /dev/shm");
    proc_result_free(&res);
}

#define RUN(n, tp, chunk, ...)                                                                    \
    do {                                                                                          \
        char *args_[] = {__VA_ARGS__, NULL};                                                      \
        run_ranks(n, tp, chunk, args_);                                                           \
    } while (0)

/* 5000 elements: one chunk (4M default) or 5 chunks of 1024 (the last 904). */
Test(dgc, momentum_1_to_4_ranks)
{
    for (int p = 1; p <= 5; p++)
        RUN(p, "shm", "4M", "dgc", "5000", "3", "momentum", "0.01", "0");
    RUN(8, "shm", "4096", "dgc", "5000", "2", "momentum", "0.01", "0");
}
Test(dgc, momentum_chunked_3_ranks) { RUN(3, "shm", "4096", "dgc", "5000", "3", "momentum", "0.02", "0"); }
Test(dgc, residual_and_none) {
    RUN(2, "shm", "4096", "dgc", "5000", "2", "residual", "0.01", "0");
    RUN(3, "shm", "4M", "dgc", "5000", "2", "none", "0.01", "0");
}
Test(dgc, clipping) { RUN(2, "shm", "4096", "dgc", "5000", "2", "momentum", "0.01", "50"); }
Test(dgc, tcp_3_ranks) { RUN(3, "tcp", "4096", "dgc", "5000", "2", "momentum", "0.01", "0"); }

Test(qsgd, exact_levels)
{
    for (int p = 1; p <= 3; p++)
        RUN(p, "shm", "4M", "qsgd-exact", "5000", "7", "none");
    RUN(3, "shm", "4096", "qsgd-exact", "5000", "1", "residual");
    RUN(2, "shm", "4096", "qsgd-exact", "3001", "100", "residual");
}
Test(qsgd, noisy_identical_on_all_ranks)
{
    RUN(3, "shm", "4096", "qsgd-noisy", "10000");
    RUN(4, "shm", "4M", "qsgd-noisy", "10000");
    RUN(8, "shm", "4096", "qsgd-noisy", "10000");
    RUN(5, "shm", "4096", "qsgd-exact", "5000", "7", "residual");
}
/* Ring with re-quantisation per hop: bit-exact against the simulated hops on 1-5
 * ranks, one chunk and many (n = 3001: the last chunk and blocks are partial; 5 ranks
 * on 1000 elements leave some blocks empty), and unbiased. */
Test(qsgd, ring_equals_simulation)
{
    for (int p = 1; p <= 5; p++)
        RUN(p, "shm", "4M", "qsgd-ring", "3001", "3");
    RUN(3, "shm", "4096", "qsgd-ring", "3001", "2");
    RUN(5, "shm", "4096", "qsgd-ring", "1000", "2");
    RUN(4, "tcp", "4096", "qsgd-ring", "5000", "2");
}
Test(qsgd, ring_unbiased)
{
    RUN(2, "shm", "4M", "qsgd-unbiased", "4096", "400");
    RUN(4, "shm", "4M", "qsgd-unbiased", "4096", "400");
}
Test(qsgd, tcp_3_ranks) { RUN(3, "tcp", "4096", "qsgd-exact", "5000", "7", "residual"); }

Test(compress_errors, dgc_qsgd_config) { RUN(2, "shm", "4M", "errors"); }
