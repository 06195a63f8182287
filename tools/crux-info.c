/* crux-info - what this crux build can do on this machine, and its parameters.
 *
 *   crux-info            version, build, reduction ISA, transports and why, topology
 *   crux-info -c         every CRUX_* parameter: doc, type, default, current value
 *   crux-info -t [XML]   topology only: NUMA nodes, the binding, RDMA devices with their
 *                        NUMA node and ports (or those of a saved hwloc XML topology)
 *   crux-info -v         version only
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

#ifdef CRUX_HAVE_VERBS
#include <infiniband/verbs.h>

#include "transport/verbs/verbs.h"
#endif

#include "crux.h"
#include "lib/buildinfo.h"
#include "lib/config.h"
#include "lib/log.h"
#include "lib/numa.h"
#include "lib/reduce.h"
#include "transport/tcp/tcp_iface.h"

static void usage(FILE *out)
{
    fprintf(out, "usage: crux-info [-c | -t [XML] | -v | -h]\n"
                 "  (none)  version, build options, reduction ISA, usable transports, topology\n"
                 "  -c      print every CRUX_* parameter with its doc, default and current value\n"
                 "  -t, --topology [XML]\n"
                 "          NUMA nodes, this process's CPU binding, RDMA devices with their NUMA\n"
                 "          node, ports, link layer, active MTU, speed and state; with XML, the\n"
                 "          nodes and devices of a saved hwloc topology (lstopo --of xml)\n"
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

static const char *locality_name(enum crux_locality loc)
{
    switch (loc) {
    case CRUX_LOC_LOCAL: return "local to the binding";
    case CRUX_LOC_PARTIAL: return "partly local to the binding";
    case CRUX_LOC_FAR: return "far from the binding";
    case CRUX_LOC_UNKNOWN: break;
    }
    return "locality unknown";
}

/* A saved topology has no binding to be near or far from. */
static void print_dev_numa(const struct crux_topo *t, const char *name, int with_locality)
{
    int node = crux_topo_dev_numa(t, name);
    if (node < 0)
        printf("    %s: NUMA node unknown\n", name);
    else if (with_locality)
        printf("    %s: NUMA node %d, %s\n", name, node,
               locality_name(crux_topo_dev_locality(t, name)));
    else
        printf("    %s: NUMA node %d\n", name, node);
}

#ifdef CRUX_HAVE_VERBS
/* Per-lane rate of ibv_port_attr.active_speed, in Gb/s (IBTA names). */
static double lane_gbps(uint8_t speed, const char **name)
{
    static const struct { uint8_t code; double gbps; const char *name; } rates[] = {
        {1, 2.5, "SDR"}, {2, 5.0, "DDR"}, {4, 10.0, "QDR"}, {8, 10.3125, "FDR10"},
        {16, 14.0625, "FDR"}, {32, 25.78125, "EDR"}, {64, 50.0, "HDR"}, {128, 100.0, "NDR"}};
    for (size_t i = 0; i < sizeof(rates) / sizeof(rates[0]); i++)
        if (rates[i].code == speed) {
            *name = rates[i].name;
            return rates[i].gbps;
        }
    *name = "unknown speed";
    return 0;
}

static int width_lanes(uint8_t width)
{
    switch (width) {
    case 1: return 1;
    case 2: return 4;
    case 4: return 8;
    case 8: return 12;
    case 16: return 2;
    }
    return 0;
}

static const char *link_layer_name(uint8_t ll)
{
    switch (ll) {
    case IBV_LINK_LAYER_INFINIBAND: return "InfiniBand";
    case IBV_LINK_LAYER_ETHERNET: return "Ethernet (RoCE)";
    }
    return "InfiniBand (link layer unspecified)";
}

static void print_port(struct ibv_context *ctx, const char *name, int port)
{
    struct ibv_port_attr pa;
    char buf[80];
    if (ibv_query_port(ctx, (uint8_t)port, &pa) != 0) {
        printf("      port %d: ibv_query_port failed: %s\n", port,
               strerror_r(errno, buf, sizeof(buf)));
        return;
    }
    const char *speed_name;
    double lane = lane_gbps(pa.active_speed, &speed_name);
    int lanes = width_lanes(pa.active_width);
    printf("      port %d: %s, %s, active MTU %d", port, ibv_port_state_str(pa.state),
           link_layer_name(pa.link_layer), pa.active_mtu ? 128 << pa.active_mtu : 0);
    if (lane > 0 && lanes > 0)
        printf(", %dX %s = %g Gb/s\n", lanes, speed_name, lane * lanes);
    else
        printf(", speed unknown (width code %u, speed code %u)\n", pa.active_width,
               pa.active_speed);
}

static void print_verbs_dev(const struct crux_topo *t, struct ibv_device *dev)
{
    const char *name = ibv_get_device_name(dev);
    char buf[80];
    print_dev_numa(t, name, 1);
    struct ibv_context *ctx = ibv_open_device(dev);
    struct ibv_device_attr da;
    if (!ctx) {
        printf("      cannot open: %s\n", strerror_r(errno, buf, sizeof(buf)));
        return;
    }
    if (ibv_query_device(ctx, &da) != 0)
        printf("      ibv_query_device failed: %s\n", strerror_r(errno, buf, sizeof(buf)));
    else
        for (int p = 1; p <= da.phys_port_cnt; p++)
            print_port(ctx, name, p);
    ibv_close_device(ctx);
}
#endif

/* This machine's RDMA devices as libibverbs lists them, placed by hwloc. */
static void print_rdma_devices(const struct crux_topo *t)
{
#ifdef CRUX_HAVE_VERBS
    char buf[80];
    int n = 0;
    struct ibv_device **devs = ibv_get_device_list(&n);
    if (!devs && errno == ENOSYS) {
        printf("  RDMA devices: no RDMA devices (this kernel has no RDMA subsystem: "
               "/sys/class/infiniband is absent)\n");
        return;
    }
    if (!devs) {
        printf("  RDMA devices: no RDMA devices (ibv_get_device_list: %s)\n",
               strerror_r(errno, buf, sizeof(buf)));
        return;
    }
    if (n == 0)
        printf("  RDMA devices: no RDMA devices (libibverbs lists none; load a driver, e.g. "
               "mlx5_ib, or add Soft-RoCE: rdma link add rxe0 type rxe netdev eth0)\n");
    else
        printf("  RDMA devices: %d\n", n);
    for (int i = 0; i < n; i++)
        print_verbs_dev(t, devs[i]);
    ibv_free_device_list(devs);
#else
    int n = 0;
    while (crux_topo_dev_name(t, n))
        n++;
    printf("  RDMA devices: %s (verbs support was not built: ports, MTU and speed need "
           "libibverbs-dev at configure time)\n", n ? "as hwloc sees them" : "no RDMA devices");
    for (int i = 0; i < n; i++)
        print_dev_numa(t, crux_topo_dev_name(t, i), 1);
#endif
}

/* RDMA devices named in a saved topology: placement only, nothing to query. */
static void print_xml_devices(const struct crux_topo *t)
{
    int n = 0;
    while (crux_topo_dev_name(t, n))
        n++;
    printf("  RDMA devices: %s\n", n ? "from the XML (ports are not recorded there)"
                                     : "no RDMA devices in the XML");
    for (int i = 0; i < n; i++)
        print_dev_numa(t, crux_topo_dev_name(t, i), 0);
}

static int print_topology(const char *xml)
{
    struct crux_topo *t;
    char cpus[256];
    if (crux_topo_open(xml, &t) != CRUX_SUCCESS) {
        printf("topology: unavailable: hwloc could not load %s (see the error above)\n",
               xml ? xml : "this machine");
        return 1;
    }
    printf("topology (hwloc, %s%s):\n", xml ? "from " : "this machine", xml ? xml : "");
    int nnodes = crux_topo_numa_nodes(t), bnode = crux_topo_binding_numa(t);
    crux_topo_binding_cpus(t, cpus, sizeof(cpus));
    if (xml)
        printf("  binding: none (a saved topology)\n");
    else if (bnode >= 0)
        printf("  binding: CPUs %s%s, NUMA node %d\n", cpus,
               crux_topo_is_bound(t) ? "" : " (all: unbound)", bnode);
    else
        printf("  binding: CPUs %s%s, spanning NUMA nodes\n", cpus,
               crux_topo_is_bound(t) ? "" : " (all: unbound)");
    printf("  NUMA nodes: %d\n", nnodes);
    for (int i = 0; i < nnodes; i++) {
        int node = crux_topo_numa_os_index(t, i);
        crux_topo_numa_cpus(t, node, cpus, sizeof(cpus));
        printf("    node %d: CPUs %s\n", node, cpus[0] ? cpus : "none (memory only)");
    }
    if (xml)
        print_xml_devices(t);
    else
        print_rdma_devices(t);
    crux_topo_close(t);
    return 0;
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
#ifdef CRUX_HAVE_VERBS
    char why[256];
    if (crux_verbs_usable(&cfg, why, sizeof(why)) == CRUX_SUCCESS)
        printf("  verbs: available: %s (%s%s)\n", why,
               cfg.ib_hca[0] ? "CRUX_IB_HCA=" : "CRUX_IB_HCA not set: the first active port",
               cfg.ib_hca);
    else
        printf("  verbs: unavailable: %s\n", why);
#else
    printf("  verbs: not built (CRUX_WITH_VERBS=OFF, or libibverbs/librdmacm missing at configure "
           "time)\n");
#endif
    return print_topology(NULL);
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
    int topo = argc >= 2 && (strcmp(argv[1], "-t") == 0 || strcmp(argv[1], "--topology") == 0);
    if (argc > (topo ? 3 : 2)) {
        usage(stderr);
        return 2;
    }
    if (argc == 1)
        return print_overview();
    if (topo)
        return print_topology(argc == 3 ? argv[2] : NULL);
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
