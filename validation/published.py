"""Published training throughput vs the simulator's prediction (validation only: no constant is
fitted to these rows, docs/design.md §5)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from hwmodels.clusters import load_cluster
from hwmodels.errors import InputError
from hwmodels.fileio import write_text_atomic
from simulator.analytic import estimate
from simulator.models import load_model, megatron_gpt
from simulator.regimes import REGIMES_FILE, regime_key
from simulator.software import apply_software, get_software
from simulator.training import TrainingJob, TrainingPlan

DATA = Path(__file__).parent / "data" / "published"
TABLE1 = DATA / "megatron2021_table1_weak_scaling_a100.csv"
NEMO = DATA / "nemo_2407_perf_summary_h100_fp8.csv"
LLMFOUNDRY = DATA / "llmfoundry_mpt_a100_fsdp.csv"
# MPT sizes (layers, d_model, heads): mosaicml/llm-foundry scripts/train/yamls/pretrain/mpt-*.yaml;
# vocab 50368 (GPT-NeoX tokenizer padded); GELU MLP of 4·d, learned positions in these benchmarks
# (the NumParams column grows by seq·d with the sequence: tests/test_published.py checks it).
MPT = {"125m": (12, 768, 12), "350m": (24, 1024, 16), "760m": (24, 1536, 12), "1b": (24, 2048, 16),
       "3b": (32, 2560, 20), "7b": (32, 4096, 32), "13b": (40, 5120, 40), "30b": (48, 7168, 64),
       "70b": (80, 8192, 64)}
MPT_VOCAB = 50368
# NeMo model names -> our presets (GPT3-5B/20B and Nemotron have no preset: not modelled)
NEMO_MODELS = {"GPT3-175B": "gpt3-175b", "LLAMA2-7B": "llama2-7b", "LLAMA2-13B": "llama2-13b",
               "LLAMA2-70B": "llama2-70b", "LLAMA3-8B": "llama3-8b", "LLAMA3-70B": "llama3-70b"}
MICRO_BATCHES = (1, 2, 4, 8)


def megatron2021_plans(job: TrainingJob, tp: int, pp: int, dp: int):
    """The plans Megatron-LM 2021 could have run for a Table 1 row: its TP and PP, full
    recompute, micro-batch size and interleaving free (Table 1 does not print them; §5.1 says
    the interleaved schedule is used where it helps)."""
    L = job.model.num_layers
    for mb in MICRO_BATCHES:
        if job.global_batch % (dp * mb):
            continue
        m = job.global_batch // (dp * mb)
        yield TrainingPlan(dp=dp, tp=tp, pp=pp, mb=mb, recompute="full", schedule="1f1b", zero=0)
        if pp > 1 and m % pp == 0:
            for v in range(2, L // pp + 1):
                if L % (pp * v) == 0:
                    yield TrainingPlan(dp=dp, tp=tp, pp=pp, mb=mb, recompute="full",
                                       schedule="interleaved", vpp=v, zero=0)


def _run(fn, rows: list, executor=None) -> list:
    """[fn(row) for row in rows], on `executor` (simulator.executor) when given."""
    return executor.map(fn, rows) if executor is not None else [fn(r) for r in rows]


def _table1_case(r: dict) -> dict:
    """The case of one Table 1 row: the best plan Megatron-LM 2021 could have run."""
    h, L, a = int(r["hidden_size"]), int(r["num_layers"]), int(r["attention_heads"])
    tp, pp, gpus = int(r["tensor_parallel"]), int(r["pipeline_parallel"]), int(r["num_gpus"])
    s, B, V = int(r["seq_len"]), int(r["global_batch_size"]), int(r["vocab_size"])
    model = megatron_gpt(f"gpt-{r['params_billion']}b", L, h, a, vocab_size=V, seq_len=s)
    # Megatron-LM 2021 software (simulator/software.py): fp16, unfused attention with dropout,
    # gradient all-reduce after backward (no overlap), no distributed optimizer.
    job = apply_software(TrainingJob(model=model, seq_len=s, global_batch=B, dtype="fp16"), "megatron-lm-2021")
    cluster = load_cluster("dgx-a100", nodes=gpus // 8)
    best = None
    for plan in megatron2021_plans(job, tp, pp, gpus // (tp * pp)):
        try:
            est = estimate(job, plan, cluster)
        except InputError:
            continue
        if est.fits and (best is None or est.step_time_s < best.step_time_s):
            best = est
    if best is None:
        raise RuntimeError(f"no plan fits for Table 1 row {r['params_billion']}B")
    measured = float(r["achieved_tflops_per_gpu"])
    pred = best.tflops_per_device
    return {"name": f"GPT {r['params_billion']}B, {gpus} A100, tp={tp} pp={pp}",
            "predicted": round(pred, 2), "measured": measured, "unit": "TFLOP/s per GPU",
            "table": "megatron-2021-table1",
            "error_pct": round(100 * (pred - measured) / measured, 2),
            "plan": best.plan.to_string(), "step_time_s": best.step_time_s,
            "breakdown_s": best.breakdown_s, "regime": regime_key(job, best.plan, cluster),
            "devices": cluster.num_devices}


def megatron_table1(executor=None) -> dict:
    with open(TABLE1) as f:
        rows = list(csv.DictReader(f))
    cases = _run(_table1_case, rows, executor)
    return {"suite": "published", "source": "Narayanan et al. 2021 (arXiv 2104.04473) Table 1",
            "cases": cases, **{k: v for k, v in _stats(cases).items() if k != "cases"}}


def nemo_2407(executor=None) -> list[dict]:
    """NeMo 24.07 pretraining on DGX-H100 in FP8 (the latest doc version of the table): tokens/s
    per GPU with each row's own TP/PP/CP/VP and micro-batch. NeMo's software as its performance
    recipes run it: Transformer Engine FP8 GEMMs with bf16 flash attention, sequence parallelism
    with TP, the distributed optimizer with overlapped gradient reduce-scatter and parameter
    all-gather, TP communication overlap (userbuffers), P2P overlap with the interleaved
    schedule; dropout only in the GPT-3 configs. Recompute is not in the table: the first of
    none/selective/full that fits in 80 GB."""
    with open(NEMO) as f:
        rows = [r for r in csv.DictReader(f) if r["section"] == "Pretraining"]
    latest = max(r["doc_version"] for r in rows)
    rows = [r for r in rows if r["doc_version"] == latest and r["Model"] in NEMO_MODELS]
    return _run(_nemo_case, rows, executor)


def _nemo_case(r: dict) -> dict:
    """The case of one NeMo 24.07 row."""
    model = load_model(NEMO_MODELS[r["Model"]])
    gpus, seq = int(r["#-GPUs"]), int(float(r["Sequence Length"]))
    tp, pp, cp, vp = (int(float(r[k] or 1)) for k in ("TP", "PP", "CP", "VP"))
    job = apply_software(TrainingJob(model=model, seq_len=seq, global_batch=int(r["GBS"]), dtype="fp8"),
                         "nemo-24.07", overlap_p2p_comm=vp > 1, dropout=r["Model"].startswith("GPT3"))
    cluster = load_cluster("dgx-h100", nodes=gpus // 8)
    est = None
    for rc in ("none", "selective", "full"):
        plan = TrainingPlan(dp=gpus // (tp * pp * cp), tp=tp, pp=pp, cp=cp, vpp=vp, mb=int(r["MBS"]),
                            schedule="interleaved" if vp > 1 else "1f1b", sp=tp > 1, zero=1, recompute=rc)
        est = estimate(job, plan, cluster)
        if est.fits:
            break
    measured = float(r["Tokens / sec / GPU"])
    pred = est.tokens_per_s / gpus
    return {"name": f"NeMo {r['Model']}, {gpus} H100 FP8, tp={tp} pp={pp} cp={cp} vp={vp}",
            "predicted": round(pred, 1), "measured": measured, "unit": "tokens/s per GPU",
            "error_pct": round(100 * (pred - measured) / measured, 2), "table": "nemo-24.07",
            "plan": est.plan.to_string(), "step_time_s": est.step_time_s,
            "breakdown_s": est.breakdown_s, "regime": regime_key(job, est.plan, cluster),
            "devices": cluster.num_devices}


def nemo_report() -> dict:
    cases = nemo_2407()
    return {"suite": "published", "source": "NeMo 24.07 performance summary, DGX-H100 FP8",
            "cases": cases, **{k: v for k, v in _stats(cases).items() if k != "cases"}}


def mpt_model(size: str, seq_len: int):
    L, d, a = MPT[size]
    return megatron_gpt(f"mpt-{size}", L, d, a, vocab_size=MPT_VOCAB, seq_len=seq_len)


def _llmfoundry_case(r: dict) -> dict:
    """One llm-foundry row: its model, GPUs, micro-batch, global batch and activation
    checkpointing as printed, on the `llm-foundry` software profile (FSDP FULL_SHARD, the
    Triton FlashAttention port)."""
    seq, gpus, mb = int(r["SeqLen (T)"]), int(r["# GPUs"]), int(r["MicroBatchSize"])
    job = apply_software(TrainingJob(model=mpt_model(r["Model"], seq), seq_len=seq,
                                     global_batch=int(r["GlobalBatchSize"]), dtype="bf16"), "llm-foundry")
    preset = {"a100_80gb": "dgx-a100", "a100_40gb": "dgx-a100-40g"}[r["GPU"]]
    cluster = load_cluster(preset, nodes=max(1, gpus // 8))
    plan = TrainingPlan(dp=gpus, mb=mb, recompute="full" if r["Activation Checkpointing"] == "True" else "none",
                        **get_software("llm-foundry").plan_defaults)
    est = estimate(job, plan, cluster)
    measured = float(r["Throughput (T/s/GPU)"])
    pred = est.tokens_per_s / gpus
    return {"name": f"MPT-{r['Model']}, {gpus} {r['GPU']}, seq {seq}, mb={mb}",
            "predicted": round(pred, 1), "measured": measured, "unit": "tokens/s per GPU",
            "error_pct": round(100 * (pred - measured) / measured, 2), "table": "llm-foundry-fsdp",
            "size": r["Model"], "plan": est.plan.to_string(), "step_time_s": est.step_time_s,
            "breakdown_s": est.breakdown_s, "regime": regime_key(job, est.plan, cluster),
            "devices": cluster.num_devices}


def llmfoundry_fsdp(executor=None) -> list[dict]:
    """llm-foundry's MPT throughput table on A100 (PyTorch FSDP; validation only)."""
    with open(LLMFOUNDRY) as f:
        rows = list(csv.DictReader(f))
    return _run(_llmfoundry_case, rows, executor)


def _stats(cases: list[dict]) -> dict:
    errs = [abs(c["error_pct"]) for c in cases]
    return {"cases": len(cases), "mape_pct": round(sum(errs) / len(errs), 2), "max_error_pct": round(max(errs), 2)}


def published_report(executor=None) -> dict:
    """Every published end-to-end table the simulator is compared with; the cases run on
    `executor` (simulator.executor) when given, with the same results."""
    megatron, nemo = megatron_table1(executor)["cases"], nemo_2407(executor)
    foundry = llmfoundry_fsdp(executor)
    cases = megatron + nemo + foundry
    return {"suite": "published", "cases": cases, **{k: v for k, v in _stats(cases).items() if k != "cases"},
            "tables": {"megatron-2021-table1": {"source": "Narayanan et al. 2021 (arXiv 2104.04473) Table 1",
                                                **_stats(megatron)},
                       "nemo-24.07": {"source": "NeMo 24.07 performance summary, DGX-H100 FP8 (doc "
                                                "version of 2024-11-27)", **_stats(nemo)},
                       "llm-foundry-fsdp": {"source": "llm-foundry MPT benchmarks, A100 40/80GB, PyTorch FSDP "
                                                      "(scripts/train/benchmarking/README.md)",
                                            **_stats(foundry), "by_size": _by_size(foundry)}}}


def _by_size(cases: list[dict]) -> dict:
    """Mean signed and absolute error per model size (the FSDP table's size classes)."""
    out = {}
    for c in cases:
        out.setdefault(c["size"], []).append(c["error_pct"])
    return {k: {"cases": len(v), "mean_error_pct": round(sum(v) / len(v), 2),
                "mape_pct": round(sum(map(abs, v)) / len(v), 2)} for k, v in out.items()}


def format_report(report: dict) -> str:
    lines = []
    for key, meta in report["tables"].items():
        cases = [c for c in report["cases"] if c["table"] == key]
        unit = cases[0]["unit"]
        lines += [f"{meta['source']}: predicted vs published {unit}", "",
                  f"{'case':<52} {'predicted':>9} {'published':>9} {'error':>7}  plan"]
        for c in cases:
            lines.append(f"{c['name']:<52} {c['predicted']:9.1f} {c['measured']:9.1f} {c['error_pct']:+6.1f}%  {c['plan']}")
        lines += ["", f"MAPE {meta['mape_pct']:.1f}%   max |error| {meta['max_error_pct']:.1f}%"]
        if "by_size" in meta:
            lines.append("by model size: " + "  ".join(f"{k} {v['mean_error_pct']:+.1f}% (MAPE {v['mape_pct']:.1f}%)"
                                                       for k, v in meta["by_size"].items()))
        lines += ["", ""]
    lines += ["summary by table", f"{'table':<22} {'cases':>5} {'MAPE':>6} {'max':>6}"]
    for key, meta in report["tables"].items():
        lines.append(f"{key:<22} {meta['cases']:>5} {meta['mape_pct']:5.1f}% {meta['max_error_pct']:5.1f}%")
    lines.append(f"all {len(report['cases'])} cases: MAPE {report['mape_pct']:.1f}%   max |error| {report['max_error_pct']:.1f}%")
    return "\n".join(lines)


def regimes(report: dict) -> dict:
    """Per regime (simulator.regimes.regime_key) of the published cases: how many, their MAPE,
    the largest job and the tables they come from: what `simulator/data/validated_regimes.json`
    holds."""
    out: dict = {}
    for c in report["cases"]:
        r = out.setdefault(c["regime"], {"errs": [], "max_devices": 0, "tables": set()})
        r["errs"].append(abs(c["error_pct"]))
        r["max_devices"] = max(r["max_devices"], c["devices"])
        r["tables"].add(c["table"])
    return {k: {"cases": len(v["errs"]), "mape_pct": round(sum(v["errs"]) / len(v["errs"]), 2),
                "max_devices": v["max_devices"], "tables": sorted(v["tables"])} for k, v in sorted(out.items())}


def regimes_document(report: dict) -> str:
    return json.dumps({"written_by": "python -m validation.published --regimes", "regimes": regimes(report)},
                      indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":  # python -m validation.published --regimes: rewrite the regimes file
    import sys
    if sys.argv[1:] != ["--regimes"]:
        sys.exit("usage: python -m validation.published --regimes")
    write_text_atomic(REGIMES_FILE, regimes_document(published_report()))
    print(f"wrote {REGIMES_FILE}")
