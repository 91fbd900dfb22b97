"""Benchmark: topology graph build and collective costing.

Targets (issue #3): building the graph of 16,384 devices and costing one collective on it < 2 s;
costing a collective whose topology (group shape) was already placed < 50 µs. Run:
    python tests/bench/bench_collectives.py
"""
from __future__ import annotations

import statistics
import time

from hwmodels import profiles
from hwmodels.clusters import load_cluster
from hwmodels.collectives import candidates, collective_cost, collective_s, tier_calibration
from hwmodels.topology import build_topology, network_time, place_group

GIB = 2 ** 30


def _clear():
    for f in (build_topology, place_group, network_time, candidates, collective_s):
        f.cache_clear()


def cold(preset: str, nodes: int, op: str, size: int, stride: int, tables_loaded: bool) -> dict:
    """Seconds to build the graph and cost one collective from empty caches."""
    _clear()
    if not tables_loaded:
        profiles.load_nccl_table.cache_clear()
        from hwmodels import collectives
        collectives.calibrate.cache_clear()
    c = load_cluster(preset, nodes=nodes)
    t0 = time.perf_counter()
    topo = build_topology(c)
    t1 = time.perf_counter()
    cost = collective_cost(c, op, size, stride, GIB)
    t2 = time.perf_counter()
    return {"build_s": t1 - t0, "cost_s": t2 - t1, "total_s": t2 - t0, "links": topo.graph.number_of_edges(),
            "vertices": topo.graph.number_of_nodes(), "result": cost}


def warm(preset: str, nodes: int, op: str, size: int, stride: int, n: int = 2000) -> tuple[float, float]:
    """(median µs of collective_cost, median µs of collective_s) for new message sizes on an
    already-placed group shape."""
    c = load_cluster(preset, nodes=nodes)
    collective_cost(c, op, size, stride, GIB)
    a, b = [], []
    for i in range(n):
        t0 = time.perf_counter()
        collective_cost(c, op, size, stride, 1e6 + i)
        t1 = time.perf_counter()
        collective_s(c, op, size, stride, 2e6 + i)
        t2 = time.perf_counter()
        a.append(t1 - t0)
        b.append(t2 - t1)
    return statistics.median(a) * 1e6, statistics.median(b) * 1e6


def main():
    cases = [("dgx-h100", 2048, "all_reduce", 16384, 1), ("dgx-h100", 2048, "all_reduce", 2048, 8),
             ("dgx-h100", 2048, "all_to_all", 16384, 1), ("frontier", 2048, "all_reduce", 16384, 1),
             ("tpu-v5p", 4096, "all_reduce", 16384, 1)]
    print("cold: build the 16,384-device graph + cost one collective (empty caches)")
    for i, (preset, nodes, op, size, stride) in enumerate(cases):
        r = cold(preset, nodes, op, size, stride, tables_loaded=i > 0)
        res = r["result"]
        note = " (incl. loading + fitting the NCCL table)" if i == 0 else ""
        print(f"  {preset:9s} {size:5d} ranks stride {stride} {op:10s}: build {r['build_s']:.3f} s "
              f"({r['vertices']} vertices, {r['links']} links), cost {r['cost_s']:.3f} s, total "
              f"{r['total_s']:.3f} s{note}  -> {res.time_s * 1e3:.2f} ms {res.algorithm}/{res.protocol}, "
              f"busbw {res.busbw_bytes_per_s / 1e9:.0f} GB/s")
    c = load_cluster("dgx-h100")
    t0 = time.perf_counter()
    tier_calibration(c)
    print(f"  (NCCL-table calibration is cached per process: {time.perf_counter() - t0:.6f} s once loaded)")
    print("warm: a new message size on an already-placed group shape (median of 2000)")
    for preset, nodes, op, size, stride in cases[:3] + [("dgx-a100", 128, "all_reduce", 8, 1)]:
        a, b = warm(preset, nodes, op, size, stride)
        print(f"  {preset:9s} {size:5d} ranks stride {stride} {op:10s}: collective_cost {a:.1f} us, "
              f"collective_s {b:.1f} us")


if __name__ == "__main__":
    main()
