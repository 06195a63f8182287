/* tcp_wire.c - header and handshake encoding (little-endian, bounds-checked). */
#include "tcp_wire.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)p[i] << (8 * i);
    return v;
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

void crux_tcp_hdr_encode(const struct crux_msg_hdr *h, uint8_t out[CRUX_TCP_HDR_BYTES])
{
    put32(out + 0, h->ctx_id);
    put32(out + 4, h->tag);
    put64(out + 8, h->seq);
    put64(out + 16, h->sig);
    put64(out + 24, h->len);
}

int crux_tcp_hdr_decode(const uint8_t *buf, size_t len, struct crux_msg_hdr *h)
{
    if (buf == NULL || len < CRUX_TCP_HDR_BYTES)
        return -1;
    h->ctx_id = get32(buf + 0);
    h->tag = get32(buf + 4);
    h->seq = get64(buf + 8);
    h->sig = get64(buf + 16);
    h->len = get64(buf + 24);
    return 0;
}

int crux_tcp_hdr_equal(const struct crux_msg_hdr *a, const struct crux_msg_hdr *b)
{
    return a->ctx_id == b->ctx_id && a->tag == b->tag && a->seq == b->seq && a->sig == b->sig &&
           a->len == b->len;
}

void crux_tcp_hdr_format(const struct crux_msg_hdr *h, char *buf, size_t len)
{
    snprintf(buf, len, "ctx=%" PRIu32 " tag=%" PRIu32 " seq=%" PRIu64 " sig=0x%" PRIx64
             " len=%" PRIu64, h->ctx_id, h->tag, h->seq, h->sig, h->len);
}

void crux_tcp_hs_encode(const struct crux_tcp_hs *hs, uint8_t out[CRUX_TCP_HS_BYTES])
{
    put32(out + 0, hs->magic);
    put32(out + 4, hs->version);
    put64(out + 8, hs->job_key);
    put32(out + 16, (uint32_t)hs->rank);
    put32(out + 20, (uint32_t)hs->to);
}

int crux_tcp_hs_decode(const uint8_t *buf, size_t len, uint64_t job_key, int my_rank, int size,
                       struct crux_tcp_hs *hs, const char **why)
{
    *why = NULL;
    if (buf == NULL || len < CRUX_TCP_HS_BYTES) {
        *why = "short handshake";
        return -1;
    }
    hs->magic = get32(buf + 0);
    hs->version = get32(buf + 4);
    hs->job_key = get64(buf + 8);
    hs->rank = (int32_t)get32(buf + 16);
    hs->to = (int32_t)get32(buf + 20);
    if (hs->magic != CRUX_TCP_HS_MAGIC)
        *why = "bad magic (not a crux tcp peer)";
    else if (hs->version != CRUX_TCP_HS_VERSION)
        *why = "protocol version differs";
    else if (hs->job_key != job_key)
        *why = "job key differs (another job)";
    else if (hs->rank < 0 || hs->rank >= size)
        *why = "rank out of range";
    else if (hs->to != my_rank)
        *why = "addressed to another rank";
    return *why ? -1 : 0;
}

void crux_tcp_bye_encode(uint8_t out[CRUX_TCP_HDR_BYTES])
{
    struct crux_msg_hdr h = {.ctx_id = CRUX_TCP_BYE_CTX, .seq = CRUX_TCP_BYE_SEQ};
    crux_tcp_hdr_encode(&h, out);
}

int crux_tcp_is_bye(const uint8_t *buf)
{
    struct crux_msg_hdr h;
    if (crux_tcp_hdr_decode(buf, CRUX_TCP_HDR_BYTES, &h) != 0)
        return 0;
    return h.ctx_id == CRUX_TCP_BYE_CTX && h.seq == CRUX_TCP_BYE_SEQ && h.tag == 0 && h.sig == 0 &&
           h.len == 0;
}
