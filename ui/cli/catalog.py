"""`clusterplan catalog devices|clusters|models|schedules`: the devices, clusters, model presets and
pipeline schedules; `catalog models --model FILE` shows one model as clusterplan parsed it.

Units: memory capacities in GiB (2^30 bytes), as every other output; rates (FLOP/s, bytes/s) in
decimal units (TFLOP/s, TB/s, GB/s), as datasheets and nccl-tests give them. Headers name them."""
from __future__ import annotations

import math

from ui.cli.text import table


def register(groups) -> None:
    p = groups["catalog"]
    p.add_argument("what", choices=["devices", "clusters", "models", "schedules"])
    p.add_argument("--model", help="with `models`: show this preset, config.json (or its folder) or YAML as parsed")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_catalog)


def cmd_catalog(args) -> tuple[object, str]:
    if args.model and args.what != "models":
        from hwmodels.errors import InputError
        raise InputError(f"--model applies to `catalog models`, not `catalog {args.what}`")
    if args.what == "devices":
        from hwmodels.devices import all_devices
        rows = [{"name": d.name, "kind": d.kind, "vendor": d.vendor,
                 "bf16_tflops": d.peak_flops.get("bf16", math.nan) / 1e12 if d.peak_flops.get("bf16") else None,
                 "fp8_tflops": d.peak_flops["fp8"] / 1e12 if d.peak_flops.get("fp8") else None,
                 "hbm_bytes": d.hbm_bytes, "hbm_gib": d.hbm_bytes / 2**30 if d.hbm_bytes else None,
                 "hbm_tb_s": d.hbm_bytes_per_s / 1e12 if d.hbm_bytes_per_s else None,
                 "scale_up_gb_s": d.scale_up_bytes_per_s / 1e9 if d.scale_up_bytes_per_s else None,
                 "power_w": d.power_w, "price_per_hour": d.price_per_hour,
                 "measured_kernels": d.kernel_profile or (f"via {d.efficiency_from}" if d.efficiency_from else "none")}
                for d in all_devices()]
        text = table(rows, [("device", "name", ""), ("kind", "kind", ""), ("bf16 TF", "bf16_tflops", ".0f"),
                            ("fp8 TF", "fp8_tflops", ".0f"), ("HBM GiB", "hbm_gib", ".0f"),
                            ("HBM TB/s", "hbm_tb_s", ".2f"), ("scale-up GB/s", "scale_up_gb_s", ".0f"),
                            ("W", "power_w", ".0f"), ("$/h", "price_per_hour", ".2f"),
                            ("kernel data", "measured_kernels", "")])
        return rows, text
    if args.what == "clusters":
        from hwmodels.clusters import cluster_names, load_cluster, summary
        rows = [summary(load_cluster(n)) for n in cluster_names()]
        text = "\n".join(f"{r['name']:<14} {r.get('description', '')}" for r in rows)
        return rows, text
    if args.what == "schedules":
        return _schedules()
    if args.model:
        return _one_model(args.model)
    from simulator.models import load_model, preset_names
    rows = [load_model(n).summary() for n in preset_names()]
    for r in rows:
        r["params_b"] = r["params"] / 1e9
        r["active_b"] = r["active_params"] / 1e9
    text = table(rows, [("model", "name", ""), ("layers", "layers", "d"), ("hidden", "hidden", "d"),
                        ("heads", "heads", "d"), ("kv", "kv_heads", "d"), ("ffn", "ffn", "d"),
                        ("vocab", "vocab", "d"), ("experts", "experts", "d"), ("params (B)", "params_b", ".2f"),
                        ("active (B)", "active_b", ".2f")])
    return rows, text


def _one_model(ref: str) -> tuple[dict, str]:
    """One model as parsed: the shapes every cost is computed from, and its parameter counts."""
    from simulator.models import load_model
    m = load_model(ref)
    d = m.summary()
    d.update({"head_dim": m.head_dim, "context": m.max_position_embeddings or None})
    head = (f"{m.qk_nope_head_dim}+{m.qk_rope_head_dim} (q/k), {m.v_head_dim} (v)" if m.is_mla else d["head_dim"])
    rows = [("model", d["name"]), ("layers", d["layers"]), ("hidden size", d["hidden"]),
            ("attention heads", d["heads"]), ("KV heads", d["kv_heads"]), ("head dim", head),
            ("FFN size", d["ffn"]), ("vocabulary", d["vocab"]),
            ("experts", f"{d['experts']} (top {d['top_k']})" if d["experts"] else "none (dense)"),
            ("attention", "MLA" if d["mla"] else "GQA" if d["kv_heads"] < d["heads"] else "MHA"),
            ("context", f"{d['context']:,} tokens" if d["context"] else "not given"),
            ("parameters", f"{d['params'] / 1e9:.2f} B"),
            ("active parameters", f"{d['active_params'] / 1e9:.2f} B")]
    if d["published_params"]:
        rows.append(("published", f"{d['published_params'] / 1e9:.2f} B"))
    text = "\n".join(f"{k:<18} {v}" for k, v in rows)
    return d, text


def _first_line(doc: str | None) -> str:
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def _schedules() -> tuple[list, str]:
    """The registry of `simulator.schedules`: each schedule with its source and closed forms."""
    from simulator import schedules
    rows = []
    for name, s in schedules.SCHEDULES.items():
        rows.append({"name": name, "description": _first_line(type(s).__doc__),
                     "bubble": _first_line(s.bubble_s.__doc__), "in_flight": _first_line(s.inflight.__doc__),
                     "splits_weight_gradients": s.weight_split, "parameter_copies": 2 if s.pass_fraction(2, 2) < 1 else 1})
    text = "\n\n".join(f"{r['name']}\n  {r['description']}\n  bubble: {r['bubble']}\n  in flight: {r['in_flight']}"
                        for r in rows)
    return rows, text
