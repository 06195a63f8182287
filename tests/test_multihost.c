/* test_multihost.c - crux across "hosts" that are network namespaces on a bridge
 * (cluster-scripts/netns-hosts): every rank sees its own host name, ranks of one
 * host talk over shared memory and hosts over real TCP on 198.18.1.0/24.
 *
 * Layouts 2x1, 2x2, 3x2, 4x1 and the uneven 2+1, every algorithm of `algos`,
 * exact values and bit-identical results (rank_prog coll checks both); a rank
 * SIGKILLed or SIGSTOPped on one host -> the others name its rank and host within
 * CRUX_TIMEOUT and the job fails instead of hanging.
 *
 * Needs root and `ip netns`; skipped with the reason otherwise. Runs in the release
 * build only (the sanitizer build skips it: the namespaces add nothing there), or
 * wherever CRUX_TEST_MULTIHOST=1; CRUX_TEST_MULTIHOST=0 skips it. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

#define NETNS_HOSTS CRUX_SOURCE_DIR "/cluster-scripts/netns-hosts"

/* The algorithms every layout runs (CRUX_ALGO values). */
static const char *const algos[] = { "ring", "recdbl", "hier", "tree", "auto" };
#define NALGOS (sizeof(algos) / sizeof(algos[0]))

/* Ranks per host, as netns-hosts run --layout takes them. */
static const char *const layouts[] = { "1,1", "2,2", "2,2,2", "1,1,1,1", "2,1" };
#define NLAYOUTS (sizeof(layouts) / sizeof(layouts[0]))

static char prefix[16];
static int hosts_up;

/* Why this machine cannot run the test, or NULL. */
static const char *skip_reason(void)
{
    const char *force = getenv("CRUX_TEST_MULTIHOST");
    if (force && !strcmp(force, "0"))
        return "CRUX_TEST_MULTIHOST=0";
    if (CRUX_TEST_USER_CFLAGS[0] && !(force && !strcmp(force, "1")))
        return "runs once, in the non-sanitizer build (set CRUX_TEST_MULTIHOST=1 to force)";
    if (geteuid() != 0)
        return "needs root to create network namespaces";
    if (system("ip netns list >/dev/null 2>&1") != 0)
        return "`ip netns` is not available (iproute2 missing or no permission)";
    return NULL;
}


/* Once, before Criterion starts (its -q silences everything after): ctest's
 * SKIP_REGULAR_EXPRESSION turns this line into "Skipped". */
__attribute__((constructor)) static void announce_skip(void)
{
    const char *why = skip_reason();
    if (why)
        fprintf(stderr, "SKIPPED: multi-host tests: %s\n", why);
}

static int count_hosts(const char *layout)
{
    int n = 1;
    for (const char *p = layout; *p; p++)
        n += *p == ',';
    return n;
}

static int count_ranks(const char *layout)
{
    int n = 0;
    for (const char *p = layout; *p; p++)
        if (*p >= '0' && *p <= '9')
            n += *p - '0';
    return n;
}

static void hosts_down(void)
{
    if (!hosts_up)
        return;
    char *argv[] = { NETNS_HOSTS, "down", "--prefix", prefix, NULL };
    struct proc_result res;
    if (run_proc(argv, NULL, 60, &res) == 0) {
        if (res.status != 0)
            proc_result_dump(&res);
        proc_result_free(&res);
    }
    hosts_up = 0;
}

/* Bring up n hosts under a prefix of our own (the pid: two runs never share one). */
static void hosts_start(int n)
{
    const char *why = skip_reason();
    if (why)
        cr_skip_test("multi-host test skipped: %s", why);
    /* hosts of a test run whose process is gone (killed by a timeout before its
     * .fini could run) go first */
    if (system("for ns in $(ip netns list | awk '{print $1}' | grep -E '^cxm[0-9]+-sw$'); do "
               "p=${ns%-sw}; kill -0 ${p#cxm} 2>/dev/null || " NETNS_HOSTS " down --prefix $p; done") != 0)
        cr_log_warn("could not reap stale namespace hosts");
    snprintf(prefix, sizeof(prefix), "cxm%d", (int)getpid());
    char nbuf[8];
    snprintf(nbuf, sizeof(nbuf), "%d", n);
    char *argv[] = { NETNS_HOSTS, "up", "-n", nbuf, "--prefix", prefix, NULL };
    struct proc_result res;
    cr_assert_eq(run_proc(argv, NULL, 60, &res), 0);
    hosts_up = 1; /* down is idempotent: clean up even after a partial up */
    if (res.status != 0)
        proc_result_dump(&res);
    cr_assert_eq(res.status, 0, "netns-hosts up -n %d failed", n);
    proc_result_free(&res);
}

static long long rx_bytes(int host)
{
    char cmd[160];
    snprintf(cmd, sizeof(cmd), "ip netns exec %s-h%d cat /sys/class/net/eth0/statistics/rx_bytes", prefix, host);
    FILE *f = popen(cmd, "r");
    long long v = -1;
    if (f) {
        if (fscanf(f, "%lld", &v) != 1)
            v = -1;
        pclose(f);
    }
    return v;
}

/* netns-hosts run --layout L -- rank_prog ARGS..., with extra env. */
static void run_layout(const char *layout, char *const env[], const char *grace, char *const prog_args[],
                       double timeout_s, struct proc_result *res)
{
    char *argv[16] = { NETNS_HOSTS, "run", "--prefix", prefix, "--layout", (char *)layout,
                       "--grace", (char *)grace, "--", CRUX_TEST_RANKPROG };
    int n = 10;
    for (int i = 0; prog_args[i] && n < 15; i++)
        argv[n++] = prog_args[i];
    argv[n] = NULL;
    cr_assert_eq(run_proc(argv, env, timeout_s, res), 0);
}

/* Indexes, not pointers: Criterion copies parameters into the test's process. */
struct layout_algo {
    size_t layout, algo;
};

ParameterizedTestParameters(multihost, coll)
{
    static struct layout_algo params[NLAYOUTS * NALGOS];
    for (size_t l = 0; l < NLAYOUTS; l++)
        for (size_t a = 0; a < NALGOS; a++)
            params[l * NALGOS + a] = (struct layout_algo){ l, a };
    return cr_make_param_array(struct layout_algo, params, NLAYOUTS * NALGOS);
}

ParameterizedTest(struct layout_algo *param, multihost, coll, .fini = hosts_down, .timeout = 120)
{
    const struct { const char *layout, *algo; } t = { layouts[param->layout], algos[param->algo] }, *p = &t;
    int nhosts = count_hosts(p->layout), nranks = count_ranks(p->layout);
    hosts_start(nhosts);
    long long rx0 = rx_bytes(2);
    char algo[64];
    snprintf(algo, sizeof(algo), "CRUX_ALGO=%s", p->algo);
    char *env[] = { algo, "CRUX_TIMEOUT=60", NULL };
    char *args[] = { "coll", "--quick", NULL };
    struct proc_result res;
    run_layout(p->layout, env, "5", args, 100, &res);
    if (res.status != 0)
        proc_result_dump(&res);
    cr_assert(!res.timed_out, "layout %s algo %s hung", p->layout, p->algo);
    cr_assert_eq(res.status, 0, "layout %s algo %s: exit status %d", p->layout, p->algo, res.status);
    for (int r = 0; r < nranks; r++) {
        char want[32];
        snprintf(want, sizeof(want), "rank %d: OK\n", r);
        cr_assert(strstr(res.out, want), "layout %s algo %s: no '%.*s'", p->layout, p->algo,
                  (int)strlen(want) - 1, want);
    }
    cr_assert_null(strstr(res.out, "FAIL"), "layout %s algo %s reported a failure", p->layout, p->algo);
    /* The 1 Mi-element vectors crossed the veth link: the bytes went over TCP. */
    long long rx1 = rx_bytes(2);
    cr_assert(rx0 >= 0 && rx1 - rx0 > (1 << 20), "host h2 received %lld bytes, want > 1 MiB", rx1 - rx0);
    proc_result_free(&res);
    cr_assert_eq(shm_leftovers(), 0, "crux segments left in /dev/shm");
}

/* A rank on one host dies (SIGKILL) or hangs (SIGSTOP) mid-stream: every survivor
 * returns CRUX_ERR_PEER or CRUX_ERR_TIMEOUT, a log line names the rank and its host. */
static void run_failure(const char *layout, const char *mode, int victim, const char *victim_host)
{
    int nhosts = count_hosts(layout), nranks = count_ranks(layout);
    hosts_start(nhosts);
    char vbuf[16];
    snprintf(vbuf, sizeof(vbuf), "%d", victim);
    char *env[] = { "CRUX_TIMEOUT=5", NULL };
    char *args[] = { (char *)mode, vbuf, "100", NULL };
    struct proc_result res;
    run_layout(layout, env, "3", args, 60, &res);
    proc_result_dump(&res);
    cr_assert(!res.timed_out, "the job hung");
    cr_assert_neq(res.status, 0, "the job must fail when rank %d is %s", victim,
                  !strcmp(mode, "kill") ? "killed" : "stopped");
    int reports = 0;
    for (const char *p = res.out; (p = strstr(p, "allreduce after a peer died returned ")); p++) {
        const char *why = p + strlen("allreduce after a peer died returned ");
        cr_assert(!strncmp(why, "a peer failed", 13) || !strncmp(why, "timed out", 9),
                  "unexpected error: %.60s", why);
        reports++;
    }
    cr_assert_eq(reports, nranks - 1, "%d of %d survivors reported the failure", reports, nranks - 1);
    char want[64];
    snprintf(want, sizeof(want), "rank %d (host %s", victim, victim_host);
    cr_assert(strstr(res.err, want), "no crux log line names '%s'", want);
    snprintf(want, sizeof(want), "rank %d on host %s ended with signal 9", victim, victim_host);
    cr_assert(strstr(res.err, want), "the launcher does not say '%s'", want);
    proc_result_free(&res);
    cr_assert_eq(shm_leftovers(), 0, "crux segments left in /dev/shm");
}

Test(multihost, kill_rank_on_second_host, .fini = hosts_down, .timeout = 90)
{
    run_failure("2,2", "kill", 3, "h2");
}

Test(multihost, kill_root_rank, .fini = hosts_down, .timeout = 90)
{
    run_failure("1,1,1", "kill", 0, "h1");
}

Test(multihost, stalled_rank_times_out, .fini = hosts_down, .timeout = 90)
{
    run_failure("1,2", "stall", 2, "h2");
}
