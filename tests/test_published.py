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
        # the printed prediction is rounded to 0.1 (or 0.01): allow that rounding in the error
        assert abs(c["predicted"] - c["measured"]) / c["measured"] * 100 == pytest.approx(
            abs(c["error_pct"]), abs=0.01 + 5.0 / c["measured"])


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
    assert {"cases", "mape_pct", "mean_error_pct", "max_error_pct", "tables"} <= set(d)
    # the bias is the mean of the signed errors, the MAPE that of their sizes
    t2 = [c for c in d["cases"] if c["table"] == "megatron-2021-table2"]
    assert d["tables"]["megatron-2021-table2"]["mean_error_pct"] == pytest.approx(
        sum(c["error_pct"] for c in t2) / len(t2), abs=0.01)
    assert abs(d["mean_error_pct"]) <= d["mape_pct"]
    assert {"name", "predicted", "measured", "unit", "error_pct"} <= set(d["cases"][0])
    assert set(d["tables"]) == {"megatron-2021-table1", "megatron-2021-table2", "nemo-24.07", "mlperf-3.0-gpt3",
                                "megatron-bridge-h100", "megatron-bridge-blackwell", "llm-foundry-fsdp", "torchtitan"}
    assert all(s["reason"] for s in d["skipped"])
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
    # ZeRO-3 over 1024 A100s: inside the published ZeRO-3 runs (Table 2 reaches 2,240 GPUs), and
    # the label carries that regime's error as validate published measured it (DeepSpeed 2021's
    # ZeRO-3 rows keep it above the Megatron regime's)
    v = estimate(job, TrainingPlan(dp=256, tp=2, cp=2, mb=3, zero=3, sp=True), cl).validation
    from simulator.regimes import REGIMES_FILE
    measured = json.loads(REGIMES_FILE.read_text())["regimes"][v["regime"]]["mape_pct"]
    assert v["validated"] and v["mape_pct"] == measured > 10 and "2,240 devices" in v["note"]
    # ... over 4,096 A100s: beyond every published ZeRO-3 run
    big = TrainingJob(load_model("gpt3-175b"), 2048, 4096, dtype="fp16")
    v = estimate(big, TrainingPlan(dp=1024, tp=2, cp=2, mb=1, zero=3, sp=True),
                 load_cluster("dgx-a100", nodes=512)).validation
    assert not v["validated"] and "2,240 devices" in v["note"] and "4,096" in v["note"]
    # no published run on B200 at all
    v = estimate(job, TrainingPlan(dp=16, tp=8, pp=8, mb=1), load_cluster("dgx-b200", nodes=128)).validation
    assert not v["validated"] and v["note"].startswith("no published run validates megatron/b200")
    # context parallelism is its own regime: no published A100 run used it, though TP/PP runs abound
    v = estimate(job, TrainingPlan(dp=8, tp=8, pp=8, cp=2, mb=1, sp=True), cl).validation
    assert not v["validated"] and v["regime"] == "megatron+cp/a100-sxm-80g/16-bit"
    # ... which the Megatron-Bridge Llama 3.1 405B row (CP 2 on H100, FP8) validates there
    bridge = next(c for c in published.megatron_bridge()[0] if c["name"].startswith("LLAMA3.1_405B"))
    assert bridge["regime"] == "megatron+cp/h100-sxm/fp8"


# ---- Megatron 2021 Table 2, MLPerf v3.0 GPT-3, Megatron-Bridge (validation only) --------------------

def test_megatron_table2_ptdp_rows_within_the_table1_error():
    """PTD-P rows of Table 2 (GPT-3 175B and 530B at 384..2240 A100) run the Table 1 software and
    land within 12% (issue #18's per-table bar) each, all on the optimistic side like Table 1."""
    cases = [c for c in published.megatron_table2() if c["name"].startswith("PTD")]
    assert len(cases) == 6
    _consistent(cases)
    assert all(0 < c["error_pct"] <= 12.0 for c in cases), [(c["name"], c["error_pct"]) for c in cases]


def test_megatron_table2_zero3_throughput_falls_with_gpus_at_a_fixed_batch():
    """Table 2's point: at a fixed global batch, ZeRO-3 without model parallelism loses throughput
    per GPU as GPUs double (micro-batch halves while every GPU still gathers the whole model):
    the predicted TFLOP/s per GPU must fall from 384 to 1536 GPUs as the published one does."""
    z = [c for c in published.megatron_table2() if c["name"].startswith("ZeRO-3") and "174.6B" in c["name"]]
    pred = [c["predicted"] for c in z]
    assert len(z) == 3 and pred[0] > pred[1] > pred[2]


def test_mlperf_gpt3_replays_the_h100_systems_and_lists_the_rest():
    """Four NVIDIA H100 systems (512..3584 GPUs) from their median step times; the Gaudi2 rows,
    which publish no TP/PP and no step timing, are listed as skipped with the reason. Error pinned
    at today's level (optimistic, growing with DP size; issue #18's 12% bar is not met)."""
    cases, skipped = published.mlperf_gpt3()
    assert len(cases) == 5 and {c["devices"] for c in cases} == {512, 768, 1536, 3584}
    assert len(skipped) == 6 and all("Gaudi2" in s["row"] and s["reason"] for s in skipped)
    _consistent(cases)
    assert all(0 < c["error_pct"] <= 25.0 for c in cases)
    # measured tokens/s per GPU from the published step: 2048 sequences of 2048 tokens in 12.08 s on 512 GPUs
    n64 = next(c for c in cases if c["devices"] == 512)
    assert n64["measured"] == pytest.approx(2048 * 2048 / 12.0827 / 512, rel=1e-3)


def test_megatron_bridge_dense_rows_and_skip_reasons():
    """Llama-3 70B pretraining and SFT on DGX-H100 (FP8, TP4 PP8/4 VP5) within 5%, its LoRA run
    (rank 32 on linear_qkv, as the recipe sets) within 12%; GPT-OSS and the hybrid Nemotron-3 Nano
    are modelled."""
    cases, skipped = published.megatron_bridge()
    llama70 = [c for c in cases if c["name"].startswith("LLAMA3_70B") and "LoRA" not in c["name"]]
    assert len(llama70) == 2 and all(abs(c["error_pct"]) <= 5.0 for c in llama70)
    lora = [c for c in cases if c["name"].startswith("LLAMA3_70B LoRA")]
    assert len(lora) == 1 and abs(lora[0]["error_pct"]) <= 12.0
    _consistent(cases)
    reasons = " ".join(s["row"] + " " + s["reason"] for s in skipped)
    assert "LoRA" not in reasons
    assert "GPT OSS" not in reasons and "Nemotron" not in reasons
    nano = [c for c in cases if c["name"].startswith("Nemotron_3_Nano")]
    assert len(nano) == 1 and "ep=8" in nano[0]["plan"] and "tp=1" in nano[0]["plan"]
    assert any(c["name"].startswith("GPT OSS 120B") for c in cases)


def test_megatron_bridge_blackwell_rows_clusters_and_reasons():
    """The B200/B300/GB200/GB300 rows replay on their systems: NVL72 racks as NVLink domains of
    64 GPUs a job takes, a cell "A (B)" read as its first variant, FSDP=64 as zero=3; the models
    and tables not modelled are listed with the reason."""
    gb = published._bridge_cluster("DGX-GB200", 256)
    assert (gb.devices_per_node, gb.num_nodes, gb.device.name) == (64, 4, "gb200")
    assert published._bridge_cluster("DGX-GB300", 8).devices_per_node == 8
    assert published._bridge_cluster("DGX-B200", 64).num_nodes == 8
    cases, skipped = published.megatron_bridge(path=published.BRIDGE_BLACKWELL)
    assert len(cases) == 79  # 71 + the four LoRA runs + the four Nemotron-3 Nano runs (tests/test_mamba.py)
    _consistent(cases)
    lora = [c for c in cases if "LoRA" in c["name"]]
    assert len(lora) == 4 and all(abs(c["error_pct"]) <= 12.0 for c in lora)
    fsdp = [c for c in cases if c["name"].endswith("fsdp")]
    assert fsdp and all("zero=3" in c["plan"] for c in fsdp)
    llama8 = [c for c in cases if c["name"].startswith("LLAMA3_8B") and "GB300" in c["name"]]
    assert [c["measured"] for c in llama8] == [37556.0]  # "37556 (36108)": the row's own variant
    # dense Llama on Blackwell within 15% except where the run's recompute setting is not a plan
    # option (Megatron-FSDP 70B: full recompute is the least this model fits)
    dense = [c for c in cases if c["name"].startswith("LLAMA") and "fsdp" not in c["name"]
             and "recompute=full" not in c["plan"]]
    assert len(dense) >= 15 and sum(abs(c["error_pct"]) <= 15 for c in dense) >= 0.7 * len(dense)
    reasons = " ".join(s["row"] + " " + s["reason"] for s in skipped)
    for what in ("Nemotron_3_Super", "Nemotron_3_Ultra", "Nemotron_3_5_Lightning", "DeepSeek-V4"):
        assert what in reasons
    assert "Nemotron_3_Nano" not in reasons and "LoRA" not in reasons
    # a 61-layer run whose pipeline layout no recipe holds and the doc does not print is listed as
    # left out by the source, not refused by the engine
    assert "leaves out the pipeline layout" in reasons and "must split evenly" not in reasons
    nano = [c for c in cases if c["name"].startswith("Nemotron_3_Nano")]
    assert len(nano) == 4 and all("ep=8" in c["plan"] and "recompute=none" in c["plan"] for c in nano)
    mape = sum(abs(c["error_pct"]) for c in cases) / len(cases)
    assert mape <= 30.0  # today's 29.3% (MoE rows across container versions); see docs/modeling.md
