"""`clusterplan plan serve`: the cheapest fleet of replicas (device type × tp) that serves a rate
within TTFT/TPOT SLOs (DESIGN.md §4; planner.serve_search)."""
from __future__ import annotations

import argparse
import math
import sys

from planner.cli import int_at_least
from planner.cmd_serve import _positive_int, parse_duration


def _rate(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rate {text!r} must be a number of requests/s") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"--rate {text!r} must be > 0")
    return v


def _positive_float(name):
    def conv(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}={text!r} must be a positive number") from None
        if not (v > 0 and math.isfinite(v)):
            raise argparse.ArgumentTypeError(f"{name}={text!r} must be a positive number")
        return v
    return conv


def register(groups) -> None:
    p = groups["plan"].add_parser(
        "serve", help="cheapest serving fleet (device types × tp) meeting TTFT/TPOT SLOs at a rate",
        description="Per-configuration capacity by bisection with the serving DES, then an ILP "
                    "(Mélange-style) choosing replicas of each device type and tp, then an "
                    "end-to-end simulation of the chosen fleet.")
    p.add_argument("--model", required=True, help="preset, HF config.json or YAML")
    p.add_argument("--devices", required=True,
                   help='available devices, "h100-sxm:16,a100-sxm-80g:32"; NAME:COUNT:PRICE sets '
                        'the USD/device-hour price')
    p.add_argument("--rate", required=True, type=_rate, help="requests/s to serve (open loop, Poisson)")
    p.add_argument("--prompt-len", required=True,
                   help="1024 | uniform:LO:HI | normal:MEAN:STD | lognormal:MEAN:STD | exp:MEAN")
    p.add_argument("--output-len", required=True, help="same syntax as --prompt-len")
    p.add_argument("--slo-ttft", required=True, type=parse_duration, help="TTFT SLO, e.g. 2s")
    p.add_argument("--slo-tpot", required=True, type=parse_duration, help="TPOT SLO, e.g. 50ms")
    p.add_argument("--slo-percentile", type=int, default=90, choices=[50, 90, 99],
                   help="percentile of TTFT and TPOT held to the SLOs (default 90)")
    p.add_argument("--requests", type=_positive_int("requests"), default=400,
                   help="simulated requests per capacity probe (default 400)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp8", "fp4"])
    p.add_argument("--kv-dtype", choices=["bf16", "fp16", "fp8"], help="KV cache dtype (default: 16-bit)")
    p.add_argument("--engine", default="vllm", choices=["vllm", "sglang", "trtllm"])
    p.add_argument("--time-limit", type=_positive_float("time-limit"), default=5.0,
                   help="ILP time limit per solve in seconds (default 5)")
    p.add_argument("--no-single-type", action="store_true",
                   help="skip the cheapest single-device-type fleets shown for comparison")
    p.add_argument("--disagg", default="auto", choices=["auto", "on", "off"],
                   help="prefill/decode disaggregated pools: auto (the cheaper of aggregated and "
                        "disaggregated; default), on (disaggregated only), off (aggregated only)")
    p.add_argument("--size-classes", type=int_at_least("--size-classes", 1), default=1,
                   help="split the prompts into K request-size classes (quantiles) for aggregated "
                        "fleets: capacity per class, Mélange's class-placement ILP, a size-class "
                        "router in the check (default 1: no split)")
    p.add_argument("--no-pareto", action="store_true",
                   help="skip the fleets with 1.5x and 2x capacity that fill out the cost-latency front")
    p.add_argument("--seed", type=int_at_least("--seed", 0), default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan_serve)


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
    doc = plan_serving(model, pool, wl, args.rate, args.slo_ttft, args.slo_tpot, args.slo_percentile,
                       args.requests, args.seed, args.engine, args.dtype, args.kv_dtype,
                       time_limit_s=args.time_limit, single_type=not args.no_single_type,
                       disagg=args.disagg, pareto=not args.no_pareto, progress=progress,
                       classes=args.size_classes)
    return doc, format_plan_serve(doc)


def _ms(v) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v * 1e3:.1f}"


def _mode(mode: str) -> str:
    return "agg" if mode == "aggregated" else "disagg"


def _role(role: str) -> str:
    return "" if role == "both" else f" {role}"


def format_plan_serve(d: dict) -> str:
    s = d["slo"]
    pk = f"p{s['percentile']}"
    lines = [f"plan serve {d['model']}: {d['rate_req_per_s']:g} req/s, prompt {d['workload']['prompt_len']}, "
             f"output {d['workload']['output_len']}; SLO {pk} TTFT <= {_ms(s['ttft_s'])} ms, "
             f"TPOT <= {_ms(s['tpot_s'])} ms; disaggregation {d['disagg']}",
             "pool: " + ", ".join(f"{e['device']}×{e['count']} (${e['price_per_hour']:.2f}/h)" for e in d["pool"]),
             "", f"  {'config':<40}{'req/s per replica':>18}{'$/h per replica':>17}{'idle TTFT ms':>14}"]
    price = {e["device"]: e["price_per_hour"] for e in d["pool"]}
    for c in d["capacities"]:
        cfg = f"{c['device']} tp={c['tp']}{_role(c['role'])}" + (f" [{c['prompt_len']}]" if "size_class" in c else "")
        rate = f"{c['rate_per_replica']:.2f}" if c["rate_per_replica"] > 0 else (
            "does not fit" if c["note"] else "misses SLO")
        idle = c["ttft_floor_s"] + c["kv_transfer_s"] if c["role"] == "prefill" else c["ttft_floor_s"]
        lines.append(f"  {cfg:<40}{rate:>18}{price[c['device']] * c['tp']:>17.2f}"
                     f"{('-' if c['role'] == 'decode' else _ms(idle)):>14}")
    if d.get("kv_transfer_bytes_per_s"):
        lines.append(f"  KV between the disaggregated pools: {d['kv_transfer_bytes_per_s'] / 1e9:.2f} GB/s")
    lines += ["", f"  {'#':<3}{'$/h':>9}  {'mode':<7}{'replicas':<46}{pk + ' TTFT ms':>14}{pk + ' TPOT ms':>14}"
                  f"{'tok/s/dev':>10}{'attain':>8}{'headroom':>9}  SLO"]
    for i, f in enumerate(d["fleets"], 1):
        reps = " + ".join(f"{r['count']}× {r['device']} tp={r['tp']}{_role(r['role'])}" for r in f["replicas"])
        lines.append(f"  {i:<3}{f['cost_per_hour']:>9.2f}  {_mode(f['mode']):<7}{reps:<46}{_ms(f['predicted']['ttft_s']):>14}"
                     f"{_ms(f['predicted']['tpot_s']):>14}{f['tokens_per_s_per_device']:>10.0f}"
                     f"{f['slo_attainment'] * 100:>7.1f}%{f['headroom'] * 100:>8.1f}%  "
                     f"{'met' if f['meets_slo'] else 'MISSED'}")
    if len(d.get("pareto") or []) > 1:
        lines += ["", f"  cost-latency Pareto front ({pk}):"]
        for p in d["pareto"]:
            lines.append(f"    ${p['cost_per_hour']:>8.2f}/h  TTFT {_ms(p['ttft_s']):>8} ms  TPOT "
                         f"{_ms(p['tpot_s']):>7} ms  {_mode(p['mode']):<6} {p['replicas']}")
    sol = d["solver"]
    lines += ["", f"  search {d['search_time_s']:.2f} s, solver {sol['status']} (CBC, time limit "
                  f"{sol['time_limit_s']:g} s per solve, gap {sol['gap']:g})"]
    lines += [f"  note: {n}" for n in d["notes"]]
    return "\n".join(lines)
