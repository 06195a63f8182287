/* test_fail.c - failures become errors, never hangs or corrupted data: a rank
 * SIGKILLed mid-stream, mismatched collectives, bad arguments. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "crux.h"
#include "harness.h"

static void run_kill(int n, const char *transport, int victim)
{
    char nbuf[16], tp[64], vbuf[16];
    snprintf(nbuf, sizeof(nbuf), "%d", n);
    snprintf(tp, sizeof(tp), "CRUX_TRANSPORT=%s", transport);
    snprintf(vbuf, sizeof(vbuf), "%d", victim);
    char *argv[] = { CRUX_RUN_PATH, "-n", nbuf, "--grace", "60", "--", CRUX_TEST_RANKPROG, "kill",
                     vbuf, "200", NULL };
    char *env[] = { tp, "CRUX_TIMEOUT=20", NULL };
    struct proc_result res;
    cr_assert_eq(run_proc(argv, env, 120, &res), 0);
    proc_result_dump(&res);
    cr_assert(!res.timed_out, "the job hung");
    cr_assert_neq(res.status, 0, "crux-run must fail when a rank is killed");
    /* Every survivor got CRUX_ERR_PEER or CRUX_ERR_TIMEOUT (exit 3 prints this line). */
    int reports = 0;
    for (const char *p = res.out; (p = strstr(p, "allreduce after a peer died returned")); p++) {
        cr_assert(strstr(p, crux_error_string(CRUX_ERR_PEER)) == p + 37 ||
                      strstr(p, crux_error_string(CRUX_ERR_TIMEOUT)) == p + 37,
                  "unexpected error: %.80s", p);
        reports++;
    }
    cr_assert_eq(reports, n - 1, "%d of %d survivors reported the failure", reports, n - 1);
    char want[64];
    snprintf(want, sizeof(want), "rank %d", victim);
    cr_assert(strstr(res.err, want), "no log line names the dead rank");
    cr_assert(strstr(res.err, "SIGKILL") || strstr(res.err, "signal 9"), "crux-run does not say why");
    cr_assert_eq(shm_leftovers(), 0);
    proc_result_free(&res);
}

Test(fail, kill_shm_4ranks, .timeout = 180) { run_kill(4, "shm", 2); }
Test(fail, kill_tcp_3ranks, .timeout = 180) { run_kill(3, "tcp", 1); }
Test(fail, kill_shm_2ranks_rank0, .timeout = 180) { run_kill(2, "shm", 0); }

static void run_mismatch(const char *what, const char *transport)
{
    char tp[64];
    snprintf(tp, sizeof(tp), "CRUX_TRANSPORT=%s", transport);
    char *argv[] = { CRUX_RUN_PATH, "-n", "2", "--", CRUX_TEST_RANKPROG, "mismatch", (char *)what, NULL };
    char *env[] = { tp, "CRUX_TIMEOUT=20", NULL };
    struct proc_result res;
    cr_assert_eq(run_proc(argv, env, 120, &res), 0);
    proc_result_dump(&res);
    cr_assert_eq(res.status, 3, "want CRUX_ERR_MISMATCH (exit 3), got exit %d", res.status);
    int n = 0;
    for (const char *p = res.out; (p = strstr(p, crux_error_string(CRUX_ERR_MISMATCH))); p++)
        n++;
    cr_assert_eq(n, 2, "both ranks must report the mismatch");
    proc_result_free(&res);
}

Test(fail, mismatch_count_shm) { run_mismatch("count", "shm"); }
Test(fail, mismatch_dtype_shm) { run_mismatch("dtype", "shm"); }
Test(fail, mismatch_op_shm) { run_mismatch("op", "shm"); }
Test(fail, mismatch_count_tcp) { run_mismatch("count", "tcp"); }
Test(fail, mismatch_op_tcp) { run_mismatch("op", "tcp"); }

/* Bad arguments are rejected before anything is sent: a singleton job suffices. */
Test(fail, bad_arguments)
{
    float x[4] = { 1, 2, 3, 4 }, y[4];
    crux_request_t req;
    cr_assert_eq(crux_allreduce(x, y, 4, CRUX_FLOAT, CRUX_SUM, CRUX_COMM_WORLD), CRUX_ERR_NOT_INITIALIZED);
    cr_assert_eq(crux_barrier(NULL), CRUX_ERR_NOT_INITIALIZED);
    cr_assert_eq(crux_finalize(), CRUX_ERR_NOT_INITIALIZED);
    cr_assert_eq(crux_init(NULL, NULL), CRUX_SUCCESS);
    crux_comm_t w = CRUX_COMM_WORLD;
    cr_assert_eq(crux_allreduce(NULL, y, 4, CRUX_FLOAT, CRUX_SUM, w), CRUX_ERR_ARG);
    cr_assert_eq(crux_allreduce(x, NULL, 4, CRUX_FLOAT, CRUX_SUM, w), CRUX_ERR_ARG);
    cr_assert_eq(crux_allreduce(x, CRUX_IN_PLACE, 4, CRUX_FLOAT, CRUX_SUM, w), CRUX_ERR_ARG);
    cr_assert_eq(crux_allreduce(x, y, 4, (crux_datatype_t)99, CRUX_SUM, w), CRUX_ERR_ARG);
    cr_assert_eq(crux_allreduce(x, y, 4, CRUX_FLOAT, (crux_op_t)99, w), CRUX_ERR_ARG);
    cr_assert_eq(crux_allreduce(x, y, 4, CRUX_FLOAT, CRUX_SUM, NULL), CRUX_ERR_ARG);
    cr_assert_eq(crux_allreduce(NULL, NULL, 0, CRUX_FLOAT, CRUX_SUM, w), CRUX_SUCCESS);
    cr_assert_eq(crux_bcast(x, 4, CRUX_FLOAT, 1, w), CRUX_ERR_ARG);
    cr_assert_eq(crux_bcast(x, 4, CRUX_FLOAT, -1, w), CRUX_ERR_ARG);
    cr_assert_eq(crux_allgather(NULL, 4, y, CRUX_FLOAT, w), CRUX_ERR_ARG);
    cr_assert_eq(crux_reduce_scatter_block(x, NULL, 4, CRUX_FLOAT, CRUX_SUM, w), CRUX_ERR_ARG);
    cr_assert_eq(crux_iallreduce(x, y, 4, CRUX_FLOAT, CRUX_SUM, w, NULL), CRUX_ERR_ARG);
    cr_assert_eq(crux_wait(NULL), CRUX_ERR_ARG);
    cr_assert_eq(crux_comm_split(w, -5, 0, &w), CRUX_ERR_ARG);
    cr_assert_eq(crux_comm_free(&w), CRUX_ERR_ARG, "world cannot be freed");
    /* Nothing was sent above: a good call still works and is exact. */
    cr_assert_eq(crux_iallreduce(x, y, 4, CRUX_FLOAT, CRUX_SUM, w, &req), CRUX_SUCCESS);
    cr_assert_eq(crux_wait(&req), CRUX_SUCCESS);
    cr_assert(req == CRUX_REQUEST_NULL);
    cr_assert_eq(memcmp(x, y, sizeof(x)), 0);
    cr_assert_eq(crux_init(NULL, NULL), CRUX_ERR_ARG, "double init");
    cr_assert_eq(crux_finalize(), CRUX_SUCCESS);
    int flag = 1;
    cr_assert_eq(crux_initialized(&flag), CRUX_SUCCESS);
    cr_assert_eq(flag, 0);
}

Test(fail, bad_env_value)
{
    char *argv[] = { CRUX_RUN_PATH, "-n", "2", "--", CRUX_TEST_RANKPROG, "coll", "--quick", NULL };
    char *env[] = { "CRUX_ALGO=fastest", NULL };
    struct proc_result res;
    cr_assert_eq(run_proc(argv, env, 60, &res), 0);
    cr_assert_neq(res.status, 0);
    cr_assert(strstr(res.err, "CRUX_ALGO"), "the error must name the variable:\n%s", res.err);
    proc_result_free(&res);
}

Test(fail, config_differs_between_ranks)
{
    /* rank 1 only: CRUX_ALGO differs -> both fail at init naming the variable. */
    char *argv[] = { CRUX_RUN_PATH, "-n", "2", "--", "sh", "-c",
                     "[ \"$CRUX_RANK\" = 1 ] && export CRUX_ALGO=ring; exec \"$0\" coll --quick",
                     CRUX_TEST_RANKPROG, NULL };
    struct proc_result res;
    cr_assert_eq(run_proc(argv, NULL, 60, &res), 0);
    cr_assert_neq(res.status, 0);
    cr_assert(strstr(res.err, "CRUX_ALGO differs"), "%s", res.err);
    proc_result_free(&res);
}
