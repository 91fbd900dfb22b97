"""The API-server stage (simulator/serving/frontend.py): HTTP + tokenisation per request on one
FIFO thread, output streaming (detokenisation + one event per token) sharing that thread.

Sources: the figures are copied from this project's component measurement
(validation/measure_frontend.py -> validation/data/frontend/frontend_costs.json) and from the
published numbers (tenstorrent/tt-inference-server #2173: 1.3-2.8 ms to encode 131 tokens; vLLM
PR #24174: 4.6 ms of detokenizer CPU time at about 4k output tokens).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from hwmodels.clusters import load_cluster
from hwmodels.errors import InputError
from simulator.models import load_model
from simulator.serving.engine import ServingSimulation, parse_serving_plan
from simulator.serving.frontend import MAX_LOAD, Frontend, FrontendCosts, frontend_costs
from simulator.serving.workload import LengthDist, RateSchedule, ServingWorkload

ROOT = Path(__file__).resolve().parent.parent
MEASURED = ROOT / "validation" / "data" / "frontend" / "frontend_costs.json"


def test_measured_profile_is_the_committed_measurement():
    m = json.loads(MEASURED.read_text())
    c = frontend_costs("measured")
    assert c.tokenize_s_per_token == pytest.approx(m["encode_random_ids"]["median_s_per_token"], rel=0.01)
    assert c.detokenize_s_per_token == pytest.approx(m["decode_stream"]["median_s_per_token"], rel=0.01)
    assert c.request_s == pytest.approx(m["http"]["request_median_s"], rel=0.01)
    assert c.stream_s_per_token == pytest.approx(m["http"]["stream_chunk_median_s"], rel=0.01)
    assert frontend_costs("on") == c
    assert frontend_costs("off") is None and frontend_costs(None) is None
    # a fast tokenizer encodes in microseconds per token, not milliseconds
    assert 1e-8 < c.tokenize_s_per_token < 1e-4


def test_published_profile_follows_the_published_numbers():
    p = frontend_costs("published")
    lo, hi = 1.3e-3 / 131, 2.8e-3 / 131  # tt-inference-server #2173
    assert p.tokenize_s_per_token == pytest.approx((lo + hi) / 2, rel=0.01)
    assert p.detokenize_s_per_token == pytest.approx(4.6e-3 / 4000, rel=0.01)  # vLLM PR #24174


def test_bad_profile_is_a_one_line_error():
    with pytest.raises(InputError, match="frontend 'fast'; valid: off, on, measured, published"):
        frontend_costs("fast")


C = FrontendCosts("t", request_s=1e-3, tokenize_s_per_token=1e-5, detokenize_s_per_token=1e-6,
                  stream_s_per_token=9e-6)


def test_intake_is_fifo_on_one_thread():
    """Two requests arrive together: the second waits for the first's HTTP + tokenisation."""
    f = Frontend(C)
    a = f.intake(0.0, 1000)  # 1 ms + 10 ms
    b = f.intake(0.0, 100)  # behind it: + 1 ms + 1 ms
    assert a == pytest.approx(0.011) and b == pytest.approx(0.013)
    # a later arrival after the thread is free waits only for itself
    assert f.intake(1.0, 0) == pytest.approx(1.001)
    assert f.summary()["requests"] == 3
    assert f.summary()["mean_intake_s"] == pytest.approx((0.011 + 0.013 + 0.001) / 3)


def test_output_streaming_slows_intake():
    """20,000 output tokens/s at 10 us each take 20% of the thread: intake runs at 80% speed."""
    f = Frontend(C)
    f.output_rate(20_000)
    assert f.load == pytest.approx(0.2)
    assert f.intake(0.0, 1000) == pytest.approx(0.011 / 0.8)
    f.output_rate(0.0)
    assert f.intake(1.0, 1000) == pytest.approx(1.011)
    # beyond one thread's worth of streaming: flagged, and the load held at the guard
    f.output_rate(1e6)
    assert f.saturated and f.load == MAX_LOAD and f.max_load == MAX_LOAD


def _one_request(frontend: str):
    model, cluster = load_model("llama3.1-8b"), load_cluster("dgx-h100")
    plan = parse_serving_plan("tp=1", cluster, frontend=frontend)
    wl = ServingWorkload(num_requests=1, rate=RateSchedule.parse("1"), prompt_len=LengthDist.parse("2000"),
                         output_len=LengthDist.parse("20"), seed=0)
    sim = ServingSimulation(model, plan, wl)
    rep = sim.run()
    return sim, rep


def test_single_request_ttft_is_intake_plus_prefill():
    """With the stage on, one request's TTFT = HTTP + 2000 tokens of tokenisation + the prefill
    pass; off (the mechanism removed), TTFT = the prefill pass alone."""
    sim, rep = _one_request("measured")
    (req,) = sim.requests
    prefill = sim.replicas[0].costs.prefill_s(2000)
    intake = frontend_costs("measured").intake_s(2000)
    assert req.first_token_s - req.arrival_s == pytest.approx(prefill + intake, rel=1e-9)
    assert any(n.startswith("frontend (measured)") for n in rep.notes)
    assert sim.replicas[0].describe()["frontend"]["requests"] == 1
    sim0, rep0 = _one_request("off")
    (req0,) = sim0.requests
    assert req0.first_token_s - req0.arrival_s == pytest.approx(prefill, rel=1e-9)
    assert sim0.replicas[0].frontend is None
    assert not any(n.startswith("frontend") for n in rep0.notes)


def test_a_burst_queues_at_the_frontend():
    """64 requests of 200 tokens at once through one API server, in front of a TP-8 replica that
    prefills them all in tens of milliseconds: the k-th is handed to the engine only after k
    intakes (FIFO), so its TTFT is at least that long and the mean TTFT at least the mean intake
    completion; with the stage switched off both bounds fail."""
    model, cluster = load_model("llama3.1-8b"), load_cluster("dgx-h100")
    wl = ServingWorkload(num_requests=64, concurrency=64, prompt_len=LengthDist.parse("200"),
                         output_len=LengthDist.parse("8"), seed=0)
    one = frontend_costs("published").intake_s(200)
    means = {}
    for fe in ("published", "off"):
        sim = ServingSimulation(model, parse_serving_plan("tp=8", cluster, frontend=fe), wl)
        rep = sim.run()
        means[fe] = rep.ttft_s["mean"]
        ttfts = sorted(r.first_token_s - r.arrival_s for r in sim.requests)
        if fe == "published":
            assert all(t >= (k + 1) * one * (1 - 1e-9) for k, t in enumerate(ttfts))
        else:
            assert ttfts[-1] < 64 * one
    fifo_mean = (64 + 1) / 2 * one  # mean of the intake completions 1·one .. 64·one
    assert means["published"] >= fifo_mean and means["off"] < fifo_mean


def test_cli_frontend_flag(capsys):
    from ui.cli import main
    base = ["simulate", "serve", "--model", "llama3.1-8b", "--cluster", "dgx-h100", "--plan", "tp=1",
            "--concurrency", "2", "--requests", "4", "--prompt-len", "64", "--output-len", "4", "--json"]
    assert main(base + ["--frontend", "on"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["plan"]["frontend"] == "on"
    code = main(base + ["--frontend", "fast"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--frontend" in err
