"""Collective communication costs: NCCL's algorithms and protocols on a cluster's topology.

    collective_cost(cluster, "all_reduce", 64, 1, 256 * 2**20)   # -> CollectiveCost
    collective_s(cluster, op, size, stride, nbytes)              # seconds (what the simulator calls)

A parallel group is `size` ranks `stride` devices apart in the Megatron rank order (TP innermost);
every group of that shape runs at once (`hwmodels.topology.place_group` says which tiers and links
they cross and how many flows share each). `nbytes` is nccl-tests' size: the all-reduce input, the
all-gather output, the reduce-scatter input, the all-to-all send buffer per rank, the broadcast or
send/recv message.

Each (algorithm, protocol) pair is a line t = α + β·S (`Line`); the tuner picks the fastest, as
NCCL's does (src/graph/tuning.cc: time = latency + bytes / bandwidth, minimised over algorithms and
protocols), unless the caller forces an algorithm or protocol.
- ring: every rank sends f·S to its successor, f = 2(n-1)/n for all-reduce, (n-1)/n for
  all-gather / reduce-scatter / all-to-all, 1 for broadcast (Thakur, Rabenseifner & Gropp 2005);
  inside a node over the scale-up link, across nodes pipelined with the NIC hop (the slower sets
  the pace). Latency: NCCL's base + (ring steps - network steps)·intra step + network steps·net step.
- tree (all-reduce): NCCL's double binary tree across nodes, a chain inside each node;
  latency base + 2·((k-1)·intra + log2(nodes)·net) (tuning.cc).
- nvls: NVLink SHARP in-switch reduction (H100+ NVSwitch): per-GPU traffic ~S whatever the group
  size; NCCL uses it above 4 GPUs on Hopper, from 6 on Blackwell (interconnects.csv measured rows).
  Across nodes it feeds the tree ("nvls_tree").
- hierarchical (forced only): reduce-scatter inside the node, the collective on S/k across nodes,
  all-gather inside the node, one after the other.
- pairwise (all-to-all): n-1 grouped send/recv; p2p (send/recv): one step, at NCCL's measured p2p
  share of the link (vidur profiles), over the NIC path across nodes.
Protocols LL / LL128 / Simple differ in latency and bandwidth (NCCL tuning.cc constants, in
validation/data/reference/interconnects.csv model_param rows).

Calibration (docs/modeling.md §2.8): for a device with measured NCCL tables (aiconfigurator-core, via its
`kernel_profile`), the scale-up tier's per-protocol lines are fitted to the table: latency
a0 + a1·steps and a per-byte cost (u·f + v) per (op, protocol, algorithm) — u the bus bandwidth's
inverse, v a cost per byte of S that does not shrink with the group (the rank's own copy and
reduction) — by non-negative least squares on relative error of the fastest line at each point (the
tuner's envelope), alternating with the assignment of points to lines. PCIe nodes, whose bandwidth depends
on which PCIe switches and sockets a group spans, get one fit per measured group size. Nothing is
hand-typed; devices without tables use the tier-kind defaults below. Network tiers have no
collective tables: their efficiency comes from measured multi-node peaks (GTC24 S62129).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from hwmodels import profiles
from hwmodels.clusters import Cluster
from hwmodels.errors import InputError
from hwmodels.topology import PLACEMENTS, network_time, nvlink_generation, place_group

OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast", "send_recv")
ALGORITHMS = ("ring", "tree", "nvls", "nvls_tree", "hierarchical", "pairwise", "p2p")
PROTOCOLS = ("LL", "LL128", "Simple")
_US = 1e-6

# NCCL bus bandwidth ÷ link rate where no table calibrates a tier, from nccl-tests peaks on
# NVIDIA's GTC24 S62129 slide 12: NVLink3 232/300, NVLink4 370/450, 200G IB 24/25, 400G IB 48/50,
# PCIe Gen4 24/32; MI300X 312.9/448 (STAS_NET); ICI and HCCS have no measurement (kept at NVLink's).
BUS_EFFICIENCY = {
    "nvswitch": 0.80, "nvlink-bridge": 0.80, "infinity-fabric": 0.70, "hccs": 0.75,
    "ici-torus": 0.80, "pcie": 0.75, "fat-tree": 0.96, "rail-fat-tree": 0.96,
    "dragonfly": 0.90, "ethernet": 0.90,
}
# A ring over more than two GPUs of a PCIe server runs through the CPUs' root complexes and memory,
# not GPU to GPU: its bus bandwidth falls with the ring size ("on PCI systems the performance is
# usually determined by the bandwidth your CPU and memory can deliver", NCCL maintainer, NVIDIA/nccl
# issue #1639: nccl-tests all_reduce on a dual-socket Xeon 8480+ server with 8 PCIe Gen5 x16 GPUs,
# busbw 35 GB/s on 4 GPUs and 28 GB/s on 8, i.e. 35/64 and 28/64 of the x16 link per direction).
# Two GPUs keep BUS_EFFICIENCY["pcie"] (GTC24 S62129: PCIe Gen4 24/32). Used where no table
# calibrates the tier; between and beyond the measured sizes, linear in log2(ranks), edges held.
PCIE_RING_EFFICIENCY = {2: 0.75, 4: 35 / 64, 8: 28 / 64}
# NCCL tuning constants (src/graph/tuning.cc @5067397c, interconnects.csv model_param), seconds.
BASE_LATENCY = {"ring": {"LL": 6.6 * _US, "LL128": 14.0 * _US, "Simple": 8.4 * _US},
                "tree": {"LL": 6.8 * _US, "LL128": 14.0 * _US, "Simple": 8.4 * _US}}
HW_LATENCY = {  # per step: hwLatencies[NVLINK | PCI | NET][algorithm][protocol]
    "nvlink": {"ring": {"LL": 0.6, "LL128": 1.9, "Simple": 3.4}, "tree": {"LL": 0.6, "LL128": 1.25, "Simple": 4.0}},
    "pci": {"ring": {"LL": 1.0, "LL128": 2.5, "Simple": 5.7}, "tree": {"LL": 1.0, "LL128": 1.9, "Simple": 4.0}},
    "net": {"ring": {"LL": 2.7, "LL128": 4.0, "Simple": 14.0}, "tree": {"LL": 5.0, "LL128": 8.5, "Simple": 14.0}},
}
NVLS_LATENCY = {"nvlink": 25.0 * _US, "net_tree": 20.9 * _US}  # hwLatencies NVLS / NVLSTree (NET)
# Protocol share of the bus bandwidth (tuning.cc ncclTopoTuneModel): LL moves 4 data bytes per
# 8-byte line and NCCL models it at 1/4 of busBw for all-reduce and across nodes, 1/3 otherwise;
# LL128 120 of 128 bytes, modelled at 0.92.
PROTOCOL_BW = {"LL": 0.25, "LL128": 0.92, "Simple": 1.0}
PROTOCOL_BW_SINGLE_NODE_NON_AR = {"LL": 1 / 3, "LL128": 0.92, "Simple": 1.0}
# NVLS: first group size NCCL picks it at, per NVLink generation ("NCCL picks NVLS only above 4
# GPUs" on 8x H200; "NVLS selected from 6 GPUs" on 8x B200; interconnects.csv measured rows), and
# its all-reduce busbw gain over ring at 8 GPUs for devices whose tables lack NVLS points (8x H200
# 480.0 vs 367.2; 8x B200 838.0 vs 682.2 GB/s, same rows).
NVLS_MIN_RANKS = {4: 5, 5: 6}
# NCCL send/recv between two GPUs of a node, share of the link rate: 64 MiB in 294 µs on DGX A100
# (228 GB/s of 300) and in 193 µs on DGX H100 (348 of 450) -> 0.76, 0.77
# (vidur_profiled_collectives.csv send_recv, devices_per_node 2; vidur's profiler already reports
# bytes, so its `size_elements_fp16` column is the byte count and `size_bytes` is twice it).
P2P_EFFICIENCY = 0.765
NVLS_GAIN = {4: 480.0 / 367.2, 5: 838.0 / 682.2}
_LINK_CLASS = {"nvswitch": "nvlink", "nvlink-bridge": "nvlink", "infinity-fabric": "nvlink",
               "hccs": "nvlink", "ici-torus": "nvlink", "pcie": "pci"}
_MIB = 2 ** 20


def _check_op(op: str) -> None:
    if op not in OPS:
        raise InputError(f"unknown collective {op!r}; valid: {', '.join(OPS)}")


def ring_factor(op: str, n: int) -> float:
    """Bytes each rank sends per byte of S in a ring (nccl-tests PERFORMANCE.md bus factors)."""
    if op == "all_reduce":
        return 2 * (n - 1) / n
    if op in ("all_gather", "reduce_scatter", "all_to_all"):
        return (n - 1) / n
    return 1.0


def ring_steps(op: str, n: int) -> int:
    """Ring steps (tuning.cc nsteps): 2(n-1) for all-reduce, n-1 for the others."""
    return 2 * (n - 1) if op == "all_reduce" else max(0, n - 1)


def bus_bandwidth(op: str, n: int, nbytes: float, time_s: float) -> tuple[float, float]:
    """(algbw, busbw) in bytes/s as nccl-tests defines them (doc/PERFORMANCE.md)."""
    if time_s <= 0:
        return 0.0, 0.0
    algbw = nbytes / time_s
    factor = {"all_reduce": 2 * (n - 1) / n, "broadcast": 1.0, "send_recv": 1.0}.get(op, (n - 1) / n)
    return algbw, algbw * factor


# ---- lines and results -------------------------------------------------------------------------
@dataclass(frozen=True)
class Line:
    """One (algorithm, protocol) choice: time = latency_s + s_per_byte · nbytes."""
    algorithm: str
    protocol: str
    latency_s: float
    s_per_byte: float
    bottleneck: str = ""  # which part sets the bandwidth term
    auto: bool = True  # considered by the tuner (NCCL has no sequential hierarchical all-reduce)

    def time(self, nbytes: float) -> float:
        return self.latency_s + self.s_per_byte * nbytes


@dataclass(frozen=True)
class CollectiveCost:
    op: str
    ranks: int
    stride: int
    nbytes: float
    time_s: float
    algorithm: str  # "ring", "tree", "nvls", ...
    protocol: str  # "LL", "LL128", "Simple"
    algbw_bytes_per_s: float
    busbw_bytes_per_s: float
    latency_s: float  # the α part of time_s
    bandwidth_s: float  # the β·S part
    bottleneck: str  # what limits the bandwidth term (e.g. "scale-up", "nic-out", "leaf-up")
    members_per_node: int
    nodes: int
    concurrent_groups: int
    crosses: tuple  # resource levels crossed
    calibrated: str  # the measured table behind the scale-up tier, "" if defaults
    candidates: tuple = field(default=(), compare=False)  # (algorithm, protocol, seconds) considered

    def to_dict(self) -> dict:
        return {"op": self.op, "ranks": self.ranks, "stride": self.stride, "size_bytes": self.nbytes,
                "time_s": self.time_s, "algbw_bytes_per_s": self.algbw_bytes_per_s,
                "busbw_bytes_per_s": self.busbw_bytes_per_s, "algorithm": self.algorithm,
                "protocol": self.protocol,
                "latency_s": self.latency_s, "bandwidth_s": self.bandwidth_s, "bottleneck": self.bottleneck,
                "members_per_node": self.members_per_node, "nodes": self.nodes,
                "concurrent_groups": self.concurrent_groups, "crosses": list(self.crosses),
                "calibrated_from": self.calibrated,
                "candidates": [{"algorithm": a, "protocol": p, "time_s": t} for a, p, t in self.candidates]}


# ---- calibration ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProtoFit:
    """Fitted (or default) line of one algorithm/protocol on one scale-up tier: latency
    base_s + step_s·steps, per byte (u·f + v)·ref/bandwidth seconds (u, v at the reference
    bandwidth the table was measured on)."""
    algorithm: str
    protocol: str
    base_s: float
    step_s: float
    u: float
    v: float = 0.0


@dataclass(frozen=True)
class Calibration:
    system: str
    kind: str  # "nvswitch" | "pcie"
    ref_bytes_per_s: float  # the measured node's link rate, per device per direction
    nvls_min: int | None
    per_size: bool  # PCIe: one fit per measured group size
    fits: dict = field(hash=False, compare=False)  # op -> {n or 0: tuple[ProtoFit]}
    source: str = ""


def _nnls(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """min ||Ax - b|| subject to x >= 0 (Lawson & Hanson's active-set method on the normal
    equations; a handful of columns)."""
    AtA, Atb = A.T @ A, A.T @ b
    m = A.shape[1]
    x = np.zeros(m)
    passive = np.zeros(m, dtype=bool)
    for _ in range(3 * m):
        grad = Atb - AtA @ x
        free = ~passive & (grad > 1e-12 * max(1.0, float(np.abs(Atb).max())))
        if not free.any():
            break
        passive[np.argmax(np.where(free, grad, -np.inf))] = True
        while True:
            idx = np.flatnonzero(passive)
            z = np.zeros(m)
            try:
                z[idx] = np.linalg.solve(AtA[np.ix_(idx, idx)], Atb[idx])
            except np.linalg.LinAlgError:
                z[idx] = np.linalg.lstsq(AtA[np.ix_(idx, idx)], Atb[idx], rcond=None)[0]
            if (z[idx] > 0).all():
                x = z
                break
            neg = passive & (z <= 0)
            alpha = np.min(x[neg] / (x[neg] - z[neg] + 1e-300))
            x = x + alpha * (z - x)
            passive &= x > 1e-15
            x[~passive] = 0.0
    return x


def _fit_envelope(n: np.ndarray, S: np.ndarray, t: np.ndarray, op: str, cands: list,
                  eligible: np.ndarray, with_steps: bool) -> list:
    """Fit one line per candidate so that the fastest line at each point matches the measured
    time (least squares on relative error, alternating point assignment and fits, a few starts).
    cands: [(algorithm, protocol)]; eligible[c, i]: candidate c allowed at point i."""
    f = np.array([ring_factor(op, int(x)) for x in n])
    steps = np.array([ring_steps(op, int(x)) for x in n], dtype=float)
    feats = []
    for algo, _ in cands:
        if algo == "nvls":  # in-switch reduction: ~S per GPU whatever n, no per-step latency
            feats.append(np.stack([np.ones_like(S), S], axis=1))
        elif with_steps:
            feats.append(np.stack([np.ones_like(S), steps, S * f, S], axis=1))
        else:
            feats.append(np.stack([np.ones_like(S), S * f], axis=1))
    best = None
    for lo, hi in ((64 * 1024, 8 * _MIB), (32 * 1024, 2 * _MIB), (128 * 1024, 32 * _MIB), (16 * 1024, _MIB)):
        assign = np.where(S < lo, 0, np.where(S < hi, 1, 2))
        for c, (algo, _) in enumerate(cands):
            if algo == "nvls":
                assign = np.where(eligible[c] & (S >= hi), c, assign)
        params = [None] * len(cands)
        for _ in range(30):
            for c in range(len(cands)):
                sel = assign == c
                if sel.sum() >= 3:
                    A = feats[c][sel] / t[sel, None]
                    params[c] = _nnls(A, np.ones(int(sel.sum())))
            pred = _predict_all(feats, params, eligible)
            new = np.argmin(pred, axis=0)
            if np.array_equal(new, assign):
                break
            assign = new
        _order_protocols(params, cands, with_steps, op)
        pred = _predict_all(feats, params, eligible).min(axis=0)
        err = float(np.sum(np.log(pred / t) ** 2))
        if best is None or err < best[0]:
            best = (err, [None if p is None else p.copy() for p in params])
    return best[1]


def _predict_all(feats, params, eligible) -> np.ndarray:
    out = np.full((len(feats), feats[0].shape[0]), np.inf)
    for c, p in enumerate(params):
        if p is not None and p[-1] + (p[-2] if len(p) == 4 else 0) > 0:
            out[c] = np.where(eligible[c], feats[c] @ p, np.inf)
    return out


def _order_protocols(params: list, cands: list, with_steps: bool, op: str) -> None:
    """Keep LL no faster per byte than LL128, and LL128 no faster than Simple (protocol
    efficiency order, tuning.cc) at any group size, so that a line fitted on small messages cannot
    undercut the bandwidth-optimal one beyond the measured sizes: a violating line takes the
    faster protocol's per-byte cost."""
    idx = {c: i for i, c in enumerate(cands)}
    algo = cands[0][0]
    fs = (ring_factor(op, 2), ring_factor(op, 1 << 20)) if with_steps else (1.0,)
    for slow, fast in (((algo, "LL128"), (algo, "Simple")), ((algo, "LL"), (algo, "LL128"))):
        a, b = idx.get(slow), idx.get(fast)
        if a is None or b is None or params[a] is None or params[b] is None:
            continue
        pa, pb = params[a], params[b]
        per_byte = (lambda x, f: x[2] * f + x[3]) if with_steps else (lambda x, f: x[1])
        if any(per_byte(pa, f) < per_byte(pb, f) for f in fs):
            cols = slice(2, 4) if with_steps else slice(1, 2)
            pa[cols] = pb[cols]


def _table_kind(scale_up: str) -> str | None:
    """The scale-up kind a device's measured table was taken on, from its scale-up description:
    "NVLink 4, 18 links" -> nvswitch, "PCIe Gen4 x16 (no NVLink)" -> pcie, others None."""
    s = scale_up.strip().lower()
    if s.startswith("nvlink") and not s.startswith("nvlink bridge"):
        return "nvswitch"
    return "pcie" if s.startswith("pcie") else None


@functools.lru_cache(maxsize=32)
def calibrate(system: str, kind: str, ref_bytes_per_s: float, nvls_min: int | None) -> Calibration | None:
    """Fit the scale-up tier of `system` (an aiconfigurator-core data folder) to its NCCL table."""
    table = profiles.load_nccl_table(system)
    if table is None:
        return None
    per_size = kind == "pcie"
    fits = {}
    for op in ("all_reduce", "all_gather", "reduce_scatter", "all_to_all"):
        rows: dict = {}
        for n, s, sec in table.points(op):
            rows.setdefault((n, s), []).append(sec)
        if not rows:
            continue
        keys = sorted(rows)
        n = np.array([k[0] for k in keys], dtype=float)
        S = np.array([k[1] for k in keys], dtype=float)
        t = np.array([float(np.mean(rows[k])) for k in keys])
        algo = "pairwise" if op == "all_to_all" else "ring"
        cands = [(algo, p) for p in PROTOCOLS]
        if op == "all_reduce" and nvls_min and not per_size and (n >= nvls_min).any():
            cands.append(("nvls", "Simple"))
        eligible = np.array([[a != "nvls" or x >= (nvls_min or 1e9) for x in n] for a, _ in cands])
        out = {}
        groups = [(int(x), n == x) for x in np.unique(n)] if per_size else [(0, np.ones_like(n, bool))]
        for key, sel in groups:
            params = _fit_envelope(n[sel], S[sel], t[sel], op, cands, eligible[:, sel], not per_size)
            lines = []
            for (a, p), x in zip(cands, params):
                if x is None or float(np.sum(x[1:] if len(x) == 2 else x[2:])) <= 0:
                    continue  # unfitted, or no per-byte cost (would undercut every line)
                if a == "nvls":
                    lines.append(ProtoFit(a, p, float(x[0]), 0.0, float(x[1]) * ref_bytes_per_s))
                elif per_size:  # x[1]: seconds per byte of f·S at this size
                    lines.append(ProtoFit(a, p, float(x[0]), 0.0, float(x[1]) * ref_bytes_per_s))
                else:
                    lines.append(ProtoFit(a, p, float(x[0]), float(x[1]), float(x[2]) * ref_bytes_per_s,
                                          float(x[3]) * ref_bytes_per_s))
            if lines:
                out[key] = tuple(lines)
        fits[op] = out
    return Calibration(system=system, kind=kind, ref_bytes_per_s=ref_bytes_per_s, nvls_min=nvls_min,
                       per_size=per_size, fits=fits, source=table.source)


def nvls_min_ranks(cluster: Cluster) -> int | None:
    """Smallest group NCCL runs NVLS on for this cluster's scale-up tier, None without NVLS."""
    if cluster.tiers[0].kind != "nvswitch":
        return None
    gen = nvlink_generation(cluster.device.scale_up)
    if gen < 4:
        return None
    return NVLS_MIN_RANKS.get(gen, NVLS_MIN_RANKS[max(NVLS_MIN_RANKS)])


def tier_calibration(cluster: Cluster) -> Calibration | None:
    """The calibration of the cluster's scale-up tier from its device's own NCCL table, if the
    device has one and the tier is the kind of link it was measured on."""
    d = cluster.device
    if not d.kernel_profile or not d.scale_up_bytes_per_s or not cluster.scale_up_table:
        return None
    kind = _table_kind(d.scale_up)
    if kind is None or cluster.tiers[0].kind != kind:
        return None
    return calibrate(d.kernel_profile, kind, float(d.scale_up_bytes_per_s), nvls_min_ranks(cluster))


# ---- the scale-up tier's lines -------------------------------------------------------------------
def _default_fits(cluster: Cluster, op: str, tier_index: int) -> tuple[ProtoFit, ...]:
    """Lines from NCCL's tuning constants and the tier's measured-peak efficiency (no table).
    Step latencies scale NCCL's per-protocol constants to the tier's own latency_s (its LL128
    ring step)."""
    tier = cluster.tiers[tier_index]
    link = _LINK_CLASS.get(tier.kind, "net")
    scale = tier.latency_s / (HW_LATENCY[link]["ring"]["LL128"] * _US)
    eff = BUS_EFFICIENCY.get(tier.kind, 0.8)
    shares = PROTOCOL_BW if op == "all_reduce" else PROTOCOL_BW_SINGLE_NODE_NON_AR
    algo = "pairwise" if op == "all_to_all" else "ring"
    protos = PROTOCOLS if link == "nvlink" else ("LL", "Simple")  # LL128 needs NVLink (tuning.cc)
    return tuple(ProtoFit(algo, p, BASE_LATENCY["ring"][p], HW_LATENCY[link]["ring"][p] * _US * scale,
                          1.0 / (eff * shares[p])) for p in protos)


def _fits_at(fits: dict, n: int, op: str) -> tuple[ProtoFit, ...]:
    """Per-size calibrations (PCIe) at group size n: the measured size, else linear in log2(n)
    between the neighbours (latency linear, per-byte cost geometric); beyond the measured range
    the edge's bus bandwidth, with NCCL's PCI step latency for each extra ring step."""
    sizes = sorted(fits)
    if n in fits:
        return fits[n]
    lo = max((s for s in sizes if s < n), default=None)
    hi = min((s for s in sizes if s > n), default=None)
    if lo is None or hi is None:
        edge = hi if lo is None else lo
        extra = (ring_steps(op, n) - ring_steps(op, edge)) * HW_LATENCY["pci"]["ring"]["Simple"] * _US
        return tuple(ProtoFit(p.algorithm, p.protocol, max(0.0, p.base_s + extra), 0.0, p.u, p.v)
                     for p in fits[edge])
    w = (math.log2(n) - math.log2(lo)) / (math.log2(hi) - math.log2(lo))
    by = {(p.algorithm, p.protocol): p for p in fits[hi]}
    out = []
    for a in fits[lo]:
        b = by.get((a.algorithm, a.protocol))
        if b is None:
            continue
        u = math.exp((1 - w) * math.log(a.u) + w * math.log(b.u)) if a.u > 0 and b.u > 0 else max(a.u, b.u)
        out.append(ProtoFit(a.algorithm, a.protocol, (1 - w) * a.base_s + w * b.base_s, 0.0, u))
    return tuple(out)


@dataclass(frozen=True)
class _Intra:
    """The scale-up part of a group: per protocol, latency of `steps` steps and seconds per byte
    of S for a per-rank volume factor f: (u·f + v)·scale."""
    fits: tuple  # ProtoFit per protocol (ring/pairwise), plus nvls if eligible
    scale: float  # 1 / (tier bandwidth · link share); u, v are relative to the measured link
    per_size: bool
    calibrated: str

    def fit(self, algorithm: str, protocol: str) -> ProtoFit | None:
        for p in self.fits:
            if p.algorithm == algorithm and p.protocol == protocol:
                return p
        return None


def _intra(cluster: Cluster, op: str, n: int, k: int, tier_index: int, fraction: float) -> _Intra:
    """Scale-up lines for a group whose ring has n ranks with k on each node."""
    fit_op = {"broadcast": "all_gather", "send_recv": "all_gather"}.get(op, op)
    cal = tier_calibration(cluster) if tier_index == 0 else None
    tier_bw = min(t.bytes_per_s for t in cluster.tiers[:tier_index + 1])  # slowest tier spanned
    nvls_min = nvls_min_ranks(cluster)
    if cal is not None and fit_op in cal.fits and cal.fits[fit_op]:
        fits = cal.fits[fit_op]
        lines = _fits_at(fits, k, fit_op) if cal.per_size else fits[0]
        lines = tuple(p for p in lines if p.algorithm != "nvls") + _nvls_fit(cluster, lines, fit_op)
        return _Intra(lines, 1.0 / (tier_bw * fraction), cal.per_size, cal.source)
    lines = _default_fits(cluster, fit_op, tier_index)
    if fit_op == "all_reduce" and nvls_min:
        lines += _nvls_fit(cluster, lines, fit_op)
    scale = 1.0 / (tier_bw * fraction)
    if cluster.tiers[tier_index].kind == "pcie" and op != "send_recv":
        # rings over > 2 PCIe GPUs are CPU-bound (PCIE_RING_EFFICIENCY; a send/recv is one pair)
        scale *= BUS_EFFICIENCY["pcie"] / pcie_ring_efficiency(k)
    return _Intra(lines, scale, False, "")


def pcie_ring_efficiency(k: int) -> float:
    """Bus bandwidth ÷ link rate of a k-GPU ring inside a PCIe server (PCIE_RING_EFFICIENCY,
    linear in log2(k) between measured sizes, the edge value beyond them)."""
    sizes = sorted(PCIE_RING_EFFICIENCY)
    if k <= sizes[0]:
        return PCIE_RING_EFFICIENCY[sizes[0]]
    if k >= sizes[-1]:
        return PCIE_RING_EFFICIENCY[sizes[-1]]
    hi = min(s for s in sizes if s >= k)
    lo = max(s for s in sizes if s <= k)
    if hi == lo:
        return PCIE_RING_EFFICIENCY[lo]
    w = (math.log2(k) - math.log2(lo)) / (math.log2(hi) - math.log2(lo))
    return (1 - w) * PCIE_RING_EFFICIENCY[lo] + w * PCIE_RING_EFFICIENCY[hi]


def _nvls_fit(cluster: Cluster, lines: tuple, op: str) -> tuple:
    """The NVLS line: fitted where the table has NVLS points, else the Simple ring's 8-GPU
    per-byte cost divided by the measured NVLS gain and NCCL's NVLS latency added."""
    if op != "all_reduce" or nvls_min_ranks(cluster) is None:
        return ()
    have = [p for p in lines if p.algorithm == "nvls"]
    if have:
        return tuple(have)
    simple = next((p for p in lines if p.protocol == "Simple" and p.algorithm == "ring"), None)
    if simple is None:
        return ()
    gen = nvlink_generation(cluster.device.scale_up)
    gain = NVLS_GAIN.get(gen, NVLS_GAIN[max(NVLS_GAIN)])
    per_byte_8 = simple.u * ring_factor("all_reduce", 8) + simple.v
    return (ProtoFit("nvls", "Simple", simple.base_s + NVLS_LATENCY["nvlink"], 0.0, per_byte_8 / gain),)


# ---- candidates per group shape --------------------------------------------------------------------
@functools.lru_cache(maxsize=8192)
def candidates(cluster: Cluster, op: str, size: int, stride: int,
               placement: str = "packed") -> tuple[Line, ...]:
    """Every (algorithm, protocol) line for `op` on groups of this shape (cached by shape)."""
    _check_op(op)
    pl = place_group(cluster, size, stride, placement)
    if size <= 1:
        return ()
    if cluster.tiers[-1].kind == "ici-torus":
        return _torus_lines(cluster, op, size, pl)
    if pl.nodes == 1:
        return _single_node_lines(cluster, op, size, pl)
    return _multi_node_lines(cluster, op, size, stride, pl, placement)


def _single_node_lines(cluster: Cluster, op: str, n: int, pl) -> tuple[Line, ...]:
    intra = _intra(cluster, op, n, n, pl.intra_tier, pl.intra_fraction)
    out = []
    for p in intra.fits:
        if p.algorithm == "nvls":
            if op == "all_reduce" and n >= (nvls_min_ranks(cluster) or 10 ** 9):
                out.append(Line("nvls", p.protocol, p.base_s, p.u * intra.scale, "scale-up"))
            continue
        if op == "send_recv":  # one step of the protocol's latency; S at NCCL's p2p rate
            share = PROTOCOL_BW_SINGLE_NODE_NON_AR[p.protocol]
            out.append(Line("p2p", p.protocol, p.base_s + p.step_s,
                            intra.scale / (P2P_EFFICIENCY * share), "scale-up"))
            continue
        f, steps = ring_factor(op, n), ring_steps(op, n)
        lat = p.base_s + p.step_s * steps
        out.append(Line(p.algorithm, p.protocol, lat, (p.u * f + p.v) * intra.scale, "scale-up"))
        if op == "all_reduce":  # NCCL's tree inside one node is a chain: ~2S through every GPU
            out.append(Line("tree", p.protocol, p.base_s + p.step_s * 2 * (n - 1),
                            (2 * p.u + p.v) * intra.scale, "scale-up"))
    return tuple(out)


def _net_step(cluster: Cluster, algorithm: str, protocol: str) -> float:
    """Seconds per network step: NCCL's NET constant for the protocol, scaled so that LL128 ring
    equals the tier's latency_s."""
    tier = cluster.tiers[-1]
    scale = tier.latency_s / (HW_LATENCY["net"]["ring"]["LL128"] * _US)
    return HW_LATENCY["net"][algorithm][protocol] * _US * scale


def _multi_node_lines(cluster: Cluster, op: str, n: int, stride: int, pl, placement: str) -> tuple[Line, ...]:
    k, m = pl.k, pl.nodes
    net_tier = cluster.tiers[-1]
    net_eff = BUS_EFFICIENCY.get(net_tier.kind, 0.9)
    intra = _intra(cluster, op, n, k, pl.intra_tier, pl.intra_fraction) if k > 1 else None
    out = []
    for proto in PROTOCOLS:
        share = PROTOCOL_BW[proto] * net_eff
        p = intra.fit("pairwise" if op == "all_to_all" else "ring", proto) if intra else None
        if intra is not None and p is None:
            continue
        base = p.base_s if p else BASE_LATENCY["ring"][proto]
        step_in = p.step_s if p else 0.0
        scale = intra.scale if intra else 0.0
        if op == "send_recv":  # one network step; S through the pair's NIC path (both directions)
            t_net, where, _ = network_time(cluster, n, stride, "pair", placement)
            out.append(Line("p2p", proto, base + _net_step(cluster, "ring", proto), t_net / share, where))
            continue
        if op == "all_to_all":
            t_net, where, _ = network_time(cluster, n, stride, "a2a", placement)
            t_in = (p.u * (k - 1) / n + p.v) * scale if p else 0.0  # S·(k-1)/n to local peers
            # NCCL all-to-all = n-1 grouped send/recv; no tuner constant: one step per peer node
            lat = base + step_in * (k - 1) + (m - 1) * _net_step(cluster, "ring", proto)
            pb, bn = max((t_in, "scale-up"), (t_net / share, where))
            out.append(Line("pairwise", proto, lat, pb, bn))
            continue
        f = ring_factor(op, n)
        inter_steps = ring_steps(op, m) if op != "broadcast" else m - 1
        steps = ring_steps(op, n) if op != "broadcast" else n - 1
        # tuning.cc: ring latency = base + (nsteps - nInterSteps)·intraLat + nInterSteps·interLat
        lat = base + (steps - inter_steps) * step_in + inter_steps * _net_step(cluster, "ring", proto)
        t_ring, where, _ = network_time(cluster, n, stride, "ring", placement)
        t_in = (p.u * f + p.v) * scale if p else 0.0  # every rank forwards f·S over its scale-up link
        # pipelined ring: the slower of the scale-up hops and the NIC hops sets the rate
        pb, bn = max((t_in, "scale-up"), (f * t_ring / share, where))
        out.append(Line("ring", proto, lat, pb, bn))
        if op == "all_reduce":
            t_tree, where_t, _ = network_time(cluster, n, stride, "tree", placement)
            tree_base = BASE_LATENCY["tree"][proto] if p is None else p.base_s
            # tuning.cc: tree latency = base + 2·((ppn - 1)·intraLat + log2(nNodes)·interLat)
            lat_t = tree_base + 2 * ((k - 1) * step_in + math.log2(m) * _net_step(cluster, "tree", proto))
            # inside the node NCCL's tree is a chain: every GPU forwards ~S up and ~S down
            t_chain = (2 * p.u + p.v) * scale if p else 0.0
            pb, bn = max((t_chain, "scale-up"), (t_tree / share, where_t))
            out.append(Line("tree", proto, lat_t, pb, bn))
        if op in ("all_reduce", "all_gather", "reduce_scatter"):
            out.append(_hierarchical(cluster, op, n, k, m, stride, proto, pl, placement, share))
    nv = intra.fit("nvls", "Simple") if intra else None
    if op == "all_reduce" and nv is not None and k >= (nvls_min_ranks(cluster) or 10 ** 9):
        t_tree, where_t, _ = network_time(cluster, n, stride, "tree", placement)
        # NVLS reduces inside the node, the tree crosses nodes (tuning.cc NVLSTree NET latency)
        lat = nv.base_s + 2 * math.log2(m) * NVLS_LATENCY["net_tree"]
        pb, bn = max((nv.u * intra.scale, "scale-up"), (t_tree / net_eff, where_t))
        out.append(Line("nvls_tree", "Simple", lat, pb, bn))
    return tuple(line for line in out if line is not None)


def _hierarchical(cluster, op, n, k, m, stride, proto, pl, placement, share) -> Line | None:
    """Reduce-scatter inside the node, the op across nodes on S/k (one ring per rail), all-gather
    inside the node; sequential. all-gather / reduce-scatter: the network phase and one intra
    phase."""
    t_ring, where, _ = network_time(cluster, n, stride, "ring", placement)
    net_lat = ring_steps(op, m) * _net_step(cluster, "ring", proto)
    # per byte of S: the inter-node ring over m nodes moves f(m)·S/k per rail; the flat-ring
    # network time is per byte of the per-hop volume split over k rails, hence · k / k
    net_pb = ring_factor(op, m) * t_ring / share
    if k == 1:
        return Line("hierarchical", proto, BASE_LATENCY["ring"][proto] + net_lat, net_pb, where, auto=False)
    rs = _intra(cluster, "reduce_scatter", k, k, pl.intra_tier, pl.intra_fraction)
    ag = _intra(cluster, "all_gather", k, k, pl.intra_tier, pl.intra_fraction)
    prs, pag = rs.fit("ring", proto), ag.fit("ring", proto)
    if prs is None or pag is None:
        return None
    fk = ring_factor("all_gather", k)
    rs_line = (prs.base_s + prs.step_s * (k - 1), (prs.u * fk + prs.v) * rs.scale)
    ag_line = (pag.base_s + pag.step_s * (k - 1), (pag.u * fk + pag.v) * ag.scale)
    if op == "all_reduce":
        lat = rs_line[0] + net_lat + ag_line[0]
        pb = rs_line[1] + net_pb + ag_line[1]
    else:
        phase = rs_line if op == "reduce_scatter" else ag_line
        lat, pb = phase[0] + net_lat, phase[1] + net_pb
    return Line("hierarchical", proto, lat, pb, where, auto=False)


def _torus_lines(cluster: Cluster, op: str, n: int, pl) -> tuple[Line, ...]:
    """TPU ICI: dimension-ordered rings (bidirectional where the axis wraps) over every axis the
    group spans, all axes' links carrying data at once; groups interleaved along an axis share its
    links. Latency: one tier latency per hop step (scaling-book 1 µs assumption)."""
    tier = cluster.tiers[-1]
    dims = pl.torus.get("dims", [])
    link = pl.torus.get("link_bytes_per_s", tier.bytes_per_s / 6)
    eff = BUS_EFFICIENCY["ici-torus"]
    bw = sum(link * (2 if d["wrap"] else 1) / d["spacing"] for d in dims) * eff
    if bw <= 0:
        return ()
    if op == "send_recv":
        hops = sum(d["spacing"] for d in dims) or 1
        return (Line("p2p", "Simple", tier.latency_s * hops, 1.0 / (link * eff), "torus"),)
    per_dim_steps = sum((2 if op == "all_reduce" else 1) * (d["length"] - 1) * d["spacing"] for d in dims)
    return (Line("ring", "Simple", tier.latency_s * per_dim_steps, ring_factor(op, n) / bw, "torus"),)


# ---- costing -----------------------------------------------------------------------------------------
def collective_cost(cluster: Cluster, op: str, size: int, stride: int, nbytes: float,
                    algorithm: str = "auto", protocol: str = "auto",
                    placement: str = "packed") -> CollectiveCost:
    """Cost of one collective on groups of `size` ranks `stride` apart; `algorithm` / `protocol`
    "auto" lets the tuner choose (minimum predicted time), as NCCL does."""
    _check_op(op)
    if placement not in PLACEMENTS:
        raise InputError(f"placement {placement!r} is not one of {', '.join(PLACEMENTS)}")
    if not (isinstance(nbytes, (int, float)) and math.isfinite(nbytes)) or nbytes < 0:
        raise InputError(f"message size must be a finite number of bytes >= 0, got {nbytes!r}")
    if op == "send_recv" and size != 2:
        raise InputError(f"send_recv is between 2 ranks (ranks=2, stride = their distance); got ranks={size}")
    pl = place_group(cluster, size, stride, placement)
    lines = candidates(cluster, op, size, stride, placement)
    cal = tier_calibration(cluster)
    # the device's NCCL table prices only groups inside its first tier (_intra): the label says so
    calibrated = cal.source if cal and pl.k > 1 and pl.intra_tier == 0 else ""
    if not lines or nbytes == 0:
        return CollectiveCost(op, size, stride, nbytes, 0.0, "none", "", 0.0, 0.0, 0.0, 0.0, "", pl.k,
                              pl.nodes, pl.groups, pl.crosses, calibrated)
    pick = [ln for ln in lines if (ln.algorithm == algorithm or algorithm == "auto" and ln.auto)
            and protocol in ("auto", ln.protocol)]
    if not pick:
        if algorithm != "auto" and algorithm not in {ln.algorithm for ln in lines}:
            avail = sorted({ln.algorithm for ln in lines})
            raise InputError(f"algorithm {algorithm!r} is not available for {op} on {size} ranks of "
                             f"{cluster.name!r} (stride {stride}); available: {', '.join(avail)}")
        avail = sorted({ln.protocol for ln in lines if algorithm in ("auto", ln.algorithm)})
        raise InputError(f"protocol {protocol!r} is not available for {op} with algorithm {algorithm!r}; "
                         f"available: {', '.join(avail)}")
    best = min(pick, key=lambda ln: ln.time(nbytes))
    t = best.time(nbytes)
    algbw, busbw = bus_bandwidth(op, size, nbytes, t)
    return CollectiveCost(op=op, ranks=size, stride=stride, nbytes=nbytes, time_s=t,
                          algorithm=best.algorithm, protocol=best.protocol, algbw_bytes_per_s=algbw,
                          busbw_bytes_per_s=busbw, latency_s=best.latency_s,
                          bandwidth_s=t - best.latency_s, bottleneck=best.bottleneck,
                          members_per_node=pl.k, nodes=pl.nodes, concurrent_groups=pl.groups,
                          crosses=pl.crosses, calibrated=calibrated,
                          candidates=tuple((ln.algorithm, ln.protocol, ln.time(nbytes)) for ln in lines))


@functools.lru_cache(maxsize=1 << 16)
def collective_s(cluster: Cluster, op: str, size: int, stride: int, nbytes: float) -> float:
    """Seconds for one collective (tuner's choice) on every group of `size` ranks `stride` apart."""
    if size <= 1 or nbytes <= 0:
        return 0.0
    lines = candidates(cluster, op, size, stride)
    return min((ln.latency_s + ln.s_per_byte * nbytes for ln in lines if ln.auto), default=0.0)


def group_layout(cluster: Cluster, size: int, stride: int) -> tuple[int, int]:
    """(members per node k, nodes spanned) for `size` ranks `stride` apart."""
    pl = place_group(cluster, size, stride)
    return pl.k, pl.nodes

