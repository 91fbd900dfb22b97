"""Training jobs and parallelism plans: `TrainingJob`, `TrainingPlan`, plan strings, validation.

A plan string is comma-separated `key=value` (docs/design.md §4 "Contracts"), e.g.
`tp=8,pp=8,mb=1,schedule=interleaved,vpp=2,recompute=selective,sp=on`. Omitted keys take the
defaults of `TrainingPlan`; `dp` is derived from the device count when omitted.

Uneven pipeline stages take Megatron-Core's options as plan keys (`pipeline_split`): `first=N`,
`last=M` (transformer layers on the first/last pipeline stage), `pp_embed=on` / `pp_loss=on`
(the embedding / the loss counted as a layer in the split), or `layout=...` (an explicit layout
string, e.g. `layout=Et*3|(tt|)*29|ttL`).
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache

import numpy as np

from hwmodels.errors import InputError
from hwmodels.kernels import ATTENTION_KERNELS
from simulator import schedules
from simulator.models import ModelSpec

RECOMPUTE = ("none", "selective", "full")
# Which layers full recompute checkpoints when `recompute_layers` is set (Megatron-Core
# --recompute-method, megatron/core/transformer/transformer_config.py `recompute_method`)
RECOMPUTE_METHODS = ("block", "uniform")
SELECTIVE_POLICIES = ("attention", "op")
ZERO3_UNITS = ("layer", "param")  # TrainingJob.zero3_unit
LORA_TARGETS = ("qkv", "proj", "fc1", "fc2")  # TrainingJob.lora_targets
DTYPES = ("bf16", "fp16", "fp8", "fp4")
# Upper bound on seq-len and global batch (2^24 tokens per sequence, 2^24 sequences per step):
# beyond any training run, and it keeps token and FLOP counts finite floats.
MAX_JOB_SIZE = 2 ** 24
_INT_KEYS = ("dp", "tp", "pp", "cp", "ep", "etp", "mb", "vpp", "zero", "first", "last", "act_offload",
             "recompute_layers")
_BOOL_KEYS = ("sp", "offload", "fsdp", "pp_embed", "pp_loss")
PLAN_KEYS = ("dp tp pp cp ep etp mb vpp zero recompute schedule sp offload fsdp first last pp_embed pp_loss layout "
             "act_offload recompute_layers recompute_method")
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
    # MoE token all-to-alls of one micro-batch overlapped with another micro-batch's compute
    # (Megatron-Core --overlap-moe-expert-parallel-comm, which pairs a forward with a backward; the
    # DualPipe schedule always does it, DeepSeek-V3 report arXiv 2412.19437 §3.2.1).
    overlap_ep_comm: bool = False
    # Elementwise work as PyTorch eager runs torchtitan's Llama modules (no torch.compile): RMSNorm
    # as five fp32 kernels, rotary through complex views, repeat_kv copies, SiLU and the gate
    # product as separate kernels (pytorch/torchtitan torchtitan/models/norms.py RMSNorm,
    # models/llama/model.py apply_rotary_emb, repeat_kv, FeedForward.forward). Off: the fused
    # kernels of Transformer Engine / Megatron-Core (or torch.compile's Inductor fusion).
    eager_elementwise: bool = False
    # What recompute="selective" recomputes: "attention" = the attention core (Korthikanti et al.
    # 2022 §5, Megatron's --recompute-granularity selective); "op" = torchtitan's op-level
    # selective checkpointing, which saves the outputs of every other matmul and of the flash
    # attention and recomputes the rest of the layer's forward in backward (torchtitan
    # parallelisms/parallelize_llama.py _apply_ac_to_transformer_block, selective_ac_option="op").
    selective_policy: str = "attention"
    # FP8 linears with dynamic tensor-wise scaling as separate memory-bound kernels around every
    # GEMM (torchao Float8Linear, what torchtitan's float8 converter runs): each input and each
    # output gradient is reduced to its amax, then cast, and the backward's weight-gradient GEMM
    # takes transposed FP8 copies. Off: Transformer Engine's casts fused into the neighbouring
    # norm/activation kernels (delayed scaling), not costed.
    fp8_dynamic_casts: bool = False
    # The unit ZeRO-3 gathers and reduce-scatters at once: "layer" (FSDP auto-wrap per transformer
    # block) or "param" (DeepSpeed ZeRO-3 before v0.6: stage3.py fetch_sub_module gathers one
    # sub-module's parameters per call and copies every tensor's shards in a Python loop;
    # partition_parameters.py reduce-scatters one tensor per call).
    zero3_unit: str = "layer"
    # Collectives through PyTorch ≤1.9's list APIs, which copy every rank's slice in a kernel of its
    # own (ProcessGroupNCCL flatten/unflatten; DeepSpeed PR #1188, #1453 removed them with *_base).
    collective_rank_copies: bool = False
    # LoRA fine-tuning (Hu et al. 2021, arXiv 2106.09685 §4.1): every base weight frozen, a rank-r
    # adapter B·A beside each targeted linear. 0: every weight trains. Targets in Megatron-Bridge's
    # names (peft/lora.py LoRA.target_modules, default all four, dim 32): "qkv" (the attention
    # input projections), "proj", "fc1", "fc2".
    lora_rank: int = 0
    lora_targets: tuple = LORA_TARGETS

    def __post_init__(self):
        for k in ("seq_len", "global_batch"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise InputError(f"{k.replace('_', '-')}={v!r} must be a positive integer")
            if v > MAX_JOB_SIZE:
                raise InputError(f"{k.replace('_', '-')}={v} exceeds {MAX_JOB_SIZE:,}, the largest clusterplan accepts")
        if self.attention_kernel not in ATTENTION_KERNELS:
            raise InputError(f"attention kernel {self.attention_kernel!r}; valid: {', '.join(ATTENTION_KERNELS)}")
        if self.selective_policy not in SELECTIVE_POLICIES:
            raise InputError(f"selective policy {self.selective_policy!r}; valid: {', '.join(SELECTIVE_POLICIES)}")
        if not isinstance(self.lora_rank, int) or isinstance(self.lora_rank, bool) or self.lora_rank < 0:
            raise InputError(f"lora rank {self.lora_rank!r} must be an integer >= 0 (0: no LoRA)")
        if not isinstance(self.lora_targets, tuple):
            object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        bad = [t for t in self.lora_targets if t not in LORA_TARGETS]
        if bad or (self.lora_rank and not self.lora_targets):
            raise InputError(f"lora targets {','.join(map(str, self.lora_targets)) or '(none)'}; "
                             f"valid: one or more of {', '.join(LORA_TARGETS)}")
        if self.model.num_linear_layers:  # simulator/linear_attention.py costs the forward only
            raise InputError(f"model {self.model.name!r}: Gated DeltaNet linear-attention layers are "
                             f"modelled for serving only (no training costs for them)")
        if self.lora_rank and self.model.is_hybrid:
            raise InputError(f"model {self.model.name!r}: LoRA on hybrid Mamba-2 models is not modelled; "
                             f"valid: lora rank 0 (every weight trains)")
        if self.zero3_unit not in ZERO3_UNITS:
            raise InputError(f"zero3 unit {self.zero3_unit!r}; valid: {', '.join(ZERO3_UNITS)}")
        if self.dtype not in DTYPES:
            raise InputError(f"dtype={self.dtype!r}; valid: {', '.join(DTYPES)}")

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.global_batch


@dataclass(frozen=True)
class TrainingPlan:
    """How it is parallelised (Megatron-LM vocabulary). Sizes multiply to the device count:
    dp·tp·pp·cp = devices. The MoE layers have their own mesh over the same tp·cp·dp ranks of a
    pipeline stage (Megatron-Core MoE parallel folding, Liu et al. 2025, arXiv 2504.14960):
    etp·ep·edp = tp·cp·dp, with ep splitting the experts and etp each expert's FFN."""

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
    # Uneven pipeline stages (Megatron-Core, megatron/core/transformer/transformer_config.py and
    # transformer_block.py `get_num_layers_to_build`); all unset is the even split.
    first: int = 0  # transformer layers on the first stage (--decoder-first-pipeline-num-layers)
    last: int = 0  # ... on the last stage (--decoder-last-pipeline-num-layers)
    pp_embed: bool = False  # the embedding counted as a layer (--account-for-embedding-in-pipeline-split)
    pp_loss: bool = False  # the output layer + loss counted as a layer (--account-for-loss-in-pipeline-split)
    layout: str = ""  # explicit per-chunk layout (--pipeline-model-parallel-layout), commas removed
    # expert tensor parallelism (--expert-tensor-parallel-size). 1 is what Megatron-Bridge's MoE
    # recipes set; Megatron-Core's own default (megatron/training/arguments.py) is etp = tp.
    etp: int = 1
    # activations of this many transformer layers per stage kept in host memory between their
    # forward and backward (Megatron-Core --cpu-offloading --cpu-offloading-num-layers, Transformer
    # Engine cpu_offload.py: copies on a side stream, each layer's reload ahead of its backward)
    act_offload: int = 0
    # full recompute of part of the layers (Megatron-Core --recompute-granularity full
    # --recompute-method M --recompute-num-layers N; megatron/core/recompute.py checkpointed_forward),
    # counted per model chunk (one TransformerBlock: a virtual pipeline stage). block: the chunk's
    # first N layers run their forward again in backward and keep only their input, the others keep
    # all their activations; uniform: groups of N layers, each keeping only its input, all
    # recomputed. None: every layer recomputed, each keeping its input (uniform with N = 1).
    recompute_layers: int | None = None
    recompute_method: str = "block"

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def split(self) -> tuple:
        """The pipeline split keys as one hashable value (`EVEN` when none is set)."""
        return (self.first, self.last, self.pp_embed, self.pp_loss, self.layout)

    def to_string(self) -> str:
        d = self.to_dict()
        keys = ("dp", "tp", "pp", "cp", "ep") + (("etp",) if self.etp != 1 else ()) + ("mb", "vpp", "zero")
        parts = [f"{k}={d[k]}" for k in keys]
        parts += [f"recompute={self.recompute}", f"schedule={self.schedule}",
                  f"sp={'on' if self.sp else 'off'}", f"offload={'on' if self.offload else 'off'}"]
        if self.fsdp:
            parts.append("fsdp=on")
        if self.act_offload:
            parts.append(f"act_offload={self.act_offload}")
        if self.recompute_layers is not None:
            parts += [f"recompute_layers={self.recompute_layers}", f"recompute_method={self.recompute_method}"]
        return ",".join(parts + split_keys(self.split))

    @property
    def model_parallel(self) -> int:
        return self.tp * self.pp * self.cp

    @property
    def num_devices(self) -> int:
        return self.dp * self.tp * self.pp * self.cp

    @property
    def edp(self) -> int:
        """Expert data parallelism: the ranks that hold the same experts and reduce their
        gradients, tp·cp·dp / (ep·etp) (megatron/core/parallel_state.py expert_data_parallel_size)."""
        return max(1, self.tp * self.cp * self.dp // (self.ep * self.etp))


def plan_commas(item: str) -> str:
    """'tp=8 pp=4' (keys separated by spaces) as 'tp=8,pp=4'."""
    return ",".join(re.sub(r"\s*=\s*", "=", item.strip()).split())


def parse_plan(text: str, num_devices: int | None = None) -> TrainingPlan:
    """Parse `key=value,...`; derive dp from num_devices when it is omitted."""
    if not isinstance(text, str):
        raise InputError(f"plan must be a string like 'tp=8,pp=2', got {text!r}")
    vals: dict = {}
    key = None
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        if "=" not in item and key == "layout":  # commas inside a layout are cosmetic (Megatron-Core)
            vals["layout"] = _layout_text(vals["layout"] + item)
            continue
        if "=" not in item:
            raise InputError(f"plan item {item!r} is not key=value (e.g. 'tp=8,pp=2')")
        if item.count("=") > 1:
            raise InputError(f"plan item {item!r} holds several keys: separate plan keys with commas, "
                             f"e.g. {plan_commas(item)!r}")
        key, val = (s.strip() for s in item.split("=", 1))
        key = key.lower()
        if key != "layout":  # layer symbols are case-sensitive (E, t, L)
            val = val.lower()
        if key in vals:
            raise InputError(f"plan key {key!r} given twice")
        if key == "layout":
            vals[key] = _layout_text(val)
        elif key in _INT_KEYS:
            try:
                n = int(val)
            except ValueError:
                raise InputError(f"plan {key}={val!r} must be an integer") from None
            vals[key] = n
        elif key in _BOOL_KEYS:
            if val not in _ON:
                raise InputError(f"plan {key}={val!r}; valid: on, off")
            vals[key] = _ON[val]
        elif key == "recompute":
            if val not in RECOMPUTE:
                raise InputError(f"plan recompute={val!r}; valid: {', '.join(RECOMPUTE)}")
            vals[key] = val
        elif key == "recompute_method":
            if val not in RECOMPUTE_METHODS:
                raise InputError(f"plan recompute_method={val!r}; valid: {', '.join(RECOMPUTE_METHODS)}")
            vals[key] = val
        elif key == "schedule":
            val = schedules.ALIASES.get(val, val)
            if val not in schedules.SCHEDULES:
                raise InputError(f"plan schedule={val!r}; valid: {', '.join(schedules.names())}")
            vals[key] = val
        else:
            raise InputError(f"unknown plan key {key!r}; valid: {PLAN_KEYS}")
    for k in _INT_KEYS:
        zero_ok = k in ("zero", "act_offload", "recompute_layers")
        if k in vals and (vals[k] < (0 if zero_ok else 1) or (k == "zero" and vals[k] > 3)):
            raise InputError(f"plan {k}={vals[k]} must be "
                             f"{'0..3' if k == 'zero' else '>= 0' if zero_ok else '>= 1'}")
    if "recompute_method" in vals and "recompute_layers" not in vals:
        raise InputError(f"plan recompute_method={vals['recompute_method']} needs recompute_layers=N "
                         f"(layers per model chunk it applies to)")
    check_recompute_keys(vals.get("recompute", "none"), vals.get("recompute_layers"),
                         vals.get("recompute_method", "block"))
    if vals.get("layout"):
        # the layout fixes the virtual stages: its stages are pp·vpp chunks (Megatron-Core
        # pipeline_parallel_layer_layout.py: layout[vpp_rank·pp + pp_rank])
        n, pp = len(expand_layout(vals["layout"])), vals.get("pp", 1)
        if n % pp:
            raise InputError(f"plan layout has {n} stages ('|'-separated), not a multiple of pp={pp}; "
                             f"valid: pp·vpp stages")
        if "vpp" in vals and vals["vpp"] != n // pp:
            raise InputError(f"plan layout has {n} stages = pp·vpp = {pp}·{n // pp}, but vpp={vals['vpp']}")
        if n // pp > 1 and "vpp" not in vals:
            vals["vpp"] = n // pp
    _check_split_keys(vals.get("first", 0), vals.get("last", 0), vals.get("pp_embed", False),
                      vals.get("pp_loss", False), vals.get("layout", ""))
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
    why = expert_mesh_error(m, plan.tp, plan.cp, plan.dp, plan.ep, plan.etp)
    if why:
        raise InputError(why)
    if plan.split == EVEN and not layers_split(m, plan.pp * plan.vpp):
        hint = uneven_candidates(m.num_layers, plan.schedule, plan.pp, plan.vpp)
        hint = (f", or split unevenly, e.g. {','.join(split_keys(hint[0]))} (Megatron-Core uneven pipeline)"
                if hint else "")
        raise InputError(f"plan pp·vpp={plan.pp}·{plan.vpp} must divide the model's "
                         f"{m.num_layers} layers{hint}")
    if plan.first < 0 or plan.last < 0:
        raise InputError(f"plan first={plan.first}, last={plan.last} must be >= 1 when given")
    if plan.split != EVEN:
        chunk_layers(m.num_layers, plan.schedule, plan.pp, plan.vpp, plan.split)  # raises when they do not add up
    if plan.layout:
        # MTP layers sit with the loss in the last stage (Megatron-Bridge's DeepSeek-V3 layouts
        # "...tmL"), where the engine costs them
        chunks = expand_layout(plan.layout)
        mtp = "".join(chunks).count("m")
        if mtp != m.mtp_layers:
            raise InputError(f"plan layout holds {mtp} MTP layers ('m') but the model trains {m.mtp_layers}")
        if mtp and chunks[-1].count("m") != mtp:
            raise InputError("plan layout: MTP layers ('m') are modelled with the loss in the last stage; "
                             "put every 'm' in the last '|'-separated stage")
    if job.global_batch % (plan.dp * plan.mb):
        raise InputError(f"global batch {job.global_batch} must be a multiple of dp·mb = "
                         f"{plan.dp}·{plan.mb}")
    micro_batches = job.global_batch // (plan.dp * plan.mb)
    why = schedules.get(plan.schedule).check(plan.pp, plan.vpp, micro_batches)
    if why:
        raise InputError(why)
    if plan.offload and plan.zero == 0:
        raise InputError("plan offload=on needs zero >= 1 (offload moves the partitioned optimizer)")
    if not 0 <= plan.act_offload < m.num_layers:
        # Megatron-Core TransformerConfig: cpu_offloading_num_layers in [0, num_layers - 1]
        raise InputError(f"plan act_offload={plan.act_offload}; valid: 0..{m.num_layers - 1} "
                         f"(layers whose activations go to host memory)")
    if plan.act_offload and plan.recompute == "full":
        raise InputError("plan act_offload needs recompute none or selective (full recompute keeps "
                         "only each layer's input)")
    check_recompute_keys(plan.recompute, plan.recompute_layers, plan.recompute_method)
    if plan.recompute_layers is not None:
        most = max(chunk_layers(m.num_layers, plan.schedule, plan.pp, plan.vpp, plan.split))
        if plan.recompute_layers > most:
            # Megatron-Core transformer_config.py: recompute_num_layers between 1 and the layers of a
            # pipeline rank's block
            raise InputError(f"plan recompute_layers={plan.recompute_layers}; valid: "
                             f"{1 if plan.recompute_method == 'uniform' else 0}..{most} (layers per model chunk, "
                             f"pp·vpp = {plan.pp}·{plan.vpp} chunks)")
        if plan.recompute_method == "uniform" and m.mtp_layers and plan.recompute_layers != 1:
            # megatron/core/transformer/multi_token_prediction.py: "recompute_num_layers must be 1 for
            # MTP recompute" with the uniform method
            raise InputError(f"plan recompute_layers={plan.recompute_layers} with recompute_method=uniform: "
                             f"{m.name} trains MTP layers, which Megatron-Core recomputes uniformly only "
                             f"with recompute_layers=1")


def every_nth_layers(n_layers: int, freq: int) -> int:
    """Transformer blocks that torchtitan's layer-level selective checkpointing
    (activation_checkpoint.mode = "selective", selective_ac_option = str(freq)) wraps in full
    checkpointing among the `n_layers` blocks a rank builds: a counter over the blocks, from 1,
    wraps block k when k % freq == 0, every block when freq is 0 (pytorch/torchtitan
    torchtitan/parallelisms/parallelize_llama.py `_apply_ac_to_transformer_block` at 3faaa1a0d;
    torchtitan/distributed/activation_checkpoint.py `_apply_layer_sac` until 114151ad4). The plan
    takes the count as recompute_layers (same memory and time; the wrapped blocks sit every freq-th
    rather than first, which only matters where dense and MoE layers mix)."""
    if freq < 0 or n_layers < 0:
        raise InputError(f"selective AC frequency {freq} over {n_layers} blocks; valid: a frequency >= 0 "
                         f"(0: every block)")
    return n_layers if freq == 0 else sum(1 for k in range(1, n_layers + 1) if k % freq == 0)


def check_recompute_keys(recompute: str, layers, method: str) -> None:
    """The recompute keys Megatron-Core accepts together (transformer_config.py __post_init__:
    recompute_num_layers only with --recompute-granularity full; uniform groups of >= 1 layer)."""
    if method not in RECOMPUTE_METHODS:
        raise InputError(f"plan recompute_method={method!r}; valid: {', '.join(RECOMPUTE_METHODS)}")
    if layers is None:
        return
    if recompute != "full":
        raise InputError(f"plan recompute_layers={layers} needs recompute=full (got recompute={recompute}); "
                         f"valid: recompute=full,recompute_layers=N")
    if layers < 0 or (method == "uniform" and layers < 1):
        raise InputError(f"plan recompute_layers={layers} must be "
                         f"{'>= 1 with recompute_method=uniform' if method == 'uniform' else '>= 0'}")


# ---- the rules of validate_plan that whole subtrees of plans share (the planner prunes with them) ----

def tp_splits_model(m: ModelSpec, tp: int) -> bool:
    """tp divides the attention heads and the FFN, and divides or is a multiple of the KV heads."""
    return not (m.num_heads % tp or (tp > m.num_kv_heads and tp % m.num_kv_heads) or m.ffn_hidden_size % tp)


def cp_splits_seq(seq_len: int, cp: int) -> bool:
    """Load-balanced causal context parallelism cuts the sequence into 2·cp equal chunks."""
    return not (seq_len % cp or (cp > 1 and (seq_len // cp) % 2))


def ep_splits_experts(m: ModelSpec, ep: int, dp: int, tp: int = 1, cp: int = 1, etp: int = 1) -> bool:
    """The expert mesh folds into the stage's ranks: ep (and etp) > 1 need a MoE model whose
    experts ep divides (and whose expert FFN etp divides), and ep·etp must divide tp·cp·dp
    (`expert_mesh_error`)."""
    return (ep == 1 and etp == 1) or not expert_mesh_error(m, tp, cp, dp, ep, etp)


def expert_mesh_error(m: ModelSpec, tp: int, cp: int, dp: int, ep: int, etp: int) -> str:
    """Why the MoE layers' mesh etp × ep × edp cannot fold into the tp × cp × dp ranks of a
    pipeline stage, or ''. MoE parallel folding (Liu et al. 2025, arXiv 2504.14960 §3;
    megatron/core/parallel_state.py: world_size must divide by etp·ep·pp, edp = the rest)."""
    if ep == 1 and etp == 1:
        return ""
    if not m.is_moe:
        return f"plan ep={ep}, etp={etp} needs a MoE model; {m.name} has no experts"
    if m.num_experts % ep:
        return f"plan ep={ep} must divide the model's {m.num_experts} experts"
    if m.moe_ffn_hidden_size % etp:
        return f"plan etp={etp} must divide the expert FFN size {m.moe_ffn_hidden_size}"
    ranks = tp * cp * dp
    if ranks % (ep * etp):
        valid = [e for e in range(1, ranks // etp + 1) if not (ranks // etp) % e and not m.num_experts % e] \
            if not ranks % etp else []
        hint = f"valid ep with etp={etp}: {', '.join(map(str, valid))}" if valid else \
            f"etp must divide tp·cp·dp = {ranks}"
        return (f"plan ep·etp = {ep}·{etp} = {ep * etp} must divide tp·cp·dp = {tp}·{cp}·{dp} = {ranks} "
                f"(MoE parallel folding); {hint}")
    return ""


def layers_split(m: ModelSpec, chunks: int) -> bool:
    """The model's layers cut into `chunks` (pp·vpp) equal, non-empty chunks."""
    return chunks <= m.num_layers and m.num_layers % chunks == 0


# ---- uneven pipeline stages (Megatron-Core's split options) ----

EVEN = (0, 0, False, False, "")  # TrainingPlan.split with no uneven key set
LAYOUT_SYMBOLS = {"E": "embedding", "t": "transformer layer", "m": "multi-token-prediction layer", "L": "loss"}
_MAX_LAYOUT = 100_000  # expanded layout symbols: far beyond any model's layers, bounds a typo's cost


def split_keys(split: tuple) -> list[str]:
    """The plan-string items of a pipeline split (none for the even one)."""
    first, last, embed, loss, layout = split
    return ([f"first={first}"] if first else []) + ([f"last={last}"] if last else []) + \
        (["pp_embed=on"] if embed else []) + (["pp_loss=on"] if loss else []) + \
        ([f"layout={layout}"] if layout else [])


def _layout_text(text: str) -> str:
    """A layout value without its cosmetic commas and spaces, checked to expand."""
    text = re.sub(r"[\s,]", "", text)
    expand_layout(text)
    return text


@lru_cache(maxsize=256)
def expand_layout(text: str) -> tuple[str, ...]:
    """Megatron-Core's layout string (docs/user-guide/features/pipeline_parallel_layout.md;
    megatron/core/transformer/pipeline_parallel_layer_layout.py): model chunks separated by '|',
    symbols E (embedding), t (transformer layer), L (loss), 'x*n' repeats a symbol and '(...)*n' a
    group; commas are cosmetic. Returns each chunk's symbols, in model-chunk order."""
    s = re.sub(r"[\s,]", "", text)
    if not s:
        raise InputError("plan layout is empty; valid: e.g. layout=Et*3|t*4|t*3L")
    group, single = re.compile(r"\(([^()]*)\)\*(\d+)"), re.compile(r"([^()|*\d])\*(\d+)")

    def rep(mt):
        n = int(mt.group(2))
        if n < 1 or len(mt.group(1)) * n > _MAX_LAYOUT:
            most = _MAX_LAYOUT // max(1, len(mt.group(1)))
            raise InputError(f"plan layout repeat {mt.group(0)!r}: the count must be 1..{most}")
        return mt.group(1) * n
    while True:  # innermost groups first
        t = group.sub(rep, s)
        if t == s:
            break
        if len(t) > _MAX_LAYOUT:
            raise InputError(f"plan layout expands to more than {_MAX_LAYOUT:,} symbols")
        s = t
    s = single.sub(rep, s)
    if len(s) > _MAX_LAYOUT:
        raise InputError(f"plan layout expands to more than {_MAX_LAYOUT:,} symbols")
    for ch in s:
        if ch not in LAYOUT_SYMBOLS and ch != "|":
            raise InputError(f"plan layout symbol {ch!r} in {text!r}; valid: E (embedding), t (transformer "
                             f"layer), m (MTP layer), L (loss), '|' between stages, x*n and (...)*n repeats")
    return tuple(s.split("|"))


def _check_split_keys(first: int, last: int, embed: bool, loss: bool, layout: str) -> None:
    """The combinations Megatron-Core refuses (transformer_config.py __post_init__)."""
    if layout and (first or last or embed or loss):
        raise InputError("plan layout= cannot be combined with first=, last=, pp_embed or pp_loss "
                         "(Megatron-Core: the layout names every stage)")
    if (first or last) and (embed or loss):
        raise InputError("plan first=/last= cannot be combined with pp_embed/pp_loss (Megatron-Core "
                         "refuses both); give one or the other")


def _round_robin(schedule: str, pp: int, vpp: int) -> bool:
    """Whether model chunk c runs on stage c mod pp (1F1B, interleaving, DualPipe's forward
    direction), so that Megatron's first/last stage is chunk position 0 / pp − 1 of every round."""
    sched = schedules.get(schedule)
    return all(sched.stage_of_chunk(c, pp, vpp) == c % pp for c in range(sched.model_chunks(pp, vpp)))


@lru_cache(maxsize=8192)
def chunk_layers(num_layers: int, schedule: str, pp: int, vpp: int, split: tuple = EVEN) -> tuple[int, ...]:
    """Transformer layers of each model chunk, in model order (chunk c = round c // pp, position
    c mod pp; stage by the schedule's placement). Megatron-Core's rules
    (megatron/core/transformer/transformer_block.py `get_num_layers_to_build`,
    transformer_layer.py `get_transformer_layer_offset`, transformer_config.py checks):

    - even: L / chunks each (the remainder is not placed: `validate_plan` refuses such plans);
    - first=F, last=M: the first (last) stage holds F (M) layers, split evenly over its vpp
      chunks; the rest split evenly over the middle stages and their chunks;
    - pp_embed / pp_loss: the embedding (loss) counts as a layer, L + 1 (+1) split evenly over
      stages and chunks, and the first (last) model chunk builds one transformer layer fewer;
    - layout: the 't' count of each '|'-separated chunk.

    Raises InputError (one line, the bad value and what is valid) when they do not add up."""
    first, last, embed, loss, layout = split
    sched = schedules.get(schedule)
    n = sched.model_chunks(pp, vpp)
    r = n // pp  # rounds of pp chunks (virtual stages per rank)
    if split == EVEN:
        return (num_layers // n,) * n
    _check_split_keys(*split)
    if layout:
        chunks = expand_layout(layout)
        if len(chunks) != n:
            raise InputError(f"plan layout has {len(chunks)} stages but schedule={schedule} with pp={pp}, "
                             f"vpp={vpp} runs {n} model chunks")
        flat = "".join(chunks)
        if flat.count("E") != 1 or "E" not in chunks[0]:
            raise InputError("plan layout must hold the embedding 'E' once, in its first stage")
        if flat.count("L") != 1 or "L" not in chunks[-1]:
            raise InputError("plan layout must hold the loss 'L' once, in its last stage")
        if flat.count("t") != num_layers:
            raise InputError(f"plan layout holds {flat.count('t')} transformer layers ('t') but the model "
                             f"has {num_layers}")
        return tuple(c.count("t") for c in chunks)
    if embed or loss:
        slots = num_layers + embed + loss
        if slots % pp or (slots // pp) % r:
            raise InputError(f"plan pp_embed/pp_loss: {num_layers} layers + {int(embed)} embedding + {int(loss)} "
                             f"loss = {slots} slots must split evenly over pp={pp} stages × {r} chunks")
        k = slots // n
        out = [k] * n
        out[0] -= embed
        out[-1] -= loss
        if min(out) < 0:
            raise InputError(f"plan pp_embed/pp_loss: {slots} slots over {n} chunks leave no layer for the "
                             f"embedding or the loss to replace; use fewer stages")
        return tuple(out)
    if pp < 2:
        raise InputError(f"plan first=/last= need pp >= 2, got pp={pp}")
    if not _round_robin(schedule, pp, vpp):
        raise InputError(f"plan first=/last= name the first/last pipeline stage of a round-robin placement; "
                         f"schedule={schedule} places chunks in a V: use layout= or pp_embed/pp_loss")
    middle_stages = pp - (first > 0) - (last > 0)
    middle = num_layers - first - last
    for key, x in (("first", first), ("last", last)):
        if x % r:
            raise InputError(f"plan {key}={x} must be a multiple of vpp={r} (Megatron-Core splits a stage's "
                             f"layers evenly over its virtual stages)")
    if middle < 0 or bool(middle) != bool(middle_stages):
        raise InputError(f"plan first={first},last={last} leave {middle} of the model's {num_layers} layers "
                         f"for {middle_stages} middle stage(s); they must add up to {num_layers}")
    if middle_stages and (middle % middle_stages or (middle // middle_stages) % r):
        raise InputError(f"plan first={first},last={last} leave {middle} layers, which {middle_stages} middle "
                         f"stages × {r} chunks cannot share evenly (the model has {num_layers} layers)")
    per_middle = middle // middle_stages // r if middle_stages else 0
    out = []
    for c in range(n):
        s = c % pp
        out.append(first // r if s == 0 and first else last // r if s == pp - 1 and last else per_middle)
    return tuple(out)


@lru_cache(maxsize=4096)
def uneven_candidates(num_layers: int, schedule: str, pp: int, vpp: int) -> tuple:
    """Uneven splits (`TrainingPlan.split`) for a pipeline whose chunks do not divide the layers,
    as Megatron-Core runs them: the embedding and/or loss counted as layers, or the middle stages
    holding ⌈L / chunks⌉ layers per chunk with the remainder taken off the first and last stages
    (Llama 3 405B: one layer fewer on each, Dubey et al. 2024 §3.3.2). Distinct placements only."""
    sched = schedules.get(schedule)
    n = sched.model_chunks(pp, vpp)
    if pp < 2 or num_layers % n == 0 or n > num_layers + 2:
        return ()
    r = n // pp
    cands = [(0, 0, e, lo, "") for e, lo in ((True, True), (True, False), (False, True))]
    if _round_robin(schedule, pp, vpp):
        per = math.ceil(num_layers / n) * r  # a middle stage's layers
        rest = num_layers - (pp - 2) * per  # what the first and last stages share
        for f in range(r, per + 1, r):
            m_ = rest - f
            if r <= m_ <= per and m_ % r == 0:
                cands.append((0 if f == per else f, 0 if m_ == per else m_, False, False, ""))
    out, seen = [], set()
    for c in cands:
        try:
            layers = chunk_layers(num_layers, schedule, pp, vpp, c)
        except InputError:
            continue
        if layers not in seen and sum(layers) == num_layers:
            seen.add(layers)
            out.append(c)
    return tuple(out)


def micro_batches(plan: TrainingPlan, job: TrainingJob) -> int:
    return job.global_batch // (plan.dp * plan.mb)


def layer_plan(tp: int, cp: int, ep: int, sp: bool, mb: int, recompute: str, etp: int = 1) -> TrainingPlan:
    """The plan fields a layer's costs and activations read (`simulator.ops.layer_cost`,
    `simulator.memory.layer_activation_bytes`); the others (dp, pp, zero, vpp, schedule, offload)
    take defaults so that their caches hit across plans."""
    return TrainingPlan(tp=tp, cp=cp, ep=ep, sp=sp, mb=mb, recompute=recompute, etp=etp)


def with_plan(plan: TrainingPlan, **kw) -> TrainingPlan:
    return replace(plan, **kw)


_LAYOUTS: list[str] = [""]  # layout strings seen, by code: PlanBatch columns hold integers
_LAYOUT_CODES: dict[str, int] = {"": 0}


def layout_code(layout: str) -> int:
    """A layout string's integer code for PlanBatch (interned; 0 is no layout)."""
    code = _LAYOUT_CODES.get(layout)
    if code is None:
        code = _LAYOUT_CODES[layout] = len(_LAYOUTS)
        _LAYOUTS.append(layout)
    return code


def layout_of(code: int) -> str:
    return _LAYOUTS[code]


@dataclass
class PlanBatch:
    """n training plans as parallel numpy arrays: what the analytic engine evaluates at once (a
    single plan is a batch of one). `recompute` and `schedule` hold indices into RECOMPUTE and
    `simulator.schedules.names()`, `recompute_method` into RECOMPUTE_METHODS; `recompute_layers`
    is -1 where the plan leaves it unset (every layer)."""

    dp: np.ndarray
    tp: np.ndarray
    pp: np.ndarray
    cp: np.ndarray
    ep: np.ndarray
    etp: np.ndarray
    mb: np.ndarray
    vpp: np.ndarray
    zero: np.ndarray
    recompute: np.ndarray
    schedule: np.ndarray
    sp: np.ndarray
    offload: np.ndarray
    fsdp: np.ndarray
    first: np.ndarray
    last: np.ndarray
    pp_embed: np.ndarray
    pp_loss: np.ndarray
    layout: np.ndarray  # index into `layout_of` (0: none)
    act_offload: np.ndarray
    recompute_layers: np.ndarray  # -1: unset
    recompute_method: np.ndarray

    @classmethod
    def of(cls, plans) -> "PlanBatch":
        names = schedules.names()
        cols = {f.name: [getattr(p, f.name) for p in plans] for f in fields(cls)}
        cols["recompute"] = [RECOMPUTE.index(r) for r in cols["recompute"]]
        cols["schedule"] = [names.index(s) for s in cols["schedule"]]
        cols["layout"] = [layout_code(x) for x in cols["layout"]]
        cols["recompute_layers"] = [-1 if n is None else n for n in cols["recompute_layers"]]
        cols["recompute_method"] = [RECOMPUTE_METHODS.index(x) for x in cols["recompute_method"]]
        return cls.columns(**cols)

    def split(self, i: int) -> tuple:
        """Plan i's `TrainingPlan.split`."""
        return (int(self.first[i]), int(self.last[i]), bool(self.pp_embed[i]), bool(self.pp_loss[i]),
                layout_of(int(self.layout[i])))

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
            elif f.name == "layout":
                v = 0
            elif f.name == "recompute_layers":
                v = -1
            elif f.name == "recompute_method":
                v = RECOMPUTE_METHODS.index(default.recompute_method)
            else:
                v = getattr(default, f.name)
            kind = bool if f.name in _BOOL_KEYS else np.int64
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
        d["layout"] = layout_of(d["layout"])
        d["recompute_layers"] = None if d["recompute_layers"] < 0 else d["recompute_layers"]
        d["recompute_method"] = RECOMPUTE_METHODS[d["recompute_method"]]
        return TrainingPlan(**d)

    def micro_batches(self, job: TrainingJob) -> np.ndarray:
        return job.global_batch // (self.dp * self.mb)

    def meshes(self):
        """(tp, pp, cp, ep, dp, etp) and the indices of the plans with that mesh shape."""
        keys = np.stack([self.tp, self.pp, self.cp, self.ep, self.dp, self.etp], axis=1)
        if len(self) and (keys == keys[0]).all():
            yield tuple(int(x) for x in keys[0]), np.arange(len(self))
            return
        uniq, inv = np.unique(keys, axis=0, return_inverse=True)
        for k, row in enumerate(uniq):
            yield tuple(int(x) for x in row), np.nonzero(inv.ravel() == k)[0]
