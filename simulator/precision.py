"""Bytes per element of what a workload stores and moves, defined once for training and serving.

The bytes of a compute dtype (bf16, fp8, ...) come from `hwmodels.kernels.dtype_bytes`; the
constants here fix the formats that stay the same whatever the GEMMs run at.
"""
from __future__ import annotations

# Activations and their gradients travel in bf16/fp16; fp8 GEMMs quantise their inputs on the fly
# and write bf16 outputs (Transformer Engine FP8 recipe; Micikevicius et al. 2022, arXiv 2209.05433 §4).
ACT_BYTES = 2
# Mixed-precision training state per parameter (ZeRO, Rajbhandari et al. 2019 §3: 2Ψ + 2Ψ + KΨ).
WEIGHT_BYTES = 2  # bf16/fp16 weights
GRAD_BYTES = 2  # bf16/fp16 gradients
OPTIMIZER_BYTES = 12  # Adam: fp32 master weights, momentum and variance (K = 12)
