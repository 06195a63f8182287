/* tcp.h - state shared by the TCP transport's files (not a public contract). */
#ifndef CRUX_TCP_H
#define CRUX_TCP_H

#include <net/if.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/epoll.h>

#include "crux_internal.h"
#include "tcp_wire.h"

/* Asked of the kernel for each socket's send and receive buffers (0: leave the
 * kernel's autotuning alone). */
#ifndef TCP_SOCKBUF_BYTES
#define TCP_SOCKBUF_BYTES (4u << 20)
#endif
/* Per-peer staging (cfg.chunk_bytes clamped): the first read of a message lands here
 * (header and, for short messages, payload: one recv per small message), early
 * arrivals wait here (bounded: when full, the peer's EPOLLIN is switched off until a
 * receive is posted), and it is the bounce buffer for receive-with-reduce. */
#define TCP_STAGE_MIN (64u << 10)
#define TCP_STAGE_MAX (512u << 10)
/* A plain receive at least this long is read straight into the user buffer
 * (only its header goes through staging). */
#define TCP_DIRECT_MIN (8u << 10)

/* Payload bytes per sendmsg: an eighth of the message, within these bounds. Each
 * call ends in a push, so the receiver starts copying out while the sender still
 * copies in (one huge write serialises the two); but every call also costs a push
 * and, on loopback, the receive path run in the sender's context, so long messages
 * take longer pieces (2 ranks on loopback, 2026-12-07, interleaved: 512 KiB pieces
 * for every message made 8-16 MiB allreduces 15-25% faster than 128 KiB ones, but
 * 2 MiB 20-40% slower). */
#ifndef TCP_TX_FRAG_MIN
#define TCP_TX_FRAG_MIN (128u << 10)
#endif
#ifndef TCP_TX_FRAG_MAX
#define TCP_TX_FRAG_MAX (512u << 10)
#endif

/* Bytes per recv into a user buffer: one huge copy holds the socket lock (arriving
 * segments pile up on the backlog) and delays the window update until its end,
 * stalling the sender; shorter reads keep both sides streaming. */
#ifndef TCP_RX_FRAG
#define TCP_RX_FRAG (128u << 10)
#endif

enum tcp_rx_state { RX_HDR = 0, RX_BODY, RX_DISCARD };

struct tcp_peer {
    int rank;
    int fd;
    const char *host;
    uint32_t ev_mask;   /* events currently registered with epoll */
    int failed;
    int active_idx;     /* position in tp->active, -1 when idle */
    /* send side: queue of posted sends; the head's encoded header lives in its tp_priv */
    struct crux_xfer *sq_head, *sq_tail;
    uint32_t shdr_sent; /* header bytes of the head send already written */
    int tx_blocked;     /* the socket said EAGAIN: wait for EPOLLOUT */
    /* receive side */
    struct crux_xfer *rq_head, *rq_tail;
    int rx_state;
    int rx_held;        /* staging full and no receive posted: EPOLLIN off */
    int bye_seen;       /* the peer's BYE was read: its end of stream is a departure */
    int departed;       /* ... and that end of stream came: only staged bytes remain */
    uint64_t discard_left;
    uint8_t *stage;
    size_t stage_cap, rpos, rend;
    /* counters */
    uint64_t tx_bytes, rx_bytes, tx_msgs, rx_msgs, reduce_calls;
};

struct crux_tcp {
    struct crux_tp base;
    int epfd;
    int npeers;
    struct tcp_peer *peers;   /* [npeers] */
    int *peer_of_rank;        /* [world size] -> index in peers, -1 if not ours */
    int *active;              /* [npeers] peers with queued transfers */
    int nactive;
    int nrx;                  /* peers with posted receives */
    int ntx_blocked;
    int failed_rc;            /* sticky: CRUX_ERR_PEER once a peer is gone */
    struct epoll_event *events; /* [npeers] */
    char ifname[IF_NAMESIZE];
};

/* tcp_conn.c: listen, exchange addresses, connect the mesh (collective). */
int tcp_init(struct crux_ctx *ctx, const int *peers, int npeers, struct crux_tp **out);

/* tcp.c */
void tcp_close(struct crux_tp *base);
const char *tcp_peer_host(const struct crux_ctx *ctx, int rank);

/* tcp_stream.c: per-peer queues and socket I/O. The progress functions return 0,
 * or -1 once the peer has failed (its transfers then completed with the error). */
int tcp_tx_progress(struct crux_tcp *tp, struct tcp_peer *p);
int tcp_rx_progress(struct crux_tcp *tp, struct tcp_peer *p, int idle_read);
void tcp_xfer_finish(struct crux_xfer *x, int rc);
void tcp_peer_activate(struct crux_tcp *tp, struct tcp_peer *p);
void tcp_peer_maybe_idle(struct crux_tcp *tp, struct tcp_peer *p);
void tcp_peer_set_events(struct crux_tcp *tp, struct tcp_peer *p, uint32_t mask);
int tcp_fail_peer_errno(struct crux_tcp *tp, struct tcp_peer *p, int err);

static inline size_t tcp_min(size_t a, size_t b) { return a < b ? a : b; }

#endif
