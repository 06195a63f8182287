/* shm_chan.c - the per-pair protocol of the shared-memory transport.
 *
 * Send: a message up to 32 bytes goes whole into its mailbox slot; up to eager_max
 * into the eager data ring (64-byte lines) with the header in the slot; the slot's
 * ctl word is stored last. A larger message posts a header slot, then fragments through the
 * staging ring, each published by its descriptor; the receiver consumes fragment i
 * while the sender fills i + 1. Both sides advance in message order, so the path
 * a message took is written in its slot and FIFO holds across both paths.
 */
#include <linux/futex.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#elif defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "reduce.h"
#include "shm.h"
#include "shm_direct.h"

#define SHM_MIN_FRAG 8192

#define LOAD_ACQ(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE_REL(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

void shm_xfer_finish(struct crux_xfer *x, int rc)
{
    x->rc = rc;
    STORE_REL(&x->done, 1);
}

static void door_wake(struct shm_tp *tp, struct shm_door *door)
{
    atomic_fetch_add_explicit(&door->bell, 1, memory_order_seq_cst);
    syscall(SYS_futex, &door->bell, FUTEX_WAKE, 1, NULL, NULL, 0);
    tp->st.wakes++;
}

/* We changed state peer p may sleep on. A fence here would stall until our stores
 * are visible (a cross-core round trip per message), so the fast path only reads
 * p's `sleeping` flag and records the debt; shm_settle() repeats the check behind
 * a fence before we sleep and every few progress calls, which closes the window
 * where p announced sleep while our store was still in flight. */
void shm_ring(struct shm_tp *tp, struct shm_peer *p)
{
    p->owed = 1;
    tp->owed = 1;
    if (__builtin_expect(atomic_load_explicit(&p->door->sleeping, memory_order_relaxed) != 0, 0)) {
        p->owed = 0;
        door_wake(tp, p->door);
    }
}

void shm_settle(struct shm_tp *tp)
{
    if (!tp->owed)
        return;
    tp->owed = 0;
    atomic_thread_fence(memory_order_seq_cst);
    for (int i = 0; i < tp->npeers; i++) {
        struct shm_peer *p = &tp->peers[i];
        if (p->owed) {
            p->owed = 0;
            if (atomic_load_explicit(&p->door->sleeping, memory_order_relaxed))
                door_wake(tp, p->door);
        }
    }
}

/* --- sender --- */

/* Bytes of x's buffer that may be sent now (its dependency's progress). */
static size_t send_avail(const struct crux_xfer *x)
{
    if (!x->dep)
        return x->len;
    size_t ready = LOAD_ACQ(&x->dep->bytes_done);
    return ready < x->len ? ready : x->len;
}

/* A dependency that failed will never advance: fail the send with its code. */
static int dep_failed(struct crux_xfer *x)
{
    const struct crux_xfer *d = x->dep;
    if (!d || !LOAD_ACQ(&d->done) || d->rc == CRUX_SUCCESS)
        return 0;
    crux_debug(CRUX_SUBSYS_SHM, "send to rank %d abandoned: its dependency failed (rc %d)",
               x->peer, d->rc);
    shm_xfer_finish(x, d->rc);
    return 1;
}

static int have_slot(struct shm_peer *p)
{
    if (p->tx_msgs - p->cr_msgs < p->tx.nslots)
        return 1;
    p->cr_msgs = atomic_load_explicit(&p->tx.credit->msgs, memory_order_acquire);
    return p->tx_msgs - p->cr_msgs < p->tx.nslots;
}

static int have_data(struct shm_peer *p, uint64_t need)
{
    if (p->tx.data_bytes - (p->tx_data - p->cr_data) >= need)
        return 1;
    p->cr_data = atomic_load_explicit(&p->tx.credit->data, memory_order_acquire);
    return p->tx.data_bytes - (p->tx_data - p->cr_data) >= need;
}

static int have_frag(struct shm_peer *p)
{
    if (p->tx_frags - p->cr_frags < p->tx.depth)
        return 1;
    p->cr_frags = atomic_load_explicit(&p->tx.credit->frags, memory_order_acquire);
    return p->tx_frags - p->cr_frags < p->tx.depth;
}

static inline uint64_t round_line(uint64_t n) { return (n + SHM_LINE - 1) & ~(uint64_t)(SHM_LINE - 1); }

/* Eager data ring bytes of a message: none when it fits the slot; otherwise all of
 * it, so ring lines and the user buffer share 64-byte offsets (aligned reduce). */
static inline uint64_t ring_bytes(size_t len) { return len > SHM_INLINE ? round_line(len) : 0; }

#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
/* Enhanced REP MOVSB (CPUID.7.0:EBX bit 9). */
static int cpu_has_erms(void)
{
    static int has = -1;
    if (has < 0) {
        unsigned eax, ebx = 0, ecx, edx;
        has = __get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) && (ebx & (1u << 9));
    }
    return has;
}
#endif

/* Eager payloads of 1 KiB and more go into the ring with `rep movsb`: with ERMS
 * the string copy claims whole lines, where vector stores first fetch each line
 * back from the peer core that read it last (glibc's memcpy switches only from
 * 2112 bytes here). 2026-12-08, 2 ranks, 3 interleaved launches: 1 KiB 0.64-0.68
 * -> 0.50-0.53 us, 2 KiB 1.01-1.07 -> 0.68-0.72; 512 B unchanged. ASan builds keep
 * memcpy, whose bounds it checks. */
#define RING_MOVSB_MIN 1024
static void ring_copy(unsigned char *dst, const unsigned char *src, size_t n)
{
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
    if (n >= RING_MOVSB_MIN && cpu_has_erms()) {
        __asm__ __volatile__("rep movsb" : "+D"(dst), "+S"(src), "+c"(n) : : "memory");
        return;
    }
#endif
    memcpy(dst, src, n);
}

/* Copy n bytes into the eager data ring at byte position pos (may wrap). */
static void ring_write(const struct shm_chan *c, uint64_t pos, const unsigned char *src, size_t n)
{
    uint64_t at = pos & (c->data_bytes - 1);
    size_t first = c->data_bytes - at;
    if (n <= first) {
        ring_copy(c->data + at, src, n);
    } else {
        ring_copy(c->data + at, src, first);
        ring_copy(c->data, src + first, n - first);
    }
}

static void slot_fill_hdr(struct shm_slot *s, const struct crux_msg_hdr *h)
{
    s->ctx_id = h->ctx_id;
    s->tag = h->tag;
    s->seq = h->seq;
    s->sig = h->sig;
}

int shm_post_eager(struct shm_tp *tp, struct shm_peer *p, const struct crux_msg_hdr *h,
                   const void *buf)
{
    size_t len = h->len;
    uint64_t rest = ring_bytes(len);
    if (!have_slot(p) || (rest && !have_data(p, rest)))
        return 0;
    struct shm_slot *s = &p->tx.slots[p->tx_msgs & (p->tx.nslots - 1)];
    if (rest) {
        ring_write(&p->tx, p->tx_data, buf, len);
        p->tx_data += rest;
    } else if (len) {
        memcpy(s->data, buf, len);
    }
    slot_fill_hdr(s, h);
    p->tx_msgs++;
    atomic_store_explicit(&s->ctl, (uint32_t)p->tx_msgs | (uint64_t)len << 32,
                          memory_order_release);
    shm_ring(tp, p);
    tp->st.mb_msgs++;
    tp->st.mb_bytes += len;
    return 1;
}

static int send_eager(struct shm_tp *tp, struct shm_peer *p, struct crux_xfer *x)
{
    if (x->dep && send_avail(x) < x->len)
        return dep_failed(x);
    if (!shm_post_eager(tp, p, &x->hdr, x->buf))
        return 0;
    x->bytes_done = x->len;
    shm_xfer_finish(x, CRUX_SUCCESS);
    return 1;
}

/* Next fragment size: a full slot, or what the dependency allows cut at 64 bytes
 * (waiting for at least SHM_MIN_FRAG of it, so a dependency that trickles in does
 * not spend staging slots on tiny fragments). 0: nothing to send yet. */
static size_t next_frag(const struct crux_xfer *x, const struct shm_chan *c)
{
    size_t done = x->bytes_done, left = x->len - done;
    size_t n = send_avail(x) - done;
    if (n > c->stage_bytes)
        n = c->stage_bytes;
    if (n < left) {
        n &= ~(size_t)(SHM_LINE - 1);
        if (x->dep && n < SHM_MIN_FRAG && n < c->stage_bytes && !LOAD_ACQ(&x->dep->done))
            n = 0;
    }
    return n;
}

static int send_staged(struct shm_tp *tp, struct shm_peer *p, struct crux_xfer *x)
{
    if (x->tp_priv[0] == 0) { /* header slot first */
        if (!have_slot(p))
            return 0;
        struct shm_slot *s = &p->tx.slots[p->tx_msgs & (p->tx.nslots - 1)];
        uint64_t len64 = x->len;
        slot_fill_hdr(s, &x->hdr);
        memcpy(s->data, &len64, sizeof len64);
        p->tx_msgs++;
        atomic_store_explicit(&s->ctl, (uint32_t)p->tx_msgs | (uint64_t)SHM_STAGED << 32,
                              memory_order_release);
        x->tp_priv[0] = 1;
        tp->st.st_msgs++;
    }
    while (x->bytes_done < x->len) {
        size_t n = next_frag(x, &p->tx);
        if (n == 0) {
            shm_ring(tp, p);
            return dep_failed(x);
        }
        if (!have_frag(p)) {
            shm_ring(tp, p);
            return 0;
        }
        uint64_t k = p->tx_frags & (p->tx.depth - 1);
        memcpy(p->tx.stage + k * p->tx.stage_bytes, (const unsigned char *)x->buf + x->bytes_done, n);
        p->tx.desc[k].bytes = n;
        p->tx_frags++;
        atomic_store_explicit(&p->tx.desc[k].stamp, p->tx_frags, memory_order_release);
        STORE_REL(&x->bytes_done, x->bytes_done + n);
        tp->st.st_frags++;
        tp->st.st_bytes += n;
    }
    shm_ring(tp, p);
    shm_xfer_finish(x, CRUX_SUCCESS);
    return 1;
}

int shm_send_step(struct shm_tp *tp, struct shm_peer *p, struct crux_xfer *x)
{
    if (x->len <= p->eager_max)
        return send_eager(tp, p, x);
    return send_staged(tp, p, x);
}

/* --- receiver --- */

#if defined(__x86_64__)
/* Whole-line NT stores: one 64-byte store fills a write-combining buffer at once
 * (256 MiB from L2 to DRAM: 7.0 ms vs 7.8 ms with 16-byte stores, 2026-12-07). */
__attribute__((target("avx512f"))) static void copy_nt_lines512(unsigned char *dst,
                                                                const unsigned char *src, size_t n)
{
    for (size_t i = 0; i < n; i += 128) {
        __m512i a = _mm512_loadu_si512(src + i), b = _mm512_loadu_si512(src + i + 64);
        _mm512_stream_si512((void *)(dst + i), a);
        _mm512_stream_si512((void *)(dst + i + 64), b);
    }
}

static int cpu_has_avx512(void)
{
    static int has = -1;
    if (has < 0)
        has = __builtin_cpu_supports("avx512f");
    return has;
}
#endif

#ifdef __SSE2__
static void copy_nt_lines(unsigned char *dst, const unsigned char *src, size_t n)
{
#if defined(__x86_64__)
    if (cpu_has_avx512() && !(n & 127)) {
        copy_nt_lines512(dst, src, n);
        return;
    }
#endif
    for (size_t i = 0; i < n; i += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)(src + i));
        __m128i b = _mm_loadu_si128((const __m128i *)(src + i + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(src + i + 32));
        __m128i d = _mm_loadu_si128((const __m128i *)(src + i + 48));
        _mm_stream_si128((__m128i *)(dst + i), a);
        _mm_stream_si128((__m128i *)(dst + i + 16), b);
        _mm_stream_si128((__m128i *)(dst + i + 32), c);
        _mm_stream_si128((__m128i *)(dst + i + 48), d);
    }
}
#endif

void shm_copy_nt(unsigned char *dst, const unsigned char *src, size_t n)
{
#ifdef __SSE2__
    size_t head = (64 - ((uintptr_t)dst & 63)) & 63;
    if (head > n)
        head = n;
    memcpy(dst, src, head);
    dst += head;
    src += head;
    n -= head;
    size_t body = n & ~(size_t)127;
    copy_nt_lines(dst, src, body);
    memcpy(dst + body, src + body, n - body);
    _mm_sfence(); /* NT stores are weakly ordered: fence before bytes_done moves */
#else
    memcpy(dst, src, n);
#endif
}

/* Land n bytes at dst: a copy (non-temporal when nt), or dst = a op src. */
static void land(struct shm_tp *tp, unsigned char *dst, const unsigned char *a, const void *src,
                 size_t n, const struct shm_land *how)
{
    if (n == 0)
        return;
    if (a) {
        crux_reduce(dst, a, src, n >> how->shift, how->dtype, how->op);
        tp->st.reduces++;
    } else if (how->nt) {
        shm_copy_nt(dst, src, n);
        tp->st.copies++;
    } else {
        memcpy(dst, src, n);
        tp->st.copies++;
    }
}

/* Land n bytes at offset off of x: a copy, or buf = reduce_src op incoming. */
static void deliver(struct shm_tp *tp, struct crux_xfer *x, size_t off, const void *src, size_t n)
{
    struct shm_land how = {x->dtype, x->op, (unsigned)x->tp_priv[1],
                           !x->reduce_src && crux_shm_nt(tp->base.ctx, x->len)};
    land(tp, (unsigned char *)x->buf + off,
         x->reduce_src ? (const unsigned char *)x->reduce_src + off : NULL, src, n, &how);
}

/* Land an eager message of n bytes sitting at ring position pos (may wrap; the
 * split is a multiple of 64 bytes, so no element is cut). */
static void land_ring(struct shm_tp *tp, unsigned char *dst, const unsigned char *a,
                      const struct shm_chan *c, uint64_t pos, size_t n, const struct shm_land *how)
{
    uint64_t at = pos & (c->data_bytes - 1);
    size_t first = c->data_bytes - at;
    if (n <= first) {
        land(tp, dst, a, c->data + at, n, how);
    } else {
        land(tp, dst, a, c->data + at, first, how);
        land(tp, dst + first, a ? a + first : NULL, c->data, n - first, how);
    }
}

static void log_mismatch(struct shm_peer *p, const struct crux_msg_hdr *got,
                         const struct crux_msg_hdr *want)
{
    crux_error(CRUX_SUBSYS_SHM,
               "message header mismatch from peer rank %d (host %s): got ctx_id=0x%x tag=%u "
               "seq=%llu sig=0x%016llx len=%llu, expected ctx_id=0x%x tag=%u seq=%llu "
               "sig=0x%016llx len=%llu",
               p->rank, p->info->host, got->ctx_id, got->tag, (unsigned long long)got->seq,
               (unsigned long long)got->sig, (unsigned long long)got->len, want->ctx_id,
               want->tag, (unsigned long long)want->seq, (unsigned long long)want->sig,
               (unsigned long long)want->len);
}

static int hdr_equal(const struct crux_msg_hdr *a, const struct crux_msg_hdr *b)
{
    return a->ctx_id == b->ctx_id && a->tag == b->tag && a->seq == b->seq && a->sig == b->sig &&
           a->len == b->len;
}

static void consume_slot(struct shm_peer *p)
{
    p->rx_msgs++;
    atomic_store_explicit(&p->rx.credit->msgs, p->rx_msgs, memory_order_release);
}

/* Publish freed credits and wake the sender if it sleeps waiting for them. */
static void credit_ring(struct shm_tp *tp, struct shm_peer *p) { shm_ring(tp, p); }

static int recv_staged_frags(struct shm_tp *tp, struct shm_peer *p, struct crux_xfer *x)
{
    const struct shm_chan *c = &p->rx;
    int moved = 0;
    while (x->bytes_done < x->len) {
        uint64_t k = p->rx_frags & (c->depth - 1);
        if (atomic_load_explicit(&c->desc[k].stamp, memory_order_acquire) != p->rx_frags + 1)
            break;
        size_t n = c->desc[k].bytes;
        if (n == 0 || n > c->stage_bytes || n > x->len - x->bytes_done) {
            crux_error(CRUX_SUBSYS_SHM,
                       "corrupt staging fragment from peer rank %d (host %s): %zu bytes at "
                       "offset %zu of %zu",
                       p->rank, p->info->host, n, (size_t)x->bytes_done, x->len);
            p->rx_state = SHM_RX_IDLE;
            shm_xfer_finish(x, CRUX_ERR_TRANSPORT);
            return 1;
        }
        deliver(tp, x, x->bytes_done, c->stage + k * c->stage_bytes, n);
        p->rx_frags++;
        atomic_store_explicit(&c->credit->frags, p->rx_frags, memory_order_release);
        STORE_REL(&x->bytes_done, x->bytes_done + n);
        moved = 1;
    }
    if (moved)
        credit_ring(tp, p);
    if (x->bytes_done < x->len)
        return 0;
    p->rx_state = SHM_RX_IDLE;
    shm_xfer_finish(x, CRUX_SUCCESS);
    return 1;
}

void shm_discard_step(struct shm_tp *tp, struct shm_peer *p)
{
    const struct shm_chan *c = &p->rx;
    while (p->rx_discard) {
        uint64_t k = p->rx_frags & (c->depth - 1);
        if (atomic_load_explicit(&c->desc[k].stamp, memory_order_acquire) != p->rx_frags + 1)
            return;
        size_t n = c->desc[k].bytes;
        p->rx_discard -= n < p->rx_discard ? n : p->rx_discard;
        p->rx_frags++;
        atomic_store_explicit(&c->credit->frags, p->rx_frags, memory_order_release);
        credit_ring(tp, p);
    }
    p->rx_state = SHM_RX_IDLE;
}

/* Drop the message in the current slot after a mismatch so the pair stays in step. */
static void skip_message(struct shm_tp *tp, struct shm_peer *p, uint32_t lenf, uint64_t len)
{
    if (lenf == SHM_STAGED) {
        p->rx_discard = len;
        p->rx_state = len ? SHM_RX_DISCARD : SHM_RX_IDLE;
    } else if (ring_bytes(len)) {
        p->rx_data += ring_bytes(len);
        atomic_store_explicit(&p->rx.credit->data, p->rx_data, memory_order_release);
    }
    consume_slot(p);
    credit_ring(tp, p);
    if (p->rx_state == SHM_RX_DISCARD)
        shm_discard_step(tp, p);
}

int shm_recv_step(struct shm_tp *tp, struct shm_peer *p, struct crux_xfer *x)
{
    if (p->rx_state == SHM_RX_STAGED)
        return recv_staged_frags(tp, p, x);
    if (p->rx_state == SHM_RX_DISCARD) {
        shm_discard_step(tp, p);
        if (p->rx_state != SHM_RX_IDLE)
            return 0;
    }
    struct shm_slot *s = &p->rx.slots[p->rx_msgs & (p->rx.nslots - 1)];
    uint64_t ctl = atomic_load_explicit(&s->ctl, memory_order_acquire);
    if ((uint32_t)ctl != (uint32_t)(p->rx_msgs + 1))
        return 0;
    uint32_t lenf = (uint32_t)(ctl >> 32);
    if (__builtin_expect(!shm_hdr_check(p, s, ctl, &x->hdr), 0)) {
        shm_skip_message(tp, p, s, ctl);
        shm_xfer_finish(x, CRUX_ERR_MISMATCH);
        return 1;
    }
    if (lenf == SHM_STAGED) {
        consume_slot(p);
        p->rx_state = SHM_RX_STAGED;
        return recv_staged_frags(tp, p, x);
    }
    struct shm_land how = {x->dtype, x->op, (unsigned)x->tp_priv[1], 0};
    shm_take_eager(tp, p, s, lenf, x->buf, x->reduce_src, &how);
    STORE_REL(&x->bytes_done, lenf);
    shm_xfer_finish(x, CRUX_SUCCESS);
    return 1;
}

void shm_take_eager(struct shm_tp *tp, struct shm_peer *p, const struct shm_slot *s, size_t len,
                    void *dst, const void *a, const struct shm_land *how)
{
    if (len <= SHM_INLINE) {
        land(tp, dst, a, s->data, len, how);
    } else {
        land_ring(tp, dst, a, &p->rx, p->rx_data, len, how);
        p->rx_data += ring_bytes(len);
        atomic_store_explicit(&p->rx.credit->data, p->rx_data, memory_order_release);
    }
    consume_slot(p);
    credit_ring(tp, p);
}

int shm_hdr_check(struct shm_peer *p, const struct shm_slot *s, uint64_t ctl,
                  const struct crux_msg_hdr *want)
{
    uint32_t lenf = (uint32_t)(ctl >> 32);
    struct crux_msg_hdr got = {s->ctx_id, s->tag, s->seq, s->sig, lenf};
    if (lenf == SHM_STAGED)
        memcpy(&got.len, s->data, sizeof got.len);
    if (__builtin_expect(hdr_equal(&got, want), 1))
        return 1;
    log_mismatch(p, &got, want);
    return 0;
}

void shm_skip_message(struct shm_tp *tp, struct shm_peer *p, const struct shm_slot *s, uint64_t ctl)
{
    uint32_t lenf = (uint32_t)(ctl >> 32);
    uint64_t len = lenf;
    if (lenf == SHM_STAGED)
        memcpy(&len, s->data, sizeof len);
    skip_message(tp, p, lenf, len);
}

/* Work pending for this peer: an arrival for the head receive, or credit/data for
 * the head send. Used by block() before it sleeps. */
int shm_peer_ready(struct shm_peer *p)
{
    if (p->rx_state == SHM_RX_DISCARD || (p->rq_head && p->rx_state == SHM_RX_STAGED)) {
        uint64_t k = p->rx_frags & (p->rx.depth - 1);
        if (atomic_load_explicit(&p->rx.desc[k].stamp, memory_order_acquire) == p->rx_frags + 1)
            return 1;
    } else if (p->rq_head) {
        struct shm_slot *s = &p->rx.slots[p->rx_msgs & (p->rx.nslots - 1)];
        if ((uint32_t)atomic_load_explicit(&s->ctl, memory_order_acquire) ==
            (uint32_t)(p->rx_msgs + 1))
            return 1;
    }
    struct crux_xfer *x = p->sq_head;
    if (!x)
        return 0;
    const struct crux_xfer *d = x->dep;
    if (d && LOAD_ACQ(&d->done) && d->rc != CRUX_SUCCESS)
        return 1;
    if (x->len <= p->eager_max) {
        uint64_t rest = ring_bytes(x->len);
        return send_avail(x) >= x->len && have_slot(p) && (!rest || have_data(p, rest));
    }
    if (x->tp_priv[0] == 0)
        return have_slot(p);
    return next_frag(x, &p->tx) > 0 && have_frag(p);
}
