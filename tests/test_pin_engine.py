"""Pin tests for simulator.serving.engine (written from surviving mutants): plan strings,
replica placement, runs of decode iterations, KV transfers of disaggregated serving."""
from __future__ import annotations

import pytest

from hwmodels.clusters import load_cluster
from hwmodels.collectives import collective_s
from hwmodels.errors import InputError
from simulator.models import load_model
from simulator.serving.engine import (ReplicaGroup, Replica, ServingSimulation, parse_serving_plan,
                                      place)
from simulator.serving.kv_cache import kv_bytes_per_token
from simulator.serving.workload import LengthDist, RateSchedule, ServingWorkload

H100 = load_cluster("dgx-h100")
L8B = load_model("llama3.1-8b")


# ---- plan strings (docs/design.md §4) -----------------------------------------------------------
def test_plan_string_keys_and_defaults():
    p = parse_serving_plan("tp=2, replicas=3, max_batch=64, max_tokens=4096, chunk=off", H100)
    (g,) = p.groups
    assert (g.tp, g.pp, g.ep, g.count, g.role) == (2, 1, 1, 3, "both")
    assert (p.max_batch, p.max_tokens, p.chunk) == (64, 4096, 0)
    assert p.num_devices == 6 and not p.disaggregated
    d = parse_serving_plan("prefill_tp=4,prefill_replicas=2,decode_tp=8,ep=2", H100, engine="sglang")
    assert [(g.tp, g.pp, g.ep, g.count, g.role) for g in d.groups] == [(4, 1, 2, 2, "prefill"),
                                                                       (8, 1, 2, 1, "decode")]
    assert d.disaggregated and d.num_devices == 16 and d.engine == "sglang"
    e = parse_serving_plan("", H100)
    assert [(g.tp, g.count) for g in e.groups] == [(1, 1)] and e.max_batch is None and e.chunk is None
    assert d.to_dict()["kv_dtype"] == "bf16"
    assert parse_serving_plan("tp=1", H100, dtype="fp8").to_dict()["kv_dtype"] == "bf16"
    assert parse_serving_plan("tp=1", H100, dtype="fp16").to_dict()["kv_dtype"] == "fp16"


@pytest.mark.parametrize("text,fragment", [
    ("tp", "not key=value"), ("tq=2", "unknown plan key"), ("tp=2,tp=4", "given twice"),
    ("tp=two", "must be an integer"), ("tp=0", "tp=0 must be >= 1"), ("chunk=-1", "chunk=-1 must be >= 0"),
    ("tp=2,decode_tp=4", "conflicts with disaggregation"),
    ("replicas=2,prefill_tp=4", "conflicts with disaggregation")])
def test_bad_plan_strings_are_one_line_errors(text, fragment):
    with pytest.raises(InputError, match=fragment):
        parse_serving_plan(text, H100)


def test_chunk_zero_is_allowed():
    assert parse_serving_plan("chunk=0", H100).chunk == 0


# ---- placement -----------------------------------------------------------------------------------
def test_a_replica_that_fits_a_node_never_straddles_two():
    """8 GPUs per node: TP-3 replicas at 0, 3, then 8 (6..8 would cross the node boundary)."""
    offsets, resized, notes = place([ReplicaGroup(H100, tp=3, count=4)], nodes_given=False)
    assert offsets == [0, 3, 8, 11]
    assert resized == [2] and notes == ["cluster dgx-h100 sized to 2 node(s) to hold the plan"]
    offsets, resized, notes = place([ReplicaGroup(H100, tp=4, count=2), ReplicaGroup(H100, tp=8)], False)
    assert offsets == [0, 4, 8] and resized == [2, 2]
    offsets, resized, _ = place([ReplicaGroup(H100, tp=8, pp=2)], False)  # 16 GPUs: spans two nodes
    assert offsets == [0] and resized == [2]
    offsets, resized, notes = place([ReplicaGroup(H100, tp=2, count=4)], False)
    assert offsets == [0, 2, 4, 6] and resized == [None] and notes == []


def test_a_plan_larger_than_the_given_nodes_is_an_error():
    with pytest.raises(InputError, match="needs 16 devices"):
        place([ReplicaGroup(H100, tp=8, count=2)], nodes_given=True)
    place([ReplicaGroup(H100, tp=8, count=1)], nodes_given=True)


# ---- runs of decode iterations -------------------------------------------------------------------
def test_iterations_within_a_run_of_growing_durations():
    """Durations d0, d0 + s, d0 + 2s, ...: j iterations end at j*d0 + s*j(j-1)/2."""
    assert Replica._steps_within(3.5, 1.0, 0.0, 10) == 3
    assert Replica._steps_within(3.0, 1.0, 0.0, 10) == 3
    assert Replica._steps_within(30.0, 1.0, 0.0, 10) == 10
    # d0 = 1, s = 0.5: ends at 1, 2.5, 4.5, 7
    assert Replica._steps_within(4.4, 1.0, 0.5, 10) == 2
    assert Replica._steps_within(4.5, 1.0, 0.5, 10) == 3
    assert Replica._steps_within(6.99, 1.0, 0.5, 10) == 3
    assert Replica._steps_within(0.5, 1.0, 0.5, 10) == 0
    assert Replica._steps_within(100.0, 1.0, 0.5, 4) == 4
    assert Replica._steps_within(1.0, 0.0, 0.0, 7) == 7
    # steep growth (d0 = 1, s = 10): ends at 1, 12, 33, 64
    assert [Replica._steps_within(e, 1.0, 10.0, 10) for e in (0.9, 1.0, 11.9, 12.0, 33.0, 63.9)] == \
        [0, 1, 1, 2, 3, 3]
    # slow growth over many iterations (d0 = 1, s = 0.01): 100 end at 100 + 49.5
    assert Replica._steps_within(149.5, 1.0, 0.01, 1000) == 100
    assert Replica._steps_within(149.49, 1.0, 0.01, 1000) == 99


def _wl(**kw):
    kw.setdefault("num_requests", 1)
    kw.setdefault("rate", RateSchedule.parse("1"))
    return ServingWorkload(**kw)


def test_a_lone_request_decodes_in_one_run_at_the_cost_layers_times():
    """One request, prompt 1000, 50 output tokens: TTFT is the prefill pass, then 49 decode passes
    whose KV grows by one token each; the run costs them as one event with the same total."""
    w = _wl(prompt_len=LengthDist.parse("1000"), output_len=LengthDist.parse("50"), seed=1)
    sim = ServingSimulation(L8B, parse_serving_plan("tp=1", H100), w)
    rep = sim.run()
    (req,) = sim.requests
    rep0 = sim.replicas[0]
    from simulator.serving.scheduler import Batch
    decode = []
    for i in range(49):
        b = Batch()
        b.num_decode, b.decode_kv_tokens, b.samples = 1, 1001 + i, 1
        decode.append(rep0.costs.iteration_s(b))
    assert req.first_token_s - req.arrival_s == pytest.approx(rep0.costs.prefill_s(1000), rel=1e-9)
    # the run interpolates the durations linearly between its first and last iteration: within
    # the 2e-3 that test_serving's run-vs-iteration check allows
    assert req.finish_s - req.first_token_s == pytest.approx(sum(decode), rel=2e-3)
    assert 49 * decode[0] <= req.finish_s - req.first_token_s <= 49 * decode[-1]
    assert rep0.iterations == 50 and rep.completed == 1
    assert rep0.busy_s == pytest.approx(req.finish_s - req.arrival_s, rel=1e-9)


def test_an_arrival_cuts_a_decode_run_after_the_iteration_in_flight():
    """Request 1 arrives during request 0's decode run: its prefill starts at the end of the
    decode iteration in flight (iteration-level scheduling, Orca), not at the end of the run."""
    from simulator.serving.workload import RateSchedule as RS
    w = ServingWorkload(num_requests=2, rate=RS.parse("10"), prompt_len=LengthDist.parse("500"),
                        output_len=LengthDist.parse("400"), seed=2)
    sim = ServingSimulation(L8B, parse_serving_plan("tp=1", H100), w)
    sim.run()
    r0, r1 = sorted(sim.requests, key=lambda r: r.arrival_s)
    assert r0.first_token_s < r1.arrival_s < r0.finish_s
    # it waits at most one decode iteration (r0's KV < 900 tokens) plus its own prefill pass,
    # which also carries r0's decode
    costs = sim.replicas[0].costs
    from simulator.serving.scheduler import Batch
    dec = Batch()
    dec.num_decode, dec.decode_kv_tokens, dec.samples = 1, 900, 1
    mixed = Batch()
    mixed.num_decode, mixed.decode_kv_tokens, mixed.samples = 1, 900, 2
    mixed.prefills, mixed.prefill_tokens = [(None, 500, 0)], 500
    assert r1.first_token_s - r1.arrival_s <= costs.iteration_s(dec) + costs.iteration_s(mixed) + 1e-9


def test_idle_prefill_time_with_and_without_chunking():
    """Chunked prefill (chunk 512) runs a 1300-token prompt as 512 + 512 + 276; without chunking
    in one pass."""
    w = _wl(prompt_len=LengthDist.parse("1300"), output_len=LengthDist.parse("2"))
    sim = ServingSimulation(L8B, parse_serving_plan("tp=1,chunk=512", H100), w)
    r = sim.replicas[0]
    costs = r.costs
    from simulator.serving.scheduler import Batch

    def chunk(q, done, last):
        b = Batch()
        b.prefills, b.prefill_tokens, b.samples = [(None, q, done)], q, 1 if last else 0
        return costs.iteration_s(b)
    assert r.idle_prefill_s(1300) == pytest.approx(chunk(512, 0, False) + chunk(512, 512, False)
                                                  + chunk(276, 1024, True), rel=1e-12)
    whole = ServingSimulation(L8B, parse_serving_plan("tp=1,chunk=off", H100), w).replicas[0]
    assert whole.idle_prefill_s(1300) == pytest.approx(costs.prefill_s(1300), rel=1e-12)
    assert r.cfg.chunked_prefill and not whole.cfg.chunked_prefill


# ---- disaggregation (DistServe / Splitwise) -------------------------------------------------------
def test_kv_transfer_moves_the_prompts_cache_over_the_tp_shards_links():
    """The prompt's KV (Llama 3.1 8B: 128 KiB per token in bf16) goes from the prefill to the
    decode replica as send/recv, split over min(prefill tp, decode tp) links; both on node 0."""
    w = _wl(num_requests=3, prompt_len=LengthDist.parse("2048"), output_len=LengthDist.parse("8"),
            rate=RateSchedule.parse("1"), seed=4)
    sim = ServingSimulation(L8B, parse_serving_plan("prefill_tp=2,decode_tp=4", H100), w)
    sim.run()
    nbytes = 2048 * kv_bytes_per_token(L8B, 1, 1, "bf16") / 2
    assert kv_bytes_per_token(L8B, 1, 1, "bf16") == 128 * 1024
    expected = collective_s(H100, "send_recv", 2, 1, float(nbytes))
    assert all(r.transfer_s == pytest.approx(expected, rel=1e-12) for r in sim.requests)
    pre = [r for r in sim.replicas if r.role == "prefill"][0]
    for r in sim.requests:
        assert r.first_token_s - r.arrival_s >= pre.idle_prefill_s(2048) + expected - 1e-9


def test_kv_to_a_replica_on_another_cluster_crosses_the_nics():
    """Prefill on DGX H100, decode on DGX H200 (two machines): the KV goes node to node over the
    network (send/recv between nodes), even though both replicas are first on their cluster."""
    from simulator.serving.engine import ServingPlan
    h200 = load_cluster("dgx-h200")
    plan = ServingPlan((ReplicaGroup(H100, 1, 1, 1, 1, "prefill"), ReplicaGroup(h200, 1, 1, 1, 1, "decode")))
    w = _wl(num_requests=2, prompt_len=LengthDist.parse("1024"), output_len=LengthDist.parse("4"),
            rate=RateSchedule.parse("1"), seed=6)
    sim = ServingSimulation(L8B, plan, w)
    sim.run()
    assert [r.offset for r in sim.replicas] == [0, 0]
    nbytes = float(1024 * 128 * 1024)
    over_nic = collective_s(H100.with_nodes(2), "send_recv", 2, 8, nbytes)
    assert over_nic > 2 * collective_s(H100, "send_recv", 2, 1, nbytes)  # slower than NVLink
    assert all(r.transfer_s == pytest.approx(over_nic, rel=1e-12) for r in sim.requests)


def test_one_token_outputs_end_on_the_prefill_replica():
    w = _wl(num_requests=3, prompt_len=LengthDist.parse("256"), output_len=LengthDist.parse("1"),
            rate=RateSchedule.parse("1"), seed=4)
    sim = ServingSimulation(L8B, parse_serving_plan("prefill_tp=1,decode_tp=1", H100), w)
    rep = sim.run()
    assert rep.completed == 3 and all(r.transfer_s == 0.0 for r in sim.requests)
    assert [r for r in sim.replicas if r.role == "decode"][0].iterations == 0


def test_decode_only_pool_receives_requests_with_their_first_token():
    """A pool of decode replicas alone (as `plan serve` sizes one): requests arrive with the KV and
    the first token already made elsewhere, so TTFT is zero and every token after is a decode."""
    from simulator.serving.engine import ServingPlan
    plan = ServingPlan((ReplicaGroup(H100, 1, 1, 1, 2, "decode"),))
    w = _wl(num_requests=4, prompt_len=LengthDist.parse("512"), output_len=LengthDist.parse("20"),
            rate=RateSchedule.parse("100"), seed=5)
    sim = ServingSimulation(L8B, plan, w)
    rep = sim.run()
    assert sim.decode_only and rep.completed == 4
    assert all(r.first_token_s == r.arrival_s for r in sim.requests)
    assert sum(r.iterations for r in sim.replicas) >= 19
    assert {r.replica for r in sim.requests} == {0, 1}


def test_a_disaggregated_plan_needs_both_pools():
    from simulator.serving.engine import ServingPlan
    plan = ServingPlan((ReplicaGroup(H100, 1, 1, 1, 1, "prefill"),))
    with pytest.raises(InputError, match="decode_replicas >= 1"):
        ServingSimulation(L8B, plan, _wl())


def test_prefill_replicas_never_reserve_for_decodes():
    """A prefill-only TensorRT-LLM replica allocates incrementally (it hands every request off
    after one token); the decode replica keeps GUARANTEED_NO_EVICT."""
    sim = ServingSimulation(L8B, parse_serving_plan("prefill_tp=1,decode_tp=1", H100, engine="trtllm"), _wl())
    assert [r.cfg.kv_reservation for r in sim.replicas] == ["incremental", "full"]


def test_replica_description_and_kv_load():
    w = _wl(num_requests=2, prompt_len=LengthDist.parse("300"), output_len=LengthDist.parse("3"))
    sim = ServingSimulation(L8B, parse_serving_plan("tp=2,replicas=2,max_batch=8,max_tokens=256", H100), w)
    d = sim.replicas[1].describe()
    assert (d["index"], d["tp"], d["first_device"], d["engine"], d["block_size"]) == (1, 2, 2, "vllm", 16)
    assert d["kv_capacity_tokens"] == d["kv_blocks"] * 16
    r = sim.replicas[0]
    assert r.cfg.max_num_seqs == 8 and r.cfg.max_num_batched_tokens == 256
    assert r.kv_load() == 0.0
    from simulator.serving.workload import Request
    r.scheduler.add(Request(0, 0.0, 1600, 4))
    assert r.kv_load() == pytest.approx(100 / r.kv.num_blocks, rel=1e-12)


def test_every_closed_loop_client_issues_its_next_request_after_a_response():
    """Closed loop (concurrency 2, 10 requests): each client, client 0 included, sends its next
    request when the previous one finishes, until all 10 are issued and served."""
    w = ServingWorkload(num_requests=10, concurrency=2, prompt_len=LengthDist.parse("128"),
                        output_len=LengthDist.parse("4"), seed=8)
    sim = ServingSimulation(L8B, parse_serving_plan("tp=1", H100), w)
    rep = sim.run()
    assert rep.completed == 10
    clients = [r.client for r in sim.requests]
    assert clients.count(0) >= 2 and clients.count(1) >= 2 and set(clients) == {0, 1}


# ---- decode runs, stalls, attention-DP routing ----------------------------------------------------
def test_steps_within_walks_back_a_float_overshoot(monkeypatch):
    """Iterations of 1, 2, 3 s (d0 = 1, slope = 1) finish at 1, 3, 6: within 5.9 s two are done.
    The closed-form root is only a first guess: if float rounding puts it one or more too high,
    the walk back must land on the exact count."""
    import math as _math

    import simulator.serving.engine as eng
    assert Replica._steps_within(5.9, 1.0, 1.0, 10) == 2
    assert Replica._steps_within(6.0, 1.0, 1.0, 10) == 3
    assert Replica._steps_within(3.5, 1.0, 0.0, 10) == 3  # constant 1-s iterations
    assert Replica._steps_within(100.0, 1.0, 1.0, 4) == 4  # capped at the run's length

    class Overshoot:  # a root three steps too high (odd, so a walk back in twos would miss)
        @staticmethod
        def sqrt(x):
            return _math.sqrt(x) + 3.0
    monkeypatch.setattr(eng, "math", Overshoot)
    assert Replica._steps_within(5.9, 1.0, 1.0, 10) == 2
    assert Replica._steps_within(0.5, 1.0, 1.0, 10) == 0


def test_a_stall_records_the_gap_since_the_requests_last_token():
    from types import SimpleNamespace
    rec = SimpleNamespace(stall_gaps=[])
    fake = SimpleNamespace(sim=SimpleNamespace(recorder=rec))
    Replica._stall(fake, SimpleNamespace(last_token_s=2.0), 5.5)
    assert rec.stall_gaps == [(5.5, 3.5)]


def test_trtllm_adp_router_caps_ranks_at_the_expected_count():
    """TensorRT-LLM's DefaultADPRouter: a new request may go only to ranks below
    max(ceil((active + 1) / dp), max active); among them the fewest active prompt tokens. With one
    request on each of 2 ranks the cap is 2, both qualify, and the lighter one (50 tokens) wins."""
    from types import SimpleNamespace

    from simulator.serving.engine import DPRankRouter
    r = DPRankRouter("trtllm", 2)
    r.tokens = [100, 50]
    ranks = [SimpleNamespace(outstanding=1), SimpleNamespace(outstanding=1)]
    assert r.pick(ranks) == 1
    ranks = [SimpleNamespace(outstanding=1), SimpleNamespace(outstanding=3)]
    assert r.pick(ranks) == 0  # rank 1 is at the cap (max(ceil(5/2), 3) = 3)


def test_dp_replica_kv_load_counts_used_and_queued_blocks():
    """KV load of an attention-DP replica (what the routers read): used blocks plus the blocks the
    queued prompts still need, over all ranks' blocks: (10 + 48/16) / 100."""
    from types import SimpleNamespace

    from simulator.serving.engine import DPReplica
    waiting = [SimpleNamespace(target=40, computed=8), SimpleNamespace(target=16, computed=0)]
    fake = SimpleNamespace(kv=SimpleNamespace(used=10, num_blocks=100, block_size=16),
                           ranks=[SimpleNamespace(waiting=waiting[:1]), SimpleNamespace(waiting=waiting[1:])])
    assert DPReplica.kv_load(fake) == pytest.approx((10 + 48 / 16) / 100)


def test_sglang_attention_dp_ranks_split_the_server_limits():
    """SGLang with --enable-dp-attention: chunked-prefill size, token budget and running requests
    are server-wide, so each of the dp ranks gets its share (server_args.py: chunked_prefill_size
    // dp, max_running_requests // dp); other engines' limits are per rank already; limits the plan
    pinned stay."""
    from simulator.serving.engine import dp_engine_config
    from simulator.serving.scheduler import EngineConfig
    cfg = EngineConfig(engine="sglang", max_num_seqs=1024, max_num_batched_tokens=16384, chunk=8192)
    r = dp_engine_config(cfg, 4)
    assert (r.chunk, r.max_num_batched_tokens, r.max_num_seqs) == (2048, 4096, 256)
    r = dp_engine_config(cfg, 3)  # 8192 // 3 = 2730, not 8192 | 3
    assert (r.chunk, r.max_num_batched_tokens, r.max_num_seqs) == (2730, 5461, 341)
    assert dp_engine_config(cfg, 4, pinned=("max_tokens",)).chunk == 8192
    assert dp_engine_config(replace_engine(cfg, "vllm"), 4) == replace_engine(cfg, "vllm")


def replace_engine(cfg, engine):
    from dataclasses import replace
    return replace(cfg, engine=engine)


def test_kv_between_replicas_of_one_node_stays_on_nvlink_whatever_their_offsets():
    """Two prefill replicas (tp=2 at GPUs 0-1 and 2-3) and a decode replica (tp=4 at GPUs 4-7) of
    one 8-GPU DGX H100: every prompt's KV moves over NVLink (stride 1), from either prefill
    replica; a node is devices_per_node consecutive GPUs."""
    w = _wl(num_requests=8, prompt_len=LengthDist.parse("1024"), output_len=LengthDist.parse("4"),
            rate=RateSchedule.parse("50"), seed=5)
    sim = ServingSimulation(L8B, parse_serving_plan("prefill_tp=2,prefill_replicas=2,decode_tp=4", H100), w)
    sim.run()
    assert sorted(r.offset for r in sim.replicas) == [0, 2, 4]
    nvlink = collective_s(H100, "send_recv", 2, 1, float(1024 * 128 * 1024 / 2))
    assert all(r.transfer_s == pytest.approx(nvlink, rel=1e-12) for r in sim.requests)


def test_an_attention_dp_decode_run_costs_its_first_and_last_pass_and_feeds_the_frontend():
    """Attention DP (2 ranks, Qwen3-30B-A3B on H200, one request: prompt 1000, 50 output tokens):
    the 49 decode passes run as one event whose length is the trapezoid of the synchronised pass
    (IterationCost.iteration_dp_s, the idle rank joining with a dummy batch) at the first decode's
    KV (1001 tokens) and at the last's (1049): the durations grow linearly with the cached tokens
    between them. The API server's streaming load follows the replica's latest pass (frontend.py:
    output tokens/s × per-token detokenise + stream time, Kleinrock processor sharing); its peak
    is the decode run's 49 tokens over the run's length (faster than the 1-token prefill pass)."""
    from simulator.serving.engine import DPReplica, ServingPlan
    from simulator.serving.scheduler import Batch
    h200 = load_cluster("dgx-h200")
    plan = ServingPlan((ReplicaGroup(h200, 1, 1, 2, 1, "both", 2),), engine="sglang", dtype="fp8",
                       prefix_caching=False, frontend="measured")
    w = _wl(prompt_len=LengthDist.parse("1000"), output_len=LengthDist.parse("50"), seed=1)
    sim = ServingSimulation(load_model("qwen3-30b-a3b"), plan, w)
    sim.run()
    (req,) = sim.requests
    rep = sim.replicas[0]
    assert isinstance(rep, DPReplica) and rep.iterations == 50

    def dec(kv):
        b = Batch()
        b.num_decode, b.decode_kv_tokens, b.samples = 1, kv, 1
        return rep.costs.iteration_dp_s([b, Batch()])  # SGLang round robin: rank 0 has it
    first, last = dec(1001), dec(1049)
    assert last > first
    run = req.finish_s - req.first_token_s
    assert run == pytest.approx(49 * (first + last) / 2, rel=1e-9)
    fe = rep.frontend
    per_token = fe.costs.output_s_per_token
    assert fe.max_load == pytest.approx(49 / run * per_token, rel=1e-9)
    assert fe.max_load > (req.first_token_s - req.arrival_s) ** -1 * per_token
    assert fe.load == 0.0  # idle after the last pass


def test_vllm_dp_router_counts_deferred_requests_as_waiting():
    """vLLM's DPLBAsyncMPClient scores each engine core by waiting·4 + running
    (vllm/v1/engine/core_client.py get_core_engine_for_request). A request added while a pass is
    in flight (async scheduling, vllm/v1/core/sched/async_scheduler.py) is queued in the engine
    core, not running, so it weighs as a waiting one: 4·(1 + 1) + 0 = 8 against 0 + 5 = 5."""
    from types import SimpleNamespace

    from simulator.serving.engine import DPRankRouter
    r = DPRankRouter("vllm", 2)
    ranks = [SimpleNamespace(waiting=[1], deferred=[(0, 2)], running=[]),
             SimpleNamespace(waiting=[], deferred=[], running=[3, 4, 5, 6, 7])]
    assert r.pick(ranks) == 1
    ranks[1].running.extend([8, 9, 10, 11])  # 9 > 8: now the first rank is the lighter
    assert r.pick(ranks) == 0


def test_kv_load_counts_what_a_partly_prefilled_prompt_still_needs():
    """The KV-aware router's load of a replica: blocks in use plus the blocks the queued prompts
    still need, their tokens not yet computed (a chunked prompt preempted or partly prefilled has
    computed > 0): (10 + (1000 - 200 + 600) / 16) / 100."""
    from types import SimpleNamespace
    waiting = [SimpleNamespace(target=1000, computed=200), SimpleNamespace(target=600, computed=0)]
    fake = SimpleNamespace(scheduler=SimpleNamespace(waiting=waiting), unreceived=[],
                           kv=SimpleNamespace(used=10, num_blocks=100, block_size=16))
    assert Replica.kv_load(fake) == pytest.approx((10 + 1400 / 16) / 100, rel=1e-12)


@pytest.mark.parametrize("dp", [1, 2])
def test_every_preemption_is_on_the_timeline_at_the_pass_that_made_it(dp):
    """vLLM preempts running requests (recompute) when the KV pool runs out (vllm/v1/core/sched/
    scheduler.py); the report's preemptions-over-time counts each one at the moment of the pass
    that preempted it: one timeline entry per preemption, plain replica or attention-DP ranks."""
    from simulator.serving.engine import ServingPlan
    if dp == 1:
        model, cl = L8B, H100
    else:
        model, cl = load_model("qwen3-30b-a3b"), load_cluster("dgx-h200")
    plan = ServingPlan((ReplicaGroup(cl, 1, 1, dp, 1, "both", dp),), engine="vllm", prefix_caching=False,
                       kv_blocks=64)
    w = _wl(num_requests=12, prompt_len=LengthDist.parse("300"), output_len=LengthDist.parse("200"),
            rate=RateSchedule.parse("200"), seed=3)
    sim = ServingSimulation(model, plan, w)
    rep = sim.run()
    n = sum(r.scheduler.preemptions for r in sim.replicas)
    assert n >= 2 and rep.completed == 12
    assert len(sim.recorder.preempt_times) == n
    assert sorted(sim.recorder.preempt_times) == sim.recorder.preempt_times  # in simulated time


def test_a_plan_names_dp_only_for_attention_dp_replicas():
    from simulator.serving.engine import ServingPlan
    h200 = load_cluster("dgx-h200")
    plan = ServingPlan((ReplicaGroup(h200, 1, 1, 1, 1), ReplicaGroup(h200, 1, 1, 2, 1, "both", 2)))
    one, two = plan.to_dict()["replicas"]
    assert "dp" not in one and two["dp"] == 2


def test_a_plain_replicas_frontend_load_follows_its_decode_run():
    """As for attention DP: the API server's streaming load is the latest pass's output tokens/s ×
    the per-token detokenise + stream time (frontend.py); one request (prompt 1000, 50 tokens on
    Llama 3.1 8B, H100): the peak is the 49-token decode run over its length."""
    plan = parse_serving_plan("tp=1", H100, frontend="measured")
    w = _wl(prompt_len=LengthDist.parse("1000"), output_len=LengthDist.parse("50"), seed=1)
    sim = ServingSimulation(L8B, plan, w)
    sim.run()
    (req,) = sim.requests
    fe = sim.replicas[0].frontend
    assert sim.replicas[0].iterations == 50
    assert fe.max_load == pytest.approx(49 / (req.finish_s - req.first_token_s) * fe.costs.output_s_per_token,
                                        rel=1e-9)


def test_goodput_search_starts_at_the_workloads_first_rate():
    """max_goodput_rate (DistServe §2.3) probes the workload's own (first) rate first, then doubles."""
    from simulator.serving.engine import max_goodput_rate
    w = _wl(num_requests=6, prompt_len=LengthDist.parse("128"), output_len=LengthDist.parse("4"),
            rate=RateSchedule.parse("3:10,50"), seed=2)
    out = max_goodput_rate(L8B, parse_serving_plan("tp=1", H100), w, target=0.0, iterations=0)
    rates = [r for r, _ in out["probes"]]
    assert rates[:3] == [3.0, 6.0, 12.0]


@pytest.mark.parametrize("dp", [1, 2])
def test_every_output_token_after_the_first_is_one_recorded_decode_slot(dp):
    """Iteration-level scheduling (Orca, OSDI'22): each pass gives every running decoder one token,
    and a run of decode passes simulated as one event gives each `steps` tokens. With requests
    arriving during runs (cutting them) and no preemption, the decode slots the recorder counts
    (decoders × steps over all passes) are exactly the tokens after each request's first."""
    from simulator.serving.engine import ServingPlan
    if dp == 1:
        model, cl = L8B, H100
    else:
        model, cl = load_model("qwen3-30b-a3b"), load_cluster("dgx-h200")
    plan = ServingPlan((ReplicaGroup(cl, 1, 1, dp, 1, "both", dp),), engine="sglang", prefix_caching=False)
    w = _wl(num_requests=10, prompt_len=LengthDist.parse("uniform:100:400"),
            output_len=LengthDist.parse("uniform:20:120"), rate=RateSchedule.parse("40"), seed=7)
    sim = ServingSimulation(model, plan, w)
    rep = sim.run()
    assert rep.completed == 10 and sum(r.scheduler.preemptions for r in sim.replicas) == 0
    rec = sim.recorder
    slots = sum(d * s for d, s in zip(rec.it_dec[0], rec.it_steps[0]))
    assert max(rec.it_steps[0]) > 1  # runs of several decode passes happened
    assert slots == sum(r.output_len - 1 for r in sim.requests)


def test_steps_within_counts_an_iteration_ending_at_the_elapsed_time():
    """A run's completed iterations (durations d0, d0 + slope, ...) include one ending exactly at
    `elapsed`: the closed-form root may land one short of it in floating point and is settled
    upward too (found by mutation testing: 241 returned where 242 iterations fit)."""
    from simulator.serving.engine import Replica
    d0, slope = 0.014302060167127723, 7.092958742237735e-05
    n = Replica._steps_within(5.529476259268854, d0, slope, 400)
    ends = lambda j: j * d0 + slope * j * (j - 1) / 2  # noqa: E731
    assert ends(n) <= 5.529476259268854 + 1e-12 < ends(n + 1)
    import random
    rng = random.Random(7)
    for _ in range(2000):
        d0, slope, j = rng.uniform(1e-3, 0.05), rng.uniform(0, 1e-3), rng.randint(1, 500)
        assert Replica._steps_within(ends(j), d0, slope, 1000) == j


def test_sglang_dp_ranks_take_requests_round_robin_in_rank_order():
    """SGLang's DataParallelController.round_robin_scheduler (python/sglang/srt/managers/
    data_parallel_controller.py) sends a request to worker round_robin_counter, then sets
    round_robin_counter = (round_robin_counter + 1) % len(workers): with dp = 4 the ranks go
    0, 1, 2, 3, 0, 1, whatever their loads."""
    from simulator.serving.engine import DPRankRouter
    r = DPRankRouter("sglang", 4)
    assert [r.pick([None] * 4) for _ in range(6)] == [0, 1, 2, 3, 0, 1]


def test_a_decode_replica_named_in_a_fleet_document_has_no_api_server_stage():
    """Disaggregated serving (DistServe, OSDI'24 §4): a decode instance receives the prompt's KV and
    first token from a prefill instance, never the HTTP request or its text, so only the prefill
    replica has the API-server stage (frontend.py) that takes requests in. The roles here come
    from a `plan serve` fleet document read as JSON (ui/jobs.py fleet_serving_plan), strings made
    at run time rather than literals."""
    import dataclasses
    import json

    from ui.jobs import fleet_serving_plan
    doc = json.loads('{"replicas": [{"device": "h100-sxm", "tp": 1, "count": 1, "role": "prefill"},'
                     ' {"device": "h100-sxm", "tp": 1, "count": 1, "role": "decode"}]}')
    plan = dataclasses.replace(fleet_serving_plan(doc), frontend="measured")
    assert [g.role for g in plan.groups] == ["prefill", "decode"] and plan.disaggregated
    w = _wl(num_requests=2, prompt_len=LengthDist.parse("256"), output_len=LengthDist.parse("4"),
            rate=RateSchedule.parse("10"), seed=3)
    sim = ServingSimulation(L8B, plan, w)
    assert sim.run().completed == 2
    pre, dec = sim.replicas
    assert (pre.role, dec.role) == ("prefill", "decode")
    assert pre.describe()["frontend"]["requests"] == 2
    assert dec.frontend is None and dec.describe()["frontend"] is None


def test_the_frontend_note_quotes_the_peak_streaming_load_in_percent():
    """The run's note gives the API server's peak streaming load as a percentage of its thread
    (frontend.py: output tokens/s × per-token detokenise + stream time). 32 requests (prompt 64,
    128 tokens) at once on Llama 3.1 8B, one H100: the peak is at least the mean output load over
    the replica's busy time, c·Σ output tokens / busy_s (a maximum is >= an average), which is
    several percent here; and the note's figure is the replica's reported max_output_load."""
    import re
    plan = parse_serving_plan("tp=1", H100, frontend="measured")
    w = _wl(num_requests=32, prompt_len=LengthDist.parse("64"), output_len=LengthDist.parse("128"),
            rate=RateSchedule.parse("1000"), seed=2)
    sim = ServingSimulation(L8B, plan, w)
    rep = sim.run()
    assert rep.completed == 32
    (note,) = [n for n in sim.notes if n.startswith("frontend (measured)")]
    pct = int(re.search(r"output streaming up to (\d+)% of the API-server thread", note).group(1))
    r = sim.replicas[0]
    c = 5.90e-7 + 8.10e-6  # simulator/data/frontend.yaml measured: detokenise + one event per token
    mean_load = c * 32 * 128 / r.busy_s
    assert mean_load > 0.02
    assert pct >= int(mean_load * 100)
    assert pct == round(r.describe()["frontend"]["max_output_load"] * 100)


def test_goodput_bisection_keeps_passing_rates_below_and_failing_rates_above(monkeypatch):
    """DistServe's goodput search (Zhong et al. OSDI'24 §2.3): the rate is doubled from the
    workload's until SLO attainment falls below the target, then bisected between the last rate
    that met it and the first that did not. With attainment 1.0 up to 5.3 req/s and 0.5 above
    (target 0.9), from 1 req/s: 1, 2, 4 pass and 8 fails; bisection probes 6 (fails), 5 (passes),
    5.5 (fails), so the goodput is 5 req/s, the highest passing probe."""
    from types import SimpleNamespace

    import simulator.serving.engine as eng

    def fake(model, plan, wl, **kw):
        (rate, _), = wl.rate.segments
        return SimpleNamespace(slo_attainment=1.0 if rate <= 5.3 else 0.5)
    monkeypatch.setattr(eng, "simulate", fake)
    out = eng.max_goodput_rate(L8B, parse_serving_plan("tp=1", H100), _wl(rate=RateSchedule.parse("1")),
                               target=0.9, iterations=3)
    assert out["probes"] == [(1.0, 1.0), (2.0, 1.0), (4.0, 1.0), (8.0, 0.5), (6.0, 0.5), (5.0, 1.0), (5.5, 0.5)]
    assert out["rate_req_per_s"] == 5.0 and out["bounded"] and out["target"] == 0.9


def test_a_plan_and_its_replica_groups_are_immutable_hashable_values():
    """ServingPlan and ReplicaGroup are frozen dataclasses (engine.py): every replica of a group
    holds the same ReplicaGroup object, so a group cannot be changed under a running simulation
    (setting a field raises), and a plan is a value: equal plans hash alike and can key a dict
    of results, groups included."""
    import dataclasses
    plan = parse_serving_plan("prefill_tp=2,decode_tp=4", H100)
    g = plan.groups[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.tp = 8
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.engine = "sglang"
    again = parse_serving_plan("prefill_tp=2,decode_tp=4", H100)
    assert again == plan and {plan: 1}[again] == 1 and hash(again.groups[1]) == hash(plan.groups[1])


def test_kv_transfers_into_one_decode_replica_go_one_at_a_time():
    """A decode replica takes one prompt's KV at a time (engine.py Replica.inbox, a one-slot
    resource: each transfer runs at the full send/recv speed of collective_s, as DistServe's
    transfer of one request's KV). Two prefill replicas (tp=1, GPUs 0 and 1) finish identical
    prompts (1024 tokens, both arriving at t = 0) in the same instant; the decode replica (GPU 2,
    NVLink) receives the first KV after one transfer time t and the second after 2·t."""
    w = ServingWorkload(trace=[(0.0, 1024, 4, (), 0), (0.0, 1024, 4, (), 0)])
    sim = ServingSimulation(L8B, parse_serving_plan("prefill_tp=1,prefill_replicas=2,decode_tp=1", H100), w)
    assert sim.run().completed == 2
    t = collective_s(H100, "send_recv", 2, 1, float(1024 * 128 * 1024))
    pre = sim.replicas[0]
    done = pre.idle_prefill_s(1024)  # both prefills run alone on idle replicas from t = 0
    assert sorted(r.first_token_s for r in sim.requests) == pytest.approx([done + t, done + 2 * t], rel=1e-12)
    assert all(r.transfer_s == pytest.approx(t, rel=1e-12) for r in sim.requests)


# ---- decode runs of a batch, sub-second runs, attention-DP pools, trace lengths -------------------
def test_a_decode_run_of_a_batch_lasts_the_trapezoid_of_its_first_and_last_pass():
    """docs/modeling.md §4.3 (runs of decode passes): 8 closed-loop clients send a 1000-token
    prompt each at t = 0; vLLM (budget 8192) prefills all 8 in one pass, which samples each
    request's first token, then the 2000 remaining tokens are 2000 decode-only passes of 8 rows
    with nothing else changing: one event. Pass i reads 8·1001 + 8·i KV tokens, so the run lasts
    2000·(d(8·1001) + d(8·1001 + 8·1999))/2 (durations linear between the first and last pass)."""
    from simulator.serving.scheduler import Batch
    w = ServingWorkload(num_requests=8, concurrency=8, prompt_len=LengthDist.parse("1000"),
                        output_len=LengthDist.parse("2001"))
    sim = ServingSimulation(L8B, parse_serving_plan("tp=1", H100), w)
    sim.run()
    rep = sim.replicas[0]
    assert sim.recorder.it_steps[0] == [1, 2000] and sim.recorder.it_dec[0] == [0, 8]

    def d(kv):
        b = Batch()
        b.num_decode, b.decode_kv_tokens, b.samples = 8, kv, 8
        return rep.costs.iteration_s(b)
    first, last = d(8 * 1001), d(8 * 1001 + 8 * 1999)
    assert last > 1.05 * first  # the KV read grows enough to tell the endpoints apart
    for r in sim.requests:
        assert r.finish_s - r.first_token_s == pytest.approx(2000 * (first + last) / 2, rel=1e-9)


def test_steps_within_a_sub_second_run_with_a_negligible_slope():
    """docs/modeling.md §4.3: the j-th pass of a run ends j·d0 + s·j(j−1)/2 after its start. With
    d0 = 2⁻¹⁰ s and s = 1e-15 s (the near-constant branch, whose first guess elapsed // d0 ignores
    s), the 512th pass ends 512·2⁻¹⁰ + 1e-15·512·511/2 = 0.5 + 1.3e-10 s: by 0.5 s only 511
    passes are done. Counted here by summing the durations exactly (fractions)."""
    from fractions import Fraction
    d0, s = 2.0 ** -10, 1e-15

    def done(elapsed):  # passes completed by `elapsed`, summing durations one by one
        t, n = Fraction(0), 0
        while t + Fraction(d0) + Fraction(s) * n <= Fraction(elapsed):
            t += Fraction(d0) + Fraction(s) * n
            n += 1
        return n
    for elapsed in (0.5, 0.25, 0.5 + 2e-10, 0.1234):
        assert Replica._steps_within(elapsed, d0, s, 10**6) == done(elapsed)
    assert done(0.5) == 511 and done(0.5 + 2e-10) == 512


def test_an_attention_dp_ranks_pool_holds_its_share_of_the_experts_whatever_ep():
    """docs/modeling.md §4.5.1: an attention-DP rank's KV pool is sized from its own memory, with
    the experts over all tp·N devices (kv_pool(..., ep=tp·N)), whether they are split by EP or by
    TP. Qwen3-30B-A3B (config.json: 48 MoE layers of 128 experts of 3·2048·768 weights), bf16,
    tp = 1, N = 4, ep = 1: each GPU holds a quarter of the experts, 3/4 of their bytes less than
    a whole model on one GPU, and the same pool as with ep = 4."""
    from simulator.serving.engine import ServingPlan
    from simulator.serving.kv_cache import weight_bytes_per_gpu
    h200 = load_cluster("dgx-h200")
    qwen = load_model("qwen3-30b-a3b")
    w = _wl(prompt_len=LengthDist.parse("128"), output_len=LengthDist.parse("4"))

    def rank(ep):
        plan = ServingPlan((ReplicaGroup(h200, 1, 1, ep, 1, "both", 4),), prefix_caching=False)
        return ServingSimulation(qwen, plan, w).replicas[0]
    r1, r4 = rank(1), rank(4)
    experts = 48 * 128 * 3 * 2048 * 768 * 2  # bytes of every routed expert in bf16
    whole = weight_bytes_per_gpu(qwen, 1, 1, 1, "bf16")
    assert r1.pool.breakdown["weights_bytes"] == pytest.approx(whole - 0.75 * experts, rel=1e-12)
    assert r1.pool.num_blocks == r4.pool.num_blocks
    assert r1.kv.num_blocks == 4 * r1.pool.num_blocks


def test_trace_lengths_given_as_numpy_integers_run_as_python_ints():
    """A trace built in Python (ui/state.py, a notebook reading a DataFrame) may hold NumPy
    integers: the workload takes them as Python ints (the cost grid uses int.bit_length), so the
    run equals the one from plain ints (it raised AttributeError before). A fractional length is
    an InputError naming the field."""
    import numpy as np
    rows = [(0.05 * i, 300 + 37 * i, 20 + i, (), 0) for i in range(6)]
    npy = [(np.float64(t), np.int64(p), np.int64(o), k, np.int64(kt)) for t, p, o, k, kt in rows]
    plan = parse_serving_plan("tp=1", H100)
    a = ServingSimulation(L8B, plan, ServingWorkload(num_requests=0, trace=rows))
    b = ServingSimulation(L8B, plan, ServingWorkload(num_requests=0, trace=npy))
    ra, rb = a.run(), b.run()
    assert [type(r.prompt_len) for r in b.requests] == [int] * 6
    assert [(r.prompt_len, r.output_len) for r in b.requests] == [(300 + 37 * i, 20 + i) for i in range(6)]
    assert [r.finish_s for r in b.requests] == [r.finish_s for r in a.requests]
    assert rb.ttft_s == ra.ttft_s and rb.completed == 6
    with pytest.raises(InputError, match="output length 2.5"):
        ServingWorkload(num_requests=0, trace=[(0.0, 100, 2.5, (), 0)])


# ---- cut decode runs, attention-DP timelines and sizing, node-crossing KV, tiny SGLang chunks ----
def test_a_decode_run_cut_by_an_arrival_ends_with_the_iteration_in_flight(cut_decode_run):
    """docs/modeling.md §4.3 with Orca-style iteration-level scheduling (vLLM v1 core.py: a new
    request joins at the next step): a run of passes lasting 1, 1.5, 2, 2.5, ... s (d0 = 1,
    slope 0.5) started at t = 0 and interrupted at t = 3 (two passes done, the third in flight)
    ends when the third pass does, 1 + 1.5 + 2 = 4.5 s, having run 3 passes; with cut_after = 2
    (one pass more already queued, the engines' async/overlap step) it ends after 4: 7 s."""
    for cut_after, n_exp in ((1, 3), (2, 4)):
        steps, end, fake = cut_decode_run(cut_after, 1.0, 0.5, 10, at=3.0)
        expected_end = sum(1.0 + 0.5 * k for k in range(n_exp))
        assert steps == n_exp
        assert end == pytest.approx(expected_end, rel=1e-12)
        assert not fake.in_run


def test_an_attention_dp_decode_run_records_its_mean_pass_duration():
    """docs/modeling.md §4.3: the iteration timeline records a run of n decode passes as one entry
    of mean duration (run length)/n. Attention DP (SGLang round robin, 2 ranks, Qwen3-30B-A3B on
    H200, one request of prompt 1000 and 50 output tokens): the 49-pass run's passes grow
    linearly from the synchronised pass at 1001 KV tokens to the one at 1049, so its mean is
    (first + last)/2."""
    from simulator.serving.engine import ServingPlan
    from simulator.serving.scheduler import Batch
    h200 = load_cluster("dgx-h200")
    plan = ServingPlan((ReplicaGroup(h200, 1, 1, 2, 1, "both", 2),), engine="sglang", dtype="fp8",
                       prefix_caching=False)
    w = _wl(prompt_len=LengthDist.parse("1000"), output_len=LengthDist.parse("50"), seed=1)
    sim = ServingSimulation(load_model("qwen3-30b-a3b"), plan, w)
    sim.run()
    rep = sim.replicas[0]

    def dec(kv):
        b = Batch()
        b.num_decode, b.decode_kv_tokens, b.samples = 1, kv, 1
        return rep.costs.iteration_dp_s([b, Batch()])
    assert sim.recorder.it_steps[0][-1] == 49
    assert sim.recorder.it_dur[0][-1] == pytest.approx((dec(1001) + dec(1049)) / 2, rel=1e-9)


@pytest.mark.parametrize("tp,dp,frac", [(2, 2, 0.85), (2, 4, 0.81), (1, 2, 0.87)])
def test_sglang_attention_dp_sizes_mem_fraction_by_all_tp_times_dp_gpus(tp, dp, frac):
    """SGLang with --enable-dp-attention runs --tp tp·dp over all the replica's GPUs and picks
    mem_fraction_static by that tp_size (python/sglang/srt/server_args.py: 0.88/0.87/0.85/0.81/
    0.79 for tp_size < 2/4/8/16/more): tp 2 × dp 2 is tp_size 4 (0.85), 2 × 4 is 8 (0.81),
    1 × 2 is 2 (0.87)."""
    from simulator.serving.engine import ServingPlan
    h200 = load_cluster("dgx-h200")
    plan = ServingPlan((ReplicaGroup(h200, tp, 1, tp * dp, 1, "both", dp),), engine="sglang",
                       prefix_caching=False)
    w = _wl(prompt_len=LengthDist.parse("128"), output_len=LengthDist.parse("4"))
    rep = ServingSimulation(load_model("qwen3-30b-a3b"), plan, w).replicas[0]
    assert rep.cfg.memory_fraction == frac


def test_kv_from_a_lower_node_to_a_higher_node_of_one_cluster_crosses_the_nics():
    """DistServe OSDI'24 §4 / Splitwise ISCA'24: prefill and decode instances on different nodes
    move the KV over the inter-node network. Prefill tp=8 fills node 0 of a DGX H100 cluster,
    decode tp=8 node 1: each request's 1024-token KV (128 KiB per token, 8 shards over 8 links)
    is a node-to-node send/recv (stride 8 GPUs), slower than NVLink."""
    w = _wl(num_requests=2, prompt_len=LengthDist.parse("1024"), output_len=LengthDist.parse("4"),
            rate=RateSchedule.parse("1"), seed=6)
    sim = ServingSimulation(L8B, parse_serving_plan("prefill_tp=8,decode_tp=8", H100), w)
    sim.run()
    pre = [r for r in sim.replicas if r.role == "prefill"][0]
    dec = [r for r in sim.replicas if r.role == "decode"][0]
    assert (pre.offset, dec.offset) == (0, 8) and pre.cluster.name == dec.cluster.name
    nbytes = float(1024 * 128 * 1024 / 8)
    over_nic = collective_s(H100.with_nodes(2), "send_recv", 2, 8, nbytes)
    assert over_nic > 2 * collective_s(H100, "send_recv", 2, 1, nbytes)
    assert all(r.transfer_s == pytest.approx(over_nic, rel=1e-12) for r in sim.requests)


def test_sglang_attention_dp_chunk_is_floored_at_one_token():
    """SGLang divides chunked_prefill_size by dp_size (server_args.py _handle_data_parallelism);
    the simulator keeps at least one token per chunk (0 would mean chunking off): chunk 3 over
    dp 2 is 3 // 2 = 1, and chunk 1 over dp 4 stays 1."""
    from simulator.serving.engine import dp_engine_config
    from simulator.serving.scheduler import EngineConfig
    cfg = EngineConfig(engine="sglang", max_num_seqs=64, max_num_batched_tokens=4096, chunk=3)
    assert dp_engine_config(cfg, 2).chunk == 3 // 2
    cfg = EngineConfig(engine="sglang", max_num_seqs=64, max_num_batched_tokens=4096, chunk=1)
    assert dp_engine_config(cfg, 4).chunk == 1


def test_kv_between_groups_of_a_resized_cluster_stays_on_nvlink_within_a_node():
    """DistServe OSDI'24 §4.3 (placement: prefill and decode instances of one node exchange KV
    over NVLink, across nodes over the network). Prefill tp=4 at GPUs 0-3, decode tp=4 at 4-7
    (node 0) and 8-11 (node 1): the plan outgrows one DGX H100, so the cluster is sized to two
    nodes. KV into the decode replica on node 0 moves over NVLink (stride 1), into the one on
    node 1 over the NICs (stride 8); 1024 tokens × 128 KiB over 4 shard links. (Before the fix
    each group's resize made its own Cluster object and every transfer took the NICs.)"""
    w = _wl(num_requests=4, prompt_len=LengthDist.parse("1024"), output_len=LengthDist.parse("4"),
            rate=RateSchedule.parse("1"), seed=6)
    sim = ServingSimulation(L8B, parse_serving_plan("prefill_tp=4,decode_tp=4,decode_replicas=2", H100), w)
    sim.run()
    assert [(r.role, r.offset, r.cluster.num_nodes) for r in sim.replicas] == [
        ("prefill", 0, 2), ("decode", 4, 2), ("decode", 8, 2)]
    nbytes = float(1024 * 128 * 1024 / 4)
    nvlink = collective_s(H100, "send_recv", 2, 1, nbytes)
    nic = collective_s(H100.with_nodes(2), "send_recv", 2, 8, nbytes)
    assert nic > 2 * nvlink
    assert {r.replica for r in sim.requests} == {1, 2}  # both decode replicas take requests
    for r in sim.requests:
        assert r.transfer_s == pytest.approx(nvlink if r.replica == 1 else nic, rel=1e-12)
