"""How far to trust a serving prediction: the serving regimes file, its staleness guard, and the
labels `simulate serve` and `plan serve` print."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from simulator.models import load_model
from simulator.regimes import (SERVING_REGIMES_FILE, model_architecture, serving_fleet_validation,
                               serving_regime_key, serving_validation_of)


def _file() -> dict:
    return json.loads(SERVING_REGIMES_FILE.read_text())


def test_architecture_names_the_part_of_the_cost_model_a_prediction_leans_on():
    assert model_architecture(load_model("llama3.1-70b")) == "dense"
    assert model_architecture(load_model("qwen3-235b-a22b")) == "moe"
    assert model_architecture(load_model("qwen3.5-397b-a17b")) == "hybrid"  # Gated DeltaNet layers
    assert serving_regime_key("vllm", "h100-sxm", load_model("llama3.1-8b"), "agg") == "vllm/h100-sxm/dense/agg"


def test_every_fingerprint_replays_to_the_prediction_the_file_holds():
    """The file is rewritten by `clusterplan validate serving --regimes`; a cost-model change that
    moves any regime's cheapest row without rewriting it fails here."""
    import validation.serving as vs
    want = {fp["id"]: fp for reg in _file()["regimes"].values() for fp in reg["fingerprints"]}
    assert len(want) == len(_file()["regimes"]) >= 30
    seen = 0
    for row in vs.read_rows():
        fp = want.get(row["id"])
        if fp is None:
            continue
        case, why = vs.classify(row, "all")
        assert case is not None, why
        pred = vs.replay(case)
        assert pred["ttft_s"] == pytest.approx(fp["pred_ttft_s"], rel=1e-9), row["id"]
        assert pred["tpot_s"] == pytest.approx(fp["pred_tpot_s"], rel=1e-9), row["id"]
        seen += 1
    assert seen == len(want)


def test_regime_statistics_are_the_medians_of_the_rows_in_each_regime():
    import validation.serving as vs
    base = {"engine": "vllm", "cluster": "dgx-h100", "model": "llama3.1-8b", "mode": "agg",
            "osl": 128, "pred_ttft_s": 0.1, "pred_tpot_s": 0.01}
    rows = [{**base, "id": "a", "concurrency": 64, "ttft_error_pct": -30.0, "tpot_error_pct": 2.0},
            {**base, "id": "b", "concurrency": 4, "ttft_error_pct": 10.0, "tpot_error_pct": -8.0},
            {**base, "id": "c", "concurrency": 16, "ttft_error_pct": 20.0, "tpot_error_pct": 4.0},
            {**base, "id": "d", "engine": "sglang", "concurrency": 8, "ttft_error_pct": 5.0,
             "tpot_error_pct": 1.0}]
    out = vs.serving_regimes({"rows": rows})
    v = out["vllm/h100-sxm/dense/agg"]
    assert (v["rows"], v["ttft_median_abs_pct"], v["tpot_median_abs_pct"]) == (3, 20.0, 4.0)
    assert (v["ttft_bias_pct"], v["tpot_bias_pct"]) == (10.0, 2.0)
    assert (v["min_concurrency"], v["max_concurrency"]) == (4, 64)
    assert [f["id"] for f in v["fingerprints"]] == ["b"]  # the cheapest replay (C x osl)
    assert out["sglang/h100-sxm/dense/agg"]["rows"] == 1


def test_regimes_document_refuses_a_suite_that_is_not_the_default():
    import validation.serving as vs
    from hwmodels.errors import InputError
    doc = {"scope": "dense", "deployment": "recorded", "rows": [], "rows_modelled": 0,
           "protocol": {"client": "auto", "measured_per_slot": 10}}
    with pytest.raises(InputError, match="default suite"):
        vs.regimes_document(doc)


def test_a_validated_regime_quotes_its_measured_error_and_an_unmeasured_one_says_so():
    reg = _file()["regimes"]["trtllm/h100-sxm/dense/agg"]
    v = serving_validation_of("trtllm", "h100-sxm", load_model("llama3.1-70b"), "agg")
    assert v["validated"] and v["rows"] == reg["rows"] >= 100
    assert f"TTFT {reg['ttft_median_abs_pct']:.1f}%" in v["note"]
    none = serving_validation_of("trtllm", "l40s", load_model("llama3.1-8b"), "agg")
    assert not none["validated"] and none["note"] == "no measured deployment validates trtllm/l40s/dense/agg"
    # a fleet is validated only when every replica's regime is, and quotes the worst of them
    both = serving_fleet_validation(load_model("llama3.1-8b"), "vllm", ["h100-sxm", "h200"], "agg")
    h100, h200 = (_file()["regimes"][f"vllm/{d}/dense/agg"] for d in ("h100-sxm", "h200"))
    assert both["validated"] and both["ttft_median_abs_pct"] == max(h100["ttft_median_abs_pct"],
                                                                     h200["ttft_median_abs_pct"])
    mixed = serving_fleet_validation(load_model("llama3.1-8b"), "vllm", ["h100-sxm", "l40s"], "agg")
    assert not mixed["validated"] and mixed["ttft_median_abs_pct"] is None and len(mixed["regimes"]) == 2


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ui.cli", *args], capture_output=True, text=True)


def test_simulate_serve_prints_how_far_to_trust_it():
    r = _cli("simulate", "serve", "--model", "llama3.1-8b", "--cluster", "dgx-h100", "--plan", "tp=1",
             "--concurrency", "4", "--requests", "40", "--prompt-len", "512", "--output-len", "32")
    assert r.returncode == 0, r.stderr
    assert "trust: validated regime vllm/h100-sxm/dense/agg: median |error| TTFT" in r.stdout
    r = _cli("simulate", "serve", "--model", "llama3.1-8b", "--cluster", "l40s-server", "--plan", "tp=1",
             "--concurrency", "4", "--requests", "40", "--prompt-len", "512", "--output-len", "32", "--json")
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)["validation"]
    assert v["validated"] is False and v["regimes"][0]["regime"] == "vllm/l40s/dense/agg"


def test_plan_serve_labels_each_fleet_in_the_cli_and_the_dashboard():
    from simulator.regimes import fleet_trust_notes, validation_label
    from ui.state import fleet_rows
    assert validation_label({"validated": True, "ttft_median_abs_pct": 28.07, "tpot_median_abs_pct": 8.3}) == "28% / 8%"
    assert validation_label({"validated": False}) == "not validated"
    assert validation_label(None) == "-"
    m = load_model("llama3.1-8b")
    ok = serving_fleet_validation(m, "vllm", ["h100-sxm"], "agg")
    no = serving_fleet_validation(m, "vllm", ["h100-sxm", "l40s"], "agg")
    fleet = {"rank": 1, "cost_per_hour": 2.0, "mode": "aggregated", "num_devices": 1,
             "replicas": [{"device": "h100-sxm", "tp": 1, "count": 1, "role": "both"}],
             "predicted": {"ttft_s": 0.05, "tpot_s": 0.01}, "tokens_per_s_per_device": 100.0,
             "slo_attainment": 1.0, "headroom": 0.1, "meets_slo": True}
    doc = {"slo": {"percentile": 90}, "fleets": [{**fleet, "validation": ok}, {**fleet, "validation": no}]}
    cells = [r["validated (median |err| TTFT / TPOT)"] for r in fleet_rows(doc)]
    assert cells == [validation_label(ok), "not validated"] and cells[0].endswith("%")
    assert fleet_trust_notes(doc["fleets"]) == [ok["note"], no["regimes"][1]["note"]]


def test_validate_serving_regimes_refuses_a_partial_suite_with_exit_2():
    r = _cli("validate", "serving", "--regimes", "--limit", "3")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("clusterplan: error: --regimes needs the default suite")
    assert "Traceback" not in r.stderr


# ---- offline max throughput (validate throughput --regimes) -------------------------------------

def test_every_offline_fingerprint_replays_to_the_throughput_the_file_holds():
    from simulator.regimes import OFFLINE_REGIMES_FILE
    from validation.throughput import case_of, read_rows, replay
    regimes = json.loads(OFFLINE_REGIMES_FILE.read_text())["regimes"]
    want = {fp["name"]: fp["predicted"] for reg in regimes.values() for fp in reg["fingerprints"]}
    assert len(want) == len(regimes) >= 10
    seen = 0
    for row in read_rows():
        name = f"{row['model']} {row['gpu']} {row['precision']} tp={row['tp']} {row['isl']}/{row['osl']}"
        if name in want:
            assert replay(case_of(row))["predicted"] == pytest.approx(want[name], rel=1e-9), name
            seen += 1
    assert seen == len(want)


def test_offline_regime_quotes_the_published_cells_and_an_unmeasured_one_says_so():
    from simulator.regimes import OFFLINE_REGIMES_FILE, offline_regime_key, offline_validation_of
    reg = json.loads(OFFLINE_REGIMES_FILE.read_text())["regimes"]["trtllm-bench/h200/dense/fp8"]
    assert offline_regime_key("trtllm-bench", "h200", load_model("llama3.1-70b"), "fp8") == "trtllm-bench/h200/dense/fp8"
    v = offline_validation_of("trtllm-bench", "h200", load_model("llama3.1-8b"), "fp8")
    assert v["validated"] and v["rows"] == reg["rows"] >= 50
    assert f"throughput MAPE {reg['mape_pct']:.1f}%" in v["note"] and "TP 1, 2, 4, 8" in v["note"]
    none = offline_validation_of("vllm-throughput", "h200", load_model("llama3.1-8b"), "bf16")
    assert not none["validated"] and none["note"] == "no published offline run validates vllm-throughput/h200/dense/16-bit"


def test_simulate_serve_with_an_offline_client_names_the_throughput_regime():
    r = _cli("simulate", "serve", "--model", "llama3.1-8b", "--cluster", "dgx-h200", "--plan", "tp=1",
             "--client", "trtllm-bench", "--requests", "60", "--prompt-len", "128", "--output-len", "32",
             "--dtype", "fp8")
    assert r.returncode == 0, r.stderr
    assert "trust: validated regime trtllm-bench/h200/dense/fp8: throughput MAPE" in r.stdout


def test_validate_throughput_regimes_refuses_a_partial_run_with_exit_2():
    r = _cli("validate", "throughput", "--regimes", "--limit", "2")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == "clusterplan: error: --regimes needs every cell: drop --limit 2"
