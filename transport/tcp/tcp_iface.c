/* tcp_iface.c - interface selection, NCCL-style (CRUX_SOCKET_IFNAME). */
#include "tcp_iface.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <stdio.h>
#include <string.h>

#include "crux.h"
#include "config.h"
#include "log.h"

enum pick_pass { PASS_LIST, PASS_DEFAULT, PASS_DOCKER, PASS_LO };

static int is_up_ipv4(const struct ifaddrs *ifa)
{
    return ifa->ifa_addr != NULL && ifa->ifa_addr->sa_family == AF_INET &&
           (ifa->ifa_flags & IFF_UP) && ifa->ifa_name != NULL;
}

static int is_docker(const char *name) { return strncmp(name, "docker", 6) == 0; }

static int pass_accepts(enum pick_pass pass, const char *list, const char *name)
{
    switch (pass) {
    case PASS_LIST:
        return crux_iflist_match(list, name, -1);
    case PASS_DEFAULT:
        return strcmp(name, "lo") != 0 && !is_docker(name);
    case PASS_DOCKER:
        return is_docker(name);
    case PASS_LO:
        return strcmp(name, "lo") == 0;
    }
    return 0;
}

static const struct ifaddrs *pick_in_pass(const struct ifaddrs *all, enum pick_pass pass,
                                          const char *list)
{
    for (const struct ifaddrs *ifa = all; ifa != NULL; ifa = ifa->ifa_next)
        if (is_up_ipv4(ifa) && pass_accepts(pass, list, ifa->ifa_name))
            return ifa;
    return NULL;
}

/* For the error message: every UP IPv4 interface that was considered. */
static void list_seen(const struct ifaddrs *all, char *buf, size_t len)
{
    size_t off = 0;
    buf[0] = '\0';
    for (const struct ifaddrs *ifa = all; ifa != NULL && off < len; ifa = ifa->ifa_next) {
        if (!is_up_ipv4(ifa))
            continue;
        int n = snprintf(buf + off, len - off, "%s%s", off ? "," : "", ifa->ifa_name);
        if (n < 0)
            break;
        off += (size_t)n;
    }
}

int crux_tcp_pick_iface(const char *list, char *name, size_t nlen, struct sockaddr_in *addr)
{
    struct ifaddrs *all = NULL;
    const struct ifaddrs *hit = NULL;
    int has_list = list != NULL && list[0] != '\0';

    if (name == NULL || nlen == 0 || addr == NULL)
        return CRUX_ERR_ARG;
    if (has_list && crux_iflist_valid(list) != 0) {
        crux_error(CRUX_SUBSYS_NET, "CRUX_SOCKET_IFNAME='%s' is not a valid interface list", list);
        return CRUX_ERR_ARG;
    }
    if (getifaddrs(&all) != 0) {
        crux_error(CRUX_SUBSYS_NET, "getifaddrs: %s", strerror(errno));
        return CRUX_ERR_TRANSPORT;
    }
    if (has_list) {
        hit = pick_in_pass(all, PASS_LIST, list);
    } else {
        for (int pass = PASS_DEFAULT; pass <= PASS_LO && hit == NULL; pass++)
            hit = pick_in_pass(all, (enum pick_pass)pass, list);
    }
    if (hit == NULL) {
        char seen[512];
        list_seen(all, seen, sizeof(seen));
        crux_error(CRUX_SUBSYS_NET,
                   "no UP IPv4 interface matches CRUX_SOCKET_IFNAME='%s' (available: %s)",
                   has_list ? list : "", seen[0] ? seen : "none");
        freeifaddrs(all);
        return CRUX_ERR_TRANSPORT;
    }
    snprintf(name, nlen, "%s", hit->ifa_name);
    memcpy(addr, hit->ifa_addr, sizeof(*addr));
    addr->sin_port = 0;
    freeifaddrs(all);
    return CRUX_SUCCESS;
}
