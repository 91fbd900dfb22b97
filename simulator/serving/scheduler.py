"""Iteration-level scheduling of one replica: which requests run in the next forward pass.

`Scheduler` follows the vLLM v1 scheduler (vllm/v1/core/sched/scheduler.py), with the switches
other engines need (`EngineConfig`):
- one token budget per iteration (`max_num_batched_tokens`) shared by decodes and prefills; the
  running requests go first (each decode takes one token), then the waiting queue in FCFS order
  while the budget, `max_num_seqs` and the KV cache allow (Orca iteration-level batching, Yu et al.
  OSDI'22);
- chunked prefill (Sarathi-Serve, Agrawal et al. OSDI'24; DeepSpeed-FastGen Dynamic SplitFuse): a
  prompt is split into chunks that fill the budget left by decodes, at most `chunk` tokens each;
  with chunking off a prompt is admitted only whole;
- paged KV blocks allocated as tokens are written; when a running request cannot get a block, the
  newest running request is preempted and later recomputed (vLLM v1 preemption by recompute);
  `kv_reservation="full"` instead reserves prompt + output blocks at admission and never preempts
  (TensorRT-LLM GUARANTEED_NO_EVICT);
- `mixed_batches=False` runs prefill-only iterations whenever a prefill can be scheduled and
  pauses decodes meanwhile (SGLang's default scheduler without --enable-mixed-chunk);
- `max_prefill_tokens` (SGLang --max-prefill-tokens): after the first prompt of a pass, a prompt
  joins only while its tokens are below the prompt tokens left of that cap;
  `kv_reservation="ratio"` admits a prompt only if the blocks left cover a share of the running
  requests' remaining output (SGLang PrefillAdder: new_token_ratio from 0.7, decaying by
  (0.7 − 0.1)/600 per decode step to 0.1, back to 0.7 after a retraction);
- the engine loop decides its next pass before a closed-loop client's answer to the last pass's
  output can arrive: a request added inside `complete` joins one pass later than one queued
  before it (two with an extra step), unless the engine has nothing else to run (`add`).

Decoding requests are not touched one by one: every decode iteration advances all of them by a
token, so a request's position is (its KV length when it joined) + (decode iterations since);
block needs, KV totals and finishing iterations follow in O(1) per iteration (counts per block
phase, a sum, and a heap of finishing iterations).
"""
from __future__ import annotations

import heapq
from collections import deque
from dataclasses import asdict, dataclass, replace

from hwmodels.devices import Device
from hwmodels.errors import InputError
from simulator.serving.kv_cache import KVCache
from simulator.serving.policies import ENGINE_OPTIONS, ENGINE_POLICIES, LPM_FALLBACK_QUEUE
from simulator.serving.workload import Request

ENGINES = ("vllm", "sglang", "trtllm")
# SGLang global_config / ServerArgs: init_new_token_ratio 0.7, min_new_token_ratio 0.1,
# new_token_ratio_decay (0.7 − 0.1) / 600 per decode step.
NEW_TOKEN_RATIO_INIT, NEW_TOKEN_RATIO_MIN = 0.7, 0.1
NEW_TOKEN_RATIO_DECAY = (NEW_TOKEN_RATIO_INIT - NEW_TOKEN_RATIO_MIN) / 600


@dataclass(frozen=True)
class EngineConfig:
    """Scheduling and memory knobs of one serving engine (defaults: `engine_config`)."""
    engine: str = "vllm"
    max_num_seqs: int = 1024
    max_num_batched_tokens: int = 8192
    chunk: int = 0  # most prompt tokens computed per iteration (Sarathi chunk); 0 = the budget
    chunked_prefill: bool = True
    mixed_batches: bool = True
    kv_reservation: str = "incremental"  # "full" (reserve prompt + output) or "ratio" (SGLang)
    prefix_caching: bool = True
    block_size: int = 16
    memory_policy: str = "vllm"
    memory_fraction: float = 0.9
    kv_blocks: int | None = None  # pin the pool size instead of deriving it from memory
    # a request that arrives while a pass runs is first scheduled one pass later (vLLM async
    # scheduling, TRT-LLM / SGLang overlap scheduler: the next batch is built before this one ends)
    extra_step: bool = False
    capacity_scheduler: str = ""  # TRT-LLM name of the KV policy ("" elsewhere)
    schedule_policy: str = "fcfs"  # waiting-queue order: fcfs, or lpm (SGLang longest prefix match)
    # TRT-LLM batch waiting (policies.BatchWait): new prompts are held back up to this many passes
    # (0 = off) while the pass's tokens stay below batch_wait_ratio x max_num_batched_tokens
    batch_wait_iters: int = 0
    batch_wait_ratio: float = 0.0
    # SGLang --max-prefill-tokens (policies.MaxPrefillTokens): prompt tokens one prefill batch may
    # take; a prompt after the first joins only if its tokens are below what is left (0 = no cap)
    max_prefill_tokens: int = 0
    # SGLang --scheduler-recv-interval (policies.RecvInterval): arrivals are received into the
    # waiting queue only every this many decode passes (1 = every pass)
    recv_interval: int = 1
    # KV blocks a request takes for its recurrent (Gated DeltaNet, Mamba-2) state on admission, where state and KV
    # share one pool (kv_cache.KVPool.state_blocks; 0 for attention-only models)
    state_blocks: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def engine_config(engine: str, device: Device, tp: int, **overrides) -> EngineConfig:
    """An engine's documented defaults on `device` (its policies in simulator/serving/policies.py),
    then `overrides` (None values ignored): EngineConfig fields, or the engine options
    `async_scheduling` (vllm), `overlap_scheduler` (sglang, trtllm), `capacity_scheduler`
    (trtllm: guaranteed_no_evict | max_utilization), `schedule_policy` (sglang: fcfs | lpm),
    `enable_mixed_chunk`, `max_prefill_tokens` and `recv_interval` (sglang).

    vllm   0.10-0.12 EngineArgs: on GPUs with >= 70 GiB (not A100) the OpenAI server uses
           max_num_batched_tokens 8192 and max_num_seqs 1024, else 2048 and 256; chunked prefill
           and prefix caching on; block 16; gpu_memory_utilization 0.9; async scheduling off.
    sglang 0.4-0.5 ServerArgs: chunked_prefill_size 2048 below 35 GB, 8192 below 160 GB, else
           16384; no mixed chunks; page size 1; radix cache on; mem_fraction_static 0.88/0.87/
           0.85/0.81/0.79 for tp 1/2/4/8/16; overlap schedule on; schedule_policy fcfs.
    trtllm 1.0 trtllm-serve: max_batch_size 2048, max_num_tokens 8192, chunked prefill off,
           GUARANTEED_NO_EVICT, tokens_per_block 32, block reuse on, free_gpu_memory_fraction 0.9,
           overlap scheduler on.
    """
    pol = ENGINE_POLICIES.get(engine)
    if pol is None:
        raise InputError(f"unknown serving engine {engine!r}; valid: {', '.join(ENGINES)}")
    cfg = EngineConfig(engine)
    for p in pol.defaults(device, tp):
        cfg = p.apply(cfg)
    overrides = dict(overrides)
    for key in ENGINE_OPTIONS:
        value = overrides.pop(key, None)
        if value is not None:
            cfg = pol.option(key, value).apply(cfg)
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    if cfg.max_num_seqs < 1 or cfg.max_num_batched_tokens < 1 or cfg.block_size < 1:
        raise InputError("max_batch, max_tokens and the block size must be >= 1")
    if cfg.max_num_batched_tokens < cfg.max_num_seqs:
        # vLLM SchedulerConfig refuses this too: every running request must fit a decode step
        raise InputError(f"max_tokens={cfg.max_num_batched_tokens} must be >= max_batch="
                         f"{cfg.max_num_seqs} (each running request decodes one token per step)")
    if cfg.kv_reservation not in ("incremental", "full", "ratio"):
        raise InputError(f"kv_reservation={cfg.kv_reservation!r}; valid: incremental, full, ratio")
    if cfg.schedule_policy not in ("fcfs", "lpm"):
        raise InputError(f"schedule_policy={cfg.schedule_policy!r}; valid: fcfs, lpm")
    if cfg.chunk < 0:
        raise InputError(f"chunk={cfg.chunk} must be >= 0 (0 = chunked prefill off)")
    if cfg.max_prefill_tokens < 0:
        raise InputError(f"max_prefill_tokens={cfg.max_prefill_tokens} must be >= 0 (0 = no cap)")
    if not 0 < cfg.memory_fraction <= 1:
        raise InputError(f"GPU memory fraction {cfg.memory_fraction} must be in (0, 1]")
    # the EngineConfig fields take what the options batch_wait_timeout_iters and
    # batch_wait_max_tokens_ratio take (TensorRT-LLM llm_args.py refuses the rest)
    if cfg.batch_wait_iters < 0:
        raise InputError(f"batch_wait_iters={cfg.batch_wait_iters} must be >= 0 (0 = no batch waiting)")
    if not 0.0 <= cfg.batch_wait_ratio <= 1.0:
        raise InputError(f"batch_wait_ratio={cfg.batch_wait_ratio} must be in [0, 1]")
    if cfg.batch_wait_iters > 0 and cfg.chunked_prefill:
        # py_executor.py counts whole prompts (get_tokens): modelled for whole-prompt admission only
        raise InputError("batch waiting (batch_wait_timeout_iters > 0) needs chunked prefill off")
    return cfg


class Batch:
    """One forward pass: prefill chunks (request, tokens, context already in KV) and decodes."""
    __slots__ = ("prefills", "num_decode", "decode_kv_tokens", "prefill_tokens", "samples")

    def __init__(self):
        self.prefills: list = []
        self.num_decode = 0
        self.decode_kv_tokens = 0  # Σ over decodes of the tokens each attends to
        self.prefill_tokens = 0
        self.samples = 0  # rows of the LM head: decodes + prefills that finish this pass

    @property
    def tokens(self) -> int:
        return self.prefill_tokens + self.num_decode

    def __bool__(self):
        return bool(self.prefills) or self.num_decode > 0


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class Scheduler:
    """Waiting queue, running set and KV blocks of one replica (see module docstring).

    `on_token(req, now, first)` and `on_finish(req, now)` are called as tokens come out."""

    def __init__(self, cfg: EngineConfig, kv: KVCache, on_finish, on_first_token=None,
                 on_stall=None):
        self.cfg = cfg
        self.kv = kv
        self.bs = kv.block_size
        self.full = cfg.kv_reservation == "full"
        self.waiting: deque[Request] = deque()
        self.running: dict[int, Request] = {}  # admission order
        self.prefilling: list[Request] = []  # running requests still computing their prompt
        self.n_dec = 0
        self.phase = [0] * self.bs  # decoders by the decode iteration (mod bs) that needs a block
        self.dec_sum = 0  # Σ (l0 − k0) over decoders
        self.dec_left = 0  # Σ (output_len − generated at join + k0) over decoders
        self.ratio = NEW_TOKEN_RATIO_INIT
        self.reserve = cfg.kv_reservation == "ratio"
        self.finish_heap: list = []  # (decode iteration, seq, request)
        self.kd = 0  # decode iterations so far
        self.last_decode_end = 0.0
        self.preemptions = 0
        self.rejected: list[Request] = []
        self.on_finish = on_finish
        self.on_first_token = on_first_token
        self.on_stall = on_stall
        self._seq = 0
        self.chunk_limit = cfg.chunk if cfg.chunk > 0 else 1 << 62
        # extra step (async / overlap scheduling): requests added while pass p runs wait in
        # `deferred` (stamped with the pass count) and join the queue for pass p + 2
        self.extra = cfg.extra_step
        self.deferred: list = []
        self.idle_take = None  # the pass count when an idle engine last took one deferred request
        self.passes = 0  # passes scheduled so far (a run of decode passes counts each)
        self.in_flight = False  # a pass has been scheduled and not completed yet
        # inside `complete`: a request added now is a client's answer to an output of the pass
        # that just ended (closed loop), which reaches the engine only after its next pass has
        # been decided (see `add`)
        self.completing = False
        self.lpm = cfg.schedule_policy == "lpm"
        self.bw_count = 0  # passes the waiting prompts have been held back (batch waiting)

    # ---- state ---------------------------------------------------------------------------------
    def add(self, req: Request) -> bool:
        """Queue a request; False (and the request is rejected) if it can never fit the KV cache."""
        if not req.target:
            req.target = req.prompt_len
        if _cdiv(req.prompt_len + req.output_len, self.bs) + self.cfg.state_blocks > self.kv.num_blocks:
            self.rejected.append(req)
            return False
        if self.completing:
            # An answer to this pass's output (a closed-loop client's next request) comes back
            # after a round trip (stream the token, client, HTTP, tokenise), while the engine loop
            # decides its next pass as soon as it has processed the outputs: vLLM
            # vllm/v1/engine/core.py run_busy_loop (_process_input_queue takes only what is
            # queued, then _process_engine_step schedules); TRT-LLM py_executor.py
            # _executor_loop(_overlap) (_fetch_new_requests right after _handle_responses /
            # _process_previous_batch); SGLang scheduler.py event_loop(_overlap)
            # (recv_requests, then get_next_batch_to_run). So it misses that pass: the next one
            # without an extra step, the one after it with one (pass n+1 was already in
            # flight when pass n's outputs came out). An idle engine takes it at once.
            self.deferred.append((self.passes + (1 if self.extra else 0), req))
        elif self.extra and self.in_flight:
            # the next pass was scheduled when the one in flight started (vLLM
            # async_scheduler.py; TRT-LLM _executor_loop_overlap): this request misses it
            self.deferred.append((self.passes, req))
        else:
            self.waiting.append(req)
        return True

    def has_work(self) -> bool:
        return bool(self.running) or bool(self.waiting) or bool(self.deferred)

    @property
    def outstanding(self) -> int:
        return len(self.running) + len(self.waiting) + len(self.deferred)

    def waiting_tokens(self) -> int:
        return (sum(r.target - r.computed for r in self.waiting)
                + sum(r.target - r.computed for _, r in self.deferred))

    def _release_deferred(self) -> None:
        """Queue the deferred requests that were added before the pass now being built started.
        When none is due and nothing else could run, the engine would idle: it takes the first
        deferred request at once, and the others reach it while that pass runs."""
        keep, due = [], False
        for stamp, req in self.deferred:
            if stamp < self.passes:
                self.waiting.append(req)
                due = True
            else:
                keep.append((stamp, req))
        if keep and not due and not self.running and not self.waiting:
            if self.idle_take is not None and self.idle_take < self.passes:
                # The engine went idle again after the pass it started alone (a prefill-only
                # replica's requests leave after one pass): the rest of that burst arrived while
                # the pass ran, and an idle loop has no pass in flight to make them wait for,
                # so it takes them all now. (Taking one per pass would serialise a burst of
                # thousands of prompts.)
                self.waiting.extend(req for _, req in keep)
                keep = []
                self.idle_take = None
            else:
                # An idle engine loop blocks on its input queue and starts a pass with what has
                # arrived (vllm/v1/engine/core.py _process_input_queue: input_queue.get(), then
                # what is already queued); the client answers one request after another (aiperf's
                # serial credit issue, ai-dynamo/aiperf issue #1424; one API-server thread takes
                # them in, vLLM issue #25301), so the first starts alone and the others arrive
                # while its pass runs: they join the pass after it (two after with an extra step).
                self.waiting.append(keep[0][1])
                later = self.passes + (1 if self.extra else 0)
                keep = [(later, req) for _, req in keep[1:]]
                self.idle_take = self.passes
        elif due:
            self.idle_take = None
        self.deferred = keep

    # ---- decoders ------------------------------------------------------------------------------
    def _join_decode(self, req: Request) -> None:
        k0, l0 = self.kd, req.computed
        req.dec_k0, req.dec_l0 = k0, l0
        self.n_dec += 1
        self.phase[(k0 - l0) % self.bs] += 1
        self.dec_sum += l0 - k0
        self.dec_left += req.output_len - req.generated + k0
        self._seq += 1
        req.seq = self._seq
        heapq.heappush(self.finish_heap, (k0 + req.output_len - req.generated - 1, self._seq, req))

    def _leave_decode(self, req: Request, done: int) -> None:
        """Take a decoder out after `done` decode iterations (from dec_k0) and bring its
        counters up to date."""
        k0, l0 = req.dec_k0, req.dec_l0
        self.n_dec -= 1
        self.phase[(k0 - l0) % self.bs] -= 1
        self.dec_sum -= l0 - k0
        self.dec_left -= req.output_len - req.generated + k0
        req.seq = -1
        req.generated += done
        req.computed = l0 + done
        if not self.full:
            req.blocks += _cdiv(l0 + done, self.bs) - _cdiv(l0, self.bs)

    def _release(self, req: Request) -> None:
        self.kv.release(req.blocks)
        req.blocks = 0
        if req.held_keys:
            self.kv.release_keys(req.held_keys)
            req.held_keys = ()
        req.shared_blocks = 0

    # ---- preemption ----------------------------------------------------------------------------
    def _preempt_newest(self, now: float) -> Request:
        req = self.running.pop(next(reversed(self.running)))
        if req in self.prefilling:
            self.prefilling.remove(req)
        else:
            done = self.kd - req.dec_k0
            if done > 0:
                req.last_token_s = self.last_decode_end
            self._leave_decode(req, done)
        self._release(req)
        req.computed = 0
        req.cached = 0
        req.target = req.prompt_len + req.generated  # recompute prompt and output so far
        req.preemptions += 1
        self.preemptions += 1
        self.ratio = NEW_TOKEN_RATIO_INIT
        self.waiting.appendleft(req)
        return req

    # ---- one iteration -------------------------------------------------------------------------
    def schedule(self, now: float) -> Batch:
        cfg, kv, bs = self.cfg, self.kv, self.bs
        if self.deferred:
            self._release_deferred()
        if self.lpm and kv.prefix_caching and 1 < len(self.waiting) <= LPM_FALLBACK_QUEUE:
            # SGLang schedule_policy.py lpm: longest cached prefix first (a stable sort keeps
            # FCFS among equals)
            self.waiting = deque(sorted(self.waiting, key=lambda r: -kv.match(r.prefix_keys)
                                        if r.computed == 0 and r.prefix_keys else 0))
        batch = Batch()
        budget = cfg.max_num_batched_tokens
        pbudget = self.chunk_limit if cfg.chunked_prefill else budget  # prompt tokens this pass
        prefill_first = not cfg.mixed_batches and (self.prefilling or self._admissible())
        if self.n_dec and not prefill_first:
            self._schedule_decodes(batch, now)
            budget -= batch.num_decode
        # SGLang PrefillAdder rem_input_tokens: max_prefill_tokens, less the running decodes when
        # they share the pass (mixed chunk); every prefill chunk of the pass spends it
        ptok = cfg.max_prefill_tokens - batch.num_decode if cfg.max_prefill_tokens else None
        # running prefills, oldest first; a chunk shrinks to the blocks that are free (requests
        # are preempted only to make room for decodes, or when nothing else could run)
        for req in list(self.prefilling):
            if budget <= 0 or pbudget <= 0:
                break
            if req.id not in self.running:
                continue
            chunk = min(req.target - req.computed, budget, pbudget)
            if not self.full:
                have = req.blocks + req.shared_blocks - cfg.state_blocks
                while (have + kv.available()) * bs - req.computed <= 0 and not batch:
                    if self._preempt_newest(now) is req:
                        break
                if req.id not in self.running:
                    continue
                chunk = min(chunk, (have + kv.available()) * bs - req.computed)
                if chunk <= 0 or (not cfg.chunked_prefill and req.computed + chunk < req.target):
                    continue
                need = max(0, _cdiv(req.computed + chunk, bs) - have)
                kv.allocate(need)
                req.blocks += need
            batch.prefills.append((req, chunk, req.computed))
            batch.prefill_tokens += chunk
            budget -= chunk
            pbudget -= chunk
            if ptok is not None:
                ptok -= chunk
        # waiting queue, FCFS
        waiting = self.waiting
        decode_only = not cfg.mixed_batches and batch.num_decode > 0
        while waiting and budget > 0 and len(self.running) < cfg.max_num_seqs:
            req = waiting[0]
            if decode_only and req.computed < req.target:
                break
            if req.computed >= req.target:  # KV arrived from a prefill replica (disaggregated)
                need = cfg.state_blocks + (_cdiv(req.computed, bs) if not self.full
                                           else _cdiv(req.prompt_len + req.output_len, bs))
                if not kv.allocate(need):
                    break
                waiting.popleft()
                req.blocks = need
                self.running[req.id] = req
                self._join_decode(req)
                continue
            matched = 0
            if req.computed == 0 and req.prefix_keys and kv.prefix_caching:
                matched = kv.match(req.prefix_keys)
            per_key = req.prefix_key_tokens // bs
            shared_blocks = matched * per_key
            cached = shared_blocks * bs
            start = max(req.computed, cached)
            remaining = req.target - start
            if pbudget <= 0:
                break
            if ptok is not None and batch.prefills and remaining >= ptok:
                # sglang schedule_policy.py PrefillAdder.add_one_req: "if real_input_tokens >=
                # self.rem_input_tokens and len(self.can_run_list) != 0: return OTHER" (the
                # first prompt of a batch is always taken)
                break
            chunk = min(remaining, budget, pbudget)
            if not cfg.chunked_prefill and chunk < remaining:
                if batch.prefills or batch.num_decode or remaining <= cfg.max_num_batched_tokens:
                    break
                chunk = remaining  # a prompt longer than the budget runs alone
            if self.full:
                need = _cdiv(req.prompt_len + req.output_len, bs) - shared_blocks
            else:
                need = _cdiv(start + chunk, bs) - shared_blocks
            need += cfg.state_blocks
            if need > kv.available() - (self._reserved_blocks() if self.reserve else 0):
                break
            if matched:
                kv.acquire(req.prefix_keys[:matched])
                req.held_keys = req.prefix_keys[:matched]
                kv.hits += cached
            if req.computed == 0:
                kv.lookups += req.prompt_len
            kv.allocate(need)
            waiting.popleft()
            req.blocks = need
            req.shared_blocks = shared_blocks
            req.cached = cached
            req.computed = start
            self.running[req.id] = req
            self.prefilling.append(req)
            batch.prefills.append((req, chunk, start))
            batch.prefill_tokens += chunk
            budget -= chunk
            pbudget -= chunk
            if ptok is not None:
                ptok -= chunk
        if cfg.batch_wait_iters > 0 and batch.num_decode and batch.prefills:
            self._batch_wait(batch)
        if not batch and self.n_dec:  # prefill-first found nothing it could run
            self._schedule_decodes(batch, now)
        batch.samples = batch.num_decode + sum(
            1 for req, chunk, start in batch.prefills if start + chunk >= req.target)
        if batch:
            self.passes += 1
            self.in_flight = True
        return batch

    def _batch_wait(self, batch: Batch) -> None:
        """TRT-LLM batch waiting (py_executor.py _waiting_requests): with decodes running, the
        prompts picked for this pass run only once batch_wait_iters passes have held them back or
        the pass's tokens (whole prompts + one per decode) reach batch_wait_ratio x the token
        budget; otherwise they go back to the head of the queue and the pass decodes only."""
        cfg = self.cfg
        tokens = sum(req.target for req, _, _ in batch.prefills) + batch.num_decode
        if self.bw_count >= cfg.batch_wait_iters or tokens >= cfg.batch_wait_ratio * cfg.max_num_batched_tokens:
            self.bw_count = 0
            return
        self.bw_count += 1
        for req, chunk, start in reversed(batch.prefills):
            self.running.pop(req.id, None)
            if req in self.prefilling:
                self.prefilling.remove(req)
            self._release(req)
            # undo the admission's prefix-cache accounting (it runs again when admitted)
            self.kv.lookups -= req.prompt_len
            self.kv.hits -= req.cached
            req.computed = 0
            req.cached = 0
            self.waiting.appendleft(req)
        batch.prefills = []
        batch.prefill_tokens = 0

    def _reserved_blocks(self) -> int:
        """Blocks kept for the running requests' future tokens (SGLang new_token_ratio)."""
        left = self.dec_left - self.n_dec * self.kd  # output tokens the decoders still owe
        return int(self.ratio * left) // self.bs

    def _schedule_decodes(self, batch: Batch, now: float) -> None:
        """Every decoding request takes one token; blocks for those crossing a block boundary,
        preempting the newest running requests while they do not fit."""
        if not self.full:
            need = self.phase[self.kd % self.bs]
            while need > self.kv.available() and self.running:
                self._preempt_newest(now)
                need = self.phase[self.kd % self.bs]
            self.kv.allocate(need)
        batch.num_decode = self.n_dec
        batch.decode_kv_tokens = self.dec_sum + self.n_dec * (self.kd + 1)

    # ---- runs of identical decode iterations -------------------------------------------------
    def decode_run_length(self, limit: int = 1 << 30) -> int:
        """How many decode-only iterations, starting with the one just scheduled, can run before
        anything but token counts changes: up to and including the next finishing iteration,
        while the blocks the decoders cross into stay available, and with no prompt waiting that
        could be admitted."""
        if self.prefilling or self.waiting or self.deferred or not self.n_dec:
            return 1
        n = min(limit, self.finish_heap[0][0] - self.kd + 1) if self.finish_heap else limit
        if n <= 1 or self.full:
            return max(1, n)
        bs, avail, ph = self.bs, self.kv.available(), self.phase
        # blocks needed by iterations kd+1 .. kd+m: every bs iterations each decoder needs one
        per_cycle = self.n_dec
        if per_cycle == 0:
            return n
        full = avail // per_cycle
        m = min(n - 1, full * bs)
        left = avail - (m // bs) * per_cycle
        j = m
        while j < n - 1:  # the partial cycle, residue by residue
            need = ph[(self.kd + j + 1) % bs]
            if need > left:
                break
            left -= need
            j += 1
        return 1 + j

    def skip_decode_iterations(self, n: int) -> None:
        """Advance every decoder by `n` iterations that were costed together with the one already
        scheduled (`decode_run_length` guarantees no finish and enough blocks in between)."""
        if n <= 0:
            return
        if not self.full:
            bs, kd, ph = self.bs, self.kd, self.phase
            cycles, rest = divmod(n, bs)
            need = cycles * self.n_dec + sum(ph[(kd + 1 + j) % bs] for j in range(rest))
            self.kv.allocate(need)
        self.kd += n
        self.passes += n
        if self.reserve:
            self.ratio = max(NEW_TOKEN_RATIO_MIN, self.ratio - n * NEW_TOKEN_RATIO_DECAY)

    def _admissible(self) -> bool:
        """Whether the head of the waiting queue could start a prefill now (prefill-first mode)."""
        if not self.waiting or len(self.running) >= self.cfg.max_num_seqs:
            return False
        req = self.waiting[0]
        if req.computed >= req.target:
            return False
        tokens = min(req.target, self.cfg.max_num_batched_tokens)
        free = self.kv.available() - (self._reserved_blocks() if self.reserve else 0)
        return _cdiv(tokens, self.bs) + self.cfg.state_blocks <= free

    def complete(self, batch: Batch, now: float) -> None:
        """Apply the results of `batch`, which ended at `now`."""
        self.completing = True
        try:
            self._complete(batch, now)
        finally:
            self.completing = False

    def _complete(self, batch: Batch, now: float) -> None:
        if batch.num_decode:
            kd = self.kd
            heap = self.finish_heap
            while heap and heap[0][0] <= kd:
                _, seq, req = heapq.heappop(heap)
                if seq != req.seq:
                    continue
                self._leave_decode(req, kd - req.dec_k0 + 1)
                self._finish(req, now)
            self.kd = kd + 1
            self.last_decode_end = now
            if self.reserve:
                self.ratio = max(NEW_TOKEN_RATIO_MIN, self.ratio - NEW_TOKEN_RATIO_DECAY)
        for req, chunk, _ in batch.prefills:
            if req.id not in self.running:
                continue
            req.computed += chunk
            if req.computed < req.target:
                continue
            self.prefilling.remove(req)
            if req.prefix_keys and self.kv.prefix_caching:
                per_key = req.prefix_key_tokens // self.bs
                new = self.kv.insert(req.prefix_keys[len(req.held_keys):], per_key)
                if new:
                    req.blocks -= len(new) * per_key
                    req.shared_blocks += len(new) * per_key
                    req.held_keys = req.held_keys + new
            req.generated += 1
            if req.generated == 1:
                if self.on_first_token is not None:
                    self.on_first_token(req, now)
                else:
                    req.first_token_s = now
            elif self.on_stall is not None:
                self.on_stall(req, now)
            req.last_token_s = now
            if req.generated >= req.output_len or req.prefill_only:
                self._finish(req, now)
            else:
                self._join_decode(req)
        self.in_flight = False

    def _finish(self, req: Request, now: float) -> None:
        self.running.pop(req.id, None)
        self._release(req)
        req.finish_s = now
        req.last_token_s = now
        self.on_finish(req, now)

    # ---- introspection -------------------------------------------------------------------------
    def decode_position(self, req: Request) -> int:
        """Tokens generated so far by a decoding request (for checks and migration)."""
        return req.generated + (self.kd - req.dec_k0)
