"""GPT-OSS and local (sliding-window) attention: the config parse, the windowed attention cost in
training and serving, the KV sizing per engine, and bad input (simulator/models.py,
simulator/ops.py, simulator/serving/costs.py, simulator/serving/kv_cache.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from hwmodels.clusters import load_cluster
from hwmodels.errors import InputError
from hwmodels.kernels import kernel_model
from simulator.models import _PRESETS_FILE, from_hf_config, load_model
from simulator.ops import _model_flops_fwd, chunk_attention_s, layer_cost, window_mix, window_pairs
from simulator.serving.costs import IterationCost
from simulator.serving.kv_cache import SGLANG_SWA_FULL_TOKENS_RATIO, kv_bytes_per_token
from simulator.training import TrainingJob, TrainingPlan

RAW = yaml.safe_load(_PRESETS_FILE.read_text())["models"]
ROOT = Path(__file__).resolve().parents[1]
# aiconfigurator-core 0.12.0 ships the published HF config.json of both models
AIC_CONFIGS = Path(__import__("importlib.util").util.find_spec("aiconfigurator_core")
                   .submodule_search_locations[0]) / "model_configs"


def _full(model):
    """The same model with the switch off: window 0, every layer full attention."""
    return replace(model, sliding_window=0)


# ---- the config parse --------------------------------------------------------------------------

@pytest.mark.parametrize("name, layers, experts", [("gpt-oss-120b", 36, 128), ("gpt-oss-20b", 24, 32)])
def test_published_config_json_reads_as_the_preset(name, layers, experts):
    """The HF config.json (as aiconfigurator-core ships it) and the preset give one model: layers
    alternate sliding (even) and full (odd), window 128, 64/8 heads of 64, 4 of N experts."""
    cfg = json.loads((AIC_CONFIGS / f"openai--{name}_config.json").read_text())
    m = from_hf_config(cfg, name=name)
    p = load_model(name)
    assert m.num_params == p.num_params and m.layer_types == p.layer_types
    assert m.num_layers == layers and m.num_experts == experts and m.experts_per_token == 4
    assert (m.hidden_size, m.num_heads, m.num_kv_heads, m.head_dim) == (2880, 64, 8, 64)
    assert m.moe_ffn_hidden_size == 2880 and m.vocab_size == 201088 and m.gated_mlp
    assert m.sliding_window == 128 and m.attention_sinks and m.linear_bias and not m.tie_embeddings
    assert [m.layer_window(i) for i in range(4)] == [128, 0, 128, 0]
    assert m.window_counts() == ((0, layers // 2), (128, layers // 2))
    assert m.expert_quant == p.expert_quant == ("mxfp4" if cfg.get("quantization_config") else "")


def test_mxfp4_experts_serve_on_one_hopper_gpu():
    """GPT-OSS-120B ships MXFP4 experts (61 GiB of weights): it serves from one 80 GB H100 with the
    MXFP4 w4a16 fused-MoE kernel; with 16-bit experts it would not fit."""
    from simulator.serving.engine import ReplicaGroup, ServingPlan, ServingSimulation
    from simulator.serving.workload import ServingWorkload, LengthDist
    m, h100 = load_model("gpt-oss-120b"), load_cluster("dgx-h100")
    wl = ServingWorkload(num_requests=8, prompt_len=LengthDist.parse("512"), output_len=LengthDist.parse("16"),
                         concurrency=4)
    sim = ServingSimulation(m, ServingPlan((ReplicaGroup(h100, 1, 1, 1, 1),)), wl)
    assert sim.run().completed == 8
    rep = sim.replicas[0]
    if rep.costs._moe is not None:  # aiconfigurator-core's tables installed
        assert rep.costs._moe[1] == "w4a16_mxfp4"
    assert rep.pool.breakdown["weights_bytes"] < 70 * 2**30
    with pytest.raises(InputError, match="does not fit"):
        ServingSimulation(replace(m, expert_quant=""), ServingPlan((ReplicaGroup(h100, 1, 1, 1, 1),)), wl)


@pytest.mark.parametrize("name", ["gpt-oss-120b", "gpt-oss-20b"])
def test_counts_match_the_model_card(name):
    """gpt-oss model card (arXiv 2508.10925) Table 1: 116.83B / 20.91B total; active 5.13B / 3.61B
    counts the unembedding but not the embedding table (5.71B - 0.58B here)."""
    m, raw = load_model(name), RAW[name]
    assert m.num_params == pytest.approx(raw["published_params"], rel=0.001)
    active = m.num_active_params - m.vocab_size * m.hidden_size
    assert active == pytest.approx(raw["published_active_params_without_embedding"], rel=0.002)
    # attention per layer: Q/K/V/O with biases plus 64 sinks; 36 layers = 0.96B (Table 1)
    assert m.attention_params() == 2880 * 4096 * 2 + 2880 * 512 * 2 + 4096 + 1024 + 2880 + 64
    if name == "gpt-oss-120b":
        assert m.attention_params() * m.num_layers == pytest.approx(0.96e9, rel=0.01)


def test_sinks_are_counted_and_switch_off():
    m = load_model("gpt-oss-20b")
    assert m.attention_params() - replace(m, attention_sinks=False).attention_params() == 64


def test_mistral_style_window_applies_to_every_layer_and_qwen_needs_use_sliding_window():
    base = {"model_type": "mistral", "num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4,
            "num_key_value_heads": 2, "intermediate_size": 512, "vocab_size": 1000, "sliding_window": 64}
    assert from_hf_config(base).window_counts() == ((64, 4),)
    assert from_hf_config({**base, "sliding_window": None}).window_counts() == ((0, 4),)
    qwen = {**base, "model_type": "qwen2", "sliding_window": 4096, "use_sliding_window": False}
    assert from_hf_config(qwen).window_counts() == ((0, 4),)
    qwen.update(use_sliding_window=True, max_window_layers=3)  # HF Qwen2Config: layers >= 3 slide
    assert [from_hf_config(qwen).layer_window(i) for i in range(4)] == [0, 0, 0, 4096]


# ---- training attention ------------------------------------------------------------------------

def test_window_pairs_hand_computed():
    """s = 8 tokens, window 3: queries see 1, 2, 3, 3, 3, 3, 3, 3 keys = 21 pairs counted by hand
    (= s·w − w(w−1)/2); the continuous form s·w − w²/2 = 19.5 drops w/2 of the diagonal, as
    s²/2 drops s/2 of the causal s(s+1)/2."""
    assert sum(min(i + 1, 3) for i in range(8)) == 21
    assert window_pairs(8, 0, 3) == pytest.approx(21 - 3 / 2)
    assert window_pairs(8, 0, 0) == window_pairs(8, 0, 100) == 32  # no window / wider than the context
    assert window_pairs(4, 10, 3) == 12  # every query reaches back a full window
    assert window_pairs(4, 1, 3) == pytest.approx((9 - 1) / 2 + 2 * 3)  # partly inside
    # GPT-OSS at 4096 tokens: half the layers at (4096·128 − 128²/2)/(4096²/2) of full
    assert window_mix(load_model("gpt-oss-120b"), 4096) == pytest.approx(
        (1 + (4096 * 128 - 128 * 128 / 2) / (4096 * 4096 / 2)) / 2)


def test_windowed_chunk_costs_its_band_blocks():
    """s = 4096, w = 128: s/w − 1/2 = 31.5 band blocks of w² pairs per sequence, each at the cheaper
    of two causal-128 kernels or the second half of a causal-256 kernel (measured tables)."""
    km = kernel_model("h100-sxm", "bf16")
    m = load_model("gpt-oss-120b")
    s, w = 4096, 128
    blocks = window_pairs(s, 0, w) / (w * w)
    assert blocks == pytest.approx(31.5)
    t_w = km.flash_attention_s(2 * 32, w, w, 64, 8, 64, True)
    t_2w = km.flash_attention_s(2 * 32, 2 * w, 2 * w, 64, 8, 64, True)
    t = chunk_attention_s(km, m, 64, 8, 2, s, 0, w)
    assert t == pytest.approx(min(2 * t_w, t_2w - t_w) * 31.5 / 32, rel=1e-12)
    full = chunk_attention_s(km, m, 64, 8, 2, s, 0)
    assert window_pairs(s, 0, w) / (s * s / 2) == pytest.approx(63 / 1024, rel=1e-12)
    assert t < 0.5 * full  # 6% of the pairs, at the low measured rate of 256-token kernels
    assert chunk_attention_s(km, m, 64, 8, 2, s, 0, s) == full  # window = context: full attention
    # a wide window (many kernel tiles): the two-triangle decomposition is the cheaper one
    wide = chunk_attention_s(km, m, 64, 8, 1, 32768, 0, 4096)
    t4 = km.flash_attention_s(8, 4096, 4096, 64, 8, 64, True)
    assert wide == pytest.approx(2 * t4 * (32768 / 4096 - 0.5) / 8, rel=1e-9)


def test_training_attention_is_the_layer_mix_and_switches_off():
    m = load_model("gpt-oss-120b")
    cluster = load_cluster("dgx-h100", nodes=1)
    job = TrainingJob(model=m, seq_len=4096, global_batch=64)
    plan = TrainingPlan(dp=8, tp=1, pp=1, ep=8, mb=1)
    windowed = layer_cost(m, job, plan, cluster, True)
    fm = _full(m)
    full = layer_cost(fm, replace(job, model=fm), plan, cluster, True)
    assert windowed.fwd_compute_s < full.fwd_compute_s
    # model FLOPs: attention scaled by window_mix, everything else unchanged
    f_w, a_w = _model_flops_fwd(m, job, plan, True)
    f_f, a_f = _model_flops_fwd(fm, replace(job, model=fm), plan, True)
    assert a_w == pytest.approx(a_f * window_mix(m, 4096), rel=1e-12)
    assert f_f - f_w == pytest.approx(a_f - a_w, rel=1e-9)


# ---- serving attention and KV ------------------------------------------------------------------

@pytest.fixture(scope="module")
def costs():
    cluster = load_cluster("dgx-h100", nodes=1)
    m = load_model("gpt-oss-120b")
    return IterationCost(m, cluster, tp=1), IterationCost(_full(m), cluster, tp=1)


def test_decode_reads_min_of_context_and_window(costs):
    win, full = costs
    # below the window both read everything
    assert win.decode_attention_s(32, 32 * 100) == pytest.approx(full.decode_attention_s(32, 32 * 100), rel=1e-12)
    # at 8192 tokens the 18 windowed layers read 128 tokens: one full layer's time at 128 each
    per_full_layer = full.decode_attention_s(32, 32 * 8192) / 36
    per_short = full.decode_attention_s(32, 32 * 128) / 36
    assert win.decode_attention_s(32, 32 * 8192) == pytest.approx(18 * per_full_layer + 18 * per_short, rel=1e-9)


def test_prefill_windowed_layers_cost_their_window(costs):
    win, full = costs
    t_w, t_f = win.prefill_attention_s(1, 8192, 0), full.prefill_attention_s(1, 8192, 0)
    assert 0.5 * t_f < t_w < 0.75 * t_f  # half the layers at 3% of the pairs, at short-kernel rates
    # a chunk far into a long context: windowed layers do not grow with the context
    grow_w = win.prefill_attention_s(1, 512, 16384) - win.prefill_attention_s(1, 512, 8192)
    grow_f = full.prefill_attention_s(1, 512, 16384) - full.prefill_attention_s(1, 512, 8192)
    assert grow_w == pytest.approx(grow_f / 2, rel=1e-6)


def test_kv_bytes_per_engine_against_their_sources():
    m = load_model("gpt-oss-120b")
    per_layer = 2 * 8 * 64 * 2  # K and V, 8 KV heads of 64, bf16
    assert kv_bytes_per_token(m, 1, 1, "bf16") == 36 * per_layer  # no engine: every layer
    # vLLM hybrid KV-cache manager: windowed layers keep blocks of the window only
    assert kv_bytes_per_token(m, 1, 1, "bf16", "vllm") == 18 * per_layer
    # SGLang set_num_token_hybrid: full_tokens = total / (0.8·swa_layers + full_layers)
    assert SGLANG_SWA_FULL_TOKENS_RATIO == 0.8
    assert kv_bytes_per_token(m, 1, 1, "bf16", "sglang") == pytest.approx((18 + 0.8 * 18) * per_layer)
    # TensorRT-LLM: max_attention_window defaults to max_seq_len for all layers: one pool, no shrink
    assert kv_bytes_per_token(m, 1, 1, "bf16", "trtllm") == 36 * per_layer
    # tp 8 splits the 8 KV heads; pp 2 gives each stage 9 full layers
    assert kv_bytes_per_token(m, 8, 2, "bf16", "vllm") == 9 * 2 * 1 * 64 * 2


def test_kv_switch_off_restores_every_layer():
    m = _full(load_model("gpt-oss-120b"))
    for policy in ("vllm", "sglang", "trtllm"):
        assert kv_bytes_per_token(m, 1, 1, "bf16", policy) == 36 * 2 * 8 * 64 * 2


def test_all_windowed_model_keeps_its_per_token_rate():
    base = {"model_type": "mistral", "num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4,
            "num_key_value_heads": 2, "intermediate_size": 512, "vocab_size": 1000, "sliding_window": 64}
    m = from_hf_config(base)
    assert kv_bytes_per_token(m, 1, 1, "bf16", "vllm") == kv_bytes_per_token(m, 1, 1, "bf16") > 0


# ---- bad input ---------------------------------------------------------------------------------

def _cfg(**kw):
    cfg = json.loads((AIC_CONFIGS / "openai--gpt-oss-20b_config.json").read_text())
    cfg.update(kw)
    return cfg


def test_window_larger_than_the_context_is_full_attention():
    m = from_hf_config(_cfg(sliding_window=1_000_000))
    assert window_mix(m, 4096) == 1.0


@pytest.mark.parametrize("kw, words", [
    ({"sliding_window": -1}, "sliding_window=-1 must be an integer >= 0"),
    ({"sliding_window": 12.5}, "sliding_window=12.5 must be an integer >= 0"),
    ({"layer_types": ["sliding_attention", "mamba"] + ["full_attention"] * 22},
     "layer_types[1]='mamba' is not a layer kind; valid: full_attention, sliding_attention, linear_attention"),
    # a linear-attention layer needs the Gated DeltaNet sizes (HF Qwen3NextConfig keys)
    ({"layer_types": ["sliding_attention", "linear_attention"] + ["full_attention"] * 22},
     "missing key 'linear_num_key_heads'"),
    ({"layer_types": ["full_attention"] * 3}, "layer_types has 3 entries; num_hidden_layers=24"),
])
def test_bad_window_config_is_one_line_and_exit_2(tmp_path, kw, words):
    with pytest.raises(InputError) as info:
        from_hf_config(_cfg(**kw))
    assert words in str(info.value) and "\n" not in str(info.value)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_cfg(**kw)))
    r = subprocess.run([sys.executable, "-m", "ui.cli", "catalog", "models", "--model", str(path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2, r.stderr
    assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_mxfp4_experts_keep_16_bit_activations_except_trtllm_on_blackwell():
    """costs.checkpoint_moe_quant: vLLM and SGLang run GPT-OSS's MXFP4 experts with 16-bit
    activations on Hopper and Blackwell; TensorRT-LLM's default Blackwell MoE backend quantises
    the activations to MXFP8 (TensorRT-LLM "Deployment Guide for GPT-OSS"), its Hopper one not.
    A model without MXFP4 experts keeps its dtype (None)."""
    from simulator.serving.costs import checkpoint_moe_quant
    gpt = load_model("gpt-oss-120b")
    b200, h200 = load_cluster("dgx-b200").device, load_cluster("dgx-h200").device
    assert checkpoint_moe_quant(gpt, "trtllm", b200) == "w4a8_mxfp4_mxfp8"
    for engine in ("vllm", "sglang"):
        assert checkpoint_moe_quant(gpt, engine, b200) == "w4a16_mxfp4"
    for engine in ("vllm", "sglang", "trtllm"):
        assert checkpoint_moe_quant(gpt, engine, h200) == "w4a16_mxfp4"
    assert checkpoint_moe_quant(load_model("mixtral-8x7b"), "trtllm", b200) is None
