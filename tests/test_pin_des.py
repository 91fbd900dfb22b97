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


@pytest.mark.parametrize("schedule,passes", [("1f1b", 2), ("zb-h1", 3)])
def test_a_step_of_too_many_tasks_is_refused_before_it_runs(schedule, passes):
    """The size limit counts F and B passes per micro-batch and simulated unit (and W for the
    schedules that split the backward, Zero Bubble arXiv 2401.10241 §3.1): pp=2 (two units) with
    1.2M micro-batches is 2 x 1.2M x 2 = 4.8M tasks (x 3 = 7.2M with ZB-H1), refused at once
    with the count, before any event runs."""
    import time
    from hwmodels.errors import InputError
    cl = load_cluster("dgx-h100", nodes=1)
    job = TrainingJob(load_model("llama3-8b"), 2048, 1_200_000 * 4)  # dp=4, mb=1: 1.2M micro-batches
    plan = parse_plan(f"tp=1,pp=2,mb=1,schedule={schedule}", cl.num_devices)
    des = TrainingDES(job, plan, cl)
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=f"= {2 * 1_200_000 * passes:,} tasks, more than"):
        des.run()
    assert time.perf_counter() - t0 < 5 and des.env.processed == 0


def test_random_stragglers_slow_that_fraction_of_the_ranks():
    """`random:FRACTION:FACTOR` slows a seeded random FRACTION of the ranks (MegaScale, arXiv
    2402.15627 §5): 25% of 16 ranks is 4 ranks, 10% of 16 rounds to 2; FACTOR 1 (no slowdown) is
    a valid factor (the spec asks FACTOR >= 1)."""
    from simulator.des import parse_stragglers
    slow = parse_stragglers("random:0.25:1.5", 16)
    assert len(slow) == 4 and set(slow.values()) == {1.5} and all(0 <= r < 16 for r in slow)
    same = parse_stragglers("random:0.1:1", 16)
    assert len(same) == 2 and set(same.values()) == {1.0}
    assert len(parse_stragglers("random:1:2", 16)) == 16
    from hwmodels.errors import InputError
    for bad in ("random:-0.25:1.5", "random:0:1.5", "random:1.5:2", "random:0.5:0.9"):
        with pytest.raises(InputError, match="FRACTION in"):
            parse_stragglers(bad, 16)


@pytest.mark.parametrize("zero", [1, 2])
def test_zero12_parameter_gather_is_exposed_only_when_not_overlapped(zero):
    """ZeRO-1/2 (Megatron-Core distributed optimizer): after the optimizer step each rank
    all-gathers the updated parameter shards. With --overlap-param-gather the gather hides under
    the next forward; without it, it is exposed DP time: the DES's dp_comm grows by the stage's
    gather time (as the analytic engine's dp_exposed_s says)."""
    from simulator.des import simulate
    cl = load_cluster("dgx-h100", nodes=1)
    plan = parse_plan(f"tp=2,pp=2,mb=1,zero={zero}", cl.num_devices)
    dp = {}
    for overlap in (True, False):
        job = TrainingJob(load_model("llama3-8b"), 2048, 32, overlap_param_gather=overlap)
        _, res = simulate(job, plan, cl)
        dp[overlap] = res.breakdown_s["dp_comm"]
    gather = TrainingDES(job, plan, cl).costs.stages[0].dp_gather_s
    assert gather > 0
    assert dp[False] - dp[True] == pytest.approx(gather, rel=0.02)


def test_zero3_step_has_no_bucketed_gradient_reductions():
    """ZeRO-3 / FSDP reduce-scatters each layer's gradients as its backward ends (ZeRO §5.3,
    arXiv 1910.02054), which the DES takes as the analytic exposed tail: its trace shows that
    tail ("dp exposed") and no DDP bucket reductions ("reduce j.k"), unlike ZeRO-1."""
    from simulator.des import simulate
    cl = load_cluster("dgx-h100", nodes=1)
    job = TrainingJob(load_model("llama3-8b"), 2048, 16)
    names = {}
    for zero in (1, 3):
        _, res = simulate(job, parse_plan(f"tp=2,mb=1,zero={zero}", cl.num_devices), cl, trace=True)
        names[zero] = {e[2] for e in res.timeline}
    assert any(n.startswith("reduce ") for n in names[1])
    assert "dp exposed" in names[3] and not any(n.startswith("reduce") for n in names[3])


def test_simulate_records_a_timeline_only_when_asked_and_ends_every_unit():
    """The timeline (Chrome trace) is opt-in: a plain simulate() keeps none. With full ranks every
    (DP replica, stage) unit reports its own end time, named "dp/stage" (tp=2, pp=2 on 8 GPUs:
    dp=2, four units)."""
    from simulator.des import simulate
    cl = load_cluster("dgx-h100", nodes=1)
    job = TrainingJob(load_model("llama3-8b"), 2048, 16)
    _, res = simulate(job, parse_plan("tp=2,pp=2,mb=1", cl.num_devices), cl, full_ranks=True)
    assert res.timeline == []
    assert res.units == 4 and set(res.unit_end_s) == {"0/0", "0/1", "1/0", "1/1"}
    assert max(res.unit_end_s.values()) == pytest.approx(res.step_time_s)


def test_a_stragglers_tp_collectives_are_slowed_by_its_factor():
    """TP peers run in lock-step (their per-layer collectives synchronise them), so a rank slowed
    2x slows its whole TP group: the unit's compute and its TP communication both double."""
    from simulator.des import simulate
    cl = load_cluster("dgx-h100", nodes=1)
    job = TrainingJob(load_model("llama3-8b"), 2048, 16)
    plan = parse_plan("tp=2,mb=1", cl.num_devices)
    _, even = simulate(job, plan, cl, full_ranks=True)
    _, slow = simulate(job, plan, cl, slowdown={0: 2.0})
    assert even.breakdown_s["tp_comm"] > 0
    assert slow.breakdown_s["tp_comm"] == pytest.approx(2 * even.breakdown_s["tp_comm"], rel=1e-9)
    assert slow.breakdown_s["compute"] == pytest.approx(2 * even.breakdown_s["compute"], rel=1e-9)


def test_ddp_buckets_together_carry_the_whole_gradient_reduction():
    """DDP splits the gradient all-reduce into buckets that start as the backward produces them
    (Li et al., PyTorch Distributed, VLDB 2020 §3.2.3): the buckets' reductions add up to the
    stage's whole DP reduction time (here each bucket reduces alone on the port)."""
    from simulator.des import simulate
    cl = load_cluster("dgx-h100", nodes=1)
    job = TrainingJob(load_model("llama3-8b"), 2048, 16)
    plan = parse_plan("tp=1,mb=1", cl.num_devices)
    _, res = simulate(job, plan, cl, trace=True)
    reduces = [e for e in res.timeline if e[2].startswith("reduce ")]
    grad = TrainingDES(job, plan, cl).costs.stages[0].dp_grad_s
    assert len(reduces) > 1 and grad > 0
    assert sum(e[4] for e in reduces) == pytest.approx(grad, rel=1e-6)


def test_events_per_second_is_events_over_wall_time():
    from simulator.des import DESResult
    assert DESResult(1.0, {}, {}, 3000, 1.5, 1).events_per_s == pytest.approx(2000.0)
    assert DESResult(1.0, {}, {}, 3000, 0.0, 1).events_per_s == 0.0


@pytest.mark.parametrize("plan,first", [("tp=2,pp=2,mb=1,schedule=zb-h1", "W7"), ("tp=2,pp=2,mb=1", "B7.0")])
def test_the_last_pass_is_named_by_its_first_bucket(plan, first):
    """In the trace, the last micro-batch's W pass (Zero Bubble) or, with DDP bucketing, the last
    backward of a chunk appears as its first bucket ("W7", "B7.0") followed by the remaining
    buckets ("W7+", "B7.0+"): one pass walking the layers."""
    from simulator.des import simulate
    cl = load_cluster("dgx-h100", nodes=1)
    job = TrainingJob(load_model("llama3-8b"), 2048, 16)
    _, res = simulate(job, parse_plan(plan, cl.num_devices), cl, trace=True)
    for unit in {e[0] for e in res.timeline}:
        names = [e[2] for e in sorted(res.timeline, key=lambda e: e[3]) if e[0] == unit and e[2].startswith(first[:2])]
        assert names[0] == first and len(names) > 1 and set(names[1:]) == {first + "+"}


def test_pipeline_sends_between_nodes_take_time():
    """Stage-to-stage activations cross the inter-node network (pp=2 over 2 DGX nodes) and a
    blocking send holds its stage (Megatron-LM 2021, no --overlap-p2p-communication): the DES's
    exposed pipeline communication is that of the analytic engine within 5%."""
    from simulator.analytic import estimate
    from simulator.des import simulate
    cl = load_cluster("dgx-h100", nodes=2)
    job = TrainingJob(load_model("llama3-8b"), 2048, 32)
    plan = parse_plan("tp=8,pp=2,mb=1", cl.num_devices)
    _, res = simulate(job, plan, cl)
    ana = estimate(job, plan, cl).breakdown_s["pp_comm"]
    assert ana > 0
    assert res.breakdown_s["pp_comm"] == pytest.approx(ana, rel=0.05)


def test_trace_names_chunks_only_for_interleaved_schedules():
    """Pass names carry the local chunk (".j") only when a stage holds several model chunks
    (interleaved 1F1B, Narayanan et al. 2021 §2.2): 1F1B's are "F0", "B0" (the last backward's
    DDP bucket pieces aside)."""
    from simulator.des import simulate
    cl = load_cluster("dgx-h100", nodes=1)
    job = TrainingJob(load_model("llama3-8b"), 2048, 16)
    names = {}
    for sched, extra in (("1f1b", ""), ("interleaved", ",vpp=2")):
        _, res = simulate(job, parse_plan(f"tp=2,pp=2,mb=1,schedule={sched}{extra}", cl.num_devices), cl, trace=True)
        names[sched] = {e[2] for e in res.timeline}
    assert {"F0", "B0"} <= names["1f1b"] and not any("." in n for n in names["1f1b"] if n[0] == "F")
    assert {"F0.0", "F0.1", "B0.0", "B0.1"} <= names["interleaved"]


def test_each_stage_waits_only_for_its_own_gradient_reductions():
    """Each pipeline stage reduces its own gradients with its DP peers (Megatron-LM: one DP group
    per stage) and steps its optimizer when they are done. With an uneven split (3 vs 29 layers,
    pp=2, DP across nodes) the heavy last stage exposes a long all-reduce; the light first stage
    waits only for its own, about the analytic engine's exposed DP time (within 10%)."""
    from simulator.analytic import dp_exposed_s
    cl = load_cluster("dgx-h100", nodes=4)
    job = TrainingJob(load_model("llama3-8b"), 512, 16)
    plan = parse_plan("tp=8,pp=2,mb=1,layout=Ettt|" + "t" * 29 + "L", cl.num_devices)
    des = TrainingDES(job, plan, cl)
    des.run()
    own = dp_exposed_s(job, plan, des.costs.stages[0])
    assert des._dp_wait[(0, 1)] > 2 * own  # the heavy stage's reduction is the longer one
    assert des._dp_wait[(0, 0)] == pytest.approx(own, rel=0.1)


def test_an_interleaved_plan_of_more_than_256_model_chunks_runs_every_pass():
    """The DES runs any valid plan to the end, however many virtual stages it has: pp=2 with
    vpp=129 (258 model chunks of one layer) computes every forward and backward, the same compute
    time as the analytic engine (within 1%)."""
    from simulator.analytic import estimate
    from simulator.des import simulate
    from simulator.models import ModelSpec
    from simulator.training import TrainingPlan
    tall = ModelSpec(name="tall", num_layers=258, hidden_size=128, num_heads=2, num_kv_heads=2,
                     ffn_hidden_size=512, vocab_size=128, gated_mlp=False)
    cl = load_cluster("dgx-h100", nodes=1)
    job = TrainingJob(tall, 256, 8)
    plan = TrainingPlan(dp=4, tp=1, pp=2, mb=1, vpp=129, schedule="interleaved")
    _, res = simulate(job, plan, cl)
    assert res.breakdown_s["compute"] == pytest.approx(estimate(job, plan, cl).breakdown_s["compute"], rel=0.01)
    # each micro-batch (m = 8 / dp 4 = 2) crosses each of the 257 chunk boundaries once forward
    # and once backward; the last chunk's output goes to the loss on its own rank, unsent
    des = TrainingDES(job, plan, cl)
    sends, transfer = [], des.net.transfer
    des.net.transfer = lambda d, links: (sends.append(links) if len(links) == 2 else None) or transfer(d, links)
    des.run()
    assert len(sends) == 2 * 2 * 257


def test_straggler_ranks_outside_the_cluster_are_refused():
    from hwmodels.errors import InputError
    from simulator.des import parse_stragglers
    assert parse_stragglers("0:1.5,15:2", 16) == {0: 1.5, 15: 2.0}
    for bad in ("-1:2", "16:2"):
        with pytest.raises(InputError, match="outside 0..15"):
            parse_stragglers(bad, 16)


def test_chrome_trace_numbers_processes_from_one():
    """Trace viewers reserve pid 0 (the idle/swapper task in Linux traces): every simulated unit
    gets its own process id, 1, 2, ... in order of appearance."""
    from simulator.des import chrome_trace, simulate
    cl = load_cluster("dgx-h100", nodes=1)
    job = TrainingJob(load_model("llama3-8b"), 2048, 16)
    plan = parse_plan("tp=2,pp=2,mb=1", cl.num_devices)
    _, res = simulate(job, plan, cl, full_ranks=True, trace=True)
    pids = {e["pid"] for e in chrome_trace(res, plan)["traceEvents"]}
    assert pids == {1, 2, 3, 4}


def test_a_straggler_holds_back_its_dp_peers_at_the_gradient_all_reduce():
    """The DP gradient all-reduce is a collective: every replica waits for the slowest one
    (MegaScale, arXiv 2402.15627 §5: one slow GPU slows the whole job). With one rank of DP
    replica 1 slowed 2x (tp=2, dp=4), the healthy replicas end their step about when the slow
    one does (it only steps its optimizer slower after), about twice the even step."""
    from simulator.des import simulate
    cl = load_cluster("dgx-h100", nodes=1)
    job = TrainingJob(load_model("llama3-8b"), 2048, 16)
    plan = parse_plan("tp=2,mb=1", cl.num_devices)
    _, even = simulate(job, plan, cl, full_ranks=True)
    _, slow = simulate(job, plan, cl, slowdown={2: 2.0})  # rank 2: DP replica 1 (tp innermost)
    ends = slow.unit_end_s
    assert max(ends, key=ends.get) == "1/0"
    for healthy in ("0/0", "2/0", "3/0"):
        assert ends[healthy] == pytest.approx(ends["1/0"], rel=0.03)
        assert ends[healthy] > 1.9 * even.unit_end_s[healthy]


def test_a_flow_on_no_shared_link_takes_its_uncontended_time():
    """concurrent_transfers: a flow alone on its links runs at rate 1, i.e. in the time the
    collective cost model gives; one with no links at all shares nothing and does the same."""
    from simulator.des import concurrent_transfers
    assert concurrent_transfers([(2.0, {}), (3.0, {"a": 1.0})]) == pytest.approx([2.0, 3.0])
    # two equal flows on one link: each gets half of it (processor sharing)
    assert concurrent_transfers([(1.0, {"a": 1.0}), (1.0, {"a": 1.0})]) == pytest.approx([2.0, 2.0])


@pytest.mark.parametrize("schedule", ["zb-v", "dualpipe"])
def test_v_shaped_schedules_agree_with_the_analytic_engine(schedule):
    """ZB-V (Qi et al., arXiv 2401.10241 §6) and DualPipe (DeepSeek-V3, arXiv 2412.19437 §3.2.1)
    place two model chunks per stage in a V; the DES, which runs their passes and transfers
    event by event, lands within 5% of the analytic engine's closed form (pp=4, 8 micro-batches
    per replica)."""
    from simulator.analytic import estimate
    from simulator.des import simulate
    cl = load_cluster("dgx-h100", nodes=1)
    job = TrainingJob(load_model("llama3-8b"), 2048, 32)
    plan = parse_plan(f"tp=2,pp=4,mb=1,schedule={schedule}", cl.num_devices)
    des, _ = simulate(job, plan, cl)
    assert des.step_time_s == pytest.approx(estimate(job, plan, cl).step_time_s, rel=0.05)


def test_ddp_bucketing_of_the_last_backward_keeps_its_tp_communication():
    """Megatron tensor parallelism all-reduces each layer's activations in forward and their
    gradients in backward (Shoeybi et al., arXiv 1909.08053 §3); DDP bucketing (Li et al., VLDB
    2020 §3.2.3) only cuts the last backward into pieces that release gradient buckets, so the
    step's TP communication is still m micro-batches x (forward + backward TP time) of the chunk,
    summed here from the per-pass costs (tp=2, pp=1, 4 micro-batches, many buckets)."""
    cl = load_cluster("dgx-h100", nodes=1)
    job = TrainingJob(load_model("llama3-8b"), 2048, 16)
    des = TrainingDES(job, parse_plan("tp=2,mb=1", cl.num_devices), cl)
    st, m = des.costs.stages[0], des.costs.micro_batches
    assert des._n_buckets(st) > 1 and m == 4
    res = des.run()
    tp = sum(m * (c.fwd_comm_s["tp"] + c.bwd_comm_s["tp"]) for c in st.chunks)
    busy = sum(m * (c.fwd_s + c.bwd_s - sum(c.fwd_comm_s.values()) - sum(c.bwd_comm_s.values()))
               for c in st.chunks)
    assert tp > 0
    assert res.breakdown_s["tp_comm"] == pytest.approx(tp, rel=1e-9)
    assert res.breakdown_s["compute"] == pytest.approx(busy, rel=1e-9)
    for g in ("cp", "ep"):  # no context or expert parallelism: none of their communication
        assert res.breakdown_s[f"{g}_comm"] == sum(m * (c.fwd_comm_s[g] + c.bwd_comm_s[g]) for c in st.chunks)


def test_des_utilisation_scales_with_its_own_step_time():
    """MFU and HFU are FLOPs per second over the peak (PaLM, Chowdhery et al. 2022 App. B), and a
    step's FLOPs do not depend on the engine that times it: the DES's MFU x step time, HFU x step
    time and TFLOP/s x step time equal the analytic engine's, and its tokens/s is the step's tokens
    over its own step time (a plan where the two step times differ: DP buckets exposed)."""
    from simulator.analytic import estimate
    from simulator.des import simulate
    cl = load_cluster("dgx-h100", nodes=1)
    job = TrainingJob(load_model("llama3-8b"), 2048, 16)
    plan = parse_plan("tp=2,mb=1", cl.num_devices)
    ana = estimate(job, plan, cl)
    des, res = simulate(job, plan, cl)
    t, t0 = des.step_time_s, ana.step_time_s
    assert t == res.step_time_s and t != pytest.approx(t0, rel=1e-6)
    assert des.mfu * t == pytest.approx(ana.mfu * t0, rel=1e-9)
    assert des.hfu * t == pytest.approx(ana.hfu * t0, rel=1e-9)
    assert des.tflops_per_device * t == pytest.approx(ana.tflops_per_device * t0, rel=1e-9)
    assert des.tokens_per_s == pytest.approx(16 * 2048 / t, rel=1e-12)


def test_a_simulation_of_exactly_the_event_limit_runs_and_one_more_is_refused():
    """The DES refuses a run past 3,000,000 events (des.py's size limit, "3M events is 20-60 s"),
    saying so: a run that reaches exactly 3,000,000 events is within it and completes with that
    count, one event more is refused with "stopped after 3,000,000 events". The small step's own
    event count k is measured first; the counter then starts at 3,000,000 - k (or one past)."""
    from hwmodels.errors import InputError
    cl = load_cluster("dgx-h100", nodes=1)
    job = TrainingJob(load_model("llama3-8b"), 2048, 16)
    plan = parse_plan("tp=2,mb=1", cl.num_devices)
    first = TrainingDES(job, plan, cl)
    k = first.run().events
    fits = TrainingDES(job, plan, cl, costs=first.costs)
    fits.env.processed = 3_000_000 - k
    assert fits.run().events == 3_000_000
    over = TrainingDES(job, plan, cl, costs=first.costs)
    over.env.processed = 3_000_000 - k + 1
    with pytest.raises(InputError, match="stopped after 3,000,000 events"):
        over.run()


def test_random_stragglers_by_default_are_those_of_the_cli_default_seed():
    """`random:FRACTION:FACTOR` is seeded (MegaScale-style stragglers, arXiv 2402.15627 §5, drawn
    reproducibly): called without a seed, parse_stragglers picks the same ranks as the CLI does
    with its default --seed (0), i.e. Python's random.Random(0).sample of the ranks."""
    import random
    from simulator.des import parse_stragglers
    from ui.cli import build_parser
    args = build_parser().parse_args(["simulate", "train", "--model", "llama3-8b", "--cluster", "dgx-h100",
                                      "--seq-len", "2048", "--global-batch", "16"])
    expect = {r: 1.5 for r in random.Random(args.seed).sample(range(16), 4)}
    assert parse_stragglers("random:0.25:1.5", 16) == expect
    assert parse_stragglers("random:0.25:1.5", 16, args.seed) == expect


def test_with_two_ddp_buckets_the_first_reduces_from_the_middle_of_the_last_backward():
    """DDP launches a bucket's all-reduce as soon as the backward has produced its gradients (Li et
    al., PyTorch Distributed, VLDB 2020 §3.2.3; Megatron-Core's overlap of the gradient reduction
    with backward): a 2-layer model of 52 MiB of gradients fills two 25 MiB buckets, so bucket 0's
    reduction starts halfway through the last micro-batch's backward (its start + bwd/2), while the
    second half still computes, and bucket 1's when that backward ends (start + bwd)."""
    from simulator.des import simulate
    from simulator.models import ModelSpec
    small = ModelSpec(name="small", num_layers=2, hidden_size=1024, num_heads=8, num_kv_heads=8,
                      ffn_hidden_size=4096, vocab_size=1024, gated_mlp=False)
    cl = load_cluster("dgx-h100", nodes=1)
    job = TrainingJob(small, 1024, 16)
    plan = parse_plan("tp=1,mb=1", cl.num_devices)  # dp=8: 2 micro-batches, the last is B1
    des = TrainingDES(job, plan, cl)
    assert des._n_buckets(des.costs.stages[0]) == 2
    bwd = des.costs.stages[0].chunks[0].bwd_s
    _, res = simulate(job, plan, cl, trace=True)
    start = {e[2]: e[3] for e in res.timeline}
    assert bwd > 0
    assert start["reduce 0.0"] == pytest.approx(start["B1.0"] + bwd / 2, rel=1e-9)
    assert start["reduce 0.1"] == pytest.approx(start["B1.0"] + bwd, rel=1e-9)


def test_zb_h2_holds_at_most_2p_minus_1_passes_however_deep_the_pipeline():
    """ZB-H2 (Qi et al., arXiv 2401.10241 §3.1) lets a stage hold up to 2p − 1 micro-batches whose
    weight gradients are pending (its peak memory (2p − 1)·M_B); a deferred W runs as soon as the
    next forward would exceed that. Stage 0 of a 136-stage pipeline (cap 271, 272 micro-batches,
    its input gradients given at once so no wait fills a W): counting forwards up and W passes
    down along its trace, it peaks at exactly 2·136 − 1 = 271 and ends at 0."""
    from simulator.models import ModelSpec
    from simulator.training import TrainingPlan
    tall = ModelSpec(name="tall", num_layers=136, hidden_size=128, num_heads=2, num_kv_heads=2,
                     ffn_hidden_size=512, vocab_size=128, gated_mlp=False)
    cl = load_cluster("dgx-h100", nodes=17)
    des = TrainingDES(TrainingJob(tall, 256, 272), TrainingPlan(dp=1, tp=1, pp=136, mb=1, schedule="zb-h2"),
                      cl, trace=True)
    assert des.costs.micro_batches == 272
    for mb in range(272):  # stage 1's input gradients, already arrived
        a = des._arrival(("B", 0, 0, mb))
        a[1] = 0.0
        a[0].succeed()
    des.env.process(des._unit(0, 0))
    des.env.run()
    held, peak, ws = 0, 0, 0
    for e in sorted((e for e in des.timeline if e[1] == "compute"), key=lambda e: e[3]):
        if e[2][0] == "F":
            held += 1
        elif e[2][0] == "W" and not e[2].endswith("+"):
            held, ws = held - 1, ws + 1
        peak = max(peak, held)
    assert ws == 272 and held == 0
    assert peak == 2 * 136 - 1


@pytest.mark.parametrize("zero,overlap", [(1, False), (3, True)])
def test_without_ddp_buckets_the_last_weight_gradient_pass_runs_whole(zero, overlap):
    """The last W pass (Zero Bubble, arXiv 2401.10241 §3.1) is cut into DDP buckets only when
    buckets are reduced during the backward (Li et al., VLDB 2020 §3.2.3). Without
    --overlap-grad-reduce the gradients are all-reduced once after the whole backward (Megatron-LM
    2021: one "grad reduce"), and ZeRO-3 reduce-scatters layer by layer in its exposed tail (ZeRO
    §5.3): in both the trace's last W is one pass, "W7", with no "W7+" pieces."""
    from simulator.des import simulate
    cl = load_cluster("dgx-h100", nodes=1)
    job = TrainingJob(load_model("llama3-8b"), 2048, 16, overlap_grad_reduce=overlap)
    _, res = simulate(job, parse_plan(f"tp=2,pp=2,mb=1,schedule=zb-h1,zero={zero}", cl.num_devices), cl,
                      trace=True)
    names = [e[2] for e in res.timeline]
    assert names.count("W7") == 2 and "W7+" not in names  # one per stage
    assert not any(n.startswith("reduce ") for n in names)
    assert ("grad reduce" in names) == (zero == 1)


def test_the_reported_event_count_is_the_events_simpy_processed():
    """A DES result reports the events it ran (its notes' "N events", events_per_s): simpy's
    Environment.step processes one event per call, and the call that finds the queue empty
    (EmptySchedule) ends the run without one. Counted independently by wrapping simpy's own
    step, the reported count equals the calls that processed an event."""
    cl = load_cluster("dgx-h100", nodes=1)
    job = TrainingJob(load_model("llama3-8b"), 2048, 16)
    des = TrainingDES(job, parse_plan("tp=2,pp=2,mb=1", cl.num_devices), cl)
    calls = {"event": 0}
    base = simpy.Environment.step

    def counted(env):
        base(env)  # raises EmptySchedule when no event is left
        calls["event"] += 1
    simpy.Environment.step = counted
    try:
        res = des.run()
    finally:
        simpy.Environment.step = base
    assert calls["event"] > 100
    assert res.events == calls["event"]


@pytest.mark.parametrize("plan", ["tp=4,pp=2,mb=1", "tp=4,pp=2,mb=1,schedule=interleaved,vpp=2"])
def test_every_forward_waits_for_the_previous_model_chunk(plan):
    """A micro-batch's forward on model chunk c starts only once chunk c - 1 has finished it (its
    activations arrive from there): chunk 1 included, on stage 1 (1F1B) or stage 1's first chunk
    (interleaved, chunk = stage + local chunk · pp, Narayanan et al. 2021 §2.2)."""
    from simulator.des import simulate
    cl = load_cluster("dgx-h100", nodes=1)
    job = TrainingJob(load_model("llama3-8b"), 2048, 16)
    p = parse_plan(plan, cl.num_devices)
    _, res = simulate(job, p, cl, trace=True)
    fwd = {}
    for (dp, stage), kind, name, start, dur, args in res.timeline:
        if kind == "compute" and name.startswith("F") and dp == 0:
            fwd[(stage + args["chunk"] * p.pp, args["mb"])] = (start, start + dur)
    assert len(fwd) == 2 * p.vpp * (16 // (p.dp * p.mb))
    for (c, mb), (start, _) in fwd.items():
        if c > 0:
            assert start >= fwd[(c - 1, mb)][1] - 1e-12, (c, mb)
