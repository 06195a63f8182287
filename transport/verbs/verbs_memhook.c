/* verbs_memhook.c - the memory-release hooks of the registration cache (see
 * verbs_memhook.h for why they exist).
 *
 * Watched ranges live in a fixed table of atomics that any thread may scan; the
 * hooks append released ranges that overlap one to a ring of MH_RING notes, which
 * the cache reads with its own cursor (one atomic load per lookup when nothing
 * happened). A note that is overwritten before it is read, or caught half
 * written, turns into "assume everything went": correct, merely slower.
 */
#include "verbs_memhook.h"

#include <dlfcn.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MH_RING 256u

/* Hooks can run before a sanitizer runtime has set itself up (its own start-up
 * frees memory): nothing on their path may be instrumented. */
#define MH_NOSAN __attribute__((no_sanitize_address, no_sanitize_undefined))

struct mh_note {
    _Atomic uint64_t seq; /* index + 1 once written */
    _Atomic uintptr_t start, end;
};

static struct {
    _Atomic uintptr_t start[MH_NWATCH], end[MH_NWATCH]; /* [0, 0) = free slot */
    _Atomic int hw;                                    /* slots in use are below this */
    _Atomic int nlive;                                 /* watched ranges, table + span */
    _Atomic int nspan;                                 /* ranges that did not fit the table */
    _Atomic uintptr_t span_lo, span_hi;                /* covers all of those */
    atomic_flag lock;                                  /* slot allocation (cache side only) */
    _Atomic uint64_t head;                             /* notes written */
    struct mh_note ring[MH_RING];
} mh = {.lock = ATOMIC_FLAG_INIT, .span_lo = UINTPTR_MAX};

/* ---------- the cache's side ---------- */

static void mh_lock(void)
{
    while (atomic_flag_test_and_set_explicit(&mh.lock, memory_order_acquire))
        ;
}

static void mh_unlock(void) { atomic_flag_clear_explicit(&mh.lock, memory_order_release); }

int mh_watch(uintptr_t start, uintptr_t end)
{
    int h = -1;
    mh_lock();
    atomic_fetch_add(&mh.nlive, 1);
    for (int i = 0; i < MH_NWATCH && h < 0; i++)
        if (atomic_load_explicit(&mh.end[i], memory_order_relaxed) == 0)
            h = i;
    if (h >= 0) {
        atomic_store(&mh.start[h], start);
        atomic_store(&mh.end[h], end);
        if (h >= atomic_load(&mh.hw))
            atomic_store(&mh.hw, h + 1);
    } else {
        /* Table full: widen the span every hook also checks. */
        atomic_fetch_add(&mh.nspan, 1);
        if (start < atomic_load(&mh.span_lo))
            atomic_store(&mh.span_lo, start);
        if (end > atomic_load(&mh.span_hi))
            atomic_store(&mh.span_hi, end);
    }
    mh_unlock();
    return h;
}

void mh_unwatch(int h)
{
    mh_lock();
    if (h >= 0) {
        atomic_store(&mh.end[h], 0);
        atomic_store(&mh.start[h], 0);
    } else if (atomic_fetch_sub(&mh.nspan, 1) == 1) {
        atomic_store(&mh.span_lo, UINTPTR_MAX);
        atomic_store(&mh.span_hi, 0);
    }
    atomic_fetch_sub(&mh.nlive, 1);
    mh_unlock();
}

uint64_t mh_cursor_now(void) { return atomic_load_explicit(&mh.head, memory_order_acquire); }

int mh_drain(uint64_t *cursor, void (*fn)(void *arg, uintptr_t start, uintptr_t end), void *arg)
{
    uint64_t head = atomic_load_explicit(&mh.head, memory_order_acquire), c = *cursor;
    *cursor = head;
    if (head - c > MH_RING)
        return 1;
    for (; c != head; c++) {
        struct mh_note *n = &mh.ring[c % MH_RING];
        if (atomic_load_explicit(&n->seq, memory_order_acquire) != c + 1)
            return 1; /* being written or already overwritten */
        uintptr_t s = atomic_load_explicit(&n->start, memory_order_relaxed);
        uintptr_t e = atomic_load_explicit(&n->end, memory_order_relaxed);
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&n->seq, memory_order_relaxed) != c + 1)
            return 1;
        fn(arg, s, e);
    }
    return 0;
}

/* ---------- the hooks' side: any thread, no allocation, no lock ---------- */

MH_NOSAN static int mh_overlaps(uintptr_t s, uintptr_t e)
{
    if (atomic_load_explicit(&mh.nlive, memory_order_acquire) == 0)
        return 0;
    int hw = atomic_load_explicit(&mh.hw, memory_order_acquire);
    for (int i = 0; i < hw; i++) {
        uintptr_t a = atomic_load_explicit(&mh.start[i], memory_order_relaxed);
        uintptr_t b = atomic_load_explicit(&mh.end[i], memory_order_relaxed);
        if (a < e && s < b)
            return 1;
    }
    return atomic_load_explicit(&mh.nspan, memory_order_relaxed) > 0 &&
           atomic_load_explicit(&mh.span_lo, memory_order_relaxed) < e &&
           s < atomic_load_explicit(&mh.span_hi, memory_order_relaxed);
}

/* Called before the memory goes: a reader never trusts it after seeing the note. */
MH_NOSAN static void mh_released(const void *addr, size_t len)
{
    uintptr_t s = (uintptr_t)addr, e = s + len;
    if (len == 0 || e < s || !mh_overlaps(s, e))
        return;
    uint64_t i = atomic_fetch_add_explicit(&mh.head, 1, memory_order_acq_rel);
    struct mh_note *n = &mh.ring[i % MH_RING];
    atomic_store_explicit(&n->seq, 0, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&n->start, s, memory_order_relaxed);
    atomic_store_explicit(&n->end, e, memory_order_relaxed);
    atomic_store_explicit(&n->seq, i + 1, memory_order_release);
}

static _Thread_local volatile int resolving; /* dlsym may free (or unmap) itself */

/* The next definition (libc's, or a sanitizer's), found once. NULL while this
 * thread is inside that lookup: the caller then leaks or makes the syscall. */
MH_NOSAN static void *next_fn(const char *name, void *_Atomic *slot)
{
    void *f = atomic_load_explicit(slot, memory_order_acquire);
    if (!f && !resolving) {
        resolving = 1;
        f = dlsym(RTLD_NEXT, name);
        resolving = 0;
        atomic_store_explicit(slot, f, memory_order_release);
    }
    return f;
}

static void *_Atomic next_munmap, *_Atomic next_mremap, *_Atomic next_mmap, *_Atomic next_madvise,
    *_Atomic next_free, *_Atomic next_realloc, *_Atomic next_reallocarray;

__attribute__((constructor)) static void mh_resolve(void)
{
    next_fn("free", &next_free);
    next_fn("realloc", &next_realloc);
    next_fn("reallocarray", &next_reallocarray);
    next_fn("munmap", &next_munmap);
    next_fn("mremap", &next_mremap);
    next_fn("mmap", &next_mmap);
    next_fn("madvise", &next_madvise);
}

MH_NOSAN static int mh_munmap(void *addr, size_t len)
{
    mh_released(addr, len);
    int (*f)(void *, size_t) = (int (*)(void *, size_t))next_fn("munmap", &next_munmap);
    return f ? f(addr, len) : (int)syscall(SYS_munmap, addr, len);
}

MH_NOSAN static void *mh_mremap(void *old, size_t old_len, size_t new_len, int flags, ...)
{
    void *want = NULL;
    if (flags & MREMAP_FIXED) {
        va_list ap;
        va_start(ap, flags);
        want = va_arg(ap, void *);
        va_end(ap);
        mh_released(want, new_len); /* whatever was mapped there is replaced */
    }
    mh_released(old, old_len);
    void *(*f)(void *, size_t, size_t, int, ...) =
        (void *(*)(void *, size_t, size_t, int, ...))next_fn("mremap", &next_mremap);
    if (!f)
        return (void *)syscall(SYS_mremap, old, old_len, new_len, flags, want);
    return f(old, old_len, new_len, flags, want);
}

MH_NOSAN static void *mh_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    if (flags & MAP_FIXED)
        mh_released(addr, len);
    void *(*f)(void *, size_t, int, int, int, off_t) =
        (void *(*)(void *, size_t, int, int, int, off_t))next_fn("mmap", &next_mmap);
    return f ? f(addr, len, prot, flags, fd, off)
             : (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}

/* Advice after which the range reads back as new pages. */
MH_NOSAN static int advice_discards(int advice)
{
    return advice == MADV_DONTNEED || advice == MADV_FREE || advice == MADV_REMOVE;
}

MH_NOSAN static int mh_madvise(void *addr, size_t len, int advice)
{
    if (advice_discards(advice))
        mh_released(addr, len);
    int (*f)(void *, size_t, int) = (int (*)(void *, size_t, int))next_fn("madvise", &next_madvise);
    return f ? f(addr, len, advice) : (int)syscall(SYS_madvise, addr, len, advice);
}

/* The whole chunk: malloc may give its pages back (munmap of a large chunk, heap
 * trim) through calls no interposed function sees. */
MH_NOSAN static void mh_free(void *p)
{
    if (p && atomic_load_explicit(&mh.nlive, memory_order_relaxed))
        mh_released(p, malloc_usable_size(p));
    void (*f)(void *) = (void (*)(void *))next_fn("free", &next_free);
    if (f)
        f(p); /* else freed by dlsym while we looked free up: a few bytes leak */
}

MH_NOSAN static void *mh_realloc(void *p, size_t n)
{
    if (p && atomic_load_explicit(&mh.nlive, memory_order_relaxed))
        mh_released(p, malloc_usable_size(p));
    void *(*f)(void *, size_t) = (void *(*)(void *, size_t))next_fn("realloc", &next_realloc);
    return f ? f(p, n) : NULL; /* only inside our own dlsym, which does not realloc */
}

/* glibc's reallocarray calls its realloc internally: hooked on its own. */
MH_NOSAN static void *mh_reallocarray(void *p, size_t n, size_t size)
{
    if (p && atomic_load_explicit(&mh.nlive, memory_order_relaxed))
        mh_released(p, malloc_usable_size(p));
    void *(*f)(void *, size_t, size_t) =
        (void *(*)(void *, size_t, size_t))next_fn("reallocarray", &next_reallocarray);
    return f ? f(p, n, size) : NULL;
}

/* The public names are aliases, so mh_hooks_active can tell our definition from
 * whatever the lookup order resolves the name to. They are the only non-API symbols
 * libcrux.so exports (the library is built with hidden visibility): interposing is
 * their whole point. */
#define MH_EXPORT __attribute__((visibility("default")))
MH_EXPORT int munmap(void *addr, size_t len) __attribute__((alias("mh_munmap")));
MH_EXPORT void *mremap(void *old, size_t old_len, size_t new_len, int flags, ...)
    __attribute__((alias("mh_mremap")));
MH_EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
    __attribute__((alias("mh_mmap")));
MH_EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
    __attribute__((alias("mh_mmap")));
MH_EXPORT int madvise(void *addr, size_t len, int advice) __attribute__((alias("mh_madvise")));
MH_EXPORT void free(void *p) __attribute__((alias("mh_free")));
MH_EXPORT void *realloc(void *p, size_t n) __attribute__((alias("mh_realloc")));
MH_EXPORT void *reallocarray(void *p, size_t n, size_t size)
    __attribute__((alias("mh_reallocarray")));

int mh_hooks_active(void)
{
    return dlsym(RTLD_DEFAULT, "free") == (void *)mh_free &&
           dlsym(RTLD_DEFAULT, "realloc") == (void *)mh_realloc &&
           dlsym(RTLD_DEFAULT, "reallocarray") == (void *)mh_reallocarray &&
           dlsym(RTLD_DEFAULT, "munmap") == (void *)mh_munmap &&
           dlsym(RTLD_DEFAULT, "mremap") == (void *)mh_mremap &&
           dlsym(RTLD_DEFAULT, "mmap") == (void *)mh_mmap &&
           dlsym(RTLD_DEFAULT, "madvise") == (void *)mh_madvise;
}
