"""Per-device memory of a training plan: weights, gradients, optimizer states (ZeRO), activations
(Korthikanti et al. 2022), communication buffers and a reserve for fragmentation.

All results in bytes for one rank of one pipeline stage; `stage_memory` is evaluated for every
stage and the engine reports the largest.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from simulator import schedules
from simulator.mamba import mamba_activation_bytes
from simulator.models import ATTENTION, MAMBA, MOE, ModelSpec
from simulator.ops import attention_gemms
from simulator.precision import ACT_BYTES, GRAD_BYTES, OPTIMIZER_BYTES, WEIGHT_BYTES  # noqa: F401
from simulator.training import (EVEN, LORA_TARGETS, RECOMPUTE, RECOMPUTE_METHODS, PlanBatch, TrainingJob, TrainingPlan,
                                chunk_layers, layer_plan, micro_batches)

# NCCL buffers per communicator, observed on H100 (aiconfigurator-core 0.12.0 systems/h100_sxm.yaml
# misc.nccl_mem: 342 MB for 2 GPUs, 392 MB for 4 and 8 GPUs).
NCCL_BYTES = {2: 358_612_992}
NCCL_BYTES_DEFAULT = 411_041_792
# CUDA context, cuBLAS/cuDNN workspaces (~1 GiB on Hopper/Ampere with PyTorch) and caching-allocator
# fragmentation as a share of the dynamic (activation) memory. Defaults, not fitted.
CONTEXT_BYTES = 1 << 30
FRAGMENTATION = 0.05


def stage_layers(model: ModelSpec, plan: TrainingPlan, stage: int) -> list[int]:
    """Layer indices held by pipeline `stage`, chunk by chunk in the schedule's placement
    (`simulator.schedules`: interleaved holds chunks stage, stage+pp, ...) and the plan's
    pipeline split (`simulator.training.chunk_layers`)."""
    pl = placement(model, plan.schedule, plan.pp, plan.vpp, plan.split)
    out: list[int] = []
    for c in pl.chunk_ids[stage]:
        out.extend(pl.chunk_range(c))
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
    if model.is_hybrid:
        return hybrid_activation_bytes(model, job, plan, moe)
    if plan.recompute == "selective" and job.selective_policy == "op" and not moe:
        # torchtitan op-level SAC keeps the block input and what its policy saves: the outputs of
        # wq, wv, w1 and w2 (odd matmuls), the flash attention output and its fp32 log-sum-exp
        # (torchtitan parallelize_llama.py _save_list; FlashAttention-2 saves O and L)
        q, kv = model.q_dim / t, model.kv_dim / t
        mlp_saved = model.ffn_hidden_size / t  # w1's output (fc1's without a gate)
        return sb * (ACT_BYTES * (h + q + kv + q + mlp_saved + h) + 4 * model.num_heads / t)
    gi = saved_gemm_input_bytes(job)  # bytes per element of a linear layer's saved input
    # LoRA: a frozen linear keeps no input (Transformer Engine linear.py: backward_needs_input =
    # is_grad_enabled and weight.requires_grad); a targeted one's adapter keeps it in 16 bits for
    # A's weight gradient, and its rank-r output for B's
    g = {name: gi for name in LORA_TARGETS}
    if job.lora_rank:
        g = {name: ACT_BYTES if name in job.lora_targets else 0.0 for name in LORA_TARGETS}
    lora_out = ACT_BYTES * job.lora_rank * sum(1 for name in job.lora_targets if not (moe and name in ("fc1", "fc2")))
    # Parts that TP leaves replicated without SP: norm inputs (2×2sbh), QKV input, MLP input,
    # the two dropout masks.
    replicated = (4 + g["qkv"] + (0.0 if moe and job.lora_rank else g["fc1"]) + 2 * drop) * sb * h + lora_out * sb
    q, kv, out = model.q_dim, model.kv_dim, model.attn_out_dim
    split = 2 * sb * (q + kv) + 2 * sb * kv + g["proj"] * sb * out  # Q, K (for QK^T), V, attention output
    if moe and job.lora_rank:
        gi = 0.0  # the frozen router and experts keep no inputs for weight gradients
    if moe:
        k, f = model.experts_per_token, model.moe_ffn_hidden_size
        # routed token copies (top-k of the rank's sequence shard): expert input, up/gate
        # outputs, activation output. With expert TP the experts' input is the ETP group's gathered
        # tokens (etp× the copies, whole h) and their outputs are split over etp (token_dispatcher.py
        # dispatch_postprocess all-gathers over the expert-TP group before the expert GEMMs)
        etp = plan.etp
        split += sb * k * (gi * h * etp + 2 * f * (2 if model.gated_mlp else 1) + gi * f)
        if model.num_shared_experts:
            fs = f * model.num_shared_experts
            split += sb * (2 * fs * (2 if model.gated_mlp else 1) + gi * fs)
    else:
        f = model.ffn_hidden_size
        split += 2 * sb * f * (2 if model.gated_mlp else 1) + g["fc2"] * sb * f  # up(/gate) out, act out
    attn_scores = 0.0
    if not job.flash_attention and plan.recompute != "selective":
        a = model.num_heads
        attn_scores = (2 + 2 * drop + drop) * a * s * s * b  # softmax out, dropout out, mask
    elif job.flash_attention:
        split += 4 * sb * model.num_heads  # fp32 log-sum-exp per row (FlashAttention-2)
    if plan.sp:
        return (replicated + split + attn_scores) / t
    return replicated + (split + attn_scores) / t


def hybrid_activation_bytes(model: ModelSpec, job: TrainingJob, plan: TrainingPlan, moe: bool,
                            kind: str = "") -> float:
    """What one layer of a hybrid model keeps for backward (per micro-batch, one rank): its MoE
    layers ('E') as themselves, its other layers as their layer-weighted mean (as
    `simulator.ops.layer_cost` costs them). Each layer is one block of `layer_activation_bytes`'
    transformer layer — its norm input (2sbh), the block's GEMM input and dropout mask, left whole
    by TP without SP — plus the block's own tensors: attention's Q, K, V, output and softmax
    statistics, the MLP's or MoE's as in the transformer block, a Mamba-2 mixer's as
    `simulator.mamba.mamba_activation_bytes` lists them."""
    if not kind:
        if moe:
            return hybrid_activation_bytes(model, job, plan, True, MOE)
        counts = model.kind_counts() or ((MOE, 1),)
        return sum(n * hybrid_activation_bytes(model, job, plan, k == MOE, k) for k, n in counts) / \
            sum(n for _, n in counts)
    t, s, b, h = plan.tp, job.seq_len // plan.cp, plan.mb, model.hidden_size
    sb, drop, gi = s * b, 1 if job.dropout else 0, saved_gemm_input_bytes(job)
    replicated = (2 + gi + drop) * sb * h  # norm input, the block's GEMM input, dropout mask
    attn_scores = 0.0
    if kind == MAMBA:
        split = mamba_activation_bytes(model, sb, 1, gi, ACT_BYTES)  # whole layer; ÷t below
    elif kind == ATTENTION:
        q, kv = model.q_dim, model.kv_dim
        split = 2 * sb * (q + kv) + 2 * sb * kv + gi * sb * model.attn_out_dim
        if not job.flash_attention and plan.recompute != "selective":
            attn_scores = (2 + 2 * drop + drop) * model.num_heads * s * s * b
        elif job.flash_attention:
            split += 4 * sb * model.num_heads
    elif kind == MOE:
        k, f, gated = model.experts_per_token, model.moe_ffn_hidden_size, 2 if model.gated_mlp else 1
        split = sb * k * (gi * h * plan.etp + 2 * f * gated + gi * f)
        if model.num_shared_experts:
            fs = f * model.num_shared_experts
            split += sb * (2 * fs * gated + gi * fs)
    else:
        f = model.ffn_hidden_size
        split = 2 * sb * f * (2 if model.gated_mlp else 1) + gi * sb * f
    if plan.sp:
        return (replicated + split + attn_scores) / t
    return replicated + (split + attn_scores) / t


# Transformer Engine keeps the quantised input of each linear layer for its weight-gradient GEMM
# (transformer_engine/pytorch/module/linear.py `_Linear.forward`: `saved_inputmat = inputmat`, the
# quantised input with column-wise usage only; layernorm_linear.py likewise for `ln_out`): 1 byte
# per element in FP8 recipes, 4.5 bits in NVFP4 (4-bit values and one FP8 scale per 16 elements,
# NVIDIA's NVFP4 format). torchao's Float8Linear (`fp8_dynamic_casts`) saves the 16-bit input and
# casts it again in backward.
QUANTISED_INPUT_BYTES = {"fp8": 1.0, "fp4": 0.5 + 1 / 16}


def saved_gemm_input_bytes(job: TrainingJob) -> float:
    """Bytes per element of the input a linear layer keeps for its weight gradient."""
    if job.fp8_dynamic_casts:
        return ACT_BYTES
    return QUANTISED_INPUT_BYTES.get(job.dtype, ACT_BYTES)


def offloaded_layers(act_offload, n_layers):
    """Layers of a stage whose activations go to host memory (plan act_offload): all but the
    stage's last layer at most (Transformer Engine's offload handler keeps the layer whose backward
    runs first on the device)."""
    return np.clip(np.minimum(act_offload, n_layers - 1), 0, None)


FULL = RECOMPUTE.index("full")
UNIFORM = RECOMPUTE_METHODS.index("uniform")
RECOMPUTE_PARTS = ("rc", "rc_moe", "ckpt", "group")


def chunk_recompute(n_chunk: int, n: int, method: int) -> tuple[int, int, int]:
    """(layers recomputed, layer inputs kept as checkpoints, most layers rebuilt at once) of a model
    chunk of `n_chunk` layers under full recompute with `recompute_layers` n (-1: unset) and
    `recompute_method` (an index into RECOMPUTE_METHODS). Megatron-Core megatron/core/recompute.py
    `checkpointed_forward`, run once per TransformerBlock (a model chunk): uniform checkpoints
    the input of each group of n layers, [0, n), [n, 2n), ..., and recomputes the whole group in
    its backward; block checkpoints layers 0..n-1 one by one and runs the rest without checkpoint."""
    if n < 0:  # every layer checkpointed on its own (uniform with n = 1)
        return n_chunk, n_chunk, min(1, n_chunk)
    if method == UNIFORM:
        return n_chunk, -(-n_chunk // n), min(n, n_chunk)
    r = min(n, n_chunk)
    return r, r, min(1, r)


_RECOMPUTED: dict = {}  # (id(placement), n, method) -> (placement, counts): placements are cached objects


def recomputed_layers(pl: Placement, n: int, method: int) -> np.ndarray:
    """Per stage of placement `pl` (shape (4, p)): layers recomputed (`rc`), of which MoE
    (`rc_moe`), checkpointed layer inputs (`ckpt`) and the most layers rebuilt at once in one
    backward (`group`), under full recompute (`chunk_recompute` chunk by chunk; block recomputes
    the first layers of each chunk)."""
    key = (id(pl), n, method)
    hit = _RECOMPUTED.get(key)
    if hit is not None and hit[0] is pl:
        return hit[1]
    if len(_RECOMPUTED) > 65536:
        _RECOMPUTED.clear()
    out = _recomputed_layers(pl, n, method)
    out.setflags(write=False)
    _RECOMPUTED[key] = (pl, out)
    return out


def _recomputed_layers(pl: Placement, n: int, method: int) -> np.ndarray:
    if n < 0:  # the whole stage, one layer at a time
        return np.stack([pl.n_layers, pl.n_moe, pl.n_layers, np.minimum(1.0, pl.n_layers)])
    out = np.zeros((4, len(pl.chunk_ids)))
    for st, ids in enumerate(pl.chunk_ids):
        for c in ids:
            rc, rc_moe, ckpt, grp = chunk_recomputed(pl, c, n, method)
            out[0, st] += rc
            out[1, st] += rc_moe
            out[2, st] += ckpt
            out[3, st] = max(out[3, st], grp)
    return out


def chunk_recomputed(pl: Placement, c: int, n: int, method: int) -> tuple[int, int, int, int]:
    """(layers recomputed, of which MoE, checkpointed inputs, most layers rebuilt at once) of model
    chunk c of `pl` (`chunk_recompute`: the recomputed layers are the chunk's first)."""
    layers = pl.chunk_range(c)
    rc, ckpt, grp = chunk_recompute(len(layers), n, method)
    return rc, sum(pl.layer_moe[i] for i in layers[:rc]), ckpt, grp


def recompute_rows(pls: list, pinv: np.ndarray, b: PlanBatch) -> dict:
    """`recomputed_layers` of every plan of a batch, by name (RECOMPUTE_PARTS: arrays (n, p));
    zero for plans without full recompute."""
    full = (b.recompute == FULL)[:, None, None]
    if (b.recompute_layers < 0).all():  # every layer (the common case): no grouping needed
        table = np.stack([recomputed_layers(pl, -1, 0) for pl in pls])[pinv]
    else:
        keys, inv = group(pinv, b.recompute_layers + 1, b.recompute_method)
        table = np.stack([recomputed_layers(pls[k], n - 1, meth) for k, n, meth in keys])[inv]
    table = table * full
    return {name: table[:, j] for j, name in enumerate(RECOMPUTE_PARTS)}


def mtp_recomputed(recompute, recompute_layers, recompute_method):
    """Whether the MTP blocks run their forward again: with full recompute, except with the block
    method (megatron/core/transformer/multi_token_prediction.py: "recompute_method == 'block' is
    not supported for MTP yet. Skipping recompute")."""
    return (np.asarray(recompute) == FULL) & ((np.asarray(recompute_layers) < 0)
                                               | (np.asarray(recompute_method) == UNIFORM))


def recomputed_layer_ids(model: ModelSpec, plan: TrainingPlan) -> list[bool]:
    """Whether each transformer layer (model order) runs its forward again in backward."""
    if plan.recompute != "full":
        return [False] * model.num_layers
    pl = placement(model, plan.schedule, plan.pp, plan.vpp, plan.split)
    n = -1 if plan.recompute_layers is None else plan.recompute_layers
    out = [False] * model.num_layers
    for c in range(len(pl.chunk_layers)):
        layers = pl.chunk_range(c)
        rc, _, _ = chunk_recompute(len(layers), n, RECOMPUTE_METHODS.index(plan.recompute_method))
        for i in layers[:rc]:
            out[i] = True
    return out


def inflight_microbatches(plan: TrainingPlan, job: TrainingJob, stage: int) -> float:
    """Micro-batches whose activations a stage holds at its peak (the schedule's own count)."""
    return schedules.get(plan.schedule).inflight(plan.pp, plan.vpp, micro_batches(plan, job), stage)


def _nccl_bytes(n: int) -> int:
    return 0 if n <= 1 else NCCL_BYTES.get(n, NCCL_BYTES_DEFAULT)


# ---- the vectorised memory model: one function for one plan (`stage_memory`, `estimate`) and for
# arrays of candidate plans (`planner.search`) ----

@dataclass(frozen=True)
class Placement:
    """Where a schedule puts the model's layers on p stages (`simulator.schedules`); per-stage
    arrays have shape (p,)."""

    chunk_ids: tuple  # per stage, the model chunks it holds, in local order
    chunk_layers: tuple  # transformer layers of each model chunk (simulator.training.chunk_layers)
    chunk_moe: tuple  # MoE layers in each model chunk
    n_layers: np.ndarray
    n_moe: np.ndarray
    layer_params: np.ndarray  # Σ non-expert parameters of the stage's layers (whole layers, before TP)
    max_layer: np.ndarray  # parameters of the stage's largest layer (ZeRO-3 gather buffer)
    first: np.ndarray  # 1.0 where the stage holds model chunk 0 (embedding)
    last: np.ndarray  # 1.0 where it holds the last model chunk (LM head, loss)
    fraction: float  # share of the step's micro-batches passing through each local chunk
    chunks_per_stage: int
    layer_moe: tuple = ()  # whether each placed layer (model order) is a MoE layer

    def chunk_range(self, c: int) -> range:
        """Layer indices of model chunk c (chunks hold contiguous layers, in model order)."""
        start = sum(self.chunk_layers[:c])
        return range(start, start + self.chunk_layers[c])


@lru_cache(maxsize=4096)
def placement(model: ModelSpec, schedule: str, p: int, v: int, split: tuple = EVEN) -> Placement:
    """The schedule's chunks on p stages with the layers of `split` (`TrainingPlan.split`; the even
    split by default) in each chunk."""
    sched = schedules.get(schedule)
    n_chunks = sched.model_chunks(p, v)
    counts = chunk_layers(model.num_layers, schedule, p, v, split)
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(int).tolist()
    placed = starts[-1]
    moe = [model.is_moe_layer(i) for i in range(placed)]
    params = [model.layer_params(i) - (model.num_experts * model.expert_params() if moe[i] else 0)
              for i in range(placed)]
    chunk_ids = tuple(tuple(sched.chunk_ids(st, p, v)) for st in range(p))
    layers = [[i for c in ids for i in range(starts[c], starts[c + 1])] for ids in chunk_ids]
    return Placement(
        chunk_ids, counts, tuple(sum(moe[starts[c]:starts[c + 1]]) for c in range(n_chunks)),
        np.array([len(ls) for ls in layers], dtype=np.float64),
        np.array([sum(moe[i] for i in ls) for ls in layers], dtype=np.float64),
        np.array([float(sum(params[i] for i in ls)) for ls in layers]),
        np.array([float(max((model.layer_params(i) for i in ls), default=0)) for ls in layers]),
        np.array([float(sched.holds_chunk(st, 0, p, v)) for st in range(p)]),
        np.array([float(sched.holds_chunk(st, n_chunks - 1, p, v)) for st in range(p)]),
        sched.pass_fraction(p, v), sched.chunks_per_stage(v), tuple(moe))


def stage_params(model: ModelSpec, pl: Placement, tp: int, ep: int, etp: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(non-expert, expert) parameters one rank of each stage holds, before ZeRO sharding: its
    layers ÷ tp, the embedding with chunk 0, the LM head with the last chunk (plus, with tied
    embeddings and pp > 1, the last stage's own copy of the embedding); experts/ep of them, each
    split over etp (Megatron-Core expert mesh, megatron/core/parallel_state.py)."""
    tied = model.vocab_size * model.hidden_size if model.tie_embeddings and len(pl.first) > 1 else 0
    dense = (pl.layer_params + pl.first * model.embedding_params()
             + pl.last * (model.head_params() + tied)) / tp
    if model.mtp_layers:  # the MTP modules sit with the loss (DeepSeek-V3 §2.2); their experts go over ep
        per_expert = model.expert_params() if model.mtp_is_moe else 0
        mtp_experts = model.mtp_layers * model.num_experts * per_expert
        dense = dense + pl.last * (model.mtp_params() - mtp_experts) / tp
        expert = pl.n_moe * ((model.num_experts // ep) * model.expert_params() / etp if model.is_moe else 0)
        return dense, expert + pl.last * mtp_experts / (ep * etp)
    expert = pl.n_moe * ((model.num_experts // ep) * model.expert_params() / etp if model.is_moe else 0)
    return dense, expert


def expert_dp_size(tp: int, cp: int, dp: int, ep: int, etp: int = 1) -> int:
    """Expert data-parallel group: the tp·cp·dp ranks of a stage over ep·etp (MoE parallel folding,
    Liu et al. 2025, arXiv 2504.14960 §3; megatron/core/parallel_state.py
    expert_data_parallel_size); ZeRO shards the expert states over it."""
    return max(1, tp * cp * dp // (ep * etp))


def model_states(dense, expert, zero, offload, dp_cp, expert_dp, adapter=None) -> tuple:
    """(weights, gradients, optimizer) bytes of `dense` + `expert` parameters: ZeRO stage k ≥ 1
    shards optimizer states, ≥ 2 gradients, 3 weights over the data-parallel group (Rajbhandari
    et al. 2019 §5); offload moves the optimizer states to the host. With `adapter` (LoRA: the
    trainable adapter parameters per rank) the base parameters are frozen weights alone, and only
    the adapters carry gradients and optimizer states (Hu et al. 2021 §4.2)."""
    zero = np.asarray(zero)

    def shard(k):  # parameters resident per rank when stage >= k shards them
        return dense / np.where(zero >= k, dp_cp, 1) + expert / np.where(zero >= k, expert_dp, 1)
    if adapter is None:
        return (WEIGHT_BYTES * shard(3), GRAD_BYTES * shard(2),
                np.where(offload, 0.0, OPTIMIZER_BYTES * shard(1)))

    def ashard(k):
        return adapter / np.where(zero >= k, dp_cp, 1)
    return (WEIGHT_BYTES * (shard(3) + ashard(3)), GRAD_BYTES * ashard(2),
            np.where(offload, 0.0, OPTIMIZER_BYTES * ashard(1)))


def lora_layer_params(model: ModelSpec, job: TrainingJob, moe: bool) -> float:
    """Trainable LoRA parameters of one layer (whole, before TP): r·(k + n) per targeted linear
    of k inputs and n outputs (Hu et al. 2021 §4.1: A is r×k, B is n×r); an MoE layer's experts
    carry none (their adapters are not modelled), 0 without LoRA."""
    r = job.lora_rank
    if not r:
        return 0.0
    h, f = model.hidden_size, model.ffn_hidden_size
    shapes = {"qkv": [(k, n) for _, n, k in attention_gemms(model, 1)],
              "proj": [(model.attn_out_dim, h)],
              "fc1": [] if moe else [(h, f * (2 if model.gated_mlp else 1))],
              "fc2": [] if moe else [(f, h)]}
    return float(sum(r * (k + n) for t in job.lora_targets for k, n in shapes[t]))


@lru_cache(maxsize=4096)
def layer_terms_job(job: TrainingJob) -> TrainingJob:
    """The job's per-layer view: layer costs and activations do not read the global batch, so one
    job serves every batch size and the per-layer caches hit across them."""
    return replace(job, global_batch=1)


@lru_cache(maxsize=256)
def memo(*owner) -> dict:
    """A dict cache for values that depend on `owner` (a job, a cluster) and on small integer keys:
    fetched once per batch, it saves hashing the owner on every lookup."""
    return {}


def cached(cache: dict, key: tuple, make):
    """cache[key], made by make() on the first lookup."""
    out = cache.get(key)
    if out is None:
        out = cache[key] = make()
    return out


def tokens_per_rank(job: TrainingJob, mb, cp):
    """Tokens of one micro-batch on one rank: mb sequences, the sequence split over cp."""
    return mb * job.seq_len // cp


def _layer_acts(job: TrainingJob, tp: int, cp: int, ep: int, sp: bool, mb: int, rc: int, etp: int = 1) -> dict:
    """Activation bytes per layer and micro-batch (dense, MoE), and a layer's whole activations
    (recompute none) that full recompute rebuilds in its backward."""
    m, plan = job.model, layer_plan(tp, cp, ep, sp, mb, RECOMPUTE[rc], etp)
    none = layer_plan(tp, cp, ep, sp, mb, "none", etp)
    return {"dense": layer_activation_bytes(m, job, plan, False),
            "moe": layer_activation_bytes(m, job, plan, True) if m.is_moe else 0.0,
            "full_dense": layer_activation_bytes(m, job, none, False),
            "full_moe": layer_activation_bytes(m, job, none, True) if m.is_moe else 0.0}


def as_row(d: dict) -> tuple:
    """{name: scalar} as (names, values): what `named_rows` stacks."""
    return tuple(d), np.fromiter(d.values(), dtype=np.float64, count=len(d))


def named_rows(rows: list, inv: np.ndarray) -> dict:
    """`as_row` rows per distinct key and each plan's key index → {name: array (n, 1)}."""
    table = np.stack([r[1] for r in rows])[inv]
    return {k: table[:, j:j + 1] for j, k in enumerate(rows[0][0])}


@lru_cache(maxsize=16384)
def _inflight_row(schedule: str, p: int, v: int, m: int) -> np.ndarray:
    sched = schedules.get(schedule)
    return np.array([sched.inflight(p, v, m, st) for st in range(p)], dtype=np.float64)


def placements(model: ModelSpec, b: PlanBatch, pp: int) -> tuple[list, np.ndarray, list]:
    """The distinct (schedule, vpp, split) keys of a batch on pp stages, each plan's key index, and
    each key's `Placement`."""
    names = schedules.names()
    pkeys, pinv = group(b.schedule, b.vpp, b.first, b.last, b.pp_embed, b.pp_loss, b.layout)
    pls = []
    for s, v, *_ in pkeys:
        i = int(np.argmax(pinv == len(pls)))  # a plan with this key
        pls.append(placement(model, names[s], pp, v, b.split(i)))
    return pkeys, pinv, pls


def group(*cols) -> tuple[list, np.ndarray]:
    """Distinct rows of integer columns (as tuples) and each row's index among them."""
    cols = [np.asarray(c, dtype=np.int64) for c in cols]
    if len(cols[0]) == 1:
        return [tuple(int(c[0]) for c in cols)], np.zeros(1, dtype=np.int64)
    key = np.zeros(len(cols[0]), dtype=np.int64)
    for c in cols:  # mixed radix: each column's values are small non-negative integers
        key = key * (int(c.max()) + 1) + c
    uniq, first, inv = np.unique(key, return_index=True, return_inverse=True)
    return [tuple(r) for r in np.stack(cols, axis=1)[first].tolist()], inv.ravel()


def by_mesh(batch: PlanBatch, fn, fields_: tuple, dtype=np.float64) -> dict:
    """fn(sub-batch, mesh) → {field: (k, p)} for each mesh shape of `batch`, scattered into
    {field: (n, max p)} (stages beyond a plan's pp stay 0)."""
    meshes = list(batch.meshes())
    if len(meshes) == 1:
        return fn(batch, meshes[0][0])
    n, pmax = len(batch), int(batch.pp.max())
    out = {}
    for mesh, idx in meshes:
        part = fn(batch.take(idx), mesh)
        for k in fields_:
            x = part[k]
            if k not in out:
                out[k] = np.zeros((n, pmax) if x.ndim == 2 else (n,), dtype=x.dtype)
            if x.ndim == 2:
                out[k][idx, :x.shape[1]] = x
            else:
                out[k][idx] = x
    return out


MEMORY_PARTS = ("weights_bytes", "gradients_bytes", "optimizer_bytes", "activations_bytes",
                "comm_buffers_bytes", "reserve_bytes", "peak_bytes")


@dataclass
class MemoryParts:
    """Memory of one rank on each stage of n plans, in bytes, by part: arrays of shape (n, p)."""

    weights_bytes: np.ndarray
    gradients_bytes: np.ndarray
    optimizer_bytes: np.ndarray
    activations_bytes: np.ndarray
    comm_buffers_bytes: np.ndarray
    reserve_bytes: np.ndarray
    peak_bytes: np.ndarray
    # full recompute, block method: peak bytes each layer per model chunk left un-recomputed adds
    # (its activations beyond its input, for every micro-batch in flight, with the fragmentation share)
    block_layer_bytes: np.ndarray | None = None

    @property
    def peak_stage(self) -> np.ndarray:
        """The first stage with the largest peak, per plan."""
        return self.peak_bytes.argmax(axis=1)

    @property
    def max_peak_bytes(self) -> np.ndarray:
        return self.peak_bytes.max(axis=1)

    def stage(self, i: int, s: int) -> dict:
        return {k: float(getattr(self, k)[i, s]) for k in MEMORY_PARTS}


def memory_parts(job: TrainingJob, batch: PlanBatch) -> MemoryParts:
    """Memory of every stage of every plan in `batch` (weights, gradients, optimizer states,
    activations, communication buffers, reserve; their sum is the peak)."""
    return MemoryParts(**by_mesh(batch, lambda b, mesh: _mesh_memory(job, b, *mesh),
                                 MEMORY_PARTS + ("block_layer_bytes",)))


def _mesh_memory(job: TrainingJob, b: PlanBatch, tp: int, pp: int, cp: int, ep: int, dp: int,
                 etp: int = 1) -> dict:
    model, names, lj = job.model, schedules.names(), layer_terms_job(job)
    dp_cp, expert_dp = dp * cp, expert_dp_size(tp, cp, dp, ep, etp)
    pkeys, pinv, pls = placements(model, b, pp)
    per_pl = [stage_params(model, pl, tp, ep, etp) for pl in pls]
    dense = np.stack([d for d, _ in per_pl])[pinv]
    expert = np.stack([e for _, e in per_pl])[pinv]
    stack = lambda attr: np.stack([getattr(pl, attr) for pl in pls])[pinv]  # noqa: E731
    n_moe, last = stack("n_moe"), stack("last")
    zero = b.zero[:, None]
    adapter = None
    if job.lora_rank:  # LoRA adapters of the stage's layers, split over TP like their base linears
        n_l, n_m = stack("n_layers"), stack("n_moe")
        adapter = ((n_l - n_m) * lora_layer_params(model, job, False) + n_m * lora_layer_params(model, job, True)) / tp
    weights, grads, optim = model_states(dense, expert, zero, b.offload[:, None], dp_cp, expert_dp, adapter)

    kkeys, kinv = group(b.mb, b.recompute, b.sp)
    cache = memo("activations", lj)
    act = named_rows([cached(cache, (tp, cp, ep, sp, mb, rc, etp),
                             lambda: as_row(_layer_acts(lj, tp, cp, ep, bool(sp), mb, rc, etp)))
                      for mb, rc, sp in kkeys], kinv)
    ikeys, iinv = group(b.schedule, b.vpp, b.micro_batches(job))
    inflight = np.stack([_inflight_row(names[s], pp, v, m) for s, v, m in ikeys])[iinv]
    n_layers = stack("n_layers")
    per_mb = (n_layers - n_moe) * act["dense"] + n_moe * act["moe"]
    # full recompute (plan recompute_layers, recompute_method): the recomputed layers keep their
    # checkpointed inputs, the other layers all their activations
    full = b.recompute[:, None] == FULL
    if (full & (b.recompute_layers >= 0)[:, None]).any():
        rcx = recompute_rows(pls, pinv, b)
        keep_moe = n_moe - rcx["rc_moe"]
        keep_dense = n_layers - n_moe - (rcx["rc"] - rcx["rc_moe"])
        per_mb = np.where(full, rcx["ckpt"] * act["dense"] + keep_dense * act["full_dense"]
                          + keep_moe * act["full_moe"], per_mb)
        rebuilt, rebuilt_moe = rcx["group"], rcx["rc_moe"] > 0
    else:  # every full-recompute layer keeps its input, one layer at a time rebuilt
        rebuilt, rebuilt_moe = full & (n_layers > 0), n_moe > 0
    # activation offload (plan act_offload): the offloaded layers' activations wait in host memory;
    # one layer's stay on the device as the copy in flight (Transformer Engine cpu_offload.py
    # double-buffers per layer)
    layer = per_mb / np.maximum(n_layers, 1)
    off = offloaded_layers(b.act_offload[:, None], n_layers)
    acts = (per_mb - off * layer) * inflight + np.where(off > 0, layer, 0.0)
    # full recompute: the layers rebuilt at once (one, or a uniform group) hold their whole
    # activations during their backward
    acts = acts + rebuilt * np.where(rebuilt_moe, act["full_moe"], act["full_dense"])
    # fp32 logits of one micro-batch for the cross-entropy backward, with the LM head (and again
    # for each MTP depth's head); the MTP blocks' activations with the loss, for every micro-batch
    # in flight (their 2h projection input included)
    T = tokens_per_rank(job, b.mb[:, None], cp)
    acts = acts + last * (1 + model.mtp_layers) * (4 * T * model.vocab_size / tp)
    if model.mtp_layers:
        mtp_act = act["moe"] if model.mtp_is_moe else act["dense"]
        kept = full & ~mtp_recomputed(b.recompute, b.recompute_layers, b.recompute_method)[:, None]
        mtp_act = np.where(kept, act["full_moe"] if model.mtp_is_moe else act["full_dense"], mtp_act)
        acts = acts + last * model.mtp_layers * (mtp_act + 2 * T * 2 * model.hidden_size) * inflight
    comm = float(sum(_nccl_bytes(n) for n in (tp, cp, dp, ep, etp, pp if pp > 1 else 1)))
    # ZeRO-3: gathered parameters of the current and the prefetched layer
    comm = comm + np.where(zero == 3, 2 * WEIGHT_BYTES * stack("max_layer") / tp, 0.0)
    reserve = CONTEXT_BYTES + FRAGMENTATION * acts
    total = weights + grads + optim + acts + comm + reserve
    whole = np.where(n_moe > 0, act["full_moe"], act["full_dense"])
    chunks = np.array([pl.chunks_per_stage for pl in pls], dtype=np.float64)[pinv][:, None]
    block = np.where(full & (n_layers > 0), chunks * inflight * (whole - act["dense"]) * (1 + FRAGMENTATION), 0.0)
    return {"weights_bytes": weights, "gradients_bytes": grads, "optimizer_bytes": optim,
            "activations_bytes": acts, "comm_buffers_bytes": comm, "reserve_bytes": reserve,
            "peak_bytes": total, "block_layer_bytes": block}


@lru_cache(maxsize=4096)
def plan_memory(model: ModelSpec, job: TrainingJob, plan: TrainingPlan) -> MemoryParts:
    """`memory_parts` of one plan (a batch of one)."""
    if job.model is not model:
        job = replace(job, model=model)
    return memory_parts(job, PlanBatch.of([plan]))


def stage_memory(model: ModelSpec, job: TrainingJob, plan: TrainingPlan, stage: int) -> dict:
    """Memory of one rank on `stage`, in bytes, by part."""
    return plan_memory(model, job, plan).stage(0, stage)


def model_state_bytes_per_param(zero: int, dp: int) -> float:
    """ZeRO paper §5 per-device bytes per parameter for mixed-precision Adam: (2 + 2 + K)."""
    k = OPTIMIZER_BYTES
    return {0: 2 + 2 + k, 1: 2 + 2 + k / dp, 2: 2 + (2 + k) / dp, 3: (2 + 2 + k) / dp}[zero]
