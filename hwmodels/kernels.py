"""Kernel time model: how long one GEMM, attention, elementwise or copy kernel takes on a device.

Order of evidence, best first (docs/modeling.md §1; calibration data only, docs/design.md §5):
1. a measured latency table of this device (aiconfigurator-core parquet, or our own profiles),
   interpolated where it covers the shape;
2. the same table's achieved efficiency (FLOP/s ÷ dense peak) carried over to a device without
   measurements, from the device named by its `efficiency_from` (the notes say so);
3. roofline: max(FLOPs / achievable FLOP/s, bytes / achievable bytes/s).
All results in seconds. Functions are cached on their integer arguments: the planner asks for
the same shapes millions of times.
"""
from __future__ import annotations

import csv
import math
from functools import cache, lru_cache
from pathlib import Path

import numpy as np

from hwmodels import profiles
from hwmodels.devices import Device, get_device, safe_yaml
from hwmodels.errors import InputError

# Achievable fraction of HBM bandwidth for streaming kernels and a fixed per-kernel cost.
# aiconfigurator-core 0.12.0 systems/*.yaml: mem_bw_empirical_scaling_factor 0.8 and
# mem_empirical_constant_latency 3 µs (kernel-level observations); validation/data/reference/hardware
# README: NVIDIA parts reach up to ~90% of HBM peak in copy benchmarks (arXiv 2510.27583).
MEMORY_EFFICIENCY = 0.8
KERNEL_LATENCY_S = 3e-6
# Efficiency of a GEMM when nothing was measured on any related device: A100 SXM bf16 MAMF
# 271.2 of 312 TFLOP/s (stas00/ml-engineering "Maximum Achievable Matmul FLOPS" table).
FALLBACK_GEMM_EFFICIENCY = 0.869
# FlashAttention-2 backward does 2.5× the forward FLOPs (5 GEMMs vs 2) at about the forward's
# throughput: FA2 benchmark figures (Dao 2023, repo README) give fwd+bwd 189 TFLOP/s vs fwd ~190
# on A100 hd128 causal, 328 vs 335 on H100 (validation/data/reference/flashattention_measured_tflops.csv).
FLASH_BWD_FLOP_RATIO = 2.5
# Flash attention forward when no attention table covers the device: FA2 forward on H100,
# hd128 causal, 16k: 335 of 989 TFLOP/s (same file) — a fraction of dense peak.
FALLBACK_FLASH_EFFICIENCY = 0.34
_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "fp4": 0.5, "int8": 1}


# FlashAttention implementations a framework may run, by the name `TrainingJob.attention_kernel`
# takes. The kernel tables measure FlashAttention-2-class kernels; the older ones run at their
# measured A100 fwd+bwd rate (hwmodels/data/flash_attention_impls.csv, Dao 2023 Fig. 4-5).
ATTENTION_KERNELS = ("fa2", "fa1", "fa-triton")
LEGACY_FLASH_DEVICE = "a100-sxm-80g"  # where the non-FA2 kernels were measured


@cache
def _attention_impl_table() -> dict:
    """{(device, implementation, causal, head_dim): (seq_lens, TFLOP/s)} of the benchmark figures."""
    out: dict = {}
    with open(Path(__file__).parent / "data" / "flash_attention_impls.csv") as f:
        for r in csv.DictReader(line for line in f if not line.startswith("#")):
            key = (r["device"], r["implementation"], r["causal"] == "True", int(r["head_dim"]))
            out.setdefault(key, []).append((int(r["seq_len"]), float(r["tflops_per_s"])))
    return {k: (np.array([s for s, _ in sorted(v)], float), np.array([t for _, t in sorted(v)]))
            for k, v in out.items()}


def attention_kernel_flops(device: str, kernel: str, head_dim: int, seq_len: int) -> float | None:
    """Measured fwd+bwd FLOP/s of causal flash kernel `kernel` on `device` (None where not
    measured) at the nearest measured head dim (64 or 128) and the sequence length
    (log-interpolated, clamped to the measured 512-16k)."""
    if kernel not in ATTENTION_KERNELS:
        raise InputError(f"attention kernel {kernel!r}; valid: {', '.join(ATTENTION_KERNELS)}")
    row = _attention_impl_table().get((device, kernel, True, 64 if head_dim <= 96 else 128))
    if row is None:
        return None
    return 1e12 * float(np.interp(np.log(max(seq_len, 1)), np.log(row[0]), row[1]))


def dtype_bytes(dtype: str) -> float:
    return _BYTES[dtype]


class KernelModel:
    """Kernel costs for one device at one compute dtype."""

    def __init__(self, device: Device | str, dtype: str = "bf16"):
        self.device = get_device(device) if isinstance(device, str) else device
        self.dtype = dtype
        self.peak_flops = self.device.peak(dtype)
        self.notes: list[str] = []
        if not self.device.hbm_bytes_per_s:
            raise InputError(f"device {self.device.name!r} has no known HBM bandwidth (no usable "
                             f"source); add hbm_bytes_per_s to a devices file to model it")
        self.mem_bytes_per_s = self.device.hbm_bytes_per_s * MEMORY_EFFICIENCY
        # Where measurements come from: the device itself, or the device it borrows from.
        src = self.device
        if not src.kernel_profile and src.efficiency_from:
            src = get_device(src.efficiency_from)
            self.notes.append(f"{self.device.name}: no measured kernels; GEMM/attention efficiency "
                              f"carried over from {src.name}")
        self._src = src
        self._gemm = _gemm_table(src.kernel_profile, dtype) if src.kernel_profile else None
        self._attn = _attn_table(src.kernel_profile, dtype) if src.kernel_profile else None
        if src.kernel_profile and self._gemm is None:
            self.notes.append(f"{src.name}: no {dtype} GEMM table; roofline at "
                              f"{FALLBACK_GEMM_EFFICIENCY:.0%} of peak")
        if not src.kernel_profile and src is self.device:
            self.notes.append(f"{self.device.name}: no measured kernels; roofline with efficiencies "
                              f"GEMM {FALLBACK_GEMM_EFFICIENCY:.0%}, attention {FALLBACK_FLASH_EFFICIENCY:.0%}")
        # Measured times of the source device scale to this device by the ratio of peaks, then
        # to sustained clocks (hwmodels/data/gemm_sustained.yaml).
        self._scale = 1.0 if src is self.device else src.peak(dtype) / self.peak_flops
        self._peak_ratio = self._scale
        # the roofline ridge (FLOP/B) of the device the tables were measured on, as catalogued: a
        # what-if variant of it (more HBM bandwidth, say) keeps the measured kernels and so which
        # of them were compute-bound (`sustained_s`)
        try:
            measured = get_device(src.name)
        except InputError:
            measured = src
        self._ridge = measured.peak(dtype) / measured.hbm_bytes_per_s if measured.hbm_bytes_per_s else math.inf
        self.sustained_factor = 1.0
        if self._gemm is not None:
            self.sustained_factor = _sustained_factor(self.device.name, dtype, self._gemm.peak_achieved()
                                                      / self._scale, src.peak(dtype) / self._scale, src.name)
            self._scale /= self.sustained_factor
            if self.sustained_factor < 1:
                self.notes.append(f"{self.device.name}: measured kernel tables scaled by "
                                  f"{self.sustained_factor:.3f} to the sustained matmul best (MAMF)")
        self.gemm_s = lru_cache(maxsize=1 << 16)(self._gemm_s)
        self.flash_attention_s = lru_cache(maxsize=1 << 14)(self._flash_attention_s)

    @classmethod
    def from_profile(cls, path, dtype: str | None = None) -> "KernelModel":
        """A kernel model of the machine a `clusterplan validate profile` folder measured (our own
        schema, hwmodels/own_profiles.py): GEMMs and attention from its tables, `memory_s` from
        its measured copy times, peak FLOP/s = the best measured GEMM rate. `dtype` defaults to
        the profile's first dtype. The profile itself stays reachable as `.profile` (element-wise,
        decode attention, collective and overhead tables)."""
        from hwmodels.own_profiles import load_profile

        prof = load_profile(path)
        dtype = dtype or (prof.dtypes[0] if prof.dtypes else "fp32")
        km = cls.__new__(cls)
        km.device = prof.device(dtype)
        km.dtype = dtype
        km.peak_flops = km.device.peak(dtype)
        km.profile = prof
        km.notes = [f"kernels measured by clusterplan validate profile: {prof.source}"]
        mem = prof.memory(dtype)
        km.mem_bytes_per_s = mem.peak_bandwidth  # GEMM floor only; memory_s reads the table
        km._src = km.device
        km._gemm = prof.gemm(dtype)
        km._attn = prof.attention(dtype)
        km._scale = km._peak_ratio = 1.0
        km._ridge = math.inf
        km.sustained_factor = 1.0
        km.gemm_s = lru_cache(maxsize=1 << 16)(km._gemm_s)
        km.flash_attention_s = lru_cache(maxsize=1 << 14)(km._flash_attention_s)
        km.memory_s = mem.time_s
        return km

    @property
    def source(self) -> str:
        parts = []
        if self._gemm is not None:
            parts.append(self._gemm.source)
        if self._attn is not None:
            parts.append(self._attn.source)
        return "; ".join(parts) or "roofline"

    # ---- GEMM -----------------------------------------------------------------------------
    def _gemm_s(self, m: int, n: int, k: int) -> float:
        """C[m,n] = A[m,k]·B[k,n] at self.dtype."""
        if m <= 0 or n <= 0 or k <= 0:
            return 0.0
        flops = 2.0 * m * n * k
        bytes_ = dtype_bytes(self.dtype) * (m * k + k * n + m * n)
        t_mem = bytes_ / self.mem_bytes_per_s + KERNEL_LATENCY_S
        if self._gemm is not None:
            m0, n0, k0 = (int(self._gemm.m[0]), int(self._gemm.n[0]), int(self._gemm.k[0]))
            mc, nc, kc = max(m, m0), max(n, n0), max(k, k0)
            t = self._gemm.time_s(mc, nc, kc)
            if t is not None:
                # Below the grid a kernel is no faster than the smallest measured shape.
                # (the time, intensity and memory floor are the clamped shape's)
                b = dtype_bytes(self.dtype) * (mc * kc + kc * nc + mc * nc)
                return max(self.sustained_s(t * self._peak_ratio, 2.0 * mc * nc * kc, b),
                           b / self.mem_bytes_per_s + KERNEL_LATENCY_S)
        return max(flops / (self.peak_flops * FALLBACK_GEMM_EFFICIENCY), t_mem)

    def sustained_s(self, t_burst: float, flops: float, nbytes: float) -> float:
        """A kernel's burst-timed seconds on this device at sustained clocks (§1.4 of
        docs/modeling.md). The power limit throttles the SM clock, not the memory clock: a
        kernel above the roofline's ridge point (arithmetic intensity ≥ peak FLOP/s ÷ HBM bytes/s)
        is compute-bound and slows by 1/σ; below it, by the share of the ridge its intensity
        reaches (Williams, Waterman & Patterson, CACM 2009, the roofline model), so a decode GEMM
        that reads its weights for a few rows hardly slows at all."""
        if self.sustained_factor >= 1.0 or t_burst <= 0 or nbytes <= 0:
            return t_burst
        bound = min(1.0, flops / nbytes / self._ridge)
        return t_burst * (1.0 + (1.0 / self.sustained_factor - 1.0) * bound)

    def bmm_s(self, batch: int, m: int, n: int, k: int) -> float:
        """Strided batched GEMM: costed as one GEMM with the batch folded into m."""
        return self.gemm_s(batch * m, n, k)

    # ---- attention ------------------------------------------------------------------------
    def _flash_attention_s(self, batch: int, seq_q: int, seq_kv: int, heads: int, kv_heads: int,
                           head_dim: int, causal: bool = True) -> float:
        """Fused (flash) attention forward over `batch` sequences of `seq_q` queries attending to
        `seq_kv` keys; causal halves the work when seq_q == seq_kv."""
        frac = 0.5 if causal and seq_q == seq_kv else 1.0
        flops = 4.0 * batch * seq_q * seq_kv * heads * head_dim * frac
        if self._attn is not None and seq_q == seq_kv and causal:
            t = self._attn.time_s(batch, seq_q, heads, kv_heads, head_dim)
            if t is not None:
                return t * self._scale
        if self._attn is not None:
            # Cross-chunk attention (context parallelism): use the measured efficiency of the
            # causal kernel at the same total length and scale by the FLOPs.
            t = self._attn.time_s(batch, max(seq_q, seq_kv), heads, kv_heads, head_dim)
            if t is not None:
                ref = 2.0 * batch * max(seq_q, seq_kv) ** 2 * heads * head_dim
                return t * self._scale * flops / ref
        return flops / (self.peak_flops * FALLBACK_FLASH_EFFICIENCY) + KERNEL_LATENCY_S

    def legacy_flash_s(self, kernel: str, batch: int, seq: int, heads: int, head_dim: int) -> float:
        """Forward of a causal self-attention on an older flash kernel (FA1, the Triton port): its
        measured fwd+bwd rate on this device (hwmodels/data/flash_attention_impls.csv, Dao 2023
        Fig. 4-5), or on the A100 it was measured on, scaled by how much faster this device runs
        FlashAttention-2 on the same problem. The benchmark counts fwd+bwd as (1 + 2.5) forwards
        (FLASH_BWD_FLOP_RATIO); the forward is its 1/3.5 share."""
        flops = 2.0 * batch * seq * seq * heads * head_dim  # causal: half of 4·b·s²·h·d
        rate = attention_kernel_flops(self.device.name, kernel, head_dim, seq)
        if rate is not None:
            return flops / rate + KERNEL_LATENCY_S
        ref = kernel_model(LEGACY_FLASH_DEVICE, "bf16")
        speedup = (ref.flash_attention_s(batch, seq, seq, heads, heads, head_dim, True)
                   / self.flash_attention_s(batch, seq, seq, heads, heads, head_dim, True))
        return flops / (attention_kernel_flops(LEGACY_FLASH_DEVICE, kernel, head_dim, seq) * speedup) + KERNEL_LATENCY_S

    def flash_attention_bwd_s(self, batch, seq_q, seq_kv, heads, kv_heads, head_dim, causal=True):
        return FLASH_BWD_FLOP_RATIO * self.flash_attention_s(batch, seq_q, seq_kv, heads,
                                                             kv_heads, head_dim, causal)

    # ---- memory-bound ---------------------------------------------------------------------
    def memory_s(self, bytes_: float) -> float:
        """A streaming kernel (elementwise, norm, softmax, copy) moving `bytes_` through HBM."""
        if bytes_ <= 0:
            return 0.0
        return bytes_ / self.mem_bytes_per_s + KERNEL_LATENCY_S


@cache
def _sustained_file() -> dict:
    with open(Path(__file__).parent / "data" / "gemm_sustained.yaml") as f:
        return safe_yaml(f)


def _sustained() -> dict:
    return _sustained_file()["sustained_gemm_flops"]


def _sustained_factor(device: str, dtype: str, table_best: float, src_peak: float,
                      source: str | None = None) -> float:
    """MAMF best ÷ the table's best achieved rate on this device (≤ 1), as efficiencies (÷ peak).
    Where MAMF measured another dtype of this device, its ratio to that dtype's peak carries
    over; a device without MAMF rows takes those of its GPU in another system (the yaml's
    `same_gpu`: GB300 carries B300's Blackwell Ultra GPU), and one that borrows its kernel
    efficiency from `source` borrows the source's sustained efficiency with it (clock behaviour
    comes with the silicon: A100 40GB and 80GB are one GA100 at the same clocks and 400 W)."""
    for name in (device, _sustained_file().get("same_gpu", {}).get(device), source):
        mamf = _sustained().get(name, {}) if name else {}
        if mamf:  # clock behaviour is a property of the device, not of the dtype
            d = dtype if dtype in mamf else next(iter(mamf))
            return min(1.0, (mamf[d] / get_device(name).peak(d)) / (table_best / src_peak))
    return 1.0


@cache
def _gemm_table(system: str, dtype: str):
    return profiles.load_gemm_table(system, dtype)


@cache
def _attn_table(system: str, dtype: str):
    return profiles.load_attention_table(system, dtype)


@cache
def kernel_model(device_name: str, dtype: str = "bf16") -> KernelModel:
    return KernelModel(get_device(device_name), dtype)
