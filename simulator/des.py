"""Discrete-event simulation of one training iteration (simpy).

It executes the same per-chunk durations the analytic engine combines (`analytic.step_costs`,
built from the op graph of `simulator/ops.py`) on simulated devices: each pipeline stage's rank
runs its schedule's tasks in order on a compute stream, activations and gradients travel between
stages as flows on links, data-parallel gradient buckets are reduced on a communication stream
while backward continues, then the optimizer runs. What closed forms cannot see, it sees:
irregular schedules (Zero Bubble), uneven stages, stragglers, flows that share a link.

Units. TP (and CP) peers execute in lock-step — their per-layer collectives synchronise them —
so one simulated unit is a TP×CP group of ranks, running at the pace of its slowest member. By
default one unit per pipeline stage stands for all DP replicas (they are identical); with
`full_ranks=True` (automatic when stragglers are given) every (DP replica, stage) unit is
simulated and DP collectives wait for all their members.

Links. Flows share links by weighted processor sharing (max-min fair at flow level): a flow
progresses at min over its links of (its weight ÷ total weight on the link); alone on its links
it runs at rate 1, i.e. in the uncontended time the collective cost model gives.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import simpy

from hwmodels.clusters import Cluster
from hwmodels.errors import InputError
from simulator.analytic import StepCosts, dp_exposed_s, estimate, step_costs
from simulator import schedules
from simulator.training import TrainingJob, TrainingPlan

_EPS = 1e-12


# Size limits of one run: what a simulation may cost before it is refused with a one-line error
# rather than running for minutes or exhausting memory (a typo such as --global-batch 100000000).
# ~50k-150k events/s: 3M events is 20-60 s. Tasks are counted before the run (F, B and W passes
# per micro-batch, chunk and simulated unit); events are counted while it runs.
MAX_TASKS = 1_000_000
MAX_EVENTS = 3_000_000


class _TooManyEvents(Exception):
    pass


class _CountingEnvironment(simpy.Environment):
    """A simpy environment that counts the events it processes (and stops past `limit`)."""

    def __init__(self, limit: float = float("inf")):
        super().__init__()
        self.processed = 0
        self.limit = limit

    def step(self):
        # the call that finds no event left ends the run (simpy's EmptySchedule): not an event
        if self.processed >= self.limit and self.peek() < math.inf:
            raise _TooManyEvents()
        super().step()
        self.processed += 1


class _Flow:
    __slots__ = ("remaining", "rate", "t", "links", "done", "version", "finished")

    def __init__(self, duration, links, done, now):
        self.remaining, self.rate, self.t = duration, 0.0, now
        self.links, self.done, self.version, self.finished = links, done, 0, False


class Network:
    """Flows on shared links with weighted processor sharing. A flow's rate depends only on the
    load of its own links, so a start or a finish re-rates only the flows sharing a link with it;
    each flow holds one pending completion event, invalidated by a version number on re-rating."""

    def __init__(self, env: simpy.Environment):
        self.env = env
        self.load: dict = {}
        self.on_link: dict = {}

    def transfer(self, duration_s: float, links: dict) -> simpy.Event:
        """Start a flow that takes `duration_s` alone on its links; returns its completion."""
        done = self.env.event()
        if duration_s <= 0:
            done.succeed()
            return done
        f = _Flow(duration_s, links, done, self.env.now)
        affected = {f}
        for link, w in links.items():
            self.load[link] = self.load.get(link, 0.0) + w
            on = self.on_link.setdefault(link, set())
            affected |= on
            on.add(f)
        self._rerate(affected)
        return done

    def _rerate(self, flows):
        now = self.env.now
        for f in flows:
            f.remaining -= f.rate * (now - f.t)
            f.t = now
            rate = min((w / self.load[link] for link, w in f.links.items()), default=1.0)
            if rate != f.rate:
                f.rate = rate
                f.version += 1
                ev = self.env.timeout(max(0.0, f.remaining) / rate)
                ev.callbacks.append(lambda _e, f=f, v=f.version: self._finish(f, v))

    def _finish(self, f: _Flow, version: int):
        if f.finished or version != f.version:
            return
        f.finished = True
        affected = set()
        for link, w in f.links.items():
            self.load[link] -= w
            on = self.on_link[link]
            on.discard(f)
            affected |= on
        f.done.succeed()
        self._rerate(affected)


def schedule_order(schedule: str, stage: int, p: int, m: int, v: int) -> list[tuple[str, int, int]]:
    """Static task order of one stage: ("F"|"B", local chunk, micro-batch), as the schedule
    (`simulator.schedules`) defines it."""
    return schedules.get(schedule).order(stage, p, m, v)


# ---- the simulation -----------------------------------------------------------------------------

@dataclass
class DESResult:
    step_time_s: float
    breakdown_s: dict
    unit_end_s: dict
    events: int
    wall_s: float
    units: int
    timeline: list = field(default_factory=list)  # (pid, tid, name, start_s, dur_s, args)

    @property
    def events_per_s(self) -> float:
        return self.events / self.wall_s if self.wall_s else 0.0


class TrainingDES:
    def __init__(self, job: TrainingJob, plan: TrainingPlan, cluster: Cluster,
                 slowdown: dict | None = None, full_ranks: bool = False, trace: bool = False,
                 costs: StepCosts | None = None):
        self.job, self.plan, self.cluster = job, plan, cluster
        self.costs = costs or step_costs(job, plan, cluster)
        self.slowdown = dict(slowdown or {})
        self.full = full_ranks or bool(self.slowdown)
        self.trace = trace
        self.timeline: list = []
        self.env = _CountingEnvironment()
        self.net = Network(self.env)
        self._arrivals: dict = {}
        self._wait = {}  # unit -> {"bubble": s, "p2p": s}
        self._busy = {}
        self._comm = {}
        self._dp_wait = {}
        self._opt = {}
        self._end = {}
        self._buckets: dict = {}

    # rank ids in Megatron order (tp innermost, then cp, dp, pp)
    def unit_ranks(self, dp_i: int, stage: int) -> list[int]:
        pl = self.plan
        base = (dp_i + pl.dp * stage) * pl.tp * pl.cp
        return list(range(base, base + pl.tp * pl.cp))

    def unit_speed(self, dp_i: int, stage: int) -> float:
        return max((self.slowdown.get(r, 1.0) for r in self.unit_ranks(dp_i, stage)), default=1.0)

    def _arrival(self, key) -> list:
        a = self._arrivals.get(key)
        if a is None:
            a = self._arrivals[key] = [self.env.event(), None]  # event, transfer start
        return a

    def _record(self, unit, stream, name, start, args=None):
        if self.trace:
            self.timeline.append((unit, stream, name, start, self.env.now - start, args or {}))

    def _unit(self, dp_i: int, s: int):
        env, pl, costs = self.env, self.plan, self.costs
        p, v, m = pl.pp, pl.vpp, costs.micro_batches
        st = costs.stages[s]
        speed = self.unit_speed(dp_i, s)
        unit = (dp_i, s)
        port = {("port", dp_i, s): 1.0}
        waits = self._wait[unit] = {"bubble": 0.0, "p2p": 0.0}
        self._busy[unit] = 0.0
        self._comm[unit] = {"tp": 0.0, "cp": 0.0, "ep": 0.0}
        sched = schedules.get(pl.schedule)
        zb = sched.weight_split
        chunk_ids = sched.chunk_ids(s, p, v)
        last_chunk = sched.model_chunks(p, v) - 1
        order = self._order(s)
        # the last micro-batch through each local chunk completes its weight gradients (DualPipe's
        # chunks see every other micro-batch)
        last_mb = {j: mb for kind, j, mb in order if kind == "B"}
        tag = (lambda j: f".{j}") if len(chunk_ids) > 1 else (lambda j: "")
        n_buckets = self._n_buckets(st)
        done_b: dict = {}

        def wait_for(key):
            a = self._arrival(key)
            if a[0].triggered:
                return
            t0 = env.now
            yield a[0]
            started = a[1] if a[1] is not None else t0
            in_flight = max(0.0, env.now - max(t0, started))
            waits["p2p"] += in_flight
            waits["bubble"] += env.now - t0 - in_flight

        def send(key, dst_unit):
            a = self._arrival(key)
            a[1] = env.now
            if dst_unit == unit:  # the next chunk is on this rank (the turn of a V)
                a[0].succeed()
                return
            links = dict(port)
            links[("port",) + dst_unit] = 1.0
            ev = self.net.transfer(costs.p2p_s, links)
            ev.callbacks.append(lambda _e, a=a: a[0].succeed() if not a[0].triggered else None)
            if not self.job.overlap_p2p_comm:  # a blocking send holds the stage (Megatron-LM 2021)
                t0 = env.now
                yield ev
                waits["p2p"] += env.now - t0

        def compute(dur, comm: dict, name, args):
            t0 = env.now
            yield env.timeout(dur * speed)
            self._busy[unit] += (dur - sum(comm.values())) * speed
            for g, x in comm.items():
                self._comm[unit][g] += x * speed
            self._record(unit, "compute", name, t0, args)

        def run_f(j, mb):
            vs = chunk_ids[j]
            if vs > 0:
                yield from wait_for(("F", dp_i, vs, mb))
            c = st.chunks[j]
            yield from compute(c.fwd_s, c.fwd_comm_s, f"F{mb}" + tag(j), {"mb": mb, "chunk": j})
            if vs < last_chunk:
                nxt = vs + 1
                yield from send(("F", dp_i, nxt, mb), (dp_i, sched.stage_of_pass(nxt, mb, p, v)))

        def run_b(j, mb, with_w: bool):
            vs = chunk_ids[j]
            if vs < last_chunk:
                yield from wait_for(("B", dp_i, vs, mb))
            c = st.chunks[j]
            dur = c.bwd_s if with_w else c.bwd_s - c.wgrad_s
            last = mb == last_mb[j] and with_w
            if last and n_buckets > 1 and self.job.overlap_grad_reduce and pl.zero < 3:
                # DDP buckets become ready as the last micro-batch's backward walks the layers
                for k in range(n_buckets):
                    yield from compute(dur / n_buckets, {g: x / n_buckets for g, x in c.bwd_comm_s.items()},
                                       f"B{mb}.{j}" if k == 0 else f"B{mb}.{j}+", {"mb": mb, "chunk": j})
                    self._bucket_ready(unit, j, k, n_buckets)
            else:
                yield from compute(dur, c.bwd_comm_s if not zb else
                                   {g: x for g, x in c.bwd_comm_s.items()},
                                   f"B{mb}" + tag(j), {"mb": mb, "chunk": j})
                if last:
                    for k in range(n_buckets):
                        self._bucket_ready(unit, j, k, n_buckets)
            done_b[(j, mb)] = True
            if vs > 0:
                prv = vs - 1
                yield from send(("B", dp_i, prv, mb), (dp_i, sched.stage_of_pass(prv, mb, p, v)))

        def run_w(j, mb):
            c = st.chunks[j]
            if mb != last_mb[j]:
                yield from compute(c.wgrad_s, {}, f"W{mb}", {"mb": mb, "chunk": j})
                return
            # the last weight gradients complete bucket by bucket, as the layers are walked
            for k in range(n_buckets):
                yield from compute(c.wgrad_s / n_buckets, {}, f"W{mb}" if k == 0 else f"W{mb}+",
                                   {"mb": mb, "chunk": j})
                self._bucket_ready(unit, j, k, n_buckets)

        t_start = env.now
        if not zb:
            for kind, j, mb in order:
                if kind == "F":
                    yield from run_f(j, mb)
                else:
                    yield from run_b(j, mb, True)
        else:
            yield from self._zero_bubble(s, m, run_f, run_b, run_w, dp_i)
        compute_end = env.now
        # ---- DP tail: wait for this unit's gradient reductions, then the optimizer ----
        t0 = env.now
        if pl.zero == 3:
            # the per-layer overlap windows of the analytic engine (zero3_exposed_s)
            exposed = dp_exposed_s(self.job, pl, st)
            if exposed:
                yield env.timeout(exposed)
        else:
            yield simpy.AllOf(env, self._unit_reductions(unit))
            if pl.zero in (1, 2) and not self.job.overlap_param_gather and st.dp_gather_s:
                yield self.net.transfer(st.dp_gather_s, port)
        self._dp_wait[unit] = env.now - t0
        if self._dp_wait[unit] > 0:
            self._record(unit, "dp", "dp exposed", t0)
        t0 = env.now
        yield env.timeout(st.optimizer_s * speed)
        self._opt[unit] = st.optimizer_s * speed
        self._record(unit, "compute", "optimizer", t0)
        self._end[unit] = env.now - t_start
        del compute_end

    def _zero_bubble(self, s, m, run_f, run_b, run_w, dp_i):
        """Schedules that split the backward (Zero Bubble, Qi et al., arXiv 2401.10241 §3.1): B
        (input gradient, on the critical path) and W (weight gradient, deferrable). F and B run in
        the schedule's order; a W pass runs where the next F/B would wait for its input, or when
        the chunk-passes held (forward done, W pending) reach the schedule's cap (`w_cap`: p + 1
        for ZB-H1, 2p − 1 for ZB-H2, the paper's peak memories, where a pass past its B holds only
        the GEMM inputs W needs)."""
        sched = schedules.get(self.plan.schedule)
        p, v = self.plan.pp, self.plan.vpp
        cap = sched.w_cap(p)
        chunk_ids = sched.chunk_ids(s, p, v)
        last_chunk = sched.model_chunks(p, v) - 1
        env = self.env
        f_done = 0
        pending_w: list = []  # (chunk, micro-batch) whose B ran and W did not, oldest first
        w_done = 0
        for kind, j, mb in self._order(s):
            vs = chunk_ids[j]
            key = (kind, dp_i, vs, mb)
            needs_input = (kind == "F" and vs > 0) or (kind == "B" and vs < last_chunk)
            settled = sched.fill_in_flight
            while True:
                arrival = self._arrival(key)
                # an input already on its way is waited for, unless the schedule fills that wait too
                ready = not needs_input or arrival[0].triggered or (arrival[1] is not None and not sched.fill_in_flight)
                if not ready and not settled:  # let sends due at this same instant start first
                    settled = True
                    yield env.timeout(0)
                    continue
                room = kind == "B" or f_done - w_done < cap
                if ready and room:
                    break
                if pending_w:  # fill the gap with a deferred weight-gradient pass
                    yield from run_w(*pending_w.pop(0))
                    w_done += 1
                    continue
                if not room:
                    raise RuntimeError(f"zero-bubble schedule of stage {s} blocked by its memory cap")
                t0 = env.now
                yield self._arrival(key)[0]
                self._wait[(dp_i, s)]["bubble"] += env.now - t0
            if kind == "F":
                yield from run_f(j, mb)
                f_done += 1
            else:
                yield from run_b(j, mb, False)
                pending_w.append((j, mb))
        while pending_w:
            yield from run_w(*pending_w.pop(0))

    def _order(self, s: int) -> list:
        """Stage s's F/B order, given the per-chunk durations for schedules that derive it from them."""
        pl, costs = self.plan, self.costs
        times = (tuple(tuple((c.fwd_s, c.bwd_s - c.wgrad_s, c.wgrad_s) for c in st.chunks) for st in costs.stages),
                 costs.p2p_s)
        return schedules.get(pl.schedule).order(s, pl.pp, costs.micro_batches, pl.vpp, times)

    # ---- data-parallel gradient buckets ----
    def _n_buckets(self, st) -> int:
        from simulator.analytic import DDP_BUCKET_BYTES
        if not self.job.overlap_grad_reduce or self.plan.zero == 3:
            return 1
        per_chunk = st.grad_bytes / len(st.chunks)
        return max(1, min(64, round(per_chunk / DDP_BUCKET_BYTES)))

    def _bucket_ready(self, unit, j, k, n):
        """Bucket k of chunk j of `unit` is ready; reduce it once all DP peers have it."""
        if self.plan.zero == 3:
            return  # ZeRO-3's reduce-scatters are in the exposed DP tail (dp_exposed_s), not buckets
        dp_i, s = unit
        st = self.costs.stages[s]
        key = (s, j, k)
        b = self._buckets.setdefault(key, {"ready": set(), "done": {}, "go": self.env.event()})
        b["ready"].add(dp_i)
        peers = self.plan.dp if self.full else 1
        share = st.dp_grad_s / (len(st.chunks) * n)
        if not self.job.overlap_grad_reduce:
            return  # reduced after the whole backward (Megatron-LM 2021): see _unit_reductions
        done = self.env.event()
        b["done"][dp_i] = done
        env = self.env

        def go():
            if len(b["ready"]) < peers:
                yield b["go"]
            elif not b["go"].triggered:
                b["go"].succeed()
            t0 = env.now
            yield self.net.transfer(share, {("port",) + unit: 1.0})
            self._record(unit, "dp", f"reduce {j}.{k}", t0)
            done.succeed()
        env.process(go())

    def _unit_reductions(self, unit) -> list:
        dp_i, s = unit
        st = self.costs.stages[s]
        if self.job.overlap_grad_reduce:
            return [b["done"][dp_i] for (ss, _j, _k), b in self._buckets.items() if ss == s and dp_i in b["done"]]
        done = self.env.event()
        env = self.env
        key = (s, "all")
        b = self._buckets.setdefault(key, {"ready": set(), "go": env.event()})
        b["ready"].add(dp_i)
        peers = self.plan.dp if self.full else 1

        def go():
            if len(b["ready"]) < peers:
                yield b["go"]
            elif not b["go"].triggered:
                b["go"].succeed()
            t0 = env.now
            yield self.net.transfer(st.dp_grad_s, {("port",) + unit: 1.0})
            self._record(unit, "dp", "grad reduce", t0)
            done.succeed()
        env.process(go())
        return [done]

    def run(self) -> DESResult:
        t0 = time.perf_counter()
        dps = range(self.plan.dp) if self.full else range(1)
        pl, m = self.plan, self.costs.micro_batches
        units = len(dps) * pl.pp
        sched = schedules.get(pl.schedule)
        tasks = round(units * m * sched.chunks_per_stage(pl.vpp) * sched.pass_fraction(pl.pp, pl.vpp)
                      * (3 if sched.weight_split else 2))
        hint = ("use --engine analytic, a larger micro-batch (fewer micro-batches per step)"
                + (", or fewer DP replicas (--full-ranks/--stragglers simulate each)" if self.full else ""))
        if tasks > MAX_TASKS:
            raise InputError(f"DES: {units:,} simulated unit(s) x {m:,} micro-batches x vpp={pl.vpp} = {tasks:,} "
                             f"tasks, more than the {MAX_TASKS:,} one simulation takes; {hint}")
        for dp_i in dps:
            for s in range(self.plan.pp):
                self.env.process(self._unit(dp_i, s))
        self.env.limit = MAX_EVENTS
        try:
            self.env.run()
        except _TooManyEvents:
            raise InputError(f"DES: stopped after {MAX_EVENTS:,} events ({units:,} simulated unit(s), {m:,} "
                             f"micro-batches), the most one simulation takes; {hint}") from None
        wall = time.perf_counter() - t0
        if len(self._end) != len(dps) * self.plan.pp:
            raise RuntimeError("simulation deadlocked: a schedule waited for an input never sent")
        unit = max(self._end, key=self._end.get)
        step = self._end[unit]
        w = self._wait[unit]
        comm = self._comm[unit]
        breakdown = {"compute": self._busy[unit], "tp_comm": comm["tp"], "cp_comm": comm["cp"],
                     "ep_comm": comm["ep"], "pp_bubble": w["bubble"], "pp_comm": w["p2p"],
                     "dp_comm": self._dp_wait[unit], "optimizer": self._opt[unit]}
        # time a unit spent neither computing nor waiting on a named cause (none expected)
        breakdown["pp_bubble"] += max(0.0, step - sum(breakdown.values()))
        return DESResult(step, breakdown, {f"{k[0]}/{k[1]}": x for k, x in self._end.items()},
                         self.env.processed, wall,
                         len(self._end), self.timeline)


def concurrent_transfers(durations_and_links: list[tuple[float, dict]]) -> list[float]:
    """Finish times of flows started together on the DES network (each given its uncontended
    duration and its links): what flow-level sharing does to collectives placed on shared links."""
    env = _CountingEnvironment()
    net = Network(env)
    ends = [None] * len(durations_and_links)
    for i, (dur, links) in enumerate(durations_and_links):
        ev = net.transfer(dur, links)
        ev.callbacks.append(lambda _e, i=i: ends.__setitem__(i, env.now))
    env.run()
    return ends


def simulate(job: TrainingJob, plan: TrainingPlan, cluster: Cluster, slowdown: dict | None = None,
             full_ranks: bool = False, trace: bool = False):
    """DES estimate: the analytic StepEstimate's memory and FLOPs with the DES's step time and
    breakdown. Returns (StepEstimate, DESResult)."""
    base = estimate(job, plan, cluster)
    des = TrainingDES(job, plan, cluster, slowdown=slowdown, full_ranks=full_ranks, trace=trace)
    res = des.run()
    scale = base.step_time_s / res.step_time_s
    base.step_time_s = res.step_time_s
    base.tokens_per_s = job.tokens_per_step / res.step_time_s
    base.tflops_per_device *= scale
    base.mfu *= scale
    base.hfu *= scale
    base.breakdown_s = res.breakdown_s
    base.engine = "des"
    # no wall-clock time here: a result is a function of its inputs (same command, same JSON)
    base.notes.append(f"DES: {res.units} simulated units, {res.events} events")
    return base, res


def parse_stragglers(text: str, num_devices: int, seed: int = 0) -> dict:
    """`RANK:FACTOR,...` (e.g. "3:1.3,17:2") or `random:FRACTION:FACTOR` (e.g. "random:0.01:1.5",
    a seeded random 1% of ranks run 1.5× slower, as MegaScale (arXiv 2402.15627 §5) observes)."""
    out: dict = {}
    text = text.strip()
    if text.startswith("random:"):
        parts = text.split(":")
        if len(parts) != 3:
            raise InputError(f"stragglers {text!r}: expected random:FRACTION:FACTOR")
        try:
            frac, factor = float(parts[1]), float(parts[2])
        except ValueError:
            raise InputError(f"stragglers {text!r}: FRACTION and FACTOR must be numbers") from None
        if not 0 < frac <= 1 or not 1 <= factor < math.inf:  # also refuses nan
            raise InputError(f"stragglers {text!r}: FRACTION in (0, 1], FACTOR >= 1")
        rng = random.Random(seed)
        k = max(1, round(frac * num_devices))
        return {r: factor for r in rng.sample(range(num_devices), k)}
    for item in filter(None, (x.strip() for x in text.split(","))):
        try:
            r, f = item.split(":")
            rank, factor = int(r), float(f)
        except ValueError:
            raise InputError(f"straggler {item!r}: expected RANK:FACTOR (e.g. 3:1.5)") from None
        if not 0 <= rank < num_devices:
            raise InputError(f"straggler rank {rank} outside 0..{num_devices - 1}")
        if not 1 <= factor < math.inf:  # also refuses nan
            raise InputError(f"straggler factor {factor} must be a finite number >= 1 (a slowdown)")
        out[rank] = factor
    return out


def chrome_trace(result: DESResult, plan: TrainingPlan) -> dict:
    """Chrome trace-event JSON (Perfetto): process = simulated unit (its ranks), thread = stream."""
    events = []
    pids: dict = {}
    tids = {"compute": 1, "dp": 2}
    tp_cp = plan.tp * plan.cp
    for unit, stream, name, start, dur, args in result.timeline:
        if unit not in pids:
            pid = len(pids) + 1
            pids[unit] = pid
            dp_i, s = unit
            first = (dp_i + plan.dp * s) * tp_cp
            events.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                           "args": {"name": f"stage {s} / dp {dp_i} (ranks {first}-{first + tp_cp - 1})"}})
            for sname, tid in tids.items():
                events.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                               "args": {"name": sname}})
        events.append({"name": name, "cat": stream, "ph": "X", "pid": pids[unit], "tid": tids[stream],
                       "ts": start * 1e6, "dur": dur * 1e6, "args": args})
    return {"traceEvents": events, "displayTimeUnit": "ms"}
