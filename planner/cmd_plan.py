"""`clusterplan plan train`: search every training plan of a job on a cluster and rank them.

    clusterplan plan train --model llama3-70b --cluster dgx-h100 --nodes 128 --seq-len 8192 \\
        --global-batch 1024 [--top 10] [--objective throughput|cost|time-to-train] \\
        [--tokens 15T] [--deadline 30d] [--budget 2M] [--fix "tp=8,pp=2"] [--dtype bf16] [--json]

`--cluster "dgx-h100:64,dgx-a100:128"` (preset:nodes, comma-separated) plans data-parallel
replicas over heterogeneous device groups instead (planner.search.plan_heterogeneous).
A progress bar goes to stderr for long searches on a terminal, never with --json.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import time

from hwmodels.errors import InputError
from planner.cli import _positive_int, add_job_options, job_from_args
from planner.search import OBJECTIVES, human_duration

_SI = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}
_DURATION = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def _number(name: str, units: dict, what: str):
    def conv(text: str) -> float:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
        if not m or m.group(2).lower() not in units:
            raise argparse.ArgumentTypeError(f"{name}={text!r} is not {what}")
        v = float(m.group(1)) * units[m.group(2).lower()]
        if not 0 < v < math.inf:
            raise argparse.ArgumentTypeError(f"{name}={text!r} must be positive and finite")
        return v
    return conv


def register(groups) -> None:
    p = groups["plan"].add_parser("train", help="search and rank training plans")
    p.add_argument("--model", required=True, help="preset, HF config.json or YAML")
    p.add_argument("--cluster", required=True,
                   help='preset or cluster YAML; or device groups "dgx-h100:64,dgx-a100:128" (preset:nodes)')
    p.add_argument("--nodes", type=_positive_int("nodes"))
    p.add_argument("--seq-len", type=_positive_int("seq-len"), required=True)
    p.add_argument("--global-batch", type=_positive_int("global-batch"), required=True, help="sequences per step")
    p.add_argument("--top", type=_positive_int("top"), default=10, help="plans to report (default 10)")
    p.add_argument("--objective", default="throughput", choices=OBJECTIVES)
    p.add_argument("--tokens", type=_number("tokens", _SI, "a token count like 2e12, 300B or 15T"),
                   help="tokens to train on (time-to-train, cost, --deadline, --budget)")
    p.add_argument("--deadline", type=_number("deadline", _DURATION, "a duration like 3600, 12h or 30d"),
                   help="longest time to train (s, or with m/h/d/w)")
    p.add_argument("--budget", type=_number("budget", _SI, "an amount in USD like 50000 or 1.5M"),
                   help="largest cost to train, USD")
    p.add_argument("--fix", default="", help='keys held fixed, e.g. "tp=8,pp=2" or "schedule=1f1b|zb-h1"')
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp8", "fp4"])
    add_job_options(p)
    p.add_argument("--all-variants", action="store_true",
                   help="rank every variant (default: the best plan of each mesh shape dp/tp/pp/cp/ep)")
    p.add_argument("--partition", type=int, default=3,
                   help="reported plans with pp > 1 (best first) that get an uneven layer partition by "
                        "ILP (default 3)")
    p.add_argument("--time-limit", type=_number("time-limit", _DURATION, "a duration like 2 or 0.5s"),
                   default=1.0, help="solver time limit per ILP, seconds (default 1)")
    p.add_argument("--gap", type=float, default=0.01, help="solver relative gap (default 0.01)")
    p.add_argument("--replica-nodes", type=_positive_int("replica-nodes"), default=1,
                   help="heterogeneous groups: nodes per data-parallel replica (default 1)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan_train)


class Progress:
    """A one-line progress bar on stderr, drawn only on a terminal and only once a search has
    run for `after_s`; `close()` erases it."""

    def __init__(self, enabled: bool, after_s: float = 0.5, width: int = 30):
        self.enabled = enabled and sys.stderr.isatty()
        self.t0 = time.perf_counter()
        self.after_s, self.width, self.drawn, self.last = after_s, width, False, 0.0

    def __call__(self, done: int, total: int):
        if not self.enabled or total <= 0:
            return
        now = time.perf_counter()
        if now - self.t0 < self.after_s or (now - self.last < 0.1 and done < total):
            return
        self.last = now
        filled = int(self.width * done / total)
        sys.stderr.write(f"\rsearching [{'#' * filled}{'.' * (self.width - filled)}] {100 * done // total:3d}% "
                         f"({done}/{total} mesh shapes, {now - self.t0:.1f} s)")
        sys.stderr.flush()
        self.drawn = True

    def close(self):
        if self.drawn:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _groups(text: str):
    """`"dgx-h100:64,dgx-a100:128"` → clusters, or None when `text` names one cluster."""
    if ":" not in text or text.endswith((".yaml", ".yml")):
        return None
    from hwmodels.clusters import load_cluster
    out = []
    for item in text.split(","):
        name, _, nodes = item.strip().rpartition(":")
        if not name or not nodes.isdigit() or int(nodes) < 1:
            raise InputError(f"--cluster group {item.strip()!r} is not preset:nodes (e.g. dgx-h100:64)")
        out.append(load_cluster(name, nodes=int(nodes)))
    return out


def cmd_plan_train(args) -> tuple[object, str]:
    from hwmodels.clusters import load_cluster
    from planner.search import Objective, parse_fix, plan_heterogeneous, search
    from simulator.models import load_model
    model = load_model(args.model)
    job = job_from_args(args, model)
    fix = parse_fix(args.fix)
    if not 0 <= args.gap < 1:
        raise InputError(f"--gap={args.gap} must be a relative gap in [0, 1)")
    if args.partition < 0:
        raise InputError(f"--partition={args.partition} must be >= 0")
    groups = _groups(args.cluster)
    if groups is not None:
        if args.nodes:
            raise InputError("--nodes does not apply to device groups; give preset:nodes in --cluster")
        if args.objective != "throughput" or args.tokens or args.deadline or args.budget:
            raise InputError("device groups (--cluster a:n,b:m) support --objective throughput only")
        res = plan_heterogeneous(job, groups, replica_nodes=args.replica_nodes, fix=fix,
                                 time_limit_s=args.time_limit, gap=args.gap)
        doc = {"heterogeneous": res.to_dict(), "search_time_s": res.search_time_s, "solver": res.solver}
        return doc, format_hetero(res, job)
    cluster = load_cluster(args.cluster, nodes=args.nodes)
    objective = Objective(args.objective, tokens=args.tokens, deadline_s=args.deadline, budget_usd=args.budget)
    bar = Progress(enabled=not args.json)
    try:
        res = search(job, cluster, fix=fix, top=args.top, objective=objective,
                     group="none" if args.all_variants else "mesh", progress=bar, partition=args.partition,
                     time_limit_s=args.time_limit, gap=args.gap)
    finally:
        bar.close()
    return res.to_dict(), format_result(res)


# ---- text ------------------------------------------------------------------------------------

def _dominant(bd: dict, step: float) -> str:
    k, v = max(bd.items(), key=lambda kv: kv[1])
    text = f"{k} {100 * v / step:.0f}%"
    if k == "compute":
        o, ov = max(((a, b) for a, b in bd.items() if a != "compute"), key=lambda kv: kv[1])
        text += f" (+{o} {100 * ov / step:.1f}%)"
    return text


def _table(rows: list[dict], cols: list[tuple[str, str, str]]) -> str:
    """cols: (header, key, format spec); the first two columns left-aligned, numbers right."""
    cells = [[h for h, _, _ in cols]] + [[format(r[k], f) if r[k] is not None else "-" for _, k, f in cols]
                                         for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    left = {0, 1, len(cols) - 1}
    out = ["  ".join(c.ljust(w) if j in left else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))).rstrip()
           for row in cells]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def format_result(res) -> str:
    j, c, p = res.job, res.cluster, res.pruned
    lines = [f"plan train: {j.model.name} on {c.name} × {c.num_nodes} nodes ({c.num_devices} devices), "
             f"seq {j.seq_len}, global batch {j.global_batch}, {j.dtype}; objective {res.objective.name}",
             f"{res.candidates:,} candidates: {p['divisibility']:,} invalid (divisibility), "
             f"{p['duplicate']:,} duplicate, {p['dominated']:,} dominated, {p['heuristic']:,} skipped by "
             f"heuristic, {p['memory']:,} do not fit, {p['scored']:,} scored"
             + (f", {p['filtered']:,} outside deadline/budget" if p.get("filtered") else "")
             + f"; search {res.search_time_s:.2f} s"]
    s = res.solver
    if s.get("solves"):
        lines.append(f"solver: {s['solves']} layer-partition ILP(s), "
                     + ("optimal" if s["optimal"] else "NOT proven optimal (time limit reached)")
                     + f" (CBC, time limit {s['time_limit_s']:g} s, gap {100 * s['gap']:g}%)")
    rows = []
    for d in res.plans:
        rows.append({"rank": d["rank"], "plan": d["plan_short"], "step": d["step_time_s"],
                     "tps": d["tokens_per_s"], "tflops": d["tflops_per_device"], "mfu": 100 * d["mfu"],
                     "mem": d["memory"]["peak_bytes"] / 2**30, "dom": _dominant(d["breakdown_s"], d["step_time_s"]),
                     "cost": d.get("cost_usd"),
                     "ttt": human_duration(d["time_to_train_s"]) if "time_to_train_s" in d else None,
                     "dev": d["num_devices"]})
    cols = [("#", "rank", "d"), ("plan", "plan", ""), ("step s", "step", ".3f"), ("tokens/s", "tps", ",.0f"),
            ("TFLOP/s/dev", "tflops", ".1f"), ("MFU %", "mfu", ".1f"), ("mem GiB", "mem", ".1f"),
            ("dominant term", "dom", "")]
    if res.objective.varies_nodes:
        cols.insert(2, ("devices", "dev", "d"))
    if res.objective.tokens is not None:
        cols += [("time to train", "ttt", "")] + ([("cost USD", "cost", ",.0f")]
                                                  if c.device.price_per_hour is not None else [])
    lines += ["", _table(rows, cols), "", "why:"]
    for d in res.plans:
        lines.append(f"  #{d['rank']}: {d['why']}")
    parts = [d for d in res.plans if d.get("partition")]
    if parts:
        lines += ["", "uneven layer partitions (ILP):"]
        for d in parts:
            pt = d["partition"]
            sol = pt["solver"]
            proven = "optimal" if sol["optimal"] else "not proven optimal"
            if pt["layers_per_chunk"] is None:
                what = "no partition fits" if sol["status"] == "Infeasible" else "no partition found"
                lines.append(f"  #{d['rank']}: {what} ({sol['status']})")
                continue
            gain = ""
            if pt.get("predicted_step_time_s"):
                gain = (f", slowest stage {pt['uniform_bottleneck_s'] * 1e3:.1f} → {pt['bottleneck_s'] * 1e3:.1f} ms, "
                        f"step {d['step_time_s']:.3f} → {pt['predicted_step_time_s']:.3f} s")
            per = (f"layers per stage {pt['layers_per_stage']}" if d["plan"]["vpp"] == 1 else
                   f"layers per chunk {pt['layers_per_chunk']} (stage = chunk mod {d['plan']['pp']})")
            lines.append(f"  #{d['rank']}: {per}{gain} ({proven})")
    if res.pareto:
        lines += ["", f"Pareto front (step time vs memory headroom vs cost): {len(res.pareto)} plans "
                      f"(in --json), fastest {res.pareto[0]['plan_string']}, most headroom "
                      f"{max(res.pareto, key=lambda x: x['memory_headroom_bytes'])['plan_string']}"]
    for n in res.notes:
        lines.append(f"note: {n}")
    return "\n".join(lines)


def format_hetero(res, job) -> str:
    lines = [f"plan train (heterogeneous): {job.model.name}, seq {job.seq_len}, global batch {job.global_batch}, "
             f"{job.dtype}; search {res.search_time_s:.2f} s",
             f"replica layout tp={res.layout['tp']} pp={res.layout['pp']} cp={res.layout['cp']} "
             f"dp={res.layout['dp']} ({res.layout['devices_per_replica']} devices per replica)", ""]
    for r in res.replicas:
        lines.append(f"  {r['group']:<14} {r['replicas']:4d} replicas × {r['batch_per_replica']:5d} sequences, "
                     f"{r['replica_step_s']:.3f} s  {r['plan']}")
    lines += ["", f"step {res.step_time_s:.3f} s (gradient sync {res.sync_s * 1e3:.1f} ms), "
                  f"{res.tokens_per_s:,.0f} tokens/s"]
    if res.baseline:
        b = res.baseline
        lines.append(f"same devices, equal shares ({b['replicas']} replicas × {b['batch_per_replica']}): "
                     f"{b['step_time_s']:.3f} s, {b['tokens_per_s']:,.0f} tokens/s "
                     f"({100 * (res.tokens_per_s / b['tokens_per_s'] - 1):+.1f}% for the heterogeneous plan)")
    s = res.solver
    lines.append(f"solver: {s['solves']} ILP(s), " + ("optimal" if s["optimal"] else "NOT proven optimal")
                 + f" (CBC, time limit {s['time_limit_s']:g} s, gap {100 * s['gap']:g}%)")
    return "\n".join(lines)
