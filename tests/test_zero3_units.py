"""ZeRO-3 collectives unit by unit, and DeepSpeed 0.3's ZeRO-3 as it ran in spring 2021
(simulator.analytic._dp_terms, the `deepspeed-0.3` software profile).

Sources: PyTorch FSDP auto-wrap (one unit per transformer block, the embedding and head apart);
DeepSpeed v0.3 deepspeed/runtime/zero/stage3.py fetch_sub_module (one gather per sub-module's
weight), partition_parameters.py _allgather_param (torch.cuda.synchronize() before every
all-gather; PR #1188: "the async version is not async at all"), PyTorch ≤1.9 ProcessGroupNCCL list
collectives (one copy kernel per rank; DeepSpeed PR #1453 moved to the *_base collectives)."""
from dataclasses import replace

import pytest

from hwmodels.clusters import load_cluster
from hwmodels.collectives import collective_s
from hwmodels.errors import InputError
from hwmodels.kernels import kernel_model
from simulator.analytic import _deepspeed_submodules, _dp_terms, estimate
from simulator.memory import EVEN
from simulator.models import load_model, megatron_gpt
from simulator.software import apply_software
from simulator.training import TrainingJob, TrainingPlan

GPT_175B = megatron_gpt("gpt-175b", 96, 12288, 96, vocab_size=51200, seq_len=2048)


def _terms(model, cluster, dp, zero=3, **kw):
    return _dp_terms(model, cluster, "bf16", "1f1b", 1, 1, 1, 1, dp, 1, zero, False, {}, EVEN, 1, **kw)


def test_zero3_gathers_each_layer_in_a_collective_of_its_own():
    """FSDP auto-wrap: L layer-sized all-gathers plus the embedding and the head, each paying the
    collective's latency at its own size: more than one stage-sized gather at 64 ranks."""
    model, cluster = load_model("llama3-8b"), load_cluster("dgx-h100", nodes=8)
    d = _terms(model, cluster, 64)
    layer = model.layer_params(0)
    rest = model.embedding_params() + model.head_params()
    want = (model.num_layers * collective_s(cluster, "all_gather", 64, 1, layer * 2)
            + 2 * collective_s(cluster, "all_gather", 64, 1, rest / 2 * 2))
    assert d["gather"][0] == pytest.approx(want, rel=1e-9)
    whole = collective_s(cluster, "all_gather", 64, 1, (model.num_layers * layer + rest) * 2)
    assert d["gather"][0] > 1.05 * whole


def test_zero_1_keeps_one_stage_sized_gather():
    """The distributed optimizer gathers a stage in one sweep of large buckets: no per-layer
    latency (ZeRO-1 is unchanged by the unit)."""
    model, cluster = load_model("llama3-8b"), load_cluster("dgx-h100", nodes=8)
    d = _terms(model, cluster, 64, zero=1)
    whole = collective_s(cluster, "all_gather", 64, 1, float(d["grad_bytes"][0]))
    assert d["gather"][0] == pytest.approx(whole, rel=1e-9)


def test_param_unit_splits_a_gpt_layer_as_deepspeed_fetches_it():
    """Megatron's GPT layer as DeepSpeed 0.3 sees it: six sub-modules with parameters (two
    LayerNorms of weight + bias, QKV 3h² + bias, attention output h² + bias, fc1 4h² + bias,
    fc2 4h² + bias), twelve tensors, the whole layer."""
    mods = _deepspeed_submodules(GPT_175B)
    assert [len(m) for m in mods] == [2, 2, 2, 2, 2, 2]
    assert [sum(m) for m in mods] == pytest.approx([0, 3 / 12, 1 / 12, 0, 4 / 12, 4 / 12], abs=2e-4)
    assert sum(map(sum, mods)) == pytest.approx(1.0)
    h = GPT_175B.hidden_size
    total = GPT_175B.layer_params(0)
    assert mods[1][1] == pytest.approx(3 * h / total) and mods[0] == pytest.approx((h / total, h / total))
    llama = _deepspeed_submodules(load_model("llama3-8b"))  # RMSNorm weight only, no biases
    assert [len(m) for m in llama] == [1, 1, 1, 1, 1, 1]


def test_deepspeed_03_zero3_collectives_and_copies_tensor_by_tensor():
    """v0.3.13 partition_parameters.py: _allgather_params gathers a sub-module in one call, then
    copies each of its tensors' n shards in a Python loop (n copy kernels per tensor);
    _reduce_scatter_gradient reduce-scatters one tensor per call. The FSDP unit ("layer") does
    one gather and one reduce-scatter per layer."""
    cluster = load_cluster("dgx-a100", nodes=48)
    km = kernel_model(cluster.device.name, "bf16")
    n, L = 384, GPT_175B.num_layers
    d = _terms(GPT_175B, cluster, n, zero3_unit="param")
    layer = GPT_175B.layer_params(0)
    rest = (GPT_175B.embedding_params() + GPT_175B.head_params()) / 2  # embedding and head units
    mods = _deepspeed_submodules(GPT_175B)
    ag = lambda b: collective_s(cluster, "all_gather", n, 1, b)  # noqa: E731
    rs = lambda b: collective_s(cluster, "reduce_scatter", n, 1, b)  # noqa: E731
    copies = lambda b: n * km.memory_s(2 * b / n)  # noqa: E731
    gather = (L * sum(ag(layer * sum(m) * 2) + sum(copies(layer * t * 2) for t in m) for m in mods)
              + 2 * (ag(rest * 2) + copies(rest * 2)))
    grad = L * sum(rs(layer * t * 2) for m in mods for t in m) + 2 * rs(rest * 2)
    assert d["gather"][0] == pytest.approx(gather, rel=1e-9)
    assert d["grad"][0] == pytest.approx(grad, rel=1e-9)
    # switched to one unit per layer, the 12 reduce-scatters and the copy loops go away
    fsdp = _terms(GPT_175B, cluster, n)
    assert fsdp["grad"][0] < 0.75 * d["grad"][0] and fsdp["gather"][0] < d["gather"][0] - L * 12 * n * 3e-6


def test_list_collectives_add_one_copy_kernel_per_rank():
    """PyTorch ≤1.9 list all_gather/reduce_scatter: n copy kernels of 2·bytes/n per call, so the
    cost of a gather grows with the data-parallel size although its bytes do not."""
    cluster = load_cluster("dgx-a100", nodes=48)
    km = kernel_model(cluster.device.name, "bf16")
    plain = _terms(GPT_175B, cluster, 384, zero3_unit="param")
    copied = _terms(GPT_175B, cluster, 384, zero3_unit="param", rank_copies=True)
    layer_bytes = GPT_175B.layer_params(0) * 2
    rest_bytes = (GPT_175B.embedding_params() + GPT_175B.head_params()) * 2
    want = (GPT_175B.num_layers * sum(384 * km.memory_s(2 * layer_bytes * sum(m) / 384)
                                      for m in _deepspeed_submodules(GPT_175B))
            + 2 * 384 * km.memory_s(2 * rest_bytes / 2 / 384))
    extra = copied["gather"][0] - plain["gather"][0]
    assert extra == pytest.approx(want, rel=1e-6)
    assert extra > (GPT_175B.num_layers * 6) * 384 * 3e-6  # at least one launch latency per copy
    big = load_cluster("dgx-a100", nodes=192)
    extra_1536 = (_terms(GPT_175B, big, 1536, zero3_unit="param", rank_copies=True)["gather"][0]
                  - _terms(GPT_175B, big, 1536, zero3_unit="param")["gather"][0])
    # the copies' bytes stay 2·bytes per call; their launches grow with the ranks
    assert 2.0 * extra < extra_1536 < 4.0 * extra


def _ds_step(gpus, mb, **job):
    base = apply_software(TrainingJob(GPT_175B, 2048, 1536, dtype="fp16"), "deepspeed-0.3")
    plan = TrainingPlan(dp=gpus, mb=mb, zero=3, recompute="full")
    return estimate(replace(base, **job), plan, load_cluster("dgx-a100", nodes=gpus // 8))


def test_deepspeed_03_exposes_every_zero3_collective():
    """torch.cuda.synchronize() before every gather: the step is compute plus every gather and
    reduce-scatter of the step, nothing hidden."""
    e = _ds_step(384, 4)
    overlapped = _ds_step(384, 4, overlap_param_gather=True, overlap_grad_reduce=True)
    assert e.breakdown_s["dp_comm"] > 4 * overlapped.breakdown_s["dp_comm"]
    assert e.step_time_s == pytest.approx(sum(e.breakdown_s.values()), rel=1e-6)


def test_deepspeed_03_falls_with_data_parallel_size_at_a_fixed_global_batch():
    """Narayanan et al. 2021 §5.2: ZeRO-3's TFLOP/s fall as the GPUs double at a fixed batch
    (compute per GPU halves, its communication does not). Without the profile's mechanisms the
    fall is far smaller."""
    small, large = _ds_step(384, 4), _ds_step(1536, 1)
    assert small.tflops_per_device / large.tflops_per_device > 2.0
    off = dict(overlap_param_gather=True, overlap_grad_reduce=True, zero3_unit="layer",
               collective_rank_copies=False)
    assert _ds_step(384, 4, **off).tflops_per_device / _ds_step(1536, 1, **off).tflops_per_device < 1.6


def test_unknown_zero3_unit_is_refused_in_one_line():
    with pytest.raises(InputError, match=r"zero3 unit 'block'; valid: layer, param"):
        TrainingJob(GPT_175B, 2048, 8, zero3_unit="block")


def test_fsdp_recompute_reuses_the_backward_gather_deepspeed_fetches_again():
    """PyTorch FSDP/FSDP2 wrap each checkpointed block whole: the backward pre-hook unshards the
    unit and the recompute runs on those parameters (two gathers per micro-batch with full
    recompute as without); DeepSpeed ZeRO-3 fetches per sub-module in forward hooks, so the
    recompute gathers a third time."""
    from simulator.analytic import step_costs
    cluster = load_cluster("dgx-a100", nodes=2)
    fsdp = apply_software(TrainingJob(load_model("llama2-7b"), 4096, 64), "llm-foundry")
    ds = replace(fsdp, zero3_unit="param")

    def gathers(job, rc):
        return step_costs(job, TrainingPlan(dp=16, mb=1, zero=3, recompute=rc), cluster).stages[0].dp_gather_s
    assert gathers(fsdp, "full") == pytest.approx(gathers(fsdp, "none"), rel=1e-12)
    assert gathers(ds, "full") == pytest.approx(1.5 * gathers(ds, "none"), rel=1e-12)
