"""Model presets (simulator/data/models.yaml) and reading model configs (simulator/models.py)."""
from __future__ import annotations

import json
import re

import pytest
import yaml

from hwmodels.errors import InputError
from simulator.models import (_PRESETS_FILE, from_hf_config, load_model, megatron_gpt,
                              megatron_param_count, preset_names, relative_error)

RAW = yaml.safe_load(_PRESETS_FILE.read_text())["models"]
PRESETS = list(RAW)
MOE_ACTIVE = [n for n in PRESETS if "published_active_params" in RAW[n]]
MEGATRON = [n for n in PRESETS if re.fullmatch(r"gpt-[0-9.]+b|gpt-1t", n)]

REQUIRED = ["gpt3-175b", "llama2-7b", "llama2-13b", "llama2-70b", "llama3-8b", "llama3-70b",
            "llama3-405b", "mixtral-8x7b", "mixtral-8x22b", "deepseek-v3", "qwen3-32b",
            "gpt-1.7b", "gpt-3.6b", "gpt-7.5b", "gpt-18.4b", "gpt-39.1b", "gpt-76.1b",
            "gpt-145.6b", "gpt-310.1b", "gpt-529.6b", "gpt-1t"]


def _tolerance(raw: dict) -> float:
    """1%, or half the rounding unit of the published figure where that is coarser (Megatron's
    Table 1 prints 1.7B for a model its own formula puts at 1.65B)."""
    half_unit = raw.get("published_params_precision", 0.0) / 2
    return max(0.01, half_unit / raw["published_params"])


# ---- the catalog ---------------------------------------------------------------------------

def test_required_presets_present():
    assert set(REQUIRED) <= set(preset_names())
    assert preset_names() == PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_preset_metadata(name):
    raw = RAW[name]
    text = raw.get("text_config", raw)  # multimodal configs nest the language model
    for key in ("num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size", "hidden_act"):
        assert key in text, f"{name}: missing {key}"
    for key in ("model_type", "published_params", "source"):
        assert key in raw, f"{name}: missing {key}"
    # Written with an exponent sign so that YAML reads a float, not a string.
    for key in ("published_params", "published_active_params", "published_params_precision"):
        if key in raw:
            assert isinstance(raw[key], float), f"{name}: {key}={raw[key]!r}"
    assert len(raw["source"]) > 20


@pytest.mark.parametrize("name", PRESETS)
def test_preset_params_match_published(name):
    m = load_model(name)
    assert m.name == name
    assert m.published_params == RAW[name]["published_params"]
    err = relative_error(m.num_params, m.published_params)
    assert err <= _tolerance(RAW[name]), \
        f"{name}: computed {m.num_params:.4g} vs published {m.published_params:.4g} ({err:.2%})"
    assert m.num_active_params <= m.num_params


@pytest.mark.parametrize("name", MOE_ACTIVE)
def test_moe_active_params_match_published(name):
    m = load_model(name)
    assert m.is_moe
    published = RAW[name]["published_active_params"]
    err = relative_error(m.num_active_params, published)
    # 2%, or half the rounding unit of the published figure where that is coarser ("A17B")
    tol = max(0.02, RAW[name].get("published_active_params_precision", 0.0) / 2 / published)
    assert err <= tol, f"{name}: active {m.num_active_params:.4g} vs {published:.4g} ({err:.2%})"


def test_moe_presets_with_active_counts():
    assert {"mixtral-8x7b", "mixtral-8x22b", "deepseek-v3"} <= set(MOE_ACTIVE)
    assert RAW["mixtral-8x7b"]["published_active_params"] == 12.9e9
    assert RAW["deepseek-v3"]["published_active_params"] == 37e9


def test_known_shapes():
    m = load_model("llama3-70b")
    assert (m.num_layers, m.hidden_size, m.num_heads, m.num_kv_heads, m.ffn_hidden_size,
            m.vocab_size, m.head_dim) == (80, 8192, 64, 8, 28672, 128256, 128)
    assert m.gated_mlp and not m.tie_embeddings and m.norm == "rmsnorm"
    assert m.learned_pos_embeddings == 0 and not m.linear_bias

    g = load_model("gpt3-175b")
    assert not g.gated_mlp and g.tie_embeddings and g.linear_bias and g.norm == "layernorm"
    assert g.learned_pos_embeddings == 2048 and g.ffn_hidden_size == 4 * 12288

    q = load_model("qwen3-32b")
    assert q.head_dim == 128 and q.q_dim == 8192 and q.qk_norm and not q.qkv_bias

    assert load_model("qwen2.5-72b").qkv_bias

    d = load_model("deepseek-v3")
    assert d.is_mla and d.is_moe
    assert (d.num_experts, d.experts_per_token, d.num_shared_experts) == (256, 8, 1)
    assert d.num_moe_layers == 58 and d.moe_ffn_hidden_size == 2048

    x = load_model("mixtral-8x7b")
    assert (x.num_experts, x.experts_per_token, x.moe_ffn_hidden_size) == (8, 2, 14336)
    assert x.num_moe_layers == 32

    assert load_model("qwen3-235b-a22b").num_experts == 128


def test_exact_counts_of_released_checkpoints():
    """Totals that the released checkpoints have, parameter for parameter."""
    assert load_model("llama2-7b").num_params == 6_738_415_616
    assert load_model("llama3-8b").num_params == 8_030_261_248
    assert load_model("llama3-70b").num_params == 70_553_706_496
    assert load_model("mixtral-8x7b").num_params == 46_702_792_704


# ---- the Megatron-LM 2021 family -----------------------------------------------------------

def test_megatron_family_complete():
    assert len(MEGATRON) == 10


@pytest.mark.parametrize("name", MEGATRON)
def test_megatron_family_matches_formula(name):
    m = load_model(name)
    assert relative_error(m.num_params, megatron_param_count(m)) <= 0.01
    ref = megatron_gpt(name, m.num_layers, m.hidden_size, m.num_heads)
    assert m.num_params == ref.num_params
    assert (m.vocab_size, m.learned_pos_embeddings, m.ffn_hidden_size) == (51200, 2048, 4 * m.hidden_size)


# ---- reading config files ------------------------------------------------------------------

LLAMA2_7B_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
    "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 11008, "max_position_embeddings": 4096, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
    "tie_word_embeddings": False, "torch_dtype": "float16", "vocab_size": 32000,
}

GPT2_CONFIG = {  # openai-community/gpt2
    "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
    "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_inner": None, "n_layer": 12,
    "n_positions": 1024, "vocab_size": 50257, "layer_norm_epsilon": 1e-05,
}


def _write(path, cfg):
    path.write_text(json.dumps(cfg))
    return str(path)


def test_load_llama_config_json(tmp_path):
    d = tmp_path / "Llama-2-7b-hf"
    d.mkdir()
    m = load_model(_write(d / "config.json", LLAMA2_7B_CONFIG))
    assert m.name == "Llama-2-7b-hf"
    assert (m.num_layers, m.hidden_size, m.num_heads, m.num_kv_heads, m.ffn_hidden_size,
            m.vocab_size, m.head_dim) == (32, 4096, 32, 32, 11008, 32000, 128)
    assert m.gated_mlp and not m.tie_embeddings and m.norm == "rmsnorm"
    assert m.num_params == 6_738_415_616


def test_load_gpt2_style_config_json(tmp_path):
    m = load_model(_write(tmp_path / "gpt2.json", GPT2_CONFIG))
    assert m.name == "gpt2"
    assert (m.num_layers, m.hidden_size, m.num_heads, m.num_kv_heads, m.ffn_hidden_size,
            m.vocab_size) == (12, 768, 12, 12, 3072, 50257)
    assert not m.gated_mlp and m.tie_embeddings and m.linear_bias and m.norm == "layernorm"
    assert m.learned_pos_embeddings == 1024
    assert m.num_params == 124_439_808  # GPT2LMHeadModel.num_parameters()


def test_load_yaml_with_hf_keys(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump({"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
                                 "num_key_value_heads": 2, "intermediate_size": 128,
                                 "vocab_size": 1000, "num_local_experts": 4,
                                 "num_experts_per_tok": 2}))
    m = load_model(str(p))
    assert (m.name, m.num_layers, m.num_kv_heads, m.num_experts) == ("tiny", 2, 2, 4)


def test_preset_dict_roundtrip(tmp_path):
    """A preset is a plain HF-style mapping: written out as a config.json and read back through the
    file path it gives the preset's model, whose size is DeepSeek-V3's published 671B / 37B."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(RAW["deepseek-v3"]))
    m = from_hf_config(json.loads(path.read_text()), name="deepseek-v3")
    assert load_model(str(path)).num_params == m.num_params
    assert m.num_params == pytest.approx(671e9, rel=0.01)
    assert m.num_active_params == pytest.approx(37e9, rel=0.03)


# ---- bad input -----------------------------------------------------------------------------

def _one_line_error(ref) -> str:
    with pytest.raises(InputError) as ei:
        load_model(ref)
    msg = str(ei.value)
    assert "\n" not in msg and msg
    return msg


def test_unknown_preset_suggests_close_names():
    msg = _one_line_error("llama3-7b")
    hint = re.search(r"did you mean ([^?]*)\?", msg)
    assert hint, msg
    suggestions = [s.strip() for s in hint.group(1).split(",")]
    assert "llama3-8b" in suggestions or "llama3-70b" in suggestions
    assert "'llama3-7b'" in msg


def test_unknown_preset_without_close_match():
    msg = _one_line_error("zzzz")
    assert "did you mean" not in msg and "known:" in msg


def test_malformed_json(tmp_path):
    p = tmp_path / "config.json"
    p.write_text('{"num_hidden_layers": 32,\n "hidden_size": 4096,,\n}')
    msg = _one_line_error(str(p))
    assert "not valid JSON" in msg


@pytest.mark.parametrize("mutate, expect", [
    (lambda c: c.pop("num_hidden_layers"), "num_hidden_layers"),
    (lambda c: c.update(hidden_size=-4096), "hidden_size"),
    (lambda c: c.update(hidden_size="4096"), "hidden_size"),
    (lambda c: c.update(num_attention_heads=2.5), "num_attention_heads"),
    (lambda c: c.update(num_key_value_heads=5), "num_key_value_heads=5"),
    (lambda c: c.update(hidden_act="tanhsoup"), "hidden_act"),
    (lambda c: c.update(num_local_experts=8, num_experts_per_tok=9), "num_experts_per_tok"),
], ids=["missing-layers", "negative-hidden", "string-hidden", "fractional-heads",
        "kv-not-dividing", "unknown-act", "topk-over-experts"])
def test_bad_config_values(tmp_path, mutate, expect):
    cfg = dict(LLAMA2_7B_CONFIG)
    mutate(cfg)
    msg = _one_line_error(_write(tmp_path / "config.json", cfg))
    assert expect in msg


def test_config_not_a_mapping(tmp_path):
    msg = _one_line_error(_write(tmp_path / "config.json", [1, 2, 3]))
    assert "mapping" in msg


def test_nonexistent_json_path(tmp_path):
    msg = _one_line_error(str(tmp_path / "nope" / "config.json"))
    assert "does not exist" in msg


# ---- configs as people download them --------------------------------------------------------

def test_nested_text_config_is_read_for_its_language_model(tmp_path):
    """Multimodal HF configs (Llama 4, Qwen-VL) nest the language model under `text_config`; reading
    the outer keys alone failed with "missing key 'num_hidden_layers'"."""
    cfg = {"model_type": "llama4", "architectures": ["Llama4ForConditionalGeneration"],
           "text_config": dict(RAW["llama4-maverick"]["text_config"]), "vision_config": {"hidden_size": 1408}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    m = load_model(str(path))
    assert (m.num_layers, m.hidden_size, m.num_experts, m.experts_per_token) == (48, 5120, 128, 1)
    # Maverick alternates dense and MoE layers, MoE on odd layers (HF Llama4TextModel moe_layers)
    assert [m.is_moe_layer(i) for i in range(4)] == [False, True, False, True]
    assert m.ffn_hidden_size == 16384 and m.moe_ffn_hidden_size == 8192 and m.num_shared_experts == 1
    assert m.num_params == pytest.approx(400e9, rel=0.01)


def test_a_folder_holding_config_json_is_a_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(RAW["llama3-8b"]))
    assert load_model(str(tmp_path)).num_params == load_model("llama3-8b").num_params


@pytest.mark.parametrize("cfg, words", [
    ({"model_type": "mamba2", "hidden_size": 2560, "num_hidden_layers": 64, "vocab_size": 50280},
     ["architecture 'mamba2' is not supported", "llama"]),
    ({"model_type": "rwkv", "hidden_size": 2560, "num_hidden_layers": 32, "vocab_size": 50277},
     ["architecture 'rwkv' is not supported"]),
    ({"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
      "vocab_size": 100}, ["missing key 'intermediate_size'"]),
])
def test_unsupported_or_incomplete_configs_are_refused_by_name(tmp_path, cfg, words):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(InputError) as info:
        load_model(str(path))
    msg = str(info.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_minimax_m2_config_reads_qk_norm_and_mixtral_style_experts():
    """MiniMax-M2/M2.5 (HF MiniMaxM2Config): `intermediate_size` is each expert's FFN (Mixtral
    style, no dense layers, no shared expert), `use_qk_norm` turns on the QK RMSNorm. 62 layers of
    256 experts x 3 x 3072 x 1536 plus attention and untied embeddings = 228.7B (published 230B)."""
    m = load_model("minimax-m2.5")
    assert m.is_moe and m.num_experts == 256 and m.experts_per_token == 8 and m.num_shared_experts == 0
    assert m.qk_norm and not m.tie_embeddings
    experts = 62 * 256 * 3 * 3072 * 1536
    assert m.num_params == pytest.approx(228.69e9, rel=0.002) and m.num_params > experts
    cfg = {k: v for k, v in RAW["minimax-m2.5"].items() if k != "use_qk_norm"}
    assert not from_hf_config(cfg, "no-qk-norm").qk_norm  # the key, not the type, turns it on
