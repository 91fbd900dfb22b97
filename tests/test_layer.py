"""The transformer layer is described once: training and serving cost the same GEMMs, attention
and MoE block from `simulator.ops.transformer_layer`, and every byte constant has one home."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from hwmodels.clusters import load_cluster
from hwmodels.kernels import kernel_model
from simulator.models import load_model
from simulator.ops import SERVING_ENGINE, LayerPass, layer_ops, transformer_layer
from simulator.serving.costs import IterationCost
from simulator.training import TrainingJob, TrainingPlan

ROOT = Path(__file__).resolve().parent.parent
T = 4096  # tokens: one training sequence, one serving prefill
EXPERT_GEMMS = ("expert_fc1", "expert_fc2")  # one GEMM per expert in training, grouped in serving


def _gemms(ops) -> dict:
    """name -> (FLOPs, seconds) of the GEMMs (compute ops with FLOPs) outside the attention core."""
    return {o.name: (o.flops, o.time_s) for o in ops
            if o.kind == "compute" and o.flops > 0 and not o.name.startswith("attn")}


def _training_forward(model, cluster, tp: int, moe: bool):
    job = TrainingJob(model, T, 64, flash_attention=True, dropout=False)
    plan = TrainingPlan(tp=tp, sp=model.is_moe and tp > 1, ep=1)
    return layer_ops(model, job, plan, cluster, moe, "fwd")


def _serving_forward(model, cluster, tp: int, moe: bool):
    ic = IterationCost(model, cluster, tp)
    lp = LayerPass(tokens=T, tp=tp, ep_distinct_tokens=False, expert_tp=tp, kernels=SERVING_ENGINE)
    return transformer_layer(model, lp, ic.km, ic.km16, ic._comm_s, moe, "fwd")


@pytest.mark.parametrize("name,tp", [("llama3.1-8b", 1), ("llama3-70b", 8), ("mixtral-8x7b", 1),
                                     ("deepseek-v3", 1)])
def test_prefill_costs_the_gemms_of_a_training_forward(name, tp):
    """Dense, GQA, MoE and MLA: a prefill of T tokens runs the GEMMs of a training forward of one
    T-token sequence — same names, FLOPs and seconds (the routed experts: same FLOPs, grouped)."""
    model, cluster = load_model(name), load_cluster("dgx-h100")
    for moe in ((False, True) if model.is_moe else (False,)):
        train = _gemms(_training_forward(model, cluster, tp, moe))
        serve = _gemms(_serving_forward(model, cluster, tp, moe))
        assert set(train) == set(serve)
        for gemm, (flops, seconds) in train.items():
            assert serve[gemm][0] == pytest.approx(flops, rel=1e-12), gemm
            if gemm not in EXPERT_GEMMS:
                assert serve[gemm][1] == pytest.approx(seconds, rel=1e-12), gemm
    if model.is_mla:  # MLA's down- and up-projections as separate GEMMs in both (DeepSeek-V2 §2.1.2)
        assert {"qkv.q_down", "qkv.q_up", "qkv.kv_down", "qkv.kv_up"} <= set(train)


@pytest.mark.parametrize("name", ["llama3.1-8b", "deepseek-v3"])
def test_prefill_attention_is_the_training_forward_attention(name):
    model, cluster = load_model(name), load_cluster("dgx-h100")
    attn = [o for o in _training_forward(model, cluster, 1, False) if o.name == "attn"]
    ic = IterationCost(model, cluster, 1)
    assert ic.prefill_attention_s(1, T, 0) == pytest.approx(model.num_layers * attn[0].time_s, rel=1e-12)


@pytest.mark.parametrize("name", ["llama3.1-8b", "mixtral-8x7b", "deepseek-v3"])
def test_serving_pass_is_built_from_the_layer_ops(name):
    """Everything but attention and the LM head: the layer's op list times the layer count; a MoE
    layer's routed experts from the measured fused-MoE kernel where one applies."""
    model, cluster = load_model(name), load_cluster("dgx-h100")
    ic = IterationCost(model, cluster, 1)
    def layer_s(moe: bool) -> float:
        ops = _serving_forward(model, cluster, 1, moe)
        fused = ic.fused_moe_s(T) if moe else None
        if fused is None:
            return sum(o.time_s for o in ops)
        return fused + sum(o.time_s for o in ops if not o.name.startswith(ic.FUSED_MOE_OPS))
    n_moe = model.num_moe_layers
    expected = (model.num_layers - n_moe) * layer_s(False) + (n_moe * layer_s(True) if n_moe else 0.0)
    assert ic.dense_s(T) == pytest.approx(expected, rel=1e-12)


def test_training_fp8_router_and_serving_router_dtypes():
    """Serving engines keep the MoE router unquantised; it runs on the 16-bit kernel model."""
    model, cluster = load_model("mixtral-8x7b"), load_cluster("dgx-h100")
    ic = IterationCost(model, cluster, 1, dtype="fp8")
    lp = LayerPass(tokens=T, ep_distinct_tokens=False, kernels=SERVING_ENGINE)
    router = [o for o in transformer_layer(model, lp, ic.km, ic.km16, ic._comm_s, True, "fwd")
              if o.name == "router"][0]
    assert router.time_s == kernel_model(cluster.device.name, "bf16").gemm_s(T, model.num_experts,
                                                                             model.hidden_size)


@pytest.mark.parametrize("constant", ["ACT_BYTES", "WEIGHT_BYTES", "GRAD_BYTES", "OPTIMIZER_BYTES"])
def test_each_byte_constant_is_defined_once(constant):
    pattern = re.compile(rf"^\s*{constant}\s*(:[^=]*)?=(?!=)", re.M)
    homes = [str(p.relative_to(ROOT))
             for package in ("hwmodels", "simulator", "planner", "validation", "ui")
             for p in (ROOT / package).rglob("*.py") if pattern.search(p.read_text())]
    assert homes == ["simulator/precision.py"]
