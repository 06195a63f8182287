/* tcp_wire.h - what the TCP transport puts on the wire, encoded explicitly
 * little-endian so hosts of any byte order and any compiler padding agree. */
#ifndef CRUX_TCP_WIRE_H
#define CRUX_TCP_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "transport/transport.h"

#define CRUX_TCP_HDR_BYTES 32

/* Connection handshake, sent once by the connecting (lower) rank. */
#define CRUX_TCP_HS_MAGIC 0x50435443u /* "CTCP" */
#define CRUX_TCP_HS_VERSION 1u
#define CRUX_TCP_HS_BYTES 24

struct crux_tcp_hs {
    uint32_t magic;
    uint32_t version;
    uint64_t job_key;
    int32_t rank; /* who connects */
    int32_t to;   /* who it believes it reached */
};

/* Sent by close() as the last bytes of a stream: "this end departs on purpose".
 * An end of stream after it is a normal departure; without it, a death. */
#define CRUX_TCP_BYE_CTX 0xffffffffu
#define CRUX_TCP_BYE_SEQ 0x4259452d43525558ull /* "BYE-CRUX" */
void crux_tcp_bye_encode(uint8_t out[CRUX_TCP_HDR_BYTES]);
int crux_tcp_is_bye(const uint8_t *buf);

void crux_tcp_hdr_encode(const struct crux_msg_hdr *h, uint8_t out[CRUX_TCP_HDR_BYTES]);
/* Decodes exactly CRUX_TCP_HDR_BYTES; returns 0, or -1 if len is too short. */
int crux_tcp_hdr_decode(const uint8_t *buf, size_t len, struct crux_msg_hdr *h);
int crux_tcp_hdr_equal(const struct crux_msg_hdr *a, const struct crux_msg_hdr *b);
/* "ctx=1 tag=2 seq=3 sig=0x.. len=4" */
void crux_tcp_hdr_format(const struct crux_msg_hdr *h, char *buf, size_t len);

void crux_tcp_hs_encode(const struct crux_tcp_hs *hs, uint8_t out[CRUX_TCP_HS_BYTES]);
/* Decodes and validates against this job: returns 0, or -1 with *why set. */
int crux_tcp_hs_decode(const uint8_t *buf, size_t len, uint64_t job_key, int my_rank, int size,
                       struct crux_tcp_hs *hs, const char **why);

#endif
