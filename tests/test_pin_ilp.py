"""Pin tests for planner/ilp.py (written from surviving mutants): small partition and replica
problems whose optimum is worked out by hand in each docstring, so that a changed objective,
constraint or bound picks a different answer. Each solve takes milliseconds."""
from __future__ import annotations

import pytest

from hwmodels.errors import InputError
from planner import ilp


def _pb(t, inflight, extra, cap=1e18, w=None, a=None, fixed=None, v=1, m=1, phi=1.0):
    L, p = len(t), len(inflight)
    return ilp.PartitionProblem(list(t), list(w or [0.0] * L), list(a or [0.0] * L), list(inflight),
                                list(extra), list(fixed or [0.0] * p), cap, chunks_per_stage=v,
                                micro_batches=m, act_factor=phi)


def test_embedding_and_lm_head_stages_take_fewer_identical_layers():
    """8 identical layers of 1 s on 4 stages, the embedding (2 s) on stage 0 and the LM head (2 s)
    on stage 3: a stage holds at least one layer, so stages 0 and 3 take 2 + 1 = 3 s at best, and
    the other 6 layers split 3 + 3: slowest stage 3 s (uniform 2 per stage would give 4 s)."""
    res = ilp.partition_ilp(_pb([1.0] * 8, [4, 3, 2, 1], [2.0, 0.0, 0.0, 2.0]), gap=0.0)
    assert res.solver.optimal
    assert res.layers_per_stage == [1, 3, 3, 1]
    assert res.bottleneck_s == pytest.approx(3.0) and res.stage_time_s == pytest.approx([3.0] * 4)


def test_interleaved_objective_weighs_the_slowest_chunk_by_p_minus_1():
    """Interleaved 1F1B (Narayanan et al. 2021 §2.2.2), p = 2 stages x v = 2 chunks, m = 3
    micro-batches: minimise m·(slowest stage) + (p − 1)·(slowest chunk). Layers of 3, 4, 3, 3, 5,
    4, 4, 3 s, embedding 1 s (chunk 0, stage 0), LM head 2 s (chunk 3, stage 1).
    Chunks [2, 3, 2, 1] layers: chunk times 7+1, 11, 8, 3+2; stages 1+7+8 = 16 and 2+11+3 = 16:
    3·16 + 1·11 = 59, the optimum. Chunks [2, 2, 2, 2]: stages 17 and 15, chunks <= 9:
    3·17 + 9 = 60. (Weighing the chunk by p = 2 instead would prefer the latter: 69 < 70.)"""
    pb = _pb([3.0, 4.0, 3.0, 3.0, 5.0, 4.0, 4.0, 3.0], [2, 1], [1.0, 2.0], v=2, m=3)
    res = ilp.partition_ilp(pb, gap=0.0)
    assert res.solver.optimal
    assert res.layers_per_chunk == [2, 3, 2, 1] and res.layers_per_stage == [4, 4]
    assert res.objective == pytest.approx(59.0) and res.bottleneck_s == pytest.approx(16.0)
    assert pb.objective(ilp._edges([2, 2, 2, 2])) == pytest.approx(60.0)


def test_first_stage_holds_more_micro_batches_so_takes_fewer_layers_under_a_memory_cap():
    """1F1B: stage s keeps p − s micro-batches of activations (Narayanan et al. 2021 §2.2), here
    2 on stage 0 and 1 on stage 1. 6 identical layers (1 s, 1 byte of states, 1 byte of
    activations per micro-batch), 8 bytes per device: stage 0 fits (1 + 2·1)·N0 <= 8, N0 <= 2;
    stage 1 (1 + 1)·N1 <= 8, N1 <= 4. The balanced 3 + 3 does not fit; 2 + 4 does (6 and 8
    bytes). With 7 bytes (N0 <= 2, N1 <= 3) no partition fits."""
    pb = _pb([1.0] * 6, [2, 1], [0.0, 0.0], cap=8.0, w=[1.0] * 6, a=[1.0] * 6)
    res = ilp.partition_ilp(pb, gap=0.0)
    assert res.solver.optimal and res.layers_per_stage == [2, 4]
    assert res.stage_bytes == pytest.approx([6.0, 8.0]) and res.bottleneck_s == pytest.approx(4.0)
    tight = ilp.partition_ilp(_pb([1.0] * 6, [2, 1], [0.0, 0.0], cap=7.0, w=[1.0] * 6, a=[1.0] * 6), gap=0.0)
    assert tight.layers_per_chunk is None and not tight.solver.feasible and tight.bottleneck_s is None
    assert "Infeasible" in tight.solver.status


def test_mixed_layers_use_the_boundary_formulation_with_the_same_optimum():
    """Dense (1 s) and MoE (2 s) layers mixed: 1, 2, 1, 2, 1, 1 on 2 stages. Cuts after layer 3
    give 4 + 4 s (the only balanced cut: prefix sums 1, 3, 4, 6, 7, 8)."""
    res = ilp.partition_ilp(_pb([1.0, 2.0, 1.0, 2.0, 1.0, 1.0], [2, 1], [0.0, 0.0]), gap=0.0)
    assert res.solver.optimal and res.layers_per_stage == [3, 3]
    assert res.stage_time_s == pytest.approx([4.0, 4.0])



@pytest.mark.parametrize("t, start", [
    ([1.0] * 3, [1, 1]),  # identical layers (layer-count ILP): 2 of the 3 layers
    ([1.0] * 4, [1, 5]),  # 6 layers, one chunk beyond the 4 − 2 + 1 a chunk can hold
    ([1.0] * 3, [0, 3]),  # an empty chunk
    ([1.0] * 3, [1, 1, 1]),  # three chunks for two
    ([1.0, 1.0, 1.0, 2.0], [1, 1]),  # dense and MoE layers mixed (boundary ILP): 2 of the 4 layers
    ([1.0, 1.0, 1.0, 2.0], [1, 4]),
    ([1.0, 1.0, 1.0, 2.0], [0, 4]),
])
def test_a_start_that_is_not_a_partition_of_the_layers_is_ignored(t, start):
    """`start` seeds CBC with a known solution (partition_boundary_ilp's docstring), so only a
    partition of the L layers into C non-empty chunks is one: any other (a stale start from
    another model or plan) is ignored, and the solve is exactly the one without a start. Given
    to CBC it would be rejected at best, steer CBC to another of equally good partitions (the
    same problem would answer differently), or make pulp refuse a value outside a chunk's bounds.
    Expected: the answer of the same solve without a start, and the brute-force optimum."""
    res = ilp.partition_ilp(_pb(t, [2, 1], [0.0, 0.0]), time_limit_s=30, gap=0.0, start=list(start))
    alone = ilp.partition_ilp(_pb(t, [2, 1], [0.0, 0.0]), time_limit_s=30, gap=0.0)
    assert (res.layers_per_chunk, res.stage_time_s, res.objective) == \
        (alone.layers_per_chunk, alone.stage_time_s, alone.objective)
    best, _ = ilp.partition_brute_force(_pb(t, [2, 1], [0.0, 0.0]))
    assert res.solver.optimal and res.objective == pytest.approx(best)

def test_solver_summary_is_optimal_only_when_every_solve_is():
    def run(optimal, feasible, t):
        return ilp.SolverRun("Optimal" if optimal else "Not Solved", "", optimal, feasible,
                             1.0 if feasible else None, t, 2.0, 0.01)
    s = ilp.solver_summary([run(True, True, 0.5), run(False, True, 1.5)])
    assert s["optimal"] is False and s["status"] == "time limit (not proven optimal)"
    assert s["solves"] == 2 and s["solve_time_s"] == pytest.approx(2.0)
    s = ilp.solver_summary([run(True, True, 0.25), run(True, True, 0.25)])
    assert s["optimal"] is True and s["status"] == "Optimal" and s["solve_time_s"] == pytest.approx(0.5)
    s = ilp.solver_summary([run(True, True, 0.1), run(False, False, 0.1)])
    assert s["optimal"] is False and s["status"] == "Not Solved"  # no solution at all: said so
    assert ilp.solver_summary([])["status"] == "not run"


@pytest.mark.parametrize("limit, gap, msg", [(0, 0.01, "time limit 0"), (-1.0, 0.01, "time limit -1.0"),
                                             ("2", 0.01, "time limit '2'"), (1.0, 1.0, "gap 1.0"),
                                             (1.0, -0.1, "gap -0.1")])
def test_solver_limits_are_checked(limit, gap, msg):
    with pytest.raises(InputError, match=msg):
        ilp.partition_ilp(_pb([1.0] * 4, [2, 1], [0.0, 0.0]), time_limit_s=limit, gap=gap)


def test_replicas_on_two_device_types_share_the_batch_by_speed():
    """Metis-style heterogeneous data parallelism: 16 fast and 16 slow devices, a global batch of
    8. A fast 8-device replica runs 3 sequences in 1 s, a slow one 1 sequence in 1 s or 2 in
    2.5 s. 2 fast (6) + 2 slow of 1 (2) = 8 sequences in 1 s, the optimum; a batch of 100
    cannot be placed on 8 + 8 devices."""
    opts = [ilp.ReplicaOption("fast", 8, 3, 1.0), ilp.ReplicaOption("slow", 8, 1, 1.0),
            ilp.ReplicaOption("slow", 8, 2, 2.5)]
    sol = ilp.hetero_replica_ilp(opts, {"fast": 16, "slow": 16}, 8)
    assert sol.solver.optimal and sol.replicas == {0: 2, 1: 2} and sol.compute_step_s == 1.0
    bad = ilp.hetero_replica_ilp(opts, {"fast": 8, "slow": 8}, 100)
    assert bad.replicas == {} and bad.compute_step_s is None and not bad.solver.feasible


# ---- partitions of real plans (simulator.analytic / simulator.memory inputs) ----------------------
def _plan_case(text, nodes=4, model="llama3-8b", layers=None):
    from hwmodels.clusters import load_cluster
    from simulator.models import load_model, megatron_gpt
    from simulator.training import TrainingJob, parse_plan
    m = megatron_gpt(f"gpt-{layers}", layers, 4096, 32, seq_len=2048) if layers else load_model(model)
    job = TrainingJob(m, seq_len=4096 if not layers else 2048, global_batch=64 if not layers else 8)
    c = load_cluster("dgx-h100", nodes=nodes)
    return job, parse_plan(text, c.num_devices), c


@pytest.mark.parametrize("text, nodes, layers, start", [
    ("tp=2,pp=4,mb=1,recompute=selective,sp=on,schedule=1f1b", 4, None, [8, 8, 8, 8]),
    ("tp=2,pp=4,vpp=3,mb=1,recompute=selective,sp=on,schedule=interleaved", 4, None, [2] + [3] * 8 + [2] * 3),
    ("tp=8,pp=3,mb=1,schedule=1f1b", 3, 29, [10, 10, 9]),
])
def test_the_starting_partition_is_balanced_and_spares_the_embedding_chunk(text, nodes, layers, start):
    """The partition the ILP starts from (and the note compares against): the uniform one when
    pp·vpp divides the layers; otherwise q = L // C layers per chunk and the r = L mod C spare
    layers on chunks 1..r, off chunk 0 (embedding) and the last chunk (LM head), unless
    r = C − 1, when chunks 0..r−1 take them. Llama-3 8B (32 layers): 4 chunks of 8; 12 chunks:
    2, then eight of 3, then three of 2. A 29-layer GPT on 3 stages (r = 2 = C − 1): 10, 10, 9."""
    job, plan, c = _plan_case(text, nodes, layers=layers)
    pb, got = ilp.partition_problem(job, plan, c)
    assert got == start and sum(got) == job.model.num_layers


def test_predicted_step_is_the_analytic_step_less_the_bottleneck_saved():
    """1F1B (Narayanan et al. 2021 §2.2): the steady state is m × the slowest stage, so moving
    layers off the LM-head stage saves m × (uniform slowest − new slowest) per step. Interleaved:
    the change of m·(slowest stage) + (p − 1)·(slowest chunk). Llama-3 8B, pp 4 on 32 H100, m = 16."""
    from simulator.analytic import estimate
    from simulator.training import micro_batches
    job, plan, c = _plan_case("tp=2,pp=4,mb=1,recompute=selective,sp=on,schedule=1f1b")
    res = ilp.partition_for_plan(job, plan, c, time_limit_s=5, gap=0.0)
    m = micro_batches(plan, job)
    assert m == 16 and res.bottleneck_s < res.uniform_bottleneck_s
    step = estimate(job, plan, c).step_time_s
    assert res.predicted_step_time_s == pytest.approx(step - m * (res.uniform_bottleneck_s - res.bottleneck_s), rel=1e-12)
    assert any("plan layout=Et*" in n for n in res.notes)
    job, plan, c = _plan_case("tp=2,pp=4,vpp=2,mb=1,recompute=selective,sp=on,schedule=interleaved")
    res = ilp.partition_for_plan(job, plan, c, time_limit_s=5, gap=0.0)
    pb, start = ilp.partition_problem(job, plan, c)
    step = estimate(job, plan, c).step_time_s
    assert res.predicted_step_time_s == pytest.approx(step - (pb.objective(ilp._edges(start)) - res.objective), rel=1e-12)
    assert res.predicted_step_time_s < step


def test_no_step_prediction_where_the_analytic_step_has_no_uniform_partition():
    """pp·vpp = 12 does not divide Llama-3 8B's 32 layers: the analytic engine has no uniform
    step to start from, so the partition comes without a predicted step time."""
    job, plan, c = _plan_case("tp=2,pp=4,vpp=3,mb=1,recompute=selective,sp=on,schedule=interleaved")
    res = ilp.partition_for_plan(job, plan, c, time_limit_s=5, gap=0.0)
    assert res.layers_per_chunk is not None and sum(res.layers_per_chunk) == 32
    assert res.predicted_step_time_s is None and res.uniform_bottleneck_s is None


def test_a_single_stage_takes_every_layer():
    """pp = 1: one stage holds all layers (its time the sum plus its extras)."""
    res = ilp.partition_ilp(_pb([1.0, 2.0, 3.0], [1], [0.5]), gap=0.0)
    assert res.layers_per_stage == [3] and res.bottleneck_s == pytest.approx(6.5)


def test_full_recompute_read_from_text_keeps_the_ilps_memory_equal_to_the_engines():
    """The memory the partition ILP charges a stage at the uniform partition is the analytic
    engine's peak (simulator.memory.stage_memory), also for recompute=full given as text (a
    string built at run time, as the CLI reads it): full recompute's working set of the largest
    layer is in both. Llama 4 Maverick mixes dense and MoE layers, so that working set differs
    from a stage's own layers."""
    from hwmodels.clusters import load_cluster
    from simulator.analytic import estimate
    from simulator.models import load_model
    from simulator.training import TrainingJob, parse_plan
    job = TrainingJob(load_model("llama4-maverick"), seq_len=4096, global_batch=64)
    c = load_cluster("dgx-h100", nodes=16)
    plan = parse_plan("tp=8,pp=4,ep=4,mb=1,sp=on,schedule=1f1b,recompute=" + "".join(["fu", "ll"]), c.num_devices)
    pb, start = ilp.partition_problem(job, plan, c)
    peak = estimate(job, plan, c).memory["peak_bytes"]
    assert max(pb.stage_bytes(ilp._edges(start), s) for s in range(4)) == pytest.approx(peak, rel=1e-9)


def _dense_first_qwen3_problem(extra: str):
    """Qwen3-30B-A3B with its first 12 of 48 layers dense (DeepSeek's first_k_dense_replace) on
    4 DGX H100 nodes, tp=2, pp=4, ep=4 plus `extra`: (model, job, plan, problem, uniform start,
    its chunk edges)."""
    import dataclasses

    from hwmodels.clusters import load_cluster
    from simulator.models import load_model
    from simulator.training import TrainingJob, parse_plan
    m = dataclasses.replace(load_model("qwen3-30b-a3b"), first_dense_layers=12)
    job = TrainingJob(m, seq_len=4096, global_batch=64)
    c = load_cluster("dgx-h100", nodes=4)
    plan = parse_plan(f"tp=2,pp=4,ep=4,mb=1,sp=on,schedule=1f1b,{extra}", c.num_devices)
    pb, start = ilp.partition_problem(job, plan, c)
    return m, job, plan, pb, start, ilp._edges(start)


def test_zero3_gather_buffer_is_reserved_for_the_models_largest_layer_on_every_stage():
    """ZeRO-3 (Rajbhandari et al. 2020) gathers a layer's parameters before using it, the next
    one prefetched: simulator.memory.stage_memory keeps 2 layers of bf16 weights (TP-sharded) at
    the stage's own largest layer. The ILP may move any layer to any stage, so it reserves that
    buffer for the model's largest layer everywhere (partition_problem's docstring): at the
    uniform partition a stage of dense layers only, in a model whose MoE layers are larger, pays
    2·2 bytes·(largest − dense layer parameters)/tp beyond the engine's peak, and a stage holding
    an MoE layer pays nothing more. Qwen3-30B-A3B with its first 12 of 48 layers dense
    (DeepSeek's first_k_dense_replace), pp = 4: stage 0 holds exactly the dense layers."""
    from simulator.memory import WEIGHT_BYTES, stage_memory
    m, job, plan, pb, start, edges = _dense_first_qwen3_problem("zero=3")
    largest = max(m.layer_params(i) for i in range(m.num_layers))
    assert start == [12] * 4 and not any(m.is_moe_layer(i) for i in range(12)) and m.layer_params(0) < largest
    for s in range(4):
        own = max(m.layer_params(i) for i in range(edges[s], edges[s + 1]))
        extra = 2 * WEIGHT_BYTES * (largest - own) / plan.tp
        assert pb.stage_bytes(edges, s) - stage_memory(m, job, plan, s)["peak_bytes"] == pytest.approx(extra, abs=1.0)


def test_brute_force_reports_each_chunks_own_layer_count():
    """`partition_brute_force` answers (objective, layers per chunk): chunk c holds layers
    edges[c] .. edges[c+1] − 1. Layers of 1, 2, 1, 2, 1, 1 s on 2 stages: prefix sums 1, 3, 4, 6,
    7, 8, so the only cut giving 4 + 4 s is after layer 3 (any other leaves a stage >= 5 s):
    (4, [3, 3]), counts that add up to the 6 layers."""
    best, layers = ilp.partition_brute_force(_pb([1.0, 2.0, 1.0, 2.0, 1.0, 1.0], [2, 1], [0.0, 0.0]))
    assert best == pytest.approx(4.0) and layers == [3, 3] and sum(layers) == 6


def test_a_solve_without_a_start_gives_cbc_no_mip_start(monkeypatch):
    """`start` seeds CBC with a known solution; without one (or with one that is not a partition)
    CBC gets no MIP start. Asking pulp for a warm start anyway would not be neutral: pulp writes 0
    for every variable without a value (pulp.apis.coin_api.COIN_CMD.writesol), a start with
    empty chunks that violates every chunk's lower bound of 1 layer. Both formulations: identical
    layers (count ILP) and mixed ones (boundary ILP); with a valid start, warmStart is on."""
    seen = []
    real = ilp.pulp.PULP_CBC_CMD

    def spy(*args, **kw):
        seen.append(kw.get("warmStart", False))
        return real(*args, **kw)

    monkeypatch.setattr(ilp.pulp, "PULP_CBC_CMD", spy)
    for t in ([1.0] * 4, [1.0, 1.0, 1.0, 2.0]):
        for start, warm in ((None, False), ([0, 4], False), ([2, 2], True)):
            seen.clear()
            res = ilp.partition_ilp(_pb(t, [2, 1], [0.0, 0.0]), gap=0.0, start=start)
            assert res.solver.optimal and seen and seen[0] is warm, (t, start, seen)


def test_devices_of_a_group_are_shared_by_every_option_on_it_whatever_the_names_identity():
    """devices[g]: the replicas of all options on group g share its D_g devices
    (hetero_replica_ilp's docstring). Group names are compared by value: a name built at run
    time (read from a file or the CLI) is equal to, not the same object as, the literal keys of
    `available`. 8 fast devices, 8 slow ones, a global batch of 4: a fast 8-device replica runs
    3 sequences in 1 s or 1 in 1 s, a slow one 4 in 5 s. Only one fast replica fits on 8
    devices, and neither 3 nor 1 is 4 (nor can a slow replica of 4 be topped up), so by hand the
    only placement is one slow replica: 5 s (two fast replicas, 3 + 1 in 1 s, need 16 devices)."""
    fast = "".join(["fa", "st"])
    opts = [ilp.ReplicaOption(fast, 8, 3, 1.0), ilp.ReplicaOption(fast, 8, 1, 1.0),
            ilp.ReplicaOption("".join(["sl", "ow"]), 8, 4, 5.0)]
    sol = ilp.hetero_replica_ilp(opts, {"fast": 8, "slow": 8}, 4)
    assert sol.solver.optimal and sol.replicas == {2: 1} and sol.compute_step_s == pytest.approx(5.0)


def test_full_recompute_reserves_the_largest_layers_working_set_on_a_dense_only_stage():
    """Full recompute (Korthikanti et al. 2022) keeps one layer's full activations (its recompute
    =none working set) while recomputing it; simulator.memory.stage_memory takes it at the
    stage's own largest layer. The ILP may move any layer to any stage, so it reserves the working
    set of the model's largest layer on every stage (partition_problem's docstring), scaled by
    the fragmentation factor φ = 1 + FRAGMENTATION like every activation: at the uniform
    partition a stage of dense layers only pays φ·(MoE working set − dense working set) beyond
    the engine's peak, and a stage holding an MoE layer pays nothing more. Qwen3-30B-A3B with its
    first 12 of 48 layers dense, pp = 4: stage 0 holds exactly the dense layers."""
    from simulator.memory import FRAGMENTATION, layer_activation_bytes, stage_memory
    from simulator.training import TrainingPlan
    m, job, plan, pb, start, edges = _dense_first_qwen3_problem("recompute=full")
    none = TrainingPlan(**{**plan.to_dict(), "recompute": "none"})
    gap = layer_activation_bytes(m, job, none, True) - layer_activation_bytes(m, job, none, False)
    assert start == [12] * 4 and gap > 1e6
    for s in range(4):
        extra = (1 + FRAGMENTATION) * gap if s == 0 else 0.0
        assert pb.stage_bytes(edges, s) - stage_memory(m, job, plan, s)["peak_bytes"] == pytest.approx(extra, abs=0.5)
