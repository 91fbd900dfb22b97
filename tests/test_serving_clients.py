"""Benchmark clients as workloads (simulator/serving/clients.py): what each tool sends and how it
times it, checked against the clients' sources (docs/modeling.md §4.6)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from hwmodels.clusters import load_cluster
from hwmodels.errors import InputError
from simulator.models import load_model
from simulator.serving.clients import (AIPERF_SEND_GAP_S, aiperf, bench_serving, bench_serving_warmups,
                                       client_for_row, make_workload, ranged)
from simulator.serving.engine import ServingSimulation, parse_serving_plan
from simulator.serving.metrics import client_summary
from ui.cli import main

H100 = load_cluster("dgx-h100")
L8B = load_model("llama3.1-8b")


def run(wl):
    sim = ServingSimulation(L8B, parse_serving_plan("tp=1", H100), wl)
    rep = sim.run()
    return sim, rep


def test_random_range_ratio_draws_from_int_ratio_len_to_len():
    # benchmark_serving sample_random_requests: np.random.randint(int(len * r), len + 1)
    d = ranged(1000, 0.8, "x")
    x = d.sample(np.random.default_rng(0), 20000)
    assert x.min() == 800 and x.max() == 1000
    assert x.mean() == pytest.approx(900, abs=3)
    assert ranged(1000, 1.0, "x").kind == "const"  # ratio 1: fixed lengths
    assert ranged(7, 0.8, "x").a == 5  # int(5.6) = 5


def test_bench_serving_first_wave_is_a_burst_and_later_arrivals_are_spread():
    c = 8
    sim, rep = run(bench_serving(512, 64, c, seed=3))
    arr = sorted(r.arrival_s for r in sim.requests)
    assert len(sim.requests) == 10 * c and rep.measured == 10 * c
    assert arr[:c] == [0.0] * c  # the first C requests: a burst at t = 0
    later = arr[c:]
    assert later[0] > 0
    # varied output lengths de-synchronise completions: later arrivals come one at a time
    assert len(set(later)) >= 0.7 * len(later)


def test_fixed_lengths_keep_the_closed_loop_in_lock_step():
    # switched off (range ratio 1 = fixed lengths): completions, hence arrivals, stay in waves
    c = 8
    sim, _ = run(bench_serving(512, 64, c, random_range_ratio=1.0, seed=3))
    later = [r.arrival_s for r in sim.requests][c:]
    assert len(set(later)) <= len(later) / 2


def test_bench_serving_clock_starts_at_slot_acquisition_aiperf_at_send():
    gap = 2e-3  # a slow serial sender makes the clocks' difference visible
    sim_b, rep_b = run(bench_serving(512, 64, 4, num_prompts=4, random_range_ratio=1.0, send_gap_s=gap,
                                     seed=1))
    sim_a, rep_a = run(aiperf(512, 64, 4, request_count=4, send_gap_s=gap, seed=1))
    for r in sim_b.requests:
        assert r.clock_s == 0.0 and r.arrival_s == pytest.approx(r.client * gap)
        assert r.ttft_s == pytest.approx(r.first_token_s)  # includes the wait to be sent
    for r in sim_a.requests:
        assert r.clock_s == r.arrival_s  # the clock starts at the send
    # same server work, so bench-serving's mean TTFT is larger by the mean wait to be sent
    wait = np.mean([r.arrival_s for r in sim_b.requests])
    assert rep_b.ttft_s["mean"] - rep_a.ttft_s["mean"] == pytest.approx(wait, rel=0.05, abs=2e-4)


def test_aiperf_sends_fixed_lengths_and_staggers_the_burst_serially():
    c = 16
    sim, rep = run(aiperf(256, 32, c, seed=2))
    assert {r.prompt_len for r in sim.requests} == {256} and {r.output_len for r in sim.requests} == {32}
    assert len(sim.requests) == 10 * c  # the drained 2C warm-up is not simulated
    first = sorted(r.arrival_s for r in sim.requests)[:c]
    # aiperf issue #1424: ~1 ms per 32 requests at the burst start
    assert first == pytest.approx([k * AIPERF_SEND_GAP_S for k in range(c)])
    assert rep.workload["client"] == "aiperf" and rep.workload["client_options"]["warmup_request_count"] == 2 * c


def test_client_statistics_as_each_tool_reports_them():
    x = np.array([0.1, 0.2, 0.3, 0.9, 1.5])
    b = client_summary(x, "bench-serving")
    assert set(b) == {"mean", "median", "std", "p99"}
    assert b["mean"] == pytest.approx(0.6) and b["median"] == pytest.approx(0.3)
    assert b["std"] == pytest.approx(np.std(x)) and b["p99"] == pytest.approx(np.percentile(x, 99))
    a = client_summary(x, "aiperf")
    assert {"avg", "min", "max", "p1", "p25", "p75", "p95"} <= set(a) and a["max"] == 1.5
    assert set(client_summary(x, "bench-serving", percentiles=(50, 99.9))) == {"mean", "median", "std", "p50", "p99.9"}


def test_report_carries_the_clients_statistics():
    _, rep = run(bench_serving(512, 64, 4, seed=4))
    assert set(rep.client_metrics["ttft_s"]) == {"mean", "median", "std", "p99"}
    assert rep.client_metrics["ttft_s"]["mean"] == pytest.approx(rep.ttft_s["mean"])
    # TPOT excludes the first token: (E2E - TTFT) / (n - 1)
    assert rep.client_metrics["tpot_s"]["mean"] == pytest.approx(rep.tpot_s["mean"])


def test_which_client_measured_a_row_and_the_warmup_rule():
    assert client_for_row("db-dump/2026-04-27; config_id=1; silicon_concurrency=4; "
                          "measured=2026-04-17T00:00:00.000Z")[0] == "bench-serving"
    cl, info = client_for_row("source_file=2026-04-06.csv; model=DeepSeek-R1; silicon_concurrency=4; "
                              "measured=2025-11-02T00:00:00.000Z")
    assert cl == "bench-serving" and info["measured"] == "2025-11-02"
    assert client_for_row("source_file=/Users/x/data/h100_sxm/trtllm/1.0.0rc3/a.csv; "
                          "silicon_concurrency=8")[0] == "aiperf"
    # AIConfigurator's gap-analysis copies of InferenceMAX rows (a bare file name)
    assert client_for_row("source_file=qwen3.5-397b-gap-analysis.csv; silicon_concurrency=4")[0] == "bench-serving"
    assert client_for_row("source_file=/Users/x/gap/a-gap-analysis.csv; silicon_concurrency=4")[0] == "aiperf"
    assert bench_serving_warmups(16, "2025-11-02") == 0
    assert bench_serving_warmups(16, "2026-01-21") == 32


def test_bench_serving_finite_rate_is_gamma_with_shape_burstiness():
    wl = bench_serving(128, 16, None, num_prompts=50, request_rate=4.0, burstiness=4.0)
    assert wl.rate is not None and wl.arrival_cv == pytest.approx(0.5)
    assert not wl.closed_loop


@pytest.mark.parametrize("call, msg", [
    (lambda: make_workload("locust"), "valid: bench-serving"),
    (lambda: bench_serving(100, 10, 4, random_range_ratio=0.0), "random-range-ratio"),
    (lambda: bench_serving(100, 10, 0), "max-concurrency"),
    (lambda: bench_serving(100, 10, 4, request_rate=5.0), "not modelled"),
    (lambda: aiperf(100, 10, 4, request_count=0), "request-count"),
])
def test_bad_client_settings_raise_input_errors(call, msg):
    with pytest.raises(InputError, match=msg):
        call()


@pytest.mark.parametrize("extra, msg", [
    (["--client", "bench-serving", "--prompt-len", "100", "--output-len", "9"], "--max-concurrency"),
    (["--client", "bench-serving", "--max-concurrency", "4", "--prompt-len", "uniform:1:9",
      "--output-len", "9"], "nominal length"),
    (["--client", "bench-serving", "--max-concurrency", "4", "--prompt-len", "100", "--output-len", "9",
      "--random-range-ratio", "0"], "--random-range-ratio"),
    (["--client", "aiperf", "--rate", "3", "--prompt-len", "100", "--output-len", "9"], "--concurrency"),
    (["--client", "closed-loop", "--prompt-len", "100", "--output-len", "9"], "needs --concurrency"),
    (["--prompt-len", "100", "--output-len", "9"], "give one of --rate"),
    (["--concurrency", "4", "--max-concurrency", "4", "--prompt-len", "100", "--output-len", "9"],
     "belong to --client"),
])
def test_cli_client_flags_bad_input_exit_2_with_one_line(capsys, extra, msg):
    code = main(["simulate", "serve", "--model", "llama3.1-8b", "--cluster", "dgx-h100"] + extra)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and msg in err


def test_cli_bench_serving_client_runs(capsys):
    import json
    code = main(["simulate", "serve", "--model", "llama3.1-8b", "--cluster", "dgx-h100", "--client",
                 "bench-serving", "--max-concurrency", "4", "--random-range-ratio", "0.8",
                 "--prompt-len", "256", "--output-len", "32", "--json"])
    d = json.loads(capsys.readouterr().out)
    assert code == 0 and d["workload"]["client"] == "bench-serving" and d["workload"]["requests"] == 40
    assert d["workload"]["prompt_len"] == "uniform:204:256" and math.isfinite(d["ttft_s"]["mean"])
