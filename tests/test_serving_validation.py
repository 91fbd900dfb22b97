"""`validate serving` (validation/serving.py): rows classified with their client, disaggregated
rows replayed from their recorded concurrency, measured columns read only to compare, the report."""
from __future__ import annotations

import csv
import json

import pytest

from ui.cli import main
from hwmodels.clusters import load_cluster
from simulator.models import load_model
from simulator.serving.costs import checkpoint_moe_quant
from validation import serving as vs


@pytest.fixture(scope="module")
def rows():
    return vs.read_rows()


def _pick(rows, pred, n=1):
    out = [r for r in rows if pred(r)]
    assert len(out) >= n
    return out[:n]


def _small(r, c_max=8, osl_max=1024):
    case, _ = vs.classify(r)
    return case is not None and case["concurrency"] <= c_max and case["osl"] <= osl_max


def test_client_picked_from_the_rows_data_source(rows):
    ix = _pick(rows, lambda r: r["silicon_data_source"].startswith("db-dump/") and vs.classify(r)[0])[0]
    internal = _pick(rows, lambda r: "/Users/" in r["silicon_data_source"] and vs.classify(r)[0])[0]
    assert vs.classify(ix)[0]["client"] == "bench-serving"
    assert vs.classify(internal)[0]["client"] == "aiperf"
    case = vs.classify(ix)[0]
    wl = vs.case_workload(case)
    c = case["concurrency"]
    # InferenceMAX: 10*C prompts, C slots, lengths in [0.8, 1] x nominal
    assert wl.num_requests == 10 * c and wl.concurrency == c
    assert wl.prompt_len.a == int(0.8 * case["isl"]) and wl.prompt_len.b == case["isl"]


def test_disaggregated_rows_use_the_recorded_concurrency_and_pools(rows):
    r = _pick(rows, lambda r: r["mode"] == "disagg" and vs.classify(r)[0] is not None)[0]
    case = vs.classify(r)[0]
    assert f"silicon_concurrency={case['concurrency']}" in r["silicon_data_source"]
    assert set(case["pools"]) == {"prefill", "decode"}
    assert case["pools"]["decode"]["count"] == int(r["decode_num_workers"])
    assert case["pools"]["prefill"]["tp"] == int(r["prefill_tp_size"])
    # the id carries it too when the source string does not
    r2 = {**r, "silicon_data_source": "db-dump/x"}
    assert vs.row_concurrency(r2) == case["concurrency"]


def test_rows_that_cannot_be_modelled_say_why(rows):
    # GPT-OSS is modelled (sliding-window layers, tests/test_gpt_oss.py), no longer refused
    gpt = _pick(rows, lambda r: r["model_path"] == "openai/gpt-oss-120b" and vs.classify(r)[0])[0]
    assert vs.classify(gpt)[0]["model"] == "gpt-oss-120b"
    assert "openai/gpt-oss-120b" not in vs.REFUSED_MODELS
    # attention-DP rows replay on the DES's DP replica (tests/test_attention_dp.py)
    adp = _pick(rows, lambda r: r["mode"] == "agg" and (r["attention_dp_size"] or "1") not in ("1", "")
                and r["model_path"] in vs.MOE_MODELS and vs.classify(r)[0])[0]
    assert vs.classify(adp)[0]["dp"] == int(adp["attention_dp_size"]) > 1
    kimi = _pick(rows, lambda r: r["model_path"] == "moonshotai/Kimi-K2.5" and vs.classify(r)[0])[0]
    assert vs.classify(kimi)[0]["model"] == "kimi-k2.5"
    dense = _pick(rows, lambda r: r["model_path"] == "meta-llama/Llama-3.1-70B" and r["system"] == "b200_sxm")[0]
    assert vs.classify(dense, "dense")[0] is None and vs.classify(dense, "all")[0]["cluster"] == "dgx-b200"


def test_tp_times_ep_labels_read_as_their_duplicates(rows):
    # 2026-04-06.csv labels Qwen3.5-397B H200 TP8/EP8 as tp_size 64 (moe_tp 8 x ep 8); the same
    # measurement in 2026-03-25.csv says tp 8, moe_tp 1, ep 8: both replay as tp 8, ep 8
    def pick(src, tp):
        return _pick(rows, lambda r: r["model_path"] == "Qwen/Qwen3.5-397B-A17B" and r["system"] == "h200_sxm"
                     and r["silicon_data_source"].startswith(src) and r["tp_size"] == tp
                     and r["isl"] == "1024" and r["osl"] == "1024"
                     and "silicon_concurrency=4;" in r["silicon_data_source"])[0]
    late, early = pick("source_file=2026-04-06.csv", "64"), pick("source_file=2026-03-25.csv", "8")
    assert late["silicon_ttft_ms"] == early["silicon_ttft_ms"]
    assert vs.classify(late)[0]["pools"] == vs.classify(early)[0]["pools"] == {
        "both": {"tp": 8, "pp": 1, "ep": 8, "count": 1}}
    # a label of another source that spans nodes stays refused
    other = {**late, "silicon_data_source": "source_file=2026-03-25.csv; silicon_concurrency=4"}
    assert vs.classify(other)[0] is None and "spans nodes" in vs.classify(other)[1]
    # Qwen3.5 (Gated DeltaNet) is modelled, and its gap-analysis copies replay as bench-serving
    gap = _pick(rows, lambda r: r["silicon_data_source"].startswith("source_file=qwen3.5-397b-gap-analysis.csv"))[0]
    assert vs.classify(gap)[0]["client"] == "bench-serving"
    assert vs.classify(gap)[0]["model"] == "qwen3.5-397b-a17b"


def _write(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_measured_columns_are_read_only_to_compare(rows, tmp_path):
    sample = (_pick(rows, lambda r: r["silicon_data_source"].startswith("db-dump/") and r["mode"] == "agg"
                    and _small(r))
              + _pick(rows, lambda r: "/Users/" in r["silicon_data_source"] and _small(r))
              + _pick(rows, lambda r: r["mode"] == "disagg" and _small(r, 4, 1024)))
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    _write(a, sample)
    _write(b, [{**r, **{k: str(float(r[k]) * 3.7) for k in vs.MEASURED_COLUMNS}} for r in sample])
    da = vs.run_suite(str(a), quick=True, jobs=1)
    db = vs.run_suite(str(b), quick=True, jobs=1)
    assert da["rows_modelled"] == db["rows_modelled"] == 3
    for ra, rb in zip(da["rows"], db["rows"]):
        assert ra["pred_ttft_s"] == rb["pred_ttft_s"] and ra["pred_tpot_s"] == rb["pred_tpot_s"]
        assert rb["ttft_s"] == pytest.approx(3.7 * ra["ttft_s"])  # ... and they are compared
        assert ra["ttft_error_pct"] != rb["ttft_error_pct"]
    assert {r["mode"] for r in da["rows"]} == {"agg", "disagg"}
    assert {r["client"] for r in da["rows"]} == {"bench-serving", "aiperf"}


def test_rows_differing_only_in_id_and_measurements_replay_once(rows, tmp_path, monkeypatch):
    """The gap-analysis copies of InferenceMAX rows repeat a row under another id: one replay
    serves both (a replay reads nothing else), and each keeps its own measurements."""
    r = _pick(rows, lambda r: r["silicon_data_source"].startswith("db-dump/") and r["mode"] == "agg"
              and _small(r))[0]
    copy = {**r, "id": r["id"] + "_copy", **{k: str(float(r[k]) * 2.0) for k in vs.MEASURED_COLUMNS}}
    other = {**r, "id": r["id"] + "_other", "isl": str(int(r["isl"]) // 2)}
    p = tmp_path / "dup.csv"
    _write(p, [r, copy, other])
    calls = []
    real = vs.replay

    def counting(case, *a, **k):
        calls.append(case["id"])
        return real(case, *a, **k)
    monkeypatch.setattr(vs, "replay", counting)
    doc = vs.run_suite(str(p), quick=True, jobs=1)
    assert sorted(calls) == sorted([r["id"], other["id"]])
    got = {x["id"]: x for x in doc["rows"]}
    assert got[copy["id"]]["pred_ttft_s"] == got[r["id"]]["pred_ttft_s"]
    assert got[copy["id"]]["ttft_s"] == pytest.approx(2.0 * got[r["id"]]["ttft_s"])
    assert got[other["id"]]["pred_ttft_s"] != got[r["id"]]["pred_ttft_s"]


def test_aiconfigurator_estimates_sit_beside_ours(rows, tmp_path):
    est = vs.aic_estimates()
    assert len(est) >= 740  # 748 estimated of 778 (validation/data/serving/README.md)
    dense = [r for r in rows if (vs.classify(r, "dense")[0] or {}).get("concurrency", 99) <= 4][:3]
    p = tmp_path / "d.csv"
    _write(p, dense)
    doc = vs.run_suite(str(p), quick=True, jobs=1)
    matched = [r for r in doc["rows"] if r["aic_ttft_error_pct"] is not None]
    assert matched, "AIConfigurator's estimate of a dense H100/H200 row was not found"
    g = doc["by_engine"][matched[0]["engine"]]
    assert g["aic_rows"] >= 1 and g["aic_median_abs_ttft_error_pct"] is not None
    text = vs.format_report(doc)
    assert "by engine" in text and "by system" in text and "by model family" in text and "by mode" in text
    assert matched[0]["id"][-40:] not in text  # per-row table only with rows=True
    assert matched[0]["id"][-40:] in vs.format_report(doc, rows=True)


def test_groups_carry_the_signed_median_beside_the_absolute_one():
    rows = [{"engine": "sglang", "ttft_error_pct": e, "tpot_error_pct": -e / 10} for e in (-60.0, -20.0, 5.0)]
    g = vs._summarise(rows, lambda r: r["engine"])["sglang"]
    assert g["median_abs_ttft_error_pct"] == 20.0 and g["median_ttft_error_pct"] == -20.0
    assert g["median_tpot_error_pct"] == 2.0
    doc = {"by_engine": {"sglang": g}, "by_system": {}, "by_family": {}, "by_mode": {}, "by_client": {},
           "dense_h100_h200_by_engine": {}, "dense_h100_h200": {}, "rows_modelled": 0, "skip_reasons": {},
           "wall_s": 0.0}
    line = next(x for x in vs.format_report(doc).splitlines() if x.startswith("  sglang"))
    assert line.split()[4:6] == ["-20.0%", "+2.0%"]


def test_validate_serving_bad_flags_exit_2(capsys):
    code = main(["validate", "serving", "--client", "locust"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "locust" in err


def test_validate_serving_cli_json(capsys):
    code = main(["validate", "serving", "--quick", "--limit", "3", "--scope", "dense", "--json"])
    d = json.loads(capsys.readouterr().out)
    assert code == 0 and d["rows_modelled"] == 3 and d["scope"] == "dense"
    assert all(r["dense"] for r in d["rows"]) and "outside the dense scope" in " ".join(d["skip_reasons"])


def test_expert_quantisation_follows_the_checkpoint(rows):
    def first(pred):
        return _pick(rows, lambda r: pred(r) and vs.classify(r)[0] is not None)[0]
    # GPT-OSS (MXFP4 experts, 16-bit attention): 16-bit dense GEMMs and KV, although the row says
    # fp4/nvfp4 (no FP4 tensor cores on Hopper); the experts' kernel comes from the preset
    for system, backend, kernel in (("h200_sxm", "vllm", "w4a16_mxfp4"), ("b200_sxm", "vllm", "w4a16_mxfp4"),
                                    ("b200_sxm", "trtllm", "w4a8_mxfp4_mxfp8")):
        g = vs.classify(first(lambda r: r["model_path"] == "openai/gpt-oss-120b" and r["system"] == system
                              and r["backend"] == backend and r["precision"] == "fp4"))[0]
        assert (g["dtype"], g["moe_quant"], g["kv_dtype"]) == ("bf16", None, None)
        assert checkpoint_moe_quant(load_model("gpt-oss-120b"), backend,
                                    load_cluster(g["cluster"]).device) == kernel
    # Kimi-K2.5 INT4 (weight-only experts) is modelled, no longer refused
    k = vs.classify(first(lambda r: r["model_path"] == "moonshotai/Kimi-K2.5" and r["precision"] == "int4"))[0]
    assert (k["dtype"], k["moe_quant"]) == ("bf16", "int4_wo")
    # Qwen's own FP8 checkpoint is block-scaled, whatever the row's label
    q = first(lambda r: r["model_path"] == "Qwen/Qwen3-235B-A22B-FP8" and r["moe_quant_mode"] == "fp8")
    assert vs.classify(q)[0]["moe_quant"] == "fp8_block"
    # dense models carry none
    d = first(lambda r: r["model_path"] == "meta-llama/Llama-3.1-8B-Instruct")
    assert vs.classify(d)[0]["moe_quant"] is None


def test_disaggregated_rows_without_worker_counts_say_so(rows):
    # the 2026-03-25 export leaves prefill/decode_num_workers blank: one worker each is assumed,
    # and the report keeps those rows apart
    bare = _pick(rows, lambda r: r["mode"] == "disagg" and not r.get("prefill_num_workers")
                 and r["id"] not in vs.inferencex_shapes()
                 and r["silicon_data_source"].startswith("source_file=2026-03-25.csv") and vs.classify(r)[0])[0]
    case = vs.classify(bare)[0]
    assert case["pools_from"] == "1+1 assumed" and case["pools"]["prefill"]["count"] == 1
    assert vs._mode_group(case) == "disagg, 1+1 assumed"
    recorded = _pick(rows, lambda r: r["mode"] == "disagg" and r.get("prefill_num_workers") and vs.classify(r)[0])[0]
    assert vs.classify(recorded)[0]["pools_from"] == "row" and vs._mode_group(vs.classify(recorded)[0]) == "disagg"


def _row(rows, row_id):
    return _pick(rows, lambda r: r["id"] == row_id)[0]


def test_inferencex_matrix_gives_blank_disaggregated_rows_their_pools(rows):
    # the export records this GB200 FP8 row as prefill tp 8 / moe_ep 8 and decode tp 8 without
    # worker counts; InferenceX's matrix (dsr1-fp8-gb200-dynamo-trt at c27, 1k/1k) ran one DEP8
    # prefill worker (attention over 8 data-parallel ranks, EP 8) and three TEP8 decode workers
    case, why = vs.classify(_row(rows, "2026_04_06_deepseek_r1_gb200_trtllm_fp8_disagg_1024x1024_c27_tp8_ep8_1666"))
    assert why == "" and case["pools_from"] == "InferenceX matrix"
    assert case["pools"]["prefill"] == {"tp": 1, "pp": 1, "ep": 8, "count": 1, "dp": 8}
    assert case["pools"]["decode"] == {"tp": 8, "pp": 1, "ep": 8, "count": 3}
    assert vs._mode_group(case) == "disagg, InferenceX matrix"
    # a row the matrix ran with MTP speculative decoding is refused with the reason, not replayed
    case, why = vs.classify(_row(rows, "2026_04_06_deepseek_r1_gb200_trtllm_fp4_disagg_1024x1024_c180_tp4_ep4_1631"))
    assert case is None and "speculative decoding (mtp" in why and "dsr1-fp4-gb200-dynamo-trt" in why


def test_points_run_under_several_deployments_are_listed_not_replayed(rows):
    # InferenceX ran this H200 1k/1k point at c512 twice (2 DEP8 prefill + 7 DEP8 decode workers,
    # and 1 + 2 with MTP); the export does not say which run the row is, so neither (nor the 1+1
    # default) is replayed
    case, why = vs.classify(_row(rows, "2026_03_25_deepseek_r1_h200_sxm_trtllm_fp8_disagg_1024x1024_c512_tp8_0_ep8_0_366"))
    assert case is None and why == ("disaggregated: deployment unknown: InferenceX matrix dsr1-fp8-h200-dynamo-trt "
                                    "lists this point 2 deployments, 1 with MTP; the export does not say which")
    several = vs.inferencex_shapes("ambiguous")
    # where every candidate drafted with MTP, the row is an MTP row
    all_mtp = next(i for i, r in several.items() if r["mode"] == "disagg" and r["deployments"] == r["mtp_deployments"])
    case, why = vs.classify(_row(rows, all_mtp))
    assert case is None and why.startswith("disaggregated: speculative decoding (mtp, InferenceX matrix ")
    # an aggregated row records its layout; the matrix ran it with and without MTP
    agg = next(i for i, r in several.items() if r["mode"] == "agg")
    case, why = vs.classify(_row(rows, agg))
    assert case is None and why.startswith("deployment unknown: InferenceX matrix ") and "with and without MTP" in why
    # rows with one matrix entry are unaffected
    assert not set(several) & set(vs.inferencex_shapes()) and not set(several) & set(vs.inferencex_shapes("agg"))


def test_inferencex_matrix_file_agrees_with_its_recipe_names():
    # where the matrix names the recipe it launched (ctx<P>_gen<D>_..._mtp<k>.yaml), its prefill and
    # decode worker counts and MTP depth agree with the columns the tool read
    import re
    named = 0
    for r in vs.inferencex_shapes().values():
        m = re.search(r"ctx(\d+)_gen(\d+)_.*mtp(\d)", r["config_file"])
        if m:
            named += 1
            assert (int(m[1]), int(m[2])) == (int(r["prefill_num_workers"]), int(r["decode_num_workers"]))
            assert (m[3] != "0") == (r["spec_decoding"] == "mtp")
    assert named > 400


def test_inferencex_matrix_flags_aggregated_mtp_runs(rows):
    # aggregated rows record their layout but not MTP: the matrix entry that ran this one
    # (dsr1-fp8-b200-trt-mtp) had spec-decoding mtp, so it is listed, not replayed without drafts
    mtp = [r for r in vs.inferencex_shapes("agg").values() if r["config_key"] == "dsr1-fp8-b200-trt-mtp"]
    assert mtp and all(r["spec_decoding"] == "mtp" for r in mtp)
    case, why = vs.classify(_row(rows, mtp[0]["id"]))
    assert case is None and why.startswith("speculative decoding (mtp, InferenceX matrix dsr1-fp8-b200-trt-mtp)")
    # a run the matrix lists without speculative decoding replays as before
    plain = next(r for r in vs.inferencex_shapes("agg").values()
                 if r["spec_decoding"] == "none" and vs.classify(_row(rows, r["id"]))[0])
    assert vs.classify(_row(rows, plain["id"]))[0]["mode"] == "agg"
