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
