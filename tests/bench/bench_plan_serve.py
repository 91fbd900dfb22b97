"""Benchmark: wall time of full `plan serve` searches (issue #7).

1. The issue's case: Qwen3-32B on up to 16 H100-SXM, prompts 4000 and outputs 500 tokens, SLO p90
   TTFT <= 2 s and TPOT <= 50 ms, aggregated and disaggregated (`--disagg auto`): 12 capacity
   bisections (tp 1/2/4/8 × both/prefill/decode, 400 simulated requests per probe), two fleet
   ILPs, each fleet verified by simulation, two extra fleets for the Pareto front. Target: <= 3 s.
2. A mixed pool: Llama-3.1-8B on 16 H100-SXM + 32 A100-SXM-80G, 40 req/s, prompts uniform in
   [128, 2048], outputs 256, SLO p90 TTFT <= 1 s and TPOT <= 50 ms.

Each search runs cold (capacity cache cleared) in this process, timed from the call to the
returned document, so kernel-table loading is included; the `clusterplan plan serve` command adds
the interpreter's start and imports (~0.7 s here).

With `--aiconfigurator BIN` (the `aiconfigurator` command of AIConfigurator 0.12, installed
elsewhere: it is not a dependency), the same Qwen3-32B question is put to `aiconfigurator cli
default` in the same run and its wall time and chosen plans are printed beside ours. Run:
    python tests/bench/bench_plan_serve.py [--rate R] [--jobs N] [--aiconfigurator /path/to/aiconfigurator]
"""
from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
import time

from planner import serve_search
from planner.serve_search import parse_devices, plan_serving
from simulator.models import load_model
from simulator.serving.workload import LengthDist, RateSchedule, ServingWorkload


def run(model_name, devices, rate, prompt, output, ttft, tpot, jobs, disagg="auto"):
    model = load_model(model_name)
    pool = parse_devices(devices)
    wl = ServingWorkload(num_requests=400, rate=RateSchedule.parse(str(rate)),
                         prompt_len=LengthDist.parse(prompt), output_len=LengthDist.parse(output), seed=0)
    serve_search._CAPACITY_CACHE.clear()
    t0 = time.perf_counter()
    doc = plan_serving(model, pool, wl, rate, ttft, tpot, 90, 400, 0, disagg=disagg, jobs=jobs)
    dt = time.perf_counter() - t0
    probes = sum(c["probes"] for c in doc["capacities"])
    print(f"{model_name} on {devices}, {rate:g} req/s, isl {prompt} osl {output}, disagg {disagg}: "
          f"{dt:.2f} s wall ({len(doc['capacities'])} configs, {probes} DES probes, "
          f"{len(doc['fleets'])} fleets + {len(doc['pareto'])} on the Pareto front)")
    for f in doc["fleets"]:
        reps = " + ".join(f"{r['count']}x {r['device']} tp={r['tp']}" + ("" if r["role"] == "both" else f" {r['role']}")
                          for r in f["replicas"])
        print(f"   {f['mode']:<14} ${f['cost_per_hour']:7.2f}/h  {reps:<60} p90 TTFT "
              f"{f['predicted']['ttft_s'] * 1e3:6.0f} ms  TPOT {f['predicted']['tpot_s'] * 1e3:5.1f} ms  "
              f"{f['tokens_per_s_per_device']:6.0f} tok/s/dev  {'met' if f['meets_slo'] else 'MISSED'}")
    return doc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=4.0, help="req/s for the Qwen3-32B case")
    ap.add_argument("--jobs", type=int, default=None, help="worker processes (default: CPU count)")
    ap.add_argument("--aiconfigurator", metavar="BIN", help="also time `BIN cli default` on the Qwen3-32B case")
    args = ap.parse_args()
    run("qwen3-32b", "h100-sxm:16", args.rate, "4000", "500", 2.0, 0.05, args.jobs)
    run("llama3.1-8b", "h100-sxm:16,a100-sxm-80g:32", 40.0, "uniform:128:2048", "256", 1.0, 0.05, args.jobs)
    if args.aiconfigurator:
        aiconfigurator(args.aiconfigurator)


def aiconfigurator(binary: str) -> None:
    """`aiconfigurator cli default` on the Qwen3-32B question: wall time and its best plans."""
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        proc = subprocess.run([binary, "cli", "default", "--model-path", "Qwen/Qwen3-32B", "--total-gpus", "16",
                               "--system", "h100_sxm", "--backend", "vllm", "--isl", "4000", "--osl", "500",
                               "--ttft", "2000", "--tpot", "50", "--save-dir", out, "--no-color"],
                              capture_output=True, text=True)
        dt = time.perf_counter() - t0
    text = proc.stdout + proc.stderr
    print(f"aiconfigurator cli default (Qwen3-32B, 16 H100, isl 4000 osl 500, TTFT 2 s, TPOT 50 ms): "
          f"{dt:.2f} s wall, exit {proc.returncode}")
    for pat in (r"Best Experiment Chosen:[^\n]*", r"Per-GPU Throughput:[^\n]*", r"Request Rate:[^\n]*",
                r"TTFT: [^\n]*", r"TPOT: [^\n]*"):
        m = re.search(pat, text)
        if m:
            print(f"   {m.group(0).strip()}")
    for mode in ("agg", "disagg"):  # the top row of each table
        m = re.search(mode + r" Top Configurations:.*?\n\|\s+1\s+\|([^\n]*)", text, re.S)
        if m:
            print(f"   {mode} #1: {' '.join(m.group(1).split())}")


if __name__ == "__main__":
    main()
