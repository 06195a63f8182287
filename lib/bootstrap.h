/* bootstrap.h - forming the job over TCP: identity, root rendezvous, peer table,
 * and out-of-band allgather/barrier used by transports during setup. */
#ifndef CRUX_BOOTSTRAP_H
#define CRUX_BOOTSTRAP_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

#define CRUX_BOOT_MAGIC 0x43525558u /* "CRUX" */
#define CRUX_BOOT_VERSION 1u
#define CRUX_HOST_MAX 64

/* Who this process is, resolved from CRUX_*, then Slurm, then Open MPI/PMI env. */
struct crux_identity {
    int rank, size, local_rank;   /* local_rank -1: the launcher did not say (see peers) */
    char root_host[CRUX_STR_MAX]; /* where rank 0 listens */
    int root_port;
    uint64_t job_key;             /* must match on every rank */
    const char *source;           /* "crux", "slurm", "ompi", "pmi", "single" */
    char host[CRUX_HOST_MAX];     /* CRUX_HOSTNAME, "" = gethostname() */
};

/* What every rank learns about every other rank. */
struct crux_peer_info {
    char host[CRUX_HOST_MAX];
    uint64_t host_hash; /* equal <=> same host (hostname + boot id) */
    int32_t pid;
    int32_t local_rank; /* index among ranks of the same host, by rank order */
    int32_t node_id;    /* index of the host, in order of first rank */
};

struct crux_bootstrap;

/* Resolve identity from cfg (environment). rank/size = 0/1 when nothing is set
 * (a singleton, like MPI's singleton init). */
int crux_identity_resolve(const struct crux_config *cfg, struct crux_identity *id);

/* 64-bit hash used for job keys, derived ports and host hashes (lib/identity.c). */
uint64_t crux_boot_hash(const void *data, size_t len, uint64_t seed);

/* Form the job: rank 0 listens on root_port, the others connect with backoff and
 * send magic, version, job key, rank, host, pid and their own listen address; the root
 * rejects (and logs) anything that does not match and keeps listening; after
 * cfg->bootstrap_timeout_s it fails naming the ranks that never arrived. Then the peer
 * table is distributed and every rank connects to its ring neighbours.
 * peers must have id->size entries and is filled on return. */
int crux_bootstrap_init(const struct crux_config *cfg, const struct crux_identity *id,
                        struct crux_peer_info *peers, struct crux_bootstrap **out);
/* data holds size * bytes; this rank's slot (data + rank*bytes) is filled on entry,
 * every slot on return. Ring-wise. Collective over all ranks. */
int crux_bootstrap_allgather(struct crux_bootstrap *bs, void *data, size_t bytes);
int crux_bootstrap_barrier(struct crux_bootstrap *bs);
/* Closes every socket. Until then rank 0 keeps its connection from every rank and
 * every rank its connection to rank 0 (a liveness channel; unused so far). */
void crux_bootstrap_close(struct crux_bootstrap *bs);

/* Hostlist expansion, Slurm syntax: "node[01-03,7],gpu5" -> node01 node02 node03 node7 gpu5.
 * Writes up to max names into out[][CRUX_HOST_MAX]; returns the count, or -1 on a
 * syntax error / overflow (a name longer than CRUX_HOST_MAX-1 is an error too).
 * For only the first name use crux_hostlist_first. */
int crux_hostlist_expand(const char *list, char (*out)[CRUX_HOST_MAX], int max);
/* First name of a hostlist (the whole list is syntax-checked first): 0, or -1. */
int crux_hostlist_first(const char *list, char out[CRUX_HOST_MAX]);

/* The bootstrap wire format: one hello per connecting rank, fixed size, little-endian. */
struct crux_boot_hello {
    uint32_t magic;
    uint32_t version;
    uint64_t job_key;
    int32_t rank;
    int32_t size;
    int32_t pid;
    uint16_t listen_port; /* this rank's own bootstrap listen port (ring) */
    uint16_t pad;
    uint8_t listen_addr[16]; /* IPv4 in the first 4 bytes (network order) */
    char host[CRUX_HOST_MAX];
    uint64_t host_hash;
};
/* Encode/decode a hello (decode validates magic/version/job key/rank range and
 * NUL-termination; returns CRUX_SUCCESS or CRUX_ERR_BOOTSTRAP with *why set). */
#define CRUX_BOOT_HELLO_BYTES 120 /* encoded size; equals sizeof(struct crux_boot_hello) */
void crux_boot_hello_encode(const struct crux_boot_hello *h, uint8_t buf[sizeof(struct crux_boot_hello)]);
int crux_boot_hello_decode(const uint8_t *buf, size_t len, uint64_t job_key, int size,
                           struct crux_boot_hello *h, const char **why);

#endif
