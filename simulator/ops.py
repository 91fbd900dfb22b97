"""The transformer layer, described once: its kernels and collectives on one rank, with FLOPs,
bytes and durations, for a training step and for a serving pass alike.

`transformer_layer` lists one layer's ops in execution order — norms, the attention block's
GEMMs (MLA included), the attention core, the MLP or MoE block (router, experts, shared experts,
dispatch and combine) and the TP/CP/EP collectives — for `LayerPass.tokens` tokens on one rank,
each costed once by `hwmodels` (kernels, collectives). Training builds it per micro-batch
(tokens = mb·s/cp; forward, backward and recompute) in `layer_ops`, and the analytic and
discrete-event engines read that list; serving (`simulator.serving.costs`) builds it for the
tokens of a batch (forward only) and adds the attention core of its prefill chunks and decodes
with `chunk_attention_s` and `kv_cache_elements`. GEMM shapes come from `attention_gemms` and
the block builders below for both; where a training framework and a serving engine run the same
layer with different kernels, `Kernels` names the difference.

Shapes follow Megatron-LM: TP splits heads and the FFN (Shoeybi et al. 2019 §3), SP splits the
norm/dropout regions along the sequence (Korthikanti et al. 2022 §4.2.2), CP splits the sequence
with ring attention, EP places experts over the folded expert mesh etp × ep × edp of a stage's
ranks (Megatron-Core MoE parallel folding, Liu et al. 2025, arXiv 2504.14960).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

from hwmodels.clusters import Cluster
from hwmodels.collectives import collective_s
from hwmodels.errors import InputError
from hwmodels.kernels import KernelModel, dtype_bytes, kernel_model
from simulator.linear_attention import gdn_shape
from simulator.mamba import MambaShape, mamba_shape, ssd_bytes, ssd_flops
from simulator.models import ATTENTION, HYBRID_SYMBOLS, MAMBA, MLP, MOE, ModelSpec
from simulator.precision import ACT_BYTES
from simulator.training import TrainingJob, TrainingPlan

# seconds of one collective: (op, group, group size, rank stride, message bytes) -> seconds
CommCost = Callable[[str, str, int, int, float], float]


@dataclass(frozen=True, slots=True)
class Op:
    name: str
    kind: str  # "compute" | "comm"
    phase: str  # "fwd" | "bwd" | "recompute"
    flops: float  # FLOPs executed (compute ops)
    bytes: float  # HBM bytes moved (compute) or message bytes (comm)
    time_s: float
    group: str = ""  # comm ops: "tp" | "cp" | "ep"
    overlap_with: str = ""  # comm ops that hide behind the compute ops of this base name
    exposed_floor_s: float = 0.0  # what stays exposed however much compute there is to hide behind
    wgrad: bool = False  # backward weight-gradient GEMM (the W of Zero Bubble's B/W split)


@dataclass(frozen=True, slots=True)
class LayerCost:
    """One layer, one micro-batch, one rank: seconds per phase and category."""

    fwd_compute_s: float
    bwd_compute_s: float
    recompute_s: float
    wgrad_s: float  # part of bwd_compute_s that is weight-gradient GEMMs
    fwd_comm_s: dict  # group -> exposed seconds
    bwd_comm_s: dict
    recompute_comm_s: dict
    fwd_flops: float  # model FLOPs (GEMM + non-causal attention convention), forward
    recompute_flops: float


@dataclass(frozen=True, slots=True)
class Kernels:
    """Kernel choices where a training framework and a serving engine run the same layer
    differently; everything else about the layer is shared."""

    # residual add fused into RMSNorm, reading x and the residual and writing both (vLLM
    # fused_add_rms_norm), instead of Megatron's norm plus bias-dropout-add kernels
    fused_add_norm: bool
    # a rotary-embedding kernel over q and k (vLLM rotary_embedding); the training costs leave it out
    rope_kernel: bool
    # each new token's K and V (MLA: its latent) written to the paged cache (vLLM reshape_and_cache)
    kv_cache_write: bool
    # the local experts as one grouped GEMM (vLLM fused_moe), instead of one GEMM per expert
    # (Megatron-Core SequentialMLP)
    grouped_experts: bool
    # experts hit by T·k independent uniform picks (few at decode sizes), instead of every expert
    # getting exactly T·k/E tokens (balanced routing of training-sized batches)
    random_routing: bool
    # router GEMM unquantised in fp8/fp4 models (vLLM builds the MoE gate with quant_config=None)
    router_16bit: bool
    # tokens copied into expert order and back around the all-to-alls as separate memory-bound
    # kernels (Megatron-Core MoEAlltoAllTokenDispatcher: permute / sort_chunks_by_idxs /
    # unpermute); vLLM's fused_moe reads the tokens through sorted indices inside its GEMM
    token_permute: bool = False
    # elementwise work as separate PyTorch eager kernels (torchtitan's Llama without
    # torch.compile): see `transformer_layer` for the bytes each one moves
    eager_elementwise: bool = False


MEGATRON = Kernels(fused_add_norm=False, rope_kernel=False, kv_cache_write=False,
                   grouped_experts=False, random_routing=False, router_16bit=False, token_permute=True)
EAGER_PYTORCH = Kernels(fused_add_norm=False, rope_kernel=True, kv_cache_write=False,
                        grouped_experts=False, random_routing=False, router_16bit=False, token_permute=True,
                        eager_elementwise=True)
SERVING_ENGINE = Kernels(fused_add_norm=True, rope_kernel=True, kv_cache_write=True,
                         grouped_experts=True, random_routing=True, router_16bit=True)


@dataclass(frozen=True, slots=True)
class LayerPass:
    """What one rank runs of one layer in one pass: how many tokens, and how the layer is split."""

    tokens: int  # rows through the linear layers (training: mb·s/cp; serving: the batch's tokens)
    tp: int = 1
    sp: bool = False  # norm/dropout regions and the MoE block on the T/tp sequence shard
    cp: int = 1
    ep: int = 1
    # rank distance between EP peers (training: etp, Megatron-Core's folded expert order
    # etp-ep-edp, megatron/core/parallel_state.py; serving: 1, inside TP)
    ep_stride: int = 1
    # EP peers hold different tokens (training: DP/CP ranks) or the same ones (serving: EP inside
    # the TP group, where every rank holds the whole batch)
    ep_distinct_tokens: bool = True
    expert_tp: int = 1  # ways each expert's FFN is split (Megatron-Core: the plan's etp; vLLM: tp / ep)
    overlap_tp_comm: bool = False
    dropout: bool = False
    kv_bytes: float = ACT_BYTES  # bytes of one KV-cache element (serving)
    fp8_dynamic_casts: bool = False  # FP8 linears cast by separate amax/cast kernels (TrainingJob)
    kernels: Kernels = MEGATRON
    lora_rank: int = 0  # LoRA: base weights frozen, rank-r adapters on lora_targets (TrainingJob)
    lora_targets: tuple = ()


# ---- shapes ------------------------------------------------------------------------------------
def kv_heads_per_rank(model: ModelSpec, tp: int) -> int:
    """KV heads on one TP rank, replicated when tp exceeds them (vLLM QKVParallelLinear)."""
    return math.ceil(model.num_kv_heads / tp)


def attention_width_ratio(model: ModelSpec) -> float:
    """The attention core's work relative to a kernel of the q·k width for both products: MLA's
    A·V runs at the value width d_h^v (128 in DeepSeek-V3) while Q·K^T runs at d_h + d_h^R (192),
    DeepSeek-V2 arXiv 2405.04434 §2.1.3; 1 where the two widths are equal."""
    d = attention_qk_dim(model)
    if not model.is_mla or d <= 0 or model.v_head_dim <= 0:
        return 1.0
    return (d + model.v_head_dim) / (2 * d)


def attention_qk_dim(model: ModelSpec) -> int:
    """Width of one head's q·k product (DeepSeek-V2, arXiv 2405.04434 §2.1.3: d_h + d_h^R for MLA)."""
    return model.qk_nope_head_dim + model.qk_rope_head_dim if model.is_mla else model.head_dim


def kv_cache_elements(model: ModelSpec, kv_heads: int) -> int:
    """Elements cached per token per layer on one rank: K and V of its KV heads, or MLA's latent
    and its shared RoPE key (DeepSeek-V2 §2.1.3, Table 1: (d_c + d_h^R) per token)."""
    if model.is_mla:
        return model.kv_lora_rank + model.qk_rope_head_dim
    return 2 * kv_heads * model.head_dim


def attention_gemms(model: ModelSpec, tp: int) -> list[tuple[str, int, int]]:
    """(name, n, k) of the GEMMs before the attention core on one TP rank, m = tokens.

    MHA/GQA: one column-parallel QKV GEMM (Shoeybi et al. 2019 §3). MLA (DeepSeek-V2 §2.1.2):
    the down-projections to the q and kv latents, replicated on every TP rank, and the
    up-projections out of them, split by heads — as Megatron-Core's MLASelfAttention and the
    serving engines compute them. With weight absorption (DeepSeek-V2 §2.1.2, used by engines
    for decode) W^UK and W^UV move into per-head products with the query and the attention
    output: the same FLOPs and weight bytes as the kv up-projection, so one shape costs both.
    Names share the prefix "qkv" so the TP all-gather before them overlaps them all."""
    h = model.hidden_size
    if not model.is_mla:
        # gated attention (Qwen3-Next/Qwen3.5) doubles q_proj: the query and its output gate
        q = model.q_dim // tp * (2 if model.attn_output_gate else 1)
        return [("qkv", q + 2 * kv_heads_per_rank(model, tp) * model.head_dim, h)]
    heads = model.num_heads
    qk = model.qk_nope_head_dim + model.qk_rope_head_dim
    if model.q_lora_rank:  # DeepSeek-V2 eq. 12-13: c^Q = W^DQ h, q = W^UQ c^Q
        gemms = [("qkv.q_down", model.q_lora_rank, h), ("qkv.q_up", heads * qk // tp, model.q_lora_rank)]
    else:
        gemms = [("qkv.q", heads * qk // tp, h)]
    # DeepSeek-V2 eq. 9-10, 14: c^KV and the shared k^R from h; k^C and v^C from c^KV
    return gemms + [("qkv.kv_down", model.kv_lora_rank + model.qk_rope_head_dim, h),
                    ("qkv.kv_up", heads * (model.qk_nope_head_dim + model.v_head_dim) // tp,
                     model.kv_lora_rank)]


def rope_elements(model: ModelSpec, tp: int) -> int:
    """Elements of q and k rotated per token on one TP rank (Su et al. 2021, RoFormer §3.4);
    MLA rotates only its decoupled q^R per head and the shared k^R (DeepSeek-V2 §2.1.3)."""
    if model.is_mla:
        return max(1, model.num_heads // tp) * model.qk_rope_head_dim + model.qk_rope_head_dim
    return model.q_dim // tp + kv_heads_per_rank(model, tp) * model.head_dim


# HBM bytes per element of PyTorch eager kernels, forward, bf16 tensors (pytorch/torchtitan
# torchtitan/models/norms.py RMSNorm: x.float() r2 w4, pow(2) r4 w4, mean r4, x·rsqrt r4 w4,
# type_as r4 w2, ·weight r2 w2; models/llama/model.py apply_rotary_emb: .float() r2 w4, complex
# product r4 w4, type_as r4 w2; FeedForward: F.silu r2 w2, then the gate product r4 w2).
EAGER_RMSNORM_BYTES = 36
EAGER_ROPE_BYTES = 20
EAGER_SWIGLU_BYTES = 10
# the GEMM shape whose measured rate stands for the SSD scan's tensor-core tiles (`ssd_op`)
SSD_GEMM_SHAPE = 8192
# amax read (2 B) + cast read (2 B) and FP8 write (1 B) per element of a dynamically scaled tensor
FP8_CAST_FWD = 5


# ---- op builders -------------------------------------------------------------------------------
def _gemm(km: KernelModel, name: str, m: int, n: int, k: int, phase: str = "fwd") -> list[Op]:
    """A forward GEMM, or its backward pair (input gradient + weight gradient)."""
    b = dtype_bytes(km.dtype)
    if phase != "bwd":
        return [Op(name, "compute", phase, 2.0 * m * n * k, b * (m * k + k * n + m * n),
                   km.gemm_s(m, n, k))]
    return [Op(name + ".dgrad", "compute", "bwd", 2.0 * m * n * k, b * (m * n + n * k + m * k),
               km.gemm_s(m, k, n)),
            Op(name + ".wgrad", "compute", "bwd", 2.0 * m * n * k, b * (m * k + m * n + n * k),
               km.gemm_s(n, k, m), wgrad=True)]


def _mem(km: KernelModel, name: str, nbytes: float, phase: str) -> Op:
    return Op(name, "compute", phase, 0.0, nbytes, km.memory_s(nbytes))


def _comm(comm_s: CommCost, name: str, op: str, group: str, size: int, stride: int,
          nbytes: float, phase: str, overlap_with: str = "", chunks: int = 0) -> Op:
    """A collective; with `overlap_with`, hidden behind that compute, and when split into
    `chunks` pipelined pieces, the first piece stays exposed."""
    t = comm_s(op, group, size, stride, nbytes)
    return Op(name, "comm", phase, 0.0, nbytes, t, group=group, overlap_with=overlap_with,
              exposed_floor_s=t / chunks if chunks else 0.0)


def transformer_layer(model: ModelSpec, lp: LayerPass, km: KernelModel, km16: KernelModel,
                      comm_s: CommCost, moe: bool, phase: str, attention: tuple = (), kind: str = "",
                      linear: bool = False, recurrence: tuple | None = None) -> list[Op]:
    """Ops of one layer on one rank, in execution order, for `phase` in fwd | bwd | recompute.
    GEMMs run on `km`, 16-bit work on `km16`; `attention` holds the attention core's ops, which
    depend on how the tokens group into sequences (training: `_core_attention`; serving adds
    its prefill chunks and decodes per batch instead). A hybrid model's layer is one block,
    `kind` its symbol (M Mamba-2, * attention, - MLP, E MoE: Megatron-Core hybrid_layer_allocation.py),
    with its pre-norm and residual add. `linear`: the layer mixes tokens with Gated DeltaNet
    (`_gdn_block`, forward only: serving) instead of attention. `recurrence`: the ops of a
    recurrent mixer's scan (Gated DeltaNet, Mamba-2), which serving costs per batch (prompt
    chunks and decode steps); None (training) costs a Mamba-2 layer's SSD scan over all tokens."""
    if model.is_hybrid and kind not in HYBRID_SYMBOLS:
        raise InputError(f"model {model.name!r}: hybrid Mamba-2 layers are modelled for training only "
                         f"(no serving costs for them)")
    t, T, h, ab = lp.tp, lp.tokens, model.hidden_size, ACT_BYTES
    T_sp = T // t if lp.sp else T  # tokens in the norm/dropout regions
    fwd = phase != "bwd"
    ew = 1.0 if fwd else 2.0  # elementwise backward reads the input and the incoming gradient
    drop = 1 if lp.dropout else 0  # 1-byte dropout mask per element
    kern = lp.kernels
    ops: list[Op] = []

    def gemm(name: str, m: int, n: int, k: int):
        base = _gemm(km, name, m, n, k, phase)
        if lp.lora_rank:
            # LoRA (Hu et al. 2021 §4.1): the frozen weight takes no gradient, so its backward is the
            # input-gradient GEMM alone; a targeted linear adds its adapter x·A (k→r) then ·B (r→n),
            # 16-bit, each with its own input and weight gradients (Megatron-Bridge peft/lora.py)
            base = [o for o in base if not o.wgrad]
            if name.split(".", 1)[0] in lp.lora_targets:
                r = lp.lora_rank
                base += _gemm(km16, f"{name}.lora_a", m, r, k, phase) + _gemm(km16, f"{name}.lora_b", m, n, r, phase)
        ops.extend(base)
        if lp.fp8_dynamic_casts:
            # torchao Float8Linear, tensor-wise dynamic scaling (pytorch/ao torchao/float8
            # float8_linear.py, float8_scaling_utils.py): forward reads the bf16 input for its amax,
            # then reads it again and writes FP8 (5 B/element); backward does the same for the
            # output gradient and writes the transposed FP8 copies the weight-gradient GEMM takes
            # (gradient 2 B, input re-cast 3 B) and the transposed FP8 weight (2 B/element)
            nbytes = (FP8_CAST_FWD * m * k if fwd else
                      FP8_CAST_FWD * m * n + 2 * m * n + 3 * m * k + 2 * k * n)
            ops.append(_mem(km, f"{name}.fp8_cast", nbytes, phase))

    def tp_collective(name: str, before_gemm: bool):
        """TP exchange around a column/row-parallel GEMM pair (Megatron f/g operators)."""
        if t == 1:
            return
        if lp.sp:  # Korthikanti §4.2.2: all-gather before the GEMM, reduce-scatter after
            op = "all_gather" if before_gemm == fwd else "reduce_scatter"
        else:  # Shoeybi §3: identity/all-reduce (f) and all-reduce/identity (g)
            if before_gemm == fwd:
                return
            op = "all_reduce"
        # Transformer Engine userbuffers (NeMo/Megatron-Core tp_comm_overlap; Wang et al.,
        # ASPLOS 2023): the collective is split into tp chunks pipelined with its GEMM.
        overlap = lp.overlap_tp_comm and lp.sp
        ops.append(_comm(comm_s, f"tp.{name}", op, "tp", t, 1, T * h * ab, phase,
                         overlap_with=name if overlap else "", chunks=t if overlap else 0))

    def norm(i: int):
        if kern.eager_elementwise and model.norm == "rmsnorm":  # five fp32 kernels (EAGER_RMSNORM_BYTES)
            ops.append(_mem(km, f"norm{i}", ew * EAGER_RMSNORM_BYTES * T_sp * h, phase))
        elif kern.fused_add_norm:  # the previous residual add and this norm: read x, r; write both
            ops.append(_mem(km, f"add_norm{i}", ew * 4 * T_sp * h * ab, phase))
        else:
            ops.append(_mem(km, f"norm{i}", ew * 2 * T_sp * h * ab, phase))

    def residual(i: int):
        if not kern.fused_add_norm:
            ops.append(_mem(km, f"bias_dropout_add{i}", ew * (3 * ab + drop) * T_sp * h, phase))

    if kind == MAMBA:
        norm(1)
        _mamba_block(model, lp, km16, comm_s, phase, ops, gemm, tp_collective, recurrence)
        residual(1)
        if phase == "bwd":
            ops.reverse()
        return ops
    # ---- attention block ----
    if linear:
        if phase != "fwd":
            raise InputError(f"model {model.name!r}: Gated DeltaNet layers are modelled for serving "
                             f"only (no training costs for them)")
        _gdn_block(model, lp, km, ops, gemm, tp_collective, norm, residual, recurrence or ())
    elif kind in ("", ATTENTION):
        _attention_block(model, lp, km, comm_s, phase, ops, gemm, tp_collective, norm, residual, attention)
    if kind == ATTENTION:
        if phase == "bwd":
            ops.reverse()
        return ops
    moe = moe or kind == MOE
    _mlp_block(model, lp, km, km16, comm_s, moe, phase, ops, gemm, tp_collective, norm, residual)
    if phase == "bwd":
        ops.reverse()
    return ops


def _attention_block(model, lp, km, comm_s, phase, ops, gemm, tp_collective, norm, residual, attention):
    """The attention block of `transformer_layer`: norm, QKV, the core, the output projection."""
    t, T, ab, kern = lp.tp, lp.tokens, ACT_BYTES, lp.kernels
    fwd = phase != "bwd"
    ew = 1.0 if fwd else 2.0
    h = model.hidden_size
    norm(1)
    tp_collective("qkv", True)
    for name, n, k in attention_gemms(model, t):
        gemm(name, T, n, k)
    if kern.eager_elementwise:  # rotary through fp32 complex views (EAGER_ROPE_BYTES per element)
        ops.append(_mem(km, "rope", ew * T * EAGER_ROPE_BYTES * rope_elements(model, t), phase))
        q_rank, kv_rank = model.q_dim // t, kv_heads_per_rank(model, t) * model.head_dim
        if kv_rank < q_rank:  # torchtitan repeat_kv: expand + reshape copies K and V to every head
            ops.append(_mem(km, "repeat_kv", ew * T * 2 * (kv_rank + q_rank) * ab, phase))
    elif kern.rope_kernel:  # read and write the rotated elements
        ops.append(_mem(km, "rope", ew * T * 2 * rope_elements(model, t) * ab, phase))
    if kern.kv_cache_write:
        kv = kv_cache_elements(model, kv_heads_per_rank(model, t))
        ops.append(_mem(km, "kv_write", T * (kv * lp.kv_bytes), phase))
    if lp.cp > 1:  # ring attention: pass K and V around the CP ring, hidden behind attention
        if model.is_mla:  # Megatron-Core rings the up-projected K (d_h + d_h^R) and V (d_h^v) heads
            k_and_v = model.num_heads // t * (attention_qk_dim(model) + model.v_head_dim)
        else:
            k_and_v = 2 * (model.kv_dim // t)
        kv_ring = T * k_and_v * ab
        ops.append(_comm(comm_s, "cp.kv_ring", "all_gather", "cp", lp.cp, t,
                         kv_ring * lp.cp * (1 if fwd else 2), phase, overlap_with="attn"))
    ops += attention
    if kern.eager_elementwise:  # torchtitan Attention.forward: output.transpose(1, 2).contiguous()
        ops.append(_mem(km, "attn_out_copy", ew * T * 2 * (model.attn_out_dim // t) * ab, phase))
    gemm("proj", T, h, model.attn_out_dim // t)
    tp_collective("proj", False)
    residual(1)


def _gdn_block(model, lp, km, ops, gemm, tp_collective, norm, residual, mixer):
    """The Gated DeltaNet block of `transformer_layer` (simulator/linear_attention.py), forward:
    norm, in_proj_qkvz and in_proj_ba (column-parallel, the TP exchange before them like QKV's),
    the causal conv1d with SiLU over q, k, v (read and write every channel; the decode conv
    state is read and rolled in the same kernel), the recurrence (`mixer`, costed per batch by
    the caller), the gated RMSNorm (read o and z, write the result), out_proj (row-parallel)."""
    T, h, ab = lp.tokens, model.hidden_size, ACT_BYTES
    s = gdn_shape(model, lp.tp)
    norm(1)
    tp_collective("in_proj", True)
    gemm("in_proj_qkvz", T, s.qkvz_width, h)
    gemm("in_proj_ba", T, 2 * s.value_heads, h)
    ops.append(_mem(km, "gdn_conv", 2 * T * s.conv_channels * ab, "fwd"))
    ops += mixer
    ops.append(_mem(km, "gdn_norm", 3 * T * s.value_width * ab, "fwd"))
    gemm("out_proj", T, h, s.value_width)
    tp_collective("out_proj", False)
    residual(1)


def _mlp_block(model, lp, km, km16, comm_s, moe, phase, ops, gemm, tp_collective, norm, residual):
    """The MLP / MoE block of `transformer_layer`."""
    t, T, h, kern = lp.tp, lp.tokens, model.hidden_size, lp.kernels
    fwd = phase != "bwd"
    ew = 1.0 if fwd else 2.0
    ab = ACT_BYTES
    # ---- MLP / MoE block ----
    norm(2)
    if moe:
        moe_ops = _moe_block(km, km16 if kern.router_16bit else km, model, lp, comm_s, phase)
        # LoRA freezes the router and the experts too (adapters on expert linears are not modelled)
        ops += [o for o in moe_ops if not (lp.lora_rank and o.wgrad)]
        if t > 1 and not lp.sp:  # experts split by TP over all T tokens: one all-reduce after
            ops.append(_comm(comm_s, "tp.moe", "all_reduce", "tp", t, 1, T * h * ab, phase))
    else:
        ffn = model.ffn_hidden_size // t
        tp_collective("fc1", True)
        gemm("fc1", T, ffn * (2 if model.gated_mlp else 1), h)
        act_bytes = (3 if model.gated_mlp else 2) * T * ffn * ab  # SwiGLU reads gate and up
        if kern.eager_elementwise and model.gated_mlp:  # SiLU, then the gate product (EAGER_SWIGLU_BYTES)
            act_bytes = EAGER_SWIGLU_BYTES * T * ffn
        ops.append(_mem(km, "act", ew * act_bytes, phase))
        gemm("fc2", T, h, ffn)
        tp_collective("fc2", False)
    residual(2)


def _mamba_block(model: ModelSpec, lp: LayerPass, km16: KernelModel, comm_s: CommCost, phase: str,
                 ops: list, gemm, tp_collective, recurrence: tuple | None = None) -> None:
    """A Mamba-2 mixer on one rank (Megatron-Core ssm/mamba_mixer.py `_ssm_training`; shapes and
    bytes in simulator/mamba.py): in_proj (column-parallel, the TP exchange before it like QKV's),
    the depthwise causal conv1d and the SSD scan with its D skip and z gate fused (mamba_ssm
    mamba_split_conv1d_scan_combined, Triton kernels run in 16-bit whatever the GEMMs' dtype), the
    gated RMSNorm, out_proj (row-parallel, the exchange after it like the attention projection's).
    With context parallelism the conv and the scan run on every token of the sequence for
    heads/cp, between two all-to-alls (ssm/mamba_context_parallel.py pre_conv_ssm, post_conv_ssm)."""
    t, T, h, ab, cp = lp.tp, lp.tokens, model.hidden_size, ACT_BYTES, lp.cp
    fwd = phase != "bwd"
    local = mamba_shape(model, t)
    tp_collective("in_proj", True)
    gemm("in_proj", T, local.in_proj_width, h)
    if cp > 1:
        ops.append(_comm(comm_s, "cp.mamba_in", "all_to_all", "cp", cp, t, T * local.in_proj_width * ab, phase))
    s = mamba_shape(model, t, cp)
    tokens = T * cp  # the scan runs over the whole sequence of its heads
    # causal_conv1d with SiLU: read and write x, B, C (memory-bound: 2·d_conv FLOPs per element
    # against 4 bytes). Backward recomputes it (checkpoint_lvl 1: xBC_conv is not saved) and reads
    # its input and the gradient, writes the input gradient (mamba_ssm ssd_combined.py backward).
    conv_elems = tokens * s.conv_channels
    ops.append(Op("mamba_conv", "compute", phase, 2.0 * s.conv * conv_elems * (1 if fwd else 3),
                  (2 if fwd else 5) * conv_elems * ab, km16.memory_s((2 if fwd else 5) * conv_elems * ab)))
    if recurrence is None:
        ops.append(ssd_op(km16, s, tokens, phase))
    else:  # serving: the scan of the batch's prompt chunks and decode steps, costed by the caller
        ops += recurrence
    if cp > 1:
        ops.append(_comm(comm_s, "cp.mamba_out", "all_to_all", "cp", cp, t, T * local.d_inner * ab, phase))
    # the gated RMSNorm over the scan output (ExtendedRMSNorm: read y, write the normalised y)
    ops.append(_mem(km16, "mamba_norm", (1.0 if fwd else 2.0) * 2 * T * local.d_inner * ab, phase))
    gemm("out_proj", T, h, local.d_inner)
    tp_collective("out_proj", False)


def ssd_op(km16: KernelModel, s: MambaShape, tokens: float, phase: str) -> Op:
    """The SSD scan (Dao & Gu 2024 §6) as one op, at the roofline of its Triton kernels
    (mamba_ssm ssd_bmm / ssd_chunk_state / ssd_state_passing / ssd_chunk_scan): its chunk products
    run as Q×Q×{N,P} tensor-core tiles on data already on chip, so its compute side is its FLOPs
    at the device's measured rate on a large GEMM (`SSD_GEMM_SHAPE`); its memory side the HBM
    traffic of `ssd_bytes` (fp32 chunk states and decays). The longer one is the time. At
    Nemotron's shapes (Q = N = 128, P = 64) the arithmetic intensity is ≈ 40 FLOP/B against a
    ridge point of ≈ 300 FLOP/B on H100 and Blackwell: memory-bound. No kernel-level timing of
    these kernels is in the tables, so this is a bound, not a measurement.
    Backward (mamba_ssm ssd_combined.py _mamba_chunk_scan_combined_bwd) recomputes C·Bᵀ and the
    chunk states, then runs two gradient products per forward product: 2× the forward's FLOPs
    plus the recomputed ones, and the forward's traffic three times (recompute, then the
    gradient of every tensor read and written)."""
    w = ssd_flops(s, tokens)
    nbytes = ssd_bytes(s, tokens, ACT_BYTES)
    if phase == "bwd":
        flops, nbytes = 2 * w.total + w.cb + w.states + w.passing, 3 * nbytes
    else:
        flops = w.total
    return Op("ssd", "compute", phase, flops, nbytes, max(flops / tile_rate(km16), km16.memory_s(nbytes)))


def tile_rate(km: KernelModel) -> float:
    """FLOP/s of the device's measured large GEMM (SSD_GEMM_SHAPE cubed): the compute side of a
    fused kernel whose products run as tensor-core tiles on data already on chip (the SSD scan,
    Gated DeltaNet's chunkwise kernels)."""
    n = SSD_GEMM_SHAPE
    return 2.0 * n ** 3 / km.gemm_s(n, n, n)


def _moe_block(km: KernelModel, km_router: KernelModel, model: ModelSpec, lp: LayerPass,
               comm_s: CommCost, phase: str) -> list[Op]:
    """Router, token all-to-all, expert GEMMs, all-to-all back (GShard, arXiv 2006.16668;
    Megatron-Core token dispatcher), plus shared experts (DeepSeekMoE, arXiv 2401.06066 §3.2)."""
    t, ep, h, etp = lp.tp, lp.ep, model.hidden_size, lp.expert_tp
    k, E = model.experts_per_token, model.num_experts
    # with SP, MoE runs on the sequence shard: each TP rank routes its own S/TP tokens
    # (megatron/core/transformer/moe/token_dispatcher.py: num_local_tokens = S/TP·B)
    tokens = max(1, lp.tokens // t) if lp.sp else lp.tokens
    # expert TP over distinct tokens (training): after the EP all-to-all the ETP group gathers its
    # tokens, so each local expert sees the tokens of ep·etp ranks (token_dispatcher.py
    # dispatch_postprocess: gather_from_sequence_parallel_region over the expert-TP group)
    etp_gather = lp.ep_distinct_tokens and etp > 1
    # (token, expert) pairs of the EP (× ETP) group
    routed = tokens * k * ((ep * etp) if lp.ep_distinct_tokens else 1)
    if lp.kernels.random_routing:
        # expected experts hit by `routed` uniform picks: E·(1 − (1 − 1/E)^routed); an expert that
        # gets no token is skipped
        active = E * (1.0 - (1.0 - 1.0 / E) ** routed)
        local = max(1, round(active / ep))
        per_expert = max(1, math.ceil(routed / max(active, 1.0)))
    else:  # balanced routing: each of the E/ep local experts gets routed/E tokens
        local = E // ep
        per_expert = max(1, routed // E)
    ffn = model.moe_ffn_hidden_size // lp.expert_tp
    gated = 2 if model.gated_mlp else 1
    a2a_bytes = tokens * k * h * ACT_BYTES
    ops = _gemm(km_router, "router", tokens, E, h, phase)
    # Megatron-Core moe_utils.permute: each token's row copied once per chosen expert (read T·h,
    # write T·k·h); backward scatter-adds the gradients back (the same bytes)
    permute_bytes = (tokens + tokens * k) * h * ACT_BYTES
    if lp.kernels.token_permute:
        ops.append(_mem(km, "moe_permute", permute_bytes, phase))
    # EP peers holding the same tokens (EP inside the attention-TP group of a serving replica) need
    # no exchange: each rank runs its local experts on the tokens routed to them and the TP
    # all-reduce after the block sums the partial outputs (vLLM FusedMoE: all2all kernels only with
    # data parallelism, MoEPrepareAndFinalizeNoEP otherwise; TensorRT-LLM CutlassFusedMoE: alltoall
    # only with attention DP; SGLang EPMoE without DP attention)
    exchange = lp.ep_distinct_tokens
    if exchange:
        ops.append(_comm(comm_s, "ep.dispatch", "all_to_all", "ep", ep, lp.ep_stride, a2a_bytes, phase))
    received = routed / ep * h * ACT_BYTES  # the (token, expert) rows this rank's experts get
    if lp.kernels.token_permute and E // ep > 1:
        # token_dispatcher.py dispatch_postprocess: sort_chunks_by_idxs regroups the rows the
        # all-to-all delivered (source-rank major) into local-expert order: read and write them
        ops.append(_mem(km, "moe_sort_chunks", 2 * received, phase))
    fwd = phase != "bwd"
    if etp_gather:  # ETP ranks are adjacent (stride 1) in the folded expert order
        ops.append(_comm(comm_s, "ep.etp_gather", "all_gather" if fwd else "reduce_scatter", "ep", etp, 1,
                         a2a_bytes * etp, phase))
    for name, n, kk in (("expert_fc1", ffn * gated, h), ("expert_fc2", h, ffn)):
        if lp.kernels.grouped_experts:  # local experts side by side in N: their FLOPs and weight bytes
            ops += _gemm(km, name, per_expert, n * local, kk, phase)
            continue
        for op in _gemm(km, name, per_expert, n, kk, phase):
            ops.append(Op(op.name, op.kind, op.phase, op.flops * local,
                          op.bytes * local, op.time_s * local, wgrad=op.wgrad))
    # activation over the (token, expert) pairs this rank's experts receive: the EP group's share
    ops.append(_mem(km, "expert_act", (gated + 1) * (routed / ep) * ffn * ACT_BYTES, phase))
    if etp_gather:  # token_dispatcher.py combine_preprocess: reduce-scatter over the expert-TP group
        ops.append(_comm(comm_s, "ep.etp_scatter", "reduce_scatter" if fwd else "all_gather", "ep", etp, 1,
                         a2a_bytes * etp, phase))
    if lp.kernels.token_permute and E // ep > 1:  # combine_preprocess: back to source-rank order
        ops.append(_mem(km, "moe_unsort_chunks", 2 * received, phase))
    if exchange:
        ops.append(_comm(comm_s, "ep.combine", "all_to_all", "ep", ep, lp.ep_stride, a2a_bytes, phase))
    if lp.kernels.token_permute:
        # moe_utils.unpermute: the k expert outputs of each token weighted by its routing
        # probabilities and summed into its row (read T·k·h, write T·h)
        ops.append(_mem(km, "moe_unpermute", permute_bytes, phase))
    if model.num_shared_experts:
        sf = model.moe_ffn_hidden_size * model.num_shared_experts // t
        ops += _gemm(km, "shared_fc1", lp.tokens, sf * gated, h, phase)
        ops += _gemm(km, "shared_fc2", lp.tokens, h, sf, phase)
    return ops


def window_pairs(q: int, ctx: int, window: int = 0) -> float:
    """Key-query pairs that q new tokens after ctx cached ones attend to, each reaching back over
    at most `window` tokens (itself included; 0 = no window), in the continuous form the causal
    q²/2 + q·ctx takes: with a = ctx, w < a + q it is q·w (a ≥ w), else (w² − a²)/2 + (a+q−w)·w;
    for a training sequence (a = 0) s·min(s, w) − min(s, w)²/2 (Mistral 7B arXiv 2310.06825 §2:
    each token sees w positions; Beltagy et al. 2020 Longformer §3.1: O(n·w))."""
    full = q * q / 2 + q * ctx
    if window <= 0 or window >= q + ctx:
        return full
    a, w = ctx, window
    if a >= w:
        return float(q * w)
    return (w * w - a * a) / 2 + (a + q - w) * w


def window_mix(model: ModelSpec, q: int, ctx: int = 0) -> float:
    """The layer-weighted share of full causal attention pairs the model's layers compute
    (1.0 without local attention): Σ layers · window_pairs / (L · (q²/2 + q·ctx))."""
    full = q * q / 2 + q * ctx
    if full <= 0:
        return 1.0
    counts = model.window_counts()
    return sum(n * window_pairs(q, ctx, w) for w, n in counts) / (model.num_layers * full)


def chunk_attention_s(km: KernelModel, model: ModelSpec, heads: int, kv_heads: int,
                      count: int, q: int, ctx: int, window: int = 0) -> float:
    """One layer's attention core, forward, for `count` sequences each adding q tokens after ctx
    cached ones (FlashAttention-2, Dao 2023 §3.1): the causal q×q block plus the full q×ctx
    block. A training micro-batch is `count` = mb sequences of q = s tokens and no context.

    A layer with local attention (`window` w < q + ctx) runs only the key blocks inside the band
    (flash-attention `window_size`: flash_fwd_kernel.h n_block_min/n_block_max skip blocks left of
    the window): a query block of w rows reads the w keys before it and its own causal w×w block
    (w² pairs). Costed as `window_pairs`/w² such blocks, each at the measured time of the cheaper
    of two kernels that contain it: two causal kernels of length w (the two triangles), or the
    second half of a causal kernel of length 2w, t(2w) − t(w) (exact when w is one kernel tile,
    GPT-OSS's 128: the band is then two key tiles per query tile)."""
    d = attention_qk_dim(model)
    if 0 < window < q + ctx:
        blocks = window_pairs(q, ctx, window) / (window * window)
        n = max(1, math.ceil(blocks))
        t_w = km.flash_attention_s(count * n, window, window, heads, kv_heads, d, True)
        t_2w = km.flash_attention_s(count * n, 2 * window, 2 * window, heads, kv_heads, d, True)
        per_block = min(2 * t_w, t_2w - t_w) if t_2w > t_w else 2 * t_w
        return per_block * blocks / n * attention_width_ratio(model)
    t = km.flash_attention_s(count, q, q, heads, kv_heads, d, True)
    if ctx:
        t += km.flash_attention_s(count, q, ctx, heads, kv_heads, d, False)
    return t * attention_width_ratio(model)


# ---- training ----------------------------------------------------------------------------------
def layer_ops(model: ModelSpec, job: TrainingJob, plan: TrainingPlan, cluster: Cluster,
              moe: bool, phase: str, kind: str = "") -> list[Op]:
    """Ops of one layer for one micro-batch on one rank, in execution order, for `phase` in
    fwd | bwd | recompute; `kind` a hybrid model's layer symbol (`transformer_layer`)."""
    return list(_layer_ops(model, job, plan, cluster, moe, phase, kind))


@lru_cache(maxsize=4096)
def _layer_ops(model: ModelSpec, job: TrainingJob, plan: TrainingPlan, cluster: Cluster,
               moe: bool, phase: str, kind: str = "") -> tuple[Op, ...]:
    km = kernel_model(cluster.device.name, job.dtype)
    # FP8 recipes run attention in bf16 (Transformer Engine: FP8 dot-product attention is opt-in)
    km_attn = kernel_model(cluster.device.name, "bf16") if job.dtype in ("fp8", "fp4") else km
    t, cp = plan.tp, plan.cp
    # MoE parallel folding (Liu et al. 2025, arXiv 2504.14960; megatron/core/parallel_state.py
    # expert_decoder_rank_generator, order etp-ep-edp): EP peers are etp ranks apart inside the stage
    lp = LayerPass(tokens=plan.mb * job.seq_len // cp, tp=t, sp=plan.sp, cp=cp, ep=plan.ep,
                   ep_stride=plan.etp, expert_tp=plan.etp, overlap_tp_comm=job.overlap_tp_comm,
                   dropout=job.dropout, kernels=EAGER_PYTORCH if job.eager_elementwise else MEGATRON,
                   fp8_dynamic_casts=job.fp8_dynamic_casts and job.dtype == "fp8",
                   lora_rank=job.lora_rank, lora_targets=job.lora_targets)
    heads, kv_heads = model.num_heads // t, max(1, model.num_kv_heads // t)
    attention = _core_attention(km_attn, model, job, plan, heads, kv_heads, phase) if kind in ("", ATTENTION) else []

    def comm_s(op: str, group: str, size: int, stride: int, nbytes: float) -> float:
        return collective_s(cluster, op, size, stride, nbytes)
    return tuple(transformer_layer(model, lp, km, km_attn, comm_s, moe, phase, tuple(attention), kind))


def _core_attention(km: KernelModel, model: ModelSpec, job: TrainingJob, plan: TrainingPlan,
                    heads: int, kv_heads: int, ph: str) -> list[Op]:
    mb, s, cp = plan.mb, job.seq_len, plan.cp
    d = attention_qk_dim(model)
    # causal QK^T + AV, per rank (half of 4·b·s²·a·d; MLA's AV at its value width)
    causal_flops = 2.0 * mb * s * s * heads * d * attention_width_ratio(model) / cp
    if job.flash_attention:
        if ph == "recompute" and plan.recompute == "selective":
            return []  # flash attention recomputes its scores inside the backward kernel
        if job.attention_kernel == "fa2":
            # one layer cost stands for every layer of the chunk: the layer-weighted mix of full
            # and local (sliding-window) layers (flash-attention window_size skips the blocks
            # outside the window, forward and backward alike)
            counts = model.window_counts()
            fwd_t = sum(n * chunk_attention_s(km, model, heads, kv_heads, mb, s, 0, w)
                        for w, n in counts) / model.num_layers / cp
            causal_flops *= window_mix(model, s)
        else:  # an older flash kernel (FA1, the Triton port) at its own measured rate
            fwd_t = km.legacy_flash_s(job.attention_kernel, mb, s, heads, d) / cp
        if ph == "bwd":  # FlashAttention-2 (Dao 2023 §4.1): the backward costs 2.5 forwards
            return [Op("attn", "compute", ph, 2.5 * causal_flops, 0.0, 2.5 * fwd_t)]
        return [Op("attn", "compute", ph, causal_flops, 0.0, fwd_t)]
    # Unfused attention as Megatron-LM 2021 runs it: baddbmm for QK^T, fused
    # scale-upper-triangular-mask-softmax kernel, dropout, bmm for AV; the s×s tensors live in HBM.
    b = heads * mb
    scores = b * s * s // cp  # elements of the score matrix per rank
    drop = 1 if job.dropout else 0
    dv = model.v_head_dim if model.is_mla else d  # A·V at the value width
    if ph == "bwd":  # two GEMMs per forward GEMM; softmax bwd reads y, dy, writes dx; dropout bwd
        return [Op("attn.qk", "compute", ph, 4.0 * scores * d, 0.0, 2 * km.bmm_s(b, s // cp, s, d)),
                Op("attn.softmax", "compute", ph, 0.0, (3 * 2 + 2 * drop) * scores,
                   km.memory_s((3 * 2 + 2 * drop) * scores)),
                Op("attn.av", "compute", ph, 4.0 * scores * dv, 0.0, 2 * km.bmm_s(b, s // cp, dv, s))]
    # Full (non-causal) s×s products: the 2021 kernels compute the masked half too.
    return [Op("attn.qk", "compute", ph, 2.0 * scores * d, 0.0, km.bmm_s(b, s // cp, s, d)),
            Op("attn.softmax", "compute", ph, 0.0, (2 * 2 + (2 * 2 + 1) * drop) * scores,
               km.memory_s((2 * 2 + (2 * 2 + 1) * drop) * scores)),
            Op("attn.av", "compute", ph, 2.0 * scores * dv, 0.0, km.bmm_s(b, s // cp, dv, s))]


def _sum_phase(ops: tuple[Op, ...]) -> tuple[float, float, dict, float]:
    """(compute seconds, wgrad seconds, exposed comm seconds per group, FLOPs). A comm op with
    `overlap_with` hides behind the compute ops of that base name (e.g. "qkv" covers qkv.dgrad
    and qkv.wgrad), down to its exposed floor."""
    compute = wgrad = flops = 0.0
    hidden_by: dict[str, float] = {}
    for op in ops:
        if op.kind == "compute":
            compute += op.time_s
            flops += op.flops
            if op.wgrad:
                wgrad += op.time_s
            base = op.name.split(".", 1)[0]
            hidden_by[base] = hidden_by.get(base, 0.0) + op.time_s
    comm: dict[str, float] = {}
    for op in ops:
        if op.kind == "comm":
            exposed = op.time_s
            if op.overlap_with:  # overlapped with the compute it hides behind
                exposed = max(op.exposed_floor_s, op.time_s - hidden_by.get(op.overlap_with, 0.0))
            comm[op.group] = comm.get(op.group, 0.0) + exposed
    return compute, wgrad, comm, flops


@lru_cache(maxsize=4096)
def layer_cost(model: ModelSpec, job: TrainingJob, plan: TrainingPlan, cluster: Cluster,
               moe: bool, kind: str = "") -> LayerCost:
    """One layer's cost. A hybrid model's MoE layers ('E') cost as themselves; its other layers
    (M, *, -) as their layer-weighted mean, the per-layer cost the engines multiply by a stage's
    non-MoE layer count (exact for a whole model or a stage with the model's mix; a stage
    whose mix differs is off by the difference)."""
    if model.is_hybrid and not kind:
        if moe:
            return layer_cost(model, job, plan, cluster, True, MOE)
        counts = model.kind_counts() or ((MOE, 1),)  # all-MoE: no dense layer reads it
        return _mean_cost([(layer_cost(model, job, plan, cluster, k == MOE, k), n) for k, n in counts])
    fwd_ops = _layer_ops(model, job, plan, cluster, moe, "fwd", kind)
    f_c, _, f_comm, _ = _sum_phase(fwd_ops)
    b_c, b_w, b_comm, _ = _sum_phase(_layer_ops(model, job, plan, cluster, moe, "bwd", kind))
    fwd_flops, attn_flops = _model_flops_fwd(model, job, plan, moe, kind)
    if plan.recompute == "full":  # re-run the whole forward, collectives included
        r_c, r_comm, r_flops = f_c, f_comm, fwd_flops
    elif plan.recompute == "selective" and job.selective_policy == "op":
        # torchtitan op-level SAC: the outputs of the odd matmuls (wq, wv, w1, w2 of a Llama block;
        # wq, wv, fc1 without a gate) and of the flash attention are saved, everything else of the
        # forward runs again in backward (collectives and MoE experts counted as saved)
        share = [_op_sac_share(model, o.name, moe) for o in fwd_ops if o.kind == "compute"]
        comp = [o for o in fwd_ops if o.kind == "compute"]
        r_c = sum(w * o.time_s for w, o in zip(share, comp))
        r_flops = sum(w * o.flops for w, o in zip(share, comp))
        r_comm = {}
    elif plan.recompute == "selective" and not job.flash_attention:
        # Korthikanti et al. 2022 §5: recompute only the core attention (QK^T, softmax, dropout, AV)
        r_c, _, r_comm, _ = _sum_phase(tuple(o for o in fwd_ops if o.name.startswith("attn")))
        r_flops = attn_flops
    else:  # none, or selective with flash attention (its backward recomputes scores already)
        r_c, r_comm, r_flops = 0.0, {}, 0.0
    return LayerCost(f_c, b_c, r_c, b_w, f_comm, b_comm, r_comm, fwd_flops, r_flops)


def _mean_cost(weighted: list) -> LayerCost:
    """The layer-weighted mean of [(LayerCost, layers), ...]."""
    n = sum(w for _, w in weighted)

    def mean(get):
        return sum(w * get(c) for c, w in weighted) / n

    def mean_dict(get):
        keys = {k for c, _ in weighted for k in get(c)}
        return {k: sum(w * get(c).get(k, 0.0) for c, w in weighted) / n for k in sorted(keys)}
    return LayerCost(mean(lambda c: c.fwd_compute_s), mean(lambda c: c.bwd_compute_s),
                     mean(lambda c: c.recompute_s), mean(lambda c: c.wgrad_s), mean_dict(lambda c: c.fwd_comm_s),
                     mean_dict(lambda c: c.bwd_comm_s), mean_dict(lambda c: c.recompute_comm_s),
                     mean(lambda c: c.fwd_flops), mean(lambda c: c.recompute_flops))


def _op_sac_share(model: ModelSpec, name: str, moe: bool) -> float:
    """Share of a forward op that torchtitan's op-level selective checkpointing runs again in
    backward. Its policy counts aten.mm calls per block and saves every odd one (torchtitan
    parallelize_llama.py `_custom_policy`: `mm_count % 2 == 0` → PREFER_RECOMPUTE) and the flash
    attention; the block calls wq, wk, wv, wo, then w1, w3, w2 (FeedForward: w2(silu(w1 x) · w3 x)),
    so wk, wo and w3 (a plain MLP: fc2) run again. Elementwise ops are not saved."""
    base = name.split(".", 1)[0]
    if base.startswith("attn") and base != "attn_out_copy":
        return 0.0
    if base == "qkv":
        if model.is_mla:
            return 0.5
        return model.kv_dim / (model.q_dim + 2 * model.kv_dim)  # wk of wq, wk, wv
    if base == "proj":
        return 1.0  # wo, the 4th matmul
    if base == "fc1":
        return 0.5 if model.gated_mlp else 0.0  # w3 of the fused w1|w3 GEMM
    if base == "fc2":
        return 0.0 if model.gated_mlp else 1.0
    if moe and (base.startswith("expert") or base in ("router", "shared_fc1", "shared_fc2")):
        return 0.0
    return 1.0


def _model_flops_fwd(model: ModelSpec, job: TrainingJob, plan: TrainingPlan,
                     moe: bool, kind: str = "") -> tuple[float, float]:
    """(forward model FLOPs, of which core attention) of one layer for one micro-batch, whole
    layer (all TP/CP ranks), with non-causal attention as Megatron (2104.04473 eq. 3) and PaLM
    (2204.02311 App. B) count it. A hybrid layer counts its one block: a Mamba-2 mixer its two
    projections, the conv (2·d_conv per channel) and the SSD scan (`simulator.mamba.ssd_flops`)."""
    T = plan.mb * job.seq_len
    h = model.hidden_size
    if kind == MAMBA:
        s = mamba_shape(model)
        conv = 2.0 * T * s.conv * s.conv_channels
        return float(2 * T * h * (s.in_proj_width + s.d_inner) + conv + ssd_flops(s, T).total), 0.0
    attn_proj = 2 * T * h * (model.q_dim + 2 * model.kv_dim) + 2 * T * model.attn_out_dim * h
    if model.is_mla:
        attn_proj = 2 * T * model.attention_params()
    d_qk = model.head_dim if not model.is_mla else model.qk_nope_head_dim + model.qk_rope_head_dim
    d_v = model.head_dim if not model.is_mla else model.v_head_dim
    # local (sliding-window) layers: the same convention over the pairs inside the window
    attn = 2 * T * job.seq_len * model.num_heads * (d_qk + d_v) * window_mix(model, job.seq_len)
    if moe:
        mlp = 2 * T * model.experts_per_token * model.expert_params() + 2 * T * h * model.num_experts
        if model.num_shared_experts:
            mlp += 2 * T * model.dense_mlp_params(model.moe_ffn_hidden_size * model.num_shared_experts)
    else:
        mlp = 2 * T * model.mlp_matrices * h * model.ffn_hidden_size
    if kind == ATTENTION:
        return float(attn_proj + attn), float(attn)
    if kind in (MLP, MOE):  # a hybrid MLP or MoE layer: its block alone
        return float(mlp), 0.0
    return float(attn_proj + attn + mlp), float(attn)


def check_supported(model: ModelSpec, plan: TrainingPlan) -> None:
    if model.is_moe and plan.tp > 1 and not plan.sp:
        raise InputError("plan with MoE and tp > 1 needs sp=on (Megatron-Core requires sequence "
                         "parallelism for MoE with tensor parallelism)")
    if model.is_hybrid and MAMBA in model.hybrid_pattern:
        # Megatron-Core MambaMixer asserts nheads % tp == 0 and ngroups % tp == 0, and
        # MambaContextParallel splits the TP-local heads and groups over cp
        split = plan.tp * plan.cp
        if model.mamba_num_heads % split or model.mamba_num_groups % split:
            raise InputError(f"plan tp={plan.tp} cp={plan.cp}: Mamba-2 layers split their "
                             f"{model.mamba_num_heads} heads and {model.mamba_num_groups} groups over tp·cp = "
                             f"{split} ranks, which must divide both")
