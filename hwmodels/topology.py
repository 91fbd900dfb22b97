"""Cluster topologies as networkx graphs, and where a parallel group sits on them.

`build_topology(cluster)` turns a `Cluster` (its tiers, innermost first) into a graph of devices,
scale-up switches, NICs and fabric switches whose edges carry a per-direction bandwidth
(`bytes_per_s`) and a latency (`latency_s`):

    scale-up (inside a node)             scale-out (the last tier)
    nvswitch         one switch vertex   fat-tree / rail-fat-tree / ethernet: NIC -> leaf -> spine
                     per node (NVLS on   (-> core), folded Clos of 64-port switches, oversubscription
                     NVLink 4+)          at the leaf; rail-optimized: leaf per (SU of 32 nodes, rail)
    pcie             PCIe switches (2    dragonfly: NIC -> group switch; groups of 128 nodes joined by
                     GPUs each) + host   global links, blocking factor = oversubscription
    nvlink-bridge    GPU pairs bridged   ici-torus: the whole cluster is one 3-D torus of chips
    infinity-fabric, full mesh of        (no NICs; TPU slice)
    hccs             peer links

Builders: `nvswitch_node`, `pcie_node`, `mesh_node` (MI300X, Ascend), `nvl72_rack` (GB200 NVL72:
one 72-GPU NVSwitch domain), `fat_tree` (2- or 3-tier, rail-optimized or not), `dragonfly`,
`tpu_torus`. A graph of 16,384 devices builds in well under a second.

`place_group(cluster, size, stride)` answers for a parallel group — `size` ranks `stride` apart in
the Megatron rank order (TP innermost), every group of that shape running at once — which tiers
and links it crosses and how many flows share each link: e.g. the 8 DP rings of a TP=8 job share a
node's 8 rails one each; a ring whose consecutive nodes sit in different SUs loads the leaf's
uplinks, whose capacity oversubscription divides. It is computed once per group shape (cached)
from structural index arrays of the same builder, so costing a collective afterwards is arithmetic.

Traffic model (fluid, per direction): every flow through a resource (a NIC port, a leaf's uplink
bundle, a pod's core uplinks, a PCIe switch uplink) shares it in proportion to its bytes; a
collective's network phase lasts max over resources of bytes / capacity (the bottleneck link).
ECMP is assumed to spread flows evenly over a leaf's spine links (adaptive routing).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache

import networkx as nx
import numpy as np

from hwmodels.clusters import Cluster
from hwmodels.errors import InputError

# ---- structural constants (each from a source in validation/data/reference/hardware) -------------
SWITCH_RADIX = 64  # NVIDIA Quantum-2 QM9700: 64 x 400 Gb/s ports (interconnects.csv switch row)
LEAF_DOWN_PORTS = SWITCH_RADIX // 2  # non-blocking leaf: half the ports down, half up (folded Clos)
SU_NODES = 32  # DGX SuperPOD scalable unit = 32 nodes, rail i of every node on leaf i (systems.md 2.1)
PCIE_GPUS_PER_SWITCH = 2  # DGX A100: four PCIe switches for 8 GPUs (systems.md 1, STH_HC32)
DRAGONFLY_GROUP_NODES = 128  # Frontier: 1 cabinet = 128 nodes = one dragonfly group (KLOCK_FRONTIER)
DRAGONFLY_GROUP_SWITCHES = 32  # Frontier: 32 Rosetta switches per group, 16 endpoint ports each
TORUS_MIN_WRAP = 4  # TPU v5p: slices >= 4x4x4 have full 3-D torus wraparound (GCP_V5P)

SCALE_UP_KINDS = ("nvswitch", "nvlink-bridge", "pcie", "infinity-fabric", "hccs", "ici-torus")
SWITCHED_FABRICS = ("fat-tree", "rail-fat-tree", "ethernet", "dragonfly")
PLACEMENTS = ("packed", "scattered")


def nvlink_generation(scale_up: str) -> int:
    """NVLink generation from a device's scale-up description ("NVLink 4, 18 links" -> 4); 0 if none."""
    m = re.search(r"nvlink\s*(\d+)", scale_up.lower())
    return int(m.group(1)) if m else 0


@dataclass(eq=False)
class Topology:
    """A built cluster graph plus the index arrays that route flows on it without path searches."""

    cluster: Cluster
    graph: nx.Graph
    scale_up: str  # kind of the innermost tier
    scale_out: str  # kind of the last tier
    nvls: bool  # NVSwitch with in-switch reduction (NVLink SHARP, NVLink 4+)
    # scale-out fabric (switched fabrics)
    nics_per_node: int = 0
    nic_of_local: np.ndarray | None = None  # local rank -> NIC index in its node
    nic_cap: float = 0.0  # bytes/s per NIC port, per direction
    leaf_of: np.ndarray | None = None  # [node, nic] -> leaf (rail-fat-tree leaf = (SU, rail))
    pod_of_leaf: np.ndarray | None = None  # leaf -> pod (3-tier) ; all 0 in a 2-tier fabric
    leaf_up_cap: np.ndarray | None = None  # per leaf: uplink bundle bytes/s (per direction)
    pod_up_cap: np.ndarray | None = None  # per pod: core uplinks bytes/s (3-tier only)
    levels: int = 1  # switch levels a flow may climb: 1 leaf, 2 spine, 3 core
    # scale-up details
    pcie_switch_of_local: np.ndarray | None = None  # PCIe nodes: local rank -> PCIe switch
    pcie_up_cap: float = 0.0
    torus_dims: tuple = ()  # ici-torus: chips per dimension, x fastest
    torus_wrap: bool = False
    torus_link_cap: float = 0.0
    stats: dict = field(default_factory=dict)

    def summary(self) -> dict:
        kinds: dict[str, int] = {}
        for _, k in self.graph.nodes(data="kind"):
            kinds[k] = kinds.get(k, 0) + 1
        return {"cluster": self.cluster.name, "devices": self.cluster.num_devices,
                "vertices": self.graph.number_of_nodes(), "links": self.graph.number_of_edges(),
                "vertex_kinds": kinds, "scale_up": self.scale_up, "scale_out": self.scale_out,
                "switch_levels": self.levels, "nvls": self.nvls, **self.stats}


# ---- building ---------------------------------------------------------------------------------
class _GraphBuilder:
    """Collects vertices and edges in lists and adds them to networkx in two bulk calls."""

    def __init__(self, num_devices: int):
        self.nodes: list = [(d, {"kind": "device"}) for d in range(num_devices)]
        self.edges: list = []
        self.nic_ids: list = []  # NIC vertices in (node, nic) order
        self.next_id = num_devices

    def vertex(self, kind: str, **attrs) -> int:
        v = self.next_id
        self.next_id += 1
        self.nodes.append((v, {"kind": kind, **attrs}))
        return v

    def link(self, a: int, b: int, bytes_per_s: float, latency_s: float, kind: str, cables: int = 1):
        self.edges.append((a, b, {"bytes_per_s": bytes_per_s, "latency_s": latency_s, "kind": kind,
                                  "cables": cables}))

    def graph(self) -> nx.Graph:
        g = nx.Graph()
        g.add_nodes_from(self.nodes)
        g.add_edges_from(self.edges)
        return g


def nvswitch_node(b: _GraphBuilder, devices: range, tier, node: int, nvls: bool) -> None:
    """All devices of the node on one (aggregated) NVSwitch plane: full per-device bandwidth to any
    peer (DGX H100: 4 NVSwitch chips, 18 NVLink4 links per GPU; systems.md 1)."""
    sw = b.vertex("nvswitch", node=node, nvls=nvls)
    for d in devices:
        b.link(d, sw, tier.bytes_per_s, tier.latency_s, tier.kind)


def nvl72_rack(b: _GraphBuilder, devices: range, tier, node: int, nvls: bool) -> None:
    """GB200 NVL72: 72 GPUs, each with one NVLink5 link to each of 18 switch chips (SP_GB200_NF):
    a single non-blocking NVSwitch domain, built like `nvswitch_node`."""
    nvswitch_node(b, devices, tier, node, nvls)


def pcie_node(b: _GraphBuilder, devices: range, tier, node: int) -> None:
    """GPUs in pairs behind PCIe switches, the switches on the host root complex (DGX A100 layout,
    STH_HC32); every PCIe link runs at the tier's per-device rate."""
    host = b.vertex("host", node=node)
    devs = list(devices)
    for i in range(0, len(devs), PCIE_GPUS_PER_SWITCH):
        sw = b.vertex("pcie-switch", node=node)
        b.link(sw, host, tier.bytes_per_s, tier.latency_s, "pcie")
        for d in devs[i:i + PCIE_GPUS_PER_SWITCH]:
            b.link(d, sw, tier.bytes_per_s, tier.latency_s, "pcie")


def mesh_node(b: _GraphBuilder, devices: range, tier) -> None:
    """Fully connected peers (MI300X: 7 Infinity Fabric links, one per peer, ROCM_MI300; Ascend
    HCCS): each peer link carries bytes_per_s / (size - 1)."""
    devs = list(devices)
    per_peer = tier.bytes_per_s / max(1, len(devs) - 1)
    for i, a in enumerate(devs):
        for c in devs[i + 1:]:
            b.link(a, c, per_peer, tier.latency_s, tier.kind)


def bridge_pairs(b: _GraphBuilder, devices: range, tier) -> None:
    devs = list(devices)
    for i in range(0, len(devs) - 1, 2):
        b.link(devs[i], devs[i + 1], tier.bytes_per_s, tier.latency_s, tier.kind)


def _scale_up(b: _GraphBuilder, cluster: Cluster, nvls: bool) -> None:
    """Intra-node tiers of every node. Inner tiers group devices; an outer intra-node tier joins
    the groups of the tier inside it (e.g. Frontier: GCD pairs in a package, packages in a node)."""
    dpn = cluster.devices_per_node
    intra = cluster.tiers[:-1]
    for node in range(cluster.num_nodes):
        base = node * dpn
        span = 1
        for ti, tier in enumerate(intra):
            unit = span  # devices per group of the tier inside this one
            span *= tier.size
            for start in range(base, base + dpn, span):
                devs = range(start, start + span)
                if tier.kind == "nvswitch":
                    (nvl72_rack if span >= 72 else nvswitch_node)(b, devs, tier, node, nvls)
                elif tier.kind == "pcie":
                    pcie_node(b, devs, tier, node)
                elif tier.kind == "nvlink-bridge":
                    bridge_pairs(b, devs, tier)
                elif tier.kind in ("infinity-fabric", "hccs") and unit == 1:
                    mesh_node(b, devs, tier)
                elif tier.kind in ("infinity-fabric", "hccs"):  # links between sub-groups
                    for a in devs:
                        for c in devs:
                            if a < c and (a - start) // unit != (c - start) // unit:
                                b.link(a, c, tier.bytes_per_s / (tier.size - 1), tier.latency_s, tier.kind)
                # ici-torus intra tiers are wired by `tpu_torus`


def fat_tree(b: _GraphBuilder, cluster: Cluster, topo: Topology) -> None:
    """Folded Clos of 64-port switches. Rail-optimized (`rail-fat-tree`): NIC i of every node of an
    SU (32 nodes) on leaf i of that SU (SP_H100_NF). Otherwise a node's NICs fill consecutive leaf
    ports. Up to 64 leaves: 2 tiers (leaf, spine); beyond: 3 tiers, pods of 32 leaves + 32 spines
    and a core layer (the DGX B200 SuperPOD at 16 SUs has 128 leaves, 128 spines, 64 cores:
    SP_B200_ARCH). Oversubscription o leaves 32/o uplinks per leaf."""
    tier = cluster.tiers[-1]
    nodes, nics = cluster.num_nodes, cluster.nics_per_node
    rail = tier.kind == "rail-fat-tree"
    if rail:
        su = np.arange(nodes)[:, None] // SU_NODES
        leaf_of = su * nics + np.arange(nics)[None, :]
    else:
        leaf_of = (np.arange(nodes)[:, None] * nics + np.arange(nics)[None, :]) // LEAF_DOWN_PORTS
    n_leaves = int(leaf_of.max()) + 1
    up_ports = LEAF_DOWN_PORTS / tier.oversubscription
    port = topo.nic_cap
    three_tier = n_leaves > SWITCH_RADIX
    leaves_per_pod = LEAF_DOWN_PORTS if three_tier else n_leaves
    pod_of_leaf = np.arange(n_leaves) // leaves_per_pod
    n_pods = int(pod_of_leaf.max()) + 1

    leaf_ids = [b.vertex("leaf", leaf=i, pod=int(pod_of_leaf[i])) for i in range(n_leaves)]
    # NIC vertices and NIC -> leaf cables
    for node in range(nodes):
        for nic in range(nics):
            v = b.vertex("nic", node=node, nic=nic)
            b.nic_ids.append(v)
            b.link(v, leaf_ids[int(leaf_of[node, nic])], port, tier.latency_s, tier.kind)
    # spines: every leaf of a pod cabled evenly to the pod's spines
    spines_per_pod = max(1, math.ceil(leaves_per_pod * up_ports / SWITCH_RADIX)) if not three_tier \
        else max(1, math.ceil(up_ports))
    spine_ids = []
    for pod in range(n_pods):
        pod_spines = [b.vertex("spine", pod=pod) for _ in range(spines_per_pod)]
        spine_ids.append(pod_spines)
        cables = up_ports / spines_per_pod
        for li in np.nonzero(pod_of_leaf == pod)[0]:
            for s in pod_spines:
                b.link(leaf_ids[li], s, cables * port, tier.latency_s, tier.kind, cables=max(1, round(cables)))
    leaf_up = np.full(n_leaves, up_ports * port)
    pod_up = np.zeros(n_pods)
    if three_tier:
        # spine up-ports = its down-ports (non-blocking above the leaf); cores of 64 ports
        per_spine_up = leaves_per_pod * up_ports / spines_per_pod
        n_cores = max(1, math.ceil(n_pods * spines_per_pod * per_spine_up / SWITCH_RADIX))
        core_ids = [b.vertex("core") for _ in range(n_cores)]
        group = max(1, n_cores // spines_per_pod)  # spine j of every pod -> core group j
        for pod in range(n_pods):
            for j, s in enumerate(spine_ids[pod]):
                cores = [core_ids[(j * group + c) % n_cores] for c in range(group)]
                for c in cores:
                    b.link(s, c, per_spine_up / group * port, tier.latency_s, tier.kind)
        for pod in range(n_pods):
            pod_up[pod] = leaf_up[pod_of_leaf == pod].sum()
    topo.leaf_of, topo.pod_of_leaf, topo.leaf_up_cap, topo.pod_up_cap = leaf_of, pod_of_leaf, leaf_up, pod_up
    topo.levels = 3 if three_tier else (2 if n_leaves > 1 else 1)
    topo.stats.update({"leaves": n_leaves, "spines": n_pods * spines_per_pod, "pods": n_pods,
                       "rail_optimized": rail, "leaf_uplink_ports": up_ports})


def dragonfly(b: _GraphBuilder, cluster: Cluster, topo: Topology) -> None:
    """HPE Slingshot dragonfly (Frontier): groups of 128 nodes on 32 switches, all-to-all inside a
    group, global links between every pair of groups (KLOCK_FRONTIER). The global capacity of a
    group is its injection bandwidth / oversubscription (the blocking factor, ~1.75 on Frontier)."""
    tier = cluster.tiers[-1]
    nodes, nics = cluster.num_nodes, cluster.nics_per_node
    group_of_node = np.arange(nodes) // DRAGONFLY_GROUP_NODES
    n_groups = int(group_of_node.max()) + 1
    port = topo.nic_cap
    per_group_switches = []
    for g in range(n_groups):
        sws = [b.vertex("df-switch", group=g) for _ in range(DRAGONFLY_GROUP_SWITCHES)]
        per_group_switches.append(sws)
        for i, a in enumerate(sws):  # L1: all-to-all inside the group
            for c in sws[i + 1:]:
                b.link(a, c, port, tier.latency_s, tier.kind)
    nodes_per_switch = max(1, DRAGONFLY_GROUP_NODES // DRAGONFLY_GROUP_SWITCHES)
    for node in range(nodes):
        g = int(group_of_node[node])
        sw = per_group_switches[g][(node % DRAGONFLY_GROUP_NODES) // nodes_per_switch]
        for nic in range(nics):
            v = b.vertex("nic", node=node, nic=nic)
            b.nic_ids.append(v)
            b.link(v, sw, port, tier.latency_s, tier.kind)
    injection = DRAGONFLY_GROUP_NODES * nics * port
    global_cap = injection / tier.oversubscription
    if n_groups > 1:  # L2: the group's global capacity spread over the other groups
        per_pair = global_cap / (n_groups - 1)
        for g in range(n_groups):
            for h in range(g + 1, n_groups):
                b.link(per_group_switches[g][h % DRAGONFLY_GROUP_SWITCHES],
                       per_group_switches[h][g % DRAGONFLY_GROUP_SWITCHES], per_pair, tier.latency_s, tier.kind)
    topo.leaf_of = np.repeat(group_of_node[:, None], nics, axis=1)
    topo.pod_of_leaf = np.zeros(n_groups, dtype=int)
    topo.leaf_up_cap = np.full(n_groups, global_cap)
    topo.pod_up_cap = np.zeros(1)
    topo.levels = 2 if n_groups > 1 else 1
    topo.stats.update({"dragonfly_groups": n_groups})


def torus_shape(n: int) -> tuple[int, int, int]:
    """The most cubic 3-D factorisation of n chips (x <= y <= z): 64 -> 4x4x4, 16384 -> 16x32x32."""
    best = None
    for x in range(1, round(n ** (1 / 3)) + 2):
        if n % x:
            continue
        for y in range(x, math.isqrt(n // x) + 1):
            if (n // x) % y:
                continue
            z = n // (x * y)
            if z < y:
                continue
            key = (z / x, -x)
            if best is None or key < best[0]:
                best = (key, (x, y, z))
    return best[1]


def tpu_torus(b: _GraphBuilder, cluster: Cluster, topo: Topology) -> None:
    """TPU slice: chips on a 3-D torus, 6 ICI links per chip (GCP_V5P), x the fastest rank axis;
    each link carries the chip's ICI bandwidth / 6 per direction (scaling-book ~90 GB/s on v5p)."""
    tier = cluster.tiers[-1]
    dims = torus_shape(cluster.num_devices)
    wrap = all(d >= TORUS_MIN_WRAP for d in dims)
    link_cap = tier.bytes_per_s / (2 * sum(1 for d in dims if d > 1) or 1)
    X, Y, Z = dims
    for idx in range(cluster.num_devices):
        x, y, z = idx % X, (idx // X) % Y, idx // (X * Y)
        for axis, (c, L) in enumerate(((x, X), (y, Y), (z, Z))):
            if L == 1 or (c + 1 == L and not wrap) or (L == 2 and c == 1):
                continue
            step = (1, X, X * Y)[axis]
            nxt = idx + step if c + 1 < L else idx - (L - 1) * step
            b.link(idx, nxt, link_cap, tier.latency_s, tier.kind)
    topo.torus_dims, topo.torus_wrap, topo.torus_link_cap = dims, wrap, link_cap
    topo.stats.update({"torus": "x".join(map(str, dims)), "wraparound": wrap})


@lru_cache(maxsize=16)
def build_topology(cluster: Cluster) -> Topology:
    """The graph of `cluster` (cached per cluster)."""
    check_cluster(cluster)
    b = _GraphBuilder(cluster.num_devices)
    first, last = cluster.tiers[0], cluster.tiers[-1]
    nvls = first.kind == "nvswitch" and nvlink_generation(cluster.device.scale_up) >= 4
    topo = Topology(cluster=cluster, graph=None, scale_up=first.kind, scale_out=last.kind, nvls=nvls)
    dpn = cluster.devices_per_node
    if last.kind == "ici-torus":
        tpu_torus(b, cluster, topo)
    else:
        _scale_up(b, cluster, nvls)
        nics = cluster.nics_per_node
        topo.nics_per_node = nics
        topo.nic_of_local = np.arange(dpn) * nics // dpn
        # a NIC port runs at the smaller of its own rate and the tier's per-device share
        topo.nic_cap = min(cluster.nic_bytes_per_s, last.bytes_per_s * dpn / nics)
        if last.kind == "dragonfly":
            dragonfly(b, cluster, topo)
        else:
            fat_tree(b, cluster, topo)
        nic_ids = b.nic_ids
        for node in range(cluster.num_nodes):  # device -> its NIC over PCIe
            for local in range(dpn):
                v = nic_ids[node * nics + int(topo.nic_of_local[local])]
                b.link(node * dpn + local, v, topo.nic_cap, last.latency_s, "pcie")
    if first.kind == "pcie":
        topo.pcie_switch_of_local = np.arange(dpn) // PCIE_GPUS_PER_SWITCH
        topo.pcie_up_cap = first.bytes_per_s
    topo.graph = b.graph()
    return topo


def check_cluster(cluster: Cluster) -> None:
    """Topology-level checks the YAML parser cannot make (one-line InputErrors)."""
    last = cluster.tiers[-1]
    if last.kind in SCALE_UP_KINDS and last.kind != "ici-torus":
        raise InputError(f"cluster {cluster.name!r}: the last tier {last.name!r} has kind {last.kind!r}, "
                         f"a scale-up kind; valid kinds for the tier spanning nodes: "
                         f"{', '.join(SWITCHED_FABRICS + ('ici-torus',))}")
    for t in cluster.tiers[:-1]:
        if t.kind not in SCALE_UP_KINDS:
            raise InputError(f"cluster {cluster.name!r}: intra-node tier {t.name!r} has kind {t.kind!r}; "
                             f"valid intra-node kinds: {', '.join(SCALE_UP_KINDS)}")
    if last.kind == "ici-torus" and any(t.kind != "ici-torus" for t in cluster.tiers):
        raise InputError(f"cluster {cluster.name!r}: an ici-torus slice needs every tier of kind "
                         "ici-torus (the torus spans hosts and slice alike)")


# ---- placement --------------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupPlacement:
    """Where every group of one shape sits: members per node, nodes spanned, how many groups run
    at once, the scale-up tier it uses and the share of it, the resource levels it crosses.
    Scale-out loads per pattern come from `network_time` (cached by the same shape)."""

    size: int
    stride: int
    groups: int  # concurrent groups of this shape
    k: int  # members per node (of the busiest node)
    nodes: int  # nodes one group spans
    intra_tier: int  # innermost tier covering the group's members on one node
    intra_fraction: float  # share of a device's intra-tier bandwidth the group's ring can use
    crosses: tuple  # resource levels crossed: "scale-up", "nic", "leaf", "spine", "core", "torus"
    torus: dict = field(default_factory=dict, hash=False, compare=False)


def group_ranks(size: int, stride: int, n: int) -> np.ndarray:
    """[groups, size] ranks of every complete group of `size` ranks `stride` apart (Megatron order:
    a block of size·stride ranks holds `stride` interleaved groups)."""
    block = size * stride
    blocks = n // block
    g = np.arange(blocks * stride)
    base = (g // stride) * block + g % stride
    return base[:, None] + np.arange(size)[None, :] * stride


@lru_cache(maxsize=4096)
def place_group(cluster: Cluster, size: int, stride: int, placement: str = "packed") -> GroupPlacement:
    """Placement of every group of `size` ranks `stride` apart (cached by shape)."""
    node, devices = _group_nodes(cluster, size, stride, placement)
    _, per_node = np.unique(node[0], return_counts=True)
    nodes_per_group, k = int(per_node.size), int(per_node.max())
    intra_tier, fraction = _intra(cluster, devices[0], k)
    crosses = ["scale-up"] if k > 1 else []
    torus = {}
    if cluster.tiers[-1].kind == "ici-torus":
        torus = _torus_group(build_topology(cluster), devices)
        crosses = ["torus"]
    elif nodes_per_group > 1:
        crosses += network_time(cluster, size, stride, "ring", placement)[2]
    if cluster.tiers[0].kind == "pcie" and k > 1 and cluster.tiers[-1].kind != "ici-torus":
        fraction /= _pcie_share(build_topology(cluster), devices % cluster.devices_per_node, node)
    return GroupPlacement(size=size, stride=stride, groups=node.shape[0], k=k, nodes=nodes_per_group,
                          intra_tier=intra_tier, intra_fraction=fraction, crosses=tuple(crosses),
                          torus=torus)


@lru_cache(maxsize=4096)
def network_time(cluster: Cluster, size: int, stride: int, pattern: str,
                 placement: str = "packed") -> tuple[float, str, tuple]:
    """(seconds per byte of the pattern's unit volume, bottleneck resource, levels crossed) of the
    scale-out phase of `pattern` (ring | tree | a2a | pair) when every group of the shape runs it
    at once. Ring: per byte each ring hop carries; tree: per byte of S; a2a and pair: per byte of
    S. (0, "none", ()) for groups inside one node."""
    if pattern not in ("ring", "tree", "a2a", "pair"):
        raise ValueError(pattern)
    node, devices = _group_nodes(cluster, size, stride, placement)
    if np.all(node[0] == node[0, 0]) or cluster.tiers[-1].kind == "ici-torus":
        return 0.0, "none", ()
    topo = build_topology(cluster)
    _, per_node = np.unique(node[0], return_counts=True)
    k = int(per_node.max())
    rails = topo.nic_of_local[devices % cluster.devices_per_node]
    if pattern == "pair" or (size == 2 and pattern in ("ring", "tree")):
        pattern = "pair"
    t, where, levels = _net_time(topo, node, rails, pattern, k)
    return t, where, tuple(levels)


def _group_nodes(cluster: Cluster, size: int, stride: int, placement: str):
    """(nodes [groups, size], devices [groups, size]) of every group of the shape; validates it."""
    check_cluster(cluster)
    n = cluster.num_devices
    for name, v in (("size", size), ("stride", stride)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise InputError(f"group {name} must be an integer >= 1, got {v!r}")
    if size * stride > n:
        raise InputError(f"a group of {size} ranks with stride {stride} spans {size * stride} devices; "
                         f"cluster {cluster.name!r} has {n} (valid: size x stride <= {n})")
    if placement not in PLACEMENTS:
        raise InputError(f"placement {placement!r} is not one of {', '.join(PLACEMENTS)}")
    devices = _devices_of(group_ranks(size, stride, n), cluster, placement)
    return devices // cluster.devices_per_node, devices


def _devices_of(ranks: np.ndarray, cluster: Cluster, placement: str) -> np.ndarray:
    if placement == "packed":
        return ranks
    # scattered: the job's nodes come from the scheduler in an order unrelated to the fabric
    # (a fixed pseudo-random permutation of nodes; devices inside a node keep their order)
    dpn = cluster.devices_per_node
    perm = np.random.default_rng(0).permutation(cluster.num_nodes)
    return perm[ranks // dpn] * dpn + ranks % dpn


def _intra(cluster: Cluster, members: np.ndarray, k: int) -> tuple[int, float]:
    """(innermost tier spanning the group's members on one node, share of that tier's per-device
    bandwidth a ring over them can use)."""
    dpn = cluster.devices_per_node
    if k <= 1:
        return 0, 1.0
    local = members % dpn
    on_first = local[members // dpn == members[0] // dpn]
    span = int(on_first.max() - on_first.min()) + 1
    covered, ti = 1, 0
    for i, t in enumerate(cluster.tiers[:-1]):
        covered *= t.size
        ti = i
        if covered >= span:
            break
    tier = cluster.tiers[0]
    fraction = 1.0
    if tier.kind in ("infinity-fabric", "hccs") and ti == 0 and tier.size > 2:
        # a full mesh: a ring (NCCL/RCCL build one per direct link) uses the k-1 links to the other
        # members of the 'size - 1' a device has (MI300X: 2 GPUs 47.7 vs 8 GPUs 312.9 GB/s, STAS_NET)
        fraction = (k - 1) / (tier.size - 1)
    return ti, fraction


def _pcie_share(topo: Topology, local: np.ndarray, node: np.ndarray) -> float:
    """Flows per PCIe switch uplink (per direction) of the busiest switch when every group runs its
    ring at once; 1 when no uplink carries more than one ring hop."""
    sw = topo.pcie_switch_of_local[local]
    nxt_sw = np.roll(sw, -1, axis=1)
    same_node = node == np.roll(node, -1, axis=1)
    cross = (sw != nxt_sw) & same_node
    if not cross.any():
        return 1.0
    nsw = int(sw.max()) + 1
    key_up = (node * nsw + sw)[cross]
    key_dn = (node * nsw + nxt_sw)[cross]
    return float(max(np.bincount(key_up).max(), np.bincount(key_dn).max()))


def _flows(pattern: str, node: np.ndarray, rails: np.ndarray, k: int):
    """Inter-node flows of every group as arrays (src node, dst node, rail, bytes per byte of the
    pattern's unit volume).

    ring: each hop between consecutive nodes of a group carries the ring's per-hop volume, split
    over the rails of the k members on the source node (NCCL spreads channels over their NICs).
    pair: send/recv, both directions at once (pipeline stages exchange activations and gradients).
    tree: NCCL's double binary tree over the group's nodes; each tree moves S/2, every edge once
    up (reduce) and once down (broadcast), split over the k members' rails."""
    G, size = node.shape
    if pattern in ("ring", "pair"):
        nxt = np.roll(node, -1, axis=1)
        hop = np.ones_like(node, dtype=bool) if pattern == "pair" else node != nxt
        gi, mi = np.nonzero(hop)
        seg = (mi[:, None] - np.arange(k)[None, :]) % size  # the k members ending at the hop
        r = rails[gi[:, None], seg].ravel()
        return (np.repeat(node[gi, mi], k), np.repeat(nxt[gi, mi], k), r, np.full(r.size, 1.0 / k))
    first = np.ones_like(node, dtype=bool)
    first[:, 1:] = node[:, 1:] != node[:, :-1]
    per = first.sum(axis=1)
    keep = per == per[0]  # groups of the regular shape (all of them in a tiling layout)
    node, rails, first = node[keep], rails[keep], first[keep]
    G = node.shape[0]
    gi, pos = np.nonzero(first)
    m = int(per[0])
    pos = pos.reshape(G, m)
    nodes_g = node[np.arange(G)[:, None], pos]  # [G, m] distinct nodes in rank order
    members = (pos[:, :, None] + np.arange(k)[None, None, :]) % size
    rails_g = rails[np.arange(G)[:, None, None], members]  # [G, m, k]
    parent, child = _double_binary_tree(m)
    src = np.concatenate([child, parent])  # reduce (child -> parent), then broadcast
    dst = np.concatenate([parent, child])
    s_nodes = np.repeat(nodes_g[:, src], k, axis=1).ravel()
    d_nodes = np.repeat(nodes_g[:, dst], k, axis=1).ravel()
    r = rails_g[:, src, :].reshape(G, -1).ravel()
    return s_nodes, d_nodes, r, np.full(r.size, 0.5 / k)


@lru_cache(maxsize=256)
def _double_binary_tree(m: int) -> tuple[np.ndarray, np.ndarray]:
    """(parent, child) arrays of both trees of NCCL's double binary tree over m ranks: the in-order
    binary tree of ncclGetBtree and, for the second tree, its mirror (m even) or its shift by one
    (m odd) (NVIDIA/nccl src/graph/trees.cc ncclGetDtree)."""
    parents, children = [], []
    for r in range(1, m):
        p = _btree_parent(r, m)
        parents.append(p)
        children.append(r)
        if m % 2 == 0:  # mirror
            parents.append(m - 1 - p)
            children.append(m - 1 - r)
        else:  # shift
            parents.append((p + 1) % m)
            children.append((r + 1) % m)
    return np.array(parents, dtype=int), np.array(children, dtype=int)


def _btree_parent(r: int, m: int) -> int:
    """Parent of rank r > 0 in NCCL's in-order binary tree over m ranks (ncclGetBtree: the lowest
    set bit b of r; parent (r ^ b) | 2b, or r ^ b when that is out of range)."""
    bit = 1
    while bit < m and not bit & r:
        bit <<= 1
    up = (r ^ bit) | (bit << 1)
    return up if up < m else r ^ bit


def _net_time(topo: Topology, node: np.ndarray, rails: np.ndarray, pattern: str,
              k: int) -> tuple[float, str, list]:
    """Seconds per byte of S of the scale-out phase of `pattern` for every group at once:
    max over resources (NIC ports out/in, leaf uplinks/downlinks, pod core links) of the bytes
    through it / its capacity. Ring loads are per byte of the per-hop ring volume."""
    nics = topo.nics_per_node
    nodes_total = topo.leaf_of.shape[0]
    leaf_of, pod_of = topo.leaf_of, topo.pod_of_leaf
    if pattern == "a2a":
        return _a2a_time(topo, node, rails, k)
    src, dst, r, w = _flows(pattern, node, rails, k)
    if src.size == 0:
        return 0.0, "none", []
    loads = {}
    nic_src = src * nics + r
    nic_dst = dst * nics + r
    loads["nic-out"] = (np.bincount(nic_src, weights=w, minlength=nodes_total * nics), topo.nic_cap)
    loads["nic-in"] = (np.bincount(nic_dst, weights=w, minlength=nodes_total * nics), topo.nic_cap)
    ls, ld = leaf_of[src, r], leaf_of[dst, r]
    cross = ls != ld
    levels = ["nic"]
    if cross.any():
        levels.append("leaf")
        nl = topo.leaf_up_cap.size
        loads["leaf-up"] = (np.bincount(ls[cross], weights=w[cross], minlength=nl), topo.leaf_up_cap)
        loads["leaf-down"] = (np.bincount(ld[cross], weights=w[cross], minlength=nl), topo.leaf_up_cap)
        if topo.scale_out != "dragonfly":
            levels.append("spine")
        ps, pd = pod_of[ls], pod_of[ld]
        pc = cross & (ps != pd)
        if pc.any() and topo.levels >= 3:
            levels.append("core")
            npods = topo.pod_up_cap.size
            loads["pod-up"] = (np.bincount(ps[pc], weights=w[pc], minlength=npods), topo.pod_up_cap)
            loads["pod-down"] = (np.bincount(pd[pc], weights=w[pc], minlength=npods), topo.pod_up_cap)
    worst, where = 0.0, "nic-out"
    for name, (load, cap) in loads.items():
        t = float(np.max(load / cap))
        if t > worst:
            worst, where = t, name
    return worst, where, levels


def _count_by(*keys: np.ndarray) -> np.ndarray:
    """For each element, how many elements share its key tuple."""
    key = np.zeros(keys[0].shape, dtype=np.int64)
    for k in keys:
        key = key * (int(k.max()) + 1) + k
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    return counts[inverse]


def _a2a_time(topo: Topology, node: np.ndarray, rails: np.ndarray, k: int) -> tuple[float, str, list]:
    """All-to-all: every rank sends S/n to every other rank; traffic to another node leaves on the
    rail of the destination's local rank (NCCL PXN: staged over NVLink to the rail-aligned GPU)."""
    G, n = node.shape
    nics = topo.nics_per_node
    g = np.repeat(np.arange(G), n)
    nd, rl = node.ravel(), rails.ravel()
    on_node_rail = _count_by(g, nd, rl)  # members of my group on my node and rail
    on_node = _count_by(g, nd)  # members of my group on my node (they all send through my rail)
    on_rail = _count_by(g, rl)  # members of my group on my rail, any node
    # per member position (g, node, rail): the node's members each send 1/n to every remote member
    # on this rail; divide by on_node_rail because every member of (g, node, rail) repeats the key
    remote_on_rail = on_rail - on_node_rail
    out = on_node * remote_on_rail / n / on_node_rail
    nic_load = np.bincount(nd * nics + rl, weights=out)
    worst, where, levels = float(nic_load.max() / topo.nic_cap), "nic-out", ["nic"]
    leaf = topo.leaf_of[nd, rl]
    on_leaf_rail = _count_by(g, leaf, rl)
    leaving = on_node * (on_rail - on_leaf_rail) / n / on_node_rail
    if leaving.max() > 0:
        levels += ["leaf"] + (["spine"] if topo.scale_out != "dragonfly" else [])
        up = np.bincount(leaf, weights=leaving, minlength=topo.leaf_up_cap.size)
        t = float(np.max(up / topo.leaf_up_cap))
        if t > worst:
            worst, where = t, "leaf-up"
        if topo.levels >= 3:
            pod = topo.pod_of_leaf[leaf]
            on_pod_rail = _count_by(g, pod, rl)
            out_pod = on_node * (on_rail - on_pod_rail) / n / on_node_rail
            if out_pod.max() > 0:
                levels.append("core")
                pu = np.bincount(pod, weights=out_pod, minlength=topo.pod_up_cap.size)
                t = float(np.max(pu / topo.pod_up_cap))
                if t > worst:
                    worst, where = t, "pod-up"
    return worst, where, levels


def _torus_group(topo: Topology, devices: np.ndarray) -> dict:
    """The group's chips on the torus: per dimension it spans, its length, member spacing (groups
    interleaved along it share its links) and whether the ring closes over wraparound links."""
    X, Y, Z = topo.torus_dims
    d = devices[0]
    coords = np.stack([d % X, (d // X) % Y, d // (X * Y)])
    dims = []
    for axis, L in enumerate((X, Y, Z)):
        vals = np.unique(coords[axis])
        if vals.size <= 1:
            continue
        spacing = int(np.min(np.diff(vals)))
        full = vals.size * spacing == L
        dims.append({"axis": "xyz"[axis], "length": int(vals.size), "spacing": spacing,
                     "wrap": bool(full and topo.torus_wrap)})
    return {"dims": dims, "link_bytes_per_s": topo.torus_link_cap}
