"""`clusterplan validate profile|run|compare`: measure kernels, run the real model, compare
(validation/profiler.py, harness.py, compare.py). torch is needed by profile and run only, and is
imported when they run."""
from __future__ import annotations

import argparse
import sys


def _size(text: str) -> float:
    """Bytes from '512MiB', '2GiB', '1.5GB', '1000000'."""
    t = text.strip()
    units = {"kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40,
             "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "b": 1}
    low = t.lower()
    for u in sorted(units, key=len, reverse=True):
        if low.endswith(u):
            num, mult = low[: -len(u)], units[u]
            break
    else:
        num, mult = low, 1
    try:
        v = float(num) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 512MiB, 2GiB)") from None
    if not 0 < v < float("inf"):  # also refuses nan and 1e309 (inf)
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive, finite size")
    return v


def _ints(text: str) -> tuple:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated integers, e.g. 1,4,16") from None
    if any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be >= 1")
    return vals


def _pos(name):
    def conv(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}={text!r} must be a positive integer") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name}={v} must be a positive integer")
        return v
    return conv


def _log(json_mode: bool):
    return (lambda msg: print(msg, file=sys.stderr)) if json_mode else print


def cmd_profile(args):
    from validation.profiler import profile
    meta = profile(args.device, args.out, quick=args.quick, threads=args.threads, ranks=args.ranks,
                   log=_log(args.json))
    text = (f"profile written to {args.out}: {meta['device_name']}, {meta['threads']} thread(s), "
            f"torch {meta['torch']}, {meta['profile_seconds']} s; tables {meta['tables']}")
    return meta, text


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


def register(groups) -> None:
    val = groups["validate"]
    p = val.add_parser("profile", help="measure kernels, collectives and overheads with torch")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", required=True, help="folder to write (validation/data/profiles/NAME)")
    p.add_argument("--quick", action="store_true", help="small grids (CI: well under a minute on 2 cores)")
    p.add_argument("--threads", type=_pos("threads"), default=1, help="CPU threads per process")
    p.add_argument("--ranks", type=_pos("ranks"), default=2, help="processes for collectives")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_profile)

    r = val.add_parser("run", help="train and decode the validation GPT for real, record medians")
    r.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    r.add_argument("--out", required=True, help="folder to write (validation/data/runs/NAME)")
    r.add_argument("--model", default="", help="preset, config.json or YAML (default: 4-layer GPT, hidden 512, vocab 4096)")
    r.add_argument("--seq-len", type=_pos("seq-len"), default=128)
    r.add_argument("--batch", type=_pos("batch"), default=4, help="sequences per rank per step")
    r.add_argument("--steps", type=_pos("steps"), default=6, help="timed training steps")
    r.add_argument("--warmup", type=int, default=4, help="untimed steps / iterations first")
    r.add_argument("--ranks", type=_ints, default=(1, 2), help="training cases: 1 = one process, n = DDP over n")
    r.add_argument("--decode-batches", type=_ints, default=(1, 4, 16))
    r.add_argument("--prompt-len", type=_pos("prompt-len"), default=128)
    r.add_argument("--gen-len", type=_pos("gen-len"), default=24)
    r.add_argument("--threads", type=_pos("threads"), default=1, help="CPU threads per process")
    r.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="default fp32 on cpu, bf16 on cuda")
    r.add_argument("--memory-limit", type=_size, help="refuse cases needing more (default: available memory)")
    r.add_argument("--timeout", type=float, default=900.0, help="seconds per case before workers are killed")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_run)

    c = val.add_parser("compare", help="predict the runs from the profile; error per case and MAPE")
    c.add_argument("--profile", required=True, help="profile folder")
    c.add_argument("--runs", required=True, help="run folder")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_compare)

