"""Software profiles (simulator/software.py) and the flash-kernel choice they carry."""
import pytest

from hwmodels.errors import InputError
from hwmodels.kernels import attention_kernel_flops, kernel_model
from simulator.models import load_model
from simulator.software import PROFILES, apply_software, get_software
from simulator.training import TrainingJob


def _job(**kw):
    return TrainingJob(model=load_model("llama3-8b"), seq_len=4096, global_batch=64, **kw)


def test_profile_sets_job_fields_and_explicit_values_win():
    job = apply_software(_job(), "megatron-lm-2021")
    assert (job.flash_attention, job.dropout, job.overlap_grad_reduce) == (False, True, False)
    job = apply_software(_job(), "nemo-24.07", dropout=True)
    assert job.overlap_tp_comm and job.dropout  # the user's dropout=True overrides the profile


def test_unknown_profile_is_refused_with_the_valid_names():
    with pytest.raises(InputError, match="valid: .*llm-foundry"):
        get_software("deepspeed-0.1")


def test_every_profile_names_its_source_and_builds_a_valid_job():
    for sw in PROFILES.values():
        assert sw.source and sw.description
        apply_software(_job(), sw.name)


def test_unknown_attention_kernel_is_refused():
    with pytest.raises(InputError, match="attention kernel 'fa9'"):
        _job(attention_kernel="fa9")


def test_legacy_kernel_rate_on_a100_is_the_measured_one():
    """On the A100 the Triton port runs at its printed rate: hd128 causal 2k = 68 TFLOP/s
    fwd+bwd (FA2 benchmark figure), i.e. the forward of 4·b·s²·h·d/2 FLOPs in 1/3.5 of
    fwd+bwd time."""
    km = kernel_model("a100-sxm-80g", "bf16")
    b, s, h, d = 8, 2048, 16, 128
    fwd_flops = 2.0 * b * s * s * h * d
    t = km.legacy_flash_s("fa-triton", b, s, h, d)
    assert 3.5 * fwd_flops / (3.5 * t) == pytest.approx(68e12, rel=0.01)
    assert attention_kernel_flops("a100-sxm-80g", "fa-triton", 128, 2048) == pytest.approx(68e12)


def test_legacy_kernel_on_an_unmeasured_device_scales_by_its_fa2_speedup():
    """H200 has no FA1/Triton measurement: the A100 rate scales by how much faster the H200 runs
    FA2 on the same problem (not by the peak ratio, which is 3.2x)."""
    a100, h200 = kernel_model("a100-sxm-80g"), kernel_model("h200")
    args = ("fa-triton", 8, 4096, 32, 128)
    speedup_fa2 = (a100.flash_attention_s(8, 4096, 4096, 32, 32, 128, True)
                   / h200.flash_attention_s(8, 4096, 4096, 32, 32, 128, True))
    assert a100.legacy_flash_s(*args) / h200.legacy_flash_s(*args) == pytest.approx(speedup_fa2, rel=0.02)
    assert speedup_fa2 < 3.0


def test_borrowed_kernel_efficiency_borrows_the_sustained_clock():
    """A100 40GB borrows the 80GB part's tables; MAMF (271.2 of 312 TFLOP/s) measured on the
    80GB part applies to both (same GA100 silicon, clocks and 400 W)."""
    a40, a80 = kernel_model("a100-sxm-40g"), kernel_model("a100-sxm-80g")
    assert a40.sustained_factor == pytest.approx(a80.sustained_factor) and a80.sustained_factor < 0.95
    assert a40.gemm_s(8192, 8192, 8192) == pytest.approx(a80.gemm_s(8192, 8192, 8192), rel=1e-6)
