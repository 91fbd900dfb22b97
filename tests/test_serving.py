"""The serving DES (simulator/serving): invariants, workloads and traces, routers,
disaggregation, CLI contract and the validation suite's shape."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hwmodels.clusters import load_cluster
from hwmodels.errors import InputError
from ui.cli import main
from simulator.models import load_model
from simulator.serving import scheduler as sched_mod
from simulator.serving.engine import (ReplicaGroup, ServingPlan, ServingSimulation,
                                      parse_serving_plan, simulate)
from simulator.serving.workload import (LengthDist, RateSchedule, ServingWorkload, arrival_times,
                                        load_trace)

H100 = load_cluster("dgx-h100")
L8B = load_model("llama3.1-8b")


def wl(**kw) -> ServingWorkload:
    kw.setdefault("prompt_len", LengthDist.parse("uniform:64:2048"))
    kw.setdefault("output_len", LengthDist.parse("uniform:8:256"))
    kw.setdefault("num_requests", 300)
    if "concurrency" not in kw and "trace" not in kw:
        kw.setdefault("rate", RateSchedule.parse("20"))
    return ServingWorkload(**kw)


def plan(text="tp=1", cluster=H100, **kw) -> ServingPlan:
    return parse_serving_plan(text, cluster, **kw)


class KVWatch:
    """Runs a simulation and checks after every scheduling decision that the blocks in use
    never exceed the pool and the accounting adds up."""

    def __init__(self, monkeypatch):
        self.checks = 0
        orig = sched_mod.Scheduler.schedule

        def checked(s, now):
            b = orig(s, now)
            kv = s.kv
            assert 0 <= kv.free and 0 <= kv.evictable
            assert kv.used <= kv.num_blocks, "KV blocks in use exceed the pool"
            owned = sum(r.blocks for r in s.running.values())
            assert owned <= kv.used
            self.checks += 1
            return b

        monkeypatch.setattr(sched_mod.Scheduler, "schedule", checked)


# ---- invariants --------------------------------------------------------------------------------

@pytest.mark.parametrize("engine", ["vllm", "sglang", "trtllm"])
def test_no_request_finishes_before_it_arrives(engine):
    sim = ServingSimulation(L8B, plan("tp=1,replicas=2", engine=engine),
                            wl(num_requests=250, rate=RateSchedule.parse("30"), seed=4))
    rep = sim.run()
    assert rep.completed == 250
    for r in sim.requests:
        assert r.arrival_s <= r.first_token_s <= r.finish_s
        assert r.generated == r.output_len


def test_kv_blocks_in_use_never_exceed_the_pool_even_with_preemption(monkeypatch):
    watch = KVWatch(monkeypatch)
    # a tiny pinned pool: 200 blocks × 16 tokens for requests of up to ~2.3k tokens
    sim = ServingSimulation(L8B, plan("tp=1,max_batch=64", kv_blocks=200),
                            wl(num_requests=120, concurrency=24, seed=1))
    rep = sim.run()
    assert watch.checks > 100
    assert rep.preemptions > 0 and rep.completed == 120
    kv = sim.replicas[0].kv
    assert kv.used == 0 and kv.free + kv.evictable == kv.num_blocks  # everything came back
    assert rep.kv_utilization["max"] <= 1.0


def test_full_reservation_never_preempts(monkeypatch):
    KVWatch(monkeypatch)
    sim = ServingSimulation(L8B, plan("tp=1", engine="trtllm", kv_blocks=120),
                            wl(num_requests=80, concurrency=24, seed=2))
    rep = sim.run()
    assert rep.preemptions == 0 and rep.completed == 80


def test_one_request_at_a_time_ttft_is_the_prefill_time():
    for chunk in ("", ",chunk=512"):
        w = wl(num_requests=6, concurrency=1, prompt_len=LengthDist.parse("uniform:100:3000"), seed=3)
        sim = ServingSimulation(L8B, plan("tp=2" + chunk), w)
        rep = sim.run()
        r0 = sim.replicas[0]
        for r in sim.requests:
            assert r.ttft_s == pytest.approx(r0.idle_prefill_s(r.prompt_len), rel=1e-9)
        assert rep.queue_s["max" if "max" in rep.queue_s else "p99"] == pytest.approx(0.0, abs=1e-12)


def test_throughput_saturates_as_rate_grows():
    tput = []
    for rate in (2, 8, 32, 128, 512):
        rep = simulate(L8B, plan("tp=1,max_batch=64"),
                       wl(num_requests=400, rate=RateSchedule.parse(str(rate)), seed=5))
        tput.append(rep.throughput_requests_per_s)
    assert tput[1] > 3 * tput[0]  # far from saturation it follows the offered load
    assert all(b >= 0.9 * a for a, b in zip(tput, tput[1:]))  # never collapses
    assert tput[-1] == pytest.approx(tput[-2], rel=0.15)  # and flattens at capacity
    assert tput[-1] < 0.5 * 512


def test_chunked_prefill_lowers_p99_tpot_at_equal_load():
    def p99(chunk: str) -> float:
        w = wl(num_requests=300, rate=RateSchedule.parse("3"),
               prompt_len=LengthDist.parse("uniform:4096:16384"), output_len=LengthDist.parse("128"),
               seed=7)
        return simulate(L8B, plan("tp=1,max_tokens=16384" + chunk), w).tpot_s["p99"]
    assert p99(",chunk=512") < 0.8 * p99(",chunk=0")


def test_same_seed_same_json_and_seed_matters(capsys):
    argv = ["simulate", "serve", "--model", "llama3.1-8b", "--cluster", "dgx-h100", "--plan",
            "tp=1,replicas=2", "--rate", "12", "--prompt-len", "lognormal:800:400", "--output-len",
            "exp:100", "--requests", "200", "--arrival", "gamma:2", "--json"]
    outs = []
    for seed in ("1", "1", "2"):
        assert main(argv + ["--seed", seed]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0] != outs[2]


def test_run_of_decode_iterations_matches_iteration_by_iteration(monkeypatch):
    w = wl(num_requests=60, concurrency=12, seed=9)
    fast = simulate(L8B, plan("tp=1"), w)
    monkeypatch.setattr(sched_mod.Scheduler, "decode_run_length", lambda self, limit=0: 1)
    slow = simulate(L8B, plan("tp=1"), w)
    for key in ("ttft_s", "tpot_s", "e2e_s"):
        assert fast.to_dict()[key]["mean"] == pytest.approx(slow.to_dict()[key]["mean"], rel=2e-3)


# ---- workloads and traces ----------------------------------------------------------------------

def test_length_distributions_and_burstiness():
    rng = np.random.default_rng(0)
    assert LengthDist.parse("1024").sample(rng, 5).tolist() == [1024] * 5
    u = LengthDist.parse("uniform:128:2048").sample(rng, 20000)
    assert u.min() >= 128 and u.max() <= 2048 and abs(u.mean() - 1088) < 20
    n = LengthDist.parse("normal:1000:200").sample(rng, 20000)
    assert abs(n.mean() - 1000) < 10 and abs(n.std() - 200) < 10
    ln = LengthDist.parse("lognormal:1000:500").sample(rng, 50000)
    assert abs(ln.mean() - 1000) < 20 and abs(ln.std() - 500) < 30
    for bad in ("0", "uniform:5", "uniform:9:3", "normal:-1:2", "zipf:1", "abc"):
        with pytest.raises(InputError):
            LengthDist.parse(bad)
    gaps = np.diff(arrival_times(20000, RateSchedule.parse("10"), rng, cv=3.0))
    assert abs(gaps.mean() - 0.1) < 0.01 and abs(gaps.std() / gaps.mean() - 3.0) < 0.3
    t = arrival_times(4000, RateSchedule.parse("10:100,40:50"), rng)
    assert 900 < np.sum(t < 100) < 1100 and 1800 < np.sum((t >= 100) & (t < 150)) < 2200


def test_traces_in_public_formats(tmp_path):
    az = tmp_path / "azure.csv"
    az.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
                  "2023-11-16 18:15:50.9951690,396,109\n")
    rows, fmt = load_trace(str(az))
    assert fmt == "azure" and rows[1][0] - rows[0][0] == pytest.approx(4.314579, abs=1e-6)
    bg = tmp_path / "burst.csv"
    bg.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                  "5,ChatGPT,472,18,490,Conversation log\n45,ChatGPT,1087,0,1087,Conversation log\n")
    rows, fmt = load_trace(str(bg))
    assert fmt == "burstgpt" and len(rows) == 1  # the failed request (0 tokens) is dropped
    mc = tmp_path / "mooncake.jsonl"
    mc.write_text("\n".join(json.dumps({"timestamp": t, "input_length": 3000, "output_length": 20,
                                        "hash_ids": [1, 2, 3, 4, 5, 6]}) for t in (0, 500, 900)))
    rows, fmt = load_trace(str(mc))
    assert fmt == "mooncake" and rows[2][0] == pytest.approx(0.9) and len(rows[0][3]) == 5
    rep = simulate(L8B, plan("tp=1"), ServingWorkload(trace=rows, num_requests=0))
    assert rep.completed == 3 and rep.prefix_cache_hit_rate > 0.5  # 2 of 3 reuse 2560 tokens


@pytest.mark.parametrize("content, where", [
    ("TIMESTAMP,ContextTokens\n1,2\n", "line 1: missing column 'GeneratedTokens'"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n1,5,6\n2,-5,6\n", "line 3: ContextTokens=-5"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n5,5,6\n2,5,6\n", "line 3: timestamp 2 is earlier"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n1,five,6\n", "line 2: ContextTokens='five'"),
    ('{"timestamp": 1, "input_length": 5}\n', "line 1: missing key 'output_length'"),
    ('{"timestamp": 9, "input_length": 5, "output_length": 1}\n{"timestamp": 3, "input_length": 5, '
     '"output_length": 1}\n', "line 2: timestamp 3 is earlier"),
])
def test_bad_traces_exit_2_with_one_line_naming_the_line(tmp_path, capsys, content, where):
    f = tmp_path / ("t.jsonl" if content.startswith("{") else "t.csv")
    f.write_text(content)
    code = main(["simulate", "serve", "--model", "llama3.1-8b", "--cluster", "dgx-h100",
                 "--trace", str(f)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and where in err


@pytest.mark.parametrize("extra, msg", [
    (["--rate", "5", "--prompt-len", "gauss:1:2", "--output-len", "9"], "unknown distribution"),
    (["--rate", "5", "--prompt-len", "100", "--output-len", "9", "--slo-tpot", "fast"], "not a duration"),
    (["--rate", "0", "--prompt-len", "100", "--output-len", "9"], "rate > 0"),
    (["--rate", "5", "--prompt-len", "100"], "--output-len"),
    (["--concurrency", "0", "--prompt-len", "100", "--output-len", "9"], "positive integer"),
    (["--rate", "5", "--prompt-len", "100", "--output-len", "9", "--plan", "tp=2,bogus=1"], "unknown plan key"),
    (["--rate", "5", "--prompt-len", "100", "--output-len", "9", "--plan", "max_batch=512,max_tokens=256"],
     "max_tokens=256 must be >= max_batch=512"),
    (["--rate", "5", "--prompt-len", "100", "--output-len", "9", "--plan", "tp=16", "--nodes", "1"],
     "needs 16 devices"),
    (["--rate", "5", "--prompt-len", "100", "--output-len", "9", "--arrival", "weibull"], "valid: poisson"),
    (["--rate", "5", "--prompt-len", "100", "--output-len", "9", "--plan", "prefill_tp=2,tp=2"], "conflicts"),
])
def test_bad_flags_exit_2_with_one_line(capsys, extra, msg):
    code = main(["simulate", "serve", "--model", "llama3.1-8b", "--cluster", "dgx-h100"] + extra)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and msg in err


def test_durations_parse():
    from ui.cli.flags import parse_duration
    assert parse_duration("2s") == 2 and parse_duration("50ms") == pytest.approx(0.05)
    assert parse_duration("1500us") == pytest.approx(0.0015) and parse_duration("0.25") == 0.25


# ---- cluster level -----------------------------------------------------------------------------

def test_kv_aware_router_keeps_shared_prefixes_together():
    def hit_rate(router):
        w = wl(num_requests=400, rate=RateSchedule.parse("40"), shared_prefix=(4, 1024),
               prompt_len=LengthDist.parse("uniform:1100:2000"), seed=11)
        return simulate(L8B, plan("tp=1,replicas=4", router=router), w).prefix_cache_hit_rate
    rr, kv = hit_rate("round_robin"), hit_rate("kv_aware")
    assert kv > rr > 0.3


def test_least_outstanding_balances_and_prefix_caching_can_be_off():
    w = wl(num_requests=300, rate=RateSchedule.parse("60"), shared_prefix=(2, 512), seed=12)
    rep = simulate(L8B, plan("tp=1,replicas=3", router="least_outstanding", prefix_caching=False), w)
    busy = [r["busy_s"] for r in rep.replicas]
    assert max(busy) < 1.3 * min(busy) and rep.prefix_cache_hit_rate == 0


def test_disaggregated_prefill_decode_with_kv_transfer():
    m = load_model("llama3.1-70b")
    w = wl(num_requests=120, rate=RateSchedule.parse("2"), prompt_len=LengthDist.parse("4096"),
           output_len=LengthDist.parse("64"), seed=13)
    sim = ServingSimulation(m, plan("prefill_tp=4,prefill_replicas=2,decode_tp=8,decode_replicas=1",
                                    dtype="fp8"), w)
    rep = sim.run()
    assert rep.completed == 120 and rep.num_devices == 16
    decode = [r for r in sim.replicas if r.role == "decode"][0]
    assert decode.offset == 8  # the decode replica sits on the second node
    assert all(r.transfer_s > 0 for r in sim.requests)
    # KV of 4096 tokens crosses an inter-node NIC: TTFT exceeds the bare prefill by the transfer
    pre = [r for r in sim.replicas if r.role == "prefill"][0]
    assert min(r.ttft_s for r in sim.requests) >= pre.idle_prefill_s(4096) + min(
        r.transfer_s for r in sim.requests) - 1e-9
    assert rep.to_dict()["plan"]["disaggregated"] is True


def test_heterogeneous_replicas():
    a100 = load_cluster("dgx-a100")
    p = ServingPlan((ReplicaGroup(H100, tp=1, count=1), ReplicaGroup(a100, tp=1, count=1)),
                    router="least_outstanding")
    rep = simulate(L8B, p, wl(num_requests=300, rate=RateSchedule.parse("25"), seed=14))
    devs = {r["device"] for r in rep.replicas}
    assert len(devs) == 2 and rep.completed == 300 and rep.num_devices == 2


def test_report_has_the_design_keys_and_timelines(capsys, tmp_path):
    trace = tmp_path / "trace.json"
    code = main(["simulate", "serve", "--model", "qwen3-8b", "--cluster", "dgx-h100", "--plan",
                 "tp=2,replicas=2,max_batch=128,max_tokens=4096,chunk=1024", "--concurrency", "32",
                 "--prompt-len", "uniform:256:4096", "--output-len", "200", "--requests", "200",
                 "--slo-ttft", "500ms", "--slo-tpot", "30ms", "--chrome-trace", str(trace), "--json"])
    d = json.loads(capsys.readouterr().out)
    assert code == 0
    for key in ("ttft_s", "tpot_s", "itl_s", "e2e_s"):
        assert set(d[key]) == {"mean", "p50", "p90", "p99"} and d[key]["p50"] > 0
    for key in ("throughput_tokens_per_s", "throughput_requests_per_s", "goodput_requests_per_s",
                "tokens_per_s_per_device", "kv_utilization", "preemptions_over_time", "replicas"):
        assert key in d
    assert 0 < d["goodput_requests_per_s"] <= d["throughput_requests_per_s"]
    assert len(d["kv_utilization"]["utilization"]) == len(d["preemptions_over_time"]["count"])
    events = json.loads(trace.read_text())["traceEvents"]
    assert {e["pid"] for e in events if e["ph"] == "X"} == {0, 1}


def test_distserve_goodput_search():
    from simulator.serving.engine import max_goodput_rate
    w = wl(num_requests=150, rate=RateSchedule.parse("4"), slo_ttft_s=0.3, slo_tpot_s=0.025, seed=15)
    g = max_goodput_rate(L8B, plan("tp=1"), w, iterations=4)
    assert g["bounded"] and g["rate_req_per_s"] > 4
    rep = simulate(L8B, plan("tp=1"), ServingWorkload(**{**w.__dict__, "rate": RateSchedule(((g["rate_req_per_s"], math.inf),))}))
    assert rep.slo_attainment >= 0.9


def test_validate_serving_replays_measured_rows(capsys):
    code = main(["validate", "serving", "--quick", "--limit", "4", "--json"])
    d = json.loads(capsys.readouterr().out)
    assert code == 0 and d["rows_modelled"] == 4 and len(d["cases"]) == 8
    for c in d["cases"]:
        assert {"name", "predicted", "measured", "unit", "error_pct"} <= set(c)
        assert c["predicted"] > 0 and math.isfinite(c["error_pct"])
    assert "mape_pct" in d and "max_error_pct" in d and d["rows_skipped"] > 0
    assert any("disaggregated" in why for why in d["skip_reasons"])


def test_closed_loop_ramp_up_and_think_time():
    base = dict(num_requests=64, concurrency=8, prompt_len=LengthDist.parse("512"),
                output_len=LengthDist.parse("64"), seed=16)
    burst = ServingSimulation(L8B, plan("tp=1"), wl(**base))
    burst.run()
    assert min(r.arrival_s for r in burst.requests) == max(r.arrival_s for r in burst.requests[:8]) == 0
    ramp = ServingSimulation(L8B, plan("tp=1"), wl(**base, ramp_up_s=2.0, think_time_s=0.05))
    ramp.run()
    firsts = sorted(r.arrival_s for r in ramp.requests[:8])
    assert 0 < firsts[-1] < 2.0 and len(set(firsts)) == 8
    by_client = {}
    for r in sorted(ramp.requests, key=lambda r: r.arrival_s):
        prev = by_client.get(r.client)
        if prev is not None:  # the next request follows the previous response after the think time
            assert r.arrival_s == pytest.approx(prev.finish_s + 0.05)
        by_client[r.client] = r


def test_sglang_admission_keeps_room_for_running_decodes():
    # prefill-first scheduling with a small pool: SGLang's new_token_ratio reservation keeps
    # admissions from being preempted straight away (no recompute thrash)
    w = wl(num_requests=60, concurrency=30, prompt_len=LengthDist.parse("2048"),
           output_len=LengthDist.parse("256"), seed=17)
    rep = simulate(L8B, plan("tp=1", engine="sglang", kv_blocks=30000), w)
    assert rep.completed == 60 and rep.preemptions < 60
