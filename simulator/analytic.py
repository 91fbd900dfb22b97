"""Analytic training-step engine: the op graph's durations combined with closed forms.

step = Σ over the bottleneck stage of m micro-batches × (forward + backward + recompute, with
exposed TP/CP/EP communication) + pipeline bubble + exposed pipeline send/recv + exposed DP/ZeRO
communication + optimizer step. Every term is reported in `breakdown_s` and they sum to
`step_time_s`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from hwmodels.clusters import Cluster
from hwmodels.collectives import collective_s
from hwmodels.kernels import kernel_model
from simulator.memory import WEIGHT_BYTES, stage_layers, stage_memory
from simulator.ops import ACT_BYTES, check_supported, layer_cost
from simulator.training import TrainingJob, TrainingPlan, micro_batches, validate_plan

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

    def to_dict(self) -> dict:
        return {
            "plan": self.plan.to_dict(), "plan_string": self.plan.to_string(), "model": self.model,
            "cluster": self.cluster, "num_devices": self.num_devices, "seq_len": self.seq_len,
            "global_batch": self.global_batch, "dtype": self.dtype, "engine": self.engine,
            "micro_batches": self.micro_batches, "step_time_s": self.step_time_s,
            "tokens_per_s": self.tokens_per_s, "tflops_per_device": self.tflops_per_device,
            "mfu": self.mfu, "hfu": self.hfu, "fits": self.fits, "memory": self.memory,
            "breakdown_s": self.breakdown_s, "stage_times_s": self.stage_times_s, "notes": self.notes,
        }


def _stage_params(model, plan, layers) -> tuple[float, float]:
    """(non-expert params, expert params) held by one rank of a stage, before ZeRO sharding."""
    n_moe = sum(model.is_moe_layer(i) for i in layers)
    n_dense = len(layers) - n_moe
    expert = n_moe * (model.num_experts // plan.ep) * model.expert_params()
    dense = n_dense * _layer_params(model, False) / plan.tp
    if n_moe:
        dense += n_moe * (_layer_params(model, True) - model.num_experts * model.expert_params()) / plan.tp
    return dense, expert


@lru_cache(maxsize=256)
def _layer_params(model, moe: bool) -> int:
    return model.attention_params() + 2 * model.norm_params() + \
        (model.moe_layer_params() if moe else model.dense_mlp_params())


@dataclass
class ChunkCost:
    """One virtual stage (a chunk of contiguous layers) of one rank, one micro-batch."""

    fwd_compute_s: float
    bwd_compute_s: float  # backward + recompute, weight gradients included
    wgrad_s: float  # weight-gradient GEMMs inside bwd_compute_s (Zero Bubble's W)
    fwd_comm_s: dict  # exposed TP/CP/EP seconds in the forward
    bwd_comm_s: dict  # ... in backward and recompute
    num_layers: int

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

    @property
    def total_s(self) -> float:
        """Forward + backward of one micro-batch through all chunks, exposed comm included."""
        return sum(c.fwd_s + c.bwd_s for c in self.chunks)


@dataclass
class StepCosts:
    """The per-rank durations of one iteration, from the op graph and the cost layer: what the
    analytic engine combines in closed form and the DES executes."""

    stages: list  # StageCost per pipeline stage
    p2p_s: float  # one activation send/recv between adjacent stages
    micro_batches: int


def step_costs(job: TrainingJob, plan: TrainingPlan, cluster: Cluster) -> StepCosts:
    model = job.model
    km = kernel_model(cluster.device.name, job.dtype)
    p, v, t = plan.pp, plan.vpp, plan.tp
    T = plan.mb * job.seq_len // plan.cp
    dense_cost = layer_cost(model, job, plan, cluster, False)
    moe_cost = layer_cost(model, job, plan, cluster, True) if model.is_moe else None
    head_f = km.gemm_s(T, model.vocab_size // t, model.hidden_size) \
        + km.memory_s(3 * 4 * T * model.vocab_size / t)  # logits GEMM; fp32 softmax cross-entropy
    head_w = km.gemm_s(model.vocab_size // t, model.hidden_size, T)
    head_b = km.gemm_s(T, model.hidden_size, model.vocab_size // t) + head_w \
        + km.memory_s(3 * 4 * T * model.vocab_size / t)
    emb = km.memory_s(2 * T * model.hidden_size * ACT_BYTES)
    per_chunk = model.num_layers // (p * v)
    dp_cp, expert_dp = plan.dp * plan.cp, max(1, plan.dp * plan.cp // plan.ep)
    dstride = plan.tp  # dp×cp group of a TP rank: stride tp in Megatron order (tp-cp-ep-dp-pp)
    gb = 2  # bf16 gradient reduction (ZeRO §3: 2Ψ gradients)

    def dp_collectives(params: float, n: int) -> tuple[float, float]:
        """(gradient reduction, parameter gathers) seconds for `params` over n ranks."""
        if n <= 1 or params <= 0:
            return 0.0, 0.0
        if plan.zero == 0:
            return collective_s(cluster, "all_reduce", n, dstride, params * gb), 0.0
        rs = collective_s(cluster, "reduce_scatter", n, dstride, params * gb)
        ag = collective_s(cluster, "all_gather", n, dstride, params * WEIGHT_BYTES)
        if plan.zero == 3:  # ZeRO §7.2.1: parameters gathered in forward and again in backward
            return rs, ag * (3 if plan.recompute == "full" else 2)
        return rs, ag

    stages = []
    for st in range(p):
        chunks = []
        for j in range(v):
            c = st + j * p
            layers = range(c * per_chunk, (c + 1) * per_chunk)
            n_moe = sum(model.is_moe_layer(i) for i in layers)
            f = b = w = 0.0
            fc: dict = {"tp": 0.0, "cp": 0.0, "ep": 0.0}
            bc: dict = {"tp": 0.0, "cp": 0.0, "ep": 0.0}
            for cost, n in ((dense_cost, per_chunk - n_moe), (moe_cost, n_moe)):
                if not n:
                    continue
                f += n * cost.fwd_compute_s
                b += n * (cost.bwd_compute_s + cost.recompute_s)
                w += n * cost.wgrad_s
                for g, x in cost.fwd_comm_s.items():
                    fc[g] += n * x
                for part in (cost.bwd_comm_s, cost.recompute_comm_s):
                    for g, x in part.items():
                        bc[g] += n * x
            if c == 0:
                f, b = f + emb, b + emb
            if c == p * v - 1:
                f, b, w = f + head_f, b + head_b, w + head_w
            chunks.append(ChunkCost(f, b, w, fc, bc, per_chunk))
        dense_params, expert_params = _stage_params(model, plan, stage_layers(model, plan, st))
        if st == 0:
            dense_params += model.embedding_params() / t
        if st == p - 1:
            dense_params += model.head_params() / t
            if model.tie_embeddings and p > 1:  # the last stage's copy of the tied embedding
                dense_params += model.vocab_size * model.hidden_size / t
        g1, a1 = dp_collectives(dense_params, dp_cp)
        g2, a2 = dp_collectives(expert_params, expert_dp)
        local = dense_params / (dp_cp if plan.zero >= 1 else 1) + expert_params / (expert_dp if plan.zero >= 1 else 1)
        if plan.offload:  # grads to host, params back, CPU Adam (ZeRO-Offload)
            opt_s = (local * (gb + WEIGHT_BYTES) / PCIE_BYTES_PER_S
                     + local * ADAM_BYTES_PER_PARAM / (HOST_DRAM_BYTES_PER_S / cluster.devices_per_node))
        else:
            opt_s = km.memory_s(local * ADAM_BYTES_PER_PARAM)
        stages.append(StageCost(chunks, g1 + g2, a1 + a2, opt_s, (dense_params + expert_params) * gb))
    p2p = 0.0
    if p > 1:  # one activation per micro-batch per boundary (÷t: scatter-gather, Narayanan §4.1)
        msg = T * model.hidden_size * ACT_BYTES / t
        p2p = collective_s(cluster, "send_recv", 2, plan.tp * plan.cp * plan.dp, msg)
    return StepCosts(stages, p2p, micro_batches(plan, job))


def dp_exposed_s(job: TrainingJob, plan: TrainingPlan, stage: StageCost, busy_s: float) -> float:
    """Exposed DP/ZeRO communication of one stage, given its compute-busy time in the step."""
    grad_s, gather_s = stage.dp_grad_s, stage.dp_gather_s
    if plan.zero == 3:
        # FSDP/ZeRO-3: per-layer gathers and reduce-scatters prefetched behind compute; exposed
        # where communication outlasts the step's compute, plus the first layer's gather.
        total = grad_s + gather_s * micro_batches(plan, job)
        per_layer = total / max(1, sum(c.num_layers for c in stage.chunks))
        return max(0.0, total - busy_s) + per_layer if job.overlap_param_gather else total
    if job.overlap_grad_reduce:
        # DDP buckets (Li et al. 2020 §3.2.3): reductions run during the last micro-batch's
        # backward; only what outlasts it, and at least the last bucket, is exposed.
        last_bwd = sum(c.bwd_s for c in stage.chunks)
        bucket_s = grad_s * min(1.0, DDP_BUCKET_BYTES / max(1.0, stage.grad_bytes))
        grad_exposed = max(grad_s - last_bwd, bucket_s) if grad_s else 0.0
    else:
        grad_exposed = grad_s
    gather_exposed = 0.0 if job.overlap_param_gather and plan.zero in (1, 2) else gather_s
    return grad_exposed + gather_exposed


def estimate(job: TrainingJob, plan: TrainingPlan, cluster: Cluster, validate: bool = True) -> StepEstimate:
    model = job.model
    if validate:
        validate_plan(plan, job, cluster.num_devices, cluster.devices_per_node)
        check_supported(model, plan)
    km = kernel_model(cluster.device.name, job.dtype)
    costs = step_costs(job, plan, cluster)
    m, p, v = costs.micro_batches, plan.pp, plan.vpp
    totals = [s.total_s for s in costs.stages]
    b_i = max(range(p), key=lambda i: totals[i])
    bottleneck = costs.stages[b_i]
    mean_stage = sum(totals) / p
    steady = m * totals[b_i]

    # ---- pipeline bubble (Narayanan et al. 2021 §2.2; Qi et al. 2023 §3 for ZB-H1) ----
    if p == 1:
        bubble = 0.0
    elif plan.schedule == "interleaved":
        bubble = (p - 1) / v * mean_stage
    elif plan.schedule == "zb-h1":  # (p−1)(T_F + T_B − T_W) with T_B the input-gradient part
        bubble = (p - 1) * sum(s.total_s - 2 * sum(c.wgrad_s for c in s.chunks) for s in costs.stages) / p
    elif plan.schedule == "zb-h2":
        # ZB-H2 fills the cool-down with deferred W passes; what stays is the warm-up wait for the
        # first forward, (p−1)·T_F, which only the paper's post-validation optimizer step removes.
        bubble = (p - 1) * sum(sum(c.fwd_s for c in s.chunks) for s in costs.stages) / p
    else:  # 1f1b, gpipe
        bubble = (p - 1) * mean_stage
    # ---- pipeline send/recv on the critical path: forward and backward, per micro-batch per
    # chunk boundary, plus the fill and drain ----
    if p == 1:
        pp_comm = 0.0
    elif job.overlap_p2p_comm:  # only the fill and drain chains through every virtual stage wait
        pp_comm = 2 * (p * v - 1) * costs.p2p_s
    else:
        pp_comm = 2 * (m * v + p - 1) * costs.p2p_s
    # ---- data parallel / ZeRO and optimizer: the slowest stage's tail ----
    tails = [dp_exposed_s(job, plan, s, steady) + s.optimizer_s for s in costs.stages]
    t_i = max(range(p), key=lambda i: tails[i])
    dp_exposed, opt_s = tails[t_i] - costs.stages[t_i].optimizer_s, costs.stages[t_i].optimizer_s

    comm = {g: m * sum(c.fwd_comm_s[g] + c.bwd_comm_s[g] for c in bottleneck.chunks) for g in ("tp", "cp", "ep")}
    compute = m * sum(c.fwd_compute_s + c.bwd_compute_s for c in bottleneck.chunks)
    breakdown = {"compute": compute, "tp_comm": comm["tp"],
                 "cp_comm": comm["cp"], "ep_comm": comm["ep"], "pp_bubble": bubble,
                 "pp_comm": pp_comm, "dp_comm": dp_exposed, "optimizer": opt_s}
    step = sum(breakdown.values())

    # ---- FLOPs, throughput, memory ----
    n_mb_total = job.global_batch // plan.mb  # micro-batches across all DP replicas
    dense_cost = layer_cost(model, job, plan, cluster, False)
    moe_cost = layer_cost(model, job, plan, cluster, True) if model.is_moe else None
    layer_flops = hw_flops = 0.0
    for i in range(model.num_layers):
        c = moe_cost if model.is_moe_layer(i) else dense_cost
        layer_flops += 3 * c.fwd_flops
        hw_flops += 3 * c.fwd_flops + c.recompute_flops
    head_flops = 3 * 2.0 * plan.mb * job.seq_len * model.hidden_size * model.vocab_size
    model_flops = n_mb_total * (layer_flops + head_flops)
    exec_flops = n_mb_total * (hw_flops + head_flops)
    n = cluster.num_devices
    peak = cluster.device.peak(job.dtype)
    mems = [stage_memory(model, job, plan, st) for st in range(p)]
    mem = dict(max(mems, key=lambda d: d["peak_bytes"]))
    mem["hbm_bytes"] = cluster.device.hbm_bytes
    mem["peak_stage"] = mems.index(max(mems, key=lambda d: d["peak_bytes"]))
    return StepEstimate(
        plan=plan, model=model.name, cluster=cluster.name, num_devices=n, seq_len=job.seq_len,
        global_batch=job.global_batch, dtype=job.dtype, micro_batches=m, step_time_s=step,
        tokens_per_s=job.tokens_per_step / step, tflops_per_device=exec_flops / step / n / 1e12,
        mfu=model_flops / step / n / peak, hfu=exec_flops / step / n / peak,
        fits=mem["peak_bytes"] <= cluster.device.hbm_bytes, memory=mem, breakdown_s=breakdown,
        stage_times_s=totals, notes=list(km.notes))

