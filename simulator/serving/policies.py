"""The scheduling policies of the serving engines, one class per mechanism, each with its source.

An engine (`VLLMV1`, `SGLang`, `TRTLLM`) is a list of policies with its documented defaults on a
device; `simulator.serving.scheduler.engine_config` composes them into an `EngineConfig`, whose
switches the `Scheduler` reads. Deployment settings a measured run used (`--async-scheduling`,
a capacity scheduler, a chunk size) are options given on top (`ENGINE_OPTIONS`), never constants
fitted to measurements; where a run's setting is unknown the engine's default below is taken, and
`describe(cfg)` names every policy in force so that a report can say which default was used.

Policies and what they switch:
    TokenBudget          max_num_batched_tokens   tokens one forward pass may carry
    MaxRunning           max_num_seqs             requests running at once
    ChunkedPrefill       chunked_prefill, chunk   prompts split over passes (Sarathi-Serve)
    PrefillFirst         mixed_batches=False      prefill-only passes pause decodes
    MixedChunk           mixed_batches=True       SGLang --enable-mixed-chunk: prompts join decodes
    MaxPrefillTokens     max_prefill_tokens       SGLang: prompt tokens one prefill batch may take
    RecvInterval         recv_interval            SGLang: new requests received every N decode passes
    PreemptNewest        kv_reservation=incremental   blocks as written, newest preempted
    MaxUtilization       kv_reservation=incremental   TRT-LLM: last started request paused
    GuaranteedNoEvict    kv_reservation=full      prompt + output reserved, never preempts
    NewTokenRatio        kv_reservation=ratio     SGLang: room kept for running outputs
    AsyncScheduling      extra_step               vLLM: next batch built while one runs
    BatchWait            batch_wait_iters/_ratio  TRT-LLM: hold new prompts until enough tokens
    OverlapScheduler     extra_step               TRT-LLM / SGLang: CPU step overlapped with GPU
    PrefixCache          prefix_caching           vLLM APC, SGLang radix cache, TRT-LLM block reuse
    QueueOrder           schedule_policy          FCFS, or SGLang's longest prefix match
    KVMemory             memory_policy, memory_fraction, block_size
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from hwmodels.devices import Device
from hwmodels.errors import InputError

# SGLang schedule_policy.py: with more waiting requests than this, the prefix-aware policies fall
# back to FCFS (matching every prefix would cost too much CPU per step)
LPM_FALLBACK_QUEUE = 128


class Policy:
    """One scheduling mechanism; `apply` returns the config with the switches it drives set."""
    source = ""

    def apply(self, cfg):
        raise NotImplementedError

    @property
    def name(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class TokenBudget(Policy):
    tokens: int
    source = ("vllm/v1/core/sched/scheduler.py token_budget = max_num_batched_tokens; TensorRT-LLM "
              "microBatchScheduler.cpp max_num_tokens; SGLang chunked_prefill_size")

    def apply(self, cfg):
        return replace(cfg, max_num_batched_tokens=self.tokens)


@dataclass(frozen=True)
class MaxRunning(Policy):
    requests: int
    source = ("vLLM max_num_seqs (scheduler.py: len(self.running) == max_num_running_reqs); "
              "TensorRT-LLM max_batch_size (capacityScheduler.cpp mMaxNumRequests); SGLang "
              "max_running_requests")

    def apply(self, cfg):
        return replace(cfg, max_num_seqs=self.requests)


@dataclass(frozen=True)
class ChunkedPrefill(Policy):
    enabled: bool
    chunk: int = 0  # prompt tokens per pass; 0 = the token budget
    source = "Sarathi-Serve (Agrawal et al. OSDI'24); vLLM V1 always chunks; TRT-LLM enable_chunked_prefill"

    def apply(self, cfg):
        return replace(cfg, chunked_prefill=self.enabled, chunk=self.chunk)


@dataclass(frozen=True)
class PrefillFirst(Policy):
    source = ("sglang/srt/managers/scheduler.py get_next_batch_to_run: a prefill batch runs alone "
              "unless --enable-mixed-chunk")

    def apply(self, cfg):
        return replace(cfg, mixed_batches=False)


@dataclass(frozen=True)
class MixedChunk(Policy):
    enabled: bool
    source = ("sglang/srt/managers/scheduler.py get_new_batch_prefill: with --enable-mixed-chunk a "
              "prefill batch is mixed with the running decodes (mix_with_running); PrefillAdder "
              "takes the running batch size off the chunk and input budgets")

    def apply(self, cfg):
        return replace(cfg, mixed_batches=self.enabled)


@dataclass(frozen=True)
class MaxPrefillTokens(Policy):
    tokens: int
    source = ("sglang/srt/server_args.py --max-prefill-tokens; managers/schedule_policy.py "
              "PrefillAdder: rem_input_tokens starts at max_prefill_tokens (less the running "
              "batch size when mixed) and add_one_req refuses a prompt with real_input_tokens >= "
              "rem_input_tokens unless it is the batch's first")

    def apply(self, cfg):
        return replace(cfg, max_prefill_tokens=self.tokens)


@dataclass(frozen=True)
class RecvInterval(Policy):
    passes: int
    source = ("sglang/srt/managers/scheduler_recv_skipper.py SchedulerRecvSkipper (--scheduler-recv-"
              "interval): each loop adds the last batch's weight (decode 1, no batch 1, any batch "
              "with prompts 1000) and receives new requests only once the sum reaches the interval, "
              "then restarts from 0")

    def apply(self, cfg):
        return replace(cfg, recv_interval=self.passes)


@dataclass(frozen=True)
class PreemptNewest(Policy):
    source = ("vllm/v1/core/sched/scheduler.py: allocate_slots fails -> self.running.pop() is "
              "preempted (recompute), back at the head of the waiting queue")

    def apply(self, cfg):
        return replace(cfg, kv_reservation="incremental", capacity_scheduler="")


@dataclass(frozen=True)
class MaxUtilization(Policy):
    source = ("TensorRT-LLM capacityScheduler.cpp MaxUtilizationScheduler: blocks for the next "
              "step only; when one does not fit, the last started request is paused (freed, "
              "recomputed later)")

    def apply(self, cfg):
        return replace(cfg, kv_reservation="incremental", capacity_scheduler="max_utilization")


@dataclass(frozen=True)
class GuaranteedNoEvict(Policy):
    source = ("TensorRT-LLM capacityScheduler.cpp GuaranteedNoEvictScheduler: a context request "
              "starts only if the blocks to drive it and every started request to completion "
              "are free; the first that does not fit stops the loop; nothing is evicted")

    def apply(self, cfg):
        return replace(cfg, kv_reservation="full", capacity_scheduler="guaranteed_no_evict")


@dataclass(frozen=True)
class NewTokenRatio(Policy):
    source = ("sglang/srt/managers/schedule_policy.py PrefillAdder: free tokens minus "
              "new_token_ratio x running requests' remaining output must cover the prompt")

    def apply(self, cfg):
        return replace(cfg, kv_reservation="ratio", capacity_scheduler="")


@dataclass(frozen=True)
class AsyncScheduling(Policy):
    enabled: bool
    source = ("vllm/v1/core/sched/async_scheduler.py, --async-scheduling: the next step is "
              "scheduled while the current one runs, so a request that arrives during step n "
              "is first scheduled in step n+2")

    def apply(self, cfg):
        return replace(cfg, extra_step=self.enabled)


@dataclass(frozen=True)
class BatchWait(Policy):
    timeout_iters: int | None = None  # batch_wait_timeout_iters (0 = off, the default)
    max_tokens_ratio: float | None = None  # batch_wait_max_tokens_ratio
    source = ("TensorRT-LLM PyTorch backend py_executor.py _schedule/_waiting_requests: with "
              "running generation requests, the context requests picked for a pass are held back "
              "until batch_wait_timeout_iters passes have waited or the pass's tokens (prompts + "
              "decodes) reach batch_wait_max_tokens_ratio x max_num_tokens")

    def apply(self, cfg):
        if self.timeout_iters is not None:
            cfg = replace(cfg, batch_wait_iters=self.timeout_iters)
        if self.max_tokens_ratio is not None:
            cfg = replace(cfg, batch_wait_ratio=self.max_tokens_ratio)
        return cfg


@dataclass(frozen=True)
class OverlapScheduler(Policy):
    enabled: bool
    source = ("TensorRT-LLM PyTorch backend py_executor.py _executor_loop_overlap (overlap "
              "scheduler docs: 'introduces one extra decoding step'); SGLang event_loop_overlap "
              "(--disable-overlap-schedule off by default)")

    def apply(self, cfg):
        return replace(cfg, extra_step=self.enabled)


@dataclass(frozen=True)
class PrefixCache(Policy):
    enabled: bool
    source = "vLLM automatic prefix caching; SGLang RadixAttention (radix cache); TRT-LLM KV block reuse"

    def apply(self, cfg):
        return replace(cfg, prefix_caching=self.enabled)


@dataclass(frozen=True)
class QueueOrder(Policy):
    order: str  # "fcfs" | "lpm"
    source = ("SGLang schedule_policy.py SchedulePolicy: fcfs, or lpm (waiting queue sorted by "
              "longest cached prefix, FCFS above 128 waiting); vLLM and TRT-LLM: FCFS")

    def apply(self, cfg):
        return replace(cfg, schedule_policy=self.order)


@dataclass(frozen=True)
class KVMemory(Policy):
    policy: str
    fraction: float
    block_size: int
    source = "simulator/serving/kv_cache.py kv_pool (per-engine memory budget) and KV page size"

    def apply(self, cfg):
        return replace(cfg, memory_policy=self.policy, memory_fraction=self.fraction,
                       block_size=self.block_size)


# ---- engines --------------------------------------------------------------------------------------

class EnginePolicy:
    """An engine's scheduling policies with its documented defaults, and the options it accepts."""
    name = ""
    source = ""
    options: dict = {}  # option -> valid values

    def defaults(self, device: Device, tp: int) -> list[Policy]:
        raise NotImplementedError

    def option(self, key: str, value) -> Policy:
        raise NotImplementedError


def _integer(key: str, value, lo: int) -> int:
    """An integer option >= lo, or a one-line InputError naming it."""
    try:
        v = int(str(value))
    except ValueError:
        v = lo - 1
    if v < lo:
        raise InputError(f"{key}={value!r}; valid: an integer >= {lo}")
    return v


def _onoff(key: str, value) -> bool:
    if isinstance(value, bool):
        return value
    v = str(value).lower()
    if v in ("on", "true", "1", "yes"):
        return True
    if v in ("off", "false", "0", "no"):
        return False
    raise InputError(f"{key}={value!r}; valid: on, off")


class VLLMV1(EnginePolicy):
    name = "vllm"
    source = "vLLM 0.10-0.12 V1 engine (vllm/engine/arg_utils.py defaults, vllm/v1/core/sched/scheduler.py)"
    options = {"async_scheduling": ("on", "off")}

    def defaults(self, device, tp):
        gib = float(device.hbm_bytes or 0) / 2**30
        # arg_utils.py: the OpenAI server on GPUs with >= 70 GiB (not A100) uses 8192 / 1024
        big = gib >= 70 and "a100" not in device.name
        return [TokenBudget(8192 if big else 2048), MaxRunning(1024 if big else 256),
                ChunkedPrefill(True), PreemptNewest(), AsyncScheduling(False), PrefixCache(True),
                QueueOrder("fcfs"), KVMemory("vllm", 0.9, 16)]

    def option(self, key, value):
        if key == "async_scheduling":
            return AsyncScheduling(_onoff(key, value))
        raise InputError(f"option {key!r} does not apply to vllm; valid: {', '.join(self.options)}")


class SGLang(EnginePolicy):
    name = "sglang"
    source = "SGLang 0.4-0.5 ServerArgs (python/sglang/srt/server_args.py)"
    options = {"overlap_scheduler": ("on", "off"), "schedule_policy": ("fcfs", "lpm"),
               "enable_mixed_chunk": ("on", "off"), "max_prefill_tokens": ("an integer >= 1",),
               "recv_interval": ("an integer >= 1",)}

    def defaults(self, device, tp):
        gib = float(device.hbm_bytes or 0) / 2**30
        # server_args.py: chunked_prefill_size by GPU memory; mem_fraction_static by tp
        chunk = 2048 if gib < 35 else 8192 if gib < 160 else 16384
        frac = 0.88 if tp < 2 else 0.87 if tp < 4 else 0.85 if tp < 8 else 0.81 if tp < 16 else 0.79
        return [TokenBudget(chunk), MaxRunning(1024), ChunkedPrefill(True), PrefillFirst(),
                NewTokenRatio(), OverlapScheduler(True), PrefixCache(True), QueueOrder("fcfs"),
                KVMemory("sglang", frac, 1)]

    def option(self, key, value):
        if key == "overlap_scheduler":
            return OverlapScheduler(_onoff(key, value))
        if key == "enable_mixed_chunk":
            return MixedChunk(_onoff(key, value))
        if key == "max_prefill_tokens":
            return MaxPrefillTokens(_integer(key, value, 1))
        if key == "recv_interval":
            return RecvInterval(_integer(key, value, 1))
        if key == "schedule_policy":
            if value not in self.options[key]:
                raise InputError(f"schedule_policy={value!r}; valid: {', '.join(self.options[key])}")
            return QueueOrder(value)
        raise InputError(f"option {key!r} does not apply to sglang; valid: {', '.join(self.options)}")


class TRTLLM(EnginePolicy):
    name = "trtllm"
    source = "TensorRT-LLM 1.0 trtllm-serve, PyTorch backend (llmapi/llm_args.py defaults)"
    options = {"capacity_scheduler": ("guaranteed_no_evict", "max_utilization"),
               "overlap_scheduler": ("on", "off"),
               "batch_wait_timeout_iters": ("an integer >= 0",),
               "batch_wait_max_tokens_ratio": ("a number in [0, 1]",)}

    def defaults(self, device, tp):
        # llm_args.py: max_batch_size 2048, max_num_tokens 8192, enable_chunked_prefill False,
        # CapacitySchedulerPolicy.GUARANTEED_NO_EVICT, disable_overlap_scheduler False,
        # tokens_per_block 32, enable_block_reuse True, free_gpu_memory_fraction 0.9
        return [TokenBudget(8192), MaxRunning(2048), ChunkedPrefill(False), GuaranteedNoEvict(),
                OverlapScheduler(True), PrefixCache(True), QueueOrder("fcfs"),
                KVMemory("trtllm", 0.9, 32)]

    def option(self, key, value):
        if key == "capacity_scheduler":
            v = str(value).lower()
            if v == "guaranteed_no_evict":
                return GuaranteedNoEvict()
            if v == "max_utilization":
                return MaxUtilization()
            raise InputError(f"capacity_scheduler={value!r}; valid: {', '.join(self.options[key])}")
        if key == "overlap_scheduler":
            return OverlapScheduler(_onoff(key, value))
        if key == "batch_wait_timeout_iters":
            return BatchWait(timeout_iters=_integer(key, value, 0))
        if key == "batch_wait_max_tokens_ratio":
            try:
                ratio = float(str(value))
            except ValueError:
                ratio = -1.0
            if not 0.0 <= ratio <= 1.0:
                raise InputError(f"batch_wait_max_tokens_ratio={value!r}; valid: a number in [0, 1]")
            return BatchWait(max_tokens_ratio=ratio)
        raise InputError(f"option {key!r} does not apply to trtllm; valid: {', '.join(self.options)}")


ENGINE_POLICIES: dict[str, EnginePolicy] = {e.name: e for e in (VLLMV1(), SGLang(), TRTLLM())}
# options engine_config accepts besides the EngineConfig fields
ENGINE_OPTIONS = ("async_scheduling", "overlap_scheduler", "capacity_scheduler", "schedule_policy",
                  "batch_wait_timeout_iters", "batch_wait_max_tokens_ratio", "enable_mixed_chunk",
                  "max_prefill_tokens", "recv_interval")


def describe(cfg) -> list[str]:
    """The policies in force in `cfg`, by name, for reports ("which default was taken")."""
    out = [f"TokenBudget({cfg.max_num_batched_tokens})", f"MaxRunning({cfg.max_num_seqs})",
           f"ChunkedPrefill({'on' if cfg.chunked_prefill else 'off'}"
           f"{', chunk ' + str(cfg.chunk) if cfg.chunk else ''})"]
    if not cfg.mixed_batches:
        out.append("PrefillFirst")
    if cfg.max_prefill_tokens:
        out.append(f"MaxPrefillTokens({cfg.max_prefill_tokens})")
    if cfg.recv_interval > 1:
        out.append(f"RecvInterval({cfg.recv_interval})")
    out.append({"full": "GuaranteedNoEvict", "ratio": "NewTokenRatio"}.get(
        cfg.kv_reservation, "MaxUtilization" if cfg.capacity_scheduler == "max_utilization" else "PreemptNewest"))
    if cfg.extra_step:
        out.append("AsyncScheduling" if cfg.engine == "vllm" else "OverlapScheduler")
    if cfg.batch_wait_iters > 0:
        out.append(f"BatchWait({cfg.batch_wait_iters} passes, {cfg.batch_wait_ratio:g} x max tokens)")
    out.append(f"PrefixCache({'on' if cfg.prefix_caching else 'off'})")
    out.append(f"QueueOrder({cfg.schedule_policy})")
    return out
