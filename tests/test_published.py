"""Validation against published training throughput (issue #2's accuracy bar, and NeMo 24.07 on
H100). The rows are never used to fit anything; these tests pin the errors so that a model
change that worsens them fails."""
from __future__ import annotations

import json

import pytest

from ui.cli import main
from validation import published
from validation.published import megatron_table1, nemo_report, published_report


def _consistent(cases):
    for c in cases:
        assert abs(c["predicted"] - c["measured"]) / c["measured"] * 100 == pytest.approx(abs(c["error_pct"]), abs=0.01)


def test_megatron_table1_error_bars():
    report = megatron_table1()
    assert len(report["cases"]) == 10
    assert report["mape_pct"] <= 8.0
    assert report["max_error_pct"] <= 15.0
    assert all(c["unit"] == "TFLOP/s per GPU" for c in report["cases"])
    _consistent(report["cases"])


def test_nemo_2407_error_bars():
    report = nemo_report()
    assert len(report["cases"]) == 7  # GPT-3 175B ×2, Llama 2 7/13/70B, Llama 3 8/70B
    assert report["mape_pct"] <= 7.0
    assert report["max_error_pct"] <= 10.0
    assert all(c["unit"] == "tokens/s per GPU" for c in report["cases"])
    _consistent(report["cases"])


def test_validate_published_cli_json(capsys):
    assert main(["validate", "published", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert {"cases", "mape_pct", "max_error_pct", "tables"} <= set(d)
    assert {"name", "predicted", "measured", "unit", "error_pct"} <= set(d["cases"][0])
    assert set(d["tables"]) == {"megatron-2021-table1", "nemo-24.07", "llm-foundry-fsdp"}
    assert d["cases"] == json.loads(json.dumps(published_report()["cases"]))


# ---- llm-foundry FSDP table (validation only; docs/design.md §5) ----

def test_llmfoundry_fsdp_error_bars():
    """Every row of the table modelled (no refusal), MAPE <= 10% (issue #18's target) and no
    model size biased by more than 20% in mean (70B, 4 rows, is the worst: +16%)."""
    cases = published.llmfoundry_fsdp()
    assert len(cases) == 139
    mape = sum(abs(c["error_pct"]) for c in cases) / len(cases)
    assert mape <= 10.0
    for size, v in published._by_size(cases).items():
        assert abs(v["mean_error_pct"]) <= 20.0, (size, v)


def test_mpt_presets_match_published_parameter_counts():
    """The MPT sizes reproduce llm-foundry's NumParams column at seq 2048 within 0.2%
    (12·L·d² + V·d + learned positions; the printed count includes them)."""
    import csv
    from simulator.models import megatron_param_count
    with open(published.LLMFOUNDRY) as f:
        rows = [r for r in csv.DictReader(f) if r["SeqLen (T)"] == "2048"]
    for r in rows:
        p = megatron_param_count(published.mpt_model(r["Model"], 2048))
        assert abs(p / int(r["NumParams"]) - 1) < 0.002, (r["Model"], p, r["NumParams"])


def test_attention_kernel_of_the_software_matters():
    """The Triton FlashAttention port llm-foundry ran is measured at 68 vs FA2's 155 TFLOP/s (A100,
    hd128, causal, 2k; Dao 2023 Fig. 4): with the FA2 kernel the long-sequence rows would read
    far faster than published. Switching the mechanism off (fa2) must move MPT-1B at 16k by >25%."""
    from dataclasses import replace
    from hwmodels.clusters import load_cluster
    from simulator.analytic import estimate
    from simulator.software import apply_software
    from simulator.training import TrainingJob, TrainingPlan
    job = apply_software(TrainingJob(model=published.mpt_model("1b", 16384), seq_len=16384,
                                     global_batch=32, dtype="bf16"), "llm-foundry")
    assert job.attention_kernel == "fa-triton"
    cl, plan = load_cluster("dgx-a100-40g", nodes=1), TrainingPlan(dp=8, mb=1, zero=3)
    slow, fast = (estimate(j, plan, cl).step_time_s for j in (job, replace(job, attention_kernel="fa2")))
    assert slow > 1.25 * fast


# ---- how far to trust a prediction (simulator/regimes.py) ----

def test_validated_regimes_file_is_what_validate_published_measures():
    """simulator/data/validated_regimes.json is rewritten by `python -m validation.published
    --regimes`; a model change that moves an error without rewriting it fails here."""
    from simulator.regimes import REGIMES_FILE
    assert REGIMES_FILE.read_text() == published.regimes_document(published_report())


def test_a_prediction_names_its_regime_or_says_no_run_validates_it():
    from hwmodels.clusters import load_cluster
    from simulator.analytic import estimate
    from simulator.models import load_model
    from simulator.training import TrainingJob, TrainingPlan
    job = TrainingJob(load_model("gpt3-175b"), 2048, 1536, dtype="fp16")
    cl = load_cluster("dgx-a100", nodes=128)
    v = estimate(job, TrainingPlan(dp=16, tp=8, pp=8, mb=1), cl).validation
    assert v["validated"] and v["regime"] == "megatron/a100-sxm-80g/16-bit" and v["cases"] >= 9
    # ZeRO-3 over 1024 A100s: FSDP is validated on A100, but only up to 64 80GB GPUs
    v = estimate(job, TrainingPlan(dp=256, tp=2, cp=2, mb=3, zero=3, sp=True), cl).validation
    assert not v["validated"] and "64 devices" in v["note"] and "1,024" in v["note"]
    # no published run on B200 at all
    v = estimate(job, TrainingPlan(dp=16, tp=8, pp=8, mb=1), load_cluster("dgx-b200", nodes=128)).validation
    assert not v["validated"] and v["note"].startswith("no published run validates megatron/b200")
