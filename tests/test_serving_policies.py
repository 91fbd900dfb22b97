"""Scenario tests of the engine policies behind one seam (simulator/serving/policies.py): crafted
arrival sequences with the expected batch, admission and preemption at each pass, per policy.

Sources:
- vLLM async scheduling (vllm/v1/core/sched/async_scheduler.py): the next step is scheduled while
  the current one runs, so a request arriving during step n is first scheduled in step n+2.
- TensorRT-LLM overlap scheduler (PyTorch backend py_executor.py `_executor_loop_overlap`; docs:
  "introduces one extra decoding step"); SGLang event_loop_overlap (on by default).
- TensorRT-LLM capacityScheduler.cpp: GuaranteedNoEvictScheduler starts a context request only if
  blocks for it and every started request to completion are free, stops at the first that does
  not fit, never evicts; MaxUtilizationScheduler allocates for the next step only and pauses the
  last started request when a block is missing.
- The engine loops decide the next pass right after processing the last one's outputs (vLLM
  vllm/v1/engine/core.py run_busy_loop; TRT-LLM py_executor.py _executor_loop(_overlap); SGLang
  event_loop): a closed-loop client's answer to a pass's output misses the pass already decided.
- SGLang schedule_policy.py: `lpm` sorts the waiting queue by longest cached prefix, FCFS above
  128 waiting requests.
"""
from __future__ import annotations

import pytest

from hwmodels.clusters import load_cluster
from hwmodels.devices import get_device
from hwmodels.errors import InputError
from simulator.models import load_model
from simulator.serving.engine import ServingSimulation, parse_serving_plan
from simulator.serving.kv_cache import KVCache
from simulator.serving.policies import (ENGINE_POLICIES, GuaranteedNoEvict, MaxUtilization,
                                        NewTokenRatio, PreemptNewest, describe)
from simulator.serving.scheduler import Batch, EngineConfig, Scheduler, engine_config
from simulator.serving.workload import LengthDist, RateSchedule, Request, ServingWorkload

H100 = get_device("h100-sxm")


def _sched(num_blocks, block_size=4, prefix_caching=False, **cfg):
    finished = []
    cfg = EngineConfig(block_size=block_size, prefix_caching=prefix_caching, **cfg)
    kv = KVCache(num_blocks, block_size, prefix_caching=prefix_caching)
    s = Scheduler(cfg, kv, on_finish=lambda r, now: finished.append(r.id))
    return s, kv, finished


def _ids(batch):
    return [req.id for req, _, _ in batch.prefills]


def _first_passes(s, t: float, passes) -> dict:
    """Run one-second passes numbered `passes` from time `t`: each request's first pass."""
    seen = {}
    for n in passes:
        b = s.schedule(t)
        for rid in _ids(b):
            seen.setdefault(rid, n)
        t += 1.0
        s.complete(b, t)
    return seen


# ---- extra step: vLLM async scheduling / TRT-LLM and SGLang overlap scheduler ---------------------
@pytest.mark.parametrize("extra", [True, False])
def test_a_request_arriving_during_a_pass_waits_one_more_pass_with_async_scheduling(extra):
    """Request 0 decodes. Request 1 arrives while pass 2 runs. Async scheduling: pass 3 was already
    built when pass 2 started, so request 1 is prefilled in pass 4; without it, in pass 3."""
    s, kv, finished = _sched(100, max_num_seqs=8, max_num_batched_tokens=64, extra_step=extra)
    s.add(Request(0, 0.0, 8, 50))
    b = s.schedule(0.0)  # pass 1: prefill of request 0
    assert _ids(b) == [0]
    s.complete(b, 1.0)
    b = s.schedule(1.0)  # pass 2: decode
    s.add(Request(1, 1.5, 8, 4))  # arrives while pass 2 runs
    s.complete(b, 2.0)
    b3 = s.schedule(2.0)
    s.complete(b3, 3.0)
    b4 = s.schedule(3.0)
    if extra:
        assert _ids(b3) == [] and b3.num_decode == 1 and s.outstanding == 2
        assert _ids(b4) == [1]
    else:
        assert _ids(b3) == [1]


def test_async_scheduling_on_an_idle_engine_schedules_at_once():
    """Nothing in flight: the arrival is scheduled in the very next pass, with or without it."""
    s, kv, finished = _sched(100, max_num_seqs=8, max_num_batched_tokens=64, extra_step=True)
    s.add(Request(0, 0.0, 8, 2))
    assert _ids(s.schedule(0.0)) == [0]
    # an arrival during the last pass of the only request: the engine would idle, so it runs next
    s2, _, _ = _sched(100, max_num_seqs=8, max_num_batched_tokens=64, extra_step=True)
    s2.add(Request(0, 0.0, 8, 1))
    b = s2.schedule(0.0)
    s2.add(Request(1, 0.5, 8, 1))
    s2.complete(b, 1.0)
    assert _ids(s2.schedule(1.0)) == [1]


def test_a_decode_run_cut_by_an_arrival_runs_one_more_pass_with_overlap():
    """DES: request 1 arrives during request 0's decode run. Its TTFT grows by one decode pass
    with the TRT-LLM overlap scheduler on (the pass already scheduled), compared with off."""
    model, cluster = load_model("llama3.1-8b"), load_cluster("dgx-h100")
    wl = ServingWorkload(num_requests=2, rate=RateSchedule.parse("10"), prompt_len=LengthDist.parse("500"),
                         output_len=LengthDist.parse("400"), seed=2)
    ttft = {}
    for on in ("on", "off"):
        plan = parse_serving_plan("tp=1", cluster, engine="trtllm",
                                  engine_options=(("overlap_scheduler", on),))
        sim = ServingSimulation(model, plan, wl)
        sim.run()
        r0, r1 = sorted(sim.requests, key=lambda r: r.arrival_s)
        assert r0.first_token_s < r1.arrival_s < r0.finish_s
        ttft[on] = r1.first_token_s - r1.arrival_s
        costs = sim.replicas[0].costs
    dec = Batch()
    dec.num_decode, dec.samples = 1, 1
    passes = []
    for kv in (500, 900):  # request 0's KV while request 1 waits lies between these
        dec.decode_kv_tokens = kv
        passes.append(costs.iteration_s(dec))
    assert min(passes) * 0.999 <= ttft["on"] - ttft["off"] <= max(passes) * 1.001


def _answering_sched(extra):
    """A scheduler whose finished requests are answered at once by a closed-loop client (the
    client's next request is added from inside `complete`, as ServingSimulation.finished does)."""
    s, kv, finished = _sched(100, max_num_seqs=8, max_num_batched_tokens=64, extra_step=extra)
    answers = []

    def on_finish(req, now):
        finished.append(req.id)
        if req.id == 0:
            nxt = Request(10, now, 8, 4)
            answers.append(nxt)
            s.add(nxt)
    s.on_finish = on_finish
    return s, answers


@pytest.mark.parametrize("extra", [False, True])
def test_a_closed_loop_answer_misses_the_pass_the_engine_loop_already_decided(extra):
    """Requests 0 (2 output tokens) and 1 (6) start together; request 0 ends with pass 2 and its
    client answers with request 10 at once. The engine loop decides pass 3 as soon as it has the
    outputs of pass 2 (vllm/v1/engine/core.py run_busy_loop; TRT-LLM py_executor.py
    _executor_loop; SGLang event_loop), before the answer's round trip ends: request 10 is
    prefilled in pass 4, and in pass 5 with an extra step (pass 3 already ran on the GPU when pass
    2's outputs came out). Removing the rule puts it in pass 3 (4 with an extra step)."""
    s, answers = _answering_sched(extra)
    s.add(Request(0, 0.0, 8, 2))
    s.add(Request(1, 0.0, 8, 6))
    seen = _first_passes(s, 0.0, range(1, 7))
    assert answers and answers[0].id == 10
    assert seen[10] == (5 if extra else 4)


@pytest.mark.parametrize("extra", [False, True])
def test_a_closed_loop_answer_to_an_idle_engine_runs_at_once(extra):
    """The answered request was the only one: the engine loop blocks on its input queue and takes
    the answer in the very next pass, with or without an extra step."""
    s, answers = _answering_sched(extra)
    s.add(Request(0, 0.0, 8, 2))
    b = s.schedule(0.0)
    s.complete(b, 1.0)
    b = s.schedule(1.0)
    s.complete(b, 2.0)  # request 0 ends; request 10 answers
    assert answers and _ids(s.schedule(2.0)) == [10]


@pytest.mark.parametrize("extra", [False, True])
def test_answers_to_an_idle_engine_start_with_the_first_alone(extra):
    """Requests 0, 1 and 2 end with the same pass and their clients answer with 10, 11, 12. The
    engine would idle: its loop blocks on the input queue and starts a pass with the first answer
    (vllm/v1/engine/core.py _process_input_queue); the client sends the others one after another
    (aiperf issue #1424), so they arrive while that pass runs and join the pass after it (two
    after with an extra step). Releasing all three at once would prefill them together."""
    s, b = _burst_of_answers(extra, 3, answer_output=4, blocks=100, max_seqs=8, budget=64)
    assert _ids(b) == [0, 1, 2]
    seen = _first_passes(s, 1.0, range(2, 6))
    assert seen[10] == 2
    assert seen[11] == seen[12] == (4 if extra else 3)


def _burst_of_answers(extra, n, answer_output, blocks, max_seqs, budget):
    """Requests 0..n-1 (one output token each) run in pass 1 and end together; each client
    answers at once with request 10+i of `answer_output` tokens. The scheduler after pass 1."""
    s, kv, finished = _sched(blocks, max_num_seqs=max_seqs, max_num_batched_tokens=budget, extra_step=extra)
    nxt = iter(range(10, 10 + n))

    def on_finish(req, now):
        finished.append(req.id)
        if req.id < 10:
            s.add(Request(next(nxt), now, 8, answer_output))
    s.on_finish = on_finish
    for i in range(n):
        s.add(Request(i, 0.0, 8, 1))
    b = s.schedule(0.0)
    s.complete(b, 1.0)  # all end (one output token); their clients answer
    return s, b


@pytest.mark.parametrize("extra", [False, True])
def test_a_burst_to_an_idle_engine_is_not_served_one_per_pass(extra):
    """As above, but every answer ends with its prefill pass (a prefill-only replica's requests
    leave after one pass): the first answer runs alone in pass 2 and the engine is idle again
    when pass 3 is built, with the rest of the burst already arrived, so all of it joins pass 3.
    Taking one deferred request per idle pass (the rule above, applied again) would prefill a
    burst of thousands of prompts one by one and cost quadratic time."""
    s, _ = _burst_of_answers(extra, 6, answer_output=1, blocks=1000, max_seqs=64, budget=512)
    seen = _first_passes(s, 1.0, range(2, 6))
    assert seen[10] == 2
    assert {seen[i] for i in range(11, 16)} == {3}


def test_engine_defaults_for_the_extra_step():
    """vLLM 0.10-0.12: async scheduling opt-in; SGLang and TRT-LLM 1.0: overlap scheduler on."""
    assert not engine_config("vllm", H100, 1).extra_step
    assert engine_config("vllm", H100, 1, async_scheduling="on").extra_step
    assert engine_config("sglang", H100, 1).extra_step
    assert not engine_config("sglang", H100, 1, overlap_scheduler="off").extra_step
    assert engine_config("trtllm", H100, 1).extra_step
    assert not engine_config("trtllm", H100, 1, overlap_scheduler=False).extra_step


# ---- TRT-LLM capacity schedulers ------------------------------------------------------------------
def _trtllm_sched(num_blocks, policy, max_batch=8, tokens=64, **kw):
    cfg = engine_config("trtllm", H100, 1, capacity_scheduler=policy, max_num_seqs=max_batch,
                        max_num_batched_tokens=tokens, block_size=4, prefix_caching=False,
                        overlap_scheduler="off", **kw)
    finished = []
    kv = KVCache(num_blocks, 4, prefix_caching=False)
    return Scheduler(cfg, kv, on_finish=lambda r, now: finished.append(r.id)), kv, finished


def test_guaranteed_no_evict_stops_at_the_first_request_that_does_not_fit():
    """12 blocks of 4. Request 0 (8 + 12 tokens = 5 blocks reserved) runs; request 1 (prompt 24,
    output 8 = 8 blocks) does not fit the 7 left, and request 2 behind it (2 blocks) is not
    admitted either (the loop breaks); both start only once request 0 has finished."""
    s, kv, finished = _trtllm_sched(12, "guaranteed_no_evict")
    s.add(Request(0, 0.0, 8, 12))
    b = s.schedule(0.0)
    s.complete(b, 1.0)
    assert kv.available() == 7
    s.add(Request(1, 1.0, 24, 8))
    s.add(Request(2, 1.0, 4, 4))
    now = 1.0
    while 0 not in finished:
        b = s.schedule(now)
        assert _ids(b) == [] and [r.id for r in s.waiting] == [1, 2]
        s.complete(b, now + 1)
        now += 1
    b = s.schedule(now)
    assert _ids(b) == [1, 2] and s.preemptions == 0


def test_max_utilization_admits_what_fits_the_next_step_and_pauses_the_last_started():
    """Same 12 blocks: MAX_UTILIZATION admits requests 1 and 2 at once (blocks for their prompts
    only) and, when decoding runs out of blocks, pauses the last started request."""
    s, kv, finished = _trtllm_sched(12, "max_utilization")
    s.add(Request(0, 0.0, 8, 12))
    b = s.schedule(0.0)
    s.complete(b, 1.0)
    s.add(Request(1, 1.0, 16, 12))
    s.add(Request(2, 1.0, 4, 12))
    b = s.schedule(1.0)
    assert _ids(b) == [1, 2]
    s.complete(b, 2.0)
    now = 2.0
    while s.preemptions == 0 and now < 40:
        b = s.schedule(now)
        s.complete(b, now + 1)
        now += 1
    assert s.preemptions >= 1 and s.waiting[0].id == 2


def _tight_run(engine, options):
    model, cluster = load_model("llama3.1-8b"), load_cluster("dgx-h100")
    plan = parse_serving_plan("tp=1", cluster, engine=engine, kv_blocks=120, engine_options=options)
    wl = ServingWorkload(num_requests=60, concurrency=24, prompt_len=LengthDist.parse("uniform:200:600"),
                         output_len=LengthDist.parse("uniform:200:800"), seed=3)
    sim = ServingSimulation(model, plan, wl)
    rep = sim.run()
    return sim, rep


def test_guaranteed_no_evict_never_preempts_where_max_utilization_does():
    """A KV pool of 120 blocks x 32 tokens and 24 clients whose requests need up to 44 blocks:
    GUARANTEED_NO_EVICT completes every request with zero preemptions and the KV never exceeds
    the pool; MAX_UTILIZATION (the mechanism switched off) preempts."""
    sim, rep = _tight_run("trtllm", (("capacity_scheduler", "guaranteed_no_evict"),))
    assert rep.completed == 60
    assert sum(r.scheduler.preemptions for r in sim.replicas) == 0
    assert all(req.preemptions == 0 for req in sim.requests)
    sim2, rep2 = _tight_run("trtllm", (("capacity_scheduler", "max_utilization"),))
    assert rep2.completed == 60
    assert sum(r.scheduler.preemptions for r in sim2.replicas) > 0


def test_trtllm_chunked_prefill_switch_and_max_batch_size():
    """Chunked prefill off (TRT-LLM default): a 100-token prompt with a 64-token budget runs
    whole, alone; on: 64 + 36. max_batch_size 1: the second request waits."""
    off, _, _ = _trtllm_sched(100, "guaranteed_no_evict", max_batch=1)
    off.add(Request(0, 0.0, 100, 2))
    off.add(Request(1, 0.0, 8, 2))
    b = off.schedule(0.0)
    assert [(r.id, c) for r, c, _ in b.prefills] == [(0, 100)]
    on, _, _ = _trtllm_sched(100, "guaranteed_no_evict", max_batch=2, chunked_prefill=True)
    on.add(Request(0, 0.0, 100, 2))
    b = on.schedule(0.0)
    assert [(r.id, c) for r, c, _ in b.prefills] == [(0, 64)]
    on.complete(b, 1.0)
    assert [(r.id, c) for r, c, _ in on.schedule(1.0).prefills] == [(0, 36)]


# ---- TRT-LLM batch waiting --------------------------------------------------------------------------
def _batch_wait_case(iters, ratio, prompt=8, decodes=True):
    """Request 0 decodes (if `decodes`); request 1 (a `prompt`-token prompt) arrives. Returns the
    pass (1-based, after request 0's prefill) in which request 1 is prefilled."""
    s, kv, finished = _trtllm_sched(200, "guaranteed_no_evict", tokens=64,
                                    batch_wait_timeout_iters=iters, batch_wait_max_tokens_ratio=ratio)
    t = 0.0
    if decodes:
        s.add(Request(0, 0.0, 8, 40))
        b = s.schedule(t)
        t += 1.0
        s.complete(b, t)
    s.add(Request(1, t, prompt, 4))
    for n in range(1, 12):
        b = s.schedule(t)
        if 1 in _ids(b):
            return n, b
        t += 1.0
        s.complete(b, t)
    return None, None


def test_trtllm_batch_wait_holds_prompts_until_the_timeout():
    """py_executor.py _waiting_requests: with a decode running, request 1's 8 tokens + 1 decode
    stay below 0.9 x 64, so it is held back 3 passes (batch_wait_timeout_iters 3) and prefilled
    in the 4th; switched off (0 passes) it runs in the first."""
    n, b = _batch_wait_case(3, 0.9)
    assert n == 4 and b.num_decode == 1
    assert _batch_wait_case(0, 0.9)[0] == 1


def test_trtllm_batch_wait_releases_at_the_token_threshold_and_never_waits_without_decodes():
    """A 60-token prompt + 1 decode reaches 0.9 x 64 = 57.6 tokens: no wait. With no generation
    request running there is no wait either ("if no generation requests, no need to wait")."""
    assert _batch_wait_case(20, 0.9, prompt=60)[0] == 1
    assert _batch_wait_case(20, 0.9, decodes=False)[0] == 1


# ---- SGLang schedule policy ------------------------------------------------------------------------
def _lpm_case(policy, n_waiting_extra=0):
    s, kv, finished = _sched(400, block_size=1, prefix_caching=True, max_num_seqs=2,
                             max_num_batched_tokens=256, schedule_policy=policy)
    s.add(Request(0, 0.0, 32, 1, prefix_keys=("a", "b"), prefix_key_tokens=16))
    b = s.schedule(0.0)
    s.complete(b, 1.0)  # request 0 done; its prefix "a", "b" stays cached
    assert list(kv.entries) == ["a", "b"]
    s.add(Request(1, 1.0, 40, 4))  # no cached prefix, first in line
    s.add(Request(2, 1.0, 40, 4, prefix_keys=("a", "b"), prefix_key_tokens=16))
    for i in range(n_waiting_extra):
        s.add(Request(10 + i, 1.0, 40, 4))
    return s.schedule(1.0)


def test_sglang_lpm_serves_the_longest_cached_prefix_first():
    """Request 0 has left its 32-token prefix in the radix cache. Requests 1 (no cached prefix)
    and 2 (32 of its 40 tokens cached) wait, in that order: lpm schedules request 2 first and
    computes only its last 8 tokens; fcfs (the policy switched off) keeps arrival order."""
    lpm = _lpm_case("lpm")
    assert _ids(lpm) == [2, 1] and lpm.prefills[0][2] == 32  # request 2 starts after its prefix
    fcfs = _lpm_case("fcfs")
    assert _ids(fcfs) == [1, 2]


def test_sglang_lpm_falls_back_to_fcfs_above_128_waiting():
    b = _lpm_case("lpm", n_waiting_extra=127)  # 129 waiting
    assert _ids(b) == [1, 2]


# ---- SGLang --max-prefill-tokens and --enable-mixed-chunk ------------------------------------------
def _prefill_cap_case(cap, prompts, decoding=False, mixed=False):
    s, kv, _ = _sched(1000, max_num_seqs=16, max_num_batched_tokens=1000, max_prefill_tokens=cap,
                      mixed_batches=mixed)
    if decoding:
        s.add(Request(99, 0.0, 8, 50))
        s.complete(s.schedule(0.0), 0.5)  # request 99 now decodes
    for i, n in enumerate(prompts):
        s.add(Request(i, 1.0, n, 4))
    return s.schedule(1.0)


def test_sglang_max_prefill_tokens_admits_a_later_prompt_only_below_what_is_left():
    """sglang schedule_policy.py PrefillAdder.add_one_req: a prompt with real_input_tokens >=
    rem_input_tokens is refused unless the batch is empty. Cap 100, prompts of 40: 100 -> 60 ->
    20, the third (40 >= 20) waits; a prompt of exactly what is left (60 >= 60) waits too; the
    first prompt is always taken, even above the cap. Switched off (0) the budget takes all."""
    assert _ids(_prefill_cap_case(100, [40, 40, 40])) == [0, 1]
    assert _ids(_prefill_cap_case(100, [40, 60])) == [0]
    assert _ids(_prefill_cap_case(100, [150, 10])) == [0]
    assert _ids(_prefill_cap_case(0, [40, 40, 40])) == [0, 1, 2]


def test_sglang_mixed_chunk_runs_prompts_with_decodes_and_charges_them_to_the_cap():
    """--enable-mixed-chunk: the running decodes join the prefill pass (mix_with_running) and
    PrefillAdder takes the running batch size off rem_input_tokens: cap 81 with one decode leaves
    80, so after a 40-token prompt the next (40 >= 40) waits. Without mixing (SGLang's default)
    the pass is prefill-only and the decode pauses; the cap is then not reduced (81 -> 41 > 40)."""
    mixed = _prefill_cap_case(81, [40, 40], decoding=True, mixed=True)
    assert mixed.num_decode == 1 and _ids(mixed) == [0]
    alone = _prefill_cap_case(81, [40, 40], decoding=True, mixed=False)
    assert alone.num_decode == 0 and _ids(alone) == [0, 1]


def test_sglang_generator_options_reach_the_config():
    cfg = engine_config("sglang", H100, 1, max_prefill_tokens=2524, enable_mixed_chunk="on")
    assert cfg.max_prefill_tokens == 2524 and cfg.mixed_batches
    d = describe(cfg)
    assert "MaxPrefillTokens(2524)" in d and "PrefillFirst" not in d
    default = engine_config("sglang", H100, 1)
    assert default.max_prefill_tokens == 0 and not default.mixed_batches


# ---- the seam ----------------------------------------------------------------------------------------
def test_each_engine_is_its_policies_with_sources():
    for name, eng in ENGINE_POLICIES.items():
        pols = eng.defaults(H100, 1)
        assert all(p.source for p in pols), name
        cfg = engine_config(name, H100, 1)
        assert cfg.engine == name
    assert describe(engine_config("trtllm", H100, 1))[3:5] == ["GuaranteedNoEvict", "OverlapScheduler"]
    assert "MaxUtilization" in describe(engine_config("trtllm", H100, 1, capacity_scheduler="max_utilization"))
    assert "NewTokenRatio" in describe(engine_config("sglang", H100, 1))
    assert "PreemptNewest" in describe(engine_config("vllm", H100, 1))
    assert "AsyncScheduling" in describe(engine_config("vllm", H100, 1, async_scheduling="on"))
    # the KV policies set the scheduler's reservation switch
    base = EngineConfig()
    assert GuaranteedNoEvict().apply(base).kv_reservation == "full"
    assert MaxUtilization().apply(base).kv_reservation == "incremental"
    assert NewTokenRatio().apply(base).kv_reservation == "ratio"
    assert PreemptNewest().apply(base).kv_reservation == "incremental"


@pytest.mark.parametrize("engine,kw,fragment", [
    ("vllm", {"capacity_scheduler": "max_utilization"}, "does not apply to vllm"),
    ("sglang", {"async_scheduling": "on"}, "does not apply to sglang"),
    ("trtllm", {"schedule_policy": "lpm"}, "does not apply to trtllm"),
    ("trtllm", {"capacity_scheduler": "static_batch"}, "capacity_scheduler='static_batch'"),
    ("vllm", {"async_scheduling": "maybe"}, "async_scheduling='maybe'; valid: on, off"),
    ("sglang", {"schedule_policy": "dfs-weight"}, "schedule_policy='dfs-weight'"),
    ("trtllm", {"batch_wait_timeout_iters": -2}, "batch_wait_timeout_iters=-2; valid: an integer >= 0"),
    ("trtllm", {"batch_wait_max_tokens_ratio": "1.5"}, "batch_wait_max_tokens_ratio='1.5'; valid"),
    ("vllm", {"batch_wait_timeout_iters": 5}, "does not apply to vllm"),
    ("trtllm", {"batch_wait_timeout_iters": 5, "chunked_prefill": True}, "needs chunked prefill off"),
    ("sglang", {"max_prefill_tokens": 0}, "max_prefill_tokens=0; valid: an integer >= 1"),
    ("sglang", {"max_prefill_tokens": "lots"}, "max_prefill_tokens='lots'; valid"),
    ("sglang", {"enable_mixed_chunk": "maybe"}, "enable_mixed_chunk='maybe'; valid: on, off"),
    ("trtllm", {"max_prefill_tokens": 4096}, "does not apply to trtllm"),
    ("vllm", {"enable_mixed_chunk": "on"}, "does not apply to vllm"),
])
def test_bad_engine_options_are_one_line_errors(engine, kw, fragment):
    with pytest.raises(InputError, match=fragment) as e:
        engine_config(engine, H100, 1, **kw)
    assert "\n" not in str(e.value)


def test_cli_engine_policy_flags(capsys):
    from ui.cli import main
    base = ["simulate", "serve", "--model", "llama3.1-8b", "--cluster", "dgx-h100", "--plan", "tp=1",
            "--concurrency", "2", "--requests", "4", "--prompt-len", "64", "--output-len", "4", "--json"]
    import json
    code = main(base + ["--engine", "trtllm", "--capacity-scheduler", "max_utilization",
                        "--overlap-scheduler", "off", "--chunked-prefill", "on"])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert doc["plan"]["engine_options"] == {"capacity_scheduler": "max_utilization",
                                             "overlap_scheduler": "off", "chunked_prefill": True}
    code = main(base + ["--engine", "sglang", "--enable-mixed-chunk", "on", "--max-prefill-tokens", "96"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["plan"]["engine_options"] == {"enable_mixed_chunk": "on", "max_prefill_tokens": 96}
    code = main(base + ["--engine", "sglang", "--max-prefill-tokens", "0"])
    out, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "max-prefill-tokens=0" in err
    code = main(base + ["--engine", "vllm", "--capacity-scheduler", "max_utilization"])
    out, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "does not apply to vllm" in err


@pytest.mark.parametrize("ratio", ["0", "1", "1.0", "0.9"])
def test_batch_wait_ratio_takes_the_whole_closed_range(ratio):
    """TensorRT-LLM's batch_wait_max_tokens_ratio is a fraction of max_num_tokens in [0, 1]: both
    ends are valid settings (0 waits for nothing, 1 waits for a full budget)."""
    cfg = engine_config("trtllm", H100, 1, batch_wait_timeout_iters=5, batch_wait_max_tokens_ratio=ratio)
    assert cfg is not None
