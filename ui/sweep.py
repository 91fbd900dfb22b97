"""Sweeps: many `plan train`, `plan serve`, `simulate train` or `simulate serve` runs from one spec,
on a local process pool or a Ray cluster (simulator.executor), into one results table.

A spec (YAML) names the command each cell runs and the values of its options; the options are the
command's flags with underscores (`--global-batch` -> `global_batch`):

    kind: plan train                 # or: simulate train | simulate serve | plan serve
    seed: 0                          # for the commands that take --seed
    fixed: {seq_len: 4096, top: 3}   # every cell
    grid:                            # the cartesian product (a list of mappings: their union)
      model: [llama3-8b, llama3-70b]
      cluster: [dgx-a100, dgx-h100]
      global_batch: [256, 512]
    cells:                           # and/or an explicit list (each over `fixed`)
      - {model: qwen3-32b, cluster: dgx-h200, global_batch: 128}

`kind` may also be a grid axis or a cell key. Every cell runs in a worker through the same parser and
command function as `clusterplan <kind> ... --json` (so a cell's answer is the command's answer), and
becomes one row: its inputs, status and error, the best plan and headline metrics, and provenance.

Results (in the output folder):
- `results.jsonl`: one line per finished cell, appended as each finishes (one write per line; a
  torn last line from a killed run is ignored). A cell is keyed by a hash of its kind, its options,
  the content of the files they name, and the clusterplan and kernel-table versions; a re-run skips
  every cell whose key has a row (ok, or failed with its own error), so an interrupted sweep
  resumes where it stopped. Cells whose worker kept dying are run again.
- `results.csv` (and `results.parquet` where pyarrow is installed): the table, in cell order.
- `report.html`: plotly charts (tokens/s per device vs nodes or batch per model, $/h vs rate per
  device pool, latency vs rate) and the failed cells.
"""
from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io
import itertools
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hwmodels.errors import InputError

KINDS = ("plan train", "simulate train", "simulate serve", "plan serve")
SPEC_KEYS = ("name", "description", "kind", "seed", "fixed", "grid", "cells")
# Flags that are not sweep options: output files (they would collide between cells), the output
# format, and the executor of the command itself (a cell runs on one worker).
_NOT_OPTIONS = {"help", "json", "chrome_trace@simulate train", "chrome_trace@simulate serve",
                "executor", "jobs", "ray_address"}
_FILE_OPTIONS = ("model", "cluster", "trace")  # values that may name a file: its content is hashed
# Row columns that depend on where and when a cell ran, not on its inputs: left out when two
# tables are compared (`comparable`).
VOLATILE = ("worker", "executor", "elapsed_s", "finished_at", "retries", "search_time_s")
RESULTS = "results.jsonl"

# ---- the command line's parser, built once per process -------------------------------------------

_PARSER = None


def _root_parser():
    global _PARSER
    if _PARSER is None:
        from ui.cli import build_parser
        _PARSER = build_parser()
    return _PARSER


def _subparsers(p):
    import argparse
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return a.choices
    return {}


def command_parser(kind: str):
    """The argparse parser of `clusterplan <kind>`."""
    if kind not in KINDS:
        raise InputError(f"kind {kind!r}; valid: {', '.join(KINDS)}")
    group, target = kind.split()
    return _subparsers(_subparsers(_root_parser())[group])[target]


def options(kind: str) -> dict:
    """{option name: argparse action} of the sweep options of `kind`."""
    out = {}
    for a in command_parser(kind)._actions:
        if not a.option_strings or a.dest in _NOT_OPTIONS or f"{a.dest}@{kind}" in _NOT_OPTIONS:
            continue
        out[a.dest] = a
    return out


def _flag(action) -> str:
    return next((s for s in action.option_strings if s.startswith("--")), action.option_strings[0])


def cell_argv(kind: str, params: dict) -> list[str]:
    """`params` as the command line of `clusterplan <kind> ... --json`."""
    import argparse
    opts = options(kind)
    argv = kind.split()
    for k, v in params.items():
        a = opts[k]
        if isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            if not isinstance(v, bool):
                raise InputError(f"option {k}={v!r} must be true or false")
            if v != isinstance(a, argparse._StoreFalseAction):
                argv.append(_flag(a))
            continue
        if v is None:
            continue
        if isinstance(v, bool):
            v = "on" if v else "off"
        argv += [_flag(a), str(v)]
    return argv + ["--json"]


# ---- the spec -------------------------------------------------------------------------------------

@dataclass
class Cell:
    index: int
    kind: str
    params: dict          # option name -> value as the spec gives it
    key: str = ""

    def label(self, varying: tuple = ()) -> str:
        shown = [k for k in varying if k in self.params] or list(self.params)[:4]
        return " ".join(f"{k}={self.params[k]}" for k in shown)

    def to_dict(self) -> dict:
        return {"index": self.index, "kind": self.kind, "params": self.params, "key": self.key}


@dataclass
class Spec:
    path: str
    name: str
    cells: list
    varying: tuple = ()   # the options whose value differs between cells
    seed: int | None = None
    provenance: dict = field(default_factory=dict)


def _provenance() -> dict:
    from ui.cli import provenance
    p = provenance()
    return {"clusterplan": p["clusterplan"], "kernel_tables": p["kernel_tables"]}


def _file_digest(value) -> str | None:
    if not isinstance(value, str):
        return None
    p = Path(value)
    if not p.is_file():
        return None
    return hashlib.sha256(p.read_bytes()).hexdigest()


def cell_key(kind: str, params: dict, provenance: dict) -> str:
    """A hash of everything a cell's answer depends on."""
    files = {k: _file_digest(params[k]) for k in _FILE_OPTIONS if k in params}
    doc = {"kind": kind, "params": params, "files": {k: v for k, v in files.items() if v},
           **provenance}
    text = json.dumps(doc, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _norm_key(k) -> str:
    return str(k).strip().replace("-", "_")


def _mapping(v, where: str) -> dict:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise InputError(f"{where} must be a mapping of option: value, not {type(v).__name__}")
    return {_norm_key(k): x for k, x in v.items()}


def _grid_cells(grid, where: str) -> list[dict]:
    if grid is None:
        return []
    if isinstance(grid, list):
        if not grid:
            raise InputError(f"{where} is empty; give option: [values] axes")
        return [c for i, g in enumerate(grid) for c in _grid_cells(g, f"{where}[{i}]")]
    axes = _mapping(grid, where)
    if not axes:
        raise InputError(f"{where} is empty; give option: [values] axes")
    names, values = [], []
    for k, v in axes.items():
        vals = v if isinstance(v, list) else [v]
        if not vals:
            raise InputError(f"{where}.{k} is empty; give at least one value")
        names.append(k)
        values.append(vals)
    return [dict(zip(names, combo)) for combo in itertools.product(*values)]


def load_spec(path: str, check: bool = True) -> Spec:
    """The cells of the spec at `path`. Raises InputError (one line) naming the bad key, value or
    cell: unknown keys, empty grids, and with `check` every cell whose options the command would
    refuse or whose model, cluster or device pool cannot be loaded."""
    import yaml

    from hwmodels.devices import safe_yaml
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise InputError(f"sweep spec {path!r}: {e.strerror or e}") from None
    try:
        doc = safe_yaml(text)
    except yaml.YAMLError as e:
        raise InputError(f"sweep spec {path!r} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(doc, dict):
        raise InputError(f"sweep spec {path!r} must be a mapping with keys {', '.join(SPEC_KEYS)}")
    doc = {_norm_key(k): v for k, v in doc.items()}
    for k in doc:
        if k not in SPEC_KEYS:
            raise InputError(f"sweep spec key {k!r} is unknown; valid: {', '.join(SPEC_KEYS)}")
    seed = doc.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise InputError(f"sweep spec seed={seed!r} must be an integer >= 0")
    fixed = _mapping(doc.get("fixed"), "fixed")
    raw = _grid_cells(doc.get("grid"), "grid")
    explicit = doc.get("cells")
    if explicit is not None:
        if not isinstance(explicit, list) or not explicit:
            raise InputError("cells must be a non-empty list of mappings")
        raw += [_mapping(c, f"cells[{i}]") for i, c in enumerate(explicit)]
    if not raw:
        raise InputError(f"sweep spec {path!r} has no cells: give a grid or a cells list")
    default_kind = doc.get("kind")
    prov = _provenance()
    cells = []
    for i, over in enumerate(raw):
        params = {**fixed, **over}
        kind = params.pop("kind", default_kind)
        if kind is None:
            raise InputError(f"cell {i}: no kind; give kind: one of {', '.join(KINDS)}")
        kind = " ".join(str(kind).split())
        if kind not in KINDS:
            raise InputError(f"kind {kind!r} (cell {i}); valid: {', '.join(KINDS)}")
        opts = options(kind)
        for k, v in params.items():
            if k not in opts:
                raise InputError(f"option {k!r} (cell {i}) is not an option of {kind}; valid: "
                                 f"{', '.join(sorted(opts))}")
            if isinstance(v, (list, dict)):
                raise InputError(f"option {k!r} (cell {i}) has a {type(v).__name__}; lists belong in grid")
        if seed is not None and "seed" in opts and "seed" not in params:
            params["seed"] = seed
        cells.append(Cell(i, kind, params))
    keys = list(dict.fromkeys(k for c in cells for k in c.params))
    varying = tuple(k for k in keys if len({json.dumps(c.params.get(k), default=str) for c in cells}) > 1)
    if len({c.kind for c in cells}) > 1:
        varying = ("kind",) + varying
    for c in cells:
        c.key = cell_key(c.kind, c.params, prov)
    seen = {}
    for c in cells:
        if c.key in seen:
            raise InputError(f"cell {c.index} ({c.label(varying)}) repeats cell {seen[c.key]}")
        seen[c.key] = c.index
    spec = Spec(str(path), str(doc.get("name") or Path(path).stem), cells, varying, seed, prov)
    if check:
        check_cells(spec)
    return spec


def check_cells(spec: Spec) -> None:
    """Refuse (InputError naming the cell) a cell the command would refuse before running: bad
    option values, an unknown model, cluster or device."""
    from hwmodels.clusters import load_cluster
    from simulator.models import load_model
    parser = _root_parser()
    seen: dict = {}

    def once(what, fn, *a):
        k = (what, *a)
        if k not in seen:
            try:
                fn(*a)
                seen[k] = None
            except InputError as e:
                seen[k] = " ".join(str(e).split())
        return seen[k]

    def devices(text):
        from planner.serve_search import parse_devices
        parse_devices(text)

    for c in spec.cells:
        try:
            args = parser.parse_args(cell_argv(c.kind, c.params))
        except InputError as e:
            msg = " ".join(str(e).split())
            if msg.startswith("the following arguments are required: "):
                missing = [f.strip().lstrip("-").replace("-", "_") for f in msg.split(": ", 1)[1].split(",")]
                msg = f"missing option(s) {', '.join(missing)} for {c.kind}"
            raise InputError(f"cell {c.index} ({c.label(spec.varying)}): {msg}") from None
        err = once("model", load_model, args.model)
        cluster = getattr(args, "cluster", None)
        if err is None and cluster and (":" not in cluster or cluster.endswith((".yaml", ".yml"))):
            err = once("cluster", load_cluster, cluster, getattr(args, "nodes", None))
        if err is None and getattr(args, "devices", None):
            err = once("devices", devices, args.devices)
        if err is not None:
            raise InputError(f"cell {c.index} ({c.label(spec.varying)}): {err}")


# ---- one cell (runs in a worker) ------------------------------------------------------------------

def run_cell(cell: dict) -> dict:
    """The headline of `clusterplan <kind> <params> --json` for one cell (a dict of Cell fields).
    Raises what the command raises (InputError for a cell that cannot run)."""
    from ui.cli import json_safe
    args = _root_parser().parse_args(cell_argv(cell["kind"], cell["params"]))
    if hasattr(args, "jobs"):  # a cell is one worker's work: the command runs serially
        args.jobs, args.executor = 1, "local"
    doc, _ = args.func(args)
    return json_safe(headline(cell["kind"], json_safe(doc)))


def _fleet(replicas: list) -> str:
    return " + ".join(f"{r.get('count', 1)}x {r.get('device')} tp={r.get('tp', 1)}"
                      + (f" {r['role']}" if r.get("role") not in (None, "both") else "") for r in replicas)


def _per_device(tps, n):
    return tps / n if tps is not None and n else None


def _training_headline(d: dict) -> dict:
    mem = d.get("memory") or {}
    step = d.get("step_time_s")
    n = d.get("num_devices")
    cost = d.get("cost_per_step_usd")
    return {"best_plan": d.get("plan_string"), "num_devices": n, "step_time_s": step,
            "tokens_per_s": d.get("tokens_per_s"), "tokens_per_s_per_device": _per_device(d.get("tokens_per_s"), n),
            "tflops_per_device": d.get("tflops_per_device"), "mfu": d.get("mfu"), "fits": d.get("fits"),
            "peak_memory_gib": mem["peak_bytes"] / 2 ** 30 if mem.get("peak_bytes") is not None else None,
            "cost_per_hour": cost / step * 3600 if cost is not None and step else None,
            "time_to_train_s": d.get("time_to_train_s"), "cost_usd": d.get("cost_usd")}


def headline(kind: str, doc: dict) -> dict:
    """The row metrics of a command's JSON document."""
    if kind == "plan train":
        if "heterogeneous" in doc:
            h = doc["heterogeneous"]
            reps = h.get("replicas", [])
            n = h.get("layout", {}).get("devices_per_replica", 0) * sum(r.get("replicas", 0) for r in reps)
            return {"best_plan": "; ".join(f"{r['group']}: {r['replicas']}x {r['plan']}" for r in reps),
                    "num_devices": n or None, "step_time_s": h.get("step_time_s"),
                    "tokens_per_s": h.get("tokens_per_s"),
                    "tokens_per_s_per_device": _per_device(h.get("tokens_per_s"), n),
                    "search_time_s": doc.get("search_time_s")}
        plans = doc.get("plans") or []
        if not plans:
            raise InputError("no plan: " + "; ".join(doc.get("notes") or ["the search returned none"]))
        return {**_training_headline(plans[0]), "candidates": doc.get("candidates"),
                "search_time_s": doc.get("search_time_s")}
    if kind == "simulate train":
        return _training_headline(doc)
    if kind == "simulate serve":
        n = doc.get("num_devices")
        return {"best_plan": _fleet(doc.get("plan", {}).get("replicas", [])), "num_devices": n,
                "ttft_p50_s": doc["ttft_s"].get("p50"), "ttft_p90_s": doc["ttft_s"].get("p90"),
                "tpot_p50_s": doc["tpot_s"].get("p50"), "tpot_p90_s": doc["tpot_s"].get("p90"),
                "e2e_p90_s": doc["e2e_s"].get("p90"),
                "throughput_requests_per_s": doc.get("throughput_requests_per_s"),
                "throughput_tokens_per_s": doc.get("throughput_tokens_per_s"),
                "tokens_per_s_per_device": doc.get("tokens_per_s_per_device"),
                "goodput_requests_per_s": doc.get("goodput_requests_per_s"),
                "slo_attainment": doc.get("slo_attainment"), "rejected": doc.get("rejected")}
    fleets = doc.get("fleets") or []
    if not fleets:
        raise InputError("no fleet: " + "; ".join(doc.get("notes") or ["the search found none"]))
    f = fleets[0]
    pred = f.get("predicted") or {}
    return {"best_plan": _fleet(f.get("replicas", [])), "mode": f.get("mode"), "num_devices": f.get("num_devices"),
            "cost_per_hour": f.get("cost_per_hour"), "ttft_s": pred.get("ttft_s"), "tpot_s": pred.get("tpot_s"),
            "slo_percentile": pred.get("percentile"), "meets_slo": f.get("meets_slo"),
            "slo_attainment": f.get("slo_attainment"), "tokens_per_s_per_device": f.get("tokens_per_s_per_device"),
            "search_time_s": doc.get("search_time_s")}


# ---- results --------------------------------------------------------------------------------------

class ResultsLog:
    """`results.jsonl` in `out`: rows appended one write per line, read back by key. An exclusive
    lock on the folder keeps two sweeps from writing it at once."""

    def __init__(self, out: str):
        self.out = Path(out)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"--out {out!r}: {e.strerror or e}") from None
        self.path = self.out / RESULTS
        self._fd = None
        self._lock = None

    def __enter__(self):
        import fcntl
        # an empty lock file held with flock: nothing is written to it
        self._lock = os.open(self.out / ".lock", os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock)
            raise InputError(f"another sweep is writing {str(self.out)!r}; wait for it or use another --out") from None
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        size = os.fstat(self._fd).st_size
        if size:
            with open(self.path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":  # a torn line from a killed run: end it, it is skipped on read
                    os.write(self._fd, b"\n")
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
        return False

    def append(self, row: dict) -> None:
        line = json.dumps(row, sort_keys=False, allow_nan=False, default=str) + "\n"
        os.write(self._fd, line.encode())  # O_APPEND: one write, one whole line

    def read(self) -> dict:
        """{key: row} of every whole line (the last row of a key wins)."""
        out = {}
        if not self.path.exists():
            return out
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.endswith("\n"):
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict) and "key" in row:
                    out[row["key"]] = row
        return out


def _finished(row: dict) -> bool:
    """A row a re-run keeps: answered, or failed with the cell's own error (a worker that kept
    dying is tried again)."""
    return row.get("status") == "ok" or (row.get("status") == "error" and row.get("error_type") != "WorkerDied")


def _row(cell: Cell, spec: Spec, outcome, executor: str) -> dict:
    row = {"cell": cell.index, "key": cell.key, "kind": cell.kind, **{f"in_{k}": v for k, v in cell.params.items()}}
    if outcome.ok:
        row.update(status="ok", error=None, error_type=None, **outcome.value)
    else:
        row.update(status="error", error=outcome.error.split(": ", 1)[-1] if outcome.error_type == "InputError"
                   else outcome.error, error_type=outcome.error_type)
    row.update({"clusterplan": spec.provenance.get("clusterplan"),
                "kernel_tables": spec.provenance.get("kernel_tables"),
                "retries": outcome.retries, "worker": outcome.worker, "executor": executor,
                "elapsed_s": round(outcome.elapsed_s, 6),
                "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    return _json_clean(row)


def _json_clean(o):
    if isinstance(o, dict):
        return {k: _json_clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_clean(v) for v in o]
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def table_columns(rows: list[dict]) -> list[str]:
    """Column order: identity, inputs, outcome, metrics, provenance."""
    head = ["cell", "key", "kind"]
    prov = ["clusterplan", "kernel_tables", "retries", "worker", "executor", "elapsed_s", "finished_at"]
    seen = list(dict.fromkeys(k for r in rows for k in r))
    inputs = [k for k in seen if k.startswith("in_")]
    status = ["status", "error", "error_type"]
    metrics = [k for k in seen if k not in head + prov + inputs + status]
    return head + inputs + status + metrics + [k for k in prov if k in seen]


def comparable(rows: list[dict]) -> list[dict]:
    """Rows without the columns that say where and when a cell ran (VOLATILE)."""
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


def column_names(cols: list[str]) -> list[str]:
    """Table headers: inputs without their in_ prefix unless that clashes with another column."""
    return [c[3:] if c.startswith("in_") and c[3:] not in cols else c for c in cols]


def _csv_value(v):
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return v


def write_csv(rows: list[dict], path) -> None:
    from hwmodels.fileio import write_text_atomic
    cols = table_columns(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(column_names(cols))
    for r in rows:
        w.writerow([_csv_value(r.get(c)) for c in cols])
    write_text_atomic(path, buf.getvalue())


def _column_values(vals: list) -> list:
    """One type per column for Parquet: numbers (ints promoted to floats where floats appear),
    booleans, or text."""
    present = [v for v in vals if v is not None]
    if all(isinstance(v, bool) for v in present):
        return vals
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        if any(isinstance(v, float) for v in present):
            return [None if v is None else float(v) for v in vals]
        return vals
    return [None if v is None else v if isinstance(v, str) else json.dumps(v) if isinstance(v, (dict, list))
            else str(v) for v in vals]


def write_parquet(rows: list[dict], path) -> bool:
    """Write the table as Parquet if pyarrow is installed (atomically); False if it is not."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return False
    cols = table_columns(rows)
    data = {n: _column_values([r.get(c) for r in rows]) for n, c in zip(column_names(cols), cols)}
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        pq.write_table(pa.table(data), tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return True


def read_table(path) -> list[dict]:
    """The rows of a results.csv (values as text, "" for none)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---- the sweep ------------------------------------------------------------------------------------

@dataclass
class SweepResult:
    spec: Spec
    out: str
    rows: list                # in cell order
    ran: int
    skipped: int
    wall_s: float
    executor: dict
    files: dict = field(default_factory=dict)

    @property
    def failed(self) -> list:
        return [r for r in self.rows if r["status"] != "ok"]

    def summary(self) -> dict:
        return {"spec": self.spec.path, "name": self.spec.name, "out": self.out, "files": self.files,
                "cells": len(self.spec.cells), "ran": self.ran, "skipped": self.skipped,
                "ok": len(self.rows) - len(self.failed), "failed": len(self.failed),
                "retries": sum(r.get("retries") or 0 for r in self.rows if r["cell"] is not None),
                "wall_s": round(self.wall_s, 3), "executor": self.executor,
                "provenance": self.spec.provenance,
                "failed_cells": [{"cell": r["cell"], "key": r["key"], "error": r["error"]} for r in self.failed]}


class Progress:
    """A one-line progress bar on stderr (on a terminal): cells done and failed, and an ETA."""

    def __init__(self, enabled: bool = True, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = enabled and getattr(self.stream, "isatty", lambda: False)()
        self.start(0)

    def start(self, total: int, skipped: int = 0):
        """Called by run_sweep once it knows the cells to run and those resumed."""
        self.total, self.skipped, self.done, self.failed = total, skipped, 0, 0
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.drawn = False

    def line(self) -> str:
        el = time.perf_counter() - self.t0
        todo = self.total - self.skipped
        left = todo - self.done
        eta = el / self.done * left if self.done else None
        width = 28
        filled = int(width * (self.done + self.skipped) / max(1, self.total))
        return (f"sweep [{'#' * filled}{'.' * (width - filled)}] {self.done + self.skipped}/{self.total} cells"
                f" ({self.skipped} resumed), {self.failed} failed, {_hms(el)} elapsed"
                + (f", ETA {_hms(eta)}" if eta is not None and left else ""))

    def __call__(self, row: dict):
        self.done += 1
        self.failed += row["status"] != "ok"
        now = time.perf_counter()
        if self.enabled and (now - self.last > 0.1 or self.done + self.skipped == self.total):
            self.last = now
            self.stream.write("\r\033[K" + self.line())
            self.stream.flush()
            self.drawn = True

    def close(self):
        if self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def default_out(spec_path: str) -> str:
    return f"{Path(spec_path).stem}-sweep"


def run_sweep(spec: Spec, out: str, executor, progress=None, on_row=None, report: bool = True) -> SweepResult:
    """Run every cell of `spec` not already in `out`/results.jsonl on `executor`
    (simulator.executor), append each row as it finishes, then write the table and the report.
    `progress(row)` and `on_row(row)` are called per finished cell (and `progress.start(cells,
    resumed)` first, where it has one). KeyboardInterrupt stops the
    workers and propagates; the rows written so far stay, and a re-run resumes from them."""
    t0 = time.perf_counter()
    with ResultsLog(out) as log:
        have = log.read()
        done = {c.key: have[c.key] for c in spec.cells if c.key in have and _finished(have[c.key])}
        todo = [c for c in spec.cells if c.key not in done]
        name = executor.describe().get("executor", "?")
        if hasattr(progress, "start"):
            progress.start(len(spec.cells), len(done))
        rows: dict = {}

        def finished(o):
            c = todo[o.index]
            row = _row(c, spec, o, name)
            log.append(row)
            rows[c.key] = row
            if progress is not None:
                progress(row)
            if on_row is not None:
                on_row(row)
        executor.run(run_cell, [c.to_dict() for c in todo], on_done=finished, capture_errors=True)
    table = []
    for c in spec.cells:
        r = dict(rows.get(c.key) or done[c.key])
        r["cell"] = c.index  # the index in this spec (a resumed row may come from another order)
        table.append(r)
    res = SweepResult(spec, str(out), table, len(todo), len(done), time.perf_counter() - t0, executor.describe())
    base = Path(out)
    write_csv(table, base / "results.csv")
    res.files = {"results": str(base / RESULTS), "csv": str(base / "results.csv")}
    if write_parquet(table, base / "results.parquet"):
        res.files["parquet"] = str(base / "results.parquet")
    if report:
        write_report(res, base / "report.html")
        res.files["report"] = str(base / "report.html")
    return res


# ---- the report -----------------------------------------------------------------------------------

def _num(v):
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return float(str(v))
    except ValueError:
        return None


def _ok(rows, kinds) -> list:
    return [r for r in rows if r["status"] == "ok" and r["kind"] in kinds]


def _axis(rows: list, candidates: tuple):
    for k in candidates:
        vals = {_num(r.get(f"in_{k}")) for r in rows}
        if len(vals - {None}) > 1:
            return k
    return None


def _series(rows: list, x: str, y: str, by: tuple) -> dict:
    """{label: (xs, ys)} sorted by x; label from the `by` inputs that vary."""
    vary = [k for k in by if len({str(r.get(f"in_{k}")) for r in rows}) > 1] or [by[0]]
    out: dict = {}
    for r in rows:
        xv, yv = _num(r.get(f"in_{x}") if not x.startswith("=") else r.get(x[1:])), _num(r.get(y))
        if xv is None or yv is None:
            continue
        lab = " · ".join(str(r.get(f"in_{k}")) for k in vary)
        out.setdefault(lab, []).append((xv, yv))
    return {k: ([a for a, _ in sorted(v)], [b for _, b in sorted(v)]) for k, v in out.items()}


def training_figure(rows: list):
    """Tokens/s per device against nodes (or global batch, or sequence length) per model, one
    panel per cluster; None without training rows."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots
    rows = _ok(rows, ("plan train", "simulate train"))
    x = _axis(rows, ("nodes", "global_batch", "seq_len"))
    if not rows or x is None:
        return None
    clusters = list(dict.fromkeys(str(r.get("in_cluster")) for r in rows))
    fig = make_subplots(rows=1, cols=len(clusters), subplot_titles=clusters, shared_yaxes=True)
    models = list(dict.fromkeys(str(r.get("in_model")) for r in rows))
    for j, cl in enumerate(clusters, 1):
        sub = [r for r in rows if str(r.get("in_cluster")) == cl]
        by = ("model", "seq_len", "global_batch", "nodes")
        for lab, (xs, ys) in _series(sub, x, "tokens_per_s_per_device", by).items():
            m = lab.split(" · ")[0]
            i = models.index(m) if m in models else 0
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=lab, legendgroup=lab,
                                     showlegend=j == 1, line=dict(color=qualitative.Plotly[i % 10])), row=1, col=j)
        fig.update_xaxes(title_text=x.replace("_", " "), type="log" if x in ("nodes", "global_batch") else "linear",
                         row=1, col=j)
    fig.update_yaxes(title_text="tokens/s per device (best plan)", row=1, col=1)
    fig.update_layout(title=f"Training: tokens/s per device vs {x.replace('_', ' ')}, per model",
                      height=440, margin=dict(l=60, r=20, t=80, b=50))
    return fig


def serving_cost_figure(rows: list):
    """$/h of the cheapest fleet against the request rate, per device pool (plan serve)."""
    import plotly.graph_objects as go
    rows = _ok(rows, ("plan serve",))
    if not rows:
        return None
    fig = go.Figure()
    for lab, (xs, ys) in _series(rows, "rate", "cost_per_hour", ("devices", "model", "slo_ttft", "slo_tpot",
                                                                 "prompt_len", "output_len")).items():
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=lab))
    fig.update_layout(title="Serving: fleet $/h vs request rate, per device pool", xaxis_title="requests/s",
                      yaxis_title="USD per hour (cheapest fleet meeting the SLOs)", height=420,
                      margin=dict(l=60, r=20, t=60, b=50))
    return fig


def serving_latency_figure(rows: list):
    """p90 TTFT and tokens/s per device against the rate (or concurrency) per model, cluster and
    plan (simulate serve)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    rows = _ok(rows, ("simulate serve",))
    x = _axis(rows, ("rate", "concurrency", "prompt_len", "output_len"))
    if not rows or x is None:
        return None
    fig = make_subplots(rows=1, cols=2, subplot_titles=("p90 TTFT (s)", "output tokens/s per device"))
    by = ("model", "cluster", "plan", "engine", "prompt_len", "output_len")
    from plotly.colors import qualitative
    for i, (lab, (xs, ys)) in enumerate(_series(rows, x, "ttft_p90_s", by).items()):
        color = qualitative.Plotly[i % 10]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=lab, legendgroup=lab,
                                 line=dict(color=color)), row=1, col=1)
        xs2, ys2 = _series(rows, x, "tokens_per_s_per_device", by).get(lab, ([], []))
        fig.add_trace(go.Scatter(x=xs2, y=ys2, mode="lines+markers", name=lab, legendgroup=lab, showlegend=False,
                                 line=dict(color=color)), row=1, col=2)
    fig.update_xaxes(title_text=x.replace("_", " "))
    fig.update_layout(title=f"Serving: latency and throughput vs {x.replace('_', ' ')}", height=420,
                      margin=dict(l=60, r=20, t=80, b=50))
    return fig


def sweep_figures(rows: list) -> list:
    """The report's figures for these rows (the ones that apply)."""
    figs = (training_figure(rows), serving_cost_figure(rows), serving_latency_figure(rows))
    return [f for f in figs if f is not None]


def _html_table(rows: list, cols: list) -> str:
    import html
    head = "".join(f"<th>{html.escape(c.removeprefix('in_'))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(_csv_value(r.get(c))))}</td>" for c in cols) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def report_html(result: SweepResult, plotlyjs="inline") -> str:
    """The HTML report: summary, figures, the best row per group and the failed cells.
    plotlyjs: "inline" (a self-contained file) or "cdn"."""
    import html
    s = result.summary()
    figs = sweep_figures(result.rows)
    parts = []
    for i, f in enumerate(figs):
        parts.append(f.to_html(full_html=False, include_plotlyjs=(True if plotlyjs == "inline" else "cdn") if i == 0
                               else False, default_width="100%"))
    inputs = [c for c in table_columns(result.rows) if c.startswith("in_") and c[3:] in result.spec.varying]
    shown = ["cell", "kind"] * (len({r["kind"] for r in result.rows}) > 1) or ["cell"]
    metrics = [c for c in ("best_plan", "num_devices", "tokens_per_s_per_device", "mfu", "cost_per_hour", "ttft_p90_s",
                           "tpot_p90_s", "ttft_s", "tpot_s") if any(r.get(c) is not None for r in result.rows)]
    ok = [r for r in result.rows if r["status"] == "ok"]
    failed = result.failed
    ex = s["executor"]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>sweep {html.escape(s['name'])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5em}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}} th{{background:#f3f3f3}}</style></head><body>
<h1>Sweep {html.escape(s['name'])}</h1>
<p>{s['cells']} cells from <code>{html.escape(s['spec'])}</code>: {s['ok']} ok, {s['failed']} failed
({s['ran']} run now, {s['skipped']} resumed from an earlier run, {s['retries']} retries after worker deaths);
executor {html.escape(str(ex.get('executor')))} with {ex.get('workers')} workers, {s['wall_s']:.1f} s;
clusterplan {html.escape(str(s['provenance'].get('clusterplan')))},
{html.escape(str(s['provenance'].get('kernel_tables')))}.</p>
{''.join(parts) or '<p>No chart applies: no option varies along a numeric axis.</p>'}
<h2>Results ({len(ok)} ok)</h2>
{_html_table(ok, shown + inputs + metrics)}
<h2>Failed cells ({len(failed)})</h2>
{_html_table(failed, shown + inputs + ['error']) if failed else '<p>None.</p>'}
</body></html>
"""


def write_report(result: SweepResult, path, plotlyjs="inline") -> None:
    from hwmodels.fileio import write_text_atomic
    write_text_atomic(path, report_html(result, plotlyjs))


def format_summary(s: dict) -> str:
    ex = s["executor"]
    lines = [f"sweep {s['name']}: {s['cells']} cells, {s['ok']} ok, {s['failed']} failed "
             f"({s['ran']} run, {s['skipped']} resumed, {s['retries']} retries) in {s['wall_s']:.1f} s "
             f"on {ex.get('executor')} ({ex.get('workers')} workers)"]
    lines += [f"  {k:<8} {v}" for k, v in s["files"].items()]
    for f in s["failed_cells"][:20]:
        lines.append(f"  cell {f['cell']} failed: {f['error']}")
    if len(s["failed_cells"]) > 20:
        lines.append(f"  ... {len(s['failed_cells']) - 20} more failed cells in the table")
    return "\n".join(lines)
