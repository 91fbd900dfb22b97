"""Pin tests for simulator/serving/frontend.py (written from surviving mutants): the API-server
thread as a FIFO single server whose intake runs in the share of the thread that output
streaming leaves (processor sharing of one core, Kleinrock, J. ACM 14(2) 1967), with numbers
worked out by hand in each docstring."""
from __future__ import annotations

import pytest

from hwmodels.errors import InputError
from simulator.serving.frontend import MAX_LOAD, PROFILES, Frontend, FrontendCosts, frontend_costs

C = FrontendCosts("t", request_s=2e-3, tokenize_s_per_token=1e-5, detokenize_s_per_token=3e-6,
                  stream_s_per_token=7e-6)


def test_intake_and_output_costs_per_request_and_token():
    """Intake = HTTP + tokenisation: 2 ms + 500 · 10 µs = 7 ms; an output token = incremental
    detokenisation + one server-sent event: 3 + 7 = 10 µs."""
    assert C.intake_s(500) == pytest.approx(7e-3, rel=1e-12)
    assert C.intake_s(0) == pytest.approx(2e-3, rel=1e-12)
    assert C.output_s_per_token == pytest.approx(1e-5, rel=1e-12)


def test_an_arrival_at_the_moment_the_thread_frees_starts_then():
    """Request A at t = 0 (7 ms of intake) frees the thread at 7 ms; B arriving at exactly 7 ms
    starts at once: handed over at 7 + 2 = 9 ms; C at 20 ms finds the thread idle: 22 ms.
    Mean delay between arrival and hand-over: (7 + 2 + 2) / 3 ms."""
    f = Frontend(C)
    assert f.intake(0.0, 500) == pytest.approx(7e-3)
    assert f.intake(7e-3, 0) == pytest.approx(9e-3)
    assert f.intake(20e-3, 0) == pytest.approx(22e-3)
    s = f.summary()
    assert s["requests"] == 3 and s["mean_intake_s"] == pytest.approx(11e-3 / 3)
    assert s["profile"] == "t" and s["max_output_load"] == 0.0 and s["saturated"] is False


def test_streaming_load_stretches_intake_and_the_peak_is_kept():
    """50,000 output tokens/s at 10 µs each take half the thread: a 7 ms intake takes 14 ms.
    The load follows the latest pass (back to 0 when it idles) while the summary keeps the
    peak; 95,000 tokens/s (95%) is the most the model allows without flagging saturation."""
    f = Frontend(C)
    f.output_rate(50_000)
    assert f.load == pytest.approx(0.5)
    assert f.intake(0.0, 500) == pytest.approx(14e-3)
    f.output_rate(10_000)
    assert f.load == pytest.approx(0.1) and f.max_load == pytest.approx(0.5)
    f.output_rate(0.0)
    assert f.load == 0.0 and f.summary()["max_output_load"] == pytest.approx(0.5)
    f.output_rate(94_000)
    assert not f.saturated and f.load == pytest.approx(0.94)
    f.output_rate(200_000)
    assert f.saturated and f.load == MAX_LOAD == 0.95
    assert f.intake(1.0, 500) == pytest.approx(1.0 + 7e-3 / 0.05)


def test_an_idle_frontend_summary():
    s = Frontend(C).summary()
    assert s == {"profile": "t", "requests": 0, "mean_intake_s": 0.0, "max_output_load": 0.0, "saturated": False}


@pytest.mark.parametrize("text", ["Measured", "ON", "published", "Off"])
def test_profile_names_are_case_insensitive(text):
    c = frontend_costs(text)
    if text.lower() == "off":
        assert c is None
    else:
        assert c.profile == ("measured" if text.lower() == "on" else text.lower())
        assert c.request_s > 0 and c.tokenize_s_per_token > 0 and c.detokenize_s_per_token > 0
        assert c.stream_s_per_token > 0 and c.source


def test_unknown_profile_lists_the_valid_ones():
    with pytest.raises(InputError, match="frontend 'fastest'; valid: " + ", ".join(PROFILES)):
        frontend_costs("fastest")


def test_frontend_costs_are_shared_immutable_values():
    """One FrontendCosts per profile is shared by every replica (module cache): it cannot change."""
    import dataclasses
    c = frontend_costs("measured")
    assert frontend_costs("on") is c
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.request_s = 0.0
    assert hash(C) == hash(dataclasses.replace(C))
