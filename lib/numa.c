/* numa.c - topology from hwloc: NUMA nodes, the rank's binding, where each RDMA
 * device is attached, and memory placed on a chosen node.
 *
 * An RDMA device is found as hwloc's OpenFabrics OS device of that name; its
 * locality is that of its first non-I/O ancestor (the package or NUMA node whose
 * PCIe root complex it hangs off). Soft-RoCE devices have no PCI function of
 * their own, so on this machine an rxe device takes the locality of the network
 * interface it is layered on (/sys/class/infiniband/<dev>/parent), and on a
 * one-node host any device the kernel lists is on that node.
 */
#include "numa.h"

#include <errno.h>
#include <hwloc.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "crux.h"
#include "log.h"

struct crux_topo {
    hwloc_topology_t topo;
    hwloc_bitmap_t binding; /* PUs the rank may run on */
    int thissystem;         /* 0 for an XML file: memory binding is not possible */
};

static int topo_read_binding(struct crux_topo *t)
{
    if (hwloc_get_cpubind(t->topo, t->binding, HWLOC_CPUBIND_THREAD) == 0 &&
        !hwloc_bitmap_iszero(t->binding))
        return CRUX_SUCCESS;
    /* Without a readable binding, treat the rank as unbound. */
    crux_debug(CRUX_SUBSYS_INIT, "hwloc_get_cpubind failed (%s): assuming the rank is unbound",
               strerror(errno));
    return hwloc_bitmap_copy(t->binding, hwloc_topology_get_topology_cpuset(t->topo)) == 0
               ? CRUX_SUCCESS : CRUX_ERR_NOMEM;
}

static const char *const skipped_plugins[] = {"pci",  "opencl", "gl",       "cuda",
                                              "nvml", "rsmi",   "levelzero"};

int crux_topo_open(const char *xml, struct crux_topo **out)
{
    int rc = CRUX_ERR_INTERNAL;
    struct crux_topo *t = calloc(1, sizeof(*t));
    if (!t) {
        crux_error(CRUX_SUBSYS_INIT, "out of memory for the topology");
        return CRUX_ERR_NOMEM;
    }
    if (hwloc_topology_init(&t->topo) != 0) {
        crux_error(CRUX_SUBSYS_INIT, "hwloc_topology_init: %s", strerror(errno));
        goto free_t;
    }
    if (xml && (access(xml, R_OK) != 0 || hwloc_topology_set_xml(t->topo, xml) != 0)) {
        crux_error(CRUX_SUBSYS_INIT, "hwloc topology XML %s: %s", xml, strerror(errno));
        rc = CRUX_ERR_ARG;
        goto destroy;
    }
    /* PCI devices, bridges and OS devices are filtered out unless asked for. */
    hwloc_topology_set_io_types_filter(t->topo, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
    /* The linux backend reads PCI from sysfs itself; the libpciaccess plugin
     * would only add leaks at exit (ASan fails every rank), and the GPU plugins
     * would probe drivers and displays a communication library has no use for. */
    for (size_t i = 0; i < sizeof(skipped_plugins) / sizeof(skipped_plugins[0]); i++)
        hwloc_topology_set_components(t->topo, HWLOC_TOPOLOGY_COMPONENTS_FLAG_BLACKLIST,
                                      skipped_plugins[i]);
    if (hwloc_topology_load(t->topo) != 0) {
        crux_error(CRUX_SUBSYS_INIT, "hwloc_topology_load(%s): %s", xml ? xml : "this machine",
                   strerror(errno));
        rc = xml ? CRUX_ERR_ARG : CRUX_ERR_INTERNAL;
        goto destroy;
    }
    t->thissystem = hwloc_topology_is_thissystem(t->topo);
    t->binding = hwloc_bitmap_alloc();
    if (!t->binding) {
        crux_error(CRUX_SUBSYS_INIT, "out of memory for the topology");
        rc = CRUX_ERR_NOMEM;
        goto destroy;
    }
    if (xml)
        rc = hwloc_bitmap_copy(t->binding, hwloc_topology_get_topology_cpuset(t->topo)) == 0
                 ? CRUX_SUCCESS : CRUX_ERR_NOMEM;
    else
        rc = topo_read_binding(t);
    if (rc != CRUX_SUCCESS)
        goto free_binding;
    *out = t;
    return CRUX_SUCCESS;
free_binding:
    hwloc_bitmap_free(t->binding);
destroy:
    hwloc_topology_destroy(t->topo);
free_t:
    free(t);
    return rc;
}

void crux_topo_close(struct crux_topo *t)
{
    if (!t)
        return;
    hwloc_bitmap_free(t->binding);
    hwloc_topology_destroy(t->topo);
    free(t);
}

static struct crux_topo *self_topo;
static pthread_once_t self_once = PTHREAD_ONCE_INIT;

static void self_load(void)
{
    if (crux_topo_open(NULL, &self_topo) != CRUX_SUCCESS)
        self_topo = NULL;
}

struct crux_topo *crux_topo_self(void)
{
    pthread_once(&self_once, self_load);
    return self_topo;
}

int crux_topo_set_binding(struct crux_topo *t, const char *pulist)
{
    if (!pulist) {
        if (!t->thissystem) {
            crux_error(CRUX_SUBSYS_INIT, "cannot read the binding of a topology loaded from XML");
            return CRUX_ERR_ARG;
        }
        return topo_read_binding(t);
    }
    hwloc_bitmap_t set = hwloc_bitmap_alloc();
    if (!set)
        return CRUX_ERR_NOMEM;
    int rc = CRUX_SUCCESS;
    if (hwloc_bitmap_list_sscanf(set, pulist) != 0) {
        crux_error(CRUX_SUBSYS_INIT, "binding '%s' is not a PU list such as 0-3,8", pulist);
        rc = CRUX_ERR_ARG;
    } else if (!hwloc_bitmap_intersects(set, hwloc_topology_get_topology_cpuset(t->topo))) {
        crux_error(CRUX_SUBSYS_INIT, "binding '%s' names no PU of the topology", pulist);
        rc = CRUX_ERR_ARG;
    } else {
        hwloc_bitmap_and(t->binding, set, hwloc_topology_get_topology_cpuset(t->topo));
    }
    hwloc_bitmap_free(set);
    return rc;
}

int crux_topo_numa_nodes(const struct crux_topo *t)
{
    return hwloc_get_nbobjs_by_type(t->topo, HWLOC_OBJ_NUMANODE);
}

int crux_topo_numa_os_index(const struct crux_topo *t, int i)
{
    hwloc_obj_t n = i >= 0 ? hwloc_get_obj_by_type(t->topo, HWLOC_OBJ_NUMANODE, (unsigned)i) : NULL;
    return n ? (int)n->os_index : -1;
}

static hwloc_obj_t numa_obj(const struct crux_topo *t, int node)
{
    return node >= 0 ? hwloc_get_numanode_obj_by_os_index(t->topo, (unsigned)node) : NULL;
}

int crux_topo_numa_cpus(const struct crux_topo *t, int node, char *buf, size_t len)
{
    hwloc_obj_t n = numa_obj(t, node);
    if (!n)
        return -1;
    hwloc_bitmap_list_snprintf(buf, len, n->cpuset);
    return 0;
}

static hwloc_obj_t osdev_by_name(const struct crux_topo *t, hwloc_obj_osdev_type_t type,
                                 const char *name)
{
    for (hwloc_obj_t o = hwloc_get_next_osdev(t->topo, NULL); o;
         o = hwloc_get_next_osdev(t->topo, o))
        if (o->attr->osdev.type == type && o->name && strcmp(o->name, name) == 0)
            return o;
    return NULL;
}

const char *crux_topo_dev_name(const struct crux_topo *t, int i)
{
    for (hwloc_obj_t o = hwloc_get_next_osdev(t->topo, NULL); o;
         o = hwloc_get_next_osdev(t->topo, o))
        if (o->attr->osdev.type == HWLOC_OBJ_OSDEV_OPENFABRICS && o->name && i-- == 0)
            return o->name;
    return NULL;
}

/* Soft-RoCE and other software devices name the netdev they run over. */
static int sysfs_parent_netdev(const char *ibdev, char *buf, size_t len)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "/sys/class/infiniband/%s/parent", ibdev);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    int ok = fgets(buf, (int)len, f) != NULL;
    fclose(f);
    if (!ok)
        return -1;
    buf[strcspn(buf, "\n")] = '\0';
    return buf[0] ? 0 : -1;
}

static int sysfs_has_ibdev(const char *ibdev)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "/sys/class/infiniband/%s", ibdev);
    return strchr(ibdev, '/') == NULL && access(path, F_OK) == 0;
}

/* The CPU-side object the device hangs off, or NULL if the device is unknown. */
static hwloc_obj_t dev_anchor(const struct crux_topo *t, const char *ibdev)
{
    hwloc_obj_t o = osdev_by_name(t, HWLOC_OBJ_OSDEV_OPENFABRICS, ibdev);
    char netdev[64];
    if (!o && t->thissystem && sysfs_parent_netdev(ibdev, netdev, sizeof(netdev)) == 0)
        o = osdev_by_name(t, HWLOC_OBJ_OSDEV_NETWORK, netdev);
    if (o)
        return hwloc_get_non_io_ancestor_obj(t->topo, o);
    /* One node: any device this kernel has (rxe over a virtual netdev) is on it. */
    if (t->thissystem && crux_topo_numa_nodes(t) == 1 && sysfs_has_ibdev(ibdev))
        return hwloc_get_root_obj(t->topo);
    return NULL;
}

/* A device attached to the root of a multi-node machine has no known node. */
static int anchor_is_vague(const struct crux_topo *t, hwloc_obj_t a)
{
    return a == hwloc_get_root_obj(t->topo) && crux_topo_numa_nodes(t) > 1;
}

int crux_topo_dev_numa(const struct crux_topo *t, const char *ibdev)
{
    hwloc_obj_t a = dev_anchor(t, ibdev);
    if (!a || anchor_is_vague(t, a) || hwloc_bitmap_iszero(a->nodeset))
        return -1;
    return hwloc_bitmap_first(a->nodeset);
}

void crux_topo_binding_cpus(const struct crux_topo *t, char *buf, size_t len)
{
    hwloc_bitmap_list_snprintf(buf, len, t->binding);
}

int crux_topo_is_bound(const struct crux_topo *t)
{
    return !hwloc_bitmap_isequal(t->binding, hwloc_topology_get_topology_cpuset(t->topo));
}

int crux_topo_binding_numa(const struct crux_topo *t)
{
    hwloc_bitmap_t nodes = hwloc_bitmap_alloc();
    if (!nodes)
        return -1;
    hwloc_cpuset_to_nodeset(t->topo, t->binding, nodes);
    int node = hwloc_bitmap_weight(nodes) == 1 ? hwloc_bitmap_first(nodes) : -1;
    hwloc_bitmap_free(nodes);
    return node;
}

enum crux_locality crux_topo_dev_locality(const struct crux_topo *t, const char *ibdev)
{
    hwloc_obj_t a = dev_anchor(t, ibdev);
    if (!a || anchor_is_vague(t, a))
        return CRUX_LOC_UNKNOWN;
    if (hwloc_bitmap_isincluded(t->binding, a->cpuset))
        return CRUX_LOC_LOCAL;
    return hwloc_bitmap_intersects(t->binding, a->cpuset) ? CRUX_LOC_PARTIAL : CRUX_LOC_FAR;
}

/* NUMA latency (the firmware's SLIT: 10 = local) from the binding's node to
 * ibdev's; INT_MAX when either node or the matrix is unknown. */
static int dev_distance(const struct crux_topo *t, const char *ibdev)
{
    hwloc_obj_t from = numa_obj(t, crux_topo_binding_numa(t));
    hwloc_obj_t to = numa_obj(t, crux_topo_dev_numa(t, ibdev));
    struct hwloc_distances_s *d;
    unsigned nr = 1;
    if (!from || !to ||
        hwloc_distances_get_by_type(t->topo, HWLOC_OBJ_NUMANODE, &nr, &d,
                                    HWLOC_DISTANCES_KIND_MEANS_LATENCY, 0) != 0 || nr == 0)
        return INT_MAX;
    hwloc_uint64_t there, back;
    int dist = hwloc_distances_obj_pair_values(d, from, to, &there, &back) == 0 &&
                       there < INT_MAX ? (int)there : INT_MAX;
    hwloc_distances_release(t->topo, d);
    return dist;
}

int crux_topo_pick_hca(const struct crux_topo *t, const char *const *devs, int ndevs)
{
    int best = -1, best_dist = INT_MAX;
    enum crux_locality best_loc = CRUX_LOC_FAR;
    /* Locality first; among equals, the NUMA distance (a far HCA on the same
     * package beats one across the inter-socket link); then the name. */
    for (int i = 0; i < ndevs; i++) {
        enum crux_locality loc = crux_topo_dev_locality(t, devs[i]);
        int dist = dev_distance(t, devs[i]);
        if (best < 0 || loc > best_loc || (loc == best_loc && dist < best_dist) ||
            (loc == best_loc && dist == best_dist && strcmp(devs[i], devs[best]) < 0)) {
            best = i;
            best_loc = loc;
            best_dist = dist;
        }
    }
    if (best >= 0)
        crux_debug(CRUX_SUBSYS_NET, "nearest HCA to the binding among %d: %s (locality %d)",
                   ndevs, devs[best], (int)best_loc);
    return best;
}

int crux_topo_warn_far_binding(const struct crux_topo *t, const char *ibdev)
{
    if (crux_topo_dev_locality(t, ibdev) != CRUX_LOC_FAR)
        return 0;
    char bound[128], local[128];
    int node = crux_topo_dev_numa(t, ibdev);
    hwloc_bitmap_list_snprintf(bound, sizeof(bound), t->binding);
    /* FAR implies a known anchor: its CPUs are the ones to bind to. */
    hwloc_bitmap_list_snprintf(local, sizeof(local), dev_anchor(t, ibdev)->cpuset);
    crux_warn(CRUX_SUBSYS_NET,
              "rank bound to CPUs %s, but %s is attached to NUMA node %d (CPUs %s): every "
              "transfer crosses the inter-socket link; bind ranks near their HCA or let "
              "CRUX_IB_HCA=auto pick one",
              bound, ibdev, node, local);
    return 1;
}

int crux_topo_buffer_node(const struct crux_topo *t, const char *ibdev)
{
    int node = ibdev ? crux_topo_dev_numa(t, ibdev) : -1;
    return node >= 0 ? node : crux_topo_binding_numa(t);
}

static size_t page_round(size_t len)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    return len ? (len + pg - 1) / pg * pg : pg;
}

/* Placement is a performance matter: a kernel that refuses mbind (containers
 * without CAP_SYS_NICE policies, seccomp) still gets working memory. */
static void bind_area(struct crux_topo *t, void *p, size_t len, int node)
{
    static int warned;
    hwloc_obj_t n = numa_obj(t, node);
    if (!n) {
        crux_warn(CRUX_SUBSYS_INIT, "no NUMA node %d in this topology: buffer left unbound", node);
        return;
    }
    if (hwloc_set_area_membind(t->topo, p, len, n->nodeset, HWLOC_MEMBIND_BIND,
                               HWLOC_MEMBIND_BYNODESET) != 0 && !warned) {
        warned = 1;
        crux_warn(CRUX_SUBSYS_INIT, "binding %zu bytes to NUMA node %d failed (%s): "
                  "buffers are placed by first touch", len, node, strerror(errno));
    }
}

void *crux_numa_alloc(struct crux_topo *t, size_t len, int node)
{
    size_t n = page_round(len);
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        crux_error(CRUX_SUBSYS_INIT, "mmap of %zu bytes for a NUMA node %d buffer: %s", n, node,
                   strerror(errno));
        return NULL;
    }
    if (t && t->thissystem && node >= 0)
        bind_area(t, p, n, node);
    /* First touch now, from the caller, so no fault lands on the hot path. */
    memset(p, 0, n);
    return p;
}

void crux_numa_free(void *p, size_t len)
{
    if (p)
        munmap(p, page_round(len));
}

void *crux_numa_buf_alloc(const char *ibdev, size_t len)
{
    struct crux_topo *t = crux_topo_self();
    int node = t ? crux_topo_buffer_node(t, ibdev) : -1;
    crux_debug(CRUX_SUBSYS_INIT, "%zu-byte buffer for %s on NUMA node %d", len,
               ibdev ? ibdev : "no device", node);
    return crux_numa_alloc(t, len, node);
}
