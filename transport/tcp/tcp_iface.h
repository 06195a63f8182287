/* tcp_iface.h - which local interface/address the TCP transport listens on. */
#ifndef CRUX_TCP_IFACE_H
#define CRUX_TCP_IFACE_H

#include <netinet/in.h>
#include <stddef.h>

/* Pick an UP IPv4 interface. list is CRUX_SOCKET_IFNAME syntax (NCCL: prefixes,
 * ^ to exclude, = for exact names); an empty list skips "lo" and "docker*" unless
 * nothing else is up, then falls back to docker*, then lo. Fills name and addr
 * (port 0). Returns CRUX_SUCCESS, CRUX_ERR_ARG for a malformed list, or
 * CRUX_ERR_TRANSPORT when nothing matches (logged, listing what was seen). */
int crux_tcp_pick_iface(const char *list, char *name, size_t nlen, struct sockaddr_in *addr);

#endif
