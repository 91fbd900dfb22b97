"""Benchmark: the discrete-event engine on GPT-3 175B, 1024 A100 (tp=8, pp=8, dp=16, 64
micro-batches per step, interleaved v=2): wall time, events/s, and full-rank mode's time and
peak memory (max RSS of this process). Run: python tests/bench/bench_des.py"""
from __future__ import annotations

import resource
import time

from hwmodels.clusters import load_cluster
from simulator.analytic import estimate
from simulator.des import TrainingDES
from simulator.models import load_model
from simulator.training import TrainingJob, TrainingPlan


def main():
    c = load_cluster("dgx-a100", nodes=128)
    job = TrainingJob(load_model("gpt3-175b"), seq_len=2048, global_batch=1024)
    plan = TrainingPlan(dp=16, tp=8, pp=8, mb=1, vpp=2, schedule="interleaved")
    a = estimate(job, plan, c)  # loads tables, fills caches
    t0 = time.perf_counter()
    res = TrainingDES(job, plan, c).run()
    wall = time.perf_counter() - t0
    print(f"representative mode: step {res.step_time_s:.3f} s (analytic {a.step_time_s:.3f} s), "
          f"{res.units} units, {res.events} events, wall {wall:.3f} s, {res.events_per_s:,.0f} events/s")
    t0 = time.perf_counter()
    res = TrainingDES(job, plan, c, full_ranks=True).run()
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"full-rank mode (1024 ranks as {res.units} TP-group units): step {res.step_time_s:.3f} s, "
          f"{res.events} events, wall {wall:.2f} s, {res.events_per_s:,.0f} events/s, peak RSS {rss:.2f} GiB")


if __name__ == "__main__":
    main()
