"""Pin tests for simulator.serving.kv_cache (written from surviving mutants): KV bytes per token,
weights per GPU and the KV pool each engine sizes, and the block / prefix-cache accounting, each
from a published figure or an engine's documented policy."""
from __future__ import annotations

import pytest

from hwmodels.devices import get_device
from hwmodels.errors import InputError
from simulator.models import load_model
from simulator.serving.kv_cache import (KVCache, activation_peak_bytes, kv_bytes_per_token, kv_pool,
                                        weight_bytes_per_gpu)

GIB = 2 ** 30


# ---- KV bytes per token ------------------------------------------------------------------------
def test_llama3_70b_kv_cache_is_320_kib_per_token():
    """Llama 3 70B: 80 layers x 8 KV heads x 128 x K and V x 2 bytes = 320 KiB per token (bf16);
    TP 8 gives each GPU one KV head; fp8 KV halves it; PP 2 halves the layers."""
    m = load_model("llama3-70b")
    assert kv_bytes_per_token(m, 1, 1, "bf16") == 320 * 1024
    assert kv_bytes_per_token(m, 8, 1, "bf16") == 40 * 1024
    assert kv_bytes_per_token(m, 8, 1, "fp8") == 20 * 1024
    assert kv_bytes_per_token(m, 1, 2, "bf16") == 160 * 1024
    assert kv_bytes_per_token(m, 1, 3, "bf16") == 2 * 27 * 8 * 128 * 2  # ceil(80/3) on the first stage


def test_kv_heads_are_replicated_beyond_their_count():
    """vLLM: with tp > num_kv_heads each GPU still holds one whole KV head."""
    m = load_model("llama3-70b")
    assert kv_bytes_per_token(m, 16, 1, "bf16") == kv_bytes_per_token(m, 8, 1, "bf16")


def test_mla_caches_the_576_element_latent_on_every_rank():
    """DeepSeek-V2/V3 MLA: kv_lora_rank 512 + RoPE key 64 = 576 elements per token per layer,
    not split by TP (DeepSeek-V2 §2.1.3); V3 has 61 layers."""
    m = load_model("deepseek-v3")
    assert kv_bytes_per_token(m, 1, 1, "bf16") == 61 * 576 * 2
    assert kv_bytes_per_token(m, 8, 1, "bf16") == 61 * 576 * 2


# ---- weights per GPU -----------------------------------------------------------------------------
def test_llama31_8b_checkpoint_sizes():
    """Llama 3.1 8B: 8.03 B parameters, 16.06 GB in bf16; the FP8 checkpoint (linear layers fp8,
    embeddings and LM head 16-bit) is 9.08 GB (e.g. neuralmagic Meta-Llama-3.1-8B-Instruct-FP8)."""
    m = load_model("llama3.1-8b")
    assert weight_bytes_per_gpu(m, 1, 1, 1, "bf16") == pytest.approx(16.06e9, rel=1e-3)
    assert weight_bytes_per_gpu(m, 1, 1, 1, "fp8") == pytest.approx(9.08e9, rel=1e-3)
    # TP splits everything, vocabulary-parallel embedding and head included
    assert weight_bytes_per_gpu(m, 4, 1, 1, "bf16") == pytest.approx(16.06e9 / 4, rel=1e-3)


def test_pipeline_first_stage_holds_the_embedding_but_not_the_head():
    m = load_model("llama3.1-8b")
    vocab_bytes = 128256 * 4096 * 2  # one 16-bit vocabulary matrix
    whole = weight_bytes_per_gpu(m, 1, 1, 1, "bf16")
    first = weight_bytes_per_gpu(m, 1, 2, 1, "bf16")
    assert first == pytest.approx((whole - 2 * vocab_bytes) / 2 + vocab_bytes, rel=1e-3)


def test_moe_experts_split_over_expert_parallelism():
    """Mixtral 8x7B (46.7 B parameters, 93.4 GB bf16): EP 8 puts one expert per GPU; the
    attention and router stay replicated unless TP splits them."""
    m = load_model("mixtral-8x7b")
    whole = weight_bytes_per_gpu(m, 1, 1, 1, "bf16")
    assert whole == pytest.approx(93.4e9, rel=2e-3)
    ep8 = weight_bytes_per_gpu(m, 1, 1, 8, "bf16")
    tp8 = weight_bytes_per_gpu(m, 8, 1, 1, "bf16")
    experts = 32 * 8 * 3 * 4096 * 14336 * 2  # layers x experts x 3 matrices x h x ffn x 2 bytes
    assert whole - ep8 == pytest.approx(experts * 7 / 8, rel=1e-6)
    assert tp8 == pytest.approx(whole / 8, rel=1e-3)
    assert weight_bytes_per_gpu(m, 8, 1, 8, "bf16") == pytest.approx(tp8, rel=1e-9)


# ---- activation peak (vLLM v1 profile_run) ------------------------------------------------------
def test_sampler_peak_is_fp32_logits_of_max_num_seqs_rows():
    """vLLM's dummy sampler run: max_num_seqs rows of fp32 logits over the vocabulary (128256)."""
    m = load_model("llama3.1-8b")
    assert (activation_peak_bytes(m, 1, 8192, 257) - activation_peak_bytes(m, 1, 8192, 1)
            == pytest.approx(256 * 128256 * 4, rel=1e-12))
    assert (activation_peak_bytes(m, 2, 8192, 257) - activation_peak_bytes(m, 2, 8192, 1)
            == pytest.approx(256 * 128256 * 4 / 2, rel=1e-12))


def test_dummy_forward_peak_is_the_residual_stream_and_the_gated_mlp():
    """16-bit residual in and out (2 x 4096) plus the widest intermediate: SwiGLU gate+up output and
    the activation output, 3 x 14336 for Llama 3.1 8B, per token."""
    m = load_model("llama3.1-8b")
    per_token = activation_peak_bytes(m, 1, 2, 0) - activation_peak_bytes(m, 1, 1, 0)
    assert per_token == (2 * 4096 + 3 * 14336) * 2
    per_token_tp2 = activation_peak_bytes(m, 2, 2, 0) - activation_peak_bytes(m, 2, 1, 0)
    assert per_token_tp2 == (2 * 4096 + 3 * 14336 / 2) * 2
    # at TP 8 the split MLP (5376 per token) is still wider than the split QKV (6144 / 8)
    per_token_tp8 = activation_peak_bytes(m, 8, 2, 0) - activation_peak_bytes(m, 8, 1, 0)
    assert per_token_tp8 == (2 * 4096 + 3 * 14336 / 8) * 2


# ---- the pool per engine -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pools():
    m, d = load_model("llama3.1-8b"), get_device("h100-sxm")
    return {pol: kv_pool(m, d, 1, 1, 1, "bf16", "bf16", pol, frac, 16, 8192, 256)
            for pol, frac in (("vllm", 0.9), ("sglang", 0.88), ("trtllm", 0.9))}


def test_vllm_pool_is_utilisation_share_minus_weights_activations_and_non_torch(pools):
    """vLLM v1 determine_available_memory: 0.9 x 80 GiB - weights - profiled peak - non-torch
    (CUDA context 1 GiB; no NCCL communicator at TP 1)."""
    b = pools["vllm"].breakdown
    assert b["hbm_bytes"] == 80 * GIB and b["non_torch_bytes"] == GIB
    assert b["kv_bytes"] == pytest.approx(0.9 * 80 * GIB - b["weights_bytes"] - b["activation_peak_bytes"] - GIB)
    assert pools["vllm"].num_blocks == int(b["kv_bytes"] // (16 * 131072))


def test_sglang_static_pool_holds_weights_and_kv_only(pools):
    """SGLang mem_fraction_static: the static pool = weights + KV; activations live outside it."""
    b = pools["sglang"].breakdown
    assert b["kv_bytes"] == pytest.approx(0.88 * 80 * GIB - b["weights_bytes"])


def test_trtllm_takes_its_fraction_of_the_memory_free_after_loading(pools):
    """TensorRT-LLM free_gpu_memory_fraction 0.9 of what is free after weights and activations."""
    b = pools["trtllm"].breakdown
    free = 80 * GIB - b["weights_bytes"] - b["activation_peak_bytes"] - GIB
    assert b["kv_bytes"] == pytest.approx(0.9 * free)
    assert pools["trtllm"].capacity_tokens == pools["trtllm"].num_blocks * 16


def test_tensor_parallel_pool_reserves_the_nccl_buffers():
    """aiconfigurator h100_sxm misc.nccl_mem: 342 MB for a 2-GPU communicator, 392 MB for 8."""
    m, d = load_model("llama3-70b"), get_device("h100-sxm")
    tp2 = kv_pool(m, d, 2, 1, 1, "fp8", "bf16", "vllm", 0.9, 16, 8192, 256).breakdown
    tp8 = kv_pool(m, d, 8, 1, 1, "bf16", "bf16", "vllm", 0.9, 16, 8192, 256).breakdown
    assert tp2["non_torch_bytes"] == GIB + 358_612_992
    assert tp8["non_torch_bytes"] == GIB + 411_041_792
    pp2 = kv_pool(m, d, 1, 2, 1, "fp8", "bf16", "vllm", 0.9, 16, 8192, 256).breakdown
    assert pp2["non_torch_bytes"] == GIB + 358_612_992


def test_pinned_blocks_override_the_budget_and_a_model_that_does_not_fit_is_an_error():
    m, d = load_model("llama3.1-8b"), get_device("h100-sxm")
    p = kv_pool(m, d, 1, 1, 1, "bf16", "bf16", "vllm", 0.9, 16, 8192, 256, pinned_blocks=100)
    assert p.num_blocks == 100 and p.breakdown["kv_bytes"] == 100 * 16 * 131072
    with pytest.raises(InputError, match=r"131\.4 GiB of weights per GPU leave no KV cache in 80 GiB"):
        kv_pool(load_model("llama3-70b"), d, 1, 1, 1, "bf16", "bf16", "vllm", 0.9, 16, 8192, 256)
    with pytest.raises(InputError, match="memory policy"):
        kv_pool(m, d, 1, 1, 1, "bf16", "bf16", "lmdeploy", 0.9, 16, 8192, 256)
    # exactly one block's worth of budget still fits (blocks >= 1)
    one = kv_pool(m, d, 1, 1, 1, "bf16", "bf16", "sglang", (16 * 131072 + 16060522496) / (80 * GIB),
                  16, 8192, 256)
    assert one.num_blocks == 1


# ---- block accounting and the LRU prefix cache (vLLM free-block queue) --------------------------
def test_allocate_takes_free_blocks_then_evicts_oldest_unreferenced_prefixes():
    kv = KVCache(10, 16)
    assert kv.allocate(4) and kv.free == 6 and kv.used == 4
    kv.insert(("a",), 2)  # request computed prefix a: 2 of its blocks now belong to the cache
    kv.insert(("b",), 2)
    assert kv.match(("a", "b", "c")) == 2 and kv.match(("b",)) == 1 and kv.match(("c", "a")) == 0
    kv.release_keys(("a",))  # unreferenced: evictable, oldest first
    kv.release_keys(("b",))
    kv.release(0)
    assert kv.evictable == 4 and kv.available() == 10 and kv.used == 0
    assert kv.allocate(6) and kv.free == 0  # fits in the free blocks, nothing evicted
    assert set(kv.entries) == {"a", "b"}
    assert kv.allocate(2)  # evicts a (least recently released), keeps b
    assert list(kv.entries) == ["b"] and kv.evictable == 2 and kv.free == 0
    assert not kv.allocate(3)  # only 2 evictable
    assert kv.allocate(2) and not kv.entries and kv.used == 10


def test_a_reacquired_prefix_is_evicted_last():
    kv = KVCache(6, 16)
    kv.allocate(6)
    kv.insert(("a",), 2)
    kv.insert(("b",), 2)
    kv.release_keys(("a",))
    kv.release_keys(("b",))
    kv.release(2)
    kv.acquire(("a",))  # a hit: referenced again, not evictable
    assert kv.evictable == 2 and kv.entries["a"][1] == 1
    kv.release_keys(("a",))  # released again: now the most recently used
    assert kv.allocate(4) and list(kv.entries) == ["a"]
    kv.release_keys(("missing",))  # unknown keys are ignored
    assert kv.evictable == 2


def test_blocks_in_use_exclude_free_and_evictable_ones():
    kv = KVCache(10, 16)
    kv.allocate(4)
    kv.insert(("a",), 2)
    kv.release_keys(("a",))  # 2 blocks evictable, 6 free, 2 still the request's own
    assert (kv.free, kv.evictable, kv.used, kv.available()) == (6, 2, 2, 8)


def test_a_shared_prefix_stays_referenced_until_its_last_reader_leaves():
    kv = KVCache(8, 16)
    kv.allocate(2)
    kv.insert(("p",), 2)
    kv.acquire(("p",))  # a second request reads it
    kv.release_keys(("p",))
    assert kv.evictable == 0 and not kv.allocate(7)
    kv.release_keys(("p",))
    assert kv.evictable == 2 and kv.allocate(8)


def test_insert_keeps_existing_entries_and_is_off_without_prefix_caching():
    kv = KVCache(8, 16)
    assert kv.insert(("a", "b"), 1) == ("a", "b")
    assert kv.insert(("a", "c"), 1) == ("c",)
    assert kv.entries["a"] == [1, 1]
    assert kv.insert(("d",), 0) == ()
    off = KVCache(8, 16, prefix_caching=False)
    assert off.insert(("a",), 1) == () and off.match(("a",)) == 0


def test_mla_latent_and_rope_key_add_up_for_any_ranks():
    """MLA caches the compressed latent plus the decoupled RoPE key (DeepSeek-V2 §2.1.3) for
    every layer: (kv_lora_rank + qk_rope_head_dim) elements, here 100 + 36 = 136 (sizes whose
    bits overlap, unlike 512 and 64)."""
    from simulator.models import with_overrides
    m = with_overrides(load_model("deepseek-v2"), kv_lora_rank=100, qk_rope_head_dim=36)
    assert kv_bytes_per_token(m, 1, 1, "bf16") == m.num_layers * 136 * 2


def test_sliding_window_kv_per_engine_on_the_most_loaded_pipeline_stage():
    """GPT-OSS 120B: 36 layers alternating sliding (even indices) and full attention, 8 KV heads of
    64. SGLang's SWA pool gives a windowed layer 0.8 of a full layer's slots per token
    (swa_full_tokens_ratio); TRT-LLM's default pool one window for every layer; vLLM keeps only
    the window. Over pp=4 (9 layers a stage) stage 1 holds layers 9..17: 5 full, 4 windowed,
    the most loaded: 5 + 0.8·4 = 8.2 layer-equivalents; pp=2: 9 full + 9 windowed per stage."""
    m = load_model("gpt-oss-120b")
    per_layer = 2 * 8 * 64 * 2  # K and V, 8 KV heads, head_dim 64, bf16
    assert [m.layer_window(i) > 0 for i in range(4)] == [True, False, True, False]
    assert kv_bytes_per_token(m, 1, 4, "bf16", "sglang") == pytest.approx(8.2 * per_layer)
    assert kv_bytes_per_token(m, 1, 2, "bf16", "sglang") == pytest.approx((9 + 0.8 * 9) * per_layer)
    assert kv_bytes_per_token(m, 1, 4, "bf16", "trtllm") == 9 * per_layer
    assert kv_bytes_per_token(m, 1, 4, "bf16", "vllm") == 5 * per_layer
    assert kv_bytes_per_token(m, 1, 1, "bf16") == 36 * per_layer  # no policy: every layer full


def test_moe_quant_sets_the_expert_weight_bytes():
    from simulator.serving.kv_cache import MOE_WEIGHT_BYTES, weight_bytes_per_gpu
    m = load_model("gpt-oss-120b")
    b16 = weight_bytes_per_gpu(m, 1, 1, 1, "bf16")
    mx = weight_bytes_per_gpu(m, 1, 1, 1, "bf16", moe_quant="w4a16_mxfp4")
    experts = sum(m.num_experts * m.expert_params() for i in range(m.num_layers) if m.is_moe_layer(i))
    # only the routed experts change: 2 bytes -> MXFP4's 0.5 + one E8M0 scale per 32 values
    assert MOE_WEIGHT_BYTES["w4a16_mxfp4"] == pytest.approx(0.5 + 1 / 32)
    assert b16 - mx == pytest.approx(experts * (2 - 0.5 - 1 / 32), rel=1e-9)
    assert mx < 80 * 2**30 < b16  # GPT-OSS-120B fits one 80 GB GPU only as shipped (MXFP4)
    with pytest.raises(InputError, match="moe_quant"):
        weight_bytes_per_gpu(m, 1, 1, 1, "bf16", moe_quant="int3")


def test_activation_peak_takes_the_qkv_output_when_it_is_the_widest():
    """A model whose QKV output (q + 2·kv per rank) is wider than its MLP intermediate: the peak
    holds the QKV width (vLLM profile_run's widest intermediate)."""
    from dataclasses import replace
    m = replace(load_model("llama3.1-8b"), ffn_hidden_size=64)
    tp, tokens, seqs = 2, 1000, 8
    qkv = (m.q_dim + 2 * m.kv_dim) / tp
    assert qkv > (64 * 2 + 64) / tp
    expected = tokens * (2 * m.hidden_size + qkv) * 2 + seqs * m.vocab_size / tp * 4
    assert activation_peak_bytes(m, tp, tokens, seqs) == pytest.approx(expected, rel=1e-12)


def test_microscaled_expert_bytes_include_their_scales():
    from simulator.serving.kv_cache import moe_weight_bytes
    # 4-bit values plus one 8-bit scale per block: NVFP4 blocks of 16 (FP8 E4M3 scale), MX blocks
    # of 32 (E8M0 scale, OCP Microscaling spec v1.0 §5)
    assert moe_weight_bytes("nvfp4") == pytest.approx(0.5 + 1 / 16)
    assert moe_weight_bytes("w4a8_mxfp4_mxfp8") == pytest.approx(0.5 + 1 / 32)
    assert moe_weight_bytes("w4a16_mxfp4") == pytest.approx(0.5 + 1 / 32)
    assert moe_weight_bytes("int4_wo") == pytest.approx(0.5 + 2 / 128)
