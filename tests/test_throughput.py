"""Offline max-throughput clients (simulator/serving/offline.py) and `validate throughput`
(validation/throughput.py): the tools' own limit heuristics against their sources, the switch-off
checks, the CLI contract (one-line errors, exit 2)."""
from __future__ import annotations

import csv
import json
import math

import pytest

from hwmodels.clusters import load_cluster
from hwmodels.devices import get_device
from hwmodels.errors import InputError
from simulator.models import load_model
from simulator.serving import offline
from simulator.serving.engine import ReplicaGroup, ServingPlan, ServingSimulation
from simulator.serving.scheduler import engine_config
from ui.cli import main


# ---- trtllm-bench tuning heuristic (tensorrt_llm/bench/build/tuning.py, 0.14) -----------------

@pytest.mark.parametrize("requests,isl,osl,pp,expect", [
    # raw_bs 100 < 256 -> 32-multiple, >= 64: 128; raw_token 200 < 4096 -> max(2048, ...) = 2048
    (100.0, 128, 128, 1, (128, 2048)),
    # raw_bs 40 -> floor of 64 batch; raw_token 40·(1 + 20000/2000) = 440 -> 2048
    (40.0, 20000, 2000, 1, (64, 2048)),
    # raw_bs 600 in [256, 1024) -> 128-multiple: 640; raw_token 600·(1 + 5000/500) = 6600 -> 512-multiple 6656
    (600.0, 5000, 500, 1, (640, 6656)),
    # 5000 requests capped at 4096; raw_token capped at 32768 (1024-multiple)
    (5000.0, 2048, 128, 1, (4096, 32768)),
    # pp divides the batch: 3000/2 = 1500 -> 256-multiple 1536; 1500·2 = 3000 -> 3072
    (3000.0, 128, 128, 2, (1536, 3072)),
])
def test_finetune_setting_rounds_as_tuning_py(requests, isl, osl, pp, expect):
    assert offline.trtllm_finetune(requests, isl, osl, pp) == expect


def test_calc_engine_setting_for_llama70b_fp8_on_h200():
    """calc_engine_setting by hand: KV 2·80·max(1, 8)·128·1 B per token, engine 70.55e9 params ×
    1 B (in "GB" of 1e9), device 141 GiB, 0.95 of the rest over 2000 tokens per request."""
    m = load_model("llama3.1-70b")
    dev = get_device("h200")
    bs, tok, d = offline.trtllm_bench_limits(m, dev, 1, 1, 1000, 1000, "fp8", "fp8")
    per_tok_gib = 2 * 80 * 8 * 128 * 1 / 2**30
    want = (dev.hbm_bytes / 2**30 - m.num_params / 1e9) * 0.95 / (per_tok_gib * 2000)
    assert d["kv_cache_max_requests"] == pytest.approx(want, rel=1e-3)
    assert (bs, tok) == offline.trtllm_finetune(want, 1000, 1000)
    # FP16 doubles weight and KV bytes: on twice the GPUs exactly the same requests fit
    _, _, d16 = offline.trtllm_bench_limits(m, dev, 2, 1, 1000, 1000, "fp16", "fp16")
    assert d16["kv_cache_max_requests"] == pytest.approx(d["kv_cache_max_requests"], rel=1e-3)
    _, _, d16kv = offline.trtllm_bench_limits(m, dev, 1, 1, 1000, 1000, "fp8", "fp16")
    assert d16kv["kv_cache_max_requests"] == pytest.approx(d["kv_cache_max_requests"] / 2, rel=1e-2)
    # at least one KV head per TP rank: tp=16 > 8 KV heads counts 16 heads
    _, _, d_tp16 = offline.trtllm_bench_limits(m, dev, 16, 1, 1000, 1000, "fp8", "fp8")
    _, _, d_tp8 = offline.trtllm_bench_limits(m, dev, 8, 1, 1000, 1000, "fp8", "fp8")
    assert d_tp16["kv_cache_max_requests"] < 2 * d_tp8["kv_cache_max_requests"]


def test_model_that_does_not_fit_is_refused_in_one_line():
    with pytest.raises(InputError, match="leaves no KV cache"):
        offline.trtllm_bench_limits(load_model("llama3.1-70b"), get_device("h100"), 1, 1, 128, 128,
                                    "fp16", "fp16")


def test_vllm_and_sglang_offline_defaults_follow_their_sources():
    m = load_model("llama3.1-8b")
    big = offline.offline_limits("vllm-throughput", m, get_device("h100"), 1, 1, 128, 128, "bf16", "bf16")
    a100 = offline.offline_limits("vllm-throughput", m, get_device("a100-sxm-80g"), 1, 1, 128, 128,
                                  "bf16", "bf16")
    assert (big.max_batch_size, big.max_num_tokens) == (1024, 16384)  # LLM_CLASS, >= 70 GiB
    assert (a100.max_batch_size, a100.max_num_tokens) == (256, 8192)  # A100 excluded
    sg = offline.offline_limits("sglang-offline", m, get_device("h100"), 1, 1, 128, 128, "bf16", "bf16")
    cfg = engine_config("sglang", get_device("h100"), 1)
    assert (sg.max_batch_size, sg.max_num_tokens) == (cfg.max_num_seqs, cfg.max_num_batched_tokens)
    with pytest.raises(InputError, match="valid: trtllm-bench"):
        offline.offline_limits("nope", m, get_device("h100"), 1, 1, 128, 128, "bf16", "bf16")


# ---- the mechanism switched off ----------------------------------------------------------------

def _run(plan_kw, n=48, isl=20000, osl=64):
    m = load_model("llama3.1-8b")
    cl = load_cluster("dgx-h100")
    wl = offline.offline_workload(n, isl, osl)
    plan = ServingPlan((ReplicaGroup(cl, 1),), dtype="fp8", kv_dtype="fp8", prefix_caching=False,
                       **plan_kw)
    sim = ServingSimulation(m, plan, wl)
    rep = sim.run()
    return rep.to_dict()["throughput_tokens_per_s"], sim


def test_long_prompts_batch_at_the_tools_limits_and_run_alone_without_them():
    """ISL 20000 with the engine defaults (max_num_tokens 8192, chunked prefill off): a prompt
    longer than the budget runs alone; with trtllm-bench's limits (chunked context, a budget
    sized to the dataset) prompts share iterations with decodes, and throughput rises."""
    lim = offline.offline_limits("trtllm-bench", load_model("llama3.1-8b"), get_device("h100"), 1, 1,
                                 20000, 64, "fp8", "fp8")
    assert lim.chunked_prefill and lim.max_num_tokens >= 2048
    tool, sim_tool = _run(offline.offline_plan_options(lim))
    off, sim_off = _run({"engine": "trtllm"})  # engine defaults: the heuristic switched off
    assert sim_tool.replicas[0].cfg.chunked_prefill and not sim_off.replicas[0].cfg.chunked_prefill
    assert tool > 1.2 * off


def test_offline_workload_queues_everything_at_t0():
    wl = offline.offline_workload(7, 128, 16)
    assert wl.closed_loop and wl.concurrency == wl.num_requests == 7
    with pytest.raises(InputError):
        offline.offline_workload(0, 128, 16)


# ---- validation against the published table ----------------------------------------------------

def test_request_counts_are_the_documents_and_every_row_is_expressible():
    """The whole table of perf-overview.md (v0.14): 622 cells, of which the 54 Mistral 7B cells
    are listed (checkpoint not named) and every other one is expressible."""
    from validation.throughput import CORE_MODELS, NOT_REPLAYED, NUM_REQUESTS, case_of, read_rows
    assert NUM_REQUESTS[(128, 128)] == 30000 and NUM_REQUESTS[(20000, 2000)] == 1000
    rows = read_rows()
    assert len(rows) == 622
    assert sum(r["model"] in CORE_MODELS for r in rows) == 214
    assert sum(r["model"] in NOT_REPLAYED for r in rows) == 54
    for r in rows:
        if r["model"] in NOT_REPLAYED:
            with pytest.raises(InputError):
                case_of(r)
            continue
        c = case_of(r)
        assert c["num_requests"] in (30000, 3000, 1500, 1000)
        assert (c["dtype"], c["kv_dtype"]) in (("fp8", "fp8"), ("fp16", "fp16"))


def test_the_suite_lists_cells_it_does_not_replay_and_summarises_the_llama31_rows(tmp_path):
    """Mistral 7B cells are listed with the reason, never refused or dropped; the Llama 3.1 rows
    (the issue's set) get their own summary line beside all rows."""
    from validation.throughput import format_report, read_rows, run_suite
    rows = read_rows()
    keep = [rows[0]] + [r for r in rows if r["model"] == "Mistral 7B"][:2] + \
        [r for r in rows if r["model"] == "Mixtral 8x7B" and r["gpu"] == "H100 80GB HBM3"
         and r["precision"] == "FP8" and r["isl"] == "2048" and r["osl"] == "128" and r["tp"] == "8"]
    path = tmp_path / "t.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(keep)
    doc = run_suite(str(path), jobs=1)
    assert [s["row"].split()[0] for s in doc["skipped"]] == ["Mistral", "Mistral"]
    assert doc["refused"] == [] and len(doc["cases"]) == 2
    assert doc["core"]["rows"] == 1 and set(doc["by_model"]) == {"LLaMA v3.1 70B", "Mixtral 8x7B"}
    mix = next(c for c in doc["cases"] if c["model"] == "Mixtral 8x7B")
    assert abs(mix["error_pct"]) < 25  # validation, not a fit: published 6,532.7 tok/s (FP8)
    text = format_report(doc)
    assert "not replayed (2 cells)" in text and "Llama 3.1 8B/70B rows 1:" in text


def test_first_rows_replay_close_to_published_and_aic_sits_beside():
    """Validation, not a fit: Llama-3.1-70B FP8 on one H200 at 1000/1000 (published 2585 tok/s)."""
    from validation.throughput import format_report, run_suite
    doc = run_suite(limit=1)
    c = doc["cases"][0]
    assert c["measured"] == pytest.approx(2585.0953)
    assert abs(c["error_pct"]) < 15
    assert c["aiconfigurator"] == pytest.approx(2557.43)
    assert doc["mape_pct"] == pytest.approx(abs(c["error_pct"]))
    assert (c["max_batch_size"], c["max_num_tokens"]) == (224, 2048)
    text = format_report(doc)
    assert "MAPE" in text and "AIConfigurator" in text
    # the per-cell table (each cell with AIConfigurator's estimate beside ours) only with --rows
    cell = f"{c['measured']:>11.1f}{c['predicted']:>10.1f}"
    assert cell not in text and "(per-cell table: --rows)" in text
    full = format_report(doc, rows=True)
    assert cell in full and "2557.4" in full and "(per-cell table: --rows)" not in full


# ---- CLI -----------------------------------------------------------------------------------------

def test_simulate_serve_offline_client_prints_the_limits(capsys):
    code = main(["simulate", "serve", "--model", "llama3.1-8b", "--cluster", "dgx-h100", "--dtype", "fp8",
                 "--kv-dtype", "fp8", "--client", "trtllm-bench", "--requests", "200",
                 "--prompt-len", "1000", "--output-len", "100", "--json"])
    d = json.loads(capsys.readouterr().out)
    assert code == 0
    assert d["offline_limits"]["client"] == "trtllm-bench" and d["plan"]["engine"] == "trtllm"
    assert any("max_batch_size" in n for n in d["notes"])
    assert d["throughput_tokens_per_s"] > 0 and math.isfinite(d["throughput_tokens_per_s"])


@pytest.mark.parametrize("extra,msg", [
    (["--rate", "3"], "queues every request at t=0"),
    (["--plan", "tp=1,replicas=2"], "one engine instance"),
])
def test_offline_client_bad_input_exits_2_with_one_line(capsys, extra, msg):
    code = main(["simulate", "serve", "--model", "llama3.1-8b", "--cluster", "dgx-h100",
                 "--client", "sglang-offline", "--prompt-len", "100", "--output-len", "10", *extra])
    err = capsys.readouterr().err
    assert code == 2 and msg in err and err.strip().count("\n") == 0


def test_validate_throughput_json(capsys):
    code = main(["validate", "throughput", "--limit", "1", "--json"])
    d = json.loads(capsys.readouterr().out)
    assert code == 0 and len(d["cases"]) == 1
    for key in ("name", "predicted", "measured", "unit", "error_pct"):
        assert key in d["cases"][0]
    assert "mape_pct" in d and "max_error_pct" in d and "by_group" in d


def test_serving_fp4_reads_the_nvfp4_gemm_table():
    """Serving's FP4 passes take their GEMMs from aiconfigurator-core's NVFP4 table (B200), not a
    roofline: the table's kernel is slower than fp4 peak at 86.9% and faster than the fp8 table."""
    from simulator.serving.costs import IterationCost
    ic = IterationCost(load_model("llama3.1-8b"), load_cluster("dgx-b200"), 1, dtype="fp4")
    assert ic.km._gemm is not None and not any("no fp4 GEMM table" in n for n in ic.notes)
    m, n, k = 4096, 14336, 4096
    t4 = ic.km.gemm_s(m, n, k)
    roof = 2 * m * n * k / (ic.km.peak_flops * 0.869)
    assert t4 > 1.05 * roof
    assert t4 < ic.km16.gemm_s(m, n, k)
