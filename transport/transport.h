/* transport.h - the transport vtable: moves bytes between two ranks, nothing else.
 *
 * Shaped like NCCL's net plugin, every operation non-blocking. An algorithm never
 * knows which transport carries a peer: lib/ picks one per peer (ctx->peer_tp).
 *
 * Message model: between an ordered pair of ranks (src -> dst) messages are
 * delivered in the order they were posted (FIFO), and receives are matched in the
 * order they were posted. Every message carries a header (struct crux_msg_hdr);
 * the receiver compares it with the header it expects and fails the receive with
 * CRUX_ERR_MISMATCH if they differ (ranks called different collectives, counts,
 * dtypes or ops), logging both headers decoded.
 *
 * Receive with reduce: a receive may ask for buf[i] = reduce_src[i] op incoming[i]
 * instead of a copy, applied fragment by fragment as bytes arrive, so a transport
 * with shared staging (shm) reduces straight out of it. Fragments always cut at
 * multiples of 64 bytes, so they never split an element.
 *
 * Streaming dependency: a send with dep != NULL may only transmit bytes
 * [0, dep->bytes_done) of its buffer; it progresses as the receive it depends on
 * advances. This is what pipelines the ring across steps without any extra copy.
 */
#ifndef CRUX_TRANSPORT_H
#define CRUX_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

#include "crux.h"

struct crux_ctx;

/* 32 bytes on every message. sig packs the collective's signature (lib/coll.c):
 * coll kind, algo, dtype, op and count; seq is the communicator's call number. */
struct crux_msg_hdr {
    uint32_t ctx_id; /* communicator context id */
    uint32_t tag;    /* step within the collective */
    uint64_t seq;    /* collective call number on that communicator */
    uint64_t sig;    /* coll kind | algo | dtype | op | count */
    uint64_t len;    /* payload bytes of this message */
};

enum crux_xfer_kind { CRUX_XFER_SEND = 1, CRUX_XFER_RECV = 2 };

struct crux_xfer {
    /* --- set by the caller before isend/irecv --- */
    int peer;                    /* world rank */
    void *buf;                   /* send: source; recv: destination */
    size_t len;                  /* bytes, == hdr.len */
    const void *reduce_src;      /* recv: non-NULL => buf = reduce_src op incoming */
    crux_datatype_t dtype;       /* for reduce */
    crux_op_t op;
    const struct crux_xfer *dep; /* send: stream behind this receive's bytes_done */
    struct crux_msg_hdr hdr;     /* send: sent as is; recv: expected */
    /* --- set by the transport --- */
    volatile size_t bytes_done;  /* recv: bytes landed (and reduced); send: bytes handed off */
    volatile int done;           /* 1 once complete (or failed) */
    int rc;                      /* CRUX_SUCCESS or the failure */
    int kind;                    /* enum crux_xfer_kind */
    struct crux_xfer *next;      /* transport queue link */
    uint64_t tp_priv[4];         /* transport scratch */
};

struct crux_tp;

/* Per-transport counters (optional op `stats`): what went where, so tests can
 * prove which path a message took. Eager bytes pass through a bounce slot (one
 * copy); rendezvous bytes go from user buffer to user buffer (zero copy); staged
 * bytes are those of a receive-with-reduce, written into a granted region and reduced
 * there in one pass (the receive buffer itself when it does not overlap the operand,
 * else a scratch window). */
struct crux_tp_stats {
    uint64_t tx_eager_msgs, tx_eager_bytes, tx_rdv_msgs, tx_rdv_bytes;
    uint64_t rx_eager_msgs, rx_eager_bytes, rx_rdv_msgs, rx_rdv_bytes, rx_staged_bytes;
    uint64_t mr_hits, mr_misses, mr_evictions;
    uint64_t mr_invalidations; /* cached registrations dropped because their memory was released */
};

struct crux_tp_ops {
    const char *name;
    /* Collective over ALL world ranks (uses ctx's bootstrap to exchange addresses):
     * set up endpoints for the world ranks in peers[0..npeers) (possibly none) and
     * connect them. On failure nothing is left behind. */
    int (*init)(struct crux_ctx *ctx, const int *peers, int npeers, struct crux_tp **out);
    /* Optional (NULL): register memory with the device; verbs only. */
    int (*reg_mr)(struct crux_tp *tp, void *buf, size_t len, void **mr);
    int (*dereg_mr)(struct crux_tp *tp, void *mr);
    /* Queue a transfer. May complete it immediately (x->done = 1). */
    int (*isend)(struct crux_tp *tp, struct crux_xfer *x);
    int (*irecv)(struct crux_tp *tp, struct crux_xfer *x);
    /* Advance every queued transfer once, without blocking. Returns CRUX_SUCCESS, or
     * CRUX_ERR_PEER / CRUX_ERR_TRANSPORT after logging which peer (rank, host) failed;
     * the transfers of a failed peer are completed with done = 1, rc = that error. */
    int (*progress)(struct crux_tp *tp);
    /* Sleep until this transport may have something new (data, credit, a peer
     * failure) or timeout_ms passes. Spurious wake-ups are fine. */
    int (*block)(struct crux_tp *tp, int timeout_ms);
    /* Release everything (idempotent across ranks: no communication required). */
    void (*close)(struct crux_tp *tp);
    /* Optional (NULL): the counters above since init. */
    int (*stats)(struct crux_tp *tp, struct crux_tp_stats *out);
};

/* Transports validate what they are handed with this (lib/coll.c): length against
 * the header, a buffer when there are bytes, a reducible dtype/op for a receive with
 * reduce. Logs and returns CRUX_ERR_ARG; tp names the transport, verb the operation. */
int crux_xfer_check(const struct crux_xfer *x, const char *tp, const char *verb);

/* Every transport object starts with this. */
struct crux_tp {
    const struct crux_tp_ops *ops;
    struct crux_ctx *ctx;
};

extern const struct crux_tp_ops crux_tp_shm_ops;
extern const struct crux_tp_ops crux_tp_tcp_ops;
extern const struct crux_tp_ops crux_tp_verbs_ops; /* CRUX_HAVE_VERBS builds only */

#endif
