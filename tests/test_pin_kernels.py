"""Pin tests for hwmodels.kernels (written from surviving mutants): each states a kernel-time
behaviour and the measurement or publication it comes from."""
from __future__ import annotations

from dataclasses import replace

import pytest

from hwmodels.devices import get_device
from hwmodels.kernels import KernelModel, kernel_model

GIB = 2 ** 30


def _best_grid_rate(km: KernelModel) -> float:
    """Best FLOP/s the model gives over the measured GEMM table's grid nodes."""
    g = km._gemm
    best = 0.0
    for m in g.m[-24:]:
        for n in g.n:
            for k in g.k:
                best = max(best, 2.0 * m * n * k / km.gemm_s(int(m), int(n), int(k)))
    return best


# ---- sustained clocks: MAMF (stas00/ml-engineering table, hwmodels/data/gemm_sustained.yaml) ---
@pytest.mark.parametrize("device,dtype,mamf", [("a100-sxm-80g", "bf16", 271.2e12),
                                               ("h100-sxm", "bf16", 794.5e12),
                                               ("h100-sxm", "fp8", 1402.6e12),
                                               ("b300", "bf16", 1769.0e12)])
def test_best_measured_gemm_runs_at_the_mamf_sustained_rate(device, dtype, mamf):
    """The burst-timed tables are scaled so that their best shape runs at the published
    'Maximum Achievable Matmul FLOPS' of the device, not at the 93-97% of peak a burst reaches."""
    assert _best_grid_rate(kernel_model(device, dtype)) == pytest.approx(mamf, rel=1e-3)


def test_mamf_of_another_dtype_carries_over_as_a_fraction_of_peak():
    """H200 has a MAMF figure for fp8 only (1453.4 TFLOP/s): its bf16 tables run at the same
    fraction of the bf16 peak (clock behaviour is the device's, not the dtype's)."""
    h200 = get_device("h200")
    expected = 1453.4e12 / h200.peak("fp8") * h200.peak("bf16")
    assert _best_grid_rate(kernel_model("h200", "bf16")) == pytest.approx(expected, rel=1e-3)


def test_device_without_a_mamf_figure_keeps_its_measured_tables():
    """No MAMF row for L40S nor for its GPU elsewhere: its tables are used as measured (factor 1,
    no note)."""
    km = kernel_model("l40s", "bf16")
    assert km.sustained_factor == 1.0
    assert not any("sustained" in n for n in km.notes)


def test_a_gpu_without_mamf_rows_borrows_those_of_its_silicon_in_another_system():
    """GB300 NVL72 carries the B300 (Blackwell Ultra) GPU: its tables are scaled to B300's
    sustained efficiency, MAMF 1769 of 2250 TFLOP/s bf16 (78.6%), at GB300's own 2500 TFLOP/s."""
    km = kernel_model("gb300", "bf16")
    assert km.sustained_factor < 0.9
    assert _best_grid_rate(km) == pytest.approx(1769.0e12 / 2250e12 * 2500e12, rel=1e-3)


def test_scaled_tables_say_so_in_the_notes():
    km = kernel_model("h100-sxm", "bf16")
    assert any("0.831" in n and "MAMF" in n for n in km.notes)


# ---- borrowed efficiency (docs/modeling.md §1 order of evidence, item 2) -----------------------
def test_borrowed_efficiency_is_the_source_tables_fraction_of_peak():
    """H100 PCIe has no tables and no MAMF figure: a big GEMM reaches the fraction of its own dense
    peak that H100 SXM's measured (aiconfigurator-core) row reaches of 989 TFLOP/s, at the source's
    sustained clock (its MAMF factor σ = 0.831 comes with the borrowed efficiency)."""
    from hwmodels import profiles
    dst = kernel_model("h100-pcie", "bf16")
    s = 8192
    measured = profiles.load_gemm_table("h100_sxm", "bf16").time_s(s, s, s)
    eff_measured = 2 * s ** 3 / measured / 989e12
    sigma = kernel_model("h100-sxm", "bf16").sustained_factor
    assert sigma == pytest.approx(0.831, abs=0.001) and dst.sustained_factor == pytest.approx(sigma)
    assert 2 * s ** 3 / dst.gemm_s(s, s, s) / 756e12 == pytest.approx(eff_measured * sigma, rel=1e-9)
    assert any("carried over from h100-sxm" in n for n in dst.notes)


def test_borrowing_device_with_its_own_mamf_runs_at_it():
    """MI300X borrows H100 SXM's tables but has its own MAMF (668.4 TFLOP/s bf16)."""
    assert _best_grid_rate(kernel_model("mi300x", "bf16")) == pytest.approx(668.4e12, rel=1e-3)


# ---- roofline fallbacks -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bare():
    """A device with no measured kernels and nothing to borrow from: the roofline path."""
    return KernelModel(replace(get_device("h100-sxm"), name="bare-h100", kernel_profile=None,
                               efficiency_from=None), "bf16")


def test_unmeasured_gemm_runs_at_the_a100_mamf_efficiency(bare):
    """Fallback GEMM efficiency 271.2 / 312 = 0.869 (A100 MAMF): an 8k cube at 989 TFLOP/s peak."""
    assert bare.gemm_s(8192, 8192, 8192) == pytest.approx(2 * 8192 ** 3 / (989e12 * 271.2 / 312), rel=2e-3)
    assert any("roofline" in n and "87%" in n and "34%" in n for n in bare.notes)
    assert bare.source == "roofline"


def test_unmeasured_flash_attention_runs_at_fa2_h100_efficiency(bare):
    """FA2 forward, hd128: 335 of 989 TFLOP/s on H100 (flashattention_measured_tflops.csv), plus
    the 3 µs kernel launch; causal self-attention does half the work of the full square."""
    b, s, h, d = 4, 8192, 32, 128
    full = 4.0 * b * s * s * h * d
    t_causal = bare.flash_attention_s(b, s, s, h, 8, d, True)
    t_full = bare.flash_attention_s(b, s, s, h, 8, d, False)
    assert t_full == pytest.approx(full / (989e12 * 0.34) + 3e-6, rel=1e-3)
    assert t_causal == pytest.approx(full / 2 / (989e12 * 0.34) + 3e-6, rel=1e-3)
    # cross-chunk (context parallel): q chunk of s/2 against all s keys, no causal halving
    assert bare.flash_attention_s(b, s // 2, s, h, 8, d, True) == pytest.approx(
        full / 2 / (989e12 * 0.34) + 3e-6, rel=1e-3)


def test_flash_backward_is_two_and_a_half_forwards():
    """FA2 backward: 2.5x the forward FLOPs at the forward's throughput (Dao 2023)."""
    km = kernel_model("h100-sxm", "bf16")
    args = (2, 4096, 4096, 32, 8, 128)
    assert km.flash_attention_bwd_s(*args) == pytest.approx(2.5 * km.flash_attention_s(*args), rel=1e-12)
    args = (2, 2048, 4096, 32, 8, 128, False)
    assert km.flash_attention_bwd_s(*args) == pytest.approx(2.5 * km.flash_attention_s(*args), rel=1e-12)


def test_cross_chunk_attention_costs_its_share_of_the_measured_causal_kernel():
    """A q chunk of s/2 attending to s keys (no mask) does the FLOPs of a causal s x s pass: it
    takes the measured causal kernel's time at length s."""
    km = kernel_model("h100-sxm", "bf16")
    s = 8192
    assert km.flash_attention_s(1, s // 2, s, 32, 8, 128, False) == pytest.approx(
        km.flash_attention_s(1, s, s, 32, 8, 128, True), rel=1e-9)
    # a quarter-length chunk: half of that
    assert km.flash_attention_s(1, s // 4, s, 32, 8, 128, False) == pytest.approx(
        0.5 * km.flash_attention_s(1, s, s, 32, 8, 128, True), rel=1e-9)


# ---- memory-bound kernels: aiconfigurator-core 0.12.0 systems/*.yaml ---------------------------
def test_streaming_kernel_at_80_percent_of_hbm_plus_3_us():
    """mem_bw_empirical_scaling_factor 0.8 and mem_empirical_constant_latency 3 µs: 1 GiB through
    H100 SXM's 3.35 TB/s HBM."""
    km = kernel_model("h100-sxm", "bf16")
    assert km.memory_s(GIB) == pytest.approx(GIB / (0.8 * 3.35e12) + 3e-6, rel=1e-9)
    assert km.memory_s(0) == 0.0
    assert km.memory_s(1) == pytest.approx(3e-6, rel=1e-3)


def test_skinny_gemm_is_bounded_by_streaming_its_operands():
    """A decode GEMV (m=1) must read the whole weight: at least the weight bytes at 80% of HBM plus
    the launch latency, whatever the table says."""
    for name in ("h100-sxm", "a100-sxm-80g"):
        km = kernel_model(name, "bf16")
        n = k = 16384
        floor = 2 * (k + k * n + n) / (0.8 * km.device.hbm_bytes_per_s) + 3e-6
        assert km.gemm_s(1, n, k) >= floor * (1 - 1e-9)
        assert km.gemm_s(1, n, k) < 1.5 * floor  # and memory-bound: near that floor


def test_below_the_grid_a_gemm_is_no_faster_than_the_smallest_measured_shape():
    km = kernel_model("h100-sxm", "bf16")
    m0, n0, k0 = (int(km._gemm.m[0]), int(km._gemm.n[0]), int(km._gemm.k[0]))
    small = km.gemm_s(m0, n0, k0)  # the smallest measured shape
    assert km.gemm_s(1, 1, 1) >= small * (1 - 1e-12)
    assert km.gemm_s(1, 32, 32) == pytest.approx(km.gemm_s(m0, 32, 32), rel=1e-12)
    # the memory floor of the clamped shape: its bytes at the achievable HBM rate plus a launch
    floor = 2 * (m0 * k0 + k0 * n0 + m0 * n0) / km.mem_bytes_per_s + 3e-6
    assert km.gemm_s(1, 1, 1) >= floor * (1 - 1e-12)


def test_empty_gemm_and_batched_gemm():
    km = kernel_model("h100-sxm", "bf16")
    for shape in ((0, 64, 64), (64, 0, 64), (64, 64, 0), (-1, 64, 64)):
        assert km.gemm_s(*shape) == 0.0
    # strided batched GEMM over 32 heads = one GEMM with the batch folded into m
    assert km.bmm_s(32, 512, 128, 512) == km.gemm_s(32 * 512, 128, 512)


def test_bigger_gemms_take_longer_on_the_measured_table():
    km = kernel_model("a100-sxm-80g", "bf16")
    t = [km.gemm_s(s, s, s) for s in (1024, 2048, 4096, 8192, 16384)]
    assert all(b > 4 * a for a, b in zip(t[1:], t[2:]))  # 8x the FLOPs, compute-bound


def test_decode_gemv_on_the_roofline_streams_weights_inputs_and_outputs(bare):
    """Without tables a skinny GEMM is memory-bound: A (m x k), B (k x n) and C (m x n) at 2 bytes
    through 80% of HBM (aiconfigurator scaling factor) plus the 3 µs launch."""
    m, n, k = 64, 4096, 4096
    moved = 2 * (m * k + k * n + m * n)
    assert bare.gemm_s(m, n, k) == pytest.approx(moved / (0.8 * 3.35e12) + 3e-6, rel=1e-9)
    assert bare.gemm_s(1, 16384, 16384) == pytest.approx(
        2 * (16384 + 16384 ** 2 + 16384) / (0.8 * 3.35e12) + 3e-6, rel=1e-9)


def test_measured_devices_are_not_said_to_run_on_the_roofline():
    """Only a device with no tables of its own or borrowed is reported as roofline-costed."""
    for name in ("h100-sxm", "h100-pcie", "a100-sxm-80g"):
        assert not any("roofline" in n for n in kernel_model(name, "bf16").notes), name


def test_storage_bytes_per_element_of_each_format():
    """IEEE fp32 and TF32 (stored in 32 bits) 4 bytes, bf16/fp16 2, fp8 (E4M3/E5M2) and int8 1,
    NVFP4 (E2M1) half a byte."""
    from hwmodels.kernels import dtype_bytes
    assert {d: dtype_bytes(d) for d in ("fp32", "tf32", "bf16", "fp16", "fp8", "fp4", "int8")} == \
        {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "fp4": 0.5, "int8": 1}


def test_causal_halving_depends_on_the_lengths_values(bare):
    """Self-attention (equal q and kv lengths, however they were computed) is causal: half the
    square; the halving must not depend on the two ints being the same object."""
    s = 8192
    other = int(str(s))  # equal value, separate int object
    half = 4.0 * s * s * 32 * 128 / 2
    assert bare.flash_attention_s(1, s, other, 32, 8, 128, True) == pytest.approx(
        half / (989e12 * 0.34) + 3e-6, rel=1e-9)


def test_cross_chunk_attention_of_a_batch_scales_with_the_batch():
    """Two sequences (batch 2) of the s/2 x s cross-chunk attention (context parallelism): the
    FLOPs of two causal s x s passes, so the measured causal kernel's time at batch 2."""
    km = kernel_model("h100-sxm", "bf16")
    s = 8192
    for batch in (2, 3):
        assert km.flash_attention_s(batch, s // 2, s, 32, 8, 128, False) == pytest.approx(
            km.flash_attention_s(batch, s, s, 32, 8, 128, True), rel=1e-9)


@pytest.mark.parametrize("head_dim, seq, tflops", [(128, 2048, 69.0), (128, 1024, 62.0), (64, 4096, 87.0)])
def test_flash_attention_1_forward_at_its_measured_a100_rate(head_dim, seq, tflops):
    """FlashAttention-1 on A100 (Dao 2023 Fig. 4-5, hwmodels/data/flash_attention_impls.csv: causal
    fwd+bwd 69 TFLOP/s at hd128 / 2k, 62 at hd128 / 1k, 87 at hd64 / 4k): the forward of a causal
    pass, 2·b·s²·h·d FLOPs (half of 4·b·s²·h·d), takes those FLOPs at that rate, plus the 3 µs
    launch. Batch 2, 16 heads."""
    km = kernel_model("a100-sxm-80g", "bf16")
    flops = 2.0 * 2 * seq * seq * 16 * head_dim
    assert km.legacy_flash_s("fa1", 2, seq, 16, head_dim) == pytest.approx(flops / (tflops * 1e12) + 3e-6, rel=1e-9)


def test_a_profile_measured_in_several_dtypes_defaults_to_its_first(tmp_path):
    """`KernelModel.from_profile(path)` without a dtype takes the profile's first measured dtype
    (meta.json `dtypes`, in the order `clusterplan validate profile` measured them)."""
    import json
    import shutil
    from pathlib import Path
    src = sorted((Path(__file__).resolve().parent.parent / "validation" / "data" / "profiles").glob("*/meta.json"))
    if not src:
        pytest.skip("no committed profile under validation/data/profiles")
    folder = tmp_path / "prof"
    shutil.copytree(src[0].parent, folder)
    meta = json.loads((folder / "meta.json").read_text())
    meta["dtypes"] = ["fp32", "bf16"]
    (folder / "meta.json").write_text(json.dumps(meta))
    km = KernelModel.from_profile(folder)
    assert km.dtype == "fp32" and km.gemm_s(512, 512, 512) > 0


def test_an_older_flash_kernel_speeds_up_on_a_new_gpu_as_flash_attention_2_does():
    """FA1 was measured on A100 only (Dao 2023 Fig. 4-5). On H100 it is taken to gain what
    FlashAttention-2 gains on the same problem: FA1's H100 forward / its A100 forward = FA2's
    H100 forward / its A100 forward (launch latency aside)."""
    a100, h100 = kernel_model("a100-sxm-80g", "bf16"), kernel_model("h100-sxm", "bf16")
    args = (2, 4096, 16, 128)
    fa1 = [km.legacy_flash_s("fa1", *args) - 3e-6 for km in (a100, h100)]
    fa2 = [km.flash_attention_s(2, 4096, 4096, 16, 16, 128, True) for km in (a100, h100)]
    assert fa1[1] / fa1[0] == pytest.approx(fa2[1] / fa2[0], rel=1e-9)
    assert fa1[1] < fa1[0]


def test_a_profiled_machine_runs_gemms_at_its_measured_times():
    """`clusterplan validate profile` tables are this machine's own measurements: at a measured
    shape the kernel model gives the measured time itself (no peak scaling, no MAMF factor)."""
    import csv
    from pathlib import Path
    metas = sorted((Path(__file__).resolve().parent.parent / "validation" / "data" / "profiles").glob("*/meta.json"))
    if not metas:
        pytest.skip("no committed profile under validation/data/profiles")
    km = KernelModel.from_profile(metas[0].parent)
    rows = [r for r in csv.DictReader(open(metas[0].parent / "gemm.csv"))
            if r["dtype"] == km.dtype and r["bias"] == "0"]
    big = max(rows, key=lambda r: int(r["m"]) * int(r["n"]) * int(r["k"]))
    assert km.gemm_s(int(big["m"]), int(big["n"]), int(big["k"])) == pytest.approx(float(big["time_s"]), rel=1e-6)


def test_sustained_clocks_slow_compute_bound_gemms_only():
    """The power limit throttles the SM clock, not HBM: a GEMM at or above the roofline's ridge
    point takes the full 1/σ (MAMF), a decode GEMM reading its weights for 4 rows keeps its
    burst-timed table time (intensity ~4 FLOP/B against a ridge near 300)."""
    km = kernel_model("h100-sxm", "bf16")
    assert km.sustained_factor < 1
    big = km._gemm.time_s(8192, 8192, 8192)
    assert km.gemm_s(8192, 8192, 8192) == pytest.approx(big / km.sustained_factor, rel=1e-9)
    burst = km._gemm.time_s(4, 8192, 8192)
    dec = km.gemm_s(4, 8192, 8192)
    assert burst <= dec < burst * (1 + 0.02 * (1 / km.sustained_factor - 1))
    assert dec < burst / km.sustained_factor * 0.9
    # half the ridge point: half the slowdown
    ridge = km._ridge
    assert km.sustained_s(1.0, ridge / 2, 1.0) == pytest.approx(1 + (1 / km.sustained_factor - 1) / 2)
    assert km.sustained_s(1.0, 10 * ridge, 1.0) == pytest.approx(1 / km.sustained_factor)
