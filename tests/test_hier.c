/* test_hier.c - every allreduce algorithm on multi-host layouts faked on this
 * machine: each rank gets its own CRUX_HOSTNAME (crux_test_rank --hosts), so ranks
 * of one fake host use shared memory and ranks of different ones real TCP over
 * loopback. Layouts 2x1, 2x2, 3x2, 4x1, uneven 2+1, and an interleaved uneven
 * 2+2+1 (a host's ranks not contiguous), and 8+2+2+2+2+2 for hier; hier, tree,
 * ring, recdbl forced and auto.
 * rank_prog.c's "allreduce" mode holds the exact checks: float, int32, bfloat16,
 * float16 x sum/prod/max/min x counts 0, 1, 7, 1023, 100003 x in place or not,
 * x[i] = i*P + rank, bit-identical order-dependent float sums, node and split
 * communicators. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

static void run_layout(const char *hosts, const char *algo)
{
    int n = 1;
    for (const char *p = hosts; *p; p++)
        n += *p == ',';
    char nbuf[16], al[64];
    snprintf(nbuf, sizeof(nbuf), "%d", n);
    snprintf(al, sizeof(al), "CRUX_ALGO=%s", algo);
    char *argv[] = { CRUX_RUN_PATH, "-n", nbuf, "--", CRUX_TEST_RANKPROG, "--hosts", (char *)hosts,
                     "allreduce", NULL };
    char *env[] = { al, "CRUX_TIMEOUT=60", NULL };
    struct proc_result res;
    cr_assert_eq(run_proc(argv, env, 300, &res), 0);
    if (res.status != 0)
        proc_result_dump(&res);
    cr_assert_eq(res.status, 0, "hosts %s, %s: exit status %d", hosts, algo, res.status);
    int oks = 0;
    for (const char *p = res.out; (p = strstr(p, ": OK")); p++)
        oks++;
    cr_assert_eq(oks, n, "%d ranks reported OK, want %d", oks, n);
    cr_assert_eq(shm_leftovers(), 0, "crux segments left in /dev/shm");
    proc_result_free(&res);
}

#define LAYOUT_TESTS(NAME, HOSTS)                                                                 \
    Test(hier_##NAME, hier) { run_layout(HOSTS, "hier"); }                                        \
    Test(hier_##NAME, tree) { run_layout(HOSTS, "tree"); }                                        \
    Test(hier_##NAME, ring) { run_layout(HOSTS, "ring"); }                                        \
    Test(hier_##NAME, recdbl) { run_layout(HOSTS, "recdbl"); }                                    \
    Test(hier_##NAME, auto) { run_layout(HOSTS, "auto"); }

LAYOUT_TESTS(2x1, "h0,h1")
LAYOUT_TESTS(2x2, "h0,h0,h1,h1")
LAYOUT_TESTS(3x2, "h0,h0,h1,h1,h2,h2")
LAYOUT_TESTS(4x1, "h0,h1,h2,h3")
LAYOUT_TESTS(2p1, "h0,h0,h1")

Test(hier_interleaved_2p2p1, hier) { run_layout("h0,h1,h0,h2,h1", "hier"); }
Test(hier_interleaved_2p2p1, tree) { run_layout("h0,h1,h0,h2,h1", "tree"); }

/* 8 ranks on one host, 2 on five others: the 2-rank hosts' ranks own 4 slices each,
 * so hier grows the descriptor array in a later phase of the first iallreduce while
 * further requests are already queued (they must not keep the old array). */
Test(hier_8p2p2p2p2p2, hier) { run_layout("h0,h0,h0,h0,h0,h0,h0,h0,h1,h1,h2,h2,h3,h3,h4,h4,h5,h5", "hier"); }
