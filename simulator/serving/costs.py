"""How long one forward pass of a serving replica takes: `IterationCost.iteration_s(batch)`.

A pass runs every token of the batch (prefill chunks and one token per decode) through the
model as one varlen batch (vLLM v1, TensorRT-LLM in-flight batching). Each layer is the one
transformer-layer description that training costs too (`simulator.ops.transformer_layer`, with
the serving engines' kernels `SERVING_ENGINE`): the linear layers as GEMMs over all T tokens
with Megatron TP-split shapes (Shoeybi et al. 2019 §3), MLA's down- and up-projections, the
memory-bound kernels (fused add+norm, RoPE, activation, KV-cache write), the MoE block and two
TP all-reduces of T·h activations; attention runs per sequence; then the LM head over the rows
that sample a token. Every duration comes from the shared cost layer:
- GEMMs: `KernelModel.gemm_s` (measured GEMM tables, aiconfigurator-core);
- prefill attention: `KernelModel.flash_attention_s` (measured context-attention tables): a
  chunk of q new tokens after c cached ones is the causal q×q block plus the full q×c block;
- decode attention: the measured generation-attention table (`load_decode_attention_table`) at
  the batch's mean KV length, else the KV read at the achievable HBM bandwidth;
- MoE: router, the routed experts as the engine's measured fused-MoE kernel where its table
  holds the expert shape, split and quantisation (`profiles.MoETable`, `fused_moe_s`), else as
  one grouped GEMM over the experts the batch's tokens hit; shared experts; EP all-to-alls
  between attention-DP ranks only (EP inside the TP group holds every token: the TP all-reduce
  combines the experts' outputs);
- communication: `collective_s` (TP all-reduce, EP all-to-all, PP send/recv); TP all-reduces
  small enough for the engine's custom all-reduce kernel (vLLM/SGLang custom_all_reduce,
  TensorRT-LLM one-/two-shot AllReduce, all inside CUDA graphs) take its measured time when
  the profile adapter offers `load_custom_allreduce_table(system, framework)`. The custom
  kernel runs only where the engine enables it (`custom_allreduce_eligible`): TensorRT-LLM
  needs every pair of the TP group NVLink-connected (else NCCL), vLLM and SGLang need full
  NVLink connectivity beyond two GPUs; TensorRT-LLM's TensorRT-engine flow (0.x, the
  `trtllm-bench` of `offline.py`) also falls back to NCCL above its IPC workspace
  (`trt_engine_allreduce_workspace_bytes`).
- FP8 context FMHA: an FP8 TensorRT engine built by `trtllm-bench build` runs its prefill
  attention as the FP8 context FMHA kernel (tensorrt_llm/bench/build/build.py, 0.14:
  `use_fp8_context_fmha = True if quant_algo == QuantAlgo.FP8`, with the FP8 KV cache it forces),
  costed from the measured FP8 context-attention table (`fp8_context_fmha`); every other engine
  runs prefill attention in 16-bit.
Pipeline stages run one after another for a batch (no overlap of consecutive batches across
stages: a pessimistic bound for pp > 1).

Iteration time dominates the simulator's run time, so every part is cached on a geometric
grid of its size argument (16 points per octave) and interpolated linearly in between; decode
attention and prefill attention scale from their grid point by KV length and FLOPs.
"""
from __future__ import annotations

from functools import lru_cache

from hwmodels import profiles
from hwmodels.clusters import Cluster
from hwmodels.collectives import collective_s
from hwmodels.errors import InputError
from hwmodels.kernels import KernelModel, dtype_bytes, kernel_model
from simulator.linear_attention import (RECURRENT_STATE_BYTES, chunk_bytes, chunk_flops, gdn_shape,
                                        recurrent_bytes, recurrent_flops)
from simulator.mamba import mamba_shape, mamba_step_bytes, mamba_step_flops
from simulator.models import ModelSpec
from simulator.ops import (SERVING_ENGINE, LayerPass, chunk_attention_s, kv_cache_elements,
                           kv_heads_per_rank, ssd_op, tile_rate, transformer_layer, window_pairs)
from simulator.precision import ACT_BYTES
from simulator.serving.kv_cache import moe_weight_bytes
from simulator.serving.scheduler import Batch


# The fused-MoE table dtypes (aiconfigurator `moe_dtype`) a compute dtype runs, most usual first:
# per-tensor FP8 (ModelOpt checkpoints) before 128x128 block-scaled FP8 (DeepSeek-V3, Qwen3-FP8);
# NVFP4 before MXFP4 weights with MXFP8 activations (GPT-OSS on Blackwell). A checkpoint's own
# quantisation (`moe_quant`, e.g. fp8_block, w4a16_mxfp4, int4_wo) is tried before these.
MOE_DTYPES = {"bf16": ("bfloat16",), "fp16": ("bfloat16",), "fp8": ("fp8", "fp8_block"),
              "fp4": ("nvfp4", "w4a8_mxfp4_mxfp8")}


def checkpoint_moe_quant(model: ModelSpec, engine: str, device) -> str | None:
    """The fused-MoE kernel dtype a checkpoint's own expert quantisation runs as on `engine`
    (`ModelSpec.expert_quant`), None when the experts share the model's dtype. MXFP4 experts run
    with 16-bit activations (vLLM GptOssMxfp4MoEMethod: Triton on Hopper, FlashInfer mxfp4_bf16
    on Blackwell; TensorRT-LLM's Triton backend on Hopper) except on TensorRT-LLM on Blackwell,
    whose default TRTLLM MoE backend quantises the activations to MXFP8 (TensorRT-LLM
    "Deployment Guide for GPT-OSS", MoE backend support matrix)."""
    if model.expert_quant != "mxfp4":
        return None
    return "w4a8_mxfp4_mxfp8" if engine == "trtllm" and "fp4" in device.peak_flops else "w4a16_mxfp4"


# Scale-up tiers whose every GPU pair is joined by NVLink (through NVSwitch); an NVLink bridge joins
# pairs only, and PCIe joins none.
NVLINK_ALL_PAIRS = ("nvswitch",)
# Tiers without NVLink that vLLM/SGLang still treat as fully connected peers (xGMI / HCCS meshes).
FULLY_CONNECTED_NON_NVLINK = ("infinity-fabric", "hccs")


def custom_allreduce_eligible(cluster: Cluster, tp: int, engine: str) -> bool:
    """Whether the engine runs its own (one-/two-shot) all-reduce kernel on this TP group.
    TensorRT-LLM: only if every pair of the group is NVLink-connected, otherwise NCCL
    (cpp/tensorrt_llm/plugins/ncclPlugin/allreducePlugin.cpp selectImplementation: "isAuto &&
    !mIsNVLINKSupported -> NCCL"; same rule in cpp/tensorrt_llm/thop/allreduceOp.cpp).
    vLLM / SGLang: disabled on more than two GPUs that are not fully connected
    (vllm/distributed/device_communicators/custom_all_reduce.py CustomAllreduce.__init__;
    sglang/srt/distributed/device_communicators/custom_all_reduce.py)."""
    if tp < 2 or tp > cluster.devices_per_node:
        return False
    kind = cluster.tiers[0].kind
    nvlink = kind in NVLINK_ALL_PAIRS or (kind == "nvlink-bridge" and tp == 2)
    if engine == "trtllm":
        return nvlink
    return nvlink or kind in FULLY_CONNECTED_NON_NVLINK or tp == 2


def trt_engine_allreduce_workspace_bytes(tp: int) -> float:
    """Largest message the TensorRT-engine flow's custom all-reduce takes; larger ones go to NCCL
    (cpp/tensorrt_llm/common/customAllReduceUtils.h getMaxRequiredWorkspaceSize, TRT-LLM 0.x:
    16 MB for up to two ranks, 8 MB otherwise; selectImplementation: "messageSize >
    maxWorkspace -> NCCL")."""
    return 16e6 if tp <= 2 else 8e6


def trt_engine_fp8_context_fmha(dtype: str, kv_dtype: str | None) -> bool:
    """Whether `trtllm-bench build` (0.14) builds the engine with FP8 context FMHA: for FP8
    quantisation, which also forces an FP8 KV cache (tensorrt_llm/bench/build/build.py:
    `use_fp8_context_fmha = True if quant_algo == QuantAlgo.FP8 else False`)."""
    return dtype == "fp8" and kv_dtype == "fp8"


def _grid(x: int) -> tuple[int, int]:
    """Neighbouring points of a geometric grid with 16 points per octave (exact below 32)."""
    if x <= 32:
        return x, x
    e = x.bit_length() - 5
    lo = (x >> e) << e
    return lo, lo + (1 << e)


class IterationCost:
    """Forward-pass time of one replica: `model` on `tp`·`pp` devices of `cluster` (TP innermost,
    contiguous ranks), experts over `ep`, GEMMs at `dtype`, KV cache at `kv_dtype`."""

    def __init__(self, model: ModelSpec, cluster: Cluster, tp: int = 1, pp: int = 1, ep: int = 1,
                 dtype: str = "bf16", kv_dtype: str | None = None, engine: str = "vllm",
                 custom_ar_max_bytes: float | None = None, dp: int = 1,
                 fp8_context_fmha: bool = False, moe_quant: str | None = None,
                 moe_load: str = "power_law_1.01"):
        self.model, self.cluster = model, cluster
        # attention data parallelism: dp ranks of tp devices each run attention on their own
        # requests; the MoE runs over all tp·dp devices (experts over ep, each split tp·dp/ep ways)
        if dp < 1:
            raise InputError(f"attention dp={dp} must be >= 1")
        self.dp = dp
        # largest TP all-reduce the custom kernel takes (None: the measured table's own range)
        self.custom_ar_max_bytes = custom_ar_max_bytes
        self.tp, self.pp, self.ep = tp, pp, ep
        self.dtype = dtype
        self.kv_dtype = kv_dtype or ("bf16" if dtype in ("fp8", "fp4") else dtype)
        dev = cluster.device
        dev.peak(dtype)  # the device must support the compute dtype
        self.km: KernelModel = kernel_model(dev.name, dtype)
        self.km16: KernelModel = kernel_model(dev.name, "bf16")
        # prefill attention kernel: 16-bit FMHA, or TensorRT-LLM's FP8 context FMHA where the engine
        # was built with it (Q, K, V and the KV cache in FP8; tensorrt_llm/bench/build/build.py 0.14)
        if fp8_context_fmha and (dtype != "fp8" or self.kv_dtype != "fp8"):
            raise InputError(f"FP8 context FMHA needs FP8 compute and an FP8 KV cache "
                             f"(got dtype={dtype}, kv_dtype={self.kv_dtype})")
        self.fp8_context_fmha = fp8_context_fmha
        self.km_prefill: KernelModel = self.km if fp8_context_fmha else self.km16
        self.layers = model.num_layers
        self.notes: list[str] = list(self.km.notes)
        if model.num_heads % tp and not model.is_mla:
            raise InputError(f"tp={tp} must divide {model.name}'s {model.num_heads} attention heads")
        if model.num_layers < pp:
            raise InputError(f"pp={pp} exceeds {model.name}'s {model.num_layers} layers")
        if model.is_moe and model.num_experts % ep:
            raise InputError(f"ep={ep} must divide {model.name}'s {model.num_experts} experts")
        if (tp * dp) % ep:  # experts spread over the replica's GPUs (vLLM: EP inside TP·DP)
            raise InputError(f"ep={ep} must divide the tp·dp = {tp * dp} devices of the replica")
        self.heads = max(1, model.num_heads // tp)
        self.kv_heads = kv_heads_per_rank(model, tp)
        self.head_dim = model.head_dim
        self._decode_table = None
        src = dev if dev.kernel_profile else None
        if src is None and dev.efficiency_from:
            from hwmodels.devices import get_device
            src = get_device(dev.efficiency_from)
        if src is not None and not model.is_mla:
            self._decode_table = profiles.load_decode_attention_table(src.kernel_profile, self.kv_dtype)
            if self._decode_table is not None and self.head_dim not in self._decode_table.grids:
                self._decode_table = None
        self._custom_ar = None
        loader = getattr(profiles, "load_custom_allreduce_table", None)
        if loader is not None and dev.kernel_profile and custom_allreduce_eligible(cluster, tp, engine):
            self._custom_ar = loader(dev.kernel_profile, engine)
        self._decode_scale = 1.0
        if self._decode_table is not None and src is not dev:
            # KV reads are bandwidth-bound: carry the measured rate over by the ratio of HBM bandwidths
            self._decode_scale = (src.hbm_bytes_per_s or 1) / (dev.hbm_bytes_per_s or 1)
        if self._decode_table is None:
            self.notes.append(f"{dev.name}: no measured decode-attention table for this model; "
                              f"KV read at {self.km.mem_bytes_per_s / 1e12:.2f} TB/s")
        if moe_load not in profiles.MOE_DISTRIBUTIONS:
            raise InputError(f"moe_load {moe_load!r}; valid: {', '.join(profiles.MOE_DISTRIBUTIONS)}")
        if moe_quant is not None:
            moe_weight_bytes(moe_quant)  # InputError for an unknown one
        self.moe_load = moe_load
        # the experts' quantisation: the plan's, else what the checkpoint ships (GPT-OSS: MXFP4)
        self.moe_quant = moe_quant or checkpoint_moe_quant(model, engine, dev)
        self._moe = self._fused_moe_table(src if src is not None else dev, engine, self.moe_quant)
        self._dense: dict = {}
        self._split: dict = {}
        self._head: dict = {}
        self._dec: dict = {}
        self._pre: dict = {}
        # the layer kinds: (hybrid block symbol or "", Gated DeltaNet mixer?, routed experts?) -> layers
        mix: dict = {}
        for i in range(model.num_layers):
            key = (model.layer_kind(i), model.is_linear_layer(i), model.is_moe_layer(i))
            mix[key] = mix.get(key, 0) + 1
        self.layer_mix = tuple((kind, lin, moe, n) for (kind, lin, moe), n in sorted(mix.items()))
        # recurrent mixers, costed per batch (`recurrent_s`)
        self.n_linear = model.num_linear_layers
        self.n_mamba = model.num_state_layers - self.n_linear
        self._gdn = gdn_shape(model, tp) if self.n_linear else None
        self._mamba = mamba_shape(model, tp) if self.n_mamba else None
        self.state_bytes = RECURRENT_STATE_BYTES.get(engine, 2)
        self._tile_rate = tile_rate(self.km16) if model.num_state_layers else 0.0

    # ---- the routed experts: the engine's measured fused-MoE kernel --------------------------------
    def _fused_moe_table(self, src, engine: str, moe_quant: str | None):
        """(table, moe dtype, moe_tp, moe_ep) when the engine's measured fused-MoE table holds this
        model's expert shape at this replica's expert split (`profiles.load_moe_table`), else
        None and the experts are costed as grouped GEMMs (`ops._moe_block`). The engine's own
        framework first, then the others (noted); the checkpoint's MoE quantisation
        (`moe_quant`) first, then the dtype's usual ones (MOE_DTYPES)."""
        m = self.model
        if not m.is_moe or src is None or not src.kernel_profile:
            return None
        moe_ep = self.ep
        moe_tp = max(1, self.tp * self.dp // self.ep)
        wanted = ([moe_quant] if moe_quant else []) + list(MOE_DTYPES.get(self.dtype, ()))
        frameworks = [engine] + [f for f in ("vllm", "sglang", "trtllm") if f != engine]
        for fw in frameworks:
            tab = profiles.load_moe_table(src.kernel_profile, fw)
            if tab is None:
                continue
            for dt in wanted:
                if tab.covers(dt, m.hidden_size, m.moe_ffn_hidden_size, m.experts_per_token,
                              m.num_experts, moe_tp, moe_ep, self.moe_load):
                    if fw != engine:
                        self.notes.append(f"{src.name}: fused-MoE times from {fw}'s table "
                                          f"({engine} has none for this shape)")
                    return tab, dt, moe_tp, moe_ep
        self.notes.append(f"{src.name}: no measured fused-MoE kernel for {m.name} at moe_tp={moe_tp}, "
                          f"ep={moe_ep} ({'/'.join(wanted)}); experts costed as grouped GEMMs")
        return None

    def moe_share_s(self, tokens: float) -> float | None:
        """The measured fused-MoE time of this rank's share of the experts at `tokens` tokens (as
        collected, before device scaling), None without a table.

        A rank's share at moe_tp is a sub-problem of its share at moe_tp / 2^j (half the columns
        of each expert's up/gate projection, half the rows of its down projection, the same
        tokens), so it never needs longer: engines pick the MoE GEMM tactic per shape
        (TensorRT-LLM's MoE plugin profiles its CUTLASS tactics at engine build; the PyTorch flow
        autotunes them). Where the table's point is slower than a larger share's, the larger
        share's time bounds it."""
        if self._moe is None:
            return None
        tab, dt, moe_tp, moe_ep = self._moe
        m = self.model

        def at(share_tp: int) -> float | None:
            return tab.time_s(tokens, dt, m.hidden_size, m.moe_ffn_hidden_size, m.experts_per_token,
                              m.num_experts, share_tp, moe_ep, self.moe_load)
        t = at(moe_tp)
        if t is None:
            return None
        wider = moe_tp // 2
        while wider >= 1 and moe_tp % wider == 0:
            if tab.covers(dt, m.hidden_size, m.moe_ffn_hidden_size, m.experts_per_token, m.num_experts,
                          wider, moe_ep, self.moe_load):
                t = min(t, at(wider))
            wider //= 2
        return t

    def fused_moe_s(self, tokens: float) -> float | None:
        """One MoE layer's routed experts (top-k, permute, both expert GEMMs, activation,
        un-permute) for `tokens` tokens entering the fused-MoE layer of one rank, from the measured
        table; None where none applies (the caller keeps the grouped-GEMM ops)."""
        t = self.moe_share_s(tokens)
        if t is None:
            return None
        _, dt, moe_tp, moe_ep = self._moe
        m = self.model
        # scaled as the GEMM tables are: by the peak ratio for a device that borrows another's
        # tables, then to sustained clocks by its arithmetic intensity (KernelModel.sustained_s):
        # the rank's share of a balanced load's FLOPs over the bytes it moves, the local experts'
        # weights the tokens touch (expected distinct experts of tokens·k uniform picks) and the
        # tokens' activations in and out
        E, k = m.num_experts, m.experts_per_token
        touched = E / moe_ep * (1.0 - (1.0 - 1.0 / E) ** (tokens * k))
        params = m.hidden_size * m.moe_ffn_hidden_size * (3 if m.gated_mlp else 2) / moe_tp  # per expert
        nbytes = touched * params * moe_weight_bytes(dt) + 2 * tokens * m.hidden_size * ACT_BYTES
        flops = 2.0 * tokens * k * params / moe_ep
        return self.km.sustained_s(t * self.km._peak_ratio, flops, nbytes)

    # ---- everything but attention and the LM head -----------------------------------------------
    def _layer_s(self, T: int, moe: bool, linear: bool = False, kind: str = "") -> float:
        """One layer's ops for T tokens, attention core (or a recurrent mixer's scan) aside,
        forward (`transformer_layer`); the routed experts from the measured fused-MoE table where
        it applies (`fused_moe_s`)."""
        lp = LayerPass(tokens=T, tp=self.tp, ep=self.ep, ep_distinct_tokens=False,
                       expert_tp=max(1, self.tp // self.ep), kv_bytes=dtype_bytes(self.kv_dtype),
                       kernels=SERVING_ENGINE)
        ops = transformer_layer(self.model, lp, self.km, self.km16, self._comm_s, moe, "fwd", kind=kind,
                                linear=linear, recurrence=())
        fused = self.fused_moe_s(T) if moe else None
        if fused is None:
            return sum(op.time_s for op in ops)
        return fused + sum(op.time_s for op in ops if not op.name.startswith(self.FUSED_MOE_OPS))

    # ops of the routed experts, which see the tokens of every attention-DP rank (ops.py _moe_block)
    EXPERT_OPS = ("expert_fc1", "expert_fc2", "expert_act", "ep.etp_gather", "ep.etp_scatter")
    # the part of them one fused-MoE kernel call runs (profiles.MoETable)
    FUSED_MOE_OPS = ("expert_fc1", "expert_fc2", "expert_act")

    def _split_at(self, T: int) -> tuple[float, float]:
        """Attention-DP replica, all layers at T tokens per rank: (everything but the routed
        experts, the routed experts). The expert part is later taken at the tokens the experts
        receive, the rest at the busiest rank's tokens."""
        a = b = 0.0
        for kind, linear, moe, n in self.layer_mix:
            etp = max(1, self.tp * self.dp // self.ep)
            lp = LayerPass(tokens=T, tp=self.tp, ep=self.ep, ep_stride=etp, ep_distinct_tokens=True,
                           expert_tp=etp, kv_bytes=dtype_bytes(self.kv_dtype), kernels=SERVING_ENGINE)
            # the fused-MoE rank runs over the tokens of the whole tp·dp group (vLLM's default DP
            # all-gather before FusedMoE; the measured table's num_tokens)
            fused = self.fused_moe_s(T * self.tp * self.dp) if moe else None
            if fused is not None:
                b += n * fused
            for op in transformer_layer(self.model, lp, self.km, self.km16, self._comm_s, moe, "fwd",
                                        kind=kind, linear=linear, recurrence=()):
                if fused is not None and op.name.startswith(self.FUSED_MOE_OPS):
                    continue
                if op.name.startswith(self.EXPERT_OPS):
                    b += n * op.time_s
                else:
                    a += n * op.time_s
        return a, b

    def _split_interp(self, T: int, part: int) -> float:
        if T <= 0:
            return 0.0
        lo, hi = _grid(T)
        c = self._split
        for x in (lo, hi):
            if x not in c:
                c[x] = self._split_at(x)
        a, b = c[lo][part], c[hi][part]
        return a if hi == lo else a + (b - a) * (T - lo) / (hi - lo)

    def dense_dp_s(self, t_max: int, t_sum: int) -> float:
        """Attention-DP replica: everything but attention and the LM head when the busiest rank
        holds t_max tokens and all ranks t_sum. Per-rank work runs at t_max; the routed experts
        see t_sum tokens spread over the tp·dp devices (ceil(t_sum / (tp·dp)) per device in
        `_moe_block`'s distinct-token count, since the tp ranks of one attention group share
        their tokens)."""
        if t_max <= 0:
            return 0.0
        t = self._split_interp(t_max, 0) + self._split_interp(-(-t_sum // (self.tp * self.dp)), 1)
        if self.pp > 1:  # activations cross each stage boundary once
            t += (self.pp - 1) * collective_s(self.cluster, "send_recv", 2, self.tp,
                                              float(t_max * self.model.hidden_size * ACT_BYTES))
        return t

    def _comm_s(self, op: str, group: str, size: int, stride: int, nbytes: float) -> float:
        if group == "tp" and op == "all_reduce":
            return self.tp_allreduce_s(nbytes)
        return collective_s(self.cluster, op, size, stride, nbytes)

    def _dense_at(self, T: int) -> float:
        """Seconds of everything but attention and the LM head for T tokens (all layers)."""
        t = sum(n * self._layer_s(T, moe, linear, kind) for kind, linear, moe, n in self.layer_mix)
        if self.pp > 1:  # activations cross each stage boundary once
            t += (self.pp - 1) * collective_s(self.cluster, "send_recv", 2, self.tp,
                                              float(T * self.model.hidden_size * ACT_BYTES))
        return t

    def tp_allreduce_s(self, nbytes: float) -> float:
        """One TP all-reduce: the engine's custom kernel where measured for this size, else NCCL
        (`collective_s`) — engines switch to NCCL above their custom kernel's size limit."""
        if self._custom_ar is not None and (self.custom_ar_max_bytes is None
                                            or nbytes <= self.custom_ar_max_bytes):
            t = self._custom_ar.time_s(self.tp, nbytes)
            if t is not None:
                return t
        return collective_s(self.cluster, "all_reduce", self.tp, 1, nbytes)

    def dense_s(self, T: int) -> float:
        if T <= 0:
            return 0.0
        if self.dp > 1:  # one rank's batch, the others padded to it
            return self.dense_dp_s(T, T * self.dp)
        lo, hi = _grid(T)
        c = self._dense
        a = c.get(lo)
        if a is None:
            a = c[lo] = self._dense_at(lo)
        if hi == lo:
            return a
        b = c.get(hi)
        if b is None:
            b = c[hi] = self._dense_at(hi)
        return a + (b - a) * (T - lo) / (hi - lo)

    def lm_head_s(self, rows: int) -> float:
        """LM head (vocabulary-parallel over tp, 16-bit) for the rows that sample a token, plus
        the gather of each rank's vocabulary slice of their logits (`logits_gather_s`)."""
        if rows <= 0:
            return 0.0
        lo, hi = _grid(rows)
        c = self._head
        m = self.model
        for x in (lo, hi):
            if x not in c:
                c[x] = self.km16.gemm_s(x, m.vocab_size // self.tp, m.hidden_size) + self.logits_gather_s(x)
        a, b = c[lo], c[hi]
        return a if hi == lo else a + (b - a) * (rows - lo) / (hi - lo)

    def logits_gather_s(self, rows: int) -> float:
        """The column-parallel LM head leaves each TP rank the logits of its vocabulary slice; the
        engines gather the full vocabulary in the model's 16-bit dtype before sampling, rows x
        vocab padded to a multiple of tp x 2 bytes (TensorRT-LLM models/llama/model.py: lm_head =
        ColumnLinear(..., gather_output=True); vLLM layers/logits_processor.py _gather_logits;
        SGLang layers/logits_processor.py tensor_model_parallel_all_gather), costed as an
        all-gather over the TP group (a gather to rank 0, vLLM's on CUDA, brings rank 0 the same
        bytes over its link). No rows, or a single rank, gather nothing (`collective_s` is 0)."""
        vocab_padded = -(-self.model.vocab_size // self.tp) * self.tp
        return collective_s(self.cluster, "all_gather", self.tp, 1,
                            float(rows * vocab_padded * ACT_BYTES))

    # ---- attention -----------------------------------------------------------------------------
    def decode_attention_s(self, n: int, kv_tokens: int) -> float:
        """All layers' decode attention for n sequences attending to kv_tokens positions in
        total, at their mean length. A local-attention layer of window w reads only the last
        min(length, w) cached tokens (flash-attention / FlashInfer window_size, TensorRT-LLM
        cyclic KV: the kernel's KV range starts at length − w), full layers the whole length."""
        if n <= 0:
            return 0.0
        mean = max(1, kv_tokens // n)
        nlo, nhi = _grid(n)
        t = 0.0
        for w, layers in _window_counts(self.model):
            kv = min(mean, w) if w else mean
            klo, _ = _grid(kv)
            a = self._dec_at(nlo, klo)
            if nhi != nlo:
                b = self._dec_at(nhi, klo)
                a += (b - a) * (n - nlo) / (nhi - nlo)
            t += layers * a * kv / klo  # KV reads scale with the length
        return t

    def _dec_at(self, n: int, kv: int) -> float:
        """One layer's decode attention for n sequences of kv cached tokens (grid point)."""
        key = (n, kv)
        t = self._dec.get(key)
        if t is None:
            t = None
            if self._decode_table is not None:
                t = self._decode_table.time_s(n, max(kv, 2), self.heads, self.kv_heads, self.head_dim)
                if t is not None:
                    t *= self._decode_scale
            if t is None:
                # memory-bound: read the cached K and V (MLA with weight absorption, as engines
                # decode: the latent, attended as one shared KV head — DeepSeek-V2 §2.1.2)
                per_tok = kv_cache_elements(self.model, self.kv_heads)
                t = self.km.memory_s(n * kv * per_tok * dtype_bytes(self.kv_dtype))
            self._dec[key] = t
        return t

    def prefill_attention_s(self, count: int, q: int, ctx: int) -> float:
        """All layers' attention for `count` chunks of q new tokens after ctx cached ones; local-
        attention layers over their window only (`chunk_attention_s`, `window_pairs`)."""
        qlo, _ = _grid(q)
        clo, _ = _grid(ctx) if ctx > 0 else (0, 0)
        key = (count, qlo, clo)
        parts = self._pre.get(key)
        if parts is None:
            parts = self._pre[key] = tuple(
                (w, layers * chunk_attention_s(self.km_prefill, self.model, self.heads, self.kv_heads,
                                               count, qlo, clo, w))
                for w, layers in _window_counts(self.model))
        # scale from the grid point by the FLOPs: q²/2 causal + q·ctx, within the window
        return sum(t * window_pairs(q, ctx, w) / window_pairs(qlo, clo, w) for w, t in parts)

    # ---- a whole pass --------------------------------------------------------------------------
    def iteration_s(self, batch: Batch) -> float:
        t = self.dense_s(batch.tokens) + self.lm_head_s(batch.samples)
        return self._plus_attention(t, batch)

    def iteration_dp_s(self, batches: list) -> float:
        """One synchronised pass of an attention-DP replica, one batch per rank (empty for an idle
        rank, which still joins the collectives). Every rank's linear layers, MoE exchange and LM
        head run at the largest rank's tokens and rows: engines pad the ranks to the largest
        before the MoE (vllm/v1/worker/gpu_model_runner.py get_dp_padding; sglang
        python/sglang/srt/layers/dp_attention.py DpPaddingMode.MAX_LEN; TensorRT-LLM
        tensorrt_llm/_torch/pyexecutor/cuda_graph_runner.py pads attention-DP ranks to one graph
        batch) in decode-only passes. The ranks meet at every layer's MoE, so the attention adds
        the slowest rank's."""
        T = max((b.tokens for b in batches), default=0)
        rows = max((b.samples for b in batches), default=0)
        if any(b.prefills for b in batches):
            # passes with prompt tokens run without CUDA graphs and are not padded: the experts
            # get the tokens the ranks hold (sglang dp_attention.py DpPaddingMode: SUM_LEN when
            # a batch extends; TensorRT-LLM runs CUDA graphs, and pads, only when every rank decodes)
            t = self.dense_dp_s(T, sum(b.tokens for b in batches))
        else:
            t = self.dense_dp_s(T, T * len(batches))
        t += self.lm_head_s(rows)
        return t + max((self._plus_attention(0.0, b) for b in batches if b), default=0.0)

    def recurrent_s(self, decodes: int, prefill_tokens: int) -> float:
        """All recurrent mixers' scans (Gated DeltaNet, Mamba-2): one token of each of `decodes`
        sequences (the recurrent kernels) and `prefill_tokens` prompt tokens (the chunkwise
        kernels), each at the roofline of its FLOPs on the device's large-GEMM rate and its HBM
        bytes (simulator/linear_attention.py, simulator/mamba.py). No kernel-level timing of
        these kernels is in the tables, so this is a bound, not a measurement."""
        def roofline(flops: float, nbytes: float) -> float:
            return max(flops / self._tile_rate, self.km16.memory_s(nbytes))

        t = 0.0
        if self._gdn is not None:
            s, g = self._gdn, 0.0
            if decodes:
                g += roofline(recurrent_flops(s, decodes), recurrent_bytes(s, decodes, self.state_bytes))
            if prefill_tokens:
                g += roofline(chunk_flops(s, prefill_tokens), chunk_bytes(s, prefill_tokens))
            t += self.n_linear * g
        if self._mamba is not None:
            s, g = self._mamba, 0.0
            if decodes:
                g += roofline(mamba_step_flops(s, decodes), mamba_step_bytes(s, decodes, self.state_bytes, ACT_BYTES))
            if prefill_tokens:  # the SSD scan of the prompt tokens (as training's forward)
                g += ssd_op(self.km16, s, prefill_tokens, "fwd").time_s
            t += self.n_mamba * g
        return t

    def _plus_attention(self, t: float, batch: Batch) -> float:
        """`t` plus the batch's decode and prefill attention (all attention layers), and the
        scans of a model's recurrent layers (`recurrent_s`)."""
        if self._tile_rate:
            t += self.recurrent_s(batch.num_decode, batch.prefill_tokens)
        if batch.num_decode:
            t += self.decode_attention_s(batch.num_decode, batch.decode_kv_tokens)
        prefills = batch.prefills
        if prefills:
            if len(prefills) == 1:
                _, q, c = prefills[0]
                t += self.prefill_attention_s(1, q, c)
            else:
                groups: dict = {}
                for _, q, c in prefills:
                    groups[(q, c)] = groups.get((q, c), 0) + 1
                for (q, c), cnt in groups.items():
                    t += self.prefill_attention_s(cnt, q, c)
        return t

    def prefill_s(self, prompt: int) -> float:
        """One prompt alone, in one pass (the TTFT of an idle replica without chunking)."""
        b = Batch()
        b.prefills = [(None, prompt, 0)]
        b.prefill_tokens = prompt
        b.samples = 1
        return self.iteration_s(b)


@lru_cache(maxsize=256)
def _window_counts(model: ModelSpec) -> tuple[tuple[int, int], ...]:
    """((window, layers), ...) of a model's attention layers, window 0 = full attention
    (`ModelSpec.attention_window_counts`)."""
    return model.attention_window_counts()


@lru_cache(maxsize=64)
def iteration_cost(model: ModelSpec, cluster: Cluster, tp: int = 1, pp: int = 1, ep: int = 1,
                   dtype: str = "bf16", kv_dtype: str | None = None,
                   engine: str = "vllm", custom_ar_max_bytes: float | None = None,
                   dp: int = 1, fp8_context_fmha: bool = False, moe_quant: str | None = None,
                   moe_load: str = "power_law_1.01") -> IterationCost:
    """A shared `IterationCost` per replica shape, so its caches survive across simulations."""
    return IterationCost(model, cluster, tp, pp, ep, dtype, kv_dtype, engine, custom_ar_max_bytes, dp,
                         fp8_context_fmha, moe_quant, moe_load)
