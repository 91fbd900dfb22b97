"""Benchmark: wall time of the serving DES for 100,000 requests over 8 replicas.

Llama-3.1-8B, 8 × H100 replicas (tp=1, vLLM semantics), Poisson arrivals at 120 req/s (about
three quarters of the fleet's capacity), prompts uniform in [128, 2048] tokens, outputs uniform
in [16, 512].
Target: <= 20 s on a 2-core machine. Run:
    python tests/bench/bench_serving.py [--requests N] [--router R]
"""
from __future__ import annotations

import argparse
import time

from hwmodels.clusters import load_cluster
from simulator.models import load_model
from simulator.serving.engine import ServingSimulation, parse_serving_plan
from simulator.serving.workload import LengthDist, RateSchedule, ServingWorkload


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=120.0)
    ap.add_argument("--router", default="round_robin")
    args = ap.parse_args()
    model = load_model("llama3.1-8b")
    plan = parse_serving_plan("tp=1,replicas=8", load_cluster("dgx-h100"), router=args.router)
    wl = ServingWorkload(num_requests=args.requests, rate=RateSchedule.parse(str(args.rate)),
                         prompt_len=LengthDist.parse("uniform:128:2048"),
                         output_len=LengthDist.parse("uniform:16:512"), seed=0)
    t0 = time.perf_counter()
    sim = ServingSimulation(model, plan, wl)
    t1 = time.perf_counter()
    rep = sim.run()
    t2 = time.perf_counter()
    its = sum(r.iterations for r in sim.replicas)
    events = sum(len(e) for e in sim.recorder.it_end)
    print(f"serving DES: {args.requests:,} requests over 8 replicas ({args.router}) in {t2 - t0:.2f} s "
          f"(setup {t1 - t0:.2f} s, run {t2 - t1:.2f} s)")
    print(f"  simulated {rep.duration_s:,.0f} s of serving, {its:,} iterations in {events:,} engine events "
          f"({(t2 - t1) / max(events, 1) * 1e6:.1f} µs per event)")
    print(f"  throughput {rep.throughput_requests_per_s:.1f} req/s, {rep.throughput_tokens_per_s:,.0f} tok/s; "
          f"TTFT p50 {rep.ttft_s['p50'] * 1e3:.1f} ms p99 {rep.ttft_s['p99'] * 1e3:.1f} ms; "
          f"TPOT p50 {rep.tpot_s['p50'] * 1e3:.2f} ms; KV max {rep.kv_utilization['max'] * 100:.1f}%")
    print(f"  target <= 20 s: {'PASS' if t2 - t0 <= 20 else 'FAIL'}")


if __name__ == "__main__":
    main()
