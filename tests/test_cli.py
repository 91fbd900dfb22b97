"""The CLI contract (docs/design.md §4): JSON keys, readable tables, one-line errors with exit 2."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ui.cli import main

TRAIN = ["simulate", "train", "--model", "gpt3-175b", "--cluster", "dgx-a100", "--nodes", "128",
         "--plan", "tp=8,pp=8,mb=1,schedule=interleaved,vpp=2,recompute=selective,sp=on",
         "--seq-len", "2048", "--global-batch", "1536"]


def run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_simulate_train_json_has_the_design_keys(capsys):
    code, out, err = run(capsys, TRAIN + ["--json"])
    assert code == 0 and err == ""
    d = json.loads(out)
    for key in ("plan", "step_time_s", "tokens_per_s", "tflops_per_device", "mfu", "fits", "memory",
                "breakdown_s"):
        assert key in d
    for key in ("peak_bytes", "weights_bytes", "gradients_bytes", "optimizer_bytes",
                "activations_bytes", "comm_buffers_bytes", "reserve_bytes"):
        assert key in d["memory"]
    for key in ("compute", "tp_comm", "cp_comm", "ep_comm", "pp_bubble", "pp_comm", "dp_comm", "optimizer"):
        assert key in d["breakdown_s"]
    assert d["plan"]["dp"] == 16 and d["fits"] is True
    # GPT-3 175B on 1024 A100 with this plan: Megatron-LM reports 138-163 TFLOP/s per GPU for
    # comparable runs (2021, Table 1) and MFU in the 40-60% range (Korthikanti 2022, Table 5).
    assert 130 < d["tflops_per_device"] < 230 and 0.4 < d["mfu"] < 0.7


def test_simulate_train_table_is_readable(capsys):
    code, out, _ = run(capsys, TRAIN)
    assert code == 0
    for label in ("step time", "tokens/s", "TFLOP/s per device", "MFU", "fits in memory",
                  "optimizer states", "activations", "pipeline bubble", "TP comm", "DP/ZeRO comm"):
        assert label in out


@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_dtype_flag(capsys, dtype):
    code, out, _ = run(capsys, ["simulate", "train", "--model", "llama3-8b", "--cluster", "dgx-h100",
                                "--plan", "tp=2", "--seq-len", "4096", "--global-batch", "64",
                                "--dtype", dtype, "--json"])
    assert code == 0 and json.loads(out)["dtype"] == dtype


def test_fp8_is_faster_than_bf16_on_h100(capsys):
    base = ["simulate", "train", "--model", "llama3-70b", "--cluster", "dgx-h100", "--nodes", "8",
            "--plan", "tp=8,pp=1,recompute=full", "--seq-len", "4096", "--global-batch", "64", "--json"]
    _, bf16, _ = run(capsys, base)
    _, fp8, _ = run(capsys, base + ["--dtype", "fp8"])
    assert json.loads(fp8)["step_time_s"] < json.loads(bf16)["step_time_s"]


def test_model_from_config_json(capsys, tmp_path):
    cfg = {"num_hidden_layers": 4, "hidden_size": 512, "num_attention_heads": 8, "num_key_value_heads": 8,
           "intermediate_size": 1376, "vocab_size": 32000, "hidden_act": "silu"}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    code, out, _ = run(capsys, ["simulate", "train", "--model", str(path), "--cluster", "dgx-h100",
                                "--plan", "tp=1", "--seq-len", "1024", "--global-batch", "8", "--json"])
    assert code == 0 and json.loads(out)["fits"]


@pytest.mark.parametrize("what", ["devices", "clusters", "models"])
def test_catalog(capsys, what):
    code, out, _ = run(capsys, ["catalog", what, "--json"])
    rows = json.loads(out)
    assert code == 0 and len(rows) >= 10
    code, out, _ = run(capsys, ["catalog", what])
    assert code == 0 and len(out.splitlines()) >= 10


def _bad(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{ not json")
    return [
        (["--model", "gpt3-17b"], "did you mean"),
        (["--model", str(broken)], "is not valid JSON"),
        (["--model", str(tmp_path / "missing.json")], "does not exist"),
        (["--cluster", "dgx-a1000"], "unknown cluster"),
        (["--plan", "tp=3"], "does not divide"),
        (["--plan", "tp=8,pp=7"], "does not divide"),
        (["--seq-len", "-5"], "seq-len=-5 must be a positive integer"),
        (["--global-batch", "0"], "global-batch=0"),
        (["--nodes", "x"], "nodes='x'"),
        (["--dtype", "fp3"], "invalid choice"),
        (["--plan", "tp=8,pp=8,mb=7"], "multiple of dp·mb"),
        (["--plan", "tp=8,zero=4"], "zero=4 must be 0..3"),
    ]


def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path):
    base = dict(zip(TRAIN[2::2], TRAIN[3::2]))
    for override, fragment in _bad(tmp_path):
        args = dict(base)
        args.update(dict(zip(override[::2], override[1::2])))
        argv = ["simulate", "train"] + [x for kv in args.items() for x in kv]
        code, out, err = run(capsys, argv)
        assert code == 2, (override, err)
        assert out == "" and err.count("\n") == 1 and fragment in err, (override, err)
        assert err.startswith("clusterplan: error: ")


def test_device_without_the_dtype(capsys):
    code, _, err = run(capsys, ["simulate", "train", "--model", "llama2-7b", "--cluster", "dgx-a100",
                                "--plan", "tp=8", "--seq-len", "2048", "--global-batch", "8", "--dtype", "fp8"])
    assert code == 2 and "fp8" in err and err.count("\n") == 1


def test_missing_required_flag_and_unknown_command(capsys):
    code, _, err = run(capsys, ["simulate", "train", "--model", "gpt3-175b"])
    assert code == 2 and err.count("\n") == 1 and "required" in err
    code, _, err = run(capsys, ["frobnicate"])
    assert code == 2 and err.count("\n") == 1


def test_console_script_exit_code():
    """The installed entry point: a real process, a real exit code, no traceback."""
    r = subprocess.run([sys.executable, "-m", "ui.cli", "simulate", "train", "--model", "nope",
                        "--cluster", "dgx-a100", "--seq-len", "1", "--global-batch", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_a_command_module_that_fails_to_import_is_an_error(capsys, monkeypatch, tmp_path):
    """A broken command module stops the command line with one line naming the module and the
    import error (exit 1, no traceback), never a silently missing command."""
    import ui.cli as cli
    (tmp_path / "broken_cmd.py").write_text("import no_such_package_for_clusterplan\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "COMMANDS", cli.COMMANDS + ("broken_cmd",))
    for argv in (["--help"], TRAIN):
        code, out, err = run(capsys, argv)
        assert code == 1 and out == "" and err.count("\n") == 1, err
        assert err.startswith("clusterplan: error: command module 'broken_cmd' failed to import")
        assert "No module named 'no_such_package_for_clusterplan'" in err


def test_flag_errors_name_the_flag_the_value_and_what_is_valid(capsys):
    cases = [
        (["simulate", "collective", "--cluster", "dgx-a100", "--op", "all_reduce", "--size", "1.5XB"],
         "--size='1.5XB': unknown unit 'XB'; valid units: B, KB"),
        (["ui", "--port", "0"], "--port=0 must be an integer 1..65535"),
        (TRAIN + ["--tp-overlap", "maybe"], "--tp-overlap='maybe' must be on or off"),
        (TRAIN + ["--ckpt-s", "nan"], "--ckpt-s='nan' must be a finite number >= 0"),
        (["plan", "train", "--model", "llama3-8b", "--cluster", "dgx-h100", "--seq-len", "8", "--global-batch",
          "8", "--deadline", "0s"], "--deadline='0s' must be a positive duration"),
        (["plan", "train", "--model", "llama3-8b", "--cluster", "dgx-h100", "--seq-len", "8", "--global-batch",
          "8", "--budget", "lots"], "--budget='lots' is not an amount in USD"),
    ]
    for argv, fragment in cases:
        code, out, err = run(capsys, argv)
        assert code == 2 and out == "" and err.count("\n") == 1 and fragment in err, (argv, err)


def test_flag_converters():
    from ui.cli import flags
    assert flags.parse_duration("2s") == 2 and flags.parse_duration("50ms") == pytest.approx(0.05)
    assert flags.parse_duration("2min") == 120 and flags.duration("--deadline", zero=False)("30d") == 30 * 86400
    assert flags.parse_size("256MiB") == 256 * 2 ** 20 and flags.parse_size("1.5 kib") == 1536
    assert flags.count("--tokens")("15T") == 15e12 and flags.money("--budget")("$1.5M") == 1.5e6
    assert flags.integers("--ranks")("1,4,16") == (1, 4, 16) and flags.fraction("--gap", zero=True)("0") == 0
    assert flags.on_off("--dropout")("OFF") is False and flags.positive("--rate")("0.5") == 0.5
    for conv, text in [(flags.integer("--n", 1, 8), "9"), (flags.positive("--rate"), "inf"),
                       (flags.fraction("--f"), "0"), (flags.parse_duration, "-1s"), (flags.parse_size, "0.4")]:
        with pytest.raises(flags.Error):
            conv(text)


def test_simulate_train_uses_the_overlap_options(capsys):
    """--tp-overlap and --p2p-overlap reach the job (ui.jobs builds it, as the dashboard does)."""
    base = TRAIN + ["--json"]  # sp=on: TP overlap needs sequence parallelism
    _, off, _ = run(capsys, base)
    _, on, _ = run(capsys, base + ["--tp-overlap", "on", "--p2p-overlap", "on"])
    off, on = json.loads(off), json.loads(on)
    assert on["breakdown_s"]["tp_comm"] < off["breakdown_s"]["tp_comm"]
    assert on["step_time_s"] < off["step_time_s"]


# ---- issue #20 §2: the faults a new user hits ---------------------------------------------------

SERVE = ["simulate", "serve", "--model", "llama3-8b", "--cluster", "dgx-h100", "--plan", "tp=1",
         "--prompt-len", "2048", "--output-len", "512", "--requests", "300"]
PLAN_SERVE = ["plan", "serve", "--model", "llama3-8b", "--devices", "h100-sxm:8", "--rate", "2",
              "--prompt-len", "512", "--output-len", "64"]


@pytest.mark.parametrize("argv, fragment", [
    (SERVE + ["--rate", "2", "--slo-tpot", "50"], "--slo-tpot='50' needs a unit: 50ms or 50s"),
    (SERVE + ["--rate", "2", "--slo-ttft", "2"], "--slo-ttft='2' needs a unit: 2ms or 2s"),
    (PLAN_SERVE + ["--slo-ttft", "2s", "--slo-tpot", "50"], "--slo-tpot='50' needs a unit: 50ms or 50s"),
    (PLAN_SERVE + ["--slo-ttft", "0ms", "--slo-tpot", "50ms"], "--slo-ttft='0ms' must be a positive duration"),
])
def test_slo_needs_a_unit(capsys, argv, fragment):
    """A bare `--slo-tpot 50` once meant 50 s (SLO attainment 100% for a 50 ms intent)."""
    code, out, err = run(capsys, argv)
    assert code == 2 and out == "" and err.count("\n") == 1 and fragment in err, err
    from ui.cli import flags
    assert flags.slo("--slo-tpot")("50ms") == pytest.approx(0.05) and flags.slo("--slo-ttft")("2s") == 2


def test_no_slo_reports_no_attainment(capsys):
    code, out, _ = run(capsys, SERVE + ["--rate", "2", "--requests", "40"])
    assert code == 0 and "SLO attainment" not in out and "no SLO given" in out
    _, out, _ = run(capsys, SERVE + ["--rate", "2", "--requests", "40", "--json"])
    d = json.loads(out)
    assert d["slo_attainment"] is None and d["goodput_requests_per_s"] is None
    _, out, _ = run(capsys, SERVE + ["--rate", "2", "--requests", "40", "--slo-tpot", "1ms", "--json"])
    d = json.loads(out)  # an SLO no request meets: attainment 0, not 100%
    assert d["slo_attainment"] == 0 and d["goodput_requests_per_s"] == 0


def test_overload_is_reported_in_text_and_json(capsys):
    """20 req/s of 2048+512-token requests on one H100 serving llama3-8b: the queue grows through
    the run, and the slope of TTFT against arrival time is λ/μ − 1 (fluid approximation)."""
    code, out, _ = run(capsys, SERVE + ["--rate", "20", "--json"])
    o = json.loads(out)["overload"]
    assert code == 0 and o["overloaded"] is True
    assert o["offered_requests_per_s"] > 2 * o["served_requests_per_s"]
    assert o["ttft_growth_s_per_s"] == pytest.approx(o["offered_requests_per_s"] / o["served_requests_per_s"] - 1,
                                                     rel=0.35)
    _, text, _ = run(capsys, SERVE + ["--rate", "20"])
    warning = [line for line in text.splitlines() if "WARNING" in line]
    assert len(warning) == 1 and "exceeds the fleet's capacity" in warning[0] and "req/s" in warning[0]
    # a stable load: TTFT does not grow, no warning
    _, out, _ = run(capsys, SERVE + ["--rate", "4", "--json"])
    o = json.loads(out)["overload"]
    assert o["overloaded"] is False and abs(o["ttft_growth_s_per_s"]) < 0.01
    _, text, _ = run(capsys, SERVE + ["--rate", "4"])
    assert "WARNING" not in text


def test_overload_is_off_for_closed_loops():
    from simulator.serving.workload import LengthDist, ServingWorkload
    from ui.cli.serve import overload
    wl = ServingWorkload(concurrency=4, prompt_len=LengthDist.parse("8"), output_len=LengthDist.parse("8"))
    assert overload([], wl) is None


def test_prompt_beyond_the_context_is_refused(capsys):
    code, out, err = run(capsys, SERVE + ["--rate", "1", "--prompt-len", "200000"])
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "exceeds llama3-8b's context of 8,192 tokens" in err and "--prompt-len" in err


def test_latency_columns_fit_their_values(capsys):
    """TTFT of tens of seconds (in ms) used to run into the next column."""
    from ui.cli.serve import _latency_table
    stats = {"mean": 123456.7, "p50": 9876543.2, "p90": 0.001, "p99": None}
    lines = _latency_table({k: stats for k in ("ttft_s", "tpot_s", "itl_s", "e2e_s", "queue_s")})
    for line in lines:
        assert len(line.split()) == (6 if line.strip().startswith("latency") else 5), line
    assert len({len(line) for line in lines}) == 1  # right-aligned columns: equal widths
    assert "9,876,543,200.0" in lines[1] and lines[1].endswith(" -")


def test_one_flag_name_per_meaning(capsys, tmp_path):
    """--chrome-trace writes a trace in every command; --trace reads one (simulate serve). The old
    --trace of simulate train still writes, for one release, with a note on stderr."""
    base = ["simulate", "train", "--model", "llama2-13b", "--cluster", "dgx-a100", "--plan", "tp=8",
            "--seq-len", "4096", "--global-batch", "8", "--engine", "des"]
    new, old = tmp_path / "new.json", tmp_path / "old.json"
    code, out, err = run(capsys, base + ["--chrome-trace", str(new)])
    assert code == 0 and err == "" and f"Chrome trace written to {new}" in out and new.exists()
    code, out, err = run(capsys, base + ["--trace", str(old), "--json"])
    assert code == 0 and json.loads(out)["chrome_trace"] == str(old) and old.exists()
    assert err == ("clusterplan: note: --trace is deprecated and will be removed in the next release; use "
                   "--chrome-trace (--trace names a workload trace to read, as in simulate serve)\n")
    assert json.loads(old.read_text())["traceEvents"]
    # an error stays one line, without the note
    code, _, err = run(capsys, base + ["--trace", str(tmp_path / "no" / "x.json")])
    assert code == 2 and err.count("\n") == 1
    serve_trace = tmp_path / "serve.json"
    code, out, _ = run(capsys, SERVE + ["--rate", "2", "--requests", "20", "--chrome-trace", str(serve_trace)])
    assert code == 0 and f"Chrome trace written to {serve_trace}" in out and serve_trace.exists()


def test_version_and_bare_command(capsys):
    from importlib.metadata import version
    code, out, err = run(capsys, ["--version"])
    assert code == 0 and err == ""
    assert out == f"clusterplan {version('clusterplan')} (kernel tables: aiconfigurator-core 0.12.0)\n"
    code, out, err = run(capsys, [])
    assert code == 0 and err == "" and out.startswith("usage: clusterplan")
    for command in ("catalog", "simulate", "plan", "validate", "ui"):
        assert command in out


def _write_config(folder, **cfg):
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


MIXTRAL_LIKE = {"model_type": "mixtral", "num_hidden_layers": 4, "hidden_size": 512, "num_attention_heads": 8,
                "num_key_value_heads": 2, "intermediate_size": 1024, "vocab_size": 32000,
                "num_local_experts": 8, "num_experts_per_tok": 2, "max_position_embeddings": 4096}


def test_catalog_models_shows_a_parsed_model(capsys, tmp_path):
    from simulator.models import load_model
    folder = _write_config(tmp_path / "mixtral-like", **MIXTRAL_LIKE)
    code, out, _ = run(capsys, ["catalog", "models", "--model", str(folder)])
    assert code == 0
    fields = {line[:18].strip(): line[18:].strip() for line in out.splitlines()}
    assert fields["layers"] == "4" and fields["hidden size"] == "512" and fields["attention heads"] == "8"
    assert fields["KV heads"] == "2" and fields["experts"] == "8 (top 2)" and fields["context"] == "4,096 tokens"
    m = load_model(str(folder))
    assert fields["parameters"] == f"{m.num_params / 1e9:.2f} B"
    code, out, _ = run(capsys, ["catalog", "models", "--model", str(folder), "--json"])
    d = json.loads(out)
    assert (d["layers"], d["hidden"], d["heads"], d["kv_heads"], d["experts"]) == (4, 512, 8, 2, 8)
    assert d["params"] == m.num_params
    code, _, err = run(capsys, ["catalog", "devices", "--model", str(folder)])
    assert code == 2 and "--model applies to `catalog models`" in err


@pytest.mark.parametrize("cfg, fragment", [
    ({"model_type": "mamba2", "hidden_size": 2560, "num_hidden_layers": 64, "vocab_size": 50280},
     "architecture 'mamba2' is not supported (supported:"),
    ({k: v for k, v in MIXTRAL_LIKE.items() if k != "intermediate_size"}, "missing key 'intermediate_size'"),
])
def test_model_folder_and_refused_configs_on_the_command_line(capsys, tmp_path, cfg, fragment):
    """--model DIR reads DIR/config.json (Hugging Face tools do); an unsupported architecture or
    a config without intermediate_size is refused in one line naming it."""
    folder = _write_config(tmp_path / "m", **cfg)
    code, out, err = run(capsys, ["catalog", "models", "--model", str(folder)])
    assert code == 2 and out == "" and err.count("\n") == 1 and fragment in err, err


def test_model_folder_on_the_command_line(capsys, tmp_path):
    folder = _write_config(tmp_path / "m", **MIXTRAL_LIKE)
    code, out, err = run(capsys, ["simulate", "train", "--model", str(folder), "--cluster", "dgx-h100",
                                  "--plan", "tp=1", "--seq-len", "1024", "--global-batch", "8", "--json"])
    assert code == 0 and json.loads(out)["fits"]


@pytest.mark.parametrize("argv", [
    TRAIN[:9] + ["tp=8 pp=8"] + TRAIN[10:],
    SERVE[:7] + ["tp=2 replicas=2"] + SERVE[8:] + ["--rate", "1"],
    ["plan", "train", "--model", "llama3-8b", "--cluster", "dgx-h100", "--seq-len", "8", "--global-batch", "8",
     "--fix", "tp=8 pp=8"],
])
def test_plan_keys_separated_by_spaces(capsys, argv):
    code, out, err = run(capsys, argv)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "separate plan keys with commas" in err and ("'tp=8,pp=8'" in err or "'tp=2,replicas=2'" in err), err


def test_memory_is_in_gib_in_every_header(capsys):
    """An 80 GiB H100 used to read "HBM GB 86"; GiB is the convention of every output."""
    code, out, _ = run(capsys, ["catalog", "devices"])
    header, _, *rows = out.splitlines()
    assert "HBM GiB" in header and "HBM GB " not in header
    h100 = next(r for r in rows if r.startswith("h100-sxm "))
    col = header.index("HBM GiB") + len("HBM GiB")
    assert h100[:col].split()[-1] == "80"
    _, out, _ = run(capsys, ["catalog", "devices", "--json"])
    d = next(r for r in json.loads(out) if r["name"] == "h100-sxm")
    assert d["hbm_gib"] == pytest.approx(80) and d["hbm_bytes"] == 80 * 2 ** 30 and "hbm_gb" not in d
    _, out, _ = run(capsys, TRAIN)
    assert "GiB" in out and " GB" not in out


def test_heterogeneous_plan_suggests_replica_nodes(capsys):
    argv = ["plan", "train", "--model", "llama3-405b", "--cluster", "dgx-h100:4,dgx-a100:4", "--seq-len", "4096",
            "--global-batch", "64"]
    code, out, err = run(capsys, argv)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "no replica of 1 node(s) fits" in err and "--replica-nodes 2" in err, err


def test_validate_profile_prints_a_table():
    from ui.cli.validate import format_profile
    meta = {"device_name": "cpu", "threads": 1, "torch": "2.4", "profile_seconds": 3.0,
            "tables": {"gemm.csv": 12, "attention.csv": 4}}
    text = format_profile(meta, "validation/data/profiles/x")
    assert "{" not in text and "'" not in text
    lines = text.splitlines()
    assert lines[2].split() == ["table", "rows"] and lines[4].split() == ["gemm.csv", "12"]


def test_bad_moe_flags_are_one_line_and_exit_2(capsys):
    base = ["simulate", "serve", "--model", "gpt-oss-120b", "--cluster", "dgx-h100", "--concurrency", "4",
            "--requests", "8", "--prompt-len", "64", "--output-len", "8"]
    for flag, bad in (("--moe-quant", "int3"), ("--moe-load", "zipf")):
        code, out, err = run(capsys, base + [flag, bad])
        assert code == 2 and out == "" and err.count("\n") == 1 and bad in err, (flag, err)
    code, out, _ = run(capsys, base + ["--moe-quant", "w4a16_mxfp4", "--moe-load", "balanced", "--json"])
    assert code == 0 and '"moe_load": "balanced"' in out
