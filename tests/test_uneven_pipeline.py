"""Uneven pipeline stages (Megatron-Core's first/last stage layer counts, embedding/loss as pipeline
slots, explicit layouts): placement against Megatron's documented examples, the cost and memory
models reading the per-stage layers, the frontier models that need them, and bad input."""
from __future__ import annotations

import pytest

from hwmodels.clusters import load_cluster
from hwmodels.errors import InputError
from simulator import training
from simulator.analytic import estimate, layer_time_s, step_costs
from simulator.des import simulate
from simulator.memory import placement, stage_layers, stage_memory, stage_params
from simulator.models import load_model, megatron_gpt
from simulator.precision import WEIGHT_BYTES
from simulator.training import (EVEN, TrainingJob, TrainingPlan, chunk_layers, expand_layout, parse_plan,
                                uneven_candidates, validate_plan)
from ui.cli import main


def split(first=0, last=0, embed=False, loss=False, layout=""):
    return (first, last, embed, loss, layout)


# ---- placement: Megatron-Core's documented examples, computed by hand ----------------------------

def test_layout_of_megatron_docstring_example():
    # transformer_config.py `pipeline_model_parallel_layout` docstring: [['embedding', 'decoder'],
    # ['decoder', 'decoder', 'decoder', 'loss']] with pp = 2 — rank 0 one decoder, rank 1 three
    assert chunk_layers(4, "1f1b", 2, 1, split(layout="Et|tttL")) == (1, 3)
    # 'E|(tt|)*2,(t|)*4,mL' (its MTP layer left out: not modelled): 8 chunks, chunk i = vpp·pp + rank,
    # so pp=4, vpp=2; rank 0 holds E + nothing, then one decoder; ranks 1-2 two then one; rank 3 one then L
    plan = parse_plan("pp=4,layout=E|(tt|)*2,(t|)*4,L")
    assert plan.vpp == 2 and plan.schedule == "interleaved" and plan.layout == "E|(tt|)*2(t|)*4L"
    assert chunk_layers(8, "interleaved", 4, 2, plan.split) == (0, 2, 2, 1, 1, 1, 1, 0)
    m = megatron_gpt("g8", 8, 512, 8)
    assert [len(stage_layers(m, plan, s)) for s in range(4)] == [1, 3, 3, 1]
    assert stage_layers(m, plan, 1) == [0, 1, 6]  # chunk 1 (layers 0-1), chunk 5 (layer 6: after 2+2+1+1)


def test_deepseek_v3_layout_of_the_megatron_guide():
    # docs/user-guide/features/pipeline_parallel_layout.md: "Et*3|(tt|)*29,m|L" at PP16 VPP2; with the
    # MTP chunk left empty: rank 0 = embedding + 3 decoders, then 2; ranks 1-13 2 + 2; rank 14 2 + (mtp);
    # rank 15 2 + loss
    plan = parse_plan("pp=16,ep=8,layout=Et*3|(tt|)*29,|L")
    assert plan.vpp == 2
    ds = load_model("deepseek-v3")
    counts = chunk_layers(61, "interleaved", 16, 2, plan.split)
    assert counts[0] == 3 and counts[16] == 2 and counts[30] == 0 and counts[31] == 0
    assert all(c == 2 for c in counts[1:16]) and sum(counts) == 61
    pl = placement(ds, "interleaved", 16, 2, plan.split)
    assert pl.n_layers.tolist() == [5] + [4] * 13 + [2, 2]
    # the first 3 layers are dense (first_k_dense_replace = 3): all of chunk 0, none of chunk 16
    assert pl.chunk_moe[0] == 0 and pl.chunk_moe[16] == 2 and pl.n_moe[0] == 2
    # the guide's own layout puts the MTP layer in a chunk of its own; the engine costs MTP with
    # the loss (Megatron-Bridge's DeepSeek-V3 layouts, "...tmL"), so it asks for that placement
    job = TrainingJob(model=ds, seq_len=4096, global_batch=1024, dtype="fp8")
    guide = parse_plan("pp=16,ep=8,mb=1,layout=Et*3|(tt|)*29,m|L", 256)
    with pytest.raises(InputError, match="MTP layers \\('m'\\) are modelled with the loss in the last stage"):
        validate_plan(guide, job, 256)
    with pytest.raises(InputError, match="holds 0 MTP layers \\('m'\\) but the model trains 1"):
        validate_plan(parse_plan("pp=16,ep=8,mb=1,layout=Et*3|(tt|)*29,|L", 256), job, 256)


def test_first_last_as_megatron_offsets():
    # get_num_layers_to_build / get_transformer_layer_offset: 30 layers, pp=4, vpp=2, first=6, last=8:
    # the middle 16 layers over 2 stages, 8 each, 4 per chunk; first 3 per chunk, last 4 per chunk;
    # the offset of rank 0's second chunk is vp_stage·(3 + 8 + 4) = 15, of rank 2's 15 + 3 + 4 = 22
    sp = split(first=6, last=8)
    assert chunk_layers(30, "interleaved", 4, 2, sp) == (3, 4, 4, 4, 3, 4, 4, 4)
    pl = placement(megatron_gpt("g30", 30, 512, 8), "interleaved", 4, 2, sp)
    assert pl.chunk_range(4).start == 15 and pl.chunk_range(6).start == 22
    assert pl.n_layers.tolist() == [6, 8, 8, 8]
    # DeepSeek-V3 at pp=16 (1F1B): first=3 holds exactly the dense layers
    ds = load_model("deepseek-v3")
    pl = placement(ds, "1f1b", 16, 1, split(first=3, last=2))
    assert pl.n_layers.tolist() == [3] + [4] * 14 + [2]
    assert pl.n_moe.tolist() == [0] + [4] * 14 + [2]
    _, expert = stage_params(ds, pl, 1, 64)
    assert expert[0] == 0 and expert[1] == 4 * (256 // 64) * ds.expert_params()


def test_embedding_and_loss_as_pipeline_slots_llama3_405b():
    # account_for_embedding/loss: 126 + 2 = 128 slots, 8 per rank, 4 per chunk at vpp=2; the first
    # and last chunk build one layer fewer: one layer off the first and the last stage (Dubey et al.
    # 2024 §3.3.2, Llama 3 405B at pp=16)
    sp = split(embed=True, loss=True)
    counts = chunk_layers(126, "interleaved", 16, 2, sp)
    assert counts[0] == 3 and counts[-1] == 3 and set(counts[1:-1]) == {4}
    pl = placement(load_model("llama3-405b"), "interleaved", 16, 2, sp)
    assert pl.n_layers.tolist() == [7] + [8] * 14 + [7]
    # without interleaving the same split is first=7,last=7
    assert chunk_layers(126, "1f1b", 16, 1, sp) == chunk_layers(126, "1f1b", 16, 1, split(7, 7))


def test_planner_candidates_take_the_remainder_off_the_ends():
    # 61 layers on 16 stages: middle stages ⌈61/16⌉ = 4, the first and last share 61 − 14·4 = 5
    c = uneven_candidates(61, "1f1b", 16, 1)
    got = {chunk_layers(61, "1f1b", 16, 1, s)[::15] for s in c}
    assert got == {(1, 4), (2, 3), (3, 2), (4, 1)}
    assert uneven_candidates(96, "1f1b", 8, 1) == ()  # an even split exists: nothing uneven
    assert split(embed=True, loss=True) in uneven_candidates(126, "interleaved", 16, 2)


def test_even_split_is_unchanged():
    assert chunk_layers(96, "interleaved", 8, 2, EVEN) == (6,) * 16
    assert TrainingPlan().split == EVEN and "first" not in TrainingPlan(pp=2).to_string()


@pytest.mark.parametrize("text", ["tp=2,pp=16,first=3,last=2", "pp=4,pp_embed=on,pp_loss=on,vpp=2",
                                  "pp=16,layout=Et*3|(tt|)*29,|L", "pp=2,layout=Ettt,|,ttL"])
def test_plan_string_round_trips(text):
    plan = parse_plan(text)
    assert parse_plan(plan.to_string()) == plan


# ---- the cost models read the per-stage layers -----------------------------------------------

def _gpt32():
    return TrainingJob(megatron_gpt("gpt-32l", 32, 4096, 32, vocab_size=51200), seq_len=2048, global_batch=64)


def test_stage_times_and_memory_follow_the_split():
    """first=7,last=7 on 32 layers, pp=4: (7, 9, 9, 7) against the even (8, 8, 8, 8). Each stage's
    time and weights move by exactly one layer's (switching the split off gives the even numbers)."""
    job, c = _gpt32(), load_cluster("dgx-a100", nodes=2)
    even = parse_plan("tp=4,pp=4,mb=1", c.num_devices)
    uneven = parse_plan("tp=4,pp=4,mb=1,first=7,last=7", c.num_devices)
    a, b = estimate(job, even, c), estimate(job, uneven, c)
    one = layer_time_s(job, even, c, False)
    diff = [y - x for x, y in zip(a.stage_times_s, b.stage_times_s)]
    assert diff == pytest.approx([-one, one, one, -one], rel=1e-9)
    layer_w = WEIGHT_BYTES * job.model.layer_params(0) / 4
    w_even = [stage_memory(job.model, job, even, s)["weights_bytes"] for s in range(4)]
    w_uneven = [stage_memory(job.model, job, uneven, s)["weights_bytes"] for s in range(4)]
    assert [y - x for x, y in zip(w_even, w_uneven)] == pytest.approx([-layer_w, layer_w, layer_w, -layer_w], rel=1e-9)
    # the bottleneck is now a middle stage with 9 layers: the step grows by m × (9 − 8 layers less the head)
    m = a.micro_batches
    assert b.breakdown_s["compute"] + b.breakdown_s["tp_comm"] == pytest.approx(m * max(b.stage_times_s), rel=1e-9)
    assert b.step_time_s > a.step_time_s


def test_switching_the_split_off_restores_the_even_numbers(monkeypatch):
    """The mechanism off (chunk_layers ignores the split): the uneven plan costs what the even one does."""
    job, c = _gpt32(), load_cluster("dgx-a100", nodes=2)
    even = parse_plan("tp=4,pp=4,mb=1", c.num_devices)
    uneven = parse_plan("tp=4,pp=4,mb=1,first=7,last=7", c.num_devices)
    on = estimate(job, uneven, c)
    real = training.chunk_layers.__wrapped__
    import simulator.memory as mem
    monkeypatch.setattr(mem, "chunk_layers", lambda L, s, p, v, sp=EVEN: real(L, s, p, v, EVEN))
    mem.placement.cache_clear()
    mem.plan_memory.cache_clear()
    try:
        off = estimate(job, uneven, c)
        assert off.step_time_s == pytest.approx(estimate(job, even, c).step_time_s, rel=1e-12)
        assert off.step_time_s != pytest.approx(on.step_time_s, rel=1e-6)
    finally:
        mem.placement.cache_clear()
        mem.plan_memory.cache_clear()


def test_des_chunks_carry_the_split():
    job, c = _gpt32(), load_cluster("dgx-a100", nodes=2)
    # 32 + 2 = 34 slots do not split over 4 stages × 2 chunks
    plan = parse_plan("tp=4,pp=4,vpp=2,mb=1,pp_embed=on,pp_loss=on", c.num_devices)
    with pytest.raises(InputError, match="34 slots"):
        validate_plan(plan, job, c.num_devices)
    plan = parse_plan("tp=4,pp=4,mb=1,pp_embed=on", c.num_devices)  # 33 slots do not split over 4
    with pytest.raises(InputError, match="33 slots"):
        validate_plan(plan, job, c.num_devices)
    plan = parse_plan("tp=4,pp=4,vpp=2,mb=1,first=6,last=6", c.num_devices)
    sc = step_costs(job, plan, c)
    assert [[ch.num_layers for ch in st.chunks] for st in sc.stages] == [[3, 3], [5, 5], [5, 5], [3, 3]]


# ---- frontier models end to end: analytic and DES agree ------------------------------------------

@pytest.mark.parametrize("model,nodes,plan,seq,batch", [
    # DeepSeek-V3 (§3.2): PP=16, EP=64, the first 3 layers dense; 61 layers
    ("deepseek-v3", 128, "pp=16,ep=64,mb=1,first=3,last=2,recompute=full", 4096, 2048),
    ("deepseek-v3", 128, "pp=16,ep=64,mb=1,first=3,last=2,schedule=zb-h1", 4096, 2048),
    # Llama 3 405B (§3.3.2): TP=8, PP=16 with interleaving, one layer off the first and last stage
    ("llama3-405b", 16, "tp=8,pp=16,vpp=2,mb=1,pp_embed=on,pp_loss=on,sp=on,recompute=full", 8192, 32),
    ("llama3-405b", 16, "tp=8,pp=16,mb=1,first=7,last=7,sp=on", 8192, 32),
])
def test_frontier_models_run_in_both_engines(model, nodes, plan, seq, batch):
    job = TrainingJob(load_model(model), seq_len=seq, global_batch=batch)
    c = load_cluster("dgx-h100", nodes=nodes)
    p = parse_plan(plan, c.num_devices)
    ana = estimate(job, p, c)
    des, _ = simulate(job, p, c)
    assert ana.step_time_s > 0 and len(ana.stage_times_s) == 16
    assert des.step_time_s == pytest.approx(ana.step_time_s, rel=0.03)


def test_deepseek_v3_dualpipe_places_both_ends_on_the_end_ranks():
    """DualPipe (arXiv 2412.19437 §3.2.1) with first=3,last=2: rank 0 holds model chunk 0 (3 dense
    layers, the embedding) and chunk 15 (2 MoE layers, the head) of the reverse direction."""
    job = TrainingJob(load_model("deepseek-v3"), seq_len=4096, global_batch=2048)
    c = load_cluster("dgx-h100", nodes=128)
    p = parse_plan("pp=16,ep=64,mb=1,first=3,last=2,schedule=dualpipe", c.num_devices)
    sc = step_costs(job, p, c)
    assert [ch.num_layers for ch in sc.stages[0].chunks] == [3, 2]
    assert [ch.num_layers for ch in sc.stages[7].chunks] == [4, 4]
    des, _ = simulate(job, p, c)
    assert 0 < des.step_time_s < float("inf")


def test_planner_returns_pipelined_plans_for_frontier_models():
    from planner.search import COLUMNS, plan_of, search
    job = TrainingJob(load_model("deepseek-v3"), seq_len=4096, global_batch=2048)
    c = load_cluster("dgx-h100", nodes=128)
    res = search(job, c, fix="tp=1,cp=1,ep=64,mb=1,zero=1,recompute=full,schedule=1f1b", top=3, partition=0)
    t = res.table
    rows = [i for i in range(len(t["pp"])) if t["pp"][i] == 16]
    assert rows, "no pp=16 plan scored for DeepSeek-V3"
    for i in rows[:4]:  # the vectorised score is estimate()'s
        plan = plan_of({k: t[k][i] for k in COLUMNS})
        assert plan.split != EVEN
        assert t["step_s"][i] == pytest.approx(estimate(job, plan, c).step_time_s, rel=1e-9)
    job = TrainingJob(load_model("llama3-405b"), seq_len=8192, global_batch=256)
    res = search(job, load_cluster("dgx-h100", nodes=256), fix="tp=8,pp=16,mb=1", top=3, partition=0)
    assert res.plans and all(p["plan"]["pp"] == 16 for p in res.plans)
    assert any(p["plan"]["pp_embed"] or p["plan"]["first"] for p in res.plans)


# ---- bad input: one line, exit code 2 ------------------------------------------------------------

@pytest.mark.parametrize("plan,msg", [
    ("pp=16,ep=64,first=3,last=3", "cannot share evenly"),
    ("pp=16,ep=64,first=40,last=40", "must add up to 61"),
    ("pp=16,ep=64", "e.g. first="),
    ("pp=16,ep=64,layout=Et*3|(tt|)*29,|tL", "62 transformer layers"),
    ("pp=16,ep=64,first=3,pp_embed=on", "cannot be combined"),
    ("pp=16,ep=64,layout=Et*4|(tt|)*29|xL", "symbol 'x'"),
    ("pp=16,ep=64,layout=Et*3|(tt|)*29", "not a multiple of pp=16"),
    ("pp=16,ep=64,first=0", "first=0 must be >= 1"),
])
def test_bad_splits_exit_2_with_one_line(capsys, plan, msg):
    rc = main(["simulate", "train", "--model", "deepseek-v3", "--cluster", "dgx-h100", "--nodes", "128",
               "--plan", plan, "--seq-len", "4096", "--global-batch", "2048"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and msg in err, err


def test_layout_expansion_is_bounded():
    with pytest.raises(InputError, match="count must be"):
        expand_layout("Et*99999999|L")
    assert expand_layout("E(t(tt)*2)*2|L") == ("E" + "t" * 10, "L")
