/* test_bootstrap.c - hello wire format, identity resolution from the environment, and
 * forming real jobs of forked processes over loopback TCP (including junk clients and
 * a rank that never starts). */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bootstrap.h"
#include "crux.h"
#include "log.h"

/* ---------------- (a) hello encode/decode ---------------- */

static struct crux_boot_hello sample_hello(void)
{
    struct crux_boot_hello h;
    memset(&h, 0, sizeof(h));
    h.magic = CRUX_BOOT_MAGIC;
    h.version = CRUX_BOOT_VERSION;
    h.job_key = 0x1122334455667788ull;
    h.rank = 3;
    h.size = 8;
    h.pid = 0x01020304;
    h.listen_port = 0xabcd;
    h.listen_addr[0] = 10, h.listen_addr[1] = 1, h.listen_addr[2] = 2, h.listen_addr[3] = 3;
    strcpy(h.host, "node007");
    h.host_hash = 0xfedcba9876543210ull;
    return h;
}

Test(hello, encode_is_little_endian_field_by_field)
{
    struct crux_boot_hello h = sample_hello();
    uint8_t buf[CRUX_BOOT_HELLO_BYTES];
    memset(buf, 0xee, sizeof(buf));
    crux_boot_hello_encode(&h, buf);
    static const uint8_t head[32] = {0x58, 0x55, 0x52, 0x43, 1, 0, 0, 0,
                                     0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,
                                     3, 0, 0, 0, 8, 0, 0, 0, 4, 3, 2, 1, 0xcd, 0xab, 0, 0};
    cr_assert_arr_eq(buf, head, sizeof(head));
    cr_assert_eq(buf[32], 10);
    cr_assert_eq(buf[35], 3);
    cr_assert_eq(buf[36], 0);
    cr_assert_str_eq((const char *)buf + 48, "node007");
    for (int i = 48 + 7; i < 112; i++)
        cr_assert_eq(buf[i], 0, "byte %d after the host name is %#x", i, buf[i]);
    cr_assert_eq(buf[112], 0x10);
    cr_assert_eq(buf[119], 0xfe);
}

Test(hello, round_trip_exact)
{
    struct crux_boot_hello h = sample_hello(), d;
    uint8_t buf[CRUX_BOOT_HELLO_BYTES];
    const char *why = "unset";
    crux_boot_hello_encode(&h, buf);
    cr_assert_eq(crux_boot_hello_decode(buf, sizeof(buf), h.job_key, 8, &d, &why), CRUX_SUCCESS);
    cr_assert_null(why);
    cr_assert_eq(memcmp(&h, &d, sizeof(h)), 0);
}

/* Decode a mutated copy of the sample and expect a rejection mentioning `word`. */
static void expect_reject(const uint8_t *buf, size_t len, uint64_t key, int size, const char *word)
{
    struct crux_boot_hello d;
    const char *why = NULL;
    cr_assert_eq(crux_boot_hello_decode(buf, len, key, size, &d, &why), CRUX_ERR_BOOTSTRAP,
                 "accepted, expected '%s'", word);
    cr_assert_not_null(why);
    cr_assert(strstr(why, word), "why = '%s', expected '%s'", why, word);
}

Test(hello, every_validation_failure)
{
    struct crux_boot_hello h = sample_hello();
    uint8_t good[CRUX_BOOT_HELLO_BYTES], b[CRUX_BOOT_HELLO_BYTES + 1];
    uint64_t key = h.job_key;
    crux_boot_hello_encode(&h, good);

    expect_reject(good, sizeof(good) - 1, key, 8, "length");
    memcpy(b, good, sizeof(good));
    expect_reject(b, sizeof(good) + 1, key, 8, "length");
    expect_reject(NULL, sizeof(good), key, 8, "length");
#define MUTATE(stmt, size, word)                                                                  \
    do {                                                                                          \
        memcpy(b, good, sizeof(good));                                                            \
        stmt;                                                                                     \
        expect_reject(b, sizeof(good), key, size, word);                                          \
    } while (0)
    MUTATE(b[0] ^= 1, 8, "magic");
    MUTATE(b[4] = 2, 8, "version");
    MUTATE(b[8] ^= 0x80, 8, "job key");
    MUTATE((void)0, 9, "size");                    /* job of 8 claims to be in a job of 9 */
    MUTATE((void)0, 3, "size");
    MUTATE(b[20] = 3, 3, "rank");                  /* size 3 ok, rank 3 is out of range */
    MUTATE(memset(b + 16, 0xff, 4), 8, "rank");    /* rank -1 */
    MUTATE(memset(b + 24, 0, 4), 8, "pid");
    MUTATE(memset(b + 28, 0, 2), 8, "port");
    MUTATE(b[30] = 1, 8, "padding");
    MUTATE(memset(b + 48, 'x', CRUX_HOST_MAX), 8, "NUL");
    MUTATE(memset(b + 48, 0, CRUX_HOST_MAX), 8, "empty");
#undef MUTATE
    memcpy(b, good, sizeof(good));
    expect_reject(b, sizeof(good), key + 1, 8, "job key");
}

Test(hello, encode_never_leaks_bytes_after_host)
{
    struct crux_boot_hello h = sample_hello();
    memset(h.host, 'z', sizeof(h.host));
    strcpy(h.host, "ab");
    uint8_t buf[CRUX_BOOT_HELLO_BYTES];
    crux_boot_hello_encode(&h, buf);
    for (int i = 48 + 2; i < 112; i++)
        cr_assert_eq(buf[i], 0);
}

/* ---------------- (b) identity from the environment ---------------- */

static const char *const launcher_vars[] = {
    "SLURM_PROCID", "SLURM_NTASKS", "SLURM_NPROCS", "SLURM_LOCALID", "SLURM_NODEID",
    "SLURM_JOB_ID", "SLURM_JOBID", "SLURM_STEP_ID", "SLURM_STEPID", "SLURM_STEP_NODELIST",
    "SLURM_JOB_NODELIST", "SLURM_STEP_RESV_PORTS", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
    "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_RANK", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALRANKID",
    "CRUX_RANK", "CRUX_SIZE", "CRUX_LOCAL_RANK", "CRUX_ROOT", "CRUX_JOB_KEY", NULL};

static void clean_env(void)
{
    for (int i = 0; launcher_vars[i]; i++)
        unsetenv(launcher_vars[i]);
}

static void cfg_blank(struct crux_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->rank = cfg->size = cfg->local_rank = -1;
    cfg->bootstrap_timeout_s = 10;
}

static void slurm_env(void)
{
    setenv("SLURM_PROCID", "3", 1);
    setenv("SLURM_NTASKS", "8", 1);
    setenv("SLURM_LOCALID", "1", 1);
    setenv("SLURM_JOB_ID", "4242", 1);
    setenv("SLURM_STEP_ID", "0", 1);
    setenv("SLURM_STEP_NODELIST", "node[007-010]", 1);
    setenv("SLURM_JOB_NODELIST", "other[1-4]", 1);
}

static int resolve(const struct crux_config *cfg, struct crux_identity *id)
{
    return crux_identity_resolve(cfg, id);
}

TestSuite(identity, .init = clean_env);

Test(identity, nothing_set_is_a_singleton)
{
    struct crux_config cfg;
    struct crux_identity id;
    cfg_blank(&cfg);
    cr_assert_eq(resolve(&cfg, &id), CRUX_SUCCESS);
    cr_assert_eq(id.rank, 0);
    cr_assert_eq(id.size, 1);
    cr_assert_eq(id.local_rank, 0);
    cr_assert_str_eq(id.source, "single");
}

Test(identity, crux_variables)
{
    struct crux_config cfg;
    struct crux_identity id;
    cfg_blank(&cfg);
    cfg.rank = 2, cfg.size = 4, cfg.local_rank = 1;
    strcpy(cfg.root, "10.1.2.3:5555");
    strcpy(cfg.job_key, "alpha");
    slurm_env(); /* CRUX_* come first */
    cr_assert_eq(resolve(&cfg, &id), CRUX_SUCCESS);
    cr_assert_eq(id.rank, 2);
    cr_assert_eq(id.size, 4);
    cr_assert_eq(id.local_rank, 1);
    cr_assert_str_eq(id.root_host, "10.1.2.3");
    cr_assert_eq(id.root_port, 5555);
    cr_assert_str_eq(id.source, "crux");
    uint64_t k1 = id.job_key;
    cr_assert_eq(resolve(&cfg, &id), CRUX_SUCCESS);
    cr_assert_eq(id.job_key, k1, "the key must be deterministic");
    strcpy(cfg.job_key, "alphb");
    cr_assert_eq(resolve(&cfg, &id), CRUX_SUCCESS);
    cr_assert_neq(id.job_key, k1);
    strcpy(cfg.root, "head-node.example:80");
    cr_assert_eq(resolve(&cfg, &id), CRUX_SUCCESS);
    cr_assert_str_eq(id.root_host, "head-node.example");
    cr_assert_eq(id.root_port, 80);
}

Test(identity, crux_variables_through_config_load)
{
    struct crux_config cfg;
    struct crux_identity id;
    setenv("CRUX_RANK", "1", 1);
    setenv("CRUX_SIZE", "3", 1);
    setenv("CRUX_ROOT", "127.0.0.1:4321", 1);
    cr_assert_eq(crux_config_load(&cfg), CRUX_SUCCESS);
    cr_assert_eq(resolve(&cfg, &id), CRUX_SUCCESS);
    cr_assert_eq(id.rank, 1);
    cr_assert_eq(id.size, 3);
    cr_assert_eq(id.local_rank, -1, "unknown until the bootstrap derives it");
    cr_assert_eq(id.root_port, 4321);
}

Test(identity, crux_errors)
{
    struct crux_config cfg;
    struct crux_identity id;
    cfg_blank(&cfg);
    cfg.rank = 0; /* without CRUX_SIZE */
    cr_assert_eq(resolve(&cfg, &id), CRUX_ERR_ARG);
    cfg_blank(&cfg);
    cfg.size = 2; /* without CRUX_RANK */
    cr_assert_eq(resolve(&cfg, &id), CRUX_ERR_ARG);
    cfg.rank = 2; /* rank >= size */
    strcpy(cfg.root, "h:1");
    cr_assert_eq(resolve(&cfg, &id), CRUX_ERR_ARG);
    cfg.rank = 1, cfg.local_rank = 2;
    cr_assert_eq(resolve(&cfg, &id), CRUX_ERR_ARG);
    cfg.local_rank = -1, cfg.root[0] = '\0'; /* size 2 needs a root */
    cr_assert_eq(resolve(&cfg, &id), CRUX_ERR_ARG);
    static const char *const bad_roots[] = {"host", "host:", ":80", "host:0", "host:65536",
                                            "host:12x", "host:-1", "host: 80", "[::1]:80", "::1:80",
                                            NULL};
    for (int i = 0; bad_roots[i]; i++) {
        strcpy(cfg.root, bad_roots[i]);
        cr_assert_eq(resolve(&cfg, &id), CRUX_ERR_ARG, "CRUX_ROOT='%s' accepted", bad_roots[i]);
    }
    cfg.rank = 0, cfg.size = 1, cfg.root[0] = '\0'; /* a singleton needs no root */
    cr_assert_eq(resolve(&cfg, &id), CRUX_SUCCESS);
}

Test(identity, slurm_with_nodelist_and_reserved_ports)
{
    struct crux_config cfg;
    struct crux_identity id;
    cfg_blank(&cfg);
    slurm_env();
    setenv("SLURM_STEP_RESV_PORTS", "12000-12010", 1);
    cr_assert_eq(resolve(&cfg, &id), CRUX_SUCCESS);
    cr_assert_str_eq(id.source, "slurm");
    cr_assert_eq(id.rank, 3);
    cr_assert_eq(id.size, 8);
    cr_assert_eq(id.local_rank, 1);
    cr_assert_str_eq(id.root_host, "node007");
    cr_assert_eq(id.root_port, 12000);
    uint64_t key = id.job_key;
    setenv("SLURM_STEP_RESV_PORTS", "12345", 1);
    setenv("SLURM_PROCID", "0", 1);
    cr_assert_eq(resolve(&cfg, &id), CRUX_SUCCESS);
    cr_assert_eq(id.root_port, 12345);
    cr_assert_eq(id.job_key, key, "every rank of a step derives the same key");
    setenv("SLURM_STEP_ID", "1", 1);
    cr_assert_eq(resolve(&cfg, &id), CRUX_SUCCESS);
    cr_assert_neq(id.job_key, key, "another step is another job");
    strcpy(cfg.root, "10.0.0.1:999"); /* CRUX_ROOT wins over Slurm's */
    cr_assert_eq(resolve(&cfg, &id), CRUX_SUCCESS);
    cr_assert_str_eq(id.root_host, "10.0.0.1");
    cr_assert_eq(id.root_port, 999);
}

Test(identity, slurm_fallbacks_and_hashed_port)
{
    struct crux_config cfg;
    struct crux_identity id;
    cfg_blank(&cfg);
    slurm_env();
    unsetenv("SLURM_NTASKS");
    setenv("SLURM_NPROCS", "8", 1);
    unsetenv("SLURM_STEP_NODELIST");
    unsetenv("SLURM_LOCALID");
    cr_assert_eq(resolve(&cfg, &id), CRUX_SUCCESS);
    cr_assert_eq(id.size, 8);
    cr_assert_eq(id.local_rank, -1);
    cr_assert_str_eq(id.root_host, "other1");
    cr_assert_geq(id.root_port, 20000);
    cr_assert_leq(id.root_port, 59999);
    int port = id.root_port;
    cr_assert_eq(resolve(&cfg, &id), CRUX_SUCCESS);
    cr_assert_eq(id.root_port, port, "the derived port must be deterministic");
    int differ = 0;
    for (int step = 1; step <= 8; step++) {
        char s[8];
        snprintf(s, sizeof(s), "%d", step);
        setenv("SLURM_STEP_ID", s, 1);
        cr_assert_eq(resolve(&cfg, &id), CRUX_SUCCESS);
        cr_assert(id.root_port >= 20000 && id.root_port <= 59999);
        differ += id.root_port != port;
    }
    cr_assert_geq(differ, 7, "steps should get different ports");
}

Test(identity, slurm_errors)
{
    struct crux_config cfg;
    struct crux_identity id;
    cfg_blank(&cfg);
    static const struct { const char *var, *val; } bad[] = {
        {"SLURM_PROCID", "3x"}, {"SLURM_PROCID", ""},      {"SLURM_PROCID", "-1"},
        {"SLURM_PROCID", "8"},  {"SLURM_NTASKS", "0"},     {"SLURM_NTASKS", "eight"},
        {"SLURM_LOCALID", "+1"}, {"SLURM_STEP_NODELIST", "node[3-1]"},
        {"SLURM_STEP_RESV_PORTS", "abc"}, {"SLURM_STEP_RESV_PORTS", "70000-70010"},
        {"SLURM_PROCID", "99999999999999999999"}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        clean_env();
        slurm_env();
        setenv(bad[i].var, bad[i].val, 1);
        cr_assert_eq(resolve(&cfg, &id), CRUX_ERR_ARG, "%s='%s' accepted", bad[i].var, bad[i].val);
    }
    clean_env();
    slurm_env();
    unsetenv("SLURM_NTASKS");
    cr_assert_eq(resolve(&cfg, &id), CRUX_ERR_ARG, "SLURM_PROCID without a task count");
    clean_env();
    slurm_env();
    unsetenv("SLURM_STEP_NODELIST");
    unsetenv("SLURM_JOB_NODELIST");
    cr_assert_eq(resolve(&cfg, &id), CRUX_ERR_ARG, "no nodelist and no CRUX_ROOT");
}

Test(identity, open_mpi_needs_crux_root)
{
    struct crux_config cfg;
    struct crux_identity id;
    cfg_blank(&cfg);
    setenv("OMPI_COMM_WORLD_RANK", "1", 1);
    setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
    setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1", 1);
    cr_assert_eq(resolve(&cfg, &id), CRUX_ERR_ARG);
    strcpy(cfg.root, "127.0.0.1:4000");
    cr_assert_eq(resolve(&cfg, &id), CRUX_SUCCESS);
    cr_assert_str_eq(id.source, "ompi");
    cr_assert_eq(id.rank, 1);
    cr_assert_eq(id.size, 2);
    cr_assert_eq(id.local_rank, 1);
    cr_assert_eq(id.root_port, 4000);
    setenv("OMPI_COMM_WORLD_SIZE", "", 1);
    cr_assert_eq(resolve(&cfg, &id), CRUX_ERR_ARG);
}

Test(identity, pmi_and_pmix)
{
    struct crux_config cfg;
    struct crux_identity id;
    cfg_blank(&cfg);
    setenv("PMI_RANK", "2", 1);
    setenv("PMI_SIZE", "3", 1);
    cr_assert_eq(resolve(&cfg, &id), CRUX_ERR_ARG, "PMI gives no rendezvous");
    strcpy(cfg.root, "127.0.0.1:4001");
    cr_assert_eq(resolve(&cfg, &id), CRUX_SUCCESS);
    cr_assert_str_eq(id.source, "pmi");
    cr_assert_eq(id.rank, 2);
    cr_assert_eq(id.size, 3);
    unsetenv("PMI_RANK");
    setenv("PMIX_RANK", "1", 1);
    cr_assert_eq(resolve(&cfg, &id), CRUX_SUCCESS);
    cr_assert_str_eq(id.source, "pmi");
    cr_assert_eq(id.rank, 1);
    unsetenv("PMI_SIZE");
    cr_assert_eq(resolve(&cfg, &id), CRUX_ERR_ARG, "PMIX_RANK without any size");
}

/* ---------------- (c)-(e) real jobs of forked ranks ---------------- */

#define MAXR 4
#define BIG_WORDS (256 * 1024) /* 1 MiB per rank: more than the socket buffers hold */

struct rank_args {
    int rank, size, port;
    const char *key;
    double timeout_s;
    int err_fd; /* -1 or where this rank's stderr goes */
};

struct report {
    int rc_id, rc_init, rc_small, rc_big, rc_barrier;
    int32_t pid;
    long big_mismatch;
    double secs;
    uint32_t small[MAXR * 3];
    struct crux_peer_info peers[MAXR];
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A port that was free a moment ago (the kernel hands out ephemeral ports round-robin). */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof(sa);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&sa, &l), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

static uint32_t big_value(int r, size_t i) { return (uint32_t)r * 2654435761u + (uint32_t)i; }

/* Body of one forked rank: no Criterion calls here, only a report on out_fd. */
static void rank_main(const struct rank_args *a, int out_fd)
{
    struct report rep;
    memset(&rep, 0, sizeof(rep));
    rep.rc_init = rep.rc_small = rep.rc_big = rep.rc_barrier = -1;
    rep.pid = (int32_t)getpid();
    if (a->err_fd >= 0)
        dup2(a->err_fd, 2);
    crux_log_setup(CRUX_LOG_WARN, CRUX_SUBSYS_ALL);
    crux_log_set_rank(a->rank);
    struct crux_config cfg;
    cfg_blank(&cfg);
    cfg.rank = a->rank;
    cfg.size = a->size;
    cfg.bootstrap_timeout_s = a->timeout_s;
    snprintf(cfg.root, sizeof(cfg.root), "127.0.0.1:%d", a->port);
    snprintf(cfg.job_key, sizeof(cfg.job_key), "%s", a->key);
    double t0 = now_s();
    struct crux_identity id;
    struct crux_bootstrap *bs = NULL;
    rep.rc_id = crux_identity_resolve(&cfg, &id);
    if (rep.rc_id == CRUX_SUCCESS)
        rep.rc_init = crux_bootstrap_init(&cfg, &id, rep.peers, &bs);
    rep.secs = now_s() - t0;
    if (rep.rc_init == CRUX_SUCCESS) {
        for (int i = 0; i < 3; i++)
            rep.small[a->rank * 3 + i] = (uint32_t)(a->rank * 100 + i + 1);
        rep.rc_small = crux_bootstrap_allgather(bs, rep.small, 3 * sizeof(uint32_t));
        uint32_t *big = malloc((size_t)a->size * BIG_WORDS * sizeof(uint32_t));
        if (big) {
            memset(big, 0, (size_t)a->size * BIG_WORDS * sizeof(uint32_t));
            for (size_t i = 0; i < BIG_WORDS; i++)
                big[(size_t)a->rank * BIG_WORDS + i] = big_value(a->rank, i);
            rep.rc_big = crux_bootstrap_allgather(bs, big, BIG_WORDS * sizeof(uint32_t));
            for (int r = 0; r < a->size; r++)
                for (size_t i = 0; i < BIG_WORDS; i++)
                    rep.big_mismatch += big[(size_t)r * BIG_WORDS + i] != big_value(r, i);
            free(big);
        }
        rep.rc_barrier = crux_bootstrap_barrier(bs);
        crux_bootstrap_close(bs);
    }
    ssize_t w = write(out_fd, &rep, sizeof(rep));
    _exit(w == (ssize_t)sizeof(rep) ? 0 : 1);
}

struct ranks {
    int n;
    pid_t pids[MAXR];
    int fds[MAXR];
    struct report reps[MAXR];
    int got[MAXR];
};

static void spawn_rank(struct ranks *R, const struct rank_args *a)
{
    int p[2];
    cr_assert_eq(pipe(p), 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        close(p[0]);
        rank_main(a, p[1]);
    }
    close(p[1]);
    R->pids[R->n] = pid;
    R->fds[R->n] = p[0];
    R->n++;
}

/* Read every report (bounded by timeout_s), then kill and reap every rank, always. */
static void collect(struct ranks *R, double timeout_s)
{
    double deadline = now_s() + timeout_s;
    size_t off[MAXR] = {0};
    for (;;) {
        struct pollfd p[MAXR];
        int open = 0;
        for (int i = 0; i < R->n; i++) {
            p[i] = (struct pollfd){R->fds[i], POLLIN, 0};
            open += R->fds[i] >= 0;
        }
        double left = deadline - now_s();
        if (!open || left <= 0)
            break;
        if (poll(p, (nfds_t)R->n, (int)(left * 1000) + 1) <= 0)
            continue;
        for (int i = 0; i < R->n; i++) {
            if (R->fds[i] < 0 || !p[i].revents)
                continue;
            ssize_t k = read(R->fds[i], (char *)&R->reps[i] + off[i], sizeof(struct report) - off[i]);
            if (k > 0)
                off[i] += (size_t)k;
            if (k <= 0 || off[i] == sizeof(struct report)) {
                R->got[i] = off[i] == sizeof(struct report);
                close(R->fds[i]);
                R->fds[i] = -1;
            }
        }
    }
    for (int i = 0; i < R->n; i++) {
        if (R->fds[i] >= 0)
            close(R->fds[i]);
        kill(R->pids[i], SIGKILL);
        waitpid(R->pids[i], NULL, 0);
    }
}

static char *read_file_fd(FILE *f)
{
    static char buf[65536];
    fflush(f);
    rewind(f);
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    return buf;
}

static void check_formed_job(const struct ranks *R, int size)
{
    char host[CRUX_HOST_MAX] = "";
    gethostname(host, sizeof(host));
    host[CRUX_HOST_MAX - 1] = '\0';
    for (int i = 0; i < size; i++) {
        const struct report *rep = &R->reps[i];
        cr_assert(R->got[i], "rank %d sent no report", i);
        cr_assert_eq(rep->rc_id, CRUX_SUCCESS, "rank %d identity", i);
        cr_assert_eq(rep->rc_init, CRUX_SUCCESS, "rank %d bootstrap_init", i);
        cr_assert_eq(rep->rc_small, CRUX_SUCCESS, "rank %d allgather", i);
        cr_assert_eq(rep->rc_big, CRUX_SUCCESS, "rank %d big allgather", i);
        cr_assert_eq(rep->big_mismatch, 0, "rank %d: %ld wrong words", i, rep->big_mismatch);
        cr_assert_eq(rep->rc_barrier, CRUX_SUCCESS, "rank %d barrier", i);
        cr_assert_eq(rep->pid, R->pids[i]);
        for (int r = 0; r < size; r++) {
            for (int k = 0; k < 3; k++)
                cr_assert_eq(rep->small[r * 3 + k], (uint32_t)(r * 100 + k + 1),
                             "rank %d slot %d.%d", i, r, k);
            const struct crux_peer_info *p = &rep->peers[r];
            cr_assert_eq(p->pid, R->pids[r], "rank %d sees pid %d for rank %d", i, p->pid, r);
            cr_assert_str_eq(p->host, host);
            cr_assert_eq(p->local_rank, r);
            cr_assert_eq(p->node_id, 0);
            cr_assert_eq(p->host_hash, rep->peers[0].host_hash);
            cr_assert_neq(p->host_hash, 0);
        }
        cr_assert_eq(memcmp(rep->peers, R->reps[0].peers, sizeof(rep->peers[0]) * (size_t)size), 0);
    }
}

Test(bootstrap, four_ranks_form_a_job, .timeout = 60)
{
    struct ranks R = {0};
    int port = free_port();
    for (int r = 0; r < 4; r++) {
        struct rank_args a = {r, 4, port, "job-c", 20, -1};
        spawn_rank(&R, &a);
    }
    collect(&R, 30);
    check_formed_job(&R, 4);
    cr_assert_lt(R.reps[0].secs, 10.0);
}

Test(bootstrap, singleton_uses_no_sockets)
{
    struct crux_config cfg;
    struct crux_identity id;
    struct crux_peer_info peer;
    struct crux_bootstrap *bs = NULL;
    cfg_blank(&cfg);
    cfg.rank = 0, cfg.size = 1;
    strcpy(cfg.root, "127.0.0.1:1"); /* nothing listens or connects there */
    cr_assert_eq(crux_identity_resolve(&cfg, &id), CRUX_SUCCESS);
    cr_assert_eq(crux_bootstrap_init(&cfg, &id, &peer, &bs), CRUX_SUCCESS);
    cr_assert_eq(peer.pid, getpid());
    cr_assert_eq(peer.local_rank, 0);
    cr_assert_eq(peer.node_id, 0);
    uint32_t v = 7;
    cr_assert_eq(crux_bootstrap_allgather(bs, &v, sizeof(v)), CRUX_SUCCESS);
    cr_assert_eq(v, 7);
    cr_assert_eq(crux_bootstrap_barrier(bs), CRUX_SUCCESS);
    crux_bootstrap_close(bs);
}

/* Connect to 127.0.0.1:port, retrying while the root is not listening yet. */
static int connect_root(int port, double timeout_s)
{
    double deadline = now_s() + timeout_s;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    while (now_s() < deadline) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
            return fd;
        close(fd);
        usleep(20000);
    }
    return -1;
}

static void send_hello(int fd, uint64_t key, int rank, int size)
{
    struct crux_boot_hello h = sample_hello();
    uint8_t buf[CRUX_BOOT_HELLO_BYTES];
    h.job_key = key, h.rank = rank, h.size = size;
    crux_boot_hello_encode(&h, buf);
    cr_assert_eq(write(fd, buf, sizeof(buf)), (ssize_t)sizeof(buf));
}

Test(bootstrap, junk_clients_do_not_stop_the_job, .timeout = 60)
{
    struct ranks R = {0};
    int port = free_port();
    FILE *root_err = tmpfile();
    cr_assert_not_null(root_err);
    struct rank_args a0 = {0, 4, port, "job-d", 20, fileno(root_err)};
    spawn_rank(&R, &a0);
    int silent = connect_root(port, 10); /* connects and never says a word */
    cr_assert_geq(silent, 0, "root never listened on port %d", port);
    int garbage = connect_root(port, 2);
    uint8_t junk[500];
    srand(12345);
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (uint8_t)rand();
    junk[0] = 'G'; /* never the magic */
    cr_assert_eq(write(garbage, junk, sizeof(junk)), (ssize_t)sizeof(junk));
    struct crux_identity id;
    struct crux_config cfg;
    cfg_blank(&cfg);
    cfg.rank = 0, cfg.size = 4;
    snprintf(cfg.root, sizeof(cfg.root), "127.0.0.1:%d", port);
    strcpy(cfg.job_key, "job-d");
    cr_assert_eq(crux_identity_resolve(&cfg, &id), CRUX_SUCCESS);
    int wrong_key = connect_root(port, 2);
    send_hello(wrong_key, id.job_key ^ 1, 1, 4);
    int bad_rank = connect_root(port, 2);
    send_hello(bad_rank, id.job_key, 9, 4);
    int fake_root = connect_root(port, 2);
    send_hello(fake_root, id.job_key, 0, 4);
    usleep(200000); /* let the root judge them before the real ranks come */
    for (int r = 1; r < 4; r++) {
        struct rank_args a = {r, 4, port, "job-d", 20, -1};
        spawn_rank(&R, &a);
    }
    collect(&R, 30);
    close(silent);
    close(garbage);
    close(wrong_key);
    close(bad_rank);
    close(fake_root);
    const char *log = read_file_fd(root_err);
    fclose(root_err);
    check_formed_job(&R, 4);
    cr_assert(strstr(log, "rejected connection from 127.0.0.1:"), "root log:\n%s", log);
    cr_assert(strstr(log, "bad magic"), "root log:\n%s", log);
    cr_assert(strstr(log, "wrong job key"), "root log:\n%s", log);
    cr_assert(strstr(log, "rank out of range"), "root log:\n%s", log);
    cr_assert(strstr(log, "claims rank 0"), "root log:\n%s", log);
}

Test(bootstrap, missing_rank_fails_everyone_and_is_named, .timeout = 60)
{
    struct ranks R = {0};
    int port = free_port();
    FILE *root_err = tmpfile();
    cr_assert_not_null(root_err);
    struct rank_args a0 = {0, 3, port, "job-e", 2, fileno(root_err)};
    struct rank_args a1 = {1, 3, port, "job-e", 2, -1};
    double t0 = now_s();
    spawn_rank(&R, &a0);
    spawn_rank(&R, &a1); /* rank 2 never starts */
    collect(&R, 15);
    double secs = now_s() - t0;
    const char *log = read_file_fd(root_err);
    fclose(root_err);
    cr_assert(R.got[0] && R.got[1], "a rank hung (no report after %.1f s)", secs);
    cr_assert_eq(R.reps[0].rc_init, CRUX_ERR_TIMEOUT);
    cr_assert_eq(R.reps[1].rc_init, CRUX_ERR_BOOTSTRAP, "rank 1 must see the root give up");
    cr_assert_geq(R.reps[0].secs, 1.9);
    cr_assert_lt(R.reps[0].secs, 5.0);
    cr_assert_lt(R.reps[1].secs, 5.0);
    cr_assert(strstr(log, "rank 2 never arrived"), "root log:\n%s", log);
}

Test(bootstrap, dead_ring_peer_is_an_error_not_a_hang, .timeout = 60)
{
    /* two ranks form a job, then rank 1 exits: rank 0's next allgather must fail */
    int port = free_port();
    int p[2];
    cr_assert_eq(pipe(p), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        close(p[0]);
        struct crux_config cfg;
        struct crux_identity id;
        struct crux_peer_info peers[2];
        struct crux_bootstrap *bs = NULL;
        cfg_blank(&cfg);
        cfg.rank = 1, cfg.size = 2, cfg.bootstrap_timeout_s = 10;
        snprintf(cfg.root, sizeof(cfg.root), "127.0.0.1:%d", port);
        int rc = crux_identity_resolve(&cfg, &id);
        if (rc == CRUX_SUCCESS)
            rc = crux_bootstrap_init(&cfg, &id, peers, &bs);
        _exit(rc); /* the kernel closes its sockets */
    }
    close(p[1]);
    struct crux_config cfg;
    struct crux_identity id;
    struct crux_peer_info peers[2];
    struct crux_bootstrap *bs = NULL;
    cfg_blank(&cfg);
    cfg.rank = 0, cfg.size = 2, cfg.bootstrap_timeout_s = 10;
    snprintf(cfg.root, sizeof(cfg.root), "127.0.0.1:%d", port);
    crux_log_setup(CRUX_LOG_NONE, 0);
    cr_assert_eq(crux_identity_resolve(&cfg, &id), CRUX_SUCCESS);
    int rc = crux_bootstrap_init(&cfg, &id, peers, &bs);
    int status = 0;
    waitpid(pid, &status, 0);
    close(p[0]);
    cr_assert_eq(rc, CRUX_SUCCESS);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    double t0 = now_s();
    uint64_t v[2] = {1, 0};
    rc = crux_bootstrap_allgather(bs, v, sizeof(v[0]));
    cr_assert_eq(rc, CRUX_ERR_PEER);
    cr_assert_lt(now_s() - t0, 2.0);
    crux_bootstrap_close(bs);
}

/* ---------------- (f) crux-run ---------------- */

#include "harness.h"

static void run_crux_run(char *const argv[], double timeout_s, struct proc_result *res)
{
    cr_assert_eq(run_proc(argv, NULL, timeout_s, res), 0, "could not start %s", argv[0]);
    cr_assert_eq(res->timed_out, 0, "crux-run did not finish in %.0f s", timeout_s);
}

Test(crux_run, help)
{
    struct proc_result res;
    char *argv[] = {CRUX_RUN_PATH, "--help", NULL};
    run_crux_run(argv, 10, &res);
    cr_assert_eq(res.status, 0);
    cr_assert(strstr(res.out, "usage: crux-run"), "stdout: %s", res.out);
    proc_result_free(&res);
}

Test(crux_run, usage_errors_exit_2)
{
    static const char *const cases[][4] = {
        {"-n", "0", "true", NULL}, {"-n", "4097", "true", NULL}, {"-n", "2x", "true", NULL},
        {"-n", NULL, NULL, NULL},  {"--timeout", "-1", "true", NULL}, {"--bogus", "true", NULL, NULL},
        {"-n", "2", NULL, NULL}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *argv[6] = {CRUX_RUN_PATH};
        for (int k = 0; k < 4 && cases[i][k]; k++)
            argv[k + 1] = (char *)cases[i][k];
        struct proc_result res;
        run_crux_run(argv, 10, &res);
        cr_assert_eq(res.status, 2, "case %zu (%s %s): status %d", i, argv[1], argv[2] ? argv[2] : "",
                     res.status);
        cr_assert(strstr(res.err, "crux-run: "), "case %zu stderr: %s", i, res.err);
        proc_result_free(&res);
    }
}

Test(crux_run, program_that_cannot_run)
{
    struct proc_result res;
    char *argv[] = {CRUX_RUN_PATH, "-n", "2", "/nonexistent/crux-prog", NULL};
    run_crux_run(argv, 10, &res);
    cr_assert_neq(res.status, 0);
    cr_assert(strstr(res.err, "/nonexistent/crux-prog"), "stderr: %s", res.err);
    proc_result_free(&res);
}

Test(crux_run, sets_the_environment)
{
    struct proc_result res;
    char *argv[] = {CRUX_RUN_PATH, "-n", "2", "--", "sh", "-c",
                    "echo \"$CRUX_RANK $CRUX_SIZE $CRUX_LOCAL_RANK $CRUX_LOCAL_SIZE $CRUX_ROOT $CRUX_JOB_KEY\"",
                    NULL};
    run_crux_run(argv, 10, &res);
    cr_assert_eq(res.status, 0, "stderr: %s", res.err);
    int rank[2], size[2], lrank[2], lsize[2], port[2];
    char key[2][128];
    const char *line = res.out;
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(sscanf(line, "%d %d %d %d 127.0.0.1:%d %127s", &rank[i], &size[i], &lrank[i],
                            &lsize[i], &port[i], key[i]), 6, "output: %s", res.out);
        line = strchr(line, '\n');
        cr_assert_not_null(line);
        line++;
    }
    cr_assert_eq(rank[0] + rank[1], 1, "ranks 0 and 1, in any order");
    cr_assert_neq(rank[0], rank[1]);
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(size[i], 2);
        cr_assert_eq(lsize[i], 2);
        cr_assert_eq(lrank[i], rank[i]);
        cr_assert(port[i] > 0 && port[i] < 65536);
    }
    cr_assert_eq(port[0], port[1]);
    cr_assert_str_eq(key[0], key[1]);
    proc_result_free(&res);
}

Test(crux_run, failing_rank_sets_exit_status_and_is_named)
{
    struct proc_result res;
    char *argv[] = {CRUX_RUN_PATH, "-n", "3", "--grace", "5", "--", "sh", "-c",
                    "if [ \"$CRUX_RANK\" = 1 ]; then exit 3; fi; sleep 0.5", NULL};
    run_crux_run(argv, 20, &res);
    cr_assert_eq(res.status, 3, "stderr: %s", res.err);
    cr_assert(strstr(res.err, "crux-run: rank 1 (pid "), "stderr: %s", res.err);
    cr_assert(strstr(res.err, "exited with status 3"), "stderr: %s", res.err);
    cr_assert_lt(res.secs, 5.0, "the others finished on their own within the grace period");
    proc_result_free(&res);
}

Test(crux_run, stuck_ranks_are_stopped_after_the_grace_period)
{
    struct proc_result res;
    char *argv[] = {CRUX_RUN_PATH, "-n", "2", "--grace", "0.5", "--", "sh", "-c",
                    "if [ \"$CRUX_RANK\" = 0 ]; then exit 4; fi; exec sleep 30", NULL};
    run_crux_run(argv, 20, &res);
    cr_assert_eq(res.status, 4, "stderr: %s", res.err);
    cr_assert_lt(res.secs, 5.0);
    proc_result_free(&res);
}

Test(crux_run, killed_rank_names_the_signal)
{
    struct proc_result res;
    char *argv[] = {CRUX_RUN_PATH, "-n", "2", "--grace", "5", "--", "sh", "-c",
                    "if [ \"$CRUX_RANK\" = 1 ]; then kill -KILL $$; fi; sleep 0.3", NULL};
    run_crux_run(argv, 20, &res);
    cr_assert_eq(res.status, 128 + SIGKILL, "stderr: %s", res.err);
    cr_assert(strstr(res.err, "rank 1 (pid "), "stderr: %s", res.err);
    cr_assert(strstr(res.err, "killed by signal SIGKILL"), "stderr: %s", res.err);
    proc_result_free(&res);
}

Test(crux_run, timeout_kills_everything_with_124)
{
    struct proc_result res;
    char *argv[] = {CRUX_RUN_PATH, "--timeout", "1", "-n", "2", "sleep", "30", NULL};
    run_crux_run(argv, 20, &res);
    cr_assert_eq(res.status, 124, "stderr: %s", res.err);
    cr_assert(strstr(res.err, "timeout"), "stderr: %s", res.err);
    cr_assert_lt(res.secs, 6.0);
    proc_result_free(&res);
}

static int count_lines(const char *path, pid_t *pids, int max)
{
    FILE *f = fopen(path, "r");
    int n = 0, v;
    if (!f)
        return 0;
    while (n < max && fscanf(f, "%d", &v) == 1)
        pids[n++] = v;
    fclose(f);
    return n;
}

Test(crux_run, sigterm_is_forwarded_to_the_ranks, .timeout = 60)
{
    char dir[] = "/tmp/crux-bs-test-XXXXXX", path[64], errpath[64], script[160];
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/pids", dir);
    snprintf(errpath, sizeof(errpath), "%s/stderr", dir);
    snprintf(script, sizeof(script), "echo $$ >> %s; exec sleep 30", path);
    fflush(NULL);
    pid_t run = fork();
    cr_assert_geq(run, 0);
    if (run == 0) {
        if (!freopen(errpath, "w", stderr))
            _exit(126);
        execl(CRUX_RUN_PATH, CRUX_RUN_PATH, "-n", "3", "--", "sh", "-c", script, (char *)NULL);
        _exit(127);
    }
    pid_t pids[3] = {0};
    double deadline = now_s() + 10;
    while (count_lines(path, pids, 3) < 3 && now_s() < deadline)
        usleep(20000);
    int started = count_lines(path, pids, 3);
    kill(run, SIGTERM);
    int status = 0;
    pid_t w = 0;
    deadline = now_s() + 10;
    while ((w = waitpid(run, &status, WNOHANG)) == 0 && now_s() < deadline)
        usleep(20000);
    if (w == 0) { /* never leave it behind, even when the test fails */
        kill(run, SIGKILL);
        waitpid(run, &status, 0);
    }
    int alive = 0;
    for (int i = 0; i < started; i++) {
        if (kill(pids[i], 0) == 0) {
            alive++;
            kill(pids[i], SIGKILL);
        }
    }
    char err[4096] = "";
    FILE *ef = fopen(errpath, "r");
    if (ef) {
        err[fread(err, 1, sizeof(err) - 1, ef)] = '\0';
        fclose(ef);
    }
    unlink(path);
    unlink(errpath);
    rmdir(dir);
    cr_assert_eq(started, 3, "only %d ranks started", started);
    cr_assert_eq(w, run, "crux-run did not exit after SIGTERM");
    cr_assert(WIFEXITED(status), "crux-run itself was killed");
    cr_assert_eq(WEXITSTATUS(status), 128 + SIGTERM);
    cr_assert_eq(alive, 0, "%d ranks survived", alive);
    cr_assert(strstr(err, "killed by signal SIGTERM"), "stderr: %s", err);
}

Test(bootstrap, missing_ranks_are_listed_compactly, .timeout = 60)
{
    struct ranks R = {0};
    int port = free_port();
    FILE *root_err = tmpfile();
    cr_assert_not_null(root_err);
    struct rank_args a0 = {0, 4, port, "job-e2", 1, fileno(root_err)};
    struct rank_args a2 = {2, 4, port, "job-e2", 1, -1};
    spawn_rank(&R, &a0);
    spawn_rank(&R, &a2); /* ranks 1 and 3 never start */
    collect(&R, 15);
    const char *log = read_file_fd(root_err);
    fclose(root_err);
    cr_assert(R.got[0] && R.got[1]);
    cr_assert_eq(R.reps[0].rc_init, CRUX_ERR_TIMEOUT);
    cr_assert_eq(R.reps[1].rc_init, CRUX_ERR_BOOTSTRAP);
    cr_assert(strstr(log, "with 2 of 4 ranks: ranks 1,3 never arrived"), "root log:\n%s", log);
}
