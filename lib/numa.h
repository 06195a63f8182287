/* numa.h - where this rank's CPUs, memory and RDMA devices are (hwloc underneath).
 *
 * NUMA nodes are named by their OS index (what Linux, numactl and get_mempolicy
 * call them). "Binding" is the set of CPUs the rank may run on: the calling
 * thread's binding on this machine, or a PU list given by a test. hwloc types
 * stay inside numa.c.
 */
#ifndef CRUX_NUMA_H
#define CRUX_NUMA_H

#include <stddef.h>

struct crux_topo;

/* Load a topology with I/O devices: xml == NULL is this machine, otherwise an
 * hwloc XML file (tests). The binding starts as the calling thread's on this
 * machine, or "everything" (unbound) for an XML file. CRUX_SUCCESS,
 * CRUX_ERR_ARG (bad XML, logged) or CRUX_ERR_INTERNAL. */
int crux_topo_open(const char *xml, struct crux_topo **out);
void crux_topo_close(struct crux_topo *t);

/* The process's own topology of this machine, loaded once on first use
 * (thread-safe), binding read at that moment. NULL if hwloc failed (logged once). */
struct crux_topo *crux_topo_self(void);

/* Replace the binding: a PU list in OS indexes ("0-3,8"), or NULL to re-read the
 * calling thread's binding (this machine only). CRUX_ERR_ARG if unparsable/empty. */
int crux_topo_set_binding(struct crux_topo *t, const char *pulist);

int crux_topo_numa_nodes(const struct crux_topo *t);
/* OS index of the i-th NUMA node (0 <= i < crux_topo_numa_nodes), -1 if out of range. */
int crux_topo_numa_os_index(const struct crux_topo *t, int i);
/* The node's CPUs as a PU list ("0-3,8") into buf; -1 if no such node. */
int crux_topo_numa_cpus(const struct crux_topo *t, int node, char *buf, size_t len);

/* Name of the i-th RDMA (OpenFabrics) device hwloc sees, NULL past the last.
 * Valid until crux_topo_close. */
const char *crux_topo_dev_name(const struct crux_topo *t, int i);
/* NUMA node local to RDMA device ibdev ("mlx5_0"), -1 if unknown (device not in
 * the topology, or attached to the whole machine of a multi-node host). */
int crux_topo_dev_numa(const struct crux_topo *t, const char *ibdev);
/* The binding as a PU list ("0-3,8") into buf. */
void crux_topo_binding_cpus(const struct crux_topo *t, char *buf, size_t len);
/* 1 if the binding leaves out some CPU of the topology, 0 if the rank is unbound. */
int crux_topo_is_bound(const struct crux_topo *t);
/* The NUMA node the binding lies in, -1 if it spans several nodes (unbound). */
int crux_topo_binding_numa(const struct crux_topo *t);

/* How close ibdev is to the binding. */
enum crux_locality {
    CRUX_LOC_FAR = 0,     /* no bound CPU is local to the device */
    CRUX_LOC_UNKNOWN = 1, /* the device's locality is unknown */
    CRUX_LOC_PARTIAL = 2, /* some bound CPUs are local (e.g. unbound rank) */
    CRUX_LOC_LOCAL = 3    /* every bound CPU is local to the device */
};
enum crux_locality crux_topo_dev_locality(const struct crux_topo *t, const char *ibdev);

/* CRUX_IB_HCA=auto: index into devs of the device nearest to the binding: highest
 * locality, then smallest NUMA distance from the binding's node (when the topology
 * has a latency matrix), then the first name in strcmp order. -1 if ndevs <= 0. */
int crux_topo_pick_hca(const struct crux_topo *t, const char *const *devs, int ndevs);

/* Logs a warning and returns 1 when the rank is bound to CPUs that are all far
 * from ibdev (every byte would cross the inter-socket link); 0 otherwise. */
int crux_topo_warn_far_binding(const struct crux_topo *t, const char *ibdev);

/* Node for buffers that ibdev reads and writes: the device's node, else the
 * binding's node, else -1 (no preference: first touch decides). */
int crux_topo_buffer_node(const struct crux_topo *t, const char *ibdev);

/* len bytes (rounded up to pages), page aligned, bound to NUMA node `node` (OS
 * index; -1 = no binding) and first-touched (zeroed) by the caller. On a topology
 * that is not this machine the memory is not bound. NULL on failure (logged).
 * Free with crux_numa_free(p, len) using the same len. */
void *crux_numa_alloc(struct crux_topo *t, size_t len, int node);
void crux_numa_free(void *p, size_t len);

/* The library's own buffers (bounce slots, scratch) for traffic through ibdev
 * (NULL = no device): crux_numa_alloc on crux_topo_buffer_node of the process
 * topology; plain page-aligned zeroed memory if hwloc is unavailable. */
void *crux_numa_buf_alloc(const char *ibdev, size_t len);

#endif
