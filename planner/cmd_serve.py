"""`clusterplan simulate serve` (the serving DES) and `clusterplan validate serving` (replay of
aiconfigurator-core's measured deployments). DESIGN.md §4."""
from __future__ import annotations

import argparse
import json
import math
import re

from hwmodels.errors import InputError
from planner.cli import int_at_least

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(s|ms|us|µs|min)?\s*$")
_UNITS = {None: 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "min": 60.0}


def parse_duration(text: str) -> float:
    """Seconds from "2s", "50ms", "1500us", "0.5" (seconds) or "2min"."""
    m = _DURATION.match(str(text))
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 2s, 50ms, 1500us)")
    v = float(m.group(1)) * _UNITS[m.group(2)]
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a non-negative duration")
    return v


def _positive_int(name):
    return int_at_least(name, 1)


def _nonneg_int(name):
    return int_at_least(name, 0)


def _fraction(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be a number in (0, 1]") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be in (0, 1]")
    return v


def register(groups) -> None:
    sim = groups["simulate"].add_parser(
        "serve", help="simulate serving a model on a cluster (continuous batching DES)",
        description="Discrete-event simulation of LLM serving: arrivals, routers, per-replica "
                    "continuous batching with chunked prefill and a paged KV cache.")
    sim.add_argument("--model", required=True, help="preset, HF config.json or YAML")
    sim.add_argument("--cluster", required=True, help="preset or cluster YAML")
    sim.add_argument("--nodes", type=_positive_int("nodes"),
                     help="cluster size in nodes (default: just enough for the plan)")
    sim.add_argument("--plan", default="", help='e.g. "tp=4,replicas=4,max_batch=256,max_tokens=8192,'
                                                'chunk=512" or "prefill_tp=2,prefill_replicas=2,'
                                                'decode_tp=4,decode_replicas=1"')
    load = sim.add_mutually_exclusive_group(required=True)
    load.add_argument("--rate", help="open loop: requests/s, or a schedule RATE:SECONDS,RATE:SECONDS")
    load.add_argument("--concurrency", type=_positive_int("concurrency"),
                      help="closed loop: requests always in flight")
    load.add_argument("--trace", help="trace file: Azure LLM CSV, BurstGPT CSV or Mooncake JSONL")
    sim.add_argument("--prompt-len", help="1024 | uniform:LO:HI | normal:MEAN:STD | lognormal:MEAN:STD | exp:MEAN")
    sim.add_argument("--output-len", help="same syntax as --prompt-len")
    sim.add_argument("--requests", type=_positive_int("requests"),
                     help="requests to simulate (default 1000; a trace: all its rows)")
    sim.add_argument("--warmup", type=_nonneg_int("warmup"), default=0,
                     help="first requests left out of the statistics")
    sim.add_argument("--arrival", default="poisson", help="open-loop gaps: poisson | gamma:CV (burstiness)")
    sim.add_argument("--think-time", type=parse_duration, default=0.0,
                     help="closed loop: pause between a response and the next request")
    sim.add_argument("--ramp-up", type=parse_duration, default=0.0,
                     help="closed loop: spread the clients' first requests over this window")
    sim.add_argument("--shared-prefix", help="GROUPS:TOKENS shared system prompts (prefix caching)")
    sim.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp8", "fp4"])
    sim.add_argument("--kv-dtype", choices=["bf16", "fp16", "fp8"], help="KV cache dtype (default: 16-bit)")
    sim.add_argument("--engine", default="vllm", choices=["vllm", "sglang", "trtllm"],
                     help="scheduler and memory semantics of the serving engine")
    sim.add_argument("--router", default="round_robin",
                     choices=["round_robin", "least_outstanding", "kv_aware"])
    sim.add_argument("--no-prefix-caching", action="store_true")
    sim.add_argument("--kv-blocks", type=_positive_int("kv-blocks"), help="pin the KV pool (blocks per replica)")
    sim.add_argument("--gpu-memory-utilization", type=_fraction,
                     help="share of HBM the engine may use (vLLM default 0.9)")
    sim.add_argument("--slo-ttft", type=parse_duration, help="TTFT SLO, e.g. 2s")
    sim.add_argument("--slo-tpot", type=parse_duration, help="TPOT SLO, e.g. 50ms")
    sim.add_argument("--goodput-search", action="store_true",
                     help="also search the highest rate with >= 90%% of requests within both SLOs (DistServe)")
    sim.add_argument("--seed", type=_nonneg_int("--seed"), default=0)
    sim.add_argument("--chrome-trace", help="write a Chrome/Perfetto trace of batches per replica to this file")
    sim.add_argument("--json", action="store_true")
    sim.set_defaults(func=cmd_simulate_serve)

    val = groups["validate"].add_parser(
        "serving", help="replay measured deployments (aiconfigurator-core silicon_sample.csv)")
    val.add_argument("--quick", action="store_true", help="1 warm-up + 3 measured requests per client")
    val.add_argument("--limit", type=_positive_int("limit"), help="replay only the first N rows in scope")
    val.add_argument("--scope", default="dense", choices=["dense", "all"],
                     help="dense: dense models on H100/H200 (default); all: adds MoE/MLA presets and B200/GB200")
    val.add_argument("--protocol", default="burst", choices=["burst", "staggered"],
                     help="closed-loop start: all clients at t=0 (aiperf; default) or spread over one "
                          "request lifetime (sensitivity check)")
    val.add_argument("--json", action="store_true")
    val.set_defaults(func=cmd_validate_serving)


def _workload(args):
    from simulator.serving.workload import LengthDist, RateSchedule, ServingWorkload, load_trace
    kw = {"seed": args.seed, "warmup_requests": args.warmup,
          "slo_ttft_s": args.slo_ttft if args.slo_ttft is not None else math.inf,
          "slo_tpot_s": args.slo_tpot if args.slo_tpot is not None else math.inf}
    if args.trace:
        if args.prompt_len or args.output_len:
            raise InputError("--trace gives the lengths; drop --prompt-len/--output-len")
        rows, fmt = load_trace(args.trace)
        kw.update(trace=rows, trace_name=f"{args.trace} ({fmt})", num_requests=args.requests or 0)
    else:
        if not args.prompt_len or not args.output_len:
            raise InputError("give --prompt-len and --output-len (or --trace FILE)")
        kw.update(prompt_len=LengthDist.parse(args.prompt_len, "--prompt-len"),
                  output_len=LengthDist.parse(args.output_len, "--output-len"),
                  num_requests=args.requests or 1000)
        if args.rate is not None:
            kw["rate"] = RateSchedule.parse(args.rate)
        else:
            kw["concurrency"] = args.concurrency
    if args.trace and args.concurrency:
        raise InputError("--trace replays its own timestamps; drop --concurrency")
    arrival = str(args.arrival).strip().lower()
    if arrival == "poisson":
        cv = 1.0
    elif arrival.startswith("gamma:"):
        try:
            cv = float(arrival.split(":", 1)[1])
        except ValueError:
            raise InputError(f"--arrival {args.arrival!r}: expected gamma:CV with a number CV") from None
        if not (cv > 0 and math.isfinite(cv)):
            raise InputError(f"--arrival {args.arrival!r}: CV must be > 0")
    else:
        raise InputError(f"--arrival {args.arrival!r}; valid: poisson, gamma:CV")
    if cv != 1.0 and args.rate is None:
        raise InputError("--arrival gamma:CV shapes open-loop arrivals; it needs --rate")
    kw["arrival_cv"] = cv
    kw["think_time_s"] = args.think_time
    kw["ramp_up_s"] = args.ramp_up
    if (args.think_time or args.ramp_up) and not args.concurrency:
        raise InputError("--think-time and --ramp-up apply to closed loop (--concurrency)")
    if args.shared_prefix:
        try:
            g, t = (int(x) for x in args.shared_prefix.split(":"))
        except ValueError:
            raise InputError(f"--shared-prefix {args.shared_prefix!r}: expected GROUPS:TOKENS, e.g. 8:512") from None
        if g < 1 or t < 1:
            raise InputError(f"--shared-prefix {args.shared_prefix!r}: GROUPS and TOKENS must be >= 1")
        kw["shared_prefix"] = (g, t)
    return ServingWorkload(**kw)


def cmd_simulate_serve(args):
    from hwmodels.clusters import load_cluster
    from simulator.models import load_model
    from simulator.serving.engine import ServingSimulation, max_goodput_rate, parse_serving_plan
    model = load_model(args.model)
    cluster = load_cluster(args.cluster, nodes=args.nodes)
    cluster.device.peak(args.dtype)
    plan = parse_serving_plan(args.plan, cluster, engine=args.engine, router=args.router,
                              dtype=args.dtype, kv_dtype=args.kv_dtype,
                              prefix_caching=not args.no_prefix_caching, kv_blocks=args.kv_blocks,
                              gpu_memory_utilization=args.gpu_memory_utilization)
    wl = _workload(args)
    sim = ServingSimulation(model, plan, wl, chrome_trace=bool(args.chrome_trace),
                            nodes_given=args.nodes is not None)
    report = sim.run()
    doc = report.to_dict()
    doc["model"] = model.name
    doc["cluster"] = cluster.name
    if args.goodput_search:
        if wl.rate is None or not wl.rate.is_constant:
            raise InputError("--goodput-search needs a constant --rate to start from")
        if wl.slo_ttft_s == math.inf and wl.slo_tpot_s == math.inf:
            raise InputError("--goodput-search needs --slo-ttft and/or --slo-tpot")
        doc["distserve_goodput"] = max_goodput_rate(model, plan, wl, nodes_given=args.nodes is not None)
    if args.chrome_trace:
        try:
            with open(args.chrome_trace, "w") as f:
                json.dump(sim.chrome_trace(), f)
        except OSError as e:
            raise InputError(f"--chrome-trace {args.chrome_trace!r}: {e.strerror}") from None
    return doc, format_serving(doc)


def _ms(d: dict, key: str) -> str:
    v = d.get(key)
    return "       -" if v is None else f"{v * 1e3:9.1f}"


def format_serving(d: dict) -> str:
    p = d["plan"]
    reps = ", ".join(f"{r['count']}× {r['role'] + ' ' if r['role'] != 'both' else ''}{r['device']} "
                     f"tp={r['tp']} pp={r['pp']}" for r in p["replicas"])
    wl = d["workload"]
    load = (f"rate {wl['rate']} req/s" if "rate" in wl else
            f"concurrency {wl['concurrency']}" if "concurrency" in wl else f"trace {wl.get('trace')}")
    lines = [f"model {d['model']} on {d['cluster']}: {reps}; engine {p['engine']}, router {p['router']}, "
             f"{p['dtype']} (KV {p['kv_dtype']})",
             f"workload {load}, {d['num_requests']} requests ({d['measured']} measured, "
             f"{d['rejected']} rejected), seed {wl['seed']}", "",
             f"  {'latency (ms)':<14}{'mean':>9}{'p50':>9}{'p90':>9}{'p99':>9}"]
    for label, key in (("TTFT", "ttft_s"), ("TPOT", "tpot_s"), ("ITL", "itl_s"), ("E2E", "e2e_s"),
                       ("queueing", "queue_s")):
        s = d[key]
        lines.append(f"  {label:<14}" + "".join(_ms(s, k) for k in ("mean", "p50", "p90", "p99")))
    lines += ["",
              f"  throughput        {d['throughput_requests_per_s']:10.2f} req/s   "
              f"{d['throughput_tokens_per_s']:10.0f} output tok/s   "
              f"{d['tokens_per_s_per_device']:8.0f} tok/s/device",
              f"  goodput           {d['goodput_requests_per_s']:10.2f} req/s   "
              f"(SLO attainment {d['slo_attainment'] * 100:.1f}%)",
              f"  KV utilisation    mean {d['kv_utilization']['mean'] * 100:5.1f}%   "
              f"max {d['kv_utilization']['max'] * 100:5.1f}%   preemptions {d['preemptions']}   "
              f"prefix-cache hit rate {d['prefix_cache_hit_rate'] * 100:.1f}%"]
    if "distserve_goodput" in d:
        g = d["distserve_goodput"]
        lines.append(f"  DistServe goodput {g['rate_req_per_s']:10.2f} req/s at >= "
                     f"{g['target'] * 100:.0f}% SLO attainment")
    lines.append("")
    for r in d["replicas"]:
        lines.append(f"  replica {r['index']:>3} {r['role']:<7} {r['device']:<10} tp={r['tp']} "
                     f"KV {r['kv_capacity_tokens']:>9,} tokens  busy {r['busy_s']:8.2f} s  "
                     f"iterations {r['iterations']:>8}  preemptions {r['preemptions']}")
    for n in d["notes"]:
        lines.append(f"  note: {n}")
    return "\n".join(lines)


def cmd_validate_serving(args):
    from validation.serving import format_report, run_suite
    doc = run_suite(quick=args.quick, limit=args.limit, scope=args.scope, protocol=args.protocol)
    return doc, format_report(doc)
