"""Pin tests for simulator.ops (written from surviving mutants): the one transformer-layer
description, checked against the papers its shapes, FLOPs, bytes and collectives come from."""
from __future__ import annotations

import pytest

from hwmodels.clusters import load_cluster
from hwmodels.errors import InputError
from hwmodels.kernels import kernel_model
from simulator.models import load_model, megatron_gpt
from simulator.ops import (MEGATRON, SERVING_ENGINE, LayerPass, attention_gemms, check_supported,
                           kv_cache_elements, layer_cost, layer_ops, rope_elements, transformer_layer)
from simulator.training import TrainingJob, TrainingPlan

H100 = load_cluster("dgx-h100")
GPT = megatron_gpt("gpt-5.9b", 32, 4096, 32, seq_len=2048)  # Narayanan et al. 2021 Table 1 row
S = 2048


def _job(model=GPT, **kw):
    kw.setdefault("flash_attention", True)
    kw.setdefault("dropout", False)
    return TrainingJob(model, S, 64, **kw)


def _ops(plan, phase="fwd", model=GPT, moe=False, **job):
    return layer_ops(model, _job(model, **job), plan, H100, moe, phase)


def _by_name(ops):
    return {o.name: o for o in ops}


# ---- FLOPs (Narayanan et al. 2021 eq. 3; Korthikanti et al. 2022 §5) ---------------------------
def test_layer_flops_are_megatron_equation_3():
    """24·B·s·h²·(1 + s/(6h)) forward FLOPs per layer for a GPT with a 4h GELU MLP (eq. 3 / 3 /
    layers, without the LM head), whatever the TP split."""
    B, h = 2, 4096
    expected = 24 * B * S * h * h * (1 + S / (6 * h))
    for tp in (1, 4):
        lc = layer_cost(GPT, _job(), TrainingPlan(tp=tp, mb=B), H100, False)
        assert lc.fwd_flops == pytest.approx(expected, rel=1e-12)


def test_selective_recompute_reruns_only_the_attention_core():
    """Korthikanti §5: selective recompute re-runs QK^T, softmax, dropout and AV: 4·B·s²·h FLOPs;
    with flash attention the backward kernel recomputes the scores already (nothing extra);
    full recompute re-runs the forward."""
    B, h = 1, 4096
    unfused = layer_cost(GPT, _job(flash_attention=False), TrainingPlan(mb=B, recompute="selective"), H100, False)
    assert unfused.recompute_flops == pytest.approx(4 * B * S * S * h, rel=1e-12)
    attn_s = sum(o.time_s for o in _ops(TrainingPlan(mb=B), flash_attention=False) if o.name.startswith("attn"))
    assert unfused.recompute_s == pytest.approx(attn_s, rel=1e-12)
    flash = layer_cost(GPT, _job(), TrainingPlan(mb=B, recompute="selective"), H100, False)
    assert flash.recompute_flops == 0.0 and flash.recompute_s == 0.0
    # ... and its forward and backward still run the attention kernel, as without recompute
    plain = layer_cost(GPT, _job(), TrainingPlan(mb=B), H100, False)
    assert (flash.fwd_flops, flash.fwd_compute_s, flash.bwd_compute_s) == \
        (plain.fwd_flops, plain.fwd_compute_s, plain.bwd_compute_s)
    full = layer_cost(GPT, _job(), TrainingPlan(mb=B, recompute="full"), H100, False)
    assert full.recompute_flops == full.fwd_flops and full.recompute_s == full.fwd_compute_s
    none = layer_cost(GPT, _job(), TrainingPlan(mb=B), H100, False)
    assert none.recompute_s == 0.0 and none.wgrad_s > 0 and none.bwd_compute_s > none.fwd_compute_s


def test_flash_attention_backward_is_two_and_a_half_forwards():
    """FlashAttention-2 (Dao 2023 §4.1): the backward does 2.5x the forward's FLOPs, in 2.5x its time;
    the causal forward does half of the 4·b·s²·a·d square per rank."""
    plan = TrainingPlan(tp=2, mb=2)
    fwd = _by_name(_ops(plan))["attn"]
    bwd = _by_name(_ops(plan, "bwd"))["attn"]
    assert fwd.flops == pytest.approx(2.0 * 2 * S * S * 16 * 128, rel=1e-12)
    assert bwd.flops == pytest.approx(2.5 * fwd.flops) and bwd.time_s == pytest.approx(2.5 * fwd.time_s)
    km = kernel_model("h100-sxm", "bf16")
    assert fwd.time_s == km.flash_attention_s(2, S, S, 16, 16, 128, True)


def test_unfused_attention_is_megatron_2021s_full_square():
    """Megatron-LM 2021 without flash: baddbmm over the full s x s square (2·b·a·s²·d per GEMM),
    the score matrix through HBM for softmax (read + write, 2 bytes) and dropout (a 1-byte mask)."""
    plan = TrainingPlan(mb=1)
    ops = _by_name(_ops(plan, flash_attention=False, dropout=True))
    scores = 32 * S * S
    assert ops["attn.qk"].flops == ops["attn.av"].flops == pytest.approx(2.0 * scores * 128)
    assert ops["attn.softmax"].bytes == (2 * 2 + (2 * 2 + 1)) * scores
    bwd = _by_name(_ops(plan, "bwd", flash_attention=False, dropout=True))
    assert bwd["attn.qk"].flops == bwd["attn.av"].flops == pytest.approx(4.0 * scores * 128)  # dQ, dK; dA, dV
    assert bwd["attn.softmax"].bytes == (3 * 2 + 2) * scores
    no_drop = _by_name(_ops(plan, flash_attention=False))
    assert no_drop["attn.softmax"].bytes == 2 * 2 * scores


# ---- tensor-parallel collectives (Shoeybi §3; Korthikanti §4.2.2) -------------------------------
def test_tensor_parallel_exchanges_per_layer():
    """Without SP: one all-reduce after the attention and one after the MLP in the forward (g),
    one before each in the backward (f). With SP: all-gather before and reduce-scatter after each
    block in the forward, the reverse in the backward. Each moves the T·h 16-bit activations."""
    T, h = 2 * S, 4096

    def comms(plan, phase):
        return [(o.name, o.bytes, o.group) for o in _ops(plan, phase) if o.kind == "comm"]
    msg = T * h * 2
    assert comms(TrainingPlan(tp=4, mb=2), "fwd") == [("tp.proj", msg, "tp"), ("tp.fc2", msg, "tp")]
    assert [n for n, _, _ in comms(TrainingPlan(tp=4, mb=2), "bwd")] == ["tp.fc1", "tp.qkv"]
    sp = [o for o in _ops(TrainingPlan(tp=4, mb=2, sp=True)) if o.kind == "comm"]
    assert [o.name for o in sp] == ["tp.qkv", "tp.proj", "tp.fc1", "tp.fc2"]
    ops = _ops(TrainingPlan(tp=4, mb=2, sp=True))
    assert [o.time_s for o in sp] == pytest.approx([
        __import__("hwmodels.collectives", fromlist=["x"]).collective_s(H100, op, 4, 1, msg)
        for op in ("all_gather", "reduce_scatter", "all_gather", "reduce_scatter")])
    assert comms(TrainingPlan(tp=1, mb=2), "fwd") == []
    # SP shards the norms along the sequence (T/tp rows)
    norm_sp = _by_name(ops)["norm1"].bytes
    assert norm_sp == 2 * (T // 4) * h * 2
    assert _by_name(_ops(TrainingPlan(tp=4, mb=2)))["norm1"].bytes == 2 * T * h * 2


def test_tp_comm_overlap_hides_behind_its_gemm_except_one_chunk():
    """Transformer Engine userbuffers (Wang et al., ASPLOS 2023): the SP collective is split into
    tp chunks pipelined with its GEMM; the first chunk stays exposed."""
    plan = TrainingPlan(tp=4, mb=2, sp=True)
    ops = _by_name(_ops(plan, overlap_tp_comm=True))
    ag = ops["tp.qkv"]
    assert ag.overlap_with == "qkv" and ag.exposed_floor_s == pytest.approx(ag.time_s / 4)
    plain = _by_name(_ops(plan))["tp.qkv"]
    assert plain.overlap_with == "" and plain.exposed_floor_s == 0.0
    with_overlap = layer_cost(GPT, _job(overlap_tp_comm=True), plan, H100, False)
    without = layer_cost(GPT, _job(), plan, H100, False)
    assert with_overlap.fwd_comm_s["tp"] < without.fwd_comm_s["tp"]
    assert with_overlap.fwd_comm_s["tp"] >= sum(o.time_s for o in ops.values() if o.kind == "comm") / 4 - 1e-12


# ---- memory-bound kernels ----------------------------------------------------------------------
def test_elementwise_bytes_of_the_megatron_layer():
    """LayerNorm reads and writes T·h 16-bit values; bias-dropout-add reads x, bias-add output and
    writes the sum (3 x 2 bytes) plus a 1-byte mask with dropout; the GELU reads and writes the 4h
    activations; the backward reads the incoming gradient too (twice the bytes)."""
    T, h = S, 4096
    f = _by_name(_ops(TrainingPlan(mb=1), dropout=True))
    assert f["norm1"].bytes == 2 * T * h * 2
    assert f["bias_dropout_add1"].bytes == (3 * 2 + 1) * T * h
    assert f["act"].bytes == 2 * T * 4 * h * 2
    b = _by_name(_ops(TrainingPlan(mb=1), "bwd", dropout=True))
    assert b["norm1"].bytes == 2 * f["norm1"].bytes and b["act"].bytes == 2 * f["act"].bytes
    assert _by_name(_ops(TrainingPlan(mb=1)))["bias_dropout_add1"].bytes == 3 * 2 * T * h
    # SwiGLU (Llama) reads gate and up and writes the product: 3 x ffn per token
    llama = load_model("llama3.1-8b")
    a = _by_name(_ops(TrainingPlan(mb=1), model=llama))["act"]
    assert a.bytes == 3 * S * 14336 * 2


def test_serving_kernels_fuse_add_norm_and_write_the_kv_cache():
    """vLLM: fused_add_rms_norm reads x and the residual and writes both (4 x T·h x 2 bytes); the
    rotary kernel reads and writes q and k; reshape_and_cache writes each token's K and V."""
    llama = load_model("llama3.1-8b")
    km = kernel_model("h100-sxm", "bf16")
    T = 512

    def comm(*a):
        return 0.0
    ops = _by_name(transformer_layer(llama, LayerPass(tokens=T, tp=2, kernels=SERVING_ENGINE, kv_bytes=1),
                                     km, km, comm, False, "fwd"))
    assert ops["add_norm1"].bytes == 4 * T * 4096 * 2 and "bias_dropout_add1" not in ops
    assert ops["rope"].bytes == T * 2 * (4096 // 2 + 4 * 128) * 2
    assert ops["kv_write"].bytes == T * 2 * 4 * 128 * 1  # fp8 KV: 1 byte per element
    assert rope_elements(llama, 2) == 2048 + 512
    mega = _by_name(transformer_layer(llama, LayerPass(tokens=T, tp=2), km, km, comm, False, "fwd"))
    assert "rope" not in mega and "kv_write" not in mega and "add_norm1" not in mega


def test_mla_shapes_follow_deepseek_v2():
    """DeepSeek-V3: q_lora 1536, kv_lora 512, 128 heads of 128 + 64 RoPE, v 128. Down-projections
    replicated on every TP rank, up-projections split by heads; the cache holds 512 + 64 per token;
    RoPE rotates q^R per head and the shared k^R."""
    ds = load_model("deepseek-v3")
    g = {n: (nn, k) for n, nn, k in attention_gemms(ds, 8)}
    assert g["qkv.q_down"] == (1536, 7168)
    assert g["qkv.q_up"] == (128 * 192 // 8, 1536)
    assert g["qkv.kv_down"] == (512 + 64, 7168)
    assert g["qkv.kv_up"] == (128 * (128 + 128) // 8, 512)
    assert kv_cache_elements(ds, 1) == 576
    assert rope_elements(ds, 8) == 16 * 64 + 64
    llama = load_model("llama3.1-8b")
    assert attention_gemms(llama, 4) == [("qkv", 4096 // 4 + 2 * 2 * 128, 4096)]
    assert attention_gemms(llama, 16) == [("qkv", 4096 // 16 + 2 * 1 * 128, 4096)]  # KV heads replicated
    assert kv_cache_elements(llama, 8) == 2 * 8 * 128


# ---- MoE (GShard / Megatron-Core dispatcher; DeepSeekMoE shared experts) ------------------------
def test_balanced_training_routing_gives_each_expert_its_share():
    """Mixtral 8x7B, top-2, EP 2, one 2048-token sequence per rank: the EP group routes 2·2048·2
    (token, expert) pairs, each of the 4 local experts gets 1024 tokens; all-to-all of T·k·h."""
    mx = load_model("mixtral-8x7b")
    plan = TrainingPlan(mb=1, ep=2, dp=2)
    ops = _ops(plan, model=mx, moe=True)
    byn = {}
    for o in ops:
        byn.setdefault(o.name, []).append(o)
    fc1 = byn["expert_fc1"][0]
    assert fc1.flops == pytest.approx(4 * 2.0 * 1024 * 2 * 14336 * 4096)
    a2a = byn["ep.dispatch"][0]
    assert a2a.bytes == S * 2 * 4096 * 2 and a2a.group == "ep"
    assert byn["expert_act"][0].bytes == 3 * (2 * S * 2 / 2) * 14336 * 2
    assert byn["router"][0].flops == 2.0 * S * 8 * 4096


def test_a_decode_step_reads_only_the_experts_its_tokens_pick():
    """Serving (random routing): one token with top-2 routing hits at most 2 of Mixtral's 8
    experts, so the grouped expert GEMM reads ~2 experts' weights; a 4096-token prefill hits all 8."""
    mx = load_model("mixtral-8x7b")
    km = kernel_model("h100-sxm", "bf16")
    w_fc1 = 4096 * 2 * 14336 * 2  # one expert's gate+up weights, bytes

    def fc1_bytes(T):
        lp = LayerPass(tokens=T, ep_distinct_tokens=False, kernels=SERVING_ENGINE)
        ops = transformer_layer(mx, lp, km, km, lambda *a: 0.0, True, "fwd")
        return [o for o in ops if o.name == "expert_fc1"][0].bytes
    assert 2 * w_fc1 <= fc1_bytes(1) < 2.01 * w_fc1
    assert fc1_bytes(4096) >= 8 * w_fc1


def test_shared_experts_run_on_every_token():
    """DeepSeek-V3: 1 shared expert of 2048 next to the routed ones (DeepSeekMoE §3.2)."""
    ds = load_model("deepseek-v3")
    km = kernel_model("h100-sxm", "bf16")
    lp = LayerPass(tokens=256, tp=2, expert_tp=2, ep_distinct_tokens=False, kernels=SERVING_ENGINE)
    ops = _by_name(transformer_layer(ds, lp, km, km, lambda *a: 0.0, True, "fwd"))
    assert ops["shared_fc1"].flops == 2.0 * 256 * (2048 * 2 // 2) * 7168
    assert ops["shared_fc2"].flops == 2.0 * 256 * 7168 * (2048 // 2)
    # experts split by TP over all tokens: one all-reduce of the T·h 16-bit outputs after them
    assert ops["tp.moe"].bytes == 256 * 7168 * 2 and ops["tp.moe"].group == "tp"


def test_moe_with_tensor_parallelism_needs_sequence_parallelism():
    mx = load_model("mixtral-8x7b")
    with pytest.raises(InputError, match="sp=on"):
        check_supported(mx, TrainingPlan(tp=2))
    check_supported(mx, TrainingPlan(tp=2, sp=True))
    check_supported(GPT, TrainingPlan(tp=2))


# ---- context parallelism (ring attention) -------------------------------------------------------
def test_context_parallel_ring_passes_k_and_v_hidden_behind_attention():
    """CP 2: each rank holds T = s/2 tokens and passes its K and V (2·kv_dim 16-bit per token)
    around the ring; the backward passes them and their gradients (twice the bytes)."""
    llama = load_model("llama3.1-8b")
    plan = TrainingPlan(cp=2, mb=1)
    ring = _by_name(_ops(plan, model=llama))["cp.kv_ring"]
    T = S // 2
    assert ring.bytes == T * 2 * 1024 * 2 * 2 and ring.overlap_with == "attn" and ring.group == "cp"
    assert _by_name(_ops(plan, "bwd", model=llama))["cp.kv_ring"].bytes == 2 * ring.bytes
    # a plain overlap: the ring hides completely behind a longer attention (no exposed floor)
    assert ring.exposed_floor_s == 0.0
    lc = layer_cost(llama, _job(llama), plan, H100, False)
    attn_s = _by_name(_ops(plan, model=llama))["attn"].time_s
    assert lc.fwd_comm_s.get("cp", 0.0) == pytest.approx(max(0.0, ring.time_s - attn_s), abs=1e-15)
    attn = _by_name(_ops(plan, model=llama))["attn"]
    assert attn.flops == pytest.approx(2.0 * S * S * 32 * 128 / 2)


# ---- every op's time follows from its size ------------------------------------------------------
@pytest.mark.parametrize("flash", [True, False])
def test_memory_bound_ops_take_the_streaming_time_of_their_bytes_and_gemms_move_three_matrices(flash):
    """A memory-bound kernel's time is its bytes through HBM (KernelModel.memory_s); a GEMM, forward
    or either backward GEMM, reads and writes its three matrices once: the input-gradient and
    weight-gradient GEMMs of a layer move as many bytes as its forward GEMM."""
    km = kernel_model("h100-sxm", "bf16")
    plan = TrainingPlan(tp=2, mb=1)
    fwd = _ops(plan, flash_attention=flash, dropout=True)
    bwd = _ops(plan, "bwd", flash_attention=flash, dropout=True)
    for o in fwd + bwd:
        if o.kind == "compute" and o.flops == 0:
            assert o.time_s == km.memory_s(o.bytes), o.name
    f = {o.name: o for o in fwd}
    for o in bwd:
        base, _, grad = o.name.rpartition(".")
        if grad in ("dgrad", "wgrad"):
            assert o.bytes == f[base].bytes and o.flops == f[base].flops, o.name
    assert sum(1 for o in bwd if o.wgrad) == 4  # qkv, proj, fc1, fc2


@pytest.mark.parametrize("name,moe", [("gpt", False), ("mixtral-8x7b", True), ("llama3.1-8b", False),
                                      ("llama4-scout", True)])
def test_model_flops_are_the_flops_the_layers_ops_execute(name, moe):
    """Model FLOPs (Megatron eq. 3 / PaLM App. B convention: attention counted non-causal) equal
    the FLOPs of the layer's forward ops with the causal attention counted twice: the GEMMs,
    router and experts (balanced training routing) included."""
    model = GPT if name == "gpt" else load_model(name)
    plan = TrainingPlan(mb=1, ep=1)
    ops = _ops(plan, model=model, moe=moe)
    executed = sum(o.flops for o in ops if o.kind == "compute")
    attn = _by_name(ops)["attn"].flops
    lc = layer_cost(model, _job(model), plan, H100, moe)
    assert lc.fwd_flops == pytest.approx(executed + attn, rel=1e-12)


def test_ops_are_immutable():
    """Op lists are cached and shared between plans (lru_cache): an op cannot be changed."""
    import dataclasses
    op = _ops(TrainingPlan(mb=1))[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        op.time_s = 0.0


def test_context_parallel_ring_of_mla_passes_the_up_projected_heads():
    """MLA under CP (Megatron-Core's MLA with context parallelism rings the up-projected heads,
    not the compressed latent): per token and rank, num_heads/tp heads of K (d_h + d_h^R = 128 +
    64) and V (d_h^v = 128), 16-bit. DeepSeek-V3, tp 1, cp 2, one micro-batch of 2048: each rank
    holds 1024 tokens, ring of 1024 · 128 · (192 + 128) · 2 bytes, times cp = 2 in total."""
    ds = load_model("deepseek-v3")
    plan = TrainingPlan(cp=2, mb=1)
    ring = _by_name(layer_ops(ds, _job(ds), plan, H100, False, "fwd"))["cp.kv_ring"]
    assert ring.bytes == 1024 * 128 * (192 + 128) * 2 * 2
    # tp 2 (with SP, as MoE models need): 64 heads per rank
    plan = TrainingPlan(tp=2, sp=True, cp=2, mb=1)
    ring = _by_name(layer_ops(ds, _job(ds), plan, H100, False, "fwd"))["cp.kv_ring"]
    assert ring.bytes == 1024 * 64 * (192 + 128) * 2 * 2


def test_unfused_attention_backward_runs_two_batched_gemms_per_forward_gemm():
    """Megatron-LM 2021 unfused attention: the backward of QK^T computes dQ and dK, the backward
    of AV computes dA and dV, each a batched GEMM of the forward's shape, so each takes twice the
    forward GEMM's time; with CP 2 each rank's queries are half the sequence (s/2 x s scores)."""
    for cp in (1, 2):
        plan = TrainingPlan(mb=1, cp=cp)
        fwd = _by_name(_ops(plan, flash_attention=False))
        bwd = _by_name(_ops(plan, "bwd", flash_attention=False))
        for name in ("attn.qk", "attn.av"):
            assert fwd[name].time_s > 0
            assert bwd[name].time_s == pytest.approx(2 * fwd[name].time_s, rel=1e-12)
    one = _by_name(_ops(TrainingPlan(mb=1), flash_attention=False))["attn.qk"]
    two = _by_name(_ops(TrainingPlan(mb=1, cp=2), flash_attention=False))["attn.qk"]
    assert two.flops == pytest.approx(one.flops / 2) and two.time_s < one.time_s


def test_with_sequence_parallelism_each_tp_rank_routes_its_own_token_shard():
    """Megatron-Core token dispatcher (megatron/core/transformer/moe/token_dispatcher.py:
    num_local_tokens = S/TP·B under SP): each TP rank routes its T/tp tokens. Mixtral (8 experts,
    h 4096): 64 tokens over TP 8 -> the router GEMM is 8 x 4096 x 8 per rank,
    2·8·8·4096 FLOPs; 8 tokens over TP 8 -> one token per rank."""
    mx = load_model("mixtral-8x7b")
    km = kernel_model("h100-sxm", "bf16")
    for T, local in ((64, 8), (8, 1)):
        lp = LayerPass(tokens=T, tp=8, sp=True)
        ops = _by_name(transformer_layer(mx, lp, km, km, lambda *a: 0.0, True, "fwd"))
        assert ops["router"].flops == 2.0 * local * 8 * 4096


def test_sliding_window_pairs_join_the_causal_and_the_windowed_regimes_continuously():
    """Sliding-window attention (Mistral 7B arXiv 2310.06825 §2; Longformer §3.1): each of the q
    new tokens after ctx cached ones sees at most w keys. Continuous form: full causal
    q²/2 + q·ctx when w >= q + ctx; q·w once ctx >= w; between, (w² − ctx²)/2 + (ctx + q − w)·w,
    which meets both at their boundaries. q = 10, w = 4, ctx = 2: (16 − 4)/2 + 8·4 = 38 (the
    discrete count is 3 + 9·4 = 39); training (ctx 0), s = 10: 10·4 − 4²/2 = 32."""
    from simulator.ops import window_pairs
    assert window_pairs(10, 2, 4) == pytest.approx(38.0)
    assert window_pairs(10, 0, 4) == pytest.approx(32.0)
    for q, w in ((10, 4), (100, 37), (4096, 128)):
        assert window_pairs(q, w, w) == pytest.approx(q * w)  # ctx = w: both forms give q·w
        a = w // 2
        assert window_pairs(q, a, q + a) == pytest.approx(q * q / 2 + q * a)  # w = q + ctx: full causal
        assert window_pairs(q, a, q + a - 1) < q * q / 2 + q * a
    assert window_pairs(10, 2, 0) == pytest.approx(10 * 10 / 2 + 10 * 2)  # no window


def test_layer_costs_and_kernel_choices_are_immutable_and_hashable():
    """LayerCost is cached and shared (lru_cache): frozen. Kernels and LayerPass are also cache
    keys: frozen and hashable by value."""
    import dataclasses
    lc = layer_cost(GPT, _job(), TrainingPlan(mb=1), H100, False)
    lp = LayerPass(tokens=8)
    for obj, field in ((lc, "fwd_flops"), (MEGATRON, "fused_add_norm"), (lp, "tokens")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, field, 0)
    for obj in (MEGATRON, lp):
        assert hash(obj) == hash(dataclasses.replace(obj))


def test_balanced_routing_gives_an_expert_at_least_its_one_token():
    """Training routing (balanced): each expert gets routed/E tokens. Mixtral (8 experts, top-2),
    4 tokens: 8 (token, expert) pairs, exactly one token per expert, so each expert's gate/up
    GEMM is 1 x (2·14336) x 4096: 8 of them, 8 · 2·1·28672·4096 FLOPs."""
    mx = load_model("mixtral-8x7b")
    km = kernel_model("h100-sxm", "bf16")
    ops = [o for o in transformer_layer(mx, LayerPass(tokens=4), km, km, lambda *a: 0.0, True, "fwd")
           if o.name == "expert_fc1"]
    assert sum(o.flops for o in ops) == 8 * 2.0 * 1 * 2 * 14336 * 4096


def test_a_prefill_chunk_after_cached_context_adds_the_full_context_block():
    """FlashAttention-2 over a chunk of q new tokens after ctx cached ones (Dao 2023 §3.1): the
    causal q x q block plus the full (unmasked) q x ctx block, each at the kernel's measured time."""
    from simulator.ops import chunk_attention_s
    km = kernel_model("h100-sxm", "bf16")
    llama = load_model("llama3.1-8b")
    alone = chunk_attention_s(km, llama, 32, 8, 1, 2048, 0)
    assert alone == pytest.approx(km.flash_attention_s(1, 2048, 2048, 32, 8, 128, True), rel=1e-12)
    after = chunk_attention_s(km, llama, 32, 8, 1, 2048, 6144)
    assert after == pytest.approx(alone + km.flash_attention_s(1, 2048, 6144, 32, 8, 128, False), rel=1e-12)


def test_sliding_window_layers_cost_their_band_of_kernel_blocks():
    """A local-attention layer (window w = 128, GPT-OSS) runs only the key blocks inside the band
    (flash-attention window_size): window_pairs / w² blocks of w², each at the cheaper of two
    causal w-kernels or the second half of a causal 2w-kernel, t(2w) − t(w). Over 4096 tokens:
    4096·128 − 128²/2 pairs = 31.5 blocks, timed as one batch of ceil(31.5) = 32 blocks of which
    31.5/32 is taken; and CP 2 halves each rank's share."""
    from simulator.ops import chunk_attention_s
    km = kernel_model("h100-sxm", "bf16")
    oss = load_model("gpt-oss-20b")
    h, kv, d = oss.num_heads, oss.num_kv_heads, 64
    t_w = km.flash_attention_s(32, 128, 128, h, kv, d, True)
    t_2w = km.flash_attention_s(32, 256, 256, h, kv, d, True)
    per_block = min(2 * t_w, t_2w - t_w) if t_2w > t_w else 2 * t_w
    assert chunk_attention_s(km, oss, h, kv, 1, 4096, 0, 128) == pytest.approx(per_block * 31.5 / 32, rel=1e-12)
    job = TrainingJob(oss, 4096, 64, flash_attention=True, dropout=False)
    attn = [[o.time_s for o in layer_ops(oss, job, TrainingPlan(mb=1, cp=cp), H100, True, "fwd") if o.name == "attn"][0]
            for cp in (1, 2)]
    assert attn[1] == pytest.approx(attn[0] / 2, rel=1e-12)


def test_expert_parallel_serving_reads_only_its_share_of_the_active_experts():
    """Serving with EP 2 (random routing): a 4096-token prefill of Mixtral hits all 8 experts,
    4 of which live on each rank, so each rank's grouped expert GEMM reads 4 experts' weights
    (plus the token rows), fewer than the 8 of EP 1."""
    mx = load_model("mixtral-8x7b")
    km = kernel_model("h100-sxm", "bf16")
    w_fc1 = 4096 * 2 * 14336 * 2

    def fc1_bytes(ep):
        lp = LayerPass(tokens=4096, ep=ep, ep_distinct_tokens=False, kernels=SERVING_ENGINE)
        return [o for o in transformer_layer(mx, lp, km, km, lambda *a: 0.0, True, "fwd") if o.name == "expert_fc1"][0].bytes
    assert 4 * w_fc1 <= fc1_bytes(2) < 8 * w_fc1 <= fc1_bytes(1)


def test_expert_parallel_ranks_holding_the_same_tokens_exchange_none():
    """EP inside a serving replica's TP group: every rank holds the whole batch after attention,
    runs its local experts on the tokens routed to them, and the TP all-reduce after the block sums
    the partial outputs (vLLM FusedMoE uses all2all kernels only with data parallelism; TensorRT-LLM
    CutlassFusedMoE only with attention DP). Ranks holding distinct tokens (training's DP ranks, an
    attention-DP replica) swap them in two all-to-alls of T·k·h."""
    mx = load_model("mixtral-8x7b")
    km = kernel_model("h100-sxm", "bf16")

    def names(distinct):
        lp = LayerPass(tokens=1024, tp=2, ep=2, expert_tp=1, ep_distinct_tokens=distinct,
                       kernels=SERVING_ENGINE)
        return _by_name(transformer_layer(mx, lp, km, km, lambda *a: 1e-3, True, "fwd"))
    same, distinct = names(False), names(True)
    assert "ep.dispatch" not in same and "ep.combine" not in same and "tp.moe" in same
    assert distinct["ep.dispatch"].bytes == 1024 * 2 * 4096 * 2 and "ep.combine" in distinct


def test_attention_kernel_named_in_text_is_the_same_kernel():
    """A job whose attention kernel was read from the command line (a string built at run time)
    runs FlashAttention-2's measured kernel: mb = 5 sequences of 2048, 32 heads of 128 on H100.
    (mb = 5 is used by no other test: layer ops are cached by equal jobs.)"""
    typed = _by_name(_ops(TrainingPlan(mb=5), attention_kernel="".join(["fa", "2"])))["attn"]
    km = kernel_model("h100-sxm", "bf16")
    assert typed.time_s == pytest.approx(km.flash_attention_s(5, S, S, 32, 32, 128, True), rel=1e-12)


def test_a_non_gated_expert_mlp_has_one_up_projection():
    """GShard/Switch-style experts (GELU MLP, no gate): fc1 is h -> ffn, half the FLOPs of a
    gated (SwiGLU, Mixtral) expert's gate+up h -> 2·ffn."""
    from simulator.models import with_overrides
    mx = load_model("mixtral-8x7b")
    plain = with_overrides(mx, gated_mlp=False)
    fc1 = {m.gated_mlp: sum(o.flops for o in _ops(TrainingPlan(mb=1, ep=1), model=m, moe=True) if o.name == "expert_fc1")
           for m in (mx, plain)}
    assert fc1[False] == pytest.approx(fc1[True] / 2, rel=1e-12)


def test_mla_model_flops_count_the_qk_and_v_head_widths():
    """Model FLOPs of MLA attention (DeepSeek-V3, arXiv 2412.19437 §2.1.1: 128 heads, d_h = 128,
    d_h^R = 64, v heads 128 wide) in the Megatron / PaLM convention: QK^T over d_h + d_h^R = 192
    and AV over 128, non-causal, 2·T·s·heads·(192 + 128) for one 4096-token sequence."""
    from simulator.ops import _model_flops_fwd
    ds = load_model("deepseek-v3")
    _, attn = _model_flops_fwd(ds, TrainingJob(ds, 4096, 8), TrainingPlan(mb=1), True)
    assert attn == pytest.approx(2 * 4096 * 4096 * 128 * (192 + 128), rel=1e-12)


def test_a_forward_gemm_moves_input_weight_and_output_once():
    """A GEMM (m×k)·(k×n) streams its input, its weight and its output through HBM once: bf16
    2·(m·k + k·n + m·n) bytes. GPT-5.9B's QKV GEMM at tp=1 (Narayanan Table 1: h = 4096) over
    2048 tokens: m = 2048, k = 4096, n = 3·4096."""
    qkv = _by_name(_ops(TrainingPlan(tp=1, mb=1)))["qkv"]
    m, k, n = S, 4096, 3 * 4096
    assert qkv.flops == pytest.approx(2 * m * n * k)
    assert qkv.bytes == pytest.approx(2 * (m * k + k * n + m * n))


def test_eager_pytorch_norm_and_repeat_kv_bytes_follow_torchtitan():
    """torchtitan's Llama without torch.compile runs elementwise work as eager PyTorch kernels.
    RMSNorm (torchtitan/models/norms.py), bytes read + written per element: x.float() 2+4,
    pow(2) 4+4, mean 4, x·rsqrt 4+4, type_as 4+2, ·weight 2+2 = 36. repeat_kv
    (models/llama/model.py) expands K and V to every query head: per token it reads the KV heads
    (8 x 128 on Llama 3.1 8B) and writes the 32 x 128 query-head copies, for K and V, in bf16."""
    model = load_model("llama3.1-8b")
    per_elem = (2 + 4) + (4 + 4) + 4 + (4 + 4) + (4 + 2) + (2 + 2)
    ops = _by_name(_ops(TrainingPlan(tp=1, mb=1), model=model, eager_elementwise=True))
    assert ops["norm1"].bytes == pytest.approx(per_elem * S * 4096)
    assert ops["repeat_kv"].bytes == pytest.approx(S * 2 * (8 * 128 + 32 * 128) * 2)
    bwd = _by_name(_ops(TrainingPlan(tp=1, mb=1), "bwd", model=model, eager_elementwise=True))
    assert bwd["norm1"].bytes == pytest.approx(2 * per_elem * S * 4096)  # input and its gradient


def test_gpt_oss_alternating_windowed_layers_compute_about_half_the_causal_pairs():
    """GPT-OSS (OpenAI model card, 2025): layers alternate full attention and a 128-token
    sliding window. Of a 4096-token causal square (4096²/2 pairs) a windowed layer computes
    4096·128 − 128²/2 (Mistral 7B §2: each token sees w positions), so half the layers full and
    half windowed compute (1 + 516096/8388608)/2 of the causal pairs."""
    from simulator.ops import window_mix
    mix = window_mix(load_model("gpt-oss-120b"), 4096)
    assert mix == pytest.approx((1 + (4096 * 128 - 128 ** 2 / 2) / (4096 ** 2 / 2)) / 2, rel=1e-12)
    assert window_mix(load_model("llama3.1-8b"), 4096) == 1.0
    assert window_mix(load_model("gpt-oss-120b"), 0) == 1.0  # no pairs: nothing to weigh


def test_op_level_sac_recomputes_w3_of_a_gated_mlp_and_nothing_of_a_plain_fc1():
    """torchtitan op-level selective checkpointing (parallelize_llama.py `_custom_policy`) saves
    every odd aten.mm: a SwiGLU block calls w1, w3, w2 (w1|w3 fused here), so half of the fused
    fc1 GEMM (w3) runs again and w2 is saved; a plain MLP's fc1 is the 5th mm (saved) and its
    fc2 the 6th (recomputed)."""
    from simulator.ops import _op_sac_share
    llama, gpt = load_model("llama3.1-8b"), GPT
    assert llama.gated_mlp and not gpt.gated_mlp
    assert _op_sac_share(llama, "fc1.dgrad", False) == 0.5 and _op_sac_share(llama, "fc2", False) == 0.0
    assert _op_sac_share(gpt, "fc1", False) == 0.0 and _op_sac_share(gpt, "fc2", False) == 1.0
    # elementwise kernels are never saved, in an MoE layer too; its router and experts (mm calls
    # outside the dense count) are taken as saved
    mix = load_model("mixtral-8x7b")
    assert _op_sac_share(mix, "norm2", True) == 1.0 and _op_sac_share(mix, "bias_dropout_add1", True) == 1.0
    assert _op_sac_share(mix, "expert_fc1", True) == 0.0 and _op_sac_share(mix, "router", True) == 0.0


def test_mla_without_query_compression_projects_q_straight_from_the_hidden_state():
    """DeepSeek-V2-Lite (arXiv 2405.04434 App. B: hidden 2048, 16 heads, no query compression,
    kv_lora_rank 512, d_h = 128, d_h^R = 64): q = W^Q h, one GEMM of 16·(128 + 64) = 3072 columns
    over the hidden size, split by heads over TP (tp=2: 1536)."""
    from dataclasses import replace
    lite = replace(load_model("deepseek-v2"), name="deepseek-v2-lite", hidden_size=2048, num_heads=16, num_kv_heads=16,
                   q_lora_rank=0)
    assert ("qkv.q", 3072, 2048) in attention_gemms(lite, 1)
    assert ("qkv.q", 1536, 2048) in attention_gemms(lite, 2)
    assert not any(n.startswith("qkv.q_") for n, _, _ in attention_gemms(lite, 1))


def test_mla_attention_core_runs_av_at_the_value_width():
    """MLA (DeepSeek-V2 arXiv 2405.04434 §2.1.3): Q·K^T at d_h + d_h^R = 192, A·V at d_h^v = 128
    for DeepSeek-V3, so the attention core does (192 + 128) / (2·192) of a 192-wide kernel's work,
    in FLOPs and in time; equal widths (GQA) leave it whole."""
    from simulator.ops import attention_width_ratio, chunk_attention_s
    from hwmodels.kernels import kernel_model
    from simulator.models import load_model
    ds, llama = load_model("deepseek-v3"), load_model("llama3-8b")
    assert attention_width_ratio(ds) == pytest.approx((192 + 128) / 384)
    assert attention_width_ratio(llama) == 1.0
    km = kernel_model("h100-sxm", "bf16")
    full = km.flash_attention_s(1, 4096, 4096, 128, 128, 192, True)
    assert chunk_attention_s(km, ds, 128, 128, 1, 4096, 0) == pytest.approx(full * (192 + 128) / 384)


def test_mla_dense_layer_model_flops_count_every_projection_of_the_latent_attention():
    """Model FLOPs of a DeepSeek-V3 dense layer (arXiv 2412.19437 §2.1.1, §4.2: h = 7168, 128
    heads, d_c^Q = 1536, d_c = 512, d_h = 128, d_h^R = 64, d_h^v = 128, SwiGLU FFN 18432) for one
    4096-token sequence: 2 FLOPs per token per attention parameter (Kaplan et al. 2020 §2.1, C_fwd
    ≈ 2N), the parameters those of DeepSeek-V2 §2.1.2 eq. 9-14 (W^DQ, the q latent's RMSNorm,
    W^UQ|W^QR, W^DKV|W^KR, the kv latent's RMSNorm, W^UK|W^UV, W^O), plus the non-causal core
    2·T·s·heads·(d_h + d_h^R + d_h^v) and the three FFN matrices (Narayanan et al. 2021 eq. 3)."""
    from simulator.ops import _model_flops_fwd
    ds = load_model("deepseek-v3")
    T, h, H = 4096, 7168, 128
    params = (h * 1536 + 1536 + 1536 * H * (128 + 64)
              + h * (512 + 64) + 512 + 512 * H * (128 + 128)
              + H * 128 * h)
    core = 2 * T * T * H * (128 + 64 + 128)
    mlp = 2 * T * 3 * h * 18432
    total, attn = _model_flops_fwd(ds, TrainingJob(ds, T, 8), TrainingPlan(mb=1), False)
    assert attn == pytest.approx(core, rel=1e-12)
    assert total == pytest.approx(2 * T * params + core + mlp, rel=1e-12)


NANO = "nemotron-3-nano-30b-a3b"


def test_mamba_layer_model_flops_are_its_projections_conv_and_chunked_scan():
    """Model FLOPs of one Mamba-2 layer of Nemotron-3 Nano (h = 2688, H = 64 heads of P = 64,
    G = 8 groups, N = 128, d_conv = 4, chunk Q = 128) for one 4096-token sequence: in_proj
    h → 2·H·P + 2·G·N + H and out_proj H·P → h at 2 FLOPs per weight per token, the depthwise
    conv 2·d_conv per channel of x, B, C (Megatron-Core ssm/mamba_mixer.py), and the chunked SSD
    scan of Dao & Gu 2024 §6: C·Bᵀ 2·T·Q·N per group, the diagonal blocks 2·T·Q·P per head, the
    chunk states and their outputs 2·T·N·P each per head, the state passing 2·(T/Q)·N·P per head."""
    from simulator.ops import _model_flops_fwd
    m = load_model(NANO)
    T, h, H, P, G, N, K, Q = 4096, 2688, 64, 64, 8, 128, 4, 128
    proj = 2 * T * h * ((2 * H * P + 2 * G * N + H) + H * P)
    conv = 2 * K * T * (H * P + 2 * G * N)
    ssd = 2 * T * Q * N * G + 2 * T * Q * P * H + 2 * (2 * T * N * P * H) + 2 * (T / Q) * N * P * H
    total, attn = _model_flops_fwd(m, TrainingJob(m, T, 8), TrainingPlan(mb=1), False, "M")
    assert attn == 0.0
    assert total == pytest.approx(proj + conv + ssd, rel=1e-12)


def test_context_parallel_mamba_swaps_sequence_and_head_shards_around_conv_and_scan():
    """Mamba-2 with context parallelism (Megatron-Core ssm/mamba_context_parallel.py pre_conv_ssm,
    post_conv_ssm): an all-to-all over the cp ranks turns the rank's in_proj output [z, x, B, C, dt]
    of its s/cp tokens into all tokens of its heads before the conv, and another turns the scan's
    output y (H·P channels) back after it; 16-bit. Nemotron-3 Nano (H·P = 4096, 2·G·N = 2048,
    H = 64) at cp=2, s = 4096: 2048 tokens per rank."""
    m = load_model(NANO)
    T = 4096 // 2
    job = TrainingJob(m, 4096, 8)
    for phase in ("fwd", "bwd"):
        ops = _by_name(layer_ops(m, job, TrainingPlan(cp=2, dp=4, mb=1), H100, False, phase, "M"))
        assert (ops["cp.mamba_in"].group, ops["cp.mamba_out"].group) == ("cp", "cp")
        assert ops["cp.mamba_in"].bytes == T * (2 * 4096 + 2048 + 64) * 2
        assert ops["cp.mamba_out"].bytes == T * 4096 * 2


def test_an_all_moe_hybrid_layer_pattern_costs_its_dense_query_as_a_moe_layer():
    """A hybrid layer pattern (Megatron-Core ssm/hybrid_layer_allocation.py symbols M, *, -, E)
    made only of MoE layers 'E' has no dense layer; the dense-layer cost every engine asks for
    (analytic._kernel_terms reads both kinds) is then the MoE layer's, not an error."""
    from dataclasses import replace
    m = replace(load_model(NANO), name="all-moe", hybrid_pattern="E" * 8, num_layers=8)
    assert m.is_hybrid and m.kind_counts() == ()
    job, plan = TrainingJob(m, 4096, 8), TrainingPlan(dp=8, mb=1)
    assert layer_cost(m, job, plan, H100, False) == layer_cost(m, job, plan, H100, True)


def test_mamba_conv_and_ssd_backward_recompute_then_differentiate():
    """Mamba-2 backward (mamba_ssm ssd_combined.py _mamba_chunk_scan_combined_bwd, checkpoint_lvl 1):
    causal_conv1d is recomputed (2·d_conv FLOPs per element again) and its backward does two
    products per forward one; it reads x and the incoming gradient and writes the input gradient
    (5 passes of 16-bit elements, forward 2: read, write). The SSD backward recomputes C·Bᵀ and the
    chunk states and runs two gradient products per forward product (Dao & Gu 2024 §6 counts:
    C·Bᵀ 2·T·Q·N·G, diagonal 2·T·Q·P·H, states and outputs 2·T·N·P·H each, passing
    2·(T/Q)·N·P·H), and moves the forward's bytes three times. Nemotron-3 Nano, 4096 tokens."""
    m = load_model(NANO)
    T, H, P, G, N, K, Q = 4096, 64, 64, 8, 128, 4, 128
    job, plan = TrainingJob(m, T, 8), TrainingPlan(dp=8, mb=1)
    fwd = _by_name(layer_ops(m, job, plan, H100, False, "fwd", "M"))
    bwd = _by_name(layer_ops(m, job, plan, H100, False, "bwd", "M"))
    elems = T * (H * P + 2 * G * N)  # x, B, C
    assert fwd["mamba_conv"].flops == pytest.approx(2 * K * elems, rel=1e-12)
    assert bwd["mamba_conv"].flops == pytest.approx(3 * 2 * K * elems, rel=1e-12)
    assert fwd["mamba_conv"].bytes == pytest.approx(2 * elems * 2, rel=1e-12)
    assert bwd["mamba_conv"].bytes == pytest.approx(5 * elems * 2, rel=1e-12)
    cb, diag = 2 * T * Q * N * G, 2 * T * Q * P * H
    states = out = 2 * T * N * P * H
    passing = 2 * (T / Q) * N * P * H
    assert fwd["ssd"].flops == pytest.approx(cb + diag + states + passing + out, rel=1e-12)
    assert bwd["ssd"].flops == pytest.approx(2 * (cb + diag + states + passing + out) + cb + states + passing,
                                             rel=1e-12)
    assert bwd["ssd"].bytes == pytest.approx(3 * fwd["ssd"].bytes, rel=1e-12)


def test_a_hybrid_models_non_moe_layer_cost_is_the_layer_weighted_mean_of_its_kinds():
    """A hybrid model's Mamba, attention and MLP layers ('M', '*', '-' of its pattern, Megatron-Core
    hybrid_layer_allocation.py) cost per non-MoE layer the mean of each kind's cost weighted by how
    many layers of the pattern have it: Nemotron-H 8B at tp = 2, compute and exposed TP seconds."""
    m = load_model("nemotron-h-8b")
    job, plan = TrainingJob(m, 4096, 8), TrainingPlan(tp=2, dp=4, mb=1)
    counts = {k: m.hybrid_pattern.count(k) for k in "M*-"}
    assert sum(counts.values()) == m.num_layers and all(counts.values())
    kinds = {k: layer_cost(m, job, plan, H100, False, k) for k in counts}
    mean = layer_cost(m, job, plan, H100, False)
    L = m.num_layers
    assert mean.fwd_compute_s == pytest.approx(sum(n * kinds[k].fwd_compute_s for k, n in counts.items()) / L, rel=1e-12)
    for get in (lambda c: c.fwd_comm_s, lambda c: c.bwd_comm_s):
        want = sum(n * get(kinds[k]).get("tp", 0.0) for k, n in counts.items()) / L
        assert want > 0 and get(mean)["tp"] == pytest.approx(want, rel=1e-12)


def test_op_level_sac_reruns_its_share_of_the_forward_compute_only():
    """torchtitan op-level SAC (parallelize_llama.py `_custom_policy`: every odd aten.mm saved,
    flash attention saved, elementwise ops re-run, collectives saved): with tp = 2 (Shoeybi §3
    all-reduces among the ops) the recompute is wk of the fused QKV (kv/(q + 2kv) of it), wo, w3
    of the fused w1|w3 (half) and every norm/activation/residual kernel, and no collective.
    Llama 3.1 8B (q 4096, kv 1024 wide)."""
    model = load_model("llama3.1-8b")
    plan = TrainingPlan(tp=2, mb=1, recompute="selective")
    job = _job(model, selective_policy="op")
    share = {"qkv": 1024 / (4096 + 2 * 1024), "proj": 1.0, "fc1": 0.5, "fc2": 0.0, "attn": 0.0}
    fwd = layer_ops(model, job, plan, H100, False, "fwd")
    assert any(o.kind == "comm" for o in fwd)
    comp = [o for o in fwd if o.kind == "compute"]
    lc = layer_cost(model, job, plan, H100, False)
    want_s = sum(share.get(o.name.split(".")[0], 1.0) * o.time_s for o in comp)
    want_f = sum(share.get(o.name.split(".")[0], 1.0) * o.flops for o in comp)
    assert lc.recompute_s == pytest.approx(want_s, rel=1e-12)
    assert lc.recompute_flops == pytest.approx(want_f, rel=1e-12)
    assert lc.recompute_comm_s == {}


@pytest.mark.parametrize("flash", [True, False])
def test_no_op_moves_negative_bytes_or_flops(flash):
    """Every op of a layer (forward, backward, recompute) counts HBM bytes and FLOPs, which are
    counts: never negative (the flash kernel's own traffic is not counted, 0)."""
    for phase in ("fwd", "bwd", "recompute"):
        for o in _ops(TrainingPlan(tp=2, mb=1, sp=True, recompute="full"), phase, flash_attention=flash):
            assert o.bytes >= 0 and o.flops >= 0 and o.time_s >= 0, (phase, o.name)
