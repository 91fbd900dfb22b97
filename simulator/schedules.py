"""Pipeline schedules, one class each, behind a registry by name.

A schedule owns everything that differs between pipeline schedules:

- `check`: the rules a plan must meet to run it (virtual stages, micro-batch multiples);
- `chunk_ids` / `stage_of_chunk`: where the model's chunks of contiguous layers live
  (round-robin for interleaving, a V for ZB-V and DualPipe);
- `bubble_s`: the idle time of the closed form, vectorised over candidate plans;
- `inflight`: how many micro-batches' activations a stage holds at its peak;
- `order`: the static F/B task order the DES runs, and `weight_split` / `w_cap` when the
  backward is split into B (input gradient) and W (weight gradient) that the DES defers greedily.

Adding a schedule is adding a class here and registering it in `SCHEDULES`.

`bubble_s(p, v, m, tot, fwd, wgrad)` receives, for n candidate plans on a pipeline of p stages,
arrays of shape (n, p): one micro-batch's time through each stage's chunks (forward + backward
with exposed communication), its forward part, and its weight-gradient part; `m` and `v` are
arrays of shape (n,) or scalars. It returns shape (n,).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np


class Schedule:
    name = ""
    # the backward is split into B and W (Zero Bubble); the DES defers W greedily up to w_cap
    weight_split = False
    # a deferred W may fill the wait for an input already sent (False: only for one not yet sent,
    # so a tight order is not shifted by a W where a transfer of microseconds would do)
    fill_in_flight = True
    # copies of a stage's parameters a rank holds (DualPipe keeps two)
    param_copies = 1
    # planner pruning: (bucket, reason) when this schedule adds nothing the planner does not
    # already score, for pp == 1 and for pp > 1 (None: always scored)
    same_when_pp1: str | None = None
    dominated_by: str | None = None

    # -- validity --
    def vpp_default(self, vpp: int) -> int:
        """The virtual stages a plan string that omits vpp gets."""
        return vpp

    def check(self, pp: int, vpp: int, micro_batches: int) -> str:
        """Why a plan cannot run this schedule, or ''."""
        if vpp > 1:
            return f"plan vpp={vpp} needs schedule=interleaved, got {self.name}"
        return ""

    # -- placement --
    def chunks_per_stage(self, vpp: int) -> int:
        return vpp

    def chunk_ids(self, stage: int, pp: int, vpp: int) -> list[int]:
        """Model-order chunk indices held by `stage`, in local order (round-robin: stage,
        stage + pp, ...; Narayanan et al. 2021 §2.2.2)."""
        return [stage + j * pp for j in range(self.chunks_per_stage(vpp))]

    def model_chunks(self, pp: int, vpp: int) -> int:
        """Chunks the model's layers are split into (DualPipe: pp, each held twice)."""
        return pp * self.chunks_per_stage(vpp)

    def fill_drain_hops(self, pp: int, vpp: int) -> int:
        """Sends between ranks on a micro-batch's path through every chunk: the chain the fill
        and the drain wait for when steady-state sends overlap compute."""
        return self.model_chunks(pp, vpp) - 1

    def stage_of_chunk(self, chunk: int, pp: int, vpp: int) -> int:
        return chunk % pp

    def stage_of_pass(self, chunk: int, mb: int, pp: int, vpp: int) -> int:
        """The stage that runs model chunk `chunk` for micro-batch `mb` (the DES routes
        activations and gradients by it; DualPipe's two directions run a chunk on two stages)."""
        return self.stage_of_chunk(chunk, pp, vpp)

    def holds_chunk(self, stage: int, chunk: int, pp: int, vpp: int) -> bool:
        """Whether `stage` holds model chunk `chunk` (the embedding lives with chunk 0, the LM
        head and loss with the last chunk)."""
        return chunk in self.chunk_ids(stage, pp, vpp)

    def pass_fraction(self, pp: int, vpp: int) -> float:
        """Share of the step's micro-batches that pass through each local chunk (DualPipe
        sends half of them each way)."""
        return 1.0

    def vpp_options(self, num_layers: int, pp: int) -> list[int]:
        """Virtual-stage counts the planner searches for this schedule."""
        return [1]

    def uneven_vpp_options(self, num_layers: int, pp: int) -> list[int]:
        """Virtual-stage counts the planner tries with uneven stages, when pp does not divide the
        layers (`simulator.training.uneven_candidates` then says which splits exist)."""
        return self.vpp_options(num_layers, pp)

    # -- closed forms --
    def bubble_s(self, p, v, m, tot, fwd, wgrad):
        """1F1B and GPipe: (p − 1) stage-times (Narayanan et al. 2021 §2.2)."""
        return (p - 1) * tot.sum(axis=-1) / p

    def inflight(self, p: int, v: int, m, stage: int):
        """1F1B: stage s holds min(m, p − s) micro-batches (Narayanan et al. 2021 §2.2.1)."""
        return np.minimum(m, p - stage)

    # -- DES --
    def order(self, stage: int, p: int, m: int, v: int, times=None) -> list[tuple[str, int, int]]:
        """Static task order of one stage: ("F"|"B", local chunk, micro-batch). `times`, when the
        DES gives it, is per stage and local chunk (forward, input-gradient backward, weight
        gradient) seconds plus the p2p seconds, `(per_stage, p2p)`; only schedules that derive their
        order from the durations (ZB-V) read it. 1F1B: a warm-up of p − s − 1 forwards, then one
        forward one backward (Narayanan et al. 2021 §2.2.1)."""
        w = min(p - stage - 1, m)
        out = [("F", 0, i) for i in range(w)]
        for i in range(m - w):
            out += [("F", 0, w + i), ("B", 0, i)]
        return out + [("B", 0, i) for i in range(m - w, m)]

    def w_cap(self, p: int) -> int:
        """Chunk-passes a stage may hold (forward done, W pending) before W must run."""
        raise NotImplementedError(self.name)


class OneFOneB(Schedule):
    """1F1B (PipeDream-Flush; Narayanan et al. 2021 §2.2.1): a warm-up of forwards, then one
    forward one backward, so a stage holds at most p − s micro-batches."""

    name = "1f1b"


class GPipe(Schedule):
    """All forwards, then all backwards (Huang et al. 2019): 1F1B's bubble, m micro-batches held."""

    name = "gpipe"
    dominated_by = "gpipe: 1f1b's step time, more activations"

    def inflight(self, p, v, m, stage):
        """Every micro-batch's activations until the backwards start (Huang et al. 2019 §2.2)."""
        return m

    def order(self, stage, p, m, v, times=None):
        return [("F", 0, i) for i in range(m)] + [("B", 0, i) for i in range(m)]


class Interleaved(Schedule):
    """Interleaved 1F1B (Narayanan et al. 2021 §2.2.2, as Megatron-LM runs it)."""

    name = "interleaved"

    def check(self, pp, vpp, micro_batches):
        if vpp == 1:
            return "schedule=interleaved needs vpp >= 2"
        if pp == 1:
            return "plan vpp > 1 needs pp > 1"
        if micro_batches % pp:
            return (f"interleaved schedule needs micro-batches per step ({micro_batches}) "
                    f"to be a multiple of pp={pp} (Narayanan et al. 2021 §2.2.2)")
        return ""

    def vpp_options(self, num_layers, pp):
        return [v for v in range(2, num_layers + 1) if num_layers % v == 0]

    def uneven_vpp_options(self, num_layers, pp):
        # every count that leaves each chunk a layer (the embedding and loss may take a slot each)
        return list(range(2, (num_layers + 2) // pp + 1))

    def bubble_s(self, p, v, m, tot, fwd, wgrad):
        """(p − 1)/v stage-times (Narayanan et al. 2021 §2.2.2)."""
        return (p - 1) / v * tot.sum(axis=-1) / p

    def inflight(self, p, v, m, stage):
        """Korthikanti et al. 2022 §4.2.3: the first stage holds p micro-batches × (1 + (p−1)/(p·v))."""
        if stage == 0:
            return np.minimum(m, p) * (1 + (p - 1) / (p * v))
        return np.minimum(m, p - stage) * (1 + (p - 1 - stage) / (p * v))

    def order(self, stage, p, m, v, times=None):
        """Warm-up of (p − s − 1)·2 + (v − 1)·p chunk-forwards; micro-batches in groups of p per
        chunk (Megatron-LM's interleaved 1F1B)."""
        total = m * v

        def fwd(k):
            return ("F", (k // p) % v, (k // (p * v)) * p + k % p)

        def bwd(k):
            return ("B", v - 1 - (k // p) % v, (k // (p * v)) * p + k % p)
        w = min((p - stage - 1) * 2 + (v - 1) * p, total)
        out = [fwd(k) for k in range(w)]
        for i in range(total - w):
            out += [fwd(w + i), bwd(i)]
        return out + [bwd(k) for k in range(total - w, total)]


class ZeroBubbleH1(Schedule):
    """ZB-H1 (Qi et al. 2023, arXiv 2401.10241 §3.1): 1F1B's order and memory, W deferred."""

    name = "zb-h1"
    weight_split = True
    same_when_pp1 = "zb-h1/zb-h2 are 1f1b when pp=1"

    def bubble_s(self, p, v, m, tot, fwd, wgrad):
        """(p − 1)(T_F + T_B − T_W), with T_B the input-gradient part (§3.1)."""
        return (p - 1) * (tot - 2 * wgrad).sum(axis=-1) / p

    def w_cap(self, p):
        # a micro-batch past its B keeps only the GEMM inputs W needs, so one more fits p·M_B
        return p + 1


class ZeroBubbleH2(ZeroBubbleH1):
    """ZB-H2 (Qi et al. 2023 §3.1): a longer warm-up of 2(p − s − 1) forwards; 2p − 1 held."""

    name = "zb-h2"

    def bubble_s(self, p, v, m, tot, fwd, wgrad):
        """W passes fill the cool-down; the warm-up wait (p − 1)·T_F stays (only the paper's
        post-validation optimizer step removes it)."""
        return (p - 1) * fwd.sum(axis=-1) / p

    def inflight(self, p, v, m, stage):
        """Stage s holds up to 2p − 1 − s micro-batches (Qi et al. 2023 §3.1: peak (2p − 1)·M_B)."""
        return np.minimum(m, 2 * p - 1 - stage)

    def order(self, stage, p, m, v, times=None):
        w = min(m, 2 * (p - stage - 1))
        out = [("F", 0, i) for i in range(w)]
        for i in range(m - w):
            out += [("F", 0, w + i), ("B", 0, i)]
        return out + [("B", 0, i) for i in range(m - w, m)]

    def w_cap(self, p):
        return 2 * p - 1


class ZeroBubbleV(Schedule):
    """ZB-V (Qi et al., arXiv 2401.10241, its ZB-V section; "V-ZB" in arXiv 2405.15362): the model
    cut into 2p chunks, stage s holding chunks s and 2p − 1 − s, so a micro-batch's forward runs
    down the stages and back up (a V) and its backward the reverse; B and W split as in ZB-H1."""

    name = "zb-v"
    weight_split = True
    fill_in_flight = False
    same_when_pp1 = "zb-v is 1f1b when pp=1"

    def vpp_default(self, vpp):
        return 2

    def check(self, pp, vpp, micro_batches):
        if vpp != 2:
            return f"schedule=zb-v places two chunks per stage in a V: vpp must be 2, got {vpp}"
        return ""

    def vpp_options(self, num_layers, pp):
        return [2]

    def fill_drain_hops(self, pp, vpp):
        # the turn of the V (chunk p−1 to chunk p) stays on the last stage: no send
        return 2 * pp - 2

    def chunk_ids(self, stage, pp, vpp):
        return [stage, 2 * pp - 1 - stage]

    def stage_of_chunk(self, chunk, pp, vpp):
        return chunk if chunk < pp else 2 * pp - 1 - chunk

    def bubble_s(self, p, v, m, tot, fwd, wgrad):
        """(p − 1) chunk-forwards: the last stage's wait for the first micro-batch to come down
        the V; deferred W passes fill the cool-down, so with T_F = T_B = T_W nothing else idles
        (arXiv 2401.10241's ZB-V section, 2405.15362's V-ZB, the repository README's table: zero
        bubble once the optimizer post-validation lets the next step start staggered, the same wait
        ZB-H2 keeps here). A chunk is half a stage."""
        return (p - 1) * fwd.sum(axis=-1) / (2 * p)

    def inflight(self, p, v, m, stage):
        """Every stage peaks at p micro-batches through both its chunks, p·M_B, 1F1B's first-stage
        peak (sail-sg/zero-bubble-pipeline-parallelism README table: ZBV 1x 1F1B activation memory;
        2405.15362's V-ZB: p micro-batches)."""
        return np.minimum(m, p)

    def order(self, stage, p, m, v, times=None):
        """F/B order of a greedy list schedule of the V run with the stages' own durations (unit
        times without them; `_v_orders`); the DES defers W as the schedule did."""
        return list(_v_orders(p, m, _times_key(p, times))[0][stage])

    def w_cap(self, p):
        # p·M_B: 2p chunk-passes of half a stage each
        return 2 * p


class DualPipe(Schedule):
    """DualPipe (DeepSeek-AI, arXiv 2412.19437 §3.2.1, Fig. 5, Table 2; github deepseek-ai/DualPipe):
    micro-batches fed from both ends. Rank s holds chunk s of the forward-direction pipeline and
    chunk p − 1 − s of the reverse one (each L/p layers: twice 1F1B's parameters); even micro-batches
    enter at stage 0, odd ones at stage p − 1, so the embedding and LM head live on both end stages."""

    name = "dualpipe"
    weight_split = True
    fill_in_flight = False
    param_copies = 2

    def check(self, pp, vpp, micro_batches):
        if vpp != 1:
            return f"schedule=dualpipe holds two whole stages per rank, not virtual stages: vpp must be 1, got {vpp}"
        if pp < 2 or pp % 2:
            return f"schedule=dualpipe needs an even pp >= 2, got pp={pp} (arXiv 2412.19437 §3.2.1)"
        if micro_batches % 2 or micro_batches < 2 * pp:
            return (f"schedule=dualpipe needs an even number of micro-batches per step, at least 2·pp = "
                    f"{2 * pp}, got {micro_batches} (deepseek-ai/DualPipe: half each way, a full pipe each way)")
        return ""

    def chunks_per_stage(self, vpp):
        return 2

    def model_chunks(self, pp, vpp):
        return pp

    def chunk_ids(self, stage, pp, vpp):
        return [stage, pp - 1 - stage]

    def stage_of_chunk(self, chunk, pp, vpp):
        return chunk  # the forward-direction copy

    def stage_of_pass(self, chunk, mb, pp, vpp):
        return chunk if mb % 2 == 0 else pp - 1 - chunk

    def pass_fraction(self, pp, vpp):
        return 0.5

    def bubble_s(self, p, v, m, tot, fwd, wgrad):
        """(PP/2 − 1)(F&B + B − 3W) (arXiv 2412.19437 Table 2), B the full backward. F&B, an
        overlapped forward-backward pair, is taken as F + B: the pair's computations share one
        stream; what the overlap hides is communication, already counted as exposed in F and B."""
        f, b, w = fwd.sum(axis=-1) / p, (tot - fwd).sum(axis=-1) / p, wgrad.sum(axis=-1) / p
        return (p // 2 - 1) * np.maximum(0.0, (f + b) + b - 3 * w)

    def inflight(self, p, v, m, stage):
        """PP + 1 micro-batches of one chunk (arXiv 2412.19437 Table 2), in units of a micro-batch
        through both chunks the rank holds."""
        return np.minimum(m, p + 1) / 2

    def order(self, stage, p, m, v, times=None):
        """deepseek-ai/DualPipe `DualPipe.step`, in its eight phases. Phase 0 is the direction
        entering at the rank's own end of the pipe (local chunk 0 in the first half of the ranks,
        1 in the second), phase 1 the other; an overlapped pair F&B runs as F then B, and W passes
        are the DES's to defer (`w_cap`)."""
        half, h = p // 2, min(stage, p - 1 - stage)
        local = (0, 1) if stage < half else (1, 0)  # local chunk of phase 0, phase 1
        done = {("F", 0): 0, ("F", 1): 0, ("B", 0): 0, ("B", 1): 0}
        out: list = []

        def run(kind, *phases):
            for ph in phases:
                j = local[ph]
                out.append((kind, j, 2 * done[(kind, j)] + j))  # direction j's micro-batches: j, j + 2, ...
                done[(kind, j)] += 1

        def steps(n, *tasks):
            for _ in range(n):
                for kind, ph in tasks:
                    run(kind, ph)
        steps(2 * (half - h - 1), ("F", 0))                                   # 1: nF0
        steps(h + 1, ("F", 0), ("F", 1))                                      # 2: nF0F1
        steps(half - h - 1, ("B", 1), ("F", 1))                               # 3: nB1W1F1
        steps(m // 2 - p + h + 1, ("F", 0), ("B", 1), ("F", 1), ("B", 0))     # 4: nF0B1F1B0
        steps(half - h - 1, ("B", 1), ("F", 1), ("B", 0))                     # 5: nB1F1B0
        steps(h + 1, ("B", 1), ("B", 0))                                      # 6: nB1B0
        steps(half - h - 1, ("B", 0))                                         # 7: nWB0; 8: nW
        return out

    def w_cap(self, p):
        return p + 1


def _times_key(p: int, times) -> tuple:
    """Hashable per-stage, per-local-chunk (F, B, W) seconds of a V schedule and its transfer time
    (0); unit times when the DES gives none (or a degenerate zero duration)."""
    unit = (tuple(((1.0, 1.0, 1.0), (1.0, 1.0, 1.0)) for _ in range(p)), 0.0)
    if times is None:
        return unit
    per_stage, _ = times
    key = tuple(tuple((float(f), float(b), float(w)) for f, b, w in chunks) for chunks in per_stage)
    if any(f <= 0 or b <= 0 for chunks in key for f, b, _ in chunks):
        return unit
    # the order is planned without transfer times: planned with them, the greedy choices between
    # near-equal passes shift and cost whole passes; the DES adds the transfers (`fill_in_flight`)
    return key, 0.0


# Pass priorities `_v_orders` tries, keeping the shortest schedule (as the zero-bubble repository's
# ZB-V scheduler tries its fill variants): one is best balanced, others when T_B exceeds T_W.
V_PRIORITIES = ((("B", 0), ("F", 1), ("B", 1), ("F", 0)), (("F", 1), ("B", 1), ("F", 0), ("B", 0)),
                (("F", 1), ("B", 1), ("B", 0), ("F", 0)), (("B", 0), ("F", 1), ("F", 0), ("B", 1)))


@lru_cache(maxsize=64)
def _v_orders(p: int, m: int, times: tuple) -> tuple:
    """The shortest of `_v_greedy`'s schedules over `V_PRIORITIES`: (per-stage orders, span)."""
    found = []
    for prio in V_PRIORITIES:
        try:
            found.append(_v_greedy(p, m, times, prio))
        except RuntimeError:  # this priority starves a stage for these durations
            continue
    if not found:
        raise RuntimeError(f"no V schedule found for p={p}, m={m}")
    return min(found, key=lambda r: r[1])


def _v_greedy(p: int, m: int, times: tuple, priority: tuple) -> tuple:
    """Per-stage F/B orders of a V schedule (ZB-V), from a greedy list schedule of all stages, and
    the schedule's span (from the first forward to the last W).

    Stage s runs local chunk 0 = model chunk s and local chunk 1 = model chunk 2p − 1 − s. At its
    current time a stage runs the first pass in `priority` whose input has arrived (F of chunk 0, a
    new micro-batch, only while fewer than 2p − 1 chunk-passes are held, keeping the last of the 2p
    (`w_cap`) for the F of chunk 1 that turns the V); else its oldest deferred W; else it waits. The DES replays the F/B order and defers W by the same rule."""
    per_stage, p2p = times
    inf = float("inf")
    end: dict = {}  # (kind, model chunk, micro-batch) -> arrival time at the consumer

    def ready_at(s, kind, j, i):
        c = s if j == 0 else 2 * p - 1 - s
        if kind == "F":
            return 0.0 if c == 0 else end.get(("F", c - 1, i), inf)
        if c == 2 * p - 1:
            return end.get(("L", c, i), inf)  # the loss: this stage's own last forward
        return end.get(("B", c + 1, i), inf)

    step = min(x for chunks in per_stage for f, b, _ in chunks for x in (f, b))
    cur = [0.0] * p
    count = [dict.fromkeys(priority, 0) for _ in range(p)]
    held = [0] * p
    pending: list = [[] for _ in range(p)]  # local chunks of B passes whose W has not run
    orders: list = [[] for _ in range(p)]
    left = [4 * m] * p
    idle = 0  # consecutive waits
    while any(left):
        live = [x for x in range(p) if left[x]]
        s = min(live, key=cur.__getitem__)
        # a new micro-batch (F of chunk 0) leaves room for the F of chunk 1 that turns the V
        room = {("F", 0): held[s] < 2 * p - 1, ("F", 1): held[s] < 2 * p}
        cands = [(ready_at(s, kind, j, count[s][(kind, j)]), kind, j) for kind, j in priority
                 if count[s][(kind, j)] < m and room.get((kind, j), True)]
        # a pass whose input is a transfer or two away counts as ready: waiting for it keeps the
        # order the durations alone would give, where any other choice would cost a whole pass
        ready = [c for c in cands if c[0] <= cur[s] + 2 * p2p]
        idle = idle + 1 if not ready and not pending[s] else 0
        if idle > 100 * p:
            raise RuntimeError(f"V schedule p={p} m={m}: every stage waits on another")
        if ready:
            _, kind, j = ready[0]
            i = count[s][(kind, j)]
            f, b, _ = per_stage[s][j]
            cur[s] = max(cur[s], ready[0][0]) + (f if kind == "F" else b)
            c = s if j == 0 else 2 * p - 1 - s
            if kind == "F" and c == 2 * p - 1:
                end[("L", c, i)] = cur[s]
            elif kind == "F":  # the V's turn (chunk p − 1 to p) stays on the stage
                end[("F", c, i)] = cur[s] + (0.0 if c == p - 1 else p2p)
            else:
                end[("B", c, i)] = cur[s] + (0.0 if c == p else p2p)
            count[s][(kind, j)] += 1
            left[s] -= 1
            if kind == "F":
                held[s] += 1
            else:
                pending[s].append(j)
            orders[s].append((kind, j, i))
        elif pending[s]:
            cur[s] += per_stage[s][pending[s].pop(0)][2]
            held[s] -= 1
        else:
            others = min((cur[x] for x in live if x != s), default=inf)
            cur[s] = min(min((c[0] for c in cands), default=inf), others + step)
    span = max(cur[x] + sum(per_stage[x][j][2] for j in pending[x]) for x in range(p))
    return tuple(tuple(o) for o in orders), span


SCHEDULES: dict[str, Schedule] = {s.name: s for s in (OneFOneB(), Interleaved(), GPipe(), ZeroBubbleH1(),
                                                      ZeroBubbleH2(), ZeroBubbleV(), DualPipe())}
# Spellings accepted in plan strings for a registered name.
ALIASES = {"interleaved-1f1b": "interleaved", "zb": "zb-h1", "zbh1": "zb-h1", "zbv": "zb-v"}


def get(name: str) -> Schedule:
    return SCHEDULES[name]


def names() -> tuple[str, ...]:
    return tuple(SCHEDULES)
