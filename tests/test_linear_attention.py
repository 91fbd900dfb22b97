"""Gated DeltaNet linear attention (Qwen3-Next, Qwen3.5): config reading, parameter counts, the
recurrence's costs, the per-request state and how each engine pools it; the serving-only scope."""
from __future__ import annotations

import subprocess
import sys

import pytest

from hwmodels.clusters import load_cluster
from hwmodels.errors import InputError
from simulator.linear_attention import (RECURRENT_STATE_BYTES, chunk_bytes, chunk_flops, gdn_shape, gdn_state_bytes,
                                        recurrent_bytes, recurrent_flops, state_layers_per_stage)
from simulator.models import FULL_ATTENTION, LINEAR_ATTENTION, from_hf_config, load_model
from simulator.serving.costs import IterationCost
from simulator.serving.kv_cache import SGLANG_MAMBA_FULL_MEMORY_RATIO, kv_bytes_per_token, kv_pool, sglang_state_slots
from simulator.serving.scheduler import Batch

# Qwen3-Next-80B-A3B (HF Qwen/Qwen3-Next-80B-A3B-Instruct config.json) and Qwen3.5-35B-A3B's text
# model (HF Qwen/Qwen3.5-35B-A3B config.json text_config): no layer_types, full_attention_interval 4
QWEN3_NEXT = dict(model_type="qwen3_next", hidden_size=2048, num_hidden_layers=48, num_attention_heads=16,
                  num_key_value_heads=2, head_dim=256, intermediate_size=5120, linear_conv_kernel_dim=4,
                  linear_key_head_dim=128, linear_num_key_heads=16, linear_num_value_heads=32,
                  linear_value_head_dim=128, moe_intermediate_size=512, num_experts=512, num_experts_per_tok=10,
                  shared_expert_intermediate_size=512, vocab_size=151936, tie_word_embeddings=False)
QWEN35_35B = dict(QWEN3_NEXT, model_type="qwen3_5_moe_text", num_hidden_layers=40, num_experts=256,
                  num_experts_per_tok=8, intermediate_size=512, vocab_size=248320)


def test_layer_pattern_from_the_full_attention_interval():
    m = from_hf_config(QWEN3_NEXT, "qwen3-next")
    # HF Qwen3NextConfig: layer i is full attention when (i + 1) % interval == 0
    assert [i for i in range(48) if m.layer_types[i] == FULL_ATTENTION] == list(range(3, 48, 4))
    assert m.num_linear_layers == 36 and m.is_linear_layer(0) and not m.is_linear_layer(3)
    assert m.attention_window_counts() == ((0, 12),)  # attention layers only
    assert m.attn_output_gate


@pytest.mark.parametrize("cfg, published", [(QWEN3_NEXT, 80e9), (QWEN35_35B, 35e9)])
def test_parameter_counts_match_the_published_totals(cfg, published):
    # Qwen3-Next-80B-A3B: "80B parameters"; Qwen3.5-35B-A3B: 35B with a ~0.4B vision encoder
    # that the language model leaves out; both rounded to whole billions
    m = from_hf_config(cfg)
    assert abs(m.num_params - published) / published < 0.02


def test_gated_deltanet_parameters_by_hand():
    m = from_hf_config(QWEN3_NEXT)
    h, kd, vd, nv = 2048, 16 * 128, 32 * 128, 32
    by_hand = h * (2 * kd + 2 * vd) + h * 2 * nv + (2 * kd + vd) * 4 + 2 * nv + 128 + vd * h
    assert m.linear_attention_params() == by_hand
    # gated attention: q_proj carries the gate, so 2 x q_dim outputs
    assert m.attention_params() == h * 2 * 16 * 256 + 2 * h * 2 * 256 + 16 * 256 * h + 2 * 256


def test_the_qwen35_preset():
    m = load_model("qwen3.5-397b-a17b")
    assert m.num_linear_layers == 45 and m.attention_window_counts() == ((0, 15),)
    assert abs(m.num_params - 397e9) / 397e9 < 0.01
    assert abs(m.num_active_params - 17e9) / 17e9 < 0.03  # "A17B"


@pytest.mark.parametrize("change, words", [
    ({"linear_num_key_heads": 5}, "linear_num_key_heads=5 must divide linear_num_value_heads=32"),
    ({"linear_key_head_dim": 0}, "linear_key_head_dim=0 must be > 0"),
    ({"linear_num_value_heads": None}, "missing key 'linear_num_value_heads'"),
])
def test_bad_gated_deltanet_config_is_one_line(change, words):
    cfg = {**QWEN3_NEXT, **change}
    cfg = {k: v for k, v in cfg.items() if v is not None}
    with pytest.raises(InputError) as info:
        from_hf_config(cfg)
    assert words in str(info.value) and "\n" not in str(info.value)
    # through the CLI: one line, exit 2
    import json
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/config.json"
        with open(path, "w") as f:
            json.dump(cfg, f)
        r = subprocess.run([sys.executable, "-m", "ui.cli", "catalog", "models", "--model", path],
                           capture_output=True, text=True)
    assert r.returncode == 2 and words in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_kv_counts_attention_layers_and_the_state_counts_the_others():
    m = load_model("qwen3.5-397b-a17b")
    # 15 full-attention layers x K and V x 1 KV head per rank (2 heads over tp 8, replicated) x 256 x 2 B
    assert kv_bytes_per_token(m, 8, 1, "bf16") == 15 * 2 * 1 * 256 * 2
    # per GDN layer and rank: the conv window (3 past inputs of q, k, v channels, bf16) and the
    # 128 x 128 state of each of 64/8 value heads
    conv = (2 * 2 * 128 + 8 * 128) * 3 * 2
    assert gdn_state_bytes(m, 8, 45, 4) == 45 * (conv + 8 * 128 * 128 * 4)
    assert RECURRENT_STATE_BYTES["sglang"] == 4 and RECURRENT_STATE_BYTES["vllm"] == 2


def test_chunk_and_recurrent_work_by_formula():
    s = gdn_shape(load_model("qwen3.5-397b-a17b"), 8)
    assert (s.key_heads, s.value_heads) == (2, 8)
    K = V = 128
    C = 64
    per = 2 * C * K + 2 * C * C / 3 + 2 * C * (K + V) + 6 * K * V + 2 * C * (K + V)
    assert chunk_flops(s, 100) == pytest.approx(100 * 8 * per)
    assert chunk_bytes(s, 100) == pytest.approx(100 * 8 * ((6 * K + 7 * V) * 2 + 3 * C * 4 + 2 * K * V * 2 / C))
    # decode: the state read and written back dominates (fp32: 2 x 8 heads x 128 x 128 x 4 B)
    assert recurrent_bytes(s, 1, 4) > 2 * 8 * K * V * 4


def test_shapes_and_the_recurrent_step_by_formula():
    m = load_model("qwen3.5-397b-a17b")
    s = gdn_shape(m, 4)  # 16/4 key heads, 64/4 value heads of 128
    assert s.qkvz_width == 2 * 4 * 128 + 2 * 16 * 128 and s.conv_channels == 2 * 4 * 128 + 16 * 128
    assert recurrent_flops(s, 3) == 3 * 16 * 6 * 128 * 128
    # the state twice (read, write) plus q, k in and v, o (16-bit) per sequence
    assert recurrent_bytes(s, 3, 2) == 3 * (2 * 16 * 128 * 128 * 2 + (2 * 4 * 128 + 2 * 16 * 128) * 2)
    # the most loaded of pp stages: 60 layers in stages of 15; each stage has 3 of every 4 linear
    assert state_layers_per_stage(m, 1)[0] == 45
    assert state_layers_per_stage(m, 4)[0] == 12  # 15 layers from 0: linear except 3, 7, 11 (and 15 next stage)
    assert state_layers_per_stage(m, 3)[0] == 15  # stages of 20: 15 linear each


def test_uneven_head_splits_and_stage_counts():
    from simulator.linear_attention import GDNShape
    s = GDNShape(key_heads=3, value_heads=6, key_dim=96, value_dim=80, conv=4)
    assert s.conv_channels == 2 * 3 * 96 + 6 * 80 == 1056
    m = load_model("qwen3.5-397b-a17b")
    assert gdn_shape(m) == gdn_shape(m, 1)
    assert gdn_shape(m, 3).key_heads == 5 and gdn_shape(m, 3).value_heads == 21  # whole heads per rank
    # the linear layers sit in the last stage: its count is the most loaded stage's
    cfg = {**QWEN3_NEXT, "num_hidden_layers": 8, "layer_types": [FULL_ATTENTION] * 4 + [LINEAR_ATTENTION] * 4}
    assert state_layers_per_stage(from_hf_config(cfg), 2)[0] == 4


def test_sglang_state_pool_split():
    # sglang model_runner handle_max_mamba_cache: rest · r/(1+r) // per-request state
    slots, used = sglang_state_slots(100e9, 1e9)
    assert slots == int(100e9 * 0.9 / 1.9 // 1e9) == 47 and used == 47e9
    assert SGLANG_MAMBA_FULL_MEMORY_RATIO == 0.9


def _pool(engine):
    m = load_model("qwen3.5-397b-a17b")
    return kv_pool(m, load_cluster("dgx-b200").device, 8, 1, 8, "fp8", "bf16", engine, 0.9, 16, 8192, 256)


def test_each_engine_pools_the_state_its_way():
    sg, vl = _pool("sglang"), _pool("vllm")
    assert sg.state_slots is not None and sg.state_slots > 256 and sg.state_blocks == 0
    assert sg.breakdown["state_bytes"] == pytest.approx(sg.state_slots * sg.state_bytes_per_request)
    # SGLang's state pool takes ~0.9/1.9 of the memory after the weights from the KV pool
    assert sg.breakdown["kv_bytes"] < sg.breakdown["state_bytes"] * 1.2
    # vLLM: one pool; each request takes its state's worth of blocks
    assert vl.state_slots is None and vl.state_blocks == -(-vl.state_bytes_per_request // (16 * vl.bytes_per_token))
    # fp32 state in SGLang, 16-bit in vLLM
    assert sg.state_bytes_per_request > 1.9 * vl.state_bytes_per_request


def _decode_batch(n, kv_per_seq=1024):
    b = Batch()
    b.num_decode, b.decode_kv_tokens, b.samples = n, n * kv_per_seq, n
    return b


def test_recurrence_costs_decode_and_prefill_and_its_state_dtype():
    m = load_model("qwen3.5-397b-a17b")
    cl = load_cluster("dgx-b200")
    sg = IterationCost(m, cl, tp=8, ep=8, dtype="fp8", engine="sglang")
    vl = IterationCost(m, cl, tp=8, ep=8, dtype="fp8", engine="vllm")
    assert sg.recurrent_s(64, 0) > 1.5 * vl.recurrent_s(64, 0) > 0  # fp32 vs bf16 state traffic
    assert sg.recurrent_s(0, 8192) > sg.recurrent_s(0, 1024) > 0
    assert sg.recurrent_s(128, 0) > sg.recurrent_s(64, 0)
    # it is part of every pass: switched off, a decode pass is shorter by exactly its time
    b = _decode_batch(64)
    with_it = sg.iteration_s(b)
    sg._tile_rate = 0.0  # no recurrent scans
    assert with_it - sg.iteration_s(b) == pytest.approx(IterationCost(m, cl, tp=8, ep=8, dtype="fp8",
                                                                       engine="sglang").recurrent_s(64, 0), rel=1e-9)


def test_a_shared_pool_admits_fewer_requests_with_state_blocks():
    from simulator.serving.engine import ReplicaGroup, ServingPlan, simulate
    from simulator.serving.workload import LengthDist, ServingWorkload
    m = load_model("qwen3.5-397b-a17b")
    cl = load_cluster("dgx-b200")
    wl = ServingWorkload(num_requests=64, concurrency=64, prompt_len=LengthDist.parse("256"),
                         output_len=LengthDist.parse("32"))

    def run(blocks):
        plan = ServingPlan((ReplicaGroup(cl, 8, 1, 8, 1, "both"),), engine="vllm", dtype="fp8",
                           kv_blocks=blocks, prefix_caching=False)
        return simulate(m, plan, wl)
    state_blocks = _pool("vllm").state_blocks
    # a pool of 4 requests' prompts plus states runs them 4 at a time: later requests queue
    small = run(4 * (state_blocks + 256 // 16 + 2))
    big = run(64 * (state_blocks + 256 // 16 + 2))
    assert small.ttft_s["mean"] > 3 * big.ttft_s["mean"]


def test_training_refuses_gated_deltanet_in_one_line():
    r = subprocess.run([sys.executable, "-m", "ui.cli", "simulate", "train", "--model", "qwen3.5-397b-a17b",
                        "--cluster", "dgx-h100", "--plan", "tp=8,ep=8", "--seq-len", "4096",
                        "--global-batch", "64"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Gated DeltaNet linear-attention layers are modelled for serving only" in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_layer_types_entry_names_the_kind():
    assert LINEAR_ATTENTION == "linear_attention"


# ---- Mamba-2 layers of hybrid models in serving (Nemotron-H, Nemotron-3) ---------------------------

def test_hybrid_kv_and_state_per_request():
    from simulator.mamba import mamba_shape, mamba_state_bytes
    m = load_model("nemotron-3-nano-30b-a3b")
    attn = m.hybrid_pattern.count("*")
    assert m.attention_window_counts() == ((0, attn),) and m.num_state_layers == m.hybrid_pattern.count("M")
    # KV only on the attention blocks: K and V of 2 KV heads of head_dim, 16-bit
    assert kv_bytes_per_token(m, 1, 1, "bf16") == attn * 2 * 2 * m.head_dim * 2
    s = mamba_shape(m, 1)
    # SGLang Mamba2StateShape: conv (conv_dim, d_conv - 1) in bf16, temporal (heads, head_dim, d_state)
    per_layer = (s.conv - 1) * (s.d_inner + 2 * s.groups * s.state) * 2 + s.heads * s.head_dim * s.state * 4
    assert mamba_state_bytes(s, 4) == per_layer
    assert state_layers_per_stage(m, 1) == (0, m.num_state_layers)
    assert _pool_of(m, "sglang", 1).state_bytes_per_request == m.num_state_layers * per_layer


def _pool_of(m, engine, tp):
    return kv_pool(m, load_cluster("dgx-h100").device, tp, 1, 1, "bf16", "bf16", engine, 0.9, 16, 8192, 256)


def test_mamba_scan_is_costed_per_batch():
    from simulator.mamba import mamba_shape
    from simulator.ops import ssd_op
    m = load_model("nemotron-3-nano-30b-a3b")
    c = IterationCost(m, load_cluster("dgx-h100"), tp=1, engine="vllm")
    n = m.num_state_layers
    assert c.recurrent_s(0, 4096) == pytest.approx(n * ssd_op(c.km16, mamba_shape(m, 1), 4096, "fwd").time_s)
    assert c.recurrent_s(64, 0) > c.recurrent_s(8, 0) > 0
    # an engine keeping the state in fp32 (SGLang) reads twice the state bytes of a 16-bit one
    sg = IterationCost(m, load_cluster("dgx-h100"), tp=1, engine="sglang")
    assert sg.recurrent_s(256, 0) > 1.5 * c.recurrent_s(256, 0)
    b = _decode_batch(32)
    with_it = c.iteration_s(b)
    c._tile_rate = 0.0
    assert with_it - c.iteration_s(b) == pytest.approx(
        IterationCost(m, load_cluster("dgx-h100"), tp=1, engine="vllm").recurrent_s(32, 0), rel=1e-9)


def test_a_hybrid_model_serves_end_to_end():
    r = subprocess.run([sys.executable, "-m", "ui.cli", "simulate", "serve", "--model", "nemotron-3-nano-30b-a3b",
                        "--cluster", "dgx-h100", "--plan", "tp=1", "--engine", "sglang", "--requests", "64",
                        "--concurrency", "8", "--prompt-len", "512", "--output-len", "64", "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    import json
    doc = json.loads(r.stdout)
    assert doc["completed"] == 64 and doc["rejected"] == 0
    assert 0 < doc["ttft_s"]["mean"] < 5 and 0 < doc["tpot_s"]["mean"] < 0.5
    rep = doc["replicas"][0]
    mem = rep["memory_per_gpu"]  # SGLang: the state pool beside the KV pool
    assert mem["state_bytes"] > 0 and mem["kv_bytes"] > 0
    assert rep["state_slots"] * rep["state_bytes_per_request"] == pytest.approx(mem["state_bytes"])
    assert rep["state_blocks_per_request"] == 0
    # the text report says how large the state is and where it lives
    text = subprocess.run([sys.executable, "-m", "ui.cli", "simulate", "serve", "--model", "nemotron-3-nano-30b-a3b",
                           "--cluster", "dgx-h100", "--plan", "tp=1", "--engine", "vllm", "--requests", "16",
                           "--concurrency", "4", "--prompt-len", "256", "--output-len", "16"],
                          capture_output=True, text=True).stdout
    assert "MiB per request and GPU" in text and "KV blocks per request" in text
