"""Pin tests for simulator/serving/policies.py (written from surviving mutants): each engine's
documented defaults at the edges of the ranges that select them, its options and their errors,
and the policy names a report prints.

Sources (quoted in policies.py):
- vLLM vllm/engine/arg_utils.py: the OpenAI server on a GPU with >= 70 GiB that is not an A100
  uses max_num_batched_tokens 8192 and max_num_seqs 1024, else 2048 and 256; block 16;
  gpu_memory_utilization 0.9.
- SGLang python/sglang/srt/server_args.py: chunked_prefill_size 2048 below 35 GiB of GPU memory,
  8192 below 160 GiB, else 16384; mem_fraction_static 0.88 / 0.87 / 0.85 / 0.81 / 0.79 for
  tp < 2 / < 4 / < 8 / < 16 / >= 16; page size 1.
- TensorRT-LLM llmapi/llm_args.py: max_batch_size 2048, max_num_tokens 8192, tokens_per_block 32,
  free_gpu_memory_fraction 0.9, GUARANTEED_NO_EVICT, chunked prefill off, overlap scheduler on.
"""
from __future__ import annotations

from dataclasses import replace

import pytest

from hwmodels.devices import get_device
from hwmodels.errors import InputError
from simulator.serving.policies import ENGINE_POLICIES, describe
from simulator.serving.scheduler import EngineConfig, engine_config

GIB = 2 ** 30
H100 = get_device("h100-sxm")


def _gpu(gib: float, name: str = "test-gpu"):
    return replace(H100, name=name, hbm_bytes=int(gib * GIB))


@pytest.mark.parametrize("gib, big", [(70, True), (70 - 1 / GIB, False), (69, False), (80, True), (141, True)])
def test_vllm_server_defaults_switch_at_70_gib(gib, big):
    c = engine_config("vllm", _gpu(gib), 1)
    assert (c.max_num_batched_tokens, c.max_num_seqs) == ((8192, 1024) if big else (2048, 256))
    assert (c.block_size, c.memory_fraction, c.memory_policy) == (16, 0.9, "vllm")
    assert c.chunked_prefill and c.mixed_batches and c.prefix_caching and not c.extra_step
    assert (c.kv_reservation, c.schedule_policy, c.chunk) == ("incremental", "fcfs", 0)


def test_vllm_a100_80gb_keeps_the_small_defaults():
    c = engine_config("vllm", _gpu(80, "a100-sxm-80g"), 1)
    assert (c.max_num_batched_tokens, c.max_num_seqs) == (2048, 256)


@pytest.mark.parametrize("gib, chunk", [(24, 2048), (35 - 1 / GIB, 2048), (35, 8192), (80, 8192),
                                        (160 - 1 / GIB, 8192), (160, 16384), (192, 16384)])
def test_sglang_chunked_prefill_size_by_gpu_memory(gib, chunk):
    c = engine_config("sglang", _gpu(gib), 1)
    assert c.max_num_batched_tokens == chunk and c.max_num_seqs == 1024
    assert (c.block_size, c.memory_policy, c.kv_reservation) == (1, "sglang", "ratio")
    assert c.chunked_prefill and not c.mixed_batches and c.extra_step and c.prefix_caching


@pytest.mark.parametrize("tp, fraction", [(1, 0.88), (2, 0.87), (3, 0.87), (4, 0.85), (7, 0.85),
                                          (8, 0.81), (15, 0.81), (16, 0.79), (32, 0.79)])
def test_sglang_mem_fraction_static_by_tp(tp, fraction):
    assert engine_config("sglang", H100, tp).memory_fraction == fraction


def test_trtllm_serve_defaults():
    c = engine_config("trtllm", H100, 1)
    assert (c.max_num_seqs, c.max_num_batched_tokens, c.block_size, c.memory_fraction) == (2048, 8192, 32, 0.9)
    assert not c.chunked_prefill and c.chunk == 0 and c.extra_step and c.prefix_caching
    assert (c.kv_reservation, c.capacity_scheduler, c.memory_policy) == ("full", "guaranteed_no_evict", "trtllm")


@pytest.mark.parametrize("text, on", [("on", True), ("ON", True), ("true", True), ("1", True), ("yes", True),
                                      (True, True), ("off", False), ("False", False), ("0", False),
                                      ("no", False), (False, False)])
def test_on_off_options_accept_the_usual_spellings(text, on):
    assert engine_config("vllm", H100, 1, async_scheduling=text).extra_step is on
    assert engine_config("sglang", H100, 1, overlap_scheduler=text).extra_step is on
    assert engine_config("trtllm", H100, 1, overlap_scheduler=text).extra_step is on


@pytest.mark.parametrize("engine, kw, fragment", [
    ("vllm", {"async_scheduling": "maybe"}, "async_scheduling='maybe'; valid: on, off"),
    ("sglang", {"overlap_scheduler": "2"}, "overlap_scheduler='2'; valid: on, off"),
    ("sglang", {"schedule_policy": "lifo"}, "schedule_policy='lifo'; valid: fcfs, lpm"),
    ("trtllm", {"capacity_scheduler": "static"}, "capacity_scheduler='static'; valid: guaranteed_no_evict, max_utilization"),
    ("vllm", {"overlap_scheduler": "on"}, "option 'overlap_scheduler' does not apply to vllm; valid: async_scheduling"),
    ("sglang", {"capacity_scheduler": "max_utilization"},
     "option 'capacity_scheduler' does not apply to sglang; valid: overlap_scheduler, schedule_policy"),
    ("trtllm", {"async_scheduling": "on"},
     "option 'async_scheduling' does not apply to trtllm; valid: capacity_scheduler, overlap_scheduler"),
])
def test_engine_option_errors_name_the_valid_values(engine, kw, fragment):
    with pytest.raises(InputError) as e:
        engine_config(engine, H100, 1, **kw)
    assert fragment in str(e.value)


def test_trtllm_capacity_schedulers_and_sglang_lpm():
    mu = engine_config("trtllm", H100, 1, capacity_scheduler="MAX_UTILIZATION")
    assert (mu.kv_reservation, mu.capacity_scheduler) == ("incremental", "max_utilization")
    ge = engine_config("trtllm", H100, 1, capacity_scheduler="guaranteed_no_evict")
    assert (ge.kv_reservation, ge.capacity_scheduler) == ("full", "guaranteed_no_evict")
    assert engine_config("sglang", H100, 1, schedule_policy="lpm").schedule_policy == "lpm"


def test_describe_names_every_policy_in_force():
    assert describe(engine_config("vllm", H100, 1)) == [
        "TokenBudget(8192)", "MaxRunning(1024)", "ChunkedPrefill(on)", "PreemptNewest", "PrefixCache(on)",
        "QueueOrder(fcfs)"]
    assert describe(engine_config("vllm", H100, 1, async_scheduling="on", chunk=512)) == [
        "TokenBudget(8192)", "MaxRunning(1024)", "ChunkedPrefill(on, chunk 512)", "PreemptNewest",
        "AsyncScheduling", "PrefixCache(on)", "QueueOrder(fcfs)"]
    assert describe(engine_config("sglang", H100, 1)) == [
        "TokenBudget(8192)", "MaxRunning(1024)", "ChunkedPrefill(on)", "PrefillFirst", "NewTokenRatio",
        "OverlapScheduler", "PrefixCache(on)", "QueueOrder(fcfs)"]
    assert describe(engine_config("trtllm", H100, 1, capacity_scheduler="max_utilization", prefix_caching=False)) == [
        "TokenBudget(8192)", "MaxRunning(2048)", "ChunkedPrefill(off)", "MaxUtilization", "OverlapScheduler",
        "PrefixCache(off)", "QueueOrder(fcfs)"]
    assert describe(engine_config("trtllm", H100, 1))[3] == "GuaranteedNoEvict"


def test_every_policy_names_its_source_and_is_an_immutable_value():
    import dataclasses
    from simulator.serving.policies import AsyncScheduling, MaxUtilization
    for engine, pol in ENGINE_POLICIES.items():
        assert pol.name == engine and pol.source
        for p in pol.defaults(H100, 1) + [AsyncScheduling(True), MaxUtilization()]:
            assert p.source and p.name == type(p).__name__
            assert isinstance(p.apply(EngineConfig(engine)), EngineConfig)
            assert hash(p) == hash(dataclasses.replace(p)) and p == dataclasses.replace(p)
            for f in dataclasses.fields(p):
                with pytest.raises(dataclasses.FrozenInstanceError):
                    setattr(p, f.name, None)


def test_engine_named_in_text_from_the_command_line_reports_its_own_policies():
    """An engine name read from the command line or a file (a string built at run time, not a
    literal) names vLLM's async scheduling as such, not another engine's overlap scheduler."""
    name = "".join(["vl", "lm"])
    assert "AsyncScheduling" in describe(engine_config(name, H100, 1, async_scheduling="on"))
    assert "OverlapScheduler" in describe(engine_config("".join(["sg", "lang"]), H100, 1))


def test_an_engine_rejects_options_it_does_not_have():
    """EnginePolicy.option names the engine's own options; anything else is an InputError."""
    for engine, key in (("vllm", "abc"), ("vllm", "a"), ("sglang", "abc"), ("trtllm", "abc")):
        with pytest.raises(InputError, match=f"option {key!r} does not apply to {engine}"):
            ENGINE_POLICIES[engine].option(key, "on")


@pytest.mark.parametrize("text", ["guaranteed", "GUARANTEED", "evict", "", "fcfs"])
def test_trtllm_capacity_scheduler_takes_only_the_exact_policy_names(text):
    """TensorRT-LLM's CapacitySchedulerPolicy (llmapi/llm_args.py) has the members
    GUARANTEED_NO_EVICT, MAX_UTILIZATION and STATIC_BATCH: a truncated or other name is no policy,
    so it is an error, never silently taken for the default GUARANTEED_NO_EVICT (these spellings
    all sort before "guaranteed_no_evict")."""
    with pytest.raises(InputError, match="valid: guaranteed_no_evict, max_utilization"):
        engine_config("trtllm", H100, 1, capacity_scheduler=text)


def test_describe_names_trtllm_batch_waiting_with_its_timeout_and_ratio():
    """TensorRT-LLM's batch waiting (py_executor.py _waiting_requests: context requests held for
    batch_wait_timeout_iters passes or until batch_wait_max_tokens_ratio x max_num_tokens) as
    configured in its llama-config.yml (20 passes, 0.9): the report names it after the overlap
    scheduler; with the timeout 0 (the default, off) it is not in force and not named."""
    on = describe(engine_config("trtllm", H100, 1, batch_wait_timeout_iters=20, batch_wait_max_tokens_ratio=0.9))
    assert on == ["TokenBudget(8192)", "MaxRunning(2048)", "ChunkedPrefill(off)", "GuaranteedNoEvict",
                  "OverlapScheduler", "BatchWait(20 passes, 0.9 x max tokens)", "PrefixCache(on)",
                  "QueueOrder(fcfs)"]
    one = describe(engine_config("trtllm", H100, 1, batch_wait_timeout_iters=1))
    assert one[5] == "BatchWait(1 passes, 0 x max tokens)"
    off = describe(engine_config("trtllm", H100, 1, batch_wait_timeout_iters=0, batch_wait_max_tokens_ratio=0.5))
    assert not any(p.startswith("BatchWait") for p in off) and len(off) == 7


@pytest.mark.parametrize("kw, fragment", [
    ({"batch_wait_iters": -1}, "batch_wait_iters=-1 must be >= 0"),
    ({"batch_wait_ratio": 1.5}, "batch_wait_ratio=1.5 must be in [0, 1]"),
    ({"batch_wait_ratio": -0.25}, "batch_wait_ratio=-0.25 must be in [0, 1]")])
def test_batch_wait_fields_take_only_what_the_trtllm_options_take(kw, fragment):
    """TensorRT-LLM llm_args.py takes batch_wait_timeout_iters >= 0 and batch_wait_max_tokens_ratio
    in [0, 1]; the EngineConfig fields they set (given directly, as a ServingPlan's engine_options
    may) are held to the same ranges instead of a negative timeout silently meaning "off" (found by
    mutation testing: describe's `batch_wait_iters > 0` and a `!= 0` disagreed only on such values)."""
    with pytest.raises(InputError, match=fragment.replace("[", r"\[")):
        engine_config("trtllm", H100, 1, **kw)
    assert engine_config("trtllm", H100, 1, batch_wait_iters=0, batch_wait_ratio=1.0).batch_wait_ratio == 1.0


@pytest.mark.parametrize("text", ["soon", "2.5", "", "-1"])
def test_trtllm_batch_wait_timeout_must_be_a_whole_number_of_passes(text):
    """TensorRT-LLM's batch_wait_timeout_iters (llmapi/llm_args.py) is an int >= 0: text that is
    no integer (or a negative one) is an error, not a timeout of 0 or 1 passes."""
    with pytest.raises(InputError, match=f"batch_wait_timeout_iters={text!r}; valid: an integer >= 0"):
        engine_config("trtllm", H100, 1, batch_wait_timeout_iters=text)


@pytest.mark.parametrize("text", ["half", "", "0.9x"])
def test_trtllm_batch_wait_ratio_must_be_a_number(text):
    """TensorRT-LLM's batch_wait_max_tokens_ratio (llmapi/llm_args.py) is a float in [0, 1]: text
    that is no number is the same one-line error as one out of range."""
    with pytest.raises(InputError, match=f"batch_wait_max_tokens_ratio={text!r}; valid: a number in"):
        engine_config("trtllm", H100, 1, batch_wait_max_tokens_ratio=text)


@pytest.mark.parametrize("extra, order", [(126, [2, 1]), (127, [1, 2])])
def test_sglang_lpm_sorts_a_queue_of_exactly_128(extra, order):
    """SGLang schedule_policy.py SchedulePolicy._determine_active_policy: LPM turns to FCFS only
    when len(waiting_queue) > 128. Request 0 leaves a 16-token cached prefix ("a", "b"); request 1
    (no cached prefix) then request 2 (that prefix) wait with `extra` others: with 128 waiting
    LPM still takes request 2 first, with 129 the queue is served in arrival order."""
    from simulator.serving.kv_cache import KVCache
    from simulator.serving.scheduler import Scheduler
    from simulator.serving.workload import Request
    cfg = EngineConfig(block_size=1, prefix_caching=True, max_num_seqs=2, max_num_batched_tokens=256,
                       schedule_policy="lpm")
    kv = KVCache(400, 1, prefix_caching=True)
    s = Scheduler(cfg, kv, on_finish=lambda r, now: None)
    s.add(Request(0, 0.0, 32, 1, prefix_keys=("a", "b"), prefix_key_tokens=16))
    s.complete(s.schedule(0.0), 1.0)
    s.add(Request(1, 1.0, 40, 4))
    s.add(Request(2, 1.0, 40, 4, prefix_keys=("a", "b"), prefix_key_tokens=16))
    for i in range(extra):
        s.add(Request(10 + i, 1.0, 40, 4))
    assert len(s.waiting) == 2 + extra
    assert [req.id for req, _, _ in s.schedule(1.0).prefills] == order


@pytest.mark.parametrize("value, tokens", [(1, 1), ("1", 1), ("4096", 4096)])
def test_sglang_max_prefill_tokens_takes_any_integer_from_one(value, tokens):
    """SGLang server_args.py --max-prefill-tokens is an int; PrefillAdder always takes a batch's
    first prompt whatever the cap, so the smallest useful cap, 1, is valid (0 and below are not)."""
    assert engine_config("sglang", H100, 1, max_prefill_tokens=value).max_prefill_tokens == tokens
