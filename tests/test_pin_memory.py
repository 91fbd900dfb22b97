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


def _llama2_7b_layer(s):
    """Korthikanti et al. 2022 §4 generalised (as in the Llama 2 7B pin above): one layer's
    activations at b = 1, no TP, flash attention, no dropout."""
    h, a, f = 4096, 32, 11008
    return 8 * s * h + 2 * s * (h + h) + 2 * s * h + 2 * s * h + 4 * s * a + 2 * s * f * 2 + 2 * s * f


@pytest.mark.parametrize("extra,kept_inputs,rebuilt",
                         [("", 16, 1), (",recompute_layers=4,recompute_method=uniform", 4, 4)])
def test_full_recompute_keeps_layer_inputs_and_rebuilds_one_group(extra, kept_inputs, rebuilt):
    """Full recomputation (Korthikanti et al. 2022 §5: 2sbh per layer, the layer input) on
    Llama 2 7B, pp = 2, stage 0 (16 layers, 1F1B: 2 micro-batches in flight, no logits). Megatron-Core
    megatron/core/transformer/transformer_block.py `_checkpointed_forward`: with no
    recompute-num-layers every layer is its own checkpoint and its backward rebuilds that one layer
    (its whole activations live once); `uniform` with N = 4 checkpoints the input of each group of 4
    layers (16/4 = 4 inputs per micro-batch) and rebuilds a whole group of 4 layers at once."""
    m = load_model("llama2-7b")
    s, h = 4096, 4096
    got = _acts(m, s, "pp=2,mb=1,zero=0,recompute=full" + extra, 2, stage=0, dropout=False)
    inflight = 2
    expected = inflight * kept_inputs * 2 * s * h + rebuilt * _llama2_7b_layer(s)
    assert got == pytest.approx(expected, rel=1e-9)


def test_block_recompute_each_layer_left_alone_adds_block_layer_bytes():
    """Megatron-Core --recompute-method block (transformer_block.py `_checkpointed_forward`): the
    first N layers of each model chunk keep only their input (2sbh, Korthikanti et al. 2022 §5),
    the others keep their whole activations (Korthikanti §4), for every micro-batch in flight; one
    layer is rebuilt at a time. Llama 2 7B, pp = 2, stage 0 (one chunk of 16 layers, 2 micro-batches
    in flight): each layer left un-recomputed adds 2·(layer − 2sbh) of activations, plus the
    allocator reserve's share of it (`FRAGMENTATION`), which is what planner/search.py
    `_fewest_recomputed` reads from `MemoryParts.block_layer_bytes`."""
    from simulator.memory import FRAGMENTATION, plan_memory
    m = load_model("llama2-7b")
    s, h, inflight = 4096, 4096, 2
    job = TrainingJob(m, s, 256, dropout=False)
    layer = _llama2_7b_layer(s)
    per_layer = inflight * (layer - 2 * s * h) * (1 + FRAGMENTATION)
    peaks = {}
    for n in (16, 10):
        mem = plan_memory(m, job, parse_plan(f"pp=2,mb=1,zero=0,recompute=full,recompute_layers={n}", 2))
        assert float(mem.block_layer_bytes[0, 0]) == pytest.approx(per_layer, rel=1e-9)
        acts = float(mem.activations_bytes[0, 0])
        assert acts == pytest.approx(inflight * (n * 2 * s * h + (16 - n) * layer) + layer, rel=1e-9)
        peaks[n] = float(mem.peak_bytes[0, 0])
    assert peaks[10] - peaks[16] == pytest.approx(6 * per_layer, rel=1e-9)


def test_zero1_shards_optimizer_states_over_data_and_context_parallel_ranks():
    """Megatron-Core's distributed optimizer (ZeRO-1, Rajbhandari et al. 2019 §5) shards the fp32
    master weights and Adam moments (12 bytes per parameter) over the data-parallel group with
    context parallelism folded in (megatron/core/parallel_state.py
    get_data_parallel_group(with_context_parallel=True)): Llama 2 7B (6,738,415,616 parameters,
    Touvron et al. 2023) on cp = 2, dp = 4 keeps 12·P/8 per rank; weights and gradients (2 + 2 bytes)
    stay whole."""
    m = load_model("llama2-7b")
    P = 6_738_415_616
    mem = stage_memory(m, TrainingJob(m, 4096, 64), parse_plan("cp=2,dp=4,zero=1", 8), 0)
    assert mem["optimizer_bytes"] == pytest.approx(12 * P / 8, rel=1e-9)
    assert mem["weights_bytes"] == pytest.approx(2 * P, rel=1e-9)
    assert mem["gradients_bytes"] == pytest.approx(2 * P, rel=1e-9)


@pytest.mark.parametrize("zero,dp", [(1, 1), (2, 4)])
def test_lora_gradients_are_the_adapters_only(zero, dp):
    """LoRA (Hu et al. 2021, arXiv 2106.09685 §4.1): the base weights are frozen, each targeted
    linear of k inputs and n outputs gets A (r×k) and B (n×r), and only those r·(k + n) parameters
    carry 16-bit gradients and optimizer states. Megatron-Bridge's targets (peft/lora.py:
    linear_qkv, linear_proj, linear_fc1, linear_fc2) on Llama 2 7B, r = 16: the fused QKV h→3h,
    proj h→h, the gated fc1 h→2f and fc2 f→h on 32 layers; ZeRO-1 shards the optimizer states and
    ZeRO-2 the gradients over dp (Rajbhandari et al. 2019 §5)."""
    m = load_model("llama2-7b")
    h, f, r = 4096, 11008, 16
    per_layer = r * (h + 3 * h) + r * (h + h) + r * (h + 2 * f) + r * (f + h)
    job = TrainingJob(m, 4096, 64, lora_rank=r)
    mem = stage_memory(m, job, parse_plan(f"dp={dp},zero={zero}", dp), 0)
    assert mem["gradients_bytes"] == pytest.approx(2 * 32 * per_layer / dp, rel=1e-9)
    # the adapters' fp32 master weights and Adam moments (12 bytes), sharded over dp from ZeRO-1
    assert mem["optimizer_bytes"] == pytest.approx(12 * 32 * per_layer / dp, rel=1e-9)
    # below ZeRO-3 every rank holds the whole 16-bit weights: the base model and the adapters
    assert mem["weights_bytes"] == pytest.approx(2 * (6_738_415_616 + 32 * per_layer), rel=1e-9)


def test_hybrid_moe_layer_activations_with_expert_tp():
    """Nemotron 3 Nano (hybrid Mamba-2/attention/MoE; h = 2688, 6 routed experts of f = 1856 with a
    squared-ReLU MLP, 2 shared experts) — one MoE layer, s = 4096, b = 2, bf16, no dropout, tp = 2
    with SP (everything ÷t, Korthikanti et al. 2022 §4.2.2): the norm input and the block input
    (2 + 2)·sbh; per routed copy (top-k = 6) the experts' input, all-gathered over the expert-TP
    group before the expert GEMMs so etp × 2h (Megatron-Core token_dispatcher.py
    dispatch_postprocess), fc1's output 2f and the activation output 2f; the shared experts
    (DeepSeekMoE, arXiv 2401.06066 §3.2) as one MLP of 2·1856: 2f_s + 2f_s per token."""
    from simulator.memory import layer_activation_bytes
    from simulator.training import TrainingPlan
    m = load_model("nemotron-3-nano-30b-a3b")
    s, b, t, h, k, f = 4096, 2, 2, 2688, 6, 1856
    fs = 2 * f
    assert (m.hidden_size, m.experts_per_token, m.moe_ffn_hidden_size, m.num_shared_experts) == (h, k, f, 2)
    job = TrainingJob(m, s, 256, dropout=False)
    for etp in (1, 2):
        plan = TrainingPlan(tp=t, sp=True, ep=8, etp=etp, mb=b, recompute="none")
        expected = s * b * (4 * h + k * (2 * h * etp + 2 * f + 2 * f) + 2 * fs + 2 * fs) / t
        assert layer_activation_bytes(m, job, plan, True) == pytest.approx(expected, rel=1e-9)


def test_a_loss_only_stage_rebuilds_no_layer_under_full_recompute():
    """Megatron-Core's pipeline layout (docs/user-guide/features/pipeline_parallel_layout.md,
    e.g. DeepSeek-V3's "...|L"): "Et*32|L" on pp = 2 puts all 32 Llama 2 7B layers on stage 0 and
    only the output layer and loss on stage 1. Under full recompute stage 1 has no layer to rebuild
    in its backward: it keeps the fp32 logits of one micro-batch, 4·s·b·V bytes, and nothing else;
    stage 0 keeps each layer's input 2sbh (Korthikanti et al. 2022 §5) for its 2 micro-batches in
    flight plus the one layer rebuilt at a time (Korthikanti §4)."""
    m = load_model("llama2-7b")
    s, h, V = 4096, 4096, 32_000
    plan = "pp=2,mb=1,zero=0,recompute=full,layout=Et*32|L"
    assert _acts(m, s, plan, 2, stage=1, dropout=False) == pytest.approx(4 * s * V, rel=1e-12)
    assert _acts(m, s, plan, 2, stage=0, dropout=False) == pytest.approx(2 * 32 * 2 * s * h + _llama2_7b_layer(s),
                                                                         rel=1e-9)


@pytest.mark.parametrize("extra,recomputed", [("", True), (",recompute_layers=1,recompute_method=block", False)])
def test_mtp_blocks_keep_their_input_only_when_full_recompute_reruns_them(extra, recomputed):
    """Megatron-Core megatron/core/transformer/multi_token_prediction.py: with full recompute the
    MTP blocks run their forward again in backward and keep only their input, 2·T·h (Korthikanti et
    al. 2022 §5), besides the 2h-wide projection input 2·T·2h and the depth's fp32 logits 4·T·V;
    with recompute_method block it logs "recompute_method == 'block' is not supported for MTP yet.
    Skipping recompute", so each depth keeps a whole block's activations (Korthikanti §4, as with
    recompute none). Small DeepSeek-V3-shaped config (2 MTP depths, dense), pp = 2, last stage
    (1 micro-batch in flight)."""
    from dataclasses import replace

    from simulator.memory import layer_activation_bytes
    from simulator.models import from_hf_config
    from simulator.training import TrainingPlan
    cfg = {"model_type": "deepseek_v3", "num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4,
           "intermediate_size": 512, "vocab_size": 1000, "num_nextn_predict_layers": 2}
    m = from_hf_config(cfg)
    m0 = replace(m, mtp_layers=0)
    T, h, V = 512, 256, 1000
    job, job0 = TrainingJob(m, T, 4), TrainingJob(m0, T, 4)
    plan = parse_plan("pp=2,dp=1,mb=1,recompute=full" + extra, 2)
    d = stage_memory(m, job, plan, 1)["activations_bytes"] - stage_memory(m0, job0, plan, 1)["activations_bytes"]
    block = 2 * T * h if recomputed else layer_activation_bytes(m, job, TrainingPlan(recompute="none"), False)
    assert d == pytest.approx(2 * (4 * T * V + block + 2 * T * 2 * h), rel=1e-12)


@pytest.mark.parametrize("flash", [True, False])
def test_hybrid_attention_layer_activations_with_tp_without_sp(flash):
    """Nemotron-H 8B's attention layers ('*': GQA, 32 query heads and 8 KV heads of 128, h = 4096) are
    blocks of their own (Megatron-Core hybrid model): the norm input 2sbh and the QKV GEMM's bf16
    input 2sbh, left whole by TP without SP (Korthikanti et al. 2022 §4.2.1), and ÷t: Q, K (for
    QK^T), V and the attention output 2sb(q + kv) + 2sb·kv + 2sb·h, then either FlashAttention-2's
    fp32 log-sum-exp 4sb·a or, without flash attention and no dropout, the softmax output 2as²b
    (Korthikanti §4.1). s = 2048, b = 2, tp = 2, no SP."""
    from simulator.memory import hybrid_activation_bytes
    from simulator.models import ATTENTION
    from simulator.training import TrainingPlan
    m = load_model("nemotron-h-8b")
    s, b, t, h, a, q, kv = 2048, 2, 2, 4096, 32, 4096, 1024
    assert (m.hidden_size, m.num_heads, m.q_dim, m.kv_dim) == (h, a, q, kv)
    job = TrainingJob(m, s, 256, dropout=False, flash_attention=flash)
    plan = TrainingPlan(tp=t, mb=b, recompute="none")
    sb = s * b
    core = 4 * sb * a if flash else 2 * a * s * s * b
    expected = 4 * sb * h + (2 * sb * (q + kv) + 2 * sb * kv + 2 * sb * h + core) / t
    assert hybrid_activation_bytes(m, job, plan, False, ATTENTION) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("targets", [("qkv", "proj", "fc1", "fc2"), ("qkv", "proj")])
def test_lora_activations_keep_adapter_inputs_and_outputs_only_for_targets(targets):
    """LoRA (Hu et al. 2021, arXiv 2106.09685 §4.1) on Llama 2 7B, r = 16, s = 4096, b = 1, no TP:
    a frozen linear keeps no input for a weight gradient (Transformer Engine linear.py:
    backward_needs_input = is_grad_enabled and weight.requires_grad), a targeted one keeps its
    16-bit input for A's gradient and A's rank-r output (2r bytes per token) for B's. With all four
    targets the layer keeps what full training keeps (Korthikanti et al. 2022 §4) plus 4·2r·sb;
    with only qkv and proj it also drops fc1's input 2sbh and fc2's input 2sbf."""
    from simulator.memory import layer_activation_bytes
    from simulator.training import TrainingPlan
    m = load_model("llama2-7b")
    s, h, f, r = 4096, 4096, 11008, 16
    plan = TrainingPlan(mb=1, recompute="none")
    full = _llama2_7b_layer(s)
    base = layer_activation_bytes(m, TrainingJob(m, s, 8, dropout=False), plan, False)
    assert base == pytest.approx(full, rel=1e-12)
    lora_job = TrainingJob(m, s, 8, dropout=False, lora_rank=r, lora_targets=targets)
    lora = layer_activation_bytes(m, lora_job, plan, False)
    frozen = 0 if len(targets) == 4 else 2 * s * h + 2 * s * f
    assert lora == pytest.approx(full - frozen + len(targets) * 2 * r * s, rel=1e-12)


@pytest.mark.parametrize("zero", [1, 2, 3])
def test_zero_shards_expert_states_over_the_expert_data_parallel_group(zero):
    """ZeRO stage k (Rajbhandari et al. 2019 §5) shards optimizer states from k = 1, gradients from
    k = 2 and weights at k = 3; expert parameters are sharded over the expert data-parallel group,
    tp·cp·dp/(ep·etp) ranks (MoE parallel folding, Liu et al. 2025 arXiv 2504.14960 §3;
    megatron/core/parallel_state.py expert_data_parallel_size). Mixtral 8x7B (46,702,792,704
    parameters, 32 layers × 8 experts × 3·4096·14336 = 45,097,156,608 of them experts) on dp = 8,
    ep = 4: a rank holds 2 of the 8 experts, their states sharded over 8/4 = 2 ranks, and the
    non-expert parameters sharded over all 8."""
    m = load_model("mixtral-8x7b")
    expert = 32 * 8 * 3 * 4096 * 14336
    dense = 46_702_792_704 - expert
    assert expert == 45_097_156_608
    mem = stage_memory(m, TrainingJob(m, 4096, 64), parse_plan(f"dp=8,ep=4,zero={zero}", 8), 0)

    def resident(k):
        return dense / (8 if zero >= k else 1) + expert / 4 / (2 if zero >= k else 1)
    assert mem["optimizer_bytes"] == pytest.approx(12 * resident(1), rel=1e-9)
    assert mem["gradients_bytes"] == pytest.approx(2 * resident(2), rel=1e-9)
    assert mem["weights_bytes"] == pytest.approx(2 * resident(3), rel=1e-9)


def test_hybrid_mlp_layer_activations_with_tp_without_sp():
    """Nemotron-H 8B's MLP layers ('-': squared-ReLU MLP, f = 21504, not gated) are blocks of their
    own (Megatron-Core hybrid model): the norm input 2sbh and fc1's bf16 input 2sbh, left whole by
    TP without SP (Korthikanti et al. 2022 §4.2.1), and ÷t fc1's output 2sbf and the activation
    output (fc2's input) 2sbf (Korthikanti §4.1). s = 2048, b = 2, tp = 2, no SP, no dropout."""
    from simulator.memory import hybrid_activation_bytes
    from simulator.models import MLP
    from simulator.training import TrainingPlan
    m = load_model("nemotron-h-8b")
    s, b, t, h, f = 2048, 2, 2, 4096, 21504
    assert (m.hidden_size, m.ffn_hidden_size, m.gated_mlp) == (h, f, False)
    job = TrainingJob(m, s, 256, dropout=False)
    plan = TrainingPlan(tp=t, mb=b, recompute="none")
    sb = s * b
    expected = 4 * sb * h + (2 * sb * f + 2 * sb * f) / t
    assert hybrid_activation_bytes(m, job, plan, False, MLP) == pytest.approx(expected, rel=1e-9)
