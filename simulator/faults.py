"""Failures, checkpoints and goodput over a long training run (seeded, reproducible).

A job of N devices fails as a Poisson process of rate N·λ (λ per device-hour). After a failure it
restarts (a fixed cost), reloads the last checkpoint and redoes the steps since it. Checkpoints are
written every `interval` steps and stall training for `checkpoint_s` (0 for fully asynchronous
checkpointing, as DataStates-LLM (arXiv 2406.10707) and Universal Checkpointing approach).
Goodput = useful step time ÷ wall time, estimated by simulating the run with simpy.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import simpy

from hwmodels.errors import InputError

# Llama 3 (arXiv 2407.21783) §3.3.4 / Table 5: 419 unexpected interruptions in a 54-day snapshot
# of 405B pre-training on up to 16,384 H100 → λ per GPU-hour.
LLAMA3_FAILURES_PER_DEVICE_HOUR = 419 / (54 * 24 * 16384)
# Most intervals + failures one goodput simulation processes (~5 s).
MAX_EVENTS = 1_000_000


@dataclass
class GoodputReport:
    goodput: float  # useful training time / wall time
    wall_s: float
    useful_s: float
    failures: int
    lost_s: float  # recomputed steps
    restart_s: float
    checkpoint_s: float  # time stalled writing checkpoints
    mtbf_s: float  # of the whole job
    young_daly_interval_steps: float  # sqrt(2·C·MTBF) / step time (Young 1974, Daly 2006)
    seed: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def simulate_goodput(num_devices: int, step_time_s: float, run_steps: int,
                     checkpoint_interval_steps: int, checkpoint_s: float, restart_s: float,
                     failures_per_device_hour: float = LLAMA3_FAILURES_PER_DEVICE_HOUR,
                     seed: int = 0) -> GoodputReport:
    for name, v in (("num_devices", num_devices), ("run_steps", run_steps),
                    ("checkpoint_interval_steps", checkpoint_interval_steps)):
        if not isinstance(v, int) or v < 1:
            raise InputError(f"{name}={v!r} must be a positive integer")
    for name, v in (("step_time_s", step_time_s),):
        if not v > 0:
            raise InputError(f"{name}={v!r} must be > 0")
    for name, v in (("checkpoint_s", checkpoint_s), ("restart_s", restart_s),
                    ("failures_per_device_hour", failures_per_device_hour)):
        if not v >= 0 or not math.isfinite(v):
            raise InputError(f"{name}={v!r} must be a finite number >= 0")
    rate = num_devices * failures_per_device_hour / 3600.0  # job failures per second
    # Events the simulation would process: one per checkpoint interval, plus the failures — an
    # interval of `work` seconds is retried until it runs failure-free, e^(rate·work) − 1 failures
    # on average. Refuse runs that would take minutes (or never end: failures faster than intervals).
    segments = math.ceil(run_steps / checkpoint_interval_steps)
    work = min(checkpoint_interval_steps, run_steps) * step_time_s + checkpoint_s
    expected = segments * (1 + math.expm1(min(rate * work, 700.0)))
    if not expected <= MAX_EVENTS:
        raise InputError(f"goodput: about {expected:.3g} checkpoint intervals and failures to simulate "
                         f"(run-steps={run_steps}, ckpt-interval={checkpoint_interval_steps}, "
                         f"{work:.3g} s per interval, a failure every {1 / rate if rate else math.inf:.3g} s), "
                         f"more than {MAX_EVENTS:,}; use fewer --run-steps, a shorter --ckpt-interval or a "
                         f"lower --failure-rate")
    rng = random.Random(seed)
    env = simpy.Environment()
    stats = {"steps": 0, "saved": 0, "failures": 0, "restart": 0.0, "ckpt": 0.0}

    def training():
        while stats["steps"] < run_steps:
            ttf = rng.expovariate(rate) if rate > 0 else math.inf
            t_fail = env.now + ttf
            while stats["steps"] < run_steps:
                steps_to_ckpt = checkpoint_interval_steps - (stats["steps"] - stats["saved"])
                n = min(steps_to_ckpt, run_steps - stats["steps"])
                work = n * step_time_s + (checkpoint_s if n == steps_to_ckpt else 0.0)
                if env.now + work > t_fail:  # fails before the next checkpoint is on disk
                    yield env.timeout(t_fail - env.now)
                    stats["steps"] = stats["saved"]  # roll back to the last checkpoint
                    stats["failures"] += 1
                    yield env.timeout(restart_s)
                    stats["restart"] += restart_s
                    break
                yield env.timeout(work)
                stats["steps"] += n
                if n == steps_to_ckpt:
                    stats["saved"] = stats["steps"]
                    stats["ckpt"] += checkpoint_s
    env.process(training())
    env.run()
    useful = run_steps * step_time_s
    mtbf = 1 / rate if rate > 0 else math.inf
    yd = math.sqrt(2 * checkpoint_s * mtbf) / step_time_s if rate > 0 and checkpoint_s > 0 else math.inf
    # min/max: the simulated clock sums the same step times in another order (float rounding
    # must not report a goodput above 1 or a negative loss)
    return GoodputReport(goodput=min(1.0, useful / env.now), wall_s=env.now, useful_s=useful, failures=stats["failures"],
                         lost_s=max(0.0, env.now - useful - stats["restart"] - stats["ckpt"]), restart_s=stats["restart"],
                         checkpoint_s=stats["ckpt"], mtbf_s=mtbf, young_daly_interval_steps=yd, seed=seed)


# ---- stragglers ---------------------------------------------------------------------------------

def describe_stragglers(slowdown: dict, tp: int, cp: int, dp: int, pp: int) -> list[dict]:
    """Where each slowed rank sits: {rank, factor, stage, dp_replica} in Megatron rank order (TP
    innermost, then CP, DP, PP; Megatron-LM megatron/core/parallel_state.py), by rank. The DES runs
    each TP×CP group at the pace of its slowest member, so `group_factor` is the slowdown that
    rank's whole group takes on."""
    size = tp * cp
    group_factor: dict = {}
    for rank, f in slowdown.items():
        g = rank // size
        group_factor[g] = max(group_factor.get(g, 1.0), f)
    out = []
    for rank in sorted(slowdown):
        g = rank // size
        if g >= dp * pp:
            raise InputError(f"straggler rank {rank} outside 0..{dp * pp * size - 1}")
        out.append({"rank": rank, "factor": slowdown[rank], "stage": g // dp, "dp_replica": g % dp,
                    "group_factor": group_factor[g]})
    return out


def format_stragglers(rows: list[dict], limit: int = 8) -> str:
    """One line naming the slowed ranks (the first `limit`, then a count)."""
    shown = ", ".join(f"rank {r['rank']} x{r['factor']:g} (stage {r['stage']}, "
                      f"dp replica {r['dp_replica']})" for r in rows[:limit])
    more = f", and {len(rows) - limit} more (all in --json)" if len(rows) > limit else ""
    return f"stragglers: {len(rows)} slowed rank(s): {shown}{more}"
