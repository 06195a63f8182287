#!/usr/bin/env python3
"""Writes the hand-shaped hwloc 2 XML topologies test_numa.c loads.

Two packages, each with one NUMA node (os index = package index) and four
single-PU cores: PUs 0-3 on package 0, PUs 4-7 on package 1. HCAs are
InfiniBand PCI functions behind their own host bridge, each with an
OpenFabrics OS device. Run from this directory; the output is committed.
"""


def mask(bits):
    return "0x%08x" % sum(1 << b for b in bits)


def hca(bus, name, ind):
    p = " " * ind
    return [
        f'{p}<object type="Bridge" gp_index="{{gp}}" bridge_type="0-1" depth="0" bridge_pci="0000:[{bus:02x}-{bus:02x}]">',
        f'{p}  <object type="PCIDev" gp_index="{{gp}}" pci_busid="0000:{bus:02x}:00.0" pci_type="0207 [15b3:101b] [15b3:0007] 00" pci_link_speed="31.507692">',
        f'{p}    <info name="PCIVendor" value="Mellanox Technologies"/>',
        f'{p}    <info name="PCIDevice" value="MT28908 Family [ConnectX-6]"/>',
        f'{p}    <object type="OSDev" gp_index="{{gp}}" name="{name}" osdev_type="3">',
        f'{p}      <info name="NodeGUID" value="0c42:a103:00{bus:02x}:0000"/>',
        f'{p}    </object>',
        f'{p}  </object>',
        f'{p}</object>',
    ]


def package(idx, hcas):
    pus = range(4 * idx, 4 * idx + 4)
    cs, ns = mask(pus), mask([idx])
    sets = f'cpuset="{cs}" complete_cpuset="{cs}" nodeset="{ns}" complete_nodeset="{ns}"'
    out = [f'    <object type="Package" os_index="{idx}" {sets} gp_index="{{gp}}">',
           f'      <object type="NUMANode" os_index="{idx}" {sets} gp_index="{{gp}}" local_memory="17179869184">',
           '        <page_type size="4096" count="4194304"/>',
           '      </object>']
    for c in pus:
        s = f'cpuset="{mask([c])}" complete_cpuset="{mask([c])}" nodeset="{ns}" complete_nodeset="{ns}"'
        out += [f'      <object type="Core" os_index="{c}" {s} gp_index="{{gp}}">',
                f'        <object type="PU" os_index="{c}" {s} gp_index="{{gp}}"/>',
                '      </object>']
    for bus, name in hcas:
        out += hca(bus, name, 6)
    return out + ['    </object>']


def topo(path, comment, hcas0, hcas1, hcas_machine=()):
    body = package(0, hcas0) + package(1, hcas1)
    for bus, name in hcas_machine:
        body += hca(bus, name, 4)
    gp = iter(range(2, 1000))
    body = [line.replace("{gp}", str(next(gp))) if "{gp}" in line else line for line in body]
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             '<!DOCTYPE topology SYSTEM "hwloc2.dtd">',
             f'<!-- {comment} Written by make_topos.py. -->',
             '<topology version="2.0">',
             f'  <object type="Machine" os_index="0" cpuset="0x000000ff" complete_cpuset="0x000000ff" '
             f'allowed_cpuset="0x000000ff" nodeset="0x00000003" complete_nodeset="0x00000003" '
             f'allowed_nodeset="0x00000003" gp_index="1">',
             '    <info name="Backend" value="crux test topology"/>']
    lines += body + ['  </object>', '</topology>', '']
    with open(path, "w") as f:
        f.write("\n".join(lines))


def numa_group(node, pus, hcas, ns_all):
    """One NUMA node of a package split in two (SNC/NPS2): a Group holding the node."""
    cs, ns = mask(pus), mask([node])
    sets = f'cpuset="{cs}" complete_cpuset="{cs}" nodeset="{ns}" complete_nodeset="{ns}"'
    out = [f'      <object type="Group" {sets} gp_index="{{gp}}" kind="1000" subkind="0">',
           f'        <object type="NUMANode" os_index="{node}" {sets} gp_index="{{gp}}" local_memory="8589934592">',
           '          <page_type size="4096" count="2097152"/>',
           '        </object>']
    for c in pus:
        s = f'cpuset="{mask([c])}" complete_cpuset="{mask([c])}" nodeset="{ns}" complete_nodeset="{ns}"'
        out += [f'        <object type="Core" os_index="{c}" {s} gp_index="{{gp}}">',
                f'          <object type="PU" os_index="{c}" {s} gp_index="{{gp}}"/>',
                '        </object>']
    for bus, name in hcas:
        out += hca(bus, name, 8)
    return out + ['      </object>']


def split_package(idx, hcas_by_node):
    """Package idx with NUMA nodes 2*idx and 2*idx+1, four PUs each."""
    pus = range(8 * idx, 8 * idx + 8)
    nodes = [2 * idx, 2 * idx + 1]
    cs, ns = mask(pus), mask(nodes)
    out = [f'    <object type="Package" os_index="{idx}" cpuset="{cs}" complete_cpuset="{cs}" '
           f'nodeset="{ns}" complete_nodeset="{ns}" gp_index="{{gp}}">']
    for k, node in enumerate(nodes):
        out += numa_group(node, range(8 * idx + 4 * k, 8 * idx + 4 * k + 4),
                          hcas_by_node.get(node, []), ns)
    return out + ['    </object>']


def four_node_topo(path, comment, hcas_by_node):
    """Two packages of two NUMA nodes each (PUs 0-3, 4-7 | 8-11, 12-15) with a SLIT:
    10 local, 12 to the other node of the same package, 32 across packages."""
    body = split_package(0, hcas_by_node) + split_package(1, hcas_by_node)
    gp = iter(range(2, 1000))
    body = [line.replace("{gp}", str(next(gp))) if "{gp}" in line else line for line in body]
    slit = [[10 if a == b else 12 if a // 2 == b // 2 else 32 for b in range(4)] for a in range(4)]
    values = " ".join(str(v) for row in slit for v in row)
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             '<!DOCTYPE topology SYSTEM "hwloc2.dtd">',
             f'<!-- {comment} Written by make_topos.py. -->',
             '<topology version="2.0">',
             '  <object type="Machine" os_index="0" cpuset="0x0000ffff" complete_cpuset="0x0000ffff" '
             'allowed_cpuset="0x0000ffff" nodeset="0x0000000f" complete_nodeset="0x0000000f" '
             'allowed_nodeset="0x0000000f" gp_index="1">',
             '    <info name="Backend" value="crux test topology"/>']
    lines += body + ['  </object>',
                     '  <distances2 type="NUMANode" nbobjs="4" kind="5" name="NUMALatency" indexing="os">',
                     '    <indexes length="8">0 1 2 3 </indexes>',
                     f'    <u64values length="{len(values) + 1}">{values} </u64values>',
                     '  </distances2>',
                     '</topology>', '']
    with open(path, "w") as f:
        f.write("\n".join(lines))


topo("two_socket_hca0.xml",
     "Two sockets: PUs 0-3 + NUMA node 0 on package 0, PUs 4-7 + NUMA node 1 on package 1; "
     "mlx5_0 (bus 03) behind package 0, mlx5_1 (bus 81) behind package 1.",
     [(0x03, "mlx5_0")], [(0x81, "mlx5_1")])
topo("two_socket_hcas_on_1.xml",
     "Two sockets as in two_socket_hca0.xml, but both HCAs (mlx5_0 bus 81, mlx5_1 bus 82) "
     "behind package 1: a rank bound to package 0 is far from either.",
     [], [(0x81, "mlx5_0"), (0x82, "mlx5_1")])
topo("two_socket_hca_root.xml",
     "Two sockets as in two_socket_hca0.xml; mlx5_0 (bus 81) behind package 1, mlx5_9 (bus 82) "
     "behind a host bridge attached to the machine itself, so its NUMA node is unknown.",
     [], [(0x81, "mlx5_0")], [(0x82, "mlx5_9")])
four_node_topo("four_node_slit.xml",
               "Two packages split in two NUMA nodes each (node n = PUs 4n..4n+3), with a "
               "SLIT; mlx5_0 (bus 81) on node 3, mlx5_1 (bus 41) on node 1: a rank on node 0 "
               "is far from both, but nearer mlx5_1 (same package).",
               {3: [(0x81, "mlx5_0")], 1: [(0x41, "mlx5_1")]})
