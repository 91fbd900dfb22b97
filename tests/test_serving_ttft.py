"""TTFT mechanisms of the serving validation (issue #19): how the measured deployments were set up.

AIConfigurator's own harness (the internal, aiperf/genai-perf rows of silicon_sample.csv) deployed
TensorRT-LLM with its generator: max_batch_size = bs, max_num_tokens = bs + isl + 1500, chunked
prefill off, overlap scheduler on (ai-dynamo/aiconfigurator generator, agg worker config;
templates/trtllm/extra_engine_args.1.0.0rc3.yaml.j2). Without chunked prefill a prompt enters an
iteration only whole, so that budget admits few prompts per iteration and a burst's TTFT grows.
The generator's vLLM and SGLang rules (benchmark rules of 2026-02-11, PR #333) are a deployment of
their own ("recorded+generator", "aic-generator"), applied to all three engines alike.
"""
import pytest

from hwmodels.errors import InputError
from validation import serving as V


def _case(engine="trtllm", client="aiperf", c=64, isl=1024, osl=64, mode="agg"):
    return {"id": "t", "model": "llama3.1-8b", "family": "Llama-3.1", "model_path": "x",
            "system": "h100_sxm", "cluster": "dgx-h100", "dtype": "bf16", "engine": engine,
            "version": "1.0.0rc3", "mode": mode, "pools": {"both": {"tp": 1, "pp": 1, "ep": 1, "count": 1}},
            "tp": 1, "pp": 1, "ep": 1, "dp": 1, "dense": True, "concurrency": c, "isl": isl,
            "osl": osl, "quant": "", "kv_dtype": None, "client": client, "measured_on": "",
            "ttft_s": 1.0, "tpot_s": 1.0}


def test_aic_generator_limits_are_the_generators_formula():
    # source: agg_cfg["max_num_tokens"] = agg_cfg["bs"] + ctx.runtime.isl + 1500; max_batch_size = bs
    assert V.AIC_TRTLLM_TOKEN_HEADROOM == 1500
    assert V.aic_trtllm_limits(_case(c=64, isl=1024)) == (64, 64 + 1024 + 1500)
    assert V.aic_trtllm_limits(_case(c=8, isl=4096)) == (8, 8 + 4096 + 1500)


def test_aic_generator_limits_apply_only_to_its_own_trtllm_deployments():
    # InferenceMAX rows (bench-serving) ran their own launch scripts; vLLM/SGLang keep their defaults
    assert V.aic_trtllm_limits(_case(client="bench-serving")) == (None, None)
    assert V.aic_trtllm_limits(_case(engine="vllm")) == (None, None)
    assert V.aic_trtllm_limits(_case(engine="sglang")) == (None, None)
    assert V.aic_trtllm_limits(_case(mode="disagg")) == (None, None)


def test_generator_budget_raises_burst_ttft_and_switch_off_restores_the_defaults():
    """A burst of 64 prompts of 1024 tokens: the default budget (8192) takes 8 whole prompts per
    iteration, the generator's (64 + 1024 + 1500 = 2588) takes 2, so the first wave queues over
    four times as many iterations and the mean TTFT grows (later waves are spread); switched off (deployment="defaults") the replay is the engine defaults'."""
    case = _case(c=64, isl=1024, osl=16)
    on = V.replay(case, quick=True)
    off = V.replay(case, quick=True, deployment="defaults")
    assert "error" not in on and "error" not in off
    assert on["ttft_s"] > 1.3 * off["ttft_s"]


def test_switch_off_changes_nothing_outside_the_generator_rows():
    case = _case(client="bench-serving", c=16, isl=1024, osl=16)
    assert V.replay(case, quick=True) == V.replay(case, quick=True, deployment="defaults")


def test_unknown_deployment_is_refused():
    with pytest.raises(InputError):
        V.replay(_case(), quick=True, deployment="fitted")


def test_inferencemax_scripts_settings_apply_to_their_own_rows_only():
    # InferenceMAX benchmarks/*.sh: vLLM --async-scheduling; 70b_fp8_h200_trt_slurm.sh:
    # --max_num_tokens 16384, batch waiting (20 passes, 0.9) only for 1k/1k with TP < 8
    def s(case):
        got = V.inferencemax_settings(case)
        return got["options"], got["max_tokens"]
    assert s(_case(engine="vllm", client="bench-serving")) == ((("async_scheduling", "on"),), None)
    trt = dict(_case(engine="trtllm", client="bench-serving", isl=1024, osl=1024),
               family="Llama-3.1", system="h200_sxm", tp=4)
    assert s(trt) == ((("batch_wait_timeout_iters", 20), ("batch_wait_max_tokens_ratio", 0.9)), 16384)
    assert s(dict(trt, tp=8)) == ((), 16384)
    assert s(dict(trt, osl=8192)) == ((), 16384)
    assert s(dict(trt, system="h100_sxm")) == ((), None)
    assert s(_case(engine="vllm", client="aiperf")) == ((), None)
    assert s(_case(engine="sglang", client="bench-serving")) == ((), None)


def test_inferencex_sglang_b200_scripts_set_the_recv_interval_and_limits():
    # single_node/dsr1_fp8_b200.sh: TP 8 -> --scheduler-recv-interval 30 from 16 clients (else 10),
    # --max-running-requests 128, --chunked-prefill-size / --max-prefill-tokens 32768,
    # --mem-fraction-static 0.82; TP 4 -> 10, 32, 8192, 0.95
    ds = dict(_case(engine="sglang", client="bench-serving", c=16), family="DeepSeek-V3/R1",
              system="b200_sxm", dtype="fp8", tp=8)
    got = V.inferencemax_settings(ds)
    assert got == {"options": (("recv_interval", 30), ("max_prefill_tokens", 32768)), "max_tokens": 32768,
                   "max_batch": 128, "memory_fraction": 0.82}
    assert V.inferencemax_settings(dict(ds, concurrency=8))["options"][0] == ("recv_interval", 10)
    tp4 = V.inferencemax_settings(dict(ds, tp=4))
    assert tp4["options"][0] == ("recv_interval", 10) and tp4["max_batch"] == 32 and tp4["memory_fraction"] == 0.95
    # the same model on H200 (its script sets no recv interval), or with attention DP: nothing
    assert V.inferencemax_settings(dict(ds, system="h200_sxm"))["options"] == ()
    assert V.inferencemax_settings(dict(ds, dp=8))["options"] == ()
    # the recorded deployment carries them into the replay; "defaults" drops them
    assert V.deployment_settings(ds)["max_batch"] == 128
    assert V.deployment_settings(ds, "defaults")["max_batch"] is None


def test_recorded_deployment_differs_from_the_generator_only_switch_on_inferencemax_rows():
    """vLLM async scheduling (stated by the InferenceMAX scripts) adds a pass to an arrival's wait;
    the "aic-generator" deployment (the InferenceMAX settings switched off) leaves it out."""
    case = _case(engine="vllm", client="bench-serving", c=16, isl=1024, osl=32)
    rec = V.replay(case, quick=True)
    off = V.replay(case, quick=True, deployment="aic-generator")
    assert "error" not in rec and "error" not in off
    assert rec["ttft_s"] > off["ttft_s"] * 1.02
    aiperf = _case(c=16, isl=1024, osl=32)
    assert V.replay(aiperf, quick=True) == V.replay(aiperf, quick=True, deployment="aic-generator")


# ---- the generator's rules for every engine (ai-dynamo/aiconfigurator 2063ee024, PR #333,
# 2026-02-11, generator/rule_plugin/benchmark/{vllm,sglang,trtllm}.rule) ---------------------------
def _s(max_batch=None, max_tokens=None, options=(), memory_fraction=None):
    return {"max_batch": max_batch, "max_tokens": max_tokens, "options": options,
            "memory_fraction": memory_fraction}


def test_generator_settings_are_its_rules_for_each_engine():
    # vllm.rule: agg max_num_tokens = max_batch_size + isl + 1500 (--max-num-batched-tokens),
    # max_batch_size = bs (--max-num-seqs); sglang.rule: max_prefill_tokens = isl + 1500,
    # enable_mixed_chunk = true, max_batch_size = bs (--max-running-requests); trtllm as before,
    # with its template's free_gpu_memory_fraction 0.80
    assert V.aic_generator_settings(_case(engine="vllm", c=32, isl=1024)) == _s(32, 32 + 1024 + 1500)
    assert V.aic_generator_settings(_case(engine="sglang", c=32, isl=1024)) == _s(
        32, None, (("max_prefill_tokens", 1024 + 1500), ("enable_mixed_chunk", "on")))
    assert V.AIC_TRTLLM_FREE_GPU_MEMORY_FRACTION == 0.80
    assert V.aic_generator_settings(_case(engine="trtllm", c=32, isl=1024)) == _s(
        32, 32 + 1024 + 1500, (), 0.80)
    for engine in ("vllm", "sglang", "trtllm"):  # its own harness's agg rows only
        assert V.aic_generator_settings(_case(engine=engine, client="bench-serving")) == _s()
        assert V.aic_generator_settings(_case(engine=engine, mode="disagg")) == _s()


def test_deployments_apply_the_generator_uniformly_or_not_at_all_per_engine():
    """recorded: the generator's TRT-LLM rules only (the vLLM/SGLang ones reached the command line
    only in some windows and the rows are undated); recorded+generator and aic-generator: all
    three engines; defaults: none. InferenceMAX settings ride on recorded and recorded+generator."""
    for engine in ("vllm", "sglang"):
        row = _case(engine=engine)
        assert V.deployment_settings(row, "recorded") == _s()
        assert V.deployment_settings(row, "recorded+generator") == V.aic_generator_settings(row)
        assert V.deployment_settings(row, "aic-generator") == V.aic_generator_settings(row)
        assert V.deployment_settings(row, "defaults") == _s()
    trt = _case(engine="trtllm")
    for d in ("recorded", "recorded+generator", "aic-generator"):
        assert V.deployment_settings(trt, d) == _s(*V.aic_trtllm_limits(trt), (), 0.80)
    assert V.deployment_settings(trt, "defaults") == _s()
    imax = _case(engine="vllm", client="bench-serving")
    assert V.deployment_settings(imax, "recorded+generator") == _s(options=(("async_scheduling", "on"),))
    assert V.deployment_settings(imax, "aic-generator") == _s()
    with pytest.raises(InputError, match="deployment 'fitted'; valid"):
        V.deployment_settings(trt, "fitted")


def test_generator_memory_fraction_shrinks_the_trtllm_kv_pool(monkeypatch):
    """free_gpu_memory_fraction 0.80 (the generator's template) instead of TRT-LLM's 0.9: the KV
    pool is that fraction of the memory left after weights and activations (same limits), so it
    shrinks by 0.8 / 0.9; switched back to 0.9 the pool is the engine default's."""
    case = _case(c=8, isl=256, osl=8)
    rec = V.replay(case, quick=True)
    monkeypatch.setattr(V, "AIC_TRTLLM_FREE_GPU_MEMORY_FRACTION", 0.9)
    off = V.replay(case, quick=True)
    assert rec["kv_blocks"] == pytest.approx(off["kv_blocks"] * 0.8 / 0.9, rel=0.002)


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_generator_rules_shorten_a_bursts_ttft_and_recorded_leaves_them_out(engine):
    """A burst of 32 prompts of 1024 tokens on Qwen3-32B TP2: vLLM's budget 32 + 1024 + 1500 takes
    2 prompts a pass instead of 8 but runs them with the decodes; SGLang's mixed chunk stops
    pausing the decodes. "recorded" keeps the engine defaults on these rows."""
    case = dict(_case(engine=engine, c=32, isl=1024, osl=64), model="qwen3-32b", family="Qwen3",
                tp=2, pools={"both": {"tp": 2, "pp": 1, "ep": 1, "count": 1}})
    rec = V.replay(case, quick=True)
    gen = V.replay(case, quick=True, deployment="recorded+generator")
    assert "error" not in rec and "error" not in gen
    assert rec == V.replay(case, quick=True, deployment="defaults")
    assert gen["ttft_s"] < 0.8 * rec["ttft_s"]


def test_validate_serving_deployment_flag_refuses_an_unknown_name(capsys):
    from ui.cli import main
    code = main(["validate", "serving", "--deployment", "fitted", "--limit", "1"])
    _, err = capsys.readouterr()
    assert code == 2 and err.strip().count("\n") == 0 and "fitted" in err
    with pytest.raises(InputError, match="deployment 'fitted'"):
        V.run_suite(limit=1, deployment="fitted")
