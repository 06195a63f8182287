/* c_gtopk.c - gTop-k sparse allreduce (Shi et al., "A Distributed Synchronous SGD
 * Algorithm with Global Top-k Sparsification", ICDCS 2019, arXiv 1901.04359;
 * rules as in ../shared/ALGORITHMS.md section 2, read from hclhkbu/gtopkssgd):
 *
 *   acc = m + g;  I = top-k(|acc|)                   local selection
 *   tree: pairs merge their k-lists (sum on the union of indices, lower rank's
 *         value + higher rank's), keep top-k of the union; log2 P rounds
 *   the root's k entries go back down (broadcast); out = those sums
 *   m = acc with I ∩ I_global cleared: entries a rank sent that did not survive
 *       return to its residual (the paper's add_residuals), low-pass if asked.
 *
 * Non-powers of two: with p2 the largest power of two <= P, ranks p2..P-1 first
 * fold their list into rank r - p2 (exchange 0); then exchange j = 1..log2 p2 has
 * rank r (with r mod 2^j == 2^(j-1)) send to r - 2^(j-1). Rank 0 ends with the
 * global list. Every list has exactly k entries (k <= chunk length, and a union
 * of two k-lists has at least k), so a message is the encoded indices followed by
 * k floats, preceded by its 8-byte length.
 *
 * Per chunk the tree is one queued step: the tree of chunk i runs while chunk i+1
 * is accumulated and selected.
 */
#include <string.h>

#include "lib/compress.h"

#define TAG_TREE 0x6000u
#define TAG_DOWN 0x6100u

enum { PH_POST = 0, PH_GOT_LEN, PH_GOT_DATA, PH_SENT, PH_DOWN_LEN, PH_DOWN_DATA, PH_DONE };

static int pof2_floor(int p) { return 1 << (31 - __builtin_clz((unsigned)p)); }

/* Our role in exchange x: +1 receive from *peer, -1 send to *peer, 0 idle. */
static int tree_role(int r, int P, int x, int *peer)
{
    int p2 = pof2_floor(P);
    if (x == 0) {
        if (r >= p2) {
            *peer = r - p2;
            return -1;
        }
        *peer = r + p2;
        return r < P - p2 ? 1 : 0;
    }
    if (r >= p2)
        return 0;
    int mask = 1 << (x - 1);
    if (r & (mask - 1))
        return 0; /* sent in an earlier exchange */
    *peer = r ^ mask;
    return (r & mask) ? -1 : 1;
}

static int tree_exchanges(int P) { return 1 + __builtin_ctz((unsigned)pof2_floor(P)); }

/* [encoded indices | k floats] of the current list into buf. */
static size_t pack_list(const struct cx_step *s, const uint32_t *idx, const float *val, uint8_t *buf)
{
    size_t e = crux_idx_encode(idx, s->k, s->clen, buf);
    memcpy(buf + e, val, s->k * sizeof(float));
    return e + s->k * sizeof(float);
}

static int unpack_list(const struct cx_step *s, const uint8_t *buf, size_t len, uint32_t *idx,
                       float *val, int from)
{
    size_t vb = s->k * sizeof(float), got = 0;
    if (len < vb || crux_idx_decode(buf, len - vb, s->clen, idx, s->k, &got) != CRUX_SUCCESS ||
        got != s->k) {
        crux_error(CRUX_SUBSYS_CODEC, "gTop-k chunk %zu: the %zu bytes from rank %d are not %zu "
                   "entries of [0, %zu): ranks disagree", s->chunk, len, from, s->k, s->clen);
        return CRUX_ERR_MISMATCH;
    }
    memcpy(val, buf + (len - vb), vb);
    return CRUX_SUCCESS;
}

/* Current list, received list and merge output live in the compressor's scratch
 * (one tree runs at a time). */
#define CUR_IDX(c) ((c)->tidx)
#define CUR_VAL(c) ((c)->tval)
#define RCV_IDX(c) ((c)->tidx + (c)->kmax)
#define RCV_VAL(c) ((c)->tval + (c)->kmax)
#define MRG_IDX(c) ((c)->tidx + 2 * (c)->kmax)
#define MRG_VAL(c) ((c)->tval + 2 * (c)->kmax)

static void merge_received(struct crux_compressor *c, const struct cx_step *s)
{
    size_t m = crux_sparse_merge(CUR_IDX(c), CUR_VAL(c), s->k, RCV_IDX(c), RCV_VAL(c), s->k,
                                 MRG_IDX(c), MRG_VAL(c));
    crux_topk_sparse(MRG_IDX(c), MRG_VAL(c), m, s->k, CUR_IDX(c), CUR_VAL(c));
}

/* Post the next exchange we take part in; when none is left, start the way down. */
static int tree_advance(struct crux_coll *op, struct cx_step *s)
{
    struct crux_compressor *c = s->cx;
    int P = op->comm->size, r = op->comm->rank, peer = 0;
    for (; s->round < tree_exchanges(P); s->round++) {
        int role = tree_role(r, P, s->round, &peer);
        uint32_t tag = TAG_TREE + 2u * (uint32_t)s->round;
        if (role > 0) {
            CRUX_TRY(crux_coll_recv(op, peer, tag, &s->rlen, sizeof(s->rlen), NULL));
            op->phase = PH_GOT_LEN;
            return CRUX_INPROGRESS;
        }
        if (role < 0) {
            s->len = pack_list(s, CUR_IDX(c), CUR_VAL(c), c->encbuf);
            CRUX_TRY(crux_coll_send(op, peer, tag, &s->len, sizeof(s->len), NULL, NULL));
            CRUX_TRY(crux_coll_send(op, peer, tag + 1, c->encbuf, s->len, NULL, NULL));
            op->phase = PH_SENT;
            return CRUX_INPROGRESS;
        }
    }
    /* Rank 0 holds the global list: keep it and send it down. */
    if (r == 0) {
        size_t ch = s->chunk;
        memcpy(c->idx + ch * c->cand_max, CUR_IDX(c), s->k * sizeof(uint32_t));
        memcpy(c->val + ch * c->cand_max, CUR_VAL(c), s->k * sizeof(float));
        s->len = pack_list(s, CUR_IDX(c), CUR_VAL(c), s->buf);
    }
    op->phase = PH_SENT; /* falls into the way down */
    return CRUX_SUCCESS;
}

static int down_post(struct crux_coll *op, struct cx_step *s, int data)
{
    int P = op->comm->size, vr = op->comm->rank, mask = 1;
    void *buf = data ? (void *)s->buf : (void *)&s->len;
    size_t bytes = data ? s->len : sizeof(s->len);
    uint32_t tag = TAG_DOWN + (uint32_t)data;
    struct crux_xfer *from_parent = NULL;
    while (mask < P) {
        if (vr & mask) {
            CRUX_TRY(crux_coll_recv(op, vr - mask, tag, buf, bytes, &from_parent));
            break;
        }
        mask <<= 1;
    }
    for (mask >>= 1; mask > 0; mask >>= 1)
        if (vr + mask < P)
            CRUX_TRY(crux_coll_send(op, vr + mask, tag, buf, bytes, from_parent, NULL));
    return CRUX_SUCCESS;
}

int crux_gtopk_tree(struct crux_coll *op)
{
    struct cx_step *s = (struct cx_step *)op;
    struct crux_compressor *c = s->cx;
    size_t ch = s->chunk;
    int rc;
    switch (op->phase) {
    case PH_POST:
        memcpy(CUR_IDX(c), c->lidx + ch * c->kmax, s->k * sizeof(uint32_t));
        memcpy(CUR_VAL(c), c->lval + ch * c->kmax, s->k * sizeof(float));
        break;
    case PH_GOT_LEN:
        if (s->rlen > s->cap || s->rlen < s->k * sizeof(float)) {
            crux_error(CRUX_SUBSYS_CODEC, "gTop-k chunk %zu: a peer announced %zu bytes (%zu..%zu "
                       "possible): ranks disagree", ch, (size_t)s->rlen, s->k * sizeof(float), s->cap);
            return CRUX_ERR_MISMATCH;
        }
        {
            int peer = 0;
            tree_role(op->comm->rank, op->comm->size, s->round, &peer);
            CRUX_TRY(crux_coll_recv(op, peer, TAG_TREE + 2u * (uint32_t)s->round + 1, s->buf,
                                    s->rlen, NULL));
        }
        op->phase = PH_GOT_DATA;
        return CRUX_INPROGRESS;
    case PH_GOT_DATA: {
        int peer = 0;
        tree_role(op->comm->rank, op->comm->size, s->round, &peer);
        CRUX_TRY(unpack_list(s, s->buf, s->rlen, RCV_IDX(c), RCV_VAL(c), peer));
        merge_received(c, s);
        s->round++;
        break;
    }
    case PH_SENT:
        s->round = tree_exchanges(op->comm->size); /* a sender is done with the tree */
        break;
    case PH_DOWN_LEN:
        if (s->len > s->cap) {
            crux_error(CRUX_SUBSYS_CODEC, "gTop-k chunk %zu: rank 0 announced %zu bytes: ranks "
                       "disagree", ch, (size_t)s->len);
            return CRUX_ERR_MISMATCH;
        }
        CRUX_TRY(down_post(op, s, 1));
        op->phase = PH_DOWN_DATA;
        return CRUX_INPROGRESS;
    case PH_DOWN_DATA:
        if (op->comm->rank != 0)
            CRUX_TRY(unpack_list(s, s->buf, s->len, c->idx + ch * c->cand_max,
                                 c->val + ch * c->cand_max, 0));
        op->phase = PH_DONE;
        return CRUX_SUCCESS;
    default:
        return CRUX_SUCCESS;
    }
    /* After the start, a merge, or our send: the next exchange, or the way down. */
    if (op->phase != PH_SENT || s->round < tree_exchanges(op->comm->size)) {
        rc = tree_advance(op, s);
        if (rc != CRUX_SUCCESS)
            return rc;
    }
    if (op->comm->size == 1) {
        op->phase = PH_DONE;
        return CRUX_SUCCESS;
    }
    CRUX_TRY(down_post(op, s, 0));
    op->phase = PH_DOWN_LEN;
    return CRUX_INPROGRESS;
}

/* I ∩ I_global (both ascending): the entries of ours that the result carries. */
static size_t intersect(const uint32_t *a, size_t na, const uint32_t *b, size_t nb, uint32_t *out)
{
    size_t i = 0, j = 0, o = 0;
    while (i < na && j < nb) {
        if (a[i] < b[j])
            i++;
        else if (b[j] < a[i])
            j++;
        else {
            out[o++] = a[i];
            i++, j++;
        }
    }
    return o;
}

static void gtopk_finish_chunk(struct crux_compressor *c, size_t ch)
{
    size_t k = cx_chunk_k(c, cx_chunk_len(c, ch));
    c->nk[ch] = k;
    size_t ns = intersect(c->lidx + ch * c->kmax, c->lk[ch], c->idx + ch * c->cand_max, k, c->sent);
    cx_mem_update(c, ch, c->sent, ns);
}

int crux_gtopk_allreduce(struct crux_compressor *c, const float *grad, float *out)
{
    struct cx_step *prev = NULL;
    for (size_t ch = 0; ch < c->nchunks; ch++) {
        size_t off = cx_chunk_off(c, ch), len = cx_chunk_len(c, ch), k = cx_chunk_k(c, len);
        double t = cx_tic();
        CRUX_TRY(cx_accumulate(c, ch, grad));
        c->lk[ch] = crux_topk(c->acc + off, len, k, c->cfg.seed + ch, c->ws, c->lidx + ch * c->kmax,
                              c->lval + ch * c->kmax);
        c->st.encode_s += cx_tic() - t;
        struct cx_step *s;
        CRUX_TRY(cx_post_gtopk(c, ch, &s));
        if (prev) { /* the previous chunk's tree ran while we selected this one */
            CRUX_TRY(cx_wait(c, prev));
            t = cx_tic();
            gtopk_finish_chunk(c, ch - 1);
            c->st.decode_s += cx_tic() - t;
        }
        prev = s;
    }
    CRUX_TRY(cx_wait(c, NULL));
    double t = cx_tic();
    gtopk_finish_chunk(c, c->nchunks - 1);
    for (size_t ch = 0; ch < c->nchunks; ch++) {
        cx_write_out(c, ch, out, c->idx + ch * c->cand_max, c->val + ch * c->cand_max, c->nk[ch]);
        c->st.nnz += c->nk[ch];
    }
    c->st.decode_s += cx_tic() - t;
    return CRUX_SUCCESS;
}
