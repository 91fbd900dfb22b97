"""Plan search for training: enumerate the candidate space, prune it, score the survivors, rank.

    result = search(job, cluster, top=10)            # throughput on the whole cluster
    result.plans[0]["plan_string"], result.pruned

The space is every combination of dp·tp·pp·cp = devices, ep, sp, ZeRO stage 0-3 / fsdp,
micro-batch size, schedule × virtual stages, recompute and offload (`space_size`). Pruning runs
from the cheapest test to the dearest, and every candidate lands in exactly one bucket:

1. divisibility — the plan breaks a rule of `simulator.training.validate_plan`,
   `simulator.ops.check_supported`, or a TP/CP/EP group would not fit the cluster's devices
   (hwmodels.topology); whole subtrees are counted at once (tp ∤ heads removes every plan under it);
2. rules, applied to valid plans only — `duplicate` (fsdp is ZeRO-3 to the analytic engine;
   zb-h1/zb-h2 are 1f1b when pp = 1), `dominated` (gpipe has 1f1b's step time in the analytic engine
   and holds ≥ its activations), `heuristic` (tp wider than a node; offload, searched only when
   nothing fits without it). A key given in `--fix` is never pruned by a rule;
3. memory — the peak stage does not fit in HBM (`simulator.memory` formulas, evaluated before any
   time is computed);
4. scored — step time computed.

Scoring calls the simulator's engine on arrays of plans, one mesh shape (tp, pp, cp, ep, dp) at a
time: `simulator.memory.memory_parts` for the memory test, then `simulator.analytic.step_terms` for
the survivors — the same functions `simulator.analytic.estimate` calls with a batch of one, so a
reported plan's score is its `estimate()`. The planner holds no cost formula: validity comes from
`simulator.training`'s rules and `Schedule.check`, schedules and their virtual-stage domains from
`simulator.schedules.SCHEDULES`, and a reported plan's JSON is `estimate().to_dict()`.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np

from hwmodels.clusters import Cluster
from hwmodels.collectives import collective_s
from hwmodels.errors import InputError
from simulator import schedules
from simulator.analytic import estimate, step_terms
from simulator.memory import memory_parts, placement, placements, stage_memory, stage_params
from simulator.ops import check_supported
from simulator.training import (EVEN, RECOMPUTE, PlanBatch, TrainingJob, TrainingPlan, cp_splits_seq,
                                ep_splits_experts, layer_plan, layers_split, parse_plan, split_keys, tp_splits_model,
                                uneven_candidates)

OBJECTIVES = ("throughput", "cost", "time-to-train")
FIX_KEYS = ("dp", "tp", "pp", "cp", "ep", "mb", "vpp", "zero", "recompute", "schedule", "sp", "offload",
            "fsdp")
# The candidate table stores a schedule as its index in `simulator.schedules.names()` (every
# registered schedule is searched). SCHED: the registry's names when this module was imported.
SCHED = schedules.names()
GIB = 2**30


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


@lru_cache(maxsize=1024)
def _label(why: str) -> str:
    """A validity message as a pruning bucket: without its numbers and references, so that every
    plan a rule rejects counts under one label."""
    why = re.sub(r"\s*\([^)]*\)", "", why)
    return re.sub(r"=\d+", "", why).removeprefix("plan ")


# ---- --fix -----------------------------------------------------------------------------------

def parse_fix(text: str | None) -> dict:
    """`"tp=8,pp=2,schedule=1f1b|interleaved"` → {"tp": (8,), "pp": (2,), "schedule": ("1f1b",
    "interleaved")}: each key keeps only the listed values (`|` separates alternatives). Values
    are read by `simulator.training.parse_plan`; keys outside FIX_KEYS raise InputError."""
    if not text:
        return {}
    out: dict = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise InputError(f"--fix item {item!r} is not key=value (e.g. --fix \"tp=8,pp=2\")")
        key, vals = (x.strip() for x in item.split("=", 1))
        key = key.lower()
        if key not in FIX_KEYS:
            raise InputError(f"--fix key {key!r} is not a plan key; valid: {' '.join(FIX_KEYS)}")
        if key in out:
            raise InputError(f"--fix key {key!r} given twice (list alternatives as {key}=a|b)")
        alts = []
        for v in vals.split("|"):
            try:
                alts.append(getattr(parse_plan(f"{key}={v.strip()}"), key))
            except InputError as e:
                raise InputError(f"--fix: {e}") from None
        out[key] = tuple(dict.fromkeys(alts))
    return out


def _normalise_fix(fix) -> dict:
    """A fix given as a string or as {key: value or values} → {key: tuple of values}."""
    if fix is None or isinstance(fix, str):
        return parse_fix(fix)
    out = {}
    for k, v in dict(fix).items():
        if k not in FIX_KEYS:
            raise InputError(f"fix key {k!r} is not a plan key; valid: {' '.join(FIX_KEYS)}")
        out[k] = tuple(v) if isinstance(v, (tuple, list, set, frozenset)) else (v,)
    return out


def _fix_text(fix: dict) -> str:
    show = lambda x: ("on" if x else "off") if isinstance(x, bool) else str(x)  # noqa: E731
    return ",".join(f"{k}={'|'.join(show(x) for x in v)}" for k, v in fix.items())


# ---- the candidate table ---------------------------------------------------------------------

# Columns of the table of scored candidates (one row per plan that fits).
COLUMNS = ("nodes", "dp", "tp", "pp", "cp", "ep", "mb", "vpp", "sched", "recompute", "sp", "zero",
           "fsdp", "offload", "first", "last", "pp_embed", "pp_loss", "recompute_layers")
SPLIT_COLUMNS = ("first", "last", "pp_embed", "pp_loss")  # the uneven pipeline split (layout is not searched)


def plan_of(row: dict) -> TrainingPlan:
    return TrainingPlan(dp=int(row["dp"]), tp=int(row["tp"]), pp=int(row["pp"]), cp=int(row["cp"]),
                        ep=int(row["ep"]), sp=bool(row["sp"]), zero=int(row["zero"]),
                        fsdp=bool(row["fsdp"]), mb=int(row["mb"]), vpp=int(row["vpp"]),
                        recompute=RECOMPUTE[int(row["recompute"])], schedule=schedules.names()[int(row["sched"])],
                        offload=bool(row["offload"]), first=int(row.get("first", 0)), last=int(row.get("last", 0)),
                        pp_embed=bool(row.get("pp_embed", False)), pp_loss=bool(row.get("pp_loss", False)),
                        recompute_layers=None if int(row.get("recompute_layers", -1)) < 0
                        else int(row["recompute_layers"]))


@dataclass
class _Counts:
    space: int = 0
    divisibility: int = 0
    duplicate: int = 0
    dominated: int = 0
    heuristic: int = 0
    memory: int = 0
    scored: int = 0
    reasons: dict = field(default_factory=dict)  # divisibility reason -> count
    rules: dict = field(default_factory=dict)  # rule -> count

    def bad(self, reason: str, n: int):
        self.divisibility += n
        self.reasons[reason] = self.reasons.get(reason, 0) + n

    def rule(self, bucket: str, rule: str, n: int):
        setattr(self, bucket, getattr(self, bucket) + n)
        self.rules[rule] = self.rules.get(rule, 0) + n

    def add(self, other: "_Counts"):
        for k in ("space", "divisibility", "duplicate", "dominated", "heuristic", "memory", "scored"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        for d, o in ((self.reasons, other.reasons), (self.rules, other.rules)):
            for k, v in o.items():
                d[k] = d.get(k, 0) + v

    def to_dict(self) -> dict:
        return {"divisibility": self.divisibility, "duplicate": self.duplicate,
                "dominated": self.dominated, "heuristic": self.heuristic, "memory": self.memory,
                "scored": self.scored, "divisibility_reasons": dict(sorted(self.reasons.items())),
                "rules": dict(sorted(self.rules.items()))}


class _Enumerator:
    """Enumerates and scores the plans of one job on one cluster size."""

    def __init__(self, job: TrainingJob, cluster: Cluster, fix: dict, with_offload: bool,
                 keep_unfit: int = 0):
        self.job, self.cluster, self.fix = job, cluster, fix
        self.keep_unfit = keep_unfit  # keep up to this many memory-pruned plans (for tests)
        self.unfit: list[tuple[TrainingPlan, float]] = []
        self.model = m = job.model
        self.hbm = float(cluster.device.hbm_bytes)
        N, B = cluster.num_devices, job.global_batch
        self.N = N
        dom = lambda key, default: list(fix[key]) if key in fix else default  # noqa: E731
        self.tp_dom = dom("tp", divisors(N))
        self.pp_dom = dom("pp", divisors(N))
        self.cp_dom = dom("cp", divisors(N))
        self.ep_dom = dom("ep", divisors(m.num_experts) if m.is_moe else [1])
        self.mb_dom = dom("mb", divisors(B))
        self.names = names = schedules.names()
        for sch in fix.get("schedule", ()):
            if sch not in names:
                raise InputError(f"--fix schedule={sch} is not a schedule; valid: {', '.join(names)}")
        self.sched_codes = [names.index(x) for x in fix["schedule"]] if "schedule" in fix else list(range(len(names)))
        self._sched_dom: dict = {}
        self._classes: dict = {}  # (pp, m) -> schedule entries
        self._support: dict = {}  # (tp, sp) -> check_supported's verdict
        self.rc_dom = [RECOMPUTE.index(r) for r in dom("recompute", RECOMPUTE)]
        self.sp_dom = dom("sp", [False, True])
        zvals, fsdp_vals = dom("zero", [0, 1, 2, 3]), dom("fsdp", [False, True])
        zsel = [z for z in zvals if False in fsdp_vals] + (["fsdp"] if True in fsdp_vals and 3 in zvals else [])
        off_dom = dom("offload", [False, True])
        # (zero, fsdp, offload) combinations, classified once: main ones are scored.
        self.zo_size = len(zsel) * len(off_dom)
        self.zo_main: list[tuple[int, bool, bool]] = []
        self.zo_bad: list[str] = []  # reason per invalid combination
        self.zo_rule: list[tuple[str, str]] = []  # (bucket, rule) per valid combination a rule prunes
        for z in zsel:
            for off in off_dom:
                zz, fs = (3, True) if z == "fsdp" else (z, False)
                if off and zz == 0:
                    self.zo_bad.append("offload needs zero >= 1")
                elif fs and "fsdp" not in fix:
                    self.zo_rule.append(("duplicate", "fsdp=on is zero=3 to the analytic engine"))
                elif off and "offload" not in fix and not with_offload:
                    self.zo_rule.append(("heuristic", "offload searched only when nothing fits"))
                else:
                    self.zo_main.append((zz, fs, off))
        self.counts = _Counts()
        self.min_unfit: tuple[float, TrainingPlan] | None = None

    # -- the space --
    def meshes(self):
        """(tp, pp, cp) triples of the space, dp derived."""
        N = self.N
        for tp in self.tp_dom:
            if N % tp:
                continue
            for pp in self.pp_dom:
                if (N // tp) % pp:
                    continue
                for cp in self.cp_dom:
                    if (N // (tp * pp)) % cp:
                        continue
                    dp = N // (tp * pp * cp)
                    if "dp" in self.fix and dp not in self.fix["dp"]:
                        continue
                    yield tp, pp, cp, dp

    def sched_dom(self, pp: int) -> list[tuple[int, int, tuple]]:
        """(schedule index, vpp, pipeline split) triples searched on pp stages (`schedule_domain`)."""
        dom = self._sched_dom.get(pp)
        if dom is None:
            dom = []
            for c in self.sched_codes:
                dom += [(c, v, split) for v, split in
                        schedule_domain(self.model.num_layers, self.names[c], pp, self.fix.get("vpp"))]
            self._sched_dom[pp] = dom
        return dom

    def sizes(self, pp: int) -> tuple[int, int, int, int]:
        """Subtree sizes below a mesh with pp stages, an ep, an mb and a schedule entry."""
        s_sched = len(self.rc_dom) * len(self.sp_dom) * self.zo_size
        s_mb = len(self.sched_dom(pp)) * s_sched
        s_ep = len(self.mb_dom) * s_mb
        return len(self.ep_dom) * s_ep, s_ep, s_mb, s_sched

    def run(self, progress=None) -> dict[str, np.ndarray]:
        meshes = list(self.meshes())
        m, c = self.model, self.counts
        S = self.job.seq_len
        out: list[dict] = []
        for i, (tp, pp, cp, dp) in enumerate(meshes):
            s_mesh, s_ep, s_mb, s_sched = self.sizes(pp)
            c.space += s_mesh
            if progress:
                progress(i, len(meshes))
            if not tp_splits_model(m, tp):
                c.bad("tp must divide heads, KV heads (or be a multiple) and ffn", s_mesh)
                continue
            if not cp_splits_seq(S, cp):
                c.bad("cp must split seq-len into 2·cp chunks", s_mesh)
                continue
            if not layers_split(m, pp) and all(split == EVEN for _, _, split in self.sched_dom(pp)):
                c.bad("pp·vpp must divide layers", s_mesh)
                continue
            for ep in self.ep_dom:
                if not ep_splits_experts(m, ep, dp, tp, cp):  # MoE parallel folding: ep | tp·cp·dp
                    c.bad("ep must divide experts and tp·cp·dp (MoE only)", s_ep)
                    continue
                misfit = self._groups_misfit(tp, cp, ep)
                if misfit:
                    c.bad(misfit, s_ep)
                    continue
                block = self._mesh(tp, pp, cp, ep, dp, s_mb, s_sched)
                if block is not None:
                    out.append(block)
        if progress:
            progress(len(meshes), len(meshes))
        if not out:
            return {k: np.zeros(0) for k in COLUMNS + ("step_s", "peak_bytes", "peak_stage")}
        return {k: np.concatenate([b[k] for b in out]) for k in out[0]}

    # -- one mesh shape --
    def _groups_misfit(self, tp: int, cp: int, ep: int) -> str:
        """Why the engine could not place a TP, CP or EP group of this mesh on the cluster
        (hwmodels places a group of `size` ranks `stride` apart; ops.py strides: TP 1, CP tp,
        EP etp = 1 in the folded expert order of megatron/core/parallel_state.py), or ''."""
        for name, op, size, stride in (("tp", "all_reduce", tp, 1), ("cp", "all_gather", cp, tp),
                                       ("ep", "all_to_all", ep, 1)):
            if size > 1:
                try:
                    collective_s(self.cluster, op, size, stride, 1.0)
                except InputError:
                    return f"{name} group must fit the devices ({name}·stride <= devices)"
        return ""

    def _sched_entries(self, pp: int, m: int, s_sched: int) -> list[tuple[int, int, tuple, tuple | None]]:
        """Valid (schedule, vpp, split) entries with the rule that prunes them, if any (invalid ones
        are counted)."""
        ok = []
        for code, v, split, why, rule in self._sched_classes(pp, m):
            if why:
                self.counts.bad(why, s_sched)
            else:
                ok.append((code, v, split, rule))
        return ok

    def _sched_classes(self, pp: int, m: int) -> list[tuple[int, int, tuple, str, tuple | None]]:
        """(schedule, vpp, split, why invalid, pruning rule) on pp stages with m micro-batches:
        validity from `simulator.training.layers_split` (uneven splits are valid by construction)
        and `Schedule.check`, pruning from the schedule's hints (`same_when_pp1`, `dominated_by`)."""
        out = self._classes.get((pp, m))
        if out is not None:
            return out
        out = self._classes[pp, m] = []
        for code, v, split in self.sched_dom(pp):
            sched = schedules.get(self.names[code])
            why = "" if split != EVEN or layers_split(self.model, pp * v) else "pp·vpp must divide layers"
            why = why or _label(sched.check(pp, v, m))
            rule = None
            if "schedule" in self.fix:
                pass
            elif pp == 1 and sched.same_when_pp1:
                rule = ("duplicate", sched.same_when_pp1)
            elif sched.dominated_by:
                rule = ("dominated", sched.dominated_by)
            out.append((code, v, split, why, rule))
        return out

    def _unsupported(self, tp: int, sp: bool) -> str:
        """Why `simulator.ops.check_supported` refuses this (tp, sp) for the model, or ''."""
        if (tp, sp) not in self._support:
            try:
                check_supported(self.model, layer_plan(tp, 1, 1, sp, 1, "none"))
                self._support[tp, sp] = ""
            except InputError as e:
                self._support[tp, sp] = ("MoE with tp > 1 needs sp" if "MoE" in str(e)
                                         else "tp does not divide the Mamba-2 heads and groups")
        return self._support[tp, sp]

    def _mesh(self, tp, pp, cp, ep, dp, s_mb, s_sched) -> dict | None:
        job, m, c = self.job, self.model, self.counts
        B, dpn = job.global_batch, self.cluster.devices_per_node
        n_rc, n_zo = len(self.rc_dom), len(self.zo_main)
        # ---- a-rows: (mb, schedule, vpp, recompute, sp) that pass divisibility and rules ----
        rows = []  # (mb, schedule, v, rc, sp, first, last, pp_embed, pp_loss)
        for mb in self.mb_dom:
            if B % (dp * mb):
                c.bad("global batch must be a multiple of dp·mb", s_mb)
                continue
            for code, v, split, rule in self._sched_entries(pp, B // (dp * mb), s_sched):
                for sp in self.sp_dom:
                    if sp and tp == 1:
                        c.bad("sp needs tp > 1", n_rc * self.zo_size)
                        continue
                    why = self._unsupported(tp, sp)
                    if why:
                        c.bad(why, n_rc * self.zo_size)
                        continue
                    # every candidate below is valid: the first rule that applies prunes it
                    for why in self.zo_bad:
                        c.bad(why, n_rc)
                    n_ok = n_rc * (self.zo_size - len(self.zo_bad))
                    if tp > dpn and "tp" not in self.fix:
                        c.rule("heuristic", "tp wider than a node", n_ok)
                        continue
                    if rule:
                        c.rule(rule[0], rule[1], n_ok)
                        continue
                    for bucket, why in self.zo_rule:
                        c.rule(bucket, why, n_rc)
                    for rc in self.rc_dom:
                        rows.append((mb, code, v, rc, sp) + split[:4])
        if not rows or not n_zo:
            return None
        # ---- every (a-row, zero/offload variant) as one batch of plans, a-row major ----
        a = np.array(rows, dtype=np.int64)[np.repeat(np.arange(len(rows)), n_zo)]
        zo = np.tile(np.array(self.zo_main, dtype=np.int64), (len(rows), 1))
        batch = PlanBatch.columns(dp=dp, tp=tp, pp=pp, cp=cp, ep=ep, mb=a[:, 0], schedule=a[:, 1], vpp=a[:, 2],
                                  recompute=a[:, 3], sp=a[:, 4], zero=zo[:, 0], fsdp=zo[:, 1], offload=zo[:, 2],
                                  first=a[:, 5], last=a[:, 6], pp_embed=a[:, 7], pp_loss=a[:, 8])
        # ---- memory first: the engine's memory model on every candidate ----
        mem = memory_parts(job, batch)
        peak = mem.max_peak_bytes
        fits = peak <= self.hbm
        batch, peak, peak_stage = self._fewest_recomputed(batch, mem, fits, n_zo)
        n_fit = int(fits.sum())
        c.memory += len(fits) - n_fit
        c.scored += n_fit
        if n_fit < len(fits):
            unfit = np.nonzero(~fits)[0]
            for i in unfit[:max(0, self.keep_unfit - len(self.unfit))]:
                self.unfit.append((batch.plan(int(i)), float(peak[i])))
            i = int(unfit[np.argmin(peak[unfit])])
            if self.min_unfit is None or peak[i] < self.min_unfit[0]:
                self.min_unfit = (float(peak[i]), batch.plan(i))
        if not n_fit:
            return None
        # ---- step time of the plans that fit: the engine's step terms ----
        ok = np.nonzero(fits)[0]
        fit = batch.take(ok)
        step = step_terms(job, self.cluster, fit).step_s
        n = len(ok)
        const = lambda x: np.full(n, x, dtype=np.int64)  # noqa: E731
        col = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
        return {"nodes": const(self.cluster.num_nodes), "dp": const(dp), "tp": const(tp), "pp": const(pp),
                "cp": const(cp), "ep": const(ep), "mb": col(fit.mb), "vpp": col(fit.vpp),
                "sched": col(fit.schedule), "recompute": col(fit.recompute), "sp": col(fit.sp),
                "zero": col(fit.zero), "fsdp": col(fit.fsdp), "offload": col(fit.offload),
                **{k: col(getattr(fit, k)) for k in SPLIT_COLUMNS},
                "recompute_layers": col(fit.recompute_layers),
                "step_s": step, "peak_bytes": peak[ok], "peak_stage": peak_stage[ok]}

    def _fewest_recomputed(self, batch: PlanBatch, mem, fits: np.ndarray, n_zo: int) -> tuple:
        """Full-recompute candidates that fit while the same plan without recompute does not, with
        the fewest layers per model chunk recomputed that still fit (plan recompute_layers, block:
        Megatron-Core --recompute-method block), which is the fastest of them. From N = 1 to a whole
        chunk, every layer per chunk left alone adds `MemoryParts.block_layer_bytes` to its stage's
        peak: N is the least that keeps every stage within HBM. That line is exact where a stage's
        chunks are equal and its layers alike (and no MTP, which block leaves un-recomputed);
        elsewhere the memory model checks N, and a miss keeps every layer recomputed. Returns the
        batch with its recompute_layers column, the peak and the peak stage."""
        peak, stage = mem.max_peak_bytes, mem.peak_stage
        full, none = RECOMPUTE.index("full"), RECOMPUTE.index("none")
        if full not in self.rc_dom or "recompute" in self.fix:  # a fixed recompute is taken as written
            return batch, peak, stage
        cand = fits & (batch.recompute == full)
        # a-rows hold the rc_dom values in order, each n_zo plans
        cand &= ~fits[np.arange(len(batch)) + (self.rc_dom.index(none) - self.rc_dom.index(full)) * n_zo]
        idx = np.nonzero(cand)[0]
        if not len(idx):
            return batch, peak, stage
        sub = batch.take(idx)
        _, pinv, pls = placements(self.model, sub, int(sub.pp[0]))
        info = np.array([_chunk_shape(pl) for pl in pls])[pinv]
        n_max, exact = info[:, 0], (info[:, 1] > 0) & (self.model.mtp_layers == 0)
        per, p_full = mem.block_layer_bytes[idx], mem.peak_bytes[idx]
        need = n_max[:, None] - (self.hbm - p_full) / np.where(per > 0, per, np.nan)
        n = np.maximum(1.0, np.ceil(np.nan_to_num(need, nan=-np.inf).max(axis=1)))
        line = p_full + (n_max - n)[:, None] * per  # each stage's peak at N, on the line
        keep = (n < n_max) & (line.max(axis=1) <= self.hbm * (1 - 1e-9))
        new_peak, new_stage = line.max(axis=1), line.argmax(axis=1)
        check = np.nonzero(keep & ~exact)[0]
        if len(check):  # off the line: the memory model decides
            m = memory_parts(self.job, replace(sub.take(check), recompute_layers=n[check].astype(np.int64)))
            new_peak[check], new_stage[check] = m.max_peak_bytes, m.peak_stage
            keep[check] = m.max_peak_bytes <= self.hbm
        at = idx[keep]
        if not len(at):
            return batch, peak, stage
        layers = np.array(batch.recompute_layers)
        layers[at] = n[keep]
        peak, stage = peak.copy(), stage.copy()
        peak[at], stage[at] = new_peak[keep], new_stage[keep]
        return replace(batch, recompute_layers=layers), peak, stage


@lru_cache(maxsize=4096)
def _chunk_shape_of(chunk_layers: tuple, moe_mix: bool) -> tuple[float, float]:
    return float(max(chunk_layers)), float(min(chunk_layers) == max(chunk_layers) and not moe_mix)


def _chunk_shape(pl) -> tuple[float, float]:
    """(layers of the largest model chunk, 1.0 where every chunk has as many and every stage's
    layers are alike (all dense or all MoE)) of a placement."""
    return _chunk_shape_of(pl.chunk_layers, bool(((pl.n_moe > 0) & (pl.n_moe < pl.n_layers)).any()))


def schedule_domain(num_layers: int, schedule: str, pp: int, vpp_fix=None) -> list[tuple[int, tuple]]:
    """(vpp, pipeline split) pairs searched for a schedule on pp stages: the schedule's
    `vpp_options` with even stages; when pp does not divide the layers, the uneven splits
    Megatron-Core runs (`simulator.training.uneven_candidates`) for each of its
    `uneven_vpp_options`, if there are any (else the even entries, which validity then prunes).
    `vpp_fix`: the vpp values --fix lists."""
    sched = schedules.get(schedule)
    if num_layers % pp and pp > 1:
        vs = vpp_fix if vpp_fix is not None else sched.uneven_vpp_options(num_layers, pp)
        uneven = [(v, split) for v in vs for split in uneven_candidates(num_layers, schedule, pp, v)]
        if uneven:
            return uneven
    vs = vpp_fix if vpp_fix is not None else sched.vpp_options(num_layers, pp)
    return [(v, EVEN) for v in vs]


def space_size(job: TrainingJob, cluster: Cluster, fix: dict | None = None) -> int:
    """Number of plans in the candidate space (before any pruning)."""
    e = _Enumerator(job, cluster, _normalise_fix(fix), with_offload=True)
    return sum(e.sizes(pp)[0] for _, pp, _, _ in e.meshes())


# ---- objectives ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Objective:
    """What to rank by: `throughput` (step time on the whole cluster), `cost` (USD to train
    `tokens`, or per token without it; fewer nodes allowed) or `time-to-train` (fewer nodes
    allowed when a budget binds). `deadline_s` and `budget_usd` filter."""

    name: str = "throughput"
    tokens: float | None = None
    deadline_s: float | None = None
    budget_usd: float | None = None

    def __post_init__(self):
        if self.name not in OBJECTIVES:
            raise InputError(f"objective {self.name!r}; valid: {', '.join(OBJECTIVES)}")
        for k in ("tokens", "deadline_s", "budget_usd"):
            v = getattr(self, k)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise InputError(f"{k}={v!r} must be a positive number")
        if self.name == "time-to-train" and self.tokens is None:
            raise InputError("objective time-to-train needs --tokens (tokens to train on)")
        if self.deadline_s is not None and self.tokens is None:
            raise InputError("--deadline needs --tokens (time to train = tokens ÷ tokens/s)")
        if self.budget_usd is not None and self.tokens is None:
            raise InputError("--budget needs --tokens (cost = price × devices × tokens ÷ tokens/s)")

    @property
    def needs_price(self) -> bool:
        return self.name == "cost" or self.budget_usd is not None

    @property
    def varies_nodes(self) -> bool:
        return self.name == "cost" or (self.name == "time-to-train" and self.budget_usd is not None)


def node_counts(cluster: Cluster, objective: Objective) -> list[int]:
    """Cluster sizes searched: the whole cluster, and for cost-driven objectives also every
    halving of it (fewer devices at a higher MFU can be cheaper)."""
    n = cluster.num_nodes
    out = [n]
    while objective.varies_nodes and n % 2 == 0 and n > 1:
        n //= 2
        out.append(n)
    return out


# ---- the search ------------------------------------------------------------------------------

@dataclass
class SearchResult:
    job: TrainingJob
    cluster: Cluster
    objective: Objective
    table: dict  # every scored candidate: COLUMNS + step_s, peak_bytes, peak_stage, metric
    candidates: int
    pruned: dict
    search_time_s: float
    plans: list = field(default_factory=list)  # ranked: estimate.to_dict() + rank, why, ...
    pareto: list = field(default_factory=list)
    solver: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"plans": self.plans, "candidates": self.candidates, "search_time_s": self.search_time_s,
                "pruned": self.pruned, "solver": self.solver, "objective": _objective_dict(self.objective),
                "pareto": self.pareto, "notes": self.notes}

    def family_ranking(self, keys=("tp", "pp"), where: dict | None = None) -> list[tuple[tuple, float]]:
        """Plan families (candidates sharing `keys`) ordered by their best metric value; the
        rank of a family is its index + 1. `where` keeps only candidates whose plan fields take
        the listed values, e.g. {"cp": [1], "schedule": ["1f1b", "interleaved"]}."""
        t = self.table
        keep = np.isfinite(t["metric"])
        for k, vals in (where or {}).items():
            col = {"schedule": "sched"}.get(k, k)
            if col not in t:
                raise InputError(f"family_ranking: unknown plan field {k!r}; valid: {', '.join(COLUMNS)}")
            codes = [schedules.names().index(v) if k == "schedule" else RECOMPUTE.index(v) if k == "recompute" else int(v)
                     for v in vals]
            keep &= np.isin(t[col], codes)
        best: dict[tuple, float] = {}
        idx = np.nonzero(keep)[0]
        for i in idx[np.argsort(t["metric"][idx], kind="stable")]:
            k = tuple(int(t[c][i]) for c in keys)
            if k not in best:
                best[k] = float(t["metric"][i])
        return sorted(best.items(), key=lambda kv: kv[1])


def _objective_dict(o: Objective) -> dict:
    return {"name": o.name, "tokens": o.tokens, "deadline_s": o.deadline_s, "budget_usd": o.budget_usd}


def search(job: TrainingJob, cluster: Cluster, fix: dict | str | None = None, top: int = 10,
           objective: Objective | None = None, group: str = "mesh", progress=None,
           partition: int = 3, time_limit_s: float = 1.0, gap: float = 0.01,
           verify: int = 0) -> SearchResult:
    """Search every plan of `job` on `cluster` and rank them.

    verify: re-simulate the best `verify` reported plans with the discrete-event engine
    (simulator.des) and re-rank them by its step time (throughput objective); each plan says
    which engine produced its numbers.

    fix: plan keys held fixed (dict or "tp=8,pp=2"). group: "mesh" reports the best plan of each
    mesh shape (nodes, dp, tp, pp, cp, ep); "none" reports every variant. partition: how many of
    the reported plans with pp > 1 (best first) get an uneven layer partition from the ILP
    (`planner.ilp.partition_for_plan`). progress(done, total) is called per mesh shape.
    """
    t0 = time.perf_counter()
    objective = objective or Objective()
    fix = _normalise_fix(fix)
    if not isinstance(top, int) or top < 1:
        raise InputError(f"top={top!r} must be a positive integer")
    if group not in ("mesh", "none"):
        raise InputError(f"group={group!r}; valid: mesh, none")
    cluster.device.peak(job.dtype)  # the device must support the dtype
    if not cluster.device.hbm_bytes:
        raise InputError(f"device {cluster.device.name!r} has no known HBM size; memory cannot be checked")
    price = cluster.device.price_per_hour
    if objective.needs_price and price is None:
        what = "--objective cost" if objective.name == "cost" else "--budget"
        raise InputError(f"{what} needs a device price: device {cluster.device.name!r} has no "
                         f"price_per_hour in the catalog")
    sizes = node_counts(cluster, objective)

    def run(with_offload: bool):
        counts, tables, unfit = _Counts(), [], None
        enums = [_Enumerator(job, cluster if n == cluster.num_nodes else cluster.with_nodes(n), fix, with_offload)
                 for n in sizes]
        per = [sum(1 for _ in e.meshes()) for e in enums]
        for k, e in enumerate(enums):
            cb = (lambda d, _tot, k=k: progress(sum(per[:k]) + d, sum(per))) if progress else None
            tables.append(e.run(cb))
            counts.add(e.counts)
            if e.min_unfit and (unfit is None or e.min_unfit[0] < unfit[0]):
                unfit = e.min_unfit
        return counts, {c: np.concatenate([t[c] for t in tables]) for c in tables[0]}, unfit

    counts, table, unfit = run(with_offload=False)
    notes = []
    if not len(table["step_s"]) and "offload" not in fix:
        counts, table, unfit = run(with_offload=True)
        if len(table["step_s"]):
            notes.append("nothing fits without optimizer offload; offload=on plans searched")
    if not len(table["step_s"]):
        raise InputError(_nothing_fits(counts, unfit, cluster, fix))
    # ---- objective metric and filters ----
    devices = table["nodes"] * cluster.devices_per_node
    tps = job.tokens_per_step / table["step_s"]
    table["tokens_per_s"] = tps
    table["cost_per_step_usd"] = (price * devices * table["step_s"] / 3600.0 if price is not None
                                  else np.full(len(tps), np.nan))
    keep = np.ones(len(tps), dtype=bool)
    if objective.tokens is not None:
        ttt = objective.tokens / tps
        table["time_to_train_s"] = ttt
        if price is not None:
            table["cost_usd"] = price * devices * ttt / 3600.0
        if objective.deadline_s is not None:
            keep &= ttt <= objective.deadline_s
        if objective.budget_usd is not None:
            keep &= table["cost_usd"] <= objective.budget_usd
    if not keep.any():
        raise InputError(_nothing_meets(objective, table))
    if objective.name == "throughput":
        metric = table["step_s"].copy()
    elif objective.name == "cost":
        metric = table["cost_per_step_usd"] / job.tokens_per_step  # USD per token
    else:
        metric = 1.0 / tps
    metric[~keep] = np.inf
    table["metric"] = metric
    result = SearchResult(job, cluster, objective, table, counts.space, counts.to_dict(), 0.0, notes=notes)
    result.pruned["filtered"] = int((~keep).sum())
    _rank(result, top, group, partition, time_limit_s, gap)
    if verify:
        verify_with_des(result, verify)
    result.pareto = pareto_front(table, cluster.device.hbm_bytes)
    result.search_time_s = time.perf_counter() - t0
    return result


def verify_with_des(result: SearchResult, k: int) -> None:
    """Re-simulate the top `k` plans with the DES (same op costs, simulated schedule, flows and
    DP buckets). Their step time, tokens/s and TFLOP/s become the DES's (`engine: "des"`, the
    analytic step kept as `analytic_step_time_s`); with the throughput objective the verified
    plans are re-ranked among themselves."""
    from simulator.des import simulate
    verified = []
    for p in result.plans[:k]:
        plan = TrainingPlan(**p["plan"])
        cluster = result.cluster if p["num_devices"] == result.cluster.num_devices else \
            result.cluster.with_nodes(p["num_devices"] // result.cluster.devices_per_node)
        est, _ = simulate(result.job, plan, cluster)
        d = est.to_dict()
        p["analytic_step_time_s"] = p["step_time_s"]
        p["des_vs_analytic_pct"] = round(100 * (d["step_time_s"] / p["step_time_s"] - 1), 2)
        for key in ("step_time_s", "tokens_per_s", "tflops_per_device", "mfu", "hfu", "breakdown_s", "engine"):
            p[key] = d[key]
        verified.append(p)
    if result.objective.name == "throughput" and verified:
        verified.sort(key=lambda p: p["step_time_s"])
        result.plans[:len(verified)] = verified
        for i, p in enumerate(result.plans):
            p["rank"] = i + 1
    result.notes.append(f"top {len(verified)} plans verified with the discrete-event engine (engine: des); "
                        f"the rest are analytic")


def _nothing_fits(counts: _Counts, unfit, cluster: Cluster, fix: dict) -> str:
    fixed = f" with --fix {_fix_text(fix)}" if fix else ""
    if unfit is None:
        if not counts.space:
            N = cluster.num_devices
            for k in ("tp", "pp", "cp", "dp"):
                if k in fix and all(N % v for v in fix[k]):
                    return (f"no plan to search{fixed}: {k} must divide the cluster's {N} devices "
                            f"(dp·tp·pp·cp = devices)")
            return f"no plan to search{fixed}: dp·tp·pp·cp cannot make the cluster's {N} devices"
        reason, n = max(counts.reasons.items(), key=lambda kv: kv[1]) if counts.reasons else ("rules", 0)
        rest = "" if n == counts.space else " (other rules the rest)"
        return f"no valid plan{fixed}: '{reason}' rules out {n} of {counts.space} candidates{rest}"
    peak, plan = unfit
    dev = cluster.device
    return (f"no plan fits in memory{fixed}: the leanest needs {peak / GIB:.1f} GiB per device "
            f"({plan.to_string()}) but {dev.name} has {dev.hbm_bytes / GIB:.1f} GiB; add nodes or use a "
            f"device with more HBM")


def human_duration(s: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= n:
            return f"{s / n:.3g} {unit}"
    return f"{s:.3g} s"


def _nothing_meets(o: Objective, t: dict) -> str:
    if o.deadline_s is not None and t["time_to_train_s"].min() > o.deadline_s:
        return (f"no plan meets --deadline {human_duration(o.deadline_s)}: the fastest trains {o.tokens:.4g} "
                f"tokens in {human_duration(float(t['time_to_train_s'].min()))}")
    if o.budget_usd is not None and t["cost_usd"].min() > o.budget_usd:
        return (f"no plan meets --budget {o.budget_usd:.4g} USD: the cheapest costs "
                f"{t['cost_usd'].min():.4g} USD for {o.tokens:.4g} tokens")
    return (f"no plan meets both --deadline {human_duration(o.deadline_s)} and --budget {o.budget_usd:.4g} USD "
            f"for {o.tokens:.4g} tokens")


# ---- ranking, explanations -------------------------------------------------------------------

def _group_key(t: dict, i: int, group: str) -> tuple:
    if group == "none":
        return (i,)
    return tuple(int(t[c][i]) for c in ("nodes", "dp", "tp", "pp", "cp", "ep"))


def _rank(result: SearchResult, top: int, group: str, partition: int, time_limit_s: float, gap: float):
    from planner import ilp  # ilp imports nothing from here; kept local to keep import light

    job, t = result.job, result.table
    order = np.argsort(t["metric"], kind="stable")
    chosen, seen = [], set()
    for i in order:
        if not np.isfinite(t["metric"][i]):
            break
        k = _group_key(t, int(i), group)
        if k in seen:
            continue
        seen.add(k)
        chosen.append(int(i))
        if len(chosen) == top:
            break
    clusters: dict[int, Cluster] = {}
    scored = []  # (metric, estimate, candidate row, cluster): estimate() is the same engine on one plan
    for i in chosen:
        row = {c: t[c][i] for c in COLUMNS}
        n = int(row["nodes"])
        cl = clusters.setdefault(n, result.cluster if n == result.cluster.num_nodes
                                 else result.cluster.with_nodes(n))
        est = estimate(job, plan_of(row), cl)
        scored.append((_metric(result, est), est, i, cl))
    solves = []
    best = best_metric = None
    for r, (metric, est, i, cl) in enumerate(scored):
        plan = est.plan
        d = est.to_dict()
        if not est.fits:
            d["notes"] = d["notes"] + ["estimate() says this plan does not fit; the search said it does"]
        d["rank"] = r + 1
        d["plan_short"] = short_plan(plan)
        d["memory_headroom_bytes"] = est.memory["hbm_bytes"] - est.memory["peak_bytes"]
        price = cl.device.price_per_hour
        d["cost_per_step_usd"] = price * est.num_devices * est.step_time_s / 3600 if price is not None else None
        if result.objective.tokens is not None:
            d["time_to_train_s"] = result.objective.tokens / est.tokens_per_s
            d["cost_usd"] = (price * est.num_devices * d["time_to_train_s"] / 3600
                             if price is not None else None)
        # (a partial recompute costs a layer by its place in its chunk: not a per-layer partition)
        if (len(solves) < partition and plan.pp > 1 and plan.pp * plan.vpp <= job.model.num_layers
                and plan.recompute_layers is None):
            part = ilp.partition_for_plan(job, plan, cl, time_limit_s=time_limit_s, gap=gap)
            d["partition"] = part.to_dict()
            solves.append(part)
        d["why"] = explain(est, best, job, cl, r + 1, result.objective.name, metric, best_metric)
        if best is None:
            best, best_metric = est, metric
        result.plans.append(d)
    result.solver = ilp.solver_summary(solves, time_limit_s, gap)


def _metric(result: SearchResult, est) -> float:
    """The objective of one estimate, as the search ranks it (lower is better)."""
    if result.objective.name == "throughput":
        return est.step_time_s
    if result.objective.name == "cost":
        price = result.cluster.device.price_per_hour
        return price * est.num_devices * est.step_time_s / 3600 / result.job.tokens_per_step
    return 1.0 / est.tokens_per_s


def explain(est, best, job: TrainingJob, cluster: Cluster, rank: int, objective: str = "throughput",
            metric: float | None = None, best_metric: float | None = None) -> str:
    """Why a plan ranks where it does: how it compares with #1 (on the objective, and term by
    term of the step-time breakdown), its dominant overhead, its memory headroom and what memory
    keeps it from."""
    b = est.breakdown_s
    step = est.step_time_s
    over = {k: v for k, v in b.items() if k != "compute"}
    dom, dom_s = max(over.items(), key=lambda kv: kv[1])
    parts = [f"compute {100 * b['compute'] / step:.0f}% of the step; largest overhead {dom} "
             f"{100 * dom_s / step:.1f}%"]
    what = {"throughput": "step time", "cost": "cost", "time-to-train": "time to train"}[objective]
    if best is None:
        parts.insert(0, f"best {objective}")
    else:
        rel = (metric / best_metric - 1) if metric and best_metric else (step / best.step_time_s - 1)
        head = f"{100 * rel:+.1f}% {what} vs #1"
        if est.num_devices != best.num_devices:
            head += f" ({est.num_devices} devices vs {best.num_devices}, step {step / best.step_time_s:.2f}×)"
        else:
            deltas = sorted(((est.breakdown_s[k] - best.breakdown_s[k], k) for k in b), reverse=True)
            worse = ", ".join(f"{k} {d * 1e3:+.1f} ms" for d, k in deltas[:2] if d > 0)
            head += f" ({worse})" if worse else ""
        parts.insert(0, head)
    hbm, peak = est.memory["hbm_bytes"], est.memory["peak_bytes"]
    parts.append(f"memory {peak / GIB:.1f} of {hbm / GIB:.1f} GiB (headroom {(hbm - peak) / GIB:.1f} GiB, "
                 f"stage {est.memory['peak_stage']})")
    lim = _limits(est.plan, job, cluster)
    if lim:
        parts.append(lim)
    return "; ".join(parts)


def _fits(plan: TrainingPlan, job: TrainingJob, cluster: Cluster) -> bool:
    return all(stage_memory(job.model, job, plan, st)["peak_bytes"] <= cluster.device.hbm_bytes
               for st in range(plan.pp))


def _limits(plan: TrainingPlan, job: TrainingJob, cluster: Cluster) -> str:
    """What memory forbids next to this plan: a larger micro-batch, less recomputation."""
    from simulator.training import validate_plan, with_plan
    blocked = []
    lighter = {"full": "selective", "selective": "none"}.get(plan.recompute, "none")
    less = (with_plan(plan, recompute=lighter), f"recompute={lighter}")
    if plan.recompute_layers:  # a partial recompute: one layer per chunk fewer
        less = (with_plan(plan, recompute_layers=plan.recompute_layers - 1),
                f"recompute_layers={plan.recompute_layers - 1}")
    for alt, what in ((with_plan(plan, mb=plan.mb * 2), f"mb={plan.mb * 2}"), less):
        if alt == plan:
            continue
        try:
            validate_plan(alt, job, cluster.num_devices, cluster.devices_per_node)
        except InputError:
            continue
        if not _fits(alt, job, cluster):
            blocked.append(what)
    return f"memory-bound: {' or '.join(blocked)} would not fit" if blocked else ""


# ---- Pareto front ----------------------------------------------------------------------------

def pareto_front(t: dict, hbm_bytes: float, limit: int = 200) -> list[dict]:
    """Plans no other plan beats on all of: step time (lower), memory headroom (higher) and cost
    per step (lower; absent without a device price). One plan per distinct point; at most
    `limit`, fastest first."""
    step, head = t["step_s"], hbm_bytes - t["peak_bytes"]
    cost = t["cost_per_step_usd"]
    has_cost = bool(np.isfinite(cost).any())
    ok = np.isfinite(t["metric"])
    idx = np.nonzero(ok)[0]
    idx = idx[np.lexsort((-head[idx], step[idx]))]  # by time, then headroom descending
    cand = []
    # 2-D front per device count (cost ∝ devices × time there), then a 3-D check across counts.
    for n in np.unique(t["nodes"][idx]):
        sub = idx[t["nodes"][idx] == n]
        best_head = -np.inf
        for i in sub:
            if head[i] > best_head:
                best_head = head[i]
                cand.append(int(i))
    front = []
    for i in sorted(cand, key=lambda i: (step[i], -head[i])):
        dominated = False
        for j in front:
            if (step[j] <= step[i] and head[j] >= head[i] and (not has_cost or cost[j] <= cost[i])
                    and (step[j] < step[i] or head[j] > head[i] or (has_cost and cost[j] < cost[i]))):
                dominated = True
                break
        if not dominated:
            front.append(i)
    out = []
    for i in front[:limit]:
        plan = plan_of({c: t[c][i] for c in COLUMNS})
        out.append({"plan_string": short_plan(plan), "num_devices": plan.num_devices,
                    "step_time_s": float(step[i]),
                    "memory_headroom_bytes": float(head[i]),
                    "cost_per_step_usd": float(cost[i]) if has_cost else None})
    return out


def short_plan(plan: TrainingPlan) -> str:
    """A plan string with the keys that matter (parse_plan reads it back to the same plan)."""
    parts = [f"dp={plan.dp}", f"tp={plan.tp}", f"pp={plan.pp}"]
    parts += [f"cp={plan.cp}"] if plan.cp > 1 else []
    parts += [f"ep={plan.ep}"] if plan.ep > 1 else []
    parts += [f"mb={plan.mb}"] + ([f"vpp={plan.vpp}"] if plan.vpp > 1 else [])
    parts += ["fsdp=on"] if plan.fsdp else [f"zero={plan.zero}"]
    parts += [f"recompute={plan.recompute}"]
    parts += [f"recompute_layers={plan.recompute_layers}"] if plan.recompute_layers is not None else []
    parts += [f"recompute_method={plan.recompute_method}"] if plan.recompute_method != "block" else []
    parts += [f"schedule={plan.schedule}"]
    parts += ["sp=on"] if plan.sp else []
    parts += ["offload=on"] if plan.offload else []
    return ",".join(parts + split_keys(plan.split))


# ---- heterogeneous device groups -------------------------------------------------------------

@dataclass
class HeteroResult:
    """Data-parallel replicas over device groups of different types (planner.ilp.hetero_replica_ilp)."""

    step_time_s: float
    tokens_per_s: float
    layout: dict  # tp, pp, cp, dp inside a replica; devices per replica
    replicas: list  # per group: replicas, batch per replica, plan, replica step
    sync_s: float  # cross-replica gradient all-reduce, added to the slowest replica
    solver: dict
    baseline: dict | None  # same devices, every replica the same batch share (homogeneous-looking)
    search_time_s: float = 0.0
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("step_time_s", "tokens_per_s", "layout", "replicas", "sync_s",
                                               "solver", "baseline", "search_time_s", "notes")}


def _batch_options(B: int, extra: list[int]) -> list[int]:
    """Per-replica batch shares tried: every 2^a·3^c up to B, plus `extra`."""
    out = {b for b in extra if 1 <= b <= B}
    a = 1
    while a <= B:
        c = a
        while c <= B:
            out.add(c)
            c *= 3
        a *= 2
    return sorted(out)


def _sync_s(job: TrainingJob, groups: list[Cluster], layout: tuple, replicas: int, replica_nodes: int) -> float:
    """Cross-replica gradient all-reduce: each rank's shard (2 bytes per parameter of its stage
    after the replica's own reduce-scatter over dp·cp) across `replicas` ranks one node apart,
    on the slowest group's inter-node tier (ring, Thakur et al. 2005; hwmodels.collectives)."""
    tp, pp, cp, dp = layout
    if replicas <= 1:
        return 0.0
    dense, expert = stage_params(job.model, placement(job.model, "1f1b", pp, 1), tp, max(1, dp * cp))
    params = dense + expert
    shard = float(params.max()) / (dp * cp)
    slow = min(groups, key=lambda g: g.tiers[-1].bytes_per_s / g.tiers[-1].oversubscription)
    cl = slow.with_nodes(replicas * replica_nodes)
    return collective_s(cl, "all_reduce", replicas, replica_nodes * slow.devices_per_node, 2 * shard)


def plan_heterogeneous(job: TrainingJob, groups: list[Cluster], replica_nodes: int = 1, fix=None,
                       time_limit_s: float = 2.0, gap: float = 0.0) -> HeteroResult:
    """Best synchronous data-parallel plan over device groups of different types.

    Every replica spans `replica_nodes` nodes and uses one layout (tp, pp, cp, dp inside the
    replica) so that gradient shards line up across replicas; each device type gets its own
    micro-batch/recompute/ZeRO/schedule and its own batch share per replica. For each layout the
    replica step time of every (group, batch share) comes from the vectorised search, and
    `planner.ilp.hetero_replica_ilp` picks replica counts and shares that cover the global batch
    with the smallest slowest replica; the cross-replica gradient all-reduce is added on top.
    The baseline treats the devices as if identical: every replica the same share B/R.
    """
    from planner import ilp
    t0 = time.perf_counter()
    if not groups:
        raise InputError("heterogeneous plan: give at least one device group")
    if not isinstance(replica_nodes, int) or replica_nodes < 1:
        raise InputError(f"replica_nodes={replica_nodes!r} must be a positive integer")
    dpn = {g.devices_per_node for g in groups}
    if len(dpn) != 1:
        raise InputError(f"heterogeneous plan: device groups have {sorted(dpn)} devices per node; "
                         f"replicas need the same count in every group")
    names = []
    for i, g in enumerate(groups):
        names.append(g.name if g.name not in names else f"{g.name}#{i}")
        g.device.peak(job.dtype)
    fix = _normalise_fix(fix)
    available = {n: g.num_devices for n, g in zip(names, groups)}
    per_replica = replica_nodes * groups[0].devices_per_node
    r_all = sum(g.num_nodes // replica_nodes for g in groups)
    B = job.global_batch
    base_b = [B // r_all] if r_all and B % r_all == 0 else []
    options: dict[tuple, list] = {}  # layout -> [ReplicaOption]
    for name, g in zip(names, groups):
        if g.num_nodes < replica_nodes:
            continue
        rc = g.with_nodes(replica_nodes)
        for b in _batch_options(B, base_b):
            e = _Enumerator(TrainingJob(**{**job.__dict__, "global_batch": b}), rc, fix, with_offload=False)
            t = e.run()
            if not len(t["step_s"]):
                continue
            order = np.argsort(t["step_s"], kind="stable")
            seen = set()
            for i in order:
                lay = tuple(int(t[c][i]) for c in ("tp", "pp", "cp", "dp"))
                if lay in seen:
                    continue
                seen.add(lay)
                plan = plan_of({c: t[c][i] for c in COLUMNS})
                options.setdefault(lay, []).append(
                    ilp.ReplicaOption(name, per_replica, b, float(t["step_s"][i]), short_plan(plan)))
    if not options:
        most = max(g.num_nodes for g in groups)
        hint = (f"; give each replica more nodes with --replica-nodes {min(2 * replica_nodes, most)} "
                f"(the largest group has {most})" if most > replica_nodes else
                f"; no group has more than {most} node(s): add nodes to a group")
        raise InputError(f"heterogeneous plan: no replica of {replica_nodes} node(s) fits the model on any group{hint}")
    best = None
    runs = []
    baseline = None
    cap = {n: g.num_nodes // replica_nodes for n, g in zip(names, groups)}

    def bound(opts):  # T ≥ B / Σ_g R_g·max_o(b_o/τ_o): no replica outruns its best rate
        rate = {}
        for o in opts:
            rate[o.group] = max(rate.get(o.group, 0.0), o.batch / o.step_s)
        return B / sum(cap[g] * r for g, r in rate.items())
    for lay, opts in sorted(options.items(), key=lambda kv: bound(kv[1])):
        if base_b:  # homogeneous-looking: every replica of every group takes B / R
            at = {o.group: o for o in opts if o.batch == base_b[0]}
            if len(at) == len([g for g in groups if g.num_nodes >= replica_nodes]):
                step = max(o.step_s for o in at.values()) + _sync_s(job, groups, lay, r_all, replica_nodes)
                if baseline is None or step < baseline["step_time_s"]:
                    baseline = {"step_time_s": step, "tokens_per_s": job.tokens_per_step / step,
                                "layout": dict(zip(("tp", "pp", "cp", "dp"), lay)), "replicas": r_all,
                                "batch_per_replica": base_b[0],
                                "plans": {g: o.plan for g, o in at.items()}}
        if best is not None and bound(opts) >= best[0]:
            continue
        sol = ilp.hetero_replica_ilp(opts, available, B, time_limit_s, gap)
        runs.append(sol.solver)
        if sol.compute_step_s is not None:
            R = sum(sol.replicas.values())
            step = sol.compute_step_s + _sync_s(job, groups, lay, R, replica_nodes)
            if best is None or step < best[0]:
                best = (step, lay, sol, opts)
    if best is None:
        stopped = sum(1 for r in runs if not r.feasible and r.status != "Infeasible")
        if stopped:  # not proven infeasible: CBC stopped first
            raise InputError(f"heterogeneous plan: no solution found within the solver time limit of "
                             f"{time_limit_s:g} s ({stopped} of {len(runs)} ILP(s) stopped before any solution); "
                             f"raise --time-limit")
        raise InputError(f"heterogeneous plan: no combination of replicas covers global batch {B} "
                         f"within the groups' devices")
    step, lay, sol, opts = best
    reps = []
    for o, n in sorted(sol.replicas.items(), key=lambda kv: opts[kv[0]].group):
        opt = opts[o]
        reps.append({"group": opt.group, "replicas": n, "devices_per_replica": opt.devices,
                     "batch_per_replica": opt.batch, "plan": opt.plan, "replica_step_s": opt.step_s})
    summary = ilp.solver_summary(runs, time_limit_s, gap)
    return HeteroResult(step_time_s=step, tokens_per_s=job.tokens_per_step / step,
                        layout={"tp": lay[0], "pp": lay[1], "cp": lay[2], "dp": lay[3],
                                "devices_per_replica": per_replica},
                        replicas=reps, sync_s=step - sol.compute_step_s, solver=summary, baseline=baseline,
                        search_time_s=time.perf_counter() - t0)
