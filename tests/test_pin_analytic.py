"""Pins of the analytic step-time estimate (`simulator.analytic.estimate`): pipeline send/recv.

Narayanan et al. 2021 §4.1: each micro-batch's activation (s·b·h·2 bytes, ÷t with the
scatter-gather optimisation) crosses every stage boundary once forward and once backward.
Megatron-Core --overlap-p2p-communication hides the transfers behind compute except along the
fill and drain, whose chain passes through all p·v − 1 (virtual) stage boundaries, forward and
backward: 2·(p·v − 1) transfers exposed. Without overlap every transfer blocks its stage:
2·(m·v + p − 1).
"""
import pytest

from hwmodels.clusters import load_cluster
from hwmodels.collectives import collective_s
from simulator.analytic import estimate
from simulator.models import load_model
from simulator.training import TrainingJob, parse_plan, micro_batches

SEQ, GB = 4096, 64


def _case(overlap, plan_text="tp=8,pp=4,schedule=interleaved,vpp=2", nodes=4):
    cluster = load_cluster("dgx-h100", nodes=nodes)
    model = load_model("llama3-70b")
    job = TrainingJob(model, SEQ, GB, overlap_p2p_comm=overlap)
    plan = parse_plan(plan_text, cluster.num_devices)
    est = estimate(job, plan, cluster)
    msg = SEQ * plan.mb * model.hidden_size * 2 / plan.tp
    one = collective_s(cluster, "send_recv", 2, plan.tp * plan.cp * plan.dp, msg) if plan.pp > 1 else 0.0
    return est, plan, micro_batches(plan, job), one


def test_overlapped_p2p_exposes_fill_and_drain_both_directions():
    est, plan, m, one = _case(True)
    p, v = plan.pp, plan.vpp
    assert one > 0
    assert est.breakdown_s["pp_comm"] == pytest.approx(2 * (p * v - 1) * one, rel=1e-6)


def test_blocking_p2p_exposes_every_transfer_both_directions():
    est, plan, m, one = _case(False)
    p, v = plan.pp, plan.vpp
    assert est.breakdown_s["pp_comm"] == pytest.approx(2 * (m * v + p - 1) * one, rel=1e-6)


def test_overlap_hides_the_steady_state_transfers():
    on, plan, m, one = _case(True)
    off, *_ = _case(False)
    p, v = plan.pp, plan.vpp
    saved = off.breakdown_s["pp_comm"] - on.breakdown_s["pp_comm"]
    assert saved == pytest.approx(2 * (m * v + p - 1 - (p * v - 1)) * one, rel=1e-6)
    assert off.step_time_s - on.step_time_s == pytest.approx(saved, rel=1e-6)


def test_no_pipeline_no_p2p():
    est, *_ = _case(True, "tp=8", nodes=1)
    assert est.breakdown_s["pp_comm"] == 0.0


def test_optimizer_step_reads_each_ranks_shard_of_dense_and_expert_parameters():
    """ZeRO ≥ 1: a rank steps its 1/(dp·cp) shard of the dense and its 1/(dp·cp/ep) shard of the
    expert parameters, 28 bytes per parameter through HBM (fused Adam)."""
    from hwmodels.clusters import load_cluster
    from hwmodels.kernels import kernel_model
    from simulator.analytic import ADAM_BYTES_PER_PARAM, _dp_terms
    from simulator.memory import placement, stage_params
    from simulator.models import load_model
    model, cl = load_model("mixtral-8x7b"), load_cluster("dgx-h100", nodes=2)
    d = _dp_terms(model, cl, "bf16", "1f1b", 1, 1, 1, 8, 16, 1, 1, False, {})
    dense, expert = stage_params(model, placement(model, "1f1b", 1, 1), 1, 8)
    local = float(dense[0]) / 16 + float(expert[0]) / 2
    assert d["optimizer"][0] == pytest.approx(kernel_model("h100-sxm", "bf16").memory_s(local * ADAM_BYTES_PER_PARAM))


def test_offloaded_optimizer_shares_host_dram_between_the_nodes_gpus():
    """ZeRO-Offload (Ren et al. 2021): gradients down and parameters up over PCIe at 25 GB/s, CPU
    Adam at the node's 409.6 GB/s DRAM bandwidth shared by its 8 GPUs."""
    from hwmodels.clusters import load_cluster
    from simulator.analytic import _dp_terms
    from simulator.memory import placement, stage_params
    from simulator.models import load_model
    model, cl = load_model("llama3-8b"), load_cluster("dgx-a100", nodes=1)
    d = _dp_terms(model, cl, "bf16", "1f1b", 1, 1, 1, 1, 8, 1, 1, True, {})
    dense, _ = stage_params(model, placement(model, "1f1b", 1, 1), 1, 1)
    local = float(dense[0]) / 8
    assert d["optimizer"][0] == pytest.approx(local * 4 / 25e9 + local * 28 / (409.6e9 / 8))


@pytest.mark.parametrize("zero", [2, 3])
def test_every_zero_stage_steps_only_the_ranks_shard(zero):
    """ZeRO-2 and ZeRO-3 partition the optimizer states as ZeRO-1 does (Rajbhandari et al. 2020
    §5.1-5.3): the step reads a 1/(dp·cp) shard, 16 times less than unsharded (zero=0) on 16 ranks."""
    from simulator.analytic import _dp_terms
    model, cl = load_model("mixtral-8x7b"), load_cluster("dgx-h100", nodes=2)
    one = _dp_terms(model, cl, "bf16", "1f1b", 1, 1, 1, 8, 16, 1, 1, False, {})
    z = _dp_terms(model, cl, "bf16", "1f1b", 1, 1, 1, 8, 16, 1, zero, False, {})
    assert z["optimizer"][0] == pytest.approx(one["optimizer"][0])


def test_overlapped_ddp_exposes_at_least_its_last_bucket_even_for_a_small_model():
    """PyTorch DDP (Li et al. 2020 §3.2.3): the reduction of the last 25 MiB bucket starts when
    the backward ends, so some DP time is exposed however short the reduction is (here ≪ 1 s)."""
    from simulator.analytic import DDP_BUCKET_BYTES
    cl = load_cluster("dgx-h100", nodes=2)
    model = load_model("llama3-8b")
    job = TrainingJob(model, 2048, 64, overlap_grad_reduce=True)
    est = estimate(job, parse_plan("dp=16,zero=0,mb=1", cl.num_devices), cl)
    grads = model.num_params * 2  # bf16 gradients
    full = collective_s(cl, "all_reduce", 16, 1, grads)
    assert full < 1.0  # the regime the pin is about
    last = full * DDP_BUCKET_BYTES / grads
    assert est.breakdown_s["dp_comm"] >= last * 0.99


def test_the_lm_head_runs_on_the_last_stage_and_the_embedding_on_the_first():
    """Megatron-LM's pipeline puts the embedding on the first stage (pre_process) and the output
    layer with the loss on the last (post_process). Llama 3 8B on 2 stages of 16 identical layers:
    the last stage's forward is longer than the first's by the LM head (logits GEMM s·b × V × h
    and the fp32 softmax cross-entropy, 3 passes of 4-byte logits) less the embedding gather
    (2·s·b·h bf16 bytes). A stage's total is one micro-batch's forward plus backward (what the
    ILP partitioner reads, planner/ilp.py)."""
    from hwmodels.kernels import kernel_model
    from simulator.analytic import step_costs
    cl = load_cluster("dgx-h100", nodes=1)
    model = load_model("llama3-8b")
    job = TrainingJob(model, 2048, 64)
    sc = step_costs(job, parse_plan("pp=2,dp=4,mb=1", cl.num_devices), cl)
    first, last = sc.stages
    assert [c.num_layers for c in first.chunks + last.chunks] == [16, 16]
    km = kernel_model("h100-sxm", "bf16")
    T, V, h = 2048, model.vocab_size, model.hidden_size
    head = km.gemm_s(T, V, h) + km.memory_s(3 * 4 * T * V)
    emb = km.memory_s(2 * T * h * 2)
    assert last.mb_fwd_s - first.mb_fwd_s == pytest.approx(head - emb, rel=1e-9)
    for st in sc.stages:
        assert st.total_s == pytest.approx(st.mb_fwd_s + st.last_bwd_s, rel=1e-12)
        assert st.last_bwd_s > st.mb_fwd_s > 0


def test_mtp_depth_adds_its_block_projection_norms_embedding_and_the_head_again():
    """DeepSeek-V3 §2.2, one MTP depth with the loss on the last stage: RMSNorm of the previous
    depth's hidden state and of the next token's embedding (plus the head's norm: 3 passes over
    s·h bf16 values), the shared embedding gathered again, the 2h → h projection M_k (forward
    GEMM T × h × 2h; backward its input gradient and weight gradient), one MoE block like the
    model's last, and the shared output head a second time."""
    from dataclasses import replace

    from hwmodels.kernels import kernel_model
    from simulator.analytic import _kernel_terms
    from simulator.memory import layer_terms_job
    ds = load_model("deepseek-v3")
    cl = load_cluster("dgx-h100", nodes=32)
    job = TrainingJob(model=ds, seq_len=4096, global_batch=256, dtype="fp8")
    k = _kernel_terms(layer_terms_job(job), cl, 1, 1, 8, False, 1, 0)
    k0 = _kernel_terms(layer_terms_job(replace(job, model=replace(ds, mtp_layers=0))), cl, 1, 1, 8, False, 1, 0)
    km = kernel_model("h100-sxm", "fp8")
    T, h = 4096, ds.hidden_size
    proj_f, proj_w = km.gemm_s(T, h, 2 * h), km.gemm_s(h, 2 * h, T)
    norms, emb = km.memory_s(3 * 2 * T * h * 2), km.memory_s(2 * T * h * 2)
    assert k["head_fwd"] - 2 * k0["head_fwd"] == pytest.approx(k0["fwd_moe"] + proj_f + norms + emb, rel=1e-9)
    assert k["head_bwd"] - 2 * k0["head_bwd"] == pytest.approx(
        k0["bwd_moe"] + proj_f + proj_w + 2 * norms + emb, rel=1e-9)
    assert k["head_wgrad"] - 2 * k0["head_wgrad"] == pytest.approx(k0["wgrad_moe"] + proj_w, rel=1e-9)


def test_without_zero_every_rank_steps_its_whole_dense_and_expert_parameters():
    """Plain data parallelism (ZeRO stage 0, Rajbhandari et al. 2020 §3's baseline): every rank
    keeps and updates the full optimizer state of what it holds, its dense parameters and its 1/ep
    of the experts (Mixtral 8x7B, ep = 8 over 16 ranks), 28 bytes per parameter through HBM."""
    from hwmodels.kernels import kernel_model
    from simulator.analytic import ADAM_BYTES_PER_PARAM, _dp_terms
    from simulator.memory import placement, stage_params
    model, cl = load_model("mixtral-8x7b"), load_cluster("dgx-h100", nodes=2)
    d = _dp_terms(model, cl, "bf16", "1f1b", 1, 1, 1, 8, 16, 1, 0, False, {})
    dense, expert = stage_params(model, placement(model, "1f1b", 1, 1), 1, 8)
    local = float(dense[0]) + float(expert[0])
    assert d["optimizer"][0] == pytest.approx(kernel_model("h100-sxm", "bf16").memory_s(local * ADAM_BYTES_PER_PARAM),
                                              rel=1e-9)


def test_the_ilps_layer_time_is_the_unit_a_middle_stage_is_made_of():
    """planner/ilp.py partitions layers by t_i = one layer's forward + backward with its exposed
    comm (`layer_time_s`): a pipeline stage with neither the embedding nor the head (Llama 3 8B,
    pp = 4: stages 1 and 2 hold 8 layers) costs 8 t_i per micro-batch, as the step engine says."""
    from simulator.analytic import layer_time_s, step_costs
    cl = load_cluster("dgx-h100", nodes=1)
    job = TrainingJob(load_model("llama3-8b"), 2048, 64)
    plan = parse_plan("pp=4,dp=2,mb=1", cl.num_devices)
    sc = step_costs(job, plan, cl)
    t = layer_time_s(job, plan, cl, moe=False)
    assert t > 0
    for st in sc.stages[1:3]:
        assert st.num_layers == 8
        assert st.total_s == pytest.approx(8 * t, rel=1e-9)


@pytest.mark.parametrize("recompute", ["none", "full"])
def test_hardware_flops_exceed_model_flops_only_by_the_recomputation(recompute):
    """Korthikanti et al. 2022 §5: MFU counts the model's FLOPs (forward + backward = 3 forward
    passes per layer, plus the head), HFU every FLOP executed, recomputation included. Without
    recomputation they are the same; full recomputation adds one forward of every layer
    (Llama 3 8B, 4k tokens, 8 H100s): HFU/MFU = (4·layers + head) / (3·layers + head), in (1, 4/3)."""
    cl = load_cluster("dgx-h100", nodes=1)
    job = TrainingJob(load_model("llama3-8b"), 4096, 64)
    est = estimate(job, parse_plan(f"tp=2,dp=4,recompute={recompute}", cl.num_devices), cl)
    assert est.mfu > 0.1
    if recompute == "none":
        assert est.hfu == pytest.approx(est.mfu, rel=1e-12)
    else:
        assert 1.2 < est.hfu / est.mfu < 4 / 3


def test_zero_1_gathers_the_dense_shard_over_dp_and_the_expert_shard_over_expert_dp():
    """ZeRO-1 (Rajbhandari et al. 2020 §5.1, P_os): each rank updates its partition, then an
    all-gather of the bf16 parameters rebuilds them, once per step. With MoE the dense parameters
    gather over the dp·cp ranks and the expert parameters over the expert data-parallel group
    (Megatron-Core distributed optimizer, expert_data_parallel group: tp·cp·dp/(ep·etp) ranks, ep·etp
    apart). Mixtral 8x7B (h = 4096, 8 KV heads of 128, FFN 14336, 8 experts, 32 layers, vocab
    32000), ep = 8 over 16 ranks: every rank holds all dense parameters and 1 expert per layer;
    the two gathers add (16 ranks, and 2 ranks 8 apart)."""
    from simulator.analytic import _dp_terms
    model, cl = load_model("mixtral-8x7b"), load_cluster("dgx-h100", nodes=2)
    h, L, V = 4096, 32, 32000
    dense = L * (h * (4096 + 2 * 8 * 128 + 4096) + h * 8 + 2 * h) + V * h + (V * h + h)  # attn, router, norms
    expert = L * 3 * h * 14336
    d = _dp_terms(model, cl, "bf16", "1f1b", 1, 1, 1, 8, 16, 1, 1, False, {})
    want = collective_s(cl, "all_gather", 16, 1, dense * 2) + collective_s(cl, "all_gather", 2, 8, expert * 2)
    assert collective_s(cl, "all_gather", 2, 8, expert * 2) > 0
    assert d["gather"][0] == pytest.approx(want, rel=1e-9)


def test_zero_3_gathers_each_layer_and_the_embedding_or_head_as_units_of_their_own():
    """ZeRO-3 (Rajbhandari et al. 2020 §5.3, P_os+g+p) as PyTorch FSDP auto-wraps a model: one
    unit per transformer block, the embedding and the output layer units of their own, each
    all-gathered (parameters, bf16) and reduce-scattered (gradients, bf16) on its own. Llama 3 8B
    (h = 4096, 8 KV heads of 128, FFN 14336, vocab 128256, untied) on pp = 2, dp = 8: the first
    stage is 16 blocks and the embedding, the last 16 blocks and the head (final RMSNorm + output)."""
    from simulator.analytic import _dp_terms
    model, cl = load_model("llama3-8b"), load_cluster("dgx-h100", nodes=2)
    h, V = 4096, 128256
    block = h * (4096 + 2 * 1024 + 4096) + 3 * h * 14336 + 2 * h
    d = _dp_terms(model, cl, "bf16", "1f1b", 1, 2, 1, 1, 8, 1, 3, False, {})
    for st, end in ((0, V * h), (1, V * h + h)):
        for key, op in (("gather", "all_gather"), ("grad", "reduce_scatter")):
            want = 16 * collective_s(cl, op, 8, 1, block * 2) + collective_s(cl, op, 8, 1, end * 2)
            assert d[key][st] == pytest.approx(want, rel=1e-9), (key, st)


def test_overlapped_ep_all_to_alls_expose_what_outlasts_compute_and_a_dense_layer_has_none():
    """EP all-to-alls overlapped with another micro-batch's compute (DeepSeek-V3 DualPipe, arXiv
    2412.19437 §3.2.1; Megatron-Core --overlap-moe-expert-parallel-comm): of a layer's A2A time
    e = fwd + bwd beside its compute c, max(0, e − c) stays exposed plus the slowdown of the
    overlapped compute, κ·min(e, c) with κ = 0.189 (Agrawal et al. 2025, arXiv 2507.03114 §5);
    each of forward, backward and recompute keeps its share of e, and an MoE MTP block's A2As
    (DeepSeek-V3 §2.2) scale as its MoE layers'. A dense layer moves no A2A
    (e = 0): nothing to scale, and no 0/0 is evaluated (NumPy warns "invalid value encountered in
    divide" for 0/0, which every MoE plan with overlap would print)."""
    import warnings

    from simulator.analytic import ep_overlapped
    ms = 1e-3  # a layer's seconds per micro-batch
    k = {"fwd_dense": 2 * ms, "bwd_dense": 4 * ms, "fwd_ep_dense": 0.0, "bwd_ep_dense": 0.0, "rc_ep_dense": 0.0,
         "fwd_moe": 1 * ms, "bwd_moe": 2 * ms, "fwd_ep_moe": 1.5 * ms, "bwd_ep_moe": 2.5 * ms, "rc_ep_moe": 0.5 * ms,
         "mtp_fwd_ep": 1.5 * ms, "mtp_bwd_ep": 2.5 * ms, "mtp_rc_ep": 0.5 * ms}  # one MoE MTP depth
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ep_overlapped(k)
    e, c = 4 * ms, 3 * ms  # A2A 1.5 + 2.5 beside compute 1 + 2
    scale = ((e - c) + 0.189 * c) / e
    assert (out["fwd_ep_moe"], out["bwd_ep_moe"], out["rc_ep_moe"]) == pytest.approx(
        (1.5 * ms * scale, 2.5 * ms * scale, 0.5 * ms * scale), rel=1e-12)
    assert (out["mtp_fwd_ep"], out["mtp_bwd_ep"], out["mtp_rc_ep"]) == pytest.approx(  # MTP blocks are MoE layers
        (1.5 * ms * scale, 2.5 * ms * scale, 0.5 * ms * scale), rel=1e-12)
    assert (out["fwd_ep_dense"], out["bwd_ep_dense"], out["rc_ep_dense"]) == (0.0, 0.0, 0.0)
    assert out["fwd_moe"] == k["fwd_moe"] and out["bwd_dense"] == k["bwd_dense"]  # compute is not rescaled here


def test_model_flops_of_an_mtp_depth_are_its_block_the_head_again_and_the_2h_to_h_projection():
    """Multi-token prediction (DeepSeek-V3, arXiv 2412.19437 §2.2): each depth runs one more
    Transformer block, the shared output head again and its projection M_k (2h → h), forward and
    backward: 3 × the forward FLOPs of each (Narayanan et al. 2021 eq. 3 convention: backward =
    2 forwards). Mixtral 8x7B given one MoE MTP depth (h = 4096, 32 heads of 128, 8 KV heads,
    8 experts of FFN 14336, top-2, vocab 32000), 64 sequences of 4096 tokens: the MFU's model
    FLOPs grow by 64 × 3 × (block + 2·T·h·V + 2·T·2h·h)."""
    from dataclasses import replace
    cl = load_cluster("dgx-h100", nodes=1)
    base = load_model("mixtral-8x7b")
    T, h, V, GB = 4096, 4096, 32000, 64
    block = (2 * T * h * (4096 + 2 * 1024) + 2 * T * 4096 * h  # QKV and output projections
             + 2 * T * T * 32 * (128 + 128)  # QK^T and AV, non-causal
             + 2 * T * 2 * 3 * h * 14336 + 2 * T * h * 8)  # two SwiGLU experts per token, router
    want = GB * 3 * (block + 2 * T * h * V + 2 * T * 2 * h * h)

    def model_flops(model):
        est = estimate(TrainingJob(model, T, GB), parse_plan("dp=8,ep=8,mb=1", cl.num_devices), cl)
        return est.mfu * est.step_time_s * cl.num_devices * cl.device.peak("bf16")
    assert model_flops(replace(base, mtp_layers=1)) - model_flops(base) == pytest.approx(want, rel=1e-9)
