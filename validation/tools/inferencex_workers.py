"""Recover what the InferenceX exports leave out of their rows: disaggregated pools and worker
counts, and the speculative decoding of each run.

aiconfigurator-core 0.12.0's `silicon_sample.csv` takes its disaggregated InferenceX rows from two
exports (2026-03-25, 2026-04-06) that leave `prefill_num_workers` / `decode_num_workers` blank. The
run that measured each row was launched from InferenceX's benchmark matrix
(`.github/configs/nvidia-master.yaml`, later `configs/nvidia-master.yaml`, in
SemiAnalysisAI/InferenceX), whose disaggregated entries list, per concurrency, each pool's
`num-worker`, `tp`, `ep`, `dp-attn` and `spec-decoding`. This tool reads that file as it stood when
each row was measured (the last commit at or before the row's `measured=` date, then the nearest
versions within two weeks), matches the row by model, GPU, precision, framework, container image,
ISL/OSL, concurrency and both pools' GPU counts, and writes what the matched entry says.

Aggregated rows carry their layout, but not whether the run used MTP speculative decoding, which
the matrix lists per entry (`spec-decoding`, or a separate `-mtp` key). An aggregated row is
matched the same way (its GPU count against the entry's `tp`) and kept only where the entry's
`ep` and `dp-attn` agree with the layout the row records.

Some points were run more than once: the matrix lists the same model, GPU, lengths, concurrency
and pool GPU counts under several entries (an MTP recipe beside a plain one, or other worker
counts), and the exports do not say which run a row comes from. Such rows are written to
`inferencex_ambiguous.csv` with the deployments the matrix lists for them, so that the replay
neither picks one nor falls back to a default the matrix contradicts.

Run (needs a clone of SemiAnalysisAI/InferenceX; not run in CI):
    python -m validation.tools.inferencex_workers /path/to/InferenceX validation/data/serving
writes `inferencex_disagg_workers.csv`, `inferencex_agg_spec.csv` and `inferencex_ambiguous.csv` there.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import os
import subprocess
import sys
from typing import NamedTuple

import yaml

from hwmodels.fileio import write_text_atomic
from validation.serving import _int, read_rows, row_concurrency

CONFIG_PATHS = (".github/configs/nvidia-master.yaml", "configs/nvidia-master.yaml")
PREFIX = {"deepseek-ai/DeepSeek-R1": "dsr1", "deepseek-ai/DeepSeek-V3": "dsr1", "nvidia/DeepSeek-R1-NVFP4": "dsr1",
          "moonshotai/Kimi-K2.5": "kimik2.5", "openai/gpt-oss-120b": "gptoss", "zhipuai/GLM-5": "glm5",
          "MiniMaxAI/MiniMax-M2.5": "minimaxm2.5", "Qwen/Qwen3.5-397B-A17B": "qwen3.5"}
RUNNER = {"b200_sxm": "b200", "b300_sxm": "b300", "gb200": "gb200", "gb300": "gb300",
          "h100_sxm": "h100", "h200_sxm": "h200"}
FRAMEWORK = {"disagg": {"trtllm": "dynamo-trt", "sglang": "dynamo-sglang", "vllm": "dynamo-vllm"},
             "agg": {"trtllm": "trt", "sglang": "sglang", "vllm": "vllm"}}
WINDOW_DAYS = 14


class Shape(NamedTuple):
    prefill_num_workers: int
    prefill_tp: int
    prefill_ep: int
    prefill_dp_attn: bool
    decode_num_workers: int
    decode_tp: int
    decode_ep: int
    decode_dp_attn: bool
    spec_decoding: str


class AggShape(NamedTuple):
    tp: int
    ep: int
    dp_attn: bool
    spec_decoding: str


PROVENANCE = ["config_key", "config_file", "commit", "commit_date"]
FIELDS = {"disagg": ["id", *Shape._fields, *PROVENANCE], "agg": ["id", *AggShape._fields, *PROVENANCE],
          "ambiguous": ["id", "mode", "deployments", "mtp_deployments", "candidates", "config_key",
                        "commit", "commit_date"]}
FILES = {"disagg": "inferencex_disagg_workers.csv", "agg": "inferencex_agg_spec.csv",
         "ambiguous": "inferencex_ambiguous.csv"}


def _shape(entry: dict) -> Shape | AggShape:
    if "prefill" not in entry:
        return AggShape(int(entry["tp"]), int(entry.get("ep", 1)), bool(entry.get("dp-attn", False)),
                        str(entry.get("spec-decoding", "none")))
    p, d = entry.get("prefill") or {}, entry.get("decode") or {}
    return Shape(int(p.get("num-worker", 1)), int(p["tp"]), int(p.get("ep", 1)), bool(p.get("dp-attn", False)),
                 int(d.get("num-worker", 1)), int(d["tp"]), int(d.get("ep", 1)), bool(d.get("dp-attn", False)),
                 str(entry.get("spec-decoding", "none")))


def _git(repo: str, *args: str) -> str:
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, text=True).stdout


def _source(row: dict) -> dict:
    return dict(kv.strip().split("=", 1) for kv in row.get("silicon_data_source", "").split(";") if "=" in kv)


def _measured(row: dict) -> dt.datetime:
    """The row's `measured=` time (UTC where it names no zone)."""
    when = dt.datetime.fromisoformat(_source(row)["measured"].replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def _versions(repo: str) -> list[tuple[dt.datetime, str, str]]:
    """(commit time, commit, path) of every first-parent version of the matrix file."""
    out = []
    for path in CONFIG_PATHS:
        for line in _git(repo, "log", "--first-parent", "--format=%H %cI", "HEAD", "--", path).splitlines():
            sha, when = line.split()
            out.append((dt.datetime.fromisoformat(when), sha, path))
    return sorted(out)


_LOADED: dict = {}


def _matrix(repo: str, sha: str, path: str) -> dict:
    if (sha, path) not in _LOADED:
        try:
            _LOADED[sha, path] = yaml.safe_load(_git(repo, "show", f"{sha}:{path}")) or {}
        except (subprocess.CalledProcessError, yaml.YAMLError):
            _LOADED[sha, path] = {}
    return _LOADED[sha, path]


def _concurrencies(entry: dict) -> set[int]:
    if "conc-list" in entry:
        return {int(c) for c in entry["conc-list"]}
    lo, hi = entry.get("conc-start"), entry.get("conc-end")
    out, c = set(), lo
    while lo and hi and c <= hi:
        out.add(int(c))
        c *= 2
    return out


def _pool_matches(row: dict, prefix: str, pool: dict) -> bool:
    """The exports keep each pool's GPU count (tp_size · attention_dp_size) but not reliably its
    EP size or attention-DP flag (a decode pool listed as DEP32 in the matrix reads tp 32, moe_tp
    8, moe_ep 4 in them): the GPU count is what is matched."""
    tp, adp = _int(row.get(prefix + "tp_size")) or 1, _int(row.get(prefix + "attention_dp_size")) or 1
    return int(pool.get("tp", 0)) == tp * adp


def _placeholder(pool: dict) -> bool:
    """Attention data parallelism over one GPU: the early SGLang GB200 entries write tp 1 / ep 1 /
    dp-attn true and note that their launch script hard-codes the real layout."""
    return int(pool.get("tp", 1)) == 1 and bool(pool.get("dp-attn", False))


def _seq_configs(cfg: dict) -> list[dict]:
    if "seq-len-configs" in cfg:
        return cfg["seq-len-configs"] or []
    return (cfg.get("scenarios") or {}).get("fixed-seq-len") or []


def _image(s: str) -> str:
    return s.replace("nvcr.io#", "nvcr.io/").removesuffix("-amd64").strip()


def _gpus(row: dict, prefix: str = "") -> int:
    return (_int(row.get(prefix + "tp_size")) or 1) * (_int(row.get(prefix + "attention_dp_size")) or 1)


def _entry_matches(row: dict, entry: dict) -> bool:
    if row.get("mode") == "agg":
        # the layout must agree where the row records it (a GPU count alone can name another entry)
        ep, adp = _int(row.get("moe_ep_size")) or 1, _int(row.get("attention_dp_size")) or 1
        return (not _placeholder(entry) and int(entry.get("tp", 0)) == _gpus(row)
                and int(entry.get("ep", 1)) == ep and bool(entry.get("dp-attn", False)) == (adp > 1))
    pools = (entry.get("prefill") or {}, entry.get("decode") or {})
    if any(_placeholder(p) for p in pools):
        return False
    return _pool_matches(row, "prefill_", pools[0]) and _pool_matches(row, "decode_", pools[1])


def matches(row: dict, matrix: dict) -> list[tuple[str, dict]]:
    """(config key, search-space entry) of `matrix` that describe `row`."""
    src = _source(row)
    image = _image(src.get("image", ""))
    c, isl, osl = row_concurrency(row), _int(row.get("isl")), _int(row.get("osl"))
    mode = "disagg" if row.get("mode") == "disagg" else "agg"
    out = []
    for key, cfg in matrix.items():
        if not isinstance(cfg, dict) or bool(cfg.get("disagg")) != (mode == "disagg"):
            continue
        if (cfg.get("model-prefix") != PREFIX.get(row["model_path"])
                or str(cfg.get("precision")) != row["precision"]
                or cfg.get("framework") != FRAMEWORK[mode].get(row["backend"])
                or not str(cfg.get("runner", "")).split("-")[0] == RUNNER.get(row["system"])):
            continue
        if image and _image(str(cfg.get("image", ""))) != image:
            continue
        for sc in _seq_configs(cfg):
            if int(sc.get("isl", 0)) != isl or int(sc.get("osl", 0)) != osl:
                continue
            out += [(key, e) for e in sc.get("search-space") or []
                    if c in _concurrencies(e) and _entry_matches(row, e)]
    return out


def _config_file(entry: dict) -> str:
    for s in (entry.get("prefill") or entry).get("additional-settings") or []:
        if str(s).startswith("CONFIG_FILE="):
            return str(s).split("=", 1)[1]
    return ""


def _describe(shape: Shape | AggShape) -> str:
    """One deployment in a line: `2P tp4 ep4 dp-attn + 1D tp32 ep32 dp-attn, mtp`."""
    if isinstance(shape, AggShape):
        return f"tp{shape.tp} ep{shape.ep}{' dp-attn' if shape.dp_attn else ''}, {shape.spec_decoding}"
    pools = [f"{n}{r} tp{tp} ep{ep}{' dp-attn' if dpa else ''}" for r, (n, tp, ep, dpa) in
             (("P", shape[0:4]), ("D", shape[4:8]))]
    return f"{' + '.join(pools)}, {shape.spec_decoding}"


def resolve(row: dict, repo: str, versions: list) -> dict | None:
    """The matrix entry that ran `row`: the last version at (or a day after) its measured date
    first, then earlier ones, then later ones, all within WINDOW_DAYS; None if none matches. Where
    the first version that lists the point lists it under several deployments (other pools or
    speculative decoding), the record says so instead (`deployments` > 1, the candidates in
    `candidates`, how many with speculative decoding in `mtp_deployments`)."""
    when = _measured(row)
    cut, window = when + dt.timedelta(days=1), dt.timedelta(days=WINDOW_DAYS)
    near = [v for v in versions if abs(v[0] - when) <= window]
    for t, sha, path in [v for v in near if v[0] <= cut][::-1] + [v for v in near if v[0] > cut]:
        found = matches(row, _matrix(repo, sha, path))
        answers = sorted({_shape(e) for _, e in found})
        provenance = {"commit": sha, "commit_date": t.date().isoformat()}
        if len(answers) == 1:
            key, entry = found[0]
            return {"id": row["id"], **answers[0]._asdict(), "config_key": key,
                    "config_file": _config_file(entry), **provenance}
        if len(answers) > 1:
            return {"id": row["id"], "mode": row["mode"], "deployments": len(answers),
                    "mtp_deployments": sum(a.spec_decoding != "none" for a in answers),
                    "candidates": "; ".join(_describe(a) for a in answers),
                    "config_key": " ".join(sorted({k for k, _ in found})), **provenance}
    return None


def _wanted(row: dict) -> bool:
    if row["model_path"] not in PREFIX or "measured=" not in row.get("silicon_data_source", ""):
        return False
    if row.get("mode") == "disagg":
        return not (_int(row.get("prefill_num_workers")) and _int(row.get("decode_num_workers")))
    return row.get("mode") == "agg"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m validation.tools.inferencex_workers PATH_TO_INFERENCEX_CLONE OUT_DIR",
              file=sys.stderr)
        return 2
    repo, out_dir = argv
    versions = _versions(repo)
    found: dict = {"agg": [], "disagg": [], "ambiguous": []}
    rows = [r for r in read_rows() if _wanted(r)]
    for r in rows:
        got = resolve(r, repo, versions)
        if got:
            found["ambiguous" if "deployments" in got else r["mode"]].append(got)
    for kind, out in found.items():
        buf = io.StringIO()
        w = csv.DictWriter(buf, FIELDS[kind], lineterminator="\n")
        w.writeheader()
        w.writerows(out)
        write_text_atomic(os.path.join(out_dir, FILES[kind]), buf.getvalue())
    for mode in ("disagg", "agg"):
        n = sum(r["mode"] == mode for r in rows)
        several = sum(a["mode"] == mode for a in found["ambiguous"])
        print(f"{mode}: {len(found[mode])} of {n} rows matched, {several} listed under several deployments",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
