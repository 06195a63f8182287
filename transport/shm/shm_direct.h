/* shm_direct.h - queue-bypassing access to the shm mailboxes, for node-local
 * collectives (algo/shm_node.c).
 *
 * The generic path (isend/irecv + progress) costs ~1000 instructions per message,
 * ten times the cache-line round trip a small allreduce needs. These calls do the
 * same protocol as shm_chan.c (same slots, same headers, same credits, so FIFO and
 * the mismatch check hold) but synchronously and without a transfer queue. They
 * are only valid while nothing is queued to or from the peer: the caller checks
 * crux_shm_direct_ok() first and falls back to isend/irecv otherwise.
 */
#ifndef CRUX_SHM_DIRECT_H
#define CRUX_SHM_DIRECT_H

#include <stddef.h>

#include "transport/transport.h"

/* Is tp the shm transport? */
int crux_shm_is_shm(const struct crux_tp *tp);
/* 1 if direct calls to/from world rank `peer` keep FIFO order: no queued transfer,
 * no half-received staged message, peer alive. */
int crux_shm_direct_ok(struct crux_tp *tp, int peer);
/* Largest message the direct calls carry (the eager limit), 0 if peer is not shm. */
size_t crux_shm_direct_max(struct crux_tp *tp, int peer);
/* Send hdr + len bytes of buf (len == hdr->len <= direct_max) through the mailbox.
 * CRUX_SUCCESS when sent, CRUX_INPROGRESS when the channel is full right now. */
int crux_shm_send_now(struct crux_tp *tp, int peer, const struct crux_msg_hdr *hdr,
                      const void *buf);
/* Take the next message from peer if it is there: with a == NULL copy it to dst,
 * else dst = a op message (elementwise, dtype/op). CRUX_SUCCESS when landed,
 * CRUX_INPROGRESS when nothing has arrived or it came through staging (use irecv),
 * CRUX_ERR_MISMATCH (logged, message dropped) when its header differs from want. */
int crux_shm_recv_now(struct crux_tp *tp, int peer, const struct crux_msg_hdr *want, void *dst,
                      const void *a, crux_datatype_t dtype, crux_op_t op);

/* Both halves of a two-rank exchange in one call (algo/shm_node.c's small path):
 * if direct calls are allowed (crux_shm_direct_ok) and hdr->len fits the mailbox,
 * send hdr + buf (*sent = 1), then look for the peer's next message up to `polls`
 * times and land it like crux_shm_recv_now. CRUX_INPROGRESS with *sent == 0:
 * nothing was sent (queue busy, channel full); with *sent == 1: ours went out, the
 * peer's is not there yet (or came through staging). */
int crux_shm_xchg_now(struct crux_tp *tp, int peer, const struct crux_msg_hdr *hdr,
                      const void *buf, void *dst, const void *a, crux_datatype_t dtype,
                      crux_op_t op, unsigned polls, int *sent);

/* Staging fragments for node schedules that pipeline themselves (algo/shm_pipe.c:
 * two ranks, large messages). Same ring, stamps and credits as staged messages, consumed in
 * order, so FIFO with everything else on the pair holds; unlike a staged message
 * they carry no header slot: the schedule sends one mailbox message first.
 *  frag_tx: the next free outgoing slot (NULL while the peer holds all of them)
 *           and its capacity; frag_tx_post publishes n bytes of it.
 *  frag_rx: the next arrived fragment (NULL if none) and its length;
 *           frag_rx_done hands its slot back to the sender. */
size_t crux_shm_frag_bytes(struct crux_tp *tp, int peer); /* slot capacity */
size_t crux_shm_frag_depth(struct crux_tp *tp, int peer); /* slots per direction */
void *crux_shm_frag_tx(struct crux_tp *tp, int peer, size_t *cap);
void crux_shm_frag_tx_post(struct crux_tp *tp, int peer, size_t n);
const void *crux_shm_frag_rx(struct crux_tp *tp, int peer, size_t *n);
void crux_shm_frag_rx_done(struct crux_tp *tp, int peer);
/* Sleep (futex) until something arrives from peer (a mailbox message, a fragment,
 * a returned slot), timeout_ms passes, or a peer dies (CRUX_ERR_PEER, logged). */
int crux_shm_direct_block(struct crux_tp *tp, int peer, int timeout_ms);
/* Should a message of this many bytes land with non-temporal stores
 * (CRUX_SHM_NT_BYTES, off by default: see algo/shm_pipe.c)? */
int crux_shm_nt(const struct crux_ctx *ctx, size_t bytes);
/* memcpy, with non-temporal stores when nt. */
void crux_shm_copy(void *dst, const void *src, size_t n, int nt);

#endif
