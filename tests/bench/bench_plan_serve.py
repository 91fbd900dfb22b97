"""Benchmark: wall time of a full `plan serve` search (issue #7).

Llama-3.1-8B on a pool of 16 × H100-SXM and 32 × A100-SXM-80G, 40 req/s, prompts uniform in
[128, 2048], outputs 256, SLO p90 TTFT <= 1 s and TPOT <= 50 ms: 8 capacity bisections (400
simulated requests per probe), the fleet ILP plus the two single-type comparisons, each fleet
verified by simulation. Capacity cache cleared first (cold search).
Target: <= 10 s. Run:
    python tests/bench/bench_plan_serve.py [--requests N] [--rate R]
"""
from __future__ import annotations

import argparse
import time

from planner import serve_search
from planner.serve_search import parse_devices, plan_serving
from simulator.models import load_model
from simulator.serving.workload import LengthDist, RateSchedule, ServingWorkload


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--rate", type=float, default=40.0)
    args = ap.parse_args()
    model = load_model("llama3.1-8b")
    pool = parse_devices("h100-sxm:16,a100-sxm-80g:32")
    wl = ServingWorkload(num_requests=args.requests, rate=RateSchedule.parse(str(args.rate)),
                         prompt_len=LengthDist.parse("uniform:128:2048"),
                         output_len=LengthDist.parse("256"), seed=0)
    serve_search._CAPACITY_CACHE.clear()
    t0 = time.perf_counter()
    doc = plan_serving(model, pool, wl, args.rate, 1.0, 0.05, 90, args.requests, 0)
    dt = time.perf_counter() - t0
    best = doc["fleets"][0]
    probes = sum(c["probes"] for c in doc["capacities"])
    print(f"plan serve: {dt:.2f} s wall ({len(doc['capacities'])} configs, {probes} DES probes, "
          f"{len(doc['fleets'])} fleets verified); best ${best['cost_per_hour']:.2f}/h "
          f"{' + '.join(str(r['count']) + 'x ' + r['device'] + ' tp=' + str(r['tp']) for r in best['replicas'])}, "
          f"solver {doc['solver_status']}")
    t0 = time.perf_counter()
    plan_serving(model, pool, wl, args.rate, 1.0, 0.05, 90, args.requests, 0)
    print(f"warm (cached capacities): {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
