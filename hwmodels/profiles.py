"""The one adapter that reads measured kernel tables shipped by `aiconfigurator-core`.

aiconfigurator-core (PyPI, Apache-2.0; docs/design.md §5) ships latency tables measured on real GPUs
under `aiconfigurator_core/systems/data/<system>/<family>/<framework>/<version>/*.parquet`.
This module turns the few we use into plain numpy grids in SI units (seconds, bytes, FLOP/s)
and answers point queries by interpolation. pandas/pyarrow are imported here only, lazily, so
`import hwmodels` stays fast; every load is cached and every query is memoised.

Units, checked against the package and its collector (ai-dynamo/aiconfigurator `collector/`):
- `latency` is milliseconds in every table (collectors log `results["latency_ms"]`; nccl-tests
  microseconds are converted `* 1e-3`). Sanity: A100 bf16 GEMM tops out at 299 TFLOP/s
  (peak 312), H100 at 956 (peak 989).
- NCCL `message_size` is an element count of `nccl_dtype` (`half` = 2 B, `int8` = 1 B): the
  collector logs nccl-tests' byte size `// bytes_per_element`, and at equal `message_size` the
  half rows take ~1.9x the int8 rows' time for all_gather / alltoall. nccl-tests' size is the
  full buffer: all-reduce input, all-gather output, reduce-scatter input, all-to-all send buffer.
- Decode (`generation_attention`) rows have `isl` = 1 and `step` = kv_len - 1: the new token
  attends to `isl + step` cached positions (the sweep's sequence lengths are 2, 4, ..., 131072).

Which table feeds each op (one framework table per op, chosen per system and dtype):
- GEMM: every framework's bf16 rows time the framework's plain dense Linear (torch
  `F.linear`, i.e. cuBLAS: vLLM `torch.nn.functional.linear` / `vllm_default`, SGLang
  `sglang_torch_linear`, TRT-LLM `torch_flow`); fp8 = per-tensor scaled fp8 (`gemm_dtype`
  "fp8": CUTLASS / sgl-kernel / cuBLASLt scaled-mm, activation quantisation included); fp4 =
  NVFP4 (`gemm_dtype` "nvfp4", Blackwell only); block-scaled fp8 and weight-only rows are not used. Among the candidates we take the table
  with the most measured (m, n, k) points (the fullest regular grid), ties broken by framework
  (vLLM first: its collector replays CUDA graphs over 6 weight copies, so it times the kernel
  alone, without launch gaps, with a cold L2), then by the newest version.
- Attention (context and decode): rows with bf16 (or fp8) compute, the matching KV-cache dtype,
  no sliding window, beam 1. Per head_dim the kernel lane (`kernel_source`) with the most rows;
  across frameworks the table with the most rows in total, same tie-break.
- Fused MoE (`moe_perf`, serving only): the engine's own framework, every version, each curve
  (moe dtype, hidden, expert FFN width, top-k, experts, moe_tp, moe_ep, expert-load draw) from the
  newest version that measured it; no grid fill: a shape or split the collector never ran is
  absent, and the caller keeps its grouped-GEMM experts.
- NCCL: the version directory the package itself pins (`misc.nccl_version` in
  `systems/<system>.yaml`), else the newest; `half` rows; repeated rows averaged. Systems
  without NCCL data but with oneCCL (Intel B60) use the oneCCL table the same way.

Missing grid points (shapes the collector skipped, e.g. GEMM n = k = 65536, attention batches
beyond its token cap, (heads, kv heads) pairs a lane was not run at) are filled along one axis
at a time, in a stated order (GEMM: k, n, m; attention: batch, GQA group, heads, sequence):
linear in log2 of the coordinate between the nearest measured points of the same line, the
edge value beyond them (so GEMM n = k = 65536 takes k = 51200's rate, and a batch beyond the
collector's cap takes the largest measured batch's rate). A fill stays within the range of
measured values, so no filled point is faster than the fastest measurement.

Queries interpolate the achieved rate (FLOP/s, or KV bytes/s for decode) multilinearly in log2
of the coordinates. Beyond the largest measured value of an axis the rate is held at the edge
(large kernels saturate); below the smallest, the query returns None and the caller falls back
to its roofline.

The installed package must be exactly `AIC_VERSION`: with any other version every loader
returns None (and warns once) so that the data under the model cannot shift silently.
"""
from __future__ import annotations

import bisect
import functools
import itertools
import math
import os
import re
import warnings
from dataclasses import dataclass, field

import numpy as np

from hwmodels.devices import safe_yaml
from hwmodels.errors import unknown_name

AIC_VERSION = "0.12.0"
_PACKAGE = "aiconfigurator-core"
_MS = 1e-3
_FW_PREFERENCE = ("vllm", "sglang", "trtllm")  # tie-break, best first
_NCCL_DTYPE, _NCCL_ELEM_BYTES = "half", 2
_KV_BYTES = {"bfloat16": 2, "fp8": 1}
_OPS = {"allreduce": "all_reduce", "allgather": "all_gather", "reducescatter": "reduce_scatter",
        "alltoall": "all_to_all"}
_TABLE_OP_NAMES = {"all_reduce": "all_reduce", "all_gather": "all_gather",
                   "reduce_scatter": "reduce_scatter", "alltoall": "all_to_all",
                   "all_to_all": "all_to_all"}


# ---- locating the installed package ----------------------------------------------------------
@functools.cache
def _data_root() -> str | None:
    """`.../aiconfigurator_core/systems/data` of the installed, pinned package, else None."""
    import importlib.metadata
    import importlib.util

    try:
        version = importlib.metadata.version(_PACKAGE)
        spec = importlib.util.find_spec("aiconfigurator_core")  # locates; does not import
    except (importlib.metadata.PackageNotFoundError, ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    if version != AIC_VERSION:
        warnings.warn(f"{_PACKAGE} {version} is installed but clusterplan is pinned to "
                      f"{AIC_VERSION}; measured kernel tables are disabled "
                      f"(pip install {_PACKAGE}=={AIC_VERSION})", RuntimeWarning, stacklevel=3)
        return None
    root = os.path.join(list(spec.submodule_search_locations)[0], "systems", "data")
    return root if os.path.isdir(root) else None


def aiconfigurator_systems() -> list[str]:
    """Systems the installed package ships a data folder for ([] if not installed).

    Some (a100_pcie, a30, h100_pcie, l4 in 0.12.0) are empty placeholders: their loaders
    return None.
    """
    root = _data_root()
    if root is None:
        return []
    return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))


def _system_dir(system: str) -> str | None:
    """The data folder of `system`; None if the package is absent; InputError if unknown."""
    root = _data_root()
    if root is None:
        return None
    name = system.strip().lower().replace("-", "_")
    known = aiconfigurator_systems()
    if name not in known:
        raise unknown_name("aiconfigurator-core system", system, known)
    return os.path.join(root, name)


def _versions(system_dir: str, family: str, filename: str) -> list[tuple[str, str, str]]:
    """(framework, version, path) of every `<family>/<framework>/<version>/<filename>`."""
    out = []
    fam = os.path.join(system_dir, family)
    if not os.path.isdir(fam):
        return out
    for fw in sorted(os.listdir(fam)):
        fw_dir = os.path.join(fam, fw)
        if not os.path.isdir(fw_dir):
            continue
        for ver in sorted(os.listdir(fw_dir)):
            path = os.path.join(fw_dir, ver, filename)
            if os.path.isfile(path):
                out.append((fw, ver, path))
    return out


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version))


def _fw_rank(framework: str) -> int:
    return _FW_PREFERENCE.index(framework) if framework in _FW_PREFERENCE else len(_FW_PREFERENCE)


@functools.lru_cache(maxsize=16)  # the built tables are cached; raw frames only briefly
def _read(path: str):
    """A parquet file as a pandas DataFrame (cached; callers must not mutate it)."""
    import pandas as pd

    return pd.read_parquet(path)


def _rel(path: str) -> str:
    root = _data_root() or ""
    return os.path.relpath(path, os.path.dirname(os.path.dirname(root)))  # aiconfigurator_core/..


def _source(system: str, family: str, fw: str, ver: str, note: str = "") -> str:
    src = f"{_PACKAGE} {AIC_VERSION} {system}/{family}/{fw}/{ver}"
    return f"{src} ({note})" if note else src


def _device(df) -> str:
    return str(df["device"].iloc[0]) if "device" in df.columns and len(df) else ""


# ---- grids -----------------------------------------------------------------------------------
def _fill_axis(values: np.ndarray, axis: int, coords_log: np.ndarray) -> np.ndarray:
    """Fill NaNs of each 1-D line along `axis` from the measured values of the same line:
    linear in log2 of the coordinate between the nearest measured neighbours, the edge value
    beyond them. Lines with nothing measured stay NaN."""
    moved = np.moveaxis(values, axis, -1)
    flat = moved.reshape(-1, moved.shape[-1]).copy()
    valid = ~np.isnan(flat)
    for r in np.flatnonzero(valid.any(axis=1) & ~valid.all(axis=1)):
        ok = valid[r]
        flat[r, ~ok] = np.interp(coords_log[~ok], coords_log[ok], flat[r, ok])
    return np.moveaxis(flat.reshape(moved.shape), -1, axis)


class _LogGrid:
    """A value on a regular grid, interpolated multilinearly in log2 of the coordinates."""

    def __init__(self, axes: list[np.ndarray], values: np.ndarray, fill_order: list[int]):
        self.axes = [np.asarray(a, dtype=float) for a in axes]
        self._log = [[math.log2(x) for x in a] for a in self.axes]
        self.measured = int(np.count_nonzero(~np.isnan(values)))
        v = values
        for _ in range(len(axes) + 1):  # a pass per axis, repeated until nothing is missing
            if not np.isnan(v).any():
                break
            for ax in fill_order:
                v = _fill_axis(v, ax, np.asarray(self._log[ax]))
        self.values = v
        self._corners = list(itertools.product((0, 1), repeat=len(axes)))

    @classmethod
    def from_points(cls, coords: list[np.ndarray], value: np.ndarray, fill_order: list[int]):
        """Grid over the unique values of each coordinate column; repeats take the median."""
        axes, idx = [], []
        for c in coords:
            a, inv = np.unique(c, return_inverse=True)
            axes.append(a)
            idx.append(inv)
        flat = np.ravel_multi_index(tuple(idx), tuple(len(a) for a in axes))
        order = np.argsort(flat, kind="stable")
        flat_s, val_s = flat[order], np.asarray(value, dtype=float)[order]
        uniq, start, count = np.unique(flat_s, return_index=True, return_counts=True)
        grid = np.full(int(np.prod([len(a) for a in axes])), np.nan)
        grid[uniq] = val_s[start]
        for u, s0, c in zip(uniq[count > 1], start[count > 1], count[count > 1]):
            grid[u] = float(np.median(val_s[s0:s0 + c]))
        return cls(axes, grid.reshape(tuple(len(a) for a in axes)), fill_order)

    def __call__(self, *point: float) -> float | None:
        """Interpolated value at `point`; None below any axis's smallest value."""
        locs = []
        for lg, x in zip(self._log, point):
            if x <= 0:
                return None
            lx = math.log2(x)
            if lx < lg[0] - 1e-12:
                return None
            last = len(lg) - 1
            if last == 0 or lx >= lg[-1]:
                locs.append((last, last, 0.0))
                continue
            i = bisect.bisect_right(lg, lx) - 1
            locs.append((i, i + 1, (lx - lg[i]) / (lg[i + 1] - lg[i])))
        total = 0.0
        item = self.values.item
        for corner in self._corners:
            w, idx = 1.0, []
            for (i0, i1, t), c in zip(locs, corner):
                w *= t if c else 1.0 - t
                idx.append(i1 if c else i0)
            if w:
                total += w * item(*idx)
        return total


# ---- GEMM ------------------------------------------------------------------------------------
@dataclass(eq=False)
class GemmTable:
    """Measured dense GEMM C[m,n] = A[m,k]·B[k,n] of one system at one dtype."""
    system: str
    dtype: str
    source: str  # "aiconfigurator-core 0.12.0 <system>/gemm/<fw>/<ver>"
    m: np.ndarray  # sorted unique grid axes
    n: np.ndarray
    k: np.ndarray
    flops_per_s: np.ndarray  # achieved FLOP/s [len m, len n, len k]; gaps filled along k, n, m
    stamp: dict = field(default_factory=dict, compare=False, repr=False)
    _grid: _LogGrid | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self._grid is None:
            self._grid = _LogGrid([self.m, self.n, self.k], self.flops_per_s, [2, 1, 0])
        self._cached = functools.lru_cache(maxsize=1 << 16)(self._time_s)

    def time_s(self, m: int, n: int, k: int) -> float | None:
        """Seconds: 2mnk / achieved FLOP/s interpolated in (log2 m, log2 n, log2 k).

        Beyond the grid's largest m, n or k the rate is held at the edge; below the smallest,
        None (the caller falls back to its roofline)."""
        return self._cached(m, n, k)

    def _time_s(self, m: int, n: int, k: int) -> float | None:
        rate = self._grid(m, n, k)
        return None if rate is None else 2.0 * m * n * k / rate

    def peak_achieved(self) -> float:
        """Best measured FLOP/s in the table."""
        return float(np.nanmax(self.flops_per_s))


# fp4 = NVFP4 (E2M1 values, an FP8 E4M3 scale per 16-element block and a per-tensor fp32 scale:
# NVIDIA "Introducing NVFP4" blog / TensorRT-LLM docs), the Blackwell FP4 tensor-core format the
# collectors time as `gemm_dtype` "nvfp4", activation quantisation included.
_GEMM_DTYPES = {"bf16": "bfloat16", "fp16": "bfloat16", "fp8": "fp8", "fp4": "nvfp4"}


@functools.cache
def load_gemm_table(system: str, dtype: str = "bf16") -> GemmTable | None:
    """The GEMM table of `system` at `dtype` (bf16|fp16|fp8|fp4); None if absent.

    No table in 0.12.0 holds fp16 GEMMs: fp16 is served by the bf16 table (same tensor-core
    rate on every listed GPU) and its `source` says so."""
    sdir = _system_dir(system)
    if sdir is None or dtype not in _GEMM_DTYPES:
        return None
    want = _GEMM_DTYPES[dtype]
    best = None
    for fw, ver, path in _versions(sdir, "gemm", "gemm_perf.parquet"):
        df = _read(path)
        rows = df[df["gemm_dtype"] == want]
        if rows.empty:
            continue
        counts = rows["kernel_source"].value_counts()
        ks = max(counts.index, key=lambda s: (counts[s], s))
        rank = (int(counts[ks]), -_fw_rank(fw), _version_key(ver))
        if best is None or rank > best[0]:
            best = (rank, fw, ver, path, ks, rows[rows["kernel_source"] == ks])
    if best is None:
        return None
    _, fw, ver, path, ks, rows = best
    m, n, k = (rows[c].to_numpy(dtype=float) for c in ("m", "n", "k"))
    rate = 2.0 * m * n * k / (rows["latency"].to_numpy(dtype=float) * _MS)
    grid = _LogGrid.from_points([m, n, k], rate, fill_order=[2, 1, 0])
    note = "fp16 served by the bf16 table" if dtype == "fp16" else ""
    stamp = {"op": "gemm", "framework": fw, "framework_version": ver, "kernel_source": ks,
             "gemm_dtype": want, "device": _device(rows), "path": _rel(path),
             "measured_points": grid.measured, "grid_points": int(grid.values.size)}
    return GemmTable(system=os.path.basename(sdir), dtype=dtype,
                     source=_source(os.path.basename(sdir), "gemm", fw, ver, note),
                     m=grid.axes[0], n=grid.axes[1], k=grid.axes[2],
                     flops_per_s=grid.values, stamp=stamp, _grid=grid)


# ---- attention -------------------------------------------------------------------------------
def _attention_rows(sdir: str, filename: str, attn_dtype: str, kv_dtype: str):
    """The best framework table's usable rows: (fw, ver, path, {head_dim: rows}, lanes)."""
    best = None
    for fw, ver, path in _versions(sdir, "attention", filename):
        df = _read(path)
        keep = (df["attn_dtype"] == attn_dtype) & (df["kv_cache_dtype"] == kv_dtype)
        if "window_size" in df.columns:
            keep &= df["window_size"] == 0
        if "beam_width" in df.columns:
            keep &= df["beam_width"] == 1
        rows = df[keep]
        if rows.empty:
            continue
        per_hd, lanes, total = {}, {}, 0
        for hd, g in rows.groupby("head_dim"):
            counts = g["kernel_source"].value_counts()
            ks = max(counts.index, key=lambda s: (counts[s], s))
            per_hd[int(hd)], lanes[int(hd)] = g[g["kernel_source"] == ks], ks
            total += int(counts[ks])
        rank = (total, -_fw_rank(fw), _version_key(ver))
        if best is None or rank > best[0]:
            best = (rank, fw, ver, path, per_hd, lanes)
    return None if best is None else best[1:]


def _attention_dtypes(dtype: str, decode: bool) -> tuple[str, str] | None:
    """(attn_dtype, kv_cache_dtype) rows serving `dtype`. Decode compute is always bf16 in
    0.12.0, so fp8 decode means an fp8 KV cache."""
    if dtype in ("bf16", "fp16"):
        return "bfloat16", "bfloat16"
    if dtype == "fp8":
        return ("bfloat16", "fp8") if decode else ("fp8", "fp8")
    return None


@dataclass(eq=False)
class AttentionTable:
    """Context (prefill) attention, causal, forward: achieved FLOP/s on (batch, seq, heads,
    GQA group = heads / kv_heads) per measured head_dim."""
    system: str
    dtype: str
    source: str
    grids: dict = field(default_factory=dict, repr=False)  # head_dim -> _LogGrid
    stamp: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        self._cached = functools.lru_cache(maxsize=1 << 16)(self._time_s)

    @property
    def head_dims(self) -> list[int]:
        return sorted(self.grids)

    def time_s(self, batch: int, seq: int, num_heads: int, num_kv_heads: int,
               head_dim: int) -> float | None:
        """Seconds for causal forward attention of `batch` sequences of `seq` tokens; FLOPs =
        2·batch·seq²·heads·head_dim (half of 4·b·s²·a·d). None if head_dim was not measured or
        the shape is below the grid."""
        return self._cached(batch, seq, num_heads, num_kv_heads, head_dim)

    def _time_s(self, batch, seq, num_heads, num_kv_heads, head_dim):
        grid = self.grids.get(int(head_dim))
        if grid is None or num_kv_heads <= 0:
            return None
        rate = grid(batch, seq, num_heads, num_heads / num_kv_heads)
        return None if rate is None else 2.0 * batch * seq * seq * num_heads * head_dim / rate


@functools.cache
def load_attention_table(system: str, dtype: str = "bf16") -> AttentionTable | None:
    """Context attention table of `system` (dtype bf16|fp16|fp8: compute and KV dtype; fp16 is
    served by bf16 rows); None if absent."""
    sdir = _system_dir(system)
    dts = None if sdir is None else _attention_dtypes(dtype, decode=False)
    if dts is None:
        return None
    found = _attention_rows(sdir, "context_attention_perf.parquet", *dts)
    if found is None:
        return None
    fw, ver, path, per_hd, lanes = found
    grids = {}
    for hd, g in per_hd.items():
        b, s, h, kv = (g[c].to_numpy(dtype=float) for c in
                       ("batch_size", "isl", "num_heads", "num_key_value_heads"))
        rate = 2.0 * b * s * s * h * hd / (g["latency"].to_numpy(dtype=float) * _MS)
        grids[hd] = _LogGrid.from_points([b, s, h, h / kv], rate, fill_order=[0, 3, 2, 1])
    name = os.path.basename(sdir)
    note = "fp16 served by the bf16 rows" if dtype == "fp16" else ""
    stamp = {"op": "context_attention", "framework": fw, "framework_version": ver,
             "kernel_source": {hd: lanes[hd] for hd in sorted(lanes)}, "attn_dtype": dts[0],
             "kv_cache_dtype": dts[1], "device": _device(next(iter(per_hd.values()))),
             "path": _rel(path)}
    return AttentionTable(system=name, dtype=dtype,
                          source=_source(name, "attention", fw, ver, note) + " context",
                          grids=grids, stamp=stamp)


@dataclass(eq=False)
class DecodeAttentionTable:
    """Generation attention: one new token per sequence reading a KV cache of kv_len positions.
    Interpolates the achieved KV-cache read rate (bytes/s) on (batch, kv_len, heads, GQA group)
    per measured head_dim; KV bytes = 2 (K and V) · batch · kv_len · kv_heads · head_dim · elem."""
    system: str
    dtype: str
    source: str
    kv_bytes_per_elem: float = 2.0
    grids: dict = field(default_factory=dict, repr=False)
    stamp: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        self._cached = functools.lru_cache(maxsize=1 << 16)(self._time_s)

    @property
    def head_dims(self) -> list[int]:
        return sorted(self.grids)

    def time_s(self, batch: int, kv_len: int, num_heads: int, num_kv_heads: int,
               head_dim: int) -> float | None:
        """Seconds for one decode step of `batch` sequences, each attending to `kv_len` cached
        positions (the new token included). None if head_dim was not measured or the shape is
        below the grid (kv_len < 2, the smallest measured)."""
        return self._cached(batch, kv_len, num_heads, num_kv_heads, head_dim)

    def _time_s(self, batch, kv_len, num_heads, num_kv_heads, head_dim):
        grid = self.grids.get(int(head_dim))
        if grid is None or num_kv_heads <= 0:
            return None
        rate = grid(batch, kv_len, num_heads, num_heads / num_kv_heads)
        if rate is None:
            return None
        return 2.0 * batch * kv_len * num_kv_heads * head_dim * self.kv_bytes_per_elem / rate


@functools.cache
def load_decode_attention_table(system: str, dtype: str = "bf16") -> DecodeAttentionTable | None:
    """Decode attention table of `system`; dtype names the KV-cache dtype (bf16|fp16|fp8; the
    query/compute side is bf16 in every 0.12.0 table). None if absent."""
    sdir = _system_dir(system)
    dts = None if sdir is None else _attention_dtypes(dtype, decode=True)
    if dts is None:
        return None
    found = _attention_rows(sdir, "generation_attention_perf.parquet", *dts)
    if found is None:
        return None
    fw, ver, path, per_hd, lanes = found
    elem = _KV_BYTES[dts[1]]
    grids = {}
    for hd, g in per_hd.items():
        b, h, kv = (g[c].to_numpy(dtype=float) for c in
                    ("batch_size", "num_heads", "num_key_value_heads"))
        kv_len = g["isl"].to_numpy(dtype=float) + g["step"].to_numpy(dtype=float)
        rate = 2.0 * b * kv_len * kv * hd * elem / (g["latency"].to_numpy(dtype=float) * _MS)
        grids[hd] = _LogGrid.from_points([b, kv_len, h, h / kv], rate, fill_order=[0, 3, 2, 1])
    name = os.path.basename(sdir)
    note = "fp16 served by the bf16 rows" if dtype == "fp16" else ""
    stamp = {"op": "generation_attention", "framework": fw, "framework_version": ver,
             "kernel_source": {hd: lanes[hd] for hd in sorted(lanes)}, "attn_dtype": dts[0],
             "kv_cache_dtype": dts[1], "device": _device(next(iter(per_hd.values()))),
             "path": _rel(path)}
    return DecodeAttentionTable(system=name, dtype=dtype,
                                source=_source(name, "attention", fw, ver, note) + " generation",
                                kv_bytes_per_elem=elem, grids=grids, stamp=stamp)


# ---- NCCL ------------------------------------------------------------------------------------
def _normalise_op(op: str) -> str:
    key = re.sub(r"[\s_\-]", "", op.lower())
    if key not in _OPS:
        raise unknown_name("collective op", op, sorted(_OPS.values()))
    return _OPS[key]


@dataclass(eq=False)
class NcclTable:
    """Measured collectives (nccl-tests, 16-bit payload) inside one node of `system`."""
    system: str
    source: str
    # op -> num_gpus -> (log2 sizes list, log2 seconds list); sizes in bytes, repeats averaged
    curves: dict = field(default_factory=dict, repr=False)
    raw: dict = field(default_factory=dict, repr=False)  # op -> [(num_gpus, bytes, seconds)]
    stamp: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        self._cached = functools.lru_cache(maxsize=1 << 16)(self._time_s)

    def time_s(self, op: str, num_gpus: int, size_bytes: float) -> float | None:
        """Seconds for one collective of `size_bytes` (nccl-tests size: the full buffer) on
        `num_gpus` GPUs: log-log interpolation between measured sizes; below the smallest size
        the smallest's time (latency floor), above the largest its bandwidth. None for a GPU
        count or op that was not measured."""
        return self._cached(_normalise_op(op), int(num_gpus), int(round(size_bytes)))

    def _time_s(self, op: str, num_gpus: int, size: int) -> float | None:
        curve = self.curves.get(op, {}).get(num_gpus)
        if curve is None:
            return None
        if size <= 0:
            return 0.0
        ls, lt = curve
        x = math.log2(size)
        if x <= ls[0]:
            return 2.0 ** lt[0]
        if x >= ls[-1]:
            return 2.0 ** (lt[-1] + x - ls[-1])
        i = bisect.bisect_right(ls, x) - 1
        w = (x - ls[i]) / (ls[i + 1] - ls[i])
        return 2.0 ** (lt[i] + w * (lt[i + 1] - lt[i]))

    def points(self, op: str) -> list[tuple[int, float, float]]:
        """Raw measured rows (num_gpus, size_bytes, seconds), repeats included, sorted."""
        return list(self.raw.get(_normalise_op(op), []))


@functools.cache
def load_nccl_table(system: str) -> NcclTable | None:
    """The intra-node NCCL (or oneCCL) table of `system`; None if absent."""
    sdir = _system_dir(system)
    if sdir is None:
        return None
    name = os.path.basename(sdir)
    pinned = _pinned_comm_versions(sdir, name)
    chosen = None
    for lib in ("nccl", "oneccl"):
        found = [(v, p) for fw, v, p in _versions(sdir, "comm", f"{lib}_perf.parquet") if fw == lib]
        if found:
            pin = pinned.get(lib)
            match = [vp for vp in found if vp[0] == pin]
            newest = max(found, key=lambda vp: _version_key(vp[0]))
            chosen = (lib,) + (match[0] if match else newest)
            break
    if chosen is None:
        return None
    lib, ver, path = chosen
    df = _read(path)
    df = df[df["nccl_dtype"] == _NCCL_DTYPE]
    if df.empty:
        return None
    curves, raw = {}, {}
    for (op_name, n), g in df.groupby(["op_name", "num_gpus"]):
        op = _TABLE_OP_NAMES.get(str(op_name))
        if op is None:
            continue
        size = g["message_size"].to_numpy(dtype=float) * _NCCL_ELEM_BYTES
        sec = g["latency"].to_numpy(dtype=float) * _MS
        raw.setdefault(op, []).extend(zip([int(n)] * len(size), size.tolist(), sec.tolist()))
        sizes = np.unique(size)
        mean = np.array([sec[size == s].mean() for s in sizes])
        curves.setdefault(op, {})[int(n)] = ([math.log2(s) for s in sizes],
                                             [math.log2(t) for t in mean])
    for op in raw:
        raw[op].sort()
    stamp = {"op": "collectives", "library": lib, "library_version": ver,
             "pinned_version": pinned.get(lib), "nccl_dtype": _NCCL_DTYPE,
             "device": _device(df), "path": _rel(path),
             "num_gpus": {op: sorted(c) for op, c in curves.items()}}
    return NcclTable(system=name, source=f"{_PACKAGE} {AIC_VERSION} {name}/comm/{lib}/{ver}",
                     curves=curves, raw=raw, stamp=stamp)


@dataclass
class CustomAllReduceTable:
    """An inference engine's own all-reduce kernel (vLLM/SGLang custom_all_reduce, TensorRT-LLM
    one-/two-shot AllReduce), measured inside one node; used for small TP all-reduces."""
    system: str
    framework: str
    source: str
    curves: dict = field(default_factory=dict, repr=False)  # num_gpus -> (log2 bytes, log2 s)

    def time_s(self, num_gpus: int, size_bytes: float) -> float | None:
        """Log-log interpolation between measured sizes; the smallest size's time below it;
        None above the largest measured size (engines hand those to NCCL) or for an unmeasured
        GPU count."""
        curve = self.curves.get(int(num_gpus))
        if curve is None or size_bytes <= 0:
            return None if curve is None else 0.0
        ls, lt = curve
        x = math.log2(size_bytes)
        if x > ls[-1]:
            return None
        if x <= ls[0]:
            return 2.0 ** lt[0]
        if x == ls[-1]:
            return 2.0 ** lt[-1]
        i = bisect.bisect_right(ls, x) - 1
        w = (x - ls[i]) / (ls[i + 1] - ls[i])
        return 2.0 ** (lt[i] + w * (lt[i + 1] - lt[i]))


@functools.cache
def load_custom_allreduce_table(system: str, framework: str) -> CustomAllReduceTable | None:
    """The newest `comm/<framework>/<version>/custom_allreduce_perf.parquet` of `system`: bf16
    rows, the CUDA-graph kernel where both graph and eager were timed (engines run decode in
    graphs); message_size counts bf16 elements. None if absent."""
    sdir = _system_dir(system)
    if sdir is None:
        return None
    found = [(v, p) for fw, v, p in _versions(sdir, "comm", "custom_allreduce_perf.parquet") if fw == framework]
    if not found:
        return None
    ver, path = max(found, key=lambda vp: _version_key(vp[0]))
    df = _read(path)
    df = df[df["allreduce_dtype"] == "bfloat16"]
    if "backend" in df.columns and df["backend"].astype(str).str.endswith("_graph").any():
        df = df[df["backend"].astype(str).str.endswith("_graph")]
    if df.empty:
        return None
    curves = {}
    for n, g in df.groupby("num_gpus"):
        size = g["message_size"].to_numpy(dtype=float) * 2
        sec = g["latency"].to_numpy(dtype=float) * _MS
        sizes = np.unique(size)
        mean = np.array([sec[size == x].mean() for x in sizes])
        curves[int(n)] = ([math.log2(x) for x in sizes], [math.log2(t) for t in mean])
    name = os.path.basename(sdir)
    return CustomAllReduceTable(system=name, framework=framework, curves=curves,
                                source=_source(name, "comm", framework, ver, "custom all-reduce"))


# ---- fused MoE --------------------------------------------------------------------------------
# What the serving engines' fused-MoE layer runs as one call, timed by the collectors on one rank
# (ai-dynamo/aiconfigurator collector/<framework>/collect_moe.py: `FusedMoE(hidden, router_logits)`
# for vLLM, the framework's MoE module likewise for SGLang and TensorRT-LLM): top-k selection,
# token permutation, both grouped expert GEMMs with their activation, and the weighted un-permute.
# Not in it: the router GEMM, any EP exchange (one physical rank holds the local experts of a
# logical moe_tp x moe_ep group) and shared experts. `distribution` is the expert load the collector
# drew: "balanced" (every expert the same count), or "power_law_<alpha>" (expert popularity
# ~ rank^-alpha with the most loaded experts on the measured rank: collector/helper.py
# power_law_logits_v3), i.e. the slowest EP rank of an imbalanced batch.
MOE_DISTRIBUTIONS = ("balanced", "power_law_1.01", "power_law_1.2")


@dataclass
class MoETable:
    """Measured fused-MoE layer times of one framework on one system: per (moe dtype, hidden,
    expert FFN width, top-k, experts, moe_tp, moe_ep, distribution) a curve over tokens."""
    system: str
    framework: str
    source: str
    curves: dict = field(default_factory=dict, repr=False)  # key -> (log2 tokens, log2 s, version)

    def covers(self, moe_dtype: str, hidden: int, inter: int, topk: int, experts: int,
               moe_tp: int, moe_ep: int, distribution: str = "balanced") -> bool:
        return (moe_dtype, hidden, inter, topk, experts, moe_tp, moe_ep, distribution) in self.curves

    def time_s(self, tokens: float, moe_dtype: str, hidden: int, inter: int, topk: int,
               experts: int, moe_tp: int, moe_ep: int, distribution: str = "balanced") -> float | None:
        """Seconds of one fused-MoE layer over `tokens` tokens on one rank; None for a shape the
        table does not hold. Log-log interpolation between measured token counts; below the
        smallest, its time (launch- and weight-read-bound); beyond the largest, that point's time
        per token (the grouped GEMMs are compute-bound there)."""
        curve = self.curves.get((moe_dtype, hidden, inter, topk, experts, moe_tp, moe_ep, distribution))
        if curve is None:
            return None
        if tokens <= 0:
            return 0.0
        lx, lt, _ = curve
        x = math.log2(tokens)
        if x <= lx[0]:
            return 2.0 ** lt[0]
        if x >= lx[-1]:
            return 2.0 ** lt[-1] * tokens / 2.0 ** lx[-1]
        i = bisect.bisect_right(lx, x) - 1
        w = (x - lx[i]) / (lx[i + 1] - lx[i])
        return 2.0 ** (lt[i] + w * (lt[i + 1] - lt[i]))


@functools.cache
def load_moe_table(system: str, framework: str) -> MoETable | None:
    """Every `moe/<framework>/<version>/moe_perf.parquet` of `system`, one curve per shape from the
    newest version that measured it (repeated points averaged); None if the framework has none."""
    sdir = _system_dir(system)
    if sdir is None:
        return None
    found = [(v, p) for fw, v, p in _versions(sdir, "moe", "moe_perf.parquet") if fw == framework]
    if not found:
        return None
    cols = ["moe_dtype", "hidden_size", "inter_size", "topk", "num_experts", "moe_tp_size",
            "moe_ep_size", "distribution", "num_tokens", "latency"]
    curves: dict = {}
    for ver, path in sorted(found, key=lambda vp: _version_key(vp[0]), reverse=True):
        df = _read(path)
        if not set(cols) <= set(df.columns):
            continue
        # repeated points averaged; the sorted group keys leave each shape's rows contiguous and
        # ordered by num_tokens, so the shapes are cut at key changes (one pass over numpy
        # columns: a pandas group per shape costs seconds per table)
        df = df[cols].groupby(cols[:-1], as_index=False, sort=True)["latency"].mean()
        keys = [df[c].to_numpy(dtype=object) for c in cols[:8]]
        toks_all = df["num_tokens"].to_numpy(dtype=float)
        sec_all = df["latency"].to_numpy(dtype=float) * _MS
        n = len(df)
        change = np.zeros(n, dtype=bool)
        change[:1] = True
        for k in keys:
            change[1:] |= k[1:] != k[:-1]
        starts = np.flatnonzero(change).tolist() + [n]
        for a, b in zip(starts[:-1], starts[1:]):
            key = (str(keys[0][a]),) + tuple(int(k[a]) for k in keys[1:7]) + (str(keys[7][a]),)
            if key in curves or b - a < 2:
                continue
            toks, sec = toks_all[a:b], sec_all[a:b]
            if (toks <= 0).any() or (sec <= 0).any():
                continue
            curves[key] = ([math.log2(x) for x in toks], [math.log2(t) for t in sec], ver)
    if not curves:
        return None
    name = os.path.basename(sdir)
    vers = sorted({c[2] for c in curves.values()}, key=_version_key)
    return MoETable(system=name, framework=framework, curves=curves,
                    source=_source(name, "moe", framework, "/".join(vers), "fused MoE"))


def _pinned_comm_versions(system_dir: str, system: str) -> dict:
    """`misc.nccl_version` / `misc.oneccl_version` from the package's `systems/<system>.yaml`."""
    import yaml

    path = os.path.join(os.path.dirname(os.path.dirname(system_dir)), f"{system}.yaml")
    try:
        with open(path) as f:
            misc = (safe_yaml(f) or {}).get("misc") or {}
    except (OSError, yaml.YAMLError):
        return {}
    return {lib: str(misc[f"{lib}_version"]) for lib in ("nccl", "oneccl")
            if misc.get(f"{lib}_version") is not None}


# ---- provenance ------------------------------------------------------------------------------
def table_stamp(system: str) -> dict:
    """Provenance of every table this adapter serves for `system`: package and version, and
    per op the framework, its version, kernel lane, device string and file path used."""
    sdir = _system_dir(system)
    if sdir is None:
        return {"package": _PACKAGE, "package_version": None, "system": system, "tables": {}}
    tables = {
        "gemm_bf16": load_gemm_table(system, "bf16"),
        "gemm_fp8": load_gemm_table(system, "fp8"),
        "attention_bf16": load_attention_table(system, "bf16"),
        "attention_fp8": load_attention_table(system, "fp8"),
        "decode_attention_bf16": load_decode_attention_table(system, "bf16"),
        "decode_attention_fp8kv": load_decode_attention_table(system, "fp8"),
        "nccl": load_nccl_table(system),
    }
    stamps = {k: dict(t.stamp, source=t.source) for k, t in tables.items() if t is not None}
    devices = sorted({s["device"] for s in stamps.values() if s.get("device")})
    return {"package": _PACKAGE, "package_version": AIC_VERSION,
            "system": os.path.basename(sdir),
            "device": devices[0] if len(devices) == 1 else devices,
            "data_root": _data_root(), "tables": stamps}
