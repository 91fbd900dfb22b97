"""Pins of per-device training memory (`simulator.memory.stage_memory`) against the formulas of
Korthikanti et al. 2022 (arXiv 2205.05198) §4, written out here independently of the code."""
import pytest

from simulator.memory import stage_memory
from simulator.models import load_model, with_overrides
from simulator.training import TrainingJob, parse_plan

GiB = 2 ** 30


def _acts(model, seq, plan_text, devices, stage=0, **job):
    plan = parse_plan(plan_text, devices)
    return stage_memory(model, TrainingJob(model, seq, 256, **job), plan, stage)["activations_bytes"]


def test_moe_activations_keep_one_copy_per_routed_expert():
    """Every token is routed to its top-k experts; each copy keeps the expert input (2h bytes),
    the gate and up projections (2·2f) and the activation output (2f) for backward. Going from
    top-1 to top-2 routing adds one such copy per token on every MoE layer (÷t with SP)."""
    base = load_model("mixtral-8x7b")
    s, t = 4096, 2
    a1 = _acts(with_overrides(base, experts_per_token=1), s, "tp=2,ep=8,sp=on", 64)
    a2 = _acts(with_overrides(base, experts_per_token=2), s, "tp=2,ep=8,sp=on", 64)
    h, f, layers = base.hidden_size, base.moe_ffn_hidden_size, base.num_layers
    per_copy = s * (2 * h + 2 * 2 * f + 2 * f) / t
    assert a2 - a1 == pytest.approx(layers * per_copy, rel=1e-6)


def test_mixtral_8x7b_activations_match_korthikanti_generalised():
    """Mixtral 8x7B, s=4096, b=1, tp=2 with SP, flash attention, dropout on, 1F1B pp=1:
    per layer (bytes, everything ÷t with SP):
      norms, block inputs, QKV and MLP inputs 8sbh, two dropout masks 2sbh,
      Q, K, V and attention output 2sb(q + kv) + 2sb·kv + 2sb·h,
      fp32 log-sum-exp 4sb·a (FlashAttention-2),
      k = 2 routed copies of 2h + 3·2f;
    plus fp32 logits 4·s·V/t of one micro-batch. ≈ 15.5 GiB."""
    m = load_model("mixtral-8x7b")
    s, t, h, a = 4096, 2, m.hidden_size, m.num_heads
    q, kv, f, k, V = 4096, 1024, m.moe_ffn_hidden_size, 2, m.vocab_size
    assert (m.q_dim, m.kv_dim, m.experts_per_token) == (q, kv, k)
    layer = (10 * s * h + 2 * s * (q + kv) + 2 * s * kv + 2 * s * h + 4 * s * a
             + s * k * (2 * h + 2 * 2 * f + 2 * f)) / t
    expected = m.num_layers * layer + 4 * s * V / t
    got = _acts(m, s, "tp=2,ep=8,sp=on", 64)
    assert got == pytest.approx(expected, rel=0.01)
    assert got / GiB == pytest.approx(15.5, rel=0.01)


def test_last_stage_keeps_fp32_logits_of_one_micro_batch():
    """The cross-entropy backward needs the fp32 logits of the micro-batch: 4·b·s·V/t bytes on the
    last pipeline stage. A larger vocabulary adds exactly that (transformer layers unchanged)."""
    base = load_model("llama3-8b")
    s, t, mb = 4096, 2, 2
    small = with_overrides(base, vocab_size=32_000)
    large = with_overrides(base, vocab_size=128_000)
    for plan, stage in (("tp=2,mb=2", 0), ("tp=2,pp=2,mb=2", 1)):
        d = (_acts(large, s, plan, 8, stage=stage) - _acts(small, s, plan, 8, stage=stage))
        assert d == pytest.approx(4 * mb * s * (128_000 - 32_000) / t, rel=1e-6)


def test_first_stage_of_a_pipeline_does_not_hold_logits():
    base = load_model("llama3-8b")
    small = with_overrides(base, vocab_size=32_000)
    large = with_overrides(base, vocab_size=128_000)
    assert _acts(large, 4096, "tp=2,pp=2", 8, stage=0) == _acts(small, 4096, "tp=2,pp=2", 8, stage=0)


def test_logits_are_part_of_the_peak():
    """The logits count towards the peak a user compares with HBM."""
    base = load_model("llama3-8b")
    plan = parse_plan("tp=2,pp=2", 8)
    small, large = with_overrides(base, vocab_size=32_000), with_overrides(base, vocab_size=128_000)
    pk = lambda m: stage_memory(m, TrainingJob(m, 4096, 256), plan, 1)  # noqa: E731
    extra_weights = (pk(large)["weights_bytes"] + pk(large)["gradients_bytes"] + pk(large)["optimizer_bytes"]
                     - pk(small)["weights_bytes"] - pk(small)["gradients_bytes"] - pk(small)["optimizer_bytes"])
    logits = 4 * 4096 * 96_000 / 2
    d = pk(large)["peak_bytes"] - pk(small)["peak_bytes"] - extra_weights
    assert d >= logits


def test_llama2_7b_gated_mlp_activations_korthikanti_generalised():
    """Llama 2 7B (MHA, SwiGLU f = 11008), s = 4096, b = 1, no TP, flash attention, no dropout:
    per layer 8sbh (norm inputs, block inputs, QKV and MLP inputs) + Q, K, V and attention output
    2sb(q + kv) + 2sb·kv + 2sb·h + fp32 log-sum-exp 4sb·a + the gate and up outputs 2·2sb·f and
    the SiLU·up output 2sb·f (a gated MLP keeps two f-wide tensors before the activation, GELU one)."""
    m = load_model("llama2-7b")
    s, h, a, f = 4096, 4096, 32, 11008
    layer = 8 * s * h + 2 * s * (h + h) + 2 * s * h + 2 * s * h + 4 * s * a + 2 * s * f * 2 + 2 * s * f
    got = _acts(m, s, "pp=2,mb=1,zero=0", 2, stage=0, dropout=False)  # first stage: no logits
    inflight = 2  # 1F1B, stage 0 of 2 keeps p = 2 micro-batches
    assert got == pytest.approx(inflight * 16 * layer, rel=1e-9)


def test_expert_tensor_parallelism_splits_each_expert():
    """Megatron-Core expert mesh: a rank holds E/ep experts, each 1/etp of an expert
    (Mixtral 8x7B, 8 experts of 3·4096·14336 parameters, ep=4, etp=2: 2 experts × half)."""
    from simulator.memory import placement, stage_params
    m = load_model("mixtral-8x7b")
    pl = placement(m, "1f1b", 1, 1)
    _, expert = stage_params(m, pl, 1, 4, 2)
    assert float(expert[0]) == pytest.approx(32 * 2 * 3 * 4096 * 14336 / 2)


def test_chunk_ranges_follow_an_uneven_split():
    """first=3,last=2 over pp=4 of a 13-layer model: chunks hold 3, 4, 4, 2 layers, so chunk 2
    is layers 7..10 (range(7, 11)) and the last is 11..12."""
    from simulator.memory import placement
    from simulator.training import parse_plan as pp_
    m = with_overrides(load_model("llama2-7b"), num_layers=13)
    plan = pp_("pp=4,first=3,last=2", 4)
    pl = placement(m, plan.schedule, 4, 1, plan.split)
    assert [pl.chunk_range(c) for c in range(4)] == [range(0, 3), range(3, 7), range(7, 11), range(11, 13)]


def test_a_dense_layer_among_moe_layers_keeps_the_dense_mlp_activations():
    """Mixtral 8x7B with its first layer dense (DeepSeek's first_k_dense_replace = 1): that layer
    keeps the dense gated MLP's 2·2sf + 2sf bytes instead of k = 2 routed copies of
    2h + 2·2f + 2f, the rest of the layer alike (tp=2 with SP: everything ÷t)."""
    base = load_model("mixtral-8x7b")
    s, t, h, f, k = 4096, 2, base.hidden_size, base.moe_ffn_hidden_size, 2
    assert base.ffn_hidden_size == f
    a0 = _acts(base, s, "tp=2,ep=8,sp=on", 64)
    a1 = _acts(with_overrides(base, first_dense_layers=1), s, "tp=2,ep=8,sp=on", 64)
    dense_mlp = 2 * s * f * 2 + 2 * s * f
    moe_mlp = s * k * (2 * h + 2 * 2 * f + 2 * f)
    assert a1 - a0 == pytest.approx((dense_mlp - moe_mlp) / t, rel=1e-9)


def test_zero3_holds_the_gathered_current_and_next_layer():
    """FSDP FULL_SHARD / ZeRO-3 gathers a layer's parameters before running it and prefetches the
    next: two layers of 16-bit parameters sit in the communication buffers. Llama 2 7B layer:
    4h² attention + 3hf SwiGLU + 2h norms = 202,383,360 parameters -> 2 × 2 B × that = 809,533,440
    bytes more than ZeRO-1 on the same 8 ranks (the NCCL buffers are the same)."""
    m = load_model("llama2-7b")
    h, f = 4096, 11008
    layer = 4 * h * h + 3 * h * f + 2 * h
    assert layer == 202_383_360
    job = TrainingJob(m, 4096, 64)
    z3 = stage_memory(m, job, parse_plan("zero=3,mb=1", 8), 0)["comm_buffers_bytes"]
    z1 = stage_memory(m, job, parse_plan("zero=1,mb=1", 8), 0)["comm_buffers_bytes"]
    assert z3 - z1 == pytest.approx(2 * 2 * layer)


def test_te_fp8_keeps_each_linear_input_quantised_for_wgrad():
    """Transformer Engine saves the FP8 input of every linear layer for its weight gradient
    (transformer_engine/pytorch/module/linear.py `saved_inputmat = inputmat`): in FP8 recipes the
    QKV, proj, fc1 and fc2 inputs cost 1 byte per element instead of 2, the rest of Korthikanti's
    activations stay 16-bit; NVFP4 keeps 4.5 bits; torchao's Float8Linear keeps the 16-bit input."""
    from dataclasses import replace
    from simulator.memory import layer_activation_bytes
    from simulator.models import load_model
    from simulator.training import TrainingJob, TrainingPlan
    m = load_model("llama3-8b")
    plan = TrainingPlan(dp=8, mb=1, recompute="none")
    job16 = TrainingJob(model=m, seq_len=4096, global_batch=8, dtype="bf16", dropout=False)
    bf16 = layer_activation_bytes(m, job16, plan, False)
    linear_inputs = 4096 * (m.hidden_size + m.attn_out_dim + m.hidden_size + m.ffn_hidden_size)
    fp8 = layer_activation_bytes(m, replace(job16, dtype="fp8"), plan, False)
    assert bf16 - fp8 == pytest.approx(linear_inputs * (2 - 1))
    fp4 = layer_activation_bytes(m, replace(job16, dtype="fp4"), plan, False)
    assert bf16 - fp4 == pytest.approx(linear_inputs * (2 - 0.5625))
    torchao = layer_activation_bytes(m, replace(job16, dtype="fp8", fp8_dynamic_casts=True), plan, False)
    assert torchao == pytest.approx(bf16)


def test_mtp_activations_sit_on_the_last_stage_only():
    """DeepSeek-V3 §2.2 with the loss on the last pipeline stage (Megatron-Core --mtp-num-layers):
    per MTP depth the last stage keeps one more set of fp32 logits (4·T·V bytes) and, for each
    micro-batch in flight (1 on 1F1B's last stage), one block's activations plus the projection's
    2h-wide bf16 input (2·T·2h bytes); the first stage keeps exactly what it keeps without MTP.
    A small DeepSeek-V3-shaped config (4 layers, 2 MTP depths) on pp = 2, 2 micro-batches."""
    from dataclasses import replace

    from simulator.memory import layer_activation_bytes
    from simulator.models import from_hf_config
    cfg = {"model_type": "deepseek_v3", "num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4,
           "intermediate_size": 512, "vocab_size": 1000, "num_nextn_predict_layers": 2}
    m = from_hf_config(cfg)
    m0 = replace(m, mtp_layers=0)
    assert m.mtp_layers == 2 and not m.mtp_is_moe
    T = 512
    job, job0 = TrainingJob(m, T, 4), TrainingJob(m0, T, 4)
    plan = parse_plan("pp=2,dp=1,mb=1", 2)
    first = [stage_memory(x, j, plan, 0)["activations_bytes"] for x, j in ((m, job), (m0, job0))]
    assert first[0] == first[1]
    last = stage_memory(m, job, plan, 1)["activations_bytes"] - stage_memory(m0, job0, plan, 1)["activations_bytes"]
    block = layer_activation_bytes(m, job, plan, False)
    assert last == pytest.approx(2 * (4 * T * 1000 + block + 2 * T * 2 * 256), rel=1e-12)


def test_nccl_buffers_per_communicator_as_measured_on_h100():
    """aiconfigurator-core 0.12.0 systems/h100_sxm.yaml misc.nccl_mem: 342 MiB for a 2-GPU
    communicator, 392 MiB for 4 or 8; a group of one rank has no communicator."""
    model = load_model("llama3-8b")
    job = TrainingJob(model, 2048, 64)

    def comm(text, n):
        return stage_memory(model, job, parse_plan(text, n), 0)["comm_buffers_bytes"]
    assert comm("tp=1,dp=1", 1) == 0
    assert comm("tp=2,dp=1", 2) == 342 * 2 ** 20
    assert comm("tp=1,dp=2", 2) == 342 * 2 ** 20
    assert comm("tp=2,dp=4", 8) == 342 * 2 ** 20 + 392 * 2 ** 20
    # the pipeline's send/recv communicator between stages too
    assert comm("pp=2,dp=1", 2) == 342 * 2 ** 20
    assert comm("tp=2,pp=4,dp=1", 8) == 342 * 2 ** 20 + 392 * 2 ** 20


def test_a_batch_of_plans_of_different_meshes_equals_each_plan_alone():
    """The planner scores arrays of candidate plans (planner/search.py): one memory evaluation per
    mesh shape, scattered back; each plan's stages equal its own evaluation and the stages beyond
    its pp stay 0 (so a maximum over stages is the plan's own)."""
    from simulator.memory import MEMORY_PARTS, memory_parts
    from simulator.training import PlanBatch
    model = load_model("llama3-8b")
    job = TrainingJob(model, 2048, 64)
    plans = [parse_plan(t, 8) for t in ("tp=8", "pp=2,tp=4", "pp=4,tp=2", "tp=2,dp=4,zero=1")]
    many = memory_parts(job, PlanBatch.of(plans))
    for i, plan in enumerate(plans):
        one = memory_parts(job, PlanBatch.of([plan]))
        for k in MEMORY_PARTS:
            row = getattr(many, k)[i]
            assert list(row[:plan.pp]) == list(getattr(one, k)[0]), (k, i)
            assert all(x == 0 for x in row[plan.pp:]), (k, i)
        assert many.peak_bytes[i, 0] > 0


@pytest.mark.parametrize("dtype,gi", [("bf16", 2), ("fp8", 1)])
def test_a_shared_expert_keeps_a_gated_mlps_activations_for_every_token(dtype, gi):
    """DeepSeek-V3's shared expert (DeepSeekMoE, arXiv 2401.06066 §3.2) runs on every token like a
    gated MLP of width 2048: per token its gate and up outputs (2·2·f bytes, bf16) and the
    activation output that feeds fc2, kept in the linear layer's saved-input format (Transformer
    Engine: 1 byte in FP8, 2 in bf16): (4 + gi)·f per token, tp = 1."""
    from simulator.memory import layer_activation_bytes
    ds = load_model("deepseek-v3")
    no_shared = with_overrides(ds, num_shared_experts=0)
    plan = parse_plan("ep=8", 8)
    s = 4096
    with_s = layer_activation_bytes(ds, TrainingJob(ds, s, 256, dtype=dtype), plan, True)
    without = layer_activation_bytes(no_shared, TrainingJob(no_shared, s, 256, dtype=dtype), plan, True)
    assert with_s - without == pytest.approx(s * (4 + gi) * 2048, rel=1e-12)
    # DeepSeek-V2: 2 shared experts of 1536 act as one gated MLP of 2 × 1536 (DeepSeekMoE §3.2)
    v2 = load_model("deepseek-v2")
    v2_0 = with_overrides(v2, num_shared_experts=0)
    assert v2.num_shared_experts == 2 and v2.moe_ffn_hidden_size == 1536
    d = (layer_activation_bytes(v2, TrainingJob(v2, s, 256, dtype=dtype), plan, True)
         - layer_activation_bytes(v2_0, TrainingJob(v2_0, s, 256, dtype=dtype), plan, True))
    assert d == pytest.approx(s * (4 + gi) * 2 * 1536, rel=1e-12)


def test_expert_tp_splits_the_mtp_models_experts_too():
    """Expert tensor parallelism splits every expert over etp ranks, the main model's and the MTP
    block's (DeepSeek-V3, 58 MoE layers + 1 MTP MoE block, ep = 8): etp = 2 halves a rank's
    expert parameters."""
    from simulator.memory import placement, stage_params
    ds = load_model("deepseek-v3")
    pl = placement(ds, "1f1b", 1, 1)
    _, e1 = stage_params(ds, pl, 2, 8, 1)
    _, e2 = stage_params(ds, pl, 2, 8, 2)
    assert float(e1[0]) == pytest.approx((58 + 1) * 256 / 8 * ds.expert_params(), rel=1e-12)
    assert float(e2[0]) == pytest.approx(float(e1[0]) / 2, rel=1e-12)


def test_tied_embeddings_give_the_last_stage_its_own_copy():
    """GPT-3 ties the LM head to the input embedding (Megatron shares them across stages: with
    pp > 1 the last stage keeps its own copy of the vocab×h matrix, kept in sync by an all-reduce
    of its gradient, megatron/core/models/common/language_module.py)."""
    from simulator.memory import placement, stage_params
    m = load_model("gpt3-175b")
    assert m.tie_embeddings
    dense, _ = stage_params(m, placement(m, "1f1b", 2, 1), 8, 1)
    layers = m.layer_params(0) * (m.num_layers // 2) / 8
    assert dense[1] - layers == pytest.approx((m.head_params() + m.vocab_size * m.hidden_size) / 8, rel=1e-9)
    assert dense[0] - layers == pytest.approx(m.embedding_params() / 8, rel=1e-9)
