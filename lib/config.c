/* config.c - every CRUX_* environment variable, described once in crux_params[].
 *
 * Adding a knob is adding a row: parsing, validation, the "set by environment"
 * log line and `crux-info -c` all follow from the table. A bad value is an error
 * naming the variable and what is accepted, never a silent fallback.
 *
 * The `choices` column by type:
 *   INT     "min..max"
 *   SIZE    "min..max" in size syntax, optionally ", multiple of N"
 *   ENUM    "a|b|c"   (index = enum value)
 *   STRING  "host:port" to check that form, NULL for free text
 * An INT whose default is "" is optional: empty means "not set" (-1).
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "crux.h"
#include "log.h"

#define OFF(field) offsetof(struct crux_config, field)

const struct crux_param crux_params[] = {
    {"LOG_LEVEL", CRUX_PARAM_LOGLEVEL, "warn", OFF(log_level), "none|error|warn|info|debug|trace",
     "Messages of this severity and above are printed on stderr. info shows each setting taken "
     "from the environment and the transports chosen; debug and trace show per-operation detail."},
    {"LOG_SUBSYS", CRUX_PARAM_SUBSYS, "ALL", OFF(log_subsys), "INIT,BOOT,NET,SHM,COLL,CONFIG,CODEC",
     "Subsystems whose info/debug/trace messages are printed: a comma list of INIT, BOOT, NET, "
     "SHM, COLL, CONFIG, CODEC, or ALL; a leading ^ prints all but those listed (e.g. ^SHM). "
     "Errors and warnings are always printed."},
    {"RANK", CRUX_PARAM_INT, "", OFF(rank), "0..2147483647",
     "Rank of this process in the job (0..CRUX_SIZE-1). Set by crux-run; when not set, taken "
     "from Slurm (SLURM_PROCID) or the MPI launcher's environment."},
    {"SIZE", CRUX_PARAM_INT, "", OFF(size), "1..2147483647",
     "Number of processes in the job. Set by crux-run; when not set, taken from Slurm "
     "(SLURM_NTASKS) or the MPI launcher's environment."},
    {"LOCAL_RANK", CRUX_PARAM_INT, "", OFF(local_rank), "0..2147483647",
     "Rank of this process among the processes on its host. When not set, taken from Slurm "
     "(SLURM_LOCALID) or the MPI launcher, else derived at bootstrap."},
    {"ROOT", CRUX_PARAM_STRING, "", OFF(root), "host:port",
     "Address where rank 0 listens for the bootstrap: host:port, or [addr]:port for IPv6. When "
     "not set under Slurm: the first host of the job step, port derived from the job."},
    {"JOB_KEY", CRUX_PARAM_STRING, "", OFF(job_key), NULL,
     "String every rank of one job shares; a process presenting another key is rejected at "
     "bootstrap. When not set, derived from the Slurm job and step ids or from CRUX_ROOT."},
    {"HOSTNAME", CRUX_PARAM_STRING, "", OFF(hostname), NULL,
     "The host name used to group ranks into nodes (ranks with the same name share memory, "
     "others talk over the network); default gethostname(). For containers and testing: ranks "
     "of one machine given different names run the multi-node schedules over TCP."},
    {"BOOTSTRAP_TIMEOUT", CRUX_PARAM_SECONDS, "60", OFF(bootstrap_timeout_s), NULL,
     "Seconds crux_init waits for every rank to reach the root before failing with "
     "CRUX_ERR_BOOTSTRAP and naming the ranks that never arrived."},
    {"TRANSPORT", CRUX_PARAM_ENUM, "auto", OFF(transport), "auto|shm|tcp|verbs",
     "How ranks exchange data. auto: shared memory between ranks on the same host, the network "
     "(verbs if built and an HCA is found, else TCP) between hosts. shm, tcp or verbs force that "
     "transport for every peer (shm requires all ranks on one host)."},
    {"SOCKET_IFNAME", CRUX_PARAM_IFLIST, "", OFF(socket_ifname), NULL,
     "Network interfaces TCP may listen on (it takes the first up IPv4 one that matches): a "
     "comma list of name prefixes (eth,ib); a leading ^ excludes the listed prefixes "
     "(^docker,veth); a leading = takes exact names (=eth0). Empty: any interface but lo and "
     "docker*, which are used only when nothing else is up."},
    {"CHUNK_BYTES", CRUX_PARAM_SIZE, "256K", OFF(chunk_bytes), "4K..64M, multiple of 64",
     "Pipeline fragment size in bytes: large messages are sent and reduced in pieces of this "
     "size. Suffixes K, M, G are binary (256K = 262144 bytes)."},
    {"SHM_EAGER_BYTES", CRUX_PARAM_SIZE, "16K", OFF(shm_eager_bytes), "0..1M",
     "Shared-memory messages up to this many bytes go through a per-peer mailbox in one copy; "
     "larger ones through the chunked staging pipeline. 0 disables the mailbox."},
    {"SHM_NT_BYTES", CRUX_PARAM_SIZE, "0", OFF(shm_nt_bytes), NULL,
     "Shared-memory allreduces of at least this many bytes write their result with "
     "non-temporal stores (bypassing the cache); 0 = never. Pays only where stores to memory "
     "stream faster than they are written back from the cache: measure (bench/ref/run-ref.sh) "
     "before setting it."},
    {"SPIN_US", CRUX_PARAM_INT, "-1", OFF(spin_us), "-1..1000000",
     "Microseconds a waiting rank busy-polls before sleeping in the kernel. -1 = auto: 50 when "
     "every rank on the host has a core of its own, 0 when the host is oversubscribed (there a "
     "waiting rank yields its core to co-located ranks for up to 1 ms, then sleeps); 0 = no "
     "busy-polling."},
    {"IB_HCA", CRUX_PARAM_IFLIST, "", OFF(ib_hca), NULL,
     "RDMA devices (and ports) verbs may use; it takes the first active port that matches: a "
     "comma list of device-name prefixes (mlx5,rxe); a leading ^ excludes them (^mlx5_1); a "
     "leading = takes exact names (=mlx5_0); name:port picks one port (=mlx5_0:1). auto: the "
     "device nearest to the rank's CPU binding (hwloc). Empty: the first active port of any "
     "device."},
    {"IB_GID_INDEX", CRUX_PARAM_INT, "", OFF(ib_gid_index), "0..1023",
     "GID table index used to address peers. Not set: on Ethernet (RoCE) the first RoCEv2 GID "
     "holding an IPv4 address, on InfiniBand the port GID (index 0)."},
    {"IB_TIMEOUT", CRUX_PARAM_INT, "18", OFF(ib_timeout), "1..31",
     "Verbs ACK timeout exponent: a lost packet is retransmitted after 4.096 us * 2^n (18 = 1.07 "
     "s). With CRUX_IB_RETRY_CNT it bounds how long a dead peer takes to be noticed. Every "
     "rank must use the same value (checked when verbs connects)."},
    {"IB_RETRY_CNT", CRUX_PARAM_INT, "7", OFF(ib_retry_cnt), "0..7",
     "Verbs transport retries before a send fails with a retry-exceeded error. Every rank must "
     "use the same value (checked when verbs connects)."},
    {"IB_SL", CRUX_PARAM_INT, "0", OFF(ib_sl), "0..15",
     "InfiniBand service level of the queue pairs (on RoCE: the VLAN priority). Every rank must "
     "use the same value (checked when verbs connects)."},
    {"IB_TC", CRUX_PARAM_INT, "0", OFF(ib_tc), "0..255",
     "Traffic class of the queue pairs' GRH (on RoCE: the IP DSCP/ECN byte). Every rank must "
     "use the same value (checked when verbs connects)."},
    {"IB_MR_CACHE_BYTES", CRUX_PARAM_SIZE, "1G", OFF(ib_mr_cache_bytes), NULL,
     "Bytes of user buffers verbs keeps registered (pinned) for zero-copy transfers; the least "
     "recently used registrations are dropped beyond it. 0 registers per message. Pinned "
     "memory counts against ulimit -l."},
    {"ALGO", CRUX_PARAM_ENUM, "auto", OFF(algo), "auto|ring|recdbl|hier|tree|shm",
     "Allreduce algorithm. auto: recursive doubling below CRUX_RING_MIN_BYTES; from there on the "
     "double binary tree up to 1 MiB on 4 or more nodes, hierarchical (intra-node reduce-scatter, "
     "per-rail inter-node ring, intra-node allgather) on several nodes with several ranks each, "
     "else the pipelined ring (algo/select.c). ring, recdbl, hier or tree force that algorithm "
     "for every size (hier and tree also work on one node); shm forces the node-local mailbox "
     "path (algo/shm_node.c) wherever every rank of the communicator is on shared memory, up to "
     "CRUX_SHM_EAGER_BYTES (ring above)."},
    {"RING_MIN_BYTES", CRUX_PARAM_SIZE, "64K", OFF(ring_min_bytes), NULL,
     "With CRUX_ALGO=auto, allreduces of at least this many bytes (of one rank's buffer) use the "
     "ring, smaller ones recursive doubling (16x this on one host with more ranks than cores). "
     "Suffixes K, M, G are binary."},
    {"TIMEOUT", CRUX_PARAM_SECONDS, "300", OFF(timeout_s), NULL,
     "Seconds a collective call may take before failing with CRUX_ERR_TIMEOUT when a peer "
     "stalls; a peer that dies is reported as CRUX_ERR_PEER."},
    {"COMPRESS_CHUNK_BYTES", CRUX_PARAM_SIZE, "16M", OFF(compress_chunk_bytes), "256..1G, multiple of 4",
     "Compressed allreduce (crux_compressed_allreduce) cuts the gradient into chunks of this many "
     "bytes; each keeps density x its length entries, and encoding chunk i+1 overlaps sending "
     "chunk i. Compressors created with different values on different ranks fail to create."},
    {"ENCODE_THREADS", CRUX_PARAM_INT, "0", OFF(encode_threads), "0..64",
     "Threads a compressor encodes with (its worker pool, started once): 0 = the rank's share "
     "of its cpuset (cores / ranks on the host, at least 1); a larger value is capped at the cpuset size. "
     "Results are bit-identical for any value."},
};
const size_t crux_nparams = sizeof(crux_params) / sizeof(crux_params[0]);

/* CRUX_* names owned by crux-run and the tests, not by this table. */
static const char *const foreign_prefixes[] = {"CRUX_RUN_", "CRUX_TEST_", "CRUX_LOCAL_SIZE="};

/* ---- value parsers: return NULL on success, else why the value is bad ---- */

static const char *parse_int(const char *s, long *out)
{
    if (s[0] == '\0')
        return "empty";
    if (!isdigit((unsigned char)s[s[0] == '-']))
        return "not an integer";
    errno = 0;
    char *end;
    long v = strtol(s, &end, 10);
    if (*end != '\0')
        return "unexpected characters after the number";
    if (errno == ERANGE || v < INT_MIN || v > INT_MAX)
        return "too large";
    *out = v;
    return NULL;
}

/* Bytes with an optional binary K/M/G suffix, optionally followed by B or iB. */
static const char *parse_size(const char *s, unsigned long long *out)
{
    if (s[0] == '-')
        return "negative";
    if (!isdigit((unsigned char)s[0]))
        return s[0] ? "not a size" : "empty";
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno == ERANGE)
        return "too large";
    unsigned shift = 0;
    switch (*end) {
    case 'k': case 'K': shift = 10; break;
    case 'm': case 'M': shift = 20; break;
    case 'g': case 'G': shift = 30; break;
    }
    if (shift) {
        end++;
        if ((end[0] == 'i' || end[0] == 'I') && (end[1] == 'b' || end[1] == 'B'))
            end += 2;
    }
    if (*end == 'b' || *end == 'B')
        end++;
    if (*end != '\0')
        return "unexpected characters after the size";
    if (v > (SIZE_MAX >> shift))
        return "too large";
    *out = v << shift;
    return NULL;
}

static const char *parse_seconds(const char *s, double *out)
{
    if (!isdigit((unsigned char)s[0]) && s[0] != '.')
        return s[0] ? "not a number of seconds" : "empty";
    char *end;
    double v = strtod(s, &end);
    if (*end != '\0')
        return "unexpected characters after the number";
    if (!isfinite(v) || v <= 0)
        return "must be a finite number > 0";
    *out = v;
    return NULL;
}

/* Index of s in a '|' separated list, case-insensitive; -1 if absent. */
static int enum_index(const char *choices, const char *s)
{
    size_t len = strlen(s);
    for (int i = 0; *choices; i++) {
        size_t n = strcspn(choices, "|");
        if (n == len && strncasecmp(choices, s, n) == 0)
            return i;
        choices += n + (choices[n] == '|');
    }
    return -1;
}

/* "host:port" with a non-empty host ([..] for IPv6) and a port in 1..65535. */
static const char *check_host_port(const char *s)
{
    if (s[0] == '\0')
        return NULL; /* not set */
    const char *colon = strrchr(s, ':');
    if (!colon)
        return "missing :port";
    size_t hostlen = (size_t)(colon - s);
    if (hostlen == 0)
        return "empty host";
    if (s[0] == '[' ? hostlen < 3 || s[hostlen - 1] != ']' : memchr(s, ':', hostlen) != NULL)
        return "an IPv6 host must be in brackets, e.g. [::1]:port";
    for (size_t i = 0; i < hostlen; i++)
        if (isspace((unsigned char)s[i]))
            return "space in host";
    long port;
    if (parse_int(colon + 1, &port) || colon[1] == '-' || port < 1 || port > 65535)
        return "port must be a number in 1..65535";
    return NULL;
}

/* ---- the SIZE/INT range column ---- */

static int int_range(const char *choices, long *lo, long *hi)
{
    return choices && sscanf(choices, "%ld..%ld", lo, hi) == 2 ? 0 : -1;
}

static int size_range(const char *choices, size_t *lo, size_t *hi, size_t *mult)
{
    char a[32], b[32];
    unsigned long long x, y, m = 1;
    *mult = 1;
    if (!choices || sscanf(choices, "%31[^.]..%31[^,]", a, b) != 2)
        return -1;
    if (parse_size(a, &x) || parse_size(b, &y))
        return -1;
    const char *rest = strchr(choices, ',');
    if (rest && sscanf(rest, ", multiple of %llu", &m) != 1)
        return -1;
    *lo = (size_t)x, *hi = (size_t)y, *mult = (size_t)m;
    return 0;
}

/* ---- setting one parameter ---- */

static const char *set_int(const struct crux_param *p, const char *v, int *field)
{
    long x, lo = INT_MIN, hi = INT_MAX;
    if (v[0] == '\0' && p->dflt[0] == '\0') {
        *field = -1; /* optional and not set */
        return NULL;
    }
    const char *why = parse_int(v, &x);
    if (why)
        return why;
    if (p->choices && int_range(p->choices, &lo, &hi) == 0 && (x < lo || x > hi))
        return "out of range";
    *field = (int)x;
    return NULL;
}

static const char *set_size(const struct crux_param *p, const char *v, size_t *field)
{
    unsigned long long x;
    size_t lo = 0, hi = SIZE_MAX, mult = 1;
    const char *why = parse_size(v, &x);
    if (why)
        return why;
    if (p->choices && size_range(p->choices, &lo, &hi, &mult) == 0) {
        if (x < lo || x > hi)
            return "out of range";
        if (x % mult)
            return "not a multiple of the required granule";
    }
    *field = (size_t)x;
    return NULL;
}

static const char *set_string(const struct crux_param *p, const char *v, char *field)
{
    if (strlen(v) >= CRUX_STR_MAX)
        return "too long";
    if (p->choices && strcmp(p->choices, "host:port") == 0) {
        const char *why = check_host_port(v);
        if (why)
            return why;
    }
    memcpy(field, v, strlen(v) + 1);
    return NULL;
}

/* What a parameter accepts, for error messages. */
static void describe_accepted(const struct crux_param *p, char *buf, size_t len)
{
    switch (p->type) {
    case CRUX_PARAM_INT:
        snprintf(buf, len, "an integer in %s%s", p->choices ? p->choices : "int range",
                 p->dflt[0] == '\0' ? ", or empty for not set" : "");
        break;
    case CRUX_PARAM_SIZE:
        snprintf(buf, len, "a byte count with optional binary suffix K, M or G (e.g. 65536, 128K, "
                 "1M)%s%s", p->choices ? ", in " : "", p->choices ? p->choices : "");
        break;
    case CRUX_PARAM_SECONDS:
        snprintf(buf, len, "a number of seconds > 0 (e.g. 30 or 0.5)");
        break;
    case CRUX_PARAM_STRING:
        snprintf(buf, len, "%s of at most %d characters", p->choices ? p->choices : "a string",
                 CRUX_STR_MAX - 1);
        break;
    case CRUX_PARAM_ENUM:
    case CRUX_PARAM_LOGLEVEL:
        snprintf(buf, len, "one of %s (case-insensitive)", p->choices);
        break;
    case CRUX_PARAM_SUBSYS:
        snprintf(buf, len, "ALL or a comma list of %s, optionally prefixed by ^ to exclude them",
                 p->choices);
        break;
    case CRUX_PARAM_IFLIST:
        snprintf(buf, len, "a comma list of name prefixes, ^ to exclude, = for exact names, "
                 "name:port for device ports (e.g. eth,ib or ^docker or =mlx5_0:1)");
        break;
    }
}

int crux_config_set(struct crux_config *cfg, const struct crux_param *p, const char *value)
{
    if (!cfg || !p || !value) {
        crux_error(CRUX_SUBSYS_CONFIG, "crux_config_set: NULL %s",
                   !cfg ? "config" : !p ? "parameter" : "value");
        return CRUX_ERR_ARG;
    }
    char *field = (char *)cfg + p->offset;
    const char *why = NULL;
    unsigned mask;
    int idx;

    switch (p->type) {
    case CRUX_PARAM_INT:
        why = set_int(p, value, (int *)(void *)field);
        break;
    case CRUX_PARAM_SIZE:
        why = set_size(p, value, (size_t *)(void *)field);
        break;
    case CRUX_PARAM_SECONDS:
        why = parse_seconds(value, (double *)(void *)field);
        break;
    case CRUX_PARAM_STRING:
        why = set_string(p, value, field);
        break;
    case CRUX_PARAM_IFLIST:
        why = crux_iflist_valid(value) ? "malformed list" : set_string(p, value, field);
        break;
    case CRUX_PARAM_ENUM:
        if ((idx = enum_index(p->choices, value)) < 0)
            why = "unknown name";
        else
            *(int *)(void *)field = idx;
        break;
    case CRUX_PARAM_LOGLEVEL:
        if ((idx = crux_log_parse_level(value)) < 0)
            why = "unknown level";
        else
            *(int *)(void *)field = idx;
        break;
    case CRUX_PARAM_SUBSYS:
        if (crux_log_parse_subsys(value, &mask) != 0)
            why = "unknown or empty subsystem name";
        else
            *(unsigned *)(void *)field = mask;
        break;
    default:
        why = "parameter has an unknown type";
    }
    if (why) {
        char accepted[256];
        describe_accepted(p, accepted, sizeof(accepted));
        crux_error(CRUX_SUBSYS_CONFIG, "CRUX_%s=\"%s\" is invalid (%s): expected %s", p->name,
                   value, why, accepted);
        return CRUX_ERR_ARG;
    }
    return CRUX_SUCCESS;
}

/* ---- loading from the environment ---- */

static int config_defaults(struct crux_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    for (size_t i = 0; i < crux_nparams; i++)
        if (crux_config_set(cfg, &crux_params[i], crux_params[i].dflt) != CRUX_SUCCESS) {
            crux_error(CRUX_SUBSYS_CONFIG, "bug: default of CRUX_%s is invalid", crux_params[i].name);
            return CRUX_ERR_INTERNAL;
        }
    return CRUX_SUCCESS;
}

static const char *param_env(const struct crux_param *p, char *name, size_t len)
{
    snprintf(name, len, "CRUX_%s", p->name);
    return getenv(name);
}

static int is_log_param(const struct crux_param *p)
{
    return p->type == CRUX_PARAM_LOGLEVEL || p->type == CRUX_PARAM_SUBSYS;
}

/* Apply the environment to the logging rows (logging=1) or to the others. */
static int apply_env(struct crux_config *cfg, int logging, int parse, int announce)
{
    char name[80];
    for (size_t i = 0; i < crux_nparams; i++) {
        const struct crux_param *p = &crux_params[i];
        const char *v = param_env(p, name, sizeof(name));
        if (!v || is_log_param(p) != logging)
            continue;
        if (parse && crux_config_set(cfg, p, v) != CRUX_SUCCESS)
            return CRUX_ERR_ARG;
        if (announce)
            crux_info(CRUX_SUBSYS_CONFIG, "%s set by environment to %s", name, v);
    }
    return CRUX_SUCCESS;
}

/* Classic edit distance, for "did you mean" on misspelled variables. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t lb = strlen(b), row[80];
    if (lb >= 80)
        return SIZE_MAX;
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; a[i - 1]; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

static void warn_unknown_vars(void)
{
    for (char **e = environ; e && *e; e++) {
        const char *var = *e;
        if (strncmp(var, "CRUX_", 5) != 0)
            continue;
        int foreign = 0;
        for (size_t k = 0; k < sizeof(foreign_prefixes) / sizeof(foreign_prefixes[0]); k++)
            foreign |= strncmp(var, foreign_prefixes[k], strlen(foreign_prefixes[k])) == 0;
        char name[80];
        size_t n = strcspn(var + 5, "=");
        if (foreign || n >= sizeof(name))
            continue;
        memcpy(name, var + 5, n);
        name[n] = '\0';
        const char *closest = NULL;
        size_t best = n < 6 ? 2 : 3; /* suggest only names a typo or two away */
        int known = 0;
        for (size_t i = 0; i < crux_nparams && !known; i++) {
            size_t d = edit_distance(name, crux_params[i].name);
            known = d == 0;
            if (d < best)
                best = d, closest = crux_params[i].name;
        }
        if (known)
            continue;
        if (closest)
            crux_warn(CRUX_SUBSYS_CONFIG, "CRUX_%s is set but is not a crux parameter; did you "
                      "mean CRUX_%s? (crux-info -c lists them)", name, closest);
        else
            crux_warn(CRUX_SUBSYS_CONFIG, "CRUX_%s is set but is not a crux parameter "
                      "(crux-info -c lists them)", name);
    }
}

int crux_config_load(struct crux_config *cfg)
{
    if (!cfg) {
        crux_error(CRUX_SUBSYS_CONFIG, "crux_config_load: NULL config");
        return CRUX_ERR_ARG;
    }
    int rc = config_defaults(cfg);
    if (rc != CRUX_SUCCESS)
        return rc;
    /* Logging is configured by the table itself: set it up before anything else
     * is parsed, so the rest is logged at the level the user asked for. */
    rc = apply_env(cfg, 1, 1, 0);
    if (rc != CRUX_SUCCESS)
        return rc;
    crux_log_setup(cfg->log_level, cfg->log_subsys);
    apply_env(cfg, 1, 0, 1);
    rc = apply_env(cfg, 0, 1, 1);
    if (rc != CRUX_SUCCESS)
        return rc;
    warn_unknown_vars();
    return CRUX_SUCCESS;
}

/* ---- printing (crux-info -c) ---- */

static const char *type_name(enum crux_param_type t)
{
    switch (t) {
    case CRUX_PARAM_INT: return "integer";
    case CRUX_PARAM_SIZE: return "size in bytes";
    case CRUX_PARAM_SECONDS: return "seconds";
    case CRUX_PARAM_STRING: return "string";
    case CRUX_PARAM_ENUM: return "enum";
    case CRUX_PARAM_LOGLEVEL: return "log level";
    case CRUX_PARAM_SUBSYS: return "subsystem list";
    case CRUX_PARAM_IFLIST: return "interface list";
    }
    return "?";
}

/* Largest exact binary suffix: 131072 -> "128K". */
static void format_size(size_t v, char *buf, size_t len)
{
    static const char suffix[] = "GMK";
    for (int i = 0; i < 3; i++) {
        unsigned shift = 30 - 10 * (unsigned)i;
        if (v != 0 && v % ((size_t)1 << shift) == 0) {
            snprintf(buf, len, "%zu%c", v >> shift, suffix[i]);
            return;
        }
    }
    snprintf(buf, len, "%zu", v);
}

static void format_subsys(unsigned mask, char *buf, size_t len)
{
    static const unsigned bits[] = {CRUX_SUBSYS_INIT, CRUX_SUBSYS_BOOT, CRUX_SUBSYS_NET,
                                    CRUX_SUBSYS_SHM,  CRUX_SUBSYS_COLL, CRUX_SUBSYS_CONFIG,
                                    CRUX_SUBSYS_CODEC};
    unsigned known = 0;
    for (size_t i = 0; i < sizeof(bits) / sizeof(bits[0]); i++)
        known |= bits[i];
    /* All unnamed bits set means the mask came from ALL or ^list. */
    int negated = (mask | known) == CRUX_SUBSYS_ALL;
    size_t n = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof(bits) / sizeof(bits[0]) && n < len; i++)
        if ((!(mask & bits[i])) == negated)
            n += (size_t)snprintf(buf + n, len - n, "%s%s", n ? "," : negated ? "^" : "",
                                  crux_log_subsys_name(bits[i]));
    if (buf[0] == '\0')
        snprintf(buf, len, "%s", negated ? "ALL" : "^ALL");
}

static void format_value(const struct crux_param *p, const struct crux_config *cfg, char *buf,
                         size_t len)
{
    const char *field = (const char *)cfg + p->offset;
    int i = 0;
    if (p->type == CRUX_PARAM_INT || p->type == CRUX_PARAM_ENUM || p->type == CRUX_PARAM_LOGLEVEL)
        i = *(const int *)(const void *)field;
    switch (p->type) {
    case CRUX_PARAM_INT:
        if (i == -1 && p->dflt[0] == '\0')
            buf[0] = '\0';
        else
            snprintf(buf, len, "%d", i);
        break;
    case CRUX_PARAM_SIZE:
        format_size(*(const size_t *)(const void *)field, buf, len);
        break;
    case CRUX_PARAM_SECONDS:
        snprintf(buf, len, "%g", *(const double *)(const void *)field);
        break;
    case CRUX_PARAM_STRING:
    case CRUX_PARAM_IFLIST:
        snprintf(buf, len, "%s", field);
        break;
    case CRUX_PARAM_ENUM: {
        const char *c = p->choices;
        for (int k = 0; k < i && *c; k++)
            c += strcspn(c, "|") + (c[strcspn(c, "|")] == '|');
        snprintf(buf, len, "%.*s", (int)strcspn(c, "|"), c);
        break;
    }
    case CRUX_PARAM_LOGLEVEL: {
        static const char *const names[] = {"none", "error", "warn", "info", "debug", "trace"};
        snprintf(buf, len, "%s", i >= 0 && i <= CRUX_LOG_TRACE ? names[i] : "?");
        break;
    }
    case CRUX_PARAM_SUBSYS:
        format_subsys(*(const unsigned *)(const void *)field, buf, len);
        break;
    }
}

/* "# "-prefixed lines of at most ~78 columns. */
static void print_wrapped(FILE *out, const char *text)
{
    const int width = 76;
    while (*text) {
        int n = (int)strlen(text);
        if (n > width) {
            n = width;
            while (n > 0 && text[n] != ' ')
                n--;
            if (n == 0)
                n = width;
        }
        fprintf(out, "# %.*s\n", n, text);
        text += n;
        while (*text == ' ')
            text++;
    }
}

void crux_config_print(FILE *out, const struct crux_config *cfg)
{
    char value[CRUX_STR_MAX + 32];
    for (size_t i = 0; i < crux_nparams; i++) {
        const struct crux_param *p = &crux_params[i];
        fprintf(out, "#\n");
        print_wrapped(out, p->doc);
        fprintf(out, "#\n# type: %s", type_name(p->type));
        if (p->choices)
            fprintf(out, ", accepted: %s", p->choices);
        fprintf(out, "; default: %s\n#\n",
                p->dflt[0] ? p->dflt : p->type == CRUX_PARAM_IFLIST ? "empty (any)" : "not set");
        format_value(p, cfg, value, sizeof(value));
        fprintf(out, "CRUX_%s=%s\n\n", p->name, value);
    }
}

/* ---- NCCL-style interface/device lists: [^][=]name[:port][,...] ---- */

struct iflist_entry {
    const char *name;
    size_t len;
    int port; /* -1: any port */
};

/* Parse the n characters at s as name[:port]; -1 if malformed. */
static int iflist_entry_parse(const char *s, size_t n, struct iflist_entry *e)
{
    const char *colon = memchr(s, ':', n);
    e->name = s;
    e->len = colon ? (size_t)(colon - s) : n;
    e->port = -1;
    if (e->len == 0)
        return -1;
    for (size_t i = 0; i < e->len; i++)
        if (isspace((unsigned char)s[i]) || s[i] == '^' || s[i] == '=')
            return -1;
    if (colon) {
        size_t digits = n - e->len - 1;
        long port = 0;
        if (digits == 0 || digits > 5)
            return -1;
        for (size_t i = 0; i < digits; i++) {
            if (!isdigit((unsigned char)colon[1 + i]))
                return -1;
            port = port * 10 + (colon[1 + i] - '0');
        }
        if (port < 1 || port > 65535)
            return -1;
        e->port = (int)port;
    }
    return 0;
}

static const char *iflist_modifiers(const char *list, int *exclude, int *exact)
{
    *exclude = list[0] == '^';
    list += *exclude;
    *exact = list[0] == '=';
    return list + *exact;
}

int crux_iflist_valid(const char *list)
{
    int exclude, exact;
    if (!list)
        return -1;
    if (list[0] == '\0')
        return 0;
    const char *p = iflist_modifiers(list, &exclude, &exact);
    for (;;) {
        struct iflist_entry e;
        size_t n = strcspn(p, ",");
        if (iflist_entry_parse(p, n, &e) != 0)
            return -1;
        if (p[n] == '\0')
            return 0;
        p += n + 1;
    }
}

int crux_iflist_match(const char *list, const char *name, int port)
{
    int exclude, exact, hit = 0;
    if (!name)
        return 0;
    if (!list || list[0] == '\0')
        return 1;
    const char *p = iflist_modifiers(list, &exclude, &exact);
    size_t name_len = strlen(name);
    while (!hit) {
        struct iflist_entry e;
        size_t n = strcspn(p, ",");
        if (iflist_entry_parse(p, n, &e) == 0 && (e.port == -1 || e.port == port) &&
            (exact ? name_len == e.len : name_len >= e.len) && strncmp(name, e.name, e.len) == 0)
            hit = 1;
        if (p[n] == '\0')
            break;
        p += n + 1;
    }
    return exclude ? !hit : hit;
}
