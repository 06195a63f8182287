/* identity.c - who am I: rank, size, local rank, root address and job key, from
 * CRUX_* (crux-run or the user), then Slurm, then Open MPI, then PMI/PMIx env. */
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bootstrap.h"
#include "crux.h"
#include "log.h"

#define PORT_HASH_BASE 20000
#define PORT_HASH_SPAN 40000 /* derived ports lie in 20000..59999 */
#define ENV_ABSENT (-100)    /* a variable (or a launcher) is not there; not a CRUX_ERR_* */

uint64_t crux_boot_hash(const void *data, size_t len, uint64_t seed)
{
    /* FNV-1a, then a splitmix64 finaliser so close inputs give far-apart keys */
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ull ^ seed;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 31;
    return h;
}

static uint64_t hash_str(const char *s, uint64_t seed) { return crux_boot_hash(s, strlen(s), seed); }

/* Strict decimal: digits only (no sign, blanks or suffix), value in [lo, hi]. */
static int parse_int_strict(const char *s, long lo, long hi, long *out)
{
    if (!s || !*s)
        return -1;
    long v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        if (v > (LONG_MAX - 9) / 10)
            return -1;
        v = v * 10 + (*p - '0');
    }
    if (v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

/* Read an integer env variable: 0 = set and valid, ENV_ABSENT, or CRUX_ERR_ARG = garbage. */
static int env_int(const char *var, long lo, long hi, int *out)
{
    const char *s = getenv(var);
    if (!s)
        return ENV_ABSENT;
    long v;
    if (parse_int_strict(s, lo, hi, &v) != 0) {
        crux_error(CRUX_SUBSYS_BOOT, "%s='%s' is not an integer in %ld..%ld", var, s, lo, hi);
        return CRUX_ERR_ARG;
    }
    *out = (int)v;
    return 0;
}

/* Parse "host:port" (host: name or IPv4 literal). */
static int parse_root(const char *what, const char *s, struct crux_identity *id)
{
    const char *colon = strrchr(s, ':');
    long port;
    if (s[0] == '[' || (colon && memchr(s, ':', (size_t)(colon - s)))) {
        crux_error(CRUX_SUBSYS_BOOT, "%s='%s': IPv6 addresses are not supported by the bootstrap; "
                   "use an IPv4 address or a host name", what, s);
        return CRUX_ERR_ARG;
    }
    if (!colon || colon == s || (size_t)(colon - s) >= sizeof(id->root_host) ||
        parse_int_strict(colon + 1, 1, 65535, &port) != 0) {
        crux_error(CRUX_SUBSYS_BOOT, "%s='%s' is not host:port (port 1..65535)", what, s);
        return CRUX_ERR_ARG;
    }
    memcpy(id->root_host, s, (size_t)(colon - s));
    id->root_host[colon - s] = '\0';
    id->root_port = (int)port;
    return CRUX_SUCCESS;
}

/* rank/size/local rank from a launcher's variables; 0 = found, ENV_ABSENT = launcher absent. */
static int from_launcher(const char *rank_var, const char *size_var, const char *size_var2,
                         const char *local_var, struct crux_identity *id)
{
    int rc = env_int(rank_var, 0, INT_MAX - 1, &id->rank);
    if (rc != 0)
        return rc;
    rc = env_int(size_var, 1, INT_MAX, &id->size);
    if (rc == ENV_ABSENT && size_var2)
        rc = env_int(size_var2, 1, INT_MAX, &id->size);
    if (rc == ENV_ABSENT) {
        crux_error(CRUX_SUBSYS_BOOT, "%s is set but %s%s%s is not", rank_var, size_var,
                   size_var2 ? " / " : "", size_var2 ? size_var2 : "");
        return CRUX_ERR_ARG;
    }
    if (rc != 0)
        return rc;
    if (id->rank >= id->size) {
        crux_error(CRUX_SUBSYS_BOOT, "%s=%d is not below %s=%d", rank_var, id->rank,
                   getenv(size_var) ? size_var : size_var2, id->size);
        return CRUX_ERR_ARG;
    }
    id->local_rank = -1;
    if (local_var) {
        rc = env_int(local_var, 0, INT_MAX - 1, &id->local_rank);
        if (rc == CRUX_ERR_ARG)
            return rc;
    }
    return 0;
}

static int from_crux(const struct crux_config *cfg, struct crux_identity *id)
{
    if ((cfg->rank < 0) != (cfg->size < 0)) {
        crux_error(CRUX_SUBSYS_BOOT, "CRUX_RANK and CRUX_SIZE must be set together (CRUX_RANK=%d, CRUX_SIZE=%d; -1 = unset)",
                   cfg->rank, cfg->size);
        return CRUX_ERR_ARG;
    }
    if (cfg->size < 1 || cfg->rank >= cfg->size) {
        crux_error(CRUX_SUBSYS_BOOT, "CRUX_RANK=%d must be in 0..CRUX_SIZE-1 (CRUX_SIZE=%d)",
                   cfg->rank, cfg->size);
        return CRUX_ERR_ARG;
    }
    if (cfg->local_rank >= 0 && cfg->local_rank >= cfg->size) {
        crux_error(CRUX_SUBSYS_BOOT, "CRUX_LOCAL_RANK=%d is not below CRUX_SIZE=%d",
                   cfg->local_rank, cfg->size);
        return CRUX_ERR_ARG;
    }
    id->rank = cfg->rank;
    id->size = cfg->size;
    id->local_rank = cfg->local_rank >= 0 ? cfg->local_rank : -1;
    id->source = "crux";
    return CRUX_SUCCESS;
}

/* Slurm sets SLURM_PROCID=0 and SLURM_NTASKS=<job's tasks> in the batch script too,
 * where no step id exists; only srun tasks (job steps) carry a rank. */
static bool slurm_in_step(void)
{
    const char *s = getenv("SLURM_STEP_ID");
    if (!s)
        s = getenv("SLURM_STEPID");
    return s && *s;
}

/* mpirun inside an allocation starts its daemons with srun, one task per node; the
 * ranks inherit that step's SLURM_PROCID/NTASKS, and Open MPI's variables are theirs. */
static bool slurm_vars_describe_daemons(const struct crux_identity *slurm)
{
    const char *s = getenv("OMPI_COMM_WORLD_SIZE");
    long v;
    if (!s || parse_int_strict(s, 1, INT_MAX, &v) != 0 || v == slurm->size)
        return false;
    crux_debug(CRUX_SUBSYS_BOOT, "SLURM_NTASKS=%d but OMPI_COMM_WORLD_SIZE=%ld: started by mpirun "
               "in a Slurm job; using Open MPI's identity", slurm->size, v);
    return true;
}

/* Fill rank/size/local_rank/source. */
static int resolve_ranks(const struct crux_config *cfg, struct crux_identity *id)
{
    if (cfg->rank >= 0 || cfg->size >= 0)
        return from_crux(cfg, id);
    int rc = ENV_ABSENT;
    if (slurm_in_step())
        rc = from_launcher("SLURM_PROCID", "SLURM_NTASKS", "SLURM_NPROCS", "SLURM_LOCALID", id);
    else if (getenv("SLURM_PROCID"))
        crux_debug(CRUX_SUBSYS_BOOT, "SLURM_PROCID is set but no SLURM_STEP_ID: a batch script, "
                   "not an srun task; Slurm's task variables describe the job, not this process");
    if (rc == 0 && slurm_vars_describe_daemons(id))
        rc = ENV_ABSENT;
    if (rc == 0) {
        id->source = "slurm";
        const char *ompi = getenv("OMPI_COMM_WORLD_RANK");
        if (ompi && atoi(ompi) != id->rank)
            crux_warn(CRUX_SUBSYS_BOOT, "both Slurm (SLURM_PROCID=%d) and Open MPI (OMPI_COMM_WORLD_RANK=%s) "
                      "identities are set; using Slurm's (set CRUX_RANK/CRUX_SIZE to override)",
                      id->rank, ompi);
    }
    if (rc != ENV_ABSENT)
        return rc;
    rc = from_launcher("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", NULL,
                       "OMPI_COMM_WORLD_LOCAL_RANK", id);
    if (rc == 0)
        id->source = "ompi";
    if (rc != ENV_ABSENT)
        return rc;
    rc = from_launcher("PMI_RANK", "PMI_SIZE", NULL, "MPI_LOCALRANKID", id);
    if (rc == ENV_ABSENT)
        rc = from_launcher("PMIX_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", NULL, id);
    if (rc == 0)
        id->source = "pmi";
    if (rc != ENV_ABSENT)
        return rc;
    id->rank = 0;
    id->size = 1;
    id->local_rank = 0;
    id->source = "single";
    return CRUX_SUCCESS;
}

/* Slurm job and step ids as one string ("1234.0"); false outside Slurm. */
static bool slurm_job_step(char *buf, size_t len)
{
    const char *job = getenv("SLURM_JOB_ID");
    if (!job)
        job = getenv("SLURM_JOBID");
    if (!job || !*job)
        return false;
    const char *step = getenv("SLURM_STEP_ID");
    if (!step)
        step = getenv("SLURM_STEPID");
    snprintf(buf, len, "%s.%s", job, step ? step : "batch");
    return true;
}

/* First port of SLURM_STEP_RESV_PORTS ("12000-12010" or "12000"); ENV_ABSENT = not set. */
static int slurm_resv_port(int *port)
{
    const char *s = getenv("SLURM_STEP_RESV_PORTS");
    if (!s || !*s)
        return ENV_ABSENT;
    char first[16];
    size_t n = strcspn(s, "-,");
    long v;
    if (n == 0 || n >= sizeof(first))
        goto bad;
    memcpy(first, s, n);
    first[n] = '\0';
    if (parse_int_strict(first, 1, 65535, &v) != 0)
        goto bad;
    *port = (int)v;
    return 0;
bad:
    crux_error(CRUX_SUBSYS_BOOT, "SLURM_STEP_RESV_PORTS='%s' does not start with a port number", s);
    return CRUX_ERR_ARG;
}

static int root_from_slurm(struct crux_identity *id, const char *jobstep)
{
    const char *var = "SLURM_STEP_NODELIST";
    const char *list = getenv(var);
    if (!list) {
        var = "SLURM_JOB_NODELIST";
        list = getenv(var);
    }
    if (!list) {
        crux_error(CRUX_SUBSYS_BOOT, "under Slurm but neither SLURM_STEP_NODELIST nor SLURM_JOB_NODELIST "
                   "is set: set CRUX_ROOT=host:port");
        return CRUX_ERR_ARG;
    }
    char host[CRUX_HOST_MAX];
    if (crux_hostlist_first(list, host) != 0) {
        crux_error(CRUX_SUBSYS_BOOT, "%s='%s' is not a valid Slurm hostlist", var, list);
        return CRUX_ERR_ARG;
    }
    snprintf(id->root_host, sizeof(id->root_host), "%s", host);
    int rc = slurm_resv_port(&id->root_port);
    if (rc == CRUX_ERR_ARG)
        return rc;
    if (rc == ENV_ABSENT)
        id->root_port = PORT_HASH_BASE + (int)(hash_str(jobstep, 0) % PORT_HASH_SPAN);
    return CRUX_SUCCESS;
}

static int resolve_root(const struct crux_config *cfg, struct crux_identity *id,
                        const char *jobstep)
{
    if (cfg->root[0])
        return parse_root("CRUX_ROOT", cfg->root, id);
    bool mpi = strcmp(id->source, "ompi") == 0 || strcmp(id->source, "pmi") == 0;
    if (jobstep && !mpi && id->size > 1)
        return root_from_slurm(id, jobstep);
    if (id->size == 1)
        return CRUX_SUCCESS; /* a singleton needs no rendezvous */
    if (strcmp(id->source, "crux") == 0)
        crux_error(CRUX_SUBSYS_BOOT, "CRUX_SIZE=%d but CRUX_ROOT is not set: set CRUX_ROOT=host:port "
                   "where rank 0 listens (or start the job with crux-run)", id->size);
    else
        crux_error(CRUX_SUBSYS_BOOT, "launched by %s (rank %d of %d), which gives no rendezvous address: "
                   "set CRUX_ROOT=host:port to where rank 0 should listen", id->source, id->rank, id->size);
    return CRUX_ERR_ARG;
}

int crux_identity_resolve(const struct crux_config *cfg, struct crux_identity *id)
{
    if (!cfg || !id) {
        crux_error(CRUX_SUBSYS_BOOT, "crux_identity_resolve: NULL %s", cfg ? "identity" : "config");
        return CRUX_ERR_ARG;
    }
    memset(id, 0, sizeof(*id));
    int rc = resolve_ranks(cfg, id);
    if (rc != CRUX_SUCCESS)
        return rc;
    if (strlen(cfg->hostname) >= sizeof(id->host) || strpbrk(cfg->hostname, " \t\n")) {
        crux_error(CRUX_SUBSYS_BOOT, "CRUX_HOSTNAME='%s' is not a host name (at most %zu characters, "
                   "no spaces)", cfg->hostname, sizeof(id->host) - 1);
        return CRUX_ERR_ARG;
    }
    snprintf(id->host, sizeof(id->host), "%s", cfg->hostname);
    char jobstep[2 * CRUX_STR_MAX];
    bool slurm = slurm_job_step(jobstep, sizeof(jobstep));
    rc = resolve_root(cfg, id, slurm ? jobstep : NULL);
    if (rc != CRUX_SUCCESS)
        return rc;
    if (cfg->job_key[0]) {
        id->job_key = hash_str(cfg->job_key, 1);
    } else if (slurm && strcmp(id->source, "slurm") == 0) {
        /* not for mpirun's ranks: the batch step and srun's daemon step differ */
        id->job_key = hash_str(jobstep, 2);
    } else {
        char root[CRUX_STR_MAX + 16];
        snprintf(root, sizeof(root), "%s:%d", id->root_host, id->root_port);
        id->job_key = hash_str(root, 3);
    }
    crux_debug(CRUX_SUBSYS_BOOT, "identity from %s: rank %d of %d, local rank %d, root %s:%d, job key %016llx",
               id->source, id->rank, id->size, id->local_rank, id->root_host, id->root_port,
               (unsigned long long)id->job_key);
    return CRUX_SUCCESS;
}
