"""`clusterplan validate published|collectives|profile|run|compare|serving`: the simulator against
measurements. published: training throughput tables; collectives: NCCL tables and bus bandwidths;
profile, run, compare: measure kernels and run the model for real with torch (validation/profiler.py,
harness.py; torch is imported when they run), then predict the runs from the profile;
serving: replay of aiconfigurator-core's measured deployments."""
from __future__ import annotations

import sys

from hwmodels.errors import InputError
from ui.cli import flags
from ui.cli.executors import add_executor_flags, executor_from_args


def cmd_published(args) -> tuple[object, str]:
    from validation.published import format_report, published_report
    # Serial in this process unless --jobs or --executor ray asks for workers.
    ex = executor_from_args(args) if args.executor == "ray" or args.ray_address or args.jobs else None
    try:
        report = published_report(executor=ex)
    finally:
        if ex is not None:
            ex.close()
    return report, format_report(report)


def cmd_collectives(args) -> tuple[object, str]:
    from validation.collectives import format_report, validate_collectives
    report = validate_collectives()
    return report, format_report(report)


def _log(json_mode: bool):
    return (lambda msg: print(msg, file=sys.stderr)) if json_mode else print


def cmd_profile(args):
    from validation.profiler import profile
    meta = profile(args.device, args.out, quick=args.quick, threads=args.threads, ranks=args.ranks,
                   log=_log(args.json))
    return meta, format_profile(meta, args.out)


def format_profile(meta: dict, out: str) -> str:
    """What `validate profile` wrote: the machine, then one row per table (file, rows)."""
    from ui.cli.text import table
    head = (f"profile written to {out}: {meta['device_name']}, {meta['threads']} thread(s), "
            f"torch {meta['torch']}, {meta['profile_seconds']} s")
    rows = [{"table": k, "rows": v} for k, v in meta["tables"].items()]
    return head + "\n\n" + table(rows, [("table", "table", ""), ("rows", "rows", "d")])


def _model(ref):
    from validation.harness import default_model
    if not ref:
        return default_model()
    from simulator.models import load_model
    return load_model(ref)


def cmd_run(args):
    from validation.harness import RunConfig, run
    dtype = args.dtype or ("fp32" if args.device == "cpu" else "bf16")
    cfg = RunConfig(model=_model(args.model), seq_len=args.seq_len, batch=args.batch, steps=args.steps,
                    warmup=args.warmup, ranks=args.ranks, decode_batches=args.decode_batches,
                    prompt_len=args.prompt_len, gen_len=args.gen_len, threads=args.threads,
                    device=args.device, dtype=dtype, timeout_s=args.timeout)
    res = run(cfg, args.out, memory_limit=args.memory_limit, log=_log(args.json))
    lines = [f"runs written to {args.out}"]
    for c in res["cases"]:
        lines.append(f"  {c['case']:<16} median {c['median_s'] * 1e3:9.2f} ms  "
                     f"(p10 {c['p10_s'] * 1e3:.2f}, p90 {c['p90_s'] * 1e3:.2f}, {c['samples']} samples)")
    return res, "\n".join(lines)


def cmd_compare(args):
    from validation.compare import compare, format_report
    rep = compare(args.profile, args.runs)
    return rep, format_report(rep)


def _write_regimes(path, text: str) -> str:
    """Rewrite a validated-regimes file (simulator/regimes.py); the line the report ends with."""
    from hwmodels.fileio import write_text_atomic
    write_text_atomic(path, text)
    return f"\nwrote {path}"


def cmd_serving(args):
    from validation.serving import format_report, require_default_suite, run_suite
    if args.regimes:  # before the run: the file describes the default suite only
        require_default_suite(args.scope, args.deployment, args.client, args.quick, args.limit)
    # Ray when asked for; locally, run_suite's own pool of --jobs workers.
    ex = executor_from_args(args) if args.executor == "ray" or args.ray_address else None
    try:
        doc = run_suite(quick=args.quick, limit=args.limit, scope=args.scope, client=args.client,
                        jobs=args.jobs, executor=ex, max_row_tokens=args.max_row_tokens,
                        deployment=args.deployment)
    finally:
        if ex is not None:
            ex.close()
    text = format_report(doc, rows=args.rows)
    if args.regimes:
        from simulator.regimes import SERVING_REGIMES_FILE
        from validation.serving import regimes_document
        text += _write_regimes(SERVING_REGIMES_FILE, regimes_document(doc))
    return doc, text


def cmd_throughput(args):
    from validation.throughput import format_report, run_suite
    if args.regimes and args.limit is not None:
        raise InputError(f"--regimes needs every cell: drop --limit {args.limit}")
    doc = run_suite(limit=args.limit)
    text = format_report(doc, rows=args.rows)
    if args.regimes:
        from simulator.regimes import OFFLINE_REGIMES_FILE
        from validation.throughput import regimes_document
        text += _write_regimes(OFFLINE_REGIMES_FILE, regimes_document(doc))
    return doc, text


def register(groups) -> None:
    val = groups["validate"]
    pub = val.add_parser("published", help="published training throughput (Megatron-LM 2021 Tables 1-2, NeMo 24.07, "
                                          "MLPerf v3.0 GPT-3, Megatron-Bridge H100, llm-foundry FSDP)")
    add_executor_flags(pub)
    pub.add_argument("--json", action="store_true")
    pub.set_defaults(func=cmd_published)

    v = val.add_parser("collectives", help="collective model vs measured NCCL tables and published bus bandwidths")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_collectives)

    p = val.add_parser("profile", help="measure kernels, collectives and overheads with torch")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", required=True, help="folder to write (validation/data/profiles/NAME)")
    p.add_argument("--quick", action="store_true", help="small grids (CI: well under a minute on 2 cores)")
    p.add_argument("--threads", type=flags.integer("--threads"), default=1, help="CPU threads per process")
    p.add_argument("--ranks", type=flags.integer("--ranks"), default=2, help="processes for collectives")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_profile)

    r = val.add_parser("run", help="train and decode the validation GPT for real, record medians")
    r.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    r.add_argument("--out", required=True, help="folder to write (validation/data/runs/NAME)")
    r.add_argument("--model", default="", help="preset, config.json or YAML (default: 4-layer GPT, hidden 512, vocab 4096)")
    r.add_argument("--seq-len", type=flags.integer("--seq-len"), default=128)
    r.add_argument("--batch", type=flags.integer("--batch"), default=4, help="sequences per rank per step")
    r.add_argument("--steps", type=flags.integer("--steps"), default=6, help="timed training steps")
    r.add_argument("--warmup", type=flags.integer("--warmup", lo=0), default=4, help="untimed steps / iterations first")
    r.add_argument("--ranks", type=flags.integers("--ranks"), default=(1, 2),
                   help="training cases: 1 = one process, n = DDP over n")
    r.add_argument("--decode-batches", type=flags.integers("--decode-batches"), default=(1, 4, 16))
    r.add_argument("--prompt-len", type=flags.integer("--prompt-len"), default=128)
    r.add_argument("--gen-len", type=flags.integer("--gen-len"), default=24)
    r.add_argument("--threads", type=flags.integer("--threads"), default=1, help="CPU threads per process")
    r.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="default fp32 on cpu, bf16 on cuda")
    r.add_argument("--memory-limit", type=flags.size("--memory-limit"),
                   help="refuse cases needing more (default: available memory)")
    r.add_argument("--timeout", type=flags.positive("--timeout"), default=900.0,
                   help="seconds per case before workers are killed")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_run)

    c = val.add_parser("compare", help="predict the runs from the profile; error per case and MAPE")
    c.add_argument("--profile", required=True, help="profile folder")
    c.add_argument("--runs", required=True, help="run folder")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_compare)

    sv = val.add_parser("serving", help="replay measured deployments (aiconfigurator-core silicon_sample.csv)")
    sv.add_argument("--quick", action="store_true", help="1 warm-up + 3 measured requests per client")
    sv.add_argument("--limit", type=flags.integer("--limit"), help="replay only the first N rows in scope")
    sv.add_argument("--scope", default="all", choices=["dense", "all"],
                    help="all: every row that can be modelled (default); dense: dense models, "
                         "H100/H200, aggregated (the acceptance set)")
    sv.add_argument("--client", default="auto", choices=["auto", "bench-serving", "aiperf"],
                    help="benchmark client: auto = each row's own, from its data source (default); "
                         "a name replays every row with that client (sensitivity check)")
    sv.add_argument("--deployment", default="recorded",
                    choices=["recorded", "recorded+generator", "aic-generator", "defaults"],
                    help="settings each row replays with: recorded = what its harness states "
                         "(AIConfigurator's TRT-LLM generator, InferenceMAX scripts; default); "
                         "recorded+generator = that plus the generator's vLLM/SGLang rules; "
                         "aic-generator = the generator's rules, all engines, only; defaults = "
                         "engine defaults (docs/modeling.md §4)")
    sv.add_argument("--rows", action="store_true", help="print the per-row table too")
    sv.add_argument("--regimes", action="store_true",
                    help="rewrite simulator/data/validated_serving_regimes.json (each serving regime's "
                         "measured error, which simulate serve and plan serve print) from this run")
    sv.add_argument("--max-row-tokens", type=flags.integer("--max-row-tokens"), default=1_048_576,
                    help="skip rows outside the dense H100/H200 set whose measured phase generates "
                         "more output tokens (10*C*osl; replay time grows with them; the default keeps "
                         "the suite near a minute on 2 cores; 100000000000 replays all 4,071 rows "
                         "that can be built, in about 10 min)")
    add_executor_flags(sv)
    sv.add_argument("--json", action="store_true")
    sv.set_defaults(func=cmd_serving)

    th = val.add_parser("throughput", help="offline max throughput vs TensorRT-LLM v0.14's published "
                                           "trtllm-bench table (AIConfigurator 0.12 beside)")
    th.add_argument("--limit", type=flags.integer("--limit"), help="replay only the first N rows")
    th.add_argument("--rows", action="store_true", help="print the per-cell table too")
    th.add_argument("--regimes", action="store_true",
                    help="rewrite simulator/data/validated_offline_regimes.json (each offline regime's "
                         "measured error, which simulate serve --client trtllm-bench prints) from this run")
    th.add_argument("--json", action="store_true")
    th.set_defaults(func=cmd_throughput)
