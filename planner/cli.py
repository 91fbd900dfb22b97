"""`clusterplan` command line (DESIGN.md §4). Every command takes --json; bad input ends with one
line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import importlib
import json
import math
import sys

from hwmodels.errors import InputError

EXIT_BAD_INPUT = 2
# Commands that live in their own modules. Each module defines `register(groups)`, where groups
# maps "top", "simulate", "plan" and "validate" to argparse subparser collections; every parser it
# adds calls `set_defaults(func=...)` with func(args) -> (JSON-able document, text).
EXTENSIONS = ("planner.cmd_collective", "planner.cmd_plan", "planner.cmd_validate", "planner.cmd_ui",
              "planner.cmd_serve", "planner.cmd_plan_serve")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's usage dump becomes one line, exit 2
        raise InputError(message)


def int_at_least(name: str, lo: int):
    """argparse type: an integer >= lo, or a one-line error naming the flag."""
    what = "a positive integer" if lo == 1 else f"an integer >= {lo}"

    def conv(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}={text!r} must be {what}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"{name}={v} must be {what}")
        return v
    return conv


def _positive_int(name):
    return int_at_least(name, 1)


def _non_negative(name):
    def conv(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}={text!r} must be a number") from None
        if not v >= 0 or not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{name}={text!r} must be a finite number >= 0")
        return v
    return conv


def add_job_options(p: argparse.ArgumentParser) -> None:
    """The framework facts of a training job (TrainingJob fields) as flags."""
    p.add_argument("--attention", default="flash", choices=["flash", "unfused"],
                   help="flash (fused) or unfused attention kernels (Megatron-LM 2021)")
    p.add_argument("--grad-overlap", type=_on_off, default=True,
                   help="overlap DP gradient reduction with backward (on|off)")
    p.add_argument("--tp-overlap", type=_on_off, default=False,
                   help="pipeline TP collectives with their GEMMs, needs sp=on (TE userbuffers; on|off)")
    p.add_argument("--p2p-overlap", type=_on_off, default=False,
                   help="overlap pipeline send/recv with compute (on|off; off = blocking sends)")
    p.add_argument("--dropout", type=_on_off, default=True, help="dropout layers present (on|off)")


def job_from_args(args, model):
    from simulator.training import TrainingJob
    return TrainingJob(model=model, seq_len=args.seq_len, global_batch=args.global_batch, dtype=args.dtype,
                       flash_attention=args.attention == "flash", overlap_grad_reduce=args.grad_overlap,
                       overlap_tp_comm=args.tp_overlap, overlap_p2p_comm=args.p2p_overlap,
                       dropout=args.dropout)


def _on_off(text):
    t = text.lower()
    if t in ("on", "true", "yes", "1"):
        return True
    if t in ("off", "false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r}: valid: on, off")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="clusterplan", description="Cluster simulator and parallelism planner for LLM training and serving.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    cat = sub.add_parser("catalog", help="list devices, clusters or models")
    cat.add_argument("what", choices=["devices", "clusters", "models"])
    cat.add_argument("--json", action="store_true")
    cat.set_defaults(func=cmd_catalog)

    sim = sub.add_parser("simulate", help="simulate one plan")
    simsub = sim.add_subparsers(dest="target", required=True, parser_class=_Parser)
    tr = simsub.add_parser("train", help="predict one training step of a plan")
    tr.add_argument("--model", required=True, help="preset, HF config.json or YAML")
    tr.add_argument("--cluster", required=True, help="preset or cluster YAML")
    tr.add_argument("--nodes", type=_positive_int("nodes"))
    tr.add_argument("--plan", default="", help='e.g. "tp=8,pp=8,mb=1,schedule=interleaved,vpp=2"')
    tr.add_argument("--seq-len", type=_positive_int("seq-len"), required=True)
    tr.add_argument("--global-batch", type=_positive_int("global-batch"), required=True,
                    help="sequences per step")
    tr.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp8", "fp4"])
    tr.add_argument("--engine", default="analytic", choices=["analytic", "des"],
                    help="analytic closed forms, or the discrete-event simulation (simpy)")
    tr.add_argument("--trace", metavar="FILE", help="DES: write a Chrome-trace JSON timeline (Perfetto)")
    tr.add_argument("--stragglers", metavar="SPEC",
                    help='DES: slow ranks, "RANK:FACTOR,..." or "random:FRACTION:FACTOR"')
    tr.add_argument("--full-ranks", action="store_true",
                    help="DES: simulate every DP replica (automatic with stragglers)")
    tr.add_argument("--seed", type=int_at_least("--seed", 0), default=0, help="seed for random stragglers and failures")
    tr.add_argument("--run-steps", type=_positive_int("run-steps"),
                    help="goodput over a run of this many steps, with failures and checkpoints")
    tr.add_argument("--ckpt-interval", type=_positive_int("ckpt-interval"), default=500,
                    help="steps between checkpoints (default 500)")
    tr.add_argument("--ckpt-s", type=_non_negative("ckpt-s"), default=30.0,
                    help="seconds a checkpoint stalls training (default 30; 0 = fully async)")
    tr.add_argument("--restart-s", type=_non_negative("restart-s"), default=600.0,
                    help="seconds to restart after a failure (default 600)")
    tr.add_argument("--failure-rate", type=_non_negative("failure-rate"), default=None,
                    help="failures per device-hour (default: Llama 3's 419 in 54 days on 16k H100)")
    add_job_options(tr)
    tr.add_argument("--json", action="store_true")
    tr.set_defaults(func=cmd_simulate_train)

    pl = sub.add_parser("plan", help="search for the best plan")
    plsub = pl.add_subparsers(dest="target", required=True, parser_class=_Parser)

    val = sub.add_parser("validate", help="compare predictions with measurements")
    valsub = val.add_subparsers(dest="suite", required=True, parser_class=_Parser)
    pub = valsub.add_parser("published", help="published training throughput (Megatron-LM 2021 Table 1, NeMo 24.07)")
    pub.add_argument("--json", action="store_true")
    pub.set_defaults(func=cmd_validate_published)

    groups = {"top": sub, "simulate": simsub, "plan": plsub, "validate": valsub}
    for name in EXTENSIONS:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        mod.register(groups)
    return p


# ---- formatting -----------------------------------------------------------------------------

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
    return "\n".join(lines)


def _table(rows: list[dict], cols: list[tuple[str, str, str]]) -> str:
    """cols: (header, key, format spec)."""
    cells = [[h for h, _, _ in cols]] + [[format(r[k], f) if r[k] is not None else "-" for _, k, f in cols]
                                         for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    out = ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths)))
           for row in cells]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


# ---- commands -------------------------------------------------------------------------------

def cmd_catalog(args) -> tuple[object, str]:
    if args.what == "devices":
        from hwmodels.devices import all_devices
        rows = [{"name": d.name, "kind": d.kind, "vendor": d.vendor,
                 "bf16_tflops": d.peak_flops.get("bf16", math.nan) / 1e12 if d.peak_flops.get("bf16") else None,
                 "fp8_tflops": d.peak_flops["fp8"] / 1e12 if d.peak_flops.get("fp8") else None,
                 "hbm_gb": d.hbm_bytes / 1e9 if d.hbm_bytes else None,
                 "hbm_tb_s": d.hbm_bytes_per_s / 1e12 if d.hbm_bytes_per_s else None,
                 "scale_up_gb_s": d.scale_up_bytes_per_s / 1e9 if d.scale_up_bytes_per_s else None,
                 "power_w": d.power_w, "price_per_hour": d.price_per_hour,
                 "measured_kernels": d.kernel_profile or (f"via {d.efficiency_from}" if d.efficiency_from else "none")}
                for d in all_devices()]
        text = _table(rows, [("device", "name", ""), ("kind", "kind", ""), ("bf16 TF", "bf16_tflops", ".0f"),
                             ("fp8 TF", "fp8_tflops", ".0f"), ("HBM GB", "hbm_gb", ".0f"),
                             ("HBM TB/s", "hbm_tb_s", ".2f"), ("scale-up GB/s", "scale_up_gb_s", ".0f"),
                             ("W", "power_w", ".0f"), ("$/h", "price_per_hour", ".2f"),
                             ("kernel data", "measured_kernels", "")])
        return rows, text
    if args.what == "clusters":
        from hwmodels.clusters import cluster_names, load_cluster, summary
        rows = [summary(load_cluster(n)) for n in cluster_names()]
        text = "\n".join(f"{r['name']:<14} {r.get('description', '')}" for r in rows)
        return rows, text
    from simulator.models import load_model, preset_names
    rows = [load_model(n).summary() for n in preset_names()]
    for r in rows:
        r["params_b"] = r["params"] / 1e9
        r["active_b"] = r["active_params"] / 1e9
    text = _table(rows, [("model", "name", ""), ("layers", "layers", "d"), ("hidden", "hidden", "d"),
                         ("heads", "heads", "d"), ("kv", "kv_heads", "d"), ("ffn", "ffn", "d"),
                         ("vocab", "vocab", "d"), ("experts", "experts", "d"), ("params (B)", "params_b", ".2f"),
                         ("active (B)", "active_b", ".2f")])
    return rows, text


def cmd_simulate_train(args) -> tuple[object, str]:
    from hwmodels.clusters import load_cluster
    from simulator.analytic import estimate
    from simulator.models import load_model
    from simulator.training import parse_plan
    model = load_model(args.model)
    cluster = load_cluster(args.cluster, nodes=args.nodes)
    job = job_from_args(args, model)
    cluster.device.peak(args.dtype)  # the device must support the dtype
    plan = parse_plan(args.plan, cluster.num_devices)
    if args.engine == "analytic" and (args.trace or args.stragglers or args.full_ranks):
        raise InputError("--trace, --stragglers and --full-ranks need --engine des")
    if args.engine == "des":
        from simulator.des import chrome_trace, parse_stragglers, simulate
        slow = parse_stragglers(args.stragglers, cluster.num_devices, args.seed) if args.stragglers else None
        est, res = simulate(job, plan, cluster, slowdown=slow, full_ranks=args.full_ranks, trace=bool(args.trace))
        if args.trace:
            write_json_atomic(args.trace, chrome_trace(res, plan))
    else:
        est = estimate(job, plan, cluster)
    doc, text = est.to_dict(), format_estimate(est)
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


def write_json_atomic(path: str, doc) -> None:
    """Write JSON atomically (hwmodels.fileio): never a half-written file."""
    from hwmodels.fileio import write_json_atomic as write
    write(path, doc)


def cmd_validate_published(args) -> tuple[object, str]:
    from validation.published import format_report, published_report
    report = published_report()
    return report, format_report(report)


def run(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    doc, text = args.func(args)
    if getattr(args, "json", False):
        doc = json_safe(doc)
        if isinstance(doc, dict):
            doc["provenance"] = provenance(getattr(args, "seed", None))
        json.dump(doc, sys.stdout, indent=1, sort_keys=False, default=str, allow_nan=False)
        sys.stdout.write("\n")
    else:
        print(text)
    return 0


def provenance(seed=None) -> dict:
    """What produced a JSON document: the versions of clusterplan and of the measured kernel tables
    under the model (DESIGN.md §5), and the seed of its stochastic parts (None where it has none)."""
    from importlib.metadata import PackageNotFoundError, version

    def ver(pkg):
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "not installed"
    return {"clusterplan": ver("clusterplan"), "kernel_tables": f"aiconfigurator-core {ver('aiconfigurator-core')}",
            "seed": seed}


def json_safe(o):
    """`o` as strict JSON values (RFC 8259 has no NaN or Infinity: they become null); objects with
    `to_dict` and numpy scalars/arrays are converted."""
    if isinstance(o, dict):
        return {k if isinstance(k, str) else json.dumps(k) if isinstance(k, (int, float)) or k is None else str(k):
                json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    if isinstance(o, bool) or o is None or isinstance(o, (int, str)):
        return o
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if hasattr(o, "to_dict"):
        return json_safe(o.to_dict())
    if hasattr(o, "tolist"):  # numpy scalar or array
        return json_safe(o.tolist())
    return o


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except InputError as e:
        msg = " ".join(str(e).split())
        print(f"clusterplan: error: {msg}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
