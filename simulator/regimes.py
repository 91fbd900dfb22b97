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


def _regimes_in(path: Path) -> dict:
    """The "regimes" of a validated-regimes file ({} before one is written)."""
    if not path.exists():
        return {}
    with open(path) as f:
        return json.load(f)["regimes"]


@cache
def _measured() -> dict:
    return _regimes_in(REGIMES_FILE)


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


# ---- serving: the measured deployments that validate a serving prediction -----------------------
# `validate serving` replays measured deployments (aiconfigurator-core's silicon_sample.csv) and
# writes each serving regime's error to this file (`clusterplan validate serving --regimes`);
# tests/test_serving_regimes.py replays the rows it fingerprints and fails when it is stale.
SERVING_REGIMES_FILE = Path(__file__).parent / "data" / "validated_serving_regimes.json"


def model_architecture(model) -> str:
    """The part of the cost model a serving prediction leans on: 'hybrid' (recurrent mixers:
    Mamba-2, Gated DeltaNet), 'moe' (routed experts: the fused-MoE tables, token dispatch), or
    'dense'."""
    if model.num_state_layers:
        return "hybrid"
    return "moe" if model.is_moe else "dense"


def serving_regime_key(engine: str, device: str, model, mode: str) -> str:
    """'engine/device/architecture/mode', e.g. 'vllm/h100-sxm/dense/agg': each engine has its own
    scheduler policy and kernel tables, each device its own tables, and disaggregated serving adds
    the KV transfer and two pools."""
    return f"{engine}/{device}/{model_architecture(model)}/{mode}"


@cache
def _serving_measured() -> dict:
    return _regimes_in(SERVING_REGIMES_FILE)


def serving_validation_of(engine: str, device: str, model, mode: str) -> dict:
    """One serving regime and its measured error (median |error| of the mean TTFT and TPOT over
    the measured deployments), or why none applies."""
    key = serving_regime_key(engine, device, model, mode)
    row = _serving_measured().get(key)
    if row is None:
        return {"regime": key, "validated": False, "rows": 0, "ttft_median_abs_pct": None,
                "tpot_median_abs_pct": None, "note": f"no measured deployment validates {key}"}
    note = (f"validated regime {key}: median |error| TTFT {row['ttft_median_abs_pct']:.1f}%, "
            f"TPOT {row['tpot_median_abs_pct']:.1f}% over {row['rows']} measured deployments "
            f"(closed-loop benchmark clients, concurrency {row['min_concurrency']}-{row['max_concurrency']})")
    return {"regime": key, "validated": True, **row, "note": note}


def serving_fleet_validation(model, engine: str, devices, mode: str) -> dict:
    """The regimes of a fleet's replicas (`devices`: their device names; `mode` agg | disagg), one
    per distinct regime, and whether every one is validated; `ttft/tpot_median_abs_pct` are the
    worst of them (None when one is not validated)."""
    seen: dict = {}
    for device in devices:
        v = serving_validation_of(engine, device, model, mode)
        seen.setdefault(v["regime"], v)
    vs = list(seen.values())
    ok = all(v["validated"] for v in vs)
    worst = lambda k: max(v[k] for v in vs) if ok else None  # noqa: E731
    return {"validated": ok, "regimes": vs, "ttft_median_abs_pct": worst("ttft_median_abs_pct"),
            "tpot_median_abs_pct": worst("tpot_median_abs_pct"),
            "note": "; ".join(v["note"] for v in vs)}


def validation_label(v: dict | None) -> str:
    """A fleet's `serving_fleet_validation` in a table cell: worst median |error| of TTFT / TPOT,
    "not validated", or "-" where none was computed."""
    if not v:
        return "-"
    if not v["validated"]:
        return "not validated"
    return f"{v['ttft_median_abs_pct']:.0f}% / {v['tpot_median_abs_pct']:.0f}%"


def fleet_trust_notes(fleets: list) -> list[str]:
    """The note of every distinct regime among `plan serve` fleets' validations, in order."""
    return list({r["regime"]: r["note"] for f in fleets
                 for r in (f.get("validation") or {}).get("regimes", [])}.values())


def serving_plan_validation(model, plan) -> dict:
    """`serving_fleet_validation` of a `ServingPlan`'s replica groups."""
    return serving_fleet_validation(model, plan.engine, [g.cluster.device.name for g in plan.groups],
                                    "disagg" if plan.disaggregated else "agg")


# ---- offline max throughput: the published cells that validate an offline-client prediction ----
# `clusterplan validate throughput --regimes` writes it from the TensorRT-LLM v0.14 table.
OFFLINE_REGIMES_FILE = Path(__file__).parent / "data" / "validated_offline_regimes.json"


def offline_regime_key(client: str, device: str, model, dtype: str) -> str:
    """'client/device/architecture/precision', e.g. 'trtllm-bench/h100-sxm/dense/fp8': the tool
    sets the engine's limits, the precision picks the kernel tables and the KV cache's size."""
    return f"{client}/{device}/{model_architecture(model)}/{_PRECISION.get(dtype, dtype)}"


@cache
def _offline_measured() -> dict:
    return _regimes_in(OFFLINE_REGIMES_FILE)


def offline_validation_of(client: str, device: str, model, dtype: str) -> dict:
    """One offline regime and its measured error (MAPE of the output throughput over the
    published cells), or why none applies."""
    key = offline_regime_key(client, device, model, dtype)
    row = _offline_measured().get(key)
    if row is None:
        return {"regime": key, "validated": False, "rows": 0, "mape_pct": None,
                "note": f"no published offline run validates {key}"}
    note = (f"validated regime {key}: throughput MAPE {row['mape_pct']:.1f}% (mean {row['bias_pct']:+.1f}%, "
            f"worst {row['max_abs_pct']:.0f}%) over {row['rows']} published cells at TP "
            f"{', '.join(str(t) for t in row['tp'])}")
    return {"regime": key, "validated": True, **row, "note": note}
