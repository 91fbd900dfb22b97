"""Fuzz surfaces of clusterplan (issue #10): one hypothesis strategy and one property per input
surface, shared by tests/test_fuzz.py (the CI profile: a few dozen cases each) and
tests/fuzz/long_profile.py (>= 10,000 cases each).

The property of every surface: the input is either accepted (a valid result, checked for sanity)
or refused with an `InputError` (CLI: exit code 2, nothing on stdout, ONE line on stderr that
starts with "clusterplan: error: "). Anything else — another exception (a traceback), exit code
1, a half-written stdout, JSON that is not JSON — is a bug. A per-case hypothesis deadline turns a
hang into a failure.

    SURFACES["model_file"].check(example)      # raises AssertionError (or the escaped exception)

Commands run in-process through `ui.cli.main` with stdout/stderr captured; models are the
tiny ones in tests/fuzz/data so that a case takes milliseconds.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from hwmodels.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data"
TINY = str(DATA / "tiny.yaml")
TINY_MOE = str(DATA / "tiny-moe.yaml")

# ---- profiles ---------------------------------------------------------------------------------
_COMMON = dict(database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                      HealthCheck.data_too_large, HealthCheck.large_base_example])
CI = settings(deadline=10_000, derandomize=True, **_COMMON)  # ms per case; same cases every CI run
LONG = settings(deadline=20_000, derandomize=False, **_COMMON)

# ---- scratch space ------------------------------------------------------------------------------
_SCRATCH: list[str] = []


def scratch() -> Path:
    """A fresh empty folder under one temporary root (removed at exit)."""
    if not _SCRATCH:
        import atexit
        _SCRATCH.append(tempfile.mkdtemp(prefix="clusterplan-fuzz-"))
        atexit.register(shutil.rmtree, _SCRATCH[0], True)
    d = Path(tempfile.mkdtemp(dir=_SCRATCH[0]))
    return d


def cleanup(d: Path) -> None:
    shutil.rmtree(d, ignore_errors=True)


# ---- the CLI contract -----------------------------------------------------------------------------

# Exit-2 messages that named none of the mutated flags or values (a heuristic, so only reported).
UNNAMED: list = []

def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """ui.cli.main in-process: (exit code, stdout, stderr)."""
    from ui.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _no_constants(name):
    raise ValueError(f"{name} is not JSON (RFC 8259)")


def check_cli(argv: list[str], mutated: dict | None = None) -> str:
    """Run `argv` and assert the contract; returns "ok" or "error". With `mutated` (flag -> value
    given), an exit-2 message that names none of them is recorded in UNNAMED."""
    code, out, err = run_cli(argv)
    assert code in (0, 2), f"exit code {code} for {argv!r}: {err[-2000:]}"
    if code == 2:
        assert out == "", f"stdout on error for {argv!r}: {out[:300]!r}"
        assert err.startswith("clusterplan: error: "), f"stderr for {argv!r}: {err[:500]!r}"
        assert err.endswith("\n") and err.count("\n") == 1, f"not one line for {argv!r}: {err!r}"
        if mutated is not None and not names_one_of(err, mutated):
            UNNAMED.append((list(argv), err.strip()))  # reported by the long profile, not asserted
        return "error"
    if "--json" in argv:
        doc = json.loads(out, parse_constant=_no_constants)
        assert isinstance(doc, (dict, list)), f"JSON document of type {type(doc).__name__}"
    return "ok"


def names_one_of(message: str, mutated: dict) -> bool:
    """Whether `message` names one of the flags (or keys) or values in `mutated`."""
    low = message.lower()
    for flag, value in mutated.items():
        names = {str(flag).lstrip("-").lower(), str(flag).lstrip("-").lower().replace("-", "_"),
                 str(flag).lstrip("-").lower().replace("-", " ")}
        if any(n and n in low for n in names):
            return True
        v = str(value).strip().lower()
        if v and (v in low or repr(value).lower() in low):
            return True
    return False


def check_input_error(e: InputError) -> None:
    msg = str(e)
    assert msg.strip(), "empty InputError message"
    assert "Traceback" not in msg


# ---- generic values ---------------------------------------------------------------------------------

CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
JUNK = ["", " ", "0", "-0", "-1", "1", "2", "3", "7", "8", "1.5", "-1.5", "1e3", "1e309", "-1e309",
        "nan", "NaN", "inf", "-inf", "Infinity", "0x10", "1_000", "+5", " 5 ", "9" * 40, "on", "off",
        "true", "null", "None", "[]", "{}", "a=b", "=", ",", ":", "::", "a:b", "é", "\t", "x" * 300,
        "-5e-324", "1e-320", "00", "4096", "2147483648", "18446744073709551617"]
JUNK_VALUES = [None, True, False, 0, -1, 1, 3, 7, 1.5, -2.5, 0.0, 10 ** 30, -(10 ** 30), 2 ** 63,
               float("nan"), float("inf"), -float("inf"), "", "8", "abc", "1e3", [], [1, 2], {}, {"a": 1},
               1e-300, 10 ** 400]


def junk_text():
    return st.one_of(st.sampled_from(JUNK), st.integers(-2 ** 70, 2 ** 70).map(str),
                     st.floats().map(repr), st.text(alphabet=CHARS, max_size=16))


def junk_value():
    return st.one_of(st.sampled_from(JUNK_VALUES), st.integers(-2 ** 40, 2 ** 40),
                     st.floats(), st.text(alphabet=CHARS, max_size=10))


def small_number_text():
    return st.one_of(st.integers(-3, 5000).map(str), st.sampled_from(["0.5", "1e2", ".5", "5.", "1e-9", "1e400",
                                                                       "1.2.3", "e5", "-0.0", "2e9"]))


def with_unit(units: list[str]):
    return st.builds(lambda n, sp, u: f"{n}{sp}{u}", small_number_text(), st.sampled_from(["", "", " "]),
                     st.sampled_from(units + [u.upper() for u in units] + ["x", "iB", "k", "Ki", "sec", "hours"]))


def value_for(valid: list[str], extra=None):
    """A flag value: mostly one of `valid`, else junk (or `extra`, a strategy)."""
    options = [st.sampled_from(valid)] * 7 + [junk_text()]
    if extra is not None:
        options.append(extra)
    return st.one_of(*options)


@st.composite
def argv_for(draw, prefix: list[str], required: dict, optional: dict, flags: list[str] = (),
             drop_rate: int = 40):
    """argv = prefix + required flags (each valid, mutated or dropped) + a random subset of optional
    flags + boolean flags. Values are strategies. Returns (argv, mutated)."""
    argv, mutated = list(prefix), {}
    for flag, (valid, fuzz) in required.items():
        roll = draw(st.integers(0, drop_rate))
        if roll == 0:
            mutated[flag] = ""
            continue  # dropped: "required" must be named
        if roll <= 2:
            v = draw(fuzz)
            mutated[flag] = v
        else:
            v = draw(st.sampled_from(valid))
        argv += [flag, v]
    names = sorted(optional)
    chosen = draw(st.lists(st.sampled_from(names), unique=True, max_size=3)) if names else []
    for flag in chosen:
        v = draw(optional[flag])
        mutated[flag] = v
        argv += [flag, v]
    for f in flags:
        if draw(st.integers(0, 1 if f == "--json" else 4)) == 0:
            argv.append(f)
    if draw(st.integers(0, 30)) == 0:  # an unknown flag or a stray positional
        tok = draw(st.sampled_from(["--frobnicate", "--nodes=", "stray", "--json=1", "--", "-x"]))
        argv.append(tok)
        mutated[tok] = tok
    return argv, mutated


# ---- surfaces -----------------------------------------------------------------------------------------

@dataclass
class Surface:
    name: str
    strategy: object  # hypothesis strategy of examples
    check: object  # example -> "ok" | "error"; raises on a contract violation
    ci_examples: int  # CI profile
    doc: str = ""


SURFACES: dict[str, Surface] = {}


def surface(name: str, strategy, ci_examples: int, doc: str = ""):
    def deco(fn):
        SURFACES[name] = Surface(name, strategy, fn, ci_examples, doc)
        return fn
    return deco


# ---- 1. training plan strings ----------------------------------------------------------------------

_PLAN_KEYS = ["dp", "tp", "pp", "cp", "ep", "mb", "vpp", "zero", "recompute", "schedule", "sp", "offload", "fsdp",
              "recompute_layers", "recompute_method"]
_PLAN_VALUES = {
    "dp": ["1", "2", "4", "8", "16"], "tp": ["1", "2", "4", "8", "3"], "pp": ["1", "2", "4", "3"],
    "cp": ["1", "2", "4"], "ep": ["1", "2", "4"], "mb": ["1", "2", "4", "3"], "vpp": ["1", "2", "4"],
    "zero": ["0", "1", "2", "3", "4"], "recompute": ["none", "selective", "full", "FULL"],
    "schedule": ["1f1b", "interleaved", "gpipe", "zb-h1", "zb-h2", "zb", "interleaved-1f1b"],
    "sp": ["on", "off", "yes", "0"], "offload": ["on", "off"], "fsdp": ["on", "off"],
    "recompute_layers": ["0", "1", "2", "-1", "100"], "recompute_method": ["block", "uniform", "every"],
}


@st.composite
def plan_strings(draw):
    items = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            items.append(draw(junk_text()))  # not key=value, or junk
        else:
            key = draw(st.sampled_from(_PLAN_KEYS)) if kind > 1 else draw(st.sampled_from(["TP", "foo", "", "dp "]))
            val = draw(st.sampled_from(_PLAN_VALUES.get(key.strip().lower(), ["1"]))) if kind > 3 else draw(junk_text())
            items.append(f"{key}={val}")
    sep = draw(st.sampled_from([",", ",", ", ", ",,"]))
    return draw(st.sampled_from([1, 8, 16, 32])), sep.join(items), draw(st.sampled_from([TINY, TINY_MOE]))


@surface("plan_string", plan_strings(), 150,
         "training plan strings: parse_plan, validate_plan, estimate; to_string round-trips")
def check_plan_string(example) -> str:
    from hwmodels.clusters import load_cluster
    from simulator.analytic import estimate
    from simulator.models import load_model
    from simulator.ops import check_supported
    from simulator.training import TrainingJob, parse_plan, validate_plan
    n, text, model_ref = example
    try:
        plan = parse_plan(text, n)
    except InputError as e:
        check_input_error(e)
        return "error"
    assert parse_plan(plan.to_string(), n) == plan, f"{text!r} does not round-trip via {plan.to_string()!r}"
    model = load_model(model_ref)
    job = TrainingJob(model=model, seq_len=256, global_batch=32)
    cluster = load_cluster("dgx-h100", nodes=max(1, n // 8)) if n >= 8 else load_cluster("dgx-h100")
    try:
        validate_plan(plan, job, cluster.num_devices, cluster.devices_per_node)
        check_supported(model, plan)
        est = estimate(job, plan, cluster)
    except InputError as e:
        check_input_error(e)
        return "error"
    assert math.isfinite(est.step_time_s) and est.step_time_s > 0
    return "ok"


# ---- 2. serving plan strings -------------------------------------------------------------------------

_SERVE_KEYS = ["tp", "pp", "ep", "replicas", "max_batch", "max_tokens", "chunk", "prefill_tp",
               "prefill_replicas", "decode_tp", "decode_replicas", "prefill_pp", "decode_pp"]


@st.composite
def serving_plan_strings(draw):
    items = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            items.append(draw(junk_text()))
        else:
            key = draw(st.sampled_from(_SERVE_KEYS)) if kind > 1 else draw(junk_text())
            val = draw(st.sampled_from(["1", "2", "4", "8", "0", "off", "512", "3"])) if kind > 3 else draw(junk_text())
            items.append(f"{key}={val}")
    return ",".join(items)


@surface("serving_plan", serving_plan_strings(), 150, "serving plan strings: parse_serving_plan")
def check_serving_plan(text) -> str:
    from hwmodels.clusters import load_cluster
    from simulator.serving.engine import parse_serving_plan
    try:
        plan = parse_serving_plan(text, load_cluster("dgx-h100"))
    except InputError as e:
        check_input_error(e)
        return "error"
    json.dumps(plan.to_dict())
    return "ok"


# ---- 3. model files (HF config.json / YAML) ----------------------------------------------------------

_BASE_CONFIGS = [
    yaml.safe_load(open(DATA / "tiny.yaml")),
    yaml.safe_load(open(DATA / "tiny-moe.yaml")),
    {"model_type": "gpt2", "n_layer": 2, "n_embd": 128, "n_head": 4, "vocab_size": 1000, "n_positions": 256,
     "activation_function": "gelu_new"},
    {"model_type": "deepseek_v3", "num_hidden_layers": 3, "hidden_size": 256, "num_attention_heads": 8,
     "num_key_value_heads": 8, "intermediate_size": 512, "moe_intermediate_size": 128, "vocab_size": 1024,
     "n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 1, "first_k_dense_replace": 1,
     "q_lora_rank": 64, "kv_lora_rank": 32, "qk_nope_head_dim": 32, "qk_rope_head_dim": 16, "v_head_dim": 32,
     "hidden_act": "silu"},
    {"model_type": "qwen3_moe", "num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 4,
     "num_key_value_heads": 2, "head_dim": 32, "intermediate_size": 256, "moe_intermediate_size": 64,
     "num_experts": 8, "num_experts_per_tok": 2, "vocab_size": 512, "shared_expert_intermediate_size": 128},
]
_MODEL_KEYS = sorted({k for c in _BASE_CONFIGS for k in c} | {
    "tie_word_embeddings", "linear_bias", "learned_pos_embeddings", "attention_bias", "qk_norm", "norm",
    "moe_layer_freq", "max_position_embeddings", "published_params", "gated_mlp", "torch_dtype"})


@st.composite
def model_documents(draw):
    """(text, suffix, mutated keys): a config with 0-3 mutations, serialised as JSON or YAML,
    sometimes corrupted or not a mapping at all."""
    cfg = copy.deepcopy(draw(st.sampled_from(_BASE_CONFIGS)))
    mutated = {}
    shape = draw(st.integers(0, 19))
    if shape == 0:
        cfg = draw(st.sampled_from([[], [1, 2], 42, "text", None, 1.5, True]))
    else:
        for _ in range(draw(st.integers(0, 3))):
            key = draw(st.sampled_from(_MODEL_KEYS + ["unknown_key", "n_layer"]))
            op = draw(st.integers(0, 3))
            if op == 0:
                cfg.pop(key, None)
                mutated[key] = ""
            else:
                v = draw(st.one_of(junk_value(), st.integers(-4, 4096), st.sampled_from([2 ** 31, 2 ** 62, 10 ** 12])))
                cfg[key] = v
                mutated[key] = v
    suffix = draw(st.sampled_from([".json", ".yaml", ".yml"]))
    if suffix == ".json":
        text = json.dumps(cfg, default=str)  # NaN/Infinity stay as Python's JSON extension writes them
    else:
        text = yaml.safe_dump(cfg) if not isinstance(cfg, float) or math.isfinite(cfg) else "1.5"
    corrupt = draw(st.integers(0, 14))
    if corrupt == 0:
        text = text[: draw(st.integers(0, len(text)))]
    elif corrupt == 1:
        i = draw(st.integers(0, len(text)))
        text = text[:i] + draw(st.sampled_from(["{", "}", ":", "\t", "- ", "\"", "&a", "*b", "!!python/object:os.system"])) + text[i:]
    elif corrupt == 2:
        text = ""
    return text, suffix, (mutated if corrupt > 2 else {})


@surface("model_file", model_documents(), 120,
         "--model FILE: HF config.json and YAML with missing/extra/zero/negative/huge/wrong-typed keys, "
         "non-mappings, invalid syntax; then simulate train on it")
def check_model_file(example) -> str:
    from simulator.models import load_model
    text, suffix, mutated = example
    d = scratch()
    try:
        path = d / f"config{suffix}"
        path.write_text(text)
        try:
            model = load_model(str(path))
        except InputError as e:
            check_input_error(e)
            assert str(path) in str(e), f"message does not name the file: {e}"
            if mutated:
                # a config that was valid before the mutation should name the key or value that
                # broke it (a heuristic: a derived key may be named instead; reported, not asserted)
                low = str(e).lower()
                if not (names_one_of(str(e), mutated) or "not valid" in low or "mapping" in low
                        or "missing key" in low):
                    UNNAMED.append((["--model", json.dumps(mutated, default=str)], str(e)))
            return "error"
        s = model.summary()
        assert s["params"] > 0 and s["active_params"] <= s["params"]
        return check_cli(["simulate", "train", "--model", str(path), "--cluster", "dgx-h100", "--nodes", "1",
                          "--plan", "tp=1", "--seq-len", "64", "--global-batch", "8", "--json"])
    finally:
        cleanup(d)


# ---- 4. cluster YAML ------------------------------------------------------------------------------------

def _raw_presets(file: str, key: str) -> dict:
    with open(ROOT / file) as f:
        return yaml.safe_load(f)[key]


_RAW_CLUSTERS = _raw_presets("hwmodels/data/clusters.yaml", "clusters")
_CLUSTER_FIELDS = ["name", "description", "device", "devices_per_node", "nodes", "tiers", "nics_per_node",
                   "nic_bytes_per_s", "sources", "bogus"]
_TIER_FIELDS = ["name", "kind", "size", "bytes_per_s", "latency_s", "oversubscription", "bogus"]


@st.composite
def cluster_documents(draw):
    name = draw(st.sampled_from(sorted(_RAW_CLUSTERS)))
    data = copy.deepcopy(_RAW_CLUSTERS[name])
    data.pop("sources", None)
    data["nodes"] = draw(st.sampled_from([1, 1, 2, 4]))
    if name in ("tpu-v5p",):
        data["nodes"] = 16
    mutated = {}
    if draw(st.integers(0, 24)) == 0:
        data = draw(st.sampled_from([[], None, "dgx-h100", 3, [data]]))
    else:
        for _ in range(draw(st.integers(0, 3))):
            if draw(st.booleans()) and isinstance(data.get("tiers"), list) and data["tiers"]:
                i = draw(st.integers(0, len(data["tiers"]) - 1))
                t = data["tiers"][i]
                key = draw(st.sampled_from(_TIER_FIELDS))
                if not isinstance(t, dict):
                    continue
                if draw(st.integers(0, 3)) == 0:
                    t.pop(key, None)
                    mutated[key] = ""
                else:
                    v = draw(st.one_of(junk_value(), st.sampled_from(["nvswitch", "pcie", "fat-tree", "dragonfly",
                                                                       "ici-torus", "ethernet", 1e15, 1e-3])))
                    t[key] = v
                    mutated[key] = v
            else:
                key = draw(st.sampled_from(_CLUSTER_FIELDS))
                if draw(st.integers(0, 3)) == 0:
                    data.pop(key, None)
                    mutated[key] = ""
                else:
                    v = draw(st.one_of(junk_value(), st.sampled_from(["h100", "a100", "mi300x", "tpu-v5p", 16, 4,
                                                                       [], [{"kind": "nvswitch"}], 10 ** 7])))
                    data[key] = v
                    mutated[key] = v
    text = yaml.safe_dump(data)
    if draw(st.integers(0, 14)) == 0:
        text = text[: draw(st.integers(0, len(text)))] + draw(st.sampled_from(["", ":", "- [", "\t", "{"]))
        mutated = {}
    cmd = draw(st.sampled_from(["collective", "collective", "train"]))
    return text, cmd, mutated


@surface("cluster_file", cluster_documents(), 100,
         "--cluster FILE: cluster YAML with mutated fields and tiers; simulate collective / train on it")
def check_cluster_file(example) -> str:
    from hwmodels.clusters import load_cluster
    text, cmd, mutated = example
    d = scratch()
    try:
        path = d / "cluster.yaml"
        path.write_text(text)
        try:
            cluster = load_cluster(str(path))
        except InputError as e:
            check_input_error(e)
            assert str(path) in str(e), f"message does not name the file: {e}"
            if mutated:
                low = str(e).lower()
                if not (names_one_of(str(e), mutated) or "syntax" in low or "mapping" in low
                        or "required" in low or "tier" in low):
                    UNNAMED.append((["--cluster", json.dumps(mutated, default=str)], str(e)))
            return "error"
        assert cluster.num_devices == math.prod(t.size for t in cluster.tiers)
        if cmd == "collective":
            argv = ["simulate", "collective", "--cluster", str(path), "--op", "all_reduce", "--size", "1MiB",
                    "--json"]
        else:
            argv = ["simulate", "train", "--model", TINY, "--cluster", str(path), "--plan", "tp=1",
                    "--seq-len", "128", "--global-batch", "64", "--json"]
        return check_cli(argv)
    finally:
        cleanup(d)


# ---- 5. device catalogs -------------------------------------------------------------------------------

_RAW_DEVICES = _raw_presets("hwmodels/data/devices.yaml", "devices")
_DEVICE_FIELDS = ["vendor", "kind", "aliases", "peak_flops", "hbm_bytes", "hbm_bytes_per_s", "scale_up",
                  "scale_up_bytes_per_s", "power_w", "price_per_hour", "kernel_profile", "efficiency_from",
                  "sources", "unknown", "bogus"]


@st.composite
def device_documents(draw):
    names = draw(st.lists(st.sampled_from(sorted(_RAW_DEVICES)), min_size=1, max_size=3, unique=True))
    devices = {}
    for n in names:  # keep efficiency_from targets so that the base document is valid
        devices[n] = copy.deepcopy(_RAW_DEVICES[n])
        src = devices[n].get("efficiency_from")
        if src and src not in devices:
            devices[src] = copy.deepcopy(_RAW_DEVICES[src])
    for e in devices.values():
        e.pop("sources", None)
    mutated = {}
    doc: object = {"devices": devices}
    if draw(st.integers(0, 24)) == 0:
        doc = draw(st.sampled_from([None, [], {"devices": []}, {"devices": None}, {"device": devices}, "x"]))
    else:
        for _ in range(draw(st.integers(0, 3))):
            n = draw(st.sampled_from(sorted(devices)))
            e = devices[n]
            key = draw(st.sampled_from(_DEVICE_FIELDS + ["peak_flops.bf16", "peak_flops.fp99", "rename", "alias-dup"]))
            if key == "rename":
                devices[draw(junk_text())] = devices.pop(n)
                continue
            if key == "alias-dup":
                old = e.get("aliases")  # an earlier mutation may have made it a junk scalar
                e["aliases"] = (list(old) if isinstance(old, list) else []) + [draw(st.sampled_from(sorted(devices)))]
                mutated["aliases"] = e["aliases"]
                continue
            if key.startswith("peak_flops."):
                if isinstance(e.get("peak_flops"), dict):
                    v = draw(junk_value())
                    e["peak_flops"][key.split(".")[1]] = v
                    mutated[key.split(".")[1]] = v
                continue
            if draw(st.integers(0, 3)) == 0:
                e.pop(key, None)
                mutated[key] = ""
            else:
                v = draw(st.one_of(junk_value(), st.sampled_from(["gpu", "npu", "h100_sxm", "a100-sxm-80g", "nope",
                                                                   ["x"], [1], {"bf16": 1e15}])))
                e[key] = v
                mutated[key] = v
    text = yaml.safe_dump(doc)
    if draw(st.integers(0, 14)) == 0:
        text = text[: draw(st.integers(0, len(text)))] + draw(st.sampled_from(["", ":", "- [", "\t", "{"]))
    return text, mutated


@surface("devices_file", device_documents(), 150, "device catalogs: hwmodels.devices.load_devices_file")
def check_devices_file(example) -> str:
    from hwmodels.devices import load_devices_file
    text, mutated = example
    d = scratch()
    try:
        path = d / "devices.yaml"
        path.write_text(text)
        try:
            devices = load_devices_file(path)
        except InputError as e:
            check_input_error(e)
            return "error"
        for dev in devices.values():
            assert all(v > 0 and math.isfinite(v) for v in dev.peak_flops.values())
        return "ok"
    finally:
        cleanup(d)


# ---- 6. serving trace files -------------------------------------------------------------------------

@st.composite
def trace_documents(draw):
    fmt = draw(st.sampled_from(["azure", "burstgpt", "mooncake"]))
    n = draw(st.integers(0, 8))
    t0 = draw(st.floats(0, 1e6, allow_nan=False)) if draw(st.integers(0, 9)) else draw(st.floats())
    rows = []
    t = t0
    for _ in range(n):
        roll = draw(st.integers(0, 29))
        t += draw(st.sampled_from([0.0, 0.01, 0.5, 3.0])) if roll > 1 else -1.0 if roll == 1 else draw(st.floats())
        rows.append([t, draw(st.one_of(st.integers(1, 5000), st.integers(1, 5000),
                                       st.sampled_from([0, -1, 10 ** 9, 2 ** 64]))),
                     draw(st.one_of(st.integers(1, 500), st.integers(1, 500), st.sampled_from([0, -3, 10 ** 8])))])
    cells = []
    for r in rows:  # row-level corruption: a cell replaced by junk, or a short row
        r = list(r)
        if draw(st.integers(0, 24)) == 0:
            r[draw(st.integers(0, 2))] = draw(junk_text())
        if draw(st.integers(0, 39)) == 0:
            r = r[: draw(st.integers(0, 2))]
        cells.append(r)
    if fmt == "mooncake":
        lines = []
        for r in cells:
            d = {}
            for k, v in zip(("timestamp", "input_length", "output_length"), r):
                d[k] = v * 1000 if k == "timestamp" and isinstance(v, float) else v
            if draw(st.integers(0, 3)) == 0:
                d["hash_ids"] = draw(st.one_of(st.lists(st.integers(0, 50), max_size=6), junk_value()))
            lines.append(json.dumps(d, default=str) if draw(st.integers(0, 39)) else draw(junk_text()))
        return "\n".join(lines), ".jsonl"
    header = ("TIMESTAMP,ContextTokens,GeneratedTokens" if fmt == "azure"
              else "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type")
    if draw(st.integers(0, 29)) == 0:
        header = draw(st.sampled_from(["", "a,b,c", "TIMESTAMP,ContextTokens", "Timestamp,Request tokens"]))
    out = [header]
    for r in cells:
        if fmt == "burstgpt" and len(r) == 3:
            r = [r[0], "ChatGPT", r[1], r[2], 0, "Conversation log"]
        out.append(",".join(str(x) for x in r))
    return "\n".join(out), ".csv"


@surface("trace_file", trace_documents(), 150,
         "serving traces (Azure/BurstGPT CSV, Mooncake JSONL): bad rows, unsorted, empty, huge values")
def check_trace_file(example) -> str:
    from simulator.serving.workload import load_trace
    text, suffix = example
    d = scratch()
    try:
        path = d / f"trace{suffix}"
        path.write_text(text)
        try:
            rows, _fmt = load_trace(str(path))
        except InputError as e:
            check_input_error(e)
            return "error"
        assert rows and all(r[0] <= s[0] for r, s in zip(rows, rows[1:])), "trace rows not sorted"
        assert all(r[1] >= 1 and r[2] >= 1 for r in rows)
        return "ok"
    finally:
        cleanup(d)


# ---- 7. CLI: simulate train -------------------------------------------------------------------------

_POS = ["1", "2", "8", "16", "0", "-3", "x", "1e3", "99999999999999999999"]


@st.composite
def train_argv(draw):
    argv, mutated = draw(argv_for(
        ["simulate", "train"],
        {"--model": ([TINY, TINY_MOE, "gpt3-760m"], st.sampled_from(["gpt3-17b", "nope.json", "/tmp", "", TINY + "x"])),
         "--cluster": (["dgx-h100", "dgx-a100", "pcie-a100"], st.sampled_from(["dgx-h1000", "x.yaml", "", "DGX-H100"])),
         "--seq-len": (["128", "256", "512"], value_for(_POS)),
         "--global-batch": (["16", "32", "64"], value_for(_POS))},
        {"--nodes": value_for(["1", "2"], st.sampled_from(["0", "-1", "10000000", "1e3"])),
         "--plan": st.one_of(plan_strings().map(lambda e: e[1]), st.sampled_from(["tp=2", "tp=2,pp=2", "pp=2,vpp=2",
                                                                                  "tp=2,sp=on,recompute=full",
                                                                                  "pp=4,schedule=zb-h1", "ep=2"])),
         "--dtype": value_for(["bf16", "fp16", "fp8", "fp4"]),
         "--engine": value_for(["analytic", "des", "des"]),
         "--trace": st.sampled_from(["@scratch/trace.json", "/nonexistent-dir/t.json", "", "@scratch"]),
         "--stragglers": st.one_of(st.sampled_from(["0:1.5", "3:2,5:1.1", "random:0.25:1.5", "random:0:1",
                                                    "random:1:1", "random:x:y", "99:2", "0:0.5", "random:0.5",
                                                    "-1:2", "1:inf", "0:nan", "random:nan:2"]), junk_text()),
         "--seed": value_for(["0", "1", "42", "-7"]),
         "--run-steps": value_for(["100", "1000", "100000"], st.sampled_from(["10000000000000", "1e9"])),
         "--ckpt-interval": value_for(["1", "50", "500"]),
         "--ckpt-s": value_for(["0", "30", "1e6"]),
         "--restart-s": value_for(["0", "600", "1e-9"]),
         "--failure-rate": value_for(["0", "1e-5", "0.01", "1000", "1e9"]),
         "--attention": value_for(["flash", "unfused"]),
         "--grad-overlap": value_for(["on", "off"]),
         "--dropout": value_for(["on", "off"])},
        ["--json", "--full-ranks"]))
    if {"--trace", "--stragglers", "--full-ranks"} & set(argv) and draw(st.integers(0, 4)):
        argv += ["--engine", "des"]  # (argparse keeps the last --engine)
    return argv, mutated


def _materialise(argv: list[str], d: Path) -> list[str]:
    return [a.replace("@scratch", str(d)) for a in argv]


@surface("cli_train", train_argv(), 120, "simulate train: every flag (engine, DES, stragglers, goodput, trace)")
def check_cli_train(example) -> str:
    argv, mutated = example
    d = scratch()
    try:
        return check_cli(_materialise(argv, d), mutated)
    finally:
        cleanup(d)


# ---- 8. CLI: plan train ------------------------------------------------------------------------------

@st.composite
def plan_argv(draw):
    argv, mutated = draw(argv_for(
        ["plan", "train"],
        {"--model": ([TINY, TINY_MOE], st.sampled_from(["gpt3-17b", "", TINY + "x"])),
         "--cluster": (["dgx-h100", "dgx-a100", "dgx-h100:1,dgx-a100:1"],
                       st.sampled_from(["dgx-h100:0", "dgx-h100:x,dgx-a100:1", ":", "a:1,", "dgx-h100:1,nope:2"])),
         "--seq-len": (["128", "256"], value_for(_POS)),
         "--global-batch": (["16", "32"], value_for(_POS))},
        {"--nodes": value_for(["1", "2"]),
         "--top": value_for(["1", "3", "10"]),
         "--objective": value_for(["throughput", "cost", "time-to-train"]),
         "--tokens": st.one_of(with_unit(["", "k", "m", "b", "t", "g"]), value_for(["15T", "300B", "2e12"])),
         "--deadline": st.one_of(with_unit(["", "s", "m", "min", "h", "d", "w"]), value_for(["30d", "12h", "3600"])),
         "--budget": st.one_of(with_unit(["", "k", "m", "b"]), value_for(["2M", "50000"])),
         "--fix": st.one_of(plan_strings().map(lambda e: e[1].replace(",,", ",")),
                            st.sampled_from(["tp=2", "tp=2|4,pp=1", "schedule=1f1b|zb-h1", "tp=", "tp=2,tp=4",
                                             "bogus=1", "sp=on|off", "|", "tp=3"])),
         "--dtype": value_for(["bf16", "fp8"]),
         "--partition": value_for(["0", "0", "1", "-1"]),
         "--time-limit": st.one_of(with_unit(["", "s", "m"]), value_for(["0.5", "1", "2s"])),
         "--gap": value_for(["0", "0.01", "0.5", "1", "-0.1", "nan"]),
         "--replica-nodes": value_for(["1", "2"]),
         "--grad-overlap": value_for(["on", "off"])},
        ["--json", "--all-variants"]))
    if "--partition" not in argv:  # CBC runs are slow; most cases skip the ILP
        argv += ["--partition", draw(st.sampled_from(["0", "0", "0", "1"]))]
    # Known slow path (reported): device groups search every 2^a·3^c batch share up to the global
    # batch, ~0.25 s per share and group, so a global batch of 2e5 takes 40-80 s (bounded, not
    # hung). Device-group cases keep global batches below 4096.
    if _is_int_over(_flag(argv, "--global-batch"), 4096) and "," in str(_flag(argv, "--cluster")):
        argv[argv.index("--global-batch") + 1] = "32"
    return argv, mutated


def _is_int_over(v, limit: int) -> bool:
    try:
        return int(v) > limit
    except (TypeError, ValueError):
        return False


@surface("cli_plan", plan_argv(), 60, "plan train: objectives, --tokens/--deadline/--budget units, --fix, ILP limits")
def check_cli_plan(example) -> str:
    argv, mutated = example
    return check_cli(argv, mutated)


# ---- 9. CLI: simulate collective ------------------------------------------------------------------

@st.composite
def collective_argv(draw):
    from hwmodels.collectives import OPS
    argv, mutated = draw(argv_for(
        ["simulate", "collective"],
        {"--cluster": (["dgx-h100", "dgx-a100", "gb200-nvl72", "tpu-v5p", "frontier", "pcie-a100"],
                       st.sampled_from(["nope", "", "x.yml"])),
         "--op": (list(OPS), st.sampled_from(["allreduce", "", "ALL_REDUCE"])),
         "--size": (["256MiB", "1GB", "4096", "1.5GiB"],
                    st.one_of(with_unit(["", "b", "kb", "mb", "gb", "tb", "kib", "mib", "gib", "tib"]), junk_text()))},
        {"--nodes": value_for(["1", "2", "4", "16"], st.sampled_from(["0", "100000000", "-2"])),
         "--ranks": value_for(["2", "8", "16", "3", "1"]),
         "--stride": value_for(["1", "2", "8", "3"]),
         "--algo": value_for(["auto", "ring", "tree", "nvls", "nvls_tree", "hierarchical", "pairwise", "p2p"]),
         "--protocol": value_for(["auto", "simple", "ll", "ll128"]),
         "--placement": value_for(["packed", "scattered"])},
        ["--json", "--sweep"]))
    return argv, mutated


@surface("cli_collective", collective_argv(), 150, "simulate collective: --size units, ranks, stride, algorithms")
def check_cli_collective(example) -> str:
    argv, mutated = example
    return check_cli(argv, mutated)


# ---- 10. CLI: simulate serve -------------------------------------------------------------------------

_DIST = ["100", "uniform:10:200", "normal:100:20", "lognormal:100:50", "exp:50", "uniform:0:10", "normal:0:1",
         "exp:0", "poisson:3", "uniform:5", "10.5", "0", "-4", "1048577", "lognormal:1:1e308"]


@st.composite
def serve_argv(draw):
    load = draw(st.sampled_from(["--rate", "--rate", "--concurrency", "--trace"]))
    load_values = {"--rate": value_for(["5", "20", "10:2,40:1", "1e-3"], st.sampled_from(["0", "-1", "5:0", "5:1:2",
                                                                                        "inf", "1e-300"])),
                   "--concurrency": value_for(["1", "4"], st.sampled_from(["0", "-2", "1.5"])),
                   "--trace": st.just("@scratch/trace")}
    argv, mutated = draw(argv_for(
        ["simulate", "serve"],
        {"--model": ([TINY, TINY_MOE], st.sampled_from(["nope", ""])),
         "--cluster": (["dgx-h100", "dgx-a100"], st.sampled_from(["nope"])),
         load: ({"--rate": ["5", "20", "10:2,40:1"], "--concurrency": ["1", "4"],
                 "--trace": ["@scratch/trace"]}[load], load_values[load])},
        {"--plan": st.one_of(serving_plan_strings(), st.sampled_from(["tp=2,replicas=2", "prefill_tp=1,decode_tp=2",
                                                                       "max_batch=4,chunk=64", "tp=3"])),
         "--nodes": value_for(["1", "2"]),
         "--prompt-len": value_for(_DIST),
         "--output-len": value_for(_DIST),
         "--requests": value_for(["1", "10", "40"]),
         "--warmup": value_for(["0", "5", "100"]),
         "--arrival": value_for(["poisson", "gamma:2", "gamma:0", "gamma:x", "gamma:inf"]),
         "--think-time": st.one_of(with_unit(["", "s", "ms", "us", "min"]), value_for(["0", "50ms"])),
         "--shared-prefix": value_for(["2:64", "0:1", "1:x", "3"]),
         "--dtype": value_for(["bf16", "fp8"]),
         "--kv-dtype": value_for(["bf16", "fp8"]),
         "--engine": value_for(["vllm", "sglang", "trtllm"]),
         "--router": value_for(["round_robin", "least_outstanding", "kv_aware"]),
         "--kv-blocks": value_for(["1", "16", "1000"]),
         "--gpu-memory-utilization": value_for(["0.9", "0.01", "1", "1.5", "0"]),
         "--slo-ttft": st.one_of(with_unit(["", "s", "ms", "us", "min"]), value_for(["2s", "500ms"])),
         "--slo-tpot": st.one_of(with_unit(["", "s", "ms", "us", "min"]), value_for(["50ms"])),
         "--seed": value_for(["0", "1", "-3"]),
         "--chrome-trace": st.sampled_from(["@scratch/serve-trace.json", "/nonexistent-dir/t.json"])},
        ["--json", "--no-prefix-caching"]))
    if "--trace" not in argv and draw(st.integers(0, 9)):
        argv += ["--prompt-len", draw(st.sampled_from(_DIST[:5])), "--output-len", draw(st.sampled_from(_DIST[:5]))]
    if "--requests" not in argv:
        argv += ["--requests", "20"]
    # The serving DES costs ~40 µs per request: 850k requests take 37 s (bounded, reported: no
    # upper limit on --requests). Cases keep requests below 5000.
    if _is_int_over(_flag(argv, "--requests"), 5000):
        argv[argv.index("--requests") + 1] = "40"
    trace = draw(trace_documents()) if load == "--trace" else None
    return argv, mutated, trace


def _flag(argv, name):
    return argv[argv.index(name) + 1] if name in argv[:-1] else None


@surface("cli_serve", serve_argv(), 50, "simulate serve: load, length distributions, durations, traces")
def check_cli_serve(example) -> str:
    argv, mutated, trace = example
    d = scratch()
    try:
        argv = list(argv)
        if trace is not None:
            text, suffix = trace
            (d / f"trace{suffix}").write_text(text)
            argv = [a.replace("@scratch/trace", str(d / f"trace{suffix}")) for a in argv]
        return check_cli(_materialise(argv, d), mutated)
    finally:
        cleanup(d)


@st.composite
def plan_serve_argv(draw):
    argv, mutated = draw(argv_for(
        ["plan", "serve"],
        # a real 8B model: a toy one serves 10^5 req/s per GPU, whose capacity probes are long
        {"--model": (["llama3.1-8b"], st.sampled_from(["nope", ""])),
         "--devices": (["h100-sxm:2", "h100-sxm:1,a100-sxm-80g:2", "a100-sxm-80g:2:1.5"],
                       st.sampled_from(["h100-sxm", "h100-sxm:0", "h100-sxm:x", "nope:2", "l40s:2",
                                        "h100-sxm:2:-1", "h100-sxm:1,h100-sxm:1", "h100-sxm:2:inf", ","])),
         "--rate": (["5", "50"], st.sampled_from(["0", "-1", "inf", "nan", "x", "1e400"])),
         "--prompt-len": (["256", "uniform:64:512"], st.sampled_from(_DIST)),
         "--output-len": (["32", "exp:16"], st.sampled_from(_DIST)),
         "--slo-ttft": (["2s", "500ms"], with_unit(["", "s", "ms", "us", "min"])),
         "--slo-tpot": (["50ms", "0.1s"], with_unit(["", "s", "ms", "us", "min"]))},
        {"--disagg": value_for(["auto", "on", "off"], st.sampled_from(["maybe", ""])),
         "--size-classes": value_for(["1", "2", "3"], st.sampled_from(["0", "9", "x", "-1"])),
         "--slo-percentile": value_for(["50", "90", "99"], st.sampled_from(["95", "0", "x"])),
         "--time-limit": value_for(["1", "5"], st.sampled_from(["0", "-1", "inf", "x"])),
         "--engine": value_for(["vllm", "sglang", "trtllm"]),
         "--dtype": value_for(["bf16", "fp8"]),
         "--kv-dtype": value_for(["bf16", "fp8"]),
         "--seed": value_for(["0", "7", "-3"]),
         "--requests": value_for(["20", "40"], st.sampled_from(["0", "-5", "x"]))},
        ["--json", "--no-single-type", "--no-pareto"]))
    if "--requests" not in argv:
        argv += ["--requests", "30"]
    if _is_int_over(_flag(argv, "--requests"), 60):  # each probe simulates this many requests
        argv[argv.index("--requests") + 1] = "30"
    return argv, mutated


@surface("cli_plan_serve", plan_serve_argv(), 12,
         "plan serve: device pools and prices, rate, SLO durations, --disagg, --size-classes")
def check_cli_plan_serve(example) -> str:
    argv, mutated = example
    return check_cli(list(argv), mutated)


# ---- 11. CLI: validate compare (measured profile and run folders) -----------------------------------

_PROFILE = ROOT / "validation" / "data" / "profiles" / "cpu-epyc-2c"
_RUNS = ROOT / "validation" / "data" / "runs" / "cpu-epyc-2c"


@st.composite
def compare_folders(draw):
    """Edits of the shipped profile and run folders: (which folder, file, edit, value)."""
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        folder = draw(st.sampled_from(["profile", "runs"]))
        files = sorted(p.name for p in (_PROFILE if folder == "profile" else _RUNS).iterdir())
        name = draw(st.sampled_from(files))
        kind = draw(st.sampled_from(["delete", "empty", "truncate", "cell", "cell", "json-key", "json-key",
                                     "column", "garbage"]))
        edits.append((folder, name, kind, draw(junk_value()), draw(st.integers(0, 10 ** 6)),
                      draw(st.sampled_from(["schema", "config", "device", "threads", "dtypes", "dtype", "model",
                                            "device_name", "seq_len", "memory_bytes"]))))
    return edits


def _edit(path: Path, kind: str, value, pick: int, key: str) -> None:
    try:
        _edit_file(path, kind, value, pick, key)
    except UnicodeDecodeError:
        pass  # an earlier edit left garbage bytes: leave them


def _edit_file(path: Path, kind: str, value, pick: int, key: str) -> None:
    import csv
    if kind == "delete":
        path.unlink()
    elif kind == "empty":
        path.write_text("")
    elif kind == "truncate":
        t = path.read_bytes()
        path.write_bytes(t[: pick % max(1, len(t))])
    elif kind == "garbage":
        path.write_bytes(b"\xff\xfe\x00garbage,\n\x00" * (1 + pick % 3))
    elif path.suffix == ".csv" and kind in ("cell", "column"):
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        if len(rows) < 2:
            return
        r, c = 1 + pick % (len(rows) - 1), pick % max(1, len(rows[0]))
        if kind == "cell":
            if c >= len(rows[r]):  # a truncated row
                return
            rows[r][c] = "" if value is None else str(value)
        else:
            rows = [row[:c] + row[c + 1:] for row in rows]
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows(rows)
    elif path.suffix == ".json":
        try:
            doc = json.loads(path.read_text())
        except ValueError:
            return
        if isinstance(doc, dict):
            target = doc
            if key in ("seq_len", "model", "dtype") and isinstance(doc.get("config"), dict):
                target = doc["config"]
            if pick % 3 == 0:
                target.pop(key, None)
            else:
                target[key] = value
            path.write_text(json.dumps(doc, default=str))


@surface("validate_compare", compare_folders(), 40,
         "validate compare: edited profile and run folders (deleted/empty/truncated files, bad cells, "
         "missing columns, wrong-typed meta keys)")
def check_validate_compare(edits) -> str:
    d = scratch()
    try:
        prof, runs = d / "profile", d / "runs"
        shutil.copytree(_PROFILE, prof)
        shutil.copytree(_RUNS, runs)
        for folder, name, kind, value, pick, key in edits:
            path = (prof if folder == "profile" else runs) / name
            if path.exists():
                _edit(path, kind, value, pick, key)
        return check_cli(["validate", "compare", "--profile", str(prof), "--runs", str(runs), "--json"])
    finally:
        cleanup(d)


# ---- 12. units and small parsers (function level) ---------------------------------------------------

@st.composite
def unit_inputs(draw):
    kind = draw(st.sampled_from(["size", "tokens", "duration", "budget", "serve-duration", "memory-limit",
                                 "stragglers", "fix", "length", "rate"]))
    units = {"size": ["", "b", "kb", "mb", "gb", "tb", "kib", "mib", "gib", "tib"],
             "tokens": ["", "k", "m", "b", "t"], "budget": ["", "k", "m", "b"],
             "duration": ["", "s", "m", "min", "h", "d", "w"], "serve-duration": ["", "s", "ms", "us", "min"],
             "memory-limit": ["", "b", "kib", "mib", "gib", "kb", "gb"]}
    if kind in units:
        text = draw(st.one_of(with_unit(units[kind]), junk_text()))
    elif kind == "stragglers":
        text = draw(st.one_of(st.sampled_from(["0:1.5", "random:0.1:2", "random:1:1", "3:2,3:3"]), junk_text(),
                              st.builds(lambda a, b: f"{a}:{b}", junk_text(), junk_text()),
                              st.builds(lambda a, b: f"random:{a}:{b}", junk_text(), junk_text())))
    elif kind == "fix":
        text = draw(st.one_of(plan_strings().map(lambda e: e[1]), junk_text(),
                              st.builds(lambda k, v: f"{k}={v}", st.sampled_from(_PLAN_KEYS), junk_text())))
    elif kind == "length":
        text = draw(st.one_of(st.sampled_from(_DIST), junk_text(),
                              st.builds(lambda k, a, b: f"{k}:{a}:{b}", st.sampled_from(["uniform", "normal",
                                                                                          "lognormal", "exp"]),
                                        small_number_text(), small_number_text())))
    else:
        text = draw(st.one_of(st.sampled_from(["5", "10:2,40:1", "0", "1e400", "5:inf"]), junk_text(),
                              st.builds(lambda a, b: f"{a}:{b}", small_number_text(), small_number_text())))
    return kind, text, draw(st.sampled_from([1, 8, 64]))


@surface("units", unit_inputs(), 400,
         "flag units and small parsers: sizes (256MiB), token counts (15T), durations (2s, 50ms, 30d), "
         "budgets, memory limits, stragglers, --fix, length distributions, rate schedules")
def check_units(example) -> str:
    import argparse
    import random

    import numpy as np

    from ui.cli import flags
    kind, text, n = example
    try:
        if kind == "size":
            v = flags.parse_size(text)
            assert isinstance(v, int) and v >= 1
        elif kind in ("tokens", "duration", "budget"):
            conv = {"tokens": flags.count, "budget": flags.money,
                    "duration": lambda name: flags.duration(name, zero=False)}[kind]("--" + kind)
            v = conv(text)
            assert v > 0 and math.isfinite(v), f"{kind} {text!r} -> {v!r}"
        elif kind == "serve-duration":
            v = flags.parse_duration(text)
            assert v >= 0 and math.isfinite(v)
        elif kind == "memory-limit":
            v = flags.size("--memory-limit")(text)
            assert v > 0 and math.isfinite(v), f"memory limit {text!r} -> {v!r}"
        elif kind == "stragglers":
            from simulator.des import parse_stragglers
            v = parse_stragglers(text, n, seed=3)
            assert v == parse_stragglers(text, n, seed=3), "same seed, different stragglers"
            assert all(0 <= r < n and f >= 1 and math.isfinite(f) for r, f in v.items()), v
        elif kind == "fix":
            from planner.search import parse_fix
            v = parse_fix(text)
            assert all(isinstance(x, tuple) and x for x in v.values())
        elif kind == "length":
            from simulator.serving.workload import MAX_LEN, LengthDist
            dist = LengthDist.parse(text)
            x = dist.sample(np.random.default_rng(random.randrange(2 ** 32)), 64)
            assert ((x >= 1) & (x <= MAX_LEN)).all()
        else:
            from simulator.serving.workload import RateSchedule
            r = RateSchedule.parse(text)
            assert all(rate > 0 and math.isfinite(rate) and dur > 0 for rate, dur in r.segments)
    except (InputError, argparse.ArgumentTypeError) as e:
        assert str(e).strip()
        return "error"
    return "ok"
