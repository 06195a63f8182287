/* crux_internal.h - the library's shared state: context, communicators, collectives. */
#ifndef CRUX_INTERNAL_H
#define CRUX_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crux.h"
#include "bootstrap.h"
#include "config.h"
#include "log.h"
#include "transport/transport.h"

/* Internal return code: a schedule posted transfers and waits for them. Never
 * returned to users. */
#define CRUX_INPROGRESS (-1)

#define CRUX_TRY(call)                                                                            \
    do {                                                                                          \
        int rc_ = (call);                                                                         \
        if (rc_ != CRUX_SUCCESS) {                                                                \
            crux_debug(CRUX_SUBSYS_ALL, "%s:%d <- %s", __FILE__, __LINE__, #call);                \
            return rc_;                                                                           \
        }                                                                                         \
    } while (0)

#define CRUX_MAX_TRANSPORTS 4

/* The process-wide state between crux_init and crux_finalize. */
struct crux_ctx {
    struct crux_config cfg;
    struct crux_identity id;
    int rank, size;
    int local_rank, local_size, nnodes;
    struct crux_peer_info *peers;   /* [size] */
    struct crux_bootstrap *bs;
    struct crux_tp *tps[CRUX_MAX_TRANSPORTS];
    int ntps;
    struct crux_tp **peer_tp;       /* [size]: transport carrying each peer (NULL for self) */
    struct crux_comm *world;
    uint32_t next_ctx_id;           /* allocator for communicator context ids */
    int spin_us;                    /* resolved busy-poll budget */
    int yield_us;                   /* then sched_yield for this long (oversubscribed) */
    int broken;                     /* first fatal collective error: every later call fails */
    int finalizing;                 /* in crux_finalize: peers may legitimately exit */
    struct crux_request *req_head;  /* nonblocking requests in issue order; only the head runs */
    struct crux_request *req_tail;
    struct crux_request *req_free;  /* recycled request objects */
    struct crux_comm *zombies;      /* freed comms whose transfers may still be queued */
};

extern struct crux_ctx *crux_ctx_g; /* NULL when not initialized */

/* This rank's place in one of the two binary trees of algo/tree.c (comm ranks). */
struct crux_tree_links {
    int parent;                   /* -1 at the root */
    int nchild, child[2];         /* in increasing tree position */
    int height, child_height[2];  /* longest path down to a leaf (leaves: 0) */
    int root_height;
};

/* Which ranks of a communicator share a host (lib/topo.c), built once with the
 * communicator. Comm ranks throughout; nodes in order of their first rank. */
struct crux_topo {
    int nnodes;
    int my_node, local_rank, local_size; /* this rank's node, index in it, its size */
    int min_local, max_local;            /* fewest and most ranks on one node */
    int *node_of;                        /* [size] node of each rank */
    int *local_of;                       /* [size] index of each rank within its node */
    int *node_start;                     /* [nnodes + 1] node n = members[node_start[n]..] */
    int *members;                        /* [size] ranks grouped by node, comm order within */
    struct crux_tree_links tree[2];      /* double binary tree over members[] order */
};

/* A communicator: a group of world ranks with its own call sequence. */
struct crux_comm {
    struct crux_ctx *ctx;
    int rank, size;
    int *world_ranks;               /* [size] */
    uint32_t ctx_id;
    uint64_t seq;                   /* next collective call number */
    uint32_t nsplits;               /* children created, for child context ids */
    struct crux_comm *next_zombie;
    struct crux_topo *topo;         /* node grouping, built at creation */
    int shm_node;                   /* algo/shm_node.c: 0 unknown, 1 all ranks on shm, 2 not */
    size_t shm_node_max;            /* ... and the largest message its mailboxes carry */
    /* Scratch owned by the communicator, sized on first use and reused (no per-call
     * allocation once warm). */
    struct crux_xfer *xfers;        /* [nxfers_cap] */
    int nxfers_cap;
    void *scratch;
    size_t scratch_cap;
};

/* Which collective a schedule implements (goes into the message signature). */
enum crux_coll_kind {
    CRUX_COLL_ALLREDUCE = 1,
    CRUX_COLL_REDUCE_SCATTER,
    CRUX_COLL_ALLGATHER,
    CRUX_COLL_BCAST,
    CRUX_COLL_BARRIER,
    CRUX_COLL_SPLIT,
    CRUX_COLL_COMPRESSED /* lib/compress.c: index broadcasts, gTop-k trees */
};

/* One collective call in flight: arguments plus the schedule's state. */
struct crux_coll {
    struct crux_comm *comm;
    enum crux_coll_kind kind;
    int algo;                        /* enum crux_algo_kind actually used */
    const void *sendbuf;             /* never CRUX_IN_PLACE here: resolved by the caller */
    void *recvbuf;
    size_t count;                    /* elements: allreduce total, RSB per rank, allgather per rank, bcast total */
    crux_datatype_t dtype;
    crux_op_t op;
    size_t esize;
    int root;
    uint64_t seq;                    /* comm->seq at the call */
    uint64_t sig;                    /* packed signature, see crux_coll_sig() */
    /* schedule state */
    int (*fn)(struct crux_coll *op); /* the schedule (re-entered until done) */
    int phase;                       /* schedule's program counter */
    int step;
    int nxfers;                      /* xfers posted in the current phase */
    struct crux_xfer *xfers;         /* comm->xfers */
    uint64_t ctr[4];                 /* schedule's own counters (algo/shm_node.c) */
    int exclusive;                   /* 1: the only collective in flight on its context (api.c
                                      * calls, one request at a time), so a schedule may bypass
                                      * the transfer queues (algo/shm_node.c); 0 elsewhere */
    double deadline;                 /* crux_now() past which the call times out; 0 = not started (the wait loop sets it on first use) */
};

/* Nonblocking request. */
struct crux_request {
    struct crux_coll coll;
    struct crux_request *next;
    int rc;
    int started;
    int done;
};

/* --- lib/coll.c: signatures, transfers, waiting --- */
uint64_t crux_coll_sig(enum crux_coll_kind kind, int algo, crux_datatype_t dtype, crux_op_t op,
                       size_t count);
void crux_coll_sig_describe(uint64_t sig, char *buf, size_t len);
/* Make sure comm->xfers holds n entries and the scratch at least bytes (allocates
 * only when growing). */
int crux_comm_reserve(struct crux_comm *comm, int nxfers, size_t scratch_bytes);
/* Post a send/recv of the current collective to comm rank `peer`; tag = step id. */
int crux_coll_send(struct crux_coll *op, int peer, uint32_t tag, const void *buf, size_t len,
                   const struct crux_xfer *dep, struct crux_xfer **out);
int crux_coll_recv(struct crux_coll *op, int peer, uint32_t tag, void *buf, size_t len,
                   struct crux_xfer **out);
int crux_coll_recv_reduce(struct crux_coll *op, int peer, uint32_t tag, void *dst,
                          const void *src, size_t len, struct crux_xfer **out);
/* CRUX_SUCCESS when every xfer posted in this phase is done (op->nxfers reset to 0),
 * CRUX_INPROGRESS while some are pending, or the first failure. */
int crux_coll_phase_done(struct crux_coll *op);
/* Drive op->fn to completion: progress, spin briefly, then block; honours op->deadline. */
int crux_coll_run(struct crux_coll *op);
/* Nonblocking pieces of the same: if the current phase is done, run the schedule once
 * (posting the next phase); CRUX_INPROGRESS while transfers are pending. */
int crux_coll_step(struct crux_coll *op);
/* Wait (spin, then block) until the current phase completes or fails. */
int crux_coll_wait(struct crux_coll *op);

/* --- lib/progress.c --- */
int crux_progress(struct crux_ctx *ctx);            /* poll every transport once */
int crux_progress_block(struct crux_ctx *ctx, int timeout_ms); /* sleep in the transports */
double crux_now(void);                               /* monotonic seconds */

/* --- lib/comm.c --- */
int crux_comm_create(struct crux_ctx *ctx, int size, const int *world_ranks, int rank,
                     uint32_t ctx_id, struct crux_comm **out);
void crux_comm_destroy(struct crux_comm *comm);
/* Check the library is initialized and comm is usable. */
int crux_check_comm(crux_comm_t comm);

/* --- lib/topo.c --- */
int crux_topo_build(struct crux_comm *comm);
void crux_topo_free(struct crux_topo *t);
static inline int crux_topo_node_size(const struct crux_topo *t, int n)
{
    return t->node_start[n + 1] - t->node_start[n];
}
/* Comm rank of the l-th rank of node n. */
static inline int crux_topo_rank(const struct crux_topo *t, int n, int l)
{
    return t->members[t->node_start[n] + l];
}

static inline int crux_comm_world_rank(const struct crux_comm *c, int r) { return c->world_ranks[r]; }

#endif
