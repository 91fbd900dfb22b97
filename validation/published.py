"""Published training throughput vs the simulator's prediction (validation only: no constant is
fitted to these rows, docs/design.md §5)."""
from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

from hwmodels.clusters import load_cluster
from hwmodels.errors import InputError
from hwmodels.fileio import write_text_atomic
from simulator.analytic import estimate
from simulator.models import load_model, megatron_gpt
from simulator.regimes import REGIMES_FILE, regime_key
from simulator.software import apply_software, get_software
from simulator.training import TrainingJob, TrainingPlan, every_nth_layers

DATA = Path(__file__).parent / "data" / "published"
TABLE1 = DATA / "megatron2021_table1_weak_scaling_a100.csv"
NEMO = DATA / "nemo_2407_perf_summary_h100_fp8.csv"
LLMFOUNDRY = DATA / "llmfoundry_mpt_a100_fsdp.csv"
TABLE2 = DATA / "megatron2021_table2_zero3_vs_ptdp.csv"
MLPERF = DATA / "mlperf_training_gpt3_175b_v3.0.csv"
BRIDGE = DATA / "megatron_bridge_dgx_h100.csv"
BRIDGE_BLACKWELL = DATA / "megatron_bridge_blackwell.csv"
TORCHTITAN = DATA / "torchtitan_llama_performance.csv"
# MPT sizes (layers, d_model, heads): mosaicml/llm-foundry scripts/train/yamls/pretrain/mpt-*.yaml;
# vocab 50368 (GPT-NeoX tokenizer padded); GELU MLP of 4·d, learned positions in these benchmarks
# (the NumParams column grows by seq·d with the sequence: tests/test_published.py checks it).
MPT = {"125m": (12, 768, 12), "350m": (24, 1024, 16), "760m": (24, 1536, 12), "1b": (24, 2048, 16),
       "3b": (32, 2560, 20), "7b": (32, 4096, 32), "13b": (40, 5120, 40), "30b": (48, 7168, 64),
       "70b": (80, 8192, 64)}
MPT_VOCAB = 50368
# NeMo model names -> our presets (GPT3-5B/20B and Nemotron have no preset: not modelled)
NEMO_MODELS = {"GPT3-175B": "gpt3-175b", "LLAMA2-7B": "llama2-7b", "LLAMA2-13B": "llama2-13b",
               "LLAMA2-70B": "llama2-70b", "LLAMA3-8B": "llama3-8b", "LLAMA3-70B": "llama3-70b"}
MICRO_BATCHES = (1, 2, 4, 8)
# Table 2's models (layers, hidden, heads): GPT-3 175B (Brown et al. 2020, Table 2.1) and Table 1's 529.6B row
MEGATRON_GPT = {174.6: (96, 12288, 96), 529.6: (105, 20480, 128)}
# Megatron-Bridge model headings -> our presets (Nemotron-3 Nano: hybrid Mamba-2 + attention + MoE
# layers, its config in the recipe: recipes/nemotronh/h100/nemotron_3_nano.py)
BRIDGE_MODELS = {"Nemotron_3_Nano": "nemotron-3-nano-30b-a3b",
                 "LLAMA3_70B": "llama3-70b", "LLAMA3.1_405B": "llama3-405b", "Qwen3_30B_a3B": "qwen3-30b-a3b",
                 "Qwen3_235B_a22B": "qwen3-235b-a22b", "GPT OSS 120B": "gpt-oss-120b", "LLAMA3_8B": "llama3-8b",
                 "Kimi_K2": "kimi-k2", "DeepSeekV3": "deepseek-v3", "DeepSeekV3 (w/ MTP)": "deepseek-v3",
                 "DeepSeekV3 (w/o MTP)": "deepseek-v3",
                 # token-drop runs: capacity factor 1 over force-balanced routing drops nothing
                 "Qwen3_30B_a3B (tokendrop)": "qwen3-30b-a3b", "Qwen3_235B_a22B (tokendrop)": "qwen3-235b-a22b",
                 "DeepSeekV3 (tokendrop)": "deepseek-v3", "DeepSeekV3 (dropless)": "deepseek-v3"}
# Runs of a model with MTP layers that trained without them
BRIDGE_NO_MTP = {"DeepSeekV3 (w/o MTP)"}
# The pipeline layouts of the 61-layer DeepSeek-V3 / Kimi-K2 recipes by model chunks (pp·vp), MTP
# with the loss (Megatron-Bridge recipes/deepseek/h100/deepseek_v3.py
# `_get_deepseek_v3_pipeline_layout`, recipes/kimi/h100/kimi_k2.py `_get_kimi_k2_pipeline_layout`;
# the GB300 recipes pass "Et*4|(t*4|)*14tmL" for 16 chunks); "{m}" is one 'm' per MTP layer
LAYOUTS_61 = {4: "Et*16|t*16|t*16|t*13{m}L", 8: "Et*8|(t*8|)*6t*5{m}L", 16: "Et*4|(t*4|)*14t{m}L"}
# Megatron-Bridge systems -> cluster presets (the NVL72 racks: a job's GPUs in NVLink domains of
# at most 64, the 16 trays a job takes of a rack's 18)
BRIDGE_CLUSTERS = {"DGX-H100": "dgx-h100", "DGX-B200": "dgx-b200", "DGX-B300": "dgx-b300",
                   "DGX-GB200": "gb200-nvl72", "DGX-GB300": "gb300-nvl72"}
NVL_JOB_DOMAIN = 64
BRIDGE_NUMERIC = ("#-GPUs", "GBS", "MBS", "Sequence Length", "FSDP", "TP", "PP", "CP", "VP", "EP", "GA",
                  "Tokens / sec / GPU", "Model TFLOP / sec / GPU")
# printed precisions -> dtypes (MXFP8 and FP8 current scaling are FP8 GEMMs; NVFP4 is FP4)
BRIDGE_DTYPES = {"FP8": "fp8", "MXFP8": "fp8", "FP8-CS": "fp8", "FP8-MX": "fp8", "FP8-CS (FP8-MX)": "fp8",
                 "NVFP4": "fp4", "BF16": "bf16"}
# Recipes that overlap the MoE all-to-all with the other micro-batch's compute
# (overlap_moe_expert_parallel_comm=True with delay_wgrad_compute: Megatron-Bridge
# scripts/performance perf_recipes/qwen/h100/qwen3_moe.py for Qwen3-235B; the Qwen3-30B H100
# recipe runs the HybridEP dispatcher without it)
BRIDGE_EP_OVERLAP = {"Qwen3_235B_a22B"}
# ... and the DeepSeek-V3 recipes that turn it on, by system, precision and their (PP, VP, EP)
# (perf_recipes/deepseek at the snapshot: the b200 fp8mx and nvfp4 configs; GB200/GB300 MXFP8 through
# _enable_deepseek_full_iteration_mxfp8); runs of another layout ran an older recipe
BRIDGE_EP_OVERLAP_RUNS = {("DeepSeekV3", "DGX-B200", "MXFP8", 8, 2, 32), ("DeepSeekV3", "DGX-B200", "NVFP4", 8, 2, 32),
                          ("DeepSeekV3", "DGX-GB200", "MXFP8", 4, 4, 64),
                          ("DeepSeekV3", "DGX-GB300", "MXFP8", 2, 8, 32)}
BRIDGE_NOT_MODELLED = {
    # Megatron-Bridge recipes/nemotronh/h100/nemotron_3_super.py and nemotron_3_ultra.py build the
    # model from its Hugging Face config at run time (AutoBridge.from_hf_pretrained), which the
    # snapshot does not hold; Super's experts are LatentMoE (moe_latent_size, nemotron_h_bridge.py)
    "Nemotron_3_Super": "hybrid Mamba-2 model whose config the recipe reads from Hugging Face at run time "
                        "(not in the Megatron-Bridge snapshot), with LatentMoE experts (moe_latent_size), "
                        "which are not modelled",
    "Nemotron_3_Ultra": "hybrid Mamba-2 model whose config the recipe reads from Hugging Face at run time "
                        "(not in the Megatron-Bridge snapshot): no preset",
    # perf_recipes/nemotronh/gb200/nemotronh.py: the Nano architecture plus 2 repeated MTP layers,
    # whose hybrid block pattern the Blackwell recipes leave unset (the H100 recipe sets "*E")
    "Nemotron_3_5_Lightning": "hybrid Mamba-2 model with multi-token-prediction blocks whose hybrid pattern "
                              "the Blackwell recipes leave unset; MTP blocks of hybrid models are not modelled",
    "DeepSeekV4 Flash": "no DeepSeek-V4 preset (its published config is not in the catalog)"}


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


def _run(fn, rows: list, executor=None) -> list:
    """[fn(row) for row in rows], on `executor` (simulator.executor) when given."""
    return executor.map(fn, rows) if executor is not None else [fn(r) for r in rows]


def _table1_case(r: dict) -> dict:
    """The case of one Table 1 row: the best plan Megatron-LM 2021 could have run."""
    h, L, a = int(r["hidden_size"]), int(r["num_layers"]), int(r["attention_heads"])
    tp, pp, gpus = int(r["tensor_parallel"]), int(r["pipeline_parallel"]), int(r["num_gpus"])
    s, B, V = int(r["seq_len"]), int(r["global_batch_size"]), int(r["vocab_size"])
    model = megatron_gpt(f"gpt-{r['params_billion']}b", L, h, a, vocab_size=V, seq_len=s)
    # Megatron-LM 2021 software (simulator/software.py): fp16, unfused attention with dropout,
    # gradient all-reduce after backward (no overlap), no distributed optimizer.
    job = apply_software(TrainingJob(model=model, seq_len=s, global_batch=B, dtype="fp16"), "megatron-lm-2021")
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
    return {"name": f"GPT {r['params_billion']}B, {gpus} A100, tp={tp} pp={pp}",
            "predicted": round(pred, 2), "measured": measured, "unit": "TFLOP/s per GPU",
            "table": "megatron-2021-table1",
            "error_pct": round(100 * (pred - measured) / measured, 2),
            "plan": best.plan.to_string(), "step_time_s": best.step_time_s,
            "breakdown_s": best.breakdown_s, "regime": regime_key(job, best.plan, cluster),
            "devices": cluster.num_devices}


def megatron_table1(executor=None) -> dict:
    with open(TABLE1) as f:
        rows = list(csv.DictReader(f))
    cases = _run(_table1_case, rows, executor)
    return {"suite": "published", "source": "Narayanan et al. 2021 (arXiv 2104.04473) Table 1",
            "cases": cases, **{k: v for k, v in _stats(cases).items() if k != "cases"}}


def nemo_2407(executor=None) -> list[dict]:
    """NeMo 24.07 pretraining on DGX-H100 in FP8 (the latest doc version of the table): tokens/s
    per GPU with each row's own TP/PP/CP/VP and micro-batch. NeMo's software as its performance
    recipes run it: Transformer Engine FP8 GEMMs with bf16 flash attention, sequence parallelism
    with TP, the distributed optimizer with overlapped gradient reduce-scatter and parameter
    all-gather, TP communication overlap (userbuffers), P2P overlap with the interleaved
    schedule; dropout only in the GPT-3 configs. Recompute is not in the table: the first of
    none/selective/full that fits in 80 GB."""
    with open(NEMO) as f:
        rows = [r for r in csv.DictReader(f) if r["section"] == "Pretraining"]
    latest = max(r["doc_version"] for r in rows)
    rows = [r for r in rows if r["doc_version"] == latest and r["Model"] in NEMO_MODELS]
    return _run(_nemo_case, rows, executor)


def _first_fit(job: TrainingJob, cluster, offload_layers: bool = False, **plan) -> object:
    """The estimate of the plan with the least recompute (none, selective, full) that fits in
    memory: the tables do not print recompute, and their recipes recompute only what they must.
    With `offload_layers` the recipe offloads activations to host memory before it recomputes:
    the fewest offloaded layers (in steps of 10) that let no recompute fit come first."""
    est = None
    offloads = range(0, job.model.num_layers, 10) if offload_layers else (0,)
    for rc in ("none", "selective", "full"):
        for off in (offloads if rc == "none" else (0,)):
            est = estimate(job, TrainingPlan(recompute=rc, act_offload=off, **plan), cluster)
            if est.fits:
                return est
    return est


def _nemo_case(r: dict) -> dict:
    """The case of one NeMo 24.07 row."""
    model = load_model(NEMO_MODELS[r["Model"]])
    gpus, seq = int(r["#-GPUs"]), int(float(r["Sequence Length"]))
    tp, pp, cp, vp = (int(float(r[k] or 1)) for k in ("TP", "PP", "CP", "VP"))
    job = apply_software(TrainingJob(model=model, seq_len=seq, global_batch=int(r["GBS"]), dtype="fp8"),
                         "nemo-24.07", overlap_p2p_comm=vp > 1, dropout=r["Model"].startswith("GPT3"))
    cluster = load_cluster("dgx-h100", nodes=gpus // 8)
    est = _first_fit(job, cluster, dp=gpus // (tp * pp * cp), tp=tp, pp=pp, cp=cp, vpp=vp, mb=int(r["MBS"]),
                     schedule="interleaved" if vp > 1 else "1f1b", sp=tp > 1, zero=1)
    measured = float(r["Tokens / sec / GPU"])
    pred = est.tokens_per_s / gpus
    return {"name": f"NeMo {r['Model']}, {gpus} H100 FP8, tp={tp} pp={pp} cp={cp} vp={vp}",
            "predicted": round(pred, 1), "measured": measured, "unit": "tokens/s per GPU",
            "error_pct": round(100 * (pred - measured) / measured, 2), "table": "nemo-24.07",
            "plan": est.plan.to_string(), "step_time_s": est.step_time_s,
            "breakdown_s": est.breakdown_s, "regime": regime_key(job, est.plan, cluster),
            "devices": cluster.num_devices}


def nemo_report() -> dict:
    cases = nemo_2407()
    return {"suite": "published", "source": "NeMo 24.07 performance summary, DGX-H100 FP8",
            "cases": cases, **{k: v for k, v in _stats(cases).items() if k != "cases"}}


def mpt_model(size: str, seq_len: int):
    L, d, a = MPT[size]
    return megatron_gpt(f"mpt-{size}", L, d, a, vocab_size=MPT_VOCAB, seq_len=seq_len)


def _llmfoundry_case(r: dict) -> dict:
    """One llm-foundry row: its model, GPUs, micro-batch, global batch and activation
    checkpointing as printed, on the `llm-foundry` software profile (FSDP FULL_SHARD, the
    Triton FlashAttention port)."""
    seq, gpus, mb = int(r["SeqLen (T)"]), int(r["# GPUs"]), int(r["MicroBatchSize"])
    job = apply_software(TrainingJob(model=mpt_model(r["Model"], seq), seq_len=seq,
                                     global_batch=int(r["GlobalBatchSize"]), dtype="bf16"), "llm-foundry")
    preset = {"a100_80gb": "dgx-a100", "a100_40gb": "dgx-a100-40g"}[r["GPU"]]
    cluster = load_cluster(preset, nodes=max(1, gpus // 8))
    plan = TrainingPlan(dp=gpus, mb=mb, recompute="full" if r["Activation Checkpointing"] == "True" else "none",
                        **get_software("llm-foundry").plan_defaults)
    est = estimate(job, plan, cluster)
    measured = float(r["Throughput (T/s/GPU)"])
    pred = est.tokens_per_s / gpus
    return {"name": f"MPT-{r['Model']}, {gpus} {r['GPU']}, seq {seq}, mb={mb}",
            "predicted": round(pred, 1), "measured": measured, "unit": "tokens/s per GPU",
            "error_pct": round(100 * (pred - measured) / measured, 2), "table": "llm-foundry-fsdp",
            "size": r["Model"], "plan": est.plan.to_string(), "step_time_s": est.step_time_s,
            "breakdown_s": est.breakdown_s, "regime": regime_key(job, est.plan, cluster),
            "devices": cluster.num_devices}


def llmfoundry_fsdp(executor=None) -> list[dict]:
    """llm-foundry's MPT throughput table on A100 (PyTorch FSDP; validation only)."""
    with open(LLMFOUNDRY) as f:
        rows = list(csv.DictReader(f))
    return _run(_llmfoundry_case, rows, executor)


# ---- Megatron-LM 2021 Table 2: ZeRO-3 without model parallelism vs PTD-P --------------------------

def _table2_case(r: dict) -> dict:
    """One Table 2 row. PTD-P rows run Megatron-LM 2021 as Table 1 does (TP 8 inside a node, the
    rest of the model-parallel size as PP, micro-batch and interleaving free). ZeRO-3 rows shard
    everything over data parallelism (zero=3, no TP/PP) with full recompute, the printed micro-batch,
    and DeepSpeed ZeRO-3 as it ran in spring 2021 (the `deepspeed-0.3` software profile: per
    sub-module gathers behind torch.cuda.synchronize(), so nothing overlaps; arXiv 2104.04473 §5.2
    ran DeepSpeed's ZeRO-3)."""
    size = float(r["params_billion"])
    L, h, a = MEGATRON_GPT[size]
    gpus, B = int(r["num_gpus"]), int(r["global_batch_size"].rstrip("*"))
    model = megatron_gpt(f"gpt-{size}b", L, h, a, vocab_size=51200, seq_len=int(r["seq_len"]))
    zero3 = r["scheme"].startswith("ZeRO-3")
    job = apply_software(TrainingJob(model=model, seq_len=int(r["seq_len"]), global_batch=B, dtype="fp16"),
                         "deepspeed-0.3" if zero3 else "megatron-lm-2021")
    cluster = load_cluster("dgx-a100", nodes=gpus // 8)
    if zero3:
        plans = [TrainingPlan(dp=gpus, mb=int(r["microbatch_size"]), zero=3, recompute="full")]
    else:
        tp = 8
        pp = int(r["model_parallel_size"]) // tp
        plans = list(megatron2021_plans(job, tp, pp, gpus // (tp * pp)))
    best = _fastest_fitting(job, plans, cluster)
    measured = float(r["achieved_tflops_per_gpu"])
    pred = best.tflops_per_device
    return {"name": f"{r['scheme'][:9]} GPT {size:g}B, {gpus} A100, mb={r['microbatch_size']}",
            "predicted": round(pred, 2), "measured": measured, "unit": "TFLOP/s per GPU",
            "table": "megatron-2021-table2", "error_pct": round(100 * (pred - measured) / measured, 2),
            "fits": best.fits,
            "plan": best.plan.to_string(), "step_time_s": best.step_time_s, "breakdown_s": best.breakdown_s,
            "regime": regime_key(job, best.plan, cluster), "devices": cluster.num_devices}


def _fastest_fitting(job: TrainingJob, plans, cluster):
    """The fastest of `plans` that fits in memory (a row that does not print every plan key ran
    the best the software allowed). When none fits in the modelled memory although the run was
    published, the fastest of all: the case then says so (`fits` False), a memory-model miss."""
    ests = []
    for plan in plans:
        try:
            ests.append(estimate(job, plan, cluster))
        except InputError:
            continue
    if not ests:
        raise InputError(f"no plan of {job.model.name} on {cluster.num_devices} devices is valid")
    return min(ests, key=lambda e: (not e.fits, e.step_time_s))


def megatron_table2(executor=None) -> list[dict]:
    with open(TABLE2) as f:
        rows = list(csv.DictReader(f))
    return _run(_table2_case, rows, executor)


# ---- MLPerf Training v3.0 GPT-3 175B (NVIDIA H100 submissions) -----------------------------------

def _mlperf_case(rows: list[dict]) -> dict:
    """One MLPerf system (its runs): the median of the runs' median step times, as tokens/s per
    GPU. The config files fix TP, PP and the micro-batch; virtual stages are not in the table
    (blank), so every interleaving the 96 layers allow is tried and the fastest that fits kept.
    FP8, selective recompute, sequence parallelism: the submission's megatron_gpt_config.yaml."""
    r = rows[0]
    gpus = int(r["nodes"]) * int(r["accel_per_node"])
    tp, pp, mb = int(r["TP"]), int(r["PP"]), int(r["MBS"])
    B, seq = int(r["global_batch_size"]), int(r["seq_len"])
    job = apply_software(TrainingJob(model=load_model("gpt3-175b"), seq_len=seq, global_batch=B, dtype="fp8"),
                         "nemo-mlperf-3.0")
    cluster = load_cluster("dgx-h100", nodes=int(r["nodes"]))
    dp = gpus // (tp * pp)
    L = job.model.num_layers
    plans = [TrainingPlan(dp=dp, tp=tp, pp=pp, mb=mb, sp=True, zero=1, recompute="selective",
                          schedule="interleaved" if v > 1 else "1f1b", vpp=v)
             for v in range(1, L // pp + 1) if L % (pp * v) == 0 and (v == 1 or (B // (dp * mb)) % pp == 0)]
    best = _fastest_fitting(job, plans, cluster)
    steps = sorted(float(x["median_train_step_s"]) for x in rows)
    measured = B * seq / steps[len(steps) // 2] / gpus
    pred = best.tokens_per_s / gpus
    return {"name": f"MLPerf 3.0 {r['org']} {gpus} H100, tp={tp} pp={pp} gbs={B}",
            "predicted": round(pred, 1), "measured": round(measured, 1), "unit": "tokens/s per GPU",
            "table": "mlperf-3.0-gpt3", "error_pct": round(100 * (pred - measured) / measured, 2),
            "fits": best.fits,
            "plan": best.plan.to_string(), "step_time_s": best.step_time_s, "breakdown_s": best.breakdown_s,
            "regime": regime_key(job, best.plan, cluster), "devices": cluster.num_devices}


def mlperf_gpt3(executor=None) -> tuple[list[dict], list[dict]]:
    """(cases, skipped): the H100 systems with a published step time and config; the rest
    (Gaudi2: no TP/PP in the table, no step timing logged) listed as skipped with the reason."""
    with open(MLPERF) as f:
        rows = list(csv.DictReader(f))
    systems: dict = {}
    skipped = []
    for r in rows:
        if not (r["median_train_step_s"] and r["TP"] and r["PP"] and r["MBS"]):
            skipped.append({"row": f"{r['org']} {r['system_dir']} {r['result_file']}",
                            "reason": "no step timing or no TP/PP/MBS in the published config"})
            continue
        systems.setdefault(r["system_dir"], []).append(r)
    return _run(_mlperf_case, list(systems.values()), executor), skipped


# ---- Megatron-Bridge performance summary, DGX-H100 ------------------------------------------------

# The LoRA rows' adapters: Megatron-Bridge peft/lora.py LoRA (dim 32 by default, which
# llama3_70b_peft_config keeps) on linear_qkv only (perf_recipes/llama/*/llama3.py
# llama3_70b_peft_*_config: cfg.peft.target_modules = ["linear_qkv"])
BRIDGE_LORA_RANK = 32
BRIDGE_LORA_TARGETS = ("qkv",)


def _bridge_case(r: dict) -> dict:
    """One Megatron-Bridge row: its TP/PP/CP/VP/EP, micro-batch and global batch as printed, on the
    `megatron-bridge` software profile; recompute is not printed: the least that fits."""
    model = load_model(BRIDGE_MODELS[r["model"]])
    if r["model"] in BRIDGE_NO_MTP:
        model = replace(model, mtp_layers=0)
    gpus, seq = int(r["#-GPUs"]), int(r["Sequence Length"])
    num = {k: int(r[k]) if r[k] not in ("", "n/a") else 1 for k in ("TP", "PP", "CP", "VP", "EP")}
    tp, pp, cp, vp, ep = (num[k] for k in ("TP", "PP", "CP", "VP", "EP"))
    if r["Precision"] not in BRIDGE_DTYPES:
        raise InputError(f"precision {r['Precision']!r} not printed or not known")
    job = apply_software(TrainingJob(model=model, seq_len=seq, global_batch=int(r["GBS"]),
                                     dtype=BRIDGE_DTYPES[r["Precision"]]), "megatron-bridge",
                         overlap_ep_comm=(r["model"] in BRIDGE_EP_OVERLAP
                                          or (r["model"], r["System"], r["Precision"], pp, vp, ep)
                                          in BRIDGE_EP_OVERLAP_RUNS))
    if r["section"].startswith("LoRA"):
        job = replace(job, lora_rank=BRIDGE_LORA_RANK, lora_targets=BRIDGE_LORA_TARGETS)
    cluster = _bridge_cluster(r["System"], gpus)
    fsdp = r.get("FSDP", "").split(" ")[0] not in ("", "0")  # Megatron-FSDP: parameters sharded too
    # the recipes of the models whose layers the pipeline does not divide (Llama 3.1 405B, Qwen3
    # 235B) count the embedding and the loss as pipeline slots (Megatron-Bridge recipes:
    # account_for_embedding_in_pipeline_split / account_for_loss_in_pipeline_split = True)
    slots = model.num_layers % (pp * vp) != 0
    layout = ""
    if slots and model.num_layers == 61 and pp * vp in LAYOUTS_61:
        layout, slots = LAYOUTS_61[pp * vp].format(m="m" * model.mtp_layers), False
    elif slots and model.num_layers == 61:
        # the recipes' layout maps (recipes/deepseek/deepseek_v3.py, every version) hold none for
        # this pp × vp, the doc prints none, and 61 layers do not split evenly without one
        raise InputError(f"the source leaves out the pipeline layout: no DeepSeek-V3 recipe layout for "
                         f"pp={pp} × vp={vp} ({model.num_layers} layers in {pp * vp} chunks), and the "
                         f"performance summary does not print the one the run used")
    elif model.mtp_layers and pp > 1:  # MTP with the loss, in the last stage (where the engine costs it)
        slots = False
    # Megatron-FSDP recipes on Grace-Blackwell offload activations to Grace memory instead of
    # recomputing (Megatron-Bridge perf_recipes/llama/gb200|gb300/llama3.py: cpu_offloading with
    # cpu_offloading_num_layers 20-40)
    est = _first_fit(job, cluster, offload_layers=fsdp, dp=gpus // (tp * pp * cp), tp=tp, pp=pp, cp=cp, vpp=vp, ep=ep,
                     mb=int(r["MBS"]), schedule="interleaved" if vp > 1 else "1f1b", sp=tp > 1,
                     zero=3 if fsdp else 1, pp_embed=slots, pp_loss=slots, layout=layout)
    measured = float(r["Tokens / sec / GPU"])
    pred = est.tokens_per_s / gpus
    layout = " ".join(f"{k.lower()}={num[k]}" for k in ("TP", "PP", "CP", "VP", "EP") if num[k] > 1)
    system = r["System"].removeprefix("DGX-")
    return {"name": f"{r['model']} {r['section'].split()[0]}, {gpus} {system} {r['Precision']} {layout}"
                    + (" fsdp" if fsdp else ""),
            "container": r["container"],
            "predicted": round(pred, 1), "measured": measured, "unit": "tokens/s per GPU",
            "table": "megatron-bridge-h100" if system == "H100" else "megatron-bridge-blackwell",
            "error_pct": round(100 * (pred - measured) / measured, 2),
            "fits": est.fits,
            "plan": est.plan.to_string(), "step_time_s": est.step_time_s, "breakdown_s": est.breakdown_s,
            "regime": regime_key(job, est.plan, cluster), "devices": cluster.num_devices}


def _bridge_cluster(system: str, gpus: int):
    """The cluster a Megatron-Bridge row ran on: its system's preset with the row's GPUs (NVL72
    racks as NVLink domains of NVL_JOB_DOMAIN GPUs, or fewer when the job is smaller)."""
    cluster = load_cluster(BRIDGE_CLUSTERS[system])
    if cluster.devices_per_node <= 8:
        return cluster.with_nodes(max(1, gpus // cluster.devices_per_node))
    d = min(gpus, NVL_JOB_DOMAIN)
    scale = d / cluster.devices_per_node
    domain = replace(cluster.tiers[0], size=d)
    return replace(cluster, devices_per_node=d, tiers=(domain,) + cluster.tiers[1:],
                   nics_per_node=max(1, round(cluster.nics_per_node * scale))).with_nodes(gpus // d)


def _bridge_try(r: dict):
    """(case, None) or (None, skipped entry) for one row: a row the model cannot express (a plan
    the model refuses, e.g. pipeline stages that do not divide the layers) is listed, not dropped."""
    try:
        return _bridge_case(r), None
    except InputError as e:
        return None, {"row": f"{r['container']} {r['model']} {r['section']}", "reason": str(e)}


def megatron_bridge(executor=None, path=BRIDGE) -> tuple[list[dict], list[dict]]:
    """(cases, skipped): the latest container's row of each distinct run (system, model, section,
    GPUs, precision, batch and parallel layout) of a Megatron-Bridge table (`path`: the DGX-H100
    rows, or the Blackwell systems'); the models not modelled are skipped with the reason."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    latest: dict = {}
    skipped = []
    for r in rows:
        heading = r["model_or_system_heading"]
        model = heading.removeprefix("Model: ").strip() if heading.startswith("Model:") else r["Model"].strip()
        # a cell "A (B)" prints a second variant of the run (other quantisation granularity or
        # parallel layout, the archive's notes): the first is the row's own
        r = {**{k: v.split(" (")[0] if k in BRIDGE_NUMERIC and v else v for k, v in r.items()},
             "model": model, "container": r["nemo_container"].removesuffix(" NeMo Container")}
        key = (r["System"], r["model"], r["section"], r["#-GPUs"], r["Precision"], r["GBS"], r["MBS"],
               r["Sequence Length"], r.get("FSDP") or "0", *(r[k] for k in ("TP", "PP", "CP", "VP", "EP")))
        if key not in latest or _version(r["container"]) > _version(latest[key]["container"]):
            latest[key] = r
    todo = []
    for r in latest.values():
        if r["model"] in BRIDGE_NOT_MODELLED or r["model"] not in BRIDGE_MODELS:
            skipped.append({"row": f"{r['container']} {r['System']} {r['model']}",
                            "reason": BRIDGE_NOT_MODELLED.get(r["model"], "no preset for this model")})
        else:
            todo.append(r)
    out = _run(_bridge_try, todo, executor)
    return [c for c, _ in out if c], skipped + [s for _, s in out if s]


# ---- torchtitan's published Llama runs (FSDP2) --------------------------------------------------

# torchtitan hardware -> our cluster presets; the rest are listed as not replayed
TORCHTITAN_CLUSTERS = {"A100 80GB": "dgx-a100", "H200 (WhiteFiber)": "dgx-h200"}
TORCHTITAN_AC = {"none": "none", "selective op": "selective", "full": "full", "selective layer": "full"}
# "selective layer": torchtitan's layer-level selective AC with the frequency its config defaulted to
# when the table was measured (torchtitan/config_manager.py at 3faaa1a0d: selective_ac_option
# default "2", "checkpoint every other layer"); the doc does not print another
TORCHTITAN_LAYER_AC_FREQ = 2


def _torchtitan_why_not(r: dict) -> str | None:
    if r["hardware"] not in TORCHTITAN_CLUSTERS:
        return (f"{r['hardware']}: an H100 variant (96 GB HBM2e, 500 W power limit) that is not in the "
                "device catalog; no kernel-level data for it")
    if r["activation_checkpointing"] not in TORCHTITAN_AC:
        return f"activation checkpointing {r['activation_checkpointing']!r} is not a plan option"
    return None


def _torchtitan_case(r: dict) -> dict:
    """One torchtitan row: FSDP2 over every GPU (zero=3), the local batch as the micro-batch, its
    activation checkpointing (selective = torchtitan's op-level policy), eager or torch.compile
    (`torchtitan` / `torchtitan-compile` profiles), Float8 linears as fp8 GEMMs."""
    gpus, mb, seq = int(r["gpus"]), int(r["local_batch"]), int(r["seq_len"])
    software = "torchtitan-compile" if r["compile"] == "true" else "torchtitan"
    job = apply_software(TrainingJob(model=load_model(r["model"]), seq_len=seq, global_batch=gpus * mb,
                                     dtype="fp8" if r["float8"] == "true" else "bf16"), software)
    cluster = load_cluster(TORCHTITAN_CLUSTERS[r["hardware"]], nodes=gpus // 8)
    ac = r["activation_checkpointing"]
    # layer-level AC: every 2nd block fully checkpointed, the others keep their activations; one
    # stage (FSDP only) builds every block
    layers = every_nth_layers(job.model.num_layers, TORCHTITAN_LAYER_AC_FREQ) if ac == "selective layer" else None
    est = estimate(job, TrainingPlan(dp=gpus, mb=mb, zero=3, recompute=TORCHTITAN_AC[ac], recompute_layers=layers),
                   cluster)
    measured = float(r["tokens_per_s_per_gpu"])
    pred = est.tokens_per_s / gpus
    tags = ("compile " if r["compile"] == "true" else "eager ") + ("fp8 " if r["float8"] == "true" else "")
    return {"name": f"{r['model']}, {gpus} {r['hardware'].split()[0]}, {tags}AC {r['activation_checkpointing']}",
            "predicted": round(pred, 1), "measured": measured, "unit": "tokens/s per GPU",
            "table": "torchtitan", "error_pct": round(100 * (pred - measured) / measured, 2), "fits": est.fits,
            "plan": est.plan.to_string(), "step_time_s": est.step_time_s, "breakdown_s": est.breakdown_s,
            "regime": regime_key(job, est.plan, cluster), "devices": cluster.num_devices}


def torchtitan_runs(executor=None) -> tuple[list[dict], list[dict]]:
    """(cases, skipped) of torchtitan's published Llama throughput (validation only)."""
    with open(TORCHTITAN) as f:
        rows = list(csv.DictReader(f))
    skipped, todo = [], []
    for r in rows:
        why = _torchtitan_why_not(r)
        if why:
            skipped.append({"row": f"torchtitan {r['doc']} {r['model']} {r['gpus']} GPUs "
                                   f"AC {r['activation_checkpointing']}", "reason": why})
        else:
            todo.append(r)
    return _run(_torchtitan_case, todo, executor), skipped


def _version(container: str) -> tuple:
    """'26.04.01' -> (26, 4, 1): container versions in release order."""
    return tuple(int(x) for x in container.split("."))


def _stats(cases: list[dict]) -> dict:
    """Count, MAPE, mean signed error (above zero: predicted faster than published) and max |error|."""
    errs = [abs(c["error_pct"]) for c in cases]
    return {"cases": len(cases), "mape_pct": round(sum(errs) / len(errs), 2),
            "mean_error_pct": round(sum(c["error_pct"] for c in cases) / len(cases), 2),
            "max_error_pct": round(max(errs), 2)}


def published_report(executor=None) -> dict:
    """Every published end-to-end table the simulator is compared with; the cases run on
    `executor` (simulator.executor) when given, with the same results. Rows a table holds that
    the model cannot express are listed under `skipped` with the reason, never dropped silently."""
    megatron, nemo = megatron_table1(executor)["cases"], nemo_2407(executor)
    foundry, table2 = llmfoundry_fsdp(executor), megatron_table2(executor)
    mlperf, mlperf_skipped = mlperf_gpt3(executor)
    bridge, bridge_skipped = megatron_bridge(executor)
    blackwell, blackwell_skipped = megatron_bridge(executor, BRIDGE_BLACKWELL)
    titan, titan_skipped = torchtitan_runs(executor)
    tables = {
        "megatron-2021-table1": ("Narayanan et al. 2021 (arXiv 2104.04473) Table 1", megatron),
        "megatron-2021-table2": ("Narayanan et al. 2021 (arXiv 2104.04473) Table 2, ZeRO-3 vs PTD-P", table2),
        "nemo-24.07": ("NeMo 24.07 performance summary, DGX-H100 FP8 (doc version of 2024-11-27)", nemo),
        "mlperf-3.0-gpt3": ("MLPerf Training v3.0 GPT-3 175B, NVIDIA H100 systems (median step time)", mlperf),
        "megatron-bridge-h100": ("Megatron-Bridge performance summary, DGX-H100 (latest container per run)",
                                 bridge),
        "llm-foundry-fsdp": ("llm-foundry MPT benchmarks, A100 40/80GB, PyTorch FSDP "
                             "(scripts/train/benchmarking/README.md)", foundry),
        "megatron-bridge-blackwell": ("Megatron-Bridge performance summary, DGX-B200/B300 and GB200/GB300 "
                                      "NVL72 (latest container per run)", blackwell),
        "torchtitan": ("torchtitan Llama runs, FSDP2 (docs/performance.md 2024-08, benchmarks/ 2025-06)", titan),
    }
    cases = [c for _, rows in tables.values() for c in rows]
    meta = {k: {"source": src, **_stats(rows)} for k, (src, rows) in tables.items()}
    meta["llm-foundry-fsdp"]["by_size"] = _by_size(foundry)
    return {"suite": "published", "cases": cases, **{k: v for k, v in _stats(cases).items() if k != "cases"},
            "tables": meta, "skipped": mlperf_skipped + bridge_skipped + blackwell_skipped + titan_skipped}


def _by_size(cases: list[dict]) -> dict:
    """Mean signed and absolute error per model size (the FSDP table's size classes)."""
    out = {}
    for c in cases:
        out.setdefault(c["size"], []).append(c["error_pct"])
    return {k: {"cases": len(v), "mean_error_pct": round(sum(v) / len(v), 2),
                "mape_pct": round(sum(map(abs, v)) / len(v), 2)} for k, v in out.items()}


def format_report(report: dict) -> str:
    lines = []
    for key, meta in report["tables"].items():
        cases = [c for c in report["cases"] if c["table"] == key]
        unit = cases[0]["unit"]
        lines += [f"{meta['source']}: predicted vs published {unit}", "",
                  f"{'case':<52} {'predicted':>9} {'published':>9} {'error':>7}  plan"]
        for c in cases:
            fit = "" if c.get("fits", True) else "  (does not fit in the modelled memory)"
            lines.append(f"{c['name']:<52} {c['predicted']:9.1f} {c['measured']:9.1f} {c['error_pct']:+6.1f}%  "
                         f"{c['plan']}{fit}")
        lines += ["", f"MAPE {meta['mape_pct']:.1f}%   max |error| {meta['max_error_pct']:.1f}%"]
        if "by_size" in meta:
            lines.append("by model size: " + "  ".join(f"{k} {v['mean_error_pct']:+.1f}% (MAPE {v['mape_pct']:.1f}%)"
                                                       for k, v in meta["by_size"].items()))
        lines += ["", ""]
    w = max(len(k) for k in report["tables"])
    lines += ["summary by table (bias: mean signed error, above zero when predicted faster than published)",
              f"{'table':<{w}} {'cases':>5} {'MAPE':>6} {'bias':>7} {'max':>6}"]
    for key, meta in report["tables"].items():
        lines.append(f"{key:<{w}} {meta['cases']:>5} {meta['mape_pct']:5.1f}% {meta['mean_error_pct']:+6.1f}% "
                     f"{meta['max_error_pct']:5.1f}%")
    lines.append(f"all {len(report['cases'])} cases: MAPE {report['mape_pct']:.1f}%   bias "
                 f"{report['mean_error_pct']:+.1f}%   max |error| {report['max_error_pct']:.1f}%")
    if report.get("skipped"):
        lines += ["", f"not replayed ({len(report['skipped'])} rows):"]
        lines += [f"  {s['row']}: {s['reason']}" for s in report["skipped"]]
    return "\n".join(lines)


def regimes(report: dict) -> dict:
    """Per regime (simulator.regimes.regime_key) of the published cases: how many, their MAPE,
    the largest job and the tables they come from: what `simulator/data/validated_regimes.json`
    holds."""
    out: dict = {}
    for c in report["cases"]:
        r = out.setdefault(c["regime"], {"errs": [], "max_devices": 0, "tables": set()})
        r["errs"].append(abs(c["error_pct"]))
        r["max_devices"] = max(r["max_devices"], c["devices"])
        r["tables"].add(c["table"])
    return {k: {"cases": len(v["errs"]), "mape_pct": round(sum(v["errs"]) / len(v["errs"]), 2),
                "max_devices": v["max_devices"], "tables": sorted(v["tables"])} for k, v in sorted(out.items())}


def regimes_document(report: dict) -> str:
    return json.dumps({"written_by": "python -m validation.published --regimes", "regimes": regimes(report)},
                      indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":  # python -m validation.published --regimes: rewrite the regimes file
    import sys
    if sys.argv[1:] != ["--regimes"]:
        sys.exit("usage: python -m validation.published --regimes")
    write_text_atomic(REGIMES_FILE, regimes_document(published_report()))
    print(f"wrote {REGIMES_FILE}")
