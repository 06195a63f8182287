/* config.h - every CRUX_* environment variable, parsed from one table (lib/config.c). */
#ifndef CRUX_CONFIG_H
#define CRUX_CONFIG_H

#include <stddef.h>
#include <stdio.h>

enum crux_transport_kind { CRUX_TP_AUTO = 0, CRUX_TP_SHM, CRUX_TP_TCP, CRUX_TP_VERBS };
enum crux_algo_kind { CRUX_ALGO_AUTO = 0, CRUX_ALGO_RING, CRUX_ALGO_RECDBL, CRUX_ALGO_HIER,
                      CRUX_ALGO_TREE, CRUX_ALGO_SHM };

#define CRUX_STR_MAX 256

struct crux_config {
    /* logging */
    int log_level;           /* CRUX_LOG_LEVEL: enum crux_log_level */
    unsigned log_subsys;     /* CRUX_LOG_SUBSYS: mask of enum crux_subsys */
    /* identity and bootstrap (set by crux-run / Slurm / MPI launchers) */
    int rank;                /* CRUX_RANK, -1 = not set */
    int size;                /* CRUX_SIZE, -1 = not set */
    int local_rank;          /* CRUX_LOCAL_RANK, -1 = not set */
    char root[CRUX_STR_MAX]; /* CRUX_ROOT host:port, "" = not set */
    char job_key[CRUX_STR_MAX]; /* CRUX_JOB_KEY, "" = derived */
    double bootstrap_timeout_s; /* CRUX_BOOTSTRAP_TIMEOUT */
    char hostname[CRUX_STR_MAX]; /* CRUX_HOSTNAME: host identity override, "" = gethostname() */
    /* transports */
    int transport;           /* CRUX_TRANSPORT: enum crux_transport_kind */
    char socket_ifname[CRUX_STR_MAX]; /* CRUX_SOCKET_IFNAME, NCCL syntax */
    size_t chunk_bytes;      /* CRUX_CHUNK_BYTES: pipeline fragment size */
    size_t shm_eager_bytes;  /* CRUX_SHM_EAGER_BYTES: mailbox threshold */
    size_t shm_nt_bytes;     /* CRUX_SHM_NT_BYTES: non-temporal landing threshold, 0 = never */
    int spin_us;             /* CRUX_SPIN_US: busy-poll before blocking, -1 = auto */
    /* verbs */
    char ib_hca[CRUX_STR_MAX]; /* CRUX_IB_HCA, NCCL syntax */
    int ib_gid_index;        /* CRUX_IB_GID_INDEX, -1 = auto */
    int ib_timeout;          /* CRUX_IB_TIMEOUT: 4.096 us * 2^n ACK timeout */
    int ib_retry_cnt;        /* CRUX_IB_RETRY_CNT */
    int ib_sl;               /* CRUX_IB_SL */
    int ib_tc;               /* CRUX_IB_TC */
    size_t ib_mr_cache_bytes; /* CRUX_IB_MR_CACHE_BYTES */
    /* collectives */
    int algo;                /* CRUX_ALGO: enum crux_algo_kind */
    size_t ring_min_bytes;   /* CRUX_RING_MIN_BYTES: auto switches recdbl -> ring at this size */
    double timeout_s;        /* CRUX_TIMEOUT */
    size_t compress_chunk_bytes; /* CRUX_COMPRESS_CHUNK_BYTES: compressed allreduce chunk */
    int encode_threads;      /* CRUX_ENCODE_THREADS: compressor worker pool, 0 = cpuset size */
};

enum crux_param_type {
    CRUX_PARAM_INT,     /* int, decimal */
    CRUX_PARAM_SIZE,    /* size_t, with optional K/M/G suffix (binary) */
    CRUX_PARAM_SECONDS, /* double > 0 */
    CRUX_PARAM_STRING,  /* char[CRUX_STR_MAX] */
    CRUX_PARAM_ENUM,    /* int index into a '|' separated list of names */
    CRUX_PARAM_LOGLEVEL,
    CRUX_PARAM_SUBSYS,
    CRUX_PARAM_IFLIST   /* NCCL-style interface/device list: [^][=]name[:port][,...] */
};

struct crux_param {
    const char *name;      /* without the CRUX_ prefix */
    enum crux_param_type type;
    const char *dflt;      /* default, as a string in the same syntax as the env */
    size_t offset;         /* offsetof(struct crux_config, field) */
    const char *choices;   /* ENUM: "auto|shm|tcp|verbs"; INT: "min..max" or NULL */
    const char *doc;
};

extern const struct crux_param crux_params[];
extern const size_t crux_nparams;

/* Fill cfg with defaults, then apply the environment. Logs each value set by the
 * environment at info. Returns CRUX_SUCCESS or CRUX_ERR_ARG naming the variable. */
int crux_config_load(struct crux_config *cfg);
/* Parse one value of one parameter into cfg (used by load and by tests). */
int crux_config_set(struct crux_config *cfg, const struct crux_param *p, const char *value);
/* Print the table: name, type, default, current value, doc (crux-info -c). */
void crux_config_print(FILE *out, const struct crux_config *cfg);

/* NCCL-style list matching: "eth,ib" prefixes; "^docker" excludes; "=eth0" exact.
 * Returns 1 if name[:port] is selected by the list (an empty list selects everything). */
int crux_iflist_match(const char *list, const char *name, int port);
/* Check list syntax; returns 0 if valid. */
int crux_iflist_valid(const char *list);

#endif
