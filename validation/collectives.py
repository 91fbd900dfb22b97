"""`clusterplan validate collectives`: predicted vs measured collective times.

Two groups of cases:
- tables: every system with NCCL tables in aiconfigurator-core (docs/design.md §5): all-reduce,
  all-gather and reduce-scatter latency over every measured GPU count (2..8) and size (512 B ..
  512 MiB), predicted by the same `collective_cost` the simulator uses, on a one-node cluster of
  that system. The scale-up tier is calibrated on these very tables (hwmodels.collectives), so this
  group measures how well the model's structure (NCCL protocols and algorithms, tuner) reproduces
  them; the issue's bar is MAPE <= 10% at >= 1 MiB and <= 25% below, per system.
- reference: published measurements in validation/data/reference (nccl_collective_measurements.csv,
  hardware/interconnects.csv measured rows, vidur_profiled_collectives.csv): 8-GPU sweeps beyond
  512 MiB, NVLS by GPU count, multi-node bus bandwidths (DGX A100 / DGX H100 SuperPOD peaks, a
  2x8 H100 sweep, 4x8 B200), MI300X and PCIe nodes. Each case says whether it is independent of
  every fitted constant ("validation") or a row some constant was taken from ("calibration
  source": BUS_EFFICIENCY, P2P_EFFICIENCY).

Nothing here is fitted; the measured rows only score the model.
"""
from __future__ import annotations

import csv
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from hwmodels import profiles
from hwmodels.clusters import Cluster, Tier, load_cluster
from hwmodels.collectives import collective_cost
from hwmodels.devices import Device, all_devices

REFERENCE = Path(__file__).resolve().parent / "data" / "reference"  # sourced reference files (README.md there)
TABLE_OPS = ("all_reduce", "all_gather", "reduce_scatter")
MIB, GIB = 2 ** 20, 2 ** 30
# SM version -> NVLink generation of the SXM parts (interconnects.csv link_spec rows: NVLink 3
# "GPU: A100", NVLink 4 "H100/H200/GH200", NVLink 5 "B200/GB200").
_NVLINK_GEN_OF_SM = {80: 3, 90: 4, 100: 5, 103: 5}


# ---- one-node clusters for the measured systems ------------------------------------------------
def nccl_systems() -> list[str]:
    """aiconfigurator-core systems whose collective table is NCCL's (not oneCCL)."""
    out = []
    for s in profiles.aiconfigurator_systems():
        t = profiles.load_nccl_table(s)
        if t is not None and t.stamp.get("library") == "nccl":
            out.append(s)
    return out


def _system_yaml(system: str) -> dict:
    import yaml

    root = profiles._data_root()
    path = Path(root).parent / f"{system}.yaml" if root else None
    if path is None or not path.is_file():
        return {}
    return yaml.safe_load(path.read_text()) or {}


def system_device(system: str) -> Device:
    """The catalog device measured as `system`, else one described by the package's own
    systems/<system>.yaml (link rate, SM version; no FLOP figures needed here)."""
    for d in all_devices():
        if d.kernel_profile == system:
            return d
    cfg = _system_yaml(system)
    node, gpu = cfg.get("node") or {}, cfg.get("gpu") or {}
    intra, pcie = float(node.get("intra_node_bw", 0) or 0), float(node.get("pcie_bw", 0) or 0)
    gen = _NVLINK_GEN_OF_SM.get(int(gpu.get("sm_version", 0) or 0), 0)
    scale_up = f"NVLink {gen} (aiconfigurator-core {system}.yaml)" if intra > pcie and gen else \
        f"PCIe (aiconfigurator-core {system}.yaml)"
    return Device(name=system, vendor="NVIDIA", kind="gpu", peak_flops={}, hbm_bytes=None,
                  hbm_bytes_per_s=None, scale_up=scale_up, scale_up_bytes_per_s=intra or None,
                  power_w=None, price_per_hour=None, kernel_profile=system, efficiency_from=None)


def system_cluster(system: str) -> Cluster:
    """One node of `system` (its GPU count from the package's system file, at least the largest
    measured group)."""
    dev = system_device(system)
    table = profiles.load_nccl_table(system)
    measured = max(n for c in table.curves.values() for n in c)
    per_node = int((_system_yaml(system).get("node") or {}).get("num_gpus_per_node") or measured)
    per_node = max(per_node, measured)
    kind = "pcie" if dev.scale_up.lower().startswith("pcie") else "nvswitch"
    # the scale-up latency only matters for uncalibrated protocols; NCCL's LL128 step constants
    lat = 2.5e-6 if kind == "pcie" else 1.9e-6
    tiers = (Tier("scale-up", kind, per_node, float(dev.scale_up_bytes_per_s), lat),
             Tier("network", "rail-fat-tree", 1, 50e9, 4.0e-6))
    return Cluster(name=f"{system}-node", device=dev, devices_per_node=per_node, num_nodes=1,
                   tiers=tiers, nics_per_node=per_node, nic_bytes_per_s=50e9)


def _size(b: float) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if b >= scale:
            v = b / scale
            return f"{v:.0f}{unit}" if v == int(v) else f"{v:.2f}{unit}"
    return f"{b:.0f}B"


def _case(name, predicted, measured, unit, **extra) -> dict:
    err = 100.0 * (predicted - measured) / measured
    return {"name": name, "predicted": predicted, "measured": measured, "unit": unit,
            "error_pct": round(err, 2), **extra}


def table_cases(system: str) -> list[dict]:
    cluster = system_cluster(system)
    table = profiles.load_nccl_table(system)
    cases = []
    for op in TABLE_OPS:
        rows: dict = {}
        for n, s, sec in table.points(op):
            rows.setdefault((n, s), []).append(sec)
        for (n, s), secs in sorted(rows.items()):
            measured = float(np.mean(secs))
            c = collective_cost(cluster, op, n, 1, s)
            cases.append(_case(f"{system} {op} n={n} {_size(s)}", c.time_s, measured, "s",
                               group="tables", system=system, op=op, ranks=n, size_bytes=s,
                               algorithm=f"{c.algorithm}/{c.protocol}"))
    return cases


def _mape(cases: list[dict]) -> float | None:
    return round(float(np.mean([abs(c["error_pct"]) for c in cases])), 2) if cases else None


def system_summary(system: str, cases: list[dict]) -> dict:
    big = [c for c in cases if c["size_bytes"] >= MIB]
    small = [c for c in cases if c["size_bytes"] < MIB]
    per_op = {op: {"mape_ge_1mib_pct": _mape([c for c in big if c["op"] == op]),
                   "mape_lt_1mib_pct": _mape([c for c in small if c["op"] == op])} for op in TABLE_OPS}
    table = profiles.load_nccl_table(system)
    return {"system": system, "source": table.source, "device": system_device(system).name,
            "gpu_counts": sorted({c["ranks"] for c in cases}), "cases": len(cases),
            "mape_ge_1mib_pct": _mape(big), "mape_lt_1mib_pct": _mape(small),
            "max_error_pct": round(max(abs(c["error_pct"]) for c in cases), 2),
            "meets_target": (_mape(big) or 0) <= 10.0 and (_mape(small) or 0) <= 25.0, "ops": per_op}


# ---- published reference measurements -------------------------------------------------------------
def _rows(name: str) -> list[dict]:
    path = REFERENCE / name
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _variant(preset: str, nodes: int, **tier) -> Cluster:
    """A preset with its network tier's fields replaced (and the NIC rate with it)."""
    c = load_cluster(preset, nodes=nodes)
    last = replace(c.tiers[-1], **tier)
    nic = last.bytes_per_s * c.devices_per_node / c.nics_per_node
    return replace(c, tiers=c.tiers[:-1] + (last,), nic_bytes_per_s=nic)


def _ref(name, cluster, op, ranks, size, measured, unit, role, source, stride=1, algorithm="auto"):
    c = collective_cost(cluster, op, ranks, stride, size, algorithm=algorithm)
    predicted = c.time_s if unit == "s" else c.busbw_bytes_per_s / 1e9
    return _case(name, predicted, measured, unit, group="reference", role=role, source=source,
                 cluster=cluster.name, nodes=cluster.num_nodes, op=op, ranks=ranks, size_bytes=size,
                 algorithm=f"{c.algorithm}/{c.protocol}")


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"\d+(?:\.\d+)?", text)]


def reference_cases() -> tuple[list[dict], list[str]]:
    """Cases from the shared reference files; notes say what was skipped and why."""
    notes = []
    if not REFERENCE.is_dir():
        return [], [f"reference folder {REFERENCE} not found: reference cases skipped"]
    cases = []
    gtc = "nccl_collective_measurements.csv (NVIDIA GTC24 S62129 slide 12)"
    h100 = load_cluster("dgx-h100", nodes=1)
    for r in _rows("nccl_collective_measurements.csv"):
        system, size = r["system"], r["message_size_bytes"]
        if system.startswith("DGX H100 single node"):
            t = min(float(r["time_us_out_of_place"]), float(r["time_us_in_place"])) * 1e-6
            s = float(size)
            cases.append(_ref(f"DGX H100 8 GPU all_reduce {_size(s)} (NVIDIA sample)", h100, "all_reduce",
                              8, s, t, "s", "validation", "nccl_collective_measurements.csv (dgxc-benchmarking)"))
        elif system.startswith("GCP A3 Mega") and float(size) >= 256 * MIB:
            # A3 Mega: 8 GPU NICs, 1,600 Gb/s GPU-to-GPU = 200 Gb/s (25 GB/s) per GPU over
            # GPUDirect-TCPXO (cloud.google.com/compute/docs/gpus/gpu-network-bandwidth)
            a3 = _variant("dgx-h100", 2, kind="ethernet", bytes_per_s=25e9)
            t = min(float(r["time_us_out_of_place"]), float(r["time_us_in_place"])) * 1e-6
            cases.append(_ref(f"GCP A3 Mega 2x8 H100 all_reduce {_size(float(size))}", a3, "all_reduce",
                              16, float(size), t, "s", "validation",
                              "nccl_collective_measurements.csv (lessizzmore A3 Mega log)"))
        elif system.startswith("single 8x H200") and float(size) >= MIB:
            cases.append(_ref(f"8x H200 all_reduce {_size(float(size))} (torch bench)",
                              load_cluster("dgx-h200", nodes=1), "all_reduce", 8, float(size),
                              float(r["busbw_GBps_out_of_place"]), "GB/s busbw", "validation",
                              "nccl_collective_measurements.csv (stas00 all-reduce-8xH200)"))
    slide = {r["system"]: float(r["busbw_GBps_out_of_place"]) for r in _rows("nccl_collective_measurements.csv")
             if r["status"].startswith("exact (bar labels")}
    big = 8 * GIB  # the slide gives peaks without sizes: a large message
    for label, preset, nodes, ranks, stride, algo, role in (
            ("NVLink3 (A100)", "dgx-a100", 1, 8, 1, "auto", "validation"),
            ("NVLink4 (H100)", "dgx-h100", 1, 8, 1, "ring", "validation"),
            ("NVLink4 SHARP (H100; NVLS)", "dgx-h100", 1, 8, 1, "auto", "validation"),
            ("PCIe Gen4 (multi-GPU intra-node)", "pcie-a100", 1, 8, 1, "auto", "calibration source"),
            ("200Gb RDMA IB/RoCE (multi-node)", "dgx-a100", 2, 2, 8, "auto", "calibration source"),
            ("400Gb RDMA IB/RoCE (multi-node)", "dgx-h100", 2, 2, 8, "auto", "calibration source"),
            ("NVL3 + 8x 200Gb RDMA (DGX A100; multi-node)", "dgx-a100", 16, 128, 1, "auto", "validation"),
            ("NVL4 + 8x 400Gb RDMA (DGX H100; multi-node)", "dgx-h100", 16, 128, 1, "auto", "validation")):
        if label in slide:
            cases.append(_ref(f"GTC24 peak: {label}", load_cluster(preset, nodes=nodes), "all_reduce",
                              ranks, big, slide[label], "GB/s busbw", role, gtc, stride=stride, algorithm=algo))
    notes.append("not modelled, skipped: IB SHARP in-network reduction (GTC24 480 GB/s), 100GbE TCP "
                 "sockets; GCP A3 Mega below 256 MiB (GPUDirect-TCPXO's ~120 us stack latency is not "
                 "in the IB-based presets)")
    cases += _interconnect_cases()
    cases += _vidur_cases(notes)
    return cases, notes


def _interconnect_cases() -> list[dict]:
    src = "hardware/interconnects.csv measured rows (STAS_NET)"
    out = []
    h200, b200 = load_cluster("dgx-h200", nodes=1), load_cluster("dgx-b200", nodes=1)
    for r in _rows("hardware/interconnects.csv"):
        if r["category"] not in ("measured", ""):
            continue
        item, value, notes = r["item"], r["value"], r["notes"]
        if item == "NVLS (NVLink SHARP) all-reduce, 8x H200":
            out.append(_ref("8x H200 all_reduce 16GiB NVLS", h200, "all_reduce", 8, 16 * GIB,
                            float(value), "GB/s busbw", "validation", src))
            m = re.search(r"vs ([\d.]+) ring.*all-gather ([\d.]+), reduce-scatter ([\d.]+)", notes)
            if m:
                ring, ag, rs = map(float, m.groups())
                out.append(_ref("8x H200 all_reduce 16GiB ring", h200, "all_reduce", 8, 16 * GIB, ring,
                                "GB/s busbw", "validation", src, algorithm="ring"))
                out.append(_ref("8x H200 all_gather 16GiB", h200, "all_gather", 8, 16 * GIB, ag,
                                "GB/s busbw", "validation", src))
                out.append(_ref("8x H200 reduce_scatter 16GiB", h200, "reduce_scatter", 8, 16 * GIB, rs,
                                "GB/s busbw", "validation", src))
        elif item.startswith("NVLS all-reduce, 8x") and r["metric"].startswith("busbw_4/5/6/7/8"):
            cluster = h200 if "H200" in item else b200
            for n, v in zip((4, 5, 6, 7, 8), _numbers(value)):
                out.append(_ref(f"{item.split(',')[1].split('(')[0].strip()} all_reduce n={n} 8GiB", cluster,
                                "all_reduce", n, 8 * GIB, v, "GB/s busbw", "validation", src))
            m = re.search(r"ring-only 8 GPUs ([\d.]+)", notes)
            if m:
                out.append(_ref("8x B200 all_reduce 8GiB ring", b200, "all_reduce", 8, 8 * GIB,
                                float(m.group(1)), "GB/s busbw", "validation", src, algorithm="ring"))
        elif item == "NVLS all-reduce (NVIDIA GTC25 slide)":
            m = re.search(r"NVL72: ([\d.]+) -> ([\d.]+)", notes)
            if m:
                nvl = load_cluster("gb200-nvl72", nodes=1)
                ring, nvls = map(float, m.groups())
                out.append(_ref("GB200 NVL72 all_reduce 72 GPU ring", nvl, "all_reduce", 72, 8 * GIB, ring,
                                "GB/s busbw", "validation", src, algorithm="ring"))
                out.append(_ref("GB200 NVL72 all_reduce 72 GPU NVLS", nvl, "all_reduce", 72, 8 * GIB, nvls,
                                "GB/s busbw", "validation", src))
        elif item.startswith("1x p6-b200") and r["metric"] == "busbw_vs_size":
            b4 = load_cluster("dgx-b200", nodes=4)
            pairs = re.findall(r"(\d+)(KiB|MiB|GiB) ([\d.]+)", value)
            four = _numbers(notes.split(":", 1)[1]) if ":" in notes else []
            for i, (num, unit, v) in enumerate(pairs):
                size = int(num) * {"KiB": 1024, "MiB": MIB, "GiB": GIB}[unit]
                if size >= MIB:
                    out.append(_ref(f"8x B200 all_reduce {num}{unit}", b200, "all_reduce", 8, size, float(v),
                                    "GB/s busbw", "validation", src))
                    if i < len(four):  # AWS EFA v4, not InfiniBand: shown, not scored as validation
                        out.append(_ref(f"4x8 B200 all_reduce {num}{unit} (EFA v4; IB preset)", b4,
                                        "all_reduce", 32, size, four[i], "GB/s busbw", "other fabric", src))
        elif item == "8x A100 node all-reduce (NVLink3)":
            out.append(_ref("8x A100 all_reduce 8GiB", load_cluster("dgx-a100", nodes=1), "all_reduce", 8,
                            8 * GIB, float(value), "GB/s busbw", "validation", src))
        elif item.startswith("8x MI300X"):
            two, eight = _numbers(value)[:2]
            mi = load_cluster("mi300x", nodes=1)
            out.append(_ref("8x MI300X all_reduce n=2 4GiB", mi, "all_reduce", 2, 4 * GIB, two,
                            "GB/s busbw", "validation", src))
            out.append(_ref("8x MI300X all_reduce n=8 4GiB", mi, "all_reduce", 8, 4 * GIB, eight,
                            "GB/s busbw", "calibration source", src))
    return out


def _vidur_cases(notes: list) -> list[dict]:
    """vidur's intra-node profiles (its profiler reports bytes, so the CSV's size_elements_fp16
    column is the byte count). Multi-node rows are skipped: the testbed's network reaches 7.8
    GB/s send/recv between two A100 nodes, far from any preset."""
    rows = _rows("vidur_profiled_collectives.csv")
    if not rows:
        return []
    src = "vidur_profiled_collectives.csv (microsoft/vidur data/profiling/network)"
    out = []
    presets = {"a100_dgx": "dgx-a100", "h100_dgx": "dgx-h100"}
    wanted = {2 ** k for k in range(20, 28, 2)} | {4096, 65536}
    seen = set()
    for r in rows:
        preset = presets.get(r["system_profile"])
        n, dpn = int(r["num_workers"]), int(r["devices_per_node"])
        size = float(r["size_elements_fp16"])
        key = (r["system_profile"], r["collective"], n, dpn, size)
        if preset is None or size not in wanted or key in seen:
            continue
        seen.add(key)
        if r["collective"] == "all_reduce" and dpn == n:
            role, cluster = "validation", load_cluster(preset, nodes=1)
        elif r["collective"] == "send_recv" and dpn == 2:
            role, cluster = "calibration source", load_cluster(preset, nodes=1)
        else:
            continue
        out.append(_ref(f"vidur {r['system_profile']} {r['collective']} n={n} {_size(size)}", cluster,
                        r["collective"], n, size, float(r["time_ms_median"]) * 1e-3, "s", role, src))
    notes.append("vidur multi-node rows skipped (their testbed's inter-node send/recv is 7.8 GB/s on A100)")
    return out


# ---- the suite ------------------------------------------------------------------------------------
def validate_collectives() -> dict:
    systems = nccl_systems()
    cases, summaries = [], []
    for s in systems:
        cs = table_cases(s)
        cases += cs
        summaries.append(system_summary(s, cs))
    ref, notes = reference_cases()
    info = [c for c in ref if c["role"] == "other fabric"]
    ref = [c for c in ref if c["role"] != "other fabric"]
    cases += ref
    oneccl = [s for s in profiles.aiconfigurator_systems()
              if (t := profiles.load_nccl_table(s)) is not None and t.stamp.get("library") != "nccl"]
    if oneccl:
        notes.append(f"oneCCL tables ({', '.join(oneccl)}) are not NCCL's: not scored")
    table = [c for c in cases if c["group"] == "tables"]
    errs = [abs(c["error_pct"]) for c in cases]
    ref_valid = [c for c in ref if c["role"] == "validation"]
    return {
        "suite": "collectives",
        "source": "aiconfigurator-core 0.12.0 NCCL tables; validation/data/reference collective measurements",
        "cases": cases,
        "mape_pct": round(float(np.mean(errs)), 2) if errs else None,
        "max_error_pct": round(float(np.max(errs)), 2) if errs else None,
        "systems": summaries,
        "tables": {"cases": len(table),
                   "mape_ge_1mib_pct": _mape([c for c in table if c["size_bytes"] >= MIB]),
                   "mape_lt_1mib_pct": _mape([c for c in table if c["size_bytes"] < MIB])},
        "reference": {"cases": len(ref), "mape_pct": _mape(ref),
                      "validation_mape_pct": _mape(ref_valid),
                      "validation_max_error_pct": round(max((abs(c["error_pct"]) for c in ref_valid),
                                                            default=math.nan), 2) if ref_valid else None},
        "informational": info,  # measured on a fabric no preset models (AWS EFA): shown, not scored
        "notes": notes,
    }


def format_report(report: dict) -> str:
    lines = ["Collective latency: predicted vs measured NCCL tables (aiconfigurator-core 0.12.0)", "",
             f"{'system':<22} {'GPUs':<8} {'cases':>5} {'MAPE>=1MiB':>10} {'MAPE<1MiB':>9} {'max':>6}  "
             f"{'AR>=1M':>6} {'AG>=1M':>6} {'RS>=1M':>6}  target"]
    for s in report["systems"]:
        ops = s["ops"]
        lines.append(f"{s['system']:<22} {','.join(map(str, s['gpu_counts'])):<8} {s['cases']:>5} "
                     f"{s['mape_ge_1mib_pct']:>9.1f}% {s['mape_lt_1mib_pct']:>8.1f}% {s['max_error_pct']:>5.0f}%  "
                     + " ".join(f"{ops[o]['mape_ge_1mib_pct']:>5.1f}%" for o in TABLE_OPS)
                     + f"  {'ok' if s['meets_target'] else 'MISSED'}")
    t = report["tables"]
    lines += [f"{'all tables':<22} {'':<8} {t['cases']:>5} {t['mape_ge_1mib_pct']:>9.1f}% "
              f"{t['mape_lt_1mib_pct']:>8.1f}%", "",
              "Published measurements (validation/data/reference, sources in its README.md)", "",
              f"{'case':<58} {'predicted':>10} {'measured':>10} {'unit':<11} {'error':>7}  role"]
    for c in report["cases"]:
        if c["group"] != "reference":
            continue
        fmt = (lambda v: f"{v * 1e6:9.1f}us") if c["unit"] == "s" else (lambda v: f"{v:10.1f}")
        unit = "time" if c["unit"] == "s" else c["unit"]
        lines.append(f"{c['name'][:58]:<58} {fmt(c['predicted'])} {fmt(c['measured'])} {unit:<11} "
                     f"{c['error_pct']:+6.1f}%  {c['role']}")
    if report["informational"]:
        lines += ["", "Not scored (a fabric no preset models):"]
        for c in report["informational"]:
            lines.append(f"{c['name'][:58]:<58} {c['predicted']:10.1f} {c['measured']:10.1f} {c['unit']:<11} "
                         f"{c['error_pct']:+6.1f}%")
    r = report["reference"]
    lines += ["", f"reference: {r['cases']} cases, MAPE {r['mape_pct']}% (validation rows only: "
                  f"{r['validation_mape_pct']}%, max {r['validation_max_error_pct']}%)",
              f"overall: MAPE {report['mape_pct']:.1f}%   max |error| {report['max_error_pct']:.1f}%"]
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)
