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
                 "--engine", "des", "--chrome-trace", str(out), "--json"])
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
    assert main(base + ["--chrome-trace", str(tmp_path / "x.json")]) == 2
    assert "need --engine des" in capsys.readouterr().err
    assert main(base + ["--engine", "des", "--stragglers", "99:2"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(base + ["--engine", "des", "--chrome-trace", str(tmp_path / "no" / "x.json")]) == 2
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


# ---- issue #20 §2: ZeRO-3 gradient reduction, and every event inside its step ------------------

def _last_event_end_s(res) -> float:
    return max(start + dur for _unit, _stream, _name, start, dur, _args in res.timeline)


@pytest.mark.parametrize("zero,overlap,schedule,slow,shape", [
    (0, True, "1f1b", None, 2), (0, False, "1f1b", None, 2), (1, True, "interleaved", None, 2),
    (2, False, "1f1b", None, 2), (3, True, "1f1b", None, 2), (3, False, "1f1b", None, 2),
    (3, True, "zb-h1", None, 2), (0, True, "zb-h1", None, 2), (3, True, "1f1b", {1: 1.4}, 2),
    (1, True, "1f1b", {2: 1.3}, 2),
    (3, True, "1f1b", None, 1), (3, False, "1f1b", None, 1), (0, True, "1f1b", None, 1),
])
def test_no_event_of_a_step_ends_after_the_step(zero, overlap, schedule, slow, shape):
    """A ZeRO-3 DP "reduce" bar ran 3087-3479 ms in a 3124 ms step: its reduction was traced but
    never waited for. Every traced event, on every stream and unit, lies inside the step.
    shape 2: llama2-7b, dp=4 tp=2 pp=2; shape 1: llama3-8b on 32 devices, dp=32."""
    if shape == 2:
        c, job = load_cluster("dgx-h100", nodes=2), TrainingJob(load_model("llama2-7b"), 2048, 32,
                                                                overlap_grad_reduce=overlap)
        vpp = 2 if schedule == "interleaved" else 1
        plan = TrainingPlan(dp=4, tp=2, pp=2, mb=1, zero=zero, schedule=schedule, vpp=vpp)
    else:
        c, job = load_cluster("dgx-h100", nodes=4), TrainingJob(load_model("llama3-8b"), 4096, 64,
                                                                overlap_grad_reduce=overlap)
        plan = TrainingPlan(dp=32, tp=1, pp=1, mb=1, zero=zero)
    _, res = simulate(job, plan, c, slowdown=slow, trace=True)
    assert res.timeline
    assert _last_event_end_s(res) <= res.step_time_s * (1 + 1e-9)
    assert all(start >= 0 and dur >= 0 for *_, start, dur, _a in res.timeline)


def test_zero3_gradient_overlap_off_exposes_the_reduce_scatter():
    """--grad-overlap off gave ZeRO-3 the step time of on. Without overlap the gradient
    reduce-scatters wait for the end of the backward (Megatron-LM finish_grad_sync), so in a
    compute-bound step the exposed DP time grows by the reductions that overlap hid. FSDP/ZeRO-3
    reduce-scatter every micro-batch (m of them): all but the last layer's share, less the
    slowdown the overlapped reductions inflicted on the backward compute they ran beside:
    grad·(m − 1/L − m·OVERLAP_COMPUTE_SLOWDOWN)."""
    from simulator.analytic import OVERLAP_COMPUTE_SLOWDOWN
    c = load_cluster("dgx-h100", nodes=4)
    plan = TrainingPlan(dp=32, tp=1, pp=1, zero=3, mb=1)
    out = {}
    for overlap in (True, False):
        job = TrainingJob(load_model("llama3-8b"), 4096, 64, overlap_grad_reduce=overlap)
        est, res = simulate(job, plan, c, trace=True)
        ana = estimate(job, plan, c)
        assert est.step_time_s == pytest.approx(ana.step_time_s, rel=0.03)  # the engines agree
        out[overlap] = (res, step_costs(job, plan, c).stages[0])
    (on, st), (off, _) = out[True], out[False]
    assert off.step_time_s > on.step_time_s
    grad, layers, m = st.dp_grad_s, st.num_layers, 2
    assert st.dp_gather_s / 2 + grad < st.last_bwd_s  # compute-bound: every reduction hides when on
    assert off.breakdown_s["dp_comm"] - on.breakdown_s["dp_comm"] == pytest.approx(
        grad * (m - 1 / layers - m * OVERLAP_COMPUTE_SLOWDOWN), rel=1e-6)
    assert _last_event_end_s(on) <= on.step_time_s * (1 + 1e-9)


def test_straggler_ranks_are_named_in_text_and_json(capsys):
    from simulator.faults import describe_stragglers
    argv = ["simulate", "train", "--model", "llama2-13b", "--cluster", "dgx-a100", "--nodes", "2", "--plan",
            "tp=4,pp=2", "--seq-len", "4096", "--global-batch", "32", "--engine", "des", "--stragglers", "3:1.3,12:2"]
    assert main(argv + ["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["stragglers"]
    # Megatron order (tp innermost, then dp, pp): rank 3 is tp rank 3 of dp 0 / stage 0, rank 12 is
    # dp 1 of stage 1 (ranks 12-15), as TrainingDES.unit_ranks places them
    assert rows == [{"rank": 3, "factor": 1.3, "stage": 0, "dp_replica": 0, "group_factor": 1.3},
                    {"rank": 12, "factor": 2.0, "stage": 1, "dp_replica": 1, "group_factor": 2.0}]
    des = TrainingDES(TrainingJob(load_model("llama2-13b"), 4096, 32), TrainingPlan(dp=2, tp=4, pp=2),
                      load_cluster("dgx-a100", nodes=2))
    for r in rows:
        assert r["rank"] in des.unit_ranks(r["dp_replica"], r["stage"])
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert ("stragglers: 2 slowed rank(s): rank 3 x1.3 (stage 0, dp replica 0), "
            "rank 12 x2 (stage 1, dp replica 1)") in text
    many = describe_stragglers({r: 1.5 for r in range(0, 64, 4)}, 4, 1, 8, 2)
    from simulator.faults import format_stragglers
    assert format_stragglers(many).endswith("and 8 more (all in --json)")
