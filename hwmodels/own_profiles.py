"""Reader for the kernel profiles that `clusterplan validate profile` measures (our own schema,
documented in validation/data/profiles/README.md); numpy only.

A profile is a folder: `meta.json` (device, driver, library versions, CPU model, threads, date)
and CSV tables, every time in seconds, every size in bytes or elements:

    gemm.csv          dtype,bias,m,n,k,time_s                 F.linear(x[m,k], W[n,k], bias?)
    attention.csv     dtype,kind,batch,heads,kv_heads,head_dim,seq_q,seq_kv,fwd_s,bwd_s
                      kind = prefill (causal, seq_q = seq_kv) | decode (seq_q = 1, no mask)
    elementwise.csv   dtype,op,rows,cols,fwd_s,bwd_s          one row per op and shape
    memory.csv        dtype,bytes,time_s                      tensor copy; bytes = read + written
    overhead.csv      name,time_s                             framework costs per call
    collectives.csv   backend,op,ranks,bytes,time_s           bytes: the full buffer (nccl-tests)

The tables answer the same queries as the aiconfigurator-core adapter (`hwmodels.profiles`):
`GemmTable.time_s(m, n, k)`, `AttentionTable.time_s(batch, seq, heads, kv_heads, head_dim)`,
`DecodeAttentionTable.time_s(batch, kv_len, heads, kv_heads, head_dim)`, plus the element-wise,
copy and collective tables the harness needs. Kernel tables interpolate the achieved rate
(FLOP/s, elements/s, bytes/s) multilinearly in log2 of the coordinates; a coordinate outside the
measured range is clamped to the range (the rate at the edge is held). Missing grid points (the
quick profile skips the largest GEMMs) are filled along one axis at a time from the same line's
measured neighbours, the edge value beyond them, as `hwmodels.profiles` does. Repeated rows take
the median.
"""
from __future__ import annotations

import csv
import functools
import itertools
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from hwmodels.devices import Device
from hwmodels.errors import InputError
from hwmodels.profiles import _fill_axis

SCHEMA = "clusterplan-profile/1"
TABLES = ("gemm.csv", "attention.csv", "elementwise.csv", "memory.csv", "overhead.csv",
          "collectives.csv")


# ---- grids -----------------------------------------------------------------------------------
class ClampedLogGrid:
    """log2(value) on a regular grid of coordinates, interpolated multilinearly in log2 of the
    coordinates; coordinates are clamped into the measured range."""

    def __init__(self, coords: list, values, fill_order: list[int] | None = None):
        axes, idx = [], []
        for c in coords:
            a, inv = np.unique(np.asarray(c, dtype=float), return_inverse=True)
            axes.append(a)
            idx.append(inv)
        shape = tuple(len(a) for a in axes)
        flat = np.ravel_multi_index(tuple(idx), shape)
        vals = np.log2(np.maximum(np.asarray(values, dtype=float), 1e-30))
        grid = np.full(int(np.prod(shape)), np.nan)
        for u in np.unique(flat):
            grid[u] = float(np.median(vals[flat == u]))
        grid = grid.reshape(shape)
        self.axes = axes
        self._log = [np.log2(a) for a in axes]
        self.measured = int(np.count_nonzero(~np.isnan(grid)))
        order = fill_order if fill_order is not None else list(range(len(axes)))[::-1]
        for _ in range(len(axes) + 1):
            if not np.isnan(grid).any():
                break
            for ax in order:
                grid = _fill_axis(grid, ax, self._log[ax])
        self.values = grid
        self._corners = list(itertools.product((0, 1), repeat=len(axes)))

    def __call__(self, *point: float) -> float:
        locs = []
        for lg, x in zip(self._log, point):
            lx = math.log2(max(float(x), 1e-300))
            if len(lg) == 1 or lx <= lg[0]:
                locs.append((0, 0, 0.0) if lx <= lg[0] else (len(lg) - 1, len(lg) - 1, 0.0))
                continue
            if lx >= lg[-1]:
                locs.append((len(lg) - 1, len(lg) - 1, 0.0))
                continue
            i = int(np.searchsorted(lg, lx, side="right")) - 1
            locs.append((i, i + 1, (lx - lg[i]) / (lg[i + 1] - lg[i])))
        total = 0.0
        for corner in self._corners:
            w, ix = 1.0, []
            for (i0, i1, t), c in zip(locs, corner):
                w *= t if c else 1.0 - t
                ix.append(i1 if c else i0)
            if w:
                total += w * self.values[tuple(ix)]
        return 2.0 ** total


# ---- tables ----------------------------------------------------------------------------------
@dataclass(eq=False)
class GemmTable:
    """Measured F.linear GEMMs C[m,n] = A[m,k]·B[k,n] (the same fields as profiles.GemmTable)."""
    dtype: str
    source: str
    grid: ClampedLogGrid = field(repr=False)

    def __post_init__(self):
        self.m, self.n, self.k = self.grid.axes
        self.time_s = functools.lru_cache(maxsize=1 << 16)(self._time_s)

    def _time_s(self, m: int, n: int, k: int) -> float | None:
        if min(m, n, k) <= 0:
            return 0.0
        return 2.0 * m * n * k / self.grid(m, n, k)

    def peak_achieved(self) -> float:
        return float(2.0 ** np.nanmax(self.grid.values))


@dataclass(eq=False)
class AttentionTable:
    """Causal SDPA forward (and backward) on (batch·heads, seq, head_dim); FLOPs of the causal
    forward = 2·batch·seq²·heads·head_dim, backward rate measured separately."""
    dtype: str
    source: str
    fwd: ClampedLogGrid = field(repr=False)
    bwd: ClampedLogGrid | None = field(default=None, repr=False)

    @staticmethod
    def _flops(batch, seq, heads, head_dim):
        return 2.0 * batch * seq * seq * heads * head_dim

    def time_s(self, batch: int, seq: int, num_heads: int, num_kv_heads: int, head_dim: int) -> float:
        return self._flops(batch, seq, num_heads, head_dim) / self.fwd(batch * num_heads, seq, head_dim)

    def bwd_s(self, batch: int, seq: int, num_heads: int, num_kv_heads: int, head_dim: int) -> float | None:
        if self.bwd is None:
            return None
        return self._flops(batch, seq, num_heads, head_dim) / self.bwd(batch * num_heads, seq, head_dim)


@dataclass(eq=False)
class DecodeAttentionTable:
    """SDPA of one new token per sequence over kv_len cached positions: the achieved KV read
    rate (bytes/s, KV bytes = 2·batch·kv_len·kv_heads·head_dim·elem) on (batch·heads, kv_len,
    head_dim)."""
    dtype: str
    source: str
    elem_bytes: float
    grid: ClampedLogGrid = field(repr=False)

    def time_s(self, batch: int, kv_len: int, num_heads: int, num_kv_heads: int, head_dim: int) -> float:
        kv = 2.0 * batch * kv_len * num_kv_heads * head_dim * self.elem_bytes
        return kv / self.grid(batch * num_heads, kv_len, head_dim)


@dataclass(eq=False)
class ElementwiseTable:
    """Per op and phase: elements/s on (rows, cols)."""
    dtype: str
    source: str
    grids: dict = field(repr=False)  # (op, phase) -> ClampedLogGrid

    def ops(self) -> list[str]:
        return sorted({op for op, _ in self.grids})

    def time_s(self, op: str, rows: int, cols: int, phase: str = "fwd") -> float:
        grid = self.grids.get((op, phase))
        if grid is None:
            raise InputError(f"profile {self.source!r} has no {phase} measurement of element-wise "
                             f"op {op!r}; measured: {', '.join(self.ops())} (re-run validate profile)")
        if rows <= 0 or cols <= 0:
            return 0.0
        return rows * cols / grid(rows, cols)


@dataclass(eq=False)
class MemoryTable:
    """Tensor copies: seconds against bytes moved (read + written), log-log interpolation; below
    the smallest size the smallest's time (a per-kernel floor), above the largest its rate."""
    dtype: str
    source: str
    sizes: np.ndarray
    times: np.ndarray

    def __post_init__(self):
        self._ls, self._lt = np.log2(self.sizes), np.log2(self.times)

    @property
    def bandwidth(self) -> float:
        """Bytes/s of the largest copy (the streaming rate out of the last cache level)."""
        return float(self.sizes[-1] / self.times[-1])

    @property
    def peak_bandwidth(self) -> float:
        return float(np.max(self.sizes / self.times))

    def time_s(self, nbytes: float) -> float:
        if nbytes <= 0:
            return 0.0
        x = math.log2(nbytes)
        if x <= self._ls[0]:
            return float(self.times[0])
        if x >= self._ls[-1]:
            return float(self.times[-1] * nbytes / self.sizes[-1])
        return float(2.0 ** np.interp(x, self._ls, self._lt))


@dataclass(eq=False)
class CollectiveTable:
    """Measured collectives of one backend; α-β fit per (op, ranks)."""
    backend: str
    source: str
    points: dict = field(repr=False)  # (op, ranks) -> (bytes array, seconds array)

    def __post_init__(self):
        self.alpha_beta = functools.cache(self._alpha_beta)

    def _alpha_beta(self, op: str, ranks: int) -> tuple[float, float]:
        """(α seconds, β seconds per byte): least squares of t = α + β·bytes weighted by 1/t
        (relative error), so that small and large messages count alike."""
        pts = self.points.get((op, int(ranks)))
        if pts is None:
            have = ", ".join(f"{o}@{r}" for o, r in sorted(self.points))
            raise InputError(f"profile has no {self.backend} {op} on {ranks} ranks; measured: {have}")
        x, t = pts
        w = 1.0 / t
        A = np.stack([np.ones_like(x), x], axis=1) * w[:, None]
        (alpha, beta), *_ = np.linalg.lstsq(A, t * w, rcond=None)
        return max(float(alpha), 0.0), max(float(beta), 0.0)

    def time_s(self, op: str, ranks: int, nbytes: float) -> float:
        if ranks <= 1 or nbytes <= 0:
            return 0.0
        a, b = self.alpha_beta(op, ranks)
        return a + b * nbytes


# ---- the profile -----------------------------------------------------------------------------
class Profile:
    """One measured profile folder."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        meta_path = os.path.join(self.path, "meta.json")
        if not os.path.isfile(meta_path):
            raise InputError(f"profile {path!r}: no meta.json there (make one with "
                             f"`clusterplan validate profile --out {path}`)")
        try:
            with open(meta_path) as f:
                self.meta = json.load(f)
        except (OSError, ValueError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError
            raise InputError(f"profile {path!r}: meta.json is unreadable ({e})") from None
        if not isinstance(self.meta, dict):
            raise InputError(f"profile {path!r}: meta.json is not a JSON object")
        if self.meta.get("schema") != SCHEMA:
            raise InputError(f"profile {path!r}: schema {self.meta.get('schema')!r}, expected {SCHEMA!r}")
        _check_meta(self.meta, f"profile {path!r}: meta.json")
        self.source = f"{os.path.basename(self.path)} ({self.meta.get('device_name', '?')}, " \
                      f"{self.meta.get('date', '?')})"
        self._rows = {t: _read_csv(os.path.join(self.path, t), path) for t in TABLES}

    @property
    def dtypes(self) -> list[str]:
        return list(self.meta.get("dtypes", []))

    @property
    def threads(self) -> int | None:
        return self.meta.get("threads")

    def _check_dtype(self, dtype: str):
        if dtype not in self.dtypes:
            raise InputError(f"profile {self.path!r} measured dtypes {', '.join(self.dtypes)}, "
                             f"not {dtype!r}")

    @functools.cache
    def gemm(self, dtype: str, bias: bool = False) -> GemmTable:
        """The GEMM table (plain, or with the bias added in the GEMM when `bias`)."""
        self._check_dtype(dtype)
        rows = [r for r in self._rows["gemm.csv"] if r["dtype"] == dtype
                and int(r.get("bias") or 0) == int(bias)]
        if not rows:
            raise InputError(f"profile {self.path!r}: gemm.csv has no {dtype} rows")
        m, n, k, t = (np.array([float(r[c]) for r in rows]) for c in ("m", "n", "k", "time_s"))
        return GemmTable(dtype, self.source, ClampedLogGrid([m, n, k], 2 * m * n * k / t, [2, 1, 0]))

    @functools.cache
    def attention(self, dtype: str) -> AttentionTable | None:
        rows = [r for r in self._rows["attention.csv"] if r["dtype"] == dtype and r["kind"] == "prefill"]
        if not rows:
            return None
        b, h, d, s = (np.array([float(r[c]) for r in rows]) for c in ("batch", "heads", "head_dim", "seq_q"))
        flops = 2.0 * b * s * s * h * d
        fwd = ClampedLogGrid([b * h, s, d], flops / np.array([float(r["fwd_s"]) for r in rows]))
        bw = [r for r in rows if r["bwd_s"] not in ("", None)]
        bwd = None
        if len(bw) == len(rows):
            bwd = ClampedLogGrid([b * h, s, d], flops / np.array([float(r["bwd_s"]) for r in rows]))
        return AttentionTable(dtype, self.source, fwd, bwd)

    @functools.cache
    def decode_attention(self, dtype: str) -> DecodeAttentionTable | None:
        rows = [r for r in self._rows["attention.csv"] if r["dtype"] == dtype and r["kind"] == "decode"]
        if not rows:
            return None
        b, h, kvh, d, L, t = (np.array([float(r[c]) for r in rows]) for c in
                              ("batch", "heads", "kv_heads", "head_dim", "seq_kv", "fwd_s"))
        elem = _ELEM_BYTES[dtype]
        rate = 2.0 * b * L * kvh * d * elem / t
        return DecodeAttentionTable(dtype, self.source, elem, ClampedLogGrid([b * h, L, d], rate))

    @functools.cache
    def elementwise(self, dtype: str) -> ElementwiseTable:
        self._check_dtype(dtype)
        by_key: dict = {}
        for r in self._rows["elementwise.csv"]:
            if r["dtype"] != dtype:
                continue
            for phase in ("fwd", "bwd"):
                v = r.get(f"{phase}_s")
                if v not in ("", None):
                    by_key.setdefault((r["op"], phase), []).append((float(r["rows"]), float(r["cols"]), float(v)))
        grids = {}
        for key, pts in by_key.items():
            a = np.array(pts)
            # a backward measured as (fwd+bwd) − fwd − call can round to 0: floor at 100 ns
            grids[key] = ClampedLogGrid([a[:, 0], a[:, 1]], a[:, 0] * a[:, 1] / np.maximum(a[:, 2], 1e-7))
        return ElementwiseTable(dtype, self.source, grids)

    @functools.cache
    def memory(self, dtype: str | None = None) -> MemoryTable:
        rows = self._rows["memory.csv"]
        if dtype is not None and any(r["dtype"] == dtype for r in rows):
            rows = [r for r in rows if r["dtype"] == dtype]
        if not rows:
            raise InputError(f"profile {self.path!r}: memory.csv is empty")
        pts: dict = {}
        for r in rows:
            pts.setdefault(float(r["bytes"]), []).append(float(r["time_s"]))
        sizes = np.array(sorted(pts))
        times = np.array([float(np.median(pts[s])) for s in sizes])
        return MemoryTable(dtype or rows[0]["dtype"], self.source, sizes, times)

    @functools.cache
    def overhead(self) -> dict:
        return {r["name"]: float(r["time_s"]) for r in self._rows["overhead.csv"]}

    @functools.cache
    def collectives(self, backend: str | None = None) -> CollectiveTable | None:
        rows = self._rows["collectives.csv"]
        if backend is not None:
            rows = [r for r in rows if r["backend"] == backend]
        if not rows:
            return None
        backend = rows[0]["backend"]
        pts: dict = {}
        for r in rows:
            pts.setdefault((r["op"], int(r["ranks"])), []).append((float(r["bytes"]), float(r["time_s"])))
        points = {k: (np.array([p[0] for p in v]), np.array([p[1] for p in v])) for k, v in pts.items()}
        return CollectiveTable(backend, self.source, points)

    def device(self, dtype: str) -> Device:
        """A catalog-like Device for the profiled machine (peak = best measured GEMM rate)."""
        mem = self.memory(dtype)
        return Device(
            name=str(self.meta.get("device_name", "profiled-device")),
            vendor=str(self.meta.get("vendor", "")), kind=str(self.meta.get("device", "cpu")),
            peak_flops={dtype: self.gemm(dtype).peak_achieved()},
            hbm_bytes=float(self.meta.get("memory_bytes") or 0) or None,
            hbm_bytes_per_s=mem.bandwidth, scale_up="local processes",
            scale_up_bytes_per_s=None, power_w=None, price_per_hour=None, kernel_profile=None,
            efficiency_from=None, sources={"all": f"measured: {self.source}"})


_ELEM_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2}


# Columns of each table (README.md): "str", "int" (an integer >= 0), "pos" (a number > 0),
# "nonneg" (a number >= 0), "num" (a finite number); "?" allows an empty cell.
COLUMNS = {
    "gemm.csv": {"dtype": "str", "bias": "int?", "m": "pos", "n": "pos", "k": "pos", "time_s": "pos"},
    "attention.csv": {"dtype": "str", "kind": "str", "batch": "pos", "heads": "pos", "kv_heads": "pos",
                      "head_dim": "pos", "seq_q": "pos", "seq_kv": "pos", "fwd_s": "pos", "bwd_s": "pos?"},
    # a backward measured as (fwd+bwd) − fwd − call can round to 0 or below; the reader floors it
    "elementwise.csv": {"dtype": "str", "op": "str", "rows": "pos", "cols": "pos", "fwd_s": "num?", "bwd_s": "num?"},
    "memory.csv": {"dtype": "str", "bytes": "pos", "time_s": "pos"},
    "overhead.csv": {"name": "str", "time_s": "nonneg"},
    "collectives.csv": {"backend": "str", "op": "str", "ranks": "int", "bytes": "pos", "time_s": "pos"},
}


def _check_meta(meta: dict, where: str) -> None:
    """Types of the meta.json keys the reader uses (one-line InputError naming the key)."""
    dtypes = meta.get("dtypes", [])
    if not isinstance(dtypes, list) or not all(isinstance(d, str) for d in dtypes):
        raise InputError(f"{where}: dtypes={dtypes!r} must be a list of dtype names")
    for key in ("threads", "memory_bytes"):
        v = meta.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0):
            raise InputError(f"{where}: {key}={v!r} must be a number >= 0")


def _read_csv(path: str, where: str) -> list[dict]:
    """Rows of one table, numbers converted (float; int for "int" columns) and checked."""
    if not os.path.isfile(path):
        return []
    name = os.path.basename(path)
    return read_typed_csv(path, COLUMNS.get(name, {}), f"profile {where!r}: {name}")


def read_typed_csv(path: str, cols: dict, label: str) -> list[dict]:
    """The rows of a CSV whose columns `cols` maps to kinds (`table_cell`; a kind ending in "?"
    may be absent), every cell converted; a one-line InputError, prefixed `label`, names an
    unreadable file, a missing column or the bad cell's line and column."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows, header = list(reader), reader.fieldnames or []
    except (OSError, csv.Error, ValueError) as e:  # ValueError: UnicodeDecodeError
        raise InputError(f"{label} is unreadable ({e})") from None
    if not rows:
        return []
    missing = [c for c, kind in cols.items() if c not in header and not kind.endswith("?")]
    if missing:
        raise InputError(f"{label} has no column {missing[0]!r}; columns: {', '.join(cols)}")
    for line, r in enumerate(rows, start=2):
        for c, kind in cols.items():
            r[c] = table_cell(r.get(c), kind, f"{label} line {line}: {c}")
    return rows


def table_cell(value, kind: str, what: str):
    """One CSV cell checked against its column kind (COLUMNS): a float (int for "int"), the text
    for "str", "" for an empty optional cell; else a one-line InputError naming `what`."""
    optional, kind = kind.endswith("?"), kind.rstrip("?")
    if value is None or (isinstance(value, str) and not value.strip()):
        if optional:
            return ""
        raise InputError(f"{what} is missing")
    if kind == "str":
        return value
    try:
        v = float(value)
    except ValueError:
        raise InputError(f"{what}={value!r} is not a number") from None
    if not math.isfinite(v) or (kind == "pos" and v <= 0) or (kind == "nonneg" and v < 0) \
            or (kind == "int" and (v < 0 or not v.is_integer())):
        need = {"pos": "a number > 0", "nonneg": "a number >= 0", "int": "an integer >= 0",
                "num": "a finite number"}[kind]
        raise InputError(f"{what}={value!r} must be {need}")
    return int(v) if kind == "int" else v


@functools.lru_cache(maxsize=16)
def _load(path: str, mtime: float) -> Profile:
    return Profile(path)


def load_profile(path) -> Profile:
    """The profile in folder `path` (cached while its meta.json is unchanged)."""
    p = os.path.abspath(str(path))
    meta = os.path.join(p, "meta.json")
    if not os.path.isdir(p):
        raise InputError(f"profile {str(path)!r} is not a folder (make one with `clusterplan "
                         f"validate profile --out {path}`)")
    return _load(p, os.path.getmtime(meta) if os.path.exists(meta) else 0.0)
