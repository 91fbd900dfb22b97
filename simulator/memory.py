"""Per-device memory of a training plan: weights, gradients, optimizer states (ZeRO), activations
(Korthikanti et al. 2022), communication buffers and a reserve for fragmentation.

All results in bytes for one rank of one pipeline stage; `stage_memory` is evaluated for every
stage and the engine reports the largest.
"""
from __future__ import annotations

from functools import lru_cache

from simulator.models import ModelSpec
from simulator.training import TrainingJob, TrainingPlan, micro_batches

WEIGHT_BYTES = 2  # bf16/fp16 weights (ZeRO, Rajbhandari et al. 2019 §3: 2Ψ)
GRAD_BYTES = 2  # bf16/fp16 gradients (2Ψ)
OPTIMIZER_BYTES = 12  # mixed-precision Adam: fp32 master weights, momentum, variance (K = 12)
ACT_BYTES = 2
# NCCL buffers per communicator, observed on H100 (aiconfigurator-core 0.12.0 systems/h100_sxm.yaml
# misc.nccl_mem: 342 MB for 2 GPUs, 392 MB for 4 and 8 GPUs).
NCCL_BYTES = {2: 358_612_992}
NCCL_BYTES_DEFAULT = 411_041_792
# CUDA context, cuBLAS/cuDNN workspaces (~1 GiB on Hopper/Ampere with PyTorch) and caching-allocator
# fragmentation as a share of the dynamic (activation) memory. Defaults, not fitted.
CONTEXT_BYTES = 1 << 30
FRAGMENTATION = 0.05


def stage_layers(model: ModelSpec, plan: TrainingPlan, stage: int) -> list[int]:
    """Layer indices held by pipeline `stage` (interleaved: chunks stage, stage+pp, ...)."""
    chunks = plan.pp * plan.vpp
    per_chunk = model.num_layers // chunks
    out: list[int] = []
    for j in range(plan.vpp):
        c = stage + j * plan.pp
        out.extend(range(c * per_chunk, (c + 1) * per_chunk))
    return out


def layer_activation_bytes(model: ModelSpec, job: TrainingJob, plan: TrainingPlan, moe: bool) -> float:
    """Activations one layer keeps for backward, per micro-batch, on one rank.

    Korthikanti et al. 2022 (arXiv 2205.05198) §4.1-4.2, generalised to GQA and gated MLPs:
    attention 11sbh + 5as²b, MLP 19sbh, norms 4sbh → sbh(34 + 5as/h) for GPT; with TP the
    10sbh of norms, block inputs and dropout masks stay whole and the rest splits over t; with SP
    everything splits; selective recompute and flash attention drop the 5as²b; full recompute
    keeps only the layer input 2sbh (÷t with SP).
    """
    t = plan.tp
    s = job.seq_len // plan.cp
    b = plan.mb
    h = model.hidden_size
    drop = 1 if job.dropout else 0
    sb = s * b
    if plan.recompute == "full":
        return 2 * sb * h / (t if plan.sp else 1)
    # Parts that TP leaves replicated without SP: norm inputs (2×2sbh), QKV input, MLP input,
    # the two dropout masks.
    replicated = (4 + 2 + 2 + 2 * drop) * sb * h
    q, kv, out = model.q_dim, model.kv_dim, model.attn_out_dim
    split = 2 * sb * (q + kv) + 2 * sb * kv + 2 * sb * out  # Q, K (for QK^T), V, attention output
    if moe:
        k, f = model.experts_per_token, model.moe_ffn_hidden_size
        # routed token copies (top-k of the rank's sequence shard): expert input, up/gate
        # outputs, activation output
        split += sb * k * (2 * h + 2 * f * (2 if model.gated_mlp else 1) + 2 * f)
        if model.num_shared_experts:
            fs = f * model.num_shared_experts
            split += sb * (2 * fs * (2 if model.gated_mlp else 1) + 2 * fs)
    else:
        f = model.ffn_hidden_size
        split += 2 * sb * f * (2 if model.gated_mlp else 1) + 2 * sb * f  # up(/gate) out, act out
    attn_scores = 0.0
    if not job.flash_attention and plan.recompute != "selective":
        a = model.num_heads
        attn_scores = (2 + 2 * drop + drop) * a * s * s * b  # softmax out, dropout out, mask
    elif job.flash_attention:
        split += 4 * sb * model.num_heads  # fp32 log-sum-exp per row (FlashAttention-2)
    if plan.sp:
        return (replicated + split + attn_scores) / t
    return replicated + (split + attn_scores) / t


def inflight_microbatches(plan: TrainingPlan, job: TrainingJob, stage: int) -> float:
    """Micro-batches whose activations a stage holds at its peak (Narayanan et al. 2021 §2.2;
    Korthikanti §4.2.3 for interleaving; Zero Bubble ZB-H1 keeps 1F1B's memory)."""
    m = micro_batches(plan, job)
    p = plan.pp
    if plan.schedule == "gpipe":
        return m
    if plan.schedule == "zb-h2":  # Qi et al. 2023 §3.1: ZB-H2 holds up to 2p−1 micro-batches
        return min(m, 2 * p - 1 - stage)
    held = min(m, p - stage)
    if plan.schedule == "interleaved":
        return min(m, p) * (1 + (p - 1) / (p * plan.vpp)) if stage == 0 else held * (1 + (p - 1 - stage) / (p * plan.vpp))
    return held


def _nccl_bytes(n: int) -> int:
    return 0 if n <= 1 else NCCL_BYTES.get(n, NCCL_BYTES_DEFAULT)


@lru_cache(maxsize=4096)
def stage_memory(model: ModelSpec, job: TrainingJob, plan: TrainingPlan, stage: int) -> dict:
    """Memory of one rank on `stage`, in bytes, by part."""
    layers = stage_layers(model, plan, stage)
    t, dp_cp = plan.tp, plan.dp * plan.cp
    expert_dp = max(1, dp_cp // plan.ep)
    dense = moe_expert = 0.0
    n_moe = 0
    for i in layers:
        if model.is_moe_layer(i):
            n_moe += 1
            dense += (model.layer_params(i) - model.num_experts * model.expert_params()) / t
            moe_expert += model.num_experts // plan.ep * model.expert_params()
        else:
            dense += model.layer_params(i) / t
    if stage == 0:
        dense += model.embedding_params() / t
    if stage == plan.pp - 1:
        dense += model.head_params() / t
        if model.tie_embeddings and plan.pp > 1:  # last stage keeps its own copy of the tied embedding
            dense += model.vocab_size * model.hidden_size / t
    z = plan.zero
    shard = lambda params, d, stage_min: params / d if z >= stage_min else params  # noqa: E731
    weights = WEIGHT_BYTES * (shard(dense, dp_cp, 3) + shard(moe_expert, expert_dp, 3))
    grads = GRAD_BYTES * (shard(dense, dp_cp, 2) + shard(moe_expert, expert_dp, 2))
    optim = 0.0 if plan.offload else OPTIMIZER_BYTES * (shard(dense, dp_cp, 1) + shard(moe_expert, expert_dp, 1))

    per_layer_dense = layer_activation_bytes(model, job, plan, False)
    per_layer_moe = layer_activation_bytes(model, job, plan, True) if n_moe else 0.0
    per_mb = (len(layers) - n_moe) * per_layer_dense + n_moe * per_layer_moe
    acts = per_mb * inflight_microbatches(plan, job, stage)
    if plan.recompute == "full":  # one layer's full activations live during its backward
        acts += layer_activation_bytes(model, job, TrainingPlan(**{**plan.to_dict(), "recompute": "none"}),
                                       n_moe > 0)
    if stage == plan.pp - 1:  # fp32 logits of one micro-batch for the cross-entropy backward
        acts += 4 * plan.mb * job.seq_len // plan.cp * model.vocab_size / t
    comm = sum(_nccl_bytes(n) for n in (plan.tp, plan.cp, plan.dp, plan.ep, plan.pp if plan.pp > 1 else 1))
    if z == 3:  # gathered parameters of the current and the prefetched layer
        comm += 2 * WEIGHT_BYTES * max(model.layer_params(i) for i in layers) / t
    reserve = CONTEXT_BYTES + FRAGMENTATION * acts
    total = weights + grads + optim + acts + comm + reserve
    return {"weights_bytes": weights, "gradients_bytes": grads, "optimizer_bytes": optim,
            "activations_bytes": acts, "comm_buffers_bytes": comm, "reserve_bytes": reserve,
            "peak_bytes": total}


def model_state_bytes_per_param(zero: int, dp: int) -> float:
    """ZeRO paper §5 per-device bytes per parameter for mixed-precision Adam: (2 + 2 + K)."""
    k = OPTIMIZER_BYTES
    return {0: 2 + 2 + k, 1: 2 + 2 + k / dp, 2: 2 + (2 + k) / dp, 3: (2 + 2 + k) / dp}[zero]
