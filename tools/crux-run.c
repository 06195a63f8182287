/* crux-run - start N local ranks of a crux program.
 *
 *   crux-run [-n N] [--bind-to core|none] [--timeout S] [--grace S] [--] prog args...
 *
 * Every rank gets CRUX_RANK, CRUX_SIZE, CRUX_LOCAL_RANK, CRUX_LOCAL_SIZE,
 * CRUX_ROOT=127.0.0.1:<free port> and a random CRUX_JOB_KEY on top of the inherited
 * environment (CRUX_* take precedence over Slurm/MPI variables in the library).
 * The ranks share one new process group, so that signals crux-run receives (INT,
 * TERM, HUP, QUIT, USR1, USR2) reach them and their own children. When a rank fails,
 * the others get --grace seconds to notice and report it, then SIGTERM, then SIGKILL
 * 2 s later. Exit status: 0 if every rank exited 0, else the first failing rank's
 * exit code (128 + signal if it was killed); 124 after --timeout; 2 on usage errors.
 * Standalone: does not link libcrux. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_RANKS 4096
#define KILL_AFTER_TERM_S 2.0
#define EXIT_USAGE 2
#define EXIT_TIMEOUT 124
#define EXIT_NOEXEC 127

static const int fwd_signals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
#define NFWD ((int)(sizeof(fwd_signals) / sizeof(fwd_signals[0])))

struct opts {
    int n;
    double timeout_s; /* 0 = none */
    double grace_s;
    int bind;         /* 1: pin rank r to the r-th allowed CPU (mod count) */
    char **argv;      /* the program and its arguments */
};

struct job {
    pid_t *pids;      /* [n]; 0 once reaped */
    pid_t pgid;
    int n, alive;
    int first_fail;   /* rank, -1 = none yet */
    int exit_code;
    double term_at;   /* when to send SIGTERM to the group (0 = not planned) */
    double kill_at;   /* when to send SIGKILL */
    bool timed_out, terminating;
    bool stop_forwarded; /* the user asked every rank to stop: no grace message */
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: crux-run [-n N] [--bind-to core|none] [--timeout S] [--grace S] [--] prog [args...]\n"
            "Start N ranks (default 1) of a crux program on this host.\n"
            "  -n, --np N      number of ranks, 1..%d\n"
            "  --bind-to core|none  pin rank r to the r-th CPU this launcher may use,\n"
            "                  round-robin when ranks outnumber CPUs (default core)\n"
            "  --timeout S     kill every rank after S seconds and exit %d (default: none)\n"
            "  --grace S       after a rank fails, seconds the others get to finish on\n"
            "                  their own before SIGTERM (default 10; SIGKILL 2 s later)\n"
            "  -h, --help      show this help\n"
            "Each rank sees CRUX_RANK, CRUX_SIZE, CRUX_LOCAL_RANK, CRUX_LOCAL_SIZE,\n"
            "CRUX_ROOT and CRUX_JOB_KEY; CRUX_SOCKET_IFNAME defaults to =lo (loopback).\n"
            "Exit status: 0 if all ranks exit 0, else the\n"
            "first failing rank's status (128+signal if killed).\n",
            MAX_RANKS, EXIT_TIMEOUT);
}

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "crux-run: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry 'crux-run --help'.\n");
    return EXIT_USAGE;
}

static bool parse_count(const char *s, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < 1 || v > MAX_RANKS || s[0] == '+' || s[0] == ' ')
        return false;
    *out = (int)v;
    return true;
}

static bool parse_seconds(const char *s, bool allow_zero, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !isfinite(v) || v < 0 || (!allow_zero && v == 0) || v > 1e7)
        return false;
    *out = v;
    return true;
}

/* Value of an option given as "--opt V" or "--opt=V" (also "-nV"); NULL if missing. */
static const char *opt_value(int argc, char **argv, int *i, const char *name)
{
    size_t l = strlen(name);
    const char *a = argv[*i];
    if (a[l] == '=')
        return a + l + 1;
    if (a[l] != '\0')
        return name[1] == '-' ? NULL : a + l; /* "-n4" */
    return *i + 1 < argc ? argv[++*i] : NULL;
}

static bool is_opt(const char *a, const char *name)
{
    size_t l = strlen(name);
    return strncmp(a, name, l) == 0 && (a[l] == '\0' || a[l] == '=' || (name[1] != '-' && a[l]));
}

/* Returns -1 to go on, else the exit status. */
static int parse_args(int argc, char **argv, struct opts *o)
{
    o->n = 1;
    o->timeout_s = 0;
    o->grace_s = 10;
    o->bind = 1;
    int i = 1;
    for (; i < argc; i++) {
        const char *a = argv[i], *v;
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        }
        if (a[0] != '-' || a[1] == '\0')
            break;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        }
        if (is_opt(a, "-n") || is_opt(a, "--np")) {
            if (!(v = opt_value(argc, argv, &i, a[1] == 'n' ? "-n" : "--np")))
                return usage_error("%s needs a number of ranks", a);
            if (!parse_count(v, &o->n))
                return usage_error("invalid number of ranks '%s' (expected 1..4096)", v);
        } else if (is_opt(a, "--timeout")) {
            if (!(v = opt_value(argc, argv, &i, "--timeout")))
                return usage_error("%s needs seconds", a);
            if (!parse_seconds(v, false, &o->timeout_s))
                return usage_error("invalid --timeout '%s' (expected seconds > 0)", v);
        } else if (is_opt(a, "--grace")) {
            if (!(v = opt_value(argc, argv, &i, "--grace")))
                return usage_error("%s needs seconds", a);
            if (!parse_seconds(v, true, &o->grace_s))
                return usage_error("invalid --grace '%s' (expected seconds >= 0)", v);
        } else if (is_opt(a, "--bind-to")) {
            if (!(v = opt_value(argc, argv, &i, "--bind-to")))
                return usage_error("%s needs core or none", a);
            if (strcmp(v, "core") && strcmp(v, "none"))
                return usage_error("invalid --bind-to '%s' (expected core or none)", v);
            o->bind = strcmp(v, "core") == 0;
        } else {
            return usage_error("unknown option '%s'", a);
        }
    }
    if (i >= argc)
        return usage_error("%s", "no program given");
    o->argv = argv + i;
    return -1;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A port nobody listens on right now: bind port 0 on loopback and read it back. */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof(sa);
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &l) == 0)
        port = ntohs(sa.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

static void random_key(char *buf, size_t len)
{
    unsigned long long k = 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0 || read(fd, &k, sizeof(k)) != (ssize_t)sizeof(k))
        k = (unsigned long long)time(NULL) * 6364136223846793005ull ^ (unsigned long long)getpid();
    if (fd >= 0)
        close(fd);
    snprintf(buf, len, "crux-run-%016llx", k);
}

static void set_env_int(const char *name, int v)
{
    char b[16];
    snprintf(b, sizeof(b), "%d", v);
    setenv(name, b, 1);
}

/* Pin to one CPU, like mpirun --bind-to core: a rank that migrates loses its
 * cache and can land on its peer's core, which a spinning peer then starves. */
static void bind_rank(int rank)
{
    cpu_set_t allowed, one;
    if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0)
        return;
    int n = CPU_COUNT(&allowed), want = rank % (n > 0 ? n : 1);
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (!CPU_ISSET(cpu, &allowed) || want-- > 0)
            continue;
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        sched_setaffinity(0, sizeof(one), &one); /* best effort, like mpirun's */
        return;
    }
}

/* In the child: join the group, set the env, exec; report errno on the pipe. */
static void child_exec(const struct opts *o, int rank, pid_t pgid, const char *root, const char *key,
                       const sigset_t *orig_mask, pid_t parent, int errfd)
{
    setpgid(0, pgid);
    prctl(PR_SET_PDEATHSIG, SIGTERM); /* crux-run killed by SIGKILL: do not orphan ranks */
    if (getppid() != parent)
        _exit(EXIT_NOEXEC);
    if (o->bind)
        bind_rank(rank);
    set_env_int("CRUX_RANK", rank);
    set_env_int("CRUX_SIZE", o->n);
    set_env_int("CRUX_LOCAL_RANK", rank);
    set_env_int("CRUX_LOCAL_SIZE", o->n);
    setenv("CRUX_ROOT", root, 1);
    setenv("CRUX_JOB_KEY", key, 1);
    /* Every rank is on this host: TCP (when forced) stays on loopback unless told. */
    setenv("CRUX_SOCKET_IFNAME", "=lo", 0);
    sigprocmask(SIG_SETMASK, orig_mask, NULL);
    execvp(o->argv[0], o->argv);
    int e = errno;
    if (write(errfd, &e, sizeof(e)) < 0)
        _exit(EXIT_NOEXEC);
    _exit(EXIT_NOEXEC);
}

static void signal_group(struct job *j, int sig)
{
    if (j->pgid > 0 && j->alive > 0)
        kill(-j->pgid, sig);
}

static int rank_of(const struct job *j, pid_t pid)
{
    for (int r = 0; r < j->n; r++)
        if (j->pids[r] == pid)
            return r;
    return -1;
}

static void note_exit(struct job *j, int rank, pid_t pid, int status, double grace_s)
{
    int code;
    char what[64];
    if (WIFEXITED(status)) {
        code = WEXITSTATUS(status);
        snprintf(what, sizeof(what), "exited with status %d", code);
    } else {
        int sig = WTERMSIG(status);
        code = 128 + sig;
        const char *name = sigabbrev_np(sig);
        if (name)
            snprintf(what, sizeof(what), "killed by signal SIG%s", name);
        else
            snprintf(what, sizeof(what), "killed by signal %d", sig);
    }
    if (code == 0)
        return;
    if (!j->terminating)
        fprintf(stderr, "crux-run: rank %d (pid %d) %s\n", rank, (int)pid, what);
    if (j->first_fail < 0) {
        j->first_fail = rank;
        j->exit_code = code;
        if (!j->terminating && j->alive > 0) {
            j->term_at = now_s() + grace_s;
            if (grace_s > 0 && !j->stop_forwarded)
                fprintf(stderr, "crux-run: stopping the other %d rank%s in %g s\n", j->alive,
                        j->alive == 1 ? "" : "s", grace_s);
        }
    }
}

static void reap(struct job *j, double grace_s)
{
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0)
            return;
        int r = rank_of(j, pid);
        if (r < 0)
            continue;
        j->pids[r] = 0;
        j->alive--;
        note_exit(j, r, pid, status, grace_s);
    }
}

static void begin_terminate(struct job *j)
{
    if (j->terminating)
        return;
    j->terminating = true;
    signal_group(j, SIGTERM);
    j->kill_at = now_s() + KILL_AFTER_TERM_S;
}

/* Sleep in sigtimedwait until a signal or the next deadline: no busy loop. */
static void supervise(struct job *j, const struct opts *o, const sigset_t *wait_set, double t0)
{
    while (j->alive > 0) {
        double t = now_s(), next = 1e18;
        if (o->timeout_s > 0 && !j->timed_out) {
            if (t >= t0 + o->timeout_s) {
                j->timed_out = true;
                fprintf(stderr, "crux-run: timeout after %g s: killing %d remaining rank%s\n", o->timeout_s,
                        j->alive, j->alive == 1 ? "" : "s");
                begin_terminate(j);
                continue;
            }
            next = t0 + o->timeout_s;
        }
        if (j->term_at > 0 && !j->terminating) {
            if (t >= j->term_at) {
                begin_terminate(j);
                continue;
            }
            next = j->term_at < next ? j->term_at : next;
        }
        if (j->terminating) {
            if (t >= j->kill_at) {
                signal_group(j, SIGKILL);
                j->kill_at = t + 3600; /* once; the kernel finishes the job */
            }
            next = j->kill_at < next ? j->kill_at : next;
        }
        siginfo_t si;
        int sig;
        if (next < 1e17) {
            double d = next - now_s();
            d = d < 0 ? 0 : d;
            struct timespec ts = {(time_t)d, (long)((d - (double)(time_t)d) * 1e9)};
            sig = sigtimedwait(wait_set, &si, &ts);
        } else {
            sig = sigwaitinfo(wait_set, &si);
        }
        if (sig == SIGCHLD || sig < 0) {
            reap(j, o->grace_s);
        } else {
            signal_group(j, sig);
            /* a forwarded stop request must not wait forever on ranks that ignore it */
            if (sig == SIGINT || sig == SIGTERM || sig == SIGHUP || sig == SIGQUIT) {
                j->stop_forwarded = true;
                if (j->term_at == 0 && !j->terminating)
                    j->term_at = now_s() + o->grace_s;
            }
        }
    }
    reap(j, o->grace_s);
}

/* Fork rank r; returns 0, or the exit status if exec failed. */
static int start_rank(struct job *j, const struct opts *o, int r, const char *root, const char *key,
                      const sigset_t *orig)
{
    int ep[2];
    if (pipe2(ep, O_CLOEXEC) != 0) {
        fprintf(stderr, "crux-run: pipe: %s\n", strerror(errno));
        return 1;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "crux-run: fork for rank %d: %s\n", r, strerror(errno));
        close(ep[0]);
        close(ep[1]);
        return 1;
    }
    if (pid == 0) {
        close(ep[0]);
        child_exec(o, r, j->pgid ? j->pgid : 0, root, key, orig, parent, ep[1]);
    }
    if (j->pgid == 0)
        j->pgid = pid;
    setpgid(pid, j->pgid); /* both sides call it: no race with signals or exec */
    close(ep[1]);
    j->pids[r] = pid;
    j->alive++;
    int e = 0;
    ssize_t n;
    do
        n = read(ep[0], &e, sizeof(e));
    while (n < 0 && errno == EINTR);
    close(ep[0]);
    if (n == (ssize_t)sizeof(e)) {
        fprintf(stderr, "crux-run: cannot execute '%s': %s\n", o->argv[0], strerror(e));
        return EXIT_NOEXEC;
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct opts o;
    int rc = parse_args(argc, argv, &o);
    if (rc >= 0)
        return rc;
    int port = free_port();
    if (port < 0) {
        fprintf(stderr, "crux-run: cannot find a free TCP port on 127.0.0.1: %s\n", strerror(errno));
        return 1;
    }
    char root[32], key[48];
    snprintf(root, sizeof(root), "127.0.0.1:%d", port);
    random_key(key, sizeof(key));

    signal(SIGCHLD, SIG_DFL); /* an inherited SIG_IGN would auto-reap the ranks */
    /* Block the signals we handle before forking so none is lost; children restore. */
    sigset_t wait_set, orig;
    sigemptyset(&wait_set);
    for (int i = 0; i < NFWD; i++)
        sigaddset(&wait_set, fwd_signals[i]);
    sigaddset(&wait_set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &wait_set, &orig);

    struct job j = {.n = o.n, .first_fail = -1};
    j.pids = calloc((size_t)o.n, sizeof(pid_t));
    if (!j.pids) {
        fprintf(stderr, "crux-run: out of memory\n");
        return 1;
    }
    double t0 = now_s();
    for (int r = 0; r < o.n; r++) {
        rc = start_rank(&j, &o, r, root, key, &orig);
        if (rc != 0) {
            begin_terminate(&j);
            break;
        }
    }
    supervise(&j, &o, &wait_set, t0);
    free(j.pids);
    if (rc != 0)
        return rc;
    if (j.timed_out)
        return EXIT_TIMEOUT;
    return j.first_fail < 0 ? 0 : j.exit_code;
}
