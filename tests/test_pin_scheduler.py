"""Scenario tests of the serving scheduler's policies: a crafted arrival sequence and the
expected batch, preemption and admission at each step.

Sources:
- vLLM v1 scheduler (vllm/v1/core/sched/scheduler.py): running requests first, then the waiting
  queue FCFS while `len(running) < max_num_seqs`; when a running request cannot get a KV block
  the most recently admitted running request is preempted (`self.running.pop()`), freed and put
  back at the head of the waiting queue to be recomputed.
- SGLang PrefillAdder (python/sglang/srt/managers/schedule_policy.py): a prompt is admitted only
  if the free KV tokens minus `new_token_ratio` × the running requests' remaining output tokens
  cover it (init ratio 0.7).
"""
from simulator.serving.kv_cache import KVCache
from simulator.serving.scheduler import EngineConfig, Scheduler
from simulator.serving.workload import Request


def _sched(num_blocks, block_size=4, **cfg):
    finished = []
    cfg = EngineConfig(block_size=block_size, prefix_caching=False, **cfg)
    kv = KVCache(num_blocks, block_size, prefix_caching=False)
    s = Scheduler(cfg, kv, on_finish=lambda r, now: finished.append(r.id))
    return s, kv, finished


def _step(s, now):
    b = s.schedule(now)
    s.complete(b, now + 1.0)
    return b


def _prefill_ids(batch):
    return [req.id for req, _, _ in batch.prefills]


# ---- vLLM: admission cap -------------------------------------------------------------------------
def test_vllm_admits_at_most_max_num_seqs_requests():
    """max_num_seqs=2, three prompts waiting, KV and token budget ample: the first pass prefills
    exactly requests 0 and 1 (FCFS); request 2 waits until one of them finishes."""
    s, kv, finished = _sched(1000, max_num_seqs=2, max_num_batched_tokens=256)
    for i in range(3):
        assert s.add(Request(i, 0.0, 8, 3))
    b = s.schedule(0.0)
    assert _prefill_ids(b) == [0, 1]
    assert len(s.running) == 2 and [r.id for r in s.waiting] == [2]
    s.complete(b, 1.0)
    # decode passes: still two running, request 2 still waiting until 0 and 1 finish
    b = _step(s, 1.0)
    assert b.num_decode == 2 and _prefill_ids(b) == [] and len(s.running) == 2
    b = _step(s, 2.0)  # third token: both finish
    assert sorted(finished) == [0, 1]
    b = _step(s, 3.0)
    assert _prefill_ids(b) == [2]


def test_running_count_never_exceeds_max_num_seqs():
    s, kv, finished = _sched(1000, max_num_seqs=3, max_num_batched_tokens=512)
    for i in range(10):
        s.add(Request(i, 0.0, 5 + i, 4 + (i % 3)))
    now = 0.0
    while s.has_work() and now < 200:
        b = s.schedule(now)
        assert len(s.running) <= 3
        assert b.num_decode + len(b.prefills) <= 3
        s.complete(b, now + 1.0)
        now += 1.0
    assert sorted(finished) == list(range(10))


# ---- vLLM: preemption of the newest running request ----------------------------------------------
def test_vllm_preempts_the_most_recent_request_and_requeues_it_first():
    """6 blocks of 4 tokens; requests 0 then 1, prompts of 8 tokens (2 blocks each), outputs of
    14 (each alone fits the 6 blocks, together they do not).
    After the prefill 2 blocks are free; each decoder crosses into a new block every 4 tokens.
    When the blocks run out, vLLM preempts request 1 (admitted last), frees its blocks and puts it
    at the head of the waiting queue; request 0 keeps decoding."""
    s, kv, finished = _sched(6, max_num_seqs=8, max_num_batched_tokens=64)
    assert s.add(Request(0, 0.0, 8, 14))
    assert s.add(Request(1, 0.0, 8, 14))
    b = _step(s, 0.0)
    assert _prefill_ids(b) == [0, 1] and kv.available() == 2
    now = 1.0
    while s.preemptions == 0 and now < 50:
        b = _step(s, now)
        now += 1.0
    assert s.preemptions == 1
    assert list(s.running) == [0]
    assert [r.id for r in s.waiting] == [1]
    victim = s.waiting[0]
    assert victim.preemptions == 1 and victim.computed == 0 and victim.blocks == 0
    # recompute covers the prompt and the tokens generated before preemption
    assert victim.target == victim.prompt_len + victim.generated
    # request 0 continues to decode in the pass that preempted request 1
    assert b.num_decode == 1


def test_vllm_preemption_victim_is_the_newest_of_three():
    s, kv, finished = _sched(7, max_num_seqs=8, max_num_batched_tokens=64)
    for i in range(3):
        assert s.add(Request(i, 0.0, 8, 16))
    b = _step(s, 0.0)
    assert _prefill_ids(b) == [0, 1, 2] and kv.available() == 1
    now = 1.0
    while s.preemptions == 0 and now < 50:
        _step(s, now)
        now += 1.0
    assert [r.id for r in s.waiting] == [2]
    assert list(s.running) == [0, 1]


# ---- TensorRT-LLM GUARANTEED_NO_EVICT ------------------------------------------------------------
def test_full_reservation_admits_only_what_fits_to_the_end_and_never_preempts():
    """kv_reservation=full reserves prompt + output blocks at admission: with 10 blocks of 4
    tokens and requests of 8 + 12 tokens (5 blocks each), two run and the third waits."""
    s, kv, finished = _sched(10, max_num_seqs=8, max_num_batched_tokens=64, kv_reservation="full")
    for i in range(3):
        s.add(Request(i, 0.0, 8, 12))
    b = _step(s, 0.0)
    assert _prefill_ids(b) == [0, 1] and kv.available() == 0
    now = 1.0
    while s.has_work() and now < 100:
        _step(s, now)
        now += 1.0
    assert s.preemptions == 0 and sorted(finished) == [0, 1, 2]


# ---- SGLang new_token_ratio reservation ----------------------------------------------------------
def _sglang(num_blocks, **kw):
    return _sched(num_blocks, block_size=1, max_num_seqs=16, max_num_batched_tokens=64,
                  mixed_batches=False, kv_reservation="ratio", **kw)


def test_sglang_keeps_room_for_running_requests_output():
    """100 tokens of KV. Request 0 (prompt 10, output 80) is decoding: 11 tokens used, 89 free,
    and it still owes 79 tokens, of which the ratio 0.7 reserves 55. A prompt of 40 tokens fits
    the free 89 but not 89 - 55 = 34, so SGLang does not admit it; a prompt of 30 is admitted."""
    s, kv, finished = _sglang(100)
    s.add(Request(0, 0.0, 10, 80))
    b = _step(s, 0.0)
    assert _prefill_ids(b) == [0]
    b = _step(s, 1.0)  # first decode
    assert b.num_decode == 1
    s.add(Request(1, 2.0, 40, 5))
    b = _step(s, 2.0)
    assert _prefill_ids(b) == [] and b.num_decode == 1
    assert [r.id for r in s.waiting] == [1]
    s.add(Request(2, 3.0, 30, 5))  # behind request 1 in FCFS: still waits
    b = _step(s, 3.0)
    assert _prefill_ids(b) == []


def test_sglang_admits_small_prompt_within_reservation():
    s, kv, finished = _sglang(100)
    s.add(Request(0, 0.0, 10, 80))
    _step(s, 0.0)
    _step(s, 1.0)
    s.add(Request(1, 2.0, 20, 5))
    b = _step(s, 2.0)
    assert _prefill_ids(b) == [1] and b.num_decode == 0  # prefill-only pass (no mixed chunks)


def test_sglang_reservation_holds_while_another_prompt_is_prefilling():
    """Request 0 decodes (owes ~79 tokens, 0.7 of them reserved), request 1 (prompt 100) is
    prefilled over two passes of the 64-token budget. In the second pass 28 tokens of budget are
    left; request 2 (prompt 30) would fit them and the free blocks, but not the free blocks minus
    the reservation, so the pass continues request 1 alone."""
    s, kv, finished = _sglang(150)
    s.add(Request(0, 0.0, 8, 80))
    _step(s, 0.0)  # request 0 prefilled (8 tokens)
    _step(s, 1.0)  # request 0 decodes
    s.add(Request(1, 2.0, 100, 4))
    b = _step(s, 2.0)
    assert _prefill_ids(b) == [1] and b.prefills[0][1] == 64 and b.num_decode == 0
    s.add(Request(2, 3.0, 30, 4))
    free_after_1 = kv.available() - 36
    assert 28 <= free_after_1 < 28 + 0.7 * 70  # fits without the reservation, not with it
    b = _step(s, 3.0)
    assert _prefill_ids(b) == [1] and b.prefills[0][1] == 36
    assert [r.id for r in s.waiting] == [2]


# ---- engines' documented defaults ----------------------------------------------------------------
def test_engine_defaults_follow_each_engines_documentation():
    """vLLM OpenAI server: 8192 tokens / 1024 seqs on >= 70 GiB GPUs other than A100, else
    2048 / 256. SGLang: chunked_prefill_size 2048 below 35 GB, 8192 below 160 GB, else 16384;
    mem_fraction_static 0.88/0.87/0.85/0.81/0.79 at tp 1/2/4/8/16. TensorRT-LLM trtllm-serve:
    max_batch_size 2048, max_num_tokens 8192, tokens_per_block 32, chunking off, no-evict."""
    from hwmodels.devices import get_device
    from simulator.serving.scheduler import engine_config
    h100, a100, l40s, l4, b200 = (get_device(n) for n in ("h100-sxm", "a100-sxm-80g", "l40s", "l4", "b200"))
    v = engine_config("vllm", h100, 1)
    assert (v.max_num_seqs, v.max_num_batched_tokens, v.block_size, v.memory_fraction) == (1024, 8192, 16, 0.9)
    assert v.chunked_prefill and v.mixed_batches and v.prefix_caching and v.kv_reservation == "incremental"
    for small in (a100, l40s):
        c = engine_config("vllm", small, 1)
        assert (c.max_num_seqs, c.max_num_batched_tokens) == (256, 2048)
    assert [engine_config("sglang", d, 1).max_num_batched_tokens for d in (l4, h100, b200)] == [2048, 8192, 16384]
    assert [engine_config("sglang", h100, tp).memory_fraction for tp in (1, 2, 4, 8, 16)] == [0.88, 0.87, 0.85, 0.81, 0.79]
    s = engine_config("sglang", h100, 1)
    assert (s.block_size, s.mixed_batches, s.kv_reservation, s.memory_policy) == (1, False, "ratio", "sglang")
    t = engine_config("trtllm", h100, 1)
    assert (t.max_num_seqs, t.max_num_batched_tokens, t.block_size, t.chunked_prefill,
            t.kv_reservation, t.memory_policy, t.memory_fraction) == (2048, 8192, 32, False, "full", "trtllm", 0.9)
    # overrides apply, None values are ignored
    o = engine_config("vllm", h100, 1, max_num_seqs=64, chunk=None)
    assert o.max_num_seqs == 64 and o.chunk == 0


def test_engine_config_rejects_impossible_settings():
    import pytest
    from hwmodels.devices import get_device
    from hwmodels.errors import InputError
    from simulator.serving.scheduler import engine_config
    h100 = get_device("h100-sxm")
    for kw, msg in (({"max_num_seqs": 0}, ">= 1"), ({"max_num_batched_tokens": 0}, ">= 1"),
                    ({"block_size": 0}, ">= 1"), ({"max_num_batched_tokens": 512}, "max_batch=1024"),
                    ({"kv_reservation": "half"}, "kv_reservation"), ({"chunk": -1}, "chunk=-1"),
                    ({"memory_fraction": 0.0}, "fraction"), ({"memory_fraction": 1.5}, "fraction")):
        with pytest.raises(InputError, match=msg):
            engine_config("vllm", h100, 1, **kw)
    assert engine_config("vllm", h100, 1, max_num_seqs=512, max_num_batched_tokens=512, memory_fraction=1.0)
    # the smallest valid engine: one sequence, one token per step, one-token blocks
    one = engine_config("vllm", h100, 1, max_num_seqs=1, max_num_batched_tokens=1, block_size=1)
    assert (one.max_num_seqs, one.max_num_batched_tokens, one.block_size) == (1, 1, 1)
    for name in ("tgi", "xllm", "TRTLLM"):
        with pytest.raises(InputError, match="unknown serving engine"):
            engine_config(name, h100, 1)


# ---- chunked prefill (Sarathi-Serve) -----------------------------------------------------------
def test_chunked_prefill_fills_the_budget_left_by_decodes():
    """Budget 32 tokens. Request 0 (prompt 8) decodes; request 1 (prompt 70) arrives: each pass
    takes request 0's decode token and a 31-token chunk of request 1 (Sarathi stall-free batching),
    and the last pass the 8 tokens left; only then does request 1 sample its first token."""
    s, kv, finished = _sched(100, max_num_seqs=8, max_num_batched_tokens=32)
    s.add(Request(0, 0.0, 8, 20))
    _step(s, 0.0)
    s.add(Request(1, 1.0, 70, 3))
    chunks = []
    for t in (1.0, 2.0, 3.0):
        b = s.schedule(t)
        assert b.num_decode == 1
        chunks.append([(r.id, c, st) for r, c, st in b.prefills])
        assert b.tokens == 1 + chunks[-1][0][1]
        assert b.samples == 1 + (1 if t == 3.0 else 0)
        s.complete(b, t + 1.0)
    assert chunks == [[(1, 31, 0)], [(1, 31, 31)], [(1, 8, 62)]]
    assert s.running[1].generated == 1 and s.running[1].first_token_s == 4.0


def test_chunk_limit_caps_the_prompt_tokens_per_pass():
    """chunk=16: at most 16 prompt tokens per pass even with a budget of 64."""
    s, kv, finished = _sched(100, max_num_seqs=8, max_num_batched_tokens=64, chunk=16)
    s.add(Request(0, 0.0, 40, 2))
    s.add(Request(1, 0.0, 8, 2))
    sizes = []
    while not finished:
        b = _step(s, float(len(sizes)))
        sizes.append([(r.id, c) for r, c, _ in b.prefills])
    assert sizes[:3] == [[(0, 16)], [(0, 16)], [(0, 8), (1, 8)]]


def test_without_chunking_a_prompt_is_admitted_only_whole():
    """chunked_prefill off, budget 32: with a decode running, a 40-token prompt cannot run (it
    would need a 39-token chunk); a 20-token prompt behind it waits too (FCFS); once nothing else
    runs, the 40-token prompt runs alone, whole, over the budget."""
    s, kv, finished = _sched(100, max_num_seqs=8, max_num_batched_tokens=32, chunked_prefill=False)
    s.add(Request(0, 0.0, 8, 3))
    _step(s, 0.0)
    s.add(Request(1, 1.0, 40, 2))
    s.add(Request(2, 1.0, 20, 2))
    b = _step(s, 1.0)
    assert b.num_decode == 1 and _prefill_ids(b) == []
    _step(s, 2.0)  # request 0's last token
    assert finished == [0]
    b = _step(s, 3.0)
    assert [(r.id, c) for r, c, _ in b.prefills] == [(1, 40)]
    b = _step(s, 4.0)
    assert [(r.id, c) for r, c, _ in b.prefills] == [(2, 20)] and b.num_decode == 1


def test_decode_pass_attends_to_every_token_in_kv():
    """Two decoders with 8 and 12 tokens of prompt: their first decode pass attends to 9 + 13."""
    s, kv, finished = _sched(100, max_num_seqs=8, max_num_batched_tokens=64)
    s.add(Request(0, 0.0, 8, 5))
    s.add(Request(1, 0.0, 12, 5))
    _step(s, 0.0)
    b = _step(s, 1.0)
    assert b.num_decode == 2 and b.decode_kv_tokens == 9 + 13 and b.samples == 2
    b = _step(s, 2.0)
    assert b.decode_kv_tokens == 10 + 14


def test_request_larger_than_the_whole_cache_is_rejected_up_front():
    s, kv, finished = _sched(4, max_num_seqs=8, max_num_batched_tokens=64)
    assert s.add(Request(0, 0.0, 12, 4))  # 16 tokens = 4 blocks of 4: fits exactly
    assert not s.add(Request(1, 0.0, 12, 5))  # 17 tokens
    assert [r.id for r in s.rejected] == [1] and s.outstanding == 1
    assert s.waiting_tokens() == 12


# ---- prefix caching (vLLM automatic prefix caching) ----------------------------------------------
def test_a_cached_prefix_is_not_recomputed():
    """Prefix of 2 keys x 8 tokens (2 blocks each at block size 4). Request 0 computes it; request
    1 with the same keys and a 24-token prompt computes only its last 8 tokens, and the cache
    counts 16 hit tokens of 48 looked up."""
    cfg = EngineConfig(block_size=4, prefix_caching=True, max_num_seqs=8, max_num_batched_tokens=64)
    kv = KVCache(40, 4)
    finished = []
    s = Scheduler(cfg, kv, on_finish=lambda r, now: finished.append(r.id))
    s.add(Request(0, 0.0, 24, 2, prefix_keys=("a", "b"), prefix_key_tokens=8))
    _step(s, 0.0)
    assert list(kv.entries) == ["a", "b"]
    s.add(Request(1, 1.0, 24, 2, prefix_keys=("a", "b"), prefix_key_tokens=8))
    b = _step(s, 1.0)
    (req, chunk, start), = [p for p in b.prefills]
    assert (req.id, chunk, start) == (1, 8, 16) and req.cached == 16
    assert kv.hits == 16 and kv.lookups == 48
    assert req.shared_blocks == 4 and req.blocks == 2


# ---- runs of decode iterations ------------------------------------------------------------------
def test_decode_run_stops_at_the_next_finish_and_at_block_shortage():
    """Block size 4. One decoder (prompt 4, output 10) alone: the run from its first decode reaches
    its finishing iteration (9 decodes). With only 2 free blocks it stops where the third block
    would be needed."""
    s, kv, finished = _sched(100, max_num_seqs=8, max_num_batched_tokens=64)
    s.add(Request(0, 0.0, 4, 10))
    _step(s, 0.0)
    s.schedule(1.0)
    assert s.decode_run_length() == 9
    assert s.decode_run_length(limit=5) == 5
    # two decoders (prompts of 4, outputs of 12) in 5 blocks: after the first decode each holds
    # 2 blocks and 1 is free; tokens 6..8 fit, token 9 needs 2 more blocks: a run of 4 passes
    s2, kv2, _ = _sched(5, max_num_seqs=8, max_num_batched_tokens=64)
    s2.add(Request(0, 0.0, 4, 12))
    s2.add(Request(1, 0.0, 4, 12))
    _step(s2, 0.0)
    s2.schedule(1.0)
    assert kv2.available() == 1
    assert s2.decode_run_length() == 4


def test_skipped_decode_iterations_equal_stepping_one_by_one():
    def run(skip: bool):
        s, kv, finished = _sched(12, max_num_seqs=8, max_num_batched_tokens=64)
        s.add(Request(0, 0.0, 6, 9))
        s.add(Request(1, 0.0, 3, 13))
        now, log = 0.0, []
        while s.has_work():
            b = s.schedule(now)
            n = s.decode_run_length() if skip and b.num_decode and not b.prefills else 1
            s.skip_decode_iterations(n - 1)
            s.complete(b, now + n)
            log.append((now, kv.available()))
            now += n
        return finished, now, kv.available()
    skipped, stepped = run(True), run(False)
    assert skipped == stepped
    assert sorted(skipped[0]) == [0, 1] and skipped[2] == 12


# ---- disaggregated decode ------------------------------------------------------------------------
def test_a_request_whose_kv_arrived_joins_the_decode_set_directly():
    s, kv, finished = _sched(100, max_num_seqs=8, max_num_batched_tokens=64)
    r = Request(0, 0.0, 10, 4)
    r.target, r.computed, r.generated = 10, 10, 1
    s.add(r)
    b = s.schedule(0.0)
    assert b.prefills == [] and b.num_decode == 1 and r.blocks == 3  # ceil(10 / 4) blocks for the 10 tokens in KV
    s.complete(b, 1.0)
    _step(s, 1.0)
    _step(s, 2.0)
    assert finished == [0] and kv.available() == 100


# ---- SGLang new_token_ratio decay and reset -------------------------------------------------------
def test_new_token_ratio_decays_per_decode_step_and_resets_on_retraction():
    """SGLang: init 0.7, decays (0.7 - 0.1) / 600 per decode step, floor 0.1; 0.7 after a
    retraction (preemption)."""
    s, kv, finished = _sglang(2000)
    s.add(Request(0, 0.0, 10, 1000))
    _step(s, 0.0)
    for t in range(1, 101):
        _step(s, float(t))
    assert s.ratio == __import__("pytest").approx(0.7 - 100 * 0.001)
    s.skip_decode_iterations(10_000)
    assert s.ratio == 0.1
    s._preempt_newest(0.0)
    assert s.ratio == 0.7


def test_a_transferred_request_is_not_a_prompt_for_prefill_first_engines():
    """Disaggregated decode side: a request whose KV arrived joins the decode set. Prefill-first
    scheduling (SGLang, mixed_batches off) concerns prompts only, so with a decoder running the
    pass is the same as with mixed batches: the running decoder's token, the new request admitted
    to decode from the next pass, the prompt queued behind it still waiting."""
    outcomes = []
    for mixed in (True, False):
        s, kv, finished = _sched(100, max_num_seqs=8, max_num_batched_tokens=64, mixed_batches=mixed)
        s.add(Request(0, 0.0, 8, 20))
        _step(s, 0.0)
        a = Request(1, 1.0, 12, 5)
        a.target, a.computed, a.generated = 12, 12, 1
        s.add(a)
        b = s.schedule(1.0)
        outcomes.append((b.num_decode, _prefill_ids(b), sorted(s.running)))
        s.complete(b, 2.0)
        b = s.schedule(2.0)
        outcomes.append((b.num_decode, _prefill_ids(b), sorted(s.running)))
    assert outcomes[:2] == [(1, [], [0, 1]), (2, [], [0, 1])]
    assert outcomes[2:] == outcomes[:2]


def test_chunk_of_one_token_per_pass():
    """chunk=1 (Sarathi's chunk size knob at its smallest): one prompt token per pass."""
    s, kv, finished = _sched(100, max_num_seqs=8, max_num_batched_tokens=64, chunk=1)
    s.add(Request(0, 0.0, 3, 1))
    sizes = [[c for _, c, _ in _step(s, float(t)).prefills] for t in range(3)]
    assert sizes == [[1], [1], [1]] and finished == [0]


def test_no_evict_decode_side_reserves_the_whole_output_for_a_transferred_request():
    """TensorRT-LLM GUARANTEED_NO_EVICT on a decode replica: a request arriving with its prompt's
    KV reserves prompt + output blocks (12 + 20 tokens = 8 blocks of 4)."""
    s, kv, finished = _sched(100, max_num_seqs=8, max_num_batched_tokens=64, kv_reservation="full")
    a = Request(0, 0.0, 12, 20)
    a.target, a.computed, a.generated = 12, 12, 1
    s.add(a)
    s.schedule(0.0)
    assert a.blocks == 8 and kv.available() == 92


def test_reservation_mode_read_from_text_selects_the_sglang_reservation():
    """A kv_reservation value parsed from a config file or the command line (not a literal)
    still selects SGLang's new_token_ratio reservation."""
    mode = "".join(["ra", "tio"])
    s = Scheduler(EngineConfig(block_size=1, kv_reservation=mode), KVCache(100, 1), on_finish=lambda r, now: None)
    assert s.reserve and not s.full
    full = "".join(["fu", "ll"])
    assert Scheduler(EngineConfig(kv_reservation=full), KVCache(100, 16), on_finish=lambda r, now: None).full


# ---- async / overlap scheduling: requests deferred to the next pass still count ---------------------
def test_requests_deferred_by_the_overlap_scheduler_count_as_outstanding_and_waiting_tokens():
    """vLLM async scheduling (vllm/v1/engine/async_llm.py + async_scheduler.py): a request that
    arrives while a pass is in flight misses the pass already built, but it is queued at the
    replica: the least-outstanding router (router.py) must count it. max_num_seqs=1: requests 0,
    1, 2 queued, the first pass admits 0 (1 running + 2 waiting); request 3 arrives during the
    pass (deferred). Outstanding = 1 + 2 + 1 = 4 requests; prompt tokens still to prefill =
    20 + 30 (waiting) + 40 (deferred) = 90."""
    s, kv, finished = _sched(1000, max_num_seqs=1, max_num_batched_tokens=64, extra_step=True)
    for i, p in enumerate((8, 20, 30)):
        assert s.add(Request(i, 0.0, p, 10))
    b = s.schedule(0.0)
    assert _prefill_ids(b) == [0]
    assert s.add(Request(3, 0.5, 40, 10))
    assert [r.id for r in s.waiting] == [1, 2] and len(s.deferred) == 1
    assert s.outstanding == 4
    assert s.waiting_tokens() == 90


# ---- runs of decode-only iterations: the partial block cycle ----------------------------------------
def test_decode_run_ends_where_the_free_blocks_run_out_inside_a_block_cycle():
    """Two decoders (prompts of 4 tokens, outputs of 40), blocks of 4 tokens, 11 blocks. Both
    prompts fill one block each; the first decode (iteration 0) writes token 5 of each: 2 new
    blocks, 4 used, 7 free. Both cross into a new block together every 4 iterations (4, 8, 12,
    16, ...), 2 blocks each time: iterations 4, 8, 12 take 6 blocks, 1 is left, iteration 16
    needs 2. So iterations 0..15 (16 of them) can be costed as one run, not fewer and not more
    (the next finish is at iteration 38)."""
    s, kv, finished = _sched(11, max_num_seqs=8, max_num_batched_tokens=64)
    assert s.add(Request(0, 0.0, 4, 40)) and s.add(Request(1, 0.0, 4, 40))
    _step(s, 0.0)
    b = s.schedule(1.0)
    assert b.num_decode == 2 and kv.available() == 7
    assert s.decode_run_length() == 16
    # and stepping on: after those 16 iterations exactly 1 block is left
    s.complete(b, 2.0)
    s.skip_decode_iterations(0)
    for t in range(15):
        _step(s, 3.0 + t)
    assert kv.available() == 1 and s.preemptions == 0


# ---- SGLang reservation counted in pages ----------------------------------------------------------
def test_sglang_reservation_with_pages_of_4_tokens():
    """SGLang PrefillAdder with page_size 4: the reservation is new_token_ratio x the running
    requests' remaining output tokens, in pages. 40 pages. Request 0 (prompt 8, output 81) is
    prefilled (2 pages), then decodes once (token 9 opens page 3): 37 pages free, ratio
    0.7 - 0.001 = 0.699 after that decode step, 81 - 2 = 79 tokens still owed:
    int(0.699 * 79) = 55 tokens = 13 whole pages reserved, 24 pages = 96 tokens admissible.
    A 96-token prompt is admitted, a 97-token prompt (25 pages) is not."""
    def run(prompt):
        s, kv, finished = _sched(40, block_size=4, max_num_seqs=16, max_num_batched_tokens=128,
                                 mixed_batches=False, kv_reservation="ratio")
        s.add(Request(0, 0.0, 8, 81))
        _step(s, 0.0)
        b = _step(s, 1.0)
        assert b.num_decode == 1 and kv.available() == 37
        s.add(Request(1, 2.0, prompt, 4))
        return _prefill_ids(_step(s, 2.0))
    assert run(96) == [1]
    assert run(97) == []


def test_sglang_reservation_counts_exactly_the_tokens_still_owed():
    """Page size 1, 100 tokens of KV. Request 0 (prompt 10, output 80) is prefilled and decodes
    once: 11 tokens used, 89 free, 80 - 2 = 78 tokens still owed at ratio 0.699:
    int(0.699 * 78) = int(54.52) = 54 reserved, so a 35-token prompt (89 - 54) is admitted and a
    36-token one is not. (Counting one token too many, 79, would reserve int(55.2) = 55 and
    refuse the 35-token prompt; one too few, 77, int(53.8) = 53, and admit the 36-token one.)"""
    def run(prompt):
        s, kv, finished = _sglang(100)
        s.add(Request(0, 0.0, 10, 80))
        _step(s, 0.0)
        _step(s, 1.0)
        assert kv.available() == 89
        s.add(Request(1, 2.0, prompt, 4))
        return _prefill_ids(_step(s, 2.0))
    assert run(35) == [1]
    assert run(36) == []


# ---- a prefill that finds no free block preempts the newest running request ----------------------
def test_a_stuck_prefill_preempts_the_newest_request_instead_of_stalling():
    """Prefill-first scheduling (SGLang), chunk 8, blocks of 4, 6 blocks. Pass 1: request 0
    (prompt 20) computes 8 tokens (2 blocks). Request 1 arrives with its KV (8 tokens, from a
    prefill replica). Pass 2: request 0 computes 8 more (4 blocks), request 1 joins the decoders
    with 2 blocks: nothing is free. Pass 3: request 0's last 4 tokens need a block: the newest
    running request (1) is preempted (vLLM v1 / SGLang retract) so the prompt completes in this
    pass, instead of a pass that skips it."""
    s, kv, finished = _sched(6, max_num_seqs=8, max_num_batched_tokens=64, chunk=8, mixed_batches=False)
    assert s.add(Request(0, 0.0, 20, 1))
    b = _step(s, 0.0)
    assert [(r.id, c) for r, c, _ in b.prefills] == [(0, 8)]
    d = Request(1, 0.5, 8, 2)
    d.target, d.computed, d.generated = 8, 8, 1
    assert s.add(d)
    b = _step(s, 1.0)
    assert [(r.id, c) for r, c, _ in b.prefills] == [(0, 8)] and 1 in s.running
    assert kv.available() == 0
    b = _step(s, 2.0)
    # request 0's last chunk, then request 1 back from the head of the queue, recomputing its
    # 8 + 1 tokens from the start with the 4 prompt tokens left of the chunk
    assert [(r.id, c, start) for r, c, start in b.prefills] == [(0, 4, 16), (1, 4, 0)]
    assert s.preemptions == 1 and d.preemptions == 1 and d.target == 9
    assert finished == [0]


def test_prompt_blocks_handed_to_the_prefix_cache_are_counted_once():
    """vLLM automatic prefix caching (vllm/v1/core/kv_cache_manager.py): the full blocks of a
    computed prompt become cached blocks; when the request finishes they stay in the cache as
    free-but-reusable (evictable), so the pool is whole again, never more than whole.
    12 blocks of 4 tokens, prompt of 24 tokens = 3 keys x 8 tokens (2 blocks per key): the
    prefill takes 6 blocks, which all move to the cache (3 keys x 2 blocks); the first decode
    token opens a 7th block, the request's own. At the finish: 0 used, 12 available (6 free +
    6 evictable)."""
    cfg = EngineConfig(block_size=4, prefix_caching=True, max_num_seqs=8, max_num_batched_tokens=64)
    kv = KVCache(12, 4)
    finished = []
    s = Scheduler(cfg, kv, on_finish=lambda r, now: finished.append(r.id))
    r = Request(0, 0.0, 24, 3, prefix_keys=("a", "b", "c"), prefix_key_tokens=8)
    assert s.add(r)
    _step(s, 0.0)
    assert r.blocks == 0 and kv.used == 6 and kv.available() == 6
    _step(s, 1.0)  # first decode: token 25 opens a block of the request's own
    assert kv.used == 7
    _step(s, 2.0)
    assert finished == [0]
    assert kv.used == 0 and kv.available() == 12 and kv.evictable == 6


def test_skipping_decode_iterations_allocates_the_blocks_of_the_iterations_skipped():
    """One decoder, prompt of 4 tokens (1 block of 4), output 20, 10 blocks. The first decode
    pass (iteration 0) writes token 5 and takes block 2; iterations 1, 2, 3 write tokens 6..8
    into it. Skipping those 3 iterations (costed with iteration 0 as one run) must leave exactly
    what stepping them leaves: 2 blocks used; iteration 4 then opens block 3."""
    s, kv, finished = _sched(10, max_num_seqs=8, max_num_batched_tokens=64)
    s.add(Request(0, 0.0, 4, 20))
    _step(s, 0.0)
    b = s.schedule(1.0)
    assert kv.used == 2 and s.decode_run_length() >= 4
    s.skip_decode_iterations(3)
    s.complete(b, 2.0)
    assert kv.used == 2
    _step(s, 3.0)  # iteration 4: token 9 opens block 3
    assert kv.used == 3


def test_a_running_prefill_chunk_shrinks_to_the_free_blocks():
    """Blocks of 4, 6 blocks, budget 9 tokens. Pass 1: request 0 (prompt 8, output 8) prefills
    (2 blocks); request 1 (prompt 20) gets the 1 token left (1 block). Pass 2: request 0's first
    decode opens a block, request 1 computes 8 tokens (2 more blocks): nothing free. Pass 3:
    request 1 wants 8 more tokens but its 3 blocks hold 12 and 9 are written: the chunk shrinks
    to 3 tokens and takes no block (the simulator's rule: a prefill's chunk shrinks to the
    blocks that are free; only decodes, or a pass with nothing else, preempt). When both are
    done every block is back."""
    s, kv, finished = _sched(6, max_num_seqs=4, max_num_batched_tokens=9)
    assert s.add(Request(0, 0.0, 8, 8)) and s.add(Request(1, 0.0, 20, 1))
    b = _step(s, 0.0)
    assert [(r.id, c) for r, c, _ in b.prefills] == [(0, 8), (1, 1)]
    b = _step(s, 1.0)
    assert b.num_decode == 1 and [(r.id, c) for r, c, _ in b.prefills] == [(1, 8)]
    assert kv.available() == 0
    b = _step(s, 2.0)
    assert b.num_decode == 1 and [(r.id, c, start) for r, c, start in b.prefills] == [(1, 3, 9)]
    assert kv.available() == 0 and s.preemptions == 0
    now = 3.0
    while s.has_work() and now < 100:
        _step(s, now)
        now += 1.0
    assert sorted(finished) == [0, 1] and kv.available() == 6


def test_decode_run_uses_the_last_free_block_exactly():
    """Blocks of 4, 7 blocks. Request 0 (prompt 4) crosses into a new block at decode
    iterations 0, 4, 8, ...; request 1 (prompt 6) at 2, 6, 10, ... After the prefills (1 + 2
    blocks) and iteration 0 (request 0's second block) 3 blocks are free: iterations 2, 4, 6 take
    them, the last one exactly, and iteration 8 finds none. The run is iterations 0..7: 8."""
    s, kv, finished = _sched(7, max_num_seqs=8, max_num_batched_tokens=64)
    assert s.add(Request(0, 0.0, 4, 20)) and s.add(Request(1, 0.0, 6, 18))
    _step(s, 0.0)
    s.schedule(1.0)
    assert kv.available() == 3
    assert s.decode_run_length() == 8


def test_a_decode_pass_after_a_finish_attends_to_the_remaining_requests_tokens_only():
    """Orca/vLLM iteration-level batching: a finished request leaves the batch at once.
    Requests 0 (prompt 8, output 2) and 1 (prompt 4, output 9) are prefilled together; the first
    decode pass attends to (8 + 1) + (4 + 1) = 14 tokens and finishes request 0; the next pass
    decodes request 1 alone over its 4 + 1 tokens in KV and the new one: 6. Request 2 (prompt 8,
    output 2) joins later: the pass after its prefill attends to request 1's 4 + 3 + 1 = 8 and its
    own 8 + 1 = 9 tokens, 17, and finishes it; the next pass is request 1's 4 + 4 + 1 = 9."""
    s, kv, finished = _sched(100, max_num_seqs=8, max_num_batched_tokens=64)
    assert s.add(Request(0, 0.0, 8, 2)) and s.add(Request(1, 0.0, 4, 9))
    _step(s, 0.0)
    b = _step(s, 1.0)
    assert b.num_decode == 2 and b.decode_kv_tokens == 14 and finished == [0]
    b = _step(s, 2.0)
    assert b.num_decode == 1 and b.decode_kv_tokens == 6
    s.add(Request(2, 3.0, 8, 2))
    b = _step(s, 3.0)  # request 1's decode (7 tokens) beside request 2's prefill
    assert b.num_decode == 1 and b.decode_kv_tokens == 7 and _prefill_ids(b) == [2]
    b = _step(s, 4.0)
    assert b.num_decode == 2 and b.decode_kv_tokens == 17 and finished == [0, 2]
    b = _step(s, 5.0)
    assert b.num_decode == 1 and b.decode_kv_tokens == 9


def test_a_request_preempted_at_its_last_decode_does_not_finish_until_recomputed():
    """Blocks of 4, 6 blocks, budget 8 tokens. Request 0 (prompt 12, output 10) prefills 8
    tokens; request 1 arrives with its KV (8 tokens, 1 generated, 1 more to go) and joins the
    decoders while request 0 prefills its last 4. The next decode pass needs a block for each
    (tokens 9 and 13), 1 is free: vLLM preempts the newest, request 1 - in the very iteration it
    would have finished in. It must not count as finished then: it is recomputed (8 + 1 tokens,
    7 in this pass) and finishes only when that prefill samples its second token."""
    s, kv, finished = _sched(6, max_num_seqs=8, max_num_batched_tokens=8)
    assert s.add(Request(0, 0.0, 12, 10))
    _step(s, 0.0)
    d = Request(1, 0.5, 8, 2)
    d.target, d.computed, d.generated = 8, 8, 1
    assert s.add(d)
    b = _step(s, 1.0)
    assert [(r.id, c) for r, c, _ in b.prefills] == [(0, 4)] and sorted(s.running) == [0, 1]
    b = _step(s, 2.0)
    assert b.num_decode == 1 and d.preemptions == 1 and [(r.id, c) for r, c, _ in b.prefills] == [(1, 7)]
    assert finished == [] and 1 in s.running
    now = 3.0
    while 1 not in finished and now < 50:
        _step(s, now)
        now += 1.0
    assert d.generated == 2 and d.finish_s > 3.0


def test_waiting_tokens_count_only_what_is_left_to_prefill():
    """A request whose KV arrived from a prefill replica has nothing left to prefill: behind a
    full engine (max_num_seqs=1) it waits with 0 tokens to compute, beside a 20-token prompt."""
    s, kv, finished = _sched(1000, max_num_seqs=1, max_num_batched_tokens=64)
    assert s.add(Request(0, 0.0, 8, 10))
    s.schedule(0.0)
    a = Request(1, 0.5, 12, 4)
    a.target, a.computed, a.generated = 12, 12, 1
    assert s.add(a) and s.add(Request(2, 0.5, 20, 4))
    assert [r.id for r in s.waiting] == [1, 2] and s.waiting_tokens() == 20


def test_skipped_decode_steps_decay_the_new_token_ratio_linearly():
    """SGLang: new_token_ratio falls by (0.7 − 0.1)/600 = 0.001 per decode step; 100 steps
    skipped together leave 0.6, as 100 single steps do."""
    s, kv, finished = _sglang(2000)
    s.add(Request(0, 0.0, 10, 1000))
    _step(s, 0.0)
    s.skip_decode_iterations(100)
    assert s.ratio == __import__("pytest").approx(0.6, rel=1e-12)


def test_no_evict_reservation_excludes_the_cached_prefix():
    """TensorRT-LLM GUARANTEED_NO_EVICT with KV block reuse: a request reserves the blocks of
    its prompt and output that it does not read from the cache. Blocks of 4, prompts of 24
    tokens with 2 cached keys of 8 tokens (4 blocks), outputs of 8: request 0 reserves
    (24 + 8) / 4 = 8 blocks; request 1, hitting both keys, 8 − 4 = 4."""
    cfg = EngineConfig(block_size=4, prefix_caching=True, max_num_seqs=8, max_num_batched_tokens=64,
                       kv_reservation="full", chunked_prefill=False)
    kv = KVCache(40, 4)
    s = Scheduler(cfg, kv, on_finish=lambda r, now: None)
    s.add(Request(0, 0.0, 24, 8, prefix_keys=("a", "b"), prefix_key_tokens=8))
    _step(s, 0.0)
    assert kv.available() == 32
    r1 = Request(1, 1.0, 24, 8, prefix_keys=("a", "b"), prefix_key_tokens=8)
    s.add(r1)
    s.schedule(1.0)
    assert r1.shared_blocks == 4 and r1.blocks == 4 and kv.available() == 28


def test_a_long_decode_run_ends_at_the_finish_inside_a_partial_block_cycle():
    """vLLM blocks of 16. One decoder (prompt 16, output 302), 20 blocks: after its first decode
    (token 17 opens block 2) 18 blocks are free, one per 16 iterations (16, 32, ..., 288); its
    last token is at iteration 300, before it would need a block again at 304. The run is the
    301 iterations 0..300 and stops at the finish."""
    s, kv, finished = _sched(20, block_size=16, max_num_seqs=8, max_num_batched_tokens=64)
    assert s.add(Request(0, 0.0, 16, 302))
    _step(s, 0.0)
    s.schedule(1.0)
    assert kv.available() == 18
    assert s.decode_run_length() == 301


def test_sglang_reservation_after_a_late_joiner_leaves_counts_only_the_remaining_request():
    """Page size 1. Request 0 (prompt 10, output 100) decodes; request 1 (prompt 5, output 3)
    joins the decoders 3 iterations later and finishes. Then only request 0's remaining output
    is reserved (ratio × tokens it still owes): a prompt of exactly the free tokens left after
    that reservation is admitted, one token more is not."""
    def run(extra):
        s, kv, finished = _sglang(130)  # small enough that the prompt fits one 64-token pass
        r0 = Request(0, 0.0, 10, 100)
        s.add(r0)
        _step(s, 0.0)
        for t in range(1, 4):
            _step(s, float(t))
        s.add(Request(1, 4.0, 5, 3))
        now = 4.0
        while 1 not in finished:
            _step(s, now)
            now += 1.0
        owed = r0.output_len - s.decode_position(r0)
        free = kv.available() - int(s.ratio * owed)
        assert 0 < free < 64
        s.add(Request(2, now, free + extra, 4))
        return _prefill_ids(_step(s, now))
    assert run(0) == [2]
    assert run(1) == []


def test_a_preempted_decoder_keeps_the_time_of_its_last_token():
    """The stall a preempted request shows on resuming (an inter-token gap, as vLLM's
    inter-token-latency metric sees it) starts at the last token it really produced. Blocks of 4,
    6 blocks: request 0 (prompt 8) decodes; request 1 arrives at 0.5 with its KV (11 tokens, its
    first token sampled at 0.5), 1 block left. Pass 1.0-2.0 decodes both (token 12 fills
    request 1's third block, request 0 takes the last block); pass 2.0 finds no block for
    request 1's token 13 and preempts it: its last token came at 2.0, after one iteration.
    In the stuck-prefill scenario a request preempted before any decode iteration of its own keeps
    the time its first token arrived (0.5), not the end of an earlier decode pass."""
    s, kv, finished = _sched(6, max_num_seqs=8, max_num_batched_tokens=64)
    assert s.add(Request(0, 0.0, 8, 12))
    _step(s, 0.0)
    d = Request(1, 0.5, 11, 12)
    d.target, d.computed, d.generated, d.last_token_s = 11, 11, 1, 0.5
    assert s.add(d)
    _step(s, 1.0)
    assert d.preemptions == 0
    _step(s, 2.0)
    assert d.preemptions == 1 and d.generated == 2 and d.last_token_s == 2.0

    s, kv, finished = _sched(6, max_num_seqs=8, max_num_batched_tokens=64, chunk=8, mixed_batches=False)
    assert s.add(Request(0, 0.0, 20, 1))
    _step(s, 0.0)
    d = Request(1, 0.5, 8, 2)
    d.target, d.computed, d.generated, d.last_token_s = 8, 8, 1, 0.5
    assert s.add(d)
    _step(s, 1.0)
    _step(s, 2.0)
    assert d.preemptions == 1 and d.generated == 1 and d.last_token_s == 0.5


def test_decode_runs_equal_stepping_one_by_one_over_varied_block_phases():
    """Costing a run of identical decode iterations at once (decode_run_length) must not change
    what happens: over seeded mixes of prompts (decoders crossing block boundaries at different
    iterations) and outputs in a tight KV pool (blocks of 2 or 4), every request finishes at the same
    time, in the same order, with the same preemptions, whether the run is skipped or stepped."""
    import random

    def run(reqs, blocks, bs, skip):
        s, kv, finished = _sched(blocks, block_size=bs, max_num_seqs=8, max_num_batched_tokens=64)
        objs = [Request(i, 0.0, p, o) for i, (p, o) in enumerate(reqs)]
        for r in objs:
            assert s.add(r)
        now = 0.0
        while s.has_work() and now < 10_000:
            b = s.schedule(now)
            n = s.decode_run_length() if skip and b.num_decode and not b.prefills else 1
            s.skip_decode_iterations(n - 1)
            s.complete(b, now + n)
            now += n
        return finished, [(r.finish_s, r.preemptions) for r in objs], s.preemptions, kv.available()

    rng = random.Random(7)
    for _ in range(80):
        bs = rng.choice((2, 4))
        reqs = [(rng.randint(1, 13), rng.randint(2, 120)) for _ in range(rng.randint(2, 6))]
        blocks = max(-(-(p + o) // bs) for p, o in reqs) + rng.randint(0, 40)
        assert run(reqs, blocks, bs, True) == run(reqs, blocks, bs, False), (reqs, blocks, bs)
