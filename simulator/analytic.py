"""Analytic training-step engine: the op graph's durations combined with closed forms.

step = Σ over the bottleneck stage of m micro-batches × (forward + backward + recompute, with
exposed TP/CP/EP communication) + pipeline bubble + exposed pipeline send/recv + exposed DP/ZeRO
communication + optimizer step. Every term is reported in `breakdown_s` and they sum to
`step_time_s`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

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
    dense = expert = 0.0
    for i in layers:
        p = model.layer_params(i)
        if model.is_moe_layer(i):
            e = model.num_experts * model.expert_params()
            dense += (p - e) / plan.tp
            expert += model.num_experts // plan.ep * model.expert_params()
        else:
            dense += p / plan.tp
    return dense, expert


def estimate(job: TrainingJob, plan: TrainingPlan, cluster: Cluster, validate: bool = True) -> StepEstimate:
    model = job.model
    if validate:
        validate_plan(plan, job, cluster.num_devices, cluster.devices_per_node)
        check_supported(model, plan)
    km = kernel_model(cluster.device.name, job.dtype)
    m = micro_batches(plan, job)
    p, v, t = plan.pp, plan.vpp, plan.tp
    T = plan.mb * job.seq_len // plan.cp
    dense_cost = layer_cost(model, job, plan, cluster, False)
    moe_cost = layer_cost(model, job, plan, cluster, True) if model.is_moe else None

    # ---- per-stage, per-micro-batch times ----
    head_f = km.gemm_s(T, model.vocab_size // t, model.hidden_size) \
        + km.memory_s(3 * 4 * T * model.vocab_size / t)  # logits GEMM; fp32 softmax cross-entropy
    head_b = km.gemm_s(T, model.hidden_size, model.vocab_size // t) \
        + km.gemm_s(model.vocab_size // t, model.hidden_size, T) + km.memory_s(3 * 4 * T * model.vocab_size / t)
    emb_f = km.memory_s(2 * T * model.hidden_size * ACT_BYTES)
    stages = []
    for st in range(p):
        layers = stage_layers(model, plan, st)
        n_moe = sum(model.is_moe_layer(i) for i in layers)
        comp_f = comp_b = wgrad = 0.0
        comm = {"tp": 0.0, "cp": 0.0, "ep": 0.0}
        for cost, n in ((dense_cost, len(layers) - n_moe), (moe_cost, n_moe)):
            if not n:
                continue
            comp_f += n * cost.fwd_compute_s
            comp_b += n * (cost.bwd_compute_s + cost.recompute_s)
            wgrad += n * cost.wgrad_s
            for part in (cost.fwd_comm_s, cost.bwd_comm_s, cost.recompute_comm_s):
                for g, s in part.items():
                    comm[g] += n * s
        if st == 0:
            comp_f += emb_f
            comp_b += emb_f
        if st == p - 1:
            comp_f += head_f
            comp_b += head_b
        stages.append({"compute_s": comp_f + comp_b, "fwd_s": comp_f, "wgrad_s": wgrad, "comm": comm,
                       "total_s": comp_f + comp_b + sum(comm.values())})
    bottleneck = max(stages, key=lambda s: s["total_s"])
    mean_stage = sum(s["total_s"] for s in stages) / p
    steady = m * bottleneck["total_s"]

    # ---- pipeline bubble (Narayanan et al. 2021 §2.2; Qi et al. 2023 §3 for ZB-H1) ----
    if p == 1:
        bubble = 0.0
    elif plan.schedule == "interleaved":
        bubble = (p - 1) / v * mean_stage
    elif plan.schedule == "zb-h1":  # (p−1)(T_F + T_B − T_W) with T_B the input-gradient part
        bubble = (p - 1) * sum(s["total_s"] - 2 * s["wgrad_s"] for s in stages) / p
    else:  # 1f1b, gpipe
        bubble = (p - 1) * mean_stage

    # ---- pipeline send/recv: one activation (÷t with SP / scatter-gather, Narayanan §4.1) per
    # micro-batch per chunk boundary, forward and backward, on the critical path ----
    pp_comm = 0.0
    if p > 1:
        msg = T * model.hidden_size * ACT_BYTES / t
        t_p2p = collective_s(cluster, "send_recv", 2, plan.tp * plan.cp * plan.dp, msg)
        pp_comm = 2 * (m * v + p - 1) * t_p2p

    # ---- data parallel / ZeRO ----
    dense_params, expert_params = _stage_params(model, plan, stage_layers(model, plan, 0))
    if p == 1:
        dense_params += (model.embedding_params() + model.head_params()) / t
    else:
        dense_params += model.embedding_params() / t
    dp_cp, expert_dp = plan.dp * plan.cp, max(1, plan.dp * plan.cp // plan.ep)
    dstride = plan.tp  # dp×cp group of a TP rank: stride tp in Megatron order (tp-cp-ep-dp-pp)
    gb = 2  # bf16 gradient reduction (ZeRO §3: 2Ψ gradients)

    def dp_collectives(params: float, n: int) -> tuple[float, float]:
        """(gradient reduction, parameter gather) seconds for `params` over n ranks."""
        if n <= 1 or params <= 0:
            return 0.0, 0.0
        if plan.zero == 0:
            return collective_s(cluster, "all_reduce", n, dstride, params * gb), 0.0
        rs = collective_s(cluster, "reduce_scatter", n, dstride, params * gb)
        ag = collective_s(cluster, "all_gather", n, dstride, params * WEIGHT_BYTES)
        if plan.zero == 3:  # ZeRO §7.2.1: parameters gathered in forward and again in backward
            return rs, ag * (3 if plan.recompute == "full" else 2)
        return rs, ag
    g1, a1 = dp_collectives(dense_params, dp_cp)
    g2, a2 = dp_collectives(expert_params, expert_dp)
    grad_s, gather_s = g1 + g2, a1 + a2
    last_bwd = bottleneck["compute_s"] - bottleneck["fwd_s"]  # backward of the last micro-batch
    if plan.zero == 3:
        # FSDP/ZeRO-3: per-layer gathers and reduce-scatters prefetched behind compute; exposed
        # only where communication outlasts the compute of the whole step (plus the first gather).
        total = grad_s + gather_s * m
        per_layer = total / max(1, len(stage_layers(model, plan, 0)))
        dp_exposed = max(0.0, total - steady) + per_layer if job.overlap_param_gather else total
    else:
        if job.overlap_grad_reduce:
            bucket_s = grad_s * min(1.0, DDP_BUCKET_BYTES / max(1.0, dense_params * gb))
            grad_exposed = max(grad_s - last_bwd, bucket_s)
        else:
            grad_exposed = grad_s
        gather_exposed = 0.0 if job.overlap_param_gather and plan.zero in (1, 2) else gather_s
        dp_exposed = grad_exposed + gather_exposed

    # ---- optimizer step ----
    local = dense_params / (dp_cp if plan.zero >= 1 else 1) + expert_params / (expert_dp if plan.zero >= 1 else 1)
    if plan.offload:  # grads to host, params back, CPU Adam (ZeRO-Offload)
        opt_s = (local * (gb + WEIGHT_BYTES) / PCIE_BYTES_PER_S
                 + local * ADAM_BYTES_PER_PARAM / (HOST_DRAM_BYTES_PER_S / cluster.devices_per_node))
    else:
        opt_s = km.memory_s(local * ADAM_BYTES_PER_PARAM)

    comm_steady = {g: m * s for g, s in bottleneck["comm"].items()}
    breakdown = {"compute": m * bottleneck["compute_s"], "tp_comm": comm_steady["tp"],
                 "cp_comm": comm_steady["cp"], "ep_comm": comm_steady["ep"], "pp_bubble": bubble,
                 "pp_comm": pp_comm, "dp_comm": dp_exposed, "optimizer": opt_s}
    step = sum(breakdown.values())

    # ---- FLOPs, throughput, memory ----
    n_mb_total = job.global_batch // plan.mb  # micro-batches across all DP replicas
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
        stage_times_s=[s["total_s"] for s in stages], notes=list(km.notes))

