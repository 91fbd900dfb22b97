"""The plan search (planner/search.py), its ILPs (planner/ilp.py) and `clusterplan plan train`."""
from __future__ import annotations

import csv
import itertools
import json
import random

import pytest

from hwmodels.clusters import load_cluster
from hwmodels.collectives import collective_s
from hwmodels.errors import InputError
from planner import ilp
from ui.cli import main
from planner.search import (COLUMNS, FIX_KEYS, SCHED, Objective, _Enumerator, _normalise_fix, parse_fix,
                            plan_heterogeneous, plan_of, schedule_domain, search, short_plan, space_size)
from simulator import schedules
from simulator.analytic import estimate
from simulator.memory import stage_memory
from simulator.models import from_hf_config, load_model, megatron_gpt
from simulator.ops import check_supported
from simulator.training import RECOMPUTE, TrainingJob, TrainingPlan, parse_plan, validate_plan
from validation.published import TABLE1, megatron_table1

# A small MoE model with dense and MoE layers mixed (first layer dense, then every other layer MoE).
MIXED_MOE = from_hf_config({"num_hidden_layers": 8, "hidden_size": 1024, "num_attention_heads": 16,
                            "num_key_value_heads": 4, "intermediate_size": 2816, "vocab_size": 32000,
                            "num_local_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 1408,
                            "first_k_dense_replace": 1, "moe_layer_freq": 2}, name="mixed-moe")


def run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# ---- the search scores with the engine: what it keeps fits, what it drops does not ---------------

CASES = [  # model, cluster, nodes, seq, batch, job options, fix
    ("llama3-8b", "dgx-h100", 4, 8192, 64, {}, {}),
    ("gpt3-6.7b", "dgx-a100", 2, 2048, 64, {"dtype": "fp16", "flash_attention": False,
                                            "overlap_grad_reduce": False, "overlap_param_gather": False}, {}),
    ("mixtral-8x7b", "dgx-h100", 4, 4096, 128, {}, {}),
    (MIXED_MOE, "dgx-a100", 2, 4096, 64, {}, {}),
    ("llama3-8b", "dgx-a100", 1, 4096, 32, {}, {"offload": True}),
    ("llama2-13b", "dgx-h100", 4, 4096, 64, {"dtype": "fp8", "overlap_tp_comm": True,
                                             "overlap_p2p_comm": True}, {}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0] if isinstance(c[0], str) else c[0].name)
def test_scored_plans_fit_pruned_plans_do_not_and_the_best_is_the_fastest(case):
    """Memory pruning drops exactly the plans whose peak stage exceeds HBM; every kept plan
    fits; the table's fastest plan is the search's #1 with estimate()'s step time."""
    name, cl, nodes, seq, batch, kw, fix = case
    model = load_model(name) if isinstance(name, str) else name
    job = TrainingJob(model, seq_len=seq, global_batch=batch, **kw)
    cluster = load_cluster(cl, nodes=nodes)
    hbm = cluster.device.hbm_bytes
    e = _Enumerator(job, cluster, _normalise_fix(fix), with_offload=True, keep_unfit=50)
    t = e.run()
    assert len(t["step_s"]) > 100 and (t["peak_bytes"] <= hbm).all()
    rng = random.Random(5)
    scheds = set()
    for i in rng.sample(range(len(t["step_s"])), 10):
        plan = plan_of({k: t[k][i] for k in COLUMNS})
        scheds.add(plan.schedule)
        est = estimate(job, plan, cluster)
        assert est.fits and est.step_time_s > 0
    assert len(scheds) >= 2
    for plan, peak in e.unfit[:20]:  # memory-pruned plans really do not fit
        worst = max(stage_memory(model, job, plan, s)["peak_bytes"] for s in range(plan.pp))
        assert worst > hbm and not estimate(job, plan, cluster).fits
    res = search(job, cluster, fix=fix, top=1, partition=0)
    best = res.plans[0]
    assert best["step_time_s"] == float(res.table["step_s"].min())
    assert best["step_time_s"] == estimate(job, TrainingPlan(**best["plan"]), cluster).step_time_s


def test_a_schedule_registered_in_simulator_schedules_alone_is_searched(monkeypatch):
    """The planner enumerates `simulator.schedules.SCHEDULES`: a new class there joins the
    search, with its own vpp domain, and ranks by the engine's closed forms for it."""
    from simulator import schedules

    class HalfBubble(schedules.OneFOneB):
        name = "half-bubble"

        def bubble_s(self, p, v, m, tot, fwd, wgrad):
            return 0.5 * super().bubble_s(p, v, m, tot, fwd, wgrad)

    monkeypatch.setitem(schedules.SCHEDULES, "half-bubble", HalfBubble())
    job = TrainingJob(load_model("llama3-8b"), seq_len=4096, global_batch=64)
    c = load_cluster("dgx-h100", nodes=2)
    res = search(job, c, fix="tp=2,pp=4,mb=1,recompute=selective,sp=on,zero=1", top=40, group="none",
                 partition=0)
    ranked = [p["plan"]["schedule"] for p in res.plans]
    assert "half-bubble" in ranked and ranked.index("half-bubble") < ranked.index("1f1b")
    half = [p for p in res.plans if p["plan"]["schedule"] == "half-bubble"][0]
    one = estimate(job, TrainingPlan(**{**half["plan"], "schedule": "1f1b"}), c)
    assert half["breakdown_s"]["pp_bubble"] == pytest.approx(0.5 * one.breakdown_s["pp_bubble"], rel=1e-12)
    assert half["breakdown_s"]["compute"] == one.breakdown_s["compute"]


def test_fsdp_and_single_stage_schedules_are_the_duplicates_the_rules_say():
    job = TrainingJob(load_model("llama3-8b"), seq_len=4096, global_batch=64)
    c = load_cluster("dgx-h100", nodes=2)
    base = parse_plan("tp=2,pp=1,mb=1,zero=3,recompute=selective,sp=on", c.num_devices)
    same = [TrainingPlan(**{**base.to_dict(), "fsdp": True})]
    same += [TrainingPlan(**{**base.to_dict(), "schedule": s}) for s in ("zb-h1", "zb-h2")]
    ref = estimate(job, base, c)
    for p in same:
        e = estimate(job, p, c)
        assert e.step_time_s == ref.step_time_s and e.memory["peak_bytes"] == ref.memory["peak_bytes"]
    pp2 = parse_plan("tp=2,pp=2,mb=1,recompute=selective,sp=on", c.num_devices)
    g = estimate(job, TrainingPlan(**{**pp2.to_dict(), "schedule": "gpipe"}), c)
    f = estimate(job, pp2, c)
    assert g.step_time_s == f.step_time_s and g.memory["peak_bytes"] >= f.memory["peak_bytes"]


# ---- the candidate space and its accounting ------------------------------------------------------

def _divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


@pytest.mark.parametrize("model", [MIXED_MOE, megatron_gpt("gpt-tiny", 6, 768, 12)], ids=["moe", "dense"])
def test_every_candidate_lands_in_one_bucket_and_validity_matches_validate_plan(model):
    """Brute force over the whole space of a small case: the candidates that validate_plan,
    check_supported and the topology accept are exactly those the enumerator does not count as
    divisibility-pruned, and the buckets add up to the space."""
    job = TrainingJob(model, seq_len=1024, global_batch=16)
    c = load_cluster("dgx-a100", nodes=1)
    N, L = c.num_devices, model.num_layers
    e = _Enumerator(job, c, {}, with_offload=True)
    e.run()
    k = e.counts
    assert k.space == space_size(job, c)
    assert k.divisibility + k.duplicate + k.dominated + k.heuristic + k.memory + k.scored == k.space
    valid = total = 0
    for tp, pp, cp in itertools.product(_divisors(N), repeat=3):
        if N % (tp * pp * cp):
            continue
        dp = N // (tp * pp * cp)
        sched = [(s, v, split) for s in SCHED for v, split in schedule_domain(L, s, pp)]
        for ep, mb, (s, v, split), rc, sp, z, off in itertools.product(
                _divisors(model.num_experts) if model.is_moe else [1], _divisors(16), sched, RECOMPUTE,
                (False, True), (0, 1, 2, 3, "fsdp"), (False, True)):
            total += 1
            plan = TrainingPlan(dp=dp, tp=tp, pp=pp, cp=cp, ep=ep, sp=sp, zero=3 if z == "fsdp" else z,
                                fsdp=z == "fsdp", mb=mb, vpp=v, recompute=rc, schedule=s, offload=off,
                                first=split[0], last=split[1], pp_embed=split[2], pp_loss=split[3])
            try:
                validate_plan(plan, job, N, c.devices_per_node)
                check_supported(model, plan)
                for size, stride in ((tp, 1), (cp, tp), (ep, 1)):  # EP folded: stride etp = 1
                    if size > 1:
                        collective_s(c, "all_to_all", size, stride, 1.0)
            except InputError:
                continue
            valid += 1
    assert total == k.space
    assert valid == k.space - k.divisibility
    assert k.scored > 0 and k.memory >= 0


def test_fix_restricts_the_search_and_alternatives_work():
    job = TrainingJob(load_model("llama3-8b"), seq_len=4096, global_batch=64)
    c = load_cluster("dgx-h100", nodes=4)
    full = search(job, c, top=3, partition=0)
    res = search(job, c, fix="tp=8,pp=2,schedule=1f1b|zb-h1", top=50, group="none", partition=0)
    assert res.candidates < full.candidates
    assert set(res.table["tp"]) == {8} and set(res.table["pp"]) == {2}
    assert {SCHED[s] for s in res.table["sched"]} <= {"1f1b", "zb-h1"}
    assert all(p["plan"]["tp"] == 8 and p["plan"]["pp"] == 2 for p in res.plans)
    assert parse_fix("schedule=zb|1f1b, tp=4") == {"schedule": ("zb-h1", "1f1b"), "tp": (4,)}
    with pytest.raises(InputError, match="not a plan key"):
        parse_fix("tpp=8")
    assert set(FIX_KEYS) >= {"dp", "tp", "pp", "cp", "ep", "mb", "vpp", "zero", "recompute", "schedule"}


def test_ranked_plans_are_estimates_with_rank_why_and_one_per_mesh():
    job = TrainingJob(load_model("llama3-8b"), seq_len=4096, global_batch=64)
    c = load_cluster("dgx-h100", nodes=4)
    res = search(job, c, top=6)
    steps = [p["step_time_s"] for p in res.plans]
    assert steps == sorted(steps) and [p["rank"] for p in res.plans] == list(range(1, 7))
    assert steps[0] == pytest.approx(float(res.table["step_s"].min()), rel=1e-9)
    meshes = {(p["plan"]["dp"], p["plan"]["tp"], p["plan"]["pp"], p["plan"]["cp"]) for p in res.plans}
    assert len(meshes) == 6
    for p in res.plans:
        est = estimate(job, parse_plan(p["plan_short"]), c)
        assert est.step_time_s == p["step_time_s"] and p["fits"]
        assert p["why"] and ("GiB" in p["why"]) and (p["rank"] == 1 or "vs #1" in p["why"])


def test_pareto_front_is_not_dominated_and_holds_the_fastest_plan():
    job = TrainingJob(load_model("llama3-8b"), seq_len=4096, global_batch=64)
    c = load_cluster("dgx-h100", nodes=4)
    res = search(job, c, top=3, partition=0)
    t = res.table
    head = c.device.hbm_bytes - t["peak_bytes"]
    assert res.pareto[0]["step_time_s"] == pytest.approx(float(t["step_s"].min()))
    for q in res.pareto:
        dominated = (t["step_s"] <= q["step_time_s"]) & (head >= q["memory_headroom_bytes"]) & (
            (t["step_s"] < q["step_time_s"]) | (head > q["memory_headroom_bytes"]))
        assert not dominated.any()
        assert q["cost_per_step_usd"] == pytest.approx(c.device.price_per_hour * q["num_devices"]
                                                       * q["step_time_s"] / 3600)


def test_cost_objective_may_use_fewer_nodes_and_budget_binds_time_to_train():
    job = TrainingJob(load_model("llama3-8b"), seq_len=4096, global_batch=64)
    c = load_cluster("dgx-h100", nodes=4)
    cost = search(job, c, top=5, objective=Objective("cost", tokens=1e11), partition=0)
    assert set(cost.table["nodes"]) == {1, 2, 4}
    usd = [p["cost_usd"] for p in cost.plans]
    assert usd == sorted(usd)
    fastest = search(job, c, top=1, objective=Objective("time-to-train", tokens=1e11), partition=0).plans[0]
    budget = 0.5 * (fastest["cost_usd"] + usd[0])
    cheap = search(job, c, top=3, objective=Objective("time-to-train", tokens=1e11, budget_usd=budget),
                   partition=0)
    assert all(p["cost_usd"] <= budget for p in cheap.plans)
    with pytest.raises(InputError, match="a100-sxm-40g"):
        search(job, load_cluster("dgx-a100-40g", nodes=1), objective=Objective("cost"))
    with pytest.raises(InputError, match="--tokens"):
        Objective("time-to-train")


# ---- Megatron-LM 2021 Table 1 -------------------------------------------------------------------

# The software Megatron-LM had in 2021: no context or sequence parallelism, no distributed
# optimizer, no zero-bubble schedules, no selective recompute, no offload.
MEGATRON_2021 = {"cp": [1], "sp": [False], "zero": [0], "fsdp": [False], "offload": [False],
                 "schedule": ["1f1b", "interleaved"], "recompute": ["none", "full"]}


def test_megatron_table1_best_plan_beats_published_and_published_family_ranks_top10():
    """For each Table 1 row (job built as validation/published.py builds it): the planner's best
    plan predicts at least the throughput of the published (tp, pp) at its best mb/vpp; and among
    plan families (tp, pp) — each family ranked by its best plan — the published family is in the
    top 10 when the search is held to what Megatron-LM 2021 could run."""
    pub = megatron_table1()["cases"]
    with open(TABLE1) as f:
        rows = list(csv.DictReader(f))
    for r, case in zip(rows, pub):
        h, L, a = int(r["hidden_size"]), int(r["num_layers"]), int(r["attention_heads"])
        tp, pp, gpus = int(r["tensor_parallel"]), int(r["pipeline_parallel"]), int(r["num_gpus"])
        s, B = int(r["seq_len"]), int(r["global_batch_size"])
        model = megatron_gpt(f"gpt-{r['params_billion']}b", L, h, a, vocab_size=int(r["vocab_size"]), seq_len=s)
        job = TrainingJob(model=model, seq_len=s, global_batch=B, dtype="fp16", flash_attention=False,
                          overlap_grad_reduce=False, overlap_param_gather=False, dropout=True)
        cl = load_cluster("dgx-a100", nodes=gpus // 8)
        res = search(job, cl, top=1, partition=0)
        published_tps = job.tokens_per_step / case["step_time_s"]
        assert res.plans[0]["tokens_per_s"] >= published_tps * (1 - 1e-9), r["params_billion"]
        # the 2021 subspace of the same search: the rules that prune (gpipe, fsdp, zb when pp=1,
        # tp wider than a node, offload) prune nothing a 2021 plan needs
        fams = [k for k, _ in res.family_ranking(("tp", "pp"), where=MEGATRON_2021)]
        assert (tp, pp) in fams[:10], (r["params_billion"], fams.index((tp, pp)) + 1 if (tp, pp) in fams else None)


# ---- ILP: layer partition -----------------------------------------------------------------------

def _random_partition_problem(rng: random.Random, identical: bool = False) -> ilp.PartitionProblem:
    L, p, v = rng.randint(4, 10), rng.randint(2, 4), rng.choice([1, 1, 2])
    if p * v > L:
        v = 1
    if identical:  # a dense model: every layer the same
        t, w, a = [rng.uniform(0.8, 1.2)] * L, [rng.uniform(0.5, 1.5)] * L, [rng.uniform(0.2, 1.0)] * L
    else:  # MoE layers (slower, more memory) mixed with dense ones
        kinds = [rng.random() < 0.4 for _ in range(L)]
        t = [(2.0 if k else 1.0) * rng.uniform(0.8, 1.2) for k in kinds]
        w = [(3.0 if k else 1.0) * rng.uniform(0.5, 1.5) for k in kinds]
        a = [rng.uniform(0.2, 1.0) for _ in range(L)]
    inflight = [float(p - s) for s in range(p)]
    extra = [rng.uniform(0, 0.5)] + [0.0] * (p - 2) + [rng.uniform(0.5, 2.5)] if p > 1 else [1.0]
    fixed = [rng.uniform(0.5, 2.0) for _ in range(p)]
    cap = sum(w) / p * rng.uniform(0.9, 2.5) + 3.0
    return ilp.PartitionProblem(t, w, a, inflight, extra, fixed, cap, chunks_per_stage=v,
                                micro_batches=rng.randint(p, 4 * p))


@pytest.mark.parametrize("identical", [False, True], ids=["mixed-layers", "identical-layers"])
def test_partition_ilp_equals_brute_force_on_random_instances(identical):
    rng = random.Random(7)
    feasible = infeasible = chunked = 0
    for _ in range(16):
        pb = _random_partition_problem(rng, identical)
        brute = ilp.partition_brute_force(pb)
        res = ilp.partition_ilp(pb, time_limit_s=10, gap=0.0)
        assert res.solver.status  # CBC ran and reported
        if brute is None:
            assert res.layers_per_chunk is None and not res.solver.feasible
            infeasible += 1
            continue
        feasible += 1
        assert res.solver.optimal, res.solver
        assert res.objective == pytest.approx(brute[0], rel=1e-7)
        assert sum(res.layers_per_chunk) == len(pb.layer_time_s) and min(res.layers_per_chunk) >= 1
        assert len(res.layers_per_chunk) == pb.chunks
        chunked += pb.chunks_per_stage > 1
        assert all(m <= pb.capacity_bytes * (1 + 1e-9) for m in res.stage_bytes)
    assert feasible >= 8 and infeasible >= 2 and chunked >= 2


def test_partition_for_plan_moves_layers_off_the_lm_head_stage():
    job = TrainingJob(load_model("llama3-8b"), seq_len=4096, global_batch=64)  # 128k vocab head
    c = load_cluster("dgx-h100", nodes=4)
    plan = parse_plan("tp=2,pp=4,mb=1,recompute=selective,sp=on,schedule=1f1b", c.num_devices)
    res = ilp.partition_for_plan(job, plan, c, time_limit_s=5, gap=0.0)
    assert res.solver.optimal and sum(res.layers_per_stage) == 32
    assert res.layers_per_stage[-1] < 8 and res.bottleneck_s < res.uniform_bottleneck_s
    assert res.predicted_step_time_s < estimate(job, plan, c).step_time_s
    for text in ("tp=2,pp=4,mb=1,recompute=selective,sp=on,schedule=1f1b",
                 "tp=2,pp=4,vpp=2,mb=1,recompute=full,sp=on,schedule=interleaved"):
        plan = parse_plan(text, c.num_devices)  # the stage times and memory the ILP sees are the engine's
        pb, start = ilp.partition_problem(job, plan, c)
        est = estimate(job, plan, c)
        edges = list(range(0, 33, 32 // (4 * plan.vpp)))
        assert [pb.stage_time(edges, s) for s in range(4)] == pytest.approx(est.stage_times_s, rel=1e-9)
        assert max(pb.stage_bytes(edges, s) for s in range(4)) == pytest.approx(est.memory["peak_bytes"], rel=1e-9)


# ---- ILP: heterogeneous device groups -----------------------------------------------------------

def test_heterogeneous_plan_beats_equal_shares_on_the_same_devices():
    job = TrainingJob(load_model("llama3-8b"), seq_len=2048, global_batch=32)
    groups = [load_cluster("dgx-h100", nodes=2), load_cluster("dgx-a100", nodes=2)]
    res = plan_heterogeneous(job, groups)
    assert res.solver["optimal"] and res.baseline is not None
    assert res.tokens_per_s > 1.15 * res.baseline["tokens_per_s"]
    share = {r["group"]: r["batch_per_replica"] for r in res.replicas}
    assert sum(r["replicas"] * r["batch_per_replica"] for r in res.replicas) == 32
    assert share.get("dgx-h100", 0) > share.get("dgx-a100", 0)
    for r in res.replicas:  # each replica's time is the engine's for its share
        g = next(x for x in groups if x.name == r["group"])
        sub = TrainingJob(**{**job.__dict__, "global_batch": r["batch_per_replica"]})
        est = estimate(sub, parse_plan(r["plan"]), g.with_nodes(1))
        assert est.step_time_s == pytest.approx(r["replica_step_s"], rel=1e-9)
        assert res.step_time_s >= r["replica_step_s"]


def test_hetero_replica_ilp_math():
    opts = [ilp.ReplicaOption("fast", 8, 3, 1.0), ilp.ReplicaOption("slow", 8, 1, 1.0),
            ilp.ReplicaOption("slow", 8, 2, 2.5)]
    sol = ilp.hetero_replica_ilp(opts, {"fast": 16, "slow": 16}, 8)
    assert sol.solver.optimal and sol.compute_step_s == 1.0
    assert sol.replicas == {0: 2, 1: 2}  # 2×3 + 2×1 = 8 sequences in 1 s
    bad = ilp.hetero_replica_ilp(opts, {"fast": 8, "slow": 8}, 100)
    assert not bad.solver.feasible and bad.compute_step_s is None


# ---- CLI ---------------------------------------------------------------------------------------

PLAN = ["plan", "train", "--model", "llama3-8b", "--cluster", "dgx-h100", "--nodes", "4", "--seq-len", "4096",
        "--global-batch", "64"]


def test_cli_plan_train_json(capsys):
    code, out, err = run(capsys, PLAN + ["--top", "4", "--fix", "pp=2", "--json"])
    assert code == 0 and err == ""
    d = json.loads(out)
    for key in ("plans", "candidates", "search_time_s", "pruned", "solver", "pareto"):
        assert key in d
    for key in ("status", "optimal", "time_limit_s", "gap"):
        assert key in d["solver"]
    assert d["solver"]["optimal"] is True and d["solver"]["solves"] >= 1
    assert {"divisibility", "memory", "scored"} <= set(d["pruned"])
    assert len(d["plans"]) == 4 and d["candidates"] > 1000
    for i, p in enumerate(d["plans"]):
        assert p["rank"] == i + 1 and p["why"] and p["plan"]["pp"] == 2
        for key in ("plan", "step_time_s", "tokens_per_s", "tflops_per_device", "mfu", "fits", "memory",
                    "breakdown_s"):
            assert key in p
    assert "partition" in d["plans"][0]


def test_cli_plan_train_table(capsys):
    code, out, err = run(capsys, PLAN + ["--top", "3"])
    assert code == 0 and err == ""
    for label in ("candidates", "plan", "step s", "tokens/s", "TFLOP/s/dev", "MFU %", "mem GiB",
                  "dominant term", "why:", "#1"):
        assert label in out


@pytest.mark.parametrize("argv, words", [
    (PLAN + ["--objective", "speed"], ["objective", "speed"]),
    (PLAN + ["--fix", "tpp=8"], ["tpp", "valid"]),
    (PLAN + ["--fix", "tp=3"], ["tp", "divide"]),
    (["plan", "train", "--model", "llama3-405b", "--cluster", "dgx-a100", "--nodes", "1", "--seq-len", "8192",
      "--global-batch", "16"], ["fits in memory", "GiB"]),
    (PLAN + ["--objective", "time-to-train"], ["--tokens"]),
    (PLAN + ["--deadline", "1d"], ["--tokens"]),
    (PLAN + ["--tokens", "1T", "--deadline", "1h"], ["deadline", "fastest"]),
    (["plan", "train", "--model", "llama3-8b", "--cluster", "dgx-a100-40g", "--seq-len", "4096",
      "--global-batch", "64", "--objective", "cost"], ["a100-sxm-40g", "price"]),
    (PLAN + ["--tokens", "lots"], ["tokens"]),
])
def test_cli_plan_errors_are_one_line_exit_2(capsys, argv, words):
    code, out, err = run(capsys, argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("clusterplan: error:")
    for w in words:
        assert w in err


def test_short_plan_round_trips():
    for text in ("dp=2,tp=4,pp=2,cp=2,mb=2,vpp=2,zero=1,recompute=full,schedule=interleaved,sp=on",
                 "dp=8,tp=1,pp=1,mb=1,fsdp=on,recompute=none,schedule=1f1b,offload=on"):
        p = parse_plan(text)
        assert parse_plan(short_plan(p)) == p


def test_des_verification_of_the_top_plans():
    job = TrainingJob(load_model("llama2-13b"), seq_len=4096, global_batch=64)
    cluster = load_cluster("dgx-a100", nodes=4)
    res = search(job, cluster, fix="pp=2|4", top=6, verify=3)
    verified = [p for p in res.plans if p["engine"] == "des"]
    assert len(verified) == 3 and res.plans[:3] == verified
    assert [p["step_time_s"] for p in verified] == sorted(p["step_time_s"] for p in verified)
    assert all(abs(p["des_vs_analytic_pct"]) < 3 for p in verified)
    assert all(p["engine"] == "analytic" for p in res.plans[3:])
    assert [p["rank"] for p in res.plans] == list(range(1, len(res.plans) + 1))
    assert any("discrete-event" in n for n in res.notes)


def test_partition_of_a_mixed_dense_moe_model_is_a_real_partition():
    """DeepSeek-V3 (3 dense + 58 MoE layers) at pp=16: CBC, warm-started with the planner's split,
    can stop at the root and hand back the LP relaxation's fractional boundaries as "optimal"
    (they read as chunks of -16 layers). The partition must be integral: every chunk holds at least
    one layer, the chunks hold the model's 61 layers, and the objective is no better than the
    uniform split's slowest stage could allow (the LP bound is not a partition)."""
    from planner.ilp import partition_for_plan, partition_layout
    from simulator.training import chunk_layers
    job = TrainingJob(load_model("deepseek-v3"), 4096, 4096)
    cl = load_cluster("dgx-h100", nodes=256)
    base = "dp=64,tp=1,pp=16,cp=2,ep=4,mb=1,zero=2,recompute=none,schedule=zb-h1"
    res = partition_for_plan(job, parse_plan(base + ",first=2,last=3", cl.num_devices), cl)
    assert res.solver.feasible and res.layers_per_chunk is not None
    assert min(res.layers_per_chunk) >= 1 and sum(res.layers_per_chunk) == 61
    assert res.bottleneck_s == max(res.stage_time_s)
    # the suggested partition runs as a plan: its layout string places exactly these layers
    lay = partition_layout(res.layers_per_chunk)
    plan = parse_plan(f"{base},layout={lay}", cl.num_devices)
    assert list(chunk_layers(61, plan.schedule, plan.pp, plan.vpp, plan.split)) == res.layers_per_chunk
    assert any(f"layout={lay}" in n for n in res.notes)


def test_partition_problem_memory_is_the_engines_for_a_folded_expert_mesh():
    """With MoE parallel folding (ep over tp·dp, and etp), the ILP's per-layer memory must be the
    engine's: expert states sharded over EDP = tp·cp·dp/(ep·etp), experts/ep split etp ways. A
    partition that moves layers (20 | 28 of Qwen3-30B's 48) must cost what the engine says that
    uneven plan (first=20,last=28) holds."""
    job = TrainingJob(load_model("qwen3-30b-a3b"), seq_len=4096, global_batch=64, dtype="bf16")
    c = load_cluster("dgx-h100", nodes=2)
    for text in ("tp=2,pp=2,ep=4,mb=1,sp=on", "tp=2,pp=2,ep=2,etp=2,mb=1,sp=on"):  # dp=4: EDP 2, not dp/ep
        plan = parse_plan(text, c.num_devices)
        pb, _ = ilp.partition_problem(job, plan, c)
        uneven = estimate(job, parse_plan(text + ",first=20,last=28", c.num_devices), c)
        assert max(pb.stage_bytes([0, 20, 48], s) for s in range(2)) == pytest.approx(
            uneven.memory["peak_bytes"], rel=1e-6)
