"""`clusterplan sweep SPEC.yaml`: many plan/simulate runs from one spec, on a local process pool or
on Ray, into one results table (CSV, Parquet), an append-only results log and an HTML report
(ui.sweep). A re-run of the same spec resumes: finished cells are not run again.

    clusterplan sweep grid.yaml [--executor local|ray] [--ray-address auto|ADDR] [--jobs N]
                                [--out DIR] [--max-retries K] [--no-report] [--json]

A bad spec (unknown key, empty grid, a cell whose options the command refuses) is one line on
stderr and exit code 2; Ctrl-C stops the workers, keeps the rows written so far and exits with
code 130 (run the same command again to resume).
"""
from __future__ import annotations

import sys

from ui.cli import flags
from ui.cli.executors import add_executor_flags, executor_from_args


def register(groups) -> None:
    p = groups["top"].add_parser("sweep", help="run a grid of plan/simulate cells on a process pool or Ray",
                                 description="Run every cell of a sweep spec (YAML: kind, fixed, grid, cells) "
                                             "and write one results table and an HTML report.")
    p.add_argument("spec", metavar="SPEC.yaml", help="the sweep spec")
    p.add_argument("--out", help="output folder (default: SPEC-sweep beside the current directory)")
    add_executor_flags(p, jobs_help="local: worker processes (default: the CPU count); ray without "
                                    "--ray-address: CPUs of the local Ray")
    p.add_argument("--max-retries", type=flags.integer("--max-retries", lo=0), default=3,
                   help="resubmissions of a cell whose worker died (default 3)")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args):
    from ui.sweep import Progress, default_out, format_summary, load_spec, run_sweep
    spec = load_spec(args.spec)
    out = args.out or default_out(args.spec)
    ex = executor_from_args(args, max_retries=args.max_retries)
    bar = Progress(enabled=not args.json)
    try:
        res = run_sweep(spec, out, ex, progress=bar, report=not args.no_report)
    except KeyboardInterrupt:
        bar.close()
        ex.close()
        print(f"clusterplan: interrupted: the finished cells are in {out}/results.jsonl; "
              f"run the same command again to resume", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        bar.close()
        ex.close()
    doc = res.summary()
    return doc, format_summary(doc)
