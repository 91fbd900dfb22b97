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


# ---- --software on the command line (ui.jobs builds the job for the CLI and the dashboard) --------

LLAMA = ["--model", "llama2-7b", "--cluster", "dgx-a100", "--nodes", "1", "--seq-len", "4096",
         "--global-batch", "64", "--json"]


def _sim(capsys, *extra):
    import json

    from ui.cli import main
    code = main(["simulate", "train", *LLAMA, *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_software_flag_takes_the_profiles_settings_and_plan_keys(capsys):
    """llm-foundry runs FSDP FULL_SHARD (zero=3) with the Triton flash port: both reach the job,
    and each moves the step the way its mechanism says (Triton FA slower than FA2; ZeRO-3 adds
    parameter gathers)."""
    plain = _sim(capsys)
    lf = _sim(capsys, "--software", "llm-foundry")
    assert lf["software"]["name"] == "llm-foundry" and "software" not in plain
    assert lf["plan"]["zero"] == 3 and plain["plan"]["zero"] != 3
    assert lf["step_time_s"] > 1.05 * plain["step_time_s"]
    # the user's flag wins over the profile: FA2 instead of the Triton port is faster
    fa2 = _sim(capsys, "--software", "llm-foundry", "--attention-kernel", "fa2")
    assert fa2["plan"]["zero"] == 3 and fa2["step_time_s"] < 0.97 * lf["step_time_s"]
    # and a plan key the user gives wins over the profile's plan default
    z1 = _sim(capsys, "--software", "llm-foundry", "--plan", "zero=1")
    assert z1["plan"]["zero"] == 1


def test_software_flag_for_megatron_2021_is_its_unfused_attention(capsys):
    """megatron-lm-2021 = unfused attention with dropout and no gradient overlap, as giving those
    flags one by one, and also no overlap of the distributed optimizer's parameter all-gather
    (no flag of its own): a little slower than the flags alone, never faster."""
    sw = _sim(capsys, "--software", "megatron-lm-2021")
    flags = _sim(capsys, "--attention", "unfused", "--dropout", "on", "--grad-overlap", "off")
    assert flags["step_time_s"] < sw["step_time_s"] < 1.02 * flags["step_time_s"]
    assert sw["step_time_s"] > 1.1 * _sim(capsys)["step_time_s"]


def test_plan_train_with_a_software_profile_searches_its_fixed_keys_only(capsys):
    import json

    from ui.cli import main
    code = main(["plan", "train", *LLAMA, "--software", "llm-foundry", "--top", "5"])
    out, err = capsys.readouterr()
    assert code == 0, err
    plans = json.loads(out)["plans"]
    assert plans and all(p["plan"]["zero"] == 3 and p["plan"]["tp"] == 1 and p["plan"]["pp"] == 1 for p in plans)


def test_unknown_software_flag_is_one_line_exit_2(capsys):
    from ui.cli import main
    code = main(["simulate", "train", *LLAMA, "--software", "deepspeed-0.1"])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "deepspeed-0.1" in err and "llm-foundry" in err
