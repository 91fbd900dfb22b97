"""torchtitan as it runs: eager elementwise kernels, op-level selective checkpointing, torchao
Float8 casts, and its published Llama runs (validation only)."""
import pytest

from hwmodels.clusters import load_cluster
from hwmodels.errors import InputError
from simulator.analytic import estimate
from simulator.memory import layer_activation_bytes
from simulator.models import load_model
from simulator.ops import layer_cost, layer_ops
from simulator.software import apply_software
from simulator.training import TrainingJob, TrainingPlan
from validation import published

A100 = load_cluster("dgx-a100", nodes=8)
H200 = load_cluster("dgx-h200", nodes=4)
LLAMA8 = load_model("llama3-8b")


def _job(software="torchtitan", dtype="bf16", **kw):
    return apply_software(TrainingJob(model=LLAMA8, seq_len=8192, global_batch=64, dtype=dtype), software, **kw)


def _ops(job, plan, phase="fwd"):
    return {o.name: o for o in layer_ops(LLAMA8, job, plan, A100, False, phase)}


PLAN = TrainingPlan(dp=64, mb=1, zero=3, recompute="selective")


def test_eager_rmsnorm_moves_the_bytes_of_its_five_fp32_kernels():
    # torchtitan norms.py RMSNorm: x.float() r2 w4, pow r4 w4, mean r4, x*rsqrt r4 w4, type_as r4 w2,
    # *weight r2 w2 = 36 bytes per element, against one fused read + write (4 bytes)
    eager, fused = _ops(_job(), PLAN), _ops(_job(eager_elementwise=False), PLAN)
    elements = 8192 * LLAMA8.hidden_size
    assert eager["norm1"].bytes == pytest.approx(36 * elements)
    assert fused["norm1"].bytes == pytest.approx(4 * elements)
    assert eager["norm1"].time_s > 8 * fused["norm1"].time_s  # memory-bound: time follows the bytes


def test_eager_rotary_repeat_kv_and_output_copy_exist_only_in_eager():
    eager, fused = _ops(_job(), PLAN), _ops(_job(eager_elementwise=False), PLAN)
    q, kv = LLAMA8.q_dim, LLAMA8.kv_dim
    assert eager["rope"].bytes == pytest.approx(20 * 8192 * (q + kv))  # fp32 complex views
    # repeat_kv: read K and V (kv each), write them expanded to every query head (q each)
    assert eager["repeat_kv"].bytes == pytest.approx(8192 * 2 * (kv + q) * 2)
    assert eager["attn_out_copy"].bytes == pytest.approx(8192 * 2 * q * 2)
    assert eager["act"].bytes == pytest.approx(10 * 8192 * LLAMA8.ffn_hidden_size)  # silu, then the product
    assert not {"rope", "repeat_kv", "attn_out_copy"} & set(fused)
    assert fused["act"].bytes == pytest.approx(6 * 8192 * LLAMA8.ffn_hidden_size)


def test_op_sac_recomputes_wk_wo_w3_and_the_elementwise_work_not_attention():
    # torchtitan _custom_policy: every second aten.mm is recomputed (wk, wo, w3 of wq wk wv wo w1 w3 w2)
    job = _job()
    fwd = _ops(job, PLAN)
    c = layer_cost(LLAMA8, job, PLAN, A100, False)
    share_qkv = LLAMA8.kv_dim / (LLAMA8.q_dim + 2 * LLAMA8.kv_dim)
    gemm = share_qkv * fwd["qkv"].time_s + fwd["proj"].time_s + 0.5 * fwd["fc1"].time_s
    elementwise = sum(o.time_s for n, o in fwd.items() if n not in ("qkv", "proj", "fc1", "fc2", "attn"))
    assert c.recompute_s == pytest.approx(gemm + elementwise, rel=1e-9)
    flops = share_qkv * fwd["qkv"].flops + fwd["proj"].flops + 0.5 * fwd["fc1"].flops
    assert c.recompute_flops == pytest.approx(flops, rel=1e-9)
    # Megatron's selective recompute with flash attention recomputes nothing (switch-off)
    assert layer_cost(LLAMA8, _job(selective_policy="attention"), PLAN, A100, False).recompute_s == 0.0


def test_op_sac_keeps_the_saved_matmul_outputs_and_attention_output():
    job, s, h = _job(), 8192, LLAMA8.hidden_size
    saved = s * (2 * (h + LLAMA8.q_dim + LLAMA8.kv_dim + LLAMA8.q_dim + LLAMA8.ffn_hidden_size + h)
                 + 4 * LLAMA8.num_heads)
    assert layer_activation_bytes(LLAMA8, job, PLAN, False) == pytest.approx(saved)
    full = layer_activation_bytes(LLAMA8, job, TrainingPlan(dp=64, mb=1, zero=3, recompute="full"), False)
    none = layer_activation_bytes(LLAMA8, job, TrainingPlan(dp=64, mb=1, zero=3, recompute="none"), False)
    assert full < saved < none


def test_torchao_float8_casts_cost_per_gemm_and_only_in_fp8():
    plan = TrainingPlan(dp=32, mb=2, zero=3, recompute="selective")
    fp8 = {o.name: o for o in layer_ops(LLAMA8, _job("torchtitan-compile", "fp8"), plan, H200, False, "fwd")}
    m, k, n = 2 * 8192, LLAMA8.hidden_size, LLAMA8.ffn_hidden_size
    assert fp8["fc2.fp8_cast"].bytes == pytest.approx(5 * m * n)  # amax read + cast read + fp8 write
    bwd = {o.name: o for o in layer_ops(LLAMA8, _job("torchtitan-compile", "fp8"), plan, H200, False, "bwd")}
    assert bwd["fc2.fp8_cast"].bytes == pytest.approx(5 * m * k + 2 * m * k + 3 * m * n + 2 * n * k)
    bf16 = {o.name for o in layer_ops(LLAMA8, _job("torchtitan-compile"), plan, H200, False, "fwd")}
    te = {o.name for o in layer_ops(LLAMA8, _job("megatron-core", "fp8"), plan, H200, False, "fwd")}
    assert not any(n.endswith(".fp8_cast") for n in bf16 | te)


def test_each_mechanism_slows_the_a100_8b_step_and_the_profile_lands_near_the_published_run():
    # torchtitan docs/performance.md (2024-08): Llama 3 8B, 64 A100, selective op AC: 2,973 tokens/s/GPU
    def tps(**kw):
        return estimate(_job(**kw), PLAN, A100).tokens_per_s / 64
    full_model = tps()
    assert tps(eager_elementwise=False) > 1.08 * full_model
    assert tps(selective_policy="attention") > 1.05 * full_model
    assert full_model == pytest.approx(2973, rel=0.10)


def test_compile_profile_differs_from_eager_only_in_the_elementwise_kernels():
    eager, compiled = _job("torchtitan"), _job("torchtitan-compile")
    assert eager.eager_elementwise and not compiled.eager_elementwise
    assert (eager.selective_policy, eager.fp8_dynamic_casts) == (compiled.selective_policy, compiled.fp8_dynamic_casts)


def test_unknown_selective_policy_is_refused_with_the_valid_names():
    with pytest.raises(InputError, match="selective policy 'layer'; valid: attention, op"):
        TrainingJob(model=LLAMA8, seq_len=8192, global_batch=8, selective_policy="layer")


def test_torchtitan_table_error_bars_and_skipped_rows_named():
    cases, skipped = published.torchtitan_runs()
    assert len(cases) == 10  # the two "selective layer" rows run as recompute_layers (every 2nd block)
    mape = sum(abs(c["error_pct"]) for c in cases) / len(cases)
    assert mape <= 12.0
    assert max(abs(c["error_pct"]) for c in cases) <= 22.0
    assert len(skipped) == 7 and all("500 W" in s["reason"] for s in skipped)
    layer = [c for c in cases if "selective layer" in c["name"]]
    # every 2nd of Llama 3 8B's 32 and Llama 2 13B's 40 blocks recomputed, within 10% of the table
    assert sorted(c["plan"].split("recompute_layers=")[1].split(",")[0] for c in layer) == ["16", "20"]
    assert all(c["fits"] and abs(c["error_pct"]) <= 10.0 for c in layer)
