"""Activation offload to host memory (plan act_offload; Megatron-Core --cpu-offloading-num-layers,
Transformer Engine cpu_offload.py): memory, the copy stalls, the engines, the plan key."""
from dataclasses import replace

import pytest

from hwmodels.clusters import load_cluster
from hwmodels.errors import InputError
from simulator.analytic import _kernel_terms, estimate
from simulator.des import simulate
from simulator.memory import layer_activation_bytes, layer_terms_job
from simulator.models import load_model
from simulator.software import apply_software
from simulator.training import TrainingJob, TrainingPlan, parse_plan
from validation import published

M70 = load_model("llama3-70b")
GB200 = published._bridge_cluster("DGX-GB200", 64)
JOB = apply_software(TrainingJob(model=M70, seq_len=8192, global_batch=128, dtype="fp8"), "megatron-bridge")


def _plan(off, rc="none"):
    return TrainingPlan(dp=64, mb=2, zero=3, recompute=rc, act_offload=off)


def test_offloaded_layers_leave_the_device_but_one_in_flight():
    base, off = estimate(JOB, _plan(0), GB200), estimate(JOB, _plan(40), GB200)
    layer = layer_activation_bytes(M70, JOB, _plan(0), False)
    # 40 of 80 layers' activations go to host memory; one layer's stays as the copy in flight
    assert base.memory["activations_bytes"] - off.memory["activations_bytes"] == pytest.approx(39 * layer, rel=1e-6)
    capped = estimate(JOB, TrainingPlan(dp=64, mb=2, zero=3, act_offload=79), GB200)
    assert capped.memory["activations_bytes"] == pytest.approx(base.memory["activations_bytes"] - 78 * layer, rel=1e-6)


def test_the_copy_stalls_only_where_it_outlasts_the_layer():
    """Per offloaded layer and pass: max(0, activation bytes / host link - the layer's pass)."""
    base = estimate(JOB, _plan(0), GB200).breakdown_s["compute"]
    fast = estimate(JOB, _plan(40), GB200).breakdown_s["compute"]  # NVLink-C2C, 225 GB/s per GPU
    assert fast == pytest.approx(base, rel=1e-9)  # the copies hide behind the next layer
    slow = replace(GB200, device=replace(GB200.device, host_bytes_per_s=5e9))
    layer = layer_activation_bytes(M70, JOB, _plan(0), False)
    stalled = estimate(JOB, _plan(40), slow).breakdown_s["compute"]
    # one micro-batch of 2 sequences per GPU per step (128 / 64 / 2): 40 layers' copies, each
    # beyond its layer's forward and its backward
    k = _kernel_terms(layer_terms_job(JOB), slow, 1, 1, 1, False, 2, 0)
    copy = layer / 5e9
    stall = 40 * (max(0.0, copy - k["fwd_dense"]) + max(0.0, copy - k["bwd_dense"]))
    assert stall > 0
    assert stalled - base == pytest.approx(stall, rel=1e-6)
    assert estimate(JOB, _plan(0), slow).breakdown_s["compute"] == pytest.approx(base)  # no offload, no link


def test_des_runs_the_same_stalls():
    slow = replace(GB200, device=replace(GB200.device, host_bytes_per_s=5e9))
    a = estimate(JOB, _plan(40), slow)
    d, _ = simulate(JOB, _plan(40), slow)
    assert d.step_time_s == pytest.approx(a.step_time_s, rel=0.03)
    assert d.step_time_s > simulate(JOB, _plan(0), slow)[0].step_time_s


def test_megatron_fsdp_bridge_rows_find_the_recipes_offload():
    """Megatron-Bridge perf_recipes/llama/gb200|gb300/llama3.py (FP8-CS): cpu_offloading_num_layers
    40 on GB200 and 20 on GB300; the least offload that fits without recompute is the same."""
    cases, _ = published.megatron_bridge(path=published.BRIDGE_BLACKWELL)
    fsdp = {c["name"]: c["plan"] for c in cases if c["name"].endswith("fsdp") and "FP8-CS" in c["name"]}
    assert any("GB200" in n and p.endswith("act_offload=40") for n, p in fsdp.items())
    assert any("GB300" in n and p.endswith("act_offload=20") for n, p in fsdp.items())
    assert all("recompute=none" in p for p in fsdp.values())


def test_plan_key_round_trips_and_bad_values_are_one_line_errors():
    p = parse_plan("dp=64,zero=3,mb=2,act_offload=20")
    assert p.act_offload == 20 and parse_plan(p.to_string()) == p
    with pytest.raises(InputError, match="act_offload=-1 must be >= 0"):
        parse_plan("dp=64,act_offload=-1")
    with pytest.raises(InputError, match=r"act_offload=80; valid: 0..79"):
        estimate(JOB, _plan(80), GB200)
    with pytest.raises(InputError, match="needs recompute none or selective"):
        estimate(JOB, _plan(10, "full"), GB200)


def test_a_stage_offloads_at_most_all_but_its_last_layer():
    """Transformer Engine's offload handler keeps the layer whose backward runs first: with 40
    layers per stage (pp=2), act_offload=60 offloads 39 of them, as act_offload=39 does."""
    job = apply_software(TrainingJob(model=M70, seq_len=8192, global_batch=64, dtype="fp8"), "megatron-bridge")
    acts = lambda off: estimate(job, TrainingPlan(dp=32, pp=2, mb=1, zero=1, act_offload=off),  # noqa: E731
                                GB200).memory["activations_bytes"]
    assert acts(60) == pytest.approx(acts(39))
    assert acts(39) < acts(38) < acts(0)
