"""Model architectures: `ModelSpec`, read from a Hugging Face `config.json`, a YAML file with the
same keys, or a preset in `simulator/data/models.yaml`.

A ModelSpec knows its shapes and counts its parameters; FLOPs and bytes per operation live in
`simulator.ops`, which reads the shapes from here.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields, replace
from functools import cache, lru_cache
from pathlib import Path

import yaml

from hwmodels.devices import safe_yaml
from hwmodels.errors import InputError, unknown_name

_PRESETS_FILE = Path(__file__).parent / "data" / "models.yaml"

# Upper bounds on a model's sizes: far above any published model (the largest have ~130 layers,
# hidden 25k, vocab 260k, 256 experts), low enough that parameter and FLOP counts stay finite floats
# and per-layer loops stay short; beyond them a config is a typo, refused with a one-line error.
MAX_LAYERS = 10_000
MAX_DIM = 2 ** 24
# ModelSpec fields by the Hugging Face config key a user wrote.
_HF_NAMES = {"num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
             "num_kv_heads": "num_key_value_heads", "ffn_hidden_size": "intermediate_size",
             "num_experts": "num_local_experts", "experts_per_token": "num_experts_per_tok",
             "moe_ffn_hidden_size": "moe_intermediate_size", "num_shared_experts": "n_shared_experts",
             "first_dense_layers": "first_k_dense_replace"}

# Architectures whose layers are not attention + MLP blocks (state-space and recurrent mixers):
# their configs are refused by name rather than with a missing-key message.
# Nemotron-H is read (`hybrid_override_pattern`): its layers are each one Mamba-2 mixer, attention,
# MLP or MoE block, which `hybrid_pattern` describes.
_UNSUPPORTED_TYPES = {"mamba", "mamba2", "falcon_mamba", "rwkv", "rwkv5", "rwkv6", "rwkv7", "jamba",
                      "zamba", "zamba2", "bamba", "granitemoehybrid", "xlstm", "recurrent_gemma"}
SUPPORTED_TYPES = ("llama", "llama4", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe",
                   "deepseek_v2", "deepseek_v3", "kimi_k2", "minimax_m2", "gpt_oss", "gpt2", "gpt3",
                   "megatron-gpt", "nemotron_h", "qwen3_next", "qwen3_5", "qwen3_5_moe",
                   "qwen3_5_text", "qwen3_5_moe_text")

# GPT-OSS's clamped SwiGLU is named `swigluoai` in vLLM (vllm/model_executor/layers/activation.py
# SwigluOAIAndMul); HF's config.json says "silu". Both are gated (gate and up projections).
_GATED_ACTS = {"silu", "swiglu", "geglu", "swish", "swigluoai"}
# Hugging Face `layer_types` entries for attention layers (HF configuration_utils.ALLOWED_LAYER_TYPES):
# every key attends to all earlier tokens, or only to the last `sliding_window` of them.
FULL_ATTENTION, SLIDING_ATTENTION = "full_attention", "sliding_attention"
ATTENTION_LAYER_TYPES = (FULL_ATTENTION, SLIDING_ATTENTION)
# Gated DeltaNet linear attention (Qwen3-Next, Qwen3.5: HF Qwen3NextConfig layer_types
# "linear_attention"): a layer whose token mixer is a recurrence over a fixed-size state
LINEAR_ATTENTION = "linear_attention"
LAYER_TYPES = ATTENTION_LAYER_TYPES + (LINEAR_ATTENTION,)
# relu2: squared ReLU (Nemotron-H `mlp_hidden_act`; Megatron-Core activations.squared_relu), 2 matrices
_PLAIN_ACTS = {"gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "gelu_fast", "quick_gelu", "relu2"}
# Megatron-Core hybrid layer symbols (megatron/core/models/hybrid/hybrid_layer_allocation.py Symbols):
# each layer of a hybrid model is ONE of these blocks, with its own pre-norm and residual
MAMBA, ATTENTION, MLP, MOE = "M", "*", "-", "E"
HYBRID_SYMBOLS = {MAMBA: "Mamba-2 mixer", ATTENTION: "self-attention", MLP: "dense MLP", MOE: "MoE"}


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer. Sizes are counts (not bytes)."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    ffn_hidden_size: int
    vocab_size: int
    head_dim: int = 0  # 0 means hidden_size // num_heads
    gated_mlp: bool = True  # SwiGLU-style (3 matrices) vs GELU (2 matrices)
    tie_embeddings: bool = False
    learned_pos_embeddings: int = 0  # GPT-style absolute positions: table length, 0 for RoPE
    linear_bias: bool = False  # biases on attention and MLP projections (GPT-2/3, Megatron GPT)
    qkv_bias: bool = False  # biases on Q/K/V only (Qwen2)
    norm: str = "rmsnorm"  # "layernorm" (weight + bias) or "rmsnorm" (weight)
    qk_norm: bool = False  # per-head RMSNorm on Q and K (Qwen3)
    # Mixture of experts
    num_experts: int = 0
    experts_per_token: int = 0
    moe_ffn_hidden_size: int = 0
    num_shared_experts: int = 0
    first_dense_layers: int = 0  # DeepSeek's first_k_dense_replace
    moe_layer_freq: int = 1  # every n-th layer (after the dense ones) is MoE
    # Multi-head latent attention (DeepSeek-V2/V3)
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    max_position_embeddings: int = 0
    # Local (sliding-window) attention: a layer whose `layer_types` entry is "sliding_attention"
    # lets each query attend to the last `sliding_window` tokens, itself included (HF
    # sliding_window masks, Mistral 7B arXiv 2310.06825 §2); () means every layer is full.
    # sliding_window = 0 turns every layer back into full attention.
    sliding_window: int = 0
    layer_types: tuple = ()
    # GPT-OSS attention sinks: one learned logit per head added to the softmax denominator
    # (gpt-oss model card arXiv 2508.10925 §2.1; HF GptOssAttention.sinks). Parameters: num_heads
    # per layer; FLOPs: one exp-and-add per query row and head, negligible beside QK^T and AV.
    attention_sinks: bool = False
    # the routed experts' quantisation as the checkpoint ships them ("" = the model's dtype);
    # "mxfp4": GPT-OSS (HF config.json quantization_config.quant_method; attention, router,
    # embeddings and LM head stay 16-bit, its modules_to_not_convert)
    expert_quant: str = ""
    # multi-token-prediction modules trained beside the model (DeepSeek-V3, arXiv 2412.19437 §2.2;
    # HF num_nextn_predict_layers; Megatron-Core --mtp-num-layers): each a projection of
    # [RMSNorm(h); RMSNorm(Emb(t_i+k))] from 2h to h, one transformer block like the model's last,
    # and the shared output head. Training costs only: `num_params` counts the main model.
    mtp_layers: int = 0
    # Hybrid Mamba-2 + attention (+MoE) models (Nemotron-H, Nemotron-3): Megatron-Core's
    # `hybrid_layer_pattern` (HF `hybrid_override_pattern`), one symbol per layer, each layer ONE
    # block: M Mamba-2 mixer, * self-attention, - dense MLP, E MoE ("" = every layer attention + MLP).
    # The Mamba-2 mixer (Dao & Gu 2024, arXiv 2405.21060 §7; Megatron-Core ssm/mamba_mixer.py):
    # mamba_num_heads heads of mamba_head_dim channels (d_inner = heads · head_dim), state size
    # mamba_state_dim (d_state), B and C shared by mamba_num_groups groups of heads, a depthwise
    # causal conv of mamba_conv_kernel taps, the SSD scan in chunks of mamba_chunk_size tokens.
    hybrid_pattern: str = ""
    mamba_num_heads: int = 0
    mamba_head_dim: int = 0
    mamba_state_dim: int = 0
    mamba_num_groups: int = 0
    mamba_conv_kernel: int = 4  # Megatron-Core MambaMixer d_conv=4, HF conv_kernel
    mamba_chunk_size: int = 128  # Megatron-Core MambaMixer chunk_size=128, HF chunk_size
    # Gated DeltaNet (Yang, Kautz & Hatamizadeh, ICLR 2025, arXiv 2412.06464 §3; Qwen3-Next and
    # Qwen3.5, HF Qwen3NextGatedDeltaNet): the `layer_types` entries "linear_attention". Per token
    # q and k of linear_num_key_heads heads (linear_key_head_dim), v and the output gate z of
    # linear_num_value_heads heads (linear_value_head_dim), and per value head the decay a and
    # the write strength b; a depthwise causal conv of linear_conv_kernel taps over q, k, v; a
    # state of key_dim x value_dim per value head carried from token to token.
    linear_num_key_heads: int = 0
    linear_num_value_heads: int = 0
    linear_key_head_dim: int = 0
    linear_value_head_dim: int = 0
    linear_conv_kernel: int = 4
    # gated attention (Qwen3-Next/Qwen3.5 full-attention layers, HF Qwen3NextAttention): q_proj
    # also produces a per-channel sigmoid gate on the attention output (q_dim more outputs)
    attn_output_gate: bool = False
    published_params: float = 0.0  # the parameter count its authors publish, for checking
    source: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        for f, lo in (("head_dim", 0), ("moe_layer_freq", 1)):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise InputError(f"model {self.name!r}: {f}={v!r} must be an integer >= {lo}")
        if self.head_dim == 0 and isinstance(self.num_heads, int) and self.num_heads > 0 \
                and isinstance(self.hidden_size, int):
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        for f in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "ffn_hidden_size",
                  "vocab_size"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise InputError(f"model {self.name!r}: {f}={v!r} must be a positive integer")
        for f in ("num_experts", "experts_per_token", "moe_ffn_hidden_size", "num_shared_experts",
                  "first_dense_layers", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim",
                  "qk_rope_head_dim", "v_head_dim", "learned_pos_embeddings"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise InputError(f"model {self.name!r}: {f}={v!r} must be a non-negative integer")
        for f in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "ffn_hidden_size", "vocab_size",
                  "head_dim", "num_experts", "experts_per_token", "moe_ffn_hidden_size", "num_shared_experts",
                  "moe_layer_freq", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                  "v_head_dim", "learned_pos_embeddings"):
            v, most = getattr(self, f), MAX_LAYERS if f == "num_layers" else MAX_DIM
            if isinstance(v, int) and v > most:
                raise InputError(f"model {self.name!r}: {_HF_NAMES.get(f, f)}={v} exceeds {most:,}, the "
                                 f"largest size clusterplan accepts")
        if self.num_heads % self.num_kv_heads:
            raise InputError(f"model {self.name!r}: num_key_value_heads={self.num_kv_heads} must "
                             f"divide num_attention_heads={self.num_heads}")
        if self.num_experts and not (0 < self.experts_per_token <= self.num_experts):
            raise InputError(f"model {self.name!r}: num_experts_per_tok={self.experts_per_token} "
                             f"must be in 1..{self.num_experts}")
        if self.num_experts and self.moe_ffn_hidden_size == 0:
            object.__setattr__(self, "moe_ffn_hidden_size", self.ffn_hidden_size)
        if self.first_dense_layers > self.num_layers:
            raise InputError(f"model {self.name!r}: first_k_dense_replace={self.first_dense_layers}"
                             f" exceeds num_hidden_layers={self.num_layers}")
        if self.moe_layer_freq < 1:
            raise InputError(f"model {self.name!r}: moe_layer_freq={self.moe_layer_freq} must be >= 1")
        if self.norm not in ("layernorm", "rmsnorm"):
            raise InputError(f"model {self.name!r}: norm={self.norm!r}; valid: layernorm, rmsnorm")
        self._check_windows()
        if self.hybrid_pattern:
            self._check_hybrid()

    def _check_hybrid(self) -> None:
        p, where = self.hybrid_pattern, f"model {self.name!r}"
        valid = ", ".join(f"{k!r} {v}" for k, v in HYBRID_SYMBOLS.items())
        if not isinstance(p, str):
            raise InputError(f"{where}: hybrid_override_pattern={repr(p)[:40]} must be a string of layer "
                             f"symbols ({valid})")
        bad = next((i for i, c in enumerate(p) if c not in HYBRID_SYMBOLS), None)
        if bad is not None:
            raise InputError(f"{where}: hybrid_override_pattern[{bad}]={p[bad]!r} is not a layer symbol; "
                             f"valid: {valid}")
        if len(p) != self.num_layers:
            raise InputError(f"{where}: hybrid_override_pattern has {len(p)} symbols; "
                             f"num_hidden_layers={self.num_layers} needs one per layer")
        if self.mtp_layers:  # Megatron-Core builds them from mtp_hybrid_override_pattern, not the last layer
            raise InputError(f"{where}: multi-token-prediction blocks of hybrid models are not modelled "
                             f"(num_nextn_predict_layers={self.mtp_layers}; valid: 0)")
        if MOE in p and not self.num_experts:
            raise InputError(f"{where}: hybrid_override_pattern has MoE layers ('E') but n_routed_experts=0")
        if MAMBA in p:
            for f, hf in (("mamba_num_heads", "mamba_num_heads"), ("mamba_head_dim", "mamba_head_dim"),
                          ("mamba_state_dim", "ssm_state_size"), ("mamba_num_groups", "n_groups"),
                          ("mamba_conv_kernel", "conv_kernel"), ("mamba_chunk_size", "chunk_size")):
                v = getattr(self, f)
                if not isinstance(v, int) or isinstance(v, bool) or not 0 < v <= MAX_DIM:
                    raise InputError(f"{where}: {hf}={v!r} must be an integer in 1..{MAX_DIM:,} for Mamba "
                                     f"layers ('M')")
            if self.mamba_num_heads % self.mamba_num_groups:  # Megatron-Core MambaMixer asserts it
                raise InputError(f"{where}: n_groups={self.mamba_num_groups} must divide "
                                 f"mamba_num_heads={self.mamba_num_heads}")

    def _check_windows(self) -> None:
        w = self.sliding_window
        if not isinstance(w, int) or isinstance(w, bool) or w < 0:
            raise InputError(f"model {self.name!r}: sliding_window={w!r} must be an integer >= 0 "
                             f"(0 or null: full attention)")
        if not isinstance(self.layer_types, tuple):
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if not self.layer_types:
            return
        if len(self.layer_types) != self.num_layers:
            raise InputError(f"model {self.name!r}: layer_types has {len(self.layer_types)} entries; "
                             f"num_hidden_layers={self.num_layers} needs one per layer")
        for i, t in enumerate(self.layer_types):
            if t not in LAYER_TYPES:
                raise InputError(f"model {self.name!r}: layer_types[{i}]={str(t)[:40]!r} is not a "
                                 f"layer kind; valid: {', '.join(LAYER_TYPES)}")
        if LINEAR_ATTENTION in self.layer_types:
            if self.hybrid_pattern:
                raise InputError(f"model {self.name!r}: linear_attention layers and a "
                                 f"hybrid_override_pattern cannot be combined")
            for f in ("linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim",
                      "linear_value_head_dim", "linear_conv_kernel"):
                v = getattr(self, f)
                if not isinstance(v, int) or isinstance(v, bool) or not 0 < v <= MAX_DIM:
                    raise InputError(f"model {self.name!r}: {f}={v!r} must be an integer in 1..{MAX_DIM:,} "
                                     f"for linear_attention layers")
            if self.linear_num_value_heads % self.linear_num_key_heads:  # HF Qwen3NextGatedDeltaNet
                raise InputError(f"model {self.name!r}: linear_num_key_heads={self.linear_num_key_heads} "
                                 f"must divide linear_num_value_heads={self.linear_num_value_heads}")

    # ---- structure -------------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def is_hybrid(self) -> bool:
        """Layers of one block each (Mamba-2, attention, MLP, MoE) as `hybrid_pattern` lists them."""
        return bool(self.hybrid_pattern)

    def layer_kind(self, i: int) -> str:
        """Layer i's hybrid symbol (M, *, -, E); "" for an attention + MLP block."""
        return self.hybrid_pattern[i] if self.hybrid_pattern else ""

    def kind_counts(self) -> tuple[tuple[str, int], ...]:
        """((symbol, layers), ...) of a hybrid model's non-MoE layers, in HYBRID_SYMBOLS order."""
        return tuple((k, self.hybrid_pattern.count(k)) for k in HYBRID_SYMBOLS
                     if k != MOE and k in self.hybrid_pattern)

    @property
    def mamba_d_inner(self) -> int:
        """Width of the Mamba-2 mixer's x (and z): heads · head dim (Megatron-Core MambaMixer d_inner)."""
        return self.mamba_num_heads * self.mamba_head_dim

    def is_moe_layer(self, i: int) -> bool:
        """Whether layer i (0-based) has routed experts (DeepSeek/Mixtral conventions; a hybrid
        model's 'E' layers)."""
        if self.hybrid_pattern:
            return self.hybrid_pattern[i] == MOE
        if not self.is_moe or i < self.first_dense_layers:
            return False
        return (i - self.first_dense_layers) % self.moe_layer_freq == 0

    @property
    def num_moe_layers(self) -> int:
        return sum(self.is_moe_layer(i) for i in range(self.num_layers))

    def is_linear_layer(self, i: int) -> bool:
        """Whether layer i (0-based) mixes tokens with Gated DeltaNet instead of attention."""
        return bool(self.layer_types) and self.layer_types[i] == LINEAR_ATTENTION

    @property
    def num_linear_layers(self) -> int:
        return self.layer_types.count(LINEAR_ATTENTION) if self.layer_types else 0

    def layer_window(self, i: int) -> int:
        """Tokens layer i (0-based) attends to, itself included; 0 for full (causal) attention."""
        if not self.sliding_window or not self.layer_types:
            return 0
        return self.sliding_window if self.layer_types[i] == SLIDING_ATTENTION else 0

    def window_counts(self, layers: range | None = None) -> tuple[tuple[int, int], ...]:
        """((window, number of layers), ...) over `layers` (default all), window 0 = full
        attention first: the layer mix that attention costs and KV sizes are weighted by."""
        layers = layers if layers is not None else range(self.num_layers)
        if not self.sliding_window or not self.layer_types:  # every layer full: the common case
            return ((0, len(layers)),)
        return _window_counts(self, layers)

    def attends(self, i: int) -> bool:
        """Whether layer i runs attention (and holds KV): not a Gated DeltaNet layer, and in a
        hybrid model an attention ('*') block."""
        if self.hybrid_pattern:
            return self.hybrid_pattern[i] == ATTENTION
        return not self.is_linear_layer(i)

    def attention_window_counts(self, layers: range | None = None) -> tuple[tuple[int, int], ...]:
        """`window_counts` over the layers among `layers` that attend (`attends`): what serving's
        attention costs and KV cache count. Models with recurrent-state layers (Gated DeltaNet,
        Mamba-2) leave those out."""
        layers = layers if layers is not None else range(self.num_layers)
        if not self.hybrid_pattern and LINEAR_ATTENTION not in self.layer_types:
            return self.window_counts(layers)
        return _window_counts(self, layers)

    @property
    def num_state_layers(self) -> int:
        """Layers that carry a recurrent state per sequence: Gated DeltaNet or Mamba-2."""
        return self.num_linear_layers + (self.hybrid_pattern.count(MAMBA) if self.hybrid_pattern else 0)

    @property
    def q_dim(self) -> int:
        """Width of the query projection output (all heads)."""
        if self.is_mla:
            return self.num_heads * (self.qk_nope_head_dim + self.qk_rope_head_dim)
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of K (and of V) for grouped-query attention."""
        return self.num_kv_heads * self.head_dim

    @property
    def attn_out_dim(self) -> int:
        """Width of the attention output that the output projection reads."""
        if self.is_mla:
            return self.num_heads * self.v_head_dim
        return self.num_heads * self.head_dim

    @property
    def mlp_matrices(self) -> int:
        return 3 if self.gated_mlp else 2

    # ---- parameter counts ------------------------------------------------------------------
    def attention_params(self) -> int:
        h = self.hidden_size
        if self.is_mla:  # DeepSeek-V2 (arXiv 2405.04434) §2.1.2: low-rank Q and joint KV compression
            qk_head = self.qk_nope_head_dim + self.qk_rope_head_dim
            if self.q_lora_rank:
                q = h * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * self.num_heads * qk_head
            else:
                q = h * self.num_heads * qk_head
            kv = (h * (self.kv_lora_rank + self.qk_rope_head_dim) + self.kv_lora_rank
                  + self.kv_lora_rank * self.num_heads * (self.qk_nope_head_dim + self.v_head_dim))
            return q + kv + self.attn_out_dim * h
        p = h * self.q_dim + 2 * h * self.kv_dim + self.attn_out_dim * h
        if self.attn_output_gate:  # q_proj's gate half (HF Qwen3NextAttention: num_heads·head_dim·2)
            p += h * self.q_dim
        if self.linear_bias:
            p += self.q_dim + 2 * self.kv_dim + h
        elif self.qkv_bias:
            p += self.q_dim + 2 * self.kv_dim
        if self.qk_norm:
            p += 2 * self.head_dim
        if self.attention_sinks:  # one learned logit per head (HF GptOssAttention.sinks)
            p += self.num_heads
        return p

    def dense_mlp_params(self, ffn: int | None = None) -> int:
        ffn = self.ffn_hidden_size if ffn is None else ffn
        p = self.mlp_matrices * self.hidden_size * ffn
        if self.linear_bias:
            p += ffn * (self.mlp_matrices - 1) + self.hidden_size
        return p

    def expert_params(self) -> int:
        """One routed expert."""
        return self.dense_mlp_params(self.moe_ffn_hidden_size)

    def moe_layer_params(self) -> int:
        router = self.hidden_size * self.num_experts
        shared = self.dense_mlp_params(self.moe_ffn_hidden_size * self.num_shared_experts) \
            if self.num_shared_experts else 0
        return router + self.num_experts * self.expert_params() + shared

    def norm_params(self) -> int:
        return self.hidden_size * (2 if self.norm == "layernorm" else 1)

    def mamba_params(self) -> int:
        """One Mamba-2 mixer (Megatron-Core ssm/mamba_mixer.py MambaMixer): in_proj h → [z, x, B, C,
        dt] (2·d_inner + 2·groups·d_state + heads), the depthwise conv1d over x, B, C (d_conv taps and
        a bias per channel), dt_bias, A_log and D per head, the gated RMSNorm's weight (d_inner) and
        out_proj d_inner → h (no linear biases in Nemotron-H: use_bias false)."""
        h, di = self.hidden_size, self.mamba_d_inner
        gn, heads = self.mamba_num_groups * self.mamba_state_dim, self.mamba_num_heads
        conv = (di + 2 * gn) * (self.mamba_conv_kernel + 1)
        return h * (2 * di + 2 * gn + heads) + conv + 3 * heads + di + di * h

    def linear_attention_params(self) -> int:
        """One Gated DeltaNet mixer (HF Qwen3NextGatedDeltaNet): in_proj_qkvz h → [q, k, v, z]
        (2·key_dim + 2·value_dim), in_proj_ba h → [b, a] (2 per value head), the depthwise conv1d
        over q, k, v (conv_kernel taps, no bias), dt_bias and A_log per value head, the gated
        RMSNorm's weight (value head dim) and out_proj value_dim → h."""
        h = self.hidden_size
        kd = self.linear_num_key_heads * self.linear_key_head_dim
        vd = self.linear_num_value_heads * self.linear_value_head_dim
        nv = self.linear_num_value_heads
        conv = (2 * kd + vd) * self.linear_conv_kernel
        return h * (2 * kd + 2 * vd) + h * 2 * nv + conv + 2 * nv + self.linear_value_head_dim + vd * h

    def hybrid_block_params(self, kind: str) -> int:
        """The block of one hybrid layer of `kind` (its pre-norm not included)."""
        return {MAMBA: self.mamba_params, ATTENTION: self.attention_params, MLP: self.dense_mlp_params,
                MOE: self.moe_layer_params}[kind]()

    def layer_params(self, i: int) -> int:
        if self.hybrid_pattern:  # one block and its pre-norm (Megatron-Core MambaLayer / TransformerLayer)
            return self.hybrid_block_params(self.hybrid_pattern[i]) + self.norm_params()
        mlp = self.moe_layer_params() if self.is_moe_layer(i) else self.dense_mlp_params()
        mixer = self.linear_attention_params() if self.is_linear_layer(i) else self.attention_params()
        return mixer + mlp + 2 * self.norm_params()

    @property
    def mtp_is_moe(self) -> bool:
        """Whether an MTP module's block is an MoE block: it is built like the model's last layer
        (DeepSeek-V3 §2.2)."""
        return self.is_moe_layer(self.num_layers - 1)

    def mtp_params(self) -> int:
        """Parameters of the multi-token-prediction modules (DeepSeek-V3 §2.2): per depth the 2h→h
        projection, its two input norms and the head's norm, and one block like the last layer
        (the embedding and the output head are shared)."""
        h = self.hidden_size
        per = 2 * h * h + 3 * self.norm_params() + self.layer_params(self.num_layers - 1)
        return self.mtp_layers * per

    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size + self.learned_pos_embeddings * self.hidden_size

    def head_params(self) -> int:
        """Final norm plus the LM head (zero extra when tied to the embedding)."""
        return self.norm_params() + (0 if self.tie_embeddings else self.vocab_size * self.hidden_size)

    @property
    def num_params(self) -> int:
        """Total parameters (all experts counted)."""
        return (self.embedding_params() + self.head_params()
                + sum(self.layer_params(i) for i in range(self.num_layers)))

    @property
    def num_active_params(self) -> int:
        """Parameters touched per token: top-k routed experts instead of all of them."""
        if not self.is_moe:
            return self.num_params
        idle = (self.num_experts - self.experts_per_token) * self.expert_params()
        return self.num_params - self.num_moe_layers * idle

    def summary(self) -> dict:
        return {
            "name": self.name, "layers": self.num_layers, "hidden": self.hidden_size,
            "heads": self.num_heads, "kv_heads": self.num_kv_heads, "ffn": self.ffn_hidden_size,
            "vocab": self.vocab_size, "experts": self.num_experts, "top_k": self.experts_per_token,
            "mla": self.is_mla, "params": self.num_params, "active_params": self.num_active_params,
            "published_params": self.published_params,
        }


# ---- reading configs ------------------------------------------------------------------------

def _int_key(cfg: dict, key: str, where: str, default=None, positive=True, names: dict | None = None):
    """cfg[key] as an int; `names` maps a key to the alias the config used for it (messages name
    what the user wrote)."""
    if key not in cfg or cfg[key] is None:
        if default is None:
            raise InputError(f"{where}: missing key {key!r} (a Hugging Face config needs it)")
        return default
    v, label = cfg[key], (names or {}).get(key, key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        raise InputError(f"{where}: {label}={v!r} must be an integer")
    v = int(v)
    if v < (1 if positive else 0):
        raise InputError(f"{where}: {label}={v} must be {'> 0' if positive else '>= 0'}")
    return v


def _count_key(cfg: dict, key: str, where: str) -> float:
    """cfg[key] as a finite number >= 0 (0 when absent)."""
    v = cfg.get(key)
    if v is None:
        return 0.0
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1e30:
        raise InputError(f"{where}: {key}={repr(v)[:40]} must be a number from 0 to 1e30")
    return float(v)


# configs whose layers mix Gated DeltaNet and gated full attention (HF Qwen3NextConfig and the
# Qwen3.5 text configs that reuse its keys)
_GATED_DELTANET_TYPES = ("qwen3_next", "qwen3_5", "qwen3_5_moe", "qwen3_5_text", "qwen3_5_moe_text")


def _attention_layout(cfg: dict, L: int, model_type: str, where: str) -> tuple[int, tuple]:
    """(sliding_window, layer_types) of a config. `layer_types` lists each layer's kind (HF
    GptOssConfig, Gemma 2/3, Qwen2/3 configs); without it a window applies to every layer
    (HF MistralAttention), except that Qwen2/Qwen3 configs window only when `use_sliding_window`
    is set, and then the layers from `max_window_layers` on (HF Qwen2Config layer_types)."""
    w = cfg.get("sliding_window")
    if w is None:
        w = 0
    if isinstance(w, bool) or not isinstance(w, (int, float)) or (isinstance(w, float) and not w.is_integer()) \
            or w < 0:
        raise InputError(f"{where}: sliding_window={repr(w)[:40]} must be an integer >= 0 (0 or null: "
                         f"full attention)")
    w = int(w)
    types = cfg.get("layer_types")
    if types is not None:
        if not isinstance(types, (list, tuple)):
            raise InputError(f"{where}: layer_types={repr(types)[:40]} must be a list with one entry per "
                             f"layer ({', '.join(ATTENTION_LAYER_TYPES)})")
        for i, t in enumerate(types):
            if t not in LAYER_TYPES:
                raise InputError(f"{where}: layer_types[{i}]={str(t)[:40]!r} is not a layer kind; "
                                 f"valid: {', '.join(LAYER_TYPES)}")
        return w, tuple(types)
    if model_type in _GATED_DELTANET_TYPES:
        # HF Qwen3NextConfig: without layer_types, every full_attention_interval-th layer is full
        # attention and the others linear ("full_attention" if (i + 1) % interval == 0)
        n = _int_key(cfg, "full_attention_interval", where, default=4)
        return 0, tuple(FULL_ATTENTION if (i + 1) % n == 0 else LINEAR_ATTENTION for i in range(L))
    if not w or cfg.get("use_sliding_window") is False:
        return 0, ()
    if model_type.startswith("qwen"):  # HF Qwen2Config: windows need use_sliding_window
        if not cfg.get("use_sliding_window"):
            return 0, ()
        first = _int_key(cfg, "max_window_layers", where, default=L, positive=False)
        return w, tuple(SLIDING_ATTENTION if i >= first else FULL_ATTENTION for i in range(L))
    return w, (SLIDING_ATTENTION,) * L


@lru_cache(maxsize=1024)
def _window_counts(model: "ModelSpec", layers: range) -> tuple[tuple[int, int], ...]:
    counts: dict[int, int] = {}
    for i in layers:
        if not model.attends(i):
            continue
        w = model.layer_window(i)
        counts[w] = counts.get(w, 0) + 1
    return tuple(sorted(counts.items()))


def from_hf_config(cfg: dict, name: str = "custom", where: str | None = None) -> ModelSpec:
    """Build a ModelSpec from a Hugging Face `config.json` dictionary (or YAML with its keys).

    Understands Llama/Mistral/Mixtral/Qwen2/Qwen3/Qwen3-MoE/DeepSeek-V2/V3 and GPT-2/GPT-3-style
    (`n_layer`, `n_embd`, `n_head`) configs, plus the keys clusterplan adds for presets
    (`tie_word_embeddings`, `linear_bias`, `learned_pos_embeddings`, `published_params`, `source`).
    """
    where = where or f"model {name!r}"
    if not isinstance(cfg, dict):
        raise InputError(f"{where}: expected a mapping of config keys, got {type(cfg).__name__}")
    cfg = dict(cfg)
    # Multimodal configs (Llama 4, Qwen-VL, Gemma 3, ...) nest the language model's keys under
    # `text_config` (Hugging Face composite configs); the keys outside it describe the wrapper.
    text = cfg.get("text_config")
    if isinstance(text, dict) and "num_hidden_layers" not in cfg:
        outer = {k: cfg[k] for k in ("published_params", "source", "architectures") if k in cfg}
        cfg = {**text, **outer}
    model_type = str(cfg.get("model_type", "")).lower()
    arch = model_type or ",".join(map(str, cfg.get("architectures") or [])) or "unknown"
    if model_type in _UNSUPPORTED_TYPES or any(
            t in str(a).lower() for a in cfg.get("architectures") or [] for t in ("mamba", "rwkv", "jamba")):
        raise InputError(f"{where}: architecture {arch!r} is not supported (supported: "
                         f"{', '.join(SUPPORTED_TYPES)})")
    names: dict = {}  # HF key -> the GPT-style alias the config used for it
    for alias, key in (("n_layer", "num_hidden_layers"), ("n_embd", "hidden_size"),
                       ("n_head", "num_attention_heads"), ("n_inner", "intermediate_size"),
                       ("activation_function", "hidden_act"), ("n_positions", "max_position_embeddings")):
        if alias in cfg and key not in cfg:
            cfg[key], names[key] = cfg[alias], alias
    for key in ("num_hidden_layers", "hidden_size", "num_attention_heads"):
        if key not in cfg and model_type and model_type not in SUPPORTED_TYPES:
            raise InputError(f"{where}: architecture {arch!r} is not supported (missing key {key!r}; "
                             f"supported: {', '.join(SUPPORTED_TYPES)})")
    L = _int_key(cfg, "num_hidden_layers", where, names=names)
    h = _int_key(cfg, "hidden_size", where, names=names)
    a = _int_key(cfg, "num_attention_heads", where, names=names)
    kv = _int_key(cfg, "num_key_value_heads", where, default=a)
    vocab = _int_key(cfg, "vocab_size", where)
    # Nemotron-H names the MLP's activation `mlp_hidden_act` (HF NemotronHConfig)
    act = str(cfg.get("hidden_act", cfg.get("mlp_hidden_act", "silu"))).lower()
    if act not in _GATED_ACTS | _PLAIN_ACTS:
        raise InputError(f"{where}: {names.get('hidden_act', 'hidden_act')}={act!r} is not known; valid: "
                         f"{', '.join(sorted(_GATED_ACTS | _PLAIN_ACTS))}")
    gated = bool(cfg.get("gated_mlp", act in _GATED_ACTS))
    gpt_style = model_type in ("gpt2", "gpt3", "megatron-gpt", "gpt_neox", "gpt-j") or "n_embd" in cfg
    if "intermediate_size" not in cfg and not gpt_style:
        raise InputError(f"{where}: missing key 'intermediate_size' (only GPT-2/3-style configs default "
                         f"it, to 4·hidden)")
    # GPT-2/3: n_inner absent means 4·n_embd (Radford et al. 2019; HF GPT2Config n_inner=None)
    ffn = _int_key(cfg, "intermediate_size", where, default=4 * h, names=names)
    n_experts = _int_key(cfg, "num_local_experts", where, default=0, positive=False) or \
        _int_key(cfg, "n_routed_experts", where, default=0, positive=False) or \
        _int_key(cfg, "num_experts", where, default=0, positive=False)
    # GPT-OSS configs also spell the top-k `experts_per_token` (HF openai/gpt-oss-120b config.json)
    top_k = (_int_key(cfg, "num_experts_per_tok", where, default=0, positive=False)
             or _int_key(cfg, "experts_per_token", where, default=0, positive=False)) if n_experts else 0
    norm = cfg.get("norm", "layernorm" if gpt_style else "rmsnorm")
    window, layer_types = _attention_layout(cfg, L, model_type, where)
    gpt_oss = model_type == "gpt_oss"
    kwargs = dict(
        sliding_window=window, layer_types=layer_types,
        attention_sinks=bool(cfg.get("attention_sinks", gpt_oss)),
        expert_quant=_expert_quant(cfg, where),
        name=name, num_layers=L, hidden_size=h, num_heads=a, num_kv_heads=kv, ffn_hidden_size=ffn,
        vocab_size=vocab, gated_mlp=gated,
        head_dim=_int_key(cfg, "head_dim", where, default=0, positive=False)
        or _int_key(cfg, "attention_head_dim", where, default=0, positive=False),  # HF NemotronHConfig
        tie_embeddings=bool(cfg.get("tie_word_embeddings", gpt_style)),
        learned_pos_embeddings=_int_key(cfg, "learned_pos_embeddings", where,
                                        default=cfg.get("max_position_embeddings", 0) if gpt_style else 0,
                                        positive=False),
        # GPT-OSS: biases on Q/K/V/O when attention_bias (HF GptOssAttention) and always on the
        # experts' gate_up and down projections (HF modeling_gpt_oss.py GptOssExperts)
        linear_bias=bool(cfg.get("linear_bias", gpt_style or (gpt_oss and cfg.get("attention_bias", True)))),
        qkv_bias=bool((cfg.get("attention_bias", False) and not gpt_oss) or cfg.get("qkv_bias", False)
                      or model_type == "qwen2"),
        norm=norm,
        # Qwen3: per-head QK RMSNorm always; MiniMax-M2 names it `use_qk_norm` (HF MiniMaxM2Config)
        qk_norm=bool(cfg.get("qk_norm", cfg.get("use_qk_norm", model_type.startswith("qwen3")))),
        num_experts=n_experts, experts_per_token=top_k,
        moe_ffn_hidden_size=_int_key(cfg, "moe_intermediate_size", where, default=0, positive=False),
        num_shared_experts=_int_key(cfg, "n_shared_experts", where, default=0, positive=False),
        first_dense_layers=_int_key(cfg, "first_k_dense_replace", where, default=0, positive=False),
        moe_layer_freq=_int_key(cfg, "moe_layer_freq", where, default=1),
        mtp_layers=_int_key(cfg, "num_nextn_predict_layers", where, default=0, positive=False),
        q_lora_rank=_int_key(cfg, "q_lora_rank", where, default=0, positive=False),
        kv_lora_rank=_int_key(cfg, "kv_lora_rank", where, default=0, positive=False),
        qk_nope_head_dim=_int_key(cfg, "qk_nope_head_dim", where, default=0, positive=False),
        qk_rope_head_dim=_int_key(cfg, "qk_rope_head_dim", where, default=0, positive=False),
        v_head_dim=_int_key(cfg, "v_head_dim", where, default=0, positive=False),
        max_position_embeddings=_int_key(cfg, "max_position_embeddings", where, default=0, positive=False,
                                         names=names),
        published_params=_count_key(cfg, "published_params", where),
        source=str(cfg.get("source", "")),
    )
    if LINEAR_ATTENTION in layer_types:
        kwargs.update({f: _int_key(cfg, key, where, default=d) for f, key, d in (
            ("linear_num_key_heads", "linear_num_key_heads", None),
            ("linear_num_value_heads", "linear_num_value_heads", None),
            ("linear_key_head_dim", "linear_key_head_dim", None),
            ("linear_value_head_dim", "linear_value_head_dim", None),
            ("linear_conv_kernel", "linear_conv_kernel_dim", 4))})
    # Qwen3-Next / Qwen3.5 attention always gates its output (HF Qwen3NextAttention q_proj)
    kwargs["attn_output_gate"] = bool(cfg.get("attn_output_gate", model_type in _GATED_DELTANET_TYPES))
    pattern = cfg.get("hybrid_override_pattern", cfg.get("hybrid_layer_pattern"))
    if pattern is not None or model_type == "nemotron_h":
        kwargs.update(_hybrid_keys(cfg, pattern, where))
        # Nemotron-H sizes its shared expert (HF NemotronHConfig moe_shared_expert_intermediate_size)
        shared = _int_key(cfg, "moe_shared_expert_intermediate_size", where, default=0, positive=False)
        if n_experts and shared:
            kwargs["num_shared_experts"] = max(1, round(shared / (kwargs["moe_ffn_hidden_size"] or ffn)))
    # Llama 4 (HF Llama4TextConfig): experts and the one shared expert have `intermediate_size`,
    # dense layers `intermediate_size_mlp`; every `interleave_moe_layer_step`-th layer is MoE,
    # counting from layer step−1 (HF Llama4TextModel moe_layers). Its QK norm has no weights.
    if model_type.startswith("llama4") and n_experts:
        step = _int_key(cfg, "interleave_moe_layer_step", where, default=1)
        kwargs.update(ffn_hidden_size=_int_key(cfg, "intermediate_size_mlp", where, default=ffn),
                      moe_ffn_hidden_size=ffn, num_shared_experts=1, first_dense_layers=step - 1,
                      moe_layer_freq=step, qk_norm=False)
    # Qwen2-MoE / Qwen3-MoE name their shared expert by size rather than count.
    shared_ffn = _int_key(cfg, "shared_expert_intermediate_size", where, default=0, positive=False)
    if shared_ffn > MAX_DIM:
        raise InputError(f"{where}: shared_expert_intermediate_size={shared_ffn} exceeds {MAX_DIM:,}")
    if n_experts and shared_ffn and not kwargs["num_shared_experts"]:
        moe_ffn = kwargs["moe_ffn_hidden_size"] or ffn
        kwargs["num_shared_experts"] = max(1, round(shared_ffn / moe_ffn))
    try:
        return ModelSpec(**kwargs)
    except InputError as e:  # ModelSpec names the model; name the file (or preset) the keys came from
        msg, prefix = str(e), f"model {name!r}: "
        msg = msg[len(prefix):] if msg.startswith(prefix) else msg
        names["num_local_experts"] = next((k for k in ("num_local_experts", "n_routed_experts", "num_experts")
                                           if cfg.get(k)), "num_local_experts")
        for key, used in names.items():  # the key as the config spelled it
            msg = re.sub(rf"\b{key}=", f"{used}=", msg)
        raise InputError(f"{where}: {msg}") from None


def _hybrid_keys(cfg: dict, pattern, where: str) -> dict:
    """The hybrid layer pattern and Mamba-2 sizes of a Nemotron-H config (HF NemotronHConfig keys:
    hybrid_override_pattern, mamba_num_heads, mamba_head_dim, ssm_state_size, n_groups,
    conv_kernel, chunk_size)."""
    if not isinstance(pattern, str) or not pattern:
        raise InputError(f"{where}: hybrid_override_pattern={repr(pattern)[:40]} must be a string with one "
                         f"layer symbol per layer ({', '.join(HYBRID_SYMBOLS)})")
    if cfg.get("moe_latent_size"):  # Nemotron-3 Super's LatentMoE (Megatron-Bridge nemotron_h_bridge.py)
        raise InputError(f"{where}: moe_latent_size={repr(cfg['moe_latent_size'])[:20]}: LatentMoE experts (tokens "
                         f"projected to a latent width before the experts) are not modelled")
    out = {"hybrid_pattern": pattern}
    if MAMBA in pattern:
        for field_, key, default in (("mamba_num_heads", "mamba_num_heads", None),
                                     ("mamba_head_dim", "mamba_head_dim", None),
                                     ("mamba_state_dim", "ssm_state_size", None),
                                     ("mamba_num_groups", "n_groups", 1), ("mamba_conv_kernel", "conv_kernel", 4),
                                     ("mamba_chunk_size", "chunk_size", 128)):
            out[field_] = _int_key(cfg, key, where, default=default)
    return out


@cache
def _presets() -> dict[str, dict]:
    with open(_PRESETS_FILE) as f:
        data = safe_yaml(f)
    return data["models"]


def preset_names() -> list[str]:
    return list(_presets())


EXPERT_QUANTS = ("mxfp4",)


def _expert_quant(cfg: dict, where: str) -> str:
    """The checkpoint's expert-only quantisation from HF `quantization_config` (quant_method
    "mxfp4": OCP MX FP4 experts, GPT-OSS); "" for none or one that quantises every layer alike."""
    qc = cfg.get("quantization_config") or {}
    if not isinstance(qc, dict):
        raise InputError(f"{where}: quantization_config must be a mapping")
    method = str(qc.get("quant_method", "")).lower()
    return method if method in EXPERT_QUANTS and cfg.get("num_local_experts", cfg.get("num_experts")) else ""


def load_model(ref: str) -> ModelSpec:
    """A preset name, a path to a HF `config.json`, or a YAML file with the same keys."""
    presets = _presets()
    if ref in presets:
        return from_hf_config(presets[ref], name=ref)
    path = Path(ref)
    if path.is_dir() and (path / "config.json").is_file():  # a checkpoint folder, as HF tools take
        path = path / "config.json"
        ref = str(path)
    if path.suffix.lower() in (".json", ".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise InputError(f"model file {ref!r} does not exist (give a preset name, a config.json path "
                             f"or a folder holding config.json)")
        text = path.read_text()
        try:
            cfg = json.loads(text) if path.suffix.lower() == ".json" else safe_yaml(text)
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            first = str(e).splitlines()[0]
            raise InputError(f"model file {ref!r} is not valid {path.suffix[1:].upper()}: {first}") from None
        return from_hf_config(cfg, name=path.stem if path.stem != "config" else path.parent.name or "custom",
                              where=f"model file {ref!r}")
    raise unknown_name("model", ref, list(presets))


def with_overrides(model: ModelSpec, **kw) -> ModelSpec:
    valid = {f.name for f in fields(ModelSpec)}
    bad = set(kw) - valid
    if bad:
        raise InputError(f"unknown ModelSpec field(s) {sorted(bad)}")
    return replace(model, **kw)


def megatron_gpt(name: str, num_layers: int, hidden_size: int, num_heads: int,
                 vocab_size: int = 51200, seq_len: int = 2048) -> ModelSpec:
    """The GPT models of Narayanan et al. 2021 (arXiv 2104.04473) Table 1: GELU MLP of 4h,
    learned positions, biases, LayerNorm, tied embeddings."""
    return ModelSpec(name=name, num_layers=num_layers, hidden_size=hidden_size, num_heads=num_heads,
                     num_kv_heads=num_heads, ffn_hidden_size=4 * hidden_size, vocab_size=vocab_size,
                     gated_mlp=False, tie_embeddings=True, learned_pos_embeddings=seq_len,
                     linear_bias=True, norm="layernorm", max_position_embeddings=seq_len)


def megatron_param_count(model: ModelSpec) -> float:
    """Narayanan et al. 2021 §5.1: P = 12·l·h²·(1 + 13/(12h) + (V+s)/(12·l·h))."""
    l, h = model.num_layers, model.hidden_size
    V, s = model.vocab_size, model.learned_pos_embeddings
    return 12 * l * h * h * (1 + 13 / (12 * h) + (V + s) / (12 * l * h))


def relative_error(a: float, b: float) -> float:
    return abs(a - b) / b if b else math.inf
