"""The serving discrete-event simulation (simpy): `Replica`s that run iterations, a `Router` that
spreads arrivals over them, optional prefill/decode disaggregation with KV transfers, and the
`ServingPlan` that says how many replicas of which shape run where.

    report = simulate(load_model("llama3.1-8b"),
                      parse_serving_plan("tp=1,replicas=4", load_cluster("dgx-h100")),
                      ServingWorkload(num_requests=2000, rate=RateSchedule.parse("20"),
                                      prompt_len=LengthDist.parse("uniform:128:2048"),
                                      output_len=LengthDist.parse("256")))

Each replica's loop reads like the engine it models: wait for work, let the scheduler build a
batch, run it for the time the cost layer gives, apply the results (tokens out, requests done).
Prefill/decode disaggregation (DistServe, Zhong et al. OSDI'24; Splitwise, Patel et al. ISCA'24):
prefill replicas compute the prompt and the first token, the KV cache then moves to a decode
replica over the cluster's links (one transfer at a time per receiving replica), and the first
token reaches the user when the decode replica has the KV (TTFT includes the transfer).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import simpy

from hwmodels.clusters import Cluster
from hwmodels.collectives import collective_s
from hwmodels.errors import InputError
from simulator.models import ModelSpec
from simulator.serving.costs import (iteration_cost, trt_engine_allreduce_workspace_bytes,
                                    trt_engine_fp8_context_fmha)
from simulator.serving.frontend import Frontend, frontend_costs
from simulator.serving.kv_cache import KVCache, kv_bytes_per_token, kv_pool
from simulator.serving.metrics import MetricsRecorder, ServingReport, build_report
from simulator.serving.router import Router
from simulator.serving.policies import describe as describe_policies
from simulator.serving.scheduler import Batch, EngineConfig, Scheduler, engine_config
from simulator.serving.workload import Request, RequestSource, ServingWorkload
from simulator.training import plan_commas

PLAN_KEYS = ("tp", "pp", "ep", "replicas", "max_batch", "max_tokens", "chunk",
             "prefill_tp", "prefill_pp", "prefill_replicas", "decode_tp", "decode_pp", "decode_replicas")


# ---- plans -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReplicaGroup:
    """`count` identical replicas of tp·pp·dp devices of `cluster`'s type; role both|prefill|decode.
    dp > 1: attention data parallelism, dp ranks of tp devices each (`DPReplica`), experts over ep."""
    cluster: Cluster
    tp: int = 1
    pp: int = 1
    ep: int = 1
    count: int = 1
    role: str = "both"
    dp: int = 1

    @property
    def devices(self) -> int:
        return self.tp * self.pp * self.dp * self.count


@dataclass(frozen=True)
class ServingPlan:
    """Replicas by device type and shape, batching limits and engine, router and precision."""
    groups: tuple
    max_batch: int | None = None  # max_num_seqs
    max_tokens: int | None = None  # max_num_batched_tokens
    chunk: int | None = None  # prompt tokens per iteration; 0 = chunked prefill off
    engine: str = "vllm"
    router: str = "round_robin"
    dtype: str = "bf16"
    kv_dtype: str | None = None
    prefix_caching: bool = True
    kv_blocks: int | None = None  # pinned KV pool per replica
    gpu_memory_utilization: float | None = None
    # router "size_class": prompt-length bounds of the classes and, per group, each replica's
    # share of every class (planner.serve_search sets them from its size-class ILP)
    class_bounds: tuple = ()
    class_shares: tuple = ()
    # engine options (simulator/serving/policies.py ENGINE_OPTIONS) as (key, value) pairs, e.g.
    # (("async_scheduling", "on"),) or (("capacity_scheduler", "max_utilization"),)
    engine_options: tuple = ()
    frontend: str = "off"  # API-server stage (simulator/serving/frontend.py): off | measured | published
    # TensorRT-LLM's TensorRT-engine flow (0.x, `trtllm-bench build` + `throughput`): its custom
    # all-reduce takes messages up to its IPC workspace only (costs.trt_engine_allreduce_workspace_bytes)
    trt_engine: bool = False
    # the routed experts: the checkpoint's MoE quantisation (a fused-MoE table dtype such as
    # fp8_block, w4a16_mxfp4, int4_wo; None: the compute dtype's usual ones) and the expert load
    # the measured kernel is read at (balanced, or the collector's power-law straggler rank)
    moe_quant: str | None = None
    moe_load: str = "power_law_1.01"

    @property
    def disaggregated(self) -> bool:
        return any(g.role != "both" for g in self.groups)

    @property
    def num_devices(self) -> int:
        return sum(g.devices for g in self.groups)

    def to_dict(self) -> dict:
        return {
            "replicas": [{"device": g.cluster.device.name, "cluster": g.cluster.name, "tp": g.tp,
                          "pp": g.pp, "ep": g.ep, "count": g.count, "role": g.role,
                          **({"dp": g.dp} if g.dp > 1 else {})} for g in self.groups],
            "max_batch": self.max_batch, "max_tokens": self.max_tokens, "chunk": self.chunk,
            "engine": self.engine, "router": self.router, "dtype": self.dtype,
            "kv_dtype": self.kv_dtype or ("bf16" if self.dtype in ("fp8", "fp4") else self.dtype),
            "prefix_caching": self.prefix_caching, "kv_blocks": self.kv_blocks,
            "disaggregated": self.disaggregated, "num_devices": self.num_devices,
            "engine_options": dict(self.engine_options), "frontend": self.frontend,
            "moe_quant": self.moe_quant, "moe_load": self.moe_load,
        }


def parse_serving_plan(text: str, cluster: Cluster, **options) -> ServingPlan:
    """A plan string (docs/design.md §4): `tp pp ep replicas max_batch max_tokens chunk`, or for
    disaggregation `prefill_tp prefill_replicas decode_tp decode_replicas` (and prefill_pp,
    decode_pp). Defaults: tp=pp=ep=replicas=1; batching limits from the engine.
    `options` set the other ServingPlan fields (engine, router, dtype, ...)."""
    vals: dict = {}
    for part in [p for p in str(text or "").split(",") if p.strip()]:
        if "=" not in part:
            raise InputError(f"plan item {part.strip()!r} is not key=value; keys: {', '.join(PLAN_KEYS)}")
        if part.count("=") > 1:
            raise InputError(f"plan item {part.strip()!r} holds several keys: separate plan keys with commas, "
                             f"e.g. {plan_commas(part)!r}")
        k, v = (x.strip() for x in part.split("=", 1))
        if k not in PLAN_KEYS:
            raise InputError(f"unknown plan key {k!r}; valid: {', '.join(PLAN_KEYS)}")
        if k in vals:
            raise InputError(f"plan key {k!r} given twice")
        if k == "chunk" and v.lower() in ("off", "none", "false"):
            v = "0"
        try:
            iv = int(v)
        except ValueError:
            raise InputError(f"plan {k}={v!r} must be an integer") from None
        if iv < (0 if k == "chunk" else 1):
            raise InputError(f"plan {k}={iv} must be {'>= 0' if k == 'chunk' else '>= 1'}")
        vals[k] = iv
    disagg = [k for k in vals if k.startswith(("prefill_", "decode_"))]
    if disagg:
        for k in ("tp", "pp", "replicas"):
            if k in vals:
                raise InputError(f"plan key {k!r} conflicts with disaggregation keys "
                                 f"({', '.join(disagg)}); use prefill_{k} / decode_{k}")
        groups = (ReplicaGroup(cluster, vals.get("prefill_tp", 1), vals.get("prefill_pp", 1),
                               vals.get("ep", 1), vals.get("prefill_replicas", 1), "prefill"),
                  ReplicaGroup(cluster, vals.get("decode_tp", 1), vals.get("decode_pp", 1),
                               vals.get("ep", 1), vals.get("decode_replicas", 1), "decode"))
    else:
        groups = (ReplicaGroup(cluster, vals.get("tp", 1), vals.get("pp", 1), vals.get("ep", 1),
                               vals.get("replicas", 1)),)
    return ServingPlan(groups, vals.get("max_batch"), vals.get("max_tokens"), vals.get("chunk"),
                       **options)


def place(groups, nodes_given: bool) -> tuple[list, list, list[str]]:
    """(first device of every replica, node count per group or None, notes), cluster by cluster:
    replicas in order, a replica that fits in a node never straddles two. Grows a cluster's node
    count when it is too small (unless the user fixed --nodes, then InputError)."""
    notes, out, used = [], [], {}
    for g in groups:
        c = g.cluster
        dpn = c.devices_per_node
        off = used.get(c.name, 0)
        for _ in range(g.count):
            size = g.tp * g.pp * g.dp
            if size <= dpn and off // dpn != (off + size - 1) // dpn:
                off = (off // dpn + 1) * dpn
            out.append(off)
            off += size
        used[c.name] = off
    resized = {}
    for g in groups:
        c = g.cluster
        need_nodes = math.ceil(used[c.name] / c.devices_per_node)
        if need_nodes > c.num_nodes:
            if nodes_given:
                raise InputError(f"the plan needs {used[c.name]} devices of {c.name} "
                                 f"({need_nodes} nodes); --nodes gives {c.num_nodes}")
            resized[c.name] = need_nodes
    if resized:
        notes.extend(f"cluster {n} sized to {k} node(s) to hold the plan" for n, k in resized.items())
    return out, [resized.get(g.cluster.name) for g in groups], notes


# ---- replicas ----------------------------------------------------------------------------------

# SGLang scheduler_recv_skipper.py: weight a loop adds for the batch it just ran
RECV_WEIGHT_DECODE = 1  # a decode-only batch (and a loop with no batch)
RECV_WEIGHT_PROMPT = 1000  # any batch with prompt tokens: the next loop always receives


class RecvSkipper:
    """SGLang's `--scheduler-recv-interval` (scheduler_recv_skipper.py SchedulerRecvSkipper): each
    scheduler loop adds the last batch's weight to a counter and receives new requests only when
    the counter reaches the interval, then restarts it from 0. A run of decode passes therefore
    receives every `interval` passes, at fixed positions set by the counter it started with."""

    def __init__(self, interval: int):
        self.interval, self.counter = interval, 0

    def tick(self, prompts: bool) -> bool:
        """One loop top after a batch (with prompts or not): whether it receives."""
        self.counter += RECV_WEIGHT_PROMPT if prompts else RECV_WEIGHT_DECODE
        if self.counter >= self.interval:
            self.counter = 0
            return True
        return False

    def next_receive(self, c0: int, k: int) -> int:
        """The first loop top at or after the k-th of a decode run begun with counter c0."""
        return k + (-(c0 + k)) % self.interval

    def last_receive(self, c0: int, k: int) -> int:
        """The last loop top at or before the k-th of such a run that receives (0: none)."""
        last = k - (c0 + k) % self.interval
        return last if last >= 1 else 0


class Replica:
    """One model instance (tp·pp devices) with its scheduler, KV cache and cost model."""

    def __init__(self, sim: "ServingSimulation", index: int, group: ReplicaGroup, cluster: Cluster,
                 offset: int, cfg: EngineConfig):
        self.sim, self.env, self.index = sim, sim.env, index
        self.group, self.cluster, self.offset, self.cfg = group, cluster, offset, cfg
        self.role = group.role
        model, plan = sim.model, sim.plan
        ar_max = trt_engine_allreduce_workspace_bytes(group.tp) if plan.trt_engine else None
        # trtllm-bench's FP8 engines are built with FP8 context FMHA (costs.py docstring)
        fp8_fmha = plan.trt_engine and trt_engine_fp8_context_fmha(plan.dtype, plan.kv_dtype)
        if group.dp > 1:  # attention DP: experts spread over all tp·dp devices
            self.costs = iteration_cost(model, cluster, group.tp, group.pp, group.ep, plan.dtype,
                                        plan.kv_dtype, cfg.engine, ar_max, dp=group.dp,
                                        fp8_context_fmha=fp8_fmha, moe_quant=plan.moe_quant,
                                        moe_load=plan.moe_load)
        else:
            self.costs = iteration_cost(model, cluster, group.tp, group.pp, group.ep, plan.dtype,
                                        plan.kv_dtype, cfg.engine, ar_max, fp8_context_fmha=fp8_fmha,
                                        moe_quant=plan.moe_quant, moe_load=plan.moe_load)
        # the KV pool of one attention-DP rank (of the replica without DP): its own memory after
        # its attention weights (over tp) and its share of the experts (over tp·dp)
        self.pool = kv_pool(model, cluster.device, group.tp, group.pp,
                            group.ep if group.dp == 1 else group.tp * group.dp, plan.dtype,
                            self.costs.kv_dtype, cfg.memory_policy, cfg.memory_fraction,
                            cfg.block_size, cfg.max_num_batched_tokens, cfg.max_num_seqs,
                            cfg.kv_blocks, where=f"replica {index} ({cluster.device.name}, tp={group.tp})",
                            decoder_workspace=plan.trt_engine, moe_quant=self.costs.moe_quant)
        if self.pool.state_bytes_per_request:
            # recurrent state (Gated DeltaNet, Mamba-2): a request runs only with a state slot (SGLang's separate
            # pool caps the running requests) or with its state's blocks (a shared pool)
            slots = self.pool.state_slots or cfg.max_num_seqs
            cfg = self.cfg = replace(cfg, max_num_seqs=min(cfg.max_num_seqs, slots),
                                     state_blocks=self.pool.state_blocks)
        self.kv = KVCache(self.pool.num_blocks, cfg.block_size, cfg.prefix_caching)
        self.scheduler = Scheduler(cfg, self.kv, on_finish=self._finished,
                                   on_first_token=self._first_token, on_stall=self._stall)
        fc = frontend_costs(plan.frontend) if group.role != "decode" else None
        self.frontend = Frontend(fc) if fc is not None else None
        # passes that run after an arrival before it can join: the one in flight, plus the one
        # already scheduled with async / overlap scheduling
        self.cut_after = 2 if cfg.extra_step else 1
        self.wake: simpy.Event | None = None
        self.busy_s = 0.0
        self.iterations = 0
        self.inbox = simpy.Resource(self.env, capacity=1)  # KV transfers arriving (disaggregated)
        self._idle_prefill: dict = {}
        self.in_run = False  # inside a run of decode iterations costed as one event
        # SGLang --scheduler-recv-interval: arrivals wait here, with their arrival time, until the
        # scheduler's next receive (idle loops receive at once: they take microseconds)
        self.recv = RecvSkipper(cfg.recv_interval) if cfg.recv_interval > 1 else None
        self.unreceived: list[tuple[float, Request]] = []
        self._run_c0 = 0  # the skipper's counter when the decode run in flight began
        self.proc = self.env.process(self.run())

    def submit(self, req: Request) -> None:
        req.replica = self.index
        if self.recv is not None:
            self.unreceived.append((self.env.now, req))
        elif not self.scheduler.add(req):
            self.sim.rejected(req)
            return
        if self.wake is not None and not self.wake.triggered:
            self.wake.succeed()
        elif self.in_run:
            self.in_run = False
            self.proc.interrupt()

    def kv_load(self) -> float:
        """Share of the pool in use or claimed by queued prompts (for the KV-aware router)."""
        s = self.scheduler
        queued = sum(r.target - r.computed for r in s.waiting) / self.kv.block_size
        queued += sum(r.target - r.computed for _, r in self.unreceived) / self.kv.block_size
        return (self.kv.used + queued) / self.kv.num_blocks

    def idle_prefill_s(self, prompt: int) -> float:
        t = self._idle_prefill.get(prompt)
        if t is None:
            budget = self.cfg.max_num_batched_tokens if not self.cfg.chunked_prefill else (
                min(self.cfg.chunk or self.cfg.max_num_batched_tokens, self.cfg.max_num_batched_tokens))
            t, done = 0.0, 0
            while done < prompt:
                q = min(budget, prompt - done) if self.cfg.chunked_prefill else prompt
                b = Batch()
                b.prefills = [(None, q, done)]
                b.prefill_tokens = q
                b.samples = 1 if done + q >= prompt else 0
                t += self.costs.iteration_s(b)
                done += q
            self._idle_prefill[prompt] = t
        return t

    def _receive(self, until: float) -> None:
        """The scheduler takes in the requests that arrived by `until`."""
        keep = []
        for t, req in self.unreceived:
            if t > until:
                keep.append((t, req))
            elif not self.scheduler.add(req):
                self.sim.rejected(req)
        self.unreceived = keep

    def run(self):
        env, sched, rec = self.env, self.scheduler, self.sim.recorder
        cost = self.costs.iteration_s
        recv = self.recv
        prompts = False  # whether the last batch carried prompt tokens (the skipper's weight)
        while True:
            if recv is not None:
                idle = not sched.has_work()
                if recv.tick(prompts) or idle:
                    if idle:  # idle loops add weight 1 each and take microseconds: receive at once
                        recv.counter = 0
                    self._receive(env.now)
                prompts = False
            if not sched.has_work():
                yield from self._idle()
                continue
            p0 = sched.preemptions
            batch = sched.schedule(env.now)
            if sched.preemptions != p0:
                rec.preempt_times.extend([env.now] * (sched.preemptions - p0))
            if not batch:
                raise RuntimeError(f"replica {self.index}: work queued but nothing schedulable")
            dt = cost(batch)
            steps = sched.decode_run_length() if not batch.prefills else 1
            start = env.now
            if steps == 1:
                yield env.timeout(dt)
            else:
                # a run of decode iterations with nothing else changing: one event, durations
                # growing linearly with the KV length; an arrival cuts it after the iteration
                # in flight
                last = batch.decode_kv_tokens + (steps - 1) * batch.num_decode
                kv0, batch.decode_kv_tokens = batch.decode_kv_tokens, last
                dt_last = cost(batch)
                batch.decode_kv_tokens = kv0
                slope = (dt_last - dt) / (steps - 1)
                if recv is not None:
                    self._run_c0 = recv.counter
                    if self.unreceived:  # arrivals waiting for a receive end the run at the next one
                        steps = min(steps, recv.next_receive(self._run_c0, 1) + self.cut_after - 1)
                steps = yield from self._decode_run(start, dt, slope, steps)
                sched.skip_decode_iterations(steps - 1)
                if recv is not None:
                    self._receive_in_run(start, dt, slope, steps)
                dt = (env.now - start) / steps
            self.busy_s += env.now - start
            self.iterations += steps
            if self.frontend is not None and env.now > start:
                self.frontend.output_rate(batch.samples * steps / (env.now - start))
            sched.complete(batch, env.now)
            rec.iteration(self.index, env.now, dt, batch.num_decode, batch.prefill_tokens,
                          self.kv.used, len(batch.prefills), steps)
            if recv is not None:
                prompts = bool(batch.prefills)

    def _receive_in_run(self, start: float, d0: float, slope: float, steps: int) -> None:
        """The loop tops inside a run of `steps` decode passes (after passes 1 .. steps-1): the
        last one that received takes in what had arrived by then, and the counter stands where
        those tops left it."""
        c0 = self._run_c0
        k = self.recv.last_receive(c0, steps - 1)
        if k >= 1:
            self._receive(start + k * d0 + slope * k * (k - 1) / 2)
        self.recv.counter = (c0 + steps - 1) % self.recv.interval

    def _idle(self):
        """Nothing to run: tell the frontend the output stopped and sleep until an arrival."""
        if self.frontend is not None:
            self.frontend.output_rate(0.0)
        self.wake = self.env.event()
        yield self.wake
        self.wake = None

    def _decode_run(self, start: float, dt: float, slope: float, steps: int):
        """Wait out a run of `steps` decode iterations starting at `start`, durations dt, dt+slope, ...
        (one event); an arrival (simpy.Interrupt) cuts it after the iteration in flight. Returns the
        iterations run."""
        env = self.env
        end = start + steps * dt + slope * steps * (steps - 1) / 2
        self.in_run = True
        while env.now < end:
            try:
                yield env.timeout(end - env.now)
            except simpy.Interrupt:
                # iterations finished by now: largest j with j·dt + slope·j(j−1)/2 <= elapsed
                j = self._steps_within(env.now - start, dt, slope, steps)
                # the arrival is taken in at the first loop top that receives after the pass in
                # flight (every top without a recv interval)
                r = self.recv.next_receive(self._run_c0, j + 1) if self.recv is not None else j + 1
                steps = min(steps, r + self.cut_after - 1)
                end = start + steps * dt + slope * steps * (steps - 1) / 2
        self.in_run = False
        return steps

    @staticmethod
    def _steps_within(elapsed: float, d0: float, slope: float, cap: int) -> int:
        """Iterations of a run (durations d0, d0 + slope, ...) completed within `elapsed`."""
        if slope <= 1e-15:
            j = int(elapsed // d0) if d0 > 0 else cap
        else:  # slope/2·j² + (d0 − slope/2)·j − elapsed = 0
            a, b = slope / 2, d0 - slope / 2
            j = int((-b + math.sqrt(b * b + 4 * a * elapsed)) / (2 * a))
        j = max(0, min(j, cap))

        def ends(n: int) -> float:  # when the n-th iteration ends
            return n * d0 + slope * n * (n - 1) / 2
        # the float root can land one off either way of an iteration's end: settle it both ways
        while j > 0 and ends(j) > elapsed + 1e-12:
            j -= 1
        while j < cap and ends(j + 1) <= elapsed + 1e-12:
            j += 1
        return j

    # ---- scheduler callbacks ---------------------------------------------------------------------
    def _first_token(self, req: Request, now: float) -> None:
        req.first_token_s = now

    def _stall(self, req: Request, now: float) -> None:
        self.sim.recorder.stall_gaps.append((now, now - req.last_token_s))

    def _finished(self, req: Request, now: float) -> None:
        if req.prefill_only:
            self.sim.transfer_kv(self, req, now)
        else:
            self.sim.finished(req, now)

    def describe(self) -> dict:
        return {"index": self.index, "role": self.role, "device": self.cluster.device.name,
                "tp": self.group.tp, "pp": self.group.pp, "ep": self.group.ep,
                "first_device": self.offset, "engine": self.cfg.engine,
                "kv_blocks": self.pool.num_blocks, "block_size": self.pool.block_size,
                "kv_capacity_tokens": self.pool.capacity_tokens,
                # recurrent layers (Gated DeltaNet, Mamba-2): each request's state, and the requests
                # a separate state pool holds (SGLang) or the KV blocks it takes (vLLM, TRT-LLM)
                "state_bytes_per_request": self.pool.state_bytes_per_request,
                "state_slots": self.pool.state_slots, "state_blocks_per_request": self.pool.state_blocks,
                "memory_per_gpu": self.pool.breakdown, "iterations": self.iterations,
                "busy_s": self.busy_s, "preemptions": self.scheduler.preemptions,
                "rejected": len(self.scheduler.rejected), "policies": describe_policies(self.cfg),
                "frontend": self.frontend.summary() if self.frontend is not None else None}


# ---- attention data parallelism ------------------------------------------------------------------

def dp_engine_config(cfg: EngineConfig, dp: int, pinned: tuple = ()) -> EngineConfig:
    """One attention-DP rank's limits. SGLang divides its server-wide chunked-prefill size and
    max running requests by dp (python/sglang/srt/server_args.py _handle_data_parallelism:
    chunked_prefill_size //= dp_size; model_executor max_running_requests // dp_size);
    TensorRT-LLM's max_batch_size / max_num_tokens and vLLM's per-engine limits already apply per
    rank. `pinned`: fields the plan set explicitly (kept)."""
    if cfg.engine != "sglang" or dp <= 1:
        return cfg
    kw = {}
    if "max_tokens" not in pinned:
        kw["max_num_batched_tokens"] = max(1, cfg.max_num_batched_tokens // dp)
        if cfg.chunk:
            kw["chunk"] = max(1, cfg.chunk // dp)
    if "max_batch" not in pinned:
        kw["max_num_seqs"] = max(1, cfg.max_num_seqs // dp)
    cfg = replace(cfg, **kw)
    if cfg.max_num_seqs > cfg.max_num_batched_tokens:
        cfg = replace(cfg, max_num_seqs=cfg.max_num_batched_tokens)
    return cfg


class DPRankRouter:
    """Which attention-DP rank of a replica takes a new request, as each engine assigns them:
    - sglang: round robin, the default load_balance_method
      (python/sglang/srt/managers/data_parallel_controller.py round_robin_scheduler);
    - trtllm: DefaultADPRouter (tensorrt_llm/_torch/pyexecutor/scheduler/adp_router.py): among
      ranks below the expected count ceil((active + new) / dp) (at least the current maximum), the
      one with the fewest active prompt tokens, then fewest active requests, then lowest rank;
    - vllm: DPLBAsyncMPClient (vllm/v1/engine/core_client.py get_core_engine_for_request): the
      lowest waiting·4 + running, ties to the lowest index."""

    def __init__(self, engine: str, dp: int):
        self.engine, self.dp = engine, dp
        self.rr = 0
        self.tokens = [0] * dp  # TRT-LLM: prompt tokens of each rank's active requests

    def pick(self, ranks: list) -> int:
        if self.engine == "trtllm":
            active = [s.outstanding for s in ranks]
            expected = max(-(-(sum(active) + 1) // self.dp), max(active))
            ok = [r for r in range(self.dp) if active[r] < expected]
            return min(ok, key=lambda r: (self.tokens[r], active[r], r))
        if self.engine == "vllm":
            scores = [4 * (len(s.waiting) + len(s.deferred)) + len(s.running) for s in ranks]
            return scores.index(min(scores))
        r = self.rr
        self.rr = (r + 1) % self.dp
        return r


def _summed(attr: str) -> property:
    """A property summing `attr` over an aggregate's parts (`self.parts`)."""
    return property(lambda self: sum(getattr(x, attr) for x in self.parts))


class _KVTotal:
    """The KV pools of a replica's attention-DP ranks, summed (for metrics and routing)."""

    used, hits, lookups = _summed("used"), _summed("hits"), _summed("lookups")

    def __init__(self, kvs: list):
        self.parts = kvs
        self.block_size = kvs[0].block_size
        self.num_blocks = sum(k.num_blocks for k in kvs)


class _SchedulersTotal:
    """The schedulers of a replica's attention-DP ranks, summed (for metrics and routing)."""

    preemptions, outstanding = _summed("preemptions"), _summed("outstanding")

    def __init__(self, ranks: list):
        self.parts = ranks

    @property
    def rejected(self) -> list:
        return [r for s in self.parts for r in s.rejected]

    def has_work(self) -> bool:
        return any(s.has_work() for s in self.parts)


class DPReplica(Replica):
    """A replica with attention data parallelism (dp ranks of tp devices): one scheduler and one
    KV pool per rank (each sized from its own GPU's memory), a router that assigns every request
    to one rank for its whole life (`DPRankRouter`), and one synchronised forward pass for all
    ranks, as long as the slowest (`IterationCost.iteration_dp_s`): the ranks exchange tokens for
    the MoE every layer, and idle ranks run a dummy batch to join the exchange (sglang
    python/sglang/srt/managers/scheduler.py prepare_mlp_sync_batch / idle batch; TensorRT-LLM
    tensorrt_llm/_torch/pyexecutor/py_executor.py attention-DP dummy requests; vLLM
    vllm/v1/engine/core.py DPEngineCoreProc execute_dummy_batch)."""

    def __init__(self, sim: "ServingSimulation", index: int, group: ReplicaGroup, cluster: Cluster,
                 offset: int, cfg: EngineConfig):
        if cfg.recv_interval > 1:
            # SGLang's SchedulerRecvSkipper asserts `not enable_dp_attention` (0.5.x)
            raise InputError(f"recv_interval={cfg.recv_interval} with attention DP (dp={group.dp}): SGLang's "
                             f"receive skipping does not run with DP attention; valid: recv_interval=1")
        super().__init__(sim, index, group, cluster, offset, cfg)
        cfg = self.cfg  # with the state pool's limits (Replica.__init__)
        dp = group.dp
        self.kvs = [self.kv] + [KVCache(self.pool.num_blocks, cfg.block_size, cfg.prefix_caching)
                                for _ in range(dp - 1)]
        self.ranks = [Scheduler(cfg, kv, on_finish=lambda req, now, r=i: self._rank_finished(r, req, now),
                                on_first_token=self._first_token, on_stall=self._stall)
                      for i, kv in enumerate(self.kvs)]
        self.rank_router = DPRankRouter(cfg.engine, dp)
        self.kv = _KVTotal(self.kvs)
        self.scheduler = _SchedulersTotal(self.ranks)

    def submit(self, req: Request) -> None:
        r = self.rank_router.pick(self.ranks)
        req.replica = self.index
        if not self.ranks[r].add(req):
            self.sim.rejected(req)
            return
        self.rank_router.tokens[r] += req.prompt_len
        if self.wake is not None and not self.wake.triggered:
            self.wake.succeed()
        elif self.in_run:
            self.in_run = False
            self.proc.interrupt()

    def _rank_finished(self, rank: int, req: Request, now: float) -> None:
        self.rank_router.tokens[rank] -= req.prompt_len
        self._finished(req, now)

    def kv_load(self) -> float:
        queued = sum(r.target - r.computed for s in self.ranks for r in s.waiting) / self.kv.block_size
        return (self.kv.used + queued) / self.kv.num_blocks

    def run(self):
        env, rec, ranks = self.env, self.sim.recorder, self.ranks
        cost = self.costs.iteration_dp_s
        while True:
            if not any(s.has_work() for s in ranks):
                yield from self._idle()
                continue
            batches = []
            for s in ranks:
                if not s.has_work():
                    batches.append(Batch())  # an idle rank's dummy pass
                    continue
                p0 = s.preemptions
                batches.append(s.schedule(env.now))
                if s.preemptions != p0:
                    rec.preempt_times.extend([env.now] * (s.preemptions - p0))
            live = [(s, b) for s, b in zip(ranks, batches) if b]
            if not live:
                raise RuntimeError(f"replica {self.index}: work queued but nothing schedulable")
            dt = cost(batches)
            steps = 1 if any(b.prefills for _, b in live) else min(s.decode_run_length() for s, _ in live)
            start = env.now
            if steps == 1:
                yield env.timeout(dt)
            else:  # a run of decode-only passes on every busy rank (as Replica.run)
                kv0 = [b.decode_kv_tokens for b in batches]
                for b in batches:
                    b.decode_kv_tokens += (steps - 1) * b.num_decode
                dt_last = cost(batches)
                for b, k in zip(batches, kv0):
                    b.decode_kv_tokens = k
                steps = yield from self._decode_run(start, dt, (dt_last - dt) / (steps - 1), steps)
                for s, _ in live:
                    s.skip_decode_iterations(steps - 1)
                dt = (env.now - start) / steps
            self.busy_s += env.now - start
            self.iterations += steps
            samples = sum(b.samples for b in batches)
            if self.frontend is not None and env.now > start:
                self.frontend.output_rate(samples * steps / (env.now - start))
            for s, b in live:
                s.complete(b, env.now)
            rec.iteration(self.index, env.now, dt, sum(b.num_decode for b in batches),
                          sum(b.prefill_tokens for b in batches), self.kv.used,
                          sum(len(b.prefills) for b in batches), steps)

    def describe(self) -> dict:
        d = super().describe()
        d.update({"dp": self.group.dp, "kv_blocks_per_rank": self.pool.num_blocks,
                  "rank_router": {"sglang": "round_robin", "trtllm": "DefaultADPRouter",
                                  "vllm": "DPLBAsyncMPClient"}.get(self.cfg.engine)})
        return d


# ---- the simulation ----------------------------------------------------------------------------

class ServingSimulation:
    """Arrivals → router → replicas; collects a `ServingReport`."""

    def __init__(self, model: ModelSpec, plan: ServingPlan, workload: ServingWorkload,
                 chrome_trace: bool = False, nodes_given: bool = False):
        self.model, self.plan, self.workload = model, plan, workload
        self.env = simpy.Environment()
        offsets, resized, self.notes = place(plan.groups, nodes_given)
        nreps = sum(g.count for g in plan.groups)
        self.recorder = MetricsRecorder(nreps, chrome_trace)
        self.replicas: list[Replica] = []
        i = 0
        for g, nodes in zip(plan.groups, resized):
            cluster = g.cluster.with_nodes(nodes) if nodes else g.cluster
            # an attention-DP engine's tp_size is all tp·dp devices (SGLang sizes memory by it)
            cfg = engine_config(plan.engine, cluster.device, g.tp * g.dp, max_num_seqs=plan.max_batch,
                                max_num_batched_tokens=plan.max_tokens,
                                memory_fraction=plan.gpu_memory_utilization,
                                kv_blocks=plan.kv_blocks, prefix_caching=plan.prefix_caching,
                                **dict(plan.engine_options))
            if plan.chunk is not None:
                cfg = replace(cfg, chunked_prefill=plan.chunk > 0, chunk=plan.chunk)
            if g.role == "prefill":  # a prefill-only engine never holds decodes for long
                cfg = replace(cfg, kv_reservation="incremental")
            if g.dp > 1:
                pinned = tuple(k for k, v in (("max_tokens", plan.max_tokens), ("max_batch", plan.max_batch))
                               if v is not None)
                cfg = dp_engine_config(cfg, g.dp, pinned)
            kind = DPReplica if g.dp > 1 else Replica
            for _ in range(g.count):
                self.replicas.append(kind(self, i, g, cluster, offsets[i], cfg))
                i += 1
        self.front = [r for r in self.replicas if r.role in ("both", "prefill")]
        self.decode_pool = [r for r in self.replicas if r.role == "decode"]
        # decode-only: every replica decodes and each request arrives with its KV and first token
        # already made elsewhere (a decode pool measured on its own, as `plan serve` sizes one)
        self.decode_only = not self.front
        if plan.disaggregated and not self.decode_pool:
            raise InputError("a disaggregated plan needs prefill_replicas >= 1 and decode_replicas >= 1")
        for r in self.replicas:
            self.notes.extend(n for n in r.costs.notes if n not in self.notes)
        if plan.router == "size_class":
            gi = [next(j for j, g in enumerate(plan.groups) if r.group is g) for r in self.front]
            self.router = Router("size_class", plan.class_bounds, [plan.class_shares[j] for j in gi])
        else:
            self.router = Router(plan.router)
        self.decode_router = Router(plan.router if plan.router not in ("kv_aware", "size_class")
                                    else "least_outstanding")
        self.source = RequestSource(workload)
        self.requests: list[Request] = []
        self._rejected = 0
        self.kv_token_bytes = kv_bytes_per_token(model, 1, 1, self.replicas[0].costs.kv_dtype)

    # ---- arrivals ------------------------------------------------------------------------------
    def arrive(self, req: Request) -> None:
        self.requests.append(req)
        if self.decode_only:
            req.generated = 1
            self._receive(self.decode_pool[self.decode_router.pick(req, self.decode_pool)], req)
            return
        if self.plan.disaggregated:
            req.prefill_only = True
        rep = self.front[self.router.pick(req, self.front)]
        if rep.frontend is None:
            rep.submit(req)
            return
        # the API server takes the request in (HTTP, tokenisation) before the engine sees it
        ready = rep.frontend.intake(self.env.now, req.prompt_len)
        ev = self.env.timeout(ready - self.env.now)
        ev.callbacks.append(lambda _e, r=req, rp=rep: rp.submit(r))

    def _open_loop(self, reqs: list[Request]):
        env = self.env
        for req in reqs:
            if req.arrival_s > env.now:
                yield env.timeout(req.arrival_s - env.now)
            self.arrive(req)

    def _issue(self, client: int) -> None:
        req = self.source.next(self.env.now, client)
        if req is not None:
            self.arrive(req)

    def finished(self, req: Request, now: float) -> None:
        if req.client >= 0:
            think = self.workload.think_time_s
            if think > 0:
                ev = self.env.timeout(think)
                ev.callbacks.append(lambda _e, c=req.client: self._issue(c))
            else:
                self._issue(req.client)

    def rejected(self, req: Request) -> None:
        self._rejected += 1
        self.finished(req, self.env.now)

    # ---- disaggregation ------------------------------------------------------------------------
    def transfer_kv(self, src: Replica, req: Request, now: float) -> None:
        if req.generated >= req.output_len:  # one-token outputs end on the prefill replica
            self.finished(req, now)
            return
        dst = self.decode_pool[self.decode_router.pick(req, self.decode_pool)]
        self.env.process(self._transfer(src, dst, req))

    def _transfer(self, src: Replica, dst: Replica, req: Request):
        lanes = min(src.group.tp, dst.group.tp)  # TP shards move in parallel, one link each
        nbytes = req.prompt_len * self.kv_token_bytes / lanes
        # one cluster is one name (place() lays replicas out by name; each group's resize makes
        # its own Cluster object): the same node is the same name and node index
        same_node = (src.cluster.name == dst.cluster.name and src.offset // src.cluster.devices_per_node
                     == dst.offset // dst.cluster.devices_per_node)
        cluster = src.cluster
        if not same_node and cluster.num_nodes < 2:  # to another cluster's node: over the NICs
            cluster = cluster.with_nodes(2)
        stride = 1 if same_node else cluster.devices_per_node
        t = collective_s(cluster, "send_recv", 2, stride, float(nbytes))
        with dst.inbox.request() as slot:
            yield slot
            yield self.env.timeout(t)
        req.transfer_s = t
        self._receive(dst, req)

    def _receive(self, dst: Replica, req: Request) -> None:
        """`req`'s prompt KV has reached decode replica `dst`: it decodes from here."""
        req.prefill_only = False
        req.computed = req.target = req.prompt_len
        req.blocks = 0
        req.first_token_s = self.env.now  # the first token reaches the user with the decode side
        req.last_token_s = self.env.now
        dst.submit(req)

    # ---- run -----------------------------------------------------------------------------------
    def run(self) -> ServingReport:
        wl = self.workload
        if wl.closed_loop:
            offsets = self.source.start_offsets
            for c in range(min(wl.concurrency, wl.num_requests)):
                if offsets is None or offsets[c] <= 0:
                    self._issue(c)
                else:
                    ev = self.env.timeout(float(offsets[c]))
                    ev.callbacks.append(lambda _e, c=c: self._issue(c))
        else:
            self.env.process(self._open_loop(self.source.open_loop()))
        self.env.run()
        fronts = [r.frontend for r in self.replicas if r.frontend is not None]
        if fronts:
            n = sum(f.intakes for f in fronts)
            mean = sum(f.delay_sum_s for f in fronts) / n if n else 0.0
            self.notes.append(f"frontend ({fronts[0].costs.profile}): mean intake "
                              f"{mean * 1e3:.2f} ms per request, output streaming up to "
                              f"{max(f.max_load for f in fronts) * 100:.0f}% of the API-server thread")
            if any(f.saturated for f in fronts):
                self.notes.append("frontend saturated: streaming output needs more than one "
                                  "API-server thread; intake delays are a lower bound")
        return build_report(self.requests, self.recorder, self.replicas, wl, self.plan.to_dict(),
                            self.plan.num_devices, self.notes, self._rejected)

    def chrome_trace(self) -> dict:
        events = list(self.recorder.chrome or [])
        for r in self.replicas:
            events.append({"name": "process_name", "ph": "M", "pid": r.index,
                           "args": {"name": f"replica {r.index} ({r.role}, {r.cluster.device.name}, tp={r.group.tp})"}})
        return {"traceEvents": events, "displayTimeUnit": "ms"}


def simulate(model: ModelSpec, plan: ServingPlan, workload: ServingWorkload, **kw) -> ServingReport:
    return ServingSimulation(model, plan, workload, **kw).run()


def max_goodput_rate(model: ModelSpec, plan: ServingPlan, workload: ServingWorkload,
                     target: float = 0.9, iterations: int = 8, **kw) -> dict:
    """DistServe goodput (Zhong et al. OSDI'24 §2.3): the highest constant request rate at which
    at least `target` of the requests meet both SLOs. Doubles the rate from the workload's until
    attainment drops below target, then bisects; every probe is a full simulation with the same
    seed."""
    from dataclasses import replace as _replace
    from simulator.serving.workload import RateSchedule

    def attainment(rate: float) -> float:
        wl = _replace(workload, rate=RateSchedule(((rate, math.inf),)))
        return simulate(model, plan, wl, **kw).slo_attainment

    r0 = workload.rate.segments[0][0]
    lo, hi = 0.0, r0
    probes = []
    for _ in range(12):  # find a rate that fails
        a = attainment(hi)
        probes.append((hi, a))
        if a < target:
            break
        lo, hi = hi, hi * 2
    else:
        return {"rate_req_per_s": lo, "target": target, "probes": probes, "bounded": False}
    for _ in range(iterations):
        mid = (lo + hi) / 2
        a = attainment(mid)
        probes.append((mid, a))
        if a >= target:
            lo = mid
        else:
            hi = mid
    return {"rate_req_per_s": lo, "target": target, "probes": probes, "bounded": True}
