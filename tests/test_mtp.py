"""Multi-token prediction in training (DeepSeek-V3, arXiv 2412.19437 §2.2; Megatron-Core
--mtp-num-layers): parameters, the last stage's time and memory, layouts, the published runs."""
from dataclasses import replace

import pytest

from hwmodels.clusters import load_cluster
from hwmodels.errors import InputError
from simulator.analytic import _kernel_terms, estimate
from simulator.memory import layer_terms_job, placement, stage_params
from simulator.models import from_hf_config, load_model
from simulator.training import TrainingJob, parse_plan, validate_plan
from validation import published

DS = load_model("deepseek-v3")
H100 = load_cluster("dgx-h100", nodes=32)


def test_deepseek_v3_trains_one_mtp_module_of_its_published_size():
    # HF config num_nextn_predict_layers: 1; DeepSeek-V3 README_WEIGHTS: the MTP module adds 11.5B
    # unique parameters (its embedding and output head are shared with the main model)
    assert DS.mtp_layers == 1
    assert DS.mtp_params() == pytest.approx(11.5e9, rel=0.02)
    assert DS.num_params == pytest.approx(671e9, rel=0.01)  # the main model's count is unchanged
    cfg = {"model_type": "deepseek_v3", "num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4,
           "intermediate_size": 512, "vocab_size": 1000, "num_nextn_predict_layers": 2}
    assert from_hf_config(cfg).mtp_layers == 2


def test_mtp_costs_one_more_block_projection_and_head_on_the_last_stage():
    job = TrainingJob(model=DS, seq_len=4096, global_batch=256, dtype="fp8")
    lj, lj0 = layer_terms_job(job), layer_terms_job(replace(job, model=replace(DS, mtp_layers=0)))
    k, k0 = _kernel_terms(lj, H100, 1, 1, 8, False, 1, 0), _kernel_terms(lj0, H100, 1, 1, 8, False, 1, 0)
    # per depth: the head again, one MoE block, the 2h→h projection, norms and the next token's embedding
    assert k["head_fwd"] - 2 * k0["head_fwd"] > k0["fwd_moe"]
    assert k["head_fwd"] - 2 * k0["head_fwd"] < 1.1 * k0["fwd_moe"] + 0.01
    assert k["head_bwd"] - 2 * k0["head_bwd"] > k0["bwd_moe"]
    assert k["mtp_fwd_ep"] == pytest.approx(k0["fwd_ep_moe"]) and k0["mtp_fwd_ep"] == 0.0


def test_mtp_parameters_live_with_the_loss_experts_over_ep():
    pl = placement(DS, "1f1b", 16, 1, (3, 2, False, False, ""))
    dense, expert = stage_params(DS, pl, 1, 64)
    dense0, expert0 = stage_params(replace(DS, mtp_layers=0), pl, 1, 64)
    experts = DS.num_experts * DS.expert_params()
    assert expert[-1] - expert0[-1] == pytest.approx(experts / 64)
    assert dense[-1] - dense0[-1] == pytest.approx(DS.mtp_params() - experts)
    assert (dense[:-1] == dense0[:-1]).all() and (expert[:-1] == expert0[:-1]).all()


def test_mtp_slows_the_last_stage_only_where_it_is_the_bottleneck():
    """16 chunks of 4 layers, the last holding 1 layer + MTP + loss (Megatron-Bridge's DeepSeek-V3
    layout): the MTP block does not make the step slower than the 4-layer stages; on an even
    layout with no room left in the last stage it does."""
    job = TrainingJob(model=DS, seq_len=4096, global_batch=1024, dtype="fp8")
    cl = load_cluster("dgx-h100", nodes=32)
    roomy = parse_plan("pp=16,ep=16,mb=1,layout=Et*4|(t*4|)*14tmL", cl.num_devices)
    job0 = replace(job, model=replace(DS, mtp_layers=0))
    roomy0 = parse_plan("pp=16,ep=16,mb=1,layout=Et*4|(t*4|)*14tL", cl.num_devices)
    assert estimate(job, roomy, cl).step_time_s == pytest.approx(estimate(job0, roomy0, cl).step_time_s, rel=0.02)
    tight = parse_plan("pp=16,ep=16,mb=1,first=1,last=4", cl.num_devices)
    assert estimate(job, tight, cl).step_time_s > 1.05 * estimate(job0, tight, cl).step_time_s


def test_layouts_place_mtp_with_the_loss_and_count_it():
    job = TrainingJob(model=DS, seq_len=4096, global_batch=1024, dtype="fp8")
    ok = parse_plan("pp=16,ep=16,mb=1,layout=Et*4|(t*4|)*14tmL", 256)
    validate_plan(ok, job, 256)
    with pytest.raises(InputError, match="holds 2 MTP layers \\('m'\\) but the model trains 1"):
        validate_plan(parse_plan("pp=16,ep=16,mb=1,layout=Et*4|(t*4|)*14tmmL", 256), job, 256)
    with pytest.raises(InputError, match="modelled with the loss in the last stage"):
        validate_plan(parse_plan("pp=16,ep=16,mb=1,layout=Et*4|(t*4|)*13t*4m|tL", 256), job, 256)


def test_bridge_deepseek_v3_rows_replay_with_the_recipes_layouts():
    """Megatron-Bridge _get_deepseek_v3_pipeline_layout: 16 chunks "Et*4|(t*4|)*14tmL", 8 chunks
    "Et*8|(t*8|)*6t*5mL"; the w/o-MTP runs without 'm'."""
    cases, skipped = published.megatron_bridge(path=published.BRIDGE_BLACKWELL)
    ds = [c for c in cases if c["name"].startswith("DeepSeekV3")]
    assert len(ds) >= 10
    assert all("layout=Et*4|(t*4|)*14tmL" in c["plan"] or "layout=Et*8|(t*8|)*6t*5mL" in c["plan"]
               for c in ds if "w/o MTP" not in c["name"])
    assert all("m" not in c["plan"].split("layout=")[1] for c in ds if "w/o MTP" in c["name"])
    assert not any("MTP" in s["reason"] for s in skipped if "DeepSeek" in s["row"])


def test_the_mtp_block_is_like_the_models_last_layer():
    """DeepSeek-V3 §2.2: the MTP module's transformer block is like the main model's; with MoE
    only on every other layer (moe_layer_freq 2) and a dense last layer, the block is dense."""
    m = replace(DS, num_layers=4, first_dense_layers=0, moe_layer_freq=2)  # layers 0, 2 MoE; 3 dense
    assert m.is_moe_layer(2) and not m.is_moe_layer(3)
    assert m.mtp_params() == 2 * m.hidden_size ** 2 + 3 * m.norm_params() + m.layer_params(3)
    job = TrainingJob(model=m, seq_len=1024, global_batch=64, dtype="fp8")
    k = _kernel_terms(layer_terms_job(job), H100, 1, 1, 1, False, 1, 0)
    k0 = _kernel_terms(layer_terms_job(replace(job, model=replace(m, mtp_layers=0))), H100, 1, 1, 1, False, 1, 0)
    block = k["head_fwd"] - 2 * k0["head_fwd"]
    assert k0["fwd_dense"] < block < k0["fwd_moe"]
    pl = placement(m, "1f1b", 2, 1)
    dense, expert = stage_params(m, pl, 1, 1)
    dense0, expert0 = stage_params(replace(m, mtp_layers=0), pl, 1, 1)
    assert expert[-1] == expert0[-1]  # a dense MTP block brings no experts
    assert dense[-1] - dense0[-1] == pytest.approx(m.mtp_params())
