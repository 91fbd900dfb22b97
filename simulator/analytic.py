"""Analytic training-step engine: the op graph's durations combined with closed forms.

step = Σ over the bottleneck stage of m micro-batches × (forward + backward + recompute, with
exposed TP/CP/EP communication) + pipeline bubble + exposed pipeline send/recv + exposed DP/ZeRO
communication + optimizer step. Every term is reported in `breakdown_s` and they sum to
`step_time_s`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hwmodels.clusters import Cluster
from hwmodels.collectives import collective_s
from hwmodels.errors import InputError
from hwmodels.kernels import kernel_model
from simulator import schedules
from simulator.memory import (as_row, by_mesh, cached, chunk_recomputed, expert_dp_size, group, layer_activation_bytes,
                              layer_terms_job, lora_layer_params, memo, mtp_recomputed, named_rows, offloaded_layers,
                              placement, placements, plan_memory, recompute_rows, recomputed_layer_ids,
                              recomputed_layers, stage_memory, stage_params, tokens_per_rank)
from simulator.ops import _model_flops_fwd, check_supported, layer_cost
from simulator.precision import ACT_BYTES, WEIGHT_BYTES
from simulator.regimes import validation_of
from simulator.training import (EVEN, RECOMPUTE, RECOMPUTE_METHODS, PlanBatch, TrainingJob, TrainingPlan, layer_plan,
                                micro_batches, validate_plan)

# Bytes a fused Adam step moves per parameter: read grad (2), master/m/v (12); write
# master/m/v (12) and the bf16 copy (2) — memory-bound (Megatron-LM FusedAdam / apex).
ADAM_BYTES_PER_PARAM = 28
# Host side of optimizer offload (ZeRO-Offload, Ren et al. 2021): PCIe Gen4 x16 at the measured
# ~25 GB/s per direction (nvbandwidth H2D ratio 88% of wire, stas00/ml-engineering network table),
# and CPU Adam limited by host DRAM bandwidth (2 sockets × 8 channels DDR4-3200 = 409.6 GB/s per
# DGX A100 node, shared by its GPUs).
PCIE_BYTES_PER_S = 25e9
HOST_DRAM_BYTES_PER_S = 409.6e9
# PyTorch DDP default bucket (Li et al. 2020, arXiv 2006.15704 §3.2.3): the last bucket's
# reduction cannot hide behind backward.
DDP_BUCKET_BYTES = 25 * 2**20

# Compute kernels slow down while a collective runs on the same GPU (its SMs and HBM traffic):
# 18.9% on average over GEMM/attention kernels of GPT and Llama layers overlapped with NCCL
# collectives on A100, H100, MI250 and MI210 (Agrawal et al. 2025, arXiv 2507.03114, §5 abstract
# figure; kernel-level measurements). Applied to the compute that overlaps FSDP/ZeRO-3 traffic.
OVERLAP_COMPUTE_SLOWDOWN = 0.189
COMM_GROUPS = ("tp", "cp", "ep")
BREAKDOWN_KEYS = ("compute", "tp_comm", "cp_comm", "ep_comm", "pp_bubble", "pp_comm", "dp_comm",
                  "optimizer")


@dataclass
class StepEstimate:
    plan: TrainingPlan
    model: str
    cluster: str
    num_devices: int
    seq_len: int
    global_batch: int
    dtype: str
    micro_batches: int
    step_time_s: float
    tokens_per_s: float
    tflops_per_device: float  # executed FLOPs (recompute included, Megatron's convention)
    mfu: float  # model FLOPs (no recompute) / peak (PaLM App. B)
    hfu: float
    fits: bool
    memory: dict
    breakdown_s: dict
    stage_times_s: list
    engine: str = "analytic"
    notes: list = field(default_factory=list)
    validation: dict = field(default_factory=dict)  # simulator.regimes.validation_of

    def to_dict(self) -> dict:
        return {
            "plan": self.plan.to_dict(), "plan_string": self.plan.to_string(), "model": self.model,
            "cluster": self.cluster, "num_devices": self.num_devices, "seq_len": self.seq_len,
            "global_batch": self.global_batch, "dtype": self.dtype, "engine": self.engine,
            "micro_batches": self.micro_batches, "step_time_s": self.step_time_s,
            "tokens_per_s": self.tokens_per_s, "tflops_per_device": self.tflops_per_device,
            "mfu": self.mfu, "hfu": self.hfu, "fits": self.fits, "memory": self.memory,
            "breakdown_s": self.breakdown_s, "stage_times_s": self.stage_times_s, "notes": self.notes,
            "validation": self.validation,
        }


# ---- per-layer and per-chunk durations ----

def _kernel_terms(job: TrainingJob, cluster: Cluster, tp: int, cp: int, ep: int, sp: bool, mb: int,
                  rc: int, etp: int = 1) -> dict:
    """One micro-batch's durations for a kernel configuration (the plan fields a layer's cost
    reads), by name: per dense layer (`*_dense`) and MoE layer (`*_moe`) the forward, backward +
    recompute (weight gradients included), weight-gradient and exposed TP/CP/EP comm seconds;
    the embedding and the LM head's forward, backward and weight gradient."""
    model, km = job.model, kernel_model(cluster.device.name, job.dtype)
    plan = layer_plan(tp, cp, ep, sp, mb, RECOMPUTE[rc], etp)
    out = {}
    for kind, moe in (("dense", False), ("moe", True)):
        cost = layer_cost(model, job, plan, cluster, moe) if model.is_moe or not moe else None
        out[f"fwd_{kind}"] = cost.fwd_compute_s if cost else 0.0
        out[f"bwd_{kind}"] = cost.bwd_compute_s + cost.recompute_s if cost else 0.0
        out[f"rc_{kind}"] = cost.recompute_s if cost else 0.0  # the recompute inside bwd_*
        out[f"wgrad_{kind}"] = cost.wgrad_s if cost else 0.0
        for g in COMM_GROUPS:
            out[f"fwd_{g}_{kind}"] = cost.fwd_comm_s.get(g, 0.0) if cost else 0.0
            out[f"bwd_{g}_{kind}"] = (cost.bwd_comm_s.get(g, 0.0) + cost.recompute_comm_s.get(g, 0.0)
                                      if cost else 0.0)
            out[f"rc_{g}_{kind}"] = cost.recompute_comm_s.get(g, 0.0) if cost else 0.0
    T, V, h = tokens_per_rank(job, mb, cp), model.vocab_size, model.hidden_size
    out["head_fwd"] = km.gemm_s(T, V // tp, h) + km.memory_s(3 * 4 * T * V / tp)  # logits GEMM; fp32 softmax cross-entropy
    frozen = job.lora_rank > 0  # LoRA: the LM head and the MTP projection take no weight gradient
    out["head_wgrad"] = 0.0 if frozen else km.gemm_s(V // tp, h, T)
    out["head_bwd"] = km.gemm_s(T, h, V // tp) + out["head_wgrad"] + km.memory_s(3 * 4 * T * V / tp)
    out["embedding"] = km.memory_s(2 * T * h * ACT_BYTES)  # gather forward, scatter-add backward
    # multi-token prediction (DeepSeek-V3, arXiv 2412.19437 §2.2), with the loss on the last stage:
    # per depth, the 2h→h projection (column-parallel), its two input norms and the head's norm,
    # the next token's embedding, one block like the model's last, and the shared head again
    d = model.mtp_layers
    kind = "moe" if model.mtp_is_moe else "dense"
    proj_f, proj_w = km.gemm_s(T, h // tp, 2 * h), 0.0 if frozen else km.gemm_s(h // tp, 2 * h, T)
    norms = km.memory_s(3 * 2 * T * h * ACT_BYTES)
    mtp_fwd = d * (out[f"fwd_{kind}"] + proj_f + norms + out["embedding"]) if d else 0.0
    mtp_bwd = d * (out[f"bwd_{kind}"] + proj_f + proj_w + 2 * norms + out["embedding"]) if d else 0.0
    mtp_wgrad = d * (out[f"wgrad_{kind}"] + proj_w) if d else 0.0
    for g in COMM_GROUPS:
        out[f"mtp_fwd_{g}"] = d * out[f"fwd_{g}_{kind}"]
        out[f"mtp_bwd_{g}"] = d * out[f"bwd_{g}_{kind}"]
        out[f"mtp_rc_{g}"] = d * out[f"rc_{g}_{kind}"]
    out["mtp_rc"] = d * out[f"rc_{kind}"]  # the MTP blocks' recompute inside head_bwd
    out["head_fwd"] *= 1 + d
    out["head_bwd"] *= 1 + d
    out["head_wgrad"] *= 1 + d
    out["head_fwd"] += mtp_fwd
    out["head_bwd"] += mtp_bwd
    out["head_wgrad"] += mtp_wgrad
    # activation offload (plan act_offload): an offloaded layer's saved activations go to host
    # memory on a side stream while the next layer computes and come back while the previous one
    # runs its backward (Transformer Engine cpu_offload.py, double-buffered per layer); what the
    # copy outlasts of one layer's pass stalls it
    host = cluster.device.host_bytes_per_s or PCIE_BYTES_PER_S
    for kind, moe in (("dense", False), ("moe", True)):
        copy = (layer_activation_bytes(model, job, plan, moe) / host) if model.is_moe or not moe else 0.0
        out[f"offload_fwd_{kind}"] = max(0.0, copy - out[f"fwd_{kind}"])
        out[f"offload_bwd_{kind}"] = max(0.0, copy - out[f"bwd_{kind}"])
    return out


def ep_overlapped(k: dict) -> dict:
    """`_kernel_terms` with the EP all-to-alls of each layer overlapped with another micro-batch's
    compute of the same layer (a forward paired with a backward: Megatron-Core
    --overlap-moe-expert-parallel-comm, DeepSeek-V3's DualPipe, arXiv 2412.19437 §3.2.1): of a
    layer's A2A time e beside its compute c, what outlasts the compute stays exposed, and the
    compute beside the collective slows by OVERLAP_COMPUTE_SLOWDOWN (exposed max(0, e − c) +
    κ·min(e, c)). Steady state: the warm-up and cool-down micro-batches are not told apart."""
    out = dict(k)
    for kind in ("dense", "moe"):
        f, b = k[f"fwd_ep_{kind}"], k[f"bwd_ep_{kind}"]
        e, c = f + b, k[f"fwd_{kind}"] + k[f"bwd_{kind}"]
        exposed = np.maximum(0.0, e - c) + OVERLAP_COMPUTE_SLOWDOWN * np.minimum(e, c)
        scale = np.where(e > 0, exposed / np.where(e > 0, e, 1.0), 0.0)
        out[f"fwd_ep_{kind}"], out[f"bwd_ep_{kind}"] = f * scale, b * scale
        out[f"rc_ep_{kind}"] = k[f"rc_ep_{kind}"] * scale
        if kind == "moe" and "mtp_fwd_ep" in k:  # MTP blocks are MoE layers too: they overlap alike
            out["mtp_fwd_ep"], out["mtp_bwd_ep"] = k["mtp_fwd_ep"] * scale, k["mtp_bwd_ep"] * scale
            out["mtp_rc_ep"] = k["mtp_rc_ep"] * scale
    return out


def overlaps_ep(job: TrainingJob, schedule: str) -> bool:
    """Whether a plan overlaps its EP all-to-alls with compute (`ep_overlapped`)."""
    return job.overlap_ep_comm or schedule == "dualpipe"


def work(k: dict, n_dense, n_moe, first, last, n_offload=0.0, keep_dense=0.0, keep_moe=0.0, mtp_keep=0.0) -> dict:
    """One micro-batch through a chunk or a stage of `n_dense` dense and `n_moe` MoE layers, with the
    embedding where `first` (1.0) and the LM head where `last`: forward and backward compute
    seconds, weight gradients, exposed comm per group (`fwd_tp`, `bwd_ep`, ...). `n_offload` of
    the layers keep their activations in host memory (their copies' stalls count as compute).
    Under full recompute, `keep_dense` and `keep_moe` of the layers (and the MTP blocks where
    `mtp_keep`) are not recomputed (plan recompute_layers): their backward runs without its forward
    again. `k` maps `_kernel_terms`' names to scalars or arrays; everything broadcasts (a chunk, or
    (n, p) stages)."""
    per = lambda name: n_dense * k[f"{name}_dense"] + n_moe * k[f"{name}_moe"]  # noqa: E731
    partial = np.any(keep_dense) or np.any(keep_moe) or np.any(mtp_keep)
    kept = lambda name: (  # noqa: E731
        keep_dense * k[f"{name}_dense"] + keep_moe * k[f"{name}_moe"] if partial else 0.0)
    total = np.maximum(n_dense + n_moe, 1)
    off = lambda name: n_offload * (n_dense * k[f"{name}_dense"] + n_moe * k[f"{name}_moe"]) / total  # noqa: E731
    out = {"fwd": per("fwd") + first * k["embedding"] + last * k["head_fwd"] + off("offload_fwd"),
           "bwd": (per("bwd") - kept("rc") + first * k["embedding"] + last * (k["head_bwd"] - mtp_keep * k["mtp_rc"])
                   + off("offload_bwd")),
           "wgrad": per("wgrad") + last * k["head_wgrad"]}
    for g in COMM_GROUPS:  # the MTP block's exposed collectives with the loss (last)
        out[f"fwd_{g}"] = per(f"fwd_{g}") + last * k[f"mtp_fwd_{g}"]
        out[f"bwd_{g}"] = per(f"bwd_{g}") - kept(f"rc_{g}") + last * (k[f"mtp_bwd_{g}"] - mtp_keep * k[f"mtp_rc_{g}"])
    out["fwd_s"] = out["fwd"] + sum(out[f"fwd_{g}"] for g in COMM_GROUPS)  # exposed comm included
    out["bwd_s"] = out["bwd"] + sum(out[f"bwd_{g}"] for g in COMM_GROUPS)
    return out


def p2p_s(job: TrainingJob, cluster: Cluster, mb: int, tp: int, cp: int, dp: int) -> float:
    """One activation send/recv between adjacent stages: the micro-batch's activation ÷ t
    (scatter-gather, Narayanan et al. 2021 §4.1), between ranks tp·cp·dp apart."""
    nbytes = tokens_per_rank(job, mb, cp) * job.model.hidden_size * ACT_BYTES / tp
    return collective_s(cluster, "send_recv", 2, tp * cp * dp, nbytes)


def _dp_terms(model, cluster: Cluster, dtype: str, schedule: str, tp: int, pp: int, cp: int, ep: int,
              dp: int, v: int, zero: int, offload: bool, cache: dict, split: tuple = EVEN, etp: int = 1,
              zero3_unit: str = "layer", rank_copies: bool = False, lora: tuple = (0.0, 0.0)) -> dict:
    """Per stage (arrays (p,)): gradient reduction (all-reduce, or reduce-scatter with ZeRO ≥ 1),
    one pass of parameter all-gathers, gradient bytes, optimizer step seconds (the stage's
    layers as `placement` puts them, with the plan's pipeline split). Dense parameters reduce over
    the dp×cp ranks of a TP rank (stride tp); expert parameters over the expert data-parallel
    group edp = tp·cp·dp/(ep·etp), etp·ep ranks apart (Megatron-Core expert order etp-ep-edp,
    megatron/core/parallel_state.py; MoE parallel folding, arXiv 2504.14960).

    ZeRO-3 gathers and reduce-scatters each unit of the model on its own, so each collective pays
    its latency at that unit's message size: `zero3_unit` "layer" (an FSDP unit per transformer
    block, the embedding and the head their own units: PyTorch FSDP auto-wrap, torchtitan,
    llm-foundry) or "param" (DeepSpeed ZeRO-3 before v0.6: one gather per sub-module, a Python
    loop of shard copies per tensor, one reduce-scatter per tensor; `_deepspeed_submodules`).
    `rank_copies`: the collective API copies each rank's slice in a kernel of its own (PyTorch ≤1.9
    list all_gather/reduce_scatter flatten and unflatten in ProcessGroupNCCL; DeepSpeed PR #1188
    and #1453 replaced them with the *_base collectives to remove these copies), n copies per call.
    `lora`: trainable adapter parameters of a (dense, MoE) layer under LoRA (Hu et al. 2021): only
    they are reduced, updated and (ZeRO 1-2) gathered; ZeRO-3 still gathers the frozen weights."""
    km = kernel_model(cluster.device.name, dtype)
    pl = placement(model, schedule, pp, v, split)
    dense, expert = stage_params(model, pl, tp, ep, etp)
    dp_cp, expert_dp = dp * cp, expert_dp_size(tp, cp, dp, ep, etp)
    gb = 2  # bf16 gradient reduction (ZeRO §3: 2Ψ gradients)
    layer_mods = _deepspeed_submodules(model) if zero3_unit == "param" else ()

    def c(op, n, stride, nbytes):  # cached: ZeRO stages and schedules with one placement share them
        def make():
            t = collective_s(cluster, op, n, stride, nbytes)
            return t + n * km.memory_s(2 * nbytes / n) if rank_copies else t  # read + write each slice
        return cached(cache, (op, n, stride, nbytes, rank_copies), make)

    def coll(units: list, n: int, stride: int, layers_first: bool = False) -> tuple[float, float]:
        """(gradient reduction, one parameter gather) seconds for the (count, parameters) units
        over n ranks `stride` apart: whole for ZeRO 0-2, unit by unit for ZeRO-3 (`layers_first`:
        the first unit is the transformer layers)."""
        params = sum(k * x for k, x in units)
        if n <= 1 or params <= 0:
            return 0.0, 0.0
        if zero == 0:
            return c("all_reduce", n, stride, params * gb), 0.0
        if zero < 3:
            return c("reduce_scatter", n, stride, params * gb), c("all_gather", n, stride, params * WEIGHT_BYTES)
        if zero3_unit == "param":
            return deepspeed_zero3(units, n, stride, layers_first)
        units = [(k, x) for k, x in units if k > 0 and x > 0]
        return (sum(k * c("reduce_scatter", n, stride, x * gb) for k, x in units),
                sum(k * c("all_gather", n, stride, x * WEIGHT_BYTES) for k, x in units))

    def deepspeed_zero3(units: list, n: int, stride: int, layers_first: bool) -> tuple[float, float]:
        """DeepSpeed ZeRO-3 (v0.3.13, the release Narayanan et al. 2021 ran): one all-gather per
        sub-module, then a Python loop copies every tensor's n shards into its full tensor
        (partition_parameters.py _allgather_params: for param, for i in range(world_size):
        narrow(...).copy_(...)); one reduce-scatter per tensor (_reduce_scatter_gradient). The
        layers are split as `_deepspeed_submodules` says, every other unit (embedding, head,
        experts) is one tensor."""
        grad = gather = 0.0
        for i, (k, x) in enumerate(units):
            if k <= 0 or x <= 0:
                continue
            mods = layer_mods if (i == 0 and layers_first) else ((1.0,),)
            for mod in mods:
                gather += k * (c("all_gather", n, stride, x * sum(mod) * WEIGHT_BYTES)
                               + sum(n * km.memory_s(2 * x * t * WEIGHT_BYTES / n) for t in mod))
                grad += k * sum(c("reduce_scatter", n, stride, x * t * gb) for t in mod)
        return grad, gather
    grad, gather, opt = np.zeros(pp), np.zeros(pp), np.zeros(pp)
    grad_bytes = (dense + expert) * gb
    for s in range(pp):
        n_layers, layers = float(pl.n_layers[s]), float(pl.layer_params[s] / tp)
        # the embedding, head and MTP block: one unit at each end of the model the stage holds
        rest, ends = float(dense[s]) - layers, float(pl.first[s] + pl.last[s])
        dense_units = [(n_layers, layers / max(n_layers, 1.0)), (ends, rest / max(ends, 1.0))]
        g1, a1 = coll(dense_units if zero == 3 else [(1.0, float(dense[s]))], dp_cp, tp, layers_first=True)
        n_moe = float(pl.n_moe[s]) or 1.0
        g2, a2 = coll([(n_moe, float(expert[s]) / n_moe)], expert_dp, etp * ep)
        grad[s], gather[s] = g1 + g2, a1 + a2
        local = float(dense[s] / (dp_cp if zero >= 1 else 1) + expert[s] / (expert_dp if zero >= 1 else 1))
        if any(lora):  # LoRA: the adapters are the only trainable parameters
            adapter = float((n_layers - pl.n_moe[s]) * lora[0] + pl.n_moe[s] * lora[1]) / tp
            grad[s], a_gather = coll([(1.0, adapter)], dp_cp, tp)
            gather[s] = (a1 + a2 if zero == 3 else 0.0) + a_gather
            grad_bytes[s] = adapter * gb
            local = adapter / (dp_cp if zero >= 1 else 1)
        if offload:  # grads to host, params back over PCIe, CPU Adam on host DRAM (ZeRO-Offload)
            opt[s] = (local * (gb + WEIGHT_BYTES) / PCIE_BYTES_PER_S
                      + local * ADAM_BYTES_PER_PARAM / (HOST_DRAM_BYTES_PER_S / cluster.devices_per_node))
        else:
            opt[s] = km.memory_s(local * ADAM_BYTES_PER_PARAM)
    return {"grad": grad, "gather": gather, "grad_bytes": grad_bytes, "optimizer": opt}


def _lora_layers(job: TrainingJob) -> tuple:
    """Trainable LoRA parameters of a (dense, MoE) layer; (0, 0) without LoRA."""
    if not job.lora_rank:
        return (0.0, 0.0)
    return (lora_layer_params(job.model, job, False), lora_layer_params(job.model, job, True))


def _deepspeed_submodules(model) -> tuple:
    """A transformer layer as DeepSpeed ZeRO-3 (v0.3) handles it: the sub-modules that hold
    parameters, each as the shares of the layer's parameters in its tensors. The two norms
    (weight, and bias for LayerNorm), QKV, the attention output, the MLP input (gate and up fused,
    Megatron) and output, each linear with its bias where the model has one
    (deepspeed/runtime/zero/stage3.py fetch_sub_module gathers one sub-module's parameters per
    call; partition_parameters.py _reduce_scatter_gradients reduce-scatters one tensor per call)."""
    h = model.hidden_size
    attn, mlp = model.attention_params(), model.dense_mlp_params()
    norm = (h, h) if model.norm == "layernorm" else (h,)
    total = attn + mlp + 2 * sum(norm)
    out_w = model.attn_out_dim * h
    qkv_b = (model.q_dim + 2 * model.kv_dim) if (model.linear_bias or model.qkv_bias) else 0
    out_b = h if model.linear_bias else 0
    up_w = (model.mlp_matrices - 1) * h * model.ffn_hidden_size
    up_b = (model.mlp_matrices - 1) * model.ffn_hidden_size if model.linear_bias else 0
    down_b = h if model.linear_bias else 0
    down_w = mlp - up_w - up_b - down_b
    qkv_w = attn - out_w - qkv_b - out_b  # Q/K/V with any gate, q/k norms or sinks of the attention
    mods = (norm, (qkv_w, qkv_b), (out_w, out_b), norm, (up_w, up_b), (down_w, down_b))
    return tuple(tuple(t / total for t in mod if t > 0) for mod in mods)


def recompute_regathers(job: TrainingJob) -> float:
    """1 where a recomputed layer's forward gathers its ZeRO-3 parameters again, 0 where it reuses
    the backward's gather. PyTorch FSDP and FSDP2 wrap each checkpointed block whole: the backward
    pre-hook unshards the unit, then autograd re-runs the checkpointed forward on those parameters
    (torch/distributed/fsdp _runtime_utils._pre_backward_hook; FSDP2 FSDPParamGroup.pre_backward,
    torchtitan applies AC to each block before fully_shard). DeepSpeed ZeRO-3 fetches per
    sub-module in forward hooks and releases after each, so the recompute fetches again and the
    backward once more (stage3.py fetch_sub_module / release_sub_module)."""
    return 1.0 if job.zero3_unit == "param" else 0.0


def gather_passes(zero, recompute, rc_share=1.0):
    """Parameter all-gather passes per micro-batch: ZeRO-3 gathers in forward and again in backward
    (and in the recompute, for the `rc_share` of the layers recomputed), ZeRO §7.2.1; stages 1-2
    gather once per step."""
    return np.where(zero == 3, 2 + np.where(recompute == RECOMPUTE.index("full"), rc_share, 0.0), 1)


def zero3_exposed_s(job: TrainingJob, plan, stage, m):
    """Exposed FSDP FULL_SHARD / ZeRO-3 communication of a stage over the step, layer by layer.

    Every micro-batch gathers each layer's parameters before its forward and again before its
    backward (and its recompute), resharding in between, and reduce-scatters each layer's
    gradients as its backward ends (ZeRO §5.3/§7.2.1, arXiv 1910.02054; PyTorch FSDP FULL_SHARD,
    torch/distributed/fsdp: reshard_after_forward, reduce-scatter per backward unless no_sync).
    With one layer of prefetch (FSDP's default BACKWARD_PRE and the CPU running ahead in the
    forward) layer i+1's gather runs under layer i's compute; a layer whose communication outlasts
    its compute stalls by the difference. The first gather of the step and the last
    reduce-scatter cannot hide. Off (`overlap_param_gather` false) every collective is exposed;
    without `overlap_grad_reduce` the reduce-scatters wait for the end of the backward."""
    passes = gather_passes(plan.zero, _rc_index(plan.recompute), stage.rc_share)
    layers = np.maximum(1, stage.num_layers)
    g = stage.dp_gather_s / passes / layers  # one layer, one gather pass
    r = stage.dp_grad_s / layers  # one layer's reduce-scatter, every micro-batch
    if not job.overlap_param_gather:
        return m * (stage.dp_gather_s + stage.dp_grad_s)
    f, b = stage.mb_fwd_s / layers, stage.last_bwd_s / layers
    rs = r if job.overlap_grad_reduce else 0.0
    c_fwd, c_bwd = g, (passes - 1) * g + rs  # communication in each layer's forward / backward window
    # stalls where a layer's communication outlasts its compute, plus the slowdown of the compute
    # that runs beside a collective (OVERLAP_COMPUTE_SLOWDOWN of the overlapped time)
    per_mb = layers * (np.maximum(0.0, c_fwd - f) + np.maximum(0.0, c_bwd - b)
                       + OVERLAP_COMPUTE_SLOWDOWN * (np.minimum(c_fwd, f) + np.minimum(c_bwd, b)))
    tail = r if job.overlap_grad_reduce else m * stage.dp_grad_s
    return m * per_mb + g + tail


def _rc_index(recompute):
    """Recompute as RECOMPUTE's index (a TrainingPlan holds its name, a PlanBatch the index)."""
    return RECOMPUTE.index(recompute) if isinstance(recompute, str) else recompute


@dataclass
class StageArrays:
    """The DP/ZeRO inputs of arrays of stages ((n, p) arrays), read as `StageCost` reads them."""

    dp_grad_s: np.ndarray
    dp_gather_s: np.ndarray  # all passes of the step's parameter gathers
    grad_bytes: np.ndarray
    num_layers: np.ndarray
    last_bwd_s: np.ndarray  # one micro-batch's backward through the stage's chunks
    mb_fwd_s: np.ndarray  # one micro-batch's forward through the stage's chunks
    rc_share: np.ndarray | float = 1.0  # share of the stage's layers whose recompute gathers again


def dp_exposed_s(job: TrainingJob, plan, stage):
    """Exposed DP/ZeRO communication of one stage (`plan` a TrainingPlan, `stage` a StageCost),
    or of arrays of stages (a PlanBatch with (n, 1) columns and StageArrays)."""
    zero, grad, gather, m = plan.zero, stage.dp_grad_s, stage.dp_gather_s, micro_batches(plan, job)
    z3 = zero3_exposed_s(job, plan, stage, m)
    if job.overlap_grad_reduce:
        # DDP buckets (Li et al. 2020 §3.2.3): reductions run during the last micro-batch's
        # backward; only what outlasts it, and at least the last bucket, is exposed.
        bucket = grad * np.minimum(1.0, DDP_BUCKET_BYTES / np.maximum(1.0, stage.grad_bytes))
        grad_exposed = np.where(grad > 0, np.maximum(grad - stage.last_bwd_s, bucket), 0.0)
    else:
        grad_exposed = grad
    hidden = job.overlap_param_gather & ((zero == 1) | (zero == 2))  # ZeRO-1/2 gathers overlap
    out = np.where(zero == 3, z3, grad_exposed + np.where(hidden, 0.0, gather))
    return float(out) if out.ndim == 0 else out


# ---- the engine: step-time terms of arrays of plans ----

@dataclass
class StepTerms:
    """The step of n plans by term (arrays (n,), BREAKDOWN_KEYS) and one micro-batch's time through
    each stage (`stage_s`, (n, p): forward + backward with exposed comm, chunks weighted by the
    share of micro-batches passing through them)."""

    compute: np.ndarray
    tp_comm: np.ndarray
    cp_comm: np.ndarray
    ep_comm: np.ndarray
    pp_bubble: np.ndarray
    pp_comm: np.ndarray
    dp_comm: np.ndarray
    optimizer: np.ndarray
    stage_s: np.ndarray

    @property
    def step_s(self) -> np.ndarray:
        out = self.compute
        for k in BREAKDOWN_KEYS[1:]:
            out = out + getattr(self, k)
        return out

    def breakdown(self, i: int) -> dict:
        return {k: float(getattr(self, k)[i]) for k in BREAKDOWN_KEYS}


def step_terms(job: TrainingJob, cluster: Cluster, batch: PlanBatch) -> StepTerms:
    """Step time of every plan in `batch`, term by term:

    step = m × (forward + backward + recompute with exposed TP/CP/EP comm) of the slowest stage
    + the schedule's pipeline bubble + exposed pipeline send/recv + the slowest stage's exposed
    DP/ZeRO communication and optimizer step."""
    return StepTerms(**by_mesh(batch, lambda b, mesh: _mesh_step(job, cluster, b, *mesh),
                               BREAKDOWN_KEYS + ("stage_s",)))


def _mesh_step(job: TrainingJob, cluster: Cluster, b: PlanBatch, tp: int, pp: int, cp: int, ep: int,
               dp: int, etp: int = 1) -> dict:
    model, names, lj, p = job.model, schedules.names(), layer_terms_job(job), pp
    n = len(b)
    cache = memo("step", lj, cluster)
    kkeys, kinv = group(b.mb, b.recompute, b.sp)
    ks = [cached(cache, ("kernel", tp, cp, ep, sp, mb, rc, etp),
                 lambda: as_row(_kernel_terms(lj, cluster, tp, cp, ep, bool(sp), mb, rc, etp))) for mb, rc, sp in kkeys]
    k = named_rows(ks, kinv)
    pkeys, pinv, pls = placements(model, b, pp)
    stack = lambda attr: np.stack([getattr(pl, attr) for pl in pls])[pinv]  # noqa: E731
    n_moe, n_layers = stack("n_moe"), stack("n_layers")
    frac = np.array([pl.fraction for pl in pls])[pinv][:, None]
    n_off = offloaded_layers(b.act_offload[:, None], n_layers)
    # layers that full recompute leaves alone (plan recompute_layers): their recompute is taken out
    full = (b.recompute == RECOMPUTE.index("full"))[:, None]
    rest, rc_share = (n_off,), 1.0
    if (full & (b.recompute_layers >= 0)[:, None]).any():
        rcx = recompute_rows(pls, pinv, b)
        keep_moe = np.where(full, n_moe - rcx["rc_moe"], 0.0)
        keep_dense = np.where(full, n_layers - n_moe - rcx["rc"] + rcx["rc_moe"], 0.0)
        mtp_keep = (full & ~mtp_recomputed(b.recompute, b.recompute_layers, b.recompute_method)[:, None]).astype(float)
        rest = (n_off, keep_dense, keep_moe, mtp_keep)
        rc_share = np.where(full, rcx["rc"] / np.maximum(n_layers, 1), 1.0)
    rc_share = rc_share * recompute_regathers(job)
    w = work(k, n_layers - n_moe, n_moe, stack("first"), stack("last"), *rest)
    # which rows overlap their EP all-to-alls (overlaps_ep), without a Python loop over the rows
    ov = (np.full(len(b), job.overlap_ep_comm) | (b.schedule == names.index("dualpipe"))) if model.is_moe else None
    if ov is not None and ov.any():
        w_ov = work(ep_overlapped(k), n_layers - n_moe, n_moe, stack("first"), stack("last"), *rest)
        w = {key: np.where(ov[:, None], w_ov[key], w[key]) for key in w}
    tot = frac * (w["fwd_s"] + w["bwd_s"])  # one micro-batch through the stage's chunks
    m = b.micro_batches(job).astype(np.float64)
    bi = tot.argmax(axis=1)[:, None]  # the first slowest stage
    at_b = lambda x: m * np.take_along_axis(frac * x, bi, axis=1)[:, 0]  # noqa: E731  m × bottleneck
    out = {"compute": at_b(w["fwd"] + w["bwd"]), "stage_s": tot}
    for g in COMM_GROUPS:
        out[f"{g}_comm"] = at_b(w[f"fwd_{g}"] + w[f"bwd_{g}"])

    # ---- pipeline bubble: each schedule's closed form (simulator.schedules) ----
    out["pp_bubble"] = bubble = np.zeros(n)
    v = b.vpp
    if p > 1:
        for s in np.unique(b.schedule):
            sel = b.schedule == s
            bubble[sel] = schedules.get(names[s]).bubble_s(p, v[sel], m[sel], tot[sel], (frac * w["fwd_s"])[sel],
                                                           (frac * w["wgrad"])[sel])
    # ---- pipeline send/recv on the critical path: one activation ÷ t per micro-batch per chunk
    # boundary, forward and backward, plus the fill and drain (Narayanan et al. 2021 §4.1) ----
    if p == 1:
        out["pp_comm"] = np.zeros(n)
    else:
        p2p = np.array([cached(cache, ("p2p", mb, tp, cp, dp), lambda: p2p_s(job, cluster, mb, tp, cp, dp))
                        for mb, _, _ in kkeys])[kinv]
        vl = np.array([pl.chunks_per_stage for pl in pls])[pinv]
        if job.overlap_p2p_comm:  # only the fill and drain chains through every virtual stage wait
            hops = np.array([schedules.get(names[s]).fill_drain_hops(p, v_) for s, v_, *_ in pkeys])[pinv]
            out["pp_comm"] = 2 * hops * p2p
        else:
            out["pp_comm"] = 2 * (m * vl + p - 1) * p2p
    # ---- data parallel / ZeRO and optimizer: the slowest stage's tail ----
    dkeys, dinv = group(pinv, b.zero, b.offload)
    # keyed by placement: schedules that place layers alike share their DP terms
    ds = [cached(cache, ("dp", pls[k].chunk_ids, pls[k].chunk_layers, tp, pp, cp, ep, dp, z, off, etp),
                 lambda: _dp_terms(model, cluster, job.dtype, names[pkeys[k][0]], tp, pp, cp, ep, dp, pkeys[k][1], z,
                                   bool(off), cache, b.split(int(np.argmax(pinv == k))), etp,
                                   job.zero3_unit, job.collective_rank_copies, _lora_layers(job)))
          for k, z, off in dkeys]
    d = {name: np.stack([x[name] for x in ds])[dinv] for name in ds[0]}
    cols = b.take((slice(None), None))  # (n, 1) columns broadcast against (n, p) stages
    stages = StageArrays(d["grad"], d["gather"] * gather_passes(cols.zero, cols.recompute, rc_share), d["grad_bytes"],
                         n_layers, w["bwd_s"], w["fwd_s"], rc_share)
    tails = dp_exposed_s(job, cols, stages) + d["optimizer"]
    ti = tails.argmax(axis=1)[:, None]
    out["optimizer"] = np.take_along_axis(d["optimizer"], ti, axis=1)[:, 0]
    out["dp_comm"] = np.take_along_axis(tails, ti, axis=1)[:, 0] - out["optimizer"]
    return out


# ---- per-rank durations for the DES ----

@dataclass
class ChunkCost:
    """One virtual stage (a chunk of contiguous layers) of one rank, one micro-batch."""

    fwd_compute_s: float
    bwd_compute_s: float  # backward + recompute, weight gradients included
    wgrad_s: float  # weight-gradient GEMMs inside bwd_compute_s (Zero Bubble's W)
    fwd_comm_s: dict  # exposed TP/CP/EP seconds in the forward
    bwd_comm_s: dict  # ... in backward and recompute
    num_layers: int
    fraction: float = 1.0  # share of the step's micro-batches that pass through this chunk

    @property
    def fwd_s(self) -> float:
        return self.fwd_compute_s + sum(self.fwd_comm_s.values())

    @property
    def bwd_s(self) -> float:
        return self.bwd_compute_s + sum(self.bwd_comm_s.values())


@dataclass
class StageCost:
    chunks: list  # ChunkCost per virtual stage held by this rank, in model order
    dp_grad_s: float  # gradient reduction (all-reduce, or reduce-scatter with ZeRO >= 1)
    dp_gather_s: float  # ZeRO parameter all-gathers per step (ZeRO-3: per micro-batch pass)
    optimizer_s: float
    grad_bytes: float
    rc_share: float = 1.0  # share of the stage's layers whose recompute gathers again

    @property
    def total_s(self) -> float:
        """Forward + backward of one micro-batch through all chunks, exposed comm included
        (each chunk weighted by the share of micro-batches that pass through it)."""
        return sum(c.fraction * (c.fwd_s + c.bwd_s) for c in self.chunks)

    @property
    def num_layers(self) -> int:
        return sum(c.num_layers for c in self.chunks)

    @property
    def last_bwd_s(self) -> float:
        """One micro-batch's backward through the stage's chunks (the DDP overlap window)."""
        return sum(c.bwd_s for c in self.chunks)

    @property
    def mb_fwd_s(self) -> float:
        """One micro-batch's forward through the stage's chunks (ZeRO-3's gather window)."""
        return sum(c.fwd_s for c in self.chunks)


@dataclass
class StepCosts:
    """The per-rank durations of one iteration, from the op graph and the cost layer: what the
    analytic engine combines in closed form and the DES executes."""

    stages: list  # StageCost per pipeline stage
    p2p_s: float  # one activation send/recv between adjacent stages
    micro_batches: int


def step_costs(job: TrainingJob, plan: TrainingPlan, cluster: Cluster) -> StepCosts:
    """The engine's per-chunk durations of one plan (`work` per chunk) for the DES."""
    model, p, v = job.model, plan.pp, plan.vpp
    k = _kernel_terms(layer_terms_job(job), cluster, plan.tp, plan.cp, plan.ep, plan.sp, plan.mb,
                      RECOMPUTE.index(plan.recompute), plan.etp)
    if overlaps_ep(job, plan.schedule):
        k = ep_overlapped(k)
    pl = placement(model, plan.schedule, p, v, plan.split)
    last_chunk = len(pl.chunk_moe) - 1
    d = _dp_terms(model, cluster, job.dtype, plan.schedule, plan.tp, p, plan.cp, plan.ep, plan.dp, v,
                  plan.zero, plan.offload, memo("step", layer_terms_job(job), cluster), plan.split, plan.etp,
                  job.zero3_unit, job.collective_rank_copies, _lora_layers(job))
    full = plan.recompute == "full"
    n_rc = -1 if plan.recompute_layers is None else plan.recompute_layers
    method = RECOMPUTE_METHODS.index(plan.recompute_method)
    rc_stage = recomputed_layers(pl, n_rc, method)[0]
    mtp_keep = float(full and not mtp_recomputed(plan.recompute, n_rc, method))
    stages = []
    for st in range(p):
        chunks = []
        n_stage = sum(pl.chunk_layers[c] for c in pl.chunk_ids[st])
        n_off = float(offloaded_layers(plan.act_offload, n_stage))
        rc_share = (float(rc_stage[st]) / max(n_stage, 1) if full else 1.0) * recompute_regathers(job)
        for c in pl.chunk_ids[st]:
            n_moe = pl.chunk_moe[c]
            n = pl.chunk_layers[c]
            rc = chunk_recomputed(pl, c, n_rc, method)[:2] if full else (n, n_moe)
            # the stage's offloaded layers spread over its chunks by their layer counts; under full
            # recompute the chunk's layers past its recomputed ones keep their activations
            w = work(k, n - n_moe, n_moe, float(c == 0), float(c == last_chunk), n_off * n / max(n_stage, 1),
                     float(n - n_moe - (rc[0] - rc[1])), float(n_moe - rc[1]), mtp_keep)
            chunks.append(ChunkCost(w["fwd"], w["bwd"], w["wgrad"], {g: w[f"fwd_{g}"] for g in COMM_GROUPS},
                                    {g: w[f"bwd_{g}"] for g in COMM_GROUPS}, n, pl.fraction))
        passes = float(gather_passes(plan.zero, RECOMPUTE.index(plan.recompute), rc_share))
        stages.append(StageCost(chunks, float(d["grad"][st]), float(d["gather"][st]) * passes,
                                float(d["optimizer"][st]), float(d["grad_bytes"][st]), rc_share))
    p2p = 0.0
    if p > 1:
        p2p = p2p_s(job, cluster, plan.mb, plan.tp, plan.cp, plan.dp)
    return StepCosts(stages, p2p, micro_batches(plan, job))


def layer_time_s(job: TrainingJob, plan: TrainingPlan, cluster: Cluster, moe: bool) -> float:
    """One layer's forward + backward (+ recompute) with exposed TP/CP/EP comm, one micro-batch
    (`work` of one layer: the unit a stage's time is made of)."""
    if plan.recompute_layers is not None:
        raise InputError(f"plan recompute_layers={plan.recompute_layers}: a layer's cost depends on its place "
                         f"in its chunk; per-layer costs (the partition ILP) take recompute=full without it")
    k = _kernel_terms(layer_terms_job(job), cluster, plan.tp, plan.cp, plan.ep, plan.sp, plan.mb,
                      RECOMPUTE.index(plan.recompute), plan.etp)
    if overlaps_ep(job, plan.schedule):
        k = ep_overlapped(k)
    w = work(k, float(not moe), float(moe), 0.0, 0.0)
    return w["fwd_s"] + w["bwd_s"]


def estimate(job: TrainingJob, plan: TrainingPlan, cluster: Cluster, validate: bool = True) -> StepEstimate:
    """The engine on a batch of one plan, packaged with FLOPs, throughput and memory."""
    model = job.model
    if validate:
        validate_plan(plan, job, cluster.num_devices, cluster.devices_per_node)
        check_supported(model, plan)
    km = kernel_model(cluster.device.name, job.dtype)
    batch = PlanBatch.of([plan])
    terms = step_terms(job, cluster, batch)
    breakdown = terms.breakdown(0)
    step = float(terms.step_s[0])
    m = int(batch.micro_batches(job)[0])

    # ---- FLOPs, throughput, memory ----
    n_mb_total = job.global_batch // plan.mb  # micro-batches across all DP replicas
    dense_cost = layer_cost(model, job, plan, cluster, False)
    moe_cost = layer_cost(model, job, plan, cluster, True) if model.is_moe else None
    layer_flops = hw_flops = 0.0
    # LoRA: frozen weights take no weight-gradient GEMM, a third of each linear's 6·params FLOPs
    frozen = {moe: (lambda f, a: f - a)(*_model_flops_fwd(model, job, plan, moe)) if job.lora_rank else 0.0
              for moe in {model.is_moe_layer(i) for i in range(model.num_layers)}}
    # which layers run their forward again (all of them unless full recompute is partial)
    rc = recomputed_layer_ids(model, plan) if plan.recompute == "full" else [True] * model.num_layers
    for i in range(model.num_layers):
        c = moe_cost if model.is_moe_layer(i) else dense_cost
        layer_flops += 3 * c.fwd_flops - frozen[model.is_moe_layer(i)]
        hw_flops += 3 * c.fwd_flops + (c.recompute_flops if rc[i] else 0.0) - frozen[model.is_moe_layer(i)]
    head_flops = (2 if job.lora_rank else 3) * 2.0 * plan.mb * job.seq_len * model.hidden_size * model.vocab_size
    if model.mtp_layers:  # DeepSeek-V3 §2.2: per depth the head again, the 2h→h projection, one block
        c = moe_cost if model.mtp_is_moe else dense_cost
        proj = 3 * 2.0 * plan.mb * job.seq_len * 2 * model.hidden_size ** 2
        mtp_rc = plan.recompute != "full" or bool(mtp_recomputed(plan.recompute, -1 if plan.recompute_layers is None
                                                                  else plan.recompute_layers,
                                                                  RECOMPUTE_METHODS.index(plan.recompute_method)))
        layer_flops += model.mtp_layers * 3 * c.fwd_flops
        hw_flops += model.mtp_layers * (3 * c.fwd_flops + (c.recompute_flops if mtp_rc else 0.0))
        head_flops *= 1 + model.mtp_layers
        head_flops += model.mtp_layers * proj
    model_flops = n_mb_total * (layer_flops + head_flops)
    exec_flops = n_mb_total * (hw_flops + head_flops)
    n = cluster.num_devices
    peak = cluster.device.peak(job.dtype)
    peak_stage = int(plan_memory(model, job, plan).peak_stage[0])
    mem = dict(stage_memory(model, job, plan, peak_stage))
    mem["hbm_bytes"] = cluster.device.hbm_bytes
    mem["peak_stage"] = peak_stage
    return StepEstimate(
        plan=plan, model=model.name, cluster=cluster.name, num_devices=n, seq_len=job.seq_len,
        global_batch=job.global_batch, dtype=job.dtype, micro_batches=m, step_time_s=step,
        tokens_per_s=job.tokens_per_step / step, tflops_per_device=exec_flops / step / n / 1e12,
        mfu=model_flops / step / n / peak, hfu=exec_flops / step / n / peak,
        fits=mem["peak_bytes"] <= cluster.device.hbm_bytes, memory=mem, breakdown_s=breakdown,
        stage_times_s=[float(x) for x in terms.stage_s[0, :plan.pp]], notes=list(km.notes),
        validation=validation_of(job, plan, cluster))
