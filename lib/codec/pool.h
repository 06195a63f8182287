/* pool.h - the encode worker pool: a few threads, started once, that split one kernel
 * call into disjoint ranges.
 *
 * Contract:
 *  - crux_pool_create(want, &p): want > 0 asks for that many threads in total (the
 *    caller counts as one), capped at the size of this thread's cpuset
 *    (sched_getaffinity); want == 0 means "the cpuset size". CRUX_ENCODE_THREADS
 *    (lib/config.c, field cfg.encode_threads) is what the compressor passes here.
 *    A result of 1 thread starts no thread at all: runs are plain calls.
 *  - crux_pool_run(p, fn, arg) calls fn(arg, part, nparts) for part = 0..nparts-1,
 *    nparts = crux_pool_size(p), part 0 on the calling thread, and returns when all
 *    parts are done (with a full memory barrier: the caller sees every write).
 *    p == NULL runs fn(arg, 0, 1). Not reentrant: one run at a time per pool (a
 *    compressor owns its pool; it is not thread-safe, like the communicator).
 *  - Idle workers sleep in the kernel (futex) after a spin of a few microseconds,
 *    so ranks that share cores are not slowed by parked workers.
 *  - Threads do not survive fork(): a pool (or a compressor holding one) created before a
 *    fork must not be run in the child; create it there.
 *  - Kernels split by disjoint ranges and combine in part order, so every codec result
 *    is bit-identical whatever the thread count (tests/test_codec_pool.c).
 *
 * Kernels that take a pool: crux_topk (via crux_topk_ws_use_pool), crux_topk_ef,
 * crux_qsgd_encode_pool.
 */
#ifndef CRUX_CODEC_POOL_H
#define CRUX_CODEC_POOL_H

#include <stddef.h>

#define CRUX_POOL_MAX 64 /* threads per pool, the caller included */

struct crux_pool;
typedef void (*crux_pool_fn)(void *arg, int part, int nparts);

int  crux_pool_create(int want, struct crux_pool **out);
int  crux_pool_size(const struct crux_pool *p);   /* threads incl. the caller; 1 for NULL */
void crux_pool_run(struct crux_pool *p, crux_pool_fn fn, void *arg);
void crux_pool_free(struct crux_pool *p);

/* Part `part` of `nparts` of [0, n) rounded to multiples of `align` elements (the last
 * part takes the rest): [*lo, *hi). */
void crux_pool_range(size_t n, size_t align, int part, int nparts, size_t *lo, size_t *hi);

#endif
