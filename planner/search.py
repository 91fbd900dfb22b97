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

Scoring is exact and vectorised per mesh shape (tp, pp, cp, ep, dp): per-layer costs come from
`simulator.ops.layer_cost` (cached on the parts of a plan that change them: tp, cp, ep, sp, mb,
recompute), per-layer activations from `simulator.memory.layer_activation_bytes`, in-flight
micro-batches from `simulator.memory.inflight_microbatches`, and numpy combines them over stages
and over ZeRO/offload variants with the closed forms of `simulator.analytic` (`step_costs`'
per-stage sums, `estimate`'s bubble and p2p, `dp_exposed_s`' DP/ZeRO tail, the optimizer step).
`tests/test_planner.py` checks that these numbers equal `estimate()`/`stage_memory()` on random
plans; at run time every reported plan and three random candidates are re-scored with
`estimate()` (a note says so if they disagree), and a reported plan's JSON is
`estimate().to_dict()`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from hwmodels.clusters import Cluster
from hwmodels.collectives import collective_s
from hwmodels.errors import InputError
from hwmodels.kernels import kernel_model
from simulator import memory as smem
from simulator.analytic import (ADAM_BYTES_PER_PARAM, DDP_BUCKET_BYTES, HOST_DRAM_BYTES_PER_S,
                                PCIE_BYTES_PER_S, estimate)
from simulator.memory import (CONTEXT_BYTES, FRAGMENTATION, GRAD_BYTES, OPTIMIZER_BYTES, WEIGHT_BYTES,
                              inflight_microbatches, layer_activation_bytes, stage_memory)
from simulator.models import ModelSpec
from simulator.ops import ACT_BYTES, layer_cost
from simulator.training import RECOMPUTE, TrainingJob, TrainingPlan, parse_plan

OBJECTIVES = ("throughput", "cost", "time-to-train")
FIX_KEYS = ("dp", "tp", "pp", "cp", "ep", "mb", "vpp", "zero", "recompute", "schedule", "sp", "offload",
            "fsdp")
# Schedules the vectorised scorer models (bubble and memory as simulator.analytic/memory do);
# the candidate table stores a schedule as its index here.
SCHED = ("1f1b", "interleaved", "gpipe", "zb-h1", "zb-h2")
S_1F1B, S_INTERLEAVED, S_GPIPE, S_ZBH1, S_ZBH2 = range(len(SCHED))
R_FULL = RECOMPUTE.index("full")
GIB = 2**30
# Reported plans whose analytic step time differs from the vectorised score by more than this
# relative amount get a note (float summation order differs; anything larger is a bug).
SCORE_TOLERANCE = 1e-6


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


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


# ---- per-model tables --------------------------------------------------------------------------

@dataclass(frozen=True)
class _Stages:
    """Per pipeline stage (uniform partition, `simulator.memory.stage_layers`)."""

    n_layers: np.ndarray
    n_moe: np.ndarray
    dense_sum: np.ndarray  # Σ non-expert parameters of the stage's layers (whole layer, before TP)
    max_layer: np.ndarray  # largest layer's parameters (ZeRO-3 gather buffer)


class _ModelTables:
    def __init__(self, model: ModelSpec):
        self.model = model
        L = model.num_layers
        params = [model.layer_params(i) for i in range(L)]
        moe = [model.is_moe_layer(i) for i in range(L)]
        all_experts = model.num_experts * model.expert_params() if model.is_moe else 0
        dense = [p - all_experts if e else p for p, e in zip(params, moe)]
        self.params = params
        self.moe_prefix = np.concatenate([[0], np.cumsum(moe)]).astype(np.int64)
        self.dense_prefix = [0]
        for d in dense:
            self.dense_prefix.append(self.dense_prefix[-1] + d)
        self.embedding = model.embedding_params()
        self.head = model.head_params()

    @lru_cache(maxsize=None)
    def stages(self, p: int, v: int) -> _Stages:
        per_chunk = self.model.num_layers // (p * v)
        n_layers = np.full(p, per_chunk * v, dtype=np.float64)
        n_moe = np.zeros(p)
        dense_sum = np.zeros(p)
        max_layer = np.zeros(p)
        for st in range(p):
            dsum, mx, nm = 0, 0, 0
            for j in range(v):
                a = (st + j * p) * per_chunk
                b = a + per_chunk
                nm += int(self.moe_prefix[b] - self.moe_prefix[a])
                dsum += self.dense_prefix[b] - self.dense_prefix[a]
                mx = max(mx, max(self.params[a:b]))
            n_moe[st], dense_sum[st], max_layer[st] = nm, dsum, mx
        return _Stages(n_layers, n_moe, dense_sum, max_layer)


@lru_cache(maxsize=64)
def _tables(model: ModelSpec) -> _ModelTables:
    return _ModelTables(model)


def canonical_layer_plan(tp: int, cp: int, ep: int, sp: bool, mb: int, recompute: str) -> TrainingPlan:
    """The plan fields `simulator.ops.layer_cost` and `layer_activation_bytes` read; the others
    (dp, pp, zero, vpp, schedule, offload) take defaults so the caches hit across plans."""
    return TrainingPlan(tp=tp, cp=cp, ep=ep, sp=sp, mb=mb, recompute=recompute)


# ---- the candidate table ---------------------------------------------------------------------

# Columns of the table of scored candidates (one row per plan that fits).
COLUMNS = ("nodes", "dp", "tp", "pp", "cp", "ep", "mb", "vpp", "sched", "recompute", "sp", "zero",
           "fsdp", "offload")


def plan_of(row: dict) -> TrainingPlan:
    return TrainingPlan(dp=int(row["dp"]), tp=int(row["tp"]), pp=int(row["pp"]), cp=int(row["cp"]),
                        ep=int(row["ep"]), sp=bool(row["sp"]), zero=int(row["zero"]),
                        fsdp=bool(row["fsdp"]), mb=int(row["mb"]), vpp=int(row["vpp"]),
                        recompute=RECOMPUTE[int(row["recompute"])], schedule=SCHED[int(row["sched"])],
                        offload=bool(row["offload"]))


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
        self.tables = _tables(m)
        self.km = kernel_model(cluster.device.name, job.dtype)
        self.hbm = float(cluster.device.hbm_bytes)
        N, L, B = cluster.num_devices, m.num_layers, job.global_batch
        self.N = N
        dom = lambda key, default: list(fix[key]) if key in fix else default  # noqa: E731
        self.tp_dom = dom("tp", divisors(N))
        self.pp_dom = dom("pp", divisors(N))
        self.cp_dom = dom("cp", divisors(N))
        self.ep_dom = dom("ep", divisors(m.num_experts) if m.is_moe else [1])
        self.mb_dom = dom("mb", divisors(B))
        for sch in fix.get("schedule", ()):
            if sch not in SCHED:
                raise InputError(f"--fix schedule={sch} is not modelled by the planner; valid: {', '.join(SCHED)}")
        codes = [SCHED.index(x) for x in fix["schedule"]] if "schedule" in fix else list(range(len(SCHED)))
        self.sched_dom = []
        for c in codes:
            if "vpp" in fix:
                self.sched_dom += [(c, v) for v in fix["vpp"]]
            elif c == S_INTERLEAVED:
                self.sched_dom += [(c, v) for v in divisors(L) if v >= 2]
            else:
                self.sched_dom.append((c, 1))
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
        # layer costs and activations do not read the global batch: one job for every batch size
        # keeps simulator.ops' caches warm across searches that differ only in it
        self.layer_job = TrainingJob(**{**job.__dict__, "global_batch": 1})
        self.counts = _Counts()
        self.min_unfit: tuple[float, TrainingPlan] | None = None
        self._layer_cache: dict = {}
        self._inflight: dict = {}
        self._dp_cache: dict = {}
        self._coll_cache: dict = {}

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

    def sizes(self) -> tuple[int, int, int, int]:
        """Subtree sizes below a mesh, an ep, an mb and a schedule entry."""
        s_sched = len(self.rc_dom) * len(self.sp_dom) * self.zo_size
        s_mb = len(self.sched_dom) * s_sched
        s_ep = len(self.mb_dom) * s_mb
        return len(self.ep_dom) * s_ep, s_ep, s_mb, s_sched

    def run(self, progress=None) -> dict[str, np.ndarray]:
        meshes = list(self.meshes())
        s_mesh, s_ep, s_mb, s_sched = self.sizes()
        m, c = self.model, self.counts
        S, L = self.job.seq_len, m.num_layers
        out: list[dict] = []
        for i, (tp, pp, cp, dp) in enumerate(meshes):
            c.space += s_mesh
            if progress:
                progress(i, len(meshes))
            if m.num_heads % tp or (tp > m.num_kv_heads and tp % m.num_kv_heads) or m.ffn_hidden_size % tp:
                c.bad("tp must divide heads, KV heads (or be a multiple) and ffn", s_mesh)
                continue
            if S % cp or (cp > 1 and (S // cp) % 2):
                c.bad("cp must split seq-len into 2·cp chunks", s_mesh)
                continue
            if L % pp:
                c.bad("pp·vpp must divide layers", s_mesh)
                continue
            for ep in self.ep_dom:
                if ep > 1 and (not m.is_moe or m.num_experts % ep or dp % ep):
                    c.bad("ep must divide experts and dp (MoE only)", s_ep)
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
        EP tp·cp), or ''."""
        for name, op, size, stride in (("tp", "all_reduce", tp, 1), ("cp", "all_gather", cp, tp),
                                       ("ep", "all_to_all", ep, tp * cp)):
            if size > 1:
                try:
                    collective_s(self.cluster, op, size, stride, 1.0)
                except InputError:
                    return f"{name} group must fit the devices ({name}·stride <= devices)"
        return ""

    def _sched_entries(self, pp: int, m: int, s_sched: int) -> list[tuple[int, int, tuple | None]]:
        """Valid (schedule, vpp) entries with the rule that prunes them, if any."""
        L, c, ok = self.model.num_layers, self.counts, []
        for code, v in self.sched_dom:
            if v > 1 and code != S_INTERLEAVED:
                c.bad("vpp > 1 needs schedule=interleaved", s_sched)
            elif code == S_INTERLEAVED and v == 1:
                c.bad("interleaved needs vpp >= 2", s_sched)
            elif L % (pp * v):
                c.bad("pp·vpp must divide layers", s_sched)
            elif v > 1 and pp == 1:
                c.bad("vpp > 1 needs pp > 1", s_sched)
            elif v > 1 and m % pp:
                c.bad("interleaved needs micro-batches % pp == 0", s_sched)
            elif pp == 1 and code in (S_ZBH1, S_ZBH2) and "schedule" not in self.fix:
                ok.append((code, v, ("duplicate", "zb-h1/zb-h2 are 1f1b when pp=1")))
            elif code == S_GPIPE and "schedule" not in self.fix:
                ok.append((code, v, ("dominated", "gpipe: 1f1b's step time, more activations")))
            else:
                ok.append((code, v, None))
        return ok

    def _inflight_row(self, pp, dp, mb, code, v) -> np.ndarray:
        key = (pp, dp, mb, code, v)
        r = self._inflight.get(key)
        if r is None:
            plan = TrainingPlan(dp=dp, pp=pp, mb=mb, vpp=v, schedule=SCHED[code])
            r = np.array([inflight_microbatches(plan, self.job, st) for st in range(pp)], dtype=np.float64)
            self._inflight[key] = r
        return r

    def _layer(self, tp, cp, ep, sp, mb, rc) -> dict:
        """Per-layer costs and activations of one kernel configuration (cached)."""
        key = (tp, cp, ep, sp, mb, rc)
        d = self._layer_cache.get(key)
        if d is not None:
            return d
        job, m = self.layer_job, self.model
        plan = canonical_layer_plan(tp, cp, ep, sp, mb, RECOMPUTE[rc])
        d = {"act_d": layer_activation_bytes(m, job, plan, False),
             "act_m": layer_activation_bytes(m, job, plan, True) if m.is_moe else 0.0}
        if rc == R_FULL:
            none = canonical_layer_plan(tp, cp, ep, sp, mb, "none")
            d["full_d"] = layer_activation_bytes(m, job, none, False)
            d["full_m"] = layer_activation_bytes(m, job, none, True) if m.is_moe else 0.0
        self._layer_cache[key] = d
        return d

    def _times(self, tp, cp, ep, sp, mb, rc, d: dict) -> dict:
        """Per-layer times (added to the `_layer` entry on first use), summed as
        simulator.analytic.step_costs sums them: forward, backward + recompute, weight gradients,
        exposed forward comm and backward + recompute comm per group."""
        if "fwd_d" in d:
            return d
        job, m, km, cl = self.layer_job, self.model, self.km, self.cluster
        plan = canonical_layer_plan(tp, cp, ep, sp, mb, RECOMPUTE[rc])
        for tag, moe in (("d", False), ("m", True)):
            if moe and not m.is_moe:
                for k in ("fwd", "bwd", "wgrad", "fc_tp", "fc_cp", "fc_ep", "bc_tp", "bc_cp", "bc_ep"):
                    d[f"{k}_{tag}"] = 0.0
                continue
            cost = layer_cost(m, job, plan, cl, moe)
            d[f"fwd_{tag}"] = cost.fwd_compute_s
            d[f"bwd_{tag}"] = cost.bwd_compute_s + cost.recompute_s
            d[f"wgrad_{tag}"] = cost.wgrad_s
            for g in ("tp", "cp", "ep"):
                d[f"fc_{g}_{tag}"] = cost.fwd_comm_s.get(g, 0.0)
                d[f"bc_{g}_{tag}"] = cost.bwd_comm_s.get(g, 0.0) + cost.recompute_comm_s.get(g, 0.0)
        T = mb * job.seq_len // cp
        V, h = m.vocab_size, m.hidden_size
        # analytic.step_costs: logits GEMM + fp32 softmax cross-entropy; embedding gather/scatter
        d["head_f"] = km.gemm_s(T, V // tp, h) + km.memory_s(3 * 4 * T * V / tp)
        d["head_w"] = km.gemm_s(V // tp, h, T)
        d["head_b"] = km.gemm_s(T, h, V // tp) + d["head_w"] + km.memory_s(3 * 4 * T * V / tp)
        d["emb_f"] = km.memory_s(2 * T * h * ACT_BYTES)
        d["T"] = T
        return d

    def _mesh(self, tp, pp, cp, ep, dp, s_mb, s_sched) -> dict | None:
        job, m, c, tab = self.job, self.model, self.counts, self.tables
        B, S, dpn = job.global_batch, job.seq_len, self.cluster.devices_per_node
        n_rc, n_zo = len(self.rc_dom), len(self.zo_main)
        # ---- a-rows: (mb, schedule, vpp, recompute, sp) that pass divisibility and rules ----
        rows = []  # (mb, m, code, v, rc, sp)
        for mb in self.mb_dom:
            if B % (dp * mb):
                c.bad("global batch must be a multiple of dp·mb", s_mb)
                continue
            mcount = B // (dp * mb)
            for code, v, rule in self._sched_entries(pp, mcount, s_sched):
                for sp in self.sp_dom:
                    if sp and tp == 1:
                        c.bad("sp needs tp > 1", n_rc * self.zo_size)
                        continue
                    if m.is_moe and tp > 1 and not sp:
                        c.bad("MoE with tp > 1 needs sp", n_rc * self.zo_size)
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
                        rows.append((mb, mcount, code, v, rc, sp))
        if not rows or not n_zo:
            return None
        n_a = len(rows)
        # ---- memory: states per (vpp, zero/offload) + activations per a-row, per stage ----
        t, p = tp, pp
        dp_cp, expert_dp = dp * cp, max(1, dp * cp // ep)
        vs = sorted({r[3] for r in rows})
        vidx = {v: i for i, v in enumerate(vs)}
        st = [tab.stages(p, v) for v in vs]
        n_moe = np.stack([s.n_moe for s in st])  # (n_v, p)
        n_dense = np.stack([s.n_layers - s.n_moe for s in st])
        expert_per_layer = (m.num_experts // ep) * m.expert_params() if m.is_moe else 0
        dense = np.stack([s.dense_sum for s in st]) / t
        dense[:, 0] += tab.embedding / t
        dense[:, -1] += tab.head / t
        if m.tie_embeddings and p > 1:  # memory.stage_memory: last stage's copy of the tied embedding
            dense[:, -1] += m.vocab_size * m.hidden_size / t
        expert = n_moe * expert_per_layer
        nccl = sum(smem._nccl_bytes(n) for n in (tp, cp, dp, ep, pp if pp > 1 else 1))
        fixed = np.empty((len(vs), n_zo, p))
        for j, (z, _, off) in enumerate(self.zo_main):
            sh = lambda x, d, k: x / d if z >= k else x  # noqa: E731  ZeRO §5 partitioning
            states = (WEIGHT_BYTES * (sh(dense, dp_cp, 3) + sh(expert, expert_dp, 3))
                      + GRAD_BYTES * (sh(dense, dp_cp, 2) + sh(expert, expert_dp, 2))
                      + (0.0 if off else OPTIMIZER_BYTES * (sh(dense, dp_cp, 1) + sh(expert, expert_dp, 1))))
            comm = nccl + (2 * WEIGHT_BYTES * np.stack([s.max_layer for s in st]) / t if z == 3 else 0.0)
            fixed[:, j, :] = states + comm + CONTEXT_BYTES
        rarr = np.array(rows, dtype=np.int64)  # mb, m, code, v, rc, sp
        vi = np.array([vidx[r[3]] for r in rows])
        kkeys: dict = {}  # kernel configuration (mb, rc, sp) -> index
        kidx = np.array([kkeys.setdefault((r[0], r[4], r[5]), len(kkeys)) for r in rows])
        lay = [self._layer(tp, cp, ep, sp, mb, rc) for (mb, rc, sp) in kkeys]
        col = lambda name: np.array([d.get(name, 0.0) for d in lay])  # noqa: E731
        ikeys: dict = {}
        iidx = np.array([ikeys.setdefault((r[0], r[2], r[3]), len(ikeys)) for r in rows])
        inflight = np.stack([self._inflight_row(pp, dp, mb, code, v) for (mb, code, v) in ikeys])[iidx]
        is_full = rarr[:, 4] == R_FULL  # full recompute: one layer's whole activations live in its backward
        extra = np.where(is_full[:, None], np.where(n_moe[vi] > 0, col("full_m")[kidx][:, None],
                                                 col("full_d")[kidx][:, None]), 0.0)
        extra[:, -1] += (4 * rarr[:, 0] * S // cp) * m.vocab_size / t  # fp32 logits, one micro-batch
        acts = (n_dense[vi] * col("act_d")[kidx][:, None] + n_moe[vi] * col("act_m")[kidx][:, None]) \
            * inflight + extra
        mem = fixed[vi] + (acts * (1 + FRAGMENTATION))[:, None, :]  # (n_a, n_zo, p)
        peak = mem.max(axis=2)
        fits = peak <= self.hbm
        n_fit = int(fits.sum())
        c.memory += fits.size - n_fit
        c.scored += n_fit
        if self.keep_unfit and len(self.unfit) < self.keep_unfit:
            for a, j in zip(*np.nonzero(~fits)):
                mb, _, code, v, rc, sp = rows[a]
                z, fs, off = self.zo_main[j]
                self.unfit.append((TrainingPlan(dp=dp, tp=tp, pp=pp, cp=cp, ep=ep, sp=sp, zero=z, fsdp=fs,
                                                mb=mb, vpp=v, recompute=RECOMPUTE[rc], schedule=SCHED[code],
                                                offload=off), float(peak[a, j])))
        if n_fit < fits.size:
            a, j = np.unravel_index(np.argmin(np.where(fits, np.inf, peak)), peak.shape)
            if self.min_unfit is None or peak[a, j] < self.min_unfit[0]:
                mb, _, code, v, rc, sp = rows[a]
                z, fs, off = self.zo_main[j]
                self.min_unfit = (float(peak[a, j]), TrainingPlan(
                    dp=dp, tp=tp, pp=pp, cp=cp, ep=ep, sp=sp, zero=z, fsdp=fs, mb=mb, vpp=v,
                    recompute=RECOMPUTE[rc], schedule=SCHED[code], offload=off))
        if not n_fit:
            return None
        # ---- time, only for a-rows with at least one fitting zero/offload variant ----
        live = np.nonzero(fits.any(axis=1))[0]
        klist = list(kkeys)
        for kk in set(kidx[live].tolist()):
            mb, rc, sp = klist[kk]
            self._times(tp, cp, ep, sp, mb, rc, lay[kk])
        skeys: dict = {}  # (kernel configuration, vpp) -> index
        sidx = np.array([skeys.setdefault((int(kidx[a]), int(vi[a])), len(skeys)) for a in live])
        K = np.array([k for k, _ in skeys])
        VI = np.array([v for _, v in skeys])
        ND, NM = n_dense[VI], n_moe[VI]
        per = lambda name: ND * col(f"{name}_d")[K][:, None] + NM * col(f"{name}_m")[K][:, None]  # noqa: E731
        # simulator.analytic.step_costs summed over a stage's chunks: embedding on chunk 0, LM
        # head (its weight gradient included) on the last chunk
        f_c, b_c, w = per("fwd"), per("bwd"), per("wgrad")
        f_c[:, 0] += col("emb_f")[K]
        b_c[:, 0] += col("emb_f")[K]
        f_c[:, -1] += col("head_f")[K]
        b_c[:, -1] += col("head_b")[K]
        w[:, -1] += col("head_w")[K]
        fc = {g: per(f"fc_{g}") for g in ("tp", "cp", "ep")}
        bc = {g: per(f"bc_{g}") for g in ("tp", "cp", "ep")}
        fwd_s = f_c + (fc["tp"] + fc["cp"] + fc["ep"])
        bwd_s = b_c + (bc["tp"] + bc["cp"] + bc["ep"])
        tot = fwd_s + bwd_s
        b = tot.argmax(axis=1)[:, None]  # analytic.estimate: the first slowest stage
        pick = lambda x: np.take_along_axis(x, b, axis=1)[:, 0]  # noqa: E731
        bn = np.stack([pick(f_c + b_c), pick(fc["tp"] + bc["tp"]), pick(fc["cp"] + bc["cp"]),
                       pick(fc["ep"] + bc["ep"]), pick(tot), tot.sum(axis=1) / p,
                       (tot - 2 * w).sum(axis=1), fwd_s.sum(axis=1)], axis=1)[sidx]
        last_bwd = bwd_s[sidx]  # (live, p): backward of one micro-batch, per stage
        # pipeline p2p: one activation ÷ t per micro-batch per boundary (Narayanan §4.1)
        p2p = np.array([collective_s(self.cluster, "send_recv", 2, tp * cp * dp,
                                     float(d["T"] * m.hidden_size * ACT_BYTES / tp)) if p > 1 and "T" in d
                        else 0.0 for d in lay])[kidx[live]]
        mc = rarr[live, 1].astype(np.float64)
        code = rarr[live, 2]
        v = rarr[live, 3].astype(np.float64)
        rcs = rarr[live, 4]
        # pipeline bubble (Narayanan et al. 2021 §2.2; Qi et al. 2023 §3 for ZB-H1/H2)
        if p == 1:
            bubble = np.zeros(len(live))
        else:
            bubble = np.select([code == S_INTERLEAVED, code == S_ZBH1, code == S_ZBH2],
                               [(p - 1) / v * bn[:, 5], (p - 1) * bn[:, 6] / p, (p - 1) * bn[:, 7] / p],
                               (p - 1) * bn[:, 5])
        if p == 1:
            pp_comm = np.zeros(len(live))
        elif self.job.overlap_p2p_comm:  # analytic.estimate: fill and drain chains only
            pp_comm = 2 * (p * v - 1) * p2p * np.ones(len(live))
        else:
            pp_comm = 2 * (mc * v + p - 1) * p2p
        steady_terms = mc * bn[:, 0] + mc * bn[:, 1] + mc * bn[:, 2] + mc * bn[:, 3]
        steady = mc * bn[:, 4]
        # ---- DP/ZeRO exposure and optimizer: the slowest stage's tail (analytic.dp_exposed_s) ----
        step = np.full((len(live), n_zo), np.inf)
        for j, (z, _, off) in enumerate(self.zo_main):
            ok = fits[live, j]
            if not ok.any():
                continue
            dpx = np.zeros(len(live))
            opt = np.zeros(len(live))
            for vv in set(v[ok].astype(int).tolist()):
                sel = ok & (v == vv)
                grad, gather, grad_bytes, n_layers, opt_st = self._dp_terms(tp, pp, cp, ep, dp, z, off, vv)
                if z == 3:  # ZeRO §7.2.1: parameters gathered in forward and backward (+ recompute)
                    total = grad + gather * np.where(rcs[sel] == R_FULL, 3, 2)[:, None] * mc[sel][:, None]
                    ex = (np.maximum(0.0, total - steady[sel][:, None]) + total / np.maximum(1, n_layers)
                          if job.overlap_param_gather else total)
                else:
                    if job.overlap_grad_reduce:  # DDP buckets (Li et al. 2020 §3.2.3)
                        bucket = grad * np.minimum(1.0, DDP_BUCKET_BYTES / np.maximum(1.0, grad_bytes))
                        ge = np.where(grad > 0, np.maximum(grad - last_bwd[sel], bucket), 0.0)
                    else:
                        ge = np.broadcast_to(grad, (int(sel.sum()), p))
                    ex = ge + (0.0 if job.overlap_param_gather and z in (1, 2) else gather)
                tails = ex + opt_st
                ti = tails.argmax(axis=1)[:, None]
                o = opt_st[ti[:, 0]]
                dpx[sel] = np.take_along_axis(tails, ti, axis=1)[:, 0] - o
                opt[sel] = o
            step[ok, j] = (steady_terms + bubble + pp_comm + dpx + opt)[ok]
        # ---- the block of fitting rows ----
        la, lj = np.nonzero(np.isfinite(step))
        aa = live[la]
        zo = np.array(self.zo_main, dtype=np.int64)[lj]
        rows_arr = rarr[aa]
        n = len(la)
        const = lambda x: np.full(n, x, dtype=np.int64)  # noqa: E731
        return {"nodes": const(self.cluster.num_nodes), "dp": const(dp), "tp": const(tp), "pp": const(pp),
                "cp": const(cp), "ep": const(ep), "mb": rows_arr[:, 0], "vpp": rows_arr[:, 3],
                "sched": rows_arr[:, 2], "recompute": rows_arr[:, 4], "sp": rows_arr[:, 5],
                "zero": zo[:, 0], "fsdp": zo[:, 1], "offload": zo[:, 2],
                "step_s": step[la, lj], "peak_bytes": peak[aa, lj],
                "peak_stage": mem[aa, lj].argmax(axis=1)}

    def _coll(self, op: str, n: int, stride: int, nbytes: float) -> float:
        key = (op, n, stride, nbytes)
        r = self._coll_cache.get(key)
        if r is None:
            r = self._coll_cache[key] = collective_s(self.cluster, op, n, stride, nbytes)
        return r

    def _dp_terms(self, tp, pp, cp, ep, dp, z, off, v):
        """Per stage: (gradient reduction s, one parameter gather s, gradient bytes, layers,
        optimizer step s) — simulator.analytic.step_costs' DP/ZeRO and optimizer block."""
        key = (tp, pp, cp, ep, dp, z, off, v)
        if key in self._dp_cache:
            return self._dp_cache[key]
        m, cl, tab = self.model, self.cluster, self.tables
        st = tab.stages(pp, v)
        dense = st.dense_sum / tp
        dense[0] += tab.embedding / tp
        dense[-1] += tab.head / tp
        if m.tie_embeddings and pp > 1:  # the last stage's copy of the tied embedding
            dense[-1] += m.vocab_size * m.hidden_size / tp
        expert = st.n_moe * ((m.num_experts // ep) * m.expert_params() if m.is_moe else 0)
        dp_cp, expert_dp = dp * cp, max(1, dp * cp // ep)

        def coll(params, n):  # ZeRO §3: stages 1-3 reduce-scatter + all-gather, stage 0 all-reduce
            if n <= 1 or params <= 0:
                return 0.0, 0.0
            if z == 0:
                return self._coll("all_reduce", n, tp, params * 2), 0.0
            return (self._coll("reduce_scatter", n, tp, params * 2),
                    self._coll("all_gather", n, tp, params * WEIGHT_BYTES))
        grad, gather, opt = np.zeros(pp), np.zeros(pp), np.zeros(pp)
        for s in range(pp):
            g1, a1 = coll(float(dense[s]), dp_cp)
            g2, a2 = coll(float(expert[s]), expert_dp)
            grad[s], gather[s] = g1 + g2, a1 + a2
            local = float(dense[s] / (dp_cp if z >= 1 else 1) + expert[s] / (expert_dp if z >= 1 else 1))
            if off:  # ZeRO-Offload: grads down, params up over PCIe; CPU Adam on host DRAM
                opt[s] = (local * (2 + WEIGHT_BYTES) / PCIE_BYTES_PER_S + local * ADAM_BYTES_PER_PARAM
                          / (HOST_DRAM_BYTES_PER_S / cl.devices_per_node))
            else:
                opt[s] = self.km.memory_s(local * ADAM_BYTES_PER_PARAM)
        out = self._dp_cache[key] = (grad, gather, (dense + expert) * 2, st.n_layers, opt)
        return out


def space_size(job: TrainingJob, cluster: Cluster, fix: dict | None = None) -> int:
    """Number of plans in the candidate space (before any pruning)."""
    e = _Enumerator(job, cluster, _normalise_fix(fix), with_offload=True)
    return sum(1 for _ in e.meshes()) * e.sizes()[0]


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
            codes = [SCHED.index(v) if k == "schedule" else RECOMPUTE.index(v) if k == "recompute" else int(v)
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
    scored = []  # (metric by estimate(), estimate, candidate row, cluster)
    mismatch = 0.0
    rng = np.random.default_rng(0)
    spot = [int(i) for i in rng.choice(len(t["step_s"]), size=min(3, len(t["step_s"])), replace=False)]
    for i in chosen + [i for i in spot if i not in chosen]:
        row = {c: t[c][i] for c in COLUMNS}
        plan = plan_of(row)
        n = int(row["nodes"])
        cl = clusters.setdefault(n, result.cluster if n == result.cluster.num_nodes
                                 else result.cluster.with_nodes(n))
        est = estimate(job, plan, cl)
        mismatch = max(mismatch, abs(est.step_time_s - t["step_s"][i]) / est.step_time_s)
        if i in chosen:
            scored.append((_metric(result, est), est, i, cl))
    if mismatch > SCORE_TOLERANCE:
        result.notes.append(f"the vectorised scores differ from simulator.analytic.estimate by up to "
                            f"{100 * mismatch:.3g}%: the ranking is approximate (plans shown are re-scored "
                            f"and re-sorted by estimate())")
        scored.sort(key=lambda x: x[0])
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
        if len(solves) < partition and plan.pp > 1:
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
    for alt, what in ((with_plan(plan, mb=plan.mb * 2), f"mb={plan.mb * 2}"),
                      (with_plan(plan, recompute=lighter), f"recompute={lighter}")):
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
    parts += [f"recompute={plan.recompute}", f"schedule={plan.schedule}"]
    parts += ["sp=on"] if plan.sp else []
    parts += ["offload=on"] if plan.offload else []
    return ",".join(parts)


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
    m, tab = job.model, _tables(job.model)
    st = tab.stages(pp, 1)
    params = st.dense_sum / tp
    params[0] += tab.embedding / tp
    params[-1] += tab.head / tp
    params = params + st.n_moe * ((m.num_experts // max(1, dp * cp)) * m.expert_params() if m.is_moe else 0)
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
        raise InputError(f"heterogeneous plan: no replica of {replica_nodes} node(s) fits the model on any group")
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
