"""What the dashboard pages share besides drawing: page inputs kept in the URL, uploads turned into
specs a link can carry, and the cached computations behind every page.

URL state. A page declares each input once with `PageState.init(name, default, ...)`: on the
page's first run the value comes from `st.query_params[name]` (or, when the user came back from
another page, from the value they left), else the default; after the widgets are drawn,
`PageState.sync_url()` writes every input back to the query string, so a copied link reproduces
the page. Uploaded clusters and models travel in the URL too, as compact JSON (`cluster_spec`,
`model_cfg`), so a link to an uploaded config works in a fresh browser.

Caching. The computations below are `st.cache_data` functions keyed only by the inputs they read;
a widget that changes only the display (units, which chart) re-renders from the cache. `CALLS`
counts cache misses per function so tests can check that.
"""
from __future__ import annotations

import csv
import inspect
import io
import json
import os
import tempfile
from collections import Counter

import streamlit as st
import yaml

from hwmodels.clusters import Cluster, cluster_names, load_cluster, summary
from hwmodels.errors import InputError
from ui import jobs

CUSTOM = "custom (upload)"
MAX_UPLOAD_BYTES = 256 * 1024  # cluster YAML / config.json uploads
MAX_SPEC_CHARS = 6000  # longest spec carried in a URL
CALLS: Counter = Counter()  # cache misses per cached function (for tests and the benchmark)


# ---- URL state ---------------------------------------------------------------------------------

def _parse_bool(text: str) -> bool:
    t = str(text).lower()
    if t in ("1", "true", "on", "yes"):
        return True
    if t in ("0", "false", "off", "no"):
        return False
    raise ValueError(text)


PARSERS = {str: str, int: int, float: float, bool: _parse_bool}


class PageState:
    """The inputs of one page: widget keys `<page>.<name>` in session state, mirrored in the URL."""

    def __init__(self, page: str):
        self.page = page
        self.names: list[str] = []
        self.waiting: list[str] = []  # inputs still missing (an upload not made yet, or refused)

    def key(self, name: str) -> str:
        return f"{self.page}.{name}"

    def _keep(self, name: str) -> str:  # survives the widget being off screen (another page)
        return f"_{self.page}.{name}"

    def init(self, name: str, default, kind=str, choices=None, lo=None, hi=None) -> str:
        """Make sure session state holds a valid value for input `name`; return its widget key.
        Order: the live widget value, the URL, the value kept from an earlier visit, the default."""
        key = self.key(name)
        if name not in self.names:
            self.names.append(name)
        valid = lambda v: (choices is None or v in choices) and (lo is None or v >= lo) \
            and (hi is None or v <= hi)  # noqa: E731
        if key in st.session_state and valid(st.session_state[key]):
            return key
        value = default
        raw = st.query_params.get(name)
        kept = st.session_state.get(self._keep(name))
        if raw is not None:
            try:
                parsed = PARSERS[kind](raw)
                if valid(parsed):
                    value = parsed
            except (TypeError, ValueError):
                pass
        elif kept is not None and valid(kept):
            value = kept
        st.session_state[key] = value
        return key

    def get(self, name: str):
        return st.session_state[self.key(name)]

    def set(self, name: str, value) -> None:
        if name not in self.names:
            self.names.append(name)
        st.session_state[self.key(name)] = value

    def stop_if_waiting(self) -> None:
        """After the inputs are drawn: when an input is missing (a "custom (upload)" choice with no
        valid upload yet), record the URL and stop the page before any result is drawn, so that a
        refused upload never leaves an earlier model's or cluster's results on screen."""
        if self.waiting:
            self.sync_url()
            st.stop()

    def sync_url(self) -> dict:
        """Write the page's inputs to the query string (and keep them for the next visit)."""
        values = {}
        for name in self.names:
            value = st.session_state.get(self.key(name))
            st.session_state[self._keep(name)] = value
            if value is None:
                continue
            text = ("1" if value else "0") if isinstance(value, bool) else str(value)
            if len(text) <= MAX_SPEC_CHARS:  # an oversized upload stays in this session only
                values[name] = text
        if dict(st.query_params) != values:
            st.query_params.from_dict(values)
        return values


# ---- uploads -> specs that a URL can carry -------------------------------------------------------

def read_upload(uploaded, what: str) -> str:
    """The text of an uploaded file, refusing big or non-UTF-8 files with a one-line InputError."""
    data = uploaded.getvalue()
    if len(data) > MAX_UPLOAD_BYTES:
        raise InputError(f"{what} {uploaded.name!r} is {len(data) // 1024} KiB; the limit is "
                         f"{MAX_UPLOAD_BYTES // 1024} KiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{what} {uploaded.name!r} is not UTF-8 text") from None


def cluster_spec_from_yaml(text: str, filename: str = "cluster.yaml") -> str:
    """Compact JSON of an uploaded cluster YAML (yaml.safe_load; `sources` dropped), validated."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"cluster file {filename!r}: YAML syntax error: {first}") from None
    if not isinstance(data, dict):
        raise InputError(f"cluster file {filename!r}: expected a mapping of cluster fields")
    data = {k: v for k, v in data.items() if k != "sources"}
    data.setdefault("name", os.path.splitext(os.path.basename(filename))[0] or "custom")
    spec = json.dumps(data, separators=(",", ":"), sort_keys=True, default=str)
    cluster_from_spec(spec)  # raises InputError naming the bad field
    return spec


def _scalar(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def model_cfg_from_text(text: str, filename: str = "config.json") -> str:
    """Compact JSON of the scalar keys of an uploaded HF config.json (or YAML), validated."""
    try:
        cfg = json.loads(text) if filename.lower().endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        first = str(e).strip().splitlines()[0]
        raise InputError(f"model file {filename!r} is not valid JSON/YAML: {first}") from None
    if not isinstance(cfg, dict):
        raise InputError(f"model file {filename!r}: expected a mapping of config keys")
    # Nested entries (rope_scaling, quantization_config, architectures) are not read by
    # simulator.models.from_hf_config; dropping them keeps the link short.
    keep = {k: v for k, v in cfg.items() if _scalar(v) and not str(k).startswith("_")
            and k not in ("transformers_version", "torch_dtype")}
    stem = os.path.splitext(os.path.basename(filename))[0]
    keep.setdefault("_name", stem if stem != "config" else str(cfg.get("model_type") or "custom"))
    spec = json.dumps(keep, separators=(",", ":"), sort_keys=True)
    model_from_cfg(spec)  # raises InputError naming the bad key
    return spec


# ---- cached loaders and computations -----------------------------------------------------------

@st.cache_resource(max_entries=64, show_spinner=False)
def cluster_from_spec(spec: str) -> Cluster:
    """A cluster from compact JSON (the fields of one preset), through hwmodels' own validation."""
    try:
        data = json.loads(spec)
    except json.JSONDecodeError:
        raise InputError("cluster spec in the link is not valid JSON; upload the YAML again") from None
    name = str(data.get("name") or "custom") if isinstance(data, dict) else "custom"
    with tempfile.TemporaryDirectory() as d:
        # A fixed file name (the user's name is not a path); JSON is YAML: hwmodels reads it with
        # yaml.safe_load and takes the cluster's name from its `name` field.
        path = os.path.join(d, "uploaded-cluster.yaml")
        with open(path, "w") as f:
            f.write(spec)
        try:
            return load_cluster(path)
        except InputError as e:
            raise InputError(str(e).replace(repr(path), repr(f"{name} (uploaded)"))) from None


def get_cluster(ref: str, spec: str | None, nodes: int) -> Cluster:
    """A preset or an uploaded spec, resized to `nodes`."""
    if ref == CUSTOM and spec is None:
        raise InputError("upload a cluster YAML (or pick a preset)")
    base = cluster_from_spec(spec) if ref == CUSTOM else load_cluster(ref)
    return base.with_nodes(nodes)


@st.cache_resource(max_entries=64, show_spinner=False)
def model_from_cfg(spec: str):
    from simulator.models import from_hf_config
    try:
        cfg = json.loads(spec)
    except json.JSONDecodeError:
        raise InputError("model config in the link is not valid JSON; upload config.json again") from None
    if not isinstance(cfg, dict):
        raise InputError("model config in the link is not a mapping; upload config.json again")
    name = str(cfg.pop("_name", "custom"))
    return from_hf_config(cfg, name=name, where=f"model config {name!r}")


def get_model(ref: str, cfg: str | None):
    from simulator.models import load_model
    if ref == CUSTOM:
        if cfg is None:
            raise InputError("upload a Hugging Face config.json (or pick a preset)")
        return model_from_cfg(cfg)
    return load_model(ref)


COLLECTIVE_SIZES = [2 ** k for k in range(10, 33)]  # 1 KiB .. 4 GiB
CURVE_OPS = ("all_reduce", "all_gather")


@st.cache_data(max_entries=64, show_spinner=False)
def collective_curve(ref: str, spec: str | None, nodes: int, ranks: int) -> list[dict]:
    """Time and nccl-tests bandwidths of all-reduce and all-gather over `ranks` contiguous ranks."""
    CALLS["collective_curve"] += 1
    from hwmodels.collectives import bus_bandwidth, collective_s
    cluster = get_cluster(ref, spec, nodes)
    rows = []
    for op in CURVE_OPS:
        for nbytes in COLLECTIVE_SIZES:
            t = collective_s(cluster, op, ranks, 1, float(nbytes))
            algbw, busbw = bus_bandwidth(op, ranks, float(nbytes), t)
            rows.append({"op": op, "ranks": ranks, "bytes": nbytes, "time_s": t,
                         "algbw_bytes_per_s": algbw, "busbw_bytes_per_s": busbw})
    return rows


def tier_rows(cluster_summary: dict) -> list[dict]:
    """Per-tier table: what each level of the network is, how many devices a group inside it spans,
    its wire rate per device per direction (GB/s), per-step latency (µs) and oversubscription."""
    rows, span = [], 1
    tiers = cluster_summary["tiers"]
    for i, t in enumerate(tiers):
        last = i == len(tiers) - 1
        span = cluster_summary["num_devices"] if last else span * t["size"]
        rows.append({"tier": i, "name": t["name"], "kind": t["kind"],
                     "groups": f"{t['size']} nodes" if last else f"{t['size']} devices",
                     "span": span, "GB/s/dir": t["bytes_per_s"] / 1e9,
                     "latency_us": t["latency_s"] * 1e6, "oversub": t["oversubscription"]})
    return rows


def tier_table(rows: list[dict]) -> list[dict]:
    """tier_rows formatted for display (every value a string, so no column is cut or rounded)."""
    return [{"tier": str(r["tier"]), "name": r["name"], "kind": r["kind"], "groups": r["groups"],
             "span": f"{r['span']:,}", "GB/s/dir": f"{r['GB/s/dir']:g}", "latency_us": f"{r['latency_us']:g}",
             "oversub": f"{r['oversub']:g}"} for r in rows]


def training_setup(model_ref, model_cfg, cluster_ref, cluster_spec, nodes, plan=None, **options):
    """ui.jobs.training_setup on the page's model and cluster (a preset or an upload): the same
    builder as `clusterplan simulate train` / `plan train`."""
    return jobs.training_setup(get_model(model_ref, model_cfg), get_cluster(cluster_ref, cluster_spec, nodes),
                               plan, **options)


def software_names() -> list[str]:
    """The training software profiles (simulator.software), in their catalogue order."""
    from simulator.software import PROFILES
    return list(PROFILES)


def attention_kernels() -> list[str]:
    from hwmodels.kernels import ATTENTION_KERNELS
    return list(ATTENTION_KERNELS)


# TrainingJob field -> the Train page's input that shows it
_PAGE_OPTION = {"attention_kernel": "attention_kernel", "dropout": "dropout", "overlap_grad_reduce": "grad_overlap",
                "overlap_tp_comm": "tp_overlap", "overlap_p2p_comm": "p2p_overlap"}


def software_options(name: str) -> dict:
    """The Train page's framework inputs as software profile `name` sets them (the profile's
    TrainingJob fields under the page's input names)."""
    from simulator.software import get_software
    job = get_software(name).job
    out = {page: job[field] for field, page in _PAGE_OPTION.items() if field in job}
    if "flash_attention" in job:
        out["attention"] = "flash" if job["flash_attention"] else "unfused"
    return out


@st.cache_data(max_entries=256, show_spinner=False)
def train_estimate(model_ref: str, model_cfg: str | None, cluster_ref: str, cluster_spec: str | None,
                   nodes: int, seq_len: int, global_batch: int, dtype: str, plan: str,
                   attention: str = "flash", grad_overlap: bool = True, dropout: bool = True,
                   tp_overlap: bool = False, p2p_overlap: bool = False, attention_kernel: str = "fa2",
                   software: str | None = None, lora_rank: int = 0, lora_targets: str = "") -> dict:
    """The analytic estimate of one plan (StepEstimate.to_dict()) plus the memory of every stage."""
    CALLS["train_estimate"] += 1
    from simulator.analytic import estimate
    from simulator.memory import stage_memory
    s = training_setup(model_ref, model_cfg, cluster_ref, cluster_spec, nodes, plan, seq_len=seq_len,
                       global_batch=global_batch, dtype=dtype, attention=attention, grad_overlap=grad_overlap,
                       dropout=dropout, tp_overlap=tp_overlap, p2p_overlap=p2p_overlap,
                       attention_kernel=attention_kernel, software=software, **_lora(lora_rank, lora_targets))
    est = estimate(s.job, s.plan, s.cluster)
    stages = [dict(stage_memory(s.job.model, s.job, s.plan, st)) for st in range(s.plan.pp)]
    return {"estimate": est.to_dict(), "stage_memory": stages, "model": s.job.model.summary(),
            "cluster": summary(s.cluster)}


@st.cache_data(max_entries=32, show_spinner=False)
def des_timeline(model_ref: str, model_cfg: str | None, cluster_ref: str, cluster_spec: str | None,
                 nodes: int, seq_len: int, global_batch: int, dtype: str, plan: str,
                 attention: str = "flash", grad_overlap: bool = True, dropout: bool = True,
                 tp_overlap: bool = False, p2p_overlap: bool = False, attention_kernel: str = "fa2",
                 software: str | None = None, lora_rank: int = 0, lora_targets: str = "") -> dict:
    """The discrete-event simulation of one plan with its timeline (simulator.des.simulate)."""
    CALLS["des_timeline"] += 1
    from simulator.des import simulate
    s = training_setup(model_ref, model_cfg, cluster_ref, cluster_spec, nodes, plan, seq_len=seq_len,
                       global_batch=global_batch, dtype=dtype, attention=attention, grad_overlap=grad_overlap,
                       dropout=dropout, tp_overlap=tp_overlap, p2p_overlap=p2p_overlap,
                       attention_kernel=attention_kernel, software=software, **_lora(lora_rank, lora_targets))
    est, res = simulate(s.job, s.plan, s.cluster, trace=True)
    return {"estimate": est.to_dict(), "timeline": res.timeline, "events": res.events, "units": res.units}


def search_available() -> bool:
    """Whether the plan search (planner.search.search) is importable in this checkout."""
    try:
        from planner import search as mod
    except Exception:  # noqa: BLE001 - the Train page must work without the search
        return False
    return callable(getattr(mod, "search", None))


@st.cache_data(max_entries=32, show_spinner=False)
def plan_search(model_ref: str, model_cfg: str | None, cluster_ref: str, cluster_spec: str | None,
                nodes: int, seq_len: int, global_batch: int, dtype: str, attention: str, grad_overlap: bool,
                dropout: bool, fix: str, top: int, tp_overlap: bool = False, p2p_overlap: bool = False,
                attention_kernel: str = "fa2", software: str | None = None, lora_rank: int = 0,
                lora_targets: str = "") -> dict:
    """The ranked plans of planner.search.search (its to_dict(): plans, candidates, pruned, ...);
    a software profile's plan keys (FSDP's zero=3) are fixed where `fix` leaves them free."""
    CALLS["plan_search"] += 1
    from planner.search import parse_fix, search
    s = training_setup(model_ref, model_cfg, cluster_ref, cluster_spec, nodes, seq_len=seq_len,
                       global_batch=global_batch, dtype=dtype, attention=attention, grad_overlap=grad_overlap,
                       dropout=dropout, tp_overlap=tp_overlap, p2p_overlap=p2p_overlap,
                       attention_kernel=attention_kernel, software=software, **_lora(lora_rank, lora_targets))
    fixed = jobs.software_fix(parse_fix(fix), software)
    return _plain(search(s.job, s.cluster, fix=fixed or None, top=top).to_dict())


def _lora(rank: int, targets: str) -> dict:
    """The Train page's LoRA inputs as training_job options (rank 0: full training; an empty
    targets field: every target)."""
    return {"lora_rank": rank or None, "lora_targets": (targets or None) if rank else None}


def _plain(doc):
    """numpy scalars and tuples in a result as plain Python values (JSON-able, picklable)."""
    if isinstance(doc, dict):
        return {k: _plain(v) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [_plain(v) for v in doc]
    if hasattr(doc, "item") and callable(doc.item):
        return doc.item()
    return doc


def short_plan_string(plan: dict) -> str:
    """A plan dict (TrainingPlan.to_dict()) as a plan string without keys at their defaults;
    simulator.training.parse_plan reads it back to the same plan."""
    parts = [f"{k}={plan[k]}" for k in ("dp", "tp", "pp")]
    parts += [f"{k}={plan[k]}" for k in ("cp", "ep", "vpp") if plan.get(k, 1) != 1]
    parts += [f"mb={plan['mb']}", "fsdp=on" if plan.get("fsdp") else f"zero={plan['zero']}",
              f"recompute={plan['recompute']}", f"schedule={plan['schedule']}"]
    if plan.get("recompute_layers") is not None:  # full recompute of part of the layers
        parts += [f"recompute_layers={plan['recompute_layers']}", f"recompute_method={plan['recompute_method']}"]
    parts += [f"{k}=on" for k in ("sp", "offload") if plan.get(k)]
    parts += [f"{k}={plan[k]}" for k in ("first", "last") if plan.get(k)]  # uneven pipeline stages
    parts += [f"{k}=on" for k in ("pp_embed", "pp_loss") if plan.get(k)]
    parts += [f"layout={plan['layout']}"] if plan.get("layout") else []
    return ",".join(parts)


MEM_UNITS = {"GiB": 2 ** 30, "GB": 1e9}  # the dashboard's memory switch: binary or decimal


def search_rows(doc: dict, unit: str = "GiB") -> list[dict]:
    """The ranked plans of a search as table rows, peak memory in `unit`, and whether each plan is
    on the Pareto front of step time, peak memory and cost per step among them."""
    scale = MEM_UNITS[unit]
    rows = [{"rank": p.get("rank", i + 1), "plan": short_plan_string(p["plan"]), "devices": p["num_devices"],
             "step_time_s": p["step_time_s"], "tokens_per_s": p["tokens_per_s"], "mfu_pct": 100 * p["mfu"],
             f"peak_{unit}": p["memory"]["peak_bytes"] / scale, "cost_per_step_usd": p.get("cost_per_step_usd"),
             "why": p.get("why", "")} for i, p in enumerate(doc["plans"])]
    def key(r):
        return r["step_time_s"], r[f"peak_{unit}"], r["cost_per_step_usd"] or 0.0
    for r in rows:
        a = key(r)
        r["pareto"] = not any(all(y <= x for x, y in zip(a, key(o))) and key(o) != a for o in rows)
    return rows


def plan_from_selection(selection, plans: list[str]) -> str | None:
    """The plan string a click on the search's Pareto chart selected (customdata[0]), or None."""
    points = (selection or {}).get("selection", {}).get("points", []) if isinstance(selection, dict) else \
        getattr(getattr(selection, "selection", None), "points", []) or []
    for p in points:
        cd = p.get("customdata") if isinstance(p, dict) else None
        plan = cd[0] if isinstance(cd, (list, tuple)) and cd else cd
        if plan in plans:
            return plan
    return None


@st.cache_data(show_spinner=False, max_entries=16)
def validation_report(suite: str, rows: int | None = None) -> dict:
    """A validation suite's report in the docs/design.md §4 schema; `rows` limits the serving
    suite to its first rows in scope (None: all)."""
    CALLS[f"validation:{suite}"] += 1
    fn = VALIDATION_SUITES[suite][1]
    return fn(rows) if suite == "serving" else fn()


def _published() -> dict:
    from validation.published import megatron_table1
    return megatron_table1()


def _nemo() -> dict:
    from validation.published import nemo_report
    return nemo_report()


def _collectives() -> dict:
    from validation.collectives import validate_collectives
    return validate_collectives()


SERVING_ROWS = 150  # serving rows replayed by default on the page (0 in the box: all of them)


def _serving(rows: int | None = None) -> dict:
    from validation.serving import run_suite
    # quick: 3 measured requests per client slot (`clusterplan validate serving --quick --limit N`)
    return run_suite(quick=True, limit=rows or None, jobs=1)


HARNESS_PROFILE = "validation/data/profiles/cpu-epyc-2c"
HARNESS_RUNS = "validation/data/runs/cpu-epyc-2c"


def _harness() -> dict:
    from pathlib import Path

    from validation.compare import compare
    root = Path(__file__).resolve().parents[1]
    rep = compare(str(root / HARNESS_PROFILE), str(root / HARNESS_RUNS))
    rep["source"] = (f"our own harness: kernel profile {HARNESS_PROFILE} predicts the runs in {HARNESS_RUNS} "
                     f"(`clusterplan validate compare`)")
    return rep


# suite name -> (label, function returning {"cases": [...], "mape_pct", "max_error_pct"})
VALIDATION_SUITES = {"published": ("Megatron-LM 2021 Table 1 (published training throughput)", _published),
                     "nemo": ("NeMo 24.07 on DGX-H100, FP8 (published training throughput)", _nemo),
                     "collectives": ("Collectives (NCCL tables and reference sweeps)", _collectives),
                     "serving": ("Serving replays (aiconfigurator-core silicon_sample.csv, quick)", _serving),
                     "harness": ("Own harness (kernel profile -> measured runs)", _harness)}


def validation_groups(report: dict, suite: str) -> list[dict]:
    """Cases of a validation report grouped (collectives: system and op; serving: engine,
    cluster and metric; others: one group per case kind), each with its case count, MAPE and the
    median, 10th and 90th percentile of the signed error (the error bars)."""
    import numpy as np
    rows = {r.get("id"): r for r in report.get("rows") or [] if isinstance(r, dict)}

    def key(c):
        if suite == "collectives":
            return f"{c.get('system', '?')} {c.get('op', '?')}"
        if suite == "serving":
            rid, _, metric = c["name"].rpartition(" ")
            r = rows.get(rid, {})
            return f"{r.get('engine', '?')} {r.get('cluster', '?')} {metric}"
        return str(c.get("kind") or c.get("group") or c["name"])
    groups: dict = {}
    for c in report["cases"]:
        if c.get("error_pct") is None:
            continue
        groups.setdefault(key(c), []).append(float(c["error_pct"]))
    out = []
    for name, errs in groups.items():
        e = np.asarray(errs)
        p10, p50, p90 = np.percentile(e, [10, 50, 90])
        out.append({"group": name, "cases": int(e.size), "mape_pct": float(np.abs(e).mean()),
                    "median_error_pct": float(p50), "p10_error_pct": float(p10), "p90_error_pct": float(p90),
                    "max_abs_error_pct": float(np.abs(e).max())})
    return sorted(out, key=lambda g: g["group"])


# ---- tables and downloads ----------------------------------------------------------------------

def estimate_rows(est: dict, unit: str = "GiB") -> list[dict]:
    """The headline numbers of an estimate as (quantity, value, unit) rows, memory in `unit`
    (GiB or GB). Whether the plan fits is said by the memory metric, not as a number here."""
    mem = est["memory"]
    scale = MEM_UNITS[unit]
    return [
        {"quantity": "step time", "value": est["step_time_s"], "unit": "s"},
        {"quantity": "tokens per second", "value": est["tokens_per_s"], "unit": "tokens/s"},
        {"quantity": "TFLOP/s per device", "value": est["tflops_per_device"], "unit": "TFLOP/s"},
        {"quantity": "MFU", "value": 100 * est["mfu"], "unit": "%"},
        {"quantity": "HFU", "value": 100 * est["hfu"], "unit": "%"},
        {"quantity": "peak memory per device", "value": mem["peak_bytes"] / scale, "unit": unit},
        {"quantity": "device memory", "value": (mem.get("hbm_bytes") or 0) / scale, "unit": unit},
        {"quantity": "memory headroom", "value": ((mem.get("hbm_bytes") or 0) - mem["peak_bytes"]) / scale,
         "unit": unit},
        {"quantity": "micro-batches per step", "value": float(est["micro_batches"]), "unit": ""},
        {"quantity": "devices", "value": float(est["num_devices"]), "unit": ""},
    ]


def flatten(doc, prefix: str = "") -> list[tuple[str, object]]:
    """Nested dicts/lists as (dotted.key, scalar) pairs, for CSV downloads."""
    out = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(doc, (list, tuple)):
        for i, v in enumerate(doc):
            out += flatten(v, f"{prefix}.{i}" if prefix else str(i))
    else:
        out.append((prefix, doc))
    return out


def to_csv(rows: list[dict]) -> str:
    """A list of flat dicts as CSV text (columns: the union of keys, in first-seen order)."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in r.items()})
    return buf.getvalue()


def to_json(doc) -> str:
    return json.dumps(doc, indent=1, default=str)


def downloads(name: str, doc, rows: list[dict], key: str) -> None:
    """JSON and CSV download buttons for one result (no rerun on click)."""
    if "horizontal" in inspect.signature(st.container).parameters:  # Streamlit >= 1.46
        box = st.container(horizontal=True)
        c1 = c2 = box
    else:
        c1, c2, _ = st.columns([1, 1, 2])
    c1.download_button("Download JSON", to_json(doc), file_name=f"{name}.json", mime="application/json",
                       key=f"{key}.json", on_click="ignore")
    c2.download_button("Download CSV", to_csv(rows), file_name=f"{name}.csv", mime="text/csv",
                       key=f"{key}.csv", on_click="ignore")


def file_uploader(label: str, types: list[str], key: str):
    """st.file_uploader with the browser-side size limit where this Streamlit has one (>= 1.5x);
    read_upload enforces MAX_UPLOAD_BYTES on the server either way."""
    kw = {}
    if "max_upload_size" in inspect.signature(st.file_uploader).parameters:
        kw["max_upload_size"] = 1  # MB
    return st.file_uploader(label, type=types, key=key, **kw)


def _take_upload(ps, up, what: str, key: str, parse) -> bool:
    """Parse an uploaded `what` file into page state `key`; a refused upload replaces the previous
    one (None), shows its one-line error and keeps the page waiting. True when it was taken."""
    try:
        ps.set(key, parse(read_upload(up, f"{what} file"), up.name))
        return True
    except InputError as e:
        ps.set(key, None)
        st.error(str(e))
        ps.waiting.append(what)
        return False


def cluster_picker(ps: PageState, default: str = "dgx-h100", default_nodes: int = 2):
    """Preset or uploaded cluster and a node count. Returns (ref, spec or None, nodes)."""
    options = cluster_names() + [CUSTOM]
    k = ps.init("cluster", default, choices=options)
    ps.init("cluster_spec", None)  # compact JSON of an uploaded cluster (from the link or the upload)
    kn = ps.init("nodes", default_nodes, int, lo=1, hi=100_000)
    c1, c2 = st.columns([3, 1])
    c1.selectbox("Cluster", options, key=k, help="a preset from hwmodels/data/clusters.yaml, or your own YAML")
    c2.number_input("Nodes", min_value=1, max_value=100_000, step=1, key=kn)
    ref = ps.get("cluster")
    spec = None
    if ref == CUSTOM:
        up = file_uploader("Cluster YAML (fields of one preset in hwmodels/data/clusters.yaml)",
                           ["yaml", "yml"], ps.key("cluster_file"))
        if up is not None:
            _take_upload(ps, up, "cluster", "cluster_spec", cluster_spec_from_yaml)
        spec = st.session_state.get(ps.key("cluster_spec"))
        if spec is not None:
            st.caption(f"custom cluster {json.loads(spec).get('name', 'custom')!r} "
                       f"({'from the upload' if up is not None else 'from the link'})")
        elif "cluster" not in ps.waiting:
            st.info("Upload a cluster YAML (the fields of one preset in hwmodels/data/clusters.yaml), "
                    "or pick a preset.")
            ps.waiting.append("cluster")
    else:
        ps.set("cluster_spec", None)
    return ref, spec, ps.get("nodes")


# ---- serving (Serve page) ------------------------------------------------------------------------

DEFAULT_POOL = "h100-sxm:8,a100-sxm-80g:8"
SERVE_ENGINES = ("vllm", "sglang", "trtllm")
DISAGG = ("auto", "on", "off")
SLO_PERCENTILES = (50, 90, 99)
MAX_GANTT_BARS = 4000  # batches drawn in the timeline (the Chrome-trace download has them all)


def pool_rows(devices: str) -> list[dict]:
    """A device pool string ("h100-sxm:8,a100-sxm-80g:8:1.2") as table rows, catalog prices filled
    in (planner.serve_search.parse_devices)."""
    from planner.serve_search import parse_devices
    return [{"device": e.device, "count": e.count, "price_per_hour": e.price_per_hour} for e in parse_devices(devices)]


def pool_text(rows) -> str:
    """Table rows (device, count, price_per_hour) as the `--devices` string, rows without a device
    left out; parse_devices checks it (InputError naming the bad item)."""
    from planner.serve_search import parse_devices

    def num(v):
        return None if v is None or (isinstance(v, float) and v != v) or str(v).strip() == "" else v
    items = []
    for r in rows:
        dev, count, price = (num(r.get(k)) for k in ("device", "count", "price_per_hour"))
        if dev is None:
            continue
        c = int(count) if isinstance(count, float) and count == int(count) else count
        items.append(f"{dev}:{c}" + (f":{float(price):g}" if price is not None else ""))
    text = ",".join(items)
    parse_devices(text)
    return text


@st.cache_data(max_entries=8, show_spinner=False)
def trace_from_text(text: str, filename: str) -> tuple[list, str]:
    """The rows and format of an uploaded request trace (simulator.serving.workload.load_trace:
    Azure LLM CSV, BurstGPT CSV or Mooncake JSONL), read from a private temporary file."""
    from simulator.serving.workload import load_trace
    suffix = ".jsonl" if filename.lower().endswith((".jsonl", ".json")) else ".csv"
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "uploaded-trace" + suffix)
        with open(path, "w") as f:
            f.write(text)
        try:
            rows, fmt = load_trace(path)
        except InputError as e:
            raise InputError(str(e).replace(repr(path), repr(filename))) from None
    return [list(r[:3]) + [list(r[3]), r[4]] for r in rows], fmt


@st.cache_data(max_entries=16, show_spinner=False)
def plan_serve(model_ref: str, model_cfg: str | None, devices: str, rate: float, prompt_len: str,
               output_len: str, slo_ttft_s: float, slo_tpot_s: float, percentile: int, requests: int,
               seed: int, engine: str, dtype: str, disagg: str, size_classes: int,
               _progress=None) -> dict:
    """The `clusterplan plan serve` document (planner.serve_search.plan_serving) for these inputs;
    `_progress(done, total, label)` is told as capacity probes finish (not part of the cache key)."""
    CALLS["plan_serve"] += 1
    from planner.serve_search import parse_devices, plan_serving
    model = get_model(model_ref, model_cfg)
    pool = parse_devices(devices)
    wl = jobs.plan_serve_workload(prompt_len, output_len, requests, seed, rate)
    doc = plan_serving(model, pool, wl, rate, slo_ttft_s, slo_tpot_s, percentile, requests, seed, engine,
                       dtype, None, disagg=disagg, progress=_progress, classes=size_classes, jobs=1)
    return _plain(doc)


def live_progress(fn):
    """`fn` (which draws on a progress bar made outside a cached function) made callable from
    inside one: its element updates are live feedback, not part of the cached result, so they are
    kept out of the cache's replay record (Streamlit would otherwise replay them on a cache hit
    against a bar that no longer exists)."""
    try:
        from streamlit.runtime.caching.cached_message_replay import in_cached_function
    except ImportError:  # another Streamlit layout: no live progress, the result is the same
        return None

    def call(*args):
        token = in_cached_function.set(False)
        try:
            fn(*args)
        finally:
            in_cached_function.reset(token)
    return call


def _fleet_run(model, plan, wl) -> dict:
    """One serving simulation with what the Serve page draws: the report, every measured
    request's TTFT and TPOT, per-replica KV use and waiting requests over time, and the Chrome
    trace of batches."""
    import numpy as np

    from simulator.serving.engine import ServingSimulation
    sim = ServingSimulation(model, plan, wl, chrome_trace=True)
    report = sim.run().to_dict()
    done = [r for r in sim.requests if r.id >= wl.warmup_requests and r.finish_s == r.finish_s]
    ttft = sorted(r.first_token_s - r.arrival_s for r in done)
    tpot = sorted(r.tpot_s for r in done if r.output_len > 1 and r.tpot_s == r.tpot_s)
    replicas = []
    for rep in sim.replicas:
        i = rep.index
        ends = sim.recorder.it_end[i]
        kv = [b / rep.kv.num_blocks for b in sim.recorder.it_kv[i]]
        # requests on this replica that arrived and have no first token yet (queued or in
        # prefill), from the arrival and first-token times of the requests it served
        ev = sorted([(r.arrival_s, 1) for r in sim.requests if r.replica == i]
                    + [(r.first_token_s, -1) for r in sim.requests
                       if r.replica == i and r.first_token_s == r.first_token_s])
        t = [e[0] for e in ev]
        waiting = np.cumsum([e[1] for e in ev]).tolist() if ev else []
        replicas.append({"index": i, "role": rep.role, "device": rep.cluster.device.name, "tp": rep.group.tp,
                         "kv_time_s": list(ends), "kv_utilization": kv, "queue_time_s": t, "waiting": waiting})
    return {"report": _plain(report), "ttft_s": ttft, "tpot_s": tpot, "replicas": replicas,
            "chrome_trace": _plain(sim.chrome_trace())}


@st.cache_data(max_entries=16, show_spinner=False)
def fleet_check(model_ref: str, model_cfg: str | None, fleet_json: str, rate: float, prompt_len: str,
                output_len: str, slo_ttft_s: float, slo_tpot_s: float, requests: int, seed: int,
                engine: str, dtype: str) -> dict:
    """The DES check of one `plan serve` fleet, re-run as the planner ran it
    (planner.serve_search.verify_fleet: the fleet's plan at `rate`, with
    max(requests, min(5000, 100 x replicas)) requests), keeping what the charts need."""
    CALLS["fleet_check"] += 1
    from dataclasses import replace
    fleet = json.loads(fleet_json)
    model = get_model(model_ref, model_cfg)
    plan = jobs.fleet_serving_plan(fleet, engine, dtype)
    nrep = sum(r["count"] for r in fleet["replicas"])
    wl = replace(jobs.plan_serve_workload(prompt_len, output_len, max(requests, min(5000, 100 * nrep)), seed, rate),
                 slo_ttft_s=slo_ttft_s, slo_tpot_s=slo_tpot_s)
    return _fleet_run(model, plan, wl)


@st.cache_data(max_entries=16, show_spinner=False)
def fleet_simulate(model_ref: str, model_cfg: str | None, fleet_json: str, engine: str, dtype: str,
                   load: str, rate: str, concurrency: int, prompt_len: str, output_len: str, requests: int,
                   seed: int, slo_ttft_s: float, slo_tpot_s: float, trace_text: str | None = None,
                   trace_name: str = "") -> dict:
    """`clusterplan simulate serve` of one fleet with the page's workload: open loop at `rate`
    (a number or RATE:SECONDS,... schedule), closed loop at `concurrency`, or an uploaded trace."""
    CALLS["fleet_simulate"] += 1
    from simulator.serving.workload import LengthDist, RateSchedule, ServingWorkload
    fleet = json.loads(fleet_json)
    model = get_model(model_ref, model_cfg)
    plan = jobs.fleet_serving_plan(fleet, engine, dtype)
    kw = dict(seed=seed, slo_ttft_s=slo_ttft_s, slo_tpot_s=slo_tpot_s)
    if load == "trace":
        if trace_text is None:
            raise InputError("upload a trace (Azure LLM CSV, BurstGPT CSV or Mooncake JSONL) or pick rate/concurrency")
        rows, fmt = trace_from_text(trace_text, trace_name)
        wl = ServingWorkload(trace=[(a, p, o, tuple(k), kt) for a, p, o, k, kt in rows],
                             trace_name=f"{trace_name} ({fmt})", num_requests=requests, **kw)
    else:
        lengths = dict(prompt_len=LengthDist.parse(prompt_len, "prompt length"),
                       output_len=LengthDist.parse(output_len, "output length"), num_requests=requests)
        if load == "rate":
            wl = ServingWorkload(rate=RateSchedule.parse(rate), **lengths, **kw)
        else:
            wl = ServingWorkload(concurrency=concurrency, **lengths, **kw)
    return _fleet_run(model, plan, wl)


def fleet_rows(doc: dict) -> list[dict]:
    """The fleets of a `plan serve` document as table rows (latencies in ms at the SLO percentile),
    each with how far its regimes are validated (simulator.regimes.validation_label)."""
    from simulator.regimes import validation_label
    pk = f"p{doc['slo']['percentile']}"
    ms = lambda v: None if v is None else v * 1e3  # noqa: E731
    return [{"rank": f["rank"], "$/h": f["cost_per_hour"], "mode": f["mode"], "replicas": fleet_label(f),
             "devices": f["num_devices"], f"{pk} TTFT ms": ms(f["predicted"]["ttft_s"]),
             f"{pk} TPOT ms": ms(f["predicted"]["tpot_s"]), "tok/s/device": f["tokens_per_s_per_device"],
             "SLO attainment %": 100 * f["slo_attainment"], "headroom %": 100 * f["headroom"],
             "meets SLO": "yes" if f["meets_slo"] else "NO",
             "validated (median |err| TTFT / TPOT)": validation_label(f.get("validation"))} for f in doc["fleets"]]


def fleet_label(f: dict) -> str:
    return " + ".join(f"{r['count']}× {r['device']} tp={r['tp']}" + ("" if r["role"] == "both" else f" {r['role']}")
                      for r in f["replicas"])


def capacity_rows(doc: dict) -> list[dict]:
    return [{"config": f"{c['device']} tp={c['tp']}" + ("" if c["role"] == "both" else f" {c['role']}")
             + (f" [{c['prompt_len']}]" if "size_class" in c else ""), "device": c["device"], "tp": c["tp"],
             "role": c["role"], "req/s per replica": c["rate_per_replica"], "probes": c["probes"],
             "idle TTFT ms": None if c["role"] == "decode" else 1e3 * (c["ttft_floor_s"] + c["kv_transfer_s"]),
             "note": c["note"] or ""} for c in doc["capacities"]]


def fleet_from_selection(selection, fleets: list[dict]) -> str | None:
    """The label of the fleet a Pareto-chart click selected (each point's customdata[0] holds its
    fleet's label), or None when nothing valid is selected."""
    points = (selection or {}).get("selection", {}).get("points", []) if isinstance(selection, dict) else \
        getattr(getattr(selection, "selection", None), "points", []) or []
    labels = {f["label"] for f in fleets}
    for p in points:
        cd = p.get("customdata") if isinstance(p, dict) else None
        label = cd[0] if isinstance(cd, (list, tuple)) and cd else cd
        if label in labels:
            return label
    return None


def model_picker(ps: PageState, default: str = "llama3-8b") -> tuple[str, str | None]:
    """Preset or uploaded model (a Hugging Face config.json or YAML with its keys). Returns (ref,
    compact config JSON or None). A custom choice without a valid upload adds "model" to
    `ps.waiting` and shows one line: an info before anything is uploaded, the error otherwise."""
    from simulator.models import preset_names
    models = preset_names() + [CUSTOM]
    km = ps.init("model", default, choices=models)
    ps.init("model_cfg", None)  # compact JSON of an uploaded config (from the link or the upload)
    st.selectbox("Model", models, key=km, help="a preset from simulator/data/models.yaml, or a "
                 "Hugging Face config.json")
    if ps.get("model") != CUSTOM:
        ps.set("model_cfg", None)
        return ps.get("model"), None
    up = file_uploader("Hugging Face config.json (or YAML with the same keys)", ["json", "yaml", "yml"],
                       ps.key("model_file"))
    if up is not None and not _take_upload(ps, up, "model", "model_cfg", model_cfg_from_text):
        return CUSTOM, None
    cfg = ps.get("model_cfg")
    if cfg is None:
        st.info("Upload a Hugging Face config.json (or pick a preset).")
        ps.waiting.append("model")
    else:
        st.caption(f"custom model {json.loads(cfg).get('_name', 'custom')!r} "
                   f"({'from the upload' if up is not None else 'from the link'})")
    return CUSTOM, cfg


def selectable_fleets(doc: dict) -> list[dict]:
    """Every verified fleet of a `plan serve` document that a click can select: the ranked
    fleets and the extra Pareto-front fleets (1.5x and 2x capacity), each with its label,
    replicas, cost, SLO-percentile latencies and whether it is on the front."""
    front = {p["replicas"]: p for p in doc.get("pareto") or []}
    out, seen = [], set()
    for f in doc["fleets"]:
        label = fleet_label(f)
        if label in seen:
            continue
        seen.add(label)
        out.append({**f, "label": label, "on_front": label in front})
    for label, p in front.items():
        if label in seen:
            continue
        seen.add(label)
        reps = []
        for part in label.split(" + "):  # "2× h100-sxm tp=1 prefill" (planner.serve_search._describe_doc)
            count, rest = part.split("× ", 1)
            words = rest.split()
            reps.append({"device": words[0], "tp": int(words[1].split("=")[1]), "count": int(count),
                         "role": words[2] if len(words) > 2 else "both"})
        out.append({"rank": None, "label": label, "mode": p["mode"], "cost_per_hour": p["cost_per_hour"],
                    "replicas": reps, "predicted": {"ttft_s": p["ttft_s"], "tpot_s": p["tpot_s"]},
                    "headroom": p["headroom"], "on_front": True, "meets_slo": True, "size_classes": None,
                    # the planner keeps no class shares for these: they are re-simulated with the
                    # least-outstanding router
                    "note": "size classes not kept for this fleet: checked with least-outstanding routing"
                    if doc.get("size_classes") else None})
    return out


def fleet_key(fleet: dict) -> str:
    """The part of a fleet that its simulation depends on, as canonical JSON (a cache key)."""
    return json.dumps({"replicas": [{k: r[k] for k in ("device", "tp", "count", "role", "class_load_req_per_s")
                                     if k in r} for r in fleet["replicas"]],
                       "size_classes": fleet.get("size_classes")}, sort_keys=True)


def metric_row(items: list[tuple]) -> None:
    """Headline metrics in a row that wraps instead of cutting values ("99…") on narrow screens:
    each (label, value[, delta[, delta_color]]) sized to its content in a wrapping horizontal
    container (Streamlit >= 1.46), or in equal columns on older Streamlit."""
    if "horizontal" in inspect.signature(st.container).parameters:
        box = st.container(horizontal=True, gap="medium")
        slots = [box] * len(items)
        kw = {"width": "content"}
    else:
        slots, kw = st.columns(len(items)), {}
    for slot, item in zip(slots, items):
        label, value, *rest = item
        delta = rest[0] if rest else None
        colour = rest[1] if len(rest) > 1 else "normal"
        slot.metric(label, value, delta, delta_color=colour, **kw)
