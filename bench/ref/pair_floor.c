/*
 * pair_floor.c - a bare two-process float-sum allreduce in osu_allreduce's format:
 * the two protocols of crux's 2-rank shm path (LIMITS.md strategies A and B) with
 * nothing around them (no API, no message headers, no selection, no failure or
 * timeout checks). run-ref.sh runs it as a column beside Open MPI, MPICH and crux,
 * so each row shows what the host allows in the same run, whatever its vCPU
 * placement does that day.
 *
 *   <= 64 KiB (A)  each rank copies its vector into its own slot of the call's
 *                  parity (inline in the flag line up to 56 bytes), publishes the
 *                  call number, waits for the peer's, and reduces.
 *   larger (B)     pipelined reduce-scatter + allgather through shared rings of
 *                  256 KiB slots (4 deep per phase and direction); the reduce of an
 *                  arriving chunk writes recvbuf and the allgather slot, as
 *                  algo/shm_pipe.c does; plain stores.
 *
 * Timing as OSU: per call t0, allreduce, t1, untimed barrier; the row is the mean
 * over both ranks of their average. The result is checked after every size.
 *
 * Build: gcc -O3 -march=native -o pair_floor pair_floor.c
 * Usage: pair_floor [-m [min:]max] [-i iters] [-x warmup]  (OSU's -f, -c, -d ARG,
 *        -T ARG are accepted and ignored; sizes are powers of two from min)
 */
#define _GNU_SOURCE
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "floor_util.h"

#define SMALL_MAX (64u << 10) /* strategy A up to here */
#define INLINE_MAX 56u        /* bytes carried in the flag line itself */
#define SLOT (256u << 10)     /* strategy B slot */
#define DEPTH 4u

struct flag {
    _Alignas(64) _Atomic unsigned long seq;
    unsigned char data[INLINE_MAX];
};

struct counter {
    _Alignas(64) _Atomic unsigned long n;
};

/* A ring of one direction and phase: the sender posts, the receiver frees. */
struct ring {
    struct counter posted, freed;
};

struct shared {
    struct flag flag[2][2];        /* [rank][call parity] */
    struct counter bar[2];         /* barrier arrivals per rank */
    struct ring rs[2], ag[2];      /* [sending rank] */
    double avg[2];                 /* each rank's average, us */
};

struct pair {
    struct shared *sh;
    unsigned char *small[2][2];    /* [rank][parity] strategy A slots */
    unsigned char *rs[2], *ag[2];  /* [sending rank] strategy B rings */
    int me;
    unsigned long calls, rs_tx, rs_rx, ag_tx, ag_rx, bars;
};

static void add_floats(float *d, const float *a, const float *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        d[i] = a[i] + b[i];
}

static void barrier(struct pair *p)
{
    unsigned long want = ++p->bars;
    atomic_store_explicit(&p->sh->bar[p->me].n, want, memory_order_release);
    while (atomic_load_explicit(&p->sh->bar[1 - p->me].n, memory_order_acquire) < want)
        floor_relax();
}

static void allreduce_small(struct pair *p, const float *x, float *y, size_t bytes)
{
    unsigned long k = ++p->calls;
    int par = (int)(k & 1), q = 1 - p->me;
    struct flag *mine = &p->sh->flag[p->me][par], *peer = &p->sh->flag[q][par];
    unsigned char *src = bytes <= INLINE_MAX ? peer->data : p->small[q][par];
    memcpy(bytes <= INLINE_MAX ? mine->data : p->small[p->me][par], x, bytes);
    atomic_store_explicit(&mine->seq, k, memory_order_release);
    while (atomic_load_explicit(&peer->seq, memory_order_acquire) != k)
        floor_relax();
    add_floats(y, x, (const float *)src, bytes / sizeof(float));
}

/* Slot i of a ring may be written once its reader freed slot i - DEPTH. */
static int ring_room(struct ring *r, unsigned long i)
{
    return i - atomic_load_explicit(&r->freed.n, memory_order_acquire) < DEPTH;
}

static int ring_ready(struct ring *r, unsigned long i)
{
    return atomic_load_explicit(&r->posted.n, memory_order_acquire) > i;
}

static void allreduce_large(struct pair *p, const float *x, float *y, size_t n)
{
    int me = p->me, q = 1 - me;
    size_t off[2] = {0, n / 2}, len[2] = {n / 2, n - n / 2};
    size_t chunk = SLOT / sizeof(float);
    unsigned long k[2] = {(len[0] + chunk - 1) / chunk, (len[1] + chunk - 1) / chunk};
    /* Counters run across calls; this call's chunks start at these bases. */
    unsigned long rs_tx0 = p->rs_tx, rs_rx0 = p->rs_rx, ag_rx0 = p->ag_rx;
    struct ring *rs_out = &p->sh->rs[me], *rs_in = &p->sh->rs[q];
    struct ring *ag_out = &p->sh->ag[me], *ag_in = &p->sh->ag[q];
    while (p->rs_tx - rs_tx0 < k[q] || p->rs_rx - rs_rx0 < k[me] || p->ag_rx - ag_rx0 < k[q]) {
        if (p->rs_tx - rs_tx0 < k[q] && ring_room(rs_out, p->rs_tx)) {
            size_t i = (p->rs_tx - rs_tx0) * chunk, m = len[q] - i < chunk ? len[q] - i : chunk;
            memcpy(p->rs[me] + (p->rs_tx % DEPTH) * SLOT, x + off[q] + i, m * sizeof(float));
            atomic_store_explicit(&rs_out->posted.n, ++p->rs_tx, memory_order_release);
        }
        if (p->rs_rx - rs_rx0 < k[me] && ring_ready(rs_in, p->rs_rx) && ring_room(ag_out, p->ag_tx)) {
            size_t i = (p->rs_rx - rs_rx0) * chunk, m = len[me] - i < chunk ? len[me] - i : chunk;
            float *dst = y + off[me] + i;
            add_floats(dst, x + off[me] + i, (const float *)(p->rs[q] + (p->rs_rx % DEPTH) * SLOT), m);
            atomic_store_explicit(&rs_in->freed.n, ++p->rs_rx, memory_order_release);
            memcpy(p->ag[me] + (p->ag_tx % DEPTH) * SLOT, dst, m * sizeof(float));
            atomic_store_explicit(&ag_out->posted.n, ++p->ag_tx, memory_order_release);
        }
        if (p->ag_rx - ag_rx0 < k[q] && ring_ready(ag_in, p->ag_rx)) {
            size_t i = (p->ag_rx - ag_rx0) * chunk, m = len[q] - i < chunk ? len[q] - i : chunk;
            memcpy(y + off[q] + i, p->ag[q] + (p->ag_rx % DEPTH) * SLOT, m * sizeof(float));
            atomic_store_explicit(&ag_in->freed.n, ++p->ag_rx, memory_order_release);
        }
    }
}

static void allreduce(struct pair *p, const float *x, float *y, size_t bytes)
{
    if (bytes <= SMALL_MAX)
        allreduce_small(p, x, y, bytes);
    else
        allreduce_large(p, x, y, bytes / sizeof(float));
}

static int parse_range(const char *s, size_t *lo, size_t *hi)
{
    char *end;
    unsigned long long a = strtoull(s, &end, 10), b = a;
    if (*end == ':')
        b = strtoull(end + 1, &end, 10);
    else
        a = 4;
    if (*end || a < 4 || b < a)
        return -1;
    *lo = a;
    *hi = b;
    return 0;
}

static int usage(void)
{
    fprintf(stderr, "usage: pair_floor [-m [min:]max] [-i iters] [-x warmup] "
                    "(-f -c -d ARG -T ARG ignored)\n");
    return 2;
}

int main(int argc, char **argv)
{
    size_t lo = 4, hi = 1u << 20;
    long iters = -1, warm = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has_arg = !strcmp(a, "-m") || !strcmp(a, "-i") || !strcmp(a, "-x") ||
                      !strcmp(a, "-d") || !strcmp(a, "-T");
        if (has_arg && i + 1 >= argc)
            return usage();
        if (!strcmp(a, "-m") && parse_range(argv[i + 1], &lo, &hi))
            return usage();
        if (!strcmp(a, "-i"))
            iters = atol(argv[i + 1]);
        if (!strcmp(a, "-x"))
            warm = atol(argv[i + 1]);
        if (has_arg)
            i++;
        else if (strcmp(a, "-f") && strcmp(a, "-c"))
            return usage();
    }
    int c0 = floor_nth_cpu(0), c1 = floor_nth_cpu(1);
    if (c0 < 0 || c1 < 0 || (iters >= 0 && iters < 1) || warm < -1) {
        fprintf(stderr, "pair_floor: need two CPUs, iters >= 1 and warmup >= 0\n");
        return 2;
    }
    size_t big = hi > SMALL_MAX ? 4 * (size_t)DEPTH * SLOT : 0;
    size_t bytes_shared = sizeof(struct shared) + 4 * (size_t)SMALL_MAX + big;
    unsigned char *base = mmap(NULL, bytes_shared, PROT_READ | PROT_WRITE,
                               MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    float *x = aligned_alloc(4096, (hi + 4095) & ~(size_t)4095);
    float *y = aligned_alloc(4096, (hi + 4095) & ~(size_t)4095);
    if (base == MAP_FAILED || !x || !y) {
        perror("pair_floor: memory");
        return 1;
    }
    memset(base, 0, bytes_shared);
    struct pair p = {.sh = (struct shared *)base};
    unsigned char *slots = base + ((sizeof(struct shared) + 4095) & ~(size_t)4095), *at = slots;
    for (int r = 0; r < 2; r++)
        for (int k = 0; k < 2; k++, at += SMALL_MAX)
            p.small[r][k] = at;
    for (int r = 0; r < 2 && big; r++, at += 2 * (size_t)DEPTH * SLOT) {
        p.rs[r] = at;
        p.ag[r] = at + (size_t)DEPTH * SLOT;
    }
    fflush(stdout);
    pid_t kid = fork();
    if (kid < 0) {
        perror("pair_floor: fork");
        return 1;
    }
    p.me = kid == 0;
    floor_pin(p.me ? c1 : c0);
    /* A child does not inherit the page tables of a shared mapping: both map every
     * slot now (zeros over zeros), so no call below takes a page fault. */
    memset(slots, 0, (size_t)(base + bytes_shared - slots));
    for (size_t i = 0; i < hi / sizeof(float); i++) { /* first touch, untimed */
        x[i] = (float)(p.me + 1);
        y[i] = 0;
    }
    if (!p.me) {
        printf("# pair_floor: bare 2-process float sum allreduce (shm strategies A/B)\n");
        printf("%-10s%20s\n", "# Size", "Avg Latency(us)");
    }
    int bad = 0;
    for (size_t s = lo; s <= hi && !bad; s *= 2) {
        long it = iters >= 0 ? iters : s <= 8192 ? 1000 : 100;
        long wu = warm >= 0 ? warm : s <= 8192 ? 100 : 10;
        double sum = 0;
        barrier(&p);
        for (long i = 0; i < it + wu; i++) {
            double t0 = floor_now();
            allreduce(&p, x, y, s);
            double t1 = floor_now();
            if (i >= wu)
                sum += t1 - t0;
            barrier(&p);
        }
        for (size_t i = 0; i < s / sizeof(float); i++)
            bad |= y[i] != 3.0f;
        p.sh->avg[p.me] = bad ? -1 : sum / (double)it * 1e6;
        barrier(&p);
        double a0 = p.sh->avg[0], a1 = p.sh->avg[1];
        bad = a0 < 0 || a1 < 0;
        if (!p.me && !bad)
            printf("%-10zu%20.2f\n", s, (a0 + a1) / 2);
        barrier(&p); /* nobody rewrites avg before both read it */
    }
    if (!p.me && bad)
        fprintf(stderr, "pair_floor: wrong result\n");
    if (kid == 0)
        _exit(bad);
    int st = 0;
    waitpid(kid, &st, 0);
    return bad || !WIFEXITED(st) || WEXITSTATUS(st);
}
