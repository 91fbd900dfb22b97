"""Benchmark: time to score one training plan with the analytic engine.

Two figures: a cold plan (a plan never scored before: its layer ops are built and costed, kernel
and collective lookups may hit their caches) and a warm re-score. Run:
    python tests/bench/bench_analytic.py
"""
from __future__ import annotations

import itertools
import statistics
import time

from hwmodels.clusters import load_cluster
from simulator.analytic import estimate
from simulator.models import load_model
from simulator.training import TrainingJob, TrainingPlan


def plans(n_devices: int, layers: int, batch: int):
    for tp, pp, mb, rc, sp, z in itertools.product((1, 2, 4, 8), (1, 2, 4, 8, 16), (1, 2, 4),
                                                   ("none", "selective", "full"), (False, True), (0, 1)):
        if sp and tp == 1 or n_devices % (tp * pp) or layers % pp:
            continue
        dp = n_devices // (tp * pp)
        if batch % (dp * mb):
            continue
        yield TrainingPlan(dp=dp, tp=tp, pp=pp, mb=mb, recompute=rc, sp=sp, zero=z)


def main():
    cluster = load_cluster("dgx-a100", nodes=128)
    job = TrainingJob(load_model("gpt3-175b"), seq_len=2048, global_batch=1536)
    estimate(job, TrainingPlan(dp=16, tp=8, pp=8), cluster)  # load tables once
    ps = list(plans(cluster.num_devices, job.model.num_layers, job.global_batch))
    cold = []
    for p in ps:
        t0 = time.perf_counter()
        estimate(job, p, cluster)
        cold.append(time.perf_counter() - t0)
    warm = []
    for p in ps:
        t0 = time.perf_counter()
        estimate(job, p, cluster)
        warm.append(time.perf_counter() - t0)
    print(f"gpt3-175b on 1024 A100: {len(ps)} plans")
    print(f"cold plan: median {statistics.median(cold) * 1e3:.3f} ms, mean {statistics.mean(cold) * 1e3:.3f} ms, "
          f"p90 {sorted(cold)[int(0.9 * len(cold))] * 1e3:.3f} ms")
    print(f"warm plan: median {statistics.median(warm) * 1e3:.3f} ms, mean {statistics.mean(warm) * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
