"""How long one forward pass of a serving replica takes: `IterationCost.iteration_s(batch)`.

A pass runs every token of the batch (prefill chunks and one token per decode) through the
model as one varlen batch (vLLM v1, TensorRT-LLM in-flight batching): per layer, the linear
layers as GEMMs over all T tokens with Megatron TP-split shapes (Shoeybi et al. 2019 §3), the
memory-bound kernels (norms, RoPE, activation, KV-cache write), attention per sequence, and two
TP all-reduces of T·h activations; then the LM head over the rows that sample a token.
Every duration comes from the shared cost layer (DESIGN.md §1):
- GEMMs: `KernelModel.gemm_s` (measured GEMM tables, aiconfigurator-core);
- prefill attention: `KernelModel.flash_attention_s` (measured context-attention tables): a
  chunk of q new tokens after c cached ones is the causal q×q block plus the full q×c block;
- decode attention: the measured generation-attention table (`load_decode_attention_table`) at
  the batch's mean KV length, else the KV read at the achievable HBM bandwidth;
- MoE: the routed experts as one grouped GEMM over their share of the tokens, plus EP
  all-to-alls;
- communication: `collective_s` (TP all-reduce, EP all-to-all, PP send/recv); TP all-reduces
  small enough for the engine's custom all-reduce kernel (vLLM/SGLang custom_all_reduce,
  TensorRT-LLM one-/two-shot AllReduce, all inside CUDA graphs) take its measured time when
  the profile adapter offers `load_custom_allreduce_table(system, framework)`.
Pipeline stages run one after another for a batch (no overlap of consecutive batches across
stages: a pessimistic bound for pp > 1).

Iteration time dominates the simulator's run time, so every part is cached on a geometric
grid of its size argument (16 points per octave) and interpolated linearly in between; decode
attention and prefill attention scale from their grid point by KV length and FLOPs.
"""
from __future__ import annotations

import math
from functools import lru_cache

from hwmodels import profiles
from hwmodels.clusters import Cluster
from hwmodels.collectives import collective_s
from hwmodels.errors import InputError
from hwmodels.kernels import KernelModel, dtype_bytes, kernel_model
from simulator.models import ModelSpec
from simulator.serving.scheduler import Batch

ACT_BYTES = 2  # activations travel in bf16 (fp8 GEMMs quantise on the fly, their outputs are bf16)


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
                 dtype: str = "bf16", kv_dtype: str | None = None, engine: str = "vllm"):
        self.model, self.cluster = model, cluster
        self.tp, self.pp, self.ep = tp, pp, ep
        self.dtype = dtype
        self.kv_dtype = kv_dtype or ("bf16" if dtype in ("fp8", "fp4") else dtype)
        dev = cluster.device
        dev.peak(dtype)  # the device must support the compute dtype
        self.km: KernelModel = kernel_model(dev.name, dtype)
        self.km16: KernelModel = kernel_model(dev.name, "bf16")
        self.layers = model.num_layers
        self.notes: list[str] = list(self.km.notes)
        if model.num_heads % tp and not model.is_mla:
            raise InputError(f"tp={tp} must divide {model.name}'s {model.num_heads} attention heads")
        if model.num_layers < pp:
            raise InputError(f"pp={pp} exceeds {model.name}'s {model.num_layers} layers")
        if model.is_moe and model.num_experts % ep:
            raise InputError(f"ep={ep} must divide {model.name}'s {model.num_experts} experts")
        self.heads = max(1, model.num_heads // tp)
        self.kv_heads = math.ceil(model.num_kv_heads / tp)  # replicated when tp > kv heads (vLLM)
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
        if loader is not None and tp > 1 and dev.kernel_profile and tp <= cluster.devices_per_node:
            self._custom_ar = loader(dev.kernel_profile, engine)
        self._decode_scale = 1.0
        if self._decode_table is not None and src is not dev:
            # KV reads are bandwidth-bound: carry the measured rate over by the ratio of HBM bandwidths
            self._decode_scale = (src.hbm_bytes_per_s or 1) / (dev.hbm_bytes_per_s or 1)
        if self._decode_table is None:
            self.notes.append(f"{dev.name}: no measured decode-attention table for this model; "
                              f"KV read at {self.km.mem_bytes_per_s / 1e12:.2f} TB/s")
        self._dense: dict = {}
        self._head: dict = {}
        self._dec: dict = {}
        self._pre: dict = {}
        self._build_layer_shapes()

    # ---- per-token linear work -----------------------------------------------------------------
    def _build_layer_shapes(self) -> None:
        m, tp = self.model, self.tp
        h = m.hidden_size
        if m.is_mla:
            qk = m.qk_nope_head_dim + m.qk_rope_head_dim
            shapes = []
            if m.q_lora_rank:
                shapes += [(m.q_lora_rank, h), (m.num_heads * qk // tp, m.q_lora_rank)]
            else:
                shapes += [(m.num_heads * qk // tp, h)]
            shapes += [(m.kv_lora_rank + m.qk_rope_head_dim, h),
                       (m.num_heads * (m.qk_nope_head_dim + m.v_head_dim) // tp, m.kv_lora_rank),
                       (h, m.num_heads * m.v_head_dim // tp)]
        else:
            qkv = m.q_dim // tp + 2 * self.kv_heads * m.head_dim
            shapes = [(qkv, h), (h, m.attn_out_dim // tp)]
        self.attn_shapes = shapes  # (n, k) of each GEMM, m = tokens
        ffn = m.ffn_hidden_size
        up = ffn * (2 if m.gated_mlp else 1)
        self.mlp_shapes = [(up // tp, h), (h, ffn // tp)]
        self.n_moe = m.num_moe_layers
        self.n_dense_mlp = m.num_layers - self.n_moe
        if m.is_moe:
            f = m.moe_ffn_hidden_size
            tp_e = max(1, tp // self.ep)
            self.expert_shapes = [(f * (2 if m.gated_mlp else 1) // tp_e, h), (h, f // tp_e)]
            fs = f * m.num_shared_experts
            self.shared_shapes = ([(fs * (2 if m.gated_mlp else 1) // tp, h), (h, fs // tp)]
                                  if fs else [])
        # memory-bound kernels per layer, 16-bit elements read + written per token: fused
        # add+RMSNorm twice (read x and residual, write both), RoPE on q and k, SiLU·mul
        # (read gate and up, write one), KV-cache write (K and V at the KV dtype).
        q, kv = m.q_dim // tp, self.kv_heads * m.head_dim
        self.elementwise = [4 * h * ACT_BYTES, 4 * h * ACT_BYTES, 2 * (q + kv) * ACT_BYTES,
                            3 * (ffn // tp) * ACT_BYTES]
        kv_elems = m.kv_lora_rank + m.qk_rope_head_dim if m.is_mla else 2 * kv  # MLA caches the latent
        self.kv_write_bytes = kv_elems * dtype_bytes(self.kv_dtype)

    def _dense_at(self, T: int) -> float:
        """Seconds of everything but attention and the LM head for T tokens (all layers)."""
        km, m, L = self.km, self.model, self.layers
        t_attn_lin = sum(km.gemm_s(T, n, k) for n, k in self.attn_shapes)
        t_mlp = sum(km.gemm_s(T, n, k) for n, k in self.mlp_shapes) if self.n_dense_mlp else 0.0
        t_moe = self._moe_s(T) if self.n_moe else 0.0
        t_ew = sum(km.memory_s(T * b) for b in self.elementwise) + km.memory_s(T * self.kv_write_bytes)
        t = L * (t_attn_lin + t_ew) + self.n_dense_mlp * t_mlp + self.n_moe * t_moe
        if self.tp > 1:  # Megatron TP: all-reduce after attention and after the MLP (T·h each)
            t += 2 * L * self.tp_allreduce_s(float(T * m.hidden_size * ACT_BYTES))
        if self.pp > 1:  # activations cross each stage boundary once
            t += (self.pp - 1) * collective_s(self.cluster, "send_recv", 2, self.tp,
                                              float(T * m.hidden_size * ACT_BYTES))
        return t

    def tp_allreduce_s(self, nbytes: float) -> float:
        """One TP all-reduce: the engine's custom kernel where measured for this size, else NCCL
        (`collective_s`) — engines switch to NCCL above their custom kernel's size limit."""
        if self._custom_ar is not None:
            t = self._custom_ar.time_s(self.tp, nbytes)
            if t is not None:
                return t
        return collective_s(self.cluster, "all_reduce", self.tp, 1, nbytes)

    def _moe_s(self, T: int) -> float:
        """One MoE layer for T tokens on one rank: router GEMM, routed experts (balanced routing:
        each of the E experts gets T·k/E tokens; an expert that gets none is skipped, expected
        active fraction 1 − (1 − 1/E)^(T·k)), shared experts, two EP all-to-alls (GShard).
        The routed experts run as one grouped GEMM (vLLM fused_moe, TensorRT-LLM/SGLang MoE
        kernels): the FLOPs and weight bytes of a GEMM with the active experts side by side in N."""
        m, km = self.model, self.km
        E, k = m.num_experts, m.experts_per_token
        t = self.km16.gemm_s(T, E, m.hidden_size)
        routed = T * k
        active = E * (1.0 - (1.0 - 1.0 / E) ** routed)
        local = max(1, round(active / self.ep))
        per_expert = max(1, math.ceil(routed / max(active, 1.0)))
        t += sum(km.gemm_s(per_expert, n * local, kk) for n, kk in self.expert_shapes)
        t += sum(km.gemm_s(T, n, kk) for n, kk in self.shared_shapes)
        if self.ep > 1:
            a2a = collective_s(self.cluster, "all_to_all", self.ep, 1, float(routed * m.hidden_size * ACT_BYTES))
            t += 2 * a2a
        return t

    def dense_s(self, T: int) -> float:
        if T <= 0:
            return 0.0
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
        """LM head (vocabulary-parallel over tp, 16-bit) for the rows that sample a token."""
        if rows <= 0:
            return 0.0
        lo, hi = _grid(rows)
        c = self._head
        m = self.model
        for x in (lo, hi):
            if x not in c:
                c[x] = self.km16.gemm_s(x, m.vocab_size // self.tp, m.hidden_size)
        a, b = c[lo], c[hi]
        return a if hi == lo else a + (b - a) * (rows - lo) / (hi - lo)

    # ---- attention -----------------------------------------------------------------------------
    def decode_attention_s(self, n: int, kv_tokens: int) -> float:
        """All layers' decode attention for n sequences attending to kv_tokens positions in
        total, at their mean length."""
        if n <= 0:
            return 0.0
        mean = max(1, kv_tokens // n)
        klo, _ = _grid(mean)
        nlo, nhi = _grid(n)
        a = self._dec_at(nlo, klo)
        if nhi != nlo:
            b = self._dec_at(nhi, klo)
            a += (b - a) * (n - nlo) / (nhi - nlo)
        return a * mean / klo  # KV reads scale with the length

    def _dec_at(self, n: int, kv: int) -> float:
        key = (n, kv)
        t = self._dec.get(key)
        if t is None:
            t = None
            if self._decode_table is not None:
                t = self._decode_table.time_s(n, max(kv, 2), self.heads, self.kv_heads, self.head_dim)
                if t is not None:
                    t *= self._decode_scale
            if t is None:
                per_tok = (self.model.kv_lora_rank + self.model.qk_rope_head_dim
                           if self.model.is_mla else 2 * self.kv_heads * self.head_dim)
                t = self.km.memory_s(n * kv * per_tok * dtype_bytes(self.kv_dtype))
            t *= self.layers
            self._dec[key] = t
        return t

    def prefill_attention_s(self, count: int, q: int, ctx: int) -> float:
        """All layers' attention for `count` chunks of q new tokens after ctx cached ones."""
        qlo, _ = _grid(q)
        clo, _ = _grid(ctx) if ctx > 0 else (0, 0)
        key = (count, qlo, clo)
        t = self._pre.get(key)
        if t is None:
            km, hd = self.km16, self.head_dim
            if self.model.is_mla:
                hd = self.model.qk_nope_head_dim + self.model.qk_rope_head_dim
            t = km.flash_attention_s(count, qlo, qlo, self.heads, self.kv_heads, hd, True)
            if clo:
                t += km.flash_attention_s(count, qlo, clo, self.heads, self.kv_heads, hd, False)
            t *= self.layers
            self._pre[key] = t
        # scale from the grid point by the FLOPs: q²/2 causal + q·ctx
        f_grid = qlo * qlo / 2 + qlo * clo
        return t * (q * q / 2 + q * ctx) / f_grid

    # ---- a whole pass --------------------------------------------------------------------------
    def iteration_s(self, batch: Batch) -> float:
        t = self.dense_s(batch.tokens) + self.lm_head_s(batch.samples)
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


@lru_cache(maxsize=64)
def iteration_cost(model: ModelSpec, cluster: Cluster, tp: int = 1, pp: int = 1, ep: int = 1,
                   dtype: str = "bf16", kv_dtype: str | None = None,
                   engine: str = "vllm") -> IterationCost:
    """A shared `IterationCost` per replica shape, so its caches survive across simulations."""
    return IterationCost(model, cluster, tp, pp, ep, dtype, kv_dtype, engine)
