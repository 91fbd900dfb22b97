"""Gated DeltaNet linear attention (Qwen3-Next, Qwen3.5): shapes, the chunked and recurrent
kernels' FLOPs and HBM bytes, and the state a request keeps — with Mamba-2's (simulator/mamba.py),
the recurrent state serving pools per request (`recurrent_state_bytes`). `simulator.ops` turns the
projections into kernels; `simulator.serving` costs the token mixer per batch and sizes the pools.

Gated DeltaNet (Yang, Kautz & Hatamizadeh, ICLR 2025, arXiv 2412.06464 §3) as the serving engines
run it (HF Qwen3NextGatedDeltaNet; vLLM and SGLang call the flash-linear-attention kernels):

    in_proj_qkvz  h → [q, k, v, z]   (column-parallel; 2·key_dim + 2·value_dim outputs)
    in_proj_ba    h → [b, a]         (column-parallel; 2 per value head)
    conv1d        depthwise causal, conv_kernel taps, SiLU, over [q, k, v]
    mixer         S_t = α_t·S_{t−1}·(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ,  o_t = S_t q_t   per value head
                  (q and k of a key head serve value_heads / key_heads value heads)
    norm          RMSNorm of o gated by SiLU(z) (RMSNormGated, per value head)
    out_proj      value_dim → h      (row-parallel)

Prefill runs the chunkwise form (Yang et al., NeurIPS 2024, arXiv 2406.06484 §3: the WY
representation of the chunk's Householder products; the gated variant in arXiv 2412.06464 §3.3),
chunks of C = 64 tokens (flash-linear-attention chunk_gated_delta_rule, BT = 64). Per token and
value head, with key dim K and value dim V:
    A = β·K·Kᵀ per chunk (strictly lower)           2·C·K       (chunk_scaled_dot_kkt_fwd)
    (I + A)⁻¹ by forward substitution               ≈ 2·C²/3    (solve_tril)
    W = A·(β·K), U = A·(β·V)                        2·C·(K + V) (recompute_w_u_fwd)
    V' = U − W·S, S ← decay·S + Kᵀ·V'               4·K·V       (chunk_gated_delta_rule_fwd_h)
    O = Q·S + (Q·Kᵀ ∘ mask)·V'                      2·K·V + 2·C·(K + V)  (chunk_fwd_o)
Its HBM traffic is the inputs read by the kernels that need them, the intermediates W, U, V'
and A written and read back, the per-chunk states written and read, and the output: at K = V = 128
about 5 KB per token and value head against ≈ 180 kFLOP, ≈ 36 FLOP/B, below every accelerator's
ridge point: memory-bound. Decode runs the recurrence for one token (fused_recurrent_gated_delta_rule):
the state read and written back dominates.

TP splits key and value heads (vLLM/SGLang Qwen3NextGatedDeltaNet: num_k_heads/tp, num_v_heads/tp),
so every Gated DeltaNet layer on a rank is the same mixer with the rank's share of heads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from simulator.mamba import mamba_shape, mamba_state_bytes
from simulator.models import MAMBA, ModelSpec

GDN_CHUNK = 64  # flash-linear-attention chunk_gated_delta_rule: BT = 64 tokens per chunk
FP32 = 4  # bytes: the chunk matrix A and, in SGLang's default, the recurrent state
BF16 = 2
# Bytes per element of the recurrent state (Gated DeltaNet's K×V, Mamba-2's P×N per head) each
# engine keeps by default (both kinds share the engines' mamba state pools):
#   sglang  fp32 (python/sglang/srt/configs/mamba_utils.py mamba2_state_dtype: SGLANG_MAMBA_SSM_DTYPE,
#           else the config's mamba_ssm_dtype, else "float32"; the conv state in bfloat16)
#   vllm    the model dtype (vllm/model_executor/layers/mamba/mamba_utils.py
#           MambaStateDtypeCalculator: mamba_ssm_cache_dtype "auto" = the conv state's dtype)
#   trtllm  16-bit taken (its source was not read for this; no TensorRT-LLM row of such a model)
RECURRENT_STATE_BYTES = {"sglang": FP32, "vllm": BF16, "trtllm": BF16}


@dataclass(frozen=True)
class GDNShape:
    """The Gated DeltaNet mixer one rank runs: its share of key and value heads."""

    key_heads: int
    value_heads: int
    key_dim: int  # per head
    value_dim: int  # per head
    conv: int  # taps

    @property
    def qkvz_width(self) -> int:
        """q, k (key heads), v, z (value heads): in_proj_qkvz's outputs on the rank."""
        return 2 * self.key_heads * self.key_dim + 2 * self.value_heads * self.value_dim

    @property
    def conv_channels(self) -> int:
        """q, k, v: the channels the depthwise conv1d runs over."""
        return 2 * self.key_heads * self.key_dim + self.value_heads * self.value_dim

    @property
    def value_width(self) -> int:
        return self.value_heads * self.value_dim


def gdn_shape(model: ModelSpec, tp: int = 1) -> GDNShape:
    """The mixer on one of tp ranks (heads split over tp, at least one each)."""
    return GDNShape(key_heads=max(1, model.linear_num_key_heads // tp),
                    value_heads=max(1, model.linear_num_value_heads // tp),
                    key_dim=model.linear_key_head_dim, value_dim=model.linear_value_head_dim,
                    conv=model.linear_conv_kernel)


def chunk_flops(s: GDNShape, tokens: float) -> float:
    """FLOPs of the chunkwise Gated DeltaNet forward over `tokens` tokens (module docstring)."""
    K, V, C = s.key_dim, s.value_dim, GDN_CHUNK
    per = 2 * C * K + 2 * C * C / 3 + 2 * C * (K + V) + 4 * K * V + 2 * K * V + 2 * C * (K + V)
    return tokens * s.value_heads * per


def chunk_bytes(s: GDNShape, tokens: float, act_bytes: float = BF16) -> float:
    """HBM bytes of the chunkwise forward over `tokens` tokens, per value head (q and k repeated
    to the value heads, as HF Qwen3NextGatedDeltaNet does before the kernel): q read once, k by
    three kernels, v once; W and U written and read (K + V each way), V' written and read twice,
    o written (all 16-bit); A in fp32 written and read twice; one K×V state per chunk written
    and read."""
    K, V, C = s.key_dim, s.value_dim, GDN_CHUNK
    elems = 4 * K + V + 2 * (K + V) + 3 * V + V
    per = elems * act_bytes + 3 * C * FP32 + 2 * K * V * act_bytes / C
    return tokens * s.value_heads * per


def recurrent_flops(s: GDNShape, seqs: float) -> float:
    """One decode token per sequence: decay, the delta-rule update and the read-out, ≈ 6·K·V per
    value head (S·k, the rank-one update, S·q)."""
    return seqs * s.value_heads * 6 * s.key_dim * s.value_dim


def recurrent_bytes(s: GDNShape, seqs: float, state_bytes: float) -> float:
    """One decode token per sequence: every value head's K×V state read and written back, plus
    the token's q, k, v in and o out (16-bit)."""
    state = 2 * s.value_heads * s.key_dim * s.value_dim * state_bytes
    io = (2 * s.key_heads * s.key_dim + 2 * s.value_heads * s.value_dim) * BF16
    return seqs * (state + io)


def gdn_state_bytes(model: ModelSpec, tp: int, layers: int, ssm_bytes: float,
                    conv_bytes: float = BF16) -> float:
    """The recurrent state one request holds on one rank over `layers` Gated DeltaNet layers:
    the conv window (conv_kernel − 1 past inputs of every conv channel) and the K×V state of each
    value head (SGLang mamba_utils.py Mamba2CacheParams.mamba_cache_per_req: conv and temporal
    state shapes times their dtypes, times the layers)."""
    if layers <= 0:
        return 0.0
    s = gdn_shape(model, tp)
    conv = s.conv_channels * (s.conv - 1) * conv_bytes
    ssm = s.value_heads * s.key_dim * s.value_dim * ssm_bytes
    return layers * (conv + ssm)


def state_layers_per_stage(model: ModelSpec, pp: int) -> tuple[int, int]:
    """(Gated DeltaNet layers, Mamba-2 layers) on the stage of pp (ceil(L/pp) layers each) whose
    recurrent state per request is the largest."""
    per = math.ceil(model.num_layers / pp)
    stages = []
    for st in range(pp):
        layers = range(st * per, min(model.num_layers, (st + 1) * per))
        stages.append((sum(model.is_linear_layer(i) for i in layers),
                       sum(model.layer_kind(i) == MAMBA for i in layers)))
    return max(stages, key=lambda c: recurrent_state_bytes_of(model, 1, c, 1.0))


def recurrent_state_bytes_of(model: ModelSpec, tp: int, layers: tuple[int, int], ssm_bytes: float) -> float:
    """The state of (Gated DeltaNet, Mamba-2) `layers` for one request on one of tp ranks."""
    gdn, mamba = layers
    return (gdn_state_bytes(model, tp, gdn, ssm_bytes)
            + (mamba * mamba_state_bytes(mamba_shape(model, tp), ssm_bytes) if mamba else 0.0))


def recurrent_state_bytes(model: ModelSpec, tp: int, pp: int, ssm_bytes: float) -> float:
    """The recurrent state one request keeps on one GPU of the most loaded stage: its Gated
    DeltaNet and Mamba-2 layers' conv windows (16-bit) and states (`ssm_bytes` per element)."""
    if not model.num_state_layers:
        return 0.0
    return recurrent_state_bytes_of(model, tp, state_layers_per_stage(model, pp), ssm_bytes)
