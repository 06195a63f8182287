/* algo.h - collective schedules: one file each, one signature (Open MPI coll/base style).
 *
 * A schedule is a re-entrant state machine over struct crux_coll: each call posts
 * the transfers of its next phase (crux_coll_send/recv/recv_reduce) and returns
 * CRUX_INPROGRESS; the driver (lib/coll.c) calls it again once every transfer of that
 * phase finished, with op->phase/op->step as the schedule left them. It returns CRUX_SUCCESS
 * when the result is in op->recvbuf, or an error. Blocking calls and iallreduce drive
 * the same functions (crux_coll_run / crux_test), so nonblocking is real.
 */
#ifndef CRUX_ALGO_H
#define CRUX_ALGO_H

#include "lib/crux_internal.h"

typedef int (*crux_coll_fn)(struct crux_coll *op);

/* allreduce */
int crux_allreduce_ring(struct crux_coll *op);   /* algo/ring.c: RS + AG, pipelined */
int crux_allreduce_recdbl(struct crux_coll *op); /* algo/recdbl.c: recursive doubling + fold */
int crux_allreduce_hier(struct crux_coll *op);   /* algo/hier.c: node RS, per-rail rings, node AG */
int crux_allreduce_tree(struct crux_coll *op);   /* algo/tree.c: double binary tree, pipelined */
int crux_allreduce_shm_node(struct crux_coll *op); /* algo/shm_node.c: one host, direct mailboxes */
/* algo/shm_pipe.c: two ranks of one host, large messages; shm_node.c enters it and
 * resumes it while op->phase == CRUX_SHM_PH_PIPE. */
#define CRUX_SHM_PH_PIPE 2
int crux_allreduce_shm_pipe(struct crux_coll *op);
/* other collectives */
int crux_reduce_scatter_ring(struct crux_coll *op); /* algo/ring.c */
int crux_allgather_ring(struct crux_coll *op);      /* algo/allgather.c */
int crux_bcast_binomial(struct crux_coll *op);      /* algo/bcast.c */
int crux_barrier_dissemination(struct crux_coll *op); /* algo/barrier.c */

/* algo/tree.c: this rank's links in both trees (t->tree), from node-major position
 * my_pos among P ranks; called once when a communicator is created. */
int crux_tree_build(struct crux_topo *t, int P, int my_pos);

/* algo/shm_node.c: does every rank of comm reach the others through shm (cached)?
 * And the largest message its mailboxes carry. */
int crux_shm_node_usable(struct crux_comm *comm);
size_t crux_shm_node_max_bytes(struct crux_comm *comm);

/* algo/select.c: the only place that chooses. Sets op->fn and op->algo. */
void crux_allreduce_select(struct crux_coll *op);
void crux_coll_select(struct crux_coll *op); /* every other kind */
const char *crux_algo_name(int algo);

#endif
