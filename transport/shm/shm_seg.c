/* shm_seg.c - creating, exchanging and releasing the shared segments.
 *
 * Collective over every world rank, with a fixed sequence of two status
 * allgathers so ranks stay aligned whatever fails locally:
 *   1. create + size + map + pre-fault my segment (inbound channels), allgather status;
 *   2. open + map my peers' segments, allgather status;
 *   3. unlink my name: from here a SIGKILLed rank leaks nothing in /dev/shm.
 * The owner touches its segment first: it is the reader of everything in it, so on
 * a multi-socket host its pages land on the reader's node. Peers map with
 * MAP_POPULATE so no call ever faults.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "shm.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

static void seg_name(const struct crux_ctx *ctx, int rank, char *buf, size_t len)
{
    snprintf(buf, len, "/crux-%016llx-%d", (unsigned long long)ctx->id.job_key, rank);
}

static size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

static uint64_t pow2_at_least(uint64_t n)
{
    uint64_t p = SHM_PAGE;
    while (p < n)
        p <<= 1;
    return p;
}

static size_t eager_limit(const struct crux_config *cfg)
{
    return cfg->shm_eager_bytes < SHM_EAGER_MAX ? cfg->shm_eager_bytes : SHM_EAGER_MAX;
}

/* Fill the directory of a segment for the given sources; returns its total size. */
static size_t seg_layout(const struct crux_config *cfg, const struct shm_peer *peers, int n,
                         struct shm_dir *dir)
{
    uint64_t data = pow2_at_least(2 * round_up(eager_limit(cfg), SHM_LINE));
    size_t chunk = cfg->chunk_bytes;
    chunk = chunk < SHM_PAGE ? SHM_PAGE : chunk > (16u << 20) ? (16u << 20) : chunk;
    uint64_t stage = round_up(chunk, SHM_PAGE);
    size_t ctl = round_up((1 + SHM_STAGE_DEPTH + SHM_NSLOTS) * SHM_LINE, SHM_PAGE);
    size_t off = round_up(sizeof(struct shm_seg_hdr) + (size_t)n * sizeof(struct shm_dir), SHM_PAGE);
    for (int i = 0; i < n; i++) {
        dir[i] = (struct shm_dir){.src_rank = peers[i].rank, .nslots = SHM_NSLOTS,
                                  .depth = SHM_STAGE_DEPTH, .off = off, .data_bytes = data,
                                  .stage_bytes = stage};
        off += ctl + data + SHM_STAGE_DEPTH * stage;
    }
    return off;
}

static void chan_bind(struct shm_chan *c, unsigned char *base, const struct shm_dir *d)
{
    unsigned char *at = base + d->off;
    c->credit = (struct shm_credit *)at;
    c->desc = (struct shm_desc *)(at + SHM_LINE);
    c->slots = (struct shm_slot *)(at + SHM_LINE * (1 + d->depth));
    c->data = at + round_up((size_t)SHM_LINE * (1 + d->depth + d->nslots), SHM_PAGE);
    c->stage = c->data + d->data_bytes;
    c->nslots = d->nslots;
    c->depth = d->depth;
    c->data_bytes = d->data_bytes;
    c->stage_bytes = d->stage_bytes;
}

static int seg_create(struct shm_tp *tp, char *name, size_t namelen)
{
    struct crux_ctx *ctx = tp->base.ctx;
    struct shm_dir *dir = calloc((size_t)tp->npeers, sizeof *dir);
    if (!dir) {
        crux_error(CRUX_SUBSYS_SHM, "out of memory for the segment directory (%d peers)", tp->npeers);
        return CRUX_ERR_NOMEM;
    }
    size_t len = seg_layout(&ctx->cfg, tp->peers, tp->npeers, dir);
    int rc = CRUX_ERR_TRANSPORT;
    seg_name(ctx, ctx->rank, name, namelen);
    int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0 && errno == EEXIST) { /* left by a killed run with the same job key */
        crux_warn(CRUX_SUBSYS_SHM, "removing stale shared segment %s", name);
        shm_unlink(name);
        fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
    }
    if (fd < 0) {
        crux_error(CRUX_SUBSYS_SHM, "shm_open(%s) failed: %s", name, strerror(errno));
        goto free_dir;
    }
    if (ftruncate(fd, (off_t)len) != 0) {
        crux_error(CRUX_SUBSYS_SHM, "ftruncate(%s, %zu) failed: %s (is /dev/shm full?)", name, len,
                   strerror(errno));
        goto unlink;
    }
    void *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (map == MAP_FAILED) {
        crux_error(CRUX_SUBSYS_SHM, "mmap(%s, %zu) failed: %s", name, len, strerror(errno));
        goto unlink;
    }
    for (size_t off = 0; off < len; off += SHM_PAGE) /* first touch by the reader */
        ((volatile unsigned char *)map)[off] = 0;
    struct shm_seg_hdr *h = map;
    h->owner = ctx->rank;
    h->nchan = tp->npeers;
    h->total_bytes = len;
    memcpy(h->dir, dir, (size_t)tp->npeers * sizeof *dir);
    h->magic = SHM_MAGIC;
    for (int i = 0; i < tp->npeers; i++)
        chan_bind(&tp->peers[i].rx, map, &dir[i]);
    tp->seg = map;
    tp->seg_len = len;
    tp->door = &h->door;
    crux_debug(CRUX_SUBSYS_SHM,
               "segment %s: %zu bytes, %d inbound channels (slots %d, data ring %llu, staging "
               "%d x %llu)",
               name, len, tp->npeers, SHM_NSLOTS,
               tp->npeers ? (unsigned long long)dir[0].data_bytes : 0ull, SHM_STAGE_DEPTH,
               tp->npeers ? (unsigned long long)dir[0].stage_bytes : 0ull);
    rc = CRUX_SUCCESS;
    goto close_fd;
unlink:
    shm_unlink(name);
close_fd:
    close(fd);
free_dir:
    free(dir);
    return rc;
}

static const struct shm_dir *seg_find_dir(const struct shm_seg_hdr *h, size_t len, int src)
{
    if (len < sizeof *h || h->magic != SHM_MAGIC || h->total_bytes != len || h->nchan < 0 ||
        sizeof *h + (size_t)h->nchan * sizeof(struct shm_dir) > len)
        return NULL;
    for (int i = 0; i < h->nchan; i++) {
        const struct shm_dir *d = &h->dir[i];
        if (d->src_rank != src)
            continue;
        int pow2 = d->nslots && !(d->nslots & (d->nslots - 1)) && d->depth &&
                   !(d->depth & (d->depth - 1)) && d->data_bytes &&
                   !(d->data_bytes & (d->data_bytes - 1)) && d->stage_bytes % SHM_LINE == 0;
        size_t need = round_up((size_t)SHM_LINE * (1 + d->depth + d->nslots), SHM_PAGE) +
                      d->data_bytes + (size_t)d->depth * d->stage_bytes;
        return pow2 && d->off % SHM_PAGE == 0 && d->off + need <= len ? d : NULL;
    }
    return NULL;
}

static int peer_attach(struct shm_tp *tp, struct shm_peer *p)
{
    struct crux_ctx *ctx = tp->base.ctx;
    char name[64];
    struct stat sb;
    int rc = CRUX_ERR_TRANSPORT;
    seg_name(ctx, p->rank, name, sizeof name);
    int fd = shm_open(name, O_RDWR, 0);
    if (fd < 0) {
        crux_error(CRUX_SUBSYS_SHM, "shm_open(%s) of peer rank %d (host %s) failed: %s", name,
                   p->rank, p->info->host, strerror(errno));
        return rc;
    }
    if (fstat(fd, &sb) != 0) {
        crux_error(CRUX_SUBSYS_SHM, "fstat(%s) failed: %s", name, strerror(errno));
        goto close_fd;
    }
    void *map = mmap(NULL, (size_t)sb.st_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                     fd, 0);
    if (map == MAP_FAILED) {
        crux_error(CRUX_SUBSYS_SHM, "mmap(%s, %lld) of peer rank %d failed: %s", name,
                   (long long)sb.st_size, p->rank, strerror(errno));
        goto close_fd;
    }
    p->map = map;
    p->map_len = (size_t)sb.st_size;
    const struct shm_dir *d = seg_find_dir(map, p->map_len, ctx->rank);
    if (!d) {
        crux_error(CRUX_SUBSYS_SHM,
                   "segment %s of peer rank %d (host %s) has no valid channel for rank %d "
                   "(peer lists disagree?)",
                   name, p->rank, p->info->host, ctx->rank);
        goto close_fd;
    }
    chan_bind(&p->tx, map, d);
    p->door = &((struct shm_seg_hdr *)map)->door;
    size_t eager = eager_limit(&ctx->cfg);
    p->eager_max = eager < d->data_bytes / 2 ? eager : d->data_bytes / 2;
    p->pidfd = (int)syscall(SYS_pidfd_open, (pid_t)p->info->pid, 0);
    if (p->pidfd < 0 && errno == ENOSYS) {
        p->death = SHM_DEATH_KILL0;
        crux_debug(CRUX_SUBSYS_SHM, "no pidfd_open: watching rank %d (pid %d) with kill(0)",
                   p->rank, (int)p->info->pid);
    } else if (p->pidfd < 0) { /* e.g. another pid namespace: never call it dead falsely */
        p->death = SHM_DEATH_NONE;
        crux_warn(CRUX_SUBSYS_SHM,
                  "pidfd_open(%d) for rank %d (host %s) failed: %s; its death will only be "
                  "seen as a timeout",
                  (int)p->info->pid, p->rank, p->info->host, strerror(errno));
    }
    rc = CRUX_SUCCESS;
close_fd:
    close(fd);
    return rc;
}

/* Exchange a status word; every rank learns whether all succeeded. */
static int status_round(struct shm_tp *tp, int32_t *all, int mine, const char *what)
{
    struct crux_ctx *ctx = tp->base.ctx;
    all[ctx->rank] = mine;
    int rc = crux_bootstrap_allgather(ctx->bs, all, sizeof *all);
    if (rc != CRUX_SUCCESS) {
        crux_error(CRUX_SUBSYS_SHM, "bootstrap allgather after %s failed (%d)", what, rc);
        return rc;
    }
    for (int r = 0; r < ctx->size; r++) {
        if (all[r] != CRUX_SUCCESS) {
            if (r != ctx->rank)
                crux_error(CRUX_SUBSYS_SHM, "shm %s failed on rank %d (host %s)", what, r,
                           ctx->peers[r].host);
            return all[r];
        }
    }
    return CRUX_SUCCESS;
}

static int peers_check(struct shm_tp *tp, const int *peers, int npeers)
{
    struct crux_ctx *ctx = tp->base.ctx;
    for (int i = 0; i < npeers; i++) {
        int r = peers[i];
        if (r < 0 || r >= ctx->size || r == ctx->rank || tp->peer_of[r] >= 0 ||
            ctx->peers[r].host_hash != ctx->peers[ctx->rank].host_hash) {
            crux_error(CRUX_SUBSYS_SHM, "shm peer %d is not a distinct other rank on this host",
                       r);
            return CRUX_ERR_ARG;
        }
        tp->peer_of[r] = i;
        tp->peers[i] = (struct shm_peer){.rank = r, .info = &ctx->peers[r], .pidfd = -1};
    }
    return CRUX_SUCCESS;
}

int shm_setup(struct shm_tp *tp, const int *peers, int npeers)
{
    struct crux_ctx *ctx = tp->base.ctx;
    char name[64] = "";
    int created = 0, rc;
    int32_t *all = calloc((size_t)ctx->size, sizeof *all);
    tp->peer_of = malloc((size_t)ctx->size * sizeof *tp->peer_of);
    tp->peers = calloc(npeers ? (size_t)npeers : 1, sizeof *tp->peers);
    if (!all || !tp->peer_of || !tp->peers) {
        crux_error(CRUX_SUBSYS_SHM, "out of memory for %d ranks", ctx->size);
        rc = CRUX_ERR_NOMEM;
    } else {
        for (int r = 0; r < ctx->size; r++)
            tp->peer_of[r] = -1;
        tp->npeers = npeers;
        rc = peers_check(tp, peers, npeers);
    }
    if (rc == CRUX_SUCCESS && npeers > 0) {
        rc = seg_create(tp, name, sizeof name);
        created = rc == CRUX_SUCCESS;
    }
    /* Both rounds run on every rank (all != NULL here unless we are out of memory,
     * in which case the job cannot stay aligned anyway). */
    int32_t dummy[1];
    int32_t *st = all ? all : dummy;
    if (all)
        rc = status_round(tp, st, rc, "segment creation");
    for (int i = 0; rc == CRUX_SUCCESS && i < npeers; i++)
        rc = peer_attach(tp, &tp->peers[i]);
    if (all) {
        int rc2 = status_round(tp, st, rc, "segment attach");
        if (rc == CRUX_SUCCESS)
            rc = rc2;
    }
    if (created)
        shm_unlink(name);
    free(all);
    return rc;
}

void shm_teardown(struct shm_tp *tp)
{
    for (int i = 0; tp->peers && i < tp->npeers; i++) {
        struct shm_peer *p = &tp->peers[i];
        if (p->map)
            munmap(p->map, p->map_len);
        if (p->pidfd >= 0)
            close(p->pidfd);
    }
    if (tp->seg)
        munmap(tp->seg, tp->seg_len);
    free(tp->peers);
    free(tp->peer_of);
    tp->peers = NULL;
    tp->peer_of = NULL;
    tp->seg = NULL;
}
