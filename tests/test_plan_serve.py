"""`plan serve` (issue #7): the fleet ILP against brute force, mixed vs single-type fleets,
the CLI contract (JSON shape, one-line errors with exit 2)."""
from __future__ import annotations

import json
import random

import pytest

from planner.cli import main
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
        assert set(r) == {"device", "tp", "count", "rate_per_replica"}
        used[r["device"]] = used.get(r["device"], 0) + r["tp"] * r["count"]
    assert used.get("h100-sxm", 0) <= 1 and used.get("a100-sxm-80g", 0) <= 4
    costs = [f["cost_per_hour"] for f in d["fleets"] if f["meets_slo"]]
    assert costs[0] == min(costs)
    # text output of the same search (capacities are cached)
    rc, out, _ = _run(capsys, BASE + ["--devices", "h100-sxm:1,a100-sxm-80g:4", "--rate", "30",
                                      "--slo-ttft", "2s", "--slo-tpot", "60ms"])
    assert rc == 0 and "req/s per replica" in out and "met" in out
