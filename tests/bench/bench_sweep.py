"""Benchmark: `clusterplan sweep` executors (ui/sweep.py, simulator/executor.py).

1. Per-task overhead of each executor: a no-op task run N times (default 400) in this process
   (serial), on a local process pool of 1 and 2 workers, and on a local Ray with 2 CPUs; the
   overhead per task is wall x workers / N.
2. The 48-cell training sweep of tests/test_sweep.py (4 models x 3 clusters x 4 global batches,
   ~20 ms cells) and an 18-cell grid of heavier searches (70B/32B models on 8-32 DGX-H100 nodes,
   `plan train`) — or any spec given with --spec — serially in this process (the cells' own
   compute time, after one warm-up run), then on local pools of 1 and 2 workers (forked from this
   warm process) and on Ray (2 CPUs, cold workers, then again with warm ones). Per-cell overhead =
   (wall x workers - serial compute) / cells; speed-up = wall(1 worker) / wall(2 workers). Each
   measurement is the fastest of --repeat runs: on a shared machine the slower ones measure the
   neighbours.
3. An estimate of a 10,000-cell sweep on a 64-core Ray cluster from the measured numbers:
   start + warm-up of the workers + cells x (mean cell time + Ray overhead per task, the larger of
   the no-op and the sweep measurement) / 64, or the driver's task rate where that is the tighter
   bound (measured here with no-op tasks).

Every sweep writes into a fresh temporary folder (no cell is resumed). Run:
    python tests/bench/bench_sweep.py [--spec SPEC.yaml ...] [--tasks 400] [--cells 10000] [--cores 64]
                                      [--repeat 3] [--no-ray] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from simulator.executor import LocalExecutor, SerialExecutor, ray_available
from ui.sweep import load_spec, run_sweep

HEAVY = """\
name: train-heavy-18
kind: plan train
fixed: {cluster: dgx-h100, seq_len: 4096, top: 3, partition: 0}
grid:
  model: [llama3-70b, qwen3-32b, llama2-70b]
  nodes: [8, 16, 32]
  global_batch: [256, 512]
"""
SPEC = """\
name: train-48
kind: plan train
fixed: {seq_len: 2048, top: 1, partition: 0}
grid:
  model: [llama2-7b, llama3-8b, gpt3-6.7b, qwen3-8b]
  cluster: [dgx-a100, dgx-h100, dgx-h200]
  global_batch: [16, 32, 64, 128]
"""


def noop(x):
    return x


def task_overhead(ex, n: int, repeat: int = 1) -> dict:
    walls = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        ex.map(noop, range(n))
        walls.append(time.perf_counter() - t0)
    wall = min(walls)
    return {"executor": ex.describe()["executor"], "workers": ex.workers, "tasks": n, "wall_s": wall,
            "overhead_per_task_s": wall * ex.workers / n, "tasks_per_s": n / wall}


def sweep(spec, ex, label: str, repeat: int = 1) -> dict:
    """The fastest of `repeat` runs (this machine is shared: the others measure its neighbours)."""
    best = None
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            res = run_sweep(spec, Path(d) / "out", ex, report=False)
            wall = time.perf_counter() - t0
        if best is None or wall < best[0]:
            best = (wall, res)
    wall, res = best
    cells = [r["elapsed_s"] for r in res.rows if r["status"] == "ok"]
    return {"run": label, "workers": ex.workers, "cells": len(res.rows), "failed": len(res.failed),
            "wall_s": wall, "cell_s_sum": sum(cells), "cell_s_mean": statistics.fmean(cells) if cells else None,
            "cell_s_max": max(cells) if cells else None,
            "retries": sum(r["retries"] for r in res.rows), "rows": res.rows}


def measure(spec, a, use_ray: bool) -> dict:
    """Serial, local 1 and 2 workers, Ray cold and warm on one spec; the speed-up and the estimate."""
    out = {"spec": spec.name, "cells": len(spec.cells), "sweeps": []}
    # The cells' own compute, serially in this process, after a warm-up run (kernel tables and
    # model tables loaded; the forked local workers inherit them, Ray workers start cold).
    sweep(spec, SerialExecutor(), "warm-up")
    serial = sweep(spec, SerialExecutor(), "serial (this process)", a.repeat)
    out["sweeps"].append(serial)
    for jobs in (1, 2):
        out["sweeps"].append(sweep(spec, LocalExecutor(jobs), f"local, {jobs} worker(s)", a.repeat))
    if use_ray:
        from simulator.executor import RayExecutor
        t0 = time.perf_counter()
        ray_ex = RayExecutor(num_cpus=2)
        out["ray_start_s"] = time.perf_counter() - t0
        try:
            out["sweeps"].append(sweep(spec, ray_ex, "ray, 2 CPUs, cold workers"))
            out["sweeps"].append(sweep(spec, ray_ex, "ray, 2 CPUs, warm workers", a.repeat))
            out["ray_noop"] = task_overhead(ray_ex, a.tasks, a.repeat)
        finally:
            ray_ex.close()
    compute = serial["cell_s_sum"]
    for s in out["sweeps"]:
        s["overhead_per_cell_s"] = max(0.0, (s["wall_s"] * s["workers"] - compute) / s["cells"])
        s.pop("rows")
    by = {s["run"]: s for s in out["sweeps"]}
    out["speedup_local_1_to_2"] = by["local, 1 worker(s)"]["wall_s"] / by["local, 2 worker(s)"]["wall_s"]
    if use_ray:
        out["speedup_serial_to_ray_2_warm"] = serial["wall_s"] / by["ray, 2 CPUs, warm workers"]["wall_s"]
        cold, warm = by["ray, 2 CPUs, cold workers"], by["ray, 2 CPUs, warm workers"]
        ray_oh = out["ray_noop"]
        mean = serial["cell_s_mean"]
        per_task = max(warm["overhead_per_cell_s"], ray_oh["overhead_per_task_s"])
        compute_bound = a.cells * (mean + per_task) / a.cores
        driver_bound = a.cells / ray_oh["tasks_per_s"]
        warmup = max(0.0, cold["wall_s"] - warm["wall_s"])  # what cold workers add (imports, tables)
        out["estimate"] = {
            "cells": a.cells, "cores": a.cores, "mean_cell_s": mean, "ray_overhead_per_cell_s": per_task,
            "driver_tasks_per_s": ray_oh["tasks_per_s"], "start_s": out["ray_start_s"], "warmup_s": warmup,
            "wall_s": out["ray_start_s"] + warmup + max(compute_bound, driver_bound),
            "bound": "compute" if compute_bound >= driver_bound else "driver",
            "serial_wall_s": a.cells * mean}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", action="append", help="a sweep spec (repeatable; default: the 48-cell "
                                                     "training grid and an 18-cell grid of heavier searches)")
    ap.add_argument("--tasks", type=int, default=400, help="no-op tasks per executor (overhead)")
    ap.add_argument("--cells", type=int, default=10_000, help="cells of the extrapolated sweep")
    ap.add_argument("--cores", type=int, default=64, help="Ray cluster cores of the extrapolation")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the fastest counts")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        paths = a.spec or []
        if not paths:
            for name, text in (("train-48.yaml", SPEC), ("train-heavy-18.yaml", HEAVY)):
                paths.append(str(Path(d) / name))
                Path(paths[-1]).write_text(text)
        specs = [load_spec(p) for p in paths]
    use_ray = ray_available() and not a.no_ray
    out = {"machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
           "overhead": [task_overhead(SerialExecutor(), a.tasks, a.repeat)]
           + [task_overhead(LocalExecutor(j), a.tasks, a.repeat) for j in (1, 2)],
           "specs": [measure(spec, a, use_ray) for spec in specs]}
    ray_noop = [m.pop("ray_noop") for m in out["specs"] if "ray_noop" in m]
    out["overhead"] += ray_noop[-1:]
    if a.json:
        print(json.dumps(out, indent=1))
        return
    print(f"sweep benchmark: {out['machine']['cpus']} CPUs, load average {out['machine']['load_avg_1m']:.1f}")
    print("\nper-task overhead (no-op tasks, warm workers):")
    for o in out["overhead"]:
        print(f"  {o['executor']:<7} {o['workers']} worker(s)  {o['overhead_per_task_s'] * 1e3:8.3f} ms/task  "
              f"({o['tasks_per_s']:,.0f} tasks/s)")
    for m in out["specs"]:
        print(f"\nspec {m['spec']} ({m['cells']} cells):")
        for s in m["sweeps"]:
            print(f"  {s['run']:<28} wall {s['wall_s']:7.2f} s  ({s['failed']} failed, {s['retries']} retries)  "
                  f"mean cell {s['cell_s_mean']:.3f} s  overhead {s['overhead_per_cell_s'] * 1e3:7.1f} ms/cell")
        print(f"  speed-up, local 1 -> 2 workers: {m['speedup_local_1_to_2']:.2f}x"
              + (f"; serial -> Ray 2 CPUs (warm): {m['speedup_serial_to_ray_2_warm']:.2f}x"
                 if "speedup_serial_to_ray_2_warm" in m else ""))
        if "estimate" in m:
            e = m["estimate"]
            print(f"  estimate, {e['cells']:,} such cells on a {e['cores']}-core Ray cluster: {e['wall_s']:.0f} s "
                  f"({e['bound']}-bound: mean cell {e['mean_cell_s']:.3f} s + Ray overhead "
                  f"{e['ray_overhead_per_cell_s'] * 1e3:.1f} ms, start {e['start_s']:.1f} s, worker warm-up "
                  f"{e['warmup_s']:.1f} s; driver {e['driver_tasks_per_s']:,.0f} tasks/s) vs "
                  f"{e['serial_wall_s'] / 60:.1f} min serially")


if __name__ == "__main__":
    main()
