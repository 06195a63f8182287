/* verbs_mr_cache.c - page-range registration cache with LRU eviction.
 *
 * A linear scan from the most recently used entry: a job touches a handful of
 * gradient buffers, so the list is short and the hit is near the head. Ranges may
 * overlap (a longer buffer over an older shorter one): the kernel allows the same
 * pages in several MRs, and eviction keeps the total bounded.
 */
#include "verbs_mr_cache.h"

#include <stdlib.h>

#include "crux.h"
#include "log.h"
#include "verbs_memhook.h"

void mrc_init(struct mr_cache *c, size_t limit, size_t page, mrc_reg_fn reg, mrc_dereg_fn dereg,
              void *arg)
{
    *c = (struct mr_cache){.reg = reg, .dereg = dereg, .arg = arg, .limit = limit,
                           .page = page ? page : 4096, .mh_cursor = mh_cursor_now()};
}

static void lru_unlink(struct mr_cache *c, struct mrc_entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push_front(struct mr_cache *c, struct mrc_entry *e)
{
    e->prev = NULL;
    e->next = c->head;
    if (c->head)
        c->head->prev = e;
    c->head = e;
    if (!c->tail)
        c->tail = e;
}

static void entry_drop(struct mr_cache *c, struct mrc_entry *e)
{
    lru_unlink(c, e);
    mh_unwatch(e->watch);
    c->dereg(c->arg, e->mr);
    c->bytes -= e->end - e->start;
    c->nentries--;
    free(e);
}

/* Deregister idle entries, least recently used first, until under the bound. */
static void evict_over_limit(struct mr_cache *c)
{
    struct mrc_entry *e = c->tail;
    while (e && c->bytes > c->limit) {
        struct mrc_entry *prev = e->prev;
        if (e->refs == 0) {
            entry_drop(c, e);
            c->evictions++;
        }
        e = prev;
    }
}

int mrc_has_idle(const struct mr_cache *c)
{
    for (const struct mrc_entry *e = c->head; e; e = e->next)
        if (e->refs == 0)
            return 1;
    return 0;
}

/* The pages under [start, end) were released: idle registrations of them go now,
 * busy ones when their transfer releases them. */
static void invalidate_range(void *arg, uintptr_t start, uintptr_t end)
{
    struct mr_cache *c = arg;
    for (struct mrc_entry *e = c->head, *n; e; e = n) {
        n = e->next;
        if (e->start >= end || start >= e->end || e->stale)
            continue;
        c->invalidations++;
        if (e->refs == 0)
            entry_drop(c, e);
        else
            e->stale = 1;
    }
}

/* Apply what the memory hooks saw since the last lookup (one load if nothing). */
static void sync_released(struct mr_cache *c)
{
    if (c->mh_cursor == mh_cursor_now())
        return;
    if (mh_drain(&c->mh_cursor, invalidate_range, c))
        invalidate_range(c, 0, UINTPTR_MAX); /* notes were lost: trust nothing */
}

int mrc_acquire(struct mr_cache *c, const void *buf, size_t len, struct mrc_entry **out)
{
    sync_released(c);
    uintptr_t start = (uintptr_t)buf & ~(uintptr_t)(c->page - 1);
    uintptr_t end = ((uintptr_t)buf + (len ? len : 1) + c->page - 1) & ~(uintptr_t)(c->page - 1);
    for (struct mrc_entry *e = c->head; e; e = e->next)
        if (e->start <= start && end <= e->end && !e->stale) {
            c->hits++;
            e->refs++;
            if (e != c->head) {
                lru_unlink(c, e);
                lru_push_front(c, e);
            }
            *out = e;
            return CRUX_SUCCESS;
        }
    c->misses++;
    struct mrc_entry *e = calloc(1, sizeof(*e));
    if (!e) {
        crux_error(CRUX_SUBSYS_NET, "verbs: out of memory for a registration cache entry");
        return CRUX_ERR_NOMEM;
    }
    /* Make room first: pinned memory is what runs out (ulimit -l). */
    c->bytes += end - start;
    evict_over_limit(c);
    c->bytes -= end - start;
    int rc = c->reg(c->arg, (void *)start, end - start, &e->mr);
    if (rc == CRUX_ERR_NOMEM && mrc_has_idle(c)) {
        /* Out of pinnable memory (ulimit -l): drop every idle registration, retry once. */
        size_t limit = c->limit;
        c->limit = 0;
        evict_over_limit(c);
        c->limit = limit;
        rc = c->reg(c->arg, (void *)start, end - start, &e->mr);
    }
    if (rc != CRUX_SUCCESS) {
        free(e);
        return rc;
    }
    e->start = start;
    e->end = end;
    e->refs = 1;
    e->watch = mh_watch(start, end);
    c->bytes += end - start;
    c->nentries++;
    lru_push_front(c, e);
    *out = e;
    return CRUX_SUCCESS;
}

void mrc_release(struct mr_cache *c, struct mrc_entry *e)
{
    if (!e)
        return;
    e->refs--;
    if (e->stale && e->refs == 0)
        entry_drop(c, e);
    else if (c->bytes > c->limit)
        evict_over_limit(c);
}

void mrc_destroy(struct mr_cache *c)
{
    while (c->head)
        entry_drop(c, c->head);
}
