"""The paged KV cache of one replica: how many blocks fit in memory (`kv_pool`), and a `KVCache`
that hands out blocks and keeps a prefix cache.

Blocks (vLLM PagedAttention, Kwon et al. SOSP'23): the cache is cut into blocks of `block_size`
tokens; a request holds ceil(tokens / block_size) of them. The pool is what is left of the
device memory after the weights, the activation peak of the largest batch and the non-torch
allocations (CUDA context, NCCL buffers), sized per engine:
    vllm    HBM × gpu_memory_utilization − weights − activation peak − non-torch
            (vLLM v1 gpu_worker.determine_available_memory; default utilisation 0.9)
    sglang  HBM × mem_fraction_static − weights (SGLang ServerArgs: the static pool holds
            weights and KV; activations and CUDA graphs live in the rest)
    trtllm  (HBM − weights − activation peak − non-torch) × free_gpu_memory_fraction
            (TensorRT-LLM KvCacheConfig; default 0.9 of the memory free after loading)
            − on the TensorRT-engine path (trtllm-bench) also the decoder's sampling workspace,
            allocated before the KV cache measures free memory (`trtllm_sampling_workspace_bytes`)
Models with recurrent layers (Gated DeltaNet, Mamba-2) keep KV for their attention layers only and
a state per request, in a pool of its own (SGLang) or in the KV pool's blocks (vLLM, TRT-LLM):
`state_bytes_per_request`, `sglang_state_slots`.

Prefix caching (vLLM automatic prefix caching, SGLang RadixAttention): whole blocks of a prompt
prefix that an earlier request computed are reused. Here a prompt carries `prefix_keys`, each
covering `prefix_key_tokens` more tokens of its prefix; an entry owns those blocks, is
referenced by the requests that read it, and once unreferenced stays cached until its blocks are
needed (LRU eviction), as vLLM's free-block queue does.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from hwmodels.devices import Device
from hwmodels.errors import InputError
from hwmodels.kernels import dtype_bytes
from simulator.linear_attention import RECURRENT_STATE_BYTES, recurrent_state_bytes
from simulator.memory import CONTEXT_BYTES, NCCL_BYTES, NCCL_BYTES_DEFAULT
from simulator.models import ModelSpec

# Non-weight parameters (embeddings, LM head, norms) stay in 16-bit in fp8/fp4 checkpoints
# (vLLM Fp8LinearMethod quantises nn.Linear layers only; ModelOpt FP8 keeps lm_head in bf16).
HIGH_PRECISION_BYTES = 2
# vLLM v1 profile_run: a dummy forward of max_num_batched_tokens tokens plus a sampler run over
# max_num_seqs rows of fp32 logits sets the activation peak.
LOGIT_BYTES = 4


# SGLang's default share of KV slots of a sliding-window layer per slot of a full layer
# (python/sglang/srt/server_args.py swa_full_tokens_ratio = 0.8).
SGLANG_SWA_FULL_TOKENS_RATIO = 0.8


def kv_bytes_per_token(model: ModelSpec, tp: int, pp: int, kv_dtype: str,
                       memory_policy: str | None = None) -> float:
    """KV bytes one token takes on one GPU: 2 (K and V) · layers/pp · kv heads per GPU ·
    head_dim · bytes (docs/modeling.md §4.2). KV heads are replicated when tp > kv heads (vLLM);
    MLA caches the compressed latent plus the RoPE key, on every TP rank (DeepSeek-V2 §2.1.3).

    Sliding-window layers (`ModelSpec.layer_window`) count as each engine sizes them
    (`memory_policy`; None counts them as full layers):
      vllm    0: the hybrid KV-cache manager keeps only the blocks inside the window
              (vllm/v1/core/single_type_kv_cache_manager.py SlidingWindowManager
              remove_skipped_blocks), a bounded w + block per sequence, not a per-token cost;
      sglang  swa_full_tokens_ratio (0.8) of a full layer: the SWA pool gets that many slots per
              full-layer slot (model_runner set_num_token_hybrid: full_tokens = total /
              (ratio · swa_layers + full_layers));
      trtllm  as full layers: KvCacheConfig.max_attention_window defaults to max_seq_len for
              every layer, so the default pool is one window size (kvCacheManager.cpp
              calculateWindowSizeToShare gives a single window size the whole pool).
    A model whose every layer is windowed keeps its per-token rate (vLLM then holds only
    windows, which a per-token rate cannot express)."""
    per_stage = math.ceil(model.num_layers / pp)
    b = dtype_bytes(kv_dtype)
    if model.is_mla:
        return per_stage * (model.kv_lora_rank + model.qk_rope_head_dim) * b
    kv_heads = math.ceil(model.num_kv_heads / tp)
    per_layer = 2 * kv_heads * model.head_dim * b
    if model.num_state_layers:  # recurrent layers keep a state per request, not KV per token
        per_stage = max(sum(n for _, n in model.attention_window_counts(
            range(st * per_stage, min(model.num_layers, (st + 1) * per_stage)))) for st in range(pp))
    if memory_policy is None or not model.sliding_window or not model.layer_types:
        return per_stage * per_layer
    if memory_policy not in ("vllm", "sglang", "trtllm"):
        raise InputError(f"memory policy {memory_policy!r}; valid: vllm, sglang, trtllm")
    weight = {"vllm": 0.0, "sglang": SGLANG_SWA_FULL_TOKENS_RATIO, "trtllm": 1.0}[memory_policy]
    worst = 0.0
    for st in range(pp):  # the most loaded stage (ceil(L/pp) layers each, the last takes the rest)
        layers = range(st * per_stage, min(model.num_layers, (st + 1) * per_stage))
        counts = dict(model.attention_window_counts(layers))
        full, windowed = counts.get(0, 0), sum(n for w, n in counts.items() if w)
        worst = max(worst, (full + (weight if full else 1.0) * windowed) * per_layer)
    return worst


# Bytes per routed-expert weight of a checkpoint's MoE quantisation (the fused-MoE table dtypes,
# simulator/serving/costs.py MOE_DTYPES), scales included: NVFP4 one FP8 scale per 16 values
# (NVIDIA "Introducing NVFP4" blog); MXFP4 one E8M0 scale per 32 (OCP Microscaling spec v1.0
# §5); INT4 weight-only one 16-bit scale per group of 128 (compressed-tensors pack-quantized,
# group_size 128).
MOE_WEIGHT_BYTES = {"bfloat16": 2.0, "fp8": 1.0, "fp8_block": 1.0 + 4 / (128 * 128),
                    "nvfp4": 0.5 + 1 / 16, "w4a8_mxfp4_mxfp8": 0.5 + 1 / 32,
                    "w4a16_mxfp4": 0.5 + 1 / 32, "int4_wo": 0.5 + 2 / 128}


def moe_weight_bytes(moe_quant: str) -> float:
    """Bytes per routed-expert weight at `moe_quant` (MOE_WEIGHT_BYTES); InputError if unknown."""
    if moe_quant not in MOE_WEIGHT_BYTES:
        raise InputError(f"moe_quant {moe_quant!r}; valid: {', '.join(MOE_WEIGHT_BYTES)}")
    return MOE_WEIGHT_BYTES[moe_quant]


def weight_bytes_per_gpu(model: ModelSpec, tp: int, pp: int, ep: int, dtype: str,
                         parallel_embedding: bool = True, moe_quant: str | None = None) -> float:
    """Weights on the most loaded GPU: linear layers at `dtype`, split over tp (experts over
    ep·(tp/ep)); embeddings and LM head vocabulary-parallel over tp in 16-bit, on the first
    and last pipeline stage (Megatron/vLLM VocabParallelEmbedding). `parallel_embedding=False`
    keeps the whole input embedding table on every TP rank, as TensorRT-LLM's checkpoint
    conversion does by default (the LM head stays column-parallel; see `kv_pool`). `moe_quant`
    sets the routed experts' bytes per weight (MOE_WEIGHT_BYTES) apart from the other layers'
    (e.g. GPT-OSS: MXFP4 experts, 16-bit attention)."""
    wb = dtype_bytes(dtype)
    eb = moe_weight_bytes(moe_quant) if moe_quant is not None else wb
    per_stage = math.ceil(model.num_layers / pp)
    # the first stage holds the embedding; with pp = 1 it also holds the LM head
    layers = range(per_stage)
    linear = 0.0
    for i in layers:
        if model.is_moe_layer(i):
            experts = model.num_experts * model.expert_params()
            linear += (model.layer_params(i) - experts) / tp + experts / max(tp, ep) * eb / wb
        else:
            linear += model.layer_params(i) / tp
    # tensorrt_llm/models/llama/convert.py split_embedding: "if not use_parallel_embedding:
    # return param" (the full table on each rank) — PretrainedConfig default use_parallel_embedding=False
    vocab = model.embedding_params() / (tp if parallel_embedding else 1)
    if pp == 1:
        vocab += model.head_params() / tp
    return linear * wb + vocab * HIGH_PRECISION_BYTES


def activation_peak_bytes(model: ModelSpec, tp: int, max_tokens: int, max_seqs: int) -> float:
    """Peak of a forward over `max_tokens` tokens: the residual stream in and out, the widest
    intermediate (gate/up output and the activation output of the MLP, or the QKV output), 16-bit;
    plus fp32 logits of `max_seqs` sampled rows (vLLM v1 profile_run / _dummy_sampler_run)."""
    h = model.hidden_size
    ffn = model.moe_ffn_hidden_size * model.experts_per_token if model.is_moe else model.ffn_hidden_size
    mlp = (ffn * (2 if model.gated_mlp else 1) + ffn) / tp
    qkv = (model.q_dim + 2 * model.kv_dim) / tp
    act = max_tokens * (2 * h + max(mlp, qkv)) * HIGH_PRECISION_BYTES
    logits = max_seqs * model.vocab_size / tp * LOGIT_BYTES
    return act + logits


# cpp/tensorrt_llm/kernels/samplingTopPKernels.cu getTopPWorkspaceSizes (0.14): the sampling
# layer's workspace, sized once for max_batch_size x vocabSizePadded: fp32 sorted log-probs (4 B),
# int32 sorted ids (4 B) and cub::DeviceSegmentedRadixSort's alternate key/value buffers (8 B).
TRT_SAMPLING_BYTES_PER_LOGIT = 16


def trtllm_sampling_workspace_bytes(model: ModelSpec, tp: int, max_seqs: int) -> float:
    """Top-p sampling workspace of TensorRT-LLM's batched decoder (allocated at executor start,
    before the KV cache measures free memory: trtGptModelInflightBatching.cpp createDecoder precedes
    createKvCacheManager), on every rank: max_batch_size x vocab padded to a multiple of tp."""
    vocab_padded = math.ceil(model.vocab_size / tp) * tp
    return float(TRT_SAMPLING_BYTES_PER_LOGIT * max_seqs * vocab_padded)


@dataclass(frozen=True)
class KVPool:
    num_blocks: int
    block_size: int
    bytes_per_token: float  # per GPU
    breakdown: dict  # bytes per GPU: hbm, budget, weights, activations, non_torch, kv
    # models with recurrent layers (Gated DeltaNet, Mamba-2): the state one request holds (bytes per GPU),
    # the requests a separate state pool has room for (SGLang; None: no cap), and the KV blocks a
    # request takes for its state where state and KV share one pool (vLLM, TensorRT-LLM)
    state_bytes_per_request: float = 0.0
    state_slots: int | None = None
    state_blocks: int = 0

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size


def kv_pool(model: ModelSpec, device: Device, tp: int, pp: int, ep: int, dtype: str, kv_dtype: str,
            memory_policy: str, memory_fraction: float, block_size: int, max_tokens: int,
            max_seqs: int, pinned_blocks: int | None = None, where: str = "replica",
            decoder_workspace: bool = False, moe_quant: str | None = None) -> KVPool:
    """Blocks of `block_size` tokens that one replica's KV cache holds (see module docstring).
    `decoder_workspace` marks TensorRT-LLM's TensorRT-engine flow (0.x, `trtllm-bench`): the
    decoder's sampling workspace is allocated before the pool is sized, and the engine was
    converted with TensorRT-LLM's default `use_parallel_embedding=False`, so every TP rank holds
    the whole input embedding (`weight_bytes_per_gpu(parallel_embedding=False)`)."""
    per_token = kv_bytes_per_token(model, tp, pp, kv_dtype, memory_policy)
    hbm = float(device.hbm_bytes or 0)
    trt_engine = decoder_workspace and memory_policy == "trtllm"
    # tensorrt_llm/models/modeling_utils.py PretrainedConfig(use_parallel_embedding=False): the
    # TRT-engine checkpoint replicates the embedding table on each TP rank
    weights = weight_bytes_per_gpu(model, tp, pp, ep, dtype, parallel_embedding=not trt_engine,
                                   moe_quant=moe_quant)
    acts = activation_peak_bytes(model, tp, max_tokens, max_seqs)
    group = max(tp, pp)
    non_torch = CONTEXT_BYTES + (NCCL_BYTES.get(group, NCCL_BYTES_DEFAULT) if group > 1 else 0)
    # TensorRT-LLM's decoder buffers exist before the KV cache is sized (trtllm policy only)
    decoder = trtllm_sampling_workspace_bytes(model, tp, max_seqs) if trt_engine else 0.0
    non_torch += decoder
    if memory_policy == "vllm":
        budget = hbm * memory_fraction - weights - acts - non_torch
    elif memory_policy == "sglang":
        budget = hbm * memory_fraction - weights
    elif memory_policy == "trtllm":
        budget = (hbm - weights - acts - non_torch) * memory_fraction
    else:
        raise InputError(f"memory policy {memory_policy!r}; valid: vllm, sglang, trtllm")
    state = state_bytes_per_request(model, tp, pp, memory_policy)
    slots, state_bytes = None, 0.0
    if state and memory_policy == "sglang" and pinned_blocks is None:
        slots, state_bytes = sglang_state_slots(max(0.0, budget), state)
        budget -= state_bytes
    breakdown = {"hbm_bytes": hbm, "weights_bytes": weights, "activation_peak_bytes": acts,
                 "non_torch_bytes": non_torch, "decoder_workspace_bytes": decoder,
                 "state_bytes": state_bytes, "kv_bytes": max(0.0, budget)}
    if pinned_blocks is not None:
        blocks = int(pinned_blocks)
        breakdown["kv_bytes"] = blocks * block_size * per_token
    else:
        blocks = int(max(0.0, budget) // (block_size * per_token))
    if blocks < 1 or slots == 0:
        raise InputError(f"{where}: {model.name} does not fit: {weights / 2**30:.1f} GiB of weights "
                         f"per GPU leave no KV cache in {hbm / 2**30:.0f} GiB; raise tp or pp")
    # vLLM's hybrid allocator (vllm/v1/core/single_type_kv_cache_manager.py MambaManager) and
    # TensorRT-LLM take a request's state from the same pool as its KV: blocks of this pool's size
    state_blocks = 0 if slots is not None or not state else math.ceil(state / (block_size * per_token))
    return KVPool(blocks, block_size, per_token, breakdown, state, slots, state_blocks)


# SGLang --mamba-full-memory-ratio default (python/sglang/srt/server_args.py): the state pool gets
# ratio / (1 + ratio) of the memory after the weights, the KV pool the rest
SGLANG_MAMBA_FULL_MEMORY_RATIO = 0.9


def state_bytes_per_request(model: ModelSpec, tp: int, pp: int, memory_policy: str | None) -> float:
    """The recurrent state (Gated DeltaNet, Mamba-2) one request keeps on one GPU of the most
    loaded stage, with the engine's state dtype (linear_attention.RECURRENT_STATE_BYTES); 0 for a
    model without such layers."""
    return recurrent_state_bytes(model, tp, pp, RECURRENT_STATE_BYTES.get(memory_policy or "", 2))


def sglang_state_slots(rest_bytes: float, per_request: float,
                       ratio: float = SGLANG_MAMBA_FULL_MEMORY_RATIO) -> tuple[int, float]:
    """(requests the state pool holds, its bytes) from the memory left after the weights
    (sglang model_runner handle_max_mamba_cache, no speculative decoding, no max_mamba_cache_size:
    max_mamba_cache_size = rest · ratio / (1 + ratio) // mamba_cache_per_req)."""
    slots = int(rest_bytes * ratio / (1 + ratio) // per_request)
    return slots, slots * per_request


class KVCache:
    """Block accounting of one replica, with an LRU prefix cache (see module docstring)."""

    __slots__ = ("num_blocks", "block_size", "free", "prefix_caching", "entries", "evictable",
                 "hits", "lookups")

    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.free = num_blocks  # blocks owned by nobody
        self.prefix_caching = prefix_caching
        self.entries: OrderedDict = OrderedDict()  # key -> [blocks, refs]; LRU order for refs == 0
        self.evictable = 0  # blocks in unreferenced entries
        self.hits = 0  # prompt tokens served from the cache
        self.lookups = 0  # prompt tokens looked up

    @property
    def used(self) -> int:
        """Blocks holding live KV (requests' own and referenced prefix entries)."""
        return self.num_blocks - self.free - self.evictable

    def available(self) -> int:
        return self.free + self.evictable

    def allocate(self, n: int) -> bool:
        """Take `n` blocks, evicting unreferenced prefix entries (oldest first) if needed."""
        if n <= self.free:
            self.free -= n
            return True
        if n > self.free + self.evictable:
            return False
        for key in list(self.entries):
            if self.free >= n:
                break
            blocks, refs = self.entries[key]
            if refs == 0:
                del self.entries[key]
                self.evictable -= blocks
                self.free += blocks
        self.free -= n
        return True

    def release(self, n: int) -> None:
        self.free += n

    # ---- prefix cache ------------------------------------------------------------------------
    def match(self, keys: tuple) -> int:
        """How many leading keys are cached."""
        if not self.prefix_caching:
            return 0
        m = 0
        for key in keys:
            if key not in self.entries:
                break
            m += 1
        return m

    def acquire(self, keys: tuple) -> None:
        for key in keys:
            e = self.entries[key]
            if e[1] == 0:
                self.evictable -= e[0]
            e[1] += 1
            self.entries.move_to_end(key)

    def release_keys(self, keys: tuple) -> None:
        for key in keys:
            e = self.entries.get(key)
            if e is None:
                continue
            e[1] -= 1
            if e[1] == 0:
                self.evictable += e[0]
                self.entries.move_to_end(key)  # most recently used: evicted last

    def insert(self, keys: tuple, blocks_per_key: int) -> tuple:
        """Register the prefix segments a request has just computed. Keys not cached yet become
        entries whose blocks move from the request to the cache (the request references them);
        keys that another request cached meanwhile are left alone (the request keeps its own
        copy). Returns the keys of the new entries."""
        if not self.prefix_caching or blocks_per_key <= 0:
            return ()
        added = []
        for key in keys:
            if key not in self.entries:
                self.entries[key] = [blocks_per_key, 1]
                added.append(key)
        return tuple(added)
