/* test_coll.c - every collective through crux-run: 1, 2, 3, 4, 5 and 8 ranks, shm
 * and tcp, every algorithm forced, every dtype and op, in place or not, counts 0, 1,
 * 7, 1023, 1 Mi + 3 and 64 MiB (rank_prog.c holds the exact checks). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "harness.h"

static void run_ranks(int n, const char *transport, const char *algo, const char *mode_flag)
{
    char nbuf[16], tp[64], al[64];
    snprintf(nbuf, sizeof(nbuf), "%d", n);
    snprintf(tp, sizeof(tp), "CRUX_TRANSPORT=%s", transport);
    snprintf(al, sizeof(al), "CRUX_ALGO=%s", algo);
    char *argv[] = { CRUX_RUN_PATH, "-n", nbuf, "--", CRUX_TEST_RANKPROG, "coll", (char *)mode_flag, NULL };
    char *env[] = { tp, al, "CRUX_TIMEOUT=120", NULL };
    struct proc_result res;
    cr_assert_eq(run_proc(argv, env, 600, &res), 0);
    if (res.status != 0)
        proc_result_dump(&res);
    cr_assert_eq(res.status, 0, "%d ranks, %s, %s: exit status %d", n, transport, algo, res.status);
    int oks = 0;
    for (const char *p = res.out; (p = strstr(p, ": OK")); p++)
        oks++;
    cr_assert_eq(oks, n, "%d ranks reported OK, want %d", oks, n);
    cr_assert_eq(shm_leftovers(), 0, "crux segments left in /dev/shm");
    proc_result_free(&res);
}

#define RANK_TESTS(TP, N)                                                                         \
    Test(coll_##TP, ranks##N##_auto) { run_ranks(N, #TP, "auto", NULL); }                         \
    Test(coll_##TP, ranks##N##_ring) { run_ranks(N, #TP, "ring", "--quick"); }                    \
    Test(coll_##TP, ranks##N##_recdbl) { run_ranks(N, #TP, "recdbl", "--quick"); }

RANK_TESTS(shm, 1)
RANK_TESTS(shm, 2)
RANK_TESTS(shm, 3)
RANK_TESTS(shm, 4)
RANK_TESTS(shm, 5)
RANK_TESTS(shm, 8)
RANK_TESTS(tcp, 2)
RANK_TESTS(tcp, 3)
RANK_TESTS(tcp, 4)
RANK_TESTS(tcp, 5)
RANK_TESTS(tcp, 8)
