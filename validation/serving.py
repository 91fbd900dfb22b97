"""Serving validation: replay the measured deployments of aiconfigurator-core's
`systems/silicon_sample.csv` with the serving DES and compare TTFT and TPOT.

The CSV (aiconfigurator-core 0.12.0, Apache-2.0; docs/design.md §5: validation data, never fitted) has
one row per measured deployment: model (`model_path`), GPU system, serving backend (vLLM,
SGLang, TensorRT-LLM) and version, precision (empty = the checkpoint's bf16), aggregated (`agg`)
or disaggregated (`disagg`) mode, input/output lengths (`isl`/`osl`), parallelism per worker,
and `batch_size`, which is the benchmark concurrency (its source string repeats it as
`silicon_concurrency`). `silicon_ttft_ms` and `silicon_tpot_ms` are the client-side means.

How the rows were measured: fixed-length synthetic prompts (`isl`, no spread) and outputs forced
to `osl` tokens (ignore_eos, min_tokens = max_tokens = osl), streamed, closed loop at the given
concurrency — the Dynamo/aiperf benchmark protocol (`--concurrency C --request-count 10C
--warmup-request-count 2C`, ai-dynamo/dynamo benchmarks/llm/perf.sh), TTFT and TPOT per request
as vLLM's benchmark_serving defines them, averaged. The replay does the same: C closed-loop
clients, 12·C requests, the first 2·C excluded; each backend's scheduler and memory defaults
(`engine_config`). The CSV does not record the KV-cache dtype. Rows with per-tensor FP8 GEMMs
(`gemm_quant_mode` fp8) ran FP8 checkpoints (NVIDIA ModelOpt FP8, e.g.
nvidia/Llama-3.1-8B-Instruct-FP8, whose hf_quant_config sets kv_cache_quant_algo FP8), so they
replay with an FP8 KV cache; block-scaled FP8 (`fp8_block`, online quantisation) and 16-bit
rows keep a 16-bit KV cache. Without chunked prefill (TensorRT-LLM) a prompt must fit one
iteration's token budget next to the running decodes; where isl + concurrency exceeds the
default 8192, the replay raises the budget to isl + concurrency (the default would starve
those prompts, which the measured TTFTs rule out).

Scope: dense models with a preset here (Llama-3.1-8B/70B, Qwen3-32B) on H100/H200 in aggregated
mode with tp·pp on one node. Every other row is listed with the reason it is not replayed.
"""
from __future__ import annotations

import concurrent.futures
import csv
import math
import os
import statistics
import time

from hwmodels.clusters import load_cluster
from hwmodels.errors import InputError
from simulator.models import load_model
from simulator.serving.costs import iteration_cost
from simulator.serving.engine import ReplicaGroup, ServingPlan, simulate
from simulator.serving.scheduler import Batch
from simulator.serving.workload import LengthDist, ServingWorkload

MODELS = {  # model_path in the CSV -> our preset
    "meta-llama/Llama-3.1-8B-Instruct": "llama3.1-8b",
    "nvidia/Llama-3.1-8B-Instruct-FP8": "llama3.1-8b",
    "meta-llama/Llama-3.1-8B": "llama3.1-8b",
    "meta-llama/Llama-3.1-70B": "llama3.1-70b",
    "meta-llama/Llama-3.1-70B-Instruct": "llama3.1-70b",
    "Qwen/Qwen3-32B": "qwen3-32b",
    "Qwen/Qwen3-32B-FP8": "qwen3-32b",
    "Qwen/Qwen3-8B": "qwen3-8b",
}
MOE_MODELS = {  # replayed with --scope all (MoE / MLA presets; outside the dense criterion)
    "Qwen/Qwen3-235B-A22B-FP8": "qwen3-235b-a22b",
    "Qwen/Qwen3-235B-A22B": "qwen3-235b-a22b",
    "deepseek-ai/DeepSeek-V3": "deepseek-v3",
    "deepseek-ai/DeepSeek-R1": "deepseek-v3",  # R1 shares V3's architecture (config.json)
}
SYSTEMS = {"h100_sxm": "dgx-h100", "h200_sxm": "dgx-h200"}
EXTRA_SYSTEMS = {"b200_sxm": "dgx-b200", "gb200": "gb200-nvl72"}  # --scope all
PRECISIONS = {"": "bf16", "bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "fp8": "fp8",
              "fp4": "fp4"}
BACKENDS = ("vllm", "sglang", "trtllm")
WARMUP_PER_SLOT = 2  # aiperf --warmup-request-count 2C
MEASURED_PER_SLOT = 10  # aiperf --request-count 10C


def silicon_csv_path() -> str:
    """`systems/silicon_sample.csv` of the installed aiconfigurator-core (located, not imported)."""
    import importlib.util
    spec = importlib.util.find_spec("aiconfigurator_core")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("aiconfigurator-core is not installed (pip install aiconfigurator-core==0.12.0)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "systems", "silicon_sample.csv")
    if not os.path.isfile(path):
        raise InputError(f"{path} not found in the installed aiconfigurator-core")
    return path


def read_rows(path: str | None = None) -> list[dict]:
    with open(path or silicon_csv_path(), newline="") as f:
        return list(csv.DictReader(f))


def _int(x: str) -> int | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return int(v) if math.isfinite(v) and v.is_integer() else None


def classify(row: dict, scope: str = "dense") -> tuple[dict | None, str]:
    """(replay settings, "") for a row the DES replays, else (None, reason). scope "dense":
    dense models on H100/H200 (the acceptance set); "all" adds MoE/MLA presets and B200/GB200."""
    if row.get("mode") != "agg":
        # disagg rows record per-pool batch sizes and worker counts but not the benchmark's
        # concurrency or request rate, so the load that produced their TTFT/TPOT is unknown
        return None, "disaggregated deployment: no client concurrency recorded"
    systems = SYSTEMS if scope == "dense" else {**SYSTEMS, **EXTRA_SYSTEMS}
    system = systems.get(row.get("system", ""))
    if system is None:
        return None, (f"system {row.get('system')} (" + ("only H100/H200 in the dense scope)"
                                                        if scope == "dense" else "no cluster preset)"))
    models = MODELS if scope == "dense" else {**MODELS, **MOE_MODELS}
    preset = models.get(row.get("model_path", ""))
    if preset is None:
        return None, (f"model {row.get('model_path')} (" + ("not a dense preset; --scope all adds "
                      "MoE presets)" if row.get("model_path") in MOE_MODELS and scope == "dense"
                      else "no preset for this architecture)"))
    prec = PRECISIONS.get((row.get("precision") or "").strip().lower())
    if prec is None:
        return None, f"precision {row.get('precision')}"
    quant = (row.get("gemm_quant_mode") or "").strip()
    if quant and quant not in ("fp8", "fp8_block", "bfloat16", "float16"):
        return None, f"GEMM quantisation {quant} (no measured kernel table)"
    backend = (row.get("backend") or "").strip().lower()
    if backend not in BACKENDS:
        return None, f"backend {backend}"
    tp, pp = _int(row.get("tp_size")), _int(row.get("pp_size"))
    c, isl, osl = _int(row.get("batch_size")), _int(row.get("isl")), _int(row.get("osl"))
    dp = _int(row.get("attention_dp_size")) or 1
    if not all((tp, pp, c, isl, osl)):
        return None, "missing parallelism, concurrency or lengths"
    if dp != 1:
        return None, f"attention data parallelism {dp}"
    if tp * pp > load_cluster(system).devices_per_node:
        return None, f"tp·pp = {tp * pp} spans nodes"
    if preset in MOE_MODELS.values():
        ep = _int(row.get("moe_ep_size")) or 1
        if ep not in (1, tp):
            return None, f"expert parallelism {ep} with tp {tp}"
    try:
        ttft = float(row["silicon_ttft_ms"]) / 1e3
        tpot = float(row["silicon_tpot_ms"]) / 1e3
    except (KeyError, TypeError, ValueError):
        return None, "no measured TTFT/TPOT"
    if not (ttft > 0 and tpot > 0):
        return None, "no measured TTFT/TPOT"
    dense = preset in MODELS.values() and system in SYSTEMS.values()
    ep = (_int(row.get("moe_ep_size")) or 1) if preset in MOE_MODELS.values() else 1
    return {"id": row.get("id", ""), "model": preset, "cluster": system, "dtype": prec,
            "engine": backend, "version": row.get("backend_version") or "", "tp": tp, "pp": pp,
            "ep": ep, "dense": dense,
            "concurrency": c, "isl": isl, "osl": osl, "quant": quant,
            "kv_dtype": "fp8" if quant == "fp8" else None,
            "ttft_s": ttft, "tpot_s": tpot}, ""


def replay(case: dict, seed: int = 0, slots: tuple = (WARMUP_PER_SLOT, MEASURED_PER_SLOT),
           protocol: str = "burst") -> dict:
    """Predicted mean TTFT and TPOT of one row ({"error": message} if the deployment cannot be
    built, e.g. the weights do not fit)."""
    try:
        return _replay(case, seed, slots, protocol)
    except InputError as e:
        return {"error": str(e)}


def _replay(case: dict, seed: int, slots: tuple, protocol: str) -> dict:
    model = load_model(case["model"])
    cluster = load_cluster(case["cluster"])
    c = case["concurrency"]
    max_tokens = None
    if case["engine"] == "trtllm" and case["isl"] + c > 8192:
        # Without chunked prefill a prompt must fit one iteration's token budget next to the
        # running decodes; TensorRT-LLM's default max_num_tokens (8192) would starve prompts
        # this long, so the measured deployment had a larger one: the smallest that serves it.
        max_tokens = case["isl"] + c
    plan = ServingPlan((ReplicaGroup(cluster, case["tp"], case["pp"], case.get("ep", 1)),),
                       max_tokens=max_tokens, engine=case["engine"], dtype=case["dtype"],
                       kv_dtype=case.get("kv_dtype"))
    ramp = 0.0
    if protocol == "staggered":  # clients start spread over one loaded request lifetime
        costs = iteration_cost(model, cluster, case["tp"], case["pp"], case.get("ep", 1),
                               case["dtype"], case.get("kv_dtype"), case["engine"])
        dec = Batch()
        dec.num_decode, dec.samples = c, c
        dec.decode_kv_tokens = c * (case["isl"] + case["osl"] // 2)
        ramp = costs.prefill_s(case["isl"]) + (case["osl"] - 1) * costs.iteration_s(dec)
    wl = ServingWorkload(num_requests=c * sum(slots), concurrency=c, warmup_requests=c * slots[0],
                         prompt_len=LengthDist.parse(str(case["isl"])),
                         output_len=LengthDist.parse(str(case["osl"])), seed=seed, ramp_up_s=ramp)
    rep = simulate(model, plan, wl)
    return {"ttft_s": rep.ttft_s["mean"], "tpot_s": rep.tpot_s["mean"],
            "preemptions": rep.preemptions, "kv_blocks": rep.replicas[0]["kv_blocks"]}


def _replay_task(a: tuple) -> dict:
    """replay(case, 0, slots, protocol) for a = (case, slots, protocol): one executor task."""
    case, slots, protocol = a
    return replay(case, 0, slots, protocol)


def _err(pred: float, meas: float) -> float:
    return 100.0 * (pred - meas) / meas


def run_suite(path: str | None = None, limit: int | None = None, quick: bool = False,
              jobs: int | None = None, scope: str = "dense", protocol: str = "burst", executor=None) -> dict:
    """Replay every row in scope; the document `validate serving --json` prints.

    protocol "burst": all C clients send their first request at t = 0 (aiperf concurrency mode);
    "staggered": their first requests spread over one request lifetime, i.e. a closed loop
    whose clients are out of phase (a sensitivity check: the measured TTFTs depend on how far
    the benchmark's clients drifted out of lock-step, which the CSV does not record).

    The rows replay on `executor` (simulator.executor) when given, else on `jobs` local worker
    processes (default: the CPU count); the document is the same either way."""
    if scope not in ("dense", "all"):
        raise InputError(f"scope {scope!r}; valid: dense, all")
    if protocol not in ("burst", "staggered"):
        raise InputError(f"protocol {protocol!r}; valid: burst, staggered")
    t0 = time.perf_counter()
    rows = read_rows(path)
    cases, skipped, reasons = [], [], {}
    slots = (1, 3) if quick else (WARMUP_PER_SLOT, MEASURED_PER_SLOT)
    for row in rows:
        case, why = classify(row, scope)
        if case is None:
            skipped.append({"id": row.get("id", ""), "reason": why})
            reasons[why] = reasons.get(why, 0) + 1
            continue
        cases.append(case)
    if limit is not None:
        cases = cases[:limit]
    results = []
    workers = min(jobs or os.cpu_count() or 1, max(1, len(cases) // 8))
    if executor is not None:  # rows are independent; results come back in row order
        preds = executor.map(_replay_task, [(case, slots, protocol) for case in cases])
    elif workers > 1:
        with concurrent.futures.ProcessPoolExecutor(workers) as pool:
            preds = list(pool.map(replay, cases, [0] * len(cases), [slots] * len(cases),
                                  [protocol] * len(cases), chunksize=8))
    else:
        preds = [replay(case, slots=slots, protocol=protocol) for case in cases]
    for case, pred in zip(cases, preds):
        if "error" in pred:
            why = "cannot be built here: " + pred["error"].split(": ", 1)[-1]
            skipped.append({"id": case["id"], "reason": why})
            reasons[why] = reasons.get(why, 0) + 1
            continue
        results.append({**case, "pred_ttft_s": pred["ttft_s"], "pred_tpot_s": pred["tpot_s"],
                        "ttft_error_pct": _err(pred["ttft_s"], case["ttft_s"]),
                        "tpot_error_pct": _err(pred["tpot_s"], case["tpot_s"]),
                        "preemptions": pred["preemptions"]})
    out_cases = []
    for r in results:
        out_cases.append({"name": f"{r['id']} ttft", "predicted": r["pred_ttft_s"],
                          "measured": r["ttft_s"], "unit": "s", "error_pct": r["ttft_error_pct"]})
        out_cases.append({"name": f"{r['id']} tpot", "predicted": r["pred_tpot_s"],
                          "measured": r["tpot_s"], "unit": "s", "error_pct": r["tpot_error_pct"]})
    errs = [abs(c["error_pct"]) for c in out_cases]
    te = [abs(r["ttft_error_pct"]) for r in results]
    pe = [abs(r["tpot_error_pct"]) for r in results]
    dte = [abs(r["ttft_error_pct"]) for r in results if r["dense"]]
    dpe = [abs(r["tpot_error_pct"]) for r in results if r["dense"]]
    groups = {}
    for r in results:
        key = f"{r['model']} {r['cluster']} {r['engine']} {r['dtype']}"
        g = groups.setdefault(key, {"rows": 0, "ttft": [], "tpot": []})
        g["rows"] += 1
        g["ttft"].append(abs(r["ttft_error_pct"]))
        g["tpot"].append(abs(r["tpot_error_pct"]))
    by_group = {k: {"rows": g["rows"], "median_abs_ttft_error_pct": statistics.median(g["ttft"]),
                    "median_abs_tpot_error_pct": statistics.median(g["tpot"])}
                for k, g in sorted(groups.items())}
    return {
        "cases": out_cases,
        "mape_pct": statistics.fmean(errs) if errs else None,
        "max_error_pct": max(errs) if errs else None,
        "median_abs_ttft_error_pct": statistics.median(te) if te else None,
        "median_abs_tpot_error_pct": statistics.median(pe) if pe else None,
        "mean_abs_ttft_error_pct": statistics.fmean(te) if te else None,
        "mean_abs_tpot_error_pct": statistics.fmean(pe) if pe else None,
        "dense_h100_h200": {"rows": len(dte),
                            "median_abs_ttft_error_pct": statistics.median(dte) if dte else None,
                            "median_abs_tpot_error_pct": statistics.median(dpe) if dpe else None},
        "rows_modelled": len(results), "rows_skipped": len(skipped), "scope": scope,
        "skip_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "by_group": by_group,
        "rows": results,
        "protocol": {"closed_loop": True, "start": protocol, "warmup_per_slot": slots[0],
                     "measured_per_slot": slots[1]},
        "source": silicon_csv_path() if path is None else path,
        "wall_s": time.perf_counter() - t0,
    }


def format_report(doc: dict) -> str:
    lines = [f"{'row':<58} {'eng':<6} {'C':>4} {'isl':>5} {'osl':>5} {'tp':>2} "
             f"{'TTFT ms':>9} {'pred':>9} {'err%':>7} {'TPOT ms':>8} {'pred':>8} {'err%':>7}"]
    for r in doc["rows"]:
        name = r["id"][-58:]
        lines.append(f"{name:<58} {r['engine']:<6} {r['concurrency']:>4} {r['isl']:>5} {r['osl']:>5} "
                     f"{r['tp']:>2} {r['ttft_s'] * 1e3:9.1f} {r['pred_ttft_s'] * 1e3:9.1f} "
                     f"{r['ttft_error_pct']:7.1f} {r['tpot_s'] * 1e3:8.2f} {r['pred_tpot_s'] * 1e3:8.2f} "
                     f"{r['tpot_error_pct']:7.1f}")
    lines.append("")
    lines.append(f"{'group':<46} {'rows':>5} {'|TTFT err| p50':>15} {'|TPOT err| p50':>15}")
    for k, g in doc["by_group"].items():
        lines.append(f"{k:<46} {g['rows']:>5} {g['median_abs_ttft_error_pct']:14.1f}% "
                     f"{g['median_abs_tpot_error_pct']:14.1f}%")
    lines.append("")
    dd = doc["dense_h100_h200"]
    if dd["rows"] and doc["scope"] != "dense":
        lines.append(f"dense H100/H200 rows {dd['rows']}: median |error| TTFT "
                     f"{dd['median_abs_ttft_error_pct']:.1f}%, TPOT {dd['median_abs_tpot_error_pct']:.1f}%")
    if doc["rows_modelled"]:
        lines.append(f"rows modelled {doc['rows_modelled']}, not modelled {doc['rows_skipped']}; "
                     f"median |error| TTFT {doc['median_abs_ttft_error_pct']:.1f}%, "
                     f"TPOT {doc['median_abs_tpot_error_pct']:.1f}%; MAPE {doc['mape_pct']:.1f}%, "
                     f"max {doc['max_error_pct']:.0f}%")
    lines.append("not modelled:")
    for why, n in doc["skip_reasons"].items():
        lines.append(f"  {n:5d}  {why}")
    lines.append(f"({doc['wall_s']:.1f} s)")
    return "\n".join(lines)
