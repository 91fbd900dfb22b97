"""Benchmark clients as workloads: the request pattern and the clock of the tool that measured a
serving deployment (docs/modeling.md, serving section "Benchmark clients").

A measured TTFT belongs to the server *and* to the client that produced it, so a replay must send
what that client sent and time it the way that client timed it. Each client here turns its own
command-line settings into a `ServingWorkload`:

    bench-serving   vLLM/InferenceMAX `benchmark_serving.py` (kimbochen/bench_serving, the client
                    of the InferenceMAX workflows): `--num-prompts N --max-concurrency C
                    --request-rate R --random-range-ratio r --ignore-eos`. R = inf with C slots is
                    a closed loop of C slots over N prompts (an asyncio semaphore of C); a finite
                    R is an open loop (Poisson, or gamma with `--burstiness`). Lengths are drawn
                    uniformly in [int(r·nominal), nominal] (`sample_random_requests`). The TTFT
                    clock starts after the slot is acquired, before the POST; TPOT excludes the
                    first token. Warm-up (`--num-warmups`, 2·C in InferenceMAX from 2026-01-21):
                    gathered to completion before the measured run.
    aiperf          ai-dynamo/aiperf as AIConfigurator's harness ran it (`--concurrency C
                    --request-count 10C --warmup-request-count 2C`, fixed ISL/OSL): credit-based
                    concurrency (a slot returns when its request returns), the warm-up phase
                    drains before profiling starts, serial credit issue at the burst start, TTFT
                    clock at HTTP send (aiperf/timing/credit_issuing_strategy.py,
                    workers/credit_processor_mixin.py).
    closed-loop     C clients, each sending its next request when the previous one ends (+ think
                    time), all starting at t = 0 (or spread over a ramp-up).
    open-loop       Poisson or gamma arrivals at a (time-varying) rate.
    trace           replay of a trace file's arrival times and lengths.

A warm-up that drains leaves the server with no requests and no KV in use; random prompts share
no prefix, and the DES models no JIT / graph-capture effects, so the measured phase starts from
the same state as a cold start: it is simulated from an idle server, and the warm-up's requests
are recorded in the options but not simulated.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from hwmodels.errors import InputError
from simulator.serving.workload import LengthDist, RateSchedule, ServingWorkload, load_trace

# aiperf's burst start is serial: about 1 ms for 32 requests with the CPU governor at
# "performance" (ai-dynamo/aiperf issue #1424), i.e. 1/32 ms between consecutive sends.
AIPERF_SEND_GAP_S = 1e-3 / 32
# InferenceMAX added a 2·C warm-up to its benchmark_serving runs on 2026-01-21
# (InferenceMAX workflow history; docs/modeling.md "Benchmark clients").
INFERENCEMAX_WARMUP_FROM = "2026-01-21"
BENCH_SERVING_RANGE_RATIO = 0.8  # InferenceMAX workflows: --random-range-ratio 0.8
PROMPTS_PER_SLOT = 10  # InferenceMAX: --num-prompts 10*C; AIConfigurator harness: 10*C requests
WARMUP_PER_SLOT = 2  # InferenceMAX (from 2026-01-21) and AIConfigurator harness: 2*C warm-up


def ranged(nominal: int, ratio: float, what: str) -> LengthDist:
    """Lengths uniform in [int(nominal·ratio), nominal] (benchmark_serving `sample_random_requests`:
    np.random.randint(int(len * range_ratio), len + 1)); ratio 1 = fixed."""
    if not (0 < ratio <= 1):
        raise InputError(f"random-range-ratio {ratio!r}; valid: 0 < ratio <= 1")
    lo = max(1, int(nominal * ratio))
    if lo >= nominal:
        return LengthDist.parse(str(nominal), what)
    return LengthDist.parse(f"uniform:{lo}:{nominal}", what)


@dataclass(frozen=True)
class ClientSpec:
    name: str
    source: str
    help: str


CLIENTS = {
    "bench-serving": ClientSpec("bench-serving", "kimbochen/bench_serving benchmark_serving.py "
                                "(vllm benchmarks/benchmark_serving.py)",
                                "C slots over N prompts, lengths in [r*len, len], clock at slot "
                                "acquisition, means"),
    "aiperf": ClientSpec("aiperf", "ai-dynamo/aiperf", "drained 2C warm-up, then 10C requests "
                         "through C credits, fixed lengths, clock at HTTP send"),
    "closed-loop": ClientSpec("closed-loop", "-", "C clients, next request when the last ends"),
    "open-loop": ClientSpec("open-loop", "-", "Poisson/gamma arrivals at --rate"),
    "trace": ClientSpec("trace", "-", "replay of --trace arrival times and lengths"),
}


def _pos_int(v, what: str, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise InputError(f"{what}={v!r} must be an integer >= {lo}")
    return v


def bench_serving(isl: int, osl: int, max_concurrency: int | None, num_prompts: int | None = None,
                  request_rate: float = math.inf, burstiness: float = 1.0,
                  random_range_ratio: float = BENCH_SERVING_RANGE_RATIO, num_warmups: int = 0,
                  seed: int = 0, **extra) -> ServingWorkload:
    """The workload `benchmark_serving.py --dataset random --ignore-eos` sends."""
    isl, osl = _pos_int(isl, "isl"), _pos_int(osl, "osl")
    if max_concurrency is not None:
        _pos_int(max_concurrency, "max-concurrency")
    n = num_prompts if num_prompts is not None else PROMPTS_PER_SLOT * (max_concurrency or 1)
    _pos_int(n, "num-prompts")
    _pos_int(num_warmups, "num-warmups", 0)
    if not (request_rate > 0):
        raise InputError(f"request-rate {request_rate!r} must be > 0 (inf = all at once)")
    if not (burstiness > 0 and math.isfinite(burstiness)):
        raise InputError(f"burstiness {burstiness!r} must be a finite number > 0")
    opts = {"num_prompts": n, "max_concurrency": max_concurrency, "request_rate": request_rate,
            "random_range_ratio": random_range_ratio, "num_warmups": num_warmups,
            "warmup": "drained before the measured run (not simulated)" if num_warmups else "none",
            "ignore_eos": True}
    common = dict(num_requests=n, prompt_len=ranged(isl, random_range_ratio, "prompt length"),
                  output_len=ranged(osl, random_range_ratio, "output length"), seed=seed,
                  client="bench-serving", client_options=opts, ttft_clock="slot", **extra)
    if math.isinf(request_rate):
        # request-rate inf: every prompt is created at once and waits for one of C slots
        # (an asyncio.Semaphore(C)); without --max-concurrency all N go at t = 0
        return ServingWorkload(concurrency=max_concurrency or n, **common)
    if max_concurrency is not None:
        raise InputError("bench-serving with a finite request-rate and max-concurrency "
                         "(a rate-limited closed loop) is not modelled; give one of them")
    # finite rate: gamma gaps with shape = burstiness (1 = Poisson), i.e. CV = 1/sqrt(burstiness)
    # (benchmark_serving.py get_request: np.random.gamma(shape=burstiness, scale=1/(rate*burstiness)))
    return ServingWorkload(rate=RateSchedule.parse(str(request_rate)),
                           arrival_cv=1.0 / math.sqrt(burstiness), **common)


def aiperf(isl: int, osl: int, concurrency: int, request_count: int | None = None,
           warmup_request_count: int | None = None, send_gap_s: float = AIPERF_SEND_GAP_S,
           seed: int = 0, **extra) -> ServingWorkload:
    """The workload `aiperf profile --concurrency C --request-count N --warmup-request-count W`
    sends with fixed synthetic lengths (stddev 0, min_tokens = max_tokens = osl)."""
    isl, osl = _pos_int(isl, "isl"), _pos_int(osl, "osl")
    c = _pos_int(concurrency, "concurrency")
    n = request_count if request_count is not None else PROMPTS_PER_SLOT * c
    w = warmup_request_count if warmup_request_count is not None else WARMUP_PER_SLOT * c
    _pos_int(n, "request-count")
    _pos_int(w, "warmup-request-count", 0)
    opts = {"concurrency": c, "request_count": n, "warmup_request_count": w,
            "warmup": "drained before profiling (not simulated)" if w else "none"}
    return ServingWorkload(num_requests=n, concurrency=c, prompt_len=LengthDist.parse(str(isl)),
                           output_len=LengthDist.parse(str(osl)), seed=seed, client="aiperf",
                           client_options=opts, send_gap_s=send_gap_s, ttft_clock="send", **extra)


def make_workload(client: str, **kw) -> ServingWorkload:
    """The workload of `client` (a key of CLIENTS) with its options."""
    if client not in CLIENTS:
        raise InputError(f"client {client!r}; valid: {', '.join(CLIENTS)}")
    if client == "bench-serving":
        return bench_serving(**kw)
    if client == "aiperf":
        return aiperf(**kw)
    if client == "trace":
        path = kw.pop("trace")
        rows, fmt = load_trace(path)
        return ServingWorkload(trace=rows, trace_name=f"{path} ({fmt})", client="trace", **kw)
    if client == "closed-loop":
        if not kw.get("concurrency"):
            raise InputError("client closed-loop needs a concurrency >= 1")
        return ServingWorkload(client="closed-loop", **kw)
    if kw.get("rate") is None:
        raise InputError("client open-loop needs a rate")
    return ServingWorkload(client="open-loop", **kw)


def client_for_row(source: str) -> tuple[str, dict]:
    """Which client measured a row of aiconfigurator-core's silicon_sample.csv, from its
    `silicon_data_source`: the InferenceMAX/InferenceX dumps (`db-dump/...`, `source_file=2026-..
    .csv`) and the gap-analysis copies of them (`source_file=<model>-gap-analysis.csv`) ran
    benchmark_serving; the internal runs (other source files, with a path) ran aiperf
    (docs/modeling.md "Benchmark clients"). Returns (client, {"measured": date or ""})."""
    s = source or ""
    date = ""
    for part in s.split(";"):
        k, _, v = part.strip().partition("=")
        if k == "measured":
            date = v.strip()[:10]
    first = s.split(";")[0].strip()
    # `<model>-gap-analysis.csv` (a bare file name, e.g. qwen3.5-397b-gap-analysis.csv) repeats
    # InferenceMAX's measurements for AIConfigurator's gap analysis: all 76 Qwen3.5-397B rows of
    # it equal an InferenceMAX row of the same system, precision, lengths, concurrency and EP
    # (to 0.01 ms), so its rows were measured by benchmark_serving too
    inferencemax = first.startswith("db-dump/") or (
        first.startswith("source_file=") and "/" not in first
        and (first[12:16].isdigit() or first.endswith("-gap-analysis.csv")))
    return ("bench-serving" if inferencemax else "aiperf"), {"measured": date}


def bench_serving_warmups(concurrency: int, measured: str) -> int:
    """InferenceMAX's warm-up rule: none before 2026-01-21 (one test prompt), 2·C from then on."""
    return WARMUP_PER_SLOT * concurrency if measured and measured >= INFERENCEMAX_WARMUP_FROM else 0
