"""Pin tests for simulator.serving.costs (written from surviving mutants): what one serving
forward pass costs, each from a published figure, a measured table or the engines' batching."""
from __future__ import annotations

import pytest

from hwmodels.clusters import load_cluster
from hwmodels.collectives import collective_s
from hwmodels.errors import InputError
from hwmodels.kernels import kernel_model
from simulator.models import load_model
from simulator.serving.costs import IterationCost, _grid, iteration_cost
from simulator.serving.scheduler import Batch


@pytest.fixture(scope="module")
def h100():
    return load_cluster("dgx-h100")


@pytest.fixture(scope="module")
def llama8(h100):
    return IterationCost(load_model("llama3.1-8b"), h100, 1)


def _batch(prefills=(), decodes=0, kv=0, samples=None):
    b = Batch()
    b.prefills = [(None, q, c) for q, c in prefills]
    b.prefill_tokens = sum(q for q, _ in prefills)
    b.num_decode, b.decode_kv_tokens = decodes, kv
    b.samples = decodes + len(prefills) if samples is None else samples
    return b


def test_grid_has_16_points_per_octave_and_is_exact_below_32():
    assert _grid(1) == (1, 1) and _grid(32) == (32, 32)
    assert _grid(33) == (32, 34)
    assert _grid(1000) == (992, 1024) and _grid(1024) == (1024, 1088)
    assert _grid(4097) == (4096, 4352)
    for x in (33, 100, 777, 5000, 123457):
        lo, hi = _grid(x)
        assert lo <= x < hi and (hi - lo) / lo <= 1 / 16 + 1e-12


def test_between_grid_points_the_dense_cost_is_interpolated_linearly(llama8):
    lo, hi = _grid(1000)
    a, b = llama8.dense_s(lo), llama8.dense_s(hi)
    assert a < llama8.dense_s(1000) < b
    assert llama8.dense_s(1000) == pytest.approx(a + (b - a) * (1000 - lo) / (hi - lo), rel=1e-12)
    assert llama8.dense_s(0) == 0.0


def test_lm_head_is_a_16_bit_vocabulary_parallel_gemm_over_the_sampled_rows(h100):
    """Llama 3.1 8B: 128256 x 4096 head, split over TP, 16-bit even when the GEMMs run in fp8,
    then the 16-bit logits of the sampled rows gathered over the TP group."""
    ic = IterationCost(load_model("llama3.1-8b"), h100, 2, dtype="fp8")
    km16 = kernel_model("h100-sxm", "bf16")

    def gather(rows):
        return collective_s(h100, "all_gather", 2, 1, rows * 128256 * 2.0)

    assert ic.lm_head_s(32) == pytest.approx(km16.gemm_s(32, 128256 // 2, 4096) + gather(32), rel=1e-12)
    assert ic.lm_head_s(0) == 0.0
    one = km16.gemm_s(1, 128256 // 2, 4096) + gather(1)  # one sampled row still costs
    assert ic.lm_head_s(1) == pytest.approx(one, rel=1e-12) and one > 0
    assert _grid(51) == (50, 52)  # between two grid points: halfway
    a = km16.gemm_s(50, 64128, 4096) + gather(50)
    b = km16.gemm_s(52, 64128, 4096) + gather(52)
    assert ic.lm_head_s(51) == pytest.approx((a + b) / 2, rel=1e-12)
    assert ic.kv_dtype == "bf16"  # fp8 GEMMs keep a 16-bit KV cache unless told otherwise


def test_mla_decode_reads_the_latent_cache_at_hbm_speed():
    """DeepSeek-V3 (no decode table for MLA): each of 61 layers reads 576 cached elements per
    token (512 latent + 64 RoPE, DeepSeek-V2 §2.1.2-3) at 2 bytes through 80% of H200's 4.8 TB/s,
    plus the 3 µs kernel launch."""
    ic = IterationCost(load_model("deepseek-v3"), load_cluster("dgx-h200"), 8)
    expected = 61 * (64 * 4096 * 576 * 2 / (0.8 * 4.8e12) + 3e-6)
    assert ic.decode_attention_s(64, 64 * 4096) == pytest.approx(expected, rel=1e-9)
    assert any("no measured decode-attention table" in n for n in ic.notes)
    assert ic.decode_attention_s(0, 0) == 0.0


def test_decode_attention_follows_the_measured_generation_table(llama8):
    """Llama 3.1 8B on H100 reads aiconfigurator's generation-attention table; between its grid
    points the time scales with the mean KV length (the reads are bandwidth-bound)."""
    from hwmodels import profiles
    table = profiles.load_decode_attention_table("h100_sxm", "bf16")
    assert llama8._decode_table is not None
    assert llama8.decode_attention_s(16, 16 * 2048) == pytest.approx(
        32 * table.time_s(16, 2048, 32, 8, 128), rel=1e-9)
    # between batch-size grid points (40, 42) the time is interpolated linearly
    assert _grid(41) == (40, 42)
    assert llama8.decode_attention_s(41, 41 * 2048) == pytest.approx(
        (llama8.decode_attention_s(40, 40 * 2048) + llama8.decode_attention_s(42, 42 * 2048)) / 2, rel=1e-12)
    lo, _ = _grid(2100)
    assert llama8.decode_attention_s(16, 16 * 2100) == pytest.approx(
        llama8.decode_attention_s(16, 16 * lo) * 2100 / lo, rel=1e-9)


def test_a_borrowing_device_scales_measured_decode_attention_by_hbm_bandwidth():
    """H100 PCIe borrows H100 SXM's tables: decode attention is bandwidth-bound, so it takes
    3.35 / 2.0 TB/s times as long."""
    m = load_model("llama3.1-8b")
    sxm = IterationCost(m, load_cluster("dgx-h100"), 1)
    from dataclasses import replace
    from hwmodels.devices import get_device
    pcie_cluster = replace(load_cluster("dgx-h100"), device=get_device("h100-pcie"))
    pcie = IterationCost(m, pcie_cluster, 1)
    assert pcie.decode_attention_s(8, 8 * 4096) == pytest.approx(
        sxm.decode_attention_s(8, 8 * 4096) * 3.35 / 2.0, rel=1e-9)


def test_prefill_attention_scales_with_causal_plus_context_flops(llama8):
    """A chunk of q new tokens after c cached ones: q^2/2 causal + q*c full attention work."""
    base = llama8.prefill_attention_s(1, 1024, 0)
    assert llama8.prefill_attention_s(1, 1000, 0) == pytest.approx(
        llama8.prefill_attention_s(1, 992, 0) * 1000 ** 2 / 992 ** 2, rel=1e-9)
    with_ctx = llama8.prefill_attention_s(1, 1024, 2048)
    lo, _ = _grid(2050)
    assert llama8.prefill_attention_s(1, 1024, 2050) == pytest.approx(
        with_ctx * (1024 ** 2 / 2 + 1024 * 2050) / (1024 ** 2 / 2 + 1024 * 2048), rel=1e-9)
    assert with_ctx > base


def test_a_pass_is_the_sum_of_its_parts(llama8):
    """Every token through the layers once (varlen batch), the LM head over the sampling rows,
    decode attention for the decodes and prefill attention per chunk shape."""
    b = _batch(prefills=[(512, 0), (512, 0), (256, 1024)], decodes=10, kv=10 * 3000, samples=12)
    expected = (llama8.dense_s(512 + 512 + 256 + 10) + llama8.lm_head_s(12)
                + llama8.decode_attention_s(10, 30000) + llama8.prefill_attention_s(2, 512, 0)
                + llama8.prefill_attention_s(1, 256, 1024))
    assert llama8.iteration_s(b) == pytest.approx(expected, rel=1e-12)
    one = _batch(prefills=[(2048, 0)])
    assert llama8.prefill_s(2048) == llama8.iteration_s(one) == pytest.approx(
        llama8.dense_s(2048) + llama8.lm_head_s(1) + llama8.prefill_attention_s(1, 2048, 0), rel=1e-12)
    dec = _batch(decodes=4, kv=4 * 100)
    assert llama8.iteration_s(dec) == pytest.approx(
        llama8.dense_s(4) + llama8.lm_head_s(4) + llama8.decode_attention_s(4, 400), rel=1e-12)


def test_two_prefill_chunks_cost_more_than_one(llama8):
    one = llama8.iteration_s(_batch(prefills=[(1024, 0)]))
    two = llama8.iteration_s(_batch(prefills=[(1024, 0), (1024, 0)]))
    assert two > one


def test_small_tp_all_reduce_uses_the_engines_custom_kernel(h100):
    """vLLM's custom all-reduce (measured, aiconfigurator h100_sxm/comm/vllm) for small messages;
    NCCL where the table stops; no custom kernel at TP 1 or across nodes."""
    from hwmodels import profiles
    m = load_model("llama3.1-8b")
    ic = IterationCost(m, h100, 2)
    table = profiles.load_custom_allreduce_table("h100_sxm", "vllm")
    assert ic.tp_allreduce_s(1 << 20) == table.time_s(2, 1 << 20)
    assert ic.tp_allreduce_s(1 << 20) != collective_s(h100, "all_reduce", 2, 1, float(1 << 20))
    big = float(1 << 30)
    if table.time_s(2, big) is None:
        assert ic.tp_allreduce_s(big) == collective_s(h100, "all_reduce", 2, 1, big)
    assert IterationCost(m, h100, 1)._custom_ar is None


def test_pipeline_stages_add_one_activation_send_per_boundary(h100):
    m = load_model("llama3-70b")
    pp1 = IterationCost(m, h100, 4, 1)
    pp2 = IterationCost(m, h100, 4, 2)
    send = collective_s(h100, "send_recv", 2, 4, float(1024 * 8192 * 2))
    assert pp2.dense_s(1024) == pytest.approx(pp1.dense_s(1024) + send, rel=1e-12)


def test_replica_shapes_the_model_cannot_take_are_errors(h100):
    with pytest.raises(InputError, match="must divide"):
        IterationCost(load_model("llama3.1-8b"), h100, 3)
    with pytest.raises(InputError, match="exceeds"):
        IterationCost(load_model("llama3.1-8b"), h100, 1, 33)
    IterationCost(load_model("llama3.1-8b"), h100, 1, 32)
    with pytest.raises(InputError, match="experts"):
        IterationCost(load_model("mixtral-8x7b"), h100, 1, 1, 3)
    assert iteration_cost(load_model("llama3.1-8b"), h100, 1) is iteration_cost(load_model("llama3.1-8b"), h100, 1)
    # the defaults are one unsplit replica
    dflt = iteration_cost(load_model("mixtral-8x7b"), h100)
    assert (dflt.tp, dflt.pp, dflt.ep, dflt.dtype, dflt.kv_dtype) == (1, 1, 1, "bf16", "bf16")
    assert dflt.dense_s(128) == IterationCost(load_model("mixtral-8x7b"), h100, 1, 1, 1).dense_s(128)


def test_experts_split_tp_over_ep_ways_in_a_serving_replica(h100):
    """vLLM fused MoE with EP inside the TP group: each expert's FFN is split tp/ep ways
    (Mixtral on TP 4, EP 2: halves of 4 experts per GPU)."""
    from simulator.ops import SERVING_ENGINE, LayerPass, transformer_layer
    mx = load_model("mixtral-8x7b")
    ic = IterationCost(mx, h100, 4, 1, 2)
    ic._moe = None  # the grouped-GEMM experts (the measured fused kernel has its own test below)
    lp = LayerPass(tokens=512, tp=4, ep=2, ep_distinct_tokens=False, expert_tp=2, kv_bytes=2,
                   kernels=SERVING_ENGINE)
    layer = sum(o.time_s for o in transformer_layer(mx, lp, ic.km, ic.km16, ic._comm_s, True, "fwd"))
    assert ic.dense_s(512) == pytest.approx(32 * layer, rel=1e-12)


def test_layer_collectives_route_tp_all_reduces_to_the_custom_kernel(h100):
    """Inside a pass, the TP all-reduces go through the engine's custom all-reduce choice; other
    groups' collectives (EP all-to-all) through NCCL's model."""
    ic = IterationCost(load_model("mixtral-8x7b"), h100, 2, 1, 2)
    mib = float(1 << 20)
    assert ic._comm_s("all_reduce", "tp", 2, 1, mib) == ic.tp_allreduce_s(mib)
    assert ic._comm_s("all_reduce", "tp", 2, 1, mib) != collective_s(h100, "all_reduce", 2, 1, mib)
    assert ic._comm_s("all_to_all", "ep", 2, 1, mib) == collective_s(h100, "all_to_all", 2, 1, mib)


def test_attention_dp_size_must_be_positive_and_any_positive_size_builds(h100):
    m = load_model("qwen3-30b-a3b")
    with pytest.raises(InputError, match="attention dp=0"):
        IterationCost(m, h100, 2, ep=2, dp=0)
    assert IterationCost(m, h100, 2, ep=4, dp=2).dp == 2


def _captured_passes(monkeypatch, ic, call):
    """The LayerPass each MoE layer of a serving cost is built with."""
    import simulator.serving.costs as costs
    seen = []
    real = costs.transformer_layer

    def spy(model, lp, *a, **kw):
        seen.append(lp)
        return real(model, lp, *a, **kw)
    monkeypatch.setattr(costs, "transformer_layer", spy)
    call(ic)
    return seen


def test_serving_experts_are_whole_under_pure_ep_and_split_tp_over_ep_ways(h100, monkeypatch):
    """vLLM FusedMoE with expert parallelism inside the TP group: each GPU holds E/ep experts,
    each split tp/ep ways (whole when ep = tp); with attention DP the MoE spans tp·dp GPUs, so each
    expert is split tp·dp/ep ways (whole at ep = tp·dp)."""
    m = load_model("qwen3-30b-a3b")
    for tp, ep, want in ((2, 2, 1), (4, 2, 2), (8, 8, 1)):
        ic = IterationCost(m, h100, tp, ep=ep)
        lps = _captured_passes(monkeypatch, ic, lambda c: c._layer_s(64, True))
        assert {lp.expert_tp for lp in lps} == {want}, (tp, ep)
    ic = IterationCost(m, h100, 1, ep=8, dp=8)
    lps = _captured_passes(monkeypatch, ic, lambda c: c._split_at(64))
    assert {lp.expert_tp for lp in lps} == {1}
    ic = IterationCost(m, h100, 2, ep=4, dp=4)  # 8 GPUs, 4-way EP: experts split 2 ways
    lps = _captured_passes(monkeypatch, ic, lambda c: c._split_at(64))
    assert {lp.expert_tp for lp in lps} == {2}


def test_tp_all_reduce_without_the_custom_kernel_is_nccl_over_adjacent_ranks():
    """TP is innermost: a TP group of 8 is one DGX node's 8 adjacent GPUs, so the NCCL all-reduce
    a TP layer runs (above the custom kernel's limit) stays on NVLink; the same group strided over
    two nodes would cross InfiniBand and take longer."""
    cl = load_cluster("dgx-h100", nodes=2)
    ic = IterationCost(load_model("llama3.1-70b"), cl, 8, custom_ar_max_bytes=0)
    nbytes = 16 * 2 ** 20
    assert ic.tp_allreduce_s(nbytes) == collective_s(cl, "all_reduce", 8, 1, nbytes)
    assert ic.tp_allreduce_s(nbytes) < collective_s(cl, "all_reduce", 8, 2, nbytes)


def test_expert_parallelism_must_fit_in_the_replica(h100):
    """EP spreads the experts over the replica's own GPUs (vLLM: the EP group is TP·DP): 2-way EP
    on a one-GPU replica has nowhere to put the second half."""
    with pytest.raises(InputError, match="ep=2 must divide the tp·dp = 1 devices"):
        IterationCost(load_model("qwen3-30b-a3b"), h100, 1, ep=2)


def test_no_tokens_cost_nothing_even_with_tp_collectives(h100):
    """An empty pass runs no GEMM and no TP all-reduce (Llama 3.1 70B on TP 4)."""
    ic = IterationCost(load_model("llama3.1-70b"), h100, 4)
    assert ic.dense_s(0) == 0.0 and ic.dense_s(1) > 0.0


def test_two_pipeline_stages_pay_one_activation_send_per_pass():
    """Serving with pp stages: each pass's activations (T·h, 16-bit) cross pp − 1 stage
    boundaries once (the pipeline's point-to-point send); pp = 2 pays exactly one send, on the
    dense path and the attention-DP path alike."""
    from hwmodels.clusters import load_cluster
    from hwmodels.collectives import collective_s
    from simulator.models import load_model
    from simulator.precision import ACT_BYTES
    from simulator.serving.costs import IterationCost
    m, cl = load_model("llama3-8b"), load_cluster("dgx-h100", nodes=1)
    one, two = IterationCost(m, cl, tp=1, pp=1), IterationCost(m, cl, tp=1, pp=2)
    send = collective_s(cl, "send_recv", 2, 1, float(512 * m.hidden_size * ACT_BYTES))
    # the same layers run either way (split over the stages); only the send is added
    assert two._dense_at(512) - one._dense_at(512) == pytest.approx(send, rel=1e-6)
    assert two.dense_dp_s(512, 512) - one.dense_dp_s(512, 512) == pytest.approx(send, rel=1e-6)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("tp", [1, 8])
def test_one_attention_dp_rank_with_whole_experts_costs_what_the_plain_replica_costs(tp, fused):
    """The attention-DP cost splits every layer into the routed experts' ops and the rest and
    takes the experts at the tokens they receive (ceil(t_sum / (tp·dp)) per device, ops.py
    _moe_block's distinct-token count). With one rank (dp = 1) holding all t_sum = T tokens and
    whole experts on each device (tp = 1, or pure EP with tp = ep = 8), that is the plain
    replica's pass (`dense_s`): DeepSeek-V3's 3 dense and 58 MoE layers, on and between grid
    points; any expert or non-expert op lost or counted twice in the split shows here. The one
    difference is the EP exchange: the attention-DP path's ranks hold distinct tokens and swap them
    in two all-to-alls per MoE layer, while the plain replica's EP ranks (inside its TP group) hold
    every token and need none (vLLM FusedMoE without DP, TensorRT-LLM CutlassFusedMoE without
    attention DP); on grid points it is exactly those two all-to-alls. Both with the measured
    fused-MoE kernel and with the grouped-GEMM experts (no table)."""
    from hwmodels.collectives import collective_s
    from simulator.precision import ACT_BYTES
    m, cl = load_model("deepseek-v3"), load_cluster("dgx-h200")
    c = IterationCost(m, cl, tp, ep=tp, dtype="fp8")
    assert c.heads == m.num_heads // tp
    if not fused:
        c._moe = None
    for T in ((16, 1000, 4096) if tp == 1 else (16, 4096)):
        a2a = 0.0 if tp == 1 else collective_s(cl, "all_to_all", tp, 1,
                                               float(T * m.experts_per_token * m.hidden_size * ACT_BYTES))
        assert c.dense_dp_s(T, T) - c.dense_s(T) == pytest.approx(2 * m.num_moe_layers * a2a, rel=1e-9, abs=1e-12)


def test_four_pipeline_stages_pay_three_activation_sends_per_pass(h100):
    """A pass crosses each of the pp − 1 stage boundaries once (Llama 3 70B, TP 2 × PP 4, 1024
    tokens of 8192 bf16 values, send/recv between GPUs tp = 2 apart)."""
    m = load_model("llama3-70b")
    pp1, pp4 = IterationCost(m, h100, 2, 1), IterationCost(m, h100, 2, 4)
    send = collective_s(h100, "send_recv", 2, 2, float(1024 * 8192 * 2))
    assert pp4.dense_s(1024) == pytest.approx(pp1.dense_s(1024) + 3 * send, rel=1e-12)


def test_one_busy_attention_dp_rank_pays_for_the_padded_ranks():
    """An attention-DP replica (Qwen3-30B-A3B, 2 ranks of 1 H200, experts over both) with one
    rank decoding 16 requests and the other idle: decode-only passes are padded to the busiest
    rank (CUDA graphs; sglang DpPaddingMode.MAX_LEN), so the experts see 2 × 16 tokens. A lone
    rank's linear layers (`dense_s`, as the replica's idle-prefill estimate uses them) cost the
    same padded pass: the decode pass is dense_s + LM head + the rank's decode attention."""
    ic = IterationCost(load_model("qwen3-30b-a3b"), load_cluster("dgx-h200"), 1, ep=2, dtype="fp8", dp=2)
    dec = _batch(decodes=16, kv=16 * 1000)
    full = ic.iteration_dp_s([dec, Batch()])
    assert full == pytest.approx(ic.dense_s(16) + ic.lm_head_s(16) + ic.decode_attention_s(16, 16000), rel=1e-12)
    assert ic.dense_s(16) == pytest.approx(ic.dense_dp_s(16, 32), rel=1e-12)
    assert ic.dense_s(16) > ic.dense_dp_s(16, 16)


def test_an_attention_dp_replicas_stages_pay_one_activation_send_per_boundary():
    """Attention DP with 2 pipeline stages (Qwen3-30B-A3B on H200, 2 ranks of tp 1): the busiest
    rank's activations (t_max tokens × 2048 bf16 values) cross the one stage boundary once per
    pass, a send/recv between two GPUs, whatever the experts receive."""
    m, h200 = load_model("qwen3-30b-a3b"), load_cluster("dgx-h200")
    pp1 = IterationCost(m, h200, 1, 1, ep=2, dtype="fp8", dp=2)
    pp2 = IterationCost(m, h200, 1, 2, ep=2, dtype="fp8", dp=2)
    send = collective_s(h200, "send_recv", 2, 1, float(700 * 2048 * 2))
    assert send > 0
    assert pp2.dense_dp_s(700, 1000) == pytest.approx(pp1.dense_dp_s(700, 1000) + send, rel=1e-12)


def test_a_one_token_attention_dp_pass_still_reads_every_weight():
    """Decode at a batch of one is weight-read bound (every linear layer streams its weights
    whatever the rows): an attention-DP pass with one decoding request (Qwen3-30B-A3B, 2 ranks)
    costs more than half what one with two does (the two reach more of the 128 experts, top-8
    each), not nothing."""
    ic = IterationCost(load_model("qwen3-30b-a3b"), load_cluster("dgx-h200"), 1, ep=2, dtype="fp8", dp=2)
    assert ic.dense_dp_s(2, 4) > ic.dense_dp_s(1, 2) > 0.5 * ic.dense_dp_s(2, 4)
    one = ic.iteration_dp_s([_batch(decodes=1, kv=1000), Batch()])
    assert one == pytest.approx(ic.dense_dp_s(1, 2) + ic.lm_head_s(1) + ic.decode_attention_s(1, 1000), rel=1e-12)


# ---- routed experts from the measured fused-MoE kernel (profiles.MoETable) ---------------------
def _aic_profiles():
    """hwmodels.profiles, or skip where aiconfigurator-core's tables are not installed."""
    pytest.importorskip("aiconfigurator_core")
    from hwmodels import profiles
    if not profiles.aiconfigurator_systems():
        pytest.skip("aiconfigurator-core tables not installed")
    return profiles


def test_moe_layer_takes_the_measured_fused_kernel():
    profiles = _aic_profiles()
    from simulator.ops import SERVING_ENGINE, LayerPass, transformer_layer
    m, c = load_model("qwen3-235b-a22b"), load_cluster("dgx-h100")
    ic = IterationCost(m, c, 8, ep=8, dtype="bf16", engine="vllm")
    assert ic._moe is not None and ic._moe[1:] == ("bfloat16", 1, 8)
    T = 4096
    fused = ic.fused_moe_s(T)
    tab = profiles.load_moe_table("h100_sxm", "vllm")
    raw = tab.time_s(T, "bfloat16", 4096, 1536, 8, 128, 1, 8, "power_law_1.01")
    # at sustained clocks (KernelModel.sustained_s): between the burst time and the fully
    # clock-bound one; a decode-sized call, which streams expert weights, keeps its burst time
    assert raw < fused <= raw * ic.km._scale * (1 + 1e-12)
    raw4 = tab.time_s(4, "bfloat16", 4096, 1536, 8, 128, 1, 8, "power_law_1.01")
    assert ic.fused_moe_s(4) == pytest.approx(raw4, rel=0.01)
    # the rule by hand at 2,048 tokens: FLOPs 2·T·k·3·h·f / ep over the bytes of the expected distinct
    # local experts (1 − (1 − 1/E)^(T·k) of E/ep) at 2 B/weight plus the tokens in and out
    Tm, h, f, E, k = 2048, 4096, 1536, 128, 8
    flops = 2.0 * Tm * k * 3 * h * f / 8
    nbytes = E / 8 * (1 - (1 - 1 / E) ** (Tm * k)) * 3 * h * f * 2 + 2 * Tm * h * 2
    bound = min(1.0, flops / nbytes / ic.km._ridge)
    rawm = tab.time_s(Tm, "bfloat16", h, f, k, E, 1, 8, "power_law_1.01")
    assert ic.fused_moe_s(Tm) == pytest.approx(rawm * (1 + (1 / ic.km.sustained_factor - 1) * bound), rel=1e-9)
    assert 0.05 < bound < 0.95  # a point where the weighting matters
    lp = LayerPass(tokens=T, tp=8, ep=8, ep_distinct_tokens=False, expert_tp=1, kv_bytes=2,
                   kernels=SERVING_ENGINE)
    ops = transformer_layer(m, lp, ic.km, ic.km16, ic._comm_s, True, "fwd")
    rest = sum(o.time_s for o in ops if not o.name.startswith(("expert_fc1", "expert_fc2", "expert_act")))
    assert ic._layer_s(T, True) == pytest.approx(rest + fused)
    # switched off (no table): the grouped-GEMM experts, which run far faster than the measured
    # fused kernel at this size
    off = IterationCost(m, c, 8, ep=8, dtype="bf16", engine="vllm")
    off._moe = None
    assert off._layer_s(T, True) < 0.8 * ic._layer_s(T, True)
    # the balanced load reads another curve; a bad load name is refused
    bal = IterationCost(m, c, 8, ep=8, dtype="bf16", engine="vllm", moe_load="balanced")
    assert bal.fused_moe_s(T) < fused
    with pytest.raises(InputError, match="moe_load"):
        IterationCost(m, c, 8, ep=8, moe_load="zipf")
    with pytest.raises(InputError, match="moe_quant"):
        IterationCost(m, c, 8, ep=8, moe_quant="int3")


def test_moe_quant_picks_the_checkpoints_kernel_and_dense_models_skip_it():
    _aic_profiles()
    m, c = load_model("qwen3-235b-a22b"), load_cluster("dgx-h100")
    per_tensor = IterationCost(m, c, 8, ep=8, dtype="fp8", engine="vllm")
    block = IterationCost(m, c, 8, ep=8, dtype="fp8", engine="vllm", moe_quant="fp8_block")
    assert per_tensor._moe[1] == "fp8" and block._moe[1] == "fp8_block"
    assert block.fused_moe_s(64) != per_tensor.fused_moe_s(64)
    # GPT-OSS on Hopper: 16-bit attention, MXFP4 experts with 16-bit activations
    g = IterationCost(load_model("gpt-oss-120b"), load_cluster("dgx-h200"), 1, dtype="bf16",
                      engine="vllm", moe_quant="w4a16_mxfp4")
    assert g._moe[1] == "w4a16_mxfp4"
    assert IterationCost(load_model("llama3.1-8b"), c, 1)._moe is None
