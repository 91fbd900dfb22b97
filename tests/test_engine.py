"""The analytic engine is one code path: `simulator.analytic.step_terms` and
`simulator.memory.memory_parts` evaluate an array of plans exactly as they evaluate each plan
alone, `estimate()` is that engine on a batch of one, the planner ranks with it, and the DES's
per-chunk durations (`step_costs`, `dp_exposed_s`) add up to the engine's stage times."""
from __future__ import annotations

import random

import numpy as np
import pytest

from hwmodels.clusters import load_cluster
from hwmodels.errors import InputError
from planner.search import search
from simulator import schedules
from simulator.analytic import BREAKDOWN_KEYS, dp_exposed_s, estimate, step_costs, step_terms
from simulator.memory import MEMORY_PARTS, memory_parts, stage_memory
from simulator.models import load_model
from simulator.ops import check_supported
from simulator.training import RECOMPUTE, PlanBatch, TrainingJob, TrainingPlan, parse_plan, validate_plan


def _random_plans(job: TrainingJob, cluster, n: int, seed: int) -> list[TrainingPlan]:
    """n valid plans of mixed meshes, schedules, ZeRO stages, recompute and offload."""
    rng, N, out = random.Random(seed), cluster.num_devices, []
    while len(out) < n:
        tp, pp, cp = rng.choice([1, 2, 4, 8]), rng.choice([1, 2, 4, 8]), rng.choice([1, 1, 2])
        if N % (tp * pp * cp):
            continue
        sched = rng.choice(schedules.names())
        vpp = rng.choice(schedules.get(sched).vpp_options(job.model.num_layers, pp)[:3] or [1])
        plan = TrainingPlan(dp=N // (tp * pp * cp), tp=tp, pp=pp, cp=cp,
                            ep=rng.choice([1, 2, 4]) if job.model.is_moe else 1, sp=tp > 1 and rng.random() < 0.8,
                            zero=rng.choice([0, 1, 2, 3]), mb=rng.choice([1, 2]), vpp=vpp,
                            recompute=rng.choice(RECOMPUTE), schedule=sched, offload=rng.random() < 0.2)
        try:
            validate_plan(plan, job, N, cluster.devices_per_node)
            check_supported(job.model, plan)
        except InputError:
            continue
        out.append(plan)
    return out


CASES = [("gpt3-6.7b", "dgx-a100", 4, 2048, 128), ("mixtral-8x7b", "dgx-h100", 4, 4096, 128)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_an_array_of_plans_equals_each_plan_alone(case):
    name, cl, nodes, seq, batch = case
    job = TrainingJob(load_model(name), seq_len=seq, global_batch=batch)
    cluster = load_cluster(cl, nodes=nodes)
    plans = _random_plans(job, cluster, 40, seed=3)
    many = PlanBatch.of(plans)
    assert len({(p.tp, p.pp, p.cp, p.ep, p.dp) for p in plans}) > 3  # the batch mixes mesh shapes
    terms, mem = step_terms(job, cluster, many), memory_parts(job, many)
    for i, plan in enumerate(plans):
        one = PlanBatch.of([plan])
        t1, m1 = step_terms(job, cluster, one), memory_parts(job, one)
        for k in BREAKDOWN_KEYS:
            assert getattr(terms, k)[i] == getattr(t1, k)[0], (k, plan.to_string())
        assert terms.step_s[i] == t1.step_s[0]
        assert list(terms.stage_s[i, :plan.pp]) == list(t1.stage_s[0])
        for k in MEMORY_PARTS:
            assert list(getattr(mem, k)[i, :plan.pp]) == list(getattr(m1, k)[0]), (k, plan.to_string())
        assert mem.peak_stage[i] == m1.peak_stage[0]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_estimate_is_the_engine_on_a_batch_of_one(case):
    name, cl, nodes, seq, batch = case
    job = TrainingJob(load_model(name), seq_len=seq, global_batch=batch)
    cluster = load_cluster(cl, nodes=nodes)
    plans = _random_plans(job, cluster, 25, seed=11)
    terms, mem = step_terms(job, cluster, PlanBatch.of(plans)), memory_parts(job, PlanBatch.of(plans))
    for i, plan in enumerate(plans):
        est = estimate(job, plan, cluster)
        assert est.step_time_s == terms.step_s[i] == sum(est.breakdown_s.values())
        assert est.breakdown_s == {k: float(getattr(terms, k)[i]) for k in BREAKDOWN_KEYS}
        assert est.stage_times_s == [float(x) for x in terms.stage_s[i, :plan.pp]]
        s = est.memory["peak_stage"]
        assert s == mem.peak_stage[i] and est.memory["peak_bytes"] == mem.max_peak_bytes[i]
        assert est.fits == (mem.max_peak_bytes[i] <= cluster.device.hbm_bytes)
        assert stage_memory(job.model, job, plan, s) == mem.stage(i, s)


def test_the_planners_best_plan_scores_exactly_its_estimate():
    job = TrainingJob(load_model("llama3-8b"), seq_len=4096, global_batch=64)
    c = load_cluster("dgx-h100", nodes=2)
    res = search(job, c, top=5, partition=0)
    i = int(np.argmin(res.table["step_s"]))
    assert res.plans[0]["step_time_s"] == float(res.table["step_s"][i])
    assert res.plans[0]["step_time_s"] == estimate(job, TrainingPlan(**res.plans[0]["plan"]), c).step_time_s
    assert res.plans[0]["memory"]["peak_bytes"] == float(res.table["peak_bytes"][i])


@pytest.mark.parametrize("text", ["tp=2,pp=4,mb=1,vpp=2,schedule=interleaved,recompute=full,sp=on,zero=3",
                                  "tp=2,pp=2,mb=2,schedule=zb-h1,zero=0", "tp=4,pp=4,mb=1,zero=2,sp=on"])
def test_the_des_durations_add_up_to_the_engines_stage_times_and_dp_tail(text):
    """step_costs (the DES's input) holds the engine's per-chunk work: chunk totals sum to the
    engine's stage times, and the slowest stage's dp_exposed_s + optimizer is the engine's tail."""
    job = TrainingJob(load_model("llama3-8b"), seq_len=4096, global_batch=64)
    c = load_cluster("dgx-h100", nodes=4)
    plan = parse_plan(text, c.num_devices)
    est, costs = estimate(job, plan, c), step_costs(job, plan, c)
    assert [s.total_s for s in costs.stages] == pytest.approx(est.stage_times_s, rel=1e-12)
    tails = [dp_exposed_s(job, plan, s) + s.optimizer_s for s in costs.stages]
    assert max(tails) == pytest.approx(est.breakdown_s["dp_comm"] + est.breakdown_s["optimizer"], rel=1e-12)


def test_a_chunks_pass_fraction_weights_every_term_of_its_stage(monkeypatch):
    """A schedule that sends half the micro-batches through each local chunk halves the stage
    times and the compute and TP-comm terms of the step (DualPipe's bidirectional passes)."""

    class HalfPass(schedules.OneFOneB):
        name = "half-pass"

        def pass_fraction(self, pp, vpp):
            return 0.5

    monkeypatch.setitem(schedules.SCHEDULES, "half-pass", HalfPass())
    job = TrainingJob(load_model("llama3-8b"), seq_len=4096, global_batch=64)
    c = load_cluster("dgx-h100", nodes=2)
    base = TrainingPlan(dp=2, tp=2, pp=4, mb=1, sp=True, recompute="selective")
    one, half = estimate(job, base, c), estimate(job, TrainingPlan(**{**base.to_dict(), "schedule": "half-pass"}), c)
    assert half.stage_times_s == pytest.approx([0.5 * x for x in one.stage_times_s], rel=1e-12)
    for k in ("compute", "tp_comm", "pp_bubble"):
        assert half.breakdown_s[k] == pytest.approx(0.5 * one.breakdown_s[k], rel=1e-12)
    assert half.memory == one.memory
