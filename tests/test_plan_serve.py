"""`plan serve` (issue #7): the fleet ILP against brute force, mixed vs single-type fleets,
the CLI contract (JSON shape, one-line errors with exit 2)."""
from __future__ import annotations

import json
import random

import pytest

from ui.cli import main
from planner.serve_search import Option, fleet_brute_force, fleet_ilp, parse_devices
from hwmodels.errors import InputError

# A: fast, dear per device; B: slow, cheap per device
A = Option("a/tp1", "a", 1, 10.0, 2.0)  # $0.20 per req/s-hour
B = Option("b/tp1", "b", 1, 3.0, 1.0)   # $0.33 per req/s-hour


def test_mixed_fleet_cheaper_than_any_single_type():
    avail = {"a": 8, "b": 8}
    mixed = fleet_ilp([A, B], 13.0, avail)
    only_a = fleet_ilp([A], 13.0, avail)
    only_b = fleet_ilp([B], 13.0, avail)
    assert mixed.counts == {"a/tp1": 1, "b/tp1": 1}
    assert mixed.cost_per_hour == pytest.approx(3.0)
    assert only_a.cost_per_hour == pytest.approx(4.0) and only_b.cost_per_hour == pytest.approx(5.0)
    assert mixed.cost_per_hour < min(only_a.cost_per_hour, only_b.cost_per_hour)
    assert mixed.optimal and mixed.status == "Optimal"


def test_single_type_wins():
    sol = fleet_ilp([A, B], 20.0, {"a": 8, "b": 8})
    assert sol.counts == {"a/tp1": 2}
    assert sol.cost_per_hour == pytest.approx(4.0)


def test_device_limit_forces_mix_and_infeasible_returns_none():
    sol = fleet_ilp([A, B], 25.0, {"a": 2, "b": 8})  # 2 A give 20; the rest from B
    assert sol.counts == {"a/tp1": 2, "b/tp1": 2}
    assert fleet_ilp([A, B], 100.0, {"a": 2, "b": 8}) is None
    assert fleet_brute_force([A, B], 100.0, {"a": 2, "b": 8}) is None


def test_ilp_equals_brute_force_on_random_instances():
    rng = random.Random(7)
    for trial in range(25):
        groups = {"g0": rng.randint(1, 8), "g1": rng.randint(1, 8)}
        opts = []
        for g in groups:
            price = rng.uniform(0.5, 5.0)
            for tp in (1, 2, 4):
                if rng.random() < 0.8:
                    opts.append(Option(f"{g}/tp{tp}", g, tp, rng.uniform(0.0, 12.0) * tp ** rng.uniform(0.7, 1.2), price))
        need = rng.uniform(1.0, 60.0)
        ilp = fleet_ilp(opts, need, groups)
        brute = fleet_brute_force(opts, need, groups)
        assert (ilp is None) == (brute is None), trial
        if ilp is not None:
            assert ilp.cost_per_hour == pytest.approx(brute.cost_per_hour, rel=1e-6, abs=1e-6), trial
            assert ilp.capacity >= need - 1e-6
            used = {}
            for o in opts:
                used[o.group] = used.get(o.group, 0) + o.devices * ilp.counts.get(o.name, 0)
            assert all(used[g] <= groups[g] for g in used)


def test_parse_devices():
    pool = parse_devices("h100-sxm:16, a100-sxm-80g:32")
    assert [(e.device, e.count) for e in pool] == [("h100-sxm", 16), ("a100-sxm-80g", 32)]
    assert pool[0].price_per_hour == pytest.approx(2.49)
    assert parse_devices("l40s:4:0.9")[0].price_per_hour == pytest.approx(0.9)
    for bad in ("", "h100-sxm", "h100-sxm:x", "h100-sxm:0", "nope:4", "h100-sxm:1,h100-sxm:2",
                "l40s:4", "h100-sxm:4:-1"):
        with pytest.raises(InputError):
            parse_devices(bad)


def _run(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


BASE = ["plan", "serve", "--model", "llama3.1-8b", "--prompt-len", "uniform:128:1024",
        "--output-len", "128", "--requests", "200"]


@pytest.mark.parametrize("devices", ["h100-sxm", "h100-sxm:abc", "nosuchgpu:8", "l40s:4", "h100-sxm:4:zero"])
def test_bad_devices_exit_2_one_line(capsys, devices):
    rc, out, err = _run(capsys, BASE + ["--devices", devices, "--rate", "5", "--slo-ttft", "2s",
                                        "--slo-tpot", "50ms"])
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("clusterplan: error:")


def test_ttft_slo_below_any_prefill_exit_2(capsys):
    rc, out, err = _run(capsys, BASE + ["--devices", "h100-sxm:2", "--rate", "5", "--slo-ttft", "1ms",
                                        "--slo-tpot", "50ms"])
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert "SLO TTFT 1ms is below the fastest single-request" in err


def test_not_enough_devices_exit_2(capsys):
    rc, out, err = _run(capsys, BASE + ["--devices", "h100-sxm:1", "--rate", "1000", "--slo-ttft", "2s",
                                        "--slo-tpot", "50ms"])
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert "not enough h100-sxm: need >=" in err and "have 1" in err


def test_end_to_end_json(capsys):
    rc, out, err = _run(capsys, BASE + ["--devices", "h100-sxm:1,a100-sxm-80g:4", "--rate", "30",
                                        "--slo-ttft", "2s", "--slo-tpot", "60ms", "--json"])
    assert rc == 0, err
    d = json.loads(out)
    assert d["solver_status"] == "Optimal" and d["search_time_s"] > 0
    best = d["fleets"][0]
    for k in ("cost_per_hour", "replicas", "ttft_s", "tpot_s", "tokens_per_s_per_device",
              "slo_attainment", "headroom"):
        assert k in best
    assert best["meets_slo"] and best["headroom"] >= 0
    assert best["predicted"]["ttft_s"] <= 2.0 and best["predicted"]["tpot_s"] <= 0.06
    used = {}
    for r in best["replicas"]:
        assert set(r) == {"device", "tp", "role", "count", "rate_per_replica"}
        used[r["device"]] = used.get(r["device"], 0) + r["tp"] * r["count"]
    assert used.get("h100-sxm", 0) <= 1 and used.get("a100-sxm-80g", 0) <= 4
    costs = [f["cost_per_hour"] for f in d["fleets"] if f["meets_slo"]]
    assert costs[0] == min(costs)
    # text output of the same search (capacities are cached)
    rc, out, _ = _run(capsys, BASE + ["--devices", "h100-sxm:1,a100-sxm-80g:4", "--rate", "30",
                                      "--slo-ttft", "2s", "--slo-tpot", "60ms"])
    assert rc == 0 and "req/s per replica" in out and "met" in out


# ---- prefill/decode disaggregation -----------------------------------------------------------

P = Option("a/tp1/prefill", "a", 1, 4.0, 2.0, "prefill", link=10e9)
P2 = Option("b/tp2/prefill", "b", 2, 9.0, 1.0, "prefill", link=20e9)
D = Option("a/tp1/decode", "a", 1, 6.0, 2.0, "decode", link=10e9)
D2 = Option("b/tp2/decode", "b", 2, 7.0, 1.0, "decode", link=20e9)


def test_disaggregated_ilp_covers_both_pools():
    sol = fleet_ilp([P, D], {"prefill": 10.0, "decode": 10.0}, {"a": 16})
    assert sol.counts == {"a/tp1/prefill": 3, "a/tp1/decode": 2}  # ceil(10/4), ceil(10/6)
    assert sol.capacities == {"prefill": 12.0, "decode": 12.0} and sol.capacity == 12.0
    assert sol.cost_per_hour == pytest.approx(10.0)
    assert fleet_ilp([P, D], {"prefill": 10.0, "decode": 10.0}, {"a": 4}) is None  # needs 5 devices
    assert fleet_ilp([P], {"prefill": 1.0, "decode": 1.0}, {"a": 4}) is None  # no decode option


def test_kv_link_constraint_binds():
    """12 GB/s of KV must leave the prefill pool: 3 prefill replicas carry only 30 GB/s... enough;
    at 45 GB/s a fourth prefill replica is needed although 3 cover the rate."""
    need = {"prefill": 10.0, "decode": 10.0}
    assert fleet_ilp([P, D], need, {"a": 16}, kv_bytes_per_s=30e9).counts["a/tp1/prefill"] == 3
    sol = fleet_ilp([P, D], need, {"a": 16}, kv_bytes_per_s=45e9)
    assert sol.counts["a/tp1/prefill"] == 5 and sol.counts["a/tp1/decode"] == 5  # both links bind
    assert fleet_ilp([P, D], need, {"a": 8}, kv_bytes_per_s=45e9) is None


def test_disaggregated_ilp_equals_brute_force_on_random_instances():
    rng = random.Random(11)
    for _ in range(40):
        opts, avail = [], {}
        for g in ("a", "b"):
            avail[g] = rng.randint(1, 6)
            price = rng.uniform(0.5, 3.0)
            for tp in (1, 2):
                for role in ("prefill", "decode"):
                    opts.append(Option(f"{g}/tp{tp}/{role}", g, tp, rng.uniform(0.5, 8.0) * tp, price, role,
                                       link=rng.uniform(5e9, 25e9) * tp))
        need = {"prefill": rng.uniform(1.0, 15.0), "decode": rng.uniform(1.0, 15.0)}
        kv = rng.choice([0.0, rng.uniform(1e9, 60e9)])
        ilp = fleet_ilp(opts, need, avail, kv_bytes_per_s=kv)
        brute = fleet_brute_force(opts, need, avail, kv_bytes_per_s=kv)
        assert (ilp is None) == (brute is None)
        if ilp is not None:
            assert ilp.cost_per_hour == pytest.approx(brute.cost_per_hour, rel=1e-9)


def test_decode_only_replica_has_no_prefill_and_outlasts_the_aggregated_one():
    """A decode pool replica (requests arrive with their KV) reports TTFT 0 and a TPOT at least
    one decode step, and sustains more requests than the same devices serving prefill too."""
    from hwmodels.clusters import load_cluster
    from planner.serve_search import replica_capacity
    from simulator.models import load_model
    from simulator.serving.engine import ReplicaGroup, ServingPlan, simulate
    from simulator.serving.workload import LengthDist, RateSchedule, ServingWorkload
    model, c = load_model("llama3.1-8b"), load_cluster("dgx-h100")
    wl = ServingWorkload(num_requests=200, rate=RateSchedule.parse("5"), prompt_len=LengthDist.parse("1024"),
                         output_len=LengthDist.parse("128"), seed=0)
    rep = simulate(model, ServingPlan((ReplicaGroup(c, 1, role="decode"),)), wl)
    assert rep.completed == 200 and rep.ttft_s["p99"] == 0.0 and rep.tpot_s["p50"] > 1e-3
    both = replica_capacity(model, c, 1, wl, 1.0, 0.03, requests=200)
    dec = replica_capacity(model, c, 1, wl, 1.0, 0.03, requests=200, role="decode")
    pre = replica_capacity(model, c, 1, wl, 1.0, 0.03, requests=200, role="prefill")
    assert dec.rate > both.rate and pre.rate > both.rate > 0
    assert 0 < pre.kv_transfer_s < 0.05  # 1024 tokens of 8B KV (128 MiB) over a 400 Gb/s NIC: ~3 ms
    for cap in (both, dec, pre):  # the bisection's answer: its probe passes, 10% more fails
        assert any(ok for r, _, _, ok in cap.probes if r == cap.rate)
        assert not any(ok for r, _, _, ok in cap.probes if r > cap.rate * 1.1)
        assert 0.5 < cap.rate / cap.bound < 1.5  # the analytic bound brackets the search


def test_parallel_capacities_equal_serial():
    from hwmodels.clusters import load_cluster
    from planner import serve_search
    from simulator.models import load_model
    from simulator.serving.workload import LengthDist, RateSchedule, ServingWorkload
    model, c = load_model("llama3.1-8b"), load_cluster("dgx-h100")
    wl = ServingWorkload(num_requests=100, rate=RateSchedule.parse("5"), prompt_len=LengthDist.parse("512"),
                         output_len=LengthDist.parse("64"), seed=3)
    work = [(c, 1, "both"), (c, 2, "decode"), (c, 1, "prefill")]
    serve_search._CAPACITY_CACHE.clear()
    par = serve_search.capacities(model, work, wl, 1.0, 0.03, 90, 100, 3, "vllm", "bf16", None, jobs=2)
    serve_search._CAPACITY_CACHE.clear()
    ser = serve_search.capacities(model, work, wl, 1.0, 0.03, 90, 100, 3, "vllm", "bf16", None, jobs=1)
    assert [c.to_dict() for c in par] == [c.to_dict() for c in ser]
    assert [c.role for c in par] == ["both", "decode", "prefill"]


def test_disagg_on_end_to_end(capsys):
    rc, out, err = _run(capsys, BASE + ["--devices", "h100-sxm:8", "--rate", "10", "--slo-ttft", "1s",
                                        "--slo-tpot", "40ms", "--disagg", "on", "--json"])
    assert rc == 0, err
    d = json.loads(out)
    best = d["fleets"][0]
    assert best["mode"] == "disaggregated" and best["meets_slo"]
    roles = {r["role"] for r in best["replicas"]}
    assert roles == {"prefill", "decode"}
    assert best["num_devices"] <= 8 and d["kv_transfer_bytes_per_s"] > 0
    assert {c["role"] for c in d["capacities"]} == {"prefill", "decode"}
    front = d["pareto"]
    assert front and [p["cost_per_hour"] for p in front] == sorted(p["cost_per_hour"] for p in front)
    for a in front:  # no point of the front beats another on every axis
        for b in front:
            if a is not b:
                assert not (b["cost_per_hour"] <= a["cost_per_hour"] and b["ttft_s"] <= a["ttft_s"]
                            and b["tpot_s"] <= a["tpot_s"])
    assert d["solver"]["status"] == "Optimal" and d["solver"]["time_limit_s"] == 5.0


def test_disagg_auto_reports_both_modes(capsys):
    rc, out, err = _run(capsys, BASE + ["--devices", "h100-sxm:8", "--rate", "10", "--slo-ttft", "1s",
                                        "--slo-tpot", "40ms", "--json", "--no-pareto"])
    assert rc == 0, err
    d = json.loads(out)
    assert {f["mode"] for f in d["fleets"]} == {"aggregated", "disaggregated"}
    costs = [f["cost_per_hour"] for f in d["fleets"] if f["meets_slo"]]
    assert costs == sorted(costs)


def test_disagg_ttft_below_prefill_plus_transfer_exit_2(capsys):
    rc, out, err = _run(capsys, BASE + ["--devices", "h100-sxm:4", "--rate", "5", "--slo-ttft", "5ms",
                                        "--slo-tpot", "50ms", "--disagg", "on"])
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert "below the fastest prefill + KV transfer" in err and "disaggregated" in err


def test_bad_disagg_value_exit_2(capsys):
    rc, out, err = _run(capsys, BASE + ["--devices", "h100-sxm:4", "--rate", "5", "--slo-ttft", "1s",
                                        "--slo-tpot", "50ms", "--disagg", "maybe"])
    assert rc == 2 and out == "" and err.count("\n") == 1 and "maybe" in err


# ---- request-size classes (Mélange) ------------------------------------------------------------

def _wl(prompt, output="64", n=200, rate="5"):
    from simulator.serving.workload import LengthDist, RateSchedule, ServingWorkload
    return ServingWorkload(num_requests=n, rate=RateSchedule.parse(rate), prompt_len=LengthDist.parse(prompt),
                           output_len=LengthDist.parse(output), seed=0)


def test_size_classes_split_by_quantile():
    from planner.serve_search import size_classes
    assert len(size_classes(_wl("1024"), 3)) == 1  # a fixed length is one class
    cls = size_classes(_wl("uniform:100:3000"), 3)
    assert len(cls) == 3
    bounds = [b for b, _, _ in cls]
    assert bounds == sorted(bounds) and bounds[-1] <= 3000
    assert sum(sh for _, sh, _ in cls) == pytest.approx(1.0)
    assert all(abs(sh - 1 / 3) < 0.02 for _, sh, _ in cls)
    lo = 0
    for b, _, dist in cls:  # every class's lengths lie in its interval
        assert lo < min(dist.values) and max(dist.values) <= b
        lo = b
    with pytest.raises(InputError):
        size_classes(_wl("1024"), 0)


def test_class_ilp_equals_brute_force_on_random_instances():
    from planner.serve_search import ClassOption, fleet_brute_force_classes, fleet_ilp_classes
    rng = random.Random(5)
    for _ in range(25):
        opts, avail = [], {}
        for g in ("a", "b"):
            avail[g] = rng.randint(1, 4)
            price = rng.uniform(0.5, 3.0)
            for tp in (1, 2):
                opts.append(ClassOption(f"{g}/tp{tp}", g, tp, tuple(rng.choice([0.0, rng.uniform(1, 10) * tp])
                                                                   for _ in range(2)), price))
        demand = [rng.uniform(0.5, 12.0), rng.uniform(0.5, 12.0)]
        ilp = fleet_ilp_classes(opts, demand, avail)
        brute = fleet_brute_force_classes(opts, demand, avail)
        assert (ilp is None) == (brute is None)
        if ilp is not None:
            assert ilp[0].cost_per_hour == pytest.approx(brute.cost_per_hour, rel=1e-9)
            loads = ilp[1]
            for k in range(2):  # every class placed, no replica over its time
                assert sum(v[k] for v in loads.values()) >= demand[k] - 1e-6
            for o in opts:
                if o.name in loads:
                    used = sum(loads[o.name][k] / o.rates[k] for k in range(2) if o.rates[k] > 0)
                    assert used <= ilp[0].counts[o.name] + 1e-6


def test_class_placement_mix_wins_where_types_differ_by_size():
    """Mélange's case: a cheap type that is good at short requests only and a dear one that serves
    long ones well; splitting classes across both beats either alone."""
    from planner.serve_search import ClassOption, fleet_ilp_classes
    cheap = ClassOption("cheap/tp1", "cheap", 1, (10.0, 0.5), 1.0)  # short: 10 req/s, long: 0.5
    dear = ClassOption("dear/tp1", "dear", 1, (12.0, 6.0), 3.0)
    demand = [20.0, 12.0]
    mixed = fleet_ilp_classes([cheap, dear], demand, {"cheap": 20, "dear": 20})[0]
    only_cheap = fleet_ilp_classes([cheap], demand, {"cheap": 20})
    only_dear = fleet_ilp_classes([dear], demand, {"dear": 20})[0]
    assert mixed.counts == {"cheap/tp1": 2, "dear/tp1": 2}  # shorts on cheap, longs on dear
    assert mixed.cost_per_hour == pytest.approx(8.0)
    assert only_cheap is None  # 20 devices cannot take 12 req/s of long requests
    assert only_dear.cost_per_hour == pytest.approx(3.0 * 4)  # 20/12 + 12/6 = 3.67 → 4 replicas
    assert mixed.cost_per_hour < only_dear.cost_per_hour


def test_size_class_router_follows_the_shares():
    from hwmodels.clusters import load_cluster
    from simulator.models import load_model
    from simulator.serving.engine import ReplicaGroup, ServingPlan, ServingSimulation
    c = load_cluster("dgx-h100")
    plan = ServingPlan((ReplicaGroup(c, 1, count=2), ReplicaGroup(c, 2)), router="size_class",
                       class_bounds=(1000, 4000), class_shares=((1.0, 0.0), (0.0, 2.0)))
    sim = ServingSimulation(load_model("llama3.1-8b"), plan, _wl("uniform:100:4000", n=300, rate="3"))
    sim.run()
    for r in sim.requests:
        assert (r.replica in (0, 1)) == (r.prompt_len <= 1000), (r.replica, r.prompt_len)
    short = [r.replica for r in sim.requests if r.prompt_len <= 1000]
    assert abs(short.count(0) - short.count(1)) <= 1  # equal shares alternate
    with pytest.raises(InputError, match="no replica serves class 1"):
        ServingSimulation(load_model("llama3.1-8b"), ServingPlan(
            (ReplicaGroup(c, 1, count=2),), router="size_class", class_bounds=(1000, 4000),
            class_shares=((1.0, 0.0),)), _wl("512"))


def test_size_classes_end_to_end(capsys):
    rc, out, err = _run(capsys, BASE + ["--devices", "h100-sxm:4,a100-sxm-80g:4", "--rate", "12",
                                        "--slo-ttft", "2s", "--slo-tpot", "60ms", "--disagg", "off",
                                        "--size-classes", "2", "--json", "--no-pareto"])
    assert rc == 0, err
    d = json.loads(out)
    assert len(d["size_classes"]) == 2 and {c.get("size_class") for c in d["capacities"]} == {0, 1}
    best = d["fleets"][0]
    assert best["meets_slo"] and len(best["size_classes"]) == 2 and best["headroom"] >= 0
    for k in range(2):  # the placement covers each class's demand
        placed = sum(r["class_load_req_per_s"][k] * r["count"] for r in best["replicas"])
        assert placed >= 12 * d["size_classes"][k]["share"] - 1e-6


def test_disaggregated_infeasibility_names_the_kv_link():
    from planner.serve_search import Capacity, PoolEntry, explain_infeasible
    caps = [Capacity("a", 1, 4.0, 0.1, 0.01, role="prefill"), Capacity("a", 1, 6.0, 0.1, 0.01, role="decode")]
    pool = [PoolEntry("a", 8, 1.0)]
    err = explain_infeasible(caps, pool, 10.0, 1.0, 0.05, 90, disaggregated=True,
                             options=[P, D], kv_bytes_per_s=200e9)  # 8 devices carry at most 80 GB/s
    assert "KV link" in str(err) and "200 GB/s" in str(err) and "kv_link" in str(err)
    err = explain_infeasible(caps, [PoolEntry("a", 2, 1.0)], 10.0, 1.0, 0.05, 90, disaggregated=True,
                             options=[P, D], kv_bytes_per_s=0.0)
    assert "not enough devices for a disaggregated fleet" in str(err)


def test_requests_beyond_the_context_exit_2_quickly(capsys):
    """Long-profile fuzz finding: --output-len 1048577 simulated for 5 minutes."""
    rc, out, err = _run(capsys, ["plan", "serve", "--model", "llama3.1-8b", "--devices", "a100-sxm-80g:2",
                                 "--rate", "5", "--prompt-len", "256", "--output-len", "1048577",
                                 "--slo-ttft", "2s", "--slo-tpot", "50ms"])
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert "131,072 tokens" in err and "max_position_embeddings" in err
