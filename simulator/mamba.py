"""The Mamba-2 mixer of hybrid models (Nemotron-H, Nemotron-3): shapes, the SSD scan's FLOPs and
HBM bytes, and what one layer keeps for backward. `simulator.ops` turns these into kernels.

Mamba-2 (Dao & Gu 2024, "Transformers are SSMs", arXiv 2405.21060) as Megatron-Core trains it
(megatron/core/ssm/mamba_mixer.py MambaMixer, training path `_ssm_training`):

    in_proj  h → [z, x, B, C, dt]   (column-parallel; 2·d_inner + 2·G·N + H outputs)
    conv1d   depthwise causal, d_conv taps, SiLU, over [x, B, C]
    SSD      the chunked state-space scan (chunk Q), D skip and the z gate fused in
             (mamba_ssm ssd_combined.py mamba_split_conv1d_scan_combined)
    norm     RMSNorm of the gated output (ExtendedRMSNorm, mamba_ssm layernorm_gated.py)
    out_proj d_inner → h            (row-parallel)

with d_inner = H·P (H heads of P channels), N = d_state, G groups of heads sharing B and C.
TP splits heads and groups (`nheads_local_tp`, `ngroups_local_tp`), so every Mamba-2 layer on a
rank is the same mixer with H/tp heads and G/tp groups.
"""
from __future__ import annotations

from dataclasses import dataclass

from simulator.models import ModelSpec

FP32 = 4  # bytes: SSD chunk states, dt and dA cumsums and CB are fp32 (mamba_ssm ssd_*.py)


@dataclass(frozen=True)
class MambaShape:
    """The mixer one rank runs: its share of heads and groups."""

    heads: int  # H / tp
    head_dim: int  # P
    state: int  # N (d_state)
    groups: int  # G / tp
    conv: int  # d_conv
    chunk: int  # Q

    @property
    def d_inner(self) -> int:
        return self.heads * self.head_dim

    @property
    def in_proj_width(self) -> int:
        """z, x, B, C, dt (Megatron-Core MambaMixer in_proj output partitions)."""
        return 2 * self.d_inner + 2 * self.groups * self.state + self.heads

    @property
    def conv_channels(self) -> int:
        """x, B, C: the channels the depthwise conv1d runs over."""
        return self.d_inner + 2 * self.groups * self.state


def mamba_shape(model: ModelSpec, tp: int = 1, cp: int = 1) -> MambaShape:
    """The mixer on one of tp·cp ranks: Megatron-Core splits heads and groups over tp
    (mamba_mixer.py) and, with context parallelism, the TP-local heads over cp for the conv and
    the scan (ssm/mamba_context_parallel.py, all-to-all from sequence to head sharding)."""
    split = tp * cp
    return MambaShape(heads=max(1, model.mamba_num_heads // split), head_dim=model.mamba_head_dim,
                      state=model.mamba_state_dim, groups=max(1, model.mamba_num_groups // split),
                      conv=model.mamba_conv_kernel, chunk=model.mamba_chunk_size)


@dataclass(frozen=True)
class SSDWork:
    """FLOPs of the four steps of the chunked SSD algorithm for `tokens` tokens (Dao & Gu 2024
    §6: 1 intra-chunk outputs, 2 chunk states, 3 state passing, 4 outputs from the states), split
    by the kernel that runs each in mamba_ssm (ssd_bmm, ssd_chunk_state, ssd_state_passing,
    ssd_chunk_scan)."""

    cb: float  # C·Bᵀ per chunk and group: 2·Q·N per token and group (_bmm_chunk_fwd)
    diag: float  # (L ∘ CBᵀ)·X per chunk and head: 2·Q·P per token and head (the quadratic part)
    states: float  # Bᵀ·(decay·X) per chunk and head: 2·N·P per token and head (_chunk_state_fwd)
    passing: float  # the scan over chunk states: N·P per chunk and head, multiply-add (_state_passing_fwd)
    out: float  # C·state per chunk and head: 2·N·P per token and head (_chunk_scan_fwd, off-diagonal)

    @property
    def total(self) -> float:
        return self.cb + self.diag + self.states + self.passing + self.out


def ssd_flops(shape: MambaShape, tokens: float) -> SSDWork:
    """Forward FLOPs of the SSD scan (Dao & Gu 2024 §6, "SSD algorithm: chunkwise"): with T tokens
    in T/Q chunks, step 1 costs the diagonal blocks' quadratic attention-like form (C·Bᵀ once per
    group, masked and applied to X per head: T·Q·(N + P) per head), steps 2 and 4 the chunk
    states and their outputs (T·N·P each), step 3 a scan over T/Q states of N·P. Each product
    is counted in full blocks (the Triton kernels compute whole Q×Q tiles), multiply-add = 2."""
    Q, N, P, H, G = shape.chunk, shape.state, shape.head_dim, shape.heads, shape.groups
    chunks = tokens / Q
    return SSDWork(cb=2.0 * tokens * Q * N * G, diag=2.0 * tokens * Q * P * H,
                   states=2.0 * tokens * N * P * H, passing=2.0 * chunks * N * P * H,
                   out=2.0 * tokens * N * P * H)


def ssd_bytes(shape: MambaShape, tokens: float, act_bytes: float) -> float:
    """HBM bytes of the forward SSD kernels (mamba_ssm ssd_combined.py _mamba_chunk_scan_combined_fwd):
    x, B, C, dt and z read, the output written (16-bit); dt and its decay cumsum written and read
    back in fp32; the chunk states written in fp32 (chunk_state, states_in_fp32), read by
    state_passing and written again in the 16-bit params dtype (out_dtype = Megatron-Core's
    mamba_training_ssm_states_dtype, default params_dtype), read by chunk_scan; C·Bᵀ written and
    read in fp32 (ssm/ops/mamba2/ssd_combined.py)."""
    Q, N, P, H, G = shape.chunk, shape.state, shape.head_dim, shape.heads, shape.groups
    chunks = tokens / Q
    io = tokens * act_bytes * (3 * H * P + 2 * G * N + H)  # x, z read, y written; B, C; dt
    dt = tokens * H * FP32 * 2 * 2  # dt and dA_cumsum, written once and read back
    states = chunks * H * N * P * (FP32 + FP32 + act_bytes + act_bytes)
    cb = chunks * G * Q * Q * FP32 * 2
    return io + dt + states + cb


def mamba_state_bytes(shape: MambaShape, ssm_bytes: float, conv_bytes: float = 2) -> float:
    """The state one sequence keeps per Mamba-2 layer between decode steps: the conv window
    (d_conv − 1 past inputs of x, B, C) and each head's P×N SSM state (SGLang mamba_utils.py
    Mamba2StateShape: conv (conv_dim, conv_kernel − 1), temporal (heads, head_dim, state_size);
    vLLM MambaSpec alike)."""
    return (shape.conv - 1) * shape.conv_channels * conv_bytes + shape.heads * shape.head_dim * shape.state * ssm_bytes


def mamba_step_bytes(shape: MambaShape, seqs: float, ssm_bytes: float, act_bytes: float) -> float:
    """HBM bytes of one decode token per sequence (mamba_ssm selective_state_update): the SSM
    state read and written back, the conv window read and rolled, and the token's x, z, B, C and
    dt in and y out."""
    state = 2 * shape.heads * shape.head_dim * shape.state * ssm_bytes
    conv = 2 * (shape.conv - 1) * shape.conv_channels * act_bytes
    io = (shape.in_proj_width + shape.d_inner) * act_bytes
    return seqs * (state + conv + io)


def mamba_step_flops(shape: MambaShape, seqs: float) -> float:
    """One decode token per sequence: decay and update h ← exp(dt·A)·h + dt·x⊗B, read-out y = h·C,
    ≈ 6·P·N per head (multiply-add = 2)."""
    return seqs * shape.heads * 6 * shape.head_dim * shape.state


def mamba_activation_bytes(model: ModelSpec, tokens: float, tp: int, gi: float, act_bytes: float) -> float:
    """Bytes one Mamba-2 mixer keeps for backward per rank, beyond the layer's norm and in_proj
    inputs (which `simulator.memory` counts like any block's): mamba_split_conv1d_scan_combined
    saves the in_proj output zxBCdt and the scan output before the gate, out_x (16-bit), and
    recomputes the conv and the chunk states in backward (mamba_ssm ssd_combined.py
    MambaSplitConv1dScanCombinedFn.forward save_for_backward); the gated RMSNorm keeps its input
    and one fp32 rstd per group (layernorm_gated.py); out_proj keeps its input (gi bytes/element,
    quantised in FP8 recipes)."""
    s = mamba_shape(model, tp)
    saved = act_bytes * (s.in_proj_width + s.d_inner + s.d_inner) + FP32 * s.groups + gi * s.d_inner
    return tokens * saved
