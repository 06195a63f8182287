/* pool.c - encode worker pool (pool.h): threads started once, parked on a futex.
 *
 * One job at a time: the caller publishes fn/arg, bumps `gen` and runs part 0; worker t
 * runs part t and decrements `pending`. Both sides spin a few microseconds, then sleep
 * in FUTEX_WAIT: with more ranks than cores a spinning waiter would burn the slice its
 * co-located peer needs (../shared/LIMITS.md: spin <= 5 us, then futex). A waker only
 * makes the futex syscall when the other side announced it sleeps (`sleepers`,
 * `caller_sleeps`); both sides use sequentially consistent atomics so one of them
 * always sees the other (store flag, then re-check the word inside FUTEX_WAIT).
 */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "codec/pool.h"
#include "crux.h"
#include "log.h"

#define SPIN_NS 5000

struct crux_pool {
    int nthreads;                 /* including the caller */
    uint32_t gen;                 /* job counter; workers wait for it to change */
    uint32_t pending;             /* workers still running the current job */
    uint32_t sleepers;            /* workers in (or entering) FUTEX_WAIT on gen */
    uint32_t caller_sleeps;       /* the caller is in (or entering) FUTEX_WAIT on pending */
    uint32_t stop;
    crux_pool_fn fn;
    void *arg;
    struct pool_worker {
        struct crux_pool *pool;
        int part;
        pthread_t tid;
    } w[CRUX_POOL_MAX];
};

static long futex(uint32_t *word, int op, uint32_t val)
{
    return syscall(SYS_futex, word, op, val, NULL, NULL, 0);
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Spin up to SPIN_NS for *word != old; true if it changed. */
static int spin_for_change(const uint32_t *word, uint32_t old)
{
    uint64_t t0 = mono_ns();
    for (;;) {
        for (int i = 0; i < 64; i++) {
            if (__atomic_load_n(word, __ATOMIC_ACQUIRE) != old)
                return 1;
            cpu_relax();
        }
        if (mono_ns() - t0 > SPIN_NS)
            return 0;
    }
}

/* Block until *word != old: spin, then sleep with `flag` raised so the waker knows. */
static uint32_t wait_for_change(uint32_t *word, uint32_t old, uint32_t *flag)
{
    if (!spin_for_change(word, old)) {
        __atomic_add_fetch(flag, 1, __ATOMIC_SEQ_CST);
        while (__atomic_load_n(word, __ATOMIC_SEQ_CST) == old)
            futex(word, FUTEX_WAIT_PRIVATE, old); /* EAGAIN/EINTR: re-check */
        __atomic_sub_fetch(flag, 1, __ATOMIC_SEQ_CST);
    }
    return __atomic_load_n(word, __ATOMIC_ACQUIRE);
}

static void *worker_main(void *argp)
{
    struct pool_worker *me = argp;
    struct crux_pool *p = me->pool;
    uint32_t seen = 0;
    for (;;) {
        seen = wait_for_change(&p->gen, seen, &p->sleepers);
        if (__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE))
            return NULL;
        p->fn(p->arg, me->part, p->nthreads);
        if (__atomic_sub_fetch(&p->pending, 1, __ATOMIC_SEQ_CST) == 0 &&
            __atomic_load_n(&p->caller_sleeps, __ATOMIC_SEQ_CST))
            futex(&p->pending, FUTEX_WAKE_PRIVATE, 1);
    }
}

static void wake_workers(struct crux_pool *p)
{
    __atomic_add_fetch(&p->gen, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&p->sleepers, __ATOMIC_SEQ_CST))
        futex(&p->gen, FUTEX_WAKE_PRIVATE, INT_MAX);
}

static void wait_workers(struct crux_pool *p)
{
    uint32_t left;
    while ((left = __atomic_load_n(&p->pending, __ATOMIC_ACQUIRE)) != 0)
        wait_for_change(&p->pending, left, &p->caller_sleeps);
}

static int cpuset_size(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0)
        return 1;
    int c = CPU_COUNT(&set);
    return c < 1 ? 1 : c;
}

static void stop_workers(struct crux_pool *p, int started)
{
    __atomic_store_n(&p->stop, 1, __ATOMIC_RELEASE);
    wake_workers(p);
    for (int t = 1; t < started; t++)
        pthread_join(p->w[t].tid, NULL);
}

int crux_pool_create(int want, struct crux_pool **out)
{
    *out = NULL;
    if (want < 0) {
        crux_error(CRUX_SUBSYS_CODEC, "encode pool: %d threads asked for (0 = the cpuset size)", want);
        return CRUX_ERR_ARG;
    }
    int have = cpuset_size(), n = want == 0 || want > have ? have : want;
    if (n > CRUX_POOL_MAX)
        n = CRUX_POOL_MAX;
    struct crux_pool *p = calloc(1, sizeof *p);
    if (!p) {
        crux_error(CRUX_SUBSYS_CODEC, "encode pool of %d threads: out of memory", n);
        return CRUX_ERR_NOMEM;
    }
    p->nthreads = n;
    /* Workers take no signals: those belong to the application's threads. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int t = 1, err = 0;
    for (; t < n; t++) {
        p->w[t].pool = p;
        p->w[t].part = t;
        if ((err = pthread_create(&p->w[t].tid, NULL, worker_main, &p->w[t])) != 0)
            break;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err) {
        crux_error(CRUX_SUBSYS_CODEC, "encode pool: pthread_create of worker %d of %d: %s", t, n,
                   strerror(err));
        stop_workers(p, t);
        free(p);
        return CRUX_ERR_INTERNAL;
    }
    crux_debug(CRUX_SUBSYS_CODEC, "encode pool: %d threads (cpuset %d, asked %d)", n, have, want);
    *out = p;
    return CRUX_SUCCESS;
}

int crux_pool_size(const struct crux_pool *p)
{
    return p ? p->nthreads : 1;
}

void crux_pool_run(struct crux_pool *p, crux_pool_fn fn, void *arg)
{
    if (!p || p->nthreads == 1) {
        fn(arg, 0, 1);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    __atomic_store_n(&p->pending, (uint32_t)(p->nthreads - 1), __ATOMIC_SEQ_CST);
    wake_workers(p);
    fn(arg, 0, p->nthreads);
    wait_workers(p);
}

void crux_pool_free(struct crux_pool *p)
{
    if (!p)
        return;
    stop_workers(p, p->nthreads);
    free(p);
}

void crux_pool_range(size_t n, size_t align, int part, int nparts, size_t *lo, size_t *hi)
{
    size_t units = (n + align - 1) / align;
    size_t a = units * (size_t)part / (size_t)nparts, b = units * (size_t)(part + 1) / (size_t)nparts;
    *lo = a * align < n ? a * align : n;
    *hi = part == nparts - 1 || b * align > n ? n : b * align;
}
