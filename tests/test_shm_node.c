/* test_shm_node.c - the node-local mailbox allreduce (algo/shm_node.c) through
 * crux-run: exact values for every dtype/op around its size edges, in place,
 * 1..5 and 8 ranks (8 oversubscribe the cores: spin-then-block), its fallback to
 * queued receives (CRUX_SPIN_US=0), requests on two communicators, mismatches and
 * a killed peer (rank_prog.c holds the checks). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "crux.h"
#include "harness.h"

static void run_mode2(int n, const char *mode, const char *mode_arg, char *extra_env, char *env2)
{
    char nbuf[16];
    snprintf(nbuf, sizeof(nbuf), "%d", n);
    char *argv[] = { CRUX_RUN_PATH, "-n", nbuf, "--", CRUX_TEST_RANKPROG, (char *)mode,
                     (char *)mode_arg, NULL };
    char *env[] = { "CRUX_TRANSPORT=shm", "CRUX_TIMEOUT=60", extra_env, extra_env ? env2 : NULL, NULL };
    struct proc_result res;
    cr_assert_eq(run_proc(argv, env, 300, &res), 0);
    if (res.status != 0)
        proc_result_dump(&res);
    cr_assert_eq(res.status, 0, "%d ranks, %s %s: exit status %d", n, mode,
                 extra_env ? extra_env : "", res.status);
    int oks = 0;
    for (const char *p = res.out; (p = strstr(p, ": OK")); p++)
        oks++;
    cr_assert_eq(oks, n, "%d ranks reported OK, want %d", oks, n);
    cr_assert_eq(shm_leftovers(), 0, "crux segments left in /dev/shm");
    proc_result_free(&res);
}

static void run_mode(int n, const char *mode, const char *mode_arg, char *extra_env)
{
    run_mode2(n, mode, mode_arg, extra_env, NULL);
}

/* auto picks the node path for 2 ranks; more ranks than this machine's 2 cores keep
 * the generic schedules under auto, so those runs force it (CRUX_ALGO=shm). */
Test(shm_node, edges_1) { run_mode(1, "node", NULL, NULL); }
Test(shm_node, edges_2) { run_mode(2, "node", NULL, NULL); }
/* Forced: 2 ranks take the staging pipeline from 16 KiB up (auto: from 8 MiB). */
Test(shm_node, edges_2_pipeline) { run_mode(2, "node", NULL, "CRUX_ALGO=shm"); }
Test(shm_node, coll_2_pipeline) { run_mode(2, "coll", NULL, "CRUX_ALGO=shm"); }
Test(shm_node, edges_3) { run_mode(3, "node", NULL, "CRUX_ALGO=shm"); }
Test(shm_node, edges_4) { run_mode(4, "node", NULL, "CRUX_ALGO=shm"); }
Test(shm_node, edges_5) { run_mode(5, "node", NULL, "CRUX_ALGO=shm"); }
Test(shm_node, edges_8, .timeout = 600) { run_mode(8, "node", NULL, "CRUX_ALGO=shm"); }
Test(shm_node, edges_4_auto) { run_mode(4, "node", NULL, NULL); }
/* No spin budget: every receive not already there goes through the queued path. */
Test(shm_node, fallback_2) { run_mode(2, "node", NULL, "CRUX_SPIN_US=0"); }
Test(shm_node, fallback_3) { run_mode2(3, "node", NULL, "CRUX_SPIN_US=0", "CRUX_ALGO=shm"); }
/* Forced: the mailbox path up to the eager limit for any rank count, ring above. */
Test(shm_node, forced_coll_3) { run_mode(3, "coll", "--quick", "CRUX_ALGO=shm"); }
Test(shm_node, forced_allreduce_5) { run_mode(5, "allreduce", NULL, "CRUX_ALGO=shm"); }
/* A bigger mailbox: 64 KiB messages take the node path too (auto and forced). */
Test(shm_node, eager_64k_2) { run_mode(2, "node", NULL, "CRUX_SHM_EAGER_BYTES=64K"); }
Test(shm_node, eager_64k_2_forced) { run_mode2(2, "node", NULL, "CRUX_SHM_EAGER_BYTES=64K", "CRUX_ALGO=shm"); }

/* Two ranks around the pipeline's edges (rank_prog.c test_pipe_edges). PIPE_EDGE is
 * algo/select.c's SELECT_SHM_PIPE_MIN_BYTES: auto runs the ring below it and the
 * pipeline from it. Forced (CRUX_ALGO=shm) every size past the mailbox takes the
 * pipeline, so the small chunk geometries run too: with 256 KiB staging slots,
 * with 64 KiB slots (chunks capped below a quarter half), and without spinning
 * (every wait sleeps). */
#define PIPE_EDGE "8388608"
Test(shm_node, pipe_edges_2) { run_mode(2, "pipe", PIPE_EDGE, NULL); }
Test(shm_node, pipe_edges_2_forced) { run_mode(2, "pipe", PIPE_EDGE, "CRUX_ALGO=shm"); }
Test(shm_node, pipe_edges_2_chunk_64k) { run_mode2(2, "pipe", PIPE_EDGE, "CRUX_ALGO=shm", "CRUX_CHUNK_BYTES=64K"); }
Test(shm_node, pipe_edges_2_sleep) { run_mode2(2, "pipe", PIPE_EDGE, "CRUX_ALGO=shm", "CRUX_SPIN_US=0"); }
/* Non-temporal landing (off by default) at every size: the pipeline's fused and
 * allgather copies, and the plain receives of the ring over shm (3 ranks). */
Test(shm_node, pipe_edges_2_nt) { run_mode2(2, "pipe", PIPE_EDGE, "CRUX_ALGO=shm", "CRUX_SHM_NT_BYTES=64"); }
Test(shm_node, ring_3_nt) { run_mode2(3, "allreduce", NULL, "CRUX_ALGO=ring", "CRUX_SHM_NT_BYTES=64"); }

/* Ranks that disagree on count/dtype/op all get CRUX_ERR_MISMATCH (exit 3), never
 * data: rank 0 differs, and every rank's first receive involves rank 0. */
static void run_mismatch(int n, const char *what)
{
    char nbuf[16];
    snprintf(nbuf, sizeof(nbuf), "%d", n);
    char *argv[] = { CRUX_RUN_PATH, "-n", nbuf, "--", CRUX_TEST_RANKPROG, "mismatch", (char *)what, NULL };
    char *env[] = { "CRUX_TRANSPORT=shm", "CRUX_TIMEOUT=20", "CRUX_ALGO=shm", NULL };
    struct proc_result res;
    cr_assert_eq(run_proc(argv, env, 120, &res), 0);
    proc_result_dump(&res);
    cr_assert_eq(res.status, 3, "want CRUX_ERR_MISMATCH (exit 3), got exit %d", res.status);
    int k = 0;
    for (const char *p = res.out; (p = strstr(p, crux_error_string(CRUX_ERR_MISMATCH))); p++)
        k++;
    cr_assert_eq(k, n, "%d of %d ranks reported the mismatch", k, n);
    cr_assert(strstr(res.err, "header mismatch from peer rank"), "no log line names the peer");
    cr_assert_eq(shm_leftovers(), 0);
    proc_result_free(&res);
}

/* Two ranks: the exchange in one call (node_pair); bigcount: rank 0 sends 4 MiB
 * through the staging pipeline, whose header rank 1's small call must reject. */
Test(shm_node, mismatch_count_2) { run_mismatch(2, "count"); }
Test(shm_node, mismatch_op_2) { run_mismatch(2, "op"); }
Test(shm_node, mismatch_bigcount_2) { run_mismatch(2, "bigcount"); }
Test(shm_node, mismatch_count_3) { run_mismatch(3, "count"); }
Test(shm_node, mismatch_dtype_3) { run_mismatch(3, "dtype"); }
Test(shm_node, mismatch_op_4) { run_mismatch(4, "op"); }

/* A SIGKILLed rank: every survivor's call fails within CRUX_TIMEOUT naming it. */
static void run_kill(int n, int victim, const char *iter, char *extra_env)
{
    char nbuf[16], vbuf[16];
    snprintf(nbuf, sizeof(nbuf), "%d", n);
    snprintf(vbuf, sizeof(vbuf), "%d", victim);
    char *argv[] = { CRUX_RUN_PATH, "-n", nbuf, "--grace", "60", "--", CRUX_TEST_RANKPROG, "kill",
                     vbuf, (char *)iter, NULL };
    char *env[] = { "CRUX_TRANSPORT=shm", "CRUX_TIMEOUT=20", extra_env, NULL };
    struct proc_result res;
    cr_assert_eq(run_proc(argv, env, 120, &res), 0);
    proc_result_dump(&res);
    cr_assert(!res.timed_out, "the job hung");
    cr_assert_neq(res.status, 0, "crux-run must fail when a rank is killed");
    int reports = 0;
    for (const char *p = res.out; (p = strstr(p, "allreduce after a peer died returned")); p++) {
        cr_assert(strstr(p, crux_error_string(CRUX_ERR_PEER)) == p + 37 ||
                      strstr(p, crux_error_string(CRUX_ERR_TIMEOUT)) == p + 37,
                  "unexpected error: %.80s", p);
        reports++;
    }
    cr_assert_eq(reports, n - 1, "%d of %d survivors reported the failure", reports, n - 1);
    char want[64];
    snprintf(want, sizeof(want), "peer rank %d", victim);
    cr_assert(strstr(res.err, want), "no log line names the dead rank");
    cr_assert_eq(shm_leftovers(), 0);
    proc_result_free(&res);
}

/* Iteration 300 is even: the victim dies before a 16-float (mailbox) call; 301
 * before a 64 Ki-float one (2 ranks forced: the staging pipeline). */
Test(shm_node, kill_3ranks, .timeout = 180) { run_kill(3, 1, "300", "CRUX_ALGO=shm"); }
Test(shm_node, kill_5ranks_oversubscribed, .timeout = 180) { run_kill(5, 4, "300", "CRUX_ALGO=shm"); }
Test(shm_node, kill_2ranks, .timeout = 180) { run_kill(2, 0, "300", NULL); }
Test(shm_node, kill_2ranks_pipeline, .timeout = 180) { run_kill(2, 1, "301", "CRUX_ALGO=shm"); }
