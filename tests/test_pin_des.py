"""Pin tests for simulator.des (written from surviving mutants): the shared-link network, the
rank order of the simulated units, and what a straggler slows."""
from __future__ import annotations

import pytest
import simpy

from hwmodels.clusters import load_cluster
from simulator.des import Network, TrainingDES
from simulator.models import load_model
from simulator.training import TrainingJob, parse_plan


def test_two_flows_share_a_link_by_processor_sharing():
    """Flow A (4 s alone) starts at 0, flow B (1 s alone) joins at 1 on the same link: from 1 on
    each gets half the link, so B ends at 1 + 2·1 = 3; A had 3 s of work left at 1, did 1 of it
    by 3, then runs alone: it ends at 3 + 2 = 5."""
    env = simpy.Environment()
    net = Network(env)
    ends = {}

    def flow(name, start, dur):
        yield env.timeout(start)
        yield net.transfer(dur, {"link": 1.0})
        ends[name] = env.now
    env.process(flow("A", 0.0, 4.0))
    env.process(flow("B", 1.0, 1.0))
    env.run()
    assert ends == pytest.approx({"A": 5.0, "B": 3.0})


def test_unit_ranks_follow_megatron_order():
    """Megatron's rank order: TP innermost, then CP, DP, PP. With tp=2, cp=2, dp=2, pp=2 the unit
    of DP replica 1 on stage 1 is ranks (1 + 2·1)·4 = 12 .. 15."""
    job = TrainingJob(load_model("llama3-8b"), 4096, 64)
    cl = load_cluster("dgx-h100", nodes=2)
    des = TrainingDES(job, parse_plan("tp=2,cp=2,pp=2,mb=1", cl.num_devices), cl)
    assert des.unit_ranks(0, 0) == [0, 1, 2, 3]
    assert des.unit_ranks(1, 1) == [12, 13, 14, 15]
    assert des.unit_ranks(0, 1) == [8, 9, 10, 11]


def test_a_straggler_runs_its_optimizer_step_slower_by_its_factor():
    """A rank slowed 2x (a thermally throttled GPU) takes twice the optimizer step of the others."""
    job = TrainingJob(load_model("llama3-8b"), 2048, 16)
    cl = load_cluster("dgx-h100", nodes=1)
    plan = parse_plan("tp=1,mb=1", cl.num_devices)
    des = TrainingDES(job, plan, cl, slowdown={0: 2.0})
    res = des.run()
    opt = des.costs.stages[0].optimizer_s
    assert opt > 0
    assert des._opt[(0, 0)] == pytest.approx(2.0 * opt)
    assert des._opt[(1, 0)] == pytest.approx(opt)
    assert res.step_time_s > 0


def test_chrome_trace_names_each_unit_by_its_megatron_ranks_and_splits_w_into_buckets():
    """The Chrome trace (Perfetto) names every simulated unit "stage s / dp d (ranks a-b)" with the
    ranks Megatron's order gives it (tp=2 on 8 GPUs with pp=2: dp=2; stage 1 / dp 1 holds ranks
    (1 + 2·1)·2 = 6 and 7), and the last micro-batch's weight gradients (8 micro-batches: W7)
    complete bucket by bucket, so its gradient reductions can start: first piece "W7", the rest
    "W7+"; the earlier W run whole."""
    from simulator.des import chrome_trace, simulate
    job = TrainingJob(load_model("llama3-8b"), 2048, 16)
    cl = load_cluster("dgx-h100", nodes=1)
    plan = parse_plan("tp=2,pp=2,mb=1,schedule=zb-h1", cl.num_devices)
    _, res = simulate(job, plan, cl, full_ranks=True, trace=True)
    doc = chrome_trace(res, plan)
    events = doc["traceEvents"] if isinstance(doc, dict) else doc
    names = {e["args"]["name"] for e in events if e.get("name") == "process_name"}
    assert "stage 1 / dp 1 (ranks 6-7)" in names and "stage 0 / dp 0 (ranks 0-1)" in names
    tasks = {e["name"] for e in events if e.get("ph") == "X"}
    assert {"W0", "W7", "W7+"} <= tasks and "W0+" not in tasks
