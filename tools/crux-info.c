/* crux-info - what this crux build can do on this machine, and its parameters.
 *
 *   crux-info       version, build, reduction ISA, transports and why
 *   crux-info -c    every CRUX_* parameter: doc, type, default, current value
 *   crux-info -v    version only
 *
 * Needs no job: it never calls crux_init.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "crux.h"
#include "lib/buildinfo.h"
#include "lib/config.h"
#include "lib/log.h"
#include "lib/reduce.h"
#include "transport/tcp/tcp_iface.h"

static void usage(FILE *out)
{
    fprintf(out, "usage: crux-info [-c | -v | -h]\n"
                 "  (none)  version, build options, reduction ISA, usable transports\n"
                 "  -c      print every CRUX_* parameter with its doc, default and current value\n"
                 "  -v      print the version only\n"
                 "  -h      this help\n");
}

/* Up IPv4 interfaces TCP may use, in the order it considers them: those matching
 * CRUX_SOCKET_IFNAME, or without a list everything but lo and docker*, then
 * docker*, then lo. Prints them and returns how many. */
enum iface_class { IF_LIST, IF_OTHER, IF_DOCKER, IF_LO };

static int iface_in_class(const char *name, const char *list, enum iface_class c)
{
    int lo = strcmp(name, "lo") == 0, docker = strncmp(name, "docker", 6) == 0;
    switch (c) {
    case IF_LIST: return crux_iflist_match(list, name, -1);
    case IF_OTHER: return !lo && !docker;
    case IF_DOCKER: return docker;
    case IF_LO: return lo;
    }
    return 0;
}

static int print_ifaces(const struct ifaddrs *ifs, const char *list, enum iface_class c)
{
    int n = 0;
    for (const struct ifaddrs *i = ifs; i; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET || !(i->ifa_flags & IFF_UP) ||
            !iface_in_class(i->ifa_name, list, c))
            continue;
        char addr[INET_ADDRSTRLEN];
        const struct sockaddr_in *sin = (const struct sockaddr_in *)(const void *)i->ifa_addr;
        if (!inet_ntop(AF_INET, &sin->sin_addr, addr, sizeof(addr)))
            snprintf(addr, sizeof(addr), "?");
        printf("%s%s %s", n ? ", " : "", i->ifa_name, addr);
        n++;
    }
    return n;
}

static void print_tcp(const struct crux_config *cfg)
{
    const char *list = cfg->socket_ifname;
    struct ifaddrs *ifs;
    char name[IF_NAMESIZE + 1], buf[80];
    struct sockaddr_in addr;

    if (getifaddrs(&ifs) != 0) {
        printf("  tcp:   unknown: getifaddrs failed: %s\n", strerror_r(errno, buf, sizeof(buf)));
        return;
    }
    printf("  tcp:   usable interfaces: ");
    int n = 0;
    for (int c = list[0] ? IF_LIST : IF_OTHER; c <= (list[0] ? IF_LIST : IF_LO) && n == 0; c++)
        n = print_ifaces(ifs, list, (enum iface_class)c);
    freeifaddrs(ifs);
    printf("%s\n", n ? "" : "none");
    if (list[0])
        printf("         (up IPv4 interfaces matching CRUX_SOCKET_IFNAME=%s)\n", list);
    else
        printf("         (CRUX_SOCKET_IFNAME not set: every up IPv4 interface but lo and docker*;"
               "\n          those are used only when nothing else is up)\n");

    /* Ask the transport itself which one it would listen on; its own error
     * message would repeat what is printed here, so keep it quiet. */
    int level = crux_log_level_cur;
    unsigned mask = crux_log_subsys_mask;
    crux_log_setup(CRUX_LOG_NONE, mask);
    int rc = crux_tcp_pick_iface(list, name, sizeof(name), &addr);
    crux_log_setup(level, mask);
    if (rc != CRUX_SUCCESS) {
        printf("         unavailable: %s\n", n ? crux_error_string(rc) : "no usable interface");
        return;
    }
    inet_ntop(AF_INET, &addr.sin_addr, buf, sizeof(buf));
    printf("         available: listens on %s %s%s\n", name, buf,
           ntohl(addr.sin_addr.s_addr) >> 24 == 127
               ? " (loopback: ranks on other hosts cannot connect)" : "");
}

static int print_overview(void)
{
    struct crux_config cfg;
    static const char *const tp_names[] = {"auto", "shm", "tcp", "verbs"};

    printf("crux %s\n", CRUX_VERSION_STRING);
    printf("build: %s\n", crux_build_info());
    printf("reduction kernels: %s\n", crux_reduce_isa());
    /* The environment decides which interfaces TCP may use. */
    if (crux_config_load(&cfg) != CRUX_SUCCESS) {
        fprintf(stderr, "crux-info: invalid CRUX_* environment (see the error above); "
                        "crux-info -c lists the parameters\n");
        return 1;
    }
    printf("transports (CRUX_TRANSPORT=%s):\n", tp_names[cfg.transport & 3]);
    printf("  shm:   available (ranks on the same host; always built on Linux)\n");
    print_tcp(&cfg);
    printf("  verbs: not built: the verbs transport is not part of this build yet\n");
    return 0;
}

static int print_config(void)
{
    struct crux_config cfg;
    if (crux_config_load(&cfg) != CRUX_SUCCESS) {
        fprintf(stderr, "crux-info: invalid CRUX_* environment (see the error above)\n");
        return 1;
    }
    printf("# crux %s parameters: set them as environment variables.\n", CRUX_VERSION_STRING);
    crux_config_print(stdout, &cfg);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 2) {
        usage(stderr);
        return 2;
    }
    if (argc == 1)
        return print_overview();
    if (strcmp(argv[1], "-c") == 0)
        return print_config();
    if (strcmp(argv[1], "-v") == 0) {
        printf("crux %s\n", CRUX_VERSION_STRING);
        return 0;
    }
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "crux-info: unknown option '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
