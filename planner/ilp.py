"""Integer programs of the planner, solved with pulp's bundled CBC.

Each formulation is one small function whose docstring states the math; constraint blocks carry
labels (`time[s]`, `memory[s]`, ...) so that `prob.writeLP` reads like the docstring. Every solve
runs with a time limit and a relative gap, and reports its status: `optimal` means CBC proved the
objective within `gap` of the bound; a time-limited incumbent is reported as not proven.

- `partition_ilp`: contiguous layers → pipeline stages (or interleaved chunks), uneven, minimising
  the slowest stage under per-device memory; `partition_count_ilp` when all layers cost the same,
  `partition_boundary_ilp` when dense and MoE layers mix (`partition_for_plan` builds the inputs
  from simulator.ops / simulator.memory / simulator.analytic).
- `hetero_replica_ilp`: data-parallel replicas on device groups of different types, each type
  with its own batch share, minimising the step time (Metis, Um et al. ATC'24; Cephalo, 2024).
"""
from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass, field

import pulp

from hwmodels.clusters import Cluster
from hwmodels.errors import InputError
from simulator.analytic import layer_time_s, step_costs
from simulator.memory import (FRAGMENTATION, WEIGHT_BYTES, expert_dp_size, inflight_microbatches,
                              layer_activation_bytes, lora_layer_params, model_states, stage_layers,
                              stage_memory)
from simulator.training import TrainingJob, TrainingPlan, micro_batches

DEFAULT_TIME_LIMIT_S = 2.0
DEFAULT_GAP = 0.01


@dataclass
class SolverRun:
    """What CBC reported for one solve."""

    status: str  # pulp.LpStatus: Optimal, Infeasible, Not Solved, ...
    solution: str  # pulp.LpSolution: Optimal Solution Found, Solution Found, No Solution Found, ...
    optimal: bool  # proven optimal within `gap`
    feasible: bool  # an integer solution exists (optimal or a time-limited incumbent)
    objective: float | None
    solve_time_s: float
    time_limit_s: float
    gap: float

    def to_dict(self) -> dict:
        return asdict(self)


def _check_limits(time_limit_s: float, gap: float):
    if not (isinstance(time_limit_s, (int, float)) and time_limit_s > 0):
        raise InputError(f"solver time limit {time_limit_s!r} must be a positive number of seconds")
    if not (isinstance(gap, (int, float)) and 0 <= gap < 1):
        raise InputError(f"solver gap {gap!r} must be a relative gap in [0, 1)")


def _solve(prob: pulp.LpProblem, time_limit_s: float, gap: float, warm: bool = False) -> SolverRun:
    _check_limits(time_limit_s, gap)
    solver = pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s, gapRel=gap, warmStart=warm)
    t0 = time.perf_counter()
    prob.solve(solver)
    sol = prob.sol_status
    if warm and not _integral(prob):
        # CBC can stop at the root once a MIP start meets the gap and hand back the root LP's
        # fractional values as "optimal": solve again from scratch rather than read them
        prob.solve(pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s, gapRel=gap))
        sol = prob.sol_status
    dt = time.perf_counter() - t0
    feasible = sol in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible) and _integral(prob)
    # The status follows what CBC proved (the solution status): pulp's problem status can read
    # "Infeasible" when the time limit came before any integer solution, or "Optimal" for a
    # time-limited incumbent; neither is proven.
    status = {pulp.LpSolutionIntegerFeasible: "Not Solved (time limit; incumbent not proven optimal)",
              pulp.LpSolutionNoSolutionFound: "Not Solved (time limit; no solution found)"}.get(
        sol, pulp.LpStatus[prob.status])
    return SolverRun(status=status, solution=pulp.LpSolution[sol],
                     optimal=sol == pulp.LpSolutionOptimal, feasible=feasible,
                     objective=pulp.value(prob.objective) if feasible else None,
                     solve_time_s=dt, time_limit_s=time_limit_s, gap=gap)


def _integral(prob: pulp.LpProblem, tol: float = 1e-6) -> bool:
    """Whether every integer variable of a solved problem holds an integer value."""
    return all(v.value() is None or abs(v.value() - round(v.value())) <= tol
               for v in prob.variables() if v.cat == pulp.LpInteger)


def solver_summary(runs: list, time_limit_s: float = DEFAULT_TIME_LIMIT_S, gap: float = DEFAULT_GAP) -> dict:
    """One status for the search's solves: optimal only when every solve was proven optimal."""
    runs = [getattr(r, "solver", r) for r in runs]
    runs = [r for r in runs if r is not None]
    if not runs:
        return {"status": "not run", "optimal": None, "time_limit_s": time_limit_s, "gap": gap, "solves": 0}
    worst = next((r for r in runs if not r.optimal), runs[0])
    return {"status": worst.status if worst.optimal or not worst.feasible else "time limit (not proven optimal)",
            "optimal": all(r.optimal for r in runs), "time_limit_s": time_limit_s, "gap": gap,
            "solves": len(runs), "solve_time_s": sum(r.solve_time_s for r in runs)}


# ---- layer-to-stage partition ----------------------------------------------------------------

@dataclass
class PartitionProblem:
    """Inputs of `partition_ilp`, per micro-batch and per device (one rank of a stage).

    The model's layers are cut into C = p·v contiguous chunks; chunk c runs on stage c mod p
    (Megatron-LM's interleaved placement, Narayanan et al. 2021 §2.2.2; v = 1 is plain 1F1B)."""

    layer_time_s: list  # t_i: forward + backward (+ recompute) + exposed TP/CP/EP comm of layer i
    layer_state_bytes: list  # w_i: weights + gradients + optimizer states of layer i after ZeRO
    layer_act_bytes: list  # a_i: activations layer i keeps per in-flight micro-batch
    inflight: list  # k_s: micro-batches stage s holds at its peak (1F1B: p − s)
    stage_extra_s: list  # e_s: time outside the layers (embedding on stage 0, LM head on the last)
    stage_fixed_bytes: list  # F_s: memory outside the layers (embedding/head states, buffers, reserve)
    capacity_bytes: float  # M: device memory
    chunks_per_stage: int = 1  # v: virtual stages per device
    micro_batches: int = 1  # m: weighs the slowest stage against the slowest chunk when v > 1
    act_factor: float = 1 + FRAGMENTATION  # φ: activations plus the allocator's fragmentation reserve

    def __post_init__(self):
        L, p, v = len(self.layer_time_s), len(self.inflight), self.chunks_per_stage
        if not (len(self.layer_state_bytes) == len(self.layer_act_bytes) == L):
            raise InputError(f"partition: per-layer lists must have the same length ({L} layers)")
        if not (len(self.stage_extra_s) == len(self.stage_fixed_bytes) == p):
            raise InputError(f"partition: per-stage lists must have the same length ({p} stages)")
        if not isinstance(v, int) or v < 1 or p < 1 or L < p * v:
            raise InputError(f"partition: {L} layers cannot fill {p} stages × {v} chunks "
                             f"(need layers >= stages·chunks >= 1)")

    @property
    def chunks(self) -> int:
        return len(self.inflight) * self.chunks_per_stage

    def _prefix(self, values) -> list:
        out = [0.0]
        for x in values:
            out.append(out[-1] + x)
        return out

    def stage_time(self, edges: list, s: int) -> float:
        """e_s + the layer times of stage s's chunks; edges[c]..edges[c+1] is chunk c."""
        p = len(self.inflight)
        return self.stage_extra_s[s] + sum(sum(self.layer_time_s[edges[c]:edges[c + 1]])
                                           for c in range(s, self.chunks, p))

    def chunk_time(self, edges: list, c: int) -> float:
        """Layer times of chunk c, with the embedding on chunk 0 and the LM head on the last."""
        p = len(self.inflight)
        extra = (self.stage_extra_s[0] if c == 0 else 0.0) \
            + (self.stage_extra_s[p - 1] if c == self.chunks - 1 else 0.0)
        return extra + sum(self.layer_time_s[edges[c]:edges[c + 1]])

    def objective(self, edges: list) -> float:
        """What `partition_ilp` minimises: the slowest stage (v = 1), or m × slowest stage +
        (p − 1) × slowest chunk (v > 1: interleaving's steady state and a bound on its bubble)."""
        p = len(self.inflight)
        z = max(self.stage_time(edges, s) for s in range(p))
        if self.chunks_per_stage == 1:
            return z
        return self.micro_batches * z + (p - 1) * max(self.chunk_time(edges, c) for c in range(self.chunks))

    def stage_bytes(self, edges: list, s: int) -> float:
        p = len(self.inflight)
        k = self.inflight[s] * self.act_factor
        return self.stage_fixed_bytes[s] + sum(self.layer_state_bytes[i] + k * self.layer_act_bytes[i]
                                               for c in range(s, self.chunks, p)
                                               for i in range(edges[c], edges[c + 1]))


@dataclass
class PartitionResult:
    layers_per_chunk: list | None  # None when no partition fits; one entry per chunk (= stage if v=1)
    layers_per_stage: list | None
    stage_time_s: list
    stage_bytes: list
    bottleneck_s: float | None  # slowest stage, one micro-batch
    objective: float | None  # PartitionProblem.objective of this partition
    solver: SolverRun | None
    uniform_bottleneck_s: float | None = None
    predicted_step_time_s: float | None = None  # with the partition (see partition_for_plan)
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["solver"] = self.solver.to_dict() if self.solver else None
        return d


def _edges(layers_per_chunk: list) -> list:
    out = [0]
    for n in layers_per_chunk:
        out.append(out[-1] + n)
    return out


def _result(pb: PartitionProblem, per_chunk: list, run: SolverRun | None) -> PartitionResult:
    p = len(pb.inflight)
    edges = _edges(per_chunk)
    times = [pb.stage_time(edges, s) for s in range(p)]
    mem = [pb.stage_bytes(edges, s) for s in range(p)]
    per_stage = [sum(per_chunk[c] for c in range(s, pb.chunks, p)) for s in range(p)]
    return PartitionResult(per_chunk, per_stage, times, mem, max(times), pb.objective(edges), run)


def partition_ilp(pb: PartitionProblem, time_limit_s: float = DEFAULT_TIME_LIMIT_S,
                  gap: float = DEFAULT_GAP, start: list | None = None) -> PartitionResult:
    """Best contiguous partition of `pb`: the layer-count formulation when every layer costs the
    same (dense models, all-MoE models), the boundary formulation otherwise (dense and MoE layers
    mixed). Both minimise `PartitionProblem.objective` under per-device memory."""
    same = all(len(set(x)) == 1 for x in (pb.layer_time_s, pb.layer_state_bytes, pb.layer_act_bytes))
    return (partition_count_ilp if same else partition_boundary_ilp)(pb, time_limit_s, gap, start)


def partition_count_ilp(pb: PartitionProblem, time_limit_s: float = DEFAULT_TIME_LIMIT_S,
                        gap: float = DEFAULT_GAP, start: list | None = None) -> PartitionResult:
    """Uneven partition of identical layers (time t, states w, activations a each): only how many
    layers each chunk holds matters. Integer n_c ≥ 1 layers in chunk c (C = p·v chunks, chunk c on
    stage c mod p):

        min z                      (v = 1)     or    m·z + (p − 1)·u     (v > 1)
        stage[s]:   N_s = Σ_{c ≡ s mod p} n_c          (N_s integer: layers on stage s)
        layers:     Σ_s N_s = L
        time[s]:    z ≥ e_s + t·N_s
        chunk[c]:   u ≥ t·n_c (+ e_0 on chunk 0, + e_{p−1} on chunk C−1)                 (v > 1)
        memory[s]:  F_s + (w + φ·k_s·a)·N_s ≤ M
        symmetry[c]: n_c ≥ n_{c+p} for the chunks of a stage that hold neither embedding nor head

    C + p general integers instead of ~L·C binaries. Branching on the stage totals N_s and
    ordering a stage's interchangeable chunks lets CBC prove optimality in milliseconds where the
    boundary formulation (`partition_boundary_ilp`, same objective) stops at its time limit.
    """
    L, p, C = len(pb.layer_time_s), len(pb.inflight), pb.chunks
    t, w, a = pb.layer_time_s[0], pb.layer_state_bytes[0], pb.layer_act_bytes[0]
    prob = pulp.LpProblem("layer_partition_counts", pulp.LpMinimize)
    z = pulp.LpVariable("slowest_stage_s", lowBound=0)
    n = {c: pulp.LpVariable(f"layers_in_chunk_{c}", lowBound=1, upBound=L - C + 1, cat="Integer")
         for c in range(C)}
    if pb.chunks_per_stage == 1:
        prob += z
    else:
        u = pulp.LpVariable("slowest_chunk_s", lowBound=0)
        prob += pb.micro_batches * z + (p - 1) * u
        for c in range(C):
            extra = (pb.stage_extra_s[0] if c == 0 else 0.0) + (pb.stage_extra_s[p - 1] if c == C - 1 else 0.0)
            prob += u >= extra + t * n[c], f"chunk_{c}"
    N = {s: pulp.LpVariable(f"layers_on_stage_{s}", lowBound=1, upBound=L, cat="Integer") for s in range(p)}
    prob += pulp.lpSum(N.values()) == L, "layers"
    for s in range(p):
        prob += N[s] == pulp.lpSum(n[c] for c in range(s, C, p)), f"stage_{s}"
        prob += z >= pb.stage_extra_s[s] + t * N[s], f"time_{s}"
        prob += pb.stage_fixed_bytes[s] + (w + pb.inflight[s] * pb.act_factor * a) * N[s] <= pb.capacity_bytes, \
            f"memory_{s}"
    for c in range(1, C - 1 - p):  # chunks c and c + p: same stage, no embedding or head on either
        prob += n[c] >= n[c + p], f"symmetry_{c}"
    warm = False
    if start is not None and len(start) == C and sum(start) == L and min(start) >= 1:
        edges = _edges(start)
        for c in range(C):
            n[c].setInitialValue(start[c])
        for s in range(p):
            N[s].setInitialValue(sum(start[c] for c in range(s, C, p)))
        z.setInitialValue(max(pb.stage_time(edges, s) for s in range(p)))
        if pb.chunks_per_stage > 1:
            u.setInitialValue(max(pb.chunk_time(edges, c) for c in range(C)))
        warm = True
    run = _solve(prob, time_limit_s, gap, warm)
    if not run.feasible:
        return PartitionResult(None, None, [], [], None, None, run)
    return _result(pb, [int(round(n[c].value())) for c in range(C)], run)


def partition_boundary_ilp(pb: PartitionProblem, time_limit_s: float = DEFAULT_TIME_LIMIT_S,
                           gap: float = DEFAULT_GAP, start: list | None = None) -> PartitionResult:
    """Contiguous, uneven layer-to-chunk partition minimising the slowest stage (any layers).

    Layers i = 0..L−1 with prefix sums P(j) = Σ_{i<j} t_i, W(j) = Σ_{i<j} w_i, A(j) = Σ_{i<j} a_i;
    chunks c = 0..C−1 (C = p·v), chunk c on stage c mod p. Binary y[j,c] = 1 when boundary c (the
    end of chunk c) sits before layer j, so chunk c holds layers B_{c−1} .. B_c − 1 with
    B_c = Σ_j j·y[j,c], B_{−1} = 0, B_{C−1} = L, and a prefix sum at a boundary is linear:
    P(B_c) = Σ_j P(j)·y[j,c].

        min z                      (v = 1)     or    m·z + (p − 1)·u     (v > 1)
        pick[c]:    Σ_j y[j,c] = 1                                         (c = 0..C−2)
        order[c]:   B_c − B_{c−1} ≥ 1                                       (no empty chunk)
        time[s]:    z ≥ e_s + Σ_{c ≡ s mod p} (P(B_c) − P(B_{c−1}))
        chunk[c]:   u ≥ P(B_c) − P(B_{c−1}) (+ e_0 on chunk 0, + e_{p−1} on chunk C−1)   (v > 1)
        memory[s]:  F_s + Σ_{c ≡ s mod p} (W(B_c) − W(B_{c−1}) + φ·k_s·(A(B_c) − A(B_{c−1}))) ≤ M

    The embedding and the LM head stay on the first and last stage through e_s and F_s. Minimising
    the slowest stage minimises the steady state m·max_s(stage) of 1F1B (Narayanan et al. 2021
    §2.2), whose bubble depends on the mean stage, which no partition changes. With interleaving
    (§2.2.2) each chunk is a pipeline step: (p − 1)·slowest chunk bounds the bubble, and the
    m·z + (p − 1)·u objective keeps a stage's chunks balanced rather than merely their sum.
    `start` (layers per chunk) seeds CBC with a known solution. (Boundary variables with
    prefix sums solve ~40× faster in CBC than per-layer assignment variables with contiguity
    constraints: 0.2 s vs 8 s on an 80-layer, 8-stage case.)
    """
    L, p, C = len(pb.layer_time_s), len(pb.inflight), pb.chunks
    P, W, A = pb._prefix(pb.layer_time_s), pb._prefix(pb.layer_state_bytes), pb._prefix(pb.layer_act_bytes)
    pos = list(range(L + 1))
    prob = pulp.LpProblem("layer_partition", pulp.LpMinimize)
    z = pulp.LpVariable("slowest_stage_s", lowBound=0)
    span = {c: range(c + 1, L - C + c + 2) for c in range(C - 1)}  # every chunk keeps >= 1 layer
    y = {(j, c): pulp.LpVariable(f"end_of_chunk_{c}_before_layer_{j}", cat="Binary")
         for c in range(C - 1) for j in span[c]}

    def at(c, prefix):  # prefix(B_c) as a linear expression
        if c < 0:
            return 0.0
        if c >= C - 1:
            return prefix[L]
        return pulp.lpSum(prefix[j] * y[j, c] for j in span[c])

    def over(s, prefix):  # Σ over stage s's chunks of prefix(B_c) − prefix(B_{c−1})
        return pulp.lpSum(at(c, prefix) - at(c - 1, prefix) for c in range(s, C, p))

    if pb.chunks_per_stage == 1:
        prob += z
    else:
        u = pulp.LpVariable("slowest_chunk_s", lowBound=0)
        prob += pb.micro_batches * z + (p - 1) * u
        for c in range(C):
            extra = (pb.stage_extra_s[0] if c == 0 else 0.0) + (pb.stage_extra_s[p - 1] if c == C - 1 else 0.0)
            prob += u >= extra + at(c, P) - at(c - 1, P), f"chunk_{c}"
    for c in range(C - 1):
        prob += pulp.lpSum(y[j, c] for j in span[c]) == 1, f"pick_{c}"
    for c in range(1, C - 1):
        prob += at(c, pos) - at(c - 1, pos) >= 1, f"order_{c}"
    for s in range(p):
        k = pb.inflight[s] * pb.act_factor
        prob += z >= pb.stage_extra_s[s] + over(s, P), f"time_{s}"
        prob += pb.stage_fixed_bytes[s] + over(s, W) + k * over(s, A) <= pb.capacity_bytes, f"memory_{s}"
    warm = False
    if start is not None and len(start) == C and sum(start) == L and min(start) >= 1:
        edges = _edges(start)
        for (j, c), var in y.items():
            var.setInitialValue(1 if j == edges[c + 1] else 0)
        z.setInitialValue(max(pb.stage_time(edges, s) for s in range(p)))
        if pb.chunks_per_stage > 1:
            u.setInitialValue(max(pb.chunk_time(edges, c) for c in range(C)))
        warm = True
    run = _solve(prob, time_limit_s, gap, warm)
    if not run.feasible:
        return PartitionResult(None, None, [], [], None, None, run)
    ends = [next(j for j in span[c] if round(y[j, c].value() or 0) == 1) for c in range(C - 1)]
    edges = [0] + ends + [L]
    return _result(pb, [edges[c + 1] - edges[c] for c in range(C)], run)


def partition_brute_force(pb: PartitionProblem) -> tuple[float, list] | None:
    """(objective, layers per chunk) by trying every contiguous partition; None if none fits.
    For checking `partition_ilp` on small instances: C(L−1, p·v−1) partitions."""
    L, p, C = len(pb.layer_time_s), len(pb.inflight), pb.chunks
    best = None
    for cuts in itertools.combinations(range(1, L), C - 1):
        edges = (0,) + cuts + (L,)
        if any(pb.stage_bytes(edges, s) > pb.capacity_bytes for s in range(p)):
            continue
        worst = pb.objective(edges)
        if best is None or worst < best[0]:
            best = (worst, [edges[c + 1] - edges[c] for c in range(C)])
    return best


def partition_problem(job: TrainingJob, plan: TrainingPlan, cluster: Cluster) -> tuple[PartitionProblem, list]:
    """A `PartitionProblem` for a plan and a balanced partition to start from (the uniform one
    when pp·vpp divides the layers; here it need not).

    Per-layer times: `simulator.analytic.layer_time_s` (the engine's `work` of one dense or MoE
    layer). Per-layer memory: `simulator.memory.model_states` (parameter states after ZeRO
    sharding) and `simulator.memory.layer_activation_bytes`. Per-stage extras e_s and F_s are what
    `simulator.analytic.step_costs` and `simulator.memory.stage_memory` put on a stage beyond its
    layers (embedding, LM head, tied-embedding copy, logits, buffers, reserve); the ZeRO-3 gather
    buffer and full recompute's one-layer working set are taken at the model's largest layer.
    """
    m = job.model
    L, p, v, t = m.num_layers, plan.pp, plan.vpp, plan.tp
    if not 1 <= p * v <= L:
        raise InputError(f"partition: pp·vpp={p}·{v} must be in 1..{L} (the model's layers)")
    moe = [m.is_moe_layer(i) for i in range(L)]
    layer_s = {f: layer_time_s(job, plan, cluster, f) for f in set(moe)}
    times = [layer_s[f] for f in moe]
    dp_cp, expert_dp = plan.dp * plan.cp, expert_dp_size(plan.tp, plan.cp, plan.dp, plan.ep, plan.etp)
    z = plan.zero
    experts = m.num_experts * m.expert_params() if m.is_moe else 0
    act = {f: layer_activation_bytes(m, job, plan, f) for f in set(moe)}
    states, acts = [], []
    for i, f in enumerate(moe):
        dense = (m.layer_params(i) - (experts if f else 0)) / t
        expert = (m.num_experts // plan.ep) * m.expert_params() / plan.etp if f else 0.0  # as stage_params
        adapter = lora_layer_params(m, job, f) / t if job.lora_rank else None
        states.append(float(sum(model_states(dense, expert, z, plan.offload, dp_cp, expert_dp, adapter))))
        acts.append(act[f])
    inflight = [inflight_microbatches(plan, job, s) for s in range(p)]
    # stage_layers/step_costs/stage_memory take L // (p·v) layers per chunk (no validation), so
    # the extras below come out right even when p·v does not divide L
    sc = step_costs(job, plan, cluster)
    phi = 1 + FRAGMENTATION
    max_layer = max(m.layer_params(i) for i in range(L))
    none = TrainingPlan(**{**plan.to_dict(), "recompute": "none"})
    full_ws = max(layer_activation_bytes(m, job, none, f) for f in set(moe)) if plan.recompute == "full" else 0.0
    extra_s, fixed = [], []
    for s in range(p):
        layers = stage_layers(m, plan, s)
        extra_s.append(max(0.0, sc.stages[s].total_s - sum(times[i] for i in layers)))
        f = stage_memory(m, job, plan, s)["peak_bytes"] - sum(states[i] + phi * inflight[s] * acts[i] for i in layers)
        if z == 3:  # gather buffer at the model's largest layer
            f += 2 * WEIGHT_BYTES * (max_layer - max(m.layer_params(i) for i in layers)) / t
        if plan.recompute == "full":
            f += phi * (full_ws - layer_activation_bytes(m, job, none, any(moe[i] for i in layers)))
        fixed.append(f)
    pb = PartitionProblem(times, states, acts, inflight, extra_s, fixed, float(cluster.device.hbm_bytes), v,
                          micro_batches(plan, job))
    q, r = divmod(L, p * v)
    start = [q + (1 if 0 < c <= r else 0) for c in range(p * v)] if r < p * v - 1 else \
        [q + (1 if c < r else 0) for c in range(p * v)]
    return pb, start


def partition_for_plan(job: TrainingJob, plan: TrainingPlan, cluster: Cluster,
                       time_limit_s: float = DEFAULT_TIME_LIMIT_S, gap: float = DEFAULT_GAP) -> PartitionResult:
    """Uneven partition for a plan, and the step time it would give where pp·vpp divides the
    layers: the analytic step less the change of the partition objective (m × slowest stage, plus
    (p − 1) × slowest chunk with interleaving); the DP/ZeRO tail is kept at the uniform one's."""
    from simulator.analytic import estimate
    pb, start = partition_problem(job, plan, cluster)
    res = partition_ilp(pb, time_limit_s, gap, start=start)
    uniform = job.model.num_layers % (plan.pp * plan.vpp) == 0
    if uniform:
        edges = _edges(start)
        res.uniform_bottleneck_s = max(pb.stage_time(edges, s) for s in range(plan.pp))
        if res.bottleneck_s is not None:
            step = estimate(job, plan, cluster).step_time_s
            m = micro_batches(plan, job)
            gain = (pb.objective(edges) - res.objective if plan.vpp > 1
                    else m * (res.uniform_bottleneck_s - res.bottleneck_s))
            res.predicted_step_time_s = step - gain
    if res.layers_per_chunk is not None and res.layers_per_chunk != start:
        res.notes.append(f"to run this partition: plan layout={partition_layout(res.layers_per_chunk)} "
                         "(Megatron-Core --pipeline-model-parallel-layout)")
    return res


def partition_layout(layers_per_chunk: list) -> str:
    """A partition as a Megatron-Core pipeline layout string (`simulator.training` parses it):
    chunks separated by `|`, the embedding `E` opening the first and the loss `L` closing the last."""
    chunks = [f"t*{n}" for n in layers_per_chunk]
    chunks[0], chunks[-1] = "E" + chunks[0], chunks[-1] + "L"
    return "|".join(chunks)


# ---- heterogeneous data-parallel replicas ----------------------------------------------------

@dataclass(frozen=True)
class ReplicaOption:
    """One way to run a data-parallel replica on a device group: `devices` devices processing
    `batch` sequences per step in `step_s` seconds (its own best plan, before the cross-replica
    gradient synchronisation)."""

    group: str
    devices: int
    batch: int
    step_s: float
    plan: str = ""


@dataclass
class HeteroSolution:
    replicas: dict  # option index -> replica count
    compute_step_s: float | None
    solver: SolverRun


def hetero_replica_ilp(options: list, available: dict, global_batch: int,
                       time_limit_s: float = DEFAULT_TIME_LIMIT_S, gap: float = 0.0) -> HeteroSolution:
    """Replicas on heterogeneous device groups with per-type batch shares, minimising the step.

    Options o (a device group g(o), devices d_o, batch b_o, step time τ_o). Integer r_o ≥ 0
    replicas of option o, binary u_o (option used), continuous T (slowest replica):

        min T
        batch:         Σ_o b_o · r_o = B                    (every sequence of the step runs once)
        devices[g]:    Σ_{o: g(o)=g} d_o · r_o ≤ D_g         (devices of each group)
        used[o]:       r_o ≤ ⌊D_g / d_o⌋ · u_o
        makespan[o]:   T ≥ τ_o · u_o                         (synchronous data parallelism)

    Faster groups take larger shares b_o; a group may stay idle. The cross-replica gradient
    all-reduce is added by the caller (it does not depend on the shares).
    """
    if not options:
        raise InputError("heterogeneous plan: no replica option fits on any device group")
    prob = pulp.LpProblem("hetero_replicas", pulp.LpMinimize)
    T = pulp.LpVariable("step_s", lowBound=0)
    r = {o: pulp.LpVariable(f"replicas_{o}", lowBound=0, cat="Integer") for o in range(len(options))}
    u = {o: pulp.LpVariable(f"used_{o}", cat="Binary") for o in range(len(options))}
    prob += T
    prob += pulp.lpSum(opt.batch * r[o] for o, opt in enumerate(options)) == global_batch, "batch"
    for g, cap in available.items():
        prob += pulp.lpSum(opt.devices * r[o] for o, opt in enumerate(options) if opt.group == g) <= cap, f"devices_{g}"
    for o, opt in enumerate(options):
        prob += r[o] <= (available[opt.group] // opt.devices) * u[o], f"used_{o}"
        prob += T >= opt.step_s * u[o], f"makespan_{o}"
    run = _solve(prob, time_limit_s, gap)
    if not run.feasible:
        return HeteroSolution({}, None, run)
    reps = {o: int(round(r[o].value())) for o in r if round(r[o].value() or 0) > 0}
    return HeteroSolution(reps, max(options[o].step_s for o in reps), run)
