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
