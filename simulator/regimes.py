"""How far to trust a training prediction: the published runs that validate its regime.

A regime is what decides which parts of the model a prediction leans on: the framework family
(Megatron-style TP/PP with ZeRO ≤ 2, FSDP/ZeRO-3, or plain data parallelism), the device and the
precision class. `validate published` measures the engine's error on each regime it covers and
writes it to `simulator/data/validated_regimes.json` (`python -m validation.published --regimes`;
tests/test_published.py fails when the file is stale). A prediction outside every measured regime,
or beyond the largest job that validated it, says so plainly instead of borrowing a number.
"""
from __future__ import annotations

import json
from functools import cache
from pathlib import Path

REGIMES_FILE = Path(__file__).parent / "data" / "validated_regimes.json"
_PRECISION = {"bf16": "16-bit", "fp16": "16-bit", "fp8": "fp8", "fp4": "fp4"}


def regime_key(job, plan, cluster) -> str:
    """'family/device/precision', e.g. 'megatron/a100-sxm-80g/16-bit'. Context and expert
    parallelism lean on parts of the model (ring attention exchange, token all-to-alls) that plain
    TP/PP runs never exercise: a Megatron-style plan that uses them is its own regime
    ('megatron+cp', 'megatron+ep', 'megatron+cp+ep'), validated only by published runs that did."""
    if plan.zero == 3:
        family = "fsdp"
    elif plan.tp > 1 or plan.pp > 1 or plan.cp > 1 or plan.ep > 1:
        family = "megatron" + ("+cp" if plan.cp > 1 else "") + ("+ep" if plan.ep > 1 else "")
    else:
        family = "ddp"
    return f"{family}/{cluster.device.name}/{_PRECISION[job.dtype]}"


@cache
def _measured() -> dict:
    if not REGIMES_FILE.exists():
        return {}
    with open(REGIMES_FILE) as f:
        return json.load(f)["regimes"]


def validation_of(job, plan, cluster) -> dict:
    """The regime of a prediction and its measured error on the published tables, or why none
    applies: {"regime", "validated", "cases", "mape_pct", "max_devices", "tables", "note"}."""
    key = regime_key(job, plan, cluster)
    row = _measured().get(key)
    n = cluster.num_devices
    if row is None:
        return {"regime": key, "validated": False, "cases": 0, "mape_pct": None, "max_devices": 0,
                "tables": [], "note": f"no published run validates {key}"}
    ok = n <= row["max_devices"]
    note = (f"validated regime {key}: MAPE {row['mape_pct']:.1f}% over {row['cases']} published runs "
            f"(up to {row['max_devices']:,} devices)") if ok else (
        f"not validated at this scale: published runs of {key} reach {row['max_devices']:,} devices "
        f"(MAPE {row['mape_pct']:.1f}%), this job has {n:,}")
    return {"regime": key, "validated": ok, **row, "note": note}
