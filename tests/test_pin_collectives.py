"""Pins of the collective cost model (`hwmodels.collectives`) against NCCL's tuner
(src/graph/tuning.cc): its latency formulas and hwLat/baseLat constants, written out here."""
import math

import pytest

from hwmodels.clusters import load_cluster
from hwmodels.collectives import collective_cost, collective_s
from hwmodels.errors import InputError

US = 1e-6
# tuning.cc baseLat[Tree] and hwLat[NET][Tree] (µs) for LL / LL128 / Simple
TREE_BASE = {"LL": 6.8, "LL128": 14.0, "Simple": 8.4}
NET_TREE = {"LL": 5.0, "LL128": 8.5, "Simple": 14.0}
NET_RING_LL128 = 4.0


def _tree_latency(nodes, proto):
    c = load_cluster("dgx-h100", nodes=nodes)
    return c, collective_cost(c, "all_reduce", 8 * nodes, 1, 4096, algorithm="tree", protocol=proto).latency_s


@pytest.mark.parametrize("proto", ["LL", "LL128", "Simple"])
def test_tree_allreduce_latency_doubles_each_inter_node_level(proto):
    """NCCL: tree latency = baseLat + 2·((ppn − 1)·intraLat + log2(nNodes)·interLat): the tree is
    traversed up (reduce) and down (broadcast), so every doubling of the node count adds two
    network steps. dgx-h100's IB tier latency (4 µs) equals NCCL's NET ring LL128 step, so the
    network steps are NCCL's own constants."""
    c, _ = _tree_latency(2, proto)
    assert c.tiers[-1].latency_s == pytest.approx(NET_RING_LL128 * US)
    lat = {m: _tree_latency(m, proto)[1] for m in (2, 4, 8, 16)}
    for m in (2, 4, 8):
        assert lat[2 * m] - lat[m] == pytest.approx(2 * NET_TREE[proto] * US, rel=1e-6)


def test_128_rank_small_allreduce_is_at_least_nccl_tree_latency():
    """A 4 KiB all-reduce on 16 DGX H100 nodes is latency-bound; NCCL's cheapest algorithm there
    is the LL tree, whose latency alone is ≥ baseLat + 2·log2(16)·hwLat[NET][Tree][LL]
    = 6.8 + 40 = 46.8 µs (the intra-node chain adds more). NCCL's model gives ≈ 56 µs."""
    c = load_cluster("dgx-h100", nodes=16)
    floor = (TREE_BASE["LL"] + 2 * math.log2(16) * NET_TREE["LL"]) * US
    t = collective_s(c, "all_reduce", 128, 1, 4096)
    assert floor <= t <= 1.25 * floor
    cost = collective_cost(c, "all_reduce", 128, 1, 4096)
    assert (cost.algorithm, cost.protocol) == ("tree", "LL")
    assert cost.time_s == pytest.approx(t)


# ---- NCCL tuning.cc constants on a tier without a measured table (MI300X Infinity Fabric) -------
# baseLat[Ring] and hwLat[NVLINK][Ring] (µs) per protocol; MI300X's tier latency (1.9 µs) is the
# NVLINK LL128 ring step, so the steps are NCCL's own constants.
RING_BASE = {"LL": 6.6, "LL128": 14.0, "Simple": 8.4}
NVLINK_RING = {"LL": 0.6, "LL128": 1.9, "Simple": 3.4}
PROTO_BW = {"LL": 0.25, "LL128": 0.92, "Simple": 1.0}


@pytest.mark.parametrize("proto", ["LL", "LL128", "Simple"])
def test_default_ring_line_is_nccls_latency_and_protocol_bandwidth(proto):
    """8-GPU ring all-reduce: latency = baseLat + 2(n-1)·hwLat; per byte 2(n-1)/n over the bus
    bandwidth (MI300X 448 GB/s x 0.70 measured-peak efficiency, RCCL 312.9 GB/s busbw, STAS_NET)
    times the protocol's share (LL 1/4, LL128 0.92, Simple 1: tuning.cc)."""
    from hwmodels.collectives import candidates
    c = load_cluster("mi300x")
    lines = {(ln.algorithm, ln.protocol): ln for ln in candidates(c, "all_reduce", 8, 1)}
    ring = lines[("ring", proto)]
    assert ring.latency_s == pytest.approx((RING_BASE[proto] + 14 * NVLINK_RING[proto]) * US, rel=1e-9)
    assert ring.s_per_byte == pytest.approx(1.75 / (448e9 * 0.70 * PROTO_BW[proto]), rel=1e-9)
    # the single-node tree is a chain: ~2S through every GPU, 2(n-1) steps
    tree = lines[("tree", proto)]
    assert tree.latency_s == pytest.approx(ring.latency_s, rel=1e-9)
    assert tree.s_per_byte == pytest.approx(2 / (448e9 * 0.70 * PROTO_BW[proto]), rel=1e-9)


def test_mi300x_large_all_reduce_matches_the_measured_busbw():
    """RCCL all-reduce on 8x MI300X: 312.9 GB/s bus bandwidth at large sizes (STAS_NET)."""
    cost = collective_cost(load_cluster("mi300x"), "all_reduce", 8, 1, 2 ** 30)
    assert cost.busbw_bytes_per_s == pytest.approx(312.9e9, rel=0.02)
    assert (cost.algorithm, cost.protocol) == ("ring", "Simple")


def test_all_gather_uses_the_single_node_ll_share():
    """tuning.cc: LL runs at 1/3 of busBw for single-node collectives other than all-reduce."""
    from hwmodels.collectives import candidates
    c = load_cluster("mi300x")
    lines = {(ln.algorithm, ln.protocol): ln for ln in candidates(c, "all_gather", 8, 1)}
    assert lines[("ring", "LL")].s_per_byte == pytest.approx(0.875 / (448e9 * 0.70 / 3), rel=1e-9)
    assert lines[("ring", "LL")].latency_s == pytest.approx((6.6 + 7 * 0.6) * US, rel=1e-9)
    assert ("tree", "LL") not in lines  # NCCL's tree is an all-reduce algorithm


def test_ll128_needs_nvlink():
    """tuning.cc disables LL128 over PCIe: a PCIe A100 server offers only LL and Simple."""
    from hwmodels.collectives import candidates
    c = load_cluster("pcie-a100")
    assert {ln.protocol for ln in candidates(c, "all_reduce", 8, 1)} == {"LL", "Simple"}
    with pytest.raises(Exception, match="protocol 'LL128' is not available"):
        collective_cost(c, "all_reduce", 8, 1, 2 ** 20, protocol="LL128")


def test_nvls_from_five_gpus_on_hopper_and_six_on_blackwell():
    """NCCL picks NVLS above 4 GPUs on 8x H200 and from 6 GPUs on 8x B200 (interconnects.csv)."""
    from hwmodels.collectives import candidates, nvls_min_ranks
    assert nvls_min_ranks(load_cluster("dgx-h100")) == 5 and nvls_min_ranks(load_cluster("dgx-b200")) == 6
    assert nvls_min_ranks(load_cluster("dgx-a100")) is None
    b = load_cluster("dgx-b200")
    assert "nvls" in {ln.algorithm for ln in candidates(b, "all_reduce", 6, 1)}
    assert "nvls" not in {ln.algorithm for ln in candidates(b, "all_reduce", 5, 1)}


def test_nvls_beats_ring_by_the_measured_h200_gain():
    """8x H200 all-reduce: NVLS 480.0 vs ring 367.2 GB/s busbw (interconnects.csv): a 1.31x gain."""
    c = load_cluster("dgx-h200")
    nvls = collective_cost(c, "all_reduce", 8, 1, 2 ** 30)
    ring = collective_cost(c, "all_reduce", 8, 1, 2 ** 30, algorithm="ring")
    assert nvls.algorithm == "nvls"
    assert nvls.busbw_bytes_per_s / ring.busbw_bytes_per_s == pytest.approx(480.0 / 367.2, rel=0.02)


# ---- TPU ICI torus (scaling-book: 1 µs per hop, bidirectional rings on wrapped axes) ----------
def test_tpu_v5p_all_reduce_over_a_wrapped_4x4x4_cube():
    """64 chips: a bidirectional ring on each of the 3 wrapped axes at once, 6 links of 100 GB/s
    per chip (600 GB/s ICI), 80% efficiency; 2·(4-1) hops per axis of 1 µs."""
    from hwmodels.collectives import candidates
    c = load_cluster("tpu-v5p", nodes=16)
    (line,) = candidates(c, "all_reduce", 64, 1)
    assert line.latency_s == pytest.approx(3 * 2 * 3 * US, rel=1e-9)
    assert line.s_per_byte == pytest.approx((2 * 63 / 64) / (3 * 2 * 100e9 * 0.8), rel=1e-9)
    (x,) = candidates(c, "all_reduce", 4, 1)  # one wrapped axis
    assert x.latency_s == pytest.approx(6 * US) and x.s_per_byte == pytest.approx(1.5 / (2 * 100e9 * 0.8))
    (p2p,) = candidates(c, "send_recv", 2, 1)  # neighbours: one hop, one link
    assert p2p.latency_s == pytest.approx(1 * US) and p2p.s_per_byte == pytest.approx(1 / (100e9 * 0.8))
    (ag,) = candidates(c, "all_gather", 4, 1)
    assert ag.latency_s == pytest.approx(3 * US)


# ---- the cost record and its errors -------------------------------------------------------------
def test_cost_record_splits_latency_and_bandwidth_and_lists_candidates():
    c = load_cluster("mi300x")
    cost = collective_cost(c, "all_reduce", 8, 1, 2 ** 30)
    assert cost.time_s == pytest.approx(cost.latency_s + cost.bandwidth_s, rel=1e-12)
    assert cost.latency_s == pytest.approx((8.4 + 14 * 3.4) * US)
    assert cost.algbw_bytes_per_s == pytest.approx(2 ** 30 / cost.time_s)
    assert cost.busbw_bytes_per_s == pytest.approx(cost.algbw_bytes_per_s * 1.75)
    assert min(t for _, _, t in cost.candidates) == cost.time_s and len(cost.candidates) == 6
    d = cost.to_dict()
    assert d["size_bytes"] == 2 ** 30 and d["calibrated_from"] == "" and d["members_per_node"] == 8
    assert collective_cost(c, "all_reduce", 8, 1, 0).time_s == 0.0
    assert collective_cost(c, "all_reduce", 1, 1, 2 ** 20).algorithm == "none"
    assert collective_s(c, "all_reduce", 1, 1, 2 ** 20) == 0.0 and collective_s(c, "all_reduce", 8, 1, 0) == 0.0


@pytest.mark.parametrize("kw,fragment", [
    (dict(op="gather"), "unknown collective"), (dict(nbytes=-1), "finite number"),
    (dict(nbytes=float("inf")), "finite number"), (dict(placement="random"), "placement"),
    (dict(op="send_recv"), "between 2 ranks"), (dict(algorithm="butterfly"), "not available"),
    (dict(algorithm="tree", protocol="LL129"), "protocol 'LL129'")])
def test_bad_collective_requests_are_one_line_errors(kw, fragment):
    from hwmodels.errors import InputError
    args = dict(op="all_reduce", nbytes=2 ** 20)
    args.update(kw)
    op, nbytes = args.pop("op"), args.pop("nbytes")
    with pytest.raises(InputError, match=fragment) as e:
        collective_cost(load_cluster("dgx-h100"), op, 8, 1, nbytes, **args)
    assert "\n" not in str(e.value)


def test_hierarchical_all_reduce_is_forced_only():
    """NCCL has no sequential hierarchical all-reduce: the tuner never picks it, forcing works."""
    c = load_cluster("dgx-h100", nodes=4)
    auto = collective_cost(c, "all_reduce", 32, 1, 2 ** 28)
    hier = collective_cost(c, "all_reduce", 32, 1, 2 ** 28, algorithm="hierarchical")
    assert auto.algorithm != "hierarchical" and hier.algorithm == "hierarchical"
    assert ("hierarchical", hier.protocol, hier.time_s) in hier.candidates


@pytest.mark.parametrize("size,stride,ppn,expected_us", [(16, 1, 8, 6.6 + 2 * (7 * 0.6 + 5.0)),
                                                         (8, 2, 4, 6.6 + 2 * (3 * 0.6 + 5.0)),
                                                         (2, 8, 1, 6.8 + 2 * 5.0)])
def test_tree_latency_counts_the_intra_node_chain(size, stride, ppn, expected_us):
    """tuning.cc: tree latency = baseLat + 2·((ppn − 1)·intraLat + log2(nNodes)·interLat), LL on
    2 MI300X nodes (intra step hwLat[NVLINK] 0.6 µs; NET tree LL 5.0 µs, the IB tier's 4 µs being
    NCCL's NET LL128 ring step); one rank per node has no chain and NCCL's tree base 6.8 µs."""
    c = load_cluster("mi300x", nodes=2)
    cost = collective_cost(c, "all_reduce", size, stride, 4096, algorithm="tree", protocol="LL")
    assert cost.members_per_node == ppn and cost.nodes == 2
    assert cost.latency_s == pytest.approx(expected_us * US, rel=1e-9)


def test_cross_node_ring_limited_by_the_scale_up_link_keeps_the_in_node_busbw():
    """MI300X nodes (Infinity Fabric 448 GB/s x 0.70) with 8 x 400G NICs: a 16-rank ring over 2
    nodes is limited by the in-node links, so its bus bandwidth is the in-node 313.6 GB/s."""
    c = load_cluster("mi300x", nodes=2)
    two = collective_cost(c, "all_reduce", 16, 1, 2 ** 32, algorithm="ring", protocol="Simple")
    one = collective_cost(c, "all_reduce", 8, 1, 2 ** 32, algorithm="ring", protocol="Simple")
    assert two.bottleneck == "scale-up"
    assert two.bandwidth_s == pytest.approx(2 ** 32 * (2 * 15 / 16) / (448e9 * 0.70), rel=1e-9)
    assert two.busbw_bytes_per_s == pytest.approx(one.busbw_bytes_per_s, rel=0.01)


@pytest.mark.parametrize("op", ["all_reduce", "all_gather", "reduce_scatter"])
@pytest.mark.parametrize("proto", ["LL", "Simple"])
def test_hierarchical_phases_run_one_after_another(op, proto):
    """Hierarchical (forced): reduce-scatter inside the node, the collective across nodes, all-gather
    inside the node (all-gather and reduce-scatter: the one intra phase they need), sequential, so
    the latencies add: those of the in-node ring phases plus the network steps of a one-rank-per-
    node group (its own latency less the base, which the intra phases already pay)."""
    c = load_cluster("dgx-h100", nodes=4)
    hier = collective_cost(c, op, 32, 1, 2 ** 28, algorithm="hierarchical", protocol=proto)
    net = collective_cost(c, op, 4, 8, 2 ** 28, algorithm="hierarchical", protocol=proto)
    rs = collective_cost(c, "reduce_scatter", 8, 1, 2 ** 28, algorithm="ring", protocol=proto)
    ag = collective_cost(c, "all_gather", 8, 1, 2 ** 28, algorithm="ring", protocol=proto)
    intra = {"all_reduce": rs.latency_s + ag.latency_s, "all_gather": ag.latency_s,
             "reduce_scatter": rs.latency_s}[op]
    assert hier.latency_s == pytest.approx(intra + net.latency_s - RING_BASE[proto] * US, rel=1e-9)
    assert hier.time_s > hier.latency_s


def test_dp_ring_of_one_gpu_per_node_runs_at_the_nic():
    """One rank per node (stride 8): nothing crosses NVLink; the ring runs at the NIC's 400 Gb/s
    times the measured IB efficiency (48 of 50 GB/s, GTC24 S62129)."""
    c = load_cluster("dgx-h100", nodes=4)
    cost = collective_cost(c, "all_reduce", 4, 8, 2 ** 30, algorithm="ring", protocol="Simple")
    assert cost.bottleneck == "nic-out"
    assert cost.bandwidth_s == pytest.approx(2 ** 30 * 1.5 / (50e9 * 0.96), rel=1e-9)


def _l40s_table_host():
    """An 8-GPU L40S server calibrated by the device's measured NCCL table (the host the table was
    measured on; the l40s-server preset itself takes the PCIe ring model, clusters.yaml)."""
    from dataclasses import replace
    return replace(load_cluster("l40s-server", nodes=1), scale_up_table=True)


@pytest.mark.parametrize("n", [3, 6])
def test_unmeasured_pcie_group_latency_is_interpolated_in_log2_of_the_size(n):
    """L40S (PCIe) tables measure 2, 4 and 8 GPUs; at 3 or 6 the fitted latency is linear in log2(n)
    between the neighbours (docs/modeling.md, per-size calibration)."""
    import math as m
    from hwmodels.collectives import candidates
    c = _l40s_table_host()
    lo, hi = (2, 4) if n == 3 else (4, 8)
    w = (m.log2(n) - m.log2(lo)) / (m.log2(hi) - m.log2(lo))

    def lat(k):
        return {ln.protocol: ln.latency_s for ln in candidates(c, "all_reduce", k, 1) if ln.algorithm == "ring"}
    a, b, x = lat(lo), lat(hi), lat(n)
    assert set(x) == set(a) & set(b) and x
    for p in x:
        assert x[p] == pytest.approx((1 - w) * a[p] + w * b[p], rel=1e-9)


def test_no_nvls_without_an_nvswitch():
    """NVLS is NVSwitch in-network reduction: GPUs on a PCIe tier have none, whatever their
    NVLink generation (H100 PCIe with its pair bridges, or NVLink-4 parts without the switch)."""
    from dataclasses import replace
    from hwmodels.collectives import candidates, nvls_min_ranks
    from hwmodels.devices import get_device
    for dev in ("h100-pcie", "h100-sxm"):
        c = replace(load_cluster("pcie-a100"), device=get_device(dev))
        assert nvls_min_ranks(c) is None, dev
        assert "nvls" not in {ln.algorithm for ln in candidates(c, "all_reduce", 8, 1)}, dev


def test_fitted_protocols_keep_nccls_per_byte_order_on_every_calibrated_tier():
    """NCCL's protocols trade latency for bandwidth (src/device/prims_ll.h: LL sends 8-byte
    flag+data words, half the link; prims_ll128.h: 120 of every 128 bytes; Simple: the full
    link): per byte, LL is never cheaper than LL128 and LL128 never cheaper than Simple. The
    lines fitted to each device's measured NCCL table keep that order at every group size (2 to
    2^20 ranks), so no small-message fit undercuts Simple on large messages."""
    from hwmodels.clusters import cluster_names
    from hwmodels.collectives import ring_factor, tier_calibration
    checked = 0
    for name in cluster_names():
        cal = tier_calibration(load_cluster(name))
        if cal is None:
            continue
        for op, by_size in cal.fits.items():
            for fits in by_size.values():
                algo = {f.protocol: f for f in fits if f.algorithm in ("ring", "pairwise")}
                for n in (2, 1 << 20):
                    f = ring_factor(op, n)
                    per_byte = {p: x.u * f + x.v for p, x in algo.items()}
                    for slow, fast in (("LL", "LL128"), ("LL128", "Simple")):
                        if slow in per_byte and fast in per_byte:
                            assert per_byte[slow] >= per_byte[fast] * (1 - 1e-12), (name, op, n, slow)
                            checked += 1
    assert checked >= 100  # 9 calibrated systems x 4 collectives x protocol pairs x sizes


def test_multi_node_large_all_reduce_on_hopper_uses_nvls_tree():
    """NCCL 2.18+ on H100 NVSwitch nodes with InfiniBand: a large all-reduce across nodes runs
    NVLSTree (NVLink SHARP inside the node, a tree across nodes), faster than the plain ring or
    tree; a small one stays on the latency-bound tree. 16 DGX H100 nodes, 128 ranks."""
    c = load_cluster("dgx-h100", nodes=16)
    big = collective_cost(c, "all_reduce", 128, 1, 2 ** 30)
    assert big.algorithm == "nvls_tree"
    for algo in ("ring", "tree"):
        assert collective_cost(c, "all_reduce", 128, 1, 2 ** 30, algorithm=algo).time_s > big.time_s
    assert collective_cost(c, "all_reduce", 128, 1, 2 ** 20).algorithm == "tree"


# ---- the fits reproduce the measured NCCL tables -------------------------------------------------
def _calibrated_clusters():
    from hwmodels.clusters import cluster_names
    from hwmodels.collectives import tier_calibration
    return [n for n in cluster_names() if tier_calibration(load_cluster(n)) is not None]


@pytest.mark.parametrize("name", _calibrated_clusters())
def test_scale_up_collectives_reproduce_the_measured_nccl_table(name):
    """Every point of the device's measured NCCL table (aiconfigurator-core's nccl-tests sweep:
    group size, message size, seconds) for all-reduce, all-gather, reduce-scatter and all-to-all
    inside one node: the modelled time is within 7% at the median, 20% at the 90th percentile
    and 80% at worst (kernel-level calibration, docs/modeling.md §2.8)."""
    import numpy as np

    from hwmodels import profiles
    from hwmodels.collectives import tier_calibration
    c = load_cluster(name)
    c1 = c.with_nodes(1) if c.num_nodes > 1 else c
    table = profiles.load_nccl_table(tier_calibration(c).system)
    for op in ("all_reduce", "all_gather", "reduce_scatter", "all_to_all"):
        err = np.abs([collective_cost(c1, op, int(n), 1, s).time_s / t - 1
                      for n, s, t in table.points(op) if n <= c1.devices_per_node])
        assert err.size >= 60, (name, op)
        assert np.median(err) <= 0.07 and np.percentile(err, 90) <= 0.20 and err.max() <= 0.80, (name, op)


def test_a_one_rank_group_or_an_empty_message_costs_nothing():
    c = load_cluster("dgx-h100", nodes=2)
    for size, nbytes in ((1, 2 ** 20), (8, 0)):
        r = collective_cost(c, "all_reduce", size, 1, nbytes)
        assert (r.time_s, r.latency_s, r.bandwidth_s, r.algbw_bytes_per_s, r.busbw_bytes_per_s) == (0.0,) * 5
        assert r.algorithm == "none"


def test_all_to_all_across_nodes_adds_one_network_step_per_other_node():
    """NCCL all-to-all is n−1 grouped send/recv (no tuner constant): its latency is the intra-node
    pairwise latency of the k local peers plus one NET step (hwLat[NET][Ring][proto], scaled so
    that LL128 equals the tier's latency) per other node. With a 6 µs network the LL step is
    6 · 2.7 / 4.0 = 4.05 µs: 2 nodes add 4.05 µs, 4 nodes 12.15 µs to the 8-GPU latency."""
    from dataclasses import replace
    base = load_cluster("dgx-h100", nodes=4)
    c = replace(base, tiers=base.tiers[:-1] + (replace(base.tiers[-1], latency_s=6e-6),))
    one = collective_cost(c, "all_to_all", 8, 1, 1, protocol="LL").latency_s
    for nodes, extra in ((2, 4.05), (4, 12.15)):
        lat = collective_cost(c, "all_to_all", 8 * nodes, 1, 1, protocol="LL").latency_s
        assert lat - one == pytest.approx(extra * US, rel=1e-9)


def test_tree_with_one_gpu_per_node_is_base_plus_two_network_steps_per_level():
    """tuning.cc: tree latency = baseLat + 2·((ppn − 1)·intraLat + log2(nNodes)·interLat); with
    one GPU per node (16 ranks 8 apart on 16 DGX H100) no intra-node term: baseLat[Tree] +
    2·4·hwLat[NET][Tree] for each protocol."""
    c = load_cluster("dgx-h100", nodes=16)
    for proto in ("LL", "LL128", "Simple"):
        lat = collective_cost(c, "all_reduce", 16, 8, 4096, algorithm="tree", protocol=proto).latency_s
        assert lat == pytest.approx((TREE_BASE[proto] + 2 * 4 * NET_TREE[proto]) * US, rel=1e-9)


def test_nvls_tree_latency_adds_two_nvlstree_network_steps_per_tree_level():
    """tuning.cc NVLSTree: NVLS inside the node, the tree across nodes at hwLat[NET][NVLSTree]
    = 20.9 µs per step, two steps (up and down) per tree level: 16 nodes vs 2 nodes is
    3 levels more, 2 · 3 · 20.9 = 125.4 µs."""
    lat = {m: collective_cost(load_cluster("dgx-h100", nodes=m), "all_reduce", 8 * m, 1, 1,
                              algorithm="nvls_tree").latency_s for m in (2, 16)}
    assert lat[16] - lat[2] == pytest.approx(125.4 * US, rel=1e-9)


@pytest.mark.parametrize("cluster, gain", [("gb200-nvl72", 838.0 / 682.2), ("h100-without-table", 480.0 / 367.2)])
def test_nvls_without_measured_points_takes_the_measured_gain_over_the_ring(cluster, gain):
    """Where a device's NCCL table has no NVLS points (GB200's; an H100 node without a table),
    NVLS all-reduce at 8 GPUs moves bytes faster than the Simple ring by the gain measured on
    the same NVLink generation: 480.0 vs 367.2 GB/s on 8x H200 (NVLink 4), 838.0 vs 682.2 GB/s
    on 8x B200 (NVLink 5) (interconnects.csv measured rows)."""
    from dataclasses import replace
    if cluster == "h100-without-table":
        h = load_cluster("dgx-h100")
        c = replace(h, device=replace(h.device, kernel_profile=""))
    else:
        c = load_cluster(cluster)
    nvls = collective_cost(c, "all_reduce", 8, 1, 2 ** 30, algorithm="nvls")
    ring = collective_cost(c, "all_reduce", 8, 1, 2 ** 30, algorithm="ring", protocol="Simple")
    assert ring.bandwidth_s / nvls.bandwidth_s == pytest.approx(gain, rel=1e-9)
    if cluster == "h100-without-table":  # tuning.cc: baseLat[Ring][Simple] 8.4 + hwLat[NVLINK][NVLS] 25 µs
        assert nvls.latency_s == pytest.approx((8.4 + 25.0) * US, rel=1e-9)


def test_a_group_spanning_two_scale_up_tiers_runs_at_the_slower_one():
    """Frontier node (OLCF user guide): the two GCDs of an MI250X package are joined by 200 GB/s
    of Infinity Fabric, packages by 50 GB/s. A ring over the pair runs on the 200 GB/s links,
    one over 4 or 8 GCDs crosses the 50 GB/s ones: a quarter of the bus bandwidth (1 GiB)."""
    fr = load_cluster("frontier")
    bw = {n: collective_cost(fr, "all_reduce", n, 1, 2 ** 30).busbw_bytes_per_s for n in (2, 4, 8)}
    assert bw[4] / bw[2] == pytest.approx(50 / 200, rel=0.01)
    assert bw[8] / bw[2] == pytest.approx(50 / 200, rel=0.01)


def test_hierarchical_all_reduce_is_a_reduce_scatter_then_an_all_gather():
    """Rabenseifner (Thakur, Rabenseifner & Gropp 2005): all-reduce = reduce-scatter followed by
    all-gather. The forced hierarchical all-reduce (reduce-scatter in the node, all-reduce of S/k
    across nodes, all-gather in the node) therefore takes exactly the hierarchical reduce-scatter
    plus the hierarchical all-gather of the same S, latency and bytes alike (2 and 4 DGX H100)."""
    for nodes in (2, 4):
        c = load_cluster("dgx-h100", nodes=nodes)
        for proto in ("LL128", "Simple"):
            t = {op: collective_cost(c, op, 8 * nodes, 1, 2 ** 28, algorithm="hierarchical", protocol=proto)
                 for op in ("all_reduce", "reduce_scatter", "all_gather")}
            for part in ("latency_s", "bandwidth_s"):
                assert getattr(t["all_reduce"], part) == pytest.approx(
                    getattr(t["reduce_scatter"], part) + getattr(t["all_gather"], part), rel=1e-9)


def test_beyond_the_measured_group_sizes_each_ring_step_adds_nccls_pci_step():
    """PCIe servers are fitted per measured group size (L40S: 2, 4, 8 GPUs). A 10-GPU L40S
    server (e.g. Supermicro SYS-421GE-TNRT) lies beyond the table: its ring all-reduce keeps the
    8-GPU line and adds hwLat[PCI][Ring][Simple] = 5.7 µs per extra ring step:
    2·(10 − 1) − 2·(8 − 1) = 4 steps, 22.8 µs, for every protocol."""
    from dataclasses import replace
    eight = _l40s_table_host()
    ten = replace(eight, name="l40s-10", devices_per_node=10, tiers=(replace(eight.tiers[0], size=10),) + eight.tiers[1:])
    for proto in ("LL", "LL128", "Simple"):
        lat = [collective_cost(c, "all_reduce", n, 1, 8, algorithm="ring", protocol=proto).latency_s
               for c, n in ((eight, 8), (ten, 10))]
        assert lat[1] - lat[0] == pytest.approx(22.8 * US, rel=1e-9), proto
    # 16 GPUs: 2·15 − 2·7 = 16 extra steps, 91.2 µs
    sixteen = replace(eight, name="l40s-16", devices_per_node=16,
                      tiers=(replace(eight.tiers[0], size=16),) + eight.tiers[1:])
    lat16 = collective_cost(sixteen, "all_reduce", 16, 1, 8, algorithm="ring", protocol="Simple").latency_s
    lat8 = collective_cost(eight, "all_reduce", 8, 1, 8, algorithm="ring", protocol="Simple").latency_s
    assert lat16 - lat8 == pytest.approx(91.2 * US, rel=1e-9)


def test_ring_broadcast_across_nodes_takes_one_network_step_per_hop():
    """tuning.cc: a ring broadcast has nRanks − 1 steps. With one GPU per node (4 DGX H100
    nodes, ranks 8 apart) every step is a network step, so its latency is baseLat[Ring] +
    3·hwLat[NET][Ring] (dgx-h100's IB latency equals NCCL's LL128 NET step, so the constants
    apply as they are): LL 6.6 + 3·2.7, LL128 14.0 + 3·4.0, Simple 8.4 + 3·14.0 µs."""
    c = load_cluster("dgx-h100", nodes=4)
    for proto, us in (("LL", 6.6 + 3 * 2.7), ("LL128", 14.0 + 3 * 4.0), ("Simple", 8.4 + 3 * 14.0)):
        lat = collective_cost(c, "broadcast", 4, 8, 8, algorithm="ring", protocol=proto).latency_s
        assert lat == pytest.approx(us * US, rel=1e-9), proto


def test_the_tuner_never_picks_the_sequential_hierarchical_algorithm():
    """NCCL has no sequential hierarchical all-reduce; the simulator offers it only when forced.
    With one GPU per node or eight, for any size, the tuner's pick is one of NCCL's algorithms."""
    for stride, n in ((8, 4), (1, 32)):
        c = load_cluster("dgx-h100", nodes=4)
        for op in ("all_reduce", "all_gather", "reduce_scatter"):
            for nbytes in (2 ** 10, 2 ** 20, 2 ** 30):
                assert collective_cost(c, op, n, stride, nbytes).algorithm != "hierarchical"


def test_multi_node_ring_latency_splits_its_steps_between_nvlink_and_the_network():
    """tuning.cc: ring latency = baseLat + (nsteps − nInterSteps)·intraLat + nInterSteps·interLat.
    A 16-rank all-reduce ring over 2 DGX H100 nodes has 2·15 = 30 steps, 2·(2 − 1) = 2 of them
    across the network (LL128 NET step = dgx-h100's 4 µs IB latency), 28 over NVLink. The NVLink
    step is the fitted one that separates the 8- and 4-GPU rings (14 − 6 = 8 steps)."""
    one = load_cluster("dgx-h100", nodes=1)
    lat1 = {n: collective_cost(one, "all_reduce", n, 1, 8, algorithm="ring", protocol="LL128").latency_s for n in (4, 8)}
    step_in = (lat1[8] - lat1[4]) / 8
    two = load_cluster("dgx-h100", nodes=2)
    lat = collective_cost(two, "all_reduce", 16, 1, 8, algorithm="ring", protocol="LL128").latency_s
    assert lat == pytest.approx(lat1[8] + 14 * step_in + 2 * NET_RING_LL128 * US, rel=1e-9)


def test_an_unknown_protocol_with_auto_algorithm_names_the_protocol_not_the_algorithm():
    """`--algo auto --proto X` where no line runs protocol X: the error is about the protocol (the
    algorithm 'auto' always exists), also for an 'auto' string built at run time (as a command
    line gives it: not the interned literal)."""
    from hwmodels.collectives import collective_cost
    cl = load_cluster("dgx-h100")
    auto = "".join(["au", "to"])
    with pytest.raises(InputError, match="protocol 'XYZ' is not available") as e:
        collective_cost(cl, "all_reduce", 8, 1, 2 ** 20, algorithm=auto, protocol="XYZ")
    assert "algorithm 'auto' is not available" not in str(e.value)


def test_torus_rings_pay_the_slice_tiers_hop_latency():
    """TPU v5p 4x4x4 slice: a dimension-ordered ring all-reduce crosses 2·(4 − 1) hops on each
    of the 3 axes (reduce-scatter then all-gather), 18 hops of the ICI slice tier's latency
    (scaling-book's 1 µs per hop), an all-gather 9, a send/recv to a neighbour 1. The slice tier
    (the ICI links the ring runs on) sets that latency: a slower host tier changes nothing."""
    from dataclasses import replace
    tpu = load_cluster("tpu-v5p")
    host, slice_ = tpu.tiers
    slow_slice = replace(tpu, name="v5p-slow-slice", tiers=(host, replace(slice_, latency_s=3 * US)))
    slow_host = replace(tpu, name="v5p-slow-host", tiers=(replace(host, latency_s=3 * US), slice_))
    for c, hop in ((tpu, 1 * US), (slow_slice, 3 * US), (slow_host, 1 * US)):
        assert collective_cost(c, "all_reduce", 64, 1, 1024).latency_s == pytest.approx(18 * hop), c.name
        assert collective_cost(c, "all_gather", 64, 1, 1024).latency_s == pytest.approx(9 * hop), c.name
        assert collective_cost(c, "send_recv", 2, 1, 1024).latency_s == pytest.approx(hop), c.name


def test_an_op_named_in_text_costs_what_the_literal_op_costs():
    """`clusterplan collective --op all_reduce` hands the tuner the operation as text read from
    the command line (a new string object, not the interned literal): every op must cost the same
    as when the simulator names it, inside a node and across nodes, send/recv included."""
    from hwmodels.collectives import OPS, candidates
    shapes = [(load_cluster("dgx-h100", nodes=1), 8, 1), (load_cluster("dgx-h100", nodes=2), 16, 1),
              (load_cluster("dgx-h100", nodes=2), 2, 8), (load_cluster("dgx-h100", nodes=1), 2, 1),
              (load_cluster("mi300x", nodes=1), 8, 1), (load_cluster("mi300x", nodes=2), 16, 1),  # no table
              (load_cluster("tpu-v5p"), 64, 1)]  # ICI torus rings

    def costs(name_of):
        candidates.cache_clear()  # cached by op: keep the text spelling from reusing the literal's
        out = {}
        for op in OPS:
            for c, n, stride in shapes:
                if op == "send_recv" and n != 2:
                    continue
                for nbytes in (4096, 64 * 2**20):  # LL and Simple territory
                    for proto in ("auto", "LL") if c.tiers[-1].kind != "ici-torus" else ("auto",):
                        r = collective_cost(c, name_of(op), n, stride, nbytes, protocol=proto)
                        out[(op, c.name, c.num_devices, n, stride, nbytes, proto)] = (r.time_s, r.algorithm, r.protocol)
                    if (c.num_devices > 8 and n > 2 and c.tiers[-1].kind != "ici-torus"
                            and op in ("all_reduce", "all_gather", "reduce_scatter")):
                        r = collective_cost(c, name_of(op), n, stride, nbytes, algorithm="hierarchical")
                        out[(op, c.name, n, nbytes, "hierarchical")] = (r.time_s, r.latency_s)
        return out
    text = costs(lambda op: "".join(list(op)))  # as argv gives it
    assert all("".join(list(op)) is not op for op in OPS)
    assert text == costs(lambda op: op)


def test_pcie_ring_efficiency_follows_the_measured_rings_linear_in_log2_ranks():
    """Rings inside a PCIe server are CPU/memory bound (NVIDIA/nccl issue #1639: nccl-tests
    all_reduce on 8 PCIe Gen5 x16 GPUs, busbw 35 GB/s on 4 GPUs and 28 GB/s on 8 of the 64 GB/s
    link; 2 GPUs at PCIe's 24/32, GTC24 S62129). Between the measured sizes the efficiency is
    linear in log2(ranks), beyond them the edge value holds."""
    from hwmodels.collectives import pcie_ring_efficiency
    assert pcie_ring_efficiency(2) == pytest.approx(24 / 32)
    assert pcie_ring_efficiency(4) == pytest.approx(35 / 64)
    assert pcie_ring_efficiency(8) == pytest.approx(28 / 64)
    assert pcie_ring_efficiency(16) == pytest.approx(28 / 64)
    assert pcie_ring_efficiency(1) == pytest.approx(24 / 32)
    w3 = math.log2(3) - 1  # 3 GPUs: 0.585 of the way from 2 to 4 in log2
    assert pcie_ring_efficiency(3) == pytest.approx((1 - w3) * 24 / 32 + w3 * 35 / 64)
    for k in (5, 6):
        w = math.log2(k) - 2
        assert pcie_ring_efficiency(k) == pytest.approx((1 - w) * 35 / 64 + w * 28 / 64)


def test_a_pcie_ring_between_measured_sizes_interpolates_in_log2_ranks():
    """The RTX PRO 6000 server's NCCL table measures 2, 4 and 8 GPUs; a 6-GPU ring lies
    log2(6) − 2 = 0.585 of the way from 4 to 8 in log2(ranks): its latency is the linear blend
    of the two measured lines and its per-byte cost the geometric one (bus bandwidth falls by a
    constant factor per doubling of the ring), per algorithm and protocol; likewise 5 GPUs, 0.32
    of the way."""
    from hwmodels.collectives import _fits_at, tier_calibration
    cal = tier_calibration(load_cluster("rtx-pro-6000-server"))
    assert cal is not None and cal.per_size
    fits = cal.fits["all_reduce"]
    at4 = {(p.algorithm, p.protocol): p for p in fits[4]}
    at8 = {(p.algorithm, p.protocol): p for p in fits[8]}
    for n in (5, 6):  # 0.32 and 0.585 of the way
        w = math.log2(n) - 2
        at_n = {(p.algorithm, p.protocol): p for p in _fits_at(fits, n, "all_reduce")}
        assert at_n and set(at_n) == set(at4) & set(at8)
        for key, p in at_n.items():
            assert p.base_s == pytest.approx((1 - w) * at4[key].base_s + w * at8[key].base_s, rel=1e-12)
            assert p.u == pytest.approx(at4[key].u ** (1 - w) * at8[key].u ** w, rel=1e-12)


@pytest.mark.parametrize("proto,share", [("Simple", 1.0), ("LL", 0.25)])
def test_hierarchical_all_reduce_bandwidth_is_its_three_phases(proto, share):
    """Hierarchical all-reduce over 4 DGX H100 nodes (forced): reduce-scatter inside the node,
    a ring across the 4 nodes on S/8 per rail (all_reduce's 2·(4 − 1)/4 = 1.5 of it through
    each NIC at 48 of 50 GB/s, GTC24 S62129, times the protocol's share of the bus bandwidth:
    NCCL tuning.cc models LL at 1/4 of it across nodes), then all-gather inside the node: the
    per-byte times add."""
    c = load_cluster("dgx-h100", nodes=4)
    S = 2 ** 28
    hier = collective_cost(c, "all_reduce", 32, 1, S, algorithm="hierarchical", protocol=proto)
    rs = collective_cost(c, "reduce_scatter", 8, 1, S, algorithm="ring", protocol=proto)
    ag = collective_cost(c, "all_gather", 8, 1, S, algorithm="ring", protocol=proto)
    net = 1.5 * S / 8 / (50e9 * 0.96 * share)
    assert hier.bandwidth_s == pytest.approx(rs.bandwidth_s + ag.bandwidth_s + net, rel=1e-9)


# RMS of log(modelled / measured time) over each measured NCCL table's points inside one node
# (aiconfigurator-core 0.12.0, the tables the calibration is fitted to), per all-reduce,
# all-gather, reduce-scatter, all-to-all, as the shipped calibration fits them.
_FIT_RMS = {
    "dgx-a100": (0.06831, 0.086655, 0.069275, 0.060211),
    "dgx-h100": (0.040922, 0.049684, 0.05766, 0.079183),
    "dgx-h200": (0.042992, 0.053899, 0.052994, 0.18159),
    "dgx-b200": (0.073327, 0.066004, 0.065026, 0.06342),
    "gb200-nvl72": (0.077091, 0.047974, 0.04615, 0.040269),
    "dgx-b300": (0.072437, 0.099666, 0.061125, 0.052247),
    "gb300-nvl72": (0.083092, 0.05175, 0.052196, 0.035265),
    "rtx-pro-6000-server": (0.076993, 0.059613, 0.065349, 0.090365),
}


@pytest.mark.parametrize("name", sorted(_FIT_RMS))
def test_no_measured_nccl_table_is_fitted_worse_than_the_shipped_calibration(name):
    """The calibration (multi-start envelope fit of one line per protocol, non-negative least
    squares on relative error; docs/modeling.md §2.8) reproduces each measured table at least as
    closely as it does today: RMS log error per op no more than 0.05% above the figures in
    _FIT_RMS. A better fit passes (then lower the figures); a change that loses a start, a
    protocol line or the NNLS optimum makes some table's fit worse and fails here."""
    import numpy as np

    from hwmodels import profiles
    from hwmodels.collectives import tier_calibration
    c = load_cluster(name)
    c1 = c.with_nodes(1) if c.num_nodes > 1 else c
    table = profiles.load_nccl_table(tier_calibration(c).system)
    for op, floor in zip(("all_reduce", "all_gather", "reduce_scatter", "all_to_all"), _FIT_RMS[name]):
        e = np.log([collective_cost(c1, op, int(n), 1, s).time_s / t
                    for n, s, t in table.points(op) if n <= c1.devices_per_node])
        assert float(np.sqrt(np.mean(e ** 2))) <= floor * 1.0005, (name, op)


def test_a_devices_nccl_table_describes_groups_of_its_first_tier_only():
    """The measured table was taken on the device's own scale-up domain (tier_calibration): a
    user's node of two intra-node tiers (H100s in NVSwitch islands of 4, the islands joined by a
    4x slower NVSwitch tier) uses it for a group inside one island, and NCCL's tuning constants
    on the slower tier for a group spanning both, exactly as for the same node without a table."""
    from dataclasses import replace
    h = load_cluster("dgx-h100")
    t0 = h.tiers[0]
    two = replace(h, tiers=(replace(t0, name="island", size=4),
                            replace(t0, name="bridge", size=2, bytes_per_s=t0.bytes_per_s / 4), h.tiers[1]))
    bare = replace(two, device=replace(two.device, kernel_profile=None))
    for nbytes in (1e4, 1e6, 1e8):
        assert collective_s(two, "all_reduce", 8, 1, nbytes) == pytest.approx(
            collective_s(bare, "all_reduce", 8, 1, nbytes), rel=1e-12)
    assert collective_s(two, "all_reduce", 4, 1, 1e6) < 0.9 * collective_s(bare, "all_reduce", 4, 1, 1e6)
    # and the cost's label names the table only where the table priced it
    from hwmodels.collectives import collective_cost
    assert collective_cost(two, "all_reduce", 4, 1, 1e6).calibrated
    assert collective_cost(two, "all_reduce", 8, 1, 1e6).calibrated == ""


@pytest.mark.parametrize("name", ["dgx-h100", "rtx-pro-6000-server", "mi300x"])
def test_a_send_recv_inside_a_node_has_one_ring_steps_latency(name):
    """A point-to-point transfer inside one node is one hop of the protocol: the latency of a
    2-rank all-gather (ring_steps = 1, one step of the same fitted or default line; NCCL runs
    send/recv on the p2p path with each protocol's ring constants, tuning.cc), calibrated tiers
    (H100 NVSwitch, RTX PRO 6000 PCIe) and default ones (MI300X Infinity Fabric) alike."""
    from hwmodels.collectives import candidates, ring_steps
    c = load_cluster(name)
    assert ring_steps("all_gather", 2) == 1
    p2p = {ln.protocol: ln for ln in candidates(c, "send_recv", 2, 1)}
    ag = {ln.protocol: ln for ln in candidates(c, "all_gather", 2, 1) if ln.algorithm == "ring"}
    assert p2p and set(p2p) == set(ag)
    for proto, ln in p2p.items():
        assert ln.algorithm == "p2p"
        assert ln.latency_s == pytest.approx(ag[proto].latency_s, rel=1e-12)


@pytest.mark.parametrize("op", ["reduce_scatter", "all_to_all"])
def test_other_single_node_collectives_use_the_ll_third_share_too(op):
    """tuning.cc: LL runs at 1/3 of busBw for every single-node collective other than all-reduce
    (1/4 for all-reduce): reduce-scatter and all-to-all over 8 MI300X (no table: RCCL's default
    lines, Infinity Fabric at 70% of 448 GB/s) move (n - 1)/n of the buffer per rank."""
    from hwmodels.collectives import candidates
    c = load_cluster("mi300x")
    algo = "pairwise" if op == "all_to_all" else "ring"
    ll = {(ln.algorithm, ln.protocol): ln for ln in candidates(c, op, 8, 1)}[(algo, "LL")]
    assert ll.s_per_byte == pytest.approx(0.875 / (448e9 * 0.70 / 3), rel=1e-9)
    ar = {(ln.algorithm, ln.protocol): ln for ln in candidates(c, "all_reduce", 8, 1)}[("ring", "LL")]
    assert ar.s_per_byte == pytest.approx(2 * 0.875 / (448e9 * 0.70 / 4), rel=1e-9)


@pytest.mark.parametrize("n,eff", [(2, 24 / 32), (4, 35 / 64), (8, 28 / 64)])
def test_an_uncalibrated_pcie_servers_ring_runs_at_the_measured_ring_efficiency(n, eff):
    """A PCIe A100 server has no measured NCCL table: a large all-reduce over n of its GPUs
    reaches the bus bandwidth of the measured PCIe rings, link rate × 24/32 (2 GPUs, GTC24
    S62129), 35/64 (4) and 28/64 (8, NVIDIA/nccl issue #1639), not the link's 0.75."""
    c = load_cluster("pcie-a100")
    link = c.tiers[0].bytes_per_s
    cost = collective_cost(c, "all_reduce", n, 1, 2.0 ** 34)
    assert (cost.algorithm, cost.protocol) == ("ring", "Simple")
    assert cost.busbw_bytes_per_s == pytest.approx(link * eff, rel=2e-3)


@pytest.mark.parametrize("name,link", [("dgx-h100", 450e9), ("rtx-pro-6000-server", None), ("mi300x", 448e9 / 7)])
def test_a_send_recv_inside_a_node_streams_at_nccls_p2p_share_of_the_link(name, link):
    """NCCL send/recv between two GPUs of a node reaches 0.765 of the link (vidur's profiled
    send_recv: 64 MiB in 294 µs on DGX A100, 193 µs on DGX H100), times the protocol's share
    (LL 1/3 single-node, LL128 0.92, Simple 1; tuning.cc). The link is the pair's: all 450 GB/s of
    an H100's NVSwitch ports, one of the seven 64 GB/s Infinity Fabric links of an MI300X."""
    from hwmodels.collectives import candidates
    c = load_cluster(name)
    link = link or c.tiers[0].bytes_per_s
    bw = {ln.protocol: 1 / ln.s_per_byte for ln in candidates(c, "send_recv", 2, 1)}
    share = {"LL": 1 / 3, "LL128": 0.92, "Simple": 1.0}
    assert bw and all(bw[p] == pytest.approx(0.765 * share[p] * link, rel=1e-9) for p in bw)
