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


def training_setup(model_ref, model_cfg, cluster_ref, cluster_spec, nodes, plan=None, **options):
    """ui.jobs.training_setup on the page's model and cluster (a preset or an upload): the same
    builder as `clusterplan simulate train` / `plan train`."""
    return jobs.training_setup(get_model(model_ref, model_cfg), get_cluster(cluster_ref, cluster_spec, nodes),
                               plan, **options)


@st.cache_data(max_entries=256, show_spinner=False)
def train_estimate(model_ref: str, model_cfg: str | None, cluster_ref: str, cluster_spec: str | None,
                   nodes: int, seq_len: int, global_batch: int, dtype: str, plan: str,
                   attention: str = "flash", grad_overlap: bool = True, dropout: bool = True,
                   tp_overlap: bool = False, p2p_overlap: bool = False) -> dict:
    """The analytic estimate of one plan (StepEstimate.to_dict()) plus the memory of every stage."""
    CALLS["train_estimate"] += 1
    from simulator.analytic import estimate
    from simulator.memory import stage_memory
    s = training_setup(model_ref, model_cfg, cluster_ref, cluster_spec, nodes, plan, seq_len=seq_len,
                       global_batch=global_batch, dtype=dtype, attention=attention, grad_overlap=grad_overlap,
                       dropout=dropout, tp_overlap=tp_overlap, p2p_overlap=p2p_overlap)
    est = estimate(s.job, s.plan, s.cluster)
    stages = [dict(stage_memory(s.job.model, s.job, s.plan, st)) for st in range(s.plan.pp)]
    return {"estimate": est.to_dict(), "stage_memory": stages, "model": s.job.model.summary(),
            "cluster": summary(s.cluster)}


@st.cache_data(max_entries=32, show_spinner=False)
def des_timeline(model_ref: str, model_cfg: str | None, cluster_ref: str, cluster_spec: str | None,
                 nodes: int, seq_len: int, global_batch: int, dtype: str, plan: str,
                 attention: str = "flash", grad_overlap: bool = True, dropout: bool = True,
                 tp_overlap: bool = False, p2p_overlap: bool = False) -> dict:
    """The discrete-event simulation of one plan with its timeline (simulator.des.simulate)."""
    CALLS["des_timeline"] += 1
    from simulator.des import simulate
    s = training_setup(model_ref, model_cfg, cluster_ref, cluster_spec, nodes, plan, seq_len=seq_len,
                       global_batch=global_batch, dtype=dtype, attention=attention, grad_overlap=grad_overlap,
                       dropout=dropout, tp_overlap=tp_overlap, p2p_overlap=p2p_overlap)
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
                dropout: bool, fix: str, top: int, tp_overlap: bool = False, p2p_overlap: bool = False) -> dict:
    """The ranked plans of planner.search.search (its to_dict(): plans, candidates, pruned, ...)."""
    CALLS["plan_search"] += 1
    from planner.search import search
    s = training_setup(model_ref, model_cfg, cluster_ref, cluster_spec, nodes, seq_len=seq_len,
                       global_batch=global_batch, dtype=dtype, attention=attention, grad_overlap=grad_overlap,
                       dropout=dropout, tp_overlap=tp_overlap, p2p_overlap=p2p_overlap)
    return _plain(search(s.job, s.cluster, fix=fix or None, top=top).to_dict())


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
    parts += [f"{k}=on" for k in ("sp", "offload") if plan.get(k)]
    return ",".join(parts)


def search_rows(doc: dict) -> list[dict]:
    return [{"rank": p.get("rank", i + 1), "plan": short_plan_string(p["plan"]), "devices": p["num_devices"],
             "step_time_s": p["step_time_s"], "tokens_per_s": p["tokens_per_s"], "mfu_pct": 100 * p["mfu"],
             "peak_GiB": p["memory"]["peak_bytes"] / 2**30, "why": p.get("why", "")}
            for i, p in enumerate(doc["plans"])]


@st.cache_data(show_spinner=False)
def validation_report(suite: str) -> dict:
    """A validation suite's report in the docs/design.md §4 schema."""
    CALLS[f"validation:{suite}"] += 1
    return VALIDATION_SUITES[suite][1]()


def _published() -> dict:
    from validation.published import megatron_table1
    return megatron_table1()


def _nemo() -> dict:
    from validation.published import nemo_report
    return nemo_report()


# suite name -> (label, function returning {"cases": [...], "mape_pct", "max_error_pct"})
VALIDATION_SUITES = {"published": ("Megatron-LM 2021 Table 1 (published training throughput)", _published),
                     "nemo": ("NeMo 24.07 on DGX-H100, FP8 (published training throughput)", _nemo)}


# ---- tables and downloads ----------------------------------------------------------------------

def estimate_rows(est: dict) -> list[dict]:
    """The headline numbers of an estimate as (quantity, value, unit) rows."""
    mem = est["memory"]
    return [
        {"quantity": "step time", "value": est["step_time_s"], "unit": "s"},
        {"quantity": "tokens per second", "value": est["tokens_per_s"], "unit": "tokens/s"},
        {"quantity": "TFLOP/s per device", "value": est["tflops_per_device"], "unit": "TFLOP/s"},
        {"quantity": "MFU", "value": 100 * est["mfu"], "unit": "%"},
        {"quantity": "HFU", "value": 100 * est["hfu"], "unit": "%"},
        {"quantity": "peak memory per device", "value": mem["peak_bytes"] / 2**30, "unit": "GiB"},
        {"quantity": "device memory", "value": (mem.get("hbm_bytes") or 0) / 2**30, "unit": "GiB"},
        {"quantity": "fits", "value": 1.0 if est["fits"] else 0.0, "unit": "yes=1"},
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
            try:
                ps.set("cluster_spec", cluster_spec_from_yaml(read_upload(up, "cluster file"), up.name))
            except InputError as e:
                st.error(str(e))
        spec = st.session_state.get(ps.key("cluster_spec"))
        if spec is not None:
            st.caption(f"custom cluster {json.loads(spec).get('name', 'custom')!r} "
                       f"({'from the upload' if up is not None else 'from the link'})")
    else:
        ps.set("cluster_spec", None)
    return ref, spec, ps.get("nodes")
