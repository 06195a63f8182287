/* verbs_dev.c - which device, port and GID: CRUX_IB_HCA (NCCL syntax) and
 * CRUX_IB_GID_INDEX, with RoCE and InfiniBand defaults. */
#include "verbs.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#include "numa.h"

#define VB_MAX_PORTS 32

/* CRUX_IB_HCA=auto: among active ports, the device nearest the rank's binding. */
static int pick_nearest(const struct vb_port_desc *ports, int n)
{
    const char *names[VB_MAX_PORTS];
    int idx[VB_MAX_PORTS], k = 0;
    for (int i = 0; i < n && k < VB_MAX_PORTS; i++)
        if (ports[i].active) {
            names[k] = ports[i].name;
            idx[k++] = i;
        }
    struct crux_topo *t = crux_topo_self();
    if (k == 0)
        return -1;
    int best = t ? crux_topo_pick_hca(t, names, k) : 0;
    return idx[best < 0 ? 0 : best];
}

int vb_hca_pick(const char *list, const struct vb_port_desc *ports, int n)
{
    if (list && strcmp(list, "auto") == 0)
        return pick_nearest(ports, n);
    for (int i = 0; i < n; i++)
        if (ports[i].active && crux_iflist_match(list, ports[i].name, ports[i].port))
            return i;
    return -1;
}

void vb_gid_format(const uint8_t gid[16], char *buf, size_t len)
{
    snprintf(buf, len, "%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x",
             gid[0], gid[1], gid[2], gid[3], gid[4], gid[5], gid[6], gid[7], gid[8], gid[9],
             gid[10], gid[11], gid[12], gid[13], gid[14], gid[15]);
}

static int gid_is_ipv4_mapped(const uint8_t g[16])
{
    static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return memcmp(g, prefix, sizeof(prefix)) == 0;
}

/* On Ethernet the first RoCEv2 GID that holds an IPv4 address: routable across
 * subnets and what rdma_cm would pick. */
static int pick_roce_gid(struct ibv_context *ctx, int port, int tbl_len)
{
    for (int i = 0; i < tbl_len; i++) {
        struct ibv_gid_entry e;
        if (ibv_query_gid_ex(ctx, (uint32_t)port, (uint32_t)i, &e, 0) != 0)
            continue;
        if (e.gid_type == IBV_GID_TYPE_ROCE_V2 && gid_is_ipv4_mapped(e.gid.raw))
            return i;
    }
    return -1;
}

static int list_ports(struct ibv_device **devs, int ndev, struct vb_port_desc *ports, int max,
                      char (*names)[64])
{
    int n = 0;
    for (int d = 0; d < ndev && n < max; d++) {
        struct ibv_context *c = ibv_open_device(devs[d]);
        struct ibv_device_attr da;
        if (!c)
            continue;
        if (ibv_query_device(c, &da) == 0)
            for (int p = 1; p <= da.phys_port_cnt && n < max; p++) {
                struct ibv_port_attr pa;
                snprintf(names[n], 64, "%s", ibv_get_device_name(devs[d]));
                ports[n].name = names[n];
                ports[n].port = p;
                ports[n].active = ibv_query_port(c, (uint8_t)p, &pa) == 0 &&
                                  pa.state == IBV_PORT_ACTIVE;
                n++;
            }
        ibv_close_device(c);
    }
    return n;
}

static int find_port(const struct crux_config *cfg, struct ibv_device ***devs_out, int *dev_idx,
                     int *port, char *why, size_t whylen)
{
    int ndev = 0;
    struct ibv_device **devs = ibv_get_device_list(&ndev);
    struct vb_port_desc ports[VB_MAX_PORTS];
    char names[VB_MAX_PORTS][64];
    if (!devs || ndev == 0) {
        snprintf(why, whylen, "no RDMA device (ibv_get_device_list: %s)",
                 devs ? "empty" : strerror(errno));
        if (devs)
            ibv_free_device_list(devs);
        return CRUX_ERR_UNSUPPORTED;
    }
    int n = list_ports(devs, ndev, ports, VB_MAX_PORTS, names);
    int pick = vb_hca_pick(cfg->ib_hca, ports, n);
    if (pick < 0) {
        size_t off = 0;
        off += (size_t)snprintf(why, whylen, "no active port matches CRUX_IB_HCA='%s' (seen:",
                                cfg->ib_hca);
        for (int i = 0; i < n && off < whylen; i++)
            off += (size_t)snprintf(why + off, whylen - off, " %s:%d%s", ports[i].name,
                                    ports[i].port, ports[i].active ? "" : "(down)");
        if (off < whylen)
            snprintf(why + off, whylen - off, ")");
        ibv_free_device_list(devs);
        return CRUX_ERR_UNSUPPORTED;
    }
    for (int d = 0; d < ndev; d++)
        if (strcmp(ibv_get_device_name(devs[d]), ports[pick].name) == 0)
            *dev_idx = d;
    *port = ports[pick].port;
    *devs_out = devs;
    return CRUX_SUCCESS;
}

int crux_verbs_usable(const struct crux_config *cfg, char *why, size_t whylen)
{
    struct ibv_device **devs = NULL;
    int d = 0, port = 0;
    ibv_fork_init(); /* before any registration: Criterion and launchers fork */
    int rc = find_port(cfg, &devs, &d, &port, why, whylen);
    if (rc == CRUX_SUCCESS) {
        snprintf(why, whylen, "%s port %d is active", ibv_get_device_name(devs[d]), port);
        ibv_free_device_list(devs);
    }
    return rc;
}

static int pick_gid(struct crux_verbs *vb, const struct crux_config *cfg,
                    const struct ibv_port_attr *pa)
{
    vb->is_eth = pa->link_layer == IBV_LINK_LAYER_ETHERNET;
    if (cfg->ib_gid_index >= 0)
        vb->gid_index = cfg->ib_gid_index;
    else
        vb->gid_index = vb->is_eth ? pick_roce_gid(vb->ctx, vb->port, pa->gid_tbl_len) : 0;
    if (vb->gid_index < 0 || vb->gid_index >= pa->gid_tbl_len) {
        crux_error(CRUX_SUBSYS_NET, "verbs: %s port %d: %s (GID table has %d entries); set "
                   "CRUX_IB_GID_INDEX", vb->dev_name, vb->port,
                   vb->gid_index < 0 ? "no RoCEv2 GID with an IPv4 address"
                                     : "CRUX_IB_GID_INDEX is out of range",
                   pa->gid_tbl_len);
        return CRUX_ERR_TRANSPORT;
    }
    union ibv_gid g;
    if (ibv_query_gid(vb->ctx, (uint8_t)vb->port, vb->gid_index, &g) != 0) {
        crux_error(CRUX_SUBSYS_NET, "verbs: ibv_query_gid(%s port %d index %d): %s", vb->dev_name,
                   vb->port, vb->gid_index, strerror(errno));
        return CRUX_ERR_TRANSPORT;
    }
    memcpy(vb->gid, g.raw, 16);
    return CRUX_SUCCESS;
}

int vb_dev_open(struct crux_verbs *vb, const struct crux_config *cfg)
{
    struct ibv_device **devs = NULL;
    int d = 0;
    char why[512];
    ibv_fork_init();
    int rc = find_port(cfg, &devs, &d, &vb->port, why, sizeof(why));
    if (rc != CRUX_SUCCESS) {
        crux_error(CRUX_SUBSYS_NET, "verbs: %s", why);
        return CRUX_ERR_TRANSPORT;
    }
    snprintf(vb->dev_name, sizeof(vb->dev_name), "%s", ibv_get_device_name(devs[d]));
    vb->ctx = ibv_open_device(devs[d]);
    ibv_free_device_list(devs);
    if (!vb->ctx) {
        crux_error(CRUX_SUBSYS_NET, "verbs: ibv_open_device(%s): %s", vb->dev_name, strerror(errno));
        return CRUX_ERR_TRANSPORT;
    }
    struct ibv_port_attr pa;
    if (ibv_query_port(vb->ctx, (uint8_t)vb->port, &pa) != 0) {
        crux_error(CRUX_SUBSYS_NET, "verbs: ibv_query_port(%s, %d): %s", vb->dev_name, vb->port,
                   strerror(errno));
        return CRUX_ERR_TRANSPORT;
    }
    vb->lid = pa.lid;
    vb->mtu = pa.active_mtu;
    CRUX_TRY(pick_gid(vb, cfg, &pa));
    char g[48];
    vb_gid_format(vb->gid, g, sizeof(g));
    crux_info(CRUX_SUBSYS_NET, "verbs: %s port %d (%s), GID index %d %s, lid %u, active MTU %d",
              vb->dev_name, vb->port, vb->is_eth ? "Ethernet/RoCE" : "InfiniBand", vb->gid_index,
              g, vb->lid, 128 << vb->mtu);
    return CRUX_SUCCESS;
}

struct ibv_mr *vb_reg(struct ibv_pd *pd, void *addr, size_t len, int access, const char *what)
{
    struct ibv_mr *mr = ibv_reg_mr(pd, addr, len, access);
    if (mr)
        return mr;
    int err = errno;
    if (err == ENOMEM || err == EAGAIN || err == EPERM) {
        struct rlimit rl;
        char lim[32] = "?";
        if (getrlimit(RLIMIT_MEMLOCK, &rl) == 0) {
            if (rl.rlim_cur == RLIM_INFINITY)
                snprintf(lim, sizeof(lim), "unlimited");
            else
                snprintf(lim, sizeof(lim), "%llu KiB", (unsigned long long)rl.rlim_cur / 1024);
        }
        crux_error(CRUX_SUBSYS_NET, "verbs: ibv_reg_mr(%s, %zu bytes): %s: the locked-memory "
                   "limit (ulimit -l) is %s, too small to pin it. Raise it: `ulimit -l unlimited` "
                   "before starting, '* - memlock unlimited' in /etc/security/limits.conf, "
                   "LimitMEMLOCK=infinity for systemd, --ulimit memlock=-1 for docker; or lower "
                   "CRUX_IB_MR_CACHE_BYTES", what, len, strerror(err), lim);
    } else {
        crux_error(CRUX_SUBSYS_NET, "verbs: ibv_reg_mr(%s, %zu bytes): %s", what, len,
                   strerror(err));
    }
    errno = err;
    return NULL;
}
