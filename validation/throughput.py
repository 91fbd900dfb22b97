"""`clusterplan validate throughput`: offline maximum throughput against TensorRT-LLM's published
table (validation/data/published/tensorrt_llm_v0.14_offline_throughput.csv).

Every row is replayed as `trtllm-bench` ran it (simulator/serving/offline.py): the dataset of
`num_requests` requests at fixed ISL/OSL all queued at t = 0, the engine's max_batch_size and
max_num_tokens from trtllm-bench's tuning heuristic, FP8 rows with an FP8 KV cache ("If you
specify FP8 quantization, the KV cache will automatically be set to FP8 as well", perf-overview.md).
The request counts per ISL/OSL are those of the same document's "$num_requests" table.

AIConfigurator 0.12's estimates of the same cells (validation/data/published/
aiconfigurator_0.12_throughput_trtllm_v0.14.csv) are printed beside ours.

The published rows are never used to set a constant (docs/design.md §5).

Speed: each row is one serving DES whose decode iterations run as one event per stretch of
identical decodes (`Scheduler.decode_run_length`), and whose costs are cached on a geometric grid
(`IterationCost`); with one `IterationCost` per replica shape shared across rows
(`costs.iteration_cost`), the 214 rows take well under three minutes on one core.
"""
from __future__ import annotations

import csv
import math
import statistics
import time
from pathlib import Path

from hwmodels.errors import InputError

DATA = Path(__file__).resolve().parent / "data" / "published"
TABLE = DATA / "tensorrt_llm_v0.14_offline_throughput.csv"
AIC_TABLE = DATA / "aiconfigurator_0.12_throughput_trtllm_v0.14.csv"

# perf-overview.md (v0.14) "$num_requests" per input/output length
NUM_REQUESTS = {(128, 128): 30000, (128, 2048): 3000, (128, 4096): 1500, (2048, 128): 3000,
                (2048, 2048): 1500, (5000, 500): 1500, (1000, 1000): 3000, (500, 2000): 3000,
                (20000, 2000): 1000}
MODELS = {"LLaMA v3.1 8B": "llama3.1-8b", "LLaMA v3.1 70B": "llama3.1-70b"}
# the GPU column -> a cluster preset holding that GPU (8 per node)
GPUS = {"H200 141GB HBM3": "dgx-h200", "H100 80GB HBM3": "dgx-h100", "A100-SXM4-80GB": "dgx-a100",
        "A100-PCIE-80GB": "pcie-a100", "L40S": "l40s-server"}
PRECISIONS = {"FP8": ("fp8", "fp8"), "FP16": ("fp16", "fp16"), "BF16": ("bf16", "bf16"),
              "FP4": ("fp4", "fp8")}


def read_rows(path: Path | str | None = None) -> list[dict]:
    with open(path or TABLE, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _aic_estimates() -> dict:
    out = {}
    if not AIC_TABLE.exists():
        return out
    for r in read_rows(AIC_TABLE):
        key = (r["model"], r["precision"], r["gpu"], int(r["tp"]), int(r["isl"]), int(r["osl"]))
        try:
            out[key] = float(r["pred_tok_s"]) if r["status"] == "ok" and r["pred_tok_s"] else None
        except ValueError:
            out[key] = None
    return out


def case_of(row: dict) -> dict:
    """One replayable case from a CSV row, or InputError naming what is not expressible."""
    model = MODELS.get(row["model"])
    cluster = GPUS.get(row["gpu"])
    prec = PRECISIONS.get(row["precision"])
    if model is None or cluster is None or prec is None:
        raise InputError(f"row {row['model']}/{row['gpu']}/{row['precision']}: no preset for it")
    isl, osl = int(row["isl"]), int(row["osl"])
    n = NUM_REQUESTS.get((isl, osl))
    if n is None:
        raise InputError(f"row ISL/OSL {isl}/{osl}: perf-overview.md gives no request count")
    return {"model": model, "cluster": cluster, "dtype": prec[0], "kv_dtype": prec[1],
            "tp": int(row["tp"]), "pp": int(row.get("pp") or 1), "isl": isl, "osl": osl,
            "num_requests": n, "measured": float(row["total_output_throughput_tokens_per_s"]),
            "label": (row["model"], row["gpu"], row["precision"])}


def replay(case: dict, seed: int = 0, client: str = "trtllm-bench") -> dict:
    from hwmodels.clusters import load_cluster
    from simulator.models import load_model
    from simulator.serving.offline import run_offline
    doc = run_offline(client, load_model(case["model"]), load_cluster(case["cluster"]), case["tp"],
                      case["isl"], case["osl"], case["num_requests"], case["dtype"],
                      case["kv_dtype"], pp=case["pp"], seed=seed)
    return {"predicted": doc["throughput_tokens_per_s"], "limits": doc["offline_limits"],
            "preemptions": doc["preemptions"]}


def _err(pred: float, meas: float) -> float:
    return (pred - meas) / meas * 100.0


def run_suite(path: str | None = None, limit: int | None = None, models: tuple = ()) -> dict:
    """Replay every row; cases (name, predicted, measured, unit, error_pct), MAPE overall and per
    model × GPU × precision × TP group and per model × GPU × precision, mean signed bias."""
    t0 = time.perf_counter()
    aic = _aic_estimates()
    rows = read_rows(path)
    cases, refused = [], []
    for row in rows:
        if models and MODELS.get(row["model"]) not in models:
            continue
        if limit is not None and len(cases) >= limit:
            break
        try:
            c = case_of(row)
            r = replay(c)
        except InputError as e:
            refused.append({"row": f"{row['model']} {row['gpu']} {row['precision']} tp={row['tp']} "
                                   f"{row['isl']}/{row['osl']}", "reason": str(e)})
            continue
        a = aic.get((row["model"], row["precision"], row["gpu"], c["tp"], c["isl"], c["osl"]))
        cases.append({
            "name": f"{row['model']} {row['gpu']} {row['precision']} tp={c['tp']} {c['isl']}/{c['osl']}",
            "group": " / ".join(c["label"]), "tp": c["tp"], "isl": c["isl"], "osl": c["osl"],
            "num_requests": c["num_requests"], "predicted": r["predicted"], "measured": c["measured"],
            "unit": "output tokens/s", "error_pct": _err(r["predicted"], c["measured"]),
            "aiconfigurator": a, "aiconfigurator_error_pct": _err(a, c["measured"]) if a else None,
            "max_batch_size": r["limits"]["max_batch_size"],
            "max_num_tokens": r["limits"]["max_num_tokens"], "preemptions": r["preemptions"]})
    return summarize(cases, refused, time.perf_counter() - t0)


def _stats(cs: list[dict]) -> dict:
    errs = [c["error_pct"] for c in cs]
    aic = [c["aiconfigurator_error_pct"] for c in cs if c["aiconfigurator_error_pct"] is not None]
    return {"rows": len(cs), "mape_pct": statistics.fmean(abs(e) for e in errs) if errs else math.nan,
            "bias_pct": statistics.fmean(errs) if errs else math.nan,
            "aic_rows": len(aic), "aic_mape_pct": statistics.fmean(abs(e) for e in aic) if aic else None,
            "aic_bias_pct": statistics.fmean(aic) if aic else None}


def summarize(cases: list[dict], refused: list[dict], wall_s: float) -> dict:
    groups: dict = {}
    tp_groups: dict = {}
    for c in cases:
        groups.setdefault(c["group"], []).append(c)
        tp_groups.setdefault(f"{c['group']} / tp={c['tp']}", []).append(c)
    errs = [abs(c["error_pct"]) for c in cases]
    overall = _stats(cases)
    return {"cases": cases, "refused": refused,
            "mape_pct": overall["mape_pct"], "median_abs_error_pct": statistics.median(errs) if errs else math.nan,
            "max_error_pct": max(errs) if errs else math.nan, "bias_pct": overall["bias_pct"],
            "aiconfigurator": {"rows": overall["aic_rows"], "mape_pct": overall["aic_mape_pct"],
                               "bias_pct": overall["aic_bias_pct"]},
            "by_group": {k: _stats(v) for k, v in groups.items()},
            "by_group_tp": {k: _stats(v) for k, v in tp_groups.items()},
            "wall_s": wall_s}


def _pct(v) -> str:
    return "      -" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+7.1f}"


def format_report(doc: dict) -> str:
    lines = [f"{'row':<52}{'mbs':>6}{'mnt':>7}{'published':>11}{'ours':>10}{'err%':>8}"
             f"{'AIC':>10}{'err%':>8}"]
    for c in doc["cases"]:
        a = c["aiconfigurator"]
        lines.append(f"{c['name'][-52:]:<52}{c['max_batch_size']:>6}{c['max_num_tokens']:>7}"
                     f"{c['measured']:>11.1f}{c['predicted']:>10.1f}{c['error_pct']:>+8.1f}"
                     f"{(f'{a:.1f}' if a else '-'):>10}{_pct(c['aiconfigurator_error_pct']):>8}")
    lines += ["", f"{'group (model / GPU / precision / TP)':<56}{'rows':>5}{'MAPE%':>8}{'bias%':>8}"
                  f"{'AIC MAPE%':>11}{'AIC bias%':>11}"]
    for key in ("by_group_tp", "by_group"):
        for k, g in doc[key].items():
            am = "-" if g["aic_mape_pct"] is None else f"{g['aic_mape_pct']:.1f}"
            lines.append(f"{k[:56]:<56}{g['rows']:>5}{g['mape_pct']:>8.1f}{g['bias_pct']:>+8.1f}"
                         f"{am:>11}{_pct(g['aic_bias_pct']):>11}")
        lines.append("")
    a = doc["aiconfigurator"]
    lines.append(f"rows {len(doc['cases'])}, refused {len(doc['refused'])}: MAPE {doc['mape_pct']:.1f}%, "
                 f"median |error| {doc['median_abs_error_pct']:.1f}%, max {doc['max_error_pct']:.0f}%, "
                 f"mean bias {doc['bias_pct']:+.1f}%")
    if a["rows"]:
        lines.append(f"AIConfigurator 0.12 on its {a['rows']} rows: MAPE {a['mape_pct']:.1f}%, "
                     f"mean bias {a['bias_pct']:+.1f}%")
    for r in doc["refused"]:
        lines.append(f"  refused: {r['row']}: {r['reason']}")
    lines.append(f"({doc['wall_s']:.1f} s)")
    return "\n".join(lines)
