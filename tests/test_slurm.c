/* test_slurm.c - crux under a real Slurm without MPI or a launcher: a 2-node lab
 * (cluster-scripts/slurm-lab: slurmctld + munged here, one slurmd per namespace
 * node), jobs submitted with sbatch, ranks started by srun:
 *   - cluster-scripts/allreduce-bench.sbatch as a user would submit it;
 *   - the exact-value test program as a 2x2 step, in the batch script itself (where
 *     Slurm's task variables describe the job, so crux must run as a singleton), and
 *     as four concurrent steps on the same nodes, two on Slurm's reserved ports and
 *     two on the job/step-hash port;
 *   - a rank SIGKILLed on node2: the job fails and the others name rank and host;
 *   - mpirun inside a job (when Open MPI is installed).
 * test_slurm_identity.c holds the matching unit tests of lib/identity.c.
 * Every test brings its own lab up under a private prefix and subnet and takes it
 * down again, also on failure (CRUX_TEST_KEEP_LOGS=1 keeps its logs). Needs root,
 * `ip netns` and Slurm + munge (scripts/deps.sh installs them); skipped with the
 * reason otherwise. Runs in the release build only unless CRUX_TEST_SLURM=1;
 * CRUX_TEST_SLURM=0 skips it. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"

#define SLURM_LAB CRUX_SOURCE_DIR "/cluster-scripts/slurm-lab"
#define BENCH_SBATCH CRUX_SOURCE_DIR "/cluster-scripts/allreduce-bench.sbatch"

static char prefix[16], lab_dir[64], job_dir[96], conf_env[128], labdir_env[96];
static int lab_up;

static const char *skip_reason(void)
{
    const char *force = getenv("CRUX_TEST_SLURM");
    if (force && !strcmp(force, "0"))
        return "CRUX_TEST_SLURM=0";
    if (CRUX_TEST_USER_CFLAGS[0] && !(force && !strcmp(force, "1")))
        return "runs once, in the non-sanitizer build (set CRUX_TEST_SLURM=1 to force)";
    if (geteuid() != 0)
        return "needs root for namespaces and the Slurm daemons";
    if (system("ip netns list >/dev/null 2>&1") != 0)
        return "`ip netns` is not available (iproute2 missing or no permission)";
    if (system("PATH=$PATH:/usr/sbin:/sbin; for c in slurmctld slurmd munged sbatch srun scontrol; do "
               "command -v $c >/dev/null || exit 1; done") != 0)
        return "Slurm or munge is not installed (scripts/deps.sh installs slurmctld slurmd slurm-client munge)";
    return NULL;
}


/* Once, before Criterion starts (its -q silences everything after): ctest's
 * SKIP_REGULAR_EXPRESSION turns this line into "Skipped". */
__attribute__((constructor)) static void announce_skip(void)
{
    const char *why = skip_reason();
    if (why)
        fprintf(stderr, "SKIPPED: Slurm tests: %s\n", why);
}

static int run_checked(char *const argv[], char *const env[], double timeout_s, struct proc_result *res)
{
    if (run_proc(argv, env, timeout_s, res) != 0)
        return -1;
    if (res->status != 0 || res->timed_out)
        proc_result_dump(res);
    return res->timed_out ? -1 : res->status;
}

static void lab_down(void)
{
    if (!lab_up)
        return;
    char *argv[] = { SLURM_LAB, "--prefix", prefix, "down", NULL };
    char *env[] = { labdir_env, NULL };
    struct proc_result res;
    if (run_checked(argv, env, 60, &res) >= 0)
        proc_result_free(&res);
    lab_up = 0;
    /* the lab's state and logs go too, unless someone wants to read them */
    if (!getenv("CRUX_TEST_KEEP_LOGS")) {
        char *rm[] = { "rm", "-rf", lab_dir, NULL };
        if (run_proc(rm, NULL, 30, &res) == 0)
            proc_result_free(&res);
    }
}

/* Two nodes with 4 CPUs each, under prefix cxs<pid> on a subnet of its own. */
static void lab_start(void)
{
    const char *why = skip_reason();
    if (why)
        cr_skip_test("Slurm test skipped: %s", why);
    /* labs of a test run whose process is gone (killed by a timeout before its .fini
     * could run) go first */
    if (system("for ns in $(ip netns list | awk '{print $1}' | grep -E '^cxs[0-9]+-sw$'); do "
               "p=${ns%-sw}; kill -0 ${p#cxs} 2>/dev/null && continue; "
               "SLURM_LAB_DIR=/tmp/crux-slurm-lab-$p " SLURM_LAB " --prefix $p down >/dev/null 2>&1; "
               "rm -rf /tmp/crux-slurm-lab-$p; done") != 0)
        cr_log_warn("could not reap stale labs");
    int id = (int)getpid();
    snprintf(prefix, sizeof(prefix), "cxs%d", id);
    snprintf(lab_dir, sizeof(lab_dir), "/tmp/crux-slurm-lab-%s", prefix);
    snprintf(labdir_env, sizeof(labdir_env), "SLURM_LAB_DIR=%s", lab_dir);
    snprintf(conf_env, sizeof(conf_env), "SLURM_CONF=%s/etc/slurm.conf", lab_dir);
    snprintf(job_dir, sizeof(job_dir), "%s/job", lab_dir);
    /* a subnet no other lab holds: the controller's address lives in the root namespace */
    char subnet[32], probe[96];
    for (int k = 0; k < 150; k++) {
        snprintf(subnet, sizeof(subnet), "198.19.%d", 100 + (id + k) % 150);
        snprintf(probe, sizeof(probe), "[ -z \"$(ip -4 route show %s.0/24)\" ]", subnet);
        if (system(probe) == 0)
            break;
    }
    char *argv[] = { SLURM_LAB, "--prefix", prefix, "up", "-n", "2", "-c", "4", "--subnet", subnet, NULL };
    char *env[] = { labdir_env, NULL };
    struct proc_result res;
    lab_up = 1; /* down is idempotent and also undoes a partial up */
    int st = run_checked(argv, env, 90, &res);
    cr_assert_eq(st, 0, "slurm-lab up failed (status %d); CRUX_TEST_KEEP_LOGS=1 keeps %s", st, lab_dir);
    proc_result_free(&res);
    cr_assert_eq(mkdir(job_dir, 0755), 0);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

/* NUL-terminated contents of a file (caller frees), or NULL. */
static char *read_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    size_t got = buf ? fread(buf, 1, (size_t)n, f) : 0;
    fclose(f);
    if (buf)
        buf[got] = '\0';
    return buf;
}

static char *read_job_file(const char *name)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", job_dir, name);
    char *text = read_file(path);
    cr_assert_not_null(text, "the job did not write %s", path);
    return text;
}

/* sbatch ARGS..., wait until the job has ended, return "JobState=X ExitCode=a:b". */
static void submit_and_wait(char *const sbatch_args[], char *const extra_env[], char *state, size_t len)
{
    static const char waiter[] =
        "jid=$(sbatch --parsable \"$@\") || exit 90\n"
        "echo \"job $jid\" >&2\n"
        "while :; do\n"
        "  st=$(scontrol -o show job \"$jid\" 2>/dev/null | grep -oE 'JobState=[A-Z_]+')\n"
        "  case $st in JobState=PENDING|JobState=CONFIGURING|JobState=RUNNING|JobState=COMPLETING|'') sleep 0.2 ;;\n"
        "  *) break ;; esac\n"
        "done\n"
        "scontrol -o show job \"$jid\" | grep -oE '(JobState|ExitCode)=[^ ]+' | paste -sd' '\n";
    char *argv[24] = { "/bin/sh", "-c", (char *)waiter, "sh" };
    int n = 4;
    for (int i = 0; sbatch_args[i] && n < 23; i++)
        argv[n++] = sbatch_args[i];
    argv[n] = NULL;
    char *env[16] = { conf_env, labdir_env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" };
    n = 3;
    for (int i = 0; extra_env && extra_env[i] && n < 15; i++)
        env[n++] = extra_env[i];
    env[n] = NULL;
    struct proc_result res;
    int st = run_checked(argv, env, 100, &res);
    cr_assert_eq(st, 0, "submitting or waiting for the job failed (status %d)", st);
    snprintf(state, len, "%s", res.out);
    state[strcspn(state, "\n")] = '\0';
    cr_log_info("job ended: %s", state);
    proc_result_free(&res);
}

static int count(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = text; (p = strstr(p, needle)); p++)
        n++;
    return n;
}

/* Every rank 0..n-1 printed "rank r: OK" (srun --label puts "t: " in front). */
static void assert_all_ok(const char *text, int n, const char *what)
{
    for (int r = 0; r < n; r++) {
        char want[32];
        snprintf(want, sizeof(want), "rank %d: OK", r);
        cr_assert_eq(count(text, want), 1, "%s: '%s' printed %d times, want once:\n%s", what, want,
                     count(text, want), text);
    }
    cr_assert_null(strstr(text, "FAIL"), "%s reported a failure:\n%s", what, text);
}

Test(slurm, allreduce_bench_template, .fini = lab_down, .timeout = 150)
{
    lab_start();
    char out[160], state[256];
    snprintf(out, sizeof(out), "--output=%s/bench.log", job_dir);
    char chdir_arg[160];
    snprintf(chdir_arg, sizeof(chdir_arg), "--chdir=%s", job_dir);
    char *args[] = { "--nodes=2", "--ntasks-per-node=2", out, chdir_arg, BENCH_SBATCH, NULL };
    char results[160];
    snprintf(results, sizeof(results), "RESULTS_DIR=%s/results", job_dir);
    char *env[] = { "OSU_BIN=" CRUX_OSU_PATH, "OSU_ARGS=-m 4:1M -i 5 -x 1 -c -b", results,
                    "CRUX_TIMEOUT=60", NULL };
    submit_and_wait(args, env, state, sizeof(state));
    char *log = read_job_file("bench.log");
    cr_assert(strstr(state, "JobState=COMPLETED") && strstr(state, "ExitCode=0:0"), "%s\n%s", state, log);
    /* One dated result file, with the header and every size validated. */
    snprintf(results, sizeof(results), "%s/results", job_dir);
    DIR *d = opendir(results);
    cr_assert_not_null(d, "no results directory");
    char name[300] = "";
    int files = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (!strncmp(e->d_name, "allreduce-", 10)) {
            snprintf(name, sizeof(name), "results/%s", e->d_name);
            files++;
        }
    closedir(d);
    cr_assert_eq(files, 1, "%d result files", files);
    cr_assert(strstr(name, "-N2-n4-job"), "result file name %s", name);
    char *res = read_job_file(name);
    cr_assert(strstr(res, "2 nodes, 4 ranks (2 per node)"), "%s", res);
    cr_assert(strstr(res, "# Size"), "%s", res);
    cr_assert_eq(count(res, "Pass"), 19, "want sizes 4 B..1 MiB all validated:\n%s", res);
    cr_assert_null(strstr(res, "Fail"), "%s", res);
    cr_assert(strstr(res, "\n1048576 "), "%s", res);
    free(res);
    free(log);
}

Test(slurm, test_program_steps, .fini = lab_down, .timeout = 150)
{
    lab_start();
    char script[2048], path[160];
    snprintf(script, sizeof(script),
             "#!/bin/bash\n"
             "#SBATCH -N2 --ntasks-per-node=2 -t 3\n"
             "R=%s\n"
             "export CRUX_TIMEOUT=60 CRUX_BOOTSTRAP_TIMEOUT=30\n"
             "fail=0\n"
             "srun --label \"$R\" coll --quick > step.out 2>&1 || fail=1\n"
             "\"$R\" coll --quick > single.out 2>&1 || fail=1\n"
             "show='echo \"resv=${SLURM_STEP_RESV_PORTS:-}\"; exec \"$0\" coll --quick'\n"
             "export CRUX_LOG_LEVEL=debug CRUX_LOG_SUBSYS=BOOT\n"
             "srun --overlap -N2 -n4 --label sh -c \"$show\" \"$R\" > c1.out 2>&1 & p1=$!\n"
             "srun --overlap -N2 -n4 --label sh -c \"$show\" \"$R\" > c2.out 2>&1 & p2=$!\n"
             "srun --overlap -N2 -n4 --label env -u SLURM_STEP_RESV_PORTS sh -c \"$show\" \"$R\" > c3.out 2>&1 & p3=$!\n"
             "srun --overlap -N2 -n4 --label env -u SLURM_STEP_RESV_PORTS sh -c \"$show\" \"$R\" > c4.out 2>&1 & p4=$!\n"
             "for p in $p1 $p2 $p3 $p4; do wait $p || fail=1; done\n"
             "exit $fail\n",
             CRUX_TEST_RANKPROG);
    snprintf(path, sizeof(path), "%s/steps.sbatch", job_dir);
    write_file(path, script);
    char out[160], chdir_arg[160], state[256];
    snprintf(out, sizeof(out), "--output=%s/steps.log", job_dir);
    snprintf(chdir_arg, sizeof(chdir_arg), "--chdir=%s", job_dir);
    char *args[] = { out, chdir_arg, path, NULL };
    submit_and_wait(args, NULL, state, sizeof(state));
    char *log = read_job_file("steps.log");
    cr_assert(strstr(state, "JobState=COMPLETED") && strstr(state, "ExitCode=0:0"), "%s\n%s", state, log);
    free(log);

    char *text = read_job_file("step.out");
    assert_all_ok(text, 4, "srun -N2 -n4");
    free(text);
    text = read_job_file("single.out");
    assert_all_ok(text, 1, "the batch script itself (a singleton)");
    free(text);
    /* Concurrent steps: reserved ports are used as they are, distinct per step; the
     * two steps without them meet on their job/step-hash port. */
    int port[4];
    for (int s = 0; s < 4; s++) {
        char name[16];
        snprintf(name, sizeof(name), "c%d.out", s + 1);
        text = read_job_file(name);
        assert_all_ok(text, 4, name);
        const char *resv = strstr(text, "resv=");
        cr_assert_not_null(resv, "%s", text);
        const char *root = strstr(text, ", root node1:");
        cr_assert_not_null(root, "no identity line in %s:\n%s", name, text);
        port[s] = atoi(root + strlen(", root node1:"));
        char want[48];
        snprintf(want, sizeof(want), ", root node1:%d,", port[s]);
        cr_assert_eq(count(text, want), 4, "%s: the 4 ranks disagree on the root port:\n%s", name, text);
        if (s < 2)
            cr_assert_eq(port[s], atoi(resv + 5), "%s must use the first reserved port:\n%s", name, text);
        else
            cr_assert(resv[5] == '\n', "%s still has reserved ports:\n%s", name, text);
        free(text);
    }
    cr_assert_neq(port[0], port[1], "two steps got the same reserved port");
    cr_assert_neq(port[2], port[3], "two steps hashed to the same port");
}

Test(slurm, killed_rank_fails_the_job, .fini = lab_down, .timeout = 150)
{
    lab_start();
    char script[512], path[160];
    snprintf(script, sizeof(script),
             "#!/bin/bash\n"
             "#SBATCH -N2 --ntasks-per-node=2 -t 3\n"
             "export CRUX_TIMEOUT=10\n"
             "srun %s kill 3 100\n",
             CRUX_TEST_RANKPROG);
    snprintf(path, sizeof(path), "%s/kill.sbatch", job_dir);
    write_file(path, script);
    char out[160], chdir_arg[160], state[256];
    snprintf(out, sizeof(out), "--output=%s/kill.log", job_dir);
    snprintf(chdir_arg, sizeof(chdir_arg), "--chdir=%s", job_dir);
    char *args[] = { out, chdir_arg, path, NULL };
    submit_and_wait(args, NULL, state, sizeof(state));
    char *log = read_job_file("kill.log");
    cr_log_info("%s", log);
    cr_assert(strstr(state, "JobState=FAILED"), "the job must fail: %s\n%s", state, log);
    cr_assert_null(strstr(state, "ExitCode=0:0"), "%s", state);
    int reports = 0;
    for (const char *p = log; (p = strstr(p, "allreduce after a peer died returned ")); p++) {
        const char *why = p + strlen("allreduce after a peer died returned ");
        cr_assert(!strncmp(why, "a peer failed", 13) || !strncmp(why, "timed out", 9),
                  "unexpected error: %.60s", why);
        reports++;
    }
    cr_assert_eq(reports, 3, "%d of 3 survivors reported the failure:\n%s", reports, log);
    cr_assert(strstr(log, "rank 3 (host node2"), "no crux log line names rank 3 on node2:\n%s", log);
    cr_assert(strstr(log, "node2: task 3: Killed"), "srun does not name the killed task:\n%s", log);
    free(log);
}

/* The same through a real mpirun inside the job (Open MPI launches its daemons on the
 * other nodes with srun): every rank gets Open MPI's identity and one job key. */
Test(slurm, mpirun_inside_a_job, .fini = lab_down, .timeout = 150)
{
    if (system("command -v mpirun.openmpi >/dev/null 2>&1") != 0)
        cr_skip_test("Open MPI's mpirun (openmpi-bin) is not installed");
    lab_start();
    char script[1024], path[160];
    snprintf(script, sizeof(script),
             "#!/bin/bash\n"
             "#SBATCH -N2 --ntasks-per-node=2 -t 3\n"
             "export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=tcp,self\n"
             "export CRUX_ROOT=node1:23456 CRUX_TIMEOUT=60 CRUX_BOOTSTRAP_TIMEOUT=30\n"
             "mpirun.openmpi -np 4 --map-by node %s coll --quick\n",
             CRUX_TEST_RANKPROG);
    snprintf(path, sizeof(path), "%s/mpirun.sbatch", job_dir);
    write_file(path, script);
    char out[160], chdir_arg[160], state[256];
    snprintf(out, sizeof(out), "--output=%s/mpirun.log", job_dir);
    snprintf(chdir_arg, sizeof(chdir_arg), "--chdir=%s", job_dir);
    char *args[] = { out, chdir_arg, path, NULL };
    submit_and_wait(args, NULL, state, sizeof(state));
    char *log = read_job_file("mpirun.log");
    cr_assert(strstr(state, "JobState=COMPLETED") && strstr(state, "ExitCode=0:0"), "%s\n%s", state, log);
    assert_all_ok(log, 4, "mpirun -np 4 in the job");
    free(log);
}
