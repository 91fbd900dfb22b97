"""Hybrid Mamba-2 + attention (+MoE) models (Nemotron-H, Nemotron-3): the layer pattern, the
Mamba-2 mixer's parameters, FLOPs, collectives and activations, and their share of a step."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import simulator.ops as ops_mod
from hwmodels.clusters import load_cluster
from hwmodels.errors import InputError
from simulator.analytic import estimate
from simulator.mamba import mamba_shape, ssd_bytes, ssd_flops
from simulator.memory import layer_activation_bytes
from simulator.models import from_hf_config, load_model
from simulator.ops import check_supported, layer_cost, layer_ops
from simulator.software import apply_software
from simulator.training import TrainingJob, TrainingPlan
from ui.cli import main

NANO = "nemotron-3-nano-30b-a3b"


def _job(model, seq=4096, gb=64, dtype="bf16"):
    return apply_software(TrainingJob(model=model, seq_len=seq, global_batch=gb, dtype=dtype), "megatron-bridge")


# ---- the model -------------------------------------------------------------------------------

@pytest.mark.parametrize("name, total, active", [
    # NVIDIA Nemotron 3 Nano model card: 31.6B total, ~3.6B active per token (embeddings included)
    (NANO, 31.6e9, 3.6e9),
    # Nemotron-H (arXiv 2504.03624): 8B and 56B
    ("nemotron-h-8b", 8.0e9, None), ("nemotron-h-56b", 56.0e9, None)])
def test_parameter_counts_match_the_published_figures(name, total, active):
    m = load_model(name)
    assert m.num_params == pytest.approx(total, rel=0.02)
    if active:
        assert m.num_active_params == pytest.approx(active, rel=0.02)
    # every layer holds one block: the sum over kinds is the whole count, a Mamba layer its mixer
    kinds = {k: m.hybrid_pattern.count(k) for k in "M*-E"}
    blocks = sum(n * (m.hybrid_block_params(k) + m.norm_params()) for k, n in kinds.items() if n)
    assert m.num_params == blocks + m.embedding_params() + m.head_params()


def test_nano_mixer_parameters_by_tensor():
    """Nemotron-3 Nano's mixer: in_proj 2688 → 2·4096 + 2·8·128 + 64, conv over 4096 + 2048
    channels (4 taps + bias), dt_bias/A_log/D per head, the norm weight, out_proj 4096 → 2688."""
    m = load_model(NANO)
    in_proj = 2688 * (2 * 4096 + 2 * 8 * 128 + 64)
    conv = (4096 + 2 * 8 * 128) * 5
    assert m.mamba_params() == in_proj + conv + 3 * 64 + 4096 + 4096 * 2688
    assert m.mamba_d_inner == 4096 and m.num_moe_layers == 23 and m.num_shared_experts == 2


def test_a_transformer_config_is_unchanged():
    """Fields a transformer does not set leave it as it was: no pattern, every layer attention + MLP."""
    m = load_model("qwen3-30b-a3b")
    assert not m.is_hybrid and m.layer_kind(0) == "" and m.num_moe_layers == m.num_layers


@pytest.mark.parametrize("change, words", [
    ({"hybrid_override_pattern": "MEMX"}, ["hybrid_override_pattern[3]='X'", "'M' Mamba-2 mixer"]),
    ({"hybrid_override_pattern": "MEM"}, ["has 3 symbols", "num_hidden_layers=4"]),
    ({"ssm_state_size": 0}, ["ssm_state_size=0"]),
    ({"n_groups": 3}, ["n_groups=3 must divide mamba_num_heads=8"]),
    ({"hybrid_override_pattern": "M*-E", "n_routed_experts": 0}, ["MoE layers ('E')"]),
    ({"moe_latent_size": 1024}, ["LatentMoE"]),
    ({"num_nextn_predict_layers": 1}, ["multi-token-prediction"]),
])
def test_bad_hybrid_configs_are_refused_in_one_line(change, words):
    cfg = {"model_type": "nemotron_h", "num_hidden_layers": 4, "hybrid_override_pattern": "M*-E",
           "hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 512,
           "vocab_size": 1000, "mamba_num_heads": 8, "mamba_head_dim": 64, "ssm_state_size": 16, "n_groups": 2,
           "n_routed_experts": 4, "num_experts_per_tok": 2, "mlp_hidden_act": "relu2", **change}
    with pytest.raises(InputError) as e:
        from_hf_config(cfg, "tiny")
    assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


def test_a_bad_pattern_exits_2_at_the_cli(capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model_type: nemotron_h\nnum_hidden_layers: 3\nhybrid_override_pattern: 'M*Q'\n"
                    "hidden_size: 256\nnum_attention_heads: 4\nintermediate_size: 512\nvocab_size: 1000\n"
                    "mamba_num_heads: 8\nmamba_head_dim: 32\nssm_state_size: 16\nn_groups: 2\n")
    code = main(["simulate", "train", "--model", str(path), "--cluster", "dgx-h100", "--seq-len", "1024",
                 "--global-batch", "8"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "hybrid_override_pattern[2]='Q'" in err


# ---- the SSD scan ----------------------------------------------------------------------------

def _chunked_ssd(x, a, B, C, Q, heads_per_group):
    """The chunked SSD algorithm (Dao & Gu 2024 §6) written out, counting the FLOPs of every
    product it runs: per chunk 1) C·Bᵀ masked by the decays and applied to X, 2) the chunk's
    state Bᵀ·(decay·X), 3) the state passed on (decay·H + S), 4) the output C·H of the entering
    state. x (T, H, P), a (T, H) decays in (0, 1), B and C (T, G, N)."""
    T, H, P = x.shape
    N = B.shape[2]
    flops = {"cb": 0.0, "diag": 0.0, "states": 0.0, "passing": 0.0, "out": 0.0}
    y = np.zeros_like(x)
    state = np.zeros((H, N, P))
    for c0 in range(0, T, Q):
        sl = slice(c0, c0 + Q)
        for h in range(H):
            g = h // heads_per_group
            cs = np.cumsum(np.log(a[sl, h]))  # log decay from the chunk start
            L = np.tril(np.exp(cs[:, None] - cs[None, :]))
            if h % heads_per_group == 0:  # one C·Bᵀ per group
                flops["cb"] += 2 * Q * Q * N
            cb = C[sl, g] @ B[sl, g].T
            flops["diag"] += 2 * Q * Q * P
            y[sl, h] = (cb * L) @ x[sl, h]
            flops["out"] += 2 * Q * N * P
            y[sl, h] += np.exp(cs)[:, None] * (C[sl, g] @ state[h])
            decay = np.exp(cs[-1] - cs)
            flops["states"] += 2 * N * Q * P
            s_c = (B[sl, g] * decay[:, None]).T @ x[sl, h]
            flops["passing"] += 2 * N * P
            state[h] = np.exp(cs[-1]) * state[h] + s_c
    return y, flops


def test_ssd_flops_are_the_products_of_the_chunked_algorithm():
    """ssd_flops counts exactly the products the chunked algorithm runs, and that algorithm is the
    state-space recurrence h_t = a_t·h_{t−1} + B_t x_tᵀ, y_t = C_tᵀ h_t (checked numerically)."""
    rng = np.random.default_rng(0)
    T, H, G, N, P, Q = 48, 4, 2, 5, 3, 8
    x = rng.normal(size=(T, H, P))
    a = rng.uniform(0.5, 1.0, size=(T, H))
    B, C = rng.normal(size=(T, G, N)), rng.normal(size=(T, G, N))
    y, counted = _chunked_ssd(x, a, B, C, Q, H // G)
    ref, h = np.zeros_like(x), np.zeros((H, N, P))
    for t in range(T):
        for k in range(H):
            g = k // (H // G)
            h[k] = a[t, k] * h[k] + np.outer(B[t, g], x[t, k])
            ref[t, k] = C[t, g] @ h[k]
    np.testing.assert_allclose(y, ref, rtol=1e-9, atol=1e-9)
    s = dataclasses.replace(mamba_shape(load_model(NANO)), heads=H, head_dim=P, state=N, groups=G, chunk=Q)
    work = ssd_flops(s, T)
    for term, value in counted.items():
        assert getattr(work, term) == pytest.approx(value, rel=1e-12), term
    # with Q = N = P the chunked algorithm costs O(T·N²) per head (§6): linear in T
    s2 = dataclasses.replace(s, chunk=64, state=64, head_dim=64)
    assert ssd_flops(s2, 2 * 8192).total == pytest.approx(2 * ssd_flops(s2, 8192).total, rel=1e-12)


def test_the_ssd_is_memory_bound_at_nemotron_shapes():
    """Arithmetic intensity ≈ 40 FLOP/B, far under an H100's ≈ 300: the op's time is its bytes."""
    m = load_model(NANO)
    cluster = load_cluster("dgx-h100", nodes=1)
    job, plan = _job(m), TrainingPlan(dp=8, ep=8, mb=1, recompute="none")
    ssd = next(o for o in layer_ops(m, job, plan, cluster, False, "fwd", "M") if o.name == "ssd")
    s = mamba_shape(m)
    assert ssd.flops == pytest.approx(ssd_flops(s, 4096).total) and ssd.bytes == pytest.approx(ssd_bytes(s, 4096, 2))
    assert 30 < ssd.flops / ssd.bytes < 60
    from hwmodels.kernels import kernel_model
    assert ssd.time_s == pytest.approx(kernel_model("h100-sxm", "bf16").memory_s(ssd.bytes), rel=1e-9)


# ---- a layer on a rank ------------------------------------------------------------------------

@pytest.mark.parametrize("sp, fwd_ops, bwd_ops", [
    (False, ["all_reduce"], ["all_reduce"]),  # Shoeybi §3: g after out_proj, f before in_proj
    (True, ["all_gather", "reduce_scatter"], ["all_gather", "reduce_scatter"])])  # Korthikanti §4.2.2
def test_tp_collectives_per_mamba_layer(sp, fwd_ops, bwd_ops):
    """A Mamba layer exchanges over TP like an attention block: in_proj column-parallel (heads and
    groups split), out_proj row-parallel; messages of the layer's activation T·h·2 bytes."""
    m = load_model("nemotron-h-8b")
    cluster = load_cluster("dgx-h100", nodes=1)
    job, plan = _job(m), TrainingPlan(dp=4, tp=2, mb=1, sp=sp, recompute="none")
    T = 4096
    for phase, want in (("fwd", fwd_ops), ("bwd", bwd_ops)):
        ops = layer_ops(m, job, plan, cluster, False, phase, "M")
        comm = [o for o in ops if o.kind == "comm"]
        assert sorted(o.name.split(".")[0] + ":" + o.group for o in comm) == ["tp:tp"] * len(want)
        assert all(o.bytes == T * m.hidden_size * 2 for o in comm)
    fwd = layer_ops(m, job, plan, cluster, False, "fwd", "M")
    in_proj = next(o for o in fwd if o.name == "in_proj")
    assert in_proj.flops == 2 * T * m.hidden_size * (2 * 8192 + 2 * 8 * 128 + 128) / 2
    single = layer_ops(m, job, TrainingPlan(dp=8, mb=1, recompute="none"), cluster, False, "fwd", "M")
    assert not [o for o in single if o.kind == "comm"]


def test_tp_must_divide_the_mamba_heads_and_groups():
    m = load_model(NANO)  # 64 heads, 8 groups
    with pytest.raises(InputError, match="tp·cp = 16"):
        check_supported(m, TrainingPlan(dp=1, tp=16, ep=1, mb=1, sp=True))
    check_supported(m, TrainingPlan(dp=1, tp=8, ep=1, mb=1, sp=True))


def test_mamba_activations_are_what_the_kernels_save():
    """Per token, bf16, tp=1: the norm input and the in_proj input (2h each), the in_proj output,
    the scan output before the gate, the gated norm's input, one fp32 rstd per group, out_proj's
    input (mamba_split_conv1d_scan_combined, layernorm_gated, TE Linear)."""
    m = load_model("nemotron-h-8b")
    job, plan = _job(m), TrainingPlan(dp=8, mb=1, recompute="none")
    from simulator.memory import hybrid_activation_bytes
    h, di, width = 4096, 8192, 2 * 8192 + 2 * 8 * 128 + 128
    want = 4096 * (2 * h + 2 * h + 2 * width + 2 * di + 2 * di + 4 * 8 + 2 * di)
    assert hybrid_activation_bytes(m, job, plan, False, "M") == pytest.approx(want)
    # the dense layers' per-layer figure is the mean over the model's M, * and - layers
    kinds = {k: m.hybrid_pattern.count(k) for k in "M*-"}
    mean = sum(n * hybrid_activation_bytes(m, job, plan, False, k) for k, n in kinds.items()) / sum(kinds.values())
    assert layer_activation_bytes(m, job, plan, False) == pytest.approx(mean)


# ---- a step -----------------------------------------------------------------------------------

def _llama_like(num_layers=8):
    return from_hf_config({"model_type": "llama", "num_hidden_layers": num_layers, "hidden_size": 2048,
                           "num_attention_heads": 16, "num_key_value_heads": 4, "intermediate_size": 5632,
                           "vocab_size": 32000}, "tiny-llama")


@pytest.mark.parametrize("plan", [TrainingPlan(dp=8, mb=2, recompute="none"),
                                  TrainingPlan(dp=4, tp=2, mb=1, sp=True, recompute="selective"),
                                  TrainingPlan(dp=2, tp=2, pp=2, mb=1, sp=True, recompute="full")])
def test_an_attention_mlp_pattern_is_the_transformer(plan):
    """A hybrid of '*-' pairs is the transformer of half as many layers: the same ops, parameters
    and activations, so the same step, MFU and memory (full recompute aside: it keeps the input of
    each of the hybrid's twice as many layers, as Megatron-Core checkpoints every layer, and
    recomputes one block at a time)."""
    dense = _llama_like(8)
    hybrid = dataclasses.replace(dense, name="tiny-hybrid", num_layers=16, hybrid_pattern="*-" * 8)
    assert hybrid.num_params == dense.num_params
    cluster = load_cluster("dgx-h100", nodes=1)
    a, b = estimate(_job(dense), plan, cluster), estimate(_job(hybrid), plan, cluster)
    assert b.step_time_s == pytest.approx(a.step_time_s, rel=1e-9)
    assert b.mfu == pytest.approx(a.mfu, rel=1e-9)
    if plan.recompute != "full":
        assert b.memory["peak_bytes"] == pytest.approx(a.memory["peak_bytes"], rel=1e-9)


def test_a_hybrid_step_is_the_sum_of_its_layer_kinds():
    """Swapping one Mamba layer for an MLP layer changes the step's compute by the two layers'
    difference, every micro-batch."""
    m = load_model(NANO)
    swapped = dataclasses.replace(m, name="nano-swapped", hybrid_pattern="-" + m.hybrid_pattern[1:])
    cluster = load_cluster("dgx-h100", nodes=1)
    plan = TrainingPlan(dp=8, ep=8, mb=1, recompute="none")
    a, b = estimate(_job(m), plan, cluster), estimate(_job(swapped), plan, cluster)
    job = _job(m)
    mamba, mlp = layer_cost(m, job, plan, cluster, False, "M"), layer_cost(m, job, plan, cluster, False, "-")
    micro = 64 // 8
    want = micro * ((mamba.fwd_compute_s + mamba.bwd_compute_s) - (mlp.fwd_compute_s + mlp.bwd_compute_s))
    assert a.breakdown_s["compute"] - b.breakdown_s["compute"] == pytest.approx(want, rel=1e-6)


def test_free_mamba_layers_would_shorten_the_step_by_their_share(monkeypatch):
    """Switching the Mamba mixer's cost off (its layers keep only their norm and residual) takes
    the mixers' time out of the step — over a sixth of Nemotron-3 Nano's step on 8 H100s."""
    m = load_model(NANO)
    cluster = load_cluster("dgx-h100", nodes=1)
    plan = TrainingPlan(dp=8, ep=8, mb=1, recompute="none")
    job = _job(m)
    full = estimate(job, plan, cluster)

    def mixer_s(model):
        out = 0.0
        for phase in ("fwd", "bwd"):
            ops = layer_ops(model, _job(model), plan, cluster, False, phase, "M")
            out += sum(o.time_s for o in ops if o.kind == "compute" and not o.name.startswith(("norm", "bias_")))
        return out
    share = 64 // 8 * m.hybrid_pattern.count("M") * mixer_s(m)
    assert share > full.step_time_s / 6
    monkeypatch.setattr(ops_mod, "_mamba_block", lambda *a, **k: None)
    free = dataclasses.replace(m, name="nano-free-mamba")  # a model the caches have not seen
    cut = estimate(_job(free), plan, cluster)
    assert full.step_time_s - cut.step_time_s == pytest.approx(share, rel=1e-6)
