"""FSDP FULL_SHARD / ZeRO-3 as it runs (simulator.analytic.zero3_exposed_s): per-layer gathers in
forward and backward, a reduce-scatter per layer per micro-batch, one layer of prefetch, stalls
where a layer's communication outlasts its compute, and the compute slowdown beside a collective."""
from types import SimpleNamespace

import pytest

from hwmodels.clusters import load_cluster
from simulator.analytic import OVERLAP_COMPUTE_SLOWDOWN, estimate, zero3_exposed_s
from simulator.models import load_model
from simulator.training import TrainingJob, TrainingPlan

PLAN = SimpleNamespace(zero=3, recompute="none")  # two gather passes per micro-batch


def _stage(gather, grad, fwd, bwd, layers=10):
    return SimpleNamespace(dp_gather_s=gather, dp_grad_s=grad, mb_fwd_s=fwd, last_bwd_s=bwd, num_layers=layers,
                           rc_share=1.0)


def _job(**kw):
    return TrainingJob(load_model("llama3-8b"), 4096, 64, **kw)


def test_hidden_layers_cost_only_the_slowdown_first_gather_and_last_reduce():
    """Per layer g = 0.1 (one pass), r = 0.1, f = 1, b = 2: nothing stalls; each micro-batch
    pays 18.9% of the overlapped time, 10·(g + (g + r)) = 3; plus the first gather and the last
    reduce-scatter of the step."""
    st = _stage(gather=2.0, grad=1.0, fwd=10.0, bwd=20.0)
    m = 4
    want = m * OVERLAP_COMPUTE_SLOWDOWN * 3.0 + 0.1 + 0.1
    assert zero3_exposed_s(_job(), PLAN, st, m) == pytest.approx(want)


def test_a_layer_whose_communication_outlasts_its_compute_stalls_every_micro_batch():
    """g = 1 per pass and layer against f = 0.5: the forward stalls 0.5 per layer; the backward's
    g + r = 1.5 against b = 1 stalls 0.5 — per layer and micro-batch, not once per step (the
    step's total compute would have hidden the step's total communication)."""
    st = _stage(gather=20.0, grad=5.0, fwd=5.0, bwd=10.0)
    m = 3
    stall = 10 * (0.5 + 0.5)
    slow = 10 * OVERLAP_COMPUTE_SLOWDOWN * (0.5 + 1.0)
    assert zero3_exposed_s(_job(), PLAN, st, m) == pytest.approx(m * (stall + slow) + 1.0 + 0.5)


def test_no_overlap_exposes_every_collective_of_every_micro_batch():
    st = _stage(gather=2.0, grad=1.0, fwd=10.0, bwd=20.0)
    job = _job(overlap_param_gather=False)
    assert zero3_exposed_s(job, PLAN, st, 4) == pytest.approx(4 * 3.0)


def test_the_interference_mechanism_moves_a_comm_heavy_fsdp_step():
    """GPT-3 175B sharded over 512 A100 ranks: its gathers run beside most of the compute, so the
    slowdown is visible in the step; with the slowdown set to zero the step is faster."""
    import simulator.analytic as analytic
    job = TrainingJob(load_model("gpt3-175b"), 2048, 1536)
    plan = TrainingPlan(dp=256, tp=2, cp=2, mb=3, zero=3, sp=True)
    cl = load_cluster("dgx-a100", nodes=128)
    with_slowdown = estimate(job, plan, cl).step_time_s
    old = analytic.OVERLAP_COMPUTE_SLOWDOWN
    try:
        analytic.OVERLAP_COMPUTE_SLOWDOWN = 0.0
        without = estimate(job, plan, cl).step_time_s
    finally:
        analytic.OVERLAP_COMPUTE_SLOWDOWN = old
    assert with_slowdown > 1.05 * without
