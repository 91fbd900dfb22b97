"""`clusterplan simulate serve` (the serving DES) and `clusterplan plan serve` (the cheapest fleet of
replicas, device type x tp, that serves a rate within TTFT/TPOT SLOs; planner.serve_search)."""
from __future__ import annotations

import math
import sys

from hwmodels.errors import InputError
from hwmodels.fileio import write_json_atomic
from ui.cli import flags
from ui.cli.executors import add_executor_flags, executor_from_args


def register(groups) -> None:
    from hwmodels.profiles import MOE_DISTRIBUTIONS
    from simulator.serving.kv_cache import MOE_WEIGHT_BYTES
    sim = groups["simulate"].add_parser(
        "serve", help="simulate serving a model on a cluster (continuous batching DES)",
        description="Discrete-event simulation of LLM serving: arrivals, routers, per-replica "
                    "continuous batching with chunked prefill and a paged KV cache.")
    sim.add_argument("--model", required=True, help="preset, HF config.json or YAML")
    sim.add_argument("--cluster", required=True, help="preset or cluster YAML")
    sim.add_argument("--nodes", type=flags.integer("--nodes"),
                     help="cluster size in nodes (default: just enough for the plan)")
    sim.add_argument("--plan", default="", help='e.g. "tp=4,replicas=4,max_batch=256,max_tokens=8192,'
                                                'chunk=512" or "prefill_tp=2,prefill_replicas=2,'
                                                'decode_tp=4,decode_replicas=1"')
    load = sim.add_mutually_exclusive_group()  # one of these, or --client bench-serving|aiperf
    load.add_argument("--rate", help="open loop: requests/s, or a schedule RATE:SECONDS,RATE:SECONDS")
    load.add_argument("--concurrency", type=flags.integer("--concurrency"),
                      help="closed loop: requests always in flight")
    load.add_argument("--trace", help="trace file: Azure LLM CSV, BurstGPT CSV or Mooncake JSONL")
    sim.add_argument("--client", choices=["bench-serving", "aiperf", "closed-loop", "open-loop", "trace",
                                          "trtllm-bench", "vllm-throughput", "sglang-offline"],
                     help="benchmark client to simulate (simulator/serving/clients.py): bench-serving "
                          "(vLLM/InferenceMAX benchmark_serving.py: --num-prompts, --max-concurrency, "
                          "--random-range-ratio, --num-warmups; --rate = its --request-rate, default inf), "
                          "aiperf (--concurrency, --requests = --request-count, --warmup-request-count); "
                          "default: closed-loop / open-loop / trace from --concurrency / --rate / --trace; "
                          "offline max throughput (simulator/serving/offline.py): trtllm-bench | "
                          "vllm-throughput | sglang-offline (--requests all at t=0, the tool's own "
                          "engine and limits, printed)")
    sim.add_argument("--num-prompts", type=flags.integer("--num-prompts"),
                     help="bench-serving: prompts to send (default 10 x --max-concurrency)")
    sim.add_argument("--max-concurrency", type=flags.integer("--max-concurrency"),
                     help="bench-serving: concurrency slots (an asyncio semaphore)")
    sim.add_argument("--random-range-ratio", type=flags.fraction("--random-range-ratio"), default=1.0,
                     help="bench-serving: lengths uniform in [ratio x len, len] (default 1 = fixed; "
                          "InferenceMAX uses 0.8)")
    sim.add_argument("--num-warmups", type=flags.integer("--num-warmups", lo=0), default=0,
                     help="bench-serving: warm-up requests, drained before the measured run")
    sim.add_argument("--warmup-request-count", type=flags.integer("--warmup-request-count", lo=0),
                     help="aiperf: warm-up requests, drained before profiling (default 2 x --concurrency)")
    sim.add_argument("--prompt-len", help="1024 | uniform:LO:HI | normal:MEAN:STD | lognormal:MEAN:STD | exp:MEAN")
    sim.add_argument("--output-len", help="same syntax as --prompt-len")
    sim.add_argument("--requests", type=flags.integer("--requests"),
                     help="requests to simulate (default 1000; a trace: all its rows)")
    sim.add_argument("--warmup", type=flags.integer("--warmup", lo=0), default=0,
                     help="first requests left out of the statistics")
    sim.add_argument("--arrival", default="poisson", help="open-loop gaps: poisson | gamma:CV (burstiness)")
    sim.add_argument("--think-time", type=flags.duration("--think-time"), default=0.0,
                     help="closed loop: pause between a response and the next request")
    sim.add_argument("--ramp-up", type=flags.duration("--ramp-up"), default=0.0,
                     help="closed loop: spread the clients' first requests over this window")
    sim.add_argument("--shared-prefix", help="GROUPS:TOKENS shared system prompts (prefix caching)")
    sim.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp8", "fp4"])
    sim.add_argument("--kv-dtype", choices=["bf16", "fp16", "fp8"], help="KV cache dtype (default: 16-bit)")
    sim.add_argument("--engine", default="vllm", choices=["vllm", "sglang", "trtllm"],
                     help="scheduler and memory semantics of the serving engine")
    sim.add_argument("--moe-quant", choices=list(MOE_WEIGHT_BYTES),
                     help="MoE models: the checkpoint's expert quantisation (e.g. fp8_block for "
                          "DeepSeek-V3, w4a16_mxfp4 for GPT-OSS on Hopper; default: the --dtype's usual one)")
    sim.add_argument("--moe-load", default="power_law_1.01", choices=list(MOE_DISTRIBUTIONS),
                     help="MoE models: expert load the measured fused-MoE kernel is read at: "
                          "power-law expert popularity (default, alpha 1.01) or round-robin balanced")
    sim.add_argument("--router", default="round_robin",
                     choices=["round_robin", "least_outstanding", "kv_aware"])
    sim.add_argument("--no-prefix-caching", action="store_true")
    sim.add_argument("--kv-blocks", type=flags.integer("--kv-blocks"), help="pin the KV pool (blocks per replica)")
    # engine policies (simulator/serving/policies.py) and the API-server stage (frontend.py)
    sim.add_argument("--async-scheduling", choices=["on", "off"], help="vLLM --async-scheduling (default off)")
    sim.add_argument("--overlap-scheduler", choices=["on", "off"], help="SGLang / TRT-LLM overlap scheduler (default on)")
    sim.add_argument("--capacity-scheduler", choices=["guaranteed_no_evict", "max_utilization"],
                     help="TRT-LLM capacity scheduler policy (default guaranteed_no_evict)")
    sim.add_argument("--schedule-policy", choices=["fcfs", "lpm"], help="SGLang waiting-queue order (default fcfs)")
    sim.add_argument("--chunked-prefill", choices=["on", "off"], help="chunked prefill (TRT-LLM default off)")
    sim.add_argument("--enable-mixed-chunk", choices=["on", "off"],
                     help="SGLang --enable-mixed-chunk: prompts share passes with decodes (default off)")
    sim.add_argument("--max-prefill-tokens", type=flags.integer("--max-prefill-tokens"),
                     help="SGLang --max-prefill-tokens: prompt tokens one prefill pass may take (default: no cap)")
    sim.add_argument("--scheduler-recv-interval", dest="recv_interval",
                     type=flags.integer("--scheduler-recv-interval"),
                     help="SGLang --scheduler-recv-interval: new requests received every N decode passes (default 1)")
    sim.add_argument("--frontend", default="off", choices=["off", "on", "measured", "published"],
                     help="API-server stage: HTTP, tokenisation, detokenisation (on = measured)")
    sim.add_argument("--gpu-memory-utilization", type=flags.fraction("--gpu-memory-utilization"),
                     help="share of HBM the engine may use (vLLM default 0.9)")
    sim.add_argument("--slo-ttft", type=flags.slo("--slo-ttft"), help="TTFT SLO with its unit, e.g. 2s or 500ms")
    sim.add_argument("--slo-tpot", type=flags.slo("--slo-tpot"), help="TPOT SLO with its unit, e.g. 50ms")
    sim.add_argument("--goodput-search", action="store_true",
                     help="also search the highest rate with >= 90%% of requests within both SLOs (DistServe)")
    sim.add_argument("--seed", type=flags.integer("--seed", lo=0), default=0)
    sim.add_argument("--chrome-trace", help="write a Chrome/Perfetto trace of batches per replica to this file")
    sim.add_argument("--json", action="store_true")
    sim.set_defaults(func=cmd_simulate_serve)

    p = groups["plan"].add_parser(
        "serve", help="cheapest serving fleet (device types × tp) meeting TTFT/TPOT SLOs at a rate",
        description="Per-configuration capacity by bisection with the serving DES, then an ILP "
                    "(Mélange-style) choosing replicas of each device type and tp, then an "
                    "end-to-end simulation of the chosen fleet.")
    p.add_argument("--model", required=True, help="preset, HF config.json or YAML")
    p.add_argument("--devices", required=True,
                   help='available devices, "h100-sxm:16,a100-sxm-80g:32"; NAME:COUNT:PRICE sets '
                        'the USD/device-hour price')
    p.add_argument("--rate", required=True, type=flags.positive("--rate", "requests/s"),
                   help="requests/s to serve (open loop, Poisson)")
    p.add_argument("--prompt-len", required=True,
                   help="1024 | uniform:LO:HI | normal:MEAN:STD | lognormal:MEAN:STD | exp:MEAN")
    p.add_argument("--output-len", required=True, help="same syntax as --prompt-len")
    p.add_argument("--slo-ttft", required=True, type=flags.slo("--slo-ttft"),
                   help="TTFT SLO with its unit, e.g. 2s or 500ms")
    p.add_argument("--slo-tpot", required=True, type=flags.slo("--slo-tpot"), help="TPOT SLO with its unit, e.g. 50ms")
    p.add_argument("--slo-percentile", type=flags.integer("--slo-percentile"), default=90, choices=[50, 90, 99],
                   help="percentile of TTFT and TPOT held to the SLOs (default 90)")
    p.add_argument("--requests", type=flags.integer("--requests"), default=400,
                   help="simulated requests per capacity probe (default 400)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp8", "fp4"])
    p.add_argument("--kv-dtype", choices=["bf16", "fp16", "fp8"], help="KV cache dtype (default: 16-bit)")
    p.add_argument("--engine", default="vllm", choices=["vllm", "sglang", "trtllm"])
    p.add_argument("--time-limit", type=flags.positive("--time-limit"), default=5.0,
                   help="ILP time limit per solve in seconds (default 5)")
    p.add_argument("--no-single-type", action="store_true",
                   help="skip the cheapest single-device-type fleets shown for comparison")
    p.add_argument("--disagg", default="auto", choices=["auto", "on", "off"],
                   help="prefill/decode disaggregated pools: auto (the cheaper of aggregated and "
                        "disaggregated; default), on (disaggregated only), off (aggregated only)")
    p.add_argument("--size-classes", type=flags.integer("--size-classes"), default=1,
                   help="split the prompts into K request-size classes (quantiles) for aggregated "
                        "fleets: capacity per class, Mélange's class-placement ILP, a size-class "
                        "router in the check (default 1: no split)")
    p.add_argument("--no-pareto", action="store_true",
                   help="skip the fleets with 1.5x and 2x capacity that fill out the cost-latency front")
    p.add_argument("--seed", type=flags.integer("--seed", lo=0), default=0)
    add_executor_flags(p, jobs_help="capacity probes in parallel: local worker processes (default: the "
                                    "CPU count), or the CPUs of a local Ray")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan_serve)


# ---- simulate serve ---------------------------------------------------------------------------

def _nominal(text, flag: str) -> int:
    """A benchmark client's nominal length: a plain integer >= 1."""
    try:
        v = float(text)
    except (TypeError, ValueError):
        v = math.nan
    if not (math.isfinite(v) and v.is_integer() and v >= 1):
        raise InputError(f"{flag} {text!r}: this client takes a nominal length, an integer >= 1")
    return int(v)


def _client_workload(args, client: str, slo: dict):
    """--client bench-serving | aiperf: the workload that tool sends (simulator/serving/clients.py)."""
    from simulator.serving.clients import aiperf, bench_serving
    if args.trace or args.warmup or args.think_time or args.ramp_up or args.shared_prefix:
        raise InputError(f"--client {client} sets its own arrivals and warm-up; drop --trace, --warmup, "
                         f"--think-time, --ramp-up and --shared-prefix")
    if args.prompt_len is None or args.output_len is None:
        raise InputError(f"--client {client} needs --prompt-len and --output-len (nominal lengths)")
    isl, osl = _nominal(args.prompt_len, "--prompt-len"), _nominal(args.output_len, "--output-len")
    if client == "bench-serving":
        if args.concurrency:
            raise InputError("--client bench-serving takes --max-concurrency, not --concurrency")
        rate = math.inf
        if args.rate is not None:
            try:
                rate = float(args.rate)
            except ValueError:
                raise InputError(f"--rate {args.rate!r}: bench-serving takes one request rate (req/s) or inf") from None
        if args.max_concurrency is None and args.num_prompts is None:
            raise InputError("--client bench-serving needs --max-concurrency or --num-prompts")
        return bench_serving(isl, osl, args.max_concurrency, args.num_prompts, request_rate=rate,
                             random_range_ratio=args.random_range_ratio, num_warmups=args.num_warmups,
                             seed=args.seed, **slo)
    if args.rate is not None or args.max_concurrency or args.num_prompts:
        raise InputError("--client aiperf takes --concurrency and --requests (its --request-count)")
    if not args.concurrency:
        raise InputError("--client aiperf needs --concurrency")
    return aiperf(isl, osl, args.concurrency, args.requests, args.warmup_request_count,
                  seed=args.seed, **slo)


def _engine_options(args) -> tuple:
    """The engine-policy flags given, as ServingPlan.engine_options pairs."""
    opts = [(k, getattr(args, k)) for k in ("async_scheduling", "overlap_scheduler",
                                            "capacity_scheduler", "schedule_policy",
                                            "enable_mixed_chunk", "max_prefill_tokens", "recv_interval")
            if getattr(args, k, None) is not None]
    if getattr(args, "chunked_prefill", None) is not None:
        opts.append(("chunked_prefill", args.chunked_prefill == "on"))
    return tuple(opts)


def _workload(args):
    from simulator.serving.workload import LengthDist, RateSchedule, ServingWorkload, load_trace
    slo = {"slo_ttft_s": args.slo_ttft if args.slo_ttft is not None else math.inf,
           "slo_tpot_s": args.slo_tpot if args.slo_tpot is not None else math.inf}
    client = getattr(args, "client", None)
    if client in ("bench-serving", "aiperf"):
        return _client_workload(args, client, slo)
    if args.max_concurrency or args.num_prompts or args.num_warmups or args.warmup_request_count is not None:
        raise InputError("--max-concurrency, --num-prompts, --num-warmups and --warmup-request-count "
                         "belong to --client bench-serving / aiperf")
    need = {"closed-loop": ("concurrency", "--concurrency"), "open-loop": ("rate", "--rate"),
            "trace": ("trace", "--trace")}
    if client is not None and getattr(args, need[client][0]) in (None, 0, ""):
        raise InputError(f"--client {client} needs {need[client][1]}")
    if client is not None and sum(bool(getattr(args, a)) for a, _ in need.values()) > 1:
        raise InputError(f"--client {client}: give only {need[client][1]}")
    if args.rate is None and not args.concurrency and not args.trace:
        raise InputError("give one of --rate, --concurrency, --trace, or --client bench-serving|aiperf")
    client = client or ("trace" if args.trace else "closed-loop" if args.concurrency else "open-loop")
    kw = {"seed": args.seed, "warmup_requests": args.warmup, "client": client, **slo}
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
    limits = None
    if getattr(args, "client", None) in ("trtllm-bench", "vllm-throughput", "sglang-offline"):
        from simulator.serving.offline import offline_setup  # offline max throughput (issue #22)
        if args.rate is not None or args.concurrency or args.trace:
            raise InputError(f"--client {args.client} queues every request at t=0; drop --rate/--concurrency/--trace")
        plan, wl, limits = offline_setup(args.client, model, cluster, args.plan, args.prompt_len,
                                         args.output_len, args.requests, args.dtype, args.kv_dtype,
                                         args.seed, router=args.router, kv_blocks=args.kv_blocks)
    else:
        plan = parse_serving_plan(args.plan, cluster, engine=args.engine, router=args.router,
                                  dtype=args.dtype, kv_dtype=args.kv_dtype,
                                  prefix_caching=not args.no_prefix_caching, kv_blocks=args.kv_blocks,
                                  gpu_memory_utilization=args.gpu_memory_utilization,
                                  engine_options=_engine_options(args), frontend=args.frontend,
                                  moe_quant=args.moe_quant, moe_load=args.moe_load)
        wl = _workload(args)
    check_context(model, wl)
    sim = ServingSimulation(model, plan, wl, chrome_trace=bool(args.chrome_trace),
                            nodes_given=args.nodes is not None)
    report = sim.run()
    doc = report.to_dict()
    doc["model"] = model.name
    doc["cluster"] = cluster.name
    from simulator.regimes import offline_validation_of, serving_plan_validation
    # an offline client's number is its throughput, which `validate throughput` checks; the
    # latency regimes come from `validate serving`
    doc["validation"] = (offline_validation_of(limits.client, cluster.device.name, model, args.dtype)
                         if limits is not None else serving_plan_validation(model, plan))
    if limits is not None:
        doc["offline_limits"] = limits.to_dict()
        doc["notes"] = doc.get("notes", []) + [
            f"{limits.client}: max_batch_size {limits.max_batch_size}, max_num_tokens "
            f"{limits.max_num_tokens}, chunked prefill {'on' if limits.chunked_prefill else 'off'} "
            f"({limits.source})"]
    if wl.slo_ttft_s == math.inf and wl.slo_tpot_s == math.inf:
        # no SLO given: every request "meets" an infinite one; report nothing rather than 100%
        doc["slo_attainment"] = doc["goodput_requests_per_s"] = None
    doc["overload"] = overload(sim.requests, wl)
    if args.goodput_search:
        if wl.rate is None or not wl.rate.is_constant:
            raise InputError("--goodput-search needs a constant --rate to start from")
        if wl.slo_ttft_s == math.inf and wl.slo_tpot_s == math.inf:
            raise InputError("--goodput-search needs --slo-ttft and/or --slo-tpot")
        doc["distserve_goodput"] = max_goodput_rate(model, plan, wl, nodes_given=args.nodes is not None)
    if args.chrome_trace:
        write_json_atomic(args.chrome_trace, sim.chrome_trace())
        doc["chrome_trace"] = args.chrome_trace
    return doc, format_serving(doc)


def check_context(model, wl) -> None:
    """Refuse lengths beyond the model's context, as `plan serve` does (planner.serve_search):
    the engines refuse such requests (vLLM max_model_len)."""
    from planner.serve_search import MAX_CONTEXT
    ctx = model.max_position_embeddings or MAX_CONTEXT
    if wl.trace is not None:
        rows = wl.trace[:wl.num_requests]
        prompt, output, fix = (sum(r[1] for r in rows) / len(rows), sum(r[2] for r in rows) / len(rows),
                               "a trace of shorter requests")
    else:
        prompt, output, fix = wl.prompt_len.mean, wl.output_len.mean, "shorter --prompt-len/--output-len"
    if prompt + output > ctx:
        raise InputError(f"mean prompt ({prompt:,.0f}) + output ({output:,.0f}) = {prompt + output:,.0f} tokens "
                         f"exceeds {model.name}'s context of {ctx:,} tokens (max_position_embeddings); use {fix}")


# Growth of TTFT per second of arrivals above which a run is overloaded: a backlog growing by 5%
# of the arrivals (a detection threshold on the simulated run, not a fitted constant).
OVERLOAD_TTFT_GROWTH = 0.05
MIN_REQUESTS_FOR_OVERLOAD = 20


def overload(requests, wl) -> dict | None:
    """Whether open-loop arrivals outran the fleet. Past saturation work arrives at λ and leaves
    at μ, so under FIFO admission a request arriving at t waits for a backlog of (λ − μ)·t / μ
    (the fluid approximation of an overloaded queue, Kleinrock, Queueing Systems vol. 2 §2.8):
    the slope of TTFT against arrival time is λ/μ − 1, ~0 for a stable fleet.
    Returns the offered and served rates and that slope; None for closed loops (they cannot
    overload) and runs too short to tell."""
    import numpy as np
    if wl.closed_loop:
        return None
    done = [r for r in requests if r.id >= wl.warmup_requests and math.isfinite(r.finish_s)]
    if len(done) < MIN_REQUESTS_FOR_OVERLOAD:
        return None
    t = np.array([r.arrival_s for r in done])
    ttft = np.array([r.first_token_s - r.arrival_s for r in done])
    span = float(t.max() - t.min())
    if span <= 0:
        return None
    slope = float(np.polyfit(t - t.min(), ttft, 1)[0])
    offered = (len(done) - 1) / span
    served = len(done) / max(1e-12, max(r.finish_s for r in done) - float(t.min()))
    return {"overloaded": slope > OVERLOAD_TTFT_GROWTH, "offered_requests_per_s": offered,
            "served_requests_per_s": served, "ttft_growth_s_per_s": slope}


def _ms(d: dict, key: str) -> str:
    v = d.get(key)
    return "-" if v is None else f"{v * 1e3:,.1f}"


def _latency_table(d: dict) -> list[str]:
    """The latency rows in ms, each column as wide as its widest value (1,234,567.8 ms included)."""
    rows = [("latency (ms)", "mean", "p50", "p90", "p99")]
    for label, key in (("TTFT", "ttft_s"), ("TPOT", "tpot_s"), ("ITL", "itl_s"), ("E2E", "e2e_s"),
                       ("queueing", "queue_s")):
        rows.append((label,) + tuple(_ms(d[key], k) for k in ("mean", "p50", "p90", "p99")))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return ["  " + r[0].ljust(widths[0]) + "".join("  " + c.rjust(w) for c, w in zip(r[1:], widths[1:]))
            for r in rows]


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
             f"{d['rejected']} rejected), seed {wl['seed']}", ""]
    lines += _latency_table(d)
    if d.get("slo_attainment") is None:
        goodput = "           -          (no SLO given: set --slo-ttft and/or --slo-tpot)"
    else:
        goodput = (f"{d['goodput_requests_per_s']:10.2f} req/s   (SLO attainment {d['slo_attainment'] * 100:.1f}%)")
    lines += ["",
              f"  throughput        {d['throughput_requests_per_s']:10.2f} req/s   "
              f"{d['throughput_tokens_per_s']:10.0f} output tok/s   "
              f"{d['tokens_per_s_per_device']:8.0f} tok/s/device",
              f"  goodput         {goodput}",
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
        if r.get("state_bytes_per_request"):  # recurrent layers: the per-request state and its pool
            pool = (f"a pool of {r['state_slots']:,} requests" if r.get("state_slots") is not None
                    else f"{r['state_blocks_per_request']:,} KV blocks per request")
            lines.append(f"              recurrent state {r['state_bytes_per_request'] / 2**20:,.1f} MiB per "
                         f"request and GPU, {pool}")
    for n in d["notes"]:
        lines.append(f"  note: {n}")
    if d.get("validation"):
        lines.append(f"  trust: {d['validation']['note']}")
    o = d.get("overload")
    if o and o["overloaded"]:
        lines.append(f"  WARNING: offered load {o['offered_requests_per_s']:.2f} req/s (as sampled) exceeds the "
                     f"fleet's capacity (served {o['served_requests_per_s']:.2f} req/s; TTFT grows {o['ttft_growth_s_per_s']:.2f} s "
                     f"per second of arrivals): lower --rate or add replicas")
    if d.get("chrome_trace"):
        lines.append(f"  Chrome trace written to {d['chrome_trace']} (open it in Perfetto)")
    return "\n".join(lines)


# ---- plan serve ------------------------------------------------------------------------------

def cmd_plan_serve(args):
    from planner.serve_search import parse_devices, plan_serving
    from simulator.models import load_model
    from simulator.serving.workload import LengthDist, RateSchedule, ServingWorkload
    pool = parse_devices(args.devices)
    model = load_model(args.model)
    wl = ServingWorkload(num_requests=args.requests, rate=RateSchedule(((args.rate, math.inf),)),
                         prompt_len=LengthDist.parse(args.prompt_len, "--prompt-len"),
                         output_len=LengthDist.parse(args.output_len, "--output-len"), seed=args.seed)
    progress = None
    if not args.json and sys.stderr.isatty():  # a progress bar for people, never in --json output
        def progress(done, total, label):
            bar = "#" * (24 * done // total)
            sys.stderr.write(f"\r  capacities [{bar:<24}] {done}/{total} {label:<28}")
            if done == total:
                sys.stderr.write("\r" + " " * 72 + "\r")
            sys.stderr.flush()
    # The capacity probes: a Ray executor when asked for; locally, plan_serving's own forked
    # pool of --jobs workers (serial with --jobs 1).
    executor = executor_from_args(args) if args.executor == "ray" or args.ray_address else None
    try:
        doc = plan_serving(model, pool, wl, args.rate, args.slo_ttft, args.slo_tpot, args.slo_percentile,
                           args.requests, args.seed, args.engine, args.dtype, args.kv_dtype,
                           time_limit_s=args.time_limit, single_type=not args.no_single_type,
                           disagg=args.disagg, pareto=not args.no_pareto, progress=progress,
                           classes=args.size_classes, jobs=args.jobs, executor=executor)
    finally:
        if executor is not None:
            executor.close()
    return doc, format_plan_serve(doc)


def _ms_cell(v) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v * 1e3:.1f}"


def _mode(mode: str) -> str:
    return "agg" if mode == "aggregated" else "disagg"


def _role(role: str) -> str:
    return "" if role == "both" else f" {role}"


def format_plan_serve(d: dict) -> str:
    from simulator.regimes import fleet_trust_notes, validation_label
    s = d["slo"]
    pk = f"p{s['percentile']}"
    lines = [f"plan serve {d['model']}: {d['rate_req_per_s']:g} req/s, prompt {d['workload']['prompt_len']}, "
             f"output {d['workload']['output_len']}; SLO {pk} TTFT <= {_ms_cell(s['ttft_s'])} ms, "
             f"TPOT <= {_ms_cell(s['tpot_s'])} ms; disaggregation {d['disagg']}",
             "pool: " + ", ".join(f"{e['device']}×{e['count']} (${e['price_per_hour']:.2f}/h)" for e in d["pool"]),
             "", f"  {'config':<40}{'req/s per replica':>18}{'$/h per replica':>17}{'idle TTFT ms':>14}"]
    price = {e["device"]: e["price_per_hour"] for e in d["pool"]}
    for c in d["capacities"]:
        cfg = f"{c['device']} tp={c['tp']}{_role(c['role'])}" + (f" [{c['prompt_len']}]" if "size_class" in c else "")
        rate = f"{c['rate_per_replica']:.2f}" if c["rate_per_replica"] > 0 else (
            "does not fit" if c["note"] else "misses SLO")
        idle = c["ttft_floor_s"] + c["kv_transfer_s"] if c["role"] == "prefill" else c["ttft_floor_s"]
        lines.append(f"  {cfg:<40}{rate:>18}{price[c['device']] * c['tp']:>17.2f}"
                     f"{('-' if c['role'] == 'decode' else _ms_cell(idle)):>14}")
    if d.get("kv_transfer_bytes_per_s"):
        lines.append(f"  KV between the disaggregated pools: {d['kv_transfer_bytes_per_s'] / 1e9:.2f} GB/s")
    lines += ["", f"  {'#':<3}{'$/h':>9}  {'mode':<7}{'replicas':<46}{pk + ' TTFT ms':>14}{pk + ' TPOT ms':>14}"
                  f"{'tok/s/dev':>10}{'attain':>8}{'headroom':>9}  SLO     validated (median |err| TTFT/TPOT)"]
    for i, f in enumerate(d["fleets"], 1):
        reps = " + ".join(f"{r['count']}× {r['device']} tp={r['tp']}{_role(r['role'])}" for r in f["replicas"])
        lines.append(f"  {i:<3}{f['cost_per_hour']:>9.2f}  {_mode(f['mode']):<7}{reps:<46}{_ms_cell(f['predicted']['ttft_s']):>14}"
                     f"{_ms_cell(f['predicted']['tpot_s']):>14}{f['tokens_per_s_per_device']:>10.0f}"
                     f"{f['slo_attainment'] * 100:>7.1f}%{f['headroom'] * 100:>8.1f}%  "
                     f"{'met' if f['meets_slo'] else 'MISSED':<8}{validation_label(f.get('validation'))}")
    if len(d.get("pareto") or []) > 1:
        lines += ["", f"  cost-latency Pareto front ({pk}):"]
        for p in d["pareto"]:
            lines.append(f"    ${p['cost_per_hour']:>8.2f}/h  TTFT {_ms_cell(p['ttft_s']):>8} ms  TPOT "
                         f"{_ms_cell(p['tpot_s']):>7} ms  {_mode(p['mode']):<6} {p['replicas']}")
    trust = fleet_trust_notes(d["fleets"])
    lines += ([""] if trust else []) + [f"  trust: {n}" for n in trust]
    sol = d["solver"]
    lines += ["", f"  search {d['search_time_s']:.2f} s, solver {sol['status']} (CBC, time limit "
                  f"{sol['time_limit_s']:g} s per solve, gap {sol['gap']:g})"]
    lines += [f"  note: {n}" for n in d["notes"]]
    return "\n".join(lines)
