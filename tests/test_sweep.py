"""`clusterplan sweep` (ui/sweep.py) and the executors under it (simulator/executor.py): the same
table on a local process pool and on a local Ray; a killed worker costs a retry, not a cell; an
interrupted sweep resumes without recomputing its finished cells; bad specs are one line and exit
code 2; plan serve's capacity probes and the published validation give the same answers on Ray.

The Ray tests start a local Ray with 2 CPUs and are skipped only where Ray is not installed."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
from pathlib import Path

import pytest

from simulator.executor import LocalExecutor, Outcome, SerialExecutor
from ui.cli import main
from ui.sweep import comparable, load_spec, read_table, run_sweep

TRAIN_SPEC = """\
name: train-48
kind: plan train
fixed: {seq_len: 2048, top: 1, partition: 0}
grid:
  model: [llama2-7b, llama3-8b, gpt3-6.7b, qwen3-8b]
  cluster: [dgx-a100, dgx-h100, dgx-h200]
  global_batch: [16, 32, 64, 128]
"""
SERVE_SPEC = """\
name: serve-12
kind: simulate serve
seed: 7
fixed: {plan: "tp=1", prompt_len: 512, output_len: 64, requests: 100, slo_ttft: 1s, slo_tpot: 50ms}
grid:
  model: [llama3-8b, qwen3-8b]
  cluster: [dgx-a100, dgx-h100]
  rate: [2, 4, 8]
"""


def _write(tmp: Path, name: str, text: str) -> str:
    p = tmp / name
    p.write_text(text)
    return str(p)


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    d = tmp_path_factory.mktemp("specs")
    return {"train": _write(d, "train.yaml", TRAIN_SPEC), "serve": _write(d, "serve.yaml", SERVE_SPEC), "dir": d}


# ---- executors ----------------------------------------------------------------------------------

def _square(x):
    if x == 3:
        raise ValueError("three is refused")
    return x * x


def _die(x):
    if x == 1:
        os._exit(3)  # the worker process dies, as if killed
    return x


def test_executors_keep_item_order_and_capture_task_errors():
    for ex in (SerialExecutor(), LocalExecutor(2)):
        outs = ex.run(_square, range(6))
        assert [o.index for o in outs] == list(range(6))
        assert [o.value for o in outs if o.ok] == [0, 1, 4, 16, 25]
        assert outs[3].error_type == "ValueError" and "three is refused" in outs[3].error
        with pytest.raises(ValueError, match="three is refused"):
            ex.map(_square, range(6))
        assert ex.map(_square, [5, 4]) == [25, 16]


def test_local_executor_gives_up_on_a_task_whose_worker_always_dies():
    outs = LocalExecutor(1, max_retries=2).run(_die, range(3))
    assert [o.value for o in outs if o.ok] == [0, 2]
    assert outs[1].error_type == "WorkerDied" and outs[1].retries == 2


# ---- bad specs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, needle", [
    ("kind: plan train\ngird: {model: [llama2-7b]}\n", "'gird'"),
    ("kind: plan train\nfixed: {seq_len: 2048, glob_batch: 8}\ngrid: {model: [llama2-7b]}\n", "'glob_batch'"),
    ("kind: plan train\ngrid: {model: []}\n", "grid.model is empty"),
    ("kind: plan train\ngrid: {}\n", "grid is empty"),
    ("kind: plan train\nname: x\n", "no cells"),
    ("kind: plan trian\ngrid: {model: [llama2-7b]}\n", "'plan trian'"),
    ("kind: plan train\nfixed: {seq_len: 2048, global_batch: 8, cluster: dgx-a100}\n"
     "grid: {model: [llama2-7b, llama9]}\n", "cell 1 (model=llama9)"),
    ("kind: plan train\nfixed: {seq_len: 2048, cluster: dgx-a100, model: llama2-7b}\n"
     "grid: {global_batch: [8, -8]}\n", "cell 1 (global_batch=-8)"),
    ("kind: plan train\ngrid: {model: [llama2-7b], cluster: [dgx-a100]}\n", "missing option(s) seq_len, global_batch"),
])
def test_bad_spec_is_one_line_naming_the_key_or_cell_and_exit_2(tmp_path, capsys, text, needle):
    spec = _write(tmp_path, "bad.yaml", text)
    assert main(["sweep", spec, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("clusterplan: error: ") and needle in err, err
    assert "Traceback" not in err


def test_a_cell_that_fails_at_run_time_is_a_row_and_the_sweep_goes_on(tmp_path, capsys):
    spec = _write(tmp_path, "s.yaml", "kind: plan train\nfixed: {seq_len: 2048, global_batch: 16, top: 1, "
                                      "partition: 0, cluster: dgx-a100}\n"
                                      "grid: {model: [llama2-7b, llama3-405b]}\n")
    assert main(["sweep", spec, "--out", str(tmp_path / "o"), "--jobs", "1", "--json", "--no-report"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["cells"], doc["ok"], doc["failed"]) == (2, 1, 1)
    assert doc["failed_cells"][0]["cell"] == 1 and "no plan fits" in doc["failed_cells"][0]["error"]
    rows = read_table(tmp_path / "o" / "results.csv")
    assert [r["status"] for r in rows] == ["ok", "error"] and rows[1]["best_plan"] == ""


# ---- the 48-cell training and 12-cell serving sweeps: local, a killed worker, resume -------------

@pytest.fixture(scope="module")
def local_train(specs):
    """The training sweep on 2 local workers; one worker is killed (SIGKILL) after the first row."""
    killed = []

    def kill_one(row):
        if not killed:
            victim = multiprocessing.active_children()[0]
            os.kill(victim.pid, signal.SIGKILL)
            killed.append(victim.pid)
    out = specs["dir"] / "train-local"
    with LocalExecutor(2) as ex:
        res = run_sweep(load_spec(specs["train"]), out, ex, on_row=kill_one)
    return res, killed


def test_killed_worker_is_retried_and_every_cell_completes(local_train):
    res, killed = local_train
    assert killed and len(res.rows) == 48 and not res.failed
    assert sum(r["retries"] for r in res.rows) >= 1  # the cells the dead worker held were resubmitted
    lines = (Path(res.out) / "results.jsonl").read_text().splitlines()
    assert len(lines) == 48 and len({json.loads(x)["key"] for x in lines}) == 48
    assert {r["worker"].rsplit(":", 1)[1] for r in res.rows} - {str(killed[0])}  # others did the work
    assert (Path(res.out) / "results.csv").exists() and (Path(res.out) / "report.html").exists()
    html = (Path(res.out) / "report.html").read_text()
    assert "per device vs global batch, per model" in html and "plotly" in html.lower()


def test_interrupted_sweep_resumes_without_recomputing_finished_cells(specs, tmp_path, capsys, monkeypatch):
    """Ctrl-C (KeyboardInterrupt, raised in the main process as the sweep's sixth cell finishes,
    so the interruption lands mid-sweep on any machine) stops the workers; the command says how
    to resume and exits 130; the same command again runs only the cells not yet finished."""
    import ui.sweep as sweep_mod
    out = tmp_path / "resume"
    log = out / "results.jsonl"
    real = sweep_mod.run_sweep

    def interrupted(spec, out_dir, ex, progress=None, on_row=None, report=True):
        seen = []

        def ctrl_c(row):
            seen.append(row)
            if len(seen) == 6:
                raise KeyboardInterrupt
        return real(spec, out_dir, ex, progress=progress, on_row=ctrl_c, report=report)
    monkeypatch.setattr(sweep_mod, "run_sweep", interrupted)
    with pytest.raises(SystemExit) as stop:
        main(["sweep", specs["train"], "--out", str(out), "--jobs", "2", "--json", "--no-report"])
    err = capsys.readouterr().err
    assert stop.value.code == 130 and "resume" in err and "Traceback" not in err, err
    first = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    assert 6 <= len(first) < 48
    monkeypatch.setattr(sweep_mod, "run_sweep", real)
    assert main(["sweep", specs["train"], "--out", str(out), "--jobs", "2", "--json", "--no-report"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["skipped"], doc["ran"], doc["ok"]) == (len(first), 48 - len(first), 48)
    keys = [json.loads(x)["key"] for x in log.read_text().splitlines() if x.strip()]
    assert len(keys) == 48 == len(set(keys))  # no finished cell was computed twice


@pytest.fixture(scope="module")
def local_serve(specs, tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "local"
    with LocalExecutor(2) as ex:
        return run_sweep(load_spec(specs["serve"]), out, ex)


def test_serving_sweep_rows_and_report(local_serve):
    res = local_serve
    assert len(res.rows) == 12 and not res.failed
    assert all(r["in_seed"] == 7 and r["ttft_p90_s"] > 0 and r["tokens_per_s_per_device"] > 0 for r in res.rows)
    html = (Path(res.out) / "report.html").read_text()
    assert "latency and throughput vs rate" in html


# ---- Ray: the same tables, and the inner loops ----------------------------------------------------

@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_training_sweep_on_ray_equals_local(local_train, ray_local, specs, capsys):
    res, _ = local_train
    out = specs["dir"] / "train-ray"
    assert main(["sweep", specs["train"], "--out", str(out), "--executor", "ray", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["executor"]["executor"] == "ray" and doc["ok"] == 48
    local = comparable(read_table(Path(res.out) / "results.csv"))
    on_ray = comparable(read_table(out / "results.csv"))
    assert on_ray == local


def test_serving_sweep_on_ray_equals_local_with_a_killed_worker(local_serve, ray_local, specs):
    from simulator.executor import RayExecutor
    killed = []

    def kill_worker(row):  # the worker that just answered is likely running the next cell
        if not killed:
            pid = int(row["worker"].rsplit(":", 1)[1])
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    with RayExecutor() as ex:
        res = run_sweep(load_spec(specs["serve"]), specs["dir"] / "serve-ray", ex, on_row=kill_worker)
    assert killed and len(res.rows) == 12 and not res.failed
    assert comparable(res.rows) == comparable(local_serve.rows)


def test_plan_serve_capacities_and_validate_published_on_ray_equal_local(ray_local):
    from planner.serve_search import capacities, cluster_for_device
    from simulator.executor import RayExecutor
    from simulator.models import load_model
    from simulator.serving.workload import LengthDist, RateSchedule, ServingWorkload
    from validation.published import megatron_table1
    model = load_model("llama3-8b")
    c, _ = cluster_for_device("h100-sxm")
    wl = ServingWorkload(num_requests=60, rate=RateSchedule(((1.0, float("inf")),)),
                         prompt_len=LengthDist.parse("256"), output_len=LengthDist.parse("32"), seed=3)
    work = [(c, 1, "both"), (c, 2, "both")]
    args = (model, work, wl, 1.0, 0.05, 90, 60, 3, "vllm", "bf16", None)
    from planner import serve_search
    serve_search._CAPACITY_CACHE.clear()
    local = capacities(*args, jobs=1)
    serve_search._CAPACITY_CACHE.clear()
    with RayExecutor() as ex:
        on_ray = capacities(*args, executor=ex)
        assert [x.to_dict() for x in on_ray] == [x.to_dict() for x in local]
        assert megatron_table1(executor=ex) == megatron_table1()


def test_outcome_is_ok_without_error():
    assert Outcome(0, value=1).ok and not Outcome(0, error="x").ok
