/*
 * crux.h - the public API of crux, an RDMA-native allreduce library.
 *
 * MPI-like: every call returns CRUX_SUCCESS (0) or a CRUX_ERR_* code; the log
 * line printed before a failing return says what failed, where and which peer.
 *
 * Semantics:
 *  - Results are bit-identical on all ranks, and from run to run for the same
 *    rank count, count, algorithm, transport and host layout (which ranks share
 *    a host). Reduction order: recursive
 *    doubling combines pairs of partial results (a op b == b op a exactly for
 *    every op crux offers, so both partners hold the same bits); the ring
 *    reduces each block in ring order starting at the block's owner + 1 and the
 *    owner's fully reduced block is then copied to every rank. hier: each node
 *    first reduces every slice in its intra-node ring order (owner + 1 first,
 *    owner last), then the node partials of each sub-block in ring order of the
 *    nodes (owner node + 1 first); tree: each tree node combines its own value,
 *    then its children's partials in increasing tree position (the first half of
 *    the vector follows tree 1, the second tree 2). Both copy the result out.
 *  - Any count (0 included), any rank count >= 1, any buffer alignment,
 *    CRUX_IN_PLACE for sendbuf.
 *  - float16/bfloat16 are reduced in float and rounded to nearest even after
 *    each pairwise combine.
 *  - No call hangs forever: a dead or stalled peer becomes CRUX_ERR_PEER or
 *    CRUX_ERR_TIMEOUT within CRUX_TIMEOUT seconds; ranks that call a collective
 *    with different count/dtype/op get CRUX_ERR_MISMATCH. After such an error
 *    the communicator may only be freed.
 *  - Collectives on communicators that share ranks must be issued in the same
 *    order on every rank (stricter than MPI for nonblocking ones; a violation is
 *    detected and reported as CRUX_ERR_MISMATCH, never silent corruption).
 *  - Not thread-safe per communicator (like MPI_THREAD_FUNNELED).
 */
#ifndef CRUX_H
#define CRUX_H

#include <stddef.h>
#include <stdint.h>

#include "crux_version.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    CRUX_SUCCESS = 0,
    CRUX_ERR_ARG,
    CRUX_ERR_NOMEM,
    CRUX_ERR_NOT_INITIALIZED,
    CRUX_ERR_BOOTSTRAP,
    CRUX_ERR_TRANSPORT,
    CRUX_ERR_PEER,
    CRUX_ERR_TIMEOUT,
    CRUX_ERR_MISMATCH, /* ranks disagree on count/dtype/op/config */
    CRUX_ERR_UNSUPPORTED,
    CRUX_ERR_INTERNAL
};

typedef struct crux_comm *crux_comm_t;

int crux_init(int *argc, char ***argv); /* argc/argv may be NULL */
int crux_finalize(void);
int crux_initialized(int *flag);
int crux_abort(crux_comm_t comm, int errorcode); /* ends every rank of comm, non-zero exit */
double crux_wtime(void);
const char *crux_error_string(int err);

crux_comm_t crux_comm_world(void);
#define CRUX_COMM_WORLD (crux_comm_world())
int crux_comm_rank(crux_comm_t, int *rank);
int crux_comm_size(crux_comm_t, int *size);
int crux_comm_split(crux_comm_t, int color, int key, crux_comm_t *newcomm);
int crux_comm_split_type_node(crux_comm_t, crux_comm_t *nodecomm); /* ranks on my host */
int crux_comm_free(crux_comm_t *);

/* color for crux_comm_split: this rank gets no communicator (*newcomm = NULL) */
#define CRUX_UNDEFINED (-32766)

typedef enum {
    CRUX_FLOAT,
    CRUX_DOUBLE,
    CRUX_INT32,
    CRUX_INT64,
    CRUX_UINT8,
    CRUX_FLOAT16,
    CRUX_BFLOAT16
} crux_datatype_t;
typedef enum { CRUX_SUM, CRUX_PROD, CRUX_MAX, CRUX_MIN } crux_op_t;
#define CRUX_IN_PLACE ((void *)1)

int crux_allreduce(const void *sendbuf, void *recvbuf, size_t count, crux_datatype_t, crux_op_t,
                   crux_comm_t);
int crux_reduce_scatter_block(const void *sendbuf, void *recvbuf, size_t recvcount,
                              crux_datatype_t, crux_op_t, crux_comm_t);
int crux_allgather(const void *sendbuf, size_t count, void *recvbuf, crux_datatype_t,
                   crux_comm_t);
int crux_bcast(void *buf, size_t count, crux_datatype_t, int root, crux_comm_t);
int crux_barrier(crux_comm_t);

typedef struct crux_request *crux_request_t;
#define CRUX_REQUEST_NULL ((crux_request_t)0)
int crux_iallreduce(const void *sendbuf, void *recvbuf, size_t count, crux_datatype_t, crux_op_t,
                    crux_comm_t, crux_request_t *req);
int crux_wait(crux_request_t *req);           /* sets *req = CRUX_REQUEST_NULL */
int crux_test(crux_request_t *req, int *done); /* on done, *req = CRUX_REQUEST_NULL */

/* Size in bytes of one element of a datatype (0 for an invalid one). */
size_t crux_datatype_size(crux_datatype_t dtype);

#ifdef __cplusplus
}
#endif
#endif /* CRUX_H */
