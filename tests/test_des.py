"""The discrete-event engine (#4): agreement with the analytic engine, schedules, contention,
stragglers, full-rank mode, failures and goodput, Chrome traces."""
from __future__ import annotations

import itertools
import json

import pytest

from hwmodels.clusters import load_cluster
from hwmodels.collectives import collective_s
from hwmodels.errors import InputError
from ui.cli import main
from simulator.analytic import estimate, step_costs
from simulator.des import (TrainingDES, chrome_trace, concurrent_transfers, parse_stragglers,
                           schedule_order, simulate)
from simulator.faults import simulate_goodput
from simulator.models import ModelSpec, load_model
from simulator.training import TrainingJob, TrainingPlan


def _plans(n, schedules=("1f1b", "interleaved", "zb-h1", "zb-h2", "gpipe")):
    for tp, pp, sched, mb, rc in itertools.product((2, 4), (2, 4), schedules, (1, 2), ("none", "full")):
        v = 2 if sched == "interleaved" else 1
        yield TrainingPlan(dp=n // (tp * pp), tp=tp, pp=pp, vpp=v, schedule=sched, mb=mb, recompute=rc, sp=True)


def test_des_agrees_with_analytic_within_3_percent_over_80_plans():
    c = load_cluster("dgx-a100", nodes=4)
    job = TrainingJob(load_model("llama2-13b"), 4096, 128)
    diffs = []
    for plan in _plans(c.num_devices):
        a = estimate(job, plan, c)
        d, _ = simulate(job, plan, c)
        diffs.append(abs(d.step_time_s / a.step_time_s - 1))
    assert len(diffs) == 80
    assert max(diffs) < 0.03, max(diffs)


UNIFORM = ModelSpec(name="uniform", num_layers=16, hidden_size=4096, num_heads=32, num_kv_heads=32,
                    ffn_hidden_size=16384, vocab_size=256, gated_mlp=False)  # tiny vocab: equal stages


@pytest.mark.parametrize("p,m", [(4, 8), (4, 32), (8, 16)])
def test_1f1b_bubble_fraction_is_p_minus_1_over_m_plus_p_minus_1(p, m):
    # one NVLink node: stage-to-stage transfers take microseconds, leaving the schedule's own bubble
    c = load_cluster("dgx-h100", nodes=1)
    dp = 8 // p
    job = TrainingJob(UNIFORM, 2048, dp * m, overlap_grad_reduce=True)
    plan = TrainingPlan(dp=dp, tp=1, pp=p, mb=1)
    d, res = simulate(job, plan, c)
    stage = step_costs(job, plan, c).stages[0].total_s
    pipe = res.step_time_s - res.breakdown_s["dp_comm"] - res.breakdown_s["optimizer"] - res.breakdown_s["pp_comm"]
    # Narayanan et al. 2021 §2.2: (m + p − 1) stage-times, bubble fraction (p−1)/(m+p−1)
    assert pipe == pytest.approx((m + p - 1) * stage, rel=0.01)
    assert res.breakdown_s["pp_bubble"] / pipe == pytest.approx((p - 1) / (m + p - 1), rel=0.03)


def test_interleaved_bubble_is_divided_by_v():
    p, m, v = 4, 16, 2
    c = load_cluster("dgx-h100", nodes=1)
    job = TrainingJob(UNIFORM, 2048, 2 * m)
    plan = TrainingPlan(dp=2, tp=1, pp=p, mb=1, vpp=v, schedule="interleaved")
    _, res = simulate(job, plan, c)
    stage = step_costs(job, plan, c).stages[0].total_s
    ideal = m * stage
    # Narayanan §2.2.2: bubble ((p−1)/v)/m of the ideal time
    assert res.breakdown_s["pp_bubble"] / ideal == pytest.approx((p - 1) / v / m, rel=0.05)


def test_zero_bubble_beats_1f1b_at_equal_memory():
    c = load_cluster("dgx-h100", nodes=1)
    job = TrainingJob(UNIFORM, 2048, 16)
    f1b = simulate(job, TrainingPlan(dp=1, pp=8, mb=1), c)[0]
    zb1 = simulate(job, TrainingPlan(dp=1, pp=8, mb=1, schedule="zb-h1"), c)[0]
    zb2 = simulate(job, TrainingPlan(dp=1, pp=8, mb=1, schedule="zb-h2"), c)[0]
    assert zb1.step_time_s < 0.95 * f1b.step_time_s  # Qi et al. 2023: ZB-H1 cuts the bubble
    assert zb2.step_time_s < zb1.step_time_s
    assert zb1.memory["activations_bytes"] == pytest.approx(f1b.memory["activations_bytes"], rel=1e-9)
    assert zb2.memory["activations_bytes"] > f1b.memory["activations_bytes"]


def test_schedule_orders_are_complete():
    for sched, v in (("1f1b", 1), ("gpipe", 1), ("interleaved", 2), ("interleaved", 3)):
        for s in range(4):
            order = schedule_order(sched, s, 4, 8, v)
            assert sorted(order) == sorted({(k, j, i) for k in "FB" for j in range(v) for i in range(8)})


def test_two_dp_groups_on_one_link_take_twice_as_long():
    c = load_cluster("dgx-a100", nodes=16)
    t = collective_s(c, "all_reduce", 16, 8, 1 << 30)  # a DP ring across 16 nodes
    alone = concurrent_transfers([(t, {"nic0": 1.0})])
    shared = concurrent_transfers([(t, {"nic0": 1.0}), (t, {"nic0": 1.0})])
    apart = concurrent_transfers([(t, {"nic0": 1.0}), (t, {"nic1": 1.0})])
    assert alone[0] == pytest.approx(t)
    assert shared[0] / alone[0] == pytest.approx(2.0, rel=1e-9)  # fair share of one link
    assert apart == pytest.approx([t, t])
    # a flow that starts on a shared link and finishes alone: t + overlap share
    staggered = concurrent_transfers([(t, {"nic0": 1.0}), (t / 2, {"nic0": 1.0})])
    assert staggered == pytest.approx([1.5 * t, t])


def test_full_rank_mode_matches_and_stragglers_slow_down():
    c = load_cluster("dgx-a100", nodes=8)
    job = TrainingJob(load_model("llama2-13b"), 4096, 128)
    plan = TrainingPlan(dp=4, tp=4, pp=4, mb=1, sp=True)
    rep, r1 = simulate(job, plan, c)
    full, r2 = simulate(job, plan, c, full_ranks=True)
    assert r2.units == 16 and r1.units == 4
    assert full.step_time_s == pytest.approx(rep.step_time_s, rel=1e-9)
    slow, r3 = simulate(job, plan, c, slowdown={5: 1.5})
    assert r3.units == 16  # stragglers switch full-rank mode on
    assert 1.3 < slow.step_time_s / rep.step_time_s < 1.55  # the slow rank's TP group paces all
    again, _ = simulate(job, plan, c, slowdown=parse_stragglers("random:0.05:1.3", 64, seed=7))
    twice, _ = simulate(job, plan, c, slowdown=parse_stragglers("random:0.05:1.3", 64, seed=7))
    assert again.step_time_s == twice.step_time_s


@pytest.mark.parametrize("spec,fragment", [("3", "RANK:FACTOR"), ("999:2", "outside 0..63"),
                                           ("3:0.5", ">= 1"), ("random:2:1.5", "FRACTION in (0, 1]"),
                                           ("random:x:y", "must be numbers")])
def test_bad_straggler_specs(spec, fragment):
    with pytest.raises(InputError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        parse_stragglers(spec, 64)


def test_chrome_trace_follows_the_trace_event_format(tmp_path, capsys):
    out = tmp_path / "trace.json"
    code = main(["simulate", "train", "--model", "llama2-13b", "--cluster", "dgx-a100", "--nodes", "4",
                 "--plan", "tp=4,pp=2,mb=1,sp=on,vpp=2", "--seq-len", "4096", "--global-batch", "64",
                 "--engine", "des", "--trace", str(out), "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["engine"] == "des"
    trace = json.loads(out.read_text())
    events = trace["traceEvents"]
    complete = [e for e in events if e["ph"] == "X"]
    meta = [e for e in events if e["ph"] == "M"]
    assert complete and meta
    for e in complete:  # Trace Event Format: complete events need name, ph, ts, dur, pid, tid
        assert {"name", "ph", "ts", "dur", "pid", "tid"} <= set(e)
        assert isinstance(e["ts"], float) and e["dur"] >= 0
    assert {m["name"] for m in meta} == {"process_name", "thread_name"}
    pids = {e["pid"] for e in complete}
    assert pids == {m["pid"] for m in meta if m["name"] == "process_name"}
    assert max(e["ts"] + e["dur"] for e in complete) == pytest.approx(doc["step_time_s"] * 1e6, rel=1e-6)


def test_des_cli_errors(capsys, tmp_path):
    base = ["simulate", "train", "--model", "llama2-13b", "--cluster", "dgx-a100", "--plan", "tp=8",
            "--seq-len", "4096", "--global-batch", "8"]
    assert main(base + ["--trace", str(tmp_path / "x.json")]) == 2
    assert "need --engine des" in capsys.readouterr().err
    assert main(base + ["--engine", "des", "--stragglers", "99:2"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(base + ["--engine", "des", "--trace", str(tmp_path / "no" / "x.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_goodput_with_failures_and_checkpoints():
    kw = dict(num_devices=16384, step_time_s=10.0, run_steps=20000, checkpoint_interval_steps=100,
              checkpoint_s=20.0, restart_s=600.0)
    none = simulate_goodput(**kw, failures_per_device_hour=0.0)
    assert none.failures == 0
    assert none.goodput == pytest.approx(1000 / (1000 + 20), rel=1e-9)  # only checkpoint stalls
    a = simulate_goodput(**kw, seed=1)
    b = simulate_goodput(**kw, seed=1)
    assert a.to_dict() == b.to_dict()  # seeded, reproducible
    assert a.failures > 10 and 0.5 < a.goodput < none.goodput
    assert a.wall_s == pytest.approx(a.useful_s + a.lost_s + a.restart_s + a.checkpoint_s, rel=1e-9)
    rare = simulate_goodput(**{**kw, "checkpoint_interval_steps": 5000}, seed=1)
    assert rare.lost_s > a.lost_s  # fewer checkpoints, more recomputation
    with pytest.raises(InputError, match="run_steps=0"):
        simulate_goodput(**{**kw, "run_steps": 0})


def test_gantt_figure_renders_the_des_timeline():
    from ui.charts import gantt_figure
    c = load_cluster("dgx-h100", nodes=1)
    job = TrainingJob(UNIFORM, 2048, 16)
    des = TrainingDES(job, TrainingPlan(dp=1, pp=4, tp=2, mb=1, schedule="zb-h1"), c, trace=True)
    res = des.run()
    fig = gantt_figure(res.timeline)
    bar = fig.data[0]
    assert bar.orientation == "h" and len(bar.x) == len(res.timeline)
    # numeric start + duration, not dates; the last bar ends at the step time
    assert max(b + w for b, w in zip(bar.base, bar.x)) == pytest.approx(res.step_time_s * 1e3, rel=1e-6)
    assert {t[:1] for t in bar.hovertext} >= {"F", "B", "W"}
    fig.to_json()  # serialisable for the browser
