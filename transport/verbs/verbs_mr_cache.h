/* verbs_mr_cache.h - registration cache: user buffers registered once, found again
 * by page range, the least recently used dropped beyond a byte bound.
 *
 * Device-free: registration goes through callbacks, so the policy is unit-tested
 * without an HCA (tests/test_verbs.c). Not thread-safe (one per transport).
 */
#ifndef CRUX_VERBS_MR_CACHE_H
#define CRUX_VERBS_MR_CACHE_H

#include <stddef.h>
#include <stdint.h>

/* Register [addr, addr+len) (page aligned); store the handle and rkey/lkey in *mr.
 * Returns CRUX_SUCCESS or a CRUX_ERR_* after logging. */
typedef int (*mrc_reg_fn)(void *arg, void *addr, size_t len, void **mr);
typedef void (*mrc_dereg_fn)(void *arg, void *mr);

struct mrc_entry {
    uintptr_t start, end;          /* page range [start, end) */
    void *mr;                      /* what reg returned */
    int refs;                      /* transfers using it: never evicted while > 0 */
    int stale;                     /* memory released while in use: dropped at release */
    int watch;                     /* verbs_memhook handle */
    struct mrc_entry *prev, *next; /* LRU list, most recent first */
};

struct mr_cache {
    mrc_reg_fn reg;
    mrc_dereg_fn dereg;
    void *arg;
    size_t limit;                  /* bytes kept registered when idle; 0 = no caching */
    size_t page;
    size_t bytes;                  /* registered now */
    struct mrc_entry *head, *tail;
    int nentries;
    uint64_t mh_cursor;            /* position in verbs_memhook's stream of released ranges */
    uint64_t hits, misses, evictions, invalidations;
};

void mrc_init(struct mr_cache *c, size_t limit, size_t page, mrc_reg_fn reg, mrc_dereg_fn dereg,
              void *arg);
/* The registration covering [buf, buf+len), registering its page range on a miss;
 * the entry is referenced until mrc_release. Registrations whose memory was
 * released since (verbs_memhook.h) are dropped first, never returned. */
int mrc_acquire(struct mr_cache *c, const void *buf, size_t len, struct mrc_entry **out);
void mrc_release(struct mr_cache *c, struct mrc_entry *e);
/* Any registration not in use (evictable)? reg may fail quietly with CRUX_ERR_NOMEM
 * then: acquire evicts them all and retries once. */
int mrc_has_idle(const struct mr_cache *c);
/* Deregister everything (entries still referenced too: the transport is closing). */
void mrc_destroy(struct mr_cache *c);

#endif
