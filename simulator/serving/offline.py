"""Offline maximum-throughput clients: every request queued at t = 0, fixed input/output lengths,
the engine's limits chosen as the benchmarking tool chooses them.

    trtllm-bench     `trtllm-bench build --dataset` + `trtllm-bench throughput` (TensorRT-LLM 0.14):
                     max_batch_size and max_num_tokens from the tuning heuristic
                     (tensorrt_llm/bench/build/tuning.py calc_engine_setting / finetune_setting),
                     chunked context on, KV cache 0.90 of the memory free after loading
                     (tensorrt_llm/bench/dataclasses.py ExecutorSettingsConfig: chunking=True,
                     kv_cache_percent=.90). ExecutorSettingsConfig defaults to MAX_UTILIZATION,
                     but 0.14's `throughput` command overrides it with GUARANTEED_NO_EVICT
                     (tensorrt_llm/bench/run/run.py run_command: settings_config
                     ["scheduler_policy"] = IFBSchedulingPolicy.NO_EVICT), so the simulation
                     keeps the engine's no-evict reservation (kv_reservation "full"). The KV
                     pool is 0.90 of the memory free after the weights, the engine's activation
                     buffer, the CUDA context/NCCL and the decoder's sampling workspace
                     (kv_cache.trtllm_sampling_workspace_bytes, max_batch_size x vocab).
    vllm-throughput  `vllm bench throughput` builds an offline `LLM` (UsageContext.LLM_CLASS):
                     max_num_batched_tokens 16384 and max_num_seqs 1024 on GPUs with >= 70 GiB
                     (not A100), else 8192 and 256 (vllm/engine/arg_utils.py
                     EngineArgs._set_default_args_v1); chunked prefill and prefix caching on.
    sglang-offline   `python -m sglang.bench_offline_throughput` runs an `Engine` with ServerArgs
                     defaults (python/sglang/srt/server_args.py), i.e. the SGLang server defaults
                     of `engine_config("sglang", ...)`.

`offline_limits` returns the limits and where they come from; `offline_plan_options` turns them
into the `ServingPlan` fields (`max_batch`, `max_tokens`, `chunk`, `gpu_memory_utilization`) that
`ServingSimulation` hands to `scheduler.engine_config` as overrides; `offline_workload` is the
closed loop with one client per request (all issued at t = 0). The throughput the tools print is
output tokens / (last finish − first issue), which is `ServingReport.throughput_tokens_per_s`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from hwmodels.devices import Device
from hwmodels.errors import InputError
from simulator.models import ModelSpec
from simulator.serving.workload import LengthDist, ServingWorkload

OFFLINE_CLIENTS = ("trtllm-bench", "vllm-throughput", "sglang-offline")
CLIENT_ENGINE = {"trtllm-bench": "trtllm", "vllm-throughput": "vllm", "sglang-offline": "sglang"}

# tensorrt_llm/bench/build/tuning.py (0.14): KV share of the memory left after the engine,
# request cap (decoder buffers) and token cap (TRT activation buffer).
TRTLLM_BENCH_KV_FRACTION = 0.95
TRTLLM_BENCH_MAX_REQUESTS = 4096
TRTLLM_BENCH_MAX_TOKENS = 32768
# tensorrt_llm/bench/dataclasses.py ExecutorSettingsConfig.kv_cache_percent (runtime)
TRTLLM_BENCH_KV_PERCENT = 0.90
# bytes per weight / KV element as the heuristic counts them (tuning.py BYTES_PER_ELEM; 0.14
# knows FP8 and no-quant, later versions add NVFP4 at 0.5)
_HEURISTIC_BYTES = {"fp8": 1.0, "fp4": 0.5}


@dataclass(frozen=True)
class OfflineLimits:
    """The engine limits an offline client runs with, and where they come from."""
    client: str
    engine: str
    max_batch_size: int
    max_num_tokens: int
    chunked_prefill: bool
    source: str
    detail: dict

    def to_dict(self) -> dict:
        return {"client": self.client, "engine": self.engine, "max_batch_size": self.max_batch_size,
                "max_num_tokens": self.max_num_tokens, "chunked_prefill": self.chunked_prefill,
                "source": self.source, **self.detail}


def trtllm_finetune(kv_cache_max_requests: float, isl: float, osl: float, pp: int = 1) -> tuple[int, int]:
    """tensorrt_llm/bench/build/tuning.py finetune_setting: round the KV-bound batch up
    ("slightly optimistic") and size the token budget to one batch's prompt/output mix."""
    raw_bs = min(kv_cache_max_requests, TRTLLM_BENCH_MAX_REQUESTS) / pp
    raw_token = min(raw_bs * (1 + isl / osl), TRTLLM_BENCH_MAX_TOKENS)
    if raw_bs < 256:
        max_bs = max(64, 32 * math.ceil(raw_bs / 32))
    elif raw_bs < 1024:
        max_bs = 128 * math.ceil(raw_bs / 128)
    else:
        max_bs = 256 * math.ceil(raw_bs / 256)
    if raw_token < 4096:  # at least 2048 "to ensure Ctx/Gen overlap efficiency"
        max_token = max(2048, 256 * math.ceil(raw_token / 256))
    elif raw_token < 8192:
        max_token = 512 * math.ceil(raw_token / 512)
    else:
        max_token = 1024 * math.ceil(raw_token / 1024)
    return max_bs, max_token


def trtllm_bench_limits(model: ModelSpec, device: Device, tp: int, pp: int, isl: float, osl: float,
                        dtype: str, kv_dtype: str) -> tuple[int, int, dict]:
    """tensorrt_llm/bench/build/tuning.py calc_engine_setting (0.14): KV bytes per token with at
    least one KV head per TP rank, engine size = parameters (in units of 1e9) × bytes per weight,
    device memory in GiB (NVML total), 0.95 of what is left for KV; requests that fit at
    ISL + OSL go to `trtllm_finetune`."""
    if isl < 1 or osl < 1:
        raise InputError(f"trtllm-bench needs input and output lengths >= 1 (got {isl}/{osl})")
    w_b = _HEURISTIC_BYTES.get(dtype, 2.0)
    kv_b = _HEURISTIC_BYTES.get(kv_dtype, 2.0) if kv_dtype == "fp8" else 2.0
    kv_heads = max(tp, model.num_kv_heads)
    if model.is_mla:  # later tuning.py: the latent (kv_lora_rank + rope dim) instead of K and V
        per_token_gib = model.num_layers * (model.kv_lora_rank + model.qk_rope_head_dim) * kv_b / 2**30
    else:
        per_token_gib = 2 * model.num_layers * kv_heads * model.head_dim * kv_b / 2**30
    n_gpus = tp * pp
    engine_gb = model.num_params / 1000**3 * w_b
    total_gib = float(device.hbm_bytes or 0) / 2**30 * n_gpus
    cache = (total_gib - engine_gb) * TRTLLM_BENCH_KV_FRACTION
    max_requests = cache / (per_token_gib * (isl + osl))
    if total_gib < engine_gb or max_requests < 1:
        raise InputError(f"trtllm-bench: {model.name} ({engine_gb:.0f} GB of weights) leaves no KV "
                         f"cache for {isl:g}+{osl:g} tokens on {n_gpus}x {device.name}; raise tp")
    bs, tok = trtllm_finetune(max_requests, isl, osl, pp)
    return bs, tok, {"kv_cache_max_requests": round(max_requests, 2), "engine_size_gb": round(engine_gb, 2)}


def _vllm_big(device: Device) -> bool:
    # vllm/engine/arg_utils.py _set_default_args_v1: device memory >= 70 GiB and not an A100
    return float(device.hbm_bytes or 0) >= 70 * 2**30 and "a100" not in device.name


def offline_limits(client: str, model: ModelSpec, device: Device, tp: int, pp: int, isl: float,
                   osl: float, dtype: str, kv_dtype: str) -> OfflineLimits:
    """The limits `client` would run `model` with (see module docstring for the sources)."""
    if client == "trtllm-bench":
        bs, tok, detail = trtllm_bench_limits(model, device, tp, pp, isl, osl, dtype, kv_dtype)
        return OfflineLimits(client, "trtllm", bs, tok, True,
                             "tensorrt_llm/bench/build/tuning.py calc_engine_setting (0.14)", detail)
    if client == "vllm-throughput":
        big = _vllm_big(device)
        return OfflineLimits(client, "vllm", 1024 if big else 256, 16384 if big else 8192, True,
                             "vllm/engine/arg_utils.py _set_default_args_v1 (LLM_CLASS)", {})
    if client == "sglang-offline":
        from simulator.serving.scheduler import engine_config
        cfg = engine_config("sglang", device, tp)
        return OfflineLimits(client, "sglang", cfg.max_num_seqs, cfg.max_num_batched_tokens, True,
                             "python/sglang/srt/server_args.py ServerArgs defaults", {})
    raise InputError(f"unknown offline client {client!r}; valid: {', '.join(OFFLINE_CLIENTS)}")


def offline_plan_options(limits: OfflineLimits) -> dict:
    """`ServingPlan` fields that set these limits (engine_config overrides)."""
    opts = {"engine": limits.engine, "max_batch": limits.max_batch_size,
            "max_tokens": max(limits.max_num_tokens, limits.max_batch_size)}
    if limits.engine == "trtllm":
        # chunked context on, chunks up to the token budget; KV at kv_cache_percent
        opts["chunk"] = opts["max_tokens"]
        opts["gpu_memory_utilization"] = TRTLLM_BENCH_KV_PERCENT
        # trtllm-bench 0.14 builds and runs a TensorRT engine (bench/build/build.py: LLM(...)
        # .save(engine_dir)), whose AllreducePlugin has the 0.x custom all-reduce workspace
        opts["trt_engine"] = True
    return opts


def offline_workload(num_requests: int, isl: LengthDist | int, osl: LengthDist | int,
                     seed: int = 0) -> ServingWorkload:
    """All `num_requests` issued at t = 0 (one closed-loop client each, none ever reissues)."""
    if num_requests < 1:
        raise InputError(f"requests={num_requests} must be >= 1")
    p = isl if isinstance(isl, LengthDist) else LengthDist.parse(str(int(isl)))
    o = osl if isinstance(osl, LengthDist) else LengthDist.parse(str(int(osl)))
    return ServingWorkload(num_requests=num_requests, prompt_len=p, output_len=o,
                           concurrency=num_requests, seed=seed)


def mean_length(dist: LengthDist) -> float:
    """The dataset mean the tools tune to (trtllm-bench reads avg_isl/avg_osl)."""
    m = getattr(dist, "mean", None)
    if m is not None and math.isfinite(float(m)):
        return float(m)
    raise InputError(f"length distribution {dist} has no mean")


def run_offline(client: str, model: ModelSpec, cluster, tp: int, isl, osl, num_requests: int,
                dtype: str = "bf16", kv_dtype: str | None = None, pp: int = 1, ep: int = 1,
                seed: int = 0) -> dict:
    """Simulate one offline benchmark run; the `ServingReport` dict plus `offline_limits`."""
    from simulator.serving.engine import ReplicaGroup, ServingPlan, ServingSimulation
    wl = offline_workload(num_requests, isl, osl, seed)
    kvd = kv_dtype or ("bf16" if dtype in ("fp8", "fp4") else dtype)
    limits = offline_limits(client, model, cluster.device, tp, pp, mean_length(wl.prompt_len),
                            mean_length(wl.output_len), dtype, kvd)
    plan = ServingPlan((ReplicaGroup(cluster, tp, pp, ep, 1),), dtype=dtype, kv_dtype=kvd,
                       prefix_caching=False, **offline_plan_options(limits))
    doc = ServingSimulation(model, plan, wl).run().to_dict()
    doc["offline_limits"] = limits.to_dict()
    return doc


def offline_setup(client: str, model: ModelSpec, cluster, plan_text: str, prompt_len: str,
                  output_len: str, requests: int | None, dtype: str = "bf16",
                  kv_dtype: str | None = None, seed: int = 0, **plan_options):
    """(ServingPlan, ServingWorkload, OfflineLimits) for `simulate serve --client <offline tool>`:
    the plan string gives the replica shape (tp pp ep); max_batch / max_tokens / chunk given there
    override the tool's own choice, as its command-line flags would."""
    from dataclasses import replace as _replace
    from simulator.serving.engine import parse_serving_plan
    if client not in OFFLINE_CLIENTS:
        raise InputError(f"unknown offline client {client!r}; valid: {', '.join(OFFLINE_CLIENTS)}")
    if prompt_len is None or output_len is None:
        raise InputError(f"--client {client} needs --prompt-len and --output-len")
    p = LengthDist.parse(prompt_len, "--prompt-len")
    o = LengthDist.parse(output_len, "--output-len")
    wl = offline_workload(requests or 1000, p, o, seed)
    plan = parse_serving_plan(plan_text, cluster, dtype=dtype, kv_dtype=kv_dtype, **plan_options)
    if plan.disaggregated or len(plan.groups) != 1 or plan.groups[0].count != 1:
        raise InputError(f"--client {client} benchmarks one engine instance: give tp/pp/ep only "
                         f"(no replicas or disaggregation keys)")
    g = plan.groups[0]
    kvd = kv_dtype or ("bf16" if dtype in ("fp8", "fp4") else dtype)
    limits = offline_limits(client, model, cluster.device, g.tp, g.pp, mean_length(p), mean_length(o),
                            dtype, kvd)
    opts = offline_plan_options(limits)
    for key in ("max_batch", "max_tokens", "chunk"):
        if getattr(plan, key) is not None:  # the user's own flag wins
            opts.pop(key, None)
    if plan.max_batch is not None or plan.max_tokens is not None:
        limits = _replace(limits, max_batch_size=plan.max_batch or limits.max_batch_size,
                          max_num_tokens=plan.max_tokens or limits.max_num_tokens,
                          source=limits.source + " (overridden by --plan)")
    plan = _replace(plan, prefix_caching=False, **opts)
    return plan, wl, limits
