"""Serving validation: replay the measured deployments of aiconfigurator-core's
`systems/silicon_sample.csv` with the serving DES, each with the benchmark client that measured
it, and compare TTFT and TPOT.

The CSV (aiconfigurator-core 0.12.0, Apache-2.0; docs/design.md §5: validation data, never fitted) has
one row per measured deployment: model (`model_path`), GPU system, serving backend (vLLM,
SGLang, TensorRT-LLM) and version, precision, aggregated (`agg`) or disaggregated (`disagg`)
mode, nominal input/output lengths (`isl`/`osl`), parallelism per worker (and per prefill/decode
pool when disaggregated), and the client concurrency (`batch_size` for agg rows;
`silicon_concurrency=N` in `silicon_data_source` and `_cN_` in the id for every row).
`silicon_ttft_ms` and `silicon_tpot_ms` are the client-side means; they are read only to compare
(tests/test_serving_validation.py checks that changing them changes no prediction).

The client (simulator/serving/clients.py, docs/modeling.md "Benchmark clients") is picked from
the row's data source: the InferenceMAX/InferenceX dumps ran `benchmark_serving.py` (10·C prompts
through C slots, lengths uniform in [0.8, 1] x nominal, TTFT clock at slot acquisition, means; a
drained 2·C warm-up from 2026-01-21); the internal runs ran aiperf (fixed lengths, 10·C requests
after a drained 2·C warm-up). A drained warm-up leaves the server idle, so the measured phase is
simulated from an idle server. The CSV does not record the KV-cache dtype: rows with per-tensor
FP8 GEMMs (`gemm_quant_mode` fp8: ModelOpt FP8 checkpoints such as
nvidia/Llama-3.1-8B-Instruct-FP8, whose hf_quant_config sets kv_cache_quant_algo FP8) and NVFP4
rows replay with an FP8 KV cache; block-scaled FP8 (`fp8_block`) and 16-bit rows keep a 16-bit
KV cache. Without chunked prefill (TensorRT-LLM) a prompt must fit one iteration's token budget
next to the running decodes; where isl + concurrency exceeds the default 8192, the replay raises
the budget to isl + concurrency (the default would starve those prompts). TensorRT-LLM rows of
the internal (aiperf) population were deployed by AIConfigurator's generator: max_batch_size =
concurrency, max_num_tokens = concurrency + isl + 1500, chunked prefill off, overlap scheduler on,
free_gpu_memory_fraction 0.80 (`aic_trtllm_limits`, `aic_generator_settings`). InferenceMAX rows
replay with what their launch scripts state: vLLM with async scheduling, TensorRT-LLM
Llama-3.1-70B on H200 with max_num_tokens 16384 and, for 1k/1k below TP 8, batch waiting
(`inferencemax_settings`). The generator's vLLM and SGLang rules are dated only to windows and
the rows are undated, so `deployment="recorded"` (the default) leaves them out;
`"recorded+generator"` adds them (all three engines), `"aic-generator"` keeps only the
generator's rules (all three engines), `"defaults"` replays every row with the engine defaults.

Rows with attention data parallelism replay on an attention-DP replica (engine.DPReplica). Rows
that cannot be modelled (architectures the layer description cannot express, weight-only INT4
GEMMs, ...) are listed grouped by reason.
"""
from __future__ import annotations

import concurrent.futures
import csv
import functools
import json
import math
import os
import re
import statistics
import time
from pathlib import Path

from hwmodels.clusters import load_cluster
from hwmodels.errors import InputError
from simulator.models import load_model
from simulator.serving.clients import (PROMPTS_PER_SLOT, aiperf, bench_serving, bench_serving_warmups,
                                       client_for_row)
from simulator.serving.engine import ReplicaGroup, ServingPlan, simulate

MODELS = {  # model_path in the CSV -> our preset (dense)
    "meta-llama/Llama-3.1-8B-Instruct": "llama3.1-8b",
    "nvidia/Llama-3.1-8B-Instruct-FP8": "llama3.1-8b",
    "meta-llama/Llama-3.1-8B": "llama3.1-8b",
    "meta-llama/Llama-3.1-70B": "llama3.1-70b",
    "meta-llama/Llama-3.1-70B-Instruct": "llama3.1-70b",
    "Qwen/Qwen3-32B": "qwen3-32b",
    "Qwen/Qwen3-32B-FP8": "qwen3-32b",
    "nvidia/Qwen3-32B-NVFP4": "qwen3-32b",
    "Qwen/Qwen3-8B": "qwen3-8b",
}
MOE_MODELS = {  # MoE / MLA presets
    "Qwen/Qwen3-235B-A22B-FP8": "qwen3-235b-a22b",
    "Qwen/Qwen3-235B-A22B": "qwen3-235b-a22b",
    "Qwen/Qwen3-30B-A3B": "qwen3-30b-a3b",
    "deepseek-ai/DeepSeek-V3": "deepseek-v3",
    "deepseek-ai/DeepSeek-R1": "deepseek-v3",  # R1 shares V3's architecture (config.json)
    "nvidia/DeepSeek-R1-NVFP4": "deepseek-v3",
    "nvidia/DeepSeek-V3.1-NVFP4": "deepseek-v3",  # V3.1: V3's architecture (HF config.json)
    "moonshotai/Kimi-K2.5": "kimi-k2.5",
    "MiniMaxAI/MiniMax-M2.5": "minimax-m2.5",
    "openai/gpt-oss-120b": "gpt-oss-120b",
    "openai/gpt-oss-20b": "gpt-oss-20b",
    "Qwen/Qwen3.5-397B-A17B": "qwen3.5-397b-a17b",  # Gated DeltaNet + gated attention, MoE
}
# Architectures the layer description (attention + MLP/MoE blocks, dense attention) cannot express.
REFUSED_MODELS = {
    "zhipuai/GLM-5": "GLM-5: DeepSeek sparse attention (an indexer picks the keys each query "
                     "reads; HF zai-org/GLM-5 config.json); no sparse attention in the layer description",
}
FAMILY = {"llama3.1-8b": "Llama-3.1", "llama3.1-70b": "Llama-3.1", "qwen3-32b": "Qwen3 dense",
          "qwen3-8b": "Qwen3 dense", "qwen3-235b-a22b": "Qwen3 MoE", "qwen3-30b-a3b": "Qwen3 MoE",
          "deepseek-v3": "DeepSeek-V3/R1", "kimi-k2.5": "Kimi-K2.5", "minimax-m2.5": "MiniMax-M2.5",
          "gpt-oss-120b": "GPT-OSS", "gpt-oss-20b": "GPT-OSS", "qwen3.5-397b-a17b": "Qwen3.5"}
SYSTEMS = {"h100_sxm": "dgx-h100", "h200_sxm": "dgx-h200", "b200_sxm": "dgx-b200",
           "b300_sxm": "dgx-b300", "gb200": "gb200-nvl72", "gb300": "gb300-nvl72"}
DENSE_SYSTEMS = ("h100_sxm", "h200_sxm")  # the acceptance set: dense agg rows on H100/H200
PRECISIONS = {"": "bf16", "bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "fp8": "fp8",
              "fp4": "fp4", "int4": "int4"}
QUANTS = {"": None, "bfloat16": None, "float16": None, "fp8": "fp8", "fp8_block": None,
          "nvfp4": "fp8"}  # GEMM quant mode -> KV-cache dtype of the checkpoint (module docstring)
# MoE quant mode of a row -> the fused-MoE kernel dtype its experts run (profiles.MoETable)
MOE_QUANTS = {"": None, "bfloat16": None, "float16": None, "fp8": "fp8", "fp8_block": "fp8_block",
              "nvfp4": "nvfp4", "int4_wo": "int4_wo"}
# Checkpoints that quantise only the routed experts and keep attention, router, embeddings and LM
# head in 16 bits, whatever the row's precision label says (their KV cache stays 16-bit too):
#   GPT-OSS: MXFP4 experts, which the preset knows (`ModelSpec.expert_quant`; the engine picks
#     the kernel: `costs.checkpoint_moe_quant`), so no override ("");
#   Kimi-K2.5 int4: INT4 weight-only experts (moonshotai/Kimi-K2.5 config.json compressed-tensors
#     pack-quantized, targets the expert Linear layers).
EXPERT_ONLY_QUANT = {("openai/gpt-oss-120b", "fp4"): "", ("openai/gpt-oss-20b", "fp4"): "",
                     ("moonshotai/Kimi-K2.5", "int4"): "int4_wo"}
# FP8 checkpoints whose weights carry one scale per 128x128 block (HF config.json
# quantization_config weight_block_size [128, 128]): their experts run the engines' block-scaled
# FP8 MoE kernels, however coarsely a row labels them ("fp8").
BLOCK_FP8_CHECKPOINTS = ("Qwen/Qwen3-235B-A22B-FP8", "deepseek-ai/DeepSeek-V3", "deepseek-ai/DeepSeek-R1",
                         "MiniMaxAI/MiniMax-M2.5", "Qwen/Qwen3.5-397B-A17B")
BACKENDS = ("vllm", "sglang", "trtllm")
AIC_ESTIMATES = Path(__file__).parent / "data" / "serving" / "aiconfigurator_0.12_estimates_dense_h100_h200.csv"
# What InferenceX's benchmark matrix listed, when each row was measured, for what its export leaves
# out: the pools, worker counts and speculative decoding of disaggregated rows, and whether an
# aggregated run used MTP (validation/tools/inferencex_workers.py; README in that folder); and the
# rows whose point the matrix lists under several deployments ("ambiguous")
INFERENCEX = {"disagg": Path(__file__).parent / "data" / "serving" / "inferencex_disagg_workers.csv",
              "agg": Path(__file__).parent / "data" / "serving" / "inferencex_agg_spec.csv",
              "ambiguous": Path(__file__).parent / "data" / "serving" / "inferencex_ambiguous.csv"}
MEASURED_COLUMNS = ("silicon_ttft_ms", "silicon_tpot_ms")
# Replay cost bound: output tokens a row's measured phase generates (10·C·osl). The DES cost
# grows with them; rows outside the dense H100/H200 acceptance set (which always replays in full)
# beyond the bound are listed ("replay exceeds the per-row budget") so that the default suite
# stays near a minute on two cores (measured: docs/modeling.md §4.6). A run-time budget, not a
# model constant: --max-row-tokens raises it (without a bound: 4,071 rows, about 10 minutes).
MAX_ROW_TOKENS = 1_048_576


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
    p = path or silicon_csv_path()
    if not os.path.isfile(p):
        raise InputError(f"measured-rows file {p!r} not found")
    with open(p, newline="") as f:
        return list(csv.DictReader(f))


def _int(x) -> int | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return int(v) if math.isfinite(v) and v.is_integer() else None


def row_concurrency(row: dict) -> int | None:
    """The client concurrency: `silicon_concurrency=N` in the source string, else `_cN_` in the
    id, else (agg rows) `batch_size`."""
    m = re.search(r"silicon_concurrency=(\d+)", row.get("silicon_data_source") or "")
    if m:
        return int(m.group(1))
    m = re.search(r"_c(\d+)_", row.get("id") or "")
    if m:
        return int(m.group(1))
    return _int(row.get("batch_size")) if row.get("mode") == "agg" else None


# Exports that label some aggregated EP rows with tp_size = tp·ep and moe_tp_size = tp: every such
# row that the 2026-03-25 export also holds has the same TTFT there (to 0.1 ms) under tp =
# moe_tp_size, moe_tp 1, ep = moe_ep_size (e.g. Qwen3.5-397B, H200, c4, 1024/1024: 307.79 ms,
# tp_size 64 with moe_tp 8 x ep 8 in 2026-04-06.csv, tp_size 8 with moe_tp 1 x ep 8 in
# 2026-03-25.csv; 71 such pairs, all agreeing). A row of these exports whose tp_size spans nodes
# while moe_tp_size fits one node is read that way.
TP_TIMES_EP_EXPORTS = ("source_file=2026-04-06.csv", "db-dump/2026-04-27")


def _tp_times_ep_label(row: dict, tp: int, devices_per_node: int) -> bool:
    """Whether an aggregated row carries the tp·ep label of TP_TIMES_EP_EXPORTS."""
    source = (row.get("silicon_data_source") or "").split(";")[0].strip()
    mtp, ep = _int(row.get("moe_tp_size")) or 1, _int(row.get("moe_ep_size")) or 1
    return (source in TP_TIMES_EP_EXPORTS and tp > devices_per_node and ep > 1 and mtp * ep == tp
            and mtp <= devices_per_node and mtp % ep == 0)


def _pool(row: dict, prefix: str, preset: str, devices_per_node: int) -> tuple[dict | None, str]:
    """One worker pool's shape (prefix "" for agg, "prefill_"/"decode_" for disagg)."""
    tp, pp = _int(row.get(prefix + "tp_size")), _int(row.get(prefix + "pp_size")) or 1
    dp = _int(row.get(prefix + "attention_dp_size")) or 1
    # the 2026-03-25 and 2026-04-06 exports leave the disaggregated worker counts blank: where
    # InferenceX's matrix does not give them (`classify`), one worker per pool is assumed and the
    # case says so (`pools_from`, the report's "by mode")
    workers = _int(row.get(prefix + "num_workers")) or 1 if prefix else 1
    if not tp:
        return None, "missing parallelism"
    if dp < 1:
        return None, f"attention data parallelism {dp}"
    relabelled = prefix == "" and _tp_times_ep_label(row, tp, devices_per_node)
    if relabelled:
        tp = _int(row.get("moe_tp_size"))
    # attention TP inside a node; an attention-DP replica's ranks may span nodes, its MoE
    # exchange then crossing them (simulator.serving.engine.DPReplica)
    if tp * pp > devices_per_node:
        return None, f"tp·pp = {tp * pp} spans nodes"
    if dp > 1 and pp > 1:
        return None, f"attention data parallelism {dp} with pp {pp}"
    ep = 1
    if preset in MOE_MODELS.values():
        ep = _int(row.get(prefix + "moe_ep_size")) or 1
        mtp = _int(row.get(prefix + "moe_tp_size")) or 1
        if relabelled:  # EP inside the TP group: each expert split tp/ep ways
            mtp = tp // ep
        # the layer pass splits experts over ep, each over tp·dp/ep ranks (costs.py)
        if mtp * ep != tp * dp:
            return None, (f"MoE tp {mtp} x ep {ep} with attention tp {tp}"
                          + (f" x dp {dp}" if dp > 1 else ""))
    elif dp > 1:
        return None, f"attention data parallelism {dp} on a dense model"
    pool = {"tp": tp, "pp": pp, "ep": ep, "count": workers}
    if dp > 1:
        pool["dp"] = dp
    return pool, ""


@functools.cache
def inferencex_shapes(mode: str = "disagg") -> dict[str, dict]:
    """Row id -> the InferenceX matrix entry that ran it (INFERENCEX[mode]; "ambiguous": the
    deployments the matrix lists at a point it ran more than once)."""
    with open(INFERENCEX[mode], newline="") as f:
        return {r["id"]: r for r in csv.DictReader(f)}


def _speculative(shape: dict, tag: str) -> str:
    """The reason a row the matrix ran with speculative decoding is not replayed ("" if none)."""
    if shape["spec_decoding"] == "none":
        return ""
    return (f"{tag}speculative decoding ({shape['spec_decoding']}, InferenceX matrix "
            f"{shape['config_key']}): draft tokens are not modelled")


def _several(entry: dict, tag: str) -> str:
    """The reason a row whose point InferenceX ran under several deployments is not replayed:
    the export does not say which run it is, and any one replayed (or a default) could be the
    wrong one. Where every candidate drafted with MTP, the MTP reason."""
    n, mtp, key = int(entry["deployments"]), int(entry["mtp_deployments"]), entry["config_key"]
    if mtp == n:
        return f"{tag}speculative decoding (mtp, InferenceX matrix {key}): draft tokens are not modelled"
    what = "run with and without MTP" if entry["mode"] == "agg" else f"{n} deployments, {mtp} with MTP"
    return f"{tag}deployment unknown: InferenceX matrix {key} lists this point {what}; the export does not say which"


def _matrix_pool(shape: dict, role: str) -> dict:
    """One pool as the InferenceX matrix lists it: `tp` GPUs per worker, attention over them as
    TP, or as data parallelism with `dp-attn` (each rank its own attention, experts split ep
    ways and tp/ep within)."""
    tp, ep, workers = (int(shape[f"{role}_{k}"]) for k in ("tp", "ep", "num_workers"))
    pool = {"tp": tp, "pp": 1, "ep": ep, "count": workers}
    if shape[f"{role}_dp_attn"] == "True" and tp > 1:
        pool.update(tp=1, dp=tp)
    return pool


def classify(row: dict, scope: str = "all") -> tuple[dict | None, str]:
    """(replay settings, "") for a row the DES replays, else (None, reason). scope "dense": the
    acceptance set (dense models, H100/H200, aggregated); "all": every row that can be modelled.
    The measured TTFT/TPOT are carried along only for the comparison."""
    mode = row.get("mode")
    tag = "disaggregated: " if mode == "disagg" else ""
    if mode not in ("agg", "disagg"):
        return None, f"mode {mode!r}"
    path = row.get("model_path", "")
    if path in REFUSED_MODELS:
        return None, REFUSED_MODELS[path]
    preset = MODELS.get(path) or MOE_MODELS.get(path)
    if preset is None:
        return None, f"model {path} (no preset)"
    sysname = row.get("system", "")
    system = SYSTEMS.get(sysname)
    if system is None:
        return None, f"system {sysname} (no cluster preset)"
    dense = path in MODELS and sysname in DENSE_SYSTEMS and mode == "agg"
    if scope == "dense" and not dense:
        return None, "outside the dense scope (dense models, H100/H200, aggregated)"
    prec = PRECISIONS.get((row.get("precision") or "").strip().lower())
    if prec is None:
        return None, f"precision {row.get('precision')}"
    quant = (row.get("gemm_quant_mode") or "").strip()
    moe_quant = MOE_QUANTS.get((row.get("moe_quant_mode") or "").strip())
    kv_dtype = QUANTS.get(quant)
    expert_only = EXPERT_ONLY_QUANT.get((path, prec))
    if expert_only is not None:  # 16-bit dense layers, quantised experts, 16-bit KV
        prec, moe_quant, quant, kv_dtype = "bf16", expert_only or None, "", None
    elif moe_quant == "fp8" and path in BLOCK_FP8_CHECKPOINTS:
        moe_quant = "fp8_block"
    elif prec == "int4" or quant not in QUANTS:
        return None, f"GEMM quantisation {quant or prec} (weight-only INT4 dense layers: no kernel model)"
    backend = (row.get("backend") or "").strip().lower()
    if backend not in BACKENDS:
        return None, f"backend {backend}"
    c, isl, osl = row_concurrency(row), _int(row.get("isl")), _int(row.get("osl"))
    if not all((c, isl, osl)):
        return None, tag + "missing concurrency or lengths"
    dpn = load_cluster(system).devices_per_node
    recorded = mode == "agg" or all(_int(row.get(f"{p}_num_workers")) for p in ("prefill", "decode"))
    # where the pools come from: the row itself, InferenceX's matrix, or one worker each assumed
    pools_from = "row" if recorded else "1+1 assumed"
    several = inferencex_shapes("ambiguous").get(row.get("id"))
    if several is not None and (mode == "agg" or not recorded):
        return None, _several(several, tag)
    if mode == "agg":
        why = _speculative(inferencex_shapes("agg").get(row.get("id"), {"spec_decoding": "none"}), tag)
        if why:
            return None, why
        pool, why = _pool(row, "", preset, dpn)
        if pool is None:
            return None, why
        pools = {"both": pool}
    elif not recorded and row.get("id") in inferencex_shapes():
        shape = inferencex_shapes()[row["id"]]
        why = _speculative(shape, tag)
        if why:
            return None, why
        pools = {role: _matrix_pool(shape, role) for role in ("prefill", "decode")}
        if any(p["tp"] > dpn for p in pools.values()):
            return None, f"{tag}attention tp spans nodes"
        pools_from = "InferenceX matrix"
    else:
        pools = {}
        for role in ("prefill", "decode"):
            pool, why = _pool(row, role + "_", preset, dpn)
            if pool is None:
                return None, f"{tag}{role} pool: {why}"
            pools[role] = pool
    try:  # carried for the comparison only
        ttft = float(row["silicon_ttft_ms"]) / 1e3
        tpot = float(row["silicon_tpot_ms"]) / 1e3
    except (KeyError, TypeError, ValueError):
        return None, "no measured TTFT/TPOT"
    if not (ttft > 0 and tpot > 0):
        return None, "no measured TTFT/TPOT"
    client, info = client_for_row(row.get("silicon_data_source", ""))
    main = pools.get("both") or pools["decode"]
    return {"id": row.get("id", ""), "model": preset, "family": FAMILY.get(preset, preset),
            "model_path": path, "system": sysname, "cluster": system, "dtype": prec,
            "engine": backend, "version": row.get("backend_version") or "", "mode": mode,
            "pools": pools, "tp": main["tp"], "pp": main["pp"], "ep": main["ep"],
            "dp": main.get("dp", 1), "dense": dense,
            "concurrency": c, "isl": isl, "osl": osl, "quant": quant, "kv_dtype": kv_dtype,
            "moe_quant": moe_quant if preset in MOE_MODELS.values() else None,
            "client": client, "measured_on": info["measured"],
            "pools_from": pools_from,
            "ttft_s": ttft, "tpot_s": tpot}, ""


def case_workload(case: dict, seed: int = 0, quick: bool = False, client: str | None = None):
    """The measured phase of the row's benchmark client (quick: 3 requests per slot)."""
    c, name = case["concurrency"], client or case["client"]
    n = c * (3 if quick else PROMPTS_PER_SLOT)
    if name == "bench-serving":
        return bench_serving(case["isl"], case["osl"], c, num_prompts=n, seed=seed,
                             num_warmups=bench_serving_warmups(c, case.get("measured_on", "")))
    if name == "aiperf":
        return aiperf(case["isl"], case["osl"], c, request_count=n, seed=seed)
    raise InputError(f"client {name!r}; valid: bench-serving, aiperf")


def replay(case: dict, seed: int = 0, quick: bool = False, client: str | None = None,
           deployment: str = "recorded") -> dict:
    """Predicted mean TTFT and TPOT of one row ({"error": message} if the deployment cannot be
    built, e.g. the weights do not fit)."""
    if deployment not in DEPLOYMENTS:
        raise InputError(f"deployment {deployment!r}; valid: {', '.join(DEPLOYMENTS)}")
    try:
        return _replay(case, seed, quick, client, deployment)
    except InputError as e:
        return {"error": str(e)}


# AIConfigurator's deployment generator, which its own harness (the aiperf/genai-perf rows)
# deployed TensorRT-LLM with: `max_batch_size = bs`, `max_num_tokens = bs + isl + 1500`,
# chunked prefill off, overlap scheduler on (ai-dynamo/aiconfigurator generator, agg worker
# config: 'agg_cfg["max_num_tokens"] = agg_cfg["bs"] + ctx.runtime.isl + 1500', "we're assuming
# no chunked prefill"; templates/trtllm/extra_engine_args.1.0.0rc3.yaml.j2). bs = the benchmark
# concurrency (the generator's batch size for the swept concurrency).
AIC_TRTLLM_TOKEN_HEADROOM = 1500  # the generator's "+1500" (a deployment setting, not fitted)
# kv_cache_config.free_gpu_memory_fraction: the generator's TRT-LLM 1.0.0rc3 template default at
# every date (aiconfigurator efcae124c 2025-08-11 cli/templates/trtllm/dynamo/
# extra_engine_args.1.0.0rc3.yaml.j2 "default(0.80)", through 2063ee024 2026-02-11
# generator/config/backend_templates/trtllm/extra_engine_args.1.0.0rc3.yaml.j2); the engine's own is 0.9
AIC_TRTLLM_FREE_GPU_MEMORY_FRACTION = 0.80
# The same generator's rules for all three engines (benchmark mode, ai-dynamo/aiconfigurator
# 2063ee024, PR #333, 2026-02-11, generator/rule_plugin/benchmark/{vllm,sglang,trtllm}.rule and
# config/backend_config_mapping.yaml; docs/modeling.md §4 "AIConfigurator's generator"):
#   vLLM    agg max_num_tokens = max_batch_size + isl + 1500 -> --max-num-batched-tokens;
#           max_batch_size = bs -> --max-num-seqs (templates vllm/cli_args.0.12.0.j2)
#   SGLang  agg_prefill_decode max_prefill_tokens = isl + 1500 -> --max-prefill-tokens;
#           agg enable_mixed_chunk = true -> --enable-mixed-chunk; max_batch_size = bs ->
#           --max-running-requests (templates sglang/cli_args.0.5.*.j2)
#   TRT-LLM agg max_num_tokens = max_batch_size + isl + 1500, overlap on (aic_trtllm_limits)
# Unlike the TensorRT-LLM rule (in the generator since before vLLM/SGLang support, 2025-12-04),
# the vLLM/SGLang settings reached the command line only in some windows (vLLM 0.12.0: from
# 2026-01-08, PR #238, dropped by the 0.12.0 template of 2026-01-23, back 2026-02-11, PR #333;
# SGLang 0.5.1.post1: from 2026-01-19, PR #257) and the aiperf rows are undated, so "recorded"
# leaves them out and "recorded+generator" adds them.
# "recorded": every deployment setting a row's harness states (AIConfigurator's TensorRT-LLM
# generator and the InferenceMAX launch scripts); "recorded+generator": that, plus the
# generator's vLLM and SGLang rules on the aiperf rows; "aic-generator": the generator's rules for
# all three engines only (no InferenceMAX settings); "defaults": the engines' defaults everywhere.
DEPLOYMENTS = ("recorded", "recorded+generator", "aic-generator", "defaults")
# InferenceMAX launch scripts (the bench-serving population, NVIDIA GPUs): every vLLM server runs
# with `--async-scheduling` (InferenceMAX benchmarks/70b_fp8_h100_docker.sh, 70b_fp8_h200_slurm.sh,
# gptoss_fp4_h200_slurm.sh, 70b_fp8_b200_docker.sh: "async-scheduling: true", also
# --no-enable-prefix-caching and --max-num-batched-tokens 8192, the defaults here); TensorRT-LLM
# Llama-3.1-70B on H200 runs trtllm-serve --max_num_tokens 16384, and for ISL = OSL = 1024 with
# TP < 8 its llama-config.yml adds batch_wait_max_tokens_ratio 0.9 and batch_wait_timeout_iters 20
# (benchmarks/70b_fp8_h200_trt_slurm.sh; its stream_interval 10 is not modelled).
INFERENCEMAX_TRTLLM_MAX_TOKENS = {("Llama-3.1", "h200_sxm"): 16384}
# (isl, osl, tp below which it applies), batch_wait_timeout_iters, batch_wait_max_tokens_ratio
INFERENCEMAX_TRTLLM_BATCH_WAIT = {("Llama-3.1", "h200_sxm"): ((1024, 1024, 8), 20, 0.9)}


# InferenceX SGLang launch scripts on B200 (the same values in every version from 2026-01-13 to
# 2026-03-27): benchmarks/dsr1_fp4_b200_docker.sh -> single_node/dsr1_fp4_b200.sh,
# dsr1_fp8_b200_docker.sh -> single_node/dsr1_fp8_b200.sh, single_node/qwen3.5_{bf16,fp8}_b200.sh.
# `--scheduler-recv-interval` is 30 from 16 clients up and 10 below (DeepSeek FP8 at TP 4: 10);
# --max-running-requests, --chunked-prefill-size, --max-prefill-tokens, --mem-fraction-static as set.
# Keyed by (family, system, dtype, tp); None: the script does not set it.
INFERENCEX_SGLANG = {
    ("DeepSeek-V3/R1", "b200_sxm", "fp4", None): dict(recv=(10, 30), max_batch=256, chunk=16384,
                                                      prefill=None, mem=0.85),
    ("DeepSeek-V3/R1", "b200_sxm", "fp8", 8): dict(recv=(10, 30), max_batch=128, chunk=32768,
                                                   prefill=32768, mem=0.82),
    ("DeepSeek-V3/R1", "b200_sxm", "fp8", 4): dict(recv=(10, 10), max_batch=32, chunk=8192,
                                                   prefill=8192, mem=0.95),
    ("Qwen3.5", "b200_sxm", "bf16", None): dict(recv=(10, 30), max_batch=128, chunk=32768,
                                                prefill=32768, mem=0.82),
    ("Qwen3.5", "b200_sxm", "fp8", None): dict(recv=(10, 30), max_batch=128, chunk=32768,
                                               prefill=32768, mem=0.82),
}
INFERENCEX_RECV_CONC = 16  # the scripts' `if [[ $CONC -ge 16 ]]` for the longer interval


def inferencemax_settings(case: dict) -> dict:
    """The engine options, max_num_tokens, max_batch and memory fraction that the InferenceMAX /
    InferenceX launch script of a bench-serving row states (sources above); empty for every other
    row."""
    out = {"options": (), "max_tokens": None, "max_batch": None, "memory_fraction": None}
    if case.get("client") != "bench-serving" or case.get("mode") != "agg":
        return out
    if case.get("engine") == "vllm":
        return {**out, "options": (("async_scheduling", "on"),)}
    if case.get("engine") == "sglang":
        key = (case.get("family"), case.get("system"), case.get("dtype"))
        script = INFERENCEX_SGLANG.get((*key, case.get("tp"))) or INFERENCEX_SGLANG.get((*key, None))
        if script is None or case.get("dp", 1) > 1:
            return out
        recv = script["recv"][case["concurrency"] >= INFERENCEX_RECV_CONC]
        options = (("recv_interval", recv),)
        if script["prefill"]:
            options += (("max_prefill_tokens", script["prefill"]),)
        return {"options": options, "max_tokens": script["chunk"], "max_batch": script["max_batch"],
                "memory_fraction": script["mem"]}
    if case.get("engine") == "trtllm":
        key = (case.get("family"), case.get("system"))
        options: tuple = ()
        wait = INFERENCEMAX_TRTLLM_BATCH_WAIT.get(key)
        if wait is not None:
            (isl, osl, tp_below), iters, ratio = wait
            if case["isl"] == isl and case["osl"] == osl and case["tp"] < tp_below:
                options = (("batch_wait_timeout_iters", iters), ("batch_wait_max_tokens_ratio", ratio))
        return {**out, "options": options, "max_tokens": INFERENCEMAX_TRTLLM_MAX_TOKENS.get(key)}
    return out


def aic_trtllm_limits(case: dict) -> tuple[int | None, int | None]:
    """(max_batch_size, max_num_tokens) of a TensorRT-LLM row deployed by AIConfigurator's
    generator (the internal rows, measured with its aiperf/genai-perf harness); (None, None) for
    every other row (the engine defaults apply)."""
    if case.get("engine") != "trtllm" or case.get("client") != "aiperf" or case.get("mode") != "agg":
        return None, None
    c = case["concurrency"]
    # generator: max_batch_size = bs; max_num_tokens = bs + isl + 1500 (source above)
    return c, c + case["isl"] + AIC_TRTLLM_TOKEN_HEADROOM


def aic_generator_settings(case: dict) -> dict:
    """The settings AIConfigurator's generator gives a row of its own harness (aiperf, agg), any
    engine (rules above): max_batch, max_tokens (vLLM max_num_batched_tokens / TRT-LLM
    max_num_tokens; SGLang's chunked_prefill_size is not set by the generator and keeps its
    default), engine options, memory_fraction; all None/() for every other row."""
    out = {"max_batch": None, "max_tokens": None, "options": (), "memory_fraction": None}
    if case.get("client") != "aiperf" or case.get("mode") != "agg":
        return out
    c, isl = case["concurrency"], case["isl"]
    if case.get("engine") == "trtllm":
        max_batch, max_tokens = aic_trtllm_limits(case)
        return {**out, "max_batch": max_batch, "max_tokens": max_tokens,
                "memory_fraction": AIC_TRTLLM_FREE_GPU_MEMORY_FRACTION}
    if case.get("engine") == "vllm":
        # benchmark/vllm.rule: agg max_num_tokens = (max_batch_size or 0) + (SlaConfig.isl or 0) + 1500
        return {**out, "max_batch": c, "max_tokens": c + isl + AIC_TRTLLM_TOKEN_HEADROOM}
    if case.get("engine") == "sglang":
        # benchmark/sglang.rule: max_prefill_tokens = SlaConfig.isl + 1500; enable_mixed_chunk = true
        return {**out, "max_batch": c, "options": (("max_prefill_tokens", isl + AIC_TRTLLM_TOKEN_HEADROOM),
                                                    ("enable_mixed_chunk", "on"))}
    return out


def deployment_settings(case: dict, deployment: str = "recorded") -> dict:
    """The settings a deployment (DEPLOYMENTS) replays a row with: max_batch, max_tokens, engine
    options, memory_fraction (None/(): the engine default)."""
    if deployment not in DEPLOYMENTS:
        raise InputError(f"deployment {deployment!r}; valid: {', '.join(DEPLOYMENTS)}")
    gen = aic_generator_settings(case)
    if deployment == "defaults":
        return {k: () if k == "options" else None for k in gen}
    if deployment == "recorded" and case.get("engine") != "trtllm":
        gen = {k: () if k == "options" else None for k in gen}  # the generator's TRT-LLM rules only
    if deployment in ("recorded", "recorded+generator"):
        script = inferencemax_settings(case)
        gen = {**{k: v if script[k] is None else script[k] for k, v in gen.items() if k != "options"},
               "options": gen["options"] + script["options"]}
    return gen


def _replay(case: dict, seed: int, quick: bool, client: str | None,
            deployment: str = "recorded") -> dict:
    model = load_model(case["model"])
    cluster = load_cluster(case["cluster"])
    c = case["concurrency"]
    settings = deployment_settings(case, deployment)
    max_batch, max_tokens, options = settings["max_batch"], settings["max_tokens"], settings["options"]
    if max_tokens is None and case["engine"] == "trtllm" and case["isl"] + c > 8192:
        # Without chunked prefill a prompt must fit one iteration's token budget next to the
        # running decodes; TensorRT-LLM's default max_num_tokens (8192) would starve prompts
        # this long, so the measured deployment had a larger one: the smallest that serves it.
        max_tokens = case["isl"] + c
    groups = tuple(ReplicaGroup(cluster, p["tp"], p["pp"], p["ep"], p["count"], role, p.get("dp", 1))
                   for role, p in case["pools"].items())
    plan = ServingPlan(groups, max_batch=max_batch, max_tokens=max_tokens, engine=case["engine"], dtype=case["dtype"],
                       kv_dtype=case.get("kv_dtype"), prefix_caching=False, engine_options=options,
                       gpu_memory_utilization=settings["memory_fraction"], moe_quant=case.get("moe_quant"))
    rep = simulate(model, plan, case_workload(case, seed, quick, client))
    if rep.ttft_s["mean"] is None or rep.tpot_s["mean"] is None:
        return {"error": "no request finished (the KV pool cannot hold one request)"}
    return {"ttft_s": rep.ttft_s["mean"], "tpot_s": rep.tpot_s["mean"],
            "preemptions": rep.preemptions, "kv_blocks": rep.replicas[0]["kv_blocks"]}


def _replay_key(case: dict) -> str:
    """What a replay reads of a case: every field but the row's id and its measurements."""
    return json.dumps({k: v for k, v in case.items() if k not in ("id", "ttft_s", "tpot_s")},
                      sort_keys=True, default=str)


def _replay_task(a: tuple) -> dict:
    """replay(case, 0, quick, client, deployment) for a = (case, quick, client[, deployment]):
    one executor task."""
    case, quick, client, *rest = a
    return replay(case, 0, quick, client, *rest)


def _err(pred: float, meas: float) -> float:
    return 100.0 * (pred - meas) / meas


def aic_estimates(path: Path = AIC_ESTIMATES) -> dict:
    """AIConfigurator 0.12's own estimates of the dense H100/H200 agg rows (validation/data/serving/
    README.md), keyed like `_aic_key`."""
    out = {}
    if not path.is_file():
        return out
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            try:
                pt, pp = float(r["pred_ttft_ms"]) / 1e3, float(r["pred_tpot_ms"]) / 1e3
                key = (r["system"], r["model_path"], r["backend"], int(r["isl"]), int(r["osl"]),
                       int(r["tp_size"]), int(r["silicon_concurrency"] or row_concurrency({"id": r["id"]})),
                       round(float(r["measured_ttft_ms"]), 2), round(float(r["measured_tpot_ms"]), 3))
            except (TypeError, ValueError):
                continue  # refused by AIConfigurator (`error` says why) or an incomplete row
            out[key] = (pt, pp)
    return out


def _aic_key(r: dict) -> tuple:
    return (r["system"], r["model_path"], r["engine"], r["isl"], r["osl"], r["tp"], r["concurrency"],
            round(r["ttft_s"] * 1e3, 2), round(r["tpot_s"] * 1e3, 3))


def _median(xs):
    return statistics.median(xs) if xs else None


def _mode_group(r: dict) -> str:
    """agg, disagg, disagg with its pools from the InferenceX matrix, or disagg replayed with one
    worker per pool because no source gives the worker counts."""
    src = r.get("pools_from", "row")
    return r["mode"] if src == "row" else f"{r['mode']}, {src}"


def _summarise(rows: list, key) -> dict:
    groups: dict = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    out = {}
    for k, rs in sorted(groups.items()):
        aic = [r for r in rs if r.get("aic_ttft_error_pct") is not None]
        out[k] = {"rows": len(rs),
                  "median_abs_ttft_error_pct": _median([abs(r["ttft_error_pct"]) for r in rs]),
                  "median_abs_tpot_error_pct": _median([abs(r["tpot_error_pct"]) for r in rs]),
                  # signed: below zero the model predicts a shorter TTFT / TPOT than measured
                  "median_ttft_error_pct": _median([r["ttft_error_pct"] for r in rs]),
                  "median_tpot_error_pct": _median([r["tpot_error_pct"] for r in rs]),
                  "aic_rows": len(aic),
                  "ours_on_aic_rows_ttft_pct": _median([abs(r["ttft_error_pct"]) for r in aic]),
                  "ours_on_aic_rows_tpot_pct": _median([abs(r["tpot_error_pct"]) for r in aic]),
                  "aic_median_abs_ttft_error_pct": _median([abs(r["aic_ttft_error_pct"]) for r in aic]),
                  "aic_median_abs_tpot_error_pct": _median([abs(r["aic_tpot_error_pct"]) for r in aic])}
    return out


def run_suite(path: str | None = None, limit: int | None = None, quick: bool = False,
              jobs: int | None = None, scope: str = "all", client: str = "auto",
              executor=None, max_row_tokens: int = MAX_ROW_TOKENS,
              deployment: str = "recorded") -> dict:
    """Replay every row in scope; the document `validate serving --json` prints.

    client "auto": each row's own benchmark client (from its data source); "bench-serving" or
    "aiperf": every row with that client (a sensitivity check). deployment: the settings each row
    replays with (DEPLOYMENTS; "recorded" = what the rows' harnesses state).

    The rows replay on `executor` (simulator.executor) when given, else on `jobs` local worker
    processes (default: the CPU count); the document is the same either way."""
    if scope not in ("dense", "all"):
        raise InputError(f"scope {scope!r}; valid: dense, all")
    if client not in ("auto", "bench-serving", "aiperf"):
        raise InputError(f"client {client!r}; valid: auto, bench-serving, aiperf")
    if deployment not in DEPLOYMENTS:
        raise InputError(f"deployment {deployment!r}; valid: {', '.join(DEPLOYMENTS)}")
    forced = None if client == "auto" else client
    t0 = time.perf_counter()
    rows = read_rows(path)
    cases, skipped, reasons = [], [], {}
    for row in rows:
        case, why = classify(row, scope)
        if case is not None and not case["dense"] and 10 * case["concurrency"] * case["osl"] > max_row_tokens:
            case, why = None, (f"replay exceeds the per-row budget of {max_row_tokens:,} output tokens "
                               f"(10·C·osl; --max-row-tokens)")
        if case is None:
            skipped.append({"id": row.get("id", ""), "reason": why})
            reasons[why] = reasons.get(why, 0) + 1
            continue
        cases.append(case)
    if limit is not None:
        cases = cases[:limit]
    # Rows that differ only in their id and measurements (the gap-analysis copies of InferenceMAX
    # rows, repeated runs) replay once: a replay reads nothing else and is deterministic.
    first: dict = {}
    same = [first.setdefault(_replay_key(case), i) for i, case in enumerate(cases)]
    distinct = sorted(set(same))
    # longest replays first so the pool's workers finish together
    order = sorted(distinct, key=lambda i: -cases[i]["concurrency"] * cases[i]["osl"])
    work = [cases[i] for i in order]
    workers = min(jobs or os.cpu_count() or 1, max(1, len(work) // 8))
    if executor is not None:  # rows are independent; results come back in row order
        preds = executor.map(_replay_task, [(case, quick, forced, deployment) for case in work])
    elif workers > 1:
        with concurrent.futures.ProcessPoolExecutor(workers) as pool:
            preds = list(pool.map(_replay_task, [(case, quick, forced, deployment) for case in work], chunksize=4))
    else:
        preds = [replay(case, 0, quick, forced, deployment) for case in work]
    pred_of = dict(zip(order, preds))
    aic = aic_estimates()
    results = []
    for i, case in enumerate(cases):
        pred = pred_of[same[i]]
        if "error" in pred:
            why = "cannot be built here: " + pred["error"].split(": ", 1)[-1]
            skipped.append({"id": case["id"], "reason": why})
            reasons[why] = reasons.get(why, 0) + 1
            continue
        r = {**case, "client": forced or case["client"],
             "pred_ttft_s": pred["ttft_s"], "pred_tpot_s": pred["tpot_s"],
             "ttft_error_pct": _err(pred["ttft_s"], case["ttft_s"]),
             "tpot_error_pct": _err(pred["tpot_s"], case["tpot_s"]),
             "preemptions": pred["preemptions"], "aic_ttft_error_pct": None, "aic_tpot_error_pct": None}
        est = aic.get(_aic_key(r)) if r["mode"] == "agg" else None
        if est is not None:
            r["aic_pred_ttft_s"], r["aic_pred_tpot_s"] = est
            r["aic_ttft_error_pct"] = _err(est[0], case["ttft_s"])
            r["aic_tpot_error_pct"] = _err(est[1], case["tpot_s"])
        results.append(r)
    out_cases = []
    for r in results:
        out_cases.append({"name": f"{r['id']} ttft", "predicted": r["pred_ttft_s"],
                          "measured": r["ttft_s"], "unit": "s", "error_pct": r["ttft_error_pct"]})
        out_cases.append({"name": f"{r['id']} tpot", "predicted": r["pred_tpot_s"],
                          "measured": r["tpot_s"], "unit": "s", "error_pct": r["tpot_error_pct"]})
    errs = [abs(c["error_pct"]) for c in out_cases]
    te = [abs(r["ttft_error_pct"]) for r in results]
    pe = [abs(r["tpot_error_pct"]) for r in results]
    dense = [r for r in results if r["dense"]]
    return {
        "cases": out_cases,
        "mape_pct": statistics.fmean(errs) if errs else None,
        "max_error_pct": max(errs) if errs else None,
        "median_abs_ttft_error_pct": _median(te),
        "median_abs_tpot_error_pct": _median(pe),
        "mean_abs_ttft_error_pct": statistics.fmean(te) if te else None,
        "mean_abs_tpot_error_pct": statistics.fmean(pe) if pe else None,
        "dense_h100_h200": _summarise(dense, lambda r: "all").get("all", {"rows": 0}),
        "dense_h100_h200_by_engine": _summarise(dense, lambda r: r["engine"]),
        "rows_total": len(rows), "rows_modelled": len(results), "rows_skipped": len(skipped),
        "scope": scope,
        "deployment": deployment,
        "skip_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "by_engine": _summarise(results, lambda r: r["engine"]),
        "by_system": _summarise(results, lambda r: r["system"]),
        "by_family": _summarise(results, lambda r: r["family"]),
        "by_mode": _summarise(results, _mode_group),
        "by_client": _summarise(results, lambda r: r["client"]),
        "rows": results,
        "protocol": {"client": client, "measured_per_slot": 3 if quick else PROMPTS_PER_SLOT,
                     "warmup": "drained (simulated from an idle server)"},
        "source": silicon_csv_path() if path is None else path,
        "wall_s": time.perf_counter() - t0,
    }


# ---- the serving regimes file (simulator/regimes.py SERVING_REGIMES_FILE) --------------------------
# fingerprint rows per regime: replayed again by tests/test_serving_regimes.py to catch a stale file
REGIME_FINGERPRINTS = 1


@functools.lru_cache(maxsize=None)
def _row_regime(engine: str, cluster: str, model: str, mode: str) -> str:
    from simulator.regimes import serving_regime_key
    return serving_regime_key(engine, load_cluster(cluster).device.name, load_model(model),
                              "disagg" if mode == "disagg" else "agg")


def serving_regimes(doc: dict) -> dict:
    """Per serving regime (simulator.regimes.serving_regime_key) of a default `run_suite`
    document: its modelled rows, median |error| and median signed error of the mean TTFT and
    TPOT, the client concurrencies covered, and the cheapest rows as fingerprints."""
    groups: dict = {}
    for r in doc["rows"]:
        groups.setdefault(_row_regime(r["engine"], r["cluster"], r["model"], r["mode"]), []).append(r)
    out = {}
    for key, rs in sorted(groups.items()):
        cheap = sorted(rs, key=lambda r: (r["concurrency"] * r["osl"], r["id"]))[:REGIME_FINGERPRINTS]
        out[key] = {"rows": len(rs),
                    "ttft_median_abs_pct": round(_median([abs(r["ttft_error_pct"]) for r in rs]), 2),
                    "tpot_median_abs_pct": round(_median([abs(r["tpot_error_pct"]) for r in rs]), 2),
                    "ttft_bias_pct": round(_median([r["ttft_error_pct"] for r in rs]), 2),
                    "tpot_bias_pct": round(_median([r["tpot_error_pct"] for r in rs]), 2),
                    "min_concurrency": min(r["concurrency"] for r in rs),
                    "max_concurrency": max(r["concurrency"] for r in rs),
                    "fingerprints": [{"id": r["id"], "pred_ttft_s": r["pred_ttft_s"],
                                      "pred_tpot_s": r["pred_tpot_s"]} for r in cheap]}
    return out


def require_default_suite(scope: str, deployment: str, client: str, quick: bool, limit: int | None = None) -> None:
    """The serving regimes file describes the default suite only (every row in scope "all", the
    recorded deployments, each row's own client, 10·C requests per slot)."""
    if (scope, deployment, client, bool(quick), limit) != ("all", "recorded", "auto", False, None):
        raise InputError("--regimes needs the default suite: drop --limit, --quick, --scope, --client "
                         "and --deployment")


def regimes_document(doc: dict) -> str:
    """The serving regimes file's text for a default `run_suite` document."""
    require_default_suite(doc["scope"], doc["deployment"], doc["protocol"]["client"],
                          doc["protocol"]["measured_per_slot"] != PROMPTS_PER_SLOT)
    return json.dumps({"written_by": "clusterplan validate serving --regimes",
                       "rows_modelled": doc["rows_modelled"], "regimes": serving_regimes(doc)},
                      indent=1, sort_keys=True) + "\n"


def _pct(x, signed: bool = False) -> str:
    return (f"{x:+6.1f}%" if signed else f"{x:6.1f}%") if x is not None else "      -"


def format_report(doc: dict, rows: bool = False) -> str:
    lines = []
    if rows:
        lines.append(f"{'row':<58} {'client':<13} {'eng':<6} {'C':>4} {'isl':>5} {'osl':>5} {'tp':>2} "
                     f"{'TTFT ms':>9} {'pred':>9} {'err%':>7} {'AIC%':>7} {'TPOT ms':>8} {'pred':>8} "
                     f"{'err%':>7} {'AIC%':>7}")
        for r in doc["rows"]:
            lines.append(f"{r['id'][-58:]:<58} {r['client']:<13} {r['engine']:<6} {r['concurrency']:>4} "
                         f"{r['isl']:>5} {r['osl']:>5} {r['tp']:>2} {r['ttft_s'] * 1e3:9.1f} "
                         f"{r['pred_ttft_s'] * 1e3:9.1f} {r['ttft_error_pct']:7.1f} "
                         f"{_pct(r['aic_ttft_error_pct'])} {r['tpot_s'] * 1e3:8.2f} "
                         f"{r['pred_tpot_s'] * 1e3:8.2f} {r['tpot_error_pct']:7.1f} "
                         f"{_pct(r['aic_tpot_error_pct'])}")
        lines.append("")
    head = (f"{'':<27} {'rows':>5}  {'|TTFT err| p50':>14} {'|TPOT err| p50':>14}  {'bias TTFT':>9} "
            f"{'TPOT':>7}   {'AIC rows':>8}  {'ours TTFT':>9} {'AIC TTFT':>9}  {'ours TPOT':>9} {'AIC TPOT':>9}")

    def table(title: str, groups: dict) -> None:
        lines.append(f"{title}")
        lines.append(head)
        for k, g in groups.items():
            lines.append(f"  {str(k):<25} {g['rows']:>5}  {_pct(g['median_abs_ttft_error_pct']):>14} "
                         f"{_pct(g['median_abs_tpot_error_pct']):>14}  {_pct(g['median_ttft_error_pct'], True):>9} "
                         f"{_pct(g['median_tpot_error_pct'], True):>7}   {g['aic_rows']:>8}  "
                         f"{_pct(g['ours_on_aic_rows_ttft_pct']):>9} {_pct(g['aic_median_abs_ttft_error_pct']):>9}  "
                         f"{_pct(g['ours_on_aic_rows_tpot_pct']):>9} {_pct(g['aic_median_abs_tpot_error_pct']):>9}")
        lines.append("")

    if doc.get("deployment", "recorded") != "recorded":
        lines.append(f"deployment: {doc['deployment']} (docs/modeling.md §4)")
    lines.append("median |error| of the mean TTFT / TPOT; bias: median signed error (below zero: predicted "
                 "shorter than measured); AIC: AIConfigurator 0.12's own estimates of the same rows, where it "
                 "has them (ours beside it on those rows)")
    lines.append("")
    for title, key in (("by engine", "by_engine"), ("by system", "by_system"),
                       ("by model family", "by_family"), ("by mode", "by_mode"),
                       ("by benchmark client", "by_client")):
        table(title, doc[key])
    if doc["dense_h100_h200_by_engine"]:
        table("dense H100/H200 aggregated rows, by engine", doc["dense_h100_h200_by_engine"])
    dd = doc["dense_h100_h200"]
    if dd.get("rows"):
        lines.append(f"dense H100/H200 agg rows {dd['rows']}: median |error| TTFT "
                     f"{dd['median_abs_ttft_error_pct']:.1f}%, TPOT {dd['median_abs_tpot_error_pct']:.1f}%")
    if doc["rows_modelled"]:
        lines.append(f"rows modelled {doc['rows_modelled']} of {doc['rows_total']}, not modelled "
                     f"{doc['rows_skipped']}; median |error| TTFT {doc['median_abs_ttft_error_pct']:.1f}%, "
                     f"TPOT {doc['median_abs_tpot_error_pct']:.1f}%; MAPE {doc['mape_pct']:.1f}%, "
                     f"max {doc['max_error_pct']:.0f}%")
    lines.append("not modelled:")
    for why, n in doc["skip_reasons"].items():
        lines.append(f"  {n:5d}  {why}")
    if not rows:
        lines.append("(per-row table: --rows)")
    lines.append(f"({doc['wall_s']:.1f} s)")
    return "\n".join(lines)
