/* test_verbs.c - the verbs transport.
 *
 * Without a device: the CRUX_IB_HCA port choice and the registration cache policy.
 * With real Soft-RoCE: QEMU guests booted by tests/vm/rxe-vm (rdma_rxe on Debian's
 * kernel) run allreduce over verbs in one guest (loopback on rxe0) and across two
 * guests (one rank each), prove by the transport's counters which path (eager,
 * zero-copy rendezvous, staged reduce) carried the bytes and that the registration
 * cache hits, decode ulimit -l failures, and turn a killed peer into CRUX_ERR_PEER.
 * The VM tests run in the release build only (CRUX_TEST_VM_ENABLED), as root with
 * qemu and a kernel image installed; otherwise they are skipped saying why.
 */
#include <criterion/criterion.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "crux.h"
#include "harness.h"

#ifdef CRUX_HAVE_VERBS
#include <dlfcn.h>
#include <sys/mman.h>

#include "transport/verbs/verbs.h"
#include "transport/verbs/verbs_memhook.h"

/* ---------- CRUX_IB_HCA: which device port ---------- */

static const struct vb_port_desc ports[] = {
    {"mlx5_0", 1, 1}, {"mlx5_0", 2, 0}, {"mlx5_1", 1, 1}, {"mlx5_10", 1, 1}, {"rxe0", 1, 1},
};
#define NPORTS ((int)(sizeof(ports) / sizeof(ports[0])))

Test(verbs_hca, empty_list_takes_first_active) { cr_assert_eq(vb_hca_pick("", ports, NPORTS), 0); }

Test(verbs_hca, prefix)
{
    cr_assert_eq(vb_hca_pick("rxe", ports, NPORTS), 4);
    cr_assert_eq(vb_hca_pick("mlx5_1", ports, NPORTS), 2); /* prefix: mlx5_1 before mlx5_10 */
    cr_assert_eq(vb_hca_pick("ib,rxe", ports, NPORTS), 4);
}

Test(verbs_hca, exact)
{
    cr_assert_eq(vb_hca_pick("=mlx5_1", ports, NPORTS), 2);
    cr_assert_eq(vb_hca_pick("=mlx5_10", ports, NPORTS), 3);
    cr_assert_eq(vb_hca_pick("=mlx5", ports, NPORTS), -1);
}

Test(verbs_hca, exclude)
{
    cr_assert_eq(vb_hca_pick("^mlx5", ports, NPORTS), 4);
    cr_assert_eq(vb_hca_pick("^mlx5_0", ports, NPORTS), 2);
    cr_assert_eq(vb_hca_pick("^=mlx5_0,mlx5_1", ports, NPORTS), 3);
}

Test(verbs_hca, port)
{
    cr_assert_eq(vb_hca_pick("mlx5_0:2", ports, NPORTS), -1, "port 2 is down");
    cr_assert_eq(vb_hca_pick("=mlx5_0:1", ports, NPORTS), 0);
    cr_assert_eq(vb_hca_pick("mlx5:1", ports, NPORTS), 0);
    cr_assert_eq(vb_hca_pick("^mlx5_0:1", ports, NPORTS), 2, "excluding one port keeps the others");
}

Test(verbs_hca, nothing_matches) { cr_assert_eq(vb_hca_pick("bnxt", ports, NPORTS), -1); }

/* auto asks lib/numa.c for the nearest device (its placement logic is tested on
 * synthetic topologies in test_numa); here: only active ports are offered. */
Test(verbs_hca, auto_offers_active_ports_only)
{
    static const struct vb_port_desc some[] = {{"mlx5_0", 1, 0}, {"mlx5_1", 1, 1}};
    static const struct vb_port_desc none[] = {{"mlx5_0", 1, 0}};
    cr_assert_eq(vb_hca_pick("auto", some, 2), 1);
    cr_assert_eq(vb_hca_pick("auto", none, 1), -1);
}

/* ---------- CRUX_IB_* knobs both ends of a QP must share ---------- */

Test(verbs_agree, retry_budget_and_lane_must_match)
{
    struct crux_config a = {.ib_timeout = 18, .ib_retry_cnt = 7, .ib_sl = 0, .ib_tc = 0}, b = a;
    struct vb_agreed x, y;
    int va = -1, vb = -1;
    vb_agreed_of(&a, &x);
    vb_agreed_of(&b, &y);
    cr_assert_null(vb_agreed_diff(&x, &y, &va, &vb));
    b.ib_timeout = 14;
    vb_agreed_of(&b, &y);
    cr_assert_str_eq(vb_agreed_diff(&x, &y, &va, &vb), "CRUX_IB_TIMEOUT");
    cr_assert_eq(va, 18);
    cr_assert_eq(vb, 14);
    b = a, b.ib_retry_cnt = 3;
    vb_agreed_of(&b, &y);
    cr_assert_str_eq(vb_agreed_diff(&x, &y, &va, &vb), "CRUX_IB_RETRY_CNT");
    b = a, b.ib_sl = 5;
    vb_agreed_of(&b, &y);
    cr_assert_str_eq(vb_agreed_diff(&x, &y, &va, &vb), "CRUX_IB_SL");
    b = a, b.ib_tc = 106;
    vb_agreed_of(&b, &y);
    cr_assert_str_eq(vb_agreed_diff(&x, &y, &va, &vb), "CRUX_IB_TC");
    cr_assert_eq(vb, 106);
}

/* Device, GID and cache budget are per host: they may differ. */
Test(verbs_agree, local_knobs_may_differ)
{
    struct crux_config a = {.ib_timeout = 18, .ib_retry_cnt = 7, .ib_gid_index = 1,
                            .ib_mr_cache_bytes = 1u << 30, .ib_hca = "mlx5_0"};
    struct crux_config b = a;
    b.ib_gid_index = 3;
    b.ib_mr_cache_bytes = 0;
    snprintf(b.ib_hca, sizeof(b.ib_hca), "=mlx5_1:1");
    struct vb_agreed x, y;
    int va, vb;
    vb_agreed_of(&a, &x);
    vb_agreed_of(&b, &y);
    cr_assert_null(vb_agreed_diff(&x, &y, &va, &vb));
}

/* ---------- registration cache, device-free ---------- */

struct fake_dev {
    int regs, deregs, fail_next;
    size_t pinned;
    uintptr_t last_addr;
    size_t last_len;
};

static int fake_reg(void *arg, void *addr, size_t len, void **mr)
{
    struct fake_dev *d = arg;
    if (d->fail_next) {
        d->fail_next = 0;
        return CRUX_ERR_NOMEM;
    }
    d->regs++;
    d->pinned += len;
    d->last_addr = (uintptr_t)addr;
    d->last_len = len;
    size_t *h = malloc(sizeof(size_t));
    *h = len;
    *mr = h;
    return CRUX_SUCCESS;
}

static void fake_dereg(void *arg, void *mr)
{
    struct fake_dev *d = arg;
    d->deregs++;
    d->pinned -= *(size_t *)mr;
    free(mr);
}

#define PG 4096u
#define A(x) ((void *)(uintptr_t)(x))

Test(verbs_mrc, page_range_and_hits)
{
    struct fake_dev d = {0};
    struct mr_cache c;
    struct mrc_entry *e, *f;
    mrc_init(&c, 1u << 20, PG, fake_reg, fake_dereg, &d);
    cr_assert_eq(mrc_acquire(&c, A(0x10000 + 100), 5000, &e), CRUX_SUCCESS);
    cr_assert_eq(d.last_addr, 0x10000, "registered from the page start");
    cr_assert_eq(d.last_len, 2 * PG, "[0x10064, 0x113ec) spans two pages");
    mrc_release(&c, e);
    /* Anything inside those pages is a hit; one byte past them is not. */
    cr_assert_eq(mrc_acquire(&c, A(0x10000), 2 * PG, &f), CRUX_SUCCESS);
    cr_assert_eq(f, e);
    mrc_release(&c, f);
    cr_assert_eq(mrc_acquire(&c, A(0x11000 + 7), 9, &f), CRUX_SUCCESS);
    cr_assert_eq(f, e);
    mrc_release(&c, f);
    cr_assert_eq(c.hits, 2);
    cr_assert_eq(c.misses, 1);
    cr_assert_eq(mrc_acquire(&c, A(0x10000), 2 * PG + 1, &f), CRUX_SUCCESS);
    cr_assert_neq(f, e);
    cr_assert_eq(c.misses, 2);
    cr_assert_eq(d.last_len, 3 * PG);
    mrc_release(&c, f);
    mrc_destroy(&c);
    cr_assert_eq(d.regs, d.deregs);
    cr_assert_eq(d.pinned, 0);
}

Test(verbs_mrc, lru_eviction_under_the_bound)
{
    struct fake_dev d = {0};
    struct mr_cache c;
    struct mrc_entry *e[4];
    mrc_init(&c, 3 * PG, PG, fake_reg, fake_dereg, &d);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(mrc_acquire(&c, A(0x100000 + i * 0x10000), PG, &e[i]), CRUX_SUCCESS);
        mrc_release(&c, e[i]);
    }
    cr_assert_eq(d.pinned, 3 * PG);
    /* Touch buffer 0: buffer 1 is now the least recently used. */
    cr_assert_eq(mrc_acquire(&c, A(0x100000), PG, &e[0]), CRUX_SUCCESS);
    mrc_release(&c, e[0]);
    cr_assert_eq(mrc_acquire(&c, A(0x200000), PG, &e[3]), CRUX_SUCCESS);
    mrc_release(&c, e[3]);
    cr_assert_eq(d.pinned, 3 * PG, "the bound holds");
    cr_assert_eq(c.evictions, 1);
    cr_assert_eq(mrc_acquire(&c, A(0x100000), PG, &e[0]), CRUX_SUCCESS);
    mrc_release(&c, e[0]);
    cr_assert_eq(mrc_acquire(&c, A(0x120000), PG, &e[2]), CRUX_SUCCESS);
    mrc_release(&c, e[2]);
    cr_assert_eq(c.misses, 4, "0 and 2 stayed, so only 1 was evicted");
    uint64_t m = c.misses;
    cr_assert_eq(mrc_acquire(&c, A(0x110000), PG, &e[1]), CRUX_SUCCESS);
    mrc_release(&c, e[1]);
    cr_assert_eq(c.misses, m + 1, "1 was evicted");
    mrc_destroy(&c);
    cr_assert_eq(d.pinned, 0);
}

Test(verbs_mrc, in_use_entries_are_never_evicted)
{
    struct fake_dev d = {0};
    struct mr_cache c;
    struct mrc_entry *a, *b;
    mrc_init(&c, PG, PG, fake_reg, fake_dereg, &d);
    cr_assert_eq(mrc_acquire(&c, A(0x10000), PG, &a), CRUX_SUCCESS);
    cr_assert_eq(mrc_acquire(&c, A(0x20000), PG, &b), CRUX_SUCCESS);
    cr_assert_eq(d.deregs, 0, "both are referenced: over the bound, but kept");
    cr_assert_eq(d.pinned, 2 * PG);
    mrc_release(&c, a);
    cr_assert_eq(d.deregs, 1, "released and over the bound: dropped");
    mrc_release(&c, b);
    cr_assert_eq(d.pinned, PG);
    mrc_destroy(&c);
}

/* Pinned memory ran out (ulimit -l): idle registrations are dropped and the
 * registration retried, even under the byte bound; busy ones stay. */
Test(verbs_mrc, out_of_pinnable_memory_evicts_idle_and_retries)
{
    struct fake_dev d = {0};
    struct mr_cache c;
    struct mrc_entry *a, *b, *e;
    mrc_init(&c, 1u << 30, PG, fake_reg, fake_dereg, &d);
    cr_assert_eq(mrc_acquire(&c, A(0x10000), PG, &a), CRUX_SUCCESS);
    cr_assert_eq(mrc_acquire(&c, A(0x20000), PG, &b), CRUX_SUCCESS);
    mrc_release(&c, a);
    d.fail_next = 1;
    cr_assert_eq(mrc_acquire(&c, A(0x30000), PG, &e), CRUX_SUCCESS);
    cr_assert_eq(d.deregs, 1, "the idle entry was dropped");
    cr_assert_eq(c.nentries, 2, "the busy one and the new one remain");
    mrc_release(&c, b);
    mrc_release(&c, e);
    mrc_destroy(&c);
    cr_assert_eq(d.pinned, 0);
}

Test(verbs_mrc, zero_bound_registers_per_use)
{
    struct fake_dev d = {0};
    struct mr_cache c;
    struct mrc_entry *a;
    mrc_init(&c, 0, PG, fake_reg, fake_dereg, &d);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(mrc_acquire(&c, A(0x10000), 100, &a), CRUX_SUCCESS);
        mrc_release(&c, a);
    }
    cr_assert_eq(d.regs, 3);
    cr_assert_eq(d.deregs, 3);
    cr_assert_eq(d.pinned, 0);
}

Test(verbs_mrc, registration_failure_propagates)
{
    struct fake_dev d = {.fail_next = 1};
    struct mr_cache c;
    struct mrc_entry *a = NULL;
    mrc_init(&c, 1u << 20, PG, fake_reg, fake_dereg, &d);
    cr_assert_eq(mrc_acquire(&c, A(0x10000), 100, &a), CRUX_ERR_NOMEM);
    cr_assert_eq(c.nentries, 0);
    cr_assert_eq(d.regs, 0, "nothing idle to evict: no retry");
    cr_assert_eq(mrc_acquire(&c, A(0x10000), 100, &a), CRUX_SUCCESS);
    mrc_release(&c, a);
    mrc_destroy(&c);
    cr_assert_eq(d.pinned, 0);
}
/* ---------- released memory leaves the cache (verbs_memhook) ---------- */

static void *map_pages(void *at, size_t n)
{
    void *p = mmap(at, n * PG, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | (at ? MAP_FIXED_NOREPLACE : 0), -1, 0);
    cr_assert_neq(p, MAP_FAILED);
    return p;
}

/* Acquire and release at once; returns the entry (still cached, or dropped). */
static struct mrc_entry *touch(struct mr_cache *c, const void *p, size_t len)
{
    struct mrc_entry *e;
    cr_assert_eq(mrc_acquire(c, p, len, &e), CRUX_SUCCESS);
    mrc_release(c, e);
    return e;
}

Test(verbs_memhook, hooks_are_the_processs) { cr_assert(mh_hooks_active()); }

/* A libcrux loaded after libc (dlopen, as from Python) sees that its hooks are not
 * the ones the process calls, so its cache keeps nothing. mh_hooks_active compares,
 * name by name, what the process resolves with the library's own definition; the
 * library exports only its API and these hooks, so the test makes the same
 * comparison from outside: every hook the dlopened library exports differs from the
 * process's. */
Test(verbs_memhook, dlopened_library_knows_its_hooks_are_shadowed)
{
    static const char *names[] = {"free", "realloc", "reallocarray", "munmap",
                                  "mremap", "mmap", "madvise"};
    void *h = dlopen(CRUX_BINARY_DIR "/libcrux.so", RTLD_NOW | RTLD_LOCAL);
    cr_assert_not_null(h, "dlopen libcrux.so: %s", dlerror());
    cr_assert_null(dlsym(h, "mh_hooks_active"), "internals are not exported");
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        void *own = dlsym(h, names[i]), *process = dlsym(RTLD_DEFAULT, names[i]);
        Dl_info where;
        cr_assert(own && dladdr(own, &where) && strstr(where.dli_fname, "libcrux.so"),
                  "libcrux.so does not export its %s hook", names[i]);
        cr_assert_neq(own, process, "%s: the dlopened library's hook is the process's", names[i]);
    }
    dlclose(h);
}

/* The test the cache exists to pass: unmap a registered buffer, map new pages at
 * the same address, and the next lookup registers them instead of returning the
 * registration of the old pages. */
Test(verbs_memhook, munmap_then_new_pages_at_the_same_address)
{
    struct fake_dev d = {0};
    struct mr_cache c;
    mrc_init(&c, 1u << 30, PG, fake_reg, fake_dereg, &d);
    uint8_t *m = map_pages(NULL, 4);
    touch(&c, m, 4 * PG);
    touch(&c, m + 100, 200);
    cr_assert_eq(c.hits, 1, "nothing released yet: a hit");
    cr_assert_eq(munmap(m, 4 * PG), 0);
    uint8_t *m2 = map_pages(m, 4);
    cr_assert_eq(m2, m, "the kernel gave the same address back");
    touch(&c, m2, 4 * PG);
    cr_assert_eq(c.misses, 2, "new pages: registered again");
    cr_assert_eq(d.regs, 2);
    cr_assert_eq(d.deregs, 1, "the old registration was dropped");
    cr_assert_eq(c.invalidations, 1);
    cr_assert_eq(munmap(m2, 4 * PG), 0);
    mrc_destroy(&c);
    cr_assert_eq(d.pinned, 0);
}

/* glibc unmaps a large chunk inside free(), through no interposable munmap: the
 * free hook drops the registration of the whole chunk. */
Test(verbs_memhook, free_of_a_registered_malloc_buffer)
{
    struct fake_dev d = {0};
    struct mr_cache c;
    mrc_init(&c, 1u << 30, PG, fake_reg, fake_dereg, &d);
    size_t n = 4u << 20;
    uint8_t *p = malloc(n);
    cr_assert_not_null(p);
    touch(&c, p + 4096, n - 8192);
    free(p);
    uint8_t *other = map_pages(NULL, 1);
    touch(&c, other, PG);
    cr_assert_eq(d.deregs, 1, "the freed buffer's registration went at the next lookup");
    cr_assert_eq(c.invalidations, 1);
    /* An unrelated free leaves the cache alone. */
    free(malloc(64));
    touch(&c, other, PG);
    cr_assert_eq(c.hits, 1);
    cr_assert_eq(c.invalidations, 1);
    munmap(other, PG);
    mrc_destroy(&c);
    cr_assert_eq(d.pinned, 0);
}

/* realloc and reallocarray may move or unmap the old block. */
Test(verbs_memhook, realloc_and_reallocarray)
{
    struct fake_dev d = {0};
    struct mr_cache c;
    mrc_init(&c, 1u << 30, PG, fake_reg, fake_dereg, &d);
    size_t n = 4u << 20;
    uint8_t *p = malloc(n);
    cr_assert_not_null(p);
    touch(&c, p, n);
    p = realloc(p, 2 * n);
    cr_assert_not_null(p);
    touch(&c, p, n);
    cr_assert_eq(c.invalidations, 1);
    p = reallocarray(p, 3, n);
    cr_assert_not_null(p);
    touch(&c, p, n);
    cr_assert_eq(c.invalidations, 2);
    cr_assert_eq(d.deregs, 2);
    free(p);
    mrc_destroy(&c);
    cr_assert_eq(d.pinned, 0);
}

Test(verbs_memhook, madvise_mremap_and_mmap_fixed)
{
    struct fake_dev d = {0};
    struct mr_cache c;
    mrc_init(&c, 1u << 30, PG, fake_reg, fake_dereg, &d);
    uint8_t *m = map_pages(NULL, 8);
    touch(&c, m, 2 * PG);
    touch(&c, m + 4 * PG, 2 * PG);
    cr_assert_eq(madvise(m, 2 * PG, MADV_WILLNEED), 0);
    touch(&c, m, 2 * PG);
    cr_assert_eq(c.invalidations, 0, "WILLNEED keeps the pages");
    cr_assert_eq(madvise(m + PG, PG, MADV_DONTNEED), 0);
    touch(&c, m, 2 * PG);
    cr_assert_eq(c.invalidations, 1, "DONTNEED discards them");
    cr_assert_eq(c.misses, 3);
    /* mmap MAP_FIXED over the second buffer replaces its pages. */
    cr_assert_eq(mmap(m + 5 * PG, PG, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0), m + 5 * PG);
    touch(&c, m + 4 * PG, 2 * PG);
    cr_assert_eq(c.invalidations, 2);
    /* mremap moves the first away. */
    uint8_t *moved = mremap(m, 2 * PG, 3 * PG, MREMAP_MAYMOVE);
    cr_assert_neq(moved, MAP_FAILED);
    touch(&c, m + 4 * PG, 2 * PG);
    cr_assert_eq(c.invalidations, 3);
    cr_assert_eq(d.regs - d.deregs, 1, "only the second buffer's new registration is left");
    munmap(moved, 3 * PG);
    munmap(m + 2 * PG, 6 * PG);
    mrc_destroy(&c);
    cr_assert_eq(d.pinned, 0);
}

/* Released while a transfer uses it: never returned again, dropped at release. */
Test(verbs_memhook, busy_entry_goes_stale)
{
    struct fake_dev d = {0};
    struct mr_cache c;
    struct mrc_entry *busy, *e;
    mrc_init(&c, 1u << 30, PG, fake_reg, fake_dereg, &d);
    uint8_t *m = map_pages(NULL, 2);
    cr_assert_eq(mrc_acquire(&c, m, 2 * PG, &busy), CRUX_SUCCESS);
    cr_assert_eq(madvise(m, 2 * PG, MADV_DONTNEED), 0);
    cr_assert_eq(mrc_acquire(&c, m, 2 * PG, &e), CRUX_SUCCESS);
    cr_assert_neq(e, busy, "the stale registration is not handed out");
    cr_assert_eq(d.deregs, 0, "in use: kept until released");
    mrc_release(&c, busy);
    cr_assert_eq(d.deregs, 1);
    mrc_release(&c, e);
    munmap(m, 2 * PG);
    mrc_destroy(&c);
    cr_assert_eq(d.pinned, 0);
}

/* More releases than the note ring holds between two lookups: everything idle goes. */
Test(verbs_memhook, lost_notes_drop_everything_idle)
{
    struct fake_dev d = {0};
    struct mr_cache c;
    mrc_init(&c, 1u << 30, PG, fake_reg, fake_dereg, &d);
    uint8_t *m = map_pages(NULL, 2), *far = map_pages(NULL, 1);
    touch(&c, m, PG);
    touch(&c, far, PG);
    for (int i = 0; i < 300; i++)
        cr_assert_eq(madvise(m, PG, MADV_DONTNEED), 0);
    touch(&c, m + PG, PG);
    cr_assert_eq(d.deregs, 2, "both idle registrations were dropped");
    munmap(m, 2 * PG);
    munmap(far, PG);
    mrc_destroy(&c);
    cr_assert_eq(d.pinned, 0);
}
#endif /* CRUX_HAVE_VERBS */

/* ---------- real Soft-RoCE in QEMU ---------- */

#define RXE_VM CRUX_SOURCE_DIR "/tests/vm/rxe-vm"

/* NULL when the VM tests can run here, else why not. */
static const char *vm_unavailable(void)
{
#ifndef CRUX_HAVE_VERBS
    return "this build has no verbs transport (libibverbs-dev/librdmacm-dev missing)";
#else
    if (!CRUX_TEST_VM_ENABLED)
        return "sanitizer build: the Soft-RoCE VM tests run in the release build only";
    if (geteuid() != 0)
        return "not root: rxe-vm needs root to boot guests and load rdma_rxe";
    if (system("command -v qemu-system-x86_64 >/dev/null 2>&1") != 0)
        return "qemu-system-x86_64 is not installed (scripts/deps.sh installs it)";
    glob_t g;
    int n = glob("/boot/vmlinuz-*", 0, NULL, &g) == 0 ? (int)g.gl_pathc : 0;
    globfree(&g);
    if (n == 0)
        return "no kernel image in /boot (apt-get install linux-image-amd64)";
    return NULL;
#endif
}

/* Run cmd in `guests` guests with the build dir as the shared workdir. */
static void vm_run(int guests, const char *cmd, double timeout_s, struct proc_result *res)
{
    const char *why = vm_unavailable();
    if (why)
        cr_skip_test("%s", why);
    char n[8], t[16];
    snprintf(n, sizeof(n), "%d", guests);
    snprintf(t, sizeof(t), "%d", (int)timeout_s - 10);
    char *argv[] = {RXE_VM, "-N", n, "-t", t, "-C", CRUX_BINARY_DIR, "--", (char *)cmd, NULL};
    char *env[] = {"RXE_VM_GRACE=30", NULL};
    cr_assert_eq(run_proc(argv, env, timeout_s, res), 0);
    if (res->status == 125) { /* a guest did not boot: once more before giving up */
        proc_result_dump(res);
        proc_result_free(res);
        cr_assert_eq(run_proc(argv, env, timeout_s, res), 0);
    }
    if (res->status == 125) {
        proc_result_dump(res);
        cr_skip_test("QEMU could not boot a guest with rdma_rxe here (rxe-vm exit 125)");
    }
    proc_result_dump(res);
    cr_assert(!res->timed_out, "the guest run hung");
}

static int count(const char *hay, const char *needle)
{
    int k = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p++)
        k++;
    return k;
}

/* Every collective, dtype and op (the shm/tcp suite's quick mode) over verbs,
 * two ranks on one rxe device. */
Test(verbs_vm, one_guest_every_collective_2ranks, .timeout = 200)
{
    struct proc_result res;
    vm_run(1, "CRUX_TRANSPORT=verbs " CRUX_RUN_PATH " -n 2 " CRUX_TEST_RANKPROG " coll --quick",
           170, &res);
    cr_assert_eq(res.status, 0, "exit %d", res.status);
    cr_assert_eq(count(res.out, ": OK"), 2);
    proc_result_free(&res);
}

/* Every allreduce algorithm over verbs: 4 ranks in one guest as two fake hosts
 * (CRUX_HOSTNAME), so hier and tree take their multi-node shape; every dtype, op and
 * count up to 100003 (eager and rendezvous), exact and bit-identical on all ranks. */
Test(verbs_vm, one_guest_every_algorithm_4ranks, .timeout = 400)
{
    struct proc_result res;
    vm_run(1,
           "for a in ring recdbl hier tree; do CRUX_ALGO=$a CRUX_TRANSPORT=verbs " CRUX_RUN_PATH
           " -n 4 " CRUX_TEST_RANKPROG " --hosts h0,h0,h1,h1 allreduce || echo \"algo $a failed\"; done",
           370, &res);
    if (res.status != 0 || count(res.out, ": OK") != 16)
        proc_result_dump(&res);
    cr_assert_eq(res.status, 0, "exit %d", res.status);
    cr_assert_eq(count(res.out, "failed"), 0);
    cr_assert_eq(count(res.out, ": OK"), 16);
    proc_result_free(&res);
}

/* Three ranks in one guest: sizes x dtypes exact, and the counters prove the
 * paths: a 4 MiB ring allreduce sends every payload byte by zero-copy rendezvous
 * (none through bounce slots), the reduce-scatter lands in scratch, the allgather
 * straight in the user buffer, and the repeat hits the registration cache. Then a
 * 64 KiB ulimit -l (CAP_IPC_LOCK dropped) must fail init with the fix named, and a
 * 2 MiB one fail the first large allreduce without a hang. */
Test(verbs_vm, one_guest_paths_3ranks_and_memlock, .timeout = 200)
{
    struct proc_result res;
    vm_run(1,
           "CRUX_TRANSPORT=verbs " CRUX_RUN_PATH " -n 3 " CRUX_TEST_VERBSPROG " paths; "
           "echo paths-exit=$?; ulimit -l 64; CRUX_TRANSPORT=verbs setpriv --inh-caps=-ipc_lock "
           "--bounding-set=-ipc_lock " CRUX_RUN_PATH " -n 2 " CRUX_TEST_VERBSPROG " paths; "
           "echo memlock-exit=$?; ulimit -l 2048; CRUX_TIMEOUT=600 CRUX_TRANSPORT=verbs setpriv "
           "--inh-caps=-ipc_lock --bounding-set=-ipc_lock " CRUX_RUN_PATH " -n 2 "
           CRUX_TEST_VERBSPROG " paths; echo memlock2-exit=$?",
           170, &res);
    char *end = strstr(res.out, "paths-exit=0");
    cr_assert(end, "the verbs paths run failed");
    *end = '\0'; /* count the 3-rank run's lines only */
    cr_assert_eq(count(res.out, ": OK"), 3);
    cr_assert_eq(count(res.out, "eager tx 0 rx 0 bytes"), 3);
    *end = 'p';
    cr_assert(strstr(res.out, "memlock-exit=") && !strstr(res.out, "memlock-exit=0"),
              "init must fail under a 64 KiB memlock limit");
    cr_assert(strstr(res.out, "ulimit -l") && strstr(res.out, "memlock unlimited"),
              "the error must say how to raise the locked-memory limit");
    /* 2 MiB: init fits, a 4 MiB user buffer does not. The collective must fail (not
     * hang until the 600 s CRUX_TIMEOUT: the guest run would time out). */
    cr_assert(strstr(res.out, "memlock2-exit=") && !strstr(res.out, "memlock2-exit=0"),
              "a user buffer over ulimit -l must fail the collective");
    cr_assert(strstr(res.out, "ibv_reg_mr(user buffer"), "the failed registration is logged");
    proc_result_free(&res);
}

/* Four ranks on one rxe device, every size class exact (eager, rendezvous, ring).
 * Then two ranks disagree on the count of a rendezvous-sized allreduce: the
 * receivers refuse the RTS, and both ranks get CRUX_ERR_MISMATCH, no hang. Then
 * a sender floods a receiver that posts nothing: credits stop it at the posted
 * slots, and all 400 messages arrive in order, exact. Last, two ranks with
 * different CRUX_IB_TIMEOUT both fail crux_init with CRUX_ERR_MISMATCH naming it. */
Test(verbs_vm, one_guest_4ranks_mismatch_flow, .timeout = 200)
{
    struct proc_result res;
    vm_run(1, "export CRUX_TRANSPORT=verbs CRUX_TIMEOUT=60; " CRUX_RUN_PATH " -n 4 "
           CRUX_TEST_VERBSPROG " sizes; echo sizes-exit=$?; " CRUX_RUN_PATH " -n 2 "
           CRUX_TEST_VERBSPROG " mismatch; echo mismatch-exit=$?; " CRUX_RUN_PATH " -n 2 "
           CRUX_TEST_VERBSPROG " flow; echo flow-exit=$?; " CRUX_RUN_PATH " -n 2 bash -c "
           "'CRUX_IB_TIMEOUT=$((14 + CRUX_RANK)) exec " CRUX_TEST_VERBSPROG " sizes'; "
           "echo ibcfg-exit=$?", 170, &res);
    cr_assert(strstr(res.out, "sizes-exit=0"));
    cr_assert(strstr(res.out, "flow-exit=0"), "credit flow control or ordering failed");
    cr_assert_eq(count(res.out, ": OK"), 6);
    cr_assert(strstr(res.out, "mismatch-exit=3"), "want CRUX_ERR_MISMATCH (exit 3)");
    char want[160];
    snprintf(want, sizeof(want), "mismatched large allreduce returned %s",
             crux_error_string(CRUX_ERR_MISMATCH));
    cr_assert_eq(count(res.out, want), 2, "both ranks must report the mismatch");
    /* Each side sees the other's RTS mismatch (whether the REFUSE lands before the
     * hang-up is a race): the log decodes both headers. */
    cr_assert(strstr(res.out, "does not match: expected allreduce algo=ring dtype=float op=sum "
                              "count=10000"), "the mismatch must be logged decoded");
    /* Ranks whose QPs would retry differently fail init, naming the variable. */
    cr_assert(strstr(res.out, "ibcfg-exit=") && !strstr(res.out, "ibcfg-exit=0"));
    cr_assert_eq(count(res.out, "CRUX_IB_TIMEOUT differs between rank"), 2, "both ends name it");
    snprintf(want, sizeof(want), "crux_init returned %s", crux_error_string(CRUX_ERR_MISMATCH));
    cr_assert_eq(count(res.out, want), 2);
    proc_result_free(&res);
}

#define TWO_GUEST_ENV                                                                             \
    "export CRUX_RANK=$RXE_VM_INDEX CRUX_SIZE=$RXE_VM_COUNT CRUX_ROOT=${RXE_VM_ADDRS%% *}:29500 "  \
    "CRUX_LOG_LEVEL=info CRUX_LOG_SUBSYS=INIT; "

/* One rank per guest, the identity set by hand; auto must pick verbs between hosts. */
Test(verbs_vm, two_guests_paths, .timeout = 200)
{
    struct proc_result res;
    vm_run(2, TWO_GUEST_ENV CRUX_TEST_VERBSPROG " paths", 170, &res);
    cr_assert_eq(res.status, 0, "exit %d", res.status);
    cr_assert(strstr(res.out, "[g0] rank 0: OK") && strstr(res.out, "[g1] rank 1: OK"));
    cr_assert_eq(count(res.out, "between hosts: verbs"), 2, "auto must choose verbs across hosts");
    proc_result_free(&res);
}

/* Two ranks per guest, identity by hand: auto must put shm within a guest and
 * verbs between them, and both carry allreduces of every size class exactly. */
Test(verbs_vm, two_guests_2ranks_each_shm_and_verbs, .timeout = 200)
{
    struct proc_result res;
    vm_run(2,
           "export CRUX_SIZE=4 CRUX_ROOT=${RXE_VM_ADDRS%% *}:29500 CRUX_LOG_LEVEL=info "
           "CRUX_LOG_SUBSYS=INIT; for j in 0 1; do CRUX_RANK=$((RXE_VM_INDEX*2+j)) "
           "CRUX_LOCAL_RANK=$j " CRUX_TEST_VERBSPROG " sizes & p=\"$p $!\"; done; rc=0; "
           "for i in $p; do wait $i || rc=1; done; exit $rc",
           170, &res);
    cr_assert_eq(res.status, 0, "exit %d", res.status);
    cr_assert_eq(count(res.out, ": OK"), 4);
    cr_assert_eq(count(res.out, "transport shm carries 1 peer(s)"), 4);
    cr_assert_eq(count(res.out, "transport verbs carries 2 peer(s)"), 4);
    proc_result_free(&res);
}

/* Rank 1 SIGKILLs itself mid-stream; rank 0 must get CRUX_ERR_PEER (exit 3) with a
 * decoded work completion naming rank 1, its host and GID - no hang. */
Test(verbs_vm, two_guests_peer_killed, .timeout = 200)
{
    struct proc_result res;
    vm_run(2, TWO_GUEST_ENV "export CRUX_IB_TIMEOUT=14 CRUX_IB_RETRY_CNT=3 CRUX_TIMEOUT=60; "
           CRUX_TEST_RANKPROG " kill 1 20; echo exit=$?", 170, &res);
    cr_assert(strstr(res.out, "[g0] exit=3"), "the survivor must fail with CRUX_ERR_PEER");
    char want[128];
    snprintf(want, sizeof(want), "allreduce after a peer died returned %s",
             crux_error_string(CRUX_ERR_PEER));
    cr_assert(strstr(res.out, want));
    const char *line = strstr(res.out, "work completion with rank 1 (host rxe-g1, GID ");
    cr_assert(line, "no decoded work completion naming rank 1");
    cr_assert(strstr(line, "retry counter exceeded") || strstr(line, "flush"),
              "status not decoded: %.200s", line);
    cr_assert(strstr(line, "vendor error") && strstr(line, "opcode"));
    proc_result_free(&res);
}
