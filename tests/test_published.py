"""Validation against published training throughput (issue #2's accuracy bar, and NeMo 24.07 on
H100). The rows are never used to fit anything; these tests pin the errors so that a model
change that worsens them fails."""
from __future__ import annotations

import json

import pytest

from ui.cli import main
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
    assert set(d["tables"]) == {"megatron-2021-table1", "nemo-24.07"}
    assert d["cases"] == json.loads(json.dumps(published_report()["cases"]))
