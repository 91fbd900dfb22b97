"""The ops of one training iteration on one rank, with FLOPs, bytes and durations.

This is the op graph both engines read (DESIGN.md §1): `layer_ops` lists the kernels and
collectives of one transformer layer for one micro-batch on one rank — forward, backward and
recompute — each costed once by `hwmodels` (kernels, collectives). The analytic engine sums them
with closed forms; the discrete-event engine (later) executes the same list on streams.

Shapes follow Megatron-LM: TP splits heads and the FFN (Shoeybi et al. 2019 §3), SP splits the
norm/dropout regions along the sequence (Korthikanti et al. 2022 §4.2.2), CP splits the sequence
with ring attention, EP places experts (Megatron-Core, expert-TP = 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from hwmodels.clusters import Cluster
from hwmodels.collectives import collective_s
from hwmodels.errors import InputError
from hwmodels.kernels import KernelModel, dtype_bytes, kernel_model
from simulator.models import ModelSpec
from simulator.training import TrainingJob, TrainingPlan

ACT_BYTES = 2  # activations and gradients travel in bf16/fp16 (fp8 GEMMs still exchange bf16)


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


def _comm(cluster: Cluster, name: str, op: str, group: str, size: int, stride: int,
          nbytes: float, phase: str, overlap_with: str = "", chunks: int = 0) -> Op:
    """A collective; with `overlap_with`, hidden behind that compute, and when split into
    `chunks` pipelined pieces, the first piece stays exposed."""
    t = collective_s(cluster, op, size, stride, nbytes)
    return Op(name, "comm", phase, 0.0, nbytes, t, group=group, overlap_with=overlap_with,
              exposed_floor_s=t / chunks if chunks else 0.0)


def layer_ops(model: ModelSpec, job: TrainingJob, plan: TrainingPlan, cluster: Cluster,
              moe: bool, phase: str) -> list[Op]:
    """Ops of one layer for one micro-batch on one rank, in execution order, for `phase` in
    fwd | bwd | recompute."""
    return list(_layer_ops(model, job, plan, cluster, moe, phase))


@lru_cache(maxsize=4096)
def _layer_ops(model: ModelSpec, job: TrainingJob, plan: TrainingPlan, cluster: Cluster,
               moe: bool, phase: str) -> tuple[Op, ...]:
    km = kernel_model(cluster.device.name, job.dtype)
    # FP8 recipes run attention in bf16 (Transformer Engine: FP8 dot-product attention is opt-in)
    km_attn = kernel_model(cluster.device.name, "bf16") if job.dtype in ("fp8", "fp4") else km
    t, cp, mb, s = plan.tp, plan.cp, plan.mb, job.seq_len
    h, d = model.hidden_size, model.head_dim
    T = mb * s // cp  # tokens per rank per micro-batch (before SP)
    T_sp = T // t if plan.sp else T  # tokens in the norm/dropout regions
    heads, kv_heads = model.num_heads // t, max(1, model.num_kv_heads // t)
    ab = ACT_BYTES
    drop = 1 if job.dropout else 0  # 1-byte dropout mask per element
    fwd = phase != "bwd"
    ph = phase
    ew = 1.0 if fwd else 2.0  # elementwise backward reads the input and the incoming gradient
    ops: list[Op] = []

    def tp_collective(name: str, before_gemm: bool):
        """TP exchange around a column/row-parallel GEMM pair (Megatron f/g operators)."""
        if t == 1:
            return
        buf = T * h * ab
        if plan.sp:  # Korthikanti §4.2.2: all-gather before the GEMM, reduce-scatter after
            op = "all_gather" if before_gemm == fwd else "reduce_scatter"
        else:  # Shoeybi §3: identity/all-reduce (f) and all-reduce/identity (g)
            if before_gemm == fwd:
                return
            op = "all_reduce"
        # Transformer Engine userbuffers (NeMo/Megatron-Core tp_comm_overlap; Wang et al.,
        # ASPLOS 2023): the collective is split into tp chunks pipelined with its GEMM.
        overlap = job.overlap_tp_comm and plan.sp
        ops.append(_comm(cluster, f"tp.{name}", op, "tp", t, 1, buf, ph,
                         overlap_with=name if overlap else "", chunks=t if overlap else 0))

    # ---- attention block ----
    ops.append(_mem(km, "norm1", ew * 2 * T_sp * h * ab, ph))
    tp_collective("qkv", True)
    ops += _gemm(km, "qkv", T, (model.q_dim + 2 * model.kv_dim) // t if not model.is_mla
                 else _mla_qkv_width(model, t), h, ph)
    if cp > 1:  # ring attention: pass K and V around the CP ring, hidden behind attention
        kv = 2 * T * (model.kv_dim // t if not model.is_mla else model.num_heads // t * d) * ab
        ops.append(_comm(cluster, "cp.kv_ring", "all_gather", "cp", cp, t, kv * cp * (1 if fwd else 2),
                         ph, overlap_with="attn"))
    ops += _core_attention(km_attn, model, job, plan, heads, kv_heads, ph)
    ops += _gemm(km, "proj", T, h, model.attn_out_dim // t, ph)
    tp_collective("proj", False)
    ops.append(_mem(km, "bias_dropout_add1", ew * (3 * ab + drop) * T_sp * h, ph))
    # ---- MLP / MoE block ----
    ops.append(_mem(km, "norm2", ew * 2 * T_sp * h * ab, ph))
    if moe:
        ops += _moe_block(km, model, plan, cluster, T, ph)
    else:
        ffn = model.ffn_hidden_size // t
        tp_collective("fc1", True)
        ops += _gemm(km, "fc1", T, ffn * (2 if model.gated_mlp else 1), h, ph)
        act_bytes = (3 if model.gated_mlp else 2) * T * ffn * ab
        ops.append(_mem(km, "act", ew * act_bytes, ph))
        ops += _gemm(km, "fc2", T, h, ffn, ph)
        tp_collective("fc2", False)
    ops.append(_mem(km, "bias_dropout_add2", ew * (3 * ab + drop) * T_sp * h, ph))
    if ph == "bwd":
        ops.reverse()
    return tuple(ops)


def _mla_qkv_width(model: ModelSpec, t: int) -> int:
    """MLA projections folded into one GEMM width per rank (DeepSeek-V2 §2.1.2): down-projections
    replicated, up-projections split across TP."""
    qk = model.qk_nope_head_dim + model.qk_rope_head_dim
    down = (model.q_lora_rank or 0) + model.kv_lora_rank + model.qk_rope_head_dim
    up_q = model.num_heads * qk * (1 if not model.q_lora_rank else model.q_lora_rank / model.hidden_size)
    up_kv = model.num_heads * (model.qk_nope_head_dim + model.v_head_dim) * model.kv_lora_rank / model.hidden_size
    return max(1, int(down + (up_q + up_kv) / t))


def _core_attention(km: KernelModel, model: ModelSpec, job: TrainingJob, plan: TrainingPlan,
                    heads: int, kv_heads: int, ph: str) -> list[Op]:
    mb, s, cp = plan.mb, job.seq_len, plan.cp
    d = model.head_dim if not model.is_mla else model.qk_nope_head_dim + model.qk_rope_head_dim
    causal_flops = 2.0 * mb * s * s * heads * d / cp  # causal QK^T + AV, per rank (half of 4·b·s²·a·d)
    if job.flash_attention:
        if ph == "recompute" and plan.recompute == "selective":
            return []  # flash attention recomputes its scores inside the backward kernel
        fwd_t = km.flash_attention_s(mb, s, s, heads, kv_heads, d, True) / cp
        if ph == "bwd":
            return [Op("attn", "compute", ph, 2.5 * causal_flops, 0.0, 2.5 * fwd_t)]
        return [Op("attn", "compute", ph, causal_flops, 0.0, fwd_t)]
    # Unfused attention as Megatron-LM 2021 runs it: baddbmm for QK^T, fused
    # scale-upper-triangular-mask-softmax kernel, dropout, bmm for AV; the s×s tensors live in HBM.
    b = heads * mb
    scores = b * s * s // cp  # elements of the score matrix per rank
    drop = 1 if job.dropout else 0
    if ph == "bwd":  # two GEMMs per forward GEMM; softmax bwd reads y, dy, writes dx; dropout bwd
        return [Op("attn.qk", "compute", ph, 4.0 * scores * d, 0.0, 2 * km.bmm_s(b, s // cp, s, d)),
                Op("attn.softmax", "compute", ph, 0.0, (3 * 2 + 2 * drop) * scores,
                   km.memory_s((3 * 2 + 2 * drop) * scores)),
                Op("attn.av", "compute", ph, 4.0 * scores * d, 0.0, 2 * km.bmm_s(b, s // cp, d, s))]
    # Full (non-causal) s×s products: the 2021 kernels compute the masked half too.
    return [Op("attn.qk", "compute", ph, 2.0 * scores * d, 0.0, km.bmm_s(b, s // cp, s, d)),
            Op("attn.softmax", "compute", ph, 0.0, (2 * 2 + (2 * 2 + 1) * drop) * scores,
               km.memory_s((2 * 2 + (2 * 2 + 1) * drop) * scores)),
            Op("attn.av", "compute", ph, 2.0 * scores * d, 0.0, km.bmm_s(b, s // cp, d, s))]


def _moe_block(km: KernelModel, model: ModelSpec, plan: TrainingPlan, cluster: Cluster,
               T: int, ph: str) -> list[Op]:
    """Router, token all-to-all, grouped expert GEMMs, all-to-all back (GShard, arXiv 2006.16668;
    Megatron-Core token dispatcher), plus shared experts (DeepSeekMoE)."""
    t, ep, h = plan.tp, plan.ep, model.hidden_size
    k, E = model.experts_per_token, model.num_experts
    tokens = max(1, T // t)  # MoE with TP runs on the sequence-parallel shard of tokens
    local_experts = E // ep
    per_expert = max(1, tokens * k * ep // E)  # balanced routing
    ffn = model.moe_ffn_hidden_size
    a2a_bytes = tokens * k * h * ACT_BYTES
    ops = _gemm(km, "router", tokens, E, h, ph)
    ops.append(_comm(cluster, "ep.dispatch", "all_to_all", "ep", ep, t * plan.cp, a2a_bytes, ph))
    for name, m, n, kk in (("expert_fc1", per_expert, ffn * (2 if model.gated_mlp else 1), h),
                           ("expert_fc2", per_expert, h, ffn)):
        for op in _gemm(km, name, m, n, kk, ph):
            ops.append(Op(op.name, op.kind, op.phase, op.flops * local_experts,
                          op.bytes * local_experts, op.time_s * local_experts, wgrad=op.wgrad))
    ops.append(Op("expert_act", "compute", ph, 0.0, 3 * tokens * k * ffn * ACT_BYTES,
                  km.memory_s(3 * tokens * k * ffn * ACT_BYTES)))
    ops.append(_comm(cluster, "ep.combine", "all_to_all", "ep", ep, t * plan.cp, a2a_bytes, ph))
    if model.num_shared_experts:
        sf = model.moe_ffn_hidden_size * model.num_shared_experts // t
        ops += _gemm(km, "shared_fc1", T, sf * (2 if model.gated_mlp else 1), h, ph)
        ops += _gemm(km, "shared_fc2", T, h, sf, ph)
    return ops


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
               moe: bool) -> LayerCost:
    fwd_ops = _layer_ops(model, job, plan, cluster, moe, "fwd")
    f_c, _, f_comm, _ = _sum_phase(fwd_ops)
    b_c, b_w, b_comm, _ = _sum_phase(_layer_ops(model, job, plan, cluster, moe, "bwd"))
    fwd_flops, attn_flops = _model_flops_fwd(model, job, plan, moe)
    if plan.recompute == "full":  # re-run the whole forward, collectives included
        r_c, r_comm, r_flops = f_c, f_comm, fwd_flops
    elif plan.recompute == "selective" and not job.flash_attention:
        # Korthikanti et al. 2022 §5: recompute only the core attention (QK^T, softmax, dropout, AV)
        r_c, _, r_comm, _ = _sum_phase(tuple(o for o in fwd_ops if o.name.startswith("attn")))
        r_flops = attn_flops
    else:  # none, or selective with flash attention (its backward recomputes scores already)
        r_c, r_comm, r_flops = 0.0, {}, 0.0
    return LayerCost(f_c, b_c, r_c, b_w, f_comm, b_comm, r_comm, fwd_flops, r_flops)


def _model_flops_fwd(model: ModelSpec, job: TrainingJob, plan: TrainingPlan,
                     moe: bool) -> tuple[float, float]:
    """(forward model FLOPs, of which core attention) of one layer for one micro-batch, whole
    layer (all TP/CP ranks), with non-causal attention as Megatron (2104.04473 eq. 3) and PaLM
    (2204.02311 App. B) count it."""
    T = plan.mb * job.seq_len
    h = model.hidden_size
    attn_proj = 2 * T * h * (model.q_dim + 2 * model.kv_dim) + 2 * T * model.attn_out_dim * h
    if model.is_mla:
        attn_proj = 2 * T * model.attention_params()
    d_qk = model.head_dim if not model.is_mla else model.qk_nope_head_dim + model.qk_rope_head_dim
    d_v = model.head_dim if not model.is_mla else model.v_head_dim
    attn = 2 * T * job.seq_len * model.num_heads * (d_qk + d_v)
    if moe:
        mlp = 2 * T * model.experts_per_token * model.expert_params() + 2 * T * h * model.num_experts
        if model.num_shared_experts:
            mlp += 2 * T * model.dense_mlp_params(model.moe_ffn_hidden_size * model.num_shared_experts)
    else:
        mlp = 2 * T * model.mlp_matrices * h * model.ffn_hidden_size
    return float(attn_proj + attn + mlp), float(attn)


def check_supported(model: ModelSpec, plan: TrainingPlan) -> None:
    if model.is_moe and plan.tp > 1 and not plan.sp:
        raise InputError("plan with MoE and tp > 1 needs sp=on (Megatron-Core requires sequence "
                         "parallelism for MoE with tensor parallelism)")
