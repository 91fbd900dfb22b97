"""SGLang's --scheduler-recv-interval (engine.RecvSkipper, policies.RecvInterval): arrivals wait
for the scheduler's next receive, which comes every `interval` decode passes and right after any
pass with prompts; an idle engine receives at once."""
from __future__ import annotations

import pytest

from hwmodels.clusters import load_cluster
from hwmodels.errors import InputError
from simulator.models import load_model
from simulator.serving.clients import bench_serving
from simulator.serving.engine import RecvSkipper, Replica, ReplicaGroup, ServingPlan, simulate
from simulator.serving.scheduler import engine_config


def test_skipper_counts_weights_as_sglang_does():
    # scheduler_recv_skipper.py: decode (and no batch) weigh 1, a batch with prompts 1000
    sk = RecvSkipper(3)
    assert [sk.tick(False) for _ in range(6)] == [False, False, True, False, False, True]
    sk.tick(False)
    assert sk.tick(True) and sk.counter == 0  # a prompt batch: the next loop receives


@pytest.mark.parametrize("interval", [2, 3, 10, 30])
@pytest.mark.parametrize("c0", [0, 1, 5])
def test_receive_positions_within_a_decode_run_match_step_by_step_ticks(interval, c0):
    c0 %= interval
    sk = RecvSkipper(interval)
    tops, c = [], c0
    for k in range(1, 5 * interval):  # loop tops after passes 1, 2, ... of a run begun at c0
        c += 1
        if c >= interval:
            c = 0
            tops.append(k)
    for k in range(1, 3 * interval):
        assert sk.next_receive(c0, k) == min(t for t in tops if t >= k)
        assert sk.last_receive(c0, k) == max([0] + [t for t in tops if t <= k])


def test_a_run_cut_by_an_arrival_ends_at_the_next_receive(cut_decode_run):
    """Passes of 1 s (no slope), interval 4, counter 0 at the start: an arrival at 2.5 s (pass 3
    in flight) is taken in at the loop top after pass 4, so the run ends there (plus the overlap
    step with cut_after 2)."""
    for cut_after, n_exp in ((1, 4), (2, 5)):
        steps, _, _ = cut_decode_run(cut_after, 1.0, 0.0, 20, at=2.5, recv=RecvSkipper(4), _run_c0=0)
        assert steps == n_exp


def _run(interval: int, conc: int, dp: int = 1):
    m, c = load_model("llama3.1-8b"), load_cluster("dgx-h100")
    plan = ServingPlan((ReplicaGroup(c, 1, 1, 1, 1, "both"),), engine="sglang", dtype="bf16",
                       engine_options=(("recv_interval", interval),))
    return simulate(m, plan, bench_serving(1024, 256, conc, num_prompts=10 * conc, seed=0))


def test_idle_engine_receives_at_once_and_busy_one_makes_arrivals_wait():
    assert _run(30, 1).ttft_s["mean"] == pytest.approx(_run(1, 1).ttft_s["mean"], rel=1e-12)
    base, r10, r30 = (_run(i, 16) for i in (1, 10, 30))
    assert base.ttft_s["mean"] < r10.ttft_s["mean"] < r30.ttft_s["mean"]
    # the wait is of the order of half an interval of decode passes
    extra = r30.ttft_s["mean"] - base.ttft_s["mean"]
    assert 0.25 * 30 * base.tpot_s["mean"] < extra < 1.5 * 30 * base.tpot_s["mean"]
    assert r30.completed == base.completed == 160 and r30.rejected == 0


def test_bad_interval_and_attention_dp_are_refused():
    dev = load_cluster("dgx-h100").device
    with pytest.raises(InputError, match="recv_interval=0"):
        engine_config("sglang", dev, 1, recv_interval=0)
    with pytest.raises(InputError, match="does not apply to vllm"):
        engine_config("vllm", dev, 1, recv_interval=10)
    m, c = load_model("deepseek-v3"), load_cluster("dgx-b200")
    plan = ServingPlan((ReplicaGroup(c, 1, 1, 8, 1, "both", 8),), engine="sglang", dtype="fp8",
                       engine_options=(("recv_interval", 10),))
    with pytest.raises(InputError, match="attention DP"):
        simulate(m, plan, bench_serving(1024, 16, 4, num_prompts=4, seed=0))


def test_receive_inside_a_run_takes_what_arrived_by_that_loop_top():
    """A run of 6 passes lasting 1, 1.5, 2, ... s (start 0, slope 0.5) begun with counter 0 and
    interval 4: its loop tops after passes 1-5 include one receive, after pass 4, at
    4·1 + 0.5·4·3/2 = 7 s. An arrival at 6.9 s is taken in there, one at 7.1 s waits; the
    counter is left at (0 + 5) mod 4 = 1."""
    from types import SimpleNamespace
    added = []
    fake = SimpleNamespace(recv=RecvSkipper(4), _run_c0=0, unreceived=[(6.9, "a"), (7.1, "b")],
                           scheduler=SimpleNamespace(add=lambda r: added.append(r) or True), sim=None)
    fake._receive = lambda until: Replica._receive(fake, until)
    Replica._receive_in_run(fake, 0.0, 1.0, 0.5, 6)
    assert added == ["a"] and fake.unreceived == [(7.1, "b")] and fake.recv.counter == 1
