"""Training jobs and parallelism plans: `TrainingJob`, `TrainingPlan`, plan strings, validation.

A plan string is comma-separated `key=value` (docs/design.md §4 "Contracts"), e.g.
`tp=8,pp=8,mb=1,schedule=interleaved,vpp=2,recompute=selective,sp=on`. Omitted keys take the
defaults of `TrainingPlan`; `dp` is derived from the device count when omitted.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from hwmodels.errors import InputError
from hwmodels.kernels import ATTENTION_KERNELS
from simulator import schedules
from simulator.models import ModelSpec

RECOMPUTE = ("none", "selective", "full")
DTYPES = ("bf16", "fp16", "fp8", "fp4")
# Upper bound on seq-len and global batch (2^24 tokens per sequence, 2^24 sequences per step):
# beyond any training run, and it keeps token and FLOP counts finite floats.
MAX_JOB_SIZE = 2 ** 24
_INT_KEYS = ("dp", "tp", "pp", "cp", "ep", "mb", "vpp", "zero")
_ON = {"on": True, "true": True, "1": True, "yes": True, "off": False, "false": False, "0": False, "no": False}


@dataclass(frozen=True)
class TrainingJob:
    """What is trained: model, sequence length, global batch (sequences), precision, and the
    software facts of the framework that change kernel costs."""

    model: ModelSpec
    seq_len: int
    global_batch: int
    dtype: str = "bf16"
    # Flash-style fused attention (Dao et al. 2022). Megatron-LM 2021 predates it: its attention
    # materialises the s×s scores (baddbmm + fused scale-mask-softmax + dropout + bmm).
    flash_attention: bool = True
    # Which flash kernel: FlashAttention-2 class ("fa2", what the kernel tables measure), FA1
    # ("fa1") or the Triton port llm-foundry ran in 2023 ("fa-triton"); hwmodels.kernels.
    attention_kernel: str = "fa2"
    # Dropout on attention probabilities and hidden states (Megatron-LM default 0.1): it adds a
    # 1-byte mask per element to memory traffic and to stored activations (Korthikanti §4.1).
    dropout: bool = True
    # Overlap of the DP gradient reduction with backward (PyTorch DDP buckets; Megatron-Core
    # --overlap-grad-reduce). Megatron-LM 2021 reduced gradients after backward.
    overlap_grad_reduce: bool = True
    # Overlap of ZeRO-3/FSDP parameter all-gathers with compute (FSDP prefetch).
    overlap_param_gather: bool = True
    # TP collectives pipelined with their GEMMs (Transformer Engine userbuffers; NeMo and
    # Megatron-Core tp_comm_overlap, which needs sequence parallelism).
    overlap_tp_comm: bool = False
    # Pipeline send/recv overlapped with compute (Megatron-Core --overlap-p2p-communication, with
    # the interleaved schedule); off, a send blocks its stage as in Megatron-LM 2021.
    overlap_p2p_comm: bool = False

    def __post_init__(self):
        for k in ("seq_len", "global_batch"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise InputError(f"{k.replace('_', '-')}={v!r} must be a positive integer")
            if v > MAX_JOB_SIZE:
                raise InputError(f"{k.replace('_', '-')}={v} exceeds {MAX_JOB_SIZE:,}, the largest clusterplan accepts")
        if self.attention_kernel not in ATTENTION_KERNELS:
            raise InputError(f"attention kernel {self.attention_kernel!r}; valid: {', '.join(ATTENTION_KERNELS)}")
        if self.dtype not in DTYPES:
            raise InputError(f"dtype={self.dtype!r}; valid: {', '.join(DTYPES)}")

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.global_batch


@dataclass(frozen=True)
class TrainingPlan:
    """How it is parallelised (Megatron-LM vocabulary). Sizes multiply to the device count:
    dp·tp·pp·cp = devices; ep splits experts inside dp·cp (Megatron-Core expert parallelism)."""

    dp: int = 1
    tp: int = 1
    pp: int = 1
    cp: int = 1
    ep: int = 1
    sp: bool = False  # sequence parallelism with tp (Korthikanti et al. 2022 §4.2.2)
    zero: int = 1  # ZeRO stage 0..3 over dp (Megatron's distributed optimizer = stage 1)
    fsdp: bool = False  # ZeRO-3 with prefetch of the next layer's parameters
    mb: int = 1  # micro-batch size (sequences)
    vpp: int = 1  # virtual pipeline stages per device (interleaved schedule)
    recompute: str = "none"
    schedule: str = "1f1b"
    offload: bool = False  # optimizer states and master weights on the host (ZeRO-Offload)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_string(self) -> str:
        d = self.to_dict()
        parts = [f"{k}={d[k]}" for k in ("dp", "tp", "pp", "cp", "ep", "mb", "vpp", "zero")]
        parts += [f"recompute={self.recompute}", f"schedule={self.schedule}",
                  f"sp={'on' if self.sp else 'off'}", f"offload={'on' if self.offload else 'off'}"]
        if self.fsdp:
            parts.append("fsdp=on")
        return ",".join(parts)

    @property
    def model_parallel(self) -> int:
        return self.tp * self.pp * self.cp

    @property
    def num_devices(self) -> int:
        return self.dp * self.tp * self.pp * self.cp


def plan_commas(item: str) -> str:
    """'tp=8 pp=4' (keys separated by spaces) as 'tp=8,pp=4'."""
    return ",".join(re.sub(r"\s*=\s*", "=", item.strip()).split())


def parse_plan(text: str, num_devices: int | None = None) -> TrainingPlan:
    """Parse `key=value,...`; derive dp from num_devices when it is omitted."""
    if not isinstance(text, str):
        raise InputError(f"plan must be a string like 'tp=8,pp=2', got {text!r}")
    vals: dict = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        if "=" not in item:
            raise InputError(f"plan item {item!r} is not key=value (e.g. 'tp=8,pp=2')")
        if item.count("=") > 1:
            raise InputError(f"plan item {item!r} holds several keys: separate plan keys with commas, "
                             f"e.g. {plan_commas(item)!r}")
        key, val = (s.strip().lower() for s in item.split("=", 1))
        if key in vals:
            raise InputError(f"plan key {key!r} given twice")
        if key in _INT_KEYS:
            try:
                n = int(val)
            except ValueError:
                raise InputError(f"plan {key}={val!r} must be an integer") from None
            vals[key] = n
        elif key in ("sp", "offload", "fsdp"):
            if val not in _ON:
                raise InputError(f"plan {key}={val!r}; valid: on, off")
            vals[key] = _ON[val]
        elif key == "recompute":
            if val not in RECOMPUTE:
                raise InputError(f"plan recompute={val!r}; valid: {', '.join(RECOMPUTE)}")
            vals[key] = val
        elif key == "schedule":
            val = schedules.ALIASES.get(val, val)
            if val not in schedules.SCHEDULES:
                raise InputError(f"plan schedule={val!r}; valid: {', '.join(schedules.names())}")
            vals[key] = val
        else:
            raise InputError(f"unknown plan key {key!r}; valid: dp tp pp cp ep mb vpp zero "
                             f"recompute schedule sp offload fsdp")
    for k in _INT_KEYS:
        if k in vals and (vals[k] < (0 if k == "zero" else 1)):
            raise InputError(f"plan {k}={vals[k]} must be {'0..3' if k == 'zero' else '>= 1'}")
    if vals.get("fsdp"):
        vals.setdefault("zero", 3)
        if vals["zero"] != 3:
            raise InputError(f"plan fsdp=on means zero=3, got zero={vals['zero']}")
    if vals.get("vpp", 1) > 1 and "schedule" not in vals:
        vals["schedule"] = "interleaved"
    vpp = schedules.get(vals.get("schedule", "1f1b")).vpp_default(vals.get("vpp", 1))
    if vpp != 1:
        vals["vpp"] = vpp
    if "dp" not in vals and num_devices is not None:
        mp = vals.get("tp", 1) * vals.get("pp", 1) * vals.get("cp", 1)
        if num_devices % mp:
            raise InputError(f"plan tp·pp·cp={mp} does not divide the cluster's {num_devices} devices")
        vals["dp"] = num_devices // mp
    return TrainingPlan(**vals)


def validate_plan(plan: TrainingPlan, job: TrainingJob, num_devices: int,
                  devices_per_node: int | None = None) -> None:
    """Raise InputError naming the first value that makes the plan impossible."""
    m = job.model
    if plan.num_devices != num_devices:
        raise InputError(f"plan dp·tp·pp·cp = {plan.dp}·{plan.tp}·{plan.pp}·{plan.cp} = "
                         f"{plan.num_devices} but the cluster has {num_devices} devices")
    if plan.zero not in (0, 1, 2, 3):
        raise InputError(f"plan zero={plan.zero}; valid: 0, 1, 2, 3")
    if not tp_splits_model(m, plan.tp):
        if m.num_heads % plan.tp:
            raise InputError(f"plan tp={plan.tp} must divide the model's {m.num_heads} attention heads")
        if plan.tp > m.num_kv_heads and plan.tp % m.num_kv_heads:
            raise InputError(f"plan tp={plan.tp} must divide or be a multiple of the "
                             f"{m.num_kv_heads} KV heads")
        raise InputError(f"plan tp={plan.tp} must divide ffn size {m.ffn_hidden_size}")
    if plan.sp and plan.tp == 1:
        raise InputError("plan sp=on needs tp > 1 (sequence parallelism splits along tp)")
    if not cp_splits_seq(job.seq_len, plan.cp):
        raise InputError(f"plan cp={plan.cp}: seq-len {job.seq_len} must split into 2·cp chunks "
                         f"(load-balanced causal context parallelism)")
    if plan.ep > 1:
        if not m.is_moe:
            raise InputError(f"plan ep={plan.ep} needs a MoE model; {m.name} has no experts")
        if m.num_experts % plan.ep:
            raise InputError(f"plan ep={plan.ep} must divide the model's {m.num_experts} experts")
        if plan.dp % plan.ep:  # experts are placed across DP replicas, stride tp·cp
            raise InputError(f"plan ep={plan.ep} must divide dp={plan.dp}")
    if not layers_split(m, plan.pp * plan.vpp):
        raise InputError(f"plan pp·vpp={plan.pp}·{plan.vpp} must divide the model's "
                         f"{m.num_layers} layers")
    if job.global_batch % (plan.dp * plan.mb):
        raise InputError(f"global batch {job.global_batch} must be a multiple of dp·mb = "
                         f"{plan.dp}·{plan.mb}")
    micro_batches = job.global_batch // (plan.dp * plan.mb)
    why = schedules.get(plan.schedule).check(plan.pp, plan.vpp, micro_batches)
    if why:
        raise InputError(why)
    if plan.offload and plan.zero == 0:
        raise InputError("plan offload=on needs zero >= 1 (offload moves the partitioned optimizer)")


# ---- the rules of validate_plan that whole subtrees of plans share (the planner prunes with them) ----

def tp_splits_model(m: ModelSpec, tp: int) -> bool:
    """tp divides the attention heads and the FFN, and divides or is a multiple of the KV heads."""
    return not (m.num_heads % tp or (tp > m.num_kv_heads and tp % m.num_kv_heads) or m.ffn_hidden_size % tp)


def cp_splits_seq(seq_len: int, cp: int) -> bool:
    """Load-balanced causal context parallelism cuts the sequence into 2·cp equal chunks."""
    return not (seq_len % cp or (cp > 1 and (seq_len // cp) % 2))


def ep_splits_experts(m: ModelSpec, ep: int, dp: int) -> bool:
    """ep > 1 needs a MoE model whose experts and dp it divides."""
    return ep == 1 or (m.is_moe and not m.num_experts % ep and not dp % ep)


def layers_split(m: ModelSpec, chunks: int) -> bool:
    """The model's layers cut into `chunks` (pp·vpp) equal, non-empty chunks."""
    return chunks <= m.num_layers and m.num_layers % chunks == 0


def micro_batches(plan: TrainingPlan, job: TrainingJob) -> int:
    return job.global_batch // (plan.dp * plan.mb)


def layer_plan(tp: int, cp: int, ep: int, sp: bool, mb: int, recompute: str) -> TrainingPlan:
    """The plan fields a layer's costs and activations read (`simulator.ops.layer_cost`,
    `simulator.memory.layer_activation_bytes`); the others (dp, pp, zero, vpp, schedule, offload)
    take defaults so that their caches hit across plans."""
    return TrainingPlan(tp=tp, cp=cp, ep=ep, sp=sp, mb=mb, recompute=recompute)


def with_plan(plan: TrainingPlan, **kw) -> TrainingPlan:
    return replace(plan, **kw)


@dataclass
class PlanBatch:
    """n training plans as parallel numpy arrays: what the analytic engine evaluates at once (a
    single plan is a batch of one). `recompute` and `schedule` hold indices into RECOMPUTE and
    `simulator.schedules.names()`."""

    dp: np.ndarray
    tp: np.ndarray
    pp: np.ndarray
    cp: np.ndarray
    ep: np.ndarray
    mb: np.ndarray
    vpp: np.ndarray
    zero: np.ndarray
    recompute: np.ndarray
    schedule: np.ndarray
    sp: np.ndarray
    offload: np.ndarray
    fsdp: np.ndarray

    @classmethod
    def of(cls, plans) -> "PlanBatch":
        names = schedules.names()
        cols = {f.name: [getattr(p, f.name) for p in plans] for f in fields(cls)}
        cols["recompute"] = [RECOMPUTE.index(r) for r in cols["recompute"]]
        cols["schedule"] = [names.index(s) for s in cols["schedule"]]
        return cls.columns(**cols)

    @classmethod
    def columns(cls, **cols) -> "PlanBatch":
        """From columns (arrays or scalars, broadcast to the longest); absent ones take the
        TrainingPlan defaults."""
        n = max((np.size(v) for v in cols.values()), default=1)
        default = TrainingPlan()
        out = {}
        for f in fields(cls):
            if f.name in cols:
                v = cols[f.name]
            elif f.name == "recompute":
                v = RECOMPUTE.index(default.recompute)
            elif f.name == "schedule":
                v = schedules.names().index(default.schedule)
            else:
                v = getattr(default, f.name)
            kind = bool if f.name in ("sp", "offload", "fsdp") else np.int64
            out[f.name] = np.broadcast_to(np.asarray(v, dtype=kind), (n,))
        return cls(**out)

    def __len__(self) -> int:
        return len(self.dp)

    def take(self, idx) -> "PlanBatch":
        return PlanBatch(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def plan(self, i: int) -> TrainingPlan:
        d = {f.name: getattr(self, f.name)[i].item() for f in fields(self)}
        d["recompute"] = RECOMPUTE[d["recompute"]]
        d["schedule"] = schedules.names()[d["schedule"]]
        return TrainingPlan(**d)

    def micro_batches(self, job: TrainingJob) -> np.ndarray:
        return job.global_batch // (self.dp * self.mb)

    def meshes(self):
        """(tp, pp, cp, ep, dp) and the indices of the plans with that mesh shape."""
        keys = np.stack([self.tp, self.pp, self.cp, self.ep, self.dp], axis=1)
        if len(self) and (keys == keys[0]).all():
            yield tuple(int(x) for x in keys[0]), np.arange(len(self))
            return
        uniq, inv = np.unique(keys, axis=0, return_inverse=True)
        for k, row in enumerate(uniq):
            yield tuple(int(x) for x in row), np.nonzero(inv.ravel() == k)[0]
