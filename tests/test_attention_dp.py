"""Attention data parallelism in the serving DES (issue #19): a replica of dp ranks, each with its
own scheduler and KV pool, one synchronised pass as slow as the busiest rank, the engines' rank
routers, and the validation rows it lets us replay."""
from __future__ import annotations

import math

import pytest

from hwmodels.clusters import load_cluster
from hwmodels.errors import InputError
from simulator.models import load_model
from simulator.serving.costs import iteration_cost
from simulator.serving.engine import (DPReplica, Replica, ReplicaGroup, ServingPlan,
                                      ServingSimulation, simulate)
from simulator.serving.kv_cache import kv_pool, weight_bytes_per_gpu
from simulator.serving.scheduler import Batch, engine_config
from simulator.serving.workload import LengthDist, RateSchedule, Request, ServingWorkload
from validation import serving as vs


@pytest.fixture(scope="module")
def ds():
    return load_model("deepseek-v3")


@pytest.fixture(scope="module")
def h200():
    return load_cluster("dgx-h200")


def _decode(n: int, kv: int) -> Batch:
    b = Batch()
    b.num_decode, b.decode_kv_tokens, b.samples = n, kv, n
    return b


def _prefill(q: int) -> Batch:
    b = Batch()
    b.prefills, b.prefill_tokens, b.samples = [(None, q, 0)], q, 1
    return b


def test_dp_pass_is_padded_dense_part_plus_the_slowest_ranks_attention(ds, h200):
    c = iteration_cost(ds, h200, 1, 1, 8, "fp8", None, "trtllm", None, dp=8)
    dec, pre = _decode(24, 24 * 3000), _prefill(700)
    batches = [dec, pre] + [Batch() for _ in range(6)]
    # by hand from the cost model's parts: linear layers, MoE exchange and LM head at the largest
    # rank's tokens (700) and rows (24); attention of the slowest rank
    att = max(c.decode_attention_s(24, 24 * 3000), c.prefill_attention_s(1, 700, 0))
    # a pass with prompt tokens is not padded: the experts get the 724 tokens the ranks hold
    want = c.dense_dp_s(700, 724) + c.lm_head_s(24) + att
    assert c.iteration_dp_s(batches) == pytest.approx(want, rel=1e-12)
    assert c.dense_dp_s(700, 724) < c.dense_dp_s(700, 8 * 700)
    # decode-only passes are padded to the largest rank (CUDA graphs): idle ranks cost as much
    pad = c.iteration_dp_s([dec] + [Batch()] * 7)
    assert pad == pytest.approx(c.iteration_dp_s([dec] * 8), rel=1e-12)
    assert pad == pytest.approx(c.dense_dp_s(24, 8 * 24) + c.lm_head_s(24)
                                + c.decode_attention_s(24, 24 * 3000), rel=1e-12)
    # the experts see the tokens of all dp ranks: more than one rank's alone on the same devices
    alone = iteration_cost(ds, h200, 8, 1, 8, "fp8", None, "trtllm", None)
    assert c.dense_s(64) > 0 and c.dense_s(64) != pytest.approx(alone.dense_s(64), rel=1e-3)


def test_moe_exchange_carries_every_ranks_tokens(ds, h200):
    """Switch-off: with dp ranks' tokens routed to the experts, the MoE part grows with dp at equal
    tokens per rank (GShard dispatch of T·k per rank; experts over all tp·dp devices)."""
    c8 = iteration_cost(ds, h200, 1, 1, 8, "fp8", None, "trtllm", None, dp=8)
    c2 = iteration_cost(ds, h200, 1, 1, 2, "fp8", None, "trtllm", None, dp=2)
    # 2 ranks hold 4x the experts each but see 1/4 of the tokens: different costs, both positive
    assert c8.dense_s(256) != pytest.approx(c2.dense_s(256), rel=1e-3)
    with pytest.raises(InputError, match="ep=3"):
        iteration_cost(ds, h200, 1, 1, 3, "fp8", None, "trtllm", None, dp=8)


def _sim(model, cluster, engine, dp, tp=1, ep=None, n=4):
    plan = ServingPlan((ReplicaGroup(cluster, tp, 1, ep or tp * dp, 1, "both", dp),), engine=engine,
                       dtype="fp8", prefix_caching=False)
    wl = ServingWorkload(num_requests=n, rate=RateSchedule.parse("1"),
                         prompt_len=LengthDist.parse("128"), output_len=LengthDist.parse("8"))
    return ServingSimulation(model, plan, wl)


def _ranks_of(rep, reqs):
    where = {}
    for i, s in enumerate(rep.ranks):
        for r in list(s.waiting) + [r for _, r in s.deferred]:
            where[r.id] = i
    return [where[r.id] for r in reqs]


@pytest.mark.parametrize("engine,want", [
    # TensorRT-LLM DefaultADPRouter: rank 1 holds fewer prompt tokens for the 3rd request, but the
    # 4th is capped at ceil(4/2) = 2 active requests per rank and goes to rank 0
    ("trtllm", [0, 1, 1, 0]),
    # SGLang round_robin_scheduler
    ("sglang", [0, 1, 0, 1]),
    # vLLM DPLBAsyncMPClient: lowest 4·waiting + running, ties to the lowest index
    ("vllm", [0, 1, 0, 1]),
])
def test_rank_router_as_each_engine_assigns(h200, engine, want):
    sim = _sim(load_model("qwen3-30b-a3b"), h200, engine, 2)
    rep = sim.replicas[0]
    assert isinstance(rep, DPReplica)
    reqs = [Request(i, 0.0, p, 8) for i, p in enumerate((1000, 10, 10, 10))]
    for r in reqs:
        rep.submit(r)
    assert _ranks_of(rep, reqs) == want


def test_kv_pool_per_rank_from_its_own_memory(ds, h200):
    sim = _sim(ds, h200, "trtllm", 8)
    rep = sim.replicas[0]
    cfg = rep.cfg
    own = kv_pool(ds, h200.device, 1, 1, 8, "fp8", rep.costs.kv_dtype, cfg.memory_policy,
                  cfg.memory_fraction, cfg.block_size, cfg.max_num_batched_tokens, cfg.max_num_seqs)
    # attention weights over tp = 1 on every rank, experts over all 8 GPUs
    assert rep.pool.breakdown["weights_bytes"] == pytest.approx(weight_bytes_per_gpu(ds, 1, 1, 8, "fp8"))
    assert len(rep.kvs) == 8 and all(k.num_blocks == own.num_blocks for k in rep.kvs)
    assert rep.kv.num_blocks == 8 * own.num_blocks
    # an MLA latent per token on every rank: each rank holds its own requests' KV, so the replica
    # holds dp times what one TP-8 replica of the same GPUs holds, less the replicated attention
    tp8 = _sim(ds, h200, "trtllm", 1, tp=8, ep=8).replicas[0]
    assert 5 * tp8.pool.num_blocks < rep.kv.num_blocks < 8 * tp8.pool.num_blocks
    # SGLang divides its server-wide limits by dp (server_args.py _handle_data_parallelism)
    sg = _sim(ds, h200, "sglang", 8).replicas[0]
    base = engine_config("sglang", h200.device, 8)
    assert sg.cfg.max_num_seqs == base.max_num_seqs // 8
    assert sg.cfg.max_num_batched_tokens == base.max_num_batched_tokens // 8


def test_dp_1_is_todays_replica(ds, h200):
    m = load_model("llama3.1-8b")
    wl = ServingWorkload(num_requests=30, rate=RateSchedule.parse("8"),
                         prompt_len=LengthDist.parse("uniform:100:900"), output_len=LengthDist.parse("64"))
    a = simulate(m, ServingPlan((ReplicaGroup(h200, 2, 1, 1, 2),)), wl)
    b = simulate(m, ServingPlan((ReplicaGroup(h200, 2, 1, 1, 2, "both", 1),)), wl)
    assert a.ttft_s == b.ttft_s and a.tpot_s == b.tpot_s
    sim = ServingSimulation(m, ServingPlan((ReplicaGroup(h200, 2, 1, 1, 2, "both", 1),)), wl)
    assert all(type(r) is Replica for r in sim.replicas)


def test_a_dp_replica_serves_every_request_on_its_ranks(h200):
    sim = _sim(load_model("qwen3-30b-a3b"), h200, "sglang", 4, n=16)
    rep = sim.run()
    assert all(math.isfinite(r.finish_s) for r in sim.requests) and len(sim.requests) == 16
    assert rep.tpot_s["mean"] > 0 and math.isfinite(rep.ttft_s["mean"])
    assert rep.replicas[0]["dp"] == 4 and rep.replicas[0]["rank_router"] == "round_robin"
    # every rank took a quarter of the requests (round robin) and its KV is free again
    assert all(k.used == 0 for k in sim.replicas[0].kvs)


def test_a_dp_replica_records_its_decode_runs_as_the_time_they_took(h200):
    # one request per rank arriving together, 64 output tokens: the ranks decode in runs of
    # identical passes (one event each); every record's steps x mean duration is the time the
    # run took, so together they add up to the replica's busy time
    plan = ServingPlan((ReplicaGroup(h200, 1, 1, 4, 1, "both", 4),), engine="sglang", dtype="fp8",
                       prefix_caching=False)
    wl = ServingWorkload(num_requests=4, rate=RateSchedule.parse("1000"),
                         prompt_len=LengthDist.parse("128"), output_len=LengthDist.parse("64"))
    sim = ServingSimulation(load_model("qwen3-30b-a3b"), plan, wl)
    sim.run()
    rec, rep = sim.recorder, sim.replicas[0]
    steps, durs = rec.it_steps[rep.index], rec.it_dur[rep.index]
    assert max(steps) > 1, "no decode run to check"
    assert sum(d * k for d, k in zip(durs, steps)) == pytest.approx(rep.busy_s, rel=1e-9)
    assert all(0 < d < 1.0 for d in durs)


def test_attention_dp_validation_row_is_now_modelled():
    rows = vs.read_rows()
    # the smallest-concurrency TRT-LLM row with attention DP 8 that is replayed (the H200 ones are
    # InferenceX MTP runs, or points it ran with and without MTP, and are listed instead)
    row = min((r for r in rows if r["mode"] == "agg" and r["attention_dp_size"] == "8"
               and r["backend"] == "trtllm" and vs.classify(r)[0] is not None),
              key=lambda r: vs.classify(r)[0]["concurrency"])
    case = vs.classify(row)[0]
    assert case["pools"]["both"]["dp"] == 8 and case["dp"] == 8
    pred = vs.replay(case, quick=True)
    assert "error" not in pred
    # within a factor of two of the measured means (validation, not a fit)
    assert 0.5 < pred["tpot_s"] / case["tpot_s"] < 2.0
    # rows listed for another reason stay listed
    bad = {**row, "moe_ep_size": "4", "moe_tp_size": "1"}
    assert "MoE tp 1 x ep 4 with attention tp 1 x dp 8" == vs.classify(bad)[1]
