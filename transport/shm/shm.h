/* shm.h - shared-memory transport internals: segment layout, channels, state.
 *
 * Each rank owns ONE segment holding its inbound channels, one per local peer.
 * A channel (src -> owner) has:
 *   - a ring of 64-byte mailbox slots, one per message: [ctl | header | 32 B payload];
 *     ctl (stamp | length) is stored last with release semantics, so a message of
 *     up to 32 bytes is one cache line and one flag;
 *   - an eager data ring for messages over 32 bytes up to the eager threshold;
 *   - a staging ring of `depth` fragments (cfg.chunk_bytes each) for larger
 *     messages, each fragment published through a descriptor line.
 * Counters the receiver writes (credits) sit in their own line; the sender keeps
 * its produced counters privately. User data never lands in a slot's ctl word, so
 * a stale slot can never be mistaken for a new message (its stamp grows by the
 * ring size per lap).
 */
#ifndef CRUX_SHM_H
#define CRUX_SHM_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "crux_internal.h"

#define SHM_LINE 64
#define SHM_PAGE 4096
#define SHM_INLINE 32            /* payload bytes carried in a mailbox slot */
#define SHM_NSLOTS 64            /* messages in flight per directed pair */
#define SHM_STAGE_DEPTH 8        /* staging fragments in flight per directed pair */
#define SHM_STAGED 0xffffffffu   /* ctl length field: payload goes through staging */
#define SHM_MAGIC 0x6372757873686d32ull /* "cruxshm2": slot layout of 2026-12-08 */
#define SHM_EAGER_MAX (1u << 20) /* eager messages are bounded by the data ring */

/* One mailbox slot. For a staged message data[0..8) holds the 64-bit length.
 * data comes first: the reduce's masked 64-byte vector load of a short payload
 * then stays in this line. At offset 32 it reached into the next slot, which the
 * peer is about to write, and fetched that line across cores on every call
 * (2026-12-08, 2 ranks, 5 interleaved launches: 16 B 0.39-0.42 -> 0.33-0.35 us,
 * 32 B 0.38-0.44 -> 0.33-0.35). */
struct shm_slot {
    unsigned char data[SHM_INLINE];
    uint32_t ctx_id;
    uint32_t tag;
    uint64_t seq;
    uint64_t sig;
    _Atomic uint64_t ctl; /* low 32: stamp (message number + 1); high 32: len or SHM_STAGED */
} __attribute__((aligned(SHM_LINE)));
_Static_assert(offsetof(struct shm_slot, data) == 0 && sizeof(struct shm_slot) == SHM_LINE,
               "inline payload must start the slot's only line");

/* Written only by the receiver: how much it has consumed (the sender's credit). */
struct shm_credit {
    _Atomic uint64_t msgs;   /* mailbox slots consumed */
    _Atomic uint64_t data;   /* eager data ring bytes consumed */
    _Atomic uint64_t frags;  /* staging fragments consumed */
} __attribute__((aligned(SHM_LINE)));

/* Written only by the sender: fragment `stamp - 1` sits in this staging slot. */
struct shm_desc {
    _Atomic uint64_t stamp;
    uint64_t bytes;
} __attribute__((aligned(SHM_LINE)));

/* The owner's doorbell: a futex word peers bump when the owner announced sleep. */
struct shm_door {
    _Atomic uint32_t bell;
    _Atomic uint32_t sleeping;
    _Atomic uint32_t departed; /* set by close(): a later exit is not a crash */
} __attribute__((aligned(SHM_LINE)));

/* Where the channel from src_rank lives in the owner's segment. */
struct shm_dir {
    int32_t src_rank;
    uint32_t nslots;
    uint32_t depth;
    uint32_t pad;
    uint64_t off;         /* channel start (page aligned) */
    uint64_t data_bytes;  /* eager data ring, power of two */
    uint64_t stage_bytes; /* one staging fragment slot */
};

struct shm_seg_hdr {
    uint64_t magic;
    int32_t owner;
    int32_t nchan;
    uint64_t total_bytes;
    struct shm_door door;
    struct shm_dir dir[]; /* [nchan] */
};

/* Pointers into one channel (in the owner's segment, mapped by both sides). */
struct shm_chan {
    struct shm_credit *credit;
    struct shm_desc *desc;   /* [depth] */
    struct shm_slot *slots;  /* [nslots] */
    unsigned char *data;     /* [data_bytes] */
    unsigned char *stage;    /* [depth * stage_bytes] */
    uint32_t nslots, depth;
    uint64_t data_bytes, stage_bytes;
};

enum shm_death { SHM_DEATH_PIDFD = 0, SHM_DEATH_KILL0, SHM_DEATH_NONE };

enum shm_rx_state { SHM_RX_IDLE = 0, SHM_RX_STAGED, SHM_RX_DISCARD };

struct shm_peer {
    int rank;
    const struct crux_peer_info *info;
    struct shm_door *door;       /* the peer's doorbell (in its segment) */
    void *map;                   /* the peer's segment, mapped here */
    size_t map_len;
    struct shm_chan tx;          /* me -> peer, in the peer's segment */
    struct shm_chan rx;          /* peer -> me, in my segment */
    size_t eager_max;            /* largest message sent through the mailbox */
    /* sender side: produced counters and cached credits */
    uint64_t tx_msgs, tx_data, tx_frags;
    uint64_t cr_msgs, cr_data, cr_frags;
    /* receiver side: consumed counters */
    uint64_t rx_msgs, rx_data, rx_frags;
    uint64_t seen_msgs, seen_frags; /* arrivals a node schedule's wait has seen */
    int rx_state;
    uint64_t rx_discard;         /* staged bytes still to drop after a mismatch */
    struct crux_xfer *sq_head, *sq_tail, *rq_head, *rq_tail;
    int pidfd;
    int death;                   /* how to notice its death: enum shm_death */
    int dead;
    int owed;                    /* posted since the last fenced sleep check */
};

struct shm_stats {
    uint64_t mb_msgs, mb_bytes;  /* mailbox path */
    uint64_t st_msgs, st_bytes, st_frags; /* staging path */
    uint64_t copies, reduces;    /* deliveries out of shared memory */
    uint64_t wakes, sleeps;
};

struct shm_tp {
    struct crux_tp base;
    struct shm_peer *peers;      /* [npeers] */
    int npeers;
    int *peer_of;                /* [ctx->size]: index into peers, -1 */
    void *seg;                   /* my segment */
    size_t seg_len;
    struct shm_door *door;       /* mine */
    int ndead;
    uint64_t ncompleted;         /* queued transfers completed by progress() */
    uint64_t ncompleted_seen;    /* ... as of the last block() */
    int owed;                    /* some peer has owed set */
    unsigned poll_tick;
    uint64_t last_poll_ns;
    struct shm_stats st;
};

/* shm_seg.c: setup and teardown */
int shm_setup(struct shm_tp *tp, const int *peers, int npeers);
void shm_teardown(struct shm_tp *tp);

/* How a message lands: dtype/op/log2(element size) for a reduce, nt for copies
 * of huge receives. */
struct shm_land {
    crux_datatype_t dtype;
    crux_op_t op;
    unsigned shift;
    int nt;
};

/* shm_chan.c: the per-pair protocol. Each returns 1 when x completed (done set). */
int shm_send_step(struct shm_tp *tp, struct shm_peer *p, struct crux_xfer *x);
int shm_recv_step(struct shm_tp *tp, struct shm_peer *p, struct crux_xfer *x);
/* Drop the payload of a mismatched staged message as it arrives. */
void shm_discard_step(struct shm_tp *tp, struct shm_peer *p);
/* Is there anything for this peer's queues to do right now? */
int shm_peer_ready(struct shm_peer *p);
void shm_ring(struct shm_tp *tp, struct shm_peer *p);
void shm_settle(struct shm_tp *tp);
void shm_xfer_finish(struct crux_xfer *x, int rc);
/* Pieces of the above for shm_direct.c: post an eager message (len <= eager_max;
 * 1 = posted, 0 = no room); check an arrived slot's header (0 = mismatch, logged);
 * drop that message; land an arrived eager message (copy or dst = a op data) and
 * free its slot. */
int shm_post_eager(struct shm_tp *tp, struct shm_peer *p, const struct crux_msg_hdr *h,
                   const void *buf);
int shm_hdr_check(struct shm_peer *p, const struct shm_slot *s, uint64_t ctl,
                  const struct crux_msg_hdr *want);
void shm_skip_message(struct shm_tp *tp, struct shm_peer *p, const struct shm_slot *s, uint64_t ctl);
/* Copy with non-temporal stores (then sfence): for destinations far beyond the caches. */
void shm_copy_nt(unsigned char *dst, const unsigned char *src, size_t n);
void shm_take_eager(struct shm_tp *tp, struct shm_peer *p, const struct shm_slot *s, size_t len,
                    void *dst, const void *a, const struct shm_land *how);

#endif
