"""Pin tests for hwmodels.topology (written from surviving mutants): each states a structural
fact of a published system or of NCCL's algorithms, and checks the graph or placement against it."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from hwmodels.clusters import load_cluster
from hwmodels.errors import InputError
from hwmodels.topology import (_btree_parent, _double_binary_tree, build_topology, group_ranks,
                               network_time, nvlink_generation, place_group, torus_shape)


# ---- NCCL double binary tree (src/graph/trees.cc) -----------------------------------------------
def test_btree_parents_follow_ncclgetbtree():
    """ncclGetBtree over 8 ranks: 0 is the root, 4 its child, 2 and 6 under 4, odd ranks leaves
    (rank r with lowest set bit b: parent (r ^ b) | 2b, or r ^ b when that is out of range)."""
    assert [_btree_parent(r, 8) for r in range(1, 8)] == [2, 4, 2, 0, 6, 4, 6]
    # 5 ranks: rank 2's parent 4; rank 4's would-be parent 8 is out of range -> 4 ^ 4 = 0
    assert [_btree_parent(r, 5) for r in range(1, 5)] == [2, 4, 2, 0]


def test_second_tree_is_the_mirror_for_even_and_the_shift_for_odd_counts():
    parent, child = _double_binary_tree(4)
    edges = set(zip(child.tolist(), parent.tolist()))
    first = {(1, 2), (2, 0), (3, 2)}
    mirror = {(2, 1), (1, 3), (0, 1)}  # m - 1 - r
    assert edges == first | mirror
    parent, child = _double_binary_tree(3)
    edges = set(zip(child.tolist(), parent.tolist()))
    assert edges == {(1, 2), (2, 0)} | {(2, 0), (0, 1)}  # shift by one: (r+1, p+1) mod 3
    assert len(_double_binary_tree(8)[0]) == 2 * (8 - 1)  # m - 1 edges per tree


def test_tree_allreduce_loads_follow_the_double_binary_tree():
    """NCCL's two trees each carry S/2, every edge once up (reduce) and once down (broadcast).
    4 nodes, one rank per node (each rail its own group): in tree 0 (0 <- 2 <- {1, 3}) node 2 sends
    S/2 up and S/2 to each child; in the mirror tree (3 <- 1 <- {0, 2}) it sends S/2 up: 2 S
    through its NIC. 2 nodes: each sends S/2 per tree, S in all. With 8 ranks per node the load
    splits over the 8 rails."""
    c4 = load_cluster("dgx-h100", nodes=4)
    t, where, levels = network_time(c4, 4, 8, "tree")
    assert t == pytest.approx(2.0 / 50e9, rel=1e-12) and where == "nic-out" and levels == ("nic",)
    c2 = load_cluster("dgx-h100", nodes=2)
    assert network_time(c2, 16, 1, "tree")[0] == pytest.approx(1.0 / 8 / 50e9, rel=1e-12)


# ---- scale-up descriptions and structural constants ------------------------------------------------
def test_nvlink_generation_is_read_from_the_description():
    assert nvlink_generation("NVLink 4, 18 links") == 4
    assert nvlink_generation("nvlink5 x 18") == 5
    assert nvlink_generation("PCIe Gen4 x16 (no NVLink)") == 0


def test_torus_shapes_are_the_most_cubic_factorisations():
    """TPU v5p slices: 64 chips 4x4x4, 16 chips 2x2x4, 128 chips 4x4x8, 16384 chips 16x32x32."""
    assert torus_shape(64) == (4, 4, 4)
    assert torus_shape(16) == (2, 2, 4)
    assert torus_shape(128) == (4, 4, 8)
    assert torus_shape(16384) == (16, 32, 32)
    assert torus_shape(7) == (1, 1, 7)


def test_small_tpu_slice_has_no_wraparound():
    """Slices below 4x4x4 have no wraparound links (GCP v5p): a 2x2x4 slice is a mesh."""
    topo = build_topology(load_cluster("tpu-v5p", nodes=4))
    assert topo.torus_dims == (2, 2, 4) and not topo.torus_wrap
    degrees = sorted(d for _, d in topo.graph.degree())
    assert degrees[0] == 3 and degrees[-1] == 4  # x, y pairs and an open chain of 4 along z


def test_megatron_rank_order_of_groups():
    """A block of size*stride ranks holds `stride` interleaved groups (TP innermost)."""
    assert group_ranks(2, 4, 16).tolist() == [[0, 4], [1, 5], [2, 6], [3, 7],
                                              [8, 12], [9, 13], [10, 14], [11, 15]]
    assert group_ranks(4, 1, 8).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert group_ranks(3, 2, 16).tolist() == [[0, 2, 4], [1, 3, 5], [6, 8, 10], [7, 9, 11]]


def test_b200_superpod_at_16_sus_is_a_three_tier_fat_tree():
    """DGX B200 SuperPOD reference architecture at 16 SUs (512 nodes): 128 leaves, 128 spines,
    64 core switches (SP_B200_ARCH); pods of 32 leaves."""
    topo = build_topology(load_cluster("dgx-b200", nodes=512))
    s = topo.summary()
    assert (s["leaves"], s["spines"], s["vertex_kinds"]["core"], s["pods"]) == (128, 128, 64, 4)
    assert topo.levels == 3 and s["rail_optimized"]
    assert topo.pod_up_cap[0] == pytest.approx(32 * topo.leaf_up_cap[0])


def test_one_su_is_a_single_leaf_per_rail_without_spine_hops():
    topo = build_topology(load_cluster("dgx-h100", nodes=32))
    s = topo.summary()
    assert s["leaves"] == 8 and topo.levels == 2
    one = build_topology(load_cluster("dgx-h100", nodes=2))
    assert one.summary()["leaves"] == 8


def test_frontier_dragonfly_groups_and_global_links():
    """Frontier: 128 nodes per group on 32 switches, all-to-all inside a group (32*31/2 links),
    global capacity = injection / blocking factor."""
    c = load_cluster("frontier", nodes=256)
    topo = build_topology(c)
    sw = [v for v, k in topo.graph.nodes(data="kind") if k == "df-switch"]
    assert len(sw) == 64
    intra = [d for a, b, d in topo.graph.edges(data=True)
             if topo.graph.nodes[a]["kind"] == topo.graph.nodes[b]["kind"] == "df-switch"]
    assert len(intra) == 2 * 32 * 31 // 2 + 1  # two groups' L1 all-to-all + one global link
    injection = 128 * c.nics_per_node * topo.nic_cap
    assert topo.leaf_up_cap[0] == pytest.approx(injection / c.tiers[-1].oversubscription)
    nics_on_switch = [sum(1 for n in topo.graph.neighbors(s) if topo.graph.nodes[n]["kind"] == "nic")
                      for s in sw]
    assert set(nics_on_switch) == {4 * c.nics_per_node}  # 128 nodes / 32 switches


def test_nic_port_runs_at_the_smaller_of_its_rate_and_the_tier_share():
    c = load_cluster("dgx-h100", nodes=2)
    topo = build_topology(c)
    assert topo.nic_cap == pytest.approx(50e9)  # ConnectX-7 400 Gb/s
    slow = replace(c, tiers=c.tiers[:-1] + (replace(c.tiers[-1], bytes_per_s=25e9),))
    assert build_topology(slow).nic_cap == pytest.approx(25e9)


def test_pcie_ring_shares_the_switch_uplinks():
    """DGX A100-style PCIe node: GPUs in pairs behind a switch; a ring over all 8 GPUs crosses
    every switch uplink once each way, a pair behind one switch never leaves it."""
    c = load_cluster("pcie-a100", nodes=1)
    assert place_group(c, 2, 1).intra_fraction == pytest.approx(1.0)
    eight = place_group(c, 8, 1)
    assert eight.intra_fraction == pytest.approx(1.0)
    # 4 interleaved groups of 2 (stride 4) cross the switches: two flows per uplink
    assert place_group(c, 2, 4).intra_fraction == pytest.approx(0.5)
    topo = build_topology(c)
    assert topo.pcie_up_cap == c.tiers[0].bytes_per_s
    assert topo.pcie_switch_of_local.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_group_crossings_name_the_levels():
    c = load_cluster("dgx-h100", nodes=128)
    assert place_group(c, 64, 8).crosses == ("nic", "leaf", "spine")  # spans 2 SUs
    assert place_group(c, 16, 8).crosses == ("nic",)  # 16 nodes of one SU: one rail leaf
    assert place_group(c, 8, 1).crosses == ("scale-up",)
    assert place_group(c, 16, 1).crosses == ("scale-up", "nic")
    with pytest.raises(ValueError):
        network_time(c, 16, 8, "butterfly")


def test_a_group_across_three_tier_pods_crosses_the_core():
    c = load_cluster("dgx-h100", nodes=2048)
    pl = place_group(c, 2048, 8)
    assert pl.crosses[-1] == "core"
    t, where, levels = network_time(c, 2048, 8, "a2a")
    assert "core" in levels and t > 0


def test_bad_group_shapes_and_tiers_are_one_line_errors():
    c = load_cluster("dgx-h100", nodes=2)
    for size, stride in ((0, 1), (2, 0), (True, 1), (2.0, 1)):
        with pytest.raises(InputError, match="must be an integer >= 1"):
            place_group(c, size, stride)
    with pytest.raises(InputError, match="placement"):
        place_group(c, 2, 1, "random")
    bad = replace(c, tiers=(replace(c.tiers[0], kind="fat-tree"), c.tiers[1]))
    with pytest.raises(InputError, match="intra-node tier"):
        build_topology(bad)
    tpu = load_cluster("tpu-v5p", nodes=16)
    mixed = replace(tpu, tiers=(replace(tpu.tiers[0], kind="nvswitch"),) + tpu.tiers[1:])
    assert len(tpu.tiers) == 2  # host tier and slice tier, both ici-torus
    with pytest.raises(InputError, match="every tier of kind ici-torus"):
        build_topology(mixed)


def test_all_to_all_inside_one_su_is_limited_by_the_nics():
    """16 nodes x 8 GPUs, one all-to-all over all 128 ranks: each rank sends (n - local)/n of S
    off the node through its rail NIC (PXN), so the NIC carries 120/128 of S."""
    c = load_cluster("dgx-h100", nodes=16)
    t, where, levels = network_time(c, 128, 1, "a2a")
    assert where == "nic-out" and levels == ("nic",)
    assert t == pytest.approx((120 / 128) / 50e9, rel=1e-9)


def test_pair_pattern_sends_both_directions_through_one_nic():
    c = load_cluster("dgx-h100", nodes=2)
    t, where, levels = network_time(c, 2, 8, "pair")
    assert t == pytest.approx(1 / 50e9) and where == "nic-out" and levels == ("nic",)
    assert network_time(c, 2, 8, "ring") == (t, where, levels)
    assert network_time(c, 8, 1, "ring") == (0.0, "none", ())
    assert np.isfinite(network_time(c, 16, 1, "tree")[0])


# ---- graph structure --------------------------------------------------------------------------------
def _neighbour_kinds(g, v):
    return sorted(g.nodes[n]["kind"] for n in g.neighbors(v))


def test_every_gpu_of_every_node_hangs_off_its_nodes_nvswitch():
    """DGX H100: all 8 GPUs of a node on the node's NVSwitch plane, and each to its rail NIC."""
    topo = build_topology(load_cluster("dgx-h100", nodes=4))
    g = topo.graph
    for d in range(32):
        kinds = _neighbour_kinds(g, d)
        assert kinds == ["nic", "nvswitch"], (d, kinds)
        sw = next(n for n in g.neighbors(d) if g.nodes[n]["kind"] == "nvswitch")
        assert g.nodes[sw]["node"] == d // 8
    for v, k in g.nodes(data="kind"):
        if k == "nvswitch":
            assert g.degree(v) == 8


def test_pcie_gpus_sit_in_pairs_behind_switches_on_the_host():
    """DGX A100 PCIe layout (STH_HC32): 4 PCIe switches per node, 2 GPUs under each, each switch
    uplinked to the host root complex."""
    g = build_topology(load_cluster("pcie-a100", nodes=1)).graph
    switches = [v for v, k in g.nodes(data="kind") if k == "pcie-switch"]
    assert len(switches) == 4
    for sw in switches:
        kinds = _neighbour_kinds(g, sw)
        assert kinds.count("device") == 2 and kinds.count("host") == 1
    for d in range(8):
        assert "pcie-switch" in _neighbour_kinds(g, d)


def test_each_core_switch_takes_one_spine_of_every_pod():
    """Three-tier SuperPOD (DGX B200, 16 SUs): spine j of every pod goes to core group j, so the 64
    cores each see one spine per pod (4) and every spine has 2 core uplink bundles."""
    topo = build_topology(load_cluster("dgx-b200", nodes=512))
    g = topo.graph
    cores = [v for v, k in g.nodes(data="kind") if k == "core"]
    assert len(cores) == 64
    for c in cores:
        pods = sorted(g.nodes[n]["pod"] for n in g.neighbors(c))
        assert pods == [0, 1, 2, 3]
    spines = [v for v, k in g.nodes(data="kind") if k == "spine"]
    assert all(_neighbour_kinds(g, s).count("core") == 2 for s in spines)
    # non-blocking above the leaf: a spine's 32 uplink ports (400G) split over its 2 cores
    for a, b, d in g.edges(data=True):
        if {g.nodes[a]["kind"], g.nodes[b]["kind"]} == {"spine", "core"}:
            assert d["bytes_per_s"] == pytest.approx(16 * topo.nic_cap)


def test_links_record_their_cables():
    """One cable per NIC port; a leaf's uplinks spread evenly over its pod's spines."""
    topo = build_topology(load_cluster("dgx-h100", nodes=64))
    g = topo.graph
    for a, b, d in g.edges(data=True):
        kinds = {g.nodes[a]["kind"], g.nodes[b]["kind"]}
        if kinds == {"nic", "leaf"}:
            assert d["cables"] == 1
        elif kinds == {"leaf", "spine"}:
            assert d["cables"] == max(1, round(32 / topo.summary()["spines"]))
            assert d["bytes_per_s"] == pytest.approx(32 / topo.summary()["spines"] * 50e9)


def test_only_pcie_nodes_have_pcie_switches_and_a_single_leaf_is_one_level():
    for name in ("mi300x", "dgx-h100", "ascend-910b"):
        assert build_topology(load_cluster(name, nodes=2)).pcie_switch_of_local is None, name
    pcie = build_topology(load_cluster("pcie-a100", nodes=2))  # 4 NIC ports: one leaf
    assert pcie.summary()["leaves"] == 1 and pcie.summary()["switch_levels"] == 1
    assert build_topology(load_cluster("dgx-h100", nodes=2)).summary()["switch_levels"] == 2


def test_frontier_gcd_pairs_use_the_package_link_before_the_node_fabric():
    """Frontier node: 4 MI250X packages of 2 GCDs; a 2-GCD group stays on its package's link
    (tier 0), an 8-GCD group spans the node's Infinity Fabric between packages (tier 1)."""
    c = load_cluster("frontier", nodes=2)
    assert [t.size for t in c.tiers[:-1]] == [2, 4]
    assert place_group(c, 2, 1).intra_tier == 0
    assert place_group(c, 4, 1).intra_tier == 1 and place_group(c, 8, 1).intra_tier == 1


def test_only_a_group_spanning_a_whole_axis_closes_its_ring_over_the_wraparound():
    """4x4x4 v5p slice: 4 chips along x use the wraparound link (bidirectional ring); 2 adjacent
    chips do not."""
    c = load_cluster("tpu-v5p", nodes=16)
    assert place_group(c, 4, 1).torus["dims"] == [{"axis": "x", "length": 4, "spacing": 1, "wrap": True}]
    assert place_group(c, 2, 1).torus["dims"] == [{"axis": "x", "length": 2, "spacing": 1, "wrap": False}]
    assert place_group(c, 4, 4).torus["dims"][0]["axis"] == "y"


def test_a_single_dragonfly_group_has_no_global_links():
    topo = build_topology(load_cluster("frontier", nodes=64))
    assert topo.summary()["dragonfly_groups"] == 1 and topo.levels == 1
    g = topo.graph
    sw = [v for v, k in g.nodes(data="kind") if k == "df-switch"]
    assert sum(1 for a, b in g.edges() if a in sw and b in sw) == 32 * 31 // 2


def test_frontier_packages_are_joined_inside_the_node():
    """Frontier: GCD pairs per MI250X package (tier 0), packages joined by Infinity Fabric
    (tier 1): GCD 0 links to its pair and to GCDs of the other packages."""
    g = build_topology(load_cluster("frontier", nodes=2)).graph
    peers = {n for n in g.neighbors(0) if g.nodes[n]["kind"] == "device"}
    assert 1 in peers and peers & {2, 3, 4, 5, 6, 7}
    assert not peers & set(range(8, 16))  # the other node only through the NIC


def test_a_group_rides_the_innermost_scale_up_tier_that_spans_it():
    """A node whose scale-up has three levels (Infinity Fabric pairs, then boards of 4, then the
    node of 8, like Frontier's GCD pairs and 4-GPU boards with one level more): a group's ring
    uses the innermost tier whose span covers its members on the node (Cluster.tier_of_span).
    Members 2 apart (0, 2) span 3 devices: the board tier (index 1), not the node tier (2);
    adjacent members (0, 1) the pair tier (0); members 4 apart (0, 4) the node tier."""
    from hwmodels.topology import place_group
    fr = load_cluster("frontier")
    pair, board = fr.tiers[0], fr.tiers[1]
    tiers = (replace(pair, size=2), replace(board, name="board", size=2),
             replace(board, name="node", size=2, bytes_per_s=board.bytes_per_s / 2), fr.tiers[-1])
    c = replace(fr, name="three-level", tiers=tiers)
    assert place_group(c, 2, 1).intra_tier == 0
    assert place_group(c, 2, 2).intra_tier == 1
    assert place_group(c, 2, 4).intra_tier == 2
    assert c.tier_of_span(3) == 1


def test_a_two_device_mesh_is_one_link_at_the_full_rate():
    """Fully connected scale-up (MI300X xGMI: one link per peer, ROCM_MI300): a device's
    bandwidth is split over its size − 1 peer links: 448 GB/s / 7 = 64 GB/s per link on 8 GPUs;
    with 2 devices the single peer link carries all 448 GB/s."""
    mi = load_cluster("mi300x", nodes=1)
    two = replace(mi, name="mi300x-2", devices_per_node=2, tiers=(replace(mi.tiers[0], size=2),) + mi.tiers[1:])
    g = build_topology(two).graph
    assert g.edges[0, 1]["bytes_per_s"] == pytest.approx(448e9)
    assert build_topology(mi).graph.edges[0, 1]["bytes_per_s"] == pytest.approx(448e9 / 7)


def test_tpu_hosts_joined_only_by_the_data_center_network_are_not_a_torus():
    """TPU Multislice: ICI inside a slice, the data-center network between slices. Here each
    slice is one 4-chip host (ICI) and 4 hosts are joined by Ethernet: a group of 8 chips over 2
    hosts crosses the NICs, not a torus, and its all-reduce is bound by the NIC."""
    from hwmodels.collectives import collective_cost
    from hwmodels.topology import place_group
    tpu, eth = load_cluster("tpu-v5p"), load_cluster("pcie-a100")
    c = replace(tpu, name="tpu-dcn", tiers=(tpu.tiers[0], replace(eth.tiers[-1], size=4)), num_nodes=4,
                nics_per_node=eth.nics_per_node, nic_bytes_per_s=eth.nic_bytes_per_s)
    pl = place_group(c, 8, 1)
    assert (pl.k, pl.nodes, pl.crosses, pl.torus) == (4, 2, ("scale-up", "nic"), {})
    assert collective_cost(c, "all_reduce", 8, 1, 2 ** 26).bottleneck == "nic-out"


def test_nvlink_bridges_join_neighbouring_pairs():
    """PCIe A100s with NVLink bridges (NVIDIA A100 PCIe datasheet: two GPUs per bridge set): a
    bridge link between GPUs 0-1, 2-3, 4-5, 6-7 of each node and no other bridge link."""
    pc = load_cluster("pcie-a100", nodes=1)
    bridged = replace(pc, name="a100-bridged", tiers=(
        replace(pc.tiers[0], name="bridge", kind="nvlink-bridge", size=2, bytes_per_s=300e9),
        replace(pc.tiers[0], size=4)) + pc.tiers[1:])
    g = build_topology(bridged).graph
    links = sorted((a, b) for a, b, d in g.edges(data=True) if d["kind"] == "nvlink-bridge")
    assert links == [(0, 1), (2, 3), (4, 5), (6, 7)]
    # a bridge tier described over 4 GPUs still bridges neighbouring pairs only
    quad = replace(bridged, tiers=(replace(bridged.tiers[0], size=4), replace(pc.tiers[0], size=2)) + pc.tiers[1:])
    g = build_topology(quad).graph
    assert sorted((min(a, b), max(a, b)) for a, b, d in g.edges(data=True) if d["kind"] == "nvlink-bridge") == \
        [(0, 1), (2, 3), (4, 5), (6, 7)]


def test_frontier_node_links_gcd_pairs_and_packages():
    """Frontier node (OLCF user guide): the two GCDs of each MI250X package share 200 GB/s of
    Infinity Fabric; every GCD reaches the GCDs of the other 3 packages over the node tier's
    50 GB/s, split over its 3 peer packages: 4 package links at 200 GB/s and, between the 8 GCDs,
    28 − 4 = 24 cross-package links at 50/3 GB/s."""
    from collections import Counter
    g = build_topology(load_cluster("frontier", nodes=2)).graph
    for first in (0, 8):  # every node alike
        gcds = range(first, first + 8)
        links = Counter(round(d["bytes_per_s"] / 1e9, 2) for a, b, d in g.edges(data=True)
                        if a in gcds and b in gcds)
        assert links == {200.0: 4, round(50 / 3, 2): 24}
        assert all(g.edges[a, a + 1]["bytes_per_s"] == 200e9 for a in range(first, first + 8, 2))


def test_the_tpu_torus_links_carry_the_slice_tiers_ici_rate():
    """TPU v5p: 6 ICI links per chip, each the chip's ICI bandwidth / 6 (GCP v5p; scaling-book):
    the torus is wired from the slice tier's rate, whatever the host tier says."""
    tpu = load_cluster("tpu-v5p")
    slow_host = replace(tpu, tiers=(replace(tpu.tiers[0], bytes_per_s=1e9),) + tpu.tiers[1:])
    assert build_topology(tpu).torus_link_cap == tpu.tiers[-1].bytes_per_s / 6
    assert build_topology(slow_host).torus_link_cap == tpu.tiers[-1].bytes_per_s / 6
    # the same slice described in three tiers (2-chip halves, 4-chip hosts, the slice)
    three = replace(tpu, tiers=(replace(tpu.tiers[0], size=2, bytes_per_s=1e9),
                                replace(tpu.tiers[0], size=2, bytes_per_s=2e9), tpu.tiers[-1]))
    assert build_topology(three).torus_link_cap == tpu.tiers[-1].bytes_per_s / 6


def test_second_tree_mirrors_the_first_for_six_ranks():
    """ncclGetDtree with an even count mirrors the first tree (rank r -> m − 1 − r). m = 6:
    ncclGetBtree parents 1->2, 2->4, 3->2, 4->0 (8 out of range), 5->4 (6 out of range); the
    mirror: 4->3, 3->1, 2->3, 1->5, 0->1."""
    parent, child = _double_binary_tree(6)
    edges = set(zip(child.tolist(), parent.tolist()))
    first = {(1, 2), (2, 4), (3, 2), (4, 0), (5, 4)}
    mirror = {(4, 3), (3, 1), (2, 3), (1, 5), (0, 1)}
    assert edges == first | mirror


def test_a_group_inside_one_node_uses_no_network():
    """network_time of a group whose members share a node: no scale-out phase, (0, none, ())."""
    from hwmodels.topology import network_time
    c = load_cluster("dgx-h100", nodes=2)
    for size, pattern in ((8, "ring"), (8, "tree"), (4, "a2a"), (2, "pair")):
        assert network_time(c, size, 1, pattern) == (0.0, "none", ())
    assert network_time(c, 16, 1, "ring")[0] > 0


def test_a_plain_fat_tree_fills_leaf_ports_node_by_node():
    """Non-rail fat tree of 64-port switches, half the ports down: 32 NIC ports per leaf. 64
    L40S servers with 8 NICs each: every 4 consecutive nodes share a leaf (all 8 NICs of a node
    on one leaf), 64 · 8 / 32 = 16 leaves."""
    t = build_topology(load_cluster("l40s-server", nodes=64))
    assert t.leaf_of.shape == (64, 8) and int(t.leaf_of.max()) == 15
    assert [int(t.leaf_of[n, 0]) for n in (0, 3, 4, 7, 8, 63)] == [0, 0, 1, 1, 2, 15]
    assert all(len(set(row.tolist())) == 1 for row in t.leaf_of)


def test_dragonfly_global_links_join_every_pair_of_groups_over_distinct_switches():
    """Slingshot dragonfly (KLOCK_FRONTIER): one global link bundle between every pair of groups,
    each group's global capacity (injection / blocking factor) split over the other groups, and
    the bundles of a group spread over its switches (group g reaches group h from its switch
    h mod 32). 4 groups (512 nodes): 6 global bundles at a third of a group's global capacity,
    on 12 different switches."""
    c = load_cluster("frontier", nodes=512)
    topo = build_topology(c)
    g = topo.graph
    kind = dict(g.nodes(data="kind"))
    group = dict(g.nodes(data="group"))
    glob = [(a, b, d) for a, b, d in g.edges(data=True)
            if kind[a] == kind[b] == "df-switch" and group[a] != group[b]]
    assert sorted(tuple(sorted((group[a], group[b]))) for a, b, _ in glob) == [
        (0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert all(d["bytes_per_s"] == pytest.approx(topo.leaf_up_cap[0] / 3) for _, _, d in glob)
    assert len({v for a, b, _ in glob for v in (a, b)}) == 12  # no switch carries two bundles


def test_an_all_to_all_across_superpod_pods_is_bound_by_the_nic():
    """DGX B200 SuperPOD, 16 SUs (three tiers, non-blocking, SP_B200_ARCH): two ranks on nodes
    of different pods exchange through leaf, spine and core, but every level above the NIC has
    the NIC's bandwidth or more, so the NIC port stays the bottleneck."""
    from hwmodels.topology import network_time
    t, where, levels = network_time(load_cluster("dgx-b200", nodes=512), 2, 8 * 128, "a2a")
    assert where == "nic-out" and levels == ("nic", "leaf", "spine", "core") and t > 0


def test_tpu_slices_from_4x4x4_up_are_tori():
    """GCP v5p: slices of at least 4x4x4 chips have wraparound links in every axis (a 2x2x4
    slice does not, see above): 128 chips = 4x4x8, a torus."""
    t = build_topology(load_cluster("tpu-v5p", nodes=32))
    assert t.torus_dims == (4, 4, 8) and t.torus_wrap


def test_a_one_gpu_mesh_node_has_no_peer_links():
    mi = load_cluster("mi300x", nodes=2)
    one = replace(mi, name="mi300x-1", devices_per_node=1, num_nodes=2,
                  tiers=(replace(mi.tiers[0], size=1), replace(mi.tiers[-1], size=2)))
    g = build_topology(one).graph
    assert not any(d["kind"] == "infinity-fabric" for _, _, d in g.edges(data=True))


def test_the_hop_that_leaves_a_pcie_node_does_not_load_its_pcie_switches():
    """A ring over two 8-GPU L40S servers: inside each node it crosses the PCIe switches as a
    one-node ring does; the hop to the other node goes out through the NIC. So the share of the
    PCIe tier each member gets is the one-node ring's."""
    from hwmodels.topology import place_group
    c = load_cluster("l40s-server", nodes=2)
    assert place_group(c, 16, 1).intra_fraction == pytest.approx(place_group(c, 8, 1).intra_fraction)


def test_h100_superpod_at_4_sus_has_32_leaves_and_16_spines():
    """DGX H100 SuperPOD reference architecture, compute fabric at 4 SUs (~128 nodes, 8 rails):
    32 leaf and 16 spine QM9700 switches (SP_H100_NF): a non-blocking leaf sends 32 of its 64
    ports up, 32 leaves x 32 uplinks / 64 spine ports = 16 spines."""
    s = build_topology(load_cluster("dgx-h100", nodes=128)).summary()
    assert (s["leaves"], s["spines"], s["switch_levels"]) == (32, 16, 2)


def test_two_leaves_of_a_plain_fat_tree_share_one_spine():
    """Folded Clos arithmetic at its smallest: two non-blocking 64-port leaves have 2 x 32
    uplinks, exactly one 64-port spine, cabled 32 times to each leaf (8 L40S servers, 8 NICs)."""
    t = build_topology(load_cluster("l40s-server", nodes=8))
    assert (t.summary()["leaves"], t.summary()["spines"]) == (2, 1)
    g = t.graph
    up = [d for a, b, d in g.edges(data=True) if {g.nodes[a]["kind"], g.nodes[b]["kind"]} == {"leaf", "spine"}]
    assert len(up) == 2 and all(d["cables"] == 32 for d in up)
    assert all(d["bytes_per_s"] == pytest.approx(32 * t.nic_cap) for d in up)


def test_torus_shape_is_the_factorisation_with_the_smallest_longest_to_shortest_ratio():
    """Most cubic 3-D torus of n chips (x <= y <= z, x·y·z = n): the smallest z/x over every
    factorisation, found here by brute force; 1008 chips: 7x12x12 (12/7), not 8x9x14 (14/8)."""
    assert torus_shape(1008) == (7, 12, 12)
    for n in (12, 24, 64, 96, 128, 360, 512, 1000, 3168, 3960, 4096):
        x, y, z = torus_shape(n)
        assert x <= y <= z and x * y * z == n
        best = min(c / a for a in range(1, n + 1) if n % a == 0
                   for b in range(a, n // a + 1) if (n // a) % b == 0
                   for c in [n // (a * b)] if c >= b)
        assert z / x == pytest.approx(best), n


def test_a_group_across_leaves_of_one_pod_does_not_cross_the_core():
    """DGX B200 SuperPOD at 16 SUs: pods of 4 SUs (32 leaves). Nodes 0 and 32 (SUs 0 and 1, same
    rail) sit on different leaves of the same pod: their traffic turns at a spine, never
    reaching the core; nodes 0 and 128 (pods 0 and 1) do cross it."""
    c = load_cluster("dgx-b200", nodes=512)
    assert network_time(c, 2, 32 * 8, "ring")[2] == ("nic", "leaf", "spine")
    assert place_group(c, 2, 32 * 8).crosses == ("nic", "leaf", "spine")
    assert network_time(c, 2, 128 * 8, "ring")[2] == ("nic", "leaf", "spine", "core")
    # the same for an all-to-all (EP) between them
    assert network_time(c, 2, 32 * 8, "a2a")[2] == ("nic", "leaf", "spine")
    assert network_time(c, 2, 128 * 8, "a2a")[2] == ("nic", "leaf", "spine", "core")


def test_a_ring_on_a_three_device_mesh_uses_its_share_of_the_peer_links():
    """Fully connected scale-up (one link per peer, ROCM_MI300): a ring over k members uses k − 1
    of a device's size − 1 peer links. On a 3-device mesh a 2-member ring gets 1/2 of the
    device's bandwidth and a 3-member ring all of it; on MI300X's 8, 2 members get 1/7."""
    from hwmodels.topology import place_group
    mi = load_cluster("mi300x", nodes=1)
    three = replace(mi, name="mi300x-3", devices_per_node=3, tiers=(replace(mi.tiers[0], size=3),) + mi.tiers[1:])
    assert place_group(three, 2, 1).intra_fraction == pytest.approx(1 / 2)
    assert place_group(three, 3, 1).intra_fraction == pytest.approx(1.0)
    assert place_group(mi, 2, 1).intra_fraction == pytest.approx(1 / 7)


def test_a_scattered_two_node_group_still_crosses_the_network():
    """Scattered placement hands the job its nodes in an order unrelated to the fabric (here
    nodes 2 and 0 for the first 16-rank group on 4 DGX H100s): the group still spans two nodes,
    so its ring crosses the NICs, at the packed group's per-byte cost inside one SU (one leaf per
    rail, SP_H100_NF)."""
    c = load_cluster("dgx-h100", nodes=4)
    packed = network_time(c, 16, 1, "ring")
    scattered = network_time(c, 16, 1, "ring", "scattered")
    assert packed[0] > 0 and packed[2] == ("nic",)
    assert scattered[0] == pytest.approx(packed[0]) and scattered[1:] == packed[1:]


def test_nvlink_sharp_starts_with_nvlink_4():
    """NVLink SHARP (in-switch reductions, NCCL's NVLS algorithm) needs third-generation
    NVSwitch with NVLink 4 (H100; NVIDIA Hopper architecture whitepaper): a DGX H100 node has it,
    a DGX A100 (NVLink 3) does not, nor does a node without NVSwitch."""
    assert build_topology(load_cluster("dgx-h100")).nvls
    assert build_topology(load_cluster("dgx-b200")).nvls
    assert not build_topology(load_cluster("dgx-a100")).nvls
    assert not build_topology(load_cluster("mi300x")).nvls
