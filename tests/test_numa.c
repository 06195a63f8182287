/* test_numa.c - NUMA placement logic on hand-written two-socket hwloc topologies
 * (tests/topo/, written by make_topos.py), and node-bound, first-touched buffers on this machine.
 *
 * two_socket_hca0.xml:     PUs 0-3 + node 0 on package 0 with mlx5_0,
 *                          PUs 4-7 + node 1 on package 1 with mlx5_1.
 * two_socket_hcas_on_1.xml: the same sockets, mlx5_0 and mlx5_1 both on package 1.
 * two_socket_hca_root.xml: the same sockets, mlx5_0 on package 1 and mlx5_9 behind
 *                          a host bridge hwloc could only attach to the machine.
 * four_node_slit.xml:      two packages of two NUMA nodes (node n = PUs 4n..4n+3),
 *                          latencies 10/12/32; mlx5_0 on node 3, mlx5_1 on node 1.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <hwloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "crux.h"
#include "harness.h"
#include "lib/log.h"
#include "lib/numa.h"

#define TOPO_DIR CRUX_SOURCE_DIR "/tests/topo/"

static struct crux_topo *open_xml(const char *name)
{
    struct crux_topo *t = NULL;
    char path[512];
    snprintf(path, sizeof(path), "%s%s", TOPO_DIR, name);
    int rc = crux_topo_open(path, &t);
    cr_assert_eq(rc, CRUX_SUCCESS, "crux_topo_open(%s) = %d", path, rc);
    return t;
}

static void bind_to(struct crux_topo *t, const char *pulist)
{
    cr_assert_eq(crux_topo_set_binding(t, pulist), CRUX_SUCCESS, "binding %s", pulist);
}

/* Runs crux_topo_warn_far_binding with stderr captured; returns its result and
 * copies what was logged into out. */
static int warn_captured(const struct crux_topo *t, const char *dev, char *out, size_t len)
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    int saved = dup(STDERR_FILENO);
    cr_assert_geq(saved, 0);
    cr_assert_geq(dup2(fds[1], STDERR_FILENO), 0);
    crux_log_setup(CRUX_LOG_WARN, CRUX_SUBSYS_ALL);
    int warned = crux_topo_warn_far_binding(t, dev);
    crux_log_setup(CRUX_LOG_NONE, CRUX_SUBSYS_ALL);
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(fds[1]);
    ssize_t n = read(fds[0], out, len - 1);
    close(fds[0]);
    out[n > 0 ? n : 0] = '\0';
    return warned;
}

static void quiet(void)
{
    crux_log_setup(CRUX_LOG_NONE, CRUX_SUBSYS_ALL);
}

TestSuite(numa_xml, .init = quiet);

Test(numa_xml, nodes_and_their_cpus)
{
    struct crux_topo *t = open_xml("two_socket_hca0.xml");
    char buf[64];
    cr_assert_eq(crux_topo_numa_nodes(t), 2);
    cr_assert_eq(crux_topo_numa_os_index(t, 0), 0);
    cr_assert_eq(crux_topo_numa_os_index(t, 1), 1);
    cr_assert_eq(crux_topo_numa_os_index(t, 2), -1);
    cr_assert_eq(crux_topo_numa_cpus(t, 0, buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "0-3");
    cr_assert_eq(crux_topo_numa_cpus(t, 1, buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "4-7");
    cr_assert_eq(crux_topo_numa_cpus(t, 2, buf, sizeof(buf)), -1);
    crux_topo_close(t);
}

Test(numa_xml, hca_numa_nodes)
{
    struct crux_topo *t = open_xml("two_socket_hca0.xml");
    cr_assert_eq(crux_topo_dev_numa(t, "mlx5_0"), 0);
    cr_assert_eq(crux_topo_dev_numa(t, "mlx5_1"), 1);
    cr_assert_eq(crux_topo_dev_numa(t, "mlx5_2"), -1);
    cr_assert_eq(crux_topo_dev_numa(t, "mlx5"), -1);
    crux_topo_close(t);

    t = open_xml("two_socket_hcas_on_1.xml");
    cr_assert_eq(crux_topo_dev_numa(t, "mlx5_0"), 1);
    cr_assert_eq(crux_topo_dev_numa(t, "mlx5_1"), 1);
    crux_topo_close(t);
}

Test(numa_xml, binding_node)
{
    struct crux_topo *t = open_xml("two_socket_hca0.xml");
    cr_assert_eq(crux_topo_binding_numa(t), -1, "an XML topology starts unbound");
    bind_to(t, "0-3");
    cr_assert_eq(crux_topo_binding_numa(t), 0);
    bind_to(t, "5");
    cr_assert_eq(crux_topo_binding_numa(t), 1);
    bind_to(t, "3-4");
    cr_assert_eq(crux_topo_binding_numa(t), -1);
    bind_to(t, "6,7,40"); /* PUs beyond the machine are dropped */
    cr_assert_eq(crux_topo_binding_numa(t), 1);
    cr_assert_eq(crux_topo_set_binding(t, "zero"), CRUX_ERR_ARG);
    cr_assert_eq(crux_topo_set_binding(t, "40-41"), CRUX_ERR_ARG);
    cr_assert_eq(crux_topo_set_binding(t, NULL), CRUX_ERR_ARG, "no thread binding in XML");
    cr_assert_eq(crux_topo_binding_numa(t), 1, "a rejected binding leaves the old one");
    crux_topo_close(t);
}

/* Listed against name order, so a pick by locality is visible. */
static const char *const hcas_rev[] = {"mlx5_1", "mlx5_0"};

Test(numa_xml, pick_hca_one_per_socket)
{
    struct crux_topo *t = open_xml("two_socket_hca0.xml");
    cr_assert_eq(crux_topo_pick_hca(t, hcas_rev, 2), 1, "unbound: tie, mlx5_0 by name");
    bind_to(t, "0-3");
    cr_assert_eq(crux_topo_pick_hca(t, hcas_rev, 2), 1, "socket 0: mlx5_0");
    cr_assert_eq(crux_topo_dev_locality(t, "mlx5_0"), CRUX_LOC_LOCAL);
    cr_assert_eq(crux_topo_dev_locality(t, "mlx5_1"), CRUX_LOC_FAR);
    bind_to(t, "2");
    cr_assert_eq(crux_topo_pick_hca(t, hcas_rev, 2), 1, "one PU of socket 0: mlx5_0");
    bind_to(t, "4-7");
    cr_assert_eq(crux_topo_pick_hca(t, hcas_rev, 2), 0, "socket 1: mlx5_1");
    bind_to(t, "5");
    cr_assert_eq(crux_topo_pick_hca(t, hcas_rev, 2), 0, "one PU of socket 1: mlx5_1");
    bind_to(t, "3-4");
    cr_assert_eq(crux_topo_dev_locality(t, "mlx5_1"), CRUX_LOC_PARTIAL);
    cr_assert_eq(crux_topo_pick_hca(t, hcas_rev, 2), 1, "straddling: tie, mlx5_0 by name");
    cr_assert_eq(crux_topo_pick_hca(t, hcas_rev, 0), -1);
    crux_topo_close(t);
}

Test(numa_xml, pick_hca_both_on_socket_1)
{
    struct crux_topo *t = open_xml("two_socket_hcas_on_1.xml");
    cr_assert_eq(crux_topo_pick_hca(t, hcas_rev, 2), 1, "unbound: mlx5_0 by name");
    bind_to(t, "0-3");
    cr_assert_eq(crux_topo_dev_locality(t, "mlx5_0"), CRUX_LOC_FAR);
    cr_assert_eq(crux_topo_dev_locality(t, "mlx5_1"), CRUX_LOC_FAR);
    cr_assert_eq(crux_topo_pick_hca(t, hcas_rev, 2), 1, "socket 0: both far, mlx5_0 by name");
    bind_to(t, "4-7");
    cr_assert_eq(crux_topo_pick_hca(t, hcas_rev, 2), 1, "socket 1: both local, mlx5_0 by name");
    /* A device missing from the topology never beats a local one. */
    const char *const with_unknown[] = {"mlx5_1", "ib_missing"};
    cr_assert_eq(crux_topo_pick_hca(t, with_unknown, 2), 0);
    crux_topo_close(t);
}

Test(numa_xml, unknown_locality_beats_far)
{
    struct crux_topo *t = open_xml("two_socket_hca_root.xml");
    cr_assert_eq(crux_topo_dev_numa(t, "mlx5_0"), 1);
    cr_assert_eq(crux_topo_dev_numa(t, "mlx5_9"), -1, "attached to the machine: no node");
    bind_to(t, "0-3");
    cr_assert_eq(crux_topo_dev_locality(t, "mlx5_9"), CRUX_LOC_UNKNOWN);
    const char *const devs[] = {"mlx5_0", "mlx5_9"};
    cr_assert_eq(crux_topo_pick_hca(t, devs, 2), 1, "far mlx5_0 loses to unknown mlx5_9");
    cr_assert_eq(crux_topo_warn_far_binding(t, "mlx5_9"), 0, "no warning on a guess");
    bind_to(t, "4");
    cr_assert_eq(crux_topo_pick_hca(t, devs, 2), 0, "local mlx5_0 wins");
    crux_topo_close(t);
}

Test(numa_xml, pick_hca_by_numa_distance)
{
    struct crux_topo *t = open_xml("four_node_slit.xml");
    const char *const devs[] = {"mlx5_0", "mlx5_1"};
    cr_assert_eq(crux_topo_numa_nodes(t), 4);
    cr_assert_eq(crux_topo_dev_numa(t, "mlx5_0"), 3);
    cr_assert_eq(crux_topo_dev_numa(t, "mlx5_1"), 1);
    bind_to(t, "0-3");
    cr_assert_eq(crux_topo_binding_numa(t), 0);
    cr_assert_eq(crux_topo_dev_locality(t, "mlx5_0"), CRUX_LOC_FAR);
    cr_assert_eq(crux_topo_dev_locality(t, "mlx5_1"), CRUX_LOC_FAR);
    cr_assert_eq(crux_topo_pick_hca(t, devs, 2), 1, "node 0: mlx5_1 at 12 beats mlx5_0 at 32");
    bind_to(t, "9");
    cr_assert_eq(crux_topo_pick_hca(t, devs, 2), 0, "node 2: mlx5_0 at 12 beats mlx5_1 at 32");
    bind_to(t, "12-15");
    cr_assert_eq(crux_topo_pick_hca(t, devs, 2), 0, "node 3: local mlx5_0");
    bind_to(t, "4-7");
    cr_assert_eq(crux_topo_pick_hca(t, devs, 2), 1, "node 1: local mlx5_1");
    bind_to(t, "0-15");
    cr_assert_eq(crux_topo_pick_hca(t, devs, 2), 0, "unbound: mlx5_0 by name");
    bind_to(t, "3-4");
    cr_assert_eq(crux_topo_pick_hca(t, devs, 2), 1, "straddling nodes 0-1: partly local mlx5_1");
    crux_topo_close(t);
}

Test(numa_xml, far_binding_warning)
{
    char log[1024];
    struct crux_topo *t = open_xml("two_socket_hca0.xml");
    cr_assert_eq(warn_captured(t, "mlx5_0", log, sizeof(log)), 0, "unbound: no warning");
    cr_assert_str_empty(log);
    bind_to(t, "4-7");
    cr_assert_eq(warn_captured(t, "mlx5_1", log, sizeof(log)), 0);
    cr_assert_str_empty(log);
    cr_assert_eq(warn_captured(t, "mlx5_0", log, sizeof(log)), 1);
    cr_assert(strstr(log, "WARN"), "%s", log);
    cr_assert(strstr(log, "bound to CPUs 4-7, but mlx5_0 is attached to NUMA node 0 (CPUs 0-3)"),
              "%s", log);
    bind_to(t, "3-4");
    cr_assert_eq(warn_captured(t, "mlx5_0", log, sizeof(log)), 0, "partly local: no warning");
    crux_topo_close(t);

    t = open_xml("two_socket_hcas_on_1.xml");
    bind_to(t, "1");
    cr_assert_eq(warn_captured(t, "mlx5_0", log, sizeof(log)), 1);
    cr_assert(strstr(log, "bound to CPUs 1, but mlx5_0 is attached to NUMA node 1 (CPUs 4-7)"),
              "%s", log);
    crux_topo_close(t);
}

Test(numa_xml, buffer_node)
{
    struct crux_topo *t = open_xml("two_socket_hca0.xml");
    cr_assert_eq(crux_topo_buffer_node(t, "mlx5_0"), 0);
    cr_assert_eq(crux_topo_buffer_node(t, "mlx5_1"), 1);
    cr_assert_eq(crux_topo_buffer_node(t, NULL), -1, "unbound, no device: first touch");
    cr_assert_eq(crux_topo_buffer_node(t, "mlx5_7"), -1);
    bind_to(t, "5-6");
    cr_assert_eq(crux_topo_buffer_node(t, "mlx5_0"), 0, "the HCA's node, not the rank's");
    cr_assert_eq(crux_topo_buffer_node(t, "mlx5_7"), 1, "unknown HCA: the rank's node");
    cr_assert_eq(crux_topo_buffer_node(t, NULL), 1);
    crux_topo_close(t);

    t = open_xml("two_socket_hcas_on_1.xml");
    bind_to(t, "0");
    cr_assert_eq(crux_topo_buffer_node(t, "mlx5_0"), 1);
    crux_topo_close(t);
}

/* A topology that is not this machine cannot bind memory, but still allocates. */
Test(numa_xml, alloc_on_foreign_topology)
{
    struct crux_topo *t = open_xml("two_socket_hca0.xml");
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    unsigned char *p = crux_numa_alloc(t, 3 * pg + 1, 1);
    cr_assert_not_null(p);
    cr_assert_eq((uintptr_t)p % pg, 0);
    for (size_t i = 0; i < 4 * pg; i++)
        cr_assert_eq(p[i], 0, "byte %zu", i);
    crux_numa_free(p, 3 * pg + 1);
    crux_topo_close(t);
}

Test(numa_xml, bad_files)
{
    struct crux_topo *t = NULL;
    cr_assert_eq(crux_topo_open(TOPO_DIR "no_such_file.xml", &t), CRUX_ERR_ARG);
    char path[] = "/tmp/crux-test-topo-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    const char junk[] = "<?xml version=\"1.0\"?>\n<topology version=\"2.0\"><object type=";
    cr_assert_eq(write(fd, junk, sizeof(junk) - 1), (ssize_t)(sizeof(junk) - 1));
    close(fd);
    int rc = crux_topo_open(path, &t);
    unlink(path);
    cr_assert_eq(rc, CRUX_ERR_ARG);
}

/* ---- this machine ---- */

TestSuite(numa_host, .init = quiet);

/* Pages of [p, p+len) that are resident: first touch happened. */
static size_t resident_pages(void *p, size_t len)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE), n = len / pg, r = 0;
    unsigned char *vec = malloc(n);
    cr_assert_not_null(vec);
    cr_assert_eq(mincore(p, len, vec), 0, "mincore: %s", strerror(errno));
    for (size_t i = 0; i < n; i++)
        r += vec[i] & 1;
    free(vec);
    return r;
}

/* Where the pages of [p, p+len) live and what policy binds them, as hwloc sees it. */
static void area_placement(void *p, size_t len, int *node, int *bound_to)
{
    hwloc_topology_t topo;
    cr_assert_eq(hwloc_topology_init(&topo), 0);
    cr_assert_eq(hwloc_topology_load(topo), 0);
    hwloc_bitmap_t set = hwloc_bitmap_alloc();
    cr_assert_eq(hwloc_get_area_memlocation(topo, p, len, set, HWLOC_MEMBIND_BYNODESET), 0,
                 "hwloc_get_area_memlocation: %s", strerror(errno));
    *node = hwloc_bitmap_weight(set) == 1 ? hwloc_bitmap_first(set) : -1;
    hwloc_membind_policy_t policy;
    *bound_to = -1;
    if (hwloc_get_area_membind(topo, p, len, set, &policy, HWLOC_MEMBIND_BYNODESET) == 0 &&
        policy == HWLOC_MEMBIND_BIND && hwloc_bitmap_weight(set) == 1)
        *bound_to = hwloc_bitmap_first(set);
    hwloc_bitmap_free(set);
    hwloc_topology_destroy(topo);
}

/* Can this kernel/container bind memory at all? Otherwise placement is untestable. */
static int mbind_works(void)
{
    hwloc_topology_t topo;
    hwloc_topology_init(&topo);
    hwloc_topology_load(topo);
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    void *p = mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    hwloc_obj_t n = hwloc_get_obj_by_type(topo, HWLOC_OBJ_NUMANODE, 0);
    int ok = p != MAP_FAILED && n &&
             hwloc_set_area_membind(topo, p, pg, n->nodeset, HWLOC_MEMBIND_BIND,
                                    HWLOC_MEMBIND_BYNODESET) == 0;
    if (p != MAP_FAILED)
        munmap(p, pg);
    hwloc_topology_destroy(topo);
    return ok;
}

Test(numa_host, alloc_lands_on_node_0_first_touched)
{
    struct crux_topo *t = NULL;
    cr_assert_eq(crux_topo_open(NULL, &t), CRUX_SUCCESS);
    cr_assert_geq(crux_topo_numa_nodes(t), 1);
    cr_assert_eq(crux_topo_numa_os_index(t, 0), 0, "Linux always has node 0");
    if (!mbind_works())
        cr_skip("this kernel or container refuses mbind: placement cannot be observed");
    size_t pg = (size_t)sysconf(_SC_PAGESIZE), len = 64 * pg;
    void *p = crux_numa_alloc(t, len - 5, 0);
    cr_assert_not_null(p);
    cr_assert_eq((uintptr_t)p % pg, 0);
    cr_assert_eq(resident_pages(p, len), 64, "every page first-touched at allocation");
    int node, bound;
    area_placement(p, len, &node, &bound);
    cr_assert_eq(node, 0, "pages on node %d", node);
    cr_assert_eq(bound, 0, "MPOL_BIND to node 0 (got %d)", bound);
    crux_numa_free(p, len - 5);

    /* No node: left to first touch, still resident, not bound. */
    p = crux_numa_alloc(t, len, -1);
    cr_assert_not_null(p);
    cr_assert_eq(resident_pages(p, len), 64);
    area_placement(p, len, &node, &bound);
    cr_assert_eq(node, 0);
    cr_assert_eq(bound, -1);
    crux_numa_free(p, len);
    crux_topo_close(t);
}

Test(numa_host, library_buffers_follow_the_binding)
{
    if (!mbind_works())
        cr_skip("this kernel or container refuses mbind: placement cannot be observed");
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(0, &one);
    cr_assert_eq(sched_setaffinity(0, sizeof(one), &one), 0, "pin to CPU 0: %s", strerror(errno));
    struct crux_topo *self = crux_topo_self();
    cr_assert_not_null(self);
    cr_assert_eq(crux_topo_binding_numa(self), 0);
    cr_assert_eq(crux_topo_dev_numa(self, "no_such_hca"), -1);
    cr_assert_eq(crux_topo_buffer_node(self, "no_such_hca"), 0);
    size_t len = 1 << 20;
    void *p = crux_numa_buf_alloc("no_such_hca", len);
    cr_assert_not_null(p);
    int node, bound;
    area_placement(p, len, &node, &bound);
    cr_assert_eq(node, 0);
    cr_assert_eq(bound, 0);
    cr_assert_eq(resident_pages(p, len), len / (size_t)sysconf(_SC_PAGESIZE));
    crux_numa_free(p, len);
    cr_assert_eq(crux_topo_self(), self, "loaded once");
}

/* ---- crux-info's topology section ---- */

TestSuite(numa_info, .init = quiet);

Test(numa_info, prints_a_saved_topology)
{
    char *argv[] = {CRUX_INFO_PATH, "-t", TOPO_DIR "two_socket_hca_root.xml", NULL};
    struct proc_result r;
    run_proc(argv, NULL, 30, &r);
    if (r.status != 0)
        proc_result_dump(&r);
    cr_assert_eq(r.status, 0);
    cr_assert_str_eq(r.out, "topology (hwloc, from " TOPO_DIR "two_socket_hca_root.xml):\n"
                            "  binding: none (a saved topology)\n"
                            "  NUMA nodes: 2\n"
                            "    node 0: CPUs 0-3\n"
                            "    node 1: CPUs 4-7\n"
                            "  RDMA devices: from the XML (ports are not recorded there)\n"
                            "    mlx5_0: NUMA node 1\n"
                            "    mlx5_9: NUMA node unknown\n");
    proc_result_free(&r);
}

Test(numa_info, prints_this_machine)
{
    char *argv[] = {CRUX_INFO_PATH, NULL};
    char *env[] = {"CRUX_LOG_LEVEL=warn", NULL};
    struct proc_result r;
    run_proc(argv, env, 30, &r);
    if (r.status != 0)
        proc_result_dump(&r);
    cr_assert_eq(r.status, 0);
    cr_assert(strstr(r.out, "\ntopology (hwloc, this machine):\n  binding: CPUs "), "%s", r.out);
    cr_assert(strstr(r.out, "\n    node 0: CPUs "), "%s", r.out);
    if (access("/sys/class/infiniband", F_OK) != 0)
        cr_assert(strstr(r.out, "\n  RDMA devices: no RDMA devices ("), "%s", r.out);
    else
        cr_assert(strstr(r.out, "\n  RDMA devices: "), "%s", r.out);
    proc_result_free(&r);

    char *argv_bad[] = {CRUX_INFO_PATH, "-t", TOPO_DIR "no_such_file.xml", NULL};
    run_proc(argv_bad, NULL, 30, &r);
    cr_assert_eq(r.status, 1);
    cr_assert(strstr(r.out, "topology: unavailable: hwloc could not load"), "%s", r.out);
    cr_assert(strstr(r.err, "no_such_file.xml: No such file or directory"), "%s", r.err);
    proc_result_free(&r);
}
