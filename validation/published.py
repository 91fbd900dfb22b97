"""Published training throughput vs the simulator's prediction (validation only: no constant is
fitted to these rows, DESIGN.md §5)."""
from __future__ import annotations

import csv
from pathlib import Path

from hwmodels.clusters import load_cluster
from hwmodels.errors import InputError
from simulator.analytic import estimate
from simulator.models import megatron_gpt
from simulator.training import TrainingJob, TrainingPlan

DATA = Path(__file__).parent / "data" / "published"
TABLE1 = DATA / "megatron2021_table1_weak_scaling_a100.csv"
MICRO_BATCHES = (1, 2, 4, 8)


def megatron2021_plans(job: TrainingJob, tp: int, pp: int, dp: int):
    """The plans Megatron-LM 2021 could have run for a Table 1 row: its TP and PP, full
    recompute, micro-batch size and interleaving free (Table 1 does not print them; §5.1 says
    the interleaved schedule is used where it helps)."""
    L = job.model.num_layers
    for mb in MICRO_BATCHES:
        if job.global_batch % (dp * mb):
            continue
        m = job.global_batch // (dp * mb)
        yield TrainingPlan(dp=dp, tp=tp, pp=pp, mb=mb, recompute="full", schedule="1f1b", zero=0)
        if pp > 1 and m % pp == 0:
            for v in range(2, L // pp + 1):
                if L % (pp * v) == 0:
                    yield TrainingPlan(dp=dp, tp=tp, pp=pp, mb=mb, recompute="full",
                                       schedule="interleaved", vpp=v, zero=0)


def megatron_table1() -> dict:
    cases = []
    with open(TABLE1) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        h, L, a = int(r["hidden_size"]), int(r["num_layers"]), int(r["attention_heads"])
        tp, pp, gpus = int(r["tensor_parallel"]), int(r["pipeline_parallel"]), int(r["num_gpus"])
        s, B, V = int(r["seq_len"]), int(r["global_batch_size"]), int(r["vocab_size"])
        model = megatron_gpt(f"gpt-{r['params_billion']}b", L, h, a, vocab_size=V, seq_len=s)
        # Megatron-LM 2021 software: fp16, unfused attention with dropout, gradient all-reduce
        # after backward (no overlap), no distributed optimizer.
        job = TrainingJob(model=model, seq_len=s, global_batch=B, dtype="fp16", flash_attention=False,
                          overlap_grad_reduce=False, overlap_param_gather=False, dropout=True)
        cluster = load_cluster("dgx-a100", nodes=gpus // 8)
        best = None
        for plan in megatron2021_plans(job, tp, pp, gpus // (tp * pp)):
            try:
                est = estimate(job, plan, cluster)
            except InputError:
                continue
            if est.fits and (best is None or est.step_time_s < best.step_time_s):
                best = est
        if best is None:
            raise RuntimeError(f"no plan fits for Table 1 row {r['params_billion']}B")
        measured = float(r["achieved_tflops_per_gpu"])
        pred = best.tflops_per_device
        cases.append({"name": f"GPT {r['params_billion']}B, {gpus} A100, tp={tp} pp={pp}",
                      "predicted": round(pred, 2), "measured": measured, "unit": "TFLOP/s per GPU",
                      "error_pct": round(100 * (pred - measured) / measured, 2),
                      "plan": best.plan.to_string(), "step_time_s": best.step_time_s,
                      "breakdown_s": best.breakdown_s})
    errs = [abs(c["error_pct"]) for c in cases]
    return {"suite": "published", "source": "Narayanan et al. 2021 (arXiv 2104.04473) Table 1",
            "cases": cases, "mape_pct": round(sum(errs) / len(errs), 2), "max_error_pct": round(max(errs), 2)}


def format_report(report: dict) -> str:
    lines = [f"{report['source']}: predicted vs published TFLOP/s per GPU", "",
             f"{'case':<38} {'predicted':>9} {'published':>9} {'error':>7}  plan (mb, schedule)"]
    for c in report["cases"]:
        lines.append(f"{c['name']:<38} {c['predicted']:9.1f} {c['measured']:9.1f} {c['error_pct']:+6.1f}%  {c['plan']}")
    lines += ["", f"MAPE {report['mape_pct']:.1f}%   max |error| {report['max_error_pct']:.1f}%"]
    return "\n".join(lines)
