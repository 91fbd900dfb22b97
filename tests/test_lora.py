"""LoRA fine-tuning (TrainingJob.lora_rank / lora_targets; Hu et al. 2021, arXiv 2106.09685):
frozen base weights take no weight-gradient GEMM and keep no optimizer state or gradient, a
frozen linear keeps no input (Transformer Engine linear.py: backward_needs_input = is_grad_enabled
and weight.requires_grad), rank-r adapters on the targeted linears (Megatron-Bridge peft/lora.py)."""
from dataclasses import replace

import pytest

from hwmodels.clusters import load_cluster
from hwmodels.collectives import collective_s
from hwmodels.errors import InputError
from simulator.analytic import _dp_terms, _lora_layers, estimate
from simulator.memory import EVEN, layer_activation_bytes, lora_layer_params
from simulator.models import load_model
from simulator.ops import layer_cost, layer_ops
from simulator.precision import ACT_BYTES, OPTIMIZER_BYTES, WEIGHT_BYTES
from simulator.software import apply_software
from simulator.training import TrainingJob, TrainingPlan
from ui.cli import main

M70 = load_model("llama3-70b")
H100 = load_cluster("dgx-h100", nodes=1)
BASE = apply_software(TrainingJob(M70, 4096, 32, dtype="bf16"), "megatron-bridge")
LORA = replace(BASE, lora_rank=32, lora_targets=("qkv",))
PLAN = TrainingPlan(dp=1, tp=2, pp=4, vpp=20, mb=1, schedule="interleaved", sp=True)


def test_adapter_parameters_are_r_times_inputs_plus_outputs():
    """A is r×k, B is n×r (Hu et al. §4.1): on Llama 3 70B's fused QKV (k = 8192, n = 8192 + 2·1024)
    rank 32 gives 32·(8192 + 10240) per layer; all four targets add proj and the gated MLP."""
    assert lora_layer_params(M70, LORA, False) == 32 * (8192 + 10240)
    every = replace(LORA, lora_targets=("qkv", "proj", "fc1", "fc2"))
    want = 32 * ((8192 + 10240) + (8192 + 8192) + (8192 + 2 * 28672) + (28672 + 8192))
    assert lora_layer_params(M70, every, False) == want
    assert lora_layer_params(M70, BASE, False) == 0.0


def test_frozen_linears_run_no_weight_gradient_and_targets_add_their_adapter():
    ops = layer_ops(M70, LORA, PLAN, H100, False, "bwd")
    assert [o.name for o in ops if o.wgrad] == ["qkv.lora_b.wgrad", "qkv.lora_a.wgrad"]
    full, lora = layer_cost(M70, BASE, PLAN, H100, False), layer_cost(M70, LORA, PLAN, H100, False)
    adapters = sum(o.time_s for o in ops if ".lora_" in o.name)
    assert lora.bwd_compute_s == pytest.approx(full.bwd_compute_s - full.wgrad_s + adapters, rel=1e-9)
    assert 0 < adapters < 0.05 * full.wgrad_s


def test_only_the_adapters_carry_gradients_and_optimizer_states():
    e, full = estimate(LORA, PLAN, H100), estimate(BASE, PLAN, H100)
    assert e.memory["weights_bytes"] == pytest.approx(full.memory["weights_bytes"], rel=1e-3)
    stage = e.memory["peak_stage"]
    layers = 80 / 4  # the stage's layers
    adapter = layers * lora_layer_params(M70, LORA, False) / 2  # over tp = 2
    assert e.memory["optimizer_bytes"] == pytest.approx(OPTIMIZER_BYTES * adapter, rel=1e-6), stage
    assert full.memory["optimizer_bytes"] > 1000 * e.memory["optimizer_bytes"]
    assert e.breakdown_s["optimizer"] < 1e-2 * full.breakdown_s["optimizer"]


def test_frozen_linears_keep_no_inputs():
    """Without SP and with tp = 1, bf16: a frozen linear drops its 2-byte input; the targeted QKV
    keeps its input for A's gradient, and the adapter keeps its rank-r output."""
    plan = TrainingPlan(dp=8, mb=1)
    sb, h, f, out = 4096, M70.hidden_size, M70.ffn_hidden_size, M70.attn_out_dim
    gap = layer_activation_bytes(M70, BASE, plan, False) - layer_activation_bytes(M70, LORA, plan, False)
    assert gap == pytest.approx(sb * ACT_BYTES * (h + out + f) - sb * ACT_BYTES * 32, rel=1e-9)
    full = TrainingPlan(dp=8, mb=1, recompute="full")  # the layer input alone either way
    assert layer_activation_bytes(M70, LORA, full, False) == layer_activation_bytes(M70, BASE, full, False)


def test_data_parallel_reduces_and_updates_only_the_adapters():
    cl = load_cluster("dgx-h100", nodes=4)
    d = _dp_terms(M70, cl, "bf16", "1f1b", 8, 1, 1, 1, 4, 1, 0, False, {}, EVEN, 1, lora=_lora_layers(LORA))
    adapter = 80 * lora_layer_params(M70, LORA, False) / 8
    assert d["grad"][0] == pytest.approx(collective_s(cl, "all_reduce", 4, 8, adapter * 2), rel=1e-9)
    full = _dp_terms(M70, cl, "bf16", "1f1b", 8, 1, 1, 1, 4, 1, 0, False, {}, EVEN, 1)
    assert full["grad"][0] > 100 * d["grad"][0]
    # ZeRO-3 still gathers the frozen weights every pass, but reduce-scatters the adapters only
    z3 = _dp_terms(M70, cl, "bf16", "1f1b", 8, 1, 1, 1, 4, 1, 3, False, {}, EVEN, 1, lora=_lora_layers(LORA))
    z3_full = _dp_terms(M70, cl, "bf16", "1f1b", 8, 1, 1, 1, 4, 1, 3, False, {}, EVEN, 1)
    assert z3["gather"][0] > z3_full["gather"][0] and z3["grad"][0] < 0.01 * z3_full["grad"][0]


def test_lora_steps_faster_and_fits_where_full_training_does_not():
    """Switched off (rank 0) the same 8-GPU Llama 3 70B plan is full training: a third more
    GEMM work and 16-byte states for every weight, which do not fit an H100."""
    lora, full = estimate(replace(LORA, dtype="fp8"), PLAN, H100), estimate(replace(BASE, dtype="fp8"), PLAN, H100)
    assert lora.fits and not full.fits
    assert 1.2 < full.step_time_s / lora.step_time_s < 1.5
    assert lora.mfu < full.mfu * 1.01  # model FLOPs leave out the frozen weights' gradients


def test_bad_lora_settings_are_refused_in_one_line(capsys):
    with pytest.raises(InputError, match=r"lora rank -1 must be an integer >= 0"):
        TrainingJob(M70, 4096, 8, lora_rank=-1)
    with pytest.raises(InputError, match=r"lora targets qkv,mlp; valid: one or more of qkv, proj, fc1, fc2"):
        TrainingJob(M70, 4096, 8, lora_rank=8, lora_targets=("qkv", "mlp"))
    with pytest.raises(InputError, match=r"LoRA on hybrid Mamba-2 models is not modelled"):
        TrainingJob(load_model("nemotron-3-nano-30b-a3b"), 4096, 8, lora_rank=8)
    base = ["simulate", "train", "--model", "llama3-70b", "--cluster", "dgx-h100", "--nodes", "1",
            "--seq-len", "4096", "--global-batch", "32"]
    for extra, msg in ((["--lora-rank", "8", "--lora-targets", "qkv,mlp"], "valid: one or more of qkv"),
                       (["--lora-targets", "qkv"], "need a LoRA rank > 0"),
                       (["--lora-rank", "-2"], "--lora-rank=-2 must be an integer >= 0")):
        with pytest.raises(SystemExit) as ex:
            code = main(base + extra)
            raise SystemExit(code)
        err = capsys.readouterr().err
        assert ex.value.code == 2 and msg in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
