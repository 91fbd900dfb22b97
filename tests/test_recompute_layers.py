"""Full recompute of part of the layers (plan recompute_layers / recompute_method): Megatron-Core's
--recompute-method block|uniform --recompute-num-layers N (megatron/core/recompute.py
checkpointed_forward, once per model chunk) and torchtitan's layer-level selective AC (every Nth
block): which layers, memory, time in both engines, FLOPs, the plan key and its errors."""
from dataclasses import replace

import pytest

from hwmodels.clusters import load_cluster
from hwmodels.errors import InputError
from simulator.analytic import estimate, layer_time_s
from simulator.des import simulate
from simulator.memory import (chunk_recompute, layer_activation_bytes, placement, recomputed_layer_ids,
                              recomputed_layers)
from simulator.models import load_model
from simulator.ops import layer_cost
from simulator.training import (RECOMPUTE_METHODS, TrainingJob, TrainingPlan, every_nth_layers, parse_plan,
                                validate_plan)
from ui.cli import main

LLAMA8 = load_model("llama3-8b")  # 32 layers
H100x16 = load_cluster("dgx-h100", nodes=2)
JOB = TrainingJob(model=LLAMA8, seq_len=4096, global_batch=32)
BLOCK, UNIFORM = RECOMPUTE_METHODS.index("block"), RECOMPUTE_METHODS.index("uniform")


def _plan(**kw):
    base = dict(dp=4, tp=2, pp=2, mb=1, sp=True)
    return TrainingPlan(**{**base, **kw})


# ---- which layers (Megatron-Core checkpointed_forward, torchtitan _apply_layer_sac) ----

def test_block_recomputes_the_first_n_layers_of_every_model_chunk():
    # 32 layers, pp=4, vpp=2: 8 chunks of 4 layers; stage s holds chunks s and s+4
    pl = placement(LLAMA8, "interleaved", 4, 2)
    rc, rc_moe, ckpt, grp = recomputed_layers(pl, 3, BLOCK)
    assert rc.tolist() == [6.0] * 4 and ckpt.tolist() == [6.0] * 4 and grp.tolist() == [1.0] * 4
    assert rc_moe.tolist() == [0.0] * 4
    # N past a chunk's layers recomputes the whole chunk (Megatron: layer_idx < recompute_num_layers)
    assert recomputed_layers(pl, 4, BLOCK)[0].tolist() == [8.0] * 4
    ids = recomputed_layer_ids(LLAMA8, TrainingPlan(dp=1, pp=4, vpp=2, schedule="interleaved", recompute="full",
                                                    recompute_layers=1))
    assert [i for i, r in enumerate(ids) if r] == [0, 4, 8, 12, 16, 20, 24, 28]


def test_uniform_recomputes_everything_from_one_checkpoint_per_group():
    # groups [0, n), [n, 2n), ... per chunk: a chunk of 4 layers with n = 3 keeps 2 inputs
    assert chunk_recompute(4, 3, UNIFORM) == (4, 2, 3)
    assert chunk_recompute(4, 1, UNIFORM) == (4, 4, 1)  # = recompute=full
    assert chunk_recompute(4, 9, UNIFORM) == (4, 1, 4)
    pl = placement(LLAMA8, "interleaved", 4, 2)
    rc, _, ckpt, grp = recomputed_layers(pl, 3, UNIFORM)
    assert rc.tolist() == [8.0] * 4 and ckpt.tolist() == [4.0] * 4 and grp.tolist() == [3.0] * 4


def test_uneven_chunks_take_n_each():
    # first=4, last=12 over pp=3: 4 | 16 | 12 layers; block 8 recomputes 4, 8, 8
    pl = placement(LLAMA8, "1f1b", 3, 1, (4, 12, False, False, ""))
    assert recomputed_layers(pl, 8, BLOCK)[0].tolist() == [4.0, 8.0, 8.0]


def test_moe_layers_among_the_recomputed_are_counted():
    moe = load_model("deepseek-v2")  # 60 layers, the first one dense (first_k_dense_replace: 1)
    pl = placement(moe, "1f1b", 2, 1)
    rc, rc_moe, _, _ = recomputed_layers(pl, 5, BLOCK)
    assert rc.tolist() == [5.0, 5.0] and rc_moe.tolist() == [4.0, 5.0]
    assert recomputed_layers(pl, 5, UNIFORM)[1].tolist() == [29.0, 30.0]


def test_torchtitan_every_nth_block():
    # a counter over a rank's blocks from 1 wraps block k when k % freq == 0; freq 0 wraps all
    assert every_nth_layers(32, 2) == 16
    assert every_nth_layers(5, 2) == 2  # blocks 2 and 4
    assert every_nth_layers(7, 3) == 2  # blocks 3 and 6
    assert every_nth_layers(4, 0) == 4
    assert every_nth_layers(1, 2) == 0
    with pytest.raises(InputError, match="frequency -1"):
        every_nth_layers(4, -1)


# ---- the ends: N = all is recompute=full, N = 0 is recompute=none ----

@pytest.mark.parametrize("zero", [1, 3])
def test_all_layers_is_full_recompute_and_none_is_no_recompute(zero):
    plan = dict(zero=zero)
    full = estimate(JOB, _plan(recompute="full", **plan), H100x16)
    none = estimate(JOB, _plan(recompute="none", **plan), H100x16)
    for kw, ref in ((dict(recompute_layers=16), full), (dict(recompute_layers=1, recompute_method="uniform"), full),
                    (dict(recompute_layers=0), none)):
        e = estimate(JOB, _plan(recompute="full", **plan, **kw), H100x16)
        assert e.step_time_s == pytest.approx(ref.step_time_s, rel=1e-12)
        assert e.memory["peak_bytes"] == pytest.approx(ref.memory["peak_bytes"], rel=1e-12)
        assert e.hfu == pytest.approx(ref.hfu, rel=1e-12) and e.mfu == pytest.approx(ref.mfu, rel=1e-12)
        d, dref = simulate(JOB, _plan(recompute="full", **plan, **kw), H100x16)[0], \
            simulate(JOB, _plan(recompute=ref.plan.recompute, **plan), H100x16)[0]
        assert d.step_time_s == pytest.approx(dref.step_time_s, rel=1e-9)
    assert full.step_time_s > none.step_time_s * 1.1  # the ends differ: the tests above can fail


# ---- in between: exactly the layers named pay and save ----

def test_block_memory_counts_checkpoints_and_whole_layers():
    """pp=1: activations = inflight × (N inputs + (L − N) whole layers) + one whole layer in backward."""
    plan = TrainingPlan(dp=8, tp=2, mb=1, sp=True, zero=1, recompute="full", recompute_layers=10)
    job = replace(JOB, global_batch=16)
    e = estimate(job, plan, H100x16)
    whole = layer_activation_bytes(LLAMA8, job, replace(plan, recompute="none"), False)
    inp = layer_activation_bytes(LLAMA8, job, plan, False)
    none = estimate(job, replace(plan, recompute="none", recompute_layers=None), H100x16)
    logits = none.memory["activations_bytes"] - 32 * whole  # 1F1B at pp=1 holds one micro-batch
    assert e.memory["activations_bytes"] == pytest.approx(logits + 10 * inp + 22 * whole + whole, rel=1e-9)


def test_uniform_groups_hold_fewer_checkpoints_and_rebuild_a_whole_group():
    plan = TrainingPlan(dp=8, tp=2, mb=1, sp=True, zero=1, recompute="full", recompute_layers=4,
                        recompute_method="uniform")
    job = replace(JOB, global_batch=16)
    e = estimate(job, plan, H100x16)
    full = estimate(job, replace(plan, recompute_layers=None), H100x16)
    whole = layer_activation_bytes(LLAMA8, job, replace(plan, recompute="none"), False)
    inp = layer_activation_bytes(LLAMA8, job, plan, False)
    # 8 group inputs instead of 32 layer inputs; 4 whole layers rebuilt at once instead of 1
    assert e.memory["activations_bytes"] - full.memory["activations_bytes"] == pytest.approx(
        -24 * inp + 3 * whole, rel=1e-9)
    assert e.step_time_s == pytest.approx(full.step_time_s, rel=1e-12)  # everything recomputed still


def test_block_time_pays_the_recompute_of_the_named_layers_only():
    plan = TrainingPlan(dp=8, tp=2, mb=1, sp=True, zero=1, recompute="full", recompute_layers=10)
    job = replace(JOB, global_batch=16)
    m = job.global_batch // (plan.dp * plan.mb)
    rc = layer_cost(LLAMA8, job, replace(plan, recompute_layers=None), H100x16, False)
    none = estimate(job, replace(plan, recompute="none", recompute_layers=None), H100x16)
    e = estimate(job, plan, H100x16)
    assert e.breakdown_s["compute"] - none.breakdown_s["compute"] == pytest.approx(m * 10 * rc.recompute_s, rel=1e-9)
    # the layers' recomputed TP collectives are paid too (exposed where they do not hide)
    comm = sum(rc.recompute_comm_s.values())
    assert e.breakdown_s["tp_comm"] - none.breakdown_s["tp_comm"] == pytest.approx(m * 10 * comm, rel=1e-9, abs=1e-12)
    # executed FLOPs count the forward of 10 of 32 layers again
    full = estimate(job, replace(plan, recompute_layers=None), H100x16)
    assert (e.hfu * e.step_time_s - none.hfu * none.step_time_s) == pytest.approx(
        10 / 32 * (full.hfu * full.step_time_s - none.hfu * none.step_time_s), rel=1e-9)


def test_partial_recompute_moves_memory_and_time_monotonically_and_des_agrees():
    steps, acts = [], []
    for n in (0, 2, 4, 8):
        plan = _plan(recompute="full", recompute_layers=n, vpp=2, schedule="interleaved")
        e = estimate(JOB, plan, H100x16)
        d = simulate(JOB, plan, H100x16)[0]
        assert d.step_time_s == pytest.approx(e.step_time_s, rel=0.03)
        steps.append(e.step_time_s)
        acts.append(e.memory["activations_bytes"])
    # vpp=2: chunks of 8 layers, n = 8 recomputes every layer
    full = estimate(JOB, _plan(recompute="full", vpp=2, schedule="interleaved"), H100x16)
    assert steps[0] < steps[1] < steps[2] < steps[3] == pytest.approx(full.step_time_s, rel=1e-12)
    assert acts[0] > acts[1] > acts[2] > acts[3] == pytest.approx(full.memory["activations_bytes"], rel=1e-12)


def test_mtp_blocks_are_not_recomputed_with_the_block_method():
    """Megatron-Core multi_token_prediction.py skips MTP recompute under recompute_method=block."""
    mtp = replace(LLAMA8, mtp_layers=1)
    job = replace(JOB, model=mtp)
    block = estimate(job, _plan(recompute="full", recompute_layers=16), H100x16)
    uniform = estimate(job, _plan(recompute="full", recompute_layers=1, recompute_method="uniform"), H100x16)
    rc = layer_cost(mtp, job, _plan(recompute="full"), H100x16, False)
    m = job.global_batch // (4 * 1)
    assert uniform.breakdown_s["compute"] - block.breakdown_s["compute"] == pytest.approx(m * rc.recompute_s, rel=1e-9)
    assert block.memory["activations_bytes"] > uniform.memory["activations_bytes"]


# ---- the plan key and its errors ----

def test_plan_string_round_trips():
    p = parse_plan("tp=2,pp=2,recompute=full,recompute_layers=3,recompute_method=uniform", 16)
    assert (p.recompute_layers, p.recompute_method) == (3, "uniform")
    assert parse_plan(p.to_string(), 16) == p
    assert parse_plan("tp=2,recompute=full,recompute_layers=0", 16).recompute_method == "block"
    assert "recompute_layers" not in parse_plan("recompute=full", 16).to_string()


@pytest.mark.parametrize("text, msg", [
    ("recompute=full,recompute_layers=-1", "recompute_layers=-1 must be >= 0"),
    ("recompute=full,recompute_layers=0,recompute_method=uniform", "must be >= 1 with recompute_method=uniform"),
    ("recompute=selective,recompute_layers=2", "needs recompute=full"),
    ("recompute_layers=2", "needs recompute=full"),
    ("recompute=full,recompute_method=uniform", "needs recompute_layers=N"),
    ("recompute=full,recompute_layers=2,recompute_method=every", "recompute_method='every'; valid: block, uniform"),
    ("recompute=full,recompute_layers=two", "must be an integer"),
])
def test_bad_keys_are_refused_in_one_line(text, msg):
    with pytest.raises(InputError, match=msg.replace("(", r"\(")) as e:
        parse_plan(text, 16)
    assert "\n" not in str(e.value)


def test_more_layers_than_a_chunk_holds_is_refused():
    plan = TrainingPlan(dp=4, pp=4, vpp=2, schedule="interleaved", recompute="full", recompute_layers=5)
    with pytest.raises(InputError, match=r"recompute_layers=5; valid: 0\.\.4 \(layers per model chunk"):
        validate_plan(plan, TrainingJob(model=LLAMA8, seq_len=4096, global_batch=32), 16)
    validate_plan(replace(plan, recompute_layers=4), TrainingJob(model=LLAMA8, seq_len=4096, global_batch=32), 16)
    with pytest.raises(InputError, match="needs recompute=full"):  # a plan built in code is checked too
        validate_plan(replace(plan, recompute="none", recompute_layers=2), JOB, 16)


def test_uniform_groups_with_mtp_are_refused_as_megatron_does():
    job = replace(JOB, model=replace(LLAMA8, mtp_layers=1))
    with pytest.raises(InputError, match="MTP"):
        estimate(job, _plan(recompute="full", recompute_layers=2, recompute_method="uniform"), H100x16)


def test_per_layer_costs_refuse_a_partial_recompute():
    with pytest.raises(InputError, match="recompute_layers=4"):
        layer_time_s(JOB, _plan(recompute="full", recompute_layers=4), H100x16, False)


def test_cli_runs_the_keys_and_refuses_bad_ones(capsys):
    argv = ["simulate", "train", "--model", "llama3-8b", "--cluster", "dgx-h100", "--nodes", "2",
            "--seq-len", "4096", "--global-batch", "32", "--plan"]
    assert main(argv + ["tp=2,pp=2,sp=on,recompute=full,recompute_layers=8"]) == 0
    assert "recompute_layers=8" in capsys.readouterr().out
    assert main(argv + ["tp=2,pp=2,sp=on,recompute=full,recompute_layers=17"]) == 2
    err = capsys.readouterr().err
    assert "recompute_layers=17; valid: 0..16" in err and err.count("\n") == 1
    assert main(argv + ["tp=2,recompute=selective,recompute_layers=1"]) == 2
    assert "needs recompute=full" in capsys.readouterr().err


# ---- the planner: the fewest recomputed layers that fit ----

def test_planner_recomputes_the_fewest_layers_that_fit():
    """Llama 3 70B, tp=8 on 64 H100 without pipeline: no recompute does not fit, full recompute
    does; the search keeps the least N per chunk that fits (N − 1 does not), faster than full."""
    from planner.search import COLUMNS, _Enumerator, _normalise_fix, plan_of, search
    job = TrainingJob(model=load_model("llama3-70b"), seq_len=8192, global_batch=128)
    cl = load_cluster("dgx-h100", nodes=8)
    fix = "tp=8,pp=1,cp=1,mb=2,zero=2,sp=on"
    res = search(job, cl, top=1, fix=fix, partition=0)
    best = parse_plan(res.plans[0]["plan_short"], 64)
    n = best.recompute_layers
    assert best.recompute == "full" and n is not None and 1 <= n < 80
    assert estimate(job, best, cl).fits and not estimate(job, replace(best, recompute_layers=n - 1), cl).fits
    assert not estimate(job, replace(best, recompute="none", recompute_layers=None), cl).fits
    full = estimate(job, replace(best, recompute_layers=None), cl)
    assert res.plans[0]["step_time_s"] < 0.9 * full.step_time_s
    assert f"recompute_layers={n - 1} would not fit" in res.plans[0]["why"]
    # a recompute the user fixes is taken as written: every layer
    fixed = search(job, cl, top=1, fix=fix + ",recompute=full", partition=0).plans[0]
    assert parse_plan(fixed["plan_short"], 64).recompute_layers is None
    # every refined row of the table is what the engine says of that plan
    t = _Enumerator(job, cl, _normalise_fix(fix), with_offload=False).run()
    rows = [i for i in range(len(t["step_s"])) if t["recompute_layers"][i] >= 0]
    assert rows
    for i in rows[:5]:
        e = estimate(job, plan_of({k: t[k][i] for k in COLUMNS}), cl)
        assert e.fits and e.step_time_s == pytest.approx(float(t["step_s"][i]), rel=1e-9)
        assert e.memory["peak_bytes"] == pytest.approx(float(t["peak_bytes"][i]), rel=1e-9)
