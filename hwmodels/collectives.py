"""Collective communication costs over a tiered cluster (α-β model).

A parallel group is `size` ranks placed `stride` devices apart in the Megatron rank order
(TP innermost). Inside a node the group uses the innermost tier that spans it; across nodes it
runs hierarchically as NCCL does: reduce-scatter inside the node, the inter-node collective on
S/k bytes over each device's own NIC (rail-optimised: k concurrent rings), all-gather inside the
node. Ring and tree formulas: Thakur, Rabenseifner & Gropp 2005; nccl-tests busbw definitions
(NVIDIA/nccl-tests doc/PERFORMANCE.md).

Effective bandwidth = tier wire rate × measured bus efficiency: where the device has a measured
NCCL table (aiconfigurator-core), the efficiency is read from it (largest 8-GPU all-reduce
busbw ÷ wire rate); otherwise the kind's default below, from measured peaks.
"""
from __future__ import annotations

import math
from functools import lru_cache

from hwmodels import profiles
from hwmodels.clusters import Cluster

# NCCL all-reduce bus bandwidth ÷ link rate, from nccl-tests peaks on NVIDIA's GTC24 S62129
# slide 12: NVLink3 232/300, NVLink4 370/450, 200G IB 24/25, 400G IB 48/50, PCIe Gen4 24/32.
BUS_EFFICIENCY = {
    "nvswitch": 0.80, "nvlink-bridge": 0.80, "infinity-fabric": 0.70, "hccs": 0.75,
    "ici-torus": 0.80, "pcie": 0.75, "fat-tree": 0.96, "rail-fat-tree": 0.96,
    "dragonfly": 0.90, "ethernet": 0.90,
}
# NCCL base latency per collective (src/graph/tuning.cc, Simple protocol, µs: 8.4) — the
# per-step hop latency comes from each tier's latency_s.
BASE_LATENCY_S = 8.4e-6
OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast", "send_recv")


def _bus_efficiency(cluster: Cluster, tier_index: int) -> float:
    tier = cluster.tiers[tier_index]
    if tier_index == 0 and cluster.device.kernel_profile:
        eff = _measured_intra_efficiency(cluster.device.kernel_profile, tier.bytes_per_s)
        if eff:
            return eff
    return BUS_EFFICIENCY.get(tier.kind, 0.8)


@lru_cache(maxsize=64)
def _measured_intra_efficiency(system: str, wire_bytes_per_s: float) -> float | None:
    table = profiles.load_nccl_table(system)
    if table is None:
        return None
    pts = [(n, s, t) for n, s, t in table.points("all_reduce") if n == 8]
    if not pts:
        return None
    n, s, t = max(pts, key=lambda p: p[1])
    busbw = s / t * 2 * (n - 1) / n  # nccl-tests: busbw = algbw · 2(n−1)/n for all-reduce
    return min(1.0, busbw / wire_bytes_per_s)


def group_layout(cluster: Cluster, size: int, stride: int) -> tuple[int, int]:
    """(members per node k, nodes spanned) for `size` ranks `stride` devices apart."""
    dpn = cluster.devices_per_node
    k = max(1, min(size, dpn // stride)) if stride < dpn else 1
    return k, math.ceil(size / k)


def _ring(op: str, n: int, nbytes: float, alpha: float, beta: float) -> float:
    if n <= 1 or nbytes <= 0:
        return 0.0
    if op == "all_reduce":  # ring: 2(n−1) steps, each moving S/n
        ring = 2 * (n - 1) * alpha + 2 * (n - 1) / n * nbytes / beta
        tree = 2 * math.ceil(math.log2(n)) * alpha + 2 * (n - 1) / n * nbytes / beta  # double binary tree
        return min(ring, tree)
    if op in ("all_gather", "reduce_scatter", "all_to_all"):
        return (n - 1) * alpha + (n - 1) / n * nbytes / beta
    if op == "broadcast":  # pipelined ring/tree broadcast
        return math.ceil(math.log2(n)) * alpha + nbytes / beta
    raise ValueError(op)


@lru_cache(maxsize=1 << 16)
def collective_s(cluster: Cluster, op: str, size: int, stride: int, nbytes: float) -> float:
    """Time of one collective. `nbytes`: the full buffer (all-reduce input, all-gather output,
    reduce-scatter input, all-to-all send buffer per rank, send/recv message)."""
    if size <= 1 or nbytes <= 0:
        return 0.0
    k, nodes = group_layout(cluster, size, stride)
    intra_i = cluster.tier_of_span(min(k * stride, cluster.devices_per_node)) if k > 1 else 0
    intra, inter = cluster.tiers[intra_i], cluster.tiers[-1]
    b_in = intra.bytes_per_s * _bus_efficiency(cluster, intra_i)
    b_out = inter.bytes_per_s * _bus_efficiency(cluster, len(cluster.tiers) - 1) / inter.oversubscription
    if op == "send_recv":
        tier, bw = (intra, b_in) if stride < cluster.devices_per_node else (inter, b_out)
        return BASE_LATENCY_S + tier.latency_s + nbytes / bw
    t = BASE_LATENCY_S
    if nodes == 1:
        return t + _ring(op, k, nbytes, intra.latency_s, b_in)
    if op == "all_to_all":  # the share leaving the node crosses the NICs, the rest stays inside
        t_in = _ring(op, k, nbytes * k / size, intra.latency_s, b_in) if k > 1 else 0.0
        t_out = (nodes - 1) * inter.latency_s + nbytes * (size - k) / size / b_out
        return t + max(t_in, t_out)
    if k == 1:
        return t + _ring(op, nodes, nbytes, inter.latency_s, b_out)
    # Hierarchical: intra reduce-scatter, inter collective on S/k per rank, intra all-gather.
    if op == "all_reduce":
        return t + (_ring("reduce_scatter", k, nbytes, intra.latency_s, b_in)
                    + _ring("all_reduce", nodes, nbytes / k, inter.latency_s, b_out)
                    + _ring("all_gather", k, nbytes, intra.latency_s, b_in))
    if op in ("all_gather", "reduce_scatter"):
        return t + (_ring(op, nodes, nbytes / k, inter.latency_s, b_out)
                    + _ring(op, k, nbytes, intra.latency_s, b_in))
    if op == "broadcast":
        return t + _ring(op, nodes, nbytes, inter.latency_s, b_out) + _ring(op, k, nbytes, intra.latency_s, b_in)
    raise ValueError(f"unknown collective {op!r}; valid: {', '.join(OPS)}")


def bus_bandwidth(op: str, n: int, nbytes: float, time_s: float) -> tuple[float, float]:
    """(algbw, busbw) in bytes/s as nccl-tests defines them."""
    if time_s <= 0:
        return 0.0, 0.0
    algbw = nbytes / time_s
    factor = {"all_reduce": 2 * (n - 1) / n}.get(op, (n - 1) / n if op != "send_recv" else 1.0)
    return algbw, algbw * factor
