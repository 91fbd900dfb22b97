"""hwmodels.profiles: the adapter over aiconfigurator-core's measured kernel tables."""
import importlib.util
import math
import os

import numpy as np
import pytest

pytest.importorskip("aiconfigurator_core")
pd = pytest.importorskip("pandas")

from hwmodels import profiles  # noqa: E402
from hwmodels.errors import InputError  # noqa: E402

DENSE_BF16_PEAK = {"a100_sxm": 312e12, "h100_sxm": 989e12}


def _parquet(stamp: dict):
    """The parquet file a table was built from (stamp paths are relative to the package)."""
    root = list(importlib.util.find_spec("aiconfigurator_core").submodule_search_locations)[0]
    return pd.read_parquet(os.path.join(root, stamp["path"]))


def _gemm_rows(table):
    df = _parquet(table.stamp)
    return df[(df.gemm_dtype == table.stamp["gemm_dtype"])
              & (df.kernel_source == table.stamp["kernel_source"])]


@pytest.fixture(scope="module", autouse=True)
def _pinned_package():
    if not profiles.aiconfigurator_systems():  # another version installed: tables disabled
        pytest.skip(f"aiconfigurator-core {profiles.AIC_VERSION} not installed")


# ---- discovery and errors --------------------------------------------------------------------
def test_systems_listed():
    systems = profiles.aiconfigurator_systems()
    assert {"a100_sxm", "h100_sxm", "h200_sxm", "b200_sxm", "gb200", "l40s"} <= set(systems)


def test_unknown_system_raises_with_suggestion():
    with pytest.raises(InputError, match="did you mean h100_sxm"):
        profiles.load_gemm_table("h100_sxn")
    with pytest.raises(InputError, match="unknown aiconfigurator-core system"):
        profiles.load_nccl_table("tpu_v5p")


def test_dashes_accepted_and_empty_systems_return_none():
    assert profiles.load_gemm_table("h100-sxm") is not None
    # a100_pcie ships only a placeholder folder in 0.12.0: absent data is None, never an error
    for load in (profiles.load_gemm_table, profiles.load_attention_table,
                 profiles.load_decode_attention_table):
        assert load("a100_pcie") is None
    assert profiles.load_nccl_table("a100_pcie") is None


def test_absent_dtype_returns_none():
    assert profiles.load_gemm_table("a100_sxm", "fp8") is None  # no fp8 on Ampere
    assert profiles.load_gemm_table("h100_sxm", "fp4") is None


# ---- GEMM ------------------------------------------------------------------------------------
def test_a100_gemm_8192_matches_measured_row():
    table = profiles.load_gemm_table("a100_sxm", "bf16")
    rows = _gemm_rows(table)
    row = rows[(rows.m == 8192) & (rows.n == 8192) & (rows.k == 8192)]
    assert len(row) == 1
    measured_s = float(row.latency.iloc[0]) * 1e-3  # latency column is milliseconds
    assert table.time_s(8192, 8192, 8192) == pytest.approx(measured_s, rel=0.03)
    assert table.source.startswith("aiconfigurator-core 0.12.0 a100_sxm/gemm/")


def test_gemm_between_grid_nodes_lies_between_neighbours():
    table = profiles.load_gemm_table("h100_sxm", "bf16")
    ks = [int(k) for k in table.k]
    i = next(j for j in range(len(ks) - 1) if ks[j] <= 6000 < ks[j + 1])
    k0, k1 = ks[i], ks[i + 1]
    k = (k0 + k1) // 2
    t0, t1, t = (table.time_s(4096, 8192, kk) for kk in (k0, k1, k))
    assert min(t0, t1) <= t <= max(t0, t1)
    ms = [int(m) for m in table.m]
    j = next(j for j in range(len(ms) - 1) if ms[j + 1] - ms[j] > 2 and ms[j] >= 256)
    m = (ms[j] + ms[j + 1]) // 2
    t0, t1, t = (table.time_s(mm, 4096, 4096) for mm in (ms[j], ms[j + 1], m))
    # time = 2mnk / rate with the rate linear between the nodes: bounded by the neighbours'
    # times scaled to this m
    assert min(t0, t1) * m / ms[j + 1] <= t <= max(t0, t1) * m / ms[j]


@pytest.mark.parametrize("system", sorted(DENSE_BF16_PEAK))
def test_gemm_rate_never_exceeds_dense_peak(system):
    table = profiles.load_gemm_table(system, "bf16")
    assert table.flops_per_s.shape == (len(table.m), len(table.n), len(table.k))
    assert not np.isnan(table.flops_per_s).any()  # every grid point filled
    assert table.flops_per_s.max() <= 1.05 * DENSE_BF16_PEAK[system]
    assert table.peak_achieved() <= 1.05 * DENSE_BF16_PEAK[system]
    assert table.peak_achieved() > 0.7 * DENSE_BF16_PEAK[system]  # the unit is ms, not µs or s


def test_gemm_edges():
    table = profiles.load_gemm_table("h100_sxm", "bf16")
    assert table.time_s(1, 16, 4096) is None  # n below the grid: caller uses its roofline
    assert table.time_s(0, 4096, 4096) is None
    big = table.time_s(2 * int(table.m[-1]), int(table.n[-1]), int(table.k[-1]))
    edge = table.time_s(int(table.m[-1]), int(table.n[-1]), int(table.k[-1]))
    assert big == pytest.approx(2 * edge)  # beyond the grid the rate is held at the edge


def test_fp16_reuses_bf16_and_says_so():
    bf16 = profiles.load_gemm_table("h100_sxm", "bf16")
    fp16 = profiles.load_gemm_table("h100_sxm", "fp16")
    assert "fp16 served by the bf16 table" in fp16.source
    assert fp16.time_s(4096, 4096, 4096) == bf16.time_s(4096, 4096, 4096)


def test_fp8_faster_than_bf16_on_big_gemm():
    bf16 = profiles.load_gemm_table("h100_sxm", "bf16")
    fp8 = profiles.load_gemm_table("h100_sxm", "fp8")
    assert fp8.stamp["gemm_dtype"] == "fp8"
    assert fp8.time_s(8192, 8192, 8192) < bf16.time_s(8192, 8192, 8192)
    assert fp8.peak_achieved() <= 1.05 * 1979e12


# ---- attention -------------------------------------------------------------------------------
def _nearest_row(df, **want):
    dist = sum(np.abs(np.log2(df[c].astype(float)) - math.log2(v)) for c, v in want.items())
    return df.loc[dist.idxmin()]


def test_h100_context_attention_matches_measured_row():
    table = profiles.load_attention_table("h100_sxm", "bf16")
    st = table.stamp
    df = _parquet(st)
    df = df[(df.kernel_source == st["kernel_source"][128]) & (df.attn_dtype == st["attn_dtype"])
            & (df.kv_cache_dtype == st["kv_cache_dtype"]) & (df.head_dim == 128)]
    if "window_size" in df.columns:
        df = df[df.window_size == 0]
    row = _nearest_row(df, batch_size=1, isl=4096, num_heads=32, num_key_value_heads=8)
    b, s, h, kv = (int(row[c]) for c in ("batch_size", "isl", "num_heads", "num_key_value_heads"))
    t = table.time_s(b, s, h, kv, 128)
    assert t == pytest.approx(float(row.latency) * 1e-3, rel=0.03)
    assert table.time_s(1, 4096, 32, 8, 96) is None  # head_dim not measured
    # achieved rate is below the dense peak everywhere
    for grid in table.grids.values():
        assert np.nanmax(grid.values) <= 1.05 * DENSE_BF16_PEAK["h100_sxm"]


def test_context_attention_scales_with_work():
    table = profiles.load_attention_table("h100_sxm", "bf16")
    t1 = table.time_s(1, 8192, 32, 8, 128)
    t2 = table.time_s(1, 16384, 32, 8, 128)
    assert 2.0 < t2 / t1 < 5.0  # causal: 4x the FLOPs at a similar rate
    assert table.time_s(1, 3000, 32, 8, 128) < table.time_s(1, 4096, 32, 8, 128)


def test_decode_attention_matches_measured_row():
    table = profiles.load_decode_attention_table("h100_sxm", "bf16")
    st = table.stamp
    df = _parquet(st)
    df = df[(df.kernel_source == st["kernel_source"][128]) & (df.attn_dtype == st["attn_dtype"])
            & (df.kv_cache_dtype == st["kv_cache_dtype"]) & (df.head_dim == 128)
            & (df.batch_size == 64) & (df.num_heads == 32) & (df.num_key_value_heads == 8)]
    if "window_size" in df.columns:
        df = df[df.window_size == 0]
    row = df[df.isl + df.step == 4096]  # kv_len = isl (1) + step
    assert len(row) == 1
    assert table.time_s(64, 4096, 32, 8, 128) == pytest.approx(float(row.latency.iloc[0]) * 1e-3,
                                                               rel=0.03)
    assert table.time_s(64, 8192, 32, 8, 128) > table.time_s(64, 4096, 32, 8, 128)


# ---- NCCL ------------------------------------------------------------------------------------
def test_nccl_all_reduce_reproduces_rows_exactly():
    table = profiles.load_nccl_table("a100_sxm")
    pts = [p for p in table.points("all_reduce") if p[0] == 8]
    assert len(pts) >= 10
    for n, size, sec in pts:
        assert table.time_s("all_reduce", n, size) == pytest.approx(sec, rel=1e-9)


def test_nccl_repeated_rows_are_averaged():
    table = profiles.load_nccl_table("h100_sxm")  # the pinned 2.27.3 file holds two runs
    by_size = {}
    for n, size, sec in table.points("all_reduce"):
        if n == 8:
            by_size.setdefault(size, []).append(sec)
    size, secs = max(by_size.items())
    assert min(secs) <= table.time_s("all_reduce", 8, size) <= max(secs)


def test_nccl_units_and_interpolation():
    table = profiles.load_nccl_table("h100_sxm")
    pts = sorted((s, t) for n, s, t in table.points("all_reduce") if n == 8)
    size, sec = pts[-1]
    busbw = size / sec * 2 * 7 / 8
    assert 300e9 < busbw < 480e9  # message_size is fp16 elements: bytes = 2 × message_size
    (s0, t0), (s1, t1) = pts[10], pts[12]
    mid = math.sqrt(s0 * s1)
    assert t0 <= table.time_s("allreduce", 8, mid) <= t1
    assert table.time_s("all-to-all", 8, 1 << 20) is not None  # names normalised
    assert table.time_s("all_reduce", 6, 1 << 20) is None  # GPU count not measured
    beyond = table.time_s("all_reduce", 8, 2 * size)  # above the largest size: its bandwidth
    assert beyond == pytest.approx(2 * table.time_s("all_reduce", 8, size))
    with pytest.raises(InputError):
        table.time_s("all_shuffle", 8, 1024)


# ---- provenance ------------------------------------------------------------------------------
def test_table_stamp():
    st = profiles.table_stamp("h100_sxm")
    assert st["package"] == "aiconfigurator-core" and st["package_version"] == "0.12.0"
    assert st["device"] == "NVIDIA H100 80GB HBM3"
    gemm = st["tables"]["gemm_bf16"]
    assert {"framework", "framework_version", "kernel_source", "path", "source"} <= set(gemm)
    assert gemm["path"].endswith("gemm_perf.parquet")
    assert st["tables"]["nccl"]["library_version"] == "2.27.3"


def test_custom_allreduce_table_is_the_engines_kernel():
    from hwmodels.profiles import load_custom_allreduce_table
    t = load_custom_allreduce_table("h100_sxm", "vllm")
    assert t is not None and "custom all-reduce" in t.source
    ls, lt = t.curves[8]
    first, last = 2.0 ** ls[0], 2.0 ** ls[-1]
    assert t.time_s(8, first) == pytest.approx(2.0 ** lt[0])
    assert t.time_s(8, last) == pytest.approx(2.0 ** lt[-1])
    assert t.time_s(8, first / 4) == pytest.approx(2.0 ** lt[0])  # latency floor
    assert t.time_s(8, last * 2) is None  # beyond the measured range engines use NCCL
    assert t.time_s(3, first) is None
    mid = t.time_s(8, (first * last) ** 0.5)
    assert 2.0 ** min(lt) <= mid <= 2.0 ** max(lt)
    assert load_custom_allreduce_table("h100_sxm", "no-such-engine") is None


# ---- fused MoE -------------------------------------------------------------------------------
def _moe_rows(system: str, framework: str, version: str):
    root = list(importlib.util.find_spec("aiconfigurator_core").submodule_search_locations)[0]
    return pd.read_parquet(os.path.join(root, "systems", "data", system, "moe", framework, version,
                                        "moe_perf.parquet"))


def test_fused_moe_table_reads_the_measured_curve():
    t = profiles.load_moe_table("h100_sxm", "vllm")
    assert t is not None and "fused MoE" in t.source
    key = ("bfloat16", 4096, 1536, 8, 128, 1, 8, "balanced")  # Qwen3-235B-A22B experts, ep 8
    assert t.covers(*key)
    df = _moe_rows("h100_sxm", "vllm", t.curves[key][2])
    sel = df[(df.moe_dtype == "bfloat16") & (df.hidden_size == 4096) & (df.inter_size == 1536)
             & (df.topk == 8) & (df.num_experts == 128) & (df.moe_tp_size == 1) & (df.moe_ep_size == 8)
             & (df.distribution == "balanced")]
    lat = sel.groupby("num_tokens")["latency"].mean()
    for n in (1, 64, 8192):  # measured points: the measured latency (ms -> s)
        assert t.time_s(n, *key) == pytest.approx(lat[n] * 1e-3, rel=1e-9)
    lo, hi = t.time_s(4096, *key), t.time_s(8192, *key)
    assert lo < t.time_s(6000, *key) < hi  # between points: log-log interpolation
    top = int(lat.index.max())
    # beyond the largest measured count: that point's time per token (compute-bound)
    assert t.time_s(2 * top, *key) == pytest.approx(2 * lat[top] * 1e-3, rel=1e-9)
    assert t.time_s(0.5, *key) == pytest.approx(lat[1] * 1e-3, rel=1e-9)  # launch floor
    # an imbalanced batch's straggler rank is slower at large batches
    assert t.time_s(8192, *key[:-1], "power_law_1.01") > 1.2 * hi
    # a shape the collector never ran: None (the caller keeps its grouped-GEMM model)
    assert t.time_s(64, "bfloat16", 4096, 1536, 8, 128, 2, 4, "balanced") is None
    assert profiles.load_moe_table("h100_sxm", "no-such-engine") is None
