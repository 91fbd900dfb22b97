"""Software profiles: the facts of the training software a run used that change kernel costs.

A published throughput is a property of the hardware *and* of the framework version that ran it:
which attention kernel, which overlaps, dropout, how parameters are sharded. A profile names those
facts once, with the source each comes from, so that `validate published` and a user's
`simulate train --software NAME` read the same settings instead of options hard-coded per table.
A profile sets `TrainingJob` fields; the plan (zero stage, recompute) stays the user's, except
for `plan_defaults` the framework always uses (FSDP shards everything: zero=3).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from hwmodels.errors import InputError
from simulator.training import TrainingJob


@dataclass(frozen=True)
class Software:
    name: str
    description: str
    source: str
    job: dict  # TrainingJob fields
    plan_defaults: dict = field(default_factory=dict)  # TrainingPlan fields the framework fixes


# Transformer Engine with every overlap NVIDIA's recipes turn on (distributed optimizer
# reduce-scatter/all-gather, userbuffers TP overlap, P2P overlap), FA2-class flash, no dropout.
TE_ALL_OVERLAPS = {"flash_attention": True, "attention_kernel": "fa2", "dropout": False,
                   "overlap_grad_reduce": True, "overlap_param_gather": True, "overlap_tp_comm": True,
                   "overlap_p2p_comm": True}

# torchtitan (FSDP2 + SDPA flash attention, no dropout, its op-level selective checkpointing)
TORCHTITAN = {"flash_attention": True, "attention_kernel": "fa2", "dropout": False,
              "overlap_grad_reduce": True, "overlap_param_gather": True, "overlap_tp_comm": False,
              "overlap_p2p_comm": False, "selective_policy": "op", "fp8_dynamic_casts": True}

PROFILES = {p.name: p for p in (
    Software("megatron-lm-2021",
             "Megatron-LM as in Narayanan et al. 2021: unfused attention with dropout, gradient "
             "all-reduce after backward, no distributed optimizer",
             "arXiv 2104.04473 §5 (software of Table 1); NVIDIA/Megatron-LM v2.x",
             {"flash_attention": False, "dropout": True, "overlap_grad_reduce": False,
              "overlap_param_gather": False, "overlap_tp_comm": False, "overlap_p2p_comm": False}),
    Software("nemo-24.07",
             "NeMo 24.07 performance recipes: Transformer Engine, flash attention, distributed "
             "optimizer with overlapped reduce-scatter and all-gather, TP comm overlap "
             "(userbuffers), P2P overlap with the interleaved schedule, no dropout",
             "NVIDIA NeMo 24.07 performance summary and its recipes (nemo/collections/llm/recipes)",
             TE_ALL_OVERLAPS),
    Software("megatron-core",
             "Megatron-Core (0.8+): flash attention (TE/cuDNN), --overlap-grad-reduce and "
             "--overlap-param-gather with the distributed optimizer, no TP overlap unless asked",
             "NVIDIA/Megatron-LM megatron/core (distributed_data_parallel.py, arguments.py)",
             {"flash_attention": True, "attention_kernel": "fa2", "dropout": False,
              "overlap_grad_reduce": True, "overlap_param_gather": True, "overlap_tp_comm": False,
              "overlap_p2p_comm": True}),
    Software("nemo-mlperf-3.0",
             "NVIDIA's MLPerf Training v3.0 GPT-3 submission (NeMo Megatron 23.04): Transformer Engine "
             "FP8, sequence parallelism, userbuffers TP comm overlap, distributed fused Adam with "
             "overlapped grad and param sync, P2P overlap, no dropout",
             "mlcommons/training_results_v3.0 NVIDIA/benchmarks/gpt3/implementations/pytorch "
             "(conf/megatron_gpt_config.yaml: dropout 0.0, overlap_grad_sync/overlap_param_sync, "
             "overlap_p2p_comm; config_tp_h100.sh: TP_COMM_OVERLAP=True)",
             TE_ALL_OVERLAPS),
    Software("megatron-bridge",
             "NeMo 25.x/26.x containers with Megatron-Bridge performance recipes: Transformer Engine, "
             "cuDNN flash attention, distributed optimizer with overlapped reduce-scatter and "
             "all-gather, TP comm overlap, P2P overlap, no dropout; MoE dropless with balanced routing",
             "NVIDIA-NeMo/Megatron-Bridge scripts/performance (set_basic_perf_overrides, "
             "CommOverlapConfig) and docs/performance-summary.md",
             TE_ALL_OVERLAPS),
    Software("deepspeed-0.3",
             "Megatron-LM's GPT with DeepSpeed 0.3 ZeRO-3 (spring 2021, what Narayanan et al. 2021 "
             "Table 2 compared against): unfused attention with dropout; each sub-module's weights "
             "gathered in a call of their own after torch.cuda.synchronize(), so no gather or "
             "gradient reduce-scatter overlaps compute; PyTorch list collectives that copy every "
             "rank's slice in a kernel of its own",
             "microsoft/DeepSpeed v0.3.x deepspeed/runtime/zero/partition_parameters.py "
             "(_allgather_param: torch.cuda.synchronize() then torch.distributed.all_gather into a list) "
             "and stage3.py fetch_sub_module; PR #1188 (Oct 2021): 'the async version is not async at "
             "all, because each all_gather calls torch.cuda.synchronize()', and its implicit memcpy; "
             "PR #1453 (*_base collectives)",
             {"flash_attention": False, "dropout": True, "overlap_grad_reduce": False,
              "overlap_param_gather": False, "overlap_tp_comm": False, "overlap_p2p_comm": False,
              "zero3_unit": "param", "collective_rank_copies": True},
             {"zero": 3, "tp": 1, "pp": 1}),
    Software("llm-foundry",
             "MosaicML llm-foundry / Composer benchmarks of 2023: PyTorch FSDP FULL_SHARD "
             "(limit_all_gathers), the Triton FlashAttention port (attn_impl=triton), no dropout",
             "mosaicml/llm-foundry scripts/train/benchmarking/submit_benchmarks.py "
             "(--attn_impl default 'triton', image pytorch 1.13.1, limit_all_gathers=True)",
             {"flash_attention": True, "attention_kernel": "fa-triton", "dropout": False,
              "overlap_grad_reduce": True, "overlap_param_gather": True, "overlap_tp_comm": False,
              "overlap_p2p_comm": False},
             {"zero": 3, "tp": 1, "pp": 1}),
    Software("torchtitan",
             "torchtitan in PyTorch eager: FSDP2 (fully_shard, reshard after forward), SDPA flash "
             "attention (FA2 class), no dropout, unfused elementwise kernels (RMSNorm in fp32, "
             "complex rotary, repeat_kv copies), op-level selective checkpointing for "
             "recompute=selective",
             "pytorch/torchtitan torchtitan/parallelisms (fully_shard, _apply_ac_to_transformer_block), "
             "torchtitan/models (norms.py, llama/model.py), docs/performance.md; compile=false in "
             "its train_configs",
             {**TORCHTITAN, "eager_elementwise": True},
             {"zero": 3}),
    Software("torchtitan-compile",
             "torchtitan with torch.compile: as `torchtitan`, the elementwise work fused by Inductor",
             "pytorch/torchtitan --training.compile (per-block torch.compile, "
             "torchtitan/parallelisms/parallelize_llama.py apply_compile)",
             {**TORCHTITAN, "eager_elementwise": False},
             {"zero": 3}),
)}


def get_software(name: str) -> Software:
    try:
        return PROFILES[name]
    except KeyError:
        raise InputError(f"software {name!r} is not a known profile; valid: {', '.join(PROFILES)}") from None


def apply_software(job: TrainingJob, name: str, **explicit) -> TrainingJob:
    """`job` with profile `name`'s settings; `explicit` fields (what the user set) win."""
    sw = get_software(name)
    return replace(job, **{**sw.job, **{k: v for k, v in explicit.items() if v is not None}})
