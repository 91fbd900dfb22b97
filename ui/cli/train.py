"""`clusterplan simulate train` and `clusterplan plan train`: one training plan through the analytic
engine or the DES, and the search that ranks every plan of a job on a cluster.

    clusterplan simulate train --model gpt3-175b --cluster dgx-a100 --nodes 128 \\
        --plan "tp=8,pp=8,mb=1,schedule=interleaved,vpp=2" --seq-len 2048 --global-batch 1536 \\
        [--engine analytic|des] [--chrome-trace out.json] [--json]
    clusterplan plan train --model llama3-70b --cluster dgx-h100 --nodes 128 --seq-len 8192 \\
        --global-batch 1024 [--top 10] [--objective throughput|cost|time-to-train] \\
        [--tokens 15T] [--deadline 30d] [--budget 2M] [--fix "tp=8,pp=2"] [--dtype bf16] [--json]

`plan train --cluster "dgx-h100:64,dgx-a100:128"` (preset:nodes, comma-separated) plans
data-parallel replicas over heterogeneous device groups instead (planner.search.plan_heterogeneous).
A progress bar goes to stderr for long searches on a terminal, never with --json. Both commands
build the job with ui.jobs, as the dashboard does.
"""
from __future__ import annotations

import argparse
import sys
import time

from hwmodels.errors import InputError
from planner.search import OBJECTIVES, human_duration
from ui import jobs
from ui.cli import flags
from ui.cli.text import table

DTYPES = ["bf16", "fp16", "fp8", "fp4"]


def add_job_flags(p) -> None:
    """The user-facing options of a training job (ui.jobs.JOB_OPTIONS) as flags. A flag not given
    stays None: the --software profile's setting applies, else ui.jobs.OPTION_DEFAULTS."""
    from hwmodels.kernels import ATTENTION_KERNELS
    from simulator.software import PROFILES
    d = jobs.OPTION_DEFAULTS
    on = {True: "on", False: "off"}
    p.add_argument("--software", choices=list(PROFILES), default=None,
                   help="the training software whose settings the job takes (attention kernel, overlaps, "
                        "dropout, FSDP's zero=3); flags given below win over it")
    p.add_argument("--attention", default=None, choices=list(jobs.ATTENTION),
                   help=f"flash (fused) or unfused attention kernels (Megatron-LM 2021); default {d['attention']}")
    p.add_argument("--attention-kernel", default=None, choices=list(ATTENTION_KERNELS),
                   help=f"which flash kernel: FlashAttention-2 class, FA1, or the Triton port; "
                        f"default {d['attention_kernel']}")
    p.add_argument("--grad-overlap", type=flags.on_off("--grad-overlap"), default=None,
                   help=f"overlap DP gradient reduction with backward (on|off; default {on[d['grad_overlap']]})")
    p.add_argument("--tp-overlap", type=flags.on_off("--tp-overlap"), default=None,
                   help="pipeline TP collectives with their GEMMs, needs sp=on (TE userbuffers; on|off; "
                        f"default {on[d['tp_overlap']]})")
    p.add_argument("--p2p-overlap", type=flags.on_off("--p2p-overlap"), default=None,
                   help="overlap pipeline send/recv with compute (on|off, off = blocking sends; "
                        f"default {on[d['p2p_overlap']]})")
    p.add_argument("--dropout", type=flags.on_off("--dropout"), default=None,
                   help=f"dropout layers present (on|off; default {on[d['dropout']]})")
    p.add_argument("--lora-rank", type=flags.integer("--lora-rank", lo=0), default=None,
                   help="fine-tune with LoRA adapters of this rank, base weights frozen (default 0: "
                        "every weight trains)")
    p.add_argument("--lora-targets", default=None,
                   help="linears the adapters sit on, comma-separated from qkv,proj,fc1,fc2 (default all)")


def register(groups) -> None:
    tr = groups["simulate"].add_parser("train", help="predict one training step of a plan")
    tr.add_argument("--model", required=True, help="preset, HF config.json or YAML")
    tr.add_argument("--cluster", required=True, help="preset or cluster YAML")
    tr.add_argument("--nodes", type=flags.integer("--nodes"))
    tr.add_argument("--plan", default="", help='e.g. "tp=8,pp=8,mb=1,schedule=interleaved,vpp=2"')
    tr.add_argument("--seq-len", type=flags.integer("--seq-len"), required=True)
    tr.add_argument("--global-batch", type=flags.integer("--global-batch"), required=True,
                    help="sequences per step")
    tr.add_argument("--dtype", default="bf16", choices=DTYPES)
    tr.add_argument("--engine", default="analytic", choices=["analytic", "des"],
                    help="analytic closed forms, or the discrete-event simulation (simpy)")
    tr.add_argument("--chrome-trace", metavar="FILE", help="DES: write a Chrome-trace JSON timeline (Perfetto)")
    # the old name, one release: --trace names an input trace elsewhere (simulate serve)
    tr.add_argument("--trace", dest="chrome_trace", metavar="FILE", action=flags.DeprecatedAlias,
                    new="--chrome-trace", why="--trace names a workload trace to read, as in simulate serve",
                    help=argparse.SUPPRESS)
    tr.add_argument("--stragglers", metavar="SPEC",
                    help='DES: slow ranks, "RANK:FACTOR,..." or "random:FRACTION:FACTOR"')
    tr.add_argument("--full-ranks", action="store_true",
                    help="DES: simulate every DP replica (automatic with stragglers)")
    tr.add_argument("--seed", type=flags.integer("--seed", lo=0), default=0,
                    help="seed for random stragglers and failures")
    tr.add_argument("--run-steps", type=flags.integer("--run-steps"),
                    help="goodput over a run of this many steps, with failures and checkpoints")
    tr.add_argument("--ckpt-interval", type=flags.integer("--ckpt-interval"), default=500,
                    help="steps between checkpoints (default 500)")
    tr.add_argument("--ckpt-s", type=flags.non_negative("--ckpt-s"), default=30.0,
                    help="seconds a checkpoint stalls training (default 30; 0 = fully async)")
    tr.add_argument("--restart-s", type=flags.non_negative("--restart-s"), default=600.0,
                    help="seconds to restart after a failure (default 600)")
    tr.add_argument("--failure-rate", type=flags.non_negative("--failure-rate"), default=None,
                    help="failures per device-hour (default: Llama 3's 419 in 54 days on 16k H100)")
    add_job_flags(tr)
    tr.add_argument("--json", action="store_true")
    tr.set_defaults(func=cmd_simulate_train)

    p = groups["plan"].add_parser("train", help="search and rank training plans")
    p.add_argument("--model", required=True, help="preset, HF config.json or YAML")
    p.add_argument("--cluster", required=True,
                   help='preset or cluster YAML; or device groups "dgx-h100:64,dgx-a100:128" (preset:nodes)')
    p.add_argument("--nodes", type=flags.integer("--nodes"))
    p.add_argument("--seq-len", type=flags.integer("--seq-len"), required=True)
    p.add_argument("--global-batch", type=flags.integer("--global-batch"), required=True, help="sequences per step")
    p.add_argument("--top", type=flags.integer("--top"), default=10, help="plans to report (default 10)")
    p.add_argument("--objective", default="throughput", choices=OBJECTIVES)
    p.add_argument("--tokens", type=flags.count("--tokens"),
                   help="tokens to train on (time-to-train, cost, --deadline, --budget)")
    p.add_argument("--deadline", type=flags.duration("--deadline", zero=False),
                   help="longest time to train (s, or with m/h/d/w)")
    p.add_argument("--budget", type=flags.money("--budget"), help="largest cost to train, USD")
    p.add_argument("--fix", default="", help='keys held fixed, e.g. "tp=8,pp=2" or "schedule=1f1b|zb-h1"')
    p.add_argument("--dtype", default="bf16", choices=DTYPES)
    add_job_flags(p)
    p.add_argument("--all-variants", action="store_true",
                   help="rank every variant (default: the best plan of each mesh shape dp/tp/pp/cp/ep)")
    p.add_argument("--partition", type=flags.integer("--partition", lo=0), default=3,
                   help="reported plans with pp > 1 (best first) that get an uneven layer partition by "
                        "ILP (default 3)")
    p.add_argument("--time-limit", type=flags.duration("--time-limit", zero=False),
                   default=1.0, help="solver time limit per ILP, seconds (default 1)")
    p.add_argument("--gap", type=flags.fraction("--gap", zero=True), default=0.01,
                   help="solver relative gap (default 0.01)")
    p.add_argument("--replica-nodes", type=flags.integer("--replica-nodes"), default=1,
                   help="heterogeneous groups: nodes per data-parallel replica (default 1)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan_train)


# ---- simulate train --------------------------------------------------------------------------

def _gib(b: float) -> str:
    return f"{b / 2**30:8.2f} GiB"


def _secs(s: float) -> str:
    if s >= 1:
        return f"{s:9.3f} s "
    return f"{s * 1e3:9.3f} ms"


def format_estimate(est) -> str:
    d = est.to_dict()
    lines = [
        f"model {d['model']} on {d['cluster']} ({d['num_devices']} devices), seq {d['seq_len']}, "
        f"global batch {d['global_batch']}, {d['dtype']}, engine {d['engine']}",
        f"plan  {d['plan_string']}  ({d['micro_batches']} micro-batches per step)",
        "",
        f"  step time          {_secs(d['step_time_s'])}",
        f"  tokens/s           {d['tokens_per_s']:12,.0f}",
        f"  TFLOP/s per device {d['tflops_per_device']:10.1f}",
        f"  MFU                {d['mfu'] * 100:9.1f} %   (HFU {d['hfu'] * 100:.1f} %)",
        f"  fits in memory     {'yes' if d['fits'] else 'NO'}   "
        f"(peak {d['memory']['peak_bytes'] / 2**30:.1f} of {d['memory']['hbm_bytes'] / 2**30:.1f} GiB, "
        f"stage {d['memory']['peak_stage']})",
        "",
        "  memory per device (peak stage)      time per step",
    ]
    mem_rows = [("weights", "weights_bytes"), ("gradients", "gradients_bytes"),
                ("optimizer states", "optimizer_bytes"), ("activations", "activations_bytes"),
                ("comm buffers", "comm_buffers_bytes"), ("reserve/fragment.", "reserve_bytes"),
                ("total", "peak_bytes")]
    time_rows = [("compute", "compute"), ("TP comm (exposed)", "tp_comm"),
                 ("CP comm (exposed)", "cp_comm"), ("EP comm (exposed)", "ep_comm"),
                 ("pipeline bubble", "pp_bubble"), ("pipeline send/recv", "pp_comm"),
                 ("DP/ZeRO comm (exp.)", "dp_comm"), ("optimizer step", "optimizer")]
    step = d["step_time_s"]
    for i in range(max(len(mem_rows), len(time_rows))):
        left = f"    {mem_rows[i][0]:<18}{_gib(d['memory'][mem_rows[i][1]])}" if i < len(mem_rows) else " " * 34
        right = ""
        if i < len(time_rows):
            v = d["breakdown_s"][time_rows[i][1]]
            right = f"    {time_rows[i][0]:<20}{_secs(v)} {100 * v / step:5.1f} %"
        lines.append(left + right)
    for n in d["notes"]:
        lines.append(f"  note: {n}")
    if d.get("validation"):
        lines.append(f"  trust: {d['validation']['note']}")
    return "\n".join(lines)


def cmd_simulate_train(args) -> tuple[object, str]:
    from simulator.analytic import estimate
    s = jobs.training_setup(args.model, args.cluster, args.plan, nodes=args.nodes, **jobs.job_options(args))
    job, cluster, plan = s.job, s.cluster, s.plan
    if args.engine == "analytic" and (args.chrome_trace or args.stragglers or args.full_ranks):
        raise InputError("--chrome-trace, --stragglers and --full-ranks need --engine des")
    if args.engine == "des":
        from hwmodels.fileio import write_json_atomic
        from simulator.des import chrome_trace, parse_stragglers, simulate
        slow = parse_stragglers(args.stragglers, cluster.num_devices, args.seed) if args.stragglers else None
        est, res = simulate(job, plan, cluster, slowdown=slow, full_ranks=args.full_ranks,
                            trace=bool(args.chrome_trace))
        if args.chrome_trace:
            write_json_atomic(args.chrome_trace, chrome_trace(res, plan))
    else:
        est = estimate(job, plan, cluster)
    doc, text = est.to_dict(), format_estimate(est)
    if args.software:
        doc["software"], line = _software_line(args.software)
        text += "\n" + line
    if args.engine == "des" and slow:
        from simulator.faults import describe_stragglers, format_stragglers
        doc["stragglers"] = describe_stragglers(slow, plan.tp, plan.cp, plan.dp, plan.pp)
        text += "\n  " + format_stragglers(doc["stragglers"])
    if args.chrome_trace:
        doc["chrome_trace"] = args.chrome_trace
        text += f"\n  Chrome trace written to {args.chrome_trace} (open it in Perfetto)"
    if args.run_steps:
        from simulator.faults import LLAMA3_FAILURES_PER_DEVICE_HOUR, simulate_goodput
        rate = LLAMA3_FAILURES_PER_DEVICE_HOUR if args.failure_rate is None else args.failure_rate
        g = simulate_goodput(cluster.num_devices, est.step_time_s, args.run_steps, args.ckpt_interval,
                             args.ckpt_s, args.restart_s, rate, seed=args.seed)
        doc["goodput"] = g.to_dict()
        text += (f"\n\n  goodput over {args.run_steps} steps: {g.goodput * 100:.1f} %  "
                 f"({g.failures} failures, job MTBF {g.mtbf_s / 3600:.1f} h, {g.wall_s / 3600:.1f} h wall; "
                 f"Young/Daly checkpoint interval {g.young_daly_interval_steps:.0f} steps)")
    doc["seed"] = args.seed
    return doc, text


# ---- plan train ------------------------------------------------------------------------------

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
    job = jobs.training_job(args.model, **jobs.job_options(args))
    fix = jobs.software_fix(parse_fix(args.fix), args.software)
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
    doc, text = res.to_dict(), format_result(res)
    if args.software:
        doc["software"], line = _software_line(args.software)
        text += "\n" + line
    return doc, text


def _software_line(name: str) -> tuple[dict, str]:
    """The software profile a job took its settings from: its JSON entry and a text line."""
    from simulator.software import get_software
    sw = get_software(name)
    fixed = ",".join(f"{k}={v}" for k, v in sw.plan_defaults.items())
    return ({"name": sw.name, "description": sw.description, "source": sw.source, "plan_defaults": sw.plan_defaults},
            f"  software: {sw.name} ({sw.description}{'; fixes ' + fixed if fixed else ''})")


# ---- plan train: text -----------------------------------------------------------------------

def _validated(v: dict | None) -> str:
    """The planner table's trust column: the regime's published MAPE, or "no" (simulator.regimes)."""
    if not v:
        return "-"
    return f"yes {v['mape_pct']:.0f}%" if v["validated"] else "NO"


def _dominant(bd: dict, step: float) -> str:
    k, v = max(bd.items(), key=lambda kv: kv[1])
    text = f"{k} {100 * v / step:.0f}%"
    if k == "compute":
        o, ov = max(((a, b) for a, b in bd.items() if a != "compute"), key=lambda kv: kv[1])
        text += f" (+{o} {100 * ov / step:.1f}%)"
    return text


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
                     "dev": d["num_devices"], "val": _validated(d.get("validation"))})
    cols = [("#", "rank", "d"), ("plan", "plan", ""), ("step s", "step", ".3f"), ("tokens/s", "tps", ",.0f"),
            ("TFLOP/s/dev", "tflops", ".1f"), ("MFU %", "mfu", ".1f"), ("mem GiB", "mem", ".1f"),
            ("validated", "val", ""), ("dominant term", "dom", "")]
    if res.objective.varies_nodes:
        cols.insert(2, ("devices", "dev", "d"))
    if res.objective.tokens is not None:
        cols += [("time to train", "ttt", "")] + ([("cost USD", "cost", ",.0f")]
                                                  if c.device.price_per_hour is not None else [])
    lines += ["", table(rows, cols, left=(0, 1, -1)), "", "why:"]
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
