"""`clusterplan validate throughput`: offline maximum throughput against TensorRT-LLM's published
table (validation/data/published/tensorrt_llm_v0.14_offline_throughput.csv), every cell of the
document's throughput table: Llama 3.1 8B, Llama 3 and 3.1 70B, Llama 3.1 405B, Mixtral 8x7B and
8x22B. Mistral 7B's cells are listed, not replayed: the document does not name the checkpoint,
and Mistral-7B-v0.1 attends through a 4,096-token sliding window that later versions dropped.

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
(`costs.iteration_cost`), and rows replayed on one process per core, the 568 replayed cells take
about three minutes on two cores.
"""
from __future__ import annotations

import csv
import json
import math
import os
import statistics
import time
from pathlib import Path

from hwmodels.errors import InputError
from simulator.executor import LocalExecutor

DATA = Path(__file__).resolve().parent / "data" / "published"
TABLE = DATA / "tensorrt_llm_v0.14_offline_throughput.csv"
AIC_TABLE = DATA / "aiconfigurator_0.12_throughput_trtllm_v0.14.csv"

# perf-overview.md (v0.14) "$num_requests" per input/output length
NUM_REQUESTS = {(128, 128): 30000, (128, 2048): 3000, (128, 4096): 1500, (2048, 128): 3000,
                (2048, 2048): 1500, (5000, 500): 1500, (1000, 1000): 3000, (500, 2000): 3000,
                (20000, 2000): 1000}
# The document's model names -> our presets. LLaMA v3 70B has Llama 3.1 70B's layers (their HF
# configs differ in RoPE scaling and context length only). The Mixtral engines split every expert
# over the TP ranks: trtllm-bench build passes only tp/pp, and TensorRT-LLM's Mapping sets
# moe_tp_size = tp and moe_ep_size = 1 when neither is given (tensorrt_llm/mapping.py).
MODELS = {"LLaMA v3.1 8B": "llama3.1-8b", "LLaMA v3.1 70B": "llama3.1-70b", "LLaMA v3 70B": "llama3-70b",
          "LLaMA v3.1 405B": "llama3-405b", "Mixtral 8x7B": "mixtral-8x7b", "Mixtral 8x22B": "mixtral-8x22b"}
# cells the document prints that are not replayed, with the reason
NOT_REPLAYED = {"Mistral 7B": "the document does not name the Mistral 7B checkpoint (v0.1 attends through a "
                              "4,096-token sliding window, v0.2 and later do not), so its layers are unknown"}
# the rows the offline-throughput issue validates on (Llama 3.1 8B and 70B), summarised apart
CORE_MODELS = ("LLaMA v3.1 8B", "LLaMA v3.1 70B")
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


def _replay_row(c: dict) -> dict:
    """replay(c), or {"error": reason} where the model refuses the configuration (a pool task)."""
    try:
        return replay(c)
    except InputError as e:
        return {"error": str(e)}


def run_suite(path: str | None = None, limit: int | None = None, models: tuple = (),
              jobs: int | None = None) -> dict:
    """Replay every row; cases (name, predicted, measured, unit, error_pct), MAPE overall, over
    the Llama 3.1 rows, per model × GPU × precision × TP group and per model × GPU × precision,
    mean signed bias. The rows are independent: they replay on `jobs` processes (default: one
    per CPU)."""
    t0 = time.perf_counter()
    aic = _aic_estimates()
    rows = read_rows(path)
    todo, refused, skipped = [], [], []
    for row in rows:
        if models and MODELS.get(row["model"]) not in models:
            continue
        if limit is not None and len(todo) >= limit:
            break
        label = f"{row['model']} {row['gpu']} {row['precision']} tp={row['tp']} {row['isl']}/{row['osl']}"
        if row["model"] in NOT_REPLAYED:
            skipped.append({"row": label, "reason": NOT_REPLAYED[row["model"]]})
            continue
        try:
            todo.append((row, case_of(row), label))
        except InputError as e:
            refused.append({"row": label, "reason": str(e)})
    workers = min(jobs or os.cpu_count() or 1, max(1, len(todo) // 8))
    if workers > 1:
        with LocalExecutor(workers) as pool:
            results = pool.map(_replay_row, [c for _, c, _ in todo])
    else:
        results = [_replay_row(c) for _, c, _ in todo]
    cases = []
    for (row, c, label), r in zip(todo, results):
        if "error" in r:
            refused.append({"row": label, "reason": r["error"]})
            continue
        a = aic.get((row["model"], row["precision"], row["gpu"], c["tp"], c["isl"], c["osl"]))
        cases.append({
            "name": f"{row['model']} {row['gpu']} {row['precision']} tp={c['tp']} {c['isl']}/{c['osl']}",
            "model": row["model"], "preset": c["model"], "cluster": c["cluster"], "dtype": c["dtype"],
            "group": " / ".join(c["label"]), "tp": c["tp"], "isl": c["isl"],
            "osl": c["osl"], "num_requests": c["num_requests"], "predicted": r["predicted"],
            "measured": c["measured"], "unit": "output tokens/s", "error_pct": _err(r["predicted"], c["measured"]),
            "aiconfigurator": a, "aiconfigurator_error_pct": _err(a, c["measured"]) if a else None,
            "max_batch_size": r["limits"]["max_batch_size"],
            "max_num_tokens": r["limits"]["max_num_tokens"], "preemptions": r["preemptions"]})
    return summarize(cases, refused, time.perf_counter() - t0, skipped)


def _stats(cs: list[dict]) -> dict:
    errs = [c["error_pct"] for c in cs]
    aic = [c["aiconfigurator_error_pct"] for c in cs if c["aiconfigurator_error_pct"] is not None]
    return {"rows": len(cs), "mape_pct": statistics.fmean(abs(e) for e in errs) if errs else math.nan,
            "bias_pct": statistics.fmean(errs) if errs else math.nan,
            "aic_rows": len(aic), "aic_mape_pct": statistics.fmean(abs(e) for e in aic) if aic else None,
            "aic_bias_pct": statistics.fmean(aic) if aic else None}


def summarize(cases: list[dict], refused: list[dict], wall_s: float, skipped: list[dict] = ()) -> dict:
    groups: dict = {}
    tp_groups: dict = {}
    models: dict = {}
    for c in cases:
        groups.setdefault(c["group"], []).append(c)
        tp_groups.setdefault(f"{c['group']} / tp={c['tp']}", []).append(c)
        models.setdefault(c["model"], []).append(c)
    errs = [abs(c["error_pct"]) for c in cases]
    overall = _stats(cases)
    return {"cases": cases, "refused": refused, "skipped": list(skipped),
            "core": _stats([c for c in cases if c["model"] in CORE_MODELS]),
            "by_model": {k: _stats(v) for k, v in models.items()},
            "mape_pct": overall["mape_pct"], "median_abs_error_pct": statistics.median(errs) if errs else math.nan,
            "max_error_pct": max(errs) if errs else math.nan, "bias_pct": overall["bias_pct"],
            "aiconfigurator": {"rows": overall["aic_rows"], "mape_pct": overall["aic_mape_pct"],
                               "bias_pct": overall["aic_bias_pct"]},
            "by_group": {k: _stats(v) for k, v in groups.items()},
            "by_group_tp": {k: _stats(v) for k, v in tp_groups.items()},
            "wall_s": wall_s}


# ---- the offline regimes file (simulator/regimes.py OFFLINE_REGIMES_FILE) ----------------------
def offline_regimes(doc: dict) -> dict:
    """Per offline regime (simulator.regimes.offline_regime_key) of a full `run_suite` document:
    its cells, MAPE, mean signed error, worst |error|, the TP sizes covered, and the cell with the
    fewest requests x tokens as the fingerprint tests/test_serving_regimes.py replays."""
    from hwmodels.clusters import load_cluster
    from simulator.models import load_model
    from simulator.regimes import offline_regime_key
    groups: dict = {}
    for c in doc["cases"]:
        key = offline_regime_key("trtllm-bench", load_cluster(c["cluster"]).device.name,
                                 load_model(c["preset"]), c["dtype"])
        groups.setdefault(key, []).append(c)
    out = {}
    for key, cs in sorted(groups.items()):
        st = _stats(cs)
        fp = min(cs, key=lambda c: (c["num_requests"] * (c["isl"] + c["osl"]), c["name"]))
        out[key] = {"rows": st["rows"], "mape_pct": round(st["mape_pct"], 2), "bias_pct": round(st["bias_pct"], 2),
                    "max_abs_pct": round(max(abs(c["error_pct"]) for c in cs), 2),
                    "tp": sorted({c["tp"] for c in cs}),
                    "fingerprints": [{"name": fp["name"], "predicted": fp["predicted"]}]}
    return out


def regimes_document(doc: dict) -> str:
    """The offline regimes file's text for a full `run_suite` document."""
    return json.dumps({"written_by": "clusterplan validate throughput --regimes",
                       "source": "TensorRT-LLM v0.14 perf-overview.md offline throughput table",
                       "regimes": offline_regimes(doc)}, indent=1, sort_keys=True) + "\n"


def _pct(v) -> str:
    return "      -" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+7.1f}"


def format_report(doc: dict, rows: bool = False) -> str:
    """The summary by group and model (the per-cell table first with `rows`, as `validate
    serving --rows` prints its rows)."""
    lines = []
    if rows:
        lines.append(f"{'row':<52}{'mbs':>6}{'mnt':>7}{'published':>11}{'ours':>10}{'err%':>8}"
                     f"{'AIC':>10}{'err%':>8}")
        for c in doc["cases"]:
            a = c["aiconfigurator"]
            lines.append(f"{c['name'][-52:]:<52}{c['max_batch_size']:>6}{c['max_num_tokens']:>7}"
                         f"{c['measured']:>11.1f}{c['predicted']:>10.1f}{c['error_pct']:>+8.1f}"
                         f"{(f'{a:.1f}' if a else '-'):>10}{_pct(c['aiconfigurator_error_pct']):>8}")
        lines.append("")
    lines += [f"{'group (model / GPU / precision / TP)':<56}{'rows':>5}{'MAPE%':>8}{'bias%':>8}"
              f"{'AIC MAPE%':>11}{'AIC bias%':>11}"]
    for key in ("by_group_tp", "by_group"):
        for k, g in doc[key].items():
            am = "-" if g["aic_mape_pct"] is None else f"{g['aic_mape_pct']:.1f}"
            lines.append(f"{k[:56]:<56}{g['rows']:>5}{g['mape_pct']:>8.1f}{g['bias_pct']:>+8.1f}"
                         f"{am:>11}{_pct(g['aic_bias_pct']):>11}")
        lines.append("")
    lines.append(f"{'model':<56}{'rows':>5}{'MAPE%':>8}{'bias%':>8}")
    for k, g in doc["by_model"].items():
        lines.append(f"{k:<56}{g['rows']:>5}{g['mape_pct']:>8.1f}{g['bias_pct']:>+8.1f}")
    lines.append("")
    a, core = doc["aiconfigurator"], doc["core"]
    if core["rows"]:
        lines.append(f"Llama 3.1 8B/70B rows {core['rows']}: MAPE {core['mape_pct']:.1f}%, "
                     f"mean bias {core['bias_pct']:+.1f}%")
    lines.append(f"rows {len(doc['cases'])}, refused {len(doc['refused'])}, not replayed "
                 f"{len(doc['skipped'])}: MAPE {doc['mape_pct']:.1f}%, "
                 f"median |error| {doc['median_abs_error_pct']:.1f}%, max {doc['max_error_pct']:.0f}%, "
                 f"mean bias {doc['bias_pct']:+.1f}%")
    if a["rows"]:
        lines.append(f"AIConfigurator 0.12 on its {a['rows']} rows: MAPE {a['mape_pct']:.1f}%, "
                     f"mean bias {a['bias_pct']:+.1f}%")
    for r in doc["refused"]:
        lines.append(f"  refused: {r['row']}: {r['reason']}")
    reasons: dict = {}
    for r in doc["skipped"]:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    for why, n in reasons.items():
        lines.append(f"  not replayed ({n} cells): {why}")
    if not rows:
        lines.append("(per-cell table: --rows)")
    lines.append(f"({doc['wall_s']:.1f} s)")
    return "\n".join(lines)
