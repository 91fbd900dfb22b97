"""What a serving run measured: `MetricsRecorder` collects it during the simulation and
`ServingReport` summarises it.

Definitions (vLLM benchmarks/benchmark_serving.py, docs/modeling.md §4.4 "Metrics"):
    TTFT  first token time − arrival (queueing + prefill; + KV transfer when disaggregated)
    TPOT  (E2E − TTFT) / (output tokens − 1), per request with more than one output token
    ITL   every gap between two consecutive tokens of a request; a decode iteration of length d
          contributes one gap d for each request it advanced, a recompute after preemption one
          gap from the last token before it
    E2E   finish − arrival
TTFT and E2E run from the client's clock start (`Request.clock_s`: the arrival at the server,
or the slot acquisition for a client that starts its clock there, simulator/serving/clients.py).
Statistics cover the requests issued after the warm-up ones that finished. Throughput counts
their output tokens over the span from the first of their arrivals to the last of their
finishes; goodput counts the requests that met both SLOs over the same span (vLLM
benchmark_serving `request_goodput`). `max_goodput_rate` in `simulator.serving` searches the
highest rate whose SLO attainment stays >= 90% (DistServe, Zhong et al. OSDI'24 §2.3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

PERCENTILES = (50, 90, 99)
TIMELINE_POINTS = 100


def summary(values) -> dict:
    a = np.asarray(values, dtype=float)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    out = {"mean": float(a.mean())}
    for p, v in zip(PERCENTILES, np.percentile(a, PERCENTILES)):
        out[f"p{p}"] = float(v)
    return out


# What each benchmark client prints for a latency metric (simulator/serving/clients.py):
#   bench-serving: mean, median, population std and the --metric-percentiles (default 99), all
#     with numpy's linear-interpolation percentile (kimbochen/bench_serving benchmark_serving.py
#     calculate_metrics; vllm benchmarks/benchmark_serving.py)
#   aiperf: avg, min, max, std and p1 p5 p10 p25 p50 p75 p90 p95 p99 (ai-dynamo/aiperf profile
#     export, MetricResult fields)
CLIENT_STATS = {
    "bench-serving": ("mean", "median", "std", "p99"),
    "aiperf": ("avg", "min", "max", "std", "p1", "p5", "p10", "p25", "p50", "p75", "p90", "p95", "p99"),
}


def client_summary(values, client: str, percentiles=None) -> dict:
    """The statistics `client` reports for these per-request values (seconds); clients without
    their own set get `summary`'s. `percentiles` overrides bench-serving's --metric-percentiles."""
    a = np.asarray(values, dtype=float)
    a = a[np.isfinite(a)]
    names = CLIENT_STATS.get(client)
    if names is None:
        return summary(a)
    if client == "bench-serving" and percentiles:
        names = ("mean", "median", "std") + tuple(f"p{_pname(p)}" for p in percentiles)
    if a.size == 0:
        return {n: None for n in names}
    out = {}
    for n in names:
        if n in ("mean", "avg"):
            out[n] = float(a.mean())
        elif n == "median":
            out[n] = float(np.median(a))
        elif n == "std":
            out[n] = float(a.std())  # population std (numpy default, ddof = 0), as both clients
        elif n == "min":
            out[n] = float(a.min())
        elif n == "max":
            out[n] = float(a.max())
        else:
            out[n] = float(np.percentile(a, float(n[1:])))
    return out


def _pname(p: float) -> str:
    return str(int(p)) if float(p).is_integer() else str(p)


def weighted_summary(values, weights) -> dict:
    v = np.asarray(values, dtype=float)
    w = np.asarray(weights, dtype=float)
    keep = (w > 0) & np.isfinite(v)
    v, w = v[keep], w[keep]
    if v.size == 0:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    cw = np.cumsum(w)
    out = {"mean": float((v * w).sum() / cw[-1])}
    for p in PERCENTILES:
        i = int(np.searchsorted(cw, p / 100.0 * cw[-1], side="left"))
        out[f"p{p}"] = float(v[min(i, v.size - 1)])
    return out


class MetricsRecorder:
    """Per-iteration records of every replica and the gaps around preemptions."""

    def __init__(self, num_replicas: int, chrome_trace: bool = False):
        self.it_end = [[] for _ in range(num_replicas)]
        self.it_dur = [[] for _ in range(num_replicas)]
        self.it_dec = [[] for _ in range(num_replicas)]
        self.it_pre = [[] for _ in range(num_replicas)]
        self.it_kv = [[] for _ in range(num_replicas)]
        self.it_steps = [[] for _ in range(num_replicas)]
        self.preempt_times: list[float] = []
        self.stall_gaps: list[tuple[float, float]] = []  # (time, gap)
        self.chrome = [] if chrome_trace else None

    def iteration(self, replica: int, end: float, dur: float, n_dec: int, prefill_tokens: int,
                  kv_used: int, n_prefills: int = 0, steps: int = 1) -> None:
        """`steps` iterations of mean duration `dur` ending at `end` (steps > 1: a run of
        decode-only iterations simulated as one event)."""
        self.it_end[replica].append(end)
        self.it_dur[replica].append(dur)
        self.it_steps[replica].append(steps)
        self.it_dec[replica].append(n_dec)
        self.it_pre[replica].append(prefill_tokens)
        self.it_kv[replica].append(kv_used)
        if self.chrome is not None:
            self.chrome.append({"name": "decode" if not prefill_tokens else "batch", "ph": "X",
                                "pid": replica, "tid": 0, "ts": (end - dur * steps) * 1e6,
                                "dur": dur * steps * 1e6,
                                "args": {"decode": n_dec, "prefill_tokens": prefill_tokens,
                                         "prefills": n_prefills, "kv_blocks": kv_used,
                                         "iterations": steps}})


@dataclass
class ServingReport:
    """TTFT/TPOT/ITL/E2E percentiles, throughput, goodput and KV usage of one run (seconds)."""
    ttft_s: dict
    tpot_s: dict
    itl_s: dict
    e2e_s: dict
    queue_s: dict
    throughput_requests_per_s: float
    throughput_tokens_per_s: float
    throughput_input_tokens_per_s: float
    tokens_per_s_per_device: float
    goodput_requests_per_s: float
    slo_attainment: float
    num_requests: int
    completed: int
    measured: int
    rejected: int
    duration_s: float
    num_devices: int
    preemptions: int
    prefix_cache_hit_rate: float
    kv_utilization: dict
    preemptions_over_time: dict
    replicas: list
    plan: dict = field(default_factory=dict)
    workload: dict = field(default_factory=dict)
    slo: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    client_metrics: dict = field(default_factory=dict)  # {metric: stats as the client prints them}

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def build_report(requests, recorder: MetricsRecorder, replicas, workload, plan: dict,
                 num_devices: int, notes: list, rejected: int) -> ServingReport:
    warm = workload.warmup_requests
    done = [r for r in requests if r.id >= warm and math.isfinite(r.finish_s)]
    ttft = np.array([r.ttft_s for r in done])
    e2e = np.array([r.e2e_s for r in done])
    tpot = np.array([r.tpot_s for r in done])
    out_tokens = sum(r.output_len for r in done)
    in_tokens = sum(r.prompt_len for r in done)
    if done:
        start = min(r.arrival_s for r in done)
        end = max(r.finish_s for r in done)
        span = max(end - start, 1e-12)
    else:
        start, end, span = 0.0, 0.0, math.nan
    ok = [r.ttft_s <= workload.slo_ttft_s
          and (r.output_len <= 1 or r.tpot_s <= workload.slo_tpot_s) for r in done]
    attained = sum(ok)
    # ITL: decode iterations (each a gap for every request it advanced) after the first
    # measured arrival, plus gaps that span a preemption
    vals, wts = [], []
    for i in range(len(recorder.it_end)):
        ends = np.asarray(recorder.it_end[i])
        keep = ends >= start
        vals.append(np.asarray(recorder.it_dur[i])[keep])
        wts.append((np.asarray(recorder.it_dec[i], dtype=float)
                    * np.asarray(recorder.it_steps[i], dtype=float))[keep])
    gaps = [g for t, g in recorder.stall_gaps if t >= start]
    vals.append(np.asarray(gaps))
    wts.append(np.ones(len(gaps)))
    itl = weighted_summary(np.concatenate(vals) if vals else [], np.concatenate(wts) if wts else [])
    # queueing: arrival to the first iteration that computed any of the prompt ≈ TTFT − prefill;
    # reported as TTFT minus the replica's idle prefill time of that prompt
    queue = []
    for r in done:
        rep = replicas[r.replica] if 0 <= r.replica < len(replicas) else None
        if rep is not None:
            queue.append(max(0.0, r.ttft_s - rep.idle_prefill_s(r.prompt_len)))
    kv_util, preempt_tl = _timelines(recorder, replicas, requests)
    hits = sum(rep.kv.hits for rep in replicas)
    looks = sum(rep.kv.lookups for rep in replicas)
    return ServingReport(
        ttft_s=summary(ttft), tpot_s=summary(tpot), itl_s=itl, e2e_s=summary(e2e),
        queue_s=summary(queue),
        throughput_requests_per_s=len(done) / span if done else 0.0,
        throughput_tokens_per_s=out_tokens / span if done else 0.0,
        throughput_input_tokens_per_s=in_tokens / span if done else 0.0,
        tokens_per_s_per_device=out_tokens / span / num_devices if done else 0.0,
        goodput_requests_per_s=attained / span if done else 0.0,
        slo_attainment=attained / len(done) if done else 0.0,
        num_requests=len(requests), completed=sum(1 for r in requests if math.isfinite(r.finish_s)),
        measured=len(done), rejected=rejected, duration_s=end,
        num_devices=num_devices, preemptions=sum(rep.scheduler.preemptions for rep in replicas),
        prefix_cache_hit_rate=hits / looks if looks else 0.0,
        kv_utilization=kv_util, preemptions_over_time=preempt_tl,
        replicas=[rep.describe() for rep in replicas], plan=plan, workload=workload.describe(),
        slo={"ttft_s": _finite(workload.slo_ttft_s), "tpot_s": _finite(workload.slo_tpot_s)},
        notes=notes,
        client_metrics=({"ttft_s": client_summary(ttft, workload.client),
                         "tpot_s": client_summary(tpot, workload.client),
                         "e2e_s": client_summary(e2e, workload.client)}
                        if workload.client in CLIENT_STATS else {}))


def _finite(x: float):
    return x if math.isfinite(x) else None


def _timelines(recorder: MetricsRecorder, replicas, requests) -> tuple[dict, dict]:
    """KV utilisation (mean and max over replicas' iterations, and a time series) and
    preemptions per time bin."""
    ends = [np.asarray(e) for e in recorder.it_end]
    t_end = max((e[-1] for e in ends if e.size), default=0.0)
    bins = np.linspace(0.0, t_end, TIMELINE_POINTS + 1) if t_end > 0 else np.array([0.0, 1.0])
    util_sum = np.zeros(len(bins) - 1)
    util_n = np.zeros(len(bins) - 1)
    all_u, all_w, peak = [], [], 0.0
    for rep, e, dur, kv, st in zip(replicas, ends, recorder.it_dur, recorder.it_kv, recorder.it_steps):
        if not e.size:
            continue
        u = np.asarray(kv, dtype=float) / rep.kv.num_blocks
        d = np.asarray(dur) * np.asarray(st)
        idx = np.clip(np.searchsorted(bins, e, side="right") - 1, 0, len(bins) - 2)
        np.add.at(util_sum, idx, u * d)
        np.add.at(util_n, idx, d)
        all_u.append(u)
        all_w.append(d)
        peak = max(peak, float(u.max()))
    mean = float(np.concatenate(all_u) @ np.concatenate(all_w) / np.concatenate(all_w).sum()) if all_u else 0.0
    series = np.where(util_n > 0, util_sum / np.maximum(util_n, 1e-300), np.nan)
    kv = {"mean": mean, "max": peak, "time_s": bins[1:].tolist(),
          "utilization": [None if not math.isfinite(x) else float(x) for x in series]}
    counts = np.zeros(len(bins) - 1, dtype=int)
    if recorder.preempt_times:
        idx = np.clip(np.searchsorted(bins, recorder.preempt_times, side="right") - 1, 0, len(bins) - 2)
        np.add.at(counts, idx, 1)
    return kv, {"time_s": bins[1:].tolist(), "count": counts.tolist()}
